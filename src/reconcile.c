/*-------------------------------------------------------------------------
 *
 * reconcile.c
 *		Reconciliation in the dispatcher: the schedule, the pull of the
 *		carriers' side, and the launch of the comparison.
 *
 * A run (shipsync.reconcile_run) is started by shipsync.reconcile(), by the
 * daily schedule (shipsync.reconcile_at, local time) or, for the CRM side
 * only, every shipsync.reconcile_interval.  The dispatcher's loop calls in
 * here like it calls the tracking poller (poller.c):
 *
 *	- reconcile_send: start the runs that are due, then send the next
 *	  requests of every pull: one page at a time of a generic carrier's list
 *	  (GET {base_url}/shipments?updated_since=&cursor=&limit=, see
 *	  docs/wire-contract.md), or up to RECON_SEARCH_INFLIGHT lookups of
 *	  single orders at an sf_express carrier (EXP_RECE_SEARCH_ORDER_RESP),
 *	  on the dispatcher's own libcurl multi handle, beside deliveries.
 *	  Requests draw on the provider's token bucket (rate_limit_per_s, in
 *	  shared memory: health.c) and wait while it is paused, held by a
 *	  Retry-After or its circuit breaker is open, so a pull never sends
 *	  faster than the carrier allows nor crowds out deliveries; an answer
 *	  closes an open breaker, as a tracking poll's does;
 *	- reconcile_take / reconcile_apply: answers are stored into
 *	  shipsync.carrier_snapshot by _reconcile_page, one short transaction
 *	  per page or batch of lookups (not waiting for the disk: a page lost
 *	  in a crash is pulled again);
 *	- when a run's pulls are over, the comparison (one set-based pass over
 *	  a million rows takes seconds) runs in a short-lived background worker
 *	  (recon_worker.c), one per database at a time: deliveries never wait
 *	  for it.
 *
 * A failed request is sent again after a backoff (RECON_MAX_FAILURES in a
 * row fail the provider's pull: the run compares the others and fails).  A
 * wait the carrier asks for (Retry-After, or X-RateLimit-Reset on a 429 or
 * 503) holds the provider, as for deliveries.
 *
 * State: the pulls in flight live in this process only; the runs and their
 * progress live in shipsync.reconcile_run.  After a restart a pulling run
 * pulls again from its first page (the snapshot takes rows again without
 * harm) and a comparing one gets a new worker.  The state is read again
 * whenever the dispatcher reads its configuration (reconcile() wakes it so).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

#define RECON_PAGE_LIMIT 1000		/* shipments asked for per page */
#define RECON_SEARCH_INFLIGHT 16	/* sf_express lookups in flight per pull */
#define RECON_SEARCH_BATCH 256		/* orders read per query to look up */
#define RECON_MAX_FAILURES 5		/* failed requests in a row fail the pull */
#define RECON_TIME_FORMAT "YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\""	/* of a UTC time */

typedef enum PullMode
{
	PULL_LIST,
	PULL_SEARCH
} PullMode;

/* The pull of one provider for one run */
typedef struct Pull
{
	int64		run_id;
	int32		provider_id;
	PullMode	mode;
	char	   *since;			/* the window, as RFC 3339 text */
	char	   *until;
	char	   *cursor;			/* list: the next page; NULL: the first */
	uint64	   *cursors;		/* list: hashes of the cursors given so far */
	int			ncursors;
	char	  **queue;			/* search: orders to look up next */
	int			nqueue;
	int32		after_binding;	/* search: where the next query starts */
	char	   *after_key;
	bool		exhausted;		/* search: nothing left to read */
	int			inflight;
	int			failures;
	TimestampTz retry_at;
	bool		over;			/* done or failed, and recorded */
	/* search answers not stored yet */
	int			answered;
	int			nfound;
	char	  **found_id;
	char	  **found_tn;
	char	  **found_ref;
} Pull;

/* One request in flight: its own memory context holds all of it */
typedef struct ReconFlight
{
	HttpTransfer xfer;			/* first: http.c hands back this pointer */
	MemoryContext cxt;
	int64		run_id;
	int32		provider_id;
	char	   *order_key;		/* search: the order looked up */
	struct ReconFlight *next;
} ReconFlight;

static char recon_tag;			/* HttpTransfer.owner of our requests */
static MemoryContext recon_cxt = NULL;
static Pull *pulls = NULL;
static int	npulls = 0;
static bool loaded = false;
static int64 comparing_run = 0; /* a run waiting for its comparison */
static BackgroundWorkerHandle *worker = NULL;
static int64 worker_run = 0;
static TimestampTz daily_due = 0;
static TimestampTz crm_due = 0;
static int	crm_due_interval_s = 0;	/* the interval crm_due was counted with */
static ReconFlight *finished = NULL;
static HttpClient *recon_client = NULL;	/* the dispatcher's */

static Pull *
find_pull(int64 run_id, int32 provider_id)
{
	for (int i = 0; i < npulls; i++)
		if (pulls[i].run_id == run_id && pulls[i].provider_id == provider_id)
			return &pulls[i];
	return NULL;
}

static Pull *
add_pull(int64 run_id, int32 provider_id, const char *mode, const char *since,
		 const char *until)
{
	Pull	   *p = find_pull(run_id, provider_id);

	if (p != NULL)
		return p;
	pulls = pulls == NULL ?
		MemoryContextAllocZero(recon_cxt, sizeof(Pull)) :
		repalloc(pulls, sizeof(Pull) * (npulls + 1));
	p = &pulls[npulls++];
	memset(p, 0, sizeof(Pull));
	p->run_id = run_id;
	p->provider_id = provider_id;
	p->mode = strcmp(mode, "search") == 0 ? PULL_SEARCH : PULL_LIST;
	p->since = MemoryContextStrdup(recon_cxt, since);
	p->until = MemoryContextStrdup(recon_cxt, until);
	p->after_binding = -1;
	return p;
}

/* Forget the pulls that are over and have nothing in flight. */
static void
compact_pulls(void)
{
	int			k = 0;

	for (int i = 0; i < npulls; i++)
	{
		if (pulls[i].over && pulls[i].inflight == 0)
		{
			if (pulls[i].cursors)
				pfree(pulls[i].cursors);
			continue;
		}
		if (k != i)
			pulls[k] = pulls[i];
		k++;
	}
	npulls = k;
}

/*
 * Start a pending run (_reconcile_start): its pulls are added here.  In a
 * transaction.
 */
static void
start_run(int64 run_id)
{
	Datum		arg = Int64GetDatum(run_id);
	Oid			t[1] = {INT8OID};
	MemoryContext old;

	if (SPI_execute_with_args("SELECT provider_id, mode,"
							  " to_char(since AT TIME ZONE 'UTC', '" RECON_TIME_FORMAT "'),"
							  " to_char(until AT TIME ZONE 'UTC', '" RECON_TIME_FORMAT "')"
							  " FROM shipsync._reconcile_start($1)",
							  1, t, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "starting reconciliation run " INT64_FORMAT " failed", run_id);
	old = MemoryContextSwitchTo(recon_cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		add_pull(run_id, DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull)),
				 SPI_getvalue(tup, desc, 2), SPI_getvalue(tup, desc, 3),
				 SPI_getvalue(tup, desc, 4));
	}
	MemoryContextSwitchTo(old);
}

/*
 * Read the runs that are not over: pulls of pulling runs this process does
 * not know yet (after a restart: from the first page), the run waiting for
 * a comparison, and the daily schedule; start the pending runs and the
 * runs that are due.  Outside any transaction.
 */
static void
reconcile_load(TimestampTz now)
{
	bool		crm = shipsync_reconcile_interval_s > 0 && crm_due != 0 && now >= crm_due;
	Datum		args[2];
	Oid			t[2] = {INT4OID, BOOLOID};
	bool		isnull;

	if (recon_cxt == NULL)
		recon_cxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync reconcile",
										  ALLOCSET_SMALL_SIZES);
	loaded = true;
	shipsync_begin_tx("reading reconciliation runs", false);

	/* the schedule: a CRM-side pass when due, the daily run */
	args[0] = Int32GetDatum(shipsync_reconcile_at_minute);
	args[1] = BoolGetDatum(crm);
	if (SPI_execute_with_args("SELECT shipsync._reconcile_schedule($1, $2)", 2, t, args, NULL,
							  false, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading the reconciliation schedule failed");
	daily_due = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (isnull)
		daily_due = 0;
	if (crm || crm_due == 0)
	{
		crm_due = TimestampTzPlusMilliseconds(now, (int64) Max(shipsync_reconcile_interval_s, 1) * 1000);
		crm_due_interval_s = shipsync_reconcile_interval_s;
	}

	if (SPI_execute("SELECT run_id, state, x.key::integer, x.value->>'mode',"
					" to_char(window_start AT TIME ZONE 'UTC', '" RECON_TIME_FORMAT "'),"
					" to_char(window_end AT TIME ZONE 'UTC', '" RECON_TIME_FORMAT "')"
					" FROM shipsync.reconcile_run r"
					" LEFT JOIN LATERAL jsonb_each(r.pulls) x ON r.state = 'pulling'"
					"  AND x.value->>'state' = 'pulling'"
					" WHERE r.state IN ('pending', 'pulling', 'comparing')"
					" ORDER BY run_id, 3", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading reconciliation runs failed");
	{
		SPITupleTable *tt = SPI_tuptable;
		uint64		n = SPI_processed;
		int64	   *pending = palloc(sizeof(int64) * (n + 1));
		int			npending = 0;
		MemoryContext old = MemoryContextSwitchTo(recon_cxt);

		comparing_run = 0;
		compact_pulls();
		for (int i = 0; i < npulls; i++)
			pulls[i].over = true;	/* unless it is still pulling */
		for (uint64 i = 0; i < n; i++)
		{
			HeapTuple	tup = tt->vals[i];
			int64		run = DatumGetInt64(SPI_getbinval(tup, tt->tupdesc, 1, &isnull));
			char	   *state = SPI_getvalue(tup, tt->tupdesc, 2);
			int32		pid = DatumGetInt32(SPI_getbinval(tup, tt->tupdesc, 3, &isnull));

			if (strcmp(state, "pending") == 0)
				pending[npending++] = run;
			else if (strcmp(state, "comparing") == 0 && comparing_run == 0)
				comparing_run = run;
			else if (strcmp(state, "pulling") == 0 && !isnull)
				add_pull(run, pid, SPI_getvalue(tup, tt->tupdesc, 4),
						 SPI_getvalue(tup, tt->tupdesc, 5),
						 SPI_getvalue(tup, tt->tupdesc, 6))->over = false;
		}
		MemoryContextSwitchTo(old);
		for (int i = 0; i < npending; i++)
			start_run(pending[i]);
		/* a run started with nothing to pull compares at once: look again */
		loaded = npending == 0;
	}
	shipsync_end_tx();
}

/* ---------- requests ---------- */

/* A new request of pull pl, in a memory context of its own (now current) */
static ReconFlight *
flight_begin(Pull *pl, Provider *p)
{
	MemoryContext fcxt = AllocSetContextCreate(TopMemoryContext,
											   "pg_shipsync reconcile request",
											   ALLOCSET_SMALL_SIZES);
	ReconFlight *f = MemoryContextAllocZero(fcxt, sizeof(ReconFlight));

	MemoryContextSwitchTo(fcxt);
	f->cxt = fcxt;
	f->run_id = pl->run_id;
	f->provider_id = pl->provider_id;
	f->xfer.owner = &recon_tag;
	f->xfer.timeout_ms = p->timeout_ms;
	f->xfer.tls = p->tls;		/* the provider's TLS options, as for deliveries */
	pl->inflight++;
	return f;
}

/* The next page of a generic carrier's list */
static void
send_page(HttpClient *client, Provider *p, Pull *pl)
{
	MemoryContext old = CurrentMemoryContext;
	ReconFlight *f = flight_begin(pl, p);
	StringInfoData url;

	initStringInfo(&url);
	appendStringInfo(&url, "%s/shipments?updated_since=%s&limit=%d", p->base_url,
					 shipsync_url_escape(pl->since), RECON_PAGE_LIMIT);
	if (pl->cursor)
		appendStringInfo(&url, "&cursor=%s", shipsync_url_escape(pl->cursor));
	f->xfer.method = "GET";
	f->xfer.url = url.data;
	f->xfer.headers = dialect_headers(p, NULL, false);
	http_submit(client, &f->xfer);
	MemoryContextSwitchTo(old);
}

/* Lookups of single orders at SF Express, as many as room allows */
static int
send_searches(HttpClient *client, Provider *p, Pull *pl, int room)
{
	int			sent = 0;

	if (p->dialect->lookup == NULL)
		elog(ERROR, "dialect %s cannot look an order up", p->dialect->name);
	while (sent < room && pl->nqueue > 0)
	{
		MemoryContext old = CurrentMemoryContext;
		char	   *key = pl->queue[--pl->nqueue];
		ReconFlight *f = flight_begin(pl, p);

		f->order_key = pstrdup(key);
		f->xfer.method = "POST";
		f->xfer.url = pstrdup(p->base_url);
		f->xfer.body = p->dialect->lookup(p, key,
										  psprintf("reconcile-" INT64_FORMAT "-%s",
												   pl->run_id, key));
		f->xfer.headers = dialect_headers(p, NULL, true);
		http_submit(client, &f->xfer);
		MemoryContextSwitchTo(old);
		pfree(key);
		sent++;
	}
	return sent;
}

/*
 * The next orders an sf_express pull looks up: its provider's live
 * shipments updated in the window (those a missing_at_carrier is judged
 * on), in key order from where the last query stopped.  In a transaction.
 */
static void
refill_queue(Pull *pl)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[6];
	MemoryContext old;

	if (plan == NULL)
	{
		Oid			t[6] = {INT4OID, TEXTOID, TEXTOID, INT4OID, TEXTOID, INT4OID};

		plan = shipsync_prepare_saved(
			"SELECT s.binding_id, s.order_key, s.provider_shipment_id"
			" FROM shipsync.shipment s"
			" JOIN shipsync.binding b ON b.binding_id = s.binding_id AND b.active AND b.provider_id = $1"
			" WHERE s.provider_id = $1 AND s.provider_shipment_id IS NOT NULL"
			" AND s.status <> 'cancelled'"
			" AND s.updated_at >= $2::timestamptz AND s.updated_at < $3::timestamptz"
			" AND (s.binding_id, s.order_key) > ($4, $5)"
			" ORDER BY s.binding_id, s.order_key LIMIT $6", 6, t);
	}
	args[0] = Int32GetDatum(pl->provider_id);
	args[1] = CStringGetTextDatum(pl->since);
	args[2] = CStringGetTextDatum(pl->until);
	args[3] = Int32GetDatum(pl->after_binding);
	args[4] = CStringGetTextDatum(pl->after_key ? pl->after_key : "");
	args[5] = Int32GetDatum(RECON_SEARCH_BATCH);
	if (SPI_execute_plan(plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the orders to look up failed");
	old = MemoryContextSwitchTo(recon_cxt);
	pl->queue = pl->queue == NULL ? palloc(sizeof(char *) * RECON_SEARCH_BATCH) : pl->queue;
	/* the queue is a stack: push in reverse so that key order is kept */
	for (int64 i = (int64) SPI_processed - 1; i >= 0; i--)
		pl->queue[pl->nqueue++] = pstrdup(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3));
	if (SPI_processed > 0)
	{
		HeapTuple	last = SPI_tuptable->vals[SPI_processed - 1];
		bool		isnull;

		pl->after_binding = DatumGetInt32(SPI_getbinval(last, SPI_tuptable->tupdesc, 1, &isnull));
		if (pl->after_key)
			pfree(pl->after_key);
		pl->after_key = pstrdup(SPI_getvalue(last, SPI_tuptable->tupdesc, 2));
	}
	pl->exhausted = SPI_processed < RECON_SEARCH_BATCH;
	MemoryContextSwitchTo(old);
}

/* ---------- answers ---------- */

/* A text[] of n strings, NULLs where s[i] is NULL */
static Datum
text_array(char **s, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};

	for (int i = 0; i < n; i++)
	{
		nulls[i] = s == NULL || s[i] == NULL;
		d[i] = nulls[i] ? (Datum) 0 : CStringGetTextDatum(s[i]);
	}
	if (n == 0)
		return PointerGetDatum(construct_empty_array(TEXTOID));
	return PointerGetDatum(construct_md_array(d, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Record what a pull got (_reconcile_page), or that it failed
 * (_reconcile_pull_failed, when err is set), in a transaction of its own.
 * A run whose pulls are all over waits for its comparison.  A store that
 * fails (a carrier's time that is not a time) fails the pull.
 */
static void
record_pull(Pull *pl, int requests, int n, char **ids, char **refs, char **tns,
			char **statuses, char **updated, char **fees, bool done, const char *err)
{
	MemoryContext cxt = CurrentMemoryContext;
	char	   *volatile state = NULL;

	PG_TRY();
	{
		Datum		a[10];
		Oid			t[10] = {INT8OID, INT4OID, INT4OID, TEXTARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, BOOLOID};
		Oid			ft[4] = {INT8OID, INT4OID, INT4OID, TEXTOID};
		bool		isnull;
		int			rc;

		shipsync_begin_tx("storing the carrier's shipments", false);
		/* a page lost in a crash is asked for again: no need to wait for the disk */
		if (SPI_execute("SET LOCAL synchronous_commit = off", false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "SET LOCAL synchronous_commit failed");
		a[0] = Int64GetDatum(pl->run_id);
		a[1] = Int32GetDatum(pl->provider_id);
		a[2] = Int32GetDatum(requests);
		if (err)
		{
			a[3] = CStringGetTextDatum(err);
			rc = SPI_execute_with_args("SELECT shipsync._reconcile_pull_failed($1, $2, $3, $4)",
									   4, ft, a, NULL, false, 1);
		}
		else
		{
			a[3] = text_array(ids, n);
			a[4] = text_array(refs, n);
			a[5] = text_array(tns, n);
			a[6] = text_array(statuses, n);
			a[7] = text_array(updated, n);
			a[8] = text_array(fees, n);
			a[9] = BoolGetDatum(done);
			rc = SPI_execute_with_args("SELECT shipsync._reconcile_page($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
									   10, t, a, NULL, false, 1);
		}
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "recording a reconciliation pull failed");
		(void) SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			state = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
		shipsync_end_tx();
		MemoryContextSwitchTo(cxt);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		if (err)
			PG_RE_THROW();
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(cxt);
		record_pull(pl, requests, 0, NULL, NULL, NULL, NULL, NULL, NULL, false,
					psprintf("the carrier's answer could not be stored: %s", edata->message));
		FreeErrorData(edata);
		return;
	}
	PG_END_TRY();

	if (err || done || state == NULL || strcmp(state, "pulling") != 0)
		pl->over = true;
	if (state != NULL && strcmp(state, "comparing") == 0)
		comparing_run = pl->run_id;
}

/* The answers of an sf_express pull so far: into the snapshot */
static void
search_flush(Pull *pl, bool done)
{
	if (pl->answered == 0 && !done)
		return;
	record_pull(pl, pl->answered, pl->nfound, pl->found_id, pl->found_ref, pl->found_tn,
				NULL, NULL, NULL, done, NULL);
	for (int i = 0; i < pl->nfound; i++)
	{
		pfree(pl->found_id[i]);
		if (pl->found_ref[i])
			pfree(pl->found_ref[i]);
		if (pl->found_tn[i])
			pfree(pl->found_tn[i]);
	}
	pl->nfound = 0;
	pl->answered = 0;
}

/*
 * A request of the pull failed: wait (as long as the carrier asked, by
 * Retry-After or, on a 429 or 503, X-RateLimit-Reset, which also holds the
 * provider; else a backoff) and try again; after RECON_MAX_FAILURES in a
 * row the pull fails.
 */
static void
pull_failed(Pull *pl, Provider *p, HttpTransfer *t, const char *msg, TimestampTz now)
{
	long		delay = -1;

	if (++pl->failures >= RECON_MAX_FAILURES)
	{
		if (pl->mode == PULL_SEARCH)
			search_flush(pl, false);
		record_pull(pl, 0, 0, NULL, NULL, NULL, NULL, NULL, NULL, false,
					psprintf("%s (%d requests in a row failed)", msg, pl->failures));
		ereport(LOG,
				(errmsg("pg_shipsync: the reconciliation pull of provider \"%s\" failed",
						p ? p->name : "?"),
				 errdetail("%s", msg)));
		return;
	}
	if (t->curl_code == CURLE_OK)
		delay = shipsync_wait_asked(t->http_status, t->retry_after, t->ratelimit_reset,
									time(NULL));
	if (delay >= 0 && p)
		health_hold(p, TimestampTzPlusMilliseconds(now, delay));
	if (delay < 0)
		delay = shipsync_backoff_ms(pl->failures, 1000, 60000, 0.5);
	pl->retry_at = TimestampTzPlusMilliseconds(now, delay);
}

/* Why a transfer did not succeed, in words */
static char *
transfer_failure(HttpTransfer *t)
{
	if (t->too_large)
		return psprintf("%s %s: the answer is larger than shipsync.max_response_bytes", t->method, t->url);
	if (t->curl_code != CURLE_OK)
		return psprintf("%s %s: %s", t->method, t->url,
						t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->curl_code));
	return psprintf("%s %s: HTTP %ld: %.200s", t->method, t->url, t->http_status,
					t->response.data ? t->response.data : "");
}

static bool
transfer_ok(HttpTransfer *t)
{
	return t->curl_code == CURLE_OK && !t->too_large &&
		t->http_status >= 200 && t->http_status < 300;
}

/*
 * Whether the pull must wait: its provider paused, its secrets unreadable,
 * held by a Retry-After or its circuit breaker (health.c), or the pull
 * waiting to try again.
 */
static bool
pull_blocked(Pull *pl, Provider *p, TimestampTz now)
{
	return p->paused || p->secret_error || health_blocked(p, now) || now < pl->retry_at;
}

/*
 * Ask for the next page of a list if the pull may: one page in flight, a
 * token of the provider's, not blocked.
 */
static void
send_next_page(HttpClient *client, Provider *p, Pull *pl, TimestampTz now)
{
	if (pl->over || pl->inflight > 0 || p == NULL || pull_blocked(pl, p, now) ||
		provider_tokens(p, now) < 1)
		return;
	send_page(client, p, pl);
	if (p->rate_per_s > 0)
		p->st->tokens -= 1;
}

/*
 * Whether a list's next_cursor is one it gave before in this pull, which
 * would have the same pages asked for again and again: remembered (by a
 * 64-bit hash, in recon_cxt) when it is new.
 */
static bool
cursor_seen(Pull *pl, const char *cursor)
{
	uint64		h = hash_bytes_extended((const unsigned char *) cursor, (int) strlen(cursor), 0);

	for (int i = 0; i < pl->ncursors; i++)
		if (pl->cursors[i] == h)
			return true;
	if (pl->ncursors % 64 == 0)
		pl->cursors = pl->cursors == NULL ?
			MemoryContextAlloc(recon_cxt, sizeof(uint64) * 64) :
			repalloc(pl->cursors, sizeof(uint64) * (pl->ncursors + 64));
	pl->cursors[pl->ncursors++] = h;
	return false;
}

/* A page of a generic carrier's list came back */
static void
apply_page(Pull *pl, Provider *p, HttpTransfer *t, TimestampTz now)
{
	ShipListPage page;
	char		err[256];
	char	  **cols[6];
	bool		done;
	int			n = 0;

	if (!transfer_ok(t))
	{
		pull_failed(pl, p, t, transfer_failure(t), now);
		return;
	}
	if (!shipsync_parse_shipment_list(t->response.data, t->response.len, &page, err, sizeof(err)))
	{
		shipsync_free_shipment_list(&page);
		pull_failed(pl, p, t, psprintf("GET %s: the answer is not a shipment list: %s", t->url, err), now);
		return;
	}
	/* a carrier that hands out a cursor again would be asked for ever */
	if (page.next_cursor && cursor_seen(pl, page.next_cursor))
	{
		char	   *msg = psprintf("GET %s: the carrier gave a next_cursor \"%s\" it already gave in this pull: its list would never end",
								   t->url, dialect_excerpt(page.next_cursor, strlen(page.next_cursor)));

		shipsync_free_shipment_list(&page);
		record_pull(pl, 1, 0, NULL, NULL, NULL, NULL, NULL, NULL, false, msg);
		ereport(LOG,
				(errmsg("pg_shipsync: the reconciliation pull of provider \"%s\" failed", p ? p->name : "?"),
				 errdetail("%s", msg)));
		return;
	}
	/* out of json.c's malloc'd memory at once */
	for (int c = 0; c < 6; c++)
		cols[c] = palloc(sizeof(char *) * Max(page.n, 1));
	for (int i = 0; i < page.n; i++)
	{
		ShipListItem *it = &page.items[i];

		/*
		 * A shipment whose id, order or tracking number is longer than any
		 * of ours can be (a create's answer refuses such an id or number,
		 * capture such a key) is no shipment of ours: left out, and said
		 * in the log.  Stored, its snapshot row was over btree's limit
		 * for an index entry, and the pull, the whole list's, failed at
		 * every run while the carrier listed it.
		 */
		if (strlen(it->id) > SHIPSYNC_MAX_ID_BYTES ||
			(it->order_ref && strlen(it->order_ref) > SHIPSYNC_MAX_KEY_BYTES) ||
			(it->tracking_number && strlen(it->tracking_number) > SHIPSYNC_MAX_ID_BYTES))
		{
			ereport(LOG,
					(errmsg("pg_shipsync: the reconciliation pull of provider \"%s\" left out a shipment its list holds",
							p ? p->name : "?"),
					 errdetail("Shipment \"%s\" has an id, order or tracking number longer than any of ours can be.",
							   dialect_excerpt(it->id, strlen(it->id)))));
			continue;
		}
		cols[0][n] = pstrdup(it->id);
		cols[1][n] = it->order_ref ? pstrdup(it->order_ref) : NULL;
		cols[2][n] = it->tracking_number ? pstrdup(it->tracking_number) : NULL;
		cols[3][n] = it->status ? pstrdup(it->status) : NULL;
		cols[4][n] = it->updated_at ? pstrdup(it->updated_at) : NULL;
		cols[5][n] = it->fees ? pstrdup(it->fees) : NULL;
		n++;
	}
	done = page.next_cursor == NULL;
	if (pl->cursor)
		pfree(pl->cursor);
	pl->cursor = done ? NULL : MemoryContextStrdup(recon_cxt, page.next_cursor);
	shipsync_free_shipment_list(&page);
	pl->failures = 0;
	/* asked for now, the next page leaves at the dispatcher's next wait */
	if (!done)
		send_next_page(recon_client, p, pl, now);
	record_pull(pl, 1, n, cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], done, NULL);
}

/* The answer to one sf_express lookup came back */
static void
apply_search(Pull *pl, Provider *p, ReconFlight *f, TimestampTz now)
{
	HttpTransfer *t = &f->xfer;
	SfResponse	sf;
	char		err[256];
	char	   *msg = NULL;

	if (!transfer_ok(t))
		msg = transfer_failure(t);
	else if (!shipsync_parse_sf_response(t->response.data, t->response.len, true, &sf, err, sizeof(err)))
		msg = psprintf("looking up order %s: %s", f->order_key, err);
	else
	{
		if (sf.cls == SF_OK || sf.cls == SF_NOT_FOUND)
		{
			MemoryContext old = MemoryContextSwitchTo(recon_cxt);

			if (sf.cls == SF_OK)
			{
				if (pl->nfound % 64 == 0)
				{
					int			cap = pl->nfound + 64;

					pl->found_id = pl->found_id ? repalloc(pl->found_id, sizeof(char *) * cap) : palloc(sizeof(char *) * cap);
					pl->found_ref = pl->found_ref ? repalloc(pl->found_ref, sizeof(char *) * cap) : palloc(sizeof(char *) * cap);
					pl->found_tn = pl->found_tn ? repalloc(pl->found_tn, sizeof(char *) * cap) : palloc(sizeof(char *) * cap);
				}
				pl->found_id[pl->nfound] = pstrdup(f->order_key);
				pl->found_ref[pl->nfound] = pstrdup(sf.order_id ? sf.order_id : f->order_key);
				pl->found_tn[pl->nfound] = sf.waybill ? pstrdup(sf.waybill) : NULL;
				pl->nfound++;
			}
			pl->answered++;
			pl->failures = 0;
			MemoryContextSwitchTo(old);
		}
		else
			msg = psprintf("looking up order %s: SF Express answered %s: %s", f->order_key,
						   sf.code ? sf.code : "?", sf.message ? sf.message : "");
		shipsync_free_sf_response(&sf);
	}
	if (msg)
	{
		/* looked up again after the wait */
		pl->queue[pl->nqueue++] = MemoryContextStrdup(recon_cxt, f->order_key);
		pull_failed(pl, p, t, msg, now);
	}
}

/* ---------- the comparison's worker ---------- */

/*
 * A run waits for its comparison: start the worker (one per database at a
 * time).  A worker that stopped leaves its run done or failed; if it died
 * before recording either, the run is failed here.
 */
static void
compare_launch(void)
{
	BackgroundWorker w;
	MemoryContext old;

	if (worker != NULL)
	{
		pid_t		pid;
		Oid			t[2] = {INT8OID, TEXTOID};
		Datum		a[2];

		if (GetBackgroundWorkerPid(worker, &pid) != BGWH_STOPPED)
			return;
		pfree(worker);
		worker = NULL;
		shipsync_begin_tx("recording a reconciliation worker's end", false);
		a[0] = Int64GetDatum(worker_run);
		a[1] = CStringGetTextDatum("the comparison's worker exited before it finished: see the server log");
		if (SPI_execute_with_args("UPDATE shipsync.reconcile_run SET state = 'failed', error = $2,"
								  " finished_at = now() WHERE run_id = $1 AND state = 'comparing'",
								  2, t, a, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "recording a reconciliation worker's end failed");
		shipsync_end_tx();
		worker_run = 0;
		loaded = false;			/* another run may be waiting */
		return;
	}
	if (comparing_run == 0)
		return;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(w.bgw_library_name, "pg_shipsync", BGW_MAXLEN);
	strlcpy(w.bgw_function_name, "shipsync_reconcile_main", BGW_MAXLEN);
	snprintf(w.bgw_name, BGW_MAXLEN, "pg_shipsync reconcile run " INT64_FORMAT, comparing_run);
	strlcpy(w.bgw_type, "pg_shipsync reconcile", BGW_MAXLEN);
	snprintf(w.bgw_extra, BGW_EXTRALEN, "%u " INT64_FORMAT, MyDatabaseId, comparing_run);
	w.bgw_notify_pid = MyProcPid;
	old = MemoryContextSwitchTo(recon_cxt);
	if (RegisterDynamicBackgroundWorker(&w, &worker))
	{
		worker_run = comparing_run;
		comparing_run = 0;
	}
	else
	{
		static TimestampTz said = 0;

		worker = NULL;
		if (TimestampDifferenceExceeds(said, GetCurrentTimestamp(), 600 * 1000))
		{
			said = GetCurrentTimestamp();
			ereport(LOG,
					(errmsg("pg_shipsync: no background worker slot for the comparison of reconciliation run " INT64_FORMAT,
							comparing_run),
					 errhint("Raise max_worker_processes: reconciliation needs one worker per database while it compares.")));
		}
	}
	MemoryContextSwitchTo(old);
}

/* ---------- the dispatcher's calls ---------- */

static long
ms_until(TimestampTz when, TimestampTz now)
{
	return when <= now ? 0 : (long) ((when - now + 999) / 1000);
}

static Provider *
find_provider(Provider *providers, int nproviders, int32 id)
{
	for (int i = 0; i < nproviders; i++)
		if (providers[i].id == id)
			return &providers[i];
	return NULL;
}

/*
 * Send what the pulls may send now: a page at a time of a list, lookups of
 * single orders up to RECON_SEARCH_INFLIGHT, within the provider's token
 * bucket, never while it is paused or held.
 */
static void
send_pulls(HttpClient *client, Provider *providers, int nproviders, TimestampTz now)
{
	bool		in_tx = false;

	for (int i = 0; i < npulls; i++)
	{
		Pull	   *pl = &pulls[i];
		Provider   *p = find_provider(providers, nproviders, pl->provider_id);
		int			room;
		int			sent;

		if (pl->over || p == NULL || pull_blocked(pl, p, now))
			continue;
		if (pl->mode == PULL_LIST)
		{
			send_next_page(client, p, pl, now);
			continue;
		}
		if (pl->nqueue == 0 && !pl->exhausted)
		{
			if (!in_tx)
				shipsync_begin_tx("choosing orders to look up", false);
			in_tx = true;
			refill_queue(pl);
		}
		room = Min(RECON_SEARCH_INFLIGHT, p->max_inflight) - pl->inflight;
		room = Min(room, provider_tokens(p, now));
		sent = room > 0 ? send_searches(client, p, pl, room) : 0;
		if (p->rate_per_s > 0)
			p->st->tokens -= sent;
	}
	if (in_tx)
		shipsync_end_tx();
	/* sf_express pulls with nothing left to look up */
	for (int i = 0; i < npulls; i++)
		if (!pulls[i].over && pulls[i].mode == PULL_SEARCH && pulls[i].exhausted &&
			pulls[i].nqueue == 0 && pulls[i].inflight == 0)
			search_flush(&pulls[i], true);
}

/*
 * Called by the dispatcher's loop, outside any transaction: start the runs
 * that are due, send the pulls' next requests, start a comparison.
 */
void
reconcile_send(HttpClient *client, Provider *providers, int nproviders, TimestampTz now)
{
	recon_client = client;
	if (!loaded || (daily_due != 0 && now >= daily_due) ||
		(shipsync_reconcile_interval_s > 0 && crm_due != 0 && now >= crm_due))
		reconcile_load(now);
	send_pulls(client, providers, nproviders, now);
	compare_launch();
}

/* The dispatcher hands us its finished transfers: true if it was ours. */
bool
reconcile_take(HttpTransfer *t)
{
	ReconFlight *f;
	Pull	   *pl;

	if (t->owner != &recon_tag)
		return false;
	f = (ReconFlight *) t;
	pl = find_pull(f->run_id, f->provider_id);
	if (pl && pl->inflight > 0)
		pl->inflight--;
	f->next = finished;
	finished = f;
	return true;
}

/* Store the answers that came back, then free their requests. */
void
reconcile_apply(Provider *providers, int nproviders, TimestampTz now)
{
	ReconFlight *list = finished;

	finished = NULL;
	for (ReconFlight *f = list; f != NULL; f = f->next)
	{
		Pull	   *pl = find_pull(f->run_id, f->provider_id);
		Provider   *p = find_provider(providers, nproviders, f->provider_id);

		if (p && f->xfer.curl_code == CURLE_OK && f->xfer.http_status > 0 &&
			f->xfer.http_status < 500)
			health_poll_answered(p->id, p->name, now);	/* the carrier is back */
		if (pl == NULL || pl->over)
			continue;			/* the run is over: what it asked is of no use */
		if (pl->mode == PULL_LIST)
			apply_page(pl, p, &f->xfer, now);
		else
			apply_search(pl, p, f, now);
	}
	/* one store per pull for the lookups answered */
	for (int i = 0; i < npulls; i++)
		if (!pulls[i].over && pulls[i].mode == PULL_SEARCH)
			search_flush(&pulls[i], pulls[i].exhausted && pulls[i].nqueue == 0 &&
						 pulls[i].inflight == 0);
	for (ReconFlight *f = list, *next; f != NULL; f = next)
	{
		next = f->next;
		MemoryContextDelete(f->cxt);
	}
}

/* How long the dispatcher may sleep before something of ours falls due */
long
reconcile_timeout(Provider *providers, int nproviders, TimestampTz now)
{
	long		timeout = shipsync_idle_check_ms;

	if (!loaded)
		return 0;
	if (worker != NULL || comparing_run != 0)
		timeout = Min(timeout, 1000);	/* a worker's end also wakes us */
	if (daily_due != 0)
		timeout = Min(timeout, ms_until(daily_due, now));
	if (shipsync_reconcile_interval_s > 0 && crm_due != 0)
		timeout = Min(timeout, ms_until(crm_due, now));
	for (int i = 0; i < npulls; i++)
	{
		Pull	   *pl = &pulls[i];
		Provider   *p = find_provider(providers, nproviders, pl->provider_id);
		TimestampTz due;

		if (pl->over || pl->inflight > 0 || p == NULL || p->paused || p->secret_error)
			continue;			/* an answer, or resume(), wakes us */
		due = Max(pl->retry_at, health_wake_at(p, now));
		if (due > now)
			timeout = Min(timeout, ms_until(due, now));
		else if (health_blocked(p, now))
			continue;			/* a probe's answer wakes us */
		else if (p->rate_per_s > 0 && p->st->tokens < 1)
			timeout = Min(timeout, (long) ((1 - p->st->tokens) * 1000 / p->rate_per_s) + 1);
		else
			timeout = 0;
	}
	return timeout;
}

/*
 * The dispatcher read its configuration again: so do we, at the next pass.
 * A new shipsync.reconcile_interval counts from the last CRM-side pass, not
 * from the time the old one made due: an hour shortened to a minute does
 * not wait out the hour.
 */
void
reconcile_invalidate(void)
{
	loaded = false;
	if (crm_due != 0 && crm_due_interval_s != shipsync_reconcile_interval_s)
	{
		crm_due = TimestampTzPlusMilliseconds(crm_due,
											  ((int64) Max(shipsync_reconcile_interval_s, 1) -
											   Max(crm_due_interval_s, 1)) * 1000);
		crm_due_interval_s = shipsync_reconcile_interval_s;
	}
}
