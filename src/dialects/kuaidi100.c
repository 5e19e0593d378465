/*-------------------------------------------------------------------------
 *
 * kuaidi100.c
 *		The kuaidi100 tracking dialect: subscriptions at 快递100.
 *
 * A waybill is registered with Kuaidi100's subscribe: POST {base_url}/poll,
 * a form with schema=json and param {"company", "number", "key",
 * "parameters": {"callbackurl", "salt", "resultv2"}} (options company and
 * callback_url).  param carries the provider's key and the salt of its
 * pushes (the webhook secret): the stored body holds placeholders that
 * kuaidi100_sign() replaces when the request goes, so that neither is ever
 * stored in the outbox (which readers may see) nor shown by
 * render_request().  Only the values of members "key" and "salt" are
 * replaced: a waybill that reads like a placeholder stays a waybill.
 * Pushes are forms too: param, signed by sign = UPPER(MD5(param + salt)),
 * answered with Kuaidi100's success body.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "utils/builtins.h"
#include "utils/json.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

/* Stand for the key and the salt in stored subscription bodies */
#define KUAIDI100_KEY "__SHIPSYNC_KUAIDI100_KEY__"
#define KUAIDI100_SALT "__SHIPSYNC_KUAIDI100_SALT__"

/* The registration of a waybill: a subscription, its secrets as placeholders */
static void
kuaidi100_register(Provider *p, Claimed *c, const char *tracking_number)
{
	StringInfoData param;
	char	   *enc;

	if (tracking_number == NULL)
	{
		c->skip_reason = "no waybill to register";
		return;
	}
	initStringInfo(&param);
	appendStringInfo(&param, "{\"company\":%s,\"number\":%s,\"key\":\"%s\","
					 "\"parameters\":{\"callbackurl\":%s",
					 shipsync_quote_json(p->tr_carrier ? p->tr_carrier : ""),
					 shipsync_quote_json(tracking_number), KUAIDI100_KEY,
					 shipsync_quote_json(p->tr_callback_url ? p->tr_callback_url : ""));
	if (p->tr_salt)
		appendStringInfoString(&param, ",\"salt\":\"" KUAIDI100_SALT "\"");
	appendStringInfoString(&param, ",\"resultv2\":\"4\"}}");
	enc = dialect_take_malloced(shipsync_urlencode_form(param.data));
	c->method = "POST";
	c->url = psprintf("%s/poll", p->base_url);
	c->body = psprintf("schema=json&param=%s", enc);
	c->kind = INTENT_REGISTER;
}

/*
 * A stored Kuaidi100 subscription with a secret put in place of its
 * placeholder (JSON-escaped, then form-encoded, as the rest of param).
 *
 * The placeholder is found with the member it is the value of, form-encoded
 * as the body is: "key":"__SHIPSYNC_KUAIDI100_KEY__".  The quotes around the
 * colon are JSON's own, which no string value can hold unescaped: a waybill
 * (the shipping carrier's text) that reads like a placeholder is a string
 * value, so it is never taken for one and is sent as it came.
 */
static char *
kuaidi100_fill(const char *body, const char *member, const char *placeholder,
			   const char *secret)
{
	char	   *json = psprintf("\"%s\":\"%s\"", member, placeholder);
	char	   *needle = shipsync_urlencode_form(json);
	const char *at = strstr(body, needle);
	/* where the value begins: past the encoded "member":" */
	size_t		skip = strlen(needle) - strlen(placeholder) - strlen("%22");
	StringInfoData esc;
	char	   *enc;
	char	   *out;

	free(needle);
	pfree(json);
	if (at == NULL)
		return pstrdup(body);
	initStringInfo(&esc);
	escape_json(&esc, secret);
	/* without the quotes escape_json adds: the placeholder sits inside them */
	esc.data[esc.len - 1] = '\0';
	enc = shipsync_urlencode_form(esc.data + 1);
	out = psprintf("%.*s%s%s", (int) (at + skip - body), body, enc,
				   at + skip + strlen(placeholder));
	free(enc);
	return out;
}

/* As the request goes: the key and the salt in place of their placeholders */
static struct curl_slist *
kuaidi100_sign(Provider *p, Claimed *c, struct curl_slist *h)
{
	if (c->body && p->kd_key)
		c->body = kuaidi100_fill(c->body, "key", KUAIDI100_KEY, p->kd_key);
	if (c->body && p->tr_salt)
		c->body = kuaidi100_fill(c->body, "salt", KUAIDI100_SALT, p->tr_salt);
	return h;
}

/* A push: the form's param, signed by sign = UPPER(MD5(param + salt)) */
static SigResult
kuaidi100_verify_push(const char *secret, const DialectPush *push, const char **reason)
{
	return shipsync_verify_kuaidi100(secret, push->param, push->sign, reason);
}

const DialectRoutine kuaidi100_dialect = {
	.name = "kuaidi100",
	.tracking = true,
	.form_body = true,
	.render_secrets = true,
	.timezone = "Asia/Shanghai",
	.render_register = kuaidi100_register,
	.sign = kuaidi100_sign,
	.judge = dialect_judge_tracker,
	.verify_push = kuaidi100_verify_push,
	.form_push = true,
	.push_reply = "{\"result\": true, \"returnCode\": \"200\", \"message\": \"\\u6210\\u529f\"}",
	.read_tracking = shipsync_parse_tracking_kuaidi100,
	.tracker_answer = shipsync_tracker_answer_kuaidi100,
};
