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
	size_t		n;
	char		key[512];

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
	if (n == 0 && state)
	{
		snprintf(errbuf, errlen, "param has a state but no history in \"data\"");
		return false;
	}
	if (str_member(root, "status") && strcmp(str_member(root, "status"), "abort") == 0)
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
 * Read the events of one tracking payload of a dialect (for kuaidi100, the
 * decoded param field).  Returns false with a reason in errbuf when the
 * body is not what the dialect sends; out is then to be freed all the same.
 */
bool
shipsync_parse_tracking(const char *dialect, const char *body, size_t len,
						TrackEventList *out, char *errbuf, size_t errlen)
{
	struct json_tokener *tok;
	struct json_object *root;
	bool		ok;

	memset(out, 0, sizeof(*out));
	errbuf[0] = '\0';
	if (len > (size_t) INT32_MAX)
	{
		snprintf(errbuf, errlen, "body too large");
		return false;
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

		snprintf(errbuf, errlen, "the body is not valid JSON: %s",
				 jerr == json_tokener_continue ? "unexpected end of input" :
				 json_tokener_error_desc(jerr));
		json_object_put(root);
		json_tokener_free(tok);
		return false;
	}
	json_tokener_free(tok);
	if (!json_object_is_type(root, json_type_object))
	{
		snprintf(errbuf, errlen, "the body is not a JSON object");
		json_object_put(root);
		return false;
	}

	if (strcmp(dialect, "generic") == 0)
		ok = parse_generic(root, out, errbuf, errlen);
	else if (strcmp(dialect, "easypost") == 0)
		ok = parse_easypost(root, out, errbuf, errlen);
	else if (strcmp(dialect, "aftership") == 0)
		ok = parse_aftership(root, out, errbuf, errlen);
	else if (strcmp(dialect, "kuaidi100") == 0)
		ok = parse_kuaidi100(root, out, errbuf, errlen);
	else if (strcmp(dialect, "sf_express") == 0)
		ok = parse_sf_express(root, out, errbuf, errlen);
	else
	{
		snprintf(errbuf, errlen, "dialect \"%s\" has no tracking payload", dialect);
		ok = false;
	}
	if (!ok && errbuf[0] == '\0')
		snprintf(errbuf, errlen, "out of memory");
	json_object_put(root);
	return ok;
}
