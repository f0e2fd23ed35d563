//! Why a disk image cannot back a virtio-blk device, worded for the operator who
//! passed it (`--disk path=...`).

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(
        "disk image {path} does not exist: fix the path, or create a raw image \
         (e.g. `truncate -s 10G {path}` or `qemu-img create -f raw {path} 10G`)"
    )]
    NotFound { path: PathBuf },

    #[error(
        "disk image {path} is a directory: give the path of a raw image file or a block device"
    )]
    IsDirectory { path: PathBuf },

    #[error(
        "disk image {path} is neither a regular file nor a block device: give a raw image file"
    )]
    NotAFileOrBlockDevice { path: PathBuf },

    #[error(
        "cannot open disk image {path}{mode}: {source}; check that it exists and its permissions"
    )]
    Open {
        path: PathBuf,
        /// " read-write" or " read-only", for the message.
        mode: &'static str,
        #[source]
        source: io::Error,
    },

    #[error(
        "disk image {path} is in use by another VM (it holds a lock on the image): stop that VM, \
         or attach the image with readonly=on in every VM that shares it"
    )]
    Locked { path: PathBuf },

    #[error(
        "block device {path} is in use on the host (mounted, or held by LVM, RAID, swap or \
         another VM): a guest writing to it would corrupt it; unmount or release it first, \
         or attach it with readonly=on"
    )]
    DeviceBusy { path: PathBuf },

    #[error("cannot lock disk image {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot read disk image {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("disk image {path} is a qcow2 image that form-vmm cannot attach: {reason}")]
    Qcow2Unsupported { path: PathBuf, reason: String },

    #[error(
        "disk image {path} is a damaged qcow2 image ({reason}): check it with \
         `qemu-img check {path}`"
    )]
    Qcow2Damaged { path: PathBuf, reason: String },

    #[error(
        "disk image {path} is qcow2, and form-vmm does direct I/O (direct=on) on raw images \
         only: use direct=off, or convert it: qemu-img convert -O raw {path} {path}.raw"
    )]
    Qcow2Direct { path: PathBuf },

    #[error(
        "disk image {path} is configured as qcow2 but does not start with the qcow2 magic; \
         give format=raw if it is a raw image"
    )]
    NotQcow2 { path: PathBuf },

    #[error(
        "disk image {path} names the backing file {backing:?}, which form-vmm will not open: \
         {reason}"
    )]
    BackingRefused {
        path: PathBuf,
        backing: String,
        reason: String,
    },

    #[error("cannot open the backing file of disk image {path}: {source}")]
    Backing {
        path: PathBuf,
        #[source]
        source: Box<BlockError>,
    },

    #[error("disk image {path} is empty: give it a size (e.g. `truncate -s 10G {path}`)")]
    Empty { path: PathBuf },

    #[error(
        "disk image {path} is {size} bytes, not a multiple of the 512-byte sector: \
         resize it (e.g. `truncate -s {rounded} {path}`)"
    )]
    NotSectorMultiple {
        path: PathBuf,
        size: u64,
        /// `size` rounded up to the next sector, suggested in the message.
        rounded: u64,
    },

    #[error(
        "cannot use O_DIRECT (direct=on) on disk image {path}: {source}; its file system does not \
         support direct I/O (tmpfs on older kernels, some FUSE or network file systems): use direct=off"
    )]
    DirectUnsupported {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("disk serial {serial:?} is {len} bytes; virtio-blk serials hold at most 20 bytes")]
    SerialTooLong { serial: String, len: usize },
}
