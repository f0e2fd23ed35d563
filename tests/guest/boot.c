#include "boot.h"

#include <stdbool.h>

#include "format.h"
#include "phys.h"
#include "str.h"

/* Offsets in struct boot_params (Documentation/arch/x86/zero-page.rst). */
#define BP_ACPI_RSDP_ADDR 0x070     /* u64 */
#define BP_EXT_CMD_LINE_PTR 0x0C8   /* u32, high half of the command line address */
#define BP_HDR_CMD_LINE_PTR 0x228   /* u32 */
#define BOOT_PARAMS_SIZE 0x1000

const char *boot_info_read(uint64_t boot_params, struct boot_info *out)
{
	const uint8_t *bp;

	if (!boot_params || !phys_range_ok(boot_params, BOOT_PARAMS_SIZE))
		return reasonf("boot_params pointer 0x%lx in %%rsi is not usable",
			       (unsigned long)boot_params);
	bp = phys_bytes(boot_params);
	out->rsdp_addr = load_le64(bp + BP_ACPI_RSDP_ADDR);
	out->cmdline_addr = (uint64_t)load_le32(bp + BP_EXT_CMD_LINE_PTR) << 32 |
			    load_le32(bp + BP_HDR_CMD_LINE_PTR);
	return 0;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static char *find_char(char *s, char c)
{
	for (; *s; s++) {
		if (*s == c)
			return s;
	}
	return 0;
}

/* Copies the NUL-terminated command line out of guest memory without reading
 * past CMDLINE_MAX bytes or the end of mapped memory. */
static const char *cmdline_copy(uint64_t addr, char *text)
{
	const uint8_t *src = phys_bytes(addr);

	for (uint64_t i = 0; i < CMDLINE_MAX; i++) {
		if (!phys_range_ok(addr + i, 1))
			return reasonf("command line at 0x%lx runs past 4 GiB", (unsigned long)addr);
		text[i] = (char)src[i];
		if (!text[i])
			return 0;
	}
	return reasonf("command line at 0x%lx is longer than %d bytes", (unsigned long)addr,
		       CMDLINE_MAX - 1);
}

const char *cmdline_parse(uint64_t addr, struct cmdline *out)
{
	const char *why;
	char *p;

	memset(out, 0, sizeof(*out));
	if (!addr)
		return "no command line (boot_params.hdr.cmd_line_ptr is 0)";
	why = cmdline_copy(addr, out->text);
	if (why)
		return why;

	p = out->text;
	for (;;) {
		char *word, *eq;

		while (is_space(*p))
			*p++ = '\0';
		if (!*p)
			break;
		word = p;
		while (*p && !is_space(*p))
			p++;
		if (*p)
			*p++ = '\0';

		eq = find_char(word, '=');
		if (!eq) {
			if (out->scenario)
				return reasonf("unexpected word '%s' on the command line "
					       "(parameters are key=value)", word);
			out->scenario = word;
			continue;
		}
		if (out->param_count == CMDLINE_MAX_PARAMS)
			return reasonf("more than %d parameters on the command line",
				       CMDLINE_MAX_PARAMS);
		*eq = '\0';
		out->params[out->param_count].key = word;
		out->params[out->param_count].value = eq + 1;
		out->param_count++;
	}
	if (!out->scenario)
		return "no scenario name on the command line";
	return 0;
}

const char *cmdline_param(const struct cmdline *cmdline, const char *key)
{
	/* The last setting wins, as on a Linux command line. */
	for (unsigned i = cmdline->param_count; i-- > 0;) {
		if (str_eq(cmdline->params[i].key, key))
			return cmdline->params[i].value;
	}
	return 0;
}
