/* rusage-launch OUT COMMAND...: runs COMMAND and writes its peak RSS (KiB) and CPU
 * time (user and system, microseconds) to OUT; exits with COMMAND's status.
 *
 * scripts/bench-vs-ch measures VMMs through it because a process forked from the
 * Python benchmark inherits Python's RSS high-water mark, which wait4 then reports
 * as the VMM's (~14 MiB for any command). Forked from this small process, a VMM's
 * peak RSS is its own. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: rusage-launch OUT COMMAND...\n");
		return 2;
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("rusage-launch: fork");
		return 2;
	}
	if (pid == 0) {
		execvp(argv[2], argv + 2);
		perror("rusage-launch: exec");
		_exit(127);
	}
	int status;
	struct rusage usage;
	if (wait4(pid, &status, 0, &usage) < 0) {
		perror("rusage-launch: wait4");
		return 2;
	}
	FILE *out = fopen(argv[1], "w");
	if (!out) {
		perror(argv[1]);
		return 2;
	}
	fprintf(out, "%ld %ld %ld\n", usage.ru_maxrss,
		usage.ru_utime.tv_sec * 1000000L + usage.ru_utime.tv_usec,
		usage.ru_stime.tv_sec * 1000000L + usage.ru_stime.tv_usec);
	fclose(out);
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + WTERMSIG(status);
}
