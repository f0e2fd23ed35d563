//! The DSDT's host bridges of the guest nodes' root buses (`\_SB_.PCxx`, xx the
//! bus number in hex), beside bus 0's `PCI0`: each decodes its bus and its slices
//! of the PCI windows, routes its slots' INTx as `PCI0` does, and names its node
//! in `_PXM`, which is where a guest takes its devices' NUMA node from (Linux:
//! `pcibus_to_node`). No hotplug: these buses take cold-plugged devices only.

use crate::acpi_pci::{prt, Raw};
use acpi_tables::aml::ResourceTemplate;
use acpi_tables::aml::{self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Name};
use acpi_tables::Aml;
use form_vm_allocator::{node_of_root_bus, PciRoot};

/// `\_SB_.PCxx` for root bus `root.bus`.
pub fn root_bridge_name(bus: u8) -> String {
    format!("_SB_.PC{bus:02X}")
}

/// The host bridge device of `root` (a bus other than 0).
pub fn root_bridge_aml(root: &PciRoot) -> Vec<u8> {
    let bus = u32::from(root.bus);
    let node = node_of_root_bus(root.bus).unwrap_or(0);
    let bus_range = AddressSpace::<u16>::new_bus_number(root.bus.into(), root.bus.into());
    let io = (root.io.size > 0)
        .then(|| AddressSpace::<u16>::new_io(root.io.start as u16, root.io.last() as u16, None));
    let mem32 = (root.mmio32.size > 0).then(|| {
        AddressSpace::<u32>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            root.mmio32.start as u32,
            root.mmio32.last() as u32,
            None,
        )
    });
    let mem64 = (root.mmio64.size > 0).then(|| {
        AddressSpace::<u64>::new_memory(
            AddressSpaceCacheable::Cacheable,
            true,
            root.mmio64.start,
            root.mmio64.last(),
            None,
        )
    });
    let mut resources: Vec<&dyn Aml> = vec![&bus_range];
    if let Some(io) = &io {
        resources.push(io);
    }
    if let Some(mem32) = &mem32 {
        resources.push(mem32);
    }
    if let Some(mem64) = &mem64 {
        resources.push(mem64);
    }
    let crs = ResourceTemplate::new(resources);
    let prt: Raw = prt();
    let mut v = Vec::new();
    Device::new(
        root_bridge_name(root.bus).as_str().into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0A08")),
            &Name::new("_CID".into(), &EISAName::new("PNP0A03")),
            &Name::new("_SEG".into(), &aml::ZERO),
            &Name::new("_UID".into(), &bus),
            &Name::new("_BBN".into(), &bus),
            &Name::new("_PXM".into(), &node),
            &Name::new("_CRS".into(), &crs),
            &prt,
        ],
    )
    .to_aml_bytes(&mut v);
    v
}
