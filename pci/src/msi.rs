//! MSI capability emulation (capability ID 0x05).
//!
//! The capability's registers live in the function's [`PciConfiguration`], guarded by
//! its write masks; [`Msi`] reads them back after every guest write that touches the
//! capability and turns the changes into route operations. Layout, relative to the
//! capability offset:
//!
//! | offset (32-bit) | offset (64-bit) | register |
//! | --- | --- | --- |
//! | 0x2 | 0x2 | message control: enable (bit 0), multiple message capable (3:1, RO), multiple message enable (6:4), 64-bit (7, RO), per-vector masking (8, RO) |
//! | 0x4 | 0x4 | message address (bits 1:0 read as zero) |
//! | — | 0x8 | message upper address |
//! | 0x8 | 0xC | message data (16 bits) |
//! | 0xC | 0x10 | mask bits (per-vector masking only) |
//! | 0x10 | 0x14 | pending bits (per-vector masking only, read-only) |
//!
//! With multiple messages enabled, vector `v` sends the message data with its low
//! `log2(vectors)` bits replaced by `v`.

use std::sync::Arc;

use log::{debug, warn};

use crate::config::{PciCapabilityId, PciConfigError, PciConfiguration};
use crate::interrupt::{MsiInterruptRoute, MsiMessage};

/// The most vectors MSI can give a function.
pub const MAX_MSI_VECTORS: usize = 32;

const CONTROL: usize = 0x2;
const ADDRESS_LO: usize = 0x4;
const ADDRESS_HI: usize = 0x8;

const CONTROL_ENABLE: u16 = 1 << 0;
const CONTROL_MMC_SHIFT: u16 = 1;
const CONTROL_MME_SHIFT: u16 = 4;
const CONTROL_MME_MASK: u16 = 0x7;
const CONTROL_64BIT: u16 = 1 << 7;
const CONTROL_PER_VECTOR_MASK: u16 = 1 << 8;
/// Enable and multiple message enable are the guest's to write.
const CONTROL_WRITABLE: u16 = CONTROL_ENABLE | (CONTROL_MME_MASK << CONTROL_MME_SHIFT);
const ADDRESS_LO_WRITABLE: u32 = !0x3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsiError {
    #[error("MSI vector count {0} is not a power of two from 1 to {MAX_MSI_VECTORS}")]
    InvalidVectorCount(usize),
    #[error("no MSI capability at config offset {offset:#x} (found ID {id:#04x})")]
    NotMsiCapability { offset: usize, id: u8 },
    #[error("MSI capability at {offset:#x} claims the reserved vector count encoding {mmc}")]
    ReservedVectorCount { offset: usize, mmc: u16 },
    #[error("adding the MSI capability: {0}")]
    Config(#[from] PciConfigError),
}

/// The shape of an MSI capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCapability {
    /// Vectors the function can use (multiple message capable): 1, 2, 4, 8, 16 or 32.
    pub vectors: usize,
    /// Whether the message address may be above 4 GiB.
    pub addr_64bit: bool,
    /// Whether the capability has mask and pending bits.
    pub per_vector_mask: bool,
}

impl MsiCapability {
    fn data_offset(&self) -> usize {
        if self.addr_64bit {
            0xc
        } else {
            0x8
        }
    }

    fn mask_offset(&self) -> usize {
        self.data_offset() + 4
    }

    fn pending_offset(&self) -> usize {
        self.mask_offset() + 4
    }

    /// Bytes the capability occupies, header included.
    pub fn byte_len(&self) -> usize {
        if self.per_vector_mask {
            self.pending_offset() + 4
        } else {
            self.data_offset() + 2
        }
    }

    fn all_vectors_mask(&self) -> u32 {
        match self.vectors {
            MAX_MSI_VECTORS => u32::MAX,
            n => (1u32 << n) - 1,
        }
    }

    /// The read-only part of message control: what the function is capable of.
    fn control_capabilities(&self) -> u16 {
        let mmc = self.vectors.trailing_zeros() as u16;
        let mut control = mmc << CONTROL_MMC_SHIFT;
        if self.addr_64bit {
            control |= CONTROL_64BIT;
        }
        if self.per_vector_mask {
            control |= CONTROL_PER_VECTOR_MASK;
        }
        control
    }

    /// The body (after ID and next pointer) and its guest write masks.
    fn body(&self) -> (Vec<u8>, Vec<u8>) {
        let control = self.control_capabilities();
        let body_len = self.byte_len() - CONTROL;
        let mut body = vec![0u8; body_len];
        let mut writable = vec![0u8; body_len];
        let put = |buf: &mut Vec<u8>, cap_offset: usize, bytes: &[u8]| {
            let at = cap_offset - CONTROL;
            buf[at..at + bytes.len()].copy_from_slice(bytes);
        };
        put(&mut body, CONTROL, &control.to_le_bytes());
        put(&mut writable, CONTROL, &CONTROL_WRITABLE.to_le_bytes());
        put(
            &mut writable,
            ADDRESS_LO,
            &ADDRESS_LO_WRITABLE.to_le_bytes(),
        );
        if self.addr_64bit {
            put(&mut writable, ADDRESS_HI, &u32::MAX.to_le_bytes());
        }
        put(&mut writable, self.data_offset(), &u16::MAX.to_le_bytes());
        if self.per_vector_mask {
            put(
                &mut writable,
                self.mask_offset(),
                &self.all_vectors_mask().to_le_bytes(),
            );
        }
        (body, writable)
    }
}

/// A function's MSI capability and the state of its routes.
pub struct Msi {
    offset: usize,
    cap: MsiCapability,
    route: Arc<dyn MsiInterruptRoute>,
    /// The message each vector's route was last enabled with; `None` while it is
    /// not delivering.
    delivering: [Option<MsiMessage>; MAX_MSI_VECTORS],
}

impl Msi {
    /// Adds the capability to `config`, disabled, and returns its emulation.
    pub fn add_to(
        config: &mut PciConfiguration,
        cap: MsiCapability,
        route: Arc<dyn MsiInterruptRoute>,
    ) -> Result<Self, MsiError> {
        if !cap.vectors.is_power_of_two() || cap.vectors > MAX_MSI_VECTORS {
            return Err(MsiError::InvalidVectorCount(cap.vectors));
        }
        let (body, writable) = cap.body();
        let offset = config.add_capability(PciCapabilityId::MSI, &body, &writable)?;
        Ok(Self::at(offset, cap, route))
    }

    /// Takes over an MSI capability already in `config` at `offset` (copied from a
    /// physical function): sets its guest write masks and turns it off, so the guest
    /// starts from a disabled capability with every vector unmasked and none pending.
    pub fn from_existing(
        config: &mut PciConfiguration,
        offset: usize,
        route: Arc<dyn MsiInterruptRoute>,
    ) -> Result<Self, MsiError> {
        let id = config.read_u8(offset);
        if id != PciCapabilityId::MSI.0 {
            return Err(MsiError::NotMsiCapability { offset, id });
        }
        let control = config.read_u16(offset + CONTROL);
        let mmc = (control >> CONTROL_MMC_SHIFT) & 0x7;
        let vectors = 1usize << mmc;
        if vectors > MAX_MSI_VECTORS {
            return Err(MsiError::ReservedVectorCount { offset, mmc });
        }
        let cap = MsiCapability {
            vectors,
            addr_64bit: control & CONTROL_64BIT != 0,
            per_vector_mask: control & CONTROL_PER_VECTOR_MASK != 0,
        };
        let (_, writable) = cap.body();
        config.set_writable_bytes(offset + CONTROL, &writable);
        // Only the read-only control bits (capabilities) carry over from the device.
        config.write_bytes(offset + CONTROL, &cap.control_capabilities().to_le_bytes());
        if cap.per_vector_mask {
            config.write_bytes(offset + cap.mask_offset(), &[0; 8]);
        }
        Ok(Self::at(offset, cap, route))
    }

    fn at(offset: usize, cap: MsiCapability, route: Arc<dyn MsiInterruptRoute>) -> Self {
        Self {
            offset,
            cap,
            route,
            delivering: [None; MAX_MSI_VECTORS],
        }
    }

    pub fn cap_offset(&self) -> usize {
        self.offset
    }

    pub fn capability(&self) -> MsiCapability {
        self.cap
    }

    /// Whether any byte of config register `reg_idx` belongs to the capability.
    pub fn covers(&self, reg_idx: usize) -> bool {
        let start = self.offset / 4;
        let end = (self.offset + self.cap.byte_len()).div_ceil(4);
        (start..end).contains(&reg_idx)
    }

    pub fn is_enabled(&self, config: &PciConfiguration) -> bool {
        self.control(config) & CONTROL_ENABLE != 0
    }

    /// Vectors the guest enabled (0 while MSI is off).
    pub fn enabled_vectors(&self, config: &PciConfiguration) -> usize {
        let control = self.control(config);
        if control & CONTROL_ENABLE == 0 {
            return 0;
        }
        let mme = (control >> CONTROL_MME_SHIFT) & CONTROL_MME_MASK;
        // The guest may write more than the function is capable of; use what it has.
        (1usize << mme).min(self.cap.vectors)
    }

    /// The message vector `vector` sends with the current programming.
    pub fn message(&self, config: &PciConfiguration, vector: usize) -> MsiMessage {
        let mut address = u64::from(config.read_u32(self.offset + ADDRESS_LO));
        if self.cap.addr_64bit {
            address |= u64::from(config.read_u32(self.offset + ADDRESS_HI)) << 32;
        }
        let data = u32::from(config.read_u16(self.offset + self.cap.data_offset()));
        let vectors = self.enabled_vectors(config).max(1);
        let vector_bits = (vectors - 1) as u32;
        MsiMessage {
            address,
            data: (data & !vector_bits) | (vector as u32 & vector_bits),
        }
    }

    pub fn is_masked(&self, config: &PciConfiguration, vector: usize) -> bool {
        self.cap.per_vector_mask && bit(config.read_u32(self.mask_reg()), vector)
    }

    pub fn is_pending(&self, config: &PciConfiguration, vector: usize) -> bool {
        self.cap.per_vector_mask && bit(config.read_u32(self.pending_reg()), vector)
    }

    /// Brings the routes in line with the capability after a guest write to it:
    /// enables, disables, masks, unmasks (delivering what was pending), reprograms.
    pub fn config_written(&mut self, config: &mut PciConfiguration) {
        let enabled = self.enabled_vectors(config);
        for vector in 0..self.cap.vectors {
            if vector >= enabled {
                // A vector that is off has nothing to be pending for.
                self.set_pending(config, vector, false);
            }
            let want = (vector < enabled && !self.is_masked(config, vector))
                .then(|| self.message(config, vector));
            self.apply(config, vector, want);
        }
    }

    /// Raises `vector` on behalf of the device: delivered if enabled and unmasked,
    /// latched as pending if masked, dropped while MSI is off.
    pub fn trigger(&mut self, config: &mut PciConfiguration, vector: usize) {
        if vector >= self.enabled_vectors(config) {
            debug!("msi: dropping vector {vector}: not enabled");
            return;
        }
        if self.is_masked(config, vector) {
            self.set_pending(config, vector, true);
            return;
        }
        if self.delivering.get(vector).copied().flatten().is_some() {
            if let Err(e) = self.route.trigger(vector) {
                warn!("msi: {e}");
            }
        }
    }

    fn apply(&mut self, config: &mut PciConfiguration, vector: usize, want: Option<MsiMessage>) {
        let Some(current) = self.delivering.get(vector).copied() else {
            return;
        };
        if current == want {
            return;
        }
        let result = match want {
            Some(msg) => self.route.enable(vector, msg),
            None => self.route.disable(vector),
        };
        if let Err(e) = result {
            warn!("msi: {e}");
            // Leave the vector not delivering so the next write retries the route.
            if let Some(slot) = self.delivering.get_mut(vector) {
                *slot = None;
            }
            return;
        }
        if let Some(slot) = self.delivering.get_mut(vector) {
            *slot = want;
        }
        if current.is_none() && want.is_some() && self.is_pending(config, vector) {
            self.set_pending(config, vector, false);
            if let Err(e) = self.route.trigger(vector) {
                warn!("msi: delivering pending interrupt: {e}");
            }
        }
    }

    fn control(&self, config: &PciConfiguration) -> u16 {
        config.read_u16(self.offset + CONTROL)
    }

    fn mask_reg(&self) -> usize {
        self.offset + self.cap.mask_offset()
    }

    fn pending_reg(&self) -> usize {
        self.offset + self.cap.pending_offset()
    }

    fn set_pending(&self, config: &mut PciConfiguration, vector: usize, pending: bool) {
        if !self.cap.per_vector_mask || vector >= MAX_MSI_VECTORS {
            return;
        }
        let bits = config.read_u32(self.pending_reg());
        let bits = if pending {
            bits | (1 << vector)
        } else {
            bits & !(1 << vector)
        };
        config.write_bytes(self.pending_reg(), &bits.to_le_bytes());
    }
}

fn bit(bits: u32, n: usize) -> bool {
    n < 32 && bits & (1 << n) != 0
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
                class: 0x02,
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

    struct Fixture {
        config: PciConfiguration,
        msi: Msi,
        route: Arc<RecordingRoute>,
    }

    fn fixture(cap: MsiCapability) -> Fixture {
        let mut config = config();
        let route = Arc::new(RecordingRoute::default());
        let msi = Msi::add_to(&mut config, cap, route.clone()).unwrap();
        Fixture { config, msi, route }
    }

    impl Fixture {
        /// A guest dword/word write at a capability-relative offset.
        fn write(&mut self, cap_offset: usize, bytes: &[u8]) {
            let abs = self.msi.cap_offset() + cap_offset;
            let reg = abs / 4;
            assert!(self.msi.covers(reg));
            self.config
                .write_config_register(reg, (abs % 4) as u64, bytes);
            self.msi.config_written(&mut self.config);
        }
    }

    const CAP64_MASKED: MsiCapability = MsiCapability {
        vectors: 4,
        addr_64bit: true,
        per_vector_mask: true,
    };

    #[test]
    fn capability_layout_matches_the_spec() {
        let f = fixture(CAP64_MASKED);
        let off = f.msi.cap_offset();
        assert_eq!(f.config.read_u8(off), 0x05);
        // 4 vectors → MMC 2; 64-bit; per-vector masking.
        assert_eq!(f.config.read_u16(off + 2), (2 << 1) | (1 << 7) | (1 << 8));
        assert_eq!(CAP64_MASKED.byte_len(), 0x18);
        let plain = MsiCapability {
            vectors: 1,
            addr_64bit: false,
            per_vector_mask: false,
        };
        assert_eq!(plain.byte_len(), 0xa);
        assert!(f.msi.covers(off / 4) && f.msi.covers((off + 0x17) / 4));
        assert!(!f.msi.covers((off + 0x18) / 4));
    }

    #[test]
    fn enabling_routes_each_enabled_vector_with_its_data() {
        let mut f = fixture(CAP64_MASKED);
        f.write(0x4, &0xfee0_1000u32.to_le_bytes());
        f.write(0x8, &0x0u32.to_le_bytes());
        f.write(0xc, &0x4041u16.to_le_bytes());
        assert!(f.route.take().is_empty(), "nothing routes while disabled");
        // Enable with MME = 1 (two vectors).
        f.write(0x2, &(CONTROL_ENABLE | (1 << 4)).to_le_bytes());
        let msg = |data| MsiMessage {
            address: 0xfee0_1000,
            data,
        };
        assert_eq!(
            f.route.take(),
            vec![
                RouteOp::Enable(0, msg(0x4040)),
                RouteOp::Enable(1, msg(0x4041))
            ]
        );
        f.write(0x2, &0u16.to_le_bytes());
        assert_eq!(
            f.route.take(),
            vec![RouteOp::Disable(0), RouteOp::Disable(1)]
        );
    }

    #[test]
    fn masked_vector_latches_pending_and_delivers_on_unmask() {
        let mut f = fixture(CAP64_MASKED);
        f.write(0x4, &0xfee0_0000u32.to_le_bytes());
        f.write(0x2, &CONTROL_ENABLE.to_le_bytes());
        f.route.take();
        f.write(0x10, &1u32.to_le_bytes());
        assert_eq!(f.route.take(), vec![RouteOp::Disable(0)]);
        f.msi.trigger(&mut f.config, 0);
        assert!(f.route.take().is_empty());
        assert!(f.msi.is_pending(&f.config, 0));
        // The guest cannot clear pending bits itself.
        f.write(0x14, &0u32.to_le_bytes());
        assert!(f.msi.is_pending(&f.config, 0));
        f.write(0x10, &0u32.to_le_bytes());
        assert_eq!(
            f.route.take(),
            vec![
                RouteOp::Enable(
                    0,
                    MsiMessage {
                        address: 0xfee0_0000,
                        data: 0
                    }
                ),
                RouteOp::Trigger(0)
            ]
        );
        assert!(!f.msi.is_pending(&f.config, 0));
        f.msi.trigger(&mut f.config, 0);
        assert_eq!(f.route.take(), vec![RouteOp::Trigger(0)]);
    }

    #[test]
    fn disabling_msi_drops_pending_interrupts() {
        let mut f = fixture(CAP64_MASKED);
        f.write(0x10, &1u32.to_le_bytes());
        f.write(0x2, &CONTROL_ENABLE.to_le_bytes());
        f.msi.trigger(&mut f.config, 0);
        assert!(f.msi.is_pending(&f.config, 0));
        f.write(0x2, &0u16.to_le_bytes());
        assert!(!f.msi.is_pending(&f.config, 0));
        f.write(0x10, &0u32.to_le_bytes());
        f.write(0x2, &CONTROL_ENABLE.to_le_bytes());
        assert!(!f.route.take().contains(&RouteOp::Trigger(0)));
    }

    #[test]
    fn reprogramming_a_live_vector_updates_its_route() {
        let mut f = fixture(MsiCapability {
            vectors: 1,
            addr_64bit: false,
            per_vector_mask: false,
        });
        f.write(0x2, &CONTROL_ENABLE.to_le_bytes());
        f.route.take();
        f.write(0x4, &0xfee0_2003u32.to_le_bytes());
        assert_eq!(
            f.route.take(),
            vec![RouteOp::Enable(
                0,
                MsiMessage {
                    address: 0xfee0_2000,
                    data: 0
                }
            )],
            "address bits 1:0 are read-only zero"
        );
    }

    #[test]
    fn guest_cannot_enable_more_vectors_than_capable_or_trigger_disabled_ones() {
        let mut f = fixture(MsiCapability {
            vectors: 2,
            addr_64bit: false,
            per_vector_mask: false,
        });
        f.write(0x2, &(CONTROL_ENABLE | (5 << 4)).to_le_bytes());
        assert_eq!(f.msi.enabled_vectors(&f.config), 2);
        assert_eq!(f.route.take().len(), 2);
        f.msi.trigger(&mut f.config, 2);
        f.msi.trigger(&mut f.config, usize::MAX);
        assert!(f.route.take().is_empty());
    }

    #[test]
    fn takes_over_a_capability_copied_from_hardware() {
        let mut c = config();
        // What a device's MSI capability might hold: 64-bit, masking, 8 vectors
        // capable, left enabled with stale programming.
        let mut raw = vec![0u8; 0x16];
        raw[0..2]
            .copy_from_slice(&((3 << 1) | (1 << 7) | (1 << 8) | 1u16 | (3 << 4)).to_le_bytes());
        raw[2..6].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
        raw[0xe..0x12].copy_from_slice(&0xffu32.to_le_bytes());
        raw[0x12..0x16].copy_from_slice(&0x3u32.to_le_bytes());
        let off = c.add_capability(PciCapabilityId::MSI, &raw, &[]).unwrap();
        let route = Arc::new(RecordingRoute::default());
        let mut msi = Msi::from_existing(&mut c, off, route.clone()).unwrap();
        assert_eq!(
            msi.capability(),
            MsiCapability {
                vectors: 8,
                addr_64bit: true,
                per_vector_mask: true
            }
        );
        assert!(!msi.is_enabled(&c));
        assert!(!msi.is_masked(&c, 0) && !msi.is_pending(&c, 0));
        // Now guest-writable like an emulated capability.
        c.write_config_register(off / 4, 2, &(CONTROL_ENABLE | (3 << 4)).to_le_bytes());
        msi.config_written(&mut c);
        assert_eq!(msi.enabled_vectors(&c), 8);
        assert_eq!(route.take().len(), 8);

        let not_msi = c.find_capability(PciCapabilityId::MSI).unwrap() + 4;
        assert_eq!(
            Msi::from_existing(&mut c, not_msi, route).err(),
            Some(MsiError::NotMsiCapability {
                offset: not_msi,
                id: 0x00
            })
        );
    }

    #[test]
    fn invalid_vector_counts_are_refused() {
        let mut c = config();
        for vectors in [0, 3, 64] {
            let cap = MsiCapability {
                vectors,
                addr_64bit: false,
                per_vector_mask: false,
            };
            let route = Arc::new(RecordingRoute::default());
            assert_eq!(
                Msi::add_to(&mut c, cap, route).err(),
                Some(MsiError::InvalidVectorCount(vectors))
            );
        }
    }
}
