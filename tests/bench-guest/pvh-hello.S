/* A minimal PVH guest for scripts/bench-vs-ch: prints one line on COM1 and powers off
 * through the ACPI sleep register at 0x600, which form-vmm and Cloud Hypervisor both
 * decode, so the same ELF boots under both (Cloud Hypervisor boots ELFs only through
 * the PVH note). 32-bit code in an ELF64, as both loaders want. */
	.section .note.Xen, "a", @note
	.align 4
	.long 4          /* name size */
	.long 4          /* desc size */
	.long 18         /* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long _start

	.text
	.code32
	.globl _start
_start:
	mov $msg, %esi
1:	lodsb
	test %al, %al
	jz 2f
	mov $0x3f8, %dx
	out %al, %dx
	jmp 1b
2:	mov $0x600, %dx
	mov $0x34, %al
	out %al, %dx
3:	hlt
	jmp 3b

	.section .rodata
msg:	.asciz "pvh-hello\n"
