/*-------------------------------------------------------------------------
 *
 * filter.c
 *		Expressions that users hand to the extension: cancel_when, and the
 *		check of the statements attach() builds around them.
 *
 * attach() runs as the extension's owner, and the statements it builds are
 * planned there (EXPLAIN, to prove them), in the dispatcher (a superuser
 * session) and in render_request().  An expression taken as SQL text would
 * be planned with those rights: the planner runs an IMMUTABLE function with
 * constant arguments while planning, so cancel_when => 'myschema.evil()'
 * ran evil() as a superuser.  Two walls stand in the way now.
 *
 * The grammar: shipsync._cancel_when_sql() parses the expression with
 * PostgreSQL's own raw parser, accepts only columns of the table (column or
 * t.column), literals, the comparisons =, <>, <, <=, >, >=, IS [NOT] NULL,
 * IN and NOT IN over a list, AND, OR and NOT, and prints it back with every
 * operator as OPERATOR(pg_catalog.op).  Nothing of the caller's text
 * reaches the statement but identifiers (quoted) and literals (quoted):
 * no function, no operator, cast, sub-select or comment of theirs.
 *
 * The rights: shipsync._explain_as_owner() proves a built statement as the
 * table's owner, in a restricted operation (security.c), as the dispatcher
 * runs it; attach() only accepts callers who have the owner's rights
 * already, so whatever still runs (a type's comparison, an implicit cast of
 * the owner's) runs with rights the caller has.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/parser.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "pg_shipsync.h"

PG_FUNCTION_INFO_V1(shipsync_cancel_when_sql);
PG_FUNCTION_INFO_V1(shipsync_explain_as_owner);

#define FILTER_HINT "Use columns of the table (status or t.status), literals, " \
	"the comparisons =, <>, <, <=, >, >=, IS [NOT] NULL, IN (...), AND, OR and NOT."

static void filter_deparse(Node *node, StringInfo out);
static void filter_refuse(const char *what, const char *detail) pg_attribute_noreturn();

/* Refuse one construct of the expression; what names it. */
static void
filter_refuse(const char *what, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("option \"cancel_when\" may not contain %s", what),
			 detail ? errdetail("%s", detail) : 0,
			 errhint(FILTER_HINT)));
}

/* A column of the table: name, or t.name */
static void
filter_column(ColumnRef *cref, StringInfo out)
{
	int			n = list_length(cref->fields);
	Node	   *last = llast(cref->fields);

	if (!IsA(last, String) ||
		n > 2 || (n == 2 && strcmp(strVal(linitial(cref->fields)), "t") != 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"cancel_when\" may name only columns of the table"),
				 errdetail("It names %s.", NameListToString(cref->fields)),
				 errhint("Name a column as status or t.status.")));
	if (n == 2)
		appendStringInfoString(out, "t.");
	appendStringInfoString(out, quote_identifier(strVal(last)));
}

/* A literal, quoted again: a string, a number, true, false or NULL */
static void
filter_literal(A_Const *c, StringInfo out)
{
	if (c->isnull)
	{
		appendStringInfoString(out, "NULL");
		return;
	}
	switch (nodeTag(&c->val))
	{
		case T_Integer:
			appendStringInfo(out, "(%d)", intVal(&c->val));
			break;
		case T_Float:
			/* the scanner's digits, a sign at most: parenthesised */
			appendStringInfo(out, "(%s)", c->val.fval.fval);
			break;
		case T_Boolean:
			appendStringInfoString(out, boolVal(&c->val) ? "true" : "false");
			break;
		case T_String:
			appendStringInfoString(out, quote_literal_cstr(strVal(&c->val)));
			break;
		default:
			filter_refuse("a bit string", NULL);
	}
}

/* A comparison operator, as pg_catalog's; NULL for any other name */
static const char *
filter_operator(List *name)
{
	static const char *const ops[] = {"=", "<>", "<", "<=", ">", ">="};

	if (list_length(name) != 1)
		return NULL;
	for (size_t i = 0; i < lengthof(ops); i++)
		if (strcmp(strVal(linitial(name)), ops[i]) == 0)
			return ops[i];
	return NULL;
}

/* What an A_Expr outside the grammar is, for the error's detail */
static char *
filter_a_expr_name(A_Expr *e)
{
	switch (e->kind)
	{
		case AEXPR_OP_ANY:
		case AEXPR_OP_ALL:
			return pstrdup("It compares with ANY or ALL.");
		case AEXPR_DISTINCT:
		case AEXPR_NOT_DISTINCT:
			return pstrdup("It uses IS [NOT] DISTINCT FROM.");
		case AEXPR_NULLIF:
			return pstrdup("It uses NULLIF.");
		case AEXPR_LIKE:
		case AEXPR_ILIKE:
		case AEXPR_SIMILAR:
			return pstrdup("It uses LIKE, ILIKE or SIMILAR TO.");
		case AEXPR_BETWEEN:
		case AEXPR_NOT_BETWEEN:
		case AEXPR_BETWEEN_SYM:
		case AEXPR_NOT_BETWEEN_SYM:
			return pstrdup("It uses BETWEEN.");
		default:
			return psprintf("It uses operator %s.", NameListToString(e->name));
	}
}

/* a OP b, a IN (...) and a NOT IN (...) */
static void
filter_a_expr(A_Expr *e, StringInfo out)
{
	const char *op = filter_operator(e->name);
	ListCell   *lc;

	if ((e->kind != AEXPR_OP && e->kind != AEXPR_IN) || op == NULL || e->lexpr == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"cancel_when\" may use only the operators =, <>, <, <=, >, >= and IN"),
				 errdetail("%s", filter_a_expr_name(e)),
				 errhint(FILTER_HINT)));
	if (e->kind == AEXPR_OP)
	{
		appendStringInfoChar(out, '(');
		filter_deparse(e->lexpr, out);
		appendStringInfo(out, " OPERATOR(pg_catalog.%s) ", op);
		filter_deparse(e->rexpr, out);
		appendStringInfoChar(out, ')');
		return;
	}
	/* x IN (a, b) is x = a OR x = b; x NOT IN (a, b) is x <> a AND x <> b */
	if (!IsA(e->rexpr, List))
		filter_refuse("IN over anything but a list", NULL);
	appendStringInfoChar(out, '(');
	foreach(lc, (List *) e->rexpr)
	{
		if (foreach_current_index(lc) > 0)
			appendStringInfoString(out, strcmp(op, "=") == 0 ? " OR " : " AND ");
		filter_deparse(e->lexpr, out);
		appendStringInfo(out, " OPERATOR(pg_catalog.%s) ", op);
		filter_deparse(lfirst(lc), out);
	}
	appendStringInfoChar(out, ')');
}

/* Print node back as SQL, or refuse it. */
static void
filter_deparse(Node *node, StringInfo out)
{
	ListCell   *lc;

	check_stack_depth();
	switch (nodeTag(node))
	{
		case T_ColumnRef:
			filter_column((ColumnRef *) node, out);
			break;
		case T_A_Const:
			filter_literal((A_Const *) node, out);
			break;
		case T_A_Expr:
			filter_a_expr((A_Expr *) node, out);
			break;
		case T_NullTest:
			appendStringInfoChar(out, '(');
			filter_deparse((Node *) ((NullTest *) node)->arg, out);
			appendStringInfoString(out, ((NullTest *) node)->nulltesttype == IS_NULL ?
								   " IS NULL)" : " IS NOT NULL)");
			break;
		case T_BoolExpr:
			{
				BoolExpr   *b = (BoolExpr *) node;

				appendStringInfoString(out, b->boolop == NOT_EXPR ? "(NOT " : "(");
				foreach(lc, b->args)
				{
					if (foreach_current_index(lc) > 0)
						appendStringInfoString(out, b->boolop == AND_EXPR ? " AND " : " OR ");
					filter_deparse(lfirst(lc), out);
				}
				appendStringInfoChar(out, ')');
				break;
			}
		case T_FuncCall:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"cancel_when\" may not call functions"),
					 errdetail("It calls %s().", NameListToString(((FuncCall *) node)->funcname)),
					 errhint(FILTER_HINT)));
			break;
		case T_SubLink:
			filter_refuse("a sub-select", NULL);
			break;
		case T_TypeCast:
			filter_refuse("a cast", "Literals take the type of the column they are compared with.");
			break;
		case T_ParamRef:
			filter_refuse("a parameter", NULL);
			break;
		case T_CaseExpr:
			filter_refuse("CASE", NULL);
			break;
		case T_A_ArrayExpr:
			filter_refuse("an array", NULL);
			break;
		case T_SQLValueFunction:
			filter_refuse("a function such as CURRENT_DATE", NULL);
			break;
		default:
			filter_refuse("this kind of expression", NULL);
	}
}

/*
 * shipsync._cancel_when_sql(expr text) RETURNS text: the expression in the
 * restricted grammar, printed with pg_catalog's operators; an ERROR naming
 * the first construct outside it.
 */
Datum
shipsync_cancel_when_sql(PG_FUNCTION_ARGS)
{
	char	   *expr = text_to_cstring(PG_GETARG_TEXT_PP(0));
	MemoryContext cxt = CurrentMemoryContext;
	List	   *raw = NIL;
	SelectStmt *sel;
	ResTarget  *rt;
	StringInfoData out;

	PG_TRY();
	{
		raw = raw_parser(psprintf("SELECT %s", expr), RAW_PARSE_DEFAULT);
	}
	PG_CATCH();
	{
		ErrorData  *ed;

		/* only the scanner and grammar ran: nothing to clean up but this */
		MemoryContextSwitchTo(cxt);
		ed = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"cancel_when\" is not a valid expression"),
				 errdetail("The parser says: %s.", ed->message),
				 errhint(FILTER_HINT)));
	}
	PG_END_TRY();

	sel = list_length(raw) == 1 ? (SelectStmt *) linitial_node(RawStmt, raw)->stmt : NULL;
	if (sel == NULL || !IsA(sel, SelectStmt) || sel->op != SETOP_NONE ||
		list_length(sel->targetList) != 1 || sel->distinctClause || sel->intoClause ||
		sel->fromClause || sel->whereClause || sel->groupClause || sel->havingClause ||
		sel->windowClause || sel->valuesLists || sel->sortClause || sel->limitOffset ||
		sel->limitCount || sel->lockingClause || sel->withClause)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"cancel_when\" must be one boolean expression"),
				 errhint("For example \"status = 'cancelled'\".")));
	rt = linitial_node(ResTarget, sel->targetList);
	if (rt->name || rt->indirection)
		filter_refuse("an alias", NULL);

	initStringInfo(&out);
	filter_deparse(rt->val, &out);
	PG_RETURN_TEXT_P(cstring_to_text(out.data));
}

/*
 * shipsync._explain_as_owner(tbl regclass, stmt text, argtypes regtype[]):
 * EXPLAIN stmt as the owner of tbl, in a restricted operation, each
 * parameter an empty array of its type.  Proves a statement attach() built
 * the way the dispatcher will run it, with no more rights.
 */
Datum
shipsync_explain_as_owner(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *stmt = text_to_cstring(PG_GETARG_TEXT_PP(1));
	ArrayType  *typarr = PG_GETARG_ARRAYTYPE_P(2);
	Datum	   *types;
	int			n;
	Oid		   *argtypes;
	Datum	   *values;
	ShipsyncUserSave save;
	int			rc;

	deconstruct_array(typarr, REGTYPEOID, sizeof(Oid), true, TYPALIGN_INT,
					  &types, NULL, &n);
	argtypes = palloc(sizeof(Oid) * Max(n, 1));
	values = palloc(sizeof(Datum) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		Oid			elem;

		argtypes[i] = DatumGetObjectId(types[i]);
		elem = get_element_type(argtypes[i]);
		if (!OidIsValid(elem))
			elog(ERROR, "parameter %d of a statement to explain is not an array", i + 1);
		values[i] = PointerGetDatum(construct_empty_array(elem));
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	shipsync_check_owner_sees_all(relid, shipsync_table_owner(relid));
	shipsync_become_owner(shipsync_table_owner(relid), &save);
	PG_TRY();
	{
		rc = SPI_execute_with_args(psprintf("EXPLAIN %s", stmt), n, argtypes, values,
								   NULL, false, 0);
		if (rc != SPI_OK_UTILITY)
			elog(ERROR, "EXPLAIN failed: %s", SPI_result_code_string(rc));
	}
	PG_FINALLY();
	{
		shipsync_restore_user(&save);
	}
	PG_END_TRY();
	SPI_finish();
	PG_RETURN_VOID();
}
