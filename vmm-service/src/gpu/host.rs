//! Where the host's kernel interfaces live, and reading the small text files in them.
//!
//! Everything the `gpu` module reads goes through [`HostPaths`], so tests point it at a
//! generated fixture tree instead of the real `/sys`, `/proc` and `/dev`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::Bdf;

/// Roots of the kernel interfaces the module reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// sysfs, normally `/sys`.
    pub sysfs: PathBuf,
    /// procfs, normally `/proc`.
    pub procfs: PathBuf,
    /// devtmpfs, normally `/dev` (VFIO group nodes appear under `<dev>/vfio`).
    pub dev: PathBuf,
    /// Kernel modules, normally `/lib/modules` (to tell whether vfio-pci can be loaded).
    pub modules: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            sysfs: PathBuf::from("/sys"),
            procfs: PathBuf::from("/proc"),
            dev: PathBuf::from("/dev"),
            modules: PathBuf::from("/lib/modules"),
        }
    }
}

impl HostPaths {
    /// Real `/proc`, `/dev` and `/lib/modules` with a chosen sysfs root.
    pub fn with_sysfs(sysfs: impl Into<PathBuf>) -> Self {
        Self {
            sysfs: sysfs.into(),
            ..Self::default()
        }
    }

    /// `<sysfs>/bus/pci/devices`, one entry per PCI function.
    pub fn pci_devices_dir(&self) -> PathBuf {
        self.sysfs.join("bus/pci/devices")
    }

    /// The sysfs directory of one function.
    pub fn device_dir(&self, bdf: &Bdf) -> PathBuf {
        self.pci_devices_dir().join(bdf.to_string())
    }

    /// `<sysfs>/bus/pci/drivers/<name>`.
    pub fn driver_dir(&self, driver: &str) -> PathBuf {
        self.sysfs.join("bus/pci/drivers").join(driver)
    }

    /// `<sysfs>/bus/pci/drivers_probe`: writing a BDF asks the kernel to find it a driver.
    pub fn drivers_probe(&self) -> PathBuf {
        self.sysfs.join("bus/pci/drivers_probe")
    }

    /// `<sysfs>/kernel/iommu_groups`.
    pub fn iommu_groups_dir(&self) -> PathBuf {
        self.sysfs.join("kernel/iommu_groups")
    }

    /// `<dev>/vfio/<group>`, the node a VMM opens to use a group bound to vfio-pci.
    pub fn vfio_group_node(&self, group: u32) -> PathBuf {
        self.dev.join("vfio").join(group.to_string())
    }
}

/// Contents of a one-line sysfs/procfs attribute without the trailing newline;
/// `None` when the attribute does not exist (older kernels, other device types).
pub(crate) fn read_attr(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim_end_matches(['\n', '\0']).trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A `0x`-prefixed hexadecimal attribute such as `vendor` or `class`.
pub(crate) fn parse_hex(text: &str) -> Option<u64> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    u64::from_str_radix(digits, 16).ok()
}

/// The last component of a symlink's target (`driver -> ../../bus/pci/drivers/nvidia`
/// gives `nvidia`); `None` when the link does not exist.
pub(crate) fn link_name(path: &Path) -> io::Result<Option<String>> {
    match fs::read_link(path) {
        Ok(target) => Ok(target
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
