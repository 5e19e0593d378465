/*-------------------------------------------------------------------------
 *
 * provider.c
 *		The one loader of providers and bindings: their configuration,
 *		credentials, field maps and dialect; and each provider's token
 *		bucket.
 *
 * Every process that needs a provider reads it here: the dispatcher its
 * whole configuration (provider_load_config(): providers with their opened
 * secrets and compiled field maps, and the bindings), render_request() and
 * the validation trigger one provider (provider_load()), and the SQL
 * functions that take pushes, pulled answers and statements one provider
 * by name (provider_lookup(), the fields a push is checked and read with).
 * The dialect is found once, by name, in dialect.c's table: a provider
 * carries its DialectRoutine.
 *
 * Secrets (secret.c) are opened only for the processes that send: the
 * dispatcher, and render_request() for the dialects whose stored body is
 * signed.  A provider with a secret that cannot be opened, or without the
 * one its auth type needs, is loaded with secret_error and sends nothing.
 *
 * Field maps are compiled by mapping.c (plain C) from shipsync.field_map
 * rows when the configuration is loaded, and again whenever the
 * configuration generation moves: the statement trigger on field_map bumps
 * it, so a changed map applies to the next claim with no restart and no
 * extra statement per request.  Compiled maps and parsed options are
 * malloc'd: a reset callback on the configuration's memory context frees
 * them with it.  Named time zones of the timestamp transforms are resolved
 * with PostgreSQL's zone database (pg_tzset).
 *
 * Lifecycle: everything loaded lives in the caller's memory context (the
 * dispatcher's cfg_cxt, rebuilt at each reload); runtime state that must
 * outlive a reload (in flight counts, the OAuth2 token) is carried over by
 * the dispatcher.  The token bucket is in shared memory (health.c's
 * per-provider state), so a restarted dispatcher does not find it full.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

static void provider_load_maps(MemoryContext cxt, Provider *ps, int n);

static char *
get_text(HeapTuple tup, TupleDesc desc, int col)
{
	return SPI_getvalue(tup, desc, col);
}

/* ---------- providers and bindings ---------- */

/*
 * Read providers and bindings into cxt.  Runtime state (in flight counts,
 * tokens, holds) is carried over by the caller.
 */
void
provider_load_config(MemoryContext cxt, Provider **providers, int *nproviders,
				   Binding **bindings, int *nbindings)
{
	int			rc;
	MemoryContext old;
	Binding    *bs;
	uint64		n;

	shipsync_begin_tx("loading configuration", false);
	provider_load(cxt, providers, nproviders, 0, true);

	rc = SPI_execute("SELECT b.binding_id, b.tbl::oid, b.render_sql, b.writeback_sql,"
					 " (SELECT p.provider_id FROM shipsync.provider p"
					 "   WHERE p.name = b.options->>'tracking_provider'),"
					 " b.active"
					 " FROM shipsync.binding b ORDER BY b.binding_id", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "loading bindings failed");
	n = SPI_processed;
	old = MemoryContextSwitchTo(cxt);
	bs = palloc0(sizeof(Binding) * (n + 1));
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		bs[i].id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		bs[i].relid = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		bs[i].render_sql = get_text(tup, desc, 3);
		bs[i].writeback_sql = get_text(tup, desc, 4);
		bs[i].tracking_provider_id = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
		if (isnull)
			bs[i].tracking_provider_id = 0;
		bs[i].active = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
	}
	MemoryContextSwitchTo(old);
	*bindings = bs;
	*nbindings = (int) n;
	shipsync_end_tx();
}

/* ---------- credentials ---------- */

/*
 * The header line of an auth type that sends a static credential: a bearer
 * token, an API key in its header (api_key's key, in field key), or Basic
 * user name and password; NULL for the others (OAuth2's token is fetched,
 * Kuaidi100 and SF Express sign each request).  palloc'd.
 */
static char *
auth_header_line(const char *type, const char *header, const char *token,
				 const char *key, const char *username, const char *password)
{
	if (type == NULL)
		return NULL;
	if (strcmp(type, "bearer") == 0 && token)
		return psprintf("Authorization: Bearer %s", token);
	if (strcmp(type, "api_key") == 0 && header && key)
		return psprintf("%s: %s", header, key);
	if (strcmp(type, "basic") == 0 && username)
	{
		char	   *pair = psprintf("%s:%s", username, password ? password : "");
		char	   *b64 = palloc(4 * ((strlen(pair) + 2) / 3) + 1);

		shipsync_base64_encode((unsigned char *) pair, strlen(pair), b64);
		explicit_bzero(pair, strlen(pair));
		return psprintf("Authorization: Basic %s", b64);
	}
	return NULL;
}

/* The opened secret name of provider p, or NULL if it has none such */
const char *
provider_secret(const Provider *p, const char *name)
{
	for (int i = 0; i < p->nsecrets; i++)
		if (strcmp(p->secret_names[i], name) == 0)
			return p->secret_values[i];
	return NULL;
}

/*
 * Why p cannot send, when its auth type lacks the secret it needs (a dump
 * restored without shipsync.secret, a row deleted by hand): requests
 * without their credentials would only be refused.  NULL if none lacks.
 */
static char *
missing_secret(const Provider *p)
{
	static const char *const needs[][2] = {
		{"bearer", "token"}, {"api_key", "key"}, {"basic", "username"},
		{"sf_express", "checkword"}, {"kuaidi100", "key"}, {"oauth2", "client_secret"}
	};

	for (int i = 0; p->auth_type && i < (int) lengthof(needs); i++)
		if (strcmp(p->auth_type, needs[i][0]) == 0 && provider_secret(p, needs[i][1]) == NULL)
			return psprintf("it has no secret \"%s\", which its auth type %s needs",
							needs[i][1], p->auth_type);
	if (p->tls && p->tls->client_cert && provider_secret(p, "client_key") == NULL)
		return pstrdup("it has no secret \"client_key\", which its TLS client certificate needs");
	return NULL;
}

/*
 * Give each provider its secrets, opened (secret.c): the values of the
 * credentials its requests need, and the header lines they make.  A
 * provider with a secret that cannot be opened, or without one its auth
 * type needs, gets secret_error, and the dispatcher sends nothing for it.
 * Runs in the providers' memory context.
 */
static void
load_secrets(Provider *ps, int n, int32 only_id)
{
	OpenedSecret *s;
	int			ns = secret_open_all(only_id != 0 && n == 1 ? ps[0].name : NULL, &s);

	for (int i = 0; i < n; i++)
	{
		Provider   *p = &ps[i];
		const char *type = p->auth_type;
		char	   *line;

		p->secret_names = palloc0(sizeof(char *) * (ns + 1));
		p->secret_values = palloc0(sizeof(char *) * (ns + 1));
		p->headers = p->headers ? repalloc(p->headers, sizeof(char *) * (p->nheaders + ns + 2)) :
			palloc0(sizeof(char *) * (ns + 2));
		for (int k = 0; k < ns; k++)
		{
			if (strcmp(s[k].provider, p->name) != 0)
				continue;
			if (s[k].value == NULL)
			{
				if (p->secret_error == NULL)
					p->secret_error = s[k].error;
				continue;
			}
			p->secret_names[p->nsecrets] = s[k].name;
			p->secret_values[p->nsecrets++] = s[k].value;
			if (strncmp(s[k].name, "header:", 7) == 0)
				p->headers[p->nheaders++] = psprintf("%s: %s", s[k].name + 7, s[k].value);
		}
		line = auth_header_line(type, p->auth_header, provider_secret(p, "token"),
								provider_secret(p, "key"), provider_secret(p, "username"),
								provider_secret(p, "password"));
		if (line)
			p->headers[p->nheaders++] = line;
		if (p->secret_error == NULL)
			p->secret_error = missing_secret(p);
		p->sf_checkword = (char *) provider_secret(p, "checkword");
		if (type && strcmp(type, "kuaidi100") == 0)
			p->kd_key = (char *) provider_secret(p, "key");
		if (type && strcmp(type, "oauth2") == 0)
			p->oauth_client_secret = (char *) provider_secret(p, "client_secret");
		p->tr_salt = (char *) provider_secret(p, "webhook_secret");
		if (p->tls)
			p->tls->client_key = (char *) provider_secret(p, "client_key");
	}
}

PG_FUNCTION_INFO_V1(shipsync_auth_headers);

/*
 * shipsync._auth_headers(auth jsonb) RETURNS text[]: the header lines an
 * auth object makes, with the secrets given in it: the formatting the
 * dispatcher applies to a provider's opened secrets.  Internal, owner only.
 */
Datum
shipsync_auth_headers(PG_FUNCTION_ARGS)
{
	Jsonb	   *auth = PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0);
	char	   *f[6] = {NULL};
	static const char *const names[6] = {"type", "header", "token", "key", "username", "password"};
	char	   *line;
	Datum		d;

	for (int i = 0; auth && JB_ROOT_IS_OBJECT(auth) && i < 6; i++)
	{
		JsonbValue *v = getKeyJsonValueFromContainer(&auth->root, names[i],
													 strlen(names[i]), NULL);

		if (v && v->type == jbvString)
			f[i] = pnstrdup(v->val.string.val, v->val.string.len);
	}
	line = auth_header_line(f[0], f[1], f[2], f[3], f[4], f[5]);
	if (line == NULL)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(TEXTOID));
	d = CStringGetTextDatum(line);
	PG_RETURN_ARRAYTYPE_P(construct_array(&d, 1, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * A provider's TLS options from columns col.. of the providers' query
 * (ca_bundle, client_cert, pinned_public_key, min 1.3), in the current
 * context; NULL when none is set.  The client key is a secret: opened by
 * load_secrets(), never read from the provider's row.
 */
static HttpTls *
load_tls(HeapTuple tup, TupleDesc desc, int col)
{
	HttpTls		tls = {0};
	bool		isnull;
	HttpTls    *out;

	tls.ca_bundle = get_text(tup, desc, col);
	tls.client_cert = get_text(tup, desc, col + 1);
	tls.pinned_public_key = get_text(tup, desc, col + 2);
	tls.tls13 = DatumGetBool(SPI_getbinval(tup, desc, col + 3, &isnull)) && !isnull;
	if (!tls.ca_bundle && !tls.client_cert && !tls.pinned_public_key && !tls.tls13)
		return NULL;
	out = palloc(sizeof(HttpTls));
	*out = tls;
	return out;
}

/* One provider from a row of provider_load()'s query, in the current context */
static void
provider_read_row(HeapTuple tup, TupleDesc desc, Provider *p)
{
	bool		isnull;
	Datum		hdrs;

	p->id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	p->name = get_text(tup, desc, 2);
	p->base_url = get_text(tup, desc, 3);
	p->timeout_ms = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	p->max_inflight = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
	p->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
	p->backoff_base_ms = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
	p->backoff_max_ms = DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull));
	p->rate_per_s = DatumGetFloat8(SPI_getbinval(tup, desc, 9, &isnull));
	p->paused = DatumGetBool(SPI_getbinval(tup, desc, 10, &isnull));
	hdrs = SPI_getbinval(tup, desc, 11, &isnull);
	if (!isnull)
	{
		Datum	   *elems;
		bool	   *enulls;
		int			nelems;

		deconstruct_array_builtin(DatumGetArrayTypeP(hdrs), TEXTOID,
								  &elems, &enulls, &nelems);
		p->headers = palloc0(sizeof(char *) * (nelems + 1));
		for (int h = 0; h < nelems; h++)
			if (!enulls[h])
				p->headers[p->nheaders++] = TextDatumGetCString(elems[h]);
	}
	{
		p->dialect = dialect_find(get_text(tup, desc, 12));
		p->profile = get_text(tup, desc, 13);
		p->options_text = get_text(tup, desc, 14);
		p->sf_partner_id = get_text(tup, desc, 15);
		p->auth_type = get_text(tup, desc, 16);
		p->auth_header = get_text(tup, desc, 17);
		p->kd_customer = get_text(tup, desc, 18);
		p->oauth_token_url = get_text(tup, desc, 19);
		p->oauth_client_id = get_text(tup, desc, 20);
		p->oauth_scope = get_text(tup, desc, 21);
		p->tr_carrier = get_text(tup, desc, 22);
		p->tr_callback_url = get_text(tup, desc, 23);
	}
	p->tls = load_tls(tup, desc, 24);
	p->in_use = DatumGetBool(SPI_getbinval(tup, desc, 28, &isnull)) && !isnull;
	p->breaker_failures = DatumGetInt32(SPI_getbinval(tup, desc, 29, &isnull));
	p->breaker_cooldown_ms = DatumGetInt32(SPI_getbinval(tup, desc, 30, &isnull));
	p->poll_interval_s = DatumGetInt32(SPI_getbinval(tup, desc, 31, &isnull));
	p->fee_pull = DatumGetBool(SPI_getbinval(tup, desc, 32, &isnull));
}

/*
 * Read providers (all, or the one with id only_id) into cxt, with their
 * field maps, inside the caller's transaction and SPI connection.  With
 * with_secrets, their secrets are opened too: only for the processes that
 * send requests (the dispatcher, render_request()'s dry run).
 */
void
provider_load(MemoryContext cxt, Provider **providers, int *nproviders,
					  int32 only_id, bool with_secrets)
{
	int			rc;
	MemoryContext old;
	Provider   *ps;
	uint64		n;
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(only_id)};

	rc = SPI_execute_with_args("SELECT provider_id, name, base_url, timeout_ms, max_inflight,"
							   " max_attempts, backoff_base_ms, backoff_max_ms,"
							   " rate_limit_per_s::float8, paused,"
							   " ARRAY(SELECT k || ': ' || (v #>> '{}') FROM pg_catalog.jsonb_each(headers) AS h(k, v)"
							   "   WHERE pg_catalog.jsonb_typeof(v) = 'string'),"
							   " dialect, COALESCE(options->>'profile', dialect), (options - 'tls')::text,"
							   " auth->>'partner_id', auth->>'type', auth->>'header',"
							   " CASE WHEN auth->>'type' = 'kuaidi100' THEN auth->>'customer' END,"
							   " CASE WHEN auth->>'type' = 'oauth2' THEN auth->>'token_url' END,"
							   " CASE WHEN auth->>'type' = 'oauth2' THEN auth->>'client_id' END,"
							   " CASE WHEN auth->>'type' = 'oauth2' THEN auth->>'scope' END,"
							   " COALESCE(options->>'carrier', options->>'slug', options->>'company'),"
							   " options->>'callback_url',"
							   /* option tls, but for client_key: a secret (load_secrets) */
							   " options->'tls'->>'ca_bundle', options->'tls'->>'client_cert',"
							   " options->'tls'->>'pinned_public_key',"
							   " options->'tls'->>'min_version' = '1.3',"
							   /* OAuth2: may a token be fetched (attached, or work left)? */
							   " auth->>'type' = 'oauth2' AND (EXISTS (SELECT 1 FROM shipsync.binding b"
							   "   WHERE b.active AND (b.provider_id = p.provider_id"
							   "   OR b.options->>'tracking_provider' = p.name))"
							   "  OR EXISTS (SELECT 1 FROM shipsync.outbox o WHERE o.provider_id = p.provider_id"
							   "   AND o.state IN ('pending', 'retrying'))),"
							   " COALESCE((options->>'breaker_failures')::integer, 20),"
							   " COALESCE((options->>'breaker_cooldown_ms')::integer, 5000),"
							   " COALESCE((options->>'poll_interval_s')::integer, 0),"
							   " options->>'fee_pull_after' IS NOT NULL"
							   " FROM shipsync.provider p WHERE $1 = 0 OR provider_id = $1"
							   " ORDER BY provider_id", 1, argtypes, args, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "loading providers failed");
	n = SPI_processed;
	old = MemoryContextSwitchTo(cxt);
	ps = palloc0(sizeof(Provider) * (n + 1));
	for (uint64 i = 0; i < n; i++)
		provider_read_row(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &ps[i]);
	if (with_secrets)
		load_secrets(ps, (int) n, only_id);
	MemoryContextSwitchTo(old);
	provider_load_maps(cxt, ps, (int) n);
	*providers = ps;
	*nproviders = (int) n;
}

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
static void
provider_load_maps(MemoryContext cxt, Provider *ps, int n)
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
		if (p->dialect->needs_out_map && p->out_map == NULL && error == NULL)
			error = MemoryContextStrdup(cxt, psprintf("profile \"%s\" has no outbound rows, which the %s dialect needs",
													  p->profile, p->dialect->name));
		p->map_error = error;
		if (error)
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("pg_shipsync: provider \"%s\" cannot render requests: %s",
							p->name, error)));
	}
}

/* The binding of id in bs[0..nb), or NULL */
Binding *
binding_find(Binding *bs, int nb, int32 id)
{
	for (int i = 0; i < nb; i++)
		if (bs[i].id == id)
			return &bs[i];
	return NULL;
}

/* ---------- one provider by name ---------- */

static SPIPlanPtr lookup_plan = NULL;

/*
 * Look a provider up by name, with what its pushes and pulled answers are
 * checked with and read in (tracking.c, fees.c, statement.c); SPI must be
 * connected.  An unknown name is an ERROR.
 */
TrackProvider *
provider_lookup(const char *name)
{
	TrackProvider *p;
	Datum		arg = CStringGetTextDatum(name);
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;

	if (lookup_plan == NULL)
	{
		Oid			t[1] = {TEXTOID};

		lookup_plan = shipsync_prepare_saved(
			"SELECT provider_id, name, dialect,"
			" coalesce(options->>'profile', dialect),"
			" coalesce((options->>'accept_unsigned_pushes')::boolean, false),"
			" options->>'timezone',"
			" coalesce((options->>'unmatched_ttl_s')::integer, 604800)"
			" FROM shipsync.provider WHERE name = $1", 1, t);
	}
	if (SPI_execute_plan(lookup_plan, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "looking up a provider failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("provider \"%s\" does not exist", name),
				 errhint("See SELECT name FROM shipsync.providers.")));
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	p = palloc0(sizeof(TrackProvider));
	p->id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	p->name = SPI_getvalue(tup, desc, 2);
	p->dialect = SPI_getvalue(tup, desc, 3);
	p->profile = SPI_getvalue(tup, desc, 4);
	p->accept_unsigned = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
	p->routine = dialect_find(p->dialect);
	/* the dialect's zone, unless option timezone names another */
	p->timezone = SPI_getvalue(tup, desc, 6);
	if (p->timezone == NULL)
		p->timezone = pstrdup(p->routine->timezone);
	p->ttl_s = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
	return p;
}

/* ---------- the token bucket ---------- */

/*
 * Refill p's token bucket (rate_limit_per_s; at most one second's worth,
 * and at least one token); returns how many requests it allows now.  The
 * dispatcher and the tracking poller (poller.c) draw from it.  The bucket
 * is in shared memory, so a restarted dispatcher does not find it full.
 */
int
provider_tokens(Provider *p, TimestampTz now)
{
	double		cap;

	if (p->rate_per_s <= 0)
		return INT_MAX;
	cap = p->rate_per_s > 1 ? p->rate_per_s : 1;
	if (now > p->st->tokens_at)
		p->st->tokens += (double) (now - p->st->tokens_at) / 1000000.0 * p->rate_per_s;
	if (p->st->tokens > cap)
		p->st->tokens = cap;
	p->st->tokens_at = now;
	return (int) p->st->tokens;
}
