//! Where memory zones land in guest physical memory: laid end to end over the
//! layout's RAM regions in the order given, zone 0 at address 0, so a zone that
//! reaches the 32-bit hole goes on at 4 GiB in a second range.

use form_vm_allocator::MemoryRegion;

/// Each zone's guest physical ranges, for zones of `sizes` bytes laid over `ram`
/// (the layout's RAM regions, in address order). None when the sizes add up to
/// more than `ram` holds.
pub fn zone_ranges(ram: &[MemoryRegion], sizes: &[u64]) -> Option<Vec<Vec<MemoryRegion>>> {
    let mut regions = ram.iter();
    let mut current = regions.next().copied();
    let mut zones = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let mut ranges = Vec::new();
        let mut left = size;
        while left > 0 {
            let region = current.as_mut()?;
            let take = left.min(region.size);
            ranges.push(MemoryRegion {
                start: region.start,
                size: take,
            });
            region.start += take;
            region.size -= take;
            left -= take;
            if region.size == 0 {
                current = regions.next().copied();
            }
        }
        zones.push(ranges);
    }
    Some(zones)
}

#[cfg(test)]
mod tests {
    use super::*;
    use form_vm_allocator::GuestLayout;

    const G: u64 = 1 << 30;
    const M: u64 = 1 << 20;

    fn region(start: u64, size: u64) -> MemoryRegion {
        MemoryRegion { start, size }
    }

    #[test]
    fn zones_below_the_hole_are_one_range_each() {
        let layout = GuestLayout::new(G + 512 * M, 40).unwrap();
        let zones = zone_ranges(layout.ram_regions(), &[G, 512 * M]).unwrap();
        assert_eq!(zones, vec![vec![region(0, G)], vec![region(G, 512 * M)]]);
    }

    #[test]
    fn a_zone_across_the_hole_is_split_at_3g_and_goes_on_at_4g() {
        let layout = GuestLayout::new(6 * G, 40).unwrap();
        let zones = zone_ranges(layout.ram_regions(), &[2 * G, 2 * G, 2 * G]).unwrap();
        assert_eq!(
            zones,
            vec![
                vec![region(0, 2 * G)],
                vec![region(2 * G, G), region(4 * G, G)],
                vec![region(5 * G, 2 * G)],
            ]
        );
        // A zone that ends exactly at the hole leaves the next one wholly above it.
        let zones = zone_ranges(layout.ram_regions(), &[3 * G, 3 * G]).unwrap();
        assert_eq!(
            zones,
            vec![vec![region(0, 3 * G)], vec![region(4 * G, 3 * G)]]
        );
    }

    #[test]
    fn the_ranges_cover_the_layouts_ram_exactly() {
        let layout = GuestLayout::new(5 * G + 4 * M, 40).unwrap();
        let sizes = [G + 4 * M, 3 * G, G];
        let zones = zone_ranges(layout.ram_regions(), &sizes).unwrap();
        for (ranges, size) in zones.iter().zip(sizes) {
            assert_eq!(ranges.iter().map(|r| r.size).sum::<u64>(), size);
        }
        let mut flat: Vec<MemoryRegion> = zones.into_iter().flatten().collect();
        // Adjacent pieces merge back into the layout's regions.
        flat.dedup_by(|next, prev| {
            let touching = prev.end() == next.start;
            if touching {
                prev.size += next.size;
            }
            touching
        });
        assert_eq!(flat, layout.ram_regions());
    }

    #[test]
    fn more_than_the_layout_holds_is_none() {
        let layout = GuestLayout::new(G, 40).unwrap();
        assert_eq!(zone_ranges(layout.ram_regions(), &[G, 4096]), None);
        assert_eq!(
            zone_ranges(layout.ram_regions(), &[G]),
            Some(vec![vec![region(0, G)]])
        );
    }
}
