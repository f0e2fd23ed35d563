//! The memory map the guest gets (e820 for Linux boot, the PVH memmap).

use form_vm_allocator::layout::{
    GuestLayout, ACPI_TABLES_END, HIGH_MEMORY_START, LOW_RAM_END, PCI_ECAM_SIZE, PCI_ECAM_START,
    RSDP_START,
};

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// RAM as the layout has it, minus the legacy hole; the ACPI table area and the
/// ECAM window marked reserved (Linux only trusts MMCONFIG that is reserved).
pub fn e820_map(layout: &GuestLayout) -> Vec<E820Entry> {
    let mut map = Vec::new();
    for region in layout.ram_regions() {
        if region.start == 0 {
            map.push(E820Entry {
                addr: 0,
                size: LOW_RAM_END,
                kind: E820_RAM,
            });
            map.push(E820Entry {
                addr: RSDP_START,
                size: ACPI_TABLES_END - RSDP_START,
                kind: E820_RESERVED,
            });
            if region.end() > HIGH_MEMORY_START {
                map.push(E820Entry {
                    addr: HIGH_MEMORY_START,
                    size: region.end() - HIGH_MEMORY_START,
                    kind: E820_RAM,
                });
            }
        } else {
            map.push(E820Entry {
                addr: region.start,
                size: region.size,
                kind: E820_RAM,
            });
        }
    }
    map.push(E820Entry {
        addr: PCI_ECAM_START,
        size: PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    map.sort_by_key(|e| e.addr);
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_skips_the_legacy_hole_and_covers_high_ram() {
        let layout = GuestLayout::new(5 << 30, 40).unwrap();
        let map = e820_map(&layout);
        let ram: Vec<_> = map.iter().filter(|e| e.kind == E820_RAM).collect();
        assert_eq!(ram[0].addr, 0);
        assert_eq!(ram[0].size, LOW_RAM_END);
        assert_eq!(ram[1].addr, HIGH_MEMORY_START);
        assert_eq!(ram[1].addr + ram[1].size, 3 << 30);
        assert_eq!(ram[2].addr, 4 << 30);
        assert_eq!(ram[2].size, 2 << 30);
        assert!(map.windows(2).all(|w| w[0].addr + w[0].size <= w[1].addr));
    }
}
