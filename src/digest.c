/*-------------------------------------------------------------------------
 *
 * digest.c
 *		shipsync._row_digest(record, text[]): a 64-bit digest of an order
 *		row, its write-back columns left out.
 *
 * When a create or update is rendered, the digest of the order row it is
 * rendered from is stored with the intent (the binding's render statement
 * computes it), and copied onto the shipment when the carrier accepts the
 * request.  Reconciliation computes the digest of the row as it is now: a
 * difference means the order changed after it was sent
 * (address_changed_after_send).  The write-back columns are left out: what
 * the dispatcher writes back is never a change of the order.
 *
 * The digest must not move unless the row's data moves, and must cost little
 * for a million rows:
 *	- each value is hashed in binary form by its type's extended hash
 *	  function (found through the type cache, which knows arrays, records
 *	  and ranges), so it depends on no setting such as TimeZone or
 *	  DateStyle; money, which has none, as the int8 of minor units it holds
 *	  (its output follows lc_monetary: a database's ALTER DATABASE ... SET
 *	  lc_monetary made every order with a money column "changed after it
 *	  was sent"); another type without one (a point, a row type holding
 *	  json) is hashed through its output function, printed as bodies are
 *	  (shipsync_body_settings(): extra_float_digits 1, DateStyle ISO,
 *	  TimeZone UTC, ...) whatever the session's settings;
 *	- a column is hashed with its name and only when it is not NULL, so that
 *	  adding a nullable column to the table changes no digest; renaming or
 *	  dropping a column, or changing its type, does;
 *	- the values are combined with hash_combine64, in column order.
 * Equal values of some types hash alike though they print differently
 * (numeric 1.0 and 1.00): the digest tells data changes, not formatting.
 *
 * The per-column lookups are made once per row type and skip list: by the
 * render of a batch (outbox.c computes the digest of the rows it reads, so
 * that no function of ours runs as the table's owner), or per calling
 * expression in SQL (fn_extra).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/typcache.h"

#include "pg_shipsync.h"

PG_FUNCTION_INFO_V1(shipsync_row_digest);

/* How one column of the row type is hashed */
typedef struct DigestColumn
{
	bool		skip;			/* dropped, or a write-back column */
	bool		binary;			/* by the type's extended hash function */
	uint64		name_hash;
	Oid			collation;
	FmgrInfo	proc;			/* extended hash, or output function */
} DigestColumn;

struct DigestCache
{
	Oid			typid;
	int32		typmod;
	ArrayType  *skip;			/* the skip list the cache was made for */
	bool		printed;		/* a column is hashed through its output */
	int			natts;
	DigestColumn cols[FLEXIBLE_ARRAY_MEMBER];
};

/* Is name one of the n strings of skip? */
static bool
digest_skipped(const char *name, Datum *skip, bool *nulls, int n)
{
	for (int i = 0; i < n; i++)
		if (!nulls[i] && strcmp(name, TextDatumGetCString(skip[i])) == 0)
			return true;
	return false;
}

/*
 * How to hash the rows of a row type, skip list left out; made in cxt.
 */
DigestCache *
shipsync_digest_prepare(Oid typid, int32 typmod, ArrayType *skip, MemoryContext cxt)
{
	DigestCache *c;
	TupleDesc	desc;
	Datum	   *names = NULL;
	bool	   *nulls = NULL;
	int			nnames = 0;

	if (ARR_NDIM(skip) > 1 || ARR_ELEMTYPE(skip) != TEXTOID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the columns to leave out must be a one-dimensional text array")));
	desc = lookup_rowtype_tupdesc(typid, typmod);
	c = MemoryContextAllocZero(cxt, offsetof(DigestCache, cols) +
							   sizeof(DigestColumn) * Max(desc->natts, 1));
	c->typid = typid;
	c->typmod = typmod;
	c->natts = desc->natts;
	c->skip = MemoryContextAlloc(cxt, VARSIZE(skip));
	memcpy(c->skip, skip, VARSIZE(skip));
	deconstruct_array(skip, TEXTOID, -1, false, TYPALIGN_INT, &names, &nulls, &nnames);

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		DigestColumn *col = &c->cols[i];
		TypeCacheEntry *tce;
		bool		money;

		col->skip = att->attisdropped ||
			digest_skipped(NameStr(att->attname), names, nulls, nnames);
		if (col->skip)
			continue;
		col->name_hash = hash_bytes_extended((const unsigned char *) NameStr(att->attname),
											 strlen(NameStr(att->attname)), 0);
		col->collation = att->attcollation;
		money = getBaseType(att->atttypid) == CASHOID;
		tce = lookup_type_cache(money ? INT8OID : att->atttypid,
								TYPECACHE_HASH_EXTENDED_PROC_FINFO);
		if (OidIsValid(tce->hash_extended_proc_finfo.fn_oid))
		{
			col->binary = true;
			fmgr_info_copy(&col->proc, &tce->hash_extended_proc_finfo, cxt);
		}
		else
		{
			Oid			out;
			bool		varlena;

			getTypeOutputInfo(att->atttypid, &out, &varlena);
			fmgr_info_cxt(out, &col->proc, cxt);
			c->printed = true;
		}
	}
	ReleaseTupleDesc(desc);
	return c;
}

/* Whether cache c was made for this row type and skip list */
bool
shipsync_digest_fits(DigestCache *c, Oid typid, int32 typmod, ArrayType *skip)
{
	return c != NULL && c->typid == typid && c->typmod == typmod &&
		VARSIZE(c->skip) == VARSIZE(skip) &&
		memcmp(c->skip, skip, VARSIZE(skip)) == 0;
}

/* The digest of one row of the cache's row type */
int64
shipsync_digest_row(DigestCache *c, HeapTupleHeader rec)
{
	HeapTupleData tuple;
	Datum	   *values;
	bool	   *isnull;
	uint64		h = UINT64CONST(0x5368697053796e63);	/* "ShipSync" */
	TupleDesc	desc;
	int			nest = -1;

	tuple.t_len = HeapTupleHeaderGetDatumLength(rec);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = rec;
	values = palloc(sizeof(Datum) * Max(c->natts, 1));
	isnull = palloc(sizeof(bool) * Max(c->natts, 1));
	desc = lookup_rowtype_tupdesc(c->typid, c->typmod);
	heap_deform_tuple(&tuple, desc, values, isnull);
	ReleaseTupleDesc(desc);

	/*
	 * A value hashed through its output is printed as the dispatcher prints
	 * bodies, whatever the session's settings: the dispatcher digests what
	 * it renders with those settings, reconciliation (its worker, with the
	 * database's settings, or a caller's session) digests the row again.
	 * A point printed with a database's extra_float_digits of 0 was
	 * another digest than the one sent: every such order was
	 * address_changed_after_send.
	 */
	if (c->printed)
	{
		nest = NewGUCNestLevel();
		shipsync_body_settings();
	}
	for (int i = 0; i < c->natts; i++)
	{
		DigestColumn *col = &c->cols[i];
		uint64		v;

		if (col->skip || isnull[i])
			continue;
		if (col->binary)
			v = DatumGetUInt64(FunctionCall2Coll(&col->proc, col->collation,
												 values[i], UInt64GetDatum(0)));
		else
		{
			char	   *s = OutputFunctionCall(&col->proc, values[i]);

			v = hash_bytes_extended((const unsigned char *) s, strlen(s), 0);
			pfree(s);
		}
		h = hash_combine64(h, col->name_hash);
		h = hash_combine64(h, v);
	}
	if (nest >= 0)
		AtEOXact_GUC(true, nest);
	pfree(values);
	pfree(isnull);
	return (int64) h;
}

/*
 * shipsync._row_digest(r record, skip text[]) returns bigint: strict, so a
 * missing row (a LEFT JOIN that found none) has no digest.  The cache lives
 * in fn_extra for the calling expression.
 */
Datum
shipsync_row_digest(PG_FUNCTION_ARGS)
{
	HeapTupleHeader rec = PG_GETARG_HEAPTUPLEHEADER(0);
	ArrayType  *skip = PG_GETARG_ARRAYTYPE_P(1);
	DigestCache *c = (DigestCache *) fcinfo->flinfo->fn_extra;
	Oid			typid = HeapTupleHeaderGetTypeId(rec);
	int32		typmod = HeapTupleHeaderGetTypMod(rec);

	if (!shipsync_digest_fits(c, typid, typmod, skip))
	{
		c = shipsync_digest_prepare(typid, typmod, skip, fcinfo->flinfo->fn_mcxt);
		fcinfo->flinfo->fn_extra = c;
	}
	PG_RETURN_INT64(shipsync_digest_row(c, rec));
}
