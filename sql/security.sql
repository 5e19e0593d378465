-- No escalation, by construction: what the catalogs say about every
-- function of the extension, the grammar of cancel_when, and the trigger
-- functions that refuse to fire on a table that is not their binding's.
-- (test/t/015_escalation.pl makes the attacks with real login roles.)
-- A fresh extension, whatever the suite before left.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_shipsync CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_shipsync;
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	st text; msg text; det text; hin text;
BEGIN
	EXECUTE q;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
		det = PG_EXCEPTION_DETAIL, hin = PG_EXCEPTION_HINT;
	RETURN st || ': ' || msg || coalesce(E'\n  DETAIL: ' || nullif(det, ''), '')
		|| coalesce(E'\n  HINT: ' || nullif(hin, ''), '');
END
$$;
CREATE VIEW pg_temp.ext_functions AS
SELECT p.oid, p.oid::regprocedure AS fn, p.prosecdef, p.proconfig, p.prolang, p.prorettype,
	p.prosqlbody IS NOT NULL AS standard_body
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
	AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_shipsync';

------------------------------------------------------------------------------
-- Every SECURITY DEFINER function pins search_path = pg_catalog, pg_temp.
-- A new one without it appears here, and this test fails.
------------------------------------------------------------------------------
SELECT fn AS definer_without_pinned_search_path, proconfig
FROM pg_temp.ext_functions
WHERE prosecdef
  AND NOT coalesce(proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)
ORDER BY fn::text;
-- (not vacuous: the definer functions there are)
SELECT count(*) >= 10 AS several_definers FROM pg_temp.ext_functions WHERE prosecdef;

-- and so does every function in SQL or PL/pgSQL, definer or not, but those
-- whose body is in standard SQL: that is parsed and bound when the function
-- is created, so no search_path of the caller's changes what it calls
SELECT fn AS unpinned FROM pg_temp.ext_functions
WHERE NOT coalesce(proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)
  AND prolang IN (SELECT oid FROM pg_language WHERE lanname IN ('sql', 'plpgsql'))
  AND NOT standard_body
ORDER BY fn::text;
-- those are internal, and not definers
SELECT fn AS standard_body, prosecdef FROM pg_temp.ext_functions WHERE standard_body ORDER BY fn::text;

-- nothing but _wake() is executable by PUBLIC, and no trigger function by
-- anyone: attach() creates the triggers as the extension's owner
SELECT fn AS executable_by_public FROM pg_temp.ext_functions
WHERE has_function_privilege('public', oid, 'EXECUTE')
ORDER BY fn::text;
SELECT fn AS trigger_function, r.rolname
FROM pg_temp.ext_functions f CROSS JOIN pg_roles r
WHERE f.prorettype = 'trigger'::regtype AND r.rolname LIKE 'shipsync\_%'
  AND has_function_privilege(r.oid, f.oid, 'EXECUTE')
ORDER BY 1, 2;

------------------------------------------------------------------------------
-- cancel_when: the restricted grammar, printed back with pg_catalog's
-- operators
------------------------------------------------------------------------------
SELECT shipsync._cancel_when_sql(e) AS sql
FROM unnest(ARRAY[
	'status = ''void''',
	't.status = ''void''',
	'is_void',
	'NOT t.is_void',
	'status IN (''void'', ''lost'')',
	'status NOT IN (''void'', ''lost'')',
	'amount >= -1.5 AND qty < 3 OR note IS NULL',
	'note IS NOT NULL AND status <> ''x'' AND status != ''y''',
	'(a = 1 OR b <= 2) AND c > 3',
	'flag = true OR flag = false OR x = NULL',
	'"Odd Col" = ''it''''s''',
	'status = E''back\\slash'''
]) AS e;

SELECT pg_temp.err(format('SELECT shipsync._cancel_when_sql(%L)', e))
FROM unnest(ARRAY[
	'shop.evil()',
	'lower(status) = ''void''',
	'status OPERATOR(shop.=) ''x''',
	'status === ''x''',
	'status LIKE ''v%''',
	'status IS DISTINCT FROM ''x''',
	'qty BETWEEN 1 AND 2',
	'status = ANY (ARRAY[''x''])',
	'-qty > 1',
	'status IN (SELECT 1)',
	'EXISTS (SELECT 1)',
	'status::text = ''x''',
	'CASE WHEN true THEN true END',
	'status = $1',
	'created_at < CURRENT_DATE',
	'x.status = ''x''',
	'shop.orders.status = ''x''',
	't.* IS NULL',
	'true AS x',
	'status = ''x'' ORDER BY 1',
	'status = ''x'' FROM pg_authid',
	'true UNION SELECT false',
	'',
	'status = ',
	'status = ''x'') OR (true',
	'true -- comment'
]) AS e;

-- attach() takes it through the grammar; its own checks come first
CREATE TABLE orders (id bigint PRIMARY KEY, status text, waybill text);
SELECT shipsync.create_provider('p', 'generic', 'https://carrier.example');
SELECT pg_temp.err($$SELECT shipsync.attach('orders', 'p', options => '{"cancel_when": "pg_catalog.pg_sleep(0) IS NULL"}')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders', 'p', options => '{"cancel_when": "nope = 1"}')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders', 'p', options => '{"cancel_when": "status"}')$$);
SELECT shipsync.attach('orders', 'p', writeback => '{"tracking_number": "waybill"}',
	options => '{"cancel_when": "status IN (''void'', ''lost'')"}') > 0 AS attached;
SELECT options->>'cancel_when' AS as_given,
	substring(render_sql from 'COALESCE\(\((.*)\), false\)') AS as_run
FROM shipsync.binding;
-- every operator of the statements it built is pg_catalog's
SELECT render_sql ~ '\s(=|<>|>=)\s' AS render_unqualified,
	   substring(writeback_sql from ' WHERE (.*)$') AS writeback_where
FROM shipsync.binding;

------------------------------------------------------------------------------
-- The trigger functions fire only on their binding's table
------------------------------------------------------------------------------
CREATE TABLE other (id bigint PRIMARY KEY, status text);
CREATE TRIGGER forged_capture AFTER INSERT ON other
	FOR EACH ROW EXECUTE FUNCTION shipsync.capture('1', '1', 'id');
SELECT pg_temp.err($$INSERT INTO other VALUES (1, 'x')$$);
DROP TRIGGER forged_capture ON other;
CREATE TRIGGER forged_validate AFTER INSERT ON other
	FOR EACH ROW EXECUTE FUNCTION shipsync._validate('1');
SELECT pg_temp.err($$INSERT INTO other VALUES (1, 'x')$$);
DROP TRIGGER forged_validate ON other;
-- on their own table they do their work
INSERT INTO orders VALUES (1, 'new');
SELECT count(*) AS captured FROM shipsync.inbox;

DROP EXTENSION pg_shipsync CASCADE;
DROP TABLE orders, other;
