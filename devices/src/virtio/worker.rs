//! The I/O thread of an active virtio device: an epoll loop over the device's file
//! descriptors (queue kicks, a tap, a backing file's readiness) that calls the
//! device's handler, until the device is reset or dropped.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// The token the worker keeps for its own stop event; handlers must not use it.
pub const STOP_TOKEN: u64 = u64::MAX;

static THREAD_START_HOOK: std::sync::OnceLock<fn(&str)> = std::sync::OnceLock::new();

/// Sets what every I/O thread runs first, with its name, before it serves anything
/// (the VMM installs the thread's seccomp filter there). Set once; false if it was.
pub fn set_thread_start_hook(hook: fn(&str)) -> bool {
    THREAD_START_HOOK.set(hook).is_ok()
}

/// Lets a handler change which descriptors the loop waits on, e.g. stop polling a
/// tap for input while the guest has posted no receive buffers.
pub struct EpollContext<'a> {
    epoll: &'a Epoll,
}

impl EpollContext<'_> {
    /// Waits for `fd` to be readable (level-triggered), reported under `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    }

    /// Stops waiting for `fd`.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

/// What a device does when one of its descriptors is ready.
pub trait EventHandler: Send + 'static {
    /// The descriptor registered under `token` is ready. Errors caused by the guest
    /// are the handler's to log and survive; the loop keeps running whatever it
    /// returns.
    fn handle_event(&mut self, token: u64, ctx: &EpollContext<'_>);
}

/// A running I/O thread. Dropping it stops the thread and waits for it.
pub struct Worker<H: EventHandler> {
    stop: EventFd,
    thread: Option<JoinHandle<H>>,
}

impl<H: EventHandler> Worker<H> {
    /// Starts a thread named `name` that waits on each `(fd, token)` of `fds` and
    /// hands readiness to `handler`.
    pub fn spawn(name: String, mut handler: H, fds: &[(RawFd, u64)]) -> io::Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        let ctx = EpollContext { epoll: &epoll };
        ctx.add(stop.as_raw_fd(), STOP_TOKEN)?;
        for &(fd, token) in fds {
            if token == STOP_TOKEN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "token u64::MAX is reserved for the worker's stop event",
                ));
            }
            ctx.add(fd, token)?;
        }
        let stop_fd = stop.try_clone()?;
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            if let Some(hook) = THREAD_START_HOOK.get() {
                hook(std::thread::current().name().unwrap_or_default());
            }
            run(&epoll, &mut handler);
            drop(stop_fd);
            handler
        })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread, waits for it and returns its handler (with whatever state
    /// it kept); `None` if the thread panicked.
    pub fn stop(mut self) -> Option<H> {
        self.join()
    }

    fn join(&mut self) -> Option<H> {
        let thread = self.thread.take()?;
        if let Err(e) = self.stop.write(1) {
            log::error!("cannot signal an I/O thread to stop: {e}");
        }
        match thread.join() {
            Ok(handler) => Some(handler),
            Err(_) => {
                log::error!("a virtio I/O thread panicked");
                None
            }
        }
    }
}

impl<H: EventHandler> Drop for Worker<H> {
    fn drop(&mut self) {
        self.join();
    }
}

fn run<H: EventHandler>(epoll: &Epoll, handler: &mut H) {
    let ctx = EpollContext { epoll };
    let mut events = vec![EpollEvent::default(); 16];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("virtio I/O thread: epoll_wait failed, stopping: {e}");
                return;
            }
        };
        for event in events.iter().take(n) {
            if event.data() == STOP_TOKEN {
                return;
            }
            handler.handle_event(event.data(), &ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Echo {
        seen: mpsc::Sender<u64>,
        kick: EventFd,
        count: u32,
    }

    impl EventHandler for Echo {
        fn handle_event(&mut self, token: u64, _ctx: &EpollContext<'_>) {
            let _ = self.kick.read();
            self.count += 1;
            let _ = self.seen.send(token);
        }
    }

    #[test]
    fn handler_sees_its_token_and_comes_back_on_stop() {
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (tx, rx) = mpsc::channel();
        let handler = Echo {
            seen: tx,
            kick: kick.try_clone().unwrap(),
            count: 0,
        };
        let worker =
            Worker::spawn("test-worker".into(), handler, &[(kick.as_raw_fd(), 7)]).unwrap();
        kick.write(1).unwrap();
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(),
            7
        );
        let handler = worker.stop().expect("the thread did not panic");
        assert_eq!(handler.count, 1);
    }

    #[test]
    fn reserved_token_is_refused() {
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (tx, _rx) = mpsc::channel();
        let handler = Echo {
            seen: tx,
            kick: kick.try_clone().unwrap(),
            count: 0,
        };
        assert!(Worker::spawn("w".into(), handler, &[(kick.as_raw_fd(), STOP_TOKEN)]).is_err());
    }
}
