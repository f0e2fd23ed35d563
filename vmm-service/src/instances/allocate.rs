//! Choosing GPUs for a model/count request so they sit close together: one NUMA node
//! (memory and CPUs local to all of them) and, better, one PCIe switch (peer-to-peer
//! traffic stays below the root complex).

use std::collections::BTreeMap;
use std::fs;

use crate::gpu::{Bdf, GpuInfo, HostPaths};

/// A free GPU that matches the request, with where it sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub bdf: Bdf,
    pub numa_node: Option<u32>,
    /// The bridges above the GPU, the root port first.
    pub bridges: Vec<Bdf>,
}

impl Candidate {
    pub fn of(host: &HostPaths, info: &GpuInfo) -> Self {
        Self {
            bdf: info.bdf(),
            numa_node: info.function.numa_node,
            bridges: upstream_bridges(host, &info.bdf()),
        }
    }

    /// The port all GPUs behind one switch share: a switch's upstream port is the
    /// grandparent of each GPU (upstream → downstream port → GPU); a GPU right under a
    /// root port has only its root port.
    fn switch(&self) -> Option<Bdf> {
        switch_of(&self.bridges)
    }
}

/// The switch a device sits behind, from its bridges (root port first): the
/// upstream port of its switch (upstream → downstream port → device), or its root
/// port when it sits right under one.
pub fn switch_of(bridges: &[Bdf]) -> Option<Bdf> {
    match bridges.len() {
        0 => None,
        1 => bridges.first().copied(),
        n => bridges.get(n - 2).copied(),
    }
}

/// The PCI functions above `bdf`, read from its sysfs link, which the kernel nests
/// under each bridge (`devices/pci0000:00/0000:00:01.0/0000:01:00.0`).
pub fn upstream_bridges(host: &HostPaths, bdf: &Bdf) -> Vec<Bdf> {
    let dir = host.device_dir(bdf);
    let target = fs::read_link(&dir).unwrap_or(dir);
    let mut chain: Vec<Bdf> = target
        .components()
        .filter_map(|c| c.as_os_str().to_str().and_then(|s| s.parse::<Bdf>().ok()))
        .collect();
    if chain.last() == Some(bdf) {
        chain.pop();
    }
    chain
}

/// Whether the GPU's name contains `model`, ignoring case.
pub fn matches_model(info: &GpuInfo, model: &str) -> bool {
    let wanted = model.trim().to_lowercase();
    info.display_name().to_lowercase().contains(&wanted)
}

/// Picks `count` of `candidates`: all behind one switch if some switch has enough,
/// else all on one NUMA node (those sharing a switch together), else the fewest nodes.
/// Among groups that fit, the smallest is used, so larger groups stay whole for
/// larger requests. `None` if there are fewer than `count`.
pub fn choose(candidates: &[Candidate], count: usize) -> Option<Vec<Bdf>> {
    if count == 0 || candidates.len() < count {
        return None;
    }
    let by_switch = group(candidates, Candidate::switch);
    if let Some(members) = best_fit(&by_switch, count) {
        return Some(take(members, count));
    }
    let by_node = group(candidates, |c| c.numa_node);
    if let Some(members) = best_fit(&by_node, count) {
        return Some(take(&clustered(members, &by_switch), count));
    }
    // Spread over nodes: biggest nodes first so the VM spans as few as possible.
    let mut nodes: Vec<&Vec<Candidate>> = by_node.values().collect();
    nodes.sort_by_key(|members| std::cmp::Reverse(members.len()));
    let ordered: Vec<Candidate> = nodes
        .into_iter()
        .flat_map(|members| clustered(members, &by_switch))
        .collect();
    Some(take(&ordered, count))
}

fn group<K: Ord>(
    candidates: &[Candidate],
    key: impl Fn(&Candidate) -> Option<K>,
) -> BTreeMap<K, Vec<Candidate>> {
    let mut groups: BTreeMap<K, Vec<Candidate>> = BTreeMap::new();
    for candidate in candidates {
        if let Some(k) = key(candidate) {
            groups.entry(k).or_default().push(candidate.clone());
        }
    }
    for members in groups.values_mut() {
        members.sort_by_key(|c| c.bdf);
    }
    groups
}

fn best_fit<K>(groups: &BTreeMap<K, Vec<Candidate>>, count: usize) -> Option<&Vec<Candidate>> {
    groups
        .values()
        .filter(|members| members.len() >= count)
        .min_by_key(|members| members.len())
}

/// `members` ordered so GPUs behind one switch come together, fullest switch first.
fn clustered(members: &[Candidate], by_switch: &BTreeMap<Bdf, Vec<Candidate>>) -> Vec<Candidate> {
    let size = |c: &Candidate| {
        c.switch()
            .and_then(|s| by_switch.get(&s))
            .map_or(0, Vec::len)
    };
    let mut ordered = members.to_vec();
    ordered.sort_by_key(|c| (std::cmp::Reverse(size(c)), c.switch(), c.bdf));
    ordered
}

fn take(members: &[Candidate], count: usize) -> Vec<Bdf> {
    members.iter().take(count).map(|c| c.bdf).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(address: &str, node: u32, bridges: &[&str]) -> Candidate {
        Candidate {
            bdf: address.parse().unwrap(),
            numa_node: Some(node),
            bridges: bridges.iter().map(|b| b.parse().unwrap()).collect(),
        }
    }

    fn addresses(chosen: Option<Vec<Bdf>>) -> Vec<String> {
        chosen.unwrap().iter().map(Bdf::to_string).collect()
    }

    #[test]
    fn two_behind_one_switch_beat_two_on_one_node() {
        let candidates = [
            gpu(
                "0000:10:00.0",
                0,
                &["0000:00:01.0", "0000:01:00.0", "0000:02:00.0"],
            ),
            gpu(
                "0000:20:00.0",
                0,
                &["0000:00:02.0", "0000:11:00.0", "0000:12:00.0"],
            ),
            gpu(
                "0000:21:00.0",
                0,
                &["0000:00:02.0", "0000:11:00.0", "0000:12:01.0"],
            ),
        ];
        assert_eq!(
            addresses(choose(&candidates, 2)),
            ["0000:20:00.0", "0000:21:00.0"]
        );
    }

    #[test]
    fn fewer_candidates_than_asked_is_none() {
        let candidates = [gpu("0000:10:00.0", 0, &["0000:00:01.0"])];
        assert_eq!(choose(&candidates, 2), None);
        assert_eq!(choose(&candidates, 0), None);
    }
}
