#include "lapic.h"

#include "cpu.h"
#include "format.h"
#include "io.h"

#define MSR_APIC_BASE 0x1B
#define APIC_BASE_ENABLE (1ULL << 11)
#define APIC_BASE_X2APIC (1ULL << 10)
#define APIC_BASE_ADDR_MASK 0x000FFFFFFFFFF000ULL

#define REG_ID 0x20
#define REG_TPR 0x80
#define REG_EOI 0xB0
#define REG_SVR 0xF0
#define REG_LVT_TIMER 0x320
#define REG_TIMER_INITIAL 0x380
#define REG_TIMER_CURRENT 0x390
#define REG_TIMER_DIVIDE 0x3E0

#define SVR_ENABLE (1U << 8)
#define SPURIOUS_VECTOR 0xFF
#define LVT_MASKED (1U << 16)
#define LVT_PERIODIC (1U << 17)
#define TIMER_DIVIDE_BY_1 0xB
#define TIMER_START 0xFFFFFFFFU

/* How many reads a started timer gets to show it moves. */
#define TIMER_PROBE_READS 100000

static bool ready;
static uint32_t last_count;
static uint64_t elapsed_ns;

static uint32_t reg_read(uint32_t reg)
{
	return mmio_read32(LAPIC_MSI_ADDRESS + reg);
}

static void reg_write(uint32_t reg, uint32_t value)
{
	mmio_write32(LAPIC_MSI_ADDRESS + reg, value);
}

const char *lapic_init(void)
{
	uint64_t base = cpu_rdmsr(MSR_APIC_BASE);
	uint32_t first;

	if (ready)
		return 0;
	if (base & APIC_BASE_X2APIC)
		return "the local APIC is in x2APIC mode; this guest drives it as an xAPIC";
	if ((base & APIC_BASE_ADDR_MASK) != LAPIC_MSI_ADDRESS)
		return reasonf("the local APIC is at 0x%lx, not 0x%x",
			       (unsigned long)(base & APIC_BASE_ADDR_MASK), LAPIC_MSI_ADDRESS);
	if (!(base & APIC_BASE_ENABLE))
		cpu_wrmsr(MSR_APIC_BASE, base | APIC_BASE_ENABLE);

	reg_write(REG_SVR, SVR_ENABLE | SPURIOUS_VECTOR);
	reg_write(REG_TPR, 0);
	reg_write(REG_LVT_TIMER, LVT_MASKED | LVT_PERIODIC);
	reg_write(REG_TIMER_DIVIDE, TIMER_DIVIDE_BY_1);
	reg_write(REG_TIMER_INITIAL, TIMER_START);

	first = reg_read(REG_TIMER_CURRENT);
	for (unsigned i = 0; reg_read(REG_TIMER_CURRENT) == first; i++) {
		if (i == TIMER_PROBE_READS)
			return reasonf("the local APIC timer does not count (stuck at 0x%x)", first);
		cpu_relax();
	}
	last_count = first;
	elapsed_ns = 0;
	ready = true;
	return 0;
}

uint8_t lapic_id(void)
{
	return (uint8_t)(reg_read(REG_ID) >> 24);
}

void lapic_eoi(void)
{
	reg_write(REG_EOI, 0);
}

uint64_t lapic_clock_ns(void)
{
	uint32_t now = reg_read(REG_TIMER_CURRENT);

	/* Counts down and wraps (periodic): the difference modulo 2^32. */
	elapsed_ns += (uint32_t)(last_count - now);
	last_count = now;
	return elapsed_ns;
}

void lapic_delay_ms(uint64_t ms)
{
	uint64_t end = lapic_clock_ns() + ms * 1000000;

	while (lapic_clock_ns() < end)
		cpu_relax();
}
