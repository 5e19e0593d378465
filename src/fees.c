/*-------------------------------------------------------------------------
 *
 * fees.c
 *		Fee lines from every source: shipsync.ingest_fees(), the fees of
 *		create responses, of pulls, and the shared reading and storing.
 *
 * Every source ends in the same two steps.  First each line is read and
 * checked here, in C, one at a time, so that a bad one is reported with
 * its place (fee 3 of a push, line 57 and column 金额 of a statement):
 * amounts strictly (money.c: numeric, never float; no spaces, thousands
 * separators or currency signs), the currency against shipsync.currency,
 * settlement, payer and state against their words, times as ISO 8601
 * (zone-less ones in the provider's time zone).  Then the whole batch goes
 * to shipsync._store_fees() in one statement, set-based: codes mapped to
 * canonical fee types (fee_type_map), lines matched to shipments by
 * tracking number or parked, revisions upserted (the previous version
 * kept by a trigger in fee_line_history), and the fee_total of each
 * touched order computed; here the totals that changed are written onto
 * the order rows through the binding's write-back statement (tracking.c).
 *
 * Where a JSON payload keeps its lines, and what each field is called, is
 * data: shipsync.field_map rows of direction fee for the provider's
 * profile (a field without a row has its canonical name).  A source path
 * is read in the fee object, else from the document's root (SF's waybill
 * number sits beside its fee list); a string met on a path that goes on
 * is read as JSON (SF's apiResultData).  Payloads are read with
 * PostgreSQL's jsonb, whose numbers are numeric: "12.50000" and 12.5 are
 * read as written, never through a double.
 *
 * ingest_fees() runs as the extension's owner (SECURITY DEFINER): the
 * push is checked as the dialect's tracking pushes are (tracking.c), with
 * the same SQLSTATEs, and all of it is stored or nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

PG_FUNCTION_INFO_V1(shipsync_ingest_fees);

/* the names of the fields, indexed by FeeField */
const char *const fee_field_names[FEE_NFIELDS] = {
	"tracking_number", "type", "amount", "currency", "key", "settlement",
	"payer", "billed_weight_kg", "state", "occurred_at"
};

static SPIPlanPtr store_plan = NULL;
static SPIPlanPtr currency_plan = NULL;
static SPIPlanPtr map_plan = NULL;

/* ---------- the batch ---------- */

/* _store_fees() argument order, after src, stmt, replaces, who */
enum
{
	COL_PID, COL_BID, COL_OK, COL_TN, COL_CODE, COL_AMOUNT, COL_CUR, COL_KEY,
	COL_SETTLE, COL_PAYER, COL_WEIGHT, COL_STATE, COL_AT, NCOLS
};

static const Oid col_types[NCOLS] = {
	INT4OID, INT4OID, TEXTOID, TEXTOID, TEXTOID, NUMERICOID, TEXTOID, TEXTOID,
	TEXTOID, TEXTOID, NUMERICOID, TEXTOID, TIMESTAMPTZOID
};

struct FeeBatch
{
	int			n;
	int			cap;
	Datum	   *v[NCOLS];
	bool	   *null[NCOLS];
};

FeeBatch *
fees_batch_create(void)
{
	FeeBatch   *b = palloc0(sizeof(FeeBatch));

	b->cap = 64;
	for (int c = 0; c < NCOLS; c++)
	{
		b->v[c] = palloc(sizeof(Datum) * b->cap);
		b->null[c] = palloc(sizeof(bool) * b->cap);
	}
	return b;
}

int
fees_batch_size(FeeBatch *b)
{
	return b->n;
}

static int
batch_row(FeeBatch *b)
{
	if (b->n == b->cap)
	{
		b->cap *= 2;
		for (int c = 0; c < NCOLS; c++)
		{
			b->v[c] = repalloc(b->v[c], sizeof(Datum) * b->cap);
			b->null[c] = repalloc(b->null[c], sizeof(bool) * b->cap);
		}
	}
	for (int c = 0; c < NCOLS; c++)
		b->null[c][b->n] = true;
	return b->n++;
}

static void
batch_set(FeeBatch *b, int row, int col, Datum v)
{
	b->v[col][row] = v;
	b->null[col][row] = false;
}

static Datum
batch_array(FeeBatch *b, int col)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {b->n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(col_types[col], &typlen, &typbyval, &typalign);
	if (b->n == 0)
		return PointerGetDatum(construct_empty_array(col_types[col]));
	return PointerGetDatum(construct_md_array(b->v[col], b->null[col], 1, dims, lbs,
											  col_types[col], typlen, typbyval, typalign));
}

/* The amounts, currencies or times of the batch as an array (statements) */
Datum
fees_batch_field(FeeBatch *b, FeeField f)
{
	switch (f)
	{
		case FEE_AMOUNT:
			return batch_array(b, COL_AMOUNT);
		case FEE_CURRENCY:
			return batch_array(b, COL_CUR);
		case FEE_OCCURRED_AT:
			return batch_array(b, COL_AT);
		default:
			elog(ERROR, "fee field %d is not kept as an array", (int) f);
	}
	return (Datum) 0;
}

/* ---------- checking one line ---------- */

/* The ISO 4217 codes of shipsync.currency, sorted: read once per call */
static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/*
 * What the lines of one provider are checked against.  SPI must be
 * connected.  default_currency is the provider's option currency, or what
 * its dialect bills in, or NULL.
 */
FeeContext *
fees_context(TrackProvider *p)
{
	FeeContext *c = palloc0(sizeof(FeeContext));
	Datum		arg = Int32GetDatum(p->id);

	if (currency_plan == NULL)
	{
		Oid			t[1] = {INT4OID};

		currency_plan = shipsync_prepare_saved(
			"SELECT (SELECT pg_catalog.array_agg(c.code ORDER BY c.code COLLATE \"C\")"
			"   FROM shipsync.currency c),"
			" shipsync._fee_currency(p.options, p.dialect),"
			" (SELECT pg_catalog.array_agg(COALESCE(c.minor_units, -1)::integer"
			"                              ORDER BY c.code COLLATE \"C\")"
			"   FROM shipsync.currency c)"
			" FROM shipsync.provider p WHERE p.provider_id = $1", 1, t);
	}
	if (SPI_execute_plan(currency_plan, &arg, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "reading the currencies failed");
	{
		bool		isnull;
		Datum		a = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		Datum	   *elems;
		int			n = 0;

		if (!isnull)
			deconstruct_array(DatumGetArrayTypeP(a), TEXTOID, -1, false, TYPALIGN_INT,
							  &elems, NULL, &n);
		c->currencies = palloc(sizeof(char *) * Max(n, 1));
		for (int i = 0; i < n; i++)
			c->currencies[i] = TextDatumGetCString(elems[i]);
		c->ncurrencies = n;
		c->default_currency = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		c->minor_units = palloc(sizeof(int) * Max(n, 1));
		a = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
		if (!isnull)
		{
			int			m;

			deconstruct_array(DatumGetArrayTypeP(a), INT4OID, sizeof(int32), true,
							  TYPALIGN_INT, &elems, NULL, &m);
			for (int i = 0; i < n && i < m; i++)
				c->minor_units[i] = DatumGetInt32(elems[i]);
		}
	}
	c->provider = p;
	return c;
}

/* The place of a currency in c->currencies, -1 when it is none of them */
static int
known_currency(FeeContext *c, const char *code)
{
	char	  **hit = bsearch(&code, c->currencies, c->ncurrencies, sizeof(char *), cmp_str);

	return hit ? (int) (hit - c->currencies) : -1;
}

static bool
one_of(const char *s, const char *const *words)
{
	for (int i = 0; words[i]; i++)
		if (strcmp(s, words[i]) == 0)
			return true;
	return false;
}

/* A field's problem: the field's name and what is wrong, for the caller */
static bool
bad(FeeProblem *pr, FeeField f, char *fmt,...) pg_attribute_printf(3, 4);

static bool
bad(FeeProblem *pr, FeeField f, char *fmt,...)
{
	va_list		ap;
	StringInfoData buf;

	initStringInfo(&buf);
	for (;;)
	{
		int			needed;

		va_start(ap, fmt);
		needed = appendStringInfoVA(&buf, fmt, ap);
		va_end(ap);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	pr->field = f;
	pr->message = buf.data;
	return false;
}

/* A decimal read strictly; false with the problem set */
static bool
read_decimal(FeeField f, const char *s, Datum *out, int *decimals, FeeProblem *pr)
{
	char	   *norm = palloc(strlen(s) + 1);
	const char *why;

	if (!shipsync_amount_check(s, norm, &why))
		return bad(pr, f, "\"%s\" %s; amounts are written with digits and at most one decimal point, without spaces, thousands separators or currency signs", s, why);
	*out = DirectFunctionCall3(numeric_in, CStringGetDatum(norm),
							   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
	if (decimals)
		*decimals = shipsync_amount_decimals(norm);
	return true;
}

/*
 * Check one line and add it to the batch; false, with the problem set and
 * nothing added, when a field cannot be taken.
 */
bool
fees_add_line(FeeContext *c, FeeBatch *b, char **v, FeeProblem *pr)
{
	static const char *const settlements[] = {"monthly", "cash", NULL};
	static const char *const payers[] = {"sender", "receiver", "third_party", NULL};
	static const char *const states[] = {"charged", "refunded", "adjusted", NULL};
	Datum		amount;
	Datum		weight = (Datum) 0;
	Datum		at = (Datum) 0;
	const char *cur = v[FEE_CURRENCY] ? v[FEE_CURRENCY] : c->default_currency;
	int			decimals = 0;
	int			ci;
	int			r;

	/* " SF123 " from a spreadsheet is SF123, as the shipment has it */
	if (v[FEE_TRACKING_NUMBER])
		shipsync_trim_in_place(v[FEE_TRACKING_NUMBER]);
	if (v[FEE_TRACKING_NUMBER] == NULL || v[FEE_TRACKING_NUMBER][0] == '\0')
		return bad(pr, FEE_TRACKING_NUMBER, "the tracking number is missing");
	if (v[FEE_TYPE] == NULL || v[FEE_TYPE][0] == '\0')
		return bad(pr, FEE_TYPE, "the fee type is missing");
	for (FeeField f = FEE_TRACKING_NUMBER; f <= FEE_KEY; f++)
		if (v[f] && strlen(v[f]) > SHIPSYNC_MAX_ID_BYTES)
			return bad(pr, f, "the %s is longer than %d bytes", fee_field_names[f],
					   SHIPSYNC_MAX_ID_BYTES);
	if (v[FEE_AMOUNT] == NULL)
		return bad(pr, FEE_AMOUNT, "the amount is missing");
	if (!read_decimal(FEE_AMOUNT, v[FEE_AMOUNT], &amount, &decimals, pr))
		return false;
	if (cur == NULL || cur[0] == '\0')
		return bad(pr, FEE_CURRENCY, "the currency is missing and provider \"%s\" has no option currency",
				   c->provider->name);
	if ((ci = known_currency(c, cur)) < 0)
		return bad(pr, FEE_CURRENCY, "unknown currency \"%s\": not an ISO 4217 code of shipsync.currency%s",
				   cur, strcmp(cur, "RMB") == 0 ? " (the renminbi is CNY)" : "");
	/* JPY 1500.5: no such amount, whatever the carrier meant */
	if (c->minor_units[ci] >= 0 && decimals > c->minor_units[ci])
		return bad(pr, FEE_AMOUNT, "\"%s\" has %d decimal%s where %s has %d (ISO 4217's minor unit, shipsync.currency.minor_units)",
				   v[FEE_AMOUNT], decimals, decimals == 1 ? "" : "s", cur, c->minor_units[ci]);
	if (v[FEE_SETTLEMENT] && !one_of(v[FEE_SETTLEMENT], settlements))
		return bad(pr, FEE_SETTLEMENT, "settlement \"%s\" is neither monthly nor cash", v[FEE_SETTLEMENT]);
	if (v[FEE_PAYER] && !one_of(v[FEE_PAYER], payers))
		return bad(pr, FEE_PAYER, "payer \"%s\" is not sender, receiver or third_party", v[FEE_PAYER]);
	if (v[FEE_STATE] && !one_of(v[FEE_STATE], states))
		return bad(pr, FEE_STATE, "state \"%s\" is not charged, refunded or adjusted%s", v[FEE_STATE],
				   strcmp(v[FEE_STATE], "estimated") == 0 ? " (estimates come from create responses only)" : "");
	if (v[FEE_WEIGHT])
	{
		if (!read_decimal(FEE_WEIGHT, v[FEE_WEIGHT], &weight, NULL, pr))
			return false;
		if (v[FEE_WEIGHT][0] == '-')
			return bad(pr, FEE_WEIGHT, "the billed weight \"%s\" is negative", v[FEE_WEIGHT]);
	}
	if (v[FEE_OCCURRED_AT] && !tracking_read_time(c->provider, v[FEE_OCCURRED_AT], &at))
		return bad(pr, FEE_OCCURRED_AT, "\"%s\" is not an ISO 8601 date and time (times without a zone are read in the provider's option timezone)",
				   v[FEE_OCCURRED_AT]);

	r = batch_row(b);
	batch_set(b, r, COL_PID, Int32GetDatum(c->provider->id));
	batch_set(b, r, COL_TN, CStringGetTextDatum(v[FEE_TRACKING_NUMBER]));
	batch_set(b, r, COL_CODE, CStringGetTextDatum(v[FEE_TYPE]));
	batch_set(b, r, COL_AMOUNT, amount);
	batch_set(b, r, COL_CUR, CStringGetTextDatum(cur));
	if (v[FEE_KEY] && v[FEE_KEY][0])
		batch_set(b, r, COL_KEY, CStringGetTextDatum(v[FEE_KEY]));
	if (v[FEE_SETTLEMENT])
		batch_set(b, r, COL_SETTLE, CStringGetTextDatum(v[FEE_SETTLEMENT]));
	if (v[FEE_PAYER])
		batch_set(b, r, COL_PAYER, CStringGetTextDatum(v[FEE_PAYER]));
	if (v[FEE_WEIGHT])
		batch_set(b, r, COL_WEIGHT, weight);
	if (v[FEE_STATE])
		batch_set(b, r, COL_STATE, CStringGetTextDatum(v[FEE_STATE]));
	if (v[FEE_OCCURRED_AT])
		batch_set(b, r, COL_AT, at);
	return true;
}

/* ---------- the field map ---------- */

/*
 * The rows of one direction (fee, statement) of a profile: for each field
 * its source, transform, argument and default.  SPI must be connected.
 */
FeeMap *
fees_map_load(const char *profile, const char *direction)
{
	FeeMap	   *m = palloc0(sizeof(FeeMap));
	Datum		args[2] = {CStringGetTextDatum(profile), CStringGetTextDatum(direction)};

	if (map_plan == NULL)
	{
		Oid			t[2] = {TEXTOID, TEXTOID};

		map_plan = shipsync_prepare_saved(
			"SELECT target_path, source, transform, arg::text, \"default\""
			" FROM shipsync.field_map WHERE profile = $1 AND direction = $2"
			" ORDER BY position, field_map_id", 2, t);
	}
	if (SPI_execute_plan(map_plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the fee field map failed");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *target = SPI_getvalue(tup, desc, 1);
		FeeRule    *r = NULL;

		if (strcmp(target, "fees") == 0)
			r = &m->list;
		for (int f = 0; f < FEE_NFIELDS && r == NULL; f++)
			if (strcmp(target, fee_field_names[f]) == 0)
				r = &m->field[f];
		if (r == NULL)
			continue;			/* refused by the field_map trigger */
		r->source = SPI_getvalue(tup, desc, 2);
		r->transform = SPI_getvalue(tup, desc, 3);
		r->arg = SPI_getvalue(tup, desc, 4);
		r->dflt = SPI_getvalue(tup, desc, 5);
		if (r->transform && strcmp(r->transform, "identity") == 0)
			r->transform = NULL;
	}
	return m;
}

/*
 * A raw value through its rule's transform and default: palloc'd, or NULL
 * for absent.  False, with the problem set, when the transform refuses it.
 */
bool
fees_transform(const FeeRule *r, FeeField f, char *raw, char **out, FeeProblem *pr)
{
	MapValue	in = {MV_NULL, NULL};
	MapValue	res = {MV_NULL, NULL};
	MapEnv		env = {0};
	char		err[160];
	bool		ok;

	if ((raw == NULL || raw[0] == '\0') && r->dflt)
		raw = r->dflt;
	if (r->transform == NULL || raw == NULL)
	{
		*out = raw;
		return true;
	}
	in.type = MV_STRING;
	in.s = raw;
	env.tz_offset = shipsync_tz_offset;
	ok = shipsync_map_transform(r->transform, r->arg, &in, &env, &res, err, sizeof(err));
	/* malloc'd by mapping.c: copied out at once */
	*out = (ok && res.type != MV_NULL) ? pstrdup(res.s) : NULL;
	shipsync_value_free(&res);
	if (!ok)
		return bad(pr, f, "\"%s\" cannot be read through transform %s: %s", raw, r->transform, err);
	return true;
}

/* ---------- JSON payloads ---------- */

/* The value of the four hex digits at p, or -1 (stops at a NUL) */
static int
hex4(const char *p)
{
	int			v = 0;

	for (int i = 0; i < 4; i++)
	{
		char		c = p[i];
		int			d;

		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return -1;
		v = v * 16 + d;
	}
	return v;
}

/*
 * s with each \u escape of a character beyond ASCII (a surrogate pair as
 * one) written as its UTF-8 bytes; every other escape, and a lone
 * surrogate (which jsonb_in() refuses anyway), as it is.
 */
static char *
utf8_escapes_decoded(const char *s)
{
	StringInfoData out;

	initStringInfo(&out);
	while (*s)
	{
		int			cp;
		int			n = 6;
		unsigned char u[8];

		if (s[0] != '\\' || s[1] != 'u' || (cp = hex4(s + 2)) < 0x80)
		{
			/* a character, or an escape that stays: both its characters */
			appendStringInfoChar(&out, *s++);
			if (s[-1] == '\\' && *s)
				appendStringInfoChar(&out, *s++);
			continue;
		}
		if (cp >= 0xD800 && cp <= 0xDBFF)
		{
			int			lo = (s[6] == '\\' && s[7] == 'u') ? hex4(s + 8) : -1;

			if (lo >= 0xDC00 && lo <= 0xDFFF)
			{
				cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
				n = 12;
			}
			else
				cp = -1;
		}
		else if (cp >= 0xDC00 && cp <= 0xDFFF)
			cp = -1;
		if (cp < 0)
		{
			appendBinaryStringInfo(&out, s, 6);
			s += 6;
			continue;
		}
		unicode_to_utf8((pg_wchar) cp, u);
		appendBinaryStringInfo(&out, (char *) u, pg_utf_mblen(u));
		s += n;
	}
	return out.data;
}

/*
 * jsonb_in() of s.  In an SQL_ASCII database PostgreSQL refuses a \u
 * escape of a character beyond ASCII ("conversion between UTF8 and
 * SQL_ASCII is not supported"), and carriers' encoders write them
 * (EasyPost, Python's json.dumps, Jackson's escapeNonAscii): a fee push
 * naming its fee 运费 that way was refused as not JSON.  There they are
 * written as their UTF-8 bytes first, what a UTF8 database stores.
 */
static Jsonb *
fees_jsonb_in(char *s)
{
	if (GetDatabaseEncoding() == PG_SQL_ASCII && strstr(s, "\\u") != NULL)
		s = utf8_escapes_decoded(s);
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(s)));
}

/*
 * The jsonb of a payload; a body that is not JSON is SS400, naming the
 * source (fee push, fee pull, statement).
 */
Jsonb *
fees_parse_json(const char *text, size_t len, const char *what, TrackProvider *p)
{
	MemoryContext cxt = CurrentMemoryContext;
	Jsonb	   *volatile doc = NULL;
	char	   *s = pnstrdup(text, len);

	PG_TRY();
	{
		doc = fees_jsonb_in(s);
	}
	PG_CATCH();
	{
		ErrorData  *e;

		MemoryContextSwitchTo(cxt);
		e = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("%s for provider \"%s\" is not JSON", what, p->name),
				 errdetail("%s", e->message),
				 errhint("See docs/fees.md for the payload of each dialect.")));
	}
	PG_END_TRY();
	return doc;
}

/*
 * Follow a dotted path (names, and numbers for array elements) from c; a
 * string met with steps left is read as JSON.  False when it leads
 * nowhere.
 */
static bool
json_path(JsonbContainer *c, const char *path, JsonbValue *out)
{
	char	   *copy = pstrdup(path);
	char	   *save = NULL;
	JsonbValue	cur;

	cur.type = jbvBinary;
	cur.val.binary.data = c;
	cur.val.binary.len = 0;
	for (char *step = strtok_r(copy, ".", &save); step; step = strtok_r(NULL, ".", &save))
	{
		JsonbValue *next;
		JsonbContainer *in;

		if (cur.type == jbvString)
		{
			/* JSON carried in a string (SF's apiResultData) */
			char	   *s = pnstrdup(cur.val.string.val, cur.val.string.len);
			Jsonb	   *j;

			if (s[0] != '{' && s[0] != '[')
				return false;
			j = fees_jsonb_in(s);
			cur.type = jbvBinary;
			cur.val.binary.data = &j->root;
		}
		if (cur.type != jbvBinary)
			return false;
		in = cur.val.binary.data;
		if (JsonContainerIsObject(in))
			next = getKeyJsonValueFromContainer(in, step, strlen(step), NULL);
		else if (JsonContainerIsArray(in) && strspn(step, "0123456789") == strlen(step))
			next = getIthJsonbValueFromContainer(in, (uint32) atoi(step));
		else
			return false;
		if (next == NULL)
			return false;
		cur = *next;
	}
	*out = cur;
	return true;
}

/* A scalar as text (numbers exactly as numeric prints them), or NULL */
static char *
json_text(const JsonbValue *v, bool *is_container)
{
	*is_container = false;
	switch (v->type)
	{
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		case jbvNull:
			return NULL;
		default:
			*is_container = true;
			return NULL;
	}
}

/*
 * The fee objects of a JSON payload: the array at the map's fees path (by
 * default "fees"), or the document itself when it is an array.  NULL when
 * there is none.
 */
static JsonbContainer *
json_fee_list(Jsonb *doc, FeeMap *m)
{
	JsonbValue	v;

	if (JB_ROOT_IS_ARRAY(doc) && !JB_ROOT_IS_SCALAR(doc) && m->list.source == NULL)
		return &doc->root;
	if (!json_path(&doc->root, m->list.source ? m->list.source : "fees", &v) ||
		v.type != jbvBinary || !JsonContainerIsArray(v.val.binary.data))
		return NULL;
	return v.val.binary.data;
}

/* One fee object e of doc into the batch; false with the problem set */
static bool
read_json_line(FeeContext *c, FeeBatch *b, Jsonb *doc, JsonbValue *e, FeeMap *m,
			   FeeProblem *pr)
{
	char	   *v[FEE_NFIELDS];

	if (e == NULL || e->type != jbvBinary || !JsonContainerIsObject(e->val.binary.data))
		return bad(pr, FEE_TRACKING_NUMBER, "the line is not a JSON object");
	for (int f = 0; f < FEE_NFIELDS; f++)
	{
		const FeeRule *r = &m->field[f];
		const char *src = r->source ? r->source : fee_field_names[f];
		JsonbValue	jv;
		bool		container = false;
		char	   *raw = NULL;

		if (strncmp(src, "const:", 6) == 0)
			raw = pstrdup(src + 6);
		else if (json_path(e->val.binary.data, src, &jv) || json_path(&doc->root, src, &jv))
			raw = json_text(&jv, &container);
		if (container)
			return bad(pr, (FeeField) f, "\"%s\" is an object or an array, not a value", src);
		if (!fees_transform(r, (FeeField) f, raw, &v[f], pr))
			return false;
	}
	return fees_add_line(c, b, v, pr);
}

/*
 * Read the fee objects of a JSON payload into the batch.  A line that
 * cannot be taken goes to on_bad (its position, 1-based, and problem), and
 * the others are read on; without on_bad, the first one makes it return
 * false with *bad_line and *pr set.  A payload with no fee list is SS400.
 */
bool
fees_read_json(FeeContext *c, FeeBatch *b, Jsonb *doc, FeeMap *m, const char *what,
			   FeeBadLine on_bad, void *arg, int *bad_line, FeeProblem *pr)
{
	JsonbContainer *list = json_fee_list(doc, m);
	int			n;

	if (list == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("%s for provider \"%s\" has no list of fees", what, c->provider->name),
				 errdetail("No array was found at \"%s\".", m->list.source ? m->list.source : "fees"),
				 errhint("See docs/fees.md for the payload of each dialect, and shipsync.field_map (direction fee) for where profile \"%s\" reads it.",
						 c->provider->profile)));
	n = JsonContainerSize(list);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(list, (uint32) i);

		CHECK_FOR_INTERRUPTS();
		if (read_json_line(c, b, doc, e, m, pr))
			continue;
		*bad_line = i + 1;
		if (on_bad == NULL)
			return false;
		on_bad(arg, i + 1, pr);
	}
	return true;
}

/* ---------- the fee locks ---------- */

/* advisory lock classes: a provider's fee lines, and a tracking number's */
#define FEE_LOCK_PROVIDER	1717920626
#define FEE_LOCK_TRACKING	1717920627

static int
cmp_int32(const void *a, const void *b)
{
	int32		x = *(const int32 *) a;
	int32		y = *(const int32 *) b;

	return (x > y) - (x < y);
}

/* x[0..n) sorted ascending, each value once; returns how many */
static int
distinct_int32(int32 *x, int n)
{
	int			m = 0;

	if (n > 1)
		qsort(x, n, sizeof(int32), cmp_int32);
	for (int i = 0; i < n; i++)
		if (m == 0 || x[m - 1] != x[i])
			x[m++] = x[i];
	return m;
}

/* texts by their bytes: equal under the default collation, which is deterministic */
static int
cmp_text_bytes(const void *a, const void *b)
{
	text	   *x = *(text *const *) a;
	text	   *y = *(text *const *) b;
	int			lx = VARSIZE_ANY_EXHDR(x);
	int			ly = VARSIZE_ANY_EXHDR(y);
	int			c = memcmp(VARDATA_ANY(x), VARDATA_ANY(y), Min(lx, ly));

	return c != 0 ? c : (lx > ly) - (lx < ly);
}

/* More than 1,000 different texts among t[0..n) (sorts t) */
static bool
over_thousand_distinct(text **t, int n)
{
	int			d = 0;

	if (n <= 1000)
		return false;
	qsort(t, n, sizeof(text *), cmp_text_bytes);
	for (int i = 0; i < n && d <= 1000; i++)
		d += i == 0 || cmp_text_bytes(&t[i - 1], &t[i]) != 0;
	return d > 1000;
}

PG_FUNCTION_INFO_V1(shipsync_lock_fees);

/*
 * shipsync._lock_fees(pids integer[], tns text[], whole boolean): the
 * locks of a transaction that writes the fee lines of these tracking
 * numbers (install/45_fees.sql says why).  Whole, or more than 1,000
 * different tracking numbers: each provider's lock, exclusive.  Otherwise
 * each provider's lock shared, then each tracking number's (by its
 * hashtext()) exclusive.  Each kind in ascending order of its keys, so
 * that two writers never wait for each other in a circle; NULLs take no
 * lock.  It was PL/pgSQL: 10.9 thousand instructions an answer in the
 * apply, and the first batch of a new applier loaded the PL/pgSQL library
 * for it (6 ms).
 */
Datum
shipsync_lock_fees(PG_FUNCTION_ARGS)
{
	int32	   *pids = NULL;
	text	  **tns = NULL;
	int			np = 0,
				nt = 0,
				ntotal = 0;
	bool		whole = !PG_ARGISNULL(2) && PG_GETARG_BOOL(2);

	if (!PG_ARGISNULL(0))
	{
		Datum	   *d;
		bool	   *nulls;
		int			n;

		deconstruct_array(PG_GETARG_ARRAYTYPE_P(0), INT4OID, sizeof(int32), true,
						  TYPALIGN_INT, &d, &nulls, &n);
		pids = palloc(sizeof(int32) * Max(n, 1));
		for (int i = 0; i < n; i++)
			if (!nulls[i])
				pids[np++] = DatumGetInt32(d[i]);
	}
	if (!PG_ARGISNULL(1))
	{
		Datum	   *d;
		bool	   *nulls;

		deconstruct_array(PG_GETARG_ARRAYTYPE_P(1), TEXTOID, -1, false, TYPALIGN_INT,
						  &d, &nulls, &ntotal);
		tns = palloc(sizeof(text *) * Max(ntotal, 1));
		for (int i = 0; i < ntotal; i++)
			if (!nulls[i])
				tns[nt++] = DatumGetTextPP(d[i]);
	}
	np = distinct_int32(pids, np);
	if (whole || (ntotal > 1000 && over_thousand_distinct(tns, nt)))
	{
		for (int i = 0; i < np; i++)
			fees_lock_provider(pids[i]);
		PG_RETURN_VOID();
	}
	for (int i = 0; i < np; i++)
		DirectFunctionCall2(pg_advisory_xact_lock_shared_int4,
							Int32GetDatum(FEE_LOCK_PROVIDER), Int32GetDatum(pids[i]));
	{
		int32	   *h = palloc(sizeof(int32) * Max(nt, 1));

		for (int i = 0; i < nt; i++)
			h[i] = DatumGetInt32(DirectFunctionCall1Coll(hashtext, DEFAULT_COLLATION_OID,
														 PointerGetDatum(tns[i])));
		nt = distinct_int32(h, nt);
		for (int i = 0; i < nt; i++)
			DirectFunctionCall2(pg_advisory_xact_lock_int4,
								Int32GetDatum(FEE_LOCK_TRACKING), Int32GetDatum(h[i]));
	}
	PG_RETURN_VOID();
}

/* ---------- the quoted totals of a batch of answers ---------- */

/* Member key of JSON object e (an array element), or NULL: none, or e is no object */
static JsonbValue *
member(const JsonbValue *e, const char *key, JsonbValue *buf)
{
	if (e->type != jbvBinary || !JsonContainerIsObject(e->val.binary.data))
		return NULL;
	return getKeyJsonValueFromContainer(e->val.binary.data, key, strlen(key), buf);
}

/*
 * A member as ->> gives it: strings unquoted, numbers as numeric prints
 * them, true and false, a nested value as its JSON text; NULL for none or
 * a JSON null.
 */
static char *
member_text(const JsonbValue *v)
{
	bool		container;

	if (v == NULL)
		return NULL;
	if (v->type == jbvBinary)
		return JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
	return json_text(v, &container);
}

/* A line's amount as (e->>'amount')::numeric would read it: NULL, or ERROR */
static Datum
member_amount(const JsonbValue *e, bool *isnull)
{
	JsonbValue	buf;
	JsonbValue *v = member(e, "amount", &buf);
	char	   *s;

	*isnull = false;
	if (v != NULL && v->type == jbvNumeric)
		return NumericGetDatum(v->val.numeric);	/* what numeric_out would print */
	s = member_text(v);
	if (s == NULL)
	{
		*isnull = true;
		return (Datum) 0;
	}
	return DirectFunctionCall3(numeric_in, CStringGetDatum(s),
							   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
}

/* The default fee currency of each provider of pids[0..n) that exists */
typedef struct QuoteCurrency
{
	int32		provider_id;
	char	   *cur;			/* NULL: every line must say */
} QuoteCurrency;

static const char *const quote_currency_sql =
"SELECT p.provider_id, shipsync._fee_currency(p.options, p.dialect)"
" FROM shipsync.provider p WHERE p.provider_id OPERATOR(pg_catalog.=) ANY ($1)";

static SPIPlanPtr quote_currency_plan = NULL;

static QuoteCurrency *
quote_currencies(Datum pids, int *n)
{
	QuoteCurrency *qc;
	MemoryContext cxt = CurrentMemoryContext;
	Oid			t[1] = {INT4ARRAYOID};

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (quote_currency_plan == NULL)
		quote_currency_plan = shipsync_prepare_saved_opt(quote_currency_sql, 1, t, true);
	if (SPI_execute_plan(quote_currency_plan, &pids, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the providers' fee currencies failed");
	qc = MemoryContextAlloc(cxt, sizeof(QuoteCurrency) * (SPI_processed + 1));
	*n = (int) SPI_processed;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		char	   *cur;

		qc[i].provider_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
														SPI_tuptable->tupdesc, 1, &isnull));
		cur = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		qc[i].cur = cur ? MemoryContextStrdup(cxt, cur) : NULL;
	}
	SPI_finish();
	return qc;
}

/*
 * The currencies of shipsync.currency that have a minor unit, with it,
 * sorted by code: a quote's total with more decimals than its currency has
 * is no total (_fee_totals() judges it so too)
 */
typedef struct MinorUnits
{
	int			n;
	char	  **codes;
	int		   *units;
} MinorUnits;

static SPIPlanPtr minor_units_plan = NULL;

static MinorUnits *
minor_units_read(void)
{
	MinorUnits *mu;
	MemoryContext cxt = CurrentMemoryContext;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (minor_units_plan == NULL)
		minor_units_plan = shipsync_prepare_saved_opt(
			"SELECT c.code, c.minor_units::integer FROM shipsync.currency c"
			" WHERE c.minor_units IS NOT NULL ORDER BY c.code COLLATE \"C\"", 0, NULL, true);
	if (SPI_execute_plan(minor_units_plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the currencies' minor units failed");
	mu = MemoryContextAlloc(cxt, sizeof(MinorUnits));
	mu->n = (int) SPI_processed;
	mu->codes = MemoryContextAlloc(cxt, sizeof(char *) * Max(mu->n, 1));
	mu->units = MemoryContextAlloc(cxt, sizeof(int) * Max(mu->n, 1));
	for (int i = 0; i < mu->n; i++)
	{
		bool		isnull;

		mu->codes[i] = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[i],
															 SPI_tuptable->tupdesc, 1));
		mu->units[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
												   SPI_tuptable->tupdesc, 2, &isnull));
	}
	SPI_finish();
	return mu;
}

/* Whether an amount fits its currency's minor unit (or it has none) */
static bool
minor_units_fit(const MinorUnits *mu, const char *cur, Datum amount)
{
	char	  **hit;

	if (mu == NULL || cur == NULL)
		return true;
	hit = bsearch(&cur, mu->codes, mu->n, sizeof(char *), cmp_str);
	if (hit == NULL)
		return true;
	return shipsync_amount_decimals(DatumGetCString(DirectFunctionCall1(numeric_out, amount)))
		<= mu->units[hit - mu->codes];
}

/*
 * One answer's quoted total: the sum of its lines' amounts (a refund's
 * counted against it) when every line is in the same currency, a line
 * without one in the provider's default (else XXX); NULL when they differ,
 * when there are no lines, or when none has an amount.  Every line's
 * amount is read, so that one that is no number is an error here too.
 */
static Datum
quote_total(Jsonb *fj, const QuoteCurrency *qc, const MinorUnits *mu, bool *isnull)
{
	JsonbContainer *list = &fj->root;
	Datum		sum = (Datum) 0;
	bool		summed = false;
	char	   *one = NULL;
	bool		same = true;
	uint32		n;

	*isnull = true;
	if (!JsonContainerIsArray(list) || JsonContainerIsScalar(list))
		return (Datum) 0;
	n = JsonContainerSize(list);
	for (uint32 i = 0; i < n; i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(list, i);
		JsonbValue	buf;
		char	   *cur = member_text(member(e, "currency", &buf));
		char	   *type;
		bool		nullamt;
		Datum		amount = member_amount(e, &nullamt);

		if (cur == NULL)
			cur = (qc && qc->cur) ? qc->cur : "XXX";
		if (one == NULL)
			one = cur;
		else if (strcmp(one, cur) != 0)
			same = false;
		if (nullamt)
			continue;
		type = member_text(member(e, "type", &buf));
		if (type != NULL && strcmp(type, "refund") == 0)
			amount = DirectFunctionCall1(numeric_uminus, DirectFunctionCall1(numeric_abs, amount));
		sum = summed ? DirectFunctionCall2(numeric_add, sum, amount) : amount;
		summed = true;
	}
	if (qc == NULL || one == NULL || !same || !summed || !minor_units_fit(mu, one, sum))
		return (Datum) 0;
	*isnull = false;
	return sum;
}

/*
 * The fee lists the last _quote_totals() of this transaction parsed, by
 * position, for _first_quote_lines(): the apply gives both the same
 * answers ($9 of APPLY_CREATE and of APPLY_FIRST_QUOTES, src/apply.c), and
 * parsing every list into a Jsonb twice cost 7.3 thousand instructions an
 * order.  A list is taken from here only when its text is, byte for byte,
 * the text parsed (jsonb_in() gives one text one Jsonb), so a call with
 * other lists parses them as before.  The memory is the transaction's:
 * when it goes, its reset callback forgets it.
 */
static struct
{
	MemoryContext cxt;			/* NULL: nothing kept */
	MemoryContextCallback gone;
	int			n;
	char	  **texts;			/* [i]: its bytes, NULL: none parsed */
	int		   *lens;
	Jsonb	  **docs;
}			parsed_fees;

static void
parsed_fees_gone(void *arg)
{
	parsed_fees.cxt = NULL;
}

/* Keep nothing but room for n lists parsed in this transaction */
static void
parsed_fees_reset(int n)
{
	if (parsed_fees.cxt != NULL)
		MemoryContextDelete(parsed_fees.cxt);	/* clears parsed_fees.cxt */
	parsed_fees.cxt = AllocSetContextCreate(TopTransactionContext, "pg_shipsync parsed fees",
											ALLOCSET_SMALL_SIZES);
	parsed_fees.gone.func = parsed_fees_gone;
	MemoryContextRegisterResetCallback(parsed_fees.cxt, &parsed_fees.gone);
	parsed_fees.n = n;
	parsed_fees.texts = MemoryContextAllocZero(parsed_fees.cxt, sizeof(char *) * Max(n, 1));
	parsed_fees.lens = MemoryContextAllocZero(parsed_fees.cxt, sizeof(int) * Max(n, 1));
	parsed_fees.docs = MemoryContextAllocZero(parsed_fees.cxt, sizeof(Jsonb *) * Max(n, 1));
}

/* List i, of text t, parsed into doc */
static void
parsed_fees_keep(int i, text *t, Jsonb *doc)
{
	parsed_fees.lens[i] = VARSIZE_ANY_EXHDR(t);
	parsed_fees.texts[i] = MemoryContextAlloc(parsed_fees.cxt, Max(parsed_fees.lens[i], 1));
	memcpy(parsed_fees.texts[i], VARDATA_ANY(t), parsed_fees.lens[i]);
	parsed_fees.docs[i] = MemoryContextAlloc(parsed_fees.cxt, VARSIZE(doc));
	memcpy(parsed_fees.docs[i], doc, VARSIZE(doc));
}

/* The fee list body, the i-th of its batch, as jsonb_in() reads it */
static Jsonb *
fees_list_parse(int i, Datum body)
{
	text	   *t = DatumGetTextPP(body);

	if (parsed_fees.cxt != NULL && i < parsed_fees.n && parsed_fees.texts[i] != NULL &&
		parsed_fees.lens[i] == (int) VARSIZE_ANY_EXHDR(t) &&
		memcmp(parsed_fees.texts[i], VARDATA_ANY(t), parsed_fees.lens[i]) == 0)
		return parsed_fees.docs[i];
	return fees_jsonb_in(text_to_cstring(t));
}

PG_FUNCTION_INFO_V1(shipsync_quote_totals);

/*
 * shipsync._quote_totals(bodies text[], pids integer[]): for a batch of
 * create or update answers, by position (ord, from 1), each one's fees as
 * jsonb and their quoted total (quote_total()); a NULL body has no row.
 * Called once per batch by the apply (src/apply.c), it reads the
 * providers' default currencies once.  It was a PL/pgSQL function whose
 * query parsed each answer, unnested its lines into a tuple store and
 * aggregated them: 26 thousand instructions an answer, here a few.
 */
Datum
shipsync_quote_totals(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum	   *bodies = NULL;
	Datum	   *pids = NULL;
	bool	   *bnulls = NULL;
	bool	   *pnulls = NULL;
	int			nb = 0,
				np = 0,
				nq = 0;
	QuoteCurrency *qc = NULL;
	MinorUnits *mu = NULL;

	InitMaterializedSRF(fcinfo, 0);
	if (PG_ARGISNULL(0))
		return (Datum) 0;
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(0), TEXTOID, -1, false, TYPALIGN_INT,
					  &bodies, &bnulls, &nb);
	parsed_fees_reset(nb);
	if (!PG_ARGISNULL(1))
	{
		deconstruct_array(PG_GETARG_ARRAYTYPE_P(1), INT4OID, sizeof(int32), true,
						  TYPALIGN_INT, &pids, &pnulls, &np);
		qc = quote_currencies(PG_GETARG_DATUM(1), &nq);
		mu = minor_units_read();
	}
	for (int i = 0; i < nb; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};
		const QuoteCurrency *q = NULL;
		Jsonb	   *fj;

		if (bnulls[i])
			continue;
		fj = fees_list_parse(i, bodies[i]);	/* nothing kept yet: parsed */
		parsed_fees_keep(i, DatumGetTextPP(bodies[i]), fj);
		if (i < np && !pnulls[i])
			for (int j = 0; j < nq && q == NULL; j++)
				if (qc[j].provider_id == DatumGetInt32(pids[i]))
					q = &qc[j];
		values[0] = Int64GetDatum(i + 1);
		values[1] = JsonbPGetDatum(fj);
		values[2] = quote_total(fj, q, mu, &nulls[2]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ---------- the first quotes of a batch of created orders ---------- */

/*
 * One answer of shipsync._first_quote_lines()'s batch, and one fee line of
 * it.  lines[first .. first + nlines) are an answer's, in its list's order.
 */
typedef struct FirstAnswer
{
	int32		bid;
	int32		pid;
	char	   *k;
	char	   *tn;
	bool		taken;			/* still one the statement may record */
	int			first;
	int			nlines;
} FirstAnswer;

typedef struct FirstLine
{
	int32		pid;
	char	   *code;			/* ->>'type' */
	char	   *cur;			/* ->>'currency', NULL: the provider's */
	char	   *fkey;			/* ->>'key', '' for none */
	Datum		amount;
	int			lookup;			/* its (pid, code, cur) among first_lookup()'s */
} FirstLine;

/* An answer with more lines goes to _record_quotes(): the checks below are
 * pairwise per answer */
#define FIRST_QUOTE_LINES_MAX 64

/* (pid, code, cur) in order, a missing currency first */
static int
cmp_first_lookup(const FirstLine *a, const FirstLine *b)
{
	int			c;

	if (a->pid != b->pid)
		return a->pid < b->pid ? -1 : 1;
	if ((c = strcmp(a->code, b->code)) != 0)
		return c;
	if (a->cur == NULL || b->cur == NULL)
		return (a->cur != NULL) - (b->cur != NULL);
	return strcmp(a->cur, b->cur);
}

static int
cmp_first_lookup_ptr(const void *a, const void *b)
{
	return cmp_first_lookup(*(FirstLine *const *) a, *(FirstLine *const *) b);
}

/* Answers by (pid, tn), and by (bid, k): a batch's repeats sort together */
static int
cmp_first_by_tracking(const void *a, const void *b)
{
	const FirstAnswer *x = *(FirstAnswer *const *) a;
	const FirstAnswer *y = *(FirstAnswer *const *) b;

	if (x->pid != y->pid)
		return x->pid < y->pid ? -1 : 1;
	return strcmp(x->tn, y->tn);
}

static int
cmp_first_by_order(const void *a, const void *b)
{
	const FirstAnswer *x = *(FirstAnswer *const *) a;
	const FirstAnswer *y = *(FirstAnswer *const *) b;

	if (x->bid != y->bid)
		return x->bid < y->bid ? -1 : 1;
	return strcmp(x->k, y->k);
}

/* Leave out every answer of v that cmp finds equal to another */
static void
first_drop_repeats(FirstAnswer **v, int n, int (*cmp) (const void *, const void *))
{
	qsort(v, n, sizeof(FirstAnswer *), cmp);
	for (int i = 1; i < n; i++)
		if (cmp(&v[i - 1], &v[i]) == 0)
			v[i - 1]->taken = v[i]->taken = false;
}

/*
 * The canonical type and the known currency of each distinct (provider,
 * code, currency) of lines[0..n) (sorted that way, one of each): what the
 * statement this function replaces joined its lines to.  A provider that is
 * not there leaves its lookups' type NULL.
 */
static const char *const first_lookup_sql =
"SELECT u.ord, COALESCE(tm.fee_type, ft.name, 'other'), c.code, c.minor_units::integer"
" FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3))"
"   WITH ORDINALITY AS u(pid, code, cur, ord)"
" JOIN shipsync.provider p ON p.provider_id OPERATOR(pg_catalog.=) u.pid"
" LEFT JOIN shipsync.fee_type_map tm"
"   ON tm.profile OPERATOR(pg_catalog.=) COALESCE(p.options OPERATOR(pg_catalog.->>) 'profile', p.dialect)"
"   AND tm.code OPERATOR(pg_catalog.=) u.code"
" LEFT JOIN shipsync.fee_type ft ON ft.name OPERATOR(pg_catalog.=) pg_catalog.lower(u.code)"
" LEFT JOIN shipsync.currency c"
"   ON c.code OPERATOR(pg_catalog.=) COALESCE(u.cur, shipsync._fee_currency(p.options, p.dialect))";

static SPIPlanPtr first_lookup_plan = NULL;

static void
first_lookup(FirstLine **u, int n, char **types, char **curs, int *minor)
{
	MemoryContext cxt = CurrentMemoryContext;
	Oid			t[3] = {INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum	   *pids = palloc(sizeof(Datum) * n);
	Datum	   *codes = palloc(sizeof(Datum) * n);
	Datum	   *cur = palloc(sizeof(Datum) * n);
	bool	   *curnull = palloc(sizeof(bool) * n);
	Datum		args[3];

	for (int i = 0; i < n; i++)
	{
		pids[i] = Int32GetDatum(u[i]->pid);
		codes[i] = CStringGetTextDatum(u[i]->code);
		curnull[i] = u[i]->cur == NULL;
		cur[i] = curnull[i] ? (Datum) 0 : CStringGetTextDatum(u[i]->cur);
		types[i] = curs[i] = NULL;
		minor[i] = -1;
	}
	args[0] = shipsync_make_array(pids, NULL, n, INT4OID);
	args[1] = shipsync_make_array(codes, NULL, n, TEXTOID);
	args[2] = shipsync_make_array(cur, curnull, n, TEXTOID);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (first_lookup_plan == NULL)
		first_lookup_plan = shipsync_prepare_saved_opt(first_lookup_sql, 3, t, true);
	if (SPI_execute_plan(first_lookup_plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the fee types and currencies of first quotes failed");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		ord = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		char	   *type = SPI_getvalue(tup, desc, 2);
		char	   *code = SPI_getvalue(tup, desc, 3);

		if (ord < 1 || ord > n)
			continue;
		types[ord - 1] = MemoryContextStrdup(cxt, type);
		curs[ord - 1] = code ? MemoryContextStrdup(cxt, code) : NULL;
		if (code)
		{
			Datum		m = SPI_getbinval(tup, desc, 4, &isnull);

			minor[ord - 1] = isnull ? -1 : DatumGetInt32(m);
		}
	}
	SPI_finish();
}

/*
 * Member key of line e as a string into *out (NULL: none, or a JSON null);
 * false when it is there and no string.
 */
static bool
member_string(const JsonbValue *e, const char *key, char **out)
{
	JsonbValue	buf;
	JsonbValue *v = member(e, key, &buf);

	*out = NULL;
	if (v == NULL || v->type == jbvNull)
		return true;
	if (v->type != jbvString)
		return false;
	*out = pnstrdup(v->val.string.val, v->val.string.len);
	return true;
}

/*
 * Read answer a's fee list into lines; false (the answer left to
 * _record_quotes()) unless it is a list of 1 to FIRST_QUOTE_LINES_MAX
 * objects whose type, and currency and key when given, are strings and
 * whose amounts are there.  Every line's amount is read, as the statement
 * this replaces read them: one that is no number is an error.
 */
static bool
first_read_lines(Jsonb *fj, FirstAnswer *a, FirstLine *lines)
{
	uint32		n;
	bool		ok = true;

	if (!JB_ROOT_IS_ARRAY(fj) || JB_ROOT_IS_SCALAR(fj))
		return false;
	n = JsonContainerSize(&fj->root);
	for (uint32 i = 0; i < n; i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(&fj->root, i);
		bool		nullamt;
		Datum		amount = member_amount(e, &nullamt);
		FirstLine  *l = &lines[i];

		if (!ok || n > FIRST_QUOTE_LINES_MAX || nullamt ||
			e->type != jbvBinary || !JsonContainerIsObject(e->val.binary.data))
		{
			ok = false;
			continue;
		}
		l->pid = a->pid;
		l->amount = amount;
		ok = member_string(e, "type", &l->code) && l->code != NULL &&
			member_string(e, "currency", &l->cur) &&
			member_string(e, "key", &l->fkey);
		if (ok && l->fkey == NULL)
			l->fkey = "";
	}
	a->nlines = ok ? (int) n : 0;
	return ok && n > 0;
}

PG_FUNCTION_INFO_V1(shipsync_first_quote_lines);

/*
 * shipsync._first_quote_lines(bids, oks, pids, tns, fees): the fee lines
 * the apply records for the first quotes of a batch of created orders in
 * one statement (APPLY_FIRST_QUOTES, src/apply.c), all but the look for
 * lines already there.  An answer (ord, from 1) qualifies when it is the
 * batch's only one of its tracking number and of its order, and its fees
 * are a list of objects with a type, their amounts given, all in one
 * currency known to shipsync.currency (a line without one in the
 * provider's), no two of one canonical type and key.  Each of its lines
 * (i, from 1) comes with its canonical type, key ('' for none), code,
 * amount and currency, and with the answer's estimate (a refund counted
 * against it) and line count.  Every other answer has no row, and goes to
 * _record_quotes(), which knows every case.
 *
 * It replaces the part of the statement that parsed each answer as jsonb,
 * unnested its lines, joined them to the fee types and currencies and
 * grouped them twice: the statement went from 179.2 to 133.6 thousand
 * instructions an answer (test/bench/statement-instructions --only
 * APPLY_FIRST_QUOTES).  The lookups are one statement per batch, for the
 * distinct (provider, code, currency) of its lines.
 */
Datum
shipsync_first_quote_lines(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum	   *d[5] = {NULL};
	bool	   *dn[5] = {NULL};
	int			len[5] = {0};
	static const Oid types[5] = {INT4OID, TEXTOID, INT4OID, TEXTOID, TEXTOID};
	int			n = 0;
	FirstAnswer *ans;
	FirstAnswer **byk;
	FirstLine  *lines;
	FirstLine **u;
	int			nanswers = 0,
				nlines = 0,
				cap = 64,
				nu = 0;
	char	  **ltypes;
	char	  **lcurs;
	int		   *lminor;

	InitMaterializedSRF(fcinfo, 0);
	for (int c = 0; c < 5; c++)
	{
		if (PG_ARGISNULL(c))
			continue;
		deconstruct_array(PG_GETARG_ARRAYTYPE_P(c), types[c], types[c] == INT4OID ? 4 : -1,
						  types[c] == INT4OID, TYPALIGN_INT, &d[c], &dn[c], &len[c]);
		n = Max(n, len[c]);
	}
	ans = palloc0(sizeof(FirstAnswer) * Max(n, 1));
	byk = palloc(sizeof(FirstAnswer *) * Max(n, 1));

	/* the answers with a tracking number and fees, each the batch's only one */
	for (int r = 0; r < n; r++)
	{
#define FQ_NULL(c) (r >= len[c] || dn[c][r])
		if (FQ_NULL(3) || FQ_NULL(4))
			continue;
		ans[r].taken = !FQ_NULL(0) && !FQ_NULL(1) && !FQ_NULL(2);
		ans[r].bid = FQ_NULL(0) ? 0 : DatumGetInt32(d[0][r]);
		ans[r].k = FQ_NULL(1) ? "" : TextDatumGetCString(d[1][r]);
		ans[r].pid = FQ_NULL(2) ? 0 : DatumGetInt32(d[2][r]);
		ans[r].tn = TextDatumGetCString(d[3][r]);
		byk[nanswers++] = &ans[r];
	}
	first_drop_repeats(byk, nanswers, cmp_first_by_tracking);
	first_drop_repeats(byk, nanswers, cmp_first_by_order);

	/*
	 * Their lines.  Every body is parsed, a repeat's too, and every amount
	 * of the others read, as the statement's ::jsonb and ::numeric did: one
	 * that is no JSON or no number fails here as it failed there.
	 */
	lines = palloc(sizeof(FirstLine) * cap);
	for (int r = 0; r < n; r++)
	{
		Jsonb	   *fj;
		uint32		size;

		if (FQ_NULL(3) || FQ_NULL(4))
			continue;
		fj = fees_list_parse(r, d[4][r]);
		if (!ans[r].taken)
			continue;
		size = JB_ROOT_IS_ARRAY(fj) && !JB_ROOT_IS_SCALAR(fj) ? JsonContainerSize(&fj->root) : 0;
		if (size > FIRST_QUOTE_LINES_MAX)
			size = 0;			/* left whole; its lines are read, not kept */
		while (nlines + (int) size > cap)
		{
			cap *= 2;
			lines = repalloc(lines, sizeof(FirstLine) * cap);
		}
		ans[r].first = nlines;
		ans[r].taken = first_read_lines(fj, &ans[r], &lines[nlines]);
		if (ans[r].taken)
			nlines += ans[r].nlines;
	}
#undef FQ_NULL

	/* one lookup per distinct (provider, code, currency) */
	u = palloc(sizeof(FirstLine *) * Max(nlines, 1));
	for (int i = 0; i < nlines; i++)
		u[i] = &lines[i];
	qsort(u, nlines, sizeof(FirstLine *), cmp_first_lookup_ptr);
	for (int i = 0; i < nlines; i++)
	{
		if (nu == 0 || cmp_first_lookup(u[nu - 1], u[i]) != 0)
			u[nu++] = u[i];
		u[i]->lookup = nu - 1;
	}
	ltypes = palloc(sizeof(char *) * Max(nu, 1));
	lcurs = palloc(sizeof(char *) * Max(nu, 1));
	lminor = palloc(sizeof(int) * Max(nu, 1));
	if (nu > 0)
		first_lookup(u, nu, ltypes, lcurs, lminor);

	for (int r = 0; r < n; r++)
	{
		FirstAnswer *a = &ans[r];
		FirstLine  *l = &lines[a->first];
		const char *cur = NULL;
		Datum		est = (Datum) 0;

		if (!a->taken)
			continue;
		for (int i = 0; i < a->nlines && a->taken; i++)
		{
			const char *type = ltypes[l[i].lookup];
			const char *c = lcurs[l[i].lookup];
			Datum		amt = l[i].amount;

			if (type == NULL || c == NULL || (cur != NULL && strcmp(cur, c) != 0))
				a->taken = false;
			cur = c;
			for (int j = 0; j < i && a->taken; j++)
				if (strcmp(ltypes[l[j].lookup], type) == 0 && strcmp(l[j].fkey, l[i].fkey) == 0)
					a->taken = false;
			if (!a->taken)
				break;
			if (strcmp(type, "refund") == 0)
				amt = DirectFunctionCall1(numeric_uminus, DirectFunctionCall1(numeric_abs, amt));
			est = i == 0 ? amt : DirectFunctionCall2(numeric_add, est, amt);
		}
		/* a total its currency cannot have (JPY 1500.5): to _record_quotes() */
		if (a->taken && a->nlines > 0 && lminor[l[0].lookup] >= 0 &&
			shipsync_amount_decimals(DatumGetCString(DirectFunctionCall1(numeric_out, est)))
			> lminor[l[0].lookup])
			a->taken = false;
		for (int i = 0; i < a->nlines && a->taken; i++)
		{
			Datum		values[13];
			bool		nulls[13] = {false};

			values[0] = Int64GetDatum(r + 1);
			values[1] = Int64GetDatum(i + 1);
			values[2] = Int32GetDatum(a->bid);
			values[3] = CStringGetTextDatum(a->k);
			values[4] = Int32GetDatum(a->pid);
			values[5] = CStringGetTextDatum(a->tn);
			values[6] = CStringGetTextDatum(ltypes[l[i].lookup]);
			values[7] = CStringGetTextDatum(l[i].fkey);
			values[8] = CStringGetTextDatum(l[i].code);
			values[9] = l[i].amount;
			values[10] = CStringGetTextDatum(cur);
			values[11] = est;
			values[12] = Int64GetDatum(a->nlines);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	return (Datum) 0;
}

/* ---------- storing ---------- */

/*
 * Write the fee totals _store_fees() (or _record_quotes()) returned onto
 * the order rows, one statement per binding: an order whose row refuses
 * its total is left as it was, with a writeback_failed ticket, and the
 * lines stay (writeback_values()).  The rows are (kind, n, binding_id,
 * order_key, fee_total); those of kind writeback are written.  Returns how
 * many orders.  The tuple table is read before anything else runs.
 */
int
fees_write_totals(SPITupleTable *tt, uint64 nrows)
{
	int32	   *bid = palloc(sizeof(int32) * (nrows + 1));
	Datum	   *key = palloc(sizeof(Datum) * (nrows + 1));
	Datum	   *tot = palloc(sizeof(Datum) * (nrows + 1));
	int			n = 0;

	for (uint64 i = 0; i < nrows; i++)
	{
		HeapTuple	tup = tt->vals[i];
		bool		isnull;
		char	   *kind = SPI_getvalue(tup, tt->tupdesc, 1);

		if (strcmp(kind, "writeback") != 0)
			continue;
		bid[n] = DatumGetInt32(SPI_getbinval(tup, tt->tupdesc, 3, &isnull));
		key[n] = CStringGetTextDatum(SPI_getvalue(tup, tt->tupdesc, 4));
		tot[n] = datumCopy(SPI_getbinval(tup, tt->tupdesc, 5, &isnull), false, -1);
		n++;
	}
	writeback_values(0, bid, key, tot, true, n);
	return n;
}

/*
 * The quote totals written back with shipments (the rows apply recorded:
 * binding_id, order_key, ..., fee_total in column 7) that the order's
 * numeric column cannot hold without rounding: the write-back left the
 * column as it was, and each such order gets a writeback_failed ticket,
 * as a bill's total does (shipsync._quote_totals_unfit()).  Shipments
 * without a fee_total are not asked about.
 */
void
fees_ticket_unfit_quotes(SPITupleTable *tt, uint64 nrows)
{
	static SPIPlanPtr plan = NULL;
	Datum	   *bid = palloc(sizeof(Datum) * (nrows + 1));
	Datum	   *key = palloc(sizeof(Datum) * (nrows + 1));
	Datum	   *tot = palloc(sizeof(Datum) * (nrows + 1));
	Datum		args[3];
	int			n = 0;

	for (uint64 i = 0; i < nrows; i++)
	{
		bool		isnull;
		Datum		v = SPI_getbinval(tt->vals[i], tt->tupdesc, 7, &isnull);

		if (isnull)
			continue;
		tot[n] = v;
		bid[n] = SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull);
		key[n] = CStringGetTextDatum(SPI_getvalue(tt->vals[i], tt->tupdesc, 2));
		n++;
	}
	if (n == 0)
		return;
	if (plan == NULL)
	{
		Oid			t[3] = {INT4ARRAYOID, TEXTARRAYOID, NUMERICARRAYOID};

		plan = shipsync_prepare_saved("SELECT shipsync._quote_totals_unfit($1, $2, $3)", 3, t);
	}
	args[0] = shipsync_make_array(bid, NULL, n, INT4OID);
	args[1] = shipsync_make_array(key, NULL, n, TEXTOID);
	args[2] = shipsync_make_array(tot, NULL, n, NUMERICOID);
	if (SPI_execute_plan(plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "ticketing the quote totals the order rows cannot hold failed");
}

/*
 * Run _store_fees() with the plans its batch wants, as a function's SET
 * clause would.  Pushes, pulls and create answers are small batches:
 * generic plans, made once per session (planning its statements anew cost
 * more than running them on a hundred lines).  A statement is a big one:
 * custom plans, made for its sizes (a generic plan's guesses joined
 * 100,000 lines row by row, for minutes), and the memory to hash its lines
 * and orders rather than sort them on disk.  Merge joins are off for it:
 * the planner cannot see how many distinct orders a statement's arrays
 * hold (it assumes 10,000), and for 50,000 it sorted the provider's whole
 * fee_line by order to merge where hashing the orders and scanning once
 * was a fraction of the time (docs/fees.md, "Locks and figures").
 */
static int
store_execute(Datum *params, const char *nulls, bool bulk)
{
	int			nest = NewGUCNestLevel();
	int			rc;

	(void) set_config_option("plan_cache_mode",
							 bulk ? "force_custom_plan" : "force_generic_plan",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (bulk)
	{
		(void) set_config_option("work_mem", "65536", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
		(void) set_config_option("enable_mergejoin", "off", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	}
	rc = SPI_execute_plan(store_plan, params, nulls, false, 0);
	AtEOXact_GUC(true, nest);
	return rc;
}

/*
 * Take the provider's fee lines whole for the transaction, as a statement
 * does (_lock_fees() with whole): before an import reads which statement
 * it supersedes, so that two imports of one period follow each other.
 */
void
fees_lock_provider(int32 provider_id)
{
	DirectFunctionCall2(pg_advisory_xact_lock_int4,
						Int32GetDatum(FEE_LOCK_PROVIDER), Int32GetDatum(provider_id));
}

/*
 * Store a checked batch: _store_fees() in one statement, then the totals
 * onto the order rows.  src is create, push, pull or statement; stmt and
 * replaces are 0 outside statements, held (the waybills of a statement's
 * skipped lines, a NULL among them for one not read) NULL.  SPI must be
 * connected.
 */
void
fees_store(FeeBatch *b, const char *src, int64 stmt, int64 replaces, ArrayType *held,
		   const char *who, FeeSummary *sum)
{
	Datum		params[5 + NCOLS];
	char		nulls[5 + NCOLS];
	SPITupleTable *tt;
	uint64		nrows;

	if (store_plan == NULL)
	{
		Oid			t[5 + NCOLS] = {TEXTOID, INT8OID, INT8OID, TEXTOID,
			INT4ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
			NUMERICARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		NUMERICARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID, TEXTARRAYOID};

		store_plan = shipsync_prepare_saved(
			"SELECT kind, n, binding_id, order_key, fee_total FROM shipsync._store_fees("
			"$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
			5 + NCOLS, t);
	}
	memset(nulls, ' ', sizeof(nulls));
	params[0] = CStringGetTextDatum(src);
	params[1] = Int64GetDatum(stmt);
	nulls[1] = stmt ? ' ' : 'n';
	params[2] = Int64GetDatum(replaces);
	nulls[2] = replaces ? ' ' : 'n';
	params[3] = CStringGetTextDatum(who);
	for (int c = 0; c < NCOLS; c++)
		params[4 + c] = batch_array(b, c);
	params[4 + NCOLS] = PointerGetDatum(held);
	nulls[4 + NCOLS] = held ? ' ' : 'n';

	if (store_execute(params, nulls, stmt != 0) != SPI_OK_SELECT)
		elog(ERROR, "storing fee lines failed");
	tt = SPI_tuptable;
	nrows = SPI_processed;
	for (uint64 i = 0; i < nrows; i++)
	{
		bool		isnull;
		char	   *kind = SPI_getvalue(tt->vals[i], tt->tupdesc, 1);
		int64		v = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &isnull));

		if (isnull)
			continue;
		if (strcmp(kind, "new") == 0)
			sum->n_new += v;
		else if (strcmp(kind, "revised") == 0)
			sum->n_revised += v;
		else if (strcmp(kind, "duplicate") == 0)
			sum->n_duplicate += v;
		else if (strcmp(kind, "unmatched") == 0)
			sum->n_unmatched += v;
		else if (strcmp(kind, "matched") == 0)
			sum->n_matched += v;
		else if (strcmp(kind, "withdrawn") == 0)
			sum->n_withdrawn += v;
	}
	sum->n_lines += b->n;
	sum->n_orders += fees_write_totals(tt, nrows);
}

/*
 * The answer of ingest_fees() and import_statement(): the provider, the
 * summary and then more (JSON members, each after ", "), as jsonb in the
 * caller's memory context cxt.  Finishes SPI.
 */
Datum
fees_answer(MemoryContext cxt, TrackProvider *p, FeeSummary *sum, const char *more)
{
	StringInfoData out;

	MemoryContextSwitchTo(cxt);
	initStringInfo(&out);
	appendStringInfoString(&out, "{\"provider\": ");
	escape_json(&out, p->name);
	appendStringInfo(&out, ", \"lines\": " INT64_FORMAT ", \"new\": " INT64_FORMAT
					 ", \"revised\": " INT64_FORMAT ", \"duplicate\": " INT64_FORMAT
					 ", \"unmatched\": " INT64_FORMAT ", \"matched\": " INT64_FORMAT
					 ", \"orders_changed\": " INT64_FORMAT "%s}",
					 sum->n_lines, sum->n_new, sum->n_revised, sum->n_duplicate,
					 sum->n_unmatched, sum->n_matched, sum->n_orders, more ? more : "");
	SPI_finish();
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(out.data));
}

/* ---------- pushes ---------- */

/*
 * shipsync.ingest_fees(provider text, body text, headers jsonb)
 */
Datum
shipsync_ingest_fees(PG_FUNCTION_ARGS)
{
	char	   *pname;
	text	   *body_t;
	Jsonb	   *headers = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	TrackProvider *p;
	char	   *payload;
	size_t		plen;
	FeeContext *c;
	FeeBatch   *b;
	FeeSummary	sum = {0};
	FeeProblem	pr;
	int			line;
	const char *reply;
	MemoryContext cxt = CurrentMemoryContext;

	body_t = shipsync_push_args(fcinfo, "provider", "fee push for provider",
								"Pass the request body exactly as received.", &pname);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	p = provider_lookup(pname);
	if (!tracking_verify_push(p, "fee", headers, VARDATA_ANY(body_t), VARSIZE_ANY_EXHDR(body_t),
							&payload, &plen))
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("fee push for provider \"%s\" is not a %s fee payload", p->name, p->dialect),
				 errdetail("The form has no field param."),
				 errhint("See docs/fees.md for the payload of each dialect.")));

	c = fees_context(p);
	b = fees_batch_create();
	if (!fees_read_json(c, b, fees_parse_json(payload, plen, "fee push", p),
						fees_map_load(p->profile, "fee"), "fee push", NULL, NULL, &line, &pr))
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("fee push for provider \"%s\" has an invalid line", p->name),
				 errdetail("Fee %d, field %s: %s.", line, fee_field_names[pr.field], pr.message),
				 errhint("Nothing of this push was stored; see docs/fees.md for the fields of a fee line.")));
	fees_store(b, "push", 0, 0, NULL, GetUserNameFromId(GetSessionUserId(), false), &sum);
	reply = tracking_reply(p);
	PG_RETURN_DATUM(fees_answer(cxt, p, &sum, reply ? psprintf(", \"reply\": %s", reply) : NULL));
}

/* ---------- pulls ---------- */

/*
 * Store the fee lines of a pulled answer's document as source pull; an
 * unreadable line is an ERROR.  Returns how many lines were new or revised.
 */
static int64
store_pulled(TrackProvider *p, Jsonb *doc, const char *what)
{
	FeeContext *c = fees_context(p);
	FeeBatch   *b = fees_batch_create();
	FeeSummary	sum = {0};
	FeeProblem	pr;
	int			line;

	if (!fees_read_json(c, b, doc, fees_map_load(p->profile, "fee"), what, NULL, NULL,
						&line, &pr))
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("fees pulled from provider \"%s\" have an invalid line", p->name),
				 errdetail("Fee %d, field %s: %s.", line, fee_field_names[pr.field], pr.message)));
	fees_store(b, "pull", 0, 0, NULL, "dispatcher", &sum);
	return sum.n_new + sum.n_revised;
}

/*
 * Apply the answer of a fee pull of one shipment, like a push without a
 * signature: the dispatcher asked for it over its own connection.  body
 * is the generic contract's {"fees": [...]}, or SF's msgData after
 * feepull.c unwrapped it.  SPI must be connected, in a transaction; a
 * body that cannot be read is an ERROR, which the caller isolates.
 * Returns how many lines were new or revised.
 */
int64
fees_apply_pulled(const char *provider_name, const char *body, size_t len)
{
	TrackProvider *p = provider_lookup(provider_name);

	return store_pulled(p, fees_parse_json(body, len, "fee pull", p), "fee pull");
}

/*
 * Apply SF Express's answer to EXP_RECE_QUERY_SFWAYBILL: the fee list of
 * its msgData (inside apiResultData, a JSON string as SF sends it), read
 * through the profile's fee map and stored as a pull.  A business answer
 * without fees (8148: none for this waybill yet; 8151: no monthly card
 * bound) returns -1 with its code in *code; a gateway error or another
 * code is an ERROR.  SPI must be connected.
 */
int64
fees_apply_sf_answer(const char *provider_name, const char *body, size_t len, char **code)
{
	TrackProvider *p = provider_lookup(provider_name);
	Jsonb	   *doc = fees_parse_json(body, len, "fee query answer", p);
	JsonbValue	v;
	bool		container;
	char	   *api = NULL;
	char	   *err = NULL;

	*code = NULL;
	if (json_path(&doc->root, "apiResultCode", &v))
		api = json_text(&v, &container);
	if (api == NULL || strcmp(api, "A1000") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("SF Express answered the fee query with apiResultCode %s", api ? api : "(none)")));
	if (!json_path(&doc->root, "apiResultData.success", &v) || v.type != jbvBool || !v.val.boolean)
	{
		if (json_path(&doc->root, "apiResultData.errorCode", &v))
			err = json_text(&v, &container);
		if (err && (strcmp(err, "8148") == 0 || strcmp(err, "8151") == 0))
		{
			*code = err;
			return -1;
		}
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("SF Express answered the fee query with errorCode %s", err ? err : "(none)")));
	}
	if (!json_path(&doc->root, "apiResultData.msgData", &v) || v.type != jbvBinary)
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("SF Express's answer to the fee query has no msgData")));
	return store_pulled(p, JsonbValueToJsonb(&v), "fee query answer");
}
