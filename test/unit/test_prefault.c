/*
 * test_prefault.c
 *		Unit tests of prefault.c: pages a worker will touch, touched ahead.
 *
 * What a user depends on: a new process (a child here, as a worker is the
 * postmaster's) starts with none of a shared mapping in its page table;
 * shipsync_prefault_begin() finds the mapping that holds an address, and
 * each shipsync_prefault_step() maps the next pages of it into this
 * process (its resident pages of the mapping in /proc/self/smaps grow by
 * the step) until all are, leaving what the memory holds as it was; an
 * address no mapping holds, or a maps file that cannot be read, means
 * nothing to touch.  After shipsync_prefault_heap(), the heap holds a
 * reserve already touched: a block of half the reserve, written whole,
 * takes almost no page fault, and blocks of up to 32 MB come from the heap.
 *
 * Each case runs in a child process of its own: a new page table, and
 * glibc's settings changed for good.  The child writes its findings as a
 * line of 0s and 1s to a pipe, and this process checks them.
 *
 * Called from test_parsers.c, which owns the TAP counter.
 */
#define SHIPSYNC_PLAIN_C
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pg_shipsync.h"
#include "unit.h"

void		test_prefault(void (*check) (int, const char *));

#define SEGMENT		(8 * 1024 * 1024)	/* the "server's shared memory" */
#define RESERVE		(16 * 1024 * 1024)

static char *segment;			/* written by this process, before the fork */
static long page;

/* The kB of /proc/self/smaps's field (e.g. "Rss:") of the area holding addr, or -1 */
static long
area_kb(const void *addr, const char *field)
{
	FILE	   *f = fopen("/proc/self/smaps", "r");
	char		line[512];
	bool		inside = false;
	long		found = -1;
	size_t		len = strlen(field);

	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
	{
		unsigned long lo,
					hi;

		/* an area's line starts "lo-hi perms"; its fields, "Name: value kB" */
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
			inside = (uintptr_t) addr >= lo && (uintptr_t) addr < hi;
		else if (inside && strncmp(line, field, len) == 0)
		{
			found = strtol(line + len, NULL, 10);
			break;
		}
	}
	fclose(f);
	return found;
}

/* This process's private memory (RssAnon in /proc/self/status), kB */
static long
rss_anon_kb(void)
{
	FILE	   *f = fopen("/proc/self/status", "r");
	char		line[256];
	long		kb = -1;

	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "RssAnon: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

static long
minor_faults(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_minflt;
}

/* A new process touches the shared segment step by step */
static int
case_shared(char *out)
{
	long		pages = SEGMENT / page;
	long		left;
	long		rss;
	bool		intact = true;

	/* a worker starts with none of it in its page table */
	out[0] = area_kb(segment, "Rss:") == 0;
	out[1] = shipsync_prefault_begin("/proc/self/maps", segment + SEGMENT / 2, 0, 0) == pages;
	left = shipsync_prefault_step(SHIPSYNC_PREFAULT_STEP);
	out[2] = left == pages - SHIPSYNC_PREFAULT_STEP;
	/* the step's pages are in (and the kernel may map a few around the last) */
	rss = area_kb(segment, "Rss:");
	out[3] = rss >= SHIPSYNC_PREFAULT_STEP * page / 1024 && rss < SEGMENT / 1024 / 2;
	while (left > 0)
		left = shipsync_prefault_step(SHIPSYNC_PREFAULT_STEP);
	out[4] = area_kb(segment, "Rss:") == SEGMENT / 1024;
	out[5] = shipsync_prefault_step(SHIPSYNC_PREFAULT_STEP) == 0;
	for (long i = 0; i < pages; i++)
		intact &= segment[i * page] == (char) (i % 127 + 1);
	out[6] = intact;
	return 7;
}

/* Nothing to touch: an address in no mapping, a maps file missing */
static int
case_nothing(char *out)
{
	char		path[] = "/tmp/shipsync_prefault_XXXXXX";
	int			fd = mkstemp(path);
	FILE	   *f = fd >= 0 ? fdopen(fd, "w") : NULL;

	out[0] = shipsync_prefault_begin("/proc/self/maps", (void *) 16, 0, 0) == 0;
	out[1] = shipsync_prefault_step(SHIPSYNC_PREFAULT_STEP) == 0;
	out[2] = shipsync_prefault_begin("/nonexistent/maps", segment, 0, 0) == 0;
	if (f == NULL)
		return 3;

	/*
	 * A maps file laid out as the kernel's: the line holding the address
	 * is the mapping, its ends from the line.  (Not touched: it is not
	 * this process's memory.)
	 */
	fputs("55d0a0000000-55d0a0021000 r--p 00000000 fd:01 1234 /usr/lib/postgresql/15/bin/postgres\n"
		  "7f3a40000000-7f3a52000000 rw-s 00000000 00:01 5678 /dev/zero (deleted)\n"
		  "7ffd10000000-7ffd10021000 rw-p 00000000 00:00 0 [stack]\n", f);
	fclose(f);
	out[3] = shipsync_prefault_begin(path, (void *) 0x7f3a48000000, 0, 0) ==
		(long) (0x12000000 / page);
	out[4] = shipsync_prefault_begin(path, (void *) 0x7f3a52000000, 0, 0) == 0;
	unlink(path);
	/* a begin on the real maps starts over */
	out[5] = shipsync_prefault_begin("/proc/self/maps", segment, 0, 0) == SEGMENT / page &&
		shipsync_prefault_step(SEGMENT / page) == 0;
	return 6;
}

/*
 * Of the shared buffers (a pool inside the segment), only the first
 * pool_most bytes are touched; the segment around the pool in full
 */
static int
case_pool(char *out)
{
	long		mb = 1024 * 1024 / page;	/* pages a megabyte */
	long		left;
	long		rss;
	long		steps = 0;

	/* the pool: 4 MB from the segment's third megabyte; touched: its first */
	out[0] = shipsync_prefault_begin("/proc/self/maps", segment + 2 * 1024 * 1024,
									 4 * 1024 * 1024, 1024 * 1024) == 5 * mb;
	/* the pages left count down past the part left out */
	left = shipsync_prefault_step(3 * mb);
	out[1] = left == 2 * mb;
	left = shipsync_prefault_step(1);
	out[2] = left == 2 * mb - 1;
	while (left > 0 && steps++ < 1000)
		left = shipsync_prefault_step(SHIPSYNC_PREFAULT_STEP);
	/* 5 MB in, give or take the kernel's mapping around a fault at the two edges */
	rss = area_kb(segment, "Rss:");
	out[3] = rss >= 5 * 1024 && rss <= 5 * 1024 + 2 * 64;
	out[4] = shipsync_prefault_step(SHIPSYNC_PREFAULT_STEP) == 0;
	/* a pool no larger than the most: the whole segment */
	out[5] = shipsync_prefault_begin("/proc/self/maps", segment + 2 * 1024 * 1024,
									 4 * 1024 * 1024, 4 * 1024 * 1024) == SEGMENT / page;
	/* a pool running past the mapping's end: left out up to that end */
	out[6] = shipsync_prefault_begin("/proc/self/maps", segment + 6 * 1024 * 1024,
									 64 * 1024 * 1024, 1024 * 1024) == 7 * mb;
	return 7;
}

/* The heap reserve: touched, kept, used */
static int
case_heap(char *out)
{
	long		before = rss_anon_kb();
	long		faults;
	char	   *volatile block;
	char	   *volatile big;
	uintptr_t	top;

	out[0] = shipsync_prefault_heap(RESERVE) == NULL;
	out[1] = rss_anon_kb() >= before + RESERVE / 1024;
	top = (uintptr_t) sbrk(0);

	/* half the reserve, written whole: from touched pages */
	faults = minor_faults();
	block = malloc(RESERVE / 2);
	memset(block, 1, RESERVE / 2);
	out[2] = minor_faults() - faults < RESERVE / 2 / page / 16;
	free(block);
	/* the reserve is kept when the block goes back */
	out[3] = (uintptr_t) sbrk(0) == top && rss_anon_kb() >= before + RESERVE / 1024;

	/* a block of 24 MB is in the heap, not a mapping of its own */
	big = malloc(24 * 1024 * 1024);
	out[4] = big != NULL && (uintptr_t) big < (uintptr_t) sbrk(0);
	free(big);
	return 5;
}

void
test_prefault(void (*check) (int, const char *))
{
	char		f[UNIT_MAX_FINDINGS];
	int			n;

	page = sysconf(_SC_PAGESIZE);
	segment = mmap(NULL, SEGMENT, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (segment == MAP_FAILED)
	{
		check(0, "prefault: a shared segment to test with");
		return;
	}
	for (long i = 0; i < SEGMENT / page; i++)
		segment[i * page] = (char) (i % 127 + 1);

	n = unit_in_child(case_shared, f);
	check(n == 7 && f[0], "prefault: a new process has none of a shared segment in its page table");
	check(n == 7 && f[1], "prefault: begin finds the mapping holding an address, and its size in pages");
	check(n == 7 && f[2], "prefault: a step touches its pages and says how many are left");
	check(n == 7 && f[3], "prefault: after one step, that step's pages are resident, not the whole segment");
	check(n == 7 && f[4], "prefault: once the steps say none is left, the whole segment is resident");
	check(n == 7 && f[5], "prefault: a step after the end touches nothing");
	check(n == 7 && f[6], "prefault: the segment holds what it held: touching only reads");

	n = unit_in_child(case_nothing, f);
	check(n >= 3 && f[0] && f[1], "prefault: an address no mapping holds: nothing to touch");
	check(n >= 3 && f[2], "prefault: a maps file that cannot be read: nothing to touch");
	check(n == 6 && f[3], "prefault: the mapping is read from the line of maps that holds the address");
	check(n == 6 && f[4], "prefault: a mapping's end is not in it");
	check(n == 6 && f[5], "prefault: begin starts over on a new mapping");

	n = unit_in_child(case_pool, f);
	check(n == 7 && f[0], "prefault: of a pool inside the mapping, only its first bytes count to touch");
	check(n == 7 && f[1], "prefault: the steps jump over the part of the pool left out");
	check(n == 7 && f[2], "prefault: and go on after it, a page at a time");
	check(n == 7 && f[3], "prefault: once done, the part left out is not resident");
	check(n == 7 && f[4], "prefault: nothing is left after the last step");
	check(n == 7 && f[5], "prefault: a pool within its most is touched whole");
	check(n == 7 && f[6], "prefault: a pool past the mapping's end is left out up to that end");

	n = unit_in_child(case_heap, f);
	check(n == 5 && f[0], "prefault: the heap reserve is made (glibc takes the settings)");
	check(n == 5 && f[1], "prefault: the reserve is resident private memory");
	check(n == 5 && f[2], "prefault: a block of half the reserve, written whole, takes almost no page fault");
	check(n == 5 && f[3], "prefault: freed, the block's pages stay with the heap");
	check(n == 5 && f[4], "prefault: a block of 24 MB comes from the heap, not a mapping of its own");
	munmap(segment, SEGMENT);
}
