/* The scenarios that drive PCI devices (often passed through from the host
 * with VFIO), each in its own file. */
#ifndef GUEST_SCENARIOS_PCI_H
#define GUEST_SCENARIOS_PCI_H

#include "scenario.h"

const char *scenario_bar_rw(const struct guest_env *env);
const char *scenario_edu(const struct guest_env *env);
const char *scenario_edu_p2p(const struct guest_env *env);
const char *scenario_msix(const struct guest_env *env);
const char *scenario_pci_wait(const struct guest_env *env);
const char *scenario_hotplug_cycle(const struct guest_env *env);

#endif
