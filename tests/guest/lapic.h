/* The boot CPU's local APIC (xAPIC mode, at the platform's 0xFEE00000): the
 * target of MSI and MSI-X messages, and the guest's clock.
 *
 * Time comes from the APIC timer: KVM's in-kernel APIC counts at its APIC bus
 * clock of 1 GHz, so with the divider at 1 one tick is a nanosecond. That
 * makes "seconds" in scenario parameters real seconds under KVM, without
 * calibrating against a PIT or RTC the platform does not have. */
#ifndef GUEST_LAPIC_H
#define GUEST_LAPIC_H

#include <stdbool.h>
#include <stdint.h>

#define LAPIC_MSI_ADDRESS 0xFEE00000U

/* Enables the APIC (software enable, all priorities accepted) and starts its
 * timer, masked, counting down from the top. Returns NULL or why the APIC is
 * not usable. Idempotent. */
const char *lapic_init(void);

uint8_t lapic_id(void);
void lapic_eoi(void);

/* Nanoseconds since lapic_init, as far as the APIC timer tells; call at
 * least every 4 s (the counter is 32 bits). */
uint64_t lapic_clock_ns(void);

/* Spins (interrupts as they are) for about `ms` milliseconds. */
void lapic_delay_ms(uint64_t ms);

/* The MSI address (xAPIC, physical destination) that targets this CPU. */
static inline uint32_t lapic_msi_address(uint8_t apic_id)
{
	return LAPIC_MSI_ADDRESS | ((uint32_t)apic_id << 12);
}

#endif
