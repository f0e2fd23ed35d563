#include "paging.h"

#include "cpu.h"
#include "format.h"
#include "phys.h"

#define PTE_PRESENT (1ULL << 0)
#define PTE_WRITABLE (1ULL << 1)
#define PTE_WRITE_THROUGH (1ULL << 3)
#define PTE_CACHE_DISABLE (1ULL << 4)
#define PTE_LARGE (1ULL << 7)
#define PTE_ADDR_MASK 0x000FFFFFFFFFF000ULL

#define ENTRIES_PER_TABLE 512
#define PAGE_2M (1ULL << 21)
#define PAGE_1G (1ULL << 30)

/* One PD per GiB mapped above 4 GiB, plus a PDPT per 512 GiB: enough for a
 * scenario that touches a few windows of a large BAR. */
#define POOL_PAGES 16

static uint64_t pool[POOL_PAGES][ENTRIES_PER_TABLE] __attribute__((aligned(4096)));
static unsigned pool_used;

unsigned paging_phys_bits(void)
{
	if (cpu_cpuid(0x80000000, 0).eax < 0x80000008)
		return 36; /* what the architecture guarantees without the leaf */
	return cpu_cpuid(0x80000008, 0).eax & 0xFF;
}

/* The table an entry points to, creating it when the entry is empty. The
 * table must lie in the first 4 GiB, where it can be reached. */
static const char *next_table(uint64_t *entry, uint64_t **out)
{
	uint64_t next;

	if (!(*entry & PTE_PRESENT)) {
		if (pool_used == POOL_PAGES)
			return reasonf("out of page-table pages (%u used)", POOL_PAGES);
		*entry = (uint64_t)(uintptr_t)pool[pool_used++] | PTE_PRESENT | PTE_WRITABLE;
	}
	next = *entry & PTE_ADDR_MASK;
	if (!phys_range_ok(next, 4096))
		return reasonf("page table at 0x%lx is beyond the mapped 4 GiB",
			       (unsigned long)next);
	*out = (uint64_t *)(uintptr_t)next;
	return 0;
}

/* Maps the 2 MiB page at addr unless a mapping covers it already (the VMM's
 * or an earlier call's, both identity maps). */
static const char *map_2m(uint64_t *pml4, uint64_t addr)
{
	uint64_t *pdpt, *pd, *entry;
	const char *why;

	why = next_table(&pml4[(addr >> 39) % ENTRIES_PER_TABLE], &pdpt);
	if (why)
		return why;
	entry = &pdpt[(addr >> 30) % ENTRIES_PER_TABLE];
	if ((*entry & (PTE_PRESENT | PTE_LARGE)) == (PTE_PRESENT | PTE_LARGE))
		return 0;
	why = next_table(entry, &pd);
	if (why)
		return why;
	entry = &pd[(addr >> 21) % ENTRIES_PER_TABLE];
	if (!(*entry & PTE_PRESENT))
		*entry = addr | PTE_PRESENT | PTE_WRITABLE | PTE_LARGE | PTE_WRITE_THROUGH |
			 PTE_CACHE_DISABLE;
	return 0;
}

const char *paging_map_identity(uint64_t addr, uint64_t len)
{
	uint64_t cr3 = cpu_read_cr3(), pml4_addr = cr3 & PTE_ADDR_MASK;
	unsigned bits = paging_phys_bits();
	uint64_t limit = bits >= 64 ? ~0ULL : 1ULL << bits;
	const char *why;

	if (!len)
		return 0;
	if (addr >= limit || len > limit - addr)
		return reasonf("0x%lx+0x%lx is beyond the CPU's %u-bit physical addresses",
			       (unsigned long)addr, (unsigned long)len, bits);
	if (!phys_range_ok(pml4_addr, 4096))
		return reasonf("CR3 0x%lx is beyond the mapped 4 GiB", (unsigned long)cr3);

	for (uint64_t page = addr & ~(PAGE_2M - 1); page < addr + len; page += PAGE_2M) {
		why = map_2m((uint64_t *)(uintptr_t)pml4_addr, page);
		if (why)
			return why;
	}
	cpu_write_cr3(cr3);
	return 0;
}
