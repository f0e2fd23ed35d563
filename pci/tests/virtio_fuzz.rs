//! Random guest behaviour against the virtio-pci transport: config space and BAR0
//! accesses of any size at any offset, and driver sequences with random queue
//! layouts. The transport must never panic, and the device must never be activated
//! with a queue whose rings are misaligned or not entirely in guest RAM.

mod virtio_support;

use devices::virtio::{VIRTIO_F_VERSION_1, VIRTIO_ID_NET, VIRTIO_RING_F_EVENT_IDX};
use pci::virtio::fake::{ActivatedQueue, FakeVirtioDevice};
use pci::virtio::layout::notify_addr;
use pci::PciDevice;
use proptest::prelude::*;
use virtio_support::*;

const MAX_SIZES: [u16; 2] = [256, 64];
/// The fuzzed guest's RAM (see `guest_memory`): two regions with a hole.
const RAM: [(u64, u64); 2] = [(0, 0x1_0000), (0x2_0000, 0x1_0000)];

#[derive(Debug, Clone)]
enum Op {
    ConfigRead {
        reg: usize,
    },
    ConfigWrite {
        reg: usize,
        offset: u64,
        data: Vec<u8>,
    },
    BarRead {
        offset: u64,
        len: usize,
        wrong_base: bool,
    },
    BarWrite {
        offset: u64,
        data: Vec<u8>,
        wrong_base: bool,
    },
    Negotiate {
        features: u64,
    },
    SetupQueue {
        queue: u16,
        size: u16,
        rings: (u64, u64, u64),
        vector: u16,
    },
    DriverOk,
    Reset,
    DeviceInterrupt {
        queue: Option<u16>,
    },
}

fn bar_offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..0x40,
        0x1000u64..0x1008,
        0x2000u64..0x2010,
        0x3000u64..0x3010,
        0x4000u64..0x4040,
        0x6000u64..0x6010,
        0u64..0x9000,
        any::<u64>(),
        (u64::MAX - 16)..=u64::MAX,
    ]
}

fn guest_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..0x3_1000,
        2 => 0xf000u64..0x1_0100,
        2 => 0x2_f000u64..0x3_0100,
        1 => any::<u64>(),
        1 => (u64::MAX - 0x1000)..=u64::MAX,
    ]
}

fn queue_size() -> impl Strategy<Value = u16> {
    prop_oneof![(0u32..10).prop_map(|s| 1u16 << s), any::<u16>(),]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..10)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0usize..1100).prop_map(|reg| Op::ConfigRead { reg }),
        1 => (
            prop_oneof![0usize..64, 0usize..1100, any::<usize>()],
            0u64..6,
            bytes()
        )
            .prop_map(|(reg, offset, data)| Op::ConfigWrite { reg, offset, data }),
        1 => (bar_offset(), 0usize..=8, prop::bool::weighted(0.05)).prop_map(
            |(offset, len, wrong_base)| Op::BarRead {
                offset,
                len,
                wrong_base
            }
        ),
        3 => (bar_offset(), bytes(), prop::bool::weighted(0.05)).prop_map(
            |(offset, data, wrong_base)| Op::BarWrite {
                offset,
                data,
                wrong_base
            }
        ),
        2 => prop_oneof![
            Just(VIRTIO_F_VERSION_1),
            Just(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX),
            any::<u64>(),
        ]
        .prop_map(|features| Op::Negotiate { features }),
        3 => (
            0u16..3,
            queue_size(),
            (guest_addr(), guest_addr(), guest_addr()),
            prop_oneof![0u16..4, any::<u16>()]
        )
            .prop_map(|(queue, size, rings, vector)| Op::SetupQueue {
                queue,
                size,
                rings,
                vector
            }),
        2 => Just(Op::DriverOk),
        1 => Just(Op::Reset),
        1 => prop::option::of(any::<u16>()).prop_map(|queue| Op::DeviceInterrupt { queue }),
    ]
}

/// Whether `len` bytes at `addr` lie inside one RAM region (the regions are not
/// adjacent, so a range spanning two is not in RAM).
fn in_ram(addr: u64, len: u64) -> bool {
    RAM.iter().any(|&(start, size)| {
        addr >= start && addr.checked_add(len).is_some_and(|end| end <= start + size)
    })
}

/// The transport's promise, checked independently of virtio-queue.
fn queue_is_sound(q: &ActivatedQueue) -> bool {
    let size = u64::from(q.size);
    let max = MAX_SIZES.get(usize::from(q.index)).copied().unwrap_or(0);
    q.valid
        && q.size.is_power_of_two()
        && q.size <= max
        && q.desc.is_multiple_of(16)
        && q.avail.is_multiple_of(2)
        && q.used.is_multiple_of(4)
        && in_ram(q.desc, 16 * size)
        && in_ram(q.avail, 6 + 2 * size)
        && in_ram(q.used, 6 + 8 * size)
}

fn apply(d: &mut Driver, op: Op) {
    match op {
        Op::ConfigRead { reg } => {
            d.dev.read_config_register(reg);
        }
        Op::ConfigWrite { reg, offset, data } => {
            // Like the VMM: a reported BAR move is handed back to the device.
            if let Some(moved) = d.dev.write_config_register(reg, offset, &data) {
                d.dev.move_bar(&moved).unwrap();
            }
        }
        Op::BarRead {
            offset,
            len,
            wrong_base,
        } => {
            let base = d.dev.bar0() ^ u64::from(wrong_base) << 40;
            let mut buf = vec![0u8; len];
            d.dev.read_bar(base, offset, &mut buf);
        }
        Op::BarWrite {
            offset,
            data,
            wrong_base,
        } => {
            let base = d.dev.bar0() ^ u64::from(wrong_base) << 40;
            d.dev.write_bar(base, offset, &data);
        }
        Op::Negotiate { features } => {
            d.negotiate(features);
        }
        Op::SetupQueue {
            queue,
            size,
            rings,
            vector,
        } => d.setup_queue(queue, size, rings, vector),
        Op::DriverOk => {
            let status = d.status();
            d.set_status(status | ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        }
        Op::Reset => {
            d.set_status(0);
            assert!(!d.dev.is_active());
        }
        Op::DeviceInterrupt { queue } => {
            let interrupt = d.state.lock().unwrap().interrupt.clone();
            if let Some(i) = interrupt {
                match queue {
                    Some(q) => i.notify_queue(q).unwrap(),
                    None => i.notify_config().unwrap(),
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_guests_never_panic_or_activate_a_bad_queue(
        ops in prop::collection::vec(op(), 1..64)
    ) {
        let mut d = Driver::new(FakeVirtioDevice::new(
            VIRTIO_ID_NET,
            &MAX_SIZES,
            VIRTIO_RING_F_EVENT_IDX,
        ));
        for op in ops {
            apply(&mut d, op);
            let s = d.state.lock().unwrap();
            for a in &s.activations {
                for q in &a.queues {
                    prop_assert!(queue_is_sound(q), "activated with {q:?}");
                }
                prop_assert_eq!(a.acked_features & !(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX), 0);
                prop_assert_ne!(a.acked_features & VIRTIO_F_VERSION_1, 0);
            }
            drop(s);
            // The ioeventfds sit on the notification slots of wherever BAR0 is.
            let base = d.dev.bar0();
            prop_assert_eq!(
                d.events.addresses(),
                vec![notify_addr(base, 0), notify_addr(base, 1)]
            );
            if d.dev.is_active() {
                prop_assert_ne!(d.status() & DRIVER_OK, 0);
            }
        }
        let Driver { dev, events, routing, .. } = d;
        drop(dev);
        prop_assert!(events.addresses().is_empty());
        prop_assert!(routing.snapshot().allocated.is_empty());
    }

    #[test]
    fn every_valid_layout_activates(
        q0 in (0u32..9, 0u64..0x100, 0u64..0x100, 0u64..0x100),
        event_idx in any::<bool>(),
    ) {
        // Rings placed anywhere 16/2/4-aligned inside the second region, sized to fit.
        let (shift, a, b, c) = q0;
        let size = 1u16 << shift;
        let desc = 0x2_0000 + a * 16;
        let avail = desc + 16 * u64::from(size) + b * 2;
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4) + c * 4;
        prop_assume!(in_ram(used, 6 + 8 * u64::from(size)));
        let mut d = Driver::new(FakeVirtioDevice::new(VIRTIO_ID_NET, &MAX_SIZES, VIRTIO_RING_F_EVENT_IDX));
        let features = VIRTIO_F_VERSION_1 | if event_idx { VIRTIO_RING_F_EVENT_IDX } else { 0 };
        prop_assert_eq!(d.negotiate(features) & FEATURES_OK, FEATURES_OK);
        d.setup_queue(0, size, (desc, avail, used), 0);
        d.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        prop_assert!(d.dev.is_active());
        let s = d.state.lock().unwrap();
        prop_assert_eq!(
            &s.activations[0].queues,
            &vec![ActivatedQueue { index: 0, size, desc, avail, used, event_idx, valid: true }]
        );
    }
}
