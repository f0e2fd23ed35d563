//! A disk image opened, validated and locked for one VM: a raw image or a qcow2
//! image, told apart by the magic, behind one `DiskBackend`.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::backend::DiskBackend;
use super::bounce::BounceBuffer;
use super::error::BlockError;
use super::file::open_image_file;
use super::qcow2::{BackingOptions, Qcow2Disk};
use super::raw::{set_direct, RawDisk};
use super::BlockOptions;
use crate::virtio::chain::GuestBuf;
use crate::virtio::GuestMemoryMmap;

pub(crate) const SECTOR_SIZE: u64 = 512;
/// Length of the serial a GET_ID request returns (`VIRTIO_BLK_ID_BYTES`).
pub(crate) const SERIAL_LEN: usize = 20;

/// The format of an open image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

/// An open image. The lock taken at open (and those on a qcow2 image's backing
/// files) lasts as long as this value.
pub struct DiskImage {
    backend: Box<dyn DiskBackend>,
    format: ImageFormat,
    path: PathBuf,
    capacity: u64,
    readonly: bool,
    serial: [u8; SERIAL_LEN],
}

impl std::fmt::Debug for DiskImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskImage")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("capacity", &self.capacity)
            .field("readonly", &self.readonly)
            .finish_non_exhaustive()
    }
}

impl DiskImage {
    /// Opens, checks and locks the image at `opts.path`; a qcow2 image's backing
    /// files must lie where `backing` allows.
    pub fn open(opts: &BlockOptions, backing: &BackingOptions) -> Result<Self, BlockError> {
        let path = opts.path.clone();
        let explicit_serial = match &opts.serial {
            Some(s) => Some(serial_from_str(s)?),
            None => None,
        };
        let opened = open_image_file(&path, opts.readonly)?;
        if opened.size == 0 {
            return Err(BlockError::Empty { path });
        }
        let serial = explicit_serial.unwrap_or_else(|| default_serial(&path, &opened.meta));
        let qcow2 = match opts.format {
            None => opened.is_qcow2,
            Some(ImageFormat::Raw) => false,
            Some(ImageFormat::Qcow2) if opened.is_qcow2 => true,
            Some(ImageFormat::Qcow2) => return Err(BlockError::NotQcow2 { path }),
        };
        let (backend, format): (Box<dyn DiskBackend>, _) = if qcow2 {
            if opts.direct {
                return Err(BlockError::Qcow2Direct { path });
            }
            let disk = Qcow2Disk::open(opened.file, &path, opts.readonly, backing)?;
            (Box::new(disk), ImageFormat::Qcow2)
        } else {
            let size = opened.size;
            if !size.is_multiple_of(SECTOR_SIZE) {
                return Err(BlockError::NotSectorMultiple {
                    path,
                    size,
                    rounded: size.next_multiple_of(SECTOR_SIZE),
                });
            }
            if opts.direct {
                // Set after the checks above, which read unaligned.
                set_direct(&opened.file).map_err(|source| BlockError::DirectUnsupported {
                    path: path.clone(),
                    source,
                })?;
            }
            let disk = RawDisk::new(opened.file, size, opts.direct);
            (Box::new(disk), ImageFormat::Raw)
        };
        Ok(Self {
            capacity: backend.capacity(),
            backend,
            format,
            path,
            readonly: opts.readonly,
            serial,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// The size of the disk the guest sees, in bytes (a multiple of 512).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    pub(crate) fn serial(&self) -> &[u8; SERIAL_LEN] {
        &self.serial
    }

    /// Whether discard and write-zeroes are offered to the guest.
    pub(crate) fn supports_discard(&self) -> bool {
        !self.readonly && self.backend.supports_discard()
    }

    /// Whether `len` bytes at `offset` lie inside the disk.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.capacity)
    }

    /// Reads the disk as the guest sees it (for tests and tools).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len())?;
        self.backend.read_at(buf, offset)
    }

    /// Writes the disk as the guest would (for tests and tools).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len())?;
        if self.readonly {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the disk is read-only",
            ));
        }
        self.backend.write_at(buf, offset)
    }

    /// Makes completed writes durable (and, for qcow2, writes its metadata back).
    pub fn flush(&self) -> io::Result<()> {
        self.backend.flush()
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        if self.contains(offset, len as u64) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the range goes past the end of the disk",
            ))
        }
    }

    pub(crate) fn read_to_guest(
        &self,
        mem: &GuestMemoryMmap,
        bufs: &[GuestBuf],
        offset: u64,
        bounce: &mut BounceBuffer,
    ) -> io::Result<()> {
        self.backend.read_to_guest(mem, bufs, offset, bounce)
    }

    pub(crate) fn write_from_guest(
        &self,
        mem: &GuestMemoryMmap,
        bufs: &[GuestBuf],
        offset: u64,
        bounce: &mut BounceBuffer,
    ) -> io::Result<()> {
        self.backend.write_from_guest(mem, bufs, offset, bounce)
    }

    pub(crate) fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.backend.discard(offset, len)
    }

    pub(crate) fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
        bounce: &mut BounceBuffer,
    ) -> io::Result<()> {
        self.backend.write_zeroes(offset, len, may_unmap, bounce)
    }
}

fn serial_from_str(serial: &str) -> Result<[u8; SERIAL_LEN], BlockError> {
    let bytes = serial.as_bytes();
    if bytes.len() > SERIAL_LEN {
        return Err(BlockError::SerialTooLong {
            serial: serial.to_string(),
            len: bytes.len(),
        });
    }
    let mut out = [0u8; SERIAL_LEN];
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

/// A serial stable for one image file: a hash of its canonical path, device and
/// inode, so two images never share one and the guest's /dev/disk/by-id links
/// survive a restart.
fn default_serial(path: &Path, meta: &std::fs::Metadata) -> [u8; SERIAL_LEN] {
    // Where a /proc/self/fd/N link leads when that path cannot be resolved here: a
    // block device the service opened for a form-vmm whose mount namespace has no
    // /dev keeps the serial it had before the namespace.
    let canonical = std::fs::canonicalize(path)
        .or_else(|_| std::fs::read_link(path))
        .unwrap_or_else(|_| path.to_path_buf());
    let mut hash = Fnv1a::new();
    hash.write(canonical.as_os_str().as_encoded_bytes());
    hash.write(&meta.dev().to_le_bytes());
    hash.write(&meta.ino().to_le_bytes());
    let text = format!("fv{:016x}", hash.finish());
    let mut out = [0u8; SERIAL_LEN];
    out[..text.len()].copy_from_slice(text.as_bytes());
    out
}

/// 64-bit FNV-1a: stable across Rust releases, unlike `DefaultHasher`.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
