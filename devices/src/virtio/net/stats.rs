//! Counters of what crossed the device, readable from any thread while the I/O
//! thread runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a device's counters since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames the guest sent that reached the tap, and their bytes (no header).
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames the guest sent that were dropped (malformed chain, tap refused it).
    pub tx_dropped: u64,
    /// Frames from the tap placed in the guest's buffers, and their bytes.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames from the tap dropped because the guest's buffers could not hold them.
    pub rx_dropped: u64,
    /// Descriptor chains the guest posted that broke the virtio rules.
    pub bad_chains: u64,
}

#[derive(Debug, Default)]
pub(crate) struct NetStats {
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    bad_chains: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl NetStats {
    pub(crate) fn tx_sent(&self, bytes: usize) {
        bump(&self.tx_frames, 1);
        bump(&self.tx_bytes, bytes as u64);
    }

    pub(crate) fn tx_dropped(&self) {
        bump(&self.tx_dropped, 1);
    }

    pub(crate) fn rx_delivered(&self, bytes: usize) {
        bump(&self.rx_frames, 1);
        bump(&self.rx_bytes, bytes as u64);
    }

    pub(crate) fn rx_dropped(&self) {
        bump(&self.rx_dropped, 1);
    }

    pub(crate) fn bad_chain(&self) {
        bump(&self.bad_chains, 1);
    }

    pub(crate) fn snapshot(&self) -> NetCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetCounters {
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            bad_chains: get(&self.bad_chains),
        }
    }
}
