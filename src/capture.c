/*-------------------------------------------------------------------------
 *
 * capture.c
 *		The capture trigger and the commit-time wakeup.
 *
 * shipsync.capture() is an AFTER ROW trigger installed by shipsync.attach().
 * It does one thing in the user's transaction: insert one narrow row into
 * shipsync.inbox (INSERT -> create, UPDATE -> update, DELETE -> cancel),
 * straight into a heap with no index, with no executor start per row; the
 * dispatcher moves it into the indexed outbox in its own transaction, so
 * the user's insert pays for one small heap tuple and nothing else.
 * No network I/O; the only other read is a once-per-backend check that the
 * trigger's binding really belongs to its table.  The intent's idempotency
 * key is fixed here, and its id, which orders the intents of one order,
 * comes from a block of ids in shared memory (shipsync_next_intent_id()).
 *
 * Trigger arguments, written by attach(): binding id, provider id, key
 * column, then the write-back columns.  An UPDATE that changes nothing but
 * write-back columns enqueues nothing, and writes made by the dispatcher
 * itself (capture_suppress()) never enqueue: no echo (the rows it writes,
 * and what the table's triggers update or delete in reaction; an order
 * they insert is captured).
 *
 * An UPDATE that moves a row to another partition reaches the trigger as a
 * DELETE on the old partition and then an INSERT on the new one.  The
 * DELETE of a moved row (its ctid says so) is held back, and the INSERT of
 * the same key pairs with it: an update, as for any other UPDATE.  A held
 * DELETE that no INSERT pairs with (the key changed as well) is a cancel,
 * enqueued by the next INSERT of that table or, at the latest, before
 * the transaction commits.
 *
 * Waking the dispatcher: the first capture in a backend registers one
 * transaction callback for the life of the backend (never one per
 * transaction); a capture sets a flag, and at COMMIT the callback sets the
 * latch of the dispatcher of this database.  An aborted transaction wakes
 * no one.  A PREPARE notes the providers it captured for; the COMMIT
 * PREPARED, which runs no transaction callback, wakes the dispatcher from
 * the utility hook (pg_shipsync.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_am.h"
#include "catalog/pg_sequence.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "common/pg_prng.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "storage/lmgr.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/acl.h"
#include "utils/uuid.h"

#include "pg_shipsync.h"

PG_FUNCTION_INFO_V1(shipsync_capture);
PG_FUNCTION_INFO_V1(shipsync_wake);
PG_FUNCTION_INFO_V1(shipsync_intent_id);

/*
 * While the dispatcher or a push writes back onto order rows: the trigger
 * depth (pg_trigger_depth()) at which the row triggers of the write-back's
 * own statement fire; -1 otherwise.
 */
static int	capture_suppress_depth = -1;

static SPIPlanPtr capture_check_plan = NULL;

/* The trigger depth now, as pg_trigger_depth() gives it */
static int
capture_trigger_depth(void)
{
	LOCAL_FCINFO(fcinfo, 0);

	InitFunctionCallInfoData(*fcinfo, NULL, 0, InvalidOid, NULL, NULL);
	return DatumGetInt32(pg_trigger_depth(fcinfo));
}

/*
 * capture_suppress() and capture_unsuppress() bracket a write onto order
 * rows made by pg_shipsync itself (writeback.c): the capture trigger and
 * the validation trigger let those rows pass, so a write-back never
 * enqueues an intent (no echo).  capture_suppress() returns what
 * capture_unsuppress() takes back, so that a write-back inside another
 * (a trigger's) leaves the outer one suppressed; the caller unsuppresses
 * in PG_FINALLY.
 */
int
capture_suppress(void)
{
	int			prev = capture_suppress_depth;

	capture_suppress_depth = capture_trigger_depth() + 1;
	return prev;
}

void
capture_unsuppress(int prev)
{
	capture_suppress_depth = prev;
}

/*
 * Whether a row event (event, its old or only row trigtuple) is one a
 * write-back of pg_shipsync's own lets pass: every row of the write-back's
 * own statement, and the updates and deletes the table owner's triggers
 * make in reaction to it (deeper: a trigger's own statement), which change
 * orders already sent, as the write-back itself does.  A row a trigger
 * inserts is a new order, and is captured: an order inserted when another
 * is written back (a replacement sent when the first is returned) was
 * never sent.  So is the delete half of a row a trigger's update moves to
 * another partition, so that its insert half pairs with it as an update,
 * never a second create.
 */
bool
capture_suppressed(uint32 event, HeapTuple trigtuple)
{
	if (capture_suppress_depth < 0)
		return false;
	if (capture_trigger_depth() <= capture_suppress_depth)
		return true;
	if (TRIGGER_FIRED_BY_INSERT(event))
		return false;
	if (TRIGGER_FIRED_BY_DELETE(event) &&
		HeapTupleHeaderIndicatesMovedPartitions(trigtuple->t_data))
		return false;
	return true;
}

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

/*
 * A row moved out of a partition, held until the INSERT of its new
 * partition pairs with it (see the header).  In TopTransactionContext; the
 * subtransaction that captured it, so that a rolled-back savepoint drops
 * it.
 */
typedef struct CaptureMoved
{
	int32		binding_id;
	int32		provider_id;
	char	   *key;
	TupleDesc	desc;
	HeapTuple	tuple;
	SubTransactionId subid;
} CaptureMoved;
static List *capture_moved = NIL;

static void capture_flush_moved(int32 binding_id);

static void
capture_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			capture_flush_moved(0);
			break;
		case XACT_EVENT_COMMIT:
			if (capture_config_changed && shipsync_shared)
				pg_atomic_fetch_add_u64(&shipsync_shared->config_generation, 1);
			if (capture_providers != 0 || capture_config_changed)
				shipsync_wake_dispatcher(MyDatabaseId, capture_providers,
										 capture_config_changed);
			capture_providers = 0;
			capture_config_changed = false;
			break;
		case XACT_EVENT_PREPARE:

			/*
			 * Already listed in pg_prepared_xacts, not yet committable: the
			 * dispatcher's idle checks look for its intents until no
			 * prepared transaction is left.
			 */
			if (capture_providers != 0)
				shipsync_note_prepared(MyDatabaseId, capture_providers);
			capture_providers = 0;
			capture_config_changed = false;
			break;
		case XACT_EVENT_ABORT:
			capture_providers = 0;
			capture_config_changed = false;
			break;
		default:
			break;
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PREPARE ||
		event == XACT_EVENT_ABORT)
		capture_moved = NIL;	/* its memory goes with the transaction's */
}

/* A rolled-back savepoint drops the moves it captured, and its children's */
static void
capture_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	ListCell   *lc;

	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	foreach(lc, capture_moved)
	{
		CaptureMoved *m = (CaptureMoved *) lfirst(lc);

		if (m->subid >= mySubid)
			capture_moved = foreach_delete_current(capture_moved, lc);
	}
}

static void
capture_register_callbacks(void)
{
	if (!capture_callback_registered)
	{
		RegisterXactCallback(capture_xact_callback, NULL);
		RegisterSubXactCallback(capture_subxact_callback, NULL);
		capture_callback_registered = true;
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
	capture_register_callbacks();
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

/* What an intent asks for, as the inbox's op column spells it */
typedef enum CaptureOp
{
	CAPTURE_CREATE,
	CAPTURE_UPDATE,
	CAPTURE_CANCEL,
	CAPTURE_NOPS
} CaptureOp;

static const char *const capture_op_names[CAPTURE_NOPS] = {"create", "update", "cancel"};

/*
 * What capture needs to insert an intent, built once per backend and kept
 * until a relcache invalidation of the inbox (the table altered, an index
 * added, the extension dropped) marks it stale: the column numbers, the
 * identity sequence, the arrays a row is formed from and the three
 * operations as text.  The inbox has no index; should someone add one,
 * capture inserts into it through the executor.
 */
typedef struct InboxInfo
{
	bool		valid;
	MemoryContext cxt;			/* everything below lives here */
	Oid			relid;
	Oid			seqid;			/* shipsync.outbox_id_seq */
	Oid			owner;			/* the extension's owner, who owns the inbox */
	AttrNumber	att_id,
				att_binding,
				att_provider,
				att_key,
				att_op,
				att_idem,
				att_created;
	bool		has_indexes;
	int			natts;
	Datum	   *values;			/* natts of them, all null but ours */
	bool	   *nulls;
	Datum		op_text[CAPTURE_NOPS];	/* "create", "update", "cancel" */
} InboxInfo;

static InboxInfo inbox_info;
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
	if (relid == InvalidOid || relid == inbox_info.relid)
		inbox_info.valid = false;
}

static AttrNumber
inbox_attnum(Relation rel, const char *name)
{
	AttrNumber	a = SPI_fnumber(RelationGetDescr(rel), name);

	if (a <= 0)
		elog(ERROR, "column shipsync.inbox.%s is missing", name);
	return a;
}

/*
 * Fill the cache for the open inbox, in inbox_info.cxt.  The caller holds
 * the inbox with RowExclusiveLock.
 */
static void
capture_fill_info(Relation rel)
{
	InboxInfo *oi = &inbox_info;

	oi->relid = RelationGetRelid(rel);
	oi->owner = rel->rd_rel->relowner;
	/* ids are the outbox's: intents keep them when they move there */
	oi->seqid = get_relname_relid("outbox_id_seq", RelationGetNamespace(rel));
	if (get_rel_relkind(oi->seqid) != RELKIND_SEQUENCE)
		elog(ERROR, "sequence shipsync.outbox_id_seq is missing");
	oi->att_id = inbox_attnum(rel, "id");
	oi->att_binding = inbox_attnum(rel, "binding_id");
	oi->att_provider = inbox_attnum(rel, "provider_id");
	oi->att_key = inbox_attnum(rel, "order_key");
	oi->att_op = inbox_attnum(rel, "op");
	oi->att_idem = inbox_attnum(rel, "idempotency_key");
	oi->att_created = inbox_attnum(rel, "created_at");

	if (rel->rd_rel->relam != HEAP_TABLE_AM_OID)
		elog(ERROR, "shipsync.inbox is not a heap table");
	oi->has_indexes = RelationGetForm(rel)->relhasindex;
	oi->natts = RelationGetDescr(rel)->natts;
	oi->values = palloc0(sizeof(Datum) * oi->natts);
	oi->nulls = palloc(sizeof(bool) * oi->natts);
	memset(oi->nulls, true, sizeof(bool) * oi->natts);
	oi->nulls[oi->att_id - 1] = false;
	oi->nulls[oi->att_binding - 1] = false;
	oi->nulls[oi->att_provider - 1] = false;
	oi->nulls[oi->att_key - 1] = false;
	oi->nulls[oi->att_op - 1] = false;
	oi->nulls[oi->att_idem - 1] = false;
	oi->nulls[oi->att_created - 1] = false;
	for (int i = 0; i < CAPTURE_NOPS; i++)
		oi->op_text[i] = CStringGetTextDatum(capture_op_names[i]);
}

/*
 * (Re)build the cache.  It is marked valid before it is filled, so that an
 * invalidation accepted meanwhile makes the caller build it again; a
 * failure leaves it invalid.
 */
static void
capture_build_info(Relation rel)
{
	InboxInfo *oi = &inbox_info;
	MemoryContext old;

	if (oi->cxt == NULL)
		oi->cxt = AllocSetContextCreate(CacheMemoryContext, "pg_shipsync capture",
										ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(oi->cxt);
	oi->values = NULL;
	oi->nulls = NULL;
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

/*
 * Open shipsync.inbox with RowExclusiveLock and make sure the cache
 * describes it.
 *
 * The known relation is locked first and opened after: taking the lock
 * accepts every invalidation committed before it, and dropping or altering
 * the inbox invalidates it, which marks the cache stale.  So a cache still
 * valid once the lock is held proves the relation is there, and the
 * catalog probe that try_table_open() makes for every row is needed only
 * when the cache is stale.
 */
static Relation
capture_open_inbox(void)
{
	Relation	rel = NULL;
	Oid			known = inbox_info.relid;

	if (!capture_inval_registered)
	{
		CacheRegisterRelcacheCallback(capture_relcache_callback, (Datum) 0);
		capture_inval_registered = true;
	}
	if (OidIsValid(known))
	{
		LockRelationOid(known, RowExclusiveLock);
		if (inbox_info.valid ||
			SearchSysCacheExists1(RELOID, ObjectIdGetDatum(known)))
			rel = table_open(known, NoLock);
		else
			UnlockRelationOid(known, RowExclusiveLock);
	}
	if (rel == NULL)
	{
		Oid			nsp = get_namespace_oid("shipsync", false);
		Oid			relid = get_relname_relid("inbox", nsp);

		if (!OidIsValid(relid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("table shipsync.inbox does not exist"),
					 errhint("Create the extension pg_shipsync again.")));
		rel = table_open(relid, RowExclusiveLock);
		inbox_info.valid = false;
	}
	/* the lock above accepted any pending invalidation */
	while (!inbox_info.valid)
		capture_build_info(rel);
	return rel;
}

/*
 * Intent ids.
 *
 * Per-order ordering rests on ids: an intent captured after another one
 * committed (the update of an order after its create, say) must get the
 * larger id.  A sequence gives that, but nextval() was two thirds of the
 * trigger's cost: a relation lock, a privilege check and an exclusive lock
 * on the one sequence buffer that every inserting backend fights for.  A
 * per-backend sequence cache would break the ordering (two backends would
 * hand out interleaved ranges).
 *
 * So ids are handed out from shared memory, one block per database: the
 * outbox sequence advances by a whole block (its INCREMENT) and
 * shipsync_next_intent_id() takes the next id of the current block under
 * a spinlock.  Every value handed out is larger than every value handed
 * out before the call began:
 *   - within a block, ids are taken in order;
 *   - a block is installed only if it lies wholly above the current one and
 *     was reserved after its entry got its current owner (the epoch): a
 *     block reserved before an entry was reused is dropped;
 *   - a sequence value is larger than every earlier one, so a new entry's
 *     first block lies above all ids of that database's earlier entries.
 * Losing the table (restart, crash, an entry reused by another database)
 * only leaves a gap: the next block comes from the sequence, which is WAL
 * logged like any other and never goes back over a committed id.  Without
 * shared memory (the library not preloaded), ids come straight from the
 * sequence.  Everything that inserts intents takes ids here: capture
 * directly, SQL through the outbox's column default, shipsync._intent_id().
 */
/* The entry of sequence seqid of this database, or NULL; id_mutex held */
static ShipsyncIdBlock *
id_block_find(ShipsyncShared *sh, Oid seqid)
{
	for (int i = 0; i < SHIPSYNC_ID_BLOCKS; i++)
		if (sh->id_blocks[i].dbid == MyDatabaseId && sh->id_blocks[i].seqid == seqid)
			return &sh->id_blocks[i];
	return NULL;
}

int64
shipsync_next_intent_id(Oid seqid)
{
	ShipsyncShared *sh = shipsync_shared;

	if (sh == NULL)
		return nextval_internal(seqid, false);

	for (;;)
	{
		ShipsyncIdBlock *b = NULL;
		uint64		epoch;
		int64		base;
		int64		incr;
		HeapTuple	tup;

		SpinLockAcquire(&sh->id_mutex);
		b = id_block_find(sh, seqid);
		if (b == NULL)
		{
			for (int i = 0; i < SHIPSYNC_ID_BLOCKS && b == NULL; i++)
				if (sh->id_blocks[i].dbid == InvalidOid)
					b = &sh->id_blocks[i];
			if (b == NULL)
			{
				b = &sh->id_blocks[sh->id_victim];
				sh->id_victim = (sh->id_victim + 1) % SHIPSYNC_ID_BLOCKS;
			}
			b->dbid = MyDatabaseId;
			b->seqid = seqid;
			b->epoch = ++sh->id_epoch;
			b->next = b->limit = 0;
		}
		if (b->next < b->limit)
		{
			int64		id = b->next++;

			SpinLockRelease(&sh->id_mutex);
			return id;
		}
		epoch = b->epoch;
		SpinLockRelease(&sh->id_mutex);

		/* reserve a block: the sequence's value and its increment */
		base = nextval_internal(seqid, false);
		tup = SearchSysCache1(SEQRELID, ObjectIdGetDatum(seqid));
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for sequence %u", seqid);
		incr = ((Form_pg_sequence) GETSTRUCT(tup))->seqincrement;
		ReleaseSysCache(tup);
		if (incr <= 1)
			return base;		/* no block to share: plain nextval */

		SpinLockAcquire(&sh->id_mutex);
		if (b->epoch == epoch && base >= b->limit)
		{
			b->next = base;
			b->limit = base + incr;
		}
		SpinLockRelease(&sh->id_mutex);
	}
}

/*
 * The id shipsync_next_intent_id() would hand out next in this database,
 * without taking it; 0 when not known (no block since the start, or no
 * shared memory).  The dispatcher reads it to tell how many intents can be
 * waiting in the inbox at most (outbox.c).
 */
int64
shipsync_peek_intent_id(Oid seqid)
{
	ShipsyncShared *sh = shipsync_shared;
	ShipsyncIdBlock *b;
	int64		next;

	if (sh == NULL)
		return 0;
	SpinLockAcquire(&sh->id_mutex);
	b = id_block_find(sh, seqid);
	next = b ? b->next : 0;
	SpinLockRelease(&sh->id_mutex);
	return next;
}

/*
 * shipsync._intent_id(seq regclass): the default of shipsync.outbox.id.
 * It advances the sequence, so it asks for the rights nextval() would.
 */
Datum
shipsync_intent_id(PG_FUNCTION_ARGS)
{
	Oid			seqid = PG_GETARG_OID(0);
	char	   *name = get_rel_name(seqid);

	if (get_rel_relkind(seqid) != RELKIND_SEQUENCE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a sequence", name ? name : "?")));
	if (pg_class_aclcheck(seqid, GetUserId(), ACL_USAGE | ACL_UPDATE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for sequence %s", name)));
	PG_RETURN_INT64(shipsync_next_intent_id(seqid));
}

/*
 * Should someone have indexed the inbox: insert the new row's index
 * entries through the executor, as any insert would.
 */
static void
capture_index_intent(Relation rel, HeapTuple tup)
{
	EState	   *estate = CreateExecutorState();
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(rel),
													&TTSOpsHeapTuple);

	ExecStoreHeapTuple(tup, slot, false);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	if (rri->ri_NumIndices > 0)
		list_free(ExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL));
	ExecCloseIndices(rri);
	ExecDropSingleTupleTableSlot(slot);
	FreeExecutorState(estate);
}

/*
 * Insert one intent into shipsync.inbox: a row formed from the cached
 * arrays and handed to heap_insert(), no parser, planner, executor start
 * or tuple slot per row, no index.  The id is an intent id (intents keep
 * it when they move to the outbox) and the idempotency key is fixed here.
 * Only this function and the dispatcher write the inbox, so nothing else
 * needs to run.
 */
static void
capture_enqueue(int32 binding_id, int32 provider_id, const char *key,
				CaptureOp op)
{
	Relation	rel = capture_open_inbox();
	InboxInfo  *oi = &inbox_info;
	Datum	   *values = oi->values;
	pg_uuid_t	uuid;
	HeapTuple	tup;

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

		memcpy(uuid.data, &hi, 8);
		memcpy(uuid.data + 8, &lo, 8);
	}
	uuid.data[6] = (uuid.data[6] & 0x0f) | 0x40;	/* version 4 */
	uuid.data[8] = (uuid.data[8] & 0x3f) | 0x80;	/* RFC 4122 variant */

	/*
	 * The nulls of these columns were cleared when the cache was built;
	 * every value is set anew for each row (those of the last row point to
	 * memory that is gone by now).  An invalidation accepted meanwhile only
	 * marks the cache stale, so the arrays stay until the next open.
	 */
	values[oi->att_id - 1] = Int64GetDatum(shipsync_next_intent_id(oi->seqid));
	values[oi->att_binding - 1] = Int32GetDatum(binding_id);
	values[oi->att_provider - 1] = Int32GetDatum(provider_id);
	values[oi->att_key - 1] = CStringGetTextDatum(key);
	values[oi->att_op - 1] = oi->op_text[op];
	values[oi->att_idem - 1] = UUIDPGetDatum(&uuid);
	values[oi->att_created - 1] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	tup = heap_form_tuple(RelationGetDescr(rel), values, oi->nulls);
	heap_insert(rel, tup, GetCurrentCommandId(true), 0, NULL);

	if (oi->has_indexes)
		capture_index_intent(rel, tup);
	table_close(rel, NoLock);
}

/*
 * Whether rel is the attached table relid, or one of its partitions: the
 * row triggers attach() makes on a partitioned table are cloned onto each
 * partition and fire with the partition's relation.
 */
bool
capture_table_is(Relation rel, Oid relid)
{
	List	   *ancestors;
	bool		under;

	if (RelationGetRelid(rel) == relid)
		return true;
	if (!OidIsValid(relid) || !rel->rd_rel->relispartition)
		return false;
	ancestors = get_partition_ancestors(RelationGetRelid(rel));
	under = list_member_oid(ancestors, relid);
	list_free(ancestors);
	return under;
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
	table_close(capture_open_inbox(), NoLock);
	owner = inbox_info.owner;
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	if ((rc = SPI_connect()) != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed: %s", SPI_result_code_string(rc));
	if (capture_check_plan == NULL)
	{
		Oid			argtypes[1] = {INT4OID};

		/*
		 * Qualified throughout: this runs as the extension's owner under
		 * the search_path of whoever inserts, and is re-analysed whenever
		 * that path changes.
		 */
		capture_check_plan = shipsync_prepare_saved("SELECT tbl::pg_catalog.oid, provider_id"
													" FROM shipsync.binding"
													" WHERE binding_id OPERATOR(pg_catalog.=) $1",
													1, argtypes);
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
	if (!capture_table_is(rel, boundrel) || boundprov != provider_id)
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

/*
 * The key as text, through the key type's output function; the function
 * of the last key type is kept (a type's output function never changes),
 * where SPI_getvalue() would look it up in the syscache for every row.
 * A date, time or interval is printed as ISO 8601, in UTC, a float in its
 * shortest exact form and a bytea in hex, whatever the session's DateStyle,
 * IntervalStyle, TimeZone, extra_float_digits and bytea_output
 * (shipsync_keys_as_iso()): the dispatcher reads the key back with its own
 * settings, and reconciliation and resync() print keys the same way.
 *
 * A null or empty key names no order: a new row's (old false) is refused,
 * as a carrier takes no order without a reference; an old row's (old true:
 * a row deleted, or given a key by an update) gives NULL, since nothing
 * was ever sent for it and there is nothing to cancel.  So does a key
 * longer than SHIPSYNC_MAX_KEY_BYTES: taken into the inbox, it could not
 * be moved into the outbox (its index entry would be too large), and the
 * drain, which moves intents in id order, failed on it at every pass and
 * held back every order of every table behind it.
 */
static char *
capture_key(Relation rel, HeapTuple tuple, int keyattno, const char *keycol,
			bool old)
{
	static Oid	out_type = InvalidOid;
	static FmgrInfo out_fn;
	static bool out_styled;
	TupleDesc	desc = RelationGetDescr(rel);
	Oid			typid = TupleDescAttr(desc, keyattno - 1)->atttypid;
	bool		isnull;
	Datum		d = heap_getattr(tuple, keyattno, desc, &isnull);
	char	   *key = NULL;

	if (!isnull)
	{
		if (typid != out_type)
		{
			Oid			fn;
			bool		isvarlena;
			char		category;
			bool		preferred;

			out_type = InvalidOid;
			getTypeOutputInfo(typid, &fn, &isvarlena);
			fmgr_info_cxt(fn, &out_fn, TopMemoryContext);
			get_type_category_preferred(getBaseType(typid), &category, &preferred);
			out_styled = (category == TYPCATEGORY_DATETIME ||
						  category == TYPCATEGORY_TIMESPAN ||
						  getBaseType(typid) == FLOAT4OID ||
						  getBaseType(typid) == FLOAT8OID ||
						  getBaseType(typid) == BYTEAOID);
			out_type = typid;
		}
		if (out_styled)
		{
			int			nest = NewGUCNestLevel();

			shipsync_keys_as_iso();
			key = OutputFunctionCall(&out_fn, d);
			AtEOXact_GUC(false, nest);
		}
		else
			key = OutputFunctionCall(&out_fn, d);
	}
	if (old && (key == NULL || key[0] == '\0' ||
				strlen(key) > SHIPSYNC_MAX_KEY_BYTES))
		return NULL;
	if (key == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("order key column \"%s\" of table \"%s\" is null",
						keycol, RelationGetRelationName(rel)),
				 errdetail("pg_shipsync identifies each order by its key."),
				 errhint("Give every row a key, or attach the table with another key_column.")));
	if (key[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("order key column \"%s\" of table \"%s\" is empty",
						keycol, RelationGetRelationName(rel)),
				 errdetail("pg_shipsync identifies each order by its key, and sends it as the order's reference, which a carrier requires."),
				 errhint("Give every row a key, or attach the table with another key_column.")));
	if (strlen(key) > SHIPSYNC_MAX_KEY_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("order key column \"%s\" of table \"%s\" is too long",
						keycol, RelationGetRelationName(rel)),
				 errdetail("The key is %zu bytes as text; pg_shipsync takes order keys of at most %d bytes.",
						   strlen(key), SHIPSYNC_MAX_KEY_BYTES),
				 errhint("Attach the table with a shorter key_column.")));
	return key;
}

/*
 * True when the row changed some column other than the write-back columns
 * (tgargs[3..]).  The old row is another partition's when a row moved: its
 * columns are then found by name.
 *
 * Each row is deformed once: heap_getattr() per column walks the row from
 * its start for every column past the first variable-width one, which made
 * this check grow with the square of the table's width.  Column names are
 * compared with the write-back columns only for the columns that changed.
 */
static bool
capture_row_changed(TupleDesc odesc, HeapTuple oldtup,
					TupleDesc desc, HeapTuple newtup, Trigger *tg)
{
	int			natts = desc->natts;
	Datum	   *oldv = palloc(sizeof(Datum) * odesc->natts);
	Datum	   *newv = palloc(sizeof(Datum) * natts);
	bool	   *oldnull = palloc(sizeof(bool) * odesc->natts);
	bool	   *newnull = palloc(sizeof(bool) * natts);
	bool		changed = false;

	heap_deform_tuple(oldtup, odesc, oldv, oldnull);
	heap_deform_tuple(newtup, desc, newv, newnull);
	for (int i = 0; i < natts && !changed; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		int			j = i;

		if (att->attisdropped)
			continue;
		if (odesc != desc)
		{
			for (j = 0; j < odesc->natts; j++)
				if (!TupleDescAttr(odesc, j)->attisdropped &&
					strcmp(NameStr(TupleDescAttr(odesc, j)->attname),
						   NameStr(att->attname)) == 0)
					break;
		}
		if (j < odesc->natts &&
			oldnull[j] == newnull[i] &&
			(oldnull[j] ||
			 datumIsEqual(oldv[j], newv[i], att->attbyval, att->attlen)))
			continue;			/* unchanged */
		changed = true;
		for (int a = 3; a < tg->tgnargs; a++)
			if (strcmp(NameStr(att->attname), tg->tgargs[a]) == 0)
				changed = false;
	}
	pfree(oldv);
	pfree(newv);
	pfree(oldnull);
	pfree(newnull);
	return changed;
}

static void
capture_free_moved(CaptureMoved *m)
{
	pfree(m->key);
	heap_freetuple(m->tuple);
	FreeTupleDesc(m->desc);
	pfree(m);
}

/* The DELETE of a row moved to another partition: held (see the header) */
static void
capture_hold_moved(Relation rel, HeapTuple tuple, int32 binding_id,
				   int32 provider_id, const char *key)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);
	CaptureMoved *m = palloc(sizeof(CaptureMoved));

	m->binding_id = binding_id;
	m->provider_id = provider_id;
	m->key = pstrdup(key);
	m->desc = CreateTupleDescCopy(RelationGetDescr(rel));
	m->tuple = heap_copytuple(tuple);
	m->subid = GetCurrentSubTransactionId();
	capture_moved = lappend(capture_moved, m);
	MemoryContextSwitchTo(oldcxt);
	capture_register_callbacks();
}

/*
 * The held moves of one binding (0: every binding) that no INSERT paired
 * with: each is a cancel of its old key.
 */
static void
capture_flush_moved(int32 binding_id)
{
	ListCell   *lc;

	foreach(lc, capture_moved)
	{
		CaptureMoved *m = (CaptureMoved *) lfirst(lc);

		if (binding_id != 0 && m->binding_id != binding_id)
			continue;
		capture_moved = foreach_delete_current(capture_moved, lc);
		capture_enqueue(m->binding_id, m->provider_id, m->key, CAPTURE_CANCEL);
		shipsync_wake_at_commit(m->provider_id, false);
		capture_free_moved(m);
	}
}

/*
 * An INSERT: the new half of a moved row when a held DELETE of the same
 * binding and key pairs with it (an update, unless only write-back columns
 * changed), else a create.
 */
static void
capture_insert(Relation rel, HeapTuple tuple, int32 binding_id,
			   int32 provider_id, const char *key, Trigger *tg)
{
	ListCell   *lc;

	foreach(lc, capture_moved)
	{
		CaptureMoved *m = (CaptureMoved *) lfirst(lc);

		if (m->binding_id != binding_id || strcmp(m->key, key) != 0)
			continue;
		capture_moved = foreach_delete_current(capture_moved, lc);
		if (capture_row_changed(m->desc, m->tuple, RelationGetDescr(rel),
								tuple, tg))
			capture_enqueue(binding_id, provider_id, key, CAPTURE_UPDATE);
		capture_free_moved(m);
		return;
	}
	/* a move whose key changed too: the old key goes away, as below */
	capture_flush_moved(binding_id);
	capture_enqueue(binding_id, provider_id, key, CAPTURE_CREATE);
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

	if (capture_suppressed(trigdata->tg_event, trigdata->tg_trigtuple))
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
		!capture_row_changed(RelationGetDescr(rel), trigdata->tg_trigtuple,
							 RelationGetDescr(rel), trigdata->tg_newtuple, tg))
		return PointerGetDatum(rettuple);

	capture_check_binding(binding_id, provider_id, rel);

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		capture_insert(rel, trigdata->tg_trigtuple, binding_id, provider_id,
					   capture_key(rel, trigdata->tg_trigtuple, keyattno, keycol, false),
					   tg);
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		char	   *oldkey = capture_key(rel, trigdata->tg_trigtuple, keyattno, keycol, true);

		if (oldkey == NULL)
			return PointerGetDatum(rettuple);	/* never sent: nothing to cancel */
		if (HeapTupleHeaderIndicatesMovedPartitions(trigdata->tg_trigtuple->t_data))
			capture_hold_moved(rel, trigdata->tg_trigtuple, binding_id, provider_id, oldkey);
		else
			capture_enqueue(binding_id, provider_id, oldkey, CAPTURE_CANCEL);
	}
	else
	{
		char	   *oldkey = capture_key(rel, trigdata->tg_trigtuple, keyattno, keycol, true);
		char	   *newkey = capture_key(rel, trigdata->tg_newtuple, keyattno, keycol, false);

		if (oldkey != NULL && strcmp(oldkey, newkey) == 0)
			capture_enqueue(binding_id, provider_id, newkey, CAPTURE_UPDATE);
		else
		{
			/* a renamed order: the old one goes away, the new one ships */
			if (oldkey != NULL)
				capture_enqueue(binding_id, provider_id, oldkey, CAPTURE_CANCEL);
			capture_enqueue(binding_id, provider_id, newkey, CAPTURE_CREATE);
		}
	}

	shipsync_wake_at_commit(provider_id, false);

	return PointerGetDatum(rettuple);
}
