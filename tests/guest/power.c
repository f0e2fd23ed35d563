#include "power.h"

#include "acpi.h"
#include "io.h"
#include "phys.h"
#include "protocol.h"
#include "serial.h"

/* SLP_TYP = 5 (S5, soft off) in bits 2-4 and SLP_EN (bit 5). */
#define SLEEP_S5_ENABLE ((5 << 2) | (1 << 5))

/* platform.md: the sleep control register lives here; used only when the
 * FADT cannot be read, so that a broken table still ends the run. */
#define PLATFORM_SLEEP_CONTROL_PORT 0x600

#define PORT_MAX 0xFFFF

/* Writes S5 to the sleep control register. Returns a reason when the
 * register is not one this guest can write. */
static const char *write_sleep_control(const struct acpi_gas *reg)
{
	switch (reg->space_id) {
	case ACPI_GAS_SYSTEM_IO:
		if (reg->address > PORT_MAX)
			return "FADT SLEEP_CONTROL_REG port is above 0xFFFF";
		outb((uint16_t)reg->address, SLEEP_S5_ENABLE);
		return 0;
	case ACPI_GAS_SYSTEM_MEMORY:
		if (!phys_range_ok(reg->address, 1))
			return "FADT SLEEP_CONTROL_REG address is beyond 4 GiB";
		*(volatile uint8_t *)(uintptr_t)reg->address = SLEEP_S5_ENABLE;
		return 0;
	default:
		return "FADT SLEEP_CONTROL_REG is in an address space this guest cannot write";
	}
}

static const char *acpi_power_off(uint64_t rsdp_hint)
{
	struct acpi_table fadt;
	struct acpi_gas reg;
	const char *why;

	if (acpi_find_table(rsdp_hint, "FACP", &fadt, &why) != ACPI_FOUND)
		return why;
	why = acpi_fadt_sleep_control(&fadt, &reg);
	if (why)
		return why;
	return write_sleep_control(&reg);
}

void power_off(uint64_t rsdp_hint)
{
	const char *why = acpi_power_off(rsdp_hint);

	if (why) {
		serial_printf("acpi: %s\n", why);
		protocol_fail("no ACPI sleep control register");
	} else {
		/* A VMM stops the vCPU on the write; still running means it ignored it. */
		protocol_fail("ACPI sleep control write did not power off");
	}
	outb(PLATFORM_SLEEP_CONTROL_PORT, SLEEP_S5_ENABLE);
	halt_forever();
}
