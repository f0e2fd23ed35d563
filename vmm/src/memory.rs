//! Guest RAM: host mappings for the layout's RAM regions, registered with KVM.
//! Without memory zones all of RAM has one backing; with them each zone's ranges
//! ([`crate::memory_zones`]) have the zone's.

use crate::config::{MemoryConfig, MemoryZoneConfig};
use crate::memory_zones::zone_ranges;
use crate::numa::{self, NumaError};
use form_vm_allocator::{GuestLayout, MemoryRegion};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::FromRawFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create the memfd backing shared guest memory: {0}")]
    Memfd(std::io::Error),
    #[error("cannot size the guest memory file to {size:#x} bytes: {source}")]
    Truncate { size: u64, source: std::io::Error },
    #[error("cannot map {size:#x} bytes of guest memory at {addr:#x}: {source}")]
    Map {
        addr: u64,
        size: u64,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest memory regions overlap or are invalid: {0}")]
    Regions(String),
    #[error("hugepages=on needs {needed} free huge pages of {page_kib} KiB but the host has {free}; reserve more with `echo N > {path}` (1 GiB pages are best reserved at boot: hugepagesz=1G hugepages=N) or turn hugepages off")]
    NotEnoughHugepages {
        needed: u64,
        free: u64,
        page_kib: u64,
        path: String,
    },
    #[error("hugepages=on with {page_kib} KiB pages but the host has none of that size reserved ({path} is 0 or missing); reserve them (hugepagesz=1G hugepages=N on the kernel command line for 1 GiB pages, `echo N > {path}` for 2 MiB ones) or give the size the host has with hugepage_size")]
    NoHugepagesOfSize { page_kib: u64, path: String },
    #[error("hugepages=on but the host has no huge pages configured (HugePages_Total is 0 or /proc/meminfo lacks it); reserve some with `echo N > /proc/sys/vm/nr_hugepages`")]
    NoHugepages,
    #[error("guest memory size {size:#x} is not a multiple of the {page_kib} KiB huge page size")]
    HugepageAlignment { size: u64, page_kib: u64 },
    #[error("hugepages=on with host_numa_node={node} needs {needed} free huge pages of {page_kib} KiB on that node but it has {free}; reserve more with `echo N > {path}` or turn hugepages off")]
    NotEnoughNodeHugepages {
        node: u32,
        needed: u64,
        free: u64,
        page_kib: u64,
        path: String,
    },
    #[error("memory zone {zone} ({size:#x} bytes at guest {start:#x}) is not aligned to its {page_kib} KiB huge pages; size it and the zones before it in multiples of the page")]
    ZoneHugepageAlignment {
        zone: String,
        start: u64,
        size: u64,
        page_kib: u64,
    },
    #[error(transparent)]
    Numa(#[from] NumaError),
    #[error("cannot register guest memory with KVM: {0}")]
    Register(hypervisor::HypervisorError),
}

/// Fields of /proc/meminfo, in KiB (or pages for the HugePages_ counts).
pub fn meminfo_field(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The huge page size RAM is backed with: the configured one, else the host's
/// default (`Hugepagesize` in /proc/meminfo).
fn hugepage_bytes(configured: Option<u64>) -> Result<u64, MemoryError> {
    match configured {
        Some(page) => Ok(page),
        None => meminfo_field("Hugepagesize")
            .map(|kib| kib * 1024)
            .ok_or(MemoryError::NoHugepages),
    }
}

/// The pool of `page_kib` pages: system-wide, or of `node`.
fn hugepage_pool_dir(page_kib: u64, node: Option<u32>) -> String {
    match node {
        Some(node) => format!(
            "{}/node{node}/hugepages/hugepages-{page_kib}kB",
            numa::NODE_SYSFS
        ),
        None => format!("{HUGEPAGES_SYSFS}/hugepages-{page_kib}kB"),
    }
}

const HUGEPAGES_SYSFS: &str = "/sys/kernel/mm/hugepages";

fn read_count(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Huge pages some RAM needs: `size` bytes of `page`-byte pages, from `node`'s
/// pool when it is bound to one.
#[derive(Clone, Copy, Debug)]
struct HugepageDemand {
    size: u64,
    page: u64,
    node: Option<u32>,
}

/// Checks, before anything is mapped, that the pool of `page`-byte pages (of
/// `node` when RAM is bound to one) has `size` free: hugetlb memory mapped with
/// MAP_NORESERVE that the pool cannot back is a SIGBUS when the guest touches it,
/// not an error at the mapping.
fn check_hugepages(size: u64, page: u64, node: Option<u32>) -> Result<(), MemoryError> {
    check_hugepage_pools(&[HugepageDemand { size, page, node }])
}

/// [`check_hugepages`] for several pieces of RAM at once: pieces drawing on the
/// same pool are added up before it is compared with what the pool has free.
fn check_hugepage_pools(demands: &[HugepageDemand]) -> Result<(), MemoryError> {
    let mut per_size: BTreeMap<u64, u64> = BTreeMap::new();
    let mut per_node: BTreeMap<(u64, u32), u64> = BTreeMap::new();
    for d in demands {
        if !d.size.is_multiple_of(d.page) {
            return Err(MemoryError::HugepageAlignment {
                size: d.size,
                page_kib: d.page / 1024,
            });
        }
        *per_size.entry(d.page).or_default() += d.size / d.page;
        if let Some(node) = d.node {
            *per_node.entry((d.page, node)).or_default() += d.size / d.page;
        }
    }
    for (&page, &needed) in &per_size {
        let page_kib = page / 1024;
        let global = hugepage_pool_dir(page_kib, None);
        let total = read_count(&format!("{global}/nr_hugepages")).unwrap_or(0);
        if total == 0 {
            return Err(MemoryError::NoHugepagesOfSize {
                page_kib,
                path: format!("{global}/nr_hugepages"),
            });
        }
        let free = read_count(&format!("{global}/free_hugepages")).unwrap_or(0);
        if needed > free {
            return Err(MemoryError::NotEnoughHugepages {
                needed,
                free,
                page_kib,
                path: format!("{global}/nr_hugepages"),
            });
        }
    }
    for (&(page, node), &needed) in &per_node {
        let page_kib = page / 1024;
        let dir = hugepage_pool_dir(page_kib, Some(node));
        let free = read_count(&format!("{dir}/free_hugepages")).unwrap_or(0);
        if needed > free {
            return Err(MemoryError::NotEnoughNodeHugepages {
                node,
                needed,
                free,
                page_kib,
                path: format!("{dir}/nr_hugepages"),
            });
        }
    }
    Ok(())
}

/// `MAP_HUGE_*`/`MFD_HUGE_*` for a page size: log2 of it in bits 26-31.
fn huge_size_flag(page: u64) -> libc::c_int {
    (page.trailing_zeros() as libc::c_int) << 26
}

fn memfd(size: u64, hugepage: Option<u64>) -> Result<File, MemoryError> {
    let mut flags = libc::MFD_CLOEXEC;
    if let Some(page) = hugepage {
        flags |= libc::MFD_HUGETLB | huge_size_flag(page) as libc::c_uint;
    }
    // SAFETY: the name is a valid NUL-terminated string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"form-vmm-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|source| MemoryError::Truncate { size, source })?;
    Ok(file)
}

/// How one piece of guest RAM (all of it, or one zone) is backed.
struct Backing {
    /// The memfd of a shared mapping, at the piece's offset 0.
    file: Option<File>,
    hugepage: Option<u64>,
    node: Option<u32>,
}

impl Backing {
    fn new(
        size: u64,
        shared: bool,
        hugepage: Option<u64>,
        node: Option<u32>,
    ) -> Result<Backing, MemoryError> {
        let file = if shared {
            Some(memfd(size, hugepage)?)
        } else {
            None
        };
        Ok(Backing {
            file,
            hugepage,
            node,
        })
    }

    /// Maps guest range `r`, which is `offset` bytes into the piece.
    fn map(&self, r: &MemoryRegion, offset: u64) -> Result<GuestRegionMmap, MemoryError> {
        let mut builder = MmapRegionBuilder::new(r.size as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
        builder = match &self.file {
            Some(file) => {
                let clone = file.try_clone().map_err(MemoryError::Memfd)?;
                builder
                    .with_file_offset(FileOffset::new(clone, offset))
                    .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
            }
            None => {
                let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
                if let Some(page) = self.hugepage {
                    flags |= libc::MAP_HUGETLB | huge_size_flag(page);
                }
                builder.with_mmap_flags(flags)
            }
        };
        let mapping = builder
            .with_hugetlbfs(self.hugepage.is_some())
            .build()
            .map_err(|source| MemoryError::Map {
                addr: r.start,
                size: r.size,
                source,
            })?;
        if let Some(node) = self.node {
            // Before anything touches the mapping: a page faulted in first would
            // stay wherever it landed. For the memfd the policy goes to the file's
            // range, which is what every mapping of it then sees.
            // SAFETY: `mapping` is the fresh, page-aligned mapping built above.
            unsafe { numa::bind_memory(mapping.as_ptr(), mapping.size(), node) }?;
        }
        GuestRegionMmap::new(mapping, GuestAddress(r.start))
            .ok_or_else(|| MemoryError::Regions(format!("region at {:#x} wraps", r.start)))
    }
}

/// Maps guest RAM for `layout` as `config` asks: private anonymous memory by
/// default, a memfd shared mapping with `shared`, huge pages with `hugepages`,
/// bound to `host_numa_node` when one is given; with zones, each zone as it asks.
pub fn create_guest_memory(
    layout: &GuestLayout,
    config: &MemoryConfig,
) -> Result<GuestMemoryMmap, MemoryError> {
    let regions = match config.zones() {
        [] => map_unzoned(layout, config)?,
        zones => map_zones(layout, zones, config.shared)?,
    };
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Regions(e.to_string()))
}

fn map_unzoned(
    layout: &GuestLayout,
    config: &MemoryConfig,
) -> Result<Vec<GuestRegionMmap>, MemoryError> {
    let total = layout.ram_size();
    let hugepage = if config.hugepages {
        let page = hugepage_bytes(config.hugepage_size)?;
        check_hugepages(total, page, config.host_numa_node)?;
        Some(page)
    } else {
        None
    };
    let backing = Backing::new(total, config.shared, hugepage, config.host_numa_node)?;
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for r in layout.ram_regions() {
        regions.push(backing.map(r, offset)?);
        offset += r.size;
    }
    Ok(regions)
}

/// Each zone's ranges with the zone's backing; `shared` (`memory.shared`) shares
/// every zone.
fn map_zones(
    layout: &GuestLayout,
    zones: &[MemoryZoneConfig],
    shared: bool,
) -> Result<Vec<GuestRegionMmap>, MemoryError> {
    let sizes: Vec<u64> = zones.iter().map(|z| z.size).collect();
    let ranges = zone_ranges(layout.ram_regions(), &sizes).ok_or_else(|| {
        MemoryError::Regions(format!(
            "the memory zones add up to more than the layout's {:#x} bytes of RAM",
            layout.ram_size()
        ))
    })?;
    let mut pages = Vec::with_capacity(zones.len());
    let mut demands = Vec::new();
    for (zone, ranges) in zones.iter().zip(&ranges) {
        let page = if zone.hugepages {
            let page = hugepage_bytes(zone.hugepage_size)?;
            // Every piece must be whole pages; the hole's edges are 1 GiB
            // aligned, so checking where the zone starts and its size is enough.
            let start = ranges.first().map_or(0, |r| r.start);
            if !start.is_multiple_of(page) || !zone.size.is_multiple_of(page) {
                return Err(MemoryError::ZoneHugepageAlignment {
                    zone: zone.id.clone(),
                    start,
                    size: zone.size,
                    page_kib: page / 1024,
                });
            }
            demands.push(HugepageDemand {
                size: zone.size,
                page,
                node: zone.host_numa_node,
            });
            Some(page)
        } else {
            None
        };
        pages.push(page);
    }
    check_hugepage_pools(&demands)?;
    let mut regions = Vec::new();
    for ((zone, ranges), page) in zones.iter().zip(&ranges).zip(pages) {
        let backing = Backing::new(zone.size, shared || zone.shared, page, zone.host_numa_node)?;
        let mut offset = 0u64;
        for r in ranges {
            regions.push(backing.map(r, offset)?);
            offset += r.size;
        }
    }
    Ok(regions)
}

/// Hands every region of `memory` to KVM; returns the slot ids.
pub fn register_guest_memory(
    vm: &hypervisor::Vm,
    memory: &GuestMemoryMmap,
) -> Result<Vec<u32>, MemoryError> {
    memory
        .iter()
        .map(|region| {
            // SAFETY: the mapping belongs to `memory`, which the VMM keeps alive for
            // as long as the KVM VM exists (Vm drops the hypervisor VM first).
            unsafe { vm.add_memory(region.start_addr().0, region.len(), region.as_ptr(), false) }
                .map_err(MemoryError::Register)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_sizes_reach_the_kernel_as_its_flags() {
        assert_eq!(huge_size_flag(2 << 20), libc::MAP_HUGE_2MB);
        assert_eq!(huge_size_flag(1 << 30), libc::MAP_HUGE_1GB);
        assert_eq!(huge_size_flag(2 << 20) as libc::c_uint, libc::MFD_HUGE_2MB);
    }

    #[test]
    fn a_pool_too_small_is_named_by_its_size_and_path() {
        // More 1 GiB pages than any host reserves: refused before anything is
        // mapped, naming the 1 GiB pool whatever the host's default size is.
        let err = check_hugepages(1 << 50, 1 << 30, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1048576 KiB") && err.contains("hugepages-1048576kB/nr_hugepages"),
            "{err}"
        );
        let err = check_hugepages((1 << 30) + (2 << 20), 1 << 30, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a multiple"), "{err}");
    }
    use vm_memory::Bytes;

    #[test]
    fn anonymous_and_shared_memory_follow_the_layout() {
        let layout = GuestLayout::new(64 << 20, 40).unwrap();
        for shared in [false, true] {
            let cfg = MemoryConfig {
                size: 64 << 20,
                shared,
                ..Default::default()
            };
            let mem = create_guest_memory(&layout, &cfg).unwrap();
            assert_eq!(mem.num_regions(), 1);
            mem.write_obj(0xdead_beefu32, GuestAddress(0x3ff_fffc))
                .unwrap();
            assert_eq!(
                mem.read_obj::<u32>(GuestAddress(0x3ff_fffc)).unwrap(),
                0xdead_beef
            );
            assert!(mem.write_obj(0u8, GuestAddress(64 << 20)).is_err());
        }
    }

    #[test]
    fn hugepages_error_says_what_to_do() {
        if meminfo_field("HugePages_Free").unwrap_or(0) > 0 {
            eprintln!("skipping: this host has free huge pages, the error path is not reachable");
            return;
        }
        let layout = GuestLayout::new(64 << 20, 40).unwrap();
        let cfg = MemoryConfig {
            size: 64 << 20,
            hugepages: true,
            ..Default::default()
        };
        let err = create_guest_memory(&layout, &cfg).unwrap_err();
        assert!(err.to_string().contains("nr_hugepages"), "{err}");
    }

    #[test]
    fn ram_bound_to_a_node_has_that_policy_private_or_shared() {
        if !std::path::Path::new(numa::NODE_SYSFS)
            .join("node0")
            .is_dir()
        {
            eprintln!("skipping: no NUMA node 0 on this kernel");
            return;
        }
        let layout = GuestLayout::new(64 << 20, 40).unwrap();
        for shared in [false, true] {
            let cfg = MemoryConfig {
                size: 64 << 20,
                shared,
                host_numa_node: Some(0),
                ..Default::default()
            };
            let mem = create_guest_memory(&layout, &cfg).unwrap();
            for region in mem.iter() {
                let (mode, nodes) = numa::memory_policy(region.as_ptr()).unwrap();
                assert_eq!((mode, nodes), (libc::MPOL_BIND, vec![0]), "shared={shared}");
            }
            mem.write_obj(7u64, GuestAddress(0x10_0000)).unwrap();
            let host = mem.get_host_address(GuestAddress(0x10_0000)).unwrap();
            assert_eq!(numa::page_node(host).unwrap(), 0);
        }
        let unbound = create_guest_memory(&layout, &MemoryConfig::default()).unwrap();
        let region = unbound.iter().next().unwrap();
        assert_ne!(
            numa::memory_policy(region.as_ptr()).unwrap().0,
            libc::MPOL_BIND
        );
    }

    #[test]
    fn zones_are_mapped_in_order_each_with_its_own_backing() {
        if !std::path::Path::new(numa::NODE_SYSFS)
            .join("node0")
            .is_dir()
        {
            eprintln!("skipping: no NUMA node 0 on this kernel");
            return;
        }
        const M: u64 = 1 << 20;
        const G: u64 = 1 << 30;
        let zone = |id: &str, size, host_numa_node| MemoryZoneConfig {
            id: id.into(),
            size,
            host_numa_node,
            ..Default::default()
        };
        // mem1, shared, reaches the 32-bit hole and goes on at 4 GiB; mem2 is
        // bound nowhere.
        let cfg = MemoryConfig {
            size: 0,
            zones: Some(vec![
                zone("mem0", 3 * G - 16 * M, Some(0)),
                MemoryZoneConfig {
                    shared: true,
                    ..zone("mem1", 32 * M, Some(0))
                },
                zone("mem2", 16 * M, None),
            ]),
            ..Default::default()
        };
        let layout = GuestLayout::new(cfg.ram_size(), 40).unwrap();
        let mem = create_guest_memory(&layout, &cfg).unwrap();
        let starts: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        assert_eq!(
            starts,
            vec![
                (0, 3 * G - 16 * M),
                (3 * G - 16 * M, 16 * M),
                (4 * G, 16 * M),
                (4 * G + 16 * M, 16 * M),
            ]
        );
        for (addr, bound) in [
            (0x10_0000, true),
            (3 * G - 16 * M - 8, true),
            (3 * G - 16 * M, true),
            (3 * G - 8, true),
            (4 * G, true),
            (4 * G + 16 * M - 8, true),
            (4 * G + 16 * M, false),
        ] {
            mem.write_obj(addr, GuestAddress(addr)).unwrap();
            let host = mem.get_host_address(GuestAddress(addr)).unwrap();
            let (mode, nodes) = numa::memory_policy(host).unwrap();
            if bound {
                assert_eq!((mode, nodes), (libc::MPOL_BIND, vec![0]), "{addr:#x}");
                assert_eq!(numa::page_node(host).unwrap(), 0, "{addr:#x}");
            } else {
                assert_ne!(mode, libc::MPOL_BIND, "{addr:#x}");
            }
        }
        // mem1's two ranges are one memfd, the upper one 16 MiB into it; the
        // other zones are private.
        let offsets: Vec<Option<u64>> = mem
            .iter()
            .map(|r| r.file_offset().map(|f| f.start()))
            .collect();
        assert_eq!(offsets, vec![None, Some(0), Some(16 * M), None]);
    }

    #[test]
    fn huge_page_pools_are_checked_for_all_zones_together() {
        // Each zone alone fits what a host might reserve; together they cannot.
        let half = HugepageDemand {
            size: 1 << 49,
            page: 1 << 30,
            node: None,
        };
        let err = check_hugepage_pools(&[half, half]).unwrap_err();
        assert!(
            matches!(
                err,
                MemoryError::NoHugepagesOfSize { .. }
                    | MemoryError::NotEnoughHugepages {
                        needed: 1_048_576,
                        ..
                    }
            ),
            "{err}"
        );
        check_hugepage_pools(&[]).unwrap();
    }

    #[test]
    fn a_zone_with_huge_pages_must_start_on_a_page() {
        let cfg = MemoryConfig {
            size: 0,
            zones: Some(vec![
                MemoryZoneConfig {
                    id: "small".into(),
                    size: 2 << 20,
                    ..Default::default()
                },
                MemoryZoneConfig {
                    id: "huge".into(),
                    size: 1 << 30,
                    hugepages: true,
                    hugepage_size: Some(1 << 30),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let layout = GuestLayout::new(cfg.ram_size(), 40).unwrap();
        let err = create_guest_memory(&layout, &cfg).unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory zone huge (0x40000000 bytes at guest 0x200000) is not aligned to its 1048576 KiB huge pages; size it and the zones before it in multiples of the page"
        );
    }
}
