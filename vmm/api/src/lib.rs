//! The contract of form-vmm's HTTP API (`docs/api.md`), one definition for both
//! sides: form-vmm serves it, vmm-service's client speaks it. [`config`] is the VM
//! configuration (`vm.create`, and the command line's options parse into the same
//! types); [`types`] the other requests and answers; [`host_list`] the kernel's
//! list format the NUMA node ids of `memory.host_numa_node` are read in.

// form-vmm parses API bodies with this crate on its controller thread: a panic
// there takes the VM's API down, so bad input is an error.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod host_list;
pub mod types;
