//! A raw image (a regular file or a block device): the disk is the file, byte for
//! byte. Buffered requests move straight between the file and guest memory with
//! preadv/pwritev; direct I/O goes through an aligned bounce buffer.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use vm_memory::GuestMemoryBackend;

use super::backend::{bounced_read, bounced_write, bounced_zeroes, DiskBackend};
use super::bounce::BounceBuffer;
use crate::virtio::chain::GuestBuf;
use crate::virtio::GuestMemoryMmap;

/// Largest iovec array one preadv/pwritev call accepts (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

#[derive(Debug)]
pub(crate) struct RawDisk {
    file: File,
    capacity: u64,
    direct: bool,
}

impl RawDisk {
    pub fn new(file: File, capacity: u64, direct: bool) -> Self {
        Self {
            file,
            capacity,
            direct,
        }
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

impl DiskBackend for RawDisk {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn supports_discard(&self) -> bool {
        true
    }

    /// Later reads return zeroes and a file gives the space back to its file
    /// system. Discard is a hint, so a file system that cannot punch holes makes
    /// this a no-op.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if is_unsupported(&e) => Ok(()),
            other => other,
        }
    }

    fn write_zeroes(
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
        bounced_zeroes(offset, len, bounce, |buf, at| {
            self.file.write_all_at(buf, at)
        })
    }

    fn read_to_guest(
        &self,
        mem: &GuestMemoryMmap,
        bufs: &[GuestBuf],
        offset: u64,
        bounce: &mut BounceBuffer,
    ) -> io::Result<()> {
        if !self.direct {
            return self.transfer_guest(mem, bufs, offset, Direction::FileToGuest);
        }
        // O_DIRECT wants aligned buffers: the bounce buffer is.
        bounced_read(mem, bufs, offset, bounce, |buf, at| {
            self.file.read_exact_at(buf, at)
        })
    }

    fn write_from_guest(
        &self,
        mem: &GuestMemoryMmap,
        bufs: &[GuestBuf],
        offset: u64,
        bounce: &mut BounceBuffer,
    ) -> io::Result<()> {
        if !self.direct {
            return self.transfer_guest(mem, bufs, offset, Direction::GuestToFile);
        }
        bounced_write(mem, bufs, offset, bounce, |buf, at| {
            self.file.write_all_at(buf, at)
        })
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

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

/// Sets O_DIRECT on an open file.
pub(crate) fn set_direct(file: &File) -> io::Result<()> {
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
