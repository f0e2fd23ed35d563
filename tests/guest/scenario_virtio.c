#include "scenario_virtio.h"

#include "format.h"
#include "interrupts.h"
#include "io.h"
#include "lapic.h"
#include "paging.h"
#include "phys.h"
#include "scenario_util.h"
#include "serial.h"

#define REQUEST_TIMEOUT_MS 2000
#define DEFAULT_VECTOR 0x42

#define MSIX_CONTROL_ENABLE (1U << 15)
#define MSIX_CONTROL_FUNCTION_MASK (1U << 14)
#define MSIX_CONTROL_TABLE_SIZE 0x7FF
#define MSIX_BIR_MASK 0x7U
#define MSIX_ENTRY_SIZE 16
#define MSIX_ENTRY_ADDR_LO 0
#define MSIX_ENTRY_ADDR_HI 4
#define MSIX_ENTRY_DATA 8
#define MSIX_ENTRY_CONTROL 12
#define MSIX_ENTRY_MASKED 1U

/* Enables MSI-X with table entry 0 aimed at `vector` on this CPU and every
 * other entry left masked. */
static const char *msix_enable_entry0(const struct virtio_session *s, uint8_t vector)
{
	uint16_t cap = pci_find_capability(&s->ecam, &s->fn, PCI_CAP_ID_MSIX);
	uint32_t table, address = lapic_msi_address(lapic_id());
	struct pci_bar bar;
	uint64_t entry;
	uint16_t control;
	const char *why;

	if (!cap)
		return "msix=1: the device has no MSI-X capability";
	control = pci_fn_read16(&s->ecam, &s->fn, cap + 2);
	table = pci_fn_read32(&s->ecam, &s->fn, cap + 4);
	why = pci_bar_probe(&s->ecam, &s->fn, table & MSIX_BIR_MASK, &bar);
	if (why)
		return why;
	if (bar.io || (table & ~MSIX_BIR_MASK) > bar.size ||
	    bar.size - (table & ~MSIX_BIR_MASK) < MSIX_ENTRY_SIZE)
		return reasonf("msix: table at bar %u + 0x%x is not inside that memory BAR",
			       table & MSIX_BIR_MASK, table & ~MSIX_BIR_MASK);
	entry = bar.addr + (table & ~MSIX_BIR_MASK);
	if (!phys_range_ok(entry, MSIX_ENTRY_SIZE)) {
		why = paging_map_identity(entry, MSIX_ENTRY_SIZE);
		if (why)
			return why;
	}
	/* pci_bar_probe restored the command register; decoding is still on. */
	pci_fn_write16(&s->ecam, &s->fn, cap + 2,
		       control | MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
	mmio_write32(entry + MSIX_ENTRY_CONTROL, MSIX_ENTRY_MASKED);
	mmio_write32(entry + MSIX_ENTRY_ADDR_LO, address);
	mmio_write32(entry + MSIX_ENTRY_ADDR_HI, 0);
	mmio_write32(entry + MSIX_ENTRY_DATA, vector);
	mmio_write32(entry + MSIX_ENTRY_CONTROL, 0);
	pci_fn_write16(&s->ecam, &s->fn, cap + 2,
		       (control | MSIX_CONTROL_ENABLE) & ~MSIX_CONTROL_FUNCTION_MASK);
	serial_printf("msix: %u vectors, entry 0 -> address 0x%x data 0x%x\n",
		      (control & MSIX_CONTROL_TABLE_SIZE) + 1, address, vector);
	return 0;
}

static void msix_disable(const struct virtio_session *s)
{
	uint16_t cap = pci_find_capability(&s->ecam, &s->fn, PCI_CAP_ID_MSIX);

	if (cap)
		pci_fn_write16(&s->ecam, &s->fn, cap + 2,
			       pci_fn_read16(&s->ecam, &s->fn, cap + 2) & ~MSIX_CONTROL_ENABLE);
}

const char *virtio_session_start(const struct guest_env *env, uint16_t device, uint64_t optional,
				 struct virtio_session *s)
{
	uint16_t queue_vector = VIRTIO_MSI_NO_VECTOR;
	uint64_t msix;
	const char *why;

	*s = (struct virtio_session){ 0 };
	why = param_u64_or(env, "msix", 0, 1, &msix);
	if (!why)
		why = scenario_find_device(env, VIRTIO_PCI_VENDOR, device, &s->ecam, &s->fn);
	if (!why)
		why = virtio_pci_open(&s->ecam, &s->fn, &s->vp);
	if (!why)
		why = virtio_pci_negotiate(&s->vp, optional, &s->offered, &s->features);
	if (!why && msix) {
		why = scenario_interrupts_on(env, DEFAULT_VECTOR, &s->irq_vector);
		if (!why)
			why = msix_enable_entry0(s, s->irq_vector);
		if (!why)
			why = virtio_pci_config_vector(&s->vp, VIRTIO_MSI_NO_VECTOR);
		queue_vector = 0;
	}
	if (!why)
		why = virtio_pci_queue_setup(&s->vp, 0, queue_vector, &s->queue);
	if (why)
		return why;
	virtio_pci_driver_ok(&s->vp);
	serial_printf("virtio: driver ok, status 0x%02x\n", virtio_pci_status(&s->vp));
	if (virtio_pci_status(&s->vp) & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
		return reasonf("the device reports status 0x%02x after DRIVER_OK",
			       virtio_pci_status(&s->vp));
	return 0;
}

/* Polls until the used ring moves, or (with MSI-X) the interrupt comes. */
static bool wait_used(struct virtio_session *s, uint32_t irqs_before)
{
	uint64_t end = lapic_clock_ns() + (uint64_t)REQUEST_TIMEOUT_MS * 1000000;

	if (s->irq_vector)
		return scenario_wait_interrupt(s->irq_vector, irqs_before, REQUEST_TIMEOUT_MS) &&
		       virtq_has_used(&s->queue);
	while (!virtq_has_used(&s->queue)) {
		if (lapic_clock_ns() >= end)
			return false;
		cpu_relax();
	}
	return true;
}

const char *virtio_session_request(struct virtio_session *s, const struct virtq_buf *bufs,
				   unsigned count, const char *what, uint32_t *written)
{
	uint32_t irqs_before = s->irq_vector ? interrupt_count(s->irq_vector) : 0;
	const char *why = virtq_submit(&s->queue, bufs, count);

	if (why)
		return why;
	virtio_pci_notify(&s->vp, &s->queue);
	if (!wait_used(s, irqs_before))
		return reasonf("%s: not completed within %u ms (%s; used idx %u, avail idx %u, "
			       "device status 0x%02x)",
			       what, REQUEST_TIMEOUT_MS,
			       s->irq_vector ? "no MSI-X interrupt with a used entry"
					     : "the used ring did not move",
			       *(volatile uint16_t *)&s->queue.used->idx, s->queue.next_avail,
			       virtio_pci_status(&s->vp));
	return virtq_take_used(&s->queue, written);
}

const char *virtio_session_stop(struct virtio_session *s)
{
	const char *why = virtio_pci_reset(&s->vp);

	if (s->irq_vector) {
		msix_disable(s);
		serial_printf("msix: %u interrupts on vector 0x%x, one per request\n",
			      interrupt_count(s->irq_vector), s->irq_vector);
	}
	return why;
}
