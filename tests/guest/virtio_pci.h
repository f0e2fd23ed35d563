/* A virtio 1.x driver's side of the modern virtio-pci transport (virtio
 * spec 4.1): finding the configuration structures through the vendor
 * capabilities, the initialization sequence, queue setup and notification.
 * Interrupts are optional: without MSI-X the driver polls the used rings. */
#ifndef GUEST_VIRTIO_PCI_H
#define GUEST_VIRTIO_PCI_H

#include <stdint.h>

#include "pci.h"
#include "virtq.h"

#define VIRTIO_PCI_VENDOR 0x1af4
/* Modern device IDs are 0x1040 + the virtio device type. */
#define VIRTIO_PCI_DEVICE_BLOCK 0x1042
#define VIRTIO_PCI_DEVICE_RNG 0x1044

/* Feature bits every transport shares. */
#define VIRTIO_F_VERSION_1 (1ULL << 32)

/* Device status bits (2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE 0x01
#define VIRTIO_STATUS_DRIVER 0x02
#define VIRTIO_STATUS_DRIVER_OK 0x04
#define VIRTIO_STATUS_FEATURES_OK 0x08
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

/* queue_msix_vector / config_msix_vector value for "no interrupt". */
#define VIRTIO_MSI_NO_VECTOR 0xFFFF

struct virtio_pci {
	const struct pci_ecam *ecam;
	struct pci_function fn;
	uint64_t common;             /* common configuration structure */
	uint64_t notify;             /* notification area */
	uint32_t notify_multiplier;  /* bytes between queues' notify addresses */
	uint32_t notify_len;
	uint64_t isr;
	uint64_t device;             /* device-specific configuration */
	uint32_t device_len;
};

/* Walks the function's vendor capabilities for the common, notify, ISR and
 * device configuration structures, checks each lies inside its memory BAR
 * (mapping it when above 4 GiB), prints where each is, and turns on memory
 * decoding and bus mastering. Returns NULL or why the device is unusable. */
const char *virtio_pci_open(const struct pci_ecam *ecam, const struct pci_function *f,
			    struct virtio_pci *out);

/* Resets the device, sets ACKNOWLEDGE and DRIVER, reads the offered
 * features, accepts VERSION_1 plus those of `optional` the device offers,
 * sets FEATURES_OK and checks it stuck. Prints the offered and accepted
 * sets. Returns NULL or why negotiation failed (the device is then left
 * with FAILED set). */
const char *virtio_pci_negotiate(struct virtio_pci *vp, uint64_t optional, uint64_t *offered,
				 uint64_t *accepted);

/* Sets queue `index` up with rings from the pool (as many descriptors as
 * the device allows, up to VIRTQ_MAX_SIZE) and enables it. `msix_vector`
 * is the MSI-X table entry for its interrupts or VIRTIO_MSI_NO_VECTOR.
 * Prints the queue's size. Returns NULL or why the device refused it. */
const char *virtio_pci_queue_setup(struct virtio_pci *vp, uint16_t index, uint16_t msix_vector,
				   struct virtq *q);

/* Sets DRIVER_OK: the device is live from here on. */
void virtio_pci_driver_ok(struct virtio_pci *vp);

/* Tells the device the queue has new buffers. */
void virtio_pci_notify(const struct virtio_pci *vp, const struct virtq *q);

uint8_t virtio_pci_status(const struct virtio_pci *vp);

/* Writes 0 to the status and waits for the device to read back 0, so that
 * it has stopped using the rings. Needs the local APIC clock (lapic_init).
 * Returns NULL or why it did not. */
const char *virtio_pci_reset(struct virtio_pci *vp);

/* Reads `len` (1, 2, 4 or 8) bytes at `offset` of the device-specific
 * configuration, retrying until config_generation says the read was not
 * torn by a concurrent change. Returns NULL or why (out of bounds). */
const char *virtio_pci_config_read(const struct virtio_pci *vp, uint32_t offset, unsigned len,
				   uint64_t *value);

/* Points config_msix_vector at `vector` (or VIRTIO_MSI_NO_VECTOR) and
 * checks that the device took it. */
const char *virtio_pci_config_vector(struct virtio_pci *vp, uint16_t vector);

#endif
