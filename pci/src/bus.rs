//! PCI bus 0 of segment 0: 32 device slots, function 0 only, the host bridge in
//! slot 0.
//!
//! Config accesses from the guest (through [`PciConfigIo`](crate::config_io::PciConfigIo)
//! or [`PciConfigMmio`](crate::config_mmio::PciConfigMmio)) go through [`config_read`]
//! and [`config_write`]. They hold the bus lock only to find the device, so a BAR
//! move can be handled (memory slots moved, trapped regions relocated) with no PCI lock
//! held.

use std::sync::{Arc, Mutex};

use log::warn;

use crate::config::BarReprogram;
use crate::device::SharedPciDevice;
use crate::host_bridge::HostBridge;
use crate::lock;

/// Device slots on a bus.
pub const NUM_SLOTS: usize = 32;
/// Functions per slot an address can name (only function 0 is ever populated).
pub const NUM_FUNCTIONS: usize = 8;
/// The host bridge's slot.
pub const HOST_BRIDGE_SLOT: u8 = 0;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciBusError {
    #[error("PCI slot {0} does not exist; slots are 0 to 31")]
    SlotOutOfRange(u8),
    #[error("PCI slot {0} is occupied; remove its device first or pick a free slot")]
    SlotOccupied(u8),
    #[error("PCI slot {0} is empty")]
    SlotEmpty(u8),
    #[error("slot 0 holds the host bridge, which cannot be replaced or removed")]
    HostBridgeSlot,
    #[error("all 31 device slots of PCI bus 0 are in use")]
    Full,
}

/// Told about every BAR a guest moves, after the device itself was (through
/// [`PciDevice::move_bar`](crate::device::PciDevice::move_bar)). The VMM implements it
/// to move the memory slot or relocate the trapped region backing the BAR.
pub trait BarReprogramHandler: Send + Sync {
    fn bar_moved(&self, slot: u8, device: &SharedPciDevice, reprogram: &BarReprogram);
}

pub struct PciBus {
    slots: Vec<Option<SharedPciDevice>>,
    bar_handler: Option<Arc<dyn BarReprogramHandler>>,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// A bus with only the host bridge.
    pub fn new() -> Self {
        let mut slots: Vec<Option<SharedPciDevice>> = vec![None; NUM_SLOTS];
        slots[usize::from(HOST_BRIDGE_SLOT)] = Some(Arc::new(Mutex::new(HostBridge::new())));
        Self {
            slots,
            bar_handler: None,
        }
    }

    pub fn set_bar_reprogram_handler(&mut self, handler: Arc<dyn BarReprogramHandler>) {
        self.bar_handler = Some(handler);
    }

    pub fn add_device(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), PciBusError> {
        if slot == HOST_BRIDGE_SLOT {
            return Err(PciBusError::HostBridgeSlot);
        }
        let entry = self
            .slots
            .get_mut(usize::from(slot))
            .ok_or(PciBusError::SlotOutOfRange(slot))?;
        if entry.is_some() {
            return Err(PciBusError::SlotOccupied(slot));
        }
        *entry = Some(device);
        Ok(())
    }

    /// Adds a device in the lowest free slot and returns the slot.
    pub fn add_device_any_slot(&mut self, device: SharedPciDevice) -> Result<u8, PciBusError> {
        let slot = self.next_free_slot().ok_or(PciBusError::Full)?;
        self.add_device(slot, device)?;
        Ok(slot)
    }

    pub fn next_free_slot(&self) -> Option<u8> {
        let index = self.slots.iter().position(Option::is_none)?;
        u8::try_from(index).ok()
    }

    pub fn remove_device(&mut self, slot: u8) -> Result<SharedPciDevice, PciBusError> {
        if slot == HOST_BRIDGE_SLOT {
            return Err(PciBusError::HostBridgeSlot);
        }
        self.slots
            .get_mut(usize::from(slot))
            .ok_or(PciBusError::SlotOutOfRange(slot))?
            .take()
            .ok_or(PciBusError::SlotEmpty(slot))
    }

    pub fn device(&self, slot: u8) -> Option<SharedPciDevice> {
        self.slots.get(usize::from(slot))?.clone()
    }

    /// Occupied slots, host bridge included.
    pub fn devices(&self) -> impl Iterator<Item = (u8, &SharedPciDevice)> {
        self.slots
            .iter()
            .zip(0u8..)
            .filter_map(|(dev, slot)| Some((slot, dev.as_ref()?)))
    }

    fn target(&self, device: u8, function: u8) -> Option<ConfigTarget> {
        if function != 0 {
            return None;
        }
        Some(ConfigTarget {
            slot: device,
            device: self.device(device)?,
            bar_handler: self.bar_handler.clone(),
        })
    }
}

/// The device a config access reaches, taken out of the bus lock.
struct ConfigTarget {
    slot: u8,
    device: SharedPciDevice,
    bar_handler: Option<Arc<dyn BarReprogramHandler>>,
}

/// A guest config read of `reg_idx` of bus 0, `device`, `function`. Absent functions
/// read all ones, as on real hardware where nobody answers.
pub fn config_read(bus: &Mutex<PciBus>, device: u8, function: u8, reg_idx: usize) -> u32 {
    let target = lock(bus).target(device, function);
    match target {
        Some(t) => lock(&*t.device).read_config_register(reg_idx),
        None => u32::MAX,
    }
}

/// A guest config write to bus 0, `device`, `function`. Writes to absent functions are
/// dropped. A BAR move is passed to the device and then to the bus's
/// [`BarReprogramHandler`].
pub fn config_write(
    bus: &Mutex<PciBus>,
    device: u8,
    function: u8,
    reg_idx: usize,
    offset: u64,
    data: &[u8],
) {
    let Some(target) = lock(bus).target(device, function) else {
        return;
    };
    let reprogram = lock(&*target.device).write_config_register(reg_idx, offset, data);
    let Some(reprogram) = reprogram else {
        return;
    };
    if let Err(e) = lock(&*target.device).move_bar(&reprogram) {
        warn!("pci {:02x}.0: {e}", target.slot);
    }
    if let Some(handler) = &target.bar_handler {
        handler.bar_moved(target.slot, &target.device, &reprogram);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PciInterruptPin;
    use crate::config::{BarKind, PciBar, PciClassCode, PciConfiguration, PciHeader};
    use crate::device::PciDevice;
    use std::any::Any;

    struct TestDevice {
        config: PciConfiguration,
        moves: Vec<BarReprogram>,
    }

    impl TestDevice {
        fn shared() -> Arc<Mutex<TestDevice>> {
            let mut config = PciConfiguration::new(&PciHeader {
                vendor_id: 0x1af4,
                device_id: 0x1000,
                class: PciClassCode {
                    class: 0x02,
                    subclass: 0x00,
                    prog_if: 0x00,
                },
                revision_id: 0,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
                multifunction: false,
                interrupt_pin: PciInterruptPin::IntA,
            });
            config
                .add_bar(&PciBar {
                    index: 0,
                    addr: 0xc000_0000,
                    size: 0x1000,
                    kind: BarKind::Memory32,
                    prefetchable: false,
                })
                .unwrap();
            Arc::new(Mutex::new(TestDevice {
                config,
                moves: vec![],
            }))
        }
    }

    impl PciDevice for TestDevice {
        fn read_config_register(&mut self, reg_idx: usize) -> u32 {
            self.config.read_config_register(reg_idx)
        }
        fn write_config_register(
            &mut self,
            reg_idx: usize,
            offset: u64,
            data: &[u8],
        ) -> Option<BarReprogram> {
            self.config.write_config_register(reg_idx, offset, data)
        }
        fn move_bar(&mut self, r: &BarReprogram) -> Result<(), crate::device::BarMoveError> {
            self.moves.push(*r);
            Ok(())
        }
        fn as_any(&mut self) -> &mut dyn Any {
            self
        }
    }

    #[derive(Default)]
    struct Moves(Mutex<Vec<(u8, BarReprogram)>>);
    impl BarReprogramHandler for Moves {
        fn bar_moved(&self, slot: u8, device: &SharedPciDevice, r: &BarReprogram) {
            // The handler may lock the device: no PCI lock is held here.
            let _ = device.lock().unwrap().read_config_register(0);
            self.0.lock().unwrap().push((slot, *r));
        }
    }

    #[test]
    fn host_bridge_sits_in_slot_0_and_cannot_be_removed() {
        let mut bus = PciBus::new();
        let id = bus
            .device(0)
            .unwrap()
            .lock()
            .unwrap()
            .read_config_register(0);
        assert_eq!(id, 0x0008_1b36);
        assert_eq!(
            bus.remove_device(0).err(),
            Some(PciBusError::HostBridgeSlot)
        );
        assert_eq!(
            bus.add_device(0, TestDevice::shared()).err(),
            Some(PciBusError::HostBridgeSlot)
        );
    }

    #[test]
    fn add_and_remove_devices() {
        let mut bus = PciBus::new();
        assert_eq!(bus.next_free_slot(), Some(1));
        bus.add_device(3, TestDevice::shared()).unwrap();
        assert_eq!(
            bus.add_device(3, TestDevice::shared()).err(),
            Some(PciBusError::SlotOccupied(3))
        );
        assert_eq!(
            bus.add_device(32, TestDevice::shared()).err(),
            Some(PciBusError::SlotOutOfRange(32))
        );
        assert_eq!(bus.add_device_any_slot(TestDevice::shared()), Ok(1));
        assert_eq!(
            bus.devices().map(|(s, _)| s).collect::<Vec<_>>(),
            vec![0, 1, 3]
        );
        assert!(bus.remove_device(3).is_ok());
        assert_eq!(bus.remove_device(3).err(), Some(PciBusError::SlotEmpty(3)));
        assert_eq!(
            bus.remove_device(200).err(),
            Some(PciBusError::SlotOutOfRange(200))
        );
        for _ in 2..32 {
            bus.add_device_any_slot(TestDevice::shared()).unwrap();
        }
        assert_eq!(
            bus.add_device_any_slot(TestDevice::shared()).err(),
            Some(PciBusError::Full)
        );
    }

    #[test]
    fn config_accesses_reach_function_0_only() {
        let bus = Mutex::new(PciBus::new());
        bus.lock()
            .unwrap()
            .add_device(2, TestDevice::shared())
            .unwrap();
        assert_eq!(config_read(&bus, 2, 0, 0), 0x1000_1af4);
        assert_eq!(config_read(&bus, 2, 1, 0), u32::MAX);
        assert_eq!(config_read(&bus, 5, 0, 0), u32::MAX);
        assert_eq!(config_read(&bus, 200, 0, 0), u32::MAX);
        config_write(&bus, 5, 0, 1, 0, &[0xff]);
        config_write(&bus, 2, 3, 1, 0, &[0xff]);
        assert_eq!(config_read(&bus, 2, 0, 1) & 0xffff, 0);
        config_write(&bus, 2, 0, 1, 0, &[0x02]);
        assert_eq!(config_read(&bus, 2, 0, 1) & 0xffff, 2);
    }

    #[test]
    fn bar_moves_reach_device_and_handler() {
        let bus = Mutex::new(PciBus::new());
        let dev = TestDevice::shared();
        let moves = Arc::new(Moves::default());
        {
            let mut b = bus.lock().unwrap();
            b.add_device(4, dev.clone()).unwrap();
            b.set_bar_reprogram_handler(moves.clone());
        }
        config_write(&bus, 4, 0, 4, 0, &u32::MAX.to_le_bytes());
        config_write(&bus, 4, 0, 4, 0, &0xc000_0000u32.to_le_bytes());
        assert!(moves.0.lock().unwrap().is_empty(), "sizing is not a move");
        config_write(&bus, 4, 0, 4, 0, &0xd000_0000u32.to_le_bytes());
        let expected = BarReprogram {
            index: 0,
            kind: BarKind::Memory32,
            old: 0xc000_0000,
            new: 0xd000_0000,
            len: 0x1000,
        };
        assert_eq!(*moves.0.lock().unwrap(), vec![(4, expected)]);
        assert_eq!(dev.lock().unwrap().moves, vec![expected]);
    }

    #[test]
    fn config_accesses_survive_a_poisoned_device_lock() {
        let bus = Mutex::new(PciBus::new());
        let dev = TestDevice::shared();
        bus.lock().unwrap().add_device(2, dev.clone()).unwrap();
        let poisoner = dev.clone();
        std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("device bug while locked");
        })
        .join()
        .unwrap_err();
        assert!(dev.is_poisoned());
        assert_eq!(config_read(&bus, 2, 0, 0), 0x1000_1af4);
        config_write(&bus, 2, 0, 1, 0, &[0x02]);
        assert_eq!(config_read(&bus, 2, 0, 1) & 0xffff, 2);
    }
}
