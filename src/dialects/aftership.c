/*-------------------------------------------------------------------------
 *
 * aftership.c
 *		The aftership tracking dialect: trackings at AfterShip.
 *
 * A waybill is registered with POST {base_url}/trackings {"tracking":
 * {"tracking_number", "slug", "order_id"}} (option slug); code 4003
 * (already tracked) is a success.  Pushes are signed with HMAC-SHA256 of
 * the body, in base64, in aftership-hmac-sha256.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "utils/builtins.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

/* The registration of a waybill: a tracking */
static void
aftership_register(Provider *p, Claimed *c, const char *tracking_number)
{
	StringInfoData b;

	if (tracking_number == NULL)
	{
		c->skip_reason = "no waybill to register";
		return;
	}
	initStringInfo(&b);
	appendStringInfo(&b, "{\"tracking\":{\"tracking_number\":%s", shipsync_quote_json(tracking_number));
	if (p->tr_carrier)
		appendStringInfo(&b, ",\"slug\":%s", shipsync_quote_json(p->tr_carrier));
	appendStringInfo(&b, ",\"order_id\":%s}}", shipsync_quote_json(c->order_key));
	c->method = "POST";
	c->url = psprintf("%s/trackings", p->base_url);
	c->body = b.data;
	c->kind = INTENT_REGISTER;
}

/* A push: HMAC-SHA256 of the body, base64, in aftership-hmac-sha256 */
static SigResult
aftership_verify_push(const char *secret, const DialectPush *push, const char **reason)
{
	return shipsync_verify_hmac_body(secret, push->header(push->arg, "aftership-hmac-sha256"),
									 NULL, false, push->body, push->len, reason);
}

const DialectRoutine aftership_dialect = {
	.name = "aftership",
	.tracking = true,
	.timezone = "UTC",
	.render_register = aftership_register,
	.judge = dialect_judge_tracker,
	.verify_push = aftership_verify_push,
	.read_tracking = shipsync_parse_tracking_aftership,
	.tracker_answer = shipsync_tracker_answer_aftership,
};
