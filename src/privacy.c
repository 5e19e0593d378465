/*-------------------------------------------------------------------------
 *
 * privacy.c
 *		Personal data as shipsync_reader sees it: the SQL entry points that
 *		mask values and stored request bodies, and who may see them whole.
 *
 * A request body holds the order's personal values wherever the field map
 * put them.  shipsync._mask_body() masks, in one body, the values at the
 * target paths of the provider profile's rows marked personal
 * (field_map.pii), and the members of the generic body's "order" object
 * (the whole order row) that the binding's option pii marks, or, for
 * members it does not name, that the column convention of mask.c
 * recognises.  JSON bodies are masked as JSON; a form (SF Express's
 * msgData, Kuaidi100's param) has each field that holds JSON masked and
 * encoded again.  A body with nothing personal comes back byte for byte;
 * one that claims to be JSON but is not comes back as "***", never whole.
 *
 * The masking follows the field map as it is now, not as it was when the
 * body was rendered: mark a field personal and every stored body is masked
 * at once.
 *
 * Who sees personal values whole: members of shipsync_operator (and so of
 * shipsync_admin), and superusers, judged on the role the session acts as
 * (after SET ROLE) and not on the owner of a SECURITY DEFINER function
 * that happens to be running: a reader calling render_request() gets the
 * masked body although the function runs as the extension's owner.  Inside
 * a security-restricted operation, on the owner whose code runs (a table
 * owner's trigger the dispatcher fires, a materialized view a superuser
 * refreshes), never on the privileged session that runs it.
 *
 * mask.c does the masking on UTF-8; values are converted from and to the
 * database encoding here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "pg_shipsync.h"

PG_FUNCTION_INFO_V1(shipsync_mask_pii_sql);
PG_FUNCTION_INFO_V1(shipsync_mask_body);
PG_FUNCTION_INFO_V1(shipsync_pii_visible);

/*
 * Text in the database encoding to a UTF-8 C string.  An SQL_ASCII
 * database's text is bytes, maybe not UTF-8 (GBK an old CRM wrote):
 * PostgreSQL's "conversion" would only check them, and an error here made
 * a reader's shipsync.intents fail for every row because of one.  They go
 * to mask.c as they are, which counts a byte that is not UTF-8 as one
 * character (and a body that is not JSON is masked whole).  Not inlined:
 * inside shipsync_mask_body() gcc takes its local for one live across that
 * function's PG_TRY (-Wclobbered).
 */
static pg_noinline char *
to_utf8(text *t)
{
	char	   *s = text_to_cstring(t);

	if (GetDatabaseEncoding() == PG_SQL_ASCII)
		return s;
	/* without a conversion, s itself comes back: terminated */
	return pg_server_to_any(s, strlen(s), PG_UTF8);
}

/* UTF-8 (from to_utf8(), masked) back to the database encoding */
static text *
utf8_to_text(char *s)
{
	if (GetDatabaseEncoding() == PG_SQL_ASCII)
		return cstring_to_text(s);
	return cstring_to_text(pg_any_to_server(s, strlen(s), PG_UTF8));
}

/* A malloc'd UTF-8 string to text in the database encoding, freeing it */
static text *
from_utf8_malloced(char *s)
{
	char	   *copy = pstrdup(s);

	free(s);
	return utf8_to_text(copy);
}

/*
 * shipsync.mask_pii(value text, kind text): value masked as a personal
 * value of kind name, phone, address or email.
 */
Datum
shipsync_mask_pii_sql(PG_FUNCTION_ARGS)
{
	char	   *kind_name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int			kind = shipsync_pii_kind(kind_name);

	if (kind == PII_NONE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown kind of personal value \"%s\"", kind_name),
				 errhint("The kinds are name, phone, address, email, id_number and text.")));
	PG_RETURN_TEXT_P(from_utf8_malloced(shipsync_mask_pii(kind,
														  to_utf8(PG_GETARG_TEXT_PP(0)))));
}

/* ---------- request bodies ---------- */

/* What one call of _mask_body() masks */
typedef struct BodyRules
{
	int			npaths;
	MapPath    *paths;
	int		   *kinds;
	Jsonb	   *columns;		/* the binding's option pii, or NULL */
} BodyRules;

static char *
body_mask_value(int kind, const char *value, void *arg)
{
	return shipsync_mask_pii(kind, value);
}

/*
 * The kind of member of the generic body's order object: as the binding's
 * option pii says (null there: not personal), else by the convention.
 */
static int
body_member_kind(const char *member, void *arg)
{
	BodyRules  *r = (BodyRules *) arg;

	if (r->columns != NULL && JB_ROOT_IS_OBJECT(r->columns))
	{
		JsonbValue	v;

		if (getKeyJsonValueFromContainer(&r->columns->root, member, strlen(member), &v))
		{
			if (v.type != jbvString)
				return PII_NONE;
			return shipsync_pii_kind(pnstrdup(v.val.string.val, v.val.string.len));
		}
	}
	return shipsync_pii_column_kind(member);
}

/* The paths and kinds of _mask_body()'s arrays; unreadable ones skipped */
static void
body_rules_paths(BodyRules *r, ArrayType *paths, ArrayType *kinds)
{
	Datum	   *pd,
			   *kd;
	bool	   *pn,
			   *kn;
	int			np,
				nk;
	char		err[256];

	deconstruct_array(paths, TEXTOID, -1, false, TYPALIGN_INT, &pd, &pn, &np);
	deconstruct_array(kinds, TEXTOID, -1, false, TYPALIGN_INT, &kd, &kn, &nk);
	r->paths = palloc0(sizeof(MapPath) * Max(np, 1));
	r->kinds = palloc(sizeof(int) * Max(np, 1));
	for (int i = 0; i < np && i < nk; i++)
	{
		if (pn[i] || kn[i])
			continue;
		r->kinds[r->npaths] = shipsync_pii_kind(TextDatumGetCString(kd[i]));
		if (r->kinds[r->npaths] == PII_NONE ||
			!shipsync_path_parse(TextDatumGetCString(pd[i]), &r->paths[r->npaths],
								 err, sizeof(err)))
			continue;
		r->npaths++;
	}
}

static void
body_rules_free(BodyRules *r)
{
	for (int i = 0; i < r->npaths; i++)
		shipsync_path_free(&r->paths[i]);
	r->npaths = 0;
}

/*
 * One JSON document masked (UTF-8 in, palloc'd UTF-8 out), NULL when
 * nothing in it is personal; "***" when it is not JSON at all.
 */
static char *
mask_json(BodyRules *r, const char *json, size_t len)
{
	char	   *out = NULL;
	char	   *result;

	if (!shipsync_json_mask(json, len, r->npaths, r->paths, r->kinds, "order",
							body_member_kind, body_mask_value, r, &out))
		return pstrdup("***");
	if (out == NULL)
		return NULL;
	result = pstrdup(out);
	free(out);
	return result;
}

static bool
looks_like_json(const char *s, size_t len)
{
	while (len > 0 && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n'))
	{
		s++;
		len--;
	}
	return len > 0 && (*s == '{' || *s == '[');
}

/*
 * A form body: each field whose value holds JSON masked and encoded again,
 * the rest as it was.  NULL when nothing in it is personal.
 */
static char *
mask_form(BodyRules *r, const char *body, size_t len)
{
	StringInfoData out;
	bool		changed = false;
	size_t		i = 0;

	initStringInfo(&out);
	while (i <= len)
	{
		size_t		j = i;
		size_t		eq = i;
		char	   *name;
		char	   *value;
		char	   *masked = NULL;

		while (j < len && body[j] != '&')
			j++;
		while (eq < j && body[eq] != '=')
			eq++;
		name = pnstrdup(body + i, eq - i);
		value = eq < j ? shipsync_form_field(body + i, j - i, name) : NULL;
		if (value != NULL && looks_like_json(value, strlen(value)))
			masked = mask_json(r, value, strlen(value));
		free(value);
		if (i > 0)
			appendStringInfoChar(&out, '&');
		if (masked != NULL)
		{
			char	   *enc = shipsync_urlencode_form(masked);

			if (enc == NULL)
				shipsync_out_of_memory();
			appendStringInfo(&out, "%s=%s", name, enc);
			free(enc);
			changed = true;
		}
		else
			appendBinaryStringInfo(&out, body + i, j - i);
		i = j + 1;
	}
	return changed ? out.data : NULL;
}

/*
 * shipsync._mask_body(body text, paths text[], kinds text[], columns jsonb):
 * body with its personal values masked (see the file header).
 */
Datum
shipsync_mask_body(PG_FUNCTION_ARGS)
{
	text	   *body;
	char	   *utf8;
	size_t		len;
	BodyRules	r = {0};
	char	   *volatile masked = NULL;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	body = PG_GETARG_TEXT_PP(0);
	r.columns = PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3);
	utf8 = to_utf8(body);
	len = strlen(utf8);

	if (!PG_ARGISNULL(1) && !PG_ARGISNULL(2))
		body_rules_paths(&r, PG_GETARG_ARRAYTYPE_P(1), PG_GETARG_ARRAYTYPE_P(2));
	/* nothing to look for: no rule, and no order row in the body */
	if (r.npaths == 0 && strstr(utf8, "\"order\"") == NULL)
		PG_RETURN_TEXT_P(body);
	PG_TRY();
	{
		masked = looks_like_json(utf8, len) ? mask_json(&r, utf8, len) :
			mask_form(&r, utf8, len);
	}
	PG_FINALLY();
	{
		body_rules_free(&r);
	}
	PG_END_TRY();
	if (masked == NULL)
		PG_RETURN_TEXT_P(body);
	PG_RETURN_TEXT_P(utf8_to_text(masked));
}

/*
 * The role whose code runs now, on whom seeing personal values is judged;
 * InvalidOid: no one may.  The role the session acts as, but inside a
 * security-restricted operation the owner whose code it runs: the table
 * owner's code that the extension runs as that owner (a trigger its
 * write-back fires, in the dispatcher's superuser session), or, in one of
 * PostgreSQL's own (REFRESH MATERIALIZED VIEW, an index build, autovacuum's
 * ANALYZE), the object's owner, the current user.  Judged on the session,
 * a reader's trigger or materialized view that a superuser's session ran
 * read every order whole.  A SECURITY DEFINER function called inside one of
 * PostgreSQL's (the extension's render_request()) hides that owner: no one.
 */
static Oid
pii_judged_role(void)
{
	Oid			owner = shipsync_acting_owner();

	if (OidIsValid(owner))
		return owner;
	if (InSecurityRestrictedOperation())
		return InLocalUserIdChange() ? InvalidOid : GetUserId();
	return GetOuterUserId();
}

/*
 * shipsync._pii_visible(): whether the role whose code runs sees personal
 * values whole (it has the privileges of shipsync_operator).
 */
Datum
shipsync_pii_visible(PG_FUNCTION_ARGS)
{
	Oid			operator_role = get_role_oid("shipsync_operator", true);
	Oid			who = pii_judged_role();

	if (!OidIsValid(who))
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(superuser_arg(who) ||
				   (OidIsValid(operator_role) && has_privs_of_role(who, operator_role)));
}
