//! The VM's GSI routing table.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so adding one MSI route means
//! handing KVM every route again: the irqchip defaults (which KVM installs on its
//! own at irqchip creation and forgets on the first SET) plus every MSI route.

use crate::error::{HypervisorError, Result};
use crate::IOAPIC_PINS;
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MAX_IRQ_ROUTES,
};
use std::collections::BTreeMap;

/// Number of PIC inputs (master and slave, 8 each).
const PIC_PINS: u32 = 16;

/// An MSI message as a device writes it: the address and the data word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address_lo: u32,
    pub address_hi: u32,
    pub data: u32,
}

#[derive(Default)]
pub(crate) struct GsiRoutes {
    msi: BTreeMap<u32, MsiMessage>,
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip.irqchip = irqchip;
    entry.u.irqchip.pin = pin;
    entry
}

fn msi_entry(gsi: u32, msg: &MsiMessage) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    entry.u.msi.address_lo = msg.address_lo;
    entry.u.msi.address_hi = msg.address_hi;
    entry.u.msi.data = msg.data;
    entry
}

/// The routes KVM sets up with the in-kernel irqchip: every GSI below 24 goes to
/// the IOAPIC pin of the same number, and GSIs below 16 also to the PIC input.
pub(crate) fn default_irqchip_entries() -> Vec<kvm_irq_routing_entry> {
    let mut entries = Vec::with_capacity((IOAPIC_PINS + PIC_PINS) as usize);
    for gsi in 0..IOAPIC_PINS {
        entries.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < PIC_PINS {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            entries.push(irqchip_entry(gsi, chip, gsi % 8));
        }
    }
    entries
}

impl GsiRoutes {
    pub(crate) fn set_msi(&mut self, gsi: u32, msg: MsiMessage) -> Result<()> {
        if gsi < IOAPIC_PINS {
            return Err(HypervisorError::GsiReservedForIrqchip {
                gsi,
                first: IOAPIC_PINS,
            });
        }
        let limit = KVM_MAX_IRQ_ROUTES;
        if !self.msi.contains_key(&gsi) && self.len() >= limit {
            return Err(HypervisorError::RoutingTableFull(limit));
        }
        self.msi.insert(gsi, msg);
        Ok(())
    }

    pub(crate) fn remove_msi(&mut self, gsi: u32) -> Result<MsiMessage> {
        self.msi
            .remove(&gsi)
            .ok_or(HypervisorError::UnknownMsiRoute(gsi))
    }

    pub(crate) fn msi(&self, gsi: u32) -> Option<MsiMessage> {
        self.msi.get(&gsi).copied()
    }

    fn len(&self) -> usize {
        (IOAPIC_PINS + PIC_PINS) as usize + self.msi.len()
    }

    /// The full table in the form `KVM_SET_GSI_ROUTING` takes.
    pub(crate) fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        let mut entries = default_irqchip_entries();
        entries.extend(self.msi.iter().map(|(gsi, msg)| msi_entry(*gsi, msg)));
        entries
    }

    pub(crate) fn to_kvm(&self) -> Result<KvmIrqRouting> {
        let entries = self.entries();
        KvmIrqRouting::from_entries(&entries)
            .map_err(|_| HypervisorError::RoutingTableFull(KVM_MAX_IRQ_ROUTES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn irqchip_routes(entries: &[kvm_irq_routing_entry]) -> Vec<(u32, u32, u32)> {
        entries
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            // SAFETY: type_ says the irqchip member is the valid one.
            .map(|e| unsafe { (e.gsi, e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect()
    }

    #[test]
    fn defaults_cover_ioapic_and_pic() {
        let routes = irqchip_routes(&default_irqchip_entries());
        assert_eq!(routes.len(), 40);
        assert!(routes.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
        assert!(routes.contains(&(4, KVM_IRQCHIP_PIC_MASTER, 4)));
        assert!(routes.contains(&(12, KVM_IRQCHIP_PIC_SLAVE, 4)));
        assert!(!routes
            .iter()
            .any(|r| r.0 >= 16 && r.1 != KVM_IRQCHIP_IOAPIC));
    }

    #[test]
    fn msi_routes_come_and_go_without_touching_defaults() {
        let mut table = GsiRoutes::default();
        let msg = MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: 0x41,
        };
        table.set_msi(24, msg).unwrap();
        table.set_msi(30, MsiMessage { data: 0x42, ..msg }).unwrap();
        table.set_msi(24, MsiMessage { data: 0x43, ..msg }).unwrap();
        let entries = table.entries();
        assert_eq!(entries.len(), 42);
        assert_eq!(table.msi(24).unwrap().data, 0x43);
        assert_eq!(table.remove_msi(24).unwrap().data, 0x43);
        assert!(matches!(
            table.remove_msi(24),
            Err(HypervisorError::UnknownMsiRoute(24))
        ));
        assert_eq!(
            irqchip_routes(&table.entries()),
            irqchip_routes(&default_irqchip_entries())
        );
        assert_eq!(table.entries().len(), 41);
    }

    #[test]
    fn msi_on_a_legacy_pin_is_refused() {
        let mut table = GsiRoutes::default();
        assert!(matches!(
            table.set_msi(5, MsiMessage::default()),
            Err(HypervisorError::GsiReservedForIrqchip { gsi: 5, .. })
        ));
    }
}
