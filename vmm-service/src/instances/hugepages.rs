//! Huge pages for a VM: which size backs its RAM and whether the host's pools hold
//! enough free pages, checked before anything is bound. form-vmm checks again, but
//! only after the service has moved every GPU to vfio-pci.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::api::types::{HugepageSize, VmInstanceConfig};
use crate::gpu::{format_bytes, HostPaths};

use super::error::InstanceError;
use super::guest_numa::Placement;

/// When the host does not say (`Hugepagesize` in meminfo), as x86-64's default.
const FALLBACK_PAGE: u64 = 2 << 20;

/// Bytes per huge page of the VM's RAM; None without `hugepages`. Left out, the
/// size is the host's default, resolved here so the pool checked is the one
/// form-vmm then draws on.
pub fn page_size(
    config: &VmInstanceConfig,
    host: &HostPaths,
) -> Result<Option<u64>, InstanceError> {
    if !config.hugepages {
        return Ok(None);
    }
    let page = match config.hugepage_size {
        Some(size) => size.bytes(),
        None => default_page(host),
    };
    if !config.memory.is_multiple_of(page) {
        return Err(InstanceError::Invalid(format!(
            "memory is {} bytes, not a multiple of its {} huge pages: give a multiple of {} bytes{}",
            config.memory,
            format_bytes(page),
            page,
            match config.hugepage_size {
                Some(_) => "",
                None => " (the host's default huge page size; hugepage_size picks another)",
            }
        )));
    }
    Ok(Some(page))
}

fn default_page(host: &HostPaths) -> u64 {
    std::fs::read_to_string(host.procfs.join("meminfo"))
        .ok()
        .and_then(|text| {
            let kib = text
                .lines()
                .find_map(|line| line.strip_prefix("Hugepagesize:"))?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()?;
            HugepageSize::from_bytes(kib.checked_mul(1024)?).map(HugepageSize::bytes)
        })
        .unwrap_or(FALLBACK_PAGE)
}

/// The pool of `page`-byte pages: the host's (`node` None) or one node's.
pub fn pool_dir(host: &HostPaths, page: u64, node: Option<u32>) -> PathBuf {
    let name = format!("hugepages/hugepages-{}kB", page / 1024);
    match node {
        None => host.sysfs.join("kernel/mm").join(name),
        Some(node) => host
            .sysfs
            .join(format!("devices/system/node/node{node}"))
            .join(name),
    }
}

/// (`nr_hugepages`, `free_hugepages`) of a pool; None when it is not there.
pub fn pool_counts(host: &HostPaths, page: u64, node: Option<u32>) -> Option<(u64, u64)> {
    let dir = pool_dir(host, page, node);
    let read = |file: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("nr_hugepages")?, read("free_hugepages")?))
}

/// Refuses, naming every pool that is short, a VM of `memory` bytes placed as
/// `placement` when the host's pool, or a node's pool its RAM is bound to, has
/// fewer free pages than the VM's RAM takes from it.
pub fn check_pools(
    host: &HostPaths,
    placement: &Placement,
    memory: u64,
) -> Result<(), InstanceError> {
    let Some(page) = placement.hugepage else {
        return Ok(());
    };
    let mut per_node: BTreeMap<u32, u64> = BTreeMap::new();
    for (node, bytes) in placement.ram(memory) {
        if let Some(node) = node {
            *per_node.entry(node).or_default() += bytes / page;
        }
    }
    let mut demands = vec![(None, memory / page)];
    demands.extend(
        per_node
            .into_iter()
            .map(|(node, pages)| (Some(node), pages)),
    );
    let size = format_bytes(page);
    let mut short = Vec::new();
    for (node, needed) in demands {
        let dir = pool_dir(host, page, node);
        let nr = dir.join("nr_hugepages");
        let (total, free) = match pool_counts(host, page, node) {
            Some(counts) => counts,
            // A kernel without per-node pools still has the host's, checked above.
            None if node.is_some() && pool_counts(host, page, None).is_some() => continue,
            None => (0, 0),
        };
        if free >= needed {
            continue;
        }
        let missing = needed - free;
        let place = match node {
            Some(node) => format!("host NUMA node {node}"),
            None => "the host".to_string(),
        };
        short.push(format!(
            "{place} has {free} free {size} huge pages and the VM needs {needed} there ({missing} short); reserve them: echo {} > {}",
            total + missing,
            nr.display()
        ));
    }
    if short.is_empty() {
        return Ok(());
    }
    let boot = match page >= 1 << 30 {
        true => " (1 GiB pages are best reserved at boot: hugepagesz=1G hugepages=N)",
        false => "",
    };
    Err(InstanceError::HugepagesShort(format!(
        "not enough huge pages for {} of guest RAM: {}{boot}; or give the VM less memory or another hugepage_size. Nothing was changed",
        format_bytes(memory),
        short.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::ErrorCode;
    use crate::instances::guest_numa::{GuestNode, Layout};

    const G: u64 = 1 << 30;

    fn host() -> (tempfile::TempDir, HostPaths) {
        let dir = tempfile::tempdir().unwrap();
        let host = HostPaths {
            sysfs: dir.path().join("sys"),
            procfs: dir.path().join("proc"),
            ..HostPaths::default()
        };
        (dir, host)
    }

    fn pool(host: &HostPaths, page: u64, node: Option<u32>, total: u64, free: u64) {
        let dir = pool_dir(host, page, node);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("nr_hugepages"), format!("{total}\n")).unwrap();
        std::fs::write(dir.join("free_hugepages"), format!("{free}\n")).unwrap();
    }

    fn mirrored(memory: [u64; 2]) -> Placement {
        let node = |host_node, memory| GuestNode {
            host_node,
            gpus: vec![],
            cpus: 0..1,
            memory,
            distances: vec![],
        };
        Placement {
            layout: Layout::Mirrored(vec![node(0, memory[0]), node(1, memory[1])]),
            hugepage: Some(G),
        }
    }

    #[test]
    fn each_node_of_a_mirrored_vm_draws_on_its_own_pool() {
        let (_dir, host) = host();
        pool(&host, G, None, 20, 20);
        pool(&host, G, Some(0), 10, 10);
        pool(&host, G, Some(1), 10, 6);
        check_pools(&host, &mirrored([4 * G, 6 * G]), 10 * G).unwrap();
        let err = check_pools(&host, &mirrored([4 * G, 8 * G]), 12 * G).unwrap_err();
        assert_eq!(err.code(), ErrorCode::HugepagesShort);
        assert_eq!(
            err.to_string(),
            format!(
                "not enough huge pages for 12 GiB of guest RAM: host NUMA node 1 has 6 free 1 GiB huge pages and the VM needs 8 there (2 short); reserve them: echo 12 > {}/devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages (1 GiB pages are best reserved at boot: hugepagesz=1G hugepages=N); or give the VM less memory or another hugepage_size. Nothing was changed",
                host.sysfs.display()
            )
        );
        // The host's pool is short too: both are named.
        let err = check_pools(&host, &mirrored([10 * G, 12 * G]), 22 * G).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("the host has 20 free 1 GiB huge pages and the VM needs 22 there (2 short); reserve them: echo 22 > "), "{text}");
        assert!(text.contains("host NUMA node 1 has 6 free"), "{text}");
        assert!(!text.contains("node 0 has"), "{text}");
    }

    #[test]
    fn unbound_ram_draws_on_the_hosts_pool_and_a_missing_size_has_none() {
        let (_dir, host) = host();
        pool(&host, 2 << 20, None, 1024, 1024);
        let flat = |page| Placement {
            layout: Layout::Flat,
            hugepage: Some(page),
        };
        check_pools(&host, &flat(2 << 20), 2 * G).unwrap();
        assert!(check_pools(&host, &flat(2 << 20), 4 * G).is_err());
        let err = check_pools(&host, &flat(G), G).unwrap_err().to_string();
        assert!(err.contains("the host has 0 free 1 GiB huge pages and the VM needs 1 there (1 short); reserve them: echo 1 > "), "{err}");
        // A node without per-node pools is covered by the host's.
        let bound = Placement {
            layout: Layout::Node(1),
            hugepage: Some(2 << 20),
        };
        check_pools(&host, &bound, 2 * G).unwrap();
        let none = Placement {
            layout: Layout::Flat,
            hugepage: None,
        };
        check_pools(&host, &none, 1 << 40).unwrap();
    }

    #[test]
    fn the_page_size_is_the_requests_or_the_hosts_default() {
        let (_dir, host) = host();
        let mut config: VmInstanceConfig =
            serde_json::from_value(serde_json::json!({"name": "a", "memory": 3u64 << 30})).unwrap();
        assert_eq!(page_size(&config, &host).unwrap(), None);
        config.hugepages = true;
        assert_eq!(page_size(&config, &host).unwrap(), Some(2 << 20));
        std::fs::create_dir_all(&host.procfs).unwrap();
        std::fs::write(
            host.procfs.join("meminfo"),
            "MemTotal: 1 kB\nHugepagesize:    1048576 kB\n",
        )
        .unwrap();
        assert_eq!(page_size(&config, &host).unwrap(), Some(G));
        config.hugepage_size = Some(HugepageSize::M2);
        assert_eq!(page_size(&config, &host).unwrap(), Some(2 << 20));
        config.memory = G + (4 << 10);
        let err = page_size(&config, &host).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidConfig);
        assert_eq!(err.to_string(), "memory is 1073745920 bytes, not a multiple of its 2 MiB huge pages: give a multiple of 2097152 bytes");
    }
}
