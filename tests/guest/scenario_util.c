#include "scenario_util.h"

#include "cpu.h"
#include "format.h"
#include "interrupts.h"
#include "io.h"
#include "lapic.h"
#include "paging.h"
#include "phys.h"
#include "serial.h"

#define MS_PER_S 1000
#define NS_PER_MS 1000000
/* Between two scans of the bus: often enough to see a hotplug at once,
 * rarely enough to leave the VMM's ECAM handler mostly idle. */
#define SCAN_PAUSE_MS 10
#define MAX_WAIT_S 3600

const char *param_u64(const struct guest_env *env, const char *key, uint64_t *value,
		      bool *present)
{
	const char *text = cmdline_param(env->cmdline, key);

	*present = text != 0;
	if (text && !parse_u64(text, value))
		return reasonf("parameter %s=%s is not a number", key, text);
	return 0;
}

const char *param_u64_or(const struct guest_env *env, const char *key, uint64_t fallback,
			 uint64_t max, uint64_t *value)
{
	bool present;
	const char *why = param_u64(env, key, value, &present);

	if (why)
		return why;
	if (!present)
		*value = fallback;
	if (*value > max)
		return reasonf("parameter %s=0x%lx is above its limit 0x%lx", key,
			       (unsigned long)*value, (unsigned long)max);
	return 0;
}

bool pci_wait_for(const struct pci_ecam *ecam, uint16_t vendor, uint16_t device, bool present,
		  uint64_t wait_ms, struct pci_function *out, uint64_t *elapsed_ms)
{
	uint64_t start = lapic_clock_ns();
	struct pci_function found;

	for (;;) {
		uint64_t now = lapic_clock_ns();

		*elapsed_ms = (now - start) / NS_PER_MS;
		if (pci_find(ecam, vendor, device, &found) == present) {
			if (present && out)
				*out = found;
			return true;
		}
		if (*elapsed_ms >= wait_ms)
			return false;
		lapic_delay_ms(SCAN_PAUSE_MS);
	}
}

const char *scenario_find_device(const struct guest_env *env, uint16_t vendor, uint16_t device,
				 struct pci_ecam *ecam, struct pci_function *out)
{
	uint64_t want_vendor, want_device, wait_s, elapsed_ms;
	const char *why;

	why = param_u64_or(env, "vendor", vendor, 0xFFFF, &want_vendor);
	if (!why)
		why = param_u64_or(env, "device", device, 0xFFFF, &want_device);
	if (!why)
		why = param_u64_or(env, "wait", 0, MAX_WAIT_S, &wait_s);
	if (why)
		return why;
	if (!want_vendor || want_vendor == PCI_VENDOR_NONE)
		return "give the device as vendor=0xVVVV device=0xDDDD";
	why = lapic_init();
	if (!why)
		why = pci_ecam_find(env->rsdp_hint, ecam);
	if (why)
		return why;
	if (!pci_wait_for(ecam, (uint16_t)want_vendor, (uint16_t)want_device, true,
			  wait_s * MS_PER_S, out, &elapsed_ms))
		return reasonf("no %04lx:%04lx on bus 0 after %lu s", (unsigned long)want_vendor,
			       (unsigned long)want_device, (unsigned long)wait_s);
	serial_printf("found 00:%02x.%x %04x:%04x class %06x\n", out->dev, out->fn, out->vendor,
		      out->device, out->class_code);
	return 0;
}

const char *scenario_memory_bar(const struct pci_ecam *ecam, const struct pci_function *f,
				unsigned index, uint64_t offset, uint64_t len,
				struct pci_bar *out)
{
	const char *why = pci_bar_probe(ecam, f, index, out);

	if (why)
		return why;
	serial_printf("bar %u at 0x%lx size 0x%lx (%s%s)\n", index, (unsigned long)out->addr,
		      (unsigned long)out->size,
		      out->io ? "I/O" : out->is_64 ? "64-bit" : "32-bit",
		      out->prefetchable ? ", prefetchable" : "");
	if (out->io)
		return reasonf("BAR %u is an I/O BAR; this scenario needs memory", index);
	if (!out->addr)
		return reasonf("BAR %u has no address assigned", index);
	if (out->addr + out->size < out->addr)
		return reasonf("BAR %u wraps around the address space", index);
	if (offset > out->size || len > out->size - offset)
		return reasonf("offset 0x%lx + length 0x%lx is beyond BAR %u's 0x%lx bytes",
			       (unsigned long)offset, (unsigned long)len, index,
			       (unsigned long)out->size);
	if (phys_range_ok(out->addr + offset, len))
		return 0;
	why = paging_map_identity(out->addr + offset, len);
	if (!why)
		serial_printf("mapped 0x%lx-0x%lx above 4 GiB\n", (unsigned long)(out->addr + offset),
			      (unsigned long)(out->addr + offset + len - 1));
	return why;
}

const char *scenario_hold(const struct guest_env *env)
{
	uint64_t hold_s;
	const char *why = param_u64_or(env, "hold", 0, MAX_WAIT_S, &hold_s);

	if (why || !hold_s)
		return why;
	why = lapic_init();
	if (why)
		return why;
	serial_printf("holding %lu s\n", (unsigned long)hold_s);
	lapic_delay_ms(hold_s * MS_PER_S);
	return 0;
}

const char *scenario_interrupts_on(const struct guest_env *env, uint8_t fallback,
				   uint8_t *vector)
{
	uint64_t value;
	const char *why = param_u64_or(env, "vector", fallback, 0xFE, &value);

	if (why)
		return why;
	if (value < INTERRUPT_FIRST_DEVICE_VECTOR)
		return reasonf("vector=0x%lx is an exception vector; use 0x20-0xfe",
			       (unsigned long)value);
	*vector = (uint8_t)value;
	why = lapic_init();
	if (why)
		return why;
	interrupts_init();
	cpu_enable_interrupts();
	return 0;
}

bool scenario_wait_interrupt(uint8_t vector, uint32_t before, uint64_t ms)
{
	uint64_t end = lapic_clock_ns() + ms * NS_PER_MS;

	while (interrupt_count(vector) == before) {
		if (lapic_clock_ns() >= end)
			return false;
		cpu_relax();
	}
	return true;
}
