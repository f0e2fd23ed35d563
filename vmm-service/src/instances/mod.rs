//! VMs: configuration checks, GPU choice, and the manager that runs them.

mod allocate;
mod error;
mod manager;
mod validate;

pub use allocate::{choose, matches_model, upstream_bridges, Candidate};
pub use error::InstanceError;
pub use manager::{Manager, ServiceConfig};
pub use validate::{
    parse_devices, validate, validate_name, GpuSelection, HostLimits, MAX_GPUS_PER_VM,
    MAX_NAME_LEN, MIN_MEMORY,
};
