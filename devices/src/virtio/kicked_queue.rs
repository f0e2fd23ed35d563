//! The I/O thread of a device that serves one queue whenever the driver kicks it
//! (block and entropy): the kick is read, every available chain is served, and the
//! driver is interrupted when something completed. The queue logic itself stays
//! free of threads and eventfds ([`QueueServer`]), so tests drive it directly.

use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::chain::notify_used;
use super::device::{ActivateError, Activation, ActiveQueue, VirtioInterrupt};
use super::worker::{EpollContext, EventHandler, Worker};
use super::GuestMemoryMmap;

/// The worker token of the queue's kick.
const KICK_TOKEN: u64 = 0;

/// A device's queue and what serving it needs.
pub(crate) trait QueueServer: Send + 'static {
    /// Serves every available chain; returns whether any completed.
    fn process(&mut self, mem: &GuestMemoryMmap) -> bool;

    fn queue_mut(&mut self) -> &mut Queue;
}

/// Takes queue `index` out of the driver's enabled queues.
pub(crate) fn take_queue(
    queues: &mut Vec<ActiveQueue>,
    index: u16,
) -> Result<ActiveQueue, ActivateError> {
    let at = queues
        .iter()
        .position(|q| q.index == index)
        .ok_or(ActivateError::MissingQueue(index))?;
    Ok(queues.swap_remove(at))
}

/// The thread serving one kicked queue with server `S`.
pub(crate) type KickedQueueWorker<S> = Worker<KickedQueue<S>>;

/// Starts a device's I/O thread with `handler` woken by `fds`.
pub(crate) fn spawn_worker<H: EventHandler>(
    name: &str,
    handler: H,
    fds: &[(std::os::unix::io::RawFd, u64)],
) -> Result<Worker<H>, ActivateError> {
    Worker::spawn(name.to_string(), handler, fds).map_err(|source| ActivateError::Thread {
        what: name.to_string(),
        source,
    })
}

/// Starts the thread that serves queue `index` of `activation` with the server
/// `make` builds around it.
pub(crate) fn start<S: QueueServer>(
    name: &'static str,
    activation: Activation,
    index: u16,
    make: impl FnOnce(Queue) -> S,
) -> Result<KickedQueueWorker<S>, ActivateError> {
    let Activation {
        mem,
        interrupt,
        mut queues,
        ..
    } = activation;
    let active = take_queue(&mut queues, index)?;
    let kick_fd = active.kick.as_raw_fd();
    let handler = KickedQueue {
        name,
        index,
        mem,
        server: make(active.queue),
        kick: active.kick,
        interrupt,
    };
    spawn_worker(name, handler, &[(kick_fd, KICK_TOKEN)])
}

pub(crate) struct KickedQueue<S> {
    name: &'static str,
    index: u16,
    mem: GuestMemoryMmap,
    server: S,
    kick: EventFd,
    interrupt: Arc<dyn VirtioInterrupt>,
}

impl<S: QueueServer> EventHandler for KickedQueue<S> {
    fn handle_event(&mut self, token: u64, _ctx: &EpollContext<'_>) {
        if token != KICK_TOKEN {
            return;
        }
        // Level-triggered: the counter must be cleared or epoll reports it again.
        if let Err(e) = self.kick.read() {
            log::error!("{}: cannot read the queue's kick event: {e}", self.name);
        }
        if self.server.process(&self.mem) {
            notify_used(
                self.server.queue_mut(),
                &self.mem,
                self.interrupt.as_ref(),
                self.index,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{guest_memory, TestQueue};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    use vm_memory::GuestAddress;

    /// Completes nothing, counts how often it was asked.
    struct Counting {
        queue: Queue,
        calls: Arc<AtomicUsize>,
        completes: bool,
    }

    impl QueueServer for Counting {
        fn process(&mut self, _mem: &GuestMemoryMmap) -> bool {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.completes
        }

        fn queue_mut(&mut self) -> &mut Queue {
            &mut self.queue
        }
    }

    #[derive(Default)]
    struct Interrupts(Mutex<Vec<u16>>);

    impl VirtioInterrupt for Interrupts {
        fn notify_queue(&self, queue: u16) -> std::io::Result<()> {
            self.0.lock().unwrap().push(queue);
            Ok(())
        }

        fn notify_config(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn active(index: u16, mem: &GuestMemoryMmap) -> ActiveQueue {
        ActiveQueue {
            index,
            queue: TestQueue::new(mem, GuestAddress(0), 8).queue(false),
            kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn take_queue_finds_the_index_or_names_the_missing_one() {
        let mem = guest_memory(1 << 20);
        let mut queues = vec![active(1, &mem), active(0, &mem)];
        assert_eq!(take_queue(&mut queues, 0).unwrap().index, 0);
        assert_eq!(queues.len(), 1);
        let Err(err) = take_queue(&mut queues, 0) else {
            panic!("queue 0 was taken twice");
        };
        assert!(matches!(err, ActivateError::MissingQueue(0)), "{err}");
    }

    #[test]
    fn each_kick_is_served_and_only_completions_interrupt() {
        for completes in [false, true] {
            let mem = guest_memory(1 << 20);
            let queue = active(2, &mem);
            let kick = queue.kick.try_clone().unwrap();
            let calls = Arc::new(AtomicUsize::new(0));
            let interrupts = Arc::new(Interrupts::default());
            let activation = Activation {
                mem: mem.clone(),
                interrupt: interrupts.clone(),
                queues: vec![queue],
                acked_features: 0,
            };
            let counter = calls.clone();
            let worker = start("test-queue", activation, 2, move |queue| Counting {
                queue,
                calls: counter,
                completes,
            })
            .unwrap();
            for n in 1..=3 {
                kick.write(1).unwrap();
                wait_for("the kick was not served", || {
                    calls.load(Ordering::SeqCst) >= n
                });
            }
            drop(worker);
            let seen = interrupts.0.lock().unwrap().clone();
            if completes {
                // notify_used decides with EVENT_IDX off: every completion signals.
                assert_eq!(seen, [2, 2, 2]);
            } else {
                assert!(seen.is_empty(), "{seen:?}");
            }
        }
    }

    #[test]
    fn a_missing_queue_fails_activation_before_any_thread() {
        let mem = guest_memory(1 << 20);
        let activation = Activation {
            mem: mem.clone(),
            interrupt: Arc::new(Interrupts::default()),
            queues: vec![active(1, &mem)],
            acked_features: 0,
        };
        let Err(err) = start("test-queue", activation, 0, |queue| Counting {
            queue,
            calls: Arc::default(),
            completes: false,
        }) else {
            panic!("started without its queue");
        };
        assert!(matches!(err, ActivateError::MissingQueue(0)), "{err}");
    }
}
