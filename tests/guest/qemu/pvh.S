/* PVH entry for running the test guest under QEMU (tests/guest/qemu/run).
 *
 * form-vmm enters the guest in long mode with %rsi = boot_params; QEMU can
 * only start an ELF through PVH: 32-bit protected mode, paging off,
 * %ebx = hvm_start_info. This shim bridges the two: it turns on long mode
 * with the same 4 GiB identity map the VMM builds, copies the command line
 * and RSDP pointers into a zero page, and jumps to the guest's _start.
 * Only the QEMU build links it; the VMM's guest must not have a PVH note. */

#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h). */
#define START_INFO_CMDLINE 24
#define START_INFO_RSDP 32

/* boot_params offsets the guest reads (boot.c). */
#define BP_ACPI_RSDP_ADDR 0x070
#define BP_EXT_CMD_LINE_PTR 0x0C8
#define BP_HDR_CMD_LINE_PTR 0x228

#define CR0_PE 0x00000001
#define CR0_PG 0x80000000
#define CR4_PAE 0x20
#define MSR_EFER 0xC0000080
#define EFER_LME 0x100
#define CODE64 0x08
#define DATA 0x10
/* Present, writable; PS marks a 2 MiB page in a page directory. */
#define PTE_TABLE 0x03
#define PTE_LARGE 0x83

	.section .pvhnote, "a", @note
	.balign 4
	.long 4, 4, XEN_ELFNOTE_PHYS32_ENTRY
	.asciz "Xen"
	.balign 4
	.long pvh_start

	.section .text.pvh, "ax", @progbits
	.code32
	.globl pvh_start
pvh_start:
	cli
	cld
	movl %ebx, %esi
	movl $pvh_pml4, %eax
	movl %eax, %cr3
	movl %cr4, %eax
	orl $CR4_PAE, %eax
	movl %eax, %cr4
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	lgdt pvh_gdt_descriptor
	movl %cr0, %eax
	orl $(CR0_PE | CR0_PG), %eax
	movl %eax, %cr0
	ljmp $CODE64, $pvh_long

	.code64
pvh_long:
	movl $DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
	movl %esi, %esi
	leaq pvh_boot_params(%rip), %rdi
	movq START_INFO_CMDLINE(%rsi), %rax
	movl %eax, BP_HDR_CMD_LINE_PTR(%rdi)
	shrq $32, %rax
	movl %eax, BP_EXT_CMD_LINE_PTR(%rdi)
	movq START_INFO_RSDP(%rsi), %rax
	movq %rax, BP_ACPI_RSDP_ADDR(%rdi)
	movq %rdi, %rsi
	jmp _start

	/* In .data, not .bss: _start clears the BSS, and these must outlive it. */
	.section .data.pvh, "aw", @progbits
	.balign 8
pvh_gdt:
	.quad 0
	.quad 0x00af9a000000ffff	/* 64-bit code */
	.quad 0x00cf92000000ffff	/* flat data */
pvh_gdt_end:
pvh_gdt_descriptor:
	.word pvh_gdt_end - pvh_gdt - 1
	.long pvh_gdt

	.balign 4096
pvh_boot_params:
	.fill 4096, 1, 0
pvh_pml4:
	.quad pvh_pdpt + PTE_TABLE
	.fill 511, 8, 0
pvh_pdpt:
	.quad pvh_pd + PTE_TABLE
	.quad pvh_pd + 0x1000 + PTE_TABLE
	.quad pvh_pd + 0x2000 + PTE_TABLE
	.quad pvh_pd + 0x3000 + PTE_TABLE
	.fill 508, 8, 0
pvh_pd:
	.set page, 0
	.rept 2048
	.quad (page << 21) + PTE_LARGE
	.set page, page + 1
	.endr

	.section .note.GNU-stack, "", @progbits
