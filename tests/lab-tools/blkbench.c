/*
 * blkbench: block I/O throughput and IOPS on a disk or file, with O_DIRECT so that
 * the guest's page cache does not answer for the device. Used by the VFIO lab's
 * bench-virtio scenario inside an L2 guest on a virtio-blk disk; built static
 * (gcc -static -O2) because L2 has no libraries.
 *
 *   blkbench [options] PATH MODE
 *
 *   MODE         seq-read | seq-write | rand-read | rand-write
 *   --block N    bytes per request (default 1M for seq-*, 4K for rand-*)
 *   --bytes N    seq-*: bytes to move (default 64M, clipped to the span)
 *   --seconds S  rand-*: how long to run (default 5)
 *   --span N     use only the first N bytes of PATH (default: all of it)
 *   --buffered   no O_DIRECT
 *
 * Sizes take K, M or G (powers of 1024). One result line on stdout:
 *   blkbench MODE block=B ops=N bytes=N secs=S iops=X mib_s=Y
 * Writes are followed by fsync, which is counted in the time. Exit status 0 on
 * success, 1 on an I/O error, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* O_DIRECT needs buffers aligned to the logical block size; a page covers any disk. */
#define BUFFER_ALIGN 4096

static void usage(void)
{
	fprintf(stderr, "usage: blkbench [--block N] [--bytes N] [--seconds S] [--span N] "
			"[--buffered] PATH seq-read|seq-write|rand-read|rand-write\n");
	exit(2);
}

static uint64_t parse_size(const char *flag, const char *text)
{
	char *end;
	unsigned long long value = strtoull(text, &end, 10);
	uint64_t scale = 1;

	switch (*end) {
	case 'K': case 'k': scale = 1ULL << 10; end++; break;
	case 'M': case 'm': scale = 1ULL << 20; end++; break;
	case 'G': case 'g': scale = 1ULL << 30; end++; break;
	}
	if (end == text || *end != '\0' || value == 0) {
		fprintf(stderr, "blkbench: %s wants a positive size such as 4K or 64M, not '%s'\n",
			flag, text);
		exit(2);
	}
	return value * scale;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t path_size(int fd, const char *path)
{
	struct stat st;
	uint64_t bytes = 0;

	if (fstat(fd, &st) != 0) {
		fprintf(stderr, "blkbench: stat %s: %s\n", path, strerror(errno));
		exit(1);
	}
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, &bytes) != 0) {
			fprintf(stderr, "blkbench: size of %s: %s\n", path, strerror(errno));
			exit(1);
		}
		return bytes;
	}
	return (uint64_t)st.st_size;
}

/* xorshift64*: cheap, and good enough to spread offsets over the span. */
static uint64_t next_random(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static int transfer(int fd, int writing, char *buf, uint64_t block, uint64_t offset,
		    const char *path)
{
	ssize_t done = writing ? pwrite(fd, buf, block, (off_t)offset)
			       : pread(fd, buf, block, (off_t)offset);

	if (done == (ssize_t)block)
		return 0;
	if (done < 0)
		fprintf(stderr, "blkbench: %s %s at %llu: %s\n", writing ? "write" : "read",
			path, (unsigned long long)offset, strerror(errno));
	else
		fprintf(stderr, "blkbench: short %s of %s at %llu: %zd of %llu bytes\n",
			writing ? "write" : "read", path, (unsigned long long)offset, done,
			(unsigned long long)block);
	return -1;
}

int main(int argc, char **argv)
{
	uint64_t block = 0, bytes = 64ULL << 20, span = 0, ops = 0, seed = 0x9E3779B97F4A7C15ULL;
	double seconds = 5, start, secs;
	int direct = 1, writing, sequential, fd, i;
	const char *path = NULL, *mode = NULL;
	char *buf;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--block") == 0 && i + 1 < argc)
			block = parse_size("--block", argv[++i]);
		else if (strcmp(argv[i], "--bytes") == 0 && i + 1 < argc)
			bytes = parse_size("--bytes", argv[++i]);
		else if (strcmp(argv[i], "--span") == 0 && i + 1 < argc)
			span = parse_size("--span", argv[++i]);
		else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
			seconds = atof(argv[++i]);
		else if (strcmp(argv[i], "--buffered") == 0)
			direct = 0;
		else if (argv[i][0] == '-')
			usage();
		else if (!path)
			path = argv[i];
		else if (!mode)
			mode = argv[i];
		else
			usage();
	}
	if (!path || !mode || seconds <= 0)
		usage();
	if (strcmp(mode, "seq-read") == 0 || strcmp(mode, "seq-write") == 0)
		sequential = 1;
	else if (strcmp(mode, "rand-read") == 0 || strcmp(mode, "rand-write") == 0)
		sequential = 0;
	else
		usage();
	writing = strstr(mode, "write") != NULL;
	if (!block)
		block = sequential ? 1ULL << 20 : 4096;
	if (direct && block % BUFFER_ALIGN) {
		fprintf(stderr, "blkbench: --block must be a multiple of %d with O_DIRECT\n",
			BUFFER_ALIGN);
		return 2;
	}

	fd = open(path, (writing ? O_RDWR : O_RDONLY) | (direct ? O_DIRECT : 0));
	if (fd < 0) {
		fprintf(stderr, "blkbench: open %s%s: %s\n", path, direct ? " with O_DIRECT" : "",
			strerror(errno));
		return 1;
	}
	if (!span || span > path_size(fd, path))
		span = path_size(fd, path);
	span -= span % block;
	if (span < block) {
		fprintf(stderr, "blkbench: %s is smaller than one %llu-byte block\n", path,
			(unsigned long long)block);
		return 1;
	}
	if (bytes > span)
		bytes = span;
	bytes -= bytes % block;

	if (posix_memalign((void **)&buf, BUFFER_ALIGN, block) != 0) {
		fprintf(stderr, "blkbench: cannot allocate a %llu-byte buffer\n",
			(unsigned long long)block);
		return 1;
	}
	/* Not zeros: a backend could treat zero writes specially. */
	for (uint64_t b = 0; b < block; b++)
		buf[b] = (char)(b * 131 + 7);

	start = now();
	if (sequential) {
		for (uint64_t offset = 0; offset < bytes; offset += block, ops++)
			if (transfer(fd, writing, buf, block, offset, path))
				return 1;
	} else {
		uint64_t blocks = span / block;
		double deadline = start + seconds;

		/* Check the clock every 64 requests: clock_gettime is not free in a guest. */
		do {
			for (int n = 0; n < 64; n++, ops++)
				if (transfer(fd, writing, buf, block,
					     (next_random(&seed) % blocks) * block, path))
					return 1;
		} while (now() < deadline);
	}
	if (writing && fsync(fd) != 0) {
		fprintf(stderr, "blkbench: fsync %s: %s\n", path, strerror(errno));
		return 1;
	}
	secs = now() - start;
	bytes = ops * block;
	printf("blkbench %s block=%llu ops=%llu bytes=%llu secs=%.3f iops=%.0f mib_s=%.1f\n", mode,
	       (unsigned long long)block, (unsigned long long)ops, (unsigned long long)bytes, secs,
	       ops / secs, bytes / secs / (1 << 20));
	close(fd);
	free(buf);
	return 0;
}
