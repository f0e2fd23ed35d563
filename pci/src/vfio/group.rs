//! IOMMU group membership: which other functions share a device's group.
//!
//! The IOMMU isolates groups, not devices, so a group's functions can only be
//! given to one VM together. A member on a host driver makes the kernel refuse the
//! group ("not viable"), which is reported with the member and its driver. A
//! member bound to `vfio-pci` but not passed to this VM is accepted: the kernel
//! hands the group to one container only, so nobody else can use that member
//! while this VM holds the group, and another VMM that asks for it is refused
//! when it opens the group (busy). Such members are reported so the VMM can say
//! so. PCI bridges (class 0x0604) may share a group and are ignored, as the kernel
//! does.
//!
//! Reads `<root>/bus/pci/devices/<bdf>/iommu_group` (a link whose name is the group
//! number), `<root>/kernel/iommu_groups/<n>/devices/*`, and each member's `driver`
//! link and `class` file; `<root>` is `/sys` on a host and a fixture tree in tests.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

const PCI_BRIDGE_CLASS: u32 = 0x0604;
const VFIO_DRIVERS: [&str; 1] = ["vfio-pci"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GroupError {
    #[error("cannot read the IOMMU group of {bdf} ({path}): {reason}; is the IOMMU on (intel_iommu=on / amd_iommu=on) and the device present?")]
    NoGroup {
        bdf: String,
        path: PathBuf,
        reason: String,
    },
    #[error("IOMMU group {group} of {bdf} is not viable: {member} is bound to host driver {driver}; bind every member of the group to vfio-pci")]
    NotViable {
        bdf: String,
        group: u32,
        member: String,
        driver: String,
    },
}

/// The IOMMU group number of `bdf` (e.g. `0000:01:00.0`).
pub fn iommu_group(sysfs_root: &Path, bdf: &str) -> Result<u32, GroupError> {
    let path = sysfs_root
        .join("bus/pci/devices")
        .join(bdf)
        .join("iommu_group");
    let fail = |reason: String| GroupError::NoGroup {
        bdf: bdf.to_string(),
        path: path.clone(),
        reason,
    };
    let target = fs::read_link(&path).map_err(|e| fail(e.to_string()))?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            fail(format!(
                "link target {} is not a group number",
                target.display()
            ))
        })
}

/// Every function in group `group`, sorted.
pub fn group_members(sysfs_root: &Path, group: u32) -> Vec<String> {
    let dir = sysfs_root
        .join("kernel/iommu_groups")
        .join(group.to_string())
        .join("devices");
    let mut members: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    members.sort();
    members
}

/// The driver `bdf` is bound to, by its sysfs `driver` link (None: no driver).
pub fn bound_driver(sysfs_root: &Path, bdf: &str) -> Option<String> {
    let link = fs::read_link(sysfs_root.join("bus/pci/devices").join(bdf).join("driver")).ok()?;
    Some(link.file_name()?.to_str()?.to_string())
}

fn is_bridge(sysfs_root: &Path, bdf: &str) -> bool {
    fs::read_to_string(sysfs_root.join("bus/pci/devices").join(bdf).join("class"))
        .ok()
        .and_then(|c| u32::from_str_radix(c.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|class| class >> 8 == PCI_BRIDGE_CLASS)
}

/// A group `bdf` may be attached with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCheck {
    pub group: u32,
    /// Members on vfio-pci that the VM does not pass through: held idle, out of
    /// everyone's reach, while the VM holds the group.
    pub idle: Vec<String>,
}

/// Checks that `bdf` may be attached to a VM whose VFIO devices are `vm_devices`
/// (`bdf` included or not) and returns its group.
pub fn check_group(
    sysfs_root: &Path,
    bdf: &str,
    vm_devices: &BTreeSet<String>,
) -> Result<GroupCheck, GroupError> {
    let group = iommu_group(sysfs_root, bdf)?;
    let mut idle = Vec::new();
    for member in group_members(sysfs_root, group) {
        if member == bdf || vm_devices.contains(&member) || is_bridge(sysfs_root, &member) {
            continue;
        }
        match bound_driver(sysfs_root, &member) {
            Some(d) if VFIO_DRIVERS.contains(&d.as_str()) => idle.push(member),
            Some(d) => {
                return Err(GroupError::NotViable {
                    bdf: bdf.to_string(),
                    group,
                    member,
                    driver: d,
                })
            }
            // Unbound functions do not stop the group from being used.
            None => {}
        }
    }
    Ok(GroupCheck { group, idle })
}
