//! The block device's request queue: what its I/O thread serves on each kick.

use std::sync::Arc;

use virtio_queue::Queue;

use super::bounce::BounceBuffer;
use super::image::DiskImage;
use super::request::{handle_chain, RequestContext};
use crate::virtio::chain::{drain_queue, WarnOnce};
use crate::virtio::kicked_queue::QueueServer;
use crate::virtio::GuestMemoryMmap;
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
}

impl QueueServer for RequestQueue {
    /// Serves every available request; returns whether any completed.
    fn process(&mut self, mem: &GuestMemoryMmap) -> bool {
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

    fn queue_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }
}
