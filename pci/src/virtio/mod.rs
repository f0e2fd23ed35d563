//! The virtio-pci modern transport (virtio 1.2, 4.1): presents a
//! [`devices::virtio::VirtioDevice`] to the guest as a PCI function.
//!
//! Everything the guest talks to lives in one 32-bit memory BAR (BAR0), described by
//! vendor-specific capabilities in config space ([`layout`]):
//!
//! - common configuration ([`common_config`]): feature negotiation, device status,
//!   queue setup and interrupt vectors;
//! - notifications ([`notify`]): one 4-byte slot per queue. The VMM puts a KVM
//!   ioeventfd on each slot through [`IoEventRegistrar`], so a kick never leaves
//!   the kernel; a trapped write (no ioeventfd) signals the same eventfd;
//! - ISR status (read to clear) and the device's own configuration space;
//! - the MSI-X table and PBA. Interrupts are MSI-X only: one vector per queue plus
//!   one for configuration changes, delivered by [`VirtioPciInterrupt`]
//!   ([`interrupt`]) through [`crate::msix::Msix`] and an
//!   [`IrqfdMsiRoute`](crate::msi_irqfd::IrqfdMsiRoute).
//!
//! [`VirtioPciDevice`] ([`device`]) ties them together. When the driver sets
//! DRIVER_OK it validates the enabled queues against guest memory and activates the
//! device; a queue that is not entirely in guest memory, or a device that refuses
//! to start, leaves the device with DEVICE_NEEDS_RESET set instead.
//!
//! What the VMM does to attach a device:
//!
//! 1. Allocate [`VIRTIO_PCI_BAR_SIZE`] bytes, aligned to their size, from the 32-bit
//!    MMIO window, and a PCI slot.
//! 2. `VirtioPciDevice::new(id, device, memory, bar0, routing, ioevents)`; the
//!    queues' ioeventfds are registered at `bar0 + NOTIFY_OFFSET + 4 * queue`.
//! 3. Add it to the [`PciBus`](crate::PciBus) and put a
//!    [`PciBarRegion`](crate::device::PciBarRegion) over the whole BAR0 on the MMIO
//!    bus. On a `BarReprogramHandler::bar_moved`, move that region (the device moves
//!    its ioeventfds itself in [`PciDevice::move_bar`](crate::PciDevice::move_bar)).
//! 4. Dropping the device unregisters the ioeventfds, resets the device (its I/O
//!    thread stops) and frees its GSIs.

pub mod common_config;
pub mod device;
// Test support, built only for tests and the `testing` feature; a failed setup
// there should fail the test loudly.
#[cfg(any(test, feature = "testing"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod fake;
pub mod interrupt;
pub mod layout;
pub mod notify;
mod pci_cfg;

use std::io;

use vmm_sys_util::eventfd::EventFd;

use crate::config::PciConfigError;
pub use crate::interrupt::BoxError;
use crate::msix::MsixError;

pub use common_config::{CommonConfig, QueueConfig, NO_VECTOR};
pub use device::VirtioPciDevice;
pub use interrupt::VirtioPciInterrupt;
pub use layout::{MAX_QUEUES, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER, VIRTIO_PCI_BAR_SIZE};

/// Puts KVM ioeventfds on MMIO addresses: a guest write of any size and value at
/// `addr` signals `fd` without leaving the kernel. The VMM implements it with the
/// hypervisor crate's `Vm::register_ioevent(fd, IoEventAddress::Mmio(addr), None)`.
pub trait IoEventRegistrar: Send + Sync {
    fn register(&self, fd: &EventFd, addr: u64) -> Result<(), BoxError>;
    fn unregister(&self, fd: &EventFd, addr: u64) -> Result<(), BoxError>;
}

/// Creating a virtio-pci device failed. These come from the device model or the
/// host, never from the guest.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("virtio device {id} has no queues; a virtio device needs at least one")]
    NoQueues { id: String },
    #[error("virtio device {id} has {queues} queues; the transport supports at most {max}")]
    TooManyQueues {
        id: String,
        queues: usize,
        max: usize,
    },
    #[error(
        "virtio device {id} queue {queue} has maximum size {size}; it must be a power of two \
         from 1 to 32768"
    )]
    InvalidQueueSize { id: String, queue: usize, size: u16 },
    #[error("virtio device {id}: building its PCI configuration space: {source}")]
    Config {
        id: String,
        #[source]
        source: PciConfigError,
    },
    #[error("virtio device {id}: adding its MSI-X capability: {source}")]
    Msix {
        id: String,
        #[source]
        source: MsixError,
    },
    #[error("virtio device {id}: creating the notification eventfd of queue {queue}: {source}")]
    EventFd {
        id: String,
        queue: usize,
        #[source]
        source: io::Error,
    },
    #[error(
        "virtio device {id}: registering the ioeventfd of queue {queue} at {addr:#x}: {source}"
    )]
    IoEvent {
        id: String,
        queue: usize,
        addr: u64,
        #[source]
        source: BoxError,
    },
}
