/*-------------------------------------------------------------------------
 *
 * easypost.c
 *		The easypost tracking dialect: trackers at EasyPost.
 *
 * A waybill is registered with POST {base_url}/v2/trackers
 * {"tracker": {"tracking_code", "carrier"}} (option carrier); the tracker's
 * id is kept as the tracking provider's shipment id.  Pushes are signed
 * with HMAC-SHA256 of the body, in hex, in X-Hmac-Signature
 * ("hmac-sha256-hex=..."), under the webhook secret in Unicode NFKD.
 * It is the smallest dialect: docs/architecture.md takes it as the worked
 * example of adding one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "utils/builtins.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

/* The registration of a waybill: a tracker */
static void
easypost_register(Provider *p, Claimed *c, const char *tracking_number)
{
	StringInfoData b;

	if (tracking_number == NULL)
	{
		c->skip_reason = "no waybill to register";
		return;
	}
	initStringInfo(&b);
	appendStringInfo(&b, "{\"tracker\":{\"tracking_code\":%s", shipsync_quote_json(tracking_number));
	if (p->tr_carrier)
		appendStringInfo(&b, ",\"carrier\":%s", shipsync_quote_json(p->tr_carrier));
	appendStringInfoString(&b, "}}");
	c->method = "POST";
	c->url = psprintf("%s/v2/trackers", p->base_url);
	c->body = b.data;
	c->kind = INTENT_REGISTER;
}

/* A push: HMAC-SHA256 of the body, hex, in X-Hmac-Signature */
static SigResult
easypost_verify_push(const char *secret, const DialectPush *push, const char **reason)
{
	return shipsync_verify_hmac_body(secret, push->header(push->arg, "x-hmac-signature"),
									 "hmac-sha256-hex=", true, push->body, push->len, reason);
}

const DialectRoutine easypost_dialect = {
	.name = "easypost",
	.tracking = true,
	.timezone = "UTC",
	.render_register = easypost_register,
	.judge = dialect_judge_tracker,
	.verify_push = easypost_verify_push,
	.nfkd_secret = true,
	.read_tracking = shipsync_parse_tracking_easypost,
	.tracker_answer = shipsync_tracker_answer_easypost,
};
