/*-------------------------------------------------------------------------
 *
 * poller.c
 *		The tracking poller: the dispatcher pulls the tracking of
 *		non-terminal shipments, the safety net under the push channel.
 *
 * For each provider of dialect generic whose option poll_interval_s is
 * above zero, the dispatcher makes a round every poll_interval_s: it walks
 * the provider's shipments that are not in a terminal status, in key
 * order, in batches of at most POLL_BATCH, and sends
 * GET {base_url}/shipments/{id}/events for each (docs/wire-contract.md,
 * "Tracking pull") on its own libcurl multi handle, beside the outbox's
 * requests.  Polls share the provider's token bucket (rate_limit_per_s),
 * respect pause(), Retry-After holds and an open circuit breaker's cooldown
 * (health.c: a poll answered closes it; failed polls do not open it), and
 * keep at most POLL_INFLIGHT in
 * flight per provider, so that they never crowd out deliveries.
 *
 * An answer is applied like a push (tracking.c): events deduplicated,
 * statuses folded, written back and notified.  Each answer is applied in
 * its own subtransaction, so that one malformed answer or one failing
 * write-back costs only itself; failures are summed up in one LOG line per
 * provider and round (the first one quoted), not one line per shipment.
 *
 * Every shipsync.idle_check_ms it also expires parked tracking events
 * (unmatched_ttl_s),
 * so that those of a provider that went quiet do not wait for its next
 * push.
 *
 * State: the round of each provider (its cursor, when the next one is
 * due) lives in this process only; after a restart a new round starts at
 * once, which is harmless.  The list of polled providers is read again
 * whenever the dispatcher reads its configuration again: a poll in flight
 * carries its provider's id and name, never a pointer into that list.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

#define POLL_BATCH 64			/* shipments fetched per provider per pass */
#define POLL_INFLIGHT 16		/* polls in flight per provider */

/* A provider that is polled, and where its round is */
typedef struct PollProvider
{
	int32		id;
	int			interval_s;
	int			inflight;
	bool		in_round;
	TimestampTz round_started;
	TimestampTz next_round;
	int32		cursor_binding;
	char	   *cursor_key;		/* in poll_cxt; NULL at the start of a round */
	int			answered;		/* polls finished since the last round ended */
	int			failed;			/* of which failed or were not applied */
	char	   *first_error;	/* in poll_cxt: the first of those failures */
} PollProvider;

/* One poll in flight: its own memory context holds all of it */
typedef struct PollFlight
{
	HttpTransfer xfer;			/* first: http.c hands back this pointer */
	MemoryContext cxt;
	int32		provider_id;
	char	   *provider_name;
	char	   *shipment_id;
	int64		changed;		/* shipments whose status the answer changed */
	struct PollFlight *next;	/* in the list of finished polls */
} PollFlight;

static char poll_tag;			/* HttpTransfer.owner of every poll */
static MemoryContext poll_cxt = NULL;
static PollProvider *polled = NULL;
static int	npolled = 0;
static TimestampTz config_read_at = 0;
static TimestampTz expire_due = 0;
static PollFlight *finished = NULL;
static SPIPlanPtr next_plan = NULL;

static PollProvider *
find_polled(int32 id)
{
	for (int i = 0; i < npolled; i++)
		if (polled[i].id == id)
			return &polled[i];
	return NULL;
}

/*
 * Take which providers are polled from the dispatcher's configuration
 * (provider.c loads option poll_interval_s with the rest), keeping the
 * rounds of those that stay: the generic providers with an interval.
 */
static void
poller_load_config(Provider *providers, int nproviders, TimestampTz now)
{
	MemoryContext new_cxt;
	MemoryContext old;
	PollProvider *ps;
	int			n = 0;

	new_cxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync poller",
									ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(new_cxt);
	ps = palloc0(sizeof(PollProvider) * (nproviders + 1));
	for (int k = 0; k < nproviders; k++)
	{
		PollProvider *was;
		PollProvider *pp = &ps[n];

		if (providers[k].dialect != &generic_dialect || providers[k].poll_interval_s <= 0)
			continue;
		n++;
		pp->id = providers[k].id;
		pp->interval_s = providers[k].poll_interval_s;
		was = find_polled(pp->id);
		if (was)
		{
			pp->inflight = was->inflight;
			pp->in_round = was->in_round;
			pp->round_started = was->round_started;
			pp->next_round = Min(was->next_round,
								 TimestampTzPlusMilliseconds(was->round_started,
															 (int64) pp->interval_s * 1000));
			pp->cursor_binding = was->cursor_binding;
			pp->cursor_key = was->cursor_key ? pstrdup(was->cursor_key) : NULL;
			pp->answered = was->answered;
			pp->failed = was->failed;
			pp->first_error = was->first_error ? pstrdup(was->first_error) : NULL;
		}
		else
			pp->next_round = now;
	}
	MemoryContextSwitchTo(old);

	if (poll_cxt)
		MemoryContextDelete(poll_cxt);
	poll_cxt = new_cxt;
	polled = ps;
	npolled = n;
	config_read_at = now;
}

static void
poller_submit(HttpClient *client, Provider *p, const char *shipment_id)
{
	MemoryContext fcxt;
	MemoryContext old;
	PollFlight *f;
	struct curl_slist *h = NULL;

	fcxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync poll",
								 ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(fcxt);
	f = palloc0(sizeof(PollFlight));
	f->cxt = fcxt;
	f->provider_id = p->id;
	f->provider_name = pstrdup(p->name);
	f->shipment_id = pstrdup(shipment_id);
	h = curl_slist_append(h, "Accept: application/json");
	for (int i = 0; i < p->nheaders; i++)
		h = curl_slist_append(h, p->headers[i]);
	f->xfer.method = "GET";
	f->xfer.url = psprintf("%s/shipments/%s/events", p->base_url,
						   shipsync_url_escape(shipment_id));
	f->xfer.timeout_ms = p->timeout_ms;
	f->xfer.tls = p->tls;
	f->xfer.headers = h;
	f->xfer.owner = &poll_tag;
	http_submit(client, &f->xfer);
	MemoryContextSwitchTo(old);
}

/*
 * The next shipments of a provider's round: not terminal, with a shipment
 * id, after the cursor in key order.  Sends a poll for each; ends the round
 * when there are no more.
 */
static void
poller_next_batch(HttpClient *client, Provider *p, PollProvider *pp, int n,
				  TimestampTz now)
{
	Datum		args[4];
	int			got;

	if (next_plan == NULL)
	{
		Oid			t[4] = {INT4OID, INT4OID, TEXTOID, INT4OID};

		next_plan = shipsync_prepare_saved(
			"SELECT s.binding_id, s.order_key, s.provider_shipment_id"
			" FROM shipsync.shipment s"
			" LEFT JOIN shipsync.canonical_status c ON c.name = s.status"
			" WHERE s.provider_id = $1 AND s.provider_shipment_id IS NOT NULL"
			" AND NOT coalesce(c.terminal, false)"
			" AND (s.binding_id, s.order_key) > ($2, $3)"
			" ORDER BY s.binding_id, s.order_key LIMIT $4", 4, t);
	}
	args[0] = Int32GetDatum(p->id);
	args[1] = Int32GetDatum(pp->cursor_key ? pp->cursor_binding : -1);
	args[2] = CStringGetTextDatum(pp->cursor_key ? pp->cursor_key : "");
	args[3] = Int32GetDatum(n);
	if (SPI_execute_plan(next_plan, args, NULL, true, n) != SPI_OK_SELECT)
		elog(ERROR, "reading shipments to poll failed");
	got = (int) SPI_processed;
	for (int i = 0; i < got; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *key = SPI_getvalue(tup, desc, 2);

		poller_submit(client, p, SPI_getvalue(tup, desc, 3));
		pp->inflight++;
		pp->cursor_binding = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		if (pp->cursor_key)
			pfree(pp->cursor_key);
		pp->cursor_key = MemoryContextStrdup(poll_cxt, key);
	}
	if (p->rate_per_s > 0)
		p->st->tokens -= got;
	if (got < n)
	{
		/* one line per round, not one per shipment, when a carrier fails */
		if (pp->failed > 0)
			ereport(LOG,
					(errmsg("pg_shipsync: %d of %d tracking polls of provider \"%s\" failed or were not applied in the last round",
							pp->failed, pp->answered, p->name),
					 errdetail("The first: %s", pp->first_error)));
		pp->answered = pp->failed = 0;
		if (pp->first_error)
			pfree(pp->first_error);
		pp->first_error = NULL;
		pp->in_round = false;
		pp->next_round = TimestampTzPlusMilliseconds(pp->round_started,
													 (int64) pp->interval_s * 1000);
		if (pp->cursor_key)
			pfree(pp->cursor_key);
		pp->cursor_key = NULL;
	}
}

/*
 * Called by the dispatcher's loop, outside any transaction: start the
 * rounds that are due and send the polls there is room for.
 */
void
poller_send(HttpClient *client, Provider *providers, int nproviders, TimestampTz now)
{
	bool		in_tx = false;

	if (config_read_at == 0)
		poller_load_config(providers, nproviders, now);

	/*
	 * Parked tracking events of providers that went quiet expire too (a
	 * push expires those of its own provider): every idle_check_ms, the
	 * dispatcher's safety-net period, one indexed statement.
	 */
	if (now >= expire_due)
	{
		shipsync_begin_tx("expiring parked tracking events", false);
		if (SPI_execute("SELECT shipsync._expire_unmatched(NULL)", false, 0) != SPI_OK_SELECT)
			elog(ERROR, "expiring parked tracking events failed");
		shipsync_end_tx();
		expire_due = TimestampTzPlusMilliseconds(now, shipsync_idle_check_ms);
	}
	for (int i = 0; i < npolled; i++)
	{
		PollProvider *pp = &polled[i];
		Provider   *p = NULL;
		int			room;
		int			allowed;

		for (int k = 0; k < nproviders; k++)
			if (providers[k].id == pp->id)
				p = &providers[k];
		if (p == NULL || p->paused || p->secret_error || health_blocked(p, now))
			continue;
		if (!pp->in_round)
		{
			if (now < pp->next_round)
				continue;
			pp->in_round = true;
			pp->round_started = now;
			pp->cursor_key = NULL;
		}
		room = Min(POLL_INFLIGHT, p->max_inflight) - pp->inflight;
		allowed = provider_tokens(p, now);
		room = Min(room, Min(allowed, POLL_BATCH));
		if (room <= 0)
			continue;
		if (!in_tx)
		{
			shipsync_begin_tx("choosing shipments to poll", false);
			in_tx = true;
		}
		poller_next_batch(client, p, pp, room, now);
	}
	if (in_tx)
		shipsync_end_tx();
}

/* The dispatcher hands us its finished transfers: true if it was a poll. */
bool
poller_take(HttpTransfer *t)
{
	PollFlight *f;
	PollProvider *pp;

	if (t->owner != &poll_tag)
		return false;
	f = (PollFlight *) t;
	pp = find_polled(f->provider_id);
	if (pp && pp->inflight > 0)
		pp->inflight--;
	f->next = finished;
	finished = f;
	return true;
}

/*
 * Count a finished poll for its provider's round summary; with an error,
 * count it as failed (the first error of the round is kept).
 */
static void
poller_count(PollFlight *f, const char *error)
{
	PollProvider *pp = find_polled(f->provider_id);

	if (pp == NULL)
		return;
	if (error == NULL)
	{
		pp->answered++;
		return;
	}
	pp->failed++;
	if (pp->first_error == NULL)
		pp->first_error = MemoryContextStrdup(poll_cxt, error);
}

/* Apply one poll's answer */
static void
poller_apply_pulled(void *arg)
{
	PollFlight *f = (PollFlight *) arg;

	f->changed = tracking_apply_pulled(f->provider_name, f->xfer.response.data,
									   f->xfer.response.len);
}

/*
 * Apply one poll's answer (in its own subtransaction), waiting at most
 * shipsync.order_lock_timeout for an order row another session holds
 * (writeback_bounded()): then it is pulled again at the next round.
 */
static void
poller_apply_one(void *arg)
{
	writeback_bounded(poller_apply_pulled, arg);
}

/*
 * Apply the polls that finished: one transaction, one subtransaction per
 * answer (one open at a time).  Failures are counted, and summed up in one
 * LOG line when the provider's round ends.
 */
void
poller_apply(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	PollFlight *list = finished;
	int64		changed = 0;

	if (list == NULL)
		return;
	finished = NULL;

	shipsync_begin_tx("applying polled tracking", false);
	for (PollFlight *f = list; f != NULL; f = f->next)
	{
		HttpTransfer *t = &f->xfer;
		ErrorData  *e;

		poller_count(f, NULL);
		/* asked to wait: no poll (and no delivery) before then */
		health_poll_result(f->provider_id, f->provider_name, "tracking poll",
						   t->curl_code == CURLE_OK, t->http_status, t->retry_after,
						   t->ratelimit_reset);
		if (t->curl_code != CURLE_OK || t->http_status < 200 || t->http_status >= 300)
		{
			poller_count(f, psprintf("GET %s: %s", t->url,
									 t->curl_code != CURLE_OK ?
									 (t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->curl_code)) :
									 psprintf("HTTP %ld", t->http_status)));
			continue;
		}
		if ((e = shipsync_subxact(poller_apply_one, f)) == NULL)
			changed += f->changed;
		else
		{
			poller_count(f, psprintf("the tracking of shipment %s was not applied: %s",
									 f->shipment_id, e->message));
			FreeErrorData(e);
		}
	}
	shipsync_end_tx();
	MemoryContextSwitchTo(cxt);
	elog(DEBUG2, "pg_shipsync: polled tracking applied, %lld shipments changed",
		 (long long) changed);

	for (PollFlight *f = list, *next; f != NULL; f = next)
	{
		next = f->next;
		MemoryContextDelete(f->cxt);
	}
}

/* How long the dispatcher may sleep before a round falls due */
long
poller_timeout(TimestampTz now)
{
	long		timeout = expire_due > now ? (long) ((expire_due - now + 999) / 1000) : 0;

	for (int i = 0; i < npolled; i++)
	{
		PollProvider *pp = &polled[i];

		if (pp->in_round)
		{
			/*
			 * More of this round when a poll finishes (its socket wakes the
			 * dispatcher) or, with none in flight, when tokens have come.
			 */
			if (pp->inflight == 0)
				timeout = Min(timeout, 10);
			continue;
		}
		if (pp->next_round <= now)
			return 0;
		timeout = Min(timeout, (long) ((pp->next_round - now + 999) / 1000));
	}
	return timeout;
}

/* The dispatcher read its configuration again: so do we, at the next pass. */
void
poller_invalidate(void)
{
	config_read_at = 0;
}
