//! Queue notifications: one eventfd per queue, a KVM ioeventfd on the queue's
//! notification address so a driver's kick wakes the device's I/O thread without
//! a VM exit to userspace.
//!
//! The device receives a duplicate of each eventfd at activation; both refer to
//! the same kernel object, so a kick through KVM, or through
//! [`QueueNotifiers::kick`] for a trapped write, reaches the device the same way.

use std::io;
use std::sync::Arc;

use log::warn;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::BoxError;
use crate::virtio::layout::notify_addr;
use crate::virtio::IoEventRegistrar;

/// A queue's ioeventfd could not be registered.
#[derive(Debug, thiserror::Error)]
#[error("registering the ioeventfd of queue {queue} at {addr:#x}: {source}")]
pub struct RegisterError {
    pub queue: usize,
    pub addr: u64,
    #[source]
    pub source: BoxError,
}

struct Notifier {
    kick: EventFd,
    /// The address the ioeventfd is registered at, if it is.
    registered: Option<u64>,
}

/// The kick eventfds of a device's queues and their ioeventfd registrations.
pub struct QueueNotifiers {
    notifiers: Vec<Notifier>,
    registrar: Arc<dyn IoEventRegistrar>,
}

impl QueueNotifiers {
    /// Creates `num_queues` eventfds, none registered yet. Fails with the index of
    /// the queue whose eventfd could not be created.
    pub fn new(
        num_queues: usize,
        registrar: Arc<dyn IoEventRegistrar>,
    ) -> Result<Self, (usize, io::Error)> {
        let notifiers = (0..num_queues)
            .map(|queue| {
                EventFd::new(libc::EFD_NONBLOCK)
                    .map(|kick| Notifier {
                        kick,
                        registered: None,
                    })
                    .map_err(|e| (queue, e))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            notifiers,
            registrar,
        })
    }

    /// Registers every queue's ioeventfd for BAR0 at `bar0`. On failure the ones
    /// registered by this call are unregistered again.
    pub fn register(&mut self, bar0: u64) -> Result<(), RegisterError> {
        for queue in 0..self.notifiers.len() {
            let addr = notify_addr(bar0, queue);
            let Some(n) = self.notifiers.get_mut(queue) else {
                break;
            };
            if n.registered.is_some() {
                continue;
            }
            if let Err(source) = self.registrar.register(&n.kick, addr) {
                self.unregister();
                return Err(RegisterError {
                    queue,
                    addr,
                    source,
                });
            }
            n.registered = Some(addr);
        }
        Ok(())
    }

    /// Unregisters every registered ioeventfd; failures are logged (the eventfd
    /// stays usable for trapped writes).
    pub fn unregister(&mut self) {
        for (queue, n) in self.notifiers.iter_mut().enumerate() {
            if let Some(addr) = n.registered.take() {
                if let Err(e) = self.registrar.unregister(&n.kick, addr) {
                    warn!("virtio: unregistering the ioeventfd of queue {queue} at {addr:#x}: {e}");
                }
            }
        }
    }

    /// BAR0 moved to `bar0`: the ioeventfds follow it.
    pub fn move_to(&mut self, bar0: u64) -> Result<(), RegisterError> {
        self.unregister();
        self.register(bar0)
    }

    /// Whether queue `queue`'s ioeventfd is registered, and where.
    pub fn registered_at(&self, queue: usize) -> Option<u64> {
        self.notifiers.get(queue).and_then(|n| n.registered)
    }

    /// A trapped write to queue `queue`'s notification address. Unknown queues are
    /// ignored.
    pub fn kick(&self, queue: u64) {
        let Some(n) = usize::try_from(queue)
            .ok()
            .and_then(|q| self.notifiers.get(q))
        else {
            return;
        };
        if let Err(e) = n.kick.write(1) {
            warn!("virtio: signalling queue {queue}: {e}");
        }
    }

    /// A descriptor for the device to wait on queue `queue`'s kicks.
    pub fn device_kick(&self, queue: usize) -> io::Result<EventFd> {
        self.notifiers
            .get(queue)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no queue {queue}")))?
            .kick
            .try_clone()
    }

    /// Forgets kicks nobody consumed (after a device reset), so a stale one does not
    /// wake the next activation.
    pub fn drain(&self) {
        for n in &self.notifiers {
            // Nonblocking: an empty counter fails with EAGAIN, which is the goal.
            let _ = n.kick.read();
        }
    }
}

impl Drop for QueueNotifiers {
    fn drop(&mut self) {
        self.unregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::fake::FakeIoEvents;

    #[test]
    fn registers_one_ioeventfd_per_queue_and_moves_them() {
        let events = Arc::new(FakeIoEvents::default());
        let mut n = QueueNotifiers::new(2, events.clone()).unwrap();
        n.register(0xc000_0000).unwrap();
        assert_eq!(events.addresses(), vec![0xc000_3000, 0xc000_3004]);
        assert_eq!(n.registered_at(1), Some(0xc000_3004));
        n.move_to(0xd000_0000).unwrap();
        assert_eq!(events.addresses(), vec![0xd000_3000, 0xd000_3004]);
        drop(n);
        assert!(events.addresses().is_empty(), "drop unregisters");
    }

    #[test]
    fn a_failed_registration_leaves_nothing_registered() {
        let events = Arc::new(FakeIoEvents::default());
        events.fail_at(0xc000_3004);
        let mut n = QueueNotifiers::new(2, events.clone()).unwrap();
        let e = n.register(0xc000_0000).unwrap_err();
        assert_eq!((e.queue, e.addr), (1, 0xc000_3004));
        assert!(events.addresses().is_empty());
        assert_eq!(n.registered_at(0), None);
    }

    #[test]
    fn trapped_kicks_reach_the_device_copy_and_drain_forgets_them() {
        let events = Arc::new(FakeIoEvents::default());
        let n = QueueNotifiers::new(2, events).unwrap();
        let device = n.device_kick(1).unwrap();
        n.kick(1);
        n.kick(1);
        assert_eq!(device.read().unwrap(), 2);
        n.kick(1);
        n.drain();
        assert!(device.read().is_err(), "nothing left to read");
        n.kick(2);
        n.kick(u64::MAX);
        assert!(n.device_kick(2).is_err());
    }
}
