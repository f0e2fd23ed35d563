/* Access to guest-physical memory.
 *
 * The VMM identity-maps exactly the first 4 GiB, so a physical address is a
 * pointer there and nothing else may be touched: every address that comes
 * from a table or the boot parameters is range-checked here before use.
 */
#ifndef GUEST_PHYS_H
#define GUEST_PHYS_H

#include <stdbool.h>
#include <stdint.h>

#define PHYS_MAPPED_LIMIT 0x100000000ULL

static inline bool phys_range_ok(uint64_t addr, uint64_t len)
{
	return addr < PHYS_MAPPED_LIMIT && len <= PHYS_MAPPED_LIMIT - addr;
}

static inline const uint8_t *phys_bytes(uint64_t addr)
{
	return (const uint8_t *)(uintptr_t)addr;
}

#endif
