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

#include <json.h>

#include "pg_shipsync.h"

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
			if (!shipsync_is_decimal(json_object_get_string(amount)))
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
 * Parse a generic-dialect response: {"id", "tracking_number", "label_url"?,
 * "status"?, "fees"?: [{"type", "amount", "currency"}]}.  With need_ids, id
 * and tracking_number must be non-empty strings (a create).  Returns false
 * with a message in errbuf when the body is not such an object.
 */
bool
shipsync_parse_ship_response(const char *body, size_t len, bool need_ids,
							 ShipResponse *out, char *errbuf, size_t errlen)
{
	struct json_tokener *tok;
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

	tok = json_tokener_new();
	if (tok == NULL)
	{
		snprintf(errbuf, errlen, "out of memory");
		return false;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	root = json_tokener_parse_ex(tok, body ? body : "", (int) len);
	if (root == NULL || json_tokener_get_parse_end(tok) != len)
	{
		enum json_tokener_error jerr = json_tokener_get_error(tok);

		snprintf(errbuf, errlen, "response is not valid JSON: %s",
				 jerr == json_tokener_continue ? "unexpected end of input" :
				 json_tokener_error_desc(jerr));
		json_object_put(root);
		json_tokener_free(tok);
		return false;
	}
	json_tokener_free(tok);

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
		out->has_fees = ok;
	}

	json_object_put(root);
	if (!ok)
		shipsync_free_ship_response(out);
	return ok;
}

void
shipsync_free_ship_response(ShipResponse *r)
{
	free(r->id);
	free(r->tracking_number);
	free(r->label_url);
	free(r->status);
	memset(r, 0, sizeof(*r));
}
