//! The guest NUMA layout the service gives a VM: one guest node bound nowhere, one
//! bound to a host node, or one guest node per host node holding its GPUs (the
//! guest mirrors the host), the VM's vCPUs and RAM shared out between them in
//! proportion to their GPUs.

use std::ops::Range;

use form_vmm_api::config::numa::{DEFAULT_REMOTE_DISTANCE, LOCAL_DISTANCE};

use crate::api::types::GuestNumaNode;
use crate::gpu::{format_bytes, Bdf};

/// Guest RAM's page without huge pages.
pub const BASE_PAGE: u64 = 4096;

/// One guest node of a mirrored VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNode {
    pub host_node: u32,
    pub gpus: Vec<Bdf>,
    /// vCPU ids.
    pub cpus: Range<u32>,
    /// Bytes.
    pub memory: u64,
    /// To every guest node, in guest node order.
    pub distances: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One guest node, its RAM and vCPUs wherever the kernel puts them.
    Flat,
    /// One guest node, all on this host node.
    Node(u32),
    /// Guest node N on the Nth host node holding the VM's GPUs.
    Mirrored(Vec<GuestNode>),
}

/// Where a VM's RAM and vCPUs go, and what backs its RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub layout: Layout,
    /// Bytes per huge page; None: 4 KiB pages.
    pub hugepage: Option<u64>,
}

impl Placement {
    /// The single host node the VM is bound to, as `VmInfo.numa_node` reports it.
    pub fn numa_node(&self) -> Option<u32> {
        match self.layout {
            Layout::Node(node) => Some(node),
            _ => None,
        }
    }

    /// The guest nodes as `VmInfo.guest_numa` reports them; empty with one node.
    pub fn guest_nodes(&self) -> Vec<GuestNumaNode> {
        let Layout::Mirrored(nodes) = &self.layout else {
            return Vec::new();
        };
        nodes
            .iter()
            .zip(0u32..)
            .map(|(node, id)| GuestNumaNode {
                guest_node: id,
                host_node: node.host_node,
                vcpus: node.cpus.clone().collect(),
                memory: node.memory,
                gpus: node.gpus.iter().map(Bdf::to_string).collect(),
                distances: node.distances.clone(),
            })
            .collect()
    }

    /// The VM's `memory` bytes of RAM as pieces, each with the host node it is
    /// bound to.
    pub fn ram(&self, memory: u64) -> Vec<(Option<u32>, u64)> {
        match &self.layout {
            Layout::Flat => vec![(None, memory)],
            Layout::Node(node) => vec![(Some(*node), memory)],
            Layout::Mirrored(nodes) => nodes
                .iter()
                .map(|n| (Some(n.host_node), n.memory))
                .collect(),
        }
    }
}

/// `total` units shared over `weights`: each its share in proportion to its
/// weight, rounded down, the first also what rounding leaves; a share that rounds
/// to nothing gets one unit from the largest (lowest first among equals), since
/// every guest node needs a vCPU and a page. None when there are fewer units than
/// weights.
pub fn split(total: u64, weights: &[u64]) -> Option<Vec<u64>> {
    if weights.is_empty() || total < weights.len() as u64 {
        return None;
    }
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum::<u128>().max(1);
    let mut shares: Vec<u64> = weights
        .iter()
        // At most `total`, so it fits.
        .map(|&w| (u128::from(total) * u128::from(w) / sum) as u64)
        .collect();
    let given: u64 = shares.iter().sum();
    shares[0] += total - given;
    while let Some(empty) = shares.iter().position(|&s| s == 0) {
        // With at least one unit per share and an empty one, the largest has two.
        let largest = (0..shares.len()).rev().max_by_key(|&i| shares[i])?;
        shares[largest] -= 1;
        shares[empty] = 1;
    }
    Some(shares)
}

/// The guest nodes of a VM with `vcpus` vCPUs and `memory` bytes of `page`-byte
/// pages whose GPUs sit on `nodes` (host node, its GPUs; lowest first):
/// `vcpus_per_node` when given, else shares of the vCPUs in proportion to the
/// GPUs, and shares of whole pages likewise. `distance` is the host's SLIT; a
/// missing or impossible entry is the ACPI default. Why it cannot be done is for
/// the client: it is the request's vCPUs or memory that do not go round.
pub fn mirror(
    nodes: &[(u32, Vec<Bdf>)],
    vcpus: u32,
    memory: u64,
    page: u64,
    vcpus_per_node: &[u32],
    distance: impl Fn(u32, u32) -> Option<u8>,
) -> Result<Vec<GuestNode>, String> {
    let host_nodes = nodes
        .iter()
        .map(|(n, _)| n.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let count = nodes.len();
    let weights: Vec<u64> = nodes.iter().map(|(_, gpus)| gpus.len() as u64).collect();
    let cpus: Vec<u64> = if vcpus_per_node.is_empty() {
        split(u64::from(vcpus), &weights).ok_or_else(|| {
            format!(
                "vcpus is {vcpus}, fewer than the {count} guest NUMA nodes that mirror host nodes {host_nodes}, where the VM's GPUs sit (each needs a vCPU): give at least {count} vcpus, or numa \"flat\""
            )
        })?
    } else if vcpus_per_node.len() != count {
        return Err(format!(
            "numa_vcpus has {} counts, but the VM's GPUs sit on {count} host NUMA nodes ({host_nodes}): give one count per node, lowest node first, or leave numa_vcpus out",
            vcpus_per_node.len()
        ));
    } else {
        vcpus_per_node.iter().map(|&n| u64::from(n)).collect()
    };
    let pages = split(memory / page, &weights).ok_or_else(|| {
        format!(
            "memory is {}, too little to give each of the {count} guest NUMA nodes that mirror host nodes {host_nodes} a {} page: give at least {}, or numa \"flat\"",
            format_bytes(memory),
            format_bytes(page),
            format_bytes(page * count as u64)
        )
    })?;
    let matrix: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            (0..count)
                .map(|j| {
                    // One row for both directions: form-vmm wants them symmetric.
                    let (low, high) = (nodes[i.min(j)].0, nodes[i.max(j)].0);
                    match i == j {
                        true => LOCAL_DISTANCE,
                        false => distance(low, high)
                            .filter(|&d| d > LOCAL_DISTANCE)
                            .unwrap_or(DEFAULT_REMOTE_DISTANCE),
                    }
                })
                .collect()
        })
        .collect();
    let mut first = 0u32;
    Ok(nodes
        .iter()
        .zip(cpus)
        .zip(pages)
        .zip(matrix)
        .map(|((((host_node, gpus), cpus), pages), distances)| {
            // The shares add up to `vcpus` (at most 255), so they fit.
            let cpus = first..first + cpus as u32;
            first = cpus.end;
            GuestNode {
                host_node: *host_node,
                gpus: gpus.clone(),
                cpus,
                memory: pages * page,
                distances,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn gpus(count: usize, base: u8) -> Vec<Bdf> {
        (0..count)
            .map(|i| {
                format!("0000:{:02x}:00.0", base as usize + i)
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn shares_are_proportional_with_the_rest_to_the_first_and_none_empty() {
        assert_eq!(split(32, &[4, 4]), Some(vec![16, 16]));
        assert_eq!(split(33, &[4, 4]), Some(vec![17, 16]));
        assert_eq!(split(32, &[6, 2]), Some(vec![24, 8]));
        assert_eq!(split(10, &[1, 3]), Some(vec![3, 7]));
        // Shares that round to nothing take from the largest.
        assert_eq!(split(5, &[1, 4, 1, 1, 1]), Some(vec![1, 1, 1, 1, 1]));
        assert_eq!(split(3, &[1, 7]), Some(vec![1, 2]));
        assert_eq!(split(4, &[7, 1, 1]), Some(vec![2, 1, 1]));
        assert_eq!(split(2, &[1, 1]), Some(vec![1, 1]));
        assert_eq!(split(1, &[1, 1]), None);
        assert_eq!(
            split(u64::MAX, &[1, 1]),
            Some(vec![u64::MAX / 2 + 1, u64::MAX / 2])
        );
        for total in 3..40u64 {
            let shares = split(total, &[3, 1, 2]).unwrap();
            assert_eq!(shares.iter().sum::<u64>(), total);
            assert!(shares.iter().all(|&s| s >= 1), "{total}: {shares:?}");
        }
    }

    #[test]
    fn two_sockets_of_four_gpus_get_half_each() {
        let nodes = [(0, gpus(4, 0x13)), (1, gpus(4, 0x53))];
        let slit = |a: u32, b: u32| (a, b).eq(&(0, 1)).then_some(21);
        let guest = mirror(&nodes, 32, 512 * G, G, &[], slit).unwrap();
        assert_eq!(guest.len(), 2);
        assert_eq!(
            (guest[0].cpus.clone(), guest[1].cpus.clone()),
            (0..16, 16..32)
        );
        assert_eq!((guest[0].memory, guest[1].memory), (256 * G, 256 * G));
        assert_eq!(guest[0].distances, [10, 21]);
        assert_eq!(guest[1].distances, [21, 10]);
        assert_eq!(guest[1].gpus, nodes[1].1);
        assert_eq!(guest[1].host_node, 1);
    }

    #[test]
    fn uneven_gpus_memory_in_whole_pages_and_explicit_vcpus() {
        let nodes = [(0, gpus(1, 0x13)), (3, gpus(3, 0x53))];
        // 10 GiB of 1 GiB pages: floor(2.5) + the page rounding left on node 0.
        let guest = mirror(&nodes, 8, 10 * G, G, &[], |_, _| None).unwrap();
        assert_eq!((guest[0].memory, guest[1].memory), (3 * G, 7 * G));
        assert_eq!((guest[0].cpus.len(), guest[1].cpus.len()), (2, 6));
        assert_eq!(guest[0].distances, [10, 20], "no SLIT: the default");
        // 4 KiB pages split exactly where the GPUs do.
        let guest = mirror(&nodes, 8, 4 * G, 4096, &[], |_, _| Some(5)).unwrap();
        assert_eq!((guest[0].memory, guest[1].memory), (G, 3 * G));
        assert_eq!(
            guest[0].distances,
            [10, 20],
            "a SLIT entry of 10 or less is no distance"
        );
        let guest = mirror(&nodes, 8, 10 * G, G, &[5, 3], |_, _| None).unwrap();
        assert_eq!((guest[0].cpus.clone(), guest[1].cpus.clone()), (0..5, 5..8));
    }

    #[test]
    fn too_few_vcpus_pages_or_counts_are_refused() {
        let nodes = [(0, gpus(4, 0x13)), (1, gpus(4, 0x53))];
        let refuse = |vcpus, memory, explicit: &[u32]| {
            mirror(&nodes, vcpus, memory, G, explicit, |_, _| None).unwrap_err()
        };
        assert_eq!(
            refuse(1, 8 * G, &[]),
            "vcpus is 1, fewer than the 2 guest NUMA nodes that mirror host nodes 0, 1, where the VM's GPUs sit (each needs a vCPU): give at least 2 vcpus, or numa \"flat\""
        );
        assert_eq!(
            refuse(8, G, &[]),
            "memory is 1 GiB, too little to give each of the 2 guest NUMA nodes that mirror host nodes 0, 1 a 1 GiB page: give at least 2 GiB, or numa \"flat\""
        );
        assert_eq!(
            refuse(8, 8 * G, &[4, 2, 2]),
            "numa_vcpus has 3 counts, but the VM's GPUs sit on 2 host NUMA nodes (0, 1): give one count per node, lowest node first, or leave numa_vcpus out"
        );
    }

    #[test]
    fn placements_report_their_nodes_and_ram() {
        let nodes = [(0, gpus(1, 0x13)), (1, gpus(1, 0x53))];
        let mirrored = Placement {
            layout: Layout::Mirrored(mirror(&nodes, 4, 4 * G, G, &[], |_, _| None).unwrap()),
            hugepage: Some(G),
        };
        assert_eq!(mirrored.numa_node(), None);
        assert_eq!(mirrored.ram(4 * G), [(Some(0), 2 * G), (Some(1), 2 * G)]);
        let info = mirrored.guest_nodes();
        assert_eq!(info[1].vcpus, [2, 3]);
        assert_eq!(info[1].gpus, ["0000:53:00.0"]);
        let bound = Placement {
            layout: Layout::Node(1),
            hugepage: None,
        };
        assert_eq!((bound.numa_node(), bound.guest_nodes()), (Some(1), vec![]));
        assert_eq!(bound.ram(G), [(Some(1), G)]);
    }
}
