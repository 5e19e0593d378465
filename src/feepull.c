/*-------------------------------------------------------------------------
 *
 * feepull.c
 *		Fee pulls: the dispatcher asks a carrier for the fees of shipments
 *		it delivered, when no bill has come by itself.
 *
 * For each provider whose option fee_pull_after is set (generic and
 * sf_express), every shipsync.idle_check_ms the dispatcher looks for its
 * shipments that were delivered (the time of their delivered tracking
 * event) more than fee_pull_after ago and less than unbilled_after ago,
 * and that have no bill line yet, and asks for their fees: generic
 * GET {base_url}/shipments/{id}/fees (the push's body in return), SF
 * Express EXP_RECE_QUERY_SFWAYBILL by waybill (the fee list in msgData).
 * Choosing a shipment writes its row of shipsync.fee_pull with a lease,
 * so that it is not asked twice at once; the answer sets when to ask
 * again if the carrier had nothing yet (fee_pull_after later: SF's 8148,
 * a 404, an empty list), and the summary of what it said.  A shipment
 * that got its bill (from any source) is not asked again; one delivered
 * longer than unbilled_after ago is left to shipsync.fee_difference.
 *
 * Pulls share the dispatcher's libcurl multi handle with deliveries and
 * tracking polls, at most FEE_PULL_INFLIGHT per provider and within its
 * token bucket, pause, Retry-After holds and an open circuit breaker's
 * cooldown (health.c: an answered pull closes it, as a tracking poll
 * does; failed pulls do not open it; a 429 or 503 asking to wait holds the
 * provider).  Each answer is applied in
 * its own subtransaction (fees.c stores it as a pull); failures are summed
 * up in one LOG line per provider and round.
 *
 * Each round also matches parked fee lines (pushed or billed before their
 * shipment was recorded, in a transaction the dispatcher's apply could not
 * see) to the shipments that now have their tracking numbers.
 *
 * State lives in this process only and in shipsync.fee_pull; after a
 * restart a round starts at once, and leases of pulls lost in flight
 * expire.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

#define FEE_PULL_BATCH 64		/* shipments chosen per provider per round */
#define FEE_PULL_INFLIGHT 16	/* pulls in flight per provider */

/* A provider whose fees are pulled */
typedef struct PullProvider
{
	int32		id;
	int			inflight;
	int			answered;		/* in the current round */
	int			failed;
	char	   *first_error;	/* in pull_cxt */
} PullProvider;

/* One pull in flight: its own memory context holds all of it */
typedef struct PullFlight
{
	HttpTransfer xfer;			/* first: http.c hands back this pointer */
	MemoryContext cxt;
	int32		provider_id;
	char	   *provider_name;
	bool		sf;
	int32		binding_id;
	char	   *order_key;
	char	   *what;			/* the shipment, for messages */
	struct PullFlight *next;
} PullFlight;

static char pull_tag;			/* HttpTransfer.owner of every pull */
static MemoryContext pull_cxt = NULL;
static PullProvider *pulled = NULL;
static int	npulled = 0;
static bool config_read = false;
static TimestampTz next_round = 0;
static PullFlight *finished = NULL;
static SPIPlanPtr choose_plan = NULL;
static SPIPlanPtr record_plan = NULL;

static PullProvider *
find_pulled(int32 id)
{
	for (int i = 0; i < npulled; i++)
		if (pulled[i].id == id)
			return &pulled[i];
	return NULL;
}

/*
 * Which providers pull fees, from the dispatcher's configuration (option
 * fee_pull_after, loaded by provider.c; dialects that can be asked for
 * fees), keeping the counts of those that stay.
 */
static void
feepull_load_config(Provider *providers, int nproviders)
{
	MemoryContext new_cxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync fee pulls",
												  ALLOCSET_SMALL_SIZES);
	PullProvider *ps;
	int			n = 0;

	ps = MemoryContextAllocZero(new_cxt, sizeof(PullProvider) * (nproviders + 1));
	for (int k = 0; k < nproviders; k++)
	{
		PullProvider *was;

		if (!providers[k].fee_pull || providers[k].dialect->tracking)
			continue;
		ps[n].id = providers[k].id;
		was = find_pulled(ps[n].id);
		if (was)
			ps[n].inflight = was->inflight;
		n++;
	}
	if (pull_cxt)
		MemoryContextDelete(pull_cxt);
	pull_cxt = new_cxt;
	pulled = ps;
	npulled = n;
	config_read = true;
}

static void
feepull_submit(HttpClient *client, Provider *p, int32 binding_id, const char *order_key,
			   const char *shipment_id, const char *waybill)
{
	MemoryContext fcxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync fee pull",
											   ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(fcxt);
	PullFlight *f = palloc0(sizeof(PullFlight));

	f->cxt = fcxt;
	f->provider_id = p->id;
	f->provider_name = pstrdup(p->name);
	f->binding_id = binding_id;
	f->order_key = pstrdup(order_key);
	f->sf = p->dialect->fee_query != NULL;
	if (f->sf)
	{
		f->what = psprintf("waybill %s", waybill);
		f->xfer.method = "POST";
		f->xfer.url = pstrdup(p->base_url);
		f->xfer.body = p->dialect->fee_query(p, waybill,
												 psprintf("fees-%d-%s-%lld", binding_id, order_key,
														  (long long) GetCurrentTimestamp()));
		f->xfer.body_len = strlen(f->xfer.body);
	}
	else
	{
		f->what = psprintf("shipment %s", shipment_id);
		f->xfer.method = "GET";
		f->xfer.url = psprintf("%s/shipments/%s/fees", p->base_url,
							   shipsync_url_escape(shipment_id));
	}
	f->xfer.timeout_ms = p->timeout_ms;
	/* as every request to the provider: its TLS options, its headers */
	f->xfer.tls = p->tls;
	f->xfer.headers = dialect_headers(p, NULL, f->sf);
	f->xfer.owner = &pull_tag;
	http_submit(client, &f->xfer);
	MemoryContextSwitchTo(old);
}

/*
 * Choose up to n shipments of a provider to ask, leasing each in
 * shipsync.fee_pull, and send their pulls.  In a transaction.
 */
static void
feepull_choose(HttpClient *client, Provider *p, PullProvider *pp, int n)
{
	Datum		args[2] = {Int32GetDatum(p->id), Int32GetDatum(n)};
	int			got;

	if (choose_plan == NULL)
	{
		Oid			t[2] = {INT4OID, INT4OID};

		choose_plan = shipsync_prepare_saved(
			"SELECT binding_id, order_key, provider_shipment_id, tracking_number"
			" FROM shipsync._choose_fee_pulls($1, $2)", 2, t);
	}
	if (SPI_execute_plan(choose_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "choosing shipments whose fees to ask for failed");
	got = (int) SPI_processed;
	for (int i = 0; i < got; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		feepull_submit(client, p, DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull)),
					   SPI_getvalue(tup, desc, 2), SPI_getvalue(tup, desc, 3),
					   SPI_getvalue(tup, desc, 4));
		pp->inflight++;
	}
	if (p->rate_per_s > 0)
		p->st->tokens -= got;
}

/* Match parked fee lines whose shipment was recorded meanwhile. */
static void
feepull_match_parked(void)
{
	shipsync_begin_tx("matching parked fee lines", false);
	if (SPI_execute("SELECT kind, n, binding_id, order_key, fee_total"
					" FROM shipsync._match_parked_fees_all()", false, 0) != SPI_OK_SELECT)
		elog(ERROR, "matching parked fee lines failed");
	(void) fees_write_totals(SPI_tuptable, SPI_processed);
	shipsync_end_tx();
}

/*
 * Called by the dispatcher's loop, outside any transaction: every
 * idle_check_ms, a round of pulls for each provider that has them.
 */
void
feepull_send(HttpClient *client, Provider *providers, int nproviders, TimestampTz now)
{
	bool		in_tx = false;

	if (!config_read)
		feepull_load_config(providers, nproviders);
	if (now < next_round)
		return;
	next_round = TimestampTzPlusMilliseconds(now, shipsync_idle_check_ms);
	feepull_match_parked();
	for (int i = 0; i < npulled; i++)
	{
		PullProvider *pp = &pulled[i];
		Provider   *p = NULL;
		int			room;

		for (int k = 0; k < nproviders; k++)
			if (providers[k].id == pp->id)
				p = &providers[k];
		if (p == NULL || p->paused || p->secret_error || health_blocked(p, now))
			continue;
		if (pp->failed > 0)
			ereport(LOG,
					(errmsg("pg_shipsync: %d of %d fee pulls of provider \"%s\" failed or were not applied in the last round",
							pp->failed, pp->answered, p->name),
					 errdetail("The first: %s", pp->first_error)));
		pp->answered = pp->failed = 0;
		pp->first_error = NULL;
		room = Min(FEE_PULL_INFLIGHT, p->max_inflight) - pp->inflight;
		room = Min(room, Min(provider_tokens(p, now), FEE_PULL_BATCH));
		if (room <= 0)
			continue;
		if (!in_tx)
		{
			shipsync_begin_tx("choosing shipments whose fees to ask for", false);
			in_tx = true;
		}
		feepull_choose(client, p, pp, room);
	}
	if (in_tx)
		shipsync_end_tx();
}

/* The dispatcher hands us its finished transfers: true if it was a pull. */
bool
feepull_take(HttpTransfer *t)
{
	PullFlight *f;
	PullProvider *pp;

	if (t->owner != &pull_tag)
		return false;
	f = (PullFlight *) t;
	pp = find_pulled(f->provider_id);
	if (pp && pp->inflight > 0)
		pp->inflight--;
	f->next = finished;
	finished = f;
	return true;
}

/*
 * Read one answer and store its lines; returns what the carrier said, for
 * shipsync.fee_pull.last_result, and whether to ask again later (*again:
 * nothing billed yet).  An answer that cannot be read is an ERROR.
 */
static char *
feepull_read(PullFlight *f, bool *again)
{
	HttpTransfer *t = &f->xfer;
	int64		n;

	*again = false;
	if (t->curl_code != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("%s %s: %s", t->method, t->url,
						t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->curl_code))));
	if (!f->sf && t->http_status == 404)
	{
		*again = true;
		return pstrdup("not billed yet (HTTP 404)");
	}
	if (t->http_status < 200 || t->http_status >= 300)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("%s %s: HTTP %ld", t->method, t->url, t->http_status)));
	if (f->sf)
	{
		char	   *code = NULL;

		n = fees_apply_sf_answer(f->provider_name, t->response.data, t->response.len, &code);
		if (n < 0)
		{
			/* 8148: no fee data yet (or billed to another account); 8151: no monthly card */
			*again = code && strcmp(code, "8148") == 0;
			return psprintf("SF Express answered %s", code ? code : "no fees");
		}
	}
	else
		n = fees_apply_pulled(f->provider_name, t->response.data, t->response.len);
	if (n == 0)
		*again = true;
	return psprintf(INT64_FORMAT " lines new or revised", n);
}

/* Record what a pull brought in shipsync.fee_pull */
static void
feepull_record(PullFlight *f, const char *result, bool again)
{
	Datum		args[5];
	Oid			t[5] = {INT4OID, TEXTOID, INT4OID, TEXTOID, BOOLOID};

	if (record_plan == NULL)
		record_plan = shipsync_prepare_saved(
			"UPDATE shipsync.fee_pull fp SET pulls = fp.pulls + 1, last_pulled_at = pg_catalog.now(),"
			" last_result = $4, next_pull_at = CASE WHEN $5 AND fp.pulls < 9 THEN pg_catalog.now()"
			"  + coalesce(shipsync._interval_or_null(p.options->>'fee_pull_after'), interval '1 day')"
			"  ELSE 'infinity' END"
			" FROM shipsync.provider p"
			" WHERE fp.binding_id = $1 AND fp.order_key = $2 AND fp.provider_id = $3"
			" AND p.provider_id = $3", 5, t);
	args[0] = Int32GetDatum(f->binding_id);
	args[1] = CStringGetTextDatum(f->order_key);
	args[2] = Int32GetDatum(f->provider_id);
	args[3] = CStringGetTextDatum(result);
	args[4] = BoolGetDatum(again);
	if (SPI_execute_plan(record_plan, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "recording a fee pull failed");
}

static void
feepull_count(PullFlight *f, const char *error)
{
	PullProvider *pp = find_pulled(f->provider_id);

	if (pp == NULL)
		return;
	pp->answered++;
	if (error == NULL)
		return;
	pp->failed++;
	if (pp->first_error == NULL)
		pp->first_error = MemoryContextStrdup(pull_cxt, error);
}

/* Read and record one answer */
static void
feepull_apply_read(void *arg)
{
	PullFlight *f = (PullFlight *) arg;
	bool		again;
	char	   *result = feepull_read(f, &again);

	feepull_record(f, result, again);
}

/*
 * Read and record one answer (in its own subtransaction), waiting at most
 * shipsync.order_lock_timeout for an order row another session holds
 * (writeback_bounded()): then it is a failed pull, asked again later.
 */
static void
feepull_apply_one(void *arg)
{
	writeback_bounded(feepull_apply_read, arg);
}

/*
 * Apply the pulls that finished: one transaction, one subtransaction per
 * answer (one open at a time).  A failed pull is recorded too, and asked
 * again after fee_pull_after.
 */
void
feepull_apply(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	PullFlight *list = finished;

	if (list == NULL)
		return;
	finished = NULL;

	shipsync_begin_tx("applying pulled fees", false);
	for (PullFlight *f = list; f != NULL; f = f->next)
	{
		HttpTransfer *t = &f->xfer;
		ErrorData  *e;
		char	   *error = NULL;

		/* asked to wait: no pull (and no delivery) before then */
		health_poll_result(f->provider_id, f->provider_name, "fee pull",
						   t->curl_code == CURLE_OK, t->http_status, t->retry_after,
						   t->ratelimit_reset);
		e = shipsync_subxact(feepull_apply_one, f);

		if (e)
		{
			error = psprintf("the fees of %s were not applied: %s", f->what, e->message);
			FreeErrorData(e);
		}
		feepull_count(f, error);
		if (error)
			feepull_record(f, error, true);
	}
	shipsync_end_tx();
	MemoryContextSwitchTo(cxt);
	for (PullFlight *f = list, *next; f != NULL; f = next)
	{
		next = f->next;
		MemoryContextDelete(f->cxt);
	}
}

/* How long the dispatcher may sleep before the next round */
long
feepull_timeout(TimestampTz now)
{
	return next_round > now ? (long) ((next_round - now + 999) / 1000) : 0;
}

/* The dispatcher read its configuration again: so do we, at the next pass. */
void
feepull_invalidate(void)
{
	config_read = false;
}
