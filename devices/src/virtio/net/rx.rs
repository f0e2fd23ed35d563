//! The receive queue: frames read from the tap, placed in buffers the guest posted.
//!
//! With VIRTIO_NET_F_MRG_RXBUF a frame may span several chains (Linux then posts
//! page-sized buffers) and `num_buffers` in its header says how many; without it
//! each frame needs one chain big enough for all of it. A frame read from the tap
//! while the guest has posted too little room waits here (the tap is not read again)
//! until the guest posts more; one that could never fit is dropped and counted.

use std::collections::VecDeque;
use std::io;

use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use crate::virtio::GuestMemoryMmap;

use super::chain::{avail_ring_sane, collect_rx, Segment};
use super::header::{set_num_buffers, MAX_PACKET_LEN, VNET_HDR_LEN};
use super::log_limit::LogLimiter;
use super::stats::NetStats;
use super::tap::TapIo;

/// Tap reads per run before the thread looks at its other events.
pub(crate) const RX_BUDGET: usize = 256;

/// Why a run over the receive queue stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RxStop {
    /// The tap has nothing more to read: wait for it.
    TapEmpty,
    /// A frame is waiting for buffers: stop reading the tap until the guest kicks.
    OutOfBuffers,
    /// The budget ran out; the tap may hold more.
    Budget,
    /// The tap failed in a way retrying would not fix soon; stop reading it until
    /// the guest kicks.
    TapFailed,
    /// The guest's receive ring is unusable (an invalid index, a used ring we
    /// cannot write); stop reading the tap until the guest kicks.
    QueueBroken,
}

/// What one run over the receive queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RxRun {
    /// Frames placed in guest buffers.
    pub delivered: usize,
    /// The driver wants an interrupt for the chains completed.
    pub notify: bool,
    pub stop: RxStop,
}

/// A chain popped from the available ring and checked, not yet used.
struct HeldChain {
    head: u16,
    capacity: u64,
    segments: Vec<Segment>,
}

enum Delivery {
    Delivered,
    /// The frame can never fit the buffers the guest gives us.
    Dropped(&'static str),
    NoBuffers,
    QueueBroken,
}

pub(crate) struct RxQueue {
    queue: Queue,
    mergeable: bool,
    packet: Box<[u8]>,
    /// Length of the frame (with header) in `packet` not delivered yet; 0 if none.
    pending: usize,
    /// Chains already popped, in ring order, that the next frames will fill.
    held: VecDeque<HeldChain>,
    /// Segment vectors of used chains, reused for the next ones.
    spare: Vec<Vec<Segment>>,
    /// Chains put on the used ring since the last notification check.
    completed: usize,
    bad_chain_log: LogLimiter,
    drop_log: LogLimiter,
    tap_error_log: LogLimiter,
}

impl RxQueue {
    pub(crate) fn new(queue: Queue, mergeable: bool) -> Self {
        Self {
            queue,
            mergeable,
            packet: vec![0u8; MAX_PACKET_LEN].into_boxed_slice(),
            pending: 0,
            held: VecDeque::new(),
            spare: Vec::new(),
            completed: 0,
            bad_chain_log: LogLimiter::default(),
            drop_log: LogLimiter::default(),
            tap_error_log: LogLimiter::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn queue(&self) -> &Queue {
        &self.queue
    }

    /// A frame read from the tap is waiting for guest buffers.
    #[cfg(test)]
    pub(crate) fn has_pending_frame(&self) -> bool {
        self.pending != 0
    }

    /// Moves frames from the tap to the guest until the tap is empty, the guest's
    /// buffers run out or the budget is spent.
    pub(crate) fn process<T: TapIo>(
        &mut self,
        mem: &GuestMemoryMmap,
        tap: &T,
        stats: &NetStats,
    ) -> RxRun {
        let mut delivered = 0;
        let mut reads = 0;
        let stop = loop {
            if self.pending == 0 {
                if reads >= RX_BUDGET {
                    break RxStop::Budget;
                }
                reads += 1;
                match tap.read_frame(&mut self.packet) {
                    Ok(0) => {
                        // End of file: the other side is gone, and would stay
                        // readable forever.
                        if let Some(held_back) = self.tap_error_log.check() {
                            log::error!(
                                "virtio-net: the tap reported end of file; receive paused until the guest posts buffers ({held_back} similar errors held back)"
                            );
                        }
                        break RxStop::TapFailed;
                    }
                    Ok(n) if n < VNET_HDR_LEN => {
                        // A tap always prepends the header; anything shorter is noise.
                        stats.rx_dropped();
                        continue;
                    }
                    Ok(n) => self.pending = n.min(self.packet.len()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break RxStop::TapEmpty,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if frame_lost(&e) => {
                        // The kernel consumed a frame it could not hand over (one
                        // larger than our buffer): count it and go on.
                        stats.rx_dropped();
                        if let Some(held_back) = self.drop_log.check() {
                            log::warn!(
                                "virtio-net: the tap dropped a frame while reading it: {e} ({held_back} similar warnings held back)"
                            );
                        }
                        continue;
                    }
                    Err(e) => {
                        if let Some(held_back) = self.tap_error_log.check() {
                            log::error!(
                                "virtio-net: cannot read the tap: {e}; receive paused until the guest posts buffers ({held_back} similar errors held back)"
                            );
                        }
                        break RxStop::TapFailed;
                    }
                }
            }
            match self.deliver(mem, stats) {
                Delivery::Delivered => {
                    stats.rx_delivered(self.pending - VNET_HDR_LEN);
                    delivered += 1;
                    self.pending = 0;
                }
                Delivery::Dropped(why) => {
                    stats.rx_dropped();
                    if let Some(held_back) = self.drop_log.check() {
                        log::warn!(
                            "virtio-net: dropped a {}-byte frame from the tap: {why} ({held_back} similar warnings held back)",
                            self.pending - VNET_HDR_LEN
                        );
                    }
                    self.pending = 0;
                }
                Delivery::NoBuffers => break RxStop::OutOfBuffers,
                Delivery::QueueBroken => break RxStop::QueueBroken,
            }
        };
        let notify = self.completed > 0 && self.queue.needs_notification(mem).unwrap_or(true);
        self.completed = 0;
        RxRun {
            delivered,
            notify,
            stop,
        }
    }

    /// Places the pending frame in held chains, popping more as needed.
    fn deliver(&mut self, mem: &GuestMemoryMmap, stats: &NetStats) -> Delivery {
        let need = self.pending as u64;
        let count = loop {
            if let Some(count) = self.chains_needed(need) {
                break count;
            }
            if !self.mergeable && !self.held.is_empty() {
                return Delivery::Dropped("larger than the receive buffer the guest posted");
            }
            if self.held.len() >= usize::from(self.queue.size()) {
                return Delivery::Dropped("larger than all receive buffers the queue can hold");
            }
            match self.pop_valid_chain(mem, stats) {
                Ok(Some(chain)) => self.held.push_back(chain),
                Ok(None) => return Delivery::NoBuffers,
                Err(()) => return Delivery::QueueBroken,
            }
        };
        let Ok(num_buffers) = u16::try_from(count) else {
            return Delivery::Dropped("needs more than 65535 buffers");
        };
        let Some(packet) = self.packet.get_mut(..self.pending) else {
            return Delivery::Dropped("longer than the receive buffer");
        };
        set_num_buffers(packet, num_buffers);
        let mut offset = 0;
        for _ in 0..count {
            let Some(chain) = self.held.pop_front() else {
                break;
            };
            let rest = packet.get(offset..).unwrap_or_default();
            let written = write_segments(mem, &chain.segments, rest);
            offset += written;
            // `written` is at most the chain's capacity, which came from u32 lengths
            // of a chain whose sum virtio-queue caps at u32::MAX.
            let used_len = u32::try_from(written).unwrap_or(u32::MAX);
            if let Err(e) = self.queue.add_used(mem, chain.head, used_len) {
                log::error!("virtio-net: cannot complete a receive chain: {e}");
                return Delivery::QueueBroken;
            }
            self.completed += 1;
            let mut segments = chain.segments;
            segments.clear();
            self.spare.push(segments);
        }
        Delivery::Delivered
    }

    /// How many held chains, from the front, hold `need` bytes; `None` if all of
    /// them together do not.
    fn chains_needed(&self, need: u64) -> Option<usize> {
        if !self.mergeable {
            return self.held.front().filter(|c| c.capacity >= need).map(|_| 1);
        }
        let mut room = 0u64;
        for (i, chain) in self.held.iter().enumerate() {
            room += chain.capacity;
            if room >= need {
                return Some(i + 1);
            }
        }
        None
    }

    /// The next chain the guest posted that is fit to receive into. Unfit ones are
    /// completed with length 0 on the way. `Ok(None)`: the ring is empty.
    fn pop_valid_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        stats: &NetStats,
    ) -> Result<Option<HeldChain>, ()> {
        let mut looked_again = false;
        loop {
            if !avail_ring_sane(&self.queue, mem) {
                if let Some(held_back) = self.bad_chain_log.check() {
                    log::warn!(
                        "virtio-net: the receive queue's available index is invalid; receive paused until the driver kicks it ({held_back} similar warnings held back)"
                    );
                }
                return Err(());
            }
            let Some(chain) = self.queue.pop_descriptor_chain(mem) else {
                // Ask for a kick when the guest posts more, then look once more in
                // case it did so before it could see the request. Only once: an
                // index that keeps claiming chains nobody can pop is broken.
                match self.queue.enable_notification(mem) {
                    Ok(true) if !looked_again => {
                        looked_again = true;
                        continue;
                    }
                    Ok(true) => return Err(()),
                    Ok(false) => return Ok(None),
                    Err(e) => {
                        log::error!("virtio-net: receive queue unusable: {e}");
                        return Err(());
                    }
                }
            };
            looked_again = false;
            let head = chain.head_index();
            if head >= self.queue.size() {
                // No used entry can name it; all we can do is step over it.
                stats.bad_chain();
                if let Some(held_back) = self.bad_chain_log.check() {
                    log::warn!(
                        "virtio-net: skipped receive chain head {head}, outside the queue ({held_back} similar warnings held back)"
                    );
                }
                continue;
            }
            let mut segments = self.spare.pop().unwrap_or_default();
            match collect_rx(chain, mem, &mut segments) {
                Ok(capacity) => {
                    return Ok(Some(HeldChain {
                        head,
                        capacity,
                        segments,
                    }))
                }
                Err(bad) => {
                    self.spare.push(segments);
                    stats.bad_chain();
                    if let Some(held_back) = self.bad_chain_log.check() {
                        log::warn!(
                            "virtio-net: skipped a receive chain: {bad} ({held_back} similar warnings held back)"
                        );
                    }
                    if let Err(e) = self.queue.add_used(mem, head, 0) {
                        log::error!("virtio-net: cannot complete a receive chain: {e}");
                        return Err(());
                    }
                    self.completed += 1;
                }
            }
        }
    }
}

/// Errors of a tap read that cost one frame and leave the tap usable.
fn frame_lost(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EFAULT) | Some(libc::EMSGSIZE)
    )
}

/// Copies as much of `data` as fits into `segments`; returns the bytes written.
fn write_segments(mem: &GuestMemoryMmap, segments: &[Segment], data: &[u8]) -> usize {
    let mut written = 0;
    for segment in segments {
        let rest = data.get(written..).unwrap_or_default();
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(segment.len as usize);
        let Some(part) = rest.get(..n) else {
            break;
        };
        // The segment was checked against guest memory when the chain was popped,
        // and guest memory does not shrink under an active device.
        if mem.write_slice(part, segment.addr).is_err() {
            break;
        }
        written += n;
    }
    written
}
