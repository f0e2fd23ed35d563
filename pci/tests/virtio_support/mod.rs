//! A virtio-pci driver model for the transport's integration tests: it finds the
//! structures through the capability list like a guest driver, and speaks to the
//! device only through config space and BAR0 accesses.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use pci::vfio::fake::FakeRouting;
use pci::virtio::fake::{FakeDeviceState, FakeIoEvents, FakeVirtioDevice};
use pci::{PciDevice, VirtioPciDevice};
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub const BAR0: u64 = 0xc000_0000;

pub const ACKNOWLEDGE: u8 = 1;
pub const DRIVER: u8 = 2;
pub const DRIVER_OK: u8 = 4;
pub const FEATURES_OK: u8 = 8;
pub const NEEDS_RESET: u8 = 0x40;

// Common configuration offsets (virtio 1.2, 4.1.4.3).
pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
pub const DEVICE_FEATURE: u64 = 0x04;
pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
pub const DRIVER_FEATURE: u64 = 0x0c;
pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
pub const NUM_QUEUES: u64 = 0x12;
pub const DEVICE_STATUS: u64 = 0x14;
pub const CONFIG_GENERATION: u64 = 0x15;
pub const QUEUE_SELECT: u64 = 0x16;
pub const QUEUE_SIZE: u64 = 0x18;
pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
pub const QUEUE_ENABLE: u64 = 0x1c;
pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
pub const QUEUE_DESC: u64 = 0x20;
pub const QUEUE_DRIVER: u64 = 0x28;
pub const QUEUE_DEVICE: u64 = 0x30;

/// Where the driver found each structure: BAR0 offsets from the capabilities.
#[derive(Debug, Default, Clone, Copy)]
pub struct Found {
    pub common: u64,
    pub notify: u64,
    pub notify_multiplier: u64,
    pub isr: u64,
    pub device: u64,
    pub msix_cap: usize,
    pub msix_table: u64,
    pub msix_pba: u64,
}

pub struct Driver {
    pub dev: VirtioPciDevice,
    pub state: Arc<Mutex<FakeDeviceState>>,
    pub routing: Arc<FakeRouting>,
    pub events: Arc<FakeIoEvents>,
    pub mem: GuestMemoryMmap<()>,
    pub found: Found,
}

/// Guest RAM with a hole: [0, 64 KiB) and [128 KiB, 192 KiB).
pub fn guest_memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x1_0000),
        (GuestAddress(0x2_0000), 0x1_0000),
    ])
    .unwrap()
}

impl Driver {
    pub fn new(device: FakeVirtioDevice) -> Self {
        let state = device.state();
        let routing = Arc::new(FakeRouting::default());
        let events = Arc::new(FakeIoEvents::default());
        let mem = guest_memory();
        let dev = VirtioPciDevice::new(
            "test0",
            Box::new(device),
            mem.clone(),
            BAR0,
            routing.clone(),
            events.clone(),
        )
        .unwrap();
        let mut d = Self {
            dev,
            state,
            routing,
            events,
            mem,
            found: Found::default(),
        };
        d.found = d.discover();
        d
    }

    pub fn config_u8(&mut self, offset: usize) -> u8 {
        (self.dev.read_config_register(offset / 4) >> ((offset % 4) * 8)) as u8
    }

    pub fn config_u32(&mut self, offset: usize) -> u32 {
        self.dev.read_config_register(offset / 4)
    }

    /// Walks the capability list as a guest driver does.
    fn discover(&mut self) -> Found {
        let mut found = Found::default();
        let mut cap = usize::from(self.config_u8(0x34));
        let mut seen = 0;
        while cap != 0 && seen < 48 {
            seen += 1;
            match self.config_u8(cap) {
                0x09 => {
                    let cfg_type = self.config_u8(cap + 3);
                    assert_eq!(self.config_u8(cap + 4), 0, "every structure is in BAR0");
                    let offset = u64::from(self.config_u32(cap + 8));
                    match cfg_type {
                        1 => found.common = offset,
                        2 => {
                            found.notify = offset;
                            found.notify_multiplier = u64::from(self.config_u32(cap + 16));
                        }
                        3 => found.isr = offset,
                        4 => found.device = offset,
                        _ => {}
                    }
                }
                0x11 => {
                    found.msix_cap = cap;
                    found.msix_table = u64::from(self.config_u32(cap + 4) & !7);
                    found.msix_pba = u64::from(self.config_u32(cap + 8) & !7);
                }
                _ => {}
            }
            cap = usize::from(self.config_u8(cap + 1));
        }
        found
    }

    /// BAR0 accesses go to wherever BAR0 is now (the guest may move it).
    pub fn read(&mut self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        let base = self.dev.bar0();
        self.dev.read_bar(base, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    pub fn write(&mut self, offset: u64, len: usize, value: u64) {
        let base = self.dev.bar0();
        self.dev
            .write_bar(base, offset, &value.to_le_bytes()[..len]);
    }

    pub fn common_read(&mut self, field: u64, len: usize) -> u64 {
        self.read(self.found.common + field, len)
    }

    pub fn common_write(&mut self, field: u64, len: usize, value: u64) {
        self.write(self.found.common + field, len, value);
    }

    pub fn status(&mut self) -> u8 {
        self.common_read(DEVICE_STATUS, 1) as u8
    }

    pub fn set_status(&mut self, status: u8) {
        self.common_write(DEVICE_STATUS, 1, u64::from(status));
    }

    pub fn device_features(&mut self) -> u64 {
        self.common_write(DEVICE_FEATURE_SELECT, 4, 0);
        let low = self.common_read(DEVICE_FEATURE, 4);
        self.common_write(DEVICE_FEATURE_SELECT, 4, 1);
        low | self.common_read(DEVICE_FEATURE, 4) << 32
    }

    pub fn set_driver_features(&mut self, features: u64) {
        self.common_write(DRIVER_FEATURE_SELECT, 4, 0);
        self.common_write(DRIVER_FEATURE, 4, features & 0xffff_ffff);
        self.common_write(DRIVER_FEATURE_SELECT, 4, 1);
        self.common_write(DRIVER_FEATURE, 4, features >> 32);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns the status read
    /// back after FEATURES_OK.
    pub fn negotiate(&mut self, features: u64) -> u8 {
        self.set_status(0);
        self.set_status(ACKNOWLEDGE);
        self.set_status(ACKNOWLEDGE | DRIVER);
        self.set_driver_features(features);
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK);
        self.status()
    }

    /// Programs queue `queue` the way Linux does: size, the three ring addresses
    /// as 32-bit halves, a vector, then enable.
    pub fn setup_queue(&mut self, queue: u16, size: u16, rings: (u64, u64, u64), vector: u16) {
        self.common_write(QUEUE_SELECT, 2, u64::from(queue));
        self.common_write(QUEUE_SIZE, 2, u64::from(size));
        for (field, addr) in [
            (QUEUE_DESC, rings.0),
            (QUEUE_DRIVER, rings.1),
            (QUEUE_DEVICE, rings.2),
        ] {
            self.common_write(field, 4, addr & 0xffff_ffff);
            self.common_write(field + 4, 4, addr >> 32);
        }
        self.common_write(QUEUE_MSIX_VECTOR, 2, u64::from(vector));
        self.common_write(QUEUE_ENABLE, 2, 1);
    }

    /// Turns MSI-X on and unmasks `vectors` vectors with distinct messages.
    pub fn enable_msix(&mut self, vectors: u64) {
        for v in 0..vectors {
            let entry = self.found.msix_table + v * 16;
            self.write(entry, 8, 0xfee0_0000 + (v << 12));
            self.write(entry + 8, 4, 0x40 + v);
            self.write(entry + 12, 4, 0);
        }
        let control = self.found.msix_cap + 2;
        self.dev
            .write_config_register(control / 4, (control % 4) as u64, &0x8000u16.to_le_bytes());
    }

    pub fn mask_vector(&mut self, vector: u64, masked: bool) {
        self.write(
            self.found.msix_table + vector * 16 + 12,
            4,
            u64::from(masked),
        );
    }

    pub fn pending(&mut self) -> u64 {
        self.read(self.found.msix_pba, 8)
    }

    /// The guest address queue `queue` notifies at.
    pub fn notify_addr(&mut self, queue: u16) -> u64 {
        self.common_write(QUEUE_SELECT, 2, u64::from(queue));
        let off = self.common_read(QUEUE_NOTIFY_OFF, 2);
        self.dev.bar0() + self.found.notify + off * self.found.notify_multiplier
    }
}
