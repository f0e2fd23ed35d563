/* What the PCI scenarios share: parameters, finding their device (waiting
 * for it when it is hotplugged), and making a BAR reachable. */
#ifndef GUEST_SCENARIO_UTIL_H
#define GUEST_SCENARIO_UTIL_H

#include <stdbool.h>
#include <stdint.h>

#include "pci.h"
#include "scenario.h"

/* Reads an optional numeric parameter. Returns a reason when it is set but
 * not a number; *present says whether it was set. */
const char *param_u64(const struct guest_env *env, const char *key, uint64_t *value,
		      bool *present);

/* Like param_u64, with `fallback` when the parameter is absent and a check
 * that the value is at most `max`. */
const char *param_u64_or(const struct guest_env *env, const char *key, uint64_t fallback,
			 uint64_t max, uint64_t *value);

/* Polls bus 0 until vendor:device is present (or, with `present` false,
 * absent) or `wait_ms` pass. Returns whether it got there; *elapsed_ms says
 * when. Needs the local APIC clock (lapic_init). */
bool pci_wait_for(const struct pci_ecam *ecam, uint16_t vendor, uint16_t device, bool present,
		  uint64_t wait_ms, struct pci_function *out, uint64_t *elapsed_ms);

/* The device a scenario works on: `vendor=` and `device=` (each defaulting
 * to the given IDs when nonzero), found on bus 0 within `wait=` seconds
 * (default 0: it must be there at boot). Prints `found 00:DD.F VVVV:DDDD
 * class CCSSPP`. Also brings up the APIC clock. */
const char *scenario_find_device(const struct guest_env *env, uint16_t vendor, uint16_t device,
				 struct pci_ecam *ecam, struct pci_function *out);

/* Probes a memory BAR, prints `bar N at 0x... size 0x... (..)`, checks that
 * [offset, offset + len) lies inside it and maps that window when it is
 * above the VMM's 4 GiB identity map (only the window: a GPU's BAR can be
 * larger than the page-table pool could map whole). */
const char *scenario_memory_bar(const struct pci_ecam *ecam, const struct pci_function *f,
				unsigned index, uint64_t offset, uint64_t len,
				struct pci_bar *out);

/* With `hold=SECONDS`, prints `holding N s` and waits that long, so that a
 * test can look at the VMM (its counters) while the guest still runs. */
const char *scenario_hold(const struct guest_env *env);

/* Loads the IDT, enables the local APIC and interrupts, and reads
 * `vector=` (default `fallback`, 0x20-0xFE). */
const char *scenario_interrupts_on(const struct guest_env *env, uint8_t fallback,
				   uint8_t *vector);

/* Waits up to `ms` for `vector` to have arrived more than `before` times. */
bool scenario_wait_interrupt(uint8_t vector, uint32_t before, uint64_t ms);

#endif
