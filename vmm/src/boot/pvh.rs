//! The PVH boot protocol's `hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h).

use super::e820::E820Entry;
use super::kernel::{BootError, LoadedPayload};
use crate::memory::GuestMemoryMmap;
use form_vm_allocator::layout::{
    PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use vm_memory::{Bytes, GuestAddress};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Version 1 adds the memory map fields.
const START_INFO_VERSION: u32 = 1;
const MEMMAP_ENTRY_SIZE: u64 = 24;
/// The memory map may run up to the zero page, which PVH boot does not use but
/// whose address other structures assume is free.
const MAX_MEMMAP_ENTRIES: usize =
    ((ZERO_PAGE_START - PVH_MEMMAP_START) / MEMMAP_ENTRY_SIZE) as usize;

fn put<T: vm_memory::ByteValued>(mem: &GuestMemoryMmap, addr: u64, v: T) -> Result<(), BootError> {
    mem.write_obj(v, GuestAddress(addr))
        .map_err(|source| BootError::GuestWrite {
            what: "hvm_start_info",
            source,
        })
}

/// Writes `hvm_start_info`, its module list and memory map; returns its address.
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    payload: &LoadedPayload,
    e820: &[E820Entry],
    rsdp: Option<u64>,
) -> Result<u64, BootError> {
    let entries = &e820[..e820.len().min(MAX_MEMMAP_ENTRIES)];
    for (i, e) in entries.iter().enumerate() {
        let at = PVH_MEMMAP_START + i as u64 * MEMMAP_ENTRY_SIZE;
        put(mem, at, e.addr)?;
        put(mem, at + 8, e.size)?;
        put(mem, at + 16, e.kind)?;
        put(mem, at + 20, 0u32)?;
    }
    let mut nr_modules = 0u32;
    if let Some((addr, size)) = payload.initramfs {
        put(mem, PVH_MODLIST_START, addr)?;
        put(mem, PVH_MODLIST_START + 8, size)?;
        put(mem, PVH_MODLIST_START + 16, 0u64)?; // no module command line
        put(mem, PVH_MODLIST_START + 24, 0u64)?;
        nr_modules = 1;
    }
    let s = PVH_INFO_START;
    put(mem, s, XEN_HVM_START_MAGIC)?;
    put(mem, s + 4, START_INFO_VERSION)?;
    put(mem, s + 8, 0u32)?; // flags
    put(mem, s + 12, nr_modules)?;
    put(
        mem,
        s + 16,
        if nr_modules > 0 { PVH_MODLIST_START } else { 0 },
    )?;
    put(mem, s + 24, payload.cmdline_addr)?;
    put(mem, s + 32, rsdp.unwrap_or(0))?;
    put(mem, s + 40, PVH_MEMMAP_START)?;
    put(mem, s + 48, entries.len() as u32)?;
    put(mem, s + 52, 0u32)?;
    Ok(PVH_INFO_START)
}
