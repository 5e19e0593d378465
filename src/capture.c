/*-------------------------------------------------------------------------
 *
 * capture.c
 *		The capture trigger and the commit-time wakeup.
 *
 * shipsync.capture() is an AFTER ROW trigger installed by shipsync.attach().
 * It does one thing in the user's transaction: insert one narrow row into
 * shipsync.outbox (INSERT -> create, UPDATE -> update, DELETE -> cancel),
 * straight into the heap and its indexes, with no executor start per row.
 * No network I/O; the only other read is a once-per-backend check that the
 * trigger's binding really belongs to its table.  The intent's idempotency
 * key is fixed here.
 *
 * Trigger arguments, written by attach(): binding id, provider id, key
 * column, then the write-back columns.  An UPDATE that changes nothing but
 * write-back columns enqueues nothing, and writes made by the dispatcher
 * itself (shipsync_capture_suppressed) never enqueue: no echo.
 *
 * Waking the dispatcher: the first capture in a backend registers one
 * transaction callback for the life of the backend (never one per
 * transaction); a capture sets a flag, and at COMMIT the callback sets the
 * latch of the dispatcher of this database.  An aborted transaction wakes
 * no one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "common/pg_prng.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "optimizer/optimizer.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "access/genam.h"
#include "access/heapam.h"
#include "catalog/index.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/uuid.h"

#include "pg_shipsync.h"

PG_FUNCTION_INFO_V1(shipsync_capture);
PG_FUNCTION_INFO_V1(shipsync_wake);

/* set by the dispatcher while it writes back onto CRM rows */
bool		shipsync_capture_suppressed = false;

static SPIPlanPtr capture_check_plan = NULL;

/*
 * Bindings this backend has checked against the table firing the trigger.
 * capture() runs with the extension owner's rights, so a trigger created by
 * hand with another table's binding id must not be able to enqueue intents
 * for that table's orders: the first use of each (binding, table) pair in a
 * backend is checked against shipsync.binding.
 */
#define CAPTURE_CHECKED_MAX 32
typedef struct CaptureChecked
{
	int32		binding_id;
	int32		provider_id;
	Oid			relid;
} CaptureChecked;
static CaptureChecked capture_checked[CAPTURE_CHECKED_MAX];
static int	capture_nchecked = 0;
static bool capture_callback_registered = false;
static uint64 capture_providers = 0;	/* bits of providers enqueued for */
static bool capture_config_changed = false;

static void
capture_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (capture_config_changed && shipsync_shared)
				pg_atomic_fetch_add_u64(&shipsync_shared->config_generation, 1);
			if (capture_providers != 0 || capture_config_changed)
				shipsync_wake_dispatcher(MyDatabaseId, capture_providers,
										 capture_config_changed);
			capture_providers = 0;
			capture_config_changed = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			/* a prepared transaction is found by the idle check */
			capture_providers = 0;
			capture_config_changed = false;
			break;
		default:
			break;
	}
}

/*
 * Ask for the dispatcher of this database to be told, when the current
 * transaction commits, that provider_id got work (0: any provider); with
 * config_changed, it also reloads providers and bindings.
 */
void
shipsync_wake_at_commit(int32 provider_id, bool config_changed)
{
	if (!capture_callback_registered)
	{
		RegisterXactCallback(capture_xact_callback, NULL);
		capture_callback_registered = true;
	}
	if (provider_id > 0)
		capture_providers |= SHIPSYNC_PROVIDER_BIT(provider_id);
	else
		capture_providers = ~UINT64CONST(0);
	if (config_changed)
		capture_config_changed = true;
}

/*
 * shipsync._wake(config_changed boolean) — used by the SQL functions that
 * enqueue work or change configuration.
 */
Datum
shipsync_wake(PG_FUNCTION_ARGS)
{
	shipsync_wake_at_commit(0, PG_ARGISNULL(0) ? false : PG_GETARG_BOOL(0));
	PG_RETURN_VOID();
}

/*
 * What capture needs to insert an intent, built once per backend and kept
 * until a relcache invalidation of the outbox (an index created or dropped,
 * the table altered, the extension dropped) marks it stale: the column
 * numbers, the identity sequence, and for each index its IndexInfo and
 * the compiled predicate of a partial index.  Rebuilding these for every
 * row (what the executor's ExecOpenIndices does per statement) was a fifth
 * of the trigger's cost.  An index the fast path cannot serve (expressions,
 * exclusion constraints, deferred uniqueness) sends capture through the
 * executor's own index insertion instead.
 */
typedef struct CaptureIndex
{
	Oid			oid;
	IndexInfo  *info;
	ExprState  *pred;			/* compiled predicate, NULL if not partial */
	IndexUniqueCheck check;
} CaptureIndex;

typedef struct OutboxInfo
{
	bool		valid;
	MemoryContext cxt;			/* everything below lives here */
	Oid			relid;
	Oid			seqid;			/* the identity sequence of id */
	Oid			owner;			/* the extension's owner, who owns the outbox */
	AttrNumber	att_id,
				att_binding,
				att_provider,
				att_key,
				att_op,
				att_idem,
				att_state,
				att_attempts,
				att_next,
				att_created;
	List	   *indexoids;		/* as RelationGetIndexList() gave them */
	int			nindexes;
	CaptureIndex *indexes;
	bool		executor_path;	/* some index needs the executor */
	TupleTableSlot *slot;
	ExprContext *econtext;		/* for predicates */
} OutboxInfo;

static OutboxInfo outbox_info;
static bool capture_inval_registered = false;
static pg_prng_state capture_prng;
static bool capture_prng_seeded = false;

/*
 * Relcache invalidation: only mark the cache stale.  The callback can run
 * in the middle of a capture (any lock acquisition accepts invalidations),
 * so freeing anything here would pull memory from under it.
 */
static void
capture_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == outbox_info.relid)
		outbox_info.valid = false;
}

static AttrNumber
outbox_attnum(Relation rel, const char *name)
{
	AttrNumber	a = SPI_fnumber(RelationGetDescr(rel), name);

	if (a <= 0)
		elog(ERROR, "column shipsync.outbox.%s is missing", name);
	return a;
}

/*
 * Fill the cache for the open outbox, in outbox_info.cxt.  The caller holds
 * the outbox with RowExclusiveLock.
 */
static void
capture_fill_info(Relation rel)
{
	OutboxInfo *oi = &outbox_info;
	List	   *seqs;
	ListCell   *lc;
	int			i = 0;

	oi->relid = RelationGetRelid(rel);
	oi->owner = rel->rd_rel->relowner;
	seqs = getOwnedSequences(oi->relid);
	if (list_length(seqs) != 1)
		elog(ERROR, "shipsync.outbox has no identity sequence");
	oi->seqid = linitial_oid(seqs);
	oi->att_id = outbox_attnum(rel, "id");
	oi->att_binding = outbox_attnum(rel, "binding_id");
	oi->att_provider = outbox_attnum(rel, "provider_id");
	oi->att_key = outbox_attnum(rel, "order_key");
	oi->att_op = outbox_attnum(rel, "op");
	oi->att_idem = outbox_attnum(rel, "idempotency_key");
	oi->att_state = outbox_attnum(rel, "state");
	oi->att_attempts = outbox_attnum(rel, "attempts");
	oi->att_next = outbox_attnum(rel, "next_attempt_at");
	oi->att_created = outbox_attnum(rel, "created_at");

	oi->indexoids = RelationGetIndexList(rel);
	oi->nindexes = list_length(oi->indexoids);
	oi->indexes = palloc0(sizeof(CaptureIndex) * Max(oi->nindexes, 1));
	oi->executor_path = (rel->rd_tableam != GetHeapamTableAmRoutine());
	oi->slot = MakeSingleTupleTableSlot(CreateTupleDescCopy(RelationGetDescr(rel)),
										&TTSOpsVirtual);
	oi->econtext = CreateStandaloneExprContext();
	foreach(lc, oi->indexoids)
	{
		CaptureIndex *ci = &oi->indexes[i++];
		Relation	irel = index_open(lfirst_oid(lc), RowExclusiveLock);

		ci->oid = RelationGetRelid(irel);
		ci->info = BuildIndexInfo(irel);
		if (ci->info->ii_Expressions != NIL ||
			ci->info->ii_ExclusionOps != NULL ||
			(irel->rd_index->indisunique && !irel->rd_index->indimmediate))
			oi->executor_path = true;
		ci->check = irel->rd_index->indisunique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO;
		if (ci->info->ii_Predicate != NIL)
			ci->pred = ExecInitQual((List *) expression_planner((Expr *) ci->info->ii_Predicate),
									NULL);
		index_close(irel, NoLock);
	}
}

/*
 * (Re)build the cache.  It is marked valid before it is filled, so that an
 * invalidation accepted while the indexes are opened makes the caller
 * build it again; a failure leaves it invalid.
 */
static void
capture_build_info(Relation rel)
{
	OutboxInfo *oi = &outbox_info;
	MemoryContext old;

	if (oi->cxt == NULL)
		oi->cxt = AllocSetContextCreate(CacheMemoryContext, "pg_shipsync capture",
										ALLOCSET_SMALL_SIZES);
	else
	{
		if (oi->econtext)
			FreeExprContext(oi->econtext, false);
		if (oi->slot)
			ExecDropSingleTupleTableSlot(oi->slot);
		MemoryContextReset(oi->cxt);
	}
	oi->econtext = NULL;
	oi->slot = NULL;
	oi->valid = true;
	old = MemoryContextSwitchTo(oi->cxt);
	PG_TRY();
	{
		capture_fill_info(rel);
	}
	PG_CATCH();
	{
		oi->valid = false;
		PG_RE_THROW();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
}

static Relation
capture_open_outbox(void)
{
	Relation	rel = NULL;

	if (!capture_inval_registered)
	{
		CacheRegisterRelcacheCallback(capture_relcache_callback, (Datum) 0);
		capture_inval_registered = true;
	}
	if (OidIsValid(outbox_info.relid))
		rel = try_table_open(outbox_info.relid, RowExclusiveLock);
	if (rel == NULL)
	{
		Oid			nsp = get_namespace_oid("shipsync", false);
		Oid			relid = get_relname_relid("outbox", nsp);

		if (!OidIsValid(relid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("table shipsync.outbox does not exist"),
					 errhint("Create the extension pg_shipsync again.")));
		rel = table_open(relid, RowExclusiveLock);
		outbox_info.valid = false;
	}
	/* the lock above accepted any pending invalidation */
	while (!outbox_info.valid ||
		   !equal(outbox_info.indexoids, RelationGetIndexList(rel)))
		capture_build_info(rel);
	return rel;
}

/*
 * Insert one intent.  A direct heap insert plus index insertion: no
 * parser, planner or executor start per row, no CHECK to evaluate.  The
 * values are what the column defaults would give: the next id, a random
 * (version 4) idempotency key, state pending, due now.  Only this function
 * and the dispatcher write the outbox, so nothing else needs to run.
 */
static void
capture_enqueue(int32 binding_id, int32 provider_id, const char *key,
				const char *op)
{
	Relation	rel = capture_open_outbox();
	OutboxInfo *oi = &outbox_info;
	TupleTableSlot *slot = oi->slot;
	Datum	   *values;
	bool	   *nulls;
	int			natts = slot->tts_tupleDescriptor->natts;
	pg_uuid_t  *uuid = palloc(sizeof(pg_uuid_t));
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	/*
	 * The key must be unique, not secret: a per-backend generator seeded
	 * from the strong random source once costs nothing per row, where
	 * OpenSSL's RAND_bytes() was 3% of an insert.
	 */
	if (!capture_prng_seeded)
	{
		if (!pg_prng_strong_seed(&capture_prng))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not seed the idempotency key generator")));
		capture_prng_seeded = true;
	}
	{
		uint64		hi = pg_prng_uint64(&capture_prng);
		uint64		lo = pg_prng_uint64(&capture_prng);

		memcpy(uuid->data, &hi, 8);
		memcpy(uuid->data + 8, &lo, 8);
	}
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x40;	/* version 4 */
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;	/* RFC 4122 variant */

	ExecClearTuple(slot);
	values = slot->tts_values;
	nulls = slot->tts_isnull;
	memset(nulls, true, sizeof(bool) * natts);
#define SET(att, v) (values[(att) - 1] = (v), nulls[(att) - 1] = false)
	SET(oi->att_id, Int64GetDatum(nextval_internal(oi->seqid, false)));
	SET(oi->att_binding, Int32GetDatum(binding_id));
	SET(oi->att_provider, Int32GetDatum(provider_id));
	SET(oi->att_key, CStringGetTextDatum(key));
	SET(oi->att_op, CStringGetTextDatum(op));
	SET(oi->att_idem, UUIDPGetDatum(uuid));
	SET(oi->att_state, CStringGetTextDatum("pending"));
	SET(oi->att_attempts, Int32GetDatum(0));
	SET(oi->att_next, TimestampTzGetDatum(now));
	SET(oi->att_created, TimestampTzGetDatum(now));
#undef SET
	ExecStoreVirtualTuple(slot);
	simple_table_tuple_insert(rel, slot);

	if (oi->executor_path)
	{
		EState	   *estate = CreateExecutorState();
		ResultRelInfo *rri = makeNode(ResultRelInfo);

		InitResultRelInfo(rri, rel, 1, NULL, 0);
		ExecOpenIndices(rri, false);
		if (rri->ri_NumIndices > 0)
			list_free(ExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL));
		ExecCloseIndices(rri);
		FreeExecutorState(estate);
	}
	else
	{
		oi->econtext->ecxt_scantuple = slot;
		for (int i = 0; i < oi->nindexes; i++)
		{
			CaptureIndex *ci = &oi->indexes[i];
			Datum		ivalues[INDEX_MAX_KEYS];
			bool		inulls[INDEX_MAX_KEYS];
			Relation	irel;

			if (!ci->info->ii_ReadyForInserts)
				continue;
			if (ci->pred && !ExecQual(ci->pred, oi->econtext))
				continue;
			irel = index_open(ci->oid, RowExclusiveLock);
			FormIndexDatum(ci->info, slot, NULL, ivalues, inulls);
			index_insert(irel, ivalues, inulls, &slot->tts_tid, rel,
						 ci->check, false, ci->info);
			index_close(irel, NoLock);
		}
		ResetExprContext(oi->econtext);
	}
	ExecClearTuple(slot);
	table_close(rel, NoLock);
}

static void
capture_check_binding(int32 binding_id, int32 provider_id, Relation rel)
{
	Oid			owner;
	Oid			save_userid;
	int			save_sec;
	Oid			relid = RelationGetRelid(rel);
	Datum		values[1];
	bool		isnull;
	Oid			boundrel;
	int32		boundprov;
	int			rc;

	for (int i = 0; i < capture_nchecked; i++)
		if (capture_checked[i].binding_id == binding_id &&
			capture_checked[i].provider_id == provider_id &&
			capture_checked[i].relid == relid)
			return;

	/*
	 * capture() is not SECURITY DEFINER (that would cost a user switch per
	 * row): this once-per-backend read of shipsync.binding runs as the
	 * extension's owner instead.  The previous user is restored by error
	 * recovery if it fails.
	 */
	table_close(capture_open_outbox(), NoLock);
	owner = outbox_info.owner;
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	if ((rc = SPI_connect()) != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed: %s", SPI_result_code_string(rc));
	if (capture_check_plan == NULL)
	{
		Oid			argtypes[1] = {INT4OID};
		SPIPlanPtr	plan;

		plan = SPI_prepare("SELECT tbl::oid, provider_id FROM shipsync.binding"
						   " WHERE binding_id = $1", 1, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for the binding check: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		capture_check_plan = plan;
	}
	values[0] = Int32GetDatum(binding_id);
	rc = SPI_execute_plan(capture_check_plan, values, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "binding lookup failed: %s", SPI_result_code_string(rc));
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("table \"%s\" is not attached to pg_shipsync binding %d",
						RelationGetRelationName(rel), binding_id),
				 errhint("Use shipsync.attach() to install the capture trigger.")));
	boundrel = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull));
	boundprov = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 2, &isnull));
	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec);
	if (boundrel != relid || boundprov != provider_id)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("table \"%s\" is not attached to pg_shipsync binding %d",
						RelationGetRelationName(rel), binding_id),
				 errhint("Use shipsync.attach() to install the capture trigger.")));

	if (capture_nchecked == CAPTURE_CHECKED_MAX)
		capture_nchecked = 0;
	capture_checked[capture_nchecked].binding_id = binding_id;
	capture_checked[capture_nchecked].provider_id = provider_id;
	capture_checked[capture_nchecked].relid = relid;
	capture_nchecked++;
}

static char *
capture_key(Relation rel, HeapTuple tuple, int keyattno, const char *keycol)
{
	char	   *key = SPI_getvalue(tuple, RelationGetDescr(rel), keyattno);

	if (key == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("order key column \"%s\" of table \"%s\" is null",
						keycol, RelationGetRelationName(rel)),
				 errdetail("pg_shipsync identifies each order by its key."),
				 errhint("Give every row a key, or attach the table with another key_column.")));
	return key;
}

/*
 * True when the UPDATE changed some column other than the key and the
 * write-back columns (tgargs[3..]).
 */
static bool
capture_row_changed(Relation rel, HeapTuple oldtup, HeapTuple newtup,
					Trigger *tg)
{
	TupleDesc	desc = RelationGetDescr(rel);

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		bool		oldnull;
		bool		newnull;
		Datum		oldv;
		Datum		newv;
		bool		skip = false;

		if (att->attisdropped)
			continue;
		for (int a = 3; a < tg->tgnargs; a++)
			if (strcmp(NameStr(att->attname), tg->tgargs[a]) == 0)
				skip = true;
		if (skip)
			continue;

		oldv = heap_getattr(oldtup, i + 1, desc, &oldnull);
		newv = heap_getattr(newtup, i + 1, desc, &newnull);
		if (oldnull != newnull)
			return true;
		if (!oldnull && !datumIsEqual(oldv, newv, att->attbyval, att->attlen))
			return true;
	}
	return false;
}

Datum
shipsync_capture(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *tg;
	Relation	rel;
	int32		binding_id;
	int32		provider_id;
	const char *keycol;
	int			keyattno;
	HeapTuple	rettuple;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("shipsync.capture() must be called as a trigger")));
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("shipsync.capture() must be an AFTER ... FOR EACH ROW trigger"),
				 errhint("Use shipsync.attach() to install it.")));

	rettuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;

	if (shipsync_capture_suppressed)
		return PointerGetDatum(rettuple);

	tg = trigdata->tg_trigger;
	rel = trigdata->tg_relation;
	if (tg->tgnargs < 3)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("shipsync.capture() on table \"%s\" has too few arguments",
						RelationGetRelationName(rel)),
				 errhint("Use shipsync.attach() to install it.")));
	binding_id = pg_strtoint32(tg->tgargs[0]);
	provider_id = pg_strtoint32(tg->tgargs[1]);
	keycol = tg->tgargs[2];
	keyattno = SPI_fnumber(RelationGetDescr(rel), keycol);
	if (keyattno <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("key column \"%s\" of table \"%s\" does not exist",
						keycol, RelationGetRelationName(rel)),
				 errhint("Attach the table again with shipsync.attach().")));

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) &&
		!capture_row_changed(rel, trigdata->tg_trigtuple, trigdata->tg_newtuple, tg))
		return PointerGetDatum(rettuple);

	capture_check_binding(binding_id, provider_id, rel);

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		capture_enqueue(binding_id, provider_id,
						capture_key(rel, trigdata->tg_trigtuple, keyattno, keycol),
						"create");
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		capture_enqueue(binding_id, provider_id,
						capture_key(rel, trigdata->tg_trigtuple, keyattno, keycol),
						"cancel");
	else
	{
		char	   *oldkey = capture_key(rel, trigdata->tg_trigtuple, keyattno, keycol);
		char	   *newkey = capture_key(rel, trigdata->tg_newtuple, keyattno, keycol);

		if (strcmp(oldkey, newkey) == 0)
			capture_enqueue(binding_id, provider_id, newkey, "update");
		else
		{
			/* a renamed order: the old one goes away, the new one ships */
			capture_enqueue(binding_id, provider_id, oldkey, "cancel");
			capture_enqueue(binding_id, provider_id, newkey, "create");
		}
	}

	shipsync_wake_at_commit(provider_id, false);

	return PointerGetDatum(rettuple);
}
