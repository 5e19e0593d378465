/*-------------------------------------------------------------------------
 *
 * tracking.c
 *		Tracking comes back: shipsync.ingest_tracking() and the status rules.
 *
 * A push is taken as received: the raw body (signatures are over its
 * bytes) and its headers, matched case-insensitively.  In order:
 *
 *	1. the provider's dialect says how it is signed (signature.c); the
 *	   current webhook secret is tried, then the previous one (rotation);
 *	   a bad or missing signature is a WARNING in the log naming the
 *	   provider and the reason, and an ERROR with SQLSTATE SS401: nothing
 *	   is stored;
 *	2. the payload is exploded into single events (json.c) and copied out
 *	   of json-c's malloc'd memory at once, so no error can leak it;
 *	3. event times are read, zone-less ones in the provider's time zone;
 *	4. shipsync._apply_tracking() stores the batch set-based: it takes an
 *	   advisory lock per tracking number (concurrent pushes for one
 *	   shipment serialise), moves parked events whose shipment appeared,
 *	   inserts events ON CONFLICT DO NOTHING (deduplication on provider and
 *	   event key), parks those of unknown tracking numbers, and, in a later
 *	   statement (a snapshot taken after the locks), folds each touched
 *	   shipment's
 *	   whole history in event-time order (the aggregate _status_fold over
 *	   canonical_status: rank up, recoverable, expired, terminal), so that
 *	   the result does not depend on the order of arrival;
 *	5. each status change is written onto the order row through the
 *	   binding's write-back statement, as the table's owner, with capture
 *	   suppressed (no echo), and announced on channel shipsync -- all in
 *	   the caller's transaction, with the events.  An order whose row
 *	   refuses its status (a constraint, a trigger) is left as it was,
 *	   with a writeback_failed ticket, and the rest goes on
 *	   (writeback_values() in writeback.c).
 *
 * The receiver of pushes (receiver.c) calls _ingest_tracking_batch()
 * instead, with every push of one provider it has at hand: each push goes
 * through steps 1 to 3 alone, in a subtransaction, so that a forged or
 * malformed one fails alone; the events of the others then go through
 * steps 4 and 5 together (one _apply_tracking for the lot, which is what a
 * push of one event mostly costs), and push by push only if that fails.
 *
 * ingest_tracking() runs as the extension's owner (SECURITY DEFINER): it
 * opens the provider's webhook secrets from shipsync.secret (secret.c),
 * which the caller cannot read, when it verifies a push, and keeps them
 * for that call only.  Secrets are never put in a message.  The same
 * steps 3 to 5 serve the poller (tracking_apply_pulled) and the matching
 * of parked events when their shipment is recorded (the deferred trigger
 * shipsync._match_parked).
 * Step 1 (tracking_verify_push), the provider lookup and the write-back
 * serve the fees too (fees.c: ingest_fees() is signed as the tracking
 * pushes of its dialect; fee totals are written back like statuses).
 *
 * Saved plans (the provider lookup, _apply_tracking, each binding's
 * write-back) live for the session; the plan cache replans them when the
 * objects they use change.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/fmgrprotos.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "access/htup_details.h"
#include "catalog/pg_class.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

PG_FUNCTION_INFO_V1(shipsync_ingest_tracking);

/* The events of one batch, in palloc'd memory */
typedef struct EventBatch
{
	int			n;
	Datum	   *keys,
			   *tns,
			   *raws,
			   *details,
			   *ats,
			   *locs,
			   *descrs;
	bool	   *nraws,
			   *ndetails,
			   *nlocs,
			   *ndescrs;
} EventBatch;

typedef struct TrackSummary
{
	int64		n_new;
	int64		n_duplicate;
	int64		n_unmatched;
	int64		n_matched;
	int64		n_expired;
	int64		n_changed;
} TrackSummary;

static SPIPlanPtr apply_plan = NULL;

/* s in Unicode normalization form NFKD, palloc'd */
static char *
nfkd(const char *s)
{
	return text_to_cstring(DatumGetTextPP(DirectFunctionCall2(unicode_normalize_func,
															  CStringGetTextDatum(s),
															  CStringGetTextDatum("NFKD"))));
}

/*
 * The webhook secrets of p, opened from shipsync.secret (the current one
 * and, during a rotation, the previous one), at the moment a push is
 * verified (what: tracking or fee).  EasyPost signs with the NFKD form of
 * its secret.
 */
static void
open_webhook_secrets(TrackProvider *p, const char *what)
{
	secret_open_webhook(p->name, strcmp(what, "tracking") == 0 ?
						"tracking pushes of provider" : "fee pushes of provider",
						&p->secret, &p->previous_secret);
	if (!p->routine->nfkd_secret)
		return;
	if (p->secret)
		p->secret = nfkd(p->secret);
	if (p->previous_secret)
		p->previous_secret = nfkd(p->previous_secret);
}

/*
 * A header's value, its name matched case-insensitively; NULL if absent.
 * Also reads the query parameters of a push (ingest_crm()).
 */
char *
shipsync_header_value(Jsonb *headers, const char *name)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken r;
	size_t		nlen = strlen(name);
	bool		want = false;

	if (headers == NULL || !JB_ROOT_IS_OBJECT(headers))
		return NULL;
	it = JsonbIteratorInit(&headers->root);
	while ((r = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (r == WJB_KEY)
			want = (v.val.string.len == (int) nlen &&
					pg_strncasecmp(v.val.string.val, name, nlen) == 0);
		else if (r == WJB_VALUE && want)
		{
			if (v.type == jbvString)
				return pnstrdup(v.val.string.val, v.val.string.len);
			return NULL;
		}
	}
	return NULL;
}

/*
 * The first two arguments of a function taking pushes or files: the name
 * of the provider or source (argname; NULL: null_value_not_allowed) and the
 * body, as received (NULL: SS400 "<what> "<name>" has no body", with hint).
 * Returns the body; *name is the name.
 */
text *
shipsync_push_args(FunctionCallInfo fcinfo, const char *argname, const char *what,
				   const char *hint, char **name)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", argname)));
	*name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("%s \"%s\" has no body", what, *name),
				 errhint("%s", hint)));
	return PG_GETARG_TEXT_PP(1);
}

static void
reject_push(TrackProvider *p, const char *what, const char *reason)
{
	ereport(WARNING,
			(errmsg("pg_shipsync: rejected a %s push for provider \"%s\": %s",
					what, p->name, reason)));
	ereport(ERROR,
			(errcode(ERRCODE_SHIPSYNC_BAD_SIGNATURE),
			 errmsg("%s push for provider \"%s\" failed its signature check", what, p->name),
			 errdetail("%c%s.", pg_toupper((unsigned char) reason[0]), reason + 1),
			 errhint("Check the provider's webhook_secret (and previous_webhook_secret during a rotation), and that the body is passed exactly as received.")));
}

/* A push, as shipsync_verify_rotating() hands it to verify_with() */
typedef struct TrackPush
{
	TrackProvider *p;
	Jsonb	   *headers;
	DialectPush push;
} TrackPush;

/* A header of the push: DialectPush's header callback */
static char *
push_header(void *arg, const char *name)
{
	return shipsync_header_value((Jsonb *) arg, name);
}

/* Verify one secret as the dialect signs; SIG_NO_SECRET when not set */
static SigResult
verify_with(const char *secret, void *arg, const char **reason)
{
	TrackPush  *tp = (TrackPush *) arg;

	return tp->p->routine->verify_push(secret, &tp->push, reason);
}

/*
 * Check the push's signature, with the current secret and then, during a
 * rotation, the previous one.  Returns only if it is good.  what names the
 * push in messages: tracking or fee.
 */
static void
verify_push(TrackProvider *p, const char *what, Jsonb *headers, const char *body,
			size_t len, const char *param, const char *sign)
{
	TrackPush	push = {p, headers, {push_header, headers, body, len, param, sign}};
	const char *reason = NULL;

	/* a dialect whose pushes carry no signature (SF Express) */
	if (p->routine->verify_push == NULL)
	{
		if (p->accept_unsigned)
			return;
		reject_push(p, what, strcmp(what, "tracking") == 0 ?
					psprintf("route pushes of dialect %s carry no signature and option accept_unsigned_pushes is not set", p->dialect) :
					psprintf("fee pushes of dialect %s carry no signature and option accept_unsigned_pushes is not set", p->dialect));
	}
	open_webhook_secrets(p, what);
	if (p->secret == NULL && p->previous_secret == NULL)
	{
		ereport(WARNING,
				(errmsg("pg_shipsync: rejected a %s push for provider \"%s\": no webhook secret is configured",
						what, p->name)));
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("provider \"%s\" has no webhook secret", p->name),
				 errdetail("Pushes are accepted only when their signature can be checked."),
				 errhint("Set option webhook_secret of the provider.")));
	}
	if (shipsync_verify_rotating(verify_with, &push, p->secret, p->previous_secret,
								 &reason) == SIG_OK)
		return;
	reject_push(p, what, reason ? reason : "the signature does not match");
}

/*
 * True if s is an ISO 8601 date and time as carriers send them:
 * YYYY-MM-DD[(T| )HH:MM[:SS[.frac]]][Z|(+|-)HH[[:]MM]]; *zoned says
 * whether it carries a zone.  Only what PostgreSQL's input functions take:
 * a year from 1, a leap second without a fraction, an offset of at most
 * 15:59 (a time they refuse was an ERROR of theirs, not a bad time: it
 * failed a whole statement imported with on_error = skip).
 */
static bool
time_text_ok(const char *s, bool *zoned)
{
	static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	const char *fmt = "dddd-dd-dd";
	int			year,
				month,
				day;
	bool		leap = false;

	*zoned = false;
	for (const char *f = fmt; *f; f++)
		if (*f == 'd' ? !isdigit((unsigned char) s[f - fmt]) : s[f - fmt] != *f)
			return false;
	year = atoi(s);
	month = atoi(s + 5);
	day = atoi(s + 8);
	if (year < 1 || month < 1 || month > 12 || day < 1 || day > mdays[month - 1] ||
		(month == 2 && day == 29 &&
		 !(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))))
		return false;
	s += 10;
	if (*s == 'T' || *s == 't' || *s == ' ')
	{
		s++;
		if (!isdigit((unsigned char) s[0]) || !isdigit((unsigned char) s[1]) || s[2] != ':' ||
			!isdigit((unsigned char) s[3]) || !isdigit((unsigned char) s[4]) ||
			atoi(s) > 23 || atoi(s + 3) > 59)
			return false;
		s += 5;
		if (*s == ':')
		{
			if (!isdigit((unsigned char) s[1]) || !isdigit((unsigned char) s[2]) ||
				atoi(s + 1) > 60)
				return false;
			leap = atoi(s + 1) == 60;
			s += 3;
			if (*s == '.')
			{
				s++;
				if (!isdigit((unsigned char) *s))
					return false;
				while (isdigit((unsigned char) *s))
				{
					if (leap && *s != '0')
						return false;
					s++;
				}
			}
		}
	}
	if (*s == 'Z' || *s == 'z')
	{
		*zoned = true;
		s++;
	}
	else if (*s == '+' || *s == '-')
	{
		*zoned = true;
		s++;
		if (!isdigit((unsigned char) s[0]) || !isdigit((unsigned char) s[1]) ||
			(s[0] - '0') * 10 + (s[1] - '0') > 15)
			return false;
		s += 2;
		if (*s == ':')
			s++;
		if (isdigit((unsigned char) s[0]) && isdigit((unsigned char) s[1]))
		{
			if ((s[0] - '0') * 10 + (s[1] - '0') > 59)
				return false;
			s += 2;
		}
	}
	return *s == '\0';
}

/*
 * A carrier's time as a timestamptz: ISO 8601 as time_text_ok() reads it,
 * a zone-less one in the provider's option timezone.  False, and nothing
 * set, when s is not such a time.
 */
bool
tracking_read_time(TrackProvider *p, const char *s, Datum *out)
{
	bool		zoned;
	Datum		ts;

	if (!time_text_ok(s, &zoned))
		return false;
	if (zoned)
	{
		*out = DirectFunctionCall3(timestamptz_in, CStringGetDatum(s),
								   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
		return true;
	}
	ts = DirectFunctionCall3(timestamp_in, CStringGetDatum(s),
							 ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
	*out = DirectFunctionCall2(timestamp_zone, CStringGetTextDatum(p->timezone), ts);
	return true;
}

static Datum
event_time(TrackProvider *p, const char *s, int i)
{
	Datum		ts;

	if (s == NULL)
		return TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	if (!tracking_read_time(p, s, &ts))
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("tracking push for provider \"%s\" has an event with an invalid time", p->name),
				 errdetail("Event %d has time \"%s\"; an ISO 8601 date and time is expected.", i + 1, s),
				 errhint("Times without a zone are read in the provider's option timezone.")));
	return ts;
}

/*
 * An event's id or tracking number longer than max bytes is refused
 * (SS400): a key over btree's limit for an entry of tracking_event's or
 * unmatched_event's indexes failed the push with 54000, which an endpoint
 * answers 500, and the carrier sent it again, forever.  No tracking number
 * of a shipment is longer than SHIPSYNC_MAX_ID_BYTES (the carrier's answer
 * is refused otherwise), so a longer one could never match.
 */
static void
event_check_length(TrackProvider *p, const char *what, const char *s,
				   size_t max, int i)
{
	if (s != NULL && strlen(s) > max)
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("tracking push for provider \"%s\" has an event whose %s is too long",
						p->name, what),
				 errdetail("The %s of event %d is %zu bytes; at most %zu are taken.",
						   what, i + 1, strlen(s), max),
				 errhint("See docs/wire-contract.md for the payload of each dialect.")));
}

static Datum
text_or_null(const char *s, bool *isnull)
{
	*isnull = (s == NULL);
	return s ? CStringGetTextDatum(s) : (Datum) 0;
}

/*
 * Copy a parsed list into palloc'd Datums and free it: nothing below can
 * leak json.c's malloc'd strings.  Times are read after the copy.
 */
static EventBatch *
batch_from_list(TrackProvider *p, TrackEventList *l)
{
	EventBatch *b = palloc0(sizeof(EventBatch));
	int			n = l->n;
	char	  **times = palloc0(sizeof(char *) * Max(n, 1));

	b->n = n;
	b->keys = palloc(sizeof(Datum) * Max(n, 1));
	b->tns = palloc(sizeof(Datum) * Max(n, 1));
	b->raws = palloc(sizeof(Datum) * Max(n, 1));
	b->details = palloc(sizeof(Datum) * Max(n, 1));
	b->ats = palloc(sizeof(Datum) * Max(n, 1));
	b->locs = palloc(sizeof(Datum) * Max(n, 1));
	b->descrs = palloc(sizeof(Datum) * Max(n, 1));
	b->nraws = palloc(sizeof(bool) * Max(n, 1));
	b->ndetails = palloc(sizeof(bool) * Max(n, 1));
	b->nlocs = palloc(sizeof(bool) * Max(n, 1));
	b->ndescrs = palloc(sizeof(bool) * Max(n, 1));
	PG_TRY();
	{
		for (int i = 0; i < n; i++)
		{
			TrackEvent *e = &l->ev[i];

			event_check_length(p, "id", e->key, SHIPSYNC_MAX_KEY_BYTES, i);
			event_check_length(p, "tracking number", e->tracking_number,
							   SHIPSYNC_MAX_ID_BYTES, i);
			b->keys[i] = CStringGetTextDatum(e->key);
			b->tns[i] = CStringGetTextDatum(e->tracking_number);
			b->raws[i] = text_or_null(e->raw_status, &b->nraws[i]);
			b->details[i] = text_or_null(e->raw_detail, &b->ndetails[i]);
			b->locs[i] = text_or_null(e->location, &b->nlocs[i]);
			b->descrs[i] = text_or_null(e->description, &b->ndescrs[i]);
			times[i] = e->occurred_at ? pstrdup(e->occurred_at) : NULL;
		}
	}
	PG_FINALLY();
	{
		shipsync_free_tracking(l);
	}
	PG_END_TRY();
	for (int i = 0; i < n; i++)
		b->ats[i] = event_time(p, times[i], i);
	return b;
}

static Datum
text_array(Datum *v, bool *nulls, int n)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};

	if (n == 0)
		return PointerGetDatum(construct_empty_array(TEXTOID));
	return PointerGetDatum(construct_md_array(v, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Store a batch of a provider's events and apply the status changes: the
 * shared step of pushes and pulls.  SPI must be connected.
 */
static void
tracking_apply_batch(TrackProvider *p, EventBatch *b, TrackSummary *sum)
{
	Datum		params[10];
	int			dims[1] = {b->n};
	int			lbs[1] = {1};
	SPITupleTable *tt;
	uint64		nrows;
	int			nchanged = 0;
	int32	   *c_bid;
	Datum	   *c_key;
	Datum	   *c_status;
	char	  **c_notify;

	if (apply_plan == NULL)
	{
		Oid			t[10] = {INT4OID, TEXTOID, INT4OID, TEXTARRAYOID, TEXTARRAYOID,
			TEXTARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID};

		apply_plan = shipsync_prepare_saved(
			"SELECT kind, binding_id, order_key, tracking_number, old_status, new_status, n, tbl"
			" FROM shipsync._apply_tracking($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", 10, t);
	}
	params[0] = Int32GetDatum(p->id);
	params[1] = CStringGetTextDatum(p->profile);
	params[2] = Int32GetDatum(p->ttl_s);
	params[3] = text_array(b->keys, NULL, b->n);
	params[4] = text_array(b->tns, NULL, b->n);
	params[5] = text_array(b->raws, b->nraws, b->n);
	params[6] = text_array(b->details, b->ndetails, b->n);
	params[7] = b->n == 0 ? PointerGetDatum(construct_empty_array(TIMESTAMPTZOID)) :
		PointerGetDatum(construct_md_array(b->ats, NULL, 1, dims, lbs, TIMESTAMPTZOID,
										   sizeof(TimestampTz), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	params[8] = text_array(b->locs, b->nlocs, b->n);
	params[9] = text_array(b->descrs, b->ndescrs, b->n);

	if (SPI_execute_plan(apply_plan, params, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "storing tracking events failed");
	tt = SPI_tuptable;
	nrows = SPI_processed;
	c_bid = palloc(sizeof(int32) * (nrows + 1));
	c_key = palloc(sizeof(Datum) * (nrows + 1));
	c_status = palloc(sizeof(Datum) * (nrows + 1));
	c_notify = palloc(sizeof(char *) * (nrows + 1));
	for (uint64 i = 0; i < nrows; i++)
	{
		HeapTuple	tup = tt->vals[i];
		TupleDesc	desc = tt->tupdesc;
		char	   *kind = SPI_getvalue(tup, desc, 1);
		bool		isnull;

		if (strcmp(kind, "changed") == 0)
		{
			StringInfoData buf;

			c_bid[nchanged] = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
			c_key[nchanged] = CStringGetTextDatum(SPI_getvalue(tup, desc, 3));
			c_status[nchanged] = CStringGetTextDatum(SPI_getvalue(tup, desc, 6));
			/* kinds and ids only: any role may LISTEN (docs/security.md) */
			initStringInfo(&buf);
			appendStringInfo(&buf, "{\"event\": \"status_changed\", \"binding_id\": %d, \"order_key\": ",
							 c_bid[nchanged]);
			escape_json(&buf, SPI_getvalue(tup, desc, 3));
			appendStringInfoString(&buf, "}");
			c_notify[nchanged] = buf.data;
			nchanged++;
		}
		else
		{
			int64		v = DatumGetInt64(SPI_getbinval(tup, desc, 7, &isnull));

			if (strcmp(kind, "new") == 0)
				sum->n_new += v;
			else if (strcmp(kind, "duplicate") == 0)
				sum->n_duplicate += v;
			else if (strcmp(kind, "unmatched") == 0)
				sum->n_unmatched += v;
			else if (strcmp(kind, "matched") == 0)
				sum->n_matched += v;
			else if (strcmp(kind, "expired") == 0)
				sum->n_expired += v;
		}
	}
	sum->n_changed += nchanged;

	writeback_values(p->id, c_bid, c_key, c_status, false, nchanged);
	for (int i = 0; i < nchanged; i++)
		Async_Notify("shipsync", c_notify[i]);
}

static void
append_count(StringInfo buf, const char *name, int64 v)
{
	appendStringInfo(buf, ", \"%s\": " INT64_FORMAT, name, v);
}

/*
 * The answer a provider's pushes (tracking and fees) expect, as JSON, or
 * NULL: any 2xx
 */
const char *
tracking_reply(TrackProvider *p)
{
	return p->routine->push_reply;
}

/* The fields param and sign of a form push (kuaidi100), palloc'd, or NULL */
static void
form_fields(const char *body, size_t len, char **param, char **sign)
{
	/* malloc'd by signature.c: copied out at once */
	char	   *volatile mp = shipsync_form_field(body, len, "param");
	char	   *volatile ms = shipsync_form_field(body, len, "sign");

	PG_TRY();
	{
		*param = mp ? pstrdup(mp) : NULL;
		*sign = ms ? pstrdup(ms) : NULL;
	}
	PG_FINALLY();
	{
		free(mp);
		free(ms);
	}
	PG_END_TRY();
}

/*
 * The first step of every push, tracking and fees alike: find the payload
 * (the form's field param for kuaidi100, else the body) and check the
 * signature over the bytes received, as the provider's dialect signs
 * them; what (tracking, fee) names the push in messages.  Returns only if
 * the signature is good: true with *payload (palloc'd, or the body
 * itself), false when a kuaidi100 form has no param.
 */
bool
tracking_verify_push(TrackProvider *p, const char *what, Jsonb *headers, const char *body,
					 size_t len, char **payload, size_t *plen)
{
	char	   *param = NULL;
	char	   *sign = NULL;

	if (p->routine->form_push)
		form_fields(body, len, &param, &sign);
	verify_push(p, what, headers, body, len, param, sign);
	if (p->routine->form_push)
	{
		if (param == NULL)
			return false;
		*payload = param;
		*plen = strlen(param);
		return true;
	}
	*payload = unconstify(char *, body);
	*plen = len;
	return true;
}

/*
 * Verify one push of provider p and read its events into palloc'd memory:
 * steps 1 to 3 above.  Raises SS401 or SS400 as ingest_tracking()
 * documents; touches no table.
 */
static EventBatch *
tracking_read_push(TrackProvider *p, const char *body, size_t len,
				   Jsonb *headers)
{
	char	   *payload;
	size_t		plen;
	TrackEventList list;
	char		errbuf[256];
	bool		ok;

	if (tracking_verify_push(p, "tracking", headers, body, len, &payload, &plen))
	{
		if (p->routine->read_tracking)
			ok = p->routine->read_tracking(payload, plen, &list, errbuf, sizeof(errbuf));
		else
		{
			ok = false;
			memset(&list, 0, sizeof(list));
			snprintf(errbuf, sizeof(errbuf), "dialect \"%s\" has no tracking payload", p->dialect);
		}
	}
	else
	{
		ok = false;
		memset(&list, 0, sizeof(list));
		snprintf(errbuf, sizeof(errbuf), "the form has no field param");
	}
	if (!ok)
	{
		shipsync_free_tracking(&list);
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("tracking push for provider \"%s\" is not a %s tracking payload", p->name, p->dialect),
				 errdetail("%c%s.", pg_toupper((unsigned char) errbuf[0]), errbuf + 1),
				 errhint("See docs/wire-contract.md for the payload of each dialect.")));
	}
	return batch_from_list(p, &list);
}

/*
 * Record a call of ingest_tracking() in shipsync.audit_log, as retry() and
 * the other functions that change data are recorded: who fed events to
 * which provider, and what they changed (summary, the function's result
 * so far: a JSON object still open).  Never the body, which holds the
 * customers' addresses.  The receiver's pushes take
 * _ingest_tracking_batch(), and are not recorded here (the sender's signed
 * data, by the thousand an hour).  The caller is connected to SPI.
 */
static void
tracking_audit_call(const char *pname, const char *summary)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		args[2];

	args[0] = CStringGetTextDatum(pname);
	args[1] = CStringGetTextDatum(psprintf("%s}", summary));
	if (SPI_execute_with_args("SELECT shipsync._audit('ingest_tracking', 'provider', $1, NULL,"
							  " $2::pg_catalog.jsonb - 'provider')",
							  2, types, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "recording ingest_tracking() in shipsync.audit_log failed");
}

/*
 * shipsync.ingest_tracking(provider text, body text, headers jsonb)
 */
Datum
shipsync_ingest_tracking(PG_FUNCTION_ARGS)
{
	char	   *pname;
	text	   *body_t;
	Jsonb	   *headers = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	TrackProvider *p;
	EventBatch *b;
	TrackSummary sum = {0};
	StringInfoData out;
	const char *reply;
	MemoryContext cxt = CurrentMemoryContext;

	shipsync_require_extension_version("shipsync.ingest_tracking()");
	body_t = shipsync_push_args(fcinfo, "provider", "tracking push for provider",
								"Pass the request body exactly as received.", &pname);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	p = provider_lookup(pname);
	b = tracking_read_push(p, VARDATA_ANY(body_t), VARSIZE_ANY_EXHDR(body_t), headers);
	tracking_apply_batch(p, b, &sum);

	MemoryContextSwitchTo(cxt);
	initStringInfo(&out);
	appendStringInfoString(&out, "{\"provider\": ");
	escape_json(&out, p->name);
	append_count(&out, "events", b->n);
	append_count(&out, "new", sum.n_new);
	append_count(&out, "duplicate", sum.n_duplicate);
	append_count(&out, "unmatched", sum.n_unmatched);
	append_count(&out, "matched", sum.n_matched);
	append_count(&out, "expired", sum.n_expired);
	append_count(&out, "shipments_changed", sum.n_changed);
	tracking_audit_call(p->name, out.data);
	reply = tracking_reply(p);
	if (reply)
		appendStringInfo(&out, ", \"reply\": %s", reply);
	appendStringInfoChar(&out, '}');
	SPI_finish();
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(out.data)));
}

/* ---------- many pushes of one provider at once (the receiver) ---------- */

/* The events of batches b[0..n-1] (NULL ones skipped) as one batch */
static EventBatch *
batch_concat(EventBatch **bs, int n)
{
	EventBatch *all = palloc0(sizeof(EventBatch));
	int			total = 0;
	int			k = 0;

	for (int i = 0; i < n; i++)
		if (bs[i])
			total += bs[i]->n;
	all->n = total;
#define BATCH_ARRAY(f, T) all->f = palloc(sizeof(T) * Max(total, 1))
	BATCH_ARRAY(keys, Datum);
	BATCH_ARRAY(tns, Datum);
	BATCH_ARRAY(raws, Datum);
	BATCH_ARRAY(details, Datum);
	BATCH_ARRAY(ats, Datum);
	BATCH_ARRAY(locs, Datum);
	BATCH_ARRAY(descrs, Datum);
	BATCH_ARRAY(nraws, bool);
	BATCH_ARRAY(ndetails, bool);
	BATCH_ARRAY(nlocs, bool);
	BATCH_ARRAY(ndescrs, bool);
#undef BATCH_ARRAY
	for (int i = 0; i < n; i++)
	{
		EventBatch *b = bs[i];

		for (int j = 0; b && j < b->n; j++, k++)
		{
			all->keys[k] = b->keys[j];
			all->tns[k] = b->tns[j];
			all->raws[k] = b->raws[j];
			all->details[k] = b->details[j];
			all->ats[k] = b->ats[j];
			all->locs[k] = b->locs[j];
			all->descrs[k] = b->descrs[j];
			all->nraws[k] = b->nraws[j];
			all->ndetails[k] = b->ndetails[j];
			all->nlocs[k] = b->nlocs[j];
			all->ndescrs[k] = b->ndescrs[j];
		}
	}
	return all;
}

/* What became of one push of a batch */
typedef struct PushOutcome
{
	EventBatch *events;			/* read and verified; NULL: failed */
	char		sqlstate[6];	/* of the failure, "" when it went in */
	char	   *message;		/* errmsg: what the sender is told */
	char	   *detail;			/* errdetail, or NULL: for the log */
} PushOutcome;

/* One step of a batch, run by shipsync_subxact() */
typedef struct BatchStep
{
	TrackProvider *p;
	const char *body;			/* reading a push: its body and headers */
	size_t		len;
	Jsonb	   *headers;
	EventBatch *apply;			/* or applying these events */
	EventBatch *read;			/* what reading found */
} BatchStep;

static void
batch_step_run(void *arg)
{
	BatchStep  *st = (BatchStep *) arg;
	TrackSummary sum = {0};

	if (st->apply == NULL)
		st->read = tracking_read_push(st->p, st->body, st->len, st->headers);
	else
		tracking_apply_batch(st->p, st->apply, &sum);
}

/*
 * Read one push (b == NULL) or apply batch b in a subtransaction of its
 * own.  On an error nothing the step did remains, the error is kept in
 * *o, and false is returned.
 */
static bool
batch_step(TrackProvider *p, const char *body, size_t len, Jsonb *headers,
		   EventBatch *b, PushOutcome *o)
{
	BatchStep	st = {p, body, len, headers, b, NULL};
	ErrorData  *e = shipsync_subxact(batch_step_run, &st);

	o->events = st.read;
	if (e == NULL)
		return true;
	strlcpy(o->sqlstate, unpack_sql_state(e->sqlerrcode), sizeof(o->sqlstate));
	o->message = pstrdup(e->message);
	o->detail = e->detail ? pstrdup(e->detail) : NULL;
	o->events = NULL;
	FreeErrorData(e);
	return false;
}

/*
 * The pushes of good[0..n-1] (ngood of them not NULL) applied one by one
 * after applying them together failed with *whole; a push that fails gets
 * its outcome in o[] and leaves good[].  When the whole ran out of time
 * waiting for a lock (lock_not_available: an order row or the order table
 * held by another session), that lock is taken as still held: the pushes
 * wait for a lock at most RECV_LOCK_HELD_MS each, so that those it holds
 * back fail at once and the others go through.  Waiting the whole
 * lock_timeout again for each, a batch of 256 pushes onto a table under
 * ALTER TABLE held the receiver, every other table's pushes with it, for
 * over four minutes.
 */
static void
batch_one_by_one(TrackProvider *p, EventBatch **good, PushOutcome *o, int n,
				 int ngood, PushOutcome *whole)
{
	int			nest = NewGUCNestLevel();

	if (strcmp(whole->sqlstate, "55P03") == 0 && ngood > 1 &&
		(LockTimeout == 0 || LockTimeout > RECV_LOCK_HELD_MS))
		(void) set_config_option("lock_timeout", CppAsString2(RECV_LOCK_HELD_MS),
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	for (int i = 0; i < n; i++)
	{
		if (good[i] == NULL)
			continue;
		if (ngood == 1)
			o[i] = *whole;
		else if (batch_step(p, NULL, 0, NULL, good[i], &o[i]))
			continue;
		good[i] = NULL;
	}
	AtEOXact_GUC(true, nest);
}

PG_FUNCTION_INFO_V1(shipsync_ingest_tracking_batch);

/*
 * shipsync._ingest_tracking_batch(provider text, bodies text[],
 * headers jsonb[]): what ingest_tracking() does to each push, for many
 * pushes of one provider in one call.  Each push is verified and read in a
 * subtransaction of its own, so a forged or malformed one fails alone;
 * the events of all the others are then stored and folded by one
 * _apply_tracking (the per-call cost of a push of one event is mostly that
 * statement's), and only if that fails, push by push.  One row per push:
 * its ordinal, and the SQLSTATE and message of its failure (with its
 * detail, if any, as the result {"detail"}: the receiver logs it but never
 * answers it) or its result ({"provider", "events"} and the "reply" of
 * kuaidi100 and sf_express).
 */
Datum
shipsync_ingest_tracking_batch(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *pname;
	Datum	   *bodies;
	Datum	   *hdrs;
	bool	   *bnulls;
	bool	   *hnulls;
	int			n,
				nh;
	TrackProvider *p;
	PushOutcome *o;
	EventBatch **good;
	PushOutcome whole = {0};
	int			ngood = 0;
	const char *reply;
	MemoryContext cxt;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("provider, bodies and headers must not be null")));
	InitMaterializedSRF(fcinfo, 0);
	cxt = CurrentMemoryContext;
	pname = text_to_cstring(PG_GETARG_TEXT_PP(0));
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(1), TEXTOID, -1, false, TYPALIGN_INT,
					  &bodies, &bnulls, &n);
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(2), JSONBOID, -1, false, TYPALIGN_INT,
					  &hdrs, &hnulls, &nh);
	if (nh != n)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("bodies and headers must have the same length")));
	o = palloc0(sizeof(PushOutcome) * Max(n, 1));
	good = palloc0(sizeof(EventBatch *) * Max(n, 1));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	p = provider_lookup(pname);
	for (int i = 0; i < n; i++)
	{
		text	   *t = bnulls[i] ? NULL : DatumGetTextPP(bodies[i]);

		if (t == NULL)
		{
			strlcpy(o[i].sqlstate, "SS400", sizeof(o[i].sqlstate));
			o[i].message = psprintf("tracking push for provider \"%s\" has no body", p->name);
			continue;
		}
		if (batch_step(p, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t),
					   hnulls[i] ? NULL : DatumGetJsonbP(hdrs[i]), NULL, &o[i]))
			good[i] = o[i].events;
	}
	/*
	 * Together, or one by one when that fails; a push alone is not tried
	 * twice (a lock it waited for would be waited for again, another
	 * shipsync.receiver_lock_timeout).
	 */
	for (int i = 0; i < n; i++)
		ngood += good[i] != NULL;
	if (ngood > 0 && !batch_step(p, NULL, 0, NULL, batch_concat(good, n), &whole))
		batch_one_by_one(p, good, o, n, ngood, &whole);

	/*
	 * The rows are made before SPI_finish(): the events read, the messages
	 * and the provider all live in SPI's procedure context, which it frees
	 * (the tuplestore keeps copies).
	 */
	MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	reply = tracking_reply(p);
	for (int i = 0; i < n; i++)
	{
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		values[0] = Int32GetDatum(i + 1);
		if (good[i])
		{
			nulls[1] = nulls[2] = true;
			values[3] = DirectFunctionCall1(jsonb_in, CStringGetDatum(
				psprintf("{\"provider\": %s, \"events\": %d%s%s}",
						 shipsync_quote_json(p->name), good[i]->n,
						 reply ? ", \"reply\": " : "", reply ? reply : "")));
		}
		else
		{
			values[1] = CStringGetTextDatum(o[i].sqlstate);
			values[2] = CStringGetTextDatum(o[i].message ? o[i].message : "");
			if (o[i].detail != NULL)
				values[3] = DirectFunctionCall1(jsonb_in, CStringGetDatum(
					psprintf("{\"detail\": %s}", shipsync_quote_json(o[i].detail))));
			else
				nulls[3] = true;
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	SPI_finish();
	MemoryContextSwitchTo(cxt);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(shipsync_hmac_sha256_sql);
PG_FUNCTION_INFO_V1(shipsync_verify_standard_webhooks_at);

/*
 * shipsync._hmac_sha256(key bytea, msg bytea): for tests and benchmarks
 * that sign what they push.
 */
Datum
shipsync_hmac_sha256_sql(PG_FUNCTION_ARGS)
{
	bytea	   *key = PG_GETARG_BYTEA_PP(0);
	bytea	   *msg = PG_GETARG_BYTEA_PP(1);
	bytea	   *out = palloc(VARHDRSZ + 32);

	if (!shipsync_hmac_sha256(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key),
							  VARDATA_ANY(msg), VARSIZE_ANY_EXHDR(msg),
							  (unsigned char *) VARDATA(out)))
		elog(ERROR, "could not compute an HMAC-SHA256");
	SET_VARSIZE(out, VARHDRSZ + 32);
	PG_RETURN_BYTEA_P(out);
}

/*
 * shipsync._verify_standard_webhooks(secret, id, timestamp, signature,
 * body, now): the Standard Webhooks check with the clock given, so that
 * the published vectors (signed in 2021) can be checked as known answers.
 * Returns NULL when valid, else the reason.
 */
Datum
shipsync_verify_standard_webhooks_at(PG_FUNCTION_ARGS)
{
	const char *reason = NULL;
	text	   *body;

	for (int i = 0; i < 6; i++)
		if (PG_ARGISNULL(i) && i != 1 && i != 2 && i != 3)
			PG_RETURN_TEXT_P(cstring_to_text("missing argument"));
	body = PG_GETARG_TEXT_PP(4);
	if (shipsync_verify_standard_webhooks(text_to_cstring(PG_GETARG_TEXT_PP(0)),
										  PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)),
										  PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2)),
										  PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3)),
										  VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body),
										  (long) PG_GETARG_INT64(5), WEBHOOK_TOLERANCE_S,
										  &reason) == SIG_OK)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(reason));
}

PG_FUNCTION_INFO_V1(shipsync_match_parked);

/*
 * shipsync._match_parked(): deferred constraint trigger on shipsync.shipment.
 * When a shipment gets a tracking number (or, multi-piece, waybills) that
 * parked events are waiting for, they are matched at the end of the transaction that recorded it --
 * after the dispatcher's own write-back of the create, which they then
 * overrule -- and their statuses are applied and written back like a push.
 */
Datum
shipsync_match_parked(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	static SPIPlanPtr probe_plan = NULL;
	static SPIPlanPtr any_plan = NULL;
	/* this transaction found nothing parked at all: skip the other rows */
	static LocalTransactionId none_parked_in = InvalidLocalTransactionId;
	HeapTuple	tup;
	TupleDesc	desc;
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};
	bool		isnull1,
				isnull2,
				isnull3;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		!TRIGGER_FIRED_AFTER(td->tg_event))
		elog(ERROR, "shipsync._match_parked() must be an AFTER ROW trigger");
	/*
	 * Looked first: in a burst every shipment of the apply's transaction
	 * comes here, and finding the two columns by name was 1.5 thousand
	 * CPU instructions a shipment.
	 */
	if (none_parked_in == MyProc->lxid)
		return PointerGetDatum(NULL);
	tup = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	desc = td->tg_relation->rd_att;
	args[0] = SPI_getbinval(tup, desc, SPI_fnumber(desc, "provider_id"), &isnull1);
	args[1] = SPI_getbinval(tup, desc, SPI_fnumber(desc, "tracking_number"), &isnull2);
	/* and the other waybills of a multi-piece shipment (SF: child, return) */
	args[2] = SPI_getbinval(tup, desc, SPI_fnumber(desc, "waybills"), &isnull3);
	/* (a tracking provider's record may hold pieces and no main waybill) */
	if (isnull1 || (isnull2 && isnull3))
		return PointerGetDatum(NULL);
	if (isnull2)
		nulls[1] = 'n';
	if (isnull3)
		nulls[2] = 'n';

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/*
	 * The dispatcher records shipments by the thousand, and parked events
	 * are rare: one look per transaction at whether there are any.  (What
	 * another transaction parks meanwhile is matched by the next push or
	 * poll of its provider, which looks for parked events first.)
	 */
	if (any_plan == NULL)
		any_plan = shipsync_prepare_saved("SELECT 1 FROM shipsync.unmatched_event LIMIT 1", 0, NULL);
	if (SPI_execute_plan(any_plan, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "looking for parked tracking events failed");
	if (SPI_processed == 0)
	{
		none_parked_in = MyProc->lxid;
		SPI_finish();
		return PointerGetDatum(NULL);
	}
	if (probe_plan == NULL)
	{
		Oid			t[3] = {INT4OID, TEXTOID, JSONBOID};

		probe_plan = shipsync_prepare_saved(
			"SELECT p.name FROM shipsync.unmatched_event u"
			" JOIN shipsync.provider p ON p.provider_id = u.provider_id"
			" WHERE u.provider_id = $1 AND u.tracking_number IN"
			"  (SELECT $2 UNION ALL"
			"   SELECT w->>'waybillNo' FROM jsonb_array_elements("
			"     CASE jsonb_typeof($3) WHEN 'array' THEN $3 ELSE '[]' END) w)"
			" LIMIT 1", 3, t);
	}
	if (SPI_execute_plan(probe_plan, args, nulls, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "looking for parked tracking events failed");
	if (SPI_processed > 0)
	{
		TrackProvider *p = provider_lookup(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
		EventBatch *b = palloc0(sizeof(EventBatch));
		TrackSummary sum = {0};

		tracking_apply_batch(p, b, &sum);
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * The status fold, one event at a time in event-time order: the rules of
 * docs/architecture.md, over the rank and flags of shipsync.canonical_status
 * that the caller joins in.  C rather than PL/pgSQL: it runs once per
 * event of every touched shipment at every push.
 */
typedef struct StatusFold
{
	char	   *status;			/* NULL until a known status was seen */
	char	   *raw;
	int32		rank;
	bool		terminal;
	bool		recoverable;
} StatusFold;

PG_FUNCTION_INFO_V1(shipsync_status_step);
PG_FUNCTION_INFO_V1(shipsync_status_final);

Datum
shipsync_status_step(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt;
	StatusFold *st;
	char	   *status;
	int32		rank;
	bool		terminal;
	bool		recoverable;
	bool		apply;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "shipsync._status_step() called outside an aggregate");
	if (PG_ARGISNULL(0))
		st = MemoryContextAllocZero(aggcxt, sizeof(StatusFold));
	else
		st = (StatusFold *) PG_GETARG_POINTER(0);
	if (PG_ARGISNULL(1) || PG_ARGISNULL(3))
		PG_RETURN_POINTER(st);
	status = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (strcmp(status, "unknown") == 0)
		PG_RETURN_POINTER(st);
	rank = PG_GETARG_INT32(3);
	terminal = !PG_ARGISNULL(4) && PG_GETARG_BOOL(4);
	recoverable = !PG_ARGISNULL(5) && PG_GETARG_BOOL(5);

	/*
	 * The first known status applies; then, unless the shipment is in a
	 * terminal status: a higher rank, anything after a recoverable or an
	 * expired status, and the provider's expiry message itself.
	 */
	apply = st->status == NULL ||
		(!st->terminal &&
		 (rank > st->rank || st->recoverable ||
		  strcmp(st->status, "expired") == 0 || strcmp(status, "expired") == 0));
	if (apply)
	{
		if (st->status)
			pfree(st->status);
		if (st->raw)
			pfree(st->raw);
		st->status = MemoryContextStrdup(aggcxt, status);
		st->raw = PG_ARGISNULL(2) ? NULL :
			MemoryContextStrdup(aggcxt, text_to_cstring(PG_GETARG_TEXT_PP(2)));
		st->rank = rank;
		st->terminal = terminal;
		st->recoverable = recoverable;
	}
	PG_RETURN_POINTER(st);
}

/* {status, raw status} of the fold; NULL if no known status was seen */
Datum
shipsync_status_final(PG_FUNCTION_ARGS)
{
	StatusFold *st = PG_ARGISNULL(0) ? NULL : (StatusFold *) PG_GETARG_POINTER(0);
	Datum		elems[2];
	bool		nulls[2] = {false, false};
	int			dims[1] = {2};
	int			lbs[1] = {1};

	if (st == NULL || st->status == NULL)
		PG_RETURN_NULL();
	elems[0] = CStringGetTextDatum(st->status);
	elems[1] = st->raw ? CStringGetTextDatum(st->raw) : (Datum) 0;
	nulls[1] = st->raw == NULL;
	PG_RETURN_ARRAYTYPE_P(construct_md_array(elems, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Apply the answer of a pull (GET {base_url}/shipments/{id}/events, the
 * generic contract: {"events": [...]}) for a provider, like a push but
 * without a signature: the dispatcher asked for it over its own
 * connection.  SPI must be connected, in a transaction.  Returns how many
 * shipments changed status; a body that is not the contract is an ERROR
 * (SS400), which the caller isolates.
 */
int64
tracking_apply_pulled(const char *provider_name, const char *body, size_t len)
{
	TrackProvider *p = provider_lookup(provider_name);
	TrackEventList list;
	char		errbuf[256];
	TrackSummary sum = {0};

	if (!shipsync_parse_tracking_generic(body, len, &list, errbuf, sizeof(errbuf)))
	{
		shipsync_free_tracking(&list);
		ereport(ERROR,
				(errcode(ERRCODE_SHIPSYNC_BAD_PAYLOAD),
				 errmsg("tracking pulled from provider \"%s\" is not a generic tracking payload", p->name),
				 errdetail("%c%s.", pg_toupper((unsigned char) errbuf[0]), errbuf + 1),
				 errhint("See docs/wire-contract.md, \"Tracking pull\".")));
	}
	tracking_apply_batch(p, batch_from_list(p, &list), &sum);
	return sum.n_changed;
}
