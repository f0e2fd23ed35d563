#include "virtq.h"

#include "format.h"
#include "str.h"

/* Alignments from the spec (2.7): descriptors 16, available ring 2, used
 * ring 4. One page per queue covers all three with room to spare. */
struct virtq_memory {
	struct virtq_desc desc[VIRTQ_MAX_SIZE];
	struct virtq_avail avail __attribute__((aligned(16)));
	struct virtq_used used __attribute__((aligned(16)));
} __attribute__((aligned(4096)));

static struct virtq_memory pool[VIRTQ_POOL];
static unsigned pool_used;

/* Keeps the compiler from moving ring accesses across it. x86 does not
 * reorder stores with stores or loads with loads, and those are the
 * orders the ring protocol depends on between the driver and the device. */
static inline void compiler_barrier(void)
{
	__asm__ volatile("" : : : "memory");
}

static inline uint16_t read_once16(const volatile uint16_t *p)
{
	return *p;
}

const char *virtq_init(struct virtq *q, uint16_t index, uint16_t size)
{
	struct virtq_memory *mem;

	if (!size || size > VIRTQ_MAX_SIZE || (size & (size - 1)))
		return reasonf("queue %u: size %u is not a power of two up to %u", index, size,
			       VIRTQ_MAX_SIZE);
	if (pool_used == VIRTQ_POOL)
		return reasonf("queue %u: all %u rings of the pool are taken", index, VIRTQ_POOL);
	mem = &pool[pool_used++];
	memset(mem, 0, sizeof(*mem));
	*q = (struct virtq){
		.index = index,
		.size = size,
		.desc = mem->desc,
		.avail = &mem->avail,
		.used = &mem->used,
	};
	return 0;
}

uint64_t virtq_desc_addr(const struct virtq *q)
{
	return (uintptr_t)q->desc;
}

uint64_t virtq_avail_addr(const struct virtq *q)
{
	return (uintptr_t)q->avail;
}

uint64_t virtq_used_addr(const struct virtq *q)
{
	return (uintptr_t)q->used;
}

const char *virtq_submit(struct virtq *q, const struct virtq_buf *bufs, unsigned count)
{
	if (!count || count > q->size)
		return reasonf("queue %u: a chain of %u buffers does not fit %u descriptors",
			       q->index, count, q->size);
	for (unsigned i = 0; i < count; i++) {
		q->desc[i] = (struct virtq_desc){
			.addr = (uintptr_t)bufs[i].addr,
			.len = bufs[i].len,
			.flags = (uint16_t)((i + 1 < count ? VIRTQ_DESC_F_NEXT : 0) |
					    (bufs[i].device_writes ? VIRTQ_DESC_F_WRITE : 0)),
			.next = (uint16_t)(i + 1 < count ? i + 1 : 0),
		};
	}
	q->avail->ring[q->next_avail % q->size] = 0;
	/* The device may look at the ring as soon as idx moves: descriptors
	 * and the ring entry must be written first. */
	compiler_barrier();
	q->next_avail++;
	*(volatile uint16_t *)&q->avail->idx = q->next_avail;
	compiler_barrier();
	return 0;
}

bool virtq_has_used(const struct virtq *q)
{
	return read_once16(&q->used->idx) != q->last_used;
}

const char *virtq_take_used(struct virtq *q, uint32_t *written)
{
	const volatile struct virtq_used_elem *elem;
	uint16_t idx = read_once16(&q->used->idx);

	/* The entry is read only after idx said it is there. */
	compiler_barrier();
	if ((uint16_t)(idx - q->last_used) > 1)
		return reasonf("queue %u: used idx jumped from %u to %u with one request in flight",
			       q->index, q->last_used, idx);
	elem = (const volatile struct virtq_used_elem *)&q->used->ring[q->last_used % q->size];
	q->last_used++;
	*written = elem->len;
	if (elem->id != 0)
		return reasonf("queue %u: used entry names descriptor %u, the chain's head is 0",
			       q->index, elem->id);
	return 0;
}
