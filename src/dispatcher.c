/*-------------------------------------------------------------------------
 *
 * dispatcher.c
 *		The dispatcher: one background worker per database, sending the
 *		outbox to the carriers.
 *
 * Life of the worker: connect to its database (named in bgw_extra by the
 * launcher), publish its latch in shared memory, wait for the extension to
 * exist, resend at once whatever was in flight when the previous
 * dispatcher stopped (same idempotency key, same bytes), then loop:
 *
 *	1. claim: for each provider with free slots (max_inflight), tokens
 *	   (rate_limit_per_s) and no Retry-After hold, claim due intents and
 *	   render the never-sent ones (outbox.c), committed durably;
 *	2. send: hand the requests to libcurl multi (http.c);
 *	3. wait: on the latch (a commit enqueued work), the sockets, libcurl's
 *	   timer, the next due retry — never a fixed sleep while work is due;
 *	4. apply: every completion that arrived is applied at once, in one
 *	   transaction per batch (outbox.c), never held for a slower request.
 *
 * OAuth2 (auth type oauth2): the provider's token is fetched by this
 * process from its token URL on the same multi handle, one fetch at a time,
 * and shared by every request of the provider.  Its life is counted from
 * when it was asked for; it is fetched again from the last fifth of that
 * (at most two minutes before its end) and no longer sent in the last tenth
 * (at most 30 s).  A request refused with 401 stops the token: it is sent no
 * more, and one new token is fetched (or the refresh in flight brings it).
 * A 401 with a token asked for after such a refusal is an auth failure:
 * dead, with a ticket.  No token
 * means no claim: intents wait, the fetch is retried with backoff (the
 * backoff outlives reloads of the configuration).  A token is fetched only
 * for a provider that is not paused and is attached to a table, or still
 * has intents to send.  A token URL refused by shipsync.allowed_hosts is
 * not tried again until the next reload of the configuration files (which
 * also ends every backoff of failed fetches): the provider's intents fail
 * meanwhile, forbidden_host, with a ticket each.
 *
 * Memory: loop_cxt is reset every iteration; each request in flight has a
 * small context of its own, deleted once its result is applied; the
 * configuration lives in cfg_cxt, rebuilt when the configuration generation
 * in shared memory moves (providers, bindings changed) or on SIGHUP.
 *
 * Errors: an answer that cannot be applied fails its own intent, never the
 * worker (outbox.c: one result at a time when a batch fails, and what
 * cannot even be recorded is dead with error class apply_failed).  Any
 * other ERROR in a pass is reported and rolled back, and the loop goes on
 * after a pause: the worker exits only on shutdown, postmaster death or a
 * dropped database or extension.  Should it die anyway, the launcher
 * starts a new one within a second, which resends the intents left in
 * flight -- except those at max_attempts (dead) and those whose result was
 * being applied at two deaths in a row (quarantined, poison.c).  The
 * circuit breaker, Retry-After holds and rate-limit tokens are in shared
 * memory (health.c): a new dispatcher keeps them.  Nothing is lost because
 * nothing lives only in this process's memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/resource.h>
#include <curl/curl.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "common/pg_prng.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/bufmgr.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

/* A request in flight: its own memory context holds all of it */
typedef struct Flight
{
	HttpTransfer xfer;			/* first: http.c hands back this pointer */
	MemoryContext cxt;
	Claimed		c;
	bool		searching;		/* a follow-up request (SF: a lookup after 8016) */
	bool		token_fetch;	/* an OAuth2 token request, not an intent */
	uint32		oauth_gen;		/* the token generation this request carried */
} Flight;

static MemoryContext cfg_cxt = NULL;
static Provider *providers = NULL;
static int	nproviders = 0;
static Binding *bindings = NULL;
static int	nbindings = 0;
static uint64 cfg_generation = 0;
static HttpClient *client = NULL;
static int	my_slot = -1;
static bool heap_dirty = false;	/* requests went out since the last trim */
static bool prefaulting = false;	/* shared memory left to touch (prefault.c) */
#define HEAP_QUIET_MS 1000		/* idle this long, the heap is given back */

static void
dispatcher_release_slot(int code, Datum arg)
{
	if (my_slot < 0)
		return;
	SpinLockAcquire(&shipsync_shared->mutex);
	shipsync_shared->slots[my_slot].dbid = InvalidOid;
	shipsync_shared->slots[my_slot].pid = 0;
	shipsync_shared->slots[my_slot].latch = NULL;
	SpinLockRelease(&shipsync_shared->mutex);
	my_slot = -1;
}

/* Publish our latch so that committing backends can wake us. */
static void
dispatcher_claim_slot(void)
{
	int			free_slot = -1;
	pid_t		other = 0;

	SpinLockAcquire(&shipsync_shared->mutex);
	for (int i = 0; i < SHIPSYNC_MAX_DISPATCHERS; i++)
	{
		if (shipsync_shared->slots[i].dbid == MyDatabaseId)
			other = shipsync_shared->slots[i].pid;
		else if (shipsync_shared->slots[i].dbid == InvalidOid && free_slot < 0)
			free_slot = i;
	}
	if (other == 0 && free_slot >= 0)
	{
		shipsync_shared->slots[free_slot].dbid = MyDatabaseId;
		shipsync_shared->slots[free_slot].pid = MyProcPid;
		shipsync_shared->slots[free_slot].latch = MyLatch;
		shipsync_shared->slots[free_slot].accepting = ~UINT64CONST(0);
		shipsync_shared->slots[free_slot].pending = 0;
		shipsync_shared->slots[free_slot].prepared = false;
		/* transactions prepared before we started: not known for whom */
		shipsync_shared->slots[free_slot].prepared_providers = ~UINT64CONST(0);
		my_slot = free_slot;
	}
	SpinLockRelease(&shipsync_shared->mutex);

	if (other != 0)
		ereport(FATAL,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("a pg_shipsync dispatcher already runs in this database (PID %d)",
						(int) other)));
	if (my_slot < 0)
		ereport(FATAL,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("no free pg_shipsync dispatcher slot")));
	on_shmem_exit(dispatcher_release_slot, 0);
}

/*
 * libcurl and our sockets may need more descriptors than the usual soft
 * limit of 1024: take what the hard limit allows.  Running out anyway is a
 * retryable attempt, logged, never a lost order.
 */
static void
dispatcher_raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max)
	{
		rl.rlim_cur = rl.rlim_max > 65536 ? 65536 : rl.rlim_max;
		(void) setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/*
 * Is the extension installed in this database at the version this library
 * is built for?  A database still at an older version (the library was
 * replaced and the server restarted, but ALTER EXTENSION ... UPDATE has not
 * run yet) is left alone: the new code must not work an old schema.  Says
 * why once per wait, in the log; the update script wakes us.
 */
static char *ext_version_seen = NULL;	/* at the last check; NULL: none */
static Oid	ext_oid_seen = InvalidOid;	/* its pg_extension OID then */
static Oid	ext_oid_served = InvalidOid;	/* the one this dispatcher serves */

static bool
dispatcher_extension_ready(void)
{
	char	   *reported = ext_version_seen;
	char	   *version;
	bool		ready;
	MemoryContext caller = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	version = shipsync_extension_version();
	if (version)
		version = MemoryContextStrdup(TopMemoryContext, version);
	ext_oid_seen = get_extension_oid("pg_shipsync", true);

	ready = version != NULL && strcmp(version, SHIPSYNC_EXTVERSION) == 0;
	if (!ready && version != NULL &&
		(reported == NULL || strcmp(reported, version) != 0))
		ereport(LOG,
				(errmsg("pg_shipsync dispatcher for database \"%s\" waits: the extension is at version %s, the library at %s",
						get_database_name(MyDatabaseId), version, SHIPSYNC_EXTVERSION),
				 errhint("Run ALTER EXTENSION pg_shipsync UPDATE in that database.")));
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);	/* the commit left TopMemoryContext */
	if (reported)
		pfree(reported);
	ext_version_seen = version;
	return ready;
}

/*
 * The extension is not the one this dispatcher served (checked outside a
 * transaction): exit, and the next dispatcher waits for it as at the
 * start.  Dropped, the log says it is gone; there at another version
 * (dropped and created again with VERSION '0.1'), the check has said it
 * waits and to update, which is the first and only word of it; dropped and
 * created again (in one transaction, which no statement of ours saw fail),
 * the next dispatcher starts with the new extension's providers, which may
 * have the ids of the old ones, and nothing of theirs (what was in flight,
 * tokens, the breaker and holds in shared memory).
 */
static void
dispatcher_exit_unless_ready(void)
{
	bool		ready = dispatcher_extension_ready();

	if (ready && ext_oid_seen == ext_oid_served)
		return;
	if (ready)
		/* outside a transaction: the name the launcher gave us */
		ereport(LOG,
				(errmsg("pg_shipsync: the extension was created again in database \"%.*s\"; the dispatcher starts again",
						BGW_EXTRALEN, MyBgworkerEntry->bgw_extra)));
	else if (ext_version_seen == NULL)
		/* outside a transaction: the name the launcher gave us */
		ereport(LOG,
				(errmsg("pg_shipsync: the extension is gone from database \"%.*s\"; the dispatcher exits",
						BGW_EXTRALEN, MyBgworkerEntry->bgw_extra)));
	proc_exit(1);
}

/*
 * Exit if the extension is not the one whose providers we keep: dropped
 * and created again.  (One dropped is said when a statement fails.)
 */
static void
dispatcher_exit_if_recreated(void)
{
	if (dispatcher_extension_ready() && ext_oid_seen != ext_oid_served)
		dispatcher_exit_unless_ready();
}

/*
 * Reload postgresql.conf.  A change of shipsync.allowed_hosts is logged.
 * Token fetches that failed, or were refused by the allowlist, are tried
 * again at once: a DBA reloads after fixing what they lacked.
 */
static void
dispatcher_reload(void)
{
	char	   *before = pstrdup(shipsync_allowed_hosts ? shipsync_allowed_hosts : "");

	ProcessConfigFile(PGC_SIGHUP);
	if (strcmp(before, shipsync_allowed_hosts ? shipsync_allowed_hosts : "") != 0)
		ereport(LOG,
				(errmsg("pg_shipsync dispatcher: shipsync.allowed_hosts is now \"%s\"",
						shipsync_allowed_hosts ? shipsync_allowed_hosts : "")));
	pfree(before);
	for (int i = 0; i < nproviders; i++)
	{
		if (providers[i].oauth_forbidden)
			pfree(providers[i].oauth_forbidden);
		providers[i].oauth_forbidden = NULL;
		providers[i].oauth_retry_at = 0;
	}
	shipsync_set_nice();
	/* a reload also re-reads providers: cheap, and what a DBA expects */
	cfg_generation = 0;
}

static void
dispatcher_process_interrupts(void)
{
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		dispatcher_reload();
	}
}

static Provider *
find_provider(int32 id)
{
	for (int i = 0; i < nproviders; i++)
		if (providers[i].id == id)
			return &providers[i];
	return NULL;
}

/* Both NULL, or equal strings */
static bool
same_text(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

/*
 * A provider whose secrets cannot be opened sends nothing: say so when that
 * starts or its reason changes, not at every load (the providers are read
 * again at every idle check: a restore beside another key logged it every
 * shipsync.idle_check_ms for as long as it lasted).
 */
static void
warn_secret_error(const Provider *p, const Provider *old)
{
	if (p->secret_error == NULL ||
		(old && same_text(old->secret_error, p->secret_error)))
		return;
	ereport(WARNING,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("pg_shipsync: nothing is sent to provider \"%s\": %s",
					p->name, p->secret_error),
			 errhint("Check shipsync.secret_key_file and shipsync.previous_secret_key_file and restart, or set the secret again with shipsync.set_secret(); its intents wait.")));
}

/*
 * (Re)load providers and bindings, keeping each provider's runtime state.
 */
static void
dispatcher_load_config(void)
{
	MemoryContext new_cxt;
	Provider   *ps;
	Binding    *bs;
	int			np;
	int			nb;
	uint64		gen = pg_atomic_read_u64(&shipsync_shared->config_generation);

	dispatcher_exit_if_recreated();
	new_cxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync config",
									ALLOCSET_DEFAULT_SIZES);
	provider_load_config(new_cxt, &ps, &np, &bs, &nb);

	for (int i = 0; i < np; i++)
	{
		Provider   *old = find_provider(ps[i].id);

		if (old)
		{
			ps[i].inflight = old->inflight;
			ps[i].unapplied = old->unapplied;
			ps[i].inbox_from = old->inbox_from;
			ps[i].inbox_room = old->inbox_room;
			ps[i].inbox_new = old->inbox_new;
			ps[i].oauth_refreshing = old->oauth_refreshing;
			ps[i].oauth_asked_at = old->oauth_asked_at;

			/*
			 * The token, and the backoff of failed fetches, while the
			 * credentials are the same (and the secret could be opened): a
			 * re-read at every idle check must not turn a failing token URL
			 * into one fetch per check.
			 */
			if (ps[i].oauth_client_id && old->oauth_client_id &&
				ps[i].oauth_client_secret && old->oauth_client_secret &&
				same_text(ps[i].oauth_client_id, old->oauth_client_id) &&
				same_text(ps[i].oauth_client_secret, old->oauth_client_secret) &&
				same_text(ps[i].oauth_token_url, old->oauth_token_url))
			{
				ps[i].oauth_token = old->oauth_token;
				ps[i].oauth_send_until = old->oauth_send_until;
				ps[i].oauth_refresh_at = old->oauth_refresh_at;
				ps[i].oauth_retry_at = old->oauth_retry_at;
				ps[i].oauth_generation = old->oauth_generation;
				ps[i].oauth_failures = old->oauth_failures;
				ps[i].oauth_refused = old->oauth_refused;
				ps[i].oauth_refused_at = old->oauth_refused_at;
				ps[i].oauth_after_401 = old->oauth_after_401;
				ps[i].oauth_forbidden = old->oauth_forbidden;
				old->oauth_token = NULL;
				old->oauth_forbidden = NULL;
			}
		}
		else
			ps[i].inbox_new = true; /* what it captured is not read yet */
		ps[i].maybe_work = true;
		ps[i].next_due = 0;
		warn_secret_error(&ps[i], old);
	}
	/* breaker, hold and tokens: in shared memory, kept across restarts */
	health_attach(ps, np, GetCurrentTimestamp(), ext_oid_served);
	for (int i = 0; i < np; i++)
	{
		Provider   *old = find_provider(ps[i].id);

		/* paused, or just resumed (an answer in flight held it meanwhile) */
		if ((ps[i].paused || (old && old->paused)) && health_end_hold(&ps[i]))
			ereport(LOG,
					(errmsg("pg_shipsync: provider \"%s\" was paused: the wait its carrier asked for is over",
							ps[i].name)));
	}
	for (int i = 0; i < nproviders; i++)
	{
		if (providers[i].oauth_token)
			pfree(providers[i].oauth_token);
		if (providers[i].oauth_forbidden)
			pfree(providers[i].oauth_forbidden);
	}
	for (int i = 0; i < nbindings; i++)
	{
		if (bindings[i].render_plan)
			SPI_freeplan(bindings[i].render_plan);
	}
	if (cfg_cxt)
		MemoryContextDelete(cfg_cxt);
	cfg_cxt = new_cxt;
	providers = ps;
	nproviders = np;
	bindings = bs;
	nbindings = nb;
	cfg_generation = gen;
	writeback_forget_plans(bindings, nbindings);
	poller_invalidate();
	feepull_invalidate();
	reconcile_invalidate();
}

static long
ms_until(TimestampTz when, TimestampTz now)
{
	if (when <= now)
		return 0;
	return (long) ((when - now + 999) / 1000);
}


static char *sanitize_text(char *s);
static long judge_wait_asked(HttpTransfer *t);
static void provider_hold(Provider *p, TimestampTz until, long delay_ms,
						  long http_status);

/* ---------- OAuth2 client credentials ---------- */

/*
 * Ask the token URL for a token (RFC 6749, 4.4): grant_type
 * client_credentials, the client authenticated with HTTP Basic.
 */
static void
oauth_fetch(Provider *p)
{
	MemoryContext fcxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync token request",
											   ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(fcxt);
	Flight	   *f = palloc0(sizeof(Flight));
	char	   *id = shipsync_urlencode_form(p->oauth_client_id);
	char	   *secret = shipsync_urlencode_form(p->oauth_client_secret);
	char	   *pair = psprintf("%s:%s", id, secret);
	char	   *b64 = palloc(4 * ((strlen(pair) + 2) / 3) + 1);
	struct curl_slist *h = NULL;

	free(id);
	free(secret);
	shipsync_base64_encode((unsigned char *) pair, strlen(pair), b64);
	f->cxt = fcxt;
	f->token_fetch = true;
	f->c.provider_id = p->id;
	f->xfer.method = "POST";
	f->xfer.url = pstrdup(p->oauth_token_url);
	if (p->oauth_scope)
	{
		char	   *scope = shipsync_urlencode_form(p->oauth_scope);

		f->xfer.body = psprintf("grant_type=client_credentials&scope=%s", scope);
		free(scope);
	}
	else
		f->xfer.body = pstrdup("grant_type=client_credentials");
	f->xfer.timeout_ms = p->timeout_ms;
	f->xfer.tls = p->tls;		/* the token URL is the provider's too */
	h = curl_slist_append(h, "Content-Type: application/x-www-form-urlencoded");
	h = curl_slist_append(h, "Accept: application/json");
	h = curl_slist_append(h, "Expect:");
	h = curl_slist_append(h, psprintf("Authorization: Basic %s", b64));
	f->xfer.headers = h;
	f->xfer.owner = f;
	p->oauth_refreshing = true;
	p->oauth_asked_at = GetCurrentTimestamp();
	http_submit(client, &f->xfer);
	MemoryContextSwitchTo(old);
}

/* A token request finished: keep the token, or retry the fetch later. */
static void
oauth_done(Flight *f, TimestampTz now)
{
	HttpTransfer *t = &f->xfer;
	Provider   *p = find_provider(f->c.provider_id);
	char		err[256];
	char	   *token = NULL;
	long		expires_in = 0;

	if (p == NULL)
		return;
	p->oauth_refreshing = false;
	p->maybe_work = true;
	err[0] = '\0';
	if (t->forbidden_host)
	{
		/* permanent until a reload: the intents fail with this reason */
		if (p->oauth_forbidden)
			pfree(p->oauth_forbidden);
		p->oauth_forbidden = MemoryContextStrdup(TopMemoryContext,
												 psprintf("OAuth2 token_url: %s", t->errbuf));
		ereport(WARNING,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("pg_shipsync: the OAuth2 token URL of provider \"%s\" is not allowed", p->name),
				 errdetail_internal("%s", t->errbuf),
				 errhint("Its intents fail with error class forbidden_host until shipsync.allowed_hosts allows the host and the configuration is reloaded.")));
		return;
	}
	if (t->curl_code != CURLE_OK)
		snprintf(err, sizeof(err), "%s", t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->curl_code));
	else if (t->http_status < 200 || t->http_status >= 300)
		snprintf(err, sizeof(err), "HTTP %ld: %s", t->http_status, dialect_excerpt(t->response.data, t->response.len));
	else
		(void) shipsync_parse_token_response(t->response.data, t->response.len,
											 &token, &expires_in, err, sizeof(err));
	if (token == NULL)
	{
		long		delay = shipsync_backoff_ms(++p->oauth_failures, p->backoff_base_ms,
												p->backoff_max_ms, 1.0 - 1e-9);

		p->oauth_retry_at = TimestampTzPlusMilliseconds(now, delay);
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("pg_shipsync: could not get an OAuth2 token for provider \"%s\"", p->name),
				 errdetail_internal("%s", err),
				 errhint("Check token_url, client_id and client_secret of its auth option; intents wait, the next try is in %ld ms.",
						 delay)));
		return;
	}
	if (p->oauth_token)
		pfree(p->oauth_token);
	p->oauth_token = MemoryContextStrdup(TopMemoryContext, token);
	free(token);

	/*
	 * The token endpoint counts expires_in from its answer, which reaches us
	 * later: count it from when we asked.  The token is refreshed from the
	 * last fifth of its life (at most two minutes before its end) and is no
	 * longer sent in the last tenth (at most 30 s), so that a request sent
	 * with it still reaches the carrier while it is valid there.
	 */
	p->oauth_send_until = TimestampTzPlusMilliseconds(p->oauth_asked_at, expires_in * 1000 -
													  Min(30000, expires_in * 100));
	p->oauth_refresh_at = TimestampTzPlusMilliseconds(p->oauth_asked_at, expires_in * 1000 -
													  Min(120000, expires_in * 200));
	p->oauth_generation++;
	p->oauth_failures = 0;
	p->oauth_retry_at = 0;

	/*
	 * A token asked for after a refusal proves the credentials; one asked
	 * for before it (a refresh meeting a revocation) may predate the
	 * revocation, and a 401 on it earns one more fetch.
	 */
	p->oauth_after_401 = p->oauth_refused && p->oauth_asked_at >= p->oauth_refused_at;
	p->oauth_refused = false;
	elog(DEBUG1, "pg_shipsync: provider \"%s\" has a new OAuth2 token for %ld s", p->name, expires_in);
}

/* Is p's current token one to send: not refused, and not near its end? */
static bool
oauth_sendable(const Provider *p, TimestampTz now)
{
	return p->oauth_token != NULL && !p->oauth_refused && now < p->oauth_send_until;
}

/*
 * May p's requests go out now?  Starts a fetch when the token is missing,
 * refused or near its end; a token still valid keeps being used meanwhile.
 */
static bool
oauth_ready(Provider *p, TimestampTz now)
{
	bool		valid = oauth_sendable(p, now);

	if (p->oauth_forbidden)
		return true;			/* sent to fail: dispatcher_send() */
	if (p->in_use && !p->oauth_refreshing && now >= p->oauth_retry_at &&
		(!valid || now >= p->oauth_refresh_at))
		oauth_fetch(p);
	return valid;
}

static void
dispatcher_send(Provider *p, Claimed *c)
{
	MemoryContext fcxt;
	MemoryContext old;
	Flight	   *f;

	fcxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync request",
								 ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(fcxt);
	f = palloc0(sizeof(Flight));
	f->cxt = fcxt;
	f->c = *c;
	f->c.order_key = pstrdup(c->order_key);
	f->c.idempotency_key = pstrdup(c->idempotency_key);
	f->c.method = pstrdup(c->method);
	f->c.url = pstrdup(c->url);
	f->c.body = c->body ? pstrdup(c->body) : NULL;
	f->c.digest = c->digest ? pstrdup(c->digest) : NULL;
	f->c.op = NULL;

	f->xfer.method = f->c.method;
	f->xfer.url = f->c.url;
	f->xfer.timeout_ms = p->timeout_ms;
	f->xfer.tls = p->tls;
	f->xfer.headers = dialect_headers(p, c->idempotency_key, c->body != NULL);
	/* the dialect's last touches: secrets into the body, signed headers */
	if (p->dialect->sign)
		f->xfer.headers = p->dialect->sign(p, &f->c, f->xfer.headers);
	f->xfer.body = f->c.body;
	f->xfer.owner = f;
	f->oauth_gen = p->oauth_generation;
	if (p->oauth_forbidden)
		http_refuse(client, &f->xfer, p->oauth_forbidden);
	else
		http_submit(client, &f->xfer);
	MemoryContextSwitchTo(old);
	p->inflight++;
	heap_dirty = true;
}

/*
 * Captured intents wait in shipsync.inbox until we move them into the
 * outbox.  We drain when a commit told us of new intents for a provider
 * that can take work (drain_all: everything, paused providers' too, so the
 * inbox stays small, but behind the others': dispatcher_drain_sendable()),
 * and at the idle check while a transaction that captured may be prepared
 * (only the providers that are not paused: a safety net, as its COMMIT
 * PREPARED wakes us from the utility hook, pg_shipsync.c).
 * twophase_watch starts true and stays so
 * while pg_prepared_xacts lists a transaction of this database; PREPARE of
 * a capturing transaction sets it again (shipsync_note_prepared(), called
 * once the transaction is listed and before it can be committed), so that
 * no prepared intent is missed and an idle check otherwise costs nothing
 * however large a paused provider's backlog in the inbox.
 * A drain moves at most drain_chunk intents, so that completions of
 * requests in flight are not held up; more left means drain again at
 * once, twice as many, up to DRAIN_MAX.  The first drain of a burst is
 * small so that its first requests go out at once, and the claims, the
 * wire and the applier work on them while the rest is moved; the chunks
 * grow because each drain reads the whole inbox (it has no index), so
 * that a backlog of a million rows is not read a thousand times.
 */
#define DRAIN_FIRST 256			/* a claim's worth, at the default batch_size */
#define DRAIN_MAX 8192
static int	drain_chunk = DRAIN_FIRST;
static bool drain_all = true;
static bool drain_unpaused = false;
static bool sendable_moved = false; /* drain_all: what can be sent is moved */
static bool twophase_watch = true;

/*
 * While the inbox can hold at most INBOX_READ_MAX intents, they are taken
 * rather than drained (dispatcher_take()): before the claims, within each
 * provider's room, a create goes from the inbox straight into flight,
 * rendered and stored in the transaction that moves it
 * (outbox_take_inbox()), and a provider's intents beyond its room wait in
 * the inbox for the next take, which a completion brings.  The outbox row
 * is written once, not three times, and the claim's lock is not needed:
 * about a hundred thousand instructions an intent.
 *
 * A read of the inbox reads it whole (it has no index), about a thousand
 * instructions a row, and the take keeps what it read, so that the takes
 * after it walk the rows kept rather than read again.  The take reads it
 * again once what is kept is all taken, or sooner when a provider that
 * captured since the read (Provider.inbox_new) and has room finds nothing
 * in what is kept.  While the inbox can hold at most TAKE_SHARE batches
 * (ids handed out since the smallest that may be left: inbox_low, or a
 * provider's waiting intents), that read is made at once; without rows
 * kept, a read must then send at least one row in TAKE_SHARE.  A larger
 * inbox is read at most once a second (BIG_READ_MS): a burst is read once
 * and sent from what was kept, but when other intents are captured
 * meanwhile for a provider with room, the inbox is drained as above, as it
 * was before the take kept rows: reading tens of thousands of rows again
 * for each of them would cost more than the claims they save.
 */
#define TAKE_SHARE 32
#define BIG_READ_MS 1000
static int64 inbox_low = 0;		/* smallest id that may be in the inbox, but
								 * the waiting intents; 0: not known */
static bool inbox_waits = false;	/* intents wait there for room */
static TimestampTz big_read_at = 0; /* the last read of a large inbox */

/* The providers a drain or take moves: all, or those not paused (NULL) */
static int32 *
drain_scope(int *nids)
{
	int32	   *ids;

	*nids = -1;
	if (drain_all)
		return NULL;
	ids = palloc(sizeof(int32) * Max(nproviders, 1));
	*nids = 0;
	for (int i = 0; i < nproviders; i++)
		if (!providers[i].paused)
			ids[(*nids)++] = providers[i].id;
	return ids;
}

/* After a drain or take that read a full chunk, or left intents waiting */
static void
drain_done(bool full, bool waits)
{
	drain_all = drain_all && (full || waits);
	drain_unpaused = drain_unpaused && (full || waits);
	inbox_waits = waits && !full;
	drain_chunk = full ? Min(drain_chunk * 2, DRAIN_MAX) : DRAIN_FIRST;
}

static void
dispatcher_drain(void)
{
	uint64		moved;
	int			nids;
	int32	   *ids = drain_scope(&nids);

	outbox_inbox_forget();

	if (nids == 0)
	{
		drain_unpaused = false;
		return;
	}
	moved = outbox_drain_inbox(drain_chunk, ids, nids, &inbox_low);
	drain_done(moved >= (uint64) drain_chunk, false);
	if (moved > 0)
		for (int i = 0; i < nproviders; i++)
		{
			providers[i].maybe_work = true;
			if (moved < (uint64) drain_chunk)
				providers[i].inbox_from = 0;
		}
}

/*
 * A drain of everything while a provider is paused moves the intents of
 * the providers that can send first: in id order, one commit of another
 * provider's waited for the whole backlog of a paused one to be moved
 * ahead of it (a million intents: 20 s).  Drains the intents of the
 * providers not paused, a chunk, and returns true; false, without a read,
 * when none is paused or none can send.  Until a chunk comes back short,
 * the next pass does this first again; then the drains of everything go
 * on, and a commit of a provider that can send
 * (dispatcher_exchange_masks()) puts its intents first again.  The rows
 * of the paused providers stay where they were: inbox_low is left alone.
 */
static bool
dispatcher_drain_sendable(void)
{
	int32	   *ids = palloc(sizeof(int32) * Max(nproviders, 1));
	int			nids = 0;
	bool		paused = false;
	int64		low;
	uint64		moved;
	bool		full;

	for (int i = 0; i < nproviders; i++)
		if (providers[i].paused)
			paused = true;
		else
			ids[nids++] = providers[i].id;
	sendable_moved = true;
	if (!paused || nids == 0)
		return false;
	moved = outbox_drain_inbox(drain_chunk, ids, nids, &low);
	full = moved >= (uint64) drain_chunk;
	if (full)
	{
		sendable_moved = false;
		drain_chunk = Min(drain_chunk * 2, DRAIN_MAX);
	}
	for (int i = 0; i < nproviders; i++)
		if (!providers[i].paused)
		{
			providers[i].maybe_work = providers[i].maybe_work || moved > 0;
			if (!full)
				providers[i].inbox_from = 0;
		}
	return true;
}

/* At most how many intents can be in the inbox; -1: not known */
static int64
inbox_bound(void)
{
	int64		next = outbox_intents_next();
	int64		low = inbox_low;

	for (int i = 0; i < nproviders; i++)
		if (providers[i].inbox_from > 0 && providers[i].inbox_from < low)
			low = providers[i].inbox_from;
	return low > 0 && next > 0 ? Max(next - low, 0) : -1;
}

/* Whether the inbox can hold more than TAKE_SHARE batches */
static bool
inbox_big(int64 bound)
{
	return bound > (int64) TAKE_SHARE * shipsync_batch_size;
}

/* Whether a large inbox may be read now */
static bool
big_read_allowed(TimestampTz now)
{
	return big_read_at == 0 || TimestampDifferenceExceeds(big_read_at, now, BIG_READ_MS);
}

/* Whether the inbox is small enough to be taken rather than drained */
static bool
inbox_small(TimestampTz now)
{
	int64		n = inbox_bound();

	if (n < 0 || n > INBOX_READ_MAX)
		return false;
	return !inbox_big(n) || outbox_inbox_cached() || big_read_allowed(now);
}

/*
 * Provider p's results answered and waiting to be applied, not counting
 * those the applier is applying now
 */
static int
provider_waiting(Provider *p)
{
	return p->unapplied - (p->unapplied > 0 ? applier_applying(p->id) : 0);
}

/*
 * How many intents p may send now, at most limit: at most max_inflight
 * requests on the wire, and as many results waiting for the applier (a
 * slow apply slows the claims instead of piling results up in memory,
 * applier.c), within its tokens.
 */
static int
provider_room(Provider *p, TimestampTz now, int limit)
{
	int			room = p->max_inflight - p->inflight;
	int			allowed;

	if (room <= 0 || provider_waiting(p) >= p->max_inflight)
		return 0;
	allowed = provider_tokens(p, now);
	if (allowed <= 0)
		return 0;
	return Min(room, Min(allowed, limit));
}

/*
 * Claim for provider p if it may have work, has room and tokens: the
 * intents to send (*out), not yet durable (dispatcher_claim_all()).
 */
static int
dispatcher_claim(Provider *p, TimestampTz now, int taken, Claimed **out)
{
	int			room;
	int			n;
	Claimed    *cs;
	TimestampTz next_due;
	int			nskipped;
	int			limit = shipsync_batch_size;

	/* paused, held, or its breaker open: its intents wait */
	if (p->paused || p->secret_error || !health_may_send(p, now, &limit))
		return 0;
	if (!p->maybe_work && !(p->next_due != 0 && p->next_due <= now))
		return 0;
	if (p->oauth_client_id && !oauth_ready(p, now))
		return 0;			/* a token fetch will wake us */
	room = provider_room(p, now, limit) - taken;
	if (room <= 0)
		return 0;

	n = outbox_claim(p, bindings, nbindings, room, p->timeout_ms + 60000,
					 &cs, &next_due, &nskipped);

	/*
	 * A full claim may have left more.  An intent finished with nothing
	 * to send may have unblocked the next intent of its order, and no
	 * completion will come to say so: look again.  After a render
	 * failure nskipped counts the intents rolled back: the other
	 * bindings' among them can be claimed now (outbox_claim()).
	 */
	p->maybe_work = (n + nskipped >= room) || nskipped > 0;
	if (next_due > now)
		p->next_due = next_due;
	else
		p->next_due = 0;	/* due but blocked: a completion will wake us */
	*out = cs;
	return n;
}

/*
 * Whether p may send from the inbox now: not paused nor held, its breaker
 * closed (a probe is claimed), and no OAuth2 token to wait for (the claim
 * starts its fetch).  *limit: at most how many at once.
 */
static bool
provider_takes(Provider *p, TimestampTz now, int *limit)
{
	*limit = shipsync_batch_size;
	return !p->paused && !p->secret_error && !p->oauth_client_id &&
		health_may_send(p, now, limit) && *limit == shipsync_batch_size;
}

/*
 * After a take: where each provider's rows wait from (*waits if any do),
 * how much room makes the next take worth it, and whether a provider with
 * room that captured since the read found nothing (returned)
 */
static bool
take_noted(InboxTake *t, int nt, int64 bound, bool *waits)
{
	bool		cached = outbox_inbox_cached();
	bool		starved = false;

	for (int k = 0; k < nt; k++)
	{
		Provider   *p = t[k].p;

		p->inbox_from = t[k].wait_from;
		p->inbox_room = cached ? 1 : (int) Max(1, Min(bound / TAKE_SHARE, p->max_inflight));
		if (t[k].moved || t[k].nskipped > 0)
			p->maybe_work = true;	/* the claim takes what moved or was unblocked */
		*waits = *waits || t[k].wait_from > 0;
		starved = starved || outbox_take_found_nothing(&t[k]);
	}
	return starved;
}

/* Whether a provider captured since the take's read */
static bool
inbox_new(void)
{
	for (int i = 0; i < nproviders; i++)
		if (providers[i].inbox_new)
			return true;
	return false;
}

/*
 * Take from the inbox for the providers in scope, before the claims: the
 * intents sent straight from the inbox are left in takes[i], for
 * providers[i] (dispatcher_claim_all()).  Intents that must follow one in
 * the outbox move there first, so that its claim sees the updates behind
 * it (claim_coalesce()).  A provider with a retry due takes nothing: its
 * claim goes first, and what it captured moves into the outbox behind it.
 */
static void
dispatcher_take(TimestampTz now, InboxTake *takes)
{
	int32	   *ids = palloc(sizeof(int32) * Max(nproviders, 1));
	int			nread_ids = 0;
	InboxTake  *t = palloc0(sizeof(InboxTake) * Max(nproviders, 1));
	int		   *ti = palloc(sizeof(int) * Max(nproviders, 1));
	int			nt = 0;
	int			room = 0;
	bool		others = false;
	bool		waits = false;
	bool		full;
	bool		fresh;
	bool		starved;
	int64		bound = inbox_bound();
	bool		cached = outbox_inbox_cached();

	for (int i = 0; i < nproviders; i++)
	{
		Provider   *p = &providers[i];
		int			limit;

		if (!drain_all && p->paused)
			continue;			/* out of drain_scope() */
		t[nt].p = p;
		t[nt].sends = provider_takes(p, now, &limit) &&
			!(p->next_due != 0 && p->next_due <= now);
		if (t[nt].sends)
			t[nt].room = provider_room(p, now, limit);

		/*
		 * A read of a small inbox costs about a thousand instructions a
		 * row, and saves about a hundred thousand an intent it sends: it
		 * is worth it when one row in TAKE_SHARE goes.  Less room than that
		 * waits for the completions that make more; a provider that will
		 * not have it (its rate, its limits) moves its intents into the
		 * outbox, where its claims find them by index.  Rows kept cost
		 * nothing to walk, and a large inbox is read once.
		 */
		if (!cached && !inbox_big(bound) && t[nt].sends && t[nt].room * TAKE_SHARE < bound)
		{
			if (p->rate_per_s <= 0 && (p->inflight > 0 || provider_waiting(p) > 0) &&
				Min(p->max_inflight, limit) * TAKE_SHARE >= bound)
				t[nt].room = 0;
			else
			{
				t[nt].sends = false;
				t[nt].room = 0;
			}
		}
		/* out of room: its intents wait in the inbox, unread */
		if (t[nt].sends && t[nt].room == 0)
		{
			waits = true;
			continue;
		}
		room += t[nt].room;
		others = others || !t[nt].sends;
		ids[nread_ids++] = p->id;
		ti[nt++] = i;
	}
	if (room == 0)
	{
		/* nothing can go now: a completion brings room, unless none waits */
		if (waits)
			inbox_waits = true;
		else
			dispatcher_drain();
		return;
	}
	/*
	 * As many rows as there is room, so that a take's transaction stays
	 * short; a drain's worth when providers that cannot send move theirs.
	 */
	(void) outbox_take_inbox(others ? Max(drain_chunk, room) : room, ids, nread_ids,
							 bindings, nbindings, t, nt,
							 inbox_new() && (!inbox_big(bound) || big_read_allowed(now)),
							 &full, &inbox_low, &fresh);
	if (fresh)
	{
		for (int i = 0; i < nproviders; i++)
			providers[i].inbox_new = false;
		if (inbox_big(bound))
			big_read_at = now;
	}
	starved = take_noted(t, nt, bound, &waits);
	for (int k = 0; k < nt; k++)
		takes[ti[k]] = t[k];
	drain_done(full, waits);
	/* captured since the read, and not read yet: the next take reads them */
	drain_all = drain_all || inbox_new();
	/* intents captured since a large inbox was read, for a provider with room */
	if (starved && !full)
		dispatcher_drain();
}

#define FLUSH_WAIT_MS 50		/* the launcher's flush, at most; then our own */
#define FLUSH_ALONE_MS 1000		/* and after a late one, ours for this long */

static void dispatcher_apply_done(TimestampTz now);

/*
 * When the next write-back that waits for a held order row is due
 * (outbox_writeback_waiting()): 0 none, 1 at once (one may have been left
 * to wait, or a previous dispatcher left some).
 */
static TimestampTz writeback_wait_due = 1;
static void dispatcher_apply_done_held(TimestampTz now);

/*
 * With requests on the wire, have the launcher flush the WAL up to this
 * pass's claims (flush.c), and meanwhile reap answers and hand them to the
 * applier: the flush then leaves neither the applier nor the carrier idle.
 * Returns once the WAL is flushed that far, or after FLUSH_WAIT_MS; the
 * caller flushes then (at once when the launcher has).  With nothing on
 * the wire, no launcher, or a launcher late within the last FLUSH_ALONE_MS
 * (it may be waiting for a lock), returns at once.
 */
static void
dispatcher_await_flush(void)
{
	static TimestampTz alone_until = 0;
	XLogRecPtr	lsn = outbox_claims_unflushed();
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz deadline = TimestampTzPlusMilliseconds(now, FLUSH_WAIT_MS);
	volatile bool reset = false;

	if (XLogRecPtrIsInvalid(lsn) || http_inflight(client) == 0 || now < alone_until ||
		GetFlushRecPtr(NULL) >= lsn || !flush_ask(my_slot, lsn))
		return;
	PG_TRY();
	{
		while (GetFlushRecPtr(NULL) < lsn)
		{
			if ((now = GetCurrentTimestamp()) >= deadline)
			{
				alone_until = TimestampTzPlusMilliseconds(now, FLUSH_ALONE_MS);
				break;
			}
			http_wait(client, ms_until(deadline, now), PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			reset = true;
			dispatcher_apply_done(GetCurrentTimestamp());
		}
	}
	PG_FINALLY();
	{
		flush_withdraw(my_slot);
		/* a commit's wake-up reset here: the loop must still see it */
		if (reset)
			SetLatch(MyLatch);
	}
	PG_END_TRY();
}

/*
 * Claim for every provider that may have work and has room, take what can
 * go straight from a small inbox, make those claims durable with one
 * flush, then send them all.
 */
static void
dispatcher_claim_all(TimestampTz now)
{
	MemoryContext cxt = CurrentMemoryContext;
	Claimed   **claimed = palloc0(sizeof(Claimed *) * Max(nproviders, 1));
	int		   *nclaimed = palloc0(sizeof(int) * Max(nproviders, 1));
	InboxTake  *takes = palloc0(sizeof(InboxTake) * Max(nproviders, 1));
	ErrorData  *edata = NULL;

	/*
	 * A take or claim that fails (an error outbox_claim() does not handle
	 * itself) must not strand the claims committed before it until their
	 * leases expire: those are sent, then the error goes on to the loop.
	 */
	PG_TRY();
	{
		/*
		 * Only the providers that are not paused (the idle check, for a
		 * prepared transaction): drained, so that the rows the take keeps
		 * are always read for every provider
		 */
		if (drain_all && inbox_small(now))
			dispatcher_take(now, takes);
		else if (drain_all && !sendable_moved && dispatcher_drain_sendable())
			;					/* the rest at the next pass, at once */
		else if (drain_all || drain_unpaused)
			dispatcher_drain();
		for (int i = 0; i < nproviders; i++)
			nclaimed[i] = dispatcher_claim(&providers[i], now, takes[i].n, &claimed[i]);
		/* answers reaped while the launcher flushes may fail too */
		dispatcher_await_flush();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		shipsync_abort_tx();
	}
	PG_END_TRY();

	/* a first attempt goes out only once its stored request is on disk */
	outbox_claims_durable();
	for (int i = 0; i < nproviders; i++)
	{
		Provider   *p = &providers[i];

		for (int k = 0; k < nclaimed[i]; k++)
			dispatcher_send(p, &claimed[i][k]);
		health_sent(p, claimed[i], nclaimed[i]);
		for (int k = 0; k < takes[i].n; k++)
			dispatcher_send(p, &takes[i].cs[k]);
		if (takes[i].n > 0)
			health_sent(p, takes[i].cs, takes[i].n);
		if (p->rate_per_s > 0)
			p->st->tokens -= nclaimed[i] + takes[i].n;
	}
	if (edata)
		ReThrowError(edata);
}

/*
 * Which providers can take work now: commits for the others need not wake
 * us; while held back (yield.c), none.  In exchange, learn which providers
 * got work since we last looked.
 */
static void
dispatcher_exchange_masks(TimestampTz now, bool held)
{
	uint64		busy = 0;
	uint64		able = 0;
	uint64		pending;

	/*
	 * Providers we do not know are welcome (their work makes us reload); a
	 * bit shared by a busy and an able provider counts as able.
	 */
	for (int i = 0; i < nproviders; i++)
	{
		Provider   *p = &providers[i];
		int			limit;

		if (p->paused || p->secret_error || !health_may_send(p, now, &limit) ||
			p->inflight >= p->max_inflight)
			busy |= SHIPSYNC_PROVIDER_BIT(p->id);
		else
			able |= SHIPSYNC_PROVIDER_BIT(p->id);
	}
	/* held back (yield.c): no commit wakes us until the hold is over */
	pending = shipsync_exchange_masks(my_slot, held ? 0 : ~busy | able);
	for (int i = 0; i < nproviders; i++)
		if (pending & SHIPSYNC_PROVIDER_BIT(providers[i].id))
		{
			providers[i].maybe_work = true;
			if (!providers[i].paused)
			{
				drain_all = true;
				sendable_moved = false;
				providers[i].inbox_new = true;
			}
			pending &= ~SHIPSYNC_PROVIDER_BIT(providers[i].id);
		}

	/*
	 * Work for a provider we do not know: our configuration is older than
	 * the data (restored by pg_dump, or written by hand).  Read it again.
	 */
	if (pending != 0 && pending != ~UINT64CONST(0))
	{
		cfg_generation = 0;		/* it captured: inbox_new once loaded */
		drain_all = true;
	}
}

/* How long we may sleep before something of ours falls due */
static long
dispatcher_timeout(TimestampTz now)
{
	long		timeout = shipsync_idle_check_ms;

	if ((drain_all || drain_unpaused) && !inbox_waits)
		return 0;
	for (int i = 0; i < nproviders; i++)
	{
		Provider   *p = &providers[i];

		if (p->paused || p->secret_error)
			continue;
		if (p->oauth_client_id && !p->oauth_forbidden &&
			!oauth_sendable(p, now))
		{
			/* no token: the fetch in flight wakes us, or its retry is due */
			if (!p->in_use)
				continue;		/* none is fetched: a reload makes it in use */
			if (!p->oauth_refreshing && p->oauth_retry_at > now)
				timeout = Min(timeout, ms_until(p->oauth_retry_at, now));
			else if (!p->oauth_refreshing && (p->maybe_work || p->next_due))
				return 0;
			continue;
		}
		if (health_blocked(p, now))
		{
			TimestampTz wake = health_wake_at(p, now);

			/* held or cooling down: until then; a probe: its answer wakes us */
			if (wake != 0)
			{
				timeout = Min(timeout, ms_until(wake, now));
				continue;
			}
			if (p->st->breaker == BREAKER_HALF_OPEN)
				continue;
		}
		/* full: a completion wakes us, or the applier's acknowledgement */
		if (p->inflight >= p->max_inflight || provider_waiting(p) >= p->max_inflight)
			continue;
		if (p->rate_per_s > 0 && p->st->tokens < 1 &&
			(p->maybe_work || p->next_due || p->inbox_from > 0))
		{
			timeout = Min(timeout, (long) ((1 - p->st->tokens) * 1000 / p->rate_per_s) + 1);
			continue;
		}
		/* room again for intents waiting in the inbox: take them */
		if (p->maybe_work ||
			(p->inbox_from > 0 && (drain_all || drain_unpaused) &&
			 p->max_inflight - p->inflight >= p->inbox_room))
			return 0;
		if (p->next_due)
			timeout = Min(timeout, ms_until(p->next_due, now));
	}
	return timeout;
}

/*
 * Provider p asked to wait (a 429 or 503 with Retry-After or a rate-limit
 * reset): nothing new is sent to it until then, by this dispatcher or the
 * next (the hold is in shared memory).
 */
static void
provider_hold(Provider *p, TimestampTz until, long delay_ms, long http_status)
{
	if (until <= p->st->hold_until)
		return;
	health_hold(p, until);
	ereport(LOG,
			(errmsg("pg_shipsync: provider \"%s\" asked to wait %ld ms (HTTP %ld); sending to it is paused until then",
					p->name, delay_ms, http_status)));
}

/*
 * An error made fit for last_error, delivery_log and the log, whatever
 * carrier text it quotes (an SF message, a member name): an excerpt
 * (retry.c) of at most 1,000 characters, which changes nothing in the
 * excerpts it already holds.
 */
static char *
sanitize_text(char *s)
{
	size_t		size = 6 * 1000 + 4;

	return shipsync_excerpt(s, strlen(s), 1000, palloc(size), size);
}

/*
 * The ticket of an intent dead at once for a reason of this side, not the
 * carrier's answer; NULL: the usual dead_intent.
 */
static const char *
ticket_kind_of(const char *error_class)
{
	if (strcmp(error_class, "forbidden_host") == 0)
		return "forbidden_host";
	if (strcmp(error_class, "tls") == 0)
		return "tls_failed";
	return NULL;
}

/*
 * Before anything of a 2xx answer is read: is its text storable (UTF-8, no
 * NUL, numbers in range)?  Returns false, with r and *v set to a refusal,
 * when it is not.
 */
static bool
judge_text_ok(HttpTransfer *t, ShipResult *r, ShipVerdict *v)
{
	char		err[256];

	if (t->curl_code != CURLE_OK || t->http_status < 200 || t->http_status >= 300 ||
		t->too_large || t->response.data == NULL)
		return true;
	if (shipsync_check_response_text(t->response.data, t->response.len, err, sizeof(err)))
		return true;
	if (t->coding[0] != '\0')
		dialect_refuse(r, v, t->http_status,
					   psprintf("%s; it came compressed (Content-Encoding \"%s\") though none was asked for (Accept-Encoding: identity), and pg_shipsync decodes none",
								err, t->coding));
	else if (t->charset[0] != '\0')
		dialect_refuse(r, v, t->http_status,
					   psprintf("%s, nor text pg_shipsync reads in the charset its Content-Type names (\"%s\")",
								err, t->charset));
	else
		dialect_refuse(r, v, t->http_status, err);
	return false;
}

/*
 * The fields of a successful answer, checked before they reach SQL:
 * provider shipment id, tracking number and status at most
 * SHIPSYNC_MAX_ID_BYTES, label URL at most SHIPSYNC_MAX_URL_BYTES.  An
 * answer over a limit turns r into a refusal (dead, bad_response).
 */
static bool
judge_fields_ok(ShipResult *r, ShipVerdict *v)
{
	static const struct
	{
		const char *name;
		size_t		offset;
		size_t		max;
	}			limits[] = {
		{"id", offsetof(ShipResult, ship_id), SHIPSYNC_MAX_ID_BYTES},
		{"tracking_number", offsetof(ShipResult, tracking_number), SHIPSYNC_MAX_ID_BYTES},
		{"status", offsetof(ShipResult, raw_status), SHIPSYNC_MAX_ID_BYTES},
		{"label_url", offsetof(ShipResult, label_url), SHIPSYNC_MAX_URL_BYTES},
	};

	for (int i = 0; i < (int) lengthof(limits); i++)
	{
		const char *val = *(char **) ((char *) r + limits[i].offset);
		size_t		len = val ? strlen(val) : 0;

		if (len > limits[i].max)
		{
			dialect_refuse(r, v, r->http_status,
						 psprintf("\"%s\" is %zu bytes long, more than the %zu allowed",
								  limits[i].name, len, limits[i].max));
			return false;
		}
	}
	return true;
}

/*
 * A failed attempt: retry after Retry-After, the rate-limit reset or the
 * backoff (holding the whole provider when it asked), or give up.
 */
static void
judge_retry_or_dead(Flight *f, Provider *p, ShipResult *r, ShipVerdict *v,
					TimestampTz now)
{
	HttpTransfer *t = &f->xfer;
	int			max_attempts = p ? p->max_attempts : 1;

	if (v->outcome == SHIP_RETRY && f->c.attempt < max_attempts)
	{
		long		delay = judge_wait_asked(t);

		if (delay >= 0 && v->hold_provider && p)
			provider_hold(p, TimestampTzPlusMilliseconds(now, delay), delay,
						  t->http_status);
		if (delay < 0)
			delay = shipsync_backoff_ms(f->c.attempt,
										p ? p->backoff_base_ms : 1000,
										p ? p->backoff_max_ms : 300000,
										pg_prng_double(&pg_global_prng_state));
		r->state = "retrying";
		r->outcome = "retry";
		r->next_at = TimestampTzPlusMilliseconds(now, delay);
		if (strcmp(v->error_class, "resource") == 0)
			ereport(LOG,
					(errmsg("pg_shipsync: out of resources sending intent %lld: %s",
							(long long) f->c.id, r->error),
					 errhint("Raise the open files limit, or lower max_inflight.")));
	}
	else
	{
		r->state = "dead";
		r->outcome = "dead";
		if (v->outcome == SHIP_RETRY)
			r->error = psprintf("gave up after %d attempts: %s", f->c.attempt, r->error);
		else if (r->ticket_kind == NULL)
			r->ticket_kind = ticket_kind_of(v->error_class);
	}
}

/*
 * The wait a failed answer asked for, in ms (at most a day, retry.c):
 * Retry-After, else (on a 429 or 503) X-RateLimit-Reset, as seconds, an
 * HTTP date or a Unix time; -1 when it asked for none.
 */
static long
judge_wait_asked(HttpTransfer *t)
{
	return shipsync_wait_asked(t->http_status, t->retry_after, t->ratelimit_reset,
							   time(NULL));
}

/* r as the start of the result of flight f: who, what, how long */
static void
judge_init(Flight *f, ShipResult *r)
{
	HttpTransfer *t = &f->xfer;

	memset(r, 0, sizeof(*r));
	r->id = f->c.id;
	r->attempt = f->c.attempt;
	r->binding_id = f->c.binding_id;
	r->provider_id = f->c.provider_id;
	r->order_key = f->c.order_key;
	r->kind = f->c.kind;
	r->http_status = t->curl_code == CURLE_OK ? t->http_status : 0;
	r->latency_ms = t->latency_ms;
	r->method = f->c.method;
	r->url = f->c.url;
	r->digest = f->c.digest;
	r->has_content_digest = f->c.has_content_digest;
	r->content_digest = f->c.content_digest;
}

/*
 * Turn one finished transfer into a ShipResult (allocated in the flight's
 * context), deciding done / retrying / dead: the answer's text first (is it
 * storable at all), then the dialect's judgement, then the fields' limits.
 */
static void
dispatcher_judge(Flight *f, ShipResult *r, TimestampTz now)
{
	HttpTransfer *t = &f->xfer;
	Provider   *p = find_provider(f->c.provider_id);
	ShipVerdict v;
	bool		done;
	MemoryContext old = MemoryContextSwitchTo(f->cxt);

	judge_init(f, r);
	r->last_attempt = p != NULL && f->c.attempt >= p->max_attempts;
	if (!judge_text_ok(t, r, &v))
		done = false;
	else
	{
		/* a provider dropped meanwhile: judged as generic, by HTTP */
		DialectAnswer a = {t, &f->c, f->searching,
		p && f->oauth_gen == p->oauth_generation, now};

		done = (p ? p->dialect : &generic_dialect)->judge(&a, p, r, &v);
	}
	if (done && r->ship_ok && !judge_fields_ok(r, &v))
		done = false;
	if (!done)
		judge_retry_or_dead(f, p, r, &v, now);
	if (r->error)
		r->error = sanitize_text(r->error);
	MemoryContextSwitchTo(old);
}

/*
 * Before an answer is judged, its dialect may ask for another request on
 * the same flight (SF Express: a search after 8016, whose answer is then
 * judged instead).  Returns true when that request was sent.
 */
static bool
dispatcher_follow_up(Flight *f, TimestampTz now)
{
	HttpTransfer *t = &f->xfer;
	Provider   *p = find_provider(f->c.provider_id);
	DialectAnswer a = {t, &f->c, f->searching, false, now};
	MemoryContext old;
	char	   *body;

	if (p == NULL || p->dialect->follow_up == NULL)
		return false;
	old = MemoryContextSwitchTo(f->cxt);
	body = p->dialect->follow_up(&a, p);
	if (body == NULL)
	{
		MemoryContextSwitchTo(old);
		return false;
	}
	f->searching = true;
	t->curl_code = CURLE_OK;
	t->http_status = 0;
	t->request_sent = false;
	t->too_large = false;
	t->retry_after = NULL;
	t->ratelimit_reset = NULL;
	t->body = body;
	t->headers = dialect_headers(p, f->c.idempotency_key, true);
	t->tls = p->tls;
	http_submit(client, t);
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * Results applied (here or by the applier, applier.c): their providers may
 * claim again if they had as many waiting for the applier as max_inflight,
 * and those and the providers given new intents (registrations of new
 * waybills) may have work: the next intent of an order may be due.
 */
static void
dispatcher_applied(void)
{
	int32	   *ps;
	uint64		fresh;
	int			n = applier_take(&ps, &fresh, bindings, nbindings);

	/* a write-back left to wait for a held order row: look when it is due */
	if (outbox_writebacks_parked)
	{
		outbox_writebacks_parked = false;
		writeback_wait_due = 1;
	}

	for (int i = 0; i < n; i++)
	{
		Provider   *p = find_provider(ps[i]);

		if (p)
		{
			p->unapplied--;
			p->maybe_work = true;
		}
	}
	for (int i = 0; fresh && i < nproviders; i++)
		if (fresh & SHIPSYNC_PROVIDER_BIT(providers[i].id))
			providers[i].maybe_work = true;
}

/*
 * Judge every transfer that finished, hand the results to be applied, then
 * free them.  A cancel (pg_cancel_backend()) waits until they are handed
 * over: taken off the done list, they were lost with the statement it
 * stopped, their intents in flight until their leases ran out and sent
 * again (TAP 003).  An ERROR ends the hold (errfinish()).
 */
static void
dispatcher_apply_done(TimestampTz now)
{
	HOLD_CANCEL_INTERRUPTS();
	dispatcher_apply_done_held(now);
	RESUME_CANCEL_INTERRUPTS();
}

static void
dispatcher_apply_done_held(TimestampTz now)
{
	HttpTransfer *t;
	Flight	  **done = NULL;
	int			ndone = 0;
	int			cap = 0;
	ShipResult	   *rs;

	while ((t = http_take_done(client)) != NULL)
	{
		if (poller_take(t) || feepull_take(t) || reconcile_take(t))	/* applied below */
			continue;
		if (((Flight *) t->owner)->token_fetch)
		{
			Flight	   *tf = (Flight *) t->owner;

			oauth_done(tf, now);
			MemoryContextDelete(tf->cxt);
			continue;
		}
		if (dispatcher_follow_up((Flight *) t->owner, now))
			continue;
		if (ndone == cap)
		{
			cap = cap ? cap * 2 : 64;
			done = done ? repalloc(done, sizeof(Flight *) * cap) : palloc(sizeof(Flight *) * cap);
		}
		done[ndone++] = (Flight *) t->owner;
	}
	poller_apply();
	feepull_apply();
	reconcile_apply(providers, nproviders, now);
	if (ndone == 0)
	{
		dispatcher_applied();
		return;
	}

	rs = palloc(sizeof(ShipResult) * ndone);
	for (int i = 0; i < ndone; i++)
	{
		Provider   *p = find_provider(done[i]->c.provider_id);

		dispatcher_judge(done[i], &rs[i], now);
		/* the carrier's words in it (bodies, SF messages): escaped, cut */
		if (rs[i].error)
			rs[i].error = dialect_excerpt(rs[i].error, strlen(rs[i].error));
		if (p)
		{
			p->inflight--;
			p->unapplied++;
			p->maybe_work = true;	/* a slot is free; a blocked intent may be due */
			health_record(p, &rs[i], now);
		}
	}

	elog(DEBUG2, "pg_shipsync: %d results to apply, %d in flight", ndone, http_inflight(client));
	applier_submit(rs, ndone, bindings, nbindings);
	for (int i = 0; i < ndone; i++)
		MemoryContextDelete(done[i]->cxt);
	dispatcher_applied();
}

/*
 * As the dispatcher starts, before its heap grows for work: its heap in
 * transparent huge pages (hugeheap.c) when shipsync.dispatcher_huge_pages
 * allows it, and the server's shared memory to touch while it is idle
 * (prefault.c) when shipsync.prefault_memory does.
 */
static void
dispatcher_prepare_memory(void)
{
	const char *why;

	if (shipsync_dispatcher_huge_pages)
	{
		why = shipsync_hugeheap_prepare("/");
		if (why != NULL)
			elog(DEBUG1, "pg_shipsync: the dispatcher's heap stays in small pages: %s", why);
	}
	prefaulting = shipsync_prefault_memory && prefault_server_begin();
}

/* Whether an order's request is on the wire, or its result not yet applied */
static bool
dispatcher_delivering(void)
{
	for (int i = 0; i < nproviders; i++)
		if (providers[i].inflight > 0 || providers[i].unapplied > 0)
			return true;
	return false;
}

/*
 * With shared memory left to touch and nothing to do but wait, touch the
 * next step of it and look again at once: what arrives meanwhile waits one
 * step, a megabyte.  Not while orders are being delivered (a request on
 * the wire, a result not yet applied: their answers and hand-overs come
 * first), nor held back; tracking polls and fee pulls in flight may wait a
 * step.  Not while a session is on the CPU either: the touching would take
 * a core from it, and make the CPU look full to yield.c's judging of the
 * sessions' room; then look again in SHIPSYNC_PREFAULT_RETRY_MS.  Returns
 * the timeout of the wait.
 */
static long
dispatcher_prefault(long timeout, long held, bool holding)
{
	if (!prefaulting || timeout == 0 || held > 0 || holding || dispatcher_delivering())
		return timeout;
	if (yield_sessions_running() > 0)
		return timeout < 0 ? SHIPSYNC_PREFAULT_RETRY_MS : Min(timeout, SHIPSYNC_PREFAULT_RETRY_MS);
	prefaulting = shipsync_prefault_step(SHIPSYNC_PREFAULT_STEP) > 0;
	if (!prefaulting)
		elog(DEBUG1, "pg_shipsync: the dispatcher has touched the server's shared memory");
	return 0;
}

/*
 * A quiet second after a burst (nothing in flight, nothing to do at once,
 * and neither for HEAP_QUIET_MS): free the libcurl handles pooled for the
 * next transfers, and give the heap that the burst left free back to the
 * system.  Each pooled handle holds some 80 kB of buffers, and glibc keeps
 * the peak of a burst (about 20 MB at 256 in flight): reused, not leaked,
 * but it reads as the dispatcher's private memory for good.  Returns the
 * timeout of the sleep, shortened to come back when the quiet second is
 * over: the heap is given back a second after going idle, not at the next
 * wake.
 *
 * Not sooner: a burst has moments with nothing in flight (its results wait
 * for the applier, a rate limit spaces its requests), and a release then
 * cost the rest of the burst the heap it had just grown.  malloc_trim()
 * hands every free page back (an madvise() each, each flushing the TLB of
 * the other CPUs), and the next passes fault every page in again: on the
 * virtual machines we measure on, 6 to 15 us a page.  Given back once a
 * second, a burst of 20,000 had 3 releases and 10,000 faults in it, and
 * the dispatcher spent 129 us an order against 109 without them
 * (docs/architecture.md, the twenty-second round).  The heap's huge pages
 * are given back the same way (hugeheap.c).
 *
 * Nor while delivery waits for its budget (held: yield.c): the backlog is
 * there, only the sessions keep it waiting.  Held back to 1%, a batch of
 * 256 went out every two to four seconds, and the heap was given back
 * after each and grown again by the next: the trim's TLB flushes, which
 * interrupt the sessions' CPUs too, and the faults of the regrowth were
 * 40% of the dispatcher's CPU while it held back (TAP 050).
 */
static long
dispatcher_release_heap(long timeout, long held, TimestampTz now)
{
	static TimestampTz busy_at = 0;
	TimestampTz quiet_at;

	if (timeout == 0 || held > 0 || http_inflight(client) > 0)
	{
		busy_at = now;
		return timeout;
	}
	quiet_at = TimestampTzPlusMilliseconds(busy_at, HEAP_QUIET_MS);
	if (now < quiet_at)
	{
		long		due = ms_until(quiet_at, now) + 1;

		if (heap_dirty && (timeout < 0 || due < timeout))
			timeout = due;
		return timeout;
	}
	/* handles pooled by tracking polls or fee pulls count too */
	if (http_release_idle(client))
		heap_dirty = true;
	if (outbox_inbox_cached() && !drain_all && !drain_unpaused)
	{
		outbox_inbox_forget();	/* nothing more to take from them */
		heap_dirty = true;
	}
	if (!heap_dirty)
		return timeout;
	shipsync_hugeheap_give_back();
	elog(DEBUG1, "pg_shipsync: dispatcher gave its free heap back after %d ms idle",
		 HEAP_QUIET_MS);
	heap_dirty = false;
	return timeout;
}

/*
 * The safety net, every shipsync.idle_check_ms: prepared transactions,
 * clock jumps, expired leases, and configuration changed without the SQL
 * functions.
 */
static void
dispatcher_idle_check(TimestampTz now)
{
	cfg_generation = 0;
	for (int i = 0; i < nproviders; i++)
		providers[i].maybe_work = true;
	outbox_requeue_in_flight(true);
	audit_prune_if_due(now);
	if (writeback_wait_due == 0)
		writeback_wait_due = 1;	/* the safety net: write-backs left to wait */
	if (shipsync_take_prepared(my_slot))
		twophase_watch = true;
	if (twophase_watch)
	{
		/* look first, drain after: a later snapshot than the look */
		twophase_watch = outbox_prepared_exist();
		drain_unpaused = true;
		if (!twophase_watch)
			shipsync_forget_prepared(my_slot);
	}
}

/*
 * After an ERROR escaped a pass of the loop: report it, roll back, and wait
 * a moment (doubling up to a minute while passes keep failing) so that a
 * persistent failure neither spins nor kills the worker; after a cancel,
 * go on at once.
 */
static int	recover_failures = 0;	/* passes that failed in a row */
static bool recover_checking = false;	/* looking for the extension */
static ErrorData *recover_deferred = NULL;	/* thrown again, to be reported */

/*
 * An error of an object missing, which is what a DROP EXTENSION between
 * two statements of a pass gives ("relation "shipsync.provider" does not
 * exist"): not reported until the extension is known to be there.  When it
 * is gone, the worker exits with a LOG line saying so
 * (shipsync_exit_if_dropped()); else the error is thrown again, and
 * reported as any other.
 */
static void
recover_missing_object(MemoryContext loop_cxt)
{
	int			code = geterrcode();

	if (recover_deferred != NULL || recover_checking ||
		(code != ERRCODE_UNDEFINED_TABLE && code != ERRCODE_UNDEFINED_FUNCTION &&
		 code != ERRCODE_UNDEFINED_OBJECT && code != ERRCODE_UNDEFINED_COLUMN &&
		 code != ERRCODE_INVALID_SCHEMA_NAME))
		return;
	MemoryContextSwitchTo(TopMemoryContext);
	recover_deferred = CopyErrorData();
	AbortOutOfAnyTransaction();
	LWLockReleaseAll();
	pgstat_report_wait_end();
	FlushErrorState();
	MemoryContextReset(loop_cxt);
	RESUME_INTERRUPTS();
	recover_checking = true;
	(void) shipsync_exit_if_dropped();
	/* created again at another version: the error is no news either */
	dispatcher_exit_unless_ready();
	recover_checking = false;
	ReThrowError(recover_deferred);
}

static void
dispatcher_recover(MemoryContext loop_cxt)
{
	long		pause_ms;
	bool		cancelled;

	/* the frames the error's context callbacks lived in are gone */
	error_context_stack = NULL;
	HOLD_INTERRUPTS();
	recover_missing_object(loop_cxt);
	EmitErrorReport();
	cancelled = geterrcode() == ERRCODE_QUERY_CANCELED;
	AbortOutOfAnyTransaction();
	LWLockReleaseAll();
	pgstat_report_wait_end();
	MemoryContextSwitchTo(TopMemoryContext);
	FlushErrorState();
	if (recover_deferred)
		FreeErrorData(recover_deferred);
	recover_deferred = NULL;
	MemoryContextReset(loop_cxt);
	RESUME_INTERRUPTS();

	/*
	 * The extension dropped (or replaced by another version) under us: exit
	 * at once, and the next dispatcher waits for it as at the start.  Not
	 * when this check itself failed (we are back here from it): then the
	 * pause below comes first.
	 */
	if (!recover_checking)
	{
		recover_checking = true;
		dispatcher_exit_unless_ready();
		recover_checking = false;
	}
	recover_checking = false;

	/*
	 * pg_cancel_backend(): the statement it stopped is no failure of the
	 * pass to wait out.  A pause here leaves the answers of the requests on
	 * the wire unread until they time out, counted against the carrier
	 * (its breaker opens) and sent again.
	 */
	if (cancelled)
	{
		ereport(LOG,
				(errmsg("pg_shipsync: a statement of the dispatcher was cancelled; it goes on at once")));
		cfg_generation = 0;
		return;
	}

	recover_failures = Min(recover_failures + 1, 7);
	pause_ms = 1000L << (recover_failures - 1);
	pause_ms = Min(pause_ms, 60000L);
	ereport(LOG,
			(errmsg("pg_shipsync: the dispatcher goes on after an error, in %ld ms", pause_ms)));
	/* commits set the latch: they cut the pause short only for a shutdown */
	for (TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), pause_ms);;)
	{
		long		left = ms_until(until, GetCurrentTimestamp());

		if (left <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	/* everything may have changed meanwhile: read it again */
	cfg_generation = 0;
}

/*
 * The worker's start: signals, the connection to its database with a
 * pinned search_path, its slot in shared memory, libcurl; then wait for
 * CREATE EXTENSION, or for ALTER EXTENSION ... UPDATE to this library's
 * version (both scripts wake us through the latch).
 */
static void
dispatcher_start(const char *dbname)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(dbname, NULL, 0);
	/* a superuser session: immune to ALTER DATABASE ... SET search_path */
	shipsync_pin_worker_session(true);
	/* a queue table analyzed in the middle of a take is not empty */
	shipsync_distrust_empty_statistics();
	pgstat_report_appname("pg_shipsync dispatcher");
	dispatcher_claim_slot();
	dispatcher_raise_fd_limit();
	shipsync_set_nice();

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		ereport(FATAL,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not initialize libcurl")));

	while (!dispatcher_extension_ready())
	{
		pgstat_report_activity(STATE_IDLE, "waiting for CREATE EXTENSION pg_shipsync or ALTER EXTENSION pg_shipsync UPDATE");
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 2000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		dispatcher_process_interrupts();
	}
	ext_oid_served = ext_oid_seen;
}

/*
 * Claim and send what is due, and, unless delivery holds back for busy
 * sessions (yield.c), the tracking polls, fee pulls and reconciliation
 * pulls.  While it holds back, the floor's share goes to deliveries: the
 * polls' answers are applied here, in the dispatcher, and polling 2,000
 * shipments a second took more than the floor by itself.  The pulls are a
 * safety net under pushes and a daily comparison; they wait for room.
 */
static void
dispatcher_send_due(TimestampTz now, bool holding)
{
	dispatcher_claim_all(now);
	/* write-backs that waited for a held order row: no request, a short wait */
	if (writeback_wait_due != 0 && writeback_wait_due <= now)
		writeback_wait_due = outbox_writeback_waiting(bindings, nbindings);
	if (holding)
		return;
	poller_send(client, providers, nproviders, now);
	feepull_send(client, providers, nproviders, now);
	reconcile_send(client, providers, nproviders, now);
}

/*
 * How long the loop may wait for what dispatcher_send_due() sends; while
 * holding back, no longer than yield.c looks at the sessions again
 */
static long
dispatcher_due_timeout(TimestampTz now, bool holding)
{
	long		timeout = dispatcher_timeout(now);

	if (writeback_wait_due != 0)
		timeout = Min(timeout, ms_until(writeback_wait_due, now));
	if (holding)
		return yield_cap_timeout(timeout);
	return Min(Min(timeout, poller_timeout(now)),
			   Min(feepull_timeout(now), reconcile_timeout(providers, nproviders, now)));
}

/*
 * The dispatcher's entry point (bgw_function_name): start, take back what a
 * previous dispatcher left in flight, then the loop of the file header.
 */
void
shipsync_dispatcher_main(Datum main_arg)
{
	char		dbname[BGW_EXTRALEN];
	sigjmp_buf	local_sigjmp_buf;
	MemoryContext loop_cxt;
	TimestampTz last_full_look;

	memcpy(dbname, MyBgworkerEntry->bgw_extra, BGW_EXTRALEN);
	dbname[BGW_EXTRALEN - 1] = '\0';

	dispatcher_start(dbname);
	dispatcher_prepare_memory();

	ereport(LOG, (errmsg("pg_shipsync dispatcher started for database \"%s\"", dbname)));
	/* what a dead dispatcher was applying: quarantine, or apply alone */
	applier_wait_gone();
	poison_startup();
	outbox_requeue_in_flight(false);

	client = http_client_create(TopMemoryContext, 1024);
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync dispatcher loop",
									 ALLOCSET_DEFAULT_SIZES);
	dispatcher_load_config();
	applier_ensure();
	last_full_look = GetCurrentTimestamp();

	/*
	 * An ERROR in a pass is reported, its transaction rolled back, and the
	 * loop goes on after a pause: the dispatcher exits only on shutdown,
	 * postmaster death, a dropped database (FATAL) or extension.  What the
	 * failed pass held is not lost: intents left in flight are taken back
	 * when their lease expires.
	 */
	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
		dispatcher_recover(loop_cxt);
	PG_exception_stack = &local_sigjmp_buf;

	for (;;)
	{
		TimestampTz now;
		MemoryContext old;
		long		timeout;
		long		held;
		bool		holding;
		bool		waiting;

		dispatcher_process_interrupts();
		old = MemoryContextSwitchTo(loop_cxt);
		now = GetCurrentTimestamp();
		if (TimestampDifferenceExceeds(last_full_look, now, shipsync_idle_check_ms))
		{
			dispatcher_idle_check(now);
			last_full_look = now;
		}
		if (cfg_generation != pg_atomic_read_u64(&shipsync_shared->config_generation))
			dispatcher_load_config();
		shipsync_replan_grown(now);
		held = yield_wait_ms(now);
		holding = yield_holding();
		if (held == 0)
			dispatcher_send_due(now, holding);

		pgstat_report_activity(STATE_IDLE, NULL);

		/*
		 * A background worker's table statistics reach the cumulative
		 * statistics system only when it flushes them (at most once a
		 * second here): without this, autovacuum would never hear of the
		 * outbox's dead tuples while the dispatcher lives.
		 */
		pgstat_report_stat(false);
		now = GetCurrentTimestamp();
		dispatcher_exchange_masks(now, held > 0);
		/* held back: nothing is claimed nor pulled until then, whatever waits */
		timeout = held > 0 ? held : dispatcher_due_timeout(now, holding);
		timeout = dispatcher_release_heap(timeout, held, now);
		timeout = dispatcher_prefault(timeout, held, holding);
		/* held back with no order on the wire: this pass only waits */
		waiting = held > 0 && !dispatcher_delivering();
		http_wait(client, timeout, PG_WAIT_EXTENSION);

		/*
		 * Reset the latch before looking at the masks: a commit after this
		 * point sets it again, so none is missed.
		 */
		ResetLatch(MyLatch);
		dispatcher_exchange_masks(GetCurrentTimestamp(), held > 0);
		dispatcher_process_interrupts();

		dispatcher_apply_done(GetCurrentTimestamp());
		if (waiting)
			yield_forgive_pass();
		MemoryContextSwitchTo(old);
		MemoryContextReset(loop_cxt);
		shipsync_hugeheap_follow();
		recover_failures = 0;
	}
}
