/* What the VMM hands over at entry: Linux's boot_params (the "zero page")
 * and the command line it points to. */
#ifndef GUEST_BOOT_H
#define GUEST_BOOT_H

#include <stdint.h>

#define CMDLINE_MAX 1024
#define CMDLINE_MAX_PARAMS 32

struct boot_info {
	uint64_t rsdp_addr;    /* boot_params.acpi_rsdp_addr; 0 when not given */
	uint64_t cmdline_addr; /* cmd_line_ptr | ext_cmd_line_ptr << 32; 0 when none */
};

struct cmdline_param {
	const char *key;
	const char *value;
};

/* The command line: `<scenario> [key=value ...]`. Other key=value words may
 * come first (a VMM's defaults); the scenario is the first word without '='.
 * The strings point into `text`. */
struct cmdline {
	char text[CMDLINE_MAX];
	const char *scenario;
	struct cmdline_param params[CMDLINE_MAX_PARAMS];
	unsigned param_count;
};

/* Each returns NULL on success or a reason to report. */
const char *boot_info_read(uint64_t boot_params, struct boot_info *out);
const char *cmdline_parse(uint64_t addr, struct cmdline *out);

/* The value of `key`, or NULL when the command line does not set it. */
const char *cmdline_param(const struct cmdline *cmdline, const char *key);

#endif
