/*
 * netbench: one-way TCP throughput between two hosts, timed on the receiving side
 * from its first byte to the sender's end of stream, so that connection set-up and
 * the time the receiver spent waiting do not count. Used by the VFIO lab's
 * bench-virtio scenario between L1 and an L2 guest over virtio-net and a tap; built
 * static (gcc -static -O2) because L2 has no libraries.
 *
 *   netbench recv PORT [--timeout S]      accept one connection, read it to its end
 *   netbench send HOST PORT MIB           connect (retrying while the peer is not yet
 *                 [--timeout S]           listening), write MIB MiB, close
 *
 * --timeout: give up after S seconds without progress (default 60). HOST is an IPv4
 * address. Each side prints one line on stdout:
 *   netbench recv bytes=N secs=S mbit_s=X
 *   netbench send bytes=N secs=S mbit_s=X      (connect to close; the receiver's
 *                                               figure is the one to report)
 * Exit status 0 on success, 1 on a network error or timeout, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (128 * 1024)

static char buffer[CHUNK];

static void usage(void)
{
	fprintf(stderr, "usage: netbench recv PORT [--timeout S]\n"
			"       netbench send HOST PORT MIB [--timeout S]\n");
	exit(2);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int parse_port(const char *text)
{
	char *end;
	long port = strtol(text, &end, 10);

	if (end == text || *end || port < 1 || port > 65535) {
		fprintf(stderr, "netbench: '%s' is not a TCP port\n", text);
		exit(2);
	}
	return (int)port;
}

/* Blocking reads and writes that fail with EAGAIN after `secs` without progress. */
static void set_progress_timeout(int fd, int secs)
{
	struct timeval tv = { .tv_sec = secs };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static void report(const char *side, uint64_t bytes, double secs)
{
	printf("netbench %s bytes=%llu secs=%.3f mbit_s=%.1f\n", side, (unsigned long long)bytes,
	       secs, secs > 0 ? bytes * 8 / secs / 1e6 : 0.0);
	fflush(stdout);
}

static int receive(int port, int timeout)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
	int one = 1, listener, conn;
	uint64_t bytes = 0;
	double first = 0;
	ssize_t got;

	listener = socket(AF_INET, SOCK_STREAM, 0);
	if (listener < 0) {
		perror("netbench: socket");
		return 1;
	}
	setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	addr.sin_addr.s_addr = htonl(INADDR_ANY);
	if (bind(listener, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(listener, 1) != 0) {
		fprintf(stderr, "netbench: listen on port %d: %s\n", port, strerror(errno));
		return 1;
	}
	/* accept() gives up too: SIGALRM interrupts it (no SA_RESTART). */
	alarm(timeout);
	conn = accept(listener, NULL, NULL);
	alarm(0);
	if (conn < 0) {
		fprintf(stderr, "netbench: no connection on port %d within %d s: %s\n", port, timeout,
			strerror(errno));
		return 1;
	}
	set_progress_timeout(conn, timeout);
	while ((got = read(conn, buffer, sizeof(buffer))) > 0) {
		if (!bytes)
			first = now();
		bytes += (uint64_t)got;
	}
	if (got < 0) {
		fprintf(stderr, "netbench: read after %llu bytes: %s\n", (unsigned long long)bytes,
			strerror(errno));
		return 1;
	}
	report("recv", bytes, bytes ? now() - first : 0);
	close(conn);
	close(listener);
	return 0;
}

static int send_stream(const char *host, int port, uint64_t mib, int timeout)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
	uint64_t total = mib << 20, sent = 0;
	double start, give_up;
	int fd = -1;

	if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
		fprintf(stderr, "netbench: '%s' is not an IPv4 address\n", host);
		return 2;
	}
	/* The receiver may still be starting (another machine's boot): keep trying. */
	give_up = now() + timeout;
	for (;;) {
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0) {
			perror("netbench: socket");
			return 1;
		}
		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
			break;
		if (now() > give_up) {
			fprintf(stderr, "netbench: connect to %s:%d: %s (tried for %d s)\n", host, port,
				strerror(errno), timeout);
			return 1;
		}
		close(fd);
		usleep(200 * 1000);
	}
	set_progress_timeout(fd, timeout);
	memset(buffer, 0x5a, sizeof(buffer));
	start = now();
	while (sent < total) {
		size_t want = total - sent < sizeof(buffer) ? (size_t)(total - sent) : sizeof(buffer);
		ssize_t put = write(fd, buffer, want);

		if (put <= 0) {
			fprintf(stderr, "netbench: write after %llu bytes: %s\n",
				(unsigned long long)sent, put < 0 ? strerror(errno) : "no progress");
			return 1;
		}
		sent += (uint64_t)put;
	}
	/* Half-close and wait for the receiver's close: the data has arrived by then. */
	shutdown(fd, SHUT_WR);
	while (read(fd, buffer, sizeof(buffer)) > 0)
		;
	report("send", sent, now() - start);
	close(fd);
	return 0;
}

static void on_alarm(int sig)
{
	(void)sig;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_alarm };
	char *args[4];
	int nargs = 0, timeout = 60;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
			timeout = atoi(argv[++i]);
			if (timeout < 1)
				usage();
		} else if (nargs < 4) {
			args[nargs++] = argv[i];
		} else {
			usage();
		}
	}
	sigaction(SIGALRM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (nargs == 2 && strcmp(args[0], "recv") == 0)
		return receive(parse_port(args[1]), timeout);
	if (nargs == 4 && strcmp(args[0], "send") == 0) {
		char *end;
		unsigned long long mib = strtoull(args[3], &end, 10);

		if (end == args[3] || *end || mib == 0) {
			fprintf(stderr, "netbench: MIB must be a positive number, not '%s'\n", args[3]);
			return 2;
		}
		return send_stream(args[1], parse_port(args[2]), mib, timeout);
	}
	usage();
	return 2;
}
