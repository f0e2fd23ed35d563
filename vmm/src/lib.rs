//! form-vmm: one process per VM, KVM underneath, an HTTP API on a unix socket.

// A panic on a vCPU thread or the API thread takes the VM or its API down: guest
// and API-caller paths return errors instead.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod acpi;
pub mod acpi_numa;
mod acpi_oem;
pub mod acpi_pci;
pub mod acpi_pci_roots;
pub mod api;
pub mod boot;
pub mod cli;
pub use form_vmm_api::config;
pub mod controller;
pub mod cpu;
pub mod device_manager;
pub mod exit_reason;
pub mod guest_numa;
pub mod io_buses;
pub mod memory;
pub mod memory_zones;
pub mod numa;
pub mod sandbox;
pub mod vm;
