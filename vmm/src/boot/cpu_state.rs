//! The boot vCPU's registers: page tables, GDT, segments and control registers.

use super::EntryPoint;
use crate::memory::GuestMemoryMmap;
use form_vm_allocator::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDPT_START, PD_START, PML4_START,
};
use hypervisor::bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use hypervisor::Vcpu;
use vm_memory::{Bytes, GuestAddress};

#[derive(Debug, thiserror::Error)]
pub enum BootCpuError {
    #[error("cannot write the boot {what} into guest memory: {source}")]
    GuestWrite {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    #[error("cannot set the boot vCPU's registers: {0}")]
    Registers(hypervisor::HypervisorError),
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_PS: u64 = 0x80;
/// Page directories needed to map 4 GiB with 2 MiB pages.
const IDENTITY_MAPPED_GIB: u64 = 4;

// GDT: null, 64-bit code, data, TSS, 32-bit code (PVH). Access/flag bits per the
// SDM's segment descriptor format.
const GDT: [u64; 5] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
    gdt_entry(0xc09b, 0, 0xfffff),
];
const CODE64_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;
const CODE32_SELECTOR: u16 = 0x20;

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The `kvm_segment` KVM wants for a GDT descriptor.
fn segment(selector: u16) -> kvm_segment {
    let entry = GDT[usize::from(selector >> 3)];
    let flags = (entry >> 40) & 0xf0ff;
    let limit = ((entry >> 32) & 0x000f_0000) | (entry & 0xffff);
    let g = ((flags >> 15) & 1) as u8;
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        // KVM takes the byte limit; with G set the descriptor counts 4 KiB pages.
        limit: if g == 1 {
            ((limit << 12) | 0xfff) as u32
        } else {
            limit as u32
        },
        selector,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g,
        avl: ((flags >> 12) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

fn write(mem: &GuestMemoryMmap, what: &'static str, addr: u64, v: u64) -> Result<(), BootCpuError> {
    mem.write_obj(v, GuestAddress(addr))
        .map_err(|source| BootCpuError::GuestWrite { what, source })
}

/// Identity-maps the first 4 GiB with 2 MiB pages.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), BootCpuError> {
    write(mem, "PML4", PML4_START, PDPT_START | PAGE_PRESENT_RW)?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PD_START + gib * 0x1000;
        write(mem, "PDPT", PDPT_START + gib * 8, pd | PAGE_PRESENT_RW)?;
        for i in 0..512u64 {
            let addr = ((gib << 30) | (i << 21)) | PAGE_PRESENT_RW | PAGE_PS;
            write(mem, "page directory", pd + i * 8, addr)?;
        }
    }
    Ok(())
}

fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), BootCpuError> {
    for (i, entry) in GDT.iter().enumerate() {
        write(mem, "GDT", BOOT_GDT_START + i as u64 * 8, *entry)?;
    }
    write(mem, "IDT", BOOT_IDT_START, 0)
}

/// Sets up guest memory structures and the BSP's registers to enter at `entry`,
/// with `boot_info` (boot_params or hvm_start_info) in the register the
/// protocol names.
pub fn setup_boot_vcpu(
    mem: &GuestMemoryMmap,
    vcpu: &Vcpu,
    entry: EntryPoint,
    boot_info: u64,
) -> Result<(), BootCpuError> {
    write_gdt(mem)?;
    let mut sregs: kvm_sregs = vcpu.sregs().map_err(BootCpuError::Registers)?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let data = segment(DATA_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS_SELECTOR);
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        EntryPoint::Linux64 { entry } => {
            write_page_tables(mem)?;
            sregs.cs = segment(CODE64_SELECTOR);
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = entry;
            regs.rsi = boot_info;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
        }
        EntryPoint::Pvh { entry } => {
            sregs.cs = segment(CODE32_SELECTOR);
            sregs.cr0 = (sregs.cr0 | X86_CR0_PE | X86_CR0_ET) & !X86_CR0_PG;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = boot_info;
        }
    }
    vcpu.set_sregs(&sregs).map_err(BootCpuError::Registers)?;
    vcpu.set_regs(&regs).map_err(BootCpuError::Registers)?;
    // x87 and SSE in their power-on state (FCW 0x37f, MXCSR 0x1f80).
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(BootCpuError::Registers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_segments_decode_as_flat() {
        let code = segment(CODE64_SELECTOR);
        assert_eq!((code.l, code.db, code.type_, code.present), (1, 0, 0xb, 1));
        assert_eq!((code.base, code.limit), (0, 0xffff_ffff));
        let data = segment(DATA_SELECTOR);
        assert_eq!((data.l, data.db, data.type_, data.s), (0, 1, 0x3, 1));
        let code32 = segment(CODE32_SELECTOR);
        assert_eq!((code32.l, code32.db, code32.type_), (0, 1, 0xb));
        let tss = segment(TSS_SELECTOR);
        assert_eq!((tss.s, tss.type_), (0, 0xb));
    }
}
