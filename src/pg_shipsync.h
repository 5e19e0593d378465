/*-------------------------------------------------------------------------
 *
 * pg_shipsync.h
 *		Internal declarations shared by the files of pg_shipsync.
 *
 * Grouped by the file that defines them.  json.c is the only file that
 * includes json-c; it talks to the rest through the plain C structs below.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG_SHIPSYNC_H
#define PG_SHIPSYNC_H

/* the extension version this library works (pg_shipsync.control) */
#define SHIPSYNC_EXTVERSION "0.2"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/*
 * Most of this header is PostgreSQL-facing; json.c and retry.c compile
 * without PostgreSQL headers (they are fuzzed alone), so they see only the
 * plain part, guarded by SHIPSYNC_PLAIN_C.
 */

/* ---- plain C part (no PostgreSQL headers needed) ---- */

/*
 * The plain-C files call this when malloc fails.  In the server
 * (pg_shipsync.c) it raises an ERROR, so the dispatcher or backend recovers
 * like from any other error; abort() there would make the postmaster
 * restart every backend.  The unit tests and the fuzz target define it as
 * abort().
 */
extern void shipsync_out_of_memory(void) __attribute__((noreturn));

/*
 * in crypto.c: every cryptographic helper, by section.  Randomness; keys;
 * authenticated encryption (AES-256-GCM, and the sealing of secrets built
 * on it); digests and HMAC; their encodings (hex, base64).
 */
#define SHIPSYNC_KEY_LEN		32	/* bytes of an AES-256 key */
#define SHIPSYNC_KEY_ID_LEN		16	/* hex digits identifying a key */
#define SHIPSYNC_GCM_NONCE_LEN	12	/* 96 bits, drawn afresh per value */
#define SHIPSYNC_GCM_TAG_LEN	16
/* bytes of a sealed secret of len bytes: nonce, ciphertext, tag */
#define SHIPSYNC_SEALED_LEN(len) (SHIPSYNC_GCM_NONCE_LEN + (len) + SHIPSYNC_GCM_TAG_LEN)

extern bool shipsync_random_bytes(unsigned char *buf, size_t len);
extern bool shipsync_key_parse(const unsigned char *buf, size_t len,
							   unsigned char key[SHIPSYNC_KEY_LEN]);
extern bool shipsync_key_id(const unsigned char key[SHIPSYNC_KEY_LEN],
							char out[SHIPSYNC_KEY_ID_LEN + 1]);
extern bool shipsync_gcm_encrypt(const unsigned char *key,
								 const unsigned char *nonce,
								 const unsigned char *aad, size_t aadlen,
								 const unsigned char *in, size_t len,
								 unsigned char *out, unsigned char *tag);
extern bool shipsync_gcm_decrypt(const unsigned char *key,
								 const unsigned char *nonce,
								 const unsigned char *aad, size_t aadlen,
								 const unsigned char *in, size_t len,
								 const unsigned char *tag, unsigned char *out);
extern bool shipsync_secret_seal(const unsigned char *key, const char *provider,
								 const char *name, const char *value,
								 size_t len, unsigned char *sealed);
typedef enum ShipDigest
{
	SHIPSYNC_MD5,
	SHIPSYNC_SHA1,
	SHIPSYNC_SHA256
} ShipDigest;

extern bool shipsync_digest(ShipDigest alg, int n, const void *const *parts,
							const size_t *lens, unsigned char *out);
extern bool shipsync_md5(const char *s, unsigned char out[16]);
extern bool shipsync_sha256(const void *in, size_t len, unsigned char out[32]);
extern bool shipsync_hmac_sha256(const void *key, size_t keylen,
								 const void *msg, size_t msglen,
								 unsigned char out[32]);
extern bool shipsync_ct_equal(const char *a, size_t alen, const char *b,
							  size_t blen);
extern void shipsync_cleanse(void *p, size_t len);
extern void shipsync_base64_encode(const unsigned char *in, size_t len, char *out);
extern long shipsync_base64_decode(const char *in, size_t len, unsigned char *out);
extern void shipsync_hex_encode(const unsigned char *in, size_t len, char *out,
								bool upper);
#define SHIPSYNC_UUID_TEXT_LEN 37	/* 36 characters and the NUL */
extern void shipsync_uuid_format(const unsigned char *uuid, char *out);
extern bool shipsync_secret_open(const unsigned char *key, const char *provider,
								 const char *name, const unsigned char *sealed,
								 size_t sealed_len, char *value);

/* What a carrier answered to a create, update or cancel (in json.c) */
typedef struct ShipResponse
{
	char	   *id;				/* provider shipment id, malloc'd or NULL */
	char	   *tracking_number;
	char	   *label_url;
	char	   *status;
	char	   *fees;			/* "fees" as JSON text, when present and well-formed */
	bool		refused;		/* read, but a field is refused (permanent) */
} ShipResponse;

/* Limits on what a carrier's answer may carry (docs/wire-contract.md) */
#define SHIPSYNC_MAX_ID_BYTES		128 /* shipment id, tracking number, status */
#define SHIPSYNC_MAX_URL_BYTES		2048	/* label URL */
#define SHIPSYNC_MAX_NUMBER_CHARS	1000	/* a number, or a fee amount string */

/*
 * The longest order key, as text, that capture takes: every index of ours
 * over order_key (the outbox's, the shipment's, the ledger's) must hold it
 * beside its other columns within btree's 2,704 bytes an entry, whatever
 * its bytes compress to (docs/sql-reference.md, attach()).
 */
#define SHIPSYNC_MAX_KEY_BYTES		2000

/* in json.c */
extern bool shipsync_parse_ship_response(const char *body, size_t len,
										 bool need_ids, ShipResponse *out,
										 char *errbuf, size_t errlen);
extern void shipsync_free_ship_response(ShipResponse *r);
extern bool shipsync_is_decimal(const char *s);
extern bool shipsync_check_response_text(const char *body, size_t len,
										 char *errbuf, size_t errlen);
extern bool shipsync_check_push_text(const char *body, size_t len,
									 char *errbuf, size_t errlen);

/* Outcome classes of one HTTP attempt (in retry.c) */
typedef enum ShipOutcome
{
	SHIP_OK,					/* applied: shipment created/updated/cancelled */
	SHIP_RETRY,					/* transient: try again after a delay */
	SHIP_DEAD					/* permanent: stop, open a ticket */
} ShipOutcome;

typedef struct ShipVerdict
{
	ShipOutcome outcome;
	const char *error_class;	/* static string: ok, http_5xx, timeout, ... */
	bool		in_doubt;		/* the request may have reached the carrier */
	bool		hold_provider;	/* 429/503 with Retry-After: pause provider */
} ShipVerdict;

/* One error class (retry.c holds the table of them all) */
typedef struct ShipErrorClass
{
	const char *name;
	bool		breaker;		/* counts toward the provider's circuit breaker */
} ShipErrorClass;

/* at most this many rows in shipsync_error_classes (shared memory counters) */
#define SHIPSYNC_MAX_ERROR_CLASSES 48

/* in retry.c */
extern const ShipErrorClass shipsync_error_classes[];
extern const int shipsync_n_error_classes;
extern int	shipsync_error_class_index(const char *name);
extern ShipVerdict shipsync_classify(int curl_code, long http_status,
									 bool request_sent, bool body_ok);
extern bool shipsync_tls_alert(int curl_code, const char *errbuf);
extern long shipsync_parse_wait(const char *value, bool reset, time_t now);
extern long shipsync_wait_asked(long http_status, const char *retry_after,
								const char *ratelimit_reset, time_t now);
extern long shipsync_backoff_ms(int attempt, long base_ms, long max_ms,
								double random01);
extern const char *shipsync_sf_error_class(int cls);
extern char *shipsync_excerpt(const char *in, size_t len, int max_chars,
							  char *out, size_t outsize);
extern long shipsync_utf8_invalid_at(const char *text, size_t len);

/* last_error keeps at most this many characters of a carrier's answer */
#define SHIPSYNC_EXCERPT_CHARS 300

/* An IP address; IPv4 held as IPv4-mapped IPv6 (in hostcheck.c) */
typedef struct ShipAddr
{
	unsigned char b[16];
} ShipAddr;

/* What an address reaches: anything but public is internal */
typedef enum ShipAddrKind
{
	ADDR_PUBLIC,
	ADDR_LOOPBACK,				/* 127.0.0.0/8, ::1 */
	ADDR_PRIVATE,				/* RFC 1918, fc00::/7, fec0::/10 */
	ADDR_SHARED,				/* 100.64.0.0/10 (carrier-grade NAT) */
	ADDR_LINK_LOCAL,			/* 169.254.0.0/16, fe80::/10 */
	ADDR_UNSPECIFIED,			/* 0.0.0.0/8, :: */
	ADDR_MULTICAST,				/* 224.0.0.0/4, ff00::/8 */
	ADDR_RESERVED				/* 240.0.0.0/4 and other special ranges */
} ShipAddrKind;

/* The parsed value of shipsync.allowed_hosts: one malloc'd block */
typedef struct ShipAllowList ShipAllowList;

struct sockaddr;

/* in hostcheck.c */
extern bool shipsync_addr_parse(const char *text, ShipAddr *out);
extern bool shipsync_addr_from_sockaddr(const struct sockaddr *sa, ShipAddr *out);
extern ShipAddrKind shipsync_addr_kind(const ShipAddr *a);
extern const char *shipsync_addr_kind_name(ShipAddrKind kind);
extern void shipsync_addr_format(const ShipAddr *a, char *buf, size_t len);
extern ShipAllowList *shipsync_allowlist_parse(const char *text, char *err,
											   size_t errlen);
extern bool shipsync_allowlist_covers(const ShipAllowList *l, const ShipAddr *a);
extern bool shipsync_allowlist_names(const ShipAllowList *l, const char *host);
extern bool shipsync_allowlist_has_names(const ShipAllowList *l);

/* ---- mapping (mapping.c), JSON trees (json.c), signatures (sign.c) ---- */

/* A value read from a row, a response or a constant, or produced by a map */
typedef enum MapValueType
{
	MV_NULL,					/* absent or JSON null */
	MV_STRING,
	MV_NUMBER,					/* s holds the JSON number's text */
	MV_BOOL,					/* s is "true" or "false" */
	MV_RAW						/* s holds a JSON object or array, as text */
} MapValueType;

typedef struct MapValue
{
	MapValueType type;
	char	   *s;				/* malloc'd, NULL for MV_NULL */
} MapValue;

/* One step of a dotted path: name, name[k=v] or name[3] */
typedef struct MapSeg
{
	char	   *name;
	int			kind;			/* MAPSEG_PLAIN, MAPSEG_FILTER, MAPSEG_INDEX */
	char	   *fkey;			/* filter: member name */
	char	   *fval;			/* filter: value, as written (unquoted) */
	bool		fval_string;	/* filter value was quoted or is not a number */
	int			index;
} MapSeg;

#define MAPSEG_PLAIN	0
#define MAPSEG_FILTER	1
#define MAPSEG_INDEX	2

typedef struct MapPath
{
	MapSeg	   *segs;
	int			nsegs;
} MapPath;

typedef struct ShipJson ShipJson;	/* a parsed JSON document (json.c) */
typedef struct ShipMap ShipMap;		/* a compiled field map (mapping.c) */

/* Resolves a named time zone's UTC offset at a UTC instant; false: unknown */
typedef bool (*MapTzOffsetFn) (const char *zone, int64_t utc_epoch,
							   int *offset_s, void *arg);

/*
 * The members of one flat JSON object, found by one scan and no copy: how
 * a render reads the order row (PostgreSQL's row_to_json output).
 */
#define MAPROW_MAX 256
typedef struct MapRowIndex
{
	int			n;
	const char *key[MAPROW_MAX];	/* into the scanned text, still escaped */
	int			keylen[MAPROW_MAX];
	const char *val[MAPROW_MAX];	/* the raw JSON value */
	int			vallen[MAPROW_MAX];
} MapRowIndex;

/* What one render reads from: the order row, provider options, the intent */
typedef struct MapEnv
{
	const MapRowIndex *flat;	/* the order row, scanned; or NULL, then: */
	ShipJson   *row;			/* the order row as a JSON object */
	ShipJson   *options;		/* the provider's options, or NULL */
	const char *order_key;
	const char *idempotency_key;
	MapTzOffsetFn tz_offset;	/* for named zones; NULL: offsets and UTC only */
	void	   *tz_arg;
} MapEnv;

typedef enum MapOutcome
{
	MAP_OK,
	MAP_INVALID,				/* required field missing or a value malformed */
	MAP_ERROR					/* the map itself cannot apply (path conflict) */
} MapOutcome;

/* in mapping.c */
extern bool shipsync_path_parse(const char *text, MapPath *out,
								char *errbuf, size_t errlen);
extern void shipsync_path_free(MapPath *p);
extern void shipsync_value_free(MapValue *v);
extern void shipsync_trim_in_place(char *s);
extern bool shipsync_row_index(const char *json, const char *member,
							   MapRowIndex *idx);
extern ShipMap *shipsync_map_compile(int n, const char *const *targets,
									 const char *const *sources,
									 const char *const *transforms,
									 const char *const *args,
									 const char *const *defaults,
									 const bool *required,
									 char *errbuf, size_t errlen);
extern void shipsync_map_free(ShipMap *m);
extern int	shipsync_map_size(const ShipMap *m);
extern MapOutcome shipsync_map_render(const ShipMap *m, const MapEnv *env,
									  bool form, char **out,
									  char *errbuf, size_t errlen);
extern MapOutcome shipsync_map_read(const ShipMap *m, ShipJson *doc,
									const MapEnv *env, char ***fields,
									MapValue **values, int *n,
									char *errbuf, size_t errlen);
extern bool shipsync_map_transform(const char *transform, const char *arg,
								   const MapValue *in, const MapEnv *env,
								   MapValue *out, char *errbuf, size_t errlen);

/* in json.c: JSON documents for the mapping engine */
extern ShipJson *shipsync_json_parse(const char *text, size_t len,
									 char *errbuf, size_t errlen);
extern void shipsync_json_free(ShipJson *doc);
extern bool shipsync_json_is_object(const ShipJson *doc);
extern ShipJson *shipsync_json_member_doc(ShipJson *doc, const char *key);
extern bool shipsync_json_get(ShipJson *doc, const MapPath *path,
							  MapValue *out);
extern bool shipsync_json_arg_string(const char *arg, const char *key,
									 char **out);
extern bool shipsync_json_arg_lookup(const char *arg, const char *key,
									 MapValue *out, bool *found);

/* The answer of SF Express to one request (json.c) */
typedef enum SfClass
{
	SF_OK,						/* A1000 and success */
	SF_DUPLICATE,				/* 8016: the order exists, search it */
	SF_ALREADY_CANCELLED,		/* 8037: a cancel already done */
	SF_AUTH,					/* signature or partner: dead, no retry storm */
	SF_RETRY,					/* busy, system error, unknown gateway code */
	SF_PERMANENT,				/* the data was refused */
	SF_NOT_FOUND				/* a search found no order */
} SfClass;

typedef struct SfResponse
{
	SfClass		cls;
	char	   *code;			/* apiResultCode or errorCode, malloc'd */
	char	   *message;		/* apiErrorMsg or errorMsg, malloc'd */
	char	   *order_id;		/* msgData.orderId */
	char	   *waybill;		/* waybillType 1 (or the first one) */
	char	   *waybills;		/* waybillNoInfoList as JSON text */
} SfResponse;

extern bool shipsync_parse_sf_response(const char *body, size_t len,
									   bool search, SfResponse *out,
									   char *errbuf, size_t errlen);
extern bool shipsync_parse_token_response(const char *body, size_t len,
										  char **token, long *expires_in,
										  char *errbuf, size_t errlen);
extern bool shipsync_parse_sf_doc(ShipJson *doc, bool search, SfResponse *out,
								  char *errbuf, size_t errlen);
extern void shipsync_free_sf_response(SfResponse *r);

/* A tracking provider's answer to a registration (json.c) */
typedef enum TrackClass
{
	TRACK_OK,					/* registered (or already was) */
	TRACK_AUTH,					/* credentials refused: dead, ticket */
	TRACK_RETRY,
	TRACK_PERMANENT,
	TRACK_HTTP					/* judge by the HTTP status alone */
} TrackClass;

/* in json.c: a tracking provider's answer to a registration, per dialect */
typedef TrackClass (*TrackerAnswerReader) (const char *body, size_t len,
										   long http_status, char **id,
										   char **status, char *errbuf,
										   size_t errlen);
extern TrackClass shipsync_tracker_answer_easypost(const char *body, size_t len,
												   long http_status, char **id,
												   char **status, char *errbuf,
												   size_t errlen);
extern TrackClass shipsync_tracker_answer_aftership(const char *body, size_t len,
													long http_status, char **id,
													char **status, char *errbuf,
													size_t errlen);
extern TrackClass shipsync_tracker_answer_kuaidi100(const char *body, size_t len,
													long http_status, char **id,
													char **status, char *errbuf,
													size_t errlen);

/* in retry.c */
extern SfClass shipsync_sf_classify(const char *api_code, bool success,
									const char *error_code, bool search);

/* in sign.c */
extern char *shipsync_urlencode_java(const char *s);
extern char *shipsync_urlencode_form(const char *s);
extern char *shipsync_sf_digest(const char *msg_data, const char *timestamp,
								const char *checkword);
extern char *shipsync_sf_form(const char *partner_id, const char *request_id,
							  const char *service_code, const char *timestamp,
							  const char *msg_data, const char *checkword);
extern char *shipsync_md5_upper_hex(const char *s);

/* Kinds of personal values, as named in shipsync.field_map.pii (mask.c) */
#define PII_NONE	(-1)
#define PII_NAME	0
#define PII_PHONE	1
#define PII_ADDRESS 2
#define PII_EMAIL	3
#define PII_ID_NUMBER 4
#define PII_TEXT	5

/*
 * in hugeheap.c: the dispatcher's heap in transparent huge pages
 */
extern const char *shipsync_hugeheap_prepare(const char *root);
extern void shipsync_hugeheap_follow(void);
extern void shipsync_hugeheap_give_back(void);

/*
 * in prefault.c: pages a worker will touch, touched ahead of its work
 */
#define SHIPSYNC_PREFAULT_STEP 256	/* pages a step: a megabyte of 4 kB pages */
#define SHIPSYNC_PREFAULT_RETRY_MS 10	/* sessions on the CPU: look again after */
#define SHIPSYNC_PREFAULT_BUFFERS_MAX ((size_t) 1024 * 1024 * 1024) /* of the shared buffers */
extern long shipsync_prefault_begin(const char *maps, const void *pool, size_t pool_bytes,
									size_t pool_most);
extern long shipsync_prefault_step(long max_pages);
extern const char *shipsync_prefault_heap(size_t bytes);

/*
 * in cpuroom.c: the idle share of the CPU this server may use (its CPUs,
 * its control group's CPU quota)
 */
typedef struct CpuRoom CpuRoom;
extern CpuRoom *shipsync_cpuroom_open(const char *root, const int *cpus, int ncpus);
extern void shipsync_cpuroom_close(CpuRoom *r);
extern double shipsync_cpuroom_idle(CpuRoom *r, double now_us);
extern const char *shipsync_cpuroom_limit(const CpuRoom *r);

/* The window over which the sessions running are averaged (cpuroom.c) */
typedef struct RoomWindow
{
	int64_t		start_us;
	int64_t		last_us;		/* the last sample */
	int			samples;
	int			running_sum;
} RoomWindow;
extern bool shipsync_window_due(RoomWindow *w, int64_t now_us);
extern void shipsync_window_sample(RoomWindow *w, int64_t now_us, int running);
extern bool shipsync_window_over(RoomWindow *w, int64_t now_us, double *running);

/* in mask.c */
extern int	shipsync_pii_kind(const char *name);
extern char *shipsync_mask_pii(int kind, const char *value);
extern int	shipsync_pii_column_kind(const char *column);

/*
 * Masking personal values inside a JSON document (json.c): the values at
 * paths, and the members of one object of the root (the order row of the
 * generic body) whose names member_kind() says are personal, and so the
 * members of the objects inside its other members, at any depth.  mask()
 * returns a malloc'd replacement for a value of a kind.  False when text is
 * not JSON; *out is the masked document (malloc'd), or NULL when nothing in
 * it was personal.
 */
typedef char *(*ShipMaskFn) (int kind, const char *value, void *arg);
typedef int (*ShipMemberKindFn) (const char *member, void *arg);

extern bool shipsync_json_mask(const char *text, size_t len, int npaths,
							   const MapPath *paths, const int *kinds,
							   const char *member_object,
							   ShipMemberKindFn member_kind, ShipMaskFn mask,
							   void *arg, char **out);

/* One tracking event read from a carrier's push or pull (in json.c) */
typedef struct TrackEvent
{
	char	   *key;			/* the provider's event key: dedup */
	char	   *tracking_number;
	char	   *raw_status;		/* status as the carrier says it, or NULL */
	char	   *raw_detail;		/* sub-status (subtag, status_detail, text) */
	char	   *occurred_at;	/* event time as sent; NULL: now */
	char	   *location;
	char	   *description;
} TrackEvent;

typedef struct TrackEventList
{
	TrackEvent *ev;				/* malloc'd; free with shipsync_free_tracking */
	int			n;
	int			cap;
} TrackEventList;

/* in json.c */
typedef bool (*TrackingReader) (const char *body, size_t len, TrackEventList *out,
								char *errbuf, size_t errlen);
extern bool shipsync_parse_tracking_generic(const char *body, size_t len,
											TrackEventList *out, char *errbuf,
											size_t errlen);
extern bool shipsync_parse_tracking_easypost(const char *body, size_t len,
											 TrackEventList *out, char *errbuf,
											 size_t errlen);
extern bool shipsync_parse_tracking_aftership(const char *body, size_t len,
											  TrackEventList *out, char *errbuf,
											  size_t errlen);
extern bool shipsync_parse_tracking_kuaidi100(const char *body, size_t len,
											  TrackEventList *out, char *errbuf,
											  size_t errlen);
extern bool shipsync_parse_tracking_sf_express(const char *body, size_t len,
											   TrackEventList *out, char *errbuf,
											   size_t errlen);
extern void shipsync_free_tracking(TrackEventList *l);

/* One page of a carrier's list of its shipments (in json.c) */
typedef struct ShipListItem
{
	char	   *id;				/* malloc'd; never NULL in a parsed page */
	char	   *order_ref;
	char	   *tracking_number;
	char	   *status;
	char	   *updated_at;		/* as sent: checked by the SQL that stores it */
	char	   *fees;			/* the fees array as JSON text, or NULL */
} ShipListItem;

typedef struct ShipListPage
{
	ShipListItem *items;
	int			n;
	char	   *next_cursor;	/* NULL: the last page */
} ShipListPage;

/* in json.c */
extern bool shipsync_parse_shipment_list(const char *body, size_t len,
										 ShipListPage *out, char *errbuf,
										 size_t errlen);
extern void shipsync_free_shipment_list(ShipListPage *p);

/* Outcome of a webhook signature check (in signature.c) */
typedef enum SigResult
{
	SIG_OK,
	SIG_NO_SECRET,				/* nothing configured to check against */
	SIG_MISSING,				/* no signature presented */
	SIG_MALFORMED,				/* presented, but not in the scheme's form */
	SIG_STALE,					/* timestamp outside the window */
	SIG_MISMATCH				/* wrong MAC */
} SigResult;

/* Standard Webhooks: a timestamp may be at most 5 minutes off now */
#define WEBHOOK_TOLERANCE_S 300

/*
 * The receiver's wait for a lock, in ms, once a wait of the same batch has
 * run out: the lock is taken as still held, and the pushes it holds back
 * fail at once instead of each waiting shipsync.receiver_lock_timeout.
 */
#define RECV_LOCK_HELD_MS 10

/* in signature.c */
extern SigResult shipsync_verify_standard_webhooks(const char *secret,
												   const char *msg_id,
												   const char *timestamp,
												   const char *sig_header,
												   const char *body,
												   size_t body_len, long now,
												   long tolerance,
												   const char **reason);
extern SigResult shipsync_verify_hmac_body(const char *secret,
										   const char *presented,
										   const char *prefix, bool hex,
										   const char *body, size_t body_len,
										   const char **reason);
extern SigResult shipsync_verify_kuaidi100(const char *salt, const char *param,
										   const char *sign,
										   const char **reason);
extern SigResult shipsync_verify_jiandaoyun(const char *secret, const char *nonce,
											const char *timestamp,
											const char *presented,
											const char *body, size_t body_len,
											const char **reason);
extern char *shipsync_form_field(const char *body, size_t len, const char *name);

/* Verify the caller's push (arg) with one secret, for the rotation below */
typedef SigResult (*SigCheck) (const char *secret, void *arg, const char **reason);
extern SigResult shipsync_verify_rotating(SigCheck check, void *arg,
										  const char *current,
										  const char *previous,
										  const char **reason);

/* A CSV reader over one statement (csv.c); fields valid until the next call */
typedef struct CsvReader
{
	const char *p;				/* the input not yet read */
	const char *end;
	char		delim;
	int			line;			/* physical line at p, 1-based */
	bool		failed;
	char	   *buf;			/* the current record's fields, NUL-terminated */
	size_t		len;
	size_t		cap;
	size_t	   *offsets;
	char	  **fields;			/* fields[i] points into buf */
	int			nfields;
	int			fcap;
} CsvReader;

/* in csv.c */
extern void shipsync_csv_init(CsvReader *r, const char *data, size_t len,
							  char delim);
extern int	shipsync_csv_next(CsvReader *r, int *lineno, char *errbuf,
							  size_t errlen);
extern void shipsync_csv_free(CsvReader *r);

/* in money.c */
extern bool shipsync_amount_check(const char *s, char *out, const char **reason);
extern int	shipsync_amount_decimals(const char *norm);

#ifndef SHIPSYNC_PLAIN_C

#include "postgres.h"
#include "access/htup.h"
#include "access/xlogdefs.h"
#include "lib/ilist.h"
#include "lib/stringinfo.h"
#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/jsonb.h"
#include "utils/array.h"

#define SHIPSYNC_MAX_DISPATCHERS 64

/* One dispatcher's entry in shared memory */
typedef struct ShipsyncSlot
{
	Oid			dbid;			/* InvalidOid when free */
	pid_t		pid;
	Latch	   *latch;
	uint64		accepting;		/* providers that can take work now */
	uint64		pending;		/* providers that got work since last look */
	bool		prepared;		/* a transaction that captured was prepared */
	uint64		prepared_providers; /* providers whose intents a prepared
									 * transaction may hold (~0 at start:
									 * not known) */
	pg_atomic_uint64 flush_wanted;	/* WAL position to flush (flush.c), 0: none */
} ShipsyncSlot;

/*
 * One applier's entry (applier.c): set by the applier while it lives, so
 * that a new dispatcher waits for the applier of the one before it.
 */
typedef struct ShipsyncApplierSlot
{
	Oid			dbid;			/* InvalidOid when free */
	pid_t		pid;
} ShipsyncApplierSlot;

/* A provider's bit in those masks: ids beyond 64 share bits, harmlessly */
#define SHIPSYNC_PROVIDER_BIT(id) (UINT64CONST(1) << ((uint32) (id) % 64))

/*
 * A block of intent ids reserved from one database's outbox sequence and
 * handed out one by one (see capture.c).  epoch changes whenever the entry
 * is given to another database or sequence.
 */
typedef struct ShipsyncIdBlock
{
	Oid			dbid;			/* InvalidOid when free */
	Oid			seqid;
	uint64		epoch;
	int64		next;			/* next id to hand out */
	int64		limit;			/* first id past the block */
} ShipsyncIdBlock;

#define SHIPSYNC_ID_BLOCKS 64

/*
 * What a provider's dispatcher keeps in shared memory, so that a new
 * dispatcher (after a crash or a restart of the worker, not of the server)
 * starts where the old one stopped: the circuit breaker, the Retry-After
 * hold, the rate-limit bucket; and the counters of shipsync.provider_health
 * (health.c).  Keyed by (database, provider), and belonging to the
 * extension that was there (its pg_extension OID): a provider of the
 * extension created again, which may have the same id, starts afresh.  Written only by the
 * dispatcher of its database, under health_lock (the token bucket without
 * it: the view does not show it); read by the view under health_lock.
 */
#define SHIPSYNC_MAX_PROVIDER_STATES 128
#define SHIPSYNC_HEALTH_MINUTES 60	/* counters per minute, for the last hour */
#define SHIPSYNC_LATENCY_MINUTES 6	/* latency histograms: the last 5 minutes */
#define SHIPSYNC_LATENCY_BUCKETS 40

typedef enum ShipsyncBreaker
{
	BREAKER_CLOSED,
	BREAKER_OPEN,
	BREAKER_HALF_OPEN
} ShipsyncBreaker;

typedef struct ShipsyncMinute
{
	int64		minute;			/* minutes since the Unix epoch; 0: unused */
	uint32		requests;
	uint32		successes;
	uint32		failures[SHIPSYNC_MAX_ERROR_CLASSES];
} ShipsyncMinute;

typedef struct ShipsyncProviderState
{
	Oid			dbid;			/* InvalidOid: a free entry */
	Oid			extoid;			/* the extension the provider belongs to */
	int32		provider_id;

	/* the circuit breaker */
	ShipsyncBreaker breaker;
	TimestampTz breaker_since;	/* when it entered that state (opened, closed) */
	TimestampTz probe_at;		/* open: when a probe may go */
	int			cooldown_ms;	/* open: the current wait before a probe */
	int			failures_in_row;	/* transport or 5xx, consecutive */
	int64		probe_id;		/* half-open: the intent sent as the probe */

	TimestampTz hold_until;		/* Retry-After on a 429 or 503 */
	double		tokens;			/* the rate-limit bucket */
	TimestampTz tokens_at;		/* 0: never filled */
	int			inflight;

	TimestampTz last_success_at;
	TimestampTz last_error_at;
	char		last_error_class[32];
	char		last_error[256];

	ShipsyncMinute minutes[SHIPSYNC_HEALTH_MINUTES];
	int64		latency_minute[SHIPSYNC_LATENCY_MINUTES];
	uint32		latency[SHIPSYNC_LATENCY_MINUTES][SHIPSYNC_LATENCY_BUCKETS];
} ShipsyncProviderState;

typedef struct ShipsyncShared
{
	slock_t		mutex;			/* protects slots[], appliers[], receiver_pid,
								 * flush_latch */
	pg_atomic_uint64 config_generation; /* bumped when providers change */
	ShipsyncSlot slots[SHIPSYNC_MAX_DISPATCHERS];
	ShipsyncApplierSlot appliers[SHIPSYNC_MAX_DISPATCHERS];
	pid_t		receiver_pid;	/* the receiver's, while it lives; 0: none */
	Latch	   *flush_latch;	/* the launcher's, while it serves flushes */
	slock_t		id_mutex;		/* protects the fields below */
	uint64		id_epoch;
	int			id_victim;		/* next entry to reuse when all are taken */
	ShipsyncIdBlock id_blocks[SHIPSYNC_ID_BLOCKS];
	LWLock	   *health_lock;	/* protects provider_states[] */
	ShipsyncProviderState provider_states[SHIPSYNC_MAX_PROVIDER_STATES];
} ShipsyncShared;

/* in pg_shipsync.c */
extern ShipsyncShared *shipsync_shared;
extern char *shipsync_databases;
extern int	shipsync_batch_size;
extern int	shipsync_max_response_bytes;
extern int	shipsync_max_request_bytes;
extern bool shipsync_allow_insecure_http;
extern int	shipsync_idle_check_ms;
extern int	shipsync_dispatcher_nice;
extern int	shipsync_busy_cpu_percent;
extern bool shipsync_apply_worker;
extern int	shipsync_order_lock_timeout_ms;
extern int	shipsync_writeback_wait_ticket_ms;
extern bool shipsync_dispatcher_huge_pages;
extern bool shipsync_prefault_memory;
extern char *shipsync_receiver_listen;
extern char *shipsync_receiver_database;
extern char *shipsync_receiver_ssl_cert_file;
extern char *shipsync_receiver_ssl_key_file;
extern int	shipsync_receiver_max_connections;
extern int	shipsync_receiver_max_connections_per_ip;
extern int	shipsync_max_push_bytes;
extern int	shipsync_receiver_rate_limit;
extern int	shipsync_receiver_header_timeout_ms;
extern int	shipsync_receiver_body_timeout_ms;
extern int	shipsync_receiver_queue_size;
extern int	shipsync_receiver_lock_timeout_ms;
extern char *shipsync_allowed_hosts;
extern const ShipAllowList *shipsync_allowlist;
extern int	shipsync_audit_retention;
extern char *shipsync_audit_action;
extern char *shipsync_reconcile_at;
extern int	shipsync_reconcile_at_minute;	/* minute of the day, -1: off */
extern int	shipsync_reconcile_interval_s;
extern void shipsync_wake_dispatcher(Oid dbid, uint64 providers,
									 bool config_changed);
extern uint64 shipsync_exchange_masks(int slot, uint64 accepting);
extern void shipsync_set_nice(void);
extern void shipsync_note_prepared(Oid dbid, uint64 providers);
extern bool shipsync_database_names(const char *list, char **raw, List **names);
extern bool shipsync_take_prepared(int slot);
extern void shipsync_forget_prepared(int slot);
extern ShipsyncProviderState *shipsync_provider_state(Oid dbid, Oid extoid,
													   int32 provider_id);
extern void shipsync_forget_provider_states(Oid dbid, const int32 *keep, int nkeep);

/* in secret.c: the secret store; an opened secret, or why it is not */
typedef struct OpenedSecret
{
	char	   *provider;
	char	   *name;
	char	   *value;			/* NULL: it cannot be opened, see error */
	char	   *error;
} OpenedSecret;

extern char *shipsync_secret_key_file;
extern char *shipsync_previous_secret_key_file;
extern void secret_load_keys(void);
extern int	secret_open_all(const char *provider, OpenedSecret **out);
extern char *secret_fetch(const char *provider, const char *name);
extern void secret_open_webhook(const char *provider, const char *pushes,
								char **current, char **previous);

/* in redact.c */
extern void redact_install_hook(void);
/* in audit.c */
extern void audit_prune_if_due(TimestampTz now);

/* in launcher.c */
extern PGDLLEXPORT void shipsync_launcher_main(Datum main_arg);

/* in flush.c: the dispatchers' claims flushed by the launcher */
extern void flush_serve_begin(void);
extern void flush_serve(void);
extern bool flush_ask(int slot, XLogRecPtr lsn);
extern void flush_withdraw(int slot);

/* in dispatcher.c */
extern PGDLLEXPORT void shipsync_dispatcher_main(Datum main_arg);

/* in receiver.c */
extern PGDLLEXPORT void shipsync_receiver_main(Datum main_arg);
/* in recon_worker.c */
extern PGDLLEXPORT void shipsync_reconcile_main(Datum main_arg);

/*
 * in spi.c: the helpers of every file that talks SQL: saved plans, re-made
 * when the tables they read have grown; a step in a subtransaction; the
 * worker's own transactions; set-based parameters (parallel arrays passed
 * as $1..$n); running a statement as a table's owner; quoting for JSON and
 * URLs.
 */
extern SPIPlanPtr shipsync_prepare_saved(const char *sql, int nargs,
										 const Oid *argtypes);
extern SPIPlanPtr shipsync_prepare_saved_opt(const char *sql, int nargs,
											 const Oid *argtypes, bool generic);
extern void shipsync_replan_grown(TimestampTz now);
extern void shipsync_distrust_empty_statistics(void);
extern ErrorData *shipsync_subxact(void (*fn) (void *), void *arg);
extern void shipsync_hold_extension(void);
extern char *shipsync_extension_version(void);
extern void shipsync_require_extension_version(const char *fn);
extern void shipsync_begin_tx(const char *activity, bool durable);
extern void shipsync_end_tx(void);
extern void shipsync_abort_tx(void);
extern bool shipsync_exit_if_dropped(void);

/* A growable set of parallel arrays for one statement's parameters */
typedef struct ArgArrays
{
	int			ncols;
	int			n;
	int			cap;
	Oid		   *types;
	Datum	  **values;
	bool	  **nulls;
} ArgArrays;

extern Datum shipsync_make_array(Datum *values, bool *nulls, int n, Oid elemtype);
extern ArgArrays *args_create(int ncols, const Oid *types, int cap);
extern int	args_row(ArgArrays *a);
extern void args_set(ArgArrays *a, int row, int col, Datum v);
extern void args_set_text(ArgArrays *a, int row, int col, const char *s);
extern void args_set_text_of(ArgArrays *a, int row, int col, HeapTuple tup,
							 TupleDesc desc, int fnumber);
extern int	args_execute(SPIPlanPtr plan, ArgArrays *a, bool read_only);
extern int	shipsync_execute_by_key(SPIPlanPtr plan, Datum *params, bool read_only);
extern int	shipsync_execute_as_owner(Oid owner, SPIPlanPtr plan, ArgArrays *a,
									  bool read_only);
extern char *shipsync_quote_json(const char *s);
extern char *shipsync_url_escape(const char *s);

/* in body.c: the generic body of an order row, as PostgreSQL's JSON prints it */
typedef struct BodyFormat BodyFormat;
extern char *shipsync_order_body(BodyFormat **format, const char *key, Datum row,
								 bool row_null, MemoryContext cxt, size_t max_bytes);

/* in digest.c: the digest of an order row, write-back columns left out */
typedef struct DigestCache DigestCache;
extern DigestCache *shipsync_digest_prepare(Oid typid, int32 typmod,
											ArrayType *skip, MemoryContext cxt);
extern bool shipsync_digest_fits(DigestCache *c, Oid typid, int32 typmod,
								 ArrayType *skip);
extern int64 shipsync_digest_row(DigestCache *c, HeapTupleHeader rec);

/*
 * SQLSTATEs of ingest_tracking(), ingest_fees() and import_statement(),
 * documented in docs/sql-reference.md
 */
#define ERRCODE_SHIPSYNC_BAD_SIGNATURE	MAKE_SQLSTATE('S','S','4','0','1')
#define ERRCODE_SHIPSYNC_BAD_PAYLOAD	MAKE_SQLSTATE('S','S','4','0','0')

/* A provider as its pushes are checked and read (tracking.c) */
typedef struct TrackProvider
{
	int32		id;
	char	   *name;
	char	   *dialect;
	const struct DialectRoutine *routine;	/* the dialect's operations */
	char	   *profile;
	char	   *secret;			/* opened at verification; NFKD for easypost */
	char	   *previous_secret;
	bool		accept_unsigned;
	char	   *timezone;
	int32		ttl_s;
} TrackProvider;

/* in provider.c: one provider by name */
extern TrackProvider *provider_lookup(const char *name);

/* in dialects/shared.c: time zones of the maps */
extern bool shipsync_tz_offset(const char *zone, int64_t utc_epoch,
							   int *offset_s, void *arg);

/* in tracking.c */
extern int64 tracking_apply_pulled(const char *provider_name, const char *body,
								   size_t len);
extern char *shipsync_header_value(Jsonb *headers, const char *name);
extern text *shipsync_push_args(FunctionCallInfo fcinfo, const char *argname,
								const char *what, const char *hint, char **name);
extern bool tracking_verify_push(TrackProvider *p, const char *what, Jsonb *headers,
								 const char *body, size_t len, char **payload,
								 size_t *plen);
extern const char *tracking_reply(TrackProvider *p);
extern bool tracking_read_time(TrackProvider *p, const char *s, Datum *out);

/* The fields of a fee line, as every source names them (fees.c) */
typedef enum FeeField
{
	FEE_TRACKING_NUMBER,
	FEE_TYPE,
	FEE_AMOUNT,
	FEE_CURRENCY,
	FEE_KEY,
	FEE_SETTLEMENT,
	FEE_PAYER,
	FEE_WEIGHT,
	FEE_STATE,
	FEE_OCCURRED_AT,
	FEE_NFIELDS
} FeeField;

/* Where one field is read: a field_map row of direction fee or statement */
typedef struct FeeRule
{
	char	   *source;			/* path, CSV column or const:...; NULL: the name */
	char	   *transform;		/* NULL for identity */
	char	   *arg;
	char	   *dflt;
} FeeRule;

typedef struct FeeMap
{
	FeeRule		list;			/* direction fee: where the lines are */
	FeeRule		field[FEE_NFIELDS];
} FeeMap;

/* What the lines of one provider are checked against */
typedef struct FeeContext
{
	TrackProvider *provider;
	char	   *default_currency;	/* option currency, or the dialect's, or NULL */
	char	  **currencies;		/* shipsync.currency, sorted */
	int		   *minor_units;	/* of each: its decimals, -1 when unchecked */
	int			ncurrencies;
} FeeContext;

/* Why a line cannot be taken */
typedef struct FeeProblem
{
	FeeField	field;
	char	   *message;		/* no capital, no period */
} FeeProblem;

typedef struct FeeSummary
{
	int64		n_lines;
	int64		n_new;
	int64		n_revised;
	int64		n_duplicate;
	int64		n_unmatched;
	int64		n_matched;
	int64		n_withdrawn;
	int64		n_orders;
} FeeSummary;

typedef struct FeeBatch FeeBatch;

/* called for each line of a JSON payload that cannot be taken */
typedef void (*FeeBadLine) (void *arg, int line, FeeProblem *pr);

/* in fees.c */
extern const char *const fee_field_names[FEE_NFIELDS];
extern FeeBatch *fees_batch_create(void);
extern int	fees_batch_size(FeeBatch *b);
extern FeeContext *fees_context(TrackProvider *p);
extern bool fees_add_line(FeeContext *c, FeeBatch *b, char **v, FeeProblem *pr);
extern FeeMap *fees_map_load(const char *profile, const char *direction);
extern bool fees_transform(const FeeRule *r, FeeField f, char *raw, char **out,
						   FeeProblem *pr);
extern Jsonb *fees_parse_json(const char *text, size_t len, const char *what,
							  TrackProvider *p);
extern bool fees_read_json(FeeContext *c, FeeBatch *b, Jsonb *doc, FeeMap *m,
						   const char *what, FeeBadLine on_bad, void *arg,
						   int *bad_line, FeeProblem *pr);
extern Datum fees_batch_field(FeeBatch *b, FeeField f);
extern int	fees_write_totals(SPITupleTable *tt, uint64 nrows);
extern void fees_ticket_unfit_quotes(SPITupleTable *tt, uint64 nrows);
extern void fees_lock_provider(int32 provider_id);
extern void fees_store(FeeBatch *b, const char *src, int64 stmt, int64 replaces,
					   ArrayType *held, const char *who, FeeSummary *sum);
extern Datum fees_answer(MemoryContext cxt, TrackProvider *p, FeeSummary *sum,
						 const char *more);
extern int64 fees_apply_pulled(const char *provider_name, const char *body, size_t len);
extern int64 fees_apply_sf_answer(const char *provider_name, const char *body, size_t len,
								  char **code);

/* in writeback.c: statuses and fee totals onto the order rows */
extern void writeback_bounded(void (*fn) (void *), void *arg);
extern void writeback_forget_detached(void);
extern void writeback_orders(int32 binding_id, Datum *keys, Datum *statuses,
							 Datum *fee_totals, int n);
extern void writeback_values(int32 provider_id, int32 *bids, Datum *keys,
							 Datum *values, bool fee, int n);

/* in capture.c */
extern int	capture_suppress(void);
extern void capture_unsuppress(int prev);
extern bool capture_suppressed(uint32 event, HeapTuple trigtuple);
extern bool capture_table_is(Relation rel, Oid relid);
extern void shipsync_wake_at_commit(int32 provider_id, bool config_changed);
extern int64 shipsync_next_intent_id(Oid seqid);
extern int64 shipsync_peek_intent_id(Oid seqid);

/* in security.c: a user's code run with that user's rights */
typedef struct ShipsyncUserSave
{
	Oid			userid;
	int			sec_context;
	int			nestlevel;
	Oid			acting;			/* shipsync_acting_owner() before */
} ShipsyncUserSave;

extern void shipsync_become_owner(Oid owner, ShipsyncUserSave *save);
extern void shipsync_restore_user(const ShipsyncUserSave *save);
extern Oid	shipsync_acting_owner(void);
extern Oid	shipsync_table_owner(Oid relid);
extern void shipsync_check_owner_sees_all(Oid relid, Oid owner);
extern void shipsync_pin_search_path(void);
extern void shipsync_keys_as_iso(void);
extern void shipsync_body_settings(void);
extern void shipsync_pin_worker_session(bool writer);

/* A bounded wait for locks (security.c), and what it changed to undo */
typedef struct ShipsyncLockWait
{
	int			nest;			/* GUC nest level of lock_timeout, or -1 */
	pqsigfunc	sigint;			/* the SIGINT handler it replaced */
	uint32		holdoff;		/* QueryCancelHoldoffCount it replaced */
	bool		cancel_pending; /* a cancel held off before it */
} ShipsyncLockWait;
extern void shipsync_lock_wait_begin(ShipsyncLockWait *w, int ms);
extern void shipsync_lock_wait_end(ShipsyncLockWait *w);

/* the deferrable constraints a write sets IMMEDIATE, to set back after it */
typedef struct ShipsyncConstraints
{
	Oid			owner;			/* who sets them */
	List	   *names;			/* RangeVars, as SET CONSTRAINTS takes */
	List	   *initdeferred;	/* of each, whether INITIALLY DEFERRED */
} ShipsyncConstraints;

extern ShipsyncConstraints *shipsync_constraints_immediate(Oid relid, Oid owner);
extern void shipsync_constraints_restore(ShipsyncConstraints *c);

/*
 * A provider's TLS options (its option tls), as http_submit() applies them
 * to each transfer (libcurl copies them: they need not outlive the call).
 */
typedef struct HttpTls
{
	char	   *ca_bundle;		/* PEM: the only CAs trusted; NULL: the system's */
	char	   *client_cert;	/* PEM, given with client_key, or NULL */
	char	   *client_key;		/* PEM; a secret, opened in outbox.c */
	char	   *pinned_public_key;	/* "sha256//<base64>[;...]", or NULL */
	bool		tls13;			/* min_version 1.3; else TLS 1.2 at least */
} HttpTls;

/* in http.c: one transfer, owned by the dispatcher until completion */
typedef struct HttpTransfer
{
	/* request, set by the caller before http_submit() */
	const char *method;
	char	   *url;
	char	   *body;
	size_t		body_len;
	struct curl_slist *headers; /* freed by http.c at completion */
	long		timeout_ms;
	const HttpTls *tls;			/* NULL: defaults; read by http_submit() only */
	void	   *owner;			/* caller's tag */

	/* result, set by http.c */
	int			curl_code;
	long		http_status;
	bool		request_sent;
	bool		too_large;
	bool		forbidden_host; /* refused by shipsync.allowed_hosts, unsent */
	bool		tls_refused;	/* the server refused the TLS session */
	StringInfoData response;
	char	   *retry_after;	/* Retry-After header value, or NULL */
	char	   *ratelimit_reset;	/* X-RateLimit-Reset value, or NULL */
	char	   *content_type;	/* Content-Type value, or NULL */
	char	   *content_encoding;	/* Content-Encoding value, or NULL */
	char		coding[32];		/* the Content-Encoding an answer came in,
								 * though none was asked for (not decoded) */
	char		charset[32];	/* the charset Content-Type names, when the
								 * body is not UTF-8 and was not read as it */
	char		errbuf[256];
	double		latency_ms;
	bool		stalled;		/* timed out while its process did not read */

	/* private */
	void	   *easy;
	dlist_node	node;			/* in the client's running list */
	TimestampTz started;
	struct HttpTransfer *next;
	bool		allowed_tried;	/* a connection to an allowed address began */
	bool		prereq_seen;	/* a request of this transfer was about to go */
	bool		resend_refused; /* libcurl's own second send of it stopped */
	bool		cert_requested; /* asked for a client certificate we lack */
	bool		answered_early; /* answered whole before our body was sent */
	struct HttpClient *client;
	int			lookup_probe;	/* its lookup others wait for, or -1 */
	int			lookup_wait;	/* the lookup it waits for, or -1 */
	int			peer;			/* its HTTPS peer's slot, or -1 */
	bool		peer_opener;	/* opens a connection others wait for */
	bool		peer_unplaced;	/* started to share a connection, not yet on one */
	long		peer_port;		/* local port of its HTTP/2 connection, or 0 */
	ShipAddrKind refused_kind;	/* when refused_addr is set */
	char		refused_addr[64];	/* an address refused for this transfer */
} HttpTransfer;

typedef struct HttpClient HttpClient;

extern HttpClient *http_client_create(MemoryContext cxt, long max_connections);
extern void http_submit(HttpClient *client, HttpTransfer *t);
extern int	http_inflight(HttpClient *client);
extern void http_wait(HttpClient *client, long timeout_ms, uint32 wait_event_info);
extern HttpTransfer *http_take_done(HttpClient *client);
extern void http_client_destroy(HttpClient *client);
extern bool http_release_idle(HttpClient *client);
extern void http_refuse(HttpClient *client, HttpTransfer *t, const char *why);
extern ShipVerdict http_classify(const HttpTransfer *t, bool body_ok);

#endif							/* SHIPSYNC_PLAIN_C */

#endif							/* PG_SHIPSYNC_H */
