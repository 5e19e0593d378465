/*-------------------------------------------------------------------------
 *
 * spi.c
 *		Saved SPI plans, and keeping them fit for tables that grow; a
 *		step run in a subtransaction of its own.
 *
 * Every statement the extension runs more than once is prepared once per
 * process with shipsync_prepare_saved() and kept for the life of the
 * process.  PostgreSQL's plan cache then settles, after a few executions,
 * on a generic plan made for the tables as they were at that moment; it
 * plans again only when a relation the plan reads is invalidated, which for
 * a table that merely grows happens when autovacuum analyzes it.
 *
 * That is wrong for a queue.  The dispatcher's statements join an array of
 * a batch's keys to the outbox, the shipments and the user's orders table
 * by primary key.  Planned while those tables hold a few hundred rows (the
 * first small burst on a fresh cluster), the cheapest plan is a hash join
 * over a sequential scan; cached, that plan then reads the whole table for
 * every batch of the next burst of ten thousand orders, and delivery ran
 * two to four times slower until autovacuum happened to analyze the
 * tables.  Custom plans for every execution cure it but cost the planning
 * of ten statements per batch, a fifth of the dispatcher's CPU per order.
 *
 * So the dispatcher does for its plans what ANALYZE would do: the relations
 * every saved plan reads are noted here when it is prepared, and
 * shipsync_replan_grown(), called from the dispatcher's loop inside a
 * transaction, compares the size in blocks of each with its size when its
 * plans were last made.  (Relations, not plans, are kept: a plan may be
 * freed and made again when the configuration changes, a relation only
 * goes away with its table, and try_relation_open() then says so.)  A relation that has doubled (and is past a few pages) gets
 * a relcache invalidation at commit, exactly what ANALYZE sends; every
 * cached plan that reads it, in every backend, is made again on next use,
 * for the table as it is.  Growth by doubling means at most a logarithmic
 * number of re-plans however large a burst, and a plan is never used on a
 * table more than twice the size it was made for.
 *
 * Memory: the size table lives in TopMemoryContext for the life of the
 * process; one entry per relation any saved plan ever read.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "executor/spi.h"
#include "storage/bufmgr.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/rel.h"
#include "utils/resowner.h"

#include "pg_shipsync.h"

/* below this many blocks a sequential scan is as good as any plan */
#define SPI_REPLAN_MIN_BLOCKS	16

typedef struct SpiRelSize
{
	Oid			relid;
	BlockNumber planned_blocks; /* size when its plans were last made */
} SpiRelSize;

static SpiRelSize *spi_sizes = NULL;
static int	spi_nsizes = 0;
static int	spi_maxsizes = 0;

static SpiRelSize *spi_size_entry(Oid relid, BlockNumber blocks);

/*
 * A saved SPI plan of sql; the relations it reads are noted for
 * shipsync_replan_grown().  The caller is inside an SPI connection; ERROR
 * on failure.
 */
SPIPlanPtr
shipsync_prepare_saved(const char *sql, int nargs, const Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, (Oid *) argtypes);
	ListCell   *ls;

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s: %s",
			 SPI_result_code_string(SPI_result), sql);
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	foreach(ls, SPI_plan_get_plan_sources(plan))
	{
		CachedPlanSource *source = (CachedPlanSource *) lfirst(ls);
		ListCell   *lr;

		/* the size is taken at the first check, soon after */
		foreach(lr, source->relationOids)
			(void) spi_size_entry(lfirst_oid(lr), InvalidBlockNumber);
	}
	return plan;
}

/* The size entry of relid, made with planned_blocks = blocks if new */
static SpiRelSize *
spi_size_entry(Oid relid, BlockNumber blocks)
{
	for (int i = 0; i < spi_nsizes; i++)
		if (spi_sizes[i].relid == relid)
			return &spi_sizes[i];
	if (spi_nsizes == spi_maxsizes)
	{
		spi_maxsizes = Max(16, spi_maxsizes * 2);
		spi_sizes = spi_sizes == NULL
			? MemoryContextAlloc(TopMemoryContext, spi_maxsizes * sizeof(SpiRelSize))
			: repalloc(spi_sizes, spi_maxsizes * sizeof(SpiRelSize));
	}
	spi_sizes[spi_nsizes].relid = relid;
	spi_sizes[spi_nsizes].planned_blocks = blocks;
	return &spi_sizes[spi_nsizes++];
}

/* Compare one relation with its size at planning; invalidate if doubled */
static bool
spi_check_relation(SpiRelSize *entry)
{
	Relation	rel = try_relation_open(entry->relid, AccessShareLock);
	BlockNumber blocks;
	bool		grown = false;

	if (rel == NULL)
		return false;			/* dropped */
	if (!RELKIND_HAS_STORAGE(rel->rd_rel->relkind))
	{
		relation_close(rel, AccessShareLock);
		return false;
	}
	blocks = RelationGetNumberOfBlocks(rel);
	relation_close(rel, AccessShareLock);

	if (entry->planned_blocks == InvalidBlockNumber)
		entry->planned_blocks = blocks;
	else if (blocks >= SPI_REPLAN_MIN_BLOCKS && blocks > 2 * entry->planned_blocks)
	{
		CacheInvalidateRelcacheByRelid(entry->relid);
		entry->planned_blocks = blocks;
		grown = true;
	}
	else if (blocks < entry->planned_blocks)
		entry->planned_blocks = blocks; /* shrunk: count from here */
	return grown;
}

/*
 * Invalidate, at the end of the current transaction, the cached plans of
 * every relation read by a saved plan that has doubled in size since they
 * were made.  The caller is inside a transaction.  Returns how many
 * relations were invalidated.
 */
int
shipsync_replan_grown(void)
{
	int			n = 0;

	for (int i = 0; i < spi_nsizes; i++)
		if (spi_check_relation(&spi_sizes[i]))
			n++;
	return n;
}

/*
 * Run fn(arg) in a subtransaction of its own.  Returns NULL when it went
 * through; otherwise the subtransaction is rolled back, nothing fn did
 * remains, and a copy of its error is returned, in the caller's memory
 * context.  The caller's memory context and resource owner are kept.  For
 * a step that may fail alone inside a larger transaction (one push of a
 * batch); an error that must end the transaction needs no subtransaction.
 */
ErrorData *
shipsync_subxact(void (*fn) (void *), void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile err = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		err = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return err;
}
