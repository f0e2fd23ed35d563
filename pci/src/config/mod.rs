//! The configuration space of one PCI function, as the guest sees it.
//!
//! 4 KiB (PCIe extended) of dword registers, each with two masks that decide what a
//! guest write may do: `writable` bits take the written value, `w1c` bits are cleared by
//! writing 1 (status registers), everything else is read-only. The VMM side builds the
//! space (header, BARs, capabilities) through typed methods that bypass the masks; the
//! guest side goes through [`PciConfiguration::read_config_register`] and
//! [`PciConfiguration::write_config_register`], which accept any index, offset and size.
//!
//! Only type 0 (endpoint) headers are modelled; form-vmm exposes no PCI bridges.

mod bar;
mod capability;
mod header;

use log::debug;

pub use bar::{BarKind, BarReprogram, PciBar, PciRomBar, NUM_BARS, ROM_BAR_INDEX};
pub use capability::{PciCapabilityId, PciExtCapabilityId};
pub use header::{
    PciClassCode, PciHeader, PciInterruptPin, COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE,
    COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE, STATUS_CAPABILITIES_LIST,
};

/// Bytes of PCIe extended configuration space per function.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Bytes of conventional configuration space (what mechanism #1 reaches).
pub const LEGACY_CONFIG_SPACE_SIZE: usize = 256;
/// Dword registers per function.
pub const NUM_CONFIG_REGISTERS: usize = CONFIG_SPACE_SIZE / 4;

/// Errors building a configuration space. These are VMM programming or device-model
/// errors, never caused by a guest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciConfigError {
    #[error("BAR index {0} does not exist; a type 0 header has BARs 0 to 5")]
    BarIndexOutOfRange(usize),
    #[error("BAR {0} is already in use (a 64-bit BAR takes two slots)")]
    BarInUse(usize),
    #[error("64-bit BAR {0} needs slot {0}+1 as well, but BAR 5 is the last")]
    Bar64AtLastSlot(usize),
    #[error("BAR {index} size {size:#x} is not a power of two of at least {min:#x} bytes")]
    BarSizeInvalid { index: usize, size: u64, min: u64 },
    #[error("BAR {index} address {addr:#x} is not aligned to its size {size:#x}")]
    BarMisaligned { index: usize, addr: u64, size: u64 },
    #[error("BAR {index} range {addr:#x}+{size:#x} does not fit a {kind:?} BAR")]
    BarOutOfRange {
        index: usize,
        addr: u64,
        size: u64,
        kind: BarKind,
    },
    #[error("the expansion ROM BAR is already set")]
    RomBarInUse,
    #[error("capability of {len} bytes does not fit in the {area} capability area")]
    CapabilitySpaceFull { len: usize, area: &'static str },
    #[error("capability write mask is {mask} bytes, longer than its {body}-byte body")]
    CapabilityMaskTooLong { mask: usize, body: usize },
    #[error("config register {0} does not exist; there are {NUM_CONFIG_REGISTERS}")]
    RegisterOutOfRange(usize),
}

#[derive(Clone)]
pub struct PciConfiguration {
    registers: Vec<u32>,
    writable: Vec<u32>,
    w1c: Vec<u32>,
    bars: [Option<bar::BarState>; NUM_BARS],
    rom: Option<bar::BarState>,
    caps: capability::CapabilityChain,
}

impl PciConfiguration {
    pub fn new(header: &PciHeader) -> Self {
        let mut config = Self {
            registers: vec![0; NUM_CONFIG_REGISTERS],
            writable: vec![0; NUM_CONFIG_REGISTERS],
            w1c: vec![0; NUM_CONFIG_REGISTERS],
            bars: Default::default(),
            rom: None,
            caps: Default::default(),
        };
        config.init_header(header);
        config
    }

    /// The guest's view of register `reg_idx`; all ones past the end, like an absent
    /// function.
    pub fn read_config_register(&self, reg_idx: usize) -> u32 {
        self.registers.get(reg_idx).copied().unwrap_or(u32::MAX)
    }

    /// Applies a guest write of `data` at byte `offset` within register `reg_idx`,
    /// honouring the read-only and write-1-to-clear masks. Writes that do not fit
    /// inside the register are dropped.
    ///
    /// Returns the BAR move the write completed, if any, so the VMM can move what
    /// backs it (memory slot, trapped region). Sizing writes (all address bits set)
    /// are not moves.
    pub fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: u64,
        data: &[u8],
    ) -> Option<BarReprogram> {
        let Some((value, lanes)) = dword_lanes(offset, data) else {
            debug!(
                "pci config: dropping {}-byte write at register {reg_idx} offset {offset}",
                data.len()
            );
            return None;
        };
        let (Some(reg), Some(&writable), Some(&w1c)) = (
            self.registers.get_mut(reg_idx),
            self.writable.get(reg_idx),
            self.w1c.get(reg_idx),
        ) else {
            return None;
        };
        let writable = writable & lanes;
        let cleared = value & w1c & lanes;
        *reg = ((*reg & !writable) | (value & writable)) & !cleared;
        self.bar_write_completed(reg_idx)
    }

    /// Sets a register without the guest masks, for building the space.
    pub fn set_register(&mut self, reg_idx: usize, value: u32) -> Result<(), PciConfigError> {
        *self
            .registers
            .get_mut(reg_idx)
            .ok_or(PciConfigError::RegisterOutOfRange(reg_idx))? = value;
        Ok(())
    }

    /// Chooses which bits of a register the guest may write.
    pub fn set_writable_mask(&mut self, reg_idx: usize, mask: u32) -> Result<(), PciConfigError> {
        *self
            .writable
            .get_mut(reg_idx)
            .ok_or(PciConfigError::RegisterOutOfRange(reg_idx))? = mask;
        Ok(())
    }

    /// Chooses which bits of a register the guest clears by writing 1.
    pub fn set_w1c_mask(&mut self, reg_idx: usize, mask: u32) -> Result<(), PciConfigError> {
        *self
            .w1c
            .get_mut(reg_idx)
            .ok_or(PciConfigError::RegisterOutOfRange(reg_idx))? = mask;
        Ok(())
    }

    pub fn writable_mask(&self, reg_idx: usize) -> u32 {
        self.writable.get(reg_idx).copied().unwrap_or(0)
    }

    pub fn w1c_mask(&self, reg_idx: usize) -> u32 {
        self.w1c.get(reg_idx).copied().unwrap_or(0)
    }

    /// Reads `N` bytes at a byte offset; bytes past the end read as ones.
    pub fn read_bytes<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0xff; N];
        for (i, byte) in out.iter_mut().enumerate() {
            if let Some(b) = offset.checked_add(i).and_then(|o| self.byte(o)) {
                *byte = b;
            }
        }
        out
    }

    pub fn read_u8(&self, offset: usize) -> u8 {
        self.read_bytes::<1>(offset)[0]
    }

    pub fn read_u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes(self.read_bytes(offset))
    }

    pub fn read_u32(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.read_bytes(offset))
    }

    /// Writes bytes at a byte offset without the guest masks. Bytes past the end of
    /// the space are dropped.
    pub fn write_bytes(&mut self, offset: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(o) = offset.checked_add(i) {
                set_byte(&mut self.registers, o, b);
            }
        }
    }

    fn byte(&self, offset: usize) -> Option<u8> {
        let reg = self.registers.get(offset / 4)?;
        Some((reg >> ((offset % 4) * 8)) as u8)
    }

    /// Sets the guest write masks of consecutive bytes from a byte offset, e.g. to
    /// take over a capability copied from hardware. Bytes past the end are dropped.
    pub fn set_writable_bytes(&mut self, offset: usize, masks: &[u8]) {
        for (i, &m) in masks.iter().enumerate() {
            if let Some(o) = offset.checked_add(i) {
                set_byte(&mut self.writable, o, m);
            }
        }
    }
}

fn set_byte(regs: &mut [u32], offset: usize, value: u8) {
    if let Some(reg) = regs.get_mut(offset / 4) {
        let shift = (offset % 4) * 8;
        *reg = (*reg & !(0xff << shift)) | (u32::from(value) << shift);
    }
}

/// Places an access of `data` at byte `offset` of a dword: the value shifted into
/// position and a mask of the bytes it covers. `None` when the access is empty or
/// spills past the dword.
pub(crate) fn dword_lanes(offset: u64, data: &[u8]) -> Option<(u32, u32)> {
    let offset = usize::try_from(offset).ok()?;
    if data.is_empty() || offset.checked_add(data.len())? > 4 {
        return None;
    }
    let mut value = 0u32;
    let mut lanes = 0u32;
    for (i, &b) in data.iter().enumerate() {
        let shift = (offset + i) * 8;
        value |= u32::from(b) << shift;
        lanes |= 0xff << shift;
    }
    Some((value, lanes))
}

/// Copies the bytes of `reg` that an access of `data.len()` at byte `offset` reads.
/// Returns false (leaving `data` untouched) when the access spills past the dword.
pub(crate) fn extract_lanes(reg: u32, offset: u64, data: &mut [u8]) -> bool {
    let Ok(offset) = usize::try_from(offset) else {
        return false;
    };
    let bytes = reg.to_le_bytes();
    match offset
        .checked_add(data.len())
        .and_then(|end| bytes.get(offset..end))
    {
        Some(src) => {
            data.copy_from_slice(src);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PciConfiguration {
        PciConfiguration::new(&PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1234,
            class: PciClassCode {
                class: 0x03,
                subclass: 0x02,
                prog_if: 0x01,
            },
            revision_id: 0xa1,
            subsystem_vendor_id: 0x10de,
            subsystem_id: 0x5678,
            multifunction: false,
            interrupt_pin: PciInterruptPin::IntA,
        })
    }

    #[test]
    fn lanes_cover_exactly_the_accessed_bytes() {
        assert_eq!(dword_lanes(0, &[1, 2, 3, 4]), Some((0x0403_0201, u32::MAX)));
        assert_eq!(
            dword_lanes(2, &[0xaa, 0xbb]),
            Some((0xbbaa_0000, 0xffff_0000))
        );
        assert_eq!(dword_lanes(3, &[1]), Some((0x0100_0000, 0xff00_0000)));
        assert_eq!(dword_lanes(3, &[1, 2]), None);
        assert_eq!(dword_lanes(0, &[]), None);
        assert_eq!(dword_lanes(u64::MAX, &[1]), None);
        let mut two = [0u8; 2];
        assert!(extract_lanes(0x1122_3344, 1, &mut two));
        assert_eq!(two, [0x33, 0x22]);
        assert!(!extract_lanes(0x1122_3344, 3, &mut two));
    }

    #[test]
    fn masks_decide_what_a_guest_write_does() {
        let mut c = config();
        let reg = 0x40 / 4;
        c.set_register(reg, 0xffff_0000).unwrap();
        c.set_writable_mask(reg, 0x0000_00ff).unwrap();
        c.set_w1c_mask(reg, 0xff00_0000).unwrap();
        c.write_config_register(reg, 0, &[0x5a, 0x5a, 0x5a, 0x0f]);
        // Low byte took the value, byte 1 and 2 stayed, w1c cleared the four bits
        // written as one.
        assert_eq!(c.read_config_register(reg), 0xf0ff_005a);
        // A byte write touches only its lane.
        c.write_config_register(reg, 3, &[0xf0]);
        assert_eq!(c.read_config_register(reg), 0x00ff_005a);
    }

    #[test]
    fn out_of_range_accesses_are_harmless() {
        let mut c = config();
        let before = c.registers.clone();
        assert_eq!(c.read_config_register(NUM_CONFIG_REGISTERS), u32::MAX);
        assert_eq!(
            c.write_config_register(NUM_CONFIG_REGISTERS, 0, &[0; 4]),
            None
        );
        assert_eq!(c.write_config_register(usize::MAX, 0, &[0; 4]), None);
        assert_eq!(c.write_config_register(0x40 / 4, 2, &[0; 4]), None);
        assert_eq!(c.registers, before);
        assert_eq!(
            c.set_register(NUM_CONFIG_REGISTERS, 0),
            Err(PciConfigError::RegisterOutOfRange(NUM_CONFIG_REGISTERS))
        );
        assert_eq!(
            c.read_u16(CONFIG_SPACE_SIZE - 1),
            0xff00 | c.read_u8(4095) as u16
        );
        assert_eq!(c.read_u32(usize::MAX), u32::MAX);
        c.write_bytes(usize::MAX, &[1, 2]);
    }
}
