/*
 * test_crypto.c
 *		Unit tests of crypto.c: AES-256-GCM on known answers, the sealing
 *		of secrets, and key files.
 *
 * The known answers are test cases 13 to 16 of the GCM specification
 * (D. McGrew and J. Viega, "The Galois/Counter Mode of Operation (GCM)",
 * as submitted to and published by NIST, csrc.nist.gov), the AES-256 ones
 * with a 96-bit IV: empty plaintext, one zero block, four blocks, and a
 * truncated plaintext with associated data.  See test/vectors/README.md.
 *
 * Prints TAP ("ok N - ...", "not ok N - ...") so bin/test can count it.
 */
#define SHIPSYNC_PLAIN_C
#define _GNU_SOURCE				/* memmem */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_shipsync.h"
#include "unit.h"

typedef struct GcmVector
{
	const char *name;
	const char *key;
	const char *iv;
	const char *aad;
	const char *pt;
	const char *ct;
	const char *tag;
} GcmVector;

static const GcmVector gcm_vectors[] = {
	{"GCM test case 13 (AES-256, empty plaintext)",
		"0000000000000000000000000000000000000000000000000000000000000000",
		"000000000000000000000000", "", "", "",
	"530f8afbc74536b9a963b4f1c4cb738b"},
	{"GCM test case 14 (AES-256, one zero block)",
		"0000000000000000000000000000000000000000000000000000000000000000",
		"000000000000000000000000", "",
		"00000000000000000000000000000000",
		"cea7403d4d606b6e074ec5d3baf39d18",
	"d0d1c8a799996bf0265b98b5d48ab919"},
	{"GCM test case 15 (AES-256, four blocks)",
		"feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
		"cafebabefacedbaddecaf888", "",
		"d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
		"1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
		"522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
		"8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
	"b094dac5d93471bdec1a502270e3cc6c"},
	{"GCM test case 16 (AES-256, 60 bytes and associated data)",
		"feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
		"cafebabefacedbaddecaf888",
		"feedfacedeadbeeffeedfacedeadbeefabaddad2",
		"d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
		"1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
		"522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
		"8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
	"76fc6ece0f4e1768cddf8853bb2d551b"},
};

/* hex to bytes, malloc'd (at least one byte); *len gets the length */
static unsigned char *
unhex(const char *hex, size_t *len)
{
	size_t		n = strlen(hex) / 2;
	unsigned char *out = malloc(n + 1);

	for (size_t i = 0; i < n; i++)
	{
		unsigned int b;

		sscanf(hex + 2 * i, "%2x", &b);
		out[i] = (unsigned char) b;
	}
	*len = n;
	return out;
}

static void
test_gcm_vectors(void)
{
	for (size_t v = 0; v < sizeof(gcm_vectors) / sizeof(gcm_vectors[0]); v++)
	{
		const GcmVector *g = &gcm_vectors[v];
		size_t		klen,
					ivlen,
					aadlen,
					ptlen,
					ctlen,
					taglen;
		unsigned char *key = unhex(g->key, &klen);
		unsigned char *iv = unhex(g->iv, &ivlen);
		unsigned char *aad = unhex(g->aad, &aadlen);
		unsigned char *pt = unhex(g->pt, &ptlen);
		unsigned char *ct = unhex(g->ct, &ctlen);
		unsigned char *tag = unhex(g->tag, &taglen);
		unsigned char *out = malloc(ptlen + 1);
		unsigned char got_tag[SHIPSYNC_GCM_TAG_LEN];
		char		what[160];
		bool		ok;

		ok = shipsync_gcm_encrypt(key, iv, aad, aadlen, pt, ptlen, out, got_tag);
		snprintf(what, sizeof(what), "%s: ciphertext and tag", g->name);
		check(ok && klen == SHIPSYNC_KEY_LEN && ivlen == SHIPSYNC_GCM_NONCE_LEN &&
			  memcmp(out, ct, ctlen) == 0 && memcmp(got_tag, tag, taglen) == 0, what);

		memset(out, 0xA5, ptlen);
		ok = shipsync_gcm_decrypt(key, iv, aad, aadlen, ct, ctlen, tag, out);
		snprintf(what, sizeof(what), "%s: decrypts to the plaintext", g->name);
		check(ok && memcmp(out, pt, ptlen) == 0, what);

		tag[0] ^= 1;
		snprintf(what, sizeof(what), "%s: a flipped tag bit is refused", g->name);
		check(!shipsync_gcm_decrypt(key, iv, aad, aadlen, ct, ctlen, tag, out), what);
		tag[0] ^= 1;
		if (ctlen > 0)
		{
			ct[ctlen - 1] ^= 0x80;
			snprintf(what, sizeof(what), "%s: a flipped ciphertext bit is refused", g->name);
			check(!shipsync_gcm_decrypt(key, iv, aad, aadlen, ct, ctlen, tag, out), what);
			ct[ctlen - 1] ^= 0x80;
		}
		if (aadlen > 0)
		{
			snprintf(what, sizeof(what), "%s: other associated data is refused", g->name);
			check(!shipsync_gcm_decrypt(key, iv, aad, aadlen - 1, ct, ctlen, tag, out), what);
		}
		free(key);
		free(iv);
		free(aad);
		free(pt);
		free(ct);
		free(tag);
		free(out);
	}
}

/* value sealed for provider and name; malloc'd, *len its length */
static unsigned char *
seal(const unsigned char *key, const char *provider, const char *name,
	 const char *value, size_t *len)
{
	unsigned char *out = malloc(SHIPSYNC_SEALED_LEN(strlen(value)));

	*len = SHIPSYNC_SEALED_LEN(strlen(value));
	if (!shipsync_secret_seal(key, provider, name, value, strlen(value), out))
	{
		free(out);
		return NULL;
	}
	return out;
}

/* whether sealed opens for provider and name, to want */
static int
opens(const unsigned char *key, const char *provider, const char *name,
	  const unsigned char *sealed, size_t len, const char *want)
{
	char		value[256];

	memset(value, 0xA5, sizeof(value));
	if (!shipsync_secret_open(key, provider, name, sealed, len, value))
		return 0;
	return want != NULL && strcmp(value, want) == 0;
}

static void
test_seal(void)
{
	unsigned char key[SHIPSYNC_KEY_LEN];
	unsigned char other[SHIPSYNC_KEY_LEN];
	const char *token = "s3cret-t0ken/+=";
	unsigned char *a;
	unsigned char *b;
	size_t		alen,
				blen;
	char		value[64];

	check(shipsync_random_bytes(key, sizeof(key)) && shipsync_random_bytes(other, sizeof(other)) &&
		  memcmp(key, other, sizeof(key)) != 0, "random keys differ");
	a = seal(key, "sim", "token", token, &alen);
	b = seal(key, "sim", "token", token, &blen);
	check(a && b && alen == SHIPSYNC_GCM_NONCE_LEN + strlen(token) + SHIPSYNC_GCM_TAG_LEN &&
		  blen == alen, "a sealed secret is nonce, ciphertext and tag");
	check(memcmp(a, b, SHIPSYNC_GCM_NONCE_LEN) != 0 && memcmp(a, b, alen) != 0,
		  "sealing the same value twice draws a fresh nonce: different bytes");
	check(memmem(a, alen, token, strlen(token)) == NULL, "the sealed bytes do not contain the value");

	check(opens(key, "sim", "token", a, alen, token), "opens under its key, provider and name");
	check(!opens(other, "sim", "token", a, alen, token), "another key does not open it");
	check(!opens(key, "sim2", "token", a, alen, token),
		  "sealed for one provider, it does not open for another");
	check(!opens(key, "sim", "password", a, alen, token),
		  "sealed under one name, it does not open under another");
	check(!opens(key, "si", "mtoken", a, alen, token),
		  "provider and name are not merely concatenated");
	memset(value, 'x', sizeof(value));
	check(!shipsync_secret_open(other, "sim", "token", a, alen, value) &&
		  memmem(value, sizeof(value), token, strlen(token)) == NULL,
		  "a refused open leaves no plaintext in the caller's buffer");
	a[SHIPSYNC_GCM_NONCE_LEN] ^= 1;
	check(!opens(key, "sim", "token", a, alen, token), "a changed byte is refused");
	a[SHIPSYNC_GCM_NONCE_LEN] ^= 1;
	check(!opens(key, "sim", "token", a, SHIPSYNC_GCM_NONCE_LEN + 3, token),
		  "a sealed value shorter than nonce and tag is refused");
	free(a);
	free(b);

	a = seal(key, "p", "previous_webhook_secret", "", &alen);
	check(a && alen == SHIPSYNC_SEALED_LEN(0) && opens(key, "p", "previous_webhook_secret", a, alen, ""),
		  "an empty value seals and opens");
	free(a);
}

static void
test_keys(void)
{
	unsigned char key[SHIPSYNC_KEY_LEN];
	unsigned char raw[SHIPSYNC_KEY_LEN];
	char		hex[2 * SHIPSYNC_KEY_LEN + 3];
	char		id1[SHIPSYNC_KEY_ID_LEN + 1];
	char		id2[SHIPSYNC_KEY_ID_LEN + 1];

	for (int i = 0; i < SHIPSYNC_KEY_LEN; i++)
		raw[i] = (unsigned char) (i * 7 + 1);
	check(shipsync_key_parse(raw, sizeof(raw), key) && memcmp(key, raw, sizeof(raw)) == 0,
		  "32 raw bytes are a key");
	for (int i = 0; i < SHIPSYNC_KEY_LEN; i++)
		sprintf(hex + 2 * i, "%02x", raw[i]);
	memset(key, 0, sizeof(key));
	check(shipsync_key_parse((unsigned char *) hex, 64, key) && memcmp(key, raw, sizeof(raw)) == 0,
		  "64 hex digits are a key");
	strcat(hex, "\n");
	memset(key, 0, sizeof(key));
	check(shipsync_key_parse((unsigned char *) hex, 65, key) && memcmp(key, raw, sizeof(raw)) == 0,
		  "64 hex digits and a newline (openssl rand -hex 32) are a key");
	hex[64] = '\r';
	hex[65] = '\n';
	check(shipsync_key_parse((unsigned char *) hex, 66, key), "a CRLF ending is taken too");
	for (int i = 0; i < 64; i++)
		hex[i] = "0123456789abcdefABCDEF"[i % 22];
	check(shipsync_key_parse((unsigned char *) hex, 64, key) && key[0] == 0x01 &&
		  key[5] == 0xab && key[8] == 0xab, "upper and lower case digits");
	hex[10] = 'g';
	check(!shipsync_key_parse((unsigned char *) hex, 64, key), "a non-hex digit is refused");
	check(!shipsync_key_parse((unsigned char *) hex, 31, key), "31 bytes are refused");
	check(!shipsync_key_parse((unsigned char *) hex, 33, key), "33 bytes are refused");
	check(!shipsync_key_parse((unsigned char *) hex, 63, key), "63 hex digits are refused");
	check(!shipsync_key_parse((unsigned char *) "", 0, key), "an empty file is refused");
	memset(raw, 0, sizeof(raw));
	check(!shipsync_key_parse(raw, sizeof(raw), key), "32 zero bytes are refused: not random");
	memset(hex, 'a', 64);
	check(!shipsync_key_parse((unsigned char *) hex, 64, key), "a repeated hex byte is refused");

	shipsync_random_bytes(key, sizeof(key));
	check(shipsync_key_id(key, id1) && shipsync_key_id(key, id2) &&
		  strlen(id1) == SHIPSYNC_KEY_ID_LEN && strcmp(id1, id2) == 0, "a key's id is stable");
	key[31] ^= 1;
	(void) shipsync_key_id(key, id2);
	check(strcmp(id1, id2) != 0, "another key, another id");
	check(strspn(id1, "0123456789abcdef") == SHIPSYNC_KEY_ID_LEN, "a key's id is lower-case hex");
}

/* As uuid_out() writes them (SELECT x::uuid::text in psql) */
static void
test_uuid_format(void)
{
	static const struct
	{
		const char *hex;
		const char *text;
	}			v[] = {
		{"a0eebc999c0b4ef8bb6d6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{"00000000000000000000000000000000", "00000000-0000-0000-0000-000000000000"},
		{"ffffffffffffffffffffffffffffffff", "ffffffff-ffff-ffff-ffff-ffffffffffff"},
		{"4aac806891164bb5875e7c8a947a7300", "4aac8068-9116-4bb5-875e-7c8a947a7300"},
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
	{
		size_t		len;
		unsigned char *raw = unhex(v[i].hex, &len);
		char		out[SHIPSYNC_UUID_TEXT_LEN + 1];

		memset(out, 'x', sizeof(out));
		shipsync_uuid_format(raw, out);
		check(len == 16 && strcmp(out, v[i].text) == 0, v[i].text);
		check(out[SHIPSYNC_UUID_TEXT_LEN] == 'x', "and not a byte past its 37");
		free(raw);
	}
}

int
main(void)
{
	test_uuid_format();
	test_gcm_vectors();
	test_seal();
	test_keys();
	return unit_done();
}
