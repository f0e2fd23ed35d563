//! virtio-net (virtio 1.2, 5.1): one receive and one transmit queue backed by a
//! Linux tap. No multiqueue, no control queue: the guest gets a MAC address, a
//! link that is up, mergeable receive buffers, and checksum and TCP segmentation
//! offloads both ways (passed through to the tap).
//!
//! The tap belongs to the device for its whole life, across driver resets; the
//! queues and the I/O thread exist only while the driver has the device active.

mod chain;
mod handler;
mod header;
mod log_limit;
mod mac;
mod offload;
mod rx;
mod stats;
mod tap;
mod tx;

#[cfg(test)]
mod tests;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};

use super::worker::Worker;
use super::{
    ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_ID_NET,
    VIRTIO_RING_F_EVENT_IDX,
};
use handler::{NetHandler, RX_KICK, TAP_READABLE, TX_KICK};
use offload::{tap_offload_flags, TxOffloads, OFFLOAD_FEATURES};
use rx::RxQueue;
use stats::NetStats;
use tx::TxQueue;

pub use mac::{MacAddr, MacParseError};
pub use stats::NetCounters;
pub use tap::{Tap, TapError, TapSource};

/// Queue indices (virtio 1.2, 5.1.2).
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;

/// Ring size offered for each queue.
pub const QUEUE_SIZE: u16 = 256;

/// Features offered to the driver.
const FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_RING_F_EVENT_IDX
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_STATUS)
    | (1 << VIRTIO_NET_F_MRG_RXBUF)
    | OFFLOAD_FEATURES;

/// Configuration space: mac[6], then status (le16). Fields of features we do not
/// offer (max_virtqueue_pairs, mtu...) read as zero.
const CONFIG_LEN: usize = 8;

pub struct NetOptions {
    pub tap: TapSource,
    /// The guest's address; a random locally administered one when absent.
    pub mac: Option<MacAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
}

pub struct Net {
    tap: Arc<Tap>,
    mac: MacAddr,
    stats: Arc<NetStats>,
    worker: Option<Worker<NetHandler<Arc<Tap>>>>,
}

impl Net {
    /// Opens (or creates) the tap and brings its link up.
    pub fn new(opts: NetOptions) -> Result<Net, NetError> {
        let tap = Tap::open(&opts.tap)?;
        Ok(Net {
            tap: Arc::new(tap),
            mac: opts.mac.unwrap_or_else(MacAddr::random_local),
            stats: Arc::new(NetStats::default()),
            worker: None,
        })
    }

    /// The host interface name ("tap0").
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// The tap itself, shared with the device; see [`Tap::try_clone_fd`] for why a
    /// VMM wants it.
    pub fn tap(&self) -> Arc<Tap> {
        Arc::clone(&self.tap)
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Frames and bytes moved, and what was dropped, since the device was created.
    pub fn counters(&self) -> NetCounters {
        self.stats.snapshot()
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        let (mac, status) = config.split_at_mut(6);
        mac.copy_from_slice(&self.mac.0);
        status.copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_space();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = start
                .checked_add(i)
                .and_then(|at| config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let Activation {
            mem,
            interrupt,
            queues,
            acked_features,
        } = activation;
        let mut rx = None;
        let mut tx = None;
        for q in queues {
            match q.index {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                _ => {}
            }
        }
        let rx = rx.ok_or(ActivateError::MissingQueue(RX_QUEUE))?;
        let tx = tx.ok_or(ActivateError::MissingQueue(TX_QUEUE))?;
        // Frames from the kernel may carry only the offloads the guest accepted;
        // set on every activation since a new driver may accept fewer.
        self.tap
            .set_offload(tap_offload_flags(acked_features))
            .map_err(|e| ActivateError::Other(e.to_string()))?;
        let mergeable = acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let fds = [
            (rx.kick.as_raw_fd(), RX_KICK),
            (tx.kick.as_raw_fd(), TX_KICK),
            (self.tap.as_raw_fd(), TAP_READABLE),
        ];
        let handler = NetHandler {
            mem,
            interrupt,
            rx: RxQueue::new(rx.queue, mergeable),
            tx: TxQueue::new(tx.queue, TxOffloads::from_features(acked_features)),
            rx_kick: rx.kick,
            tx_kick: tx.kick,
            tap: Arc::clone(&self.tap),
            tap_polled: true,
            stats: Arc::clone(&self.stats),
        };
        let name = format!("virtio-net-{}", self.tap.name());
        let worker =
            Worker::spawn(name, handler, &fds).map_err(|source| ActivateError::Thread {
                what: "virtio-net".to_string(),
                source,
            })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            // The handler, its queues and any frame it held for the guest go with it.
            drop(worker.stop());
        }
    }

    fn name(&self) -> &'static str {
        "virtio-net"
    }
}
