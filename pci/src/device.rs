//! What a PCI function implements to sit on the [`PciBus`](crate::bus::PciBus).

use std::any::Any;
use std::error::Error;
use std::sync::{Arc, Mutex};

use devices::BusDevice;

use crate::config::{BarReprogram, PciBar};
use crate::lock;

/// A device could not follow a BAR the guest moved. The guest cannot be told; the
/// VMM logs it and the BAR's contents stay unreachable at the new address.
#[derive(Debug, thiserror::Error)]
#[error("moving BAR {index} from {old:#x} to {new:#x}: {source}")]
pub struct BarMoveError {
    pub index: usize,
    pub old: u64,
    pub new: u64,
    #[source]
    pub source: Box<dyn Error + Send + Sync>,
}

impl BarMoveError {
    pub fn new(reprogram: &BarReprogram, source: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self {
            index: reprogram.index,
            old: reprogram.old,
            new: reprogram.new,
            source: source.into(),
        }
    }
}

/// One PCI function. Every method that takes guest-chosen indices, offsets or data
/// must accept any value without panicking.
pub trait PciDevice: Send {
    /// The guest reads config dword `reg_idx` (0..1024). Unknown registers read as
    /// all ones or zero, never panic.
    fn read_config_register(&mut self, reg_idx: usize) -> u32;

    /// The guest writes `data` (1, 2 or 4 bytes) at byte `offset` of config dword
    /// `reg_idx`. Returns the BAR move the write completed, if any.
    fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: u64,
        data: &[u8],
    ) -> Option<BarReprogram>;

    /// The BARs as currently placed.
    fn bars(&self) -> Vec<PciBar> {
        Vec::new()
    }

    /// The guest moved a BAR (reported by `write_config_register`); the device updates
    /// whatever it keeps about the old address (its own mappings, cached bases).
    fn move_bar(&mut self, reprogram: &BarReprogram) -> Result<(), BarMoveError> {
        let _ = reprogram;
        Ok(())
    }

    /// A trapped guest read of a BAR placed at `base`, `offset` bytes in.
    fn read_bar(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let _ = (base, offset);
        data.fill(0xff);
    }

    /// A trapped guest write to a BAR placed at `base`, `offset` bytes in.
    fn write_bar(&mut self, base: u64, offset: u64, data: &[u8]) {
        let _ = (base, offset, data);
    }

    /// For the VMM to reach a concrete device type (e.g. the VFIO device on detach).
    fn as_any(&mut self) -> &mut dyn Any;
}

pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Puts a device's trapped BAR on a [`devices::Bus`]: insert one per trapped BAR at
/// the BAR's address, with the BAR's size.
pub struct PciBarRegion {
    device: SharedPciDevice,
}

impl PciBarRegion {
    pub fn new(device: SharedPciDevice) -> Self {
        Self { device }
    }
}

impl BusDevice for PciBarRegion {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        lock(&*self.device).read_bar(base, offset, data);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        lock(&*self.device).write_bar(base, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::Bus;

    #[derive(Default)]
    struct BarEcho {
        writes: Vec<(u64, u64, Vec<u8>)>,
    }

    impl PciDevice for BarEcho {
        fn read_config_register(&mut self, _reg_idx: usize) -> u32 {
            0
        }
        fn write_config_register(&mut self, _: usize, _: u64, _: &[u8]) -> Option<BarReprogram> {
            None
        }
        fn read_bar(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_bar(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.writes.push((base, offset, data.to_vec()));
        }
        fn as_any(&mut self) -> &mut dyn Any {
            self
        }
    }

    #[test]
    fn bar_region_forwards_bus_accesses_with_base_and_offset() {
        let dev = Arc::new(Mutex::new(BarEcho::default()));
        let bus = Bus::new();
        bus.insert(
            Arc::new(Mutex::new(PciBarRegion::new(dev.clone()))),
            0xc000_0000,
            0x1000,
        )
        .unwrap();
        let mut b = [0u8; 4];
        assert!(bus.read(0xc000_0010, &mut b));
        assert_eq!(b, [0x10; 4]);
        assert!(bus.write(0xc000_0ffc, &[1, 2, 3, 4]));
        let mut guard = dev.lock().unwrap();
        assert_eq!(guard.writes, vec![(0xc000_0000, 0xffc, vec![1, 2, 3, 4])]);
        assert!(guard.as_any().downcast_mut::<BarEcho>().is_some());
    }
}
