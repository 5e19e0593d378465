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
 * The layout of this file is meant to receive every cryptographic helper
 * of the extension, each in its section: randomness; keys; authenticated
 * encryption; and (to come from sign.c and signature.c) digests and HMAC,
 * then the encodings (hex, base64) they are printed in.  Everything here is
 * plain C over OpenSSL's EVP interface, with no PostgreSQL header, so that
 * it is unit-tested against published known answers (test/unit) and
 * fuzzed alone.  Results are malloc'd where their length is not known to
 * the caller; buffers that held a key or a plaintext are cleansed
 * (OPENSSL_cleanse) before they are freed.
 *
 *-------------------------------------------------------------------------
 */
#define SHIPSYNC_PLAIN_C
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
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
 */
void
shipsync_key_id(const unsigned char key[SHIPSYNC_KEY_LEN],
				char out[SHIPSYNC_KEY_ID_LEN + 1])
{
	static const char label[] = "pg_shipsync key id";
	static const char hex[] = "0123456789abcdef";
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;

	if (HMAC(EVP_sha256(), key, SHIPSYNC_KEY_LEN, (const unsigned char *) label,
			 sizeof(label) - 1, mac, &maclen) == NULL)
		shipsync_out_of_memory();
	for (int i = 0; i < SHIPSYNC_KEY_ID_LEN / 2; i++)
	{
		out[2 * i] = hex[mac[i] >> 4];
		out[2 * i + 1] = hex[mac[i] & 15];
	}
	out[SHIPSYNC_KEY_ID_LEN] = '\0';
}

/* ---------- authenticated encryption: AES-256-GCM ---------- */

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
	EVP_CIPHER_CTX *ctx;
	unsigned char last[SHIPSYNC_GCM_TAG_LEN];	/* GCM's final writes none */
	int			n = 0;
	bool		ok;

	if (len > (size_t) INT32_MAX || aadlen > (size_t) INT32_MAX)
		return false;
	if ((ctx = EVP_CIPHER_CTX_new()) == NULL)
		shipsync_out_of_memory();
	ok = EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SHIPSYNC_GCM_NONCE_LEN, NULL) == 1 &&
		EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 &&
		(aadlen == 0 || EVP_EncryptUpdate(ctx, NULL, &n, aad, (int) aadlen) == 1) &&
		(len == 0 || EVP_EncryptUpdate(ctx, out, &n, in, (int) len) == 1) &&
		EVP_EncryptFinal_ex(ctx, last, &n) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SHIPSYNC_GCM_TAG_LEN, tag) == 1;
	EVP_CIPHER_CTX_free(ctx);
	return ok;
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
	EVP_CIPHER_CTX *ctx;
	unsigned char tagcopy[SHIPSYNC_GCM_TAG_LEN];
	unsigned char last[SHIPSYNC_GCM_TAG_LEN];	/* GCM's final writes none */
	int			n = 0;
	bool		ok;

	if (len > (size_t) INT32_MAX || aadlen > (size_t) INT32_MAX)
		return false;
	if ((ctx = EVP_CIPHER_CTX_new()) == NULL)
		shipsync_out_of_memory();
	memcpy(tagcopy, tag, sizeof(tagcopy));	/* the ctrl wants it writable */
	ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SHIPSYNC_GCM_NONCE_LEN, NULL) == 1 &&
		EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 &&
		(aadlen == 0 || EVP_DecryptUpdate(ctx, NULL, &n, aad, (int) aadlen) == 1) &&
		(len == 0 || EVP_DecryptUpdate(ctx, out, &n, in, (int) len) == 1) &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SHIPSYNC_GCM_TAG_LEN, tagcopy) == 1 &&
		EVP_DecryptFinal_ex(ctx, last, &n) == 1;
	EVP_CIPHER_CTX_free(ctx);
	if (!ok && len > 0)
		OPENSSL_cleanse(out, len);
	return ok;
}

/* The associated data of a secret: provider, a NUL byte, name (malloc'd) */
static unsigned char *
secret_aad(const char *provider, const char *name, size_t *aadlen)
{
	size_t		plen = strlen(provider);
	size_t		nlen = strlen(name);
	unsigned char *aad = malloc(plen + 1 + nlen);

	if (aad == NULL)
		shipsync_out_of_memory();
	memcpy(aad, provider, plen);
	aad[plen] = '\0';
	memcpy(aad + plen + 1, name, nlen);
	*aadlen = plen + 1 + nlen;
	return aad;
}

/*
 * Seal secret value (len bytes) of provider under key: a fresh nonce, the
 * ciphertext and the tag, as one malloc'd string of *sealed_len bytes.
 * NULL if no random nonce could be drawn.
 */
unsigned char *
shipsync_secret_seal(const unsigned char *key, const char *provider,
					 const char *name, const char *value, size_t len,
					 size_t *sealed_len)
{
	size_t		aadlen;
	unsigned char *aad = secret_aad(provider, name, &aadlen);
	unsigned char *sealed = malloc(SHIPSYNC_GCM_NONCE_LEN + len + SHIPSYNC_GCM_TAG_LEN);
	bool		ok;

	if (sealed == NULL)
		shipsync_out_of_memory();
	ok = shipsync_random_bytes(sealed, SHIPSYNC_GCM_NONCE_LEN) &&
		shipsync_gcm_encrypt(key, sealed, aad, aadlen,
							 (const unsigned char *) value, len,
							 sealed + SHIPSYNC_GCM_NONCE_LEN,
							 sealed + SHIPSYNC_GCM_NONCE_LEN + len);
	free(aad);
	if (!ok)
	{
		free(sealed);
		return NULL;
	}
	*sealed_len = SHIPSYNC_GCM_NONCE_LEN + len + SHIPSYNC_GCM_TAG_LEN;
	return sealed;
}

/*
 * Open a sealed secret of provider: the value, NUL-terminated and
 * malloc'd (the caller cleanses and frees it), or NULL if the sealed bytes
 * were not made by shipsync_secret_seal() with this key, provider and name.
 */
char *
shipsync_secret_open(const unsigned char *key, const char *provider,
					 const char *name, const unsigned char *sealed,
					 size_t sealed_len)
{
	size_t		aadlen;
	unsigned char *aad;
	size_t		len;
	char	   *value;
	bool		ok;

	if (sealed_len < SHIPSYNC_GCM_NONCE_LEN + SHIPSYNC_GCM_TAG_LEN)
		return NULL;
	len = sealed_len - SHIPSYNC_GCM_NONCE_LEN - SHIPSYNC_GCM_TAG_LEN;
	if ((value = malloc(len + 1)) == NULL)
		shipsync_out_of_memory();
	aad = secret_aad(provider, name, &aadlen);
	ok = shipsync_gcm_decrypt(key, sealed, aad, aadlen,
							  sealed + SHIPSYNC_GCM_NONCE_LEN, len,
							  sealed + SHIPSYNC_GCM_NONCE_LEN + len,
							  (unsigned char *) value);
	free(aad);
	if (!ok)
	{
		free(value);
		return NULL;
	}
	value[len] = '\0';
	return value;
}
