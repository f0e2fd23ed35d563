//! Devices every form-vmm guest has, independent of PCI, and the virtio devices
//! (transport-independent; the virtio-pci transport is in the `pci` crate).

// A panic in device or hypervisor code kills the vCPU thread a guest access
// runs on; failures there are errors, not unwraps.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod acpi;
pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
