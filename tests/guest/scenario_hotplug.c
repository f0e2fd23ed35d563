/* pci-wait and hotplug-cycle: the guest watches bus 0 while the VMM's API
 * adds and removes a device, the way a firmware without an AML interpreter
 * would notice: by scanning configuration space again. */
#include <stdbool.h>

#include "format.h"
#include "io.h"
#include "lapic.h"
#include "pci.h"
#include "scenario_util.h"
#include "scenarios_pci.h"
#include "serial.h"

#define DEFAULT_WAIT_S 30
#define MAX_WAIT_S 3600
#define POLL_MS 10

/* platform.md: form-vmm's PCI hotplug controller. PCID holds the slots whose
 * device the VMM wants back (reading clears it); writing a slot number to
 * PCEJ is what the slot's _EJ0 does. */
#define HOTPLUG_PCID 0xF0001004ULL
#define HOTPLUG_PCEJ 0xF0001008ULL

struct watch {
	struct pci_ecam ecam;
	uint16_t vendor, device;
	uint64_t wait_ms;
	/* eject=1: answer removal requests as the DSDT's _EJ0 would; eject=2: read
	 * them and keep the device, as a guest whose driver will not let go. */
	uint64_t eject;
};

static const char *watch_setup(const struct guest_env *env, struct watch *w)
{
	uint64_t vendor, device, wait_s, eject;
	const char *why;

	why = param_u64_or(env, "vendor", 0, 0xFFFF, &vendor);
	if (!why)
		why = param_u64_or(env, "device", 0, 0xFFFF, &device);
	if (!why)
		why = param_u64_or(env, "wait", DEFAULT_WAIT_S, MAX_WAIT_S, &wait_s);
	if (!why)
		why = param_u64_or(env, "eject", 0, 2, &eject);
	if (why)
		return why;
	w->eject = eject;
	if (!vendor || vendor == PCI_VENDOR_NONE)
		return "give the device as vendor=0xVVVV device=0xDDDD";
	w->vendor = (uint16_t)vendor;
	w->device = (uint16_t)device;
	w->wait_ms = wait_s * 1000;
	why = lapic_init();
	return why ? why : pci_ecam_find(env->rsdp_hint, &w->ecam);
}

/* Waits for the device to go, reading the VMM's removal requests and ejecting
 * the slot (eject=1) or refusing to (eject=2). Returns whether it went;
 * *elapsed_ms says when. */
static bool wait_gone_ejecting(const struct watch *w, uint64_t *elapsed_ms)
{
	uint64_t start = lapic_clock_ns();
	struct pci_function f;
	bool refused = false;

	for (;;) {
		uint32_t requested;

		*elapsed_ms = (lapic_clock_ns() - start) / 1000000;
		if (!pci_find(&w->ecam, w->vendor, w->device, &f))
			return true;
		requested = mmio_read32(HOTPLUG_PCID);
		if ((requested & (1U << f.dev)) && w->eject == 1) {
			serial_printf("eject request for slot %u: ejecting\n", f.dev);
			mmio_write32(HOTPLUG_PCEJ, f.dev);
		} else if ((requested & (1U << f.dev)) && !refused) {
			serial_printf("eject request for slot %u: keeping the device\n", f.dev);
			refused = true;
		}
		if (*elapsed_ms >= w->wait_ms)
			return false;
		lapic_delay_ms(POLL_MS);
	}
}

/* One phase: waits for the device to be present or gone, and says so. */
static const char *watch_for(const struct watch *w, bool present, const char *label)
{
	struct pci_function f;
	uint64_t elapsed_ms;
	bool reached;

	serial_printf("waiting for %04x:%04x to %s\n", w->vendor, w->device,
		      present ? "appear" : "go");
	if (!present && w->eject)
		reached = wait_gone_ejecting(w, &elapsed_ms);
	else
		reached = pci_wait_for(&w->ecam, w->vendor, w->device, present, w->wait_ms, &f,
				       &elapsed_ms);
	if (!reached)
		return reasonf("%04x:%04x still %s after %lu s", w->vendor, w->device,
			       present ? "absent" : "present", (unsigned long)(w->wait_ms / 1000));
	if (present) {
		serial_printf("%s 00:%02x.%x %04x:%04x class %06x after %lu ms\n", label, f.dev,
			      f.fn, f.vendor, f.device, f.class_code, (unsigned long)elapsed_ms);
	} else {
		serial_printf("%s after %lu ms\n", label, (unsigned long)elapsed_ms);
	}
	return 0;
}

const char *scenario_pci_wait(const struct guest_env *env)
{
	struct watch w;
	uint64_t gone;
	const char *why = watch_setup(env, &w);

	if (!why)
		why = param_u64_or(env, "gone", 0, 1, &gone);
	if (why)
		return why;
	return watch_for(&w, !gone, gone ? "gone" : "found");
}

/* Present, gone, present again: what vm.add-device, vm.remove-device and a
 * second vm.add-device do to a running guest. */
const char *scenario_hotplug_cycle(const struct guest_env *env)
{
	struct watch w;
	const char *why = watch_setup(env, &w);

	if (!why)
		why = watch_for(&w, true, "found");
	if (!why)
		why = watch_for(&w, false, "gone");
	if (!why)
		why = watch_for(&w, true, "found again");
	return why;
}
