/* One entry stub per interrupt vector. Each pushes a zero where the CPU
 * pushes no error code, then its vector number, so interrupt_common sees one
 * frame layout: vector, error code, then the CPU's RIP, CS, RFLAGS, RSP, SS. */

	.altmacro

	.macro vector_stub n
	.balign 16
vector_stub_\n:
	.if (\n == 8) || ((\n >= 10) && (\n <= 14)) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
	.else
	pushq $0
	.endif
	pushq $\n
	jmp interrupt_common
	.endm

	.macro vector_address n
	.quad vector_stub_\n
	.endm

	.section .text, "ax", @progbits
	.code64

	.set vector, 0
	.rept 256
	vector_stub %vector
	.set vector, vector + 1
	.endr

/* Saves the registers a C function may clobber, calls
 * interrupt_dispatch(frame) on a 16-byte aligned stack, and returns from the
 * interrupt. The guest is compiled with -mgeneral-regs-only, so no vector
 * state needs saving. */
interrupt_common:
	pushq %rax
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %rbp
	leaq 80(%rsp), %rdi		/* the frame: vector first */
	movq %rsp, %rbp
	andq $-16, %rsp
	cld
	call interrupt_dispatch
	movq %rbp, %rsp
	popq %rbp
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rax
	addq $16, %rsp			/* vector and error code */
	iretq

	.section .rodata, "a", @progbits
	.balign 8
	.globl interrupt_stubs
interrupt_stubs:
	.set vector, 0
	.rept 256
	vector_address %vector
	.set vector, vector + 1
	.endr

	.section .note.GNU-stack, "", @progbits
