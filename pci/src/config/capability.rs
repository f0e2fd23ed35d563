//! Building the capability lists: conventional capabilities in `0x40..0x100` chained
//! from the pointer at `0x34`, and PCIe extended capabilities chained from `0x100`.
//!
//! Capabilities are laid out one after another in the order they are added. Their
//! headers (ID and next pointer) are read-only; each capability says which of its
//! body bits the guest may write.

use super::{set_byte, PciConfigError, PciConfiguration, CONFIG_SPACE_SIZE};
use super::{LEGACY_CONFIG_SPACE_SIZE, STATUS_CAPABILITIES_LIST};

const CAPABILITY_POINTER_OFFSET: usize = 0x34;
const FIRST_CAPABILITY_OFFSET: usize = 0x40;
const CAPABILITY_HEADER_LEN: usize = 2;
const EXT_CAPABILITY_HEADER_LEN: usize = 4;
/// Enough for every capability that fits in 192 bytes; bounds walks of lists the VMM
/// did not build itself (e.g. copied from hardware).
const MAX_CAPABILITY_WALK: usize = 48;

/// A conventional capability ID (PCI Code and ID Assignment spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciCapabilityId(pub u8);

impl PciCapabilityId {
    pub const POWER_MANAGEMENT: Self = Self(0x01);
    pub const MSI: Self = Self(0x05);
    pub const VENDOR_SPECIFIC: Self = Self(0x09);
    pub const PCI_EXPRESS: Self = Self(0x10);
    pub const MSIX: Self = Self(0x11);
}

/// A PCIe extended capability ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciExtCapabilityId(pub u16);

impl PciExtCapabilityId {
    pub const ADVANCED_ERROR_REPORTING: Self = Self(0x0001);
    pub const VENDOR_SPECIFIC: Self = Self(0x000b);
    pub const RESIZABLE_BAR: Self = Self(0x0015);
}

/// Where the next capability goes and which one to link it from.
#[derive(Debug, Clone, Default)]
pub(super) struct CapabilityChain {
    last: Option<usize>,
    next_free: Option<usize>,
    last_ext: Option<usize>,
    next_ext_free: Option<usize>,
}

fn align4(offset: usize) -> usize {
    offset.next_multiple_of(4)
}

impl PciConfiguration {
    /// Appends a conventional capability: `body` is everything after the ID and next
    /// pointer, `writable` the guest-writable bits of each body byte (shorter than the
    /// body: the rest is read-only). Returns the capability's offset.
    pub fn add_capability(
        &mut self,
        id: PciCapabilityId,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, PciConfigError> {
        if writable.len() > body.len() {
            return Err(PciConfigError::CapabilityMaskTooLong {
                mask: writable.len(),
                body: body.len(),
            });
        }
        let len = CAPABILITY_HEADER_LEN + body.len();
        let offset = align4(self.caps.next_free.unwrap_or(FIRST_CAPABILITY_OFFSET));
        let end = offset + len;
        if end > LEGACY_CONFIG_SPACE_SIZE {
            return Err(PciConfigError::CapabilitySpaceFull {
                len,
                area: "conventional (0x40-0xff)",
            });
        }
        self.write_bytes(offset, &[id.0, 0]);
        self.write_bytes(offset + CAPABILITY_HEADER_LEN, body);
        self.set_writable_bytes(offset + CAPABILITY_HEADER_LEN, writable);
        // `end` is at most 0x100, so every offset fits the 8-bit pointers.
        let link = match self.caps.last {
            Some(prev) => prev + 1,
            None => CAPABILITY_POINTER_OFFSET,
        };
        set_byte(&mut self.registers, link, offset as u8);
        self.set_status_bits(STATUS_CAPABILITIES_LIST);
        self.caps.last = Some(offset);
        self.caps.next_free = Some(end);
        Ok(offset)
    }

    /// Appends a PCIe extended capability (header: ID, `version`, next pointer) in
    /// `0x100..0x1000`. Returns its offset.
    pub fn add_extended_capability(
        &mut self,
        id: PciExtCapabilityId,
        version: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, PciConfigError> {
        if writable.len() > body.len() {
            return Err(PciConfigError::CapabilityMaskTooLong {
                mask: writable.len(),
                body: body.len(),
            });
        }
        let len = EXT_CAPABILITY_HEADER_LEN + body.len();
        let offset = align4(self.caps.next_ext_free.unwrap_or(LEGACY_CONFIG_SPACE_SIZE));
        let end = offset + len;
        if end > CONFIG_SPACE_SIZE {
            return Err(PciConfigError::CapabilitySpaceFull {
                len,
                area: "extended (0x100-0xfff)",
            });
        }
        let header = u32::from(id.0) | (u32::from(version & 0xf) << 16);
        self.write_bytes(offset, &header.to_le_bytes());
        self.write_bytes(offset + EXT_CAPABILITY_HEADER_LEN, body);
        self.set_writable_bytes(offset + EXT_CAPABILITY_HEADER_LEN, writable);
        if let Some(prev) = self.caps.last_ext {
            if let Some(reg) = self.registers.get_mut(prev / 4) {
                *reg |= (offset as u32) << 20;
            }
        }
        self.caps.last_ext = Some(offset);
        self.caps.next_ext_free = Some(end);
        Ok(offset)
    }

    /// The conventional capabilities as the guest would find them: `(id, offset)`.
    pub fn capabilities(&self) -> Vec<(PciCapabilityId, usize)> {
        let mut found = Vec::new();
        if self.status() & STATUS_CAPABILITIES_LIST == 0 {
            return found;
        }
        let mut offset = usize::from(self.read_u8(CAPABILITY_POINTER_OFFSET) & !0x3);
        while offset >= FIRST_CAPABILITY_OFFSET && found.len() < MAX_CAPABILITY_WALK {
            found.push((PciCapabilityId(self.read_u8(offset)), offset));
            offset = usize::from(self.read_u8(offset + 1) & !0x3);
        }
        found
    }

    /// The extended capabilities as the guest would find them: `(id, offset)`.
    pub fn extended_capabilities(&self) -> Vec<(PciExtCapabilityId, usize)> {
        let mut found = Vec::new();
        let mut offset = LEGACY_CONFIG_SPACE_SIZE;
        while found.len() < MAX_CAPABILITY_WALK {
            let header = self.read_u32(offset);
            if header == 0 || header == u32::MAX {
                break;
            }
            found.push((PciExtCapabilityId(header as u16), offset));
            offset = (header >> 20) as usize & !0x3;
            if offset < LEGACY_CONFIG_SPACE_SIZE {
                break;
            }
        }
        found
    }

    /// Offset of the first conventional capability with `id`.
    pub fn find_capability(&self, id: PciCapabilityId) -> Option<usize> {
        self.capabilities()
            .into_iter()
            .find_map(|(cap, offset)| (cap == id).then_some(offset))
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

    #[test]
    fn capabilities_are_linked_in_order() {
        let mut c = config();
        assert!(c.capabilities().is_empty());
        assert_eq!(c.status() & STATUS_CAPABILITIES_LIST, 0);
        let a = c
            .add_capability(PciCapabilityId::VENDOR_SPECIFIC, &[3, 0xaa, 0xbb], &[])
            .unwrap();
        let b = c
            .add_capability(PciCapabilityId::MSIX, &[0; 10], &[0, 0xc0])
            .unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x48, "dword aligned after the 5-byte vendor capability");
        assert_ne!(c.status() & STATUS_CAPABILITIES_LIST, 0);
        assert_eq!(c.read_u8(0x34), 0x40);
        assert_eq!(c.read_u16(0x40), 0x4809);
        assert_eq!(c.read_u16(0x48), 0x0011);
        assert_eq!(
            c.capabilities(),
            vec![
                (PciCapabilityId::VENDOR_SPECIFIC, 0x40),
                (PciCapabilityId::MSIX, 0x48)
            ]
        );
        assert_eq!(c.find_capability(PciCapabilityId::MSIX), Some(0x48));
        assert_eq!(c.find_capability(PciCapabilityId::MSI), None);
    }

    #[test]
    fn capability_headers_are_read_only_and_body_follows_its_mask() {
        let mut c = config();
        let off = c
            .add_capability(PciCapabilityId::MSIX, &[0x07, 0x00, 1, 2, 3, 4], &[0, 0xc0])
            .unwrap();
        let reg = off / 4;
        c.write_config_register(reg, 0, &[0xff; 4]);
        assert_eq!(c.read_u16(off), 0x0011, "id and next pointer unchanged");
        assert_eq!(c.read_u16(off + 2), 0xc007, "only bits 14 and 15 took");
        c.write_config_register(reg + 1, 0, &[0; 4]);
        assert_eq!(c.read_u32(off + 4), 0x0403_0201);
    }

    #[test]
    fn conventional_area_overflow_is_an_error() {
        let mut c = config();
        c.add_capability(PciCapabilityId::VENDOR_SPECIFIC, &[0; 150], &[])
            .unwrap();
        assert_eq!(
            c.add_capability(PciCapabilityId::VENDOR_SPECIFIC, &[0; 60], &[]),
            Err(PciConfigError::CapabilitySpaceFull {
                len: 62,
                area: "conventional (0x40-0xff)"
            })
        );
        assert_eq!(
            c.add_capability(PciCapabilityId::MSI, &[0; 2], &[0; 3]),
            Err(PciConfigError::CapabilityMaskTooLong { mask: 3, body: 2 })
        );
    }

    #[test]
    fn extended_capabilities_chain_from_0x100() {
        let mut c = config();
        let a = c
            .add_extended_capability(PciExtCapabilityId::VENDOR_SPECIFIC, 1, &[0; 6], &[])
            .unwrap();
        let b = c
            .add_extended_capability(PciExtCapabilityId::RESIZABLE_BAR, 1, &[0; 8], &[0xff])
            .unwrap();
        assert_eq!((a, b), (0x100, 0x10c));
        assert_eq!(c.read_u32(0x100), 0x10c1_000b);
        assert_eq!(c.read_u32(0x10c), 0x0001_0015);
        assert_eq!(
            c.extended_capabilities(),
            vec![
                (PciExtCapabilityId::VENDOR_SPECIFIC, 0x100),
                (PciExtCapabilityId::RESIZABLE_BAR, 0x10c)
            ]
        );
        assert!(c
            .add_extended_capability(PciExtCapabilityId::VENDOR_SPECIFIC, 1, &[0; 4000], &[])
            .is_err());
    }
}
