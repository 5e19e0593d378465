/*-------------------------------------------------------------------------
 *
 * crypto.c
 *		The extension's cryptography, in one place: random bytes, the
 *		secret key, and AES-256-GCM sealing of the secrets it protects.
 *
 * Secrets (carrier credentials, webhook secrets, TLS client keys) are kept
 * in shipsync.secret sealed with AES-256-GCM under a 32-byte key that never
 * enters the database (secret.c reads it from a key file).  Sealing one
 * value draws a fresh random 96-bit nonce and binds the value to where it
 * belongs: the associated data is the provider's name and the secret's
 * name, joined by a NUL byte, so a sealed token copied onto another
 * provider's row, or onto another name of the same provider, fails to
 * open instead of being sent.  A sealed value is one string of bytes,
 *
 *		nonce (12 bytes) || ciphertext (as long as the value) || tag (16)
 *
 * and opening checks the tag before a byte of plaintext is handed out.
 * Nonces are random, not counted: a key seals few values (a few per
 * provider, again at each rotation), far below the 2^32 messages after
 * which random 96-bit nonces would begin to risk a collision.
 *
 * A key is identified by the first 8 bytes of HMAC-SHA256(key, "pg_shipsync
 * key id"), in hex: stored beside each sealed value, it says which key file
 * opens it (during a rotation, the current or the previous one) without
 * telling anything about the key.
 *
 * This file holds every cryptographic helper of the extension, each in its
 * section: randomness; keys; authenticated encryption; digests (MD5 for
 * the carriers that sign with it, SHA-256) and HMAC; then the encodings
 * (hex, base64) they are printed in.  Signature schemes built on them are
 * sign.c's (the requests we send) and signature.c's (the pushes we take).  Everything here is
 * plain C over OpenSSL's EVP interface, with no PostgreSQL header, so that
 * it is unit-tested against published known answers (test/unit) and
 * fuzzed alone.  It allocates nothing of its own (OpenSSL keeps the digest
 * implementations fetched once per process): callers pass buffers of
 * the sizes the macros of pg_shipsync.h give, so the file depends on no
 * other of the extension (not even its out-of-memory hook).  Buffers here
 * that held a key or a plaintext are cleansed (OPENSSL_cleanse).
 *
 *-------------------------------------------------------------------------
 */
#define SHIPSYNC_PLAIN_C
#include <ctype.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "pg_shipsync.h"

/* ---------- randomness ---------- */

/*
 * Fill buf with len bytes from OpenSSL's CSPRNG (seeded by the kernel).
 * False if it cannot deliver: the caller must not go on with a weak value.
 */
bool
shipsync_random_bytes(unsigned char *buf, size_t len)
{
	return len <= (size_t) INT32_MAX && RAND_bytes(buf, (int) len) == 1;
}

/* ---------- keys ---------- */

static int
hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (unsigned char) tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/*
 * Read a key from the contents of a key file: exactly 32 bytes (raw), or 64
 * hexadecimal digits with an optional final newline (what `openssl rand
 * -hex 32` prints).  A key whose bytes are all the same (a file of zeros)
 * is refused as not random.  False, with key untouched, if buf holds no
 * key.
 */
bool
shipsync_key_parse(const unsigned char *buf, size_t len,
				   unsigned char key[SHIPSYNC_KEY_LEN])
{
	unsigned char k[SHIPSYNC_KEY_LEN];
	bool		varied = false;

	if (len == SHIPSYNC_KEY_LEN)
		memcpy(k, buf, SHIPSYNC_KEY_LEN);
	else
	{
		if (len > 0 && buf[len - 1] == '\n')
			len--;
		if (len > 0 && buf[len - 1] == '\r')
			len--;
		if (len != 2 * SHIPSYNC_KEY_LEN)
			return false;
		for (size_t i = 0; i < SHIPSYNC_KEY_LEN; i++)
		{
			int			hi = hexval(buf[2 * i]);
			int			lo = hexval(buf[2 * i + 1]);

			if (hi < 0 || lo < 0)
			{
				OPENSSL_cleanse(k, sizeof(k));
				return false;
			}
			k[i] = (unsigned char) (hi << 4 | lo);
		}
	}
	for (size_t i = 1; i < SHIPSYNC_KEY_LEN; i++)
		varied |= k[i] != k[0];
	if (varied)
		memcpy(key, k, SHIPSYNC_KEY_LEN);
	OPENSSL_cleanse(k, sizeof(k));
	return varied;
}

/*
 * A key's identifier, printed into out (SHIPSYNC_KEY_ID_LEN hex digits and
 * a NUL): the first 8 bytes of HMAC-SHA256(key, "pg_shipsync key id").
 * False only if OpenSSL fails.
 */
bool
shipsync_key_id(const unsigned char key[SHIPSYNC_KEY_LEN],
				char out[SHIPSYNC_KEY_ID_LEN + 1])
{
	static const char label[] = "pg_shipsync key id";
	static const char hex[] = "0123456789abcdef";
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;

	if (HMAC(EVP_sha256(), key, SHIPSYNC_KEY_LEN, (const unsigned char *) label,
			 sizeof(label) - 1, mac, &maclen) == NULL)
		return false;
	for (int i = 0; i < SHIPSYNC_KEY_ID_LEN / 2; i++)
	{
		out[2 * i] = hex[mac[i] >> 4];
		out[2 * i + 1] = hex[mac[i] & 15];
	}
	out[SHIPSYNC_KEY_ID_LEN] = '\0';
	return true;
}

/* ---------- authenticated encryption: AES-256-GCM ---------- */

/*
 * One AES-256-GCM pass over len bytes of in into out, encrypting or
 * decrypting, with associated data given in naad parts (authenticated as
 * their concatenation) and the 16-byte tag read (decrypt) or written
 * (encrypt).  False if OpenSSL fails or, decrypting, the tag does not
 * match.
 */
static bool
gcm(bool encrypt, const unsigned char *key, const unsigned char *nonce,
	int naad, const unsigned char *const *aad, const size_t *aadlen,
	const unsigned char *in, size_t len, unsigned char *out, unsigned char *tag)
{
	const EVP_CIPHER *cipher = EVP_aes_256_gcm();
	EVP_CIPHER_CTX *ctx;
	unsigned char last[SHIPSYNC_GCM_TAG_LEN];	/* GCM's final writes none */
	int			n = 0;
	bool		ok;

	if (len > (size_t) INT32_MAX || (ctx = EVP_CIPHER_CTX_new()) == NULL)
		return false;
	ok = EVP_CipherInit_ex(ctx, cipher, NULL, NULL, NULL, encrypt) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SHIPSYNC_GCM_NONCE_LEN, NULL) == 1 &&
		EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, encrypt) == 1;
	for (int i = 0; ok && i < naad; i++)
		ok = aadlen[i] <= (size_t) INT32_MAX &&
			(aadlen[i] == 0 ||
			 EVP_CipherUpdate(ctx, NULL, &n, aad[i], (int) aadlen[i]) == 1);
	ok = ok && (len == 0 || EVP_CipherUpdate(ctx, out, &n, in, (int) len) == 1);
	if (encrypt)
		ok = ok && EVP_CipherFinal_ex(ctx, last, &n) == 1 &&
			EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SHIPSYNC_GCM_TAG_LEN, tag) == 1;
	else
		ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SHIPSYNC_GCM_TAG_LEN, tag) == 1 &&
			EVP_CipherFinal_ex(ctx, last, &n) == 1;
	EVP_CIPHER_CTX_free(ctx);
	if (!ok && !encrypt && len > 0)
		OPENSSL_cleanse(out, len);
	return ok;
}

/*
 * Encrypt len bytes of in into out (len bytes) with AES-256-GCM under key
 * and a 96-bit nonce, authenticating aad too; the 16-byte tag goes to tag.
 * The caller guarantees that the nonce is never used twice with the key.
 */
bool
shipsync_gcm_encrypt(const unsigned char *key, const unsigned char *nonce,
					 const unsigned char *aad, size_t aadlen,
					 const unsigned char *in, size_t len,
					 unsigned char *out, unsigned char *tag)
{
	return gcm(true, key, nonce, 1, &aad, &aadlen, in, len, out, tag);
}

/*
 * Decrypt and authenticate: out (len bytes) receives the plaintext of in.
 * False if the tag does not match key, nonce, aad and ciphertext; out then
 * holds nothing the caller may use (it is cleansed).
 */
bool
shipsync_gcm_decrypt(const unsigned char *key, const unsigned char *nonce,
					 const unsigned char *aad, size_t aadlen,
					 const unsigned char *in, size_t len,
					 const unsigned char *tag, unsigned char *out)
{
	/* the tag is only read; OpenSSL's prototype takes it writable */
	return gcm(false, key, nonce, 1, &aad, &aadlen, in, len, out, (unsigned char *) tag);
}

/* A secret's associated data, in three parts: provider, a NUL byte, name */
static void
secret_aad(const char *provider, const char *name,
		   const unsigned char *aad[3], size_t aadlen[3])
{
	aad[0] = (const unsigned char *) provider;
	aadlen[0] = strlen(provider);
	aad[1] = (const unsigned char *) "";	/* its terminating NUL */
	aadlen[1] = 1;
	aad[2] = (const unsigned char *) name;
	aadlen[2] = strlen(name);
}

/*
 * Seal secret value (len bytes) of provider into sealed, which holds
 * SHIPSYNC_SEALED_LEN(len) bytes: a fresh random nonce, the ciphertext and
 * the tag.  False if no random nonce could be drawn or OpenSSL failed.
 */
bool
shipsync_secret_seal(const unsigned char *key, const char *provider,
					 const char *name, const char *value, size_t len,
					 unsigned char *sealed)
{
	const unsigned char *aad[3];
	size_t		aadlen[3];

	secret_aad(provider, name, aad, aadlen);
	return shipsync_random_bytes(sealed, SHIPSYNC_GCM_NONCE_LEN) &&
		gcm(true, key, sealed, 3, aad, aadlen, (const unsigned char *) value, len,
			sealed + SHIPSYNC_GCM_NONCE_LEN, sealed + SHIPSYNC_GCM_NONCE_LEN + len);
}

/*
 * Open a sealed secret of provider into value, which holds
 * sealed_len - SHIPSYNC_SEALED_LEN(0) + 1 bytes: the value, NUL-terminated.
 * False if the sealed bytes were not made by shipsync_secret_seal() with
 * this key, provider and name (value is then cleansed).
 */
bool
shipsync_secret_open(const unsigned char *key, const char *provider,
					 const char *name, const unsigned char *sealed,
					 size_t sealed_len, char *value)
{
	const unsigned char *aad[3];
	size_t		aadlen[3];
	size_t		len;

	secret_aad(provider, name, aad, aadlen);
	if (sealed_len < SHIPSYNC_SEALED_LEN(0))
		return false;
	len = sealed_len - SHIPSYNC_SEALED_LEN(0);
	if (!gcm(false, key, sealed, 3, aad, aadlen, sealed + SHIPSYNC_GCM_NONCE_LEN, len,
			 (unsigned char *) value,
			 (unsigned char *) sealed + SHIPSYNC_GCM_NONCE_LEN + len))
		return false;
	value[len] = '\0';
	return true;
}

/* ---------- digests and HMAC ---------- */

/*
 * The implementation of digest alg, fetched from OpenSSL's providers once
 * per process.  Through EVP_sha256() and its kin, OpenSSL 3 looks the
 * implementation up again at every EVP_DigestInit_ex(): a fifth of the
 * instructions of hashing a request body.
 */
static const EVP_MD *
digest_md(ShipDigest alg)
{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
	static EVP_MD *fetched[3];
	static const char *const names[3] = {
		[SHIPSYNC_MD5] = "MD5", [SHIPSYNC_SHA1] = "SHA1", [SHIPSYNC_SHA256] = "SHA256"
	};

	if (fetched[alg] == NULL)
		fetched[alg] = EVP_MD_fetch(NULL, names[alg], NULL);
	if (fetched[alg] != NULL)
		return fetched[alg];
#endif
	return alg == SHIPSYNC_MD5 ? EVP_md5() : alg == SHIPSYNC_SHA1 ? EVP_sha1() : EVP_sha256();
}

/*
 * The digest alg (SHIPSYNC_MD5: 16 bytes, SHIPSYNC_SHA1: 20, SHIPSYNC_SHA256:
 * 32) of the n parts concatenated, into out; false only if OpenSSL fails.
 * MD5 and SHA-1 are here because carriers sign with them (Kuaidi100, SF
 * Express, 简道云), never to protect anything of ours.
 */
bool
shipsync_digest(ShipDigest alg, int n, const void *const *parts, const size_t *lens,
				unsigned char *out)
{
	const EVP_MD *md = digest_md(alg);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int len = 0;
	bool		ok;

	if (ctx == NULL)
		return false;
	ok = EVP_DigestInit_ex(ctx, md, NULL) == 1;
	for (int i = 0; ok && i < n; i++)
		ok = EVP_DigestUpdate(ctx, parts[i], lens[i]) == 1;
	ok = ok && EVP_DigestFinal_ex(ctx, out, &len) == 1 && (int) len == EVP_MD_size(md);
	EVP_MD_CTX_free(ctx);
	return ok;
}

/* The MD5 of the string s into out; false only if OpenSSL fails */
bool
shipsync_md5(const char *s, unsigned char out[16])
{
	const void *parts[1] = {s};
	size_t		lens[1] = {strlen(s)};

	return shipsync_digest(SHIPSYNC_MD5, 1, parts, lens, out);
}

/* The SHA-256 of len bytes into out; false only if OpenSSL fails */
bool
shipsync_sha256(const void *in, size_t len, unsigned char out[32])
{
	const void *parts[1] = {in};
	size_t		lens[1] = {len};

	return shipsync_digest(SHIPSYNC_SHA256, 1, parts, lens, out);
}

/* HMAC-SHA256 of msg under key into out; false only if OpenSSL fails */
bool
shipsync_hmac_sha256(const void *key, size_t keylen, const void *msg,
					 size_t msglen, unsigned char out[32])
{
	unsigned int outlen = 0;

	if (keylen > (size_t) INT32_MAX)
		return false;
	return HMAC(digest_md(SHIPSYNC_SHA256), key, (int) keylen, msg, msglen, out, &outlen) != NULL &&
		outlen == 32;
}

/*
 * Constant-time equality of two strings of the same length; strings of
 * different lengths are unequal (their length is not a secret).
 */
bool
shipsync_ct_equal(const char *a, size_t alen, const char *b, size_t blen)
{
	if (alen != blen)
		return false;
	return CRYPTO_memcmp(a, b, alen) == 0;
}

/* Wipe len bytes that held a key or a secret */
void
shipsync_cleanse(void *p, size_t len)
{
	OPENSSL_cleanse(p, len);
}

/* ---------- encodings ---------- */

static const char b64chars[] =
"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Standard base64 of len bytes, NUL-terminated into out (4*ceil(len/3)+1) */
void
shipsync_base64_encode(const unsigned char *in, size_t len, char *out)
{
	size_t		i;
	char	   *p = out;

	for (i = 0; i + 2 < len; i += 3)
	{
		*p++ = b64chars[in[i] >> 2];
		*p++ = b64chars[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
		*p++ = b64chars[((in[i + 1] & 15) << 2) | (in[i + 2] >> 6)];
		*p++ = b64chars[in[i + 2] & 63];
	}
	if (i < len)
	{
		*p++ = b64chars[in[i] >> 2];
		if (i + 1 < len)
		{
			*p++ = b64chars[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
			*p++ = b64chars[(in[i + 1] & 15) << 2];
		}
		else
		{
			*p++ = b64chars[(in[i] & 3) << 4];
			*p++ = '=';
		}
		*p++ = '=';
	}
	*p = '\0';
}

static int
b64value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/*
 * Decode standard base64 (padding optional).  Returns the number of bytes
 * written to out (which holds at least 3*len/4 bytes), or -1 if the input
 * is not base64.
 */
long
shipsync_base64_decode(const char *in, size_t len, unsigned char *out)
{
	unsigned int acc = 0;
	int			bits = 0;
	long		n = 0;
	size_t		i;

	while (len > 0 && in[len - 1] == '=')
		len--;
	for (i = 0; i < len; i++)
	{
		int			v = b64value((unsigned char) in[i]);

		if (v < 0)
			return -1;
		acc = (acc << 6) | (unsigned int) v;
		bits += 6;
		if (bits >= 8)
		{
			bits -= 8;
			out[n++] = (unsigned char) ((acc >> bits) & 0xFF);
		}
	}
	/* leftover bits must be a whole final group */
	if (bits >= 6)
		return -1;
	return n;
}

/*
 * The 16 bytes of a uuid as uuid_out() writes them (8-4-4-4-12 lower-case
 * hex digits) into out (SHIPSYNC_UUID_TEXT_LEN bytes with the NUL).
 * uuid_out() builds its text in a StringInfo, 1 kB a value: the dispatcher
 * reads an idempotency key for every intent it takes, and a read of
 * 20,000 kept 20 MB of such buffers, each page faulted in.
 */
void
shipsync_uuid_format(const unsigned char *uuid, char *out)
{
	char	   *p = out;

	for (int i = 0; i < 16; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*p++ = '-';
		shipsync_hex_encode(uuid + i, 1, p, false);
		p += 2;
	}
}

/* Hex of len bytes (upper or lower case) into out (2*len+1) */
void
shipsync_hex_encode(const unsigned char *in, size_t len, char *out, bool upper)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";

	for (size_t i = 0; i < len; i++)
	{
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * len] = '\0';
}
