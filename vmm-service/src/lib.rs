//! The Formation VMM service.

pub mod api;
pub mod cgroups;
pub mod cloud_init;
pub mod gpu;
pub mod instances;
pub mod net;
pub mod state;
pub mod supervisor;
pub mod vmm_client;
pub mod vmm_user;
