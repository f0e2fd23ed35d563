//! Linux's `boot_params` ("zero page") for the 64-bit boot protocol.

use super::e820::E820Entry;
use super::kernel::{BootError, LoadedPayload};
use crate::memory::GuestMemoryMmap;
use form_vm_allocator::layout::ZERO_PAGE_START;
use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, E820_MAX_ENTRIES_ZEROPAGE, KEEP_SEGMENTS, LOADED_HIGH,
};
use vm_memory::{Bytes, GuestAddress};

const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader id: we are not one of the registered loaders.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Kernel alignment for ELF kernels, which carry no header of their own.
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// Builds `boot_params` and writes it at [`ZERO_PAGE_START`].
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    payload: &LoadedPayload,
    e820: &[E820Entry],
    rsdp: Option<u64>,
) -> Result<u64, BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = payload.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = BOOT_FLAG_MAGIC;
        params.hdr.header = HDRS_MAGIC;
        params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= LOADED_HIGH | KEEP_SEGMENTS;
    // Both are below 4 GiB by construction, so the ext_ fields stay zero.
    params.hdr.cmd_line_ptr = payload.cmdline_addr as u32;
    params.hdr.cmdline_size = payload.cmdline_size.saturating_sub(1) as u32;
    if let Some((addr, size)) = payload.initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    params.acpi_rsdp_addr = rsdp.unwrap_or(0);
    let count = e820.len().min(E820_MAX_ENTRIES_ZEROPAGE);
    for (slot, entry) in params.e820_table.iter_mut().zip(e820.iter()) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = count as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|source| BootError::GuestWrite {
            what: "boot_params",
            source,
        })?;
    Ok(ZERO_PAGE_START)
}
