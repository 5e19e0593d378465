/*-------------------------------------------------------------------------
 *
 * validate.c
 *		Field map rows checked when they are written, and orders checked
 *		against their provider's outbound map when they are written.
 *
 * shipsync._map_check() compiles one field_map row (mapping.c) and raises
 * an error naming what is wrong: the trigger on shipsync.field_map calls
 * it, so a bad row never reaches the dispatcher.
 *
 * shipsync._validate() is the row trigger that attach(..., options =>
 * '{"validate": "reject"}') installs beside the capture trigger: it renders
 * the new row through the provider's outbound map, as the dispatcher
 * would, and refuses the row when required fields are missing or
 * malformed.  It sends nothing and writes nothing.  It runs as the
 * extension's owner (SECURITY DEFINER, to read the binding and the
 * provider), but prints the row as the table's owner in a restricted
 * operation, as the dispatcher does: printing a row runs the owner's code
 * (a cast to json of a type of its own), which ran as a superuser until
 * 0.2's fix.  The provider and its
 * compiled map are loaded with provider.c's loader; one compiled map per
 * binding is kept in TopMemoryContext, checked against the configuration
 * generation at each use, so a changed map applies to the next row.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

PG_FUNCTION_INFO_V1(shipsync_map_check);
PG_FUNCTION_INFO_V1(shipsync_validate);

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
		bool		ok = shipsync_tz_offset(tz, 0, &off, NULL) ||
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
	provider_load(tmp, &ps, &np, pid, false);
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
 * The new row of rel as JSON text (row_to_json()) into *rowtext, and its
 * key column's value as text (NULL when the table has no such column) into
 * *key, printed as the owner of the binding's table (bound: rel, or the
 * partitioned table rel is a partition of) in a restricted operation, as
 * the dispatcher prints the row it sends (body.c).  The trigger runs as
 * the extension's owner, and printing runs the owner's code: a column
 * whose type has a cast to json has that cast called by row_to_json().
 */
static void
validate_print_row(Relation rel, Oid bound, HeapTuple tuple, const char *key_column,
				   char **rowtext, char **key)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			keyatt = SPI_fnumber(desc, key_column);
	ShipsyncUserSave save;

	shipsync_become_owner(shipsync_table_owner(bound), &save);
	PG_TRY();
	{
		Datum		json = DirectFunctionCall1(row_to_json,
											   heap_copy_tuple_as_datum(tuple, desc));

		*rowtext = text_to_cstring(DatumGetTextPP(json));
		*key = keyatt > 0 ? SPI_getvalue(tuple, desc, keyatt) : NULL;
	}
	PG_FINALLY();
	{
		shipsync_restore_user(&save);
	}
	PG_END_TRY();
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
	if (capture_suppressed(td->tg_event, td->tg_trigtuple))
		return PointerGetDatum(tuple);	/* the dispatcher's own write-back */
	binding_id = pg_strtoint32(td->tg_trigger->tgargs[0]);
	vc = validate_lookup(binding_id);
	/* a trigger made by hand, on a table that is not the binding's */
	if (!capture_table_is(td->tg_relation, vc->relid))
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

	validate_print_row(td->tg_relation, vc->relid, tuple, vc->key_column, &rowtext, &key);
	row = shipsync_json_parse(rowtext, strlen(rowtext), err, sizeof(err));
	if (row == NULL)
		elog(ERROR, "the order row is not JSON: %s", err);
	memset(&env, 0, sizeof(env));
	env.row = row;
	env.options = vc->options;
	env.order_key = key;
	/* fixed by capture later: present, and never a reason to refuse */
	env.idempotency_key = "00000000-0000-0000-0000-000000000000";
	env.tz_offset = shipsync_tz_offset;
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
