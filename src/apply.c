/*-------------------------------------------------------------------------
 *
 * apply.c
 *		Applying the results of a batch of attempts: outbox states, the
 *		delivery log, shipments, quoted fees, write-back, registrations
 *		and tickets.
 *
 * One transaction per batch of completions, synchronous_commit = off: a
 * lost apply is re-sent under the same key and the carrier replays its
 * first answer.  A batch with an attempt at max_attempts commits durably:
 * that intent would not be sent again (apply_durable()).  Every statement
 * is set-based: apply_collect() turns each result into one row of each
 * statement it needs (an ApplyBatch holds the parallel arrays), and
 * apply_execute() runs each statement once for the whole batch through a
 * saved plan of the table below.  The shipments
 * recorded are written back onto the order rows (writeback.c: as the
 * table's owner, with capture suppressed: no echo); their answers' fees
 * become quote lines (fees.c) first, taking the fee locks before the order
 * rows are written.  A create of a binding with a tracking provider
 * enqueues the registration of its waybill; outbox_apply() returns those
 * providers, so that the dispatcher looks for their work.
 *
 * If the batch fails, it is applied again one completion at a time, each in
 * its own subtransaction (one open at a time), so that only the failing
 * order fails: as it is; then dead (writeback_failed) with its shipment
 * recorded but its order row left alone; then dead (apply_failed) with
 * nothing but its outbox state, log row and ticket.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

/* The statements of one apply, each run once per batch */
typedef enum ApplyStmt
{
	APPLY_OUTBOX,				/* outbox states */
	APPLY_LOG,					/* delivery_log */
	APPLY_CREATE,				/* shipments created */
	APPLY_QUOTE_LOCKS,			/* the fee locks of their tracking numbers */
	APPLY_FIRST_QUOTES,			/* the first quotes of their orders (same rows) */
	APPLY_QUOTES,				/* their other fees, as quote lines (same rows) */
	APPLY_UPDATE,				/* shipments updated or cancelled */
	APPLY_REQUOTES,				/* their fees (same rows) */
	APPLY_REGISTERED,			/* registrations done */
	APPLY_REGISTER,				/* registrations to make */
	APPLY_WAIT,					/* write-backs left to wait for a held row */
	APPLY_NSTMTS
} ApplyStmt;

#define APPLY_MAX_ARGS 12

/*
 * A write-back that waits for an order row another session holds
 * (writeback_wait): first tried again after WB_WAIT_FIRST_MS, then every
 * second more, at most every WB_WAIT_MAX_MS; each try waits for the row
 * at most WB_WAIT_LOCK_MS (or shipsync.order_lock_timeout, if less), and
 * a pass gives up its tries after WB_WAIT_PASS_HELD rows found held, so
 * that the dispatcher, which makes them, is never held long.
 */
#define WB_WAIT_FIRST_MS 1000
#define WB_WAIT_MAX_MS 5000
#define WB_WAIT_LOCK_MS 50
#define WB_WAIT_PASS_HELD 4
#define WB_WAIT_BATCH 64

typedef struct ApplyPlanDef
{
	const char *sql;
	int			nargs;
	Oid			types[APPLY_MAX_ARGS];	/* of the elements of $1..$nargs */
	int			ok;				/* the SPI result it must give */
	const char *what;			/* for the error message and pg_stat_activity */
	bool		generic;		/* always its generic plan (shipsync_prepare_saved_opt):
								 * statements that find their rows by key, whose
								 * plan cache would otherwise plan them anew for
								 * every one-answer apply (a custom plan for one
								 * element looks cheaper): 170 µs each */
} ApplyPlanDef;

/*
 * Whether an update's or a cancel's answer leaves shipment s's status as
 * it is: s's status is terminal and the answer's is not (a carrier's stale
 * record of a delivered parcel moves nothing back; its word that the
 * parcel was returned, not delivered, does: reconciliation's resync).
 */
#define APPLY_KEEPS_STATUS \
	"(COALESCE((SELECT c.terminal FROM shipsync.canonical_status c WHERE c.name = s.status), false)" \
	" AND NOT COALESCE((SELECT c.terminal FROM shipsync.canonical_status c" \
	"   WHERE c.name = u.status), false))"

/*
 * The statements.  "state = (SELECT 'in_flight')" in APPLY_OUTBOX, not a
 * constant: with a constant, the planner may read the in-flight rows
 * through the partial per-order index and hash them, trusting statistics
 * taken when the queue was empty (1 row) -- then every batch walks the
 * whole backlog.  An InitPlan cannot prove the partial index's predicate,
 * so the rows are found by primary key, one per array element.  A
 * registration done records the tracking provider's own shipment row, its
 * tracker id, and the waybill it follows (the shipping provider's when the
 * answer does not repeat it), with no write-back.  A shipment created or
 * updated takes the content_digest of the intent whose answer it records
 * (the digest of the order row the request was rendered from, which
 * reconciliation compares; the claim read it back with the request, and
 * it comes with the result rather than from a probe of the outbox per
 * shipment), and its fees and estimate from one call of
 * _quote_totals() for the whole batch, joined by position in the arrays
 * (a per-row function call was set up anew for every answer).  An answer
 * also lands on an intent the sweep of expired leases took back
 * (retrying, lease_expired) while it was still on the wire -- its
 * dispatcher held up longer than the lease by a lock on its tables -- as
 * long as that attempt is still the last (o.attempts = u.attempt: not sent
 * again since); otherwise its shipment was recorded while the intent
 * stayed retrying, and the next attempt went as an update under the
 * create's key, which the carrier refuses (TAP 004).  So does one the
 * sweep gave up on at max_attempts (dead, lease_expired: "its answer is
 * unknown"), which otherwise stayed dead beside the shipment its answer
 * made; its dead_intent ticket is resolved by the next reconciliation
 * pass, as that of any stopped intent now done.  (retry() and requeue()
 * reset attempts: an answer from before them matches no intent.)
 */
/*
 * The columns of a shipment created (APPLY_CREATE) and of one updated
 * (APPLY_UPDATE): the statements after each share its rows.
 */
#define CREATE_ROW_TYPES \
	{INT4OID, TEXTOID, INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, \
	TEXTOID, TEXTOID, TEXTOID, INT8OID}
#define UPDATE_ROW_TYPES \
	{INT4OID, TEXTOID, INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, \
	TEXTOID, INT8OID}

static const ApplyPlanDef apply_defs[APPLY_NSTMTS] = {
	[APPLY_OUTBOX] = {
		"UPDATE shipsync.outbox o SET state = u.state,"
		" next_attempt_at = COALESCE(u.next_at, o.next_attempt_at),"
		" last_status = u.http_status, error_class = u.eclass, last_error = u.err,"
		" lease_until = NULL, updated_at = pg_catalog.now(),"
		" done_at = CASE WHEN u.state IN ('done', 'dead') THEN pg_catalog.now() END"
		" FROM shipsync._rows($1, $2, $3, $4, $5, $6, $7)"
		"   AS u(id int8, attempt int4, state text, next_at timestamptz, http_status int4,"
		"   eclass text, err text)"
		" WHERE o.id = u.id AND o.attempts = u.attempt"
		" AND (o.state = (SELECT 'in_flight')"
		"   OR ((o.state = (SELECT 'retrying') OR o.state = (SELECT 'dead'))"
		"     AND o.error_class = (SELECT 'lease_expired')))", 7,
		{INT8OID, INT4OID, TEXTOID, TIMESTAMPTZOID, INT4OID, TEXTOID, TEXTOID},
		SPI_OK_UPDATE, "updating outbox states", true
	},
	[APPLY_LOG] = {
		"INSERT INTO shipsync.delivery_log (outbox_id, attempt, provider_id, method,"
		" url, http_status, latency_ms, outcome, error_class, error, request_digest)"
		" SELECT * FROM shipsync._rows($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
		"   AS u(outbox_id int8, attempt int4, provider_id int4, method text, url text,"
		"   http_status int4, latency_ms float8, outcome text, error_class text, error text,"
		"   request_digest text)", 11,
		{INT8OID, INT4OID, INT4OID, TEXTOID, TEXTOID, INT4OID, FLOAT8OID, TEXTOID,
		TEXTOID, TEXTOID, TEXTOID},
		SPI_OK_INSERT, "writing the delivery log"
	},
	[APPLY_CREATE] = {
		"INSERT INTO shipsync.shipment AS s (binding_id, order_key, provider_id,"
		" provider_shipment_id, tracking_number, label_url, status, raw_status, fees,"
		" fee_total, request_digest, waybills, content_digest)"
		" SELECT u.bid, u.k, u.pid, u.sid, u.tn, u.label, COALESCE(u.status, 'pending'),"
		"   u.raw, f.fees, f.total, u.digest, u.waybills::jsonb, u.cdigest"
		" FROM ROWS FROM (shipsync._rows($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
		"   AS (bid int4, k text, pid int4, sid text, tn text, label text, status text, raw text,"
		"   fees text, digest text, waybills text, cdigest int8)) WITH ORDINALITY"
		"   AS u(bid, k, pid, sid, tn, label, status, raw, fees, digest, waybills, cdigest, ord)"
		" LEFT JOIN shipsync._quote_totals($9, $3) f ON f.ord = u.ord"
		" ON CONFLICT (binding_id, order_key, provider_id) DO UPDATE SET"
		" provider_shipment_id = EXCLUDED.provider_shipment_id,"
		" tracking_number = EXCLUDED.tracking_number,"
		" label_url = COALESCE(EXCLUDED.label_url, s.label_url),"
		" status = EXCLUDED.status, raw_status = EXCLUDED.raw_status,"
		" fees = COALESCE(EXCLUDED.fees, s.fees), fee_total = COALESCE(EXCLUDED.fee_total, s.fee_total),"
		" request_digest = EXCLUDED.request_digest,"
		" waybills = COALESCE(EXCLUDED.waybills, s.waybills),"
		" content_digest = EXCLUDED.content_digest, updated_at = pg_catalog.now()"
		" RETURNING binding_id, order_key, provider_shipment_id, tracking_number, status,"
		" label_url, fee_total", 12,
		CREATE_ROW_TYPES,
		SPI_OK_INSERT_RETURNING, "recording shipments", true
	},
	[APPLY_QUOTE_LOCKS] = {
		"SELECT shipsync._lock_fees(pg_catalog.array_agg(u.pid), pg_catalog.array_agg(u.tn), false)"
		" FROM shipsync._rows($3, $5, $9) AS u(pid int4, tn text, fees text)"
		" WHERE u.tn IS NOT NULL AND u.fees IS NOT NULL HAVING pg_catalog.count(*) > 0", 12,
		CREATE_ROW_TYPES,
		SPI_OK_SELECT, "taking the fee locks"
	},
	[APPLY_FIRST_QUOTES] = {
		"WITH q AS MATERIALIZED ("
		"   SELECT * FROM shipsync._first_quote_lines($1, $2, $3, $5, $9)),"
		" ok AS MATERIALIZED ("
		"   SELECT q.ord, q.binding_id, q.order_key, q.provider_id, q.currency, q.estimated, q.lines"
		"   FROM q WHERE q.i = 1"
		"   AND NOT EXISTS (SELECT 1 FROM shipsync.fee_line f"
		"     WHERE f.provider_id = q.provider_id AND f.tracking_number = q.tracking_number)"
		"   AND NOT EXISTS (SELECT 1 FROM shipsync.fee_line f"
		"     WHERE f.binding_id = q.binding_id AND f.order_key = q.order_key)),"
		" lines AS ("
		"   INSERT INTO shipsync.fee_line (provider_id, tracking_number, fee_type, fee_key, quote,"
		"     binding_id, order_key, raw_type, amount, currency, state, source, recorded_by)"
		"   SELECT q.provider_id, q.tracking_number, q.fee_type, q.fee_key, true, q.binding_id,"
		"     q.order_key, q.raw_type, q.amount, q.currency, 'estimated', 'create', 'dispatcher'"
		"   FROM q JOIN ok USING (ord) ORDER BY q.ord, q.i"
		"   RETURNING 1),"
		" sums AS ("
		"   INSERT INTO shipsync.fee_sum (binding_id, order_key, provider_id, currency, estimated,"
		"     charged, refunded, quote_lines, bill_lines, last_change)"
		"   SELECT ok.binding_id, ok.order_key, ok.provider_id, ok.currency, ok.estimated,"
		"     0, 0, ok.lines, 0, pg_catalog.now()"
		"   FROM ok"
		"   RETURNING 1)"
		" SELECT ok.ord FROM ok", 12,
		CREATE_ROW_TYPES,
		SPI_OK_SELECT, "recording first quotes", true
	},
	[APPLY_QUOTES] = {
		"SELECT kind, n, binding_id, order_key, fee_total"
		" FROM shipsync._record_quotes($1, $2, $3, $5, $9)", 12,
		CREATE_ROW_TYPES,
		SPI_OK_SELECT, "recording quoted fees"
	},
	[APPLY_UPDATE] = {
		"UPDATE shipsync.shipment AS s SET"
		" tracking_number = COALESCE(u.tn, s.tracking_number),"
		" label_url = COALESCE(u.label, s.label_url),"
		" status = CASE WHEN " APPLY_KEEPS_STATUS " THEN s.status ELSE COALESCE(u.status, s.status) END,"
		" raw_status = CASE WHEN " APPLY_KEEPS_STATUS " THEN s.raw_status"
		"   ELSE COALESCE(u.raw, s.raw_status) END,"
		" fees = COALESCE(f.fees, s.fees), fee_total = COALESCE(f.total, s.fee_total),"
		" content_digest = COALESCE(u.cdigest, s.content_digest),"
		" updated_at = pg_catalog.now()"
		" FROM ROWS FROM (shipsync._rows($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
		"   AS (bid int4, k text, pid int4, tn text, label text, status text, raw text, fees text,"
		"   unused text, cdigest int8)) WITH ORDINALITY"
		"   AS u(bid, k, pid, tn, label, status, raw, fees, unused, cdigest, ord)"
		" LEFT JOIN shipsync._quote_totals($8, $3) f ON f.ord = u.ord"
		" WHERE s.binding_id = u.bid AND s.order_key = u.k AND s.provider_id = u.pid"
		" RETURNING s.binding_id, s.order_key, s.provider_shipment_id, s.tracking_number,"
		" s.status, s.label_url, s.fee_total", 10,
		UPDATE_ROW_TYPES,
		SPI_OK_UPDATE_RETURNING, "updating shipments", true
	},
	[APPLY_REQUOTES] = {
		"SELECT kind, n, binding_id, order_key, fee_total"
		" FROM shipsync._record_quotes($1, $2, $3, $4, $8)", 10,
		UPDATE_ROW_TYPES,
		SPI_OK_SELECT, "recording quoted fees"
	},
	/*
	 * What the intent registered (outbox.waybill; before 0.2, the first
	 * waybill not registered): the main waybill is the tracking provider's
	 * shipment's tracking number; a piece is added to its waybills (once),
	 * so that the provider's events of the piece are the order's, the
	 * tracking number staying what it was (none while the main one's
	 * registration has not succeeded).  A waybill the order's shipment no
	 * longer lists (created again since) is not recorded.
	 */
	[APPLY_REGISTERED] = {
		"INSERT INTO shipsync.shipment AS s (binding_id, order_key, provider_id,"
		" provider_shipment_id, tracking_number, raw_status, request_digest, waybills)"
		" SELECT u.bid, u.k, u.pid, u.sid,"
		"   CASE WHEN n.piece IS NULL THEN COALESCE(u.tn, o.waybill, m.tn) END,"
		"   u.raw, u.digest,"
		"   CASE WHEN n.piece IS NOT NULL THEN pg_catalog.jsonb_build_array(n.piece) END"
		" FROM unnest($1, $2, $3, $4, $5, $6, $7, $8) AS u(bid, k, pid, sid, tn, raw, digest, id)"
		" LEFT JOIN shipsync.outbox o ON o.id = u.id"
		" LEFT JOIN LATERAL (SELECT x.tracking_number AS tn FROM shipsync.shipment x"
		"   WHERE x.binding_id = u.bid AND x.order_key = u.k AND x.provider_id <> u.pid"
		"   AND x.tracking_number IS NOT NULL ORDER BY x.updated_at DESC LIMIT 1) m ON true"
		" LEFT JOIN LATERAL (SELECT w.piece, true AS hit"
		"   FROM shipsync._registration_waybills(u.bid, u.k, u.pid) w"
		"   WHERE CASE WHEN o.waybill IS NULL THEN NOT w.registered ELSE w.waybill = o.waybill END"
		"   ORDER BY w.ord LIMIT 1) n ON true"
		/* a waybill the order's shipment no longer has is none of its own */
		" WHERE o.waybill IS NULL OR n.hit"
		" ON CONFLICT (binding_id, order_key, provider_id) DO UPDATE SET"
		" provider_shipment_id = CASE WHEN EXCLUDED.waybills IS NULL THEN"
		"   COALESCE(EXCLUDED.provider_shipment_id, s.provider_shipment_id) ELSE s.provider_shipment_id END,"
		" tracking_number = CASE WHEN EXCLUDED.waybills IS NULL THEN EXCLUDED.tracking_number"
		"   ELSE s.tracking_number END,"
		" raw_status = CASE WHEN EXCLUDED.waybills IS NULL THEN EXCLUDED.raw_status ELSE s.raw_status END,"
		" request_digest = CASE WHEN EXCLUDED.waybills IS NULL THEN EXCLUDED.request_digest"
		"   ELSE s.request_digest END,"
		" waybills = CASE WHEN EXCLUDED.waybills IS NOT NULL THEN CASE WHEN s.waybills @> EXCLUDED.waybills"
		"   THEN s.waybills ELSE COALESCE(s.waybills, '[]') || EXCLUDED.waybills END"
		"   WHEN s.tracking_number IS NULL OR s.tracking_number = EXCLUDED.tracking_number"
		"   THEN s.waybills END,"
		" updated_at = pg_catalog.now()", 8,
		{INT4OID, TEXTOID, INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID},
		SPI_OK_INSERT, "recording registrations"
	},
	/*
	 * one registration per waybill, each about its own: the main one, and
	 * each piece (one with no waybill yet finds none when it renders)
	 */
	[APPLY_REGISTER] = {
		"INSERT INTO shipsync.outbox (binding_id, provider_id, order_key, op, waybill)"
		" SELECT u.bid, u.tp, u.k, 'register', w.waybill FROM unnest($1, $2, $3) AS u(bid, tp, k)"
		" LEFT JOIN LATERAL (SELECT r.waybill, r.ord FROM"
		"   shipsync._registration_waybills(u.bid, u.k, u.tp) r) w ON true"
		" ORDER BY u.bid, u.k, w.ord", 3,
		{INT4OID, INT4OID, TEXTOID},
		SPI_OK_INSERT, "enqueueing registrations"
	},
	/*
	 * an answer recorded whose write-back met an order row another session
	 * held (apply_one()): one row per shipment, however many of its
	 * intents wait (outbox_writeback_waiting() writes the shipment back)
	 */
	[APPLY_WAIT] = {
		"INSERT INTO shipsync.writeback_wait AS w (binding_id, order_key, provider_id,"
		" outbox_ids, next_at, last_error)"
		" SELECT u.bid, u.k, u.pid, ARRAY[u.id], u.next_at, u.err"
		" FROM shipsync._rows($1, $2, $3, $4, $5, $6)"
		"   AS u(bid int4, k text, pid int4, id int8, next_at timestamptz, err text)"
		" ON CONFLICT (binding_id, order_key, provider_id) DO UPDATE SET"
		" outbox_ids = CASE WHEN EXCLUDED.outbox_ids <@ w.outbox_ids THEN w.outbox_ids"
		"   ELSE w.outbox_ids || EXCLUDED.outbox_ids END,"
		" next_at = LEAST(w.next_at, EXCLUDED.next_at), last_error = EXCLUDED.last_error", 6,
		{INT4OID, TEXTOID, INT4OID, INT8OID, TIMESTAMPTZOID, TEXTOID},
		SPI_OK_INSERT, "noting write-backs that wait for a held order row"
	},
};

static SPIPlanPtr apply_plans[APPLY_NSTMTS];

/* The rows of one batch's statements; quotes share their shipments' rows */
typedef struct ApplyBatch
{
	ArgArrays  *rows[APPLY_NSTMTS];
	ArgArrays  *tickets;
} ApplyBatch;

/*
 * The saved plan of statement s, made at its first use in the process.
 * Each on its own: one that cannot be prepared for a while (a function
 * missing) fails only the applies that run it, and is tried again at the
 * next; the last resort of an apply (the outbox state, the log row and the
 * ticket) needs none of the others.
 */
static SPIPlanPtr
apply_plan(ApplyStmt s)
{
	if (apply_plans[s] == NULL)
	{
		Oid			types[APPLY_MAX_ARGS];

		for (int c = 0; c < apply_defs[s].nargs; c++)
			types[c] = get_array_type(apply_defs[s].types[c]);
		apply_plans[s] = shipsync_prepare_saved_opt(apply_defs[s].sql, apply_defs[s].nargs, types,
													apply_defs[s].generic);
	}
	return apply_plans[s];
}

/*
 * Prepare the statements of apply_defs ahead of the first results (the
 * applier as it starts): parsed and analyzed now, so that one that cannot
 * be prepared (a function missing) is said in the log at once and left to
 * its first use.  Their plans are made at their first execution, for the
 * tables as they are then (docs/architecture.md, "Prepared is not
 * planned").
 */
void
outbox_apply_prepare(void)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		shipsync_begin_tx("preparing to apply results", false);
		for (int s = 0; s < APPLY_NSTMTS; s++)
			(void) apply_plan(s);
		shipsync_end_tx();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		shipsync_abort_tx();
		/* DROP EXTENSION as we started: no failure of ours, we exit */
		(void) shipsync_exit_if_dropped();
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
}

/* Run statement s over rows a, checking what it gives */
static void
apply_run(ApplyStmt s, ArgArrays *a)
{
	int			rc;

	/* pg_stat_activity says which step of an apply runs */
	pgstat_report_activity(STATE_RUNNING, apply_defs[s].what);
	rc = args_execute(apply_plan(s), a, false);

	if (rc != apply_defs[s].ok)
		elog(ERROR, "%s failed: %s", apply_defs[s].what, SPI_result_code_string(rc));
}

static const char *const canonical_statuses[] = {
	"pending", "pre_transit", "in_transit", "out_for_delivery",
	"available_for_pickup", "delivery_failed", "exception", "returning",
	"returned", "delivered", "cancelled", "expired", NULL
};

/* The canonical status a carrier's raw status names, or NULL */
static const char *
canonical_status(const char *raw)
{
	if (raw == NULL)
		return NULL;
	for (int i = 0; canonical_statuses[i]; i++)
		if (pg_strcasecmp(raw, canonical_statuses[i]) == 0)
			return canonical_statuses[i];
	return NULL;
}

/* The outbox state and the delivery log row of result r */
static void
apply_collect_attempt(ApplyBatch *b, const ShipResult *r)
{
	ArgArrays  *oa = b->rows[APPLY_OUTBOX];
	ArgArrays  *la = b->rows[APPLY_LOG];
	int			o = args_row(oa);
	int			l = args_row(la);

	args_set(oa, o, 0, Int64GetDatum(r->id));
	args_set(oa, o, 1, Int32GetDatum(r->attempt));
	args_set_text(oa, o, 2, r->state);
	if (r->next_at)
		args_set(oa, o, 3, TimestampTzGetDatum(r->next_at));
	if (r->http_status > 0)
		args_set(oa, o, 4, Int32GetDatum((int32) r->http_status));
	args_set_text(oa, o, 5, r->error_class);
	args_set_text(oa, o, 6, r->error);

	args_set(la, l, 0, Int64GetDatum(r->id));
	args_set(la, l, 1, Int32GetDatum(r->attempt));
	args_set(la, l, 2, Int32GetDatum(r->provider_id));
	args_set_text(la, l, 3, r->method);
	args_set_text(la, l, 4, r->url);
	if (r->http_status > 0)
		args_set(la, l, 5, Int32GetDatum((int32) r->http_status));
	args_set(la, l, 6, Float8GetDatum(r->latency_ms));
	args_set_text(la, l, 7, r->outcome);
	args_set_text(la, l, 8, r->error_class);
	args_set_text(la, l, 9, r->error);
	args_set_text(la, l, 10, r->digest);
}

/* A registration done: the tracking provider's record of the waybill */
static void
apply_collect_registered(ApplyBatch *b, const ShipResult *r)
{
	ArgArrays  *ga = b->rows[APPLY_REGISTERED];
	int			c = args_row(ga);

	args_set(ga, c, 0, Int32GetDatum(r->binding_id));
	args_set_text(ga, c, 1, r->order_key);
	args_set(ga, c, 2, Int32GetDatum(r->provider_id));
	args_set_text(ga, c, 3, r->ship_id);
	args_set_text(ga, c, 4, r->tracking_number);
	args_set_text(ga, c, 5, r->raw_status);
	args_set_text(ga, c, 6, r->digest);
	args_set(ga, c, 7, Int64GetDatum(r->id));
}

/* A shipment created; the registration of its waybill, if the binding has one */
static void
apply_collect_created(ApplyBatch *b, const ShipResult *r, Binding *bs, int nb)
{
	ArgArrays  *ca = b->rows[APPLY_CREATE];
	int			c = args_row(ca);
	Binding    *bd = binding_find(bs, nb, r->binding_id);

	if (bd && bd->tracking_provider_id != 0 && r->tracking_number)
	{
		ArgArrays  *na = b->rows[APPLY_REGISTER];
		int			g = args_row(na);

		args_set(na, g, 0, Int32GetDatum(r->binding_id));
		args_set(na, g, 1, Int32GetDatum(bd->tracking_provider_id));
		args_set_text(na, g, 2, r->order_key);
	}
	args_set(ca, c, 0, Int32GetDatum(r->binding_id));
	args_set_text(ca, c, 1, r->order_key);
	args_set(ca, c, 2, Int32GetDatum(r->provider_id));
	args_set_text(ca, c, 3, r->ship_id);
	args_set_text(ca, c, 4, r->tracking_number);
	args_set_text(ca, c, 5, r->label_url);
	args_set_text(ca, c, 6, canonical_status(r->raw_status));
	args_set_text(ca, c, 7, r->raw_status);
	args_set_text(ca, c, 8, r->fees_body);
	args_set_text(ca, c, 9, r->digest);
	args_set_text(ca, c, 10, r->waybills);
	if (r->has_content_digest)
		args_set(ca, c, 11, Int64GetDatum(r->content_digest));
}

/* A shipment updated or cancelled */
static void
apply_collect_updated(ApplyBatch *b, const ShipResult *r)
{
	ArgArrays  *ua = b->rows[APPLY_UPDATE];
	int			u = args_row(ua);

	args_set(ua, u, 0, Int32GetDatum(r->binding_id));
	args_set_text(ua, u, 1, r->order_key);
	args_set(ua, u, 2, Int32GetDatum(r->provider_id));
	args_set_text(ua, u, 3, r->tracking_number);
	args_set_text(ua, u, 4, r->label_url);
	args_set_text(ua, u, 5, r->kind == INTENT_CANCEL ? "cancelled" :
				  canonical_status(r->raw_status));
	args_set_text(ua, u, 6, r->raw_status);
	args_set_text(ua, u, 7, r->fees_body);
	if (r->has_content_digest)
		args_set(ua, u, 9, Int64GetDatum(r->content_digest));
}

/* The rows of every statement result r needs */
static void
apply_collect(ApplyBatch *b, const ShipResult *r, Binding *bs, int nb)
{
	apply_collect_attempt(b, r);
	if (r->ship_ok && r->kind == INTENT_REGISTER)
		apply_collect_registered(b, r);
	else if (r->ship_ok && r->kind == INTENT_CREATE)
		apply_collect_created(b, r, bs, nb);
	else if (r->ship_ok)
		apply_collect_updated(b, r);
	if (r->park_writeback)
	{
		ArgArrays  *wa = b->rows[APPLY_WAIT];
		int			w = args_row(wa);

		args_set(wa, w, 0, Int32GetDatum(r->binding_id));
		args_set_text(wa, w, 1, r->order_key);
		args_set(wa, w, 2, Int32GetDatum(r->provider_id));
		args_set(wa, w, 3, Int64GetDatum(r->id));
		args_set(wa, w, 4, TimestampTzGetDatum(TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																		   WB_WAIT_FIRST_MS)));
		args_set_text(wa, w, 5, r->error);
	}
	if (strcmp(r->state, "dead") == 0)
		outbox_ticket_row(b->tickets, r->id, r->binding_id, r->order_key, r->provider_id,
						  r->error, r->ticket_kind ? r->ticket_kind : "dead_intent");
}

/* The columns of APPLY_CREATE's rows the quotes read */
#define CREATE_COL_TN	4
#define CREATE_COL_FEES	8

/*
 * The first quotes of the orders just shipped, the common case, in one
 * statement: an answer whose tracking number and order have no fee line
 * yet, whose lines are each of a type (and key) of their own, in one
 * currency known to shipsync.currency, and the only answer of the batch
 * for its order and tracking number.  (An order with no line has no
 * fee_sum row either, so that is not probed: _fee_totals() makes an
 * order's sums from its lines and deletes any that no line backs, and a
 * line is never deleted nor moved from one order to another, only given
 * one when a parked line finds its shipment.  TAP 038 checks it.)  Its
 * lines are inserted as _store_fees() would have made them, and its
 * fee_sum row as _fee_totals() would have (the shipment already carries the same total, from
 * _quote_totals()); anything else goes on to _record_quotes(), which knows
 * every case.  _record_quotes() cost 1.9 ms for a single answer (a dozen
 * statements in four PL/pgSQL functions), most of an order's apply at a
 * trickle, and about half of the applier's time in a burst.  What can be
 * decided from the batch alone (only answer, one currency, a type and key
 * of its own) is read in C, shipsync._first_quote_lines() (fees.c), with
 * one lookup of the types and currencies per batch; the statement keeps
 * the look for lines already there and the two inserts.
 *
 * The fee locks of the tracking numbers come first, in a statement of
 * their own, so that the look for existing lines sees whatever committed
 * before them.  The fees of the answers recorded here are set to NULL in
 * a, so that _record_quotes() skips them.  Returns how many rows of a it
 * still has to look at: those with a tracking number (a parked bill line
 * may await it).
 */
static int
apply_first_quotes(ArgArrays *a)
{
	bool	   *done = palloc0(sizeof(bool) * Max(a->n, 1));
	int			rest = 0;

	apply_run(APPLY_QUOTE_LOCKS, a);
	apply_run(APPLY_FIRST_QUOTES, a);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int64		o = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													SPI_tuptable->tupdesc, 1, &isnull));

		if (isnull || o < 1 || o > a->n)
			elog(ERROR, "recording first quotes returned answer %lld of %d", (long long) o, a->n);
		done[o - 1] = true;
		a->nulls[CREATE_COL_FEES][o - 1] = true;
	}
	for (int i = 0; i < a->n; i++)
		rest += !done[i] && !a->nulls[CREATE_COL_TN][i];
	pfree(done);
	return rest;
}

/*
 * After the statement that recorded shipments (its rows in SPI_tuptable):
 * their answers' fees become quote lines (fees.c; the first quotes of
 * creates here), taking the fee locks before the order rows are written;
 * then the write-back, and last the fee totals that differ from what it
 * wrote (a bill already there wins).
 */
static void
apply_with_quotes(bool no_writeback, Binding *bs, int nb, ApplyStmt quotes, ArgArrays *a)
{
	SPITupleTable *shipped = SPI_tuptable;
	uint64		nshipped = SPI_processed;
	SPITupleTable *totals = NULL;
	uint64		ntotals = 0;

	if (quotes != APPLY_QUOTES || apply_first_quotes(a) > 0)
	{
		apply_run(quotes, a);
		totals = SPI_tuptable;
		ntotals = SPI_processed;
	}
	if (no_writeback)
		return;
	writeback_shipments(bs, nb, shipped, nshipped);
	fees_ticket_unfit_quotes(shipped, nshipped);
	(void) fees_write_totals(totals, ntotals);
}

/* Run the statements of batch b, in the order their rows depend on */
static void
apply_execute(ApplyBatch *b, bool no_writeback, Binding *bs, int nb)
{
	apply_run(APPLY_OUTBOX, b->rows[APPLY_OUTBOX]);
	apply_run(APPLY_LOG, b->rows[APPLY_LOG]);
	if (b->rows[APPLY_CREATE]->n > 0)
	{
		apply_run(APPLY_CREATE, b->rows[APPLY_CREATE]);
		apply_with_quotes(no_writeback, bs, nb, APPLY_QUOTES, b->rows[APPLY_CREATE]);
	}
	if (b->rows[APPLY_REGISTERED]->n > 0)
		apply_run(APPLY_REGISTERED, b->rows[APPLY_REGISTERED]);
	if (b->rows[APPLY_REGISTER]->n > 0)
		apply_run(APPLY_REGISTER, b->rows[APPLY_REGISTER]);
	if (b->rows[APPLY_UPDATE]->n > 0)
	{
		apply_run(APPLY_UPDATE, b->rows[APPLY_UPDATE]);
		apply_with_quotes(no_writeback, bs, nb, APPLY_REQUOTES, b->rows[APPLY_UPDATE]);
	}
	if (b->rows[APPLY_WAIT]->n > 0)
		apply_run(APPLY_WAIT, b->rows[APPLY_WAIT]);
	outbox_open_tickets(b->tickets);
}

/*
 * Apply results [from, to) in the current transaction.  With no_writeback,
 * shipments are recorded but the order rows are left alone (the slow path
 * after a write-back failed), and every result is forced to its recorded
 * failure.
 */
static void
apply_range(ShipResult *rs, int from, int to, Binding *bs, int nb)
{
	ApplyBatch	b;

	for (int s = 0; s < APPLY_NSTMTS; s++)
		b.rows[s] = args_create(apply_defs[s].nargs, apply_defs[s].types, to - from);
	b.tickets = outbox_tickets_create(to - from);
	for (int i = from; i < to; i++)
		apply_collect(&b, &rs[i], bs, nb);
	apply_execute(&b, rs[from].no_writeback, bs, nb);
}

/* apply_range() over one result, for shipsync_subxact() */
typedef struct ApplyOne
{
	ShipResult *rs;
	int			i;
	Binding    *bs;
	int			nb;
} ApplyOne;

static void
apply_one_step(void *arg)
{
	ApplyOne   *a = (ApplyOne *) arg;

	apply_range(a->rs, a->i, a->i + 1, a->bs, a->nb);
}

/*
 * Apply results [i, i + 1) in a subtransaction of the current transaction.
 * Returns NULL when it committed, else the error (copied into cxt); the
 * subtransaction is then rolled back.  Either way cxt is current again.
 */
static ErrorData *
apply_in_subxact(ShipResult *rs, int i, Binding *bs, int nb, MemoryContext cxt)
{
	ApplyOne	a = {rs, i, bs, nb};

	MemoryContextSwitchTo(cxt);
	return shipsync_subxact(apply_one_step, &a);
}

/* A try of the slow path failed: say so (what: applying, recording) */
static void
apply_warn(const ShipResult *r, const char *what, const ErrorData *edata)
{
	ereport(WARNING,
			(errcode(edata->sqlerrcode),
			 errmsg("pg_shipsync: %s the result of intent %lld (order %s) failed: %s",
					what, (long long) r->id, r->order_key, edata->message)));
}

/* Whether error e is another session's lock (or a deadlock), which passes */
static bool
apply_lock_error(const ErrorData *e)
{
	return e->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		e->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
		e->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE;
}

/*
 * Whether a result that failed with error e is to be sent again later
 * rather than given up: a lock of another session's (not only on the order
 * row: an answer to record met it, apply_park(), or one with nothing to
 * write back) held it for longer than shipsync.order_lock_timeout
 * (writeback.c), or a deadlock or serialization failure met it.  Then r becomes a retry, as a
 * transient failure of the carrier would be: nothing recorded but its
 * outbox state and log row, due again after a backoff (1 s, doubling, at
 * most a minute, jittered), and sent under its key, which the carrier
 * answers as before.  Not at its last attempt: it would not be sent again.
 */
static bool
apply_later(ShipResult *r, const ErrorData *e)
{
	long		delay;

	if (r->last_attempt || !apply_lock_error(e))
		return false;
	delay = Max(1000, shipsync_backoff_ms(r->attempt, 1000, 60000,
										  pg_prng_double(&pg_global_prng_state)));
	r->state = "retrying";
	r->outcome = "retry";
	r->next_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay);
	r->ship_ok = false;
	r->ticket_kind = NULL;
	r->error_class = "order_locked";
	r->error = psprintf("the order row or its table is locked by another transaction, sent again in %ld ms: %s",
						delay, e->message);
	return true;
}

/*
 * Whether result r, whose apply failed with e, is a carrier's answer to
 * record with its write-back left to wait: a shipment created, updated or
 * cancelled (a registration writes nothing back) whose apply met another
 * session's lock.  Then r is recorded as done, error_class order_locked,
 * and a row of writeback_wait has the dispatcher write the shipment back
 * as soon as the order row is free (outbox_writeback_waiting()).  The
 * carrier is not asked again and no attempt is counted: before, r was
 * sent again under its key (apply_later()) at every try, and a row held
 * for a few backoffs (a forgotten prepared transaction, a long SELECT ...
 * FOR UPDATE) left it dead at max_attempts, writeback_failed, its waybill
 * never written onto the order.
 */
static bool
apply_park(ShipResult *r, const ErrorData *e)
{
	if (!r->ship_ok || r->kind == INTENT_REGISTER || r->no_writeback || !apply_lock_error(e))
		return false;
	r->no_writeback = true;
	r->park_writeback = true;
	r->ticket_kind = NULL;
	r->error_class = "order_locked";
	r->error = psprintf("the answer is recorded; its write-back waits for the order row or table,"
						" held by another transaction: %s", e->message);
	return true;
}

/*
 * The slow path for one result, each try in its own subtransaction: as it
 * is; then, if another session held its order row, recorded with its
 * write-back left to wait (apply_park()), or, if that meets a lock too or
 * the answer records nothing, retrying (apply_later()); else dead
 * (writeback_failed) with its shipment recorded but the order row left
 * alone; then dead (apply_failed) with nothing but its outbox state, log
 * row and ticket.  Only when even that fails (the outbox itself cannot be
 * written) is the error raised.
 */
static void
apply_one(ShipResult *rs, int i, Binding *bs, int nb, MemoryContext cxt)
{
	ShipResult *r = &rs[i];
	ErrorData  *first;
	ErrorData  *second;
	ErrorData  *last;

	if ((first = apply_in_subxact(rs, i, bs, nb, cxt)) == NULL)
		return;
	apply_warn(r, "applying", first);

	if (apply_lock_error(first))
	{
		ShipResult	as_answered = *r;
		ErrorData  *parked;

		if (apply_park(r, first))
		{
			if ((parked = apply_in_subxact(rs, i, bs, nb, cxt)) == NULL)
			{
				outbox_writebacks_parked = true;
				return;
			}
			/* not even that: as before, sent again later */
			apply_warn(r, "recording", parked);
			*r = as_answered;
		}
	}
	if (!apply_later(r, first))
	{
		/* record the shipment and the failure, without the write-back */
		r->no_writeback = true;
		r->state = "dead";
		r->outcome = "dead";
		r->next_at = 0;
		r->error_class = "writeback_failed";
		r->ticket_kind = "writeback_failed";
		r->error = psprintf("write-back failed: %s", first->message);
	}
	if ((second = apply_in_subxact(rs, i, bs, nb, cxt)) == NULL)
		return;

	/* not even the shipment: the intent's own state, log and ticket only */
	apply_warn(r, "recording", second);
	r->state = "dead";
	r->outcome = "dead";
	r->next_at = 0;
	r->ship_ok = false;
	r->error_class = "apply_failed";
	r->ticket_kind = "apply_failed";
	r->error = psprintf("the result could not be recorded: %s", second->message);
	if ((last = apply_in_subxact(rs, i, bs, nb, cxt)) == NULL)
		return;
	ereport(ERROR,
			(errcode(last->sqlerrcode),
			 errmsg("pg_shipsync: the state of intent %lld cannot be recorded: %s",
					(long long) r->id, last->message)));
}

/*
 * The tracking providers that results [0, n) gave new intents to:
 * registrations of the waybills of new shipments (apply_range() enqueues
 * them).
 */
static uint64
apply_new_work(const ShipResult *rs, int n, Binding *bs, int nb)
{
	uint64		fresh = 0;

	for (int i = 0; i < n; i++)
	{
		const ShipResult *r = &rs[i];
		Binding    *b;

		if (!r->ship_ok || r->kind != INTENT_CREATE || r->tracking_number == NULL)
			continue;
		b = binding_find(bs, nb, r->binding_id);
		if (b && b->tracking_provider_id != 0)
			fresh |= SHIPSYNC_PROVIDER_BIT(b->tracking_provider_id);
	}
	return fresh;
}

/*
 * Must results [0, n) be committed durably?  An apply lost in a crash is
 * made good by sending the intent again under its key, except for an
 * attempt at max_attempts: after a restart that intent is dead, unsent, and
 * the shipment the carrier made would be known only to the carrier.
 */
static bool
apply_durable(const ShipResult *rs, int n)
{
	for (int i = 0; i < n; i++)
		if (rs[i].last_attempt)
			return true;
	return false;
}

/*
 * In a PG_CATCH() of a transaction of ours: the error, copied into cxt,
 * and the transaction rolled back.  A DROP EXTENSION under it ends the
 * worker (nothing is left to apply to).
 */
static ErrorData *
apply_caught(MemoryContext cxt)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	shipsync_abort_tx();
	(void) shipsync_exit_if_dropped();
	MemoryContextSwitchTo(cxt);
	return edata;
}

/*
 * Apply results [0, n) in one transaction.  Returns false (rolled back,
 * the error logged) when it failed.
 */
static bool
apply_batch(ShipResult *rs, int n, Binding *bs, int nb)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;

	PG_TRY();
	{
		shipsync_begin_tx("applying results", apply_durable(rs, n));
		apply_range(rs, 0, n, bs, nb);
		shipsync_end_tx();
	}
	PG_CATCH();
	{
		ErrorData  *edata = apply_caught(cxt);

		ereport(LOG,
				(errmsg("pg_shipsync: a batch of %d results failed, applying them one by one", n),
				 errdetail("%s", edata->message)));
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	return ok;
}

/*
 * Apply a batch of completions: one transaction; if it fails, one
 * subtransaction per completion (never more than one open) so that only
 * the failing ones fail, and other intents of the batch, of every provider,
 * are applied.  Returns the providers given new intents (registrations of
 * new waybills): the dispatcher looks for their work.
 */
static void
apply_held(ShipResult *rs, int n, Binding *bs, int nb)
{
	MemoryContext cxt = CurrentMemoryContext;

	if (!apply_batch(rs, n, bs, nb))
	{
		shipsync_begin_tx("applying results one by one", apply_durable(rs, n));
		for (int i = 0; i < n; i++)
			apply_one(rs, i, bs, nb, cxt);
		shipsync_end_tx();
		MemoryContextSwitchTo(cxt);
	}
}

uint64
outbox_apply(ShipResult *rs, int n, Binding *bs, int nb)
{
	if (n == 0)
		return 0;

	/*
	 * A cancel (pg_cancel_backend() of the applier, or of the dispatcher
	 * applying itself) waits until the results are applied: taken for the
	 * failure of the batch, then of the write-back at hand, it left an
	 * order the carrier had shipped dead (writeback_failed), or, escaping,
	 * results unapplied and sent again.
	 */
	HOLD_CANCEL_INTERRUPTS();
	PG_TRY();
	{
		apply_held(rs, n, bs, nb);
	}
	PG_FINALLY();
	{
		RESUME_CANCEL_INTERRUPTS();
	}
	PG_END_TRY();
	return apply_new_work(rs, n, bs, nb);
}

/* ---------- write-backs waiting for a held order row ---------- */

/* Set when an apply of this process left a write-back to wait (applier.c passes it on) */
bool		outbox_writebacks_parked = false;

typedef enum WaitStmt
{
	WAIT_DUE,					/* the waiting write-backs due */
	WAIT_SHIPMENT,				/* one's shipment, as APPLY_CREATE returns it */
	WAIT_LANDED,				/* written back: forget it, its intents clean */
	WAIT_HELD,					/* held again: its next try */
	WAIT_FAILED,				/* refused by the row: its intents dead */
	WAIT_RESOLVE,				/* its order_held ticket resolved */
	WAIT_NEXT,					/* when the next is due */
	WAIT_NSTMTS
} WaitStmt;

static const char *const wait_sql[WAIT_NSTMTS] = {
	[WAIT_DUE] =
	"SELECT binding_id, order_key, provider_id, ticketed, since, tries,"
	" outbox_ids[pg_catalog.array_upper(outbox_ids, 1)]"
	" FROM shipsync.writeback_wait WHERE next_at <= pg_catalog.now()"
	" ORDER BY next_at LIMIT " CppAsString2(WB_WAIT_BATCH),
	[WAIT_SHIPMENT] =
	"SELECT binding_id, order_key, provider_shipment_id, tracking_number, status,"
	" label_url, fee_total FROM shipsync.shipment"
	" WHERE binding_id = $1 AND order_key = $2 AND provider_id = $3",
	[WAIT_LANDED] =
	"WITH w AS (DELETE FROM shipsync.writeback_wait"
	"   WHERE binding_id = $1 AND order_key = $2 AND provider_id = $3 RETURNING outbox_ids)"
	" UPDATE shipsync.outbox o SET error_class = NULL, last_error = NULL,"
	" updated_at = pg_catalog.now() FROM w"
	" WHERE o.id = ANY (w.outbox_ids) AND o.state = 'done' AND o.error_class = 'order_locked'",
	[WAIT_HELD] =
	"UPDATE shipsync.writeback_wait SET tries = tries + 1,"
	" next_at = pg_catalog.now() + $4 * interval '1 millisecond',"
	" last_error = $5, ticketed = ticketed OR $6"
	" WHERE binding_id = $1 AND order_key = $2 AND provider_id = $3",
	[WAIT_FAILED] =
	"WITH w AS (DELETE FROM shipsync.writeback_wait"
	"   WHERE binding_id = $1 AND order_key = $2 AND provider_id = $3 RETURNING outbox_ids)"
	" UPDATE shipsync.outbox o SET state = 'dead', error_class = 'writeback_failed',"
	" last_error = $4, updated_at = pg_catalog.now(), done_at = pg_catalog.now() FROM w"
	" WHERE o.id = ANY (w.outbox_ids) AND o.state = 'done' AND o.error_class = 'order_locked'",
	[WAIT_RESOLVE] =
	"UPDATE shipsync.exception_ticket SET resolved_at = pg_catalog.now(),"
	" resolved_by = 'dispatcher', resolution = $4"
	" WHERE kind = 'order_held' AND coalesce(provider_id, 0) = $3"
	" AND coalesce(binding_id, 0) = $1 AND coalesce(order_key, '') = $2"
	" AND coalesce(subject, '') = '' AND resolved_at IS NULL",
	[WAIT_NEXT] =
	"SELECT min(next_at) FROM shipsync.writeback_wait",
};

static const int wait_nargs[WAIT_NSTMTS] = {
	[WAIT_SHIPMENT] = 3, [WAIT_LANDED] = 3, [WAIT_HELD] = 6, [WAIT_FAILED] = 4,
	[WAIT_RESOLVE] = 4,
};

static SPIPlanPtr wait_plans[WAIT_NSTMTS];

/* Run statement s with args ($1 binding, $2 order key, $3 provider, then more) */
static void
wait_run(WaitStmt s, Datum *args, int ok)
{
	static const Oid types[6] = {INT4OID, TEXTOID, INT4OID, TEXTOID, TEXTOID, BOOLOID};
	Oid			t[6];
	int			rc;

	if (wait_plans[s] == NULL)
	{
		memcpy(t, types, sizeof(t));
		if (s == WAIT_HELD)
			t[3] = INT4OID;
		wait_plans[s] = shipsync_prepare_saved(wait_sql[s], wait_nargs[s], t);
	}
	rc = SPI_execute_plan(wait_plans[s], args, NULL, false, 0);
	if (rc != ok)
		elog(ERROR, "writing back what waited for held order rows failed: %s",
			 SPI_result_code_string(rc));
}

/* One waiting write-back */
typedef struct WaitRow
{
	Datum		args[6];		/* binding, order key, provider, then per statement */
	bool		ticketed;
	TimestampTz since;
	int32		tries;
	int64		last_id;		/* the last intent whose answer waits */
	Binding    *bs;
	int			nb;
} WaitRow;

/* Write w's shipment back onto its order row, waiting for the row briefly */
static void
wait_write_back(void *arg)
{
	WaitRow    *w = (WaitRow *) arg;
	int			lock_ms = WB_WAIT_LOCK_MS;

	if (shipsync_order_lock_timeout_ms > 0)
		lock_ms = Min(lock_ms, shipsync_order_lock_timeout_ms);
	wait_run(WAIT_SHIPMENT, w->args, SPI_OK_SELECT);
	writeback_shipments_within(w->bs, w->nb, SPI_tuptable, SPI_processed, lock_ms);
	wait_run(WAIT_LANDED, w->args, SPI_OK_UPDATE);
	w->args[3] = CStringGetTextDatum("written back once the order row was let go");
	wait_run(WAIT_RESOLVE, w->args, SPI_OK_UPDATE);
}

/*
 * w's write-back met the held row again (e), or something else that
 * passes: its next try, and the order_held ticket once it has waited
 * longer than shipsync.writeback_wait_ticket.  Or the row refused it (a
 * constraint, a trigger of the user's): its intents end dead
 * (writeback_failed), as the slow path's would have, with a ticket.
 */
static void
wait_not_landed(WaitRow *w, const ErrorData *e, ArgArrays *tickets, TimestampTz now)
{
	char	   *key = TextDatumGetCString(w->args[1]);

	if (writeback_error_passes(e))
	{
		bool		ticket = !w->ticketed && shipsync_writeback_wait_ticket_ms > 0 &&
			TimestampDifferenceExceeds(w->since, now, shipsync_writeback_wait_ticket_ms);

		w->args[3] = Int32GetDatum(Min(WB_WAIT_MAX_MS, WB_WAIT_FIRST_MS * (w->tries + 1)));
		w->args[4] = CStringGetTextDatum(e->message);
		w->args[5] = BoolGetDatum(ticket);
		wait_run(WAIT_HELD, w->args, SPI_OK_UPDATE);
		if (ticket)
			outbox_ticket_row(tickets, w->last_id, DatumGetInt32(w->args[0]), key,
							  DatumGetInt32(w->args[2]),
							  psprintf("the carrier's answer is recorded, but its write-back has waited"
									   " since %s for the order row, held by another transaction: %s",
									   timestamptz_to_str(w->since), e->message),
							  "order_held");
		return;
	}
	ereport(WARNING,
			(errcode(e->sqlerrcode),
			 errmsg("pg_shipsync: the write-back of order %s, which waited for its row, failed: %s",
					key, e->message)));
	w->args[3] = CStringGetTextDatum(psprintf("write-back failed: %s", e->message));
	wait_run(WAIT_FAILED, w->args, SPI_OK_UPDATE);
	outbox_ticket_row(tickets, w->last_id, DatumGetInt32(w->args[0]), key,
					  DatumGetInt32(w->args[2]),
					  psprintf("write-back failed: %s", e->message), "writeback_failed");
	w->args[3] = CStringGetTextDatum("the write-back failed (a writeback_failed ticket)");
	wait_run(WAIT_RESOLVE, w->args, SPI_OK_UPDATE);
}

/* The waiting write-backs due, copied out of SPI (at most WB_WAIT_BATCH) */
static int
wait_due(WaitRow **out, Binding *bs, int nb)
{
	SPITupleTable *tt;
	WaitRow    *ws;
	int			n;

	if (wait_plans[WAIT_DUE] == NULL)
		wait_plans[WAIT_DUE] = shipsync_prepare_saved(wait_sql[WAIT_DUE], 0, NULL);
	if (SPI_execute_plan(wait_plans[WAIT_DUE], NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "looking for write-backs that wait failed");
	tt = SPI_tuptable;
	n = (int) SPI_processed;
	ws = palloc0(sizeof(WaitRow) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		ws[i].args[0] = SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull);
		ws[i].args[1] = CStringGetTextDatum(SPI_getvalue(tt->vals[i], tt->tupdesc, 2));
		ws[i].args[2] = SPI_getbinval(tt->vals[i], tt->tupdesc, 3, &isnull);
		ws[i].ticketed = DatumGetBool(SPI_getbinval(tt->vals[i], tt->tupdesc, 4, &isnull));
		ws[i].since = DatumGetTimestampTz(SPI_getbinval(tt->vals[i], tt->tupdesc, 5, &isnull));
		ws[i].tries = DatumGetInt32(SPI_getbinval(tt->vals[i], tt->tupdesc, 6, &isnull));
		ws[i].last_id = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 7, &isnull));
		if (isnull)
			ws[i].last_id = 0;
		ws[i].bs = bs;
		ws[i].nb = nb;
	}
	*out = ws;
	return n;
}

/* When the next waiting write-back is due (0: none waits) */
static TimestampTz
wait_next(void)
{
	bool		isnull;
	Datum		d;

	if (wait_plans[WAIT_NEXT] == NULL)
		wait_plans[WAIT_NEXT] = shipsync_prepare_saved(wait_sql[WAIT_NEXT], 0, NULL);
	if (SPI_execute_plan(wait_plans[WAIT_NEXT], NULL, NULL, true, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "looking for write-backs that wait failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetTimestampTz(d);
}

/*
 * The dispatcher's tries of the write-backs that wait for a held order row
 * (writeback_wait, apply_park()), each in a subtransaction of its own,
 * waiting for the row at most WB_WAIT_LOCK_MS: the shipment's fields as
 * shipsync.shipment has them now (the same write-back statement as the
 * apply's, as the table's owner, capture suppressed: no echo), the row of
 * writeback_wait deleted and its intents' order_locked cleared in the same
 * subtransaction, and its order_held ticket resolved.  The carrier is not
 * asked again.  A pass stops trying after WB_WAIT_PASS_HELD rows found
 * held.  Returns when the next is due (0: none waits).
 */
TimestampTz
outbox_writeback_waiting(Binding *bs, int nb)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile TimestampTz next = 0;

	PG_TRY();
	{
		WaitRow    *ws;
		int			n;
		int			held = 0;
		ArgArrays  *tickets;
		TimestampTz now = GetCurrentTimestamp();

		shipsync_begin_tx("writing back what waited for held order rows", false);
		n = wait_due(&ws, bs, nb);
		tickets = outbox_tickets_create(Max(n, 1));
		for (int i = 0; i < n && held < WB_WAIT_PASS_HELD; i++)
		{
			ErrorData  *e;

			e = shipsync_subxact(wait_write_back, &ws[i]);
			if (e == NULL)
				continue;
			held += apply_lock_error(e);
			wait_not_landed(&ws[i], e, tickets, now);
		}
		outbox_open_tickets(tickets);
		next = wait_next();
		/* rows left untried: the next pass soon, not at once */
		if (held >= WB_WAIT_PASS_HELD && next != 0)
			next = Max(next, TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 100));
		shipsync_end_tx();
	}
	PG_CATCH();
	{
		ErrorData  *edata = apply_caught(cxt);

		ereport(LOG,
				(errmsg("pg_shipsync: writing back what waited for held order rows failed"),
				 errdetail("%s", edata->message)));
		FreeErrorData(edata);
		next = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), WB_WAIT_MAX_MS);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	return next;
}
