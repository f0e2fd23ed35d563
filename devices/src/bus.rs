//! Dispatch of guest port-I/O and MMIO accesses to the device that owns the address.
//!
//! One `Bus` for port I/O and one for MMIO; vCPU threads look up the owner of an
//! address on every trapped access, so lookups take a read lock only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A device reachable through trapped guest accesses.
///
/// `base` is the start of the range the device was inserted at and `offset` the
/// distance of the access from it, so one device type can be placed anywhere.
pub trait BusDevice: Send {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap { base: u64, len: u64 },
    #[error("bus range of length 0 at {0:#x}")]
    ZeroLength(u64),
    #[error("no device at {0:#x} on the bus")]
    NoDevice(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

impl Range {
    fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.len
    }
    fn overlaps(&self, base: u64, len: u64) -> bool {
        self.base < base.saturating_add(len) && base < self.base.saturating_add(self.len)
    }
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

// Poisoning is tolerated: a device that panicked once must not turn every later
// guest access on the bus into a panic on the vCPU thread.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
pub struct Bus {
    devices: RwLock<BTreeMap<u64, (Range, SharedDevice)>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength(base));
        }
        let mut devices = write_lock(&self.devices);
        if devices.values().any(|(r, _)| r.overlaps(base, len)) {
            return Err(BusError::Overlap { base, len });
        }
        devices.insert(base, (Range { base, len }, device));
        Ok(())
    }

    /// Removes the device inserted at exactly `base` and hands it back.
    pub fn remove(&self, base: u64) -> Result<SharedDevice, BusError> {
        write_lock(&self.devices)
            .remove(&base)
            .map(|(_, d)| d)
            .ok_or(BusError::NoDevice(base))
    }

    /// Moves a device to a new base, as when a guest reprograms a trapped BAR.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let mut devices = write_lock(&self.devices);
        let (range, dev) = devices
            .remove(&old_base)
            .ok_or(BusError::NoDevice(old_base))?;
        if devices
            .values()
            .any(|(r, _)| r.overlaps(new_base, range.len))
        {
            devices.insert(old_base, (range, dev));
            return Err(BusError::Overlap {
                base: new_base,
                len: range.len,
            });
        }
        devices.insert(
            new_base,
            (
                Range {
                    base: new_base,
                    len: range.len,
                },
                dev,
            ),
        );
        Ok(())
    }

    fn resolve(&self, addr: u64) -> Option<(u64, SharedDevice)> {
        let devices = read_lock(&self.devices);
        let (_, (range, dev)) = devices.range(..=addr).next_back()?;
        range.contains(addr).then(|| (range.base, dev.clone()))
    }

    /// Returns false when no device owns `addr`; the caller decides what an
    /// unclaimed access means (reads of open bus return all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((base, dev)) => {
                lock(&*dev).read(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((base, dev)) => {
                lock(&*dev).write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.0.push((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_reports_offsets() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder(vec![])));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(dev.lock().unwrap().0, vec![(0x3f8, 7, vec![9])]);
    }

    #[test]
    fn refuses_overlap_and_zero_length() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder(vec![])));
        bus.insert(dev.clone(), 0x1000, 0x100).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x10ff, 1),
            Err(BusError::Overlap {
                base: 0x10ff,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0xf00, 0x101).unwrap_err(),
            BusError::Overlap {
                base: 0xf00,
                len: 0x101
            }
        );
        bus.insert(dev.clone(), 0x1100, 0x100).unwrap();
        assert_eq!(bus.insert(dev, 5, 0), Err(BusError::ZeroLength(5)));
    }

    #[test]
    fn relocate_and_remove() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder(vec![])));
        bus.insert(dev.clone(), 0x1000, 0x100).unwrap();
        bus.insert(dev.clone(), 0x3000, 0x100).unwrap();
        assert!(bus.relocate(0x1000, 0x2f80).is_err());
        bus.relocate(0x1000, 0x2000).unwrap();
        let mut b = [0u8; 1];
        assert!(!bus.read(0x1000, &mut b));
        assert!(bus.read(0x2001, &mut b));
        bus.remove(0x2000).unwrap();
        assert!(!bus.read(0x2001, &mut b));
        assert!(bus.remove(0x2000).is_err());
    }

    /// Panics in its first read only, poisoning its lock.
    struct PanicsOnce(bool);
    impl BusDevice for PanicsOnce {
        fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
            if std::mem::take(&mut self.0) {
                panic!("device bug");
            }
            data.fill(7);
        }
        fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
    }

    #[test]
    fn a_device_that_panicked_once_still_answers_later_accesses() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(PanicsOnce(true)));
        bus.insert(dev.clone(), 0x10, 1).unwrap();
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            bus.read(0x10, &mut [0u8]);
        }));
        assert!(first.is_err());
        assert!(dev.is_poisoned());
        let mut b = [0u8];
        assert!(bus.read(0x10, &mut b));
        assert_eq!(b, [7]);
        assert!(bus.write(0x10, &[1]));
    }
}
