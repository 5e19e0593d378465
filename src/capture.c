/*-------------------------------------------------------------------------
 *
 * capture.c
 *		The capture trigger and the commit-time wakeup.
 *
 * shipsync.capture() is an AFTER ROW trigger installed by shipsync.attach().
 * It does one thing in the user's transaction: insert one narrow row into
 * shipsync.outbox through a saved plan (INSERT -> create, UPDATE -> update,
 * DELETE -> cancel).  No network I/O, no reading of other tables.  The
 * intent's idempotency key is fixed here, by the outbox column default.
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
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/rel.h"

#include "pg_shipsync.h"

PG_FUNCTION_INFO_V1(shipsync_capture);
PG_FUNCTION_INFO_V1(shipsync_wake);

/* set by the dispatcher while it writes back onto CRM rows */
bool		shipsync_capture_suppressed = false;

static SPIPlanPtr capture_plan = NULL;
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
static bool capture_wake_pending = false;
static bool capture_config_changed = false;

static void
capture_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (capture_config_changed && shipsync_shared)
				pg_atomic_fetch_add_u64(&shipsync_shared->config_generation, 1);
			if (capture_wake_pending || capture_config_changed)
				shipsync_wake_dispatcher(MyDatabaseId);
			capture_wake_pending = false;
			capture_config_changed = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			/* a prepared transaction is found by the idle check */
			capture_wake_pending = false;
			capture_config_changed = false;
			break;
		default:
			break;
	}
}

/*
 * Ask for the dispatcher of this database to be woken when the current
 * transaction commits; with config_changed, it also reloads providers and
 * bindings.
 */
void
shipsync_wake_at_commit(bool config_changed)
{
	if (!capture_callback_registered)
	{
		RegisterXactCallback(capture_xact_callback, NULL);
		capture_callback_registered = true;
	}
	capture_wake_pending = true;
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
	shipsync_wake_at_commit(PG_ARGISNULL(0) ? false : PG_GETARG_BOOL(0));
	PG_RETURN_VOID();
}

static void
capture_enqueue(int32 binding_id, int32 provider_id, const char *key,
				const char *op)
{
	Datum		values[4];
	int			rc;

	if (capture_plan == NULL)
	{
		Oid			argtypes[4] = {INT4OID, INT4OID, TEXTOID, TEXTOID};
		SPIPlanPtr	plan;

		plan = SPI_prepare("INSERT INTO shipsync.outbox"
						   " (binding_id, provider_id, order_key, op)"
						   " VALUES ($1, $2, $3, $4)", 4, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for the outbox insert: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		capture_plan = plan;
	}

	values[0] = Int32GetDatum(binding_id);
	values[1] = Int32GetDatum(provider_id);
	values[2] = CStringGetTextDatum(key);
	values[3] = CStringGetTextDatum(op);
	rc = SPI_execute_plan(capture_plan, values, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "outbox insert failed: %s", SPI_result_code_string(rc));
}

static void
capture_check_binding(int32 binding_id, int32 provider_id, Relation rel)
{
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
	int			rc;

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

	if ((rc = SPI_connect()) != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed: %s", SPI_result_code_string(rc));

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

	SPI_finish();
	shipsync_wake_at_commit(false);

	return PointerGetDatum(rettuple);
}
