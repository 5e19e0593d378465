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
#include "utils/timestamp.h"

/* The dialects (provider.c names them, dialect.c holds their operations) */
typedef enum ShipDialect
{
	DIALECT_GENERIC,
	DIALECT_SF_EXPRESS,
	/* tracking dialects: they register waybills (op 'register'), nothing else */
	DIALECT_EASYPOST,
	DIALECT_AFTERSHIP,
	DIALECT_KUAIDI100,
	DIALECT_COUNT
} ShipDialect;

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

	/* dialect and field maps (dialect.c); maps and options are malloc'd */
	ShipDialect dialect;
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

	/* runtime state, carried over reloads */
	int			inflight;
	ShipsyncProviderState *st;	/* breaker, hold, tokens, counters (health.c) */
	TimestampTz next_due;		/* earliest known due retry, 0: unknown */
	bool		maybe_work;		/* look for work at the next pass */

	/* OAuth2: one token shared by every request, carried over reloads */
	char	   *oauth_token;	/* in TopMemoryContext, or NULL */
	TimestampTz oauth_expires_at;
	TimestampTz oauth_refresh_at;	/* refresh from then on, before expiry */
	TimestampTz oauth_retry_at; /* after a failed fetch */
	uint32		oauth_generation;	/* bumped by every new token */
	int			oauth_failures;
	bool		oauth_refreshing;	/* a fetch is in flight: one at a time */
	bool		oauth_refused;	/* the token was refused (401): fetch anew */
	bool		oauth_after_401;	/* this token replaced a refused one */
	char	   *oauth_forbidden;	/* token URL refused by shipsync.allowed_hosts:
									 * why, in TopMemoryContext, until a reload */
} Provider;

#define DIALECT_IS_TRACKING(d) ((d) >= DIALECT_EASYPOST)
/*
 * Stand for the Kuaidi100 key and salt (the provider's webhook secret) in
 * stored subscription bodies; the dispatcher puts the secrets in their
 * place when it sends.
 */
#define DIALECT_KUAIDI100_KEY "__SHIPSYNC_KUAIDI100_KEY__"
#define DIALECT_KUAIDI100_SALT "__SHIPSYNC_KUAIDI100_SALT__"

typedef struct Binding
{
	int32		id;
	Oid			relid;
	char	   *render_sql;
	char	   *writeback_sql;
	int32		tracking_provider_id;	/* option tracking_provider, or 0 */
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
	bool		rendered;		/* request stored by an earlier attempt */
	const char *skip_reason;	/* nothing to send: done with this reason */
	bool		invalid;		/* skip_reason names missing mapped fields */
} Claimed;

/* What became of one attempt, ready to apply */
typedef struct ShipResult
{
	int64		id;
	int			attempt;
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
	const char *ticket_kind;
} ShipResult;

/* in provider.c */
extern ShipDialect provider_dialect_of(const char *name);
extern const char *provider_dialect_name(ShipDialect d);
extern void provider_load_config(MemoryContext cxt, Provider **providers,
								 int *nproviders, Binding **bindings,
								 int *nbindings);
extern void provider_load(MemoryContext cxt, Provider **providers,
						  int *nproviders, int32 only_id, bool with_secrets);
extern const char *provider_secret(const Provider *p, const char *name);
extern int	provider_tokens(Provider *p, TimestampTz now);
extern Binding *binding_find(Binding *bs, int nb, int32 id);

/* in writeback.c: the shipments apply recorded, onto the order rows */
extern void writeback_shipments(Binding *bs, int nb, SPITupleTable *tt,
								uint64 nrows);

/* in outbox.c */
extern void outbox_requeue_in_flight(bool expired_only);
extern bool outbox_prepared_exist(void);
extern int	outbox_claim(Provider *p, Binding *bs, int nb, int max_n,
						 int lease_ms, Claimed **out, TimestampTz *next_due,
						 int *nskipped);
extern uint64 outbox_drain_inbox(int64 limit, const int32 *ids, int nids);
extern void outbox_fail_binding(Provider *p, Claimed *cl, int ncl, int fb,
								const char *msg);
extern ArgArrays *outbox_tickets_create(int n);
extern void outbox_ticket_row(ArgArrays *d, int64 id, int32 binding_id,
							  const char *order_key, int32 provider_id,
							  const char *detail, const char *kind);
extern void outbox_open_tickets(ArgArrays *d);
extern void outbox_render_one(Provider *p, Binding *b, Claimed *c,
							  MemoryContext keep);

/* in dialect.c */
extern void dialect_render(Provider *p, Claimed *c, bool found,
						   const char *generic_body, const char *shipment_id,
						   bool cancel);
extern void dialect_render_register(Provider *p, Claimed *c,
									const char *tracking_number);
extern char *dialect_sf_search_body(Provider *p, const char *order_key,
									const char *request_id);
extern char *dialect_sf_fee_query_body(Provider *p, const char *waybill,
									   const char *request_id);
extern struct curl_slist *dialect_headers(Provider *p, const char *idempotency_key,
										  bool has_body);

/* in apply.c */
extern uint64 outbox_apply(ShipResult *rs, int n, Binding *bs, int nb);

/* in poison.c */
extern void poison_startup(void);
extern bool poison_is_suspect(int64 id);
extern void poison_applying(const ShipResult *rs, int n);
extern void poison_applied(const ShipResult *rs, int n);

/* in health.c */
extern void health_attach(Provider *ps, int n, TimestampTz now);
extern bool health_may_send(Provider *p, TimestampTz now, int *limit);
extern bool health_blocked(Provider *p, TimestampTz now);
extern void health_poll_answered(int32 provider_id, const char *name,
								 TimestampTz now);
extern TimestampTz health_wake_at(Provider *p, TimestampTz now);
extern void health_sent(Provider *p, const Claimed *cs, int n);
extern void health_hold(Provider *p, TimestampTz until);
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
