//! virtio-blk (virtio 1.2, 5.2) on a raw image file or block device, or a qcow2
//! image: reads, writes, flush, discard, write-zeroes (raw) and get-id, done
//! synchronously on the device's own I/O thread.

mod backend;
mod bounce;
mod config;
mod error;
mod file;
mod handler;
mod image;
mod qcow2;
mod raw;
mod request;
#[cfg(test)]
mod tests;

pub use error::BlockError;
pub use image::{DiskImage, ImageFormat};
pub use qcow2::{BackingOptions, MAX_BACKING_DEPTH};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

use self::config::{config_space, read_config_bytes, CONFIG_LEN};
use self::handler::{RequestQueue, REQUEST_QUEUE};
use super::device::{
    ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK,
    VIRTIO_RING_F_EVENT_IDX,
};
use super::kicked_queue::{self, KickedQueueWorker};

/// Entries of the request queue.
const QUEUE_SIZE: u16 = 256;
/// Segments per request: a chain holds the header and status besides the data.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// How to attach one disk image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockOptions {
    /// A raw image file or a block device, or a qcow2 image (told by its magic).
    pub path: PathBuf,
    /// The guest sees a read-only disk; the image is opened read-only and locked
    /// shared, so other read-only users may share it.
    pub readonly: bool,
    /// Bypass the host page cache (O_DIRECT); raw images only.
    pub direct: bool,
    /// What the guest reads as the disk's serial (at most 20 bytes); by default one
    /// derived from the image's path and inode.
    pub serial: Option<String>,
    /// The image's format as the VM's owner recorded it; `None` reads it from the
    /// image's magic. A disk known to be raw is never parsed as qcow2, whatever
    /// the guest wrote at its start.
    pub format: Option<ImageFormat>,
}

/// A virtio-blk device.
pub struct Block {
    disk: Arc<DiskImage>,
    features: u64,
    config: [u8; CONFIG_LEN],
    worker: Option<KickedQueueWorker<RequestQueue>>,
}

impl Block {
    /// Opens, checks and locks the image. The lock lasts until the device is dropped.
    /// A qcow2 image's backing files must lie in its own directory.
    pub fn open(opts: BlockOptions) -> Result<Block, BlockError> {
        Self::open_with_backing(opts, &BackingOptions::default())
    }

    /// The image's format, as opened.
    pub fn format(&self) -> ImageFormat {
        self.disk.format()
    }

    /// As `open`, with the directories a qcow2 image's backing files may live in.
    pub fn open_with_backing(
        opts: BlockOptions,
        backing: &BackingOptions,
    ) -> Result<Block, BlockError> {
        let disk = DiskImage::open(&opts, backing)?;
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH;
        if disk.readonly() {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else if disk.supports_discard() {
            features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        Ok(Block {
            config: config_space(disk.capacity(), SEG_MAX),
            disk: Arc::new(disk),
            features,
            worker: None,
        })
    }

    /// The disk's size in bytes (a multiple of 512).
    pub fn capacity_bytes(&self) -> u64 {
        self.disk.capacity()
    }

    /// The image this device serves.
    pub fn path(&self) -> &Path {
        self.disk.path()
    }

    pub fn readonly(&self) -> bool {
        self.disk.readonly()
    }

    /// The serial the guest reads (GET_ID), without its zero padding.
    pub fn serial(&self) -> String {
        let raw = self.disk.serial();
        let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..len]).into_owned()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let disk = Arc::clone(&self.disk);
        let worker = kicked_queue::start(self.name(), activation, REQUEST_QUEUE, |queue| {
            RequestQueue::new(queue, disk)
        })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        // Dropping the worker stops its thread and waits for it.
        self.worker = None;
    }

    fn name(&self) -> &'static str {
        "virtio-blk"
    }
}
