//! The ACPI Generic Event Device (`_HID` `ACPI0013`): how a hardware-reduced platform
//! tells the guest about the power button and PCI hotplug.
//!
//! # Register block
//!
//! An MMIO block of [`GED_MMIO_SIZE`] bytes in the platform MMIO range:
//!
//! | offset | size | access | meaning |
//! | --- | --- | --- | --- |
//! | [`GED_EVENT_REG_OFFSET`] (0x0) | 4 | read | pending event bits; reading returns them and clears them |
//!
//! Event bits: [`GED_EVENT_POWER_BUTTON`] (bit 0), [`GED_EVENT_PCI_HOTPLUG`] (bit 1).
//! Writes are ignored. A narrower read returns (and clears) only the bits in the bytes
//! it covers, so no event is lost to a partial read.
//!
//! # Interrupt
//!
//! [`Ged::notify`] sets the bit and signals the interrupt `EventFd`, which the VMM
//! registers as a KVM irqfd (GSI 5). An irqfd pulses its line, so the DSDT must declare
//! the GED interrupt as `Edge, ActiveHigh`.
//!
//! # Matching AML
//!
//! The GED's `_EVT` method reads the register once (`DWordAcc`) through an
//! `OperationRegion(SystemMemory, base + GED_EVENT_REG_OFFSET, GED_EVENT_REG_SIZE)` and
//! tests each bit: power button → `Notify(PWRB, 0x80)`; PCI hotplug → the hotplug
//! controller's scan method.

use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Offset of the 32-bit event register within the block.
pub const GED_EVENT_REG_OFFSET: u64 = 0;
/// Width of the event register in bytes.
pub const GED_EVENT_REG_SIZE: u64 = 4;
/// Size of the whole MMIO block.
pub const GED_MMIO_SIZE: u64 = 4;

/// Event register bit: the power button was pressed.
pub const GED_EVENT_POWER_BUTTON: u32 = 1 << 0;
/// Event register bit: a PCI device was added or removed; the guest should rescan.
pub const GED_EVENT_PCI_HOTPLUG: u32 = 1 << 1;

/// Something the platform tells the guest through the GED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GedEvent {
    PowerButton,
    PciHotplug,
}

impl GedEvent {
    /// The event register bit for this event.
    pub const fn bit(self) -> u32 {
        match self {
            GedEvent::PowerButton => GED_EVENT_POWER_BUTTON,
            GedEvent::PciHotplug => GED_EVENT_PCI_HOTPLUG,
        }
    }
}

pub struct Ged {
    interrupt: EventFd,
    pending: u32,
}

impl Ged {
    pub fn new(interrupt: EventFd) -> Self {
        Self {
            interrupt,
            pending: 0,
        }
    }

    /// Latches `event` and interrupts the guest. Events of the same kind that arrive
    /// before the guest reads the register are merged, as on hardware.
    pub fn notify(&mut self, event: GedEvent) {
        self.pending |= event.bit();
        if let Err(e) = self.interrupt.write(1) {
            warn!("ged: latched {event:?} but could not interrupt the guest: {e}");
        }
    }

    /// Event bits latched and not yet read by the guest.
    pub fn pending(&self) -> u32 {
        self.pending
    }
}

/// Which byte of the event register `offset` addresses, if any.
fn event_register_byte(offset: u64) -> Option<usize> {
    let o = offset.checked_sub(GED_EVENT_REG_OFFSET)?;
    if o < GED_EVENT_REG_SIZE {
        usize::try_from(o).ok()
    } else {
        None
    }
}

impl BusDevice for Ged {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let latched = self.pending.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            let reg_byte = event_register_byte(offset.saturating_add(i as u64));
            *byte = match reg_byte.and_then(|o| latched.get(o).map(|&b| (o, b))) {
                Some((o, bits)) => {
                    self.pending &= !(0xffu32 << (o * 8));
                    bits
                }
                None => 0,
            };
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        debug!(
            "ged: ignoring {}-byte write at offset {offset:#x}",
            data.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const BASE: u64 = 0xf000_0000;

    fn ged() -> (Ged, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        (Ged::new(irq.try_clone().unwrap()), irq)
    }

    fn read_event_reg(g: &mut Ged) -> u32 {
        let mut b = [0u8; 4];
        g.read(BASE, GED_EVENT_REG_OFFSET, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn notify_sets_bit_and_interrupts() {
        let (mut g, irq) = ged();
        assert!(irq.read().is_err());
        g.notify(GedEvent::PowerButton);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(g.pending(), GED_EVENT_POWER_BUTTON);
    }

    #[test]
    fn read_returns_pending_bits_and_clears_them() {
        let (mut g, _irq) = ged();
        g.notify(GedEvent::PowerButton);
        g.notify(GedEvent::PciHotplug);
        assert_eq!(
            read_event_reg(&mut g),
            GED_EVENT_POWER_BUTTON | GED_EVENT_PCI_HOTPLUG
        );
        assert_eq!(read_event_reg(&mut g), 0);
        g.notify(GedEvent::PciHotplug);
        assert_eq!(read_event_reg(&mut g), GED_EVENT_PCI_HOTPLUG);
    }

    #[test]
    fn partial_reads_clear_only_what_they_return() {
        let (mut g, _irq) = ged();
        g.pending = 0x8000_0001;
        let mut hi = [0u8; 1];
        g.read(BASE, 3, &mut hi);
        assert_eq!(hi, [0x80]);
        assert_eq!(g.pending(), 1);
        // Reads past the register see zeros and leave the pending bits alone.
        let mut wide = [0xffu8; 8];
        g.read(BASE, 4, &mut wide);
        assert_eq!(wide, [0; 8]);
        g.read(BASE, u64::MAX, &mut wide);
        assert_eq!(g.pending(), 1);
    }

    #[test]
    fn writes_do_not_clear_events() {
        let (mut g, _irq) = ged();
        g.notify(GedEvent::PowerButton);
        g.write(BASE, 0, &[0xff; 4]);
        assert_eq!(read_event_reg(&mut g), GED_EVENT_POWER_BUTTON);
    }
}
