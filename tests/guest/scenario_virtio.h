/* What the virtio scenarios share: bringing one virtio-pci device up with a
 * single queue (polled, or with `msix=1` completing through an MSI-X
 * interrupt) and running one request at a time on it. */
#ifndef GUEST_SCENARIO_VIRTIO_H
#define GUEST_SCENARIO_VIRTIO_H

#include <stdint.h>

#include "pci.h"
#include "scenario.h"
#include "virtio_pci.h"
#include "virtq.h"

struct virtio_session {
	struct pci_ecam ecam;
	struct pci_function fn;
	struct virtio_pci vp;
	struct virtq queue;
	uint64_t offered;
	uint64_t features;  /* accepted */
	uint8_t irq_vector; /* 0: poll the used ring */
};

/* Finds `device` (1af4:DDDD; `wait=` seconds), negotiates VERSION_1 plus
 * `optional` features, sets up queue 0 and sets DRIVER_OK. With `msix=1`
 * queue 0 signals MSI-X table entry 0, which is pointed at `vector=` (0x42)
 * on this CPU. */
const char *virtio_session_start(const struct guest_env *env, uint16_t device, uint64_t optional,
				 struct virtio_session *s);

/* Submits one chain on queue 0, kicks the device and waits for it to come
 * back; *written is what the device says it wrote. `what` names the request
 * in a timeout's reason. */
const char *virtio_session_request(struct virtio_session *s, const struct virtq_buf *bufs,
				   unsigned count, const char *what, uint32_t *written);

/* Resets the device (it lets go of the rings) and turns MSI-X off. */
const char *virtio_session_stop(struct virtio_session *s);

#endif
