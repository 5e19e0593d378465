/*-------------------------------------------------------------------------
 *
 * asowner.c
 *		shipsync._select_as_owner(): the rows of a statement over an order
 *		table, read as the table's owner, for the extension's SQL.
 *
 * Reconciliation (_reconcile_crm, _reconcile_carrier) and resync() are
 * PL/pgSQL that runs as a superuser: the reconcile worker's bootstrap
 * superuser, or the extension's owner through a SECURITY DEFINER function.
 * Whatever of an order table's owner they run -- the check of a domain
 * the key column has been given, its type's functions, row security, a
 * cast of a key to the key's type -- must run as that owner, as the
 * dispatcher's render and write-back do (security.c).  So the statements
 * that touch an order table are not run by the PL/pgSQL itself: they go
 * through this function, which plans and runs one read-only statement as
 * the table's owner, in a security-restricted operation and a GUC nest
 * level of its own (shipsync_become_owner()), and hands its rows back to
 * the caller, who joins them with the extension's tables under its own
 * rights.  The owner never gets the extension's tables, and the superuser
 * never runs the owner's code.
 *
 * The rows are written straight into the caller's tuplestore, converted
 * by position to the column definition list of the call: a statement
 * whose columns do not have the types the caller expects is an error, not
 * a misread.
 *
 * _select_digests_as_owner() is the same with one step more: the
 * statement's last column is an order row, and what reaches the tuplestore
 * in its place is the row's digest (digest.c), computed as each row comes
 * out of the owner's statement, still as the owner.  A full reconciliation
 * pass reads a million rows: keeping each whole row in the tuplestore, to
 * digest it afterwards, was most of the pass's cost.
 *
 * Both tell the planner how many rows to expect (their support function,
 * _select_as_owner_rows): as many as keys when keys are given, else as
 * many as the table holds.  The comparison that joins a full pass's rows
 * with the shipments is then planned for a million rows, not the thousand
 * a set-returning function is otherwise taken to return.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/tupdesc.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tstoreReceiver.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "nodes/nodeFuncs.h"
#include "nodes/params.h"
#include "nodes/supportnodes.h"
#include "optimizer/optimizer.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "pg_shipsync.h"

PG_FUNCTION_INFO_V1(shipsync_select_as_owner);
PG_FUNCTION_INFO_V1(shipsync_select_digests_as_owner);
PG_FUNCTION_INFO_V1(shipsync_select_as_owner_rows);

#define ASOWNER_COLUMNS_DIFFER \
	"the rows of a statement run as the table's owner do not have the columns expected"

/*
 * A receiver that hands each row on to the tuplestore's receiver with its
 * last column, an order row, replaced by the row's digest.
 */
typedef struct DigestDest
{
	DestReceiver pub;
	DestReceiver *store;		/* the caller's tuplestore */
	ArrayType  *skip;			/* the write-back columns the digest leaves out */
	DigestCache *cache;
	TupleTableSlot *out;		/* the row handed on */
	MemoryContext row_cxt;		/* what digesting one row allocates */
} DigestDest;

static void
digest_dest_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
	DigestDest *d = (DigestDest *) self;
	int			last = typeinfo->natts - 1;
	Form_pg_attribute row;
	TupleDesc	out;

	row = last >= 0 ? TupleDescAttr(typeinfo, last) : NULL;
	if (row == NULL || !type_is_rowtype(row->atttypid))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg(ASOWNER_COLUMNS_DIFFER),
				 errdetail("The last column of a statement whose rows are digested must be a row.")));
	d->cache = shipsync_digest_prepare(row->atttypid, row->atttypmod, d->skip,
									   CurrentMemoryContext);
	/* the statement's columns, its last a bigint: the tuplestore checks them */
	out = CreateTupleDescCopy(typeinfo);
	TupleDescInitEntry(out, last + 1, NameStr(row->attname), INT8OID, -1, 0);
	d->out = MakeSingleTupleTableSlot(out, &TTSOpsVirtual);
	d->row_cxt = AllocSetContextCreate(CurrentMemoryContext, "shipsync row digest",
									   ALLOCSET_SMALL_SIZES);
	d->store->rStartup(d->store, operation, out);
}

static bool
digest_dest_receive(TupleTableSlot *slot, DestReceiver *self)
{
	DigestDest *d = (DigestDest *) self;
	int			last = slot->tts_tupleDescriptor->natts - 1;
	TupleTableSlot *out = d->out;
	MemoryContext old;
	bool		ok;

	slot_getallattrs(slot);
	ExecClearTuple(out);
	memcpy(out->tts_values, slot->tts_values, sizeof(Datum) * last);
	memcpy(out->tts_isnull, slot->tts_isnull, sizeof(bool) * last);
	out->tts_isnull[last] = slot->tts_isnull[last];
	out->tts_values[last] = (Datum) 0;
	if (!slot->tts_isnull[last])
	{
		old = MemoryContextSwitchTo(d->row_cxt);
		out->tts_values[last] =
			Int64GetDatum(shipsync_digest_row(d->cache,
											  DatumGetHeapTupleHeader(slot->tts_values[last])));
		MemoryContextSwitchTo(old);
	}
	ExecStoreVirtualTuple(out);
	ok = d->store->receiveSlot(out, d->store);
	MemoryContextReset(d->row_cxt);
	return ok;
}

static void
digest_dest_shutdown(DestReceiver *self)
{
	DigestDest *d = (DigestDest *) self;

	d->store->rShutdown(d->store);
	if (d->out != NULL)
		ExecDropSingleTupleTableSlot(d->out);
	d->out = NULL;
}

static void
digest_dest_destroy(DestReceiver *self)
{
	DigestDest *d = (DigestDest *) self;

	d->store->rDestroy(d->store);
	pfree(d);
}

/*
 * Run the SELECT of argument 1 as the owner of table argument 0, with
 * arguments 2 and 3 as $1 and $2, into the caller's tuplestore; skip, when
 * not NULL, has the last column digested on its way (DigestDest).
 */
static void
select_as_owner(FunctionCallInfo fcinfo, ArrayType *skip)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			argtypes[2] = {TEXTARRAYOID, INT4OID};
	ParamListInfo params;
	SPIExecuteOptions opts = {0};
	DestReceiver *dest;
	ShipsyncUserSave save;
	SPIPlanPtr	plan;
	char	   *stmt;
	Oid			owner;
	int			rc;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		elog(ERROR, "a statement to run as a table's owner needs its table and its text");
	owner = shipsync_table_owner(PG_GETARG_OID(0));
	shipsync_check_owner_sees_all(PG_GETARG_OID(0), owner);
	stmt = text_to_cstring(PG_GETARG_TEXT_PP(1));

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	params = makeParamList(2);
	for (int i = 0; i < 2; i++)
	{
		params->params[i].ptype = argtypes[i];
		params->params[i].pflags = PARAM_FLAG_CONST;
		params->params[i].isnull = PG_ARGISNULL(i + 2);
		params->params[i].value = PG_ARGISNULL(i + 2) ? (Datum) 0 : PG_GETARG_DATUM(i + 2);
	}
	dest = CreateDestReceiver(DestTuplestore);
	SetTuplestoreDestReceiverParams(dest, rsinfo->setResult,
									rsinfo->econtext->ecxt_per_query_memory, false,
									rsinfo->setDesc, ASOWNER_COLUMNS_DIFFER);
	if (skip != NULL)
	{
		DigestDest *d = palloc0(sizeof(DigestDest));

		d->pub.receiveSlot = digest_dest_receive;
		d->pub.rStartup = digest_dest_startup;
		d->pub.rShutdown = digest_dest_shutdown;
		d->pub.rDestroy = digest_dest_destroy;
		d->pub.mydest = DestTuplestore;
		d->store = dest;
		d->skip = skip;
		dest = &d->pub;
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	shipsync_become_owner(owner, &save);
	/* keys read as text are the text capture gives them */
	shipsync_keys_as_iso();
	PG_TRY();
	{
		/* planned as the owner too: planning may run its IMMUTABLE functions */
		plan = SPI_prepare(stmt, 2, argtypes);
		if (plan == NULL)
			elog(ERROR, "preparing a statement to run as a table's owner failed: %s",
				 SPI_result_code_string(SPI_result));
		opts.params = params;
		opts.read_only = true;
		opts.dest = dest;
		rc = SPI_execute_plan_extended(plan, &opts);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "a statement run as a table's owner must be a SELECT: %s",
				 SPI_result_code_string(rc));
	}
	PG_FINALLY();
	{
		shipsync_restore_user(&save);
	}
	PG_END_TRY();
	SPI_finish();
	dest->rDestroy(dest);
}

/*
 * shipsync._select_as_owner(tbl regclass, stmt text, keys text[], n integer)
 * returns setof record: the rows of the SELECT stmt, run as the owner of
 * tbl with $1 = keys and $2 = n (either may be NULL), in the columns of
 * the call's column definition list.  Granted to no one: the extension's
 * own functions call it, with statements they built.
 */
Datum
shipsync_select_as_owner(PG_FUNCTION_ARGS)
{
	select_as_owner(fcinfo, NULL);
	return (Datum) 0;
}

/*
 * shipsync._select_digests_as_owner(tbl regclass, stmt text, keys text[],
 * n integer, skip text[]) returns setof record: the same, the statement's
 * last column an order row that the call's rows have as its digest
 * (_row_digest(row, skip)), a bigint.  Granted to no one.
 */
Datum
shipsync_select_digests_as_owner(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(4))
		elog(ERROR, "a statement whose rows are digested needs the columns to leave out");
	select_as_owner(fcinfo, PG_GETARG_ARRAYTYPE_P(4));
	return (Datum) 0;
}

/*
 * shipsync._select_as_owner_rows(internal) returns internal: the planner's
 * estimate of the rows of both functions above (SupportRequestRows), when
 * their arguments are known at planning time (constants, or the parameters
 * of a one-shot plan such as PL/pgSQL's EXECUTE ... USING): the number of
 * keys, or without keys the table's reltuples.
 */
Datum
shipsync_select_as_owner_rows(PG_FUNCTION_ARGS)
{
	Node	   *rawreq = (Node *) PG_GETARG_POINTER(0);
	SupportRequestRows *req;
	List	   *args;
	Node	   *tbl;
	Node	   *keys;

	if (!IsA(rawreq, SupportRequestRows))
		PG_RETURN_POINTER(NULL);
	req = (SupportRequestRows *) rawreq;
	if (!is_funcclause(req->node) || req->root == NULL)
		PG_RETURN_POINTER(NULL);
	args = ((FuncExpr *) req->node)->args;
	if (list_length(args) < 3)
		PG_RETURN_POINTER(NULL);
	tbl = estimate_expression_value(req->root, linitial(args));
	keys = estimate_expression_value(req->root, lthird(args));
	if (!IsA(keys, Const))
		PG_RETURN_POINTER(NULL);
	if (!((Const *) keys)->constisnull)
	{
		ArrayType  *a = DatumGetArrayTypeP(((Const *) keys)->constvalue);

		req->rows = Max(1, ArrayGetNItems(ARR_NDIM(a), ARR_DIMS(a)));
		PG_RETURN_POINTER(req);
	}
	if (IsA(tbl, Const) && !((Const *) tbl)->constisnull)
	{
		HeapTuple	tup;
		float4		reltuples = -1;

		tup = SearchSysCache1(RELOID, ((Const *) tbl)->constvalue);
		if (HeapTupleIsValid(tup))
		{
			reltuples = ((Form_pg_class) GETSTRUCT(tup))->reltuples;
			ReleaseSysCache(tup);
		}
		if (reltuples >= 0)
		{
			req->rows = Max(1, reltuples);
			PG_RETURN_POINTER(req);
		}
	}
	PG_RETURN_POINTER(NULL);
}
