/* Entry from the VMM: 64-bit long mode, interrupts off, the first 4 GiB
 * identity-mapped, %rsi = boot_params. Nothing else about the state (stack,
 * direction flag, BSS contents) is relied on. */

#define STACK_SIZE 16384

	.section .text.entry, "ax", @progbits
	.code64
	.globl _start
	.type _start, @function
_start:
	cli
	cld
	movq %rsi, %r12			/* boot_params survives the BSS clear */

	leaq __bss_start(%rip), %rdi
	leaq __bss_end(%rip), %rcx
	subq %rdi, %rcx
	xorl %eax, %eax
	rep stosb

	leaq stack_top(%rip), %rsp
	xorl %ebp, %ebp
	movq %r12, %rdi
	call guest_main

	/* guest_main does not return; stop quietly if it ever does. */
1:	cli
	hlt
	jmp 1b
	.size _start, . - _start

	.section .bss.stack, "aw", @nobits
	.balign 16
	.skip STACK_SIZE
stack_top:

	.section .note.GNU-stack, "", @progbits
