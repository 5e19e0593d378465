/*
 * resolver_shim.c -- a stand-in resolver for the names of a test, loaded
 * into the server with LD_PRELOAD (TAP 044).
 *
 * getaddrinfo() of a name ending in ".carrier.test" is written, one line a
 * call, to the file $SHIPSYNC_RESOLVE_LOG, takes 20 ms as a real lookup
 * would (so that lookups started together overlap), and answers 127.0.0.1;
 * a name starting with "nowhere." fails as an unknown name does
 * (EAI_NONAME).  Every other name goes to the system's resolver.  The test
 * counts the lines: how many lookups the dispatcher made.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int (*getaddrinfo_fn) (const char *, const char *,
							   const struct addrinfo *, struct addrinfo **);

static int
ends_with(const char *s, const char *suffix)
{
	size_t		n = strlen(s),
				m = strlen(suffix);

	return n >= m && strcmp(s + n - m, suffix) == 0;
}

int
getaddrinfo(const char *node, const char *service,
			const struct addrinfo *hints, struct addrinfo **res)
{
	getaddrinfo_fn real = (getaddrinfo_fn) dlsym(RTLD_NEXT, "getaddrinfo");
	const char *log = getenv("SHIPSYNC_RESOLVE_LOG");
	struct timespec lookup = {0, 20 * 1000 * 1000};
	struct addrinfo numeric;

	if (node == NULL || !ends_with(node, ".carrier.test"))
		return real(node, service, hints, res);
	if (log)
	{
		int			fd = open(log, O_WRONLY | O_APPEND | O_CREAT, 0600);
		char		line[300];
		int			len = snprintf(line, sizeof(line), "%s\n", node);

		if (fd >= 0)
		{
			if (write(fd, line, len) != len)
				abort();
			close(fd);
		}
	}
	nanosleep(&lookup, NULL);
	if (strncmp(node, "nowhere.", 8) == 0)
		return EAI_NONAME;
	numeric = hints ? *hints : (struct addrinfo) {0};
	numeric.ai_flags |= AI_NUMERICHOST;
	numeric.ai_family = AF_INET;
	return real("127.0.0.1", service, &numeric, res);
}
