/*-------------------------------------------------------------------------
 *
 * generic.c
 *		The generic dialect: pg_shipsync's own wire contract
 *		(docs/wire-contract.md).
 *
 * A create is POST {base_url}/shipments, an update of a shipment the
 * carrier has PATCH {base_url}/shipments/{id}, a cancel POST
 * {base_url}/shipments/{id}/cancel with {"order_ref"}; the body is the
 * generic {"order_ref", "order"}, or what the profile's outbound map
 * renders from it.  The answer is read by json.c (or the inbound map);
 * 2xx is done, the rest is judged by HTTP status (retry.c).  With auth
 * type kuaidi100 each request is signed in headers; with OAuth2, a 401 is
 * the token's, fetched again once.  Pushes are signed as Standard
 * Webhooks.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>
#include <curl/curl.h>

#include "utils/builtins.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

/*
 * The request of one intent: sets c->method, url, body and kind, or
 * c->skip_reason (with c->invalid when mapped fields are missing).
 */
static void
generic_render(Provider *p, Claimed *c, bool found, const char *generic_body,
			   const char *shipment_id, bool cancel)
{
	dialect_check_map(p);
	if (cancel)
	{
		if (shipment_id == NULL)
			c->skip_reason = "no shipment to cancel";
		else
		{
			c->method = "POST";
			c->url = psprintf("%s/shipments/%s/cancel", p->base_url,
							  shipsync_url_escape(shipment_id));
			c->body = psprintf("{\"order_ref\":%s}", shipsync_quote_json(c->order_key));
			c->kind = INTENT_CANCEL;
		}
		return;
	}
	if (!found)
	{
		c->skip_reason = "the order row no longer exists";
		return;
	}
	c->body = p->out_map ? dialect_render_mapped(p, c, generic_body, false) :
		(char *) generic_body;
	if (c->body == NULL)
		return;
	c->method = "POST";
	if (strcmp(c->op, "update") == 0 && shipment_id != NULL)
	{
		c->method = "PATCH";
		c->url = psprintf("%s/shipments/%s", p->base_url, shipsync_url_escape(shipment_id));
		c->kind = INTENT_UPDATE;
	}
	else
	{
		c->url = psprintf("%s/shipments", p->base_url);
		c->kind = INTENT_CREATE;
	}
}

/*
 * Kuaidi100-style signing of a generic request (auth type kuaidi100):
 * X-Kuaidi100-Customer and X-Kuaidi100-Sign = UPPER(MD5(body + key +
 * customer)), over the stored body, so every retry carries the same sign.
 */
static struct curl_slist *
generic_sign(Provider *p, Claimed *c, struct curl_slist *h)
{
	const char *body = c->body;
	char	   *joined;
	char	   *sign;

	if (p->kd_customer == NULL || p->kd_key == NULL)
		return h;
	joined = psprintf("%s%s%s", body ? body : "", p->kd_key, p->kd_customer);
	sign = shipsync_md5_upper_hex(joined);
	pfree(joined);
	if (sign == NULL)
		return h;
	h = curl_slist_append(h, psprintf("X-Kuaidi100-Customer: %s", p->kd_customer));
	h = curl_slist_append(h, psprintf("X-Kuaidi100-Sign: %s", sign));
	free(sign);
	return h;
}

static bool
generic_in_map(Provider *p, HttpTransfer *t, ShipResponse *sr, bool need_ids,
			 char *err, size_t errlen)
{
	ShipJson   *doc = shipsync_json_parse(t->response.data, t->response.len, err, errlen);
	bool		ok;

	if (doc == NULL)
		return false;
	ok = dialect_in_map(p, doc, sr, need_ids, err, errlen);
	shipsync_json_free(doc);
	return ok;
}

/*
 * A 401 of a provider with OAuth2.  Returns true when r is complete (sent
 * again at once with a new token); otherwise sets *v and r->error.
 */
static bool
generic_oauth_401(const DialectAnswer *a, Provider *p, ShipResult *r, ShipVerdict *v)
{
	HttpTransfer *t = a->t;

	/*
	 * The token was refused.  If it is still the current one, it is sent no
	 * more: another is fetched once, or the fetch in flight brings it, and
	 * the intent goes again with that.  If the current token itself replaced
	 * a refused one, the credentials are wrong: stop.
	 */
	bool		current = a->oauth_current;

	v->in_doubt = false;
	v->hold_provider = false;
	if (current && p->oauth_after_401 && !p->oauth_refreshing)
	{
		v->outcome = SHIP_DEAD;
		v->error_class = r->error_class = "auth";
		r->ticket_kind = "auth_failed";
		r->error = psprintf("HTTP 401 with a token fetched after an earlier 401: %s (credentials refused: not retried)",
							dialect_excerpt(t->response.data, t->response.len));
		return false;
	}
	if (current && !p->oauth_refused)
	{
		p->oauth_refused = true;
		p->oauth_refused_at = a->now;
		p->maybe_work = true;
	}
	v->outcome = SHIP_RETRY;
	v->error_class = r->error_class = "auth_refresh";
	r->error = pstrdup("HTTP 401: the OAuth2 token was refused; sent again with a new one");
	if (a->c->attempt < p->max_attempts)
	{
		r->state = "retrying";
		r->outcome = "retry";
		r->next_at = a->now;
		return true;
	}
	return false;
}

/*
 * Judge a generic-dialect answer.  Returns true when r is complete (done);
 * otherwise sets *v and r->error.  A 401 of a provider with OAuth2 is the
 * token's: see generic_oauth_401().  p is NULL for a provider dropped
 * while its request was in flight: the answer is judged by HTTP alone.
 */
static bool
generic_judge(const DialectAnswer *a, Provider *p, ShipResult *r, ShipVerdict *v)
{
	HttpTransfer *t = a->t;
	bool		body_ok = true;
	bool		refused = false;
	ShipResponse sr;
	char		err[256];

	if (p && p->oauth_client_id && t->curl_code == CURLE_OK && t->http_status == 401)
		return generic_oauth_401(a, p, r, v);
	memset(&sr, 0, sizeof(sr));
	err[0] = '\0';
	if (t->curl_code == CURLE_OK && t->http_status >= 200 && t->http_status < 300)
	{
		bool		mapped = p && p->in_map != NULL;

		body_ok = shipsync_parse_ship_response(t->response.data, t->response.len,
											   a->c->kind == INTENT_CREATE && !mapped,
											   &sr, err, sizeof(err));
		refused = !body_ok && sr.refused;
		if (body_ok && mapped)
			body_ok = generic_in_map(p, t, &sr, a->c->kind == INTENT_CREATE, err, sizeof(err));
	}
	if (refused)
	{
		dialect_refuse(r, v, t->http_status, err);
		return false;
	}
	*v = http_classify(t, body_ok);
	r->error_class = v->error_class;
	if (v->outcome != SHIP_OK)
	{
		r->error = dialect_transfer_error(t, v->in_doubt, err);
		return false;
	}
	if (p && a->oauth_current)
		p->oauth_after_401 = false;
	dialect_done(r);
	r->ship_id = sr.id ? pstrdup(sr.id) : NULL;
	r->tracking_number = sr.tracking_number ? pstrdup(sr.tracking_number) : NULL;
	r->label_url = sr.label_url ? pstrdup(sr.label_url) : NULL;
	r->raw_status = sr.status ? pstrdup(sr.status) : NULL;
	r->fees_body = sr.fees ? pstrdup(sr.fees) : NULL;
	shipsync_free_ship_response(&sr);
	return true;
}

/* A push signed as Standard Webhooks (webhook-id, -timestamp, -signature) */
static SigResult
generic_verify_push(const char *secret, const DialectPush *push, const char **reason)
{
	return shipsync_verify_standard_webhooks(secret,
											 push->header(push->arg, "webhook-id"),
											 push->header(push->arg, "webhook-timestamp"),
											 push->header(push->arg, "webhook-signature"),
											 push->body, push->len, (long) time(NULL),
											 WEBHOOK_TOLERANCE_S, reason);
}

const DialectRoutine generic_dialect = {
	.name = "generic",
	.timezone = "UTC",
	.render = generic_render,
	.sign = generic_sign,
	.judge = generic_judge,
	.verify_push = generic_verify_push,
	.read_tracking = shipsync_parse_tracking_generic,
};
