/*-------------------------------------------------------------------------
 *
 * http.c
 *		Many HTTP requests in flight from one process: libcurl multi driven
 *		by PostgreSQL's WaitEventSet.
 *
 * The dispatcher must sleep on two things at once: its latch (a commit
 * enqueued work, a reload, a shutdown) and the sockets of the transfers in
 * flight.  libcurl's socket interface tells us which sockets it wants
 * watched (CURLMOPT_SOCKETFUNCTION) and when its next timeout falls
 * (CURLMOPT_TIMERFUNCTION).  Those sockets go into an epoll set of our own,
 * changed incrementally as libcurl asks (epoll_ctl add/mod/del), and that
 * one epoll descriptor sits in a WaitEventSet beside the latch and
 * postmaster death: it turns readable when any transfer socket is ready.
 * So a wait costs the same with 1 or 1,000 requests in flight; a
 * WaitEventSet of the sockets themselves would have to be rebuilt whenever
 * libcurl parks or reuses a keep-alive connection (PostgreSQL 15 cannot
 * remove an event from a set), which is every request.
 *
 * A keep-alive connection between two requests stays in the epoll set
 * ("parked"): libcurl stops watching it after every answer and watches it
 * again for the next request on it, and taking it out and putting it back
 * cost two epoll_ctl() calls a request, each a system call that is dear
 * on a virtual machine (HttpSockets below).
 *
 * Completed transfers are queued on a list the caller drains with
 * http_take_done() right after every wait, so each completion is applied as
 * soon as it finishes and never waits for a slower request of its batch.
 *
 * Resources: the multi handle and the connection cache live as long as the
 * client; a transfer's curl_slist lives exactly as long as the transfer.
 * Easy handles are pooled: when a transfer completes, its handle leaves the
 * multi handle, is reset (curl_easy_reset() clears every option: nothing
 * of that transfer or its provider, no URL, header, body, CA, client
 * certificate, key, pin or callback pointer, stays on it) and goes on the
 * client's free list, which http_submit() takes from before it makes a new
 * one.  A new handle mallocs some 80 kB of buffers: making and freeing
 * one per transfer showed in a burst's profile (libcurl 10.5%, malloc and
 * free 6% of the dispatcher's CPU).  The list holds at most as many
 * handles as were in flight at once since it was last emptied, and never
 * more than max_connections; http_release_idle() empties it (the caller
 * does, when it goes idle after a burst), and so does
 * http_client_destroy().  A reset handle keeps its TLS session cache, so
 * each transfer turns it off (CURLOPT_SSL_SESSIONID_CACHE): no session is
 * resumed from another transfer, as when every transfer had a new handle.
 * Keep-alive connections are the multi handle's and are reused across
 * transfers whatever their easy handle; the caller caps how
 * many transfers run per provider, and CURLMOPT_MAX_HOST_CONNECTIONS caps
 * connections per host.  CURLOPT_NOSIGNAL keeps libcurl away from signals,
 * which belong to PostgreSQL here.
 *
 * Host names: one lookup of a host:port at a time (HttpLookup below).
 *
 * HTTP/2: requests to a carrier that speaks it go as streams of a few
 * connections, opened one at a time (HttpPeer below).
 *
 * Outbound hosts: every connection passes the rule of hostcheck.c and
 * shipsync.allowed_hosts on the address libcurl actually connects to, so a
 * name that resolves (or rebinds) to an internal address is caught.  The
 * socket is opened by us (CURLOPT_OPENSOCKETFUNCTION): a refused address
 * gets no socket, so not one packet goes there, and libcurl tries the
 * host's next address, if any.  A keep-alive connection opened under an
 * older value of the GUC is judged again before each request on it
 * (CURLOPT_PREREQFUNCTION).  Proxies from the environment are not used:
 * the address judged must be the carrier's.  Redirects are never followed.
 * A transfer refused this way is marked forbidden_host, which
 * http_classify() makes permanent.  The same rule applied to literal
 * addresses is shipsync._check_host(), called by create_provider().
 *
 * TLS: peer and host name verification always on, TLS 1.2 at least, and
 * per provider (its option tls, in HttpTls) a CA bundle that replaces the
 * system's, a client certificate and key, TLS 1.3 at least, and pinned
 * public keys.  shipsync._check_tls() checks those PEM texts when the
 * provider is created.  The system's CAs are parsed once and shared by the
 * connections of the client (http_use_system_cas()), not once for each.
 * libcurl 7.88 reuses a connection for another
 * transfer when the certificates, CA bundle, versions and pins match, but
 * does not compare private keys: that a certificate comes with its own key
 * is therefore checked there, so that two providers with one certificate
 * hold one key.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <iconv.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"

/*
 * One lookup of a host name at a time.  libcurl 7.88 starts a lookup for
 * every connection it opens to a name not in its DNS cache (entries live
 * 60 s), even while another connection's lookup of the same name is under
 * way: a burst after a quiet spell sent the system's resolver up to
 * max_inflight queries at once.  So the first transfer that starts a
 * lookup of host:port is its probe; any other that would start one
 * meanwhile is stopped before it does (its resolver-start callback says
 * no, before anything is sent), waits here, and starts again once the
 * probe's lookup is over: the probe opened a socket (the name is cached
 * now), or it ended before that, in which case the waiting transfers end
 * the same way, unsent.  Transfers that find the name cached, or that go
 * to an address, never wait.
 */
#define HTTP_MAX_LOOKUPS 16
#define HTTP_LOOKUP_KEY 272		/* a host name (253), ':', a port */

typedef struct HttpLookup
{
	bool		busy;			/* a lookup of key is under way */
	bool		over;			/* ... and it is over: release the waiting */
	bool		failed;			/* its probe ended before opening a socket */
	int			curl_code;		/* when failed: how the probe ended */
	char		errbuf[256];
	char		key[HTTP_LOOKUP_KEY];
	dlist_head	waiting;		/* transfers stopped before their own lookup */
} HttpLookup;

/*
 * HTTP/2 carriers get streams, not a connection per request.  libcurl
 * learns that a carrier multiplexes only once a connection to it is up, so
 * a burst that found no connection open started one connection and one
 * TLS handshake per request, up to max_inflight.  And libcurl 7.88 never
 * lets a transfer share a connection still being opened: once the
 * connections up were full (100 streams each, libcurl's own limit), each
 * further request of a burst opened one more.  CURLOPT_PIPEWAIT does not
 * cure either: it waits for a connection being opened only while libcurl
 * knows nothing of the host, and to a carrier without HTTP/2, libcurl then
 * lets the waiting transfers go one per finished transfer.
 *
 * So this client keeps, per HTTPS peer (host:port), what it speaks and,
 * when it is HTTP/2, how many streams each of its connections carries
 * (each connection known by its local port, read as a request on it is
 * about to go).  A transfer starts at once when the peer does not speak
 * HTTP/2, or when a connection of the peer has a stream free (with
 * PIPEWAIT, so that libcurl waits rather than open one).  Otherwise it
 * opens a connection, as the peer's opener -- for a peer not yet known,
 * its probe -- and later transfers wait, not started, until the opener's
 * handshake is over: then they fill the new connection's streams, or all
 * go at once if the server chose HTTP/1.1 (ALPN).  One connection is
 * opened at a time per peer: 1,000 orders at once to nginx went over 1
 * or 2 connections where they took 256.  What a peer speaks is read again from every
 * answer, so a carrier that changes is followed.  A server that allows
 * fewer than 100 streams on a connection gets the excess on connections
 * of their own, as before.  Plain http:// never negotiates HTTP/2 here
 * and is left alone.
 */
#define HTTP_MAX_PEERS 32
#define HTTP_PEER_CONNS 16
#define HTTP_STREAMS_PER_CONN 100	/* libcurl 7.88's own limit (the default
									 * of CURLMOPT_MAX_CONCURRENT_STREAMS) */

typedef enum HttpPeerProto
{
	PEER_UNKNOWN,				/* no answer yet */
	PEER_H1,					/* HTTP/1.1 over TLS */
	PEER_H2,
} HttpPeerProto;

/* The sockets a client opened, by number (http_socket_cb) */
typedef struct HttpSockets
{
	uint8	   *state;			/* SOCK_* bits, malloc'd */
	int			n;
} HttpSockets;

typedef struct HttpPeer
{
	HttpPeerProto proto;
	bool		opening;		/* a transfer of it is opening a connection */
	bool		wake;			/* see http_release_peers() */
	int			refs;			/* transfers of it not over: never replaced */
	int			unplaced;		/* started to share a connection: which, not known yet */
	int			nconns;
	long		conn_port[HTTP_PEER_CONNS]; /* connections with our streams */
	int			conn_streams[HTTP_PEER_CONNS];
	uint64		last_used;		/* the least recently used is replaced */
	char		key[HTTP_LOOKUP_KEY];	/* "" when the slot is free */
	dlist_head	waiting;		/* transfers not started, waiting for a connection */
} HttpPeer;

struct HttpClient
{
	MemoryContext cxt;
	CURLM	   *multi;
	int			inflight;
	int			peak;			/* most in flight since the pool was last emptied */
	long		max_connections;
	CURL	  **idle;			/* reset easy handles, max_connections slots */
	int			nidle;
	dlist_head	running;		/* transfers libcurl is working on */
	HttpTransfer *done_head;
	HttpTransfer *done_tail;

	int			epfd;			/* epoll set of the sockets libcurl watches */
	HttpSockets socks;			/* what is known of the sockets we opened */
	WaitEventSet *wes;			/* latch, postmaster death, epfd */

	long		timer_ms;		/* -1: no timeout pending */
	TimestampTz timer_set_at;

	HttpLookup	lookups[HTTP_MAX_LOOKUPS];
	bool		lookups_over;	/* some lookup is over: see http_release_lookups() */

	HttpPeer	peers[HTTP_MAX_PEERS];
	bool		peers_wake;		/* some peer may start waiting transfers */
	uint64		peer_clock;

	/* the process away from its sockets (HTTP_STALL_MS below) */
	TimestampTz left_at;		/* when the last http_wait() returned */
	TimestampTz stall_from;		/* the last long absence, or 0 */
	TimestampTz stall_to;
	int			stall_timeouts; /* transfers it timed out, not yet logged */
};

/*
 * A process that does not come back to http_wait() for this long (it
 * waited for a lock a DBA's LOCK TABLE, VACUUM FULL or CLUSTER held on one
 * of the extension's tables, or ran a slow statement) may leave answers
 * unread in its sockets.  libcurl checks a transfer's timeout before it
 * reads: an answer that came back in time is then a timeout.  A transfer
 * whose deadline passed during such an absence is marked stalled
 * (http_classify() says dispatcher_stalled, which the breaker does not
 * count) and the absence is logged once.
 */
#define HTTP_STALL_MS	1000

/*
 * Parked keep-alive connections.  libcurl says CURL_POLL_REMOVE for a
 * connection's socket after every answer, and CURL_POLL_IN for it again
 * when the next request on it is sent: deleting it from the epoll set and
 * adding it back were two of the five or six system calls of a request.
 * A socket this client opened (http_opensocket_cb) and libcurl no longer
 * watches stays in the set, for reading only, until libcurl watches it
 * again (nothing to do when it wants the same events) or closes it
 * (http_closesocket_cb; a closed socket leaves every epoll set by itself).
 * An idle connection turns readable only when its server closes it or
 * says something unasked: http_wait() then takes it out of the set, since
 * nobody would read it and it would stay readable, and leaves the
 * connection to libcurl, which checks a connection before it reuses one.
 * Sockets that libcurl opens itself (its resolver's) are added and deleted
 * as libcurl asks.
 */
#define SOCK_OURS		0x01	/* opened by http_opensocket_cb, not closed yet */
#define SOCK_IN			0x02	/* in the epoll set, for reading */
#define SOCK_OUT		0x04	/* in the epoll set, for writing */
#define SOCK_WATCHED	0x08	/* libcurl watches it */
#define SOCK_EVENTS		(SOCK_IN | SOCK_OUT)

/* The state of socket fd if this client opened it, else NULL */
static uint8 *
http_sock(HttpClient *c, curl_socket_t fd)
{
	if (fd < 0 || fd >= c->socks.n || !(c->socks.state[fd] & SOCK_OURS))
		return NULL;
	return &c->socks.state[fd];
}

/*
 * Note fd as opened by this client.  The table grows with the highest
 * socket number; malloc, not palloc, since libcurl calls us: a socket that
 * finds no room is treated as libcurl's own, added and deleted as asked.
 */
static void
http_sock_opened(HttpClient *c, curl_socket_t fd)
{
	if (fd < 0)
		return;
	if (fd >= c->socks.n)
	{
		int			n = Max(c->socks.n * 2, 256);
		uint8	   *state;

		while (n <= fd)
			n *= 2;
		state = realloc(c->socks.state, n);
		if (state == NULL)
			return;
		memset(state + c->socks.n, 0, n - c->socks.n);
		c->socks.state = state;
		c->socks.n = n;
	}
	c->socks.state[fd] = SOCK_OURS;
}

/* epoll_ctl() as libcurl's socket callback needs it; false: it failed */
static bool
http_epoll(HttpClient *c, int op, curl_socket_t fd, uint32 events)
{
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.events = events;
	ev.data.fd = fd;
	return epoll_ctl(c->epfd, op, fd, &ev) == 0;
}

static int
http_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	HttpClient *c = (HttpClient *) userp;
	bool		known = socketp != NULL;
	uint8	   *st = http_sock(c, fd);
	uint8		want = 0;
	uint32		events = 0;

	if (what == CURL_POLL_REMOVE)
	{
		if (st && (*st & SOCK_EVENTS) == SOCK_IN)
			*st &= ~SOCK_WATCHED;	/* parked */
		else if (st)
		{
			if (*st & SOCK_EVENTS)
				(void) epoll_ctl(c->epfd, EPOLL_CTL_DEL, fd, NULL);
			*st = SOCK_OURS;
		}
		else if (known)
			(void) epoll_ctl(c->epfd, EPOLL_CTL_DEL, fd, NULL);
		if (known)
			curl_multi_assign(c->multi, fd, NULL);
		return 0;
	}

	if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
	{
		want |= SOCK_IN;
		events |= EPOLLIN;
	}
	if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
	{
		want |= SOCK_OUT;
		events |= EPOLLOUT;
	}

	if (st)
	{
		/* in the set already (watched, or parked) with these events: nothing to do */
		if ((*st & SOCK_EVENTS) != want &&
			!http_epoll(c, (*st & SOCK_EVENTS) ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, events) &&
			!http_epoll(c, (*st & SOCK_EVENTS) ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, events))
			elog(LOG, "pg_shipsync: could not watch socket %d: %m", (int) fd);
		*st = SOCK_OURS | SOCK_WATCHED | want;
	}
	else if (!http_epoll(c, known ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, events) &&
			 /* libcurl may hand us back a socket it had removed: try the other */
			 !http_epoll(c, known ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, events))
		elog(LOG, "pg_shipsync: could not watch socket %d: %m", (int) fd);
	if (!known)
		curl_multi_assign(c->multi, fd, (void *) c);
	return 0;
}

/*
 * libcurl closes a socket that http_opensocket_cb opened: it leaves the
 * epoll set as it is closed, and its number may come back for another.
 */
static int
http_closesocket_cb(void *clientp, curl_socket_t fd)
{
	HttpClient *c = (HttpClient *) clientp;

	if (fd >= 0 && fd < c->socks.n)
		c->socks.state[fd] = 0;
	return close(fd);
}

static int
http_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	HttpClient *c = (HttpClient *) userp;

	c->timer_ms = timeout_ms;
	c->timer_set_at = GetCurrentTimestamp();
	return 0;
}

static size_t
http_write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	HttpTransfer *t = (HttpTransfer *) userp;
	size_t		n = size * nmemb;

	if ((size_t) t->response.len + n > (size_t) shipsync_max_response_bytes)
	{
		t->too_large = true;
		return 0;				/* makes libcurl fail with CURLE_WRITE_ERROR */
	}
	appendBinaryStringInfo(&t->response, data, (int) n);
	return n;
}

static size_t
http_header_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	HttpTransfer *t = (HttpTransfer *) userp;
	size_t		n = size * nmemb;
	char	  **target = NULL;
	size_t		skip = 0;

	if (n > 12 && pg_strncasecmp(data, "Retry-After:", 12) == 0)
	{
		target = &t->retry_after;
		skip = 12;
	}
	else if (n > 18 && pg_strncasecmp(data, "X-RateLimit-Reset:", 18) == 0)
	{
		target = &t->ratelimit_reset;
		skip = 18;
	}
	else if (n > 13 && pg_strncasecmp(data, "Content-Type:", 13) == 0)
	{
		target = &t->content_type;
		skip = 13;
	}
	else if (n > 17 && pg_strncasecmp(data, "Content-Encoding:", 17) == 0)
	{
		target = &t->content_encoding;
		skip = 17;
	}

	if (target)
	{
		size_t		len = n - skip;
		const char *v = data + skip;

		while (len > 0 && (*v == ' ' || *v == '\t'))
		{
			v++;
			len--;
		}
		while (len > 0 && (v[len - 1] == '\r' || v[len - 1] == '\n' ||
						   v[len - 1] == ' '))
			len--;
		if (len > 128)
			len = 128;
		if (*target)
			pfree(*target);
		*target = MemoryContextAlloc(GetMemoryChunkContext(t), len + 1);
		memcpy(*target, v, len);
		(*target)[len] = '\0';
	}
	return n;
}

/*
 * Has t its whole answer?  A final status, and as many bytes of body as
 * its Content-Length says: the bytes received (libcurl's download size;
 * nothing is decoded).  Without a Content-Length only the end of the stream says so,
 * and only libcurl saw it.  No PostgreSQL call: the progress callback
 * asks.
 */
static bool
http_answer_whole(HttpTransfer *t)
{
	long		status = 0;
	curl_off_t	length = -1;
	curl_off_t	received = -1;

	return curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK &&
		status >= 200 &&
		curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) == CURLE_OK &&
		curl_easy_getinfo(t->easy, CURLINFO_SIZE_DOWNLOAD_T, &received) == CURLE_OK &&
		length >= 0 && received == length;
}

/*
 * The content coding t's answer came in, when it names one (not identity)
 * though none was asked for: kept as it came, it is read as any answer
 * (a label set by mistake, "Content-Encoding: UTF-8" among them, is read
 * as the plain body it is), and t->coding names the coding for the
 * message if the body is refused.  pg_shipsync decodes none: libcurl's
 * decoding fails the whole transfer on a mislabelled body, and the
 * project takes no compression library of its own (docs/wire-contract.md).
 */
static void
http_note_coding(HttpTransfer *t)
{
	const char *v = t->content_encoding;

	if (t->curl_code != CURLE_OK || v == NULL || v[0] == '\0' ||
		pg_strcasecmp(v, "identity") == 0 || t->response.len == 0)
		return;
	strlcpy(t->coding, v, sizeof(t->coding));
}

/*
 * The charset t's Content-Type names (charset=GBK, charset="gb18030"),
 * into named (empty when none, or one too long to be a charset's name),
 * and the iconv name of the charsets an answer is read in when its bytes
 * are not UTF-8: the Chinese ones (GBK, GB2312 and their kin are read as
 * GB18030, their superset, as the WHATWG Encoding standard does; Big5 as
 * Big5-HKSCS) and Latin-1 (as windows-1252).  NULL for any other.
 */
static const char *
http_charset(const HttpTransfer *t, char *named, size_t namedlen)
{
	static const struct
	{
		const char *name;
		const char *iconv;
	}			known[] = {
		{"gbk", "GB18030"}, {"gb2312", "GB18030"}, {"gb18030", "GB18030"},
		{"cp936", "GB18030"}, {"x-gbk", "GB18030"}, {"euc-cn", "GB18030"},
		{"csgb2312", "GB18030"}, {"big5", "BIG5-HKSCS"},
		{"big5-hkscs", "BIG5-HKSCS"}, {"cn-big5", "BIG5-HKSCS"},
		{"iso-8859-1", "CP1252"}, {"latin1", "CP1252"},
		{"windows-1252", "CP1252"},
	};
	const char *p = t->content_type;
	size_t		n;

	named[0] = '\0';
	while (p && *p && pg_strncasecmp(p, "charset=", 8) != 0)
		p++;
	if (p == NULL || *p == '\0')
		return NULL;
	p += 8;
	if (*p == '"')
		p++;
	n = strcspn(p, "\"; \t");
	if (n == 0 || n >= namedlen)
		return NULL;
	memcpy(named, p, n);
	named[n] = '\0';
	for (int i = 0; i < (int) lengthof(known); i++)
		if (pg_strcasecmp(named, known[i].name) == 0)
			return known[i].iconv;
	return NULL;
}

/*
 * An answer whose bytes are not UTF-8, in a charset its Content-Type
 * names (a Chinese carrier's GBK), read as that charset and kept as UTF-8.
 * Kept as it came, every parser refused it as text that is not UTF-8, and
 * the shipment the carrier had made was lost.  Bytes that are UTF-8 stay
 * as they are whatever the label says (UTF-8 sent as "GBK" is a common
 * mistake).  Bytes that are not of the charset either, or of one not read
 * here, stay too, and t->charset names it for the refusal's message.
 * Conversion happens before any parser sees the bytes: a GBK character may
 * end in 0x5C, a backslash to a JSON parser.
 */
static void
http_decode_charset(HttpTransfer *t)
{
	char		named[sizeof(t->charset)];
	const char *from;
	iconv_t		cd;
	char	   *in = t->response.data;
	size_t		inleft = (size_t) t->response.len;
	char	   *out;
	char	   *op;
	size_t		outsize = 3 * inleft + 1;	/* GB18030, Big5, CP1252 */
	size_t		outleft = outsize;

	if (t->curl_code != CURLE_OK || t->response.len == 0)
		return;
	from = http_charset(t, named, sizeof(named));
	if (named[0] == '\0' || pg_strcasecmp(named, "utf-8") == 0 ||
		pg_strcasecmp(named, "utf8") == 0 ||
		shipsync_utf8_invalid_at(t->response.data, t->response.len) < 0)
		return;
	strlcpy(t->charset, named, sizeof(t->charset));
	if (from == NULL || (cd = iconv_open("UTF-8", from)) == (iconv_t) -1)
		return;
	out = op = MemoryContextAlloc(GetMemoryChunkContext(t->response.data), outsize);
	if (iconv(cd, &in, &inleft, &op, &outleft) == (size_t) -1 || inleft > 0)
		pfree(out);
	else if ((size_t) (op - out) > (size_t) shipsync_max_response_bytes)
	{
		pfree(out);
		t->too_large = true;
		t->curl_code = CURLE_WRITE_ERROR;
		snprintf(t->errbuf, sizeof(t->errbuf),
				 "the answer, read as %s, is larger than shipsync.max_response_bytes", named);
	}
	else
	{
		pfree(t->response.data);
		t->response.data = out;
		t->response.len = (int) (op - out);
		t->response.maxlen = (int) outsize;
		t->response.data[t->response.len] = '\0';
		t->charset[0] = '\0';
	}
	iconv_close(cd);
}

/*
 * A UTF-8 byte order mark before t's answer, dropped: RFC 8259 (8.1) lets
 * a reader ignore one, and the .NET and Java stacks of many carriers send
 * it.  Kept, it made every parser refuse the answer as not JSON, and a
 * create the carrier had made was sent again until max_attempts.
 */
static void
http_drop_bom(HttpTransfer *t)
{
	if (t->response.len >= 3 && memcmp(t->response.data, "\xEF\xBB\xBF", 3) == 0)
	{
		t->response.len -= 3;
		memmove(t->response.data, t->response.data + 3, t->response.len + 1);
	}
}

/*
 * libcurl calls this while a transfer works.  Abort it when this process is
 * asked to stop, so that a slow carrier never delays a shutdown.
 *
 * And end it when its answer is whole while our body is still being sent:
 * a carrier may answer without reading the rest (its edge's 201, a 429).
 * Over HTTP/2, libcurl 7.88 would go on sending into a stream window the
 * server never opens again, spinning on the writable socket until
 * timeout_ms, and the attempt, answered, would be judged a timeout and
 * sent again.  The counters come first: this runs on every pass of
 * libcurl over the transfer.
 */
static int
http_progress_cb(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
				 curl_off_t ultotal, curl_off_t ulnow)
{
	HttpTransfer *t = (HttpTransfer *) clientp;

	/*
	 * A shutdown ends the transfers; a cancel does not (it stops a
	 * statement, at the next CHECK_FOR_INTERRUPTS()): aborted, every
	 * request on the wire counted as the carrier's failure, opened its
	 * breaker and was sent again.
	 */
	if (ProcDiePending)
		return 1;
	if (ulnow >= (curl_off_t) t->body_len || dlnow < dltotal || !http_answer_whole(t))
		return 0;
	t->answered_early = true;
	return 1;
}

static void http_tls_handshake_done(HttpTransfer *t);
static void http_lookup_done(HttpTransfer *t);
static void http_peer_placed(HttpTransfer *t);

/* ---------- outbound hosts ---------- */

/*
 * The host of a URL as libcurl reads it (short IPv4 forms normalized, IPv6
 * in brackets), into buf, and its port (the scheme's by default) into
 * *port unless port is NULL; false if the URL cannot be read, or if its
 * host does not fit in buf: a host is judged whole or not at all, since
 * the first 255 characters of a longer name can end with a name of
 * shipsync.allowed_hosts while the whole name is another host's (one
 * ending in .localhost, which libcurl resolves to loopback itself).  No
 * PostgreSQL call: libcurl's callbacks use it.
 */
static bool
http_url_host(const char *url, char *buf, size_t len, long *port)
{
	CURLU	   *u = curl_url();
	char	   *host = NULL;
	char	   *portstr = NULL;
	bool		ok;

	if (u == NULL)
		return false;
	ok = curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
		(port == NULL ||
		 curl_url_get(u, CURLUPART_PORT, &portstr, CURLU_DEFAULT_PORT) == CURLUE_OK);
	if (ok)
		ok = strlen(host) < len;
	if (ok)
	{
		strlcpy(buf, host, len);
		if (port)
			*port = strtol(portstr, NULL, 10);
	}
	curl_free(host);
	curl_free(portstr);
	curl_url_cleanup(u);
	return ok;
}

/*
 * May a connection for URL host host (NULL: read it from url when needed)
 * go to address a?  Public addresses may; internal ones when the allowlist
 * covers the address or names the host.
 */
static bool
http_host_allowed(const char *url, const char *host, const ShipAddr *a,
				  ShipAddrKind *kind)
{
	char		buf[256];

	*kind = shipsync_addr_kind(a);
	if (*kind == ADDR_PUBLIC || shipsync_allowlist_covers(shipsync_allowlist, a))
		return true;
	if (!shipsync_allowlist_has_names(shipsync_allowlist))
		return false;
	if (host == NULL)
	{
		if (!http_url_host(url, buf, sizeof(buf), NULL))
			return false;
		host = buf;
	}
	return shipsync_allowlist_names(shipsync_allowlist, host);
}

/* Judge address a for transfer t, remembering a refusal for the message. */
static bool
http_address_allowed(HttpTransfer *t, const ShipAddr *a)
{
	ShipAddrKind kind;

	if (http_host_allowed(t->url, NULL, a, &kind))
		return true;
	t->refused_kind = kind;
	shipsync_addr_format(a, t->refused_addr, sizeof(t->refused_addr));
	return false;
}

/*
 * libcurl is about to connect to an address of the host: open the socket
 * only if the address is allowed.  CURL_SOCKET_BAD makes libcurl try the
 * host's next address, or fail with CURLE_COULDNT_CONNECT.
 */
static curl_socket_t
http_opensocket_cb(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	HttpTransfer *t = (HttpTransfer *) clientp;
	ShipAddr	a;
	curl_socket_t fd;

	http_lookup_done(t);
	if (purpose != CURLSOCKTYPE_IPCXN || !shipsync_addr_from_sockaddr(&address->addr, &a))
	{
		strlcpy(t->refused_addr, "a non-IP address", sizeof(t->refused_addr));
		t->refused_kind = ADDR_RESERVED;
		return CURL_SOCKET_BAD;
	}
	if (!http_address_allowed(t, &a))
		return CURL_SOCKET_BAD;
	t->allowed_tried = true;
	fd = socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
	http_sock_opened(t->client, fd);
	return fd;
}

/*
 * Before each request, on a new or a reused connection: judge its address
 * again (a keep-alive connection may predate a reload of the allowlist).
 *
 * And never let libcurl send a request a second time by itself.  When a
 * reused keep-alive connection dies after the request went out, with no
 * byte of answer, libcurl 7.88 sends the same request again on a new
 * connection ("Connection died, retrying a fresh connect"), and the failed
 * attempt never reaches us: the carrier may have seen two requests where
 * the delivery log shows one.  That second request comes through here
 * again; once a byte of the first was sent, it is stopped, and the attempt
 * ends as a lost connection, in doubt, retried by the dispatcher under
 * the same key and logged (http_collect()).
 */
static int
http_prereq_cb(void *clientp, char *primary_ip, char *local_ip,
			   int primary_port, int local_port)
{
	HttpTransfer *t = (HttpTransfer *) clientp;
	ShipAddr	a;

	http_tls_handshake_done(t);
	http_peer_placed(t);
	if (t->prereq_seen)
	{
		long		sent = 0;

		curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &sent);
		if (sent > 0)
		{
			t->resend_refused = true;
			return CURL_PREREQFUNC_ABORT;
		}
	}
	t->prereq_seen = true;
	if (primary_ip == NULL || !shipsync_addr_parse(primary_ip, &a))
	{
		strlcpy(t->refused_addr, primary_ip ? primary_ip : "an unknown address",
				sizeof(t->refused_addr));
		t->refused_kind = ADDR_RESERVED;
		return CURL_PREREQFUNC_ABORT;
	}
	return http_address_allowed(t, &a) ? CURL_PREREQFUNC_OK : CURL_PREREQFUNC_ABORT;
}

/*
 * host:port of url, as libcurl keys its DNS cache and its connections,
 * into buf; false if the URL cannot be read, or, with names_only, if its
 * host is an address (nothing to look up).  No PostgreSQL call.
 */
static bool
http_url_key(const char *url, char *buf, size_t len, bool names_only)
{
	char		host[HTTP_LOOKUP_KEY];
	long		port;
	ShipAddr	a;

	if (!http_url_host(url, host, sizeof(host), &port) ||
		(names_only && (host[0] == '[' || shipsync_addr_parse(host, &a))))
		return false;
	return snprintf(buf, len, "%s:%ld", host, port) < (int) len;
}

/*
 * libcurl is about to look up t's host (it is not in its DNS cache): go
 * ahead if no lookup of it is under way, as its probe; else stop t before
 * it starts one (non-zero: libcurl ends t with a resolving error, which
 * http_collect() knows from lookup_wait) until that lookup is over.
 */
static int
http_resolver_start_cb(void *resolver_state, void *reserved, void *userdata)
{
	HttpTransfer *t = (HttpTransfer *) userdata;
	HttpClient *c = t->client;
	char		key[HTTP_LOOKUP_KEY];
	int			free_slot = -1;

	if (!http_url_key(t->url, key, sizeof(key), true))
		return 0;
	for (int i = 0; i < HTTP_MAX_LOOKUPS; i++)
	{
		HttpLookup *l = &c->lookups[i];

		if (!l->busy)
		{
			if (free_slot < 0)
				free_slot = i;
			continue;
		}
		if (t->lookup_probe != i && strcmp(l->key, key) == 0)
		{
			t->lookup_wait = i;
			return 1;
		}
	}
	if (free_slot < 0)
		return 0;				/* too many names at once: look it up */
	c->lookups[free_slot].busy = true;
	c->lookups[free_slot].over = false;
	c->lookups[free_slot].failed = false;
	strlcpy(c->lookups[free_slot].key, key, HTTP_LOOKUP_KEY);
	dlist_init(&c->lookups[free_slot].waiting);
	t->lookup_probe = free_slot;
	return 0;
}

/* t's lookup, if it was a probe, is over: the name is resolved, or t ended. */
static void
http_lookup_done(HttpTransfer *t)
{
	HttpLookup *l;

	if (t->lookup_probe < 0)
		return;
	l = &t->client->lookups[t->lookup_probe];
	t->lookup_probe = -1;
	l->over = true;
	t->client->lookups_over = true;
}

/*
 * A transfer failed after an address was refused and no allowed one was
 * tried (or the refusal aborted it): say so in its error, for last_error.
 */
static void
http_note_forbidden(HttpTransfer *t)
{
	char		host[256];

	if (t->curl_code == CURLE_OK || t->refused_addr[0] == '\0' ||
		(t->allowed_tried && t->curl_code != CURLE_ABORTED_BY_CALLBACK))
		return;
	t->forbidden_host = true;
	if (!http_url_host(t->url, host, sizeof(host), NULL))
		snprintf(t->errbuf, sizeof(t->errbuf),
				 "refused to connect to %s (%s): the URL's host name is longer than %d characters, so shipsync.allowed_hosts cannot allow it",
				 t->refused_addr, shipsync_addr_kind_name(t->refused_kind), (int) sizeof(host) - 1);
	else
		snprintf(t->errbuf, sizeof(t->errbuf),
				 "refused to connect to %s (%s) for host \"%s\": not allowed by shipsync.allowed_hosts",
				 t->refused_addr, shipsync_addr_kind_name(t->refused_kind), host);
}

/* ---------- TLS ---------- */

/* Where a connection's SSL_CTX points to the transfer doing its handshake */
static int http_ctx_index = -1;

/*
 * OpenSSL asks for a client certificate the provider does not have (it is
 * called only then): note it on the transfer doing the handshake, and send
 * none.  Under TLS 1.3 the server refuses after the client's handshake has
 * ended, and its alert can be lost to a connection reset (the server
 * closes with our request unread): this note then says what happened.
 */
static int
http_client_cert_cb(SSL *ssl, X509 **x509, EVP_PKEY **pkey)
{
	HttpTransfer *t = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), http_ctx_index);

	if (t)
		t->cert_requested = true;
	return 0;
}

/*
 * libcurl made a connection's SSL_CTX (one per connection in 7.88): point
 * it to the transfer for http_client_cert_cb().  http_prereq_cb() clears
 * the pointer once the handshake is over, before the transfer can end.
 */
static CURLcode
http_ssl_ctx_cb(CURL *easy, void *ssl_ctx, void *clientp)
{
	SSL_CTX_set_ex_data((SSL_CTX *) ssl_ctx, http_ctx_index, clientp);
	SSL_CTX_set_client_cert_cb((SSL_CTX *) ssl_ctx, http_client_cert_cb);
	return CURLE_OK;
}

/* The handshake of t's connection is over: no callback may reach t now. */
static void
http_tls_handshake_done(HttpTransfer *t)
{
	struct curl_tlssessioninfo *info = NULL;

	if (curl_easy_getinfo(t->easy, CURLINFO_TLS_SSL_PTR, &info) == CURLE_OK &&
		info && info->backend == CURLSSLBACKEND_OPENSSL && info->internals)
		SSL_CTX_set_ex_data(SSL_get_SSL_CTX((SSL *) info->internals), http_ctx_index, NULL);
}

/*
 * Did the server refuse the TLS session?  By an alert (shipsync_tls_alert),
 * or by closing the connection before answering after it asked for a
 * client certificate the provider does not have.  Says so in the error.
 */
static void
http_note_tls_refused(HttpTransfer *t)
{
	char		was[sizeof(t->errbuf)];

	if (shipsync_tls_alert(t->curl_code, t->errbuf))
	{
		t->tls_refused = true;
		return;
	}
	/* the connection failed before any answer: a send or read failure,
	 * a reset, a closed socket; not our timeout, size cap or shutdown, and
	 * not our own refusal of the server (its certificate or pinned key),
	 * which says what it is by itself */
	if (!t->cert_requested || t->http_status != 0 || t->curl_code == CURLE_OK ||
		t->curl_code == CURLE_OPERATION_TIMEDOUT || t->curl_code == CURLE_WRITE_ERROR ||
		t->curl_code == CURLE_ABORTED_BY_CALLBACK ||
		t->curl_code == CURLE_PEER_FAILED_VERIFICATION ||
		t->curl_code == CURLE_SSL_PINNEDPUBKEYNOTMATCH)
		return;
	t->tls_refused = true;
	strlcpy(was, t->errbuf, sizeof(was));
	snprintf(t->errbuf, sizeof(t->errbuf),
			 "the server asked for a client certificate, which the provider does not have (option tls): %s",
			 was);
}

/*
 * How long libcurl keeps the system's CA store it parsed: a CA added to or
 * removed from the system's bundle is seen by new connections within this
 * many seconds (and at once by a new dispatcher).
 */
#define HTTP_CA_CACHE_SECONDS 3600L

/*
 * A transfer trusting the system's CAs (no ca_bundle): libcurl's default CA
 * file only.  libcurl as Debian builds it has a default CA file (the
 * bundle) and a default CA directory; with both set it parses the whole
 * bundle into a new store for every connection -- 140-odd certificates,
 * about 30 ms of CPU and 0.8 MB held for the life of the connection -- and
 * never uses the store it can share among the connections of one multi
 * handle, which it keeps only for a CA file alone.  The directory holds
 * the same certificates as the bundle (update-ca-certificates writes
 * both).  Where libcurl was built with a directory and no file, the
 * directory stays: it is read lazily, a certificate at a time.
 */
static CURLcode
http_use_system_cas(CURL *easy)
{
	static int	has_cafile = -1;
	CURLcode	rc;

	if (has_cafile < 0)
	{
		const curl_version_info_data *vi = curl_version_info(CURLVERSION_NOW);

		has_cafile = vi->cainfo != NULL && vi->cainfo[0] != '\0';
	}
	if (!has_cafile)
		return CURLE_OK;
	rc = curl_easy_setopt(easy, CURLOPT_CAPATH, NULL);
#if LIBCURL_VERSION_NUM >= 0x075700
	if (rc == CURLE_OK)
		rc = curl_easy_setopt(easy, CURLOPT_CA_CACHE_TIMEOUT, HTTP_CA_CACHE_SECONDS);
#endif
	return rc;
}

/*
 * Apply a provider's TLS options to a transfer.  Returns CURLE_OK, or the
 * code of an option this libcurl does not support.
 */
static CURLcode
http_apply_tls(CURL *easy, HttpTransfer *t)
{
	const HttpTls *tls = t->tls;
	CURLcode	rc;

	if (tls == NULL || !tls->client_cert)
	{
		/* without a certificate of ours: learn when one is asked for */
		rc = curl_easy_setopt(easy, CURLOPT_SSL_CTX_FUNCTION, http_ssl_ctx_cb);
		if (rc == CURLE_OK)
			rc = curl_easy_setopt(easy, CURLOPT_SSL_CTX_DATA, t);
		if (rc != CURLE_OK)
			return rc;
	}
	if (tls == NULL || tls->ca_bundle == NULL)
	{
		rc = http_use_system_cas(easy);
		if (rc != CURLE_OK)
			return rc;
	}
	if (tls == NULL)
		return curl_easy_setopt(easy, CURLOPT_SSLVERSION, (long) CURL_SSLVERSION_TLSv1_2);
	rc = curl_easy_setopt(easy, CURLOPT_SSLVERSION, (long) (tls->tls13 ? CURL_SSLVERSION_TLSv1_3 :
															CURL_SSLVERSION_TLSv1_2));
	if (rc == CURLE_OK && tls->ca_bundle)
	{
		struct curl_blob blob = {tls->ca_bundle, strlen(tls->ca_bundle), CURL_BLOB_COPY};

		/* the provider's CAs only: the system's bundle is not read */
		rc = curl_easy_setopt(easy, CURLOPT_CAINFO_BLOB, &blob);
		if (rc == CURLE_OK)
			rc = curl_easy_setopt(easy, CURLOPT_CAINFO, NULL);
		if (rc == CURLE_OK)
			rc = curl_easy_setopt(easy, CURLOPT_CAPATH, NULL);
	}
	if (rc == CURLE_OK && tls->client_cert && tls->client_key)
	{
		struct curl_blob cert = {tls->client_cert, strlen(tls->client_cert), CURL_BLOB_COPY};
		struct curl_blob key = {tls->client_key, strlen(tls->client_key), CURL_BLOB_COPY};

		rc = curl_easy_setopt(easy, CURLOPT_SSLCERT_BLOB, &cert);
		if (rc == CURLE_OK)
			rc = curl_easy_setopt(easy, CURLOPT_SSLCERTTYPE, "PEM");
		if (rc == CURLE_OK)
			rc = curl_easy_setopt(easy, CURLOPT_SSLKEY_BLOB, &key);
		if (rc == CURLE_OK)
			rc = curl_easy_setopt(easy, CURLOPT_SSLKEYTYPE, "PEM");
	}
	if (rc == CURLE_OK && tls->pinned_public_key)
		rc = curl_easy_setopt(easy, CURLOPT_PINNEDPUBLICKEY, tls->pinned_public_key);
	return rc;
}

/* ---------- HTTP/2 peers ---------- */

/*
 * The slot of peer key: its own, else a free one, else the least recently
 * used of those no transfer refers to; -1 if every slot is in use (the
 * transfer then goes as if the peer were not known).
 */
static int
http_peer_slot(HttpClient *c, const char *key)
{
	int			pick = -1;

	for (int i = 0; i < HTTP_MAX_PEERS; i++)
	{
		HttpPeer   *p = &c->peers[i];

		if (p->key[0] != '\0' && strcmp(p->key, key) == 0)
			return i;
		if (p->refs > 0)
			continue;
		if (pick < 0 || (c->peers[pick].key[0] != '\0' &&
						 (p->key[0] == '\0' || p->last_used < c->peers[pick].last_used)))
			pick = i;
	}
	if (pick >= 0)
	{
		HttpPeer   *p = &c->peers[pick];

		memset(p, 0, sizeof(HttpPeer));
		strlcpy(p->key, key, HTTP_LOOKUP_KEY);
		dlist_init(&p->waiting);
	}
	return pick;
}

/* Streams free on the connections of p that carry ours */
static int
http_peer_free(const HttpPeer *p)
{
	int			n = -p->unplaced;

	for (int i = 0; i < p->nconns; i++)
		n += HTTP_STREAMS_PER_CONN - p->conn_streams[i];
	return n;
}

/*
 * May t start now?  Yes to a peer without HTTP/2; to one with a stream free
 * (PIPEWAIT on its handle); or as the opener of a connection, when none is
 * being opened.  No: it waits for the opener's handshake.
 */
static bool
http_peer_admit(HttpPeer *p, HttpTransfer *t)
{
	if (p->proto == PEER_H1)
		return true;
	if (p->proto == PEER_H2 && http_peer_free(p) > 0)
	{
		curl_easy_setopt(t->easy, CURLOPT_PIPEWAIT, 1L);
		p->unplaced++;
		t->peer_unplaced = true;
		return true;
	}
	if (p->opening)
		return false;
	p->opening = true;
	t->peer_opener = true;
	return true;
}

/*
 * Route t (on t->easy, every other option set) through its peer, if it
 * goes to one; true when it must wait, not started.
 */
static bool
http_peer_route(HttpClient *c, HttpTransfer *t)
{
	char		key[HTTP_LOOKUP_KEY];
	HttpPeer   *p;

	/* HTTPS only: plain http:// never negotiates HTTP/2 here */
	if (pg_strncasecmp(t->url, "https://", 8) != 0 ||
		!http_url_key(t->url, key, sizeof(key), false) ||
		(t->peer = http_peer_slot(c, key)) < 0)
		return false;
	p = &c->peers[t->peer];
	p->refs++;
	p->last_used = ++c->peer_clock;
	if (http_peer_admit(p, t))
		return false;
	dlist_push_tail(&p->waiting, &t->node);
	return true;
}

static void
http_peer_wake(HttpTransfer *t)
{
	t->client->peers[t->peer].wake = true;
	t->client->peers_wake = true;
}

/*
 * What the server of t's connection chose (ALPN), now that its handshake
 * is over; PEER_UNKNOWN if that cannot be read (a TLS library other than
 * OpenSSL).  No PostgreSQL call.
 */
static HttpPeerProto
http_alpn(HttpTransfer *t)
{
	struct curl_tlssessioninfo *info = NULL;
	const unsigned char *alpn = NULL;
	unsigned int len = 0;

	if (curl_easy_getinfo(t->easy, CURLINFO_TLS_SSL_PTR, &info) != CURLE_OK ||
		info == NULL || info->backend != CURLSSLBACKEND_OPENSSL || info->internals == NULL)
		return PEER_UNKNOWN;
	SSL_get0_alpn_selected((SSL *) info->internals, &alpn, &len);
	return len == 2 && memcmp(alpn, "h2", 2) == 0 ? PEER_H2 : PEER_H1;
}

/*
 * t no longer opens a connection, nor waits to be placed on one: an
 * opener's peer speaks proto from now on, and its waiting transfers may
 * go.  No PostgreSQL call.
 */
static void
http_peer_settle(HttpPeer *p, HttpTransfer *t, HttpPeerProto proto)
{
	if (t->peer_opener)
	{
		p->proto = proto;
		p->opening = false;
		t->peer_opener = false;
		http_peer_wake(t);
	}
	if (t->peer_unplaced)
	{
		p->unplaced--;
		t->peer_unplaced = false;
	}
}

/*
 * t's request is about to go on a connection that is up (its handshake
 * over): an opener tells what the peer speaks, and the stream is counted
 * on its connection.  No PostgreSQL call (libcurl's callback).
 */
static void
http_peer_placed(HttpTransfer *t)
{
	HttpPeer   *p;
	long		port = 0;
	int			i;

	if (t->peer < 0 || t->peer_port != 0)
		return;
	p = &t->client->peers[t->peer];
	if (t->peer_opener)
	{
		HttpPeerProto proto = http_alpn(t);

		http_peer_settle(p, t, proto != PEER_UNKNOWN ? proto :
						 p->proto == PEER_H2 ? PEER_H2 : PEER_H1);
	}
	else
		http_peer_settle(p, t, p->proto);
	if (p->proto != PEER_H2 ||
		curl_easy_getinfo(t->easy, CURLINFO_LOCAL_PORT, &port) != CURLE_OK || port <= 0)
		return;
	for (i = 0; i < p->nconns && p->conn_port[i] != port; i++)
		;
	if (i == p->nconns)
	{
		if (i == HTTP_PEER_CONNS)
			return;				/* not counted: its streams look free */
		p->conn_port[i] = port;
		p->conn_streams[i] = 0;
		p->nconns++;
	}
	p->conn_streams[i]++;
	t->peer_port = port;
}

/* t's answer came over proto: what its peer speaks now */
static void
http_peer_learn(HttpTransfer *t, HttpPeerProto proto)
{
	if (t->peer >= 0)
		t->client->peers[t->peer].proto = proto;
}

/*
 * t is over (or will not start): its stream, or its place as the opener,
 * is free for the transfers waiting; the peer may be replaced once no
 * transfer refers to it.  An opener that ended before its handshake leaves
 * a peer not known as not speaking HTTP/2 (a carrier that fails does not
 * hold every burst behind one transfer); its answers will tell.
 */
static void
http_peer_release(HttpTransfer *t)
{
	HttpPeer   *p;

	if (t->peer < 0)
		return;
	p = &t->client->peers[t->peer];
	http_peer_settle(p, t, p->proto == PEER_UNKNOWN ? PEER_H1 : p->proto);
	if (t->peer_port != 0)
	{
		for (int i = 0; i < p->nconns; i++)
		{
			if (p->conn_port[i] != t->peer_port)
				continue;
			if (--p->conn_streams[i] == 0)
			{
				/* idle: libcurl may close it; counted again when used */
				p->nconns--;
				p->conn_port[i] = p->conn_port[p->nconns];
				p->conn_streams[i] = p->conn_streams[p->nconns];
			}
			break;
		}
		t->peer_port = 0;
	}
	http_peer_wake(t);
	p->refs--;
	t->peer = -1;
}

/* Put a finished (or failed to start) transfer on the done list. */
static void
http_queue_done(HttpClient *c, HttpTransfer *t)
{
	t->next = NULL;
	if (c->done_tail)
		c->done_tail->next = t;
	else
		c->done_head = t;
	c->done_tail = t;
}

/*
 * An easy handle for a new transfer: one of the pool, else a new one (NULL
 * if libcurl cannot make one).  Every handle in the pool has been reset.
 */
static CURL *
http_easy_get(HttpClient *c)
{
	if (c->nidle > 0)
		return c->idle[--c->nidle];
	return curl_easy_init();
}

/*
 * A transfer is over with easy (out of the multi handle): reset it, so that
 * no option of that transfer survives (the body, the headers, a provider's
 * CA, client certificate and key, its pins, pointers to the transfer), and
 * keep it for the next transfer, unless the pool holds as many handles as
 * were ever in flight at once (or max_connections).
 */
static void
http_easy_put(HttpClient *c, CURL *easy)
{
	if (c->nidle >= Min(c->peak, c->max_connections))
	{
		curl_easy_cleanup(easy);
		return;
	}
	curl_easy_reset(easy);
	c->idle[c->nidle++] = easy;
}

/*
 * Free the pooled easy handles (the caller is idle after a burst: each
 * holds some 80 kB of libcurl's buffers).  Returns whether there were any.
 * The connection cache is the multi handle's and stays.
 */
bool
http_release_idle(HttpClient *c)
{
	bool		any = c->nidle > 0;

	while (c->nidle > 0)
		curl_easy_cleanup(c->idle[--c->nidle]);
	c->peak = c->inflight;
	return any;
}

HttpClient *
http_client_create(MemoryContext cxt, long max_connections)
{
	HttpClient *c = MemoryContextAllocZero(cxt, sizeof(HttpClient));

	c->cxt = cxt;
	c->timer_ms = -1;
	c->max_connections = max_connections;
	c->idle = MemoryContextAlloc(cxt, sizeof(CURL *) * max_connections);
	dlist_init(&c->running);
	c->multi = curl_multi_init();
	if (c->multi == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl multi handle")));
	if (!AcquireExternalFD())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("could not reserve a file descriptor for the transfer poll set")));
	c->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (c->epfd < 0)
	{
		ReleaseExternalFD();
		ereport(ERROR,
				(errcode_for_socket_access(),
				 errmsg("could not create an epoll set: %m")));
	}
	if (http_ctx_index < 0)
		http_ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	c->wes = CreateWaitEventSet(cxt, 3);
	AddWaitEventToSet(c->wes, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(c->wes, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(c->wes, WL_SOCKET_READABLE, c->epfd, NULL, NULL);
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, http_socket_cb);
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, http_timer_cb);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
	curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, max_connections);
	curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_connections);
	curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, (long) CURLPIPE_MULTIPLEX);
	return c;
}

/*
 * Every option of transfer t but its TLS, on easy, every time: the handle
 * may have served another provider.
 */
static void
http_easy_options(CURL *easy, HttpTransfer *t)
{
	curl_easy_setopt(easy, CURLOPT_URL, t->url);
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, t);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, t->errbuf);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, t->timeout_ms);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
					 t->timeout_ms < 10000 ? t->timeout_ms : 10000L);
	curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(easy, CURLOPT_PROXY, "");
	curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, http_opensocket_cb);
	curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, t);
	curl_easy_setopt(easy, CURLOPT_CLOSESOCKETFUNCTION, http_closesocket_cb);
	curl_easy_setopt(easy, CURLOPT_CLOSESOCKETDATA, t->client);
	curl_easy_setopt(easy, CURLOPT_PREREQFUNCTION, http_prereq_cb);
	curl_easy_setopt(easy, CURLOPT_PREREQDATA, t);
	curl_easy_setopt(easy, CURLOPT_RESOLVER_START_FUNCTION, http_resolver_start_cb);
	curl_easy_setopt(easy, CURLOPT_RESOLVER_START_DATA, t);
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "pg_shipsync/" SHIPSYNC_EXTVERSION);
	/*
	 * No content coding is asked for ("Accept-Encoding: identity": with no
	 * Accept-Encoding at all a server may choose any), and libcurl decodes
	 * none: an answer compressed all the same is refused, naming its coding
	 * (http_note_coding()), and a body labelled with a coding it is not in
	 * is read as it came (libcurl would fail the transfer).
	 */
	curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "identity");
	curl_easy_setopt(easy, CURLOPT_HTTP_CONTENT_DECODING, 0L);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, t->headers);
	curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, t->method);
	/*
	 * The body from our memory, not copied, not through a read callback:
	 * libcurl then sends a body under 64 kB with the headers, one write and
	 * one segment instead of two.  A body lives until its transfer is done.
	 */
	if (t->body)
	{
		t->body_len = strlen(t->body);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) t->body_len);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDS, t->body);
	}
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, http_write_cb);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, http_header_cb);
	curl_easy_setopt(easy, CURLOPT_HEADERDATA, t);
	curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, http_progress_cb);
	curl_easy_setopt(easy, CURLOPT_XFERINFODATA, t);
	curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
	/* a reset keeps a handle's TLS sessions: resume none from another transfer */
	curl_easy_setopt(easy, CURLOPT_SSL_SESSIONID_CACHE, 0L);
}

/*
 * Start one transfer.  The caller allocated t (zeroed) in a context that
 * lives until the transfer comes back from http_take_done(), and filled in
 * the request fields; t->headers passes to us.
 */
void
http_submit(HttpClient *c, HttpTransfer *t)
{
	CURL	   *easy;
	CURLMcode	mrc;
	CURLcode	rc;

	initStringInfo(&t->response);
	t->errbuf[0] = '\0';
	t->refused_addr[0] = '\0';
	t->allowed_tried = false;
	t->prereq_seen = false;
	t->resend_refused = false;
	t->forbidden_host = false;
	t->tls_refused = false;
	t->cert_requested = false;
	t->answered_early = false;
	t->client = c;
	t->lookup_probe = -1;
	t->lookup_wait = -1;
	t->peer = -1;
	t->peer_opener = false;
	t->peer_unplaced = false;
	t->peer_port = 0;
	t->started = GetCurrentTimestamp();

	easy = http_easy_get(c);
	if (easy == NULL)
	{
		/* a resource failure is a retryable attempt, never a lost order */
		t->curl_code = CURLE_OUT_OF_MEMORY;
		strlcpy(t->errbuf, "could not create a libcurl handle", sizeof(t->errbuf));
		curl_slist_free_all(t->headers);
		t->headers = NULL;
		http_queue_done(c, t);
		return;
	}
	t->easy = easy;

	http_easy_options(easy, t);
	rc = http_apply_tls(easy, t);
	if (rc == CURLE_OK && http_peer_route(c, t))
	{
		/* waits for its peer's probe, counted in flight */
		c->inflight++;
		c->peak = Max(c->peak, c->inflight);
		return;
	}
	mrc = rc == CURLE_OK ? curl_multi_add_handle(c->multi, easy) : CURLM_OK;
	if (rc != CURLE_OK || mrc != CURLM_OK)
	{
		http_peer_release(t);
		http_easy_put(c, easy);
		t->easy = NULL;
		t->curl_code = rc != CURLE_OK ? rc : CURLE_FAILED_INIT;
		snprintf(t->errbuf, sizeof(t->errbuf), "%s%s",
				 rc != CURLE_OK ? "the provider's tls option cannot be applied: " : "",
				 rc != CURLE_OK ? curl_easy_strerror(rc) : curl_multi_strerror(mrc));
		curl_slist_free_all(t->headers);
		t->headers = NULL;
		http_queue_done(c, t);
		return;
	}
	dlist_push_tail(&c->running, &t->node);
	c->inflight++;
	c->peak = Max(c->peak, c->inflight);
}

int
http_inflight(HttpClient *c)
{
	return c->inflight;
}

/*
 * libcurl 7.88 fails with CURLE_OUT_OF_MEMORY when a header line of the
 * answer is longer than it takes (CURL_MAX_HTTP_HEADER, 100 kB), which is
 * the carrier's doing, not this server's: once the answer's first bytes
 * have come, that failure is an unreadable answer (class transport, which
 * the breaker counts), and says so.  Before them it stays a resource
 * failure of ours.
 */
static void
http_note_unreadable_header(HttpTransfer *t, CURL *easy)
{
	curl_off_t	first_byte = 0;

	curl_easy_getinfo(easy, CURLINFO_STARTTRANSFER_TIME_T, &first_byte);
	if (first_byte <= 0)
		return;
	t->curl_code = CURLE_WEIRD_SERVER_REPLY;
	strlcpy(t->errbuf, "the answer's header could not be read: a header line is longer "
			"than the 100 kB libcurl takes", sizeof(t->errbuf));
}

/*
 * Transfer t, out of the multi handle, is over: its handle back to the
 * pool, its header list freed, and onto the done list.
 */
static void
http_transfer_over(HttpClient *c, HttpTransfer *t)
{
	t->latency_ms = (double) (GetCurrentTimestamp() - t->started) / 1000.0;
	http_peer_release(t);
	http_easy_put(c, t->easy);
	t->easy = NULL;
	curl_slist_free_all(t->headers);
	t->headers = NULL;
	c->inflight--;
	http_queue_done(c, t);
}

/* Free what an abandoned transfer holds (http_client_destroy()). */
static void
http_abandon(HttpTransfer *t)
{
	curl_easy_cleanup(t->easy);
	t->easy = NULL;
	curl_slist_free_all(t->headers);
	t->headers = NULL;
}

/* Note how long the caller was away from http_wait() (HTTP_STALL_MS) */
static void
http_note_absence(HttpClient *c)
{
	TimestampTz now = GetCurrentTimestamp();

	if (c->left_at != 0 && now - c->left_at >= (TimestampTz) HTTP_STALL_MS * 1000)
	{
		c->stall_from = c->left_at;
		c->stall_to = now;
	}
}

/*
 * Did transfer t, timed out, reach its deadline (connecting or whole)
 * while the process was away from its sockets?  Its answer may be unread.
 */
static bool
http_timed_out_away(HttpClient *c, const HttpTransfer *t)
{
	long		connect_ms = t->timeout_ms < 10000 ? t->timeout_ms : 10000L;
	TimestampTz whole = TimestampTzPlusMilliseconds(t->started, t->timeout_ms);
	TimestampTz connect = TimestampTzPlusMilliseconds(t->started, connect_ms);

	if (t->curl_code != CURLE_OPERATION_TIMEDOUT || c->stall_from == 0)
		return false;
	return (whole >= c->stall_from && whole <= c->stall_to) ||
		(connect >= c->stall_from && connect <= c->stall_to);
}

/* Log once the transfers an absence of the process timed out */
static void
http_log_absence(HttpClient *c)
{
	if (c->stall_timeouts == 0)
		return;
	ereport(LOG,
			(errmsg("%s did not read the network for %ld ms (it waited for the database: a lock another session held on one of the extension's tables, or a slow statement); %d requests in flight timed out meanwhile and are tried again",
					MyBgworkerEntry ? MyBgworkerEntry->bgw_type : "pg_shipsync",
					(long) ((c->stall_to - c->stall_from) / 1000), c->stall_timeouts),
			 errhint("Look for what held the lock in pg_stat_activity, or set log_lock_waits = on.")));
	c->stall_timeouts = 0;
}

/* Move finished transfers from libcurl to our done list. */
static void
http_collect(HttpClient *c)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(c->multi, &left)) != NULL)
	{
		HttpTransfer *t = NULL;
		CURL	   *easy = msg->easy_handle;
		long		sent = 0;
		curl_off_t	pretransfer = 0;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &t);
		if (t->lookup_wait >= 0)
		{
			/* stopped before its lookup: waits for the probe's, unsent */
			dlist_delete(&t->node);
			curl_multi_remove_handle(c->multi, easy);
			dlist_push_tail(&c->lookups[t->lookup_wait].waiting, &t->node);
			continue;
		}
		t->curl_code = msg->data.result;
		/* ended by http_progress_cb() with its whole answer: that answer */
		if (t->answered_early && t->curl_code == CURLE_ABORTED_BY_CALLBACK)
			t->curl_code = CURLE_OK;
		http_note_coding(t);
		http_drop_bom(t);
		http_decode_charset(t);
		curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &t->http_status);
		curl_easy_getinfo(easy, CURLINFO_REQUEST_SIZE, &sent);
		curl_easy_getinfo(easy, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
		t->request_sent = sent > 0 || pretransfer > 0;
		if (t->http_status > 0 && t->peer >= 0)
		{
			long		version = 0;

			curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version);
			http_peer_learn(t, version == CURL_HTTP_VERSION_2_0 ? PEER_H2 : PEER_H1);
		}
		if (t->curl_code == CURLE_OUT_OF_MEMORY)
			http_note_unreadable_header(t, easy);
		if (t->resend_refused)
		{
			/* what libcurl answers when it cannot send a body again */
			t->curl_code = CURLE_SEND_FAIL_REWIND;
			t->request_sent = true;
			strlcpy(t->errbuf, "the connection was lost after the request was sent; "
					"libcurl was stopped from sending it again by itself",
					sizeof(t->errbuf));
		}
		if (t->errbuf[0] == '\0' && t->curl_code != CURLE_OK)
			strlcpy(t->errbuf, curl_easy_strerror(t->curl_code), sizeof(t->errbuf));
		if (http_timed_out_away(c, t))
		{
			t->stalled = true;
			c->stall_timeouts++;
			snprintf(t->errbuf, sizeof(t->errbuf),
					 "no answer read within the timeout of %ld ms: this server did not read the network for %ld ms meanwhile (it waited for the database)",
					 t->timeout_ms, (long) ((c->stall_to - c->stall_from) / 1000));
		}
		http_note_forbidden(t);
		http_note_tls_refused(t);
		if (t->lookup_probe >= 0)
		{
			/* a probe that ended before its socket: the waiting end so */
			HttpLookup *l = &c->lookups[t->lookup_probe];

			l->failed = true;
			l->curl_code = t->curl_code;
			strlcpy(l->errbuf, t->errbuf, sizeof(l->errbuf));
			http_lookup_done(t);
		}
		dlist_delete(&t->node);
		curl_multi_remove_handle(c->multi, easy);
		http_transfer_over(c, t);
	}
}

/*
 * End transfer t, which waited and was never started again, unsent (it is
 * retried, never judged in doubt): code and why are its error.
 */
static void
http_end_unsent(HttpClient *c, HttpTransfer *t, int code, const char *why)
{
	t->curl_code = code;
	t->http_status = 0;
	t->request_sent = false;
	strlcpy(t->errbuf, why, sizeof(t->errbuf));
	http_transfer_over(c, t);
}

/*
 * Start transfer t, which waited off the multi handle; if libcurl will not
 * take it, end it unsent.  Returns whether it started.
 */
static bool
http_start_waiting(HttpClient *c, HttpTransfer *t)
{
	if (curl_multi_add_handle(c->multi, t->easy) != CURLM_OK)
	{
		http_end_unsent(c, t, CURLE_FAILED_INIT, "could not start the transfer again");
		return false;
	}
	dlist_push_tail(&c->running, &t->node);
	return true;
}

/*
 * Start again, or end, the transfers that waited for a lookup now over.
 * Returns whether any started again (libcurl then has work for its timer).
 * Called after http_collect(), which has put every transfer stopped so far
 * on its lookup's list.
 */
static bool
http_release_lookups(HttpClient *c)
{
	bool		started = false;

	if (!c->lookups_over)
		return false;
	c->lookups_over = false;
	for (int i = 0; i < HTTP_MAX_LOOKUPS; i++)
	{
		HttpLookup *l = &c->lookups[i];

		if (!l->busy || !l->over)
			continue;
		while (!dlist_is_empty(&l->waiting))
		{
			HttpTransfer *t = dlist_container(HttpTransfer, node,
											  dlist_pop_head_node(&l->waiting));

			t->lookup_wait = -1;
			t->errbuf[0] = '\0';
			if (l->failed)
				/* the probe's lookup failed: so does this one, unsent */
				http_end_unsent(c, t, l->curl_code, l->errbuf);
			else
				started |= http_start_waiting(c, t);
		}
		l->busy = false;
	}
	return started;
}

/*
 * Start the transfers waiting for a connection of their peer, as far as
 * its streams (or a new opener) allow.  Returns whether any started.
 */
static bool
http_release_peers(HttpClient *c)
{
	bool		started = false;

	if (!c->peers_wake)
		return false;
	c->peers_wake = false;
	for (int i = 0; i < HTTP_MAX_PEERS; i++)
	{
		HttpPeer   *p = &c->peers[i];

		if (!p->wake)
			continue;
		p->wake = false;
		while (!dlist_is_empty(&p->waiting))
		{
			HttpTransfer *t = dlist_container(HttpTransfer, node, dlist_head_node(&p->waiting));

			if (!http_peer_admit(p, t))
				break;
			dlist_delete(&t->node);
			started |= http_start_waiting(c, t);
		}
	}
	return started;
}

/* Milliseconds until libcurl's own timer fires, -1 if none */
static long
http_timer_remaining(HttpClient *c)
{
	long		elapsed;

	if (c->timer_ms < 0)
		return -1;
	elapsed = (long) ((GetCurrentTimestamp() - c->timer_set_at) / 1000);
	return c->timer_ms > elapsed ? c->timer_ms - elapsed : 0;
}

/*
 * Sleep until the latch is set, a socket is ready, libcurl's timer fires or
 * timeout_ms passes (-1: no limit of ours), then let libcurl do its work.
 * Does not reset the latch: the caller does, before looking for work.
 */
void
http_wait(HttpClient *c, long timeout_ms, uint32 wait_event_info)
{
	WaitEvent	event;
	struct epoll_event ready[256];
	long		curl_ms;
	int			running;

	http_note_absence(c);
	/* a timer of 0 means "call me now": no need to sleep */
	curl_ms = http_timer_remaining(c);
	if (curl_ms >= 0 && (timeout_ms < 0 || curl_ms < timeout_ms))
		timeout_ms = curl_ms;

	/*
	 * Finished transfers not yet taken: no sleep.  They are left here when
	 * an ERROR (a pg_cancel_backend() of the dispatcher) ends the pass after
	 * the last wait collected them; nothing on the sockets wakes us for
	 * them, and sleeping the dispatcher's whole timeout held their answers
	 * unapplied, their orders without a waybill, for up to half a minute
	 * (TAP 003, "cancelled while waiting").
	 */
	if (c->done_head != NULL)
		timeout_ms = 0;

	if (timeout_ms != 0)
		(void) WaitEventSetWait(c->wes, timeout_ms, &event, 1, wait_event_info);

	/* whatever woke us, drain the sockets that are ready now */
	for (;;)
	{
		int			nready = epoll_wait(c->epfd, ready, lengthof(ready), 0);

		if (nready <= 0)
			break;
		for (int i = 0; i < nready; i++)
		{
			int			mask = 0;
			uint8	   *st = http_sock(c, ready[i].data.fd);

			/* a parked connection its server closed, or spoke on unasked */
			if (st && !(*st & SOCK_WATCHED))
			{
				(void) epoll_ctl(c->epfd, EPOLL_CTL_DEL, ready[i].data.fd, NULL);
				*st = SOCK_OURS;
				continue;
			}
			if (ready[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
				mask |= CURL_CSELECT_IN;
			if (ready[i].events & EPOLLOUT)
				mask |= CURL_CSELECT_OUT;
			if (ready[i].events & EPOLLERR)
				mask |= CURL_CSELECT_ERR;
			curl_multi_socket_action(c->multi, ready[i].data.fd, mask, &running);
		}
		if (nready < (int) lengthof(ready))
			break;
	}

	if (c->timer_ms >= 0 && http_timer_remaining(c) == 0)
	{
		c->timer_ms = -1;
		curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}

	http_collect(c);
	/* transfers that waited for a lookup or a connection start now, not at the next wait */
	while (http_release_lookups(c) | http_release_peers(c))
	{
		c->timer_ms = -1;
		curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
		http_collect(c);
	}
	http_log_absence(c);
	c->left_at = GetCurrentTimestamp();
}

HttpTransfer *
http_take_done(HttpClient *c)
{
	HttpTransfer *t = c->done_head;

	if (t)
	{
		c->done_head = t->next;
		if (c->done_head == NULL)
			c->done_tail = NULL;
		t->next = NULL;
	}
	return t;
}

/*
 * Release every libcurl resource.  Transfers still in flight are abandoned:
 * their outbox rows stay in_flight and are sent again by the next
 * dispatcher, under the same idempotency key.
 */
void
http_client_destroy(HttpClient *c)
{
	if (c == NULL || c->multi == NULL)
		return;
	for (int i = 0; i < HTTP_MAX_LOOKUPS; i++)
	{
		HttpLookup *l = &c->lookups[i];

		while (l->busy && !dlist_is_empty(&l->waiting))
			http_abandon(dlist_container(HttpTransfer, node,
										 dlist_pop_head_node(&l->waiting)));
		l->busy = false;
	}
	for (int i = 0; i < HTTP_MAX_PEERS; i++)
	{
		HttpPeer   *p = &c->peers[i];

		while (p->key[0] != '\0' && !dlist_is_empty(&p->waiting))
			http_abandon(dlist_container(HttpTransfer, node,
										 dlist_pop_head_node(&p->waiting)));
	}
	while (!dlist_is_empty(&c->running))
	{
		HttpTransfer *t = dlist_container(HttpTransfer, node,
										  dlist_pop_head_node(&c->running));

		curl_multi_remove_handle(c->multi, t->easy);
		http_abandon(t);
	}
	c->inflight = 0;
	(void) http_release_idle(c);
	curl_multi_cleanup(c->multi);
	c->multi = NULL;
	if (c->wes)
		FreeWaitEventSet(c->wes);
	c->wes = NULL;
	close(c->epfd);
	ReleaseExternalFD();
	free(c->socks.state);
	c->socks.state = NULL;
	c->socks.n = 0;
}

/*
 * Finish transfer t without sending it: the caller knows that its request
 * may not go out (a provider whose token URL is forbidden).  It comes back
 * from http_take_done() like any other, refused by shipsync.allowed_hosts
 * with why as its error.
 */
void
http_refuse(HttpClient *c, HttpTransfer *t, const char *why)
{
	initStringInfo(&t->response);
	t->started = GetCurrentTimestamp();
	t->curl_code = CURLE_COULDNT_CONNECT;
	t->forbidden_host = true;
	strlcpy(t->errbuf, why, sizeof(t->errbuf));
	curl_slist_free_all(t->headers);
	t->headers = NULL;
	http_queue_done(c, t);
}

/*
 * What a finished transfer means (retry.c's rules), with what only this
 * file knows: a connection refused by shipsync.allowed_hosts, and a TLS
 * session refused by the server, are permanent.
 */
ShipVerdict
http_classify(const HttpTransfer *t, bool body_ok)
{
	ShipVerdict v = {SHIP_DEAD, NULL, false, false};

	if (t->forbidden_host)
	{
		v.error_class = "forbidden_host";
		return v;
	}
	if (t->tls_refused)
	{
		v.error_class = "tls";
		return v;
	}
	if (t->stalled)
	{
		/* our absence, not the carrier's silence: in doubt, not counted */
		v = shipsync_classify(t->curl_code, t->http_status, t->request_sent, body_ok);
		v.error_class = "dispatcher_stalled";
		return v;
	}
	return shipsync_classify(t->curl_code, t->http_status, t->request_sent, body_ok);
}

/* ---------- SQL: the checks of create_provider() ---------- */

PG_FUNCTION_INFO_V1(shipsync_check_host);

/* The longest host name (RFC 1035: 255 octets on the wire), a final dot aside */
#define HTTP_MAX_HOST_NAME 253

/*
 * shipsync._check_host(url text): refuse a URL whose host is an internal
 * address that shipsync.allowed_hosts does not allow, or a name longer
 * than a host name may be (the dispatcher could not judge it whole).  Host
 * names pass: what they resolve to is judged when connecting, every time.
 */
Datum
shipsync_check_host(PG_FUNCTION_ARGS)
{
	char	   *url = text_to_cstring(PG_GETARG_TEXT_PP(0));
	size_t		size = strlen(url) + 1; /* the host is never longer */
	char	   *host = palloc(size);
	char	   *literal;
	size_t		len;
	ShipAddr	a;
	ShipAddrKind kind;

	if (!http_url_host(url, host, size, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("URL \"%s\" cannot be read", url),
				 errhint("For example https://api.carrier.example/v1.")));
	/* "10.0.0.5." is an address too */
	literal = pstrdup(host);
	len = strlen(literal);
	if (len > 1 && literal[len - 1] == '.')
		literal[--len] = '\0';
	if (len > HTTP_MAX_HOST_NAME)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the host name of the URL has %zu characters, more than a host name may have (%d)",
						len, HTTP_MAX_HOST_NAME),
				 errdetail("shipsync.allowed_hosts judges a host name whole, and no name that long can be resolved by DNS."),
				 errhint("Give the carrier's host name.")));
	if (!shipsync_addr_parse(literal, &a) || http_host_allowed(url, host, &a, &kind))
		PG_RETURN_VOID();
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("host %s is %s, which shipsync.allowed_hosts does not allow", host,
					shipsync_addr_kind_name(kind)),
			 errdetail("pg_shipsync reaches loopback, private, link-local and other internal addresses only where shipsync.allowed_hosts allows them (now \"%s\").",
					   shipsync_allowed_hosts ? shipsync_allowed_hosts : ""),
			 errhint("Use the carrier's public address, or have a superuser add %s to shipsync.allowed_hosts and reload.",
					 host)));
	PG_RETURN_VOID();
}

/* OpenSSL's password callback for keys: no passphrase, so encrypted keys fail */
static int
http_no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return 0;
}

/*
 * How many certificates the PEM text holds, -1 if a block is not one; the
 * first is kept in *first (if first is not NULL and the count is above 0).
 */
static int
http_pem_certs(const char *pem, X509 **first)
{
	BIO		   *bio = BIO_new_mem_buf(pem, -1);
	X509	   *x;
	X509	   *head = NULL;
	int			n = 0;

	if (bio == NULL)
		return -1;
	while ((x = PEM_read_bio_X509(bio, NULL, http_no_passphrase, NULL)) != NULL)
	{
		if (n++ == 0)
			head = x;
		else
			X509_free(x);
	}
	/* the loop ends at the end of the text, or at a block it cannot read */
	if (ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE)
		n = -1;
	ERR_clear_error();
	BIO_free(bio);
	if (n > 0 && first)
		*first = head;
	else
		X509_free(head);
	return n;
}

/* The unencrypted private key of a PEM text, or NULL */
static EVP_PKEY *
http_pem_key(const char *pem)
{
	BIO		   *bio = BIO_new_mem_buf(pem, -1);
	EVP_PKEY   *key;

	if (bio == NULL)
		return NULL;
	key = PEM_read_bio_PrivateKey(bio, NULL, http_no_passphrase, NULL);
	ERR_clear_error();
	BIO_free(bio);
	return key;
}

static void
http_tls_error(const char *field, const char *detail, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("option \"tls\": %s is not usable", field),
			 errdetail("%s", detail),
			 errhint("%s", hint)));
}

PG_FUNCTION_INFO_V1(shipsync_check_tls);

/*
 * shipsync._check_tls(ca_bundle text, client_cert text, client_key text):
 * each given PEM text holds what its name says, and the key belongs to the
 * certificate.  The key is never quoted in a message.
 */
Datum
shipsync_check_tls(PG_FUNCTION_ARGS)
{
	char	   *ca = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *cert = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *keytext = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	X509	   *x = NULL;
	EVP_PKEY   *key;
	bool		pair;

	if (ca && http_pem_certs(ca, NULL) <= 0)
		http_tls_error("ca_bundle", "It must hold one or more PEM certificates (-----BEGIN CERTIFICATE-----).",
					   "Give the carrier's CA certificates as PEM text.");
	if ((cert == NULL) != (keytext == NULL))
		http_tls_error(cert ? "client_cert" : "client_key",
					   "A client certificate and its key are given together.",
					   "Give both client_cert and client_key, or neither.");
	if (cert == NULL)
		PG_RETURN_VOID();
	if (http_pem_certs(cert, &x) <= 0)
		http_tls_error("client_cert", "It must hold the client certificate, then any intermediate certificates, as PEM.",
					   "Give the certificate the carrier issued or accepts, as PEM text.");
	key = http_pem_key(keytext);
	if (key == NULL)
	{
		X509_free(x);
		http_tls_error("client_key", "It must be an unencrypted PEM private key.",
					   "Remove its passphrase (openssl pkey -in key.pem -out plain.pem) and give it as PEM text.");
	}
	pair = X509_check_private_key(x, key) == 1;
	ERR_clear_error();
	EVP_PKEY_free(key);
	X509_free(x);
	if (!pair)
		http_tls_error("client_key", "It is not the key of the first certificate of client_cert.",
					   "Give the private key that belongs to client_cert.");
	PG_RETURN_VOID();
}
