/*
 * unit.c
 *		The TAP harness shared by the unit test programs: one counter, one
 *		check(), and the out-of-memory hook the code under test calls.
 */
#define SHIPSYNC_PLAIN_C
#include <stdio.h>
#include <stdlib.h>

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
