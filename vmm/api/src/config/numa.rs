//! Guest NUMA, in Cloud Hypervisor's shape: memory zones (`memory.zones`,
//! `--memory-zone`), each its own piece of guest RAM with its own backing and host
//! node, and guest nodes (`numa`, `--numa`) that own zones and vCPUs and say how
//! far apart they are.
//!
//! The rules: with zones, guest RAM is the zones in order (zone 0 at the lowest
//! guest address) and `memory.size` is 0 (Cloud Hypervisor's spelling) or their
//! total; the backing options (`hugepages`, `hugepage_size`, `host_numa_node`) are
//! per zone, `memory.shared` shares every zone. With `numa`, every vCPU (0 to
//! `max_vcpus` - 1) and every zone belongs to exactly one node, nodes are numbered
//! 0, 1, 2... and every node has memory. A distance given one way holds both ways;
//! one given neither way is 20 (10 to itself).

use super::options::{list_items, ByteSize, OptionError, Options};
use super::{
    invalid, ConfigError, CpusConfig, MemoryConfig, ParseError, DEFAULT_MEMORY_SIZE,
    HUGEPAGE_SIZES, PAGE_SIZE,
};
use crate::host_list::{format_list, parse_list};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// ACPI SLIT distances (ACPI 6.5, 5.2.17): a node to itself, and the default
/// between two nodes when none is given, as Linux assumes without a SLIT.
pub const LOCAL_DISTANCE: u8 = 10;
pub const DEFAULT_REMOTE_DISTANCE: u8 = 20;

/// Guest NUMA nodes a VM may have: more than any host has sockets (the distance
/// matrix is nodes², so a hostile config must not pick the count).
pub const MAX_GUEST_NODES: usize = 64;
/// Memory zones a VM may have (each is a mapping and a KVM memory slot or two).
pub const MAX_ZONES: usize = 128;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NumaConfigError {
    #[error("{0} guest NUMA nodes: at most {MAX_GUEST_NODES}")]
    TooManyNodes(usize),
    #[error("{0} memory zones: at most {MAX_ZONES}")]
    TooManyZones(usize),
    #[error("memory zone id is empty: give each zone a name (id=...)")]
    EmptyZoneId,
    #[error("memory zone id '{0}' is used by more than one zone")]
    DuplicateZoneId(String),
    #[error("memory zone {0}: size must be greater than zero")]
    ZeroZoneSize(String),
    #[error("memory zone {id}: size {size} bytes is not a multiple of 4 KiB")]
    UnalignedZoneSize { id: String, size: u64 },
    #[error("memory zone {0}: hugepage_size is given but hugepages is off: add hugepages=on")]
    ZoneHugepageSizeWithoutHugepages(String),
    #[error("memory zone {id}: hugepage_size {page} bytes: x86-64 huge pages are 2M or 1G")]
    ZoneHugepageSize { id: String, page: u64 },
    #[error(
        "memory zone {id}: size {size} bytes is not a multiple of the {page}-byte huge page size"
    )]
    ZoneHugepageAlignment { id: String, size: u64, page: u64 },
    #[error("memory zone {id} starts {offset:#x} bytes into guest RAM, which is not a multiple of its {page}-byte huge pages; put zones with larger pages first or size the zones before it in multiples of {page}")]
    ZoneHugepageOffset { id: String, offset: u64, page: u64 },
    #[error("memory.{0} is per zone when memory zones are given: set it on the zones (--memory-zone ...,{0}=...)")]
    MemoryOptionWithZones(&'static str),
    #[error("memory.size is {size} bytes but the memory zones add up to {total}; with zones give size 0 or their total")]
    ZonesSizeMismatch { size: u64, total: u64 },
    #[error("the memory zones add up to more than 2^64 bytes")]
    ZonesTooLarge,
    #[error("numa is given but memory has no zones: each guest NUMA node's memory is a zone (memory.zones, --memory-zone)")]
    NumaWithoutZones,
    #[error("guest NUMA node {0} is listed more than once")]
    DuplicateNode(u32),
    #[error("guest NUMA node ids are {ids}; they must be 0 to one less than the number of nodes, each once")]
    NodeIdsNotDense { ids: String },
    #[error("guest NUMA node {node}: vCPU {cpu} does not exist (max_vcpus is {max})")]
    CpuOutOfRange { node: u32, cpu: u8, max: u8 },
    #[error("vCPU {cpu} is in guest NUMA nodes {first} and {second}; a vCPU belongs to one node")]
    CpuInTwoNodes { cpu: u8, first: u32, second: u32 },
    #[error(
        "vCPU {0} is in no guest NUMA node; with numa every vCPU up to max_vcpus belongs to one"
    )]
    CpuInNoNode(u8),
    #[error("guest NUMA node {node}: memory zone '{zone}' does not exist")]
    UnknownZone { node: u32, zone: String },
    #[error("memory zone {zone} is in guest NUMA nodes {first} and {second}; a zone belongs to one node")]
    ZoneInTwoNodes {
        zone: String,
        first: u32,
        second: u32,
    },
    #[error("memory zone {0} is in no guest NUMA node; with numa every zone belongs to one")]
    ZoneInNoNode(String),
    #[error("guest NUMA node {0} has no memory zone; give it one (memory_zones=...)")]
    NodeWithoutMemory(u32),
    #[error("guest NUMA node {node}: distance to node {destination}, which does not exist")]
    UnknownDistanceNode { node: u32, destination: u32 },
    #[error("guest NUMA node {node}: distance to itself must be 10, got {distance}")]
    LocalDistance { node: u32, distance: u8 },
    #[error("guest NUMA node {node}: distance {distance} to node {destination} must be more than 10 (10 is a node to itself)")]
    RemoteDistance {
        node: u32,
        destination: u32,
        distance: u8,
    },
    #[error("guest NUMA node {node}: distance to node {destination} is given more than once")]
    DuplicateDistance { node: u32, destination: u32 },
    #[error("guest NUMA nodes {a} and {b}: distance {ab} one way but {ba} the other; distances are symmetric (give one of them)")]
    AsymmetricDistance { a: u32, b: u32, ab: u8, ba: u8 },
    #[error("guest NUMA node {0}: pci_segments is not supported; form-vmm has one PCI segment and its devices have no node")]
    PciSegments(u32),
}

/// A piece of guest RAM with its own backing (Cloud Hypervisor's
/// `MemoryZoneConfig`; its file, hotplug and prefault fields are not supported).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryZoneConfig {
    pub id: String,
    /// Bytes.
    pub size: u64,
    /// A shared mapping (memfd); also when `memory.shared` is on.
    #[serde(default)]
    pub shared: bool,
    #[serde(default)]
    pub hugepages: bool,
    /// 2 MiB or 1 GiB; the host's default size without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepage_size: Option<u64>,
    /// Take the zone's RAM from this host node only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_numa_node: Option<u32>,
}

impl MemoryZoneConfig {
    pub const OPTIONS: &'static [&'static str] = &[
        "id",
        "size",
        "shared",
        "hugepages",
        "hugepage_size",
        "host_numa_node",
    ];

    /// Parses `--memory-zone id=NAME,size=SIZE[,shared=on][,hugepages=on
    /// [,hugepage_size=2M|1G]][,host_numa_node=N]`.
    pub fn parse(input: &str) -> Result<MemoryZoneConfig, ParseError> {
        const FLAG: &str = "--memory-zone";
        let opts = Options::parse(FLAG, input, Self::OPTIONS)?;
        let zone = MemoryZoneConfig {
            id: opts.require("id")?,
            size: opts.require::<ByteSize>("size")?.0,
            shared: opts.get("shared")?.unwrap_or(false),
            hugepages: opts.get("hugepages")?.unwrap_or(false),
            hugepage_size: opts.get::<ByteSize>("hugepage_size")?.map(|s| s.0),
            host_numa_node: opts.get("host_numa_node")?,
        };
        zone.validate()
            .map_err(ConfigError::from)
            .map_err(invalid(FLAG, input))?;
        Ok(zone)
    }

    /// What can be said of the zone alone.
    pub fn validate(&self) -> Result<(), NumaConfigError> {
        let id = || self.id.clone();
        if self.id.is_empty() {
            return Err(NumaConfigError::EmptyZoneId);
        }
        if self.size == 0 {
            return Err(NumaConfigError::ZeroZoneSize(id()));
        }
        if !self.size.is_multiple_of(PAGE_SIZE) {
            return Err(NumaConfigError::UnalignedZoneSize {
                id: id(),
                size: self.size,
            });
        }
        if let Some(page) = self.hugepage_size {
            if !self.hugepages {
                return Err(NumaConfigError::ZoneHugepageSizeWithoutHugepages(id()));
            }
            if !HUGEPAGE_SIZES.contains(&page) {
                return Err(NumaConfigError::ZoneHugepageSize { id: id(), page });
            }
            if !self.size.is_multiple_of(page) {
                return Err(NumaConfigError::ZoneHugepageAlignment {
                    id: id(),
                    size: self.size,
                    page,
                });
            }
        }
        Ok(())
    }
}

impl MemoryConfig {
    /// The memory zones; empty when RAM is one piece.
    pub fn zones(&self) -> &[MemoryZoneConfig] {
        self.zones.as_deref().unwrap_or(&[])
    }

    /// Bytes of guest RAM: the zones' total, or `size` without zones. Call after
    /// [`MemoryConfig::validate`] (a total past 2^64 saturates).
    pub fn ram_size(&self) -> u64 {
        match self.zones() {
            [] => self.size,
            zones => zones.iter().fold(0u64, |sum, z| sum.saturating_add(z.size)),
        }
    }

    /// `--memory` with the `--memory-zone`s. Without zones this is
    /// [`MemoryConfig::parse`]; with them `--memory` may be left out and its size
    /// defaults to the zones' total. What concerns the zones together is left to
    /// [`MemoryConfig::validate`], as for JSON.
    pub fn parse_with_zones(
        memory: Option<&str>,
        zones: &[impl AsRef<str>],
    ) -> Result<MemoryConfig, ParseError> {
        if zones.is_empty() {
            return Ok(memory
                .map(MemoryConfig::parse)
                .transpose()?
                .unwrap_or_default());
        }
        let zones = zones
            .iter()
            .map(|z| MemoryZoneConfig::parse(z.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut config = match memory {
            Some(input) => MemoryConfig::parse_options(input)?,
            None => MemoryConfig::default(),
        };
        let size_given = memory
            .map(|input| Options::parse("--memory", input, Self::OPTIONS))
            .transpose()?
            .is_some_and(|opts| opts.raw("size").is_some());
        config.zones = Some(zones);
        if !size_given {
            debug_assert_eq!(config.size, DEFAULT_MEMORY_SIZE);
            config.size = config.ram_size();
        }
        Ok(config)
    }
}

/// The checks of [`MemoryConfig::validate`] when there are zones.
pub(super) fn validate_zones(
    memory: &MemoryConfig,
    zones: &[MemoryZoneConfig],
) -> Result<(), NumaConfigError> {
    if zones.len() > MAX_ZONES {
        return Err(NumaConfigError::TooManyZones(zones.len()));
    }
    for (name, given) in [
        ("hugepages", memory.hugepages),
        ("hugepage_size", memory.hugepage_size.is_some()),
        ("host_numa_node", memory.host_numa_node.is_some()),
    ] {
        if given {
            return Err(NumaConfigError::MemoryOptionWithZones(name));
        }
    }
    let mut ids = HashSet::new();
    let mut offset = 0u64;
    for zone in zones {
        zone.validate()?;
        if !ids.insert(zone.id.as_str()) {
            return Err(NumaConfigError::DuplicateZoneId(zone.id.clone()));
        }
        // The 32-bit hole's edges (3 and 4 GiB) are 1 GiB aligned, so an offset
        // into RAM aligned to the page is a guest address aligned to it.
        if let Some(page) = zone.hugepage_size {
            if !offset.is_multiple_of(page) {
                return Err(NumaConfigError::ZoneHugepageOffset {
                    id: zone.id.clone(),
                    offset,
                    page,
                });
            }
        }
        offset = offset
            .checked_add(zone.size)
            .ok_or(NumaConfigError::ZonesTooLarge)?;
    }
    if memory.size != 0 && memory.size != offset {
        return Err(NumaConfigError::ZonesSizeMismatch {
            size: memory.size,
            total: offset,
        });
    }
    Ok(())
}

/// A guest node's distance to another (Cloud Hypervisor's `NumaDistance`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaDistance {
    pub destination: u32,
    pub distance: u8,
}

/// One guest NUMA node (Cloud Hypervisor's `NumaConfig`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaConfig {
    pub guest_numa_id: u32,
    /// vCPU ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distances: Option<Vec<NumaDistance>>,
    /// Ids of `memory.zones`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_zones: Option<Vec<String>>,
    /// Accepted for Cloud Hypervisor's shape; only an empty list is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_segments: Option<Vec<u16>>,
}

impl NumaConfig {
    pub const OPTIONS: &'static [&'static str] =
        &["guest_numa_id", "cpus", "distances", "memory_zones"];

    /// Parses `--numa guest_numa_id=N[,cpus=LIST][,distances=[DEST@DIST,...]]
    /// [,memory_zones=[ID,...]]`; a list with one item needs no brackets and CPU
    /// lists take ranges (`cpus=[0-3,8]`). Whether the nodes fit together is
    /// [`crate::config::VmConfig::validate`]'s business.
    pub fn parse(input: &str) -> Result<NumaConfig, ParseError> {
        const FLAG: &str = "--numa";
        let opts = Options::parse(FLAG, input, Self::OPTIONS)?;
        let bad = |key: &'static str, value: &str, expected: &str| OptionError::InvalidValue {
            flag: FLAG,
            key,
            value: value.to_string(),
            expected: expected.to_string(),
        };
        let cpus = match opts.raw("cpus") {
            None => None,
            Some(raw) => {
                const EXPECTED: &str =
                    "expected vCPU ids from 0 to 254 and ranges, such as [0-3,8]";
                let ids = parse_list(&list_items(raw).join(","))
                    .ok_or_else(|| bad("cpus", raw, EXPECTED))?;
                let ids = ids
                    .into_iter()
                    .map(u8::try_from)
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| bad("cpus", raw, EXPECTED))?;
                Some(ids)
            }
        };
        let distances = match opts.raw("distances") {
            None => None,
            Some(raw) => {
                const EXPECTED: &str =
                    "expected NODE@DISTANCE pairs such as [1@20,2@30] (distance 10 to 255)";
                let pairs = list_items(raw)
                    .into_iter()
                    .map(|item| {
                        let (dest, dist) = item.split_once('@')?;
                        Some(NumaDistance {
                            destination: dest.parse().ok()?,
                            distance: dist.parse().ok()?,
                        })
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("distances", raw, EXPECTED))?;
                Some(pairs)
            }
        };
        let memory_zones = opts.raw("memory_zones").map(|raw| {
            list_items(raw)
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        });
        Ok(NumaConfig {
            guest_numa_id: opts.require("guest_numa_id")?,
            cpus,
            distances,
            memory_zones,
            pci_segments: None,
        })
    }
}

/// The checks `numa` needs, against the vCPUs and zones it divides up.
pub(super) fn validate_numa(
    cpus: &CpusConfig,
    memory: &MemoryConfig,
    numa: &[NumaConfig],
) -> Result<(), NumaConfigError> {
    if numa.is_empty() {
        return Ok(());
    }
    if memory.zones().is_empty() {
        return Err(NumaConfigError::NumaWithoutZones);
    }
    if numa.len() > MAX_GUEST_NODES {
        return Err(NumaConfigError::TooManyNodes(numa.len()));
    }
    let mut ids: Vec<u32> = Vec::with_capacity(numa.len());
    for node in numa {
        if ids.contains(&node.guest_numa_id) {
            return Err(NumaConfigError::DuplicateNode(node.guest_numa_id));
        }
        ids.push(node.guest_numa_id);
        if node.pci_segments.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(NumaConfigError::PciSegments(node.guest_numa_id));
        }
    }
    ids.sort_unstable();
    if ids
        .iter()
        .enumerate()
        .any(|(i, id)| i as u64 != u64::from(*id))
    {
        let ids: Vec<usize> = ids.iter().map(|&id| id as usize).collect();
        return Err(NumaConfigError::NodeIdsNotDense {
            ids: format_list(&ids),
        });
    }

    let max = cpus.max_vcpus;
    let mut cpu_owner: Vec<Option<u32>> = vec![None; usize::from(max)];
    for node in numa {
        for &cpu in node.cpus.as_deref().unwrap_or(&[]) {
            let owner =
                cpu_owner
                    .get_mut(usize::from(cpu))
                    .ok_or(NumaConfigError::CpuOutOfRange {
                        node: node.guest_numa_id,
                        cpu,
                        max,
                    })?;
            match *owner {
                Some(first) if first != node.guest_numa_id => {
                    return Err(NumaConfigError::CpuInTwoNodes {
                        cpu,
                        first,
                        second: node.guest_numa_id,
                    })
                }
                _ => *owner = Some(node.guest_numa_id),
            }
        }
    }
    if let Some(cpu) = cpu_owner.iter().position(Option::is_none) {
        return Err(NumaConfigError::CpuInNoNode(cpu as u8));
    }

    let mut zone_owner: HashMap<&str, Option<u32>> = memory
        .zones()
        .iter()
        .map(|z| (z.id.as_str(), None))
        .collect();
    for node in numa {
        let zones = node.memory_zones.as_deref().unwrap_or(&[]);
        if zones.is_empty() {
            return Err(NumaConfigError::NodeWithoutMemory(node.guest_numa_id));
        }
        for zone in zones {
            let owner =
                zone_owner
                    .get_mut(zone.as_str())
                    .ok_or_else(|| NumaConfigError::UnknownZone {
                        node: node.guest_numa_id,
                        zone: zone.clone(),
                    })?;
            match *owner {
                Some(first) if first != node.guest_numa_id => {
                    return Err(NumaConfigError::ZoneInTwoNodes {
                        zone: zone.clone(),
                        first,
                        second: node.guest_numa_id,
                    })
                }
                _ => *owner = Some(node.guest_numa_id),
            }
        }
    }
    // In the zones' order, so the error names the first one left out.
    if let Some(zone) = memory
        .zones()
        .iter()
        .find(|z| zone_owner[z.id.as_str()].is_none())
    {
        return Err(NumaConfigError::ZoneInNoNode(zone.id.clone()));
    }
    distance_matrix(numa).map(|_| ())
}

/// The distances between guest nodes, indexed by `guest_numa_id`: each given
/// one, mirrored where only one way is given, [`DEFAULT_REMOTE_DISTANCE`] where
/// neither is. `numa`'s ids must be dense (as [`validate_numa`] checks first).
pub fn distance_matrix(numa: &[NumaConfig]) -> Result<Vec<Vec<u8>>, NumaConfigError> {
    let n = numa.len();
    let mut given: Vec<Vec<Option<u8>>> = vec![vec![None; n]; n];
    for node in numa {
        let from = node.guest_numa_id;
        for d in node.distances.as_deref().unwrap_or(&[]) {
            let to = d.destination;
            if to as usize >= n {
                return Err(NumaConfigError::UnknownDistanceNode {
                    node: from,
                    destination: to,
                });
            }
            if to == from && d.distance != LOCAL_DISTANCE {
                return Err(NumaConfigError::LocalDistance {
                    node: from,
                    distance: d.distance,
                });
            }
            if to != from && d.distance <= LOCAL_DISTANCE {
                return Err(NumaConfigError::RemoteDistance {
                    node: from,
                    destination: to,
                    distance: d.distance,
                });
            }
            let slot = &mut given[from as usize][to as usize];
            if slot.is_some() {
                return Err(NumaConfigError::DuplicateDistance {
                    node: from,
                    destination: to,
                });
            }
            *slot = Some(d.distance);
        }
    }
    let mut matrix = vec![vec![LOCAL_DISTANCE; n]; n];
    for a in 0..n {
        for b in a + 1..n {
            let distance = match (given[a][b], given[b][a]) {
                (Some(ab), Some(ba)) if ab != ba => {
                    return Err(NumaConfigError::AsymmetricDistance {
                        a: a as u32,
                        b: b as u32,
                        ab,
                        ba,
                    })
                }
                (Some(d), _) | (None, Some(d)) => d,
                (None, None) => DEFAULT_REMOTE_DISTANCE,
            };
            matrix[a][b] = distance;
            matrix[b][a] = distance;
        }
    }
    Ok(matrix)
}

#[cfg(test)]
mod tests {
    use super::super::VmConfig;
    use super::*;

    const G: u64 = 1 << 30;

    fn zone(id: &str, size: u64) -> MemoryZoneConfig {
        MemoryZoneConfig {
            id: id.into(),
            size,
            ..Default::default()
        }
    }

    fn node(id: u32, cpus: &[u8], zones: &[&str]) -> NumaConfig {
        NumaConfig {
            guest_numa_id: id,
            cpus: Some(cpus.to_vec()),
            memory_zones: Some(zones.iter().map(|z| z.to_string()).collect()),
            ..Default::default()
        }
    }

    /// Two nodes of two vCPUs and one 1 GiB zone each.
    fn two_nodes() -> (CpusConfig, MemoryConfig, Vec<NumaConfig>) {
        let cpus = CpusConfig {
            boot_vcpus: 4,
            max_vcpus: 4,
        };
        let memory = MemoryConfig {
            size: 0,
            zones: Some(vec![zone("mem0", G), zone("mem1", G)]),
            ..Default::default()
        };
        let numa = vec![node(0, &[0, 1], &["mem0"]), node(1, &[2, 3], &["mem1"])];
        (cpus, memory, numa)
    }

    fn check(cpus: &CpusConfig, memory: &MemoryConfig, numa: &[NumaConfig]) -> String {
        memory
            .validate()
            .map_err(|e| e.to_string())
            .and_then(|()| validate_numa(cpus, memory, numa).map_err(|e| e.to_string()))
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn two_nodes_validate_and_old_configs_are_untouched() {
        let (cpus, memory, numa) = two_nodes();
        assert_eq!(check(&cpus, &memory, &numa), "");
        assert_eq!(memory.ram_size(), 2 * G);
        let plain = MemoryConfig::default();
        assert!(plain.zones().is_empty());
        assert_eq!(plain.ram_size(), DEFAULT_MEMORY_SIZE);
        validate_numa(&cpus, &plain, &[]).unwrap();
        // Old JSON has neither field, and they stay out of what is written.
        let old: VmConfig = serde_json::from_str(r#"{"payload":{"kernel":"/k"}}"#).unwrap();
        assert_eq!(old.memory.zones, None);
        assert_eq!(old.numa, None);
        let text = serde_json::to_string(&old).unwrap();
        assert!(!text.contains("zones") && !text.contains("numa"), "{text}");
    }

    #[test]
    fn hostile_counts_of_zones_and_nodes_are_refused_before_anything_is_sized() {
        let (cpus, mut memory, _) = two_nodes();
        let ids: Vec<String> = (0..=MAX_ZONES).map(|i| format!("m{i}")).collect();
        memory.zones = Some(ids.iter().map(|id| zone(id, 4096)).collect());
        assert_eq!(check(&cpus, &memory, &[]), "129 memory zones: at most 128");
        memory.zones = Some(
            ids[..MAX_GUEST_NODES + 1]
                .iter()
                .map(|id| zone(id, 4096))
                .collect(),
        );
        let numa: Vec<NumaConfig> = ids[..MAX_GUEST_NODES + 1]
            .iter()
            .enumerate()
            .map(|(i, id)| node(i as u32, &[], &[id]))
            .collect();
        assert_eq!(
            check(&cpus, &memory, &numa),
            "65 guest NUMA nodes: at most 64"
        );
    }

    #[test]
    fn memory_size_with_zones_is_zero_or_their_total() {
        let (cpus, mut memory, numa) = two_nodes();
        memory.size = 2 * G;
        assert_eq!(check(&cpus, &memory, &numa), "");
        memory.size = G;
        assert_eq!(
            check(&cpus, &memory, &numa),
            "memory.size is 1073741824 bytes but the memory zones add up to 2147483648; with zones give size 0 or their total"
        );
        memory.size = 0;
        memory.zones = Some(vec![zone("a", u64::MAX - 4095), zone("b", 4096 * 2)]);
        assert_eq!(
            check(&cpus, &memory, &[]),
            "the memory zones add up to more than 2^64 bytes"
        );
    }

    #[test]
    fn backing_options_are_per_zone() {
        let (cpus, mut memory, numa) = two_nodes();
        memory.host_numa_node = Some(0);
        assert_eq!(
            check(&cpus, &memory, &numa),
            "memory.host_numa_node is per zone when memory zones are given: set it on the zones (--memory-zone ...,host_numa_node=...)"
        );
        memory.host_numa_node = None;
        memory.hugepages = true;
        assert!(check(&cpus, &memory, &numa).starts_with("memory.hugepages is per zone"));
    }

    #[test]
    fn zones_are_refused_one_by_one() {
        let (cpus, mut memory, numa) = two_nodes();
        let mut refuse = |zones: Vec<MemoryZoneConfig>, message: &str| {
            memory.zones = Some(zones);
            assert_eq!(check(&cpus, &memory, &numa), message);
        };
        refuse(
            vec![zone("", G)],
            "memory zone id is empty: give each zone a name (id=...)",
        );
        refuse(
            vec![zone("mem0", G), zone("mem0", G)],
            "memory zone id 'mem0' is used by more than one zone",
        );
        refuse(
            vec![zone("mem0", 0)],
            "memory zone mem0: size must be greater than zero",
        );
        refuse(
            vec![zone("mem0", 1000)],
            "memory zone mem0: size 1000 bytes is not a multiple of 4 KiB",
        );
        let huge = |id: &str, size, page| MemoryZoneConfig {
            hugepages: true,
            hugepage_size: Some(page),
            ..zone(id, size)
        };
        refuse(
            vec![MemoryZoneConfig {
                hugepage_size: Some(2 << 20),
                ..zone("mem0", G)
            }],
            "memory zone mem0: hugepage_size is given but hugepages is off: add hugepages=on",
        );
        refuse(
            vec![huge("mem0", G, 4 << 20)],
            "memory zone mem0: hugepage_size 4194304 bytes: x86-64 huge pages are 2M or 1G",
        );
        refuse(
            vec![huge("mem0", 3 << 20, 2 << 20)],
            "memory zone mem0: size 3145728 bytes is not a multiple of the 2097152-byte huge page size",
        );
        refuse(
            vec![huge("mem0", 512 << 20, 2 << 20), huge("mem1", G, G)],
            "memory zone mem1 starts 0x20000000 bytes into guest RAM, which is not a multiple of its 1073741824-byte huge pages; put zones with larger pages first or size the zones before it in multiples of 1073741824",
        );
        memory.zones = Some(vec![huge("mem0", G, G), huge("mem1", 512 << 20, 2 << 20)]);
        assert_eq!(check(&cpus, &memory, &numa), "");
    }

    #[test]
    fn nodes_are_refused_one_by_one() {
        let (cpus, memory, good) = two_nodes();
        let refuse = |edit: &dyn Fn(&mut Vec<NumaConfig>), message: &str| {
            let mut numa = good.clone();
            edit(&mut numa);
            assert_eq!(check(&cpus, &memory, &numa), message);
        };
        refuse(
            &|n| n[1].guest_numa_id = 0,
            "guest NUMA node 0 is listed more than once",
        );
        refuse(
            &|n| n[1].guest_numa_id = 2,
            "guest NUMA node ids are 0,2; they must be 0 to one less than the number of nodes, each once",
        );
        refuse(
            &|n| n[1].cpus = Some(vec![2, 3, 4]),
            "guest NUMA node 1: vCPU 4 does not exist (max_vcpus is 4)",
        );
        refuse(
            &|n| n[1].cpus = Some(vec![1, 2, 3]),
            "vCPU 1 is in guest NUMA nodes 0 and 1; a vCPU belongs to one node",
        );
        refuse(
            &|n| n[1].cpus = Some(vec![3]),
            "vCPU 2 is in no guest NUMA node; with numa every vCPU up to max_vcpus belongs to one",
        );
        refuse(
            &|n| n[1].memory_zones = Some(vec!["mem2".into()]),
            "guest NUMA node 1: memory zone 'mem2' does not exist",
        );
        refuse(
            &|n| n[1].memory_zones = Some(vec!["mem0".into(), "mem1".into()]),
            "memory zone mem0 is in guest NUMA nodes 0 and 1; a zone belongs to one node",
        );
        refuse(
            &|n| {
                n[0].memory_zones = Some(vec!["mem1".into()]);
                n[1].memory_zones = None;
            },
            "guest NUMA node 1 has no memory zone; give it one (memory_zones=...)",
        );
        refuse(
            &|n| n.push(node(2, &[], &[])),
            "guest NUMA node 2 has no memory zone; give it one (memory_zones=...)",
        );
        refuse(
            &|n| n[1].pci_segments = Some(vec![1]),
            "guest NUMA node 1: pci_segments is not supported; form-vmm has one PCI segment and its devices have no node",
        );
        let mut memory = memory.clone();
        memory.zones.as_mut().unwrap().push(zone("mem2", G));
        assert_eq!(
            check(&cpus, &memory, &good),
            "memory zone mem2 is in no guest NUMA node; with numa every zone belongs to one"
        );
        memory.zones = None;
        memory.size = G;
        assert_eq!(
            check(&cpus, &memory, &good),
            "numa is given but memory has no zones: each guest NUMA node's memory is a zone (memory.zones, --memory-zone)"
        );
    }

    fn with_distances(distances: &[&[(u32, u8)]]) -> Vec<NumaConfig> {
        distances
            .iter()
            .enumerate()
            .map(|(id, d)| NumaConfig {
                guest_numa_id: id as u32,
                distances: Some(
                    d.iter()
                        .map(|&(destination, distance)| NumaDistance {
                            destination,
                            distance,
                        })
                        .collect(),
                ),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn distances_are_mirrored_or_defaulted() {
        let matrix =
            distance_matrix(&with_distances(&[&[(1, 15)], &[(0, 15)], &[(0, 30)]])).unwrap();
        assert_eq!(
            matrix,
            vec![vec![10, 15, 30], vec![15, 10, 20], vec![30, 20, 10]]
        );
        let matrix = distance_matrix(&with_distances(&[&[(0, 10)], &[]])).unwrap();
        assert_eq!(matrix, vec![vec![10, 20], vec![20, 10]]);
    }

    #[test]
    fn distances_are_refused_one_by_one() {
        let refuse = |d: &[&[(u32, u8)]], message: &str| {
            assert_eq!(
                distance_matrix(&with_distances(d)).unwrap_err().to_string(),
                message
            );
        };
        refuse(
            &[&[(2, 20)], &[]],
            "guest NUMA node 0: distance to node 2, which does not exist",
        );
        refuse(
            &[&[(0, 12)], &[]],
            "guest NUMA node 0: distance to itself must be 10, got 12",
        );
        refuse(
            &[&[], &[(0, 10)]],
            "guest NUMA node 1: distance 10 to node 0 must be more than 10 (10 is a node to itself)",
        );
        refuse(
            &[&[(1, 20), (1, 20)], &[]],
            "guest NUMA node 0: distance to node 1 is given more than once",
        );
        refuse(
            &[&[(1, 20)], &[(0, 30)]],
            "guest NUMA nodes 0 and 1: distance 20 one way but 30 the other; distances are symmetric (give one of them)",
        );
        // validate_numa reaches the same checks.
        let (cpus, memory, mut numa) = two_nodes();
        numa[0].distances = Some(vec![NumaDistance {
            destination: 1,
            distance: 5,
        }]);
        assert!(check(&cpus, &memory, &numa).contains("must be more than 10"));
    }

    #[test]
    fn command_line_zones_and_nodes() {
        let zone = MemoryZoneConfig::parse(
            "id=mem0,size=1G,host_numa_node=1,hugepages=on,hugepage_size=1G",
        )
        .unwrap();
        assert_eq!(
            zone,
            MemoryZoneConfig {
                id: "mem0".into(),
                size: G,
                shared: false,
                hugepages: true,
                hugepage_size: Some(G),
                host_numa_node: Some(1),
            }
        );
        assert_eq!(
            MemoryZoneConfig::parse("size=1G").unwrap_err().to_string(),
            "--memory-zone: option 'id' is required (id=...)"
        );
        assert_eq!(
            MemoryZoneConfig::parse("id=m,size=1000").unwrap_err().to_string(),
            "--memory-zone id=m,size=1000: memory zone m: size 1000 bytes is not a multiple of 4 KiB"
        );

        let node = NumaConfig::parse(
            "guest_numa_id=1,cpus=[0-2,5],distances=[0@20,2@30],memory_zones=[mem1,mem2]",
        )
        .unwrap();
        assert_eq!(
            node,
            NumaConfig {
                guest_numa_id: 1,
                cpus: Some(vec![0, 1, 2, 5]),
                distances: Some(vec![
                    NumaDistance {
                        destination: 0,
                        distance: 20
                    },
                    NumaDistance {
                        destination: 2,
                        distance: 30
                    },
                ]),
                memory_zones: Some(vec!["mem1".into(), "mem2".into()]),
                pci_segments: None,
            }
        );
        let single =
            NumaConfig::parse("guest_numa_id=0,cpus=0-3,distances=1@20,memory_zones=mem0").unwrap();
        assert_eq!(single.cpus, Some(vec![0, 1, 2, 3]));
        assert_eq!(single.memory_zones, Some(vec!["mem0".to_string()]));
        assert_eq!(
            NumaConfig::parse("guest_numa_id=0,cpus=[3-1]")
                .unwrap_err()
                .to_string(),
            "--numa cpus=[3-1]: expected vCPU ids from 0 to 254 and ranges, such as [0-3,8]"
        );
        assert_eq!(
            NumaConfig::parse("guest_numa_id=0,cpus=300")
                .unwrap_err()
                .to_string(),
            "--numa cpus=300: expected vCPU ids from 0 to 254 and ranges, such as [0-3,8]"
        );
        assert_eq!(
            NumaConfig::parse("guest_numa_id=0,distances=[1:20]").unwrap_err().to_string(),
            "--numa distances=[1:20]: expected NODE@DISTANCE pairs such as [1@20,2@30] (distance 10 to 255)"
        );
        assert_eq!(
            NumaConfig::parse("cpus=0").unwrap_err().to_string(),
            "--numa: option 'guest_numa_id' is required (guest_numa_id=...)"
        );
    }

    #[test]
    fn command_line_memory_takes_its_size_from_the_zones() {
        let zones = ["id=mem0,size=1G", "id=mem1,size=512M"];
        let memory = MemoryConfig::parse_with_zones(None, &zones).unwrap();
        assert_eq!(memory.size, G + (512 << 20));
        assert_eq!(memory.zones().len(), 2);
        memory.validate().unwrap();
        let memory = MemoryConfig::parse_with_zones(Some("shared=on"), &zones).unwrap();
        assert!(memory.shared);
        assert_eq!(memory.size, G + (512 << 20));
        let memory = MemoryConfig::parse_with_zones(Some("size=0"), &zones).unwrap();
        assert_eq!(memory.size, 0);
        memory.validate().unwrap();
        let memory = MemoryConfig::parse_with_zones(Some("size=1G"), &zones).unwrap();
        assert!(matches!(
            memory.validate(),
            Err(ConfigError::Numa(NumaConfigError::ZonesSizeMismatch { .. }))
        ));
        // Without zones, --memory is what it always was.
        let plain = MemoryConfig::parse_with_zones(Some("size=1G"), &[] as &[&str]).unwrap();
        assert_eq!(plain, MemoryConfig::parse("size=1G").unwrap());
        assert_eq!(
            MemoryConfig::parse_with_zones(None, &[] as &[&str]).unwrap(),
            MemoryConfig::default()
        );
    }

    #[test]
    fn json_in_cloud_hypervisors_shape() {
        let config: VmConfig = serde_json::from_str(
            r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":2,"max_vcpus":2},
                "memory":{"size":0,"zones":[
                    {"id":"mem0","size":1073741824,"host_numa_node":0},
                    {"id":"mem1","size":1073741824,"host_numa_node":1,"hugepages":true,"hugepage_size":1073741824}]},
                "numa":[{"guest_numa_id":0,"cpus":[0],"distances":[{"destination":1,"distance":21}],"memory_zones":["mem0"]},
                        {"guest_numa_id":1,"cpus":[1],"memory_zones":["mem1"]}]}"#,
        )
        .unwrap();
        assert_eq!(config.memory.zones().len(), 2);
        assert_eq!(config.memory.zones()[1].hugepage_size, Some(G));
        let numa = config.numa.as_deref().unwrap();
        assert_eq!(numa[0].distances.as_ref().unwrap()[0].distance, 21);
        validate_numa(&config.cpus, &config.memory, numa).unwrap();
        assert_eq!(distance_matrix(numa).unwrap()[1][0], 21);
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), config);
        // Cloud Hypervisor writes absent lists as null.
        let nulls: VmConfig = serde_json::from_str(
            r#"{"payload":{"kernel":"/k"},"memory":{"size":1024,"zones":null},"numa":null}"#,
        )
        .unwrap();
        assert!(nulls.memory.zones().is_empty() && nulls.numa.is_none());
    }
}
