//! Models for tests here and in the VMM: a [`FakeVirtioDevice`] that records what
//! the transport asked of it, and [`FakeIoEvents`] that records ioeventfds.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use devices::virtio::{
    ActivateError, Activation, GuestMemoryMmap, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::BoxError;
use crate::virtio::IoEventRegistrar;

/// An [`IoEventRegistrar`] that records registrations by address and refuses a
/// second one at the same address, like KVM.
#[derive(Default)]
pub struct FakeIoEvents {
    registered: Mutex<BTreeMap<u64, i32>>,
    fail: Mutex<BTreeSet<u64>>,
}

impl FakeIoEvents {
    /// The registered addresses, ascending.
    pub fn addresses(&self) -> Vec<u64> {
        self.lock().keys().copied().collect()
    }

    /// The raw fd registered at `addr`.
    pub fn fd_at(&self, addr: u64) -> Option<i32> {
        self.lock().get(&addr).copied()
    }

    /// Makes registrations at `addr` fail.
    pub fn fail_at(&self, addr: u64) {
        self.fail.lock().unwrap().insert(addr);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, i32>> {
        self.registered.lock().unwrap()
    }
}

impl IoEventRegistrar for FakeIoEvents {
    fn register(&self, fd: &EventFd, addr: u64) -> Result<(), BoxError> {
        if self.fail.lock().unwrap().contains(&addr) {
            return Err(format!("refusing an ioeventfd at {addr:#x}").into());
        }
        let mut r = self.lock();
        if r.contains_key(&addr) {
            return Err(format!("{addr:#x} already has an ioeventfd").into());
        }
        r.insert(addr, fd.as_raw_fd());
        Ok(())
    }

    fn unregister(&self, _fd: &EventFd, addr: u64) -> Result<(), BoxError> {
        self.lock()
            .remove(&addr)
            .map(|_| ())
            .ok_or_else(|| format!("no ioeventfd at {addr:#x}").into())
    }
}

/// One queue as the device received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivatedQueue {
    pub index: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub event_idx: bool,
    /// Whether the queue was valid against the activation's memory.
    pub valid: bool,
}

/// What one activation handed the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationRecord {
    pub queues: Vec<ActivatedQueue>,
    pub acked_features: u64,
}

/// What happened to a [`FakeVirtioDevice`], shared with the test.
#[derive(Default)]
pub struct FakeDeviceState {
    pub activations: Vec<ActivationRecord>,
    /// Resets while active and while not.
    pub resets: usize,
    pub config_writes: Vec<(u64, Vec<u8>)>,
    /// While active: the interrupt, the queues and their kicks.
    pub interrupt: Option<Arc<dyn VirtioInterrupt>>,
    pub queues: Vec<(u16, Queue)>,
    pub kicks: Vec<(u16, EventFd)>,
    pub memory: Option<GuestMemoryMmap>,
}

/// A device with a configurable queue count, features and configuration space;
/// activation fails when asked to.
pub struct FakeVirtioDevice {
    pub state: Arc<Mutex<FakeDeviceState>>,
    device_type: u32,
    max_sizes: Vec<u16>,
    features: u64,
    config: Vec<u8>,
    fail_activation: bool,
}

impl FakeVirtioDevice {
    /// A device of `device_type` with queues of `max_sizes`, offering `features`
    /// (VERSION_1 added) and an 8-byte configuration space 0, 1, ... 7.
    pub fn new(device_type: u32, max_sizes: &[u16], features: u64) -> Self {
        Self {
            state: Arc::default(),
            device_type,
            max_sizes: max_sizes.to_vec(),
            features: features | VIRTIO_F_VERSION_1,
            config: (0..8).collect(),
            fail_activation: false,
        }
    }

    /// Every activation fails.
    pub fn failing(mut self) -> Self {
        self.fail_activation = true;
        self
    }

    pub fn state(&self) -> Arc<Mutex<FakeDeviceState>> {
        self.state.clone()
    }

    /// Survives a test that panicked holding the lock, so drop does not abort.
    fn lock(&self) -> MutexGuard<'_, FakeDeviceState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl VirtioDevice for FakeVirtioDevice {
    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.config.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.lock().config_writes.push((offset, data.to_vec()));
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let mut s = self.lock();
        let record = ActivationRecord {
            queues: activation
                .queues
                .iter()
                .map(|q| ActivatedQueue {
                    index: q.index,
                    size: q.queue.size(),
                    desc: q.queue.desc_table(),
                    avail: q.queue.avail_ring(),
                    used: q.queue.used_ring(),
                    event_idx: q.queue.event_idx_enabled(),
                    valid: q.queue.is_valid(&activation.mem),
                })
                .collect(),
            acked_features: activation.acked_features,
        };
        s.activations.push(record);
        if self.fail_activation {
            return Err(ActivateError::Other("the fake device refuses".into()));
        }
        s.interrupt = Some(activation.interrupt);
        for q in activation.queues {
            s.queues.push((q.index, q.queue));
            s.kicks.push((q.index, q.kick));
        }
        s.memory = Some(activation.mem);
        Ok(())
    }

    fn reset(&mut self) {
        let mut s = self.lock();
        s.resets += 1;
        s.interrupt = None;
        s.queues.clear();
        s.kicks.clear();
        s.memory = None;
    }

    fn name(&self) -> &'static str {
        "virtio-fake"
    }
}
