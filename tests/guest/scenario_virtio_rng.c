/* virtio-rng: 64 bytes from a modern virtio entropy device (1af4:1044,
 * virtio spec 5.4), which fills device-writable buffers on its one queue. */
#include "format.h"
#include "scenario_virtio.h"
#include "scenarios_virtio.h"
#include "serial.h"

#define RNG_BYTES 64
/* A device may return fewer bytes than asked; it gets this many tries. */
#define MAX_REQUESTS 16
/* Of 64 random bytes about 63.75 are nonzero; fewer than half means the
 * device is not handing out entropy (a false failure is beyond odds). */
#define MIN_NONZERO (RNG_BYTES / 2)

static uint8_t entropy[RNG_BYTES];

const char *scenario_virtio_rng(const struct guest_env *env)
{
	struct virtio_session s;
	unsigned got = 0, nonzero = 0, requests = 0;
	const char *why = virtio_session_start(env, VIRTIO_PCI_DEVICE_RNG, 0, &s);

	while (!why && got < RNG_BYTES) {
		struct virtq_buf buf = { entropy + got, RNG_BYTES - got, true };
		uint32_t written;

		if (requests++ == MAX_REQUESTS)
			return reasonf("only %u of %u bytes after %u requests", got, RNG_BYTES,
				       MAX_REQUESTS);
		why = virtio_session_request(&s, &buf, 1, "virtio-rng request", &written);
		if (!why && written > RNG_BYTES - got)
			why = reasonf("the device wrote %u bytes into a %u-byte buffer", written,
				      RNG_BYTES - got);
		if (!why)
			got += written;
	}
	if (!why)
		why = virtio_session_stop(&s);
	if (why)
		return why;
	for (unsigned i = 0; i < RNG_BYTES; i++)
		nonzero += entropy[i] != 0;
	serial_printf("VIRTIO-RNG-OK %u bytes nonzero=%u\n", got, nonzero);
	if (nonzero < MIN_NONZERO)
		return reasonf("only %u of %u bytes are nonzero: not random", nonzero, RNG_BYTES);
	return 0;
}
