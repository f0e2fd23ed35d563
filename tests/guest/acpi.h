/* Reading the ACPI tables the VMM builds: RSDP -> XSDT (or RSDT) -> tables.
 *
 * Everything here is read from guest memory the VMM wrote, so every address
 * and length is checked before it is followed; a bad table gives a reason
 * string, never a fault or a hang.
 */
#ifndef GUEST_ACPI_H
#define GUEST_ACPI_H

#include <stdint.h>

#define ACPI_HEADER_SIZE 36

/* A table whose header, bounds and checksum have been verified. */
struct acpi_table {
	uint64_t addr;
	const uint8_t *bytes; /* bytes[0 .. length) are mapped and checksummed */
	uint32_t length;
	uint8_t revision;
};

enum acpi_result {
	ACPI_FOUND,
	ACPI_ABSENT, /* no RSDP at all, or the root table does not list it */
	ACPI_BROKEN, /* something on the way is invalid */
};

/* Looks up the table with `signature` (e.g. "APIC"). rsdp_hint is
 * boot_params.acpi_rsdp_addr; 0 means scan the BIOS area for the RSDP.
 * Unless the result is ACPI_FOUND, *why says what was missing or wrong. */
enum acpi_result acpi_find_table(uint64_t rsdp_hint, const char *signature,
				 struct acpi_table *out, const char **why);

/* Counts the enabled processors in a MADT: Processor Local APIC and
 * Processor Local x2APIC entries with the Enabled flag. */
const char *acpi_madt_count_cpus(const struct acpi_table *madt, unsigned *count);

/* ACPI Generic Address Structure, the form of the FADT's register fields. */
struct acpi_gas {
	uint8_t space_id;
	uint8_t bit_width;
	uint8_t bit_offset;
	uint8_t access_size;
	uint64_t address;
};

#define ACPI_GAS_SYSTEM_MEMORY 0
#define ACPI_GAS_SYSTEM_IO 1

/* Reads the FADT's SLEEP_CONTROL_REG (hardware-reduced ACPI, FADT 5.0+). */
const char *acpi_fadt_sleep_control(const struct acpi_table *fadt, struct acpi_gas *out);

#endif
