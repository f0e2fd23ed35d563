//! Devices every form-vmm guest has, independent of PCI, and the virtio devices
//! (transport-independent; the virtio-pci transport is in the `pci` crate).

pub mod acpi;
pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
