//! Which host NUMA node a VM's RAM and vCPUs go on: the node all its GPUs sit on,
//! so the GPUs' DMA and the vCPUs' accesses to guest RAM stay on one socket.

use crate::gpu::{Bdf, HostPaths};

/// How many NUMA nodes the host has: the `nodeN` directories the kernel lists.
/// A host without the directory (no NUMA support) counts as one node.
pub fn host_numa_nodes(host: &HostPaths) -> usize {
    let dir = host.sysfs.join("devices/system/node");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 1;
    };
    let count = entries
        .filter_map(Result::ok)
        .filter(|e| is_node_dir(&e.file_name().to_string_lossy()) && e.path().is_dir())
        .count();
    count.max(1)
}

fn is_node_dir(name: &str) -> bool {
    name.strip_prefix("node")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Where a VM goes, or why it is left wherever the kernel puts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumaPlacement {
    Bound(u32),
    Unbound(String),
}

/// The placement of a VM whose GPUs report `gpu_nodes` on a host of `host_nodes`
/// nodes, when `enabled` (the VM's `gpu_options.numa_affinity`).
pub fn numa_placement(
    enabled: bool,
    gpu_nodes: &[(Bdf, Option<u32>)],
    host_nodes: usize,
) -> NumaPlacement {
    let unbound = |why: String| NumaPlacement::Unbound(why);
    if !enabled {
        return unbound("gpu_options.numa_affinity is off".into());
    }
    if gpu_nodes.is_empty() {
        return unbound("the VM has no GPUs".into());
    }
    if host_nodes < 2 {
        return unbound("the host has a single NUMA node".into());
    }
    let mut nodes = Vec::with_capacity(gpu_nodes.len());
    for (bdf, node) in gpu_nodes {
        match node {
            Some(node) => nodes.push(*node),
            None => return unbound(format!("GPU {bdf} reports no NUMA node")),
        }
    }
    nodes.sort_unstable();
    nodes.dedup();
    match nodes.as_slice() {
        [node] => NumaPlacement::Bound(*node),
        _ => {
            let nodes: Vec<String> = nodes.iter().map(u32::to_string).collect();
            unbound(format!("its GPUs span NUMA nodes {}", nodes.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdf(text: &str) -> Bdf {
        text.parse().unwrap()
    }

    #[test]
    fn gpus_on_one_node_of_several_bind_to_it() {
        let gpus = [
            (bdf("0000:18:00.0"), Some(1)),
            (bdf("0000:2a:00.0"), Some(1)),
        ];
        assert_eq!(numa_placement(true, &gpus, 2), NumaPlacement::Bound(1));
        assert_eq!(
            numa_placement(false, &gpus, 2),
            NumaPlacement::Unbound("gpu_options.numa_affinity is off".into())
        );
        assert_eq!(
            numa_placement(true, &gpus, 1),
            NumaPlacement::Unbound("the host has a single NUMA node".into())
        );
    }

    #[test]
    fn gpus_across_nodes_or_without_one_are_not_bound() {
        let split = [
            (bdf("0000:18:00.0"), Some(1)),
            (bdf("0000:2a:00.0"), Some(0)),
            (bdf("0000:3a:00.0"), Some(1)),
        ];
        assert_eq!(
            numa_placement(true, &split, 2),
            NumaPlacement::Unbound("its GPUs span NUMA nodes 0, 1".into())
        );
        let unknown = [(bdf("0000:18:00.0"), Some(0)), (bdf("0000:2a:00.0"), None)];
        assert_eq!(
            numa_placement(true, &unknown, 2),
            NumaPlacement::Unbound("GPU 0000:2a:00.0 reports no NUMA node".into())
        );
        assert_eq!(
            numa_placement(true, &[], 2),
            NumaPlacement::Unbound("the VM has no GPUs".into())
        );
    }

    #[test]
    fn nodes_are_counted_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostPaths {
            sysfs: dir.path().to_path_buf(),
            ..HostPaths::default()
        };
        assert_eq!(host_numa_nodes(&host), 1);
        let nodes = dir.path().join("devices/system/node");
        for name in ["node0", "node1", "node3", "power"] {
            std::fs::create_dir_all(nodes.join(name)).unwrap();
        }
        for file in ["online", "possible", "node7"] {
            std::fs::write(nodes.join(file), "0-1\n").unwrap();
        }
        assert_eq!(host_numa_nodes(&host), 3);
    }
}
