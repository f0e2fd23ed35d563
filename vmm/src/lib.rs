//! form-vmm: one process per VM, KVM underneath, an HTTP API on a unix socket.

pub mod api;
pub mod cli;
pub mod config;
pub mod controller;
pub mod vm;
