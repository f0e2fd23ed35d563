//! The virtio-pci transport driven the way a guest driver drives it.

mod virtio_support;

use devices::virtio::{VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK, VIRTIO_RING_F_EVENT_IDX};
use pci::virtio::fake::{ActivatedQueue, FakeVirtioDevice};
use pci::virtio::NO_VECTOR;
use pci::PciDevice;
use virtio_queue::mock::MockSplitQueue;
use virtio_support::*;
use vm_memory::GuestAddress;

const FEATURE_X: u64 = 1 << 6;

fn block_like() -> FakeVirtioDevice {
    FakeVirtioDevice::new(
        VIRTIO_ID_BLOCK,
        &[256, 64],
        FEATURE_X | VIRTIO_RING_F_EVENT_IDX,
    )
}

/// Ring addresses of a queue of `size` entries at `start`, laid out by the mock
/// driver queue.
fn rings(d: &Driver, start: u64, size: u16) -> (u64, u64, u64) {
    let q = MockSplitQueue::create(&d.mem, GuestAddress(start), size);
    (q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0)
}

#[test]
fn the_driver_finds_every_structure_through_the_capabilities() {
    let mut d = Driver::new(block_like());
    let f = d.found;
    assert_eq!(
        (f.common, f.isr, f.device, f.notify, f.notify_multiplier),
        (0x0, 0x1000, 0x2000, 0x3000, 4)
    );
    assert_eq!((f.msix_table, f.msix_pba), (0x4000, 0x6000));
    assert_eq!(d.common_read(NUM_QUEUES, 2), 2);
    assert_eq!(d.notify_addr(0), BAR0 + 0x3000);
    assert_eq!(d.notify_addr(1), BAR0 + 0x3004);
    // One ioeventfd per queue, at exactly those addresses.
    assert_eq!(d.events.addresses(), vec![BAR0 + 0x3000, BAR0 + 0x3004]);
}

#[test]
fn full_init_activates_with_the_programmed_queues_and_reset_stops_the_device() {
    let mut d = Driver::new(block_like());
    let offered = d.device_features();
    assert_eq!(
        offered,
        FEATURE_X | VIRTIO_RING_F_EVENT_IDX | VIRTIO_F_VERSION_1
    );
    let wanted = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
    assert_eq!(d.negotiate(wanted), ACKNOWLEDGE | DRIVER | FEATURES_OK);

    d.enable_msix(3);
    d.common_write(CONFIG_MSIX_VECTOR, 2, 0);
    assert_eq!(d.common_read(CONFIG_MSIX_VECTOR, 2), 0);

    d.common_write(QUEUE_SELECT, 2, 0);
    assert_eq!(d.common_read(QUEUE_SIZE, 2), 256);
    let q0 = rings(&d, 0x4000, 16);
    d.setup_queue(0, 16, q0, 1);
    // Queue 1 lives in the second RAM region.
    let q1 = rings(&d, 0x2_0000, 64);
    d.setup_queue(1, 64, q1, 2);
    d.common_write(QUEUE_SELECT, 2, 1);
    assert_eq!(d.common_read(QUEUE_MSIX_VECTOR, 2), 2);
    assert_eq!(d.common_read(QUEUE_DESC, 8), q1.0);
    assert!(d.state.lock().unwrap().activations.is_empty());

    d.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(d.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(d.dev.is_active());
    {
        let s = d.state.lock().unwrap();
        assert_eq!(s.activations.len(), 1);
        let a = &s.activations[0];
        assert_eq!(a.acked_features, wanted);
        let expect = |index, size, (desc, avail, used): (u64, u64, u64)| ActivatedQueue {
            index,
            size,
            desc,
            avail,
            used,
            event_idx: true,
            valid: true,
        };
        assert_eq!(a.queues, vec![expect(0, 16, q0), expect(1, 64, q1)]);
    }

    // A trapped kick on queue 1's notification address reaches the device's eventfd.
    let notify = d.notify_addr(1) - BAR0;
    d.write(notify, 2, 1);
    {
        let s = d.state.lock().unwrap();
        let (_, kick) = s.kicks.iter().find(|(i, _)| *i == 1).unwrap();
        assert_eq!(kick.read().unwrap(), 1);
    }

    // The device interrupts queue 1: ISR bit 0 and vector 2 (masked: latched).
    let interrupt = d.state.lock().unwrap().interrupt.clone().unwrap();
    d.mask_vector(2, true);
    interrupt.notify_queue(1).unwrap();
    assert_eq!(d.pending(), 1 << 2);
    assert_eq!(d.read(d.found.isr, 1), 1);
    assert_eq!(d.read(d.found.isr, 1), 0, "ISR clears on read");
    d.mask_vector(2, false);
    assert_eq!(d.pending(), 0, "delivered on unmask");
    let gsi = d.dev.msix_route().gsi(2).unwrap();
    assert_eq!(
        d.routing.snapshot().routes.get(&gsi).map(|m| m.data),
        Some(0x42)
    );

    // Reset.
    let resets = d.state.lock().unwrap().resets;
    let generation = d.common_read(CONFIG_GENERATION, 1);
    d.set_status(0);
    assert_eq!(d.status(), 0);
    assert!(!d.dev.is_active());
    assert_eq!(d.state.lock().unwrap().resets, resets + 1);
    assert!(d.state.lock().unwrap().interrupt.is_none());
    assert_ne!(d.common_read(CONFIG_GENERATION, 1), generation);
    d.common_write(QUEUE_SELECT, 2, 0);
    assert_eq!(d.common_read(QUEUE_SIZE, 2), 256);
    assert_eq!(d.common_read(QUEUE_ENABLE, 2), 0);
    assert_eq!(d.common_read(QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(d.common_read(CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));

    // And it comes back up.
    d.negotiate(VIRTIO_F_VERSION_1);
    d.setup_queue(0, 16, q0, 1);
    d.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    let s = d.state.lock().unwrap();
    assert_eq!(s.activations.len(), 2);
    assert_eq!(s.activations[1].queues.len(), 1, "only queue 0 enabled");
    assert!(!s.activations[1].queues[0].event_idx);
}

#[test]
fn features_ok_is_refused_for_unoffered_features_or_without_version_1() {
    for bad in [
        VIRTIO_F_VERSION_1 | 1 << 7,
        FEATURE_X,
        VIRTIO_F_VERSION_1 | 1 << 63,
    ] {
        let mut d = Driver::new(block_like());
        assert_eq!(d.negotiate(bad), ACKNOWLEDGE | DRIVER, "features {bad:#x}");
        let q0 = rings(&d, 0x4000, 16);
        d.setup_queue(0, 16, q0, NO_VECTOR);
        d.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(d.status() & (FEATURES_OK | DRIVER_OK), 0);
        assert!(d.state.lock().unwrap().activations.is_empty());
    }
}

#[test]
fn rings_outside_guest_memory_set_needs_reset_and_interrupt_the_config_vector() {
    let mut d = Driver::new(block_like());
    d.negotiate(VIRTIO_F_VERSION_1);
    d.enable_msix(3);
    d.mask_vector(0, true);
    d.common_write(CONFIG_MSIX_VECTOR, 2, 0);
    // The used ring runs into the hole between the two RAM regions.
    d.setup_queue(0, 16, (0x4000, 0x4100, 0xffc0), NO_VECTOR);
    d.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_ne!(d.status() & NEEDS_RESET, 0);
    assert!(!d.dev.is_active());
    assert!(d.state.lock().unwrap().activations.is_empty());
    assert_eq!(d.pending(), 1, "config change on vector 0");
    assert_eq!(d.read(d.found.isr, 1), 2);
    // Reset recovers.
    d.set_status(0);
    assert_eq!(d.status(), 0);
}

#[test]
fn misaligned_rings_and_a_failing_device_set_needs_reset() {
    let mut d = Driver::new(block_like());
    d.negotiate(VIRTIO_F_VERSION_1);
    d.setup_queue(0, 16, (0x4008, 0x4100, 0x4200), NO_VECTOR);
    d.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_ne!(d.status() & NEEDS_RESET, 0);
    assert!(d.state.lock().unwrap().activations.is_empty());

    let mut d = Driver::new(block_like().failing());
    d.negotiate(VIRTIO_F_VERSION_1);
    let q0 = rings(&d, 0x4000, 16);
    d.setup_queue(0, 16, q0, NO_VECTOR);
    d.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(d.state.lock().unwrap().activations.len(), 1);
    assert_ne!(d.status() & NEEDS_RESET, 0);
    assert!(!d.dev.is_active());
}

#[test]
fn the_pci_cfg_window_negotiates_like_bar0() {
    let mut d = Driver::new(block_like());
    // Find the PCI_CFG capability (cfg_type 5).
    let mut cap = usize::from(d.config_u8(0x34));
    while d.config_u8(cap) != 0x09 || d.config_u8(cap + 3) != 5 {
        cap = usize::from(d.config_u8(cap + 1));
        assert_ne!(cap, 0, "no PCI_CFG capability");
    }
    let reg = |f: usize| (cap + f) / 4;
    let dev = &mut d.dev;
    dev.write_config_register(reg(4), 0, &[0]);
    dev.write_config_register(reg(12), 0, &1u32.to_le_bytes());
    dev.write_config_register(reg(8), 0, &(DEVICE_STATUS as u32).to_le_bytes());
    dev.write_config_register(reg(16), 0, &[ACKNOWLEDGE]);
    assert_eq!(
        dev.read_config_register(reg(16)) & 0xff,
        u32::from(ACKNOWLEDGE)
    );
    assert_eq!(d.status(), ACKNOWLEDGE);
}

#[test]
fn dropping_the_device_unregisters_ioeventfds_and_frees_gsis() {
    let mut d = Driver::new(block_like());
    d.enable_msix(3);
    assert_eq!(d.routing.snapshot().allocated.len(), 3);
    let Driver {
        dev,
        routing,
        events,
        state,
        ..
    } = d;
    drop(dev);
    assert!(events.addresses().is_empty());
    let s = routing.snapshot();
    assert!(s.allocated.is_empty() && s.irqfds.is_empty() && s.routes.is_empty());
    assert_eq!(state.lock().unwrap().resets, 1);
}

#[test]
fn on_the_bus_the_io_thread_interrupts_while_a_vcpu_holds_the_transport() {
    use pci::device::PciBarRegion;
    use pci::{PciBus, SharedPciDevice};
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::Duration;

    let mut d = Driver::new(block_like());
    d.negotiate(VIRTIO_F_VERSION_1);
    d.enable_msix(3);
    let q0 = rings(&d, 0x4000, 16);
    d.setup_queue(0, 16, q0, 1);
    d.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    let interrupt = d.state.lock().unwrap().interrupt.clone().unwrap();

    let transport = Arc::new(Mutex::new(d.dev));
    let shared: SharedPciDevice = transport.clone();
    let mut bus = PciBus::new();
    bus.add_device(3, shared.clone()).unwrap();
    let mmio = devices::Bus::new();
    mmio.insert(
        Arc::new(Mutex::new(PciBarRegion::new(shared))),
        BAR0,
        pci::VIRTIO_PCI_BAR_SIZE,
    )
    .unwrap();
    let mut status = [0u8; 1];
    assert!(mmio.read(BAR0 + DEVICE_STATUS, &mut status));
    assert_eq!(status[0], ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);

    // A vCPU is inside the transport; the device's I/O thread still gets through.
    let held = transport.lock().unwrap();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        interrupt.notify_queue(0).unwrap();
        interrupt.notify_config().unwrap();
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(Duration::from_secs(10))
        .expect("the interrupt path waited on the transport lock");
    drop(held);
    let mut isr = [0u8; 1];
    assert!(mmio.read(BAR0 + 0x1000, &mut isr));
    assert_eq!(isr[0], 3);
}
