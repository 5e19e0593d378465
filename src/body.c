/*-------------------------------------------------------------------------
 *
 * body.c
 *		The generic body of an order row, {"order_ref" : key, "order" : row},
 *		printed byte for byte as json_build_object() and row_to_json() print it.
 *
 * Every dialect starts from this body: the generic one sends it, the
 * others map it (mapping.c).  Version 0.1 had the binding's render
 * statement print it, json_build_object('order_ref', key, 'order',
 * row_to_json(t)), and PostgreSQL looks each column's type up again for
 * each row printed that way: its base type, its category, its output
 * function, a cast to json (about a thousand CPU instructions a column;
 * for the benchmark's ten columns and the object around them, 26 thousand
 * an order of the dispatcher's 275).  Here the lookups are made once per
 * batch, for the row type the batch was read with (BodyFormat), and each
 * row is printed with them.
 *
 * The output must not change: carriers, request digests and reconciliation
 * see these bytes.  So each column is classified as PostgreSQL 15's
 * json_categorize_type() does (through domains to the base type: booleans,
 * numbers, dates and timestamps, json and jsonb, arrays, composites, a
 * user-defined type with an explicit cast to json, anything else) and
 * printed as its datum_to_json() prints that class: numbers bare when
 * they are valid JSON numbers, dates and timestamps in ISO 8601
 * (JsonEncodeDateTime()), json as it is, everything else as a JSON string
 * of its output (escape_json()).  Arrays and composites are printed by
 * array_to_json() and row_to_json() themselves, which is what
 * datum_to_json() does for them.  Regress test mapping compares the two
 * on a table of every such class.
 *
 * The caller prints as the table's owner, as the render statement ran: a
 * cast function is the owner's code.  Output functions read settings
 * (TimeZone, extra_float_digits): the caller pins them
 * (shipsync_body_settings()), so that render_request() in a user's session
 * prints what the dispatcher sends.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "access/transam.h"
#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "fmgr.h"
#include "parser/parse_coerce.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/typcache.h"

#include "pg_shipsync.h"

/* How a column's values print: PostgreSQL's JSON type categories */
typedef enum BodyKind
{
	BODY_BOOL,
	BODY_NUMBER,				/* bare when a valid JSON number */
	BODY_DATE,
	BODY_TIMESTAMP,
	BODY_TIMESTAMPTZ,
	BODY_JSON,					/* json or jsonb: its output as it is */
	BODY_ARRAY,					/* array_to_json() */
	BODY_COMPOSITE,				/* row_to_json() */
	BODY_CAST,					/* the type's cast to json */
	BODY_STRING					/* its output, as a JSON string */
} BodyKind;

typedef struct BodyColumn
{
	bool		dropped;
	BodyKind	kind;
	char	   *label;			/* ',' but for the first, "name", ':' */
	FmgrInfo	fn;				/* output or cast function, when it has one */
} BodyColumn;

struct BodyFormat
{
	Oid			typid;
	int32		typmod;
	TupleDesc	desc;
	Datum	   *values;
	bool	   *nulls;
	BodyColumn	cols[FLEXIBLE_ARRAY_MEMBER];
};

/*
 * The class of values of type typid and the function that prints them,
 * as json_categorize_type() decides them.
 */
static void
body_classify(Oid typid, BodyColumn *col, MemoryContext cxt)
{
	Oid			base = getBaseType(typid);
	Oid			fn = InvalidOid;
	bool		varlena;

	switch (base)
	{
		case BOOLOID:
			col->kind = BODY_BOOL;
			break;
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case FLOAT4OID:
		case FLOAT8OID:
		case NUMERICOID:
			col->kind = BODY_NUMBER;
			getTypeOutputInfo(base, &fn, &varlena);
			break;
		case DATEOID:
			col->kind = BODY_DATE;
			break;
		case TIMESTAMPOID:
			col->kind = BODY_TIMESTAMP;
			break;
		case TIMESTAMPTZOID:
			col->kind = BODY_TIMESTAMPTZ;
			break;
		case JSONOID:
		case JSONBOID:
			col->kind = BODY_JSON;
			getTypeOutputInfo(base, &fn, &varlena);
			break;
		default:
			if (OidIsValid(get_element_type(base)) || base == ANYARRAYOID ||
				base == ANYCOMPATIBLEARRAYOID || base == RECORDARRAYOID)
				col->kind = BODY_ARRAY;
			else if (type_is_rowtype(base))
				col->kind = BODY_COMPOSITE;
			else
			{
				Oid			cast = InvalidOid;

				/* only a type of a user's may have a cast to json that counts */
				if (base >= FirstNormalObjectId &&
					find_coercion_pathway(JSONOID, base, COERCION_EXPLICIT, &cast) ==
					COERCION_PATH_FUNC && OidIsValid(cast))
				{
					col->kind = BODY_CAST;
					fn = cast;
				}
				else
				{
					col->kind = BODY_STRING;
					getTypeOutputInfo(base, &fn, &varlena);
				}
			}
			break;
	}
	if (OidIsValid(fn))
		fmgr_info_cxt(fn, &col->fn, cxt);
}

/* The format of rows of type typid, typmod: the lookups, made once */
static BodyFormat *
body_prepare(Oid typid, int32 typmod, MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	TupleDesc	desc = lookup_rowtype_tupdesc(typid, typmod);
	BodyFormat *f = palloc0(offsetof(BodyFormat, cols) + sizeof(BodyColumn) * Max(desc->natts, 1));
	bool		first = true;

	f->typid = typid;
	f->typmod = typmod;
	f->desc = CreateTupleDescCopyConstr(desc);	/* with missing values */
	ReleaseTupleDesc(desc);
	f->values = palloc(sizeof(Datum) * Max(f->desc->natts, 1));
	f->nulls = palloc(sizeof(bool) * Max(f->desc->natts, 1));
	for (int i = 0; i < f->desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(f->desc, i);
		BodyColumn *col = &f->cols[i];
		StringInfoData label;

		col->dropped = att->attisdropped;
		if (col->dropped)
			continue;
		initStringInfo(&label);
		if (!first)
			appendStringInfoChar(&label, ',');
		first = false;
		escape_json(&label, NameStr(att->attname));
		appendStringInfoChar(&label, ':');
		col->label = label.data;
		body_classify(att->atttypid, col, cxt);
	}
	MemoryContextSwitchTo(old);
	return f;
}

/* A date or timestamp of type typid, as JSON prints it: ISO 8601, quoted */
static void
body_datetime(StringInfo out, Datum value, Oid typid)
{
	char		buf[MAXDATELEN + 1];

	JsonEncodeDateTime(buf, value, typid, NULL);
	appendStringInfoChar(out, '"');
	appendStringInfoString(out, buf);
	appendStringInfoChar(out, '"');
}

/* A text datum (a json value, a cast's result) appended as it is */
static void
body_append_text(StringInfo out, Datum t)
{
	text	   *txt = DatumGetTextPP(t);

	appendBinaryStringInfo(out, VARDATA_ANY(txt), VARSIZE_ANY_EXHDR(txt));
}

/* One value of column col, not NULL */
static void
body_value(StringInfo out, BodyColumn *col, Datum value)
{
	char	   *s;

	switch (col->kind)
	{
		case BODY_BOOL:
			appendStringInfoString(out, DatumGetBool(value) ? "true" : "false");
			break;
		case BODY_NUMBER:
			s = OutputFunctionCall(&col->fn, value);
			if (IsValidJsonNumber(s, strlen(s)))
				appendStringInfoString(out, s);
			else
				escape_json(out, s);	/* NaN, Infinity */
			pfree(s);
			break;
		case BODY_DATE:
			body_datetime(out, value, DATEOID);
			break;
		case BODY_TIMESTAMP:
			body_datetime(out, value, TIMESTAMPOID);
			break;
		case BODY_TIMESTAMPTZ:
			body_datetime(out, value, TIMESTAMPTZOID);
			break;
		case BODY_JSON:
			s = OutputFunctionCall(&col->fn, value);
			appendStringInfoString(out, s);
			pfree(s);
			break;
		case BODY_ARRAY:
			body_append_text(out, DirectFunctionCall1(array_to_json, value));
			break;
		case BODY_COMPOSITE:
			body_append_text(out, DirectFunctionCall1(row_to_json, value));
			break;
		case BODY_CAST:
			body_append_text(out, FunctionCall1(&col->fn, value));
			break;
		case BODY_STRING:
			s = OutputFunctionCall(&col->fn, value);
			escape_json(out, s);
			pfree(s);
			break;
	}
}

/*
 * The generic body of the order row (a composite datum, or row_null when
 * the order is gone) whose key is key, palloc'd in the current memory
 * context.  *format keeps the lookups across the rows of a batch, in cxt;
 * NULL at the first row.  The caller runs as the order table's owner.
 *
 * NULL when the body would be longer than max_bytes (at most 128 MB,
 * shipsync.max_request_bytes): each value's size is looked at before it
 * is printed, and the body's after.  A value escaped grows at most six
 * times, so the body never nears the 1 GB a palloc() may take.  Printed
 * whole, a text column of 180 MB of control characters failed with "out
 * of memory" after a minute or more of the dispatcher's time and 1.8 GB
 * of its memory, at every attempt, and the render failure failed every
 * order of its table claimed with it.
 */
char *
shipsync_order_body(BodyFormat **format, const char *key, Datum row, bool row_null,
					MemoryContext cxt, size_t max_bytes)
{
	StringInfoData out;

	initStringInfo(&out);
	appendStringInfoString(&out, "{\"order_ref\" : ");
	escape_json(&out, key);
	appendStringInfoString(&out, ", \"order\" : ");
	if (row_null)
		appendStringInfoString(&out, "null");
	else
	{
		HeapTupleHeader rec = DatumGetHeapTupleHeader(row);
		HeapTupleData tup;
		BodyFormat *f = *format;

		if (f == NULL || f->typid != HeapTupleHeaderGetTypeId(rec) ||
			f->typmod != HeapTupleHeaderGetTypMod(rec))
			*format = f = body_prepare(HeapTupleHeaderGetTypeId(rec),
									   HeapTupleHeaderGetTypMod(rec), cxt);
		tup.t_len = HeapTupleHeaderGetDatumLength(rec);
		ItemPointerSetInvalid(&tup.t_self);
		tup.t_tableOid = InvalidOid;
		tup.t_data = rec;
		heap_deform_tuple(&tup, f->desc, f->values, f->nulls);
		appendStringInfoChar(&out, '{');
		for (int i = 0; i < f->desc->natts; i++)
		{
			if (f->cols[i].dropped)
				continue;
			appendStringInfoString(&out, f->cols[i].label);
			if (f->nulls[i])
				appendStringInfoString(&out, "null");
			else
			{
				/* a value's size before it is printed, the body's after */
				bool		too_big = (TupleDescAttr(f->desc, i)->attlen == -1 &&
									   (size_t) out.len + toast_raw_datum_size(f->values[i]) > max_bytes);

				if (!too_big)
				{
					body_value(&out, &f->cols[i], f->values[i]);
					too_big = (size_t) out.len > max_bytes;
				}
				if (too_big)
				{
					pfree(out.data);
					return NULL;
				}
			}
		}
		appendStringInfoChar(&out, '}');
	}
	appendStringInfoChar(&out, '}');
	return out.data;
}
