//! The seam between a virtio device (block, net, console, rng) and the transport
//! that presents it to the guest (`pci::virtio`, virtio-pci modern).
//!
//! The transport owns everything the virtio spec puts in the transport: feature
//! negotiation windows, device status, queue configuration, notification addresses
//! and interrupt vectors. The device owns its configuration space and its I/O. When
//! the driver sets DRIVER_OK the transport hands the device its queues, the guest's
//! memory and a way to interrupt the driver ([`VirtioDevice::activate`]); the device
//! then runs its I/O on a thread of its own, never on a vCPU thread. A device reset
//! ([`VirtioDevice::reset`]) stops that thread before the transport forgets the
//! queues, so no I/O reaches guest memory after the driver reset the device.

use std::io;
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as every form-vmm device sees it (the VMM's own type).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Device type ids (virtio 1.2, 5 "Device Types").
pub const VIRTIO_ID_NET: u32 = 1;
pub const VIRTIO_ID_BLOCK: u32 = 2;
pub const VIRTIO_ID_CONSOLE: u32 = 3;
pub const VIRTIO_ID_RNG: u32 = 4;

/// Feature bits every form-vmm device offers through the transport.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// The driver and device may suppress notifications with used/avail event indices.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Tells the driver something happened. Implemented by the transport (MSI-X vectors
/// routed through KVM); safe to call from any thread.
pub trait VirtioInterrupt: Send + Sync {
    /// The device put buffers on the used ring of queue `queue_index`.
    fn notify_queue(&self, queue_index: u16) -> io::Result<()>;
    /// The device changed its configuration space.
    fn notify_config(&self) -> io::Result<()>;
}

/// One queue the driver enabled, as the device receives it at activation.
pub struct ActiveQueue {
    /// The queue's index in the device (0 = receiveq on net, requestq on block...).
    pub index: u16,
    /// Ready to use: size, ring addresses and EVENT_IDX already set and validated
    /// against guest memory by the transport.
    pub queue: Queue,
    /// Signalled when the driver notifies this queue (a KVM ioeventfd on the
    /// notification address, or the transport itself on a trapped write).
    pub kick: EventFd,
}

/// Everything a device needs to start its I/O.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The enabled queues, by ascending index. Queues the driver left disabled are
    /// absent; a device that needs one fails activation.
    pub queues: Vec<ActiveQueue>,
    /// Every feature the driver accepted (a subset of [`VirtioDevice::features`]).
    pub acked_features: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver did not enable queue {0}, which this device needs")]
    MissingQueue(u16),
    #[error("cannot start the {what} I/O thread: {source}")]
    Thread {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// A virtio device, transport-independent. Every method that takes guest-chosen
/// offsets or data must accept any value without panicking.
pub trait VirtioDevice: Send {
    /// One of the `VIRTIO_ID_*` constants.
    fn device_type(&self) -> u32;

    /// The largest size of each queue, by index; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Every feature bit the device offers, [`VIRTIO_F_VERSION_1`] included.
    fn features(&self) -> u64;

    /// Reads `data.len()` bytes of the device configuration space at `offset`.
    /// Bytes past the end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// The driver writes the configuration space. Most fields are read-only and
    /// writes to them are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// The driver set DRIVER_OK: start I/O on the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;

    /// The driver reset the device: stop I/O, wait for the I/O thread to finish and
    /// drop the queues. Calling it on a device that is not active does nothing.
    fn reset(&mut self);

    /// A short name for logs and thread names ("virtio-blk", "virtio-net"...).
    fn name(&self) -> &'static str;
}
