/* The lines a test reads from the serial console:
 *
 *   form-test-guest: scenario <name>
 *   ...the scenario's own lines...
 *   form-test-guest: PASS            or   form-test-guest: FAIL <reason>
 *
 * after which the guest powers off.
 */
#ifndef GUEST_PROTOCOL_H
#define GUEST_PROTOCOL_H

#define PROTOCOL_PREFIX "form-test-guest: "

void protocol_scenario(const char *name);
void protocol_pass(void);
void protocol_fail(const char *reason);

#endif
