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

bool pci_find(const struct pci_ecam *ecam, uint16_t vendor, uint16_t device,
	      struct pci_function *out)
{
	for (uint8_t dev = 0; dev < PCI_DEVICES_PER_BUS; dev++) {
		uint8_t functions = 1;

		for (uint8_t fn = 0; fn < functions; fn++) {
			uint32_t id = pci_cfg_read32(ecam, 0, dev, fn, PCI_CFG_ID);

			if ((id & 0xFFFF) == PCI_VENDOR_NONE) {
				if (fn == 0)
					break;
				continue;
			}
			if (fn == 0 && ((pci_cfg_read32(ecam, 0, dev, 0, PCI_CFG_HEADER_DWORD) >> 16) &
					PCI_HEADER_MULTIFUNCTION))
				functions = PCI_FUNCTIONS_PER_DEVICE;
			if ((id & 0xFFFF) != vendor || (id >> 16) != device)
				continue;
			out->dev = dev;
			out->fn = fn;
			out->vendor = vendor;
			out->device = device;
			out->class_code = pci_cfg_read32(ecam, 0, dev, fn, PCI_CFG_CLASS_REV) >> 8;
			return true;
		}
	}
	return false;
}

uint32_t pci_fn_read32(const struct pci_ecam *ecam, const struct pci_function *f,
		       uint16_t offset)
{
	return pci_cfg_read32(ecam, 0, f->dev, f->fn, offset);
}

void pci_fn_write32(const struct pci_ecam *ecam, const struct pci_function *f, uint16_t offset,
		    uint32_t value)
{
	pci_cfg_write32(ecam, 0, f->dev, f->fn, offset, value);
}

uint16_t pci_fn_read16(const struct pci_ecam *ecam, const struct pci_function *f,
		       uint16_t offset)
{
	return (uint16_t)(pci_fn_read32(ecam, f, offset & ~3) >> ((offset & 2) * 8));
}

void pci_fn_write16(const struct pci_ecam *ecam, const struct pci_function *f, uint16_t offset,
		    uint16_t value)
{
	unsigned shift = (offset & 2) * 8;
	uint32_t dword = pci_fn_read32(ecam, f, offset & ~3);

	dword = (dword & ~(0xFFFFU << shift)) | ((uint32_t)value << shift);
	pci_fn_write32(ecam, f, offset & ~3, dword);
}

void pci_command_update(const struct pci_ecam *ecam, const struct pci_function *f,
			uint16_t set, uint16_t clear)
{
	uint16_t command = (uint16_t)pci_fn_read32(ecam, f, PCI_CFG_COMMAND);

	/* Zero in the status half: its bits are write-1-to-clear. */
	pci_fn_write32(ecam, f, PCI_CFG_COMMAND, (uint16_t)((command | set) & ~clear));
}

#define BAR_IO (1U << 0)
#define BAR_TYPE_MASK (3U << 1)
#define BAR_TYPE_64 (2U << 1)
#define BAR_PREFETCHABLE (1U << 3)
#define BAR_MEM_ADDR_MASK 0xFFFFFFF0U
#define BAR_IO_ADDR_MASK 0xFFFFFFFCU

const char *pci_bar_probe(const struct pci_ecam *ecam, const struct pci_function *f,
			  unsigned index, struct pci_bar *out)
{
	uint16_t reg = PCI_CFG_BAR0 + 4 * index;
	uint16_t command;
	uint32_t low, high = 0, low_mask, high_mask = 0;
	uint64_t mask;

	if (index >= PCI_BARS)
		return reasonf("BAR %u does not exist (0-%u)", index, PCI_BARS - 1);
	low = pci_fn_read32(ecam, f, reg);
	*out = (struct pci_bar){ 0 };
	out->io = low & BAR_IO;
	out->is_64 = !out->io && (low & BAR_TYPE_MASK) == BAR_TYPE_64;
	out->prefetchable = !out->io && (low & BAR_PREFETCHABLE);
	if (out->is_64 && index + 1 >= PCI_BARS)
		return reasonf("BAR %u claims 64 bits but is the last BAR", index);
	if (out->is_64)
		high = pci_fn_read32(ecam, f, reg + 4);

	/* Sizing writes all ones; no decoding meanwhile, or the BAR would
	 * briefly claim addresses it does not own. */
	command = (uint16_t)pci_fn_read32(ecam, f, PCI_CFG_COMMAND);
	pci_command_update(ecam, f, 0, PCI_COMMAND_MEMORY | 1);
	pci_fn_write32(ecam, f, reg, 0xFFFFFFFF);
	low_mask = pci_fn_read32(ecam, f, reg);
	pci_fn_write32(ecam, f, reg, low);
	if (out->is_64) {
		pci_fn_write32(ecam, f, reg + 4, 0xFFFFFFFF);
		high_mask = pci_fn_read32(ecam, f, reg + 4);
		pci_fn_write32(ecam, f, reg + 4, high);
	}
	pci_fn_write32(ecam, f, PCI_CFG_COMMAND, command);

	if (out->io) {
		out->addr = low & BAR_IO_ADDR_MASK;
		mask = 0xFFFF0000U | (low_mask & BAR_IO_ADDR_MASK);
		mask |= 0xFFFFFFFF00000000ULL;
	} else {
		out->addr = ((uint64_t)high << 32) | (low & BAR_MEM_ADDR_MASK);
		mask = ((uint64_t)(out->is_64 ? high_mask : 0xFFFFFFFFU) << 32) |
		       (low_mask & BAR_MEM_ADDR_MASK);
	}
	if (!(uint32_t)mask && !(mask >> 32 && out->is_64))
		return reasonf("BAR %u is not implemented", index);
	out->size = ~mask + 1;
	if (!out->size || (out->size & (out->size - 1)))
		return reasonf("BAR %u sizes to 0x%lx, not a power of two (mask 0x%lx)", index,
			       (unsigned long)out->size, (unsigned long)mask);
	return 0;
}

#define CAP_WALK_LIMIT 48 /* capabilities fit 48 times in 192 bytes: a loop beyond is a cycle */

uint16_t pci_find_capability(const struct pci_ecam *ecam, const struct pci_function *f,
			     uint8_t id)
{
	uint8_t at;

	if (!((pci_fn_read32(ecam, f, PCI_CFG_COMMAND) >> 16) & PCI_STATUS_CAP_LIST))
		return 0;
	at = (uint8_t)pci_fn_read32(ecam, f, PCI_CFG_CAP_POINTER) & 0xFC;
	for (unsigned i = 0; at >= 0x40 && i < CAP_WALK_LIMIT; i++) {
		uint32_t header = pci_fn_read32(ecam, f, at);

		if ((header & 0xFF) == id)
			return at;
		at = (uint8_t)(header >> 8) & 0xFC;
	}
	return 0;
}
