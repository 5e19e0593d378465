/*-------------------------------------------------------------------------
 *
 * shared.c
 *		What the dialects share: time zones, rendering through a field
 *		map, reading an answer, judging a tracking registration.
 *
 * A provider whose profile has outbound rows has its request bodies
 * rendered through the map (compiled by provider.c when the configuration
 * is loaded); a generic provider without them keeps the generic body
 * {"order_ref", "order"} byte for byte.  Named time zones of the timestamp
 * transforms are resolved with PostgreSQL's zone database (pg_tzset).
 * An answer's text is kept only as an excerpt (retry.c): escaped, valid
 * UTF-8, at most SHIPSYNC_EXCERPT_CHARS characters.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "pgtime.h"
#include "utils/builtins.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

/*
 * The UTC offset of a named zone at a UTC instant, from PostgreSQL's zone
 * database (mapping.c's callback for named zones).
 */
bool
shipsync_tz_offset(const char *zone, int64_t utc_epoch, int *offset_s, void *arg)
{
	pg_tz	   *tz = pg_tzset(zone);
	pg_time_t	t = (pg_time_t) utc_epoch;
	struct pg_tm *tm;

	if (tz == NULL)
		return false;
	tm = pg_localtime(&t, tz);
	if (tm == NULL)
		return false;
	*offset_s = (int) tm->tm_gmtoff;
	return true;
}

/* ---------- loading maps ---------- */

/* ---------- rendering ---------- */

/* Copy a malloc'd string into the current memory context and free it */
char *
dialect_take_malloced(char *s)
{
	char	   *p;

	if (s == NULL)
		return NULL;
	p = pstrdup(s);
	free(s);
	return p;
}

/*
 * Raise the error of a provider whose profile's rows do not compile (or
 * that lacks the outbound map its dialect needs): it cannot render.
 */
void
dialect_check_map(Provider *p)
{
	if (p->map_error)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("provider \"%s\" cannot render requests: %s", p->name, p->map_error),
				 errhint("Fix the rows of the profile in shipsync.field_map.")));
}

/*
 * Render the body of one order through p's outbound map, from its generic
 * body; NULL (and c->skip_reason, c->invalid) when required fields are
 * missing or malformed.  form: as a form instead of JSON.
 */
char *
dialect_render_mapped(Provider *p, Claimed *c, const char *generic_body, bool form)
{
	char		err[1024];
	ShipJson   *doc;
	ShipJson   *row;
	MapEnv		env;
	char	   *out = NULL;
	MapOutcome	rc;

	/*
	 * The row as PostgreSQL printed it: indexed by one scan, no tree (most
	 * of a render's cost was building one); the full parser only when the
	 * scan cannot read it.
	 */
	memset(&env, 0, sizeof(env));
	doc = NULL;
	row = NULL;
	if (shipsync_row_index(generic_body, "order", &p->row_index))
		env.flat = &p->row_index;
	else
	{
		doc = shipsync_json_parse(generic_body, strlen(generic_body), err, sizeof(err));
		if (doc == NULL)
			elog(ERROR, "the rendered order row is not JSON: %s", err);
		row = shipsync_json_member_doc(doc, "order");
	}
	env.row = row;
	env.options = p->options;
	env.order_key = c->order_key;
	env.idempotency_key = c->idempotency_key;
	env.tz_offset = shipsync_tz_offset;
	rc = shipsync_map_render(p->out_map, &env, form, &out, err, sizeof(err));
	shipsync_json_free(row);
	shipsync_json_free(doc);
	if (rc == MAP_ERROR)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("field map of profile \"%s\" cannot be applied: %s", p->profile, err),
				 errhint("Fix the rows of profile \"%s\" in shipsync.field_map.", p->profile)));
	if (rc == MAP_INVALID)
	{
		c->invalid = true;
		c->skip_reason = psprintf("required mapped fields are missing or malformed: %s", err);
		return NULL;
	}
	return dialect_take_malloced(out);
}

/* ---------- reading answers ---------- */

/*
 * What is kept of a carrier's text: an excerpt of at most
 * SHIPSYNC_EXCERPT_CHARS characters, control characters escaped, valid
 * UTF-8 (retry.c), never the raw bytes.
 */
char *
dialect_excerpt(const char *s, size_t len)
{
	size_t		size = 6 * SHIPSYNC_EXCERPT_CHARS + 4;

	return shipsync_excerpt(s, len, SHIPSYNC_EXCERPT_CHARS, palloc(size), size);
}

/*
 * last_error for a transfer that did not succeed: the response too large,
 * the transport's error (marked when the request may have reached the
 * carrier), or the HTTP status with detail, else the start of the body.
 */
char *
dialect_transfer_error(const HttpTransfer *t, bool in_doubt, const char *detail)
{
	if (t->too_large)
		return psprintf("response larger than shipsync.max_response_bytes (%d bytes)",
						shipsync_max_response_bytes);
	if (t->curl_code == CURLE_SEND_FAIL_REWIND)
		return pstrdup("connection lost after the request was sent (in doubt: the request may have reached the carrier)");
	if (t->curl_code != CURLE_OK)
		return psprintf("%s%s", t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->curl_code),
						in_doubt ? " (in doubt: the request may have reached the carrier)" : "");
	return psprintf("HTTP %ld: %s", t->http_status,
					detail && detail[0] ? detail : dialect_excerpt(t->response.data, t->response.len));
}

/*
 * A carrier's answer refused for good: error class bad_response, dead
 * (the carrier replays the same answer to the same key, so a retry cannot
 * help).  why is the reason, in the carrier's words where it has them.
 */
void
dialect_refuse(ShipResult *r, ShipVerdict *v, long http_status, const char *why)
{
	v->outcome = SHIP_DEAD;
	v->error_class = "bad_response";
	v->in_doubt = false;
	v->hold_provider = false;
	r->error_class = "bad_response";
	r->ship_ok = false;
	r->ship_id = r->tracking_number = r->label_url = r->raw_status = NULL;
	r->fees_body = r->waybills = NULL;
	r->error = psprintf("HTTP %ld: the answer is refused: %s", http_status, why);
}

/* r as a success: done, its shipment (or registration) to record */
void
dialect_done(ShipResult *r)
{
	r->state = "done";
	r->outcome = "done";
	r->ship_ok = true;
	r->error_class = NULL;
}

/*
 * Read canonical fields out of a response through the provider's inbound
 * map (shipsync.field_map, direction 'in'): they replace what the dialect
 * found.  A create must end with a tracking number.
 */
bool
dialect_in_map(Provider *p, ShipJson *doc, ShipResponse *sr, bool need_ids,
				 char *err, size_t errlen)
{
	char	  **fields;
	MapValue   *values;
	int			n;
	MapEnv		env = {0};

	env.tz_offset = shipsync_tz_offset;
	(void) shipsync_map_read(p->in_map, doc, &env, &fields, &values, &n, err, errlen);
	for (int i = 0; i < n; i++)
	{
		char	  **target = NULL;

		if (strcmp(fields[i], "tracking_number") == 0)
			target = &sr->tracking_number;
		else if (strcmp(fields[i], "provider_shipment_id") == 0)
			target = &sr->id;
		else if (strcmp(fields[i], "label_url") == 0)
			target = &sr->label_url;
		else if (strcmp(fields[i], "status") == 0)
			target = &sr->status;
		if (target && values[i].type != MV_NULL && values[i].type != MV_RAW)
		{
			free(*target);
			*target = values[i].s;
			values[i].s = NULL;
		}
		free(fields[i]);
		shipsync_value_free(&values[i]);
	}
	free(fields);
	free(values);
	if (need_ids && (sr->tracking_number == NULL || sr->tracking_number[0] == '\0'))
	{
		snprintf(err, errlen, "the inbound map of profile \"%s\" found no tracking_number", p->profile);
		return false;
	}
	err[0] = '\0';
	return true;
}

/*
 * Judge a tracking provider's answer to a registration (read by the
 * dialect's tracker_answer, in json.c): the judge of every tracking
 * dialect.  Returns true when
 * r is complete (done); otherwise sets *v and r->error.
 */
bool
dialect_judge_tracker(const DialectAnswer *a, Provider *p, ShipResult *r, ShipVerdict *v)
{
	HttpTransfer *t = a->t;
	char		err[256];
	char	   *id = NULL;
	char	   *status = NULL;
	TrackClass	cls = TRACK_HTTP;

	if (t->curl_code == CURLE_OK && !t->too_large)
		cls = p->dialect->tracker_answer(t->response.data, t->response.len,
										 t->http_status, &id, &status, err, sizeof(err));
	if (cls == TRACK_OK)
	{
		dialect_done(r);
		r->ship_id = id ? pstrdup(id) : NULL;
		r->raw_status = status ? pstrdup(status) : NULL;
		if (t->http_status >= 300 || (status && strcmp(status, "already_subscribed") == 0))
		{
			r->error_class = "already_registered";
			r->error = psprintf("HTTP %ld: the waybill was already registered", t->http_status);
		}
		free(id);
		free(status);
		return true;
	}
	free(id);
	free(status);
	/* a 2xx a reader could not call a success is no success either */
	if (cls == TRACK_HTTP && t->curl_code == CURLE_OK && !t->too_large &&
		t->http_status >= 200 && t->http_status < 300)
		cls = TRACK_RETRY;
	if (cls == TRACK_HTTP)
	{
		*v = http_classify(t, true);
		r->error_class = v->error_class;
		r->error = dialect_transfer_error(t, v->in_doubt, err);
		if (t->curl_code == CURLE_OK && (t->http_status == 401 || t->http_status == 403))
		{
			v->error_class = r->error_class = "auth";
			r->ticket_kind = "auth_failed";
		}
		return false;
	}
	v->in_doubt = false;
	v->hold_provider = false;
	v->outcome = cls == TRACK_RETRY ? SHIP_RETRY : SHIP_DEAD;
	v->error_class = cls == TRACK_AUTH ? "auth" : cls == TRACK_RETRY ? "business_retry" : "business_error";
	r->error_class = v->error_class;
	r->error = psprintf("HTTP %ld: %s", t->http_status, err[0] ? err : dialect_excerpt(t->response.data, t->response.len));
	if (cls == TRACK_AUTH)
	{
		r->ticket_kind = "auth_failed";
		r->error = psprintf("%s (credentials refused: not retried)", r->error);
	}
	return false;
}
