//! Why passing a host device through failed.

use form_vm_allocator::LayoutError;
use pci::vfio::bars::BarError;
use pci::vfio::config::VfioConfigError;
use pci::vfio::container::ContainerError;
use pci::vfio::VfioPciError;
use pci::PciBusError;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("VFIO is not available on this host (load vfio-pci): {0} does not exist")]
    Unavailable(PathBuf),
    #[error("{0} is not a PCI device path; give /sys/bus/pci/devices/<domain:bus:dev.fn>")]
    NotAPciDevice(PathBuf),
    #[error("{path}: there is no PCI device {bdf} on this host")]
    NoSuchDevice { path: PathBuf, bdf: String },
    #[error("{bdf} is {}, not to vfio-pci: bind it to vfio-pci first: vmm-service gpu bind {bdf}", bound_to(driver.as_deref()))]
    NotVfioBound { bdf: String, driver: Option<String> },
    #[error("device id {0:?} is already in use; pick another id or remove that device first")]
    DuplicateId(String),
    #[error("{path} ({bdf}) is already passed through to this VM as {id:?}")]
    DuplicateDevice {
        path: PathBuf,
        bdf: String,
        id: String,
    },
    #[error("no device with id {0:?} is attached to this VM")]
    UnknownId(String),
    #[error("the guest did not eject device {id} within {}s ({}); it is still attached to the VM. Retry, remove it without the guest's consent (require_eject false), or shut the VM down", waited.as_secs(), if *saw_request { "it read the removal request but did not eject" } else { "it never read the removal request: no ACPI PCI hotplug?" })]
    NotEjected {
        id: String,
        saw_request: bool,
        waited: Duration,
    },
    #[error("VFIO: {0}")]
    Container(#[source] ContainerError),
    #[error("device {id}: {source}")]
    Device {
        id: String,
        #[source]
        source: VfioPciError,
    },
    #[error("device {id}: {source}")]
    Bars {
        id: String,
        #[source]
        source: BarError,
    },
    #[error("device {id}: {source}")]
    Slot {
        id: String,
        #[source]
        source: PciBusError,
    },
    #[error("device {id}: cannot trap BAR {index} at {addr:#x}: {source}")]
    BarRegion {
        id: String,
        index: usize,
        addr: u64,
        #[source]
        source: devices::BusError,
    },
    #[error("device {id} is on PCI root bus {bus:#04x} (its guest node's), which has no hotplug controller: it cannot be removed while the guest runs; shut the VM down, or remove it before the boot")]
    NotHotRemovable { id: String, bus: u8 },
    #[error("device {id}: guest node {node} has no PCI root bus (nodes 0 to 7 have one)")]
    NoRootBus { id: String, node: u32 },
    #[error("guest address layout for passthrough: {0}")]
    Layout(#[from] LayoutError),
    #[error("guest RAM {start:#x}-{end:#x} lies outside the host IOMMU's usable IOVA ranges [{ranges}], so the device could not reach it; create the VM with the device (its layout then follows the IOMMU) or with less RAM")]
    RamOutsideIova {
        start: u64,
        end: u64,
        ranges: String,
    },
}

fn bound_to(driver: Option<&str>) -> String {
    match driver {
        Some(driver) => format!("bound to {driver}"),
        None => "bound to no driver".to_string(),
    }
}

impl VfioError {
    /// Whether the request itself was wrong (a client error), not the host: a
    /// device that cannot be passed as asked (its path, its driver, its IOMMU
    /// group, a capability for another vendor, BARs or RAM that do not fit).
    pub fn is_bad_request(&self) -> bool {
        match self {
            VfioError::NotAPciDevice(_)
            | VfioError::NoSuchDevice { .. }
            | VfioError::NotVfioBound { .. }
            | VfioError::DuplicateId(_)
            | VfioError::DuplicateDevice { .. }
            | VfioError::Bars { .. }
            | VfioError::Layout(_)
            | VfioError::NoRootBus { .. }
            | VfioError::NotHotRemovable { .. }
            | VfioError::RamOutsideIova { .. } => true,
            VfioError::Container(ContainerError::Group(_)) => true,
            VfioError::Device { source, .. } => matches!(
                source,
                VfioPciError::Config(
                    VfioConfigError::NotEndpoint(_)
                        | VfioConfigError::CliqueOutOfRange(_)
                        | VfioConfigError::CliqueNotNvidia(_)
                        | VfioConfigError::NoRoomForClique
                )
            ),
            VfioError::Slot {
                source: PciBusError::Full,
                ..
            } => true,
            _ => false,
        }
    }

    /// Whether what the request names is held elsewhere: another VM has its
    /// IOMMU group. Retrying after that VM lets go succeeds.
    pub fn is_busy(&self) -> bool {
        matches!(self, VfioError::Container(ContainerError::GroupBusy { .. }))
    }
}
