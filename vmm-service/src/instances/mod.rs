//! VMs: configuration checks, GPU choice, and the manager that runs them.

mod allocate;
mod attachments;
mod companions;
mod error;
mod guest_numa;
mod hugepages;
mod images;
mod limits;
mod manager;
mod numa;
mod units;
mod validate;

pub use allocate::{choose, matches_model, upstream_bridges, Candidate};
pub use attachments::{network_infos, validate_disks, validate_networks, MAX_DISKS_PER_VM};
pub use companions::{is_nic, is_nvswitch};
pub use error::InstanceError;
pub use images::{
    ImageKind, ImagePolicy, ImageRefusal, OpenedImage, OpenedImages, DEFAULT_IMAGE_DIR,
};
pub use limits::{
    AdmissionLimits, LogLimits, Usage, DEFAULT_LOG_INTERVAL, DEFAULT_LOG_KEEP,
    DEFAULT_LOG_MAX_BYTES,
};
pub use manager::{ConsoleChunk, ConsoleWindow, Manager, ServiceConfig, HOLD_CHECK_DEADLINE};
pub use units::{Planner, Unit};
pub use validate::{
    parse_companions, parse_devices, validate, validate_name, GpuSelection, HostLimits,
    MAX_GPUS_PER_VM, MAX_NAME_LEN, MIN_MEMORY,
};
