//! The guest's NUMA topology, resolved against the guest layout: each node's
//! vCPUs, guest RAM ranges and host nodes, and the distances between nodes. The
//! ACPI tables describe it ([`crate::acpi_numa`]) and the VM places vCPU threads
//! by it.

use crate::config::{numa::distance_matrix, VmConfig};
use crate::memory_zones::zone_ranges;
use crate::numa::{self, HostNode};
use form_vm_allocator::{GuestLayout, MemoryRegion};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestNumaNode {
    /// The ACPI proximity domain: the node's `guest_numa_id`.
    pub id: u32,
    /// vCPU ids, which are also their APIC ids.
    pub vcpus: Vec<u32>,
    /// The node's zones' guest physical ranges.
    pub ram: Vec<MemoryRegion>,
    /// The host nodes its zones are bound to, each once.
    pub host_nodes: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestNuma {
    /// By id.
    pub nodes: Vec<GuestNumaNode>,
    /// `distances[a][b]`, by id.
    pub distances: Vec<Vec<u8>>,
    /// Whether the guest is told (SRAT, SLIT): when `numa` is given. Zones alone
    /// make one node, which a guest without the tables assumes anyway.
    pub in_acpi: bool,
}

impl GuestNuma {
    /// None without memory zones. With zones but no `numa`, one node holding every
    /// vCPU and zone. `config` must have passed `validate` and `layout` hold its
    /// RAM.
    pub fn new(config: &VmConfig, layout: &GuestLayout) -> Option<GuestNuma> {
        let zones = config.memory.zones();
        if zones.is_empty() {
            return None;
        }
        let sizes: Vec<u64> = zones.iter().map(|z| z.size).collect();
        let ranges = zone_ranges(layout.ram_regions(), &sizes)?;
        let by_id: BTreeMap<&str, usize> = zones
            .iter()
            .enumerate()
            .map(|(i, z)| (z.id.as_str(), i))
            .collect();
        let node_of = |zone_ids: &mut dyn Iterator<Item = usize>, id: u32, vcpus: Vec<u32>| {
            let mut node = GuestNumaNode {
                id,
                vcpus,
                ram: Vec::new(),
                host_nodes: Vec::new(),
            };
            for i in zone_ids {
                node.ram.extend_from_slice(&ranges[i]);
                if let Some(host) = zones[i].host_numa_node {
                    if !node.host_nodes.contains(&host) {
                        node.host_nodes.push(host);
                    }
                }
            }
            node.ram.sort_by_key(|r| r.start);
            node
        };
        let Some(numa) = config.numa.as_deref().filter(|n| !n.is_empty()) else {
            let vcpus = (0..u32::from(config.cpus.max_vcpus)).collect();
            return Some(GuestNuma {
                nodes: vec![node_of(&mut (0..zones.len()), 0, vcpus)],
                distances: vec![vec![crate::config::numa::LOCAL_DISTANCE]],
                in_acpi: false,
            });
        };
        let mut nodes: Vec<GuestNumaNode> = numa
            .iter()
            .map(|n| {
                let mut vcpus: Vec<u32> = n.cpus.iter().flatten().map(|&c| u32::from(c)).collect();
                vcpus.sort_unstable();
                vcpus.dedup();
                let mut zone_ids = n
                    .memory_zones
                    .iter()
                    .flatten()
                    .filter_map(|z| by_id.get(z.as_str()).copied());
                node_of(&mut zone_ids, n.guest_numa_id, vcpus)
            })
            .collect();
        nodes.sort_by_key(|n| n.id);
        Some(GuestNuma {
            nodes,
            distances: distance_matrix(numa).ok()?,
            in_acpi: true,
        })
    }

    /// The node vCPU `vcpu` belongs to.
    pub fn node_of_vcpu(&self, vcpu: u32) -> Option<&GuestNumaNode> {
        self.nodes.iter().find(|n| n.vcpus.contains(&vcpu))
    }

    /// How many of the first `vcpus` vCPUs CPUID may say share a last-level
    /// cache. Linux groups CPUs by APIC id >> log2(that number) and warns (a
    /// WARN with a backtrace) when a group spans nodes; so the largest power of
    /// two whose aligned groups of vCPU ids each stay in one node, or all of
    /// them when the guest is not told of nodes.
    pub fn llc_vcpus(&self, vcpus: u32) -> u32 {
        if !self.in_acpi || self.nodes.len() < 2 {
            return vcpus;
        }
        let node = |vcpu: u32| self.node_of_vcpu(vcpu).map(|n| n.id);
        let mut size = vcpus.max(1).next_power_of_two();
        while size > 1 {
            let one_node_each = (0..vcpus).step_by(size as usize).all(|first| {
                let last = (first + size).min(vcpus);
                (first..last).all(|v| node(v) == node(first))
            });
            if one_node_each {
                break;
            }
            size /= 2;
        }
        size
    }
}

/// Where the vCPU threads of a guest node bound to `hosts` run: on the CPUs of
/// those host nodes that this process may use. None (anywhere) when the node is
/// bound nowhere or its host nodes have no usable CPUs.
pub fn vcpu_cpus(hosts: &[&HostNode]) -> Option<Vec<usize>> {
    let mut cpus: Vec<usize> = hosts
        .iter()
        .filter_map(|h| numa::vcpu_cpus(h))
        .flatten()
        .collect();
    cpus.sort_unstable();
    cpus.dedup();
    (!cpus.is_empty()).then_some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MemoryConfig, MemoryZoneConfig, NumaConfig, NumaDistance};

    const G: u64 = 1 << 30;

    fn zone(id: &str, size: u64, host: Option<u32>) -> MemoryZoneConfig {
        MemoryZoneConfig {
            id: id.into(),
            size,
            host_numa_node: host,
            ..Default::default()
        }
    }

    fn config(zones: Vec<MemoryZoneConfig>, numa: Option<Vec<NumaConfig>>) -> VmConfig {
        let mut config = VmConfig {
            memory: MemoryConfig {
                size: 0,
                zones: Some(zones),
                ..Default::default()
            },
            numa,
            ..Default::default()
        };
        config.cpus.boot_vcpus = 4;
        config.cpus.max_vcpus = 4;
        config
    }

    fn layout(config: &VmConfig) -> GuestLayout {
        GuestLayout::new(config.memory.ram_size(), 40).unwrap()
    }

    #[test]
    fn without_zones_there_is_no_topology() {
        let config = VmConfig::default();
        assert_eq!(GuestNuma::new(&config, &layout(&config)), None);
    }

    #[test]
    fn zones_alone_make_one_node_the_guest_is_not_told_of() {
        let config = config(vec![zone("a", G, Some(0)), zone("b", G, Some(1))], None);
        let numa = GuestNuma::new(&config, &layout(&config)).unwrap();
        assert!(!numa.in_acpi);
        assert_eq!(numa.nodes.len(), 1);
        assert_eq!(numa.nodes[0].vcpus, vec![0, 1, 2, 3]);
        assert_eq!(numa.nodes[0].host_nodes, vec![0, 1]);
        // One range per zone, adjacent ones not merged.
        assert_eq!(
            numa.nodes[0].ram,
            vec![
                MemoryRegion { start: 0, size: G },
                MemoryRegion { start: G, size: G }
            ]
        );
    }

    #[test]
    fn nodes_get_their_zones_ranges_vcpus_and_distances() {
        let node = |id: u32, cpus: &[u8], zones: &[&str]| NumaConfig {
            guest_numa_id: id,
            cpus: Some(cpus.to_vec()),
            memory_zones: Some(zones.iter().map(|z| z.to_string()).collect()),
            distances: (id == 1).then(|| {
                vec![NumaDistance {
                    destination: 0,
                    distance: 32,
                }]
            }),
            ..Default::default()
        };
        // Listed out of order: node 1 first, and node 0 owning the last zone too.
        let config = config(
            vec![
                zone("a", 2 * G, Some(0)),
                zone("b", 2 * G, Some(1)),
                zone("c", G, Some(0)),
            ],
            Some(vec![
                node(1, &[3, 2], &["b"]),
                node(0, &[0, 1], &["c", "a"]),
            ]),
        );
        let numa = GuestNuma::new(&config, &layout(&config)).unwrap();
        assert!(numa.in_acpi);
        assert_eq!(numa.distances, vec![vec![10, 32], vec![32, 10]]);
        let region = |start, size| MemoryRegion { start, size };
        assert_eq!(
            numa.nodes,
            vec![
                GuestNumaNode {
                    id: 0,
                    vcpus: vec![0, 1],
                    ram: vec![region(0, 2 * G), region(5 * G, G)],
                    host_nodes: vec![0],
                },
                GuestNumaNode {
                    id: 1,
                    vcpus: vec![2, 3],
                    ram: vec![region(2 * G, G), region(4 * G, G)],
                    host_nodes: vec![1],
                },
            ]
        );
        assert_eq!(numa.node_of_vcpu(2).unwrap().id, 1);
        assert_eq!(numa.node_of_vcpu(9), None);
    }

    #[test]
    fn a_last_level_cache_never_spans_two_nodes() {
        let with_nodes = |nodes: &[&[u32]]| GuestNuma {
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(id, vcpus)| GuestNumaNode {
                    id: id as u32,
                    vcpus: vcpus.to_vec(),
                    ram: Vec::new(),
                    host_nodes: Vec::new(),
                })
                .collect(),
            distances: Vec::new(),
            in_acpi: true,
        };
        assert_eq!(with_nodes(&[&[0, 1, 2, 3], &[4, 5, 6, 7]]).llc_vcpus(8), 4);
        assert_eq!(with_nodes(&[&[0, 1], &[2, 3], &[4, 5]]).llc_vcpus(6), 2);
        assert_eq!(with_nodes(&[&[0, 1, 2, 3], &[4, 5]]).llc_vcpus(6), 4);
        assert_eq!(with_nodes(&[&[0, 2], &[1, 3]]).llc_vcpus(4), 1);
        assert_eq!(with_nodes(&[&[0, 1, 2], &[3]]).llc_vcpus(4), 1);
        // Only the vCPUs the VM has count.
        assert_eq!(with_nodes(&[&[0, 1], &[2, 3]]).llc_vcpus(2), 2);
        // One node, or nodes the guest is not told of: every vCPU shares it.
        assert_eq!(with_nodes(&[&[0, 1, 2]]).llc_vcpus(3), 3);
        let untold = GuestNuma {
            in_acpi: false,
            ..with_nodes(&[&[0, 2], &[1, 3]])
        };
        assert_eq!(untold.llc_vcpus(4), 4);
    }

    #[test]
    fn vcpus_of_unbound_or_cpuless_nodes_run_anywhere() {
        assert_eq!(vcpu_cpus(&[]), None);
        let memory_only = HostNode {
            node: 1,
            cpus: Vec::new(),
        };
        assert_eq!(vcpu_cpus(&[&memory_only]), None);
        let here = numa::thread_affinity(0).unwrap();
        let with_cpus = HostNode {
            node: 0,
            cpus: vec![here[0]],
        };
        assert_eq!(
            vcpu_cpus(&[&memory_only, &with_cpus, &with_cpus]),
            Some(vec![here[0]])
        );
    }
}
