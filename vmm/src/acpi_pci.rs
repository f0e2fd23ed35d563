//! The DSDT's description of PCI bus 0's slots: INTx routing (`_PRT`) and ACPI
//! hotplug (one `Device` per slot with `_ADR`, `_SUN` and `_EJ0`, and the `PCNT`
//! method the GED calls to notify slots that changed).
//!
//! Linux's acpiphp driver claims every slot object under the host bridge that has
//! `_ADR` and `_EJ0`; a `Notify(slot, 1)` (device check) makes it scan the slot and
//! a `Notify(slot, 3)` (eject request) makes it remove the device and call `_EJ0`.

use acpi_tables::aml::{
    self, And, Device, Equal, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule,
    If, Local, Method, Name, Notify, OpRegion, OpRegionSpace, Package, Path, Scope, Store,
};
use acpi_tables::{Aml, AmlSink};
use form_vm_allocator::layout::{HOTPLUG_MMIO_SIZE, HOTPLUG_MMIO_START};
use std::collections::BTreeSet;

/// First IOAPIC GSI of PCI INTx (platform.md: 10-15).
pub const INTX_FIRST_GSI: u32 = 10;
/// How many GSIs PCI INTx shares.
pub const INTX_GSI_COUNT: u32 = 6;
/// Slots a device can be placed in (0 is the host bridge).
pub const HOTPLUG_SLOTS: std::ops::RangeInclusive<u8> = 1..=31;
/// `Notify` values (ACPI 6.5, 5.6.6).
const NOTIFY_DEVICE_CHECK: u8 = 1;
const NOTIFY_EJECT_REQUEST: u8 = 3;

/// The IOAPIC GSI that INTx pin `pin` (0 = INTA) of a device in `slot` raises:
/// rotated by slot, as a PCI bridge swizzles, so neighbours do not share a line.
pub fn intx_gsi(slot: u8, pin: u8) -> u32 {
    INTX_FIRST_GSI + (u32::from(slot) + u32::from(pin)) % INTX_GSI_COUNT
}

/// Already-serialised AML, so objects built in a loop can be children of one
/// parent without outliving their builders.
pub(crate) struct Raw(pub(crate) Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn raw(t: &dyn Aml) -> Raw {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    Raw(v)
}

fn slot_name(slot: u8) -> String {
    format!("SL{slot:02X}")
}

/// `_PRT`: every slot's four INTx pins to [`intx_gsi`]; the same on every root bus.
pub(crate) fn prt() -> Raw {
    let entries: Vec<Raw> = HOTPLUG_SLOTS
        .flat_map(|slot| (0u8..4).map(move |pin| (slot, pin)))
        .map(|(slot, pin)| {
            let address = (u32::from(slot) << 16) | 0xffff;
            let gsi = intx_gsi(slot, pin);
            raw(&Package::new(vec![&address, &pin, &aml::ZERO, &gsi]))
        })
        .collect();
    let refs: Vec<&dyn Aml> = entries.iter().map(|e| e as &dyn Aml).collect();
    raw(&Name::new("_PRT".into(), &Package::new(refs)))
}

/// A hotplug slot: `_ADR`, `_SUN` and `_EJ0`. A fixed slot (a device the VMM never
/// removes) gets `_ADR` alone, so the guest's hotplug driver does not claim it and
/// cannot offer to eject a device the VMM would leave on the bus.
fn slot_device(slot: u8, fixed: bool) -> Raw {
    let adr = u32::from(slot) << 16;
    let sun = u32::from(slot);
    let pcej = Path::new("\\_SB_.PCI0.PCEJ");
    let adr_name = Name::new("_ADR".into(), &adr);
    let sun_name = Name::new("_SUN".into(), &sun);
    let eject = Store::new(&pcej, &sun);
    let ej0 = Method::new("_EJ0".into(), 1, false, vec![&eject]);
    let children: Vec<&dyn Aml> = if fixed {
        vec![&adr_name]
    } else {
        vec![&adr_name, &sun_name, &ej0]
    };
    raw(&Device::new(slot_name(slot).as_str().into(), children))
}

/// `PCNT`: reads (and so clears) the added and removed bitmaps once, then notifies
/// each hotplug slot whose bit is set.
fn pcnt(fixed: &BTreeSet<u8>) -> Raw {
    let pciu = Path::new("PCIU");
    let pcid = Path::new("PCID");
    let notifies: Vec<Raw> = HOTPLUG_SLOTS
        .filter(|slot| !fixed.contains(slot))
        .flat_map(|slot| {
            let bit = 1u32 << slot;
            let target = Path::new(&slot_name(slot));
            [
                (Local(0), NOTIFY_DEVICE_CHECK),
                (Local(1), NOTIFY_EJECT_REQUEST),
            ]
            .map(|(bitmap, value)| {
                raw(&If::new(
                    &Equal::new(&And::new(&aml::ZERO, &bitmap, &bit), &bit),
                    vec![&Notify::new(&target, &value)],
                ))
            })
        })
        .collect();
    let mut body: Vec<&dyn Aml> = Vec::with_capacity(notifies.len() + 2);
    let up = Store::new(&Local(0), &pciu);
    let down = Store::new(&Local(1), &pcid);
    body.push(&up);
    body.push(&down);
    body.extend(notifies.iter().map(|n| n as &dyn Aml));
    raw(&Method::new("PCNT".into(), 0, true, body))
}

/// `Scope(\_SB_.PCI0) { _PRT, the hotplug registers, SL01..SL1F, PCNT }`, with the
/// slots in `fixed` (the virtio devices) not hotpluggable.
pub fn pci_slots_aml(fixed: &BTreeSet<u8>) -> Vec<u8> {
    let slots: Vec<Raw> = HOTPLUG_SLOTS
        .map(|slot| slot_device(slot, fixed.contains(&slot)))
        .collect();
    let prt = prt();
    let pcnt = pcnt(fixed);
    let region = OpRegion::new(
        "PCST".into(),
        OpRegionSpace::SystemMemory,
        &HOTPLUG_MMIO_START,
        &HOTPLUG_MMIO_SIZE,
    );
    let field = Field::new(
        "PCST".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![
            FieldEntry::Named(*b"PCIU", 32),
            FieldEntry::Named(*b"PCID", 32),
            FieldEntry::Named(*b"PCEJ", 32),
        ],
    );
    let mut children: Vec<&dyn Aml> = vec![&prt, &region, &field];
    children.extend(slots.iter().map(|s| s as &dyn Aml));
    children.push(&pcnt);
    raw(&Scope::new("\\_SB_.PCI0".into(), children)).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn intx_lines_stay_in_the_pci_gsi_range() {
        for slot in HOTPLUG_SLOTS {
            for pin in 0..4 {
                let gsi = intx_gsi(slot, pin);
                assert!((10..=15).contains(&gsi), "slot {slot} pin {pin}: {gsi}");
            }
        }
        assert_ne!(intx_gsi(1, 0), intx_gsi(2, 0));
    }

    #[test]
    fn every_slot_is_an_ejectable_device_with_adr_and_sun() {
        let aml = pci_slots_aml(&BTreeSet::new());
        for slot in HOTPLUG_SLOTS {
            let name = slot_name(slot);
            assert!(contains(&aml, name.as_bytes()), "{name}");
        }
        assert!(!contains(&aml, b"SL00"), "slot 0 is the host bridge");
        for name in [&b"_PRT"[..], b"_ADR", b"_SUN", b"_EJ0", b"PCNT", b"PCEJ"] {
            assert!(contains(&aml, name), "{}", String::from_utf8_lossy(name));
        }
        // 31 slots, each with _ADR, _SUN and _EJ0 (PCNT mentions none of them).
        let count = |n: &[u8]| aml.windows(n.len()).filter(|w| *w == n).count();
        assert_eq!(count(b"_EJ0"), 31);
        assert_eq!(count(b"_SUN"), 31);
        // The hotplug registers live where the controller is.
        let mut addr = Vec::new();
        HOTPLUG_MMIO_START.to_aml_bytes(&mut addr);
        assert!(contains(&aml, &addr));
    }

    #[test]
    fn prt_has_four_pins_for_every_slot() {
        let prt = prt().0;
        // Each entry: Package (0x12), length, 4 elements.
        let entries = prt.windows(3).filter(|w| w[0] == 0x12 && w[2] == 4).count();
        assert_eq!(entries, 31 * 4);
    }

    #[test]
    fn pcnt_notifies_device_check_and_eject() {
        let pcnt = pcnt(&BTreeSet::new()).0;
        // Notify opcode 0x86, the slot's name, then the value.
        let notify_of = |slot: u8, value: u8| {
            let mut pat = vec![0x86];
            pat.extend_from_slice(slot_name(slot).as_bytes());
            value.to_aml_bytes(&mut pat);
            contains(&pcnt, &pat)
        };
        for slot in HOTPLUG_SLOTS {
            assert!(notify_of(slot, 1), "slot {slot} device check");
            assert!(notify_of(slot, 3), "slot {slot} eject request");
        }
    }

    #[test]
    fn fixed_slots_are_plain_devices_that_are_never_notified() {
        let fixed = BTreeSet::from([2, 5]);
        let aml = pci_slots_aml(&fixed);
        let count = |n: &[u8]| aml.windows(n.len()).filter(|w| *w == n).count();
        // All 31 slots stay named with an address (the _PRT and the guest's view of
        // the bus do not change); two lose _SUN and _EJ0.
        for slot in HOTPLUG_SLOTS {
            assert!(contains(&aml, slot_name(slot).as_bytes()), "slot {slot}");
        }
        assert_eq!(count(b"_ADR"), 31);
        assert_eq!(count(b"_EJ0"), 29);
        assert_eq!(count(b"_SUN"), 29);

        let fixed_device = slot_device(2, true).0;
        assert!(!contains(&fixed_device, b"_EJ0"));
        assert!(!contains(&fixed_device, b"_SUN"));
        assert!(contains(&fixed_device, b"_ADR"));

        let pcnt = pcnt(&fixed).0;
        let notified = |slot: u8| {
            let mut pat = vec![0x86];
            pat.extend_from_slice(slot_name(slot).as_bytes());
            contains(&pcnt, &pat)
        };
        for slot in HOTPLUG_SLOTS {
            assert_eq!(notified(slot), !fixed.contains(&slot), "slot {slot}");
        }
    }
}
