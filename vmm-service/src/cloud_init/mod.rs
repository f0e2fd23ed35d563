//! cloud-init for the service's VMs: the NoCloud seed disk (a FAT image labelled
//! `CIDATA` holding `meta-data`, `user-data` and `network-config`) built from a VM's
//! `cloud_init` configuration.

mod files;
mod mime;
mod seed;
mod validate;
mod yaml;

pub use files::SeedFiles;
pub use seed::{
    image_size, read_seed_image, remove_seed_image, write_seed_image, SeedError, SeedImage,
    SEED_LABEL,
};
pub use validate::{default_hostname, validate};
