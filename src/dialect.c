/*-------------------------------------------------------------------------
 *
 * dialect.c
 *		The server side of field maps and dialects: loading a provider's
 *		profile, rendering a request through it, the validation trigger,
 *		and shipsync.render_request().
 *
 * Maps are compiled by mapping.c (plain C) from shipsync.field_map rows
 * when the dispatcher loads its configuration, and again whenever the
 * configuration generation moves: the statement trigger on field_map bumps
 * it, so a changed map applies to the next claim with no restart and with
 * no extra statement per request.  A provider whose profile has outbound
 * rows has its request bodies rendered through the map; a generic
 * provider without them keeps the generic body {"order_ref", "order"}
 * byte for byte.
 *
 * The sf_express dialect renders msgData through the map and sends the
 * signed form (sign.c) to the provider's single URL: EXP_RECE_CREATE_ORDER
 * for a create, EXP_RECE_UPDATE_ORDER with dealType 2 for a cancel; the
 * requestID is the intent's idempotency key and the body is stored, so a
 * retry sends the same orderId, timestamp and digest.  An update of an
 * order SF already has is finished with a reason: SF has no order update.
 *
 * Compiled maps and parsed options are malloc'd (mapping.c and json.c are
 * plain C): a reset callback on the configuration context frees them with
 * it.  The validation trigger keeps one compiled map per binding in
 * TopMemoryContext, checked against the configuration generation at each
 * use.
 *
 * Named time zones of the timestamp transforms are resolved with
 * PostgreSQL's zone database (pg_tzset).
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

PG_FUNCTION_INFO_V1(shipsync_map_check);
PG_FUNCTION_INFO_V1(shipsync_validate);
PG_FUNCTION_INFO_V1(shipsync_render);

/* ---------- time zones ---------- */

/*
 * The UTC offset of a named zone at a UTC instant, from PostgreSQL's zone
 * database (mapping.c's callback for named zones).
 */
bool
dialect_tz_offset(const char *zone, int64_t utc_epoch, int *offset_s, void *arg)
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

typedef struct MapCompileInput
{
	int			n;
	int			cap;
	const char **targets;
	const char **sources;
	const char **transforms;
	const char **args;
	const char **defaults;
	bool	   *required;
} MapCompileInput;

static const char **
grow_strings(const char **a, int cap)
{
	return a ? repalloc(a, sizeof(char *) * cap) : palloc(sizeof(char *) * cap);
}

static void
input_add(MapCompileInput *in, HeapTuple tup, TupleDesc desc)
{
	bool		isnull;

	if (in->n == in->cap)
	{
		in->cap = in->cap ? in->cap * 2 : 32;
		in->targets = grow_strings(in->targets, in->cap);
		in->sources = grow_strings(in->sources, in->cap);
		in->transforms = grow_strings(in->transforms, in->cap);
		in->args = grow_strings(in->args, in->cap);
		in->defaults = grow_strings(in->defaults, in->cap);
		in->required = in->required ? repalloc(in->required, sizeof(bool) * in->cap) :
			palloc(sizeof(bool) * in->cap);
	}
	in->targets[in->n] = SPI_getvalue(tup, desc, 3);
	in->sources[in->n] = SPI_getvalue(tup, desc, 4);
	in->transforms[in->n] = SPI_getvalue(tup, desc, 5);
	in->args[in->n] = SPI_getvalue(tup, desc, 6);
	in->defaults[in->n] = SPI_getvalue(tup, desc, 7);
	in->required[in->n] = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
	in->n++;
}

typedef struct MapsOwner
{
	MemoryContextCallback cb;
	Provider   *ps;
	int			n;
} MapsOwner;

static void
maps_owner_reset(void *arg)
{
	MapsOwner  *o = (MapsOwner *) arg;

	for (int i = 0; i < o->n; i++)
	{
		shipsync_map_free(o->ps[i].out_map);
		shipsync_map_free(o->ps[i].in_map);
		shipsync_json_free(o->ps[i].options);
		o->ps[i].out_map = o->ps[i].in_map = NULL;
		o->ps[i].options = NULL;
	}
}

/*
 * Compile the rows of one profile and direction; on failure the message,
 * allocated in cxt, goes to *error.
 */
static ShipMap *
compile_input(MapCompileInput *in, const char *profile, const char *direction,
			  MemoryContext cxt, char **error)
{
	char		err[512];
	ShipMap    *m;

	if (in->n == 0)
		return NULL;
	m = shipsync_map_compile(in->n, in->targets, in->sources, in->transforms,
							 in->args, in->defaults, in->required, err, sizeof(err));
	if (m == NULL && *error == NULL)
		*error = MemoryContextStrdup(cxt, psprintf("the %s rows of profile \"%s\" do not compile: %s",
												   direction, profile, err));
	return m;
}

/*
 * Attach each provider's maps and options.  Runs in the caller's
 * transaction, SPI connected; one statement for every provider.
 */
void
dialect_load_maps(MemoryContext cxt, Provider *ps, int n)
{
	int			rc;
	MapsOwner  *owner;
	SPITupleTable *tt;
	uint64		nrows;

	owner = MemoryContextAllocZero(cxt, sizeof(MapsOwner));
	owner->ps = ps;
	owner->n = n;
	owner->cb.func = maps_owner_reset;
	owner->cb.arg = owner;
	MemoryContextRegisterResetCallback(cxt, &owner->cb);

	rc = SPI_execute("SELECT profile, direction, target_path, source, transform, arg::text,"
					 " \"default\", required FROM shipsync.field_map"
					 " WHERE direction IN ('out', 'in')"
					 " ORDER BY profile, direction, position, field_map_id", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "loading field maps failed: %s", SPI_result_code_string(rc));
	tt = SPI_tuptable;
	nrows = SPI_processed;

	for (int i = 0; i < n; i++)
	{
		Provider   *p = &ps[i];
		MapCompileInput out = {0};
		MapCompileInput in = {0};
		char	   *error = NULL;
		char		err[256];

		if (p->options_text)
		{
			p->options = shipsync_json_parse(p->options_text, strlen(p->options_text),
											 err, sizeof(err));
		}
		for (uint64 r = 0; r < nrows; r++)
		{
			char	   *profile = SPI_getvalue(tt->vals[r], tt->tupdesc, 1);
			char	   *direction;

			if (p->profile == NULL || strcmp(profile, p->profile) != 0)
				continue;
			direction = SPI_getvalue(tt->vals[r], tt->tupdesc, 2);
			input_add(strcmp(direction, "out") == 0 ? &out : &in, tt->vals[r], tt->tupdesc);
		}
		p->out_map = compile_input(&out, p->profile, "outbound", cxt, &error);
		p->in_map = compile_input(&in, p->profile, "inbound", cxt, &error);
		if (p->dialect == DIALECT_SF_EXPRESS && p->out_map == NULL && error == NULL)
			error = MemoryContextStrdup(cxt, psprintf("profile \"%s\" has no outbound rows, which the sf_express dialect needs",
													  p->profile));
		p->map_error = error;
		if (error)
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("pg_shipsync: provider \"%s\" cannot render requests: %s",
							p->name, error)));
	}
}

/* ---------- rendering ---------- */

bool
dialect_renders(const Provider *p)
{
	return p->dialect != DIALECT_GENERIC || p->out_map != NULL || p->map_error != NULL;
}

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
	env.tz_offset = dialect_tz_offset;
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
 * Decide and render the request of one intent of a provider whose dialect
 * or profile is not the generic body: sets c->method, url, body and kind,
 * or c->skip_reason (with c->invalid when mapped fields are missing).
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

	/* generic dialect through a field map: same requests, mapped bodies */
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
	c->body = render_mapped(p, c, generic_body, false);
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

/* ---------- field_map rows ---------- */

/*
 * shipsync._map_check(target_path, source, transform, arg): compile one rule
 * and raise an error naming what is wrong.  Called by the trigger on
 * shipsync.field_map, so that a bad row never reaches the dispatcher.
 */
Datum
shipsync_map_check(PG_FUNCTION_ARGS)
{
	const char *target = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	const char *source = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	const char *transform = PG_ARGISNULL(2) ? "identity" : text_to_cstring(PG_GETARG_TEXT_PP(2));
	const char *arg = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));
	char		err[512];
	ShipMap    *m;
	bool		req = false;
	char	   *tz = NULL;

	if (target == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("field map rule has no target_path")));
	m = shipsync_map_compile(1, &target, &source, &transform, &arg, NULL, &req,
							 err, sizeof(err));
	if (m == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid field map rule for \"%s\"", target),
				 errdetail("The rule was refused: %s.", err),
				 errhint("See docs/mapping.md for paths, sources and transforms.")));
	shipsync_map_free(m);
	if ((strcmp(transform, "timestamp") == 0 || strcmp(transform, "parse_time") == 0) &&
		shipsync_json_arg_string(arg, "tz", &tz))
	{
		int			off;
		bool		ok = dialect_tz_offset(tz, 0, &off, NULL) ||
			tz[0] == '+' || tz[0] == '-' || strcmp(tz, "UTC") == 0;

		if (!ok)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("time zone \"%s\" of the rule for \"%s\" is not recognized", tz, target),
					 errdetail("A zone is a name of the IANA database or an offset such as +08:00."),
					 errhint("For example {\"tz\": \"Asia/Shanghai\"}.")));
		free(tz);
	}
	PG_RETURN_VOID();
}

/* ---------- the validation trigger ---------- */

typedef struct ValidateCache
{
	int32		binding_id;
	uint64		generation;
	Oid			relid;			/* the binding's table; invalid if detached */
	char	   *key_column;
	char	   *provider;
	char	   *profile;
	ShipMap    *map;			/* NULL: nothing to check */
	ShipJson   *options;
	char	   *error;
} ValidateCache;

#define VALIDATE_CACHE_MAX 16
static ValidateCache validate_cache[VALIDATE_CACHE_MAX];
static int	validate_ncached = 0;

static ValidateCache *
validate_lookup(int32 binding_id)
{
	uint64		gen = pg_atomic_read_u64(&shipsync_shared->config_generation);
	ValidateCache *vc = NULL;
	int			rc;
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(binding_id)};
	Provider   *ps;
	int			np;
	int32		pid;
	bool		isnull;
	MemoryContext tmp;
	MemoryContext old;

	for (int i = 0; i < validate_ncached; i++)
		if (validate_cache[i].binding_id == binding_id)
		{
			vc = &validate_cache[i];
			if (vc->generation == gen)
				return vc;
			break;
		}
	if (vc == NULL)
	{
		vc = &validate_cache[validate_ncached < VALIDATE_CACHE_MAX ?
							 validate_ncached++ : (int) (binding_id % VALIDATE_CACHE_MAX)];
		memset(vc, 0, sizeof(*vc));
	}
	/* forget the stale entry */
	shipsync_map_free(vc->map);
	shipsync_json_free(vc->options);
	if (vc->provider)
		pfree(vc->provider);
	if (vc->profile)
		pfree(vc->profile);
	if (vc->error)
		pfree(vc->error);
	if (vc->key_column)
		pfree(vc->key_column);
	memset(vc, 0, sizeof(*vc));

	tmp = AllocSetContextCreate(CurrentMemoryContext, "pg_shipsync validate",
								ALLOCSET_SMALL_SIZES);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute_with_args("SELECT provider_id, key_column::pg_catalog.text,"
							   " CASE WHEN active THEN tbl::pg_catalog.oid END"
							   " FROM shipsync.binding WHERE binding_id OPERATOR(pg_catalog.=) $1",
							   1, argtypes, args, NULL, true, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("binding %d of the validation trigger does not exist", binding_id),
				 errhint("Attach the table again with shipsync.attach().")));
	pid = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	vc->key_column = MemoryContextStrdup(TopMemoryContext,
										 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
	vc->relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	if (isnull)
		vc->relid = InvalidOid;
	outbox_load_providers(tmp, &ps, &np, pid, false);
	SPI_finish();

	old = MemoryContextSwitchTo(TopMemoryContext);
	{
		char	   *keycol = vc->key_column;
		Oid			relid = vc->relid;

		memset(vc, 0, sizeof(*vc));
		vc->key_column = keycol;
		vc->relid = relid;
	}
	vc->binding_id = binding_id;
	vc->generation = gen;
	if (np == 1)
	{
		vc->provider = pstrdup(ps[0].name);
		vc->profile = pstrdup(ps[0].profile);
		vc->error = ps[0].map_error ? pstrdup(ps[0].map_error) : NULL;
		/* take the malloc'd map and options over from the temporary load */
		vc->map = ps[0].out_map;
		vc->options = ps[0].options;
		ps[0].out_map = NULL;
		ps[0].options = NULL;
	}
	MemoryContextSwitchTo(old);
	MemoryContextDelete(tmp);
	return vc;
}

/*
 * shipsync._validate(binding_id): AFTER INSERT OR UPDATE ROW trigger that
 * attach(..., options => '{"validate": "reject"}') installs beside the
 * capture trigger.  Renders the new row through the provider's outbound
 * map and refuses it when required fields are missing or malformed.  It
 * sends nothing and writes nothing.
 */
Datum
shipsync_validate(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	int32		binding_id;
	ValidateCache *vc;
	Datum		rowjson;
	char	   *rowtext;
	char		err[1024];
	ShipJson   *row;
	MapEnv		env;
	char	   *out = NULL;
	MapOutcome	rc;
	char	   *key;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("shipsync._validate() must be called as a trigger")));
	if (!TRIGGER_FIRED_FOR_ROW(td->tg_event) || TRIGGER_FIRED_BY_DELETE(td->tg_event) ||
		td->tg_trigger->tgnargs < 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("shipsync._validate() must be an INSERT or UPDATE row trigger with the binding id")));
	tuple = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	if (shipsync_capture_suppressed)
		return PointerGetDatum(tuple);	/* the dispatcher's own write-back */
	binding_id = pg_strtoint32(td->tg_trigger->tgargs[0]);
	vc = validate_lookup(binding_id);
	/* a trigger made by hand, on a table that is not the binding's */
	if (vc->relid != RelationGetRelid(td->tg_relation))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("table \"%s\" is not attached to pg_shipsync binding %d",
						RelationGetRelationName(td->tg_relation), binding_id),
				 errdetail("shipsync._validate() validates the orders of the table its binding names."),
				 errhint("Use shipsync.attach() with option validate = reject to install it.")));
	if (vc->error)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("provider \"%s\" cannot render requests: %s",
						vc->provider ? vc->provider : "?", vc->error),
				 errhint("Fix the rows of the profile in shipsync.field_map.")));
	if (vc->map == NULL)
		return PointerGetDatum(tuple);

	rowjson = DirectFunctionCall1(row_to_json, heap_copy_tuple_as_datum(tuple, RelationGetDescr(td->tg_relation)));
	rowtext = text_to_cstring(DatumGetTextPP(rowjson));
	row = shipsync_json_parse(rowtext, strlen(rowtext), err, sizeof(err));
	if (row == NULL)
		elog(ERROR, "the order row is not JSON: %s", err);
	memset(&env, 0, sizeof(env));
	env.row = row;
	env.options = vc->options;
	{
		int			keyatt = SPI_fnumber(RelationGetDescr(td->tg_relation), vc->key_column);

		key = keyatt > 0 ? SPI_getvalue(tuple, RelationGetDescr(td->tg_relation), keyatt) : NULL;
	}
	env.order_key = key;
	/* fixed by capture later: present, and never a reason to refuse */
	env.idempotency_key = "00000000-0000-0000-0000-000000000000";
	env.tz_offset = dialect_tz_offset;
	rc = shipsync_map_render(vc->map, &env, false, &out, err, sizeof(err));
	shipsync_json_free(row);
	free(out);
	if (rc == MAP_ERROR)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("field map of profile \"%s\" cannot be applied: %s", vc->profile, err),
				 errhint("Fix the rows of profile \"%s\" in shipsync.field_map.", vc->profile)));
	if (rc == MAP_INVALID)
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("order cannot be shipped by provider \"%s\": required mapped fields are missing or malformed",
						vc->provider),
				 errdetail("Fields of profile \"%s\": %s.", vc->profile, err),
				 errhint("Fill in those columns, or change the rows of profile \"%s\" in shipsync.field_map.",
						 vc->profile),
				 errtable(td->tg_relation)));
	return PointerGetDatum(tuple);
}

/* ---------- render_request ---------- */

/*
 * shipsync._render(outbox_id) -> (method, url, body): the stored request
 * of an intent, or the one it would send now, rendered from the current
 * order row without storing anything.  When there is nothing to send,
 * method is NULL and body says why.
 */
Datum
shipsync_render(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	MemoryContext keep = CurrentMemoryContext;
	TupleDesc	desc;
	Datum		values[3];
	bool		nulls[3] = {true, true, true};
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(id)};
	int			rc;
	Claimed		c;
	Binding		b;
	Provider   *ps;
	int			np;
	bool		isnull;
	char	   *method = NULL;
	char	   *url = NULL;
	char	   *body = NULL;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	desc = BlessTupleDesc(desc);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute_with_args("SELECT o.binding_id, o.provider_id, o.order_key, o.op,"
							   " o.idempotency_key, o.request_method, o.request_url, o.request_body,"
							   " o.state, o.last_error, b.tbl::oid, b.render_sql"
							   " FROM (SELECT id, binding_id, provider_id, order_key, op,"
							   "   idempotency_key, request_method, request_url, request_body,"
							   "   state, last_error FROM shipsync.outbox"
							   "  UNION ALL"	/* captured, not yet moved to the outbox */
							   "  SELECT id, binding_id, provider_id, order_key, op,"
							   "   idempotency_key, NULL, NULL, NULL, 'pending', NULL"
							   "   FROM shipsync.inbox) o"
							   " JOIN shipsync.binding b USING (binding_id)"
							   " WHERE o.id = $1", 1, argtypes, args, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading the intent failed: %s", SPI_result_code_string(rc));
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("outbox intent %lld does not exist", (long long) id),
				 errhint("Find intents with shipsync.trace() or in shipsync.outbox.")));
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	td = SPI_tuptable->tupdesc;
		MemoryContext old = MemoryContextSwitchTo(keep);

		memset(&c, 0, sizeof(c));
		memset(&b, 0, sizeof(b));
		c.id = id;
		c.binding_id = DatumGetInt32(SPI_getbinval(tup, td, 1, &isnull));
		c.provider_id = DatumGetInt32(SPI_getbinval(tup, td, 2, &isnull));
		c.order_key = SPI_getvalue(tup, td, 3);
		c.op = SPI_getvalue(tup, td, 4);
		c.idempotency_key = SPI_getvalue(tup, td, 5);
		method = SPI_getvalue(tup, td, 6);
		url = SPI_getvalue(tup, td, 7);
		body = SPI_getvalue(tup, td, 8);
		b.id = c.binding_id;
		b.relid = DatumGetObjectId(SPI_getbinval(tup, td, 11, &isnull));
		b.render_sql = SPI_getvalue(tup, td, 12);
		MemoryContextSwitchTo(old);
	}
	if (method == NULL)
	{
		outbox_load_providers(keep, &ps, &np, c.provider_id, false);
		if (np != 1)
			elog(ERROR, "provider %d of intent %lld does not exist", c.provider_id, (long long) id);
		/* SF's digest needs the check word; a Kuaidi100 body, its salt */
		if (ps[0].dialect == DIALECT_SF_EXPRESS || ps[0].dialect == DIALECT_KUAIDI100)
			outbox_load_providers(keep, &ps, &np, c.provider_id, true);
		outbox_render_one(&ps[0], &b, &c, keep);
		MemoryContextSwitchTo(keep);
		if (c.skip_reason)
			body = pstrdup(c.skip_reason);
		else
		{
			method = pstrdup(c.method);
			url = pstrdup(c.url);
			body = c.body ? pstrdup(c.body) : NULL;
		}
	}
	SPI_finish();
	MemoryContextSwitchTo(keep);

	if (method)
	{
		values[0] = CStringGetTextDatum(method);
		nulls[0] = false;
	}
	if (url)
	{
		values[1] = CStringGetTextDatum(url);
		nulls[1] = false;
	}
	if (body)
	{
		values[2] = CStringGetTextDatum(body);
		nulls[2] = false;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
