//! Device numbers on PCI bus 0.

/// Device 0 is the host bridge.
pub const HOST_BRIDGE_SLOT: u8 = 0;
const SLOTS: u8 = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciSlotError {
    #[error("all 31 device slots of PCI bus 0 are in use")]
    Exhausted,
    #[error("PCI slot {0} is not valid for a device (1-31)")]
    Invalid(u8),
    #[error("PCI slot {0} is already in use")]
    InUse(u8),
    #[error("PCI slot {0} is not in use")]
    NotAllocated(u8),
}

#[derive(Debug, Default)]
pub struct PciSlotAllocator {
    /// Bit n set: device n is taken. Bit 0 (host bridge) is always set.
    used: u32,
}

impl PciSlotAllocator {
    pub fn new() -> PciSlotAllocator {
        PciSlotAllocator {
            used: 1 << HOST_BRIDGE_SLOT,
        }
    }

    /// The lowest free device number.
    pub fn allocate(&mut self) -> Result<u8, PciSlotError> {
        let slot = (1..SLOTS)
            .find(|s| self.used & (1 << s) == 0)
            .ok_or(PciSlotError::Exhausted)?;
        self.used |= 1 << slot;
        Ok(slot)
    }

    /// Claims a specific device number (a user-chosen address).
    pub fn allocate_at(&mut self, slot: u8) -> Result<u8, PciSlotError> {
        if slot == HOST_BRIDGE_SLOT || slot >= SLOTS {
            return Err(PciSlotError::Invalid(slot));
        }
        if self.used & (1 << slot) != 0 {
            return Err(PciSlotError::InUse(slot));
        }
        self.used |= 1 << slot;
        Ok(slot)
    }

    pub fn free(&mut self, slot: u8) -> Result<(), PciSlotError> {
        if slot == HOST_BRIDGE_SLOT || slot >= SLOTS {
            return Err(PciSlotError::Invalid(slot));
        }
        if self.used & (1 << slot) == 0 {
            return Err(PciSlotError::NotAllocated(slot));
        }
        self.used &= !(1 << slot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_1_to_31_and_reuses() {
        let mut a = PciSlotAllocator::new();
        let slots: Vec<u8> = (0..31).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(slots, (1..32).collect::<Vec<u8>>());
        assert_eq!(a.allocate(), Err(PciSlotError::Exhausted));
        a.free(7).unwrap();
        assert_eq!(a.free(7), Err(PciSlotError::NotAllocated(7)));
        assert_eq!(a.allocate(), Ok(7));
    }

    #[test]
    fn host_bridge_and_out_of_range_are_refused() {
        let mut a = PciSlotAllocator::new();
        assert_eq!(a.allocate_at(0), Err(PciSlotError::Invalid(0)));
        assert_eq!(a.allocate_at(32), Err(PciSlotError::Invalid(32)));
        assert_eq!(a.free(0), Err(PciSlotError::Invalid(0)));
        assert_eq!(a.allocate_at(5), Ok(5));
        assert_eq!(a.allocate_at(5), Err(PciSlotError::InUse(5)));
        assert_eq!(a.allocate(), Ok(1));
    }
}
