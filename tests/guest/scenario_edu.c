/* edu: QEMU's educational PCI device (1234:11e8, docs/specs/edu.rst),
 * passed through: its registers answer, its DMA engine reads and writes
 * guest RAM through the host IOMMU, and its MSI reaches this CPU. */
#include <stdbool.h>

#include "format.h"
#include "interrupts.h"
#include "io.h"
#include "lapic.h"
#include "pci.h"
#include "scenario_util.h"
#include "scenarios_pci.h"
#include "serial.h"

#define EDU_VENDOR 0x1234
#define EDU_DEVICE 0x11e8
#define EDU_BAR_SIZE_MIN 0x100000

#define EDU_ID 0x00
#define EDU_ID_MAGIC_MASK 0xFFFF
#define EDU_ID_MAGIC 0x00ED
#define EDU_LIVENESS 0x04
#define EDU_IRQ_STATUS 0x24
#define EDU_IRQ_RAISE 0x60
#define EDU_IRQ_ACK 0x64
#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_COUNT 0x90
#define EDU_DMA_CMD 0x98

#define EDU_DMA_START 0x1
#define EDU_DMA_TO_RAM 0x2
#define EDU_DMA_IRQ 0x4
#define EDU_IRQ_DMA_DONE 0x100
/* The device's own 4 KiB buffer, as its DMA engine addresses it. */
#define EDU_BUFFER 0x40000
#define DMA_LEN 1024

#define MSI_CONTROL_ENABLE (1U << 0)
#define MSI_CONTROL_MULTI_ENABLE (7U << 4)
#define MSI_CONTROL_64BIT (1U << 7)

#define DEFAULT_VECTOR 0x40
#define DMA_TIMEOUT_MS 2000
#define IRQ_TIMEOUT_MS 2000
#define LIVENESS_PROBE 0x12345678U
#define RAISE_VALUE 0x1

/* Below 256 MiB: edu's default DMA mask is 28 bits. Guest RAM is identity-
 * mapped into the IOMMU, so these addresses are what the device uses. */
static uint8_t dma_out[DMA_LEN] __attribute__((aligned(4096)));
static uint8_t dma_in[DMA_LEN] __attribute__((aligned(4096)));

static const char *edu_dma_len(uint64_t regs, uint64_t src, uint64_t dst, uint32_t len,
			       uint32_t cmd)
{
	uint64_t end;

	mmio_write64(regs + EDU_DMA_SRC, src);
	mmio_write64(regs + EDU_DMA_DST, dst);
	mmio_write64(regs + EDU_DMA_COUNT, len);
	mmio_write64(regs + EDU_DMA_CMD, cmd | EDU_DMA_START);
	end = lapic_clock_ns() + (uint64_t)DMA_TIMEOUT_MS * 1000000;
	while (mmio_read32(regs + EDU_DMA_CMD) & EDU_DMA_START) {
		if (lapic_clock_ns() >= end)
			return reasonf("DMA 0x%lx -> 0x%lx did not finish in %u ms",
				       (unsigned long)src, (unsigned long)dst, DMA_TIMEOUT_MS);
		cpu_relax();
	}
	return 0;
}

static const char *edu_dma(uint64_t regs, uint64_t src, uint64_t dst, uint32_t cmd)
{
	return edu_dma_len(regs, src, dst, DMA_LEN, cmd);
}

static const char *check_dma(uint64_t regs)
{
	const char *why;

	for (unsigned i = 0; i < DMA_LEN; i++) {
		dma_out[i] = (uint8_t)(i * 7 + 3);
		dma_in[i] = 0;
	}
	why = edu_dma(regs, (uintptr_t)dma_out, EDU_BUFFER, 0);
	if (!why)
		why = edu_dma(regs, EDU_BUFFER, (uintptr_t)dma_in, EDU_DMA_TO_RAM);
	if (why)
		return why;
	for (unsigned i = 0; i < DMA_LEN; i++) {
		if (dma_in[i] != dma_out[i])
			return reasonf("DMA round trip: byte %u came back 0x%02x, sent 0x%02x", i,
				       dma_in[i], dma_out[i]);
	}
	serial_printf("dma: %u bytes RAM -> device -> RAM at 0x%lx: match\n", DMA_LEN,
		      (unsigned long)(uintptr_t)dma_in);
	return 0;
}

/* One vector, fixed delivery to this CPU's APIC, edge triggered. */
static const char *msi_enable(const struct pci_ecam *ecam, const struct pci_function *f,
			      uint8_t vector)
{
	uint16_t cap = pci_find_capability(ecam, f, PCI_CAP_ID_MSI);
	uint16_t control;
	uint32_t address = lapic_msi_address(lapic_id());

	if (!cap)
		return "the device has no MSI capability";
	control = pci_fn_read16(ecam, f, cap + 2);
	pci_fn_write32(ecam, f, cap + 4, address);
	if (control & MSI_CONTROL_64BIT) {
		pci_fn_write32(ecam, f, cap + 8, 0);
		pci_fn_write16(ecam, f, cap + 12, vector);
	} else {
		pci_fn_write16(ecam, f, cap + 8, vector);
	}
	control = (uint16_t)((control & ~MSI_CONTROL_MULTI_ENABLE) | MSI_CONTROL_ENABLE);
	pci_fn_write16(ecam, f, cap + 2, control);
	serial_printf("msi: capability at 0x%x, address 0x%x, data 0x%x, %s\n", cap, address,
		      vector, control & MSI_CONTROL_64BIT ? "64-bit" : "32-bit");
	return 0;
}

static const char *check_msi(uint64_t regs, uint8_t vector)
{
	uint32_t before = interrupt_count(vector), status;
	const char *why;

	mmio_write32(regs + EDU_IRQ_RAISE, RAISE_VALUE);
	if (!scenario_wait_interrupt(vector, before, IRQ_TIMEOUT_MS))
		return reasonf("no interrupt on vector 0x%x within %u ms of raising one", vector,
			       IRQ_TIMEOUT_MS);
	serial_printf("msi: received vector 0x%x\n", vector);
	status = mmio_read32(regs + EDU_IRQ_STATUS);
	mmio_write32(regs + EDU_IRQ_ACK, status);
	if (status != RAISE_VALUE)
		return reasonf("interrupt status 0x%x, raised 0x%x", status, RAISE_VALUE);

	/* The DMA engine's completion interrupt takes the same path. */
	before = interrupt_count(vector);
	why = edu_dma(regs, (uintptr_t)dma_out, EDU_BUFFER, EDU_DMA_IRQ);
	if (why)
		return why;
	if (!scenario_wait_interrupt(vector, before, IRQ_TIMEOUT_MS))
		return reasonf("no DMA completion interrupt within %u ms", IRQ_TIMEOUT_MS);
	status = mmio_read32(regs + EDU_IRQ_STATUS);
	mmio_write32(regs + EDU_IRQ_ACK, status);
	if (!(status & EDU_IRQ_DMA_DONE))
		return reasonf("interrupt status 0x%x after DMA lacks 0x%x", status,
			       EDU_IRQ_DMA_DONE);
	serial_printf("msi: DMA completion on vector 0x%x, status 0x%x\n", vector, status);
	return 0;
}

const char *scenario_edu(const struct guest_env *env)
{
	struct pci_ecam ecam;
	struct pci_function f;
	struct pci_bar bar;
	uint32_t id, liveness;
	uint8_t vector;
	const char *why;

	why = scenario_find_device(env, EDU_VENDOR, EDU_DEVICE, &ecam, &f);
	if (!why)
		why = scenario_memory_bar(&ecam, &f, 0, 0, EDU_BAR_SIZE_MIN, &bar);
	if (why)
		return why;
	pci_command_update(&ecam, &f,
			   PCI_COMMAND_MEMORY | PCI_COMMAND_BUS_MASTER | PCI_COMMAND_INTX_DISABLE,
			   0);

	id = mmio_read32(bar.addr + EDU_ID);
	serial_printf("edu: id 0x%08x\n", id);
	if ((id & EDU_ID_MAGIC_MASK) != EDU_ID_MAGIC)
		return reasonf("identification register reads 0x%08x, not 0xRRrr00ed", id);
	mmio_write32(bar.addr + EDU_LIVENESS, LIVENESS_PROBE);
	liveness = mmio_read32(bar.addr + EDU_LIVENESS);
	serial_printf("edu: liveness wrote 0x%08x read 0x%08x\n", LIVENESS_PROBE, liveness);
	if (liveness != (uint32_t)~LIVENESS_PROBE)
		return reasonf("liveness register reads 0x%08x, expected 0x%08x", liveness,
			       (uint32_t)~LIVENESS_PROBE);

	why = check_dma(bar.addr);
	if (!why)
		why = scenario_interrupts_on(env, DEFAULT_VECTOR, &vector);
	if (!why)
		why = msi_enable(&ecam, &f, vector);
	if (!why)
		why = check_msi(bar.addr, vector);
	if (why)
		return why;
	return scenario_hold(env);
}

/* edu-p2p: peer-to-peer DMA between two passed-through devices. edu's DMA
 * engine writes into another device's BAR at the BAR's guest physical
 * address, and reads it back from there, which works only when the VMM has
 * mapped that BAR into the IOMMU at IOVA = guest physical address. The lab's
 * QEMU gives edu a 64-bit dma_mask so that it reaches BARs at 3 GiB and
 * above 4 GiB. */

/* At most 4 KiB less a dword: some QEMU releases' edu take a transfer that
 * ends exactly at the end of its buffer for out of bounds and stop the whole
 * machine (hw_error), L1 included. */
#define P2P_MAX_LEN 0xFFC
#define P2P_DEFAULT_LEN 0x800
#define P2P_SEED_OUT 0x5EED0DD5U
#define P2P_SEED_BACK 0xB00C7E11U

static uint32_t p2p_ram[P2P_MAX_LEN / 4] __attribute__((aligned(4096)));

/* Differs between the two seeds in every word, so a word the DMA did not
 * write never passes for one it did. */
static uint32_t p2p_word(uint32_t index, uint32_t seed)
{
	return (index * 0x9E3779B1U + 0x01000193U) ^ seed;
}

/* Compares `words` words at `addr` (MMIO or RAM) with the seed's pattern. */
static const char *p2p_compare(const char *what, uint64_t addr, uint32_t words, uint32_t seed)
{
	uint32_t bad = 0, first = 0, got_first = 0;

	for (uint32_t i = 0; i < words; i++) {
		uint32_t got = mmio_read32(addr + 4ULL * i);

		if (got != p2p_word(i, seed)) {
			if (!bad++) {
				first = i;
				got_first = got;
			}
		}
	}
	if (!bad)
		return 0;
	serial_printf("p2p: %s: %u of %u words differ, the first at +0x%x reads 0x%08x, not "
		      "0x%08x\n", what, bad, words, first * 4, got_first, p2p_word(first, seed));
	return reasonf("no peer-to-peer DMA (%s); is the BAR mapped in the IOMMU?", what);
}

static void p2p_fill(uint64_t addr, uint32_t words, uint32_t seed, bool invert)
{
	for (uint32_t i = 0; i < words; i++)
		mmio_write32(addr + 4ULL * i, invert ? ~p2p_word(i, seed) : p2p_word(i, seed));
}

const char *scenario_edu_p2p(const struct guest_env *env)
{
	struct pci_ecam ecam;
	struct pci_function edu, peer;
	struct pci_bar edu_bar, peer_bar;
	uint64_t peer_vendor, peer_device, index, offset, len, iova, ram;
	uint32_t words, id;
	const char *why;

	why = param_u64_or(env, "target_vendor", 0x1234, 0xFFFF, &peer_vendor);
	if (!why)
		why = param_u64_or(env, "target_device", 0x1111, 0xFFFF, &peer_device);
	if (!why)
		why = param_u64_or(env, "bar", 0, PCI_BARS - 1, &index);
	if (!why)
		why = param_u64_or(env, "offset", 0, ~0ULL, &offset);
	if (!why)
		why = param_u64_or(env, "len", P2P_DEFAULT_LEN, P2P_MAX_LEN, &len);
	if (why)
		return why;
	if (!len || (len & 3) || (offset & 3))
		return "offset= and len= must be multiples of 4, len= above 0";
	words = (uint32_t)(len / 4);

	why = scenario_find_device(env, EDU_VENDOR, EDU_DEVICE, &ecam, &edu);
	if (!why)
		why = scenario_memory_bar(&ecam, &edu, 0, 0, EDU_BAR_SIZE_MIN, &edu_bar);
	if (why)
		return why;
	if (!pci_find(&ecam, (uint16_t)peer_vendor, (uint16_t)peer_device, &peer))
		return reasonf("no %04lx:%04lx on bus 0 to DMA into", (unsigned long)peer_vendor,
			       (unsigned long)peer_device);
	serial_printf("p2p: peer 00:%02x.%x %04x:%04x class %06x\n", peer.dev, peer.fn,
		      peer.vendor, peer.device, peer.class_code);
	why = scenario_memory_bar(&ecam, &peer, (unsigned)index, offset, len, &peer_bar);
	if (why)
		return why;
	/* The peer only decodes its BAR; the VMM maps the BAR (guest and IOMMU)
	 * while memory decoding is on. edu masters the bus. */
	pci_command_update(&ecam, &peer, PCI_COMMAND_MEMORY, 0);
	pci_command_update(&ecam, &edu,
			   PCI_COMMAND_MEMORY | PCI_COMMAND_BUS_MASTER | PCI_COMMAND_INTX_DISABLE,
			   0);
	id = mmio_read32(edu_bar.addr + EDU_ID);
	if ((id & EDU_ID_MAGIC_MASK) != EDU_ID_MAGIC)
		return reasonf("edu's identification register reads 0x%08x, not 0xRRrr00ed", id);

	iova = peer_bar.addr + offset;
	ram = (uintptr_t)p2p_ram;

	/* Out: RAM -> edu's buffer -> the peer's BAR. The window holds the
	 * pattern inverted first, so only this DMA can make it match. */
	p2p_fill(ram, words, P2P_SEED_OUT, false);
	p2p_fill(iova, words, P2P_SEED_OUT, true);
	why = edu_dma_len(edu_bar.addr, ram, EDU_BUFFER, (uint32_t)len, 0);
	if (!why)
		why = edu_dma_len(edu_bar.addr, EDU_BUFFER, iova, (uint32_t)len, EDU_DMA_TO_RAM);
	if (!why)
		why = p2p_compare("edu -> peer BAR", iova, words, P2P_SEED_OUT);
	if (why)
		return why;
	serial_printf("p2p: edu DMA %u bytes -> 00:%02x.%x bar %u at 0x%lx: match\n",
		      (unsigned)len, peer.dev, peer.fn, (unsigned)index, (unsigned long)iova);

	/* Back: the peer's BAR -> edu's buffer -> RAM. edu's buffer still holds
	 * the first pattern and RAM gets the second one inverted, so only a DMA
	 * read of the BAR can bring the second pattern into RAM. */
	p2p_fill(iova, words, P2P_SEED_BACK, false);
	p2p_fill(ram, words, P2P_SEED_BACK, true);
	why = edu_dma_len(edu_bar.addr, iova, EDU_BUFFER, (uint32_t)len, 0);
	if (!why)
		why = edu_dma_len(edu_bar.addr, EDU_BUFFER, ram, (uint32_t)len, EDU_DMA_TO_RAM);
	if (!why)
		why = p2p_compare("peer BAR -> edu -> RAM", ram, words, P2P_SEED_BACK);
	if (why)
		return why;
	serial_printf("p2p: edu DMA %u bytes <- 00:%02x.%x bar %u at 0x%lx: match\n",
		      (unsigned)len, peer.dev, peer.fn, (unsigned)index, (unsigned long)iova);
	return scenario_hold(env);
}
