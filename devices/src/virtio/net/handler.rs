//! The I/O thread's side of an active net device: which event means what, and when
//! to stop reading the tap (no receive buffers) and start again (the guest kicked
//! the receive queue).

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::virtio::worker::{EpollContext, EventHandler};
use crate::virtio::{GuestMemoryMmap, VirtioInterrupt};

use super::rx::{RxQueue, RxStop};
use super::stats::NetStats;
use super::tap::TapIo;
use super::tx::TxQueue;
use super::{RX_QUEUE, TX_QUEUE};

/// Epoll tokens of the net I/O thread.
pub(crate) const RX_KICK: u64 = 0;
pub(crate) const TX_KICK: u64 = 1;
pub(crate) const TAP_READABLE: u64 = 2;

pub(crate) struct NetHandler<T: TapIo> {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) interrupt: Arc<dyn VirtioInterrupt>,
    pub(crate) rx: RxQueue,
    pub(crate) tx: TxQueue,
    pub(crate) rx_kick: EventFd,
    pub(crate) tx_kick: EventFd,
    pub(crate) tap: T,
    /// Whether the tap is in the epoll set; the worker starts with it there.
    pub(crate) tap_polled: bool,
    pub(crate) stats: Arc<NetStats>,
}

impl<T: TapIo> NetHandler<T> {
    fn run_rx(&mut self, ctx: &EpollContext<'_>) {
        let run = self.rx.process(&self.mem, &self.tap, &self.stats);
        if run.notify {
            self.notify(RX_QUEUE);
        }
        let want_tap = matches!(run.stop, RxStop::TapEmpty | RxStop::Budget);
        if want_tap != self.tap_polled {
            let fd = self.tap.as_raw_fd();
            let result = if want_tap {
                ctx.add(fd, TAP_READABLE)
            } else {
                ctx.remove(fd)
            };
            match result {
                Ok(()) => self.tap_polled = want_tap,
                Err(e) => log::error!("virtio-net: cannot change polling of the tap: {e}"),
            }
        }
    }

    fn run_tx(&mut self) {
        let run = self.tx.process(&self.mem, &self.tap, &self.stats);
        if run.notify {
            self.notify(TX_QUEUE);
        }
        if run.more {
            // Come back after the other ready events, through our own kick.
            if let Err(e) = self.tx_kick.write(1) {
                log::error!("virtio-net: cannot reschedule transmit: {e}");
            }
        }
    }

    fn notify(&self, queue: u16) {
        if let Err(e) = self.interrupt.notify_queue(queue) {
            log::error!("virtio-net: cannot interrupt the guest for queue {queue}: {e}");
        }
    }
}

impl<T: TapIo> EventHandler for NetHandler<T> {
    fn handle_event(&mut self, token: u64, ctx: &EpollContext<'_>) {
        match token {
            RX_KICK => {
                // Reading clears the eventfd; an error only means no kick was pending.
                let _ = self.rx_kick.read();
                self.run_rx(ctx);
            }
            TX_KICK => {
                let _ = self.tx_kick.read();
                self.run_tx();
            }
            TAP_READABLE => self.run_rx(ctx),
            other => log::error!("virtio-net: event for unknown token {other}"),
        }
    }
}
