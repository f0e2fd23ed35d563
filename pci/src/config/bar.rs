//! Base address registers: placement, the sizing protocol, and noticing moves.
//!
//! The address bits below a BAR's size are read-only zero and its type bits are
//! read-only, so writing all ones and reading back yields the size mask, which is how
//! a guest sizes a BAR. The sizing write is followed by a write restoring an address;
//! only writes that leave a BAR at a new, real address are reported as moves.
//!
//! A BAR whose address bits are all set is taken to be mid-sizing. That address (the
//! top of the 32-bit or 64-bit space) is never one the platform's BAR windows hand out.

use super::{PciConfigError, PciConfiguration};

/// BARs in a type 0 header.
pub const NUM_BARS: usize = 6;
/// The index [`BarReprogram`] uses for the expansion ROM BAR.
pub const ROM_BAR_INDEX: usize = NUM_BARS;

const BAR0_REG: usize = 4;
const ROM_BAR_REG: usize = 12;

const BAR_IO_SPACE: u32 = 0x1;
const BAR_MEM_64BIT: u32 = 0x4;
const BAR_MEM_PREFETCHABLE: u32 = 0x8;
const BAR_IO_ADDR_MASK: u32 = !0x3;
const BAR_MEM_ADDR_MASK: u32 = !0xf;
const ROM_ENABLE: u32 = 0x1;
const ROM_ADDR_MASK: u32 = !0x7ff;

const MIN_IO_BAR_SIZE: u64 = 4;
/// An I/O BAR decodes at most 256 ports.
const MAX_IO_BAR_SIZE: u64 = 256;
const MIN_MEM_BAR_SIZE: u64 = 16;
const MIN_ROM_BAR_SIZE: u64 = 2048;
const IO_SPACE_END: u64 = 1 << 16;
const MEM32_SPACE_END: u64 = 1 << 32;

/// What address space a BAR decodes and how wide its address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Memory32,
    Memory64,
}

/// A BAR as the VMM places it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciBar {
    pub index: usize,
    pub addr: u64,
    pub size: u64,
    pub kind: BarKind,
    /// Memory BARs only: reads have no side effects, so the guest may map it
    /// write-combined. Large GPU apertures are 64-bit prefetchable.
    pub prefetchable: bool,
}

/// The expansion ROM BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciRomBar {
    pub addr: u64,
    pub size: u64,
    /// The guest's ROM enable bit.
    pub enabled: bool,
}

/// A guest write moved BAR `index` (or the ROM BAR, [`ROM_BAR_INDEX`]) from `old` to
/// `new`; whatever backs `len` bytes at `old` must now be found at `new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarReprogram {
    pub index: usize,
    pub kind: BarKind,
    pub old: u64,
    pub new: u64,
    pub len: u64,
}

/// What the configuration remembers about a BAR besides its registers: its size and
/// the address last reported, so moves can be told from sizing.
#[derive(Debug, Clone, Copy)]
pub(super) struct BarState {
    kind: BarKind,
    size: u64,
    addr: u64,
    prefetchable: bool,
}

impl BarState {
    fn type_bits(&self) -> u32 {
        match self.kind {
            BarKind::Io => BAR_IO_SPACE,
            BarKind::Memory32 if self.prefetchable => BAR_MEM_PREFETCHABLE,
            BarKind::Memory32 => 0,
            BarKind::Memory64 if self.prefetchable => BAR_MEM_64BIT | BAR_MEM_PREFETCHABLE,
            BarKind::Memory64 => BAR_MEM_64BIT,
        }
    }

    fn low_addr_mask(&self) -> u32 {
        match self.kind {
            BarKind::Io => BAR_IO_ADDR_MASK,
            BarKind::Memory32 | BarKind::Memory64 => BAR_MEM_ADDR_MASK,
        }
    }

    /// Writable bits of the low register and, for 64-bit BARs, of the high one.
    fn writable_masks(&self) -> (u32, u32) {
        let size_mask = !(self.size - 1);
        let low = size_mask as u32 & self.low_addr_mask();
        let high = match self.kind {
            BarKind::Memory64 => (size_mask >> 32) as u32,
            _ => 0,
        };
        (low, high)
    }
}

fn bar_regs(index: usize) -> (usize, usize) {
    (BAR0_REG + index, BAR0_REG + index + 1)
}

/// True when every writable address bit of `reg` is set: the guest is sizing it.
fn all_address_bits_set(config: &PciConfiguration, reg: usize, addr_mask: u32) -> bool {
    let mask = config.writable_mask(reg) & addr_mask;
    mask != 0 && config.read_config_register(reg) & mask == mask
}

impl PciConfiguration {
    /// Adds a BAR at the address the VMM allocated for it.
    pub fn add_bar(&mut self, bar: &PciBar) -> Result<(), PciConfigError> {
        let index = bar.index;
        if index >= NUM_BARS {
            return Err(PciConfigError::BarIndexOutOfRange(index));
        }
        let is_64 = bar.kind == BarKind::Memory64;
        if is_64 && index + 1 >= NUM_BARS {
            return Err(PciConfigError::Bar64AtLastSlot(index));
        }
        let slots = if is_64 {
            index..index + 2
        } else {
            index..index + 1
        };
        for slot in slots {
            if self.bar_slot_taken(slot) {
                return Err(PciConfigError::BarInUse(slot));
            }
        }
        let (min, max_end) = match bar.kind {
            BarKind::Io => (MIN_IO_BAR_SIZE, IO_SPACE_END),
            BarKind::Memory32 => (MIN_MEM_BAR_SIZE, MEM32_SPACE_END),
            BarKind::Memory64 => (MIN_MEM_BAR_SIZE, u64::MAX),
        };
        let too_big = bar.kind == BarKind::Io && bar.size > MAX_IO_BAR_SIZE;
        if !bar.size.is_power_of_two() || bar.size < min || too_big {
            return Err(PciConfigError::BarSizeInvalid {
                index,
                size: bar.size,
                min,
            });
        }
        if bar.addr & (bar.size - 1) != 0 {
            return Err(PciConfigError::BarMisaligned {
                index,
                addr: bar.addr,
                size: bar.size,
            });
        }
        if bar
            .addr
            .checked_add(bar.size)
            .is_none_or(|end| end > max_end)
        {
            return Err(PciConfigError::BarOutOfRange {
                index,
                addr: bar.addr,
                size: bar.size,
                kind: bar.kind,
            });
        }

        let state = BarState {
            kind: bar.kind,
            size: bar.size,
            addr: bar.addr,
            prefetchable: bar.prefetchable && bar.kind != BarKind::Io,
        };
        let (low_reg, high_reg) = bar_regs(index);
        let (low_mask, high_mask) = state.writable_masks();
        self.registers[low_reg] = (bar.addr as u32 & state.low_addr_mask()) | state.type_bits();
        self.writable[low_reg] = low_mask;
        if is_64 {
            self.registers[high_reg] = (bar.addr >> 32) as u32;
            self.writable[high_reg] = high_mask;
        }
        self.bars[index] = Some(state);
        Ok(())
    }

    fn bar_slot_taken(&self, slot: usize) -> bool {
        let upper_half_of_64 = slot
            .checked_sub(1)
            .and_then(|prev| self.bars.get(prev))
            .is_some_and(|b| b.is_some_and(|b| b.kind == BarKind::Memory64));
        self.bars.get(slot).is_some_and(Option::is_some) || upper_half_of_64
    }

    /// The BAR at `index` with the address it was last placed at (by the VMM or a
    /// reported guest move).
    pub fn bar(&self, index: usize) -> Option<PciBar> {
        let state = self.bars.get(index)?.as_ref()?;
        Some(PciBar {
            index,
            addr: state.addr,
            size: state.size,
            kind: state.kind,
            prefetchable: state.prefetchable,
        })
    }

    pub fn bars(&self) -> impl Iterator<Item = PciBar> + '_ {
        (0..NUM_BARS).filter_map(|i| self.bar(i))
    }

    /// Adds an expansion ROM BAR, disabled, at `addr`.
    pub fn add_rom_bar(&mut self, addr: u32, size: u64) -> Result<(), PciConfigError> {
        if self.rom.is_some() {
            return Err(PciConfigError::RomBarInUse);
        }
        if !size.is_power_of_two() || !(MIN_ROM_BAR_SIZE..=MEM32_SPACE_END).contains(&size) {
            return Err(PciConfigError::BarSizeInvalid {
                index: ROM_BAR_INDEX,
                size,
                min: MIN_ROM_BAR_SIZE,
            });
        }
        let addr = u64::from(addr);
        if addr & (size - 1) != 0 {
            return Err(PciConfigError::BarMisaligned {
                index: ROM_BAR_INDEX,
                addr,
                size,
            });
        }
        if addr + size > MEM32_SPACE_END {
            return Err(PciConfigError::BarOutOfRange {
                index: ROM_BAR_INDEX,
                addr,
                size,
                kind: BarKind::Memory32,
            });
        }
        self.registers[ROM_BAR_REG] = addr as u32;
        self.writable[ROM_BAR_REG] = (!(size - 1) as u32 & ROM_ADDR_MASK) | ROM_ENABLE;
        self.rom = Some(BarState {
            kind: BarKind::Memory32,
            size,
            addr,
            prefetchable: false,
        });
        Ok(())
    }

    pub fn rom_bar(&self) -> Option<PciRomBar> {
        let state = self.rom.as_ref()?;
        Some(PciRomBar {
            addr: state.addr,
            size: state.size,
            enabled: self.registers[ROM_BAR_REG] & ROM_ENABLE != 0,
        })
    }

    /// Called after every guest write; reports a BAR the write moved.
    pub(super) fn bar_write_completed(&mut self, reg_idx: usize) -> Option<BarReprogram> {
        if reg_idx == ROM_BAR_REG {
            return self.rom_write_completed();
        }
        let slot = reg_idx.checked_sub(BAR0_REG).filter(|&s| s < NUM_BARS)?;
        let index = match self.bars.get(slot).copied().flatten() {
            Some(_) => slot,
            None => {
                let prev = slot.checked_sub(1)?;
                let state = self.bars.get(prev).copied().flatten()?;
                if state.kind != BarKind::Memory64 {
                    return None;
                }
                prev
            }
        };
        let state = self.bars.get(index).copied().flatten()?;
        let (low_reg, high_reg) = bar_regs(index);
        let is_64 = state.kind == BarKind::Memory64;
        let sizing = all_address_bits_set(self, low_reg, u32::MAX)
            || (is_64 && all_address_bits_set(self, high_reg, u32::MAX));
        if sizing {
            return None;
        }
        let mut new = u64::from(self.read_config_register(low_reg) & state.low_addr_mask());
        if is_64 {
            new |= u64::from(self.read_config_register(high_reg)) << 32;
        }
        self.report_move(index, new)
    }

    fn rom_write_completed(&mut self) -> Option<BarReprogram> {
        self.rom?;
        // The enable bit is writable too, but sizing leaves it clear.
        if all_address_bits_set(self, ROM_BAR_REG, ROM_ADDR_MASK) {
            return None;
        }
        let new = u64::from(self.read_config_register(ROM_BAR_REG) & ROM_ADDR_MASK);
        self.report_move(ROM_BAR_INDEX, new)
    }

    fn report_move(&mut self, index: usize, new: u64) -> Option<BarReprogram> {
        let state = if index == ROM_BAR_INDEX {
            self.rom.as_mut()?
        } else {
            self.bars.get_mut(index)?.as_mut()?
        };
        if state.addr == new {
            return None;
        }
        let old = std::mem::replace(&mut state.addr, new);
        Some(BarReprogram {
            index,
            kind: state.kind,
            old,
            new,
            len: state.size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PciClassCode, PciHeader, PciInterruptPin};
    use super::*;

    fn config() -> PciConfiguration {
        PciConfiguration::new(&PciHeader {
            vendor_id: 0x1234,
            device_id: 0x5678,
            class: PciClassCode {
                class: 0x03,
                subclass: 0x00,
                prog_if: 0x00,
            },
            revision_id: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            multifunction: false,
            interrupt_pin: PciInterruptPin::None,
        })
    }

    fn bar(index: usize, addr: u64, size: u64, kind: BarKind, prefetchable: bool) -> PciBar {
        PciBar {
            index,
            addr,
            size,
            kind,
            prefetchable,
        }
    }

    fn write32(c: &mut PciConfiguration, reg: usize, v: u32) -> Option<BarReprogram> {
        c.write_config_register(reg, 0, &v.to_le_bytes())
    }

    #[test]
    fn bar_registers_encode_address_and_type() {
        let mut c = config();
        c.add_bar(&bar(0, 0xc000_0000, 0x100_0000, BarKind::Memory32, false))
            .unwrap();
        c.add_bar(&bar(1, 0x40_0000_0000, 1 << 34, BarKind::Memory64, true))
            .unwrap();
        c.add_bar(&bar(3, 0xc040, 0x40, BarKind::Io, true)).unwrap();
        assert_eq!(c.read_config_register(4), 0xc000_0000);
        assert_eq!(c.read_config_register(5), 0x0000_000c);
        assert_eq!(c.read_config_register(6), 0x40);
        assert_eq!(c.read_config_register(7), 0xc041);
        let io = c.bar(3).unwrap();
        assert!(!io.prefetchable, "I/O BARs have no prefetchable bit");
        assert_eq!(c.bars().count(), 3);
    }

    #[test]
    fn sizing_reads_back_size_mask_and_is_not_a_move() {
        let mut c = config();
        c.add_bar(&bar(0, 0xc000_0000, 0x1000, BarKind::Memory32, false))
            .unwrap();
        c.add_bar(&bar(2, 0x1_0000_0000, 0x2000_0000, BarKind::Memory64, true))
            .unwrap();
        c.add_bar(&bar(4, 0xc000, 0x20, BarKind::Io, false))
            .unwrap();

        assert_eq!(write32(&mut c, 4, u32::MAX), None);
        assert_eq!(c.read_config_register(4), 0xffff_f000);
        assert_eq!(write32(&mut c, 4, 0xc000_0000), None);

        // 64-bit: low then high, as Linux does, then restore both.
        assert_eq!(write32(&mut c, 6, u32::MAX), None);
        assert_eq!(c.read_config_register(6), 0xe000_000c);
        assert_eq!(write32(&mut c, 7, u32::MAX), None);
        assert_eq!(c.read_config_register(7), u32::MAX);
        assert_eq!(write32(&mut c, 6, 0x0000_000c), None);
        assert_eq!(write32(&mut c, 7, 0x1), None);
        assert_eq!(c.bar(2).unwrap().addr, 0x1_0000_0000);

        assert_eq!(write32(&mut c, 8, u32::MAX), None);
        assert_eq!(c.read_config_register(8), 0xffff_ffe1);
        assert_eq!(write32(&mut c, 8, 0xc000), None);
    }

    #[test]
    fn reprogramming_reports_the_move() {
        let mut c = config();
        c.add_bar(&bar(0, 0xc000_0000, 0x1000, BarKind::Memory32, false))
            .unwrap();
        c.add_bar(&bar(1, 0x1_0000_0000, 0x1000_0000, BarKind::Memory64, true))
            .unwrap();
        assert_eq!(
            write32(&mut c, 4, 0xd000_0123),
            Some(BarReprogram {
                index: 0,
                kind: BarKind::Memory32,
                old: 0xc000_0000,
                new: 0xd000_0000,
                len: 0x1000
            })
        );
        assert_eq!(c.bar(0).unwrap().addr, 0xd000_0000);
        // Each half of a 64-bit move is reported as the address changes.
        let m = write32(&mut c, 6, 0x2).unwrap();
        assert_eq!((m.index, m.old, m.new), (1, 0x1_0000_0000, 0x2_0000_0000));
        assert_eq!(m.kind, BarKind::Memory64);
        let m = write32(&mut c, 5, 0x3000_0000).unwrap();
        assert_eq!(m.new, 0x2_3000_0000);
    }

    #[test]
    fn rom_bar_sizing_enable_and_move() {
        let mut c = config();
        c.add_rom_bar(0xe000_0000, 0x2_0000).unwrap();
        assert_eq!(c.add_rom_bar(0, 0x800), Err(PciConfigError::RomBarInUse));
        assert_eq!(write32(&mut c, 12, 0xffff_fffe), None);
        assert_eq!(c.read_config_register(12), 0xfffe_0000);
        assert_eq!(write32(&mut c, 12, 0xe000_0001), None);
        assert!(c.rom_bar().unwrap().enabled);
        let m = write32(&mut c, 12, 0xe002_0001).unwrap();
        assert_eq!(m.index, ROM_BAR_INDEX);
        assert_eq!((m.old, m.new, m.len), (0xe000_0000, 0xe002_0000, 0x2_0000));
    }

    #[test]
    fn invalid_bars_are_refused() {
        let mut c = config();
        let cases = [
            (
                bar(6, 0, 0x1000, BarKind::Memory32, false),
                PciConfigError::BarIndexOutOfRange(6),
            ),
            (
                bar(5, 0, 0x1000, BarKind::Memory64, false),
                PciConfigError::Bar64AtLastSlot(5),
            ),
            (
                bar(0, 0, 0x1800, BarKind::Memory32, false),
                PciConfigError::BarSizeInvalid {
                    index: 0,
                    size: 0x1800,
                    min: 16,
                },
            ),
            (
                bar(0, 0, 0x200, BarKind::Io, false),
                PciConfigError::BarSizeInvalid {
                    index: 0,
                    size: 0x200,
                    min: 4,
                },
            ),
            (
                bar(0, 0x800, 0x1000, BarKind::Memory32, false),
                PciConfigError::BarMisaligned {
                    index: 0,
                    addr: 0x800,
                    size: 0x1000,
                },
            ),
            (
                bar(0, 0x1_0000_0000, 0x1000, BarKind::Memory32, false),
                PciConfigError::BarOutOfRange {
                    index: 0,
                    addr: 0x1_0000_0000,
                    size: 0x1000,
                    kind: BarKind::Memory32,
                },
            ),
        ];
        for (b, err) in cases {
            assert_eq!(c.add_bar(&b), Err(err));
        }
        c.add_bar(&bar(0, 0, 1 << 32, BarKind::Memory64, true))
            .unwrap();
        assert_eq!(
            c.add_bar(&bar(1, 0, 0x1000, BarKind::Memory32, false)),
            Err(PciConfigError::BarInUse(1))
        );
    }

    #[test]
    fn writes_to_unused_bar_slots_stay_zero() {
        let mut c = config();
        assert_eq!(write32(&mut c, 9, u32::MAX), None);
        assert_eq!(c.read_config_register(9), 0);
        assert_eq!(write32(&mut c, 12, u32::MAX), None);
        assert_eq!(c.read_config_register(12), 0);
    }
}
