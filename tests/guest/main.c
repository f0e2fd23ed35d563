/* form-vmm's test guest: boots, runs the scenario named on the command line,
 * reports PASS or FAIL on COM1 and powers off. */
#include "boot.h"
#include "format.h"
#include "power.h"
#include "protocol.h"
#include "scenario.h"
#include "serial.h"

/* Static: it is 1.5 KiB, and the stack is better kept for scenarios. */
static struct cmdline cmdline;

static const char *run(uint64_t boot_params, uint64_t *rsdp_hint)
{
	struct boot_info boot;
	const struct scenario *scenario;
	struct guest_env env;
	const char *why;

	why = boot_info_read(boot_params, &boot);
	if (why)
		return why;
	*rsdp_hint = boot.rsdp_addr;
	why = cmdline_parse(boot.cmdline_addr, &cmdline);
	if (why)
		return why;

	protocol_scenario(cmdline.scenario);
	scenario = scenario_find(cmdline.scenario);
	if (!scenario)
		return reasonf("unknown scenario '%s'", cmdline.scenario);
	env = (struct guest_env){ .rsdp_hint = boot.rsdp_addr, .cmdline = &cmdline };
	return scenario->run(&env);
}

/* Called from entry.S with %rsi (boot_params) as the argument. */
__attribute__((noreturn)) void guest_main(uint64_t boot_params);

void guest_main(uint64_t boot_params)
{
	uint64_t rsdp_hint = 0;
	const char *why;

	serial_init();
	why = run(boot_params, &rsdp_hint);
	if (why)
		protocol_fail(why);
	else
		protocol_pass();
	power_off(rsdp_hint);
}
