//! form-vmm: one process per VM, KVM underneath, an HTTP API on a unix socket.

pub mod acpi;
pub mod acpi_pci;
pub mod api;
pub mod boot;
pub mod cli;
pub mod config;
pub mod controller;
pub mod cpu;
pub mod device_manager;
pub mod memory;
pub mod numa;
pub mod vm;
