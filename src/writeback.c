/*-------------------------------------------------------------------------
 *
 * writeback.c
 *		Writing shipment fields back onto the user's order rows: the one
 *		path of delivery results, tracking statuses and fee totals.
 *
 * Each binding has a write-back statement (binding.writeback_sql, made by
 * attach() from its writeback option): an UPDATE of the order table from
 * six parallel arrays, $1 order keys, $2 provider shipment ids, $3
 * tracking numbers, $4 statuses, $5 label URLs, $6 fee totals; a column
 * whose array element is NULL keeps its value.  Every writer goes through
 * writeback_run(): apply (outbox.c) with the shipments a batch recorded,
 * tracking.c with statuses that changed, fees.c with fee totals.
 *
 * The statement runs with the rights of the table's owner, never of a
 * superuser, in a restricted operation (security.c), so the user's row
 * security, triggers and constraints apply as to the owner (its deferrable
 * constraints set IMMEDIATE for the statement, checked at its end, since a
 * restricted operation cannot leave them deferred); and with
 * capture suppressed (capture.c), so that the rows we write enqueue no
 * intent: no echo.  A table whose row security is forced on an owner
 * without BYPASSRLS is refused (shipsync_check_owner_sees_all()): an
 * order hidden from the owner would be written nothing, without a word.
 *
 * A binding without a write-back statement, a binding that no longer
 * exists, or an order table that no longer exists is written nothing, and
 * that is not an error: the rows there were to write onto are gone with
 * their table (the event trigger of DROP TABLE has made the binding
 * inactive and its waiting intents dead, each with a ticket).  The shipment,
 * status or fee total is recorded in the shipsync tables all the same.  A
 * statement that fails raises the error: the caller's slow path decides
 * what it costs (one intent dead with writeback_failed).  Tracking
 * statuses and fee totals go through writeback_values(), which isolates
 * the failure itself: each binding's statement in a subtransaction, then
 * order by order, so that one order whose row refuses its status or its
 * fee total gets a writeback_failed ticket and the push, the poll, the
 * statement or the match of parked events that brought it is kept,
 * events, shipment statuses, fee lines and the other orders' rows with
 * it.  An error a retry can get past (lock_timeout, a deadlock) is raised
 * as it is, for the sender to try again.
 *
 * Plans: one saved plan per binding, in TopMemoryContext, made again when
 * the statement text changes (attach() run again) and freed when a
 * configuration loaded finds its binding no longer attached
 * (writeback_forget_plans(); the receiver, which loads no configuration,
 * looks at shipsync.binding: writeback_forget_detached()); PostgreSQL's plan cache re-plans it when the table changes, and
 * src/spi.c when the table has doubled.  It is always the generic plan,
 * which finds the rows by key through the table's index: left to the plan
 * cache, the first five runs of a process (and five after every re-plan)
 * were custom plans, each made anew, and for a batch of a few hundred keys
 * against a table of some 20,000 rows the custom plan hash-joined a
 * sequential scan of the whole table (14 ms against 1 to 2 ms).  The
 * generic plan itself is made by key (shipsync_execute_by_key() in
 * src/spi.c): PostgreSQL's own hash-joins the whole table up to a couple of
 * thousand rows, for every batch.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

#define WRITEBACK_NARGS 6

/* One binding's saved write-back plan, and the text it was made from */
typedef struct WritebackPlan
{
	int32		binding_id;
	char	   *sql;
	SPIPlanPtr	plan;
} WritebackPlan;

static WritebackPlan *wb_plans = NULL;
static int	n_wb_plans = 0;

/* writeback_orders()'s wait for a held order row in ms, 0: no limit */
static int	orders_lock_timeout_ms = 0;
static SPIPlanPtr binding_plan = NULL;

static const Oid writeback_types[WRITEBACK_NARGS] = {
	TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	NUMERICARRAYOID
};

/*
 * The saved plan of a binding's write-back statement, kept for the session
 * and made again when attach() changed the statement.  Not inlined into
 * writeback_execute(), whose PG_TRY would see its variables clobbered.
 */
static pg_noinline SPIPlanPtr
writeback_plan(int32 binding_id, const char *sql)
{
	WritebackPlan *w = NULL;
	SPIPlanPtr	plan;

	for (int i = 0; i < n_wb_plans; i++)
		if (wb_plans[i].binding_id == binding_id)
			w = &wb_plans[i];
	if (w != NULL && strcmp(w->sql, sql) == 0)
		return w->plan;
	plan = shipsync_prepare_saved_opt(sql, WRITEBACK_NARGS, writeback_types, true);
	if (w == NULL)
	{
		wb_plans = wb_plans == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(WritebackPlan)) :
			repalloc(wb_plans, sizeof(WritebackPlan) * (n_wb_plans + 1));
		w = &wb_plans[n_wb_plans++];
		w->binding_id = binding_id;
	}
	else
	{
		SPI_freeplan(w->plan);
		pfree(w->sql);
	}
	w->sql = MemoryContextStrdup(TopMemoryContext, sql);
	w->plan = plan;
	return plan;
}

/* Free the saved plans whose binding is not one of ids[0..n-1] */
static void
writeback_keep_plans(const int32 *ids, int n)
{
	int			kept = 0;

	for (int i = 0; i < n_wb_plans; i++)
	{
		bool		attached = false;

		for (int k = 0; k < n && !attached; k++)
			attached = ids[k] == wb_plans[i].binding_id;
		if (!attached)
		{
			SPI_freeplan(wb_plans[i].plan);
			pfree(wb_plans[i].sql);
			continue;
		}
		wb_plans[kept++] = wb_plans[i];
	}
	n_wb_plans = kept;
}

/*
 * Free the saved write-back plans of the bindings that bs (the
 * configuration just loaded) no longer has attached: detached, their table
 * dropped.  A tenant's table dropped and another attached, again and again,
 * kept a plan (some 40 kB) for each binding ever written, for the life of
 * the worker.  A binding written again later (a result of a detached table
 * still in flight, or the table attached again) has its plan made anew.
 */
void
writeback_forget_plans(const Binding *bs, int nb)
{
	int32	   *ids = palloc(sizeof(int32) * Max(nb, 1));
	int			n = 0;

	for (int k = 0; k < nb; k++)
		if (bs[k].active)
			ids[n++] = bs[k].id;
	writeback_keep_plans(ids, n);
	pfree(ids);
}

/*
 * The same for a process that loads no configuration (the receiver, which
 * writes tracking statuses and fee totals back through writeback_orders()
 * for as long as it runs): the bindings still attached are read from
 * shipsync.binding.  Nothing to do, and no query, while no plan is kept.
 * SPI must be connected, in a transaction.
 */
void
writeback_forget_detached(void)
{
	static SPIPlanPtr plan = NULL;
	Datum	   *held;
	Datum		arg;
	int32	   *ids;
	int			n;

	if (n_wb_plans == 0)
		return;
	if (plan == NULL)
	{
		Oid			t[1] = {INT4ARRAYOID};

		plan = shipsync_prepare_saved(
			"SELECT binding_id FROM shipsync.binding"
			" WHERE active AND binding_id OPERATOR(pg_catalog.=) ANY ($1)", 1, t);
	}
	held = palloc(sizeof(Datum) * n_wb_plans);
	for (int i = 0; i < n_wb_plans; i++)
		held[i] = Int32GetDatum(wb_plans[i].binding_id);
	arg = shipsync_make_array(held, NULL, n_wb_plans, INT4OID);
	if (SPI_execute_plan(plan, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "looking up the attached bindings failed");
	n = (int) SPI_processed;
	ids = palloc(sizeof(int32) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	}
	writeback_keep_plans(ids, n);
	pfree(ids);
	pfree(held);
}

/*
 * Run binding binding_id's write-back statement sql (its saved plan, made
 * here when it is new) with params as owner, with capture suppressed, and
 * the deferrable constraints of table relid set immediate (*immediate:
 * what shipsync_constraints_restore() takes after).
 */
static int
writeback_execute(int32 binding_id, const char *sql, Datum *params, Oid relid,
				  Oid owner, ShipsyncConstraints **immediate)
{
	SPIPlanPtr	plan = writeback_plan(binding_id, sql);
	ShipsyncUserSave save;
	volatile int rc = 0;
	int			suppressed;

	*immediate = shipsync_constraints_immediate(relid, owner);
	shipsync_become_owner(owner, &save);
	suppressed = capture_suppress();
	PG_TRY();
	{
		rc = shipsync_execute_by_key(plan, params, false);
	}
	PG_FINALLY();
	{
		capture_unsuppress(suppressed);
		shipsync_restore_user(&save);
	}
	PG_END_TRY();
	return rc;
}

/*
 * Run the write-back statement sql of binding binding_id on table relid
 * with params ($1..$6), as the table's owner, with capture suppressed.
 * Nothing when the table no longer exists (see the file header).  what
 * names the fields for the error message.  lock_timeout_ms > 0: a row
 * or the table another session holds (an uncommitted UPDATE, an ALTER
 * TABLE) is waited for that long at most, then the statement fails with
 * lock_not_available (shipsync_lock_wait_begin()).
 * SPI must be connected.
 */
static void
writeback_run(int32 binding_id, Oid relid, const char *sql, Datum *params,
			  const char *what, int lock_timeout_ms)
{
	HeapTuple	ctup;
	Oid			owner;
	ShipsyncConstraints *volatile immediate = NULL;
	volatile int rc = 0;
	ShipsyncLockWait wait;

	ctup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(ctup))
		return;					/* dropped: its bindings are inactive */
	owner = ((Form_pg_class) GETSTRUCT(ctup))->relowner;
	ReleaseSysCache(ctup);
	shipsync_check_owner_sees_all(relid, owner);
	pgstat_report_activity(STATE_RUNNING, "writing results back onto the orders");

	/* the lock of the table too: the plan and the constraints' look take it */
	shipsync_lock_wait_begin(&wait, lock_timeout_ms);
	PG_TRY();
	{
		ShipsyncConstraints *c;

		rc = writeback_execute(binding_id, sql, params, relid, owner, &c);
		immediate = c;
	}
	PG_FINALLY();
	{
		shipsync_lock_wait_end(&wait);
	}
	PG_END_TRY();
	shipsync_constraints_restore(immediate);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "write-back of %s failed: %s", what, SPI_result_code_string(rc));
}

/*
 * Write shipment fields back onto the order rows, from the rows RETURNING
 * gave when apply recorded shipments (binding_id, order_key,
 * provider_shipment_id, tracking_number, status, label_url, fee_total):
 * one statement per binding of bs.  The rows of tt are copied first: the
 * next statement reuses SPI_tuptable.  An order row another session holds
 * is waited for at most shipsync.order_lock_timeout: without a limit,
 * one order row held in a user's open transaction held the results of
 * every order of every table behind it (apply.c then records the answer
 * and leaves the write-back to wait for the row: writeback_wait).
 */
void
writeback_shipments(Binding *bs, int nb, SPITupleTable *tt, uint64 nrows)
{
	writeback_shipments_within(bs, nb, tt, nrows, shipsync_order_lock_timeout_ms);
}

/*
 * writeback_shipments() with a wait for a held order row of at most
 * lock_timeout_ms (0: no limit): the write-backs that waited for one
 * (apply.c, outbox_writeback_waiting()) try again with a short wait.
 */
void
writeback_shipments_within(Binding *bs, int nb, SPITupleTable *tt, uint64 nrows,
						   int lock_timeout_ms)
{
	static const Oid types[WRITEBACK_NARGS] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	TEXTOID, NUMERICOID};
	bool	   *used;

	if (nrows == 0)
		return;
	used = palloc0(sizeof(bool) * nrows);
	for (uint64 i = 0; i < nrows; i++)
	{
		bool		isnull;
		int32		bid;
		Binding    *b = NULL;
		ArgArrays  *a;
		Datum		params[WRITEBACK_NARGS];

		if (used[i])
			continue;
		bid = DatumGetInt32(SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull));
		for (int k = 0; k < nb; k++)
			if (bs[k].id == bid)
				b = &bs[k];
		a = args_create(WRITEBACK_NARGS, types, (int) (nrows - i));
		for (uint64 j = i; j < nrows; j++)
		{
			int			r;
			Datum		fee;

			if (used[j] ||
				DatumGetInt32(SPI_getbinval(tt->vals[j], tt->tupdesc, 1, &isnull)) != bid)
				continue;
			used[j] = true;
			r = args_row(a);
			for (int c = 0; c < 5; c++)
				args_set_text_of(a, r, c, tt->vals[j], tt->tupdesc, c + 2);
			fee = SPI_getbinval(tt->vals[j], tt->tupdesc, 7, &isnull);
			if (!isnull)
				args_set(a, r, 5, fee);
		}
		if (b == NULL || b->writeback_sql == NULL)
			continue;
		for (int c = 0; c < WRITEBACK_NARGS; c++)
			params[c] = shipsync_make_array(a->values[c], a->nulls[c], a->n, a->types[c]);
		writeback_run(b->id, b->relid, b->writeback_sql, params, "shipments",
					  lock_timeout_ms);
	}
}

/*
 * Write new statuses or fee totals onto the order rows of one binding: the
 * binding's write-back statement, with the other fields NULL.  keys has n
 * entries, and so do statuses and fee_totals where they are not NULL.
 */
void
writeback_orders(int32 binding_id, Datum *keys, Datum *statuses, Datum *fee_totals, int n)
{
	Datum		arg = Int32GetDatum(binding_id);
	Oid			relid;
	char	   *sql;
	bool		isnull;
	Datum		params[WRITEBACK_NARGS];
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));

	if (binding_plan == NULL)
	{
		Oid			t[1] = {INT4OID};

		binding_plan = shipsync_prepare_saved(
			"SELECT tbl::oid, writeback_sql FROM shipsync.binding WHERE binding_id = $1", 1, t);
	}
	if (SPI_execute_plan(binding_plan, &arg, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed == 0)
		return;
	relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	sql = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (sql == NULL)
		return;					/* nothing written back for this table */

	for (int i = 0; i < n; i++)
		nulls[i] = true;
	params[0] = shipsync_make_array(keys, NULL, n, TEXTOID);
	params[1] = params[2] = params[4] = shipsync_make_array(keys, nulls, n, TEXTOID);
	params[3] = shipsync_make_array(statuses ? statuses : keys, statuses ? NULL : nulls, n, TEXTOID);
	params[5] = shipsync_make_array(fee_totals ? fee_totals : keys,
									fee_totals ? NULL : nulls, n, NUMERICOID);
	writeback_run(binding_id, relid, sql, params,
				  statuses ? "tracking status" : "fee totals", orders_lock_timeout_ms);
}

/*
 * Run fn(arg) with the waits of writeback_orders() for an order row
 * another session holds limited to shipsync.order_lock_timeout: the
 * dispatcher's own applies of what it pulled (tracking polls, fee pulls),
 * each in a subtransaction of its own, which then fails alone with
 * lock_not_available (writeback_try() raises it again) and is pulled again
 * at the next round.  Without the limit, a polled status of one order
 * whose row a user's open transaction held stopped the dispatcher, and
 * with it every claim and send of the database, until that transaction
 * ended.  Other callers (ingest_tracking(), statements, the receiver with
 * its own lock_timeout) wait as their session says.
 */
void
writeback_bounded(void (*fn) (void *), void *arg)
{
	int			save = orders_lock_timeout_ms;

	orders_lock_timeout_ms = shipsync_order_lock_timeout_ms;
	PG_TRY();
	{
		fn(arg);
	}
	PG_FINALLY();
	{
		orders_lock_timeout_ms = save;
	}
	PG_END_TRY();
}

/* One binding's write-back of statuses or fee totals, for shipsync_subxact() */
typedef struct WritebackStep
{
	int32		binding_id;
	Datum	   *keys;
	Datum	   *statuses;		/* or NULL */
	Datum	   *fee_totals;		/* or NULL */
	int			n;
} WritebackStep;

static void
writeback_step_run(void *arg)
{
	WritebackStep *st = (WritebackStep *) arg;

	writeback_orders(st->binding_id, st->keys, st->statuses, st->fee_totals, st->n);
}

/*
 * Whether a write-back's error e is one a later try can get past (a lock
 * wait over lock_timeout, a deadlock or serialization failure, a cancel, a
 * shortage of resources), not the row's refusal (a constraint, a value too
 * long, a trigger of the user's raising).
 */
bool
writeback_error_passes(const ErrorData *e)
{
	int			cls = ERRCODE_TO_CATEGORY(e->sqlerrcode);

	return cls == ERRCODE_TRANSACTION_ROLLBACK || cls == ERRCODE_INSUFFICIENT_RESOURCES ||
		cls == ERRCODE_OPERATOR_INTERVENTION || cls == ERRCODE_SYSTEM_ERROR ||
		e->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE;
}

/*
 * Run a step in a subtransaction.  NULL when it went through; else its
 * error, unless a retry of the whole can get past it
 * (writeback_error_passes()): that one is raised again, so that the
 * caller fails as a whole and its sender tries again later, rather than
 * an order being ticketed for another session's lock.
 */
static ErrorData *
writeback_try(WritebackStep *st)
{
	ErrorData  *e = shipsync_subxact(writeback_step_run, st);

	if (e != NULL && writeback_error_passes(e))
		ReThrowError(e);
	return e;
}

/*
 * Write new tracking statuses (values are statuses) or fee totals (values
 * are totals, fee) of provider provider_id (0: not known) onto the order
 * rows, grouped by binding, such that one order's failing write-back (a
 * constraint, a value too long, a trigger of the user's raising) fails
 * that order alone.  Each binding's statement runs in a subtransaction;
 * when it fails, its orders are written one by one, each in its own, and
 * each that still fails is left as it was and gets a ticket of kind
 * writeback_failed naming the error's message (never its detail, which
 * may quote the row: "Failing row contains (...)").  The caller's events,
 * shipment statuses and fee lines stay.  bids, keys and values have n
 * entries; bids is overwritten.  SPI must be connected.
 */
void
writeback_values(int32 provider_id, int32 *bids, Datum *keys, Datum *values, bool fee, int n)
{
	ArgArrays  *tickets = NULL;
	const char *what = fee ? "fee total" : "tracking status";

	for (int i = 0; i < n; i++)
	{
		WritebackStep st;
		ErrorData  *e;

		if (bids[i] < 0)
			continue;
		st.binding_id = bids[i];
		st.keys = palloc(sizeof(Datum) * n);
		st.statuses = fee ? NULL : palloc(sizeof(Datum) * n);
		st.fee_totals = fee ? palloc(sizeof(Datum) * n) : NULL;
		st.n = 0;
		for (int j = i; j < n; j++)
			if (bids[j] == st.binding_id)
			{
				st.keys[st.n] = keys[j];
				(fee ? st.fee_totals : st.statuses)[st.n] = values[j];
				st.n++;
				bids[j] = -1;
			}
		if ((e = writeback_try(&st)) == NULL)
			continue;
		for (int j = 0; j < st.n; j++)
		{
			WritebackStep one = {st.binding_id, &st.keys[j],
				fee ? NULL : &st.statuses[j], fee ? &st.fee_totals[j] : NULL, 1};
			ErrorData  *e1 = st.n == 1 ? e : writeback_try(&one);
			char	   *key;

			if (e1 == NULL)
				continue;
			key = TextDatumGetCString(st.keys[j]);
			ereport(WARNING,
					(errcode(e1->sqlerrcode),
					 errmsg("pg_shipsync: the write-back of the %s of order %s failed: %s",
							what, key, e1->message)));
			if (tickets == NULL)
				tickets = outbox_tickets_create(n);
			outbox_ticket_row(tickets, 0, st.binding_id, key, provider_id,
							  psprintf("write-back of the %s failed: %s", what, e1->message),
							  "writeback_failed");
		}
	}
	if (tickets != NULL)
		outbox_open_tickets(tickets);
}
