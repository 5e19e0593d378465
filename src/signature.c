/*-------------------------------------------------------------------------
 *
 * signature.c
 *		Webhook signatures of the tracking dialects and CRM sources:
 *		HMAC-SHA256, MD5, SHA-1, base64, hex, constant-time comparison and
 *		the form decoding they need.
 *
 * Every scheme is computed over the raw bytes the carrier sent, never over
 * a re-serialisation: one changed byte (a trailing newline, a reordered
 * key) must fail the check.  Comparisons of MACs are constant-time
 * (shipsync_ct_equal() in crypto.c) on buffers of equal, fixed length, so a forger learns
 * nothing from timing but the length of what he sent.
 *
 * This file includes no PostgreSQL header: it is unit-tested and fuzzed
 * alone.  Results are malloc'd where they are strings; the callers free
 * them.  A verification answers a SigResult, and a static reason string
 * for the log that never contains a secret or a MAC.
 *
 *-------------------------------------------------------------------------
 */
#define SHIPSYNC_PLAIN_C
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#include "pg_shipsync.h"

#define SHA256_LEN 32

static bool
is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/*
 * Standard Webhooks (symmetric, v1): the key is base64 of the secret after
 * an optional "whsec_" prefix; the MAC is base64(HMAC-SHA256(key,
 * id "." timestamp "." body)); the header holds space-separated
 * "version,signature" entries, of which any v1 entry may match; the
 * timestamp must be within tolerance seconds of now.
 */
SigResult
shipsync_verify_standard_webhooks(const char *secret, const char *msg_id,
								  const char *timestamp, const char *sig_header,
								  const char *body, size_t body_len,
								  long now, long tolerance, const char **reason)
{
	unsigned char key[512];
	long		keylen;
	const char *s;
	char	   *end;
	long long	ts;
	unsigned char mac[SHA256_LEN];
	char		expected[64];
	size_t		explen;
	size_t		idlen,
				tslen,
				signed_len;
	char	   *signed_msg;
	bool		ok;
	const char *p;

	*reason = NULL;
	if (secret == NULL || secret[0] == '\0')
	{
		*reason = "no webhook secret is configured";
		return SIG_NO_SECRET;
	}
	if (msg_id == NULL || timestamp == NULL || sig_header == NULL)
	{
		*reason = "the webhook-id, webhook-timestamp or webhook-signature header is missing";
		return SIG_MISSING;
	}

	s = secret;
	if (strncmp(s, "whsec_", 6) == 0)
		s += 6;
	if (strlen(s) > sizeof(key) * 4 / 3 ||
		(keylen = shipsync_base64_decode(s, strlen(s), key)) <= 0)
	{
		*reason = "the configured webhook secret is not whsec_ followed by base64";
		return SIG_NO_SECRET;
	}

	errno = 0;
	ts = strtoll(timestamp, &end, 10);
	if (timestamp[0] == '\0' || *end != '\0' || errno != 0)
	{
		*reason = "the webhook-timestamp header is not a Unix time";
		return SIG_MALFORMED;
	}
	if (ts < (long long) now - tolerance || ts > (long long) now + tolerance)
	{
		*reason = "the webhook-timestamp is outside the tolerance window (replayed or clock skew)";
		return SIG_STALE;
	}

	/* HMAC over id "." timestamp "." body */
	idlen = strlen(msg_id);
	tslen = strlen(timestamp);
	signed_len = idlen + 1 + tslen + 1 + body_len;
	signed_msg = malloc(signed_len + 1);
	if (signed_msg == NULL)
	{
		*reason = "out of memory";
		return SIG_MISMATCH;
	}
	memcpy(signed_msg, msg_id, idlen);
	signed_msg[idlen] = '.';
	memcpy(signed_msg + idlen + 1, timestamp, tslen);
	signed_msg[idlen + 1 + tslen] = '.';
	memcpy(signed_msg + idlen + 1 + tslen + 1, body, body_len);
	ok = shipsync_hmac_sha256(key, (size_t) keylen, signed_msg, signed_len, mac);
	free(signed_msg);
	shipsync_cleanse(key, sizeof(key));
	if (!ok)
	{
		*reason = "the HMAC could not be computed";
		return SIG_MISMATCH;
	}
	shipsync_base64_encode(mac, SHA256_LEN, expected);
	explen = strlen(expected);

	/* every "v1,<sig>" entry is a candidate; other versions are ignored */
	ok = false;
	p = sig_header;
	while (*p)
	{
		const char *e;

		while (is_space(*p))
			p++;
		if (*p == '\0')
			break;
		e = p;
		while (*e && !is_space(*e))
			e++;
		if (e - p > 3 && strncmp(p, "v1,", 3) == 0 &&
			shipsync_ct_equal(p + 3, (size_t) (e - p - 3), expected, explen))
			ok = true;			/* keep scanning: constant work per entry */
		p = e;
	}
	if (!ok)
		*reason = "no v1 signature in webhook-signature matches";
	return ok ? SIG_OK : SIG_MISMATCH;
}

/*
 * A MAC header against HMAC-SHA256(secret, body), hex (EasyPost, after a
 * "hmac-sha256-hex=" prefix) or base64 (AfterShip).  The caller has
 * already NFKD-normalised an EasyPost secret.
 */
SigResult
shipsync_verify_hmac_body(const char *secret, const char *presented,
						  const char *prefix, bool hex,
						  const char *body, size_t body_len, const char **reason)
{
	unsigned char mac[SHA256_LEN];
	char		expected[2 * SHA256_LEN + 1];
	size_t		plen;

	*reason = NULL;
	if (secret == NULL || secret[0] == '\0')
	{
		*reason = "no webhook secret is configured";
		return SIG_NO_SECRET;
	}
	if (presented == NULL)
	{
		*reason = "the signature header is missing";
		return SIG_MISSING;
	}
	plen = prefix ? strlen(prefix) : 0;
	if (plen > 0 && strncmp(presented, prefix, plen) != 0)
	{
		*reason = "the signature header does not start with the expected scheme";
		return SIG_MALFORMED;
	}
	presented += plen;
	if (!shipsync_hmac_sha256(secret, strlen(secret), body, body_len, mac))
	{
		*reason = "the HMAC could not be computed";
		return SIG_MISMATCH;
	}
	if (hex)
		shipsync_hex_encode(mac, SHA256_LEN, expected, false);
	else
		shipsync_base64_encode(mac, SHA256_LEN, expected);
	if (!shipsync_ct_equal(presented, strlen(presented), expected, strlen(expected)))
	{
		*reason = "the signature does not match the body";
		return SIG_MISMATCH;
	}
	return SIG_OK;
}

/*
 * Kuaidi100 push: sign = UPPER(HEX(MD5(param + salt))), param being the
 * form value after decoding.  The presented sign is compared upper-cased.
 */
SigResult
shipsync_verify_kuaidi100(const char *salt, const char *param, const char *sign,
						  const char **reason)
{
	const void *parts[2];
	size_t		lens[2];
	unsigned char md[16];
	char		expected[33];
	char		given[33];
	size_t		n;

	*reason = NULL;
	if (salt == NULL || salt[0] == '\0')
	{
		*reason = "no webhook secret (the subscription's salt) is configured";
		return SIG_NO_SECRET;
	}
	if (param == NULL || sign == NULL)
	{
		*reason = "the form field param or sign is missing";
		return SIG_MISSING;
	}
	n = strlen(sign);
	if (n != 32)
	{
		*reason = "the sign is not 32 hex digits";
		return SIG_MALFORMED;
	}
	for (size_t i = 0; i < n; i++)
		given[i] = (char) toupper((unsigned char) sign[i]);
	given[n] = '\0';

	parts[0] = param;
	lens[0] = strlen(param);
	parts[1] = salt;
	lens[1] = strlen(salt);
	if (!shipsync_digest(SHIPSYNC_MD5, 2, parts, lens, md))
	{
		*reason = "the MD5 could not be computed";
		return SIG_MISMATCH;
	}
	shipsync_hex_encode(md, 16, expected, true);
	if (!shipsync_ct_equal(given, 32, expected, 32))
	{
		*reason = "the sign does not match param and salt";
		return SIG_MISMATCH;
	}
	return SIG_OK;
}

/*
 * 简道云 data push: X-JDY-Signature is the lowercase hex SHA-1 of
 * nonce ":" body ":" secret ":" timestamp, nonce and timestamp being the
 * query parameters of the push and body its raw bytes.  The presented
 * signature is compared lower-cased.
 */
SigResult
shipsync_verify_jiandaoyun(const char *secret, const char *nonce,
						   const char *timestamp, const char *presented,
						   const char *body, size_t body_len,
						   const char **reason)
{
	const void *parts[7] = {nonce, ":", body, ":", secret, ":", timestamp};
	size_t		lens[7];
	unsigned char md[20];
	char		expected[41];
	char		given[41];
	size_t		n;

	*reason = NULL;
	if (secret == NULL || secret[0] == '\0')
	{
		*reason = "no push secret is configured";
		return SIG_NO_SECRET;
	}
	if (presented == NULL)
	{
		*reason = "the X-JDY-Signature header is missing";
		return SIG_MISSING;
	}
	if (nonce == NULL || timestamp == NULL)
	{
		*reason = "the query parameter nonce or timestamp is missing";
		return SIG_MISSING;
	}
	n = strlen(presented);
	if (n != 40)
	{
		*reason = "the X-JDY-Signature is not 40 hex digits";
		return SIG_MALFORMED;
	}
	for (size_t i = 0; i < n; i++)
		given[i] = (char) tolower((unsigned char) presented[i]);
	given[n] = '\0';
	for (int i = 0; i < 7; i++)
		lens[i] = i == 2 ? body_len : strlen((const char *) parts[i]);

	if (!shipsync_digest(SHIPSYNC_SHA1, 7, parts, lens, md))
	{
		*reason = "the SHA-1 could not be computed";
		return SIG_MISMATCH;
	}
	shipsync_hex_encode(md, 20, expected, false);
	if (!shipsync_ct_equal(given, 40, expected, 40))
	{
		*reason = "the X-JDY-Signature does not match the body, nonce and timestamp";
		return SIG_MISMATCH;
	}
	return SIG_OK;
}

/*
 * A push checked while its secret is being rotated: with the current
 * secret, then, if that one does not match or is not set, with the
 * previous one (NULL when no rotation is under way).  A push whose
 * signature is missing, malformed or stale fails on the current secret's
 * verdict alone.  check verifies arg, the caller's push, with one secret.
 * *reason is the current secret's, or the previous one's when only that
 * one is set.
 */
SigResult
shipsync_verify_rotating(SigCheck check, void *arg, const char *current,
						 const char *previous, const char **reason)
{
	const char *reason2 = NULL;
	SigResult	r = check(current, arg, reason);
	SigResult	r2;

	if (r == SIG_OK || previous == NULL || (r != SIG_MISMATCH && r != SIG_NO_SECRET))
		return r;
	r2 = check(previous, arg, &reason2);
	if (r2 == SIG_OK || r == SIG_NO_SECRET)
	{
		*reason = reason2;
		return r2;
	}
	return r;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * The value of field name in an application/x-www-form-urlencoded body,
 * decoded ("+" is a space, %XX a byte), malloc'd; NULL when absent or
 * badly escaped.  The first occurrence wins.
 */
char *
shipsync_form_field(const char *body, size_t len, const char *name)
{
	size_t		nlen = strlen(name);
	size_t		i = 0;

	while (i < len)
	{
		size_t		j = i;
		size_t		eq;

		while (j < len && body[j] != '&')
			j++;
		eq = i;
		while (eq < j && body[eq] != '=')
			eq++;
		if (eq - i == nlen && memcmp(body + i, name, nlen) == 0)
		{
			char	   *out = malloc(j - eq + 1);
			size_t		o = 0;

			if (out == NULL)
				return NULL;
			for (size_t k = eq + 1; k < j; k++)
			{
				if (body[k] == '+')
					out[o++] = ' ';
				else if (body[k] == '%')
				{
					int			h,
								l;

					if (k + 2 >= j)
					{
						free(out);
						return NULL;
					}
					h = hexval(body[k + 1]);
					l = hexval(body[k + 2]);
					if (h < 0 || l < 0)
					{
						free(out);
						return NULL;
					}
					out[o++] = (char) (h * 16 + l);
					k += 2;
				}
				else
					out[o++] = body[k];
			}
			out[o] = '\0';
			if (memchr(out, '\0', o) != NULL)
			{
				/* an embedded NUL cannot be a param or a sign */
				free(out);
				return NULL;
			}
			return out;
		}
		i = j + 1;
	}
	return NULL;
}
