#include "virtio_pci.h"

#include <stdbool.h>

#include "format.h"
#include "io.h"
#include "lapic.h"
#include "paging.h"
#include "phys.h"
#include "serial.h"

#define PCI_CAP_ID_VENDOR 0x09

/* struct virtio_pci_cap (4.1.4): cap_vndr, cap_next, cap_len, cfg_type in
 * dword 0; bar, id in dword 1; offset; length; the notify capability adds
 * notify_off_multiplier. */
#define CAP_DWORD_TYPE 0
#define CAP_DWORD_BAR 4
#define CAP_OFFSET 8
#define CAP_LENGTH 12
#define CAP_NOTIFY_MULTIPLIER 16
#define CAP_LEN_MIN 16
#define CAP_NOTIFY_LEN_MIN 20

#define CFG_TYPE_COMMON 1
#define CFG_TYPE_NOTIFY 2
#define CFG_TYPE_ISR 3
#define CFG_TYPE_DEVICE 4
#define CFG_TYPES 5 /* 1-4 are the ones this driver uses */

/* struct virtio_pci_common_cfg (4.1.4.3). */
#define COMMON_DEVICE_FEATURE_SELECT 0x00
#define COMMON_DEVICE_FEATURE 0x04
#define COMMON_DRIVER_FEATURE_SELECT 0x08
#define COMMON_DRIVER_FEATURE 0x0C
#define COMMON_CONFIG_MSIX_VECTOR 0x10
#define COMMON_NUM_QUEUES 0x12
#define COMMON_DEVICE_STATUS 0x14
#define COMMON_CONFIG_GENERATION 0x15
#define COMMON_QUEUE_SELECT 0x16
#define COMMON_QUEUE_SIZE 0x18
#define COMMON_QUEUE_MSIX_VECTOR 0x1A
#define COMMON_QUEUE_ENABLE 0x1C
#define COMMON_QUEUE_NOTIFY_OFF 0x1E
#define COMMON_QUEUE_DESC 0x20
#define COMMON_QUEUE_DRIVER 0x28
#define COMMON_QUEUE_DEVICE 0x30
#define COMMON_LEN_MIN 0x38

#define CAP_WALK_LIMIT 48 /* as in pci.c: more than fit in 192 bytes is a cycle */
#define RESET_TIMEOUT_MS 1000
#define GENERATION_RETRIES 100

static const char *const cfg_type_names[CFG_TYPES] = {
	[CFG_TYPE_COMMON] = "common",
	[CFG_TYPE_NOTIFY] = "notify",
	[CFG_TYPE_ISR] = "isr",
	[CFG_TYPE_DEVICE] = "device",
};

/* What the walk found for one structure. */
struct cfg_location {
	bool found;
	uint8_t bar;
	uint32_t offset;
	uint32_t length;
	uint32_t multiplier; /* notify only */
};

struct bar_cache {
	bool probed[PCI_BARS];
	struct pci_bar bar[PCI_BARS];
};

/* Collects the first capability of each type; later ones of a type are
 * alternatives a driver may ignore (4.1.4). Capabilities naming a BAR
 * beyond 5 are reserved and skipped, as the spec asks. */
static const char *walk_capabilities(const struct virtio_pci *vp,
				     struct cfg_location found[CFG_TYPES])
{
	uint32_t status = pci_fn_read32(vp->ecam, &vp->fn, PCI_CFG_COMMAND) >> 16;
	uint8_t at;
	unsigned i;

	if (!(status & PCI_STATUS_CAP_LIST))
		return "the device has no capability list, so no virtio structures";
	at = (uint8_t)pci_fn_read32(vp->ecam, &vp->fn, PCI_CFG_CAP_POINTER) & 0xFC;
	for (i = 0; at >= 0x40 && i < CAP_WALK_LIMIT; i++) {
		uint32_t header = pci_fn_read32(vp->ecam, &vp->fn, at);
		uint8_t next = (uint8_t)(header >> 8) & 0xFC;
		uint8_t cap_len = (uint8_t)(header >> 16);
		uint8_t type = (uint8_t)(header >> 24);
		uint8_t bar;

		if ((header & 0xFF) != PCI_CAP_ID_VENDOR || type >= CFG_TYPES ||
		    !cfg_type_names[type] || found[type].found) {
			at = next;
			continue;
		}
		if (cap_len < (type == CFG_TYPE_NOTIFY ? CAP_NOTIFY_LEN_MIN : CAP_LEN_MIN))
			return reasonf("virtio %s capability at 0x%x is %u bytes, too short",
				       cfg_type_names[type], at, cap_len);
		bar = (uint8_t)pci_fn_read32(vp->ecam, &vp->fn, at + CAP_DWORD_BAR);
		if (bar < PCI_BARS) {
			found[type] = (struct cfg_location){
				.found = true,
				.bar = bar,
				.offset = pci_fn_read32(vp->ecam, &vp->fn, at + CAP_OFFSET),
				.length = pci_fn_read32(vp->ecam, &vp->fn, at + CAP_LENGTH),
			};
			if (type == CFG_TYPE_NOTIFY)
				found[type].multiplier =
					pci_fn_read32(vp->ecam, &vp->fn, at + CAP_NOTIFY_MULTIPLIER);
		}
		at = next;
	}
	if (i == CAP_WALK_LIMIT)
		return "the capability list does not end (a cycle?)";
	return 0;
}

/* The guest address of a structure: inside its memory BAR, mapped. */
static const char *locate(const struct virtio_pci *vp, struct bar_cache *bars,
			  const struct cfg_location *loc, unsigned type, uint32_t min_len,
			  uint64_t *addr)
{
	const char *name = cfg_type_names[type];
	struct pci_bar *bar = &bars->bar[loc->bar];
	const char *why;

	if (!loc->found)
		return reasonf("no virtio %s configuration capability", name);
	if (!bars->probed[loc->bar]) {
		why = pci_bar_probe(vp->ecam, &vp->fn, loc->bar, bar);
		if (why)
			return reasonf("virtio %s structure: %s", name, why);
		bars->probed[loc->bar] = true;
		serial_printf("bar %u at 0x%lx size 0x%lx (%s%s)\n", loc->bar,
			      (unsigned long)bar->addr, (unsigned long)bar->size,
			      bar->io ? "I/O" : bar->is_64 ? "64-bit" : "32-bit",
			      bar->prefetchable ? ", prefetchable" : "");
	}
	if (bar->io)
		return reasonf("virtio %s structure is in I/O BAR %u; this driver needs memory",
			       name, loc->bar);
	if (!bar->addr)
		return reasonf("BAR %u (virtio %s structure) has no address assigned", loc->bar,
			       name);
	if (loc->length < min_len)
		return reasonf("virtio %s structure is 0x%x bytes, at least 0x%x needed", name,
			       loc->length, min_len);
	if (loc->offset > bar->size || loc->length > bar->size - loc->offset)
		return reasonf("virtio %s structure at 0x%x + 0x%x is beyond BAR %u's 0x%lx bytes",
			       name, loc->offset, loc->length, loc->bar,
			       (unsigned long)bar->size);
	*addr = bar->addr + loc->offset;
	if (!phys_range_ok(*addr, loc->length)) {
		why = paging_map_identity(*addr, loc->length);
		if (why)
			return why;
	}
	serial_printf("virtio: %s at bar %u + 0x%x, 0x%x bytes\n", name, loc->bar, loc->offset,
		      loc->length);
	return 0;
}

const char *virtio_pci_open(const struct pci_ecam *ecam, const struct pci_function *f,
			    struct virtio_pci *out)
{
	struct cfg_location found[CFG_TYPES] = { 0 };
	struct bar_cache bars = { 0 };
	const char *why;

	*out = (struct virtio_pci){ .ecam = ecam, .fn = *f };
	why = walk_capabilities(out, found);
	if (!why)
		why = locate(out, &bars, &found[CFG_TYPE_COMMON], CFG_TYPE_COMMON, COMMON_LEN_MIN,
			     &out->common);
	if (!why)
		why = locate(out, &bars, &found[CFG_TYPE_NOTIFY], CFG_TYPE_NOTIFY, 2, &out->notify);
	if (!why)
		why = locate(out, &bars, &found[CFG_TYPE_ISR], CFG_TYPE_ISR, 1, &out->isr);
	if (why)
		return why;
	out->notify_multiplier = found[CFG_TYPE_NOTIFY].multiplier;
	out->notify_len = found[CFG_TYPE_NOTIFY].length;
	/* Optional: some device types (entropy) have no configuration. */
	if (found[CFG_TYPE_DEVICE].found) {
		why = locate(out, &bars, &found[CFG_TYPE_DEVICE], CFG_TYPE_DEVICE, 0,
			     &out->device);
		if (why)
			return why;
		out->device_len = found[CFG_TYPE_DEVICE].length;
	}
	pci_command_update(ecam, f, PCI_COMMAND_MEMORY | PCI_COMMAND_BUS_MASTER, 0);
	return 0;
}

uint8_t virtio_pci_status(const struct virtio_pci *vp)
{
	return mmio_read8(vp->common + COMMON_DEVICE_STATUS);
}

static void set_status(struct virtio_pci *vp, uint8_t status)
{
	mmio_write8(vp->common + COMMON_DEVICE_STATUS, status);
}

const char *virtio_pci_reset(struct virtio_pci *vp)
{
	uint64_t end = lapic_clock_ns() + (uint64_t)RESET_TIMEOUT_MS * 1000000;
	uint8_t status;

	set_status(vp, 0);
	while ((status = virtio_pci_status(vp)) != 0) {
		if (lapic_clock_ns() >= end)
			return reasonf("device status still 0x%02x %u ms after the reset write",
				       status, RESET_TIMEOUT_MS);
		cpu_relax();
	}
	return 0;
}

static uint64_t read_device_features(const struct virtio_pci *vp)
{
	uint64_t features;

	mmio_write32(vp->common + COMMON_DEVICE_FEATURE_SELECT, 0);
	features = mmio_read32(vp->common + COMMON_DEVICE_FEATURE);
	mmio_write32(vp->common + COMMON_DEVICE_FEATURE_SELECT, 1);
	features |= (uint64_t)mmio_read32(vp->common + COMMON_DEVICE_FEATURE) << 32;
	return features;
}

static void write_driver_features(const struct virtio_pci *vp, uint64_t features)
{
	mmio_write32(vp->common + COMMON_DRIVER_FEATURE_SELECT, 0);
	mmio_write32(vp->common + COMMON_DRIVER_FEATURE, (uint32_t)features);
	mmio_write32(vp->common + COMMON_DRIVER_FEATURE_SELECT, 1);
	mmio_write32(vp->common + COMMON_DRIVER_FEATURE, (uint32_t)(features >> 32));
}

const char *virtio_pci_negotiate(struct virtio_pci *vp, uint64_t optional, uint64_t *offered,
				 uint64_t *accepted)
{
	uint8_t status;
	const char *why = virtio_pci_reset(vp);

	if (why)
		return why;
	status = VIRTIO_STATUS_ACKNOWLEDGE;
	set_status(vp, status);
	status |= VIRTIO_STATUS_DRIVER;
	set_status(vp, status);

	*offered = read_device_features(vp);
	*accepted = VIRTIO_F_VERSION_1 | (*offered & optional);
	serial_printf("virtio: features offered 0x%lx, accepted 0x%lx\n", (unsigned long)*offered,
		      (unsigned long)*accepted);
	if (!(*offered & VIRTIO_F_VERSION_1)) {
		set_status(vp, status | VIRTIO_STATUS_FAILED);
		return "the device does not offer VIRTIO_F_VERSION_1 (a legacy-only device)";
	}
	write_driver_features(vp, *accepted);
	status |= VIRTIO_STATUS_FEATURES_OK;
	set_status(vp, status);
	if (!(virtio_pci_status(vp) & VIRTIO_STATUS_FEATURES_OK)) {
		set_status(vp, status | VIRTIO_STATUS_FAILED);
		return reasonf("the device cleared FEATURES_OK: it refused features 0x%lx",
			       (unsigned long)*accepted);
	}
	return 0;
}

/* The largest power of two not above n (n > 0). */
static uint16_t power_of_two_floor(uint16_t n)
{
	uint16_t p = 1;

	while (p <= n / 2)
		p = (uint16_t)(p * 2);
	return p;
}

static void write64_halves(uint64_t addr, uint64_t value)
{
	/* Two 32-bit writes, low first: 4.1.3.1 allows it for 64-bit fields and
	 * it is what a transport must accept. */
	mmio_write32(addr, (uint32_t)value);
	mmio_write32(addr + 4, (uint32_t)(value >> 32));
}

const char *virtio_pci_queue_setup(struct virtio_pci *vp, uint16_t index, uint16_t msix_vector,
				   struct virtq *q)
{
	uint16_t queues = mmio_read16(vp->common + COMMON_NUM_QUEUES);
	uint16_t max, size, notify_off;
	uint64_t notify_offset;
	const char *why;

	if (index >= queues)
		return reasonf("queue %u: the device has %u queues", index, queues);
	mmio_write16(vp->common + COMMON_QUEUE_SELECT, index);
	max = mmio_read16(vp->common + COMMON_QUEUE_SIZE);
	if (!max)
		return reasonf("queue %u: size 0, the queue is not available", index);
	if (mmio_read16(vp->common + COMMON_QUEUE_ENABLE))
		return reasonf("queue %u: already enabled after a reset", index);
	size = power_of_two_floor(max < VIRTQ_MAX_SIZE ? max : VIRTQ_MAX_SIZE);
	why = virtq_init(q, index, size);
	if (why)
		return why;

	notify_off = mmio_read16(vp->common + COMMON_QUEUE_NOTIFY_OFF);
	notify_offset = (uint64_t)notify_off * vp->notify_multiplier;
	if (notify_offset + 2 > vp->notify_len)
		return reasonf("queue %u: notify offset 0x%lx is beyond the 0x%x-byte notify area",
			       index, (unsigned long)notify_offset, vp->notify_len);
	q->notify_addr = vp->notify + notify_offset;

	mmio_write16(vp->common + COMMON_QUEUE_SIZE, size);
	write64_halves(vp->common + COMMON_QUEUE_DESC, virtq_desc_addr(q));
	write64_halves(vp->common + COMMON_QUEUE_DRIVER, virtq_avail_addr(q));
	write64_halves(vp->common + COMMON_QUEUE_DEVICE, virtq_used_addr(q));
	mmio_write16(vp->common + COMMON_QUEUE_MSIX_VECTOR, msix_vector);
	if (mmio_read16(vp->common + COMMON_QUEUE_MSIX_VECTOR) != msix_vector)
		return reasonf("queue %u: the device did not take MSI-X vector %u (reads 0x%x)",
			       index, msix_vector,
			       mmio_read16(vp->common + COMMON_QUEUE_MSIX_VECTOR));
	mmio_write16(vp->common + COMMON_QUEUE_ENABLE, 1);
	if (mmio_read16(vp->common + COMMON_QUEUE_ENABLE) != 1)
		return reasonf("queue %u: queue_enable does not read back 1", index);
	serial_printf("virtio: queue %u: %u descriptors (device allows %u), notify at 0x%lx\n",
		      index, size, max, (unsigned long)q->notify_addr);
	return 0;
}

void virtio_pci_driver_ok(struct virtio_pci *vp)
{
	set_status(vp, (uint8_t)(virtio_pci_status(vp) | VIRTIO_STATUS_DRIVER_OK));
}

void virtio_pci_notify(const struct virtio_pci *vp, const struct virtq *q)
{
	(void)vp;
	/* The rings must be visible before the device hears of them. */
	__asm__ volatile("mfence" : : : "memory");
	mmio_write16(q->notify_addr, q->index);
}

const char *virtio_pci_config_read(const struct virtio_pci *vp, uint32_t offset, unsigned len,
				   uint64_t *value)
{
	uint64_t at = vp->device + offset;

	if (!vp->device || offset > vp->device_len || len > vp->device_len - offset)
		return reasonf("device configuration 0x%x + %u is beyond its 0x%x bytes", offset,
			       len, vp->device_len);
	for (unsigned tries = 0; tries < GENERATION_RETRIES; tries++) {
		uint8_t before = mmio_read8(vp->common + COMMON_CONFIG_GENERATION);

		switch (len) {
		case 1:
			*value = mmio_read8(at);
			break;
		case 2:
			*value = mmio_read16(at);
			break;
		case 4:
			*value = mmio_read32(at);
			break;
		case 8:
			*value = mmio_read32(at) | (uint64_t)mmio_read32(at + 4) << 32;
			break;
		default:
			return reasonf("device configuration read of %u bytes", len);
		}
		if (mmio_read8(vp->common + COMMON_CONFIG_GENERATION) == before)
			return 0;
	}
	return reasonf("config_generation kept changing over %u reads", GENERATION_RETRIES);
}

const char *virtio_pci_config_vector(struct virtio_pci *vp, uint16_t vector)
{
	uint16_t got;

	mmio_write16(vp->common + COMMON_CONFIG_MSIX_VECTOR, vector);
	got = mmio_read16(vp->common + COMMON_CONFIG_MSIX_VECTOR);
	if (got != vector)
		return reasonf("the device did not take config MSI-X vector %u (reads 0x%x)",
			       vector, got);
	return 0;
}
