//! A passed-through function's BARs: what the hardware has, where the guest gets
//! them, and which parts the guest reaches directly.
//!
//! - Discovery: sizes from VFIO's region info, kind (I/O, 32/64-bit, prefetchable)
//!   from the BAR registers in the config region.
//! - Placement ([`place_bars`]): 64-bit BARs go to the 64-bit window, 32-bit memory
//!   BARs to the 32-bit hole, I/O BARs to the port range; naturally aligned and at
//!   least page aligned, largest first to limit fragmentation.
//! - Mapping ([`mappable_areas`]): the parts the kernel lets us mmap (whole region or
//!   its sparse areas) minus the pages holding the MSI-X table and PBA, shrunk to
//!   whole pages. Those are mmapped once and installed as guest memory slots while
//!   the guest has memory decoding on; everything else, sub-page BARs included, is
//!   trapped and forwarded (the VMM puts the whole BAR on its MMIO/PIO bus; mapped
//!   parts never exit). A slot the hypervisor refuses leaves its area trapped:
//!   slower, never wrong.
//! - Moves ([`BarMapper::move_bar`]): the guest reprogrammed a BAR; its slots are
//!   removed and added again at the new address.

use std::sync::Arc;

use form_vm_allocator::{AddressAllocator, AllocError};
use log::warn;

use crate::config::{BarKind, PciBar, NUM_BARS};
use crate::vfio::ops::{BoxError, RegionInfo, VfioDeviceOps, BAR0_REGION};

/// Host pages are 4 KiB on x86-64.
pub const PAGE_SIZE: u64 = 4096;

const BAR_IO_SPACE: u32 = 0x1;
const BAR_MEM_TYPE_MASK: u32 = 0x6;
const BAR_MEM_TYPE_64: u32 = 0x4;
const BAR_PREFETCHABLE: u32 = 0x8;
const MIN_MEM_BAR: u64 = 16;
const MIN_IO_BAR: u64 = 4;

/// Installs the guest memory slots that back mapped BAR areas. The VMM implements
/// it with the hypervisor crate's `Vm::add_memory` / `Vm::remove_memory`.
pub trait GuestMemorySlots: Send + Sync {
    /// Maps `size` bytes of host memory at `host_addr` at guest address `gpa`.
    ///
    /// # Safety
    /// The caller keeps `host_addr..host_addr + size` mapped until it calls
    /// [`GuestMemorySlots::remove`] for the returned slot.
    unsafe fn add(&self, gpa: u64, size: u64, host_addr: u64) -> Result<u32, BoxError>;
    fn remove(&self, slot: u32) -> Result<(), BoxError>;
}

#[derive(Debug, thiserror::Error)]
pub enum BarError {
    #[error("BAR {index}: 64-bit BAR in the last BAR register")]
    Bar64AtEnd { index: usize },
    #[error("no room for BAR {index} ({size:#x} bytes, {kind:?}): {source}")]
    NoRoom {
        index: usize,
        size: u64,
        kind: BarKind,
        #[source]
        source: AllocError,
    },
}

/// A BAR as the hardware has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBar {
    pub index: usize,
    /// What the guest sees: the region size rounded up to a power of two and the
    /// BAR minimum.
    pub size: u64,
    /// The region's real size; accesses beyond it read as ones.
    pub region_size: u64,
    pub kind: BarKind,
    pub prefetchable: bool,
    pub region: RegionInfo,
}

/// Reads the BARs of a device from its region info and raw config bytes.
pub fn discover_bars(ops: &dyn VfioDeviceOps, raw_config: &[u8]) -> Result<Vec<HostBar>, BarError> {
    let mut bars = Vec::new();
    let mut index = 0;
    while index < NUM_BARS {
        let reg = raw_config
            .get(0x10 + index * 4..0x14 + index * 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let (kind, prefetchable) = if reg & BAR_IO_SPACE != 0 {
            (BarKind::Io, false)
        } else if reg & BAR_MEM_TYPE_MASK == BAR_MEM_TYPE_64 {
            (BarKind::Memory64, reg & BAR_PREFETCHABLE != 0)
        } else {
            (BarKind::Memory32, reg & BAR_PREFETCHABLE != 0)
        };
        let next = if kind == BarKind::Memory64 {
            index + 2
        } else {
            index + 1
        };
        let region = ops.region_info(BAR0_REGION + index as u32);
        if let Some(region) = region.filter(|r| r.size > 0) {
            if kind == BarKind::Memory64 && index + 1 >= NUM_BARS {
                return Err(BarError::Bar64AtEnd { index });
            }
            let min = if kind == BarKind::Io {
                MIN_IO_BAR
            } else {
                MIN_MEM_BAR
            };
            let size = region
                .size
                .max(min)
                .checked_next_power_of_two()
                .unwrap_or(1 << 63);
            bars.push(HostBar {
                index,
                size,
                region_size: region.size,
                kind,
                prefetchable,
                region,
            });
        }
        index = next;
    }
    Ok(bars)
}

/// The address windows BARs are placed in (from vm-allocator's layout).
pub struct BarAllocators<'a> {
    pub mmio32: &'a mut AddressAllocator,
    pub mmio64: &'a mut AddressAllocator,
    pub io: &'a mut AddressAllocator,
}

impl BarAllocators<'_> {
    fn window(&mut self, kind: BarKind) -> &mut AddressAllocator {
        match kind {
            BarKind::Io => self.io,
            BarKind::Memory32 => self.mmio32,
            BarKind::Memory64 => self.mmio64,
        }
    }
}

/// Alignment a BAR gets: its size, and at least a page for memory BARs so mapped
/// areas land on page boundaries.
fn bar_alignment(bar: &HostBar) -> u64 {
    match bar.kind {
        BarKind::Io => bar.size,
        _ => bar.size.max(PAGE_SIZE),
    }
}

/// Places `bars` and returns them with guest addresses, in BAR order. On failure
/// nothing stays allocated.
pub fn place_bars(bars: &[HostBar], alloc: &mut BarAllocators) -> Result<Vec<PciBar>, BarError> {
    let mut order: Vec<&HostBar> = bars.iter().collect();
    order.sort_by(|a, b| b.size.cmp(&a.size).then(a.index.cmp(&b.index)));
    let mut placed: Vec<PciBar> = Vec::with_capacity(bars.len());
    for bar in order {
        match alloc
            .window(bar.kind)
            .allocate(bar.size, bar_alignment(bar))
        {
            Ok(addr) => placed.push(PciBar {
                index: bar.index,
                addr,
                size: bar.size,
                kind: bar.kind,
                prefetchable: bar.prefetchable,
            }),
            Err(source) => {
                release_bars(&placed, alloc);
                return Err(BarError::NoRoom {
                    index: bar.index,
                    size: bar.size,
                    kind: bar.kind,
                    source,
                });
            }
        }
    }
    placed.sort_by_key(|b| b.index);
    Ok(placed)
}

/// Gives the ranges of placed BARs back to their windows.
pub fn release_bars(bars: &[PciBar], alloc: &mut BarAllocators) {
    for bar in bars {
        if let Err(e) = alloc.window(bar.kind).free(bar.addr) {
            warn!("vfio: freeing BAR {} at {:#x}: {e}", bar.index, bar.addr);
        }
    }
}

/// A page-aligned part of a BAR that is mmapped and given to the guest directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapArea {
    pub offset: u64,
    pub size: u64,
}

/// The parts of a BAR of `bar_size` bytes the guest may reach without trapping:
/// what `region` allows to be mmapped, minus `holes` (MSI-X table and PBA, as
/// `(offset, len)`) widened to whole pages, shrunk to whole pages.
pub fn mappable_areas(region: &RegionInfo, holes: &[(u64, u64)], page: u64) -> Vec<MapArea> {
    if !region.mappable || page == 0 || !page.is_power_of_two() {
        return Vec::new();
    }
    let allowed: Vec<(u64, u64)> = match &region.sparse_areas {
        Some(areas) => areas
            .iter()
            .filter_map(|a| Some((a.offset, a.offset.checked_add(a.size)?.min(region.size))))
            .collect(),
        None => vec![(0, region.size)],
    };
    let holes: Vec<(u64, u64)> = holes
        .iter()
        .filter(|h| h.1 > 0)
        .map(|&(off, len)| {
            let start = off & !(page - 1);
            let end = off
                .saturating_add(len)
                .checked_next_multiple_of(page)
                .unwrap_or(u64::MAX);
            (start, end)
        })
        .collect();
    let mut areas = Vec::new();
    for (start, end) in allowed {
        let mut pieces = vec![(start, end)];
        for &(hs, he) in &holes {
            pieces = pieces
                .into_iter()
                .flat_map(|(s, e)| {
                    if he <= s || hs >= e {
                        vec![(s, e)]
                    } else {
                        let mut v = Vec::new();
                        if hs > s {
                            v.push((s, hs));
                        }
                        if he < e {
                            v.push((he, e));
                        }
                        v
                    }
                })
                .collect();
        }
        for (s, e) in pieces {
            let s = s.checked_next_multiple_of(page).unwrap_or(u64::MAX);
            let e = e & !(page - 1);
            if e > s {
                areas.push(MapArea {
                    offset: s,
                    size: e - s,
                });
            }
        }
    }
    areas.sort_by_key(|a| a.offset);
    areas
}

#[derive(Debug)]
struct MappedArea {
    area: MapArea,
    host_addr: u64,
    slot: Option<u32>,
}

#[derive(Debug)]
struct MappedBar {
    index: usize,
    gpa: u64,
    areas: Vec<MappedArea>,
}

/// The mmapped parts of a device's BARs and their guest memory slots.
pub struct BarMapper {
    ops: Arc<dyn VfioDeviceOps>,
    slots: Arc<dyn GuestMemorySlots>,
    bars: Vec<MappedBar>,
    memory_enabled: bool,
}

impl BarMapper {
    /// Mmaps the mappable areas of every placed BAR (`plan`: BAR, where it is, what
    /// to map). Areas the kernel refuses to map stay trapped.
    pub fn new(
        ops: Arc<dyn VfioDeviceOps>,
        slots: Arc<dyn GuestMemorySlots>,
        plan: &[(PciBar, Vec<MapArea>)],
    ) -> Self {
        let mut bars = Vec::new();
        for (bar, areas) in plan {
            let mut mapped = Vec::new();
            for area in areas {
                match ops.mmap_region(BAR0_REGION + bar.index as u32, area.offset, area.size) {
                    Ok(host_addr) => mapped.push(MappedArea {
                        area: *area,
                        host_addr,
                        slot: None,
                    }),
                    Err(e) => warn!(
                        "vfio: BAR {} {:#x}+{:#x} stays trapped: {e}",
                        bar.index, area.offset, area.size
                    ),
                }
            }
            if !mapped.is_empty() {
                bars.push(MappedBar {
                    index: bar.index,
                    gpa: bar.addr,
                    areas: mapped,
                });
            }
        }
        Self {
            ops,
            slots,
            bars,
            memory_enabled: false,
        }
    }

    /// `(BAR, guest address, size, slot)` of every installed slot.
    pub fn installed_slots(&self) -> Vec<(usize, u64, u64, u32)> {
        self.bars
            .iter()
            .flat_map(|b| {
                b.areas.iter().filter_map(move |a| {
                    Some((b.index, b.gpa + a.area.offset, a.area.size, a.slot?))
                })
            })
            .collect()
    }

    /// Mapped areas of BAR `index` (offsets within the BAR).
    pub fn mapped_areas(&self, index: usize) -> Vec<MapArea> {
        self.bars
            .iter()
            .filter(|b| b.index == index)
            .flat_map(|b| b.areas.iter().map(|a| a.area))
            .collect()
    }

    /// The guest turned memory decoding on or off: slots follow, as accesses to a
    /// BAR whose decoding is off must not reach the device.
    pub fn set_memory_enabled(&mut self, enabled: bool) {
        if enabled == self.memory_enabled {
            return;
        }
        self.memory_enabled = enabled;
        for i in 0..self.bars.len() {
            if enabled {
                self.install(i);
            } else {
                self.uninstall(i);
            }
        }
    }

    /// The guest moved BAR `index` to `new`.
    pub fn move_bar(&mut self, index: usize, new: u64) {
        let Some(i) = self.bars.iter().position(|b| b.index == index) else {
            return;
        };
        self.uninstall(i);
        self.bars[i].gpa = new;
        if self.memory_enabled {
            self.install(i);
        }
    }

    fn install(&mut self, i: usize) {
        let slots = self.slots.clone();
        let bar = &mut self.bars[i];
        for a in bar.areas.iter_mut().filter(|a| a.slot.is_none()) {
            let Some(gpa) = bar.gpa.checked_add(a.area.offset) else {
                continue;
            };
            // SAFETY: the area stays mmapped until `release`, which removes the
            // slot before unmapping.
            match unsafe { slots.add(gpa, a.area.size, a.host_addr) } {
                Ok(slot) => a.slot = Some(slot),
                Err(e) => warn!(
                    "vfio: BAR {} {gpa:#x}+{:#x} stays trapped: {e}",
                    bar.index, a.area.size
                ),
            }
        }
    }

    fn uninstall(&mut self, i: usize) {
        let bar = &mut self.bars[i];
        for a in bar.areas.iter_mut() {
            if let Some(slot) = a.slot.take() {
                if let Err(e) = self.slots.remove(slot) {
                    warn!(
                        "vfio: removing memory slot {slot} of BAR {}: {e}",
                        bar.index
                    );
                }
            }
        }
    }

    /// Removes every slot, then unmaps every area.
    pub fn release(&mut self) {
        for i in 0..self.bars.len() {
            self.uninstall(i);
        }
        for bar in self.bars.drain(..) {
            for a in bar.areas {
                self.ops.munmap_region(a.host_addr, a.area.size);
            }
        }
        self.memory_enabled = false;
    }
}

impl Drop for BarMapper {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::ops::SparseArea;

    fn region(size: u64, sparse: Option<Vec<SparseArea>>) -> RegionInfo {
        RegionInfo {
            size,
            readable: true,
            writable: true,
            mappable: true,
            sparse_areas: sparse,
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn whole_region_maps_when_nothing_is_trapped() {
        assert_eq!(
            mappable_areas(&region(16 * MIB, None), &[], PAGE_SIZE),
            vec![MapArea {
                offset: 0,
                size: 16 * MIB
            }]
        );
        let not_mappable = RegionInfo {
            mappable: false,
            ..region(16 * MIB, None)
        };
        assert!(mappable_areas(&not_mappable, &[], PAGE_SIZE).is_empty());
    }

    #[test]
    fn msix_pages_are_cut_out_page_wide() {
        // Table of 16 vectors at 0x3_0100, PBA at 0x3_1000.
        let areas = mappable_areas(
            &region(16 * MIB, None),
            &[(0x3_0100, 256), (0x3_1000, 8)],
            PAGE_SIZE,
        );
        assert_eq!(
            areas,
            vec![
                MapArea {
                    offset: 0,
                    size: 0x3_0000
                },
                MapArea {
                    offset: 0x3_2000,
                    size: 16 * MIB - 0x3_2000
                },
            ]
        );
    }

    #[test]
    fn sparse_areas_are_honoured_and_shrunk_to_pages() {
        let sparse = vec![
            SparseArea {
                offset: 0,
                size: 0x3_0000,
            },
            SparseArea {
                offset: 0x3_1800,
                size: 0x1_0800,
            },
        ];
        let areas = mappable_areas(&region(MIB, Some(sparse)), &[], PAGE_SIZE);
        assert_eq!(
            areas,
            vec![
                MapArea {
                    offset: 0,
                    size: 0x3_0000
                },
                MapArea {
                    offset: 0x3_2000,
                    size: 0x1_0000
                },
            ]
        );
    }

    #[test]
    fn sub_page_bars_map_nothing() {
        assert!(mappable_areas(&region(256, None), &[], PAGE_SIZE).is_empty());
        assert!(mappable_areas(&region(0x1000, None), &[(0, 16)], PAGE_SIZE).is_empty());
    }
}
