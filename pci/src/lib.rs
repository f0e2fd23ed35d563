//! PCI for form-vmm: configuration space, the segment 0 root buses with their host bridges,
//! the config access mechanisms (port I/O and ECAM) and MSI/MSI-X emulation.

// A panic in device or hypervisor code kills the vCPU thread a guest access
// runs on; failures there are errors, not unwraps.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod bus;
pub mod config;
pub mod config_io;
pub mod config_mmio;
pub mod device;
pub mod host_bridge;
pub mod interrupt;
pub mod msi;
pub mod msi_irqfd;
pub mod msix;
pub mod segment;
pub mod vfio;
pub mod virtio;

pub use bus::{BarReprogramHandler, PciBus, PciBusError};
pub use config::{BarKind, BarReprogram, PciBar, PciConfiguration};
pub use device::{PciDevice, SharedPciDevice};
pub use interrupt::{BoxError, InterruptRouting, MsiInterruptRoute, MsiMessage, MsiRouteError};
pub use msi_irqfd::IrqfdMsiRoute;
pub use segment::{PciSegment, PciSegmentError};
pub use virtio::{IoEventRegistrar, VirtioPciDevice, VirtioPciError, VIRTIO_PCI_BAR_SIZE};

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m` even if an earlier holder panicked: a device that panicked once must
/// not make every later guest access to it panic the vCPU thread.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
