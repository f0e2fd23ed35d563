//! A root PCI bus of segment 0 (bus 0, or a NUMA node's expander root bus; see
//! [`crate::segment`]): 32 device slots of up to 8 functions each, the host bridge
//! in slot 0.
//!
//! Config accesses from the guest (through [`PciConfigIo`](crate::config_io::PciConfigIo)
//! or [`PciConfigMmio`](crate::config_mmio::PciConfigMmio)) go through [`config_read`]
//! and [`config_write`]. They hold the bus lock only to find the device, so a BAR
//! move can be handled (memory slots moved, trapped regions relocated) with no PCI lock
//! held.
//!
//! A slot with functions besides 0 (a GPU at .0 and its audio function at .1, passed
//! through together) reports itself multifunction in function 0's header type: the
//! guest scans functions 1-7 only when that bit is set. The bus sets it from what the
//! slot holds, so no device model has to know its neighbours; a slot without function
//! 0 is invisible to the guest, so the bus refuses to fill one that way.

use std::sync::{Arc, Mutex};

use log::warn;

use crate::config::BarReprogram;
use crate::device::SharedPciDevice;
use crate::host_bridge::HostBridge;
use crate::lock;

/// Device slots on a bus.
pub const NUM_SLOTS: usize = 32;
/// Functions per slot.
pub const NUM_FUNCTIONS: usize = 8;
/// The host bridge's slot.
pub const HOST_BRIDGE_SLOT: u8 = 0;

/// Config register (dword) holding the header type, in its third byte.
const HEADER_TYPE_REG: usize = 3;
/// The header type's multifunction bit, as seen in [`HEADER_TYPE_REG`].
const MULTIFUNCTION_BIT: u32 = 0x80 << 16;

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
    #[error("all 31 device slots of the PCI bus are in use")]
    Full,
    #[error("PCI root bus {0:#04x} does not exist")]
    NoSuchBus(u8),
    #[error("PCI function {slot:02x}.{function} does not exist; functions are 0 to 7")]
    FunctionOutOfRange { slot: u8, function: u8 },
    #[error("PCI function {slot:02x}.{function} is occupied")]
    FunctionOccupied { slot: u8, function: u8 },
    #[error("PCI function {slot:02x}.{function} is empty")]
    FunctionEmpty { slot: u8, function: u8 },
    #[error("PCI slot {slot} has no function 0, so the guest would never see function {function}; plug function 0 last, remove it first")]
    NoFunctionZero { slot: u8, function: u8 },
}

/// Told about every BAR a guest moves, after the device itself was (through
/// [`PciDevice::move_bar`](crate::device::PciDevice::move_bar)). The VMM implements it
/// to move the memory slot or relocate the trapped region backing the BAR.
pub trait BarReprogramHandler: Send + Sync {
    fn bar_moved(&self, slot: u8, device: &SharedPciDevice, reprogram: &BarReprogram);
}

type Slot = [Option<SharedPciDevice>; NUM_FUNCTIONS];

pub struct PciBus {
    slots: Vec<Slot>,
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
        let mut slots: Vec<Slot> = vec![Default::default(); NUM_SLOTS];
        slots[usize::from(HOST_BRIDGE_SLOT)][0] = Some(Arc::new(Mutex::new(HostBridge::new())));
        Self {
            slots,
            bar_handler: None,
        }
    }

    pub fn set_bar_reprogram_handler(&mut self, handler: Arc<dyn BarReprogramHandler>) {
        self.bar_handler = Some(handler);
    }

    /// Puts `device` at function 0 of an empty `slot`.
    pub fn add_device(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), PciBusError> {
        if self.slot(slot)?.iter().any(Option::is_some) {
            return Err(PciBusError::SlotOccupied(slot));
        }
        self.add_function(slot, 0, device)
    }

    /// Puts `device` at `slot`.`function`. Functions other than 0 go in while
    /// function 0 is still absent, so a guest that scans the slot finds it whole.
    pub fn add_function(
        &mut self,
        slot: u8,
        function: u8,
        device: SharedPciDevice,
    ) -> Result<(), PciBusError> {
        let entry = self.function_entry(slot, function)?;
        if entry.is_some() {
            return Err(PciBusError::FunctionOccupied { slot, function });
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

    /// The lowest slot with no function in it.
    pub fn next_free_slot(&self) -> Option<u8> {
        let index = self
            .slots
            .iter()
            .position(|slot| slot.iter().all(Option::is_none))?;
        u8::try_from(index).ok()
    }

    /// Takes function 0 out of `slot`; other functions must be gone first.
    pub fn remove_device(&mut self, slot: u8) -> Result<SharedPciDevice, PciBusError> {
        self.remove_function(slot, 0)
    }

    /// Takes `slot`.`function` out. Function 0 goes last: a slot whose function 0
    /// is gone while others stay would hide them from the guest.
    pub fn remove_function(
        &mut self,
        slot: u8,
        function: u8,
    ) -> Result<SharedPciDevice, PciBusError> {
        if function == 0 {
            let others = self.slot(slot)?[1..].iter().position(Option::is_some);
            if let Some(other) = others {
                return Err(PciBusError::NoFunctionZero {
                    slot,
                    function: other as u8 + 1,
                });
            }
        }
        let taken = self.function_entry(slot, function)?.take();
        taken.ok_or(if function == 0 {
            PciBusError::SlotEmpty(slot)
        } else {
            PciBusError::FunctionEmpty { slot, function }
        })
    }

    /// Function 0 of `slot`.
    pub fn device(&self, slot: u8) -> Option<SharedPciDevice> {
        self.function(slot, 0)
    }

    pub fn function(&self, slot: u8, function: u8) -> Option<SharedPciDevice> {
        self.slots
            .get(usize::from(slot))?
            .get(usize::from(function))?
            .clone()
    }

    /// Occupied slots (function 0), host bridge included.
    pub fn devices(&self) -> impl Iterator<Item = (u8, &SharedPciDevice)> {
        self.slots
            .iter()
            .zip(0u8..)
            .filter_map(|(functions, slot)| Some((slot, functions[0].as_ref()?)))
    }

    fn slot(&self, slot: u8) -> Result<&Slot, PciBusError> {
        if slot == HOST_BRIDGE_SLOT {
            return Err(PciBusError::HostBridgeSlot);
        }
        self.slots
            .get(usize::from(slot))
            .ok_or(PciBusError::SlotOutOfRange(slot))
    }

    fn function_entry(
        &mut self,
        slot: u8,
        function: u8,
    ) -> Result<&mut Option<SharedPciDevice>, PciBusError> {
        self.slot(slot)?;
        self.slots[usize::from(slot)]
            .get_mut(usize::from(function))
            .ok_or(PciBusError::FunctionOutOfRange { slot, function })
    }

    fn is_multifunction(&self, slot: u8) -> bool {
        self.slots
            .get(usize::from(slot))
            .is_some_and(|functions| functions[1..].iter().any(Option::is_some))
    }

    fn target(&self, device: u8, function: u8) -> Option<ConfigTarget> {
        let functions = self.slots.get(usize::from(device))?;
        // Without function 0 nothing of the slot exists for the guest.
        functions[0].as_ref()?;
        Some(ConfigTarget {
            slot: device,
            function,
            device: functions.get(usize::from(function))?.clone()?,
            bar_handler: self.bar_handler.clone(),
            multifunction: self.is_multifunction(device),
        })
    }
}

/// The device a config access reaches, taken out of the bus lock.
struct ConfigTarget {
    slot: u8,
    function: u8,
    device: SharedPciDevice,
    bar_handler: Option<Arc<dyn BarReprogramHandler>>,
    multifunction: bool,
}

/// A guest config read of `reg_idx` of `bus`, `device`, `function`. Absent functions
/// read all ones, as on real hardware where nobody answers.
pub fn config_read(bus: &Mutex<PciBus>, device: u8, function: u8, reg_idx: usize) -> u32 {
    let target = lock(bus).target(device, function);
    match target {
        Some(t) => {
            let value = lock(&*t.device).read_config_register(reg_idx);
            if t.function == 0 && reg_idx == HEADER_TYPE_REG && t.multifunction {
                value | MULTIFUNCTION_BIT
            } else {
                value
            }
        }
        None => u32::MAX,
    }
}

/// A guest config write to `bus`, `device`, `function`. Writes to absent functions are
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
        warn!("pci {:02x}.{}: {e}", target.slot, target.function);
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
    fn functions_share_a_slot_and_function_0_says_so() {
        let bus = Mutex::new(PciBus::new());
        {
            let mut b = bus.lock().unwrap();
            b.add_function(4, 1, TestDevice::shared()).unwrap();
            assert_eq!(b.next_free_slot(), Some(1));
        }
        assert_eq!(
            config_read(&bus, 4, 1, 0),
            u32::MAX,
            "a slot without function 0 is empty to the guest"
        );
        bus.lock()
            .unwrap()
            .add_function(4, 0, TestDevice::shared())
            .unwrap();
        assert_eq!(config_read(&bus, 4, 1, 0), 0x1000_1af4);
        assert_eq!(config_read(&bus, 4, 2, 0), u32::MAX);
        assert_ne!(config_read(&bus, 4, 0, 3) & MULTIFUNCTION_BIT, 0);
        assert_eq!(config_read(&bus, 4, 1, 3) & MULTIFUNCTION_BIT, 0);
        let mut b = bus.lock().unwrap();
        assert_eq!(
            b.add_device(4, TestDevice::shared()).err(),
            Some(PciBusError::SlotOccupied(4))
        );
        assert_eq!(
            b.add_function(4, 8, TestDevice::shared()).err(),
            Some(PciBusError::FunctionOutOfRange {
                slot: 4,
                function: 8
            })
        );
        assert_eq!(
            b.remove_device(4).err(),
            Some(PciBusError::NoFunctionZero {
                slot: 4,
                function: 1
            })
        );
        b.remove_function(4, 1).unwrap();
        drop(b);
        assert_eq!(
            config_read(&bus, 4, 0, 3) & MULTIFUNCTION_BIT,
            0,
            "alone again, function 0 is single-function"
        );
        bus.lock().unwrap().remove_device(4).unwrap();
        assert_eq!(bus.lock().unwrap().next_free_slot(), Some(1));
    }

    #[test]
    fn config_accesses_reach_only_present_functions() {
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
