/*-------------------------------------------------------------------------
 *
 * sign.c
 *		Form encoding and request signatures of the carriers' dialects.
 *
 * SF Express signs each request with
 *		msgDigest = Base64(MD5(URLEncoder.encode(msgData + timestamp +
 *								checkword, "UTF-8")))
 * where URLEncoder is Java's: letters, digits and . - * _ are kept, a space
 * becomes +, every other byte of the UTF-8 text is %XX in upper case.  That
 * is also what application/x-www-form-urlencoded means, so the form body
 * itself is encoded the same way.  The whole msgData string is signed as
 * sent: a single space more or less changes the digest, so the body is
 * built once, signed, and stored; retries re-send those bytes.
 *
 * Kuaidi100 signs with UPPER(hex(MD5(param + key + customer))).
 *
 * Plain C over OpenSSL's EVP interface: no PostgreSQL calls, so the known
 * answers of the providers' documentation are unit tests.  Results are
 * malloc'd; the caller frees them.
 *
 *-------------------------------------------------------------------------
 */
#define SHIPSYNC_PLAIN_C
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#include "pg_shipsync.h"

/* URLEncoder.encode(s, "UTF-8") */
char *
shipsync_urlencode_java(const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t		n = strlen(s);
	char	   *out = malloc(n * 3 + 1);
	char	   *o = out;

	if (out == NULL)
		shipsync_out_of_memory();
	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
	{
		if (isalnum(*p) && *p < 0x80)
			*o++ = (char) *p;
		else if (*p == '.' || *p == '-' || *p == '*' || *p == '_')
			*o++ = (char) *p;
		else if (*p == ' ')
			*o++ = '+';
		else
		{
			*o++ = '%';
			*o++ = hex[*p >> 4];
			*o++ = hex[*p & 15];
		}
	}
	*o = '\0';
	return out;
}

/* application/x-www-form-urlencoded: the same rules as Java's encoder */
char *
shipsync_urlencode_form(const char *s)
{
	return shipsync_urlencode_java(s);
}

/* SF's msgDigest; NULL only if OpenSSL fails */
char *
shipsync_sf_digest(const char *msg_data, const char *timestamp, const char *checkword)
{
	size_t		n = strlen(msg_data) + strlen(timestamp) + strlen(checkword);
	char	   *joined = malloc(n + 1);
	char	   *enc;
	unsigned char digest[16];
	char	   *out;

	if (joined == NULL)
		shipsync_out_of_memory();
	snprintf(joined, n + 1, "%s%s%s", msg_data, timestamp, checkword);
	enc = shipsync_urlencode_java(joined);
	free(joined);
	if (!shipsync_md5(enc, digest))
	{
		free(enc);
		return NULL;
	}
	free(enc);
	out = malloc(25);
	if (out == NULL)
		shipsync_out_of_memory();
	shipsync_base64_encode(digest, 16, out);
	return out;
}

/*
 * The whole form body of one SF request, signed.  NULL only if OpenSSL
 * fails.
 */
char *
shipsync_sf_form(const char *partner_id, const char *request_id,
				 const char *service_code, const char *timestamp,
				 const char *msg_data, const char *checkword)
{
	char	   *digest;
	char	   *f[6];
	char	   *out;
	size_t		n = 0;

	/*
	 * URL encoding works byte by byte, so the encoding of msgData + timestamp
	 * + checkword is the three encodings joined: msgData, the long part, is
	 * encoded once for both the digest and the form.
	 */
	f[4] = shipsync_urlencode_form(msg_data);
	{
		char	   *ts = shipsync_urlencode_java(timestamp);
		char	   *cw = shipsync_urlencode_java(checkword);
		size_t		len = strlen(f[4]) + strlen(ts) + strlen(cw);
		char	   *joined = malloc(len + 1);
		unsigned char md[16];

		if (joined == NULL)
			shipsync_out_of_memory();
		snprintf(joined, len + 1, "%s%s%s", f[4], ts, cw);
		free(ts);
		free(cw);
		digest = NULL;
		if (shipsync_md5(joined, md))
		{
			digest = malloc(25);
			if (digest == NULL)
				shipsync_out_of_memory();
			shipsync_base64_encode(md, 16, digest);
		}
		free(joined);
	}
	if (digest == NULL)
	{
		free(f[4]);
		return NULL;
	}
	f[0] = shipsync_urlencode_form(partner_id);
	f[1] = shipsync_urlencode_form(request_id);
	f[2] = shipsync_urlencode_form(service_code);
	f[3] = shipsync_urlencode_form(timestamp);
	f[5] = shipsync_urlencode_form(digest);
	for (int i = 0; i < 6; i++)
		n += strlen(f[i]);
	n += 80;
	out = malloc(n);
	if (out == NULL)
		shipsync_out_of_memory();
	snprintf(out, n, "partnerID=%s&requestID=%s&serviceCode=%s&timestamp=%s&msgData=%s&msgDigest=%s",
			 f[0], f[1], f[2], f[3], f[4], f[5]);
	for (int i = 0; i < 6; i++)
		free(f[i]);
	free(digest);
	return out;
}

/* UPPER(hex(MD5(s))): Kuaidi100's sign over param + key + customer */
char *
shipsync_md5_upper_hex(const char *s)
{
	unsigned char digest[16];
	char	   *out;

	if (!shipsync_md5(s, digest))
		return NULL;
	out = malloc(33);
	if (out == NULL)
		shipsync_out_of_memory();
	shipsync_hex_encode(digest, 16, out, true);
	return out;
}
