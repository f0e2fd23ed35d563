//! Attach and detach against `pci::vfio::fake` devices: no KVM, no VFIO.

use super::testing::FakeVfioHost;
use super::*;
use devices::Bus;
use form_vm_allocator::GuestLayout;
use pci::bus::{config_read, config_write};
use pci::vfio::fake::{FakeRouting, FakeSlots, FakeVfioDevice};
use std::sync::atomic::Ordering;
use vm_memory::GuestAddress;

const EDU: &str = "/sys/bus/pci/devices/0000:00:03.0";
const GPU: &str = "/sys/bus/pci/devices/0000:01:00.0";
const BARE: &str = "/sys/bus/pci/devices/0000:02:00.0";

struct Rig {
    host: Arc<FakeVfioHost>,
    slots: Arc<FakeSlots>,
    routing: Arc<FakeRouting>,
    vfio: VfioDevices,
    pci: PciDevices,
    buses: IoBuses,
    memory: GuestMemoryMmap,
}

impl Rig {
    fn new(host: FakeVfioHost) -> Rig {
        let host = Arc::new(host);
        let slots = Arc::new(FakeSlots::default());
        let routing = Arc::new(FakeRouting::default());
        let buses = IoBuses {
            pio: Arc::new(Bus::new()),
            mmio: Arc::new(Bus::new()),
        };
        let layout = GuestLayout::new(1 << 30, 40).unwrap();
        let pci = PciDevices::attach(&layout, &buses, PciDevices::gsi_pool()).unwrap();
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vfio = VfioDevices::new(host.clone(), slots.clone(), routing.clone());
        Rig {
            host,
            slots,
            routing,
            vfio,
            pci,
            buses,
            memory,
        }
    }

    fn add(&mut self, path: &str, id: Option<&str>) -> Result<PciDeviceInfo, VfioError> {
        self.add_mapping(path, id, DmaMapOrder::Upfront)
    }

    fn add_mapping(
        &mut self,
        path: &str,
        id: Option<&str>,
        order: DmaMapOrder,
    ) -> Result<PciDeviceInfo, VfioError> {
        let config = DeviceConfig {
            path: path.into(),
            id: id.map(str::to_string),
            iommu: false,
            pci_segment: 0,
            numa_node: None,
            x_nv_gpudirect_clique: None,
        };
        let opened = self.vfio.open(None, &[config])?;
        let mut vm = VmResources {
            memory: &self.memory,
            pci: &mut self.pci,
            buses: &self.buses,
        };
        Ok(self.vfio.attach(opened, &mut vm, order)?.remove(0))
    }

    fn remove(&mut self, id: &str) -> Option<PciDeviceInfo> {
        let mut vm = VmResources {
            memory: &self.memory,
            pci: &mut self.pci,
            buses: &self.buses,
        };
        self.vfio.detach(id, &mut vm)
    }

    fn open_containers(&self) -> usize {
        self.host.containers_open.load(Ordering::SeqCst)
    }
}

fn lab_host() -> FakeVfioHost {
    FakeVfioHost::with(vec![
        (EDU, FakeVfioDevice::edu()),
        (GPU, FakeVfioDevice::gpu_with_bar1(1 << 30)),
        (BARE, FakeVfioDevice::bare()),
    ])
}

#[test]
fn an_attached_device_answers_on_the_bus_with_its_bars_trapped() {
    let mut rig = Rig::new(lab_host());
    let info = rig.add(EDU, Some("edu0")).unwrap();
    assert_eq!(
        info,
        PciDeviceInfo {
            id: "edu0".into(),
            bdf: "0000:00:01.0".into()
        }
    );
    assert_eq!(rig.open_containers(), 1);
    assert_eq!(
        rig.host.ram_mapped(),
        vec![(0, 1 << 20)],
        "guest RAM mapped"
    );
    assert_eq!(config_read(&rig.pci.bus, 1, 0, 0), 0x11e8_1234);

    // BAR0 sits in the 32-bit window and a read of it reaches the device.
    let bar0 = config_read(&rig.pci.bus, 1, 0, 4) & !0xf;
    assert!(u64::from(bar0) >= rig.pci.mmio32.base(), "{bar0:#x}");
    let mut data = [0u8; 4];
    assert!(rig.buses.mmio.read(u64::from(bar0), &mut data));
    let counters = rig.vfio.counters();
    assert_eq!(counters["edu0"]["mmio_reads"], 1, "{counters:?}");

    // INTx is wired to the slot's GSI with a resample fd.
    let routing = rig.routing.snapshot();
    let gsi = intx_gsi(1, 0);
    assert!(routing.resample.contains(&gsi), "{routing:?}");
    assert_eq!(config_read(&rig.pci.bus, 1, 0, 0xf) & 0xff, gsi);
}

/// Each piece of guest RAM takes this long to map: long enough that the
/// assertions before it ends run first.
const SLOW_MAP: std::time::Duration = std::time::Duration::from_secs(1);

fn slow_mapping_host() -> FakeVfioHost {
    let host = lab_host();
    *lock(&host.ram_map_delay) = SLOW_MAP;
    host
}

#[test]
fn a_deferred_mapping_lets_the_guest_start_and_holds_bus_master_enable() {
    let mut rig = Rig::new(slow_mapping_host());
    rig.add_mapping(EDU, Some("edu0"), DmaMapOrder::Deferred)
        .unwrap();
    assert!(
        rig.host.ram_mapped().is_empty(),
        "attach waited for the map"
    );
    let gate = rig.vfio.dma_gate().unwrap();
    assert!(!gate.is_open());
    // Memory decoding goes through at once; bus mastering waits for the map.
    config_write(&rig.pci.bus, 1, 0, 1, 0, &0x0002u16.to_le_bytes());
    assert!(rig.host.ram_mapped().is_empty());
    config_write(&rig.pci.bus, 1, 0, 1, 0, &0x0006u16.to_le_bytes());
    assert_eq!(rig.host.ram_mapped(), vec![(0, 1 << 20)], "BME went first");
    assert!(gate.is_open());
    assert_eq!(config_read(&rig.pci.bus, 1, 0, 1) & 0x6, 0x6);
}

#[test]
fn a_hotplug_during_a_deferred_mapping_waits_for_it() {
    let mut rig = Rig::new(slow_mapping_host());
    rig.add_mapping(EDU, Some("edu0"), DmaMapOrder::Deferred)
        .unwrap();
    assert!(rig.host.ram_mapped().is_empty());
    rig.add(BARE, Some("bare0")).unwrap();
    assert_eq!(rig.host.ram_mapped(), vec![(0, 1 << 20)]);
    assert_eq!(
        lock(&rig.host.ram_iommus).len(),
        1,
        "one container, mapped once"
    );
}

#[test]
fn detaching_releases_a_bus_master_enable_held_at_the_gate() {
    let host = lab_host();
    *lock(&host.ram_map_delay) = std::time::Duration::from_secs(3);
    let mut rig = Rig::new(host);
    rig.add_mapping(EDU, Some("edu0"), DmaMapOrder::Deferred)
        .unwrap();
    rig.add_mapping(BARE, Some("bare0"), DmaMapOrder::Deferred)
        .unwrap();
    let bus = rig.pci.bus.clone();
    // A vCPU turns bus mastering on and is held at the gate, holding the device.
    let vcpu = std::thread::spawn(move || {
        config_write(&bus, 1, 0, 1, 0, &0x0006u16.to_le_bytes());
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    rig.remove("edu0").unwrap();
    assert!(
        rig.host.ram_mapped().is_empty(),
        "the detach waited for the mapping"
    );
    vcpu.join().unwrap();
    assert!(!rig.vfio.dma_gate().unwrap().is_open());
}

#[test]
fn removing_the_last_device_stops_a_deferred_mapping() {
    let mut rig = Rig::new(slow_mapping_host());
    rig.add_mapping(EDU, Some("edu0"), DmaMapOrder::Deferred)
        .unwrap();
    let gate = rig.vfio.dma_gate().unwrap();
    rig.remove("edu0").unwrap();
    assert_eq!(rig.open_containers(), 0);
    assert_eq!(gate.wait().unwrap_err(), "the VM is stopping");
    assert!(rig.vfio.dma_gate().is_none());
}

#[test]
fn detaching_the_last_device_gives_everything_back() {
    let mut rig = Rig::new(lab_host());
    let first = rig.add(GPU, None).unwrap();
    let second = rig.add(BARE, None).unwrap();
    assert_eq!(first.id, "_vfio0");
    assert_eq!(second.id, "_vfio1");
    assert_eq!(second.bdf, "0000:00:02.0");
    assert_eq!(rig.host.containers_opened.load(Ordering::SeqCst), 1);
    let gpu_bar1 = config_read(&rig.pci.bus, 1, 0, 5);

    assert_eq!(rig.remove("_vfio0").unwrap().bdf, "0000:00:01.0");
    assert_eq!(config_read(&rig.pci.bus, 1, 0, 0), u32::MAX, "slot 1 empty");
    assert_eq!(rig.open_containers(), 1, "the other device keeps it");
    assert_eq!(*lock(&rig.host.declared), vec!["0000:02:00.0".to_string()]);

    assert!(rig.remove("_vfio1").is_some());
    assert_eq!(rig.open_containers(), 0, "closed with the last device");
    assert!(rig.vfio.is_empty());
    let routing = rig.routing.snapshot();
    assert!(
        routing.irqfds.is_empty() && routing.routes.is_empty(),
        "{routing:?}"
    );
    assert!(rig.slots.snapshot().is_empty());
    assert!(rig.remove("_vfio1").is_none());

    // The BAR ranges are free again: the same device lands where it was, in a
    // fresh container.
    let again = rig.add(GPU, Some("gpu")).unwrap();
    assert_eq!(again.bdf, "0000:00:01.0");
    assert_eq!(config_read(&rig.pci.bus, 1, 0, 5), gpu_bar1);
    assert_eq!(rig.host.containers_opened.load(Ordering::SeqCst), 2);
}

#[test]
fn ids_and_devices_cannot_be_given_twice() {
    let mut rig = Rig::new(lab_host());
    rig.add(EDU, Some("a")).unwrap();
    let err = rig.add(BARE, Some("a")).unwrap_err();
    assert!(matches!(err, VfioError::DuplicateId(_)), "{err}");
    assert!(err.is_bad_request());
    let err = rig.add(EDU, Some("b")).unwrap_err();
    assert!(
        err.to_string()
            .contains("0000:00:03.0) is already passed through to this VM as \"a\""),
        "{err}"
    );
    let err = rig
        .add("/sys/bus/pci/devices/0000:09:00.0", None)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("vmm-service gpu bind 0000:09:00.0"),
        "{err}"
    );
    // Nothing the refused requests did stayed behind.
    assert_eq!(rig.vfio.list().len(), 1);
    assert_eq!(*lock(&rig.host.declared), vec!["0000:00:03.0".to_string()]);
}

#[test]
fn hotplug_refuses_a_vm_whose_ram_the_iommu_cannot_reach() {
    let mut host = lab_host();
    host.iova = Some(vec![IovaRange {
        start: 0x10_0000,
        end: (1 << 39) - 1,
    }]);
    let mut rig = Rig::new(host);
    let err = rig.add(EDU, None).unwrap_err().to_string();
    assert!(err.contains("0x0-0xfffff"), "{err}");
    assert!(err.contains("[0x100000-0x7fffffffff]"), "{err}");
    assert_eq!(
        rig.open_containers(),
        0,
        "the container went with the failure"
    );
    assert!(rig.vfio.is_empty());
    assert_eq!(config_read(&rig.pci.bus, 1, 0, 0), u32::MAX);
}

#[test]
fn layout_constraints_ask_for_the_64_bit_bars() {
    let mut host = lab_host();
    host.iova = Some(vec![IovaRange {
        start: 0,
        end: (1 << 39) - 1,
    }]);
    let mut rig = Rig::new(host);
    let config = DeviceConfig {
        path: GPU.into(),
        id: None,
        iommu: false,
        pci_segment: 0,
        numa_node: None,
        x_nv_gpudirect_clique: Some(3),
    };
    let opened = rig.vfio.open(None, &[config]).unwrap();
    let (ranges, needed) = rig.vfio.layout_constraints(&opened).unwrap();
    assert_eq!(ranges.unwrap().len(), 1);
    assert_eq!(needed, (1 << 30) + (32 << 20), "BAR1 and BAR3");
}

#[test]
fn a_guest_bar_move_takes_the_trapped_region_along() {
    let mut rig = Rig::new(lab_host());
    rig.add(BARE, None).unwrap();
    // The bare device's only BAR is BAR2 (register 6).
    let old = u64::from(config_read(&rig.pci.bus, 1, 0, 6) & !0xf);
    let new = old + 0x10_0000;
    config_write(&rig.pci.bus, 1, 0, 6, 0, &(new as u32).to_le_bytes());
    let mut data = [0u8; 4];
    assert!(
        rig.buses.mmio.read(new, &mut data),
        "region at the new address"
    );
    assert!(
        !rig.buses.mmio.read(old, &mut data),
        "and gone from the old one"
    );
    // Detach finds it where the guest put it.
    rig.remove("_vfio0").unwrap();
    assert!(!rig.buses.mmio.read(new, &mut data));
}

#[test]
fn a_new_device_stays_off_bars_the_guest_moved() {
    let mut rig = Rig::new(lab_host());
    rig.add(BARE, None).unwrap();
    // The guest moves the bare device's 4 KiB BAR2 to where edu's 1 MiB BAR0 would
    // go next (the first 1 MiB boundary after it).
    let old = u64::from(config_read(&rig.pci.bus, 1, 0, 6) & !0xf);
    let next_free = (old + 0x1000).next_multiple_of(1 << 20);
    config_write(&rig.pci.bus, 1, 0, 6, 0, &(next_free as u32).to_le_bytes());
    // edu's 1 MiB BAR0 is placed around it, and both stay reachable.
    rig.add(EDU, None).unwrap();
    let edu_bar = u64::from(config_read(&rig.pci.bus, 2, 0, 4) & !0xf);
    assert!(
        edu_bar + (1 << 20) <= next_free || edu_bar >= next_free + 0x1000,
        "edu BAR0 {edu_bar:#x} overlaps the moved BAR at {next_free:#x}"
    );
    let mut data = [0u8; 4];
    assert!(rig.buses.mmio.read(next_free, &mut data));
    assert!(rig.buses.mmio.read(edu_bar, &mut data));
    // The hold was only for the placement: removing both frees everything.
    rig.remove("_vfio0").unwrap();
    rig.remove("_vfio1").unwrap();
    assert_eq!(rig.pci.mmio32.allocated_size(next_free), None);
    assert_eq!(rig.pci.mmio32.allocated_size(edu_bar), None);
}

#[test]
fn mapped_bar_areas_follow_their_slots_into_the_iommu() {
    let mut rig = Rig::new(lab_host());
    rig.add(BARE, None).unwrap();
    let iommu = rig.host.iommu.clone();
    let bar = u64::from(config_read(&rig.pci.bus, 1, 0, 6) & !0xf);
    assert!(iommu.snapshot().is_empty(), "nothing while decoding is off");

    // Memory decoding on: the BAR's page becomes a slot and an IOMMU mapping at
    // the same guest address.
    config_write(&rig.pci.bus, 1, 0, 1, 0, &2u16.to_le_bytes());
    assert_eq!(iommu.snapshot(), vec![(bar, 0x1000)]);
    let slots: Vec<(u64, u64)> = rig.slots.snapshot().values().map(|s| (s.0, s.1)).collect();
    assert_eq!(slots, iommu.snapshot());

    // The guest moves the BAR: the mapping moves with it.
    let new = bar + 0x10_0000;
    config_write(&rig.pci.bus, 1, 0, 6, 0, &(new as u32).to_le_bytes());
    assert_eq!(iommu.snapshot(), vec![(new, 0x1000)]);

    // Decoding off unmaps; on again maps; detach unmaps.
    config_write(&rig.pci.bus, 1, 0, 1, 0, &0u16.to_le_bytes());
    assert!(iommu.snapshot().is_empty());
    config_write(&rig.pci.bus, 1, 0, 1, 0, &2u16.to_le_bytes());
    assert_eq!(iommu.snapshot(), vec![(new, 0x1000)]);
    rig.remove("_vfio0").unwrap();
    assert!(iommu.snapshot().is_empty());
    assert!(rig.slots.snapshot().is_empty());
}

#[test]
fn a_bar_the_iommu_refuses_still_attaches() {
    let mut rig = Rig::new(lab_host());
    rig.host.iommu.set_refuse(true);
    rig.add(BARE, None).unwrap();
    config_write(&rig.pci.bus, 1, 0, 1, 0, &2u16.to_le_bytes());
    assert_eq!(
        rig.slots.snapshot().len(),
        1,
        "the guest still gets the slot"
    );
    assert!(rig.host.iommu.snapshot().is_empty());
}

const AUDIO: &str = "/sys/bus/pci/devices/0000:01:00.1";
const LONE_FUNCTION: &str = "/sys/bus/pci/devices/0000:03:00.1";

fn config(path: &str, id: &str) -> DeviceConfig {
    DeviceConfig {
        path: path.into(),
        id: Some(id.into()),
        iommu: false,
        pci_segment: 0,
        numa_node: None,
        x_nv_gpudirect_clique: None,
    }
}

impl Rig {
    fn add_all(&mut self, configs: &[DeviceConfig]) -> Result<Vec<PciDeviceInfo>, VfioError> {
        let opened = self.vfio.open(None, configs)?;
        let mut vm = VmResources {
            memory: &self.memory,
            pci: &mut self.pci,
            buses: &self.buses,
        };
        self.vfio.attach(opened, &mut vm, DmaMapOrder::Upfront)
    }
}

fn multifunction_host(gpu_bar1: u64) -> FakeVfioHost {
    FakeVfioHost::with(vec![
        (GPU, FakeVfioDevice::gpu_with_bar1(gpu_bar1)),
        (AUDIO, FakeVfioDevice::bare()),
        (EDU, FakeVfioDevice::edu()),
        (LONE_FUNCTION, FakeVfioDevice::bare()),
    ])
}

/// Function 0's header type, bit 7 of byte 2 of dword 3.
fn multifunction_bit(rig: &Rig, slot: u8) -> bool {
    config_read(&rig.pci.bus, slot, 0, 3) & (0x80 << 16) != 0
}

#[test]
fn a_host_slots_functions_share_a_guest_slot_and_keep_their_numbers() {
    let mut rig = Rig::new(multifunction_host(1 << 30));
    // Given audio first and with an unrelated device between: the slot still
    // comes whole, and the answers follow the order given.
    let infos = rig
        .add_all(&[
            config(AUDIO, "gpu0-f1"),
            config(EDU, "edu0"),
            config(GPU, "gpu0"),
        ])
        .unwrap();
    let bdfs: Vec<&str> = infos.iter().map(|i| i.bdf.as_str()).collect();
    assert_eq!(bdfs, ["0000:00:01.1", "0000:00:02.0", "0000:00:01.0"]);
    assert!(
        multifunction_bit(&rig, 1),
        "function 0 says the slot has more"
    );
    assert!(!multifunction_bit(&rig, 2));
    let gpu_id = config_read(&rig.pci.bus, 1, 0, 0);
    let audio_id = config_read(&rig.pci.bus, 1, 1, 0);
    assert_ne!(audio_id, u32::MAX, "function 1 answers");
    assert_ne!(gpu_id, audio_id);
    // One INTx line per slot and pin, as _PRT routes it.
    assert_eq!(
        config_read(&rig.pci.bus, 1, 0, 0xf) & 0xff,
        intx_gsi(1, 0),
        "the GPU's line"
    );
    assert_eq!(rig.vfio.ids_in_slot(0, 1), ["gpu0-f1", "gpu0"]);
    let listed: Vec<(String, u8)> = rig
        .vfio
        .list()
        .into_iter()
        .map(|(info, at)| (info.bdf, at.slot))
        .collect();
    assert_eq!(
        listed,
        [
            ("0000:00:01.0".to_string(), 1),
            ("0000:00:01.1".to_string(), 1),
            ("0000:00:02.0".to_string(), 2)
        ]
    );

    // Off the bus as the guest ejects the slot: every function, 0 last.
    for id in rig.vfio.ids_in_slot(0, 1) {
        rig.remove(&id).unwrap();
    }
    assert_eq!(config_read(&rig.pci.bus, 1, 0, 0), u32::MAX);
    assert_eq!(config_read(&rig.pci.bus, 1, 1, 0), u32::MAX);
    assert_eq!(rig.open_containers(), 1, "edu keeps the container");
}

#[test]
fn functions_without_their_function_0_get_slots_of_their_own() {
    let mut rig = Rig::new(multifunction_host(1 << 30));
    let infos = rig
        .add_all(&[config(AUDIO, "audio"), config(LONE_FUNCTION, "lone")])
        .unwrap();
    let bdfs: Vec<&str> = infos.iter().map(|i| i.bdf.as_str()).collect();
    assert_eq!(bdfs, ["0000:00:01.0", "0000:00:02.0"]);
    assert!(!multifunction_bit(&rig, 1));
    // Added later, in a request of its own, the GPU gets a slot of its own too:
    // the guest already scanned the audio function's slot.
    assert_eq!(rig.add(GPU, Some("gpu0")).unwrap().bdf, "0000:00:03.0");
}

#[test]
fn a_slot_that_fails_half_way_leaves_nothing_on_the_bus() {
    // A BAR1 no window can hold: function 0 fails after function 1 went in.
    let mut rig = Rig::new(multifunction_host(1 << 50));
    let err = rig
        .add_all(&[config(GPU, "gpu0"), config(AUDIO, "gpu0-f1")])
        .unwrap_err();
    assert!(
        matches!(err, VfioError::Bars { ref id, .. } if id == "gpu0"),
        "{err}"
    );
    for function in 0..8 {
        assert_eq!(config_read(&rig.pci.bus, 1, function, 0), u32::MAX);
    }
    assert!(rig.vfio.is_empty());
    assert_eq!(rig.open_containers(), 0);
    assert!(lock(&rig.host.declared).is_empty(), "nothing left declared");
    assert_eq!(rig.pci.free_slot().unwrap(), 1);
}

#[test]
fn the_hosts_request_for_a_device_reaches_the_vmm_until_it_lets_go() {
    let mut rig = Rig::new(lab_host());
    rig.add(EDU, Some("edu0")).unwrap();
    rig.add(BARE, Some("bare0")).unwrap();
    assert_eq!(rig.vfio.host_request_fds().len(), 2, "one per device");
    assert!(rig.vfio.host_requests().is_empty(), "nobody asked yet");

    // The kernel signals the request when the host unbinds the device.
    let bare = lock(&rig.host.devices)[std::path::Path::new(BARE)].clone();
    assert!(bare.fire(pci::vfio::ops::IrqIndex::Req, 0), "registered");
    assert_eq!(rig.vfio.host_requests(), ["bare0"]);
    assert!(rig.vfio.host_requests().is_empty(), "read once");

    bare.take_ops();
    rig.remove("bare0").unwrap();
    assert!(
        bare.take_ops()
            .contains(&pci::vfio::fake::FakeOp::DisableIrqs(
                pci::vfio::ops::IrqIndex::Req
            )),
        "unregistered on detach"
    );
    assert!(!bare.fire(pci::vfio::ops::IrqIndex::Req, 0));
    assert_eq!(rig.vfio.host_request_fds().len(), 1);
}

#[test]
fn a_device_on_a_nodes_root_bus_draws_its_bars_from_that_buses_windows() {
    let host = Arc::new(lab_host());
    let mut vfio = VfioDevices::new(
        host.clone(),
        Arc::new(FakeSlots::default()),
        Arc::new(FakeRouting::default()),
    );
    let configs = [
        DeviceConfig {
            numa_node: Some(1),
            ..config(GPU, "gpu0")
        },
        // No INTx: the fake routing refuses two irqfds on one GSI, and slot 1
        // of either bus raises the same line.
        config(BARE, "bare0"),
    ];
    let opened = vfio.open(None, &configs).unwrap();
    let needs = super::super::pci_roots::root_bus_needs(&opened);
    assert_eq!(needs.iter().map(|n| n.bus).collect::<Vec<_>>(), [0x10]);
    let layout = GuestLayout::new(1 << 30, 40)
        .unwrap()
        .with_pci_roots(&needs)
        .unwrap();
    let buses = IoBuses {
        pio: Arc::new(Bus::new()),
        mmio: Arc::new(Bus::new()),
    };
    let mut pci = PciDevices::attach(&layout, &buses, PciDevices::gsi_pool()).unwrap();
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let infos = vfio
        .attach(
            opened,
            &mut VmResources {
                memory: &memory,
                pci: &mut pci,
                buses: &buses,
            },
            DmaMapOrder::Upfront,
        )
        .unwrap();
    let bdfs: Vec<&str> = infos.iter().map(|i| i.bdf.as_str()).collect();
    assert_eq!(bdfs, ["0000:10:01.0", "0000:00:01.0"]);

    let bus10 = pci.segment().bus(0x10).unwrap().clone();
    assert_eq!(
        config_read(&bus10, 1, 0, 0),
        0x2330_10de,
        "the GPU on bus 0x10"
    );
    assert_eq!(config_read(&pci.bus, 1, 0, 0), 0x1234_8086, "bare on bus 0");
    let (pci0, pc10) = (layout.pci_roots()[0], layout.pci_roots()[1]);
    let inside = |r: form_vm_allocator::MemoryRegion, addr: u64| r.start <= addr && addr < r.end();
    let gpu = vfio.device("gpu0").unwrap();
    let gpu_bars = lock(&gpu).bars();
    assert_eq!(gpu_bars.len(), 4, "{gpu_bars:?}");
    for bar in &gpu_bars {
        let (mine, bus0s) = match bar.kind {
            BarKind::Memory32 => (pc10.mmio32, pci0.mmio32),
            BarKind::Memory64 => (pc10.mmio64, pci0.mmio64),
            BarKind::Io => (pc10.io, pci0.io),
        };
        assert!(inside(mine, bar.addr), "{bar:?} outside {mine:?}");
        assert!(!inside(bus0s, bar.addr), "{bar:?} inside PCI0's {bus0s:?}");
    }
    let bare = vfio.device("bare0").unwrap();
    let bare_bar = lock(&bare).bars()[0];
    assert!(inside(pci0.mmio32, bare_bar.addr), "{bare_bar:?}");

    // Detaching gives the GPU's BARs back to bus 0x10's windows.
    vfio.detach(
        "gpu0",
        &mut VmResources {
            memory: &memory,
            pci: &mut pci,
            buses: &buses,
        },
    )
    .unwrap();
    assert_eq!(config_read(&bus10, 1, 0, 0), u32::MAX);
    for bar in &gpu_bars {
        let window = pci.window_on(0x10, bar.kind).unwrap();
        assert_eq!(window.allocated_size(bar.addr), None, "{bar:?}");
    }
}
