//! The contract of form-vmm's HTTP API (`docs/api.md`), one definition for both
//! sides: form-vmm serves it, vmm-service's client speaks it. [`config`] is the VM
//! configuration (`vm.create`, and the command line's options parse into the same
//! types); [`types`] the other requests and answers; [`host_list`] the kernel's
//! list format the NUMA node ids of `memory.host_numa_node` are read in.

pub mod config;
pub mod host_list;
pub mod types;
