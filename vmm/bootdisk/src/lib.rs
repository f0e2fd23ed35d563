//! Reads a disk image's own boot configuration, so that form-vmm can boot a
//! cloud image as it is: the partition table (GPT or MBR), ext2/3/4 file
//! systems, and the default entry of GRUB's `grub.cfg`, of Boot Loader
//! Specification entries, or else the newest `/boot/vmlinuz-*`.
//!
//! Pure functions over a [`BlockRead`] disk: no KVM, no host files. Everything
//! read from the image is bounded ([`Limits`]) and no input makes it panic.

mod bls;
mod cmdline;
mod crc32;
mod disk;
mod error;
mod extent;
mod extfs;
mod fs_kind;
mod grub;
mod partition;
mod select;
#[doc(hidden)]
pub mod testing;
mod version;

pub use disk::BlockRead;
pub use error::Error;
pub use select::{find_boot_entry, load_boot, BootEntry, BootFiles, ConfigKind, Limits};
