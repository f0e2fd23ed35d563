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
	unsigned timeout;
};

static uint8_t *mem;
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

struct fake_function {
	unsigned dev, fn;
	uint32_t id;        /* device << 16 | vendor */
	uint32_t class_rev; /* class << 8 | revision */
	uint8_t header_type;
	bool all_functions; /* decodes every function number, as some devices do */
};

/* Bus 0: a host bridge, a single-function device that answers on every
 * function number (the guest must still list it once), and a multifunction
 * device with a gap at function 1. */
static const struct fake_function fake_functions[] = {
	{ 0x00, 0, 0x0D578086, 0x06000000, 0x00, false },
	{ 0x01, 0, 0x11E81234, 0x00FF0010, 0x00, true },
	{ 0x1F, 0, 0x29188086, 0x06010002, 0x80, false },
	{ 0x1F, 2, 0x29228086, 0x01060102, 0x00, false },
	{ 0x1F, 3, 0x29308086, 0x0C050002, 0x00, false },
};

static uint32_t ecam_read_dword(const struct options *o, uint64_t offset)
{
	unsigned dev = (offset >> 15) & 0x1F, fn = (offset >> 12) & 0x7;
	unsigned reg = offset & 0xFFC;

	if (o->no_devices)
		return 0xFFFFFFFF;
	for (size_t i = 0; i < sizeof(fake_functions) / sizeof(fake_functions[0]); i++) {
		const struct fake_function *f = &fake_functions[i];

		if (f->dev != dev || (f->fn != fn && !f->all_functions))
			continue;
		switch (reg) {
		case 0x00:
			return f->id;
		case 0x08:
			return f->class_rev;
		case 0x0C:
			return (uint32_t)f->header_type << 16;
		default:
			return 0;
		}
	}
	return 0xFFFFFFFF;
}

static void handle_mmio(struct kvm_run *run, const struct options *o, unsigned *bad_accesses)
{
	uint64_t addr = run->mmio.phys_addr;
	uint32_t len = run->mmio.len;

	if (run->mmio.is_write)
		return; /* config writes are ignored; no scenario makes them yet */
	memset(run->mmio.data, 0xFF, sizeof(run->mmio.data));
	if (addr >= o->ecam && addr - o->ecam < ECAM_SIZE) {
		uint64_t off = addr - o->ecam;
		uint32_t dword = ecam_read_dword(o, off & ~3ULL);

		if (len != 4 || (off & 3)) {
			/* The guest promises aligned dword accesses. */
			(*bad_accesses)++;
			report("unexpected ECAM access: %u bytes at 0x%llx", len,
			       (unsigned long long)addr);
		}
		memcpy(run->mmio.data, &dword, 4);
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
