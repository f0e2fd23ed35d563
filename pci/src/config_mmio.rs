//! PCIe enhanced configuration access (ECAM): a memory window where
//! `offset = bus << 20 | device << 15 | function << 12 | register`.
//!
//! Inserted on the MMIO bus at the platform's ECAM base with length
//! [`PCI_ECAM_SIZE`] (256 buses). The bus number picks a root bus of the
//! [`PciSegment`]; buses it does not have read as all ones and drop writes, as do
//! accesses that are empty or cross a dword.

use devices::BusDevice;

use crate::bus::{config_read, config_write};
use crate::config::{dword_lanes, extract_lanes};
use crate::segment::PciSegment;

/// Bytes of ECAM for 256 buses of 32 devices of 8 functions of 4 KiB.
pub const PCI_ECAM_SIZE: u64 = 256 << 20;

/// What an ECAM offset addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EcamAddress {
    bus: u8,
    device: u8,
    function: u8,
    reg_idx: usize,
    byte: u64,
}

fn decode(offset: u64) -> Option<EcamAddress> {
    if offset >= PCI_ECAM_SIZE {
        return None;
    }
    Some(EcamAddress {
        bus: (offset >> 20) as u8,
        device: ((offset >> 15) & 0x1f) as u8,
        function: ((offset >> 12) & 0x7) as u8,
        reg_idx: ((offset & 0xfff) >> 2) as usize,
        byte: offset & 0x3,
    })
}

pub struct PciConfigMmio {
    segment: PciSegment,
}

impl PciConfigMmio {
    pub fn new(segment: PciSegment) -> Self {
        Self { segment }
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let filled = decode(offset).is_some_and(|a| {
            let Some(bus) = self.segment.bus(a.bus) else {
                return false;
            };
            let value = config_read(bus, a.device, a.function, a.reg_idx);
            extract_lanes(value, a.byte, data)
        });
        if !filled {
            data.fill(0xff);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(a) = decode(offset) else {
            return;
        };
        let Some(bus) = self.segment.bus(a.bus) else {
            return;
        };
        if dword_lanes(a.byte, data).is_some() {
            config_write(bus, a.device, a.function, a.reg_idx, a.byte, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::PciBus;
    use std::sync::{Arc, Mutex};

    fn segment() -> PciSegment {
        PciSegment::new(Arc::new(Mutex::new(PciBus::new())))
    }

    const ECAM_BASE: u64 = 0xe800_0000;

    fn ecam(bus: u64, dev: u64, func: u64, reg: u64) -> u64 {
        (bus << 20) | (dev << 15) | (func << 12) | reg
    }

    fn read(m: &mut PciConfigMmio, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        m.read(ECAM_BASE, offset, &mut b);
        b
    }

    #[test]
    fn reaches_host_bridge_and_extended_space() {
        let mut m = PciConfigMmio::new(segment());
        assert_eq!(read(&mut m, ecam(0, 0, 0, 0), 4), [0x36, 0x1b, 0x08, 0x00]);
        assert_eq!(read(&mut m, ecam(0, 0, 0, 0xa), 2), [0x00, 0x06]);
        assert_eq!(read(&mut m, ecam(0, 0, 0, 0x100), 4), [0; 4]);
        m.write(ECAM_BASE, ecam(0, 0, 0, 0x3c), &[0x0b]);
        assert_eq!(read(&mut m, ecam(0, 0, 0, 0x3c), 1), [0x0b]);
    }

    #[test]
    fn absent_functions_read_all_ones_and_ignore_writes() {
        let mut m = PciConfigMmio::new(segment());
        for offset in [
            ecam(0, 1, 0, 0),
            ecam(0, 0, 1, 0),
            ecam(1, 0, 0, 0),
            ecam(255, 31, 7, 0xffc),
        ] {
            assert_eq!(read(&mut m, offset, 4), [0xff; 4], "{offset:#x}");
            m.write(ECAM_BASE, offset, &[0; 4]);
        }
        assert_eq!(read(&mut m, PCI_ECAM_SIZE, 4), [0xff; 4]);
        assert_eq!(
            read(&mut m, ecam(0, 0, 0, 2), 4),
            [0xff; 4],
            "crosses a dword"
        );
        assert_eq!(read(&mut m, ecam(0, 0, 0, 0), 8), [0xff; 8]);
        m.write(ECAM_BASE, u64::MAX, &[1; 4]);
        m.write(ECAM_BASE, ecam(0, 0, 0, 3), &[1; 2]);
        assert_eq!(read(&mut m, ecam(0, 0, 0, 0), 4), [0x36, 0x1b, 0x08, 0x00]);
    }

    #[test]
    fn the_bus_number_picks_the_root_bus() {
        let mut segment = segment();
        let expander = Arc::new(Mutex::new(PciBus::new()));
        segment.add_root_bus(0x10, expander.clone()).unwrap();
        let mut m = PciConfigMmio::new(segment);
        assert_eq!(
            read(&mut m, ecam(0x10, 0, 0, 0), 4),
            [0x36, 0x1b, 0x08, 0x00],
            "the expander's own host bridge"
        );
        m.write(ECAM_BASE, ecam(0x10, 0, 0, 0x3c), &[0x0b]);
        assert_eq!(read(&mut m, ecam(0x10, 0, 0, 0x3c), 1), [0x0b]);
        assert_eq!(config_read(&expander, 0, 0, 0xf) & 0xff, 0x0b);
        assert_eq!(
            read(&mut m, ecam(0, 0, 0, 0x3c), 1),
            [0x00],
            "bus 0 untouched"
        );
        for absent in [
            ecam(0x0f, 0, 0, 0),
            ecam(0x11, 0, 0, 0),
            ecam(0x10, 1, 0, 0),
        ] {
            assert_eq!(read(&mut m, absent, 4), [0xff; 4], "{absent:#x}");
            m.write(ECAM_BASE, absent, &[0; 4]);
        }
    }
}
