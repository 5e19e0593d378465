/*-------------------------------------------------------------------------
 *
 * spi.c
 *		The helpers of every file that talks SQL: saved SPI plans, kept fit
 *		for tables that grow; a step run in a subtransaction of its own;
 *		the workers' own transactions; set-based parameters; statements
 *		run as a table's owner; JSON and URL quoting.
 *
 * This file is the layer just above the plain-C leaves: it calls nothing
 * of the extension but pg_shipsync.c and security.c, and everything that
 * runs a statement builds on it.
 *
 * Set-based parameters: the dispatcher never runs one statement per order.
 * An ArgArrays holds one growable array per parameter; a batch appends a
 * row per order (args_row, args_set), and args_execute() passes each
 * column as an array, $1..$n, to a saved plan that reads them as rows
 * with shipsync._rows() (below), or with unnest() where a statement runs
 * as a table's owner (the render, the write-back), who may not call it.
 *
 * Transactions: shipsync_begin_tx() and shipsync_end_tx() (or
 * shipsync_abort_tx() after an error) bracket a worker's own transaction,
 * connected to SPI with a snapshot, and give the caller its memory context
 * back (CommitTransactionCommand leaves TopMemoryContext current).
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
 * shipsync_replan_grown(), called from the workers' loops at most every
 * 250 ms, compares the size in blocks of each with its size when its
 * plans were last made.  (Relations, not plans, are kept: a plan may be
 * freed and made again when the configuration changes, a relation only
 * goes away with its table, and try_relation_open() then says so.)  A relation that has doubled (and is past a few pages) gets
 * a relcache invalidation at commit, exactly what ANALYZE sends; every
 * cached plan that reads it, in every backend, is made again on next use,
 * for the table as it is.  Growth by doubling means at most a logarithmic
 * number of re-plans however large a burst, and a plan is never used on a
 * table more than twice the size it was made for.
 *
 * Doubling does not help a table whose statistics say it is empty while
 * it has pages (an analyze in the middle of a bulk insert): its density is
 * 0, and every plan made again counts it empty.  Such a table is counted at
 * what its pages hold (empty_relation_info(), below).
 *
 * Memory: the size table lives in TopMemoryContext for the life of the
 * process; one entry per relation a saved plan read, forgotten once the
 * relation is dropped.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "miscadmin.h"
#include "nodes/plannodes.h"
#include "optimizer/plancat.h"
#include "optimizer/planner.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/array.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "storage/bufmgr.h"
#include "storage/bufpage.h"
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
 * on failure.  With generic, always its generic plan: for a statement whose
 * custom plan costs more to make than the statement to run (a dozen joined
 * CTEs over a batch of one).
 */
SPIPlanPtr
shipsync_prepare_saved_opt(const char *sql, int nargs, const Oid *argtypes, bool generic)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, (Oid *) argtypes,
										  generic ? CURSOR_OPT_GENERIC_PLAN : 0);
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

SPIPlanPtr
shipsync_prepare_saved(const char *sql, int nargs, const Oid *argtypes)
{
	return shipsync_prepare_saved_opt(sql, nargs, argtypes, false);
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

/*
 * Compare one relation with its size at planning; invalidate if doubled.
 * A relation another session holds (an order table under ALTER TABLE or
 * VACUUM FULL in an open transaction) is looked at next time: waiting for
 * it here held the worker's loop, every table's deliveries with it.
 */
static bool
spi_check_relation(SpiRelSize *entry, bool *dropped)
{
	Relation	rel;
	BlockNumber blocks;
	bool		grown = false;

	if (!ConditionalLockRelationOid(entry->relid, AccessShareLock))
		return false;
	rel = try_relation_open(entry->relid, NoLock);
	if (rel == NULL)
	{
		UnlockRelationOid(entry->relid, AccessShareLock);
		*dropped = true;
		return false;
	}
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
 * At most every 250 ms: invalidate, in a transaction of its own, the
 * cached plans of every relation read by a saved plan that has doubled in
 * size since they were made.  For a worker's loop (the dispatcher's, the
 * applier's), outside any transaction; restores the caller's memory
 * context.
 */
void
shipsync_replan_grown(TimestampTz now)
{
	static TimestampTz last = 0;
	MemoryContext old = CurrentMemoryContext;

	if (!TimestampDifferenceExceeds(last, now, 250))
		return;
	last = now;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	for (int i = 0; i < spi_nsizes;)
	{
		bool		dropped = false;

		(void) spi_check_relation(&spi_sizes[i], &dropped);
		/* forgotten: a tenant's table dropped, one after another, for ever */
		if (dropped)
			spi_sizes[i] = spi_sizes[--spi_nsizes];
		else
			i++;
	}
	CommitTransactionCommand();
	MemoryContextSwitchTo(old);
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

/* ---------- set-based parameters ---------- */

/*
 * A one-dimensional array of n values of elemtype (an empty array for n = 0),
 * in the current memory context: the parameter of a set-based statement.
 */
Datum
shipsync_make_array(Datum *values, bool *nulls, int n, Oid elemtype)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	if (n == 0)
		return PointerGetDatum(construct_empty_array(elemtype));
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs,
											  elemtype, typlen, typbyval, typalign));
}


/*
 * ncols parallel arrays of the given element types, room for cap rows: the
 * parameters $1..$ncols of one set-based statement.
 */
ArgArrays *
args_create(int ncols, const Oid *types, int cap)
{
	ArgArrays  *a = palloc0(sizeof(ArgArrays));

	a->ncols = ncols;
	a->cap = Max(cap, 1);
	a->types = palloc(sizeof(Oid) * ncols);
	memcpy(a->types, types, sizeof(Oid) * ncols);
	a->values = palloc(sizeof(Datum *) * ncols);
	a->nulls = palloc(sizeof(bool *) * ncols);
	for (int c = 0; c < ncols; c++)
	{
		a->values[c] = palloc0(sizeof(Datum) * a->cap);
		a->nulls[c] = palloc0(sizeof(bool) * a->cap);
	}
	return a;
}

/* Start a new row; returns its index.  Every column starts NULL. */
int
args_row(ArgArrays *a)
{
	if (a->n == a->cap)
	{
		a->cap *= 2;
		for (int c = 0; c < a->ncols; c++)
		{
			a->values[c] = repalloc(a->values[c], sizeof(Datum) * a->cap);
			a->nulls[c] = repalloc(a->nulls[c], sizeof(bool) * a->cap);
		}
	}
	for (int c = 0; c < a->ncols; c++)
		a->nulls[c][a->n] = true;
	return a->n++;
}

/* Set column col of row row */
void
args_set(ArgArrays *a, int row, int col, Datum v)
{
	a->values[col][row] = v;
	a->nulls[col][row] = false;
}

/* Set a text column; NULL leaves it NULL */
void
args_set_text(ArgArrays *a, int row, int col, const char *s)
{
	if (s)
		args_set(a, row, col, CStringGetTextDatum(s));
}

/*
 * Set text column col of row to the text column fnumber of tup, copied as
 * it is: SPI_getvalue() looks the type's output function up and calls it
 * for every value, and the text came back through its input function
 * (780 instructions a value, five a shipment written back).  NULL leaves
 * it NULL.
 */
void
args_set_text_of(ArgArrays *a, int row, int col, HeapTuple tup, TupleDesc desc, int fnumber)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, fnumber, &isnull);

	Assert(a->types[col] == TEXTOID);
	if (SPI_gettypeid(desc, fnumber) != TEXTOID)
		elog(ERROR, "column %d is not of type text", fnumber);
	if (!isnull)
		args_set(a, row, col, PointerGetDatum(PG_DETOAST_DATUM_COPY(d)));
}

/* The arrays of a as parameters $1..$ncols, palloc'd */
static Datum *
args_params(ArgArrays *a)
{
	Datum	   *params = palloc(sizeof(Datum) * a->ncols);

	for (int c = 0; c < a->ncols; c++)
		params[c] = shipsync_make_array(a->values[c], a->nulls[c], a->n, a->types[c]);
	return params;
}

PG_FUNCTION_INFO_V1(shipsync_rows);

/*
 * shipsync._rows(VARIADIC "any") AS u(c1 type1, c2 type2, ...): the rows of
 * parallel arrays, the i-th row of every array's i-th element, NULL past
 * an array's end and for a NULL array, as many rows as the longest array
 * has elements -- what unnest($1, $2, ...) gives, in one pass.  unnest()
 * of n arrays is n functions to PostgreSQL (ROWS FROM): each is called once
 * per element, and each fills a tuple store of its own that the scan then
 * reads in step, about 1,000 instructions an element; here every row is
 * stored once.  Column k must have the element type of array k.
 */
Datum
shipsync_rows(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			nargs = PG_NARGS();
	TupleDesc	desc;
	Datum	  **elems;
	bool	  **enulls;
	int		   *counts;
	Datum	   *values;
	bool	   *nulls;
	int			nrows = 0;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) || rsinfo->expectedDesc == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("shipsync._rows() must be called in FROM with a column definition list"),
				 errhint("Name each column with its array's element type: FROM shipsync._rows($1, $2) AS u(id int8, k text).")));
	if (get_fn_expr_variadic(fcinfo->flinfo))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("shipsync._rows() takes its arrays one by one, not as one VARIADIC array"),
				 errhint("Pass each array as an argument of its own.")));
	/* a copy of the column definition list's: the caller's may be pinned */
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	desc = rsinfo->setDesc;
	if (desc->natts != nargs)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("shipsync._rows() needs one array per column"),
				 errdetail("It was given %d array(s) for %d column(s).", nargs, desc->natts)));
	elems = palloc(sizeof(Datum *) * nargs);
	enulls = palloc(sizeof(bool *) * nargs);
	counts = palloc0(sizeof(int) * nargs);
	for (int c = 0; c < nargs; c++)
	{
		Oid			argtype = get_fn_expr_argtype(fcinfo->flinfo, c);
		Oid			elemtype = OidIsValid(argtype) ? get_element_type(argtype) : InvalidOid;
		Form_pg_attribute att = TupleDescAttr(desc, c);
		ArrayType  *arr;
		int16		typlen;
		bool		typbyval;
		char		typalign;

		if (!OidIsValid(elemtype) || elemtype != att->atttypid)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("argument %d of shipsync._rows() must be an array of %s",
							c + 1, format_type_be(att->atttypid)),
					 errdetail("It is of type %s, and column \"%s\" is of type %s.",
							   format_type_be(argtype), NameStr(att->attname),
							   format_type_be(att->atttypid))));
		elems[c] = NULL;
		enulls[c] = NULL;
		if (PG_ARGISNULL(c))
			continue;
		arr = PG_GETARG_ARRAYTYPE_P(c);
		get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
		deconstruct_array(arr, elemtype, typlen, typbyval, typalign,
						  &elems[c], &enulls[c], &counts[c]);
		nrows = Max(nrows, counts[c]);
	}
	values = palloc(sizeof(Datum) * nargs);
	nulls = palloc(sizeof(bool) * nargs);
	for (int r = 0; r < nrows; r++)
	{
		for (int c = 0; c < nargs; c++)
		{
			nulls[c] = r >= counts[c] || enulls[c][r];
			values[c] = nulls[c] ? (Datum) 0 : elems[c][r];
		}
		tuplestore_putvalues(rsinfo->setResult, desc, values, nulls);
	}
	return (Datum) 0;
}

/* Execute a saved plan with the arrays as its parameters $1..$ncols */
int
args_execute(SPIPlanPtr plan, ArgArrays *a, bool read_only)
{
	Datum	   *params = args_params(a);
	int			rc;

	rc = SPI_execute_plan(plan, params, NULL, read_only, 0);
	pfree(params);
	return rc;
}

/*
 * Planning by key.  The statements that read and write the user's order
 * rows (the render, the write-back) join a batch of keys, unnest() of an
 * array parameter, to the orders table by its key column.  Their generic
 * plan counts on ten keys, and against a table of up to a couple of
 * thousand rows (some 25 pages) ten probes of the key's index cost more
 * than one sequential scan,
 * so the planner hash-joins the whole table: every render and every
 * write-back then reads every order of the table, a batch of one at a
 * trickle as well as a batch of 256 in a burst, until the table has grown
 * enough for a re-plan to choose the index.  So while such a statement
 * runs, its own planning (not that of the user's triggers and row security
 * it fires, whose texts differ) is done with hash and merge joins off:
 * each key is looked up through the index.  When the plan made so reads a
 * relation whole (no index leads with the key, or it cannot serve the
 * statement's equality, or a policy reads a table of its own), it is made
 * again as PostgreSQL would have made it.  A table whose statistics say it
 * is empty while it has pages is counted at what its pages hold
 * (empty_relation_info()).
 */
static planner_hook_type next_planner_hook = NULL;
static get_relation_info_hook_type next_relation_info_hook = NULL;
static bool planner_hooked = false;
static const char *by_key_query = NULL; /* the text of the statement running */
static bool by_key_planning = false;	/* planning that statement now */
static bool distrust_empty = false;	/* in every planning of this process */

static PlannedStmt *
next_planner(Query *parse, const char *query_string, int options, ParamListInfo params)
{
	if (next_planner_hook)
		return next_planner_hook(parse, query_string, options, params);
	return standard_planner(parse, query_string, options, params);
}

/*
 * Whether plan p, or one below it, reads a whole relation: sequentially, or
 * through an index with no condition (every entry in the index's order)
 */
static bool
plan_scans_all(Plan *p)
{
	List	   *below = NIL;
	ListCell   *lc;

	if (p == NULL)
		return false;
	if (IsA(p, SeqScan) || IsA(p, SampleScan))
		return true;
	if ((IsA(p, IndexScan) && ((IndexScan *) p)->indexqual == NIL) ||
		(IsA(p, IndexOnlyScan) && ((IndexOnlyScan *) p)->indexqual == NIL) ||
		(IsA(p, BitmapIndexScan) && ((BitmapIndexScan *) p)->indexqual == NIL))
		return true;
	if (plan_scans_all(p->lefttree) || plan_scans_all(p->righttree))
		return true;
	if (IsA(p, Append))
		below = ((Append *) p)->appendplans;
	else if (IsA(p, MergeAppend))
		below = ((MergeAppend *) p)->mergeplans;
	else if (IsA(p, SubqueryScan))
		return plan_scans_all(((SubqueryScan *) p)->subplan);
	else if (IsA(p, CustomScan))
		below = ((CustomScan *) p)->custom_plans;
	foreach(lc, below)
		if (plan_scans_all(lfirst(lc)))
			return true;
	return false;
}

/*
 * A table analyzed or vacuumed while its rows were not yet committed (the
 * user's bulk INSERT, or the take's move of thousands of intents into an
 * outbox, met by autovacuum's visit) is recorded with no rows on the pages
 * it had then: reltuples 0, relpages above 0, and, if it was never analyzed
 * with rows, no statistics of its columns either.  The planner then counts
 * it empty however much it grows (its density is 0), until the next
 * analyze, a naptime later.  The cheapest join of a batch's keys with an
 * "empty" table is to read it whole through its key's index, with no
 * condition, comparing each row with every key of the batch: the
 * write-back of a batch of 256 took 1.2 s against 10,000 rows, and a burst
 * ran at 300 to 450 orders/s for a minute (docs/architecture.md, the
 * twenty-third round).  The outbox's states, on an outbox so recorded, got
 * the same plan.  So while a statement is planned by key, and in the
 * dispatcher and its applier always (shipsync_distrust_empty_statistics()),
 * a table whose statistics give it fewer rows than pages counts as many
 * rows as its pages hold at its columns' widths, as PostgreSQL counts a
 * table never analyzed.  Too many is harmless for these statements: they
 * find their rows by key, through an index, or read the table whole anyway.
 */
static void
empty_relation_info(PlannerInfo *root, Oid relid, bool inhparent, RelOptInfo *rel)
{
	int32		width;
	double		density;
	ListCell   *lc;

	if (next_relation_info_hook)
		next_relation_info_hook(root, relid, inhparent, rel);
	if (!(by_key_planning || distrust_empty) || inhparent || rel->pages == 0 ||
		rel->tuples >= rel->pages ||
		get_rel_relkind(relid) != RELKIND_RELATION)
		return;
	width = get_relation_data_width(relid, rel->attr_widths - rel->min_attr) +
		MAXALIGN(SizeofHeapTupleHeader) + sizeof(ItemIdData);
	density = (BLCKSZ - SizeOfPageHeaderData) / (double) Max(width, 1);
	rel->tuples = rint(density * rel->pages);
	foreach(lc, rel->indexlist)
	{
		IndexOptInfo *index = (IndexOptInfo *) lfirst(lc);

		if (index->indpred == NIL)
			index->tuples = rel->tuples;
	}
}

static PlannedStmt *
by_key_planner(Query *parse, const char *query_string, int options, ParamListInfo params)
{
	Query	   *again;
	PlannedStmt *ps;
	ListCell   *lc;
	int			nest;
	bool		scans_all = false;

	if (by_key_query == NULL || query_string != by_key_query)
		return next_planner(parse, query_string, options, params);
	/* cleared by shipsync_execute_by_key(), on an error too */
	by_key_planning = true;
	again = copyObject(parse);	/* the planner scribbles on its query */
	nest = NewGUCNestLevel();
	(void) set_config_option("enable_hashjoin", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("enable_mergejoin", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	ps = next_planner(parse, query_string, options, params);
	AtEOXact_GUC(true, nest);
	scans_all = plan_scans_all(ps->planTree);
	foreach(lc, ps->subplans)
		scans_all = scans_all || plan_scans_all(lfirst(lc));
	if (scans_all)
		ps = next_planner(again, query_string, options, params);
	by_key_planning = false;
	return ps;
}

/* The planner hooks of this file, installed at the first need */
static void
spi_install_planner_hooks(void)
{
	if (planner_hooked)
		return;
	next_planner_hook = planner_hook;
	planner_hook = by_key_planner;
	next_relation_info_hook = get_relation_info_hook;
	get_relation_info_hook = empty_relation_info;
	planner_hooked = true;
}

/*
 * From now on, every statement this process plans counts a table whose
 * statistics say it has fewer rows than pages as its pages hold
 * (empty_relation_info()): for the dispatcher and its applier, as they
 * start, whose statements join batches to the queue's tables.
 */
void
shipsync_distrust_empty_statistics(void)
{
	spi_install_planner_hooks();
	distrust_empty = true;
}

/*
 * Execute a saved plan of one statement that joins a batch of keys to the
 * order rows by key, with params as $1..$n: planned by key (above) if it
 * must be planned.  An error inside leaves the GUC nest level of the
 * planning to the caller's (shipsync_restore_user()) or to the abort.
 */
int
shipsync_execute_by_key(SPIPlanPtr plan, Datum *params, bool read_only)
{
	const char *outer = by_key_query;
	List	   *sources = SPI_plan_get_plan_sources(plan);
	volatile int rc = 0;

	spi_install_planner_hooks();
	if (list_length(sources) != 1)
		elog(ERROR, "a statement planned by key must be one statement");
	by_key_query = ((CachedPlanSource *) linitial(sources))->query_string;
	PG_TRY();
	{
		rc = SPI_execute_plan(plan, params, NULL, read_only, 0);
	}
	PG_FINALLY();
	{
		by_key_query = outer;
		by_key_planning = false;
	}
	PG_END_TRY();
	return rc;
}

/* s as a JSON string literal, quotes included */
char *
shipsync_quote_json(const char *s)
{
	StringInfoData buf;

	initStringInfo(&buf);
	escape_json(&buf, s);
	return buf.data;
}


/*
 * Hold the extension itself for the current transaction; a worker calls it
 * first, before touching any of the extension's tables.  DROP EXTENSION
 * locks the extension before its members, so it waits for this
 * transaction to end and the worker's next one waits for it, where the two
 * used to hold tables the other wanted: a deadlock that failed DROP
 * EXTENSION ... CASCADE or the worker's pass (TAP 013).
 */
void
shipsync_hold_extension(void)
{
	Oid			ext = get_extension_oid("pg_shipsync", true);

	if (OidIsValid(ext))
		LockDatabaseObject(ExtensionRelationId, ext, 0, AccessShareLock);
}

/*
 * The version of extension pg_shipsync in this database (its extversion),
 * palloc'd in the current context; NULL when it is not installed.  In a
 * transaction.
 */
char *
shipsync_extension_version(void)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	char	   *version = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("pg_shipsync"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = TextDatumGetCString(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

/*
 * Refuse to run fn, a C function SQL calls, where the extension is at
 * another version than this library.  Between the restart with a new
 * library and ALTER EXTENSION ... UPDATE, the SQL functions of the old
 * version call the new C functions, which read the tables as this version
 * makes them: they failed on what the old version lacks ("relation
 * shipsync.secret does not exist"), their statement in the message.
 */
void
shipsync_require_extension_version(const char *fn)
{
	char	   *version = shipsync_extension_version();

	if (version != NULL && strcmp(version, SHIPSYNC_EXTVERSION) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension pg_shipsync is at version %s in this database, the library at %s",
						version, SHIPSYNC_EXTVERSION),
				 errdetail("%s works on the tables of version %s.", fn, SHIPSYNC_EXTVERSION),
				 errhint("Run ALTER EXTENSION pg_shipsync UPDATE in this database.")));
	if (version)
		pfree(version);
}

/*
 * The memory context that was current when the dispatcher's transaction
 * began: shipsync_end_tx() and shipsync_abort_tx() make it current again.
 * One at a time: these transactions never nest.
 */
static MemoryContext tx_caller_cxt = NULL;

/*
 * Start one of the dispatcher's own transactions (outside any transaction),
 * connected to SPI, with a snapshot.  durable: commit with
 * synchronous_commit = on.
 *
 * Contract: the caller's memory context (CurrentMemoryContext now) is
 * current again when shipsync_end_tx() or shipsync_abort_tx() returns, so
 * that the caller may go on allocating where it was: a bare
 * CommitTransactionCommand() leaves TopMemoryContext current, and whatever
 * the rest of a loop pass allocates then is never freed.  The caller's
 * context must outlive the transaction (it is not a transaction context).
 */
void
shipsync_begin_tx(const char *activity, bool durable)
{
	tx_caller_cxt = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	shipsync_hold_extension();
	SetConfigOption("synchronous_commit", durable ? "on" : "off",
					PGC_SUSET, PGC_S_SESSION);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

/* Commit the transaction of shipsync_begin_tx(); see its contract. */
void
shipsync_end_tx(void)
{
	MemoryContext caller = tx_caller_cxt;

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	tx_caller_cxt = NULL;
	MemoryContextSwitchTo(caller);
}

/*
 * Roll back the transaction of shipsync_begin_tx() after an error was
 * caught (and its data copied out), with the same contract: the caller's
 * memory context is current on return.
 */
void
shipsync_abort_tx(void)
{
	MemoryContext caller = tx_caller_cxt;

	AbortCurrentTransaction();
	pgstat_report_activity(STATE_IDLE, NULL);
	tx_caller_cxt = NULL;
	if (caller)
		MemoryContextSwitchTo(caller);
}

/*
 * After a failure, outside a transaction: when the extension is no longer
 * in this database (DROP EXTENSION, between two transactions of ours or
 * under a batch on the wire), say so with one LOG line and end this worker
 * (the launcher starts a dispatcher again, which waits for CREATE
 * EXTENSION as at the start); the failure, an object the drop took away,
 * is not worth reporting.  Returns false when the extension is there.
 */
bool
shipsync_exit_if_dropped(void)
{
	const char *who = MyBgworkerEntry ? strrchr(MyBgworkerEntry->bgw_type, ' ') : NULL;
	char	   *db;
	bool		dropped;

	if (MyBgworkerEntry == NULL || IsTransactionState())
		return false;			/* a worker's, between its transactions */
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	dropped = !OidIsValid(get_extension_oid("pg_shipsync", true));
	db = dropped ? get_database_name(MyDatabaseId) : NULL;
	if (dropped)
		ereport(LOG,
				(errmsg("pg_shipsync: the extension was dropped from database \"%s\"; the %s exits",
						db ? db : "?", who ? who + 1 : "worker")));
	CommitTransactionCommand();
	if (!dropped)
		return false;
	/* the dispatcher exits as when it finds the extension gone, the applier as at its end */
	proc_exit(who && strcmp(who + 1, "applier") == 0 ? 0 : 1);
	return true;				/* not reached */
}

/*
 * Run a statement with the rights of a CRM table's owner, so that the
 * user's row security, triggers and cancel_when run as the owner and never
 * as a superuser, in a restricted operation (see security.c).  The plan
 * takes the arrays of a as its parameters, and joins them to the table by
 * key (shipsync_execute_by_key()).
 */
int
shipsync_execute_as_owner(Oid owner, SPIPlanPtr plan, ArgArrays *a, bool read_only)
{
	ShipsyncUserSave save;
	Datum	   *params = args_params(a);
	volatile int rc = 0;

	shipsync_become_owner(owner, &save);
	PG_TRY();
	{
		rc = shipsync_execute_by_key(plan, params, read_only);
	}
	PG_FINALLY();
	{
		shipsync_restore_user(&save);
	}
	PG_END_TRY();
	pfree(params);
	return rc;
}

/*
 * s percent-encoded for a URL path segment: everything but the unreserved
 * characters of RFC 3986 (ASCII letters, digits, "-", "_", ".", "~").  A
 * segment of "." or ".." is a dot segment, which libcurl removes with the
 * one before it (RFC 3986, 5.2.4): its dots are encoded too (%2E), so that
 * an id the carrier chose stays one segment, sent as request_url says.
 */
char *
shipsync_url_escape(const char *s)
{
	StringInfoData buf;
	bool		dots = strcmp(s, ".") == 0 || strcmp(s, "..") == 0;

	initStringInfo(&buf);
	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
	{
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
			*p == '-' || *p == '_' || (*p == '.' && !dots) || *p == '~')
			appendStringInfoChar(&buf, (char) *p);
		else
			appendStringInfo(&buf, "%%%02X", *p);
	}
	return buf.data;
}
