/* Ending the run: the VMM notices the power-off and stops the VM. */
#ifndef GUEST_POWER_H
#define GUEST_POWER_H

#include <stdint.h>

/* Powers off through the FADT's SLEEP_CONTROL_REG. Without a usable one it
 * reports FAIL, then tries the platform's fixed port; it never returns. */
__attribute__((noreturn)) void power_off(uint64_t rsdp_hint);

#endif
