//! Devices every form-vmm guest has, independent of PCI.

pub mod bus;

pub use bus::{Bus, BusDevice, BusError};
