/*-------------------------------------------------------------------------
 *
 * outbox.c
 *		The claim side of the outbox: recovery of intents in flight, the
 *		drain of the inbox, claim + render, and tickets.
 *
 * Every statement here is set-based: one statement per batch, its values
 * passed as arrays through saved SPI plans (UPDATE ... FROM
 * shipsync._rows($1, ...), src/spi.c),
 * never one statement per order.
 *
 * Claim + render (one transaction, made durable before anything is sent),
 * as a sequence of named steps (outbox_claim()):
 * lock due intents of one provider with FOR UPDATE SKIP LOCKED; coalesce
 * into them the unsent updates of the same orders that are already
 * committed; render the intents never sent from the CURRENT order row (as
 * the table's owner, through the provider's dialect, dialect.c) and mark
 * them in flight, storing each request with its kind (outbox.request_kind:
 * create, update, cancel or register), so that retries re-send the stored
 * bytes unchanged and the answer is applied as what was asked; tickets for
 * invalid orders; when the next retry falls due.  Coalescing runs before
 * rendering, so the rendered row always carries the changes of the updates
 * it absorbed.  shipsync.claim() runs the same saved plans, so tests race
 * the real thing.
 *
 * The claim commits without waiting for its WAL flush; the dispatcher
 * claims for every provider that has room, then calls
 * outbox_claims_durable(), which flushes once up to the last of those
 * commits (or finds the launcher has, flush.c), and only then sends.  So several providers' claims share one
 * flush, and the guarantee is unchanged: a first attempt goes out only
 * once its stored request is on disk (a crash before the flush loses the
 * claim, never a request sent).
 *
 * Applying the answers is apply.c's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

/* The hex SHA-256 of a request body: what delivery_log records of it. */
static char *
sha256_hex(const char *s)
{
	unsigned char digest[32];
	char	   *hex = palloc(2 * sizeof(digest) + 1);

	if (!shipsync_sha256(s, strlen(s), digest))
		elog(ERROR, "could not compute a SHA-256 digest");
	shipsync_hex_encode(digest, sizeof(digest), hex, false);
	return hex;
}

/*
 * Column col of tup as a C string, NULL for NULL.  A text column is copied
 * out directly: SPI_getvalue() looks the type's output function up in the
 * catalog cache and sets up an fmgr call for every value (1,300
 * instructions each, four per claimed intent).  So is a uuid (the
 * idempotency key), in the 37 bytes it needs: uuid_out() allocates 1 kB
 * for it (shipsync_uuid_format()).
 */
static char *
get_text(HeapTuple tup, TupleDesc desc, int col)
{
	Oid			type = TupleDescAttr(desc, col - 1)->atttypid;
	bool		isnull;
	Datum		d;

	if (type != TEXTOID && type != UUIDOID)
		return SPI_getvalue(tup, desc, col);
	d = SPI_getbinval(tup, desc, col, &isnull);
	if (isnull)
		return NULL;
	if (type == UUIDOID)
	{
		char	   *out = palloc(SHIPSYNC_UUID_TEXT_LEN);

		shipsync_uuid_format(DatumGetUUIDP(d)->data, out);
		return out;
	}
	return TextDatumGetCString(d);
}

/* ---------- recovery and configuration ---------- */

/*
 * Whether pg_prepared_xacts lists a transaction of this database (its
 * captured intents, if any, are not in the inbox yet).
 */
bool
outbox_prepared_exist(void)
{
	bool		isnull;
	bool		exist;

	shipsync_begin_tx("looking for prepared transactions", false);
	if (SPI_execute("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_xacts"
					" WHERE database = pg_catalog.current_database())", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading pg_prepared_xacts failed");
	exist = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	shipsync_end_tx();
	return exist;
}

/*
 * Take back intents in flight: due again at once (same key, same bytes),
 * or dead when they are at their provider's max_attempts, which counts the
 * attempt whose answer was lost: an intent at its limit is not sent again.
 * $1: only those whose lease expired.  Dead ones get a ticket and a NOTIFY.
 * Returns (retrying, dead).
 *
 * One scan of the outbox, updating what it finds.  This was an UPDATE
 * joined to a subquery over the outbox itself; planned while statistics
 * showed no intent in flight (both sides estimated at one row), the join
 * was a nested loop that read every in-flight intent again for each one,
 * through the per-order index when that looked as cheap: at every idle
 * check, 8.4 s of the dispatcher with a backlog of 20,000 behind a few
 * hundred in flight (TAP 046).  The limit is looked up per intent taken
 * back, of which there are few.
 */
#define REQUEUE_AT_LIMIT \
	"(o.attempts >= COALESCE((SELECT p.max_attempts FROM shipsync.provider p" \
	" WHERE p.provider_id = o.provider_id), 2147483647))"
static const char *const requeue_sql =
"WITH r AS (UPDATE shipsync.outbox o SET"
"   state = CASE WHEN " REQUEUE_AT_LIMIT " THEN 'dead' ELSE 'retrying' END,"
"   next_attempt_at = pg_catalog.now(), lease_until = NULL, updated_at = pg_catalog.now(),"
"   error_class = CASE WHEN $1 THEN 'lease_expired'"
"     WHEN " REQUEUE_AT_LIMIT " THEN 'interrupted' ELSE o.error_class END,"
"   last_error = CASE WHEN NOT " REQUEUE_AT_LIMIT " THEN o.last_error"
"     ELSE pg_catalog.format('gave up after %s attempts: %s', o.attempts, CASE WHEN $1"
"       THEN 'the lease of the last attempt expired; its answer is unknown'"
"       ELSE 'the dispatcher stopped while the last attempt was in flight; its answer is unknown' END) END,"
"   done_at = CASE WHEN " REQUEUE_AT_LIMIT " THEN pg_catalog.now() END"
" WHERE o.state = 'in_flight' AND (NOT $1 OR o.lease_until < pg_catalog.now())"
" RETURNING o.id, o.binding_id, o.order_key, o.provider_id, o.state, o.last_error),"
" t AS (INSERT INTO shipsync.exception_ticket (kind, binding_id, order_key, provider_id,"
"   outbox_id, detail)"
"   SELECT 'dead_intent', r.binding_id, r.order_key, r.provider_id, r.id, r.last_error"
"   FROM r WHERE r.state = 'dead'"
"   RETURNING pg_catalog.pg_notify('shipsync', pg_catalog.json_build_object("
"     'event', kind, 'outbox_id', outbox_id, 'ticket_id', ticket_id,"
"     'binding_id', binding_id, 'order_key', order_key)::text) AS n)"
" SELECT (SELECT pg_catalog.count(*) FROM r WHERE r.state = 'retrying'),"
"   (SELECT pg_catalog.count(*) FROM t)";

/*
 * Make in_flight intents due again, same key and same bytes (those at
 * max_attempts end dead instead: see requeue_sql).
 *
 * At start (expired_only = false), every in_flight intent belongs to a
 * dispatcher that is gone (one dispatcher per database): all are sent again
 * at once.  Later (expired_only = true), only those whose lease ran out:
 * claimed by someone who is gone (a claim made by hand, a dispatcher that
 * hung).  This dispatcher's own leases outlast its requests' timeouts, so it
 * takes back its own only when it was held up for longer than a lease (a
 * lock on its tables for more than a minute): the answer that comes later
 * is still applied, as long as the intent was not sent again (apply.c).
 * outbox_lease_idx holds only the intents in flight, so the sweep reads
 * neither the history nor a paused provider's backlog.
 */
void
outbox_requeue_in_flight(bool expired_only)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[1] = {BoolGetDatum(expired_only)};
	int64		again;
	int64		dead;
	bool		isnull;

	shipsync_begin_tx(expired_only ? "sweeping expired leases" : "recovering intents in flight",
					  !expired_only);
	if (plan == NULL)
	{
		Oid			types[1] = {BOOLOID};

		plan = shipsync_prepare_saved(requeue_sql, 1, types);
	}
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "making in_flight intents due again failed");
	again = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	dead = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (again > 0)
		ereport(LOG,
				(errmsg(expired_only ?
						"pg_shipsync: %lld intents whose lease expired are due again" :
						"pg_shipsync: %lld intents that were in flight are sent again",
						(long long) again)));
	if (dead > 0)
		ereport(LOG,
				(errmsg("pg_shipsync: %lld intents in flight were at max_attempts: dead, not sent again",
						(long long) dead)));
	shipsync_end_tx();
}

/* ---------- claim and render ---------- */

/*
 * The claim: due intents of one provider, oldest first, skipping rows
 * another claimer holds, and never an intent while an earlier intent of the
 * same order is undelivered (update and cancel never overtake the create).
 * The per-order check is a correlated min() over the order index, so it
 * costs one index probe per candidate, whatever the size of the backlog.
 * shipsync.claim() runs this same saved plan, so tests race the real thing.
 *
 * The check reads "o.id <= min(...)", not "o.id = min(...)": the min is
 * over a set that holds o itself, so the two say the same, but the planner
 * guesses that an equality with a subquery keeps 1 row in 200.  With that
 * guess, walking the due index in order looked like reading 200 candidates
 * per intent claimed, and once statistics showed a backlog beside many done
 * intents, the planner read every due intent instead, checked each, and
 * sorted them, for every claim (42 ms against 0.7 ms for 50 intents out of
 * a backlog of 7,777; the dispatcher spent whole seconds claiming while
 * inserts went on).  An inequality is guessed to keep a third, and the
 * ordered walk, which stops at the limit, wins at any size (TAP 046).
 *
 * The eighth column says whether a later update of the same order waits:
 * only then is there anything to coalesce (claim_coalesce()).  It is
 * computed for the rows returned only, one probe of the per-order index
 * each; the coalescing statement, run for every create of a burst to find
 * nothing, cost about five times that.
 *
 * The last says whether a stored create is stale: the order has a live
 * shipment at this provider now, made by another intent since the create
 * was rendered (a create gone dead, then an update of the order rendered
 * as a create and delivered, then the dead create retried or requeued).
 * Sent as stored, it would make the carrier ship the order twice; it is
 * rendered again instead, as an update of that shipment.  Only stored
 * creates are probed (retries), one probe of the shipment's key each.
 */
static const char *const lock_sql =
"SELECT o.id, o.binding_id, o.order_key, o.op, o.request_method IS NOT NULL,"
" o.idempotency_key, o.attempts,"
" EXISTS (SELECT 1 FROM shipsync.outbox l"
"   WHERE l.binding_id = o.binding_id AND l.order_key = o.order_key AND l.id > o.id"
"   AND l.state IN ('pending', 'retrying', 'in_flight') AND l.op = 'update'),"
" CASE WHEN o.request_kind = 'create' THEN EXISTS (SELECT 1 FROM shipsync.shipment s"
"   WHERE s.binding_id = o.binding_id AND s.order_key = o.order_key"
"   AND s.provider_id = o.provider_id AND s.status <> 'cancelled') ELSE false END"
" FROM shipsync.outbox o"
" WHERE o.provider_id = $1 AND o.state IN ('pending', 'retrying')"
" AND o.next_attempt_at <= pg_catalog.now()"
" AND o.id <= (SELECT pg_catalog.min(e.id) FROM shipsync.outbox e"
"   WHERE e.binding_id = o.binding_id AND e.order_key = o.order_key"
"   AND e.state IN ('pending', 'retrying', 'in_flight')"
"   AND (e.op = 'register') = (o.op = 'register'))"
" ORDER BY o.next_attempt_at, o.id"
" LIMIT $2"
" FOR UPDATE OF o SKIP LOCKED";

/*
 * Mark locked intents in flight, in the same statement that stores the
 * requests rendered for them: one new row version per claimed intent.  An
 * intent with nothing to send (u.skip) is done with the reason.
 *
 * The dispatcher's mark returns what it does not know already: the
 * content digest, and the stored request of an intent rendered by an
 * earlier attempt (u.m is NULL).  A request rendered now is not read back:
 * the whole row, body included, was formed and copied once more for every
 * intent.  shipsync.claim() returns the whole outbox row.
 */
#define MARK_SQL \
"UPDATE shipsync.outbox o SET" \
" state = CASE WHEN u.skip IS NULL THEN 'in_flight' WHEN u.inv THEN 'invalid' ELSE 'done' END," \
" attempts = o.attempts + CASE WHEN u.skip IS NULL THEN 1 ELSE 0 END," \
" lease_until = CASE WHEN u.skip IS NULL" \
"   THEN pg_catalog.now() + pg_catalog.make_interval(secs => $7 / 1000.0) END," \
" updated_at = pg_catalog.now()," \
" request_method = COALESCE(u.m, o.request_method)," \
" request_url = COALESCE(u.url, o.request_url)," \
" request_body = COALESCE(u.body, o.request_body)," \
" request_digest = COALESCE(u.digest, o.request_digest)," \
" request_kind = COALESCE(u.kind, o.request_kind)," \
" content_digest = COALESCE(u.cdigest, o.content_digest)," \
" last_error = COALESCE(u.skip, o.last_error)," \
" error_class = CASE WHEN u.skip IS NULL THEN o.error_class WHEN u.inv THEN 'invalid_order'" \
"   ELSE 'nothing_to_send' END," \
" done_at = CASE WHEN u.skip IS NULL THEN NULL ELSE pg_catalog.now() END" \
" FROM shipsync._rows($1, $2, $3, $4, $5, $6, $8, $9, $10)" \
"   AS u(id int8, m text, url text, body text, skip text, digest text, inv bool," \
"   cdigest int8, kind text)" \
" WHERE o.id = u.id"
static const char *const mark_sql = MARK_SQL
" RETURNING o.id, o.content_digest,"
" CASE WHEN u.m IS NULL THEN o.request_method END,"
" CASE WHEN u.m IS NULL THEN o.request_url END,"
" CASE WHEN u.m IS NULL THEN o.request_body END,"
" CASE WHEN u.m IS NULL THEN o.request_digest END,"
" CASE WHEN u.m IS NULL THEN o.request_kind END";
static const char *const claim_mark_sql = MARK_SQL " RETURNING o.*";

/* The columns of mark_sql's rows */
enum
{
	MARK_ID = 1, MARK_CDIGEST, MARK_METHOD, MARK_URL, MARK_BODY, MARK_DIGEST, MARK_KIND
};

/* The types of the mark's parameters, $1..$10 */
static const Oid mark_types[10] = {INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
TEXTARRAYOID, TEXTARRAYOID, INT4OID, BOOLARRAYOID, INT8ARRAYOID, TEXTARRAYOID};

/*
 * Take what the capture trigger wrote into the inbox into the outbox,
 * indexes and all: the indexing cost moves from the user's transaction to
 * ours.  At most $1 intents (NULL: all) of the providers $2 (NULL: all):
 * those up to the $1-th smallest id, so that a later intent of an order
 * never reaches the outbox before an earlier one.  Two linear scans and no
 * per-row lookup: the bound is a scalar subquery, computed once (as a
 * joined CTE it was inlined and re-run for every inbox row, and deleting
 * by "ctid = ANY (array)" was a quadratic filter in the generic plan).
 * Rows committed after this statement's snapshot wait for the next drain.  A second drainer running at the same time
 * waits on the rows the first deleted, then skips them: every intent moves
 * once.
 */
static const char *const drain_sql =
"WITH d AS (DELETE FROM shipsync.inbox i"
"   WHERE i.id <= (SELECT pg_catalog.max(s.id) FROM ("
"     SELECT id FROM shipsync.inbox"
"     WHERE $2::integer[] IS NULL OR provider_id = ANY ($2)"
"     ORDER BY id LIMIT $1) s)"
"   AND ($2::integer[] IS NULL OR i.provider_id = ANY ($2)) RETURNING i.*)"
" INSERT INTO shipsync.outbox (id, binding_id, provider_id, order_key, op,"
" idempotency_key, created_at, next_attempt_at)"
" SELECT id, binding_id, provider_id, order_key, op, idempotency_key,"
" created_at, created_at FROM d";

static SPIPlanPtr drain_plan = NULL;
static SPIPlanPtr lock_plan = NULL;
static SPIPlanPtr mark_plan = NULL;
static SPIPlanPtr claim_mark_plan = NULL;
static SPIPlanPtr coalesce_plan = NULL;
static SPIPlanPtr shiplookup_plan = NULL;
static SPIPlanPtr reglookup_plan = NULL;
static SPIPlanPtr nextdue_plan = NULL;
static SPIPlanPtr paused_plan = NULL;
static SPIPlanPtr fail_plan = NULL;
static SPIPlanPtr ticket_plan = NULL;

/* The columns of a batch of exception tickets (outbox_ticket_row()) */
static const Oid ticket_types[6] = {INT8OID, INT4OID, TEXTOID, INT4OID, TEXTOID, TEXTOID};

/*
 * The mark and the coalescing are always run with their generic plans: both
 * find their rows by key from the batch's arrays, so one plan serves any
 * batch.  Left to the plan cache, a claim of one intent (an order at a
 * trickle) had each planned anew every time, because a custom plan for a
 * one-element array is estimated cheaper than the generic plan: 120 and
 * 290 µs of planning in every claim.  A plan made while the outbox was
 * small is made again when it doubles (shipsync_replan_grown()).
 */
static void
prepare_claim_plans(void)
{
	if (lock_plan)
		return;
	{
		Oid			t[2] = {INT8OID, INT4ARRAYOID};

		drain_plan = shipsync_prepare_saved(drain_sql, 2, t);
	}
	{
		Oid			t[2] = {INT4OID, INT4OID};

		lock_plan = shipsync_prepare_saved(lock_sql, 2, t);
	}
	mark_plan = shipsync_prepare_saved_opt(mark_sql, 10, mark_types, true);
	{
		Oid			t[3] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID};

		coalesce_plan = shipsync_prepare_saved_opt(
			"UPDATE shipsync.outbox e SET state = 'coalesced', coalesced_into = v.into,"
			" done_at = pg_catalog.now(), updated_at = pg_catalog.now()"
			" FROM (SELECT u.id AS into, x.id"
			"   FROM unnest($1, $2, $3) AS u(id, bid, k),"
			"   LATERAL (SELECT e.id FROM shipsync.outbox e"
			"     WHERE e.binding_id = u.bid AND e.order_key = u.k AND e.id > u.id"
			"     AND e.state IN ('pending', 'retrying', 'in_flight')"
			"     OFFSET 0) AS x) AS v"
			" WHERE e.id = v.id AND e.op = 'update' AND e.state = (SELECT 'pending')"
			" AND e.request_body IS NULL AND e.attempts = 0", 3, t, true);
	}
	{
		Oid			t[4] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INT4OID};

		shiplookup_plan = shipsync_prepare_saved(
			"SELECT u.id, s.provider_shipment_id"
			" FROM unnest($1, $2, $3) AS u(id, bid, k),"
			" LATERAL (SELECT x.provider_shipment_id FROM shipsync.shipment x"
			"   WHERE x.binding_id = u.bid AND x.order_key = u.k AND x.provider_id = $4"
			"   AND x.provider_shipment_id IS NOT NULL LIMIT 1) AS s", 4, t);
	}
	{
		Oid			t[4] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INT4OID};

		/*
		 * the waybill the registration was enqueued for (the main one, or
		 * a piece of a multi-piece shipment); one enqueued before 0.2 has
		 * none: the first waybill of the order not registered yet
		 */
		reglookup_plan = shipsync_prepare_saved(
			"SELECT u.id, r.waybill"
			" FROM unnest($1, $2, $3) AS u(id, bid, k),"
			" LATERAL (SELECT COALESCE((SELECT o.waybill FROM shipsync.outbox o WHERE o.id = u.id),"
			"   (SELECT w.waybill FROM shipsync._registration_waybills(u.bid, u.k, $4) w"
			"     WHERE NOT w.registered ORDER BY w.ord LIMIT 1)) AS waybill) AS r"
			" WHERE r.waybill IS NOT NULL", 4, t);
	}
	{
		Oid			t[1] = {INT4OID};

		nextdue_plan = shipsync_prepare_saved(
			"SELECT pg_catalog.min(next_attempt_at) FROM shipsync.outbox"
			" WHERE provider_id = $1 AND state IN ('pending', 'retrying')", 1, t);
	}
	{
		Oid			t[1] = {INT4OID};

		paused_plan = shipsync_prepare_saved(
			"SELECT p.paused FROM shipsync.provider p WHERE p.provider_id = $1", 1, t);
	}
	{
		Oid			t[6] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID};

		ticket_plan = shipsync_prepare_saved(
			"INSERT INTO shipsync.exception_ticket (kind, binding_id, order_key, provider_id,"
			" outbox_id, detail)"
			" SELECT u.kind, u.bid, u.k, u.pid, u.id, u.err"
			" FROM unnest($1, $2, $3, $4, $5, $6) AS u(id, bid, k, pid, err, kind)"
			/* kinds and ids only: any role may LISTEN (docs/security.md) */
			" RETURNING pg_catalog.pg_notify('shipsync', pg_catalog.json_build_object("
			"   'event', kind, 'outbox_id', outbox_id, 'ticket_id', ticket_id,"
			"   'binding_id', binding_id, 'order_key', order_key)::text)", 6, t);
	}
	{
		Oid			t[5] = {INT8ARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID};

		fail_plan = shipsync_prepare_saved(
			"UPDATE shipsync.outbox o"
			" SET attempts = o.attempts + (u.state IS NOT NULL)::int4,"
			" state = COALESCE(u.state, o.state),"
			" next_attempt_at = COALESCE(u.next_at, o.next_attempt_at),"
			" error_class = u.eclass, last_error = u.err, updated_at = pg_catalog.now(),"
			" done_at = CASE WHEN u.state = 'dead' THEN pg_catalog.now() END"
			" FROM unnest($1, $2, $3, $4, $5) AS u(id, state, next_at, eclass, err)"
			" WHERE o.id = u.id", 5, t);
	}
}

/* The intent kinds as outbox.request_kind holds them, by IntentKind */
static const char *const intent_kind_names[] = {
	[INTENT_CREATE] = "create",
	[INTENT_UPDATE] = "update",
	[INTENT_CANCEL] = "cancel",
	[INTENT_REGISTER] = "register",
};

/* The kind stored with a request (outbox.request_kind) */
static IntentKind
intent_kind_of(const char *name)
{
	for (int k = 0; name && k < (int) lengthof(intent_kind_names); k++)
		if (strcmp(name, intent_kind_names[k]) == 0)
			return (IntentKind) k;
	elog(ERROR, "unknown request kind \"%s\"", name ? name : "(null)");
	return INTENT_CREATE;		/* keep the compiler quiet */
}

/* What one claim carries from step to step (outbox_claim()) */
typedef struct ClaimState
{
	Provider   *p;
	Binding    *bs;
	int			nb;
	MemoryContext keep;			/* the caller's context: the intents live there */
	Claimed    *cs;				/* the intents locked, in keep */
	int			n;
	ArgArrays  *store;			/* the requests rendered, for claim_mark() */
	int			failing_binding;	/* being rendered, for the recovery */
} ClaimState;

/*
 * The columns of the requests one claim stores: mark_sql's $1..$6, $8, then
 * the kind ($10) and the content digest ($9)
 */
static const Oid claim_store_types[9] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
TEXTOID, BOOLOID, TEXTOID, INT8OID};

/* A batch of exception tickets to open, room for n */
ArgArrays *
outbox_tickets_create(int n)
{
	return args_create(6, ticket_types, n);
}

/*
 * One ticket of kind about intent id (0: about no intent, as a write-back
 * of tracking is), with detail; provider_id 0 names none
 */
void
outbox_ticket_row(ArgArrays *d, int64 id, int32 binding_id, const char *order_key,
				  int32 provider_id, const char *detail, const char *kind)
{
	int			k = args_row(d);

	if (id != 0)
		args_set(d, k, 0, Int64GetDatum(id));
	args_set(d, k, 1, Int32GetDatum(binding_id));
	args_set_text(d, k, 2, order_key);
	if (provider_id != 0)
		args_set(d, k, 3, Int32GetDatum(provider_id));
	args_set_text(d, k, 4, detail);
	args_set_text(d, k, 5, kind);
}

/*
 * Open the tickets of d, each announced on the channel shipsync (kinds and
 * ids only), in the current transaction.
 */
void
outbox_open_tickets(ArgArrays *d)
{
	int			rc;

	if (d->n == 0)
		return;
	prepare_claim_plans();
	if ((rc = args_execute(ticket_plan, d, false)) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "opening exception tickets failed: %s", SPI_result_code_string(rc));
}

/*
 * Run a lookup keyed by the intents of la (ids, bindings, order keys) and
 * provider_id, whose rows are (intent id, text); put each row's text, in
 * keep, at the position of its intent in out.
 */
static void
lookup_by_intent(SPIPlanPtr plan, const char *what, ArgArrays *la, int32 provider_id,
				 Claimed *cs, int *idx, int n, char **out, MemoryContext keep)
{
	Datum		params[4];
	SPITupleTable *tt;
	int			rc;

	params[0] = shipsync_make_array(la->values[0], la->nulls[0], la->n, INT8OID);
	params[1] = shipsync_make_array(la->values[1], la->nulls[1], la->n, INT4OID);
	params[2] = shipsync_make_array(la->values[2], la->nulls[2], la->n, TEXTOID);
	params[3] = Int32GetDatum(provider_id);
	rc = SPI_execute_plan(plan, params, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "%s lookup failed: %s", what, SPI_result_code_string(rc));
	MemoryContextSwitchTo(keep);
	tt = SPI_tuptable;
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tt->vals[r], tt->tupdesc, 1, &isnull));

		for (int i = 0; i < n; i++)
			if (cs[idx[i]].id == id)
				out[i] = get_text(tt->vals[r], tt->tupdesc, 2);
	}
}

/*
 * The columns of a binding's render statement (attach(), install/20_api.sql):
 * the intent, whether its order row exists, whether it matches cancel_when,
 * the row, and the write-back columns its digest leaves out
 */
enum
{
	RENDER_ID = 1, RENDER_FOUND, RENDER_CANCEL, RENDER_ROW, RENDER_SKIP,
	RENDER_NCOLS = RENDER_SKIP
};

/*
 * The digest of the order row of one row of a render statement
 * (_row_digest), computed here rather than by the statement: nothing of
 * ours runs as the owner.  False for an order that is gone.  *cache keeps
 * the prepared digest across rows.
 */
static bool
render_row_digest(HeapTuple tup, TupleDesc desc, MemoryContext keep,
				  DigestCache **cache, Datum *out)
{
	bool		rnull;
	bool		snull;
	Datum		row;
	Datum		skip;
	HeapTupleHeader rec;
	ArrayType  *sk;

	row = SPI_getbinval(tup, desc, RENDER_ROW, &rnull);
	skip = SPI_getbinval(tup, desc, RENDER_SKIP, &snull);
	if (rnull || snull)
		return false;
	rec = DatumGetHeapTupleHeader(row);
	sk = DatumGetArrayTypeP(skip);
	if (!shipsync_digest_fits(*cache, HeapTupleHeaderGetTypeId(rec),
							  HeapTupleHeaderGetTypMod(rec), sk))
		*cache = shipsync_digest_prepare(HeapTupleHeaderGetTypeId(rec),
										 HeapTupleHeaderGetTypMod(rec), sk, keep);
	*out = Int64GetDatum(shipsync_digest_row(*cache, rec));
	return true;
}

/*
 * The generic bodies of intents idx[0..n), from their rows rows[0..n) of
 * the render statement (NULL: the statement returned none), printed as the
 * table's owner, as the statement ran (body.c), into keep.  A body longer
 * than shipsync.max_request_bytes is left NULL, and oversize[i] set.
 */
static void
render_bodies(Oid owner, Claimed *cs, int *idx, int n, HeapTuple *rows, TupleDesc desc,
			  MemoryContext keep, char **body, bool *oversize)
{
	BodyFormat *format = NULL;
	ShipsyncUserSave save;
	int			nest = NewGUCNestLevel();

	/* the dispatcher's settings, in render_request() too: see security.c */
	shipsync_body_settings();
	shipsync_become_owner(owner, &save);
	PG_TRY();
	{
		for (int i = 0; i < n; i++)
		{
			bool		isnull;
			Datum		row;

			if (rows[i] == NULL)
				continue;
			row = SPI_getbinval(rows[i], desc, RENDER_ROW, &isnull);
			body[i] = shipsync_order_body(&format, cs[idx[i]].order_key, row, isnull, keep,
										  (size_t) shipsync_max_request_bytes);
			oversize[i] = (body[i] == NULL);
		}
	}
	PG_FINALLY();
	{
		shipsync_restore_user(&save);
		AtEOXact_GUC(false, nest);
	}
	PG_END_TRY();
}

/*
 * Run binding b's render statement (prepared here the first time) over ra
 * as the table's owner (*owner); returns SPI's code.  In the dispatcher, a lock
 * another session holds on the table (an ALTER TABLE, a VACUUM FULL, a
 * LOCK TABLE in an open transaction) is waited for at most
 * shipsync.order_lock_timeout: then lock_not_available, and the
 * binding's intents wait (outbox_fail_binding()).  Without the limit the
 * dispatcher waited for it, and sent nothing of any table meanwhile.
 */
static int
render_execute(Binding *b, ArgArrays *ra, Oid *owner)
{
	Oid			types[2] = {INT8ARRAYOID, TEXTARRAYOID};
	ShipsyncLockWait wait;
	volatile int rc = 0;

	shipsync_lock_wait_begin(&wait, IsBackgroundWorker ? shipsync_order_lock_timeout_ms : 0);
	PG_TRY();
	{
		/*
		 * Always the generic plan, made again when the table doubles
		 * (spi.c).  Left to the plan cache, the first five claims of each
		 * binding, and every claim of one order, got custom plans.  For a
		 * batch of 256 keys against an orders table of a few thousand to
		 * some 60,000 rows, the custom plan hash-joins the whole table,
		 * forming the whole row (t) of every order it holds: 13.7 ms a
		 * claim at 20,000 rows, against 1 ms through the key's index.  And
		 * a claim of one order planned the statement anew every time.  The
		 * generic plan is made by key (shipsync_execute_as_owner()):
		 * PostgreSQL's own, counting on ten keys, hash-joins a table of up
		 * to a couple of thousand rows.
		 */
		if (b->render_plan == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			b->render_plan = shipsync_prepare_saved_opt(b->render_sql, 2, types, true);
			MemoryContextSwitchTo(old);
		}

		/*
		 * read_only = false: a fresh snapshot, taken after the lock and the
		 * coalescing.  With the transaction's first snapshot, an order that
		 * committed just before the lock would be claimed but not seen
		 * here.
		 */
		*owner = shipsync_table_owner(b->relid);
		shipsync_check_owner_sees_all(b->relid, *owner);
		rc = shipsync_execute_as_owner(*owner, b->render_plan, ra, false);
	}
	PG_FINALLY();
	{
		shipsync_lock_wait_end(&wait);
	}
	PG_END_TRY();
	return rc;
}

/*
 * The current order rows of intents idx[0..n) of binding b, read as the
 * table's owner through the binding's render statement: whether each row
 * still exists, its generic body, whether it matches cancel_when, and its
 * content digest.  Allocated in keep.
 */
static void
render_read_rows(Binding *b, Claimed *cs, int *idx, int n, MemoryContext keep,
				 bool *found, char **body, bool *oversize, bool *is_cancel,
				 Datum *cdigest, bool *cdigest_null)
{
	DigestCache *digest = NULL;
	Oid			rtypes[2] = {INT8OID, TEXTOID};
	ArgArrays  *ra = args_create(2, rtypes, n);
	SPITupleTable *tt;
	HeapTuple  *rows;
	Oid			owner;
	int			rc;

	for (int i = 0; i < n; i++)
	{
		int			r = args_row(ra);

		args_set(ra, r, 0, Int64GetDatum(cs[idx[i]].id));
		args_set_text(ra, r, 1, cs[idx[i]].order_key);
	}
	rc = render_execute(b, ra, &owner);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "rendering orders failed: %s", SPI_result_code_string(rc));
	/* SPI calls return in SPI's procedure context: keep what we send */
	MemoryContextSwitchTo(keep);
	tt = SPI_tuptable;
	/* its row is the table's row: anything else must not be read as one */
	if (tt->tupdesc->natts != RENDER_NCOLS ||
		SPI_gettypeid(tt->tupdesc, RENDER_ROW) != get_rel_type_id(b->relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the render statement of binding %d does not read the rows of table %s",
						b->id, quote_qualified_identifier(get_namespace_name(get_rel_namespace(b->relid)),
														   get_rel_name(b->relid))),
				 errdetail("Its columns are not those attach() makes."),
				 errhint("Attach the table again: SELECT shipsync.attach(...).")));
	rows = palloc0(sizeof(HeapTuple) * Max(n, 1));
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tt->vals[r], tt->tupdesc, RENDER_ID, &isnull));

		for (int i = 0; i < n; i++)
			if (cs[idx[i]].id == id)
			{
				rows[i] = tt->vals[r];
				found[i] = DatumGetBool(SPI_getbinval(tt->vals[r], tt->tupdesc, RENDER_FOUND, &isnull));
				is_cancel[i] = DatumGetBool(SPI_getbinval(tt->vals[r], tt->tupdesc, RENDER_CANCEL, &isnull));
				cdigest_null[i] = !render_row_digest(tt->vals[r], tt->tupdesc, keep,
													 &digest, &cdigest[i]);
				break;
			}
	}
	render_bodies(owner, cs, idx, n, rows, tt->tupdesc, keep, body, oversize);
	pfree(rows);
}

/*
 * The row of store that marks c: its request with its kind (and the digest
 * of the row it was rendered from, but for a cancel), or why none.
 */
static void
render_store(ArgArrays *store, Claimed *c, Datum cdigest, bool cdigest_null)
{
	int			s = args_row(store);

	args_set(store, s, 0, Int64GetDatum(c->id));
	if (c->skip_reason)
	{
		args_set_text(store, s, 4, c->skip_reason);
		args_set(store, s, 6, BoolGetDatum(c->invalid));
		return;
	}
	args_set_text(store, s, 1, c->method);
	args_set_text(store, s, 2, c->url);
	args_set_text(store, s, 3, c->body);
	c->digest = sha256_hex(c->body);
	args_set_text(store, s, 5, c->digest);
	args_set_text(store, s, 7, intent_kind_names[c->kind]);
	c->has_content_digest = !cdigest_null && c->kind != INTENT_CANCEL;
	c->content_digest = c->has_content_digest ? DatumGetInt64(cdigest) : 0;
	if (c->has_content_digest)
		args_set(store, s, 8, cdigest);
}

/*
 * Carriers read UTF-8, and the body goes out in the database's encoding
 * (attach() takes UTF8 and SQL_ASCII): in an SQL_ASCII database (or one
 * restored into another encoding) an order row may hold bytes that are not
 * UTF-8, GBK written by an old CRM say.  Sent, a carrier answers 400 (not
 * JSON), a signed dialect a signature error that reads as bad credentials
 * (SF Express A1006), or takes an address in mojibake.  Such an order is
 * invalid instead, before anything is sent: c->skip_reason says so.
 * text is the generic body (before the dialect's render) or the request.
 */
static bool
render_not_utf8(Claimed *c, const char *text, const char *what)
{
	long		bad;

	if (text == NULL || GetDatabaseEncoding() == PG_UTF8)
		return false;
	bad = shipsync_utf8_invalid_at(text, strlen(text));
	if (bad < 0)
		return false;
	c->invalid = true;
	c->skip_reason = psprintf("the %s is not valid UTF-8 (byte %ld): database encoding %s;"
							  " carriers read UTF-8, store the order's text as UTF-8",
							  what, bad + 1, GetDatabaseEncodingName());
	c->method = c->url = c->body = NULL;
	return true;
}

/*
 * Render the intents of one binding that were never sent: the provider's
 * dialect decides the request of each (create, update or cancel) from the
 * current order row and the shipment known so far (dialect.c); a
 * registration is about the waybill the shipping provider gave.  Each
 * request, or why there is none, goes to store.
 */
static void
render_binding(Provider *p, Binding *b, Claimed *cs, int *idx, int n,
			   ArgArrays *store, MemoryContext keep)
{
	Oid			ltypes[4] = {INT8OID, INT4OID, TEXTOID, INT4OID};
	ArgArrays  *la = args_create(3, ltypes, n);
	char	  **shipid = palloc0(sizeof(char *) * n);
	char	  **body = palloc0(sizeof(char *) * n);
	bool	   *oversize = palloc0(sizeof(bool) * n);
	bool	   *found = palloc0(sizeof(bool) * n);
	bool	   *is_cancel = palloc0(sizeof(bool) * n);
	char	  **regtn = palloc0(sizeof(char *) * n);
	Datum	   *cdigest = palloc0(sizeof(Datum) * n);
	bool	   *cdigest_null = palloc(sizeof(bool) * n);
	bool		need_lookup = false;
	bool		need_reg = false;
	bool		need_rows = false;

	memset(cdigest_null, true, sizeof(bool) * n);
	for (int i = 0; i < n; i++)
	{
		Claimed    *c = &cs[idx[i]];
		int			l = args_row(la);

		args_set(la, l, 0, Int64GetDatum(c->id));
		args_set(la, l, 1, Int32GetDatum(c->binding_id));
		args_set_text(la, l, 2, c->order_key);
		if (strcmp(c->op, "register") == 0)
			need_reg = true;
		else if (strcmp(c->op, "create") != 0)
			need_lookup = true;
		if (strcmp(c->op, "create") == 0 || strcmp(c->op, "update") == 0)
			need_rows = true;
	}

	/*
	 * Only creates and updates read their order rows.  A cancel names the
	 * shipment and a registration the waybill: they are sent whatever
	 * became of the table (renamed, its key column renamed or retyped:
	 * its render statement fails until it is attached again; dropped: its
	 * creates and updates died with it, _on_drop(), and its rows are all
	 * gone).
	 */
	if (need_rows && OidIsValid(get_rel_type_id(b->relid)))
		render_read_rows(b, cs, idx, n, keep, found, body, oversize, is_cancel, cdigest,
						 cdigest_null);
	/* the shipments already created for these orders (not for creates) */
	if (need_lookup)
		lookup_by_intent(shiplookup_plan, "shipment", la, p->id, cs, idx, n, shipid, keep);
	/* the waybills registrations are about */
	if (need_reg)
		lookup_by_intent(reglookup_plan, "waybill", la, p->id, cs, idx, n, regtn, keep);

	for (int i = 0; i < n; i++)
	{
		Claimed    *c = &cs[idx[i]];
		bool		cancel = strcmp(c->op, "cancel") == 0 || (found[i] && is_cancel[i]);

		if (strcmp(c->op, "register") != 0 && p->dialect->tracking)
			c->skip_reason = "a tracking provider only registers waybills";
		else if (strcmp(c->op, "register") != 0 && oversize[i] && !cancel)
		{
			/* one order's size is that order's problem, not its table's */
			c->invalid = true;
			c->skip_reason = psprintf("the order row is larger than shipsync.max_request_bytes (%d bytes) as JSON;"
									  " no carrier takes such a request, shorten the row's largest values",
									  shipsync_max_request_bytes);
		}
		else if (strcmp(c->op, "register") != 0)
		{
			/* a cancel sends the order's key alone: checked below */
			if (cancel || !render_not_utf8(c, body[i], "order row"))
				p->dialect->render(p, c, found[i], body[i], shipid[i], cancel);
		}
		else if (regtn[i] == NULL)
			c->skip_reason = "no waybill to register";
		else if (p->dialect->render_register == NULL)
			c->skip_reason = "the provider is not a tracking provider";
		else
			p->dialect->render_register(p, c, regtn[i]);
		if (!c->skip_reason && !render_not_utf8(c, c->url, "request's URL"))
			(void) render_not_utf8(c, c->body, "request");
		render_store(store, c, cdigest[i], cdigest_null[i]);
	}
}

/* shipsync.outbox_id_seq, looked up in a transaction of ours */
static Oid	intent_seq = InvalidOid;

static void
find_intent_seq(void)
{
	Oid			nsp;

	if (OidIsValid(intent_seq))
		return;
	nsp = get_namespace_oid("shipsync", true);
	if (OidIsValid(nsp))
		intent_seq = get_relname_relid("outbox_id_seq", nsp);
}

/*
 * The next intent id to be handed out (shared memory), 0 when not known:
 * every intent in the inbox has a smaller one.  Outside a transaction.
 */
int64
outbox_intents_next(void)
{
	return OidIsValid(intent_seq) ? shipsync_peek_intent_id(intent_seq) : 0;
}

/* The parameter naming the nids providers ids: NULL (*null = 'n') for all, nids < 0 */
static Datum
providers_param(const int32 *ids, int nids, char *null)
{
	Datum	   *d;

	*null = ' ';
	if (nids < 0)
	{
		*null = 'n';
		return (Datum) 0;
	}
	d = palloc(sizeof(Datum) * Max(nids, 1));
	for (int i = 0; i < nids; i++)
		d[i] = Int32GetDatum(ids[i]);
	return PointerGetDatum(construct_array(d, nids, INT4OID, 4, true, TYPALIGN_INT));
}

/*
 * Move up to limit intents (0: all) of the nids providers ids (nids < 0:
 * all providers) from the inbox; returns how many.
 */
static uint64
drain_inbox(int64 limit, const int32 *ids, int nids)
{
	Datum		params[2];
	char		nulls[3] = "  ";
	int			rc;

	params[0] = Int64GetDatum(limit);
	if (limit <= 0)
		nulls[0] = 'n';
	params[1] = providers_param(ids, nids, &nulls[1]);
	rc = SPI_execute_plan(drain_plan, params, nulls, false, 0);

	if (rc != SPI_OK_INSERT)
		elog(ERROR, "taking intents from the inbox failed: %s",
			 SPI_result_code_string(rc));
	return SPI_processed;
}

/*
 * The dispatcher's drain, in a transaction of its own.  It need not be
 * durable: the intents are durable in the inbox, and a drain lost in a
 * crash moves them again.  Returns how many intents moved; *low is the
 * smallest id that may be left in the inbox, 0 if not known.
 */
uint64
outbox_drain_inbox(int64 limit, const int32 *ids, int nids, int64 *low)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	uint64		n;
	int64		next;

	outbox_inbox_forget();		/* what the take read is moved, or may be */
	shipsync_begin_tx("taking in captured intents", false);
	prepare_claim_plans();
	find_intent_seq();
	/*
	 * No id handed out since the server started: the ids of what is left
	 * are not known until one is, and the first burst is drained.  (Taking
	 * one here to know them reserved a block of the sequence at the
	 * dispatcher's start, before a restore's setval() moved it on: the
	 * captures after the restore then took ids the outbox had, TAP 005.)
	 */
	next = outbox_intents_next();
	n = drain_inbox(limit, ids, nids);
	*low = (limit > 0 && n >= (uint64) limit) ? 0 : next;
	shipsync_end_tx();
	MemoryContextSwitchTo(caller_cxt);
	return n;
}

/*
 * Render one intent as the dispatcher would, in the caller's transaction
 * and SPI connection, storing nothing: shipsync.render_request().  The
 * request (or skip_reason) is left in c, allocated in keep.
 */
void
outbox_render_one(Provider *p, Binding *b, Claimed *c, MemoryContext keep)
{
	ArgArrays  *store = args_create(9, claim_store_types, 1);
	int			idx[1] = {0};

	prepare_claim_plans();
	PG_TRY();
	{
		render_binding(p, b, c, idx, 1, store, keep);
	}
	PG_FINALLY();
	{
		if (b->render_plan)
		{
			SPI_freeplan(b->render_plan);
			b->render_plan = NULL;
		}
	}
	PG_END_TRY();
}

/* The row (method, url, body) of render_request(); NULLs where absent */
static Datum
render_result(TupleDesc desc, const char *method, const char *url, const char *body)
{
	const char *text[3] = {method, url, body};
	Datum		values[3];
	bool		nulls[3];

	for (int i = 0; i < 3; i++)
	{
		nulls[i] = text[i] == NULL;
		values[i] = nulls[i] ? (Datum) 0 : CStringGetTextDatum(text[i]);
	}
	return HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
}

PG_FUNCTION_INFO_V1(shipsync_claim);
PG_FUNCTION_INFO_V1(shipsync_render);

/*
 * shipsync.claim(provider_id, max_n, lease_ms) RETURNS SETOF shipsync.outbox:
 * the dispatcher's claim, callable from SQL (tests, manual draining).
 */
Datum
shipsync_claim(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		params[2];
	int			rc;

	InitMaterializedSRF(fcinfo, 0);
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	if (PG_GETARG_INT32(1) < 0 || PG_GETARG_INT32(2) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_n and lease_ms must not be negative"),
				 errhint("Pass how many intents to claim and for how many milliseconds.")));

	shipsync_require_extension_version("shipsync.claim()");
	if ((rc = SPI_connect()) != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed: %s", SPI_result_code_string(rc));
	prepare_claim_plans();
	drain_inbox(0, NULL, -1);
	params[0] = PG_GETARG_DATUM(0);
	params[1] = PG_GETARG_DATUM(1);
	rc = SPI_execute_plan(lock_plan, params, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "claim failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
	{
		Datum	   *ids = palloc(sizeof(Datum) * SPI_processed);
		bool	   *nulls = palloc0(sizeof(bool) * SPI_processed);
		int			n = (int) SPI_processed;
		Datum		mp[10];
		bool		isnull;

		for (int i = 0; i < n; i++)
			ids[i] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		mp[0] = shipsync_make_array(ids, nulls, n, INT8OID);
		for (int c = 1; c < 6; c++)
		{
			bool	   *allnull = palloc(sizeof(bool) * n);

			memset(allnull, true, sizeof(bool) * n);
			mp[c] = shipsync_make_array(ids, allnull, n, TEXTOID);
		}
		mp[6] = PG_GETARG_DATUM(2);
		{
			bool	   *allnull = palloc(sizeof(bool) * n);

			memset(allnull, true, sizeof(bool) * n);
			mp[7] = shipsync_make_array(ids, allnull, n, BOOLOID);
			mp[8] = shipsync_make_array(ids, allnull, n, INT8OID);
			mp[9] = shipsync_make_array(ids, allnull, n, TEXTOID);
		}
		/* whole rows: prepared here, never in the dispatcher */
		if (claim_mark_plan == NULL)
			claim_mark_plan = shipsync_prepare_saved_opt(claim_mark_sql, 10, mark_types, true);
		rc = SPI_execute_plan(claim_mark_plan, mp, NULL, false, 0);
		if (rc != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "claim failed: %s", SPI_result_code_string(rc));
		for (uint64 i = 0; i < SPI_processed; i++)
			tuplestore_puttuple(rsinfo->setResult, SPI_tuptable->vals[i]);
	}
	SPI_finish();
	return (Datum) 0;
}

/*
 * shipsync._render(outbox_id) -> (method, url, body): the stored request
 * of an intent, or the one it would send now, rendered from the current
 * order row without storing anything.  When there is nothing to send,
 * method is NULL and body says why.
 */
Datum
shipsync_render(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	MemoryContext keep = CurrentMemoryContext;
	TupleDesc	desc;
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(id)};
	int			rc;
	Claimed		c;
	Binding		b;
	Provider   *ps;
	int			np;
	bool		isnull;
	char	   *method = NULL;
	char	   *url = NULL;
	char	   *body = NULL;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	desc = BlessTupleDesc(desc);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute_with_args("SELECT o.binding_id, o.provider_id, o.order_key, o.op,"
							   " o.idempotency_key, o.request_method, o.request_url, o.request_body,"
							   " o.state, o.last_error, b.tbl::oid, b.render_sql"
							   " FROM (SELECT id, binding_id, provider_id, order_key, op,"
							   "   idempotency_key, request_method, request_url, request_body,"
							   "   state, last_error FROM shipsync.outbox"
							   "  UNION ALL"	/* captured, not yet moved to the outbox */
							   "  SELECT id, binding_id, provider_id, order_key, op,"
							   "   idempotency_key, NULL, NULL, NULL, 'pending', NULL"
							   "   FROM shipsync.inbox) o"
							   " JOIN shipsync.binding b USING (binding_id)"
							   " WHERE o.id = $1", 1, argtypes, args, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading the intent failed: %s", SPI_result_code_string(rc));
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("outbox intent %lld does not exist", (long long) id),
				 errhint("Find intents with shipsync.trace() or in shipsync.outbox.")));
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	td = SPI_tuptable->tupdesc;
		MemoryContext old = MemoryContextSwitchTo(keep);

		memset(&c, 0, sizeof(c));
		memset(&b, 0, sizeof(b));
		c.id = id;
		c.binding_id = DatumGetInt32(SPI_getbinval(tup, td, 1, &isnull));
		c.provider_id = DatumGetInt32(SPI_getbinval(tup, td, 2, &isnull));
		c.order_key = SPI_getvalue(tup, td, 3);
		c.op = SPI_getvalue(tup, td, 4);
		c.idempotency_key = SPI_getvalue(tup, td, 5);
		method = SPI_getvalue(tup, td, 6);
		url = SPI_getvalue(tup, td, 7);
		body = SPI_getvalue(tup, td, 8);
		b.id = c.binding_id;
		b.relid = DatumGetObjectId(SPI_getbinval(tup, td, 11, &isnull));
		b.render_sql = SPI_getvalue(tup, td, 12);
		MemoryContextSwitchTo(old);
	}
	if (method == NULL)
	{
		provider_load(keep, &ps, &np, c.provider_id, false);
		if (np != 1)
			elog(ERROR, "provider %d of intent %lld does not exist", c.provider_id, (long long) id);
		/* SF's digest needs the check word; a Kuaidi100 body, its salt */
		if (ps[0].dialect->render_secrets)
			provider_load(keep, &ps, &np, c.provider_id, true);
		outbox_render_one(&ps[0], &b, &c, keep);
		MemoryContextSwitchTo(keep);
		if (c.skip_reason)
			body = pstrdup(c.skip_reason);
		else
		{
			method = pstrdup(c.method);
			url = pstrdup(c.url);
			body = c.body ? pstrdup(c.body) : NULL;
		}
	}
	SPI_finish();
	MemoryContextSwitchTo(keep);
	PG_RETURN_DATUM(render_result(desc, method, url, body));
}

/* 1. lock up to max_n due intents of the provider, oldest first */
static void
claim_lock(ClaimState *s, int max_n)
{
	Datum		params[2] = {Int32GetDatum(s->p->id), Int32GetDatum(max_n)};
	SPITupleTable *tt;
	MemoryContext old;
	int			rc;

	rc = SPI_execute_plan(lock_plan, params, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "claim failed: %s", SPI_result_code_string(rc));
	s->n = (int) SPI_processed;
	tt = SPI_tuptable;
	s->cs = MemoryContextAllocZero(s->keep, sizeof(Claimed) * (s->n + 1));
	old = MemoryContextSwitchTo(s->keep);
	for (int i = 0; i < s->n; i++)
	{
		Claimed    *c = &s->cs[i];
		bool		isnull;

		c->id = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull));
		c->binding_id = DatumGetInt32(SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &isnull));
		c->order_key = get_text(tt->vals[i], tt->tupdesc, 3);
		c->op = get_text(tt->vals[i], tt->tupdesc, 4);
		c->rendered = DatumGetBool(SPI_getbinval(tt->vals[i], tt->tupdesc, 5, &isnull));
		c->idempotency_key = get_text(tt->vals[i], tt->tupdesc, 6);
		/* the attempt this claim makes: a render failure counts it too */
		c->attempt = DatumGetInt32(SPI_getbinval(tt->vals[i], tt->tupdesc, 7, &isnull)) + 1;
		c->later_update = DatumGetBool(SPI_getbinval(tt->vals[i], tt->tupdesc, 8, &isnull));
		c->provider_id = s->p->id;
		if (c->rendered && DatumGetBool(SPI_getbinval(tt->vals[i], tt->tupdesc, 9, &isnull)))
		{
			/* a stale create (lock_sql): an update of the shipment now */
			c->rendered = false;
			c->op = "update";
			ereport(LOG,
					(errmsg("pg_shipsync: intent %lld of order %s is a create stored before the order's shipment was made; it is sent as an update of that shipment",
							(long long) c->id, c->order_key)));
		}
	}
	MemoryContextSwitchTo(old);
	s->store = args_create(9, claim_store_types, s->n);
}

/*
 * 2. coalesce: the row rendered next then holds the updates' changes.  Not
 * into a registration: it is for the tracking provider and renders the
 * waybill, not the order row, so an update coalesced into it would never
 * reach the shipping carrier (TAP 047).  Only intents the lock saw a later
 * update of: an update committed since is sent after them, as one that
 * commits after this claim would be.
 */
static void
claim_coalesce(ClaimState *s)
{
	static const Oid types[3] = {INT8OID, INT4OID, TEXTOID};
	ArgArrays  *co = args_create(3, types, s->n);

	for (int i = 0; i < s->n; i++)
	{
		int			r;

		if (s->cs[i].rendered || !s->cs[i].later_update ||
			strcmp(s->cs[i].op, "cancel") == 0 || strcmp(s->cs[i].op, "register") == 0)
			continue;
		r = args_row(co);
		args_set(co, r, 0, Int64GetDatum(s->cs[i].id));
		args_set(co, r, 1, Int32GetDatum(s->cs[i].binding_id));
		args_set_text(co, r, 2, s->cs[i].order_key);
	}
	if (co->n > 0 && args_execute(coalesce_plan, co, false) != SPI_OK_UPDATE)
		elog(ERROR, "coalescing updates failed");
}

/*
 * 3. render the never-sent intents, one statement per binding; the
 * rendered ones keep their stored request.  s->failing_binding names the
 * binding being rendered, for outbox_claim()'s recovery.
 */
static void
claim_render(ClaimState *s)
{
	int		   *idx = palloc(sizeof(int) * (s->n + 1));
	bool	   *grouped = palloc0(sizeof(bool) * (s->n + 1));

	for (int i = 0; i < s->n; i++)
	{
		int			k = 0;
		Binding    *b;

		if (grouped[i] || s->cs[i].rendered)
			continue;
		for (int j = i; j < s->n; j++)
			if (!grouped[j] && !s->cs[j].rendered &&
				s->cs[j].binding_id == s->cs[i].binding_id)
			{
				idx[k++] = j;
				grouped[j] = true;
			}
		b = binding_find(s->bs, s->nb, s->cs[i].binding_id);
		if (b == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("binding %d of intent %lld does not exist",
							s->cs[i].binding_id, (long long) s->cs[i].id)));
		s->failing_binding = b->id;
		render_binding(s->p, b, s->cs, idx, k, s->store, s->keep);
		s->failing_binding = 0;
	}
	for (int i = 0; i < s->n; i++)
		if (s->cs[i].rendered)
			args_set(s->store, args_row(s->store), 0, Int64GetDatum(s->cs[i].id));
}

/*
 * An intent the mark statement returned: its content digest, and the
 * request stored by an earlier attempt, unless it was rendered now (its
 * key and attempt are the lock's)
 */
static void
claim_take_request(Claimed *c, HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	Datum		d;

	d = SPI_getbinval(tup, desc, MARK_CDIGEST, &isnull);
	c->has_content_digest = !isnull;
	c->content_digest = isnull ? 0 : DatumGetInt64(d);
	if (c->method != NULL)
		return;					/* rendered by this claim */
	c->method = get_text(tup, desc, MARK_METHOD);
	c->url = get_text(tup, desc, MARK_URL);
	c->body = get_text(tup, desc, MARK_BODY);
	c->digest = get_text(tup, desc, MARK_DIGEST);
	c->kind = intent_kind_of(get_text(tup, desc, MARK_KIND));
}

/*
 * 4. one statement marks the intents in flight (or done, with nothing to
 * send) and stores the requests rendered; each intent to send gets its
 * stored request back, rendered now or by an earlier attempt.
 */
static void
claim_mark(ClaimState *s, int lease_ms)
{
	ArgArrays  *st = s->store;
	Datum		mp[10];
	SPITupleTable *tt;
	MemoryContext old;
	int			rc;

	if (s->n == 0)
		return;
	for (int c = 0; c < 6; c++)
		mp[c] = shipsync_make_array(st->values[c], st->nulls[c], st->n, st->types[c]);
	mp[6] = Int32GetDatum(lease_ms);
	mp[7] = shipsync_make_array(st->values[6], st->nulls[6], st->n, BOOLOID);
	mp[8] = shipsync_make_array(st->values[8], st->nulls[8], st->n, INT8OID);
	mp[9] = shipsync_make_array(st->values[7], st->nulls[7], st->n, TEXTOID);
	rc = SPI_execute_plan(mark_plan, mp, NULL, false, 0);
	if (rc != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "marking claimed intents failed: %s", SPI_result_code_string(rc));
	tt = SPI_tuptable;
	old = MemoryContextSwitchTo(s->keep);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tt->vals[r], tt->tupdesc, MARK_ID, &isnull));

		for (int i = 0; i < s->n; i++)
			if (s->cs[i].id == id && !s->cs[i].skip_reason)
			{
				claim_take_request(&s->cs[i], tt->vals[r], tt->tupdesc);
				break;
			}
	}
	MemoryContextSwitchTo(old);
}

/* 5. invalid orders: one ticket each, in the same transaction */
static void
claim_tickets(ClaimState *s)
{
	ArgArrays  *d = outbox_tickets_create(s->n);

	for (int i = 0; i < s->n; i++)
		if (s->cs[i].invalid)
			outbox_ticket_row(d, s->cs[i].id, s->cs[i].binding_id, s->cs[i].order_key,
							  s->p->id, s->cs[i].skip_reason, "invalid_order");
	outbox_open_tickets(d);
}

/*
 * 0. Whether the provider is paused (or gone) as this claim's snapshot
 * sees it.  The dispatcher's copy of the configuration follows pause()
 * only at its next reload; reading it here means that an intent committed
 * after pause() returned is never claimed until resume(), even by a claim
 * that began before the reload.
 */
static bool
claim_paused(Provider *p)
{
	Datum		params[1] = {Int32GetDatum(p->id)};
	bool		isnull;

	if (SPI_execute_plan(paused_plan, params, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "provider lookup failed");
	if (SPI_processed == 0)
		return true;
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
									  &isnull));
}

/* 6. when the provider's next retry falls due; 0: none known */
static TimestampTz
claim_next_due(Provider *p)
{
	Datum		params[1] = {Int32GetDatum(p->id)};
	bool		isnull;
	Datum		d;

	if (SPI_execute_plan(nextdue_plan, params, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "next due lookup failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetTimestampTz(d);
}

/*
 * The intents to send, moved to the front of s->cs; *nskipped counts those
 * finished with nothing to send.
 */
static int
claim_sendable(ClaimState *s, int *nskipped)
{
	int			nsend = 0;

	for (int i = 0; i < s->n; i++)
	{
		if (s->cs[i].skip_reason || s->cs[i].method == NULL)
		{
			(*nskipped)++;
			continue;
		}
		s->cs[nsend++] = s->cs[i];
	}
	return nsend;
}

/* The end of the latest claim's commit record not yet known to be flushed */
static XLogRecPtr claims_unflushed = InvalidXLogRecPtr;

/*
 * Where the WAL must be flushed up to before the claims committed since the
 * last outbox_claims_durable() may be sent; invalid when there are none.
 */
XLogRecPtr
outbox_claims_unflushed(void)
{
	return claims_unflushed;
}

/*
 * Make every claim committed since the last call durable: one WAL flush up
 * to the latest (at once when another process has flushed that far).  The
 * dispatcher calls this before it sends anything that outbox_claim()
 * returned.
 */
void
outbox_claims_durable(void)
{
	if (XLogRecPtrIsInvalid(claims_unflushed))
		return;
	XLogFlush(claims_unflushed);
	claims_unflushed = InvalidXLogRecPtr;
}

/*
 * Claim up to max_n due intents of provider p, render those never sent, and
 * commit (to be flushed by outbox_claims_durable() before any is sent): a sequence of the named steps above, in one transaction.
 * Returns the intents to send; *nskipped counts those finished with nothing
 * to send (they may unblock the next intent of their order); *next_due is
 * when the next retry of p falls due (0 if unknown).
 *
 * When one binding's orders cannot be rendered (its table or its
 * cancel_when is broken), the claim is rolled back, those intents wait and
 * count an attempt (outbox_fail_binding(): dead after max_attempts; not
 * when another session held the table: they only wait), and
 * the others are left for the next claim, which the caller makes at once:
 * *nskipped then counts the intents rolled back.  Without that, the others
 * waited for the idle check, and were rolled back again with the broken
 * binding's intents whenever those were due with them (TAP 048).
 */
int
outbox_claim(Provider *p, Binding *bs, int nb, int max_n, int lease_ms,
			 Claimed **out, TimestampTz *next_due, int *nskipped)
{
	ClaimState *s = palloc0(sizeof(ClaimState));

	s->p = p;
	s->bs = bs;
	s->nb = nb;
	s->keep = CurrentMemoryContext;
	*out = NULL;
	*next_due = 0;
	*nskipped = 0;

	PG_TRY();
	{
		shipsync_begin_tx("claiming intents", false);
		prepare_claim_plans();
		if (!claim_paused(p))
		{
			claim_lock(s, max_n);
			claim_coalesce(s);
			claim_render(s);
			claim_mark(s, lease_ms);
			claim_tickets(s);
			if (s->n < max_n)
				*next_due = claim_next_due(p);
		}
		shipsync_end_tx();
		/* intents claimed: this transaction wrote, and its commit is the latest */
		if (s->n > 0)
			claims_unflushed = Max(claims_unflushed, XactLastCommitEnd);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		if (s->failing_binding == 0)
			PG_RE_THROW();
		MemoryContextSwitchTo(s->keep);
		edata = CopyErrorData();
		FlushErrorState();
		shipsync_abort_tx();
		outbox_fail_binding(p, s->cs, s->n, s->failing_binding, edata->message,
							edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE);
		FreeErrorData(edata);
		*nskipped = s->n;
		return 0;
	}
	PG_END_TRY();

	MemoryContextSwitchTo(s->keep);
	*out = s->cs;
	return claim_sendable(s, nskipped);
}

/* ---------- the take: from the inbox straight into flight ---------- */

/*
 * A create captured just now, the only intent of its order, need not wait
 * in the outbox to be claimed: the take renders it as it moves it, and
 * inserts it in flight with its request, in one transaction that the
 * dispatcher flushes before sending (outbox_claims_durable()).  The
 * outbox row then has one version rather than three (pending, in flight,
 * done), and the lock's two probes of the per-order index become one.
 *
 * The inbox has no index, so a read of it reads it whole.  The take reads
 * it once, in id order, and keeps what it read (the inbox as read, below):
 * the takes after it walk those rows and move them by their row ids, so
 * that a burst is read once however many takes send it.  Rows captured
 * after the read are read once the rows kept are all taken, or sooner
 * when a provider that captured since finds nothing in them (dispatcher.c
 * decides how often a large inbox may be read again).  Rows kept are only ever taken in id order, and an order's
 * intents are captured and committed in id order (the next one's statement
 * waits for the row lock of the one before), so that a row committed after
 * the read never comes before a kept row of its order.
 */
/* The inbox's first rows, oldest first: $1 of them */
static const char *const peek_sql =
"SELECT i.id, i.binding_id, i.provider_id, i.order_key, i.op, i.idempotency_key, i.ctid"
" FROM shipsync.inbox i ORDER BY i.id LIMIT $1";

/*
 * Which of these orders has an intent in the outbox that it must follow:
 * one probe of the per-order index an order, whatever the statistics say.
 * (OFFSET 0 keeps the EXISTS a subplan run per row.  As a semi-join, its
 * generic plan, made from statistics taken while nothing was open, hashed
 * every entry of that partial index for each take: after a drained backlog
 * the entries of versions no longer open, until a vacuum, and beside a
 * paused carrier's backlog every one of its intents; 4,500 buffers a take
 * beside 20,000, against 1 to 3.  TAP 051.)
 */
static const char *const blocked_sql =
"SELECT u.id FROM shipsync._rows($1, $2, $3) AS u(id int8, bid int4, k text)"
" WHERE EXISTS (SELECT 1 FROM shipsync.outbox e"
"   WHERE e.binding_id = u.bid AND e.order_key = u.k"
"   AND e.state IN ('pending', 'retrying', 'in_flight') AND e.op <> 'register'"
"   OFFSET 0)";

/*
 * Move the inbox's rows at row ids $1 that still have ids $2 into the
 * outbox: the rows $3.. rendered are in flight (or done, or invalid) with
 * their requests, the others pending as the drain leaves them.  Returns
 * every row it moved, and whether it was rendered: a row another
 * transaction took meanwhile is not sent, and a row id that now holds
 * another row (the inbox vacuumed, the row id used again) matches no id.
 * (Ids are unique: a row whose id is one of $2 is one of the rows meant,
 * wherever it is.)  The ids are a hashed set: "id = ANY ($2)" compared
 * every row with half the batch's ids (this statement 74.7 thousand
 * instructions an order against 71.9 now, in batches of 256).
 */
static const char *const move_sql =
"WITH d AS (DELETE FROM shipsync.inbox i"
"   WHERE i.ctid = ANY ($1) AND i.id IN (SELECT pg_catalog.unnest($2))"
"   RETURNING i.*),"
" m AS (INSERT INTO shipsync.outbox (id, binding_id, provider_id, order_key, op,"
"   idempotency_key, created_at, next_attempt_at, state, attempts, lease_until,"
"   updated_at, done_at, request_method, request_url, request_body, request_digest,"
"   request_kind, content_digest, last_error, error_class)"
"   SELECT d.id, d.binding_id, d.provider_id, d.order_key, d.op, d.idempotency_key,"
"   d.created_at, d.created_at,"
"   CASE WHEN u.id IS NULL THEN 'pending' WHEN u.skip IS NULL THEN 'in_flight'"
"     WHEN u.inv THEN 'invalid' ELSE 'done' END,"
"   CASE WHEN u.id IS NOT NULL AND u.skip IS NULL THEN 1 ELSE 0 END,"
"   CASE WHEN u.id IS NOT NULL AND u.skip IS NULL"
"     THEN pg_catalog.now() + pg_catalog.make_interval(secs => u.lease / 1000.0) END,"
"   CASE WHEN u.id IS NOT NULL THEN pg_catalog.now() END,"
"   CASE WHEN u.skip IS NOT NULL THEN pg_catalog.now() END,"
"   u.m, u.url, u.body, u.digest, u.kind, u.cdigest, u.skip,"
"   CASE WHEN u.skip IS NULL THEN NULL WHEN u.inv THEN 'invalid_order'"
"     ELSE 'nothing_to_send' END"
"   FROM d LEFT JOIN shipsync._rows($3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
"     AS u(id int8, m text, url text, body text, skip text, digest text, inv bool, kind text,"
"     cdigest int8, lease int4) ON u.id = d.id"
"   RETURNING id, state)"
" SELECT m.id, m.state <> 'pending' FROM m";

/* The columns of peek_sql */
enum
{
	PEEK_ID = 1, PEEK_BINDING, PEEK_PROVIDER, PEEK_KEY, PEEK_OP, PEEK_IDEMPOTENCY,
	PEEK_TID
};

/* A take's requests: the claim's (claim_store_types), then each one's lease */
static const Oid take_store_types[10] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
TEXTOID, BOOLOID, TEXTOID, INT8OID, INT4OID};
#define TAKE_STORE_LEASE 9

/*
 * Which of providers $1 may take: not paused (as their rows say), and no
 * intent of theirs due in the outbox (take_hold_back()).  One statement
 * for all of them, each looked up by index (OFFSET 0: never a join over
 * the due index as a whole).
 */
static const char *const holdback_sql =
"SELECT p.provider_id FROM shipsync.provider p"
" WHERE p.provider_id = ANY ($1) AND NOT p.paused"
" AND NOT EXISTS (SELECT 1 FROM shipsync.outbox o"
"   WHERE o.provider_id = p.provider_id AND o.state IN ('pending', 'retrying')"
"   AND o.next_attempt_at <= pg_catalog.now() OFFSET 0)";

static SPIPlanPtr peek_plan = NULL;
static SPIPlanPtr blocked_plan = NULL;
static SPIPlanPtr move_plan = NULL;
static SPIPlanPtr holdback_plan = NULL;

static void
prepare_take_plans(void)
{
	if (move_plan)
		return;
	{
		Oid			t[1] = {INT8OID};

		peek_plan = shipsync_prepare_saved_opt(peek_sql, 1, t, true);
	}
	{
		Oid			t[3] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID};

		blocked_plan = shipsync_prepare_saved_opt(blocked_sql, 3, t, true);
	}
	{
		Oid			t[1] = {INT4ARRAYOID};

		holdback_plan = shipsync_prepare_saved_opt(holdback_sql, 1, t, true);
	}
	{
		Oid			t[12] = {TIDARRAYOID, INT8ARRAYOID};

		for (int c = 0; c < 10; c++)
			t[2 + c] = get_array_type(take_store_types[c]);
		move_plan = shipsync_prepare_saved_opt(move_sql, 12, t, true);
	}
}

/*
 * The inbox as the take last read it: its rows in id order, each with its
 * row id, for the takes after the read to walk and move.  A row moved is
 * marked gone.  Everything is forgotten when a move finds fewer rows than
 * it was given (someone else moved or removed them: a drop of the order
 * table, a TRUNCATE, a VACUUM FULL that gave them other row ids), when a
 * take or drain fails or a drain moves rows, when every row is gone, and
 * when the dispatcher goes idle.
 */
typedef struct InboxRow
{
	int64		id;
	ItemPointerData tid;
	int32		binding_id;
	int32		provider_id;
	uint64		hash;			/* of the order: its binding and key */
	char	   *order_key;
	char	   *op;
	char	   *idempotency_key;
	bool		gone;			/* moved into the outbox since the read */
} InboxRow;

static struct
{
	MemoryContext cxt;			/* NULL: nothing kept */
	InboxRow   *rows;
	int			n;
	int			first;			/* rows before it are all gone */
	int			left;			/* rows not gone */
	uint64	   *sorted;			/* the rows' order hashes, sorted */
	bool		truncated;		/* the read stopped at INBOX_READ_MAX rows */
	int64		next;			/* outbox_intents_next() before the read */
}			inbox;

/* Whether the take keeps rows of the inbox it read */
bool
outbox_inbox_cached(void)
{
	return inbox.cxt != NULL;
}

/* Forget the rows the take read: the next take reads the inbox again */
void
outbox_inbox_forget(void)
{
	if (inbox.cxt)
		MemoryContextDelete(inbox.cxt);
	memset(&inbox, 0, sizeof(inbox));
}

static int
cmp_uint64(const void *a, const void *b)
{
	uint64		x = *(const uint64 *) a;
	uint64		y = *(const uint64 *) b;

	return x < y ? -1 : x > y;
}

/* Read the inbox, at most INBOX_READ_MAX of its first rows, and keep them */
static void
inbox_read(void)
{
	Datum		params[1];
	SPITupleTable *tt;
	uint64		n;
	MemoryContext old;

	outbox_inbox_forget();
	inbox.next = outbox_intents_next();
	params[0] = Int64GetDatum(INBOX_READ_MAX);
	if (SPI_execute_plan(peek_plan, params, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the inbox failed");
	tt = SPI_tuptable;
	n = SPI_processed;
	inbox.cxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync inbox",
									  ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(inbox.cxt);
	inbox.rows = palloc0(sizeof(InboxRow) * Max(n, 1));
	inbox.sorted = palloc(sizeof(uint64) * Max(n, 1));
	for (uint64 r = 0; r < n; r++)
	{
		InboxRow   *row = &inbox.rows[r];
		HeapTuple	tup = tt->vals[r];
		bool		isnull;

		row->id = DatumGetInt64(SPI_getbinval(tup, tt->tupdesc, PEEK_ID, &isnull));
		row->tid = *(ItemPointer) DatumGetPointer(SPI_getbinval(tup, tt->tupdesc, PEEK_TID, &isnull));
		row->binding_id = DatumGetInt32(SPI_getbinval(tup, tt->tupdesc, PEEK_BINDING, &isnull));
		row->provider_id = DatumGetInt32(SPI_getbinval(tup, tt->tupdesc, PEEK_PROVIDER, &isnull));
		row->order_key = get_text(tup, tt->tupdesc, PEEK_KEY);
		row->op = get_text(tup, tt->tupdesc, PEEK_OP);
		row->idempotency_key = get_text(tup, tt->tupdesc, PEEK_IDEMPOTENCY);
		row->hash = hash_bytes_extended((const unsigned char *) row->order_key,
										strlen(row->order_key), (uint64) (uint32) row->binding_id);
		inbox.sorted[r] = row->hash;
	}
	qsort(inbox.sorted, n, sizeof(uint64), cmp_uint64);
	MemoryContextSwitchTo(old);
	inbox.n = inbox.left = (int) n;
	inbox.truncated = n >= (uint64) INBOX_READ_MAX;
}

/* Whether provider pid is among ids (nids < 0: all) */
static bool
in_scope(int32 pid, const int32 *ids, int nids)
{
	if (nids < 0)
		return true;
	for (int i = 0; i < nids; i++)
		if (ids[i] == pid)
			return true;
	return false;
}

/* The take of provider provider_id, or NULL */
static InboxTake *
take_find(InboxTake *t, int nt, int32 provider_id)
{
	for (int i = 0; i < nt; i++)
		if (t[i].p->id == provider_id)
			return &t[i];
	return NULL;
}

static int
cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : x > y;
}

/* Whether h occurs more than once in sorted[0..n) */
static bool
hash_repeats(const uint64 *sorted, int n, uint64 h)
{
	int			lo = 0;
	int			hi = n;

	while (lo < hi)
	{
		int			mid = lo + (hi - lo) / 2;

		if (sorted[mid] < h)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo + 1 < n && sorted[lo + 1] == h;
}

/* What one take carries from step to step */
typedef struct TakeState
{
	InboxTake  *t;
	int			nt;
	Binding    *bs;
	int			nb;
	MemoryContext keep;
	int			ncand;			/* candidates, by take: t[k].cs[0..n) */
	int		   *move;			/* the rows it moves (inbox.rows[]), candidates too */
	int			nmove;
	bool		stale;			/* its move found fewer rows than it was given */
	int64		maxid;			/* the last row walked */
	bool		rendering;		/* in render_binding(): a failure there is
								 * the binding's, not the take's */
} TakeState;

/*
 * 1. walk up to limit of the inbox's first rows kept (providers ids) and
 * choose the intents that go straight into flight: a create, the only
 * intent of its order among the rows read, while its provider has room.
 * Once a provider's room is used up, its later rows wait in the inbox for
 * the next take with room.  Returns how many rows were walked; *full if
 * there may be more.
 */
static uint64
take_choose(TakeState *ts, int64 limit, const int32 *ids, int nids, bool *full)
{
	int		   *left = palloc(sizeof(int) * Max(ts->nt, 1));
	uint64		nwalked = 0;
	int			r;
	MemoryContext old;

	for (int k = 0; k < ts->nt; k++)
	{
		ts->t[k].n = ts->t[k].nskipped = 0;
		ts->t[k].moved = false;
		ts->t[k].wait_from = 0;
		left[k] = ts->t[k].room;
		ts->t[k].cs = MemoryContextAllocZero(ts->keep, sizeof(Claimed) * (Max(ts->t[k].room, 0) + 1));
	}
	ts->ncand = ts->nmove = 0;
	ts->maxid = 0;
	ts->move = MemoryContextAlloc(ts->keep, sizeof(int) * Max(inbox.n - inbox.first, 1));
	while (inbox.first < inbox.n && inbox.rows[inbox.first].gone)
		inbox.first++;
	old = MemoryContextSwitchTo(ts->keep);
	for (r = inbox.first; r < inbox.n && nwalked < (uint64) limit; r++)
	{
		InboxRow   *row = &inbox.rows[r];
		InboxTake  *t;
		int			k;
		Claimed    *c;

		if (row->gone || !in_scope(row->provider_id, ids, nids))
			continue;
		nwalked++;
		ts->maxid = row->id;
		t = take_find(ts->t, ts->nt, row->provider_id);
		k = t ? (int) (t - ts->t) : -1;
		if (t == NULL || !t->sends)
		{
			if (t)
				t->moved = true;
			ts->move[ts->nmove++] = r;
			continue;
		}
		if (t->wait_from > 0)
			continue;			/* cut: it waits, with all after it */
		if (left[k] <= 0)
		{
			t->wait_from = row->id;
			continue;
		}
		ts->move[ts->nmove++] = r;
		if (strcmp(row->op, "create") != 0 ||
			hash_repeats(inbox.sorted, inbox.n, row->hash) ||
			binding_find(ts->bs, ts->nb, row->binding_id) == NULL)
		{
			t->moved = true;	/* the claim takes it, after what it follows */
			continue;
		}
		left[k]--;
		c = &t->cs[t->n++];
		c->id = row->id;
		c->binding_id = row->binding_id;
		c->provider_id = row->provider_id;
		c->order_key = pstrdup(row->order_key);
		c->op = pstrdup(row->op);
		c->idempotency_key = pstrdup(row->idempotency_key);
		c->attempt = 1;
		ts->ncand++;
	}
	MemoryContextSwitchTo(old);
	*full = false;
	if (nwalked >= (uint64) limit)
	{
		for (; r < inbox.n && !*full; r++)
			*full = !inbox.rows[r].gone && in_scope(inbox.rows[r].provider_id, ids, nids);
	}
	else
		*full = inbox.truncated;
	return nwalked;
}

/*
 * Whether t's provider, with room and having captured since the read,
 * found nothing to send, move or wait for
 */
bool
outbox_take_found_nothing(const InboxTake *t)
{
	return t->sends && t->room > 0 && t->p->inbox_new && t->n == 0 &&
		t->nskipped == 0 && !t->moved && t->wait_from == 0;
}

/* Whether one found nothing among the rows kept, walked to their end */
static bool
take_starved(TakeState *ts, bool full)
{
	if (full)
		return false;
	for (int k = 0; k < ts->nt; k++)
		if (outbox_take_found_nothing(&ts->t[k]))
			return true;
	return false;
}

/*
 * 2. a candidate whose order has an intent in the outbox (an earlier one
 * still open, however old) follows it: it moves as pending.
 */
static void
take_unblock(TakeState *ts)
{
	static const Oid types[3] = {INT8OID, INT4OID, TEXTOID};
	ArgArrays  *a = args_create(3, types, ts->ncand);
	SPITupleTable *tt;

	for (int k = 0; k < ts->nt; k++)
		for (int i = 0; i < ts->t[k].n; i++)
		{
			int			r = args_row(a);

			args_set(a, r, 0, Int64GetDatum(ts->t[k].cs[i].id));
			args_set(a, r, 1, Int32GetDatum(ts->t[k].cs[i].binding_id));
			args_set_text(a, r, 2, ts->t[k].cs[i].order_key);
		}
	if (args_execute(blocked_plan, a, true) != SPI_OK_SELECT)
		elog(ERROR, "looking for earlier intents failed");
	tt = SPI_tuptable;
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tt->vals[r], tt->tupdesc, 1, &isnull));

		for (int k = 0; k < ts->nt; k++)
		{
			InboxTake  *t = &ts->t[k];

			for (int i = 0; i < t->n; i++)
				if (t->cs[i].id == id)
				{
					t->cs[i] = t->cs[--t->n];
					t->moved = true;
					ts->ncand--;
					break;
				}
		}
	}
}

/* 3. render the candidates, one statement per provider and binding */
static void
take_render(TakeState *ts, ArgArrays *store)
{
	for (int k = 0; k < ts->nt; k++)
	{
		InboxTake  *t = &ts->t[k];
		int		   *idx = palloc(sizeof(int) * (t->n + 1));
		bool	   *grouped = palloc0(sizeof(bool) * (t->n + 1));
		int			lease_ms = t->p->timeout_ms + 60000;

		for (int i = 0; i < t->n; i++)
		{
			int			n = 0;
			int			first = store->n;

			if (grouped[i])
				continue;
			for (int j = i; j < t->n; j++)
				if (!grouped[j] && t->cs[j].binding_id == t->cs[i].binding_id)
				{
					idx[n++] = j;
					grouped[j] = true;
				}
			ts->rendering = true;
			render_binding(t->p, binding_find(ts->bs, ts->nb, t->cs[i].binding_id),
						   t->cs, idx, n, store, ts->keep);
			ts->rendering = false;
			for (int r = first; r < store->n; r++)
				args_set(store, r, TAKE_STORE_LEASE, Int32GetDatum(lease_ms));
		}
	}
}

/*
 * 4. move the rows chosen (all walked but those that wait); keep the
 * candidates moved, in order, and open a ticket for each invalid one
 */
static void
take_move(TakeState *ts, ArgArrays *store)
{
	Datum		params[12];
	char		nulls[12];
	SPITupleTable *tt;
	int64	   *moved;
	uint64		nmoved = 0;
	ArgArrays  *tickets = outbox_tickets_create(ts->ncand);
	Datum	   *tids = palloc(sizeof(Datum) * Max(ts->nmove, 1));
	Datum	   *rids = palloc(sizeof(Datum) * Max(ts->nmove, 1));

	memset(nulls, ' ', sizeof(nulls));
	for (int i = 0; i < ts->nmove; i++)
	{
		tids[i] = PointerGetDatum(&inbox.rows[ts->move[i]].tid);
		rids[i] = Int64GetDatum(inbox.rows[ts->move[i]].id);
	}
	params[0] = shipsync_make_array(tids, NULL, ts->nmove, TIDOID);
	params[1] = shipsync_make_array(rids, NULL, ts->nmove, INT8OID);
	for (int c = 0; c < 10; c++)
		params[2 + c] = shipsync_make_array(store->values[c], store->nulls[c], store->n,
											store->types[c]);
	if (SPI_execute_plan(move_plan, params, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "taking intents from the inbox failed");
	tt = SPI_tuptable;
	ts->stale = SPI_processed != (uint64) ts->nmove;
	moved = palloc(sizeof(int64) * Max(SPI_processed, 1));
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;

		if (DatumGetBool(SPI_getbinval(tt->vals[r], tt->tupdesc, 2, &isnull)))
			moved[nmoved++] = DatumGetInt64(SPI_getbinval(tt->vals[r], tt->tupdesc, 1, &isnull));
	}
	qsort(moved, nmoved, sizeof(int64), cmp_int64);

	for (int k = 0; k < ts->nt; k++)
	{
		InboxTake  *t = &ts->t[k];
		int			nsend = 0;

		for (int i = 0; i < t->n; i++)
		{
			Claimed    *c = &t->cs[i];

			if (nmoved == 0 ||
				bsearch(&c->id, moved, nmoved, sizeof(int64), cmp_int64) == NULL)
				continue;		/* taken by another transaction: not ours */
			if (c->skip_reason)
			{
				t->nskipped++;
				if (c->invalid)
					outbox_ticket_row(tickets, c->id, c->binding_id, c->order_key,
									  t->p->id, c->skip_reason, "invalid_order");
				continue;
			}
			t->cs[nsend++] = *c;
		}
		t->n = nsend;
	}
	outbox_open_tickets(tickets);
}

/*
 * After the take's commit: its rows are gone from the inbox.  Returns
 * whether what was kept is stale (a move found fewer rows than it was
 * given): what the inbox holds is then not known.
 */
static bool
take_done(TakeState *ts)
{
	for (int i = 0; i < ts->nmove; i++)
		inbox.rows[ts->move[i]].gone = true;
	inbox.left -= ts->nmove;
	if (ts->stale || inbox.left <= 0)
		outbox_inbox_forget();
	return ts->stale;
}

/*
 * As the claim: pause() holds back what commits after it.  And intents due
 * in the outbox go first (TAP 048): their provider takes nothing, what it
 * captured moves in behind them.  One statement for every provider that
 * would send: a lookup of its row and of its next retry for each, as the
 * claim makes them, cost two statements a provider at every take, 110 an
 * order at a trickle with 50 providers (TAP 051).
 */
static void
take_hold_back(InboxTake *t, int nt)
{
	Datum	   *ids = palloc(sizeof(Datum) * Max(nt, 1));
	int			n = 0;
	Datum		params[1];

	for (int k = 0; k < nt; k++)
		if (t[k].sends)
			ids[n++] = Int32GetDatum(t[k].p->id);
	if (n == 0)
		return;
	params[0] = shipsync_make_array(ids, NULL, n, INT4OID);
	if (SPI_execute_plan(holdback_plan, params, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "provider lookup failed");
	for (int k = 0; k < nt; k++)
	{
		bool		may = false;

		if (!t[k].sends)
			continue;
		for (uint64 r = 0; r < SPI_processed && !may; r++)
		{
			bool		isnull;

			may = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[r],
											  SPI_tuptable->tupdesc, 1,
											  &isnull)) == t[k].p->id;
		}
		if (!may)
		{
			t[k].sends = false;
			t[k].room = 0;
		}
	}
}

/*
 * The dispatcher's take, in a transaction of its own: walk up to limit of
 * the inbox's first rows (providers ids, nids < 0: all), reading the inbox
 * first when nothing of it is kept, or when reread and a provider with
 * room that captured since finds nothing in what is kept (*fresh: it was
 * read).  Send the
 * creates that can go at once within each take's room (t[k].cs, to be sent
 * once outbox_claims_durable() has flushed), leave the rows of a provider
 * out of room in the inbox from its first such row on (t[k].wait_from),
 * and move the others into the outbox as pending.  A provider not in t
 * moves all its rows, as the drain would.  Returns how many rows were
 * walked; *full if there may be more; *low is the smallest id that may be
 * left in the inbox but the waiting rows, 0 if not known.
 *
 * When a binding's orders cannot be rendered, nothing is taken: the rows
 * read are drained instead, and the claim meets the failure and records
 * it (outbox_claim()).
 */
uint64
outbox_take_inbox(int64 limit, const int32 *ids, int nids, Binding *bs, int nb,
				  InboxTake *t, int nt, bool reread, bool *full, int64 *low,
				  bool *fresh)
{
	TakeState  *ts = palloc0(sizeof(TakeState));
	MemoryContext keep = CurrentMemoryContext;
	uint64		nread = 0;

	ts->t = t;
	ts->nt = nt;
	ts->bs = bs;
	ts->nb = nb;
	ts->keep = keep;
	*full = false;
	*low = 0;
	*fresh = false;

	PG_TRY();
	{
		shipsync_begin_tx("taking in captured intents", false);
		prepare_claim_plans();
		prepare_take_plans();
		find_intent_seq();
		take_hold_back(t, nt);
		if (!outbox_inbox_cached())
		{
			inbox_read();
			*fresh = true;
		}
		nread = take_choose(ts, limit, ids, nids, full);
		if (reread && !*fresh && take_starved(ts, *full))
		{
			inbox_read();
			*fresh = true;
			nread = take_choose(ts, limit, ids, nids, full);
		}
		if (ts->nmove > 0)
		{
			ArgArrays  *store = args_create(10, take_store_types, ts->ncand);

			if (ts->ncand > 0)
				take_unblock(ts);
			take_render(ts, store);
			take_move(ts, store);
		}
		*low = *full ? ts->maxid + 1 : inbox.next;
		shipsync_end_tx();
		if (take_done(ts))
		{
			*full = true;		/* rows may be left that nothing kept knows of */
			*low = 0;
		}
		for (int k = 0; k < nt; k++)
			if (t[k].n > 0)
			{
				claims_unflushed = Max(claims_unflushed, XactLastCommitEnd);
				break;
			}
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		outbox_inbox_forget();
		if (!ts->rendering)
			PG_RE_THROW();
		MemoryContextSwitchTo(keep);
		edata = CopyErrorData();
		FlushErrorState();
		shipsync_abort_tx();
		ereport(LOG,
				(errmsg("pg_shipsync: intents are drained rather than taken: %s",
						edata->message)));
		FreeErrorData(edata);
		for (int k = 0; k < nt; k++)
		{
			t[k].n = t[k].nskipped = 0;
			t[k].wait_from = 0;
			t[k].moved = true;
		}
		nread = outbox_drain_inbox(limit, ids, nids, low);
		*full = nread >= (uint64) limit;
		return nread;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(keep);
	return nread;
}

/* How long intents wait when their table was locked (outbox_wait_binding()) */
#define TABLE_LOCKED_WAIT_MS 5000

/*
 * The intents of binding fb in claimed[] could not be rendered because
 * another session held their table: not their failure.  They keep their
 * state and their attempts, and are due again in TABLE_LOCKED_WAIT_MS,
 * so that the dispatcher goes on with the other tables meanwhile, and
 * waits for the lock at most once in that time.
 */
static void
outbox_wait_binding(Claimed *cl, int ncl, int fb, const char *msg)
{
	Oid			types[5] = {INT8OID, TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID};
	ArgArrays  *a = args_create(5, types, ncl);
	TimestampTz due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), TABLE_LOCKED_WAIT_MS);
	char	   *err = psprintf("the order table is locked by another transaction, tried again in %d s: %s",
							   TABLE_LOCKED_WAIT_MS / 1000, msg);

	ereport(LOG,
			(errmsg("pg_shipsync: orders of binding %d wait for their table: %s", fb, msg)));
	shipsync_begin_tx("recording a locked table", false);
	prepare_claim_plans();
	for (int i = 0; i < ncl; i++)
	{
		int			r;

		if (cl[i].binding_id != fb)
			continue;
		r = args_row(a);
		args_set(a, r, 0, Int64GetDatum(cl[i].id));
		args_set(a, r, 2, TimestampTzGetDatum(due));
		args_set_text(a, r, 3, "table_locked");
		args_set_text(a, r, 4, err);
	}
	if (a->n > 0 && args_execute(fail_plan, a, false) != SPI_OK_UPDATE)
		elog(ERROR, "recording a locked table failed");
	shipsync_end_tx();
}

/*
 * Record a render failure for the intents of binding fb in claimed[]: they
 * become retrying (or dead once out of attempts) with the error.  locked:
 * the failure was a lock another session held on the table longer than
 * shipsync.order_lock_timeout (render_execute()); then they keep their
 * state and attempts, and wait TABLE_LOCKED_WAIT_MS (table_locked).
 */
void
outbox_fail_binding(Provider *p, Claimed *cl, int ncl, int fb, const char *msg,
					bool locked)
{
	Oid			types[5] = {INT8OID, TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID};
	ArgArrays  *a;
	ArgArrays  *d;

	if (locked)
	{
		outbox_wait_binding(cl, ncl, fb, msg);
		return;
	}
	ereport(WARNING,
			(errcode(ERRCODE_DATA_EXCEPTION),
			 errmsg("pg_shipsync: orders of binding %d cannot be rendered: %s", fb, msg)));
	shipsync_begin_tx("recording a render failure", false);
	prepare_claim_plans();
	a = args_create(5, types, ncl);
	d = outbox_tickets_create(ncl);
	for (int i = 0; i < ncl; i++)
	{
		int			r;
		bool		dead;

		if (cl[i].binding_id != fb)
			continue;
		/*
		 * cl[i].attempt is the attempt this claim was making (claim_lock());
		 * the rollback undid its mark, so fail_plan counts it here
		 */
		dead = cl[i].attempt >= p->max_attempts;
		r = args_row(a);
		args_set(a, r, 0, Int64GetDatum(cl[i].id));
		args_set_text(a, r, 1, dead ? "dead" : "retrying");
		args_set(a, r, 2, TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													  shipsync_backoff_ms(cl[i].attempt,
																		  p->backoff_base_ms, p->backoff_max_ms,
																		  pg_prng_double(&pg_global_prng_state))));
		args_set_text(a, r, 3, "render_failed");
		args_set_text(a, r, 4, msg);
		if (dead)
			outbox_ticket_row(d, cl[i].id, cl[i].binding_id, cl[i].order_key, p->id,
							  msg, "render_failed");
	}
	if (a->n > 0 && args_execute(fail_plan, a, false) != SPI_OK_UPDATE)
		elog(ERROR, "recording a render failure failed");
	outbox_open_tickets(d);
	shipsync_end_tx();
}
