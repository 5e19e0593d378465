/*
 * test_tracking.c
 *		Unit tests of the webhook signatures (signature.c, with the check
 *		of a push during a rotation of its secret) and the tracking
 *		payload readers (json.c), on published vectors: RFC 4231 for
 *		HMAC-SHA256, RFC 1321 for MD5, Standard Webhooks' own test vector.
 *
 * Called from test_parsers.c, which owns the TAP counter.
 */
#define SHIPSYNC_PLAIN_C
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_shipsync.h"

void		test_tracking(void (*check) (int, const char *));

/* each dialect's reader, as its routine in src/dialects/ points at it */
static int
parse(const char *dialect, const char *body, TrackEventList *l, char *err)
{
	static const struct
	{
		const char *name;
		TrackingReader read;
	}			readers[] = {
		{"generic", shipsync_parse_tracking_generic},
		{"easypost", shipsync_parse_tracking_easypost},
		{"aftership", shipsync_parse_tracking_aftership},
		{"kuaidi100", shipsync_parse_tracking_kuaidi100},
		{"sf_express", shipsync_parse_tracking_sf_express},
	};

	for (size_t i = 0; i < sizeof(readers) / sizeof(readers[0]); i++)
		if (strcmp(readers[i].name, dialect) == 0)
			return readers[i].read(body, strlen(body), l, err, 256);
	fprintf(stderr, "no tracking reader for %s\n", dialect);
	abort();
}

/* The 简道云 vector below checked with one secret: a SigCheck, arg the signature */
static SigResult
jdy_check(const char *secret, void *arg, const char **reason)
{
	return shipsync_verify_jiandaoyun(secret, "n1", "1700000000", (const char *) arg,
									  "{\"op\": \"data_create\"}", 21, reason);
}

void
test_tracking(void (*check) (int, const char *))
{
	unsigned char mac[32];
	char		hex[65];
	char		b64[64];
	unsigned char raw[64];
	const char *why;
	char	   *f;
	TrackEventList l;
	char		err[256];
	const char *sw_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
	const char *sw_body = "{\"test\": 2432232314}";

	/* RFC 4231, test case 2 */
	shipsync_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, mac);
	shipsync_hex_encode(mac, 32, hex, false);
	check(strcmp(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843") == 0,
		  "HMAC-SHA256: RFC 4231 test case 2");
	shipsync_base64_encode((const unsigned char *) "foobar", 6, b64);
	check(strcmp(b64, "Zm9vYmFy") == 0, "base64 of a multiple of 3 bytes");
	shipsync_base64_encode((const unsigned char *) "fooba", 5, b64);
	check(strcmp(b64, "Zm9vYmE=") == 0, "base64 with padding");
	check(shipsync_base64_decode("Zm9vYg==", 8, raw) == 4 && memcmp(raw, "foob", 4) == 0,
		  "base64 decodes, padded");
	check(shipsync_base64_decode("Zm9v!mE=", 8, raw) < 0, "base64 refuses a foreign character");
	check(shipsync_base64_decode("Z", 1, raw) < 0, "base64 refuses a lone character");
	check(!shipsync_ct_equal("abc", 3, "abcd", 4) && shipsync_ct_equal("abc", 3, "abc", 3) &&
		  !shipsync_ct_equal("abc", 3, "abd", 3), "constant-time equality");

	/* Standard Webhooks, the libraries' sign-function vector */
	check(shipsync_verify_standard_webhooks(sw_secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330",
											"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
											sw_body, strlen(sw_body), 1614265330, 300, &why) == SIG_OK,
		  "Standard Webhooks: the published vector verifies");
	check(shipsync_verify_standard_webhooks(sw_secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330",
											"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
											sw_body, strlen(sw_body), 1614265330, 300, &why) == SIG_MISMATCH,
		  "Standard Webhooks: the near miss does not");
	check(shipsync_verify_standard_webhooks(sw_secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330",
											"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
											sw_body, strlen(sw_body), 1614265330 + 301, 300, &why) == SIG_STALE,
		  "Standard Webhooks: 301 s late is stale");
	check(shipsync_verify_standard_webhooks(sw_secret, NULL, "1614265330", "v1,x",
											sw_body, strlen(sw_body), 1614265330, 300, &why) == SIG_MISSING,
		  "Standard Webhooks: a missing header");
	check(shipsync_verify_standard_webhooks("whsec_!!", "m", "1", "v1,x", "", 0, 1, 300, &why) == SIG_NO_SECRET,
		  "Standard Webhooks: a secret that is not base64");

	/* HMAC over the body, hex and base64 (RFC 4231 case 2 as the body) */
	check(shipsync_verify_hmac_body("Jefe", "hmac-sha256-hex=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
									"hmac-sha256-hex=", true, "what do ya want for nothing?", 28, &why) == SIG_OK,
		  "EasyPost form: hex with prefix");
	check(shipsync_verify_hmac_body("Jefe", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
									"hmac-sha256-hex=", true, "what do ya want for nothing?", 28, &why) == SIG_MALFORMED,
		  "EasyPost form: the prefix is required");
	check(shipsync_verify_hmac_body("Jefe", "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=",
									NULL, false, "what do ya want for nothing?", 28, &why) == SIG_OK,
		  "AfterShip form: base64");
	check(shipsync_verify_hmac_body("Jefe", "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=",
									NULL, false, "what do ya want for nothing!", 28, &why) == SIG_MISMATCH,
		  "AfterShip form: one byte changed");

	/* Kuaidi100: UPPER(MD5(param + salt)); RFC 1321: MD5("abc") */
	check(shipsync_verify_kuaidi100("c", "ab", "900150983CD24FB0D6963F7D28E17F72", &why) == SIG_OK,
		  "Kuaidi100 sign: MD5 of param and salt");
	check(shipsync_verify_kuaidi100("c", "ab", "900150983cd24fb0d6963f7d28e17f72", &why) == SIG_OK,
		  "Kuaidi100 sign: compared without regard to case");
	check(shipsync_verify_kuaidi100("d", "ab", "900150983CD24FB0D6963F7D28E17F72", &why) == SIG_MISMATCH,
		  "Kuaidi100 sign: another salt");

	/*
	 * 简道云: lowercase hex SHA-1 of nonce:body:secret:timestamp (the
	 * expected value from Python's hashlib, an independent implementation)
	 */
	check(shipsync_verify_jiandaoyun("test-secret", "n1", "1700000000",
									 "c19125fa65c6a7a05c12fe4ebce5d0f85e7d153f",
									 "{\"op\": \"data_create\"}", 21, &why) == SIG_OK,
		  "简道云: SHA-1 of nonce:body:secret:timestamp");
	check(shipsync_verify_jiandaoyun("test-secret", "n1", "1700000000",
									 "C19125FA65C6A7A05C12FE4EBCE5D0F85E7D153F",
									 "{\"op\": \"data_create\"}", 21, &why) == SIG_OK,
		  "简道云: compared without regard to case");
	check(shipsync_verify_jiandaoyun("test-secret", "n1", "1700000001",
									 "c19125fa65c6a7a05c12fe4ebce5d0f85e7d153f",
									 "{\"op\": \"data_create\"}", 21, &why) == SIG_MISMATCH,
		  "简道云: another timestamp");
	check(shipsync_verify_jiandaoyun("test-secret", "n1", "1700000000",
									 "c19125fa65c6a7a05c12fe4ebce5d0f85e7d153f",
									 "{\"op\":\"data_create\"}", 20, &why) == SIG_MISMATCH,
		  "简道云: the body re-serialised");
	check(shipsync_verify_jiandaoyun("test-secret", NULL, "1700000000", "c19125fa65c6a7a05c12fe4ebce5d0f85e7d153f", "x", 1, &why) == SIG_MISSING,
		  "简道云: no nonce");
	check(shipsync_verify_jiandaoyun(NULL, "n1", "1", "c19125fa65c6a7a05c12fe4ebce5d0f85e7d153f", "x", 1, &why) == SIG_NO_SECRET,
		  "简道云: no secret configured");
	check(shipsync_verify_jiandaoyun("s", "n1", "1", "abc", "x", 1, &why) == SIG_MALFORMED,
		  "简道云: not 40 hex digits");

	/* a rotation: the current secret, then the previous one */
	{
		char	   *good = "c19125fa65c6a7a05c12fe4ebce5d0f85e7d153f";

		check(shipsync_verify_rotating(jdy_check, good, "test-secret", "old", &why) == SIG_OK,
			  "rotation: signed with the current secret");
		check(shipsync_verify_rotating(jdy_check, good, "new", "test-secret", &why) == SIG_OK,
			  "rotation: signed with the previous secret");
		check(shipsync_verify_rotating(jdy_check, good, "new", "old", &why) == SIG_MISMATCH &&
			  strstr(why, "does not match") != NULL,
			  "rotation: signed with neither");
		check(shipsync_verify_rotating(jdy_check, good, "new", NULL, &why) == SIG_MISMATCH,
			  "rotation: none under way, the current secret alone");
		check(shipsync_verify_rotating(jdy_check, "abc", "new", "test-secret", &why) == SIG_MALFORMED,
			  "rotation: a malformed signature fails on the current secret's verdict");
		check(shipsync_verify_rotating(jdy_check, good, NULL, "test-secret", &why) == SIG_OK,
			  "rotation: only the previous secret set, and it signs");
		check(shipsync_verify_rotating(jdy_check, good, NULL, "old", &why) == SIG_MISMATCH &&
			  strstr(why, "does not match") != NULL,
			  "rotation: only the previous secret set: its verdict and reason");
	}

	/* form fields */
	f = shipsync_form_field("a=1&param=%7B%22a%22%3A+1%7D&sign=X", 35, "param");
	check(f && strcmp(f, "{\"a\": 1}") == 0, "form: %XX and + decoded");
	free(f);
	f = shipsync_form_field("param=%7", 8, "param");
	check(f == NULL, "form: a cut %XX is refused");
	f = shipsync_form_field("params=1", 8, "param");
	check(f == NULL, "form: names match whole");
	f = shipsync_form_field("param=a%00b", 11, "param");
	check(f == NULL, "form: an embedded NUL is refused");

	/* payloads */
	check(parse("generic", "{\"events\":[{\"id\":\"e1\",\"tracking_number\":\"T\",\"status\":\"delivered\","
				"\"occurred_at\":\"2026-03-01T10:00:00Z\",\"location\":\"Hub\"}]}", &l, err) &&
		  l.n == 1 && strcmp(l.ev[0].key, "e1") == 0 && strcmp(l.ev[0].location, "Hub") == 0 &&
		  l.ev[0].description == NULL, "generic: one event");
	shipsync_free_tracking(&l);
	check(!parse("generic", "{\"events\":[{\"id\":\"e1\",\"status\":\"x\",\"occurred_at\":\"t\"}]}", &l, err) &&
		  strstr(err, "event 1 lacks") != NULL, "generic: a missing tracking_number is named");
	shipsync_free_tracking(&l);
	check(parse("kuaidi100", "{\"status\":\"abort\",\"lastResult\":{\"nu\":\"YT1\",\"com\":\"yt\",\"state\":\"3\","
				"\"data\":[{\"time\":\"2021-01-02 10:00:00\",\"context\":\"签收\",\"status\":\"签收\"},"
				"{\"time\":\"2021-01-01 10:00:00\",\"context\":\"揽收\",\"statusCode\":\"1\"}]}}", &l, err) &&
		  l.n == 3 && strcmp(l.ev[0].raw_status, "1") == 0 && strcmp(l.ev[1].raw_status, "3") == 0 &&
		  strcmp(l.ev[2].raw_status, "abort") == 0 && l.ev[2].occurred_at == NULL,
		  "kuaidi100: history exploded oldest first, state on the newest, abort last");
	shipsync_free_tracking(&l);
	check(parse("easypost", "{\"description\":\"batch.created\",\"result\":{}}", &l, err) && l.n == 0,
		  "easypost: events that are not about trackers are ignored");
	shipsync_free_tracking(&l);
	check(parse("aftership", "{\"msg\":{\"id\":\"a1\",\"tracking_number\":\"T\",\"tag\":\"Delivered\","
				"\"updated_at\":\"2021-08-24T10:40:08+00:00\",\"checkpoints\":[]}}", &l, err) &&
		  l.n == 1 && strcmp(l.ev[0].raw_status, "Delivered") == 0,
		  "aftership: a tracking without checkpoints gives its tag");
	shipsync_free_tracking(&l);
	check(!parse("sf_express", "{\"Body\":{\"WaybillRoute\":{}}}", &l, err), "sf_express: routes must be an array");
	shipsync_free_tracking(&l);
	check(!parse("generic", "{\"events\":[]} x", &l, err) && strstr(err, "not valid JSON"),
		  "trailing garbage is refused");
	shipsync_free_tracking(&l);
}
