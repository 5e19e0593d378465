/*-------------------------------------------------------------------------
 *
 * dialect.c
 *		Rendering a request through a provider's dialect and field map.
 *
 * A provider whose profile has outbound rows has its request bodies
 * rendered through the map (compiled by provider.c when the configuration
 * is loaded); a generic provider without them keeps the generic body
 * {"order_ref", "order"} byte for byte.
 *
 * The sf_express dialect renders msgData through the map and sends the
 * signed form (sign.c) to the provider's single URL: EXP_RECE_CREATE_ORDER
 * for a create, EXP_RECE_UPDATE_ORDER with dealType 2 for a cancel; the
 * requestID is the intent's idempotency key and the body is stored, so a
 * retry sends the same orderId, timestamp and digest.  An update of an
 * order SF already has is finished with a reason: SF has no order update.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgtime.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"
#include "dispatcher.h"


/* ---------- rendering ---------- */

/* Copy a malloc'd string into the current memory context and free it */
static char *
take_malloced(char *s)
{
	char	   *p;

	if (s == NULL)
		return NULL;
	p = pstrdup(s);
	free(s);
	return p;
}

/* Render the mapped body of one order; NULL (and c->skip_reason) if invalid */
static char *
render_mapped(Provider *p, Claimed *c, const char *generic_body, bool form)
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
	return take_malloced(out);
}

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
	return take_malloced(form);
}

/*
 * Decide and render the request of one intent that is not a registration:
 * sets c->method, url, body and kind, or c->skip_reason (with c->invalid
 * when mapped fields are missing).  found: the order row still exists, its
 * generic body generic_body; shipment_id: the carrier's id of the shipment
 * made so far, or NULL; cancel: the intent cancels.
 */
void
dialect_render(Provider *p, Claimed *c, bool found, const char *generic_body,
			   const char *shipment_id, bool cancel)
{
	if (p->map_error)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("provider \"%s\" cannot render requests: %s", p->name, p->map_error),
				 errhint("Fix the rows of the profile in shipsync.field_map.")));

	if (p->dialect == DIALECT_SF_EXPRESS)
	{
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
			char	   *msg = render_mapped(p, c, generic_body, false);

			if (msg)
			{
				c->method = "POST";
				c->url = pstrdup(p->base_url);
				c->body = sf_form(p, c->idempotency_key, "EXP_RECE_CREATE_ORDER", msg);
				c->kind = INTENT_CREATE;
			}
		}
		return;
	}

	/* generic: the generic body, or the body of the profile's field map */
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
	c->body = p->out_map ? render_mapped(p, c, generic_body, false) :
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
 * The registration of a waybill at a tracking provider (op 'register'):
 * EasyPost POST /v2/trackers, AfterShip POST /trackings, Kuaidi100's
 * subscribe (POST /poll, a form with schema=json and param).  Kuaidi100
 * carries its key and the salt of its pushes (the provider's webhook
 * secret) inside param: the stored body holds placeholders that the
 * dispatcher replaces when sending, so that neither is ever stored in the
 * outbox (which readers may see) nor shown by render_request().
 */
void
dialect_render_register(Provider *p, Claimed *c, const char *tracking_number)
{
	StringInfoData b;

	if (tracking_number == NULL)
	{
		c->skip_reason = "no waybill to register";
		return;
	}
	initStringInfo(&b);
	c->method = "POST";
	c->kind = INTENT_REGISTER;
	switch (p->dialect)
	{
		case DIALECT_EASYPOST:
			appendStringInfo(&b, "{\"tracker\":{\"tracking_code\":%s", shipsync_quote_json(tracking_number));
			if (p->tr_carrier)
				appendStringInfo(&b, ",\"carrier\":%s", shipsync_quote_json(p->tr_carrier));
			appendStringInfoString(&b, "}}");
			c->url = psprintf("%s/v2/trackers", p->base_url);
			break;
		case DIALECT_AFTERSHIP:
			appendStringInfo(&b, "{\"tracking\":{\"tracking_number\":%s", shipsync_quote_json(tracking_number));
			if (p->tr_carrier)
				appendStringInfo(&b, ",\"slug\":%s", shipsync_quote_json(p->tr_carrier));
			appendStringInfo(&b, ",\"order_id\":%s}}", shipsync_quote_json(c->order_key));
			c->url = psprintf("%s/trackings", p->base_url);
			break;
		case DIALECT_KUAIDI100:
			{
				StringInfoData param;
				char	   *enc;

				initStringInfo(&param);
				appendStringInfo(&param, "{\"company\":%s,\"number\":%s,\"key\":\"%s\","
								 "\"parameters\":{\"callbackurl\":%s",
								 shipsync_quote_json(p->tr_carrier ? p->tr_carrier : ""),
								 shipsync_quote_json(tracking_number), DIALECT_KUAIDI100_KEY,
								 shipsync_quote_json(p->tr_callback_url ? p->tr_callback_url : ""));
				if (p->tr_salt)
					appendStringInfoString(&param, ",\"salt\":\"" DIALECT_KUAIDI100_SALT "\"");
				appendStringInfoString(&param, ",\"resultv2\":\"4\"}}");
				enc = take_malloced(shipsync_urlencode_form(param.data));
				appendStringInfo(&b, "schema=json&param=%s", enc);
				c->url = psprintf("%s/poll", p->base_url);
			}
			break;
		default:
			c->method = NULL;
			c->skip_reason = "the provider is not a tracking provider";
			return;
	}
	c->body = b.data;
}

/* The EXP_RECE_SEARCH_ORDER_RESP form that looks an order up by orderId */
char *
dialect_sf_search_body(Provider *p, const char *order_key, const char *request_id)
{
	char	   *msg = psprintf("{\"language\":\"zh-CN\",\"orderId\":%s}", shipsync_quote_json(order_key));

	return sf_form(p, request_id, "EXP_RECE_SEARCH_ORDER_RESP", msg);
}

/*
 * The EXP_RECE_QUERY_SFWAYBILL form that asks for a waybill's fees
 * (trackingType 2: by waybill), with the provider's monthly card when it
 * has one.
 */
char *
dialect_sf_fee_query_body(Provider *p, const char *waybill, const char *request_id)
{
	char	   *card = NULL;
	char	   *msg;

	if (p->options_text)
		(void) shipsync_json_arg_string(p->options_text, "monthly_card", &card);
	msg = psprintf("{\"trackingType\":\"2\",\"trackingNum\":%s%s%s}",
				   shipsync_quote_json(waybill),
				   card ? ",\"monthlyCard\":" : "",
				   card ? shipsync_quote_json(take_malloced(card)) : "");
	return sf_form(p, request_id, "EXP_RECE_QUERY_SFWAYBILL", msg);
}
/*
 * The header lines of a request to p, for http.c (which frees them with the
 * transfer): Idempotency-Key (when one is given: a pull has none), the
 * content type of the dialect's bodies (when there is a body), Accept, no
 * "Expect: 100-continue" round trip, the provider's static and auth
 * headers, and its OAuth2 token.
 */
struct curl_slist *
dialect_headers(Provider *p, const char *idempotency_key, bool has_body)
{
	struct curl_slist *h = NULL;
	char		line[128];

	if (idempotency_key)
	{
		snprintf(line, sizeof(line), "Idempotency-Key: %s", idempotency_key);
		h = curl_slist_append(h, line);
	}
	if (has_body)
		h = curl_slist_append(h, p->dialect == DIALECT_SF_EXPRESS ||
							  p->dialect == DIALECT_KUAIDI100 ?
							  "Content-Type: application/x-www-form-urlencoded" :
							  "Content-Type: application/json");
	h = curl_slist_append(h, "Accept: application/json");
	h = curl_slist_append(h, "Expect:");
	for (int i = 0; i < p->nheaders; i++)
		h = curl_slist_append(h, p->headers[i]);
	if (p->oauth_token)
		h = curl_slist_append(h, psprintf("Authorization: Bearer %s", p->oauth_token));
	return h;
}
