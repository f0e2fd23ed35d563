//! Errors of the `gpu` module, each saying what was wrong and what to do about it.

use std::io;
use std::path::PathBuf;

use super::{Bdf, BdfError};

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(transparent)]
    Address(#[from] BdfError),

    #[error("no PCI device {bdf} on this host ({path} does not exist); `vmm-service gpu list` shows the GPUs")]
    NoSuchDevice { bdf: Bdf, path: PathBuf },

    #[error("{bdf} is not a GPU or accelerator (class {class:#08x}); only display (0x0300, 0x0302, 0x0380) and processing-accelerator (0x1200) functions can be bound or released here")]
    NotAGpu { bdf: Bdf, class: u32 },

    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },

    #[error("{path} holds '{value}', which is not what the kernel writes there")]
    Unparseable { path: PathBuf, value: String },

    #[error("{bdf} has no IOMMU group: the IOMMU is off or unsupported; enable VT-d/AMD-Vi in the firmware and boot with intel_iommu=on (Intel) or amd_iommu=on (AMD), then check `vmm-service doctor`")]
    NoIommuGroup { bdf: Bdf },

    #[error("the vfio-pci driver is not loaded ({path} is missing); run `modprobe vfio-pci`")]
    VfioPciMissing { path: PathBuf },

    #[error("{bdf} has boot_vga=1: it shows the host's console, and taking it away leaves the host without a display; pass --force if the console is not needed")]
    ConsoleDevice { bdf: Bdf },

    #[error("IOMMU group {group} of {gpu} also holds {others}, which the host is using; every device in a group goes to the VM together, so binding would take them from the host too. Move the GPU to a slot with its own group, or pass --force")]
    SharedGroup {
        gpu: Bdf,
        group: u32,
        others: String,
    },

    #[error("writing '{value}' to {path} failed: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },

    #[error("{bdf} is on driver {actual} after probing, not {expected}")]
    DriverDidNotTake {
        bdf: Bdf,
        expected: String,
        actual: String,
    },

    #[error("{path} did not appear within {waited_ms} ms after binding group {group} to vfio-pci; check `dmesg` for vfio-pci errors")]
    VfioNodeMissing {
        group: u32,
        path: PathBuf,
        waited_ms: u128,
    },

    #[error("{cause}; rolling back then failed too: {rollback}. Check the devices with `vmm-service gpu list`")]
    RollbackFailed {
        cause: Box<GpuError>,
        rollback: String,
    },

    #[error("driver record store {path}: {reason}")]
    Records { path: PathBuf, reason: String },
}

impl GpuError {
    pub(crate) fn read(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Read {
            path: path.into(),
            source,
        }
    }
}
