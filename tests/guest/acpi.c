#include "acpi.h"

#include <stdbool.h>

#include "format.h"
#include "phys.h"
#include "str.h"

#define RSDP_SIGNATURE "RSD PTR "
#define RSDP_V1_LENGTH 20
#define RSDP_V2_MIN_LENGTH 36
#define RSDP_MAX_LENGTH 4096
#define RSDP_OFF_REVISION 15
#define RSDP_OFF_RSDT 16
#define RSDP_OFF_LENGTH 20
#define RSDP_OFF_XSDT 24

/* Where ACPI says to look for the RSDP when nobody passes its address. */
#define BIOS_AREA_START 0xE0000
#define BIOS_AREA_END 0x100000
#define RSDP_ALIGN 16

#define HDR_OFF_LENGTH 4
#define HDR_OFF_REVISION 8

/* Far beyond any table a VMM builds; it bounds the cost of a bogus length. */
#define ACPI_TABLE_MAX_LENGTH 0x100000

#define MADT_ENTRIES_OFFSET 44
#define MADT_TYPE_LOCAL_APIC 0
#define MADT_TYPE_LOCAL_X2APIC 9
#define MADT_LOCAL_APIC_LENGTH 8
#define MADT_LOCAL_X2APIC_LENGTH 16
#define MADT_LOCAL_APIC_OFF_FLAGS 4
#define MADT_LOCAL_X2APIC_OFF_FLAGS 8
#define MADT_FLAG_ENABLED 0x1

#define FADT_MIN_REVISION_SLEEP_REGS 5
#define FADT_OFF_SLEEP_CONTROL 244
#define FADT_MIN_LENGTH_SLEEP_REGS 256
#define GAS_LENGTH 12

_Static_assert(FADT_OFF_SLEEP_CONTROL + GAS_LENGTH <= FADT_MIN_LENGTH_SLEEP_REGS,
	       "the length check must cover SLEEP_CONTROL_REG");

/* The root table the RSDP points to: an XSDT (64-bit entries) or, from an
 * ACPI 1.0 RSDP, an RSDT (32-bit entries). */
struct acpi_root {
	struct acpi_table table;
	const char *name;
	unsigned entry_size;
};

static uint8_t checksum(const uint8_t *bytes, uint64_t len)
{
	uint8_t sum = 0;

	for (uint64_t i = 0; i < len; i++)
		sum += bytes[i];
	return sum;
}

static bool signature_is(const uint8_t *bytes, const char *signature, unsigned len)
{
	return memcmp(bytes, signature, len) == 0;
}

/* Verifies the table at addr claims `signature`, fits in mapped memory and
 * sums to zero. `what` names it in the reason. */
static const char *table_check(uint64_t addr, const char *signature, const char *what,
			       struct acpi_table *out)
{
	const uint8_t *bytes;
	uint32_t length;

	if (!addr)
		return reasonf("%s address is 0", what);
	if (!phys_range_ok(addr, ACPI_HEADER_SIZE))
		return reasonf("%s at 0x%lx is beyond 4 GiB", what, (unsigned long)addr);
	bytes = phys_bytes(addr);
	if (!signature_is(bytes, signature, 4))
		return reasonf("%s at 0x%lx has signature '%.4s', expected '%s'", what,
			       (unsigned long)addr, (const char *)bytes, signature);
	length = load_le32(bytes + HDR_OFF_LENGTH);
	if (length < ACPI_HEADER_SIZE || length > ACPI_TABLE_MAX_LENGTH ||
	    !phys_range_ok(addr, length))
		return reasonf("%s at 0x%lx has implausible length %u", what, (unsigned long)addr,
			       length);
	if (checksum(bytes, length))
		return reasonf("%s at 0x%lx: checksum mismatch", what, (unsigned long)addr);

	out->addr = addr;
	out->bytes = bytes;
	out->length = length;
	out->revision = bytes[HDR_OFF_REVISION];
	return 0;
}

/* Checks the RSDP at addr and follows it to the root table. */
static const char *rsdp_follow(uint64_t addr, struct acpi_root *root)
{
	const uint8_t *rsdp;
	uint64_t xsdt = 0;
	uint32_t rsdt;

	if (!phys_range_ok(addr, RSDP_V1_LENGTH))
		return reasonf("RSDP address 0x%lx is beyond 4 GiB", (unsigned long)addr);
	rsdp = phys_bytes(addr);
	if (!signature_is(rsdp, RSDP_SIGNATURE, 8))
		return reasonf("no RSDP signature at 0x%lx", (unsigned long)addr);
	if (checksum(rsdp, RSDP_V1_LENGTH))
		return reasonf("RSDP at 0x%lx: checksum mismatch", (unsigned long)addr);

	if (rsdp[RSDP_OFF_REVISION] >= 2) {
		uint32_t length;

		if (!phys_range_ok(addr, RSDP_V2_MIN_LENGTH))
			return reasonf("RSDP at 0x%lx runs past 4 GiB", (unsigned long)addr);
		length = load_le32(rsdp + RSDP_OFF_LENGTH);
		if (length < RSDP_V2_MIN_LENGTH || length > RSDP_MAX_LENGTH ||
		    !phys_range_ok(addr, length))
			return reasonf("RSDP at 0x%lx has implausible length %u",
				       (unsigned long)addr, length);
		if (checksum(rsdp, length))
			return reasonf("RSDP at 0x%lx: extended checksum mismatch",
				       (unsigned long)addr);
		xsdt = load_le64(rsdp + RSDP_OFF_XSDT);
	}
	if (xsdt) {
		root->name = "XSDT";
		root->entry_size = 8;
		return table_check(xsdt, "XSDT", "XSDT", &root->table);
	}
	rsdt = load_le32(rsdp + RSDP_OFF_RSDT);
	if (!rsdt)
		return reasonf("RSDP at 0x%lx lists neither an XSDT nor an RSDT",
			       (unsigned long)addr);
	root->name = "RSDT";
	root->entry_size = 4;
	return table_check(rsdt, "RSDT", "RSDT", &root->table);
}

static enum acpi_result root_find(uint64_t rsdp_hint, struct acpi_root *root, const char **why)
{
	const char *first_error = 0;

	if (rsdp_hint) {
		*why = rsdp_follow(rsdp_hint, root);
		return *why ? ACPI_BROKEN : ACPI_FOUND;
	}
	for (uint64_t addr = BIOS_AREA_START; addr < BIOS_AREA_END; addr += RSDP_ALIGN) {
		const char *err;

		if (!signature_is(phys_bytes(addr), RSDP_SIGNATURE, 8))
			continue;
		err = rsdp_follow(addr, root);
		if (!err)
			return ACPI_FOUND;
		/* Keep scanning: a stray match may precede the real RSDP. The
		 * reason must be copied because reasonf's buffer is reused. */
		if (!first_error) {
			static char saved[160];

			str_copy(saved, err, sizeof(saved));
			first_error = saved;
		}
	}
	if (first_error) {
		*why = first_error;
		return ACPI_BROKEN;
	}
	*why = "no RSDP: boot_params.acpi_rsdp_addr is 0 and none in 0xE0000-0xFFFFF";
	return ACPI_ABSENT;
}

enum acpi_result acpi_find_table(uint64_t rsdp_hint, const char *signature,
				 struct acpi_table *out, const char **why)
{
	struct acpi_root root;
	enum acpi_result result;
	uint32_t payload;
	const uint8_t *entries;

	result = root_find(rsdp_hint, &root, why);
	if (result != ACPI_FOUND)
		return result;

	payload = root.table.length - ACPI_HEADER_SIZE;
	if (payload % root.entry_size) {
		*why = reasonf("%s length %u is not a header plus whole %u-byte entries", root.name,
			       root.table.length, root.entry_size);
		return ACPI_BROKEN;
	}
	entries = root.table.bytes + ACPI_HEADER_SIZE;
	for (uint32_t i = 0; i < payload / root.entry_size; i++) {
		const uint8_t *entry = entries + i * root.entry_size;
		uint64_t addr = root.entry_size == 8 ? load_le64(entry) : load_le32(entry);

		if (!addr || !phys_range_ok(addr, ACPI_HEADER_SIZE)) {
			*why = reasonf("%s entry %u points to 0x%lx, outside mapped memory",
				       root.name, i, (unsigned long)addr);
			return ACPI_BROKEN;
		}
		if (!signature_is(phys_bytes(addr), signature, 4))
			continue;
		*why = table_check(addr, signature, signature, out);
		return *why ? ACPI_BROKEN : ACPI_FOUND;
	}
	*why = reasonf("no %s table in the %s", signature, root.name);
	return ACPI_ABSENT;
}

const char *acpi_madt_count_cpus(const struct acpi_table *madt, unsigned *count)
{
	uint32_t off = MADT_ENTRIES_OFFSET;

	*count = 0;
	if (madt->length < MADT_ENTRIES_OFFSET)
		return reasonf("MADT length %u is shorter than its fixed part", madt->length);
	while (off < madt->length) {
		const uint8_t *entry = madt->bytes + off;
		uint8_t type, len;

		if (madt->length - off < 2)
			return reasonf("MADT entry at offset %u is cut off by the table end", off);
		type = entry[0];
		len = entry[1];
		if (len < 2 || len > madt->length - off)
			return reasonf("MADT entry at offset %u (type %u) has bad length %u", off,
				       type, len);
		if (type == MADT_TYPE_LOCAL_APIC) {
			if (len < MADT_LOCAL_APIC_LENGTH)
				return reasonf("MADT Local APIC entry at offset %u is %u bytes, "
					       "expected %u", off, len, MADT_LOCAL_APIC_LENGTH);
			if (load_le32(entry + MADT_LOCAL_APIC_OFF_FLAGS) & MADT_FLAG_ENABLED)
				(*count)++;
		} else if (type == MADT_TYPE_LOCAL_X2APIC) {
			if (len < MADT_LOCAL_X2APIC_LENGTH)
				return reasonf("MADT Local x2APIC entry at offset %u is %u bytes, "
					       "expected %u", off, len, MADT_LOCAL_X2APIC_LENGTH);
			if (load_le32(entry + MADT_LOCAL_X2APIC_OFF_FLAGS) & MADT_FLAG_ENABLED)
				(*count)++;
		}
		off += len;
	}
	return 0;
}

const char *acpi_fadt_sleep_control(const struct acpi_table *fadt, struct acpi_gas *out)
{
	const uint8_t *gas;

	if (fadt->revision < FADT_MIN_REVISION_SLEEP_REGS)
		return reasonf("FADT revision %u has no sleep registers (needs %u)", fadt->revision,
			       FADT_MIN_REVISION_SLEEP_REGS);
	if (fadt->length < FADT_MIN_LENGTH_SLEEP_REGS)
		return reasonf("FADT length %u is too short for the sleep registers (needs %u)",
			       fadt->length, FADT_MIN_LENGTH_SLEEP_REGS);
	gas = fadt->bytes + FADT_OFF_SLEEP_CONTROL;
	out->space_id = gas[0];
	out->bit_width = gas[1];
	out->bit_offset = gas[2];
	out->access_size = gas[3];
	out->address = load_le64(gas + 4);
	if (!out->address)
		return "FADT SLEEP_CONTROL_REG is not set (address 0)";
	return 0;
}
