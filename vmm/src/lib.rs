//! form-vmm: one process per VM, KVM underneath, an HTTP API on a unix socket.

pub mod config;
pub mod vm;
