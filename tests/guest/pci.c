#include "pci.h"

#include "acpi.h"
#include "format.h"
#include "io.h"
#include "phys.h"
#include "str.h"

#define MCFG_ENTRIES_OFFSET 44
#define MCFG_ENTRY_LENGTH 16
#define MCFG_ENTRY_OFF_BASE 0
#define MCFG_ENTRY_OFF_SEGMENT 8
#define MCFG_ENTRY_OFF_START_BUS 10
#define MCFG_ENTRY_OFF_END_BUS 11

#define ECAM_BUS_SHIFT 20
#define ECAM_DEV_SHIFT 15
#define ECAM_FN_SHIFT 12
#define ECAM_BUS_SIZE (1ULL << ECAM_BUS_SHIFT)

/* Picks the MCFG entry for segment 0 that covers bus 0. */
static const char *ecam_from_mcfg(const struct acpi_table *mcfg, struct pci_ecam *out)
{
	uint32_t payload;

	if (mcfg->length < MCFG_ENTRIES_OFFSET)
		return reasonf("MCFG length %u is shorter than its fixed part", mcfg->length);
	payload = mcfg->length - MCFG_ENTRIES_OFFSET;
	if (payload % MCFG_ENTRY_LENGTH)
		return reasonf("MCFG length %u is not a header plus whole 16-byte entries",
			       mcfg->length);

	for (uint32_t i = 0; i < payload / MCFG_ENTRY_LENGTH; i++) {
		const uint8_t *entry = mcfg->bytes + MCFG_ENTRIES_OFFSET + i * MCFG_ENTRY_LENGTH;
		uint64_t base = load_le64(entry + MCFG_ENTRY_OFF_BASE);
		uint16_t segment = load_le16(entry + MCFG_ENTRY_OFF_SEGMENT);
		uint8_t start = entry[MCFG_ENTRY_OFF_START_BUS];
		uint8_t end = entry[MCFG_ENTRY_OFF_END_BUS];

		if (segment != 0 || start != 0)
			continue;
		if (end < start)
			return reasonf("MCFG entry %u has end bus %u below start bus %u", i, end,
				       start);
		if (!phys_range_ok(base, ((uint64_t)end + 1) * ECAM_BUS_SIZE))
			return reasonf("MCFG ECAM window at 0x%lx for buses %u-%u is beyond 4 GiB",
				       (unsigned long)base, start, end);
		out->base = base;
		out->start_bus = start;
		out->end_bus = end;
		out->from_mcfg = true;
		return 0;
	}
	return "MCFG has no entry for segment 0, bus 0";
}

const char *pci_ecam_find(uint64_t rsdp_hint, struct pci_ecam *out)
{
	struct acpi_table mcfg;
	const char *why;

	switch (acpi_find_table(rsdp_hint, "MCFG", &mcfg, &why)) {
	case ACPI_FOUND:
		return ecam_from_mcfg(&mcfg, out);
	case ACPI_ABSENT:
		out->base = PCI_ECAM_DEFAULT_BASE;
		out->start_bus = 0;
		out->end_bus = 0;
		out->from_mcfg = false;
		return 0;
	case ACPI_BROKEN:
	default:
		return why;
	}
}

uint64_t pci_cfg_addr(const struct pci_ecam *ecam, uint8_t bus, uint8_t dev, uint8_t fn,
		      uint16_t offset)
{
	if (bus < ecam->start_bus || bus > ecam->end_bus || dev >= PCI_DEVICES_PER_BUS ||
	    fn >= PCI_FUNCTIONS_PER_DEVICE)
		return 0;
	return ecam->base + ((uint64_t)bus << ECAM_BUS_SHIFT) +
	       ((uint64_t)dev << ECAM_DEV_SHIFT) + ((uint64_t)fn << ECAM_FN_SHIFT) +
	       (offset & 0xFFC);
}

uint32_t pci_cfg_read32(const struct pci_ecam *ecam, uint8_t bus, uint8_t dev, uint8_t fn,
			uint16_t offset)
{
	uint64_t addr = pci_cfg_addr(ecam, bus, dev, fn, offset);

	/* All ones is what a read of an absent function returns, too. */
	return addr ? mmio_read32(addr) : 0xFFFFFFFF;
}

void pci_cfg_write32(const struct pci_ecam *ecam, uint8_t bus, uint8_t dev, uint8_t fn,
		     uint16_t offset, uint32_t value)
{
	uint64_t addr = pci_cfg_addr(ecam, bus, dev, fn, offset);

	if (addr)
		mmio_write32(addr, value);
}
