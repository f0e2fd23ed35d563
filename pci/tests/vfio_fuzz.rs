//! Random guest traffic against a VFIO device built on the modelled GPU: config
//! writes of any size anywhere, BAR and MSI-X table/PBA accesses, BAR moves. The
//! device must never panic, and what it asks of the VMM must stay consistent:
//! irqfds only on GSIs it allocated, and memory slots that never overlap (the fake
//! refuses overlaps, and refusals would show up as missing slots, not panics).

use std::sync::Arc;

use form_vm_allocator::{AddressAllocator, GuestLayout};
use pci::vfio::fake::{FakeRouting, FakeSlots, FakeVfioDevice};
use pci::vfio::{
    discover_bars, place_bars, read_raw_config, BarAllocators, ConfigOptions, VfioPciDevice,
    VfioResources,
};
use pci::PciDevice;
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

fn device() -> (VfioPciDevice, Arc<FakeRouting>, Arc<FakeSlots>) {
    let fake = Arc::new(FakeVfioDevice::gpu_with_bar1(GIB));
    let raw = read_raw_config(&*fake).unwrap();
    let host = discover_bars(&*fake, &raw).unwrap();
    let layout = GuestLayout::new(GIB, 40).unwrap();
    let mut mmio32 = AddressAllocator::new(layout.mmio32().start, layout.mmio32().size).unwrap();
    let mut mmio64 = AddressAllocator::new(layout.mmio64().start, layout.mmio64().size).unwrap();
    let mut io = AddressAllocator::new(0x1000, 0xf000).unwrap();
    let placed = place_bars(
        &host,
        &mut BarAllocators {
            mmio32: &mut mmio32,
            mmio64: &mut mmio64,
            io: &mut io,
        },
    )
    .unwrap();
    let routing = Arc::new(FakeRouting::default());
    let slots = Arc::new(FakeSlots::default());
    let dev = VfioPciDevice::new(
        "fuzz",
        fake,
        host,
        &placed,
        VfioResources {
            slots: slots.clone(),
            routing: routing.clone(),
            intx_gsi: Some(11),
            dma_gate: None,
        },
        &ConfigOptions {
            gpudirect_clique: Some(3),
        },
    )
    .unwrap();
    (dev, routing, slots)
}

#[derive(Debug, Clone)]
enum Access {
    Config {
        reg: usize,
        offset: u64,
        data: Vec<u8>,
    },
    /// An access to BAR `bar` (index into the device's BARs) at `offset`.
    Bar {
        bar: usize,
        offset: u64,
        data: Vec<u8>,
        write: bool,
    },
    /// An MSI-X table or PBA access (BAR 0, 0xb_0000..0xb_2000).
    Msix {
        offset: u64,
        data: Vec<u8>,
        write: bool,
    },
}

fn access() -> impl Strategy<Value = Access> {
    let data = prop::collection::vec(any::<u8>(), 0..9);
    prop_oneof![
        (0usize..1100, 0u64..6, data.clone()).prop_map(|(reg, offset, data)| Access::Config {
            reg,
            offset,
            data
        }),
        // Registers that matter most: command, BARs, MSI-X control, PCIe control.
        (
            prop::sample::select(vec![1usize, 4, 5, 6, 7, 8, 9, 12, 0x28, 0x1a, 0x12]),
            0u64..4,
            data.clone()
        )
            .prop_map(|(reg, offset, data)| Access::Config { reg, offset, data }),
        (0usize..6, any::<u64>(), data.clone(), any::<bool>()).prop_map(
            |(bar, offset, data, write)| Access::Bar {
                bar,
                offset: offset % (GIB + 16),
                data,
                write
            }
        ),
        (0u64..0x2010, data, any::<bool>()).prop_map(|(o, data, write)| Access::Msix {
            offset: 0xb_0000 + o,
            data,
            write
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn guest_traffic_never_panics(accesses in prop::collection::vec(access(), 1..80)) {
        let (mut dev, routing, slots) = device();
        for a in accesses {
            match a {
                Access::Config { reg, offset, data } => {
                    if let Some(moved) = dev.write_config_register(reg, offset, &data) {
                        dev.move_bar(&moved).unwrap();
                    }
                    let _ = dev.read_config_register(reg);
                }
                Access::Bar { bar, offset, mut data, write } => {
                    let bars = dev.bars();
                    let Some(b) = bars.get(bar) else { continue };
                    if write {
                        dev.write_bar(b.addr, offset, &data);
                    } else {
                        dev.read_bar(b.addr, offset, &mut data);
                    }
                }
                Access::Msix { offset, mut data, write } => {
                    let Some(b) = dev.bars().into_iter().find(|b| b.index == 0) else { continue };
                    if write {
                        dev.write_bar(b.addr, offset, &data);
                    } else {
                        dev.read_bar(b.addr, offset, &mut data);
                    }
                }
            }
            let state = routing.snapshot();
            for gsi in state.irqfds.keys() {
                prop_assert!(*gsi == 11 || state.allocated.contains(gsi), "irqfd on unallocated GSI {gsi}");
            }
        }
        dev.detach();
        prop_assert!(slots.snapshot().is_empty());
        prop_assert_eq!(routing.snapshot(), Default::default());
    }
}

/// A route that accepts everything.
struct NullRoute;

impl pci::MsiInterruptRoute for NullRoute {
    fn enable(&self, _: usize, _: pci::MsiMessage) -> Result<(), pci::MsiRouteError> {
        Ok(())
    }
    fn disable(&self, _: usize) -> Result<(), pci::MsiRouteError> {
        Ok(())
    }
    fn trigger(&self, _: usize) -> Result<(), pci::MsiRouteError> {
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever bytes a device's config region holds, building the guest's view
    /// either fails with an error or yields a space whose guest capability list is
    /// walkable, and whose MSI/MSI-X registers take any guest write.
    #[test]
    fn any_hardware_config_builds_or_is_refused(
        mut raw in prop::collection::vec(any::<u8>(), 256..=4096),
        caps in any::<bool>(),
        clique in prop::option::of(0u8..20),
        writes in prop::collection::vec((0usize..1024, 0u64..4, prop::collection::vec(any::<u8>(), 1..5)), 0..40),
    ) {
        raw[0x0e] &= 0x7f;
        if caps {
            raw[0x06] |= 0x10;
        }
        let route: Arc<dyn pci::MsiInterruptRoute> = Arc::new(NullRoute);
        let built = pci::vfio::config::VfioConfig::build(
            &raw,
            &[],
            true,
            route.clone(),
            route,
            &ConfigOptions { gpudirect_clique: clique },
        );
        if let Ok(mut config) = built {
            prop_assert!(config.config().capabilities().len() <= 48);
            struct Hw;
            impl pci::vfio::config::ConfigHardware for Hw {
                fn read(&self, _: usize, data: &mut [u8]) {
                    data.fill(0xa5);
                }
                fn write(&self, _: usize, _: &[u8]) {}
            }
            for (reg, offset, data) in writes {
                config.write(reg, offset, &data, &Hw);
                let _ = config.read(reg, &Hw);
            }
        }
    }
}
