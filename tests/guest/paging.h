/* Extending the VMM's identity map beyond 4 GiB.
 *
 * The VMM maps only the first 4 GiB, but 64-bit BARs live above RAM. This adds
 * identity mappings (2 MiB pages) for any physical range, with page-table
 * pages taken from a fixed pool in the guest's BSS.
 */
#ifndef GUEST_PAGING_H
#define GUEST_PAGING_H

#include <stdbool.h>
#include <stdint.h>

/* Identity-maps [addr, addr + len), uncached, where it is not mapped yet.
 * Returns NULL or why it could not (beyond the CPU's physical-address width,
 * out of page-table pages, page tables not reachable). */
const char *paging_map_identity(uint64_t addr, uint64_t len);

/* The CPU's physical-address width in bits (CPUID 0x80000008). */
unsigned paging_phys_bits(void);

#endif
