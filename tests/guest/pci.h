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
#define PCI_CFG_COMMAND 0x04     /* command (low 16) | status (high 16, write-1-to-clear) */
#define PCI_CFG_CLASS_REV 0x08   /* revision | prog-if | subclass | class */
#define PCI_CFG_HEADER_DWORD 0x0C /* header type in bits 16-23 */
#define PCI_CFG_BAR0 0x10
#define PCI_CFG_CAP_POINTER 0x34

#define PCI_COMMAND_MEMORY (1U << 1)
#define PCI_COMMAND_BUS_MASTER (1U << 2)
#define PCI_COMMAND_INTX_DISABLE (1U << 10)
#define PCI_STATUS_CAP_LIST (1U << 4)

#define PCI_CAP_ID_MSI 0x05
#define PCI_CAP_ID_MSIX 0x11

#define PCI_BARS 6

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

/* One function on bus 0. */
struct pci_function {
	uint8_t dev, fn;
	uint16_t vendor, device;
	uint32_t class_code; /* class << 16 | subclass << 8 | prog-if */
};

/* Finds the first function on bus 0 with this vendor and device ID. */
bool pci_find(const struct pci_ecam *ecam, uint16_t vendor, uint16_t device,
	      struct pci_function *out);

uint32_t pci_fn_read32(const struct pci_ecam *ecam, const struct pci_function *f,
		       uint16_t offset);
void pci_fn_write32(const struct pci_ecam *ecam, const struct pci_function *f, uint16_t offset,
		    uint32_t value);
/* 16-bit fields through dword accesses (read-modify-write of the dword).
 * Not for the command register, whose neighbour is write-1-to-clear. */
uint16_t pci_fn_read16(const struct pci_ecam *ecam, const struct pci_function *f,
		       uint16_t offset);
void pci_fn_write16(const struct pci_ecam *ecam, const struct pci_function *f, uint16_t offset,
		    uint16_t value);

/* Sets then clears bits of the command register, leaving status alone. */
void pci_command_update(const struct pci_ecam *ecam, const struct pci_function *f,
			uint16_t set, uint16_t clear);

struct pci_bar {
	uint64_t addr;
	uint64_t size;
	bool io;
	bool is_64;
	bool prefetchable;
};

/* Reads BAR `index`'s address and sizes it (decoding is off while it does).
 * Returns NULL or why the BAR is unusable (out of range, the upper half of a
 * 64-bit BAR, not implemented). */
const char *pci_bar_probe(const struct pci_ecam *ecam, const struct pci_function *f,
			  unsigned index, struct pci_bar *out);

/* Offset of the first capability with this ID, or 0 when there is none. */
uint16_t pci_find_capability(const struct pci_ecam *ecam, const struct pci_function *f,
			     uint8_t id);

#endif
