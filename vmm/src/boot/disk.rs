//! Booting from the disk image itself (a disk with `boot`, no `payload.kernel`):
//! the image is opened read-only through the devices crate's `DiskImage` (raw or
//! qcow2, backing files included), `form-bootdisk` finds its default boot entry
//! and reads the kernel and initrd, and the image is closed again before the
//! VM's own virtio disk opens it. Each build of the VM reads anew, so a reboot
//! boots what the guest made its default.

use crate::config::DiskConfig;
use devices::virtio::block::{BackingOptions, BlockError, BlockOptions, DiskImage};
use form_bootdisk::{BlockRead, Limits};
use form_vmm_api::types::BootSource;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The guest's view of the image, for the reader.
struct ImageReader(DiskImage);

impl BlockRead for ImageReader {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(buf, offset)
    }

    fn size(&self) -> u64 {
        self.0.capacity()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootDiskError {
    #[error("boot disk: {0}")]
    Open(#[from] BlockError),
    #[error("boot disk {0}")]
    Read(#[from] form_bootdisk::Error),
}

impl BootDiskError {
    /// An image that cannot be booted is the configuration's fault (400); a
    /// failing read of the host's file is not.
    pub fn is_bad_request(&self) -> bool {
        !matches!(self, BootDiskError::Read(form_bootdisk::Error::Io { .. }))
    }
}

/// The kernel, initrd and command line of the boot disk's default entry.
pub struct DiskPayload {
    pub source: BootSource,
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    /// Names for errors: `IMAGE:partition N:/path`.
    pub kernel_name: PathBuf,
    pub initrd_name: PathBuf,
    pub elapsed: Duration,
}

/// Reads `disk`'s default boot entry; `user_cmdline` (payload.cmdline) is
/// appended to the entry's arguments.
pub fn read_boot_disk(
    disk: &DiskConfig,
    user_cmdline: Option<&str>,
) -> Result<DiskPayload, BootDiskError> {
    let start = Instant::now();
    let image = DiskImage::open(
        &BlockOptions {
            path: disk.path.clone(),
            readonly: true,
            direct: false,
            serial: None,
            format: disk.format.map(crate::device_manager::virtio::image_format),
        },
        &BackingOptions::default(),
    )?;
    let name = disk.path.display().to_string();
    let files = form_bootdisk::load_boot(ImageReader(image), &name, &Limits::default())?;
    let entry = &files.entry;
    let cmdline = entry.cmdline(user_cmdline);
    let part = format!("{name}:partition {}", entry.partition);
    let source = BootSource {
        disk: disk.id.clone().unwrap_or_default(),
        partition: entry.partition,
        config: entry.kind.as_str().to_string(),
        config_path: entry.config_path.clone(),
        config_partition: entry.config_partition,
        title: entry.title.clone(),
        kernel: entry.kernel.clone(),
        initrd: entry.initrd.clone(),
        cmdline,
    };
    let elapsed = start.elapsed();
    log::info!(
        "boot disk {name}: {} {} (partition {}) chose '{}': kernel {} ({} bytes){} from partition {}, cmdline '{}'; read in {} ms",
        source.config,
        source.config_path,
        source.config_partition,
        source.title,
        source.kernel,
        files.kernel.len(),
        match &files.initrd {
            Some(initrd) => format!(", initrd {} ({} bytes)", source.initrd.join(" "), initrd.len()),
            None => String::new(),
        },
        source.partition,
        source.cmdline,
        elapsed.as_millis(),
    );
    Ok(DiskPayload {
        kernel_name: PathBuf::from(format!("{part}:{}", entry.kernel)),
        initrd_name: PathBuf::from(format!("{part}:{}", entry.initrd.join("+"))),
        kernel: files.kernel,
        initrd: files.initrd,
        source,
        elapsed,
    })
}
