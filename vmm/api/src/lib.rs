//! The contract of form-vmm's HTTP API (`docs/api.md`), one definition for both
//! sides: form-vmm serves it, vmm-service's client speaks it. [`config`] is the VM
//! configuration (`vm.create`, and the command line's options parse into the same
//! types); [`types`] the other requests and answers.

pub mod config;
pub mod types;
