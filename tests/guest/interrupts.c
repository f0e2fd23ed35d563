#include "interrupts.h"

#include <stdbool.h>

#include "cpu.h"
#include "format.h"
#include "io.h"
#include "lapic.h"
#include "protocol.h"

#define IDT_ENTRIES 256
#define EXCEPTION_VECTORS 32
#define PAGE_FAULT 14
/* Present, DPL 0, 64-bit interrupt gate (IF cleared on entry). */
#define GATE_INTERRUPT 0x8E

/* platform.md: writing S5|SLP_EN here powers the VM off. */
#define PLATFORM_SLEEP_CONTROL_PORT 0x600
#define SLEEP_S5_ENABLE 0x34

struct idt_gate {
	uint16_t offset_low;
	uint16_t selector;
	uint8_t ist;
	uint8_t type_attr;
	uint16_t offset_mid;
	uint32_t offset_high;
	uint32_t reserved;
} __attribute__((packed));

struct idt_pointer {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

extern const uint64_t interrupt_stubs[IDT_ENTRIES];

static struct idt_gate idt[IDT_ENTRIES] __attribute__((aligned(16)));
static volatile uint32_t counts[IDT_ENTRIES];
static bool loaded;

void interrupts_init(void)
{
	struct idt_pointer pointer;
	uint16_t cs = cpu_read_cs();

	if (loaded)
		return;
	for (unsigned v = 0; v < IDT_ENTRIES; v++) {
		uint64_t handler = interrupt_stubs[v];

		idt[v] = (struct idt_gate){
			.offset_low = (uint16_t)handler,
			.selector = cs,
			.type_attr = GATE_INTERRUPT,
			.offset_mid = (uint16_t)(handler >> 16),
			.offset_high = (uint32_t)(handler >> 32),
		};
	}
	pointer = (struct idt_pointer){ .limit = sizeof(idt) - 1, .base = (uintptr_t)idt };
	__asm__ volatile("lidt %0" : : "m"(pointer) : "memory");
	loaded = true;
}

uint32_t interrupt_count(uint8_t vector)
{
	return counts[vector];
}

/* An exception means the scenario itself is broken: say where, and end the
 * run the way the platform allows without the ACPI tables. */
static __attribute__((noreturn)) void exception(const struct interrupt_frame *frame)
{
	if (frame->vector == PAGE_FAULT)
		protocol_fail(reasonf("page fault at rip 0x%lx, address 0x%lx, error 0x%lx",
				      (unsigned long)frame->rip, (unsigned long)cpu_read_cr2(),
				      (unsigned long)frame->error_code));
	else
		protocol_fail(reasonf("exception %lu at rip 0x%lx, error 0x%lx",
				      (unsigned long)frame->vector, (unsigned long)frame->rip,
				      (unsigned long)frame->error_code));
	outb(PLATFORM_SLEEP_CONTROL_PORT, SLEEP_S5_ENABLE);
	halt_forever();
}

void interrupt_dispatch(struct interrupt_frame *frame)
{
	if (frame->vector < EXCEPTION_VECTORS)
		exception(frame);
	counts[frame->vector % IDT_ENTRIES]++;
	lapic_eoi();
}
