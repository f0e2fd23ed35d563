//! The VFIO PCI device against modelled hardware: config virtualisation, BAR
//! placement and mapping, interrupts, group rules, moves and detach.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use form_vm_allocator::{AddressAllocator, GuestLayout};
use pci::config::BarKind;
use pci::vfio::config::VfioConfigError;
use pci::vfio::container::DmaRegion;
use pci::vfio::fake::FakeIommu;
use pci::vfio::fake::{FakeOp, FakeRouting, FakeSlots, FakeVfioDevice};
use pci::vfio::group::{check_group, GroupError};
use pci::vfio::ops::{IrqIndex, VfioDeviceOps, CONFIG_REGION};
use pci::vfio::{
    discover_bars, place_bars, read_raw_config, BackgroundMap, BarAllocators, ConfigOptions,
    DmaGate, VfioPciDevice, VfioPciError, VfioResources,
};
use pci::{PciBar, PciDevice};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

struct Rig {
    fake: Arc<FakeVfioDevice>,
    routing: Arc<FakeRouting>,
    slots: Arc<FakeSlots>,
    dev: VfioPciDevice,
    placed: Vec<PciBar>,
}

fn try_rig(
    fake: FakeVfioDevice,
    intx_gsi: Option<u32>,
    clique: Option<u8>,
) -> Result<Rig, VfioPciError> {
    gated_rig(fake, intx_gsi, clique, None)
}

fn gated_rig(
    fake: FakeVfioDevice,
    intx_gsi: Option<u32>,
    clique: Option<u8>,
    dma_gate: Option<Arc<DmaGate>>,
) -> Result<Rig, VfioPciError> {
    let fake = Arc::new(fake);
    let raw = read_raw_config(&*fake).unwrap();
    let host = discover_bars(&*fake, &raw).unwrap();
    let layout = GuestLayout::new(4 * GIB, 46).unwrap();
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
        "test",
        fake.clone(),
        host,
        &placed,
        VfioResources {
            slots: slots.clone(),
            routing: routing.clone(),
            intx_gsi,
            dma_gate,
        },
        &ConfigOptions {
            gpudirect_clique: clique,
        },
    )?;
    Ok(Rig {
        fake,
        routing,
        slots,
        dev,
        placed,
    })
}

fn rig(fake: FakeVfioDevice) -> Rig {
    try_rig(fake, Some(10), None).unwrap()
}

impl Rig {
    fn read8(&mut self, offset: usize) -> u8 {
        (self.dev.read_config_register(offset / 4) >> ((offset % 4) * 8)) as u8
    }

    fn write(&mut self, offset: usize, bytes: &[u8]) -> Option<pci::BarReprogram> {
        self.dev
            .write_config_register(offset / 4, (offset % 4) as u64, bytes)
    }

    fn bar(&self, index: usize) -> PciBar {
        *self.placed.iter().find(|b| b.index == index).unwrap()
    }

    fn caps(&mut self) -> Vec<(u8, usize)> {
        let mut caps = vec![];
        let mut at = usize::from(self.read8(0x34));
        while at != 0 && caps.len() < 48 {
            caps.push((self.read8(at), at));
            at = usize::from(self.read8(at + 1));
        }
        caps
    }

    fn enable_memory(&mut self) {
        self.write(0x04, &0x0006u16.to_le_bytes());
    }
}

#[test]
fn identity_is_the_hardwares_and_read_only() {
    let mut r = rig(FakeVfioDevice::gpu());
    assert_eq!(r.dev.read_config_register(0), 0x2330_10de);
    assert_eq!(r.dev.read_config_register(2) >> 8, 0x03_0200);
    r.write(0, &[0; 4]);
    r.write(8, &[0; 4]);
    assert_eq!(r.dev.read_config_register(0), 0x2330_10de);
    assert_eq!(r.dev.read_config_register(2) >> 8, 0x03_0200);
    assert_eq!(
        r.read8(0x0e) & 0x80,
        0,
        "function 0 only: never multifunction"
    );
    assert_eq!(r.read8(0x3d), 1, "the hardware's INTx pin");
    assert_eq!(r.read8(0x3c), 10, "the line the VMM routed");
    assert_eq!(r.dev.read_config_register(12), 0, "no expansion ROM");
}

#[test]
fn bar_sizing_answers_host_sizes_at_guest_addresses() {
    let mut r = rig(FakeVfioDevice::gpu());
    let bar0 = r.bar(0);
    assert_eq!(bar0.size, 16 * MIB);
    assert_eq!(bar0.kind, BarKind::Memory32);
    assert_eq!(r.dev.read_config_register(4), bar0.addr as u32);
    r.write(0x10, &u32::MAX.to_le_bytes());
    assert_eq!(r.dev.read_config_register(4), 0xff00_0000);
    r.write(0x10, &(bar0.addr as u32).to_le_bytes());
    let bar1 = r.bar(1);
    assert_eq!(
        (bar1.size, bar1.kind, bar1.prefetchable),
        (128 * GIB, BarKind::Memory64, true)
    );
    r.write(0x14, &u32::MAX.to_le_bytes());
    r.write(0x18, &u32::MAX.to_le_bytes());
    assert_eq!(r.dev.read_config_register(5), 0x0000_000c);
    assert_eq!(
        r.dev.read_config_register(6),
        !((128 * GIB - 1) >> 32) as u32
    );
    let bar5 = r.bar(5);
    assert_eq!((bar5.kind, bar5.size), (BarKind::Io, 128));
    r.write(0x24, &u32::MAX.to_le_bytes());
    assert_eq!(r.dev.read_config_register(9), 0xffff_ff81);
    // Nothing about the BARs reached the hardware.
    let raw_writes: Vec<_> = r
        .fake
        .take_ops()
        .into_iter()
        .filter(|op| matches!(op, FakeOp::RegionWrite { index: CONFIG_REGION, offset, .. } if (0x10..0x28).contains(offset)))
        .collect();
    assert!(raw_writes.is_empty(), "{raw_writes:?}");
}

#[test]
fn unsupported_capabilities_are_unlinked() {
    let mut r = rig(FakeVfioDevice::gpu());
    assert_eq!(
        r.caps(),
        vec![(0x01, 0x40), (0x05, 0x48), (0x10, 0x60), (0x11, 0xa0)],
        "VPD (0x03) at 0xb0 hidden"
    );
    let hidden: Vec<u8> = r
        .dev
        .config()
        .hidden_capabilities()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(hidden, vec![0x03]);
    // Extended: AER at 0x100 hidden behind an ID-0 header, DSN kept, SR-IOV hidden.
    let head = r.dev.read_config_register(0x100 / 4);
    assert_eq!(head & 0xffff, 0);
    assert_eq!(head >> 20, 0x148);
    let dsn = r.dev.read_config_register(0x148 / 4);
    assert_eq!(dsn & 0xffff, 0x0003);
    assert_eq!(dsn >> 20, 0, "SR-IOV is not linked");
}

#[test]
fn passthrough_capabilities_read_and_write_the_hardware() {
    let mut r = rig(FakeVfioDevice::gpu());
    // PCIe device control (cap 0x60 + 8) comes live from the hardware.
    r.fake.poke(CONFIG_REGION, 0x68, &[0x5f, 0x29]);
    assert_eq!(r.dev.read_config_register(0x68 / 4) & 0xffff, 0x295f);
    r.fake.take_ops();
    r.write(0x68, &0x2810u16.to_le_bytes());
    assert_eq!(
        r.fake.take_ops(),
        vec![FakeOp::RegionWrite {
            index: CONFIG_REGION,
            offset: 0x68,
            data: vec![0x10, 0x28]
        }]
    );
    // The header stays ours even in a dword write.
    r.write(0x60, &[0xff; 4]);
    assert_eq!(r.read8(0x60), 0x10);
    assert_eq!(r.read8(0x61), 0xa0);
}

#[test]
fn clique_capability_is_appended_at_0xc8() {
    let mut r = try_rig(FakeVfioDevice::gpu(), None, Some(7)).unwrap();
    let caps = r.caps();
    assert_eq!(caps.last(), Some(&(0x09, 0xc8)));
    let bytes: Vec<u8> = (0xc8..0xd0).map(|o| r.read8(o)).collect();
    assert_eq!(bytes, vec![0x09, 0x00, 0x08, b'P', b'2', b'P', 7 << 3, 0]);
    r.write(0xc8, &[0; 4]);
    r.write(0xcc, &[0; 4]);
    assert_eq!(r.read8(0xce), 7 << 3, "read-only");
    assert_eq!(pci::vfio::clique::parse_clique_capability(&bytes), Some(7));
    assert!(matches!(
        try_rig(FakeVfioDevice::gpu(), None, Some(16)).err(),
        Some(VfioPciError::Config(VfioConfigError::CliqueOutOfRange(16)))
    ));
    assert!(matches!(
        try_rig(FakeVfioDevice::edu(), None, Some(1)).err(),
        Some(VfioPciError::Config(VfioConfigError::CliqueNotNvidia(
            0x1234
        )))
    ));
}

#[test]
fn large_and_small_bars_place() {
    for bar1 in [32 * GIB, 128 * GIB] {
        let r = try_rig(FakeVfioDevice::gpu_with_bar1(bar1), None, None).unwrap();
        let b1 = r.bar(1);
        assert_eq!(b1.size, bar1);
        assert_eq!(b1.addr % bar1, 0);
        assert!(b1.addr >= 4 * GIB, "64-bit window");
        let b3 = r.bar(3);
        assert_eq!((b3.size, b3.addr % (32 * MIB)), (32 * MIB, 0));
        let b0 = r.bar(0);
        assert!(
            b0.addr < 4 * GIB && b0.addr.is_multiple_of(16 * MIB),
            "32-bit hole"
        );
    }
    let mut r = rig(FakeVfioDevice::tiny_bar());
    let b0 = r.bar(0);
    assert_eq!((b0.size, b0.addr % 4096), (256, 0));
    r.enable_memory();
    assert!(r.slots.snapshot().is_empty(), "a 256-byte BAR is trapped");
    assert!(!r
        .fake
        .take_ops()
        .iter()
        .any(|op| matches!(op, FakeOp::Mmap { .. })));
}

#[test]
fn mapped_areas_skip_the_msix_pages_and_follow_memory_decoding() {
    let mut r = rig(FakeVfioDevice::gpu());
    let maps: Vec<_> = r
        .fake
        .take_ops()
        .into_iter()
        .filter_map(|op| match op {
            FakeOp::Mmap {
                index,
                offset,
                size,
            } => Some((index, offset, size)),
            _ => None,
        })
        .collect();
    assert_eq!(
        maps,
        vec![
            (0, 0, 0xb_0000),
            (0, 0xb_2000, 16 * MIB - 0xb_2000),
            (1, 0, 128 * GIB),
            (3, 0, 32 * MIB)
        ]
    );
    assert!(r.slots.snapshot().is_empty(), "memory decoding is off");
    r.enable_memory();
    let bar0 = r.bar(0).addr;
    let mut gpas: Vec<(u64, u64)> = r.slots.snapshot().values().map(|s| (s.0, s.1)).collect();
    gpas.sort();
    assert_eq!(gpas.len(), 4);
    assert!(gpas.contains(&(bar0, 0xb_0000)));
    assert!(gpas.contains(&(bar0 + 0xb_2000, 16 * MIB - 0xb_2000)));
    assert!(r.fake.take_ops().contains(&FakeOp::RegionWrite {
        index: CONFIG_REGION,
        offset: 4,
        data: vec![0x06, 0x00]
    }));
    r.write(0x04, &0u16.to_le_bytes());
    assert!(r.slots.snapshot().is_empty());
}

/// Guest RAM of `pieces` MiB mapped in the background, each map taking `delay`.
fn slow_mapping(iommu: &Arc<FakeIommu>, pieces: u64, delay: Duration) -> BackgroundMap {
    iommu.set_map_delay(delay);
    let ram = DmaRegion {
        iova: 0,
        size: pieces * MIB,
        host: std::ptr::null_mut(),
    };
    // SAFETY: the fake IOMMU never touches the host addresses.
    unsafe { BackgroundMap::start(iommu.clone(), &[ram], MIB, None, Box::new(()), || {}) }.unwrap()
}

fn command_writes(fake: &FakeVfioDevice) -> Vec<Vec<u8>> {
    fake.take_ops()
        .into_iter()
        .filter_map(|op| match op {
            FakeOp::RegionWrite {
                index: CONFIG_REGION,
                offset: 4,
                data,
            } => Some(data),
            _ => None,
        })
        .collect()
}

#[test]
fn bus_master_enable_waits_until_guest_ram_is_mapped() {
    let iommu = Arc::new(FakeIommu::default());
    let mapping = slow_mapping(&iommu, 4, Duration::from_millis(150));
    let gate = mapping.gate();
    let mut r = gated_rig(FakeVfioDevice::gpu(), Some(10), None, Some(gate.clone())).unwrap();
    r.fake.take_ops();
    // Memory decoding alone needs no DMA: it goes through at once.
    r.write(0x04, &0x0002u16.to_le_bytes());
    assert!(!gate.is_open(), "four 150 ms maps cannot have finished");
    assert_eq!(command_writes(&r.fake), vec![vec![0x02, 0x00]]);
    r.write(0x04, &0x0006u16.to_le_bytes());
    assert!(gate.is_open(), "the write returned before RAM was mapped");
    assert_eq!(iommu.snapshot().len(), 4);
    assert_eq!(command_writes(&r.fake), vec![vec![0x06, 0x00]]);
    assert_eq!(r.read8(0x04) & 0x04, 0x04);
    // Once mapped, nothing waits.
    r.write(0x04, &0x0002u16.to_le_bytes());
    r.write(0x04, &0x0006u16.to_le_bytes());
    assert_eq!(command_writes(&r.fake).len(), 2);
}

#[test]
fn a_device_left_mastering_by_its_last_user_starts_with_bus_master_off() {
    // No reset method, and its last user left memory decoding and bus mastering on.
    let fake = FakeVfioDevice::gpu();
    fake.poke(CONFIG_REGION, 4, &0x0006u16.to_le_bytes());
    let r = rig(fake);
    let mut command = [0u8; 2];
    r.fake.region_read(CONFIG_REGION, 4, &mut command).unwrap();
    assert_eq!(u16::from_le_bytes(command) & 0x4, 0, "bus master still on");
}

#[test]
fn bus_master_enable_stays_clear_when_mapping_fails() {
    let iommu = Arc::new(FakeIommu::default());
    iommu.refuse_from(3 * MIB);
    let mapping = slow_mapping(&iommu, 4, Duration::from_millis(20));
    let mut r = gated_rig(FakeVfioDevice::gpu(), Some(10), None, Some(mapping.gate())).unwrap();
    r.fake.take_ops();
    // A dword write of command and status, as Linux's pci_set_master does not
    // but firmware may.
    r.write(0x04, &0x0000_0006u32.to_le_bytes());
    assert_eq!(command_writes(&r.fake), vec![vec![0x02, 0x00]]);
    assert_eq!(r.read8(0x04) & 0x04, 0, "the guest sees the bit clear");
    assert!(iommu.snapshot().is_empty(), "nothing stays mapped");
}

#[test]
fn trapped_bar_accesses_reach_the_region_and_are_counted() {
    let mut r = rig(FakeVfioDevice::gpu());
    let bar0 = r.bar(0).addr;
    r.fake.poke(0, 0xb_1800, &[1, 2, 3, 4]);
    let mut data = [0u8; 4];
    r.dev.read_bar(bar0, 0xb_1800, &mut data);
    assert_eq!(
        data,
        [1, 2, 3, 4],
        "the PBA page beyond the PBA is the device's"
    );
    r.dev.write_bar(bar0, 0x10, &[9; 4]);
    let io = r.bar(5).addr;
    r.dev.read_bar(io, 0, &mut data);
    let counters: std::collections::BTreeMap<_, _> =
        r.dev.counters().snapshot().into_iter().collect();
    assert_eq!(counters["mmio_reads"], 1);
    assert_eq!(counters["mmio_writes"], 1);
    assert_eq!(counters["pio_reads"], 1);
    // Unknown base: harmless.
    r.dev.read_bar(0x1234, 0, &mut data);
    assert_eq!(data, [0xff; 4]);
}

const MSIX_CAP: usize = 0xa0;

#[test]
fn msix_vectors_route_mask_latch_and_deliver() {
    let mut r = rig(FakeVfioDevice::gpu());
    let bar0 = r.bar(0).addr;
    r.fake.take_ops();
    r.write(MSIX_CAP + 2, &0x8000u16.to_le_bytes());
    let ops = r.fake.take_ops();
    assert!(
        ops.contains(&FakeOp::DisableIrqs(IrqIndex::Intx)),
        "{ops:?}"
    );
    assert!(ops.contains(&FakeOp::SetIrqs {
        index: IrqIndex::Msix,
        start: 0,
        fds: vec![false; 16]
    }));
    assert!(
        !r.routing.snapshot().irqfds.contains_key(&10),
        "INTx off with MSI-X"
    );
    // Program and unmask vector 3.
    let entry = 0xb_0000 + 3 * 16;
    r.dev.write_bar(bar0, entry, &0xfee0_0000u64.to_le_bytes());
    r.dev.write_bar(bar0, entry + 8, &0x41u32.to_le_bytes());
    r.dev.write_bar(bar0, entry + 12, &0u32.to_le_bytes());
    let gsi = r.dev.msix_route().gsi(3).unwrap();
    let s = r.routing.snapshot();
    assert_eq!(s.routes[&gsi].data, 0x41);
    assert!(s.irqfds.contains_key(&gsi));
    assert!(r.fake.take_ops().contains(&FakeOp::SetIrqs {
        index: IrqIndex::Msix,
        start: 3,
        fds: vec![true]
    }));
    // Mask: the irqfd goes, the device's interrupt waits in the eventfd.
    r.dev.write_bar(bar0, entry + 12, &1u32.to_le_bytes());
    assert!(!r.routing.snapshot().irqfds.contains_key(&gsi));
    assert!(r.fake.fire(IrqIndex::Msix, 3));
    let mut pba = [0u8; 8];
    r.dev.read_bar(bar0, 0xb_1000, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 1 << 3, "pending while masked");
    // Unmask delivers the pending interrupt and clears the bit.
    r.dev.write_bar(bar0, entry + 12, &0u32.to_le_bytes());
    assert!(r.routing.snapshot().irqfds.contains_key(&gsi));
    r.dev.read_bar(bar0, 0xb_1000, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0);
    let counters: std::collections::BTreeMap<_, _> =
        r.dev.counters().snapshot().into_iter().collect();
    assert_eq!(counters["interrupts_injected"], 1);
    assert_eq!(counters["interrupts_while_masked"], 1);
    // MSI-X off: host side off, INTx back.
    r.fake.take_ops();
    r.write(MSIX_CAP + 2, &0u16.to_le_bytes());
    let ops = r.fake.take_ops();
    assert!(
        ops.contains(&FakeOp::DisableIrqs(IrqIndex::Msix)),
        "{ops:?}"
    );
    assert!(r.routing.snapshot().resample.contains(&10));
}

#[test]
fn intx_uses_resample_and_gives_way_to_msi() {
    let mut r = rig(FakeVfioDevice::edu());
    let s = r.routing.snapshot();
    assert!(s.irqfds.contains_key(&10) && s.resample.contains(&10));
    let ops = r.fake.take_ops();
    assert!(ops.contains(&FakeOp::Reset), "reset on attach");
    assert!(ops.contains(&FakeOp::IntxUnmaskFd));
    // MSI at 0x40: address, data, enable.
    r.write(0x44, &0xfee0_0000u32.to_le_bytes());
    r.write(0x4c, &0x30u16.to_le_bytes());
    r.write(0x42, &1u16.to_le_bytes());
    let s = r.routing.snapshot();
    assert!(!s.irqfds.contains_key(&10));
    assert_eq!(
        s.routes.values().map(|m| m.data).collect::<Vec<_>>(),
        vec![0x30]
    );
    let ops = r.fake.take_ops();
    assert!(
        ops.contains(&FakeOp::SetIrqs {
            index: IrqIndex::Msi,
            start: 0,
            fds: vec![true]
        }),
        "{ops:?}"
    );

    let mut bare = rig(FakeVfioDevice::bare());
    assert_eq!(bare.read8(0x3d), 0, "no INTx: pin 0");
    assert!(bare.dev.intx().is_none());
    assert!(bare.caps().is_empty());
    assert!(
        !bare.fake.take_ops().contains(&FakeOp::Reset),
        "no reset support"
    );
}

#[test]
fn reprogramming_a_bar_moves_its_slots() {
    let mut r = rig(FakeVfioDevice::gpu());
    r.enable_memory();
    let old = r.bar(3).addr;
    let new = old + 0x1_0000_0000;
    assert!(
        r.write(0x1c, &(new as u32).to_le_bytes()).is_none(),
        "low half unchanged"
    );
    let moved = r.write(0x20, &((new >> 32) as u32).to_le_bytes()).unwrap();
    assert_eq!((moved.index, moved.old, moved.new), (3, old, new));
    r.dev.move_bar(&moved).unwrap();
    let gpas: Vec<u64> = r.slots.snapshot().values().map(|s| s.0).collect();
    assert!(gpas.contains(&new) && !gpas.contains(&old), "{gpas:x?}");
    assert_eq!(r.slots.snapshot().len(), 4);
}

#[test]
fn detach_releases_everything() {
    let mut r = rig(FakeVfioDevice::gpu());
    r.enable_memory();
    let bar0 = r.bar(0).addr;
    r.write(MSIX_CAP + 2, &0x8000u16.to_le_bytes());
    r.dev.write_bar(bar0, 0xb_0000 + 12, &0u32.to_le_bytes());
    assert!(!r.slots.snapshot().is_empty());
    assert!(!r.routing.snapshot().routes.is_empty());
    r.dev.detach();
    assert!(r.slots.snapshot().is_empty());
    assert_eq!(r.routing.snapshot(), Default::default());
    let ops = r.fake.take_ops();
    let maps = 4;
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, FakeOp::Munmap { .. }))
            .count(),
        maps
    );
    assert!(ops.contains(&FakeOp::DisableIrqs(IrqIndex::Msix)));
    assert_eq!(ops.last(), Some(&FakeOp::Reset), "reset on detach");
    // Idempotent, and the device ignores the guest afterwards.
    r.dev.detach();
    r.write(MSIX_CAP + 2, &0x8000u16.to_le_bytes());
    assert!(r.fake.take_ops().is_empty());
    drop(r.dev);
}

/// A fixture `/sys`: group 7 with a GPU, its audio function and a bridge.
fn fixture_sysfs(audio_driver: Option<&str>) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let root = std::env::temp_dir().join(format!(
        "vfio-sysfs-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&root);
    let member = |bdf: &str, driver: Option<&str>, class: &str| {
        let dev = root.join("bus/pci/devices").join(bdf);
        std::fs::create_dir_all(&dev).unwrap();
        std::os::unix::fs::symlink("../../../../kernel/iommu_groups/7", dev.join("iommu_group"))
            .unwrap();
        if let Some(d) = driver {
            std::os::unix::fs::symlink(format!("../../../bus/pci/drivers/{d}"), dev.join("driver"))
                .unwrap();
        }
        std::fs::write(dev.join("class"), format!("{class}\n")).unwrap();
        std::fs::create_dir_all(root.join("kernel/iommu_groups/7/devices").join(bdf)).unwrap();
    };
    member("0000:01:00.0", Some("vfio-pci"), "0x030200");
    member("0000:01:00.1", audio_driver, "0x040300");
    member("0000:00:01.0", Some("pcieport"), "0x060400");
    root
}

fn set(bdfs: &[&str]) -> BTreeSet<String> {
    bdfs.iter().map(|s| s.to_string()).collect()
}

#[test]
fn iommu_groups_go_to_one_vm_whole() {
    let gpu = "0000:01:00.0";
    let root = fixture_sysfs(Some("vfio-pci"));
    let cleanup = |root: &Path| std::fs::remove_dir_all(root).unwrap();
    let alone = check_group(&root, gpu, &set(&[gpu])).unwrap();
    assert_eq!(
        (alone.group, alone.idle),
        (7, vec!["0000:01:00.1".to_string()]),
        "a member on vfio-pci not given to the VM is accepted, and named"
    );
    let whole = check_group(&root, gpu, &set(&[gpu, "0000:01:00.1"])).unwrap();
    assert_eq!((whole.group, whole.idle), (7, vec![]));
    cleanup(&root);

    let root = fixture_sysfs(Some("snd_hda_intel"));
    let err = check_group(&root, gpu, &set(&[gpu])).unwrap_err();
    assert!(matches!(err, GroupError::NotViable { ref driver, .. } if driver == "snd_hda_intel"));
    assert!(err.to_string().contains("0000:01:00.1"));
    cleanup(&root);

    let root = fixture_sysfs(None);
    assert_eq!(
        check_group(&root, gpu, &BTreeSet::new()).map(|c| (c.group, c.idle)),
        Ok((7, vec![])),
        "unbound members are fine"
    );
    cleanup(&root);
    assert!(matches!(
        check_group(Path::new("/nonexistent"), gpu, &BTreeSet::new()),
        Err(GroupError::NoGroup { .. })
    ));
}

#[test]
fn masked_msi_vector_shows_pending_and_delivers_on_unmask() {
    let mut r = rig(FakeVfioDevice::edu());
    // 64-bit MSI with per-vector masking at 0x40: mask 0x50, pending 0x54.
    r.write(0x44, &0xfee0_0000u32.to_le_bytes());
    r.write(0x4c, &0x30u16.to_le_bytes());
    r.write(0x42, &1u16.to_le_bytes());
    let gsi = r.dev.msi_route().gsi(0).unwrap();
    assert!(r.routing.snapshot().irqfds.contains_key(&gsi));
    r.write(0x50, &1u32.to_le_bytes());
    assert!(!r.routing.snapshot().irqfds.contains_key(&gsi));
    assert!(r.fake.fire(IrqIndex::Msi, 0));
    assert_eq!(
        r.dev.read_config_register(0x54 / 4),
        1,
        "pending while masked"
    );
    r.write(0x50, &0u32.to_le_bytes());
    assert!(r.routing.snapshot().irqfds.contains_key(&gsi));
    assert_eq!(r.dev.read_config_register(0x54 / 4), 0);
    let counters: std::collections::BTreeMap<_, _> =
        r.dev.counters().snapshot().into_iter().collect();
    assert_eq!(counters["interrupts_injected"], 1);
}
