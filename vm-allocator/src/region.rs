//! A range of guest physical addresses: what the layout's windows and the PCI root
//! buses' slices of them are made of.

/// A range of guest physical addresses, `[start, start + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub start: u64,
    pub size: u64,
}

impl MemoryRegion {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
    /// The last address in the region (for inclusive-range APIs like ACPI's).
    pub fn last(&self) -> u64 {
        self.end() - 1
    }
}
