/* Taking interrupts: an IDT whose every vector counts its arrivals, with
 * exceptions reported as a FAIL. Devices' MSI and MSI-X messages land here
 * through the local APIC (lapic.h). */
#ifndef GUEST_INTERRUPTS_H
#define GUEST_INTERRUPTS_H

#include <stdint.h>

/* The first vector free for devices (0-31 are exceptions). */
#define INTERRUPT_FIRST_DEVICE_VECTOR 0x20

/* Loads the IDT (once); interrupts stay disabled until the caller enables
 * them. */
void interrupts_init(void);

/* How many times `vector` has arrived since boot. */
uint32_t interrupt_count(uint8_t vector);

/* The frame the entry stubs build (vectors.S). */
struct interrupt_frame {
	uint64_t vector;
	uint64_t error_code;
	uint64_t rip;
	uint64_t cs;
	uint64_t rflags;
	uint64_t rsp;
	uint64_t ss;
};

void interrupt_dispatch(struct interrupt_frame *frame);

#endif
