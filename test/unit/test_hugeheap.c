/*
 * test_hugeheap.c
 *		Unit tests of hugeheap.c: the heap of a worker in transparent huge
 *		pages, where the kernel offers them.
 *
 * What a user depends on: the blocks a worker allocates after
 * shipsync_hugeheap_prepare() lie in memory the kernel may back with huge
 * pages (the area's "THPeligible" in /proc/self/smaps, which says whether
 * a fault there may get one, whatever memory the kernel has free at that
 * moment); so does the heap grown later, once shipsync_hugeheap_follow()
 * has looked; after shipsync_hugeheap_give_back() the heap is smaller and no
 * longer eligible; and with the kernel's setting at "never" nothing changes.
 *
 * Each case runs in a child process of its own, since preparing changes
 * glibc's settings for good; the child writes its findings as a line of
 * 0s and 1s to a pipe, and this process checks them.  Which cases apply
 * depends on the kernel's own setting, read here as the code reads it.
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pg_shipsync.h"
#include "unit.h"

void		test_hugeheap(void (*check) (int, const char *));

#define CHUNK		(64 * 1024)
#define CHUNKS		640			/* 40 MB: more than the heap's reserve of 32 */
#define FRESH		(4 * 1024 * 1024)	/* larger than any free block left: from the top */

/* The kernel's transparent huge page setting: "always", "madvise", "never" or "" */
static const char *
kernel_setting(void)
{
	static char buf[256];
	FILE	   *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
	char	   *open_br,
			   *close_br;

	if (f == NULL)
		return "";
	if (fgets(buf, sizeof(buf), f) == NULL)
		buf[0] = '\0';
	fclose(f);
	open_br = strchr(buf, '[');
	close_br = open_br ? strchr(open_br, ']') : NULL;
	if (close_br == NULL)
		return "";
	*close_br = '\0';
	return open_br + 1;
}

/*
 * The "THPeligible" of the area of /proc/self/smaps that holds addr: 0 or 1,
 * or -1 when no area holds it.
 */
static int
eligible(const void *addr)
{
	FILE	   *f = fopen("/proc/self/smaps", "r");
	char		line[512];
	bool		inside = false;
	int			found = -1;

	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
	{
		unsigned long lo,
					hi;
		int			value;

		/* an area's line starts "lo-hi perms"; its fields, "Name: value" */
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
			inside = (uintptr_t) addr >= lo && (uintptr_t) addr < hi;
		else if (inside && sscanf(line, "THPeligible: %d", &value) == 1)
		{
			found = value;
			break;
		}
	}
	fclose(f);
	return found;
}

/* A directory standing for "/" whose kernel gives no huge pages */
static char never_root[] = "/tmp/shipsync_hugeheap_XXXXXX";

static int
case_never(char *out)
{
	char		path[256];
	FILE	   *f;
	uintptr_t	before = (uintptr_t) sbrk(0);
	const char *why;

	snprintf(path, sizeof(path), "%s/sys/kernel/mm/transparent_hugepage", never_root);
	for (char *p = path + strlen(never_root) + 1; *p; p++)
		if (*p == '/')
		{
			*p = '\0';
			mkdir(path, 0700);
			*p = '/';
		}
	mkdir(path, 0700);
	strcat(path, "/enabled");
	f = fopen(path, "w");
	if (f == NULL)
		return 0;
	fputs("always madvise [never]\n", f);
	fclose(f);
	why = shipsync_hugeheap_prepare(never_root);
	out[0] = why != NULL && strstr(why, "no transparent huge pages") != NULL;
	out[1] = (uintptr_t) sbrk(0) == before;	/* the heap was not grown */
	unlink(path);
	return 2;
}

/* Memory as glibc and the kernel give it unprepared: not eligible */
static int
case_unprepared(char *out)
{
	void	   *block = malloc(FRESH);

	out[0] = eligible((char *) block + FRESH / 2) == 0;
	free(block);
	return 1;
}

/* Prepared, grown beyond the reserve, followed, given back */
static int
case_prepared(char *out)
{
	void	  **blocks = calloc(CHUNKS, sizeof(void *));
	void	   *first;
	uintptr_t	grown;

	out[0] = shipsync_hugeheap_prepare("/") == NULL;
	first = malloc(FRESH);
	out[1] = eligible((char *) first + FRESH / 2) == 1;
	for (int i = 0; i < CHUNKS; i++)
		blocks[i] = malloc(CHUNK);
	/* the last blocks lie in the heap grown since: not advised yet */
	out[2] = eligible(blocks[CHUNKS - 1]) == 0;
	shipsync_hugeheap_follow();
	out[3] = eligible(blocks[CHUNKS - 1]) == 1;
	out[4] = eligible((char *) first + FRESH / 2) == 1;
	grown = (uintptr_t) sbrk(0);
	for (int i = 0; i < CHUNKS; i++)
		free(blocks[i]);
	shipsync_hugeheap_give_back();
	out[5] = (uintptr_t) sbrk(0) < grown - CHUNKS / 2 * CHUNK;
	out[6] = eligible((char *) first + FRESH / 2) == 0;

	/* the next burst: the heap grows again from where it was given back */
	free(first);
	shipsync_hugeheap_give_back();
	first = malloc(FRESH);
	for (int i = 0; i < CHUNKS; i++)
		blocks[i] = malloc(CHUNK);
	shipsync_hugeheap_follow();
	out[7] = eligible((char *) first + FRESH / 2) == 1 &&
		eligible(blocks[CHUNKS - 1]) == 1;
	for (int i = 0; i < CHUNKS; i++)
		free(blocks[i]);
	shipsync_hugeheap_give_back();
	out[8] = eligible((char *) first + FRESH / 2) == 0;
	free(first);
	free(blocks);
	return 9;
}

/*
 * Free heap under the top when prepared (kept from the top by one small
 * block, freed after): prepare still grows the heap, and the trim then takes
 * the break below the first address advised; the heap grown again from
 * there is advised all the same.
 */
static int
case_trimmed_below(char *out)
{
	/* volatile: a block allocated and freed unused is dead code to GCC */
	void	   *volatile below[200];
	void	   *volatile cap;
	void	   *again;
	uintptr_t	prepared_at;

	for (int i = 0; i < 200; i++)
		below[i] = malloc(CHUNK);
	cap = malloc(4096);		/* beyond the tcache: freed, it joins its neighbours */
	for (int i = 0; i < 200; i++)
		free(below[i]);
	prepared_at = (uintptr_t) sbrk(0);	/* the top, above cap */
	out[0] = shipsync_hugeheap_prepare("/") == NULL;
	out[3] = (uintptr_t) sbrk(0) > prepared_at;	/* grown, not served from below */
	free(cap);
	shipsync_hugeheap_give_back();
	out[1] = (uintptr_t) sbrk(0) + FRESH < prepared_at;
	again = malloc(FRESH);
	for (int i = 0; i < 200; i++)
		below[i] = malloc(CHUNK);
	shipsync_hugeheap_follow();
	out[2] = eligible((char *) again + FRESH / 2) == 1;
	for (int i = 0; i < 200; i++)
		free(below[i]);
	free(again);
	shipsync_hugeheap_give_back();
	return 4;
}

void
test_hugeheap(void (*check) (int, const char *))
{
	const char *setting = kernel_setting();
	char		f[UNIT_MAX_FINDINGS];

	if (mkdtemp(never_root) == NULL)
	{
		check(0, "hugeheap: a directory for a kernel without huge pages");
		return;
	}
	check(unit_in_child(case_never, f) == 2 && f[0] && f[1],
		  "hugeheap: with transparent huge pages at \"never\", prepare says why and does not grow the heap");
	for (int depth = 4; depth >= 0; depth--)
	{
		static const char *const dirs[] = {
			"", "/sys", "/sys/kernel", "/sys/kernel/mm", "/sys/kernel/mm/transparent_hugepage"
		};
		char		path[256];

		snprintf(path, sizeof(path), "%s%s", never_root, dirs[depth]);
		rmdir(path);
	}

	if (strcmp(setting, "madvise") != 0 && strcmp(setting, "always") != 0)
	{
		/* this kernel gives none: the real setting must be refused too */
		check(shipsync_hugeheap_prepare("/") != NULL,
			  "hugeheap: this kernel offers no huge pages, and prepare says so");
		return;
	}
	if (strcmp(setting, "madvise") == 0)
		check(unit_in_child(case_unprepared, f) == 1 && f[0],
			  "hugeheap: unprepared, a fresh block is not eligible for huge pages (kernel at \"madvise\")");
	check(unit_in_child(case_prepared, f) == 9 && f[0],
		  "hugeheap: prepare succeeds where the kernel offers huge pages");
	check(f[1], "hugeheap: new heap allocated after prepare is eligible for huge pages");
	if (strcmp(setting, "madvise") == 0)
		check(f[2], "hugeheap: the heap grown past the reserve is not advised before follow");
	check(f[3] && f[4], "hugeheap: after follow, the grown heap and the first block are eligible");
	check(f[5], "hugeheap: give_back returns the freed heap to the system");
	check(f[6], "hugeheap: after give_back, what stays of the heap is no longer eligible");
	check(f[7], "hugeheap: the heap grown again after give_back is eligible once followed");
	check(f[8], "hugeheap: and given back again, it is no longer eligible");
	check(unit_in_child(case_trimmed_below, f) == 4 && f[0],
		  "hugeheap: prepare succeeds with 12 MB free below the heap's top");
	check(f[3], "hugeheap: and grows the heap, not served from the free block below");
	check(f[1], "hugeheap: given back below where it was prepared");
	check(f[2], "hugeheap: the heap grown again from below is eligible once followed");
}
