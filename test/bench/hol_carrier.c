/*
 * hol_carrier.c -- the carrier of the bench's head-of-line figure: answers
 * a generic create as the bench's nginx does (201, a shipment and a
 * tracking number of its own per request), except that a request whose
 * body holds "slow-" (the order key 'slow-1') is held 3 s first.
 *
 * The figure compares 1,000 fast orders with and without one slow order
 * queued before them, on one provider.  The Python carrier simulator
 * answered 400 to 2,500 requests a second, and its answer times grew
 * within a run (its heap and garbage collector grow with every shipment it
 * keeps), so the figure read its speed rather than the dispatcher's
 * (docs/architecture.md, "The head-of-line figure needs a steady
 * carrier").  This one keeps nothing: one thread per connection
 * (libmicrohttpd's), so a held request holds its own connection only, as
 * at a real carrier.
 *
 *   hol_carrier PORT_FILE
 *
 * Listens on 127.0.0.1, a free port, written to PORT_FILE once bound
 * (through a temporary file and a rename: a reader never sees half of
 * it); stops on SIGTERM or SIGINT.
 */
#include <microhttpd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SLOW_MARK	"slow-"
#define SLOW_SECONDS 3
#define MAX_BODY	65536

typedef struct Upload
{
	size_t		len;
	char		body[MAX_BODY + 1];
} Upload;

static atomic_ulong next_id;

static enum MHD_Result
answer(struct MHD_Connection *conn, unsigned int status, const char *text)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = MHD_create_response_from_buffer(strlen(text), (void *) text,
										MHD_RESPMEM_MUST_COPY);
	if (r == NULL)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", "application/json");
	ret = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *conn, const char *url,
		   const char *method, const char *version, const char *data,
		   size_t *data_size, void **state)
{
	Upload	   *up = *state;
	char		text[256];
	unsigned long id;

	(void) cls;
	(void) url;
	(void) version;
	if (up == NULL)
	{
		/* first call: headers only; the body comes in the next ones */
		up = calloc(1, sizeof(Upload));
		if (up == NULL)
			return MHD_NO;
		*state = up;
		return MHD_YES;
	}
	if (*data_size > 0)
	{
		size_t		n = *data_size;

		if (n > MAX_BODY - up->len)
			n = MAX_BODY - up->len;
		memcpy(up->body + up->len, data, n);
		up->len += n;
		*data_size = 0;
		return MHD_YES;
	}
	if (strcmp(method, "POST") != 0)
		return answer(conn, 404, "{\"error\":\"not found\"}");
	up->body[up->len] = '\0';
	if (strstr(up->body, SLOW_MARK) != NULL)
		sleep(SLOW_SECONDS);
	id = atomic_fetch_add(&next_id, 1) + 1;
	snprintf(text, sizeof(text),
			 "{\"id\":\"shp_h%lu\",\"tracking_number\":\"HOL%lu\","
			 "\"status\":\"pre_transit\"}", id, id);
	return answer(conn, 201, text);
}

static void
on_done(void *cls, struct MHD_Connection *conn, void **state,
		enum MHD_RequestTerminationCode toe)
{
	(void) cls;
	(void) conn;
	(void) toe;
	free(*state);
	*state = NULL;
}

static int
write_port(const char *path, unsigned int port)
{
	char		tmp[4096];
	FILE	   *f;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int) sizeof(tmp))
		return -1;
	f = fopen(tmp, "w");
	if (f == NULL)
		return -1;
	fprintf(f, "%u\n", port);
	if (fclose(f) != 0)
		return -1;
	return rename(tmp, path);
}

int
main(int argc, char **argv)
{
	struct sockaddr_in addr;
	struct MHD_Daemon *d;
	const union MHD_DaemonInfo *info;
	sigset_t	stop;
	int			sig;

	if (argc != 2)
	{
		fprintf(stderr, "usage: %s PORT_FILE\n", argv[0]);
		return 2;
	}
	/* SIGTERM and SIGINT wait for sigwait() below, in every thread */
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);

	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	addr.sin_port = 0;
	d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION |
						 MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
						 0, NULL, NULL, on_request, NULL,
						 MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &addr,
						 MHD_OPTION_NOTIFY_COMPLETED, on_done, NULL,
						 MHD_OPTION_CONNECTION_LIMIT, (unsigned int) 1024,
						 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) 60,
						 MHD_OPTION_END);
	if (d == NULL)
	{
		fprintf(stderr, "hol_carrier: cannot listen on 127.0.0.1\n");
		return 1;
	}
	info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	if (info == NULL || write_port(argv[1], info->port) != 0)
	{
		fprintf(stderr, "hol_carrier: cannot write %s\n", argv[1]);
		MHD_stop_daemon(d);
		return 1;
	}
	sigwait(&stop, &sig);
	MHD_stop_daemon(d);
	return 0;
}
