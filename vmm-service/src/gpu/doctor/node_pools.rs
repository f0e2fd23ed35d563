//! `hugepages_per_node`: the huge page pools of each NUMA node. A VM bound to a
//! node (its GPUs there) takes its pages from that node's pool alone, and one the
//! service mirrors over several nodes takes each node's share from that node's,
//! so a host-wide count can say "enough" when no node has it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use super::{hugepage_pools_in, Finding, HugepagePool, Severity};
use crate::gpu::{format_bytes, HostPaths};

const CHECK: &str = "hugepages_per_node";

/// Each node's pools, by node; nodes without a hugepages directory are left out.
fn node_pools(host: &HostPaths) -> BTreeMap<u32, Vec<HugepagePool>> {
    let dir = host.sysfs.join("devices/system/node");
    let Ok(entries) = fs::read_dir(&dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let node: u32 = name.strip_prefix("node")?.parse().ok()?;
            let pools = hugepage_pools_in(&entry.path().join("hugepages"))?;
            Some((node, pools))
        })
        .collect()
}

/// None on a host of one node, where the host-wide `hugepages` check says it all.
pub(super) fn check_node_hugepages(host: &HostPaths, vm_memory: Option<u64>) -> Option<Finding> {
    let nodes = node_pools(host);
    if nodes.len() < 2 {
        return None;
    }
    let described = nodes
        .iter()
        .map(|(node, pools)| {
            let pools: Vec<String> = pools
                .iter()
                .map(|p| {
                    format!(
                        "{} {} of {} free",
                        format_bytes(p.page_bytes),
                        p.free,
                        p.total
                    )
                })
                .collect();
            format!("node {node}: {}", pools.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let Some(memory) = vm_memory else {
        return Some(Finding::new(
            CHECK,
            Severity::Ok,
            format!("hugepages per node: {described}"),
        ));
    };
    let sizes: BTreeSet<u64> = nodes
        .values()
        .flat_map(|pools| pools.iter().map(|p| p.page_bytes))
        .collect();
    let free = |node: u32, size: u64| -> (u64, u64) {
        nodes[&node]
            .iter()
            .find(|p| p.page_bytes == size)
            .map_or((0, 0), |p| (p.total, p.free))
    };
    let count = nodes.len() as u64;
    let mut fits_somewhere = false;
    let mut verdicts = Vec::new();
    for &size in &sizes {
        let whole = memory.div_ceil(size);
        let share = memory.div_ceil(count).div_ceil(size);
        let bound: Vec<String> = nodes
            .keys()
            .filter(|&&n| free(n, size).1 >= whole)
            .map(u32::to_string)
            .collect();
        let split = nodes.keys().all(|&n| free(n, size).1 >= share);
        fits_somewhere |= split || !bound.is_empty();
        let bound = match bound.as_slice() {
            [] => "bound to one node it fits on none".to_string(),
            nodes => format!("bound to one node it fits on node {}", nodes.join(" or ")),
        };
        let split = format!(
            "split over the {count} nodes ({} each) it {}",
            format_bytes(share * size),
            if split { "fits" } else { "does not fit" }
        );
        verdicts.push(format!("{} pages: {bound}; {split}", format_bytes(size)));
    }
    let summary = format!(
        "hugepages per node: {described}; for a {} VM: {}",
        format_bytes(memory),
        verdicts.join("; ")
    );
    if fits_somewhere {
        return Some(Finding::new(CHECK, Severity::Ok, summary));
    }
    let largest = sizes.last().copied().unwrap_or(2 << 20);
    let share = memory.div_ceil(count).div_ceil(largest);
    let reserve: Vec<String> = nodes
        .keys()
        .filter_map(|&n| {
            let (total, free) = free(n, largest);
            (free < share).then(|| {
                format!(
                    "echo {} > /sys/devices/system/node/node{n}/hugepages/hugepages-{}kB/nr_hugepages",
                    total + share - free,
                    largest / 1024
                )
            })
        })
        .collect();
    let boot = match largest >= 1 << 30 {
        true => " (1 GiB pages are best reserved at boot: hugepagesz=1G hugepages=N, spread over the nodes)",
        false => "",
    };
    Some(
        Finding::new(CHECK, Severity::Warning, summary).fix(format!(
            "reserve {} pages on each node for a VM split over them: {}{boot}; a VM bound to one node needs all {} pages on that node",
            format_bytes(largest),
            reserve.join("; "),
            memory.div_ceil(largest)
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn host(pools: &[(u32, u64, u64, u64)]) -> (tempfile::TempDir, HostPaths) {
        let dir = tempfile::tempdir().unwrap();
        let host = HostPaths {
            sysfs: dir.path().to_path_buf(),
            ..HostPaths::default()
        };
        for &(node, kib, total, free) in pools {
            let pool = dir.path().join(format!(
                "devices/system/node/node{node}/hugepages/hugepages-{kib}kB"
            ));
            fs::create_dir_all(&pool).unwrap();
            fs::write(pool.join("nr_hugepages"), format!("{total}\n")).unwrap();
            fs::write(pool.join("free_hugepages"), format!("{free}\n")).unwrap();
        }
        (dir, host)
    }

    #[test]
    fn each_node_and_size_is_reported_and_checked_against_the_vm() {
        let (_dir, host) = host(&[
            (0, 2048, 0, 0),
            (0, 1_048_576, 64, 64),
            (1, 2048, 0, 0),
            (1, 1_048_576, 64, 20),
        ]);
        let plain = check_node_hugepages(&host, None).unwrap();
        assert_eq!(plain.severity, Severity::Ok);
        assert_eq!(
            plain.summary,
            "hugepages per node: node 0: 2 MiB 0 of 0 free, 1 GiB 64 of 64 free; node 1: 2 MiB 0 of 0 free, 1 GiB 20 of 64 free"
        );
        let fits = check_node_hugepages(&host, Some(32 * G)).unwrap();
        assert_eq!(fits.severity, Severity::Ok);
        assert!(
            fits.summary.ends_with("for a 32 GiB VM: 2 MiB pages: bound to one node it fits on none; split over the 2 nodes (16 GiB each) it does not fit; 1 GiB pages: bound to one node it fits on node 0; split over the 2 nodes (16 GiB each) it fits"),
            "{}",
            fits.summary
        );
        let short = check_node_hugepages(&host, Some(128 * G)).unwrap();
        assert_eq!(short.severity, Severity::Warning);
        assert_eq!(
            short.remedy.unwrap(),
            "reserve 1 GiB pages on each node for a VM split over them: echo 108 > /sys/devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages (1 GiB pages are best reserved at boot: hugepagesz=1G hugepages=N, spread over the nodes); a VM bound to one node needs all 128 pages on that node"
        );
    }

    #[test]
    fn a_host_of_one_node_is_left_to_the_host_wide_check() {
        let (_dir, host) = host(&[(0, 2048, 10, 10)]);
        assert_eq!(check_node_hugepages(&host, Some(G)), None);
        let (_dir, host) = host_without_nodes();
        assert_eq!(check_node_hugepages(&host, None), None);
    }

    fn host_without_nodes() -> (tempfile::TempDir, HostPaths) {
        host(&[])
    }
}
