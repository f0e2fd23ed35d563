//! PCI configuration mechanism #1: `CONFIG_ADDRESS` at port 0xCF8 selects a register,
//! `CONFIG_DATA` at 0xCFC-0xCFF reads or writes it.
//!
//! Inserted on the port-I/O bus at [`PCI_CONFIG_IO_PORT`] with length
//! [`PCI_CONFIG_IO_PORT_LEN`]. `CONFIG_ADDRESS` latches only on 32-bit writes, as on
//! real chipsets, so byte writes to 0xCF8-0xCFB do not disturb it. Data accesses may be
//! 1, 2 or 4 bytes at any offset that keeps them inside the dword; others read as all
//! ones and are dropped on write. The 256 bytes of conventional config space of every
//! root bus of the segment are reachable this way (the bus number picks the bus;
//! absent buses read all ones); the rest needs ECAM.

use log::debug;

use devices::BusDevice;

use crate::bus::{config_read, config_write, PciBus};
use crate::config::{dword_lanes, extract_lanes};
use crate::segment::PciSegment;

pub const PCI_CONFIG_IO_PORT: u64 = 0xcf8;
pub const PCI_CONFIG_IO_PORT_LEN: u64 = 8;

const DATA_OFFSET: u64 = 4;
const ADDRESS_ENABLE: u32 = 1 << 31;
/// Enable, bus, device, function and dword register bits; the rest read as zero.
const ADDRESS_MASK: u32 = ADDRESS_ENABLE | 0x00ff_fffc;

/// The register `CONFIG_ADDRESS` points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Selected {
    bus: u8,
    device: u8,
    function: u8,
    reg_idx: usize,
}

fn decode(address: u32) -> Option<Selected> {
    if address & ADDRESS_ENABLE == 0 {
        return None;
    }
    Some(Selected {
        bus: (address >> 16) as u8,
        device: ((address >> 11) & 0x1f) as u8,
        function: ((address >> 8) & 0x7) as u8,
        reg_idx: ((address >> 2) & 0x3f) as usize,
    })
}

pub struct PciConfigIo {
    segment: PciSegment,
    config_address: u32,
}

impl PciConfigIo {
    pub fn new(segment: PciSegment) -> Self {
        Self {
            segment,
            config_address: 0,
        }
    }

    /// The selected register and the root bus it is on, if `CONFIG_ADDRESS`
    /// enables one on a bus that exists.
    fn selected(&self) -> Option<(&std::sync::Mutex<PciBus>, Selected)> {
        let s = decode(self.config_address)?;
        Some((self.segment.bus(s.bus)?, s))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let value = if offset < DATA_OFFSET {
            Some((self.config_address, offset))
        } else {
            self.selected().map(|(bus, s)| {
                let value = config_read(bus, s.device, s.function, s.reg_idx);
                (value, offset - DATA_OFFSET)
            })
        };
        let filled = value.is_some_and(|(value, at)| extract_lanes(value, at, data));
        if !filled {
            data.fill(0xff);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset < DATA_OFFSET {
            match (offset, <[u8; 4]>::try_from(data)) {
                (0, Ok(bytes)) => self.config_address = u32::from_le_bytes(bytes) & ADDRESS_MASK,
                _ => debug!(
                    "pci config io: ignoring {}-byte write at {:#x}",
                    data.len(),
                    PCI_CONFIG_IO_PORT + offset
                ),
            }
            return;
        }
        let at = offset - DATA_OFFSET;
        if let (Some((bus, s)), Some(_)) = (self.selected(), dword_lanes(at, data)) {
            config_write(bus, s.device, s.function, s.reg_idx, at, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn config_io() -> PciConfigIo {
        PciConfigIo::new(PciSegment::new(Arc::new(Mutex::new(PciBus::new()))))
    }

    fn select(io: &mut PciConfigIo, bus: u32, dev: u32, func: u32, reg: u32) {
        let addr = ADDRESS_ENABLE | (bus << 16) | (dev << 11) | (func << 8) | (reg << 2);
        io.write(PCI_CONFIG_IO_PORT, 0, &addr.to_le_bytes());
    }

    fn read(io: &mut PciConfigIo, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        io.read(PCI_CONFIG_IO_PORT, offset, &mut b);
        b
    }

    #[test]
    fn reads_host_bridge_ids_with_every_access_size() {
        let mut io = config_io();
        select(&mut io, 0, 0, 0, 0);
        assert_eq!(read(&mut io, 4, 4), [0x36, 0x1b, 0x08, 0x00]);
        assert_eq!(read(&mut io, 6, 2), [0x08, 0x00]);
        assert_eq!(read(&mut io, 5, 1), [0x1b]);
        assert_eq!(read(&mut io, 5, 2), [0x1b, 0x08]);
        assert_eq!(read(&mut io, 6, 4), [0xff; 4], "spills past the dword");
        select(&mut io, 0, 0, 0, 2);
        assert_eq!(read(&mut io, 6, 2), [0x00, 0x06], "class 06, subclass 00");
    }

    #[test]
    fn config_address_latches_only_dword_writes() {
        let mut io = config_io();
        select(&mut io, 0, 3, 1, 5);
        let latched = read(&mut io, 0, 4);
        io.write(PCI_CONFIG_IO_PORT, 1, &[0x06]);
        io.write(PCI_CONFIG_IO_PORT, 0, &[0, 0]);
        assert_eq!(read(&mut io, 0, 4), latched);
        assert_eq!(read(&mut io, 2, 1), [latched[2]]);
        // Reserved bits 30:24 and 1:0 read as zero.
        io.write(PCI_CONFIG_IO_PORT, 0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(read(&mut io, 0, 4), 0x80ff_fffcu32.to_le_bytes());
    }

    #[test]
    fn absent_functions_and_disabled_address_read_all_ones() {
        let mut io = config_io();
        io.write(PCI_CONFIG_IO_PORT, 0, &0u32.to_le_bytes());
        assert_eq!(read(&mut io, 4, 4), [0xff; 4], "enable bit clear");
        select(&mut io, 0, 7, 0, 0);
        assert_eq!(read(&mut io, 4, 4), [0xff; 4], "empty slot");
        select(&mut io, 0, 0, 1, 0);
        assert_eq!(read(&mut io, 4, 2), [0xff; 2], "function 1");
        select(&mut io, 1, 0, 0, 0);
        assert_eq!(read(&mut io, 4, 4), [0xff; 4], "bus 1");
        assert_eq!(read(&mut io, 8, 4), [0xff; 4], "past the device");
    }

    #[test]
    fn data_writes_reach_the_selected_register() {
        let mut io = config_io();
        // Host bridge command register: memory space enable.
        select(&mut io, 0, 0, 0, 1);
        io.write(PCI_CONFIG_IO_PORT, 4, &[0x02]);
        assert_eq!(read(&mut io, 4, 1), [0x02]);
        // Interrupt line, a byte write at 0xCFC + 0.
        select(&mut io, 0, 0, 0, 15);
        io.write(PCI_CONFIG_IO_PORT, 4, &[0x0a]);
        assert_eq!(read(&mut io, 4, 1), [0x0a]);
        io.write(PCI_CONFIG_IO_PORT, 7, &[0x01, 0x02]);
        io.write(PCI_CONFIG_IO_PORT, u64::MAX, &[1]);
        io.read(PCI_CONFIG_IO_PORT, u64::MAX, &mut [0; 2]);
        io.write(PCI_CONFIG_IO_PORT, 4, &[]);
    }

    #[test]
    fn the_bus_number_picks_the_root_bus() {
        let mut segment = PciSegment::new(Arc::new(Mutex::new(PciBus::new())));
        let expander = Arc::new(Mutex::new(PciBus::new()));
        segment.add_root_bus(0x10, expander.clone()).unwrap();
        let mut io = PciConfigIo::new(segment);
        // The expander's host bridge: interrupt line written through bus 0x10
        // lands there and not on bus 0.
        select(&mut io, 0x10, 0, 0, 15);
        io.write(PCI_CONFIG_IO_PORT, 4, &[0x0b]);
        assert_eq!(read(&mut io, 4, 1), [0x0b]);
        assert_eq!(config_read(&expander, 0, 0, 15) & 0xff, 0x0b);
        select(&mut io, 0, 0, 0, 15);
        assert_eq!(read(&mut io, 4, 1), [0x00], "bus 0's host bridge untouched");
        select(&mut io, 0x11, 0, 0, 0);
        assert_eq!(read(&mut io, 4, 4), [0xff; 4], "no bus 0x11");
        io.write(PCI_CONFIG_IO_PORT, 4, &[0; 4]);
    }
}
