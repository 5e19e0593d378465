/*-------------------------------------------------------------------------
 *
 * json.c
 *		Reading carrier responses with json-c.
 *
 * This is the only file that includes json-c: its json_object type clashes
 * with PostgreSQL's builtins.h.  It includes no PostgreSQL header at all, so
 * it can be fuzzed alone, and hands out malloc'd C strings that the caller
 * frees with shipsync_free_ship_response().  Every json_object taken from
 * the tokener is released with json_object_put() on every path.
 *
 *-------------------------------------------------------------------------
 */
#define SHIPSYNC_PLAIN_C
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <json.h>

#include "pg_shipsync.h"

#define Min(x, y) ((x) < (y) ? (x) : (y))

/*
 * True when s is a plain decimal number: optional sign, digits, optional
 * fraction, optional exponent.  This is what numeric input accepts from a
 * carrier's string amount ("12.50"), minus NaN and Infinity.
 */
bool
shipsync_is_decimal(const char *s)
{
	bool		digits = false;

	if (s == NULL)
		return false;
	if (*s == '-' || *s == '+')
		s++;
	while (isdigit((unsigned char) *s))
	{
		s++;
		digits = true;
	}
	if (*s == '.')
	{
		s++;
		while (isdigit((unsigned char) *s))
		{
			s++;
			digits = true;
		}
	}
	if (!digits)
		return false;
	if (*s == 'e' || *s == 'E')
	{
		s++;
		if (*s == '-' || *s == '+')
			s++;
		if (!isdigit((unsigned char) *s))
			return false;
		while (isdigit((unsigned char) *s))
			s++;
	}
	return *s == '\0';
}

/*
 * True when s (a decimal, see above) fits PostgreSQL's numeric: at most
 * SHIPSYNC_MAX_NUMBER_CHARS characters and an exponent within +-1000, so
 * that numeric input never fails on it ("1e99999" is a decimal but not a
 * numeric).
 */
static bool
numeric_in_range(const char *s, size_t len)
{
	const char *e;

	if (len > SHIPSYNC_MAX_NUMBER_CHARS)
		return false;
	e = memchr(s, 'e', len);
	if (e == NULL)
		e = memchr(s, 'E', len);
	if (e != NULL)
	{
		long		exp = 0;
		const char *p = e + 1;

		if (*p == '+' || *p == '-')
			p++;
		for (; p < s + len && isdigit((unsigned char) *p); p++)
			if ((exp = exp * 10 + (*p - '0')) > 1000)
				return false;
	}
	return true;
}

static int
hex4(const char *p)
{
	int			v = 0;

	for (int k = 0; k < 4; k++)
	{
		char		c = p[k];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

/*
 * What is wrong with the escape at body[i] (a backslash inside a string):
 * a NUL, a lone UTF-16 surrogate, or nothing (NULL).
 */
static const char *
escape_problem(const char *body, size_t i, size_t len)
{
	int			u;

	if (i + 5 >= len || body[i + 1] != 'u')
		return NULL;
	u = hex4(body + i + 2);
	if (u == 0)
		return "a NUL character (\\u0000)";
	if (u >= 0xD800 && u <= 0xDBFF &&
		!(i + 11 < len && body[i + 6] == '\\' && body[i + 7] == 'u' &&
		  hex4(body + i + 8) >= 0xDC00 && hex4(body + i + 8) <= 0xDFFF))
		return "a lone UTF-16 surrogate";
	if (u >= 0xDC00 && u <= 0xDFFF &&
		!(i >= 6 && body[i - 6] == '\\' && body[i - 5] == 'u' &&
		  hex4(body + i - 4) >= 0xD800 && hex4(body + i - 4) <= 0xDBFF))
		return "a lone UTF-16 surrogate";
	return NULL;
}

/* Whether the string that ends at body[end] (its closing quote) is a name */
static bool
is_member_name(const char *body, size_t end, size_t len)
{
	size_t		j = end + 1;

	while (j < len && isspace((unsigned char) body[j]))
		j++;
	return j < len && body[j] == ':';
}

/*
 * Whether the JSON number s (len characters) is an integer that json-c
 * does not read exactly: json-c keeps an integer in 64 bits, and one
 * beyond -9223372036854775808 .. 18446744073709551615 becomes the nearest
 * end of that range, silently.  A number with a fraction or an exponent
 * is a double, which json-c keeps with its text: never one.
 */
static bool
integer_clamped(const char *s, size_t len)
{
	bool		neg = len > 0 && s[0] == '-';
	const char *limit = neg ? "9223372036854775808" : "18446744073709551615";
	size_t		limlen = strlen(limit);

	if (memchr(s, '.', len) || memchr(s, 'e', len) || memchr(s, 'E', len))
		return false;
	if (neg)
	{
		s++;
		len--;
	}
	while (len > 1 && s[0] == '0')
	{
		s++;
		len--;
	}
	if (len != limlen)
		return len > limlen;
	return strncmp(s, limit, len) > 0;
}

/*
 * Whether a carrier's answer (or, exact_integers, a CRM push) can be
 * stored as it is: its text valid UTF-8, no string holding NUL (\u0000) or
 * a lone UTF-16 surrogate escape, and every number one that PostgreSQL's
 * numeric (hence jsonb) accepts; with exact_integers, no integer json-c
 * would read as another (integer_clamped()).  This only lexes strings and
 * numbers; the strict parse judges the structure.  On false, errbuf says
 * what and where (the member name, when the offending value is a
 * member's).
 */
static bool
check_text(const char *body, size_t len, bool exact_integers,
		   char *errbuf, size_t errlen)
{
	long		bad = shipsync_utf8_invalid_at(body, len);
	const char *key = NULL;		/* the last member name seen */
	int			keylen = 0;
	size_t		i = 0;

	if (bad >= 0)
	{
		snprintf(errbuf, errlen, "the response is not valid UTF-8 (byte %ld)", bad);
		return false;
	}
	while (i < len)
	{
		if (body[i] == '"')
		{
			size_t		start = ++i;
			const char *what = NULL;

			for (; i < len && body[i] != '"'; i++)
				if (body[i] == '\\')
				{
					if (what == NULL)
						what = escape_problem(body, i, len);
					i++;
				}
			if (what)
			{
				if (is_member_name(body, i, len))
					snprintf(errbuf, errlen, "a member name holds %s", what);
				else if (key)
					snprintf(errbuf, errlen, "\"%.*s\" holds %s", keylen, key, what);
				else
					snprintf(errbuf, errlen, "a string holds %s", what);
				return false;
			}
			if (is_member_name(body, i, len))
			{
				key = body + start;
				keylen = (int) Min(i - start, 64);
			}
			i++;
		}
		else if (body[i] == '-' || isdigit((unsigned char) body[i]))
		{
			size_t		start = i;

			while (i < len && (isdigit((unsigned char) body[i]) || body[i] == '-' ||
							   body[i] == '+' || body[i] == '.' || body[i] == 'e' ||
							   body[i] == 'E'))
				i++;
			if (!numeric_in_range(body + start, i - start))
			{
				snprintf(errbuf, errlen, "%s%.*s%sholds a number out of range (%.20s...)",
						 key ? "\"" : "the response ", key ? keylen : 0, key ? key : "",
						 key ? "\" " : "", body + start);
				return false;
			}
			if (exact_integers && integer_clamped(body + start, i - start))
			{
				snprintf(errbuf, errlen, "%s%.*s%sholds an integer beyond 64 bits (%.*s%s), which would be read as another number: send it as a string",
						 key ? "\"" : "the response ", key ? keylen : 0, key ? key : "",
						 key ? "\" " : "", (int) Min(i - start, 40), body + start,
						 i - start > 40 ? "..." : "");
				return false;
			}
		}
		else
			i++;
	}
	return true;
}

/*
 * Whether a carrier's answer can be stored as it is (check_text()).  A
 * carrier replays the same answer to the same idempotency key, so an
 * answer refused here is refused for good.
 */
bool
shipsync_check_response_text(const char *body, size_t len,
							 char *errbuf, size_t errlen)
{
	return check_text(body, len, true, errbuf, errlen);
}

/*
 * Whether text holds a run of 19 digits or more: the only way to an
 * integer json-c would read as another (integer_clamped()).  A cheap look
 * first, so that a push without one is lexed once, by json-c.
 */
static bool
long_digit_run(const char *text, size_t len)
{
	int			run = 0;

	for (size_t i = 0; i < len; i++)
		if ((unsigned) (text[i] - '0') < 10)
		{
			if (++run >= 19)
				return true;
		}
		else
			run = 0;
	return false;
}

/*
 * A carrier's push or pull (tracking, a shipment list) holding an integer
 * beyond 64 bits is refused as its answer to a create is: json-c would
 * read route ids 18446744073709551617 and 18446744073709551618 as one.
 */
static bool
carrier_integers_ok(const char *text, size_t len, char *errbuf, size_t errlen)
{
	return !long_digit_run(text, len) || check_text(text, len, true, errbuf, errlen);
}

/*
 * Whether a CRM push can be read as it is: as a carrier's answer, and
 * without an integer beyond 64 bits, which json-c would read as the
 * nearest end of that range: record ids 99999999999999999998 and
 * 99999999999999999999 would both have written the order with key
 * 18446744073709551615.
 */
bool
shipsync_check_push_text(const char *body, size_t len,
						 char *errbuf, size_t errlen)
{
	return check_text(body, len, true, errbuf, errlen);
}

static char *
dup_string_member(struct json_object *obj, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(obj, key, &v))
		return NULL;
	if (json_object_is_type(v, json_type_string))
		return strdup(json_object_get_string(v));
	if (json_object_is_type(v, json_type_int))
		return strdup(json_object_get_string(v));
	return NULL;
}

static bool
fees_ok(struct json_object *fees, char *errbuf, size_t errlen)
{
	size_t		n;

	if (!json_object_is_type(fees, json_type_array))
	{
		snprintf(errbuf, errlen, "\"fees\" is not an array");
		return false;
	}
	n = json_object_array_length(fees);
	for (size_t i = 0; i < n; i++)
	{
		struct json_object *f = json_object_array_get_idx(fees, i);
		struct json_object *amount;
		struct json_object *type;

		if (!json_object_is_type(f, json_type_object) ||
			!json_object_object_get_ex(f, "type", &type) ||
			!json_object_is_type(type, json_type_string) ||
			!json_object_object_get_ex(f, "amount", &amount))
		{
			snprintf(errbuf, errlen, "fee %zu has no \"type\" or \"amount\"", i);
			return false;
		}
		if (json_object_is_type(amount, json_type_string))
		{
			if (!shipsync_is_decimal(json_object_get_string(amount)) ||
				!numeric_in_range(json_object_get_string(amount),
								  (size_t) json_object_get_string_len(amount)))
			{
				snprintf(errbuf, errlen, "fee %zu has a non-numeric amount", i);
				return false;
			}
		}
		else if (json_object_is_type(amount, json_type_double))
		{
			if (!isfinite(json_object_get_double(amount)))
			{
				snprintf(errbuf, errlen, "fee %zu has a non-finite amount", i);
				return false;
			}
		}
		else if (!json_object_is_type(amount, json_type_int))
		{
			snprintf(errbuf, errlen, "fee %zu has a non-numeric amount", i);
			return false;
		}
	}
	return true;
}

/*
 * Documents up to this size are parsed with one tokener kept for the life
 * of the process, reset before each use: making and freeing a tokener was
 * 5 thousand of the dispatcher's CPU instructions an answer.  The tokener
 * keeps the buffer it grew for the longest string it read, so a larger
 * document gets a tokener of its own, freed after it (a hostile carrier's
 * body of 10 MB must not stay in the dispatcher's memory).
 */
#define PARSE_KEEP_TOKENER_MAX 65536

/*
 * Parse text as strict JSON, all of it: the document, or NULL with the
 * reason in errbuf ("<what> is not valid JSON: ...", or without a subject
 * when what is NULL).  The caller owns the result (json_object_put).
 */
static struct json_object *
parse_strict_what(const char *text, size_t len, const char *what,
				  char *errbuf, size_t errlen)
{
	static struct json_tokener *kept = NULL;
	struct json_tokener *tok;
	struct json_object *root;

	if (len > (size_t) INT32_MAX)
	{
		snprintf(errbuf, errlen, "%s is too large", what ? what : "the document");
		return NULL;
	}
	if (len > PARSE_KEEP_TOKENER_MAX)
		tok = json_tokener_new();
	else
	{
		if (kept == NULL)
			kept = json_tokener_new();
		else
			json_tokener_reset(kept);
		tok = kept;
	}
	if (tok == NULL)
	{
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	root = json_tokener_parse_ex(tok, text ? text : "", (int) len);
	if (root == NULL || json_tokener_get_parse_end(tok) != len)
	{
		enum json_tokener_error jerr = json_tokener_get_error(tok);

		snprintf(errbuf, errlen, "%s%snot valid JSON: %s",
				 what ? what : "", what ? " is " : "",
				 jerr == json_tokener_continue ? "unexpected end of input" :
				 root != NULL ? "trailing characters" :
				 json_tokener_error_desc(jerr));
		json_object_put(root);
		root = NULL;
	}
	if (tok != kept)
		json_tokener_free(tok);
	return root;
}

static struct json_object *
parse_strict(const char *text, size_t len, char *errbuf, size_t errlen)
{
	return parse_strict_what(text, len, NULL, errbuf, errlen);
}

/*
 * Parse a generic-dialect response: {"id", "tracking_number", "label_url"?,
 * "status"?, "fees"?: [{"type", "amount", "currency"}]}.  With need_ids, id
 * and tracking_number must be non-empty strings (a create).  Returns false
 * with a message in errbuf when the body is not such an object.
 */
bool
shipsync_parse_ship_response(const char *body, size_t len, bool need_ids,
							 ShipResponse *out, char *errbuf, size_t errlen)
{
	struct json_object *root;
	struct json_object *fees;
	bool		ok = true;

	memset(out, 0, sizeof(*out));
	errbuf[0] = '\0';

	if (len > (size_t) INT32_MAX)
	{
		snprintf(errbuf, errlen, "response too large");
		return false;
	}

	/* an update or cancel may be answered with no body at all (204) */
	if (!need_ids)
	{
		size_t		k = 0;

		while (k < len && (body[k] == ' ' || body[k] == '\t' ||
						   body[k] == '\r' || body[k] == '\n'))
			k++;
		if (k == len)
			return true;
	}

	root = parse_strict_what(body, len, "response", errbuf, errlen);
	if (root == NULL)
		return false;

	if (!json_object_is_type(root, json_type_object))
	{
		snprintf(errbuf, errlen, "response is not a JSON object");
		json_object_put(root);
		return false;
	}

	out->id = dup_string_member(root, "id");
	out->tracking_number = dup_string_member(root, "tracking_number");
	out->label_url = dup_string_member(root, "label_url");
	out->status = dup_string_member(root, "status");

	if (need_ids && (out->id == NULL || out->id[0] == '\0'))
	{
		snprintf(errbuf, errlen, "response has no shipment \"id\"");
		ok = false;
	}
	else if (need_ids &&
			 (out->tracking_number == NULL || out->tracking_number[0] == '\0'))
	{
		snprintf(errbuf, errlen, "response has no \"tracking_number\"");
		ok = false;
	}
	else if (json_object_object_get_ex(root, "fees", &fees) &&
			 !json_object_is_type(fees, json_type_null))
	{
		ok = fees_ok(fees, errbuf, errlen);
		out->refused = !ok;
		if (ok)
		{
			out->fees = strdup(json_object_to_json_string_ext(fees, JSON_C_TO_STRING_PLAIN));
			if (out->fees == NULL)
				shipsync_out_of_memory();
		}
	}

	json_object_put(root);
	if (!ok)
	{
		bool		refused = out->refused;

		shipsync_free_ship_response(out);
		out->refused = refused;
	}
	return ok;
}

void
shipsync_free_ship_response(ShipResponse *r)
{
	free(r->id);
	free(r->tracking_number);
	free(r->label_url);
	free(r->status);
	free(r->fees);
	memset(r, 0, sizeof(*r));
}

/* ------------------------------------------------------------------------
 * Tracking payloads: pushes and pulls of every dialect, exploded into
 * single events (TrackEventList).  Strings are malloc'd copies; the list
 * is freed with shipsync_free_tracking() whatever the outcome.  Event keys
 * are derived from what the carrier sends, so that the same event pushed
 * again, or repeated in a later full-history payload, has the same key.
 * ------------------------------------------------------------------------
 */

/* a member as a string: strings as they are, numbers in their JSON text */
static const char *
str_member(struct json_object *obj, const char *key)
{
	struct json_object *v;

	if (obj == NULL || !json_object_is_type(obj, json_type_object) ||
		!json_object_object_get_ex(obj, key, &v))
		return NULL;
	if (json_object_is_type(v, json_type_string) ||
		json_object_is_type(v, json_type_int))
		return json_object_get_string(v);
	return NULL;
}

static const char *
nonempty(const char *s)
{
	return (s != NULL && s[0] != '\0') ? s : NULL;
}

static char *
dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

/* FNV-1a, 64 bits: a short stable digest of a text inside an event key */
static unsigned long long
fnv1a64(const char *s)
{
	unsigned long long h = 1469598103934665603ULL;

	for (; s && *s; s++)
	{
		h ^= (unsigned char) *s;
		h *= 1099511628211ULL;
	}
	return h;
}

static bool
add_event(TrackEventList *l, const char *key, const char *tn, const char *raw,
		  const char *detail, const char *at, const char *loc, const char *descr)
{
	TrackEvent *e;

	if (l->n == l->cap)
	{
		int			cap = l->cap ? l->cap * 2 : 16;
		TrackEvent *nev = realloc(l->ev, sizeof(TrackEvent) * cap);

		if (nev == NULL)
			return false;
		l->ev = nev;
		l->cap = cap;
	}
	e = &l->ev[l->n++];
	e->key = dup_or_null(key);
	e->tracking_number = dup_or_null(tn);
	e->raw_status = dup_or_null(raw);
	e->raw_detail = dup_or_null(detail);
	e->occurred_at = dup_or_null(at);
	e->location = dup_or_null(loc);
	e->description = dup_or_null(descr);
	return true;
}

void
shipsync_free_tracking(TrackEventList *l)
{
	for (int i = 0; i < l->n; i++)
	{
		free(l->ev[i].key);
		free(l->ev[i].tracking_number);
		free(l->ev[i].raw_status);
		free(l->ev[i].raw_detail);
		free(l->ev[i].occurred_at);
		free(l->ev[i].location);
		free(l->ev[i].description);
	}
	free(l->ev);
	memset(l, 0, sizeof(*l));
}

static struct json_object *
array_member(struct json_object *obj, const char *key)
{
	struct json_object *v;

	if (obj != NULL && json_object_is_type(obj, json_type_object) &&
		json_object_object_get_ex(obj, key, &v) &&
		json_object_is_type(v, json_type_array))
		return v;
	return NULL;
}

static struct json_object *
object_member(struct json_object *obj, const char *key)
{
	struct json_object *v;

	if (obj != NULL && json_object_is_type(obj, json_type_object) &&
		json_object_object_get_ex(obj, key, &v) &&
		json_object_is_type(v, json_type_object))
		return v;
	return NULL;
}

/*
 * generic: {"events": [{"id", "tracking_number", "status", "occurred_at",
 * "location"?, "description"?}]} -- see docs/wire-contract.md.
 */
static bool
parse_generic(struct json_object *root, TrackEventList *l, char *errbuf, size_t errlen)
{
	struct json_object *events = array_member(root, "events");
	size_t		n;

	if (events == NULL)
	{
		snprintf(errbuf, errlen, "the body has no \"events\" array");
		return false;
	}
	n = json_object_array_length(events);
	for (size_t i = 0; i < n; i++)
	{
		struct json_object *e = json_object_array_get_idx(events, i);
		const char *id = nonempty(str_member(e, "id"));
		const char *tn = nonempty(str_member(e, "tracking_number"));
		const char *st = nonempty(str_member(e, "status"));
		const char *at = nonempty(str_member(e, "occurred_at"));

		if (!json_object_is_type(e, json_type_object) || !id || !tn || !st || !at)
		{
			snprintf(errbuf, errlen,
					 "event %zu lacks one of \"id\", \"tracking_number\", \"status\", \"occurred_at\"", i + 1);
			return false;
		}
		if (!add_event(l, id, tn, st, NULL, at, str_member(e, "location"),
					   str_member(e, "description")))
			return false;
	}
	return true;
}

/*
 * easypost: an Event whose result is a Tracker; each of its
 * tracking_details is an event (they carry no id: the key is the tracker,
 * the time, the status and the status detail).  Events about anything but
 * trackers are acknowledged and ignored.
 */
static bool
parse_easypost(struct json_object *root, TrackEventList *l, char *errbuf, size_t errlen)
{
	struct json_object *tracker = object_member(root, "result");
	struct json_object *details;
	const char *descr = str_member(root, "description");
	const char *tid;
	const char *tn;
	size_t		n;
	char		key[512];

	if (descr == NULL)
	{
		snprintf(errbuf, errlen, "the body is not an EasyPost Event (no \"description\")");
		return false;
	}
	if (strncmp(descr, "tracker.", 8) != 0)
		return true;
	tid = nonempty(str_member(tracker, "id"));
	tn = nonempty(str_member(tracker, "tracking_code"));
	if (tid == NULL || tn == NULL)
	{
		snprintf(errbuf, errlen, "the Event's result is not a Tracker with \"id\" and \"tracking_code\"");
		return false;
	}
	details = array_member(tracker, "tracking_details");
	n = details ? json_object_array_length(details) : 0;
	for (size_t i = 0; i < n; i++)
	{
		struct json_object *d = json_object_array_get_idx(details, i);
		struct json_object *loc = object_member(d, "tracking_location");
		const char *st = nonempty(str_member(d, "status"));
		const char *sd = str_member(d, "status_detail");
		const char *at = nonempty(str_member(d, "datetime"));
		char		where[256];

		if (st == NULL || at == NULL)
		{
			snprintf(errbuf, errlen, "tracking detail %zu lacks \"status\" or \"datetime\"", i + 1);
			return false;
		}
		snprintf(key, sizeof(key), "%s/%s/%s/%s", tid, at, st, sd ? sd : "");
		where[0] = '\0';
		if (loc)
		{
			const char *parts[4] = {str_member(loc, "city"), str_member(loc, "state"),
			str_member(loc, "country"), str_member(loc, "zip")};

			for (int k = 0; k < 4; k++)
				if (nonempty(parts[k]))
				{
					size_t		w = strlen(where);

					snprintf(where + w, sizeof(where) - w, "%s%s", w ? ", " : "", parts[k]);
				}
		}
		if (!add_event(l, key, tn, st, sd, at, where[0] ? where : NULL,
					   str_member(d, "message")))
			return false;
	}
	if (n == 0 && nonempty(str_member(tracker, "status")))
	{
		const char *at = str_member(tracker, "updated_at");

		snprintf(key, sizeof(key), "%s/%s/%s", tid, at ? at : "", str_member(tracker, "status"));
		if (!add_event(l, key, tn, str_member(tracker, "status"),
					   str_member(tracker, "status_detail"), at, NULL, NULL))
			return false;
	}
	return true;
}

/*
 * aftership: {event, event_id, msg: <tracking with checkpoints[]>}.  Each
 * checkpoint is an event, its tag the raw status and its subtag the
 * detail; a tracking with no checkpoints yet gives one event of its tag.
 */
static bool
parse_aftership(struct json_object *root, TrackEventList *l, char *errbuf, size_t errlen)
{
	struct json_object *msg = object_member(root, "msg");
	struct json_object *cps;
	const char *tid;
	const char *tn;
	size_t		n;
	char		key[512];

	tn = nonempty(str_member(msg, "tracking_number"));
	if (msg == NULL || tn == NULL)
	{
		snprintf(errbuf, errlen, "the body has no \"msg\" with a \"tracking_number\"");
		return false;
	}
	tid = nonempty(str_member(msg, "id"));
	if (tid == NULL)
		tid = tn;
	cps = array_member(msg, "checkpoints");
	n = cps ? json_object_array_length(cps) : 0;
	for (size_t i = 0; i < n; i++)
	{
		struct json_object *c = json_object_array_get_idx(cps, i);
		const char *tag = nonempty(str_member(c, "tag"));
		const char *sub = str_member(c, "subtag");
		const char *at = nonempty(str_member(c, "checkpoint_time"));
		const char *loc = nonempty(str_member(c, "location"));

		if (tag == NULL || at == NULL)
		{
			snprintf(errbuf, errlen, "checkpoint %zu lacks \"tag\" or \"checkpoint_time\"", i + 1);
			return false;
		}
		snprintf(key, sizeof(key), "%s/%s/%s/%016llx", tid, at, sub ? sub : tag,
				 fnv1a64(str_member(c, "message")));
		if (loc == NULL)
			loc = nonempty(str_member(c, "city"));
		if (!add_event(l, key, tn, tag, sub, at, loc, str_member(c, "message")))
			return false;
	}
	if (n == 0 && nonempty(str_member(msg, "tag")))
	{
		const char *tag = str_member(msg, "tag");
		const char *sub = str_member(msg, "subtag");
		const char *at = nonempty(str_member(msg, "updated_at"));

		snprintf(key, sizeof(key), "%s/%s/%s", tid, at ? at : "", sub ? sub : tag);
		if (!add_event(l, key, tn, tag, sub, at, NULL, str_member(msg, "subtag_message")))
			return false;
	}
	return true;
}

/*
 * kuaidi100: the decoded form field param.  lastResult.data is the FULL
 * history, newest first: exploded oldest first.  An entry's raw status is
 * its statusCode (resultv2), else for the newest entry lastResult.state;
 * its detail is its status text.  A subscription that ends in "abort" adds
 * an expiry event, stamped when received.
 */
static bool
parse_kuaidi100(struct json_object *root, TrackEventList *l, char *errbuf, size_t errlen)
{
	struct json_object *last = object_member(root, "lastResult");
	struct json_object *data;
	const char *nu;
	const char *com;
	const char *state;
	const char *newest = NULL;
	bool		aborted;
	size_t		n;
	char		key[512];

	aborted = str_member(root, "status") && strcmp(str_member(root, "status"), "abort") == 0;
	nu = nonempty(str_member(last, "nu"));
	if (last == NULL || nu == NULL)
	{
		snprintf(errbuf, errlen, "param has no \"lastResult\" with a \"nu\"");
		return false;
	}
	com = str_member(last, "com");
	state = nonempty(str_member(last, "state"));
	data = array_member(last, "data");
	n = data ? json_object_array_length(data) : 0;
	for (size_t k = n; k-- > 0;)
	{
		struct json_object *d = json_object_array_get_idx(data, k);
		const char *at = nonempty(str_member(d, "ftime"));
		const char *context = str_member(d, "context");
		const char *code = nonempty(str_member(d, "statusCode"));

		if (at == NULL)
			at = nonempty(str_member(d, "time"));
		if (at == NULL || context == NULL)
		{
			snprintf(errbuf, errlen, "data entry %zu lacks \"time\" or \"context\"", k + 1);
			return false;
		}
		if (k == 0)
		{
			newest = at;
			if (state)
				code = state;
		}
		snprintf(key, sizeof(key), "%s/%s/%s/%016llx", com ? com : "", nu, at, fnv1a64(context));
		if (!add_event(l, key, nu, code, str_member(d, "status"), at,
					   str_member(d, "areaName"), context))
			return false;
	}
	/*
	 * A state with no history to put it on is refused, but for the abort of
	 * a subscription that never found the waybill ("3天查询无记录": its data
	 * is empty), whose content is the abort itself.
	 */
	if (n == 0 && state && !aborted)
	{
		snprintf(errbuf, errlen, "param has a state but no history in \"data\"");
		return false;
	}
	if (aborted)
	{
		snprintf(key, sizeof(key), "%s/%s/abort/%s", com ? com : "", nu, newest ? newest : "");
		if (!add_event(l, key, nu, "abort", NULL, NULL, NULL, str_member(root, "message")))
			return false;
	}
	return true;
}

/* sf_express route push: {"Body": {"WaybillRoute": [...]}}, keyed by id */
static bool
parse_sf_express(struct json_object *root, TrackEventList *l, char *errbuf, size_t errlen)
{
	struct json_object *routes = array_member(object_member(root, "Body"), "WaybillRoute");
	size_t		n;

	if (routes == NULL)
	{
		snprintf(errbuf, errlen, "the body has no \"Body\".\"WaybillRoute\" array");
		return false;
	}
	n = json_object_array_length(routes);
	for (size_t i = 0; i < n; i++)
	{
		struct json_object *r = json_object_array_get_idx(routes, i);
		const char *id = nonempty(str_member(r, "id"));
		const char *tn = nonempty(str_member(r, "mailno"));
		const char *op = nonempty(str_member(r, "opCode"));
		const char *at = nonempty(str_member(r, "acceptTime"));

		if (!id || !tn || !op || !at)
		{
			snprintf(errbuf, errlen,
					 "route %zu lacks one of \"id\", \"mailno\", \"opCode\", \"acceptTime\"", i + 1);
			return false;
		}
		if (!add_event(l, id, tn, op, NULL, at, str_member(r, "acceptAddress"),
					   str_member(r, "remark")))
			return false;
	}
	return true;
}

/*
 * Read the events of one tracking payload with parse, one dialect's reader
 * (for kuaidi100, the decoded param field).  Returns false with a reason in
 * errbuf when the body is not what the dialect sends; out is then to be
 * freed all the same.
 */
static bool
parse_tracking_with(bool (*parse) (struct json_object *, TrackEventList *, char *, size_t),
					const char *body, size_t len, TrackEventList *out,
					char *errbuf, size_t errlen)
{
	struct json_object *root;
	bool		ok;

	memset(out, 0, sizeof(*out));
	errbuf[0] = '\0';
	if (!carrier_integers_ok(body, len, errbuf, errlen))
		return false;
	root = parse_strict_what(body, len, "the body", errbuf, errlen);
	if (root == NULL)
		return false;
	if (!json_object_is_type(root, json_type_object))
	{
		snprintf(errbuf, errlen, "the body is not a JSON object");
		json_object_put(root);
		return false;
	}
	ok = parse(root, out, errbuf, errlen);
	if (!ok && errbuf[0] == '\0')
		snprintf(errbuf, errlen, "out of memory");
	json_object_put(root);
	return ok;
}

/*
 * The tracking payload readers, one per dialect: each dialect's routine
 * (src/dialects/) points at its own, so that json-c stays in this file and
 * no code picks a reader by the dialect's name.
 */
bool
shipsync_parse_tracking_generic(const char *body, size_t len, TrackEventList *out,
								char *errbuf, size_t errlen)
{
	return parse_tracking_with(parse_generic, body, len, out, errbuf, errlen);
}

bool
shipsync_parse_tracking_easypost(const char *body, size_t len, TrackEventList *out,
								 char *errbuf, size_t errlen)
{
	return parse_tracking_with(parse_easypost, body, len, out, errbuf, errlen);
}

bool
shipsync_parse_tracking_aftership(const char *body, size_t len, TrackEventList *out,
								  char *errbuf, size_t errlen)
{
	return parse_tracking_with(parse_aftership, body, len, out, errbuf, errlen);
}

bool
shipsync_parse_tracking_kuaidi100(const char *body, size_t len, TrackEventList *out,
								  char *errbuf, size_t errlen)
{
	return parse_tracking_with(parse_kuaidi100, body, len, out, errbuf, errlen);
}

bool
shipsync_parse_tracking_sf_express(const char *body, size_t len, TrackEventList *out,
								   char *errbuf, size_t errlen)
{
	return parse_tracking_with(parse_sf_express, body, len, out, errbuf, errlen);
}


/*
 * A carrier's list of its shipments, one page (the generic contract, see
 * docs/wire-contract.md, "Shipment list"): {"shipments": [{"id",
 * "order_ref", "tracking_number", "status", "updated_at", "fees"?}],
 * "next_cursor": "..." | null}.  Only "id" is required of a shipment (a
 * string or an integer); the others may be absent or null.  next_cursor
 * absent or null: this is the last page.  Returns false with the reason in
 * errbuf; out is to be freed with shipsync_free_shipment_list() either way.
 */
bool
shipsync_parse_shipment_list(const char *body, size_t len, ShipListPage *out,
							 char *errbuf, size_t errlen)
{
	struct json_object *root;
	struct json_object *list;
	struct json_object *cursor;
	size_t		n;
	bool		ok = true;

	memset(out, 0, sizeof(*out));
	errbuf[0] = '\0';
	if (!carrier_integers_ok(body, len, errbuf, errlen))
		return false;
	root = parse_strict_what(body, len, "the body", errbuf, errlen);
	if (root == NULL)
		return false;
	list = array_member(root, "shipments");
	if (list == NULL)
	{
		snprintf(errbuf, errlen, "the body has no \"shipments\" array");
		json_object_put(root);
		return false;
	}
	if (json_object_object_get_ex(root, "next_cursor", &cursor) &&
		!json_object_is_type(cursor, json_type_null))
	{
		if (!json_object_is_type(cursor, json_type_string) ||
			json_object_get_string_len(cursor) == 0)
		{
			snprintf(errbuf, errlen, "\"next_cursor\" is neither a non-empty string nor null");
			json_object_put(root);
			return false;
		}
		out->next_cursor = strdup(json_object_get_string(cursor));
		if (out->next_cursor == NULL)
			shipsync_out_of_memory();
	}

	n = json_object_array_length(list);
	out->items = calloc(n > 0 ? n : 1, sizeof(ShipListItem));
	if (out->items == NULL)
		shipsync_out_of_memory();
	for (size_t i = 0; i < n && ok; i++)
	{
		struct json_object *e = json_object_array_get_idx(list, i);
		ShipListItem *it = &out->items[i];
		struct json_object *fees;

		if (!json_object_is_type(e, json_type_object))
		{
			snprintf(errbuf, errlen, "shipment %zu is not an object", i + 1);
			ok = false;
			break;
		}
		out->n = (int) i + 1;
		it->id = dup_string_member(e, "id");
		it->order_ref = dup_string_member(e, "order_ref");
		it->tracking_number = dup_string_member(e, "tracking_number");
		it->status = dup_string_member(e, "status");
		it->updated_at = dup_string_member(e, "updated_at");
		if (it->id == NULL || it->id[0] == '\0')
		{
			snprintf(errbuf, errlen, "shipment %zu has no \"id\"", i + 1);
			ok = false;
		}
		else if (json_object_object_get_ex(e, "fees", &fees) &&
				 !json_object_is_type(fees, json_type_null))
		{
			char		ferr[128];

			if (!fees_ok(fees, ferr, sizeof(ferr)))
			{
				snprintf(errbuf, errlen, "shipment %zu: %s", i + 1, ferr);
				ok = false;
			}
			else if ((it->fees = strdup(json_object_to_json_string_ext(fees, JSON_C_TO_STRING_PLAIN))) == NULL)
				shipsync_out_of_memory();
		}
	}
	json_object_put(root);
	return ok;
}

void
shipsync_free_shipment_list(ShipListPage *p)
{
	for (int i = 0; i < p->n; i++)
	{
		free(p->items[i].id);
		free(p->items[i].order_ref);
		free(p->items[i].tracking_number);
		free(p->items[i].status);
		free(p->items[i].updated_at);
		free(p->items[i].fees);
	}
	free(p->items);
	free(p->next_cursor);
	memset(p, 0, sizeof(*p));
}

/* ====================================================================
 * JSON documents for the mapping engine (mapping.c) and the SF Express
 * dialect.  A ShipJson owns its root and every document decoded from a
 * string on the way down a path (carriers send JSON inside JSON strings:
 * SF's apiResultData); all are released by shipsync_json_free().
 * ==================================================================== */

#define SHIPJSON_MAX_DECODED 16

struct ShipJson
{
	struct json_object *root;
	struct json_object *decoded_from[SHIPJSON_MAX_DECODED];	/* the strings */
	struct json_object *decoded[SHIPJSON_MAX_DECODED];	/* what they held */
	int			ndecoded;
};


/* Parse a JSON document; NULL with a reason in errbuf when it is not one. */
ShipJson *
shipsync_json_parse(const char *text, size_t len, char *errbuf, size_t errlen)
{
	struct json_object *root = parse_strict(text, len, errbuf, errlen);
	ShipJson   *doc;

	if (root == NULL && (len != 4 || strncmp(text, "null", 4) != 0))
		return NULL;
	doc = calloc(1, sizeof(ShipJson));
	if (doc == NULL)
	{
		json_object_put(root);
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	doc->root = root;
	return doc;
}

void
shipsync_json_free(ShipJson *doc)
{
	if (doc == NULL)
		return;
	json_object_put(doc->root);
	for (int i = 0; i < doc->ndecoded; i++)
		json_object_put(doc->decoded[i]);
	free(doc);
}

/* Whether doc is a JSON object */
bool
shipsync_json_is_object(const ShipJson *doc)
{
	return doc != NULL && json_object_is_type(doc->root, json_type_object);
}

/* A document of its own for the member key of doc's root (or null) */
ShipJson *
shipsync_json_member_doc(ShipJson *doc, const char *key)
{
	ShipJson   *m = calloc(1, sizeof(ShipJson));
	struct json_object *v;

	if (m == NULL)
		shipsync_out_of_memory();
	if (doc && json_object_is_type(doc->root, json_type_object) &&
		json_object_object_get_ex(doc->root, key, &v))
		m->root = json_object_get(v);
	return m;
}

static void
json_to_value(struct json_object *v, MapValue *out)
{
	const char *s;

	out->type = MV_NULL;
	out->s = NULL;
	switch (json_object_get_type(v))
	{
		case json_type_null:
			return;
		case json_type_string:
			out->type = MV_STRING;
			s = json_object_get_string(v);
			break;
		case json_type_int:
		case json_type_double:
			out->type = MV_NUMBER;
			s = json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN);
			break;
		case json_type_boolean:
			out->type = MV_BOOL;
			s = json_object_get_boolean(v) ? "true" : "false";
			break;
		default:
			out->type = MV_RAW;
			s = json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN |
											   JSON_C_TO_STRING_NOSLASHESCAPE);
			break;
	}
	out->s = strdup(s ? s : "");
	if (out->s == NULL)
		shipsync_out_of_memory();
}

/*
 * A string member holding a JSON object or array: decode it, once per
 * document (later paths through the same string reuse the result).  One
 * that the document itself could not hold (an integer beyond 64 bits, a
 * NUL: check_text()) is not decoded: a path through it reads nothing.
 */
static struct json_object *
descend_string(ShipJson *doc, struct json_object *v)
{
	const char *s;
	struct json_object *d;
	char		err[64];

	if (!json_object_is_type(v, json_type_string))
		return v;
	for (int i = 0; i < doc->ndecoded; i++)
		if (doc->decoded_from[i] == v)
			return doc->decoded[i];
	s = json_object_get_string(v);
	while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
		s++;
	if ((*s != '{' && *s != '[') || doc->ndecoded == SHIPJSON_MAX_DECODED)
		return v;
	/*
	 * checked as the document around it was (check_text()): json-c would
	 * read an integer beyond 64 bits in it as the nearest end of the range
	 */
	if (!check_text(json_object_get_string(v), (size_t) json_object_get_string_len(v),
					true, err, sizeof(err)))
		return v;
	d = parse_strict(json_object_get_string(v),
					 (size_t) json_object_get_string_len(v), err, sizeof(err));
	if (d == NULL)
		return v;
	doc->decoded_from[doc->ndecoded] = v;
	doc->decoded[doc->ndecoded++] = d;
	return d;
}

static bool
element_matches(struct json_object *e, const MapSeg *seg)
{
	struct json_object *m;

	if (!json_object_is_type(e, json_type_object) ||
		!json_object_object_get_ex(e, seg->fkey, &m))
		return false;
	switch (json_object_get_type(m))
	{
		case json_type_string:
			return strcmp(json_object_get_string(m), seg->fval) == 0;
		case json_type_int:
		case json_type_double:
		case json_type_boolean:
			return !seg->fval_string &&
				strcmp(json_object_to_json_string_ext(m, JSON_C_TO_STRING_PLAIN), seg->fval) == 0;
		default:
			return false;
	}
}

/*
 * The value at path in doc; false (out null) when some step is absent.
 * A step into a string that holds JSON decodes the string first.
 */
bool
shipsync_json_get(ShipJson *doc, const MapPath *path, MapValue *out)
{
	struct json_object *v = doc ? doc->root : NULL;

	out->type = MV_NULL;
	out->s = NULL;
	for (int i = 0; v != NULL && i < path->nsegs; i++)
	{
		const MapSeg *seg = &path->segs[i];
		struct json_object *m;

		v = descend_string(doc, v);
		if (!json_object_is_type(v, json_type_object) ||
			!json_object_object_get_ex(v, seg->name, &m))
			return false;
		v = m;
		if (seg->kind == MAPSEG_PLAIN)
			continue;
		v = descend_string(doc, v);
		if (!json_object_is_type(v, json_type_array))
			return false;
		if (seg->kind == MAPSEG_INDEX)
			v = (size_t) seg->index < json_object_array_length(v) ?
				json_object_array_get_idx(v, seg->index) : NULL;
		else
		{
			size_t		n = json_object_array_length(v);
			struct json_object *found = NULL;

			for (size_t k = 0; k < n && found == NULL; k++)
				if (element_matches(json_object_array_get_idx(v, k), seg))
					found = json_object_array_get_idx(v, k);
			v = found;
		}
	}
	if (v == NULL)
		return false;
	json_to_value(v, out);
	return out->type != MV_NULL;
}

/* ---------- masking personal values (mask.c decides how) ---------- */

typedef struct MaskWalk
{
	ShipMaskFn	mask;
	void	   *arg;
	bool		changed;
} MaskWalk;

/*
 * Mask v, the member key of object parent (or, key NULL, element idx of
 * array parent): a string or number is replaced by the masked string, an
 * object or array is masked all through; null and booleans stay.
 */
static void
mask_in_place(MaskWalk *w, struct json_object *parent, const char *key,
			  size_t idx, struct json_object *v, int kind)
{
	const char *s;
	char	   *m;
	struct json_object *r;

	switch (json_object_get_type(v))
	{
		case json_type_object:
			{
				json_object_object_foreach(v, k, member)
					mask_in_place(w, v, k, 0, member, kind);
			}
			return;
		case json_type_array:
			for (size_t i = 0; i < json_object_array_length(v); i++)
				mask_in_place(w, v, NULL, i, json_object_array_get_idx(v, i), kind);
			return;
		case json_type_string:
			s = json_object_get_string(v);
			break;
		case json_type_int:
		case json_type_double:
			s = json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN);
			break;
		default:
			return;
	}
	m = w->mask(kind, s, w->arg);
	r = json_object_new_string(m ? m : "");
	free(m);
	if (r == NULL)
		shipsync_out_of_memory();
	/* replacing a member or element releases the old value */
	if (key != NULL)
		json_object_object_add(parent, key, r);
	else
		json_object_array_put_idx(parent, idx, r);
	w->changed = true;
}

/*
 * Mask what path, from step i on, reaches below v (the member key or
 * element idx of parent).  A filter step masks every element it matches.
 */
static void
mask_path(MaskWalk *w, struct json_object *parent, const char *key, size_t idx,
		  struct json_object *v, const MapPath *path, int i, int kind)
{
	const MapSeg *seg;
	struct json_object *m;

	if (i == path->nsegs)
	{
		mask_in_place(w, parent, key, idx, v, kind);
		return;
	}
	seg = &path->segs[i];
	if (!json_object_is_type(v, json_type_object) ||
		!json_object_object_get_ex(v, seg->name, &m))
		return;
	if (seg->kind == MAPSEG_PLAIN)
	{
		mask_path(w, v, seg->name, 0, m, path, i + 1, kind);
		return;
	}
	if (!json_object_is_type(m, json_type_array))
		return;
	for (size_t k = 0; k < json_object_array_length(m); k++)
	{
		struct json_object *e = json_object_array_get_idx(m, k);

		if (seg->kind == MAPSEG_INDEX ? k == (size_t) seg->index : element_matches(e, seg))
			mask_path(w, m, NULL, k, e, path, i + 1, kind);
	}
}

/*
 * Inside v, a member of the order object that is not personal itself (a
 * json, jsonb or composite column), mask the members that member_kind
 * marks personal, at any depth (the parser bounds it): a CRM's shipping
 * jsonb holds a receiver_phone as a column would.
 */
static void
mask_members(MaskWalk *w, struct json_object *v, ShipMemberKindFn member_kind, void *arg)
{
	if (json_object_is_type(v, json_type_array))
	{
		for (size_t i = 0; i < json_object_array_length(v); i++)
			mask_members(w, json_object_array_get_idx(v, i), member_kind, arg);
		return;
	}
	if (!json_object_is_type(v, json_type_object))
		return;
	{
		json_object_object_foreach(v, k, member)
		{
			int			kind = member_kind(k, arg);

			if (kind != PII_NONE)
				mask_in_place(w, v, k, 0, member, kind);
			else
				mask_members(w, member, member_kind, arg);
		}
	}
}

/* See pg_shipsync.h */
bool
shipsync_json_mask(const char *text, size_t len, int npaths, const MapPath *paths,
				   const int *kinds, const char *member_object,
				   ShipMemberKindFn member_kind, ShipMaskFn mask, void *arg,
				   char **out)
{
	char		err[64];
	struct json_object *root = parse_strict(text, len, err, sizeof(err));
	struct json_object *obj;
	MaskWalk	w = {mask, arg, false};

	*out = NULL;
	if (root == NULL)
		return false;
	for (int i = 0; i < npaths; i++)
		if (kinds[i] != PII_NONE)
			mask_path(&w, NULL, NULL, 0, root, &paths[i], 0, kinds[i]);
	if (member_object != NULL && member_kind != NULL &&
		json_object_is_type(root, json_type_object) &&
		json_object_object_get_ex(root, member_object, &obj) &&
		json_object_is_type(obj, json_type_object))
	{
		json_object_object_foreach(obj, k, member)
		{
			int			kind = member_kind(k, arg);

			if (kind != PII_NONE)
				mask_in_place(&w, obj, k, 0, member, kind);
			else
				mask_members(&w, member, member_kind, arg);
		}
	}
	if (w.changed)
	{
		*out = strdup(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN |
													 JSON_C_TO_STRING_NOSLASHESCAPE));
		if (*out == NULL)
		{
			json_object_put(root);
			shipsync_out_of_memory();
		}
	}
	json_object_put(root);
	return true;
}

/*
 * A transform's argument (JSON text): with key, the string or number member
 * key of an object; without, the argument itself.  malloc'd in *out.
 */
bool
shipsync_json_arg_string(const char *arg, const char *key, char **out)
{
	char		err[64];
	struct json_object *root;
	struct json_object *v;
	bool		ok = false;

	*out = NULL;
	if (arg == NULL)
		return false;
	root = parse_strict(arg, strlen(arg), err, sizeof(err));
	if (root == NULL)
		return false;
	v = root;
	if (key != NULL && (!json_object_is_type(root, json_type_object) ||
						!json_object_object_get_ex(root, key, &v)))
		v = NULL;
	if (v != NULL && (json_object_is_type(v, json_type_string) ||
					  json_object_is_type(v, json_type_int) ||
					  json_object_is_type(v, json_type_double)))
	{
		*out = strdup(json_object_get_string(v));
		ok = *out != NULL;
	}
	json_object_put(root);
	return ok;
}

/*
 * lookup: the member key of the object arg, typed (a number stays a
 * number).  With key NULL, the argument itself as a value (default).
 * Returns false when arg is not a JSON object (not JSON, for key NULL).
 */
bool
shipsync_json_arg_lookup(const char *arg, const char *key, MapValue *out, bool *found)
{
	char		err[64];
	struct json_object *root;
	struct json_object *v;

	out->type = MV_NULL;
	out->s = NULL;
	if (found)
		*found = false;
	if (arg == NULL)
		return false;
	root = parse_strict(arg, strlen(arg), err, sizeof(err));
	if (root == NULL)
		return false;
	if (key == NULL)
	{
		json_to_value(root, out);
		json_object_put(root);
		return true;
	}
	if (!json_object_is_type(root, json_type_object))
	{
		json_object_put(root);
		return false;
	}
	if (json_object_object_get_ex(root, key, &v))
	{
		json_to_value(v, out);
		if (found)
			*found = true;
	}
	json_object_put(root);
	return true;
}

static char *
dup_member_text(struct json_object *obj, const char *key)
{
	struct json_object *v;

	if (!json_object_is_type(obj, json_type_object) ||
		!json_object_object_get_ex(obj, key, &v) ||
		json_object_is_type(v, json_type_null) ||
		json_object_is_type(v, json_type_object) ||
		json_object_is_type(v, json_type_array))
		return NULL;
	return strdup(json_object_get_string(v));
}

/*
 * Read SF Express's answer: {"apiResultCode": "A1000", "apiErrorMsg",
 * "apiResultData": <object, or the same as a JSON string>} with
 * apiResultData {success, errorCode, errorMsg, msgData{orderId,
 * waybillNoInfoList[{waybillType, waybillNo}]}}.  The class says what the
 * dispatcher does with it (shipsync_sf_classify in retry.c).  With search,
 * the answer is to EXP_RECE_SEARCH_ORDER_RESP: a data error there means the
 * order was not found.  Returns false when the body is not SF's envelope.
 */
bool
shipsync_parse_sf_response(const char *body, size_t len, bool search,
						   SfResponse *out, char *errbuf, size_t errlen)
{
	ShipJson   *doc;
	bool		ok;

	memset(out, 0, sizeof(*out));
	doc = shipsync_json_parse(body, len, errbuf, errlen);
	if (doc == NULL)
		return false;
	ok = shipsync_parse_sf_doc(doc, search, out, errbuf, errlen);
	shipsync_json_free(doc);
	return ok;
}

/*
 * SF's msgData: the orderId, and the waybill of type 1 (or the first one)
 * with every waybill of waybillNoInfoList as JSON text.
 */
static void
sf_read_msg_data(struct json_object *msg, SfResponse *out)
{
	struct json_object *list;

	out->order_id = dup_member_text(msg, "orderId");
	if (json_object_object_get_ex(msg, "waybillNoInfoList", &list) &&
		json_object_is_type(list, json_type_array))
	{
		size_t		n = json_object_array_length(list);

		for (size_t i = 0; i < n; i++)
		{
			struct json_object *w = json_object_array_get_idx(list, i);
			struct json_object *t;
			char	   *no = dup_member_text(w, "waybillNo");

			if (no == NULL || no[0] == '\0')
			{
				free(no);
				continue;
			}
			if (out->waybill == NULL ||
				(json_object_object_get_ex(w, "waybillType", &t) &&
				 json_object_get_int(t) == 1))
			{
				free(out->waybill);
				out->waybill = no;
			}
			else
				free(no);
		}
		if (n > 0)
			out->waybills = strdup(json_object_to_json_string_ext(list, JSON_C_TO_STRING_PLAIN |
																  JSON_C_TO_STRING_NOSLASHESCAPE));
	}
}

/*
 * The same, on a document already parsed: the caller may then read more
 * paths from it (an inbound map) without parsing or decoding again.
 */
bool
shipsync_parse_sf_doc(ShipJson *doc, bool search, SfResponse *out,
					  char *errbuf, size_t errlen)
{
	struct json_object *root = doc->root;
	struct json_object *data = NULL;
	struct json_object *v;
	struct json_object *msg;
	char	   *api_code;
	bool		success = false;

	memset(out, 0, sizeof(*out));
	errbuf[0] = '\0';
	if (!json_object_is_type(root, json_type_object) ||
		(api_code = dup_member_text(root, "apiResultCode")) == NULL)
	{
		snprintf(errbuf, errlen, "response has no \"apiResultCode\"");
		return false;
	}
	out->code = api_code;
	out->message = dup_member_text(root, "apiErrorMsg");
	if (strcmp(api_code, "A1000") != 0)
	{
		out->cls = shipsync_sf_classify(api_code, false, NULL, search);
		return true;
	}

	if (json_object_object_get_ex(root, "apiResultData", &data) &&
		json_object_is_type(data, json_type_string))
	{
		struct json_object *decoded = descend_string(doc, data);

		if (decoded == data)
		{
			const char *t = json_object_get_string(data);
			size_t		tlen = (size_t) json_object_get_string_len(data);
			char		why[256];

			/* not decodable, or not storable as it is: say why */
			why[0] = '\0';
			if (!check_text(t, tlen, true, why, sizeof(why)))
				snprintf(errbuf, errlen, "apiResultData: %s", why);
			else
			{
				json_object_put(parse_strict(t, tlen, why, sizeof(why)));
				snprintf(errbuf, errlen, "apiResultData is %s", why[0] ? why : "not a JSON object");
			}
			shipsync_free_sf_response(out);
			return false;
		}
		data = decoded;
	}
	if (data == NULL || !json_object_is_type(data, json_type_object))
	{
		snprintf(errbuf, errlen, "A1000 response has no apiResultData object");
		shipsync_free_sf_response(out);
		return false;
	}
	if (json_object_object_get_ex(data, "success", &v))
		success = json_object_is_type(v, json_type_boolean) ? json_object_get_boolean(v) :
			json_object_is_type(v, json_type_string) && strcmp(json_object_get_string(v), "true") == 0;
	{
		char	   *ec = dup_member_text(data, "errorCode");
		char	   *em = dup_member_text(data, "errorMsg");

		if (ec)
		{
			free(out->code);
			out->code = ec;
		}
		if (em)
		{
			free(out->message);
			out->message = em;
		}
	}
	out->cls = shipsync_sf_classify("A1000", success, out->code, search);
	if (json_object_object_get_ex(data, "msgData", &msg) &&
		json_object_is_type(msg, json_type_object))
		sf_read_msg_data(msg, out);
	if (out->cls == SF_OK && !search && out->waybill == NULL)
	{
		/* a create that succeeded must say which waybill it made */
		snprintf(errbuf, errlen, "successful response has no waybill in msgData.waybillNoInfoList");
		shipsync_free_sf_response(out);
		return false;
	}
	if (out->cls == SF_OK && search && out->waybill == NULL)
		out->cls = SF_NOT_FOUND;
	return true;
}

void
shipsync_free_sf_response(SfResponse *r)
{
	free(r->code);
	free(r->message);
	free(r->order_id);
	free(r->waybill);
	free(r->waybills);
	memset(r, 0, sizeof(*r));
}

/*
 * An OAuth2 token endpoint's answer (RFC 6749, 5.1): {"access_token",
 * "token_type": "Bearer", "expires_in"?}.  *expires_in is 3600 when the
 * server does not say; the token is malloc'd.
 */
bool
shipsync_parse_token_response(const char *body, size_t len, char **token,
							  long *expires_in, char *errbuf, size_t errlen)
{
	struct json_object *root;
	struct json_object *v;
	char	   *type;

	*token = NULL;
	*expires_in = 3600;
	root = parse_strict(body, len, errbuf, errlen);
	if (root == NULL)
		return false;
	if (!json_object_is_type(root, json_type_object) ||
		!json_object_object_get_ex(root, "access_token", &v) ||
		!json_object_is_type(v, json_type_string) ||
		json_object_get_string_len(v) == 0)
	{
		snprintf(errbuf, errlen, "token response has no \"access_token\"");
		json_object_put(root);
		return false;
	}
	type = dup_member_text(root, "token_type");
	if (type != NULL && strcasecmp(type, "bearer") != 0)
	{
		snprintf(errbuf, errlen, "token type \"%.40s\" is not Bearer", type);
		free(type);
		json_object_put(root);
		return false;
	}
	free(type);
	if (json_object_object_get_ex(root, "expires_in", &v) &&
		!json_object_is_type(v, json_type_null))
	{
		long		e = json_object_is_type(v, json_type_string) ?
			strtol(json_object_get_string(v), NULL, 10) : (long) json_object_get_int64(v);

		*expires_in = e < 1 ? 1 : e > 31536000 ? 31536000 : e;
	}
	*token = strdup(json_object_get_string(json_object_object_get(root, "access_token")));
	json_object_put(root);
	if (*token == NULL)
	{
		snprintf(errbuf, errlen, "out of memory");
		return false;
	}
	/* it becomes a header line: refuse what would break it */
	for (const char *p = *token; *p; p++)
		if ((unsigned char) *p < 0x20 || (unsigned char) *p > 0x7e)
		{
			free(*token);
			*token = NULL;
			snprintf(errbuf, errlen, "access_token holds characters a header cannot carry");
			return false;
		}
	return true;
}

/*
 * A tracking provider's answer to a registration.  EasyPost (POST
 * /v2/trackers): the Tracker object, {id: "trk_...", status}; the same code
 * and carrier again returns the same tracker.  AfterShip (POST /trackings):
 * {meta: {code}, data: {tracking: {id, tag}}}; meta.code 4003 ("already
 * exists", with HTTP 400) is a success.  Kuaidi100 (subscribe): HTTP 200
 * with {result, returnCode, message}: 200 ok, 501 already subscribed (ok),
 * 600 bad key and 601 key expired (auth), 700-702 data errors, 500 and the
 * rest transient.  *id and *status are malloc'd or NULL.  One reader per
 * dialect (shipsync_tracker_answer_*), each dialect's routine pointing at
 * its own.
 *
 * tracker_root(): the JSON object of such an answer, in
 * *root; or false with its class in *cls.  need_2xx: any other status is
 * TRACK_HTTP without reading the body (EasyPost); AfterShip and Kuaidi100
 * explain their refusals in the body.
 */
static bool
tracker_root(const char *body, size_t len, long http_status, bool need_2xx, char **id,
			 char **status, struct json_object **root, TrackClass *cls,
			 char *errbuf, size_t errlen)
{
	*id = NULL;
	*status = NULL;
	*root = NULL;
	errbuf[0] = '\0';
	*cls = TRACK_HTTP;
	if (need_2xx && !(http_status >= 200 && http_status < 300))
		return false;
	*root = parse_strict(body, len, errbuf, errlen);
	if (*root == NULL || !json_object_is_type(*root, json_type_object))
	{
		if (*root != NULL)
			snprintf(errbuf, errlen, "response is not a JSON object");
		json_object_put(*root);
		/* a 2xx we cannot read is in doubt: retried under the same key */
		*cls = http_status >= 200 && http_status < 300 ? TRACK_RETRY : TRACK_HTTP;
		return false;
	}
	return true;
}

TrackClass
shipsync_tracker_answer_easypost(const char *body, size_t len, long http_status, char **id,
								char **status, char *errbuf, size_t errlen)
{
	struct json_object *root;
	TrackClass	cls = TRACK_HTTP;

	if (!tracker_root(body, len, http_status, true, id, status, &root, &cls,
					  errbuf, errlen))
		return cls;
	*id = dup_member_text(root, "id");
	*status = dup_member_text(root, "status");
	if (*id == NULL)
	{
		snprintf(errbuf, errlen, "tracker response has no \"id\"");
		cls = TRACK_RETRY;
	}
	else
		cls = TRACK_OK;
	json_object_put(root);
	return cls;
}

TrackClass
shipsync_tracker_answer_aftership(const char *body, size_t len, long http_status, char **id,
								char **status, char *errbuf, size_t errlen)
{
	struct json_object *root;
	struct json_object *v;
	struct json_object *meta;
	struct json_object *data;
	struct json_object *tracking;
	TrackClass	cls = TRACK_HTTP;
	int			code;

	if (!tracker_root(body, len, http_status, false, id, status, &root, &cls,
					  errbuf, errlen))
		return cls;
	meta = json_object_object_get(root, "meta");
	data = json_object_object_get(root, "data");
	tracking = data ? json_object_object_get(data, "tracking") : NULL;
	code = meta && json_object_object_get_ex(meta, "code", &v) ? json_object_get_int(v) : 0;
	if (tracking)
	{
		*id = dup_member_text(tracking, "id");
		*status = dup_member_text(tracking, "tag");
	}
	if ((code == 200 || code == 201) && http_status >= 200 && http_status < 300)
		cls = TRACK_OK;
	else if (code == 4003)
		cls = TRACK_OK;		/* already tracked: what we wanted */
	else if (code == 401 || http_status == 401 || http_status == 403)
		cls = TRACK_AUTH;
	else if (http_status >= 200 && http_status < 300)
	{
		/*
		 * A failure inside a 2xx, told by meta.code: AfterShip's own rate
		 * limit and server errors (and a 2xx without meta: unreadable) are
		 * retried; its 4xx and 4xxx refusals are not.
		 */
		cls = code == 0 || code == 429 || (code >= 500 && code < 600) ?
			TRACK_RETRY : TRACK_PERMANENT;
	}
	else
		cls = TRACK_HTTP;
	if (cls != TRACK_OK && meta)
	{
		char	   *m = dup_member_text(meta, "message");

		snprintf(errbuf, errlen, "AfterShip %d: %s", code, m ? m : "");
		free(m);
	}
	else if (cls != TRACK_OK)
		snprintf(errbuf, errlen, "AfterShip answer has no \"meta\"");
	json_object_put(root);
	return cls;
}

TrackClass
shipsync_tracker_answer_kuaidi100(const char *body, size_t len, long http_status, char **id,
								char **status, char *errbuf, size_t errlen)
{
	struct json_object *root;
	TrackClass	cls = TRACK_HTTP;
	char	   *rc;
	char	   *msg;

	if (!tracker_root(body, len, http_status, false, id, status, &root, &cls,
					  errbuf, errlen))
		return cls;
	rc = dup_member_text(root, "returnCode");
	msg = dup_member_text(root, "message");
	if (!(http_status >= 200 && http_status < 300))
		cls = TRACK_HTTP;
	else if (rc == NULL)
	{
		snprintf(errbuf, errlen, "subscribe response has no \"returnCode\"");
		cls = TRACK_RETRY;
	}
	else if (strcmp(rc, "200") == 0 || strcmp(rc, "501") == 0)
		cls = TRACK_OK;
	else if (strcmp(rc, "600") == 0 || strcmp(rc, "601") == 0)
		cls = TRACK_AUTH;
	else if (rc[0] == '7')
		cls = TRACK_PERMANENT;
	else
		cls = TRACK_RETRY;
	if (cls != TRACK_OK && rc)
		snprintf(errbuf, errlen, "Kuaidi100 %s: %s", rc, msg ? msg : "");
	if (cls == TRACK_OK && strcmp(rc, "501") == 0)
		*status = strdup("already_subscribed");
	free(rc);
	free(msg);
	json_object_put(root);
	return cls;
}
