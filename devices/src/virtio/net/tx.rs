//! The transmit queue: frames the guest sends, written to the tap one chain at a
//! time. Each chain is completed with length 0 (the device writes nothing back),
//! whether its frame reached the tap or was dropped.

use std::io;

use virtio_queue::{Queue, QueueT};

use crate::virtio::GuestMemoryMmap;

use super::chain::{avail_ring_sane, map_tx, Chain, MAX_IOVECS};
use super::header::VNET_HDR_LEN;
use super::log_limit::LogLimiter;
use super::offload::TxOffloads;
use super::stats::NetStats;
use super::tap::TapIo;

/// Chains handled per run before the thread looks at its other events, so a guest
/// that keeps sending cannot starve receive.
pub(crate) const TX_BUDGET: usize = 256;

/// What one run over the transmit queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TxRun {
    /// Chains put on the used ring.
    pub completed: usize,
    /// The driver wants an interrupt for them.
    pub notify: bool,
    /// The budget ran out with chains still waiting: run again soon.
    pub more: bool,
}

/// The iovecs of the frame being sent. They point into guest memory (and at
/// `TxQueue::header`) only during one `send`, and are cleared before it returns.
struct IovecScratch(Vec<libc::iovec>);

// SAFETY: the raw pointers that make `iovec` !Send never outlive one `send` call
// on the thread that owns the queue; between calls the vector is empty, so moving
// it to another thread moves no pointer.
unsafe impl Send for IovecScratch {}

pub(crate) struct TxQueue {
    queue: Queue,
    offloads: TxOffloads,
    /// The header of the frame being sent, copied out of guest memory so that the
    /// guest cannot change it after it was checked.
    header: [u8; VNET_HDR_LEN],
    iov: IovecScratch,
    bad_chain_log: LogLimiter,
    bad_ring_log: LogLimiter,
    tap_error_log: LogLimiter,
}

impl TxQueue {
    pub(crate) fn new(queue: Queue, offloads: TxOffloads) -> Self {
        Self {
            queue,
            offloads,
            header: [0; VNET_HDR_LEN],
            iov: IovecScratch(Vec::with_capacity(MAX_IOVECS.min(64))),
            bad_chain_log: LogLimiter::default(),
            bad_ring_log: LogLimiter::default(),
            tap_error_log: LogLimiter::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Sends what the guest posted, until the queue is empty or the budget is spent.
    pub(crate) fn process<T: TapIo>(
        &mut self,
        mem: &GuestMemoryMmap,
        tap: &T,
        stats: &NetStats,
    ) -> TxRun {
        let mut completed = 0;
        let mut more = false;
        'run: loop {
            if !avail_ring_sane(&self.queue, mem) {
                if let Some(held_back) = self.bad_ring_log.check() {
                    log::warn!(
                        "virtio-net: the transmit queue's available index is invalid; ignoring the queue until the driver fixes it ({held_back} similar warnings held back)"
                    );
                }
                break;
            }
            if let Err(e) = self.queue.disable_notification(mem) {
                log::error!("virtio-net: transmit queue unusable: {e}");
                break;
            }
            let mut popped = false;
            while let Some(chain) = self.queue.pop_descriptor_chain(mem) {
                popped = true;
                let head = chain.head_index();
                if head >= self.queue.size() {
                    // No used entry can name it; all we can do is step over it.
                    stats.bad_chain();
                    stats.tx_dropped();
                    if let Some(held_back) = self.bad_chain_log.check() {
                        log::warn!(
                            "virtio-net: skipped transmit chain head {head}, outside the queue ({held_back} similar warnings held back)"
                        );
                    }
                    continue;
                }
                self.send(chain, mem, tap, stats);
                if let Err(e) = self.queue.add_used(mem, head, 0) {
                    log::error!("virtio-net: cannot complete a transmit chain: {e}");
                    break 'run;
                }
                completed += 1;
                if completed >= TX_BUDGET {
                    more = true;
                    break 'run;
                }
            }
            // Re-arm notifications, then look once more: the guest may have posted a
            // chain after the last pop and before it could see notifications on.
            match self.queue.enable_notification(mem) {
                // More was posted meanwhile; if the last round found nothing to
                // pop, the index is lying and another round would find nothing too.
                Ok(true) if popped => continue,
                Ok(true) => break,
                Ok(false) => break,
                Err(e) => {
                    log::error!("virtio-net: transmit queue unusable: {e}");
                    break;
                }
            }
        }
        let notify = completed > 0 && self.queue.needs_notification(mem).unwrap_or(true);
        TxRun {
            completed,
            notify,
            more,
        }
    }

    fn send<T: TapIo>(
        &mut self,
        chain: Chain<'_>,
        mem: &GuestMemoryMmap,
        tap: &T,
        stats: &NetStats,
    ) {
        let iov = &mut self.iov.0;
        iov.clear();
        // The header goes first; its address is filled in once it is copied.
        iov.push(libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: VNET_HDR_LEN,
        });
        let packet_len = match map_tx(chain, mem, &mut self.header, iov) {
            Ok(len) => len,
            Err(bad) => {
                iov.clear();
                stats.bad_chain();
                stats.tx_dropped();
                if let Some(held_back) = self.bad_chain_log.check() {
                    log::warn!(
                        "virtio-net: dropped a transmit chain: {bad} ({held_back} similar warnings held back)"
                    );
                }
                return;
            }
        };
        self.offloads.sanitize(&mut self.header);
        if let Some(first) = iov.first_mut() {
            first.iov_base = self.header.as_mut_ptr().cast();
        }
        // SAFETY: the first iovec covers `self.header`; the others were mapped from
        // `mem`, which the caller borrows for the whole call, so all of them are
        // readable memory while writev runs.
        let result = unsafe { tap.write_iovecs(iov) };
        iov.clear();
        let frame_len = packet_len.saturating_sub(VNET_HDR_LEN);
        match result {
            Ok(n) if n == packet_len => stats.tx_sent(frame_len),
            result => {
                stats.tx_dropped();
                if let Some(held_back) = self.tap_error_log.check() {
                    let why = match result {
                        Ok(n) => format!("the tap took {n} of {packet_len} bytes"),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            "the tap's queue is full".to_string()
                        }
                        Err(e) => e.to_string(),
                    };
                    log::warn!(
                        "virtio-net: dropped a {frame_len}-byte frame for the tap: {why} ({held_back} similar warnings held back)"
                    );
                }
            }
        }
    }
}
