//! Devices every form-vmm guest has, independent of PCI.

pub mod acpi;
pub mod bus;
pub mod i8042;
pub mod serial;

pub use bus::{Bus, BusDevice, BusError};
