/*-------------------------------------------------------------------------
 *
 * statement.c
 *		shipsync.import_statement(): a carrier's monthly bill, CSV or JSON.
 *
 * A statement is imported whole or not at all, in the caller's
 * transaction:
 *
 *	1. the body's SHA-256 is looked up: the same body of the same provider
 *	   again is a no-op that answers with the statement it already is;
 *	2. the lines are read -- CSV by csv.c (a header row, then one line per
 *	   fee; the columns named through options.columns, else the provider's
 *	   field_map rows of direction statement, else the canonical names), or
 *	   JSON as a push is (fees.c) -- and each is checked (fees.c).  The
 *	   first bad line is an ERROR (SS400) naming its line (the header row is
 *	   line 1) and column, and nothing is stored; with options.on_error =
 *	   skip, bad lines go to the statement's errors and the rest is stored;
 *	3. the period is options.period, or the month all the lines' times
 *	   fall in;
 *	4. the statement row is written (lines, totals per currency, errors);
 *	   an earlier statement of the same provider, period and account
 *	   (options.account, for carriers that bill several) is superseded:
 *	   its lines become revisions where this one bills them again, and are
 *	   withdrawn (amount 0, adjusted) where it does not;
 *	5. the lines are stored as every source's are (fees_store: one
 *	   statement, set-based, the fee totals written back).
 *
 * The import runs as the extension's owner (SECURITY DEFINER) and takes
 * the provider's fee lines exclusively for its transaction (the advisory
 * lock of _lock_fees(), taken before step 1): pushes and pulls of that
 * provider wait for it, and so does another import, which then finds this
 * one's statement to supersede or to be.  With on_error = skip, the
 * waybills of the skipped lines keep what the earlier statement billed
 * them (a skipped line may bill it still), and if a skipped line's waybill
 * cannot be read, nothing is withdrawn.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "pg_shipsync.h"

PG_FUNCTION_INFO_V1(shipsync_import_statement);

/* what options gives, checked */
typedef struct StatementOptions
{
	Jsonb	   *columns;		/* field -> CSV column, or NULL */
	char	   *period;			/* YYYY-MM, or NULL */
	char	   *account;		/* or NULL */
	bool		skip;			/* on_error = skip */
	char		delimiter;
} StatementOptions;

/* The bad lines of a statement imported with on_error = skip */
typedef struct StatementErrors
{
	StringInfoData json;		/* [{"line", "column", "error"}, ...] */
	int			n;
	List	   *held;			/* their waybills, as read (char *) */
	bool		held_unknown;	/* one whose waybill could not be read */
} StatementErrors;

static SPIPlanPtr digest_plan = NULL;
static SPIPlanPtr begin_plan = NULL;

static void
option_error(const char *what, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s", what),
			 errhint("%s", hint)));
}

/* A string member of a jsonb object, or NULL; an ERROR if it is another type */
static char *
option_string(Jsonb *o, const char *key)
{
	JsonbValue *v = getKeyJsonValueFromContainer(&o->root, key, strlen(key), NULL);

	if (v == NULL || v->type == jbvNull)
		return NULL;
	if (v->type != jbvString)
		option_error(psprintf("option \"%s\" must be a string", key),
					 "See the options of shipsync.import_statement() in docs/fees.md.");
	return pnstrdup(v->val.string.val, v->val.string.len);
}

static void
read_options(Jsonb *o, StatementOptions *so)
{
	static const char *const known[] = {"columns", "period", "account", "on_error", "delimiter", NULL};
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken r;
	char	   *s;

	memset(so, 0, sizeof(*so));
	so->delimiter = ',';
	if (o == NULL)
		return;
	if (!JB_ROOT_IS_OBJECT(o))
		option_error("options must be a JSON object", "For example '{\"on_error\": \"skip\"}'.");
	it = JsonbIteratorInit(&o->root);
	while ((r = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		bool		ok = false;

		if (r != WJB_KEY)
			continue;
		for (int i = 0; known[i]; i++)
			if (strlen(known[i]) == (size_t) v.val.string.len &&
				strncmp(known[i], v.val.string.val, v.val.string.len) == 0)
				ok = true;
		if (!ok)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown statement option \"%.*s\"", v.val.string.len, v.val.string.val),
					 errdetail("Known options: columns, period, account, on_error, delimiter."),
					 errhint("Check the spelling of the option name.")));
	}
	{
		JsonbValue *c = getKeyJsonValueFromContainer(&o->root, "columns", 7, NULL);

		if (c && c->type != jbvNull)
		{
			if (c->type != jbvBinary || !JsonContainerIsObject(c->val.binary.data))
				option_error("option \"columns\" must be a JSON object of fee fields to column names",
							 "For example {\"tracking_number\": \"运单号\", \"amount\": \"金额\"}.");
			so->columns = JsonbValueToJsonb(c);
		}
	}
	so->period = option_string(o, "period");
	so->account = option_string(o, "account");
	if (so->period && (strlen(so->period) != 7 || strspn(so->period, "0123456789") != 4 ||
					   so->period[4] != '-' || strspn(so->period + 5, "0123456789") != 2 ||
					   atoi(so->period + 5) < 1 || atoi(so->period + 5) > 12))
		option_error(psprintf("option \"period\" must be a month written YYYY-MM, not \"%s\"", so->period),
					 "For example \"2026-03\".");
	s = option_string(o, "on_error");
	if (s && strcmp(s, "skip") != 0 && strcmp(s, "error") != 0)
		option_error(psprintf("option \"on_error\" must be \"error\" or \"skip\", not \"%s\"", s),
					 "With skip, bad lines are kept in the statement's errors and the others are imported.");
	so->skip = s && strcmp(s, "skip") == 0;
	s = option_string(o, "delimiter");
	if (s && strlen(s) != 1)
		option_error("option \"delimiter\" must be one character",
					 "For example \";\" or \"\\t\".");
	if (s)
		so->delimiter = s[0];
}

/*
 * A bad line: an ERROR, or with on_error = skip an entry of the errors.
 * The column is the CSV column's name (or, for JSON, the field's); tn is
 * the line's waybill where it could be read, else NULL: the lines an
 * earlier statement billed for that waybill (for any, with NULL) are not
 * withdrawn, since the skipped line may bill them still.
 */
static void
line_problem(TrackProvider *p, StatementErrors *errs, bool skip, int line,
			 const char *column, const char *message, const char *tn)
{
	if (!skip)
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("statement of provider \"%s\" has an invalid line %d", p->name, line),
				 column ? errdetail("Line %d, column %s: %s.", line, column, message) :
				 errdetail("Line %d: %s.", line, message),
				 errhint("Nothing of this statement was stored. Fix the line, or import with options {\"on_error\": \"skip\"} to keep the bad lines in the statement's errors.")));
	appendStringInfoString(&errs->json, errs->n ? ", {\"line\": " : "{\"line\": ");
	appendStringInfo(&errs->json, "%d, \"column\": ", line);
	if (column)
		escape_json(&errs->json, column);
	else
		appendStringInfoString(&errs->json, "null");
	appendStringInfoString(&errs->json, ", \"error\": ");
	escape_json(&errs->json, message);
	appendStringInfoChar(&errs->json, '}');
	errs->n++;
	if (tn == NULL)
		errs->held_unknown = true;
	else
	{
		char	   *t = pstrdup(tn);

		shipsync_trim_in_place(t);
		if (t[0] == '\0')
			errs->held_unknown = true;
		else
			errs->held = lappend(errs->held, t);
	}
}

/*
 * The waybills of the skipped lines, for _store_fees(): NULL when none was
 * skipped, a NULL among them when one's could not be read.
 */
static ArrayType *
held_waybills(StatementErrors *errs)
{
	int			n = list_length(errs->held) + 1;
	Datum	   *d = palloc(sizeof(Datum) * n);
	bool	   *isnull = palloc0(sizeof(bool) * n);
	ListCell   *lc;
	int			i = 0;

	if (errs->n == 0)
		return NULL;
	foreach(lc, errs->held)
		d[i++] = CStringGetTextDatum((char *) lfirst(lc));
	if (errs->held_unknown)
		isnull[i++] = true;
	return DatumGetArrayTypeP(shipsync_make_array(d, isnull, i, TEXTOID));
}

/* A row of nothing but empty fields (",,,", as spreadsheets end a sheet) */
static bool
blank_row(CsvReader *r)
{
	for (int i = 0; i < r->nfields; i++)
		for (const char *c = r->fields[i]; *c; c++)
			if (*c != ' ' && *c != '\t')
				return false;
	return true;
}

/*
 * Which column of the header holds each field: options.columns, the
 * profile's statement rows, or the canonical name.  -1: none.
 */
static void
map_columns(TrackProvider *p, FeeMap *m, StatementOptions *so, CsvReader *r, int *col,
			FeeContext *c)
{
	for (int f = 0; f < FEE_NFIELDS; f++)
	{
		const char *name = m->field[f].source ? m->field[f].source : fee_field_names[f];

		if (so->columns)
		{
			JsonbValue *v = getKeyJsonValueFromContainer(&so->columns->root, fee_field_names[f],
														 strlen(fee_field_names[f]), NULL);

			if (v && v->type == jbvString)
			{
				name = pnstrdup(v->val.string.val, v->val.string.len);
				m->field[f].transform = NULL;	/* the caller's own column */
				m->field[f].dflt = NULL;
			}
			else if (v)
				option_error(psprintf("option \"columns\" must map field %s to a column name", fee_field_names[f]),
							 "For example {\"amount\": \"金额\"}.");
		}
		col[f] = -1;
		for (int i = 0; i < r->nfields; i++)
			if (strcmp(r->fields[i], name) == 0)
				col[f] = i;
	}
	if (so->columns)
	{
		JsonbIterator *it = JsonbIteratorInit(&so->columns->root);
		JsonbValue	v;
		JsonbIteratorToken t;

		while ((t = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			bool		known = false;

			if (t != WJB_KEY)
				continue;
			for (int f = 0; f < FEE_NFIELDS; f++)
				if (strlen(fee_field_names[f]) == (size_t) v.val.string.len &&
					strncmp(fee_field_names[f], v.val.string.val, v.val.string.len) == 0)
					known = true;
			if (!known)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("option \"columns\" names an unknown fee field \"%.*s\"",
								v.val.string.len, v.val.string.val),
						 errdetail("Fee fields: tracking_number, type, amount, currency, key, settlement, payer, billed_weight_kg, state, occurred_at.")));
		}
	}
	for (int f = 0; f <= FEE_CURRENCY; f++)
	{
		StringInfoData have;

		if (col[f] >= 0 || (f == FEE_CURRENCY && c->default_currency))
			continue;
		initStringInfo(&have);
		for (int i = 0; i < r->nfields; i++)
			appendStringInfo(&have, "%s%s", i ? ", " : "", r->fields[i]);
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("statement of provider \"%s\" has no column for %s", p->name, fee_field_names[f]),
				 errdetail("Its header (line 1) names: %s.", have.data),
				 errhint("Name the column in options.columns, for example {\"%s\": \"...\"}, or in shipsync.field_map (profile %s, direction statement)%s.",
						 fee_field_names[f], p->profile,
						 f == FEE_CURRENCY ? ", or give the provider option currency" : "")));
	}
}

/* Read a CSV statement into the batch; bad lines as line_problem() says. */
static void
read_csv(FeeContext *c, FeeBatch *b, const char *body, size_t len, StatementOptions *so,
		 StatementErrors *errs)
{
	TrackProvider *p = c->provider;
	FeeMap	   *m = fees_map_load(p->profile, "statement");
	CsvReader	r;
	int			line;
	int			rc;
	int			col[FEE_NFIELDS];
	int			ncols;
	char	  **header;
	char		err[160];

	shipsync_csv_init(&r, body, len, so->delimiter);
	PG_TRY();
	{
		rc = shipsync_csv_next(&r, &line, err, sizeof(err));
		if (rc <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
					 errmsg("statement of provider \"%s\" has no header row", p->name),
					 rc < 0 ? errdetail("%c%s.", pg_toupper((unsigned char) err[0]), err + 1) :
					 errdetail("The body is empty."),
					 errhint("A CSV statement starts with a header row naming its columns.")));
		map_columns(p, m, so, &r, col, c);
		ncols = r.nfields;
		header = palloc(sizeof(char *) * ncols);
		for (int i = 0; i < ncols; i++)
			header[i] = pstrdup(r.fields[i]);
		while ((rc = shipsync_csv_next(&r, &line, err, sizeof(err))) == 1)
		{
			char	   *v[FEE_NFIELDS];
			FeeProblem	pr;
			bool		ok = true;

			CHECK_FOR_INTERRUPTS();
			if (blank_row(&r))
				continue;
			if (r.nfields != ncols)
			{
				/* its fields may have moved: its waybill is not known */
				line_problem(p, errs, so->skip, line, NULL,
							 psprintf("%d fields where the header has %d", r.nfields, ncols),
							 NULL);
				continue;
			}
			for (int f = 0; f < FEE_NFIELDS && ok; f++)
			{
				char	   *raw = col[f] >= 0 ? r.fields[col[f]] : NULL;

				if (raw && raw[0] == '\0')
					raw = NULL;
				ok = fees_transform(&m->field[f], (FeeField) f, raw ? pstrdup(raw) : NULL, &v[f], &pr);
			}
			if (ok)
				ok = fees_add_line(c, b, v, &pr);
			if (!ok)
				line_problem(p, errs, so->skip, line,
							 col[pr.field] >= 0 ? header[col[pr.field]] : fee_field_names[pr.field],
							 pr.message,
							 pr.field == FEE_TRACKING_NUMBER ? NULL : v[FEE_TRACKING_NUMBER]);
		}
		if (rc < 0)
			ereport(ERROR,
					(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
					 errmsg("statement of provider \"%s\" is not valid CSV", p->name),
					 errdetail("%c%s.", pg_toupper((unsigned char) err[0]), err + 1),
					 errhint("Nothing of this statement was stored. Fields holding the delimiter, quotes or line breaks are quoted, and a quote inside one is written twice.")));
	}
	PG_FINALLY();
	{
		shipsync_csv_free(&r);
	}
	PG_END_TRY();
}

/* For JSON statements: a bad fee object, by its position and field */
typedef struct JsonBad
{
	TrackProvider *p;
	StatementErrors *errs;
	bool		skip;
} JsonBad;

static void
json_bad_line(void *arg, int line, FeeProblem *pr)
{
	JsonBad    *jb = (JsonBad *) arg;

	/* (which waybill a bad fee object bills is not known) */
	line_problem(jb->p, jb->errs, jb->skip, line, fee_field_names[pr->field], pr->message,
				 NULL);
}

/*
 * The statement this body already is, as the answer of an import, or NULL:
 * the same body in the same format with the same options (another account,
 * month or column map makes another statement of the same bytes).  Sets
 * *digest to the body's hex SHA-256.
 */
static char *
already_imported(TrackProvider *p, text *body, const char *format, Datum options,
				 char **digest)
{
	Datum		args[4] = {Int32GetDatum(p->id), PointerGetDatum(body),
	CStringGetTextDatum(format), options};

	if (digest_plan == NULL)
	{
		Oid			t[4] = {INT4OID, TEXTOID, TEXTOID, JSONBOID};

		digest_plan = shipsync_prepare_saved(
			"SELECT d.digest, CASE WHEN s.statement_id IS NOT NULL THEN"
			" pg_catalog.jsonb_build_object('provider', p.name,"
			"  'statement_id', s.statement_id, 'period', pg_catalog.to_char(s.period, 'YYYY-MM'),"
			"  'duplicate', true, 'lines', s.lines, 'totals', s.totals,"
			"  'skipped', pg_catalog.jsonb_array_length(s.errors))::text END"
			" FROM (SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to($2, 'UTF8')), 'hex') AS digest) d"
			" JOIN shipsync.provider p ON p.provider_id = $1"
			" LEFT JOIN shipsync.statement s ON s.provider_id = $1 AND s.digest = d.digest"
			"  AND s.format = $3 AND s.options = $4", 4, t);
	}
	/* not read-only: a snapshot taken now, after the provider's lock */
	if (SPI_execute_plan(digest_plan, args, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "looking up the statement's digest failed");
	*digest = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
}

/*
 * Write the statement row (superseding an earlier one of its period):
 * shipsync._begin_statement().  Sets the new id and the one it replaces
 * (0: none) and returns the period as YYYY-MM.
 */
static char *
begin_statement(TrackProvider *p, FeeBatch *b, StatementOptions *so, const char *format,
				const char *digest, Datum options, StatementErrors *errs, int64 *id,
				int64 *replaces, char **totals)
{
	Datum		args[11];
	char		nulls[11] = "           ";
	bool		isnull;
	Datum		v;

	if (begin_plan == NULL)
	{
		Oid			t[11] = {INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTARRAYOID,
		NUMERICARRAYOID, TIMESTAMPTZARRAYOID, JSONBOID, JSONBOID};

		begin_plan = shipsync_prepare_saved(
			"SELECT statement_id, replaces, pg_catalog.to_char(period, 'YYYY-MM'), totals::text"
			" FROM shipsync._begin_statement($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)", 11, t);
	}
	args[0] = Int32GetDatum(p->id);
	args[1] = so->period ? CStringGetTextDatum(so->period) : (Datum) 0;
	nulls[1] = so->period ? ' ' : 'n';
	args[2] = so->account ? CStringGetTextDatum(so->account) : (Datum) 0;
	nulls[2] = so->account ? ' ' : 'n';
	args[3] = CStringGetTextDatum(format);
	args[4] = CStringGetTextDatum(digest);
	args[5] = CStringGetTextDatum(p->timezone);
	args[6] = fees_batch_field(b, FEE_CURRENCY);
	args[7] = fees_batch_field(b, FEE_AMOUNT);
	args[8] = fees_batch_field(b, FEE_OCCURRED_AT);
	appendStringInfoChar(&errs->json, ']');
	args[9] = DirectFunctionCall1(jsonb_in, CStringGetDatum(errs->json.data));
	args[10] = options;
	if (SPI_execute_plan(begin_plan, args, nulls, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "recording the statement failed");
	*id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	v = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	*replaces = isnull ? 0 : DatumGetInt64(v);
	*totals = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
}

/*
 * The audit row of an import that stored a statement: a person's change of
 * what orders cost.  Its object is the provider's period (and account), its
 * old value the statement it supersedes, its new value the answer.
 */
static Datum
audit_statement(const char *provider, const char *period, const char *account,
				int64 replaces, Datum answer)
{
	Oid			t[4] = {TEXTOID, TEXTOID, INT8OID, JSONBOID};
	Datum		args[4];
	char		nulls[4] = "    ";

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	args[0] = CStringGetTextDatum(provider);
	args[1] = CStringGetTextDatum(account ? psprintf("%s/%s", period, account) : period);
	args[2] = Int64GetDatum(replaces);
	nulls[2] = replaces ? ' ' : 'n';
	args[3] = answer;
	if (SPI_execute_with_args("SELECT shipsync._audit('import_statement', 'statement',"
							  " pg_catalog.concat_ws('/', $1, $2), CASE WHEN $3 IS NOT NULL"
							  " THEN pg_catalog.jsonb_build_object('statement_id', $3) END, $4)",
							  4, t, args, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "auditing the statement failed");
	SPI_finish();
	return answer;
}

/*
 * shipsync.import_statement(provider text, body text, format text,
 *							 options jsonb)
 */
Datum
shipsync_import_statement(PG_FUNCTION_ARGS)
{
	char	   *pname;
	text	   *body;
	char	   *format;
	StatementOptions so;
	TrackProvider *p;
	FeeContext *c;
	FeeBatch   *b;
	FeeSummary	sum = {0};
	StatementErrors errs;
	char	   *digest;
	Datum		options;
	char	   *answer;
	char	   *period;
	char	   *totals;
	int64		id;
	int64		replaces;
	MemoryContext cxt = CurrentMemoryContext;

	body = shipsync_push_args(fcinfo, "provider", "statement of provider",
							  "Pass the statement file's content as text.", &pname);
	format = PG_ARGISNULL(2) ? "csv" : text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (strcmp(format, "csv") != 0 && strcmp(format, "json") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown statement format \"%s\"", format),
				 errhint("Statements are csv or json.")));
	read_options(PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3), &so);
	options = PG_ARGISNULL(3) ? DirectFunctionCall1(jsonb_in, CStringGetDatum("{}"))
		: PG_GETARG_DATUM(3);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	p = provider_lookup(pname);
	/*
	 * The provider's fee lines, whole, before anything is read: a second
	 * import of the same period (or the same body) waits for this one and
	 * then supersedes it (or is its duplicate).
	 */
	fees_lock_provider(p->id);
	answer = already_imported(p, body, format, options, &digest);
	if (answer != NULL)
	{
		MemoryContextSwitchTo(cxt);
		answer = pstrdup(answer);
		SPI_finish();
		PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(answer)));
	}

	c = fees_context(p);
	b = fees_batch_create();
	initStringInfo(&errs.json);
	appendStringInfoChar(&errs.json, '[');
	errs.n = 0;
	errs.held = NIL;
	errs.held_unknown = false;
	if (strcmp(format, "csv") == 0)
		read_csv(c, b, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), &so, &errs);
	else
	{
		JsonBad		jb = {p, &errs, so.skip};
		int			line;
		FeeProblem	pr;

		(void) fees_read_json(c, b, fees_parse_json(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body),
													"statement", p),
							  fees_map_load(p->profile, "fee"), "statement",
							  json_bad_line, &jb, &line, &pr);
	}
	period = begin_statement(p, b, &so, format, digest, options, &errs, &id, &replaces, &totals);
	fees_store(b, "statement", id, replaces, held_waybills(&errs),
			   GetUserNameFromId(GetSessionUserId(), false), &sum);

	/* what the audit row names, out of SPI's memory, which the answer ends */
	pname = MemoryContextStrdup(cxt, p->name);
	period = MemoryContextStrdup(cxt, period);
	PG_RETURN_DATUM(audit_statement(pname, period, so.account, replaces,
									fees_answer(cxt, p, &sum,
												psprintf(", \"statement_id\": " INT64_FORMAT
														 ", \"period\": \"%s\""
														 ", \"withdrawn\": " INT64_FORMAT
														 ", \"skipped\": %d"
														 ", \"totals\": %s%s", id, period,
														 sum.n_withdrawn, errs.n, totals,
														 replaces ? psprintf(", \"supersedes\": " INT64_FORMAT,
																			 replaces) : ""))));
}
