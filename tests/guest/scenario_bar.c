/* bar-rw: a device's memory BAR, passed through, behaves like memory the
 * guest can reach: a pattern written through it reads back. The lab points
 * it at a GPU-like framebuffer (std VGA BAR0) and at the far end of an
 * 8 GiB BAR placed above 4 GiB (ivshmem BAR2). */
#include "format.h"
#include "io.h"
#include "pci.h"
#include "scenario_util.h"
#include "scenarios_pci.h"
#include "serial.h"

#define DEFAULT_LEN 0x1000
#define MAX_LEN (16ULL << 20)

/* Differs in every dword and from run to run of the same offset only by the
 * seed, so a stale value from an earlier write never passes for a new one. */
static uint32_t pattern(uint64_t offset, uint32_t seed)
{
	return (uint32_t)(offset * 0x9E3779B1U) ^ seed;
}

static const char *check_pattern(uint64_t base, uint64_t len, uint32_t seed)
{
	for (uint64_t off = 0; off < len; off += 4)
		mmio_write32(base + off, pattern(off, seed));
	for (uint64_t off = 0; off < len; off += 4) {
		uint32_t got = mmio_read32(base + off), want = pattern(off, seed);

		if (got != want)
			return reasonf("read 0x%08x at 0x%lx, wrote 0x%08x", got,
				       (unsigned long)(base + off), want);
	}
	return 0;
}

const char *scenario_bar_rw(const struct guest_env *env)
{
	struct pci_ecam ecam;
	struct pci_function f;
	struct pci_bar bar;
	uint64_t index, offset, len;
	const char *why;

	why = param_u64_or(env, "bar", 0, PCI_BARS - 1, &index);
	if (!why)
		why = param_u64_or(env, "offset", 0, ~0ULL, &offset);
	if (!why)
		why = param_u64_or(env, "len", DEFAULT_LEN, MAX_LEN, &len);
	if (why)
		return why;
	if (!len || (len & 3) || (offset & 3))
		return "offset= and len= must be multiples of 4, len= above 0";

	why = scenario_find_device(env, 0, 0, &ecam, &f);
	if (!why)
		why = scenario_memory_bar(&ecam, &f, (unsigned)index, offset, len, &bar);
	if (why)
		return why;
	pci_command_update(&ecam, &f, PCI_COMMAND_MEMORY | PCI_COMMAND_BUS_MASTER, 0);

	/* Two seeds: the second run proves the first one's values were
	 * overwritten, not left over from an earlier boot. */
	why = check_pattern(bar.addr + offset, len, 0xA5C3F00D);
	if (!why)
		why = check_pattern(bar.addr + offset, len, 0x5A3C0FF2);
	if (why)
		return why;
	serial_printf("bar %lu: wrote and read back 0x%lx bytes at offset 0x%lx\n",
		      (unsigned long)index, (unsigned long)len, (unsigned long)offset);
	return scenario_hold(env);
}
