/*-------------------------------------------------------------------------
 *
 * dispatcher.h
 *		What dispatcher.c and outbox.c share: the in-memory view of
 *		providers and bindings, claimed intents and their results.
 *
 *-------------------------------------------------------------------------
 */
#ifndef SHIPSYNC_DISPATCHER_H
#define SHIPSYNC_DISPATCHER_H

#include "executor/spi.h"
#include "storage/bufmgr.h"
#include "utils/timestamp.h"

/* A dialect's operations (dialect.c has the table of them) */
typedef struct DialectRoutine DialectRoutine;

typedef struct Provider
{
	/* configuration, from shipsync.provider */
	int32		id;
	char	   *name;
	char	   *base_url;
	int			timeout_ms;
	int			max_inflight;
	int			max_attempts;
	int			backoff_base_ms;
	int			backoff_max_ms;
	double		rate_per_s;		/* 0: unlimited */
	bool		paused;
	char	  **headers;		/* static and auth header lines */
	int			nheaders;
	HttpTls    *tls;			/* option tls, or NULL */
	bool		in_use;			/* OAuth2: attached, or intents left to send */

	/* dialect and field maps (provider.c); maps and options are malloc'd */
	const DialectRoutine *dialect;
	char	   *profile;		/* coalesce(options->>'profile', dialect) */
	char	   *auth_type;		/* auth->>'type', or NULL */
	char	   *auth_header;	/* api_key: the header that carries the key */
	char	   *sf_partner_id;
	char	   *sf_checkword;	/* secret */
	char	   *kd_customer;	/* auth kuaidi100: signed headers */
	char	   *kd_key;			/* secret */
	char	   *oauth_token_url;	/* auth oauth2: client credentials */
	char	   *oauth_client_id;
	char	   *oauth_client_secret;	/* secret */
	char	   *oauth_scope;
	char	   *tr_carrier;		/* easypost carrier, aftership slug, kuaidi100 company */
	char	   *tr_callback_url;	/* kuaidi100: where it pushes events */
	char	   *tr_salt;		/* kuaidi100: webhook_secret, signs its pushes */

	/*
	 * Secrets, opened from shipsync.secret (secret.c) when the provider is
	 * loaded with_secrets: the fields marked secret above point into them.
	 * provider_secret() finds one by name (token, checkword, client_key...).
	 */
	int			nsecrets;
	char	  **secret_names;
	char	  **secret_values;
	char	   *secret_error;	/* one cannot be opened: nothing is sent */
	char	   *options_text;	/* the provider's options, as JSON text */
	ShipJson   *options;		/* the same, parsed, for option: sources */
	ShipMap    *out_map;		/* NULL: no outbound rows (generic body) */
	ShipMap    *in_map;			/* NULL: no inbound rows */
	char	   *map_error;		/* the profile's rows do not compile */
	MapRowIndex row_index;		/* scratch space of one render */

	int			breaker_failures;	/* options: consecutive failures that open */
	int			breaker_cooldown_ms;	/* and the first wait before a probe */
	int			poll_interval_s;	/* options: tracking pulls (poller.c), 0: none */
	bool		fee_pull;		/* options: fee_pull_after is set (feepull.c) */

	/* runtime state, carried over reloads */
	int			inflight;		/* requests on the wire */
	int			unapplied;		/* results answered, not yet applied */
	ShipsyncProviderState *st;	/* breaker, hold, tokens, counters (health.c) */
	TimestampTz next_due;		/* earliest known due retry, 0: unknown */
	bool		maybe_work;		/* look for work at the next pass */
	int64		inbox_from;		/* its intents from this id on wait in the
								 * inbox for room (dispatcher_take()), 0: none */
	int			inbox_room;		/* the room its next take needs */
	bool		inbox_new;		/* it captured since the take's read */

	/* OAuth2: one token shared by every request, carried over reloads */
	char	   *oauth_token;	/* in TopMemoryContext, or NULL */
	TimestampTz oauth_send_until;	/* sent until then, some time before its end */
	TimestampTz oauth_refresh_at;	/* refresh from then on, before that */
	TimestampTz oauth_asked_at; /* when the fetch in flight was sent */
	TimestampTz oauth_retry_at; /* after a failed fetch */
	uint32		oauth_generation;	/* bumped by every new token */
	int			oauth_failures;
	bool		oauth_refreshing;	/* a fetch is in flight: one at a time */
	bool		oauth_refused;	/* the token was refused (401): fetch anew */
	TimestampTz oauth_refused_at;	/* when it was */
	bool		oauth_after_401;	/* this token replaced a refused one */
	char	   *oauth_forbidden;	/* token URL refused by shipsync.allowed_hosts:
									 * why, in TopMemoryContext, until a reload */
} Provider;

typedef struct Binding
{
	int32		id;
	Oid			relid;
	char	   *render_sql;
	char	   *writeback_sql;
	int32		tracking_provider_id;	/* option tracking_provider, or 0 */
	bool		active;			/* attached (binding.active) */
	SPIPlanPtr	render_plan;	/* saved lazily, freed at reload */
} Binding;

typedef enum IntentKind
{
	INTENT_CREATE,
	INTENT_UPDATE,
	INTENT_CANCEL,
	INTENT_REGISTER				/* a waybill registered at a tracking provider */
} IntentKind;

/* One claimed intent, with the request to send */
typedef struct Claimed
{
	int64		id;
	int32		binding_id;
	int32		provider_id;
	char	   *order_key;
	char	   *op;
	char	   *idempotency_key;
	int			attempt;
	char	   *method;
	char	   *url;
	char	   *body;
	char	   *digest;
	IntentKind	kind;
	bool		has_content_digest; /* content_digest is known (not a cancel,
									 * nor a request stored before 0.2) */
	int64		content_digest; /* of the order row the request was rendered
								 * from: outbox.content_digest */
	bool		rendered;		/* request stored by an earlier attempt */
	bool		later_update;	/* an update of the same order waits behind it */
	const char *skip_reason;	/* nothing to send: done with this reason */
	bool		invalid;		/* skip_reason names missing mapped fields */
} Claimed;

/* What became of one attempt, ready to apply */
typedef struct ShipResult
{
	int64		id;
	int			attempt;
	bool		last_attempt;	/* at max_attempts: if this apply were lost in a
								 * crash, the intent would not be sent again */
	int32		binding_id;
	int32		provider_id;
	char	   *order_key;
	IntentKind	kind;
	const char *state;			/* done, retrying, dead */
	const char *outcome;		/* for delivery_log */
	TimestampTz next_at;
	long		http_status;
	const char *error_class;
	char	   *error;
	double		latency_ms;
	char	   *method;
	char	   *url;
	char	   *digest;
	bool		has_content_digest;
	int64		content_digest; /* the intent's, for the shipment it records */
	/* on success */
	bool		ship_ok;
	char	   *ship_id;
	char	   *tracking_number;
	char	   *label_url;
	char	   *raw_status;
	char	   *fees_body;		/* the answer's "fees" array, as JSON text */
	char	   *waybills;		/* every waybill, as JSON (SF Express) */
	/* slow path */
	bool		no_writeback;
	bool		park_writeback; /* recorded, its write-back left to wait for a
								 * held order row (writeback_wait) */
	const char *ticket_kind;
} ShipResult;

/* in yield.c: holding back while the sessions want every core */
extern long yield_wait_ms(TimestampTz now);
extern bool yield_holding(void);
extern void yield_forgive_pass(void);
extern long yield_cap_timeout(long timeout);
extern int	yield_sessions_running(void);

/*
 * The server's main shared memory segment, made the one the next
 * shipsync_prefault_step() calls touch (prefault.c): all of it but the
 * shared buffers past SHIPSYNC_PREFAULT_BUFFERS_MAX.  Whether any is left.
 */
static inline bool
prefault_server_begin(void)
{
	return shipsync_prefault_begin("/proc/self/maps", BufferBlocks,
								   (size_t) NBuffers * BLCKSZ,
								   SHIPSYNC_PREFAULT_BUFFERS_MAX) > 0;
}

/* in provider.c */
extern void provider_load_config(MemoryContext cxt, Provider **providers,
								 int *nproviders, Binding **bindings,
								 int *nbindings);
extern void provider_load(MemoryContext cxt, Provider **providers,
						  int *nproviders, int32 only_id, bool with_secrets);
extern const char *provider_secret(const Provider *p, const char *name);
extern int	provider_tokens(Provider *p, TimestampTz now);
extern Binding *binding_find(Binding *bs, int nb, int32 id);

/* in writeback.c: the saved plans of bindings no longer attached, freed */
extern void writeback_forget_plans(const Binding *bs, int nb);
/* in writeback.c: the shipments apply recorded, onto the order rows */
extern void writeback_shipments(Binding *bs, int nb, SPITupleTable *tt,
								uint64 nrows);
extern void writeback_shipments_within(Binding *bs, int nb, SPITupleTable *tt,
									  uint64 nrows, int lock_timeout_ms);
extern bool writeback_error_passes(const ErrorData *e);

/* in outbox.c */
extern void outbox_requeue_in_flight(bool expired_only);
extern bool outbox_prepared_exist(void);
extern XLogRecPtr outbox_claims_unflushed(void);
extern void outbox_claims_durable(void);
extern int	outbox_claim(Provider *p, Binding *bs, int nb, int max_n,
						 int lease_ms, Claimed **out, TimestampTz *next_due,
						 int *nskipped);
extern uint64 outbox_drain_inbox(int64 limit, const int32 *ids, int nids,
								 int64 *low);
extern int64 outbox_intents_next(void);

/* One provider's part in a take from the inbox (outbox_take_inbox()) */
typedef struct InboxTake
{
	Provider   *p;
	bool		sends;			/* in: it may send now, so that its intents
								 * beyond its room may wait in the inbox */
	int			room;			/* in: how many it may send now */
	Claimed    *cs;				/* out: sent from the inbox, in flight */
	int			n;
	int			nskipped;		/* out: finished with nothing to send */
	bool		moved;			/* out: intents of it now wait in the outbox */
	int64		wait_from;		/* out: its intents from this id on wait in
								 * the inbox, 0: none */
} InboxTake;

extern uint64 outbox_take_inbox(int64 limit, const int32 *ids, int nids,
								Binding *bs, int nb, InboxTake *t, int nt,
								bool reread, bool *full, int64 *low, bool *fresh);
/* The most rows of the inbox one read of the take keeps */
#define INBOX_READ_MAX 32768
extern bool outbox_take_found_nothing(const InboxTake *t);
extern bool outbox_inbox_cached(void);
extern void outbox_inbox_forget(void);
extern void outbox_fail_binding(Provider *p, Claimed *cl, int ncl, int fb,
								const char *msg, bool locked);
extern ArgArrays *outbox_tickets_create(int n);
extern void outbox_ticket_row(ArgArrays *d, int64 id, int32 binding_id,
							  const char *order_key, int32 provider_id,
							  const char *detail, const char *kind);
extern void outbox_open_tickets(ArgArrays *d);
extern void outbox_render_one(Provider *p, Binding *b, Claimed *c,
							  MemoryContext keep);

/* One answer, as a dialect judges it */
typedef struct DialectAnswer
{
	HttpTransfer *t;
	const Claimed *c;
	bool		searching;		/* the answer of a follow-up request */
	bool		oauth_current;	/* sent with the provider's current OAuth2 token */
	TimestampTz now;
} DialectAnswer;

/* One push, as a dialect verifies it */
typedef struct DialectPush
{
	char	   *(*header) (void *arg, const char *name);	/* a header, or NULL */
	void	   *arg;
	const char *body;
	size_t		len;
	const char *param;			/* form pushes: the decoded fields param, sign */
	const char *sign;
} DialectPush;

/*
 * A dialect: how requests to one kind of carrier are made and judged, and
 * how its pushes are checked (FdwRoutine style: one file of src/dialects/
 * per dialect, one line of dialect.c's table).  A NULL operation is one
 * the dialect does not have.
 */
struct DialectRoutine
{
	const char *name;			/* as shipsync.provider.dialect holds it */
	bool		tracking;		/* only registers waybills (op register) */
	bool		needs_out_map;	/* its bodies come only from an outbound map */
	bool		form_body;		/* application/x-www-form-urlencoded requests */
	bool		render_secrets; /* render_request() needs the secrets */
	const char *timezone;		/* of its times without a zone */

	/* the request of a create, update or cancel; or why there is none */
	void		(*render) (Provider *p, Claimed *c, bool found,
						   const char *generic_body, const char *shipment_id,
						   bool cancel);
	/* the registration of a waybill at a tracking provider */
	void		(*render_register) (Provider *p, Claimed *c,
									const char *tracking_number);
	/* last touches before a request goes: secrets into c->body, headers */
	struct curl_slist *(*sign) (Provider *p, Claimed *c, struct curl_slist *h);
	/* judge an answer: true when r is done, else *v for the retry tail */
	bool		(*judge) (const DialectAnswer *a, Provider *p, ShipResult *r,
						  ShipVerdict *v);
	/* a request to send on the same flight before judging, or NULL */
	char	   *(*follow_up) (const DialectAnswer *a, Provider *p);
	/* the body that looks one order up by its key (reconciliation), or NULL */
	char	   *(*lookup) (Provider *p, const char *order_key,
						   const char *request_id);
	/* the body of a fee query for a waybill, or NULL: GET .../fees */
	char	   *(*fee_query) (Provider *p, const char *waybill,
							  const char *request_id);

	/* the events of a tracking payload (push or pull), or NULL: none */
	TrackingReader read_tracking;
	/* a tracking dialect's answer to a registration (dialect_judge_tracker) */
	TrackerAnswerReader tracker_answer;

	/* pushes: NULL verify_push means they carry no signature */
	SigResult	(*verify_push) (const char *secret, const DialectPush *push,
								const char **reason);
	bool		form_push;		/* the payload is form field param, signed by sign */
	bool		nfkd_secret;	/* the webhook secret is compared in NFKD */
	const char *push_reply;		/* the body answering a push, or NULL */
};

/* in dialect.c: the table of dialects; the header lines of a request */
extern const DialectRoutine *dialect_find(const char *name);
extern struct curl_slist *dialect_headers(Provider *p, const char *idempotency_key,
										  bool has_body);

/* in dialects/shared.c: what the dialects share */
extern char *dialect_take_malloced(char *s);
extern void dialect_check_map(Provider *p);
extern char *dialect_render_mapped(Provider *p, Claimed *c, const char *generic_body,
								   bool form);
extern char *dialect_excerpt(const char *s, size_t len);
extern char *dialect_transfer_error(const HttpTransfer *t, bool in_doubt,
									const char *detail);
extern void dialect_refuse(ShipResult *r, ShipVerdict *v, long http_status,
						   const char *why);
extern bool dialect_in_map(Provider *p, ShipJson *doc, ShipResponse *sr,
						   bool need_ids, char *err, size_t errlen);
extern void dialect_done(ShipResult *r);
extern bool dialect_judge_tracker(const DialectAnswer *a, Provider *p,
								  ShipResult *r, ShipVerdict *v);

/* in src/dialects/: one routine each */
extern const DialectRoutine generic_dialect;
extern const DialectRoutine sf_express_dialect;
extern const DialectRoutine kuaidi100_dialect;
extern const DialectRoutine easypost_dialect;
extern const DialectRoutine aftership_dialect;

/* in apply.c */
extern uint64 outbox_apply(ShipResult *rs, int n, Binding *bs, int nb);
extern bool outbox_writebacks_parked;
extern TimestampTz outbox_writeback_waiting(Binding *bs, int nb);
extern void outbox_apply_prepare(void);

/* in applier.c */
extern PGDLLEXPORT void shipsync_applier_main(Datum main_arg);
extern void applier_ensure(void);
extern void applier_submit(ShipResult *rs, int n, Binding *bs, int nb);
extern int	applier_applying(int32 provider_id);
extern int	applier_take(int32 **providers, uint64 *fresh, Binding *bs, int nb);
extern void applier_wait_gone(void);

/* in poison.c */
extern void poison_startup(void);
extern bool poison_is_suspect(int64 id);
extern void poison_applying(const int64 *ids, int n);
extern void poison_applied(const int64 *ids, int n);

/* in health.c */
extern void health_attach(Provider *ps, int n, TimestampTz now, Oid extoid);
extern bool health_may_send(Provider *p, TimestampTz now, int *limit);
extern bool health_blocked(Provider *p, TimestampTz now);
extern void health_poll_answered(int32 provider_id, const char *name,
								 TimestampTz now);
extern TimestampTz health_wake_at(Provider *p, TimestampTz now);
extern void health_sent(Provider *p, const Claimed *cs, int n);
extern void health_hold(Provider *p, TimestampTz until);
extern void health_poll_result(int32 provider_id, const char *name, const char *what,
							   bool answered, long http_status, const char *retry_after,
							   const char *ratelimit_reset);
extern bool health_end_hold(Provider *p);
extern void health_record(Provider *p, const ShipResult *r, TimestampTz now);

/* in poller.c: the tracking poller, driven by the dispatcher's loop */
extern void poller_send(HttpClient *client, Provider *providers,
						int nproviders, TimestampTz now);
extern bool poller_take(HttpTransfer *t);
extern void poller_apply(void);
extern long poller_timeout(TimestampTz now);
extern void poller_invalidate(void);

/* in feepull.c: the fee queries after delivery, driven by the same loop */
extern void feepull_send(HttpClient *client, Provider *providers,
						 int nproviders, TimestampTz now);
extern bool feepull_take(HttpTransfer *t);
extern void feepull_apply(void);
extern long feepull_timeout(TimestampTz now);
extern void feepull_invalidate(void);

/* in reconcile.c: the reconciliation pull and schedule, driven likewise */
extern void reconcile_send(HttpClient *client, Provider *providers,
						   int nproviders, TimestampTz now);
extern bool reconcile_take(HttpTransfer *t);
extern void reconcile_apply(Provider *providers, int nproviders,
							TimestampTz now);
extern long reconcile_timeout(Provider *providers, int nproviders,
							  TimestampTz now);
extern void reconcile_invalidate(void);

#endif							/* SHIPSYNC_DISPATCHER_H */
