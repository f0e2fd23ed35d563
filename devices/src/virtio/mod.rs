//! Virtio devices (virtio 1.2): block, net, console and entropy, independent of the
//! transport that presents them (`pci::virtio`). Each active device runs its I/O on
//! a [`worker::Worker`] thread of its own.

pub mod block;
pub(crate) mod chain;
pub mod console;
pub mod device;
pub(crate) mod kicked_queue;
pub mod net;
pub mod rng;
#[doc(hidden)]
// Test support, built only for tests and the `testing` feature; a failed setup
// there should fail the test loudly.
#[cfg(any(test, feature = "testing"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod testing;
pub mod worker;

pub use device::{
    ActivateError, Activation, ActiveQueue, GuestMemoryMmap, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE, VIRTIO_ID_NET, VIRTIO_ID_RNG,
    VIRTIO_RING_F_EVENT_IDX,
};
