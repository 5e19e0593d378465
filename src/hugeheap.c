/*-------------------------------------------------------------------------
 *
 * hugeheap.c
 *		The private heap of the dispatcher in transparent huge pages, where
 *		the kernel offers them.
 *
 * A process pays for the first touch of every page of its heap, and on
 * the virtual machines this project is measured on that is 6 to 15 us a
 * 4 kB page (the host shadows the guest's page tables).  A new dispatcher
 * took 2.8 faults an order in a burst of 1,000, most of them its heap: the
 * libcurl handles and their buffers, the requests and their answers, the
 * results on their way to the applier.  In 2 MB pages the same heap is a
 * handful of faults.  glibc can put its heap in such pages (the
 * glibc.malloc.hugetlb tunable), but only for a whole process tree, set in
 * the environment of the server and read when a process starts.  This file
 * does it for the dispatcher alone, from the inside:
 *
 *  - glibc is told to grow its main heap HEAP_RESERVE at a time (M_TOP_PAD;
 *    address space, not memory: a page is backed when first touched), to
 *    keep blocks of up to 32 MB in it rather than in mappings of their own
 *    (M_MMAP_THRESHOLD, the ceiling its own sliding threshold reaches), and
 *    not to give the top back while less than twice the reserve is free;
 *  - the heap is grown once at the start, and its free top (what the
 *    process's start left free, and the growth) is advised as
 *    MADV_HUGEPAGE: a fault in a 2 MB range of it gets a huge page;
 *  - the kernel gives a growth of the heap (brk) an area of its own without
 *    the advice, so each pass of the dispatcher's loop compares the break
 *    with the last one seen (sbrk(0) is glibc's cached value, no system
 *    call) and advises what was added.  Only faults between a growth and the
 *    end of that pass land in small pages;
 *  - when the dispatcher gives its heap back after a burst
 *    (shipsync_hugeheap_give_back()), the advice is withdrawn first
 *    (MADV_NOHUGEPAGE) and then glibc's malloc_trim() returns the free pages.
 *    Otherwise the kernel's khugepaged, which merges the small pages of an
 *    advised area into huge ones, could fill the holes the trim made and
 *    take the memory back.  The heap grown by the next burst is advised
 *    anew.
 *
 * Measured in alternated pairs of new dispatchers (docs/architecture.md,
 * the twenty-seventh round): bursts of 1,000 6 of 6 pairs faster, the
 * dispatcher's faults 2.8 -> 0.7 an order.  The applier was given the same
 * and made bursts of 20,000 slower in 7 of 10 pairs, so it is not.
 *
 * The kernel's setting decides (/sys/kernel/mm/transparent_hugepage/
 * enabled): "madvise" (Debian's default) and "always" give huge pages to
 * advised areas, "never" gives none, and then nothing here is done.  A
 * process with huge pages disabled (prctl PR_SET_THP_DISABLE) is left
 * alone too.  A huge page the kernel cannot find at a fault is a small
 * page: never an error.
 *
 * Plain C, no PostgreSQL: the unit tests (test/unit/test_hugeheap.c) read
 * the areas' eligibility in /proc/self/smaps.  The state is per process;
 * the functions are called from the dispatcher's one thread.
 *
 *-------------------------------------------------------------------------
 */
#define SHIPSYNC_PLAIN_C
#ifndef _GNU_SOURCE
#define _GNU_SOURCE				/* MADV_HUGEPAGE, sbrk */
#endif
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "pg_shipsync.h"

#define HEAP_RESERVE		(32 * 1024 * 1024)	/* the heap grows this much at a time */
#define HEAP_MMAP_CEILING	(32 * 1024 * 1024)	/* glibc's own ceiling on 64 bits */
#define HEAP_HUGE_PAGE		(2 * 1024 * 1024)

static uintptr_t heap_page;		/* the system's page size; 0: not prepared */
static uintptr_t heap_lo;		/* the lowest address advised */
static uintptr_t heap_seen;		/* the break at the last look */

/* the block that grows the heap: volatile, or the compiler drops the pair */
static void *volatile heap_grow;

/*
 * The kernel's transparent huge page setting under root ("/" but for the
 * tests): true when an advised area gets huge pages.
 */
static bool
hugeheap_kernel_offers(const char *root)
{
	char		path[1024];
	char		buf[256];
	int			fd;
	ssize_t		n;

	snprintf(path, sizeof(path), "%s/sys/kernel/mm/transparent_hugepage/enabled",
			 strcmp(root, "/") == 0 ? "" : root);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	/* the setting in force is the bracketed one: "always [madvise] never" */
	return strstr(buf, "[always]") != NULL || strstr(buf, "[madvise]") != NULL;
}

/* advise [from, to) of the heap, to whole pages inside it */
static void
hugeheap_advise(uintptr_t from, uintptr_t to, int advice)
{
	from = (from + heap_page - 1) & ~(heap_page - 1);
	to &= ~(heap_page - 1);
	if (to > from)
		(void) madvise((void *) from, to - from, advice);
}

/*
 * Set the heap of this process up for huge pages: call once, at the start of
 * a process, before its heap grows for work.  root is where the kernel's
 * settings are read ("/").  Returns NULL when done, or why nothing was done
 * (for a log line).
 */
const char *
shipsync_hugeheap_prepare(const char *root)
{
#if defined(__GLIBC__) && defined(MADV_HUGEPAGE) && defined(PR_GET_THP_DISABLE)
	struct mallinfo2 free_now;

	if (heap_page != 0)
		return "already prepared";
	if (!hugeheap_kernel_offers(root))
		return "the kernel gives no transparent huge pages to advised memory";
	if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) > 0)
		return "transparent huge pages are disabled for this process";
	if (mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_CEILING) != 1 ||
		mallopt(M_TRIM_THRESHOLD, 2 * HEAP_RESERVE) != 1 ||
		mallopt(M_TOP_PAD, HEAP_RESERVE) != 1)
		return "glibc refused the heap's settings";
	heap_page = (uintptr_t) sysconf(_SC_PAGESIZE);

	/*
	 * What the process's start left free at the top of the heap is advised
	 * too: that is where its next blocks come from.  Then the heap is grown
	 * by a block larger than all its free memory (a smaller one could come
	 * from a free block below the top), given straight back.
	 */
	free_now = mallinfo2();
	heap_lo = (uintptr_t) sbrk(0) - free_now.keepcost;
	heap_grow = malloc(free_now.fordblks + HEAP_HUGE_PAGE);
	free(heap_grow);
	heap_seen = heap_lo;
	shipsync_hugeheap_follow();
	return NULL;
#else
	return "not built with glibc on Linux";
#endif
}

/*
 * Advise what the heap grew by since the last call.  Cheap when it did not
 * grow: call it once a pass of the process's loop.
 */
void
shipsync_hugeheap_follow(void)
{
#ifdef MADV_HUGEPAGE
	uintptr_t	brk_now;

	if (heap_page == 0)
		return;
	brk_now = (uintptr_t) sbrk(0);
	if (brk_now == (uintptr_t) -1 || brk_now == heap_seen)
		return;
	if (brk_now > heap_seen)
	{
		/* after a trim below where it began, the heap regrows from there */
		if (heap_seen < heap_lo)
			heap_lo = heap_seen;
		hugeheap_advise(heap_seen, brk_now, MADV_HUGEPAGE);
	}
	heap_seen = brk_now;
#endif
}

/*
 * Give the free heap back to the system (glibc's malloc_trim()), the advice
 * withdrawn first from what stays, so that the holes left are not filled
 * again by the kernel.  Works whether or not the heap was prepared.
 */
void
shipsync_hugeheap_give_back(void)
{
#ifdef MADV_NOHUGEPAGE
	if (heap_page != 0)
		hugeheap_advise(heap_lo, (uintptr_t) sbrk(0), MADV_NOHUGEPAGE);
#endif
#ifdef __GLIBC__
	(void) malloc_trim(0);
#endif
	if (heap_page != 0)
		heap_seen = (uintptr_t) sbrk(0);
}
