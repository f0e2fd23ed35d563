/* virtio-blk and virtio-blk-ro: a modern virtio block device (1af4:1042)
 * driven through its first queue, one request at a time (virtio spec 5.2).
 *
 * virtio-blk reads the capacity and sector 0, writes a known pattern to
 * sector 1, flushes (when offered), reads sector 1 back, and checks that a
 * read past the end fails with IOERR. virtio-blk-ro checks that a disk the
 * device offers as read-only refuses that write and keeps sector 1. */
#include <stdbool.h>

#include "format.h"
#include "scenario_virtio.h"
#include "scenarios_virtio.h"
#include "serial.h"
#include "str.h"

#define VIRTIO_BLK_F_RO (1ULL << 5)
#define VIRTIO_BLK_F_FLUSH (1ULL << 9)

#define BLK_CONFIG_CAPACITY 0 /* le64, in 512-byte sectors */

#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4

#define BLK_S_OK 0
#define BLK_S_IOERR 1
#define BLK_S_UNSUPP 2
#define BLK_S_UNSET 0xFF /* what the driver leaves there; a device overwrites it */

#define SECTOR_SIZE 512
#define PRINTED_BYTES 16

/* The pattern written to sector 1, repeated: the host side of a test
 * checks the image file for it. */
static const char sector1_pattern[] = "form-vmm-sector1";

struct blk_header {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

static struct blk_header header;
static uint8_t sector_buf[SECTOR_SIZE] __attribute__((aligned(SECTOR_SIZE)));
static uint8_t saved[SECTOR_SIZE];
static uint8_t status;

static const char *status_name(uint8_t s)
{
	static char other[8];

	switch (s) {
	case BLK_S_OK:
		return "OK";
	case BLK_S_IOERR:
		return "IOERR";
	case BLK_S_UNSUPP:
		return "UNSUPP";
	default:
		format_buf(other, sizeof(other), "0x%02x", s);
		return other;
	}
}

/* Runs one request on sector_buf (none for a flush); *result is the status
 * byte the device wrote. */
static const char *blk_request(struct virtio_session *s, uint32_t type, uint64_t sector,
			       uint8_t *result)
{
	struct virtq_buf bufs[3];
	unsigned count = 0;
	uint32_t written;
	char what[64];
	const char *why;

	header = (struct blk_header){ .type = type, .sector = sector };
	status = BLK_S_UNSET;
	bufs[count++] = (struct virtq_buf){ &header, sizeof(header), false };
	if (type != BLK_T_FLUSH)
		bufs[count++] = (struct virtq_buf){ sector_buf, SECTOR_SIZE, type == BLK_T_IN };
	bufs[count++] = (struct virtq_buf){ &status, 1, true };
	format_buf(what, sizeof(what), "virtio-blk request type %u sector %lu", type,
		   (unsigned long)sector);
	why = virtio_session_request(s, bufs, count, what, &written);
	if (why)
		return why;
	if (status == BLK_S_UNSET)
		return reasonf("%s: completed without writing its status byte (used len %u)",
			       what, written);
	*result = status;
	return 0;
}

/* A request that must succeed. */
static const char *blk_ok(struct virtio_session *s, uint32_t type, uint64_t sector)
{
	uint8_t result;
	const char *why = blk_request(s, type, sector, &result);

	if (why)
		return why;
	if (result != BLK_S_OK)
		return reasonf("virtio-blk request type %u sector %lu: status %s", type,
			       (unsigned long)sector, status_name(result));
	return 0;
}

static void fill_pattern(void)
{
	for (unsigned i = 0; i < SECTOR_SIZE; i++)
		sector_buf[i] = (uint8_t)sector1_pattern[i % (sizeof(sector1_pattern) - 1)];
}

static const char *start(const struct guest_env *env, struct virtio_session *s,
			 uint64_t *capacity)
{
	char hex[2 * PRINTED_BYTES + 1];
	const char *why = virtio_session_start(env, VIRTIO_PCI_DEVICE_BLOCK, VIRTIO_BLK_F_FLUSH, s);

	if (!why)
		why = virtio_pci_config_read(&s->vp, BLK_CONFIG_CAPACITY, 8, capacity);
	if (why)
		return why;
	serial_printf("virtio-blk: capacity %lu sectors\n", (unsigned long)*capacity);
	if (*capacity < 2)
		return "the disk has fewer than 2 sectors; these scenarios use sectors 0 and 1";

	why = blk_ok(s, BLK_T_IN, 0);
	if (why)
		return why;
	for (unsigned i = 0; i < PRINTED_BYTES; i++)
		format_buf(hex + 2 * i, 3, "%02x", sector_buf[i]);
	serial_printf("VIRTIO-BLK-SECTOR0 %s\n", hex);
	return 0;
}

static const char *read_write(struct virtio_session *s, uint64_t capacity)
{
	uint8_t result;
	const char *why;

	if (s->offered & VIRTIO_BLK_F_RO)
		return "the device offers VIRTIO_BLK_F_RO: a read-only disk (use virtio-blk-ro)";
	fill_pattern();
	why = blk_ok(s, BLK_T_OUT, 1);
	if (why)
		return why;
	memcpy(saved, sector_buf, SECTOR_SIZE);
	serial_printf("virtio-blk: wrote sector 1\n");

	if (s->features & VIRTIO_BLK_F_FLUSH) {
		why = blk_ok(s, BLK_T_FLUSH, 0);
		if (why)
			return why;
		serial_printf("virtio-blk: flush OK\n");
	} else {
		serial_printf("virtio-blk: flush not offered\n");
	}

	memset(sector_buf, 0, SECTOR_SIZE);
	why = blk_ok(s, BLK_T_IN, 1);
	if (why)
		return why;
	for (unsigned i = 0; i < SECTOR_SIZE; i++) {
		if (sector_buf[i] != saved[i])
			return reasonf("sector 1 read back 0x%02x at byte %u, wrote 0x%02x",
				       sector_buf[i], i, saved[i]);
	}
	serial_printf("virtio-blk: sector 1 read back: match\n");

	why = blk_request(s, BLK_T_IN, capacity, &result);
	if (why)
		return why;
	serial_printf("virtio-blk: read of sector %lu (past the end): status %s\n",
		      (unsigned long)capacity, status_name(result));
	if (result != BLK_S_IOERR)
		return reasonf("a read past the end completed with status %s, not IOERR",
			       status_name(result));
	return 0;
}

const char *scenario_virtio_blk(const struct guest_env *env)
{
	struct virtio_session s;
	uint64_t capacity = 0;
	const char *why = start(env, &s, &capacity);

	if (!why)
		why = read_write(&s, capacity);
	if (!why)
		why = virtio_session_stop(&s);
	if (why)
		return why;
	serial_printf("VIRTIO-BLK-OK capacity=%lu\n", (unsigned long)capacity);
	return 0;
}

static const char *refuse_write(struct virtio_session *s)
{
	uint8_t result;
	const char *why;

	if (!(s->offered & VIRTIO_BLK_F_RO))
		return "the device does not offer VIRTIO_BLK_F_RO: the disk is writable";
	serial_printf("virtio-blk: read-only (VIRTIO_BLK_F_RO offered)\n");
	why = blk_ok(s, BLK_T_IN, 1);
	if (why)
		return why;
	memcpy(saved, sector_buf, SECTOR_SIZE);

	fill_pattern();
	why = blk_request(s, BLK_T_OUT, 1, &result);
	if (why)
		return why;
	serial_printf("virtio-blk: write to the read-only disk: status %s\n",
		      status_name(result));
	if (result == BLK_S_OK)
		return "a write to the read-only disk completed with status OK";

	memset(sector_buf, 0, SECTOR_SIZE);
	why = blk_ok(s, BLK_T_IN, 1);
	if (why)
		return why;
	if (memcmp(sector_buf, saved, SECTOR_SIZE))
		return "sector 1 changed although the write was refused";
	serial_printf("virtio-blk: sector 1 unchanged\n");
	return 0;
}

const char *scenario_virtio_blk_ro(const struct guest_env *env)
{
	struct virtio_session s;
	uint64_t capacity = 0;
	const char *why = start(env, &s, &capacity);

	if (!why)
		why = refuse_write(&s);
	if (!why)
		why = virtio_session_stop(&s);
	if (why)
		return why;
	serial_printf("VIRTIO-BLK-RO-OK capacity=%lu\n", (unsigned long)capacity);
	return 0;
}
