/*-------------------------------------------------------------------------
 *
 * crm.c
 *		CRM pushes come in: shipsync.ingest_crm() turns a push of a CRM
 *		source (简道云, Salesforce Outbound Messages, generic) into an
 *		INSERT, UPDATE or DELETE of the source's orders table.
 *
 * A push is taken as received, raw body, headers (matched
 * case-insensitively) and query parameters, and goes through the same
 * steps whatever its kind:
 *
 *	1. verify it: 简道云 signs SHA-1(nonce:body:secret:timestamp) into
 *	   X-JDY-Signature, nonce and timestamp being query parameters (and a
 *	   timestamp older than the source's dedup_ttl is a replay); a generic
 *	   source signs with Standard Webhooks (signature.c, as generic
 *	   tracking pushes); Salesforce does not sign, so the message's
 *	   OrganizationId must be the source's organization_id.  A failure is
 *	   a WARNING naming the source and the reason, never the secret, and
 *	   an ERROR with SQLSTATE SS401;
 *	2. split it into records: the "data" object of a 简道云 or generic
 *	   push with the operation its "op" or "type" names (a 简道云
 *	   data_recover, a record restored, is written as an update), or each
 *	   Notification's sObject of an Outbound Message (parsed by
 *	   PostgreSQL's xpath() in shipsync._salesforce_notifications, an
 *	   upsert each);
 *	3. drop a delivery seen within dedup_ttl (the X-JDY-DeliverId, the
 *	   webhook-id, each notification Id), recorded in shipsync.crm_delivery
 *	   in the same transaction: a concurrent copy waits on its key and then
 *	   counts as a duplicate.  简道云 does not sign its X-JDY-DeliverId, so
 *	   a 简道云 push is also known by its signature (over nonce, body and
 *	   timestamp), kept as long as its timestamp is taken: a captured push
 *	   sent again under another DeliverId is a duplicate too;
 *	4. read each record through the crm_in rows of the source's profile
 *	   (mapping.c, the same paths and transforms as every field map): a
 *	   required field missing, a value a transform cannot read, or no value
 *	   for the key column is SS400;
 *	5. write the row as the table's owner (a security-restricted
 *	   operation with a GUC nest level of its own, rolled back after it,
 *	   the table's deferrable constraints set IMMEDIATE for the push's
 *	   writes: see security.c), its values converted by
 *	   jsonb_populate_record: a create
 *	   inserts unless the key exists (an older create arriving late changes
 *	   nothing), an update or an Outbound Message upserts the mapped
 *	   columns only when they differ, a remove deletes.  The capture
 *	   trigger sees an ordinary write and ships it.  A value the column
 *	   cannot take (22xxx), a constraint it breaks (23xxx) or a value too
 *	   long for one of its indexes (54000) is SS400.
 *
 * Everything happens in the caller's transaction: one failing record
 * fails the whole push.  ingest_crm() runs as the extension's owner
 * (SECURITY DEFINER) because it opens the source's secrets: encrypted in
 * shipsync.secret under the source's name (secret.c), the current one and,
 * during a rotation, the previous one, either of which signs a good push
 * (as for tracking pushes).  The compiled map and the parsed JSON are
 * malloc'd (mapping.c, json.c) and freed by a reset callback of the
 * call's memory context, so an error leaks nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/value.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

PG_FUNCTION_INFO_V1(shipsync_ingest_crm);

/* What one record of a push does to the table */
typedef enum CrmOp
{
	CRM_CREATE,					/* insert; an existing key is left alone */
	CRM_UPSERT,					/* update the mapped columns, or insert */
	CRM_DELETE,
	CRM_IGNORE					/* acknowledged, nothing written */
} CrmOp;

static const char *const crm_op_names[] = {"create", "update", "delete", "ignore"};

/* An operation a JSON push names, and what it does; lists end with NULL */
typedef struct CrmOpName
{
	const char *name;
	CrmOp		op;
	bool		restore;		/* a record brought back after its remove */
} CrmOpName;

typedef struct CrmSource
{
	int32		id;
	char	   *name;
	char	   *kind;
	char	   *tbl;			/* the table, quoted and qualified as needed */
	Oid			relid;
	Oid			owner;
	char	   *key_column;
	char	   *profile;
	int64		ttl_s;
	char	   *organization_id;
	char	   *sobject_type;
	char	   *version_column; /* an update must not go back on it, or NULL */
	char	   *options;		/* JSON text, for option: sources */
	char	   *secret;			/* webhook_secret, opened when verifying */
	char	   *previous_secret;	/* previous_webhook_secret, in a rotation */
} CrmSource;

/* One record of a push, read but not yet written */
typedef struct CrmRecord
{
	CrmOp		op;
	bool		restore;		/* 简道云 data_recover: its remove is undone */
	char	   *delivery_id;
	int64		keep_s;			/* how long delivery_id is remembered */
	char	   *signed_id;		/* a signed key of the push, or NULL */
	ShipJson   *doc;			/* the record: malloc'd, freed by the owner */
} CrmRecord;

/* malloc'd things of one call, freed when its memory context goes */
typedef struct CrmMallocs
{
	ShipMap    *map;
	ShipJson   *options;
	ShipJson   *docs[64];
	int			ndocs;
	ShipJson  **more;			/* beyond 64 records, palloc'd array */
	int			nmore;
	MemoryContextCallback cb;
} CrmMallocs;

typedef struct CrmCounts
{
	int64		records;
	int64		inserted;
	int64		updated;
	int64		deleted;
	int64		unchanged;
	int64		duplicate;
	int64		ignored;
} CrmCounts;

static void
crm_free_mallocs(void *arg)
{
	CrmMallocs *m = (CrmMallocs *) arg;

	shipsync_map_free(m->map);
	shipsync_json_free(m->options);
	for (int i = 0; i < m->ndocs; i++)
		shipsync_json_free(m->docs[i]);
	for (int i = 0; i < m->nmore; i++)
		shipsync_json_free(m->more[i]);
	m->map = NULL;
	m->options = NULL;
	m->ndocs = m->nmore = 0;
}

/* Hand a parsed document to the call's cleanup */
static ShipJson *
crm_keep(CrmMallocs *m, ShipJson *doc)
{
	if (doc == NULL)
		return NULL;
	if (m->ndocs < (int) lengthof(m->docs))
		m->docs[m->ndocs++] = doc;
	else
	{
		m->more = m->more ? repalloc(m->more, sizeof(ShipJson *) * (m->nmore + 1)) :
			palloc(sizeof(ShipJson *));
		m->more[m->nmore++] = doc;
	}
	return doc;
}

/* Look a source up by name; SPI must be connected. */
static CrmSource *
crm_load_source(const char *name)
{
	static SPIPlanPtr plan = NULL;
	Datum		arg = CStringGetTextDatum(name);
	HeapTuple	tup;
	TupleDesc	desc;
	CrmSource  *s;
	bool		isnull;

	if (plan == NULL)
	{
		Oid			t[1] = {TEXTOID};

		plan = shipsync_prepare_saved(
			"SELECT s.crm_source_id, s.name, s.kind, s.tbl::text, c.relowner,"
			" s.key_column::text, s.profile,"
			" pg_catalog.date_part('epoch', s.dedup_ttl)::bigint,"
			" s.options->>'organization_id', s.options->>'sobject_type', s.options::text,"
			" s.tbl::oid, s.options->>'version_column'"
			" FROM shipsync.crm_source s"
			" LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) s.tbl"
			" WHERE s.name OPERATOR(pg_catalog.=) $1", 1, t);
	}
	if (SPI_execute_plan(plan, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "looking up a CRM source failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("CRM source \"%s\" does not exist", name),
				 errhint("See SELECT name FROM shipsync.crm_sources.")));
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	s = palloc0(sizeof(CrmSource));
	s->id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	s->name = SPI_getvalue(tup, desc, 2);
	s->kind = SPI_getvalue(tup, desc, 3);
	s->tbl = SPI_getvalue(tup, desc, 4);
	s->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 5, &isnull));
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the table of CRM source \"%s\" was dropped", s->name),
				 errhint("Drop the source with shipsync.drop_crm_source() and create it again.")));
	s->key_column = SPI_getvalue(tup, desc, 6);
	s->profile = SPI_getvalue(tup, desc, 7);
	s->ttl_s = DatumGetInt64(SPI_getbinval(tup, desc, 8, &isnull));
	s->organization_id = SPI_getvalue(tup, desc, 9);
	s->sobject_type = SPI_getvalue(tup, desc, 10);
	s->options = SPI_getvalue(tup, desc, 11);
	s->relid = DatumGetObjectId(SPI_getbinval(tup, desc, 12, &isnull));
	s->version_column = SPI_getvalue(tup, desc, 13);
	return s;
}

/* A WARNING for the log and SS401 for the caller; never a secret */
static void
crm_reject(CrmSource *s, const char *reason)
{
	ereport(WARNING,
			(errmsg("pg_shipsync: rejected a CRM push for source \"%s\": %s",
					s->name, reason)));
	ereport(ERROR,
			(errcode(ERRCODE_SHIPSYNC_BAD_SIGNATURE),
			 errmsg("CRM push for source \"%s\" failed its authentication", s->name),
			 errdetail("%c%s.", pg_toupper((unsigned char) reason[0]), reason + 1),
			 errhint("Check the source's secret (or organization_id), and that the body and query are passed exactly as received.")));
}

static void
crm_bad_payload(CrmSource *s, const char *what, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
			 errmsg("CRM push for source \"%s\" %s", s->name, what),
			 detail ? errdetail("%s", detail) : 0,
			 errhint("See docs/receiver.md for the payload of each kind.")));
}

/*
 * Open the source's secrets from shipsync.secret, stored under its name
 * (secret.c): webhook_secret and, during a rotation, previous_webhook_secret.
 * A source without either, or whose secret cannot be opened, takes no push.
 */
static void
crm_open_secrets(CrmSource *s)
{
	secret_open_webhook(s->name, "pushes of CRM source", &s->secret, &s->previous_secret);
	if (s->secret != NULL || s->previous_secret != NULL)
		return;
	ereport(WARNING,
			(errmsg("pg_shipsync: rejected a CRM push for source \"%s\": no secret is configured",
					s->name)));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("CRM source \"%s\" has no secret", s->name),
			 errdetail("Pushes are accepted only when their signature can be checked."),
			 errhint("Set its webhook_secret with shipsync.set_secret().")));
}

/* A signed push, as shipsync_verify_rotating() hands it to crm_check() */
typedef struct CrmPush
{
	CrmSource  *s;
	const char *body;
	size_t		len;
	Jsonb	   *headers;
	Jsonb	   *query;
} CrmPush;

/* Verify a push with one secret, as its source's kind signs.  A SigCheck. */
static SigResult
crm_check(const char *secret, void *arg, const char **reason)
{
	CrmPush    *push = (CrmPush *) arg;
	Jsonb	   *headers = push->headers;

	if (strcmp(push->s->kind, "jiandaoyun") == 0)
		return shipsync_verify_jiandaoyun(secret, shipsync_header_value(push->query, "nonce"),
										  shipsync_header_value(push->query, "timestamp"),
										  shipsync_header_value(headers, "x-jdy-signature"),
										  push->body, push->len, reason);
	return shipsync_verify_standard_webhooks(secret, shipsync_header_value(headers, "webhook-id"),
											 shipsync_header_value(headers, "webhook-timestamp"),
											 shipsync_header_value(headers, "webhook-signature"),
											 push->body, push->len, (long) time(NULL),
											 WEBHOOK_TOLERANCE_S, reason);
}

/*
 * Check a 简道云 or generic push's signature with the source's secret and,
 * during a rotation, the previous one, as tracking pushes are checked.
 * Returns only if it is good.
 */
static void
crm_verify(CrmSource *s, const char *body, size_t len, Jsonb *headers, Jsonb *query)
{
	CrmPush		push = {s, body, len, headers, query};
	const char *reason = NULL;

	crm_open_secrets(s);
	if (shipsync_verify_rotating(crm_check, &push, s->secret, s->previous_secret,
								 &reason) != SIG_OK)
		crm_reject(s, reason ? reason : "the signature does not match");
}

/* A top-level string member of doc, palloc'd, or NULL */
static char *
crm_member_string(ShipJson *doc, const char *name)
{
	MapSeg		seg = {0};
	MapPath		path = {&seg, 1};
	MapValue	v;
	char	   *out = NULL;

	seg.name = (char *) name;
	if (shipsync_json_get(doc, &path, &v) && v.type == MV_STRING)
		out = pstrdup(v.s);
	shipsync_value_free(&v);
	return out;
}

/*
 * 简道云 and generic pushes: one JSON object with the operation in member
 * opname and the record in member "data".  The operation's name maps to a
 * CrmOp through names[]; any other is ignored.
 */
static void
crm_read_json(CrmSource *s, CrmMallocs *m, const char *body, size_t len,
			  const char *opname, const CrmOpName *names,
			  const char *delivery_id, CrmRecord *rec)
{
	char		err[256];
	ShipJson   *doc;
	char	   *op;

	/*
	 * A string's \u0000 would be read as the end of a C string: a key
	 * "A\u0000B" would write order "A".  Refused, with lone surrogates and
	 * numbers out of numeric's range, as in a carrier's answer, and
	 * integers beyond 64 bits, which json-c reads as the nearest end of
	 * that range: ids 99999999999999999998 and 99999999999999999999 would
	 * both write order 18446744073709551615.
	 */
	if (!shipsync_check_push_text(body, len, err, sizeof(err)))
	{
		err[0] = pg_toupper((unsigned char) err[0]);
		crm_bad_payload(s, "holds a value that cannot be stored", psprintf("%s.", err));
	}
	doc = crm_keep(m, shipsync_json_parse(body, len, err, sizeof(err)));
	if (doc == NULL)
		crm_bad_payload(s, "is not JSON", err);
	op = crm_member_string(doc, opname);
	if (op == NULL)
		crm_bad_payload(s, psprintf("has no \"%s\"", opname),
						psprintf("A %s push is {\"%s\": ..., \"data\": {...}}.", s->kind, opname));
	rec->op = CRM_IGNORE;
	for (const CrmOpName *o = names; o->name != NULL; o++)
		if (strcmp(op, o->name) == 0)
		{
			rec->op = o->op;
			rec->restore = o->restore;
		}
	rec->delivery_id = pstrdup(delivery_id);
	rec->doc = crm_keep(m, shipsync_json_member_doc(doc, "data"));
	if (rec->op != CRM_IGNORE && !shipsync_json_is_object(rec->doc))
		crm_bad_payload(s, psprintf("has no \"data\" object for \"%s\"", op), NULL);
}

/* A 简道云 data push: returns its one record */
static int
crm_read_jiandaoyun(CrmSource *s, CrmMallocs *m, const char *body, size_t len,
					Jsonb *headers, Jsonb *query, CrmRecord **recs)
{
	/*
	 * data_recover restores a record from 简道云's recycle bin, whole: its
	 * order was deleted by the data_remove before, so it is written again
	 * as an update would (inserted, or updated if it is still there).
	 */
	static const CrmOpName ops[] = {
		{"data_create", CRM_CREATE, false}, {"data_update", CRM_UPSERT, false},
		{"data_recover", CRM_UPSERT, true}, {"data_remove", CRM_DELETE, false},
		{NULL, CRM_IGNORE, false}
	};
	char	   *ts = shipsync_header_value(query, "timestamp");
	char	   *delivery;
	long long	t;
	char	   *end;

	crm_verify(s, body, len, headers, query);
	/* signed, so a replay can only be of an old push: older than dedup_ttl */
	t = strtoll(ts, &end, 10);
	if (*end != '\0' || t < (long long) time(NULL) - s->ttl_s ||
		t > (long long) time(NULL) + WEBHOOK_TOLERANCE_S)
		crm_reject(s, "the timestamp is not a Unix time within dedup_ttl of now (replayed or clock skew)");
	delivery = shipsync_header_value(headers, "x-jdy-deliverid");
	if (delivery == NULL || delivery[0] == '\0')
		crm_bad_payload(s, "has no X-JDY-DeliverId header", NULL);
	*recs = palloc0(sizeof(CrmRecord));
	crm_read_json(s, m, body, len, "op", ops, delivery, *recs);
	/* verified: 40 hex digits, taken in either case */
	(*recs)->signed_id = psprintf("jdy-signature:%s",
								  shipsync_header_value(headers, "x-jdy-signature"));
	for (char *p = (*recs)->signed_id; *p; p++)
		*p = pg_ascii_tolower((unsigned char) *p);
	return 1;
}

/* A generic (Standard Webhooks) push: returns its one record */
static int
crm_read_generic(CrmSource *s, CrmMallocs *m, const char *body, size_t len,
				 Jsonb *headers, CrmRecord **recs)
{
	static const CrmOpName ops[] = {
		{"order.created", CRM_CREATE, false}, {"order.updated", CRM_UPSERT, false},
		{"order.deleted", CRM_DELETE, false}, {NULL, CRM_IGNORE, false}
	};
	char	   *id = shipsync_header_value(headers, "webhook-id");

	crm_verify(s, body, len, headers, NULL);
	*recs = palloc0(sizeof(CrmRecord));
	crm_read_json(s, m, body, len, "type", ops, id, *recs);

	/*
	 * The webhook-id is signed, and the signature taken while the
	 * webhook-timestamp is within WEBHOOK_TOLERANCE_S of now, either side:
	 * up to twice that after it came.  Forgotten sooner (a dedup_ttl of a
	 * few minutes), a push captured and sent again was taken again, an old
	 * update written over a newer one.
	 */
	(*recs)->keep_s = Max(s->ttl_s, 2 * WEBHOOK_TOLERANCE_S);
	return 1;
}

/*
 * Outbound Messages have 15- or 18-character organization ids; the first
 * 15 characters are the id, the rest a case-insensitive checksum.
 */
static bool
crm_same_org(const char *a, const char *b)
{
	size_t		la = strlen(a),
				lb = strlen(b);

	if (la == lb)
		return strcmp(a, b) == 0;
	return (la == 15 || la == 18) && (lb == 15 || lb == 18) && strncmp(a, b, 15) == 0;
}

/* A Salesforce Outbound Message: one upsert per notification */
static int
crm_read_salesforce(CrmSource *s, CrmMallocs *m, const char *body, size_t len,
					CrmRecord **recs)
{
	static SPIPlanPtr plan = NULL;
	Datum		arg = PointerGetDatum(cstring_to_text_with_len(body, len));
	SPITupleTable *tt;
	int			n;
	char		err[256];

	if (plan == NULL)
	{
		Oid			t[1] = {TEXTOID};

		plan = shipsync_prepare_saved(
			"SELECT organization_id, notification_id, sobject_type, record::text"
			" FROM shipsync._salesforce_notifications($1)", 1, t);
	}
	if (SPI_execute_plan(plan, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading an Outbound Message failed");
	tt = SPI_tuptable;
	n = (int) SPI_processed;
	*recs = palloc0(sizeof(CrmRecord) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		char	   *org = SPI_getvalue(tt->vals[i], tt->tupdesc, 1);
		char	   *type = SPI_getvalue(tt->vals[i], tt->tupdesc, 3);
		char	   *json = SPI_getvalue(tt->vals[i], tt->tupdesc, 4);

		if (!crm_same_org(org, s->organization_id))
			crm_reject(s, "the OrganizationId of the Outbound Message is not the source's organization_id");
		if (s->sobject_type && (type == NULL || strcmp(type, s->sobject_type) != 0))
			crm_bad_payload(s, "is not about the source's sObject type",
							psprintf("Notification %d holds an sObject of type %s; option sobject_type is %s.",
									 i + 1, type ? type : "(none)", s->sobject_type));
		(*recs)[i].op = CRM_UPSERT;
		(*recs)[i].delivery_id = SPI_getvalue(tt->vals[i], tt->tupdesc, 2);
		(*recs)[i].doc = crm_keep(m, shipsync_json_parse(json, strlen(json), err, sizeof(err)));
		if ((*recs)[i].doc == NULL)
			elog(ERROR, "the sObject of notification %d does not parse: %s", i + 1, err);
	}
	return n;
}

/* The crm_in rows of the source's profile, compiled; SPI connected */
static ShipMap *
crm_load_map(CrmSource *s)
{
	static SPIPlanPtr plan = NULL;
	Datum		arg = CStringGetTextDatum(s->profile);
	SPITupleTable *tt;
	int			n;
	const char **targets,
			  **sources,
			  **transforms,
			  **args,
			  **defaults;
	bool	   *required;
	char		err[512];
	ShipMap    *map;

	if (plan == NULL)
	{
		Oid			t[1] = {TEXTOID};

		plan = shipsync_prepare_saved(
			"SELECT target_path, source, transform, arg::text, \"default\", required"
			" FROM shipsync.field_map WHERE profile OPERATOR(pg_catalog.=) $1"
			" AND direction OPERATOR(pg_catalog.=) 'crm_in'"
			" ORDER BY position, field_map_id", 1, t);
	}
	if (SPI_execute_plan(plan, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "loading the crm_in field map failed");
	tt = SPI_tuptable;
	n = (int) SPI_processed;
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("profile \"%s\" of CRM source \"%s\" has no crm_in rows", s->profile, s->name),
				 errdetail("A pushed record reaches the table only through the crm_in rows of shipsync.field_map."),
				 errhint("Insert rows (profile '%s', direction 'crm_in', target_path a column, source a path in the record).",
						 s->profile)));
	targets = palloc(sizeof(char *) * n);
	sources = palloc(sizeof(char *) * n);
	transforms = palloc(sizeof(char *) * n);
	args = palloc(sizeof(char *) * n);
	defaults = palloc(sizeof(char *) * n);
	required = palloc(sizeof(bool) * n);
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		targets[i] = SPI_getvalue(tt->vals[i], tt->tupdesc, 1);
		sources[i] = SPI_getvalue(tt->vals[i], tt->tupdesc, 2);
		transforms[i] = SPI_getvalue(tt->vals[i], tt->tupdesc, 3);
		args[i] = SPI_getvalue(tt->vals[i], tt->tupdesc, 4);
		defaults[i] = SPI_getvalue(tt->vals[i], tt->tupdesc, 5);
		required[i] = DatumGetBool(SPI_getbinval(tt->vals[i], tt->tupdesc, 6, &isnull));
	}
	map = shipsync_map_compile(n, targets, sources, transforms, args, defaults, required,
							   err, sizeof(err));
	if (map == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the crm_in rows of profile \"%s\" do not compile", s->profile),
				 errdetail("%s", err),
				 errhint("Fix the rows of the profile in shipsync.field_map.")));
	return map;
}

/*
 * The column a crm_in row's target_path names: a name that is no bare
 * path name ("Customer Name", "full""name") is written in double quotes,
 * as in every field map path (docs/mapping.md), and names the column
 * without them; any other target is the column's name as it is written
 * ("Ver.Ts" unquoted is column Ver.Ts).  The quoted name is read by the
 * field maps' own path parser (mapping.c); _check_crm_map() reads targets
 * the same way.
 */
static char *
crm_target_column(const char *target)
{
	MapPath		path;
	char		err[128];
	char	   *col;

	if (target[0] != '"' || !shipsync_path_parse(target, &path, err, sizeof(err)))
		return pstrdup(target);
	col = pstrdup(path.nsegs == 1 && path.segs[0].kind == MAPSEG_PLAIN ?
				  path.segs[0].name : target);
	shipsync_path_free(&path);
	return col;
}

/*
 * One mapped record as a JSON object of column to value, for
 * jsonb_populate_record; the key column's value goes to *key.  Fields and
 * values are freed here.
 */
static char *
crm_row_json(CrmSource *s, char **fields, MapValue *values, int n, char **key)
{
	StringInfoData buf;

	*key = NULL;
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int i = 0; i < n; i++)
	{
		MapValue   *v = &values[i];
		char	   *col = crm_target_column(fields[i]);

		if (i > 0)
			appendStringInfoString(&buf, ", ");
		escape_json(&buf, col);
		appendStringInfoString(&buf, ": ");
		if (v->type == MV_NULL)
			appendStringInfoString(&buf, "null");
		else if (v->type == MV_STRING)
			escape_json(&buf, v->s);
		else
			appendStringInfoString(&buf, v->s);
		if (strcmp(col, s->key_column) == 0 && v->type != MV_NULL)
			*key = pstrdup(v->s);
		pfree(col);
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/* Free what shipsync_map_read() returned */
static void
crm_free_read(char **fields, MapValue *values, int n)
{
	for (int i = 0; i < n; i++)
	{
		free(fields[i]);
		shipsync_value_free(&values[i]);
	}
	free(fields);
	free(values);
}

/*
 * Map record i: its row as JSON, palloc'd.  SS400 when the map cannot
 * read it or it has no key; the column list of the map's targets goes to
 * *cols (the same for every record of a call).
 */
static char *
crm_map_record(CrmSource *s, CrmMallocs *m, CrmRecord *rec, int i, List **cols,
			   char **keyp)
{
	MapEnv		env = {0};
	char	  **fields = NULL;
	MapValue   *values = NULL;
	int			n = 0;
	char		err[1024];
	MapOutcome	r;
	char	   *json;
	char	   *key;

	env.options = m->options;
	env.tz_offset = shipsync_tz_offset;
	r = shipsync_map_read(m->map, rec->doc, &env, &fields, &values, &n, err, sizeof(err));
	if (r != MAP_OK)
	{
		crm_free_read(fields, values, n);
		crm_bad_payload(s, psprintf("has a record the crm_in map of profile \"%s\" cannot read", s->profile),
						psprintf("Record %d: %s.", i + 1, err));
	}
	/* every record of a call reads the same map, so the same columns */
	if (*cols == NIL)
		for (int k = 0; k < n; k++)
			*cols = lappend(*cols, makeString(crm_target_column(fields[k])));
	json = crm_row_json(s, fields, values, n, &key);
	crm_free_read(fields, values, n);
	if (key == NULL)
		crm_bad_payload(s, psprintf("has a record without a value for key column \"%s\"", s->key_column),
						psprintf("Record %d maps no value to %s; a crm_in row of profile \"%s\" must read the CRM's record id into it.",
								 i + 1, s->key_column, s->profile));
	*keyp = key;
	return json;
}

/*
 * The source's version column must be one of the columns its map writes:
 * otherwise every push would compare the row's version with null.
 */
static void
crm_check_version_mapped(CrmSource *s, List *cols)
{
	ListCell   *lc;

	foreach(lc, cols)
		if (strcmp(strVal(lfirst(lc)), s->version_column) == 0)
			return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("no crm_in row of profile \"%s\" writes column \"%s\", the version column of CRM source \"%s\"",
					s->profile, s->version_column, s->name),
			 errdetail("An update is compared with the row by the version its record carries."),
			 errhint("Insert a crm_in row (profile '%s', target_path '%s', source the record's modification time).",
					 s->profile, s->version_column)));
}

/*
 * The statement writing one record of op, its row as $1 jsonb.  An
 * insert or upsert answers one row, true when it inserted; an upsert that
 * changes nothing and an ignored create answer none.  With a version
 * column, an upsert whose record is older than the row changes nothing
 * either (a push retried after a newer one): both known, the record's
 * must be at least the row's; a record without a version is written and
 * keeps the row's.
 */
static char *
crm_statement(CrmSource *s, CrmOp op, List *cols)
{
	StringInfoData sql,
				collist,
				sel,
				set,
				ex,
				old;
	ListCell   *lc;
	const char *key = quote_identifier(s->key_column);

	if (s->version_column != NULL)
		crm_check_version_mapped(s, cols);
	if (op == CRM_DELETE)
		return psprintf("DELETE FROM %s AS t USING pg_catalog.jsonb_populate_record(NULL::%s, $1) AS r"
						" WHERE t.%s OPERATOR(pg_catalog.=) r.%s", s->tbl, s->tbl, key, key);
	initStringInfo(&collist);
	initStringInfo(&sel);
	initStringInfo(&set);
	initStringInfo(&ex);
	initStringInfo(&old);
	foreach(lc, cols)
	{
		const char *c = quote_identifier(strVal(lfirst(lc)));

		appendStringInfo(&collist, "%s%s", collist.len ? ", " : "", c);
		appendStringInfo(&sel, "%sr.%s", sel.len ? ", " : "", c);
		if (strcmp(strVal(lfirst(lc)), s->key_column) == 0)
			continue;
		appendStringInfo(&set, "%s%s", set.len ? ", " : "", c);
		/* a record without a version keeps the row's */
		if (s->version_column && strcmp(strVal(lfirst(lc)), s->version_column) == 0)
			appendStringInfo(&ex, "%sCOALESCE(EXCLUDED.%s, t.%s)", ex.len ? ", " : "", c, c);
		else
			appendStringInfo(&ex, "%sEXCLUDED.%s", ex.len ? ", " : "", c);
		appendStringInfo(&old, "%st.%s", old.len ? ", " : "", c);
	}
	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s AS t (%s) SELECT %s"
					 " FROM pg_catalog.jsonb_populate_record(NULL::%s, $1) AS r ON CONFLICT (%s)",
					 s->tbl, collist.data, sel.data, s->tbl, key);
	if (op == CRM_CREATE || set.len == 0)
		appendStringInfoString(&sql, " DO NOTHING");
	else
	{
		appendStringInfo(&sql, " DO UPDATE SET (%s) = ROW(%s) WHERE ROW(%s) IS DISTINCT FROM ROW(%s)",
						 set.data, ex.data, old.data, ex.data);
		if (s->version_column != NULL)
		{
			const char *v = quote_identifier(s->version_column);

			appendStringInfo(&sql, " AND (t.%s IS NULL OR EXCLUDED.%s IS NULL"
							 " OR EXCLUDED.%s OPERATOR(pg_catalog.>=) t.%s)", v, v, v, v);
		}
	}
	appendStringInfoString(&sql, " RETURNING t.xmax::text OPERATOR(pg_catalog.=) '0'");
	return sql.data;
}

/*
 * Run sql, with the row of record i as $1 jsonb (and $2 jsonb, arg2, if
 * given), as the table's owner, in a security-restricted operation and a
 * GUC nest level of its own (shipsync_become_owner()), with capture on:
 * the trigger ships what it writes.  The nest level is rolled back on
 * success and on error, so a trigger of the owner's that calls
 * set_config('search_path', ..., false) does not change the search_path
 * of the session that called ingest_crm() (an operator's, or the
 * receiver's).  A value the column cannot take, a constraint it breaks or
 * a value too long for an index of the table (54000) is SS400: sent
 * again, the record would fail again.  Returns SPI's result code.
 */
static int
crm_as_owner(CrmSource *s, const char *sql, const char *row, const char *arg2, int i)
{
	Oid			argtypes[2] = {JSONBOID, JSONBOID};
	Datum		args[2];
	ShipsyncUserSave save;
	volatile int rc = 0;
	MemoryContext cxt = CurrentMemoryContext;

	args[0] = DirectFunctionCall1(jsonb_in, CStringGetDatum(row));
	if (arg2)
		args[1] = DirectFunctionCall1(jsonb_in, CStringGetDatum(arg2));
	shipsync_become_owner(s->owner, &save);
	PG_TRY();
	{
		rc = SPI_execute_with_args(sql, arg2 ? 2 : 1, argtypes, args, NULL, false, 0);
	}
	PG_CATCH();
	{
		ErrorData  *e;
		int			cls;

		shipsync_restore_user(&save);
		MemoryContextSwitchTo(cxt);
		e = CopyErrorData();
		cls = ERRCODE_TO_CATEGORY(e->sqlerrcode);
		/* a value too long for an index of the table is one it cannot take */
		if (cls != ERRCODE_DATA_EXCEPTION && cls != ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION &&
			e->sqlerrcode != ERRCODE_PROGRAM_LIMIT_EXCEEDED)
			PG_RE_THROW();
		FlushErrorState();
		crm_bad_payload(s, psprintf("has a record table %s cannot take", s->tbl),
						psprintf("Record %d: %s%s%s", i + 1, e->message,
								 e->detail ? " " : "", e->detail ? e->detail : ""));
	}
	PG_END_TRY();
	shipsync_restore_user(&save);
	return rc;
}

/* Write record i with its statement (crm_statement()), counting what it did */
static void
crm_write(CrmSource *s, const char *sql, const char *row, int i, CrmOp op, CrmCounts *c)
{
	int			rc = crm_as_owner(s, sql, row, NULL, i);

	if (op == CRM_DELETE)
	{
		if (rc != SPI_OK_DELETE)
			elog(ERROR, "deleting a CRM record failed: %s", SPI_result_code_string(rc));
		c->deleted += SPI_processed;
		c->unchanged += SPI_processed == 0;
		return;
	}
	if (rc != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "writing a CRM record failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		c->unchanged++;
	else
	{
		bool		isnull;

		if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
			c->inserted++;
		else
			c->updated++;
	}
}

/*
 * Record a delivery id for the source, kept ttl_s seconds; false if it was
 * seen (a concurrent transaction holding it is waited for).  An id longer
 * than SHIPSYNC_MAX_KEY_BYTES is SS400: its entry in crm_delivery's index
 * would be over btree's limit (54000, which the receiver answers 500, and
 * the CRM sent the push again, forever).
 */
static bool
crm_first_delivery(CrmSource *s, const char *delivery_id, int64 ttl_s)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[3];

	if (plan == NULL)
	{
		Oid			t[3] = {INT4OID, TEXTOID, INT8OID};

		plan = shipsync_prepare_saved(
			"INSERT INTO shipsync.crm_delivery (crm_source_id, delivery_id, expires_at)"
			" VALUES ($1, $2, pg_catalog.now() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $3))"
			" ON CONFLICT (crm_source_id, delivery_id) DO NOTHING", 3, t);
	}
	if (strlen(delivery_id) > SHIPSYNC_MAX_KEY_BYTES)
		crm_bad_payload(s, "has a delivery id that is too long",
						psprintf("The delivery id is %zu bytes; at most %d are taken.",
								 strlen(delivery_id), SHIPSYNC_MAX_KEY_BYTES));
	args[0] = Int32GetDatum(s->id);
	args[1] = CStringGetTextDatum(delivery_id);
	args[2] = Int64GetDatum(ttl_s);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "recording a CRM delivery failed");
	return SPI_processed == 1;
}

/* Forget the source's deliveries and removed records whose dedup_ttl is over */
static void
crm_expire_deliveries(CrmSource *s)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr removed = NULL;
	Datum		arg = Int32GetDatum(s->id);

	if (plan == NULL)
	{
		Oid			t[1] = {INT4OID};

		plan = shipsync_prepare_saved(
			"DELETE FROM shipsync.crm_delivery WHERE crm_source_id OPERATOR(pg_catalog.=) $1"
			" AND expires_at OPERATOR(pg_catalog.<) pg_catalog.now()", 1, t);
		removed = shipsync_prepare_saved(
			"DELETE FROM shipsync.crm_removed WHERE crm_source_id OPERATOR(pg_catalog.=) $1"
			" AND expires_at OPERATOR(pg_catalog.<) pg_catalog.now()", 1, t);
	}
	if (SPI_execute_plan(plan, &arg, NULL, false, 0) != SPI_OK_DELETE ||
		SPI_execute_plan(removed, &arg, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "expiring CRM deliveries failed");
}

/*
 * Whether the source removed the record with this key within dedup_ttl;
 * its version then goes to *version (jsonb text, NULL if none was known).
 */
static bool
crm_removed_lookup(CrmSource *s, const char *key, char **version)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[2];

	if (plan == NULL)
	{
		Oid			t[2] = {INT4OID, TEXTOID};

		plan = shipsync_prepare_saved(
			"SELECT version::text FROM shipsync.crm_removed"
			" WHERE crm_source_id OPERATOR(pg_catalog.=) $1 AND record_key OPERATOR(pg_catalog.=) $2"
			" FOR UPDATE", 2, t);
	}
	args[0] = Int32GetDatum(s->id);
	args[1] = CStringGetTextDatum(key);
	if (SPI_execute_plan(plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "looking up a removed CRM record failed");
	*version = SPI_processed ? SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1) : NULL;
	return SPI_processed > 0;
}

/*
 * Remember (version not NULL or NULL: jsonb text) or forget (forget) the
 * remove of the record with this key, for dedup_ttl.
 */
static void
crm_removed_set(CrmSource *s, const char *key, const char *version, bool forget)
{
	static SPIPlanPtr put = NULL;
	static SPIPlanPtr del = NULL;
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};

	if (put == NULL)
	{
		Oid			t[4] = {INT4OID, TEXTOID, JSONBOID, INT8OID};

		put = shipsync_prepare_saved(
			"INSERT INTO shipsync.crm_removed AS x (crm_source_id, record_key, version, expires_at)"
			" VALUES ($1, $2, $3, pg_catalog.now() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $4))"
			" ON CONFLICT (crm_source_id, record_key) DO UPDATE SET version = EXCLUDED.version,"
			" removed_at = EXCLUDED.removed_at, expires_at = EXCLUDED.expires_at", 4, t);
		del = shipsync_prepare_saved(
			"DELETE FROM shipsync.crm_removed"
			" WHERE crm_source_id OPERATOR(pg_catalog.=) $1 AND record_key OPERATOR(pg_catalog.=) $2", 2, t);
	}
	args[0] = Int32GetDatum(s->id);
	args[1] = CStringGetTextDatum(key);
	if (forget)
	{
		if (SPI_execute_plan(del, args, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "forgetting a removed CRM record failed");
		return;
	}
	if (version)
		args[2] = DirectFunctionCall1(jsonb_in, CStringGetDatum(version));
	else
		nulls[2] = 'n';
	args[3] = Int64GetDatum(s->ttl_s);
	if (SPI_execute_plan(put, args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "remembering a removed CRM record failed");
}

/*
 * The version of record i's row, as jsonb text read through the table's
 * row type (as its owner: a domain's check is the owner's code), or NULL.
 */
static char *
crm_row_version(CrmSource *s, const char *row, int i)
{
	const char *v = quote_identifier(s->version_column);
	char	   *sql = psprintf("SELECT pg_catalog.to_jsonb(r.%s)::text"
							   " FROM pg_catalog.jsonb_populate_record(NULL::%s, $1) AS r", v, s->tbl);

	if (crm_as_owner(s, sql, row, NULL, i) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "reading the version of a CRM record failed");
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * Whether record i (row) is newer than the version its key was removed at
 * (jsonb text): 1 if it is, 0 if not, -1 when one of them is not known.
 */
static int
crm_newer_than_removed(CrmSource *s, const char *row, const char *removed, int i)
{
	const char *v = quote_identifier(s->version_column);
	StringInfoData old;
	char	   *sql;
	bool		isnull;
	bool		newer;

	initStringInfo(&old);
	appendStringInfoChar(&old, '{');
	escape_json(&old, s->version_column);
	appendStringInfo(&old, ": %s}", removed);
	sql = psprintf("SELECT r.%s OPERATOR(pg_catalog.>) o.%s"
				   " FROM pg_catalog.jsonb_populate_record(NULL::%s, $1) AS r,"
				   " pg_catalog.jsonb_populate_record(NULL::%s, $2) AS o", v, v, s->tbl, s->tbl);
	if (crm_as_owner(s, sql, row, old.data, i) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "comparing the version of a CRM record failed");
	newer = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return isnull ? -1 : newer;
}

/*
 * Whether record i, a create or update of key, comes after its remove and
 * must not bring the order back: the remove is remembered (for dedup_ttl)
 * and the record is not newer than the removed version.  Without both
 * versions it is written, as before: a late push cannot be told from a
 * record restored in the CRM (a 简道云 restore is not always pushed).  A
 * 简道云 data_recover, and a newer record, undo the remove.
 */
static bool
crm_after_remove(CrmSource *s, CrmRecord *rec, const char *key, const char *row, int i)
{
	char	   *removed;

	if (s->version_column == NULL || !crm_removed_lookup(s, key, &removed))
		return false;
	if (!rec->restore && removed != NULL &&
		crm_newer_than_removed(s, row, removed, i) == 0)
		return true;
	crm_removed_set(s, key, NULL, true);
	return false;
}

/* Step 2: the records of the push, verified */
static int
crm_read_push(CrmSource *s, CrmMallocs *m, const char *body, size_t len,
			  Jsonb *headers, Jsonb *query, CrmRecord **recs)
{
	if (strcmp(s->kind, "jiandaoyun") == 0)
		return crm_read_jiandaoyun(s, m, body, len, headers, query, recs);
	if (strcmp(s->kind, "generic") == 0)
		return crm_read_generic(s, m, body, len, headers, recs);
	if (strcmp(s->kind, "salesforce_om") == 0)
		return crm_read_salesforce(s, m, body, len, recs);
	elog(ERROR, "unknown CRM source kind \"%s\"", s->kind);
	return 0;
}

/* The summary ingest_crm() returns */
static Datum
crm_summary(CrmSource *s, CrmCounts *c)
{
	StringInfoData out;

	initStringInfo(&out);
	appendStringInfoString(&out, "{\"source\": ");
	escape_json(&out, s->name);
	appendStringInfoString(&out, ", \"kind\": ");
	escape_json(&out, s->kind);
	appendStringInfo(&out, ", \"records\": " INT64_FORMAT ", \"inserted\": " INT64_FORMAT
					 ", \"updated\": " INT64_FORMAT ", \"deleted\": " INT64_FORMAT
					 ", \"unchanged\": " INT64_FORMAT ", \"duplicate\": " INT64_FORMAT
					 ", \"ignored\": " INT64_FORMAT,
					 c->records, c->inserted, c->updated, c->deleted, c->unchanged,
					 c->duplicate, c->ignored);
	if (strcmp(s->kind, "salesforce_om") == 0)
	{
		appendStringInfoString(&out, ", \"content_type\": \"text/xml; charset=utf-8\", \"reply\": ");
		escape_json(&out,
					"<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
					"<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\">"
					"<soapenv:Body><notificationsResponse xmlns=\"http://soap.sforce.com/2005/09/outbound\">"
					"<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>");
	}
	appendStringInfoChar(&out, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(out.data));
}

/*
 * shipsync.ingest_crm(source text, body text, headers jsonb, query jsonb)
 */
Datum
shipsync_ingest_crm(PG_FUNCTION_ARGS)
{
	MemoryContext cxt = CurrentMemoryContext;
	Jsonb	   *headers = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	Jsonb	   *query = PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3);
	char	   *sname;
	text	   *body;
	CrmSource  *s;
	CrmMallocs *m;
	CrmRecord  *recs;
	ShipsyncConstraints *immediate;
	CrmCounts	c = {0};
	List	   *cols = NIL;
	char	   *sql[3] = {NULL, NULL, NULL};
	char		err[256];
	int			n;
	Datum		result;

	body = shipsync_push_args(fcinfo, "source", "CRM push for source",
							  "Pass the request body exactly as received.", &sname);

	m = palloc0(sizeof(CrmMallocs));
	m->cb.func = crm_free_mallocs;
	m->cb.arg = m;
	MemoryContextRegisterResetCallback(cxt, &m->cb);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	s = crm_load_source(sname);
	n = crm_read_push(s, m, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), headers, query, &recs);
	m->map = crm_load_map(s);
	m->options = shipsync_json_parse(s->options, strlen(s->options), err, sizeof(err));
	crm_expire_deliveries(s);
	immediate = shipsync_constraints_immediate(s->relid, s->owner);
	for (int i = 0; i < n; i++)
	{
		char	   *row;
		char	   *key;

		c.records++;

		/*
		 * The signed key first, so that a replay records nothing of its
		 * unsigned delivery id.  It is kept while a push of its timestamp
		 * is taken: dedup_ttl back, and up to WEBHOOK_TOLERANCE_S ahead.
		 */
		if ((recs[i].signed_id != NULL &&
			 !crm_first_delivery(s, recs[i].signed_id, s->ttl_s + WEBHOOK_TOLERANCE_S)) ||
			!crm_first_delivery(s, recs[i].delivery_id,
								Max(s->ttl_s, recs[i].keep_s)))
		{
			c.duplicate++;
			continue;
		}
		if (recs[i].op == CRM_IGNORE)
		{
			c.ignored++;
			continue;
		}
		row = crm_map_record(s, m, &recs[i], i, &cols, &key);
		if (recs[i].op != CRM_DELETE && crm_after_remove(s, &recs[i], key, row, i))
		{
			c.unchanged++;
			continue;
		}
		if (sql[recs[i].op] == NULL)
			sql[recs[i].op] = crm_statement(s, recs[i].op, cols);
		crm_write(s, sql[recs[i].op], row, i, recs[i].op, &c);
		if (recs[i].op == CRM_DELETE && s->version_column != NULL)
			crm_removed_set(s, key, crm_row_version(s, row, i), false);
		elog(DEBUG1, "pg_shipsync: CRM source \"%s\": %s of record %d", s->name,
			 crm_op_names[recs[i].op], i + 1);
	}
	shipsync_constraints_restore(immediate);
	MemoryContextSwitchTo(cxt);
	result = crm_summary(s, &c);
	SPI_finish();
	PG_RETURN_DATUM(result);
}
