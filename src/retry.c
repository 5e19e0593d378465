/*-------------------------------------------------------------------------
 *
 * retry.c
 *		What one HTTP attempt means, and when to try again.
 *
 * Pure functions, no PostgreSQL calls: they are unit-tested through SQL
 * wrappers and fuzzed alone.  The rules (design.md, "Retries"):
 *
 *	- 2xx with a well-formed body: done;
 *	- 408, 409 (idempotent request still in progress), 425, 429 and 5xx:
 *	  transient; any other 4xx (422: key reused with another body) and
 *	  3xx: permanent;
 *	- a TLS failure (certificate not trusted, expired, for another host,
 *	  not the pinned key, our own certificate refused) is permanent: the
 *	  next attempt meets the same certificates; a handshake cut short is a
 *	  lost connection, and a TLS alert of the server is a refusal
 *	  (shipsync_tls_alert());
 *	- transport failures are transient; a timeout or reset after the
 *	  request left is "in doubt": the carrier may hold the shipment, and the
 *	  same idempotency key and bytes make the next attempt safe;
 *	- a 2xx whose body cannot be read is transient (the carrier replays its
 *	  first answer to the same key);
 *	- backoff is exponential with full jitter, capped; Retry-After (seconds
 *	  or an HTTP date) overrides it, and so does X-RateLimit-Reset on a 429
 *	  or 503: any wait a carrier asks for is capped at one day.
 *
 *-------------------------------------------------------------------------
 */
#define SHIPSYNC_PLAIN_C
#include <curl/curl.h>
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_shipsync.h"

#define lengthof(array) (sizeof (array) / sizeof ((array)[0]))

/*
 * Every error class an attempt or an intent can end with, in one table: a
 * new class is one row here (and one line in docs/troubleshooting.md).
 * breaker: the failure says the carrier, or the way to it, is down -- it
 * counts toward the provider's circuit breaker (breaker_failures
 * consecutive ones open it); any other answer proves the carrier alive.
 * The row's index is the class's counter in shipsync.provider_health.
 */
const ShipErrorClass shipsync_error_classes[] = {
	/* transport: nothing or no whole answer came back */
	{"timeout", true},
	{"dns", true},
	{"connect", true},
	{"connection_lost", true},
	{"transport", true},
	{"tls", true},
	{"resource", false},		/* this server's own file descriptors or memory */
	/* the carrier answered */
	{"http_5xx", true},
	{"rate_limited", false},
	{"in_progress", false},
	{"http_4xx_transient", false},
	{"http_4xx", false},
	{"http_unexpected", false},
	{"response_too_large", false},
	{"bad_response", false},	/* unreadable (retried) or a field refused (dead) */
	{"auth", false},
	{"auth_refresh", false},
	{"business_retry", false},
	{"business_error", false},
	{"duplicate_order", false},
	{"not_found", false},
	/* this side: the intent, not the carrier */
	{"render_failed", false},
	{"writeback_failed", false},
	{"order_locked", false},	/* its row held by another session: sent again */
	{"table_locked", false},	/* its table held by another session: waits */
	{"apply_failed", false},	/* even the shipment could not be recorded */
	{"poison", false},			/* the dispatcher died applying it, twice */
	{"interrupted", false},		/* in flight when the dispatcher stopped */
	{"lease_expired", false},
	{"dispatcher_stalled", false},	/* timed out while it waited for a lock */
	/* kept last: whatever is not in this table */
	{"other", false},
};

const int	shipsync_n_error_classes = lengthof(shipsync_error_classes);

/* The index of class name in shipsync_error_classes ("other" if unknown) */
int
shipsync_error_class_index(const char *name)
{
	for (int i = 0; i < shipsync_n_error_classes - 1; i++)
		if (name != NULL && strcmp(shipsync_error_classes[i].name, name) == 0)
			return i;
	return shipsync_n_error_classes - 1;
}

ShipVerdict
shipsync_classify(int curl_code, long http_status, bool request_sent,
				  bool body_ok)
{
	ShipVerdict v = {SHIP_RETRY, "transport", false, false};

	if (curl_code != CURLE_OK)
	{
		switch (curl_code)
		{
			case CURLE_OPERATION_TIMEDOUT:
				v.error_class = "timeout";
				break;
			case CURLE_COULDNT_RESOLVE_HOST:
			case CURLE_COULDNT_RESOLVE_PROXY:
				v.error_class = "dns";
				break;
			case CURLE_COULDNT_CONNECT:
				v.error_class = "connect";
				break;
			case CURLE_WRITE_ERROR:
				v.error_class = "response_too_large";
				break;
			case CURLE_PEER_FAILED_VERIFICATION:
			case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
			case CURLE_SSL_CERTPROBLEM:
			case CURLE_SSL_CACERT_BADFILE:
			case CURLE_SSL_CIPHER:
			case CURLE_SSL_ISSUER_ERROR:
			case CURLE_SSL_CRL_BADFILE:
			case CURLE_SSL_CLIENTCERT:
				/* the same certificates fail the same way next time */
				v.outcome = SHIP_DEAD;
				v.error_class = "tls";
				return v;
			case CURLE_SSL_CONNECT_ERROR:	/* cut during the handshake */
			case CURLE_GOT_NOTHING:
			case CURLE_SEND_FAIL_REWIND:
			case CURLE_RECV_ERROR:
			case CURLE_SEND_ERROR:
			case CURLE_PARTIAL_FILE:
				v.error_class = "connection_lost";
				break;
			case CURLE_OUT_OF_MEMORY:
			case CURLE_FAILED_INIT:
				v.error_class = "resource";
				break;
			default:
				v.error_class = "transport";
				break;
		}
		/* it may have been recorded: the same key makes the retry safe */
		v.in_doubt = request_sent && strcmp(v.error_class, "connect") != 0 &&
			strcmp(v.error_class, "dns") != 0;
		return v;
	}

	if (http_status >= 200 && http_status < 300)
	{
		if (body_ok)
		{
			v.outcome = SHIP_OK;
			v.error_class = "ok";
		}
		else
		{
			v.outcome = SHIP_RETRY;
			v.error_class = "bad_response";
			v.in_doubt = true;
		}
		return v;
	}

	if (http_status == 429 || http_status == 503)
	{
		v.error_class = http_status == 429 ? "rate_limited" : "http_5xx";
		v.hold_provider = true;	/* only when Retry-After is present */
		return v;
	}
	if (http_status >= 500 || http_status == 408 || http_status == 409 ||
		http_status == 425)
	{
		v.error_class = http_status >= 500 ? "http_5xx" :
			http_status == 409 ? "in_progress" : "http_4xx_transient";
		return v;
	}

	v.outcome = SHIP_DEAD;
	v.error_class = http_status >= 400 ? "http_4xx" : "http_unexpected";
	return v;
}

/*
 * Did the server refuse the TLS session with an alert?  libcurl reports
 * it as a failed handshake (35) or, under TLS 1.3, where a client
 * certificate is checked after the client's handshake ended, as a failed
 * read (56); only OpenSSL's message tells it from a connection cut short:
 * "error:0A00045C:SSL routines::tlsv13 alert certificate required".
 */
bool
shipsync_tls_alert(int curl_code, const char *errbuf)
{
	const char *routines;

	if (curl_code != CURLE_SSL_CONNECT_ERROR && curl_code != CURLE_RECV_ERROR)
		return false;
	routines = errbuf ? strstr(errbuf, "SSL routines:") : NULL;
	return routines != NULL && strstr(routines, " alert ") != NULL;
}

#define WAIT_MAX_S		86400		/* the longest wait a carrier may ask for */
#define WAIT_DIGITS_MAX	1000000000000000LL	/* 10^15: larger numbers read as it */
#define WAIT_EPOCH_MS	100000000000LL	/* 10^11: a Unix time from here on is in ms */

/*
 * The wait, in milliseconds, that a carrier asked for in a Retry-After or
 * (reset) an X-RateLimit-Reset header: -1 when value is absent or
 * unreadable, else between 0 (a time past) and one day, whatever it says.
 * Retry-After is delta-seconds or an HTTP date.  X-RateLimit-Reset is
 * seconds too when below a day, else a Unix time: in seconds, or in
 * milliseconds from 10^11 on (as seconds, the year 5138), or an HTTP date.
 * Numbers of any length are read without overflow: the digits beyond 10^15
 * only make the wait the longest.
 */
long
shipsync_parse_wait(const char *value, bool reset, time_t now)
{
	const char *p;
	long long	n = 0;
	long long	secs;
	time_t		when;

	if (value == NULL)
		return -1;
	while (*value == ' ' || *value == '\t')
		value++;
	if (*value == '\0')
		return -1;

	for (p = value; isdigit((unsigned char) *p); p++)
	{
		if (n < WAIT_DIGITS_MAX)
			n = n * 10 + (*p - '0');
	}
	if (p != value)
	{
		while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
			p++;
		if (*p != '\0')
			return -1;
		if (!reset || n < WAIT_MAX_S)
			secs = n;
		else
			secs = (n >= WAIT_EPOCH_MS ? n / 1000 : n) - (long long) now;
	}
	else
	{
		when = curl_getdate(value, NULL);
		if (when == (time_t) -1)
			return -1;
		secs = (long long) when - (long long) now;
	}
	if (secs < 0)
		secs = 0;
	if (secs > WAIT_MAX_S)
		secs = WAIT_MAX_S;
	return (long) secs * 1000;
}

/*
 * The wait, in milliseconds, an answer of status http_status asked for
 * (at most a day): Retry-After, else on a 429 or a 503 X-RateLimit-Reset;
 * -1 when it asked for none.  A delivery's answer, a tracking poll's and a
 * reconciliation pull's are read alike.
 */
long
shipsync_wait_asked(long http_status, const char *retry_after,
					const char *ratelimit_reset, time_t now)
{
	long		delay = shipsync_parse_wait(retry_after, false, now);
	long		reset = shipsync_parse_wait(ratelimit_reset, true, now);

	if (delay < 0 && reset >= 0 && (http_status == 429 || http_status == 503))
		delay = reset;
	return delay;
}

/*
 * Full-jitter exponential backoff: uniform in [0, min(max, base * 2^(n-1))].
 * attempt counts from 1; random01 is uniform in [0, 1).
 */
long
shipsync_backoff_ms(int attempt, long base_ms, long max_ms, double random01)
{
	double		ceiling;

	if (attempt < 1)
		attempt = 1;
	if (base_ms < 1)
		base_ms = 1;
	if (max_ms < base_ms)
		max_ms = base_ms;
	ceiling = ldexp((double) base_ms, attempt > 40 ? 40 : attempt - 1);
	if (ceiling > (double) max_ms)
		ceiling = (double) max_ms;
	if (random01 < 0 || random01 >= 1)
		random01 = 0.5;
	return (long) (ceiling * random01);
}

/*
 * What an SF Express answer means.  The gateway code comes first: A1000 is
 * "the call reached the service", anything else failed at the gateway:
 * A1003 (IP not allowed), A1004 (no permission for the service) and A1006
 * (bad msgDigest) are credentials: dead with a ticket at once, since every
 * retry would fail the same way; A1001 (missing parameter) and A1002
 * (timestamp expired: the stored request will not get younger) are
 * permanent; every other gateway code (A1005 flow control, A1009 service
 * unreachable, A1099 system error, codes we do not know) is transient.
 * Inside A1000, errorCode S0000 with success is done; S-codes other than
 * S0000 are SF's own system errors (S0001 busy): transient; 8016 is a
 * duplicate orderId (look the order up); 8037 is an order already
 * cancelled (a cancel is done); any other code is a data error: permanent.
 * For a search, a data error means "no such order".
 */
SfClass
shipsync_sf_classify(const char *api_code, bool success, const char *error_code,
					 bool search)
{
	if (api_code == NULL)
		return SF_RETRY;
	if (strcmp(api_code, "A1000") != 0)
	{
		if (strcmp(api_code, "A1003") == 0 || strcmp(api_code, "A1004") == 0 ||
			strcmp(api_code, "A1006") == 0)
			return SF_AUTH;
		if (strcmp(api_code, "A1001") == 0 || strcmp(api_code, "A1002") == 0)
			return SF_PERMANENT;
		return SF_RETRY;
	}
	if (success && (error_code == NULL || strcmp(error_code, "S0000") == 0))
		return SF_OK;
	if (error_code == NULL || error_code[0] == '\0')
		return SF_RETRY;
	if (error_code[0] == 'S')
		return SF_RETRY;		/* S0000 without success: not an answer either */
	if (strcmp(error_code, "8016") == 0)
		return search ? SF_PERMANENT : SF_DUPLICATE;
	if (strcmp(error_code, "8037") == 0)
		return SF_ALREADY_CANCELLED;
	return search ? SF_NOT_FOUND : SF_PERMANENT;
}

/* The error_class recorded in delivery_log for each SfClass */
const char *
shipsync_sf_error_class(int cls)
{
	switch ((SfClass) cls)
	{
		case SF_OK:
		case SF_ALREADY_CANCELLED:
			return "ok";
		case SF_DUPLICATE:
			return "duplicate_order";
		case SF_AUTH:
			return "auth";
		case SF_RETRY:
			return "business_retry";
		case SF_PERMANENT:
			return "business_error";
		case SF_NOT_FOUND:
			return "not_found";
	}
	return "business_error";
}

/*
 * Length in bytes of the valid UTF-8 sequence at s (at most len bytes), or
 * 0 when it is not one (a stray continuation byte, an overlong form, a
 * surrogate, past U+10FFFF, or cut short).
 */
static int
utf8_sequence(const unsigned char *s, size_t len)
{
	int			n;
	unsigned int cp;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xC2 && s[0] <= 0xDF)
		n = 2, cp = s[0] & 0x1F;
	else if (s[0] >= 0xE0 && s[0] <= 0xEF)
		n = 3, cp = s[0] & 0x0F;
	else if (s[0] >= 0xF0 && s[0] <= 0xF4)
		n = 4, cp = s[0] & 0x07;
	else
		return 0;
	if ((size_t) n > len)
		return 0;
	for (int i = 1; i < n; i++)
	{
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	if ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
		(n == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
		return 0;
	return n;
}

/*
 * Whether text (len bytes) is valid UTF-8 (see utf8_sequence()): the offset
 * of the first byte that is not, or -1.
 */
long
shipsync_utf8_invalid_at(const char *text, size_t len)
{
	const unsigned char *s = (const unsigned char *) text;
	size_t		i = 0;

	while (i < len)
	{
		int			n;

		/*
		 * ASCII eight bytes at a time: a carrier's answer is mostly ASCII,
		 * and byte by byte this check cost the dispatcher 5,500 CPU
		 * instructions an answer of 180 bytes.
		 */
		while (len - i >= 8)
		{
			uint64_t	w;

			memcpy(&w, s + i, 8);
			if (w & UINT64_C(0x8080808080808080))
				break;
			i += 8;
		}
		if (i == len)
			break;
		n = utf8_sequence(s + i, len - i);
		if (n == 0)
			return (long) i;
		i += n;
	}
	return -1;
}

/*
 * An excerpt of a carrier's text that is safe to store and print: at most
 * max_chars characters of valid UTF-8, with every control character
 * escaped (\n, \r, \t, \xHH for the other C0 controls, DEL and bytes that
 * are not UTF-8, \uHHHH for C1 controls), and ending in "…" when cut.  An
 * escape is never cut in two.  Writes into out (outsize >= 6 * max_chars +
 * 4 always suffices) and returns out.  Applied again to its own output, it
 * changes nothing.
 */
char *
shipsync_excerpt(const char *in, size_t len, int max_chars, char *out,
				 size_t outsize)
{
	const unsigned char *s = (const unsigned char *) (in ? in : "");
	size_t		o = 0;
	size_t		cut = 0;		/* where "…" goes if the text is longer */
	bool		cut_set = false;
	int			chars = 0;

	if (in == NULL)
		len = 0;
	for (size_t i = 0; i < len;)
	{
		char		unit[8];
		int			ulen;
		int			uchars;
		int			n = utf8_sequence(s + i, len - i);

		if (s[i] == '\n' || s[i] == '\r' || s[i] == '\t')
			ulen = snprintf(unit, sizeof(unit), "\\%c",
							s[i] == '\n' ? 'n' : s[i] == '\r' ? 'r' : 't');
		else if (n == 0 || s[i] < 0x20 || s[i] == 0x7F)
		{
			ulen = snprintf(unit, sizeof(unit), "\\x%02x", s[i]);
			n = 1;
		}
		else if (n == 2 && s[i] == 0xC2 && s[i + 1] < 0xA0)
			ulen = snprintf(unit, sizeof(unit), "\\u%04x", s[i + 1]);
		else
		{
			memcpy(unit, s + i, n);
			ulen = n;
		}
		uchars = unit[0] == '\\' ? ulen : 1;
		if (!cut_set && (chars + uchars > max_chars - 1 || o + ulen + 4 > outsize))
		{
			cut = o;			/* the last place "…" still fits */
			cut_set = true;
		}
		if (chars + uchars > max_chars || o + ulen + 1 > outsize)
		{
			o = cut;
			memcpy(out + o, "\xE2\x80\xA6", 3);
			o += 3;
			break;
		}
		memcpy(out + o, unit, ulen);
		o += ulen;
		chars += uchars;
		i += n;
	}
	out[o] = '\0';
	return out;
}
