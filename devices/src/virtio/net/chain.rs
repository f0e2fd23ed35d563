//! Turning a guest's descriptor chain into buffers the device may touch, refusing
//! chains that break the rules instead of trusting them.

use std::fmt;

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::virtio::GuestMemoryMmap;

use super::header::{MAX_PACKET_LEN, VNET_HDR_LEN};

pub(crate) type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap>;

/// One guest buffer, checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why a chain was refused; logged (rate-limited) and completed with length 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BadChain {
    /// A transmit chain with a device-writable buffer.
    WritableInTx,
    /// A receive chain with a device-readable buffer.
    ReadableInRx,
    /// A buffer that is not (wholly) guest memory.
    OutsideMemory { addr: u64, len: u32 },
    /// Fewer bytes than the 12-byte virtio net header.
    ShorterThanHeader(u64),
    /// More bytes than the largest packet the device handles.
    TooLong(u64),
    /// More buffers than one writev takes.
    TooManyBuffers,
}

impl fmt::Display for BadChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WritableInTx => write!(f, "a transmit chain holds a device-writable buffer"),
            Self::ReadableInRx => write!(f, "a receive chain holds a device-readable buffer"),
            Self::OutsideMemory { addr, len } => {
                write!(f, "buffer {addr:#x}+{len:#x} is outside guest memory")
            }
            Self::ShorterThanHeader(len) => write!(
                f,
                "{len} bytes, shorter than the {VNET_HDR_LEN}-byte virtio net header"
            ),
            Self::TooManyBuffers => write!(f, "more than {MAX_IOVECS} buffers"),
            Self::TooLong(len) => write!(
                f,
                "{len} bytes, more than the {MAX_PACKET_LEN} of the largest packet"
            ),
        }
    }
}

/// The most buffers one writev takes (Linux's UIO_MAXIOV). Linux drivers use at
/// most MAX_SKB_FRAGS + 2, far fewer.
pub(crate) const MAX_IOVECS: usize = 1024;

/// Maps a transmit chain (header + frame, device-readable only) for writev: the
/// header is copied into `header`, where the caller can check it without the guest
/// changing it underneath, and the frame is appended to `iov` where it lies in
/// guest memory. Returns the packet's length, header included.
///
/// The iovecs stay valid as long as `mem` is borrowed by the caller; the guest may
/// still rewrite the frame bytes meanwhile, which only garbles its own frame.
pub(crate) fn map_tx(
    chain: Chain<'_>,
    mem: &GuestMemoryMmap,
    header: &mut [u8; VNET_HDR_LEN],
    iov: &mut Vec<libc::iovec>,
) -> Result<usize, BadChain> {
    let mut total = 0u64;
    let mut header_filled = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err(BadChain::WritableInTx);
        }
        let len = desc.len();
        let outside = BadChain::OutsideMemory {
            addr: desc.addr().0,
            len,
        };
        total += u64::from(len);
        if total > MAX_PACKET_LEN as u64 {
            return Err(BadChain::TooLong(total));
        }
        // `len` is at most MAX_PACKET_LEN here, so these fit a usize.
        let mut rest = len as usize;
        let mut addr = desc.addr();
        if let Some(missing) = header.get_mut(header_filled..).filter(|m| !m.is_empty()) {
            let n = missing.len().min(rest);
            let part = missing.get_mut(..n).unwrap_or_default();
            mem.read_slice(part, addr).map_err(|_| outside.clone())?;
            header_filled += n;
            rest -= n;
            addr = addr.checked_add(n as u64).ok_or_else(|| outside.clone())?;
        }
        if rest == 0 {
            continue;
        }
        for slice in GuestMemoryBackend::get_slices(mem, addr, rest) {
            let slice = slice.map_err(|_| outside.clone())?;
            if iov.len() >= MAX_IOVECS {
                return Err(BadChain::TooManyBuffers);
            }
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard().as_ptr() as *mut libc::c_void,
                iov_len: slice.len(),
            });
        }
    }
    if header_filled < VNET_HDR_LEN {
        return Err(BadChain::ShorterThanHeader(total));
    }
    // At most MAX_PACKET_LEN, checked above.
    Ok(total as usize)
}

/// A receive chain: device-writable buffers only, all inside guest memory, room
/// for at least the header. Returns its capacity in bytes.
pub(crate) fn collect_rx(
    chain: Chain<'_>,
    mem: &GuestMemoryMmap,
    segments: &mut Vec<Segment>,
) -> Result<u64, BadChain> {
    segments.clear();
    let mut capacity = 0u64;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(BadChain::ReadableInRx);
        }
        let len = desc.len();
        if len == 0 {
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, desc.addr(), len as usize) {
            return Err(BadChain::OutsideMemory {
                addr: desc.addr().0,
                len,
            });
        }
        segments.push(Segment {
            addr: desc.addr(),
            len,
        });
        capacity += u64::from(len);
    }
    if capacity < VNET_HDR_LEN as u64 {
        return Err(BadChain::ShorterThanHeader(capacity));
    }
    Ok(capacity)
}

/// Whether the driver's available index is believable: at most a ring's worth
/// ahead of what we consumed. A driver that publishes more (or a ring we cannot
/// read) is broken, and popping from it would find nothing while the index still
/// claims chains are there, a loop the I/O thread must not spin in.
pub(crate) fn avail_ring_sane(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    match queue.avail_idx(mem, Ordering::Acquire) {
        Ok(idx) => idx.0.wrapping_sub(queue.next_avail()) <= queue.size(),
        Err(_) => false,
    }
}
