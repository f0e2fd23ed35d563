//! Where everything sits in guest physical memory.
//!
//! The fixed part of the map is a set of constants; what depends on the VM (RAM
//! size, the guest's physical-address width, the host IOMMU's usable IOVA ranges)
//! is computed by [`GuestLayout`].

use crate::pci_roots::{split_windows, PciRoot, PciRootError, PciRootNeeds};
pub use crate::region::MemoryRegion;

const KIB: u64 = 1 << 10;
const GIB: u64 = 1 << 30;

// Low memory: boot structures, below the legacy hole.

/// The GDT the boot vCPU starts with.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT (interrupts stay off until the kernel installs its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, followed by its module list and memory map.
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Linux `boot_params` (the "zero page") for the 64-bit boot protocol.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Boot page tables: one PML4, one PDPT, and four page directories that
/// identity-map the first 4 GiB with 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
/// Initial stack pointer of the boot vCPU (grows down, below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Kernel command line and its maximum length including the NUL.
pub const CMDLINE_START: u64 = 0x2_0000;
pub const CMDLINE_MAX_SIZE: u64 = 0x1_0000;
/// Top of usable low RAM; the EBDA and legacy hole follow.
pub const LOW_RAM_END: u64 = 0x9_fc00;
/// Start of the legacy VGA/BIOS hole, reported as reserved in e820.
pub const LEGACY_HOLE_START: u64 = 0xa_0000;
/// ACPI tables: the RSDP at the start of the BIOS area (where guests scan for it),
/// the other tables after it up to 1 MiB.
pub const RSDP_START: u64 = 0xe_0000;
pub const ACPI_TABLES_END: u64 = 0x10_0000;
/// The x86 reset vector (F000:FFF0): where a guest that restarts "through the BIOS"
/// jumps in real mode. Its last 16 bytes below 1 MiB hold the VMM's reset stub, so the
/// ACPI tables end before it.
pub const RESET_VECTOR: u64 = 0xf_fff0;
/// Where RAM used by the kernel proper starts (the 1 MiB line).
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

// The 32-bit hole.

/// RAM below 4 GiB ends here; everything up to 4 GiB is MMIO.
pub const MEM_32BIT_HOLE_START: u64 = 3 * GIB;
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
pub const PCI_MMIO32_SIZE: u64 = 0x2800_0000;
/// PCI Express ECAM for segment 0, 1 MiB per bus (32 devices × 8 functions ×
/// 4 KiB). The window in the platform map holds 128 buses: bus 0 and the guest
/// NUMA nodes' root buses ([`crate::pci_roots`]).
pub const PCI_ECAM_START: u64 = 0xe800_0000;
pub const PCI_ECAM_SIZE: u64 = 0x0800_0000;
pub use crate::pci_roots::PCI_ECAM_BUSES;
const _: () = assert!(PCI_ECAM_SIZE >> 20 == PCI_ECAM_BUSES);
/// Platform MMIO: ACPI GED, hotplug controller and other non-PCI devices.
pub const PLATFORM_MMIO_START: u64 = 0xf000_0000;
pub const PLATFORM_MMIO_SIZE: u64 = 0x0ec0_0000;
/// The ACPI Generic Event Device's registers, first in the platform window.
pub const GED_MMIO_START: u64 = PLATFORM_MMIO_START;
pub const GED_MMIO_SIZE: u64 = 0x1000;
/// The GED's interrupt line (platform.md: GSI 5).
pub const GED_GSI: u32 = 5;
/// The PCI hotplug controller's registers (platform.md), right after the GED.
pub const HOTPLUG_MMIO_START: u64 = GED_MMIO_START + GED_MMIO_SIZE;
pub const HOTPLUG_MMIO_SIZE: u64 = 0x10;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const IOAPIC_SIZE: u64 = 0x10_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;
/// RAM that did not fit below the hole continues here.
pub const HIGH_RAM_START: u64 = 4 * GIB;

/// Port I/O: the range handed out to PCI I/O BARs, clear of every legacy port.
pub const PCI_IO_START: u64 = 0x1000;
pub const PCI_IO_SIZE: u64 = 0xf000;
/// PCI configuration mechanism #1.
pub const PCI_CONFIG_IO_START: u64 = 0xcf8;
pub const PCI_CONFIG_IO_SIZE: u64 = 8;

/// The 64-bit MMIO window starts on a 1 GiB boundary above RAM.
pub const MMIO64_ALIGNMENT: u64 = GIB;
/// Kept free below the guest's physical-address limit: AMD hosts reserve the top
/// 12 GiB below 1 TiB (HyperTransport), and staying clear of the very top avoids
/// guests that mis-handle BARs ending at the limit.
pub const MMIO64_TOP_GUARD: u64 = 16 * GIB;

// The fixed pieces of the map abut in the order platform.md lists them.
const _: () = assert!(LOW_RAM_END < LEGACY_HOLE_START && RSDP_START < ACPI_TABLES_END);
const _: () = assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE == PCI_ECAM_START);
const _: () = assert!(PCI_ECAM_START + PCI_ECAM_SIZE == PLATFORM_MMIO_START);
const _: () = assert!(PLATFORM_MMIO_START + PLATFORM_MMIO_SIZE == IOAPIC_START);
const _: () = assert!(CMDLINE_MAX_SIZE >= 4 * KIB && PD_START + 4 * 0x1000 <= CMDLINE_START);

/// A range of I/O virtual addresses the host IOMMU can translate, inclusive as
/// the kernel reports them in `/sys/kernel/iommu_groups/*/reserved_regions`'
/// complement and in VFIO's IOVA range capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IovaRange {
    pub start: u64,
    pub end: u64,
}

impl std::fmt::Display for IovaRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}-{:#x}", self.start, self.end)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("guest RAM size must be more than 0 bytes and a multiple of 4 KiB, got {0:#x}")]
    InvalidRamSize(u64),
    #[error("{ram_size:#x} bytes of RAM need guest physical addresses up to {ram_end:#x}, beyond the {phys_bits}-bit limit")]
    RamBeyondPhysLimit {
        ram_size: u64,
        ram_end: u64,
        phys_bits: u8,
    },
    #[error("guest physical-address width {0} is outside 36..=52 bits")]
    InvalidPhysBits(u8),
    #[error("no room for a 64-bit MMIO window above RAM ending at {ram_end:#x} within the {phys_bits}-bit limit")]
    NoMmio64Window { ram_end: u64, phys_bits: u8 },
    #[error("{0}")]
    PciRoot(#[from] PciRootError),
    #[error("guest RAM {region_start:#x}-{region_end:#x} is not inside the host IOMMU's usable IOVA ranges [{ranges}]; use less RAM or a host with a wider IOMMU aperture")]
    RamOutsideIova {
        region_start: u64,
        region_end: u64,
        ranges: String,
    },
    #[error("the 64-bit MMIO window needs {needed:#x} bytes above RAM ending at {ram_end:#x}, but the host IOMMU's usable IOVA ranges [{ranges}] leave only {available:#x}; use less RAM or a host with a wider IOMMU aperture")]
    Mmio64OutsideIova {
        needed: u64,
        available: u64,
        ram_end: u64,
        ranges: String,
    },
}

/// The address map of one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    ram: Vec<MemoryRegion>,
    mmio64: MemoryRegion,
    phys_bits: u8,
    /// Bus 0 first, then the expander root buses by number.
    pci_roots: Vec<PciRoot>,
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

fn describe(ranges: &[IovaRange]) -> String {
    ranges
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl GuestLayout {
    /// Lays out `ram_size` bytes of RAM for a guest with `guest_phys_bits` of
    /// physical address, and the 64-bit MMIO window above it.
    pub fn new(ram_size: u64, guest_phys_bits: u8) -> Result<GuestLayout, LayoutError> {
        if !(36..=52).contains(&guest_phys_bits) {
            return Err(LayoutError::InvalidPhysBits(guest_phys_bits));
        }
        if ram_size == 0 || !ram_size.is_multiple_of(4 * KIB) {
            return Err(LayoutError::InvalidRamSize(ram_size));
        }
        let ram = ram_regions(ram_size);
        let ram_end = ram.last().map_or(0, MemoryRegion::end);
        let limit = (1u64 << guest_phys_bits) - MMIO64_TOP_GUARD;
        if ram_end > limit {
            return Err(LayoutError::RamBeyondPhysLimit {
                ram_size,
                ram_end,
                phys_bits: guest_phys_bits,
            });
        }
        // Never inside the 32-bit hole, even when all RAM fits below it.
        let start = align_up(ram_end.max(HIGH_RAM_START), MMIO64_ALIGNMENT);
        if start >= limit {
            return Err(LayoutError::NoMmio64Window {
                ram_end,
                phys_bits: guest_phys_bits,
            });
        }
        let mut layout = GuestLayout {
            ram,
            mmio64: MemoryRegion {
                start,
                size: limit - start,
            },
            phys_bits: guest_phys_bits,
            pci_roots: Vec::new(),
        };
        layout.pci_roots = layout.split_pci_windows(&[])?;
        Ok(layout)
    }

    /// Gives each of `needs`' expander root buses its slices of the PCI windows
    /// ([`crate::pci_roots`]); bus 0 keeps the rest.
    pub fn with_pci_roots(mut self, needs: &[PciRootNeeds]) -> Result<GuestLayout, LayoutError> {
        self.pci_roots = self.split_pci_windows(needs)?;
        Ok(self)
    }

    fn split_pci_windows(&self, needs: &[PciRootNeeds]) -> Result<Vec<PciRoot>, LayoutError> {
        Ok(split_windows(
            self.mmio32(),
            self.mmio64,
            self.pci_io(),
            needs,
        )?)
    }

    /// The root buses of segment 0 with their windows: bus 0 first, then the
    /// expander buses by number.
    pub fn pci_roots(&self) -> &[PciRoot] {
        &self.pci_roots
    }

    /// Port I/O handed out to PCI I/O BARs, all root buses together.
    pub fn pci_io(&self) -> MemoryRegion {
        MemoryRegion {
            start: PCI_IO_START,
            size: PCI_IO_SIZE,
        }
    }

    /// Like [`GuestLayout::new`], but every RAM region and the 64-bit window must
    /// lie inside `iova_ranges` (the host IOMMU's usable ranges), since VFIO maps
    /// guest physical addresses 1:1 as IOVAs. The window is shrunk to fit and must
    /// keep at least `mmio64_needed` bytes.
    pub fn with_iova_ranges(
        ram_size: u64,
        guest_phys_bits: u8,
        iova_ranges: &[IovaRange],
        mmio64_needed: u64,
    ) -> Result<GuestLayout, LayoutError> {
        let mut layout = GuestLayout::new(ram_size, guest_phys_bits)?;
        let inside = |start: u64, end_inclusive: u64| {
            iova_ranges
                .iter()
                .any(|r| r.start <= start && end_inclusive <= r.end)
        };
        for region in &layout.ram {
            if !inside(region.start, region.last()) {
                return Err(LayoutError::RamOutsideIova {
                    region_start: region.start,
                    region_end: region.last(),
                    ranges: describe(iova_ranges),
                });
            }
        }
        let ram_end = layout.ram_end();
        // The largest IOVA-valid piece of the unclamped window.
        let window = layout.mmio64;
        let best = iova_ranges
            .iter()
            .filter_map(|r| {
                let start = align_up(r.start.max(window.start), MMIO64_ALIGNMENT);
                let end = r.end.saturating_add(1).min(window.end());
                (end > start).then(|| MemoryRegion {
                    start,
                    size: end - start,
                })
            })
            .max_by_key(|r| r.size);
        match best {
            Some(region) if region.size >= mmio64_needed => {
                layout.mmio64 = region;
                layout.pci_roots = layout.split_pci_windows(&[])?;
                Ok(layout)
            }
            other => Err(LayoutError::Mmio64OutsideIova {
                needed: mmio64_needed,
                available: other.map_or(0, |r| r.size),
                ram_end,
                ranges: describe(iova_ranges),
            }),
        }
    }

    /// RAM regions, in address order: below the 32-bit hole, then above 4 GiB.
    pub fn ram_regions(&self) -> &[MemoryRegion] {
        &self.ram
    }

    pub fn ram_size(&self) -> u64 {
        self.ram.iter().map(|r| r.size).sum()
    }

    /// One past the highest RAM address.
    pub fn ram_end(&self) -> u64 {
        self.ram.last().map_or(0, MemoryRegion::end)
    }

    pub fn phys_bits(&self) -> u8 {
        self.phys_bits
    }

    /// The 32-bit PCI window, all root buses together ([`GuestLayout::pci_roots`]
    /// has each one's slice).
    pub fn mmio32(&self) -> MemoryRegion {
        MemoryRegion {
            start: PCI_MMIO32_START,
            size: PCI_MMIO32_SIZE,
        }
    }

    pub fn ecam(&self) -> MemoryRegion {
        MemoryRegion {
            start: PCI_ECAM_START,
            size: PCI_ECAM_SIZE,
        }
    }

    /// Platform MMIO available for allocation (the GED's fixed registers excluded).
    pub fn platform_mmio(&self) -> MemoryRegion {
        MemoryRegion {
            start: GED_MMIO_START + GED_MMIO_SIZE,
            size: PLATFORM_MMIO_SIZE - GED_MMIO_SIZE,
        }
    }

    /// The 64-bit PCI window, all root buses together.
    pub fn mmio64(&self) -> MemoryRegion {
        self.mmio64
    }
}

fn ram_regions(ram_size: u64) -> Vec<MemoryRegion> {
    let low = ram_size.min(MEM_32BIT_HOLE_START);
    let mut regions = vec![MemoryRegion {
        start: 0,
        size: low,
    }];
    if ram_size > low {
        regions.push(MemoryRegion {
            start: HIGH_RAM_START,
            size: ram_size - low,
        });
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_ram_stays_below_the_hole() {
        let l = GuestLayout::new(512 * MIB, 46).unwrap();
        assert_eq!(
            l.ram_regions(),
            &[MemoryRegion {
                start: 0,
                size: 512 * MIB
            }]
        );
        // The window starts at 4 GiB even though RAM ends far below it.
        assert_eq!(l.mmio64().start, 4 * GIB);
        assert_eq!(l.mmio64().end(), (1 << 46) - MMIO64_TOP_GUARD);
    }

    #[test]
    fn large_ram_splits_around_the_hole() {
        let l = GuestLayout::new(8 * GIB + 4 * KIB, 40).unwrap();
        assert_eq!(
            l.ram_regions(),
            &[
                MemoryRegion {
                    start: 0,
                    size: 3 * GIB
                },
                MemoryRegion {
                    start: 4 * GIB,
                    size: 5 * GIB + 4 * KIB
                },
            ]
        );
        assert_eq!(l.ram_size(), 8 * GIB + 4 * KIB);
        assert_eq!(l.mmio64().start, 10 * GIB, "1 GiB aligned above RAM");
        assert_eq!(l.mmio64().start % MMIO64_ALIGNMENT, 0);
    }

    #[test]
    fn window_fits_several_128g_bars() {
        let l = GuestLayout::new(64 * GIB, 46).unwrap();
        assert!(l.mmio64().size >= 8 * 128 * GIB);
        let l = GuestLayout::new(16 * GIB, 40).unwrap();
        // 1 TiB - 16 GiB guard - 18 GiB of RAM and alignment: room for 7 × 128 GiB.
        assert!(l.mmio64().size / (128 * GIB) >= 7);
    }

    #[test]
    fn rejects_bad_sizes_and_widths() {
        assert_eq!(GuestLayout::new(0, 40), Err(LayoutError::InvalidRamSize(0)));
        assert_eq!(
            GuestLayout::new(4097, 40),
            Err(LayoutError::InvalidRamSize(4097))
        );
        assert_eq!(
            GuestLayout::new(MIB, 60),
            Err(LayoutError::InvalidPhysBits(60))
        );
        assert!(matches!(
            GuestLayout::new(64 * GIB, 36),
            Err(LayoutError::RamBeyondPhysLimit { .. })
        ));
    }

    /// A typical Intel host IOMMU with a 39-bit aperture: everything except the
    /// MSI doorbell range at 0xfee00000.
    fn intel_39bit() -> Vec<IovaRange> {
        vec![
            IovaRange {
                start: 0,
                end: 0xfedf_ffff,
            },
            IovaRange {
                start: 0xfef0_0000,
                end: (1 << 39) - 1,
            },
        ]
    }

    #[test]
    fn iova_clamping_shrinks_the_window() {
        let unclamped = GuestLayout::new(64 * GIB, 46).unwrap();
        let l = GuestLayout::with_iova_ranges(64 * GIB, 46, &intel_39bit(), 2 * 128 * GIB).unwrap();
        assert_eq!(l.ram_regions(), unclamped.ram_regions());
        assert_eq!(l.mmio64().start, 65 * GIB);
        assert_eq!(l.mmio64().end(), 1 << 39);
        assert!(l.mmio64().size >= 3 * 128 * GIB);
    }

    #[test]
    fn iova_clamping_fails_naming_the_ranges() {
        let err =
            GuestLayout::with_iova_ranges(400 * GIB, 46, &intel_39bit(), 128 * GIB).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, LayoutError::Mmio64OutsideIova { .. }),
            "{err:?}"
        );
        assert!(msg.contains("0xfef00000-0x7fffffffff"), "{msg}");

        let err = GuestLayout::with_iova_ranges(600 * GIB, 46, &intel_39bit(), GIB).unwrap_err();
        assert!(matches!(err, LayoutError::RamOutsideIova { .. }), "{err:?}");
        assert!(err.to_string().contains("0x0-0xfedfffff"));
    }

    #[test]
    fn pci_roots_split_the_windows_the_layout_ends_with() {
        use crate::pci_roots::{PciRootNeeds, WindowNeed};
        let l = GuestLayout::with_iova_ranges(64 * GIB, 46, &intel_39bit(), GIB).unwrap();
        assert_eq!(l.pci_roots().len(), 1);
        assert_eq!(l.pci_roots()[0].mmio64, l.mmio64(), "after the IOVA clamp");
        let need = PciRootNeeds {
            bus: 0x10,
            mmio64: WindowNeed {
                size: 128 * GIB,
                align: 128 * GIB,
            },
            ..Default::default()
        };
        let l = l.with_pci_roots(&[need]).unwrap();
        let roots = l.pci_roots();
        assert_eq!(roots.iter().map(|r| r.bus).collect::<Vec<_>>(), [0, 0x10]);
        assert_eq!(roots[1].mmio64.end(), l.mmio64().end());
        assert_eq!(roots[0].mmio64.start, l.mmio64().start);
        assert_eq!(roots[0].mmio64.end(), roots[1].mmio64.start);
        assert_eq!(roots[0].mmio32, l.mmio32(), "no 32-bit need");
        let err = l.with_pci_roots(&[PciRootNeeds {
            mmio64: WindowNeed {
                size: 1 << 40,
                align: 1 << 40,
            },
            ..need
        }]);
        assert!(matches!(err, Err(LayoutError::PciRoot(_))), "{err:?}");
    }
}
