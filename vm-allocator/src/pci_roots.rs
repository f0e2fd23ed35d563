//! The root buses of PCI segment 0 and the slices of the PCI address windows each
//! one's host bridge decodes.
//!
//! Bus 0 (the DSDT's `PCI0`) always exists. A guest NUMA node that has devices
//! placed on it gets an expander root bus of its own, bus
//! `node × PCI_ROOT_BUS_STRIDE`, so the guest reads the devices' node from its
//! host bridge's `_PXM` (QEMU's pxb-pcie, in segment 0). The stride leaves room
//! for bridges below each root bus. Node 0's bus is bus 0.
//!
//! Each expander bus gets, from the top of each window (32-bit MMIO, 64-bit MMIO,
//! port I/O), exactly what its devices' BARs need; bus 0 keeps the rest. A root
//! bus's devices are cold-plugged, so that need is known when the layout is made.

use crate::region::MemoryRegion;

/// Buses the ECAM window of segment 0 holds (`layout::PCI_ECAM_SIZE` is 1 MiB each).
pub const PCI_ECAM_BUSES: u64 = 128;

/// Bus numbers between two nodes' root buses.
pub const PCI_ROOT_BUS_STRIDE: u8 = 0x10;
/// Guest nodes that can have a root bus: those whose bus lies in the ECAM window.
pub const PCI_ROOT_BUS_NODES: u32 = (PCI_ECAM_BUSES / PCI_ROOT_BUS_STRIDE as u64) as u32;

/// Guest node `node`'s root bus number, if the ECAM window has it.
pub fn root_bus_of_node(node: u32) -> Option<u8> {
    (node < PCI_ROOT_BUS_NODES).then(|| (node as u8) * PCI_ROOT_BUS_STRIDE)
}

/// The guest node root bus `bus` belongs to.
pub fn node_of_root_bus(bus: u8) -> Option<u32> {
    (bus.is_multiple_of(PCI_ROOT_BUS_STRIDE) && u64::from(bus) < PCI_ECAM_BUSES)
        .then(|| u32::from(bus / PCI_ROOT_BUS_STRIDE))
}

/// What the BARs behind one root bus need of one window: `size` bytes starting on
/// an `align` boundary (the largest BAR's alignment, a power of two; 0 when there
/// are none). Naturally aligned power-of-two BARs placed first-fit, in any order,
/// fit a slice of their sizes' sum rounded up to the largest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowNeed {
    pub size: u64,
    pub align: u64,
}

impl WindowNeed {
    /// Adds a BAR of `size` bytes aligned to `align`.
    pub fn add(&mut self, size: u64, align: u64) {
        self.size = self.size.saturating_add(size);
        self.align = self.align.max(align);
    }

    fn slice_size(&self) -> Option<u64> {
        if self.size == 0 {
            return Some(0);
        }
        let align = self.align.max(1);
        self.size.checked_next_multiple_of(align)
    }
}

/// What an expander root bus needs of each window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciRootNeeds {
    pub bus: u8,
    pub mmio32: WindowNeed,
    pub mmio64: WindowNeed,
    pub io: WindowNeed,
}

/// A root bus and its slices of the windows; a slice of size 0 is no window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciRoot {
    pub bus: u8,
    pub mmio32: MemoryRegion,
    pub mmio64: MemoryRegion,
    pub io: MemoryRegion,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciRootError {
    #[error("PCI root bus {0:#04x} is not a guest node's root bus (multiples of 0x10 from 0x10 to 0x70)")]
    NotARootBus(u8),
    #[error("PCI root bus {0:#04x} is given twice")]
    DuplicateBus(u8),
    #[error("the devices on PCI root bus {bus:#04x} need {needed:#x} bytes of the {window} window, which has only {available:#x} left")]
    NoRoom {
        bus: u8,
        window: &'static str,
        needed: u64,
        available: u64,
    },
}

/// Bus 0 with `mmio32`, `mmio64` and `io` whole, and an expander bus for each of
/// `needs` with its slices carved from the windows' tops (the highest bus
/// highest). Bus 0 first, then by bus number.
pub fn split_windows(
    mmio32: MemoryRegion,
    mmio64: MemoryRegion,
    io: MemoryRegion,
    needs: &[PciRootNeeds],
) -> Result<Vec<PciRoot>, PciRootError> {
    let mut sorted: Vec<PciRootNeeds> = needs.to_vec();
    sorted.sort_by_key(|n| std::cmp::Reverse(n.bus));
    for pair in sorted.windows(2) {
        if pair[0].bus == pair[1].bus {
            return Err(PciRootError::DuplicateBus(pair[0].bus));
        }
    }
    let mut tops = [mmio32, mmio64, io];
    let mut expanders = Vec::with_capacity(sorted.len());
    for need in &sorted {
        if need.bus == 0 || node_of_root_bus(need.bus).is_none() {
            return Err(PciRootError::NotARootBus(need.bus));
        }
        let mut slices = [MemoryRegion { start: 0, size: 0 }; 3];
        let wants = [
            ("32-bit MMIO", need.mmio32),
            ("64-bit MMIO", need.mmio64),
            ("port I/O", need.io),
        ];
        for ((left, (window, want)), slice) in tops.iter_mut().zip(wants).zip(&mut slices) {
            *slice = carve(left, want).ok_or(PciRootError::NoRoom {
                bus: need.bus,
                window,
                needed: want.size,
                available: left.size,
            })?;
        }
        expanders.push(PciRoot {
            bus: need.bus,
            mmio32: slices[0],
            mmio64: slices[1],
            io: slices[2],
        });
    }
    let [mmio32, mmio64, io] = tops;
    let mut roots = vec![PciRoot {
        bus: 0,
        mmio32,
        mmio64,
        io,
    }];
    roots.extend(expanders.into_iter().rev());
    Ok(roots)
}

/// Takes `want` off the top of `left`, its start aligned (the slack above goes with
/// it); an empty want takes nothing and gets an empty slice at the top.
fn carve(left: &mut MemoryRegion, want: WindowNeed) -> Option<MemoryRegion> {
    let size = want.slice_size()?;
    if size == 0 {
        return Some(MemoryRegion {
            start: left.end(),
            size: 0,
        });
    }
    let align = want.align.max(1);
    let start = left.end().checked_sub(size)? / align * align;
    if start < left.start {
        return None;
    }
    let slice = MemoryRegion {
        start,
        size: left.end() - start,
    };
    left.size = start - left.start;
    Some(slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AddressAllocator;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn region(start: u64, size: u64) -> MemoryRegion {
        MemoryRegion { start, size }
    }

    #[test]
    fn nodes_and_buses_map_both_ways_inside_the_ecam_window() {
        assert_eq!(root_bus_of_node(0), Some(0));
        assert_eq!(root_bus_of_node(1), Some(0x10));
        assert_eq!(root_bus_of_node(7), Some(0x70));
        assert_eq!(
            root_bus_of_node(8),
            None,
            "bus 0x80 is past the 128-bus ECAM"
        );
        assert_eq!(node_of_root_bus(0x30), Some(3));
        assert_eq!(node_of_root_bus(0x31), None);
        assert_eq!(node_of_root_bus(0x80), None);
    }

    #[test]
    fn expanders_take_what_they_need_off_the_top_and_bus_0_keeps_the_rest() {
        let m32 = region(0xc000_0000, 0x2800_0000);
        let m64 = region(64 * GIB, 1024 * GIB);
        let io = region(0x1000, 0xf000);
        let mut gpu = PciRootNeeds {
            bus: 0x10,
            ..Default::default()
        };
        gpu.mmio32.add(16 * MIB, 16 * MIB);
        gpu.mmio64.add(128 * GIB, 128 * GIB);
        gpu.mmio64.add(32 * MIB, 32 * MIB);
        gpu.io.add(0x80, 0x80);
        let mut nic = PciRootNeeds {
            bus: 0x20,
            ..Default::default()
        };
        nic.mmio32.add(MIB, MIB);
        let roots = split_windows(m32, m64, io, &[gpu, nic]).unwrap();
        assert_eq!(
            roots.iter().map(|r| r.bus).collect::<Vec<_>>(),
            [0, 0x10, 0x20]
        );
        let [pci0, pc10, pc20] = [roots[0], roots[1], roots[2]];
        assert_eq!(pc20.mmio32, region(m32.end() - MIB, MIB));
        // Bus 0x10's 16 MiB BAR needs a 16 MiB boundary: it starts on the one
        // below bus 0x20's slice and takes the slack up to it.
        assert_eq!(pc10.mmio32, region(0xe600_0000, 31 * MIB));
        assert_eq!(pci0.mmio32, region(m32.start, 0xe600_0000 - m32.start));
        assert_eq!(pc20.mmio64.size, 0, "no 64-bit BARs, no window");
        // Aligned for the 128 GiB BAR; the alignment's slack above stays the bus's.
        assert_eq!(pc10.mmio64.start % (128 * GIB), 0);
        assert_eq!(pc10.mmio64.end(), m64.end());
        assert!(pc10.mmio64.size >= 256 * GIB && pc10.mmio64.size < 384 * GIB);
        assert_eq!(pci0.mmio64.end(), pc10.mmio64.start);
        assert_eq!(pc10.io, region(0xff80, 0x80));
        assert_eq!(pci0.io, region(0x1000, 0xef80));
        // Nothing overlaps and nothing is lost.
        for pick in [
            |r: &PciRoot| r.mmio32,
            |r: &PciRoot| r.mmio64,
            |r: &PciRoot| r.io,
        ] {
            let total: u64 = roots.iter().map(|r| pick(r).size).sum();
            let mut slices: Vec<MemoryRegion> =
                roots.iter().map(pick).filter(|r| r.size > 0).collect();
            slices.sort_by_key(|r| r.start);
            for pair in slices.windows(2) {
                assert!(pair[0].end() <= pair[1].start, "{pair:?}");
            }
            assert!(
                total
                    <= pick(&PciRoot {
                        bus: 0,
                        mmio32: m32,
                        mmio64: m64,
                        io
                    })
                    .size
            );
        }
    }

    #[test]
    fn no_expanders_leave_bus_0_the_whole_windows() {
        let (m32, m64, io) = (
            region(0xc000_0000, MIB),
            region(4 * GIB, GIB),
            region(0x1000, 0xf000),
        );
        let roots = split_windows(m32, m64, io, &[]).unwrap();
        assert_eq!(
            roots,
            [PciRoot {
                bus: 0,
                mmio32: m32,
                mmio64: m64,
                io
            }]
        );
    }

    #[test]
    fn refuses_what_does_not_fit_and_buses_that_are_no_nodes() {
        let (m32, m64, io) = (
            region(0xc000_0000, 64 * MIB),
            region(4 * GIB, GIB),
            region(0x1000, 0xf000),
        );
        let mut big = PciRootNeeds {
            bus: 0x10,
            ..Default::default()
        };
        big.mmio64.add(2 * GIB, 2 * GIB);
        let err = split_windows(m32, m64, io, &[big]).unwrap_err();
        assert!(
            matches!(
                err,
                PciRootError::NoRoom {
                    bus: 0x10,
                    window: "64-bit MMIO",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("64-bit MMIO"), "{err}");
        let odd = PciRootNeeds {
            bus: 0x11,
            ..Default::default()
        };
        assert_eq!(
            split_windows(m32, m64, io, &[odd]),
            Err(PciRootError::NotARootBus(0x11))
        );
        let one = PciRootNeeds {
            bus: 0x10,
            ..Default::default()
        };
        assert_eq!(
            split_windows(m32, m64, io, &[one, one]),
            Err(PciRootError::DuplicateBus(0x10))
        );
    }

    /// The sizing rule WindowNeed relies on: power-of-two BARs, naturally aligned
    /// and placed first-fit in whatever order the devices come, fit the sum of
    /// their sizes rounded up to the largest.
    #[test]
    fn any_order_of_power_of_two_bars_fits_the_slice() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let count = 1 + next() % 12;
            let sizes: Vec<u64> = (0..count).map(|_| 0x1000 << (next() % 10)).collect();
            let mut need = WindowNeed::default();
            for &s in &sizes {
                need.add(s, s);
            }
            let base = 1 << 40;
            let mut alloc = AddressAllocator::new(base, need.slice_size().unwrap()).unwrap();
            for &s in &sizes {
                alloc
                    .allocate(s, s)
                    .unwrap_or_else(|e| panic!("{sizes:x?}: {e}"));
            }
        }
    }
}
