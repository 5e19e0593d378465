/*
 * unit.c
 *		The TAP harness shared by the unit test programs: one counter, one
 *		check(), and the out-of-memory hook the code under test calls.
 */
#define SHIPSYNC_PLAIN_C
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pg_shipsync.h"
#include "unit.h"

static int	n_test = 0;
static int	n_fail = 0;

/* out of memory in the code under test: stop here (the server raises an ERROR) */
void
shipsync_out_of_memory(void)
{
	abort();
}

void
check(int cond, const char *what)
{
	n_test++;
	if (!cond)
		n_fail++;
	printf("%sok %d - %s\n", cond ? "" : "not ", n_test, what);
}

int
unit_done(void)
{
	printf("1..%d\n", n_test);
	return n_fail ? 1 : 0;
}

/* see unit.h */
int
unit_in_child(int (*fn) (char *findings), char *findings)
{
	int			fds[2];
	pid_t		pid;
	int			status;
	ssize_t		n;

	if (pipe(fds) != 0)
		return -1;
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0)
	{
		char		mine[UNIT_MAX_FINDINGS];
		int			count = fn(mine);

		close(fds[0]);
		_exit(write(fds[1], mine, count) == count ? 0 : 1);
	}
	close(fds[1]);
	n = read(fds[0], findings, UNIT_MAX_FINDINGS);
	close(fds[0]);
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return -1;
	return (int) n;
}
