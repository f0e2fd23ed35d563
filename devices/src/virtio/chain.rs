//! Descriptor-chain plumbing the block, console and entropy devices share: splitting
//! a chain into the buffers the device reads and those it writes, a cursor that treats
//! a list of buffers as one byte stream (virtio lets the driver frame a request across
//! descriptors any way it likes), draining a queue, and rate-limited reports of
//! driver mistakes. Nothing here trusts a value the guest wrote.

use std::fmt::Display;
use std::io;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::virtio::{GuestMemoryMmap, VirtioInterrupt};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GuestBuf {
    pub addr: GuestAddress,
    pub len: u32,
}

/// The combined length of `bufs`.
pub(crate) fn total_len(bufs: &[GuestBuf]) -> u64 {
    bufs.iter().map(|b| u64::from(b.len)).sum()
}

/// Walks a list of buffers front to back.
pub(crate) struct BufCursor<'a> {
    bufs: &'a [GuestBuf],
    index: usize,
    offset: u32,
}

impl<'a> BufCursor<'a> {
    pub fn new(bufs: &'a [GuestBuf]) -> Self {
        Self {
            bufs,
            index: 0,
            offset: 0,
        }
    }

    /// The part of the current buffer not consumed yet, or `None` at the end.
    fn current(&mut self) -> Option<GuestBuf> {
        while let Some(buf) = self.bufs.get(self.index) {
            if self.offset < buf.len {
                return Some(GuestBuf {
                    addr: buf.addr.unchecked_add(u64::from(self.offset)),
                    len: buf.len - self.offset,
                });
            }
            self.index += 1;
            self.offset = 0;
        }
        None
    }

    fn advance(&mut self, n: u32) {
        self.offset += n;
    }

    /// Fills `out` from the stream; fails if the stream is shorter.
    pub fn read_exact(&mut self, mem: &GuestMemoryMmap, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            let Some(buf) = self.current() else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "request buffers are shorter than the request",
                ));
            };
            let n = (buf.len as usize).min(out.len() - done);
            mem.read_slice(&mut out[done..done + n], buf.addr)
                .map_err(io::Error::other)?;
            // n <= buf.len, a u32.
            self.advance(n as u32);
            done += n;
        }
        Ok(())
    }

    /// Writes as much of `data` as the stream has room for; returns how much.
    pub fn write(&mut self, mem: &GuestMemoryMmap, data: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < data.len() {
            let Some(buf) = self.current() else {
                break;
            };
            let n = (buf.len as usize).min(data.len() - done);
            mem.write_slice(&data[done..done + n], buf.addr)
                .map_err(io::Error::other)?;
            self.advance(n as u32);
            done += n;
        }
        Ok(done)
    }

    /// The buffers not consumed yet (the first one possibly shortened).
    pub fn remaining(mut self) -> Vec<GuestBuf> {
        let mut rest = Vec::new();
        if let Some(first) = self.current() {
            rest.push(first);
            rest.extend(self.bufs.iter().skip(self.index + 1).copied());
        }
        rest
    }
}

/// What is wrong with a chain as a whole, beyond what a device checks per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChainFault {
    /// It has no descriptor, or it stops at a descriptor whose `next` could not be
    /// followed (index out of the table, a loop longer than the queue, an unreadable
    /// or invalid indirect table, more than 4 GiB in total).
    Broken,
    /// A device-readable buffer follows a device-writable one.
    ReadableAfterWritable,
    /// A buffer lies (partly) outside guest memory.
    OutsideMemory,
}

impl ChainFault {
    pub fn describe(self) -> &'static str {
        match self {
            ChainFault::Broken => {
                "broken descriptor chain (bad next index, loop or bad indirect table)"
            }
            ChainFault::ReadableAfterWritable => {
                "device-readable buffer after a device-writable one"
            }
            ChainFault::OutsideMemory => "buffer outside guest memory",
        }
    }
}

/// A chain's buffers in order, split by direction. When `fault` is set the lists
/// hold what could be read of the chain, unchecked: use them only to find where to
/// report the failure.
pub(crate) struct ChainBufs {
    pub readable: Vec<GuestBuf>,
    pub writable: Vec<GuestBuf>,
    pub fault: Option<ChainFault>,
}

/// Walks `chain` (virtio-queue bounds its length by the queue or indirect table size)
/// and checks every buffer against guest memory.
pub(crate) fn split_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> ChainBufs {
    let mut bufs = ChainBufs {
        readable: Vec::new(),
        writable: Vec::new(),
        fault: None,
    };
    let mut last_has_next = true;
    for desc in chain {
        last_has_next = desc.has_next();
        let buf = GuestBuf {
            addr: desc.addr(),
            len: desc.len(),
        };
        if !mem.check_range(buf.addr, buf.len as usize) {
            bufs.fault.get_or_insert(ChainFault::OutsideMemory);
        }
        if desc.is_write_only() {
            bufs.writable.push(buf);
        } else {
            if !bufs.writable.is_empty() {
                bufs.fault.get_or_insert(ChainFault::ReadableAfterWritable);
            }
            bufs.readable.push(buf);
        }
    }
    // The iterator ends silently where it cannot go on; a last descriptor that
    // still points to a next one means the chain was cut there.
    if last_has_next {
        bufs.fault = Some(ChainFault::Broken);
    }
    bufs
}

/// Logs each kind of driver mistake once per device, so a broken or hostile guest
/// cannot flood the host's log.
pub(crate) struct WarnOnce {
    device: &'static str,
    seen: Vec<&'static str>,
}

impl WarnOnce {
    pub fn new(device: &'static str) -> Self {
        Self {
            device,
            seen: Vec::new(),
        }
    }

    /// Logs `what` (the kind of mistake, the key for "once") with `detail`, unless
    /// this kind was logged before.
    pub fn warn(&mut self, what: &'static str, detail: impl Display) {
        if self.seen.contains(&what) {
            return;
        }
        self.seen.push(what);
        log::warn!(
            "{}: {what}: {detail} (further such errors from this device are not logged)",
            self.device
        );
    }
}

/// Hands every chain the driver made available to `handle`, which returns how many
/// bytes it wrote into the chain, and puts each on the used ring. Driver
/// notifications stay suppressed while it runs. Returns whether anything was used.
pub(crate) fn drain_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    warn: &mut WarnOnce,
    mut handle: impl FnMut(&mut WarnOnce, DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> bool {
    let mut used_any = false;
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            warn.warn("cannot update the used ring", e);
        }
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    warn.warn("invalid available ring", e);
                    return used_any;
                }
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let len = handle(warn, chain);
            match queue.add_used(mem, head, len) {
                Ok(()) => used_any = true,
                Err(e) => warn.warn("cannot add to the used ring", e),
            }
        }
        match queue.enable_notification(mem) {
            // More chains arrived while notifications were off.
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => {
                warn.warn("cannot update the used ring", e);
                break;
            }
        }
    }
    used_any
}

/// Interrupts the driver for queue `index` unless EVENT_IDX says it does not want
/// to hear yet.
pub(crate) fn notify_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
) {
    // If the event index cannot be read, an extra interrupt is harmless.
    if queue.needs_notification(mem).unwrap_or(true) {
        if let Err(e) = interrupt.notify_queue(index) {
            log::error!("cannot interrupt the driver for queue {index}: {e}");
        }
    }
}

/// The last byte of the last device-writable buffer: where a request's status goes.
/// `None` if there is no writable byte or it is outside guest memory.
pub(crate) fn status_byte(mem: &GuestMemoryMmap, writable: &[GuestBuf]) -> Option<GuestAddress> {
    let last = writable.iter().rev().find(|b| b.len > 0)?;
    let addr = last.addr.checked_add(u64::from(last.len) - 1)?;
    mem.check_range(addr, 1).then_some(addr)
}

/// `bufs` with the last `n` bytes cut off (`n` no more than their total length).
pub(crate) fn without_tail(bufs: &[GuestBuf], mut n: u64) -> Vec<GuestBuf> {
    let mut kept: Vec<GuestBuf> = bufs.to_vec();
    while n > 0 {
        let Some(last) = kept.last_mut() else {
            break;
        };
        let cut = n.min(u64::from(last.len));
        // cut <= last.len, a u32.
        last.len -= cut as u32;
        n -= cut;
        if last.len == 0 {
            kept.pop();
        }
    }
    kept.retain(|b| b.len > 0);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::guest_memory;

    #[test]
    fn reads_and_writes_across_buffer_boundaries() {
        let mem = guest_memory(0x10000);
        let bufs = [
            GuestBuf {
                addr: GuestAddress(0x100),
                len: 3,
            },
            GuestBuf {
                addr: GuestAddress(0x200),
                len: 0,
            },
            GuestBuf {
                addr: GuestAddress(0x300),
                len: 5,
            },
        ];
        let mut cursor = BufCursor::new(&bufs);
        assert_eq!(cursor.write(&mem, b"abcdefghij").unwrap(), 8);
        let mut got = [0u8; 3];
        mem.read_slice(&mut got, GuestAddress(0x100)).unwrap();
        assert_eq!(&got, b"abc");
        let mut got = [0u8; 5];
        mem.read_slice(&mut got, GuestAddress(0x300)).unwrap();
        assert_eq!(&got, b"defgh");

        let mut cursor = BufCursor::new(&bufs);
        let mut head = [0u8; 4];
        cursor.read_exact(&mem, &mut head).unwrap();
        assert_eq!(&head, b"abcd");
        assert_eq!(
            cursor.remaining(),
            vec![GuestBuf {
                addr: GuestAddress(0x301),
                len: 4
            }]
        );

        let mut cursor = BufCursor::new(&bufs);
        let mut too_much = [0u8; 9];
        assert!(cursor.read_exact(&mem, &mut too_much).is_err());
    }
}
