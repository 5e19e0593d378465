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
 * (CURLMOPT_TIMERFUNCTION); http_wait() builds a WaitEventSet of the latch,
 * postmaster death and those sockets, waits, and hands readiness back to
 * curl_multi_socket_action().  The set is rebuilt only when libcurl changed
 * the socket list, since PostgreSQL 15 cannot remove an event from a set.
 *
 * Completed transfers are queued on a list the caller drains with
 * http_take_done() right after every wait, so each completion is applied as
 * soon as it finishes and never waits for a slower request of its batch.
 *
 * Resources: the multi handle and the connection cache live as long as the
 * client; an easy handle and its curl_slist live exactly as long as one
 * transfer and are freed when it completes (or by http_client_destroy()).
 * Keep-alive connections are reused across transfers; the caller caps how
 * many transfers run per provider, and CURLMOPT_MAX_HOST_CONNECTIONS caps
 * connections per host.  CURLOPT_NOSIGNAL keeps libcurl away from signals,
 * which belong to PostgreSQL here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"

typedef struct HttpSocket
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / OUT / INOUT */
} HttpSocket;

struct HttpClient
{
	MemoryContext cxt;
	CURLM	   *multi;
	int			inflight;
	dlist_head	running;		/* transfers libcurl is working on */
	HttpTransfer *done_head;
	HttpTransfer *done_tail;

	/* sockets libcurl wants watched */
	HttpSocket *sockets;
	int			nsockets;
	int			maxsockets;
	bool		sockets_changed;
	WaitEventSet *wes;

	long		timer_ms;		/* -1: no timeout pending */
	TimestampTz timer_set_at;
};

static int
http_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	HttpClient *c = (HttpClient *) userp;
	int			i;

	for (i = 0; i < c->nsockets; i++)
		if (c->sockets[i].fd == fd)
			break;

	if (what == CURL_POLL_REMOVE)
	{
		if (i < c->nsockets)
		{
			c->sockets[i] = c->sockets[--c->nsockets];
			c->sockets_changed = true;
		}
		return 0;
	}

	if (i == c->nsockets)
	{
		if (c->nsockets == c->maxsockets)
		{
			int			newmax = c->maxsockets * 2;
			HttpSocket *ns = MemoryContextAlloc(c->cxt, sizeof(HttpSocket) * newmax);

			memcpy(ns, c->sockets, sizeof(HttpSocket) * c->nsockets);
			pfree(c->sockets);
			c->sockets = ns;
			c->maxsockets = newmax;
		}
		c->sockets[i].fd = fd;
		c->nsockets++;
		c->sockets[i].what = -1;
	}
	if (c->sockets[i].what != what)
	{
		c->sockets[i].what = what;
		c->sockets_changed = true;
	}
	return 0;
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
 * Abort a transfer when this process is asked to stop: libcurl calls this
 * while it works, so a slow carrier never delays a shutdown.
 */
static int
http_progress_cb(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
				 curl_off_t ultotal, curl_off_t ulnow)
{
	return (QueryCancelPending || ProcDiePending) ? 1 : 0;
}

HttpClient *
http_client_create(MemoryContext cxt, long max_connections)
{
	HttpClient *c = MemoryContextAllocZero(cxt, sizeof(HttpClient));

	c->cxt = cxt;
	c->maxsockets = 64;
	c->sockets = MemoryContextAlloc(cxt, sizeof(HttpSocket) * c->maxsockets);
	c->timer_ms = -1;
	dlist_init(&c->running);
	c->multi = curl_multi_init();
	if (c->multi == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl multi handle")));
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
 * Start one transfer.  The caller allocated t (zeroed) in a context that
 * lives until the transfer comes back from http_take_done(), and filled in
 * the request fields; t->headers passes to us.
 */
void
http_submit(HttpClient *c, HttpTransfer *t)
{
	CURL	   *easy;
	CURLMcode	mrc;

	initStringInfo(&t->response);
	t->errbuf[0] = '\0';
	t->started = GetCurrentTimestamp();

	easy = curl_easy_init();
	if (easy == NULL)
	{
		/* a resource failure is a retryable attempt, never a lost order */
		t->curl_code = CURLE_OUT_OF_MEMORY;
		strlcpy(t->errbuf, "could not create a libcurl handle", sizeof(t->errbuf));
		t->next = NULL;
		if (c->done_tail)
			c->done_tail->next = t;
		else
			c->done_head = t;
		c->done_tail = t;
		return;
	}
	t->easy = easy;

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
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "pg_shipsync/0.1");
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, t->headers);
	curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, t->method);
	if (t->body)
	{
		curl_easy_setopt(easy, CURLOPT_POSTFIELDS, t->body);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long) strlen(t->body));
	}
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, http_write_cb);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, http_header_cb);
	curl_easy_setopt(easy, CURLOPT_HEADERDATA, t);
	curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, http_progress_cb);
	curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);

	mrc = curl_multi_add_handle(c->multi, easy);
	if (mrc != CURLM_OK)
	{
		curl_easy_cleanup(easy);
		t->easy = NULL;
		t->curl_code = CURLE_FAILED_INIT;
		strlcpy(t->errbuf, curl_multi_strerror(mrc), sizeof(t->errbuf));
		t->next = NULL;
		if (c->done_tail)
			c->done_tail->next = t;
		else
			c->done_head = t;
		c->done_tail = t;
		return;
	}
	dlist_push_tail(&c->running, &t->node);
	c->inflight++;
}

int
http_inflight(HttpClient *c)
{
	return c->inflight;
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
		t->curl_code = msg->data.result;
		curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &t->http_status);
		curl_easy_getinfo(easy, CURLINFO_REQUEST_SIZE, &sent);
		curl_easy_getinfo(easy, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
		t->request_sent = sent > 0 || pretransfer > 0;
		if (t->errbuf[0] == '\0' && t->curl_code != CURLE_OK)
			strlcpy(t->errbuf, curl_easy_strerror(t->curl_code), sizeof(t->errbuf));
		t->latency_ms = (double) (GetCurrentTimestamp() - t->started) / 1000.0;

		dlist_delete(&t->node);
		curl_multi_remove_handle(c->multi, easy);
		curl_easy_cleanup(easy);
		t->easy = NULL;
		curl_slist_free_all(t->headers);
		t->headers = NULL;
		c->inflight--;

		t->next = NULL;
		if (c->done_tail)
			c->done_tail->next = t;
		else
			c->done_head = t;
		c->done_tail = t;
	}
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
	WaitEvent	events[64];
	long		curl_ms;
	int			n;
	int			running;

	/* a timer of 0 means "call me now": no need to sleep */
	curl_ms = http_timer_remaining(c);
	if (curl_ms >= 0 && (timeout_ms < 0 || curl_ms < timeout_ms))
		timeout_ms = curl_ms;

	if (c->wes == NULL || c->sockets_changed)
	{
		if (c->wes)
			FreeWaitEventSet(c->wes);
		c->wes = CreateWaitEventSet(c->cxt, c->nsockets + 2);
		AddWaitEventToSet(c->wes, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(c->wes, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		for (int i = 0; i < c->nsockets; i++)
		{
			uint32		ev = 0;

			if (c->sockets[i].what == CURL_POLL_IN || c->sockets[i].what == CURL_POLL_INOUT)
				ev |= WL_SOCKET_READABLE;
			if (c->sockets[i].what == CURL_POLL_OUT || c->sockets[i].what == CURL_POLL_INOUT)
				ev |= WL_SOCKET_WRITEABLE;
			if (ev == 0)
				continue;
			AddWaitEventToSet(c->wes, ev, c->sockets[i].fd, NULL,
							  (void *) (intptr_t) c->sockets[i].fd);
		}
		c->sockets_changed = false;
	}

	n = timeout_ms == 0 ? 0 :
		WaitEventSetWait(c->wes, timeout_ms, events, lengthof(events),
						 wait_event_info);

	for (int i = 0; i < n; i++)
	{
		int			mask = 0;

		if (!(events[i].events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE)))
			continue;
		if (events[i].events & WL_SOCKET_READABLE)
			mask |= CURL_CSELECT_IN;
		if (events[i].events & WL_SOCKET_WRITEABLE)
			mask |= CURL_CSELECT_OUT;
		curl_multi_socket_action(c->multi, (curl_socket_t) (intptr_t) events[i].user_data,
								 mask, &running);
	}

	if (c->timer_ms >= 0 && http_timer_remaining(c) == 0)
	{
		c->timer_ms = -1;
		curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}

	http_collect(c);
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
	while (!dlist_is_empty(&c->running))
	{
		HttpTransfer *t = dlist_container(HttpTransfer, node,
										  dlist_pop_head_node(&c->running));

		curl_multi_remove_handle(c->multi, t->easy);
		curl_easy_cleanup(t->easy);
		t->easy = NULL;
		curl_slist_free_all(t->headers);
		t->headers = NULL;
	}
	curl_multi_cleanup(c->multi);
	c->multi = NULL;
	if (c->wes)
		FreeWaitEventSet(c->wes);
	c->wes = NULL;
}
