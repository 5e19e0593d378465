-- install/15_filter.sql: Expressions users hand to the extension
-- (cancel_when), and the check of the statements built around them.
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql (these are granted to no one: attach(),
-- reconciliation and resync() call them as the extension's owner or the
-- reconcile worker's superuser).

CREATE FUNCTION @extschema@._cancel_when_sql(expr text)
RETURNS text
AS 'MODULE_PATHNAME', 'shipsync_cancel_when_sql'
LANGUAGE C IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._cancel_when_sql(text) IS
	'Internal: a cancel_when expression checked against its restricted grammar (columns, literals, =, <>, <, <=, >, >=, IS [NOT] NULL, IN, AND, OR, NOT) and printed back with pg_catalog''s operators.';

CREATE FUNCTION @extschema@._explain_as_owner(tbl regclass, stmt text, argtypes regtype[])
RETURNS void
AS 'MODULE_PATHNAME', 'shipsync_explain_as_owner'
LANGUAGE C VOLATILE STRICT
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._explain_as_owner(regclass, text, regtype[]) IS
	'Internal: EXPLAIN a statement built by attach() as the owner of its table, in a restricted operation, each parameter an empty array of its type.';

CREATE FUNCTION @extschema@._select_as_owner_rows(internal)
RETURNS internal
AS 'MODULE_PATHNAME', 'shipsync_select_as_owner_rows'
LANGUAGE C STABLE STRICT
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._select_as_owner_rows(internal) IS
	'Internal: the planner support function of _select_as_owner() and _select_digests_as_owner(): as many rows as keys given, else as the table holds.';

CREATE FUNCTION @extschema@._select_as_owner(tbl regclass, stmt text, keys text[], n integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'shipsync_select_as_owner'
LANGUAGE C VOLATILE
SUPPORT @extschema@._select_as_owner_rows
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._select_as_owner(regclass, text, text[], integer) IS
	'Internal: the rows of a SELECT over an order table built by the extension, run as the table''s owner in a restricted operation ($1 = keys, $2 = n): reconciliation and resync() read order tables only through it.';

CREATE FUNCTION @extschema@._select_digests_as_owner(tbl regclass, stmt text, keys text[], n integer,
	skip text[])
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'shipsync_select_digests_as_owner'
LANGUAGE C VOLATILE
SUPPORT @extschema@._select_as_owner_rows
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._select_digests_as_owner(regclass, text, text[], integer, text[]) IS
	'Internal: _select_as_owner() whose statement''s last column is an order row, returned as its digest (_row_digest(row, skip)), computed as the owner: reconciliation''s CRM pass.';
