//! What the guest nodes' root buses need of the PCI windows: the BARs of the
//! passthrough devices placed on each, known before the layout is made because
//! these buses take cold-plugged devices only.

use super::vfio::OpenedDevice;
use form_vm_allocator::PciRootNeeds;
use pci::vfio::bars::PAGE_SIZE;
use pci::vfio::HostBar;
use pci::BarKind;
use std::collections::BTreeMap;

// The configuration refuses the guest nodes that have no root bus.
const _: () =
    assert!(crate::config::DEVICE_NUMA_NODES == form_vm_allocator::pci_roots::PCI_ROOT_BUS_NODES);

/// The needs of every root bus but 0 that `opened` devices go on, by bus number.
pub fn root_bus_needs(opened: &[OpenedDevice]) -> Vec<PciRootNeeds> {
    needs_of(
        opened
            .iter()
            .map(|device| (device.root_bus(), device.host_bars())),
    )
}

fn needs_of<'a>(devices: impl Iterator<Item = (u8, &'a [HostBar])>) -> Vec<PciRootNeeds> {
    let mut by_bus: BTreeMap<u8, PciRootNeeds> = BTreeMap::new();
    for (bus, bars) in devices.filter(|(bus, _)| *bus != 0) {
        let needs = by_bus.entry(bus).or_insert(PciRootNeeds {
            bus,
            ..Default::default()
        });
        for bar in bars {
            // As the BAR placement aligns them: memory BARs to at least a page, so
            // a smaller one still takes a page of the window.
            let (window, size) = match bar.kind {
                BarKind::Io => (&mut needs.io, bar.size),
                BarKind::Memory32 => (&mut needs.mmio32, bar.size.max(PAGE_SIZE)),
                BarKind::Memory64 => (&mut needs.mmio64, bar.size.max(PAGE_SIZE)),
            };
            window.add(size, size);
        }
    }
    by_bus.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use form_vm_allocator::WindowNeed;
    use pci::vfio::ops::RegionInfo;

    fn bar(index: usize, kind: BarKind, size: u64) -> HostBar {
        HostBar {
            index,
            size,
            region_size: size,
            kind,
            prefetchable: kind == BarKind::Memory64,
            region: RegionInfo {
                size,
                readable: true,
                writable: true,
                mappable: false,
                sparse_areas: None,
            },
        }
    }

    #[test]
    fn sums_each_buses_bars_by_window_and_leaves_bus_0_out() {
        let gpu = [
            bar(0, BarKind::Memory32, 16 << 20),
            bar(1, BarKind::Memory64, 128 << 30),
            bar(3, BarKind::Memory64, 32 << 20),
            bar(5, BarKind::Io, 0x80),
        ];
        let small = [bar(0, BarKind::Memory32, 0x100)];
        let needs = needs_of(
            [
                (0x10, &gpu[..]),
                (0, &gpu[..]),
                (0x20, &small[..]),
                (0x10, &small[..]),
            ]
            .into_iter(),
        );
        assert_eq!(needs.len(), 2, "{needs:?}");
        assert_eq!(needs[0].bus, 0x10);
        assert_eq!(
            needs[0].mmio32,
            WindowNeed {
                size: (16 << 20) + PAGE_SIZE,
                align: 16 << 20
            }
        );
        assert_eq!(
            needs[0].mmio64,
            WindowNeed {
                size: (128 << 30) + (32 << 20),
                align: 128 << 30
            }
        );
        assert_eq!(
            needs[0].io,
            WindowNeed {
                size: 0x80,
                align: 0x80
            }
        );
        assert_eq!(needs[1].bus, 0x20);
        assert_eq!(
            needs[1].mmio32,
            WindowNeed {
                size: PAGE_SIZE,
                align: PAGE_SIZE
            },
            "a page at least"
        );
        assert_eq!(needs[1].mmio64, WindowNeed::default());
    }
}
