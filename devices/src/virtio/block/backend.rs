//! The seam between virtio-blk requests and an image format: a raw image and a
//! qcow2 image are two `DiskBackend`s, chosen by the magic at open. A format works
//! on byte buffers (`read_at`, `write_at`); the guest-memory methods bounce through
//! those by default, and the raw backend overrides them to move data straight
//! between the file and guest memory, so raw disks pay for no extra copy.

use std::io;

use super::bounce::BounceBuffer;
use crate::virtio::chain::{total_len, BufCursor, GuestBuf};
use crate::virtio::GuestMemoryMmap;

/// Largest piece of a request copied through the bounce buffer at once.
pub(crate) const BOUNCE_CHUNK: usize = 1 << 20;

/// One image format's I/O. Offsets and lengths are checked against the capacity by
/// the caller; methods take `&self` because the device's queue thread and the VMM
/// share the image (formats with state keep it behind their own lock).
pub(crate) trait DiskBackend: Send + Sync {
    /// The size of the disk the guest sees, in bytes.
    fn capacity(&self) -> u64;

    /// Fills `buf` from the disk at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes `buf` to the disk at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Makes completed writes durable.
    fn flush(&self) -> io::Result<()>;

    /// Whether the backend offers the guest discard and write-zeroes.
    fn supports_discard(&self) -> bool {
        false
    }

    /// Drops the data of a range (a hint: doing nothing is correct).
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    /// Zeroes a range, deallocating it when `may_unmap` and the backend can.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _may_unmap: bool,
        bounce: &mut BounceBuffer,
    ) -> io::Result<()> {
        bounced_zeroes(offset, len, bounce, |buf, at| self.write_at(buf, at))
    }

    /// Reads `total_len(bufs)` bytes at `offset` into the guest's buffers.
    fn read_to_guest(
        &self,
        mem: &GuestMemoryMmap,
        bufs: &[GuestBuf],
        offset: u64,
        bounce: &mut BounceBuffer,
    ) -> io::Result<()> {
        bounced_read(mem, bufs, offset, bounce, |buf, at| self.read_at(buf, at))
    }

    /// Writes the guest's buffers to the disk at `offset`.
    fn write_from_guest(
        &self,
        mem: &GuestMemoryMmap,
        bufs: &[GuestBuf],
        offset: u64,
        bounce: &mut BounceBuffer,
    ) -> io::Result<()> {
        bounced_write(mem, bufs, offset, bounce, |buf, at| self.write_at(buf, at))
    }
}

pub(crate) fn chunk_len(remaining: u64) -> usize {
    // BOUNCE_CHUNK fits usize, so the min does too.
    remaining.min(BOUNCE_CHUNK as u64) as usize
}

/// Reads `total_len(bufs)` bytes at `offset` into the guest's buffers through
/// `bounce`, a chunk at a time, each chunk with `read`.
pub(crate) fn bounced_read(
    mem: &GuestMemoryMmap,
    bufs: &[GuestBuf],
    offset: u64,
    bounce: &mut BounceBuffer,
    read: impl Fn(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    let total = total_len(bufs);
    let mut cursor = BufCursor::new(bufs);
    let mut done = 0u64;
    while done < total {
        let n = chunk_len(total - done);
        let buf = bounce.get(n);
        read(buf, offset + done)?;
        cursor.write(mem, buf)?;
        done += n as u64;
    }
    Ok(())
}

/// Writes the guest's buffers at `offset` through `bounce`, a chunk at a time,
/// each chunk with `write`.
pub(crate) fn bounced_write(
    mem: &GuestMemoryMmap,
    bufs: &[GuestBuf],
    offset: u64,
    bounce: &mut BounceBuffer,
    write: impl Fn(&[u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    let total = total_len(bufs);
    let mut cursor = BufCursor::new(bufs);
    let mut done = 0u64;
    while done < total {
        let n = chunk_len(total - done);
        let buf = bounce.get(n);
        cursor.read_exact(mem, buf)?;
        write(buf, offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Writes `len` zero bytes at `offset` through `bounce`, a chunk at a time, each
/// chunk with `write`.
pub(crate) fn bounced_zeroes(
    offset: u64,
    len: u64,
    bounce: &mut BounceBuffer,
    write: impl Fn(&[u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let n = chunk_len(len - done);
        let zeroes = bounce.get(n);
        zeroes.fill(0);
        write(zeroes, offset + done)?;
        done += n as u64;
    }
    Ok(())
}
