/*
 * test_parsers.c
 *		Unit tests of the carrier-response parser and the retry rules (and,
 *		through test_tracking.c, test_csv.c, test_cpuroom.c and
 *		test_hugeheap.c, signatures, tracking payloads, statement CSV and
 *		amounts, the idle CPU a server may use, and the dispatcher's heap in
 *		huge pages).
 *
 * Prints TAP ("ok N - ...", "not ok N - ...") so bin/test can count it.
 */
#define SHIPSYNC_PLAIN_C
#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

#include <stdlib.h>

#include "pg_shipsync.h"
#include "unit.h"

static int
parse(const char *body, int need_ids, ShipResponse *r, char *err)
{
	return shipsync_parse_ship_response(body, strlen(body), need_ids, r, err, 256);
}

static void
test_responses(void)
{
	ShipResponse r;
	char		err[256];

	check(parse("{\"id\":\"shp_1\",\"tracking_number\":\"SF123\",\"label_url\":\"https://l/1\","
				"\"status\":\"pre_transit\",\"fees\":[{\"type\":\"freight\",\"amount\":\"12.50\","
				"\"currency\":\"CNY\"},{\"type\":\"ins\",\"amount\":1.2}]}", 1, &r, err) &&
		  strcmp(r.id, "shp_1") == 0 && strcmp(r.tracking_number, "SF123") == 0 &&
		  strcmp(r.status, "pre_transit") == 0 && r.fees != NULL,
		  "a full create response is read, string and number amounts alike");
	shipsync_free_ship_response(&r);

	check(parse("{\"id\":42,\"tracking_number\":\"T\"}", 1, &r, err) && strcmp(r.id, "42") == 0,
		  "a numeric shipment id is kept as text");
	shipsync_free_ship_response(&r);

	check(!parse("{\"id\":\"shp_1\",\"tracking_num", 1, &r, err) &&
		  strstr(err, "not valid JSON") != NULL,
		  "truncated JSON is rejected with a reason");
	check(!parse("{\"id\":\"a\"} trailing", 1, &r, err), "trailing garbage is rejected");
	check(!parse("[1,2]", 1, &r, err) && strstr(err, "not a JSON object"), "an array is rejected");
	check(!parse("{\"tracking_number\":\"T\"}", 1, &r, err) && strstr(err, "\"id\""),
		  "a create response without id is rejected");
	check(!parse("{\"id\":\"x\",\"tracking_number\":\"\"}", 1, &r, err),
		  "an empty tracking number is rejected");
	check(parse("{\"status\":\"cancelled\"}", 0, &r, err), "an update/cancel response needs no ids");
	shipsync_free_ship_response(&r);
	check(!parse("{\"id\":\"x\",\"tracking_number\":\"T\",\"fees\":[{\"type\":\"f\",\"amount\":\"12,50\"}]}",
				 1, &r, err) && strstr(err, "non-numeric"),
		  "a non-numeric fee amount is rejected");
	check(!parse("{\"id\":\"x\",\"tracking_number\":\"T\",\"fees\":{}}", 1, &r, err),
		  "fees that are not an array are rejected");
	check(parse("{\"id\":\"x\",\"tracking_number\":\"T\",\"fees\":null}", 1, &r, err) && r.fees == NULL,
		  "null fees mean no fees");
	shipsync_free_ship_response(&r);
	check(parse("{\"id\":\"\xe9\xa1\xba\xe4\xb8\xb0\",\"tracking_number\":\"SF\"}", 1, &r, err),
		  "non-ASCII text is kept");
	shipsync_free_ship_response(&r);
	check(!parse("", 1, &r, err), "an empty body is rejected");

	check(shipsync_is_decimal("12.50") && shipsync_is_decimal("-0.5") &&
		  shipsync_is_decimal("1e3") && shipsync_is_decimal("7"),
		  "decimal amounts are recognised");
	check(!shipsync_is_decimal("NaN") && !shipsync_is_decimal("") && !shipsync_is_decimal(".") &&
		  !shipsync_is_decimal("1e") && !shipsync_is_decimal("12.5.0"),
		  "non-decimal amounts are refused");
}

/* shipsync_check_response_text() on body, with the reason in err */
static int
storable(const char *body, char *err)
{
	err[0] = '\0';
	return shipsync_check_response_text(body, strlen(body), err, 256);
}

static void
test_storable(void)
{
	char		err[256];

	check(storable("{\"id\":\"shp_1\",\"tracking_number\":\"\xe9\xa1\xba SF\",\"n\":-1.5e3,"
				   "\"s\":\"a\\\\u0000b \\\" \\ud83d\\ude00\"}", err),
		  "UTF-8, an escaped backslash before u0000, a surrogate pair: storable");
	check(!storable("{\"tracking_number\":\"SF\\u00001\"}", err) &&
		  strstr(err, "\"tracking_number\" holds a NUL character") != NULL,
		  "a NUL escape is refused, naming the member");
	check(!storable("{\"label_url\":\"a\xff\xfe\"}", err) && strstr(err, "not valid UTF-8") != NULL,
		  "bytes that are not UTF-8 are refused");
	check(!storable("{\"x\":\"\xc0\xaf\"}", err), "an overlong UTF-8 sequence is refused");
	check(!storable("{\"x\":\"\xed\xa0\x80\"}", err), "an encoded surrogate is refused");
	check(!storable("{\"x\":\"\xe9\xa1\"}", err), "a truncated UTF-8 sequence is refused");
	check(!storable("{\"status\":\"\\ud800x\"}", err) && strstr(err, "lone UTF-16 surrogate") != NULL,
		  "a lone high surrogate escape is refused");
	check(!storable("{\"status\":\"x\\udc00\"}", err), "a lone low surrogate escape is refused");
	check(!storable("{\"status\":1e99999}", err) &&
		  strstr(err, "\"status\" holds a number out of range") != NULL,
		  "a number beyond numeric is refused, naming the member");
	check(storable("{\"n\":1e1000,\"m\":-2E-1000}", err), "exponents up to 1000 are storable");
	check(!storable("[1e1001]", err) && strstr(err, "the response holds a number") != NULL,
		  "an exponent of 1001 is refused");
	check(!storable("{\"a\\u0000\":1}", err) && strstr(err, "member name") != NULL,
		  "a NUL in a member name is refused");
	/* json-c reads an integer beyond 64 bits as the nearest end of the range */
	check(!storable("{\"id\":\"S1\",\"fees\":[{\"type\":\"freight\",\"amount\":18446744073709551617}]}", err) &&
		  strstr(err, "\"amount\" holds an integer beyond 64 bits") != NULL,
		  "a fee amount beyond 64 bits is refused, naming the member");
	check(!storable("[-9223372036854775809]", err) && strstr(err, "the response holds an integer") != NULL,
		  "an integer below the 64-bit range is refused");
	check(storable("{\"a\":18446744073709551615,\"b\":-9223372036854775808,\"c\":\"99999999999999999999\",\"d\":1e400}", err),
		  "the ends of the 64-bit range, a long number in a string, a decimal: storable");
}

/* A tracking push whose route id is beyond 64 bits is not read as another id */
static void
test_tracking_big_integers(void)
{
	const char *b = "{\"Body\":{\"WaybillRoute\":[{\"mailno\":\"SF1\",\"acceptTime\":\"2024-05-01 11:00:00\","
		"\"opCode\":\"30\",\"id\":18446744073709551617}]}}";
	TrackEventList l;
	char		err[256];
	bool		ok = shipsync_parse_tracking_sf_express(b, strlen(b), &l, err, sizeof(err));

	check(!ok && strstr(err, "\"id\" holds an integer beyond 64 bits") != NULL,
		  "an SF route id beyond 64 bits is refused, not read as 18446744073709551615");
	shipsync_free_tracking(&l);
}

/*
 * SF wraps its answer in a JSON string (apiResultData): an integer beyond
 * 64 bits inside it is refused as one in the answer itself is, not read
 * as the nearest end of the range (the waybill list is stored as read)
 */
static void
test_sf_wrapped_big_integers(void)
{
	const char *b = "{\"apiResultCode\":\"A1000\",\"apiResultData\":\"{\\\"success\\\":true,"
		"\\\"errorCode\\\":\\\"S0000\\\",\\\"msgData\\\":{\\\"orderId\\\":\\\"1\\\","
		"\\\"waybillNoInfoList\\\":[{\\\"waybillType\\\":1,\\\"waybillNo\\\":\\\"SF1\\\"},"
		"{\\\"waybillType\\\":18446744073709551617,\\\"waybillNo\\\":\\\"SF2\\\"}]}}\"}";
	const char *plain = "{\"apiResultCode\":\"A1000\",\"apiResultData\":\"{\\\"success\\\":true,"
		"\\\"errorCode\\\":\\\"S0000\\\",\\\"msgData\\\":{\\\"orderId\\\":\\\"1\\\","
		"\\\"waybillNoInfoList\\\":[{\\\"waybillType\\\":1,\\\"waybillNo\\\":\\\"SF1\\\"},"
		"{\\\"waybillType\\\":18446744073709551615,\\\"waybillNo\\\":\\\"SF2\\\"}]}}\"}";
	SfResponse	r;
	char		err[256];
	bool		ok;
	ShipJson   *doc;
	MapPath		p;
	MapValue	mv;
	char	   *v;

	err[0] = '\0';
	ok = shipsync_parse_sf_response(b, strlen(b), false, &r, err, sizeof(err));
	if (ok)
		printf("#   read as: %s\n", r.waybills ? r.waybills : "(no waybills)");
	check(!ok && strstr(err, "apiResultData") != NULL &&
		  strstr(err, "\"waybillType\" holds an integer beyond 64 bits") != NULL,
		  "an integer beyond 64 bits inside SF's apiResultData string is refused, naming the member");
	if (ok)
		shipsync_free_sf_response(&r);
	ok = shipsync_parse_sf_response(plain, strlen(plain), false, &r, err, sizeof(err));
	check(ok && r.waybills && strstr(r.waybills, "18446744073709551615") != NULL,
		  "the end of the 64-bit range inside apiResultData is read");
	if (ok)
		shipsync_free_sf_response(&r);

	/* an inbound map's path through the string reads nothing rather than another number */
	doc = shipsync_json_parse(b, strlen(b), err, sizeof(err));
	v = NULL;
	if (doc && shipsync_path_parse("apiResultData.msgData.waybillNoInfoList[1].waybillType", &p, err, sizeof(err)))
	{
		if (shipsync_json_get(doc, &p, &mv))
			v = mv.s;
		shipsync_path_free(&p);
	}
	if (v)
		printf("#   path read: %s\n", v);
	check(doc && v == NULL, "a path through a JSON string holding an integer beyond 64 bits reads no clamped number");
	free(v);
	shipsync_json_free(doc);
}

/*
 * The UTF-8 check reads ASCII eight bytes at a time: a bad byte, or a good
 * sequence, at every offset and alignment of a run of ASCII before and
 * after it, is judged as byte by byte.
 */
static void
test_utf8_offsets(void)
{
	char		buf[64];
	int			wrong = 0;

	for (int len = 1; len <= 40; len++)
		for (int p = 0; p < len; p++)
		{
			memset(buf, 'a', len);
			buf[p] = (char) 0xff;	/* never UTF-8 */
			if (shipsync_utf8_invalid_at(buf, len) != p)
				wrong++;
			buf[p] = (char) 0x80;	/* a stray continuation byte */
			if (shipsync_utf8_invalid_at(buf, len) != p)
				wrong++;
			if (p + 3 <= len)
			{
				memcpy(buf + p, "\xe4\xb8\xad", 3);	/* 中 */
				if (shipsync_utf8_invalid_at(buf, len) != -1)
					wrong++;
				/* the same cut short at the end of the text */
				if (shipsync_utf8_invalid_at(buf, p + 2) != p)
					wrong++;
			}
		}
	check(wrong == 0, "UTF-8: a bad byte or a good sequence at every offset of up to 40 bytes is judged right");
	check(shipsync_utf8_invalid_at("", 0) == -1, "UTF-8: the empty text is valid");
}

/*
 * One tokener serves every document up to 64 KB, reset before each: a
 * document cut short, or with something after it, leaves nothing behind
 * for the next, and a larger one gets a tokener of its own.
 */
static void
test_tokener_reuse(void)
{
	ShipResponse r;
	char		err[256];
	const char *good = "{\"id\":\"shp_2\",\"tracking_number\":\"SF2\"}";
	size_t		biglen = 70000;
	char	   *big = malloc(biglen + 64);

	check(!parse("{\"id\":\"shp_1\",\"tracking_num", 1, &r, err) &&
		  strstr(err, "unexpected end of input") != NULL,
		  "tokener: a document cut short is refused");
	check(parse(good, 1, &r, err) && strcmp(r.id, "shp_2") == 0 &&
		  strcmp(r.tracking_number, "SF2") == 0,
		  "tokener: the next document after one cut short is read whole and alone");
	shipsync_free_ship_response(&r);
	check(!parse("{\"id\":\"a\",\"tracking_number\":\"b\"} {\"id\":", 1, &r, err) &&
		  strstr(err, "not valid JSON") != NULL,
		  "tokener: a second document after the first is refused");
	check(parse(good, 1, &r, err) && strcmp(r.id, "shp_2") == 0,
		  "tokener: the next document after that is read alone");
	shipsync_free_ship_response(&r);
	snprintf(big, 64, "{\"id\":\"shp_3\",\"tracking_number\":\"SF3\",\"x\":\"");
	memset(big + strlen(big), 'x', biglen - strlen(big));
	strcpy(big + biglen, "\"}");
	check(parse(big, 1, &r, err) && strcmp(r.id, "shp_3") == 0,
		  "tokener: a document over 64 KB is read");
	shipsync_free_ship_response(&r);
	check(parse(good, 1, &r, err) && strcmp(r.tracking_number, "SF2") == 0,
		  "tokener: and the next small one after it");
	shipsync_free_ship_response(&r);
	free(big);
}

static void
test_fee_ranges(void)
{
	ShipResponse r;
	char		err[256];

	check(!parse("{\"id\":\"x\",\"tracking_number\":\"T\",\"fees\":[{\"type\":\"f\",\"amount\":\"1e99999\"}]}",
				 1, &r, err) && r.refused,
		  "a fee amount beyond numeric is refused (not merely unreadable)");
	check(!parse("{\"id\":\"x\",\"tracking_number\":\"T\",\"fees\":{}}", 1, &r, err) && r.refused,
		  "fees that are not an array are refused");
	check(!parse("{\"id\":\"x\",\"tracking_number\"", 1, &r, err) && !r.refused,
		  "an unreadable body is not refused: it is retried");
	check(parse("{\"id\":\"x\",\"tracking_number\":\"T\",\"fees\":[{\"type\":\"f\",\"amount\":\"1.5\"}],"
				"\"other\":[1,2]}", 1, &r, err) &&
		  strcmp(r.fees, "[{\"type\":\"f\",\"amount\":\"1.5\"}]") == 0,
		  "only the fees array is kept for SQL");
	shipsync_free_ship_response(&r);
}

static void
test_classify(void)
{
	ShipVerdict v;

	v = shipsync_classify(CURLE_OK, 201, 1, 1);
	check(v.outcome == SHIP_OK, "201 with a good body is done");
	v = shipsync_classify(CURLE_OK, 201, 1, 0);
	check(v.outcome == SHIP_RETRY && strcmp(v.error_class, "bad_response") == 0 && v.in_doubt,
		  "201 with an unreadable body is retried, in doubt");
	v = shipsync_classify(CURLE_OK, 500, 1, 1);
	check(v.outcome == SHIP_RETRY && strcmp(v.error_class, "http_5xx") == 0, "500 is retried");
	v = shipsync_classify(CURLE_OK, 503, 1, 1);
	check(v.outcome == SHIP_RETRY && v.hold_provider, "503 is retried and may hold the provider");
	v = shipsync_classify(CURLE_OK, 429, 1, 1);
	check(v.outcome == SHIP_RETRY && v.hold_provider && strcmp(v.error_class, "rate_limited") == 0,
		  "429 is retried and may hold the provider");
	v = shipsync_classify(CURLE_OK, 409, 1, 1);
	check(v.outcome == SHIP_RETRY && strcmp(v.error_class, "in_progress") == 0, "409 is retried");
	v = shipsync_classify(CURLE_OK, 408, 1, 1);
	check(v.outcome == SHIP_RETRY, "408 is retried");
	v = shipsync_classify(CURLE_OK, 425, 1, 1);
	check(v.outcome == SHIP_RETRY, "425 is retried");
	v = shipsync_classify(CURLE_OK, 422, 1, 1);
	check(v.outcome == SHIP_DEAD, "422 (key reused with another body) is permanent");
	v = shipsync_classify(CURLE_OK, 400, 1, 1);
	check(v.outcome == SHIP_DEAD, "400 is permanent");
	v = shipsync_classify(CURLE_OK, 401, 1, 1);
	check(v.outcome == SHIP_DEAD, "401 is permanent");
	v = shipsync_classify(CURLE_OK, 302, 1, 1);
	check(v.outcome == SHIP_DEAD, "a redirect is permanent");
	v = shipsync_classify(CURLE_OPERATION_TIMEDOUT, 0, 1, 1);
	check(v.outcome == SHIP_RETRY && v.in_doubt && strcmp(v.error_class, "timeout") == 0,
		  "a timeout after sending is retried, in doubt");
	v = shipsync_classify(CURLE_COULDNT_CONNECT, 0, 0, 1);
	check(v.outcome == SHIP_RETRY && !v.in_doubt, "a refused connection is retried, not in doubt");
	v = shipsync_classify(CURLE_RECV_ERROR, 0, 1, 1);
	check(v.outcome == SHIP_RETRY && v.in_doubt && strcmp(v.error_class, "connection_lost") == 0,
		  "a reset after sending is retried, in doubt");
	v = shipsync_classify(CURLE_SEND_FAIL_REWIND, 0, 1, 1);
	check(v.outcome == SHIP_RETRY && v.in_doubt && strcmp(v.error_class, "connection_lost") == 0,
		  "a dead reused connection after sending is retried by us, in doubt");
	v = shipsync_classify(CURLE_GOT_NOTHING, 0, 1, 1);
	check(v.outcome == SHIP_RETRY, "an empty reply is retried");
	v = shipsync_classify(CURLE_WRITE_ERROR, 0, 1, 1);
	check(v.outcome == SHIP_RETRY && strcmp(v.error_class, "response_too_large") == 0,
		  "an oversized response is retried");
	v = shipsync_classify(CURLE_PEER_FAILED_VERIFICATION, 0, 0, 1);
	check(v.outcome == SHIP_DEAD && strcmp(v.error_class, "tls") == 0,
		  "a certificate that fails verification is classed tls, permanent");
	v = shipsync_classify(CURLE_SSL_PINNEDPUBKEYNOTMATCH, 0, 0, 1);
	check(v.outcome == SHIP_DEAD && strcmp(v.error_class, "tls") == 0 && !v.in_doubt,
		  "a key that is not the pinned one is classed tls, permanent");
	v = shipsync_classify(CURLE_SSL_CONNECT_ERROR, 0, 0, 1);
	check(v.outcome == SHIP_RETRY && strcmp(v.error_class, "connection_lost") == 0 && !v.in_doubt,
		  "a handshake cut short is a lost connection, retried");
	check(shipsync_tls_alert(CURLE_RECV_ERROR, "OpenSSL SSL_read: OpenSSL/3.0.19: error:0A00045C:"
							 "SSL routines::tlsv13 alert certificate required, errno 0") &&
		  shipsync_tls_alert(CURLE_SSL_CONNECT_ERROR, "OpenSSL/3.0.19: error:0A000410:"
							 "SSL routines::sslv3 alert handshake failure"),
		  "a TLS alert of the server is a refusal, in a handshake or in a TLS 1.3 read");
	check(!shipsync_tls_alert(CURLE_RECV_ERROR, "OpenSSL SSL_read: OpenSSL/3.0.19: error:0A000126:"
							  "SSL routines::unexpected eof while reading, errno 0") &&
		  !shipsync_tls_alert(CURLE_SSL_CONNECT_ERROR, "OpenSSL SSL_connect: Connection reset by peer") &&
		  !shipsync_tls_alert(CURLE_RECV_ERROR, "Recv failure: Connection reset by peer") &&
		  !shipsync_tls_alert(CURLE_OPERATION_TIMEDOUT, "SSL routines:: alert x"),
		  "a connection cut short is not a TLS refusal");
	v = shipsync_classify(CURLE_OUT_OF_MEMORY, 0, 0, 1);
	check(v.outcome == SHIP_RETRY && strcmp(v.error_class, "resource") == 0,
		  "a resource failure is retried");
}

static void
test_retry_after(void)
{
	time_t		now = 1700000000;	/* Tue, 14 Nov 2023 22:13:20 GMT */

	check(shipsync_parse_wait("120", false, now) == 120000, "Retry-After in seconds");
	check(shipsync_parse_wait(" 0 ", false, now) == 0, "Retry-After 0 with spaces");
	check(shipsync_parse_wait("Tue, 14 Nov 2023 22:13:50 GMT", false, now) == 30000,
		  "Retry-After as an HTTP date");
	check(shipsync_parse_wait("Tue, 14 Nov 2023 22:00:00 GMT", false, now) == 0,
		  "an HTTP date in the past means now");
	check(shipsync_parse_wait("999999999", false, now) == 86400000L, "Retry-After is capped at a day");
	check(shipsync_parse_wait("Fri, 01 Jan 2100 00:00:00 GMT", false, now) == 86400000L,
		  "so is a date years away");
	check(shipsync_parse_wait("99999999999999999999999999999999", false, now) == 86400000L,
		  "a Retry-After of 32 digits is a day, not an overflow");
	check(shipsync_parse_wait("soon", false, now) == -1, "an unreadable Retry-After is ignored");
	check(shipsync_parse_wait("1.5", false, now) == -1, "a fractional Retry-After is ignored");
	check(shipsync_parse_wait(NULL, false, now) == -1, "no Retry-After");
	check(shipsync_parse_wait("", false, now) == -1, "an empty Retry-After");
	check(shipsync_parse_wait("1700000000", false, now) == 86400000L,
		  "a Retry-After is never a Unix time");
}

static void
test_ratelimit_reset(void)
{
	time_t		now = 1700000000;

	check(shipsync_parse_wait("30", true, now) == 30000, "X-RateLimit-Reset in seconds");
	check(shipsync_parse_wait("86399", true, now) == 86399000L, "seconds up to a day");
	check(shipsync_parse_wait("1700000045", true, now) == 45000, "a Unix time");
	check(shipsync_parse_wait("1600000000", true, now) == 0, "a Unix time past means now");
	check(shipsync_parse_wait("86400", true, now) == 0, "86400 is a Unix time, in 1970");
	check(shipsync_parse_wait("1700000045000", true, now) == 45000, "a Unix time in milliseconds");
	check(shipsync_parse_wait("1700000000999", true, now) == 0, "a millisecond time within this second");
	check(shipsync_parse_wait("4102444800", true, now) == 86400000L,
		  "a Unix time in 2100 is capped at a day");
	check(shipsync_parse_wait("4102444800000", true, now) == 86400000L,
		  "so is one in milliseconds");
	check(shipsync_parse_wait("9200000000000000", true, now) == 86400000L,
		  "a time past the last timestamp is a day");
	check(shipsync_parse_wait("10000000000000000", true, now) == 86400000L, "so is 10^16");
	check(shipsync_parse_wait("99999999999999999999999999999999", true, now) == 86400000L,
		  "so are 32 digits");
	check(shipsync_parse_wait("Fri, 01 Jan 2100 00:00:00 GMT", true, now) == 86400000L,
		  "an HTTP date years away is capped at a day");
	check(shipsync_parse_wait("Tue, 14 Nov 2023 22:13:50 GMT", true, now) == 30000,
		  "an HTTP date");
	check(shipsync_parse_wait("-5", true, now) == -1, "a negative reset is ignored");
	check(shipsync_parse_wait("12abc", true, now) == -1, "digits then text are ignored");
}

static void
test_backoff(void)
{
	int			ok = 1;

	for (int a = 1; a <= 30; a++)
	{
		long		hi = shipsync_backoff_ms(a, 1000, 300000, 0.999999);
		long		lo = shipsync_backoff_ms(a, 1000, 300000, 0.0);
		long		cap = a >= 10 ? 300000 : 1000L << (a - 1);

		if (lo != 0 || hi > cap || hi < cap * 0.99)
			ok = 0;
	}
	check(ok, "full jitter: uniform in [0, min(cap, base * 2^(n-1))]");
	check(shipsync_backoff_ms(1000, 1000, 300000, 0.5) == 150000, "huge attempt numbers stay capped");
	check(shipsync_backoff_ms(3, 100, 50, 0.5) == 50, "a cap below the base is raised to the base");
}

/* What last_error keeps of a carrier's answer */
/* an excerpt of a string literal, its NUL bytes included */
#define EXCERPT(lit) shipsync_excerpt(lit, sizeof(lit) - 1, 300, out, sizeof(out))

static void
test_excerpt(void)
{
	char		out[6 * 300 + 4];
	char		big[2000];
	char		again[6 * 300 + 4];
	int			chars = 0;

	EXCERPT("{\"error\": \"bad\"}");
	check(strcmp(out, "{\"error\": \"bad\"}") == 0, "a short answer is kept as it is");
	EXCERPT("a\r\nX-Evil: 1\tb\x1b[31m\x7f");
	check(strcmp(out, "a\\r\\nX-Evil: 1\\tb\\x1b[31m\\x7f") == 0, "control characters are escaped");
	EXCERPT("n\0ul");
	check(strcmp(out, "n\\x00ul") == 0, "a NUL byte is escaped, not an end");
	EXCERPT("\xff\xfe ok \xe4\xb8");
	check(strcmp(out, "\\xff\\xfe ok \\xe4\\xb8") == 0, "bytes that are not UTF-8 are escaped");
	EXCERPT("\xc0\xaf \xed\xa0\x80");
	check(strcmp(out, "\\xc0\\xaf \\xed\\xa0\\x80") == 0, "overlong forms and surrogates are escaped");
	EXCERPT("\xc2\x85|\xe5\xbf\xab\xe9\x80\x92");
	check(strcmp(out, "\\u0085|快递") == 0, "C1 controls are escaped, Chinese kept");

	memset(big, 'x', sizeof(big));
	shipsync_excerpt(big, sizeof(big), 300, out, sizeof(out));
	check(strlen(out) == 299 + 3 && strcmp(out + 299, "\xE2\x80\xA6") == 0,
		  "a long answer is cut to 300 characters, the last one \"…\"");
	for (size_t i = 0; i < sizeof(big) - 2; i += 3)
		memcpy(big + i, "\xe5\xbf\xab", 3);
	shipsync_excerpt(big, sizeof(big) - 2, 300, out, sizeof(out));
	for (const unsigned char *p = (const unsigned char *) out; *p; p++)
		chars += (*p & 0xC0) != 0x80;
	check(chars == 300 && strlen(out) == 300 * 3, "multi-byte characters count as one, never cut in two");
	memset(big, '\n', sizeof(big));
	shipsync_excerpt(big, sizeof(big), 300, out, sizeof(out));
	check(strlen(out) == 298 + 3 && strncmp(out + 294, "\\n\\n\xE2\x80\xA6", 7) == 0,
		  "an escape is never cut in two");
	shipsync_excerpt(out, strlen(out), 300, again, sizeof(again));
	check(strcmp(out, again) == 0, "an excerpt of an excerpt is the same");
	shipsync_excerpt(NULL, 5, 300, out, sizeof(out));
	check(out[0] == '\0', "no answer, an empty excerpt");
	shipsync_excerpt(big, sizeof(big), 300, out, 20);
	check(strlen(out) < 20, "a small buffer is never overrun");
}

/* a carrier's list of its shipments, a page at a time */
static int
list(const char *body, ShipListPage *pg, char *err)
{
	return shipsync_parse_shipment_list(body, strlen(body), pg, err, 256);
}

static void
test_shipment_list(void)
{
	ShipListPage pg;
	char		err[256];
	const char *page =
		"{\"shipments\": [{\"id\": \"shp_1\", \"order_ref\": \"1042\", \"tracking_number\": \"SIM1\","
		" \"status\": \"in_transit\", \"updated_at\": \"2026-03-01T08:30:00Z\","
		" \"fees\": [{\"type\": \"freight\", \"amount\": \"12.50\"}]},"
		" {\"id\": 7, \"order_ref\": 1043, \"tracking_number\": null}], \"next_cursor\": \"c2\"}";

	check(list(page, &pg, err) && pg.n == 2 &&
		  strcmp(pg.items[0].id, "shp_1") == 0 && strcmp(pg.items[0].order_ref, "1042") == 0 &&
		  strcmp(pg.items[0].status, "in_transit") == 0 &&
		  strcmp(pg.items[0].updated_at, "2026-03-01T08:30:00Z") == 0 &&
		  strstr(pg.items[0].fees, "12.50") != NULL && strcmp(pg.next_cursor, "c2") == 0,
		  "list: a page is read, fees kept as JSON, the cursor kept");
	check(strcmp(pg.items[1].id, "7") == 0 && strcmp(pg.items[1].order_ref, "1043") == 0 &&
		  pg.items[1].tracking_number == NULL && pg.items[1].fees == NULL,
		  "list: numeric ids are text, null members absent");
	shipsync_free_shipment_list(&pg);

	check(list("{\"shipments\": [], \"next_cursor\": null}", &pg, err) && pg.n == 0 &&
		  pg.next_cursor == NULL, "list: an empty last page");
	shipsync_free_shipment_list(&pg);
	check(list("{\"shipments\": []}", &pg, err) && pg.next_cursor == NULL,
		  "list: no cursor, the last page");
	shipsync_free_shipment_list(&pg);
	check(!list("{\"items\": []}", &pg, err) &&
		  strstr(err, "\"shipments\"") != NULL, "list: no shipments array is refused");
	shipsync_free_shipment_list(&pg);
	check(!list("{\"shipments\": [{\"order_ref\": \"1\"}]}", &pg, err) &&
		  strstr(err, "shipment 1 has no \"id\"") != NULL, "list: a shipment without id is refused");
	shipsync_free_shipment_list(&pg);
	check(!list("{\"shipments\": [], \"next_cursor\": 3}", &pg, err),
		  "list: a cursor that is not a string is refused");
	shipsync_free_shipment_list(&pg);
	check(!list("{\"shipments\": [{\"id\": \"a\", \"fees\": [{\"type\": \"f\", \"amount\": \"x\"}]}]}",
				&pg, err) &&
		  strstr(err, "non-numeric") != NULL, "list: a bad fee amount is refused");
	shipsync_free_shipment_list(&pg);
	check(!list("{\"shipments\": [1, 2]}", &pg, err),
		  "list: shipments that are not objects are refused");
	shipsync_free_shipment_list(&pg);
	check(!list("{\"shipments\": [", &pg, err) &&
		  strstr(err, "not valid JSON") != NULL, "list: truncated JSON is refused");
	shipsync_free_shipment_list(&pg);
}

/* in test_tracking.c, test_hostcheck.c, test_csv.c, test_cpuroom.c, test_hugeheap.c and test_prefault.c */
void		test_tracking(void (*check) (int, const char *));
void		test_hostcheck(void (*check) (int, const char *));
void		test_csv(void (*check) (int, const char *));
void		test_cpuroom(void (*check) (int, const char *));
void		test_hugeheap(void (*check) (int, const char *));
void		test_prefault(void (*check) (int, const char *));

int
main(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	test_responses();
	test_storable();
	test_tracking_big_integers();
	test_sf_wrapped_big_integers();
	test_utf8_offsets();
	test_tokener_reuse();
	test_fee_ranges();
	test_classify();
	test_retry_after();
	test_ratelimit_reset();
	test_backoff();
	test_excerpt();
	test_shipment_list();
	test_tracking(check);
	test_hostcheck(check);
	test_csv(check);
	test_cpuroom(check);
	test_hugeheap(check);
	test_prefault(check);
	curl_global_cleanup();
	return unit_done();
}
