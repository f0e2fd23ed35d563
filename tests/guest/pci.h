/* PCI configuration space through ECAM (memory-mapped, PCIe style). */
#ifndef GUEST_PCI_H
#define GUEST_PCI_H

#include <stdbool.h>
#include <stdint.h>

/* platform.md: ECAM for segment 0 when the MCFG does not say otherwise. */
#define PCI_ECAM_DEFAULT_BASE 0xE8000000ULL

#define PCI_DEVICES_PER_BUS 32
#define PCI_FUNCTIONS_PER_DEVICE 8

/* Configuration-space offsets read as whole dwords: ECAM handlers in a VMM
 * see aligned 32-bit accesses only. */
#define PCI_CFG_ID 0x00          /* vendor (low 16) | device (high 16) */
#define PCI_CFG_CLASS_REV 0x08   /* revision | prog-if | subclass | class */
#define PCI_CFG_HEADER_DWORD 0x0C /* header type in bits 16-23 */

#define PCI_VENDOR_NONE 0xFFFF
#define PCI_HEADER_MULTIFUNCTION 0x80

/* ECAM window of segment 0 for buses start_bus..end_bus. */
struct pci_ecam {
	uint64_t base; /* where bus 0's space is (or would be), as in the MCFG */
	uint8_t start_bus;
	uint8_t end_bus;
	bool from_mcfg;
};

/* Finds the ECAM window from the MCFG, or the platform default when the
 * firmware has no MCFG. A broken MCFG is an error, not a fallback. */
const char *pci_ecam_find(uint64_t rsdp_hint, struct pci_ecam *out);

/* Address of a function's configuration dword, or 0 when bus is outside the
 * window (the caller passes offset < 4096, dword aligned). */
uint64_t pci_cfg_addr(const struct pci_ecam *ecam, uint8_t bus, uint8_t dev, uint8_t fn,
		      uint16_t offset);

uint32_t pci_cfg_read32(const struct pci_ecam *ecam, uint8_t bus, uint8_t dev, uint8_t fn,
			uint16_t offset);
void pci_cfg_write32(const struct pci_ecam *ecam, uint8_t bus, uint8_t dev, uint8_t fn,
		     uint16_t offset, uint32_t value);

#endif
