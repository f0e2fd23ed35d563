/* Scenarios: what one boot of the test guest checks, picked by name on the
 * command line. */
#ifndef GUEST_SCENARIO_H
#define GUEST_SCENARIO_H

#include <stdint.h>

#include "boot.h"

struct guest_env {
	uint64_t rsdp_hint; /* boot_params.acpi_rsdp_addr; 0: scan for it */
	const struct cmdline *cmdline;
};

/* Runs the scenario, printing its own lines. Returns NULL on pass or the
 * reason it failed. */
typedef const char *(*scenario_fn)(const struct guest_env *env);

struct scenario {
	const char *name;
	scenario_fn run;
};

const struct scenario *scenario_find(const char *name);

#endif
