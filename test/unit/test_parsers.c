/*
 * test_parsers.c
 *		Unit tests of the carrier-response parser and the retry rules.
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
		  strcmp(r.status, "pre_transit") == 0 && r.has_fees,
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
	check(parse("{\"id\":\"x\",\"tracking_number\":\"T\",\"fees\":null}", 1, &r, err) && !r.has_fees,
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
	check(v.outcome == SHIP_RETRY && strcmp(v.error_class, "tls") == 0, "a TLS failure is classed tls");
	v = shipsync_classify(CURLE_OUT_OF_MEMORY, 0, 0, 1);
	check(v.outcome == SHIP_RETRY && strcmp(v.error_class, "resource") == 0,
		  "a resource failure is retried");
}

static void
test_retry_after(void)
{
	time_t		now = 1700000000;	/* Tue, 14 Nov 2023 22:13:20 GMT */

	check(shipsync_parse_retry_after("120", now) == 120000, "Retry-After in seconds");
	check(shipsync_parse_retry_after(" 0 ", now) == 0, "Retry-After 0 with spaces");
	check(shipsync_parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now) == 30000,
		  "Retry-After as an HTTP date");
	check(shipsync_parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0,
		  "an HTTP date in the past means now");
	check(shipsync_parse_retry_after("999999999", now) == 86400000L, "Retry-After is capped at a day");
	check(shipsync_parse_retry_after("soon", now) == -1, "an unreadable Retry-After is ignored");
	check(shipsync_parse_retry_after("1.5", now) == -1, "a fractional Retry-After is ignored");
	check(shipsync_parse_retry_after(NULL, now) == -1, "no Retry-After");
	check(shipsync_parse_retry_after("", now) == -1, "an empty Retry-After");
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

/* in test_tracking.c */
void		test_tracking(void (*check) (int, const char *));

int
main(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	test_responses();
	test_classify();
	test_retry_after();
	test_backoff();
	test_tracking(check);
	curl_global_cleanup();
	return unit_done();
}
