//! GSI numbers for MSI routes.

use std::collections::BTreeSet;

/// GSIs 0-23 are IOAPIC pins; MSI routes get the numbers above.
pub const FIRST_MSI_GSI: u32 = 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GsiError {
    #[error("all GSIs up to {0} are in use")]
    Exhausted(u32),
    #[error("GSI {0} was not allocated (legacy pins 0-23 are never handed out)")]
    NotAllocated(u32),
}

#[derive(Debug)]
pub struct GsiAllocator {
    last: u32,
    used: BTreeSet<u32>,
}

impl GsiAllocator {
    /// Hands out GSIs from 24 to `last` inclusive (KVM's routing table size bounds it).
    pub fn new(last: u32) -> GsiAllocator {
        GsiAllocator {
            last,
            used: BTreeSet::new(),
        }
    }

    pub fn allocate(&mut self) -> Result<u32, GsiError> {
        let gsi = (FIRST_MSI_GSI..=self.last)
            .find(|g| !self.used.contains(g))
            .ok_or(GsiError::Exhausted(self.last))?;
        self.used.insert(gsi);
        Ok(gsi)
    }

    pub fn free(&mut self, gsi: u32) -> Result<(), GsiError> {
        if self.used.remove(&gsi) {
            Ok(())
        } else {
            Err(GsiError::NotAllocated(gsi))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_above_the_ioapic_pins_and_reuses() {
        let mut a = GsiAllocator::new(26);
        assert_eq!(a.allocate(), Ok(24));
        assert_eq!(a.allocate(), Ok(25));
        assert_eq!(a.allocate(), Ok(26));
        assert_eq!(a.allocate(), Err(GsiError::Exhausted(26)));
        a.free(25).unwrap();
        assert_eq!(a.free(25), Err(GsiError::NotAllocated(25)));
        assert_eq!(a.free(4), Err(GsiError::NotAllocated(4)));
        assert_eq!(a.allocate(), Ok(25));
    }
}
