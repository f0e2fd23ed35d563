//! Turning a guest's descriptor chain into buffers the device may touch, refusing
//! chains that break the rules instead of trusting them.

use std::fmt;

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

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
            Self::TooLong(len) => write!(
                f,
                "{len} bytes, more than the {MAX_PACKET_LEN} of the largest packet"
            ),
        }
    }
}

/// Copies a transmit chain (header + frame, device-readable only) into `packet`.
pub(crate) fn gather_tx(
    chain: Chain<'_>,
    mem: &GuestMemoryMmap,
    packet: &mut Vec<u8>,
) -> Result<(), BadChain> {
    packet.clear();
    for desc in chain {
        if desc.is_write_only() {
            return Err(BadChain::WritableInTx);
        }
        let len = desc.len();
        let total = packet.len() as u64 + u64::from(len);
        if total > MAX_PACKET_LEN as u64 {
            return Err(BadChain::TooLong(total));
        }
        let start = packet.len();
        // `total` is at most MAX_PACKET_LEN, so this fits a usize.
        packet.resize(total as usize, 0);
        let buf = packet.get_mut(start..).unwrap_or_default();
        if mem.read_slice(buf, desc.addr()).is_err() {
            return Err(BadChain::OutsideMemory {
                addr: desc.addr().0,
                len,
            });
        }
    }
    if packet.len() < VNET_HDR_LEN {
        return Err(BadChain::ShorterThanHeader(packet.len() as u64));
    }
    Ok(())
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
        if !mem.check_range(desc.addr(), len as usize, Permissions::Write) {
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
