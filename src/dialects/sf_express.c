/*-------------------------------------------------------------------------
 *
 * sf_express.c
 *		The sf_express dialect: SF Express's signed forms to one URL.
 *
 * msgData is rendered through the profile's outbound map (which this
 * dialect needs) and sent as the signed form (sign.c) to the provider's
 * single URL: EXP_RECE_CREATE_ORDER for a create, EXP_RECE_UPDATE_ORDER
 * with dealType 2 for a cancel; the requestID is the intent's idempotency
 * key and the body is stored, so a retry sends the same orderId, timestamp
 * and msgData, signed again as it goes (sf_sign()) with the partner id
 * and check word of now: the stored bytes while those are unchanged.  An
 * update of an order SF already has is finished with a reason: SF has no
 * order update.  Business errors come inside a 200
 * (retry.c's shipsync_sf_classify()); 8016, a duplicate orderId, is
 * followed on the same flight by EXP_RECE_SEARCH_ORDER_RESP, whose
 * waybill is applied as the create's.  Fees are asked with
 * EXP_RECE_QUERY_SFWAYBILL.  Route and fee pushes carry no signature:
 * they are taken only with option accept_unsigned_pushes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

/* The milliseconds since the epoch, as SF's timestamp wants them */
static char *
sf_timestamp(void)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		ms = (now / 1000) + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;

	return psprintf(INT64_FORMAT, ms);
}

static char *
sf_form(Provider *p, const char *request_id, const char *service, const char *msg_data)
{
	char	   *form;

	if (p->sf_partner_id == NULL || p->sf_checkword == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("provider \"%s\" has no SF Express partner_id and checkword", p->name),
				 errhint("Create it with auth {\"type\": \"sf_express\", \"partner_id\": ..., \"checkword\": ...}.")));
	form = shipsync_sf_form(p->sf_partner_id, request_id, service, sf_timestamp(),
							msg_data, p->sf_checkword);
	if (form == NULL)
		elog(ERROR, "could not compute the SF Express msgDigest");
	return dialect_take_malloced(form);
}

/* The EXP_RECE_SEARCH_ORDER_RESP form that looks an order up by orderId */
static char *
sf_search_body(Provider *p, const char *order_key, const char *request_id)
{
	char	   *msg = psprintf("{\"language\":\"zh-CN\",\"orderId\":%s}", shipsync_quote_json(order_key));

	return sf_form(p, request_id, "EXP_RECE_SEARCH_ORDER_RESP", msg);
}

/*
 * The EXP_RECE_QUERY_SFWAYBILL form that asks for a waybill's fees
 * (trackingType 2: by waybill), with the provider's monthly card when it
 * has one.
 */
static char *
sf_fee_query(Provider *p, const char *waybill, const char *request_id)
{
	char	   *card = NULL;
	char	   *msg;

	if (p->options_text)
		(void) shipsync_json_arg_string(p->options_text, "monthly_card", &card);
	msg = psprintf("{\"trackingType\":\"2\",\"trackingNum\":%s%s%s}",
				   shipsync_quote_json(waybill),
				   card ? ",\"monthlyCard\":" : "",
				   card ? shipsync_quote_json(dialect_take_malloced(card)) : "");
	return sf_form(p, request_id, "EXP_RECE_QUERY_SFWAYBILL", msg);
}

/*
 * The request of one intent: the signed form of a create or a cancel, or
 * c->skip_reason.
 */
static void
sf_render(Provider *p, Claimed *c, bool found, const char *generic_body,
		  const char *shipment_id, bool cancel)
{
	dialect_check_map(p);
	if (cancel)
	{
		if (shipment_id == NULL)
			c->skip_reason = "no shipment to cancel";
		else
		{
			char	   *msg = psprintf("{\"orderId\":%s,\"dealType\":2}", shipsync_quote_json(c->order_key));

			c->method = "POST";
			c->url = pstrdup(p->base_url);
			c->body = sf_form(p, c->idempotency_key, "EXP_RECE_UPDATE_ORDER", msg);
			c->kind = INTENT_CANCEL;
		}
	}
	else if (!found)
		c->skip_reason = "the order row no longer exists";
	else if (strcmp(c->op, "update") == 0 && shipment_id != NULL)
		c->skip_reason = "SF Express cannot change an order it already has: cancel it and create another";
	else
	{
		char	   *msg = dialect_render_mapped(p, c, generic_body, false);

		if (msg)
		{
			c->method = "POST";
			c->url = pstrdup(p->base_url);
			c->body = sf_form(p, c->idempotency_key, "EXP_RECE_CREATE_ORDER", msg);
			c->kind = INTENT_CREATE;
		}
	}
}

/*
 * A form field of a stored request, palloc'd; NULL when it is not there.
 */
static char *
sf_stored_field(const char *body, const char *name)
{
	char	   *v = shipsync_form_field(body, strlen(body), name);

	return v ? dialect_take_malloced(v) : NULL;
}

/*
 * As a stored request goes again: signed with the provider's partner id and
 * check word of now.  The request was signed when it was first rendered; a
 * check word changed since (rotated, or a wrong one fixed with set_secret())
 * made every retry, and every requeue of its dead intents, carry the digest
 * of the old one, which SF refuses (A1006): dead again, however often sent.
 * The requestID, serviceCode, timestamp and msgData (its orderId: SF's own
 * idempotency key) are the stored ones; with the credentials unchanged the
 * form is the stored one byte for byte.  A request rendered for this very
 * attempt was signed just now.
 */
static struct curl_slist *
sf_sign(Provider *p, Claimed *c, struct curl_slist *h)
{
	char	   *request_id;
	char	   *service;
	char	   *timestamp;
	char	   *msg_data;
	char	   *form;

	if (!c->rendered || c->body == NULL ||
		p->sf_partner_id == NULL || p->sf_checkword == NULL)
		return h;
	request_id = sf_stored_field(c->body, "requestID");
	service = sf_stored_field(c->body, "serviceCode");
	timestamp = sf_stored_field(c->body, "timestamp");
	msg_data = sf_stored_field(c->body, "msgData");
	if (request_id == NULL || service == NULL || timestamp == NULL || msg_data == NULL)
		return h;				/* not a form of ours: sent as stored */
	form = shipsync_sf_form(p->sf_partner_id, request_id, service, timestamp,
							msg_data, p->sf_checkword);
	if (form != NULL)			/* NULL only if OpenSSL fails: as stored */
		c->body = dialect_take_malloced(form);
	return h;
}

/*
 * 8037 (already cancelled) finishes a cancel; to a create (or to the search
 * after its 8016) it says SF holds the orderId as cancelled: no order was
 * made, and sending the same orderId again cannot make one.  Dead, with a
 * ticket; frees sf.
 */
static void
sf_cancelled_create(const DialectAnswer *a, SfResponse *sf, ShipResult *r, ShipVerdict *v)
{
	v->outcome = SHIP_DEAD;
	v->in_doubt = false;
	v->hold_provider = false;
	v->error_class = r->error_class = "business_error";
	r->error = psprintf("SF Express %s: %s (order %s is cancelled at SF: a create with the same orderId cannot succeed)",
						sf->code ? sf->code : "8037", sf->message ? sf->message : "",
						a->c->order_key);
	shipsync_free_sf_response(sf);
}

/*
 * Judge an SF Express answer.  Returns true when r is complete (done);
 * otherwise sets *v and r->error for the common retry-or-dead tail.
 * Business errors come inside a 200 (shipsync_sf_classify in retry.c).
 */
static bool
sf_judge(const DialectAnswer *a, Provider *p, ShipResult *r, ShipVerdict *v)
{
	HttpTransfer *t = a->t;
	SfResponse	sf;
	char		err[256];
	ShipJson   *doc;
	bool		ok;

	if (t->curl_code != CURLE_OK || t->http_status < 200 || t->http_status >= 300)
	{
		*v = http_classify(t, true);
		r->error_class = v->error_class;
		r->error = dialect_transfer_error(t, v->in_doubt, NULL);
		return false;
	}
	/* one parse: classification and the inbound map read the same document */
	doc = shipsync_json_parse(t->response.data, t->response.len, err, sizeof(err));
	ok = doc != NULL && shipsync_parse_sf_doc(doc, a->searching, &sf, err, sizeof(err));
	if (!ok)
	{
		shipsync_json_free(doc);
		*v = shipsync_classify(CURLE_OK, t->http_status, true, false);
		r->error_class = v->error_class;
		r->error = psprintf("HTTP %ld: %s", t->http_status, err);
		return false;
	}
	if (sf.cls == SF_ALREADY_CANCELLED && a->c->kind != INTENT_CANCEL)
	{
		shipsync_json_free(doc);
		sf_cancelled_create(a, &sf, r, v);
		return false;
	}
	if (sf.cls == SF_OK || sf.cls == SF_ALREADY_CANCELLED)
	{
		ShipResponse sr = {0};

		sr.id = sf.order_id ? strdup(sf.order_id) : NULL;
		sr.tracking_number = sf.waybill ? strdup(sf.waybill) : NULL;
		if (p->in_map && sf.cls == SF_OK &&
			!dialect_in_map(p, doc, &sr, a->c->kind == INTENT_CREATE, err, sizeof(err)))
		{
			shipsync_json_free(doc);
			shipsync_free_ship_response(&sr);
			shipsync_free_sf_response(&sf);
			*v = shipsync_classify(CURLE_OK, t->http_status, true, false);
			r->error_class = v->error_class;
			r->error = psprintf("HTTP %ld: %s", t->http_status, err);
			return false;
		}
		dialect_done(r);
		r->ship_id = pstrdup(sr.id ? sr.id : a->c->order_key);
		r->tracking_number = sr.tracking_number ? pstrdup(sr.tracking_number) : NULL;
		r->waybills = sf.waybills ? pstrdup(sf.waybills) : NULL;
		r->raw_status = a->c->kind == INTENT_CANCEL ? pstrdup("cancelled") : NULL;
		if (sf.cls == SF_ALREADY_CANCELLED)
		{
			r->error_class = "already_cancelled";
			r->error = psprintf("SF Express %s: %s", sf.code, sf.message ? sf.message : "");
		}
		else if (a->searching)
		{
			r->error_class = "duplicate_resolved";
			r->error = pstrdup("SF Express answered 8016 (duplicate order); the order was found by EXP_RECE_SEARCH_ORDER_RESP");
		}
		shipsync_json_free(doc);
		shipsync_free_ship_response(&sr);
		shipsync_free_sf_response(&sf);
		return true;
	}
	shipsync_json_free(doc);

	v->in_doubt = false;
	v->hold_provider = false;
	v->error_class = shipsync_sf_error_class(sf.cls);
	v->outcome = sf.cls == SF_RETRY || sf.cls == SF_NOT_FOUND || sf.cls == SF_DUPLICATE ?
		SHIP_RETRY : SHIP_DEAD;
	r->error_class = v->error_class;
	if (sf.cls == SF_NOT_FOUND)
		r->error = psprintf("SF Express answered 8016 (duplicate order) but a search found no order %s: the create is sent again",
							a->c->order_key);
	else
		r->error = psprintf("SF Express %s: %s", sf.code ? sf.code : "?",
							sf.message ? sf.message : "");
	if (sf.cls == SF_AUTH)
	{
		r->ticket_kind = "auth_failed";
		r->error = psprintf("%s (credentials refused: not retried)", r->error);
	}
	shipsync_free_sf_response(&sf);
	return false;
}

/*
 * SF Express answered 8016 (duplicate orderId) to a create: the order
 * exists, perhaps from an attempt whose answer was lost.  Look it up by
 * orderId on the same flight instead of applying; its waybill is then
 * applied as the create's.  Returns the EXP_RECE_SEARCH_ORDER_RESP form
 * to send, or NULL when the answer is no duplicate.
 */
static char *
sf_follow_up(const DialectAnswer *a, Provider *p)
{
	HttpTransfer *t = a->t;
	SfResponse	sf;
	char		err[256];
	bool		dup;

	if (a->searching || a->c->kind != INTENT_CREATE || t->curl_code != CURLE_OK ||
		t->http_status < 200 || t->http_status >= 300)
		return NULL;
	/* most answers are not a duplicate: no parse unless the code is there */
	if (t->response.data == NULL ||
		memmem(t->response.data, t->response.len, "8016", 4) == NULL)
		return NULL;
	if (!shipsync_parse_sf_response(t->response.data, t->response.len, false, &sf, err, sizeof(err)))
		return NULL;
	dup = sf.cls == SF_DUPLICATE;
	shipsync_free_sf_response(&sf);
	if (!dup)
		return NULL;
	ereport(LOG,
			(errmsg("pg_shipsync: SF Express answered 8016 (duplicate order) to order %s; looking it up",
					a->c->order_key)));
	return sf_search_body(p, a->c->order_key, psprintf("%s-search", a->c->idempotency_key));
}

const DialectRoutine sf_express_dialect = {
	.name = "sf_express",
	.needs_out_map = true,
	.form_body = true,
	.render_secrets = true,
	.timezone = "Asia/Shanghai",
	.render = sf_render,
	.sign = sf_sign,
	.judge = sf_judge,
	.follow_up = sf_follow_up,
	.lookup = sf_search_body,
	.fee_query = sf_fee_query,
	.push_reply = "{\"return_code\": \"0000\", \"return_msg\": \"\\u6210\\u529f\"}",
	.read_tracking = shipsync_parse_tracking_sf_express,
};
