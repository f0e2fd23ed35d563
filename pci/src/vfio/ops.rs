//! The kernel VFIO calls a passed-through device needs, as a trait.
//!
//! [`VfioPciDevice`](super::VfioPciDevice) only talks to hardware through
//! [`VfioDeviceOps`], so config-space, BAR and interrupt logic run in tests against
//! `fake::FakeVfioDevice` (feature `testing`), while
//! [`KernelVfioDevice`](super::kernel::KernelVfioDevice) issues the real ioctls.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// Region indices of a vfio-pci device (`VFIO_PCI_*_REGION_INDEX`).
pub const BAR0_REGION: u32 = 0;
pub const ROM_REGION: u32 = 6;
pub const CONFIG_REGION: u32 = 7;

/// An error any trait implementation may return.
pub use crate::interrupt::BoxError;

/// An area of a region the kernel lets us mmap (`VFIO_REGION_INFO_CAP_SPARSE_MMAP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseArea {
    pub offset: u64,
    pub size: u64,
}

/// What `VFIO_DEVICE_GET_REGION_INFO` says about one region.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegionInfo {
    pub size: u64,
    pub readable: bool,
    pub writable: bool,
    /// `VFIO_REGION_INFO_FLAG_MMAP`: (parts of) the region may be mmapped.
    pub mappable: bool,
    /// With the sparse-mmap capability, only these areas may be mmapped; `None`
    /// means the whole region (when `mappable`).
    pub sparse_areas: Option<Vec<SparseArea>>,
}

/// The interrupt kinds of a vfio-pci device (`VFIO_PCI_*_IRQ_INDEX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IrqIndex {
    Intx = 0,
    Msi = 1,
    Msix = 2,
    /// AER error notification; unused.
    Err = 3,
    /// The host asks for the device back: an unbind from vfio-pci signals it and
    /// then waits, re-signalling every 10 s, until the VMM closes the device.
    Req = 4,
}

/// How many interrupt indexes a vfio-pci device has.
pub const IRQ_INDEXES: usize = 5;

/// What `VFIO_DEVICE_GET_IRQ_INFO` says about one interrupt index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqInfo {
    /// Vectors the index has; 0 when the device lacks it (e.g. no INTx pin).
    pub count: u32,
    /// `VFIO_IRQ_INFO_NORESIZE`: the vector count is fixed once enabled.
    pub noresize: bool,
}

/// What `VFIO_DEVICE_GET_INFO` says about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_RESET`: `VFIO_DEVICE_RESET` is supported.
    pub reset: bool,
    pub num_regions: u32,
    pub num_irqs: u32,
}

/// A VFIO call failed.
#[derive(Debug, thiserror::Error)]
pub enum VfioOpsError {
    #[error("{op} failed: {source}")]
    Kernel {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("VFIO region {index} cannot be {what}")]
    RegionAccess { index: u32, what: &'static str },
    #[error(
        "access of {len} bytes at {offset:#x} is outside VFIO region {index} ({size:#x} bytes)"
    )]
    OutOfRange {
        index: u32,
        offset: u64,
        len: usize,
        size: u64,
    },
}

impl VfioOpsError {
    pub fn kernel(op: impl Into<String>, source: io::Error) -> Self {
        Self::Kernel {
            op: op.into(),
            source,
        }
    }

    /// The errno of a failed kernel call, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub type OpsResult<T> = std::result::Result<T, VfioOpsError>;

/// The kernel VFIO calls of one device. Every method takes `&self`: the kernel
/// serialises what needs serialising.
pub trait VfioDeviceOps: Send + Sync {
    fn device_info(&self) -> DeviceInfo;

    /// `None` when the device has no such region (e.g. an absent BAR).
    fn region_info(&self, index: u32) -> Option<RegionInfo>;

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> OpsResult<()>;

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> OpsResult<()>;

    /// Maps `size` bytes of region `index` from `offset` (page aligned) shared and
    /// read-write into this process; returns the host address.
    fn mmap_region(&self, index: u32, offset: u64, size: u64) -> OpsResult<u64>;

    /// Undoes [`VfioDeviceOps::mmap_region`].
    fn munmap_region(&self, host_addr: u64, size: u64);

    /// `None` when the kernel does not report the index.
    fn irq_info(&self, index: IrqIndex) -> Option<IrqInfo>;

    /// `VFIO_DEVICE_SET_IRQS` with `DATA_EVENTFD | ACTION_TRIGGER` for vectors
    /// `start..start + fds.len()`; `None` detaches a vector's eventfd (-1). Enables
    /// the index in the host when it was off.
    fn set_irq_eventfds(
        &self,
        index: IrqIndex,
        start: u32,
        fds: &[Option<&EventFd>],
    ) -> OpsResult<()>;

    /// `VFIO_DEVICE_SET_IRQS` with `DATA_NONE | ACTION_TRIGGER` and count 0: turns
    /// the whole index off in the host.
    fn disable_irqs(&self, index: IrqIndex) -> OpsResult<()>;

    /// `DATA_EVENTFD | ACTION_UNMASK` on INTx: a write to `fd` unmasks the line
    /// (what a KVM resample eventfd does on guest EOI).
    fn set_intx_unmask_eventfd(&self, fd: &EventFd) -> OpsResult<()>;

    /// `VFIO_DEVICE_RESET`. Only called when [`DeviceInfo::reset`] is set.
    fn reset(&self) -> OpsResult<()>;
}
