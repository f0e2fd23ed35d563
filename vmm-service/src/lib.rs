//! The Formation VMM service.

pub mod api;
pub mod gpu;
pub mod instances;
pub mod state;
pub mod supervisor;
pub mod vmm_client;
