/*-------------------------------------------------------------------------
 *
 * outbox.c
 *		The dispatcher's transactions: recover, load, claim + render, apply.
 *
 * Every statement here is set-based: one statement per batch, its values
 * passed as arrays through saved SPI plans (UPDATE ... FROM unnest($1, ...)),
 * never one statement per order.
 *
 * Claim + render (one transaction, committed with synchronous_commit = on
 * before anything is sent): shipsync.claim() takes due intents of one
 * provider with FOR UPDATE SKIP LOCKED; unsent updates of the same orders
 * that are already committed coalesce into the claimed intent; intents
 * never sent are rendered from the CURRENT order row (as the table's owner)
 * and the request is stored.  Retries re-send the stored bytes unchanged.
 * Coalescing runs before rendering, so the rendered row always carries the
 * changes of the updates it absorbed.
 *
 * Apply (one transaction per batch of completions, synchronous_commit =
 * off: a lost apply is re-sent under the same key and the carrier replays
 * its first answer): outbox states, delivery_log, shipments, write-back
 * onto the order rows (as the table's owner, with capture suppressed: no
 * echo), tickets and NOTIFY for dead intents.  If the batch fails, it is
 * applied again one completion at a time, each in its own subtransaction
 * (one open at a time), so that only the failing order fails; its shipment
 * is still recorded, its intent ends dead with the error, and a ticket
 * says why.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "common/base64.h"
#include "common/cryptohash.h"
#include "common/pg_prng.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "funcapi.h"
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

#include "pg_shipsync.h"
#include "dispatcher.h"

/* The hex SHA-256 of a request body: what delivery_log records of it. */
static char *
sha256_hex(const char *s)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	char	   *hex = palloc(PG_SHA256_DIGEST_STRING_LENGTH);

	if (ctx == NULL || pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) s, strlen(s)) < 0 ||
		pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
		elog(ERROR, "could not compute a SHA-256 digest: %s",
			 pg_cryptohash_error(ctx));
	pg_cryptohash_free(ctx);
	for (int i = 0; i < PG_SHA256_DIGEST_LENGTH; i++)
		sprintf(hex + 2 * i, "%02x", digest[i]);
	return hex;
}

static char *
get_text(HeapTuple tup, TupleDesc desc, int col)
{
	return SPI_getvalue(tup, desc, col);
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
 */
static const char *const requeue_sql =
"WITH r AS (UPDATE shipsync.outbox o SET"
"   state = CASE WHEN x.at_limit THEN 'dead' ELSE 'retrying' END,"
"   next_attempt_at = pg_catalog.now(), lease_until = NULL, updated_at = pg_catalog.now(),"
"   error_class = CASE WHEN $1 THEN 'lease_expired'"
"     WHEN x.at_limit THEN 'interrupted' ELSE o.error_class END,"
"   last_error = CASE WHEN NOT x.at_limit THEN o.last_error"
"     ELSE pg_catalog.format('gave up after %s attempts: %s', o.attempts, CASE WHEN $1"
"       THEN 'the lease of the last attempt expired; its answer is unknown'"
"       ELSE 'the dispatcher stopped while the last attempt was in flight; its answer is unknown' END) END,"
"   done_at = CASE WHEN x.at_limit THEN pg_catalog.now() END"
" FROM (SELECT i.id, i.attempts >= COALESCE((SELECT p.max_attempts FROM shipsync.provider p"
"         WHERE p.provider_id = i.provider_id), 2147483647) AS at_limit"
"       FROM shipsync.outbox i WHERE i.state = 'in_flight'"
"       AND (NOT $1 OR i.lease_until < pg_catalog.now())) x"
" WHERE o.id = x.id AND o.state = 'in_flight'"
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
 * never takes back its own.  outbox_lease_idx holds only the intents in
 * flight, so the sweep reads neither the history nor a paused provider's
 * backlog.
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

static void prepare_apply_plans(void);
static SPIPlanPtr apply_dead_plan;

/*
 * The claim: due intents of one provider, oldest first, skipping rows
 * another claimer holds, and never an intent while an earlier intent of the
 * same order is undelivered (update and cancel never overtake the create).
 * The per-order check is a correlated min() over the order index, so it
 * costs one index probe per candidate, whatever the size of the backlog.
 * shipsync.claim() runs this same saved plan, so tests race the real thing.
 */
static const char *const lock_sql =
"SELECT o.id, o.binding_id, o.order_key, o.op, o.request_method IS NOT NULL,"
" o.idempotency_key"
" FROM shipsync.outbox o"
" WHERE o.provider_id = $1 AND o.state IN ('pending', 'retrying')"
" AND o.next_attempt_at <= pg_catalog.now()"
" AND o.id = (SELECT pg_catalog.min(e.id) FROM shipsync.outbox e"
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
 */
static const char *const mark_sql =
"UPDATE shipsync.outbox o SET"
" state = CASE WHEN u.skip IS NULL THEN 'in_flight' WHEN u.inv THEN 'invalid' ELSE 'done' END,"
" attempts = o.attempts + CASE WHEN u.skip IS NULL THEN 1 ELSE 0 END,"
" lease_until = CASE WHEN u.skip IS NULL"
"   THEN pg_catalog.now() + pg_catalog.make_interval(secs => $7 / 1000.0) END,"
" updated_at = pg_catalog.now(),"
" request_method = COALESCE(u.m, o.request_method),"
" request_url = COALESCE(u.url, o.request_url),"
" request_body = COALESCE(u.body, o.request_body),"
" request_digest = COALESCE(u.digest, o.request_digest),"
" last_error = COALESCE(u.skip, o.last_error),"
" error_class = CASE WHEN u.skip IS NULL THEN o.error_class WHEN u.inv THEN 'invalid_order'"
"   ELSE 'nothing_to_send' END,"
" done_at = CASE WHEN u.skip IS NULL THEN NULL ELSE pg_catalog.now() END,"
" content_digest = COALESCE(u.cdigest, o.content_digest)"
" FROM unnest($1, $2, $3, $4, $5, $6, $8, $9) AS u(id, m, url, body, skip, digest, inv, cdigest)"
" WHERE o.id = u.id"
" RETURNING o.*";

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
static SPIPlanPtr coalesce_plan = NULL;
static int	col_id,
			col_idem,
			col_attempts,
			col_method,
			col_url,
			col_body,
			col_digest;
static SPIPlanPtr shiplookup_plan = NULL;
static SPIPlanPtr reglookup_plan = NULL;
static SPIPlanPtr nextdue_plan = NULL;
static SPIPlanPtr fail_plan = NULL;

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
	{
		Oid			t[9] = {INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, INT4OID, BOOLARRAYOID, INT8ARRAYOID};

		mark_plan = shipsync_prepare_saved(mark_sql, 9, t);
	}
	{
		Oid			t[3] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID};

		coalesce_plan = shipsync_prepare_saved(
			"UPDATE shipsync.outbox e SET state = 'coalesced', coalesced_into = v.into,"
			" done_at = pg_catalog.now(), updated_at = pg_catalog.now()"
			" FROM (SELECT u.id AS into, x.id"
			"   FROM unnest($1, $2, $3) AS u(id, bid, k),"
			"   LATERAL (SELECT e.id FROM shipsync.outbox e"
			"     WHERE e.binding_id = u.bid AND e.order_key = u.k AND e.id > u.id"
			"     AND e.state IN ('pending', 'retrying', 'in_flight')"
			"     OFFSET 0) AS x) AS v"
			" WHERE e.id = v.id AND e.op = 'update' AND e.state = (SELECT 'pending')"
			" AND e.request_body IS NULL AND e.attempts = 0", 3, t);
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

		/* the waybill a registration is about: the shipping provider's */
		reglookup_plan = shipsync_prepare_saved(
			"SELECT u.id, s.tracking_number"
			" FROM unnest($1, $2, $3) AS u(id, bid, k),"
			" LATERAL (SELECT x.tracking_number FROM shipsync.shipment x"
			"   WHERE x.binding_id = u.bid AND x.order_key = u.k AND x.provider_id <> $4"
			"   AND x.tracking_number IS NOT NULL ORDER BY x.updated_at DESC LIMIT 1) AS s", 4, t);
	}
	{
		Oid			t[1] = {INT4OID};

		nextdue_plan = shipsync_prepare_saved(
			"SELECT pg_catalog.min(next_attempt_at) FROM shipsync.outbox"
			" WHERE provider_id = $1 AND state IN ('pending', 'retrying')", 1, t);
	}
	{
		Oid			t[5] = {INT8ARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID};

		fail_plan = shipsync_prepare_saved(
			"UPDATE shipsync.outbox o SET attempts = o.attempts + 1, state = u.state,"
			" next_attempt_at = COALESCE(u.next_at, o.next_attempt_at),"
			" error_class = u.eclass, last_error = u.err, updated_at = pg_catalog.now(),"
			" done_at = CASE WHEN u.state = 'dead' THEN pg_catalog.now() END"
			" FROM unnest($1, $2, $3, $4, $5) AS u(id, state, next_at, eclass, err)"
			" WHERE o.id = u.id", 5, t);
	}
}

static Binding *
find_binding(Binding *bs, int nb, int32 id)
{
	for (int i = 0; i < nb; i++)
		if (bs[i].id == id)
			return &bs[i];
	return NULL;
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
 * Render the intents of one binding that were never sent.  Decides the
 * request of each (create, update or cancel) from the current order row
 * and the shipment known so far.
 */
static void
render_binding(Provider *p, Binding *b, Claimed *cs, int *idx, int n,
			   ArgArrays *store, MemoryContext keep)
{
	Oid			types[2] = {INT8ARRAYOID, TEXTARRAYOID};
	Oid			ltypes[4] = {INT8OID, INT4OID, TEXTOID, INT4OID};
	Oid			rtypes[2] = {INT8OID, TEXTOID};
	ArgArrays  *ra = args_create(2, rtypes, n);
	ArgArrays  *la = args_create(3, ltypes, n);
	int			rc;
	SPITupleTable *tt;
	uint64		nrows;
	char	  **shipid = palloc0(sizeof(char *) * n);
	char	  **body = palloc0(sizeof(char *) * n);
	bool	   *found = palloc0(sizeof(bool) * n);
	bool	   *is_cancel = palloc0(sizeof(bool) * n);
	Datum	   *cdigest = palloc0(sizeof(Datum) * n);
	DigestCache *digest = NULL;
	bool	   *cdigest_null = palloc(sizeof(bool) * n);
	char	  **regtn = palloc0(sizeof(char *) * n);
	bool		need_lookup = false;
	bool		need_reg = false;

	memset(cdigest_null, true, sizeof(bool) * n);

	for (int i = 0; i < n; i++)
	{
		Claimed    *c = &cs[idx[i]];
		int			r = args_row(ra);
		int			l = args_row(la);

		args_set(ra, r, 0, Int64GetDatum(c->id));
		args_set_text(ra, r, 1, c->order_key);
		args_set(la, l, 0, Int64GetDatum(c->id));
		args_set(la, l, 1, Int32GetDatum(c->binding_id));
		args_set_text(la, l, 2, c->order_key);
		if (strcmp(c->op, "register") == 0)
			need_reg = true;
		else if (strcmp(c->op, "create") != 0)
			need_lookup = true;
	}

	/* the current order rows, read as the table's owner */
	if (b->render_plan == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		b->render_plan = shipsync_prepare_saved(b->render_sql, 2, types);
		MemoryContextSwitchTo(old);
	}
	/*
	 * read_only = false: a fresh snapshot, taken after the lock and the
	 * coalescing.  With the transaction's first snapshot, an order that
	 * committed just before the lock would be claimed but not seen here.
	 */
	rc = shipsync_execute_as_owner(shipsync_table_owner(b->relid), b->render_plan, ra, false);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "rendering orders failed: %s", SPI_result_code_string(rc));
	/* SPI calls return in SPI's procedure context: keep what we send */
	MemoryContextSwitchTo(keep);
	tt = SPI_tuptable;
	nrows = SPI_processed;
	for (uint64 r = 0; r < nrows; r++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tt->vals[r], tt->tupdesc, 1, &isnull));

		for (int i = 0; i < n; i++)
			if (cs[idx[i]].id == id)
			{
				found[i] = DatumGetBool(SPI_getbinval(tt->vals[r], tt->tupdesc, 2, &isnull));
				body[i] = get_text(tt->vals[r], tt->tupdesc, 3);
				is_cancel[i] = DatumGetBool(SPI_getbinval(tt->vals[r], tt->tupdesc, 4, &isnull));
				/*
				 * The digest of the row (_row_digest), computed here rather
				 * than by the statement: nothing of ours runs as the owner.
				 * Render statements made before 0.2 have no row column.
				 */
				if (tt->tupdesc->natts >= 6)
				{
					bool		rnull;
					bool		snull;
					Datum		row = SPI_getbinval(tt->vals[r], tt->tupdesc, 5, &rnull);
					Datum		skip = SPI_getbinval(tt->vals[r], tt->tupdesc, 6, &snull);

					if (!rnull && !snull)
					{
						HeapTupleHeader rec = DatumGetHeapTupleHeader(row);
						ArrayType  *sk = DatumGetArrayTypeP(skip);

						if (!shipsync_digest_fits(digest, HeapTupleHeaderGetTypeId(rec),
												  HeapTupleHeaderGetTypMod(rec), sk))
							digest = shipsync_digest_prepare(HeapTupleHeaderGetTypeId(rec),
															 HeapTupleHeaderGetTypMod(rec), sk,
															 keep);
						cdigest[i] = Int64GetDatum(shipsync_digest_row(digest, rec));
						cdigest_null[i] = false;
					}
				}
				break;
			}
	}

	/* the shipments already created for these orders (not for creates) */
	if (need_lookup)
		lookup_by_intent(shiplookup_plan, "shipment", la, p->id, cs, idx, n, shipid, keep);
	/* the waybills registrations are about */
	if (need_reg)
		lookup_by_intent(reglookup_plan, "waybill", la, p->id, cs, idx, n, regtn, keep);

	for (int i = 0; i < n; i++)
	{
		Claimed    *c = &cs[idx[i]];
		int			s = args_row(store);
		bool		cancel = strcmp(c->op, "cancel") == 0 || (found[i] && is_cancel[i]);

		args_set(store, s, 0, Int64GetDatum(c->id));
		if (strcmp(c->op, "register") == 0)
			dialect_render_register(p, c, regtn[i]);
		else if (DIALECT_IS_TRACKING(p->dialect))
			c->skip_reason = "a tracking provider only registers waybills";
		else if (dialect_renders(p))
			dialect_render(p, c, found[i], body[i], shipid[i], cancel);
		else if (cancel)
		{
			if (shipid[i] == NULL)
			{
				c->skip_reason = "no shipment to cancel";
			}
			else
			{
				c->method = "POST";
				c->url = psprintf("%s/shipments/%s/cancel", p->base_url, shipsync_url_escape(shipid[i]));
				c->body = psprintf("{\"order_ref\":%s}",
								   shipsync_quote_json(c->order_key));
				c->kind = INTENT_CANCEL;
			}
		}
		else if (!found[i])
			c->skip_reason = "the order row no longer exists";
		else if (strcmp(c->op, "update") == 0 && shipid[i] != NULL)
		{
			c->method = "PATCH";
			c->url = psprintf("%s/shipments/%s", p->base_url, shipsync_url_escape(shipid[i]));
			c->body = body[i];
			c->kind = INTENT_UPDATE;
		}
		else
		{
			/* a create, or an update of an order never shipped */
			c->method = "POST";
			c->url = psprintf("%s/shipments", p->base_url);
			c->body = body[i];
			c->kind = INTENT_CREATE;
		}
		if (c->skip_reason)
		{
			args_set_text(store, s, 4, c->skip_reason);
			args_set(store, s, 6, BoolGetDatum(c->invalid));
		}
		else
		{
			args_set_text(store, s, 1, c->method);
			args_set_text(store, s, 2, c->url);
			args_set_text(store, s, 3, c->body);
			args_set_text(store, s, 5, sha256_hex(c->body));
			if (!cdigest_null[i] && c->kind != INTENT_CANCEL)
				args_set(store, s, 7, cdigest[i]);
		}
	}
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
	if (nids < 0)
	{
		params[1] = (Datum) 0;
		nulls[1] = 'n';
	}
	else
	{
		Datum	   *d = palloc(sizeof(Datum) * Max(nids, 1));

		for (int i = 0; i < nids; i++)
			d[i] = Int32GetDatum(ids[i]);
		params[1] = PointerGetDatum(construct_array(d, nids, INT4OID, 4, true, TYPALIGN_INT));
	}
	rc = SPI_execute_plan(drain_plan, params, nulls, false, 0);

	if (rc != SPI_OK_INSERT)
		elog(ERROR, "taking intents from the inbox failed: %s",
			 SPI_result_code_string(rc));
	return SPI_processed;
}

/*
 * The dispatcher's drain, in a transaction of its own.  It need not be
 * durable: the intents are durable in the inbox, and a drain lost in a
 * crash moves them again.  Returns how many intents moved.
 */
uint64
outbox_drain_inbox(int64 limit, const int32 *ids, int nids)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	uint64		n;

	shipsync_begin_tx("taking in captured intents", false);
	prepare_claim_plans();
	n = drain_inbox(limit, ids, nids);
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
	Oid			stypes[8] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, BOOLOID, INT8OID};
	ArgArrays  *store = args_create(8, stypes, 1);
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
		Datum		mp[9];
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
		}
		rc = SPI_execute_plan(mark_plan, mp, NULL, false, 0);
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
	Datum		values[3];
	bool		nulls[3] = {true, true, true};
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
		if (ps[0].dialect == DIALECT_SF_EXPRESS || ps[0].dialect == DIALECT_KUAIDI100)
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

	if (method)
	{
		values[0] = CStringGetTextDatum(method);
		nulls[0] = false;
	}
	if (url)
	{
		values[1] = CStringGetTextDatum(url);
		nulls[1] = false;
	}
	if (body)
	{
		values[2] = CStringGetTextDatum(body);
		nulls[2] = false;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

IntentKind
outbox_kind_of(const char *method, const char *url)
{
	size_t		len = strlen(url);

	if (strcmp(method, "PATCH") == 0)
		return INTENT_UPDATE;
	if (len >= 7 && strcmp(url + len - 7, "/cancel") == 0)
		return INTENT_CANCEL;
	return INTENT_CREATE;
}

/*
 * Claim up to max_n due intents of provider p, render those never sent, and
 * commit durably.  Returns the intents to send; *nskipped counts those
 * finished with nothing to send (they may unblock the next intent of their
 * order); *next_due is when the next retry of p falls due (0 if unknown).
 */
int
outbox_claim(Provider *p, Binding *bs, int nb, int max_n, int lease_ms,
			 Claimed **out, TimestampTz *next_due, int *nskipped)
{
	Datum		params[6];
	int			rc;
	uint64		n;
	Claimed    *cs;
	int			nsend = 0;
	volatile int failing_binding = 0;
	Claimed *volatile claimed = NULL;
	volatile int nclaimed = 0;
	MemoryContext caller_cxt = CurrentMemoryContext;

	*out = NULL;
	*next_due = 0;
	*nskipped = 0;

	PG_TRY();
	{
		Oid			ctypes[3] = {INT8OID, INT4OID, TEXTOID};
		Oid			stypes[8] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, BOOLOID, INT8OID};
		ArgArrays  *co;
		ArgArrays  *store;
		int		   *idx;
		bool	   *grouped;
		SPITupleTable *tt;

		shipsync_begin_tx("claiming intents", true);
		prepare_claim_plans();

		/* 1. lock the due intents */
		params[0] = Int32GetDatum(p->id);
		params[1] = Int32GetDatum(max_n);
		rc = SPI_execute_plan(lock_plan, params, NULL, false, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "claim failed: %s", SPI_result_code_string(rc));
		n = SPI_processed;
		tt = SPI_tuptable;
		cs = MemoryContextAllocZero(caller_cxt, sizeof(Claimed) * (n + 1));
		for (uint64 i = 0; i < n; i++)
		{
			bool		isnull;
			MemoryContext old = MemoryContextSwitchTo(caller_cxt);

			cs[i].id = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull));
			cs[i].binding_id = DatumGetInt32(SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &isnull));
			cs[i].order_key = get_text(tt->vals[i], tt->tupdesc, 3);
			cs[i].op = get_text(tt->vals[i], tt->tupdesc, 4);
			cs[i].rendered = DatumGetBool(SPI_getbinval(tt->vals[i], tt->tupdesc, 5, &isnull));
			cs[i].idempotency_key = get_text(tt->vals[i], tt->tupdesc, 6);
			cs[i].provider_id = p->id;
			MemoryContextSwitchTo(old);
		}
		claimed = cs;
		nclaimed = (int) n;

		co = args_create(3, ctypes, (int) n);
		store = args_create(8, stypes, (int) n);
		idx = palloc(sizeof(int) * (n + 1));
		grouped = palloc0(sizeof(bool) * (n + 1));

		/* 2. coalesce: the row rendered next then holds their changes */
		for (uint64 i = 0; i < n; i++)
		{
			int			r;

			if (cs[i].rendered || strcmp(cs[i].op, "cancel") == 0)
				continue;
			r = args_row(co);
			args_set(co, r, 0, Int64GetDatum(cs[i].id));
			args_set(co, r, 1, Int32GetDatum(cs[i].binding_id));
			args_set_text(co, r, 2, cs[i].order_key);
		}
		if (co->n > 0 && args_execute(coalesce_plan, co, false) != SPI_OK_UPDATE)
			elog(ERROR, "coalescing updates failed");

		/* 3. render the never-sent ones, one statement per binding */
		for (uint64 i = 0; i < n; i++)
		{
			int			k = 0;
			Binding    *b;

			if (grouped[i] || cs[i].rendered)
				continue;
			for (uint64 j = i; j < n; j++)
				if (!grouped[j] && !cs[j].rendered &&
					cs[j].binding_id == cs[i].binding_id)
				{
					idx[k++] = (int) j;
					grouped[j] = true;
				}
			b = find_binding(bs, nb, cs[i].binding_id);
			if (b == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_OBJECT),
						 errmsg("binding %d of intent %lld does not exist",
								cs[i].binding_id, (long long) cs[i].id)));
			failing_binding = b->id;
			render_binding(p, b, cs, idx, k, store, caller_cxt);
			failing_binding = 0;
		}
		for (uint64 i = 0; i < n; i++)
			if (cs[i].rendered)
				args_set(store, args_row(store), 0, Int64GetDatum(cs[i].id));

		/* 4. one statement marks them in flight and stores the requests */
		if (n > 0)
		{
			Datum	   *mp = palloc(sizeof(Datum) * 9);

			for (int c = 0; c < 6; c++)
				mp[c] = shipsync_make_array(store->values[c], store->nulls[c], store->n, stypes[c]);
			mp[6] = Int32GetDatum(lease_ms);
			mp[7] = shipsync_make_array(store->values[6], store->nulls[6], store->n, BOOLOID);
			mp[8] = shipsync_make_array(store->values[7], store->nulls[7], store->n, INT8OID);
			rc = SPI_execute_plan(mark_plan, mp, NULL, false, 0);
			if (rc != SPI_OK_UPDATE_RETURNING)
				elog(ERROR, "marking claimed intents failed: %s", SPI_result_code_string(rc));
			tt = SPI_tuptable;
			if (col_id == 0)
			{
				col_id = SPI_fnumber(tt->tupdesc, "id");
				col_idem = SPI_fnumber(tt->tupdesc, "idempotency_key");
				col_attempts = SPI_fnumber(tt->tupdesc, "attempts");
				col_method = SPI_fnumber(tt->tupdesc, "request_method");
				col_url = SPI_fnumber(tt->tupdesc, "request_url");
				col_body = SPI_fnumber(tt->tupdesc, "request_body");
				col_digest = SPI_fnumber(tt->tupdesc, "request_digest");
			}
			for (uint64 r = 0; r < SPI_processed; r++)
			{
				bool		isnull;
				int64		id = DatumGetInt64(SPI_getbinval(tt->vals[r], tt->tupdesc, col_id, &isnull));

				for (uint64 i = 0; i < n; i++)
				{
					MemoryContext old;

					if (cs[i].id != id || cs[i].skip_reason)
						continue;
					old = MemoryContextSwitchTo(caller_cxt);
					cs[i].idempotency_key = get_text(tt->vals[r], tt->tupdesc, col_idem);
					cs[i].attempt = DatumGetInt32(SPI_getbinval(tt->vals[r], tt->tupdesc,
																col_attempts, &isnull));
					cs[i].method = get_text(tt->vals[r], tt->tupdesc, col_method);
					cs[i].url = get_text(tt->vals[r], tt->tupdesc, col_url);
					cs[i].body = get_text(tt->vals[r], tt->tupdesc, col_body);
					cs[i].digest = get_text(tt->vals[r], tt->tupdesc, col_digest);
					cs[i].kind = outbox_kind_of(cs[i].method, cs[i].url);
					/* SF Express: one URL, the service code says what it is */
					if (cs[i].body && strncmp(cs[i].body, "partnerID=", 10) == 0)
						cs[i].kind = strstr(cs[i].body, "&serviceCode=EXP_RECE_UPDATE_ORDER&") ?
							INTENT_CANCEL : INTENT_CREATE;
					if (strcmp(cs[i].op, "register") == 0)
						cs[i].kind = INTENT_REGISTER;
					MemoryContextSwitchTo(old);
					break;
				}
			}
		}

		/* invalid orders: one ticket each, in the same transaction */
		{
			Oid			dtypes[6] = {INT8OID, INT4OID, TEXTOID, INT4OID, TEXTOID, TEXTOID};
			ArgArrays  *d = args_create(6, dtypes, (int) n);

			for (uint64 i = 0; i < n; i++)
			{
				int			k;

				if (!cs[i].invalid)
					continue;
				k = args_row(d);
				args_set(d, k, 0, Int64GetDatum(cs[i].id));
				args_set(d, k, 1, Int32GetDatum(cs[i].binding_id));
				args_set_text(d, k, 2, cs[i].order_key);
				args_set(d, k, 3, Int32GetDatum(p->id));
				args_set_text(d, k, 4, cs[i].skip_reason);
				args_set_text(d, k, 5, "invalid_order");
			}
			if (d->n > 0)
			{
				prepare_apply_plans();
				if (args_execute(apply_dead_plan, d, false) != SPI_OK_INSERT_RETURNING)
					elog(ERROR, "opening exception tickets failed");
			}
		}

		if ((int) n < max_n)
		{
			bool		isnull;
			Datum		d;

			params[0] = Int32GetDatum(p->id);
			rc = SPI_execute_plan(nextdue_plan, params, NULL, true, 1);
			if (rc != SPI_OK_SELECT)
				elog(ERROR, "next due lookup failed");
			d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
			*next_due = isnull ? 0 : DatumGetTimestampTz(d);
		}

		shipsync_end_tx();
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		int			fb = failing_binding;
		Claimed    *cl = claimed;
		int			ncl = nclaimed;

		if (fb == 0)
			PG_RE_THROW();

		/*
		 * One binding's orders cannot be rendered (its table or its
		 * cancel_when is broken): those intents wait and count an attempt,
		 * the others of the claim are left for the next pass.
		 */
		MemoryContextSwitchTo(caller_cxt);
		edata = CopyErrorData();
		FlushErrorState();
		shipsync_abort_tx();
		outbox_fail_binding(p, cl, ncl, fb, edata->message);
		FreeErrorData(edata);
		return 0;
	}
	PG_END_TRY();

	MemoryContextSwitchTo(caller_cxt);
	for (int i = 0; i < nclaimed; i++)
	{
		if (claimed[i].skip_reason || claimed[i].method == NULL)
		{
			(*nskipped)++;
			continue;
		}
		claimed[nsend++] = claimed[i];
	}
	*out = claimed;
	return nsend;
}

/*
 * Record a render failure for the intents of binding fb in claimed[]: they
 * become retrying (or dead once out of attempts) with the error.
 */
void
outbox_fail_binding(Provider *p, Claimed *cl, int ncl, int fb, const char *msg)
{
	Oid			types[5] = {INT8OID, TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID};
	Oid			dtypes[6] = {INT8OID, INT4OID, TEXTOID, INT4OID, TEXTOID, TEXTOID};
	ArgArrays  *a;
	ArgArrays  *d;

	ereport(WARNING,
			(errcode(ERRCODE_DATA_EXCEPTION),
			 errmsg("pg_shipsync: orders of binding %d cannot be rendered: %s", fb, msg)));
	shipsync_begin_tx("recording a render failure", false);
	prepare_claim_plans();
	prepare_apply_plans();
	a = args_create(5, types, ncl);
	d = args_create(6, dtypes, ncl);
	for (int i = 0; i < ncl; i++)
	{
		int			r;
		bool		dead;

		if (cl[i].binding_id != fb)
			continue;
		/* claim() already counted this attempt, but was rolled back */
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
		{
			int			k = args_row(d);

			args_set(d, k, 0, Int64GetDatum(cl[i].id));
			args_set(d, k, 1, Int32GetDatum(cl[i].binding_id));
			args_set_text(d, k, 2, cl[i].order_key);
			args_set(d, k, 3, Int32GetDatum(p->id));
			args_set_text(d, k, 4, msg);
			args_set_text(d, k, 5, "render_failed");
		}
	}
	if (a->n > 0 && args_execute(fail_plan, a, false) != SPI_OK_UPDATE)
		elog(ERROR, "recording a render failure failed");
	if (d->n > 0 && args_execute(apply_dead_plan, d, false) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "opening exception tickets failed");
	shipsync_end_tx();
}

/* ---------- apply ---------- */

static SPIPlanPtr apply_outbox_plan = NULL;
static SPIPlanPtr apply_log_plan = NULL;
static SPIPlanPtr apply_create_plan = NULL;
static SPIPlanPtr apply_update_plan = NULL;
static SPIPlanPtr apply_dead_plan = NULL;
static SPIPlanPtr apply_register_plan = NULL;
static SPIPlanPtr apply_registered_plan = NULL;
static SPIPlanPtr apply_quotes_plan = NULL;	/* fees of creates, of updates */
static SPIPlanPtr apply_requotes_plan = NULL;

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
		b = find_binding(bs, nb, r->binding_id);
		if (b && b->tracking_provider_id != 0)
			fresh |= SHIPSYNC_PROVIDER_BIT(b->tracking_provider_id);
	}
	return fresh;
}

static void
prepare_apply_plans(void)
{
	if (apply_outbox_plan)
		return;
	{
		Oid			t[3] = {INT4ARRAYOID, INT4ARRAYOID, TEXTARRAYOID};

		apply_register_plan = shipsync_prepare_saved(
			"INSERT INTO shipsync.outbox (binding_id, provider_id, order_key, op)"
			" SELECT u.bid, u.tp, u.k, 'register' FROM unnest($1, $2, $3) AS u(bid, tp, k)", 3, t);
	}
	{
		Oid			t[7] = {INT4ARRAYOID, TEXTARRAYOID, INT4ARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};

		/*
		 * A registration done: the tracking provider's own shipment row,
		 * its tracker id, and the waybill it follows (the shipping
		 * provider's when the answer does not repeat it).  No write-back.
		 */
		apply_registered_plan = shipsync_prepare_saved(
			"INSERT INTO shipsync.shipment AS s (binding_id, order_key, provider_id,"
			" provider_shipment_id, tracking_number, raw_status, request_digest)"
			" SELECT u.bid, u.k, u.pid, u.sid,"
			"   COALESCE(u.tn, (SELECT x.tracking_number FROM shipsync.shipment x"
			"     WHERE x.binding_id = u.bid AND x.order_key = u.k AND x.provider_id <> u.pid"
			"     AND x.tracking_number IS NOT NULL ORDER BY x.updated_at DESC LIMIT 1)),"
			"   u.raw, u.digest"
			" FROM unnest($1, $2, $3, $4, $5, $6, $7) AS u(bid, k, pid, sid, tn, raw, digest)"
			" ON CONFLICT (binding_id, order_key, provider_id) DO UPDATE SET"
			" provider_shipment_id = COALESCE(EXCLUDED.provider_shipment_id, s.provider_shipment_id),"
			" tracking_number = EXCLUDED.tracking_number, raw_status = EXCLUDED.raw_status,"
			" request_digest = EXCLUDED.request_digest, updated_at = pg_catalog.now()", 7, t);
	}
	{
		Oid			t[7] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
		INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID};

		/*
		 * "state = (SELECT 'in_flight')", not a constant: with a constant,
		 * the planner may read the in-flight rows through the partial
		 * per-order index and hash them, trusting statistics taken when the
		 * queue was empty (1 row) -- then every batch walks the whole
		 * backlog.  An InitPlan cannot prove the partial index's predicate,
		 * so the rows are found by primary key, one per array element.  The
		 * same in coalesce_plan.
		 */
		apply_outbox_plan = shipsync_prepare_saved(
			"UPDATE shipsync.outbox o SET state = u.state,"
			" next_attempt_at = COALESCE(u.next_at, o.next_attempt_at),"
			" last_status = u.http_status, error_class = u.eclass, last_error = u.err,"
			" lease_until = NULL, updated_at = pg_catalog.now(),"
			" done_at = CASE WHEN u.state IN ('done', 'dead') THEN pg_catalog.now() END"
			" FROM unnest($1, $2, $3, $4, $5, $6, $7)"
			"   AS u(id, attempt, state, next_at, http_status, eclass, err)"
			" WHERE o.id = u.id AND o.state = (SELECT 'in_flight')"
			" AND o.attempts = u.attempt", 7, t);
	}
	{
		Oid			t[11] = {INT8ARRAYOID, INT4ARRAYOID, INT4ARRAYOID, TEXTARRAYOID,
			TEXTARRAYOID, INT4ARRAYOID, FLOAT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID};

		apply_log_plan = shipsync_prepare_saved(
			"INSERT INTO shipsync.delivery_log (outbox_id, attempt, provider_id, method,"
			" url, http_status, latency_ms, outcome, error_class, error, request_digest)"
			" SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)", 11, t);
	}
	{
		Oid			t[12] = {INT4ARRAYOID, TEXTARRAYOID, INT4ARRAYOID, TEXTARRAYOID,
			TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, INT8ARRAYOID};

		/*
		 * content_digest: the digest of the order row the request was
		 * rendered from, kept with the intent (reconciliation compares it).
		 */
		apply_create_plan = shipsync_prepare_saved(
			"INSERT INTO shipsync.shipment AS s (binding_id, order_key, provider_id,"
			" provider_shipment_id, tracking_number, label_url, status, raw_status, fees,"
			" fee_total, request_digest, waybills, content_digest)"
			" SELECT u.bid, u.k, u.pid, u.sid, u.tn, u.label, COALESCE(u.status, 'pending'),"
			"   u.raw, f.fees, f.total, u.digest, u.waybills::jsonb,"
			"   (SELECT o.content_digest FROM shipsync.outbox o WHERE o.id = u.oid)"
			" FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
			"   AS u(bid, k, pid, sid, tn, label, status, raw, fees, digest, waybills, oid)"
			" LEFT JOIN LATERAL (SELECT x.fj AS fees,"
			"   shipsync._quote_total(x.fj, u.pid) AS total"
			"   FROM (SELECT u.fees::jsonb AS fj) x WHERE u.fees IS NOT NULL) f ON true"
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
			" label_url, fee_total", 12, t);
		apply_quotes_plan = shipsync_prepare_saved(
			"SELECT kind, n, binding_id, order_key, fee_total"
			" FROM shipsync._record_quotes($1, $2, $3, $5, $9)", 12, t);
	}
	{
		Oid			t[10] = {INT4ARRAYOID, TEXTARRAYOID, INT4ARRAYOID, TEXTARRAYOID,
			TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, INT8ARRAYOID};

		/* an update carries the order as it is now: its digest, too */
		apply_update_plan = shipsync_prepare_saved(
			"UPDATE shipsync.shipment AS s SET"
			" tracking_number = COALESCE(u.tn, s.tracking_number),"
			" label_url = COALESCE(u.label, s.label_url),"
			" status = COALESCE(u.status, s.status), raw_status = COALESCE(u.raw, s.raw_status),"
			" fees = COALESCE(f.fees, s.fees), fee_total = COALESCE(f.total, s.fee_total),"
			" content_digest = COALESCE((SELECT o.content_digest FROM shipsync.outbox o"
			"   WHERE o.id = u.oid), s.content_digest),"
			" updated_at = pg_catalog.now()"
			" FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
			"   AS u(bid, k, pid, tn, label, status, raw, fees, unused, oid)"
			" LEFT JOIN LATERAL (SELECT x.fj AS fees,"
			"   shipsync._quote_total(x.fj, u.pid) AS total"
			"   FROM (SELECT u.fees::jsonb AS fj) x WHERE u.fees IS NOT NULL) f ON true"
			" WHERE s.binding_id = u.bid AND s.order_key = u.k AND s.provider_id = u.pid"
			" RETURNING s.binding_id, s.order_key, s.provider_shipment_id, s.tracking_number,"
			" s.status, s.label_url, s.fee_total", 10, t);
		/* the fees of the answers are quotes: fee lines (fees.c) */
		apply_requotes_plan = shipsync_prepare_saved(
			"SELECT kind, n, binding_id, order_key, fee_total"
			" FROM shipsync._record_quotes($1, $2, $3, $4, $8)", 10, t);
	}
	{
		Oid			t[6] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID};

		apply_dead_plan = shipsync_prepare_saved(
			"INSERT INTO shipsync.exception_ticket (kind, binding_id, order_key, provider_id,"
			" outbox_id, detail)"
			" SELECT u.kind, u.bid, u.k, u.pid, u.id, u.err"
			" FROM unnest($1, $2, $3, $4, $5, $6) AS u(id, bid, k, pid, err, kind)"
			/* kinds and ids only: any role may LISTEN (docs/security.md) */
			" RETURNING pg_catalog.pg_notify('shipsync', pg_catalog.json_build_object("
			"   'event', kind, 'outbox_id', outbox_id, 'ticket_id', ticket_id,"
			"   'binding_id', binding_id, 'order_key', order_key)::text)", 6, t);
	}
}

static const char *const canonical_statuses[] = {
	"pending", "pre_transit", "in_transit", "out_for_delivery",
	"available_for_pickup", "delivery_failed", "exception", "returning",
	"returned", "delivered", "cancelled", "expired", NULL
};

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

/*
 * After the statement that recorded shipments (its rows in SPI_tuptable):
 * their answers' fees become quote lines (fees.c), taking the fee locks
 * before the order rows are written; then the write-back, and last the fee
 * totals that differ from what it wrote (a bill already there wins).
 */
static void
apply_with_quotes(bool no_writeback, Binding *bs, int nb, SPIPlanPtr quotes_plan, ArgArrays *a)
{
	SPITupleTable *shipped = SPI_tuptable;
	uint64		nshipped = SPI_processed;
	int			rc;

	if ((rc = args_execute(quotes_plan, a, false)) != SPI_OK_SELECT)
		elog(ERROR, "recording quoted fees failed: %s", SPI_result_code_string(rc));
	if (no_writeback)
		return;
	{
		SPITupleTable *totals = SPI_tuptable;
		uint64		ntotals = SPI_processed;

		writeback_shipments(bs, nb, shipped, nshipped);
		(void) fees_write_totals(totals, ntotals);
	}
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
	Oid			otypes[7] = {INT8OID, INT4OID, TEXTOID, TIMESTAMPTZOID, INT4OID, TEXTOID, TEXTOID};
	Oid			ltypes[11] = {INT8OID, INT4OID, INT4OID, TEXTOID, TEXTOID, INT4OID, FLOAT8OID,
	TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Oid			ctypes[12] = {INT4OID, TEXTOID, INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID};
	Oid			utypes[10] = {INT4OID, TEXTOID, INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	TEXTOID, TEXTOID, INT8OID};
	Oid			dtypes[6] = {INT8OID, INT4OID, TEXTOID, INT4OID, TEXTOID, TEXTOID};
	Oid			gtypes[3] = {INT4OID, INT4OID, TEXTOID};
	int			n = to - from;
	Oid			rtypes[7] = {INT4OID, TEXTOID, INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	ArgArrays  *ga = args_create(7, rtypes, n);	/* registrations done */
	ArgArrays  *na = args_create(3, gtypes, n);	/* registrations to make */
	ArgArrays  *oa = args_create(7, otypes, n);
	ArgArrays  *la = args_create(11, ltypes, n);
	ArgArrays  *ca = args_create(12, ctypes, n);
	ArgArrays  *ua = args_create(10, utypes, n);
	ArgArrays  *da = args_create(6, dtypes, n);
	int			rc;

	prepare_apply_plans();

	for (int i = from; i < to; i++)
	{
		ShipResult	   *r = &rs[i];
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

		if (r->ship_ok && r->kind == INTENT_REGISTER)
		{
			/* the tracking provider's record of the waybill: no write-back */
			int			c = args_row(ga);

			args_set(ga, c, 0, Int32GetDatum(r->binding_id));
			args_set_text(ga, c, 1, r->order_key);
			args_set(ga, c, 2, Int32GetDatum(r->provider_id));
			args_set_text(ga, c, 3, r->ship_id);
			args_set_text(ga, c, 4, r->tracking_number);
			args_set_text(ga, c, 5, r->raw_status);
			args_set_text(ga, c, 6, r->digest);
		}
		else if (r->ship_ok && r->kind == INTENT_CREATE)
		{
			int			c = args_row(ca);
			Binding    *b = find_binding(bs, nb, r->binding_id);

			if (b && b->tracking_provider_id != 0 && r->tracking_number)
			{
				int			g = args_row(na);

				args_set(na, g, 0, Int32GetDatum(r->binding_id));
				args_set(na, g, 1, Int32GetDatum(b->tracking_provider_id));
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
			args_set(ca, c, 11, Int64GetDatum(r->id));
		}
		else if (r->ship_ok)
		{
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
			args_set(ua, u, 9, Int64GetDatum(r->id));
		}

		if (strcmp(r->state, "dead") == 0)
		{
			int			d = args_row(da);

			args_set(da, d, 0, Int64GetDatum(r->id));
			args_set(da, d, 1, Int32GetDatum(r->binding_id));
			args_set_text(da, d, 2, r->order_key);
			args_set(da, d, 3, Int32GetDatum(r->provider_id));
			args_set_text(da, d, 4, r->error);
			args_set_text(da, d, 5, r->ticket_kind ? r->ticket_kind : "dead_intent");
		}
	}

	if ((rc = args_execute(apply_outbox_plan, oa, false)) != SPI_OK_UPDATE)
		elog(ERROR, "updating outbox states failed: %s", SPI_result_code_string(rc));
	if ((rc = args_execute(apply_log_plan, la, false)) != SPI_OK_INSERT)
		elog(ERROR, "writing the delivery log failed: %s", SPI_result_code_string(rc));
	if (ca->n > 0)
	{
		if ((rc = args_execute(apply_create_plan, ca, false)) != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "recording shipments failed: %s", SPI_result_code_string(rc));
		apply_with_quotes(rs[from].no_writeback, bs, nb, apply_quotes_plan, ca);
	}
	if (ga->n > 0 &&
		(rc = args_execute(apply_registered_plan, ga, false)) != SPI_OK_INSERT)
		elog(ERROR, "recording registrations failed: %s", SPI_result_code_string(rc));
	if (na->n > 0 &&
		(rc = args_execute(apply_register_plan, na, false)) != SPI_OK_INSERT)
		elog(ERROR, "enqueueing registrations failed: %s", SPI_result_code_string(rc));
	if (ua->n > 0)
	{
		if ((rc = args_execute(apply_update_plan, ua, false)) != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "updating shipments failed: %s", SPI_result_code_string(rc));
		apply_with_quotes(rs[from].no_writeback, bs, nb, apply_requotes_plan, ua);
	}
	if (da->n > 0 &&
		(rc = args_execute(apply_dead_plan, da, false)) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "opening exception tickets failed: %s", SPI_result_code_string(rc));
}

/*
 * Apply results [i, i + 1) in a subtransaction of the current transaction.
 * Returns NULL when it committed, else the error (copied into cxt); the
 * subtransaction is then rolled back.  Either way cxt and owner are current
 * again.
 */
static ErrorData *
apply_in_subxact(ShipResult *rs, int i, Binding *bs, int nb, MemoryContext cxt,
				 ResourceOwner owner)
{
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		apply_range(rs, i, i + 1, bs, nb);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return edata;
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

/*
 * The slow path for one result, each try in its own subtransaction: as it
 * is; then dead (writeback_failed) with its shipment recorded but the order
 * row left alone; then dead (apply_failed) with nothing but its outbox
 * state, log row and ticket.  Only when even that fails (the outbox itself
 * cannot be written) is the error raised.
 */
static void
apply_one(ShipResult *rs, int i, Binding *bs, int nb, MemoryContext cxt,
		  ResourceOwner owner)
{
	ShipResult *r = &rs[i];
	ErrorData  *first;
	ErrorData  *second;
	ErrorData  *last;

	if ((first = apply_in_subxact(rs, i, bs, nb, cxt, owner)) == NULL)
		return;
	apply_warn(r, "applying", first);

	/* record the shipment and the failure, without the write-back */
	r->no_writeback = true;
	r->state = "dead";
	r->outcome = "dead";
	r->next_at = 0;
	r->error_class = "writeback_failed";
	r->ticket_kind = "writeback_failed";
	r->error = psprintf("write-back failed: %s", first->message);
	if ((second = apply_in_subxact(rs, i, bs, nb, cxt, owner)) == NULL)
		return;

	/* not even the shipment: the intent's own state, log and ticket only */
	apply_warn(r, "recording", second);
	r->ship_ok = false;
	r->error_class = "apply_failed";
	r->ticket_kind = "apply_failed";
	r->error = psprintf("the result could not be recorded: %s", second->message);
	if ((last = apply_in_subxact(rs, i, bs, nb, cxt, owner)) == NULL)
		return;
	ereport(ERROR,
			(errcode(last->sqlerrcode),
			 errmsg("pg_shipsync: the state of intent %lld cannot be recorded: %s",
					(long long) r->id, last->message)));
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
		shipsync_begin_tx("applying results", false);
		apply_range(rs, 0, n, bs, nb);
		shipsync_end_tx();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		shipsync_abort_tx();
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
uint64
outbox_apply(ShipResult *rs, int n, Binding *bs, int nb)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner;

	if (n == 0)
		return 0;
	if (!apply_batch(rs, n, bs, nb))
	{
		shipsync_begin_tx("applying results one by one", false);
		owner = CurrentResourceOwner;
		for (int i = 0; i < n; i++)
			apply_one(rs, i, bs, nb, cxt, owner);
		shipsync_end_tx();
		MemoryContextSwitchTo(cxt);
	}
	return apply_new_work(rs, n, bs, nb);
}
