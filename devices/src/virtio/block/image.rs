//! A raw disk image (a regular file or a block device) opened, validated and locked
//! for one VM, and the synchronous I/O the block device does on it.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::GuestMemoryBackend;

use super::error::BlockError;
use super::BlockOptions;
use crate::virtio::chain::{total_len, BufCursor, GuestBuf};
use crate::virtio::GuestMemoryMmap;

pub(crate) const SECTOR_SIZE: u64 = 512;
/// Length of the serial a GET_ID request returns (`VIRTIO_BLK_ID_BYTES`).
pub(crate) const SERIAL_LEN: usize = 20;

const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Memory alignment of direct-I/O buffers: the page size covers every logical
/// block size Linux supports.
const DIRECT_ALIGN: usize = 4096;
/// Largest piece of a request copied through the bounce buffer at once.
const BOUNCE_CHUNK: usize = 1 << 20;
/// Largest iovec array one preadv/pwritev call accepts (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// An open raw image. The lock taken at open lasts as long as this value.
#[derive(Debug)]
pub(crate) struct DiskImage {
    file: File,
    path: PathBuf,
    capacity: u64,
    readonly: bool,
    direct: bool,
    serial: [u8; SERIAL_LEN],
}

impl DiskImage {
    pub fn open(opts: &BlockOptions) -> Result<Self, BlockError> {
        let path = opts.path.clone();
        let explicit_serial = match &opts.serial {
            Some(s) => Some(serial_from_str(s)?),
            None => None,
        };
        let meta = std::fs::metadata(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => BlockError::NotFound { path: path.clone() },
            _ => BlockError::Open {
                path: path.clone(),
                mode: "",
                source,
            },
        })?;
        if meta.is_dir() {
            return Err(BlockError::IsDirectory { path });
        }
        if !meta.is_file() && !meta.file_type().is_block_device() {
            return Err(BlockError::NotAFileOrBlockDevice { path });
        }
        // A writable block device is opened exclusively: the kernel then refuses it
        // (EBUSY) while a file system is mounted from it or LVM, MD or swap holds
        // it, which flock, advisory and per-file, cannot see.
        let exclusive = !opts.readonly && meta.file_type().is_block_device();
        let flags = libc::O_CLOEXEC | if exclusive { libc::O_EXCL } else { 0 };
        let file = OpenOptions::new()
            .read(true)
            .write(!opts.readonly)
            .custom_flags(flags)
            .open(&path)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::EBUSY) if exclusive => BlockError::DeviceBusy { path: path.clone() },
                _ => BlockError::Open {
                    path: path.clone(),
                    mode: if opts.readonly {
                        " read-only"
                    } else {
                        " read-write"
                    },
                    source,
                },
            })?;
        lock(&file, &path, opts.readonly)?;

        let read_err = |source| BlockError::Read {
            path: path.clone(),
            source,
        };
        // Block devices report no length in their metadata; seeking works for both.
        let size = (&file).seek(SeekFrom::End(0)).map_err(read_err)?;
        if size == 0 {
            return Err(BlockError::Empty { path });
        }
        if size >= QCOW2_MAGIC.len() as u64 {
            let mut magic = [0u8; 4];
            file.read_exact_at(&mut magic, 0).map_err(read_err)?;
            if magic == QCOW2_MAGIC {
                return Err(BlockError::Qcow2 { path });
            }
        }
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::NotSectorMultiple {
                path,
                size,
                rounded: size.next_multiple_of(SECTOR_SIZE),
            });
        }
        if opts.direct {
            // Set after the checks above, which read unaligned.
            set_direct(&file).map_err(|source| BlockError::DirectUnsupported {
                path: path.clone(),
                source,
            })?;
        }
        let serial = explicit_serial.unwrap_or_else(|| default_serial(&path, &meta));
        Ok(Self {
            file,
            path,
            capacity: size,
            readonly: opts.readonly,
            direct: opts.direct,
            serial,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    pub fn serial(&self) -> &[u8; SERIAL_LEN] {
        &self.serial
    }

    /// Whether `len` bytes at `offset` lie inside the image.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.capacity)
    }

    /// Reads `total_len(bufs)` bytes at `offset` into the guest's buffers.
    pub fn read_to_guest(
        &self,
        mem: &GuestMemoryMmap,
        bufs: &[GuestBuf],
        offset: u64,
        bounce: &mut BounceBuffer,
    ) -> io::Result<()> {
        if !self.direct {
            return self.transfer_guest(mem, bufs, offset, Direction::FileToGuest);
        }
        let total = total_len(bufs);
        let mut cursor = BufCursor::new(bufs);
        let mut done = 0u64;
        while done < total {
            let n = chunk_len(total - done);
            let buf = bounce.get(n);
            self.file.read_exact_at(buf, offset + done)?;
            cursor.write(mem, buf)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Writes the guest's buffers to the image at `offset`.
    pub fn write_from_guest(
        &self,
        mem: &GuestMemoryMmap,
        bufs: &[GuestBuf],
        offset: u64,
        bounce: &mut BounceBuffer,
    ) -> io::Result<()> {
        if !self.direct {
            return self.transfer_guest(mem, bufs, offset, Direction::GuestToFile);
        }
        let total = total_len(bufs);
        let mut cursor = BufCursor::new(bufs);
        let mut done = 0u64;
        while done < total {
            let n = chunk_len(total - done);
            let buf = bounce.get(n);
            cursor.read_exact(mem, buf)?;
            self.file.write_all_at(buf, offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Makes completed writes durable.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Drops the data of a range: later reads return zeroes and a file gives the
    /// space back to its file system. Discard is a hint, so a file system that
    /// cannot punch holes makes this a no-op.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if is_unsupported(&e) => Ok(()),
            other => other,
        }
    }

    /// Zeroes a range, deallocating it when `may_unmap` and the file system can.
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
        bounce: &mut BounceBuffer,
    ) -> io::Result<()> {
        if may_unmap {
            match self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                Err(e) if is_unsupported(&e) => {}
                other => return other,
            }
        }
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if is_unsupported(&e) => {}
            other => return other,
        }
        let mut done = 0u64;
        while done < len {
            let n = chunk_len(len - done);
            let zeroes = bounce.get(n);
            zeroes.fill(0);
            self.file.write_all_at(zeroes, offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
        loop {
            // SAFETY: fallocate on a file descriptor we own; no memory is passed.
            let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
            if ret == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// preadv/pwritev straight between the file and guest memory (buffered I/O).
    fn transfer_guest(
        &self,
        mem: &GuestMemoryMmap,
        bufs: &[GuestBuf],
        offset: u64,
        direction: Direction,
    ) -> io::Result<()> {
        let mut iovecs = Vec::with_capacity(bufs.len());
        // The guards keep the pointers valid (a no-op for plain mmap'd memory).
        let mut guards = Vec::with_capacity(bufs.len());
        for buf in bufs {
            for slice in GuestMemoryBackend::get_slices(mem, buf.addr, buf.len as usize) {
                let slice = slice.map_err(io::Error::other)?;
                let guard = slice.ptr_guard_mut();
                iovecs.push(libc::iovec {
                    iov_base: guard.as_ptr().cast(),
                    iov_len: slice.len(),
                });
                guards.push(guard);
            }
        }
        transfer_iovecs(&self.file, &mut iovecs, offset, direction)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    FileToGuest,
    GuestToFile,
}

/// Moves every byte `iovecs` describe, looping over short transfers and the kernel's
/// limit on iovecs per call.
fn transfer_iovecs(
    file: &File,
    iovecs: &mut [libc::iovec],
    mut offset: u64,
    direction: Direction,
) -> io::Result<()> {
    let mut first = 0;
    while first < iovecs.len() {
        if iovecs[first].iov_len == 0 {
            first += 1;
            continue;
        }
        let batch = &iovecs[first..iovecs.len().min(first + IOV_MAX)];
        let file_offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // batch.len() <= IOV_MAX, which fits a c_int.
        let count = batch.len() as libc::c_int;
        // SAFETY: every iovec points into guest memory that `transfer_guest` got from
        // vm-memory as a slice of exactly iov_len bytes, mapped for as long as `mem`
        // is borrowed; the kernel checks the file descriptor.
        let n = unsafe {
            match direction {
                Direction::FileToGuest => {
                    libc::preadv(file.as_raw_fd(), batch.as_ptr(), count, file_offset)
                }
                Direction::GuestToFile => {
                    libc::pwritev(file.as_raw_fd(), batch.as_ptr(), count, file_offset)
                }
            }
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(match direction {
                Direction::FileToGuest => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the image ended before the request (was it truncated?)",
                ),
                Direction::GuestToFile => io::ErrorKind::WriteZero.into(),
            });
        }
        let mut left = n as usize;
        offset += left as u64;
        while left > 0 {
            let Some(iov) = iovecs.get_mut(first) else {
                break;
            };
            if left >= iov.iov_len {
                left -= iov.iov_len;
                iov.iov_len = 0;
                first += 1;
            } else {
                iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(left).cast();
                iov.iov_len -= left;
                left = 0;
            }
        }
    }
    Ok(())
}

/// A reusable buffer aligned for O_DIRECT, between guest memory (any alignment) and
/// the image.
#[derive(Default)]
pub(crate) struct BounceBuffer {
    storage: Vec<u8>,
}

impl BounceBuffer {
    /// `len` bytes starting on a `DIRECT_ALIGN` boundary; contents unspecified.
    fn get(&mut self, len: usize) -> &mut [u8] {
        let needed = len + DIRECT_ALIGN;
        if self.storage.len() < needed {
            self.storage.resize(needed, 0);
        }
        let misalign = self.storage.as_ptr() as usize % DIRECT_ALIGN;
        let start = (DIRECT_ALIGN - misalign) % DIRECT_ALIGN;
        &mut self.storage[start..start + len]
    }
}

fn chunk_len(remaining: u64) -> usize {
    // BOUNCE_CHUNK fits usize, so the min does too.
    remaining.min(BOUNCE_CHUNK as u64) as usize
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

/// Holds the image for this VM: exclusively when writable, shared when read-only,
/// so several VMs may read one image but none may write an image another uses.
fn lock(file: &File, path: &Path, readonly: bool) -> Result<(), BlockError> {
    let kind = if readonly {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    loop {
        // SAFETY: flock on a file descriptor we own.
        let ret = unsafe { libc::flock(file.as_raw_fd(), kind | libc::LOCK_NB) };
        if ret == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {
                return Err(BlockError::Locked {
                    path: path.to_path_buf(),
                })
            }
            _ => {
                return Err(BlockError::Lock {
                    path: path.to_path_buf(),
                    source: err,
                })
            }
        }
    }
}

fn set_direct(file: &File) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL on a file descriptor we own.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_DIRECT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
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
