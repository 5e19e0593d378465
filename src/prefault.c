/*-------------------------------------------------------------------------
 *
 * prefault.c
 *		Pages a worker will touch, touched before its first burst needs them.
 *
 * A process pays for the first touch of every page it maps: the kernel
 * fills its page table in then, one fault a page.  On bare metal that is a
 * fraction of a microsecond; on the virtual machines this project is
 * measured on (a guest whose page tables the host shadows) a first write
 * costs 10 to 12 us a 4 kB page, and a first read 3 to 5 after which the
 * write costs nothing (docs/architecture.md, the twenty-eighth round).  A
 * dispatcher and its applier are new processes after every server start,
 * and their first bursts paid that for every page of the server's shared
 * memory they touched (the WAL buffers they write through, every shared
 * buffer a table is extended into) and for every page of the applier's
 * heap.  A running pair had paid it before; a new one paid it in the
 * middle of the burst.  Two things here move that cost ahead of the work:
 *
 *  - shipsync_prefault_begin() finds the mapping of this process that
 *    holds an address (the server's main shared memory segment, from
 *    BufferBlocks) in /proc/self/maps, and shipsync_prefault_step() reads
 *    one byte of each page of it, a bounded number of pages a call.  Of
 *    the shared buffers it reads only the first gigabyte
 *    (SHIPSYNC_PREFAULT_BUFFERS_MAX): a server hands its buffers out in
 *    order after a start (its free list runs from the first to the last;
 *    a burst of 20,000 on a new server took the first 110 MB), so the
 *    first bursts use the first ones, while every page read costs the
 *    worker CPU and 8 bytes of page table for as long as it lives: with
 *    shared_buffers = 1536MB on a 2-core virtual machine, each worker
 *    took 2.9 s of CPU and 3.3 MB of page tables reading all of it, 2.0 s
 *    and 2.3 MB reading the first gigabyte; at 64GB, all of it would take
 *    about two minutes and 128 MB, for bursts that would not reach most
 *    of it.  The
 *    workers call it while they have nothing else to do, and go back to
 *    their work between two calls, so a burst arriving meanwhile waits at
 *    most one step (a megabyte).  Reading leaves the memory as it was: no
 *    lock is needed, and a page some other process changes meanwhile is
 *    still mapped.  A read fault maps a shared page writable, so the
 *    worker's later writes to it do not fault either.
 *  - shipsync_prefault_heap() gives the heap of the process a reserve of
 *    pages already touched, kept for its work: glibc is told to keep
 *    blocks of up to 32 MB in its main heap rather than in mappings of
 *    their own, which are new pages every time (M_MMAP_THRESHOLD, the
 *    ceiling its sliding threshold reaches anyway), and not to give the
 *    top back while less than 64 MB is free (M_TRIM_THRESHOLD); then the
 *    heap is grown by the reserve, each page of it written once, and given
 *    back to glibc, which keeps it.
 *
 * Memory: the shared pages are the server's, counted in a worker's
 * RssShmem, not in its private memory; the heap reserve is private memory
 * (RssAnon) for as long as the process lives.
 *
 * Plain C, no PostgreSQL: the unit tests (test/unit/test_prefault.c) count
 * a child process's resident pages of a shared mapping in
 * /proc/self/smaps.  The state is per process; one thread calls.
 *
 *-------------------------------------------------------------------------
 */
#define SHIPSYNC_PLAIN_C
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "pg_shipsync.h"

#define PREFAULT_MMAP_CEILING	(32 * 1024 * 1024)	/* glibc's own ceiling on 64 bits */
#define PREFAULT_TRIM_THRESHOLD (64 * 1024 * 1024)

static uintptr_t pf_next;		/* the next page to touch */
static uintptr_t pf_end;		/* the end of the mapping */
static uintptr_t pf_page;		/* the system's page size */
static uintptr_t pf_skip_from;	/* pages not to touch: [from, to), */
static uintptr_t pf_skip_to;	/* empty at pf_end when none */

/* the reserve's block: volatile, or the compiler drops the malloc/free pair */
static char *volatile pf_reserve;

/* The pages left to touch from pf_next on (never inside the part left out) */
static long
prefault_left(void)
{
	uintptr_t	n = pf_end - pf_next;

	if (pf_next < pf_skip_from)
		n -= pf_skip_to - pf_skip_from;
	return (long) (n / pf_page);
}

/* The page to touch after p */
static uintptr_t
prefault_after(uintptr_t p)
{
	p += pf_page;
	return p == pf_skip_from ? pf_skip_to : p;
}

/*
 * Find the mapping of this process that holds pool in maps (the text of
 * /proc/self/maps, or a file laid out the same for the tests), and make it
 * the one shipsync_prefault_step() touches: all of it but the part of the
 * pool_bytes at pool past its first pool_most bytes (pages wholly inside
 * that part).  Returns how many pages there are to touch, or 0 when no
 * line of maps holds pool (or maps cannot be read): then there is nothing
 * to touch.
 */
long
shipsync_prefault_begin(const char *maps, const void *pool, size_t pool_bytes,
						size_t pool_most)
{
	FILE	   *f;
	char		line[1024];
	uintptr_t	a = (uintptr_t) pool;

	pf_next = pf_end = pf_skip_from = pf_skip_to = 0;
	pf_page = (uintptr_t) sysconf(_SC_PAGESIZE);
	f = fopen(maps, "re");
	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f) != NULL)
	{
		uintmax_t	lo,
					hi;

		if (sscanf(line, "%" SCNxMAX "-%" SCNxMAX, &lo, &hi) == 2 &&
			lo <= a && a < hi && lo % pf_page == 0)
		{
			pf_next = (uintptr_t) lo;
			pf_end = (uintptr_t) hi;
			break;
		}
	}
	fclose(f);
	pf_skip_from = pf_skip_to = pf_end;
	if (pf_end > pf_next && pool_bytes > pool_most)
	{
		/* whole pages only, inside the mapping */
		uintptr_t	from = a + pool_most;
		uintptr_t	to = a + pool_bytes < pf_end ? a + pool_bytes : pf_end;

		from = (from + pf_page - 1) / pf_page * pf_page;
		to = to / pf_page * pf_page;
		if (from < to)
		{
			pf_skip_from = from;
			pf_skip_to = to;
		}
		if (pf_next == pf_skip_from)
			pf_next = pf_skip_to;
	}
	return prefault_left();
}

/*
 * Read a byte of each of the next max_pages pages of the mapping found by
 * shipsync_prefault_begin(), but for those it leaves out.  Returns how
 * many pages are left to touch: 0 once all are (and from then on, until
 * the next begin).
 */
long
shipsync_prefault_step(long max_pages)
{
	for (long i = 0; i < max_pages && pf_next < pf_end; i++)
	{
		(void) *(volatile const char *) pf_next;
		pf_next = prefault_after(pf_next);
	}
	return prefault_left();
}

/*
 * Give the heap of this process a reserve of bytes in pages already
 * touched (see above).  Call once, as the process starts, before its heap
 * grows for work.  Returns NULL when done, or why nothing was done (for a
 * log line): glibc refusing the settings (a sanitizer's allocator does),
 * or another C library.
 */
const char *
shipsync_prefault_heap(size_t bytes)
{
#ifdef __GLIBC__
	size_t		page = (size_t) sysconf(_SC_PAGESIZE);
	size_t		n;

	if (mallopt(M_MMAP_THRESHOLD, PREFAULT_MMAP_CEILING) != 1 ||
		mallopt(M_TRIM_THRESHOLD, PREFAULT_TRIM_THRESHOLD) != 1)
		return "glibc refused the heap's settings";

	/*
	 * Larger than all the heap's free memory, so that the block comes from
	 * new memory at its top rather than from a free block lower down; each
	 * of its pages is written once.
	 */
	n = mallinfo2().fordblks + bytes;
	pf_reserve = malloc(n);
	if (pf_reserve == NULL)
		return "out of memory";
	for (size_t i = 0; i < n; i += page)
		pf_reserve[i] = 0;
	free(pf_reserve);
	pf_reserve = NULL;
	return NULL;
#else
	(void) bytes;
	return "not built with glibc";
#endif
}
