/*-------------------------------------------------------------------------
 *
 * receiver.c
 *		The receiver: a background worker that takes carriers' and CRMs'
 *		pushes over HTTP(S) and hands each, raw, to its ingest function.
 *
 * Off unless shipsync.receiver_listen is set; the launcher then starts it
 * (and starts it again when it exits) for shipsync.receiver_database.  It
 * serves, on libmicrohttpd (MHD) in its external-event mode:
 *
 *	POST /tracking/{provider}	shipsync.ingest_tracking()
 *	POST /fees/{provider}		shipsync.ingest_fees(), when it exists
 *	POST /crm/{source}			shipsync.ingest_crm()
 *	GET  /healthz				200 "ok" while the database takes writes
 *
 * No thread ever runs in this process: MHD is created without an internal
 * polling thread, with MHD_USE_EPOLL, and the worker waits on MHD's epoll
 * descriptor in its own WaitEventSet beside its latch and the postmaster,
 * calling MHD_run() when it is readable or MHD's timeout is due.  MHD's
 * callbacks only collect: a request's body is buffered (up to
 * shipsync.max_push_bytes, 413 beyond), and once complete its connection
 * is suspended and the request queued.  After each MHD_run() the loop
 * takes what was queued as one batch into one transaction, as role
 * shipsync_ingest: the tracking pushes of one provider go to
 * shipsync._ingest_tracking_batch() together (each verified alone, their
 * events stored by one statement), every other push to its function in a
 * subtransaction of its own.  Only when the transaction has committed are
 * the answers set and the connections resumed, so a 2xx always means the
 * push is durable; a failed commit, a server shutting down or a crash
 * answers 503 or drops the connection, and the sender tries again.  A lock
 * another session holds (an order row being edited) is waited for at most
 * shipsync.receiver_lock_timeout: that push alone then fails, 503 with
 * Retry-After, and the batch goes on; between the steps of a long batch
 * MHD_run() is called again, so that /healthz is answered and new requests
 * queued while the batch waits, not after it.
 *
 * Refusals before the database: 404 for an unknown route, 405 for a wrong
 * method, 413 for a body over the limit, 429 over the per-client rate
 * (shipsync.receiver_rate_limit), 503 with Retry-After while the database
 * is in recovery, the extension is missing or the queue holds
 * shipsync.receiver_queue_size requests (back-pressure instead of memory).
 * At most shipsync.receiver_max_connections are open (MHD stops accepting
 * at the limit: more wait in the kernel's listen queue), and at most
 * shipsync.receiver_max_connections_per_ip from one address (MHD closes
 * more as it accepts them), so that one client's slow sockets cannot take
 * every connection.
 * Slow clients are cut off: a connection whose request headers take longer
 * than shipsync.receiver_header_timeout_ms, or whose body takes longer than
 * shipsync.receiver_body_timeout_ms, is shut down (its socket, so that MHD
 * sees the end of the stream and closes it itself).  Each refused class is
 * logged at most once a minute, with a count, never once per request; the
 * ingest functions' own WARNING per refused push is dropped here
 * (emit_log_hook), the receiver's line standing for it.
 *
 * TLS: with shipsync.receiver_ssl_cert_file and _key_file set, MHD speaks
 * HTTPS only (GnuTLS, TLS 1.2 and later).
 *
 * An ERROR raised inside an MHD callback (out of memory) cannot unwind
 * through MHD: there is no exception stack around MHD_run(), so it becomes
 * FATAL, the process exits, and the launcher starts a new one; nothing that
 * was answered 2xx is lost, since answers follow commits.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <microhttpd.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "lib/ilist.h"
#include "libpq/pqsignal.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/xml.h"

#include "pg_shipsync.h"

/* Retry-After of a 503 (seconds) and of a 429 */
#define RECV_RETRY_AFTER_S		5
#define RECV_RATE_RETRY_S		1
/* most requests taken into one transaction */
#define RECV_BATCH_MAX			256
/* how often connections are checked against the time limits */
#define RECV_SWEEP_MS			100
/*
 * how often MHD is served between the steps of a long batch, and at most
 * how many rounds (accepting a connection, reading its request, sending
 * the answer may each take one)
 */
#define RECV_SERVE_MS			100
#define RECV_SERVE_ROUNDS		8
/* how often the readiness of the database is looked at again */
#define RECV_READY_CHECK_MS		5000
#define RECV_LOG_INTERVAL_MS	60000

typedef enum RecvRoute
{
	ROUTE_TRACKING,
	ROUTE_FEES,
	ROUTE_CRM,
	ROUTE_HEALTH
} RecvRoute;

/* Refusal classes, each logged at most once a minute */
typedef enum RecvClass
{
	RC_NOT_FOUND,
	RC_METHOD,
	RC_TOO_LARGE,
	RC_BAD_REQUEST,
	RC_SIGNATURE,
	RC_RATE,
	RC_UNAVAILABLE,
	RC_ERROR,
	RC_TIMEOUT,
	RC_HTTP,
	RC_NCLASSES
} RecvClass;

static const char *const recv_class_names[RC_NCLASSES] = {
	"404 unknown route, provider or source", "405 wrong method",
	"413 body over shipsync.max_push_bytes", "400 or 415 bad request",
	"401 signature", "429 client over shipsync.receiver_rate_limit",
	"503 unavailable", "500 error", "cut off: too slow",
	"HTTP or TLS failure"
};

typedef struct RecvLogClass
{
	TimestampTz logged_at;		/* 0: never */
	int64		suppressed;		/* refusals since, not logged */
	char		last[256];		/* reason of the last suppressed one */
} RecvLogClass;

/* One TCP connection (MHD's socket context) */
typedef struct RecvConn
{
	struct MHD_Connection *conn;
	dlist_node	node;
	TimestampTz ready_since;	/* accepted, or its last answer completed */
	TimestampTz headers_at;		/* headers of the current request, or 0 */
	bool		in_db;			/* its request waits for the database */
	bool		cut;			/* shut down for being too slow */
	int64		served;			/* requests answered on it */
	char		client[INET6_ADDRSTRLEN];
} RecvConn;

/* One request, from its headers to its answer (MHD's con_cls) */
typedef struct RecvRequest
{
	MemoryContext cxt;			/* the request's own, freed at completion */
	struct MHD_Connection *conn;
	RecvConn   *rc;
	RecvRoute	route;
	char	   *name;			/* provider or source */
	char	   *body;
	size_t		len;
	size_t		cap;			/* bytes allocated for body */
	bool		too_large;
	bool		queued;
	char	   *headers;		/* JSON object text */
	char	   *query;
	dlist_node	node;			/* in recv_queue while queued */
	/* the answer */
	bool		answered;
	int			status;
	char	   *answer;
	const char *content_type;
	int			retry_after;	/* 0: none */
	/* set in the transaction, final only once it committed */
	int			pending_status;
	char	   *pending_answer;
	const char *pending_type;
	RecvClass	pending_class;
	char	   *pending_reason;
} RecvRequest;

typedef struct RecvRate
{
	char		client[INET6_ADDRSTRLEN];	/* hash key */
	double		tokens;
	TimestampTz at;
} RecvRate;

static struct MHD_Daemon *recv_daemon = NULL;
static int	recv_epoll_fd = -1;		/* MHD's: readable when it has work */
static MemoryContext recv_cxt = NULL;
static dlist_head recv_conns = DLIST_STATIC_INIT(recv_conns);
static dlist_head recv_queue = DLIST_STATIC_INIT(recv_queue);
static int	recv_nqueued = 0;
static HTAB *recv_rates = NULL;
static RecvLogClass recv_log[RC_NCLASSES];
static Oid	recv_ingest_role = InvalidOid;
static bool recv_ready = false;
static char recv_not_ready[256] = "the receiver is starting";
static TimestampTz recv_ready_checked = 0;
static volatile sig_atomic_t recv_shutdown = false;
static volatile sig_atomic_t recv_in_tx = false;
/* a push of the batch at hand waited for a lock until lock_timeout */
static bool recv_lock_ran_out = false;

/* ---------- logging: once per class per minute ---------- */

/*
 * Note a refused request of class cls.  The first of a class is logged at
 * once; the next ones within a minute are counted and summed up in the
 * next line of that class (or by recv_log_flush()).
 */
static void
recv_refused(RecvClass cls, const char *reason)
{
	RecvLogClass *l = &recv_log[cls];
	TimestampTz now = GetCurrentTimestamp();

	if (l->logged_at != 0 && !TimestampDifferenceExceeds(l->logged_at, now, RECV_LOG_INTERVAL_MS))
	{
		l->suppressed++;
		strlcpy(l->last, reason, sizeof(l->last));
		return;
	}
	if (l->suppressed > 0)
		ereport(LOG,
				(errmsg("pg_shipsync receiver refused a request (%s): %s; " INT64_FORMAT " more of this class in the minute before",
						recv_class_names[cls], reason, l->suppressed)));
	else
		ereport(LOG,
				(errmsg("pg_shipsync receiver refused a request (%s): %s",
						recv_class_names[cls], reason)));
	l->logged_at = now;
	l->suppressed = 0;
}

/* Log the counts of classes whose minute is over */
static void
recv_log_flush(TimestampTz now)
{
	for (int i = 0; i < RC_NCLASSES; i++)
	{
		RecvLogClass *l = &recv_log[i];

		if (l->suppressed == 0 || !TimestampDifferenceExceeds(l->logged_at, now, RECV_LOG_INTERVAL_MS))
			continue;
		ereport(LOG,
				(errmsg("pg_shipsync receiver refused " INT64_FORMAT " more requests (%s) in the last minute; the last: %s",
						l->suppressed, recv_class_names[i], l->last)));
		l->logged_at = now;
		l->suppressed = 0;
	}
}

/*
 * emit_log_hook of the receiver: the ingest functions' WARNING for each
 * refused push ("pg_shipsync: rejected a ...") is the receiver's to count,
 * once a minute per class, not to log once per request.
 */
static emit_log_hook_type recv_prev_log_hook = NULL;

static void
recv_log_hook(ErrorData *edata)
{
	if (edata->elevel == WARNING && edata->message != NULL &&
		strncmp(edata->message, "pg_shipsync: rejected a ", 24) == 0)
		edata->output_to_server = false;
	if (recv_prev_log_hook)
		recv_prev_log_hook(edata);
}

/* ---------- answers ---------- */

/* Set the answer of a request; it is sent when MHD next calls for it */
static void
recv_answer(RecvRequest *r, int status, const char *content_type,
			const char *body, int retry_after)
{
	r->answered = true;
	r->status = status;
	r->content_type = content_type;
	r->answer = MemoryContextStrdup(r->cxt, body);
	r->retry_after = retry_after;
}

/* Refuse a request: its answer, and a note for the log */
static void
recv_refuse(RecvRequest *r, RecvClass cls, int status, const char *message,
			int retry_after)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"error\": ");
	escape_json(&buf, message);
	appendStringInfoString(&buf, "}\n");
	recv_answer(r, status, "application/json", buf.data, retry_after);
	pfree(buf.data);
	recv_refused(cls, message);
}

/* Hand a set answer to MHD */
static enum MHD_Result
recv_send(struct MHD_Connection *conn, RecvRequest *r)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(strlen(r->answer), r->answer,
										   MHD_RESPMEM_MUST_COPY);
	if (resp == NULL)
		return MHD_NO;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
	if (r->retry_after > 0)
	{
		char		ra[16];

		snprintf(ra, sizeof(ra), "%d", r->retry_after);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
	}
	if (r->status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
								r->route == ROUTE_HEALTH ? "GET, HEAD" : "POST");
	ret = MHD_queue_response(conn, (unsigned int) r->status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* ---------- MHD callbacks: they collect, they never wait ---------- */

/* Route of a URL; *name gets the provider or source.  False: no route. */
static bool
recv_route(const char *url, RecvRoute *route, char **name)
{
	static const struct
	{
		const char *prefix;
		RecvRoute	route;
	}			routes[] = {
		{"/tracking/", ROUTE_TRACKING}, {"/fees/", ROUTE_FEES}, {"/crm/", ROUTE_CRM}
	};
	const char *n;

	if (strcmp(url, "/healthz") == 0)
	{
		*route = ROUTE_HEALTH;
		*name = NULL;
		return true;
	}
	for (int i = 0; i < (int) lengthof(routes); i++)
	{
		size_t		plen = strlen(routes[i].prefix);

		if (strncmp(url, routes[i].prefix, plen) != 0)
			continue;
		n = url + plen;
		/* the names create_provider() and create_crm_source() accept */
		if (n[0] == '\0' || strlen(n) > 63 || !(isalnum((unsigned char) n[0]) || n[0] == '_'))
			return false;
		for (const char *p = n; *p; p++)
			if (!(isalnum((unsigned char) *p) || *p == '_' || *p == '.' || *p == '-'))
				return false;
		*route = routes[i].route;
		*name = pstrdup(n);
		return true;
	}
	return false;
}

/* Whether the client may make one more request now (token bucket) */
static bool
recv_rate_ok(RecvConn *rc)
{
	RecvRate   *e;
	bool		found;
	TimestampTz now;
	long		secs;
	int			usecs;
	double		rate = shipsync_receiver_rate_limit;

	if (rate <= 0)
		return true;
	if (hash_get_num_entries(recv_rates) > 4 * shipsync_receiver_max_connections + 1024)
	{
		/* forget idle clients rather than grow without bound */
		HASH_SEQ_STATUS st;

		hash_seq_init(&st, recv_rates);
		while ((e = hash_seq_search(&st)) != NULL)
			(void) hash_search(recv_rates, e->client, HASH_REMOVE, NULL);
	}
	e = hash_search(recv_rates, rc->client, HASH_ENTER, &found);
	now = GetCurrentTimestamp();
	if (!found)
	{
		e->tokens = rate;
		e->at = now;
	}
	TimestampDifference(e->at, now, &secs, &usecs);
	e->tokens = Min(rate, e->tokens + rate * (secs + usecs / 1e6));
	e->at = now;
	if (e->tokens < 1)
		return false;
	e->tokens -= 1;
	return true;
}

/* Why the database cannot take pushes now, or NULL */
static const char *
recv_unavailable(void)
{
	if (RecoveryInProgress())
		return "the database is in recovery (a standby): send pushes to the primary";
	if (recv_shutdown)
		return "the receiver is shutting down";
	if (!recv_ready)
		return recv_not_ready;
	return NULL;
}

/*
 * The first call for a request, its headers in: route it and refuse what
 * can be refused before reading the body.  Returns false when answered.
 */
static bool
recv_begin(RecvRequest *r, const char *url, const char *method)
{
	const char *clen;
	const char *enc;
	const char *why;

	if (!recv_route(url, &r->route, &r->name))
	{
		recv_refuse(r, RC_NOT_FOUND, MHD_HTTP_NOT_FOUND,
					psprintf("no route %s: the routes are /tracking/{provider}, /fees/{provider}, /crm/{source} and /healthz", url), 0);
		return false;
	}
	if (r->route == ROUTE_HEALTH)
	{
		if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
			recv_refuse(r, RC_METHOD, MHD_HTTP_METHOD_NOT_ALLOWED, "/healthz answers GET", 0);
		else if ((why = recv_unavailable()) != NULL || (DefaultXactReadOnly && (why = "default_transaction_read_only is on")))
			recv_answer(r, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain; charset=utf-8",
						psprintf("unavailable: %s\n", why), RECV_RETRY_AFTER_S);
		else
			recv_answer(r, MHD_HTTP_OK, "text/plain; charset=utf-8", "ok\n", 0);
		return false;
	}
	if (strcmp(method, "POST") != 0)
	{
		recv_refuse(r, RC_METHOD, MHD_HTTP_METHOD_NOT_ALLOWED,
					psprintf("%s answers POST", url), 0);
		return false;
	}
	if (!recv_rate_ok(r->rc))
	{
		recv_refuse(r, RC_RATE, MHD_HTTP_TOO_MANY_REQUESTS,
					psprintf("client %s is over shipsync.receiver_rate_limit = %d requests/s",
							 r->rc->client, shipsync_receiver_rate_limit), RECV_RATE_RETRY_S);
		return false;
	}
	if ((why = recv_unavailable()) != NULL)
	{
		recv_refuse(r, RC_UNAVAILABLE, MHD_HTTP_SERVICE_UNAVAILABLE, why, RECV_RETRY_AFTER_S);
		return false;
	}
	if (recv_nqueued >= shipsync_receiver_queue_size)
	{
		recv_refuse(r, RC_UNAVAILABLE, MHD_HTTP_SERVICE_UNAVAILABLE,
					psprintf("overloaded: %d requests wait for the database (shipsync.receiver_queue_size)",
							 recv_nqueued), RECV_RETRY_AFTER_S);
		return false;
	}
	/*
	 * The functions take the bytes a sender signed, as text: a compressed
	 * body was answered 400 "not UTF-8 text", which did not say why.
	 * Decoding it would need a compression library this project does not
	 * use; 415 names the encoding, before the body is read.
	 */
	enc = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_ENCODING);
	if (enc && enc[0] != '\0' && pg_strcasecmp(enc, "identity") != 0)
	{
		recv_refuse(r, RC_BAD_REQUEST, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
					psprintf("Content-Encoding \"%.64s\" is not taken: send the body uncompressed", enc), 0);
		return false;
	}
	clen = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (clen && strtoull(clen, NULL, 10) > (unsigned long long) shipsync_max_push_bytes)
	{
		recv_refuse(r, RC_TOO_LARGE, MHD_HTTP_CONTENT_TOO_LARGE,
					psprintf("the body of %s bytes is over shipsync.max_push_bytes = %d", clen,
							 shipsync_max_push_bytes), 0);
		return false;
	}
	return true;
}

/* Headers or query parameters being collected into a JSON object */
typedef struct RecvValues
{
	StringInfoData buf;
	bool		bad;			/* one is not UTF-8 text */
} RecvValues;

/* MHD_KeyValueIterator: one header or query parameter into the object */
static enum MHD_Result
recv_collect(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	RecvValues *v = (RecvValues *) cls;

	if (!pg_verify_mbstr(PG_UTF8, key, strlen(key), true) ||
		(value && !pg_verify_mbstr(PG_UTF8, value, strlen(value), true)))
	{
		v->bad = true;
		return MHD_NO;
	}
	appendStringInfoString(&v->buf, v->buf.len > 1 ? ", " : "");
	escape_json(&v->buf, key);
	appendStringInfoString(&v->buf, ": ");
	escape_json(&v->buf, value ? value : "");
	return MHD_YES;
}

/*
 * Headers (or the query) as a JSON object, names as sent; a repeated
 * header keeps its last value.  NULL if one is not UTF-8 text.
 */
static char *
recv_values_json(struct MHD_Connection *conn, enum MHD_ValueKind kind)
{
	RecvValues	v;

	initStringInfo(&v.buf);
	v.bad = false;
	appendStringInfoChar(&v.buf, '{');
	MHD_get_connection_values(conn, kind, recv_collect, &v);
	if (v.bad)
		return NULL;
	appendStringInfoChar(&v.buf, '}');
	return v.buf.data;
}

/* The body is in: check it is text, and queue the request for the database */
static void
recv_complete(RecvRequest *r)
{
	MemoryContext old;

	if (r->too_large)
	{
		recv_refuse(r, RC_TOO_LARGE, MHD_HTTP_CONTENT_TOO_LARGE,
					psprintf("the body is over shipsync.max_push_bytes = %d", shipsync_max_push_bytes), 0);
		return;
	}
	/* UTF-8, in an SQL_ASCII database too (its text is any bytes) */
	if (memchr(r->body, '\0', r->len) != NULL ||
		!pg_verify_mbstr(PG_UTF8, r->body, (int) r->len, true))
	{
		recv_refuse(r, RC_BAD_REQUEST, MHD_HTTP_BAD_REQUEST,
					"the body is not UTF-8 text", 0);
		return;
	}
	old = MemoryContextSwitchTo(r->cxt);
	r->headers = recv_values_json(r->conn, MHD_HEADER_KIND);
	r->query = recv_values_json(r->conn, MHD_GET_ARGUMENT_KIND);
	MemoryContextSwitchTo(old);
	if (r->headers == NULL || r->query == NULL)
	{
		recv_refuse(r, RC_BAD_REQUEST, MHD_HTTP_BAD_REQUEST,
					"a header or query parameter is not UTF-8 text", 0);
		return;
	}
	MHD_suspend_connection(r->conn);
	r->queued = true;
	r->rc->in_db = true;
	dlist_push_tail(&recv_queue, &r->node);
	recv_nqueued++;
}

/* Append a piece of the body, up to shipsync.max_push_bytes, in a buffer of at most that */
static void
recv_append(RecvRequest *r, const char *data, size_t n)
{
	if (r->too_large)
		return;
	if (r->len + n > (size_t) shipsync_max_push_bytes)
	{
		/* read and drop the rest; the answer is 413 */
		r->too_large = true;
		return;
	}
	if (r->body == NULL || r->len + n + 1 > r->cap)
	{
		/*
		 * Doubling, but never past the limit (and its terminating zero): a
		 * body of the limit held a buffer of up to twice it, for every
		 * connection.
		 */
		size_t		want = Min(Max(r->len + n + 1, 2 * r->cap),
							   (size_t) shipsync_max_push_bytes + 1);
		char	   *nb = MemoryContextAlloc(r->cxt, want);

		if (r->body)
		{
			memcpy(nb, r->body, r->len);
			pfree(r->body);
		}
		r->body = nb;
		r->cap = want;
	}
	memcpy(r->body + r->len, data, n);
	r->len += n;
	r->body[r->len] = '\0';
}

/* MHD_AccessHandlerCallback: called for the headers, each piece of body, the end */
static enum MHD_Result
recv_access(void *cls, struct MHD_Connection *conn, const char *url,
			const char *method, const char *version, const char *upload_data,
			size_t *upload_data_size, void **con_cls)
{
	RecvRequest *r = (RecvRequest *) *con_cls;

	if (r == NULL)
	{
		MemoryContext cxt = AllocSetContextCreate(recv_cxt, "pg_shipsync receiver request",
												  ALLOCSET_SMALL_SIZES);
		const union MHD_ConnectionInfo *ci;
		MemoryContext old = MemoryContextSwitchTo(cxt);

		r = palloc0(sizeof(RecvRequest));
		r->cxt = cxt;
		r->conn = conn;
		ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
		r->rc = (RecvConn *) ci->socket_context;
		r->rc->headers_at = GetCurrentTimestamp();
		*con_cls = r;
		(void) recv_begin(r, url, method);
		MemoryContextSwitchTo(old);
		if (r->answered)
			return recv_send(conn, r);
		return MHD_YES;
	}
	if (r->answered)
		return recv_send(conn, r);
	if (*upload_data_size > 0)
	{
		recv_append(r, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (!r->queued)
	{
		if (r->body == NULL)
			recv_append(r, "", 0);
		recv_complete(r);
		if (r->answered)
			return recv_send(conn, r);
	}
	/* queued: MHD calls again after the connection is resumed */
	return MHD_YES;
}

/* MHD_RequestCompletedCallback: the answer went out, or the request died */
static void
recv_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			   enum MHD_RequestTerminationCode toe)
{
	RecvRequest *r = (RecvRequest *) *con_cls;

	if (r == NULL)
		return;
	if (r->queued && !r->answered)
	{
		/* cannot happen: a queued request's connection is suspended */
		dlist_delete(&r->node);
		recv_nqueued--;
	}
	r->rc->ready_since = GetCurrentTimestamp();
	r->rc->headers_at = 0;
	r->rc->in_db = false;
	r->rc->served++;
	MemoryContextDelete(r->cxt);
	*con_cls = NULL;
}

/* MHD_NotifyConnectionCallback: a connection opens or closes */
static void
recv_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
				enum MHD_ConnectionNotificationCode toe)
{
	RecvConn   *rc = (RecvConn *) *socket_context;

	if (toe == MHD_CONNECTION_NOTIFY_STARTED)
	{
		const union MHD_ConnectionInfo *ci;
		const struct sockaddr *sa;

		rc = MemoryContextAllocZero(recv_cxt, sizeof(RecvConn));
		rc->conn = conn;
		rc->ready_since = GetCurrentTimestamp();
		ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
		sa = ci ? ci->client_addr : NULL;
		if (sa == NULL ||
			getnameinfo(sa, sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in),
						rc->client, sizeof(rc->client), NULL, 0, NI_NUMERICHOST) != 0)
			strlcpy(rc->client, "unknown", sizeof(rc->client));
		dlist_push_tail(&recv_conns, &rc->node);
		*socket_context = rc;
	}
	else if (rc != NULL)
	{
		dlist_delete(&rc->node);
		pfree(rc);
		*socket_context = NULL;
	}
}

/* MHD's own messages (TLS handshakes failing, sockets) */
static void
recv_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char		msg[512];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	msg[strcspn(msg, "\n")] = '\0';
	recv_refused(RC_HTTP, msg);
}

/*
 * Cut off connections over their time limits: shut their socket down, so
 * that MHD reads the end of the stream and closes them in its own time.
 */
static void
recv_sweep(TimestampTz now)
{
	dlist_iter	it;

	dlist_foreach(it, &recv_conns)
	{
		RecvConn   *rc = dlist_container(RecvConn, node, it.cur);
		const union MHD_ConnectionInfo *ci;
		const char *why = NULL;

		if (rc->in_db || rc->cut)
			continue;
		if (rc->headers_at == 0 &&
			TimestampDifferenceExceeds(rc->ready_since, now, shipsync_receiver_header_timeout_ms))
			why = "no complete request headers within shipsync.receiver_header_timeout_ms";
		else if (rc->headers_at != 0 &&
				 TimestampDifferenceExceeds(rc->headers_at, now, shipsync_receiver_body_timeout_ms))
			why = "no complete body within shipsync.receiver_body_timeout_ms";
		if (why == NULL)
			continue;
		ci = MHD_get_connection_info(rc->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
		if (ci)
			(void) shutdown(ci->connect_fd, SHUT_RDWR);
		rc->cut = true;
		/* an idle keep-alive connection closed is no refusal */
		if (rc->headers_at != 0 || rc->served == 0)
			recv_refused(RC_TIMEOUT, psprintf("client %s: %s", rc->client, why));
	}
}

/* ---------- the database side: one transaction per batch ---------- */

/*
 * Whether pushes can be taken: the extension at this library's version,
 * the role shipsync_ingest.  Then, every RECV_READY_CHECK_MS, the saved
 * write-back plans of bindings no longer attached are freed (writeback.c).
 * In a transaction, SPI connected.
 */
static void
recv_check_ready_in_tx(void)
{
	int			rc;
	char	   *version = NULL;

	recv_ready_checked = GetCurrentTimestamp();
	recv_ready = false;
	rc = SPI_execute("SELECT extversion FROM pg_catalog.pg_extension"
					 " WHERE extname OPERATOR(pg_catalog.=) 'pg_shipsync'", true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "looking up the extension failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
		version = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	recv_ingest_role = get_role_oid("shipsync_ingest", true);
	/*
	 * Pushes are UTF-8, signed over their bytes, and go to the functions
	 * as they came: in another encoding (EUC_CN, LATIN1) they were read as
	 * its characters, mojibake stored (an e with diaeresis as a Chinese
	 * character in EUC_CN) or most Chinese refused 400, which a sender
	 * takes as final.  503 until the receiver's database is a UTF8 one.
	 */
	if (GetDatabaseEncoding() != PG_UTF8 && GetDatabaseEncoding() != PG_SQL_ASCII)
		snprintf(recv_not_ready, sizeof(recv_not_ready),
				 "database \"%s\" is in encoding %s: pushes are UTF-8 and signed over their bytes,"
				 " and cannot be stored there as they came; use a UTF8 database (shipsync.receiver_database)",
				 shipsync_receiver_database, GetDatabaseEncodingName());
	else if (version == NULL)
		snprintf(recv_not_ready, sizeof(recv_not_ready),
				 "extension pg_shipsync is not installed in database \"%s\"",
				 shipsync_receiver_database);
	else if (strcmp(version, SHIPSYNC_EXTVERSION) != 0)
		snprintf(recv_not_ready, sizeof(recv_not_ready),
				 "extension pg_shipsync is at version %s, the library at %s: run ALTER EXTENSION pg_shipsync UPDATE",
				 version, SHIPSYNC_EXTVERSION);
	else if (!OidIsValid(recv_ingest_role))
		snprintf(recv_not_ready, sizeof(recv_not_ready), "role shipsync_ingest does not exist");
	else
		recv_ready = true;

	/*
	 * The write-back plans of bindings detached or dropped since (each
	 * some 30 kB): where tenants' tables come and go, kept for the
	 * receiver's life, they grew it without bound.
	 */
	if (recv_ready)
		writeback_forget_detached();
}

/* The same in a transaction of its own, when idle */
static void
recv_check_ready(void)
{
	MemoryContext old = CurrentMemoryContext;

	if (RecoveryInProgress())
	{
		recv_ready = false;
		recv_ready_checked = GetCurrentTimestamp();
		return;
	}
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	recv_check_ready_in_tx();
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(old);
}

/* Whether the request came as SOAP (Salesforce): errors are then SOAP faults */
static bool
recv_is_soap(RecvRequest *r)
{
	const char *ct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
												 MHD_HTTP_HEADER_CONTENT_TYPE);

	return ct != NULL && (pg_strncasecmp(ct, "text/xml", 8) == 0 ||
						  pg_strncasecmp(ct, "application/soap+xml", 20) == 0);
}

/* An ingest function's answer, final once the transaction commits */
static void
recv_pending(RecvRequest *r, int status, const char *content_type, const char *body)
{
	r->pending_status = status;
	r->pending_type = content_type;
	r->pending_answer = MemoryContextStrdup(r->cxt, body);
}

/*
 * An ingest function's error: its SQLSTATE decides the HTTP status; the
 * message is the answer, never the detail.  The detail goes to the log
 * line, unless the error is a data exception or a constraint's (classes 22
 * and 23), whose details quote the row ("Failing row contains (...)", "Key
 * (...)=(...)"): an order's names, phones and addresses.
 */
static void
recv_pending_error(RecvRequest *r, const char *sqlstate, const char *message,
				   const char *detail)
{
	StringInfoData buf;
	int			status = MHD_HTTP_INTERNAL_SERVER_ERROR;

	r->pending_class = RC_ERROR;
	if (strcmp(sqlstate, "SS401") == 0)
		status = MHD_HTTP_UNAUTHORIZED, r->pending_class = RC_SIGNATURE;
	else if (strcmp(sqlstate, "SS400") == 0)
		status = MHD_HTTP_BAD_REQUEST, r->pending_class = RC_BAD_REQUEST;
	else if (strcmp(sqlstate, "42704") == 0)
		status = MHD_HTTP_NOT_FOUND, r->pending_class = RC_NOT_FOUND;
	else if (strncmp(sqlstate, "40", 2) == 0 || strncmp(sqlstate, "53", 2) == 0 ||
			 strcmp(sqlstate, "55P03") == 0 || strcmp(sqlstate, "57014") == 0)
		status = MHD_HTTP_SERVICE_UNAVAILABLE, r->pending_class = RC_UNAVAILABLE;
	if (strcmp(sqlstate, "55P03") == 0)
		recv_lock_ran_out = true;
	initStringInfo(&buf);
	if (recv_is_soap(r))
	{
		char	   *esc = escape_xml(message);

		appendStringInfo(&buf,
						 "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
						 "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\">"
						 "<soapenv:Body><soapenv:Fault><faultcode>soapenv:%s</faultcode>"
						 "<faultstring>%s</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>",
						 status < 500 ? "Client" : "Server", esc);
		recv_pending(r, status, "text/xml; charset=utf-8", buf.data);
	}
	else
	{
		appendStringInfoString(&buf, "{\"error\": ");
		escape_json(&buf, message);
		appendStringInfoString(&buf, ", \"sqlstate\": ");
		escape_json(&buf, sqlstate);
		appendStringInfoString(&buf, "}\n");
		recv_pending(r, status, "application/json", buf.data);
	}
	if (detail != NULL && strncmp(sqlstate, "22", 2) != 0 && strncmp(sqlstate, "23", 2) != 0)
		r->pending_reason = MemoryContextStrdup(r->cxt, psprintf("%s: %s", message, detail));
	else
		r->pending_reason = MemoryContextStrdup(r->cxt, message);
}

typedef void (*RecvStep) (RecvRequest **reqs, int n);

/* A step over requests, run by shipsync_subxact() */
typedef struct RecvStepCall
{
	RecvStep	step;
	RecvRequest **reqs;
	int			n;
} RecvStepCall;

static void
recv_step_run(void *arg)
{
	RecvStepCall *c = (RecvStepCall *) arg;

	c->step(c->reqs, c->n);
}

/*
 * Run a step over requests in a subtransaction: an error rolls back what
 * the step did and becomes the answer of each of them.
 */
static void
recv_subxact(RecvStep step, RecvRequest **reqs, int n)
{
	RecvStepCall c = {step, reqs, n};
	ErrorData  *e = shipsync_subxact(recv_step_run, &c);

	if (e == NULL)
		return;
	for (int i = 0; i < n; i++)
		recv_pending_error(reqs[i], unpack_sql_state(e->sqlerrcode), e->message, e->detail);
	FreeErrorData(e);
}

/* Tracking pushes of one provider: one call of _ingest_tracking_batch */
static void
recv_step_tracking(RecvRequest **reqs, int n)
{
	static SPIPlanPtr plan = NULL;
	Datum	   *bodies = palloc(sizeof(Datum) * n);
	Datum	   *headers = palloc(sizeof(Datum) * n);
	Datum		args[3];
	SPITupleTable *tt;

	if (plan == NULL)
	{
		Oid			t[3] = {TEXTOID, TEXTARRAYOID, JSONBARRAYOID};

		plan = shipsync_prepare_saved(
			"SELECT ord, sqlstate, message, coalesce(result->'reply', result)::text,"
			" result->>'detail'"
			" FROM shipsync._ingest_tracking_batch($1, $2, $3)", 3, t);
	}
	for (int i = 0; i < n; i++)
	{
		bodies[i] = PointerGetDatum(cstring_to_text_with_len(reqs[i]->body, reqs[i]->len));
		headers[i] = DirectFunctionCall1(jsonb_in, CStringGetDatum(reqs[i]->headers));
	}
	args[0] = CStringGetTextDatum(reqs[0]->name);
	args[1] = PointerGetDatum(construct_array(bodies, n, TEXTOID, -1, false, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(headers, n, JSONBOID, -1, false, TYPALIGN_INT));
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "ingesting tracking pushes failed");
	tt = SPI_tuptable;
	for (uint64 k = 0; k < SPI_processed; k++)
	{
		bool		isnull;
		int			ord = DatumGetInt32(SPI_getbinval(tt->vals[k], tt->tupdesc, 1, &isnull));
		char	   *sqlstate = SPI_getvalue(tt->vals[k], tt->tupdesc, 2);
		RecvRequest *r;

		if (ord < 1 || ord > n)
			elog(ERROR, "unexpected push ordinal %d", ord);
		r = reqs[ord - 1];
		if (sqlstate != NULL)
			recv_pending_error(r, sqlstate, SPI_getvalue(tt->vals[k], tt->tupdesc, 3),
							   SPI_getvalue(tt->vals[k], tt->tupdesc, 5));
		else
			recv_pending(r, MHD_HTTP_OK, "application/json",
						 SPI_getvalue(tt->vals[k], tt->tupdesc, 4));
	}
}

/* One CRM push: ingest_crm(), answered with its reply or its summary */
static void
recv_step_crm(RecvRequest **reqs, int n)
{
	static SPIPlanPtr plan = NULL;
	RecvRequest *r = reqs[0];
	Datum		args[4];
	char	   *reply;
	char	   *ctype;

	if (plan == NULL)
	{
		Oid			t[4] = {TEXTOID, TEXTOID, JSONBOID, JSONBOID};

		plan = shipsync_prepare_saved(
			"SELECT x.r->>'reply', x.r->>'content_type', x.r::text"
			" FROM (SELECT shipsync.ingest_crm($1, $2, $3, $4) AS r) x", 4, t);
	}
	args[0] = CStringGetTextDatum(r->name);
	args[1] = PointerGetDatum(cstring_to_text_with_len(r->body, r->len));
	args[2] = DirectFunctionCall1(jsonb_in, CStringGetDatum(r->headers));
	args[3] = DirectFunctionCall1(jsonb_in, CStringGetDatum(r->query));
	if (SPI_execute_plan(plan, args, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "ingesting a CRM push failed");
	reply = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	ctype = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (reply != NULL)
		recv_pending(r, MHD_HTTP_OK, ctype ? MemoryContextStrdup(r->cxt, ctype) : "text/plain", reply);
	else
		recv_pending(r, MHD_HTTP_OK, "application/json",
					 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3));
}

/*
 * One fee push: ingest_fees() (fees.c).  A database whose extension is
 * still at 0.1 has none: there the route answers 404 with the reason.
 */
static void
recv_step_fees(RecvRequest **reqs, int n)
{
	RecvRequest *r = reqs[0];
	Oid			t[3] = {TEXTOID, TEXTOID, JSONBOID};
	Datum		args[3];
	bool		isnull;

	if (SPI_execute("SELECT pg_catalog.to_regprocedure('shipsync.ingest_fees(text,text,jsonb)') IS NOT NULL",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "looking up shipsync.ingest_fees failed");
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
	{
		recv_pending(r, MHD_HTTP_NOT_FOUND, "application/json",
					 "{\"error\": \"fee pushes are not taken by this version of pg_shipsync: shipsync.ingest_fees() does not exist\"}\n");
		r->pending_class = RC_NOT_FOUND;
		r->pending_reason = "fee pushes are not taken: shipsync.ingest_fees() does not exist";
		return;
	}
	args[0] = CStringGetTextDatum(r->name);
	args[1] = PointerGetDatum(cstring_to_text_with_len(r->body, r->len));
	args[2] = DirectFunctionCall1(jsonb_in, CStringGetDatum(r->headers));
	if (SPI_execute_with_args("SELECT coalesce(x.r->'reply', x.r)::text"
							  " FROM (SELECT shipsync.ingest_fees($1, $2, $3) AS r) x",
							  3, t, args, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "ingesting a fee push failed");
	recv_pending(r, MHD_HTTP_OK, "application/json",
				 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
}

/*
 * Let MHD serve what came while a batch is in the database: /healthz is
 * answered, and new requests are queued for the next batch (the callbacks
 * only collect; the batch's own connections are suspended).  Called
 * between the steps of a batch, in its transaction and outside any
 * subtransaction, at most every RECV_SERVE_MS, so that a step held by a
 * lock (up to shipsync.receiver_lock_timeout) delays /healthz by that
 * step, not by the whole batch.  An ERROR in a callback must not unwind
 * through MHD: without an exception stack it becomes FATAL, as it does in
 * the main loop.
 */
static void
recv_serve_between(TimestampTz *last)
{
	sigjmp_buf *save_stack = PG_exception_stack;
	TimestampTz now = GetCurrentTimestamp();

	if (!TimestampDifferenceExceeds(*last, now, RECV_SERVE_MS))
		return;
	PG_exception_stack = NULL;
	for (int i = 0; i < RECV_SERVE_ROUNDS; i++)
	{
		MHD_UNSIGNED_LONG_LONG ms;
		struct pollfd pfd = {recv_epoll_fd, POLLIN, 0};

		MHD_run(recv_daemon);
		if (poll(&pfd, 1, 0) <= 0 &&
			!(MHD_get_timeout(recv_daemon, &ms) == MHD_YES && ms == 0))
			break;
	}
	PG_exception_stack = save_stack;
	*last = GetCurrentTimestamp();
}

/*
 * Once a push of the batch has waited for a lock until lock_timeout ran
 * out, the lock is taken as still held: the rest of the batch waits for a
 * lock at most RECV_LOCK_HELD_MS, so that each push the lock holds back
 * fails at once (503, sent again later) rather than after another
 * shipsync.receiver_lock_timeout.  A table under ALTER TABLE in an open
 * transaction cost a batch of 256 CRM pushes four minutes, every other
 * table's pushes waiting behind it.  The next batch waits the whole
 * timeout again.  Called between the steps, at the batch's GUC nest level.
 */
static void
recv_lock_still_held(void)
{
	if (recv_lock_ran_out && LockTimeout > RECV_LOCK_HELD_MS)
		(void) set_config_option("lock_timeout", CppAsString2(RECV_LOCK_HELD_MS),
								 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

/*
 * Every request of a batch, as shipsync_ingest: tracking pushes grouped by
 * provider, the others one by one, each group in a subtransaction.  A
 * lock held by another session (an order row being edited) is waited for
 * at most shipsync.receiver_lock_timeout: then the group's push fails
 * alone with lock_not_available, answered 503 with Retry-After, and the
 * rest of the batch goes on, waiting for a lock at most RECV_LOCK_HELD_MS
 * (recv_lock_still_held()).  The setting is the batch's own, at a GUC
 * nest level of its own, undone once the pushes are in.
 */
static void
recv_ingest(RecvRequest **reqs, int n)
{
	Oid			save_userid;
	int			save_sec;
	bool	   *done = palloc0(sizeof(bool) * n);
	RecvRequest **group = palloc(sizeof(RecvRequest *) * n);
	int			nest = NewGUCNestLevel();
	TimestampTz served = GetCurrentTimestamp();

	if (shipsync_receiver_lock_timeout_ms > 0)
		(void) set_config_option("lock_timeout",
								 psprintf("%d", shipsync_receiver_lock_timeout_ms),
								 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	recv_lock_ran_out = false;
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(recv_ingest_role, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	for (int i = 0; i < n; i++)
	{
		int			k = 0;

		if (done[i])
			continue;
		recv_serve_between(&served);
		recv_lock_still_held();
		if (reqs[i]->route != ROUTE_TRACKING)
		{
			recv_subxact(reqs[i]->route == ROUTE_CRM ? recv_step_crm : recv_step_fees,
						 &reqs[i], 1);
			continue;
		}
		for (int j = i; j < n; j++)
			if (!done[j] && reqs[j]->route == ROUTE_TRACKING &&
				strcmp(reqs[j]->name, reqs[i]->name) == 0)
			{
				group[k++] = reqs[j];
				done[j] = true;
			}
		recv_subxact(recv_step_tracking, group, k);
	}
	SetUserIdAndSecContext(save_userid, save_sec);
	AtEOXact_GUC(true, nest);
}

/*
 * Give every request of a batch its final answer (committed: what its
 * function said; not: 503 and the reason) and resume its connection.
 */
static void
recv_finish(RecvRequest **reqs, int n, bool committed, const char *failure)
{
	for (int i = 0; i < n; i++)
	{
		RecvRequest *r = reqs[i];

		if (committed && r->pending_answer != NULL)
		{
			recv_answer(r, r->pending_status, r->pending_type, r->pending_answer,
						r->pending_status == MHD_HTTP_SERVICE_UNAVAILABLE ? RECV_RETRY_AFTER_S : 0);
			if (r->pending_status >= 300)
				recv_refused(r->pending_class,
							 psprintf("/%s/%s: %s",
									  r->route == ROUTE_TRACKING ? "tracking" :
									  r->route == ROUTE_CRM ? "crm" : "fees",
									  r->name, r->pending_reason));
		}
		else
			recv_refuse(r, RC_UNAVAILABLE, MHD_HTTP_SERVICE_UNAVAILABLE,
						failure ? failure : "the ingest transaction did not commit",
						RECV_RETRY_AFTER_S);
		MHD_resume_connection(r->conn);
	}
}

/* The oldest queued requests, at most RECV_BATCH_MAX */
static int
recv_take_batch(RecvRequest **reqs)
{
	int			n = 0;

	while (n < RECV_BATCH_MAX && !dlist_is_empty(&recv_queue))
	{
		reqs[n++] = dlist_container(RecvRequest, node, dlist_pop_head_node(&recv_queue));
		recv_nqueued--;
	}
	return n;
}

/*
 * Take what the callbacks queued into one transaction.  Answers are set
 * only after CommitTransactionCommand() returned: a 2xx is never sent for
 * a push that is not durable.
 */
static void
recv_run_batch(void)
{
	RecvRequest *reqs[RECV_BATCH_MAX];
	volatile int n = recv_take_batch(reqs);
	volatile bool committed = false;
	char	   *volatile failure = NULL;
	MemoryContext old = CurrentMemoryContext;

	recv_in_tx = true;
	if (recv_shutdown || RecoveryInProgress())
	{
		recv_in_tx = false;
		recv_finish(reqs, n, false, recv_shutdown ? "the receiver is shutting down" :
					"the database is in recovery (a standby): send pushes to the primary");
		return;
	}
	pgstat_report_activity(STATE_RUNNING, "ingesting pushes");
	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		shipsync_hold_extension();

		/*
		 * A 2xx says the push is on disk, so that the sender never sends it
		 * again: with synchronous_commit = off in the server's settings, this
		 * transaction alone flushes its commit (as SET LOCAL would).  Any
		 * stronger setting (on, remote_write, remote_apply) is kept.
		 */
		if (synchronous_commit == SYNCHRONOUS_COMMIT_OFF)
			(void) set_config_option("synchronous_commit", "local", PGC_SUSET, PGC_S_SESSION,
									 GUC_ACTION_LOCAL, true, 0, false);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		if (!recv_ready || TimestampDifferenceExceeds(recv_ready_checked, GetCurrentTimestamp(),
													  RECV_READY_CHECK_MS))
			recv_check_ready_in_tx();
		if (recv_ready)
			recv_ingest(reqs, n);
		else
			failure = pstrdup(recv_not_ready);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		committed = recv_ready;
	}
	PG_CATCH();
	{
		ErrorData  *e;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(old);
		e = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		failure = psprintf("the ingest transaction failed: %s", e->message);
		FreeErrorData(e);
		recv_ready = false;		/* look again before the next batch */
		RESUME_INTERRUPTS();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	recv_in_tx = false;
	recv_finish(reqs, n, committed, failure);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* ---------- the listener ---------- */

/*
 * shipsync.receiver_listen as a socket address: host:port, [v6]:port, or
 * a port alone (127.0.0.1).  False with a message when it is not one.
 */
static bool
recv_parse_listen(const char *spec, struct sockaddr_storage *ss, socklen_t *sslen,
				  char *errbuf, size_t errlen)
{
	char		host[256] = "127.0.0.1";
	const char *port = spec;
	const char *colon = strrchr(spec, ':');
	struct addrinfo hints = {0};
	struct addrinfo *res = NULL;
	int			rc;

	if (spec[0] == '[')
	{
		const char *close = strchr(spec, ']');

		if (close == NULL || close[1] != ':' || (size_t) (close - spec - 1) >= sizeof(host))
		{
			snprintf(errbuf, errlen, "\"%s\" is not [IPv6 address]:port", spec);
			return false;
		}
		memcpy(host, spec + 1, close - spec - 1);
		host[close - spec - 1] = '\0';
		port = close + 2;
	}
	else if (colon != NULL)
	{
		if ((size_t) (colon - spec) >= sizeof(host) || colon == spec)
		{
			snprintf(errbuf, errlen, "\"%s\" is not host:port", spec);
			return false;
		}
		memcpy(host, spec, colon - spec);
		host[colon - spec] = '\0';
		port = colon + 1;
	}
	if (port[0] == '\0' || strspn(port, "0123456789") != strlen(port) || atoi(port) > 65535)
	{
		snprintf(errbuf, errlen, "\"%s\" has no valid port", spec);
		return false;
	}
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0 || res == NULL)
	{
		snprintf(errbuf, errlen, "cannot resolve \"%s\": %s", host, gai_strerror(rc));
		return false;
	}
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*sslen = res->ai_addrlen;
	freeaddrinfo(res);
	return true;
}

/*
 * A PEM file of the TLS listener, whole; a key file must be readable by
 * the server's user alone (or group-readable when owned by root), as
 * PostgreSQL asks of ssl_key_file.  NULL with a message otherwise.
 */
static char *
recv_read_pem(const char *path, bool key, char *errbuf, size_t errlen)
{
	struct stat st;
	FILE	   *f;
	char	   *buf;
	size_t		n;

	if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
	{
		snprintf(errbuf, errlen, "could not access \"%s\": %m", path);
		return NULL;
	}
	if (key && ((st.st_uid == geteuid() && (st.st_mode & (S_IRWXG | S_IRWXO))) ||
				(st.st_uid == 0 && (st.st_mode & (S_IWGRP | S_IXGRP | S_IRWXO))) ||
				(st.st_uid != 0 && st.st_uid != geteuid())))
	{
		snprintf(errbuf, errlen, "private key file \"%s\" must be owned by the server's user with mode 0600 or less, or by root with mode 0640 or less", path);
		return NULL;
	}
	if (st.st_size > 1024 * 1024)
	{
		snprintf(errbuf, errlen, "\"%s\" is larger than 1 MB", path);
		return NULL;
	}
	f = AllocateFile(path, "r");
	if (f == NULL)
	{
		snprintf(errbuf, errlen, "could not open \"%s\": %m", path);
		return NULL;
	}
	buf = palloc(st.st_size + 1);
	n = fread(buf, 1, st.st_size, f);
	FreeFile(f);
	buf[n] = '\0';
	return buf;
}

/*
 * Start the MHD daemon on shipsync.receiver_listen: external events,
 * epoll, suspendable connections, no thread.  False with a message when
 * it cannot (the caller waits and tries again).
 */
static bool
recv_start_daemon(char *errbuf, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t	sslen;
	unsigned int flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	char	   *cert = NULL;
	char	   *key = NULL;
	struct MHD_OptionItem opts[16];
	int			k = 0;
	unsigned int idle_s = (Max(shipsync_receiver_header_timeout_ms,
							   shipsync_receiver_body_timeout_ms) + 999) / 1000 + 5;

	/* first, or MHD says so on stderr */
	opts[k++] = (struct MHD_OptionItem) {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t) recv_mhd_log, NULL};

	if (!recv_parse_listen(shipsync_receiver_listen, &ss, &sslen, errbuf, errlen))
		return false;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	if (shipsync_receiver_ssl_cert_file[0] != '\0' || shipsync_receiver_ssl_key_file[0] != '\0')
	{
		if (shipsync_receiver_ssl_cert_file[0] == '\0' || shipsync_receiver_ssl_key_file[0] == '\0')
		{
			snprintf(errbuf, errlen, "shipsync.receiver_ssl_cert_file and shipsync.receiver_ssl_key_file must be set together");
			return false;
		}
		if (!MHD_is_feature_supported(MHD_FEATURE_TLS))
		{
			snprintf(errbuf, errlen, "this libmicrohttpd has no TLS support");
			return false;
		}
		cert = recv_read_pem(shipsync_receiver_ssl_cert_file, false, errbuf, errlen);
		key = cert ? recv_read_pem(shipsync_receiver_ssl_key_file, true, errbuf, errlen) : NULL;
		if (key == NULL)
			return false;
		flags |= MHD_USE_TLS;
		opts[k++] = (struct MHD_OptionItem) {MHD_OPTION_HTTPS_MEM_CERT, 0, cert};
		opts[k++] = (struct MHD_OptionItem) {MHD_OPTION_HTTPS_MEM_KEY, 0, key};
		opts[k++] = (struct MHD_OptionItem) {MHD_OPTION_HTTPS_PRIORITIES, 0,
		"NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"};
	}
	opts[k++] = (struct MHD_OptionItem) {MHD_OPTION_SOCK_ADDR, 0, &ss};
	opts[k++] = (struct MHD_OptionItem) {MHD_OPTION_CONNECTION_LIMIT, shipsync_receiver_max_connections, NULL};
	/* one address cannot hold them all with slow sockets; MHD closes more */
	if (shipsync_receiver_max_connections_per_ip > 0)
		opts[k++] = (struct MHD_OptionItem) {MHD_OPTION_PER_IP_CONNECTION_LIMIT,
		shipsync_receiver_max_connections_per_ip, NULL};
	/* a backstop for connections that stop moving; sweeps cut sooner */
	opts[k++] = (struct MHD_OptionItem) {MHD_OPTION_CONNECTION_TIMEOUT, idle_s, NULL};
	opts[k++] = (struct MHD_OptionItem) {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t) recv_completed, NULL};
	opts[k++] = (struct MHD_OptionItem) {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t) recv_connection, NULL};
	/* PostgreSQL ignores SIGPIPE in its processes */
	opts[k++] = (struct MHD_OptionItem) {MHD_OPTION_SIGPIPE_HANDLED_BY_APP, 1, NULL};
	opts[k++] = (struct MHD_OptionItem) {MHD_OPTION_END, 0, NULL};

	recv_daemon = MHD_start_daemon(flags, 0, NULL, NULL, recv_access, NULL,
								   MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
	if (key)
	{
		/* MHD keeps its own copy in GnuTLS; ours goes */
		explicit_bzero(key, strlen(key));
		pfree(key);
	}
	if (recv_daemon == NULL)
	{
		snprintf(errbuf, errlen, "libmicrohttpd could not listen on %s: %m", shipsync_receiver_listen);
		return false;
	}
	return true;
}

/* How long the loop may wait: MHD's timeout, the next time limit, the log */
static long
recv_timeout(TimestampTz now)
{
	MHD_UNSIGNED_LONG_LONG mhd_ms;
	long		ms = RECV_READY_CHECK_MS;
	dlist_iter	it;

	if (!dlist_is_empty(&recv_queue))
		return 0;
	if (MHD_get_timeout(recv_daemon, &mhd_ms) == MHD_YES)
		ms = Min(ms, (long) Min(mhd_ms, (MHD_UNSIGNED_LONG_LONG) LONG_MAX));
	dlist_foreach(it, &recv_conns)
	{
		RecvConn   *rc = dlist_container(RecvConn, node, it.cur);
		TimestampTz due;

		if (rc->in_db || rc->cut)
			continue;
		due = rc->headers_at != 0 ?
			TimestampTzPlusMilliseconds(rc->headers_at, shipsync_receiver_body_timeout_ms) :
			TimestampTzPlusMilliseconds(rc->ready_since, shipsync_receiver_header_timeout_ms);
		ms = Min(ms, Max(0, (long) ((due - now) / 1000) + 1));
	}
	for (int i = 0; i < RC_NCLASSES; i++)
		if (recv_log[i].suppressed > 0)
			ms = Min(ms, Max(0, (long) ((TimestampTzPlusMilliseconds(recv_log[i].logged_at, RECV_LOG_INTERVAL_MS) - now) / 1000) + 1));
	return ms;
}

/*
 * SIGTERM: stop after the batch at hand; during its transaction, stop at
 * once like any backend (die): the transaction rolls back, its
 * connections drop unanswered, and their senders try again.
 */
static void
recv_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	recv_shutdown = true;
	if (recv_in_tx)
		die(postgres_signal_arg);
	SetLatch(MyLatch);
	errno = save_errno;
}

/* A clean stop: no new connections, 503 for what waits, answers flushed */
static void
recv_stop(void)
{
	MHD_socket	lfd = MHD_quiesce_daemon(recv_daemon);
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);

	if (lfd != MHD_INVALID_SOCKET)
		close(lfd);
	while (!dlist_is_empty(&recv_queue))
		recv_run_batch();
	/* let MHD send what is answered, for at most a second */
	while (GetCurrentTimestamp() < until)
	{
		MHD_run(recv_daemon);
		if (MHD_get_daemon_info(recv_daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS)->num_connections == 0)
			break;
		pg_usleep(10 * 1000L);
	}
	MHD_stop_daemon(recv_daemon);
	recv_daemon = NULL;
	ereport(LOG, (errmsg("pg_shipsync receiver stopped")));
}

/* A restarted launcher finds us here, and starts no second receiver */
static void
recv_release_pid(int code, Datum arg)
{
	SpinLockAcquire(&shipsync_shared->mutex);
	if (shipsync_shared->receiver_pid == MyProcPid)
		shipsync_shared->receiver_pid = 0;
	SpinLockRelease(&shipsync_shared->mutex);
}

static void
recv_claim_pid(void)
{
	SpinLockAcquire(&shipsync_shared->mutex);
	shipsync_shared->receiver_pid = MyProcPid;
	SpinLockRelease(&shipsync_shared->mutex);
	on_shmem_exit(recv_release_pid, 0);
}

/* Start listening, waiting out a busy port or a bad setting */
static void
recv_listen(void)
{
	char		err[512];
	bool		told = false;

	while (!recv_start_daemon(err, sizeof(err)))
	{
		if (!told)
			ereport(LOG,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("pg_shipsync receiver cannot listen: %s", err),
					 errhint("Check shipsync.receiver_listen and the TLS files; it tries again every 5 seconds.")));
		told = true;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 5000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (recv_shutdown)
			proc_exit(0);
	}
	ereport(LOG,
			(errmsg("pg_shipsync receiver listening on %s (%s) for database \"%s\"",
					shipsync_receiver_listen,
					shipsync_receiver_ssl_cert_file[0] ? "https" : "http",
					shipsync_receiver_database)));
}

void
shipsync_receiver_main(Datum main_arg)
{
	WaitEventSet *wes;
	HASHCTL		hctl = {0};
	TimestampTz last_sweep = 0;
	MemoryContext loop_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, recv_sigterm);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(shipsync_receiver_database, NULL, 0);
	/* a superuser session: no ALTER DATABASE ... SET search_path steers it */
	shipsync_pin_worker_session(false);
	pgstat_report_appname("pg_shipsync receiver");
	recv_claim_pid();
	recv_prev_log_hook = emit_log_hook;
	emit_log_hook = recv_log_hook;

	recv_cxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync receiver",
									 ALLOCSET_DEFAULT_SIZES);
	/* what one turn of the loop allocates, callbacks included */
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync receiver loop",
									 ALLOCSET_DEFAULT_SIZES);
	hctl.keysize = INET6_ADDRSTRLEN;
	hctl.entrysize = sizeof(RecvRate);
	hctl.hcxt = recv_cxt;
	recv_rates = hash_create("pg_shipsync receiver clients", 256, &hctl,
							 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	recv_check_ready();
	recv_listen();

	wes = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(wes, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wes, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	recv_epoll_fd = MHD_get_daemon_info(recv_daemon, MHD_DAEMON_INFO_EPOLL_FD)->epoll_fd;
	AddWaitEventToSet(wes, WL_SOCKET_READABLE, recv_epoll_fd, NULL, NULL);
	for (;;)
	{
		WaitEvent	ev[3];
		TimestampTz now = GetCurrentTimestamp();

		MemoryContextSwitchTo(loop_cxt);
		MemoryContextReset(loop_cxt);
		(void) WaitEventSetWait(wes, recv_timeout(now), ev, lengthof(ev), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (recv_shutdown)
		{
			recv_stop();
			proc_exit(0);
		}
		MHD_run(recv_daemon);
		now = GetCurrentTimestamp();
		if (TimestampDifferenceExceeds(last_sweep, now, RECV_SWEEP_MS))
		{
			recv_sweep(now);
			recv_log_flush(now);
			last_sweep = now;
		}
		if (!dlist_is_empty(&recv_queue))
		{
			recv_run_batch();
			/* the resumed connections get their answers */
			MHD_run(recv_daemon);
		}
		else if (TimestampDifferenceExceeds(recv_ready_checked, now, RECV_READY_CHECK_MS))
			recv_check_ready();
	}
}
