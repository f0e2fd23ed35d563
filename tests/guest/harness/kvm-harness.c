/* kvm-harness: runs the form-vmm test guest in a minimal KVM VM, to check the
 * guest on its own, without the VMM.
 *
 * It does what the VMM's 64-bit boot path promises the guest (platform.md):
 * loads the ELF's PT_LOAD segments, enters e_entry in long mode with the first
 * 4 GiB identity-mapped by 2 MiB pages, a flat GDT, interrupts off and %rsi at
 * a boot_params at 0x7000 with a command line and acpi_rsdp_addr. It builds
 * RSDP, XSDT, FADT, MADT and MCFG, emulates COM1 output and a few PCI
 * functions behind ECAM, and exits when the guest powers off. Options break
 * the tables on purpose, so the guest's error paths can be checked too.
 *
 * Guest serial output and the harness's own "harness:" lines go to stdout.
 * Exit status: 0 the guest powered off, 1 usage or setup error, 2 the guest
 * stopped any other way (HLT, shutdown, bad exit), 3 timeout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <elf.h>

#define MEM_SIZE (32ULL << 20)

/* Low-memory layout, as the VMM lays it out. */
#define GDT_ADDR 0x500
#define BOOT_PARAMS_ADDR 0x7000
#define PML4_ADDR 0x9000
#define PDPT_ADDR 0xA000
#define PD_ADDR 0xB000 /* four PDs: 0xB000-0xEFFF */
#define CMDLINE_ADDR 0x20000
#define CMDLINE_MAX 4096
#define ACPI_ADDR 0xE0000
#define RSDP_SCAN_ADDR 0xF0010 /* where --rsdp-scan puts the real RSDP */
#define HIGHMEM_START 0x100000

#define BP_ACPI_RSDP_ADDR 0x070
#define BP_EXT_CMD_LINE_PTR 0x0C8
#define BP_HDR_CMD_LINE_PTR 0x228

#define COM1 0x3F8
#define UART_LCR (COM1 + 3)
#define UART_LSR (COM1 + 5)
#define UART_LCR_DLAB 0x80
#define UART_LSR_THR_EMPTY 0x60
#define PLATFORM_SLEEP_PORT 0x600
#define SLEEP_S5_ENABLE 0x34

#define ECAM_DEFAULT 0xE8000000ULL
#define ECAM_SIZE (1ULL << 20) /* bus 0 only */

struct options {
	const char *elf;
	const char *cmdline;
	unsigned cpus;
	unsigned x2apic;
	bool no_acpi;
	bool rsdp_scan;
	bool rsdp_addr_set;
	uint64_t rsdp_addr;
	bool boot_params_set;
	uint64_t boot_params;
	const char *corrupt;
	const char *omit;
	unsigned fadt_revision;
	unsigned sleep_port;
	uint64_t ecam;
	bool no_devices;
	bool lab_devices;
	bool no_p2p;
	bool irqchip;
	unsigned hotplug_ms;
	unsigned timeout;
};

static uint8_t *mem;
static int vm_fd;
static bool at_line_start = true;
static uint8_t uart_lcr;

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "kvm-harness: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

/* A harness line on stdout, on a line of its own after the guest's output. */
static void report(const char *fmt, ...)
{
	va_list ap;

	if (!at_line_start)
		putchar('\n');
	va_start(ap, fmt);
	printf("harness: ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	fflush(stdout);
	at_line_start = true;
}

static void on_timeout(int sig)
{
	static const char msg[] = "\nharness: timeout: the guest neither powered off nor stopped\n";

	(void)sig;
	if (write(STDOUT_FILENO, msg, sizeof(msg) - 1) < 0) {
		/* Nothing left to report with; the exit status says it. */
	}
	_exit(3);
}

static void put16(uint64_t addr, uint16_t v) { memcpy(mem + addr, &v, 2); }
static void put32(uint64_t addr, uint32_t v) { memcpy(mem + addr, &v, 4); }
static void put64(uint64_t addr, uint64_t v) { memcpy(mem + addr, &v, 8); }

static uint64_t parse_num(const char *opt, const char *s)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || !*s || *end)
		die("%s: '%s' is not a number", opt, s);
	return v;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: kvm-harness [options] GUEST.elf 'CMDLINE'\n"
		"  --cpus N          enabled Local APIC entries in the MADT (default 1)\n"
		"  --x2apic N        enabled Local x2APIC entries in the MADT (default 0)\n"
		"  --no-acpi         no ACPI tables, acpi_rsdp_addr 0\n"
		"  --rsdp-scan       acpi_rsdp_addr 0; RSDP at 0x%x after a decoy at 0x%x\n"
		"  --rsdp-addr A     put A in boot_params.acpi_rsdp_addr\n"
		"  --boot-params A   enter with %%rsi = A instead of 0x%x\n"
		"  --corrupt SIG     break the checksum of RSDP, XSDT, FACP, APIC or MCFG\n"
		"  --omit SIG        leave FACP, APIC or MCFG out of the XSDT\n"
		"  --fadt-revision N FADT revision (default 6)\n"
		"  --sleep-port P    FADT SLEEP_CONTROL_REG port (default 0x600)\n"
		"  --ecam A          ECAM base in the MCFG and for the fake devices\n"
		"  --no-devices      ECAM reads return all ones\n"
		"  --irqchip         in-kernel LAPIC/IOAPIC (HLT then never exits)\n"
		"  --lab-devices     the VFIO lab's devices instead: RAM-backed BARs (VGA BAR0,\n"
		"                    ivshmem's 8 GiB BAR2 above 4 GiB) and an edu with DMA (to\n"
		"                    RAM and to those BARs) and MSI; implies --irqchip\n"
		"  --no-p2p          with --lab-devices: edu's DMA reaches guest RAM but not the\n"
		"                    BARs, as when a VMM leaves them out of the IOMMU\n"
		"  --hotplug-cycle MS with --lab-devices: edu is absent, present, asked back\n"
		"                    through PCID (gone once ejected or after MS/2), absent,\n"
		"                    then present, for MS ms each (add/remove/add)\n"
		"  --timeout S       give up after S seconds (default 10)\n",
		RSDP_SCAN_ADDR, ACPI_ADDR, BOOT_PARAMS_ADDR);
	exit(1);
}

static void parse_args(int argc, char **argv, struct options *o)
{
	int i;

	*o = (struct options){ .cpus = 1, .fadt_revision = 6,
			       .sleep_port = PLATFORM_SLEEP_PORT,
			       .ecam = ECAM_DEFAULT, .timeout = 10 };
	for (i = 1; i < argc && !strncmp(argv[i], "--", 2); i++) {
		const char *opt = argv[i];
		const char *arg = i + 1 < argc ? argv[i + 1] : NULL;
		bool takes_arg = true;

		if (!strcmp(opt, "--no-acpi"))
			o->no_acpi = true, takes_arg = false;
		else if (!strcmp(opt, "--rsdp-scan"))
			o->rsdp_scan = true, takes_arg = false;
		else if (!strcmp(opt, "--no-devices"))
			o->no_devices = true, takes_arg = false;
		else if (!strcmp(opt, "--lab-devices"))
			o->lab_devices = true, o->irqchip = true, takes_arg = false;
		else if (!strcmp(opt, "--no-p2p"))
			o->no_p2p = true, takes_arg = false;
		else if (!strcmp(opt, "--irqchip"))
			o->irqchip = true, takes_arg = false;
		else if (!arg)
			usage();
		else if (!strcmp(opt, "--cpus"))
			o->cpus = parse_num(opt, arg);
		else if (!strcmp(opt, "--x2apic"))
			o->x2apic = parse_num(opt, arg);
		else if (!strcmp(opt, "--rsdp-addr"))
			o->rsdp_addr = parse_num(opt, arg), o->rsdp_addr_set = true;
		else if (!strcmp(opt, "--boot-params"))
			o->boot_params = parse_num(opt, arg), o->boot_params_set = true;
		else if (!strcmp(opt, "--corrupt"))
			o->corrupt = arg;
		else if (!strcmp(opt, "--omit"))
			o->omit = arg;
		else if (!strcmp(opt, "--fadt-revision"))
			o->fadt_revision = parse_num(opt, arg);
		else if (!strcmp(opt, "--sleep-port"))
			o->sleep_port = parse_num(opt, arg);
		else if (!strcmp(opt, "--ecam"))
			o->ecam = parse_num(opt, arg);
		else if (!strcmp(opt, "--hotplug-cycle"))
			o->hotplug_ms = parse_num(opt, arg);
		else if (!strcmp(opt, "--timeout"))
			o->timeout = parse_num(opt, arg);
		else
			usage();
		if (takes_arg)
			i++;
	}
	if (argc - i != 2)
		usage();
	o->elf = argv[i];
	o->cmdline = argv[i + 1];
	if (o->cpus > 200 || o->x2apic > 200)
		die("at most 200 CPUs of each kind");
	if (o->sleep_port > 0xFFFF)
		die("--sleep-port must be a port number");
}

/* Loads PT_LOAD segments at their physical addresses, as the VMM's ELF
 * loader does; returns the entry point. */
static uint64_t load_elf(const char *path)
{
	int fd = open(path, O_RDONLY);
	struct stat st;
	uint8_t *file;
	Elf64_Ehdr eh;

	if (fd < 0 || fstat(fd, &st))
		die("cannot open %s: %s", path, strerror(errno));
	if ((size_t)st.st_size < sizeof(eh))
		die("%s is too small to be an ELF", path);
	file = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (file == MAP_FAILED)
		die("cannot map %s: %s", path, strerror(errno));
	close(fd);
	memcpy(&eh, file, sizeof(eh));
	if (memcmp(eh.e_ident, ELFMAG, SELFMAG) || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh.e_machine != EM_X86_64)
		die("%s is not an x86_64 ELF64 file", path);
	if (eh.e_phentsize != sizeof(Elf64_Phdr) ||
	    eh.e_phoff + (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr) > (uint64_t)st.st_size)
		die("%s: bad program header table", path);

	for (unsigned i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;

		memcpy(&ph, file + eh.e_phoff + i * sizeof(ph), sizeof(ph));
		if (ph.p_type == PT_NOTE)
			die("%s has a PT_NOTE: the test guest must not carry a PVH note", path);
		if (ph.p_type != PT_LOAD)
			continue;
		if (!ph.p_filesz && ph.p_memsz)
			die("%s: segment %u has no file contents; linux-loader would skip it and "
			    "its memory", path, i);
		if (ph.p_paddr < HIGHMEM_START || ph.p_memsz > MEM_SIZE ||
		    ph.p_paddr > MEM_SIZE - ph.p_memsz || ph.p_filesz > ph.p_memsz ||
		    ph.p_offset + ph.p_filesz > (uint64_t)st.st_size)
			die("%s: segment %u (paddr 0x%llx, memsz 0x%llx) does not fit", path, i,
			    (unsigned long long)ph.p_paddr, (unsigned long long)ph.p_memsz);
		memcpy(mem + ph.p_paddr, file + ph.p_offset, ph.p_filesz);
		/* Left as the loader leaves it: fresh memory is zero, and the guest
		 * must clear its own BSS anyway. Poison it to prove that. */
		memset(mem + ph.p_paddr + ph.p_filesz, 0xA5, ph.p_memsz - ph.p_filesz);
	}
	munmap(file, st.st_size);
	return eh.e_entry;
}

/* --- ACPI tables ------------------------------------------------------- */

static uint64_t acpi_next = ACPI_ADDR + 0x100;

static void acpi_checksum(uint64_t addr, uint32_t len, unsigned sum_offset)
{
	uint8_t sum = 0;

	mem[addr + sum_offset] = 0;
	for (uint32_t i = 0; i < len; i++)
		sum += mem[addr + i];
	mem[addr + sum_offset] = (uint8_t)-sum;
}

static bool is(const char *opt, const char *sig)
{
	return opt && !strcmp(opt, sig);
}

static void table_header(uint64_t addr, const char *sig, uint32_t len, uint8_t revision)
{
	memcpy(mem + addr, sig, 4);
	put32(addr + 4, len);
	mem[addr + 8] = revision;
	memcpy(mem + addr + 10, "FORMVM", 6);
	memcpy(mem + addr + 16, "FORMTEST", 8);
	put32(addr + 24, 1);
	memcpy(mem + addr + 28, "FHAR", 4);
	put32(addr + 32, 1);
}

static void table_finish(uint64_t addr, const struct options *o)
{
	char sig[5] = { 0 };
	uint32_t len;

	memcpy(sig, mem + addr, 4);
	memcpy(&len, mem + addr + 4, 4);
	acpi_checksum(addr, len, 9);
	if (is(o->corrupt, sig))
		mem[addr + 9] ^= 0x5A;
}

static uint64_t table_alloc(uint32_t len)
{
	uint64_t addr = acpi_next;

	acpi_next = (acpi_next + len + 15) & ~15ULL;
	if (acpi_next > 0xF0000)
		die("ACPI tables do not fit below 0xF0000");
	return addr;
}

static uint64_t build_fadt(const struct options *o)
{
	const uint32_t len = 276; /* ACPI 6.x FADT */
	uint64_t a = table_alloc(len);

	table_header(a, "FACP", len, (uint8_t)o->fadt_revision);
	put32(a + 112, 1u << 20); /* Flags: HW_REDUCED_ACPI */
	/* SLEEP_CONTROL_REG: system I/O, 8 bits, byte access. */
	mem[a + 244] = 1;
	mem[a + 245] = 8;
	mem[a + 246] = 0;
	mem[a + 247] = 1;
	put64(a + 248, o->sleep_port);
	/* SLEEP_STATUS_REG, same port, as the platform has it. */
	mem[a + 256] = 1;
	mem[a + 257] = 8;
	mem[a + 259] = 1;
	put64(a + 260, o->sleep_port);
	table_finish(a, o);
	return a;
}

static uint64_t build_madt(const struct options *o)
{
	/* Enabled LAPICs, one disabled LAPIC that must not count, an IOAPIC,
	 * then the x2APICs. */
	uint32_t len = 44 + 8 * (o->cpus + 1) + 12 + 16 * o->x2apic;
	uint64_t a = table_alloc(len);
	uint64_t e = a + 44;

	table_header(a, "APIC", len, 5);
	put32(a + 36, 0xFEE00000);
	for (unsigned i = 0; i <= o->cpus; i++, e += 8) {
		mem[e] = 0;
		mem[e + 1] = 8;
		mem[e + 2] = (uint8_t)i;
		mem[e + 3] = (uint8_t)i;
		put32(e + 4, i < o->cpus ? 1 : 0);
	}
	mem[e] = 1;
	mem[e + 1] = 12;
	mem[e + 2] = (uint8_t)(o->cpus + 1);
	put32(e + 4, 0xFEC00000);
	e += 12;
	for (unsigned i = 0; i < o->x2apic; i++, e += 16) {
		mem[e] = 9;
		mem[e + 1] = 16;
		put32(e + 4, 256 + i);
		put32(e + 8, 1);
		put32(e + 12, 256 + i);
	}
	table_finish(a, o);
	return a;
}

static uint64_t build_mcfg(const struct options *o)
{
	const uint32_t len = 44 + 16;
	uint64_t a = table_alloc(len);

	table_header(a, "MCFG", len, 1);
	put64(a + 44, o->ecam);
	put16(a + 52, 0);
	mem[a + 54] = 0;
	mem[a + 55] = 0;
	table_finish(a, o);
	return a;
}

static void build_acpi(const struct options *o, uint64_t *rsdp_addr)
{
	uint64_t tables[3];
	unsigned n = 0;
	uint64_t xsdt, rsdp;

	if (!is(o->omit, "FACP"))
		tables[n++] = build_fadt(o);
	if (!is(o->omit, "APIC"))
		tables[n++] = build_madt(o);
	if (!is(o->omit, "MCFG"))
		tables[n++] = build_mcfg(o);

	xsdt = table_alloc(36 + 8 * n);
	table_header(xsdt, "XSDT", 36 + 8 * n, 1);
	for (unsigned i = 0; i < n; i++)
		put64(xsdt + 36 + 8 * i, tables[i]);
	table_finish(xsdt, o);

	rsdp = o->rsdp_scan ? RSDP_SCAN_ADDR : ACPI_ADDR;
	if (o->rsdp_scan) {
		/* A decoy with the signature and a bad checksum comes first. */
		memcpy(mem + ACPI_ADDR, "RSD PTR ", 8);
		mem[ACPI_ADDR + 8] = 0x01;
	}
	memcpy(mem + rsdp, "RSD PTR ", 8);
	memcpy(mem + rsdp + 9, "FORMVM", 6);
	mem[rsdp + 15] = 2;
	put32(rsdp + 20, 36);
	put64(rsdp + 24, xsdt);
	acpi_checksum(rsdp, 20, 8);
	acpi_checksum(rsdp, 36, 32);
	if (is(o->corrupt, "RSDP"))
		mem[rsdp + 8] ^= 0x5A;
	*rsdp_addr = rsdp;
}

/* --- boot state -------------------------------------------------------- */

static void build_boot(const struct options *o)
{
	uint64_t rsdp = 0;
	size_t cmdlen = strlen(o->cmdline);

	/* GDT: null, 64-bit code (0x08), data (0x10). */
	put64(GDT_ADDR + 0, 0);
	put64(GDT_ADDR + 8, 0x00AF9B000000FFFFULL);
	put64(GDT_ADDR + 16, 0x00CF93000000FFFFULL);

	/* 4 GiB identity map with 2 MiB pages. */
	put64(PML4_ADDR, PDPT_ADDR | 0x3);
	for (uint64_t i = 0; i < 4; i++) {
		put64(PDPT_ADDR + 8 * i, (PD_ADDR + 0x1000 * i) | 0x3);
		for (uint64_t j = 0; j < 512; j++)
			put64(PD_ADDR + 0x1000 * i + 8 * j, ((i << 30) | (j << 21)) | 0x83);
	}

	if (cmdlen >= CMDLINE_MAX)
		die("command line longer than %d bytes", CMDLINE_MAX - 1);
	memcpy(mem + CMDLINE_ADDR, o->cmdline, cmdlen + 1);
	put32(BOOT_PARAMS_ADDR + BP_HDR_CMD_LINE_PTR, CMDLINE_ADDR);
	put32(BOOT_PARAMS_ADDR + BP_EXT_CMD_LINE_PTR, 0);

	if (!o->no_acpi)
		build_acpi(o, &rsdp);
	if (o->rsdp_scan)
		rsdp = 0;
	if (o->rsdp_addr_set)
		rsdp = o->rsdp_addr;
	put64(BOOT_PARAMS_ADDR + BP_ACPI_RSDP_ADDR, rsdp);
}

static void setup_vcpu(int kvm, int vcpu, uint64_t entry, const struct options *o)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	struct kvm_segment code = {
		.base = 0, .limit = 0xFFFFFFFF, .selector = 0x08, .type = 0xB, .present = 1,
		.dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1,
	};
	struct kvm_segment data = {
		.base = 0, .limit = 0xFFFFFFFF, .selector = 0x10, .type = 0x3, .present = 1,
		.dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1,
	};
	const unsigned max_cpuid = 128;
	struct kvm_cpuid2 *cpuid;

	cpuid = calloc(1, sizeof(*cpuid) + max_cpuid * sizeof(cpuid->entries[0]));
	if (!cpuid)
		die("out of memory");
	cpuid->nent = max_cpuid;
	if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) || ioctl(vcpu, KVM_SET_CPUID2, cpuid))
		die("setting CPUID: %s", strerror(errno));
	free(cpuid);

	if (ioctl(vcpu, KVM_GET_SREGS, &sregs))
		die("KVM_GET_SREGS: %s", strerror(errno));
	sregs.cs = code;
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
	sregs.gdt.base = GDT_ADDR;
	sregs.gdt.limit = 3 * 8 - 1;
	sregs.cr3 = PML4_ADDR;
	sregs.cr4 = 1u << 5;                 /* PAE */
	sregs.cr0 = 0x80000001u | (1u << 4) | (1u << 5) | (1u << 16); /* PG PE ET NE WP */
	sregs.efer = (1u << 8) | (1u << 10); /* LME LMA */
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs))
		die("KVM_SET_SREGS: %s", strerror(errno));

	memset(&regs, 0, sizeof(regs));
	regs.rip = entry;
	regs.rsi = o->boot_params_set ? o->boot_params : BOOT_PARAMS_ADDR;
	regs.rflags = 0x2;
	regs.rsp = 0; /* the guest must set up its own stack */
	if (ioctl(vcpu, KVM_SET_REGS, &regs))
		die("KVM_SET_REGS: %s", strerror(errno));
}

/* --- devices ----------------------------------------------------------- */

#define FAKE_BARS 6
#define FAKE_CONFIG_DWORDS 1024
#define EDU_BUFFER_ADDR 0x40000
#define EDU_BUFFER_SIZE 4096

struct fake_bar {
	uint64_t addr;    /* where it is placed and backed (or trapped) */
	uint64_t size;    /* 0: no BAR here (or the upper half of a 64-bit one) */
	bool is_64;
	bool prefetchable;
	bool ram;         /* backed by a memory slot; otherwise trapped */
};

struct fake_function {
	unsigned dev, fn;
	uint32_t id;        /* device << 16 | vendor */
	uint32_t class_rev; /* class << 8 | revision */
	uint8_t header_type;
	bool all_functions; /* decodes every function number, as some devices do */
	struct fake_bar bars[FAKE_BARS];
	bool msi;           /* a 64-bit MSI capability at 0x40 */
	uint64_t bar_value[FAKE_BARS]; /* what the guest last wrote */
	uint32_t config[FAKE_CONFIG_DWORDS]; /* command, MSI registers */
};

/* Bus 0: a host bridge, a single-function device that answers on every
 * function number (the guest must still list it once), and a multifunction
 * device with a gap at function 1. */
static struct fake_function plain_functions[] = {
	{ .dev = 0x00, .fn = 0, .id = 0x0D578086, .class_rev = 0x06000000, .header_type = 0x00, .all_functions = false },
	{ .dev = 0x01, .fn = 0, .id = 0x11E81234, .class_rev = 0x00FF0010, .header_type = 0x00, .all_functions = true },
	{ .dev = 0x1F, .fn = 0, .id = 0x29188086, .class_rev = 0x06010002, .header_type = 0x80, .all_functions = false },
	{ .dev = 0x1F, .fn = 2, .id = 0x29228086, .class_rev = 0x01060102, .header_type = 0x00, .all_functions = false },
	{ .dev = 0x1F, .fn = 3, .id = 0x29308086, .class_rev = 0x0C050002, .header_type = 0x00, .all_functions = false },
};

#define LAB_VGA_BAR0 0xC0000000ULL
#define LAB_VGA_BAR0_SIZE (16ULL << 20)
#define LAB_EDU_BAR0 0xC1000000ULL
#define LAB_EDU_BAR0_SIZE (1ULL << 20)
#define LAB_IVSHMEM_BAR2 0x200000000ULL
#define LAB_IVSHMEM_BAR2_SIZE (8ULL << 30)

/* What the VFIO lab passes through, as the VMM would present it: the std
 * VGA's framebuffer, edu, and ivshmem's 8 GiB BAR2 above 4 GiB. */
static struct fake_function lab_functions[] = {
	{ .dev = 0x00, .fn = 0, .id = 0x0D578086, .class_rev = 0x06000000, .header_type = 0x00, .all_functions = false },
	{ 0x01, 0, 0x11111234, 0x03000002, 0x00, false,
	  .bars = { [0] = { LAB_VGA_BAR0, LAB_VGA_BAR0_SIZE, false, true, true } } },
	{ 0x02, 0, 0x11E81234, 0x00FF0010, 0x00, false,
	  .bars = { [0] = { LAB_EDU_BAR0, LAB_EDU_BAR0_SIZE, false, false, false } },
	  .msi = true },
	{ 0x03, 0, 0x11101AF4, 0x05000001, 0x00, false,
	  .bars = { [2] = { LAB_IVSHMEM_BAR2, LAB_IVSHMEM_BAR2_SIZE, true, true, true } } },
};

static struct fake_function *functions = plain_functions;
static size_t function_count = sizeof(plain_functions) / sizeof(plain_functions[0]);

#define MSI_CAP 0x40
#define MSI_CONTROL_64BIT (1U << 7)
#define MSI_CONTROL_ENABLE 1U
#define STATUS_CAP_LIST (1U << 4)
#define COMMAND_BUS_MASTER (1U << 2)

/* The RAM-backed BARs, where edu's DMA reaches them (peer-to-peer, as
 * through an IOMMU that maps every BAR at its guest address). */
#define MAX_BAR_BACKINGS 8
static struct {
	uint64_t addr, size;
	uint8_t *host;
} bar_backings[MAX_BAR_BACKINGS];
static unsigned bar_backing_count;
static bool bar_dma_refused; /* --no-p2p */

static void map_ram(int vm, unsigned slot, uint64_t addr, uint64_t size)
{
	void *backing = mmap(NULL, size, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	struct kvm_userspace_memory_region region;

	if (backing == MAP_FAILED)
		die("cannot allocate 0x%llx bytes for a BAR: %s", (unsigned long long)size,
		    strerror(errno));
	region = (struct kvm_userspace_memory_region){
		.slot = slot, .guest_phys_addr = addr, .memory_size = size,
		.userspace_addr = (uintptr_t)backing,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region))
		die("mapping a BAR at 0x%llx: %s", (unsigned long long)addr, strerror(errno));
	if (bar_backing_count == MAX_BAR_BACKINGS)
		die("more than %u RAM-backed BARs", MAX_BAR_BACKINGS);
	bar_backings[bar_backing_count].addr = addr;
	bar_backings[bar_backing_count].size = size;
	bar_backings[bar_backing_count].host = backing;
	bar_backing_count++;
}

/* Where [addr, addr + len) of guest physical memory lives here: guest RAM or
 * one RAM-backed BAR; NULL for anything else. */
static uint8_t *dma_host(uint64_t addr, uint64_t len)
{
	if (addr <= MEM_SIZE && len <= MEM_SIZE - addr)
		return mem + addr;
	for (unsigned i = 0; i < bar_backing_count && !bar_dma_refused; i++) {
		uint64_t off = addr - bar_backings[i].addr;

		if (addr >= bar_backings[i].addr && off <= bar_backings[i].size &&
		    len <= bar_backings[i].size - off)
			return bar_backings[i].host + off;
	}
	return NULL;
}

static void lab_devices_init(int vm)
{
	unsigned slot = 1;

	functions = lab_functions;
	function_count = sizeof(lab_functions) / sizeof(lab_functions[0]);
	for (size_t i = 0; i < function_count; i++) {
		for (unsigned b = 0; b < FAKE_BARS; b++) {
			struct fake_bar *bar = &functions[i].bars[b];

			functions[i].bar_value[b] = bar->addr;
			if (bar->is_64 && b + 1 < FAKE_BARS)
				functions[i].bar_value[b + 1] = 0;
			if (bar->size && bar->ram)
				map_ram(vm, slot++, bar->addr, bar->size);
		}
	}
}

static struct timespec started;

#define HOTPLUG_PCID 0xF0001004ULL
#define HOTPLUG_PCEJ 0xF0001008ULL
static bool ejected;


/* Milliseconds since the guest started. */
static uint64_t run_ms(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)(now.tv_sec - started.tv_sec) * 1000 +
	       (uint64_t)(now.tv_nsec / 1000000) - (uint64_t)(started.tv_nsec / 1000000);
}

/* With --hotplug-cycle, the run goes through phases of MS ms: edu absent,
 * present, asked back (PCID), absent, then present for good. While it is
 * asked back it stays until the guest ejects it or half the phase passed
 * (form-vmm, too, takes a device back after a timeout). */
static uint64_t hotplug_phase(const struct options *o)
{
	return run_ms() / o->hotplug_ms;
}

static bool hotplugged_present(const struct options *o)
{
	uint64_t ms = run_ms(), phase = ms / o->hotplug_ms;

	if (phase == 2)
		return !ejected && ms % o->hotplug_ms < o->hotplug_ms / 2;
	return phase == 1 || phase >= 4;
}

static struct fake_function *function_at(const struct options *o, uint64_t offset)
{
	unsigned dev = (offset >> 15) & 0x1F, fn = (offset >> 12) & 0x7;

	if (o->no_devices)
		return NULL;
	for (size_t i = 0; i < function_count; i++) {
		struct fake_function *f = &functions[i];

		if (o->hotplug_ms && f == &lab_functions[2] && !hotplugged_present(o))
			continue;

		if (f->dev == dev && (f->fn == fn || f->all_functions))
			return f;
	}
	return NULL;
}

static uint32_t bar_read(const struct fake_function *f, unsigned index)
{
	const struct fake_bar *bar = &f->bars[index];

	if (!bar->size) {
		/* The upper half of a 64-bit BAR. */
		if (index > 0 && f->bars[index - 1].is_64)
			return (uint32_t)((f->bar_value[index - 1] &
					   ~(f->bars[index - 1].size - 1)) >> 32);
		return 0;
	}
	return (uint32_t)(f->bar_value[index] & ~(bar->size - 1) & 0xFFFFFFF0U) |
	       (bar->is_64 ? 0x4 : 0) | (bar->prefetchable ? 0x8 : 0);
}

static void bar_write(struct fake_function *f, unsigned index, uint32_t value)
{
	if (f->bars[index].size) {
		f->bar_value[index] = (f->bar_value[index] & ~0xFFFFFFFFULL) | (value & 0xFFFFFFF0U);
	} else if (index > 0 && f->bars[index - 1].is_64) {
		f->bar_value[index - 1] = (f->bar_value[index - 1] & 0xFFFFFFFFULL) |
					  ((uint64_t)value << 32);
	}
}

static uint32_t ecam_read_dword(const struct options *o, uint64_t offset)
{
	struct fake_function *f = function_at(o, offset);
	unsigned reg = offset & 0xFFC;

	if (!f)
		return 0xFFFFFFFF;
	switch (reg) {
	case 0x00:
		return f->id;
	case 0x04:
		return (f->config[1] & 0xFFFF) | (f->msi ? STATUS_CAP_LIST << 16 : 0);
	case 0x08:
		return f->class_rev;
	case 0x0C:
		return (uint32_t)f->header_type << 16;
	case 0x10 ... 0x24:
		return bar_read(f, (reg - 0x10) / 4);
	case 0x34:
		return f->msi ? MSI_CAP : 0;
	case MSI_CAP:
		if (!f->msi)
			return 0;
		return 0x05 | ((MSI_CONTROL_64BIT | (f->config[MSI_CAP / 4] >> 16 &
						     MSI_CONTROL_ENABLE)) << 16);
	case MSI_CAP + 4 ... MSI_CAP + 12:
		return f->msi ? f->config[reg / 4] : 0;
	default:
		return 0;
	}
}

static void ecam_write_dword(const struct options *o, uint64_t offset, uint32_t value)
{
	struct fake_function *f = function_at(o, offset);
	unsigned reg = offset & 0xFFC;

	if (!f || functions == plain_functions)
		return;
	if (reg == 0x04 || (reg >= MSI_CAP && reg <= MSI_CAP + 12 && f->msi))
		f->config[reg / 4] = value;
	else if (reg >= 0x10 && reg <= 0x24)
		bar_write(f, (reg - 0x10) / 4, value);
}

/* edu (QEMU's docs/specs/edu.rst): identification, liveness, interrupt
 * raise/acknowledge, and a DMA engine that finishes at once. */
static struct {
	uint32_t liveness;
	uint32_t irq_status;
	uint64_t dma_src, dma_dst, dma_count, dma_cmd;
	uint8_t buffer[EDU_BUFFER_SIZE];
} edu;

static void edu_signal(const struct fake_function *f)
{
	struct kvm_msi msi;

	if (!(f->config[MSI_CAP / 4] >> 16 & MSI_CONTROL_ENABLE) ||
	    !(f->config[1] & COMMAND_BUS_MASTER)) {
		report("edu: interrupt raised without MSI and bus mastering enabled");
		return;
	}
	msi = (struct kvm_msi){
		.address_lo = f->config[MSI_CAP / 4 + 1],
		.address_hi = f->config[MSI_CAP / 4 + 2],
		.data = f->config[MSI_CAP / 4 + 3] & 0xFFFF,
	};
	if (ioctl(vm_fd, KVM_SIGNAL_MSI, &msi) < 0)
		report("edu: KVM_SIGNAL_MSI: %s", strerror(errno));
}

/* Copies between guest memory (RAM or a RAM-backed BAR) and the device
 * buffer; out-of-range requests are reported and dropped, as a real device
 * would fault them. */
static void edu_dma(const struct fake_function *f)
{
	bool to_ram = edu.dma_cmd & 2;
	uint64_t ram = to_ram ? edu.dma_dst : edu.dma_src;
	uint64_t dev = (to_ram ? edu.dma_src : edu.dma_dst) - EDU_BUFFER_ADDR;
	uint8_t *host = dma_host(ram, edu.dma_count);

	if (!(f->config[1] & COMMAND_BUS_MASTER))
		report("edu: DMA without bus mastering enabled");
	else if (dev > EDU_BUFFER_SIZE || edu.dma_count > EDU_BUFFER_SIZE - dev || !host)
		report("edu: DMA out of range: address 0x%llx, buffer offset 0x%llx, 0x%llx bytes",
		       (unsigned long long)ram, (unsigned long long)dev,
		       (unsigned long long)edu.dma_count);
	else if (to_ram)
		memcpy(host, edu.buffer + dev, edu.dma_count);
	else
		memcpy(edu.buffer + dev, host, edu.dma_count);
	edu.dma_cmd &= ~1ULL;
	if (edu.dma_cmd & 4) {
		edu.irq_status |= 0x100;
		edu_signal(f);
	}
}

static void edu_access(const struct fake_function *f, uint64_t reg, bool write, uint8_t *data,
		       uint32_t len)
{
	uint64_t value = 0, *wide = NULL;

	memcpy(&value, data, len < 8 ? len : 8);
	switch (reg) {
	case 0x80: wide = &edu.dma_src; break;
	case 0x88: wide = &edu.dma_dst; break;
	case 0x90: wide = &edu.dma_count; break;
	case 0x98: wide = &edu.dma_cmd; break;
	}
	if (wide) {
		if (write) {
			*wide = value;
			if (reg == 0x98 && (value & 1))
				edu_dma(f);
		} else {
			memcpy(data, wide, len < 8 ? len : 8);
		}
		return;
	}
	if (len != 4) {
		report("edu: %u-byte access at 0x%llx (only 4 below 0x80)", len,
		       (unsigned long long)reg);
		return;
	}
	if (!write) {
		uint32_t out = reg == 0x00 ? 0x010000ED : reg == 0x04 ? edu.liveness :
			       reg == 0x24 ? edu.irq_status : 0;

		memcpy(data, &out, 4);
		return;
	}
	if (reg == 0x04)
		edu.liveness = ~(uint32_t)value;
	else if (reg == 0x60) {
		edu.irq_status |= (uint32_t)value;
		edu_signal(f);
	} else if (reg == 0x64)
		edu.irq_status &= ~(uint32_t)value;
}

static void handle_mmio(struct kvm_run *run, const struct options *o, unsigned *bad_accesses)
{
	uint64_t addr = run->mmio.phys_addr;
	uint32_t len = run->mmio.len;

	if (!run->mmio.is_write)
		memset(run->mmio.data, 0xFF, sizeof(run->mmio.data));
	if (addr >= o->ecam && addr - o->ecam < ECAM_SIZE) {
		uint64_t off = addr - o->ecam;
		uint32_t dword;

		if (len != 4 || (off & 3)) {
			/* The guest promises aligned dword accesses. */
			(*bad_accesses)++;
			report("unexpected ECAM access: %u bytes at 0x%llx", len,
			       (unsigned long long)addr);
		}
		if (run->mmio.is_write) {
			memcpy(&dword, run->mmio.data, 4);
			ecam_write_dword(o, off & ~3ULL, dword);
		} else {
			dword = ecam_read_dword(o, off & ~3ULL);
			memcpy(run->mmio.data, &dword, 4);
		}
		return;
	}
	/* form-vmm's hotplug controller (platform.md): PCID asks for edu's slot
	 * while --hotplug-cycle has it in its removal phase; PCEJ is reported. */
	if (o->hotplug_ms && addr == HOTPLUG_PCID && !run->mmio.is_write) {
		uint32_t requested = hotplug_phase(o) == 2 ? 1U << lab_functions[2].dev : 0;

		memcpy(run->mmio.data, &requested, 4);
		return;
	}
	if (o->hotplug_ms && addr == HOTPLUG_PCEJ && run->mmio.is_write) {
		uint32_t slot;

		memcpy(&slot, run->mmio.data, 4);
		if (!ejected)
			report("slot %u ejected", slot);
		ejected = true;
		return;
	}
	if (functions == lab_functions) {
		const struct fake_function *f = &lab_functions[2];

		if ((f->config[1] & 2) && addr >= f->bar_value[0] &&
		    addr - f->bar_value[0] < LAB_EDU_BAR0_SIZE)
			edu_access(f, addr - f->bar_value[0], run->mmio.is_write, run->mmio.data,
				   len);
	}
}

/* Returns true when the guest powered off. */
static bool handle_io(struct kvm_run *run, const struct options *o)
{
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	uint16_t port = run->io.port;

	if (run->io.direction == KVM_EXIT_IO_IN) {
		uint8_t value = port == UART_LSR ? UART_LSR_THR_EMPTY :
				port == UART_LCR ? uart_lcr : 0;

		memset(data, value, (size_t)run->io.size * run->io.count);
		return false;
	}
	if (port == UART_LCR) {
		uart_lcr = data[0];
		return false;
	}
	/* With DLAB set, the data port is the divisor latch, not output. */
	if (port == COM1 && !(uart_lcr & UART_LCR_DLAB)) {
		for (unsigned i = 0; i < run->io.count; i++) {
			char c = (char)data[i * run->io.size];

			putchar(c);
			at_line_start = c == '\n';
		}
		fflush(stdout);
		return false;
	}
	if ((port == o->sleep_port || port == PLATFORM_SLEEP_PORT) && run->io.size == 1 &&
	    data[0] == SLEEP_S5_ENABLE) {
		report("power-off via port 0x%x", port);
		return true;
	}
	return false;
}

int main(int argc, char **argv)
{
	struct options o;
	struct kvm_userspace_memory_region region;
	struct kvm_run *run;
	int kvm, vm, vcpu;
	long run_size;
	uint64_t entry;
	unsigned bad_accesses = 0;

	parse_args(argc, argv, &o);
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);

	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("cannot open /dev/kvm: %s", strerror(errno));
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM: %s", strerror(errno));
	mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		   -1, 0);
	if (mem == MAP_FAILED)
		die("cannot allocate guest memory: %s", strerror(errno));
	region = (struct kvm_userspace_memory_region){
		.slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE,
		.userspace_addr = (uintptr_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region))
		die("KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));

	if (o.irqchip && ioctl(vm, KVM_CREATE_IRQCHIP, 0))
		die("KVM_CREATE_IRQCHIP: %s", strerror(errno));
	vm_fd = vm;
	if (o.lab_devices)
		lab_devices_init(vm);
	bar_dma_refused = o.no_p2p;

	entry = load_elf(o.elf);
	build_boot(&o);

	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU: %s", strerror(errno));
	run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < (long)sizeof(*run))
		die("KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));
	run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("cannot map kvm_run: %s", strerror(errno));
	setup_vcpu(kvm, vcpu, entry, &o);

	clock_gettime(CLOCK_MONOTONIC, &started);
	signal(SIGALRM, on_timeout);
	alarm(o.timeout);
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0)) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			report("KVM_RUN failed: %s", strerror(errno));
			return 2;
		}
		switch (run->exit_reason) {
		case KVM_EXIT_IO:
			if (handle_io(run, &o))
				return bad_accesses ? 2 : 0;
			break;
		case KVM_EXIT_MMIO:
			handle_mmio(run, &o, &bad_accesses);
			break;
		case KVM_EXIT_HLT:
			report("guest halted without powering off");
			return 2;
		case KVM_EXIT_SHUTDOWN:
			report("guest shut down (triple fault)");
			return 2;
		case KVM_EXIT_FAIL_ENTRY:
			report("VM entry failed: reason 0x%llx",
			       (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
			return 2;
		case KVM_EXIT_INTERNAL_ERROR:
			report("KVM internal error, suberror %u", run->internal.suberror);
			return 2;
		default:
			report("unexpected exit reason %u", run->exit_reason);
			return 2;
		}
	}
}
