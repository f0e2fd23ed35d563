//! Allocation of aligned address ranges (MMIO windows, port I/O).

use std::collections::BTreeMap;
use vm_allocator::{AllocPolicy, RangeInclusive};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("cannot create an allocator over {base:#x}+{size:#x}: {reason}")]
    InvalidPool {
        base: u64,
        size: u64,
        reason: String,
    },
    #[error("alignment {0:#x} is not a power of two")]
    InvalidAlignment(u64),
    #[error("size 0 requested")]
    ZeroSize,
    #[error("no free {size:#x}-byte range aligned to {align:#x} in {base:#x}-{last:#x}")]
    Exhausted {
        size: u64,
        align: u64,
        base: u64,
        last: u64,
    },
    #[error("range {addr:#x}+{size:#x} is not free in {base:#x}-{last:#x}")]
    NotFree {
        addr: u64,
        size: u64,
        base: u64,
        last: u64,
    },
    #[error("no range was allocated at {0:#x}")]
    NotAllocated(u64),
}

/// Hands out aligned ranges of one address window and takes them back.
#[derive(Debug)]
pub struct AddressAllocator {
    inner: vm_allocator::AddressAllocator,
    allocated: BTreeMap<u64, RangeInclusive>,
}

impl AddressAllocator {
    pub fn new(base: u64, size: u64) -> Result<AddressAllocator, AllocError> {
        let inner = vm_allocator::AddressAllocator::new(base, size).map_err(|e| {
            AllocError::InvalidPool {
                base,
                size,
                reason: e.to_string(),
            }
        })?;
        Ok(AddressAllocator {
            inner,
            allocated: BTreeMap::new(),
        })
    }

    pub fn base(&self) -> u64 {
        self.inner.base()
    }

    /// The last address of the window (inclusive).
    pub fn last(&self) -> u64 {
        self.inner.end()
    }

    /// The lowest free `size`-byte range aligned to `align` (a power of two).
    pub fn allocate(&mut self, size: u64, align: u64) -> Result<u64, AllocError> {
        self.check(size, align)?;
        let range = self
            .inner
            .allocate(size, align, AllocPolicy::FirstMatch)
            .map_err(|_| AllocError::Exhausted {
                size,
                align,
                base: self.base(),
                last: self.last(),
            })?;
        self.allocated.insert(range.start(), range);
        Ok(range.start())
    }

    /// Claims exactly `[addr, addr + size)`, as for a BAR the guest placed itself.
    pub fn allocate_at(&mut self, addr: u64, size: u64) -> Result<u64, AllocError> {
        self.check(size, 1)?;
        let range = self
            .inner
            .allocate(size, 1, AllocPolicy::ExactMatch(addr))
            .map_err(|_| AllocError::NotFree {
                addr,
                size,
                base: self.base(),
                last: self.last(),
            })?;
        self.allocated.insert(range.start(), range);
        Ok(range.start())
    }

    /// Returns the range that starts at `addr` to the pool.
    pub fn free(&mut self, addr: u64) -> Result<(), AllocError> {
        let range = self
            .allocated
            .remove(&addr)
            .ok_or(AllocError::NotAllocated(addr))?;
        self.inner
            .free(&range)
            .map_err(|_| AllocError::NotAllocated(addr))
    }

    /// Size of the range allocated at `addr`.
    pub fn allocated_size(&self, addr: u64) -> Option<u64> {
        self.allocated.get(&addr).map(|r| r.len())
    }

    fn check(&self, size: u64, align: u64) -> Result<(), AllocError> {
        if size == 0 {
            return Err(AllocError::ZeroSize);
        }
        if !align.is_power_of_two() {
            return Err(AllocError::InvalidAlignment(align));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GuestLayout;

    const GIB: u64 = 1 << 30;

    #[test]
    fn aligns_and_packs() {
        let mut a = AddressAllocator::new(0xc000_0000, 0x2800_0000).unwrap();
        let x = a.allocate(0x1000, 0x1000).unwrap();
        assert_eq!(x, 0xc000_0000);
        let y = a.allocate(0x10_0000, 0x10_0000).unwrap();
        assert_eq!(y % 0x10_0000, 0);
        assert!(y >= x + 0x1000);
        let z = a.allocate(0x1000, 0x1000).unwrap();
        assert_eq!(z, 0xc000_1000, "the gap left by alignment is reused");
        assert_eq!(a.allocated_size(y), Some(0x10_0000));
    }

    #[test]
    fn exhaustion_free_and_reuse() {
        let mut a = AddressAllocator::new(0x1000, 0x4000).unwrap();
        let r: Vec<u64> = (0..4)
            .map(|_| a.allocate(0x1000, 0x1000).unwrap())
            .collect();
        assert!(matches!(
            a.allocate(0x1000, 0x1000),
            Err(AllocError::Exhausted { .. })
        ));
        a.free(r[2]).unwrap();
        assert_eq!(a.free(r[2]), Err(AllocError::NotAllocated(r[2])));
        assert_eq!(a.allocate(0x1000, 0x1000).unwrap(), r[2]);
    }

    #[test]
    fn rejects_bad_requests() {
        let mut a = AddressAllocator::new(0x1000, 0x4000).unwrap();
        assert_eq!(a.allocate(0, 0x1000), Err(AllocError::ZeroSize));
        assert_eq!(
            a.allocate(0x1000, 0x1800),
            Err(AllocError::InvalidAlignment(0x1800))
        );
        a.allocate_at(0x2000, 0x1000).unwrap();
        assert!(matches!(
            a.allocate_at(0x2800, 0x1000),
            Err(AllocError::NotFree { .. })
        ));
        assert!(matches!(
            a.allocate_at(0x4800, 0x1000),
            Err(AllocError::NotFree { .. })
        ));
    }

    #[test]
    fn places_128g_bars_in_the_64bit_window() {
        let layout = GuestLayout::new(64 * GIB, 46).unwrap();
        let w = layout.mmio64();
        let mut a = AddressAllocator::new(w.start, w.size).unwrap();
        let bar = 128 * GIB;
        let mut bars = vec![];
        for _ in 0..4 {
            let addr = a.allocate(bar, bar).unwrap();
            assert_eq!(addr % bar, 0, "BARs are naturally aligned");
            assert!(addr + bar <= w.end());
            bars.push(addr);
        }
        bars.sort();
        assert!(bars.windows(2).all(|p| p[0] + bar <= p[1]));
    }
}
