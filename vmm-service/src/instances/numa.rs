//! Which host NUMA nodes a VM's RAM and vCPUs go on: the node all its GPUs sit on,
//! so the GPUs' DMA and the vCPUs' accesses to guest RAM stay on one socket, or,
//! when its GPUs span nodes, each of those nodes (the guest mirrors them).

use crate::gpu::{Bdf, HostPaths};
use form_vmm_api::host_list::parse_list;

/// What the host says about its NUMA nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNuma {
    /// The `nodeN` directories the kernel lists; a host without them (no NUMA
    /// support) counts as one node.
    pub nodes: usize,
    /// The nodes with memory (`has_memory`), when the kernel says.
    pub with_memory: Option<Vec<u32>>,
}

impl HostNuma {
    pub fn read(host: &HostPaths) -> HostNuma {
        let dir = host.sysfs.join("devices/system/node");
        let nodes = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| is_node_dir(&e.file_name().to_string_lossy()) && e.path().is_dir())
                    .count()
            })
            .unwrap_or(0)
            .max(1);
        let with_memory = std::fs::read_to_string(dir.join("has_memory"))
            .ok()
            .and_then(|text| parse_node_list(&text));
        HostNuma { nodes, with_memory }
    }
}

/// The host's SLIT distance from node `from` to node `to`
/// (`nodeN/distance` lists one per online node, in node order); None when the
/// kernel does not say.
pub fn host_distance(host: &HostPaths, from: u32, to: u32) -> Option<u8> {
    let dir = host.sysfs.join("devices/system/node");
    let online = std::fs::read_to_string(dir.join("online"))
        .ok()
        .and_then(|text| parse_node_list(&text))?;
    let index = online.iter().position(|&n| n == to)?;
    let row = std::fs::read_to_string(dir.join(format!("node{from}/distance"))).ok()?;
    row.split_whitespace().nth(index)?.parse().ok()
}

fn is_node_dir(name: &str) -> bool {
    name.strip_prefix("node")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The kernel's node list format (`0-1,3`); None when it is not one.
fn parse_node_list(text: &str) -> Option<Vec<u32>> {
    parse_list(text)?
        .into_iter()
        .map(|node| u32::try_from(node).ok())
        .collect()
}

/// Where a VM goes, or why it is left wherever the kernel puts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumaPlacement {
    Bound(u32),
    /// One guest node per host node, lowest first, each with its GPUs.
    Mirrored(Vec<(u32, Vec<Bdf>)>),
    Unbound(String),
}

/// The placement of a VM whose GPUs report `gpu_nodes` on `host`, when `enabled`
/// (the VM's `gpu_options.numa_affinity`); GPUs across nodes are mirrored when
/// `mirror` (the VM's `numa`).
pub fn numa_placement(
    enabled: bool,
    mirror: bool,
    gpu_nodes: &[(Bdf, Option<u32>)],
    host: &HostNuma,
) -> NumaPlacement {
    let unbound = |why: String| NumaPlacement::Unbound(why);
    if !enabled {
        return unbound("gpu_options.numa_affinity is off".into());
    }
    if gpu_nodes.is_empty() {
        return unbound("the VM has no GPUs".into());
    }
    if host.nodes < 2 {
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
    // form-vmm refuses a node without memory; starting the VM unbound beats
    // not starting it.
    let memoryless = nodes
        .iter()
        .find(|node| host.with_memory.as_ref().is_some_and(|m| !m.contains(node)));
    if let Some(node) = memoryless {
        return unbound(format!("its GPUs' NUMA node {node} has no memory"));
    }
    match nodes.as_slice() {
        [node] => NumaPlacement::Bound(*node),
        _ if mirror => NumaPlacement::Mirrored(
            nodes
                .iter()
                .map(|&node| {
                    let on: Vec<Bdf> = gpu_nodes
                        .iter()
                        .filter(|(_, n)| *n == Some(node))
                        .map(|(bdf, _)| *bdf)
                        .collect();
                    (node, on)
                })
                .collect(),
        ),
        _ => {
            let nodes: Vec<String> = nodes.iter().map(u32::to_string).collect();
            unbound(format!(
                "its GPUs span NUMA nodes {} and numa is flat",
                nodes.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdf(text: &str) -> Bdf {
        text.parse().unwrap()
    }

    fn nodes(nodes: usize) -> HostNuma {
        HostNuma {
            nodes,
            with_memory: None,
        }
    }

    #[test]
    fn gpus_on_one_node_of_several_bind_to_it() {
        let gpus = [
            (bdf("0000:18:00.0"), Some(1)),
            (bdf("0000:2a:00.0"), Some(1)),
        ];
        assert_eq!(
            numa_placement(true, true, &gpus, &nodes(2)),
            NumaPlacement::Bound(1)
        );
        assert_eq!(
            numa_placement(false, true, &gpus, &nodes(2)),
            NumaPlacement::Unbound("gpu_options.numa_affinity is off".into())
        );
        assert_eq!(
            numa_placement(true, true, &gpus, &nodes(1)),
            NumaPlacement::Unbound("the host has a single NUMA node".into())
        );
        let memoryless = HostNuma {
            nodes: 3,
            with_memory: Some(vec![0, 2]),
        };
        assert_eq!(
            numa_placement(true, true, &gpus, &memoryless),
            NumaPlacement::Unbound("its GPUs' NUMA node 1 has no memory".into())
        );
        let with_memory = HostNuma {
            nodes: 2,
            with_memory: Some(vec![0, 1]),
        };
        assert_eq!(
            numa_placement(true, true, &gpus, &with_memory),
            NumaPlacement::Bound(1)
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
            numa_placement(true, false, &split, &nodes(2)),
            NumaPlacement::Unbound("its GPUs span NUMA nodes 0, 1 and numa is flat".into())
        );
        assert_eq!(
            numa_placement(true, true, &split, &nodes(2)),
            NumaPlacement::Mirrored(vec![
                (0, vec![bdf("0000:2a:00.0")]),
                (1, vec![bdf("0000:18:00.0"), bdf("0000:3a:00.0")]),
            ])
        );
        let memoryless = HostNuma {
            nodes: 2,
            with_memory: Some(vec![1]),
        };
        assert_eq!(
            numa_placement(true, true, &split, &memoryless),
            NumaPlacement::Unbound("its GPUs' NUMA node 0 has no memory".into())
        );
        let unknown = [(bdf("0000:18:00.0"), Some(0)), (bdf("0000:2a:00.0"), None)];
        assert_eq!(
            numa_placement(true, true, &unknown, &nodes(2)),
            NumaPlacement::Unbound("GPU 0000:2a:00.0 reports no NUMA node".into())
        );
        assert_eq!(
            numa_placement(true, true, &[], &nodes(2)),
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
        assert_eq!(
            HostNuma::read(&host),
            HostNuma {
                nodes: 1,
                with_memory: None
            }
        );
        let nodes = dir.path().join("devices/system/node");
        for name in ["node0", "node1", "node3", "power"] {
            std::fs::create_dir_all(nodes.join(name)).unwrap();
        }
        for file in ["online", "possible", "node7"] {
            std::fs::write(nodes.join(file), "0-1\n").unwrap();
        }
        std::fs::write(nodes.join("has_memory"), "0-1,3\n").unwrap();
        assert_eq!(
            HostNuma::read(&host),
            HostNuma {
                nodes: 3,
                with_memory: Some(vec![0, 1, 3])
            }
        );
        std::fs::write(nodes.join("has_memory"), "zero\n").unwrap();
        assert_eq!(HostNuma::read(&host).with_memory, None);
        assert_eq!(parse_node_list("\n"), Some(vec![]));
        std::fs::create_dir_all(nodes.join("node0")).unwrap();
        std::fs::write(nodes.join("online"), "0-1,3\n").unwrap();
        std::fs::write(nodes.join("node0/distance"), "10 21 32\n").unwrap();
        assert_eq!(host_distance(&host, 0, 3), Some(32));
        assert_eq!(host_distance(&host, 0, 1), Some(21));
        assert_eq!(host_distance(&host, 0, 2), None, "node 2 is not online");
        assert_eq!(
            host_distance(&host, 1, 0),
            None,
            "node1 has no distance file"
        );
        // A reversed range is no list (it once read as no nodes).
        assert_eq!(parse_node_list("3-1"), None);
    }
}
