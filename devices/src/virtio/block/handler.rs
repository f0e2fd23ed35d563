//! The block device's I/O thread: serves the request queue on each kick.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::chain::{drain_queue, notify_used, WarnOnce};
use super::image::{BounceBuffer, DiskImage};
use super::request::{handle_chain, RequestContext};
use crate::virtio::worker::{EpollContext, EventHandler};
use crate::virtio::{GuestMemoryMmap, VirtioInterrupt};

/// The worker token of the request queue's kick.
pub(crate) const KICK_TOKEN: u64 = 0;
/// virtio-blk's only queue.
pub(crate) const REQUEST_QUEUE: u16 = 0;

/// The request queue and what serving it needs, without the thread, so tests can
/// drive it directly.
pub(crate) struct RequestQueue {
    pub queue: Queue,
    disk: Arc<DiskImage>,
    bounce: BounceBuffer,
    warn: WarnOnce,
}

impl RequestQueue {
    pub fn new(queue: Queue, disk: Arc<DiskImage>) -> Self {
        Self {
            queue,
            disk,
            bounce: BounceBuffer::default(),
            warn: WarnOnce::new("virtio-blk"),
        }
    }

    /// Serves every available request; returns whether any completed.
    pub fn process(&mut self, mem: &GuestMemoryMmap) -> bool {
        let disk = &self.disk;
        let bounce = &mut self.bounce;
        drain_queue(&mut self.queue, mem, &mut self.warn, |warn, chain| {
            let mut ctx = RequestContext {
                mem,
                disk,
                bounce,
                warn,
            };
            handle_chain(&mut ctx, chain)
        })
    }
}

pub(crate) struct BlockWorker {
    pub mem: GuestMemoryMmap,
    pub requests: RequestQueue,
    pub kick: EventFd,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

impl EventHandler for BlockWorker {
    fn handle_event(&mut self, token: u64, _ctx: &EpollContext<'_>) {
        if token != KICK_TOKEN {
            return;
        }
        // Level-triggered: the counter must be cleared or epoll reports it again.
        if let Err(e) = self.kick.read() {
            log::error!("virtio-blk: cannot read the queue's kick event: {e}");
        }
        if self.requests.process(&self.mem) {
            notify_used(
                &mut self.requests.queue,
                &self.mem,
                self.interrupt.as_ref(),
                REQUEST_QUEUE,
            );
        }
    }
}
