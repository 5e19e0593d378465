/*-------------------------------------------------------------------------
 *
 * health.c
 *		A provider's health: its circuit breaker, its Retry-After hold, its
 *		rate-limit bucket and the counters of shipsync.provider_health.
 *
 * All of it lives in shared memory (one ShipsyncProviderState per database
 * and provider, allocated by pg_shipsync.c), so that a dispatcher that dies
 * and is started again keeps the breaker open, the hold and the tokens: a
 * crash loop cannot hammer a carrier that asked to wait.  Only the
 * dispatcher of the entry's database writes it, under health_lock (the
 * token bucket without the lock: the view does not show it); the view
 * shipsync.provider_health reads it under the lock.  When every entry is
 * taken, a provider's state is kept in this process only (a WARNING says
 * so once) and is lost with it.
 *
 * The hold: a 429 or 503 that asked to wait (at most a day, retry.c)
 * holds every intent of the provider until then; a provider seen paused
 * has its hold ended, so that pause() and resume() send again at once.
 *
 * The breaker: breaker_failures consecutive attempts whose error class is a
 * breaker class (transport failures and 5xx, see retry.c) open it: nothing
 * is sent to the provider for breaker_cooldown_ms, its intents wait (they
 * neither count attempts nor die); then one intent goes as a probe
 * (half-open).  An answer that is not such a failure closes the breaker; a
 * failed probe opens it again for twice as long, up to 5 minutes.  Opening
 * and closing are logged once each.  A dispatcher that starts while the
 * breaker was half-open (its probe's answer died with the old process)
 * sends a new probe.
 *
 * Counters: per minute for the last hour (requests, successes, failures by
 * error class), and a latency histogram per minute for the last five
 * (geometric buckets, 35% wide: percentiles are interpolated within one).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

#define BREAKER_MAX_COOLDOWN_MS (5 * 60 * 1000)
#define LATENCY_RATIO 1.35		/* bucket i > 0: [RATIO^(i-1), RATIO^i) ms */

/* Entries kept in this process when shared memory has no room */
static ShipsyncProviderState *local_states = NULL;
static int	nlocal_states = 0;
static bool health_started = false;
static Oid	health_extoid = InvalidOid;	/* the extension the providers belong to */

static ShipsyncProviderState *
local_state(int32 provider_id)
{
	for (int i = 0; i < nlocal_states; i++)
		if (local_states[i].provider_id == provider_id)
			return &local_states[i];
	local_states = local_states ?
		repalloc(local_states, sizeof(ShipsyncProviderState) * (nlocal_states + 1)) :
		MemoryContextAlloc(TopMemoryContext, sizeof(ShipsyncProviderState));
	memset(&local_states[nlocal_states], 0, sizeof(ShipsyncProviderState));
	local_states[nlocal_states].dbid = MyDatabaseId;
	local_states[nlocal_states].provider_id = provider_id;
	ereport(WARNING,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("pg_shipsync: no room in shared memory for the state of provider %d", provider_id),
			 errdetail("At most %d providers of all databases keep their breaker, holds and counters across dispatcher restarts.",
					   SHIPSYNC_MAX_PROVIDER_STATES),
			 errhint("Drop providers that are no longer used.")));
	return &local_states[nlocal_states++];
}

/*
 * Give each of the n providers, of the extension whose OID is extoid, its
 * state, after a (re)load of the configuration; free the entries of
 * providers that are gone.  The first time in this process, what a dead
 * dispatcher left in flight is gone with it: no request in flight, and a
 * half-open breaker sends a new probe.
 */
void
health_attach(Provider *ps, int n, TimestampTz now, Oid extoid)
{
	int32	   *ids = palloc(sizeof(int32) * Max(n, 1));

	health_extoid = extoid;
	for (int i = 0; i < n; i++)
	{
		Provider   *p = &ps[i];
		ShipsyncProviderState *st = shipsync_provider_state(MyDatabaseId, extoid, p->id);

		if (st == NULL)
			st = local_state(p->id);
		p->st = st;
		ids[i] = p->id;
		if (st->tokens_at == 0)
		{
			st->tokens = p->rate_per_s > 1 ? p->rate_per_s : 1;
			st->tokens_at = now;
		}
		if (!health_started)
		{
			LWLockAcquire(shipsync_shared->health_lock, LW_EXCLUSIVE);
			st->inflight = 0;
			if (st->breaker == BREAKER_HALF_OPEN)
			{
				st->breaker = BREAKER_OPEN;
				st->probe_at = now;
				st->probe_id = 0;
			}
			LWLockRelease(shipsync_shared->health_lock);
		}
	}
	shipsync_forget_provider_states(MyDatabaseId, ids, n);
	pfree(ids);
	health_started = true;
}

/*
 * May claims for p go out now, and how many at most (*limit)?  Not while a
 * Retry-After hold lasts or the breaker is open; one, the probe, once the
 * breaker's cooldown is over; none while the probe is in flight.
 */
bool
health_may_send(Provider *p, TimestampTz now, int *limit)
{
	ShipsyncProviderState *st = p->st;

	if (st->hold_until > now)
		return false;
	switch (st->breaker)
	{
		case BREAKER_CLOSED:
			return true;
		case BREAKER_OPEN:
			if (now < st->probe_at)
				return false;
			*limit = 1;
			return true;
		case BREAKER_HALF_OPEN:
			return false;
	}
	return false;
}

/*
 * Whether p is held, or its breaker is cooling down or waiting for its
 * probe: no tracking polls then either.  Once an open breaker's cooldown is
 * over, polls go again (at most the poller's own in-flight cap), so that a
 * provider with no intent left to probe with is not shut out for good; the
 * first poll it answers closes the breaker (health_poll_answered()).
 */
bool
health_blocked(Provider *p, TimestampTz now)
{
	ShipsyncProviderState *st = p->st;

	return st->hold_until > now || st->breaker == BREAKER_HALF_OPEN ||
		(st->breaker == BREAKER_OPEN && now < st->probe_at);
}

/*
 * A tracking poll of provider provider_id (named name) was answered (an
 * HTTP status below 500): the carrier is back, its breaker closes.  Polls
 * that fail do not count toward opening it.
 */
void
health_poll_answered(int32 provider_id, const char *name, TimestampTz now)
{
	ShipsyncProviderState *st = shipsync_provider_state(MyDatabaseId, health_extoid,
														provider_id);
	char	   *msg = NULL;

	if (st == NULL || st->breaker == BREAKER_CLOSED)
		return;
	LWLockAcquire(shipsync_shared->health_lock, LW_EXCLUSIVE);
	if (st->breaker != BREAKER_CLOSED)
	{
		msg = psprintf("pg_shipsync: circuit breaker of provider \"%s\" closed: it answered again after %.1f s",
					   name, (double) (now - st->breaker_since) / 1000000.0);
		st->breaker = BREAKER_CLOSED;
		st->breaker_since = now;
		st->failures_in_row = 0;
		st->probe_id = 0;
		st->cooldown_ms = 0;
	}
	LWLockRelease(shipsync_shared->health_lock);
	if (msg)
		ereport(LOG, (errmsg_internal("%s", msg)));
}

/* Hold st until then, unless it is held longer already; whether it grew */
static bool
hold_raise(ShipsyncProviderState *st, TimestampTz until)
{
	bool		longer;

	LWLockAcquire(shipsync_shared->health_lock, LW_EXCLUSIVE);
	longer = until > st->hold_until;
	if (longer)
		st->hold_until = until;
	LWLockRelease(shipsync_shared->health_lock);
	return longer;
}

/*
 * A tracking poll or a fee pull (what) of provider provider_id, named
 * name, ended; answered is whether an HTTP answer came.  A 429 or 503
 * asking to wait (shipsync_wait_asked: Retry-After, X-RateLimit-Reset)
 * holds the provider, polls, pulls and deliveries alike, as a delivery's
 * answer does (health_hold); any other answer below 500 closes its breaker
 * (health_poll_answered).  A failed transfer counts for nothing.
 */
void
health_poll_result(int32 provider_id, const char *name, const char *what,
				   bool answered, long http_status, const char *retry_after,
				   const char *ratelimit_reset)
{
	TimestampTz now = GetCurrentTimestamp();

	if (!answered || http_status <= 0)
		return;
	if (http_status == 429 || http_status == 503)
	{
		long		delay = shipsync_wait_asked(http_status, retry_after, ratelimit_reset,
												time(NULL));
		ShipsyncProviderState *st;

		if (delay < 0)
			return;
		st = shipsync_provider_state(MyDatabaseId, health_extoid, provider_id);
		if (st != NULL && hold_raise(st, TimestampTzPlusMilliseconds(now, delay)))
			ereport(LOG,
					(errmsg("pg_shipsync: provider \"%s\" asked a %s to wait %ld ms; sending to it is paused until then",
							name, what, delay)));
	}
	else if (http_status < 500)
		health_poll_answered(provider_id, name, now);
}

/*
 * When p may send again, if it is blocked by a hold or the breaker's
 * cooldown; 0 when it is not blocked by those, or only a probe's answer
 * can unblock it.
 */
TimestampTz
health_wake_at(Provider *p, TimestampTz now)
{
	ShipsyncProviderState *st = p->st;
	TimestampTz at = 0;

	if (st->hold_until > now)
		at = st->hold_until;
	if (st->breaker == BREAKER_OPEN && st->probe_at > now)
		at = Max(at, st->probe_at);
	return at;
}

/* n intents of p were just claimed and sent: the first may be the probe */
void
health_sent(Provider *p, const Claimed *cs, int n)
{
	ShipsyncProviderState *st = p->st;

	LWLockAcquire(shipsync_shared->health_lock, LW_EXCLUSIVE);
	st->inflight = p->inflight;
	if (n > 0 && st->breaker == BREAKER_OPEN)
	{
		st->breaker = BREAKER_HALF_OPEN;
		st->probe_id = cs[0].id;
	}
	LWLockRelease(shipsync_shared->health_lock);
}

/* Provider p asked (Retry-After) that nothing be sent before until */
void
health_hold(Provider *p, TimestampTz until)
{
	(void) hold_raise(p->st, until);
}

/*
 * End p's hold, if it has one: a DBA paused the provider (pause() and
 * resume() are how they send before the carrier's time).  Returns whether
 * there was a hold.
 */
bool
health_end_hold(Provider *p)
{
	bool		held;

	LWLockAcquire(shipsync_shared->health_lock, LW_EXCLUSIVE);
	held = p->st->hold_until != 0;
	p->st->hold_until = 0;
	LWLockRelease(shipsync_shared->health_lock);
	return held;
}

/* The histogram bucket of a latency */
static int
latency_bucket(double ms)
{
	int			b;

	if (ms < 1)
		return 0;
	b = 1 + (int) floor(log(ms) / log(LATENCY_RATIO));
	return Min(b, SHIPSYNC_LATENCY_BUCKETS - 1);
}

/* Count one attempt in the minute's counters and histogram (lock held) */
static void
health_count(ShipsyncProviderState *st, const ShipResult *r, bool ok,
			 TimestampTz now)
{
	int64		minute = (int64) (timestamptz_to_time_t(now) / 60);
	ShipsyncMinute *m = &st->minutes[minute % SHIPSYNC_HEALTH_MINUTES];
	int			l = (int) (minute % SHIPSYNC_LATENCY_MINUTES);

	if (m->minute != minute)
	{
		memset(m, 0, sizeof(*m));
		m->minute = minute;
	}
	m->requests++;
	if (ok)
		m->successes++;
	else
		m->failures[shipsync_error_class_index(r->error_class)]++;
	if (st->latency_minute[l] != minute)
	{
		memset(st->latency[l], 0, sizeof(st->latency[l]));
		st->latency_minute[l] = minute;
	}
	st->latency[l][latency_bucket(r->latency_ms)]++;
}

/*
 * The breaker's move on one answer (lock held).  Returns the message to
 * log once the lock is released, or NULL.
 */
static char *
health_breaker_step(Provider *p, ShipsyncProviderState *st, const ShipResult *r,
					bool breaker_failure, TimestampTz now)
{
	if (!breaker_failure)
	{
		char	   *msg = NULL;

		st->failures_in_row = 0;
		if (st->breaker != BREAKER_CLOSED)
			msg = psprintf("pg_shipsync: circuit breaker of provider \"%s\" closed: it answered again after %.1f s",
						   p->name, (double) (now - st->breaker_since) / 1000000.0);
		if (st->breaker != BREAKER_CLOSED)
			st->breaker_since = now;
		st->breaker = BREAKER_CLOSED;
		st->probe_id = 0;
		st->cooldown_ms = 0;
		return msg;
	}
	st->failures_in_row++;
	if (st->breaker == BREAKER_HALF_OPEN && r->id == st->probe_id)
	{
		/* the probe failed: wait twice as long, quietly */
		st->breaker = BREAKER_OPEN;
		st->cooldown_ms = Min(st->cooldown_ms * 2, BREAKER_MAX_COOLDOWN_MS);
		st->probe_at = TimestampTzPlusMilliseconds(now, st->cooldown_ms);
		st->probe_id = 0;
		return NULL;
	}
	if (st->breaker == BREAKER_CLOSED && st->failures_in_row >= p->breaker_failures)
	{
		st->breaker = BREAKER_OPEN;
		st->breaker_since = now;
		st->cooldown_ms = p->breaker_cooldown_ms;
		st->probe_at = TimestampTzPlusMilliseconds(now, st->cooldown_ms);
		st->probe_id = 0;
		return psprintf("pg_shipsync: circuit breaker of provider \"%s\" opened after %d consecutive failures (last: %s); nothing is sent to it for %d ms, then one probe",
						p->name, st->failures_in_row, r->error ? r->error : r->error_class,
						st->cooldown_ms);
	}
	return NULL;
}

/*
 * Record the outcome of one attempt of provider p: the counters, the last
 * success or error, and the breaker.
 */
void
health_record(Provider *p, const ShipResult *r, TimestampTz now)
{
	ShipsyncProviderState *st = p->st;
	bool		ok = strcmp(r->outcome, "done") == 0;
	int			cls = ok ? -1 : shipsync_error_class_index(r->error_class);
	bool		breaker_failure = cls >= 0 && shipsync_error_classes[cls].breaker;
	char	   *msg;

	LWLockAcquire(shipsync_shared->health_lock, LW_EXCLUSIVE);
	health_count(st, r, ok, now);
	st->inflight = p->inflight;
	if (ok)
		st->last_success_at = now;
	else
	{
		const char *err = r->error ? r->error : "";

		st->last_error_at = now;
		strlcpy(st->last_error_class, r->error_class ? r->error_class : "other",
				sizeof(st->last_error_class));
		/* cut at a character boundary: the text is shown as it is */
		memcpy(st->last_error, err, pg_mbcliplen(err, strlen(err), sizeof(st->last_error) - 1));
		st->last_error[pg_mbcliplen(err, strlen(err), sizeof(st->last_error) - 1)] = '\0';
	}
	msg = health_breaker_step(p, st, r, breaker_failure, now);
	LWLockRelease(shipsync_shared->health_lock);
	if (msg)
		ereport(LOG, (errmsg_internal("%s", msg)));
}

/* ---------- shipsync.provider_health ---------- */

/* The latency at fraction q of the attempts in hist, by interpolation */
static double
latency_percentile(const uint64 *hist, uint64 total, double q)
{
	double		rank = q * (double) total;
	uint64		seen = 0;

	for (int b = 0; b < SHIPSYNC_LATENCY_BUCKETS; b++)
	{
		double		lo = b == 0 ? 0 : pow(LATENCY_RATIO, b - 1);
		double		hi = pow(LATENCY_RATIO, b);

		if (hist[b] == 0)
			continue;
		if ((double) (seen + hist[b]) >= rank)
		{
			if (b == SHIPSYNC_LATENCY_BUCKETS - 1)
				return lo;
			return lo + (hi - lo) * (rank - (double) seen) / (double) hist[b];
		}
		seen += hist[b];
	}
	return 0;
}

/* Failures by class over the minutes newer than since, as jsonb */
static Datum
failures_json(const ShipsyncProviderState *st, int64 since, int64 now_minute)
{
	StringInfoData buf;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int c = 0; c < shipsync_n_error_classes; c++)
	{
		uint64		n = 0;

		for (int i = 0; i < SHIPSYNC_HEALTH_MINUTES; i++)
			if (st->minutes[i].minute > since && st->minutes[i].minute <= now_minute)
				n += st->minutes[i].failures[c];
		if (n == 0)
			continue;
		appendStringInfo(&buf, "%s\"%s\": " UINT64_FORMAT, first ? "" : ", ",
						 shipsync_error_classes[c].name, n);
		first = false;
	}
	appendStringInfoChar(&buf, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}

static const char *const breaker_names[] = {"closed", "open", "half_open"};

/* One row of the view's function, from a copy of the entry */
static void
health_row(const ShipsyncProviderState *st, TimestampTz now, Datum *v, bool *n)
{
	int64		minute = (int64) (timestamptz_to_time_t(now) / 60);
	uint64		req5 = 0,
				ok5 = 0,
				req60 = 0,
				ok60 = 0,
				total = 0;
	uint64		hist[SHIPSYNC_LATENCY_BUCKETS] = {0};

	for (int i = 0; i < SHIPSYNC_HEALTH_MINUTES; i++)
	{
		const ShipsyncMinute *m = &st->minutes[i];

		if (m->minute <= minute - SHIPSYNC_HEALTH_MINUTES || m->minute > minute)
			continue;
		req60 += m->requests;
		ok60 += m->successes;
		if (m->minute > minute - 5)
		{
			req5 += m->requests;
			ok5 += m->successes;
		}
	}
	for (int l = 0; l < SHIPSYNC_LATENCY_MINUTES; l++)
		if (st->latency_minute[l] > minute - 5 && st->latency_minute[l] <= minute)
			for (int b = 0; b < SHIPSYNC_LATENCY_BUCKETS; b++)
			{
				hist[b] += st->latency[l][b];
				total += st->latency[l][b];
			}

	memset(n, 0, sizeof(bool) * 18);
	v[0] = Int32GetDatum(st->provider_id);
	v[1] = CStringGetTextDatum(breaker_names[st->breaker]);
	v[2] = TimestampTzGetDatum(st->breaker_since);
	n[2] = st->breaker_since == 0;
	v[3] = TimestampTzGetDatum(st->hold_until);
	n[3] = st->hold_until <= now;
	v[4] = Int64GetDatum((int64) req5);
	v[5] = Int64GetDatum((int64) ok5);
	v[6] = failures_json(st, minute - 5, minute);
	v[7] = Int64GetDatum((int64) req60);
	v[8] = Int64GetDatum((int64) ok60);
	v[9] = failures_json(st, minute - SHIPSYNC_HEALTH_MINUTES, minute);
	v[10] = Float8GetDatum(latency_percentile(hist, total, 0.50));
	v[11] = Float8GetDatum(latency_percentile(hist, total, 0.95));
	v[12] = Float8GetDatum(latency_percentile(hist, total, 0.99));
	n[10] = n[11] = n[12] = total == 0;
	v[13] = TimestampTzGetDatum(st->last_success_at);
	n[13] = st->last_success_at == 0;
	v[14] = CStringGetTextDatum(st->last_error_class);
	v[15] = CStringGetTextDatum(st->last_error);
	v[16] = TimestampTzGetDatum(st->last_error_at);
	n[14] = n[15] = n[16] = st->last_error_at == 0;
	v[17] = Int32GetDatum(st->inflight);
}

PG_FUNCTION_INFO_V1(shipsync_provider_health);

/*
 * shipsync._provider_health(): one row per provider of this database that
 * has a state in shared memory; the view shipsync.provider_health joins it
 * to the providers and the queue.  Not the entries of an extension since
 * dropped, which the dispatcher has not taken back yet: a new provider may
 * have the id of one of its providers.
 */
Datum
shipsync_provider_health(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ShipsyncProviderState *copy = palloc(sizeof(ShipsyncProviderState));
	TimestampTz now = GetCurrentTimestamp();
	Oid			extoid = get_extension_oid("pg_shipsync", true);

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < SHIPSYNC_MAX_PROVIDER_STATES; i++)
	{
		Datum		values[18];
		bool		nulls[18];
		bool		mine;

		LWLockAcquire(shipsync_shared->health_lock, LW_SHARED);
		mine = shipsync_shared->provider_states[i].dbid == MyDatabaseId &&
			shipsync_shared->provider_states[i].extoid == extoid;
		if (mine)
			memcpy(copy, &shipsync_shared->provider_states[i], sizeof(*copy));
		LWLockRelease(shipsync_shared->health_lock);
		if (!mine)
			continue;
		health_row(copy, now, values, nulls);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	pfree(copy);
	return (Datum) 0;
}
