//! Random guest traffic against everything a guest can reach in the pci crate:
//! config space (through the device, mechanism #1 and ECAM), MSI and MSI-X
//! capabilities, the MSI-X table and PBA. Beyond "no panic", each test checks the
//! invariants the emulation promises: read-only bits stay, write-1-to-clear bits only
//! clear, BARs stay aligned to their size, and routes are only triggered or disabled
//! after being enabled.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use devices::BusDevice;
use pci::bus::config_read;
use pci::config::{
    BarKind, PciBar, PciClassCode, PciConfiguration, PciExtCapabilityId, PciHeader,
    PciInterruptPin, NUM_CONFIG_REGISTERS,
};
use pci::config_io::PciConfigIo;
use pci::config_mmio::{PciConfigMmio, PCI_ECAM_SIZE};
use pci::msi::{Msi, MsiCapability};
use pci::msix::{Msix, MsixLayout};
use pci::{MsiInterruptRoute, MsiMessage, MsiRouteError, PciBus, PciSegment};
use proptest::prelude::*;

/// A route that checks it is used consistently: vectors are disabled and triggered
/// only while enabled.
#[derive(Default)]
struct ModelRoute {
    enabled: Mutex<BTreeSet<usize>>,
}

impl ModelRoute {
    fn enabled(&self) -> BTreeSet<usize> {
        self.enabled.lock().unwrap().clone()
    }
}

impl MsiInterruptRoute for ModelRoute {
    fn enable(&self, vector: usize, _msg: MsiMessage) -> Result<(), MsiRouteError> {
        self.enabled.lock().unwrap().insert(vector);
        Ok(())
    }
    fn disable(&self, vector: usize) -> Result<(), MsiRouteError> {
        assert!(
            self.enabled.lock().unwrap().remove(&vector),
            "disable of vector {vector} that was not enabled"
        );
        Ok(())
    }
    fn trigger(&self, vector: usize) -> Result<(), MsiRouteError> {
        assert!(
            self.enabled.lock().unwrap().contains(&vector),
            "trigger of vector {vector} that is not enabled"
        );
        Ok(())
    }
}

fn header() -> PciHeader {
    PciHeader {
        vendor_id: 0x10de,
        device_id: 0x2330,
        class: PciClassCode {
            class: 0x03,
            subclass: 0x02,
            prog_if: 0x00,
        },
        revision_id: 0xa1,
        subsystem_vendor_id: 0x10de,
        subsystem_id: 0x16c1,
        multifunction: false,
        interrupt_pin: PciInterruptPin::IntA,
    }
}

const BARS: [PciBar; 4] = [
    PciBar {
        index: 0,
        addr: 0xc000_0000,
        size: 0x100_0000,
        kind: BarKind::Memory32,
        prefetchable: false,
    },
    PciBar {
        index: 1,
        addr: 0x40_0000_0000,
        size: 1 << 37,
        kind: BarKind::Memory64,
        prefetchable: true,
    },
    PciBar {
        index: 3,
        addr: 0x1_0000_0000,
        size: 0x200_0000,
        kind: BarKind::Memory64,
        prefetchable: true,
    },
    PciBar {
        index: 5,
        addr: 0xc080,
        size: 0x80,
        kind: BarKind::Io,
        prefetchable: false,
    },
];

const MSI_CAP: MsiCapability = MsiCapability {
    vectors: 8,
    addr_64bit: true,
    per_vector_mask: true,
};
/// The pending bits register of `MSI_CAP`: read-only to the guest, maintained by the
/// emulation.
const MSI_PENDING_OFFSET: usize = 0x14;

const MSIX_LAYOUT: MsixLayout = MsixLayout {
    vectors: 70,
    table_bar: 0,
    table_offset: 0x1000,
    pba_bar: 0,
    pba_offset: 0x2000,
};

struct Function {
    config: PciConfiguration,
    msi: Msi,
    msix: Msix,
    msi_route: Arc<ModelRoute>,
    msix_route: Arc<ModelRoute>,
}

fn function() -> Function {
    let mut config = PciConfiguration::new(&header());
    for bar in &BARS {
        config.add_bar(bar).unwrap();
    }
    config.add_rom_bar(0xe000_0000, 0x1_0000).unwrap();
    let msi_route = Arc::new(ModelRoute::default());
    let msix_route = Arc::new(ModelRoute::default());
    let msi = Msi::add_to(&mut config, MSI_CAP, msi_route.clone()).unwrap();
    let msix = Msix::add_to(&mut config, MSIX_LAYOUT, msix_route.clone()).unwrap();
    config
        .add_extended_capability(PciExtCapabilityId::VENDOR_SPECIFIC, 1, &[0; 12], &[0xff; 8])
        .unwrap();
    Function {
        config,
        msi,
        msix,
        msi_route,
        msix_route,
    }
}

impl Function {
    /// A guest config write, as a device model forwards it.
    fn guest_write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write_config_register(reg, offset, data);
        if self.msi.covers(reg) {
            self.msi.config_written(&mut self.config);
        }
        if self.msix.covers(reg) {
            self.msix.config_written(&self.config);
        }
    }

    fn registers(&self) -> Vec<u32> {
        (0..NUM_CONFIG_REGISTERS)
            .map(|r| self.config.read_config_register(r))
            .collect()
    }

    fn check_bars_aligned(&self) {
        for bar in &BARS {
            let low = self.config.read_config_register(4 + bar.index);
            let (type_bits, addr_mask) = match bar.kind {
                BarKind::Io => (0x1, !0x3u32),
                BarKind::Memory32 => (0x0, !0xfu32),
                BarKind::Memory64 => (0xc, !0xfu32),
            };
            assert_eq!(low & !addr_mask, type_bits, "BAR {} type bits", bar.index);
            let mut value = u64::from(low & addr_mask);
            if bar.kind == BarKind::Memory64 {
                value |= u64::from(self.config.read_config_register(5 + bar.index)) << 32;
            }
            assert_eq!(value & (bar.size - 1), 0, "BAR {} alignment", bar.index);
            let placed = self.config.bar(bar.index).unwrap();
            assert_eq!(placed.addr & (bar.size - 1), 0);
            assert_eq!(placed.size, bar.size);
        }
        let rom = self.config.read_config_register(12);
        assert_eq!(rom & 0xfffe, 0, "ROM BAR alignment and reserved bits");
    }

    fn check_msi_routes(&self) {
        let enabled = self.msi.enabled_vectors(&self.config);
        let expected: BTreeSet<usize> = (0..enabled)
            .filter(|&v| !self.msi.is_masked(&self.config, v))
            .collect();
        assert_eq!(self.msi_route.enabled(), expected);
    }

    fn check_msix_routes(&self) {
        let expected: BTreeSet<usize> = (0..MSIX_LAYOUT.vectors)
            .filter(|&v| {
                self.msix.is_enabled()
                    && !self.msix.is_function_masked()
                    && !self.msix.entry(v).unwrap().masked()
            })
            .collect();
        assert_eq!(self.msix_route.enabled(), expected);
        for v in 0..MSIX_LAYOUT.vectors {
            assert_eq!(self.msix.entry(v).unwrap().vector_control & !1, 0);
            if expected.contains(&v) {
                assert!(
                    !self.msix.is_pending(v),
                    "delivering vector {v} left pending"
                );
            }
        }
    }
}

#[derive(Debug, Clone)]
enum ConfigOp {
    Write {
        reg: usize,
        offset: u64,
        data: Vec<u8>,
    },
    Read {
        reg: usize,
    },
    Size {
        bar_reg: usize,
    },
    TriggerMsi {
        vector: usize,
    },
}

fn config_op() -> impl Strategy<Value = ConfigOp> {
    // Bias towards the header and capabilities, but reach past the end too.
    let reg = prop_oneof![
        0usize..0x40,
        0usize..NUM_CONFIG_REGISTERS + 8,
        Just(usize::MAX)
    ];
    prop_oneof![
        4 => (reg.clone(), 0u64..6, prop::collection::vec(any::<u8>(), 0..6))
            .prop_map(|(reg, offset, data)| ConfigOp::Write { reg, offset, data }),
        1 => reg.prop_map(|reg| ConfigOp::Read { reg }),
        1 => (4usize..13).prop_map(|bar_reg| ConfigOp::Size { bar_reg }),
        1 => (0usize..40).prop_map(|vector| ConfigOp::TriggerMsi { vector }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn config_space_keeps_its_invariants(ops in prop::collection::vec(config_op(), 1..64)) {
        let mut f = function();
        let msi_pending_reg = (f.msi.cap_offset() + MSI_PENDING_OFFSET) / 4;
        for op in ops {
            let before = f.registers();
            match op {
                ConfigOp::Write { reg, offset, data } => f.guest_write(reg, offset, &data),
                ConfigOp::Read { reg } => {
                    let v = f.config.read_config_register(reg);
                    if reg >= NUM_CONFIG_REGISTERS {
                        prop_assert_eq!(v, u32::MAX);
                    }
                }
                ConfigOp::Size { bar_reg } => {
                    f.guest_write(bar_reg, 0, &u32::MAX.to_le_bytes());
                    let _ = f.config.read_config_register(bar_reg);
                }
                ConfigOp::TriggerMsi { vector } => {
                    f.msi.trigger(&mut f.config, vector);
                    f.check_msi_routes();
                    continue;
                }
            }
            let after = f.registers();
            for reg in 0..NUM_CONFIG_REGISTERS {
                if reg == msi_pending_reg {
                    continue;
                }
                let writable = f.config.writable_mask(reg);
                let w1c = f.config.w1c_mask(reg) & !writable;
                let changed = before[reg] ^ after[reg];
                prop_assert_eq!(changed & !(writable | w1c), 0, "read-only bits of register {}", reg);
                prop_assert_eq!(after[reg] & !before[reg] & w1c, 0, "w1c bits set in register {}", reg);
            }
            prop_assert_eq!(f.config.vendor_id(), 0x10de);
            prop_assert_eq!(f.config.capabilities().len(), 2);
            f.check_bars_aligned();
            f.check_msi_routes();
            f.check_msix_routes();
        }
    }
}

#[derive(Debug, Clone)]
enum MsixOp {
    WriteTable { offset: u64, data: Vec<u8> },
    ReadTable { offset: u64, len: usize },
    WritePba { offset: u64, data: Vec<u8> },
    ReadPba { offset: u64, len: usize },
    Control { value: u16 },
    Trigger { vector: usize },
}

fn msix_op() -> impl Strategy<Value = MsixOp> {
    let table_end = MSIX_LAYOUT.table_len() + 64;
    let offset = prop_oneof![0..table_end, any::<u64>()];
    let data = prop::collection::vec(any::<u8>(), 0..10);
    prop_oneof![
        6 => (offset.clone(), data.clone()).prop_map(|(offset, data)| MsixOp::WriteTable { offset, data }),
        1 => (offset.clone(), 0usize..10).prop_map(|(offset, len)| MsixOp::ReadTable { offset, len }),
        1 => (0u64..32, data).prop_map(|(offset, data)| MsixOp::WritePba { offset, data }),
        1 => (offset, 0usize..10).prop_map(|(offset, len)| MsixOp::ReadPba { offset, len }),
        2 => any::<u16>().prop_map(|value| MsixOp::Control { value }),
        3 => (0usize..80).prop_map(|vector| MsixOp::Trigger { vector }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn msix_table_and_pba_keep_their_invariants(ops in prop::collection::vec(msix_op(), 1..96)) {
        let mut f = function();
        let control_abs = f.msix.cap_offset() + 2;
        for op in ops {
            match op {
                MsixOp::WriteTable { offset, data } => f.msix.write_table(offset, &data),
                MsixOp::ReadTable { offset, len } => {
                    let mut buf = vec![0u8; len];
                    f.msix.read_table(offset, &mut buf);
                }
                MsixOp::WritePba { offset, data } => {
                    let mut before = [0u8; 16];
                    f.msix.read_pba(0, &mut before);
                    f.msix.write_pba(offset, &data);
                    let mut after = [0u8; 16];
                    f.msix.read_pba(0, &mut after);
                    prop_assert_eq!(before, after, "PBA is read-only to the guest");
                }
                MsixOp::ReadPba { offset, len } => {
                    let mut buf = vec![0u8; len];
                    f.msix.read_pba(offset, &mut buf);
                }
                MsixOp::Control { value } => {
                    f.guest_write(control_abs / 4, (control_abs % 4) as u64, &value.to_le_bytes());
                }
                MsixOp::Trigger { vector } => f.msix.trigger(vector),
            }
            f.check_msix_routes();
            // PBA bits past the last vector stay clear.
            let mut pba = [0u8; 16];
            f.msix.read_pba(0, &mut pba);
            let high = u64::from_le_bytes(pba[8..].try_into().unwrap());
            prop_assert_eq!(high >> (MSIX_LAYOUT.vectors - 64), 0);
        }
    }
}

#[derive(Debug, Clone)]
enum AccessOp {
    PortWrite { offset: u64, data: Vec<u8> },
    PortRead { offset: u64, len: usize },
    EcamWrite { offset: u64, data: Vec<u8> },
    EcamRead { offset: u64, len: usize },
}

fn access_op() -> impl Strategy<Value = AccessOp> {
    let port = prop_oneof![0u64..8, any::<u64>()];
    // Mostly bus 0, where the devices are.
    let ecam = prop_oneof![0u64..(1 << 20), 0..PCI_ECAM_SIZE + 0x1000, any::<u64>()];
    let data = prop::collection::vec(any::<u8>(), 0..9);
    prop_oneof![
        3 => (port.clone(), data.clone()).prop_map(|(offset, data)| AccessOp::PortWrite { offset, data }),
        2 => (port, 0usize..9).prop_map(|(offset, len)| AccessOp::PortRead { offset, len }),
        3 => (ecam.clone(), data).prop_map(|(offset, data)| AccessOp::EcamWrite { offset, data }),
        2 => (ecam, 0usize..9).prop_map(|(offset, len)| AccessOp::EcamRead { offset, len }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn config_mechanisms_survive_any_access(ops in prop::collection::vec(access_op(), 1..64)) {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let mut io = PciConfigIo::new(PciSegment::new(bus.clone()));
        let mut ecam = PciConfigMmio::new(PciSegment::new(bus.clone()));
        for op in ops {
            match op {
                AccessOp::PortWrite { offset, data } => io.write(0xcf8, offset, &data),
                AccessOp::PortRead { offset, len } => {
                    let mut buf = vec![0u8; len];
                    io.read(0xcf8, offset, &mut buf);
                }
                AccessOp::EcamWrite { offset, data } => ecam.write(0xe800_0000, offset, &data),
                AccessOp::EcamRead { offset, len } => {
                    let mut buf = vec![0u8; len];
                    ecam.read(0xe800_0000, offset, &mut buf);
                    // Anything off bus 0 slot 0 function 0 is absent.
                    if offset >= 1 << 12 && len > 0 && offset & 3 == 0 && len <= 4 {
                        prop_assert!(buf.iter().all(|&b| b == 0xff));
                    }
                }
            }
            prop_assert_eq!(config_read(&bus, 0, 0, 0), 0x0008_1b36);
            prop_assert_eq!(config_read(&bus, 0, 0, 2) >> 16, 0x0600);
        }
    }
}
