//! The PCI hotplug controller: three 32-bit registers the DSDT's AML uses to learn
//! which slots changed and to eject a slot.
//!
//! | offset | name | access |
//! | --- | --- | --- |
//! | 0x0 | `PCIU`: slots with a device added since the last read | read, cleared by the read |
//! | 0x4 | `PCID`: slots whose device the VMM wants removed | read, cleared by the read |
//! | 0x8 | `PCEJ`: a slot number written here ejects that slot | write |
//!
//! The VMM sets bits and raises the GED's PCI-hotplug event; the GED's `_EVT` calls
//! `\_SB_.PCI0.PCNT`, which reads `PCIU`/`PCID` and notifies each slot. The guest's
//! `_EJ0` of a slot writes `PCEJ`; the VMM then detaches the device.

use devices::BusDevice;
pub use form_vm_allocator::layout::{HOTPLUG_MMIO_SIZE, HOTPLUG_MMIO_START};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

pub const PCIU_OFFSET: u64 = 0x0;
pub const PCID_OFFSET: u64 = 0x4;
pub const PCEJ_OFFSET: u64 = 0x8;

pub use form_vmm_api::types::{EJECT_GIVE_UP_AFTER, EJECT_IGNORED_AFTER};

/// What [`super::DeviceManager::remove_device`] does with a device a running
/// guest did not eject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Detach it anyway, as when a device is pulled: the guest's driver loses it
    /// mid-use, the host gets it back for sure.
    DetachAnyway,
    /// Leave it attached and fail with [`super::vfio_error::VfioError::NotEjected`];
    /// a guest that ejects it later still gives it up (as a guest-initiated eject).
    KeepUnlessEjected,
}

#[derive(Default, Debug)]
struct Registers {
    up: u32,
    down: u32,
    /// Slots whose removal the VMM asked for and is waiting on.
    awaiting: u32,
    /// Awaited slots the guest ejected.
    ejected: u32,
    /// Slots the guest ejected on its own (e.g. `echo 0 > /sys/bus/pci/slots/N/power`).
    guest_ejected: u32,
    /// The guest read `PCID` since the last removal request: an ACPI-aware guest is
    /// handling it.
    down_seen: bool,
}

/// The controller's state, shared by the MMIO handler (vCPU threads) and the VMM.
#[derive(Default)]
pub struct HotplugState {
    regs: Mutex<Registers>,
    changed: Condvar,
    /// Written when the guest ejects a slot the VMM did not ask for.
    guest_eject: Option<EventFd>,
}

/// How a removal request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectOutcome {
    /// The guest ran the slot's `_EJ0`.
    Ejected,
    /// The guest never looked at the request (no ACPI hotplug support).
    Ignored,
    /// The guest saw the request but did not eject in time.
    TimedOut,
}

impl HotplugState {
    /// A controller that signals `guest_eject` when the guest ejects a slot on its
    /// own.
    pub fn new(guest_eject: EventFd) -> Self {
        Self {
            guest_eject: Some(guest_eject),
            ..Default::default()
        }
    }

    /// Readable when the guest ejected a slot on its own.
    pub fn guest_eject_fd(&self) -> Option<&EventFd> {
        self.guest_eject.as_ref()
    }

    fn regs(&self) -> std::sync::MutexGuard<'_, Registers> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `slot` as newly populated for the next `PCNT`.
    pub fn slot_added(&self, slot: u8) {
        let mut r = self.regs();
        r.up |= slot_bit(slot);
        r.down &= !slot_bit(slot);
        r.ejected &= !slot_bit(slot);
    }

    /// Asks the guest to give `slot` up.
    pub fn request_removal(&self, slot: u8) {
        let mut r = self.regs();
        r.down |= slot_bit(slot);
        r.up &= !slot_bit(slot);
        r.ejected &= !slot_bit(slot);
        r.awaiting |= slot_bit(slot);
        r.down_seen = false;
    }

    /// Waits for the guest to eject `slot`: up to `ignore_after` when it does not
    /// even read the request, up to `give_up_after` in all.
    pub fn wait_for_eject(
        &self,
        slot: u8,
        ignore_after: Duration,
        give_up_after: Duration,
    ) -> EjectOutcome {
        let start = Instant::now();
        let mut r = self.regs();
        loop {
            if r.ejected & slot_bit(slot) != 0 {
                r.ejected &= !slot_bit(slot);
                r.awaiting &= !slot_bit(slot);
                return EjectOutcome::Ejected;
            }
            let elapsed = start.elapsed();
            let limit = if r.down_seen {
                give_up_after
            } else {
                ignore_after
            };
            if elapsed >= limit {
                // The request stands no longer: the VMM removes the device itself.
                r.down &= !slot_bit(slot);
                r.awaiting &= !slot_bit(slot);
                return if r.down_seen {
                    EjectOutcome::TimedOut
                } else {
                    EjectOutcome::Ignored
                };
            }
            r = self
                .changed
                .wait_timeout(r, limit - elapsed)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Slots ejected by the guest without the VMM asking, taken (and cleared).
    pub fn take_unrequested_ejects(&self) -> u32 {
        std::mem::take(&mut self.regs().guest_ejected)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let mut r = self.regs();
        match offset {
            PCIU_OFFSET => std::mem::take(&mut r.up),
            PCID_OFFSET => {
                r.down_seen = true;
                self.changed.notify_all();
                std::mem::take(&mut r.down)
            }
            _ => 0,
        }
    }

    fn write_register(&self, offset: u64, value: u32) {
        if offset != PCEJ_OFFSET {
            return;
        }
        match u8::try_from(value) {
            Ok(slot) if (1..32).contains(&slot) => {
                let mut r = self.regs();
                if r.awaiting & slot_bit(slot) != 0 {
                    r.ejected |= slot_bit(slot);
                    self.changed.notify_all();
                } else {
                    r.guest_ejected |= slot_bit(slot);
                    if let Some(fd) = &self.guest_eject {
                        if let Err(e) = fd.write(1) {
                            log::warn!("pci hotplug: cannot signal the eject of slot {slot}: {e}");
                        }
                    }
                }
            }
            _ => log::debug!("pci hotplug: guest ejected invalid slot {value}"),
        }
    }
}

fn slot_bit(slot: u8) -> u32 {
    1u32.checked_shl(u32::from(slot)).unwrap_or(0)
}

/// Puts the controller on the MMIO bus and returns its state.
pub fn attach_hotplug_controller(
    buses: &crate::io_buses::IoBuses,
) -> Result<std::sync::Arc<HotplugState>, super::error::DeviceError> {
    let guest_eject = super::error::eventfd("guest-initiated PCI ejects")?;
    let state = std::sync::Arc::new(HotplugState::new(guest_eject));
    let device = PciHotplugController::new(state.clone());
    buses
        .mmio
        .insert(
            std::sync::Arc::new(Mutex::new(device)),
            HOTPLUG_MMIO_START,
            HOTPLUG_MMIO_SIZE,
        )
        .map_err(|source| super::error::DeviceError::Bus {
            what: "PCI hotplug controller",
            source,
        })?;
    Ok(state)
}

/// The MMIO face of [`HotplugState`].
pub struct PciHotplugController {
    state: std::sync::Arc<HotplugState>,
}

impl PciHotplugController {
    pub fn new(state: std::sync::Arc<HotplugState>) -> Self {
        Self { state }
    }
}

impl BusDevice for PciHotplugController {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        // Only whole, aligned dwords are registers; anything else reads as zero
        // without side effects, so a stray byte read cannot clear a bitmap.
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.state.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.state.write_register(offset, u32::from_le_bytes(bytes));
        } else if let (Some(&b), true) = (data.first(), data.len() < 4) {
            self.state.write_register(offset, u32::from(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn read(dev: &mut PciHotplugController, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        dev.read(HOTPLUG_MMIO_START, offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn bitmaps_read_once_and_clear() {
        let state = Arc::new(HotplugState::default());
        let mut dev = PciHotplugController::new(state.clone());
        state.slot_added(3);
        state.slot_added(5);
        assert_eq!(read(&mut dev, PCIU_OFFSET), (1 << 3) | (1 << 5));
        assert_eq!(read(&mut dev, PCIU_OFFSET), 0, "read clears");
        state.request_removal(5);
        assert_eq!(read(&mut dev, PCIU_OFFSET), 0);
        assert_eq!(read(&mut dev, PCID_OFFSET), 1 << 5);
        assert_eq!(read(&mut dev, PCID_OFFSET), 0);
        let mut byte = [0xffu8; 1];
        state.request_removal(4);
        dev.read(HOTPLUG_MMIO_START, PCID_OFFSET, &mut byte);
        assert_eq!(byte, [0], "partial reads do not consume the bitmap");
        assert_eq!(read(&mut dev, PCID_OFFSET), 1 << 4);
    }

    #[test]
    fn eject_write_completes_a_removal() {
        let state = Arc::new(HotplugState::default());
        let mut dev = PciHotplugController::new(state.clone());
        state.request_removal(7);
        let guest = {
            let state = state.clone();
            std::thread::spawn(move || {
                let mut dev = PciHotplugController::new(state);
                std::thread::sleep(Duration::from_millis(20));
                let mut data = [0u8; 4];
                dev.read(HOTPLUG_MMIO_START, PCID_OFFSET, &mut data);
                dev.write(HOTPLUG_MMIO_START, PCEJ_OFFSET, &7u32.to_le_bytes());
            })
        };
        let outcome = state.wait_for_eject(7, Duration::from_secs(5), Duration::from_secs(10));
        guest.join().unwrap();
        assert_eq!(outcome, EjectOutcome::Ejected);
        assert_eq!(state.take_unrequested_ejects(), 0, "that one was awaited");
        // Invalid slots are ignored.
        dev.write(HOTPLUG_MMIO_START, PCEJ_OFFSET, &0u32.to_le_bytes());
        dev.write(HOTPLUG_MMIO_START, PCEJ_OFFSET, &99u32.to_le_bytes());
        assert_eq!(state.take_unrequested_ejects(), 0);
    }

    #[test]
    fn an_eject_nobody_asked_for_is_signalled() {
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let state = Arc::new(HotplugState::new(fd.try_clone().unwrap()));
        let mut dev = PciHotplugController::new(state.clone());
        dev.write(HOTPLUG_MMIO_START, PCEJ_OFFSET, &[9]);
        assert_eq!(fd.read().unwrap(), 1);
        assert_eq!(state.take_unrequested_ejects(), 1 << 9);
        assert_eq!(state.take_unrequested_ejects(), 0);
    }

    #[test]
    fn a_guest_that_never_looks_is_given_up_on_early() {
        let state = HotplugState::default();
        state.request_removal(2);
        let start = Instant::now();
        let outcome = state.wait_for_eject(2, Duration::from_millis(50), Duration::from_secs(30));
        assert_eq!(outcome, EjectOutcome::Ignored);
        assert!(start.elapsed() < Duration::from_secs(5));
        // The standing request is withdrawn so a later PCNT does not eject again.
        assert_eq!(state.read_register(PCID_OFFSET), 0);
    }

    #[test]
    fn a_guest_that_looks_but_never_ejects_times_out() {
        let state = HotplugState::default();
        state.request_removal(2);
        assert_eq!(state.read_register(PCID_OFFSET), 1 << 2);
        let outcome = state.wait_for_eject(2, Duration::from_millis(10), Duration::from_millis(80));
        assert_eq!(outcome, EjectOutcome::TimedOut);
    }
}
