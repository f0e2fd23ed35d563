/* The scenarios that drive virtio-pci devices the VMM emulates. */
#ifndef GUEST_SCENARIOS_VIRTIO_H
#define GUEST_SCENARIOS_VIRTIO_H

#include "scenario.h"

const char *scenario_virtio_blk(const struct guest_env *env);
const char *scenario_virtio_blk_ro(const struct guest_env *env);
const char *scenario_virtio_rng(const struct guest_env *env);

#endif
