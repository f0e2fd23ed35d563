/* msix: a passed-through NIC (e1000e, 8086:10d3, whose interrupt registers
 * follow the 82574 datasheet) delivers MSI-X vector 0 to this CPU; while the
 * vector is masked nothing arrives and its PBA bit is set; unmasking
 * delivers the pending message. */
#include <stdbool.h>

#include "format.h"
#include "interrupts.h"
#include "io.h"
#include "lapic.h"
#include "pci.h"
#include "scenario_util.h"
#include "scenarios_pci.h"
#include "serial.h"

#define NIC_VENDOR 0x8086
#define NIC_DEVICE 0x10d3

/* 82574 registers in BAR0. */
#define NIC_ICR 0x000C0  /* interrupt cause read, write 1 to clear */
#define NIC_ICS 0x000C8  /* interrupt cause set */
#define NIC_IMS 0x000D0  /* interrupt mask set (enable) */
#define NIC_IMC 0x000D8  /* interrupt mask clear */
#define NIC_EIAC 0x000DC /* causes cleared from ICR when their MSI-X message goes */
#define NIC_IVAR 0x000E4 /* cause -> MSI-X vector */
#define NIC_REGS_SIZE 0x20000
#define CAUSE_RXQ0 (1U << 20)
#define IVAR_RXQ0_VALID (1U << 3) /* RxQ0 in bits 2:0, vector 0 */

/* The MSI-X capability and its table entries. */
#define MSIX_CONTROL_ENABLE (1U << 15)
#define MSIX_CONTROL_FUNCTION_MASK (1U << 14)
#define MSIX_CONTROL_TABLE_SIZE 0x7FF
#define MSIX_BIR_MASK 0x7
#define MSIX_ENTRY_SIZE 16
#define MSIX_ENTRY_ADDR_LO 0
#define MSIX_ENTRY_ADDR_HI 4
#define MSIX_ENTRY_DATA 8
#define MSIX_ENTRY_CONTROL 12
#define MSIX_ENTRY_MASKED 1U

#define DEFAULT_VECTOR 0x41
#define IRQ_TIMEOUT_MS 2000
/* How long a masked vector must stay quiet. */
#define QUIET_MS 300

struct msix {
	uint16_t cap;
	unsigned vectors;
	uint64_t table; /* guest address of entry 0 */
	uint64_t pba;
};

/* Finds the table and the PBA through their BARs; maps them if high. */
static const char *msix_locate(const struct pci_ecam *ecam, const struct pci_function *f,
			       struct msix *out)
{
	uint32_t table, pba;
	struct pci_bar bar;
	uint16_t control;
	const char *why;

	out->cap = pci_find_capability(ecam, f, PCI_CAP_ID_MSIX);
	if (!out->cap)
		return "the device has no MSI-X capability";
	control = pci_fn_read16(ecam, f, out->cap + 2);
	out->vectors = (control & MSIX_CONTROL_TABLE_SIZE) + 1;
	table = pci_fn_read32(ecam, f, out->cap + 4);
	pba = pci_fn_read32(ecam, f, out->cap + 8);
	serial_printf("msix: %u vectors, table in bar %u + 0x%x, pba in bar %u + 0x%x\n",
		      out->vectors, table & MSIX_BIR_MASK, table & ~MSIX_BIR_MASK,
		      pba & MSIX_BIR_MASK, pba & ~MSIX_BIR_MASK);
	why = scenario_memory_bar(ecam, f, table & MSIX_BIR_MASK, table & ~MSIX_BIR_MASK,
				  MSIX_ENTRY_SIZE, &bar);
	if (why)
		return why;
	out->table = bar.addr + (table & ~MSIX_BIR_MASK);
	why = scenario_memory_bar(ecam, f, pba & MSIX_BIR_MASK, pba & ~MSIX_BIR_MASK, 8, &bar);
	if (why)
		return why;
	out->pba = bar.addr + (pba & ~MSIX_BIR_MASK);
	return 0;
}

static void msix_mask_vector0(const struct msix *m, bool masked)
{
	mmio_write32(m->table + MSIX_ENTRY_CONTROL, masked ? MSIX_ENTRY_MASKED : 0);
}

static bool msix_pending0(const struct msix *m)
{
	return mmio_read32(m->pba) & 1;
}

/* Enables MSI-X with every vector masked by the function mask, programs
 * vector 0, then lifts the function mask; vector 0 itself stays masked. */
static void msix_enable(const struct pci_ecam *ecam, const struct pci_function *f,
			const struct msix *m, uint8_t vector)
{
	uint16_t control = pci_fn_read16(ecam, f, m->cap + 2);
	uint32_t address = lapic_msi_address(lapic_id());

	pci_fn_write16(ecam, f, m->cap + 2,
		       control | MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
	mmio_write32(m->table + MSIX_ENTRY_CONTROL, MSIX_ENTRY_MASKED);
	mmio_write32(m->table + MSIX_ENTRY_ADDR_LO, address);
	mmio_write32(m->table + MSIX_ENTRY_ADDR_HI, 0);
	mmio_write32(m->table + MSIX_ENTRY_DATA, vector);
	pci_fn_write16(ecam, f, m->cap + 2,
		       (control | MSIX_CONTROL_ENABLE) & ~MSIX_CONTROL_FUNCTION_MASK);
	serial_printf("msix: vector 0 -> address 0x%x data 0x%x\n", address, vector);
}

/* Makes the NIC raise its RxQ0 cause, which IVAR routes to MSI-X vector 0.
 * The cause is cleared and enabled again first: sending the message clears
 * it from ICR (EIAC) and, without CTRL_EXT.IAME, from IMS as well. */
static void nic_raise(uint64_t regs)
{
	mmio_write32(regs + NIC_ICR, CAUSE_RXQ0);
	mmio_write32(regs + NIC_IMS, CAUSE_RXQ0);
	mmio_write32(regs + NIC_ICS, CAUSE_RXQ0);
}

static const char *run(uint64_t regs, const struct msix *m, uint8_t vector)
{
	uint32_t before;

	msix_mask_vector0(m, false);
	before = interrupt_count(vector);
	nic_raise(regs);
	if (!scenario_wait_interrupt(vector, before, IRQ_TIMEOUT_MS))
		return reasonf("unmasked: no interrupt on vector 0x%x within %u ms", vector,
			       IRQ_TIMEOUT_MS);
	serial_printf("msix: unmasked: received vector 0x%x\n", vector);

	msix_mask_vector0(m, true);
	before = interrupt_count(vector);
	nic_raise(regs);
	if (scenario_wait_interrupt(vector, before, QUIET_MS))
		return reasonf("masked: vector 0x%x arrived anyway", vector);
	if (!msix_pending0(m))
		return "masked: no interrupt, but the PBA bit of vector 0 is not set";
	serial_printf("msix: masked: nothing arrived in %u ms, pba pending bit set\n", QUIET_MS);

	msix_mask_vector0(m, false);
	if (!scenario_wait_interrupt(vector, before, IRQ_TIMEOUT_MS))
		return reasonf("unmasked again: the pending vector 0x%x did not arrive in %u ms",
			       vector, IRQ_TIMEOUT_MS);
	serial_printf("msix: unmasked again: pending vector 0x%x delivered\n", vector);
	if (msix_pending0(m))
		return "the PBA bit of vector 0 is still set after delivery";
	serial_printf("msix: pba pending bit clear\n");
	return 0;
}

const char *scenario_msix(const struct guest_env *env)
{
	struct pci_ecam ecam;
	struct pci_function f;
	struct pci_bar regs;
	struct msix m;
	uint8_t vector;
	const char *why;

	why = scenario_find_device(env, NIC_VENDOR, NIC_DEVICE, &ecam, &f);
	if (!why)
		why = scenario_memory_bar(&ecam, &f, 0, 0, NIC_REGS_SIZE, &regs);
	if (!why)
		why = msix_locate(&ecam, &f, &m);
	if (!why)
		why = scenario_interrupts_on(env, DEFAULT_VECTOR, &vector);
	if (why)
		return why;
	pci_command_update(&ecam, &f,
			   PCI_COMMAND_MEMORY | PCI_COMMAND_BUS_MASTER | PCI_COMMAND_INTX_DISABLE,
			   0);

	mmio_write32(regs.addr + NIC_IMC, 0xFFFFFFFF);
	mmio_write32(regs.addr + NIC_ICR, 0xFFFFFFFF);
	msix_enable(&ecam, &f, &m, vector);
	mmio_write32(regs.addr + NIC_IVAR, IVAR_RXQ0_VALID);
	mmio_write32(regs.addr + NIC_EIAC, CAUSE_RXQ0);

	why = run(regs.addr, &m, vector);

	mmio_write32(regs.addr + NIC_IMC, 0xFFFFFFFF);
	pci_fn_write16(&ecam, &f, m.cap + 2,
		       pci_fn_read16(&ecam, &f, m.cap + 2) & ~MSIX_CONTROL_ENABLE);
	return why ? why : scenario_hold(env);
}
