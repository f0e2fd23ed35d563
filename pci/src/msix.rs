//! MSI-X emulation: the capability (ID 0x11), the vector table and the pending bit
//! array (PBA).
//!
//! The capability lives in the function's [`PciConfiguration`]; the guest may write
//! only its enable (bit 15) and function mask (bit 14) bits, and [`Msix::config_written`]
//! picks them up. The table and PBA live in BAR memory the VMM traps; the device
//! forwards accesses inside them to [`Msix::read_table`], [`Msix::write_table`],
//! [`Msix::read_pba`] and [`Msix::write_pba`], which accept any offset and size.
//!
//! Table entry (16 bytes): message address low, message address high, message data,
//! vector control (bit 0: masked; other bits reserved, read as zero). Entries start
//! masked.
//!
//! A vector delivers while MSI-X is enabled, the function is not masked and the entry
//! is not masked. A vector raised through [`Msix::trigger`] while masked sets its PBA
//! bit, which is cleared, and the interrupt delivered, when the vector is unmasked.

use std::sync::Arc;

use log::{debug, warn};

use crate::config::{PciCapabilityId, PciConfigError, PciConfiguration, NUM_BARS};
use crate::interrupt::{MsiInterruptRoute, MsiMessage};

/// Most vectors an MSI-X capability can describe.
pub const MAX_MSIX_VECTORS: usize = 2048;
/// Bytes per table entry.
pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// Bytes of one capability (header, control, table and PBA locations).
pub const MSIX_CAPABILITY_SIZE: usize = 12;

const CONTROL: usize = 0x2;
const CONTROL_TABLE_SIZE_MASK: u16 = 0x7ff;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_WRITABLE: u16 = CONTROL_ENABLE | CONTROL_FUNCTION_MASK;
const TABLE: usize = 0x4;
const PBA: usize = 0x8;
const BIR_MASK: u32 = 0x7;

const ENTRY_ADDR_LO: usize = 0;
const ENTRY_ADDR_HI: usize = 1;
const ENTRY_DATA: usize = 2;
const VECTOR_CONTROL_MASKED: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsixError {
    #[error("MSI-X vector count {0} is outside 1 to {MAX_MSIX_VECTORS}")]
    InvalidVectorCount(usize),
    #[error("MSI-X {what} BAR index {bar} does not exist; BARs are 0 to 5")]
    InvalidBar { what: &'static str, bar: u8 },
    #[error("MSI-X {what} offset {offset:#x} is not 8-byte aligned")]
    Misaligned { what: &'static str, offset: u32 },
    #[error(
        "MSI-X table {table:#x}+{table_len:#x} and PBA {pba:#x}+{pba_len:#x} overlap in BAR {bar}"
    )]
    Overlap {
        bar: u8,
        table: u32,
        table_len: u64,
        pba: u32,
        pba_len: u64,
    },
    #[error("no MSI-X capability at config offset {offset:#x} (found ID {id:#04x})")]
    NotMsixCapability { offset: usize, id: u8 },
    #[error("adding the MSI-X capability: {0}")]
    Config(#[from] PciConfigError),
}

/// Where the table and PBA are and how many vectors the function has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    pub vectors: usize,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

impl MsixLayout {
    /// Bytes of the vector table.
    pub fn table_len(&self) -> u64 {
        self.vectors as u64 * MSIX_TABLE_ENTRY_SIZE
    }

    /// Bytes of the PBA: one bit per vector, in whole qwords.
    pub fn pba_len(&self) -> u64 {
        self.vectors.div_ceil(64) as u64 * 8
    }

    /// Which MSI-X structure, if any, byte `offset` of BAR `bar` falls in, with the
    /// offset from that structure's start: what a device's BAR handler needs to
    /// forward a trapped access.
    pub fn locate(&self, bar: u8, offset: u64) -> Option<MsixRegion> {
        let within =
            |start: u32, len: u64| offset.checked_sub(u64::from(start)).filter(|&o| o < len);
        if bar == self.table_bar {
            if let Some(o) = within(self.table_offset, self.table_len()) {
                return Some(MsixRegion::Table(o));
            }
        }
        if bar == self.pba_bar {
            if let Some(o) = within(self.pba_offset, self.pba_len()) {
                return Some(MsixRegion::Pba(o));
            }
        }
        None
    }

    fn validate(&self) -> Result<(), MsixError> {
        if !(1..=MAX_MSIX_VECTORS).contains(&self.vectors) {
            return Err(MsixError::InvalidVectorCount(self.vectors));
        }
        for (what, bar, offset) in [
            ("table", self.table_bar, self.table_offset),
            ("PBA", self.pba_bar, self.pba_offset),
        ] {
            if usize::from(bar) >= NUM_BARS {
                return Err(MsixError::InvalidBar { what, bar });
            }
            if offset & BIR_MASK != 0 {
                return Err(MsixError::Misaligned { what, offset });
            }
        }
        let (table, pba) = (u64::from(self.table_offset), u64::from(self.pba_offset));
        let disjoint = table + self.table_len() <= pba || pba + self.pba_len() <= table;
        if self.table_bar == self.pba_bar && !disjoint {
            return Err(MsixError::Overlap {
                bar: self.table_bar,
                table: self.table_offset,
                table_len: self.table_len(),
                pba: self.pba_offset,
                pba_len: self.pba_len(),
            });
        }
        Ok(())
    }
}

/// An MSI-X structure and an offset into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixRegion {
    Table(u64),
    Pba(u64),
}

/// One vector table entry as the guest programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixTableEntry {
    pub msg_addr_lo: u32,
    pub msg_addr_hi: u32,
    pub msg_data: u32,
    pub vector_control: u32,
}

impl Default for MsixTableEntry {
    fn default() -> Self {
        Self {
            msg_addr_lo: 0,
            msg_addr_hi: 0,
            msg_data: 0,
            vector_control: VECTOR_CONTROL_MASKED,
        }
    }
}

impl MsixTableEntry {
    pub fn masked(&self) -> bool {
        self.vector_control & VECTOR_CONTROL_MASKED != 0
    }

    pub fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.msg_addr_lo) | (u64::from(self.msg_addr_hi) << 32),
            data: self.msg_data,
        }
    }

    fn dword(&self, index: usize) -> u32 {
        match index {
            ENTRY_ADDR_LO => self.msg_addr_lo,
            ENTRY_ADDR_HI => self.msg_addr_hi,
            ENTRY_DATA => self.msg_data,
            // Dword 3, the last one.
            _ => self.vector_control,
        }
    }

    fn set_byte(&mut self, byte: usize, value: u8) {
        let field = match byte / 4 {
            ENTRY_ADDR_LO => &mut self.msg_addr_lo,
            ENTRY_ADDR_HI => &mut self.msg_addr_hi,
            ENTRY_DATA => &mut self.msg_data,
            // Dword 3, the last one.
            _ => &mut self.vector_control,
        };
        let shift = (byte % 4) * 8;
        *field = (*field & !(0xff << shift)) | (u32::from(value) << shift);
        // Reserved vector control bits read as zero whatever the guest writes.
        self.vector_control &= VECTOR_CONTROL_MASKED;
    }
}

/// A function's MSI-X state and its routes.
pub struct Msix {
    offset: usize,
    layout: MsixLayout,
    table: Vec<MsixTableEntry>,
    pba: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    /// The message each vector's route was last enabled with; `None` while it is not
    /// delivering.
    delivering: Vec<Option<MsiMessage>>,
    route: Arc<dyn MsiInterruptRoute>,
}

impl Msix {
    /// Adds the capability to `config`, disabled with every entry masked, and returns
    /// its emulation.
    pub fn add_to(
        config: &mut PciConfiguration,
        layout: MsixLayout,
        route: Arc<dyn MsiInterruptRoute>,
    ) -> Result<Self, MsixError> {
        layout.validate()?;
        // `vectors` is at most 2048, so the encoded size fits the 11-bit field.
        let control = (layout.vectors - 1) as u16 & CONTROL_TABLE_SIZE_MASK;
        let table = layout.table_offset | u32::from(layout.table_bar);
        let pba = layout.pba_offset | u32::from(layout.pba_bar);
        let mut body = Vec::with_capacity(MSIX_CAPABILITY_SIZE - 2);
        body.extend_from_slice(&control.to_le_bytes());
        body.extend_from_slice(&table.to_le_bytes());
        body.extend_from_slice(&pba.to_le_bytes());
        let writable = CONTROL_WRITABLE.to_le_bytes();
        let offset = config.add_capability(PciCapabilityId::MSIX, &body, &writable)?;
        Ok(Self::at(offset, layout, route))
    }

    /// Takes over an MSI-X capability already in `config` at `offset` (copied from a
    /// physical function): reads the layout from it, sets its guest write masks and
    /// turns it off, so the guest starts from a disabled, unmasked function with every
    /// entry masked.
    pub fn from_existing(
        config: &mut PciConfiguration,
        offset: usize,
        route: Arc<dyn MsiInterruptRoute>,
    ) -> Result<Self, MsixError> {
        let id = config.read_u8(offset);
        if id != PciCapabilityId::MSIX.0 {
            return Err(MsixError::NotMsixCapability { offset, id });
        }
        let control = config.read_u16(offset + CONTROL);
        let table = config.read_u32(offset + TABLE);
        let pba = config.read_u32(offset + PBA);
        let layout = MsixLayout {
            vectors: usize::from(control & CONTROL_TABLE_SIZE_MASK) + 1,
            table_bar: (table & BIR_MASK) as u8,
            table_offset: table & !BIR_MASK,
            pba_bar: (pba & BIR_MASK) as u8,
            pba_offset: pba & !BIR_MASK,
        };
        layout.validate()?;
        let mut writable = [0u8; MSIX_CAPABILITY_SIZE - CONTROL];
        writable[..2].copy_from_slice(&CONTROL_WRITABLE.to_le_bytes());
        config.set_writable_bytes(offset + CONTROL, &writable);
        config.write_bytes(
            offset + CONTROL,
            &(control & !CONTROL_WRITABLE).to_le_bytes(),
        );
        Ok(Self::at(offset, layout, route))
    }

    fn at(offset: usize, layout: MsixLayout, route: Arc<dyn MsiInterruptRoute>) -> Self {
        Self {
            offset,
            layout,
            table: vec![MsixTableEntry::default(); layout.vectors],
            pba: vec![0; layout.vectors.div_ceil(64)],
            enabled: false,
            function_masked: false,
            delivering: vec![None; layout.vectors],
            route,
        }
    }

    pub fn cap_offset(&self) -> usize {
        self.offset
    }

    pub fn layout(&self) -> &MsixLayout {
        &self.layout
    }

    /// Whether any byte of config register `reg_idx` belongs to the capability.
    pub fn covers(&self, reg_idx: usize) -> bool {
        let start = self.offset / 4;
        let end = (self.offset + MSIX_CAPABILITY_SIZE).div_ceil(4);
        (start..end).contains(&reg_idx)
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn is_function_masked(&self) -> bool {
        self.function_masked
    }

    pub fn entry(&self, vector: usize) -> Option<MsixTableEntry> {
        self.table.get(vector).copied()
    }

    pub fn is_pending(&self, vector: usize) -> bool {
        self.pba
            .get(vector / 64)
            .is_some_and(|q| q & (1 << (vector % 64)) != 0)
    }

    /// Picks up the enable and function mask bits after a guest write to the
    /// capability.
    pub fn config_written(&mut self, config: &PciConfiguration) {
        let control = config.read_u16(self.offset + CONTROL);
        let enabled = control & CONTROL_ENABLE != 0;
        let function_masked = control & CONTROL_FUNCTION_MASK != 0;
        if (enabled, function_masked) == (self.enabled, self.function_masked) {
            return;
        }
        self.enabled = enabled;
        self.function_masked = function_masked;
        for vector in 0..self.table.len() {
            self.update_vector(vector);
        }
    }

    /// A guest read of the table at byte `offset` from its start. Bytes past the
    /// table read as zero.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| self.table_byte(o))
                .unwrap_or(0);
        }
    }

    /// A guest write to the table at byte `offset` from its start. Bytes past the
    /// table are dropped; touched vectors are re-evaluated once the whole write has
    /// landed, so an 8-byte address write reprograms a live route once.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let mut touched: Option<(usize, usize)> = None;
        for (i, &value) in data.iter().enumerate() {
            let Some((vector, byte)) = offset.checked_add(i as u64).and_then(entry_byte) else {
                continue;
            };
            let Some(entry) = self.table.get_mut(vector) else {
                continue;
            };
            entry.set_byte(byte, value);
            touched = Some(match touched {
                Some((first, last)) => (first.min(vector), last.max(vector)),
                None => (vector, vector),
            });
        }
        if let Some((first, last)) = touched {
            for vector in first..=last {
                self.update_vector(vector);
            }
        }
    }

    /// A guest read of the PBA at byte `offset` from its start.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| {
                    let qword = self.pba.get(o / 8)?;
                    Some((qword >> ((o % 8) * 8)) as u8)
                })
                .unwrap_or(0);
        }
    }

    /// The PBA is read-only; guest writes are dropped.
    pub fn write_pba(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "msix: ignoring {}-byte write to the PBA at {offset:#x}",
            data.len()
        );
    }

    /// Raises `vector` on behalf of the device: delivered if it may, latched in the
    /// PBA if masked, dropped while MSI-X is off.
    pub fn trigger(&mut self, vector: usize) {
        let Some(entry) = self.table.get(vector) else {
            debug!(
                "msix: dropping vector {vector}: the table has {}",
                self.table.len()
            );
            return;
        };
        if !self.enabled {
            return;
        }
        if self.function_masked || entry.masked() {
            self.set_pending(vector, true);
            return;
        }
        if self.delivering.get(vector).copied().flatten().is_some() {
            if let Err(e) = self.route.trigger(vector) {
                warn!("msix: {e}");
            }
        }
    }

    fn table_byte(&self, offset: u64) -> Option<u8> {
        let (vector, byte) = entry_byte(offset)?;
        let dword = self.table.get(vector)?.dword(byte / 4);
        Some((dword >> ((byte % 4) * 8)) as u8)
    }

    fn update_vector(&mut self, vector: usize) {
        let Some(entry) = self.table.get(vector).copied() else {
            return;
        };
        let Some(current) = self.delivering.get(vector).copied() else {
            return;
        };
        let want =
            (self.enabled && !self.function_masked && !entry.masked()).then(|| entry.message());
        if current == want {
            return;
        }
        let result = match want {
            Some(msg) => self.route.enable(vector, msg),
            None => self.route.disable(vector),
        };
        let applied = match result {
            Ok(()) => want,
            Err(e) => {
                warn!("msix: {e}");
                // Not delivering, so the next guest write retries the route.
                None
            }
        };
        if let Some(slot) = self.delivering.get_mut(vector) {
            *slot = applied;
        }
        if current.is_none() && applied.is_some() && self.is_pending(vector) {
            self.set_pending(vector, false);
            if let Err(e) = self.route.trigger(vector) {
                warn!("msix: delivering pending interrupt: {e}");
            }
        }
    }

    fn set_pending(&mut self, vector: usize, pending: bool) {
        if let Some(qword) = self.pba.get_mut(vector / 64) {
            let bit = 1u64 << (vector % 64);
            if pending {
                *qword |= bit;
            } else {
                *qword &= !bit;
            }
        }
    }
}

/// Splits a table offset into (vector, byte within its entry).
fn entry_byte(offset: u64) -> Option<(usize, usize)> {
    let vector = usize::try_from(offset / MSIX_TABLE_ENTRY_SIZE).ok()?;
    Some((vector, (offset % MSIX_TABLE_ENTRY_SIZE) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PciClassCode, PciHeader, PciInterruptPin};
    use crate::interrupt::testing::{RecordingRoute, RouteOp};

    fn config() -> PciConfiguration {
        PciConfiguration::new(&PciHeader {
            vendor_id: 0x1234,
            device_id: 0x5678,
            class: PciClassCode {
                class: 0x03,
                subclass: 0x02,
                prog_if: 0x00,
            },
            revision_id: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            multifunction: false,
            interrupt_pin: PciInterruptPin::None,
        })
    }

    const LAYOUT: MsixLayout = MsixLayout {
        vectors: 4,
        table_bar: 0,
        table_offset: 0x2000,
        pba_bar: 0,
        pba_offset: 0x3000,
    };

    struct Fixture {
        config: PciConfiguration,
        msix: Msix,
        route: Arc<RecordingRoute>,
    }

    fn fixture() -> Fixture {
        let mut config = config();
        let route = Arc::new(RecordingRoute::default());
        let msix = Msix::add_to(&mut config, LAYOUT, route.clone()).unwrap();
        Fixture {
            config,
            msix,
            route,
        }
    }

    impl Fixture {
        fn write_control(&mut self, control: u16) {
            let abs = self.msix.cap_offset() + CONTROL;
            self.config
                .write_config_register(abs / 4, (abs % 4) as u64, &control.to_le_bytes());
            self.msix.config_written(&self.config);
        }

        fn program(&mut self, vector: u64, addr: u64, data: u32, masked: bool) {
            let base = vector * MSIX_TABLE_ENTRY_SIZE;
            self.msix.write_table(base, &addr.to_le_bytes());
            self.msix.write_table(base + 8, &data.to_le_bytes());
            self.msix
                .write_table(base + 12, &u32::from(masked).to_le_bytes());
        }
    }

    fn msg(address: u64, data: u32) -> MsiMessage {
        MsiMessage { address, data }
    }

    #[test]
    fn capability_describes_table_and_pba() {
        let f = fixture();
        let off = f.msix.cap_offset();
        assert_eq!(f.config.read_u8(off), 0x11);
        assert_eq!(f.config.read_u16(off + 2), 3, "table size is N-1");
        assert_eq!(f.config.read_u32(off + 4), 0x2000);
        assert_eq!(f.config.read_u32(off + 8), 0x3000);
        assert_eq!(LAYOUT.table_len(), 64);
        assert_eq!(LAYOUT.pba_len(), 8);
    }

    #[test]
    fn only_enable_and_function_mask_are_writable() {
        let mut f = fixture();
        f.write_control(0xffff);
        let off = f.msix.cap_offset();
        assert_eq!(f.config.read_u16(off + 2), 0xc003);
        assert!(f.msix.is_enabled() && f.msix.is_function_masked());
    }

    #[test]
    fn entries_start_masked_and_read_back_what_was_written() {
        let mut f = fixture();
        let mut b = [0u8; 16];
        f.msix.read_table(16, &mut b);
        assert_eq!(b, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        f.program(1, 0x1_fee0_0000, 0x4021, true);
        f.msix.read_table(16, &mut b);
        assert_eq!(
            u64::from_le_bytes(b[..8].try_into().unwrap()),
            0x1_fee0_0000
        );
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 0x4021);
        // Reserved vector control bits stay zero.
        f.msix.write_table(16 + 12, &u32::MAX.to_le_bytes());
        assert_eq!(f.msix.entry(1).unwrap().vector_control, 1);
        assert!(f.route.take().is_empty(), "MSI-X is disabled");
    }

    #[test]
    fn enable_routes_unmasked_vectors_and_function_mask_stops_them() {
        let mut f = fixture();
        f.program(0, 0xfee0_0000, 0x30, false);
        f.program(1, 0xfee0_1000, 0x31, true);
        f.write_control(CONTROL_ENABLE);
        assert_eq!(
            f.route.take(),
            vec![RouteOp::Enable(0, msg(0xfee0_0000, 0x30))]
        );
        f.write_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        assert_eq!(f.route.take(), vec![RouteOp::Disable(0)]);
        f.msix.trigger(0);
        assert!(f.msix.is_pending(0));
        f.write_control(CONTROL_ENABLE);
        assert_eq!(
            f.route.take(),
            vec![
                RouteOp::Enable(0, msg(0xfee0_0000, 0x30)),
                RouteOp::Trigger(0)
            ]
        );
        assert!(!f.msix.is_pending(0));
    }

    #[test]
    fn masked_vector_sets_pba_bit_and_unmask_delivers() {
        let mut f = fixture();
        f.program(2, 0xfee0_0000, 0x42, true);
        f.write_control(CONTROL_ENABLE);
        assert!(f.route.take().is_empty());
        f.msix.trigger(2);
        assert!(f.route.take().is_empty());
        let mut pba = [0u8; 8];
        f.msix.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 1 << 2);
        // Guest writes to the PBA change nothing.
        f.msix.write_pba(0, &[0; 8]);
        assert!(f.msix.is_pending(2));
        f.msix.write_table(2 * 16 + 12, &0u32.to_le_bytes());
        assert_eq!(
            f.route.take(),
            vec![
                RouteOp::Enable(2, msg(0xfee0_0000, 0x42)),
                RouteOp::Trigger(2)
            ]
        );
        f.msix.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0);
        f.msix.trigger(2);
        assert_eq!(f.route.take(), vec![RouteOp::Trigger(2)]);
        f.msix.write_table(2 * 16 + 12, &1u32.to_le_bytes());
        assert_eq!(f.route.take(), vec![RouteOp::Disable(2)]);
    }

    #[test]
    fn reprogramming_a_live_vector_updates_its_route_once_per_write() {
        let mut f = fixture();
        f.program(0, 0xfee0_0000, 0x30, false);
        f.write_control(CONTROL_ENABLE);
        f.route.take();
        f.msix.write_table(0, &0xfee0_2000u64.to_le_bytes());
        assert_eq!(
            f.route.take(),
            vec![RouteOp::Enable(0, msg(0xfee0_2000, 0x30))]
        );
    }

    #[test]
    fn disabled_msix_drops_triggers_and_out_of_range_is_harmless() {
        let mut f = fixture();
        f.program(0, 0xfee0_0000, 0x30, false);
        f.msix.trigger(0);
        assert!(!f.msix.is_pending(0));
        f.msix.trigger(4);
        f.msix.trigger(usize::MAX);
        f.msix.write_table(u64::MAX - 2, &[0xff; 8]);
        f.msix.write_table(LAYOUT.table_len(), &[0xff; 8]);
        let mut b = [0xffu8; 8];
        f.msix.read_table(u64::MAX, &mut b);
        assert_eq!(b, [0; 8]);
        f.msix.read_pba(u64::MAX - 3, &mut b);
        assert_eq!(b, [0; 8]);
        assert!(f.route.take().is_empty());
    }

    #[test]
    fn locate_maps_bar_offsets_to_table_and_pba() {
        assert_eq!(LAYOUT.locate(0, 0x1fff), None);
        assert_eq!(LAYOUT.locate(0, 0x2000), Some(MsixRegion::Table(0)));
        assert_eq!(LAYOUT.locate(0, 0x203f), Some(MsixRegion::Table(0x3f)));
        assert_eq!(LAYOUT.locate(0, 0x2040), None);
        assert_eq!(LAYOUT.locate(0, 0x3007), Some(MsixRegion::Pba(7)));
        assert_eq!(LAYOUT.locate(0, 0x3008), None);
        assert_eq!(LAYOUT.locate(1, 0x2000), None);
        assert_eq!(LAYOUT.locate(0, u64::MAX), None);
    }

    #[test]
    fn takes_over_a_capability_copied_from_hardware() {
        let mut c = config();
        // 17 vectors, table in BAR 3 at 0x0, PBA in BAR 3 at 0x800, left enabled.
        let mut raw = [0u8; 10];
        raw[0..2].copy_from_slice(&(CONTROL_ENABLE | 16).to_le_bytes());
        raw[2..6].copy_from_slice(&3u32.to_le_bytes());
        raw[6..10].copy_from_slice(&0x803u32.to_le_bytes());
        let off = c.add_capability(PciCapabilityId::MSIX, &raw, &[]).unwrap();
        let route = Arc::new(RecordingRoute::default());
        let mut msix = Msix::from_existing(&mut c, off, route.clone()).unwrap();
        assert_eq!(
            *msix.layout(),
            MsixLayout {
                vectors: 17,
                table_bar: 3,
                table_offset: 0,
                pba_bar: 3,
                pba_offset: 0x800,
            }
        );
        assert_eq!(c.read_u16(off + 2), 16, "disabled, table size kept");
        assert!(!msix.is_enabled());
        msix.write_table(16 * 16 + 12, &0u32.to_le_bytes());
        c.write_config_register(off / 4, 2, &CONTROL_ENABLE.to_le_bytes());
        msix.config_written(&c);
        assert!(msix.is_enabled());
        assert_eq!(route.take(), vec![RouteOp::Enable(16, msg(0, 0))]);
        assert_eq!(
            Msix::from_existing(&mut c, off + 4, route).err(),
            Some(MsixError::NotMsixCapability {
                offset: off + 4,
                id: 3
            })
        );
    }

    #[test]
    fn invalid_layouts_are_refused() {
        let mut c = config();
        let route: Arc<dyn MsiInterruptRoute> = Arc::new(RecordingRoute::default());
        let bad = [
            (
                MsixLayout {
                    vectors: 0,
                    ..LAYOUT
                },
                MsixError::InvalidVectorCount(0),
            ),
            (
                MsixLayout {
                    vectors: 2049,
                    ..LAYOUT
                },
                MsixError::InvalidVectorCount(2049),
            ),
            (
                MsixLayout {
                    table_bar: 6,
                    ..LAYOUT
                },
                MsixError::InvalidBar {
                    what: "table",
                    bar: 6,
                },
            ),
            (
                MsixLayout {
                    pba_offset: 0x3004,
                    ..LAYOUT
                },
                MsixError::Misaligned {
                    what: "PBA",
                    offset: 0x3004,
                },
            ),
            (
                MsixLayout {
                    pba_offset: 0x2038,
                    ..LAYOUT
                },
                MsixError::Overlap {
                    bar: 0,
                    table: 0x2000,
                    table_len: 64,
                    pba: 0x2038,
                    pba_len: 8,
                },
            ),
        ];
        for (layout, err) in bad {
            assert_eq!(Msix::add_to(&mut c, layout, route.clone()).err(), Some(err));
        }
        let other_bar = MsixLayout {
            pba_bar: 1,
            pba_offset: 0x2000,
            ..LAYOUT
        };
        assert!(Msix::add_to(&mut c, other_bar, route).is_ok());
    }
}
