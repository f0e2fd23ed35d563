/* The scenarios. To add one, write a `scenario_fn` and list it in
 * `scenarios[]`; its parameters come from the command line as key=value. */
#include <stdbool.h>

#include "acpi.h"
#include "format.h"
#include "pci.h"
#include "scenario.h"
#include "scenario_util.h"
#include "scenarios_pci.h"
#include "scenarios_virtio.h"
#include "serial.h"
#include "str.h"

static const char *scenario_hello(const struct guest_env *env)
{
	(void)env;
	serial_printf("Hello from the form-vmm test guest\n");
	return 0;
}

/* Counts the processors the MADT describes. With expect=N it also checks
 * the count, so a test can let the guest do the comparison. */
static const char *scenario_smp(const struct guest_env *env)
{
	struct acpi_table madt;
	const char *why;
	unsigned cpus;
	uint64_t expected;
	bool check;

	why = param_u64(env, "expect", &expected, &check);
	if (why)
		return why;
	if (acpi_find_table(env->rsdp_hint, "APIC", &madt, &why) != ACPI_FOUND)
		return why;
	why = acpi_madt_count_cpus(&madt, &cpus);
	if (why)
		return why;
	serial_printf("cpus: %u\n", cpus);
	if (!cpus)
		return "MADT lists no enabled processor";
	if (check && cpus != expected)
		return reasonf("expected %lu cpus, MADT lists %u", (unsigned long)expected, cpus);
	return 0;
}

static void pci_print_function(const struct pci_ecam *ecam, uint8_t bus, uint8_t dev,
			       uint8_t fn, uint32_t id)
{
	uint32_t class_rev = pci_cfg_read32(ecam, bus, dev, fn, PCI_CFG_CLASS_REV);

	serial_printf("pci %02x:%02x.%x %04x:%04x class %06x\n", bus, dev, fn, id & 0xFFFF,
		      id >> 16, class_rev >> 8);
}

/* Lists every function on one bus; returns how many. */
static unsigned pci_scan_bus(const struct pci_ecam *ecam, uint8_t bus)
{
	unsigned found = 0;

	for (uint8_t dev = 0; dev < PCI_DEVICES_PER_BUS; dev++) {
		uint8_t functions = 1;

		for (uint8_t fn = 0; fn < functions; fn++) {
			uint32_t id = pci_cfg_read32(ecam, bus, dev, fn, PCI_CFG_ID);

			if ((id & 0xFFFF) == PCI_VENDOR_NONE) {
				if (fn == 0)
					break;
				continue;
			}
			if (fn == 0) {
				uint32_t hdr = pci_cfg_read32(ecam, bus, dev, 0,
							      PCI_CFG_HEADER_DWORD);

				if ((hdr >> 16) & PCI_HEADER_MULTIFUNCTION)
					functions = PCI_FUNCTIONS_PER_DEVICE;
			}
			pci_print_function(ecam, bus, dev, fn, id);
			found++;
		}
	}
	return found;
}

/* Lists every function on every bus the ECAM window covers (bus 0 and the
 * VMM's other root buses), the way a firmware's first scan would. */
static const char *scenario_pci_scan(const struct guest_env *env)
{
	struct pci_ecam ecam;
	const char *why;
	unsigned found = 0;

	why = pci_ecam_find(env->rsdp_hint, &ecam);
	if (why)
		return why;
	serial_printf("ecam: 0x%lx (%s)\n", (unsigned long)ecam.base,
		      ecam.from_mcfg ? "MCFG" : "no MCFG, platform default");

	for (unsigned bus = ecam.start_bus; bus <= ecam.end_bus; bus++)
		found += pci_scan_bus(&ecam, (uint8_t)bus);
	serial_printf("pci-devices: %u\n", found);
	return 0;
}

static const struct scenario scenarios[] = {
	{ "hello", scenario_hello },
	{ "smp", scenario_smp },
	{ "pci-scan", scenario_pci_scan },
	{ "bar-rw", scenario_bar_rw },
	{ "edu", scenario_edu },
	{ "edu-p2p", scenario_edu_p2p },
	{ "msix", scenario_msix },
	{ "pci-wait", scenario_pci_wait },
	{ "hotplug-cycle", scenario_hotplug_cycle },
	{ "virtio-blk", scenario_virtio_blk },
	{ "virtio-blk-ro", scenario_virtio_blk_ro },
	{ "virtio-rng", scenario_virtio_rng },
};

const struct scenario *scenario_find(const char *name)
{
	for (unsigned i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
		if (str_eq(scenarios[i].name, name))
			return &scenarios[i];
	}
	return 0;
}
