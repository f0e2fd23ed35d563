#include "protocol.h"

#include "serial.h"

void protocol_scenario(const char *name)
{
	serial_printf(PROTOCOL_PREFIX "scenario %s\n", name);
}

void protocol_pass(void)
{
	serial_printf(PROTOCOL_PREFIX "PASS\n");
}

void protocol_fail(const char *reason)
{
	serial_printf(PROTOCOL_PREFIX "FAIL %s\n", reason);
}
