/* Split virtqueues (virtio 1.x, 2.7): the descriptor table and the driver
 * (available) and device (used) rings, kept in the guest's own memory. The
 * guest runs identity-mapped, so a ring's address is its guest-physical
 * address, which is what the device is given.
 *
 * This driver keeps one request in flight per queue at a time: each request
 * is a descriptor chain starting at descriptor 0, submitted, then waited for.
 * That is all a test needs, and it keeps the bookkeeping obviously right. */
#ifndef GUEST_VIRTQ_H
#define GUEST_VIRTQ_H

#include <stdbool.h>
#include <stdint.h>

/* The largest queue this driver sets up; a device may offer more, never
 * less than it is given (the driver writes the size it uses). */
#define VIRTQ_MAX_SIZE 16
/* Queues the static ring pool holds: enough for any one scenario. */
#define VIRTQ_POOL 2

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2 /* the device writes this buffer */

struct virtq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct virtq_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[VIRTQ_MAX_SIZE];
	uint16_t used_event;
};

struct virtq_used_elem {
	uint32_t id;
	uint32_t len;
};

struct virtq_used {
	uint16_t flags;
	uint16_t idx;
	struct virtq_used_elem ring[VIRTQ_MAX_SIZE];
	uint16_t avail_event;
};

struct virtq {
	uint16_t index;       /* the queue's number on its device */
	uint16_t size;        /* descriptors in use, a power of two */
	uint64_t notify_addr; /* where writing `index` kicks the device */
	struct virtq_desc *desc;
	struct virtq_avail *avail;
	struct virtq_used *used;
	uint16_t next_avail;  /* the avail idx the next submission publishes */
	uint16_t last_used;   /* the used idx seen last */
};

/* One buffer of a request. */
struct virtq_buf {
	const void *addr;
	uint32_t len;
	bool device_writes;
};

/* Takes rings for a queue of `size` descriptors (1-VIRTQ_MAX_SIZE, a power
 * of two) from the pool and zeroes them. Returns NULL or why not. */
const char *virtq_init(struct virtq *q, uint16_t index, uint16_t size);

/* Guest-physical addresses of the three parts, for the transport. */
uint64_t virtq_desc_addr(const struct virtq *q);
uint64_t virtq_avail_addr(const struct virtq *q);
uint64_t virtq_used_addr(const struct virtq *q);

/* Chains `count` buffers (at most the queue's size) from descriptor 0 and
 * publishes the chain in the available ring. The caller then notifies the
 * device. Returns NULL or why the chain does not fit. */
const char *virtq_submit(struct virtq *q, const struct virtq_buf *bufs, unsigned count);

/* Whether the device has put a new entry in the used ring. */
bool virtq_has_used(const struct virtq *q);

/* Takes the next used entry: the chain's head and how many bytes the device
 * wrote. Call only when virtq_has_used. Returns NULL or why the entry is
 * not the chain that was submitted. */
const char *virtq_take_used(struct virtq *q, uint32_t *written);

#endif
