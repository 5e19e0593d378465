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

#include <sys/epoll.h>
#include <unistd.h>

#include <curl/curl.h>

#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"

struct HttpClient
{
	MemoryContext cxt;
	CURLM	   *multi;
	int			inflight;
	dlist_head	running;		/* transfers libcurl is working on */
	HttpTransfer *done_head;
	HttpTransfer *done_tail;

	int			epfd;			/* epoll set of the sockets libcurl watches */
	WaitEventSet *wes;			/* latch, postmaster death, epfd */

	long		timer_ms;		/* -1: no timeout pending */
	TimestampTz timer_set_at;
};

static int
http_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	HttpClient *c = (HttpClient *) userp;
	struct epoll_event ev;
	bool		known = socketp != NULL;

	if (what == CURL_POLL_REMOVE)
	{
		if (known)
		{
			(void) epoll_ctl(c->epfd, EPOLL_CTL_DEL, fd, NULL);
			curl_multi_assign(c->multi, fd, NULL);
		}
		return 0;
	}

	memset(&ev, 0, sizeof(ev));
	ev.data.fd = fd;
	if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
		ev.events |= EPOLLIN;
	if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
		ev.events |= EPOLLOUT;

	if (epoll_ctl(c->epfd, known ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) != 0)
	{
		/* libcurl may hand us back a socket it had removed: try the other */
		if (epoll_ctl(c->epfd, known ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev) != 0)
			elog(LOG, "pg_shipsync: could not watch socket %d: %m", (int) fd);
	}
	if (!known)
		curl_multi_assign(c->multi, fd, (void *) c);
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
 * Hand libcurl the request body.  We deliberately give it no way to rewind
 * (no seek callback): when a reused keep-alive connection turns out dead
 * after the request went out, libcurl 7.88 would otherwise silently send
 * the same POST again on a new connection, hiding the failed attempt from
 * the delivery log and from the in-doubt handling.  Without a rewind it
 * fails with CURLE_SEND_FAIL_REWIND and we decide, with the same key.
 */
static size_t
http_read_cb(char *buffer, size_t size, size_t nitems, void *userp)
{
	HttpTransfer *t = (HttpTransfer *) userp;
	size_t		room = size * nitems;
	size_t		left = t->body_len - t->body_sent;
	size_t		n = left < room ? left : room;

	memcpy(buffer, t->body + t->body_sent, n);
	t->body_sent += n;
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

HttpClient *
http_client_create(MemoryContext cxt, long max_connections)
{
	HttpClient *c = MemoryContextAllocZero(cxt, sizeof(HttpClient));

	c->cxt = cxt;
	c->timer_ms = -1;
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
		curl_slist_free_all(t->headers);
		t->headers = NULL;
		http_queue_done(c, t);
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
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "pg_shipsync/" SHIPSYNC_EXTVERSION);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, t->headers);
	curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, t->method);
	if (t->body)
	{
		t->body_len = strlen(t->body);
		t->body_sent = 0;
		curl_easy_setopt(easy, CURLOPT_UPLOAD, 0L);
		curl_easy_setopt(easy, CURLOPT_POST, 1L);
		curl_easy_setopt(easy, CURLOPT_READFUNCTION, http_read_cb);
		curl_easy_setopt(easy, CURLOPT_READDATA, t);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) t->body_len);
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
		curl_slist_free_all(t->headers);
		t->headers = NULL;
		http_queue_done(c, t);
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

		http_queue_done(c, t);
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
	WaitEvent	event;
	struct epoll_event ready[256];
	long		curl_ms;
	int			running;

	/* a timer of 0 means "call me now": no need to sleep */
	curl_ms = http_timer_remaining(c);
	if (curl_ms >= 0 && (timeout_ms < 0 || curl_ms < timeout_ms))
		timeout_ms = curl_ms;

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
	close(c->epfd);
	ReleaseExternalFD();
}
