/* Port and memory-mapped I/O primitives.
 *
 * MMIO goes through explicit single `mov` instructions so that a VMM sees one
 * plainly decodable access of the intended width per read or write, never a
 * compiler-merged or split one.
 */
#ifndef GUEST_IO_H
#define GUEST_IO_H

#include <stdint.h>

static inline void outb(uint16_t port, uint8_t value)
{
	__asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t value;

	__asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
	return value;
}

/* 8- and 16-bit MMIO, for registers that are that wide (virtio's common
 * configuration, whose fields a driver must access at their own width). */
static inline uint8_t mmio_read8(uint64_t addr)
{
	uint8_t value;

	__asm__ volatile("movb (%1), %0" : "=q"(value) : "r"(addr) : "memory");
	return value;
}

static inline void mmio_write8(uint64_t addr, uint8_t value)
{
	__asm__ volatile("movb %0, (%1)" : : "q"(value), "r"(addr) : "memory");
}

static inline uint16_t mmio_read16(uint64_t addr)
{
	uint16_t value;

	__asm__ volatile("movw (%1), %0" : "=r"(value) : "r"(addr) : "memory");
	return value;
}

static inline void mmio_write16(uint64_t addr, uint16_t value)
{
	__asm__ volatile("movw %0, (%1)" : : "r"(value), "r"(addr) : "memory");
}

static inline uint32_t mmio_read32(uint64_t addr)
{
	uint32_t value;

	__asm__ volatile("movl (%1), %0" : "=r"(value) : "r"(addr) : "memory");
	return value;
}

static inline void mmio_write32(uint64_t addr, uint32_t value)
{
	__asm__ volatile("movl %0, (%1)" : : "r"(value), "r"(addr) : "memory");
}

/* 64-bit MMIO, for device registers that are eight bytes wide (edu's DMA
 * registers accept 4- or 8-byte accesses). */
static inline uint64_t mmio_read64(uint64_t addr)
{
	uint64_t value;

	__asm__ volatile("movq (%1), %0" : "=r"(value) : "r"(addr) : "memory");
	return value;
}

static inline void mmio_write64(uint64_t addr, uint64_t value)
{
	__asm__ volatile("movq %0, (%1)" : : "r"(value), "r"(addr) : "memory");
}

static inline void cpu_relax(void)
{
	__asm__ volatile("pause");
}

/* Stops this vCPU for good: interrupts stay off, so nothing wakes it. */
static inline __attribute__((noreturn)) void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

#endif
