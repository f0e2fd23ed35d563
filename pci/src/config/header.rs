//! The type 0 header: identity, command/status, interrupt line and pin.

use super::PciConfiguration;

const ID_REG: usize = 0;
const COMMAND_STATUS_REG: usize = 1;
const CLASS_REG: usize = 2;
const HEADER_TYPE_REG: usize = 3;
const SUBSYSTEM_REG: usize = 11;
const INTERRUPT_REG: usize = 15;

pub const COMMAND_IO_SPACE: u16 = 1 << 0;
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
const COMMAND_PARITY_ERROR_RESPONSE: u16 = 1 << 6;
const COMMAND_SERR_ENABLE: u16 = 1 << 8;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Command bits a guest may change on an emulated function.
const COMMAND_WRITABLE: u16 = COMMAND_IO_SPACE
    | COMMAND_MEMORY_SPACE
    | COMMAND_BUS_MASTER
    | COMMAND_PARITY_ERROR_RESPONSE
    | COMMAND_SERR_ENABLE
    | COMMAND_INTX_DISABLE;

/// Status bit 4: the function has a capability list at the pointer in 0x34.
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// Status error bits (parity, aborts, SERR) the guest acknowledges by writing 1.
const STATUS_W1C: u16 = 0xf900;

/// Cache line size is guest-writable, the rest of the dword (latency timer, header
/// type, BIST) is fixed.
const CACHE_LINE_SIZE_WRITABLE: u32 = 0xff;
const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;
const INTERRUPT_LINE_WRITABLE: u32 = 0xff;

/// Class, subclass and programming interface, e.g. `0x03, 0x02, 0x00` for a 3D
/// controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciClassCode {
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
}

/// The legacy interrupt pin a function uses (`Interrupt Pin` register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciInterruptPin {
    None = 0,
    IntA = 1,
    IntB = 2,
    IntC = 3,
    IntD = 4,
}

/// What identifies a function; everything here is read-only to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciHeader {
    pub vendor_id: u16,
    pub device_id: u16,
    pub class: PciClassCode,
    pub revision_id: u8,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    pub multifunction: bool,
    pub interrupt_pin: PciInterruptPin,
}

impl PciConfiguration {
    pub(super) fn init_header(&mut self, h: &PciHeader) {
        let header_type = if h.multifunction {
            HEADER_TYPE_MULTIFUNCTION
        } else {
            0
        };
        let regs = &mut self.registers;
        regs[ID_REG] = u32::from(h.vendor_id) | (u32::from(h.device_id) << 16);
        regs[CLASS_REG] = u32::from_le_bytes([
            h.revision_id,
            h.class.prog_if,
            h.class.subclass,
            h.class.class,
        ]);
        regs[HEADER_TYPE_REG] = u32::from(header_type) << 16;
        regs[SUBSYSTEM_REG] = u32::from(h.subsystem_vendor_id) | (u32::from(h.subsystem_id) << 16);
        regs[INTERRUPT_REG] = (h.interrupt_pin as u32) << 8;

        self.writable[COMMAND_STATUS_REG] = u32::from(COMMAND_WRITABLE);
        self.w1c[COMMAND_STATUS_REG] = u32::from(STATUS_W1C) << 16;
        self.writable[HEADER_TYPE_REG] = CACHE_LINE_SIZE_WRITABLE;
        self.writable[INTERRUPT_REG] = INTERRUPT_LINE_WRITABLE;
    }

    pub fn vendor_id(&self) -> u16 {
        self.registers[ID_REG] as u16
    }

    pub fn device_id(&self) -> u16 {
        (self.registers[ID_REG] >> 16) as u16
    }

    pub fn class_code(&self) -> PciClassCode {
        let [_, prog_if, subclass, class] = self.registers[CLASS_REG].to_le_bytes();
        PciClassCode {
            class,
            subclass,
            prog_if,
        }
    }

    pub fn revision_id(&self) -> u8 {
        self.registers[CLASS_REG] as u8
    }

    pub fn subsystem_vendor_id(&self) -> u16 {
        self.registers[SUBSYSTEM_REG] as u16
    }

    pub fn subsystem_id(&self) -> u16 {
        (self.registers[SUBSYSTEM_REG] >> 16) as u16
    }

    /// Header type byte: layout 0, bit 7 when multifunction.
    pub fn header_type(&self) -> u8 {
        (self.registers[HEADER_TYPE_REG] >> 16) as u8
    }

    pub fn command(&self) -> u16 {
        self.registers[COMMAND_STATUS_REG] as u16
    }

    pub fn status(&self) -> u16 {
        (self.registers[COMMAND_STATUS_REG] >> 16) as u16
    }

    /// Sets status bits from the device side (errors, capability list).
    pub fn set_status_bits(&mut self, bits: u16) {
        self.registers[COMMAND_STATUS_REG] |= u32::from(bits) << 16;
    }

    pub fn interrupt_line(&self) -> u8 {
        self.registers[INTERRUPT_REG] as u8
    }

    /// Records the IRQ the platform routed the pin to, as firmware would.
    pub fn set_interrupt_line(&mut self, line: u8) {
        let reg = &mut self.registers[INTERRUPT_REG];
        *reg = (*reg & !0xff) | u32::from(line);
    }

    pub fn interrupt_pin(&self) -> u8 {
        (self.registers[INTERRUPT_REG] >> 8) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            multifunction: true,
            interrupt_pin: PciInterruptPin::IntA,
        }
    }

    #[test]
    fn header_fields_land_at_their_offsets() {
        let c = PciConfiguration::new(&header());
        assert_eq!(c.read_config_register(0), 0x2330_10de);
        assert_eq!(c.read_config_register(2), 0x0302_00a1);
        assert_eq!(c.read_u8(0x0e), 0x80);
        assert_eq!(c.read_config_register(11), 0x16c1_10de);
        assert_eq!(c.read_u8(0x3d), 1);
        assert_eq!(c.vendor_id(), 0x10de);
        assert_eq!(c.device_id(), 0x2330);
        assert_eq!(c.class_code(), header().class);
        assert_eq!(c.revision_id(), 0xa1);
        assert_eq!(c.subsystem_vendor_id(), 0x10de);
        assert_eq!(c.subsystem_id(), 0x16c1);
        assert_eq!(c.header_type(), 0x80);
        assert_eq!(c.interrupt_pin(), 1);
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = PciConfiguration::new(&header());
        for reg in [0, 2, 11] {
            let before = c.read_config_register(reg);
            c.write_config_register(reg, 0, &[0; 4]);
            assert_eq!(c.read_config_register(reg), before, "register {reg}");
        }
        c.write_config_register(3, 0, &[0x10, 0xff, 0x00, 0xff]);
        assert_eq!(c.read_config_register(3), 0x0080_0010);
        c.write_config_register(15, 0, &[0x0b, 0x04]);
        assert_eq!(c.interrupt_line(), 0x0b);
        assert_eq!(c.interrupt_pin(), 1);
    }

    #[test]
    fn command_is_writable_and_status_errors_clear_on_write_one() {
        let mut c = PciConfiguration::new(&header());
        c.write_config_register(1, 0, &[0xff, 0xff]);
        assert_eq!(c.command(), COMMAND_WRITABLE);
        c.set_status_bits(STATUS_CAPABILITIES_LIST | 0x2000 | 0x0100);
        // Writing ones to everything clears only the error bits.
        c.write_config_register(1, 2, &[0xff, 0xff]);
        assert_eq!(c.status(), STATUS_CAPABILITIES_LIST);
        assert_eq!(c.command(), COMMAND_WRITABLE);
    }
}
