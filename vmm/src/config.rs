//! The VM configuration, in Cloud Hypervisor's JSON shape so its tooling can drive
//! form-vmm unchanged. The same types are filled from the command line.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    #[serde(default)]
    pub cpus: CpusConfig,
    #[serde(default)]
    pub memory: MemoryConfig,
    pub payload: PayloadConfig,
    #[serde(default)]
    pub serial: ConsoleConfig,
    #[serde(default = "ConsoleConfig::off")]
    pub console: ConsoleConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusConfig {
    pub boot_vcpus: u8,
    pub max_vcpus: u8,
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig { boot_vcpus: 1, max_vcpus: 1 }
    }
}

pub const DEFAULT_MEMORY_SIZE: u64 = 512 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Bytes of guest RAM.
    pub size: u64,
    /// Back RAM with a shared mapping (memfd), as vhost-user back ends need.
    #[serde(default)]
    pub shared: bool,
    /// Back RAM with huge pages from the host's hugetlbfs pool.
    #[serde(default)]
    pub hugepages: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { size: DEFAULT_MEMORY_SIZE, shared: false, hugepages: false }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadConfig {
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleOutputMode {
    Off,
    Pty,
    #[default]
    Tty,
    File,
    Null,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    pub mode: ConsoleOutputMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl ConsoleConfig {
    pub fn off() -> Self {
        ConsoleConfig { mode: ConsoleOutputMode::Off, file: None }
    }
}

/// A host device passed through with VFIO, named by its sysfs path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub iommu: bool,
    #[serde(default)]
    pub pci_segment: u16,
    /// NVIDIA GPUDirect P2P clique id advertised to the guest driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_nv_gpudirect_clique: Option<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cloud_hypervisor_shape_with_defaults() {
        let cfg: VmConfig = serde_json::from_str(
            r#"{"payload":{"kernel":"/k","cmdline":"hello"},"memory":{"size":67108864},
                "devices":[{"path":"/sys/bus/pci/devices/0000:01:00.0","x_nv_gpudirect_clique":3}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.payload.kernel.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(cfg.memory.size, 64 << 20);
        assert!(!cfg.memory.shared);
        assert_eq!(cfg.cpus.boot_vcpus, 1);
        assert_eq!(cfg.serial.mode, ConsoleOutputMode::Tty);
        assert_eq!(cfg.console.mode, ConsoleOutputMode::Off);
        assert_eq!(cfg.devices[0].x_nv_gpudirect_clique, Some(3));
    }
}
