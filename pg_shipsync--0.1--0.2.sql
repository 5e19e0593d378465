/* pg_shipsync--0.1--0.2.sql: brings a 0.1 install to 0.2 */

\echo Use "ALTER EXTENSION pg_shipsync UPDATE TO '0.2'" to load this file. \quit

-- First, out of the order of the sections below (each appended at the end
-- as 0.2 grew): every one of them that creates a C function needs the
-- library of 0.2 loaded, so this check (install/00_library.sql) comes
-- before them all.

-- Installing a new version replaces the library on disk, but a server
-- that was not restarted (docs/upgrading.md, step 2) still runs the one it
-- loaded at its start, which lacks this version's C functions: the script
-- failed on the first of them ("could not find function ... in file").
-- The check leaves nothing behind.
DO $library$
DECLARE
	loaded text;
BEGIN
	BEGIN
		CREATE FUNCTION @extschema@._library_version() RETURNS text
			AS 'MODULE_PATHNAME', 'shipsync_library_version' LANGUAGE C STRICT;
		loaded := @extschema@._library_version();
		DROP FUNCTION @extschema@._library_version();
	EXCEPTION
		WHEN undefined_function THEN
			loaded := NULL;		-- a library older than this check
	END;
	-- a later library runs this script too, when an update to a later
	-- version goes through 0.2: only an older one is refused
	IF loaded IS NULL
	   OR pg_catalog.string_to_array(pg_catalog.substring(loaded, E'^[0-9]+(?:\\.[0-9]+)*'), '.')::pg_catalog.int4[]
		  OPERATOR(pg_catalog.<) ARRAY[0, 2] THEN
		RAISE EXCEPTION 'the server runs a library of pg_shipsync older than 0.2%',
			CASE WHEN loaded IS NOT NULL THEN format(' (%s)', loaded) ELSE '' END
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'Installing a version replaces the library on disk; the server keeps the library it loaded at its start until it is restarted.',
				  HINT = 'Restart PostgreSQL, then run this statement again.';
	END IF;
END
$library$;

-- 0.2's install script grants every privilege in one place, after one
-- REVOKE that covers every function; 0.1 revoked function by function.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.capture() TO PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@._wake(boolean) TO PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@._validate() TO PUBLIC;

------------------------------------------------------------------------------
-- A view (or rule) of the user's over a column whose type the update changes
-- below stops it (PostgreSQL: "cannot alter type of a column used by a view
-- or rule", naming one view and saying nothing of what to do): said first,
-- every such view named, and what to do.  Nothing is changed yet.
------------------------------------------------------------------------------
DO $views$
DECLARE
	views text;
BEGIN
	SELECT pg_catalog.string_agg(DISTINCT r.ev_class::pg_catalog.regclass::text, ', ') INTO views
	FROM pg_catalog.pg_depend d
	JOIN pg_catalog.pg_rewrite r ON r.oid OPERATOR(pg_catalog.=) d.objid
	JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) d.refobjid
								  AND a.attnum OPERATOR(pg_catalog.=) d.refobjsubid
	WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
	  AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
	  AND r.ev_class OPERATOR(pg_catalog.<>) d.refobjid
	  AND (d.refobjid, a.attname) IN (
		  (pg_catalog.to_regclass('@extschema@.outbox'), 'order_key'),
		  (pg_catalog.to_regclass('@extschema@.inbox'), 'order_key'),
		  (pg_catalog.to_regclass('@extschema@.shipment'), 'order_key'),
		  (pg_catalog.to_regclass('@extschema@.shipment'), 'tracking_number'),
		  (pg_catalog.to_regclass('@extschema@.exception_ticket'), 'order_key'),
		  (pg_catalog.to_regclass('@extschema@.tracking_event'), 'order_key'),
		  (pg_catalog.to_regclass('@extschema@.tracking_event'), 'tracking_number'),
		  (pg_catalog.to_regclass('@extschema@.unmatched_event'), 'tracking_number'))
	  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
					  WHERE e.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
						AND e.objid OPERATOR(pg_catalog.=) r.ev_class
						AND e.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
						AND e.deptype OPERATOR(pg_catalog.=) 'e');
	IF views IS NOT NULL THEN
		RAISE EXCEPTION 'views of yours read columns of pg_shipsync whose type this update changes: %', views
			USING ERRCODE = 'dependent_objects_still_exist',
				  DETAIL = 'The update makes the order keys and tracking numbers of shipsync.outbox, inbox, shipment, exception_ticket, tracking_event and unmatched_event COLLATE "C", which PostgreSQL does not do under a view or rule. Nothing was changed.',
				  HINT = pg_catalog.format('Keep their definitions (SELECT pg_get_viewdef(%L::regclass, true)), drop them, run ALTER EXTENSION pg_shipsync UPDATE again, then create them again with their grants (docs/upgrading.md).',
										   pg_catalog.split_part(views, ', ', 1));
	END IF;
END
$views$;

------------------------------------------------------------------------------
-- Order keys and tracking numbers compare byte by byte (COLLATE "C"), before
-- any view of 0.2 reads them: they are identifiers, never sorted for people,
-- and under the database's collation every look into their indexes paid for
-- a locale comparison.  Equality is the same bytes either way, so no unique
-- key changes; the indexes on them are rebuilt.
------------------------------------------------------------------------------
-- (the inbox's own is the last statement of this script: see its end)
ALTER TABLE @extschema@.outbox ALTER COLUMN order_key TYPE text COLLATE "C";
-- (the trigger that matches parked events reads tracking_number in its
-- WHEN: it is made again, as it was)
DROP TRIGGER shipsync_match_parked ON @extschema@.shipment;
ALTER TABLE @extschema@.shipment ALTER COLUMN order_key TYPE text COLLATE "C",
	ALTER COLUMN tracking_number TYPE text COLLATE "C";
CREATE CONSTRAINT TRIGGER shipsync_match_parked
	AFTER INSERT OR UPDATE OF tracking_number ON @extschema@.shipment
	DEFERRABLE INITIALLY DEFERRED
	FOR EACH ROW WHEN (NEW.tracking_number IS NOT NULL)
	EXECUTE FUNCTION @extschema@._match_parked();
ALTER TABLE @extschema@.exception_ticket ALTER COLUMN order_key TYPE text COLLATE "C";
ALTER TABLE @extschema@.tracking_event ALTER COLUMN order_key TYPE text COLLATE "C",
	ALTER COLUMN tracking_number TYPE text COLLATE "C";
ALTER TABLE @extschema@.unmatched_event ALTER COLUMN tracking_number TYPE text COLLATE "C";

------------------------------------------------------------------------------
-- No escalation (issue 11): the trigger functions are granted to no one and
-- check their table; _validate() pins its search_path; cancel_when is
-- parsed against a restricted grammar and the statements attach() builds
-- are proved as the table's owner.  Bindings attached by 0.1 keep their
-- statements; the dispatcher now runs them as the owner in a restricted
-- operation (attach again to have cancel_when checked).
------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION @extschema@.capture() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._validate() FROM PUBLIC;
ALTER FUNCTION @extschema@._validate() SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._validate() IS
	'Internal: the validation trigger shipsync.attach() installs with option validate = reject; an order whose required mapped fields are missing or malformed is refused. It refuses to fire on any table but its binding''s.';

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
REVOKE ALL ON FUNCTION @extschema@._cancel_when_sql(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._explain_as_owner(regclass, text, regtype[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@.attach(tbl regclass, provider text, key_column name DEFAULT NULL,
								   writeback jsonb DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pid integer;
	bid integer;
	keycol name := key_column;
	keytype text;
	wb jsonb := coalesce(writeback, '{}');
	opts jsonb := coalesce(options, '{}');
	f text;
	col text;
	coltype text;
	sets text[] := '{}';
	wbcols text[] := '{}';
	render text;
	wbsql text;
	cancel_when text;
	trigargs text;
	relkind "char";
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.relkind INTO relkind FROM pg_class c WHERE c.oid = tbl;
	IF relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '"%" is not a table', tbl
			USING ERRCODE = 'wrong_object_type',
				  HINT = 'Attach an ordinary or partitioned table.';
	END IF;
	IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'The dispatcher reads and writes the table with its owner''s rights.';
	END IF;
	SELECT p.provider_id INTO pid FROM @extschema@.provider p WHERE p.name = attach.provider;
	IF pid IS NULL THEN
		RAISE EXCEPTION 'provider "%" does not exist', coalesce(provider, '')
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it first with shipsync.create_provider().';
	END IF;
	IF EXISTS (SELECT 1 FROM @extschema@.binding b WHERE b.tbl = attach.tbl AND b.active) THEN
		RAISE EXCEPTION 'table % is already attached', tbl
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Call shipsync.detach() first to attach it again.';
	END IF;
	PERFORM @extschema@._check_options(opts, ARRAY['cancel_when', 'validate', 'tracking_provider'], 'attach');
	PERFORM @extschema@._check_attach_options(opts, pid);
	IF current_setting('server_encoding') NOT IN ('UTF8', 'SQL_ASCII') THEN
		RAISE EXCEPTION 'database encoding % cannot be sent as JSON', current_setting('server_encoding')
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Carriers read JSON as UTF-8, and requests are rendered in the database encoding.',
				  HINT = 'Keep the orders in a UTF8 database.';
	END IF;

	-- the key: given, or the single-column primary key
	IF keycol IS NULL THEN
		SELECT a.attname INTO keycol
		FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE i.indrelid = tbl AND i.indisprimary AND i.indnatts = 1;
		IF keycol IS NULL THEN
			RAISE EXCEPTION 'table % has no single-column primary key', tbl
				USING ERRCODE = 'invalid_table_definition',
					  HINT = 'Pass key_column => the column that identifies an order.';
		END IF;
	END IF;
	SELECT format_type(a.atttypid, a.atttypmod) INTO keytype
	FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = keycol AND a.attnum > 0 AND NOT a.attisdropped;
	IF keytype IS NULL THEN
		RAISE EXCEPTION 'column "%" of table % does not exist', keycol, tbl
			USING ERRCODE = 'undefined_column',
				  HINT = 'Pass key_column => the column that identifies an order.';
	END IF;

	-- write-back: shipment field -> order column
	IF jsonb_typeof(wb) <> 'object' THEN
		RAISE EXCEPTION 'writeback must be a JSON object of shipment fields to column names'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example {"tracking_number": "waybill_no"}.';
	END IF;
	FOR f, col IN SELECT key, value #>> '{}' FROM jsonb_each(wb) LOOP
		IF f NOT IN ('tracking_number', 'status', 'provider_shipment_id', 'label_url', 'fee_total') THEN
			RAISE EXCEPTION 'unknown write-back field "%"', f
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'Write-back fields: tracking_number, status, provider_shipment_id, label_url, fee_total.';
		END IF;
		SELECT format_type(a.atttypid, a.atttypmod) INTO coltype
		FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
		IF coltype IS NULL THEN
			RAISE EXCEPTION 'write-back column "%" of table % does not exist', coalesce(col, ''), tbl
				USING ERRCODE = 'undefined_column',
					  HINT = 'Add the column first, or fix the writeback map.';
		END IF;
		IF col = keycol THEN
			RAISE EXCEPTION 'the key column "%" cannot be a write-back column', col
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Write shipment fields into columns of their own.';
		END IF;
		IF (SELECT t.typcategory FROM pg_attribute a JOIN pg_type t
				ON t.oid = coalesce(nullif(
					(SELECT typbasetype FROM pg_type WHERE oid = a.atttypid), 0), a.atttypid)
			WHERE a.attrelid = tbl AND a.attname = col)
		   NOT IN ('S', CASE WHEN f = 'fee_total' THEN 'N' ELSE 'S' END) THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = CASE WHEN f = 'fee_total' THEN 'fee_total is a numeric amount.'
								   ELSE format('%s is text.', f) END,
					  HINT = CASE WHEN f = 'fee_total' THEN 'Use a numeric or text column.'
								 ELSE 'Use a text or varchar column.' END;
		END IF;
		-- no explicit cast: assignment rules apply, so a tracking number too
		-- long for a varchar(n) column fails loudly instead of being cut
		sets := sets || format('%I = COALESCE(shipsync_u.%I, t.%I)', col, f, col);
		wbcols := wbcols || col;
	END LOOP;

	cancel_when := opts->>'cancel_when';
	IF cancel_when IS NOT NULL AND cancel_when ~ ';' THEN
		RAISE EXCEPTION 'option "cancel_when" must be one boolean expression'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example "status = ''cancelled''".';
	END IF;
	-- the restricted grammar, printed back with pg_catalog's operators:
	-- no function, operator or cast of the caller's is ever planned here
	IF cancel_when IS NOT NULL THEN
		cancel_when := @extschema@._cancel_when_sql(cancel_when);
	END IF;

	-- Operators and types qualified: the dispatcher, render_request() and
	-- this function run these as the table's owner, each with a search_path
	-- of its own.  (unnest of several arrays is grammar: pg_catalog's.)
	render := format(
		'SELECT shipsync_u.shipsync_id, t.%1$I IS NOT NULL AS found,'
		' pg_catalog.json_build_object(''order_ref'', shipsync_u.shipsync_key,'
		' ''order'', pg_catalog.row_to_json(t))::pg_catalog.text AS body,'
		' %4$s AS is_cancel'
		' FROM unnest($1::pg_catalog.int8[], $2::pg_catalog.text[])'
		' AS shipsync_u(shipsync_id, shipsync_key)'
		' LEFT JOIN %2$s AS t ON t.%1$I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%3$s',
		keycol, tbl, keytype,
		CASE WHEN cancel_when IS NULL THEN 'false'
			 ELSE format('COALESCE((%s), false)', cancel_when) END);

	IF array_length(sets, 1) > 0 THEN
		wbsql := format(
			'UPDATE %s AS t SET %s'
			' FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.text[],'
			' $4::pg_catalog.text[], $5::pg_catalog.text[], $6::pg_catalog.numeric[])'
			' AS shipsync_u(shipsync_key, provider_shipment_id, tracking_number, status, label_url, fee_total)'
			' WHERE t.%I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%s',
			tbl, array_to_string(sets, ', '), keycol, keytype);
	END IF;

	-- prove both statements against the table now, not in the dispatcher,
	-- and with the rights the dispatcher will have: the table owner's
	BEGIN
		PERFORM @extschema@._explain_as_owner(tbl, render, '{int8[], text[]}');
		IF wbsql IS NOT NULL THEN
			PERFORM @extschema@._explain_as_owner(tbl, wbsql,
				'{text[], text[], text[], text[], text[], numeric[]}');
		END IF;
	EXCEPTION WHEN OTHERS THEN
		RAISE EXCEPTION 'cannot attach table %: %', tbl, SQLERRM
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Check option cancel_when and the writeback columns'' types.';
	END;

	INSERT INTO @extschema@.binding AS b (tbl, provider_id, key_column, writeback, options, render_sql, writeback_sql)
	VALUES (attach.tbl, pid, keycol, wb, opts, render, wbsql)
	ON CONFLICT ON CONSTRAINT binding_tbl_key DO UPDATE
	   SET provider_id = EXCLUDED.provider_id, key_column = EXCLUDED.key_column,
		   writeback = EXCLUDED.writeback, options = EXCLUDED.options,
		   render_sql = EXCLUDED.render_sql, writeback_sql = EXCLUDED.writeback_sql,
		   active = true, created_at = now(), created_by = session_user
	RETURNING b.binding_id INTO bid;

	trigargs := array_to_string(ARRAY(SELECT quote_literal(x)
		FROM unnest(ARRAY[bid::text, pid::text, keycol::text] || wbcols) x), ', ');
	EXECUTE format('CREATE TRIGGER shipsync_capture AFTER INSERT OR UPDATE OR DELETE ON %s'
				   ' FOR EACH ROW EXECUTE FUNCTION @extschema@.capture(%s)', tbl, trigargs);
	IF opts->>'validate' = 'reject' THEN
		EXECUTE format('CREATE TRIGGER shipsync_validate AFTER INSERT OR UPDATE ON %s'
					   ' FOR EACH ROW EXECUTE FUNCTION @extschema@._validate(%L)', tbl, bid);
	END IF;
	PERFORM @extschema@._wake(true);
	RETURN bid;
END
$$;

------------------------------------------------------------------------------
-- Bad values refused where they enter (issue 11): no control character in
-- header values, credentials and URLs, no user name or password in URLs,
-- no static Authorization or Transfer-Encoding header.  Providers created
-- by 0.1 are not changed: the update warns about those these rules refuse.
------------------------------------------------------------------------------
-- Values that go on the wire, in a header line or a URL: no control
-- character (a CR or LF would end the line and start one of the sender's
-- choosing; PostgreSQL's text and jsonb hold no NUL), and no user name or
-- password in a URL.  Never echoes the value: it may be a credential.
-- Every path that sets a header, a credential or a URL calls it.
CREATE FUNCTION @extschema@._check_wire(what text, value text, is_url boolean)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF value ~ E'[\\x01-\\x1f\\x7f-\\x9f]' THEN
		RAISE EXCEPTION '% contains a control character', what
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Carriage returns, line feeds and other control characters would end a header line or a URL and start another of the sender''s choosing.',
				  HINT = 'Give the value exactly as the carrier issued it, on one line.';
	END IF;
	IF is_url AND value ~ '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@' THEN
		RAISE EXCEPTION '% must not contain a user name or password', what
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'URLs are shown in shipsync.providers, trace() and error messages, and credentials in them would be too.',
				  HINT = 'Remove "user:password@" from the URL and give the credentials in option "auth".';
	END IF;
END
$$;
REVOKE ALL ON FUNCTION @extschema@._check_wire(text, text, boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@._check_auth(auth jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	needed text[];
	f text;
BEGIN
	IF auth IS NULL THEN
		RETURN;
	END IF;
	IF jsonb_typeof(auth) <> 'object' THEN
		RAISE EXCEPTION 'option "auth" must be a JSON object'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example {"type": "bearer", "token": "..."}.';
	END IF;
	needed := @extschema@._auth_fields(auth->>'type');
	IF needed IS NULL THEN
		RAISE EXCEPTION 'unknown auth type "%"', coalesce(auth->>'type', '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'The auth types are bearer, api_key, basic, oauth2, kuaidi100 and sf_express.',
				  HINT = 'Set "type" in option "auth".';
	END IF;
	FOREACH f IN ARRAY needed LOOP
		IF jsonb_typeof(auth->f) IS DISTINCT FROM 'string' OR auth->>f = '' THEN
			RAISE EXCEPTION 'auth type "%" needs a non-empty string "%"', auth->>'type', f
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Complete option "auth".';
		END IF;
	END LOOP;
	IF auth->>'type' = 'api_key' AND (auth->>'header') !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]+$' THEN
		RAISE EXCEPTION 'auth header name "%" is not a valid HTTP header name', auth->>'header'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example "X-Api-Key".';
	END IF;
	IF auth->>'type' = 'api_key' AND lower(auth->>'header') IN
		('content-length', 'content-type', 'host', 'idempotency-key', 'transfer-encoding') THEN
		RAISE EXCEPTION 'auth header "%" is set by pg_shipsync', auth->>'header'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Content-Length, Content-Type, Host, Idempotency-Key and Transfer-Encoding belong to each request.',
				  HINT = 'Name the header the carrier reads the key from, for example "X-Api-Key".';
	END IF;
	-- every string of it goes into a header line, the form or a URL
	FOR f IN SELECT e.key FROM jsonb_each(auth) AS e WHERE jsonb_typeof(e.value) = 'string' LOOP
		PERFORM @extschema@._check_wire(format('option "auth" field "%s"', f), auth->>f, f = 'token_url');
	END LOOP;
END
$$;

-- create_provider() with these checks is defined once, with the secrets
-- below (it also stores every secret in shipsync.secret).

DO $wire$
DECLARE
	p record;
BEGIN
	FOR p IN
		SELECT x.name FROM @extschema@.provider x
		WHERE x.base_url ~ E'[\\x01-\\x1f\\x7f-\\x9f]|^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@'
		   OR x.auth->>'token_url' ~ '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@'
		   OR x.options->>'callback_url' ~ E'[\\x01-\\x1f\\x7f-\\x9f]|^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@'
		   OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_each_text(COALESCE(x.auth, '{}')) e
					  WHERE e.value ~ E'[\\x01-\\x1f\\x7f-\\x9f]')
		   OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_each_text(x.headers) e
					  WHERE e.value ~ E'[\\x01-\\x1f\\x7f-\\x9f]'
						 OR lower(e.key) IN ('authorization', 'transfer-encoding'))
		ORDER BY x.name
	LOOP
		RAISE WARNING 'provider "%" holds a value that pg_shipsync 0.2 refuses', p.name
			USING DETAIL = 'A control character in a header value, a credential or a URL, a user name or password in a URL, or a static Authorization or Transfer-Encoding header.',
				  HINT = 'Correct it with UPDATE shipsync.provider as the extension''s owner; see docs/security.md.';
	END LOOP;
END
$wire$;

------------------------------------------------------------------------------
-- NOTIFY carries kinds and ids only (issue 11): any role may LISTEN, so no
-- error text, status or tracking number goes on channel shipsync (the
-- dispatcher's and ingest_tracking()'s payloads are built in C).
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION @extschema@._on_drop()
RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	n bigint;
BEGIN
	FOR r IN SELECT objid FROM pg_event_trigger_dropped_objects() WHERE object_type = 'table' LOOP
		WITH mv AS (
			DELETE FROM @extschema@.inbox i USING @extschema@.binding bb
			WHERE bb.tbl = r.objid AND i.binding_id = bb.binding_id
			RETURNING i.*)
		INSERT INTO @extschema@.outbox (id, binding_id, provider_id, order_key, op,
			idempotency_key, created_at, next_attempt_at)
		SELECT id, binding_id, provider_id, order_key, op, idempotency_key, created_at, created_at
		FROM mv;
		WITH b AS (
			UPDATE @extschema@.binding SET active = false WHERE tbl = r.objid RETURNING binding_id),
		d AS (
			UPDATE @extschema@.outbox o
			   SET state = 'dead', last_error = 'the order table was dropped',
				   error_class = 'table_dropped', done_at = now(), updated_at = now()
			  FROM b WHERE o.binding_id = b.binding_id AND o.state IN ('pending', 'retrying')
			RETURNING o.id, o.binding_id, o.order_key, o.provider_id),
		t AS (
			INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, provider_id, outbox_id, detail)
			SELECT 'table_dropped', d.binding_id, d.order_key, d.provider_id, d.id, 'the order table was dropped'
			FROM d
			RETURNING ticket_id, outbox_id, binding_id, order_key)
		-- kinds and ids only: any role may LISTEN (docs/security.md)
		SELECT count(pg_notify('shipsync', json_build_object('event', 'table_dropped',
			'outbox_id', t.outbox_id, 'ticket_id', t.ticket_id, 'binding_id', t.binding_id,
			'order_key', t.order_key)::text))
		INTO n FROM t;
	END LOOP;
END
$$;

------------------------------------------------------------------------------
-- Secrets encrypted at rest (issue 11): shipsync.secret and its functions,
-- create_provider() storing secrets there, render_request() masking secret
-- headers, the dispatcher formatting auth headers itself (_auth_headers in
-- C); then every credential of the 0.1 install is moved into
-- shipsync.secret and stripped from shipsync.provider.
------------------------------------------------------------------------------
COMMENT ON TABLE @extschema@.provider IS
	'One logistics endpoint: URL, dialect, limits, retry policy, and its auth type and the fields of it that are not secret (the secrets are encrypted in shipsync.secret). Readable by the extension owner only; see view shipsync.providers.';

CREATE OR REPLACE FUNCTION @extschema@._auth_headers(auth jsonb)
RETURNS text[]
AS 'MODULE_PATHNAME', 'shipsync_auth_headers'
LANGUAGE C IMMUTABLE;

CREATE TABLE @extschema@.secret (
	provider		text NOT NULL,
	name			text NOT NULL,
	key_id			text NOT NULL,
	ciphertext		bytea NOT NULL,
	set_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	set_by			name NOT NULL DEFAULT SESSION_USER,
	PRIMARY KEY (provider, name)
);
COMMENT ON TABLE @extschema@.secret IS
	'Provider and CRM source credentials, encrypted with AES-256-GCM under the key of shipsync.secret_key_file, each bound to its provider (or CRM source) and name. Ciphertext only, readable by the extension owner only; set with shipsync.set_secret(), create_provider() or create_crm_source(), listed by the view shipsync.secrets.';
COMMENT ON COLUMN @extschema@.secret.provider IS 'The provider''s name, or the CRM source''s (the two share one namespace).';
COMMENT ON COLUMN @extschema@.secret.name IS
	'token, key, username, password, client_secret, checkword, webhook_secret, previous_webhook_secret, client_key, or header:<name> for a secret header; a CRM source has webhook_secret and previous_webhook_secret.';
COMMENT ON COLUMN @extschema@.secret.key_id IS
	'The key that sealed the value: the first 8 bytes of HMAC-SHA256(key, ''pg_shipsync key id''), in hex.';
COMMENT ON COLUMN @extschema@.secret.ciphertext IS
	'A 12-byte random nonce, the encrypted value, and the 16-byte GCM tag; the provider and the name, joined by a NUL byte, are its associated data.';

CREATE FUNCTION @extschema@._secret_put(provider text, name text, value text,
										keep_previous_as text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'shipsync_secret_put'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@._secret_put(text, text, text, text) IS
	'Internal: encrypt one secret of a provider and store it (with keep_previous_as, the value it replaces is kept under that name).';

-- The secret fields of an auth type: stored in shipsync.secret, never in
-- the auth column.
CREATE FUNCTION @extschema@._secret_fields(auth_type text)
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE auth_type
		WHEN 'bearer' THEN ARRAY['token']
		WHEN 'api_key' THEN ARRAY['key']
		WHEN 'basic' THEN ARRAY['username', 'password']
		WHEN 'sf_express' THEN ARRAY['checkword']
		WHEN 'kuaidi100' THEN ARRAY['key']
		WHEN 'oauth2' THEN ARRAY['client_secret']
		ELSE '{}'::text[] END
$$;

-- The names of the secrets a provider with this configuration may hold.
CREATE FUNCTION @extschema@._secret_names(auth jsonb, headers jsonb, options jsonb)
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT @extschema@._secret_fields(auth->>'type')
		|| ARRAY['webhook_secret', 'previous_webhook_secret']
		|| ARRAY(SELECT 'header:' || h.k FROM jsonb_each(coalesce(headers, '{}')) AS h(k, v)
				 WHERE jsonb_typeof(h.v) = 'object' ORDER BY 1)
		|| CASE WHEN jsonb_typeof(options->'tls') = 'object' THEN ARRAY['client_key'] ELSE '{}'::text[] END
$$;

/*
 * Store every secret of create_provider()'s options in shipsync.secret,
 * encrypted, in place of any the provider's name held before, and return
 * the options without them: auth without its secret fields, no webhook
 * secrets, secret headers as {"secret": true}, tls without client_key.
 * The 0.1 -> 0.2 upgrade moves a 0.1 install's credentials with it too.
 */
CREATE FUNCTION @extschema@._take_secrets(provider text, opts jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	stripped jsonb := opts;
	f text;
BEGIN
	DELETE FROM @extschema@.secret s WHERE s.provider OPERATOR(pg_catalog.=) _take_secrets.provider;
	IF jsonb_typeof(opts->'auth') = 'object' THEN
		FOREACH f IN ARRAY @extschema@._secret_fields(opts->'auth'->>'type') LOOP
			IF jsonb_typeof(opts->'auth'->f) = 'string' THEN
				PERFORM @extschema@._secret_put(provider, f, opts->'auth'->>f);
			END IF;
			stripped := jsonb_set(stripped, '{auth}', (stripped->'auth') - f);
		END LOOP;
	END IF;
	FOREACH f IN ARRAY ARRAY['webhook_secret', 'previous_webhook_secret'] LOOP
		IF jsonb_typeof(opts->f) = 'string' THEN
			PERFORM @extschema@._secret_put(provider, f, opts->>f);
		END IF;
		stripped := stripped - f;
	END LOOP;
	IF jsonb_typeof(opts->'headers') = 'object' THEN
		FOR f IN SELECT h.k FROM jsonb_each(opts->'headers') AS h(k, v)
				 WHERE jsonb_typeof(h.v) = 'object' LOOP
			PERFORM @extschema@._secret_put(provider, 'header:' || f, opts->'headers'->f->>'secret');
			stripped := jsonb_set(stripped, ARRAY['headers', f], '{"secret": true}');
		END LOOP;
	END IF;
	IF jsonb_typeof(opts->'tls'->'client_key') = 'string' THEN
		PERFORM @extschema@._secret_put(provider, 'client_key', opts->'tls'->>'client_key');
		stripped := jsonb_set(stripped, '{tls}', (stripped->'tls') - 'client_key');
	END IF;
	RETURN stripped;
END
$$;

CREATE FUNCTION @extschema@.set_secret(provider text, name text, value text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p record;
	names text[];
	canon text;
BEGIN
	SELECT x.provider_id, x.name, x.dialect, x.auth, x.headers, x.options INTO p
	FROM @extschema@.provider x WHERE x.name OPERATOR(pg_catalog.=) set_secret.provider;
	IF NOT FOUND THEN
		-- a CRM source's name stands in place of a provider's
		IF EXISTS (SELECT 1 FROM @extschema@.crm_source c
				   WHERE c.name OPERATOR(pg_catalog.=) set_secret.provider) THEN
			PERFORM @extschema@._set_crm_secret(set_secret.provider, set_secret.name, value);
			RETURN;
		END IF;
		RAISE EXCEPTION 'provider or CRM source "%" does not exist', coalesce(set_secret.provider, '')
			USING ERRCODE = 'undefined_object',
				  HINT = 'See SELECT name FROM shipsync.providers, and shipsync.crm_sources.';
	END IF;
	names := @extschema@._secret_names(p.auth, p.headers, p.options);
	-- a header's name is matched without regard to case, as HTTP does
	SELECT n INTO canon FROM unnest(names) AS n
	WHERE n OPERATOR(pg_catalog.=) set_secret.name
	   OR (n OPERATOR(pg_catalog.~~) 'header:%'
		   AND lower(n) OPERATOR(pg_catalog.=) lower(set_secret.name));
	IF canon IS NULL THEN
		RAISE EXCEPTION 'provider "%" has no secret "%"', p.name, coalesce(set_secret.name, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('Its secrets are named %s.', array_to_string(names, ', ')),
				  HINT = 'Secrets are named after the fields of the provider''s auth type; a header becomes secret when create_provider() is given its value as {"secret": "..."}.';
	END IF;
	IF value IS NULL THEN
		IF canon OPERATOR(pg_catalog.<>) ALL (ARRAY['webhook_secret', 'previous_webhook_secret', 'password']) THEN
			RAISE EXCEPTION 'secret "%" of provider "%" cannot be removed', canon, p.name
				USING ERRCODE = 'null_value_not_allowed',
					  DETAIL = 'The provider''s requests need it.',
					  HINT = 'Give its new value instead.';
		END IF;
		DELETE FROM @extschema@.secret s
		 WHERE s.provider OPERATOR(pg_catalog.=) p.name AND s.name OPERATOR(pg_catalog.=) canon;
	ELSE
		IF value OPERATOR(pg_catalog.=) '' THEN
			RAISE EXCEPTION 'secret "%" must not be empty', canon
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Give the value exactly as the carrier issued it.';
		END IF;
		-- it goes into a header line, a form or a body (a PEM key spans lines)
		IF canon OPERATOR(pg_catalog.<>) 'client_key' THEN
			PERFORM @extschema@._check_wire(format('secret "%s"', canon), value, false);
		ELSE
			-- a PEM key, and the key of the provider's client certificate
			PERFORM @extschema@._check_tls(NULL, p.options->'tls'->>'client_cert', value);
		END IF;
		IF canon OPERATOR(pg_catalog.~~) '%webhook_secret' THEN
			PERFORM @extschema@._check_tracking_options(jsonb_build_object(canon, value), p.dialect);
		END IF;
		-- a new webhook secret: the one it replaces stays valid as the previous
		PERFORM @extschema@._secret_put(p.name, canon, value,
			CASE WHEN canon OPERATOR(pg_catalog.=) 'webhook_secret' THEN 'previous_webhook_secret' END);
	END IF;
	UPDATE @extschema@.provider x SET updated_at = now(), updated_by = session_user
	 WHERE x.provider_id OPERATOR(pg_catalog.=) p.provider_id;
END
$$;
COMMENT ON FUNCTION @extschema@.set_secret(text, text, text) IS
	'Set one secret of a provider, stored encrypted: token, key, username, password, client_secret, checkword (as its auth type has them), webhook_secret (the one it replaces stays valid as previous_webhook_secret), previous_webhook_secret, header:<name> for a header created secret, client_key. NULL removes webhook_secret, previous_webhook_secret or password. A CRM source''s name stands in place of a provider''s: its webhook_secret (option secret of create_crm_source()) and previous_webhook_secret. The value is never shown again.';

CREATE FUNCTION @extschema@.rotate_key()
RETURNS bigint
AS 'MODULE_PATHNAME', 'shipsync_rotate_key'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.rotate_key() IS
	'Encrypt again, under the key of shipsync.secret_key_file, every secret encrypted under another key (that of shipsync.previous_secret_key_file, during a key rotation). Returns how many; all or nothing.';

-- A dropped provider takes its secrets with it (and a dropped CRM source:
-- trigger crm_source_drop_secrets).
CREATE FUNCTION @extschema@._drop_secrets()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM @extschema@.secret s WHERE s.provider OPERATOR(pg_catalog.=) OLD.name;
	RETURN NULL;
END
$$;
CREATE TRIGGER provider_drop_secrets AFTER DELETE ON @extschema@.provider
	FOR EACH ROW EXECUTE FUNCTION @extschema@._drop_secrets();

-- A changed secret reaches the dispatcher through the configuration
-- generation, however it was changed (set_secret(), a restore, by hand).
CREATE FUNCTION @extschema@._secret_changed()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM @extschema@._wake(true);
	RETURN NULL;
END
$$;
CREATE TRIGGER secret_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.secret
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._secret_changed();

CREATE VIEW @extschema@.secrets AS
SELECT s.provider, s.name, s.set_at, s.set_by, pg_catalog.now() OPERATOR(pg_catalog.-) s.set_at AS age
FROM @extschema@.secret s;
COMMENT ON VIEW @extschema@.secrets IS
	'The secrets that are set: provider (or CRM source), name, when and by whom, and their age. Never a value.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.secret', '');

CREATE OR REPLACE FUNCTION @extschema@.create_provider(name text, dialect text, base_url text,
											options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	opts jsonb := coalesce(options, '{}');
	id integer;
	rate numeric;
	h text;
	hv jsonb;
	stored jsonb;
BEGIN
	IF name IS NULL OR name !~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid provider name "%"', coalesce(name, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A provider name is 1 to 63 letters, digits, "_", "." or "-".',
				  HINT = 'For example ''sf'' or ''acme-eu''.';
	END IF;
	IF dialect IS NULL OR dialect NOT IN ('generic', 'sf_express', 'easypost', 'aftership', 'kuaidi100') THEN
		RAISE EXCEPTION 'unknown dialect "%"', coalesce(dialect, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'This version knows the shipping dialects generic and sf_express and the tracking dialects easypost, aftership and kuaidi100.',
				  HINT = 'See docs/wire-contract.md for the generic contract.';
	END IF;
	PERFORM @extschema@._check_options(opts,
		ARRAY['timeout_ms', 'max_inflight', 'max_attempts', 'backoff_base_ms',
			  'backoff_max_ms', 'rate_limit_per_s', 'headers', 'auth', 'tls', 'breaker_failures', 'breaker_cooldown_ms']
		|| @extschema@._check_tracking_options(opts, dialect)
		|| @extschema@._dialect_options(dialect), 'provider');
	IF opts ? 'rate_limit_per_s' AND (jsonb_typeof(opts->'rate_limit_per_s') <> 'number'
		OR (opts->>'rate_limit_per_s')::numeric < 0
		OR (opts->>'rate_limit_per_s')::numeric > 100000) THEN
		RAISE EXCEPTION 'option "rate_limit_per_s" is out of range'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given is %s.', opts->'rate_limit_per_s'),
				  HINT = 'Give a number of requests per second between 0 (unlimited) and 100000.';
	END IF;
	IF opts ? 'headers' THEN
		IF jsonb_typeof(opts->'headers') <> 'object' THEN
			RAISE EXCEPTION 'option "headers" must be a JSON object of header names to values'
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'For example {"X-Tenant": "shop-1"}.';
		END IF;
		FOR h IN SELECT jsonb_object_keys(opts->'headers') LOOP
			-- a value is a string, or {"secret": "..."} for one kept encrypted
			hv := CASE WHEN jsonb_typeof(opts->'headers'->h) = 'object'
						AND (SELECT count(*) FROM jsonb_object_keys(opts->'headers'->h)) = 1
					   THEN opts->'headers'->h->'secret' ELSE opts->'headers'->h END;
			IF h !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]+$' OR jsonb_typeof(hv) IS DISTINCT FROM 'string'
			   OR (hv #>> '{}') ~ E'[\\x01-\\x1f\\x7f-\\x9f]' THEN
				RAISE EXCEPTION 'invalid header "%"', h
					USING ERRCODE = 'invalid_parameter_value',
						  DETAIL = 'Header names are HTTP tokens and values are strings without line breaks or other control characters.',
						  HINT = 'Fix the name or the value in option "headers".';
			END IF;
			IF lower(h) IN ('authorization', 'content-length', 'content-type', 'host', 'idempotency-key', 'transfer-encoding') THEN
				RAISE EXCEPTION 'header "%" is set by pg_shipsync', h
					USING ERRCODE = 'invalid_parameter_value',
						  DETAIL = 'Idempotency-Key, Content-Type, Content-Length, Transfer-Encoding and Host belong to each request, and Authorization to option "auth".',
						  HINT = 'Remove it from option "headers"; give credentials in option "auth".';
			END IF;
		END LOOP;
	END IF;
	PERFORM @extschema@._check_auth(opts->'auth');
	PERFORM @extschema@._check_tls_option(opts->'tls');
	PERFORM @extschema@._check_dialect(dialect, opts);
	PERFORM @extschema@._check_wire('base_url', create_provider.base_url, true);
	IF jsonb_typeof(opts->'callback_url') = 'string' THEN
		PERFORM @extschema@._check_wire('option "callback_url"', opts->>'callback_url', true);
	END IF;
	-- the circuit breaker (src/health.c): read from options by the dispatcher
	PERFORM @extschema@._int_option(opts, 'breaker_failures', 20, 1, 1000000);
	PERFORM @extschema@._int_option(opts, 'breaker_cooldown_ms', 5000, 100, 300000);
	rate := coalesce((opts->>'rate_limit_per_s')::numeric, 0);
	-- every secret of the options goes to shipsync.secret, encrypted
	stored := @extschema@._take_secrets(create_provider.name, opts);

	INSERT INTO @extschema@.provider AS p
		(name, dialect, base_url, timeout_ms, max_inflight, max_attempts,
		 backoff_base_ms, backoff_max_ms, rate_limit_per_s, headers, auth, options)
	VALUES (create_provider.name, create_provider.dialect,
			@extschema@._check_url(create_provider.base_url),
			@extschema@._int_option(opts, 'timeout_ms', 10000, 100, 600000),
			@extschema@._int_option(opts, 'max_inflight', 256, 1, 1024),
			@extschema@._int_option(opts, 'max_attempts', 20, 1, 1000),
			@extschema@._int_option(opts, 'backoff_base_ms', 1000, 1, 3600000),
			@extschema@._int_option(opts, 'backoff_max_ms', 300000, 1, 86400000),
			rate,
			coalesce(stored->'headers', '{}'),
			stored->'auth',
			stored - 'auth')
	RETURNING p.provider_id INTO id;

	IF @extschema@._int_option(opts, 'backoff_max_ms', 300000, 1, 86400000)
	   < @extschema@._int_option(opts, 'backoff_base_ms', 1000, 1, 3600000) THEN
		RAISE EXCEPTION 'option "backoff_max_ms" is smaller than "backoff_base_ms"'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Retries wait a random time up to min(backoff_max_ms, backoff_base_ms * 2^(attempt - 1)).',
				  HINT = 'Raise backoff_max_ms or lower backoff_base_ms.';
	END IF;

	PERFORM @extschema@._wake(true);
	RETURN id;
EXCEPTION
	WHEN unique_violation THEN
		RAISE EXCEPTION 'provider "%" already exists', create_provider.name
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Choose another name, or drop the provider first.';
END
$$;
COMMENT ON FUNCTION @extschema@.create_provider(text, text, text, jsonb) IS
	'Register a logistics provider. Options: timeout_ms, max_inflight, max_attempts, backoff_base_ms, backoff_max_ms, rate_limit_per_s, headers (a value given as {"secret": "..."} is kept encrypted), auth, tls (ca_bundle, client_cert, client_key, min_version, pinned_public_key), breaker_failures (consecutive transport or 5xx failures that open the circuit breaker, default 20), breaker_cooldown_ms (the wait before a probe, default 5000, doubling up to 5 minutes while probes fail), profile (its field_map and status_map profile, by default the dialect); sf_express also sender, monthly_card, pay_method, express_type_id; for tracking: webhook_secret, previous_webhook_secret, accept_unsigned_pushes, poll_interval_s, unmatched_ttl_s, timezone; easypost carrier, aftership slug, kuaidi100 company and callback_url. Secrets (auth values, webhook secrets, secret header values, the TLS client key) are stored encrypted in shipsync.secret, never in shipsync.provider.';

CREATE OR REPLACE FUNCTION @extschema@.render_request(outbox_id bigint)
RETURNS TABLE (method text, url text, headers text[], body text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	o record;
	p record;
	r record;
BEGIN
	SELECT x.provider_id, x.idempotency_key INTO o FROM @extschema@.outbox x
	WHERE x.id = render_request.outbox_id
	UNION ALL	-- captured, not yet moved to the outbox
	SELECT i.provider_id, i.idempotency_key FROM @extschema@.inbox i
	WHERE i.id = render_request.outbox_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'outbox intent % does not exist', outbox_id
			USING ERRCODE = 'undefined_object',
				  HINT = 'Find intents with shipsync.trace() or in shipsync.outbox.';
	END IF;
	SELECT x.* INTO p FROM @extschema@.provider x WHERE x.provider_id = o.provider_id;
	SELECT * INTO r FROM @extschema@._render(outbox_id);
	IF r.method IS NULL THEN
		RAISE EXCEPTION 'outbox intent % has nothing to send', outbox_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('It would not be sent: %s.', r.body),
				  HINT = 'See its state and last_error in shipsync.outbox.';
	END IF;
	method := r.method;
	url := r.url;
	body := r.body;
	headers := ARRAY['Idempotency-Key: ' || o.idempotency_key]
		|| CASE WHEN p.dialect IN ('sf_express', 'kuaidi100')
				THEN ARRAY['Content-Type: application/x-www-form-urlencoded']
				ELSE ARRAY['Content-Type: application/json'] END
		|| ARRAY['Accept: application/json']
		|| ARRAY(SELECT k || ': ' || CASE WHEN jsonb_typeof(v) = 'string' THEN v #>> '{}' ELSE '********' END
				 FROM jsonb_each(p.headers) AS h(k, v))
		|| CASE WHEN p.dialect = 'kuaidi100' THEN '{}'::text[]
				ELSE @extschema@._auth_headers_masked(p.auth) END;
	RETURN NEXT;
END
$$;
COMMENT ON FUNCTION @extschema@.render_request(bigint) IS
	'A dry run: the method, URL, headers (secrets masked) and body that the intent sends or would send. An intent never sent is rendered from the current order row and its provider''s field map, and nothing is stored.';

REVOKE ALL ON FUNCTION @extschema@._secret_put(text, text, text, text),
	@extschema@._secret_fields(text),
	@extschema@._secret_names(jsonb, jsonb, jsonb),
	@extschema@._take_secrets(text, jsonb),
	@extschema@.set_secret(text, text, text),
	@extschema@.rotate_key(),
	@extschema@._drop_secrets(),
	@extschema@._secret_changed() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.set_secret(text, text, text),
	@extschema@.rotate_key() TO shipsync_admin;
GRANT SELECT ON @extschema@.secrets TO shipsync_operator;

-- 0.1 kept credentials in plain text: auth values in provider.auth, webhook
-- secrets in provider.options.  Each goes to shipsync.secret, encrypted
-- (under the key of shipsync.secret_key_file, or pg_shipsync.key generated
-- in the data directory now), and leaves the provider row.
DO $move$
DECLARE
	r record;
	stored jsonb;
BEGIN
	FOR r IN SELECT p.provider_id, p.name, p.auth, p.options FROM @extschema@.provider p
			 ORDER BY p.provider_id LOOP
		stored := @extschema@._take_secrets(r.name,
			CASE WHEN r.auth IS NULL THEN r.options
				 ELSE r.options || pg_catalog.jsonb_build_object('auth', r.auth) END);
		UPDATE @extschema@.provider p SET auth = stored->'auth', options = stored - 'auth'
		 WHERE p.provider_id = r.provider_id;
	END LOOP;
END
$move$;

-- 0.1 stored Kuaidi100 subscriptions with the salt (the webhook secret) in
-- their bodies: a placeholder takes its place, filled in when sending.
UPDATE @extschema@.outbox o
   SET request_body = pg_catalog.regexp_replace(o.request_body,
		'(%22salt%22%3A%22).*?(%22%2C%22resultv2%22)', E'\\1__SHIPSYNC_KUAIDI100_SALT__\\2')
  FROM @extschema@.provider p
 WHERE p.provider_id = o.provider_id AND p.dialect = 'kuaidi100' AND o.op = 'register'
   AND o.request_body LIKE E'%\\%22salt\\%22\\%3A\\%22%';

------------------------------------------------------------------------------
-- 0.2: the receiver of pushes and CRM sources (issue 16)
------------------------------------------------------------------------------

-- the receiver worker runs the ingest functions as this role
DO $roles$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'shipsync_ingest') THEN
		CREATE ROLE shipsync_ingest NOLOGIN;
	END IF;
END
$roles$;

-- field maps get a third direction: crm_in.  0.1's check of direction is
-- found by what it is (a CHECK of field_map on direction alone), not by
-- its name: a DBA may have renamed it, and the update failed then on
-- "constraint "field_map_direction_check" ... does not exist".
DO $direction_check$
DECLARE
	c name;
BEGIN
	FOR c IN
		SELECT con.conname FROM pg_catalog.pg_constraint con
		WHERE con.conrelid = '@extschema@.field_map'::pg_catalog.regclass
			AND con.contype = 'c'
			AND con.conkey = ARRAY[(SELECT a.attnum FROM pg_catalog.pg_attribute a
				WHERE a.attrelid = con.conrelid AND a.attname = 'direction')]::int2[]
	LOOP
		EXECUTE pg_catalog.format('ALTER TABLE @extschema@.field_map DROP CONSTRAINT %I', c);
	END LOOP;
END
$direction_check$;
ALTER TABLE @extschema@.field_map ADD CONSTRAINT field_map_direction_check
	CHECK (direction IN ('out', 'in', 'crm_in'));
COMMENT ON TABLE @extschema@.field_map IS
	'Declarative field maps per profile. Outbound rows (direction out) build the request from CRM columns, constants (const:), provider options (option:path) and the intent (meta:order_key, meta:idempotency_key); inbound rows (in) read canonical fields out of responses; crm_in rows turn a record a CRM pushed (ingest_crm()) into the columns of an orders table. Paths are dotted with [k=v] filters. A change applies to the next request.';
COMMENT ON COLUMN @extschema@.field_map.target_path IS
	'Outbound: where the value goes in the request, e.g. contactInfoList[contactType=2].address. Inbound: the canonical field (tracking_number, provider_shipment_id, label_url, status). crm_in: a column of the CRM source''s orders table.';

------------------------------------------------------------------------------
-- CRM sources
--
-- A source names the orders table its pushes write and the field-map
-- profile (direction crm_in) that turns a pushed record into its columns.
-- ingest_crm() (src/crm.c) verifies the push, deduplicates it on its
-- delivery id (crm_delivery), maps each record and writes the row as the
-- table's owner, so the capture trigger ships it like any other order.
------------------------------------------------------------------------------

CREATE TABLE @extschema@.crm_source (
	crm_source_id	integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name			text NOT NULL UNIQUE,
	kind			text NOT NULL CHECK (kind IN ('jiandaoyun', 'salesforce_om', 'generic')),
	tbl				regclass NOT NULL,
	key_column		name NOT NULL,
	profile			text NOT NULL,
	dedup_ttl		interval NOT NULL DEFAULT '7 days',
	options			jsonb NOT NULL DEFAULT '{}',
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by		name NOT NULL DEFAULT SESSION_USER
);
COMMENT ON TABLE @extschema@.crm_source IS
	'A CRM that pushes orders in: its kind (jiandaoyun, salesforce_om, generic), the orders table its pushes write, the key column matched to the CRM''s record id, and the field-map profile (direction crm_in) from a pushed record to columns. The signing secret is not here: it is encrypted in shipsync.secret, under the source''s name.';
COMMENT ON COLUMN @extschema@.crm_source.options IS
	'The options given to create_crm_source() other than the secret: organization_id and sobject_type for salesforce_om.';

CREATE TABLE @extschema@.crm_delivery (
	crm_source_id	integer NOT NULL REFERENCES @extschema@.crm_source ON DELETE CASCADE,
	delivery_id		text NOT NULL,
	received_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	expires_at		timestamptz NOT NULL,
	PRIMARY KEY (crm_source_id, delivery_id)
);
CREATE INDEX crm_delivery_expiry_idx ON @extschema@.crm_delivery (crm_source_id, expires_at);
COMMENT ON TABLE @extschema@.crm_delivery IS
	'Deliveries of CRM pushes already applied, kept for the source''s dedup_ttl: the 简道云 X-JDY-DeliverId, the Salesforce notification Id, the Standard Webhooks webhook-id. A delivery seen again is acknowledged and changes nothing.';

-- Provider and CRM source names share one namespace: a CRM source's name
-- stands in place of a provider's in the secret store (shipsync.secret's
-- provider column).  Two transactions taking one name, one for a provider
-- and one for a source, serialise on an advisory lock on the name (first
-- key 0: tracking's locks use provider ids, from 1), so the second sees
-- the first's row once it commits.
CREATE FUNCTION @extschema@._check_name_free()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	other text;
BEGIN
	PERFORM pg_catalog.pg_advisory_xact_lock(0, pg_catalog.hashtext(NEW.name));
	IF TG_TABLE_NAME OPERATOR(pg_catalog.=) 'provider' THEN
		SELECT 'a CRM source' INTO other FROM @extschema@.crm_source c
		WHERE c.name OPERATOR(pg_catalog.=) NEW.name;
	ELSE
		SELECT 'a provider' INTO other FROM @extschema@.provider p
		WHERE p.name OPERATOR(pg_catalog.=) NEW.name;
	END IF;
	IF other IS NOT NULL THEN
		RAISE EXCEPTION 'name "%" is already used by %', NEW.name, other
			USING ERRCODE = 'duplicate_object',
				  DETAIL = 'Providers and CRM sources share one namespace (their secrets are stored by name).',
				  HINT = 'Choose another name.';
	END IF;
	RETURN NEW;
END
$$;
CREATE TRIGGER provider_name_free BEFORE INSERT OR UPDATE OF name ON @extschema@.provider
	FOR EACH ROW EXECUTE FUNCTION @extschema@._check_name_free();
CREATE TRIGGER crm_source_name_free BEFORE INSERT OR UPDATE OF name ON @extschema@.crm_source
	FOR EACH ROW EXECUTE FUNCTION @extschema@._check_name_free();

-- The crm_in rows of a profile must name columns of the source's table.
CREATE FUNCTION @extschema@._check_crm_map(profile text, tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	col text;
BEGIN
	FOR col IN SELECT m.target_path FROM @extschema@.field_map m
			   WHERE m.profile OPERATOR(pg_catalog.=) _check_crm_map.profile
				 AND m.direction OPERATOR(pg_catalog.=) 'crm_in'
			   ORDER BY m.position, m.field_map_id LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
					   WHERE a.attrelid OPERATOR(pg_catalog.=) tbl
						 AND a.attname OPERATOR(pg_catalog.=) col
						 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped) THEN
			RAISE EXCEPTION 'the crm_in rows of profile "%" name column "%", which table % does not have', profile, col, tbl
				USING ERRCODE = 'undefined_column',
					  DETAIL = 'A crm_in row''s target_path is a column of the orders table.',
					  HINT = 'Fix the row in shipsync.field_map, or add the column.';
		END IF;
	END LOOP;
END
$$;

-- A source's secret as its kind reads it; what names where it was given.
CREATE FUNCTION @extschema@._check_crm_secret(kind text, value text, what text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF kind OPERATOR(pg_catalog.=) 'generic'
	   AND value OPERATOR(pg_catalog.!~) '^(whsec_)?[A-Za-z0-9+/]+={0,2}$' THEN
		RAISE EXCEPTION '% of a generic CRM source is not a Standard Webhooks secret', what
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A Standard Webhooks secret is whsec_ followed by the base64 of the key.',
				  HINT = 'Give the secret exactly as the sender issued it, for example whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw.';
	END IF;
END
$$;

/*
 * set_secret() for a CRM source: its name stands in place of a provider's.
 * A signed source (jiandaoyun, generic) has webhook_secret, given as option
 * secret of create_crm_source(), and previous_webhook_secret, which a new
 * webhook_secret keeps valid for the rotation; a salesforce_om source has
 * none.  Pushes write into the source's table with its owner's rights, so
 * only a member of that owner may change what signs them.
 */
CREATE FUNCTION @extschema@._set_crm_secret(source text, name text, value text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s record;
BEGIN
	SELECT c.name, c.kind, c.tbl INTO STRICT s FROM @extschema@.crm_source c
	WHERE c.name OPERATOR(pg_catalog.=) _set_crm_secret.source;
	IF s.kind OPERATOR(pg_catalog.=) 'salesforce_om'
	   OR coalesce(name, '') OPERATOR(pg_catalog.<>) ALL (ARRAY['webhook_secret', 'previous_webhook_secret']) THEN
		RAISE EXCEPTION 'CRM source "%" has no secret "%"', s.name, coalesce(name, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = CASE WHEN s.kind OPERATOR(pg_catalog.=) 'salesforce_om'
								THEN 'Outbound Messages are not signed: a salesforce_om source has no secret.'
								ELSE 'Its secrets are named webhook_secret, previous_webhook_secret.' END,
				  HINT = 'A source''s webhook_secret is what create_crm_source() took as option "secret".';
	END IF;
	IF EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) s.tbl)
	   AND NOT pg_catalog.pg_has_role(session_user,
			(SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) s.tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', s.tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'Pushes of the source are written into the table with its owner''s rights.';
	END IF;
	IF value IS NULL THEN
		IF name OPERATOR(pg_catalog.=) 'webhook_secret' THEN
			RAISE EXCEPTION 'secret "webhook_secret" of CRM source "%" cannot be removed', s.name
				USING ERRCODE = 'null_value_not_allowed',
					  DETAIL = 'Pushes of the source are verified with it.',
					  HINT = 'Give its new value instead, or drop the source.';
		END IF;
		DELETE FROM @extschema@.secret x
		 WHERE x.provider OPERATOR(pg_catalog.=) s.name AND x.name OPERATOR(pg_catalog.=) _set_crm_secret.name;
		RETURN;
	END IF;
	IF value OPERATOR(pg_catalog.=) '' THEN
		RAISE EXCEPTION 'secret "%" must not be empty', name
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give the value exactly as the CRM issued it.';
	END IF;
	PERFORM @extschema@._check_crm_secret(s.kind, value, pg_catalog.format('secret "%s"', name));
	-- a new webhook secret: the one it replaces stays valid as the previous
	PERFORM @extschema@._secret_put(s.name, name, value,
		CASE WHEN name OPERATOR(pg_catalog.=) 'webhook_secret' THEN 'previous_webhook_secret' END);
END
$$;

CREATE FUNCTION @extschema@.create_crm_source(name text, kind text, tbl regclass,
											  options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	opts jsonb := coalesce(options, '{}');
	keycol name;
	ttl interval;
	id integer;
	relkind "char";
	k text;
	allowed text[] := ARRAY['profile', 'key_column', 'dedup_ttl', 'secret'];
BEGIN
	IF name IS NULL OR name OPERATOR(pg_catalog.!~) '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid CRM source name "%"', coalesce(name, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A CRM source name is 1 to 63 letters, digits, "_", "." or "-"; it is the last part of the receiver''s URL /crm/{name}.',
				  HINT = 'For example ''jdy'' or ''salesforce-eu''.';
	END IF;
	IF kind IS NULL OR kind OPERATOR(pg_catalog.<>) ALL (ARRAY['jiandaoyun', 'salesforce_om', 'generic']) THEN
		RAISE EXCEPTION 'unknown CRM source kind "%"', coalesce(kind, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'The kinds are jiandaoyun (简道云 data push), salesforce_om (Salesforce Outbound Messages) and generic (Standard Webhooks-signed JSON).',
				  HINT = 'See docs/receiver.md.';
	END IF;
	IF kind OPERATOR(pg_catalog.=) 'salesforce_om' THEN
		allowed := ARRAY['profile', 'key_column', 'dedup_ttl', 'organization_id', 'sobject_type'];
	END IF;
	PERFORM @extschema@._check_options(opts, allowed, 'CRM source');
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.relkind INTO relkind FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) tbl;
	IF relkind OPERATOR(pg_catalog.<>) ALL (ARRAY['r', 'p']::"char"[]) THEN
		RAISE EXCEPTION '"%" is not a table', tbl
			USING ERRCODE = 'wrong_object_type',
				  HINT = 'Name an ordinary or partitioned table.';
	END IF;
	IF NOT pg_catalog.pg_has_role(session_user,
			(SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'Pushes of the source are written into the table with its owner''s rights.';
	END IF;

	-- options of each kind
	FOREACH k IN ARRAY ARRAY['profile', 'key_column', 'dedup_ttl', 'secret', 'organization_id', 'sobject_type'] LOOP
		IF opts ? k AND (pg_catalog.jsonb_typeof(opts->k) OPERATOR(pg_catalog.<>) 'string'
						 OR opts->>k OPERATOR(pg_catalog.=) '') THEN
			RAISE EXCEPTION 'option "%" must be a non-empty string', k
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = CASE WHEN k OPERATOR(pg_catalog.=) 'secret'
								  THEN 'Give the secret the CRM signs its pushes with.' ELSE 'Give a string.' END;
		END IF;
	END LOOP;
	IF kind OPERATOR(pg_catalog.<>) 'salesforce_om' AND NOT opts ? 'secret' THEN
		RAISE EXCEPTION 'a CRM source of kind % needs option "secret"', kind
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Pushes are accepted only when their signature can be checked.',
				  HINT = CASE kind WHEN 'jiandaoyun' THEN 'Give the secret of the 简道云 data push (数据推送 → 密钥).'
								   ELSE 'Give the whsec_ secret of the sender''s Standard Webhooks signature.' END;
	END IF;
	IF opts ? 'secret' THEN
		PERFORM @extschema@._check_crm_secret(kind, opts->>'secret', 'option "secret"');
	END IF;
	IF kind OPERATOR(pg_catalog.=) 'salesforce_om'
	   AND coalesce(opts->>'organization_id', '') OPERATOR(pg_catalog.!~) '^[A-Za-z0-9]{15}([A-Za-z0-9]{3})?$' THEN
		RAISE EXCEPTION 'a CRM source of kind salesforce_om needs option "organization_id"'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Outbound Messages are not signed: the OrganizationId of each message must be the organization''s id (15 or 18 characters).',
				  HINT = 'Salesforce shows it under Setup → Company Information; add mTLS or an IP allowlist at the proxy as well.';
	END IF;
	IF opts ? 'profile' AND (opts->>'profile') OPERATOR(pg_catalog.!~) '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid profile name "%"', opts->>'profile'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A profile name is 1 to 63 letters, digits, "_", "." or "-".';
	END IF;
	BEGIN
		ttl := coalesce(opts->>'dedup_ttl', '7 days')::interval;
	EXCEPTION WHEN OTHERS THEN
		ttl := NULL;
	END;
	IF ttl IS NULL OR ttl OPERATOR(pg_catalog.<) interval '1 minute' OR ttl OPERATOR(pg_catalog.>) interval '1 year' THEN
		RAISE EXCEPTION 'option "dedup_ttl" must be an interval between 1 minute and 1 year'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = pg_catalog.format('The value given is %s.', opts->'dedup_ttl'),
				  HINT = 'For example ''7 days'': at least as long as the CRM goes on retrying a push.';
	END IF;

	-- the key: given, or the single-column primary key; unique, for upserts
	keycol := opts->>'key_column';
	IF keycol IS NULL THEN
		SELECT a.attname INTO keycol
		FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
		  ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]
		WHERE i.indrelid OPERATOR(pg_catalog.=) tbl AND i.indisprimary AND i.indnatts OPERATOR(pg_catalog.=) 1;
		IF keycol IS NULL THEN
			RAISE EXCEPTION 'table % has no single-column primary key', tbl
				USING ERRCODE = 'invalid_table_definition',
					  HINT = 'Give option "key_column": the column that holds the CRM''s record id.';
		END IF;
	END IF;
	IF NOT EXISTS (
		SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
		  ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]
		WHERE i.indrelid OPERATOR(pg_catalog.=) tbl AND i.indisunique AND i.indnkeyatts OPERATOR(pg_catalog.=) 1
		  AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname OPERATOR(pg_catalog.=) keycol) THEN
		RAISE EXCEPTION 'column "%" of table % has no unique index of its own', keycol, tbl
			USING ERRCODE = 'invalid_table_definition',
				  DETAIL = 'A push is written with INSERT ... ON CONFLICT on the key column.',
				  HINT = pg_catalog.format('Add one: ALTER TABLE %s ADD UNIQUE (%I).', tbl, keycol);
	END IF;
	PERFORM @extschema@._check_crm_map(coalesce(opts->>'profile', name), tbl);

	INSERT INTO @extschema@.crm_source AS s (name, kind, tbl, key_column, profile, dedup_ttl, options)
	VALUES (name, kind, tbl, keycol, coalesce(opts->>'profile', name), ttl,
			opts OPERATOR(pg_catalog.-) ARRAY['secret', 'profile', 'key_column', 'dedup_ttl'])
	RETURNING s.crm_source_id INTO id;
	-- the secret, encrypted under the source's name; nothing left under
	-- that name before (the name was free) may pass for a previous secret
	DELETE FROM @extschema@.secret x WHERE x.provider OPERATOR(pg_catalog.=) create_crm_source.name;
	IF opts ? 'secret' THEN
		PERFORM @extschema@._secret_put(create_crm_source.name, 'webhook_secret', opts->>'secret');
	END IF;
	RETURN id;
EXCEPTION
	WHEN unique_violation THEN
		RAISE EXCEPTION 'CRM source "%" already exists', create_crm_source.name
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Choose another name, or drop the source first with shipsync.drop_crm_source().';
END
$$;
COMMENT ON FUNCTION @extschema@.create_crm_source(text, text, regclass, jsonb) IS
	'Register a CRM that pushes orders into table tbl, reached by the receiver at /crm/{name}. Kinds: jiandaoyun (简道云 data push, X-JDY-Signature), salesforce_om (Salesforce Outbound Messages, checked by OrganizationId), generic (Standard Webhooks-signed JSON). Options: secret (jiandaoyun and generic), organization_id and sobject_type (salesforce_om), profile (the crm_in field-map profile, by default the source name), key_column (the column matched to the CRM record id, by default the primary key; it needs a unique index), dedup_ttl (how long delivery ids are remembered, default 7 days).';

CREATE FUNCTION @extschema@.drop_crm_source(name text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t regclass;
BEGIN
	SELECT s.tbl INTO t FROM @extschema@.crm_source s WHERE s.name OPERATOR(pg_catalog.=) drop_crm_source.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'CRM source "%" does not exist', coalesce(name, '')
			USING ERRCODE = 'undefined_object',
				  HINT = 'See SELECT name FROM shipsync.crm_sources.';
	END IF;
	IF EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) t)
	   AND NOT pg_catalog.pg_has_role(session_user,
			(SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) t), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', t
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	DELETE FROM @extschema@.crm_source s WHERE s.name OPERATOR(pg_catalog.=) drop_crm_source.name;
END
$$;
COMMENT ON FUNCTION @extschema@.drop_crm_source(text) IS
	'Remove a CRM source, its secrets and its remembered deliveries; the receiver answers 404 for it from then on.';

-- A dropped source takes its secrets with it, however it is dropped.
CREATE TRIGGER crm_source_drop_secrets AFTER DELETE ON @extschema@.crm_source
	FOR EACH ROW EXECUTE FUNCTION @extschema@._drop_secrets();

CREATE VIEW @extschema@.crm_sources AS
SELECT s.crm_source_id, s.name, s.kind, s.tbl, s.key_column, s.profile, s.dedup_ttl,
	   s.options OPERATOR(pg_catalog.||) CASE WHEN x.provider IS NULL THEN '{}'::jsonb
			ELSE '{"secret": "********"}'::jsonb END AS options,
	   (SELECT pg_catalog.count(*) FROM @extschema@.field_map m
		WHERE m.profile OPERATOR(pg_catalog.=) s.profile
		  AND m.direction OPERATOR(pg_catalog.=) 'crm_in') AS map_rows,
	   s.created_at, s.created_by
FROM @extschema@.crm_source s
LEFT JOIN @extschema@.secret x ON x.provider OPERATOR(pg_catalog.=) s.name
	AND x.name OPERATOR(pg_catalog.=) 'webhook_secret';
COMMENT ON VIEW @extschema@.crm_sources IS
	'CRM sources with their secret masked, and how many crm_in field-map rows their profile has.';

/*
 * A Salesforce Outbound Message (SOAP 1.1) as rows: its OrganizationId, and
 * per Notification its Id, the sObject's type (without the "sf:" prefix)
 * and the sObject's fields as a JSON object (xsi:nil fields are null).
 * Parsed by PostgreSQL's xpath(); its text results come XML-escaped (&, <,
 * > and CR), which is undone here.  A body that is not such a message
 * raises SS400.
 */
CREATE FUNCTION @extschema@._salesforce_notifications(body text)
RETURNS TABLE (organization_id text, notification_id text, sobject_type text, record jsonb)
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ns text[] := ARRAY[ARRAY['s', 'http://schemas.xmlsoap.org/soap/envelope/'],
					   ARRAY['om', 'http://soap.sforce.com/2005/09/outbound'],
					   ARRAY['xsi', 'http://www.w3.org/2001/XMLSchema-instance']];
	doc xml;
	n xml;
	found_any boolean := false;
BEGIN
	BEGIN
		doc := XMLPARSE(DOCUMENT pg_catalog.regexp_replace(body, E'^\\uFEFF', ''));
	EXCEPTION WHEN OTHERS THEN
		RAISE EXCEPTION 'the body is not an XML document'
			USING ERRCODE = 'SS400', DETAIL = SQLERRM;
	END;
	organization_id := (pg_catalog.xpath('/s:Envelope/s:Body/om:notifications/om:OrganizationId/text()', doc, ns))[1]::text;
	IF organization_id IS NULL THEN
		RAISE EXCEPTION 'the body is not a Salesforce Outbound Message'
			USING ERRCODE = 'SS400',
				  DETAIL = 'It has no soapenv:Envelope/soapenv:Body/notifications/OrganizationId.';
	END IF;
	FOREACH n IN ARRAY pg_catalog.xpath('/s:Envelope/s:Body/om:notifications/om:Notification', doc, ns) LOOP
		found_any := true;
		notification_id := (pg_catalog.xpath('/om:Notification/om:Id/text()', n, ns))[1]::text;
		sobject_type := pg_catalog.regexp_replace(
			(pg_catalog.xpath('/om:Notification/om:sObject/@xsi:type', n, ns))[1]::text, '^[^:]*:', '');
		SELECT pg_catalog.jsonb_object_agg(
				   (pg_catalog.xpath('local-name(/*)', f))[1]::text,
				   CASE WHEN (pg_catalog.xpath('/*/@xsi:nil', f, ns))[1]::text OPERATOR(pg_catalog.=) 'true' THEN NULL
						ELSE pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
							 (pg_catalog.xpath('string(/*)', f))[1]::text,
							 '&lt;', '<'), '&gt;', '>'), '&#x0d;', E'\r'), '&amp;', '&') END)
		INTO record
		FROM pg_catalog.unnest(pg_catalog.xpath('/om:Notification/om:sObject/*', n, ns)) AS f;
		IF notification_id IS NULL OR record IS NULL THEN
			RAISE EXCEPTION 'a notification of the Outbound Message has no Id or no sObject'
				USING ERRCODE = 'SS400';
		END IF;
		RETURN NEXT;
	END LOOP;
	IF NOT found_any THEN
		RAISE EXCEPTION 'the Outbound Message has no Notification'
			USING ERRCODE = 'SS400';
	END IF;
END
$$;

CREATE FUNCTION @extschema@.ingest_crm(source text, body text, headers jsonb DEFAULT '{}',
									   query jsonb DEFAULT '{}')
RETURNS jsonb
AS 'MODULE_PATHNAME', 'shipsync_ingest_crm'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.ingest_crm(text, text, jsonb, jsonb) IS
	'Take one push of a CRM source, as received (raw body, headers matched case-insensitively, query parameters): verify it (jiandaoyun: X-JDY-Signature over nonce:body:secret:timestamp; generic: Standard Webhooks; salesforce_om: OrganizationId), drop a delivery seen before, map each record through the crm_in rows of the source''s profile and INSERT, UPDATE or DELETE it in the source''s table as the table''s owner. All or nothing. Returns {"source", "kind", "records", "inserted", "updated", "deleted", "unchanged", "duplicate", "ignored"} and, for salesforce_om, the SOAP "reply". A bad or missing signature raises SQLSTATE SS401; a body that is not the kind''s payload, or a record the map cannot read, SS400.';

------------------------------------------------------------------------------
-- The receiver's tracking ingest: many pushes of one provider in one call
------------------------------------------------------------------------------

-- Generic plans: a batch of a few pushes is cheap to run and costly to
-- plan (custom plans of _apply_tracking's statements cost a single push
-- two to four times as much, measured).
CREATE FUNCTION @extschema@._ingest_tracking_batch(provider text, bodies text[], headers jsonb[])
RETURNS TABLE (ord integer, sqlstate text, message text, result jsonb)
AS 'MODULE_PATHNAME', 'shipsync_ingest_tracking_batch'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan;
COMMENT ON FUNCTION @extschema@._ingest_tracking_batch(text, text[], jsonb[]) IS
	'Internal, for the receiver: ingest_tracking() of many pushes of one provider, each verified and parsed on its own and failing alone (sqlstate and message), the events of the good ones stored and folded together. One row per push.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.crm_source', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.crm_delivery', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.crm_source_crm_source_id_seq', '');

-- privileges (as in 90_privileges.sql)
REVOKE ALL ON FUNCTION @extschema@._check_name_free(), @extschema@._check_crm_secret(text, text, text),
	@extschema@._set_crm_secret(text, text, text),
	@extschema@._check_crm_map(text, regclass), @extschema@.create_crm_source(text, text, regclass, jsonb),
	@extschema@.drop_crm_source(text), @extschema@._salesforce_notifications(text),
	@extschema@.ingest_crm(text, text, jsonb, jsonb),
	@extschema@._ingest_tracking_batch(text, text[], jsonb[]) FROM PUBLIC;
GRANT SELECT ON @extschema@.crm_sources TO shipsync_reader;
GRANT EXECUTE ON FUNCTION @extschema@.create_crm_source(text, text, regclass, jsonb),
	@extschema@.drop_crm_source(text) TO shipsync_admin;
GRANT EXECUTE ON FUNCTION @extschema@.ingest_crm(text, text, jsonb, jsonb) TO shipsync_operator;
GRANT USAGE ON SCHEMA @extschema@ TO shipsync_ingest;
GRANT EXECUTE ON FUNCTION @extschema@.ingest_tracking(text, text, jsonb),
	@extschema@._ingest_tracking_batch(text, text[], jsonb[]),
	@extschema@.ingest_crm(text, text, jsonb, jsonb) TO shipsync_ingest;

------------------------------------------------------------------------------
-- Outbound hosts and per-provider TLS (issue 11 item 3, issue 12 item 3):
-- create_provider() refuses internal literal addresses that
-- shipsync.allowed_hosts does not allow, and takes option tls, whose
-- client_key is a secret.  create_provider() and set_secret() with these
-- checks are defined once, in the secrets section above.
------------------------------------------------------------------------------

-- The dispatcher judges every address it connects to (src/http.c); this is
-- the same rule for a URL whose host is an address, when it is given.
CREATE FUNCTION @extschema@._check_host(url text)
RETURNS void
AS 'MODULE_PATHNAME', 'shipsync_check_host'
LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION @extschema@._check_host(text) IS
	'Internal: refuse a URL whose host is a loopback, private, link-local or other internal address that shipsync.allowed_hosts does not allow.';

CREATE FUNCTION @extschema@._check_tls(ca_bundle text, client_cert text, client_key text)
RETURNS void
AS 'MODULE_PATHNAME', 'shipsync_check_tls'
LANGUAGE C IMMUTABLE;
COMMENT ON FUNCTION @extschema@._check_tls(text, text, text) IS
	'Internal: check the PEM texts of option tls: certificates, an unencrypted private key, and that the key belongs to the client certificate.';

-- Option tls of create_provider(): its fields, their forms, and the PEM
-- texts (through _check_tls).  No message quotes a value: client_key is a
-- secret.
CREATE FUNCTION @extschema@._check_tls_option(tls jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text;
BEGIN
	IF tls IS NULL THEN
		RETURN;
	END IF;
	IF jsonb_typeof(tls) <> 'object' THEN
		RAISE EXCEPTION 'option "tls" must be a JSON object'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = E'For example {"ca_bundle": "-----BEGIN CERTIFICATE-----\\n...", "min_version": "1.3"}.';
	END IF;
	PERFORM @extschema@._check_options(tls,
		ARRAY['ca_bundle', 'client_cert', 'client_key', 'min_version', 'pinned_public_key'], 'tls');
	FOR k IN SELECT jsonb_object_keys(tls) LOOP
		IF k <> 'min_version' AND (jsonb_typeof(tls->k) <> 'string' OR tls->>k = '') THEN
			RAISE EXCEPTION 'tls option "%" must be a non-empty string', k
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Give PEM texts and the pin as JSON strings.';
		END IF;
	END LOOP;
	IF tls ? 'min_version' AND (jsonb_typeof(tls->'min_version') NOT IN ('string', 'number')
		OR tls->>'min_version' NOT IN ('1.2', '1.3')) THEN
		RAISE EXCEPTION 'tls option "min_version" must be "1.2" or "1.3"'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'pg_shipsync never speaks TLS below 1.2.',
				  HINT = 'Give "1.3" to refuse TLS 1.2, or leave it out.';
	END IF;
	IF tls ? 'pinned_public_key'
	   AND (tls->>'pinned_public_key') !~ '^sha256//[A-Za-z0-9+/]{43}=(;sha256//[A-Za-z0-9+/]{43}=)*$' THEN
		RAISE EXCEPTION 'tls option "pinned_public_key" must be "sha256//" and a base64 SHA-256 digest'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Several pins are separated by ";"; the carrier''s key must match one of them.',
				  HINT = 'openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64';
	END IF;
	PERFORM @extschema@._check_tls(tls->>'ca_bundle', tls->>'client_cert', tls->>'client_key');
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._check_url(base_url text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	host text;
BEGIN
	IF base_url IS NULL OR base_url !~* E'^https?://[^/?#\\s]+(/[^?#\\s]*)?$' THEN
		RAISE EXCEPTION 'invalid base_url "%"', coalesce(base_url, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A base URL is http:// or https://, a host and an optional path, without query or fragment.',
				  HINT = 'For example https://api.carrier.example/v1.';
	END IF;
	-- where: an internal address only if shipsync.allowed_hosts allows it
	-- (names are judged when connecting); how: https, but for loopback
	PERFORM @extschema@._check_host(base_url);
	IF base_url ~* '^http://' THEN
		host := lower(substring(base_url from E'^http://(?:[^@/]*@)?(\\[[^\\]]*\\]|[^:/]*)'));
		-- loopback: localhost and *.localhost (RFC 6761: libcurl resolves
		-- them to loopback itself), 127.0.0.0/8, ::1
		IF host NOT IN ('127.0.0.1', 'localhost', '[::1]')
		   AND host !~ E'^127\\.\\d+\\.\\d+\\.\\d+$' AND host !~ E'\\.localhost$'
		   AND NOT coalesce(current_setting('shipsync.allow_insecure_http', true), 'off')::boolean THEN
			RAISE EXCEPTION 'plain http:// is refused for host "%"', host
				USING ERRCODE = 'insufficient_privilege',
					  DETAIL = 'Credentials and customer data would cross the network unencrypted.',
					  HINT = 'Use https://, or set shipsync.allow_insecure_http = on for a trusted network.';
		END IF;
	END IF;
	RETURN rtrim(base_url, '/');
END
$$;

-- none of them is for PUBLIC (0.2 grants every privilege in one place)
REVOKE ALL ON FUNCTION @extschema@._check_host(text), @extschema@._check_tls(text, text, text),
	@extschema@._check_tls_option(jsonb) FROM PUBLIC;


------------------------------------------------------------------------------
-- Roles that mean what they say (issue 11, items 6 and 7): personal data
-- masked for readers, the "who" columns set by the server, the audit log
-- (install/80_security.sql)
------------------------------------------------------------------------------

-- tickets get notes (of ack() and resolve()); their "who" columns are the server's
ALTER TABLE @extschema@.exception_ticket ADD COLUMN resolution text, ADD COLUMN acknowledgement text;
COMMENT ON COLUMN @extschema@.exception_ticket.acknowledged_by IS
	'Who set acknowledged_at (shipsync.ack()): set by the server, never by the caller.';
COMMENT ON COLUMN @extschema@.exception_ticket.resolved_by IS
	'Who set resolved_at (shipsync.resolve(), retry(), requeue(), or reconcile when a pass no longer saw the problem): set by the server, never by the caller.';
COMMENT ON COLUMN @extschema@.exception_ticket.resolution IS
	'The note given to shipsync.resolve(), or why reconciliation resolved it.';
COMMENT ON COLUMN @extschema@.exception_ticket.acknowledgement IS
	'The note given to shipsync.ack().';

-- field maps mark personal fields; the built-in profile marks its own
ALTER TABLE @extschema@.field_map ADD COLUMN pii text
	CONSTRAINT field_map_pii_check CHECK (pii IS NULL OR
		(pii IN ('name', 'phone', 'address', 'email') AND direction = 'out'));
COMMENT ON COLUMN @extschema@.field_map.pii IS
	'Outbound rows: the value is personal, of kind name, phone, address or email; shipsync_reader sees it masked in request bodies and render_request(). NULL: not personal.';
ALTER TABLE @extschema@.field_map DISABLE TRIGGER field_map_check;
UPDATE @extschema@.field_map
   SET pii = CASE split_part(target_path, '.', 2) WHEN 'contact' THEN 'name'
			 WHEN 'mobile' THEN 'phone' ELSE 'address' END
 WHERE seeded AND profile = 'sf_express' AND direction = 'out'
   AND target_path ~ E'^contactInfoList\\[contactType=[12]\\]\\.(contact|mobile|address)$';
ALTER TABLE @extschema@.field_map ENABLE TRIGGER field_map_check;

-- changed functions: pause/resume, retry and requeue audit; attach takes
-- option pii; field maps are stamped by the server and copied with their
-- marks; render_request() masks for readers
CREATE OR REPLACE FUNCTION @extschema@._set_paused(provider text, paused boolean)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- the audit row of the change says which (its SET clause ends it here)
	PERFORM pg_catalog.set_config('shipsync.audit_action',
		CASE WHEN _set_paused.paused THEN 'pause' ELSE 'resume' END, true);
	UPDATE @extschema@.provider p
	   SET paused = _set_paused.paused, updated_at = now(), updated_by = session_user
	 WHERE p.name = _set_paused.provider;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'provider "%" does not exist', coalesce(provider, '')
			USING ERRCODE = 'undefined_object',
				  HINT = 'See SELECT name FROM shipsync.providers.';
	END IF;
	PERFORM @extschema@._wake(true);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.attach(tbl regclass, provider text, key_column name DEFAULT NULL,
								   writeback jsonb DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pid integer;
	bid integer;
	keycol name := key_column;
	keytype text;
	wb jsonb := coalesce(writeback, '{}');
	opts jsonb := coalesce(options, '{}');
	f text;
	col text;
	coltype text;
	sets text[] := '{}';
	wbcols text[] := '{}';
	render text;
	wbsql text;
	cancel_when text;
	trigargs text;
	relkind "char";
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.relkind INTO relkind FROM pg_class c WHERE c.oid = tbl;
	IF relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '"%" is not a table', tbl
			USING ERRCODE = 'wrong_object_type',
				  HINT = 'Attach an ordinary or partitioned table.';
	END IF;
	IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'The dispatcher reads and writes the table with its owner''s rights.';
	END IF;
	SELECT p.provider_id INTO pid FROM @extschema@.provider p WHERE p.name = attach.provider;
	IF pid IS NULL THEN
		RAISE EXCEPTION 'provider "%" does not exist', coalesce(provider, '')
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it first with shipsync.create_provider().';
	END IF;
	IF EXISTS (SELECT 1 FROM @extschema@.binding b WHERE b.tbl = attach.tbl AND b.active) THEN
		RAISE EXCEPTION 'table % is already attached', tbl
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Call shipsync.detach() first to attach it again.';
	END IF;
	PERFORM @extschema@._check_options(opts, ARRAY['cancel_when', 'validate', 'tracking_provider', 'pii', 'grace', 'created_at_column'], 'attach');
	PERFORM @extschema@._check_attach_options(opts, pid);
	PERFORM @extschema@._check_reconcile_options(opts, tbl);
	IF current_setting('server_encoding') NOT IN ('UTF8', 'SQL_ASCII') THEN
		RAISE EXCEPTION 'database encoding % cannot be sent as JSON', current_setting('server_encoding')
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Carriers read JSON as UTF-8, and requests are rendered in the database encoding.',
				  HINT = 'Keep the orders in a UTF8 database.';
	END IF;

	-- the key: given, or the single-column primary key
	IF keycol IS NULL THEN
		SELECT a.attname INTO keycol
		FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE i.indrelid = tbl AND i.indisprimary AND i.indnatts = 1;
		IF keycol IS NULL THEN
			RAISE EXCEPTION 'table % has no single-column primary key', tbl
				USING ERRCODE = 'invalid_table_definition',
					  HINT = 'Pass key_column => the column that identifies an order.';
		END IF;
	END IF;
	SELECT format_type(a.atttypid, a.atttypmod) INTO keytype
	FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = keycol AND a.attnum > 0 AND NOT a.attisdropped;
	IF keytype IS NULL THEN
		RAISE EXCEPTION 'column "%" of table % does not exist', keycol, tbl
			USING ERRCODE = 'undefined_column',
				  HINT = 'Pass key_column => the column that identifies an order.';
	END IF;

	-- write-back: shipment field -> order column
	IF jsonb_typeof(wb) <> 'object' THEN
		RAISE EXCEPTION 'writeback must be a JSON object of shipment fields to column names'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example {"tracking_number": "waybill_no"}.';
	END IF;
	FOR f, col IN SELECT key, value #>> '{}' FROM jsonb_each(wb) LOOP
		IF f NOT IN ('tracking_number', 'status', 'provider_shipment_id', 'label_url', 'fee_total') THEN
			RAISE EXCEPTION 'unknown write-back field "%"', f
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'Write-back fields: tracking_number, status, provider_shipment_id, label_url, fee_total.';
		END IF;
		SELECT format_type(a.atttypid, a.atttypmod) INTO coltype
		FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
		IF coltype IS NULL THEN
			RAISE EXCEPTION 'write-back column "%" of table % does not exist', coalesce(col, ''), tbl
				USING ERRCODE = 'undefined_column',
					  HINT = 'Add the column first, or fix the writeback map.';
		END IF;
		IF col = keycol THEN
			RAISE EXCEPTION 'the key column "%" cannot be a write-back column', col
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Write shipment fields into columns of their own.';
		END IF;
		IF (SELECT t.typcategory FROM pg_attribute a JOIN pg_type t
				ON t.oid = coalesce(nullif(
					(SELECT typbasetype FROM pg_type WHERE oid = a.atttypid), 0), a.atttypid)
			WHERE a.attrelid = tbl AND a.attname = col)
		   NOT IN ('S', CASE WHEN f = 'fee_total' THEN 'N' ELSE 'S' END) THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = CASE WHEN f = 'fee_total' THEN 'fee_total is a numeric amount.'
								   ELSE format('%s is text.', f) END,
					  HINT = CASE WHEN f = 'fee_total' THEN 'Use a numeric or text column.'
								 ELSE 'Use a text or varchar column.' END;
		END IF;
		-- no explicit cast: assignment rules apply, so a tracking number too
		-- long for a varchar(n) column fails loudly instead of being cut
		sets := sets || format('%I = COALESCE(shipsync_u.%I, t.%I)', col, f, col);
		wbcols := wbcols || col;
	END LOOP;

	cancel_when := opts->>'cancel_when';
	IF cancel_when IS NOT NULL AND cancel_when ~ ';' THEN
		RAISE EXCEPTION 'option "cancel_when" must be one boolean expression'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example "status = ''cancelled''".';
	END IF;
	-- the restricted grammar, printed back with pg_catalog's operators:
	-- no function, operator or cast of the caller's is ever planned here
	IF cancel_when IS NOT NULL THEN
		cancel_when := @extschema@._cancel_when_sql(cancel_when);
	END IF;

	-- The row itself and its write-back columns: the dispatcher prints the
	-- request's body from the row (src/body.c: as json_build_object() and
	-- row_to_json() would, with the type lookups once a batch rather than
	-- once a column of every row) and keeps the row's digest
	-- (shipsync._row_digest), what reconciliation compares the order with
	-- later.  The row is t.*, never a bare t: a column named t would be
	-- taken instead.  Operators and types qualified: the dispatcher, render_request() and
	-- this function run these as the table's owner, each with a search_path
	-- of its own.  (unnest of several arrays is grammar: pg_catalog's.)
	render := format(
		'SELECT shipsync_u.shipsync_id, t.%1$I IS NOT NULL AS found,'
		' %4$s AS is_cancel, t.*::%2$s AS shipsync_row, %5$L::pg_catalog.text[] AS shipsync_skip'
		' FROM unnest($1::pg_catalog.int8[], $2::pg_catalog.text[])'
		' AS shipsync_u(shipsync_id, shipsync_key)'
		' LEFT JOIN %2$s AS t ON t.%1$I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%3$s',
		keycol, tbl, keytype,
		CASE WHEN cancel_when IS NULL THEN 'false'
			 ELSE format('COALESCE((%s), false)', cancel_when) END,
		ARRAY(SELECT c FROM unnest(wbcols) AS c ORDER BY 1));

	IF array_length(sets, 1) > 0 THEN
		wbsql := format(
			'UPDATE %s AS t SET %s'
			' FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.text[],'
			' $4::pg_catalog.text[], $5::pg_catalog.text[], $6::pg_catalog.numeric[])'
			' AS shipsync_u(shipsync_key, provider_shipment_id, tracking_number, status, label_url, fee_total)'
			' WHERE t.%I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%s',
			tbl, array_to_string(sets, ', '), keycol, keytype);
	END IF;

	-- prove both statements against the table now, not in the dispatcher,
	-- and with the rights the dispatcher will have: the table owner's
	BEGIN
		PERFORM @extschema@._explain_as_owner(tbl, render, '{int8[], text[]}');
		IF wbsql IS NOT NULL THEN
			PERFORM @extschema@._explain_as_owner(tbl, wbsql,
				'{text[], text[], text[], text[], text[], numeric[]}');
		END IF;
	EXCEPTION WHEN OTHERS THEN
		RAISE EXCEPTION 'cannot attach table %: %', tbl, SQLERRM
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Check option cancel_when and the writeback columns'' types.';
	END;

	INSERT INTO @extschema@.binding AS b (tbl, provider_id, key_column, writeback, options, render_sql, writeback_sql)
	VALUES (attach.tbl, pid, keycol, wb, opts, render, wbsql)
	ON CONFLICT ON CONSTRAINT binding_tbl_key DO UPDATE
	   SET provider_id = EXCLUDED.provider_id, key_column = EXCLUDED.key_column,
		   writeback = EXCLUDED.writeback, options = EXCLUDED.options,
		   render_sql = EXCLUDED.render_sql, writeback_sql = EXCLUDED.writeback_sql,
		   active = true, created_at = now(), created_by = session_user
	RETURNING b.binding_id INTO bid;

	trigargs := array_to_string(ARRAY(SELECT quote_literal(x)
		FROM unnest(ARRAY[bid::text, pid::text, keycol::text] || wbcols) x), ', ');
	EXECUTE format('CREATE TRIGGER shipsync_capture AFTER INSERT OR UPDATE OR DELETE ON %s'
				   ' FOR EACH ROW EXECUTE FUNCTION @extschema@.capture(%s)', tbl, trigargs);
	IF opts->>'validate' = 'reject' THEN
		EXECUTE format('CREATE TRIGGER shipsync_validate AFTER INSERT OR UPDATE ON %s'
					   ' FOR EACH ROW EXECUTE FUNCTION @extschema@._validate(%L)', tbl, bid);
	END IF;
	PERFORM @extschema@._wake(true);
	RETURN bid;
END
$$;
COMMENT ON FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) IS
	'Attach a CRM table to a provider: installs the capture trigger. writeback maps tracking_number, status, provider_shipment_id, label_url, fee_total to columns; options: cancel_when (a boolean SQL expression over the row), validate (invalid, the default: an order missing required mapped fields becomes an invalid intent with a ticket; reject: its INSERT or UPDATE fails), tracking_provider (a provider of a tracking dialect where every new waybill is registered), pii (which columns of the generic body are personal: {"column": "name"|"phone"|"address"|"email"|null}), grace (reconciliation: how old an order without a shipment must be to be not_sent, default 10 minutes), created_at_column (the column that tells an order''s age).';

CREATE OR REPLACE FUNCTION @extschema@.retry(outbox_id bigint)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	st text;
BEGIN
	SELECT o.state INTO st FROM @extschema@.outbox o WHERE o.id = retry.outbox_id FOR UPDATE;
	IF st IS NULL THEN
		RAISE EXCEPTION 'outbox intent % does not exist', outbox_id
			USING ERRCODE = 'undefined_object',
				  HINT = 'Find intents with shipsync.trace() or in shipsync.outbox.';
	END IF;
	IF st NOT IN ('dead', 'invalid', 'retrying') THEN
		RAISE EXCEPTION 'outbox intent % is %, not dead, invalid or retrying', outbox_id, st
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Only intents that stopped or wait for a retry can be retried.';
	END IF;
	UPDATE @extschema@.outbox o
	   SET state = CASE WHEN o.attempts = 0 THEN 'pending' ELSE 'retrying' END,
		   attempts = 0, next_attempt_at = now(), done_at = NULL, updated_at = now()
	 WHERE o.id = retry.outbox_id;
	UPDATE @extschema@.exception_ticket t
	   SET resolved_at = now(), resolved_by = session_user
	 WHERE t.outbox_id = retry.outbox_id AND t.resolved_at IS NULL;
	PERFORM @extschema@._audit('retry', 'intent', retry.outbox_id::text,
		pg_catalog.jsonb_build_object('state', st),
		(SELECT pg_catalog.jsonb_build_object('state', o.state) FROM @extschema@.outbox o
		  WHERE o.id OPERATOR(pg_catalog.=) retry.outbox_id));
	PERFORM @extschema@._wake(false);
	RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@.retry(bigint) IS
	'Send one dead, invalid or retrying intent again now, with its attempts reset and the same idempotency key.';

CREATE OR REPLACE FUNCTION @extschema@.requeue(provider text DEFAULT NULL, state text DEFAULT 'dead')
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
	pid integer;
BEGIN
	IF state IS NULL OR state NOT IN ('dead', 'invalid', 'retrying') THEN
		RAISE EXCEPTION 'cannot requeue intents in state "%"', coalesce(state, '')
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Requeue dead, invalid or retrying intents.';
	END IF;
	IF provider IS NOT NULL THEN
		SELECT p.provider_id INTO pid FROM @extschema@.provider p WHERE p.name = requeue.provider;
		IF pid IS NULL THEN
			RAISE EXCEPTION 'provider "%" does not exist', provider
				USING ERRCODE = 'undefined_object',
					  HINT = 'See SELECT name FROM shipsync.providers.';
		END IF;
	END IF;
	WITH q AS (
		UPDATE @extschema@.outbox o
		   SET state = CASE WHEN o.attempts = 0 THEN 'pending' ELSE 'retrying' END,
			   attempts = 0, next_attempt_at = now(), done_at = NULL, updated_at = now()
		 WHERE o.state = requeue.state AND (pid IS NULL OR o.provider_id = pid)
		RETURNING o.id),
	t AS (
		UPDATE @extschema@.exception_ticket t
		   SET resolved_at = now(), resolved_by = session_user
		  FROM q WHERE t.outbox_id = q.id AND t.resolved_at IS NULL)
	SELECT count(*) INTO n FROM q;
	PERFORM @extschema@._audit('requeue', 'provider', coalesce(requeue.provider, '*'),
		pg_catalog.jsonb_build_object('state', requeue.state),
		pg_catalog.jsonb_build_object('requeued', n));
	PERFORM @extschema@._wake(false);
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.requeue(text, text) IS
	'Send again every intent of a provider (or all providers) in the given state (default dead). Returns how many were requeued.';

CREATE OR REPLACE FUNCTION @extschema@._on_drop()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET shipsync.audit_action = 'table_dropped'
AS $$
DECLARE
	r record;
	n bigint;
BEGIN
	FOR r IN SELECT x.objid FROM pg_catalog.pg_event_trigger_dropped_objects() x
			 WHERE x.object_type OPERATOR(pg_catalog.=) 'table' LOOP
		WITH mv AS (
			DELETE FROM @extschema@.inbox i USING @extschema@.binding bb
			WHERE bb.tbl OPERATOR(pg_catalog.=) r.objid
			  AND i.binding_id OPERATOR(pg_catalog.=) bb.binding_id
			RETURNING i.*)
		INSERT INTO @extschema@.outbox (id, binding_id, provider_id, order_key, op,
			idempotency_key, created_at, next_attempt_at)
		SELECT id, binding_id, provider_id, order_key, op, idempotency_key, created_at, created_at
		FROM mv;
		WITH b AS (
			UPDATE @extschema@.binding SET active = false
			 WHERE tbl OPERATOR(pg_catalog.=) r.objid RETURNING binding_id),
		d AS (
			UPDATE @extschema@.outbox o
			   SET state = 'dead', last_error = 'the order table was dropped',
				   error_class = 'table_dropped', done_at = pg_catalog.now(), updated_at = pg_catalog.now()
			  FROM b WHERE o.binding_id OPERATOR(pg_catalog.=) b.binding_id
			   AND o.state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'retrying'])
			RETURNING o.id, o.binding_id, o.order_key, o.provider_id),
		t AS (
			INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, provider_id, outbox_id, detail)
			SELECT 'table_dropped', d.binding_id, d.order_key, d.provider_id, d.id, 'the order table was dropped'
			FROM d
			RETURNING ticket_id, outbox_id, binding_id, order_key)
		-- kinds and ids only: any role may LISTEN (docs/security.md)
		SELECT pg_catalog.count(pg_catalog.pg_notify('shipsync', pg_catalog.json_build_object('event', 'table_dropped',
			'outbox_id', t.outbox_id, 'ticket_id', t.ticket_id, 'binding_id', t.binding_id,
			'order_key', t.order_key)::text))
		INTO n FROM t;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@._on_drop() IS
	'Internal: the event trigger of DROP TABLE: a dropped attached table''s binding becomes inactive and its waiting intents dead.';

CREATE OR REPLACE FUNCTION @extschema@._check_attach_options(opts jsonb, provider_id integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	d text;
BEGIN
	SELECT p.dialect INTO d FROM @extschema@.provider p WHERE p.provider_id = _check_attach_options.provider_id;
	IF d IN ('easypost', 'aftership', 'kuaidi100') THEN
		RAISE EXCEPTION 'provider of dialect % tracks shipments, it does not create them', d
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Attach the table to a shipping provider, and name this one in option "tracking_provider".';
	END IF;
	IF opts ? 'tracking_provider' THEN
		SELECT p.dialect INTO d FROM @extschema@.provider p WHERE p.name = opts->>'tracking_provider';
		IF d IS NULL THEN
			RAISE EXCEPTION 'tracking provider "%" does not exist', opts->>'tracking_provider'
				USING ERRCODE = 'undefined_object',
					  HINT = 'Create it first with shipsync.create_provider().';
		END IF;
		IF d NOT IN ('easypost', 'aftership', 'kuaidi100') THEN
			RAISE EXCEPTION 'provider "%" is not a tracking provider', opts->>'tracking_provider'
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Its dialect is %s; tracking dialects are easypost, aftership and kuaidi100.', d),
					  HINT = 'Name a provider of a tracking dialect.';
		END IF;
	END IF;
	IF opts ? 'validate' AND (jsonb_typeof(opts->'validate') <> 'string'
		OR opts->>'validate' NOT IN ('invalid', 'reject')) THEN
		RAISE EXCEPTION 'option "validate" must be "invalid" or "reject"'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given is %s.', opts->'validate'),
				  HINT = 'Use invalid (the default) to keep the order and mark its intent invalid, or reject to make the INSERT fail.';
	END IF;
	IF opts ? 'pii' AND (jsonb_typeof(opts->'pii') <> 'object' OR EXISTS (
		SELECT 1 FROM jsonb_each(opts->'pii') AS c(col, kind)
		WHERE jsonb_typeof(c.kind) <> 'null'
		  AND (jsonb_typeof(c.kind) <> 'string' OR c.kind #>> '{}' NOT IN ('name', 'phone', 'address', 'email')))) THEN
		RAISE EXCEPTION 'option "pii" must map column names to name, phone, address, email or null'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given is %s.', opts->'pii'),
				  HINT = 'For example {"receiver": "name", "tel": "phone", "name": null}: null marks a column the usual names would take as personal as not personal.';
	END IF;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._field_map_check()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.seeded THEN
		RAISE EXCEPTION 'profile "%" is built in and read-only', OLD.profile
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'Its rows come with the extension and are created again on restore.',
				  HINT = format('Copy it with shipsync.copy_profile(%L, ''my_profile''), change the copy, and set option "profile" of the provider.', OLD.profile);
	END IF;
	IF TG_OP = 'DELETE' THEN
		RETURN OLD;
	END IF;
	-- only the extension script seeds, before this trigger exists
	NEW.seeded := false;
	PERFORM @extschema@._map_check(NEW.target_path, NEW.source, NEW.transform, NEW.arg::text);
	NEW.updated_at := now();
	NEW.updated_by := @extschema@._actor();
	RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.copy_profile(from_profile text, to_profile text)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
BEGIN
	IF to_profile IS NULL OR to_profile !~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid profile name "%"', coalesce(to_profile, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A profile name is 1 to 63 letters, digits, "_", "." or "-".',
				  HINT = 'For example ''sf_shop1''.';
	END IF;
	IF EXISTS (SELECT 1 FROM @extschema@.field_map WHERE profile = to_profile) THEN
		RAISE EXCEPTION 'profile "%" already exists', to_profile
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Choose another name, or delete its rows from shipsync.field_map first.';
	END IF;
	INSERT INTO @extschema@.field_map (profile, direction, target_path, source, transform, arg,
		"default", required, position, pii)
	SELECT to_profile, direction, target_path, source, transform, arg, "default", required, position, pii
	FROM @extschema@.field_map WHERE profile = from_profile
	ORDER BY field_map_id;
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n = 0 THEN
		RAISE EXCEPTION 'profile "%" has no rows', coalesce(from_profile, '')
			USING ERRCODE = 'undefined_object',
				  HINT = 'See SELECT DISTINCT profile FROM shipsync.field_map.';
	END IF;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.copy_profile(text, text) IS
	'Copy every field_map row of a profile (a built-in one, say sf_express) into a new, editable profile. Returns the number of rows copied.';

CREATE OR REPLACE FUNCTION @extschema@.render_request(outbox_id bigint)
RETURNS TABLE (method text, url text, headers text[], body text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	o record;
	p record;
	r record;
BEGIN
	SELECT x.provider_id, x.binding_id, x.idempotency_key INTO o FROM @extschema@.outbox x
	WHERE x.id = render_request.outbox_id
	UNION ALL	-- captured, not yet moved to the outbox
	SELECT i.provider_id, i.binding_id, i.idempotency_key FROM @extschema@.inbox i
	WHERE i.id = render_request.outbox_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'outbox intent % does not exist', outbox_id
			USING ERRCODE = 'undefined_object',
				  HINT = 'Find intents with shipsync.trace() or in shipsync.outbox.';
	END IF;
	SELECT x.* INTO p FROM @extschema@.provider x WHERE x.provider_id = o.provider_id;
	SELECT * INTO r FROM @extschema@._render(outbox_id);
	IF r.method IS NULL THEN
		RAISE EXCEPTION 'outbox intent % has nothing to send', outbox_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('It would not be sent: %s.', r.body),
				  HINT = 'See its state and last_error in shipsync.outbox.';
	END IF;
	method := r.method;
	url := r.url;
	body := r.body;
	IF NOT @extschema@._pii_visible() THEN
		body := @extschema@._mask_body(body,
			(SELECT x.paths FROM @extschema@._pii_rules x
			  WHERE x.provider_id OPERATOR(pg_catalog.=) o.provider_id),
			(SELECT x.kinds FROM @extschema@._pii_rules x
			  WHERE x.provider_id OPERATOR(pg_catalog.=) o.provider_id),
			(SELECT b.options OPERATOR(pg_catalog.->) 'pii' FROM @extschema@.binding b
			  WHERE b.binding_id OPERATOR(pg_catalog.=) o.binding_id));
	END IF;
	headers := ARRAY['Idempotency-Key: ' || o.idempotency_key]
		|| CASE WHEN p.dialect IN ('sf_express', 'kuaidi100')
				THEN ARRAY['Content-Type: application/x-www-form-urlencoded']
				ELSE ARRAY['Content-Type: application/json'] END
		|| ARRAY['Accept: application/json']
		|| ARRAY(SELECT k || ': ' || CASE WHEN jsonb_typeof(v) = 'string' THEN v #>> '{}' ELSE '********' END
				 FROM jsonb_each(p.headers) AS h(k, v))
		|| CASE WHEN p.dialect = 'kuaidi100' THEN '{}'::text[]
				ELSE @extschema@._auth_headers_masked(p.auth) END;
	RETURN NEXT;
END
$$;
COMMENT ON FUNCTION @extschema@.render_request(bigint) IS
	'A dry run: the method, URL, headers (secrets masked) and body that the intent sends or would send, personal values masked for shipsync_reader. An intent never sent is rendered from the current order row and its provider''s field map, and nothing is stored.';


------------------------------------------------------------------------------
-- Who did it (src/audit.c)
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._actor()
RETURNS name
AS 'MODULE_PATHNAME', 'shipsync_actor'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._actor() IS
	'Internal: who a change is recorded as made by: the session user, or the name of the extension''s own worker (dispatcher).';

CREATE FUNCTION @extschema@._caller()
RETURNS name
AS 'MODULE_PATHNAME', 'shipsync_caller'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._caller() IS
	'Internal: the role the session acts as (after SET ROLE), also inside a SECURITY DEFINER function.';

CREATE FUNCTION @extschema@._in_extension_script()
RETURNS boolean
AS 'MODULE_PATHNAME', 'shipsync_in_extension_script'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._in_extension_script() IS
	'Internal: true while CREATE EXTENSION or ALTER EXTENSION UPDATE runs; what those scripts seed is not audited.';

------------------------------------------------------------------------------
-- Personal data, masked for shipsync_reader (src/mask.c, src/privacy.c)
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.mask_pii(value text, kind text)
RETURNS text
AS 'MODULE_PATHNAME', 'shipsync_mask_pii_sql'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.mask_pii(text, text) IS
	'A personal value masked as shipsync_reader sees it; kind is name (张三: 张*, John Smith: J*** Smith), phone (138****5678), address (cut after the district or the first comma: 深圳市南山区***) or email (z***@example.com).';

CREATE FUNCTION @extschema@._mask_body(body text, paths text[], kinds text[], columns jsonb)
RETURNS text
AS 'MODULE_PATHNAME', 'shipsync_mask_body'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._mask_body(text, text[], text[], jsonb) IS
	'Internal: a request body with the values at the personal paths of its profile masked, and, in the generic body, the members of "order" that columns (the binding''s option pii) or the column convention mark personal.';

CREATE FUNCTION @extschema@._pii_visible()
RETURNS boolean
AS 'MODULE_PATHNAME', 'shipsync_pii_visible'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._pii_visible() IS
	'Internal: whether the role the session acts as sees personal values whole (shipsync_operator and above, superusers).';

-- The personal target paths of each provider's profile, as the field map
-- marks them now.
CREATE VIEW @extschema@._pii_rules AS
SELECT p.provider_id,
	   pg_catalog.array_agg(f.target_path ORDER BY f.position, f.field_map_id) AS paths,
	   pg_catalog.array_agg(f.pii ORDER BY f.position, f.field_map_id) AS kinds
FROM @extschema@.provider p
JOIN @extschema@.field_map f
  ON f.profile = coalesce(p.options->>'profile', p.dialect)
 AND f.direction = 'out' AND f.pii IS NOT NULL
GROUP BY p.provider_id;
COMMENT ON VIEW @extschema@._pii_rules IS
	'Internal: per provider, the target paths its profile''s field map marks personal, and their kinds.';

CREATE VIEW @extschema@.intents AS
SELECT o.id, o.binding_id, o.provider_id, o.order_key, o.op, o.idempotency_key, o.state,
	   o.attempts, o.next_attempt_at, o.lease_until, o.created_at, o.updated_at, o.done_at,
	   o.request_method, o.request_url,
	   CASE WHEN (SELECT @extschema@._pii_visible()) THEN o.request_body
			ELSE @extschema@._mask_body(o.request_body, r.paths, r.kinds, b.options->'pii')
	   END AS request_body,
	   o.request_digest, o.last_status, o.error_class, o.last_error, o.coalesced_into
FROM @extschema@.outbox o
LEFT JOIN @extschema@._pii_rules r ON r.provider_id = o.provider_id
LEFT JOIN @extschema@.binding b ON b.binding_id = o.binding_id;
COMMENT ON VIEW @extschema@.intents IS
	'The outbox as its readers may see it: every column of shipsync.outbox, with the personal values of request_body masked unless the reader is a member of shipsync_operator. shipsync_reader reads this view, not the table.';

------------------------------------------------------------------------------
-- The audit log
------------------------------------------------------------------------------

CREATE TABLE @extschema@.audit_log (
	audit_id		bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	at				timestamptz NOT NULL DEFAULT pg_catalog.now(),
	"session_user"	name NOT NULL,
	"current_user"	name NOT NULL,
	action			text NOT NULL,
	object_kind		text NOT NULL,
	object_name		text,
	old_value		jsonb,
	new_value		jsonb
);
CREATE INDEX audit_log_at_idx ON @extschema@.audit_log USING brin (at);
CREATE INDEX audit_log_object_idx ON @extschema@.audit_log (object_kind, object_name, at);
COMMENT ON TABLE @extschema@.audit_log IS
	'Every change of providers, secrets, bindings, field maps, status maps, fee type maps, currencies and stuck thresholds, and every state-changing call (attach, detach, pause, resume, retry, requeue, set_secret, rotate_key, ack, resolve, reconcile, resync): when, by whom, and the values before and after, secrets shown as "(set)" or "(changed)". Only the extension''s owner may change or delete rows; the dispatcher prunes rows older than shipsync.audit_retention.';
COMMENT ON COLUMN @extschema@.audit_log."session_user" IS
	'The session user, or the extension''s own worker (dispatcher).';
COMMENT ON COLUMN @extschema@.audit_log."current_user" IS
	'The role the session acted as (after SET ROLE), outside any SECURITY DEFINER function.';
COMMENT ON COLUMN @extschema@.audit_log.action IS
	'The function called (attach, pause, ...), or insert, update, delete or truncate for a change made directly to the table.';
COMMENT ON COLUMN @extschema@.audit_log.object_name IS
	'provider: its name; binding: the table; field_map: profile/direction/target_path; status_map: profile/raw_status/pattern; fee_type_map: profile/code; currency: its code; stuck_after: the status; intent: its id; ticket: its id.';
COMMENT ON COLUMN @extschema@.audit_log.old_value IS
	'An insert: null; a delete: the whole row; an update: the columns that changed, as they were.';
COMMENT ON COLUMN @extschema@.audit_log.new_value IS
	'An insert: the whole row; a delete: null; an update: the columns that changed, as they are now.';

-- Write one audit row, unless an extension script is running.  A row the
-- restore of a dump would collide with (ids restart while the log itself is
-- restored) is left out rather than failing the restore.
CREATE FUNCTION @extschema@._audit(action text, object_kind text, object_name text,
								   old_value jsonb, new_value jsonb)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF @extschema@._in_extension_script() THEN
		RETURN;
	END IF;
	INSERT INTO @extschema@.audit_log ("session_user", "current_user", action, object_kind,
									   object_name, old_value, new_value)
	VALUES (@extschema@._actor(), @extschema@._caller(), $1, $2, $3, $4, $5)
	ON CONFLICT (audit_id) DO NOTHING;
END
$$;
COMMENT ON FUNCTION @extschema@._audit(text, text, text, jsonb, jsonb) IS
	'Internal: record one action in shipsync.audit_log.';

-- The secrets of a row as "(set)", or, compared with the row before the
-- change, "(changed)" when they differ.  spec maps a member to true (it is
-- secret), to {"except": [...]} (every member of it but those is secret),
-- or to the spec of its own members.
CREATE FUNCTION @extschema@._audit_redact(r jsonb, before jsonb, spec jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text;
	rule jsonb;
	m text;
	was jsonb;
BEGIN
	IF r IS NULL OR jsonb_typeof(r) <> 'object' THEN
		RETURN r;
	END IF;
	FOR k, rule IN SELECT key, value FROM jsonb_each(spec) LOOP
		CONTINUE WHEN coalesce(jsonb_typeof(r->k), 'null') = 'null';
		-- the member before, {} if the row before lacked it
		was := CASE WHEN before IS NOT NULL THEN coalesce(before->k, '{}') END;
		IF rule = 'true' OR jsonb_typeof(r->k) <> 'object' THEN
			r := jsonb_set(r, ARRAY[k], to_jsonb(CASE WHEN before IS NULL OR before->k = r->k
													 THEN '(set)' ELSE '(changed)' END));
		ELSIF rule ? 'except' THEN
			FOR m IN SELECT jsonb_object_keys(r->k) LOOP
				CONTINUE WHEN rule->'except' ? m;
				r := jsonb_set(r, ARRAY[k], @extschema@._audit_redact(r->k, was,
																	  jsonb_build_object(m, true)));
			END LOOP;
		ELSE
			r := jsonb_set(r, ARRAY[k], @extschema@._audit_redact(r->k, was, rule));
		END IF;
	END LOOP;
	RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@._audit_redact(jsonb, jsonb, jsonb) IS
	'Internal: a row as the audit log shows it, its secrets as "(set)" or "(changed)".';

-- What an audit row of a row change holds: the object's name (the named
-- columns of the row, joined by "/"), and the row before and after, secrets
-- redacted; for an update only the columns that changed (the updated_at
-- and updated_by stamps left out: the audit row says when and who).
CREATE FUNCTION @extschema@._audit_values(op text, name_columns text, spec jsonb,
										  old_row jsonb, new_row jsonb,
										  OUT object_name text, OUT old_value jsonb,
										  OUT new_value jsonb)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	SELECT string_agg(coalesce(coalesce(new_row, old_row)->>c, ''), '/' ORDER BY n)
	INTO object_name
	FROM unnest(string_to_array(nullif(name_columns, ''), ',')) WITH ORDINALITY AS u(c, n);
	old_value := @extschema@._audit_redact(old_row, NULL, spec);
	new_value := @extschema@._audit_redact(new_row, old_row, spec);
	IF op = 'UPDATE' THEN
		SELECT coalesce(jsonb_object_agg(o.key, o.value), '{}'),
			   coalesce(jsonb_object_agg(o.key, new_value->o.key), '{}')
		INTO old_value, new_value
		FROM jsonb_each(old_value) o
		WHERE o.key NOT IN ('updated_at', 'updated_by')
		  AND o.value IS DISTINCT FROM new_value->o.key;
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._audit_values(text, text, jsonb, jsonb, jsonb) IS
	'Internal: the object name and the old and new values of one audited row change.';

-- The audit trigger of provider, secret, binding, field_map, status_map
-- and crm_source.  Arguments: the object kind, the columns naming the object,
-- the secret spec of _audit_redact().  A SECURITY DEFINER function (the
-- log is the owner's to write), so it refuses to run on any other table.
CREATE FUNCTION @extschema@._audit_row()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v record;
BEGIN
	IF TG_TABLE_SCHEMA OPERATOR(pg_catalog.<>) '@extschema@'
	   OR NOT TG_TABLE_NAME OPERATOR(pg_catalog.=) ANY
		   (ARRAY['provider', 'secret', 'binding', 'field_map', 'status_map', 'crm_source',
				  'fee_type_map', 'currency', 'stuck_after']) THEN
		RAISE EXCEPTION 'shipsync._audit_row() audits the tables of pg_shipsync only'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('It fired on %I.%I.', TG_TABLE_SCHEMA, TG_TABLE_NAME);
	END IF;
	SELECT * INTO v FROM @extschema@._audit_values(TG_OP, TG_ARGV[1], TG_ARGV[2]::jsonb,
		to_jsonb(OLD), to_jsonb(NEW));
	PERFORM @extschema@._audit(
		coalesce(nullif(current_setting('shipsync.audit_action', true), ''), lower(TG_OP)),
		TG_ARGV[0], v.object_name, v.old_value, v.new_value);
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._audit_row() IS
	'Internal: the audit trigger of the tables provider, secret, binding, field_map, status_map, crm_source, fee_type_map, currency and stuck_after.';

-- Only the extension's owner changes or deletes audit rows.  Privileges
-- already keep everyone else out; this stops other superusers too, with a
-- clear message.
CREATE FUNCTION @extschema@._audit_log_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID)
	   IS DISTINCT FROM to_regrole(quote_ident(current_user))::oid THEN
		RAISE EXCEPTION 'only the owner of pg_shipsync may change or delete audit rows'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('%s of shipsync.audit_log by role %s was refused.', TG_OP, current_user),
				  HINT = 'Rows older than shipsync.audit_retention are pruned by the dispatcher.';
	END IF;
	IF TG_OP = 'UPDATE' THEN
		RETURN NEW;
	END IF;
	RETURN OLD;
END
$$;
COMMENT ON FUNCTION @extschema@._audit_log_guard() IS
	'Internal: refuses UPDATE, DELETE and TRUNCATE of shipsync.audit_log by anyone but the extension''s owner.';
CREATE TRIGGER audit_log_guard BEFORE UPDATE OR DELETE ON @extschema@.audit_log
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_log_guard();
CREATE TRIGGER audit_log_guard_truncate BEFORE TRUNCATE ON @extschema@.audit_log
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_log_guard();

-- The dispatcher's pruning (src/audit.c): as the owner, whom the guard lets.
CREATE FUNCTION @extschema@._prune_audit(retention interval)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	DELETE FROM @extschema@.audit_log a
	 WHERE a.at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) retention);
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._prune_audit(interval) IS
	'Internal: delete the audit rows older than retention; the dispatcher calls it with shipsync.audit_retention.';

------------------------------------------------------------------------------
-- The "who" columns: set by the server, never taken from the caller
------------------------------------------------------------------------------

-- A provider's updated_at and updated_by; created_at and created_by stay.
CREATE FUNCTION @extschema@._provider_stamp()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	NEW.created_at := OLD.created_at;
	NEW.created_by := OLD.created_by;
	NEW.updated_at := now();
	NEW.updated_by := @extschema@._actor();
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@._provider_stamp() IS
	'Internal: sets updated_at and updated_by of a changed provider, keeps created_at and created_by.';
CREATE TRIGGER provider_stamp BEFORE UPDATE ON @extschema@.provider
	FOR EACH ROW EXECUTE FUNCTION @extschema@._provider_stamp();

-- A ticket's acknowledged_by and resolved_by follow acknowledged_at and
-- resolved_at: whoever set those.
CREATE FUNCTION @extschema@._ticket_stamp()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	NEW.acknowledged_by := CASE
		WHEN NEW.acknowledged_at IS NULL THEN NULL
		WHEN NEW.acknowledged_at IS NOT DISTINCT FROM OLD.acknowledged_at THEN OLD.acknowledged_by
		ELSE @extschema@._actor() END;
	NEW.resolved_by := CASE
		WHEN NEW.resolved_at IS NULL THEN NULL
		WHEN NEW.resolved_at IS NOT DISTINCT FROM OLD.resolved_at THEN OLD.resolved_by
		ELSE @extschema@._actor() END;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@._ticket_stamp() IS
	'Internal: sets acknowledged_by and resolved_by of a ticket to whoever set acknowledged_at and resolved_at.';
CREATE TRIGGER exception_ticket_stamp BEFORE UPDATE ON @extschema@.exception_ticket
	FOR EACH ROW EXECUTE FUNCTION @extschema@._ticket_stamp();

------------------------------------------------------------------------------
-- Tickets: acknowledged and resolved through functions
------------------------------------------------------------------------------

-- One step of a ticket's life, ack or resolve, with its note: false if it
-- was taken already.  The "who" column follows from the trigger above; the
-- step goes into the ticket's history (shipsync.ticket_event, 65_ledger.sql).
CREATE FUNCTION @extschema@._ticket_step(ticket bigint, step text, note text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t record;
	after jsonb;
	is_ack boolean := step OPERATOR(pg_catalog.=) 'ack';
BEGIN
	SELECT x.acknowledged_at, x.resolved_at INTO t
	  FROM @extschema@.exception_ticket x
	 WHERE x.ticket_id OPERATOR(pg_catalog.=) _ticket_step.ticket FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'exception ticket % does not exist', coalesce(ticket::text, 'NULL')
			USING ERRCODE = 'undefined_object',
				  HINT = 'See SELECT ticket_id, kind, detail FROM shipsync.exception_ticket WHERE resolved_at IS NULL.';
	END IF;
	IF is_ack AND t.resolved_at IS NOT NULL THEN
		RAISE EXCEPTION 'exception ticket % is resolved', ticket
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = pg_catalog.format('It was resolved at %s.', t.resolved_at),
				  HINT = 'Only an open ticket is acknowledged; a problem seen again reopens its ticket.';
	END IF;
	IF (is_ack AND t.acknowledged_at IS NOT NULL) OR (NOT is_ack AND t.resolved_at IS NOT NULL) THEN
		RETURN false;
	END IF;
	UPDATE @extschema@.exception_ticket x
	   SET acknowledged_at = CASE WHEN is_ack THEN pg_catalog.now() ELSE x.acknowledged_at END,
		   acknowledgement = CASE WHEN is_ack THEN note ELSE x.acknowledgement END,
		   resolved_at = CASE WHEN is_ack THEN x.resolved_at ELSE pg_catalog.now() END,
		   resolution = CASE WHEN is_ack THEN x.resolution ELSE note END
	 WHERE x.ticket_id OPERATOR(pg_catalog.=) _ticket_step.ticket
	RETURNING CASE WHEN is_ack
		THEN pg_catalog.jsonb_build_object('acknowledged_at', x.acknowledged_at,
										   'acknowledged_by', x.acknowledged_by,
										   'acknowledgement', x.acknowledgement)
		ELSE pg_catalog.jsonb_build_object('resolved_at', x.resolved_at,
										   'resolved_by', x.resolved_by, 'resolution', x.resolution) END
	INTO after;
	PERFORM @extschema@._audit(step, 'ticket', ticket::text,
		(SELECT pg_catalog.jsonb_object_agg(k, NULL) FROM pg_catalog.jsonb_object_keys(after) k), after);
	RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@._ticket_step(bigint, text, text) IS
	'Internal: acknowledge (ack) or resolve one exception ticket with a note, and audit it.';

CREATE FUNCTION @extschema@.ack(ticket bigint, note text DEFAULT NULL)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@._ticket_step($1, 'ack', $2) $$;
COMMENT ON FUNCTION @extschema@.ack(bigint, text) IS
	'Acknowledge an open exception ticket (someone is on it), with an optional note: acknowledged_at is now, acknowledged_by the session user, acknowledgement the note. Returns false if it already was; a resolved ticket cannot be acknowledged.';

CREATE FUNCTION @extschema@.resolve(ticket bigint, note text DEFAULT NULL)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@._ticket_step($1, 'resolve', $2) $$;
COMMENT ON FUNCTION @extschema@.resolve(bigint, text) IS
	'Resolve an exception ticket, open or acknowledged, with an optional note: resolved_at is now, resolved_by the session user, resolution the note. Returns false if it already was resolved. A problem seen again reopens it.';

------------------------------------------------------------------------------
-- Audit triggers, and the actions of the functions whose changes they see
------------------------------------------------------------------------------

CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.provider
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('provider', 'name',
		'{"auth": {"except": ["type", "header", "customer", "partner_id", "token_url", "client_id", "scope"]},
		  "headers": {"except": []},
		  "options": {"webhook_secret": true, "previous_webhook_secret": true, "headers": {"except": []}}}');
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.binding
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('binding', 'tbl', '{}');
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.field_map
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('field_map', 'profile,direction,target_path', '{}');
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.status_map
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('status_map', 'profile,raw_status,pattern', '{}');
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.crm_source
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('crm_source', 'name', '{}');
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.secret
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('secret', 'provider,name', '{"ciphertext": true}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.provider
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('provider', '', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.binding
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('binding', '', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.field_map
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('field_map', '', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.status_map
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('status_map', '', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.crm_source
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('crm_source', '', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.secret
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('secret', '', '{}');

-- The trigger rows of changes made by these functions carry their names.
ALTER FUNCTION @extschema@.create_provider(text, text, text, jsonb) SET shipsync.audit_action = 'create_provider';
ALTER FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) SET shipsync.audit_action = 'attach';
ALTER FUNCTION @extschema@.detach(regclass) SET shipsync.audit_action = 'detach';
ALTER FUNCTION @extschema@.copy_profile(text, text) SET shipsync.audit_action = 'copy_profile';
ALTER FUNCTION @extschema@.create_crm_source(text, text, regclass, jsonb) SET shipsync.audit_action = 'create_crm_source';
ALTER FUNCTION @extschema@.drop_crm_source(text) SET shipsync.audit_action = 'drop_crm_source';
ALTER FUNCTION @extschema@.set_secret(text, text, text) SET shipsync.audit_action = 'set_secret';
ALTER FUNCTION @extschema@.rotate_key() SET shipsync.audit_action = 'rotate_key';
-- pause or resume, set inside; the setting ends with the function
ALTER FUNCTION @extschema@._set_paused(text, boolean) SET shipsync.audit_action = '';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_log_audit_id_seq', '');

-- readers read the masked view of the outbox, not the table; operators
-- acknowledge and resolve tickets through functions, not by UPDATE
REVOKE SELECT ON @extschema@.outbox FROM shipsync_reader;
GRANT SELECT ON @extschema@.intents TO shipsync_reader;
GRANT SELECT ON @extschema@.outbox TO shipsync_operator;
REVOKE UPDATE (acknowledged_at, acknowledged_by, resolved_at, resolved_by)
	ON @extschema@.exception_ticket FROM shipsync_operator;
GRANT EXECUTE ON FUNCTION @extschema@.ack(bigint, text), @extschema@.resolve(bigint, text)
	TO shipsync_operator;
REVOKE EXECUTE ON FUNCTION @extschema@.render_request(bigint) FROM shipsync_operator;
GRANT EXECUTE ON FUNCTION @extschema@.render_request(bigint) TO shipsync_reader;
REVOKE ALL ON FUNCTION @extschema@._actor(), @extschema@._caller(),
	@extschema@._in_extension_script(), @extschema@.mask_pii(text, text),
	@extschema@._mask_body(text, text[], text[], jsonb), @extschema@._pii_visible(),
	@extschema@._audit(text, text, text, jsonb, jsonb), @extschema@._audit_redact(jsonb, jsonb, jsonb),
	@extschema@._audit_values(text, text, jsonb, jsonb, jsonb), @extschema@._audit_row(),
	@extschema@._audit_log_guard(), @extschema@._prune_audit(interval),
	@extschema@._provider_stamp(), @extschema@._ticket_stamp(),
	@extschema@._ticket_step(bigint, text, text),
	@extschema@.ack(bigint, text), @extschema@.resolve(bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.mask_pii(text, text),
	@extschema@._mask_body(text, text[], text[], jsonb), @extschema@._pii_visible()
	TO shipsync_reader;
GRANT SELECT ON @extschema@.audit_log TO shipsync_operator;
GRANT EXECUTE ON FUNCTION @extschema@._actor() TO shipsync_admin;

------------------------------------------------------------------------------
-- Hostile carriers (issue 12): a circuit breaker per provider, holds and
-- tokens that survive a dispatcher restart, and the view provider_health.
-- (create_provider() above takes breaker_failures and breaker_cooldown_ms.)
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._provider_health(
	OUT provider_id integer, OUT breaker text, OUT breaker_since timestamptz,
	OUT hold_until timestamptz,
	OUT requests_5m bigint, OUT successes_5m bigint, OUT failures_5m jsonb,
	OUT requests_1h bigint, OUT successes_1h bigint, OUT failures_1h jsonb,
	OUT latency_p50_ms double precision, OUT latency_p95_ms double precision,
	OUT latency_p99_ms double precision,
	OUT last_success_at timestamptz, OUT last_error_class text, OUT last_error text,
	OUT last_error_at timestamptz, OUT in_flight integer)
RETURNS SETOF record
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'shipsync_provider_health';
COMMENT ON FUNCTION @extschema@._provider_health() IS
	'Internal: the shared-memory state of this database''s providers, for view shipsync.provider_health.';

CREATE VIEW @extschema@.provider_health AS
SELECT p.name AS provider,
	   p.paused,
	   coalesce(h.breaker, 'closed') AS breaker,
	   h.breaker_since,
	   h.hold_until,
	   coalesce(h.requests_5m, 0) AS requests_5m,
	   coalesce(h.successes_5m, 0) AS successes_5m,
	   coalesce(h.failures_5m, '{}') AS failures_5m,
	   coalesce(h.requests_1h, 0) AS requests_1h,
	   coalesce(h.successes_1h, 0) AS successes_1h,
	   coalesce(h.failures_1h, '{}') AS failures_1h,
	   h.latency_p50_ms,
	   h.latency_p95_ms,
	   h.latency_p99_ms,
	   h.last_success_at,
	   h.last_error_class,
	   h.last_error,
	   h.last_error_at,
	   coalesce(h.in_flight, 0) AS in_flight,
	   pg_catalog.now() - LEAST(
		   (SELECT pg_catalog.min(o.created_at) FROM @extschema@.outbox o
			WHERE o.provider_id = p.provider_id
			  AND o.state IN ('pending', 'retrying', 'in_flight')),
		   (SELECT pg_catalog.min(i.created_at) FROM @extschema@.inbox i
			WHERE i.provider_id = p.provider_id)) AS oldest_pending_age
FROM @extschema@.provider p
LEFT JOIN @extschema@._provider_health() h ON h.provider_id = p.provider_id;
COMMENT ON VIEW @extschema@.provider_health IS
	'One row per provider: paused, circuit breaker and Retry-After hold, attempts over the last 5 minutes and the last hour, latency percentiles, the last success and error, requests in flight and the age of the oldest intent not yet delivered. Kept in shared memory by the dispatcher: a restarted dispatcher keeps it, a restarted server starts it afresh.';
COMMENT ON COLUMN @extschema@.provider_health.provider IS 'The provider''s name.';
COMMENT ON COLUMN @extschema@.provider_health.paused IS 'Paused with shipsync.pause(): nothing is sent until shipsync.resume().';
COMMENT ON COLUMN @extschema@.provider_health.breaker IS 'The circuit breaker: closed (sending), open (breaker_failures consecutive transport or 5xx failures: nothing is sent, intents wait) or half_open (one probe intent in flight).';
COMMENT ON COLUMN @extschema@.provider_health.breaker_since IS 'When the breaker last opened or closed; NULL if it never opened.';
COMMENT ON COLUMN @extschema@.provider_health.hold_until IS 'Nothing is sent to the provider before this time: it answered 429 or 503 with Retry-After (or a rate-limit reset); NULL when there is no hold.';
COMMENT ON COLUMN @extschema@.provider_health.requests_5m IS 'Attempts (requests of intents) answered or failed in the last 5 minutes (whole minutes: this one and the 4 before).';
COMMENT ON COLUMN @extschema@.provider_health.successes_5m IS 'Of those, the attempts that delivered their intent.';
COMMENT ON COLUMN @extschema@.provider_health.failures_5m IS 'Of those, the failed attempts, by error class: {"http_5xx": 3, "timeout": 1}.';
COMMENT ON COLUMN @extschema@.provider_health.requests_1h IS 'Attempts in the last hour (this minute and the 59 before).';
COMMENT ON COLUMN @extschema@.provider_health.successes_1h IS 'Of those, the attempts that delivered their intent.';
COMMENT ON COLUMN @extschema@.provider_health.failures_1h IS 'Of those, the failed attempts, by error class.';
COMMENT ON COLUMN @extschema@.provider_health.latency_p50_ms IS 'Median time of an attempt over the last 5 minutes, in milliseconds (interpolated in buckets 35% wide); NULL without attempts.';
COMMENT ON COLUMN @extschema@.provider_health.latency_p95_ms IS '95th percentile of the attempts'' time over the last 5 minutes, in milliseconds.';
COMMENT ON COLUMN @extschema@.provider_health.latency_p99_ms IS '99th percentile of the attempts'' time over the last 5 minutes, in milliseconds.';
COMMENT ON COLUMN @extschema@.provider_health.last_success_at IS 'When an attempt last delivered an intent.';
COMMENT ON COLUMN @extschema@.provider_health.last_error_class IS 'The error class of the last failed attempt (see shipsync.delivery_log).';
COMMENT ON COLUMN @extschema@.provider_health.last_error IS 'What the last failed attempt ended with, as in delivery_log.error (at most 255 bytes).';
COMMENT ON COLUMN @extschema@.provider_health.last_error_at IS 'When the last attempt failed.';
COMMENT ON COLUMN @extschema@.provider_health.in_flight IS 'Requests of intents in flight to the provider now.';
COMMENT ON COLUMN @extschema@.provider_health.oldest_pending_age IS 'Age of the oldest intent not yet delivered (pending, retrying or in flight); NULL when none waits.';
REVOKE ALL ON FUNCTION @extschema@._provider_health() FROM PUBLIC;
GRANT SELECT ON @extschema@.provider_health TO shipsync_reader;
GRANT EXECUTE ON FUNCTION @extschema@._provider_health() TO shipsync_reader;

------------------------------------------------------------------------------
-- Money (issue 14): fee lines from create responses, pushes, pulls and
-- statements, with revisions; the finance views; fee lines in trace().
------------------------------------------------------------------------------

-- field_map rows of directions fee and statement say where fees are read
ALTER TABLE @extschema@.field_map DROP CONSTRAINT field_map_direction_check,
	ADD CONSTRAINT field_map_direction_check CHECK (direction IN ('out', 'in', 'crm_in', 'fee', 'statement'));
COMMENT ON TABLE @extschema@.field_map IS
	'Declarative field maps per profile. Outbound rows (direction out) build the request from CRM columns, constants (const:), provider options (option:path) and the intent (meta:order_key, meta:idempotency_key); inbound rows (in) read canonical fields out of responses; crm_in rows turn a record a CRM pushed (ingest_crm()) into the columns of an orders table; fee rows (fee) read the lines of fee pushes, pulls and JSON statements, and statement rows (statement) name the CSV columns of a statement. Paths are dotted with [k=v] filters. A change applies to the next request.';
CREATE OR REPLACE FUNCTION @extschema@._field_map_check()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.seeded THEN
		RAISE EXCEPTION 'profile "%" is built in and read-only', OLD.profile
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'Its rows come with the extension and are created again on restore.',
				  HINT = format('Copy it with shipsync.copy_profile(%L, ''my_profile''), change the copy, and set option "profile" of the provider.', OLD.profile);
	END IF;
	IF TG_OP = 'DELETE' THEN
		RETURN OLD;
	END IF;
	-- only the extension script seeds, before this trigger exists
	NEW.seeded := false;
	PERFORM @extschema@._map_check(NEW.target_path, CASE WHEN NEW.direction <> 'statement' THEN NEW.source END, NEW.transform, NEW.arg::text);
	NEW.updated_at := now();
	NEW.updated_by := @extschema@._actor();
	-- fee and statement rows name fee fields; a statement row's source is
	-- a CSV column's name, not a path (so it is not compiled above)
	IF NEW.direction IN ('fee', 'statement') THEN
		PERFORM @extschema@._check_fee_map_row(NEW.direction, NEW.target_path, NEW.source);
	END IF;
	RETURN NEW;
END
$$;

-- create_provider() knows the fee options
CREATE OR REPLACE FUNCTION @extschema@.create_provider(name text, dialect text, base_url text,
											options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	opts jsonb := coalesce(options, '{}');
	id integer;
	rate numeric;
	h text;
	hv jsonb;
	stored jsonb;
BEGIN
	IF name IS NULL OR name !~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid provider name "%"', coalesce(name, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A provider name is 1 to 63 letters, digits, "_", "." or "-".',
				  HINT = 'For example ''sf'' or ''acme-eu''.';
	END IF;
	IF dialect IS NULL OR dialect NOT IN ('generic', 'sf_express', 'easypost', 'aftership', 'kuaidi100') THEN
		RAISE EXCEPTION 'unknown dialect "%"', coalesce(dialect, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'This version knows the shipping dialects generic and sf_express and the tracking dialects easypost, aftership and kuaidi100.',
				  HINT = 'See docs/wire-contract.md for the generic contract.';
	END IF;
	PERFORM @extschema@._check_options(opts,
		ARRAY['timeout_ms', 'max_inflight', 'max_attempts', 'backoff_base_ms',
			  'backoff_max_ms', 'rate_limit_per_s', 'headers', 'auth', 'tls', 'breaker_failures', 'breaker_cooldown_ms']
		|| @extschema@._check_tracking_options(opts, dialect) || @extschema@._check_fee_options(opts, dialect)
		|| @extschema@._dialect_options(dialect), 'provider');
	IF opts ? 'rate_limit_per_s' AND (jsonb_typeof(opts->'rate_limit_per_s') <> 'number'
		OR (opts->>'rate_limit_per_s')::numeric < 0
		OR (opts->>'rate_limit_per_s')::numeric > 100000) THEN
		RAISE EXCEPTION 'option "rate_limit_per_s" is out of range'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given is %s.', opts->'rate_limit_per_s'),
				  HINT = 'Give a number of requests per second between 0 (unlimited) and 100000.';
	END IF;
	IF opts ? 'headers' THEN
		IF jsonb_typeof(opts->'headers') <> 'object' THEN
			RAISE EXCEPTION 'option "headers" must be a JSON object of header names to values'
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'For example {"X-Tenant": "shop-1"}.';
		END IF;
		FOR h IN SELECT jsonb_object_keys(opts->'headers') LOOP
			-- a value is a string, or {"secret": "..."} for one kept encrypted
			hv := CASE WHEN jsonb_typeof(opts->'headers'->h) = 'object'
						AND (SELECT count(*) FROM jsonb_object_keys(opts->'headers'->h)) = 1
					   THEN opts->'headers'->h->'secret' ELSE opts->'headers'->h END;
			IF h !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]+$' OR jsonb_typeof(hv) IS DISTINCT FROM 'string'
			   OR (hv #>> '{}') ~ E'[\\x01-\\x1f\\x7f-\\x9f]' THEN
				RAISE EXCEPTION 'invalid header "%"', h
					USING ERRCODE = 'invalid_parameter_value',
						  DETAIL = 'Header names are HTTP tokens and values are strings without line breaks or other control characters.',
						  HINT = 'Fix the name or the value in option "headers".';
			END IF;
			IF lower(h) IN ('authorization', 'content-length', 'content-type', 'host', 'idempotency-key', 'transfer-encoding') THEN
				RAISE EXCEPTION 'header "%" is set by pg_shipsync', h
					USING ERRCODE = 'invalid_parameter_value',
						  DETAIL = 'Idempotency-Key, Content-Type, Content-Length, Transfer-Encoding and Host belong to each request, and Authorization to option "auth".',
						  HINT = 'Remove it from option "headers"; give credentials in option "auth".';
			END IF;
		END LOOP;
	END IF;
	PERFORM @extschema@._check_auth(opts->'auth');
	PERFORM @extschema@._check_tls_option(opts->'tls');
	PERFORM @extschema@._check_dialect(dialect, opts);
	PERFORM @extschema@._check_wire('base_url', create_provider.base_url, true);
	IF jsonb_typeof(opts->'callback_url') = 'string' THEN
		PERFORM @extschema@._check_wire('option "callback_url"', opts->>'callback_url', true);
	END IF;
	-- the circuit breaker (src/health.c): read from options by the dispatcher
	PERFORM @extschema@._int_option(opts, 'breaker_failures', 20, 1, 1000000);
	PERFORM @extschema@._int_option(opts, 'breaker_cooldown_ms', 5000, 100, 300000);
	rate := coalesce((opts->>'rate_limit_per_s')::numeric, 0);
	-- every secret of the options goes to shipsync.secret, encrypted
	stored := @extschema@._take_secrets(create_provider.name, opts);

	INSERT INTO @extschema@.provider AS p
		(name, dialect, base_url, timeout_ms, max_inflight, max_attempts,
		 backoff_base_ms, backoff_max_ms, rate_limit_per_s, headers, auth, options)
	VALUES (create_provider.name, create_provider.dialect,
			@extschema@._check_url(create_provider.base_url),
			@extschema@._int_option(opts, 'timeout_ms', 10000, 100, 600000),
			@extschema@._int_option(opts, 'max_inflight', 256, 1, 1024),
			@extschema@._int_option(opts, 'max_attempts', 20, 1, 1000),
			@extschema@._int_option(opts, 'backoff_base_ms', 1000, 1, 3600000),
			@extschema@._int_option(opts, 'backoff_max_ms', 300000, 1, 86400000),
			rate,
			coalesce(stored->'headers', '{}'),
			stored->'auth',
			stored - 'auth')
	RETURNING p.provider_id INTO id;

	IF @extschema@._int_option(opts, 'backoff_max_ms', 300000, 1, 86400000)
	   < @extschema@._int_option(opts, 'backoff_base_ms', 1000, 1, 3600000) THEN
		RAISE EXCEPTION 'option "backoff_max_ms" is smaller than "backoff_base_ms"'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Retries wait a random time up to min(backoff_max_ms, backoff_base_ms * 2^(attempt - 1)).',
				  HINT = 'Raise backoff_max_ms or lower backoff_base_ms.';
	END IF;

	PERFORM @extschema@._wake(true);
	RETURN id;
EXCEPTION
	WHEN unique_violation THEN
		RAISE EXCEPTION 'provider "%" already exists', create_provider.name
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Choose another name, or drop the provider first.';
END
$$;
COMMENT ON FUNCTION @extschema@.create_provider(text, text, text, jsonb) IS
	'Register a logistics provider. Options: timeout_ms, max_inflight, max_attempts, backoff_base_ms, backoff_max_ms, rate_limit_per_s, headers (a value given as {"secret": "..."} is kept encrypted), auth, tls (ca_bundle, client_cert, client_key, min_version, pinned_public_key), breaker_failures (consecutive transport or 5xx failures that open the circuit breaker, default 20), breaker_cooldown_ms (the wait before a probe, default 5000, doubling up to 5 minutes while probes fail), profile (its field_map and status_map profile, by default the dialect); sf_express also sender, monthly_card, pay_method, express_type_id; for tracking: webhook_secret, previous_webhook_secret, accept_unsigned_pushes, poll_interval_s, unmatched_ttl_s, timezone; easypost carrier, aftership slug, kuaidi100 company and callback_url; for fees: currency, fee_pull_after, fee_tolerance, unbilled_after. Secrets (auth values, webhook secrets, secret header values, the TLS client key) are stored encrypted in shipsync.secret, never in shipsync.provider.';
ALTER FUNCTION @extschema@.create_provider(text, text, text, jsonb) SET shipsync.audit_action = 'create_provider';

------------------------------------------------------------------------------
-- Fees
--
-- Every fee a carrier quotes or bills is one row of fee_line, identified by
-- (provider, tracking number, canonical fee type, the carrier's line key,
-- quote or bill).  The fees of a create response are the quote (state
-- estimated); pushed, pulled and statement lines are the bill (charged,
-- refunded, adjusted), and a bill never overwrites a quote.  A later line
-- of the same identity is a revision: the previous version goes to
-- fee_line_history.  The same line again changes nothing, and neither does
-- a notice seen before (a late duplicate of a line revised since: its
-- values and time equal an earlier version's) nor one older than the
-- line's current version (by occurred_at, when both have one).  Lines of a
-- tracking number no shipment has are parked (binding_id NULL) and matched
-- when the shipment appears.  src/fees.c reads the sources, src/statement.c
-- the statements, src/feepull.c asks carriers after delivery.
------------------------------------------------------------------------------

-- Fee options of create_provider(): checks those given, returns their names.
CREATE FUNCTION @extschema@._check_fee_options(options jsonb, dialect text)
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text;
	v jsonb;
BEGIN
	FOREACH k IN ARRAY ARRAY['fee_pull_after', 'unbilled_after'] LOOP
		v := options->k;
		IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
			CONTINUE;
		END IF;
		IF jsonb_typeof(v) <> 'string' OR @extschema@._interval_or_null(v #>> '{}') IS NULL
		   OR (v #>> '{}')::interval < interval '0' THEN
			RAISE EXCEPTION 'option "%" must be an interval', k
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('The value given is %s.', v),
					  HINT = CASE k WHEN 'fee_pull_after' THEN 'For example "2 days": the fees of a shipment are asked for that long after its delivery.'
								   ELSE 'For example "45 days": a shipment delivered longer ago without a bill is listed in shipsync.fee_difference.' END;
		END IF;
	END LOOP;
	IF options ? 'fee_pull_after' AND dialect NOT IN ('generic', 'sf_express') THEN
		RAISE EXCEPTION 'option "fee_pull_after" needs a shipping dialect'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('Dialect %s has no fee query.', dialect),
				  HINT = 'Fees are pulled from generic (GET /shipments/{id}/fees) and sf_express (EXP_RECE_QUERY_SFWAYBILL) providers.';
	END IF;
	IF options ? 'fee_tolerance' THEN
		v := options->'fee_tolerance';
		IF jsonb_typeof(v) <> 'object' OR EXISTS (SELECT 1 FROM jsonb_object_keys(v) x WHERE x NOT IN ('abs', 'pct'))
		   OR (v ? 'abs' AND @extschema@._decimal_or_null(v->'abs') IS NULL)
		   OR (v ? 'pct' AND @extschema@._decimal_or_null(v->'pct') IS NULL)
		   OR @extschema@._decimal_or_null(v->'abs') < 0 OR @extschema@._decimal_or_null(v->'pct') < 0 THEN
			RAISE EXCEPTION 'option "fee_tolerance" must be {"abs": amount, "pct": percent}'
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('The value given is %s.', v),
					  HINT = 'For example {"abs": "0.01", "pct": 0}: a bill differing from the quote by more than a cent is listed.';
		END IF;
	END IF;
	IF options ? 'currency' AND (jsonb_typeof(options->'currency') <> 'string'
		OR NOT EXISTS (SELECT 1 FROM @extschema@.currency c WHERE c.code = options->>'currency')) THEN
		RAISE EXCEPTION 'unknown currency %', options->'currency'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give an ISO 4217 code from shipsync.currency, for example "CNY".';
	END IF;
	RETURN ARRAY['fee_pull_after', 'unbilled_after', 'fee_tolerance', 'currency'];
END
$$;

-- text as an interval, or NULL when it is not one
CREATE FUNCTION @extschema@._interval_or_null(t text)
RETURNS interval
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN t::interval;
EXCEPTION WHEN OTHERS THEN
	RETURN NULL;
END
$$;

-- a JSON number or decimal string as numeric, or NULL
CREATE FUNCTION @extschema@._decimal_or_null(v jsonb)
RETURNS numeric
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN jsonb_typeof(v) = 'number' THEN (v #>> '{}')::numeric
				WHEN jsonb_typeof(v) = 'string' AND (v #>> '{}') ~ E'^[0-9]+(\\.[0-9]+)?$'
				THEN (v #>> '{}')::numeric END
$$;

CREATE TABLE @extschema@.fee_type (
	name			text PRIMARY KEY,
	description		text NOT NULL
);
COMMENT ON TABLE @extschema@.fee_type IS
	'The canonical fee types. A carrier''s own fee code is mapped to one of them through shipsync.fee_type_map; a code that maps to nothing is other, its code kept in fee_line.raw_type.';
INSERT INTO @extschema@.fee_type (name, description) VALUES
	('freight', 'Carriage of the parcel (运费).'),
	('insurance', 'Declared-value insurance (保价费).'),
	('label', 'The label or waybill itself.'),
	('postage', 'Postage bought through the carrier.'),
	('fuel', 'Fuel surcharge (燃油附加费).'),
	('cod', 'Cash-on-delivery service (代收货款服务费).'),
	('surcharge', 'Any other surcharge: remote area, oversize, packaging.'),
	('tax', 'Taxes and duties.'),
	('refund', 'Money given back; counted against the fees whatever its sign.'),
	('other', 'A fee no map row names.');

CREATE TABLE @extschema@.fee_type_map (
	profile			text NOT NULL,
	code			text NOT NULL,
	fee_type		text NOT NULL REFERENCES @extschema@.fee_type (name),
	builtin			boolean NOT NULL DEFAULT false,
	PRIMARY KEY (profile, code)
);
COMMENT ON TABLE @extschema@.fee_type_map IS
	'A carrier''s fee code to a canonical fee type, per profile (the provider option profile, else its dialect). A code without a row is read as the canonical type of that name (freight, Freight), else other.';
COMMENT ON COLUMN @extschema@.fee_type_map.builtin IS
	'Seeded by the extension (not dumped by pg_dump). Add rows for your codes beside them.';
INSERT INTO @extschema@.fee_type_map (profile, code, fee_type, builtin)
SELECT m.profile, m.code, m.fee_type, true
FROM (VALUES
	-- EasyPost's Fee objects, also what generic carriers relaying it send
	('easypost', 'LabelFee', 'label'),
	('easypost', 'PostageFee', 'postage'),
	('easypost', 'InsuranceFee', 'insurance'),
	('easypost', 'TrackerFee', 'other'),
	('easypost', 'CarbonOffsetFee', 'surcharge'),
	('generic', 'LabelFee', 'label'),
	('generic', 'PostageFee', 'postage'),
	('generic', 'InsuranceFee', 'insurance'),
	('generic', 'TrackerFee', 'other'),
	('generic', 'CarbonOffsetFee', 'surcharge'),
	-- SF Express bills and fee queries name their fees in Chinese
	('sf_express', '运费', 'freight'),
	('sf_express', '基础运费', 'freight'),
	('sf_express', '保价费', 'insurance'),
	('sf_express', '保价', 'insurance'),
	('sf_express', '燃油附加费', 'fuel'),
	('sf_express', '燃油费', 'fuel'),
	('sf_express', '代收货款服务费', 'cod'),
	('sf_express', '代收货款手续费', 'cod'),
	('sf_express', '包装费', 'surcharge'),
	('sf_express', '包装服务费', 'surcharge'),
	('sf_express', '超长超重附加费', 'surcharge'),
	('sf_express', '偏远地区附加费', 'surcharge'),
	('sf_express', '附加费', 'surcharge'),
	('sf_express', '税费', 'tax'),
	('sf_express', '关税', 'tax'),
	('sf_express', '退款', 'refund'),
	('sf_express', '其他费用', 'other')
) AS m(profile, code, fee_type);

CREATE TABLE @extschema@.currency (
	code			text PRIMARY KEY CHECK (code ~ '^[A-Z]{3}$'),
	name			text NOT NULL,
	builtin			boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE @extschema@.currency IS
	'The ISO 4217 currencies a fee line may be in (seeded from Debian''s iso-codes). A line in any other currency is refused. XXX, "no currency", is what a quote without a currency is recorded in when its provider has no option currency.';
INSERT INTO @extschema@.currency (code, name, builtin)
SELECT c.code, c.name, true
FROM (VALUES
	('AED', 'UAE Dirham'), ('AFN', 'Afghani'), ('ALL', 'Lek'), ('AMD', 'Armenian Dram'),
	('ANG', 'Netherlands Antillean Guilder'), ('AOA', 'Kwanza'), ('ARS', 'Argentine Peso'),
	('AUD', 'Australian Dollar'), ('AWG', 'Aruban Florin'), ('AZN', 'Azerbaijan Manat'),
	('BAM', 'Convertible Mark'), ('BBD', 'Barbados Dollar'), ('BDT', 'Taka'),
	('BGN', 'Bulgarian Lev'), ('BHD', 'Bahraini Dinar'), ('BIF', 'Burundi Franc'),
	('BMD', 'Bermudian Dollar'), ('BND', 'Brunei Dollar'), ('BOB', 'Boliviano'), ('BOV', 'Mvdol'),
	('BRL', 'Brazilian Real'), ('BSD', 'Bahamian Dollar'), ('BTN', 'Ngultrum'), ('BWP', 'Pula'),
	('BYN', 'Belarusian Ruble'), ('BZD', 'Belize Dollar'), ('CAD', 'Canadian Dollar'),
	('CDF', 'Congolese Franc'), ('CHE', 'WIR Euro'), ('CHF', 'Swiss Franc'), ('CHW', 'WIR Franc'),
	('CLF', 'Unidad de Fomento'), ('CLP', 'Chilean Peso'), ('CNY', 'Yuan Renminbi'),
	('COP', 'Colombian Peso'), ('COU', 'Unidad de Valor Real'), ('CRC', 'Costa Rican Colon'),
	('CUC', 'Peso Convertible'), ('CUP', 'Cuban Peso'), ('CVE', 'Cabo Verde Escudo'),
	('CZK', 'Czech Koruna'), ('DJF', 'Djibouti Franc'), ('DKK', 'Danish Krone'),
	('DOP', 'Dominican Peso'), ('DZD', 'Algerian Dinar'), ('EGP', 'Egyptian Pound'),
	('ERN', 'Nakfa'), ('ETB', 'Ethiopian Birr'), ('EUR', 'Euro'), ('FJD', 'Fiji Dollar'),
	('FKP', 'Falkland Islands Pound'), ('GBP', 'Pound Sterling'), ('GEL', 'Lari'),
	('GHS', 'Ghana Cedi'), ('GIP', 'Gibraltar Pound'), ('GMD', 'Dalasi'),
	('GNF', 'Guinean Franc'), ('GTQ', 'Quetzal'), ('GYD', 'Guyana Dollar'),
	('HKD', 'Hong Kong Dollar'), ('HNL', 'Lempira'), ('HRK', 'Kuna'), ('HTG', 'Gourde'),
	('HUF', 'Forint'), ('IDR', 'Rupiah'), ('ILS', 'New Israeli Sheqel'), ('INR', 'Indian Rupee'),
	('IQD', 'Iraqi Dinar'), ('IRR', 'Iranian Rial'), ('ISK', 'Iceland Krona'),
	('JMD', 'Jamaican Dollar'), ('JOD', 'Jordanian Dinar'), ('JPY', 'Yen'),
	('KES', 'Kenyan Shilling'), ('KGS', 'Som'), ('KHR', 'Riel'), ('KMF', 'Comorian Franc'),
	('KPW', 'North Korean Won'), ('KRW', 'Won'), ('KWD', 'Kuwaiti Dinar'),
	('KYD', 'Cayman Islands Dollar'), ('KZT', 'Tenge'), ('LAK', 'Lao Kip'),
	('LBP', 'Lebanese Pound'), ('LKR', 'Sri Lanka Rupee'), ('LRD', 'Liberian Dollar'),
	('LSL', 'Loti'), ('LYD', 'Libyan Dinar'), ('MAD', 'Moroccan Dirham'), ('MDL', 'Moldovan Leu'),
	('MGA', 'Malagasy Ariary'), ('MKD', 'Denar'), ('MMK', 'Kyat'), ('MNT', 'Tugrik'),
	('MOP', 'Pataca'), ('MRU', 'Ouguiya'), ('MUR', 'Mauritius Rupee'), ('MVR', 'Rufiyaa'),
	('MWK', 'Malawi Kwacha'), ('MXN', 'Mexican Peso'),
	('MXV', 'Mexican Unidad de Inversion (UDI)'), ('MYR', 'Malaysian Ringgit'),
	('MZN', 'Mozambique Metical'), ('NAD', 'Namibia Dollar'), ('NGN', 'Naira'),
	('NIO', 'Cordoba Oro'), ('NOK', 'Norwegian Krone'), ('NPR', 'Nepalese Rupee'),
	('NZD', 'New Zealand Dollar'), ('OMR', 'Rial Omani'), ('PAB', 'Balboa'), ('PEN', 'Sol'),
	('PGK', 'Kina'), ('PHP', 'Philippine Peso'), ('PKR', 'Pakistan Rupee'), ('PLN', 'Zloty'),
	('PYG', 'Guarani'), ('QAR', 'Qatari Rial'), ('RON', 'Romanian Leu'), ('RSD', 'Serbian Dinar'),
	('RUB', 'Russian Ruble'), ('RWF', 'Rwanda Franc'), ('SAR', 'Saudi Riyal'),
	('SBD', 'Solomon Islands Dollar'), ('SCR', 'Seychelles Rupee'), ('SDG', 'Sudanese Pound'),
	('SEK', 'Swedish Krona'), ('SGD', 'Singapore Dollar'), ('SHP', 'Saint Helena Pound'),
	('SLE', 'Leone'), ('SLL', 'Leone'), ('SOS', 'Somali Shilling'), ('SRD', 'Surinam Dollar'),
	('SSP', 'South Sudanese Pound'), ('STN', 'Dobra'), ('SVC', 'El Salvador Colon'),
	('SYP', 'Syrian Pound'), ('SZL', 'Lilangeni'), ('THB', 'Baht'), ('TJS', 'Somoni'),
	('TMT', 'Turkmenistan New Manat'), ('TND', 'Tunisian Dinar'), ('TOP', 'Pa’anga'),
	('TRY', 'Turkish Lira'), ('TTD', 'Trinidad and Tobago Dollar'), ('TWD', 'New Taiwan Dollar'),
	('TZS', 'Tanzanian Shilling'), ('UAH', 'Hryvnia'), ('UGX', 'Uganda Shilling'),
	('USD', 'US Dollar'), ('USN', 'US Dollar (Next day)'),
	('UYI', 'Uruguay Peso en Unidades Indexadas (UI)'), ('UYU', 'Peso Uruguayo'),
	('UYW', 'Unidad Previsional'), ('UZS', 'Uzbekistan Sum'), ('VED', 'Bolívar Soberano'),
	('VES', 'Bolívar Soberano'), ('VND', 'Dong'), ('VUV', 'Vatu'), ('WST', 'Tala'),
	('XAF', 'CFA Franc BEAC'), ('XAG', 'Silver'), ('XAU', 'Gold'),
	('XBA', 'Bond Markets Unit European Composite Unit (EURCO)'),
	('XBB', 'Bond Markets Unit European Monetary Unit (E.M.U.-6)'),
	('XBC', 'Bond Markets Unit European Unit of Account 9 (E.U.A.-9)'),
	('XBD', 'Bond Markets Unit European Unit of Account 17 (E.U.A.-17)'),
	('XCD', 'East Caribbean Dollar'), ('XDR', 'SDR (Special Drawing Right)'),
	('XOF', 'CFA Franc BCEAO'), ('XPD', 'Palladium'), ('XPF', 'CFP Franc'), ('XPT', 'Platinum'),
	('XSU', 'Sucre'), ('XTS', 'Codes specifically reserved for testing purposes'),
	('XUA', 'ADB Unit of Account'),
	('XXX', 'The codes assigned for transactions where no currency is involved'),
	('YER', 'Yemeni Rial'), ('ZAR', 'Rand'), ('ZMW', 'Zambian Kwacha'),
	('ZWL', 'Zimbabwe Dollar')
) AS c(code, name);

CREATE TABLE @extschema@.statement (
	statement_id	bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider_id		integer NOT NULL,
	period			date NOT NULL,
	account			text,
	format			text NOT NULL CHECK (format IN ('csv', 'json')),
	digest			text NOT NULL,
	imported_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	imported_by		name NOT NULL DEFAULT SESSION_USER,
	lines			integer NOT NULL,
	totals			jsonb NOT NULL,
	errors			jsonb NOT NULL DEFAULT '[]',
	supersedes		bigint,
	superseded_by	bigint,
	UNIQUE (provider_id, digest)
);
CREATE INDEX statement_period_idx ON @extschema@.statement (provider_id, period, account);
COMMENT ON TABLE @extschema@.statement IS
	'One imported carrier statement (monthly bill), written by shipsync.import_statement(): provider, month, account, who imported it when, how many lines were stored, the totals per currency as billed, and the SHA-256 of the body (the same body again is a no-op). A later statement of the same provider, period and account supersedes the earlier one line by line.';
COMMENT ON COLUMN @extschema@.statement.period IS 'The first day of the month billed.';
COMMENT ON COLUMN @extschema@.statement.account IS 'The account billed (options.account, e.g. an SF monthly card), when a provider bills several: statements of different accounts never supersede each other.';
COMMENT ON COLUMN @extschema@.statement.digest IS 'Hex SHA-256 of the body as given: importing the same body again changes nothing.';
COMMENT ON COLUMN @extschema@.statement.lines IS 'Lines of the statement stored (revisions and unchanged lines included; skipped lines are in errors).';
COMMENT ON COLUMN @extschema@.statement.totals IS 'Sum of the stored lines'' amounts per currency, as billed: {"CNY": "1234.50"}.';
COMMENT ON COLUMN @extschema@.statement.errors IS 'With options on_error = skip: the lines left out, [{"line", "column", "error"}].';
COMMENT ON COLUMN @extschema@.statement.supersedes IS 'The earlier statement of the same provider and period that this one corrects.';
COMMENT ON COLUMN @extschema@.statement.statement_id IS 'The statement; fee_line.statement_id names the statement a bill line last came from.';
COMMENT ON COLUMN @extschema@.statement.provider_id IS 'The provider that billed (shipsync.provider).';
COMMENT ON COLUMN @extschema@.statement.format IS 'csv or json, as given to import_statement().';
COMMENT ON COLUMN @extschema@.statement.imported_at IS 'When it was imported.';
COMMENT ON COLUMN @extschema@.statement.imported_by IS 'The session user who imported it.';
COMMENT ON COLUMN @extschema@.statement.superseded_by IS 'The later statement of the same provider, period and account that replaced it; NULL while it is the current one.';

CREATE TABLE @extschema@.fee_line (
	fee_line_id		bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider_id		integer NOT NULL,
	tracking_number text COLLATE "C" NOT NULL,
	fee_type		text NOT NULL CHECK (fee_type IN ('freight', 'insurance', 'label', 'postage',
						'fuel', 'cod', 'surcharge', 'tax', 'refund', 'other')),
	fee_key			text NOT NULL DEFAULT '',
	quote			boolean NOT NULL,
	binding_id		integer,
	order_key		text COLLATE "C",
	raw_type		text,
	amount			numeric NOT NULL,
	currency		text NOT NULL,
	settlement		text CHECK (settlement IN ('monthly', 'cash')),
	payer			text CHECK (payer IN ('sender', 'receiver', 'third_party')),
	billed_weight_kg numeric CHECK (billed_weight_kg >= 0),
	state			text NOT NULL CHECK (state IN ('estimated', 'charged', 'refunded', 'adjusted')),
	source			text NOT NULL CHECK (source IN ('create', 'push', 'pull', 'statement')),
	statement_id	bigint,
	occurred_at		timestamptz,
	recorded_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	recorded_by		text NOT NULL,
	revision		integer NOT NULL DEFAULT 1,
	CHECK (quote = (state = 'estimated')),
	UNIQUE (provider_id, tracking_number, fee_type, fee_key, quote)
);
CREATE INDEX fee_line_order_idx ON @extschema@.fee_line (binding_id, order_key);
CREATE INDEX fee_line_parked_idx ON @extschema@.fee_line (provider_id, tracking_number)
	WHERE binding_id IS NULL;
COMMENT ON TABLE @extschema@.fee_line IS
	'One fee a carrier quoted or billed, unique per provider, tracking number, fee type, the carrier''s line key and quote or bill. Amounts are numeric as the carrier wrote them, never float. A change keeps the previous version in shipsync.fee_line_history; the same line received again changes nothing. binding_id and order_key are NULL while no shipment has the tracking number (parked).';
COMMENT ON COLUMN @extschema@.fee_line.fee_type IS 'Canonical: freight, insurance, label, postage, fuel, cod, surcharge, tax, refund, other (shipsync.fee_type_map).';
COMMENT ON COLUMN @extschema@.fee_line.fee_key IS 'The carrier''s own key of the line; empty when it gives none (a second line of the same type in one notice is #2, a third #3).';
COMMENT ON COLUMN @extschema@.fee_line.quote IS 'True for the fees of a create response (state estimated); a bill never overwrites them.';
COMMENT ON COLUMN @extschema@.fee_line.raw_type IS 'The fee code as the carrier wrote it.';
COMMENT ON COLUMN @extschema@.fee_line.amount IS 'As billed, in currency; a line in state refunded, or of type refund, counts against the fees whatever its sign.';
COMMENT ON COLUMN @extschema@.fee_line.currency IS 'ISO 4217 code (shipsync.currency).';
COMMENT ON COLUMN @extschema@.fee_line.state IS 'estimated (a quote), charged, refunded or adjusted (a bill).';
COMMENT ON COLUMN @extschema@.fee_line.source IS 'Where this version came from: create (response), push (ingest_fees), pull (the dispatcher asked), statement (import_statement).';
COMMENT ON COLUMN @extschema@.fee_line.recorded_by IS 'Who or what made this version: the session user of a push or an import, dispatcher for create responses and pulls.';
COMMENT ON COLUMN @extschema@.fee_line.revision IS '1 for the first version, one more for every change; the earlier versions are in shipsync.fee_line_history.';
COMMENT ON COLUMN @extschema@.fee_line.fee_line_id IS 'The line; its earlier versions in fee_line_history carry it.';
COMMENT ON COLUMN @extschema@.fee_line.provider_id IS 'The provider that quoted or billed it.';
COMMENT ON COLUMN @extschema@.fee_line.tracking_number IS 'The waybill the fee is for, as the carrier gave it.';
COMMENT ON COLUMN @extschema@.fee_line.binding_id IS 'The attached table of the order; NULL while the line is parked (no shipment has its tracking number yet).';
COMMENT ON COLUMN @extschema@.fee_line.order_key IS 'The order, as the key column''s value in text; NULL while parked.';
COMMENT ON COLUMN @extschema@.fee_line.settlement IS 'monthly (on account) or cash, when the carrier says.';
COMMENT ON COLUMN @extschema@.fee_line.payer IS 'sender, receiver or third_party, when the carrier says.';
COMMENT ON COLUMN @extschema@.fee_line.billed_weight_kg IS 'The weight the carrier billed, in kg, when it says.';
COMMENT ON COLUMN @extschema@.fee_line.statement_id IS 'The statement this version came from (source statement).';
COMMENT ON COLUMN @extschema@.fee_line.occurred_at IS 'When the carrier says the fee arose; a notice older than the line''s current version changes nothing.';
COMMENT ON COLUMN @extschema@.fee_line.recorded_at IS 'When this version was recorded.';

CREATE TABLE @extschema@.fee_line_history (
	fee_line_id		bigint NOT NULL,
	revision		integer NOT NULL,
	raw_type		text,
	amount			numeric NOT NULL,
	currency		text NOT NULL,
	settlement		text,
	payer			text,
	billed_weight_kg numeric,
	state			text NOT NULL,
	source			text NOT NULL,
	statement_id	bigint,
	occurred_at		timestamptz,
	recorded_at		timestamptz NOT NULL,
	recorded_by		text NOT NULL,
	superseded_at	timestamptz NOT NULL,
	superseded_by	text NOT NULL,
	superseded_source text NOT NULL,
	PRIMARY KEY (fee_line_id, revision)
);
COMMENT ON TABLE @extschema@.fee_line_history IS
	'Every earlier version of a fee line: its values, when and by whom and from which source it was recorded, and when, by whom and from which source it was replaced.';
COMMENT ON COLUMN @extschema@.fee_line_history.fee_line_id IS 'The line (shipsync.fee_line) this was a version of.';
COMMENT ON COLUMN @extschema@.fee_line_history.revision IS 'The version''s revision; the line''s current one is higher.';
COMMENT ON COLUMN @extschema@.fee_line_history.superseded_at IS 'When the next version replaced it.';
COMMENT ON COLUMN @extschema@.fee_line_history.superseded_by IS 'Who or what recorded the next version.';
COMMENT ON COLUMN @extschema@.fee_line_history.superseded_source IS 'Where the next version came from: create, push, pull or statement.';

-- The previous version of a changed line goes to the history; the new one
-- gets the next revision.  Only changes of what the line says count.
CREATE FUNCTION @extschema@._fee_line_revise()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO @extschema@.fee_line_history (fee_line_id, revision, raw_type, amount, currency,
		settlement, payer, billed_weight_kg, state, source, statement_id, occurred_at,
		recorded_at, recorded_by, superseded_at, superseded_by, superseded_source)
	VALUES (OLD.fee_line_id, OLD.revision, OLD.raw_type, OLD.amount, OLD.currency,
		OLD.settlement, OLD.payer, OLD.billed_weight_kg, OLD.state, OLD.source, OLD.statement_id,
		OLD.occurred_at, OLD.recorded_at, OLD.recorded_by, now(), NEW.recorded_by, NEW.source);
	NEW.revision := OLD.revision + 1;
	NEW.recorded_at := now();
	RETURN NEW;
END
$$;
CREATE TRIGGER fee_line_revise BEFORE UPDATE ON @extschema@.fee_line
	FOR EACH ROW
	WHEN ((OLD.amount, OLD.currency, OLD.state, OLD.settlement, OLD.payer, OLD.billed_weight_kg)
		  IS DISTINCT FROM (NEW.amount, NEW.currency, NEW.state, NEW.settlement, NEW.payer, NEW.billed_weight_kg))
	EXECUTE FUNCTION @extschema@._fee_line_revise();

-- What settlement and the other views add up: one row per shipment
-- (provider, binding, order) and currency, kept by _fee_totals() in the
-- statement that changes the lines, so that finance's views read a row per
-- shipment rather than every line.
CREATE TABLE @extschema@.fee_sum (
	binding_id		integer NOT NULL,
	order_key		text COLLATE "C" NOT NULL,
	provider_id		integer NOT NULL,
	currency		text NOT NULL,
	estimated		numeric NOT NULL,
	charged			numeric NOT NULL,
	refunded		numeric NOT NULL,
	quote_lines		integer NOT NULL,
	bill_lines		integer NOT NULL,
	last_change		timestamptz NOT NULL,
	PRIMARY KEY (binding_id, order_key, provider_id, currency)
);
COMMENT ON TABLE @extschema@.fee_sum IS
	'The fee lines of each shipment (provider, binding, order) summed per currency, kept with the lines: estimated (the quote, net of refunds), charged (the bill, refunds left out), refunded (positive), how many quote and bill lines, and when the latest changed. Lines of waybills no shipment has are not in it.';

CREATE TABLE @extschema@.fee_pull (
	binding_id		integer NOT NULL,
	order_key		text COLLATE "C" NOT NULL,
	provider_id		integer NOT NULL,
	pulls			integer NOT NULL DEFAULT 0,
	last_pulled_at	timestamptz,
	next_pull_at	timestamptz NOT NULL,
	last_result		text,
	PRIMARY KEY (binding_id, order_key, provider_id)
);
CREATE INDEX fee_pull_due_idx ON @extschema@.fee_pull (provider_id, next_pull_at);
COMMENT ON TABLE @extschema@.fee_pull IS
	'The dispatcher''s fee queries (provider option fee_pull_after): a shipment enters when its delivered event is stored, due fee_pull_after after it; then how often it was asked, when, what the carrier said, and when it is asked again if its fees were not there yet (at most 10 times). Rows whose next_pull_at is infinity are done.';

-- delivered events, for the unbilled shipments of shipsync.fee_difference
CREATE INDEX tracking_event_delivered_idx ON @extschema@.tracking_event (occurred_at)
	WHERE status = 'delivered';

-- A delivered event queues the fee pull of its order's shipment, when the
-- shipping provider pulls fees.  Only delivered events call it.
CREATE FUNCTION @extschema@._queue_fee_pull()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO @extschema@.fee_pull AS fp (binding_id, order_key, provider_id, next_pull_at)
	SELECT NEW.binding_id, NEW.order_key, b.provider_id,
		   NEW.occurred_at + @extschema@._interval_or_null(p.options->>'fee_pull_after')
	FROM @extschema@.binding b
	JOIN @extschema@.provider p ON p.provider_id = b.provider_id
	WHERE b.binding_id = NEW.binding_id AND p.dialect IN ('generic', 'sf_express')
	  AND @extschema@._interval_or_null(p.options->>'fee_pull_after') IS NOT NULL
	ON CONFLICT (binding_id, order_key, provider_id) DO NOTHING;
	RETURN NULL;
END
$$;
CREATE TRIGGER queue_fee_pull AFTER INSERT ON @extschema@.tracking_event
	FOR EACH ROW WHEN (NEW.status = 'delivered')
	EXECUTE FUNCTION @extschema@._queue_fee_pull();

-- The default currency of a provider's fee lines: option currency, else
-- what its dialect bills in (NULL: every line must say).
CREATE FUNCTION @extschema@._fee_currency(options jsonb, dialect text)
RETURNS text
LANGUAGE sql IMMUTABLE
-- A body in standard SQL, bound when created: it needs no pinned
-- search_path, and without one (a SET clause) the planner inlines it into
-- the calling statement instead of calling it, with a configuration change
-- and a plan of its body, for every row (the apply calls it per batch).
RETURN coalesce(options OPERATOR(pg_catalog.->>) 'currency',
	CASE dialect WHEN 'sf_express' THEN 'CNY' WHEN 'easypost' THEN 'USD' END);

/*
 * The locks of a transaction that writes the fee lines of these tracking
 * numbers, so that two writers of one order's lines never compute its
 * total apart.  A small batch shares its providers and takes each tracking
 * number (one advisory lock each, in a fixed order); a statement, or a
 * batch of more than 1,000 tracking numbers (the lock table holds a few
 * thousand in all), takes its providers whole.  Held to the end of the
 * transaction.  In C (src/fees.c): as PL/pgSQL it cost 10.9 thousand
 * instructions an answer of the apply, and a new applier's first batch
 * loaded the PL/pgSQL library for it.
 */
CREATE FUNCTION @extschema@._lock_fees(pids integer[], tns text[], whole boolean)
RETURNS void
AS 'MODULE_PATHNAME', 'shipsync_lock_fees'
LANGUAGE C;

/*
 * Parked lines of these tracking numbers whose shipment has appeared get
 * its binding and order; a tracking number given to several shipments
 * (carriers recycle them) goes to the newest.  The caller holds the
 * tracking numbers' locks.  Returns how many lines and which orders.
 */
CREATE FUNCTION @extschema@._match_parked_fees(pids integer[], tns text[],
	OUT n bigint, OUT tb integer[], OUT tk text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	WITH want AS (
		SELECT DISTINCT f.provider_id, f.tracking_number
		FROM unnest(pids, tns) AS u(pid, tn)
		JOIN @extschema@.fee_line f ON f.binding_id IS NULL AND f.provider_id = u.pid
		 AND f.tracking_number = u.tn),
	ship AS (
		SELECT DISTINCT ON (s.provider_id, s.tracking_number) s.provider_id, s.tracking_number,
			   s.binding_id, s.order_key
		FROM @extschema@.shipment s JOIN want w USING (provider_id, tracking_number)
		ORDER BY s.provider_id, s.tracking_number, s.created_at DESC),
	m AS (
		UPDATE @extschema@.fee_line f SET binding_id = ship.binding_id, order_key = ship.order_key
		  FROM ship
		 WHERE f.binding_id IS NULL AND f.provider_id = ship.provider_id
		   AND f.tracking_number = ship.tracking_number
		RETURNING f.binding_id, f.order_key)
	SELECT count(*), coalesce(array_agg(m.binding_id), '{}'), coalesce(array_agg(m.order_key), '{}')
	INTO n, tb, tk FROM m;
END
$$;

/*
 * Store one batch of fee lines and write the totals: the shared step of
 * every source (src/fees.c).  Arrays are parallel, one element per line;
 * bids/oks name the order when the caller knows it (create responses),
 * else the line is matched by its tracking number, or parked.  Lines of a
 * tracking number in this batch that were parked before are matched first.
 * Its locks are _lock_fees()'s (a statement takes its provider whole).  With
 * replaces, the lines of that earlier statement which this one does not
 * bill again are withdrawn (amount 0, adjusted).  Returns the counts, then
 * one row per order whose fee_total changed and is written back.
 */
CREATE FUNCTION @extschema@._store_fees(src text, stmt bigint, replaces bigint, who text,
	pids integer[], bids integer[], oks text[], tns text[], codes text[], amounts numeric[],
	currencies text[], fkeys text[], settlements text[], payers text[], weights numeric[],
	states text[], ats timestamptz[])
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	n_in bigint := coalesce(array_length(tns, 1), 0);
	n_new bigint;
	n_rev bigint;
	n_park bigint;
	n_matched bigint := 0;
	n_withdrawn bigint := 0;
	tb integer[];
	tk text[];
BEGIN
	PERFORM @extschema@._lock_fees(pids, tns, src = 'statement');

	SELECT m.n, m.tb, m.tk INTO n_matched, tb, tk
	FROM @extschema@._match_parked_fees(pids, tns) m;

	WITH inc AS (
		SELECT u.ord, u.pid, u.bid, u.ok, u.tn, u.code, u.amount, u.cur, u.fkey, u.settle,
			   u.payer, u.weight, u.st, u.at,
			   coalesce(tm.fee_type, ft.name, 'other') AS fee_type
		FROM unnest(pids, bids, oks, tns, codes, amounts, currencies, fkeys, settlements, payers,
					weights, states, ats)
			 WITH ORDINALITY AS u(pid, bid, ok, tn, code, amount, cur, fkey, settle, payer,
								  weight, st, at, ord)
		JOIN @extschema@.provider p ON p.provider_id = u.pid
		LEFT JOIN @extschema@.fee_type_map tm
			   ON tm.profile = coalesce(p.options->>'profile', p.dialect) AND tm.code = u.code
		LEFT JOIN @extschema@.fee_type ft ON ft.name = lower(u.code)),
	-- a line without a key of the carrier: the first of its type in this
	-- notice has key '', the next '#2', ...; the same line twice: the last.
	-- Grouped and sorted bytewise (COLLATE "C"): the groups are the same
	-- under any deterministic collation, and a statement sorts 100,000
	-- lines here twice, where strcoll() cost more than the rest of the sort
	keyed AS (
		SELECT DISTINCT ON (y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C") y.*
		FROM (SELECT inc.*,
					 CASE WHEN inc.fkey IS NOT NULL THEN inc.fkey
						  WHEN row_number() OVER w = 1 THEN ''
						  ELSE '#' || row_number() OVER w END AS k
			  FROM inc
			  WINDOW w AS (PARTITION BY inc.pid, inc.tn COLLATE "C", inc.fee_type COLLATE "C", inc.fkey IS NULL
						   ORDER BY inc.ord)) y
		ORDER BY y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C", y.ord DESC),
	ship AS (
		SELECT DISTINCT ON (s.provider_id, s.tracking_number) s.provider_id, s.tracking_number,
			   s.binding_id, s.order_key
		FROM @extschema@.shipment s
		WHERE (s.provider_id, s.tracking_number) IN
			  (SELECT keyed.pid, keyed.tn FROM keyed WHERE keyed.bid IS NULL)
		ORDER BY s.provider_id, s.tracking_number, s.created_at DESC),
	up AS (
		INSERT INTO @extschema@.fee_line AS f (provider_id, tracking_number, fee_type, fee_key,
			quote, binding_id, order_key, raw_type, amount, currency, settlement, payer,
			billed_weight_kg, state, source, statement_id, occurred_at, recorded_by)
		SELECT k.pid, k.tn, k.fee_type, k.k, src = 'create',
			   coalesce(k.bid, ship.binding_id), coalesce(k.ok, ship.order_key),
			   k.code, k.amount, k.cur, k.settle, k.payer, k.weight,
			   coalesce(k.st, CASE WHEN src = 'create' THEN 'estimated' ELSE 'charged' END),
			   src, stmt, k.at, who
		FROM keyed k
		LEFT JOIN ship ON ship.provider_id = k.pid AND ship.tracking_number = k.tn
		ORDER BY k.ord
		ON CONFLICT (provider_id, tracking_number, fee_type, fee_key, quote) DO UPDATE SET
			raw_type = EXCLUDED.raw_type, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
			settlement = coalesce(EXCLUDED.settlement, f.settlement),
			payer = coalesce(EXCLUDED.payer, f.payer),
			billed_weight_kg = coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg),
			state = EXCLUDED.state, source = EXCLUDED.source, statement_id = EXCLUDED.statement_id,
			occurred_at = coalesce(EXCLUDED.occurred_at, f.occurred_at),
			recorded_by = EXCLUDED.recorded_by,
			binding_id = coalesce(f.binding_id, EXCLUDED.binding_id),
			order_key = coalesce(f.order_key, EXCLUDED.order_key)
		-- a change, not older than what the line says now, and not a
		-- notice seen before (a late duplicate of a revised line)
		WHERE (f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
			  IS DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency, EXCLUDED.state,
								coalesce(EXCLUDED.settlement, f.settlement),
								coalesce(EXCLUDED.payer, f.payer),
								coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg))
		  AND (EXCLUDED.occurred_at IS NULL OR f.occurred_at IS NULL
			   OR EXCLUDED.occurred_at >= f.occurred_at)
		  AND NOT EXISTS (SELECT 1 FROM @extschema@.fee_line_history h
						  WHERE h.fee_line_id = f.fee_line_id
							AND (h.amount, h.currency, h.state, h.occurred_at)
								IS NOT DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency,
													  EXCLUDED.state, EXCLUDED.occurred_at))
		RETURNING f.xmax = 0 AS inserted, f.binding_id, f.order_key),
	-- a corrected statement: what the earlier one billed and this one does not
	wd AS (
		UPDATE @extschema@.fee_line f
		   SET amount = 0, state = 'adjusted', source = 'statement', statement_id = stmt,
			   recorded_by = who
		 WHERE replaces IS NOT NULL AND f.statement_id = replaces AND NOT f.quote
		   AND NOT EXISTS (SELECT 1 FROM keyed k
						   WHERE k.pid = f.provider_id AND k.tn = f.tracking_number
							 AND k.fee_type = f.fee_type AND k.k = f.fee_key)
		RETURNING f.binding_id, f.order_key)
	SELECT (SELECT count(*) FROM up WHERE up.inserted),
		   (SELECT count(*) FROM up WHERE NOT up.inserted),
		   (SELECT count(*) FROM up WHERE up.binding_id IS NULL),
		   (SELECT count(*) FROM wd),
		   coalesce(tb, '{}') || coalesce((SELECT array_agg(x.binding_id) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd) x), '{}'),
		   coalesce(tk, '{}') || coalesce((SELECT array_agg(x.order_key) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd) x), '{}')
	INTO n_new, n_rev, n_park, n_withdrawn, tb, tk;

	kind := 'new'; n := n_new; RETURN NEXT;
	kind := 'revised'; n := n_rev; RETURN NEXT;
	kind := 'duplicate'; n := n_in - n_new - n_rev; RETURN NEXT;
	kind := 'unmatched'; n := n_park; RETURN NEXT;
	kind := 'matched'; n := n_matched; RETURN NEXT;
	kind := 'withdrawn'; n := n_withdrawn; RETURN NEXT;
	n := NULL;

	RETURN QUERY SELECT * FROM @extschema@._fee_totals(tb, tk);
END
$$;

/*
 * For the given orders, in a statement of its own (it sees the lines just
 * stored): their rows of fee_sum made again, and the fee_total rule -- the
 * bill's lines where the order has any, otherwise the quote's, net of
 * refunds, when they share one currency.  The shipment of the binding's
 * provider then carries the total, and the order rows whose binding writes
 * fee_total back are returned; an order whose lines mix currencies keeps
 * its total and gets one open ticket of kind fee_currency_mixed, resolved
 * when they agree again.
 */
CREATE FUNCTION @extschema@._fee_totals(tb integer[], tk text[])
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	-- one join and one aggregate for all the orders (a statement touches
	-- tens of thousands), min <> max for "more than one currency"
	RETURN QUERY
	WITH t AS (
		SELECT DISTINCT x.b, x.k FROM unnest(tb, tk) AS x(b, k) WHERE x.b IS NOT NULL),
	per AS MATERIALIZED (
		SELECT l.binding_id AS b, l.order_key AS k, l.provider_id AS pid, l.currency AS cur,
			   coalesce(sum(CASE WHEN l.fee_type = 'refund' THEN -abs(l.amount) ELSE l.amount END)
					FILTER (WHERE l.quote), 0) AS est,
			   coalesce(sum(l.amount) FILTER (WHERE NOT l.quote AND l.state <> 'refunded'
											  AND l.fee_type <> 'refund'), 0) AS chg,
			   coalesce(sum(abs(l.amount)) FILTER (WHERE NOT l.quote
					AND (l.state = 'refunded' OR l.fee_type = 'refund')), 0) AS ref,
			   count(*) FILTER (WHERE l.quote) AS nq,
			   count(*) FILTER (WHERE NOT l.quote) AS nb,
			   max(l.recorded_at) AS last
		FROM @extschema@.fee_line l
		JOIN t ON l.binding_id = t.b AND l.order_key = t.k
		GROUP BY l.binding_id, l.order_key, l.provider_id, l.currency),
	kept AS (
		INSERT INTO @extschema@.fee_sum AS fs (binding_id, order_key, provider_id, currency,
			estimated, charged, refunded, quote_lines, bill_lines, last_change)
		SELECT per.b, per.k, per.pid, per.cur, per.est, per.chg, per.ref, per.nq, per.nb, per.last
		FROM per
		ON CONFLICT ON CONSTRAINT fee_sum_pkey DO UPDATE SET
			estimated = EXCLUDED.estimated, charged = EXCLUDED.charged,
			refunded = EXCLUDED.refunded, quote_lines = EXCLUDED.quote_lines,
			bill_lines = EXCLUDED.bill_lines, last_change = EXCLUDED.last_change
		WHERE (fs.estimated, fs.charged, fs.refunded, fs.quote_lines, fs.bill_lines, fs.last_change)
			  IS DISTINCT FROM (EXCLUDED.estimated, EXCLUDED.charged, EXCLUDED.refunded,
								EXCLUDED.quote_lines, EXCLUDED.bill_lines, EXCLUDED.last_change)
		RETURNING 1),
	gone AS (
		DELETE FROM @extschema@.fee_sum fs USING t
		 WHERE fs.binding_id = t.b AND fs.order_key = t.k
		   AND NOT EXISTS (SELECT 1 FROM per WHERE per.b = fs.binding_id AND per.k = fs.order_key
						   AND per.pid = fs.provider_id AND per.cur = fs.currency)
		RETURNING 1),
	ord AS (
		SELECT per.b, per.k, sum(per.nb) > 0 AS billed,
			   min(per.cur) FILTER (WHERE per.nb > 0) AS lo_b,
			   max(per.cur) FILTER (WHERE per.nb > 0) AS hi_b,
			   min(per.cur) FILTER (WHERE per.nq > 0) AS lo_q,
			   max(per.cur) FILTER (WHERE per.nq > 0) AS hi_q,
			   sum(per.chg - per.ref) FILTER (WHERE per.nb > 0) AS tot_b,
			   sum(per.est) FILTER (WHERE per.nq > 0) AS tot_q
		FROM per GROUP BY per.b, per.k),
	tot AS (
		SELECT ord.b, ord.k, bb.provider_id AS pid, bb.writeback ? 'fee_total' AS wb,
			   CASE WHEN ord.billed THEN ord.lo_b = ord.hi_b ELSE ord.lo_q = ord.hi_q END AS one,
			   CASE WHEN ord.billed THEN ord.tot_b ELSE ord.tot_q END AS total
		FROM ord JOIN @extschema@.binding bb ON bb.binding_id = ord.b),
	sh AS (
		UPDATE @extschema@.shipment s SET fee_total = tot.total, updated_at = now()
		  FROM tot
		 WHERE tot.one AND s.binding_id = tot.b AND s.order_key = tot.k
		   AND s.provider_id = tot.pid AND s.fee_total IS DISTINCT FROM tot.total
		RETURNING s.binding_id, s.order_key, s.fee_total, tot.wb),
	mixed AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, provider_id, detail)
		SELECT 'fee_currency_mixed', tot.b, tot.k, tot.pid,
			   format('the fees of order %s are in %s: its fee_total is left as it was', tot.k,
					  (SELECT string_agg(DISTINCT per.cur, ', ') FROM per
					   WHERE per.b = tot.b AND per.k = tot.k))
		FROM tot
		WHERE NOT tot.one
		  AND NOT EXISTS (SELECT 1 FROM @extschema@.exception_ticket x
						  WHERE x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
							AND x.order_key = tot.k AND x.resolved_at IS NULL)
		RETURNING 1),
	agreed AS (
		UPDATE @extschema@.exception_ticket x SET resolved_at = now()
		  FROM tot
		 WHERE tot.one AND x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
		   AND x.order_key = tot.k AND x.resolved_at IS NULL
		RETURNING 1)
	-- (kept, gone, mixed and agreed run whether or not they are read)
	SELECT 'writeback'::text, NULL::bigint, sh.binding_id, sh.order_key, sh.fee_total
	FROM sh WHERE sh.wb;
END
$$;

/*
 * The row of a statement being imported (src/statement.c): its period
 * (given as YYYY-MM, else the one month all its lines fall in, in the
 * provider's time zone), its totals per currency as billed, and the
 * earlier statement of that provider, period and account it supersedes.
 */
CREATE FUNCTION @extschema@._begin_statement(pid integer, period_text text, acct text, fmt text,
	body_digest text, tz text, curs text[], amounts numeric[], ats timestamptz[], errs jsonb,
	OUT statement_id bigint, OUT replaces bigint, OUT period date, OUT totals jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	lo date;
	hi date;
	nmissing bigint;
	p date;
	old bigint;
	tot jsonb;
	id bigint;
BEGIN
	IF period_text IS NOT NULL THEN
		p := to_date(period_text || '-01', 'YYYY-MM-DD');
	ELSE
		SELECT min(date_trunc('month', a AT TIME ZONE tz))::date,
			   max(date_trunc('month', a AT TIME ZONE tz))::date,
			   count(*) FILTER (WHERE a IS NULL)
		INTO lo, hi, nmissing FROM unnest(ats) AS a;
		IF lo IS NULL OR lo <> hi OR nmissing > 0 THEN
			RAISE EXCEPTION 'the month this statement bills is not known'
				USING ERRCODE = 'SS400',
					  DETAIL = CASE WHEN lo IS NULL THEN 'Its lines have no times.'
									WHEN lo <> hi THEN format('Its lines fall in %s to %s.',
										to_char(lo, 'YYYY-MM'), to_char(hi, 'YYYY-MM'))
									ELSE format('%s of its lines have no time.', nmissing) END,
					  HINT = 'Pass it in the options, for example {"period": "2026-03"}.';
		END IF;
		p := lo;
	END IF;
	SELECT s.statement_id INTO old FROM @extschema@.statement s
	 WHERE s.provider_id = pid AND s.period = p AND s.account IS NOT DISTINCT FROM acct
	   AND s.superseded_by IS NULL
	 ORDER BY s.statement_id DESC LIMIT 1;
	SELECT coalesce(jsonb_object_agg(x.cur, x.total::text), '{}') INTO tot
	FROM (SELECT u.cur, sum(u.amount) AS total FROM unnest(curs, amounts) AS u(cur, amount)
		  GROUP BY u.cur) x;
	INSERT INTO @extschema@.statement AS s (provider_id, period, account, format, digest, lines,
		totals, errors, supersedes)
	VALUES (pid, p, acct, fmt, body_digest, coalesce(cardinality(curs), 0), tot, errs, old)
	RETURNING s.statement_id INTO id;
	UPDATE @extschema@.statement s SET superseded_by = id WHERE s.statement_id = old;
	statement_id := id;
	replaces := old;
	period := p;
	totals := tot;
END
$$;

/*
 * The dispatcher's apply (src/outbox.c, through src/fees.c): the fees of
 * create and update responses become the quote (estimated lines) of their
 * orders, and parked bill lines of the new tracking numbers are matched.
 * A batch of the dispatcher's is small: generic plans (see store_execute()
 * in src/fees.c).
 * One element per applied result; fees is the answer's "fees" array as
 * text when it had one (already checked by the response parser: a type
 * and a decimal amount each).  A quote without a currency is in the provider's default
 * currency, else XXX.  Returns what _store_fees() returns.
 */
CREATE FUNCTION @extschema@._record_quotes(bids integer[], oks text[], pids integer[],
	tns text[], fees text[])
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
	q record;
	m record;
	lock_pids integer[];
	lock_tns text[];
BEGIN
	-- parked bill lines of these tracking numbers: rare, looked for first
	SELECT array_agg(DISTINCT u.pid), array_agg(DISTINCT u.tn) INTO lock_pids, lock_tns
	FROM unnest(pids, tns) AS u(pid, tn)
	WHERE u.tn IS NOT NULL
	  AND EXISTS (SELECT 1 FROM @extschema@.fee_line f
				  WHERE f.binding_id IS NULL AND f.provider_id = u.pid AND f.tracking_number = u.tn);
	IF lock_tns IS NOT NULL THEN
		PERFORM @extschema@._lock_fees(lock_pids, lock_tns, false);
		SELECT * INTO m FROM @extschema@._match_parked_fees(pids, tns);
		RETURN QUERY SELECT * FROM @extschema@._fee_totals(m.tb, m.tk) t WHERE t.kind = 'writeback';
	END IF;

	SELECT array_agg(x.pid ORDER BY x.o, x.i) AS pids, array_agg(x.bid ORDER BY x.o, x.i) AS bids,
		   array_agg(x.ok ORDER BY x.o, x.i) AS oks, array_agg(x.tn ORDER BY x.o, x.i) AS tns,
		   array_agg(x.code ORDER BY x.o, x.i) AS codes,
		   array_agg(x.amount ORDER BY x.o, x.i) AS amounts,
		   array_agg(x.cur ORDER BY x.o, x.i) AS curs, array_agg(x.fkey ORDER BY x.o, x.i) AS fkeys
	INTO q
	FROM (SELECT u.o, e.i, u.pid, u.bid, u.ok, u.tn, e.fee->>'type' AS code,
				 (e.fee->>'amount')::numeric AS amount,
				 CASE WHEN c.code IS NOT NULL THEN c.code ELSE 'XXX' END AS cur,
				 e.fee->>'key' AS fkey
		  FROM unnest(bids, oks, pids, tns, fees) WITH ORDINALITY AS u(bid, ok, pid, tn, fj, o)
		  JOIN @extschema@.provider p ON p.provider_id = u.pid
		  CROSS JOIN LATERAL jsonb_array_elements(
			  CASE WHEN jsonb_typeof(u.fj::jsonb) = 'array' THEN u.fj::jsonb
				   ELSE '[]' END) WITH ORDINALITY AS e(fee, i)
		  LEFT JOIN @extschema@.currency c
				 ON c.code = coalesce(e.fee->>'currency', @extschema@._fee_currency(p.options, p.dialect))
		  WHERE u.fj IS NOT NULL AND u.tn IS NOT NULL
			AND jsonb_typeof(e.fee) = 'object' AND e.fee->>'type' IS NOT NULL) x;
	IF q.tns IS NULL THEN
		RETURN;
	END IF;
	RETURN QUERY SELECT * FROM @extschema@._store_fees('create', NULL, NULL, 'dispatcher',
		q.pids, q.bids, q.oks, q.tns, q.codes, q.amounts, q.curs, q.fkeys,
		array_fill(NULL::text, ARRAY[cardinality(q.tns)]),
		array_fill(NULL::text, ARRAY[cardinality(q.tns)]),
		array_fill(NULL::numeric, ARRAY[cardinality(q.tns)]),
		array_fill(NULL::text, ARRAY[cardinality(q.tns)]),
		array_fill(NULL::timestamptz, ARRAY[cardinality(q.tns)]));
END
$$;

/*
 * Parked lines whose shipment was recorded in a transaction that could not
 * see them (src/feepull.c, every idle_check_ms): matched, and the totals
 * of their orders returned as _store_fees() returns them.
 */
CREATE FUNCTION @extschema@._match_parked_fees_all()
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
	pids integer[];
	tns text[];
	m record;
BEGIN
	SELECT array_agg(x.provider_id), array_agg(x.tracking_number) INTO pids, tns
	FROM (SELECT DISTINCT f.provider_id, f.tracking_number
		  FROM @extschema@.fee_line f
		  WHERE f.binding_id IS NULL
			AND EXISTS (SELECT 1 FROM @extschema@.shipment s
						WHERE s.provider_id = f.provider_id AND s.tracking_number = f.tracking_number)) x;
	IF tns IS NULL THEN
		RETURN;
	END IF;
	PERFORM @extschema@._lock_fees(pids, tns, false);
	SELECT * INTO m FROM @extschema@._match_parked_fees(pids, tns);
	RETURN QUERY SELECT * FROM @extschema@._fee_totals(m.tb, m.tk);
END
$$;

/*
 * The shipments of a provider whose fees are due to be asked for
 * (src/feepull.c): leased for 10 minutes, so that no other round asks
 * them meanwhile.  Those billed meanwhile leave the queue.
 */
CREATE FUNCTION @extschema@._choose_fee_pulls(pid integer, max_n integer)
RETURNS TABLE (binding_id integer, order_key text, provider_shipment_id text, tracking_number text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	UPDATE @extschema@.fee_pull fp SET next_pull_at = 'infinity', last_result = 'billed'
	 WHERE fp.provider_id = pid AND fp.next_pull_at <= now()
	   AND EXISTS (SELECT 1 FROM @extschema@.fee_line l
				   WHERE l.binding_id = fp.binding_id AND l.order_key = fp.order_key
					 AND l.provider_id = pid AND NOT l.quote);
	RETURN QUERY
	WITH picked AS (
		SELECT fp.binding_id, fp.order_key FROM @extschema@.fee_pull fp
		WHERE fp.provider_id = pid AND fp.next_pull_at <= now()
		ORDER BY fp.next_pull_at
		LIMIT max_n
		FOR UPDATE SKIP LOCKED),
	lease AS (
		UPDATE @extschema@.fee_pull fp SET next_pull_at = now() + interval '10 minutes'
		  FROM picked
		 WHERE fp.binding_id = picked.binding_id AND fp.order_key = picked.order_key
		   AND fp.provider_id = pid
		RETURNING fp.binding_id, fp.order_key)
	SELECT s.binding_id, s.order_key, s.provider_shipment_id, s.tracking_number
	FROM lease
	JOIN @extschema@.shipment s
	  ON s.binding_id = lease.binding_id AND s.order_key = lease.order_key AND s.provider_id = pid
	JOIN @extschema@.provider p ON p.provider_id = pid
	WHERE CASE WHEN p.dialect = 'sf_express' THEN s.tracking_number
			   ELSE s.provider_shipment_id END IS NOT NULL;
END
$$;

/*
 * The estimate a create or update response sets on the shipment (the
 * dispatcher's apply writes it back with the rest): the sum of its fees
 * net of refunds, when they share one currency; NULL otherwise, and the
 * order's fee_total is left alone.  _record_quotes() then applies the
 * whole rule (a bill, once there is one, wins).
 */
CREATE FUNCTION @extschema@._quote_total(fees jsonb, pid integer)
RETURNS numeric
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN count(DISTINCT coalesce(e->>'currency', d.cur, 'XXX')) = 1
				THEN sum(CASE WHEN e->>'type' = 'refund' THEN -abs((e->>'amount')::numeric)
							  ELSE (e->>'amount')::numeric END) END
	FROM jsonb_array_elements(CASE WHEN jsonb_typeof(fees) = 'array' THEN fees ELSE '[]' END) e,
		 (SELECT @extschema@._fee_currency(p.options, p.dialect) AS cur
		  FROM @extschema@.provider p WHERE p.provider_id = pid) d
$$;

------------------------------------------------------------------------------
-- The sources' entry points (src/fees.c, src/statement.c)
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ingest_fees(provider text, body text, headers jsonb DEFAULT '{}')
RETURNS jsonb
AS 'MODULE_PATHNAME', 'shipsync_ingest_fees'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.ingest_fees(text, text, jsonb) IS
	'Take one fee push of a provider, as received, signed as that dialect''s tracking pushes (generic: Standard Webhooks; sf_express only with accept_unsigned_pushes): every line is checked, then all are stored or none; a changed line is a revision, the same line again changes nothing, lines of unknown tracking numbers are parked. Returns {"lines", "new", "revised", "duplicate", "unmatched", "matched", "orders_changed"} and, for kuaidi100 and sf_express, the "reply" the provider expects. SQLSTATE SS401 for a bad or missing signature, SS400 for a body that is not the dialect''s fee payload or a line that cannot be read.';

CREATE FUNCTION @extschema@.import_statement(provider text, body text, format text DEFAULT 'csv',
											 options jsonb DEFAULT '{}')
RETURNS jsonb
AS 'MODULE_PATHNAME', 'shipsync_import_statement'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.import_statement(text, text, text, jsonb) IS
	'Import a carrier''s monthly statement, CSV (a header row; columns named through options.columns, the provider''s field_map rows of direction statement, or the canonical names; UTF-8 with or without BOM, quoted fields, CRLF) or JSON (an array of fee objects as in a push). The same body again is a no-op; a later statement of the same period (and account) supersedes the earlier one line by line. A bad line is an error (SS400) naming its line and column, and nothing is stored; with options.on_error = skip it is kept in the statement''s errors instead. Options: columns, period (YYYY-MM), account, on_error (error, skip), delimiter.';

------------------------------------------------------------------------------
-- Views for finance
------------------------------------------------------------------------------

CREATE VIEW @extschema@.order_fees AS
SELECT x.binding_id, b.tbl, x.order_key, x.currency, x.estimated, x.charged, x.refunded,
	   CASE WHEN x.order_billed THEN x.charged - x.refunded ELSE x.estimated END AS net,
	   x.lines, x.last_change
FROM (SELECT f.binding_id, f.order_key, f.currency,
			 pg_catalog.sum(f.estimated) AS estimated, pg_catalog.sum(f.charged) AS charged,
			 pg_catalog.sum(f.refunded) AS refunded,
			 pg_catalog.sum(f.quote_lines + f.bill_lines)::bigint AS lines,
			 pg_catalog.max(f.last_change) AS last_change,
			 pg_catalog.bool_or(pg_catalog.bool_or(f.bill_lines > 0))
				 OVER (PARTITION BY f.binding_id, f.order_key) AS order_billed
	  FROM @extschema@.fee_sum f
	  GROUP BY f.binding_id, f.order_key, f.currency) x
JOIN @extschema@.binding b ON b.binding_id = x.binding_id;
COMMENT ON VIEW @extschema@.order_fees IS
	'Per attached table, order and currency: what was quoted, charged and refunded, and the net the order costs (the bill where the order has one, else the quote: the rule of the fee_total write-back).';
COMMENT ON COLUMN @extschema@.order_fees.binding_id IS 'The binding (shipsync.binding) the order belongs to.';
COMMENT ON COLUMN @extschema@.order_fees.tbl IS 'The attached table.';
COMMENT ON COLUMN @extschema@.order_fees.order_key IS 'The order''s key, as text.';
COMMENT ON COLUMN @extschema@.order_fees.currency IS 'ISO 4217 code; an order whose fees mix currencies has one row per currency.';
COMMENT ON COLUMN @extschema@.order_fees.estimated IS 'The quote: the fees of the create responses, net of refunds.';
COMMENT ON COLUMN @extschema@.order_fees.charged IS 'The bill: charged and adjusted lines, refunds left out.';
COMMENT ON COLUMN @extschema@.order_fees.refunded IS 'The bill''s refunds (state refunded or type refund), as a positive amount.';
COMMENT ON COLUMN @extschema@.order_fees.net IS 'charged - refunded when the order has any bill line, else estimated.';
COMMENT ON COLUMN @extschema@.order_fees.lines IS 'Fee lines, quote and bill.';
COMMENT ON COLUMN @extschema@.order_fees.last_change IS 'When the latest of these lines was recorded or revised.';

-- The rows of shipsync.settlement, grouped by provider id: one pass over
-- the shipments (joined to their sums), then the waybills no shipment has.
-- A function, for the memory to hash a million shipments whatever the
-- session's work_mem (with 4MB they spilled to disk, twice as slow).
CREATE FUNCTION @extschema@._settlement()
RETURNS TABLE (provider_id integer, month date, currency text, shipments bigint,
			   estimated numeric, charged numeric, refunded numeric, unbilled bigint,
			   unknown_waybills bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET work_mem = '64MB'
AS $$
	SELECT r.provider_id, r.month, r.currency, sum(r.shipments)::bigint, sum(r.estimated),
		   sum(r.charged), sum(r.refunded), sum(r.unbilled)::bigint, sum(r.unknown)::bigint
	FROM (-- shipments, by the month they were created: with their sums per
		  -- currency, or (those of a shipping provider) without any
		  SELECT s.provider_id, date_trunc('month', s.created_at)::date AS month,
				 f.currency, 1 AS shipments, coalesce(f.estimated, 0) AS estimated,
				 coalesce(f.charged, 0) AS charged, coalesce(f.refunded, 0) AS refunded,
				 CASE WHEN coalesce(f.bill_lines, 0) = 0 AND s.status <> 'cancelled'
					  THEN 1 ELSE 0 END AS unbilled,
				 0 AS unknown
		  FROM @extschema@.shipment s
		  JOIN @extschema@.binding b ON b.binding_id = s.binding_id
		  LEFT JOIN @extschema@.fee_sum f
			ON f.binding_id = s.binding_id AND f.order_key = s.order_key
		   AND f.provider_id = s.provider_id
		  WHERE f.binding_id IS NOT NULL OR s.provider_id = b.provider_id
		  UNION ALL
		  -- billed waybills no shipment has: by the statement's month, else the line's
		  SELECT u.provider_id, u.month, u.currency, 0, 0, u.charged, u.refunded, 0, 1
		  FROM (SELECT l.provider_id, l.tracking_number, l.currency,
					   min(coalesce(st.period, date_trunc('month',
						   coalesce(l.occurred_at, l.recorded_at))::date)) AS month,
					   coalesce(sum(l.amount) FILTER (WHERE l.state <> 'refunded'
						   AND l.fee_type <> 'refund'), 0) AS charged,
					   coalesce(sum(abs(l.amount)) FILTER (WHERE
						   l.state = 'refunded' OR l.fee_type = 'refund'), 0) AS refunded
				FROM @extschema@.fee_line l
				LEFT JOIN @extschema@.statement st ON st.statement_id = l.statement_id
				WHERE l.binding_id IS NULL AND NOT l.quote
				GROUP BY l.provider_id, l.tracking_number, l.currency) u) r
	GROUP BY r.provider_id, r.month, r.currency
$$;
COMMENT ON FUNCTION @extschema@._settlement() IS
	'Internal: the rows of shipsync.settlement by provider id.';

CREATE VIEW @extschema@.settlement AS
SELECT p.name AS provider, g.month, g.currency, g.shipments, g.estimated, g.charged, g.refunded,
	   g.charged - g.refunded AS net, g.charged - g.refunded - g.estimated AS difference,
	   g.unbilled, g.unknown_waybills
FROM @extschema@._settlement() g
JOIN @extschema@.provider p ON p.provider_id = g.provider_id;
COMMENT ON VIEW @extschema@.settlement IS
	'Per provider, month of the shipment''s creation and currency: what was quoted and billed. A shipment with lines in two currencies counts in each; shipments of a shipping provider with no fee line at all are in the row whose currency is NULL; billed waybills no shipment has count in the month of their statement.';
COMMENT ON COLUMN @extschema@.settlement.provider IS 'The provider (shipsync.provider.name) that quoted and billed.';
COMMENT ON COLUMN @extschema@.settlement.month IS 'First day of the month the shipments were created in (session time zone); for unknown waybills, the statement''s period.';
COMMENT ON COLUMN @extschema@.settlement.currency IS 'ISO 4217 code; NULL for shipments without any fee line.';
COMMENT ON COLUMN @extschema@.settlement.shipments IS 'Shipments with fee lines in this currency (or, where currency is NULL, with none).';
COMMENT ON COLUMN @extschema@.settlement.estimated IS 'Sum of the quotes, net of refunds.';
COMMENT ON COLUMN @extschema@.settlement.charged IS 'Sum billed (charged and adjusted lines), unknown waybills included.';
COMMENT ON COLUMN @extschema@.settlement.refunded IS 'Sum refunded, as a positive amount.';
COMMENT ON COLUMN @extschema@.settlement.net IS 'charged - refunded: what the bill comes to.';
COMMENT ON COLUMN @extschema@.settlement.difference IS 'net - estimated: how far the bill is from the quotes.';
COMMENT ON COLUMN @extschema@.settlement.unbilled IS 'Shipments (not cancelled) with no bill line yet.';
COMMENT ON COLUMN @extschema@.settlement.unknown_waybills IS 'Billed waybills that no shipment matches.';

CREATE VIEW @extschema@.fee_difference AS
WITH opts AS (
	SELECT p.provider_id, p.name,
		   coalesce(@extschema@._decimal_or_null(p.options->'fee_tolerance'->'abs'), 0.01) AS tol_abs,
		   coalesce(@extschema@._decimal_or_null(p.options->'fee_tolerance'->'pct'), 0) AS tol_pct,
		   coalesce(@extschema@._interval_or_null(p.options->>'unbilled_after'), interval '45 days') AS unbilled_after
	FROM @extschema@.provider p)
-- the bill differs from the quote beyond the tolerance
SELECT 'amount_mismatch'::text AS kind, o.name AS provider, f.binding_id, b.tbl, f.order_key,
	   s.tracking_number, NULL::text AS fee_type, f.currency, f.estimated,
	   f.charged - f.refunded AS billed, f.charged - f.refunded - f.estimated AS difference,
	   pg_catalog.format('billed %s %s against a quote of %s', f.charged - f.refunded, f.currency,
						 f.estimated) AS detail
FROM @extschema@.fee_sum f
JOIN opts o ON o.provider_id = f.provider_id
JOIN @extschema@.binding b ON b.binding_id = f.binding_id
JOIN @extschema@.shipment s
  ON s.binding_id = f.binding_id AND s.order_key = f.order_key AND s.provider_id = f.provider_id
WHERE f.quote_lines > 0 AND f.bill_lines > 0
  AND pg_catalog.abs(f.charged - f.refunded - f.estimated)
	  OPERATOR(pg_catalog.>) GREATEST(o.tol_abs, o.tol_pct / 100 * pg_catalog.abs(f.estimated))
UNION ALL
-- billed waybills that no shipment matches
SELECT 'unknown_waybill', o.name, NULL, NULL, NULL, l.tracking_number, NULL, l.currency, NULL,
	   pg_catalog.sum(CASE WHEN l.state = 'refunded' OR l.fee_type = 'refund'
						   THEN -pg_catalog.abs(l.amount) ELSE l.amount END),
	   NULL,
	   pg_catalog.format('%s bill lines for a waybill no shipment has', pg_catalog.count(*))
FROM @extschema@.fee_line l
JOIN opts o ON o.provider_id = l.provider_id
WHERE l.binding_id IS NULL AND NOT l.quote
GROUP BY o.name, l.tracking_number, l.currency
UNION ALL
-- delivered longer than unbilled_after ago, and no bill line
SELECT 'unbilled', o.name, s.binding_id, b.tbl, s.order_key, s.tracking_number, NULL, NULL,
	   NULL, NULL, NULL,
	   pg_catalog.format('delivered at %s, not billed after %s', d.at, o.unbilled_after)
FROM (SELECT e.binding_id, e.order_key, pg_catalog.min(e.occurred_at) AS at
	  FROM @extschema@.tracking_event e
	  WHERE e.status = 'delivered'
	  GROUP BY e.binding_id, e.order_key) d
JOIN @extschema@.binding b ON b.binding_id = d.binding_id
JOIN @extschema@.shipment s
  ON s.binding_id = d.binding_id AND s.order_key = d.order_key AND s.provider_id = b.provider_id
JOIN opts o ON o.provider_id = s.provider_id
WHERE d.at OPERATOR(pg_catalog.<) pg_catalog.now() - o.unbilled_after
  AND NOT EXISTS (SELECT 1 FROM @extschema@.fee_line l
				  WHERE l.binding_id = s.binding_id AND l.order_key = s.order_key
					AND l.provider_id = s.provider_id AND NOT l.quote)
UNION ALL
-- one waybill charged twice for one fee (the same type, under the same code)
SELECT 'duplicate_charge', o.name, pg_catalog.min(l.binding_id), NULL, pg_catalog.min(l.order_key),
	   l.tracking_number, l.fee_type, l.currency, NULL, pg_catalog.sum(l.amount), NULL,
	   pg_catalog.format('%s charged lines of %s (keys %s)', pg_catalog.count(*), pg_catalog.min(l.raw_type),
						 pg_catalog.string_agg(pg_catalog.quote_literal(l.fee_key), ', ' ORDER BY l.fee_key))
FROM @extschema@.fee_line l
JOIN opts o ON o.provider_id = l.provider_id
WHERE NOT l.quote AND l.state = 'charged'
GROUP BY o.name, l.tracking_number, l.fee_type, pg_catalog.lower(l.raw_type), l.currency
HAVING pg_catalog.count(*) > 1;
COMMENT ON VIEW @extschema@.fee_difference IS
	'One row per fee discrepancy, with its kind: amount_mismatch (a shipment''s bill differs from its quote by more than the provider''s fee_tolerance), unknown_waybill (billed, but no shipment has the waybill), unbilled (delivered longer than unbilled_after ago, no bill line), duplicate_charge (one waybill charged twice for one fee: the same type under the same carrier''s code).';
COMMENT ON COLUMN @extschema@.fee_difference.kind IS 'amount_mismatch, unknown_waybill, unbilled or duplicate_charge.';
COMMENT ON COLUMN @extschema@.fee_difference.provider IS 'The provider that quoted or billed.';
COMMENT ON COLUMN @extschema@.fee_difference.binding_id IS 'The order''s binding; NULL for an unknown waybill.';
COMMENT ON COLUMN @extschema@.fee_difference.tbl IS 'The attached table; NULL for an unknown waybill or a duplicate charge.';
COMMENT ON COLUMN @extschema@.fee_difference.order_key IS 'The order; NULL for an unknown waybill.';
COMMENT ON COLUMN @extschema@.fee_difference.tracking_number IS 'The waybill.';
COMMENT ON COLUMN @extschema@.fee_difference.fee_type IS 'For duplicate_charge: the fee type charged twice.';
COMMENT ON COLUMN @extschema@.fee_difference.currency IS 'The currency of the amounts.';
COMMENT ON COLUMN @extschema@.fee_difference.estimated IS 'For amount_mismatch: the quote.';
COMMENT ON COLUMN @extschema@.fee_difference.billed IS 'What was billed, net of refunds (for duplicate_charge: the sum of the charged lines).';
COMMENT ON COLUMN @extschema@.fee_difference.difference IS 'For amount_mismatch: billed - estimated.';
COMMENT ON COLUMN @extschema@.fee_difference.detail IS 'The discrepancy in words.';

------------------------------------------------------------------------------
-- Reading fees: field_map rows of directions fee and statement
--
-- direction fee: where a push's, a pull's or a JSON statement's fee lines
-- are (target fees: the path of the array from the document's root), and
-- each field of a line (a path read in the fee object, else from the
-- document's root); direction statement: the CSV column of each field.
-- A field without a row is read by its canonical name.  Checked by
-- _field_map_check() through this function.
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._check_fee_map_row(direction text, target_path text, source text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF target_path IS NULL OR target_path NOT IN ('tracking_number', 'type', 'amount', 'currency',
		'key', 'settlement', 'payer', 'billed_weight_kg', 'state', 'occurred_at')
	   AND NOT (direction = 'fee' AND target_path = 'fees') THEN
		RAISE EXCEPTION 'unknown fee field "%"', coalesce(target_path, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Fee fields: tracking_number, type, amount, currency, key, settlement, payer, billed_weight_kg, state, occurred_at; and, for direction fee, fees (where the lines are).',
				  HINT = 'Put the canonical field in target_path and where it is read in source.';
	END IF;
	IF source IS NULL OR source = '' THEN
		RAISE EXCEPTION 'a % row needs a source', direction
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = CASE direction WHEN 'fee' THEN 'The path of the field in a fee object, for example feeAmt.'
									   ELSE 'The name of the CSV column, as in the header row.' END;
	END IF;
	IF direction = 'fee' AND source ~ '^(option|meta):' THEN
		RAISE EXCEPTION 'source "%" cannot be read from a fee payload', source
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give a path into the payload, or a constant (const:...).';
	END IF;
END
$$;

-- seeds: read-only rows of the built-in profiles, written before the
-- field_map triggers see them (they would clear the seeded flag)
ALTER TABLE @extschema@.field_map DISABLE TRIGGER field_map_check;
INSERT INTO @extschema@.field_map (profile, direction, position, target_path, source, transform, arg, seeded)
VALUES
	-- SF Express: the fee query's msgData (EXP_RECE_QUERY_SFWAYBILL), and
	-- fee pushes of the same shape (unverified: one third-party client)
	('sf_express', 'fee', 1, 'fees', 'waybillFeeList', 'identity', NULL, true),
	('sf_express', 'fee', 2, 'tracking_number', 'waybillInfo.waybillNo', 'identity', NULL, true),
	('sf_express', 'fee', 3, 'type', 'feeName', 'identity', NULL, true),
	('sf_express', 'fee', 4, 'amount', 'feeAmt', 'identity', NULL, true),
	('sf_express', 'fee', 5, 'settlement', 'settlementTypeCode', 'lookup', '{"1": "cash", "2": "monthly"}', true),
	('sf_express', 'fee', 6, 'billed_weight_kg', 'waybillInfo.meterageWeightQty', 'identity', NULL, true),
	-- SF Express: the monthly statement (对账单) as exported
	('sf_express', 'statement', 1, 'tracking_number', '运单号', 'trim', NULL, true),
	('sf_express', 'statement', 2, 'type', '费用类型', 'trim', NULL, true),
	('sf_express', 'statement', 3, 'amount', '金额', 'identity', NULL, true),
	('sf_express', 'statement', 4, 'currency', '币种', 'trim', NULL, true),
	('sf_express', 'statement', 5, 'settlement', '结算方式', 'lookup', '{"月结": "monthly", "现结": "cash"}', true),
	('sf_express', 'statement', 6, 'payer', '付款方式', 'lookup', '{"寄付": "sender", "到付": "receiver", "第三方付": "third_party"}', true),
	('sf_express', 'statement', 7, 'billed_weight_kg', '计费重量', 'identity', NULL, true),
	('sf_express', 'statement', 8, 'occurred_at', '寄件时间', 'identity', NULL, true),
	-- EasyPost: the fees of a tracker.updated Event's Tracker
	('easypost', 'fee', 1, 'fees', 'result.fees', 'identity', NULL, true),
	('easypost', 'fee', 2, 'tracking_number', 'result.tracking_code', 'identity', NULL, true),
	('easypost', 'fee', 3, 'state', 'refunded', 'lookup', '{"true": "refunded", "false": "charged"}', true);
ALTER TABLE @extschema@.field_map ENABLE TRIGGER field_map_check;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.fee_type_map', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.currency', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.statement', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.fee_line', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.fee_line_history', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.fee_sum', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.fee_pull', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.statement_statement_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.fee_line_fee_line_id_seq', '');
-- fee_type is not dumped: it is the extension's own contract.

-- trace() shows fee lines and their revisions
CREATE OR REPLACE FUNCTION @extschema@.trace(tbl regclass, key text)
RETURNS TABLE (at timestamptz, kind text, detail jsonb)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	WITH b AS (SELECT binding_id FROM @extschema@.binding WHERE binding.tbl = trace.tbl),
	o AS (SELECT x.id, x.created_at, x.op, x.state, x.attempts, x.idempotency_key,
				 x.request_method, x.request_url, x.last_error, x.coalesced_into
		  FROM @extschema@.outbox x, b
		  WHERE x.binding_id = b.binding_id AND x.order_key = trace.key
		  UNION ALL
		  SELECT i.id, i.created_at, i.op, 'captured', 0, i.idempotency_key,
				 NULL, NULL, NULL, NULL
		  FROM @extschema@.inbox i, b
		  WHERE i.binding_id = b.binding_id AND i.order_key = trace.key),
	f AS (SELECT l.*, p.name AS provider
		  FROM @extschema@.fee_line l JOIN b ON l.binding_id = b.binding_id
		  JOIN @extschema@.provider p ON p.provider_id = l.provider_id
		  WHERE l.order_key = trace.key)
	SELECT * FROM (
		SELECT o.created_at, 'intent',
			   jsonb_build_object('outbox_id', o.id, 'op', o.op, 'state', o.state,
				   'attempts', o.attempts, 'idempotency_key', o.idempotency_key,
				   'request', o.request_method || ' ' || o.request_url,
				   'last_error', o.last_error, 'coalesced_into', o.coalesced_into)
		FROM o
		UNION ALL
		SELECT l.at, 'attempt',
			   jsonb_build_object('outbox_id', l.outbox_id, 'attempt', l.attempt,
				   'request', l.method || ' ' || l.url, 'http_status', l.http_status,
				   'latency_ms', round(l.latency_ms::numeric, 1), 'outcome', l.outcome,
				   'error_class', l.error_class, 'error', l.error)
		FROM @extschema@.delivery_log l JOIN o ON l.outbox_id = o.id
		UNION ALL
		SELECT s.created_at, 'shipment',
			   jsonb_build_object('provider', p.name, 'provider_shipment_id', s.provider_shipment_id,
				   'tracking_number', s.tracking_number, 'status', s.status,
				   'raw_status', s.raw_status, 'fee_total', s.fee_total, 'updated_at', s.updated_at)
		FROM @extschema@.shipment s JOIN b ON s.binding_id = b.binding_id
		JOIN @extschema@.provider p ON p.provider_id = s.provider_id
		WHERE s.order_key = trace.key
		UNION ALL
		SELECT e.occurred_at, 'tracking',
			   jsonb_build_object('provider', p.name, 'event_key', e.event_key,
				   'tracking_number', e.tracking_number, 'status', e.status,
				   'raw_status', e.raw_status, 'raw_detail', e.raw_detail,
				   'location', e.location, 'description', e.description,
				   'received_at', e.received_at)
		FROM @extschema@.tracking_event e JOIN b ON e.binding_id = b.binding_id
		JOIN @extschema@.provider p ON p.provider_id = e.provider_id
		WHERE e.order_key = trace.key
		UNION ALL
		-- every fee line in its current version, then each earlier one
		SELECT f.recorded_at, 'fee',
			   jsonb_build_object('provider', f.provider, 'fee_line_id', f.fee_line_id,
				   'tracking_number', f.tracking_number, 'fee_type', f.fee_type,
				   'raw_type', f.raw_type, 'fee_key', f.fee_key, 'amount', f.amount,
				   'currency', f.currency, 'state', f.state, 'source', f.source,
				   'statement_id', f.statement_id, 'revision', f.revision, 'current', true,
				   'recorded_by', f.recorded_by)
		FROM f
		UNION ALL
		SELECT h.recorded_at, 'fee',
			   jsonb_build_object('provider', f.provider, 'fee_line_id', f.fee_line_id,
				   'tracking_number', f.tracking_number, 'fee_type', f.fee_type,
				   'raw_type', h.raw_type, 'fee_key', f.fee_key, 'amount', h.amount,
				   'currency', h.currency, 'state', h.state, 'source', h.source,
				   'statement_id', h.statement_id, 'revision', h.revision, 'current', false,
				   'recorded_by', h.recorded_by, 'superseded_at', h.superseded_at,
				   'superseded_by', h.superseded_by, 'superseded_source', h.superseded_source)
		FROM f JOIN @extschema@.fee_line_history h ON h.fee_line_id = f.fee_line_id
		UNION ALL
		SELECT t.opened_at, 'ticket',
			   jsonb_build_object('ticket_id', t.ticket_id, 'kind', t.kind, 'detail', t.detail,
				   'resolved_at', t.resolved_at, 'resolved_by', t.resolved_by)
		FROM @extschema@.exception_ticket t JOIN b ON t.binding_id = b.binding_id
		WHERE t.order_key = trace.key
	) AS timeline(at, kind, detail)
	ORDER BY at, CASE kind WHEN 'intent' THEN 0 WHEN 'attempt' THEN 1
						   WHEN 'shipment' THEN 2 WHEN 'tracking' THEN 3 WHEN 'fee' THEN 4 ELSE 5 END,
			 (detail->>'fee_line_id')::bigint, (detail->>'revision')::integer
$$;
COMMENT ON FUNCTION @extschema@.trace(regclass, text) IS
	'The timeline of one order: its intents, every HTTP attempt (status, latency, error), its shipment, its tracking events (at their event time), its fee lines with every revision (at the time each was recorded) and its tickets, in time order.';

-- changes of the fee type maps and currencies are audited (shipsync._audit_row(),
-- in the section of the audit log above, knows their tables)
-- the fee type maps and currencies that shipsync_admin may change
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.fee_type_map
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('fee_type_map', 'profile,code', '{}');
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.currency
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('currency', 'code', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.fee_type_map
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('fee_type_map', '', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.currency
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('currency', '', '{}');

-- like every function of 0.2, the new ones are not for PUBLIC
DO $revoke$
DECLARE
	f regprocedure;
BEGIN
	FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
			  WHERE p.pronamespace = '@extschema@'::regnamespace
				AND p.proname IN ('_begin_statement', '_check_fee_map_row', '_check_fee_options', '_choose_fee_pulls',
					'_decimal_or_null', '_fee_currency', '_fee_line_revise', '_fee_totals',
					'_interval_or_null', '_lock_fees', '_match_parked_fees', '_match_parked_fees_all',
					'_queue_fee_pull', '_quote_total', '_record_quotes', '_settlement',
					'_store_fees', 'import_statement', 'ingest_fees') LOOP
		EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
	END LOOP;
END
$revoke$;
-- fees
GRANT SELECT ON @extschema@.fee_type, @extschema@.fee_type_map, @extschema@.currency,
	@extschema@.statement, @extschema@.fee_line, @extschema@.fee_line_history, @extschema@.fee_sum,
	@extschema@.fee_pull,
	@extschema@.order_fees, @extschema@.settlement, @extschema@.fee_difference TO shipsync_reader;
-- what the views call
GRANT EXECUTE ON FUNCTION @extschema@._decimal_or_null(jsonb), @extschema@._interval_or_null(text),
	@extschema@._settlement() TO shipsync_reader;
GRANT EXECUTE ON FUNCTION @extschema@.ingest_fees(text, text, jsonb),
	@extschema@.import_statement(text, text, text, jsonb) TO shipsync_operator;
GRANT INSERT, UPDATE, DELETE ON @extschema@.fee_type_map, @extschema@.currency TO shipsync_admin;
GRANT EXECUTE ON FUNCTION @extschema@.ingest_fees(text, text, jsonb) TO shipsync_ingest;

-- personal data and the audit log: readers see personal values masked
-- (the functions of the view shipsync.intents run as its reader), the
-- operators whole; field_map's trigger stamps the changes of admins
GRANT EXECUTE ON FUNCTION @extschema@.mask_pii(text, text),
	@extschema@._mask_body(text, text[], text[], jsonb), @extschema@._pii_visible()
	TO shipsync_reader;
GRANT SELECT ON @extschema@.audit_log TO shipsync_operator;
GRANT EXECUTE ON FUNCTION @extschema@._actor() TO shipsync_admin;

-- end of the fees section

------------------------------------------------------------------------------
-- Reconciliation, the ledger's lifecycle, bulk repair (install/65_ledger.sql,
-- install/70_reconcile.sql; columns of 10_queue.sql; functions of 20_api.sql
-- and 30_tracking.sql)
------------------------------------------------------------------------------

-- the digest of the order row a request was rendered from
ALTER TABLE @extschema@.outbox ADD COLUMN content_digest bigint;
ALTER TABLE @extschema@.shipment ADD COLUMN content_digest bigint;
COMMENT ON COLUMN @extschema@.outbox.content_digest IS 'A digest of the order row this request was rendered from, without the binding''s write-back columns (shipsync._row_digest); copied onto the shipment when the request succeeds.';
COMMENT ON COLUMN @extschema@.shipment.content_digest IS
	'The digest of the order row (without its write-back columns) that the last successful create or update was rendered from: reconciliation compares it with the row now (kind address_changed_after_send). NULL for shipments recorded before version 0.2.';
-- the outbox as its readers see it: every column, the digest too
CREATE OR REPLACE VIEW @extschema@.intents AS
SELECT o.id, o.binding_id, o.provider_id, o.order_key, o.op, o.idempotency_key, o.state,
	   o.attempts, o.next_attempt_at, o.lease_until, o.created_at, o.updated_at, o.done_at,
	   o.request_method, o.request_url,
	   CASE WHEN (SELECT @extschema@._pii_visible()) THEN o.request_body
			ELSE @extschema@._mask_body(o.request_body, r.paths, r.kinds, b.options->'pii')
	   END AS request_body,
	   o.request_digest, o.last_status, o.error_class, o.last_error, o.coalesced_into,
	   o.content_digest
FROM @extschema@.outbox o
LEFT JOIN @extschema@._pii_rules r ON r.provider_id = o.provider_id
LEFT JOIN @extschema@.binding b ON b.binding_id = o.binding_id;

-- the ledger: what a ticket is about, its facts, its reopenings
ALTER TABLE @extschema@.exception_ticket
	ADD COLUMN tracking_number text COLLATE "C",
	ADD COLUMN subject text,
	ADD COLUMN facts jsonb,
	ADD COLUMN last_seen_at timestamptz,
	ADD COLUMN reopen_count integer NOT NULL DEFAULT 0,
	ADD COLUMN reopened_at timestamptz,
	ADD COLUMN run_id bigint;
COMMENT ON TABLE @extschema@.exception_ticket IS
	'The exception ledger: one ticket per problem and kind (a dead intent, a failed write-back, a discrepancy found by reconciliation), open, then acknowledged, then resolved, with who and when; seen again after its resolution, it is reopened. Its history is in shipsync.ticket_event.';
COMMENT ON COLUMN @extschema@.exception_ticket.tracking_number IS 'The tracking number the problem is about, when known.';
COMMENT ON COLUMN @extschema@.exception_ticket.subject IS 'What the ticket is about when that is not an order: the carrier''s shipment id (orphan_at_carrier), a tracking number (unmatched_expired, fee_mismatch of a billed waybill no shipment has); for the other fee_mismatch tickets, which row of shipsync.fee_difference (its kind and currency, e.g. amount_mismatch CNY).';
COMMENT ON COLUMN @extschema@.exception_ticket.facts IS 'The facts of a discrepancy found by reconciliation, as JSON (both sides'' values); shown as detail in shipsync.reconciliation.';
COMMENT ON COLUMN @extschema@.exception_ticket.last_seen_at IS 'When the problem was last seen (the last reconciliation pass that found it, the last intent that died of it).';
COMMENT ON COLUMN @extschema@.exception_ticket.reopen_count IS 'How many times the ticket was seen again after it had been resolved.';
COMMENT ON COLUMN @extschema@.exception_ticket.reopened_at IS 'When it was last reopened.';
COMMENT ON COLUMN @extschema@.exception_ticket.run_id IS 'The reconciliation run (shipsync.reconcile_run) that last saw it; NULL for tickets of the dispatcher.';

-- parked events that expired: what they were about
UPDATE @extschema@.exception_ticket t
   SET subject = substring(t.detail from E'unknown tracking number (\\S+) '),
	   tracking_number = substring(t.detail from E'unknown tracking number (\\S+) ')
 WHERE t.kind = 'unmatched_expired';
-- 0.1 opened a ticket per dead intent: keep the newest open one of each
-- problem (kind and order), the older ones are resolved into it
UPDATE @extschema@.exception_ticket t
   SET resolved_at = pg_catalog.now(), resolved_by = SESSION_USER
  FROM (SELECT x.ticket_id, pg_catalog.row_number() OVER (
			   PARTITION BY x.kind, coalesce(x.provider_id, 0), coalesce(x.binding_id, 0),
							coalesce(x.order_key, ''), coalesce(x.subject, '')
			   ORDER BY x.ticket_id DESC) AS r
		  FROM @extschema@.exception_ticket x WHERE x.resolved_at IS NULL) d
 WHERE t.ticket_id = d.ticket_id AND d.r > 1;

CREATE FUNCTION @extschema@._row_digest(r record, skip text[])
RETURNS bigint
AS 'MODULE_PATHNAME', 'shipsync_row_digest'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._row_digest(record, text[]) IS
	'Internal: a 64-bit digest of an order row without the columns named in skip (its write-back columns): computed when a request is rendered, and by reconciliation to tell an order changed after it was sent.';

-- the render statements of existing bindings read the row for its digest too
UPDATE @extschema@.binding b
   SET render_sql = replace(b.render_sql, ' AS is_cancel FROM unnest(',
		pg_catalog.format(' AS is_cancel, t.*::%s AS shipsync_row, %L::pg_catalog.text[] AS shipsync_skip FROM unnest(',
			(SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
			   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			  WHERE c.oid = b.tbl),
			ARRAY(SELECT w.value #>> '{}' FROM pg_catalog.jsonb_each(b.writeback) w ORDER BY 1)))
 WHERE b.render_sql NOT LIKE '%shipsync_row%';

-- ... and no longer print the body, which the dispatcher prints from the
-- row (src/body.c), byte for byte the same
UPDATE @extschema@.binding b
   SET render_sql = pg_catalog.regexp_replace(b.render_sql,
		E' pg_catalog\\.json_build_object\\(''order_ref'', shipsync_u\\.shipsync_key, ''order'', '
		'pg_catalog\\.row_to_json\\(t\\)\\)::(pg_catalog\\.)?text AS body,', '')
 WHERE b.render_sql LIKE '%AS body,%';

-- retry() and requeue() with filters
DROP FUNCTION @extschema@.requeue(text, text);
CREATE FUNCTION @extschema@._requeue(action text, provider text, states text[],
									 error_class text, since timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
	pid integer;
	st text;
BEGIN
	FOREACH st IN ARRAY coalesce(states, ARRAY[NULL::text]) LOOP
		IF st IS NULL OR st OPERATOR(pg_catalog.<>) ALL (ARRAY['dead', 'invalid', 'retrying']) THEN
			RAISE EXCEPTION 'cannot requeue intents in state "%"', coalesce(st, '')
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Requeue dead, invalid or retrying intents.';
		END IF;
	END LOOP;
	IF provider IS NOT NULL THEN
		SELECT p.provider_id INTO pid FROM @extschema@.provider p
		 WHERE p.name OPERATOR(pg_catalog.=) _requeue.provider;
		IF pid IS NULL THEN
			RAISE EXCEPTION 'provider "%" does not exist', provider
				USING ERRCODE = 'undefined_object',
					  HINT = 'See SELECT name FROM shipsync.providers.';
		END IF;
	END IF;
	IF since OPERATOR(pg_catalog.>) pg_catalog.now() THEN
		RAISE EXCEPTION 'since is in the future'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give the time from which the intents to send again stopped.';
	END IF;
	WITH q AS (
		UPDATE @extschema@.outbox o
		   SET state = CASE WHEN o.attempts OPERATOR(pg_catalog.=) 0 THEN 'pending' ELSE 'retrying' END,
			   attempts = 0, next_attempt_at = pg_catalog.now(), done_at = NULL,
			   updated_at = pg_catalog.now()
		 WHERE o.state OPERATOR(pg_catalog.=) ANY (states)
		   AND (pid IS NULL OR o.provider_id OPERATOR(pg_catalog.=) pid)
		   AND (_requeue.error_class IS NULL OR o.error_class OPERATOR(pg_catalog.=) _requeue.error_class)
		   AND (since IS NULL OR o.updated_at OPERATOR(pg_catalog.>=) since)
		RETURNING o.id),
	t AS (
		UPDATE @extschema@.exception_ticket t
		   SET resolved_at = pg_catalog.now(), resolved_by = SESSION_USER
		  FROM q WHERE t.outbox_id OPERATOR(pg_catalog.=) q.id AND t.resolved_at IS NULL)
	SELECT pg_catalog.count(*) INTO n FROM q;
	PERFORM @extschema@._audit(action, 'provider', coalesce(_requeue.provider, '*'),
		pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
			'state', CASE WHEN pg_catalog.cardinality(states) OPERATOR(pg_catalog.=) 1
						  THEN pg_catalog.to_jsonb(states[1]) ELSE pg_catalog.to_jsonb(states) END,
			'error_class', _requeue.error_class, 'since', since)),
		pg_catalog.jsonb_build_object('requeued', n));
	PERFORM @extschema@._wake(false);
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._requeue(text, text, text[], text, timestamptz) IS
	'Internal: sends again the intents in the given states matching the filters, and audits it as the action given; shipsync.requeue() and shipsync.retry() with filters call it.';

CREATE FUNCTION @extschema@.requeue(provider text DEFAULT NULL, state text DEFAULT 'dead',
									error_class text DEFAULT NULL, since timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@._requeue('requeue', $1, ARRAY[$2], $3, $4) $$;
COMMENT ON FUNCTION @extschema@.requeue(text, text, text, timestamptz) IS
	'Send again every intent of a provider (or all providers) in the given state (default dead), of the given error class (error_class, e.g. http_5xx) and stopped since the given time (since), all optional. Returns how many were requeued.';

CREATE FUNCTION @extschema@.retry(provider text, state text DEFAULT NULL,
								  error_class text DEFAULT NULL, since timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT @extschema@._requeue('retry', $1, CASE WHEN $2 IS NULL THEN ARRAY['dead', 'invalid', 'retrying']
												   ELSE ARRAY[$2] END, $3, $4)
$$;
COMMENT ON FUNCTION @extschema@.retry(text, text, text, timestamptz) IS
	'Send again now, attempts reset, the intents of a provider (NULL: all providers) that are dead, invalid or retrying (or only those in state), of the given error class and stopped since the given time, all optional. Returns how many.';

-- one unmatched_expired ticket per tracking number
CREATE OR REPLACE FUNCTION @extschema@._expire_unmatched(pid integer)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	WITH d AS (
		DELETE FROM @extschema@.unmatched_event u
		 WHERE u.expires_at <= now() AND (pid IS NULL OR u.provider_id = pid)
		RETURNING u.*),
	-- one ticket per tracking number (the ledger folds events of the same one)
	t AS (
		INSERT INTO @extschema@.exception_ticket (kind, provider_id, subject, tracking_number, detail)
		SELECT 'unmatched_expired', d.provider_id, d.tracking_number, d.tracking_number,
			   format('tracking event %s of provider %s for unknown tracking number %s (raw status %s) found no shipment within unmatched_ttl_s = %s',
					  d.event_key, p.name, d.tracking_number, coalesce(d.raw_status, 'none'),
					  coalesce(p.options->>'unmatched_ttl_s', '604800'))
		FROM d JOIN @extschema@.provider p ON p.provider_id = d.provider_id
		RETURNING 1)
	SELECT count(*) INTO n FROM d;
	RETURN n;
END
$$;

COMMENT ON FUNCTION @extschema@.expire_unmatched() IS
	'Drop the parked tracking events whose time is up (provider option unmatched_ttl_s), opening one exception ticket of kind unmatched_expired per tracking number; returns how many events were dropped. ingest_tracking() does this for its provider at every call.';

-- install/65_ledger.sql
------------------------------------------------------------------------------
-- One ticket per problem
--
-- A problem is a kind and what it is about: an order (provider, binding,
-- order key) or, for problems without an order, a subject (a carrier's
-- shipment id, a tracking number).  At most one ticket per problem is open;
-- a problem seen again after its ticket was resolved reopens that ticket.
-- The dispatcher and the SQL functions simply INSERT a ticket: the trigger
-- _ticket_fold turns that into a refresh of the open ticket, or a reopen.
-- Reconciliation (70_reconcile.sql) merges its findings set-based itself.
------------------------------------------------------------------------------

CREATE UNIQUE INDEX exception_ticket_open_key ON @extschema@.exception_ticket
	(kind, (coalesce(provider_id, 0)), (coalesce(binding_id, 0)),
	 (coalesce(order_key, '')), (coalesce(subject, '')))
	WHERE resolved_at IS NULL;
CREATE INDEX exception_ticket_problem_idx ON @extschema@.exception_ticket
	(kind, (coalesce(provider_id, 0)), (coalesce(binding_id, 0)),
	 (coalesce(order_key, '')), (coalesce(subject, '')), ticket_id);

CREATE FUNCTION @extschema@._ticket_fold()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t record;
BEGIN
	-- one writer per problem at a time, so that two transactions cannot
	-- both find no open ticket and both open one
	PERFORM pg_advisory_xact_lock(hashtextextended(concat_ws('|', 'shipsync ticket', NEW.kind,
		NEW.provider_id, NEW.binding_id, NEW.order_key, NEW.subject), 0));
	SELECT x.ticket_id, x.resolved_at INTO t
	  FROM @extschema@.exception_ticket x
	 WHERE x.kind OPERATOR(pg_catalog.=) NEW.kind
	   AND coalesce(x.provider_id, 0) OPERATOR(pg_catalog.=) coalesce(NEW.provider_id, 0)
	   AND coalesce(x.binding_id, 0) OPERATOR(pg_catalog.=) coalesce(NEW.binding_id, 0)
	   AND coalesce(x.order_key, '') OPERATOR(pg_catalog.=) coalesce(NEW.order_key, '')
	   AND coalesce(x.subject, '') OPERATOR(pg_catalog.=) coalesce(NEW.subject, '')
	 ORDER BY x.resolved_at IS NULL DESC, x.ticket_id DESC
	 LIMIT 1;
	IF NOT FOUND THEN
		NEW.last_seen_at := coalesce(NEW.last_seen_at, NEW.opened_at);
		RETURN NEW;
	END IF;
	UPDATE @extschema@.exception_ticket x
	   SET detail = NEW.detail,
		   outbox_id = coalesce(NEW.outbox_id, x.outbox_id),
		   tracking_number = coalesce(NEW.tracking_number, x.tracking_number),
		   facts = coalesce(NEW.facts, x.facts),
		   last_seen_at = pg_catalog.now(),
		   resolved_at = NULL,
		   resolved_by = NULL,
		   resolution = NULL,
		   acknowledged_at = CASE WHEN t.resolved_at IS NULL THEN x.acknowledged_at END,
		   acknowledged_by = CASE WHEN t.resolved_at IS NULL THEN x.acknowledged_by END,
		   acknowledgement = CASE WHEN t.resolved_at IS NULL THEN x.acknowledgement END,
		   reopen_count = x.reopen_count OPERATOR(pg_catalog.+)
			   CASE WHEN t.resolved_at IS NULL THEN 0 ELSE 1 END,
		   reopened_at = CASE WHEN t.resolved_at IS NULL THEN x.reopened_at ELSE pg_catalog.now() END
	 WHERE x.ticket_id OPERATOR(pg_catalog.=) t.ticket_id;
	IF t.resolved_at IS NOT NULL THEN
		PERFORM pg_catalog.pg_notify('shipsync', pg_catalog.json_build_object('event', 'ticket_reopened',
			'ticket_id', t.ticket_id, 'kind', NEW.kind, 'binding_id', NEW.binding_id,
			'order_key', NEW.order_key)::text);
	END IF;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._ticket_fold() IS
	'Internal: a ticket inserted for a problem that already has one refreshes the open ticket, or reopens the last resolved one (reopen_count + 1), instead of adding a second.';
CREATE TRIGGER exception_ticket_fold BEFORE INSERT ON @extschema@.exception_ticket
	FOR EACH ROW WHEN (NEW.run_id IS NULL)
	EXECUTE FUNCTION @extschema@._ticket_fold();

------------------------------------------------------------------------------
-- History: every step of every ticket, with who and when
------------------------------------------------------------------------------

CREATE TABLE @extschema@.ticket_event (
	ticket_id		bigint NOT NULL,
	at				timestamptz NOT NULL DEFAULT pg_catalog.now(),
	event			text NOT NULL,
	actor			name,
	note			text
);
CREATE INDEX ticket_event_ticket_idx ON @extschema@.ticket_event (ticket_id, at);
CREATE INDEX ticket_event_at_idx ON @extschema@.ticket_event USING brin (at);
COMMENT ON TABLE @extschema@.ticket_event IS
	'The history of the exception ledger: one row per step of a ticket (opened, acknowledged, resolved, reopened), with when, who (a user''s session user, or the extension''s own worker: dispatcher, reconcile) and the note given. Written by triggers on shipsync.exception_ticket; the daily summaries are computed from it.';
COMMENT ON COLUMN @extschema@.ticket_event.event IS 'opened, acknowledged, resolved or reopened.';
COMMENT ON COLUMN @extschema@.ticket_event.actor IS 'Who took the step: a session user, or dispatcher or reconcile for the extension''s workers.';

-- Who took a step is shipsync._actor() (80_security.sql): the session
-- user, or the extension's worker (dispatcher, reconcile).  The notes are
-- those given to ack() and resolve(), or reconciliation's.

CREATE FUNCTION @extschema@._ticket_opened()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO @extschema@.ticket_event (ticket_id, at, event, actor)
	SELECT n.ticket_id, n.opened_at, 'opened', @extschema@._actor() FROM new_tickets n;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._ticket_opened() IS
	'Internal: records the opening of new tickets in shipsync.ticket_event (as the extension''s owner: whoever may change a ticket cannot write its history).';
CREATE TRIGGER exception_ticket_opened AFTER INSERT ON @extschema@.exception_ticket
	REFERENCING NEW TABLE AS new_tickets
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._ticket_opened();

CREATE FUNCTION @extschema@._ticket_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO @extschema@.ticket_event (ticket_id, at, event, actor, note)
	SELECT n.ticket_id, e.at, e.event, coalesce(e.actor, @extschema@._actor()), e.note
	FROM old_tickets o
	JOIN new_tickets n ON n.ticket_id OPERATOR(pg_catalog.=) o.ticket_id
	CROSS JOIN LATERAL (VALUES
		('reopened', o.resolved_at IS NOT NULL AND n.resolved_at IS NULL,
		 coalesce(n.reopened_at, pg_catalog.now()), NULL::name, NULL::text),
		('acknowledged', o.acknowledged_at IS NULL AND n.acknowledged_at IS NOT NULL,
		 n.acknowledged_at, n.acknowledged_by, n.acknowledgement),
		('resolved', o.resolved_at IS NULL AND n.resolved_at IS NOT NULL,
		 n.resolved_at, n.resolved_by, n.resolution)
	) AS e(event, happened, at, actor, note)
	WHERE e.happened;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._ticket_changed() IS
	'Internal: records acknowledgements, resolutions and reopenings of tickets in shipsync.ticket_event.';
CREATE TRIGGER exception_ticket_changed AFTER UPDATE ON @extschema@.exception_ticket
	REFERENCING OLD TABLE AS old_tickets NEW TABLE AS new_tickets
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._ticket_changed();

------------------------------------------------------------------------------
-- Views
------------------------------------------------------------------------------

CREATE VIEW @extschema@.open_tickets AS
SELECT t.ticket_id,
	   t.kind,
	   CASE WHEN t.acknowledged_at IS NULL THEN 'open' ELSE 'acknowledged' END AS state,
	   pg_catalog.now() OPERATOR(pg_catalog.-) coalesce(t.reopened_at, t.opened_at) AS age,
	   p.name AS provider,
	   b.tbl AS "table",
	   t.order_key,
	   t.tracking_number,
	   t.subject,
	   t.opened_at,
	   t.reopen_count,
	   t.last_seen_at,
	   t.acknowledged_by,
	   (SELECT e.note FROM @extschema@.ticket_event e
		 WHERE e.ticket_id OPERATOR(pg_catalog.=) t.ticket_id AND e.note IS NOT NULL
		 ORDER BY e.at DESC LIMIT 1) AS last_note,
	   t.detail
FROM @extschema@.exception_ticket t
LEFT JOIN @extschema@.provider p ON p.provider_id OPERATOR(pg_catalog.=) t.provider_id
LEFT JOIN @extschema@.binding b ON b.binding_id OPERATOR(pg_catalog.=) t.binding_id
WHERE t.resolved_at IS NULL;
COMMENT ON VIEW @extschema@.open_tickets IS
	'Every ticket not resolved, open or acknowledged: its kind, how long since it was (re)opened, the order and provider it is about, and the last note given.';
COMMENT ON COLUMN @extschema@.open_tickets.ticket_id IS 'The ticket, for shipsync.ack() and shipsync.resolve().';
COMMENT ON COLUMN @extschema@.open_tickets.kind IS 'What went wrong: dead_intent, invalid_order, writeback_failed, order_held, auth_failed, unmatched_expired, or a reconciliation kind (see shipsync.reconciliation).';
COMMENT ON COLUMN @extschema@.open_tickets.state IS 'open, or acknowledged (someone is on it).';
COMMENT ON COLUMN @extschema@.open_tickets.age IS 'Time since the ticket was opened, or last reopened.';
COMMENT ON COLUMN @extschema@.open_tickets.provider IS 'The provider it is about.';
COMMENT ON COLUMN @extschema@.open_tickets."table" IS 'The attached table of the order, when it is about an order.';
COMMENT ON COLUMN @extschema@.open_tickets.order_key IS 'The order''s key, as text, when it is about an order.';
COMMENT ON COLUMN @extschema@.open_tickets.tracking_number IS 'The tracking number it is about, when known.';
COMMENT ON COLUMN @extschema@.open_tickets.subject IS 'What it is about when that is not an order: the carrier''s shipment id or a tracking number.';
COMMENT ON COLUMN @extschema@.open_tickets.opened_at IS 'When the ticket was first opened.';
COMMENT ON COLUMN @extschema@.open_tickets.reopen_count IS 'How many times it came back after being resolved.';
COMMENT ON COLUMN @extschema@.open_tickets.last_seen_at IS 'When the problem was last seen.';
COMMENT ON COLUMN @extschema@.open_tickets.acknowledged_by IS 'Who acknowledged it, if anyone.';
COMMENT ON COLUMN @extschema@.open_tickets.last_note IS 'The last note given with shipsync.ack() or shipsync.resolve().';
COMMENT ON COLUMN @extschema@.open_tickets.detail IS 'What happened, in words.';

CREATE VIEW @extschema@.ticket_summary AS
WITH ev AS (
	SELECT e.at, e.event, t.kind, t.provider_id,
		   CASE WHEN e.event OPERATOR(pg_catalog.=) 'resolved' THEN
			   e.at OPERATOR(pg_catalog.-) (SELECT pg_catalog.max(o.at) FROM @extschema@.ticket_event o
				   WHERE o.ticket_id OPERATOR(pg_catalog.=) e.ticket_id
					 AND o.event IN ('opened', 'reopened') AND o.at OPERATOR(pg_catalog.<=) e.at)
		   END AS took
	FROM @extschema@.ticket_event e
	JOIN @extschema@.exception_ticket t ON t.ticket_id OPERATOR(pg_catalog.=) e.ticket_id
)
SELECT ev.at::date AS day,
	   ev.kind,
	   p.name AS provider,
	   pg_catalog.count(*) FILTER (WHERE ev.event IN ('opened', 'reopened')) AS opened,
	   pg_catalog.count(*) FILTER (WHERE ev.event OPERATOR(pg_catalog.=) 'resolved') AS resolved,
	   pg_catalog.percentile_disc(0.5) WITHIN GROUP (ORDER BY ev.took)
		   FILTER (WHERE ev.took IS NOT NULL) AS median_time_to_resolve
FROM ev
LEFT JOIN @extschema@.provider p ON p.provider_id OPERATOR(pg_catalog.=) ev.provider_id
GROUP BY 1, 2, 3;
COMMENT ON VIEW @extschema@.ticket_summary IS
	'Per day (in the session''s time zone), kind and provider: tickets opened (or reopened), tickets resolved, and the median time those took to be resolved since they were (re)opened.';
COMMENT ON COLUMN @extschema@.ticket_summary.day IS 'The day, in the session''s time zone.';
COMMENT ON COLUMN @extschema@.ticket_summary.kind IS 'The kind of ticket.';
COMMENT ON COLUMN @extschema@.ticket_summary.provider IS 'The provider.';
COMMENT ON COLUMN @extschema@.ticket_summary.opened IS 'Tickets opened or reopened that day.';
COMMENT ON COLUMN @extschema@.ticket_summary.resolved IS 'Tickets resolved that day, by a person or by the extension.';
COMMENT ON COLUMN @extschema@.ticket_summary.median_time_to_resolve IS 'The median, over the tickets resolved that day, of the time from their (re)opening to their resolution.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.ticket_event', '');

-- install/70_reconcile.sql
------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------

CREATE TABLE @extschema@.reconcile_run (
	run_id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider_id		integer,
	kind			text NOT NULL,
	trigger			text NOT NULL,
	window_start	timestamptz NOT NULL,
	window_end		timestamptz,
	state			text NOT NULL DEFAULT 'pending',
	pages			integer NOT NULL DEFAULT 0,
	shipments_seen	bigint NOT NULL DEFAULT 0,
	opened			integer NOT NULL DEFAULT 0,
	closed			integer NOT NULL DEFAULT 0,
	reopened		integer NOT NULL DEFAULT 0,
	pulls			jsonb NOT NULL DEFAULT '{}',
	requested_by	name NOT NULL DEFAULT SESSION_USER,
	started_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	finished_at		timestamptz,
	error			text
);
CREATE INDEX reconcile_run_active_idx ON @extschema@.reconcile_run (run_id)
	WHERE state IN ('pending', 'pulling', 'comparing');
CREATE INDEX reconcile_run_started_idx ON @extschema@.reconcile_run (trigger, started_at);
COMMENT ON TABLE @extschema@.reconcile_run IS
	'One row per reconciliation run: a full run pulls the carriers'' shipments updated in its window and compares both sides; a crm run (every shipsync.reconcile_interval) compares the CRM side only.';
COMMENT ON COLUMN @extschema@.reconcile_run.provider_id IS 'The provider reconciled; NULL: every attached, unpaused provider.';
COMMENT ON COLUMN @extschema@.reconcile_run.kind IS 'full (pull the carrier''s side, then compare everything) or crm (no pull: the CRM side only).';
COMMENT ON COLUMN @extschema@.reconcile_run.trigger IS 'manual (shipsync.reconcile()), daily (shipsync.reconcile_at) or interval (shipsync.reconcile_interval).';
COMMENT ON COLUMN @extschema@.reconcile_run.window_start IS 'The carriers are asked for the shipments updated since then.';
COMMENT ON COLUMN @extschema@.reconcile_run.window_end IS 'When the pull started: shipments recorded later are left to the next run.';
COMMENT ON COLUMN @extschema@.reconcile_run.state IS 'pending, pulling, comparing, done or failed.';
COMMENT ON COLUMN @extschema@.reconcile_run.pages IS 'Requests made to the carriers: pages of a list, or lookups of single orders (sf_express).';
COMMENT ON COLUMN @extschema@.reconcile_run.shipments_seen IS 'Carrier shipments received into shipsync.carrier_snapshot.';
COMMENT ON COLUMN @extschema@.reconcile_run.opened IS 'Tickets this run opened.';
COMMENT ON COLUMN @extschema@.reconcile_run.closed IS 'Tickets this run resolved because it no longer saw their problem.';
COMMENT ON COLUMN @extschema@.reconcile_run.reopened IS 'Resolved tickets this run reopened because it saw their problem again.';
COMMENT ON COLUMN @extschema@.reconcile_run.pulls IS 'Per provider: how it was pulled (list, search or none), its state, pages, rows and error.';
COMMENT ON COLUMN @extschema@.reconcile_run.requested_by IS 'Who started it: a session user, or reconcile for the schedules.';
COMMENT ON COLUMN @extschema@.reconcile_run.error IS 'Why it failed, or which provider''s pull failed.';

CREATE TABLE @extschema@.carrier_snapshot (
	run_id			bigint NOT NULL,
	provider_id		integer NOT NULL,
	shipment_id		text NOT NULL,
	order_ref		text COLLATE "C",
	tracking_number text COLLATE "C",
	status			text,
	canonical		text,
	canonical_rank	integer,
	updated_at		timestamptz,
	fees			jsonb,
	PRIMARY KEY (run_id, provider_id, shipment_id)
);
COMMENT ON TABLE @extschema@.carrier_snapshot IS
	'The carriers'' own shipments as pulled by a reconciliation run (generic: GET /shipments?updated_since=; sf_express: one EXP_RECE_SEARCH_ORDER_RESP per order). Only the last complete run of each provider is kept.';
COMMENT ON COLUMN @extschema@.carrier_snapshot.shipment_id IS 'The carrier''s id of the shipment (sf_express: the orderId).';
COMMENT ON COLUMN @extschema@.carrier_snapshot.order_ref IS 'The order the carrier says it is for.';
COMMENT ON COLUMN @extschema@.carrier_snapshot.status IS 'The status as the carrier says it; canonical and canonical_rank: mapped through shipsync.status_map.';

-- Where the CRM-side pass of each binding stands.  A pass reads the orders
-- changed since the last one (their xmin), not every order.
CREATE TABLE @extschema@.reconcile_state (
	binding_id		integer PRIMARY KEY,
	horizon			xid8,
	full_at			timestamptz,
	pass_at			timestamptz,
	stuck_at		timestamptz
);
COMMENT ON TABLE @extschema@.reconcile_state IS
	'Per binding: from which transaction on order rows must be compared again (every transaction older than horizon had ended when the last pass read the table), and when the last full pass, the last pass and the last look for stuck shipments and fee differences (stuck_at: hourly, thresholds are days and bills monthly) ran.';

-- Orders seen without a shipment, until they have one.
CREATE TABLE @extschema@.reconcile_seen (
	binding_id		integer NOT NULL,
	order_key		text COLLATE "C" NOT NULL,
	first_seen_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (binding_id, order_key)
);
COMMENT ON TABLE @extschema@.reconcile_seen IS
	'Orders a reconciliation pass found without a shipment, until they have one: compared again at every pass, and their age when neither the binding''s created_at_column nor commit timestamps tell it.';

CREATE TABLE @extschema@.stuck_after (
	status			text NOT NULL REFERENCES @extschema@.canonical_status (name),
	after			interval NOT NULL CHECK (after > interval '0'),
	builtin			boolean NOT NULL DEFAULT false,
	PRIMARY KEY (status, builtin)
);
COMMENT ON TABLE @extschema@.stuck_after IS
	'A shipment in this canonical status with no tracking event for longer than after is stuck. A row of your own (builtin false) overrides the built-in one of its status; statuses without a row are never stuck.';
COMMENT ON COLUMN @extschema@.stuck_after.builtin IS
	'Seeded by the extension (not dumped by pg_dump, read-only): insert a row of your own to change the threshold of a status.';
INSERT INTO @extschema@.stuck_after (status, after, builtin) VALUES
	('pending', '2 days', true),
	('pre_transit', '2 days', true),
	('in_transit', '5 days', true),
	('out_for_delivery', '1 day', true),
	('available_for_pickup', '5 days', true),
	('delivery_failed', '2 days', true),
	('exception', '2 days', true),
	('returning', '10 days', true);

CREATE FUNCTION @extschema@._stuck_after_check()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.builtin THEN
		RAISE EXCEPTION 'the built-in threshold of status "%" is read-only', OLD.status
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'Built-in rows come with the extension and are created again on restore.',
				  HINT = format('Insert a row of your own, which overrides it: INSERT INTO shipsync.stuck_after (status, after) VALUES (%L, ''3 days'').', OLD.status);
	END IF;
	IF TG_OP = 'DELETE' THEN
		RETURN OLD;
	END IF;
	NEW.builtin := false;
	RETURN NEW;
END
$$;
CREATE TRIGGER stuck_after_check BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.stuck_after
	FOR EACH ROW EXECUTE FUNCTION @extschema@._stuck_after_check();

-- Intents that stopped (dead, invalid) or had nothing to send, per order:
-- why an order without a shipment has none.
CREATE INDEX outbox_stopped_idx ON @extschema@.outbox (binding_id, order_key, id)
	WHERE state IN ('dead', 'invalid') OR error_class = 'nothing_to_send';

------------------------------------------------------------------------------
-- The kinds
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._reconcile_kinds()
RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT ARRAY['not_sent', 'missing_at_carrier', 'orphan_at_carrier', 'duplicate_at_carrier',
				 'tracking_mismatch', 'status_mismatch', 'address_changed_after_send',
				 'fee_mismatch', 'stuck']
$$;
COMMENT ON FUNCTION @extschema@._reconcile_kinds() IS
	'Internal: the kinds of discrepancy reconciliation finds.';

-- The attach options of reconciliation: grace, created_at_column.
CREATE FUNCTION @extschema@._check_reconcile_options(opts jsonb, tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	g interval;
	coltype regtype;
BEGIN
	IF opts ? 'grace' THEN
		BEGIN
			IF jsonb_typeof(opts->'grace') <> 'string' THEN
				RAISE invalid_text_representation;
			END IF;
			g := (opts->>'grace')::interval;
		EXCEPTION WHEN invalid_text_representation OR invalid_datetime_format
				   OR datetime_field_overflow OR interval_field_overflow THEN
			RAISE EXCEPTION 'option "grace" must be an interval'
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('The value given is %s.', opts->'grace'),
					  HINT = 'For example "10 minutes": how long an order may wait for its shipment before it is not_sent.';
		END;
		IF g < interval '0' THEN
			RAISE EXCEPTION 'option "grace" must not be negative'
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('The value given is %s.', opts->>'grace'),
					  HINT = 'For example "10 minutes".';
		END IF;
	END IF;
	IF opts ? 'created_at_column' THEN
		SELECT a.atttypid::regtype INTO coltype FROM pg_attribute a
		 WHERE a.attrelid = tbl AND a.attname = opts->>'created_at_column'
		   AND a.attnum > 0 AND NOT a.attisdropped;
		IF jsonb_typeof(opts->'created_at_column') <> 'string' OR coltype IS NULL THEN
			RAISE EXCEPTION 'option "created_at_column" must name a column of table %', tbl
				USING ERRCODE = 'undefined_column',
					  DETAIL = format('The value given is %s.', opts->'created_at_column'),
					  HINT = 'Name the column that holds when the order was created.';
		END IF;
		IF coltype NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) THEN
			RAISE EXCEPTION 'column "%" of table % has type %, not a time', opts->>'created_at_column', tbl, coltype
				USING ERRCODE = 'datatype_mismatch',
					  HINT = 'created_at_column must be of type timestamptz, timestamp or date.';
		END IF;
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._check_reconcile_options(jsonb, regclass) IS
	'Internal: checks the attach options grace and created_at_column.';

------------------------------------------------------------------------------
-- The pull (called by the dispatcher, src/reconcile.c)
------------------------------------------------------------------------------

/*
 * The schedule, asked by the dispatcher when something may be due: with
 * crm, a CRM-side pass (unless one is running); the daily full run of every
 * attached, unpaused provider once a day from at_minute (local time, -1:
 * never), unless a full run of all providers is still going on.  The very
 * first daily run waits for its time; a day missed later (the server was
 * down at that time) is caught up once.  Returns when the next daily run is
 * due.
 */
CREATE FUNCTION @extschema@._reconcile_schedule(at_minute integer, crm boolean)
RETURNS timestamptz
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	today timestamptz;
	last_daily timestamptz;
BEGIN
	PERFORM pg_advisory_xact_lock(hashtext('shipsync reconcile'));
	IF crm AND EXISTS (SELECT 1 FROM @extschema@.binding b WHERE b.active)
	   AND NOT EXISTS (SELECT 1 FROM @extschema@.reconcile_run x
					    WHERE x.kind = 'crm' AND x.state IN ('pending', 'pulling', 'comparing')) THEN
		INSERT INTO @extschema@.reconcile_run (kind, trigger, window_start, requested_by)
		VALUES ('crm', 'interval', now(), 'reconcile');
	END IF;
	IF at_minute IS NULL OR at_minute < 0 THEN
		RETURN NULL;
	END IF;
	today := date_trunc('day', now()) + make_interval(mins => at_minute);
	IF now() < today THEN
		RETURN today;
	END IF;
	SELECT max(x.started_at) INTO last_daily FROM @extschema@.reconcile_run x
	 WHERE x.trigger = 'daily';
	-- the very first daily run starts within the hour after its time (not
	-- at once when the extension is installed at noon); a day missed later
	-- (the server was down) is caught up once
	IF (last_daily IS NULL AND now() < today + interval '1 hour') OR last_daily < today THEN
		IF EXISTS (SELECT 1 FROM @extschema@.reconcile_run x
					WHERE x.kind = 'full' AND x.provider_id IS NULL
					  AND x.state IN ('pending', 'pulling', 'comparing')) THEN
			RETURN now() + interval '1 minute';
		END IF;
		IF EXISTS (SELECT 1 FROM @extschema@.binding b
					 JOIN @extschema@.provider p ON p.provider_id = b.provider_id
					WHERE b.active AND NOT p.paused) THEN
			INSERT INTO @extschema@.reconcile_run (kind, trigger, window_start, requested_by)
			VALUES ('full', 'daily', now() - interval '2 days', 'reconcile');
		END IF;
	END IF;
	RETURN today + interval '1 day';
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_schedule(integer, boolean) IS
	'Internal: the dispatcher starts the reconciliation runs that are due (a CRM-side pass with crm; the daily run from at_minute of the day); returns when the next daily run is due.';

/*
 * Start a pending run: its window ends now, and the providers it pulls are
 * chosen (the run's provider, or every unpaused provider with an attached
 * table): generic ones by their list, sf_express ones order by order,
 * others not at all (CRM side only).  Returns the providers to pull; none
 * for a crm run or when nothing is to be pulled, which then waits for its
 * comparison.
 */
CREATE FUNCTION @extschema@._reconcile_start(run bigint)
RETURNS TABLE (provider_id integer, mode text, since timestamptz, until timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	chosen jsonb;
BEGIN
	SELECT x.* INTO r FROM @extschema@.reconcile_run x
	 WHERE x.run_id = run AND x.state = 'pending' FOR UPDATE;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	IF r.kind = 'crm' THEN
		UPDATE @extschema@.reconcile_run x SET state = 'comparing', window_end = now()
		 WHERE x.run_id = run;
		RETURN;
	END IF;
	SELECT coalesce(jsonb_object_agg(p.provider_id::text, jsonb_build_object(
			   'provider', p.name, 'mode', m.mode,
			   'state', CASE WHEN m.mode = 'none' THEN 'skipped' ELSE 'pulling' END,
			   'pages', 0, 'rows', 0)), '{}')
	  INTO chosen
	  FROM @extschema@.provider p
	 CROSS JOIN LATERAL (SELECT CASE p.dialect WHEN 'generic' THEN 'list'
							WHEN 'sf_express' THEN 'search' ELSE 'none' END AS mode) m
	 WHERE p.dialect NOT IN ('easypost', 'aftership', 'kuaidi100')
	   AND (p.provider_id = r.provider_id
			OR (r.provider_id IS NULL AND NOT p.paused
				AND EXISTS (SELECT 1 FROM @extschema@.binding b
							 WHERE b.provider_id = p.provider_id AND b.active)));
	UPDATE @extschema@.reconcile_run x
	   SET state = CASE WHEN EXISTS (SELECT 1 FROM jsonb_each(chosen) c
									  WHERE c.value->>'state' = 'pulling')
						THEN 'pulling' ELSE 'comparing' END,
		   window_end = now(), pulls = chosen
	 WHERE x.run_id = run;
	RETURN QUERY
	SELECT c.key::integer, c.value->>'mode', r.window_start, now()
	  FROM jsonb_each(chosen) c
	 WHERE c.value->>'state' = 'pulling'
	 ORDER BY 1;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_start(bigint) IS
	'Internal: the dispatcher starts a pending reconciliation run; returns the providers to pull.';

/*
 * One page of a provider's list (or a batch of lookups) into the snapshot,
 * its raw statuses mapped through status_map as tracking events are.  With
 * done, the provider's pull is complete; when no provider of the run is
 * still pulling, the run waits for its comparison.  Returns the run's state
 * (nothing: the run is no longer pulling).
 */
CREATE FUNCTION @extschema@._reconcile_page(run bigint, pid integer, requests integer,
	ids text[], refs text[], tns text[], statuses text[], updated text[],
	fees text[], done boolean)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	prof text;
	n bigint;
	p jsonb;
BEGIN
	SELECT coalesce(x.options->>'profile', x.dialect) INTO prof
	  FROM @extschema@.provider x WHERE x.provider_id = pid;
	-- (each raw status is mapped once, not once per shipment; a shipment
	-- listed twice keeps its first row)
	WITH u AS (
		SELECT u.* FROM unnest(ids, refs, tns, statuses, updated, fees) AS u(id, ref, tn, st, at, fees)
		 WHERE u.id IS NOT NULL),
	m AS (
		SELECT d.st, cs.name, cs.rank
		  FROM (SELECT DISTINCT u.st FROM u WHERE u.st IS NOT NULL) d
		  LEFT JOIN LATERAL (
			  SELECT sm.status FROM @extschema@.status_map sm
			   WHERE sm.profile = prof AND sm.raw_status = d.st AND sm.pattern IS NULL
			   ORDER BY sm.priority DESC LIMIT 1) x ON true
		  LEFT JOIN @extschema@.canonical_status cs
			ON cs.name = coalesce(x.status, CASE WHEN prof = 'generic' THEN lower(d.st) END)),
	ins AS (
		INSERT INTO @extschema@.carrier_snapshot AS c (run_id, provider_id, shipment_id, order_ref,
			tracking_number, status, canonical, canonical_rank, updated_at, fees)
		SELECT run, pid, u.id, u.ref, u.tn, u.st,
			   CASE WHEN u.st IS NOT NULL THEN coalesce(m.name, 'unknown') END,
			   CASE WHEN u.st IS NOT NULL THEN coalesce(m.rank, -1) END,
			   u.at::timestamptz, u.fees::jsonb
		  FROM u LEFT JOIN m ON m.st = u.st
		ON CONFLICT (run_id, provider_id, shipment_id) DO NOTHING
		RETURNING 1)
	SELECT count(*) INTO n FROM ins;

	UPDATE @extschema@.reconcile_run x
	   SET pages = x.pages + requests,
		   shipments_seen = x.shipments_seen + n,
		   pulls = jsonb_set(x.pulls, ARRAY[pid::text], (x.pulls->(pid::text)) || jsonb_build_object(
			   'pages', coalesce((x.pulls->(pid::text)->>'pages')::integer, 0) + requests,
			   'rows', coalesce((x.pulls->(pid::text)->>'rows')::bigint, 0) + n,
			   'state', CASE WHEN done THEN 'done' ELSE 'pulling' END))
	 WHERE x.run_id = run AND x.state = 'pulling' AND x.pulls ? (pid::text)
	RETURNING x.pulls INTO p;
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	RETURN @extschema@._reconcile_pulled(run, p);
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_page(bigint, integer, integer, text[], text[], text[], text[], text[], text[], boolean) IS
	'Internal: the dispatcher stores a page of a carrier''s shipments into shipsync.carrier_snapshot.';

-- A provider's pull failed: the run compares the others, and fails.
CREATE FUNCTION @extschema@._reconcile_pull_failed(run bigint, pid integer, requests integer, err text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p jsonb;
BEGIN
	UPDATE @extschema@.reconcile_run x
	   SET pages = x.pages + requests,
		   pulls = jsonb_set(x.pulls, ARRAY[pid::text], (x.pulls->(pid::text)) || jsonb_build_object(
			   'pages', coalesce((x.pulls->(pid::text)->>'pages')::integer, 0) + requests,
			   'state', 'failed', 'error', err))
	 WHERE x.run_id = run AND x.state = 'pulling' AND x.pulls ? (pid::text)
	RETURNING x.pulls INTO p;
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	-- what it did pull is of no use
	DELETE FROM @extschema@.carrier_snapshot c WHERE c.run_id = run AND c.provider_id = pid;
	RETURN @extschema@._reconcile_pulled(run, p);
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_pull_failed(bigint, integer, integer, text) IS
	'Internal: the dispatcher records that a provider''s pull failed.';

-- When no provider of the run is pulling any more, it waits for its comparison.
CREATE FUNCTION @extschema@._reconcile_pulled(run bigint, pulls jsonb)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM jsonb_each(pulls) c WHERE c.value->>'state' = 'pulling') THEN
		RETURN 'pulling';
	END IF;
	UPDATE @extschema@.reconcile_run x SET state = 'comparing' WHERE x.run_id = run;
	RETURN 'comparing';
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_pulled(bigint, jsonb) IS
	'Internal: moves a run whose pulls are over to its comparison.';

------------------------------------------------------------------------------
-- The comparison (called by the reconcile worker, src/recon_worker.c)
--
-- Every check is one set-based statement over a whole table or snapshot:
-- hash joins of orders, shipments and the snapshot, never a lookup per
-- order.  Findings go into pg_temp.recon_found (one row per kind and
-- problem; the first finder wins); _reconcile_merge then turns them into
-- tickets and resolves the tickets of problems no longer seen.
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._reconcile_tables()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $$
BEGIN
	CREATE TEMP TABLE IF NOT EXISTS recon_found (
		kind			text NOT NULL,
		provider_id		integer,
		binding_id		integer,
		order_key		text,
		subject			text,
		tracking_number text,
		chk				text NOT NULL,
		facts			jsonb,
		detail			text);
	CREATE UNIQUE INDEX IF NOT EXISTS recon_found_key ON pg_temp.recon_found
		(kind, (coalesce(provider_id, 0)), (coalesce(binding_id, 0)),
		 (coalesce(order_key, '')), (coalesce(subject, '')));
	-- per provider: the rows of the full join of its snapshot and our
	-- shipments that may hold a discrepancy
	CREATE TEMP TABLE IF NOT EXISTS recon_pair (
		provider_id		integer NOT NULL,
		c_id			text,
		c_ref			text,
		c_tn			text,
		c_status		text,
		c_canon			text,
		c_rank			integer,
		c_at			timestamptz,
		binding_id		integer,
		order_key		text,
		s_id			text,
		s_tn			text,
		s_status		text,
		s_rank			integer,
		s_terminal		boolean,
		s_updated		timestamptz);
	-- order references of the carrier's that no shipment of ours explains
	CREATE TEMP TABLE IF NOT EXISTS recon_ref (
		provider_id		integer NOT NULL,
		ref				text NOT NULL,
		binding_id		integer,
		PRIMARY KEY (provider_id, ref));
	CREATE TEMP TABLE IF NOT EXISTS recon_dup (
		provider_id		integer NOT NULL,
		order_ref		text NOT NULL,
		ids				text[],
		tns				text[]);
	CREATE TEMP TABLE IF NOT EXISTS recon_prepared (run_id bigint);
	TRUNCATE pg_temp.recon_found, pg_temp.recon_pair, pg_temp.recon_ref, pg_temp.recon_dup,
		pg_temp.recon_prepared;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_tables() IS
	'Internal: the session''s working tables of a comparison, created or emptied.';

/*
 * The first step of a comparison: join each pulled provider's snapshot with
 * our shipments of it, keeping the rows that may hold a discrepancy, and
 * return, per provider, the statuses the carrier is ahead with, as a
 * generic tracking payload ({"events": [...]}, at most 1,000 per row): the
 * reconcile worker applies them as pulled tracking (rank rules, write-back
 * as the table's owner) before _reconcile_compare.
 */
CREATE FUNCTION @extschema@._reconcile_prepare(run bigint)
RETURNS TABLE (provider text, body text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	pid integer;
	bids integer[];
BEGIN
	SELECT x.* INTO r FROM @extschema@.reconcile_run x WHERE x.run_id = run;
	IF NOT FOUND OR r.state <> 'comparing' THEN
		RAISE EXCEPTION 'reconciliation run % is not waiting for its comparison', run
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('Its state is %s.', coalesce(r.state, 'unknown: it does not exist'));
	END IF;
	PERFORM @extschema@._reconcile_tables();
	INSERT INTO pg_temp.recon_prepared VALUES (run);
	FOR pid IN SELECT c.key::integer FROM jsonb_each(r.pulls) c
				WHERE c.value->>'state' = 'done' ORDER BY 1 LOOP
		bids := ARRAY(SELECT b.binding_id FROM @extschema@.binding b
					   WHERE b.provider_id = pid AND b.active);
		INSERT INTO pg_temp.recon_pair
		SELECT pid, c.shipment_id, c.order_ref, c.tracking_number, c.status, c.canonical,
			   c.canonical_rank, c.updated_at,
			   s.binding_id, s.order_key, s.provider_shipment_id, s.tracking_number, s.status,
			   cs.rank, cs.terminal, s.updated_at
		  FROM (SELECT * FROM @extschema@.carrier_snapshot x
				 WHERE x.run_id = run AND x.provider_id = pid) c
		  FULL JOIN (SELECT x.* FROM @extschema@.shipment x
					  WHERE x.provider_id = pid AND x.provider_shipment_id IS NOT NULL
						AND x.binding_id = ANY (bids)) s
			ON s.provider_shipment_id = c.shipment_id
		  LEFT JOIN @extschema@.canonical_status cs ON cs.name = s.status
		 WHERE (c.shipment_id IS NULL
				AND s.updated_at >= r.window_start AND s.updated_at < r.window_end
				AND s.status <> 'cancelled')
			OR (s.order_key IS NULL)
			OR (c.tracking_number IS NOT NULL AND c.tracking_number IS DISTINCT FROM s.tracking_number)
			OR (c.canonical_rank > cs.rank)
			OR (c.shipment_id IS NOT NULL AND s.status = 'cancelled'
				AND c.canonical IS DISTINCT FROM 'cancelled');
	END LOOP;
	ANALYZE pg_temp.recon_pair;

	RETURN QUERY
	SELECT p.name::text,
		   json_build_object('events', json_agg(json_build_object(
			   'id', 'reconcile:' || a.c_id || ':' || a.c_status,
			   'tracking_number', a.s_tn,
			   'status', a.c_status,
			   'occurred_at', coalesce(a.c_at, r.window_end),
			   'description', 'status in the carrier''s list, reconciliation run ' || run)
			   ORDER BY a.c_id))::text
	  FROM (SELECT x.*, (row_number() OVER (PARTITION BY x.provider_id ORDER BY x.c_id) - 1) / 1000 AS chunk
			  FROM pg_temp.recon_pair x
			 WHERE x.c_id IS NOT NULL AND x.s_id IS NOT NULL AND x.s_tn IS NOT NULL
			   AND x.c_canon <> 'unknown' AND x.c_rank > x.s_rank AND NOT x.s_terminal) a
	  JOIN @extschema@.provider p ON p.provider_id = a.provider_id
	 GROUP BY p.name, a.chunk
	 ORDER BY p.name, a.chunk;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_prepare(bigint) IS
	'Internal: joins the snapshots of a run with our shipments; returns the statuses the carriers are ahead with, as pulled tracking to apply.';

/*
 * The CRM side of one binding: orders without a shipment and nothing on its
 * way (not_sent), written-back columns that differ from the shipment
 * (tracking_mismatch, status_mismatch), orders changed since their request
 * was sent (address_changed_after_send).  A full pass reads every order; an
 * incremental one, the orders changed since the last pass (their xmin is
 * not older than the horizon then saved), those whose shipment or stopped
 * intents changed, those with open tickets or tickets resolved since (a
 * problem resolved by hand but still there is reopened at once), and those
 * still waiting for a shipment (shipsync.reconcile_seen).
 */
CREATE FUNCTION @extschema@._reconcile_crm(bid integer, full_pass boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b record;
	keytype text;
	skip text[];
	grace interval;
	born text;
	trk integer;
	st record;
	h xid8;
	hage integer;
	eff text;
	tn_bad text;
	st_bad text;
	src text;
BEGIN
	SELECT x.* INTO b FROM @extschema@.binding x WHERE x.binding_id = bid;
	-- the key's type, with the key column's own collation when it has one:
	-- an order key of ours (COLLATE "C") cast to it then compares as the
	-- column does, and can use its index
	SELECT format_type(a.atttypid, a.atttypmod)
		   || CASE WHEN co.oid IS NULL THEN '' ELSE format(' COLLATE %I.%I', cn.nspname, co.collname) END
	  INTO keytype
	  FROM pg_attribute a
	  LEFT JOIN pg_collation co ON co.oid = a.attcollation
	  LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
	 WHERE a.attrelid = b.tbl AND a.attname = b.key_column AND a.attnum > 0 AND NOT a.attisdropped;
	skip := ARRAY(SELECT w.value #>> '{}' FROM jsonb_each(b.writeback) w ORDER BY 1);
	grace := coalesce((b.options->>'grace')::interval, interval '10 minutes');
	born := CASE WHEN b.options ? 'created_at_column'
					 THEN format('t.%I::timestamptz', b.options->>'created_at_column')
				 WHEN current_setting('track_commit_timestamp')::boolean
					 THEN 'pg_xact_commit_timestamp(t.xmin)'
				 ELSE 'NULL::timestamptz' END;
	SELECT p.provider_id INTO trk FROM @extschema@.provider p WHERE p.name = b.options->>'tracking_provider';
	-- the status written back is the tracking provider's once it reports one
	eff := CASE WHEN trk IS NULL THEN 's.status'
				ELSE 'CASE WHEN tr.status IS NOT NULL AND tr.status <> ''pending'' THEN tr.status ELSE s.status END' END;
	tn_bad := CASE WHEN b.writeback ? 'tracking_number'
				   THEN format('(s.tracking_number IS NOT NULL AND t.%I::text COLLATE "C" IS DISTINCT FROM s.tracking_number)',
							   b.writeback->>'tracking_number')
				   ELSE 'false' END;
	st_bad := CASE WHEN b.writeback ? 'status'
				   THEN format('(s.order_key IS NOT NULL AND t.%I::text IS DISTINCT FROM %s)',
							   b.writeback->>'status', eff)
				   ELSE 'false' END;

	-- where the last pass stopped; rows of transactions from h on are read
	-- again by the next one
	INSERT INTO @extschema@.reconcile_state (binding_id) VALUES (bid) ON CONFLICT DO NOTHING;
	SELECT x.* INTO st FROM @extschema@.reconcile_state x WHERE x.binding_id = bid FOR UPDATE;
	h := pg_snapshot_xmin(pg_current_snapshot());
	IF st.horizon IS NOT NULL THEN
		hage := age(((st.horizon::text::numeric % 4294967296)::text)::xid);
	END IF;
	-- an horizon 2^30 transactions old is too old to compare xids with
	full_pass := full_pass OR hage IS NULL OR hage < 0 OR hage > 1073741824;

	IF full_pass THEN
		src := format('%s t', b.tbl);
	ELSE
		src := format($src$(SELECT DISTINCT c.k FROM (
				SELECT t.%1$I::text COLLATE "C" AS k FROM %2$s t WHERE age(t.xmin) <= $4
				UNION ALL
				SELECT s.order_key FROM @extschema@.shipment s
				 WHERE s.binding_id = $1 AND age(s.xmin) <= $4
				UNION ALL
				SELECT o.order_key FROM @extschema@.outbox o
				 WHERE o.binding_id = $1 AND (o.state IN ('dead', 'invalid') OR o.error_class = 'nothing_to_send')
				   AND age(o.xmin) <= $4
				UNION ALL
				SELECT x.order_key FROM @extschema@.exception_ticket x
				 WHERE x.binding_id = $1 AND x.order_key IS NOT NULL
				   AND (x.resolved_at IS NULL OR age(x.xmin) <= $4)
				UNION ALL
				SELECT r.order_key FROM @extschema@.reconcile_seen r WHERE r.binding_id = $1) c) c
			JOIN %2$s t ON t.%1$I = c.k::%3$s$src$, b.key_column, b.tbl, keytype);
	END IF;

	EXECUTE format($q$
		WITH act AS MATERIALIZED (
			SELECT o.order_key FROM @extschema@.outbox o
			 WHERE o.binding_id = $1 AND o.state IN ('pending', 'retrying', 'in_flight')
			UNION
			SELECT i.order_key FROM @extschema@.inbox i WHERE i.binding_id = $1),
		x AS MATERIALIZED (
			SELECT y.* FROM (
				SELECT t.%1$I::text COLLATE "C" AS k,
					   s.order_key IS NOT NULL AS shipped,
					   s.provider_shipment_id AS s_id, s.tracking_number AS s_tn, %3$s AS s_status,
					   s.content_digest AS s_digest,
					   %4$s AS tn_bad, %5$s AS st_bad,
					   (s.content_digest IS NOT NULL AND s.status <> 'cancelled'
						AND @extschema@._row_digest(t.*, $2) <> s.content_digest) AS addr_bad,
					   %6$s AS o_tn, %7$s AS o_status,
					   coalesce(%8$s, r.first_seen_at) AS born,
					   r.order_key IS NOT NULL AS seen
				  FROM %2$s
				  LEFT JOIN @extschema@.shipment s
					ON s.binding_id = $1 AND s.provider_id = $3 AND s.order_key = t.%1$I::text COLLATE "C"
				  %9$s
				  LEFT JOIN @extschema@.reconcile_seen r
					ON r.binding_id = $1 AND r.order_key = t.%1$I::text COLLATE "C") y
			 WHERE NOT y.shipped OR y.tn_bad OR y.st_bad OR y.addr_bad),
		seen AS (
			INSERT INTO @extschema@.reconcile_seen (binding_id, order_key)
			SELECT $1, x.k FROM x WHERE NOT x.shipped AND NOT x.seen
			ON CONFLICT DO NOTHING)
		INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
			chk, facts, detail)
		SELECT f.kind, $3, $1, x.k, x.s_tn, 'crm', f.facts, f.detail
		  FROM x
		  LEFT JOIN LATERAL (
			  SELECT o.id, o.state, o.error_class, o.last_error FROM @extschema@.outbox o
			   WHERE NOT x.shipped AND o.binding_id = $1 AND o.order_key = x.k
				 AND (o.state IN ('dead', 'invalid') OR o.error_class = 'nothing_to_send')
			   ORDER BY o.id DESC LIMIT 1) so ON true
		 CROSS JOIN LATERAL (VALUES
			('not_sent',
			 NOT x.shipped AND x.born < now() - $5 AND x.k NOT IN (SELECT act.order_key FROM act)
			 AND so.error_class IS DISTINCT FROM 'nothing_to_send',
			 jsonb_build_object('check', 'crm',
				'reason', coalesce(so.state, 'not_captured'), 'outbox_id', so.id,
				'last_error', so.last_error, 'since', x.born),
			 format('order %%s of %%s has no shipment and nothing on its way (%%s)', x.k, $6,
				CASE so.state WHEN 'dead' THEN 'its intent is dead: ' || coalesce(so.last_error, '')
							  WHEN 'invalid' THEN 'its intent is invalid: ' || coalesce(so.last_error, '')
							  ELSE 'no intent was captured' END)),
			('tracking_mismatch', x.shipped AND x.tn_bad,
			 jsonb_build_object('check', 'crm', 'column', %10$L, 'order', x.o_tn, 'shipment', x.s_tn),
			 format('order %%s of %%s: column %%s holds %%s, the shipment''s tracking number is %%s',
				x.k, $6, %10$L, coalesce(x.o_tn, 'NULL'), x.s_tn)),
			('status_mismatch', x.shipped AND x.st_bad,
			 jsonb_build_object('check', 'crm', 'column', %11$L, 'order', x.o_status, 'shipment', x.s_status),
			 format('order %%s of %%s: column %%s holds %%s, the shipment''s status is %%s',
				x.k, $6, %11$L, coalesce(x.o_status, 'NULL'), x.s_status)),
			('address_changed_after_send',
			 x.shipped AND x.addr_bad AND x.k NOT IN (SELECT act.order_key FROM act),
			 jsonb_build_object('check', 'crm', 'shipment_id', x.s_id),
			 format('order %%s of %%s changed after its shipment %%s was sent, and no update is on its way',
				x.k, $6, coalesce(x.s_id, '')))
		 ) AS f(kind, hit, facts, detail)
		 WHERE f.hit
		ON CONFLICT DO NOTHING
	$q$, b.key_column, src, eff, tn_bad, st_bad,
		CASE WHEN b.writeback ? 'tracking_number' THEN format('t.%I::text', b.writeback->>'tracking_number') ELSE 'NULL::text' END,
		CASE WHEN b.writeback ? 'status' THEN format('t.%I::text', b.writeback->>'status') ELSE 'NULL::text' END,
		born,
		CASE WHEN trk IS NULL THEN ''
			 ELSE format('LEFT JOIN @extschema@.shipment tr ON tr.binding_id = $1 AND tr.provider_id = %s AND tr.order_key = t.%I::text COLLATE "C"',
						 trk, b.key_column) END,
		b.writeback->>'tracking_number', b.writeback->>'status')
	USING bid, skip, b.provider_id, hage, grace, b.tbl::text;

	-- orders no longer waiting: shipped, or gone
	EXECUTE format($d$
		DELETE FROM @extschema@.reconcile_seen r
		 WHERE r.binding_id = $1
		   AND (EXISTS (SELECT 1 FROM @extschema@.shipment s
						 WHERE s.binding_id = $1 AND s.provider_id = $2 AND s.order_key = r.order_key)
				OR NOT EXISTS (SELECT 1 FROM %s t WHERE t.%I = r.order_key::%s))
	$d$, b.tbl, b.key_column, keytype)
	USING bid, b.provider_id;

	UPDATE @extschema@.reconcile_state x
	   SET horizon = h, pass_at = now(),
		   full_at = CASE WHEN full_pass THEN now() ELSE x.full_at END
	 WHERE x.binding_id = bid;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_crm(integer, boolean) IS
	'Internal: compares the CRM side of one binding (its orders, their shipments and intents); full reads every order, else only what changed since the last pass.';

/*
 * The carrier's side of one provider, from the pairs _reconcile_prepare
 * kept: shipments of ours its list lacks, tracking numbers and statuses
 * that differ (statuses re-read: the worker has applied what it could),
 * shipments of its for orders we do not have or cancelled, and orders it
 * holds twice.  Order references no shipment of ours explains are looked up
 * in the provider's tables, one statement per table: by the table's key
 * index where a reference can be a key of its type, else a hash join.
 */
CREATE FUNCTION @extschema@._reconcile_carrier(run bigint, pid integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b record;
	keyexpr text;
BEGIN
	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
		chk, facts, detail)
	SELECT 'missing_at_carrier', pid, x.binding_id, x.order_key, x.s_tn, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.s_id, 'tracking_number', x.s_tn,
			   'status', x.s_status, 'updated_at', x.s_updated),
		   format('the carrier''s list has no shipment %s (tracking number %s) of order %s',
			   x.s_id, coalesce(x.s_tn, 'none'), x.order_key)
	  FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.c_id IS NULL
	ON CONFLICT DO NOTHING;

	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
		chk, facts, detail)
	SELECT 'tracking_mismatch', pid, x.binding_id, x.order_key, x.s_tn, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.s_id, 'ours', x.s_tn, 'carrier', x.c_tn),
		   format('shipment %s of order %s: our tracking number is %s, the carrier''s %s',
			   x.s_id, x.order_key, coalesce(x.s_tn, 'none'), x.c_tn)
	  FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.c_id IS NOT NULL AND x.s_id IS NOT NULL
	   AND x.c_tn IS NOT NULL AND x.c_tn IS DISTINCT FROM x.s_tn
	ON CONFLICT DO NOTHING;

	-- still behind after the carrier's statuses were applied: they could not be
	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
		chk, facts, detail)
	SELECT 'status_mismatch', pid, x.binding_id, x.order_key, s.tracking_number, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.s_id, 'ours', s.status,
			   'carrier', x.c_status, 'carrier_canonical', x.c_canon),
		   format('shipment %s of order %s is %s here and %s (%s) at the carrier, which could not be applied',
			   x.s_id, x.order_key, s.status, x.c_canon, x.c_status)
	  FROM pg_temp.recon_pair x
	  JOIN @extschema@.shipment s
		ON s.binding_id = x.binding_id AND s.order_key = x.order_key AND s.provider_id = pid
	  JOIN @extschema@.canonical_status cs ON cs.name = s.status
	 WHERE x.provider_id = pid AND x.c_id IS NOT NULL AND x.s_id IS NOT NULL
	   AND x.c_canon <> 'unknown' AND x.c_rank > cs.rank
	ON CONFLICT DO NOTHING;

	-- live at the carrier, cancelled here
	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, subject,
		tracking_number, chk, facts, detail)
	SELECT 'orphan_at_carrier', pid, x.binding_id, x.order_key, x.c_id, x.c_tn, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.c_id, 'order_ref', x.c_ref,
			   'tracking_number', x.c_tn, 'status', x.c_status, 'reason', 'order_cancelled'),
		   format('the carrier''s shipment %s is %s, but order %s was cancelled',
			   x.c_id, coalesce(x.c_status, 'live'), x.order_key)
	  FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.c_id IS NOT NULL AND x.s_id IS NOT NULL
	   AND x.s_status = 'cancelled' AND x.c_canon IS DISTINCT FROM 'cancelled'
	ON CONFLICT DO NOTHING;

	-- orders held twice (or more), cancelled shipments aside: one shipment
	-- of an order at most is ours, so every other one is among the pairs
	-- without a shipment of ours, and only their references are counted
	INSERT INTO pg_temp.recon_dup (provider_id, order_ref, ids, tns)
	SELECT pid, c.order_ref, array_agg(c.shipment_id ORDER BY c.shipment_id),
		   array_agg(c.tracking_number ORDER BY c.shipment_id)
	  FROM @extschema@.carrier_snapshot c
	 WHERE c.run_id = run AND c.provider_id = pid
	   AND c.canonical IS DISTINCT FROM 'cancelled'
	   AND c.order_ref IN (SELECT x.c_ref FROM pg_temp.recon_pair x
							WHERE x.provider_id = pid AND x.s_id IS NULL AND x.c_ref IS NOT NULL
							  AND x.c_canon IS DISTINCT FROM 'cancelled')
	 GROUP BY c.order_ref
	HAVING count(*) > 1;

	-- which orders do the unexplained references name?
	INSERT INTO pg_temp.recon_ref (provider_id, ref)
	SELECT pid, x.c_ref FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.s_id IS NULL AND x.c_ref IS NOT NULL
	   AND x.c_canon IS DISTINCT FROM 'cancelled'
	UNION
	SELECT pid, d.order_ref FROM pg_temp.recon_dup d WHERE d.provider_id = pid
	ON CONFLICT DO NOTHING;
	IF FOUND THEN
		ANALYZE pg_temp.recon_ref;
		FOR b IN SELECT x.binding_id, x.tbl, x.key_column, a.atttypid AS keytype
				   FROM @extschema@.binding x
				   JOIN pg_attribute a ON a.attrelid = x.tbl AND a.attname = x.key_column
				  WHERE x.provider_id = pid AND x.active ORDER BY x.binding_id LOOP
			-- a reference that can be a key of the column's type is looked up
			-- as one (the table's own index finds it: there are few); the
			-- key's text must still be the reference
			keyexpr := CASE b.keytype
				WHEN 'int2'::regtype THEN 'CASE WHEN f.ref ~ ''^-?[0-9]{1,5}$'' AND f.ref::numeric BETWEEN -32768 AND 32767 THEN f.ref::int2 END'
				WHEN 'int4'::regtype THEN 'CASE WHEN f.ref ~ ''^-?[0-9]{1,10}$'' AND f.ref::numeric BETWEEN -2147483648 AND 2147483647 THEN f.ref::int4 END'
				WHEN 'int8'::regtype THEN 'CASE WHEN f.ref ~ ''^-?[0-9]{1,19}$'' AND f.ref::numeric BETWEEN -9223372036854775808 AND 9223372036854775807 THEN f.ref::int8 END'
				WHEN 'text'::regtype THEN 'f.ref'
				WHEN 'varchar'::regtype THEN 'f.ref::varchar'
				WHEN 'uuid'::regtype THEN 'CASE WHEN f.ref ~ ''^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'' THEN f.ref::uuid END'
				END;
			EXECUTE format('UPDATE pg_temp.recon_ref f SET binding_id = $1 FROM %s t'
						   ' WHERE f.provider_id = $2 AND f.binding_id IS NULL AND f.ref = t.%I::text%s',
						   b.tbl, b.key_column,
						   CASE WHEN keyexpr IS NOT NULL THEN format(' AND t.%I = %s', b.key_column, keyexpr) ELSE '' END)
			USING b.binding_id, pid;
		END LOOP;
	END IF;

	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, subject,
		tracking_number, chk, facts, detail)
	SELECT 'orphan_at_carrier', pid, NULL, x.c_ref, x.c_id, x.c_tn, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.c_id, 'order_ref', x.c_ref,
			   'tracking_number', x.c_tn, 'status', x.c_status, 'reason', 'no_order'),
		   format('the carrier''s shipment %s (tracking number %s) is for order %s, which no attached table holds',
			   x.c_id, coalesce(x.c_tn, 'none'), coalesce(x.c_ref, 'none'))
	  FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.c_id IS NOT NULL AND x.s_id IS NULL
	   AND x.c_canon IS DISTINCT FROM 'cancelled'
	   AND NOT EXISTS (SELECT 1 FROM pg_temp.recon_ref f
						WHERE f.provider_id = pid AND f.ref = x.c_ref AND f.binding_id IS NOT NULL)
	ON CONFLICT DO NOTHING;

	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, chk, facts, detail)
	SELECT 'duplicate_at_carrier', pid, f.binding_id, d.order_ref, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_ids', d.ids, 'tracking_numbers', d.tns),
		   format('the carrier holds %s shipments for order %s: %s',
			   cardinality(d.ids), d.order_ref, array_to_string(d.ids, ', '))
	  FROM pg_temp.recon_dup d
	  LEFT JOIN pg_temp.recon_ref f ON f.provider_id = pid AND f.ref = d.order_ref
	 WHERE d.provider_id = pid
	ON CONFLICT DO NOTHING;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_carrier(bigint, integer) IS
	'Internal: compares one provider''s snapshot with our shipments (missing, orphan, duplicate, tracking and status differences).';

/*
 * Shipments in a non-terminal status with no tracking event for longer than
 * its threshold (shipsync.stuck_after).  Where a tracking provider follows
 * the order, its shipment row is the one that moves.
 */
CREATE FUNCTION @extschema@._reconcile_stuck(bids integer[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
		chk, facts, detail)
	SELECT 'stuck', s.provider_id, s.binding_id, s.order_key, s.tracking_number, 'stuck',
		   jsonb_build_object('check', 'stuck', 'status', s.status, 'last_event_at', ev.at,
			   'threshold', sa.after),
		   format('shipment %s of order %s has been %s with no tracking event since %s (threshold %s)',
			   coalesce(s.provider_shipment_id, ''), s.order_key, s.status, ev.at, sa.after)
	  FROM @extschema@.shipment s
	  JOIN @extschema@.binding b ON b.binding_id = s.binding_id
	  LEFT JOIN @extschema@.provider tp ON tp.name = b.options->>'tracking_provider'
	  JOIN (SELECT DISTINCT ON (x.status) x.status, x.after, now() - x.after AS before
			  FROM @extschema@.stuck_after x
			 ORDER BY x.status, x.builtin) sa ON sa.status = s.status
	 CROSS JOIN LATERAL (
		 SELECT greatest(s.created_at,
						 (SELECT max(e.occurred_at) FROM @extschema@.tracking_event e
						   WHERE e.binding_id = s.binding_id AND e.order_key = s.order_key)) AS at) ev
	 WHERE s.binding_id = ANY (bids)
	   AND s.updated_at < sa.before
	   AND ((s.provider_id = b.provider_id
			 AND NOT EXISTS (SELECT 1 FROM @extschema@.shipment t
							  WHERE t.binding_id = s.binding_id AND t.order_key = s.order_key
								AND t.provider_id = tp.provider_id AND t.status <> 'pending'))
			OR (s.provider_id = tp.provider_id AND s.status <> 'pending'))
	   AND ev.at < sa.before
	ON CONFLICT DO NOTHING;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_stuck(integer[]) IS
	'Internal: finds the shipments of the given bindings with no tracking event for longer than their status''s threshold.';

-- The providers whose bills for waybills no shipment has are judged with
-- the fees of the given bindings: their shipping and tracking providers.
CREATE FUNCTION @extschema@._reconcile_fee_providers(bids integer[])
RETURNS integer[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(array_agg(DISTINCT p.provider_id), '{}')
	  FROM @extschema@.binding b
	  JOIN @extschema@.provider p
		ON p.provider_id = b.provider_id OR p.name = b.options->>'tracking_provider'
	 WHERE b.binding_id = ANY (bids)
$$;
COMMENT ON FUNCTION @extschema@._reconcile_fee_providers(integer[]) IS
	'Internal: the shipping and tracking providers of the given bindings, whose bills for unknown waybills reconciliation judges with the bindings'' fees.';

/*
 * The fees: every row of shipsync.fee_difference is a fee_mismatch.  The
 * rows of the given bindings' orders, each keyed by its order and, in
 * subject, by what tells it from the order's other rows (its kind and
 * currency; for a duplicate charge, its waybill, fee type and currency);
 * and the bills of their providers (shipping and tracking) for waybills no
 * shipment has, keyed by provider and tracking number (subject), with no
 * order: one discrepancy per waybill, its amounts per currency.  Looked at
 * with the stuck shipments (hourly in CRM-side passes, in every full run).
 */
CREATE FUNCTION @extschema@._reconcile_fees(bids integer[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pids integer[] := @extschema@._reconcile_fee_providers(bids);
BEGIN
	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, subject,
		tracking_number, chk, facts, detail)
	SELECT 'fee_mismatch', p.provider_id, d.binding_id, d.order_key,
		   concat_ws(' ', d.kind, CASE WHEN d.kind = 'duplicate_charge' THEN d.tracking_number END,
					 d.fee_type, d.currency),
		   d.tracking_number, 'fees',
		   jsonb_strip_nulls(jsonb_build_object('check', 'fees', 'fee_kind', d.kind,
			   'fee_type', d.fee_type, 'currency', d.currency, 'estimated', d.estimated,
			   'billed', d.billed, 'difference', d.difference)),
		   format('%s of %s: %s', d.kind,
				  CASE WHEN d.order_key IS NULL THEN format('waybill %s', d.tracking_number)
					   ELSE format('order %s of %s (waybill %s)', d.order_key, b.tbl, d.tracking_number) END,
				  d.detail)
	  FROM @extschema@.fee_difference d
	  JOIN @extschema@.provider p ON p.name = d.provider
	  LEFT JOIN @extschema@.binding b ON b.binding_id = d.binding_id
	 WHERE d.kind <> 'unknown_waybill'
	   AND (d.binding_id = ANY (bids)
			OR (d.binding_id IS NULL AND p.provider_id = ANY (pids)))
	ON CONFLICT DO NOTHING;

	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, subject,
		tracking_number, chk, facts, detail)
	SELECT 'fee_mismatch', p.provider_id, NULL, NULL, d.tracking_number, d.tracking_number, 'fees',
		   jsonb_build_object('check', 'fees', 'fee_kind', 'unknown_waybill',
			   'billed', jsonb_object_agg(coalesce(d.currency, ''), d.billed)),
		   format('unknown_waybill: provider %s bills waybill %s (%s), which no shipment has',
				  p.name, d.tracking_number,
				  string_agg(concat_ws(' ', d.billed, d.currency), ', ' ORDER BY d.currency))
	  FROM @extschema@.fee_difference d
	  JOIN @extschema@.provider p ON p.name = d.provider
	 WHERE d.kind = 'unknown_waybill'
	   AND p.provider_id = ANY (pids)
	 GROUP BY p.provider_id, p.name, d.tracking_number
	ON CONFLICT DO NOTHING;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_fees(integer[]) IS
	'Internal: finds the rows of shipsync.fee_difference of the given bindings'' orders, and of their providers'' bills for waybills no shipment has (fee_mismatch).';

/*
 * Findings into tickets: an open ticket of the same problem is refreshed, a
 * resolved one reopened (reopen_count + 1), else one is opened; then every
 * open ticket this run could judge and did not see again is resolved by
 * reconcile.  What a run could judge: on the CRM side every order of the
 * bindings it compared (bids: an incremental pass reads the orders of open
 * tickets too), the shipments and fees of those it looked at for stuck
 * ones and fee differences (sbids, and for bills of unknown waybills their
 * providers), on the carrier side what the snapshots of the providers it
 * pulled cover (pids).  The tickets of dead, invalid and refused intents are
 * resolved too once their order reached the carrier as it is now, or the
 * intent itself was delivered.  Returns the counts.
 */
CREATE FUNCTION @extschema@._reconcile_merge(run bigint, bids integer[], pids integer[],
	sbids integer[], OUT opened integer, OUT reopened integer, OUT closed integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	n integer;
	fpids integer[] := @extschema@._reconcile_fee_providers(sbids);
BEGIN
	SELECT x.* INTO r FROM @extschema@.reconcile_run x WHERE x.run_id = run;
	-- the findings are joined with the tickets below: planned knowing how
	-- many there are (the table is filled by many statements, never read
	-- before)
	ANALYZE pg_temp.recon_found;

	-- still there: refresh what changed, and when it was seen (hourly)
	UPDATE @extschema@.exception_ticket x
	   SET facts = f.facts, detail = f.detail,
		   tracking_number = coalesce(f.tracking_number, x.tracking_number),
		   last_seen_at = now(), run_id = run
	  FROM pg_temp.recon_found f
	 WHERE x.resolved_at IS NULL
	   AND x.kind = f.kind AND coalesce(x.provider_id, 0) = coalesce(f.provider_id, 0)
	   AND coalesce(x.binding_id, 0) = coalesce(f.binding_id, 0)
	   AND coalesce(x.order_key, '') = coalesce(f.order_key, '')
	   AND coalesce(x.subject, '') = coalesce(f.subject, '')
	   AND (x.facts IS DISTINCT FROM f.facts OR x.last_seen_at IS NULL
			OR x.last_seen_at < now() - interval '1 hour');

	-- back after a resolution: reopen the last ticket of the problem
	WITH k AS (
		SELECT DISTINCT ON (f.kind, coalesce(f.provider_id, 0), coalesce(f.binding_id, 0),
							coalesce(f.order_key, ''), coalesce(f.subject, ''))
			   x.ticket_id, f.facts, f.detail, f.tracking_number
		  FROM pg_temp.recon_found f
		  JOIN @extschema@.exception_ticket x
			ON x.kind = f.kind AND coalesce(x.provider_id, 0) = coalesce(f.provider_id, 0)
		   AND coalesce(x.binding_id, 0) = coalesce(f.binding_id, 0)
		   AND coalesce(x.order_key, '') = coalesce(f.order_key, '')
		   AND coalesce(x.subject, '') = coalesce(f.subject, '')
		 WHERE NOT EXISTS (
			   SELECT 1 FROM @extschema@.exception_ticket o
				WHERE o.resolved_at IS NULL
				  AND o.kind = f.kind AND coalesce(o.provider_id, 0) = coalesce(f.provider_id, 0)
				  AND coalesce(o.binding_id, 0) = coalesce(f.binding_id, 0)
				  AND coalesce(o.order_key, '') = coalesce(f.order_key, '')
				  AND coalesce(o.subject, '') = coalesce(f.subject, ''))
		 ORDER BY f.kind, coalesce(f.provider_id, 0), coalesce(f.binding_id, 0),
				  coalesce(f.order_key, ''), coalesce(f.subject, ''), x.ticket_id DESC),
	u AS (
		UPDATE @extschema@.exception_ticket x
		   SET resolved_at = NULL, resolved_by = NULL, resolution = NULL,
			   acknowledged_at = NULL, acknowledged_by = NULL, acknowledgement = NULL,
			   reopen_count = x.reopen_count + 1, reopened_at = now(),
			   facts = k.facts, detail = k.detail,
			   tracking_number = coalesce(k.tracking_number, x.tracking_number),
			   last_seen_at = now(), run_id = run
		  FROM k WHERE x.ticket_id = k.ticket_id
		RETURNING x.ticket_id, x.kind, x.binding_id, x.order_key)
	SELECT count(pg_notify('shipsync', json_build_object('event', 'ticket_reopened',
			   'ticket_id', u.ticket_id, 'kind', u.kind, 'binding_id', u.binding_id,
			   'order_key', u.order_key)::text))
	  INTO reopened FROM u;

	-- new problems
	WITH i AS (
		INSERT INTO @extschema@.exception_ticket AS x (kind, provider_id, binding_id, order_key,
			subject, tracking_number, detail, facts, last_seen_at, run_id)
		SELECT f.kind, f.provider_id, f.binding_id, f.order_key, f.subject, f.tracking_number,
			   f.detail, f.facts, now(), run
		  FROM pg_temp.recon_found f
		 WHERE NOT EXISTS (
			   SELECT 1 FROM @extschema@.exception_ticket o
				WHERE o.resolved_at IS NULL
				  AND o.kind = f.kind AND coalesce(o.provider_id, 0) = coalesce(f.provider_id, 0)
				  AND coalesce(o.binding_id, 0) = coalesce(f.binding_id, 0)
				  AND coalesce(o.order_key, '') = coalesce(f.order_key, '')
				  AND coalesce(o.subject, '') = coalesce(f.subject, ''))
		 ORDER BY f.kind, f.binding_id, f.order_key, f.subject
		ON CONFLICT (kind, (coalesce(provider_id, 0)), (coalesce(binding_id, 0)),
					 (coalesce(order_key, '')), (coalesce(subject, '')))
			WHERE resolved_at IS NULL DO NOTHING
		RETURNING x.ticket_id, x.kind, x.binding_id, x.order_key)
	SELECT count(pg_notify('shipsync', json_build_object('event', 'ticket_opened',
			   'ticket_id', i.ticket_id, 'kind', i.kind, 'binding_id', i.binding_id,
			   'order_key', i.order_key)::text))
	  INTO opened FROM i;

	-- gone: resolved, with why (resolved_by: who compares, reconcile in the worker)
	-- (the open tickets not found are picked first, on their own: joined
	-- with the conditions below, whose selectivity the planner cannot
	-- guess, the findings were scanned once for every open ticket)
	WITH c AS (
		UPDATE @extschema@.exception_ticket x
		   SET resolved_at = now(), run_id = run,
			   resolution = format('no longer seen (reconciliation run %s)', run)
		 WHERE x.ticket_id = ANY (ARRAY(
				   SELECT o.ticket_id FROM @extschema@.exception_ticket o
					WHERE o.resolved_at IS NULL
					  AND NOT EXISTS (
						  SELECT 1 FROM pg_temp.recon_found f
						   WHERE o.kind = f.kind AND coalesce(o.provider_id, 0) = coalesce(f.provider_id, 0)
							 AND coalesce(o.binding_id, 0) = coalesce(f.binding_id, 0)
							 AND coalesce(o.order_key, '') = coalesce(f.order_key, '')
							 AND coalesce(o.subject, '') = coalesce(f.subject, ''))))
		   AND x.resolved_at IS NULL
		   AND (
			   -- the CRM side of the bindings compared
			   (x.binding_id = ANY (bids)
				AND (x.kind IN ('not_sent', 'address_changed_after_send')
					 OR (x.kind IN ('tracking_mismatch', 'status_mismatch')
						 AND x.facts->>'check' = 'crm')))
			   OR (x.binding_id = ANY (sbids) AND x.kind = 'stuck')
			   -- the fees of those bindings' orders, and their providers' unknown waybills
			   OR (x.kind = 'fee_mismatch'
				   AND (x.binding_id = ANY (sbids)
						OR (x.binding_id IS NULL
							AND x.provider_id = ANY (fpids))))
			   -- a write-back that failed, now matching
			   OR (x.binding_id = ANY (bids) AND x.kind = 'writeback_failed'
				   AND EXISTS (SELECT 1 FROM @extschema@.shipment s
								WHERE s.binding_id = x.binding_id AND s.order_key = x.order_key
								  AND s.provider_id = x.provider_id)
				   AND NOT EXISTS (SELECT 1 FROM pg_temp.recon_found f
									WHERE f.binding_id = x.binding_id AND f.order_key = x.order_key
									  AND f.kind IN ('tracking_mismatch', 'status_mismatch')))
			   -- an intent that stopped, now delivered or made moot
			   OR (x.binding_id = ANY (bids)
				   AND x.kind IN ('dead_intent', 'invalid_order', 'auth_failed', 'render_failed',
								  'forbidden_host', 'tls_failed', 'apply_failed', 'poison')
				   AND EXISTS (
					   SELECT 1 FROM @extschema@.outbox o
						WHERE o.id = x.outbox_id
						  AND (o.state = 'done'
							   OR (o.op IN ('create', 'update')
								   AND EXISTS (SELECT 1 FROM @extschema@.shipment s
												WHERE s.binding_id = o.binding_id AND s.order_key = o.order_key
												  AND s.provider_id = o.provider_id AND s.status <> 'cancelled'
												  AND s.updated_at > x.opened_at)
								   AND NOT EXISTS (SELECT 1 FROM pg_temp.recon_found f
													WHERE f.binding_id = o.binding_id AND f.order_key = o.order_key
													  AND f.kind IN ('not_sent', 'address_changed_after_send')))
							   OR (o.op = 'cancel'
								   AND NOT EXISTS (SELECT 1 FROM @extschema@.shipment s
													WHERE s.binding_id = o.binding_id AND s.order_key = o.order_key
													  AND s.provider_id = o.provider_id
													  AND s.status <> 'cancelled')))))
			   -- the carrier side of the providers pulled, as far as the snapshot covers
			   OR (x.provider_id = ANY (pids) AND x.kind = 'missing_at_carrier'
				   AND NOT EXISTS (SELECT 1 FROM @extschema@.shipment s
									WHERE s.binding_id = x.binding_id AND s.order_key = x.order_key
									  AND s.provider_id = x.provider_id AND s.status <> 'cancelled'
									  AND (s.updated_at < r.window_start OR s.updated_at >= r.window_end)
									  AND NOT EXISTS (SELECT 1 FROM @extschema@.carrier_snapshot c
													   WHERE c.run_id = run AND c.provider_id = s.provider_id
														 AND c.shipment_id = s.provider_shipment_id)))
			   OR (x.provider_id = ANY (pids) AND x.kind IN ('tracking_mismatch', 'status_mismatch')
				   AND x.facts->>'check' = 'carrier'
				   AND (EXISTS (SELECT 1 FROM @extschema@.carrier_snapshot c
								 WHERE c.run_id = run AND c.provider_id = x.provider_id
								   AND c.shipment_id = x.facts->>'shipment_id')
						OR NOT EXISTS (SELECT 1 FROM @extschema@.shipment s
										WHERE s.binding_id = x.binding_id AND s.order_key = x.order_key
										  AND s.provider_id = x.provider_id)))
			   OR (x.provider_id = ANY (pids) AND x.kind = 'orphan_at_carrier'
				   AND EXISTS (SELECT 1 FROM @extschema@.carrier_snapshot c
								WHERE c.run_id = run AND c.provider_id = x.provider_id
								  AND c.shipment_id = x.subject))
			   OR (x.provider_id = ANY (pids) AND x.kind = 'duplicate_at_carrier'
				   AND x.order_key IN (SELECT c.order_ref FROM @extschema@.carrier_snapshot c
										WHERE c.run_id = run AND c.provider_id = x.provider_id)))
		RETURNING 1)
	SELECT count(*) INTO closed FROM c;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_merge(bigint, integer[], integer[], integer[]) IS
	'Internal: opens, refreshes and reopens the tickets of a run''s findings, and resolves those it no longer sees.';

/*
 * Compare a run whose pulls are over, and record its outcome.  The worker
 * calls _reconcile_prepare first (and applies what it returns) in the same
 * transaction; called alone, this prepares itself and applies nothing.
 */
CREATE FUNCTION @extschema@._reconcile_compare(run bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	bids integer[];
	pids integer[];
	sbids integer[];
	b integer;
	p integer;
	m record;
	failed text;
BEGIN
	-- (two tests: the second is parsed only once the table exists)
	IF to_regclass('pg_temp.recon_prepared') IS NULL THEN
		PERFORM @extschema@._reconcile_prepare(run);
	ELSIF NOT EXISTS (SELECT 1 FROM pg_temp.recon_prepared x WHERE x.run_id = run) THEN
		PERFORM @extschema@._reconcile_prepare(run);
	END IF;
	SELECT x.* INTO r FROM @extschema@.reconcile_run x WHERE x.run_id = run FOR UPDATE;

	-- the bindings compared: all for a crm pass, else those of the providers chosen
	SELECT coalesce(array_agg(x.binding_id ORDER BY x.binding_id), '{}') INTO bids
	  FROM @extschema@.binding x
	 WHERE x.active
	   AND (r.kind = 'crm' OR x.provider_id IN (SELECT c.key::integer FROM jsonb_each(r.pulls) c));
	SELECT coalesce(array_agg(c.key::integer ORDER BY c.key::integer), '{}') INTO pids
	  FROM jsonb_each(r.pulls) c WHERE c.value->>'state' = 'done';
	SELECT string_agg(format('the pull of provider %s failed: %s', c.value->>'provider', c.value->>'error'), '; ')
	  INTO failed
	  FROM jsonb_each(r.pulls) c WHERE c.value->>'state' = 'failed';

	FOREACH p IN ARRAY pids LOOP
		PERFORM @extschema@._reconcile_carrier(run, p);
	END LOOP;
	FOREACH b IN ARRAY bids LOOP
		PERFORM @extschema@._reconcile_crm(b, r.kind = 'full');
	END LOOP;
	-- stuck and fees: thresholds are days and bills monthly, so a CRM-side
	-- pass looks hourly
	SELECT coalesce(array_agg(s.binding_id ORDER BY s.binding_id), '{}') INTO sbids
	  FROM @extschema@.reconcile_state s
	 WHERE s.binding_id = ANY (bids)
	   AND (r.kind = 'full' OR s.stuck_at IS NULL OR s.stuck_at < now() - interval '1 hour');
	PERFORM @extschema@._reconcile_stuck(sbids);
	PERFORM @extschema@._reconcile_fees(sbids);
	UPDATE @extschema@.reconcile_state s SET stuck_at = now() WHERE s.binding_id = ANY (sbids);
	SELECT * INTO m FROM @extschema@._reconcile_merge(run, bids, pids, sbids);

	-- the snapshots of earlier runs of these providers are of no more use
	DELETE FROM @extschema@.carrier_snapshot c WHERE c.provider_id = ANY (pids) AND c.run_id < run;
	TRUNCATE pg_temp.recon_found, pg_temp.recon_pair, pg_temp.recon_ref, pg_temp.recon_dup,
		pg_temp.recon_prepared;

	UPDATE @extschema@.reconcile_run x
	   SET state = CASE WHEN failed IS NULL THEN 'done' ELSE 'failed' END,
		   error = failed, opened = m.opened, reopened = m.reopened, closed = m.closed,
		   finished_at = clock_timestamp()
	 WHERE x.run_id = run;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_compare(bigint) IS
	'Internal: compares both sides for a run whose pulls are over, merges the findings into the ledger, and records the outcome.';

------------------------------------------------------------------------------
-- Public API
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.reconcile(provider text DEFAULT NULL,
	since timestamptz DEFAULT pg_catalog.now() - interval '2 days')
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pid integer;
	pdialect text;
	ppaused boolean;
	busy bigint;
	id bigint;
BEGIN
	IF since IS NULL THEN
		RAISE EXCEPTION 'since must not be null'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Give the start of the window, for example now() - interval ''2 days''.';
	END IF;
	IF since OPERATOR(pg_catalog.>) pg_catalog.now() THEN
		RAISE EXCEPTION 'since is in the future'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The carriers are asked for the shipments updated since then: give a time in the past.';
	END IF;
	IF provider IS NOT NULL THEN
		SELECT p.provider_id, p.dialect, p.paused INTO pid, pdialect, ppaused
		  FROM @extschema@.provider p WHERE p.name OPERATOR(pg_catalog.=) reconcile.provider;
		IF pid IS NULL THEN
			RAISE EXCEPTION 'provider "%" does not exist', provider
				USING ERRCODE = 'undefined_object',
					  HINT = 'See SELECT name FROM shipsync.providers.';
		END IF;
		IF pdialect OPERATOR(pg_catalog.=) ANY (ARRAY['easypost', 'aftership', 'kuaidi100']) THEN
			RAISE EXCEPTION 'provider "%" of dialect % tracks shipments, it has none of its own to reconcile', provider, pdialect
				USING ERRCODE = 'wrong_object_type',
					  HINT = 'Reconcile the shipping provider of the table it tracks.';
		END IF;
		IF NOT EXISTS (SELECT 1 FROM @extschema@.binding b
						WHERE b.provider_id OPERATOR(pg_catalog.=) pid AND b.active) THEN
			RAISE EXCEPTION 'provider "%" has no attached table', provider
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  HINT = 'Attach a table to it with shipsync.attach() first.';
		END IF;
		IF ppaused THEN
			RAISE EXCEPTION 'provider "%" is paused', provider
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  DETAIL = 'Nothing is sent to a paused provider, and its list is not pulled.',
					  HINT = 'Resume it first with shipsync.resume().';
		END IF;
	ELSIF NOT EXISTS (SELECT 1 FROM @extschema@.binding b
					   JOIN @extschema@.provider p ON p.provider_id OPERATOR(pg_catalog.=) b.provider_id
					  WHERE b.active AND NOT p.paused) THEN
		RAISE EXCEPTION 'no unpaused provider has an attached table'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Attach a table with shipsync.attach(), or resume its provider.';
	END IF;

	-- one full run at a time per provider
	PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('shipsync reconcile'));
	SELECT x.run_id INTO busy FROM @extschema@.reconcile_run x
	 WHERE x.state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'pulling', 'comparing'])
	   AND x.kind OPERATOR(pg_catalog.=) 'full'
	   AND (pid IS NULL OR x.provider_id IS NULL OR x.provider_id OPERATOR(pg_catalog.=) pid)
	 ORDER BY x.run_id LIMIT 1;
	IF busy IS NOT NULL THEN
		RAISE EXCEPTION 'reconciliation run % is still running', busy
			USING ERRCODE = 'object_in_use',
				  HINT = format('Wait for it: SELECT state FROM shipsync.reconcile_run WHERE run_id = %s.', busy);
	END IF;
	INSERT INTO @extschema@.reconcile_run AS x (provider_id, kind, trigger, window_start)
	VALUES (pid, 'full', 'manual', since)
	RETURNING x.run_id INTO id;
	PERFORM @extschema@._audit('reconcile', 'provider', coalesce(reconcile.provider, '*'),
		pg_catalog.jsonb_build_object('since', since), pg_catalog.jsonb_build_object('run_id', id));
	PERFORM @extschema@._wake(true);
	RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.reconcile(text, timestamptz) IS
	'Start a reconciliation run of one provider (NULL: every attached, unpaused provider) for the window since .. now, and return its id (shipsync.reconcile_run). The dispatcher pulls the carrier''s shipments updated in the window (generic: its list; sf_express: a lookup per order), then both sides are compared: discrepancies open tickets, those no longer seen are resolved.';

CREATE FUNCTION @extschema@.resync(tbl regclass, keys text[] DEFAULT NULL, kind text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b record;
	keytype text;
	ks text[];
	n bigint;
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT x.* INTO b FROM @extschema@.binding x
	 WHERE x.tbl OPERATOR(pg_catalog.=) resync.tbl AND x.active;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'table % is not attached', tbl
			USING ERRCODE = 'undefined_object',
				  HINT = 'See SELECT tbl FROM shipsync.binding WHERE active.';
	END IF;
	IF keys IS NULL AND kind IS NULL THEN
		RAISE EXCEPTION 'resync needs order keys, a kind of discrepancy, or both'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example shipsync.resync(''crm.orders'', kind => ''not_sent'').';
	END IF;
	IF kind IS NOT NULL AND kind OPERATOR(pg_catalog.<>) ALL (ARRAY['not_sent', 'missing_at_carrier',
			'tracking_mismatch', 'status_mismatch', 'address_changed_after_send', 'stuck']) THEN
		RAISE EXCEPTION 'cannot resync orders by discrepancy kind "%"', kind
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Orders can be sent again for the kinds not_sent, missing_at_carrier, tracking_mismatch, status_mismatch, address_changed_after_send and stuck.',
				  HINT = CASE kind WHEN 'fee_mismatch'
							  THEN 'A fee difference is settled with the carrier (a corrected statement, a dispute), not by sending the order again.'
							  ELSE 'An orphan or a duplicate at the carrier has no order of ours to send: cancel it at the carrier.' END;
	END IF;

	-- the orders: those given, those with an open discrepancy of the kind, or both
	ks := ARRAY(SELECT DISTINCT k FROM unnest(keys) AS k WHERE k IS NOT NULL);
	IF kind IS NOT NULL THEN
		ks := ARRAY(SELECT DISTINCT x.order_key FROM @extschema@.exception_ticket x
					 WHERE x.binding_id OPERATOR(pg_catalog.=) b.binding_id
					   AND x.kind OPERATOR(pg_catalog.=) resync.kind AND x.resolved_at IS NULL
					   AND x.order_key IS NOT NULL
					   AND (keys IS NULL OR x.order_key OPERATOR(pg_catalog.=) ANY (ks)));
	END IF;
	-- that exist (the keys are compared as the key column's type)
	SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) INTO keytype
	  FROM pg_catalog.pg_attribute a
	 WHERE a.attrelid OPERATOR(pg_catalog.=) b.tbl AND a.attname OPERATOR(pg_catalog.=) b.key_column;
	BEGIN
		EXECUTE format('SELECT coalesce(array_agg(t.%1$I::text), ''{}'') FROM %2$s t'
					   ' WHERE t.%1$I OPERATOR(pg_catalog.=) ANY ($1::%3$s[])', b.key_column, b.tbl, keytype)
		   INTO ks USING ks;
	EXCEPTION WHEN data_exception THEN
		RAISE EXCEPTION 'the order keys given are not all of type %', keytype
			USING ERRCODE = 'invalid_text_representation',
				  DETAIL = format('%s.', SQLERRM),
				  HINT = format('Give the values of column %I of %s, as text.', b.key_column, b.tbl);
	END;

	-- a create where there is no live shipment (or the carrier lost it: a
	-- new idempotency key, so a carrier that remembers keys creates it
	-- again), an update where there is one; orders with an intent on its
	-- way are left to it
	WITH o AS (
		SELECT k,
			   s.status IS NULL OR s.status OPERATOR(pg_catalog.=) 'cancelled'
			   OR EXISTS (SELECT 1 FROM @extschema@.exception_ticket x
						   WHERE x.binding_id OPERATOR(pg_catalog.=) b.binding_id
							 AND x.order_key OPERATOR(pg_catalog.=) k
							 AND x.kind OPERATOR(pg_catalog.=) 'missing_at_carrier'
							 AND x.resolved_at IS NULL) AS create_it
		  FROM unnest(ks) AS k
		  LEFT JOIN @extschema@.shipment s
			ON s.binding_id OPERATOR(pg_catalog.=) b.binding_id AND s.order_key OPERATOR(pg_catalog.=) k
		   AND s.provider_id OPERATOR(pg_catalog.=) b.provider_id
		 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.outbox x
							WHERE x.binding_id OPERATOR(pg_catalog.=) b.binding_id
							  AND x.order_key OPERATOR(pg_catalog.=) k
							  AND x.state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'retrying', 'in_flight']))
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.inbox i
							WHERE i.binding_id OPERATOR(pg_catalog.=) b.binding_id
							  AND i.order_key OPERATOR(pg_catalog.=) k)),
	ins AS (
		INSERT INTO @extschema@.outbox (binding_id, provider_id, order_key, op)
		SELECT b.binding_id, b.provider_id, o.k, CASE WHEN o.create_it THEN 'create' ELSE 'update' END
		  FROM o ORDER BY o.k
		RETURNING 1)
	SELECT pg_catalog.count(*) INTO n FROM ins;
	PERFORM @extschema@._audit('resync', 'binding', b.tbl::text,
		pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('keys', keys, 'kind', kind)),
		pg_catalog.jsonb_build_object('enqueued', n));
	PERFORM @extschema@._wake(false);
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.resync(regclass, text[], text) IS
	'Send orders of an attached table again: those given by key, or every order with an open discrepancy of the given kind, or the given ones among those. Enqueues a create (no live shipment, or the carrier lost it: a new intent, so a new idempotency key) or an update (a shipment exists), skips orders with an intent on its way, and returns how many were enqueued.';

------------------------------------------------------------------------------
-- Views
------------------------------------------------------------------------------

CREATE VIEW @extschema@.reconciliation AS
SELECT t.kind,
	   p.name AS provider,
	   b.tbl AS "table",
	   t.order_key,
	   t.tracking_number,
	   coalesce(t.reopened_at, t.opened_at) AS detected_at,
	   t.facts AS detail,
	   t.ticket_id
FROM @extschema@.exception_ticket t
LEFT JOIN @extschema@.provider p ON p.provider_id OPERATOR(pg_catalog.=) t.provider_id
LEFT JOIN @extschema@.binding b ON b.binding_id OPERATOR(pg_catalog.=) t.binding_id
WHERE t.resolved_at IS NULL
  AND t.kind OPERATOR(pg_catalog.=) ANY (@extschema@._reconcile_kinds());
COMMENT ON VIEW @extschema@.reconciliation IS
	'One row per open discrepancy between the CRM side and the carriers'' side, found by reconciliation: kinds not_sent, missing_at_carrier, orphan_at_carrier, duplicate_at_carrier, tracking_mismatch, status_mismatch, address_changed_after_send, fee_mismatch (a row of shipsync.fee_difference), stuck. See docs/reconciliation.md.';
COMMENT ON COLUMN @extschema@.reconciliation.kind IS 'The kind of discrepancy.';
COMMENT ON COLUMN @extschema@.reconciliation.provider IS 'The provider (carrier) it is about.';
COMMENT ON COLUMN @extschema@.reconciliation."table" IS 'The attached table of the order; NULL when the carrier''s order reference matches no table (orphan_at_carrier, duplicate_at_carrier), or for a fee_mismatch of a billed waybill no shipment has.';
COMMENT ON COLUMN @extschema@.reconciliation.order_key IS 'The order''s key, as text (for an orphan: the carrier''s order reference; NULL for a fee_mismatch of a billed waybill no shipment has, keyed by provider and tracking number).';
COMMENT ON COLUMN @extschema@.reconciliation.tracking_number IS 'The tracking number involved, when there is one.';
COMMENT ON COLUMN @extschema@.reconciliation.detected_at IS 'When it was found (or found again, after having been resolved).';
COMMENT ON COLUMN @extschema@.reconciliation.detail IS 'The facts, as JSON: check (crm, carrier, stuck or fees) and both sides'' values (fee_mismatch: the fee_difference row''s fee_kind and amounts).';
COMMENT ON COLUMN @extschema@.reconciliation.ticket_id IS 'Its ticket in shipsync.exception_ticket, for shipsync.ack() and shipsync.resolve().';

CREATE VIEW @extschema@.reconciliation_summary AS
WITH d AS (
	SELECT e.at::date AS day, t.provider_id, t.kind,
		   pg_catalog.count(*) FILTER (WHERE e.event OPERATOR(pg_catalog.=) ANY (ARRAY['opened', 'reopened'])) AS opened,
		   pg_catalog.count(*) FILTER (WHERE e.event OPERATOR(pg_catalog.=) 'resolved') AS closed
	  FROM @extschema@.ticket_event e
	  JOIN @extschema@.exception_ticket t ON t.ticket_id OPERATOR(pg_catalog.=) e.ticket_id
	 WHERE t.kind OPERATOR(pg_catalog.=) ANY (@extschema@._reconcile_kinds())
	 GROUP BY 1, 2, 3)
SELECT d.day,
	   p.name AS provider,
	   d.kind,
	   d.opened,
	   d.closed,
	   pg_catalog.sum(d.opened OPERATOR(pg_catalog.-) d.closed)
		   OVER (PARTITION BY d.provider_id, d.kind ORDER BY d.day)::bigint AS open
FROM d
LEFT JOIN @extschema@.provider p ON p.provider_id OPERATOR(pg_catalog.=) d.provider_id;
COMMENT ON VIEW @extschema@.reconciliation_summary IS
	'Per day (in the session''s time zone), provider and kind of discrepancy: how many were found (or found again), how many closed, and how many were open at the end of the day.';
COMMENT ON COLUMN @extschema@.reconciliation_summary.day IS 'The day.';
COMMENT ON COLUMN @extschema@.reconciliation_summary.provider IS 'The provider.';
COMMENT ON COLUMN @extschema@.reconciliation_summary.kind IS 'The kind of discrepancy.';
COMMENT ON COLUMN @extschema@.reconciliation_summary.opened IS 'Discrepancies found that day (new ones and ones back after a resolution).';
COMMENT ON COLUMN @extschema@.reconciliation_summary.closed IS 'Discrepancies resolved that day, by a person or because a run no longer saw them.';
COMMENT ON COLUMN @extschema@.reconciliation_summary.open IS 'Discrepancies open at the end of the day.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.reconcile_run', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.reconcile_run_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.stuck_after', 'WHERE NOT builtin');

-- the thresholds are audited like every setting (install/80_security.sql)
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.stuck_after
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('stuck_after', 'status', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.stuck_after
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('stuck_after', '', '{}');

-- the history of the tickets already there
INSERT INTO @extschema@.ticket_event (ticket_id, at, event, actor, note)
SELECT t.ticket_id, e.at, e.event, e.actor, e.note
  FROM @extschema@.exception_ticket t
 CROSS JOIN LATERAL (VALUES ('opened', t.opened_at, NULL::name, NULL::text),
							('acknowledged', t.acknowledged_at, t.acknowledged_by, t.acknowledgement),
							('resolved', t.resolved_at, t.resolved_by, t.resolution)) AS e(event, at, actor, note)
 WHERE e.at IS NOT NULL
 ORDER BY t.ticket_id, e.at;

-- privileges (install/90_privileges.sql): the functions created above are
-- revoked from PUBLIC like every other
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@._wake(boolean) TO PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.requeue(text, text, text, timestamptz),
	@extschema@.retry(text, text, text, timestamptz) TO shipsync_operator;
-- the ledger and reconciliation
GRANT SELECT ON @extschema@.ticket_event, @extschema@.open_tickets, @extschema@.ticket_summary,
	@extschema@.reconcile_run, @extschema@.carrier_snapshot, @extschema@.stuck_after,
	@extschema@.reconciliation, @extschema@.reconciliation_summary TO shipsync_reader;
-- (the views of reconciliation call it as their reader)
GRANT EXECUTE ON FUNCTION @extschema@._reconcile_kinds() TO shipsync_reader;
GRANT EXECUTE ON FUNCTION @extschema@.reconcile(text, timestamptz),
	@extschema@.resync(regclass, text[], text) TO shipsync_operator;
GRANT INSERT, UPDATE, DELETE ON @extschema@.stuck_after TO shipsync_admin;

-- A dispatcher of the new library waits for this update, and the schedule
-- reads its runs at the next wake: wake it.
SELECT @extschema@._wake(true);

------------------------------------------------------------------------------
-- The intent kind stored with the request (issue 10): what a stored request
-- does at the carrier is decided when it is rendered and kept in
-- outbox.request_kind; the dispatcher no longer reads it back from the URL
-- or the body.
------------------------------------------------------------------------------

ALTER TABLE @extschema@.outbox ADD COLUMN request_kind text
	CHECK (request_kind IN ('create', 'update', 'cancel', 'register'));
COMMENT ON COLUMN @extschema@.outbox.request_kind IS 'What the stored request does at the carrier (create, update, cancel or register), decided when it was rendered and stored with it: how its answer is applied.';

-- the requests 0.1 stored: their kind, read once as 0.1's dispatcher read it
UPDATE @extschema@.outbox
   SET request_kind = CASE
		WHEN op OPERATOR(pg_catalog.=) 'register' THEN 'register'
		WHEN pg_catalog.left(request_body, 10) OPERATOR(pg_catalog.=) 'partnerID=' THEN
			CASE WHEN pg_catalog.strpos(request_body, '&serviceCode=EXP_RECE_UPDATE_ORDER&') OPERATOR(pg_catalog.>) 0
				 THEN 'cancel' ELSE 'create' END
		WHEN request_method OPERATOR(pg_catalog.=) 'PATCH' THEN 'update'
		WHEN pg_catalog.right(request_url, 7) OPERATOR(pg_catalog.=) '/cancel' THEN 'cancel'
		ELSE 'create' END
 WHERE request_method IS NOT NULL;

CREATE OR REPLACE VIEW @extschema@.intents AS
SELECT o.id, o.binding_id, o.provider_id, o.order_key, o.op, o.idempotency_key, o.state,
	   o.attempts, o.next_attempt_at, o.lease_until, o.created_at, o.updated_at, o.done_at,
	   o.request_method, o.request_url,
	   CASE WHEN (SELECT @extschema@._pii_visible()) THEN o.request_body
			ELSE @extschema@._mask_body(o.request_body, r.paths, r.kinds, b.options->'pii')
	   END AS request_body,
	   o.request_digest, o.last_status, o.error_class, o.last_error, o.coalesced_into,
	   o.content_digest, o.request_kind
FROM @extschema@.outbox o
LEFT JOIN @extschema@._pii_rules r ON r.provider_id = o.provider_id
LEFT JOIN @extschema@.binding b ON b.binding_id = o.binding_id;

------------------------------------------------------------------------------
-- Fast by default (issue 13): 256 requests in flight per provider unless
-- its options say otherwise.  Providers created before keep the value they
-- were created with.
------------------------------------------------------------------------------

ALTER TABLE @extschema@.provider ALTER COLUMN max_inflight SET DEFAULT 256;

------------------------------------------------------------------------------
-- Quoted fees of a batch, cheaply: one call per batch for the estimates
-- the apply sets on its shipments (_quote_totals replaces the per-row
-- _quote_total), each provider's default currency once per batch and the
-- lines sorted once in _record_quotes, and fee_sum's stale rows found
-- through fee_line's order index in _fee_totals
------------------------------------------------------------------------------

DROP FUNCTION @extschema@._quote_total(jsonb, integer);
CREATE FUNCTION @extschema@._quote_totals(bodies text[], pids integer[])
RETURNS TABLE (ord bigint, fees jsonb, total numeric)
AS 'MODULE_PATHNAME', 'shipsync_quote_totals'
LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@._quote_totals(text[], integer[]) IS
	'Internal (the dispatcher''s apply): for a batch of create or update answers, each one''s fees as jsonb and their quoted total net of refunds when they share one currency, by position in the arrays.';
REVOKE ALL ON FUNCTION @extschema@._quote_totals(text[], integer[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@._record_quotes(bids integer[], oks text[], pids integer[],
	tns text[], fees text[])
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
	q record;
	m record;
	lock_pids integer[];
	lock_tns text[];
BEGIN
	-- parked bill lines of these tracking numbers: rare, looked for first
	SELECT array_agg(DISTINCT u.pid), array_agg(DISTINCT u.tn) INTO lock_pids, lock_tns
	FROM unnest(pids, tns) AS u(pid, tn)
	WHERE u.tn IS NOT NULL
	  AND EXISTS (SELECT 1 FROM @extschema@.fee_line f
				  WHERE f.binding_id IS NULL AND f.provider_id = u.pid AND f.tracking_number = u.tn);
	IF lock_tns IS NOT NULL THEN
		PERFORM @extschema@._lock_fees(lock_pids, lock_tns, false);
		SELECT * INTO m FROM @extschema@._match_parked_fees(pids, tns);
		RETURN QUERY SELECT * FROM @extschema@._fee_totals(m.tb, m.tk) t WHERE t.kind = 'writeback';
	END IF;

	-- each provider's default currency once, not once a line
	WITH d AS MATERIALIZED (
		SELECT p.provider_id, @extschema@._fee_currency(p.options, p.dialect) AS cur
		FROM @extschema@.provider p
		WHERE p.provider_id = ANY (pids))
	SELECT array_agg(x.pid) AS pids, array_agg(x.bid) AS bids, array_agg(x.ok) AS oks,
		   array_agg(x.tn) AS tns, array_agg(x.code) AS codes, array_agg(x.amount) AS amounts,
		   array_agg(x.cur) AS curs, array_agg(x.fkey) AS fkeys
	INTO q
	FROM (SELECT u.o, e.i, u.pid, u.bid, u.ok, u.tn, e.fee->>'type' AS code,
				 (e.fee->>'amount')::numeric AS amount,
				 CASE WHEN c.code IS NOT NULL THEN c.code ELSE 'XXX' END AS cur,
				 e.fee->>'key' AS fkey
		  FROM unnest(bids, oks, pids, tns, fees) WITH ORDINALITY AS u(bid, ok, pid, tn, fj, o)
		  JOIN d ON d.provider_id = u.pid
		  CROSS JOIN LATERAL (SELECT u.fj::jsonb AS j OFFSET 0) pj	-- parsed once
		  CROSS JOIN LATERAL jsonb_array_elements(
			  CASE WHEN jsonb_typeof(pj.j) = 'array' THEN pj.j ELSE '[]' END) WITH ORDINALITY AS e(fee, i)
		  LEFT JOIN @extschema@.currency c ON c.code = coalesce(e.fee->>'currency', d.cur)
		  WHERE u.fj IS NOT NULL AND u.tn IS NOT NULL
			AND jsonb_typeof(e.fee) = 'object' AND e.fee->>'type' IS NOT NULL
		  -- sorted once here, not once per array: the lines in answer order
		  ORDER BY u.o, e.i) x;
	IF q.tns IS NULL THEN
		RETURN;
	END IF;
	RETURN QUERY SELECT * FROM @extschema@._store_fees('create', NULL, NULL, 'dispatcher',
		q.pids, q.bids, q.oks, q.tns, q.codes, q.amounts, q.curs, q.fkeys,
		array_fill(NULL::text, ARRAY[cardinality(q.tns)]),
		array_fill(NULL::text, ARRAY[cardinality(q.tns)]),
		array_fill(NULL::numeric, ARRAY[cardinality(q.tns)]),
		array_fill(NULL::text, ARRAY[cardinality(q.tns)]),
		array_fill(NULL::timestamptz, ARRAY[cardinality(q.tns)]));
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._fee_totals(tb integer[], tk text[])
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	-- one join and one aggregate for all the orders (a statement touches
	-- tens of thousands), min <> max for "more than one currency"
	RETURN QUERY
	WITH t AS (
		SELECT DISTINCT x.b, x.k FROM unnest(tb, tk) AS x(b, k) WHERE x.b IS NOT NULL),
	per AS MATERIALIZED (
		SELECT l.binding_id AS b, l.order_key AS k, l.provider_id AS pid, l.currency AS cur,
			   coalesce(sum(CASE WHEN l.fee_type = 'refund' THEN -abs(l.amount) ELSE l.amount END)
					FILTER (WHERE l.quote), 0) AS est,
			   coalesce(sum(l.amount) FILTER (WHERE NOT l.quote AND l.state <> 'refunded'
											  AND l.fee_type <> 'refund'), 0) AS chg,
			   coalesce(sum(abs(l.amount)) FILTER (WHERE NOT l.quote
					AND (l.state = 'refunded' OR l.fee_type = 'refund')), 0) AS ref,
			   count(*) FILTER (WHERE l.quote) AS nq,
			   count(*) FILTER (WHERE NOT l.quote) AS nb,
			   max(l.recorded_at) AS last
		FROM @extschema@.fee_line l
		JOIN t ON l.binding_id = t.b AND l.order_key = t.k
		GROUP BY l.binding_id, l.order_key, l.provider_id, l.currency),
	kept AS (
		INSERT INTO @extschema@.fee_sum AS fs (binding_id, order_key, provider_id, currency,
			estimated, charged, refunded, quote_lines, bill_lines, last_change)
		SELECT per.b, per.k, per.pid, per.cur, per.est, per.chg, per.ref, per.nq, per.nb, per.last
		FROM per
		ON CONFLICT ON CONSTRAINT fee_sum_pkey DO UPDATE SET
			estimated = EXCLUDED.estimated, charged = EXCLUDED.charged,
			refunded = EXCLUDED.refunded, quote_lines = EXCLUDED.quote_lines,
			bill_lines = EXCLUDED.bill_lines, last_change = EXCLUDED.last_change
		WHERE (fs.estimated, fs.charged, fs.refunded, fs.quote_lines, fs.bill_lines, fs.last_change)
			  IS DISTINCT FROM (EXCLUDED.estimated, EXCLUDED.charged, EXCLUDED.refunded,
								EXCLUDED.quote_lines, EXCLUDED.bill_lines, EXCLUDED.last_change)
		RETURNING 1),
	-- a sum whose provider and currency no line has any more; looked up
	-- in fee_line by its order index, not in per: an anti-join against the
	-- CTE scanned all of per for every sum (the planner cannot hash a
	-- generic plan's guess of one row), 8,000 comparisons a batch of 128
	gone AS (
		DELETE FROM @extschema@.fee_sum fs USING t
		 WHERE fs.binding_id = t.b AND fs.order_key = t.k
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.fee_line l
						   WHERE l.binding_id = fs.binding_id AND l.order_key = fs.order_key
							 AND l.provider_id = fs.provider_id AND l.currency = fs.currency)
		RETURNING 1),
	ord AS (
		SELECT per.b, per.k, sum(per.nb) > 0 AS billed,
			   min(per.cur) FILTER (WHERE per.nb > 0) AS lo_b,
			   max(per.cur) FILTER (WHERE per.nb > 0) AS hi_b,
			   min(per.cur) FILTER (WHERE per.nq > 0) AS lo_q,
			   max(per.cur) FILTER (WHERE per.nq > 0) AS hi_q,
			   sum(per.chg - per.ref) FILTER (WHERE per.nb > 0) AS tot_b,
			   sum(per.est) FILTER (WHERE per.nq > 0) AS tot_q
		FROM per GROUP BY per.b, per.k),
	tot AS (
		SELECT ord.b, ord.k, bb.provider_id AS pid, bb.writeback ? 'fee_total' AS wb,
			   CASE WHEN ord.billed THEN ord.lo_b = ord.hi_b ELSE ord.lo_q = ord.hi_q END AS one,
			   CASE WHEN ord.billed THEN ord.tot_b ELSE ord.tot_q END AS total
		FROM ord JOIN @extschema@.binding bb ON bb.binding_id = ord.b),
	sh AS (
		UPDATE @extschema@.shipment s SET fee_total = tot.total, updated_at = now()
		  FROM tot
		 WHERE tot.one AND s.binding_id = tot.b AND s.order_key = tot.k
		   AND s.provider_id = tot.pid AND s.fee_total IS DISTINCT FROM tot.total
		RETURNING s.binding_id, s.order_key, s.fee_total, tot.wb),
	mixed AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, provider_id, detail)
		SELECT 'fee_currency_mixed', tot.b, tot.k, tot.pid,
			   format('the fees of order %s are in %s: its fee_total is left as it was', tot.k,
					  (SELECT string_agg(DISTINCT per.cur, ', ') FROM per
					   WHERE per.b = tot.b AND per.k = tot.k))
		FROM tot
		WHERE NOT tot.one
		  AND NOT EXISTS (SELECT 1 FROM @extschema@.exception_ticket x
						  WHERE x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
							AND x.order_key = tot.k AND x.resolved_at IS NULL)
		RETURNING 1),
	agreed AS (
		UPDATE @extschema@.exception_ticket x SET resolved_at = now()
		  FROM tot
		 WHERE tot.one AND x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
		   AND x.order_key = tot.k AND x.resolved_at IS NULL
		RETURNING 1)
	-- (kept, gone, mixed and agreed run whether or not they are read)
	SELECT 'writeback'::text, NULL::bigint, sh.binding_id, sh.order_key, sh.fee_total
	FROM sh WHERE sh.wb;
END
$$;

------------------------------------------------------------------------------
-- The first quotes of a batch of created orders read in C (issue 13)
------------------------------------------------------------------------------
/*
 * The first quotes of a batch of created orders, the common case, read in
 * C for the statement that records them (APPLY_FIRST_QUOTES in
 * src/apply.c; _record_quotes() takes every other case): an answer that is
 * the batch's only one of its order and tracking number, whose fees are a
 * list of objects with a type and an amount, all in one currency known to
 * shipsync.currency, no two of one canonical type and key.  One row per
 * line of each such answer (ord and i count from 1), with the answer's
 * estimate (refunds counted against it) and line count.  When the
 * statement parsed, unnested, joined and grouped them itself, it cost 179
 * thousand instructions an answer; 134 with this.
 */
CREATE FUNCTION @extschema@._first_quote_lines(bids integer[], oks text[], pids integer[],
	tns text[], fees text[])
RETURNS TABLE (ord bigint, i bigint, binding_id integer, order_key text, provider_id integer,
	tracking_number text, fee_type text, fee_key text, raw_type text, amount numeric,
	currency text, estimated numeric, lines bigint)
AS 'MODULE_PATHNAME', 'shipsync_first_quote_lines'
LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@._first_quote_lines(integer[], text[], integer[], text[], text[]) IS
	'Internal (the dispatcher''s apply): the fee lines of the first quotes of a batch of created orders that the apply records in one statement, by position in the arrays; every other answer has no row and goes to _record_quotes().';
REVOKE ALL ON FUNCTION @extschema@._first_quote_lines(integer[], text[], integer[], text[], text[]) FROM PUBLIC;

------------------------------------------------------------------------------
-- The rows of parallel arrays in one pass (issue 13)
------------------------------------------------------------------------------
-- unnest() of n arrays is n functions to PostgreSQL, each filling a tuple
-- store of its own: the workers' set-based statements read their batches
-- through this one instead.  ROWS 10 is what the planner assumes of
-- unnest() of a parameter, so the plans stay as they were.
CREATE FUNCTION @extschema@._rows(VARIADIC "any")
RETURNS SETOF record
LANGUAGE C IMMUTABLE PARALLEL SAFE COST 1 ROWS 10
AS 'MODULE_PATHNAME', 'shipsync_rows';
COMMENT ON FUNCTION @extschema@._rows(VARIADIC "any") IS
	'Internal (the workers'' set-based statements): the rows of parallel arrays, as unnest() of several arrays gives them, in one pass; called with a column definition list of the arrays'' element types.';
REVOKE ALL ON FUNCTION @extschema@._rows(VARIADIC "any") FROM PUBLIC;

------------------------------------------------------------------------------
-- Statements superseding statements (review of the fees)
------------------------------------------------------------------------------
-- The newest statement of a period is the carrier's word line by line: a
-- line it bills again comes back even when an earlier version said the
-- same; a line it bills unchanged becomes its own, so that a correction
-- withdraws it and its lines add up to it; withdrawal reaches the lines of
-- every earlier statement of the period, but not those of the waybills of
-- skipped lines (held).  A bill in another currency than the quote is no
-- fee total, and a withdrawn unknown waybill no difference.
DROP FUNCTION @extschema@._store_fees(text, bigint, bigint, text, integer[], integer[], text[],
	text[], text[], numeric[], text[], text[], text[], text[], numeric[], text[], timestamptz[]);
/*
 * Store one batch of fee lines and write the totals: the shared step of
 * every source (src/fees.c).  Arrays are parallel, one element per line;
 * bids/oks name the order when the caller knows it (create responses),
 * else the line is matched by its tracking number, or parked.  Lines of a
 * tracking number in this batch that were parked before are matched first.
 * Its locks are _lock_fees()'s (a statement takes its provider whole).
 *
 * A statement supersedes line by line: a line it bills takes its values
 * (even one an earlier version already had: the later statement is the
 * carrier's word), and one it bills unchanged is still marked as its own,
 * so that a statement's lines add up to it.  With replaces, the lines of
 * the earlier statements of its period and account which this one does
 * not bill are withdrawn (amount 0, adjusted), except those of the
 * waybills in held (its skipped lines'), and none at all when held has a
 * NULL (a skipped line whose waybill could not be read).  Returns the
 * counts, then one row per order whose fee_total changed and is written
 * back.
 */
CREATE FUNCTION @extschema@._store_fees(src text, stmt bigint, replaces bigint, who text,
	pids integer[], bids integer[], oks text[], tns text[], codes text[], amounts numeric[],
	currencies text[], fkeys text[], settlements text[], payers text[], weights numeric[],
	states text[], ats timestamptz[], held text[] DEFAULT NULL)
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	n_in bigint := coalesce(array_length(tns, 1), 0);
	n_new bigint;
	n_rev bigint;
	n_park bigint;
	n_matched bigint := 0;
	n_withdrawn bigint := 0;
	tb integer[];
	tk text[];
BEGIN
	PERFORM @extschema@._lock_fees(pids, tns, src = 'statement');

	SELECT m.n, m.tb, m.tk INTO n_matched, tb, tk
	FROM @extschema@._match_parked_fees(pids, tns) m;

	WITH inc AS (
		SELECT u.ord, u.pid, u.bid, u.ok, u.tn, u.code, u.amount, u.cur, u.fkey, u.settle,
			   u.payer, u.weight, u.st, u.at,
			   coalesce(tm.fee_type, ft.name, 'other') AS fee_type
		FROM unnest(pids, bids, oks, tns, codes, amounts, currencies, fkeys, settlements, payers,
					weights, states, ats)
			 WITH ORDINALITY AS u(pid, bid, ok, tn, code, amount, cur, fkey, settle, payer,
								  weight, st, at, ord)
		JOIN @extschema@.provider p ON p.provider_id = u.pid
		LEFT JOIN @extschema@.fee_type_map tm
			   ON tm.profile = coalesce(p.options->>'profile', p.dialect) AND tm.code = u.code
		LEFT JOIN @extschema@.fee_type ft ON ft.name = lower(u.code)),
	-- a line without a key of the carrier: the first of its type in this
	-- notice has key '', the next '#2', ...; the same line twice: the last.
	-- Grouped and sorted bytewise (COLLATE "C"): the groups are the same
	-- under any deterministic collation, and a statement sorts 100,000
	-- lines here twice, where strcoll() cost more than the rest of the sort
	keyed AS (
		SELECT DISTINCT ON (y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C") y.*
		FROM (SELECT inc.*,
					 CASE WHEN inc.fkey IS NOT NULL THEN inc.fkey
						  WHEN row_number() OVER w = 1 THEN ''
						  ELSE '#' || row_number() OVER w END AS k
			  FROM inc
			  WINDOW w AS (PARTITION BY inc.pid, inc.tn COLLATE "C", inc.fee_type COLLATE "C", inc.fkey IS NULL
						   ORDER BY inc.ord)) y
		ORDER BY y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C", y.ord DESC),
	ship AS (
		SELECT DISTINCT ON (s.provider_id, s.tracking_number) s.provider_id, s.tracking_number,
			   s.binding_id, s.order_key
		FROM @extschema@.shipment s
		WHERE (s.provider_id, s.tracking_number) IN
			  (SELECT keyed.pid, keyed.tn FROM keyed WHERE keyed.bid IS NULL)
		ORDER BY s.provider_id, s.tracking_number, s.created_at DESC),
	up AS (
		INSERT INTO @extschema@.fee_line AS f (provider_id, tracking_number, fee_type, fee_key,
			quote, binding_id, order_key, raw_type, amount, currency, settlement, payer,
			billed_weight_kg, state, source, statement_id, occurred_at, recorded_by)
		SELECT k.pid, k.tn, k.fee_type, k.k, src = 'create',
			   coalesce(k.bid, ship.binding_id), coalesce(k.ok, ship.order_key),
			   k.code, k.amount, k.cur, k.settle, k.payer, k.weight,
			   coalesce(k.st, CASE WHEN src = 'create' THEN 'estimated' ELSE 'charged' END),
			   src, stmt, k.at, who
		FROM keyed k
		LEFT JOIN ship ON ship.provider_id = k.pid AND ship.tracking_number = k.tn
		ORDER BY k.ord
		ON CONFLICT (provider_id, tracking_number, fee_type, fee_key, quote) DO UPDATE SET
			raw_type = EXCLUDED.raw_type, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
			settlement = coalesce(EXCLUDED.settlement, f.settlement),
			payer = coalesce(EXCLUDED.payer, f.payer),
			billed_weight_kg = coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg),
			state = EXCLUDED.state, source = EXCLUDED.source, statement_id = EXCLUDED.statement_id,
			occurred_at = coalesce(EXCLUDED.occurred_at, f.occurred_at),
			recorded_by = EXCLUDED.recorded_by,
			binding_id = coalesce(f.binding_id, EXCLUDED.binding_id),
			order_key = coalesce(f.order_key, EXCLUDED.order_key)
		-- a change, not older than what the line says now, and, but from
		-- a statement, not a notice seen before (a late duplicate of a
		-- revised line); own below is the complement, for statements
		WHERE (f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
			  IS DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency, EXCLUDED.state,
								coalesce(EXCLUDED.settlement, f.settlement),
								coalesce(EXCLUDED.payer, f.payer),
								coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg))
		  AND (EXCLUDED.occurred_at IS NULL OR f.occurred_at IS NULL
			   OR EXCLUDED.occurred_at >= f.occurred_at)
		  AND (src = 'statement'
			   OR NOT EXISTS (SELECT 1 FROM @extschema@.fee_line_history h
							  WHERE h.fee_line_id = f.fee_line_id
								AND (h.amount, h.currency, h.state, h.occurred_at)
									IS NOT DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency,
														  EXCLUDED.state, EXCLUDED.occurred_at)))
		RETURNING f.xmax = 0 AS inserted, f.binding_id, f.order_key),
	-- a statement's lines it bills as they are: its own from now on (no
	-- revision: nothing they say changes), so that a later correction
	-- withdraws them and "does the statement add up?" counts them.  After
	-- up has run to its end (the one-time filter reads all of it): up
	-- meeting a row own had changed in this command would be an error
	own AS (
		UPDATE @extschema@.fee_line f SET statement_id = stmt
		  FROM keyed k
		 WHERE (SELECT count(*) FROM up) >= 0
		   AND src = 'statement' AND f.provider_id = k.pid AND f.tracking_number = k.tn
		   AND f.fee_type = k.fee_type AND f.fee_key = k.k AND NOT f.quote
		   AND f.statement_id IS DISTINCT FROM stmt
		   AND NOT ((f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
					IS DISTINCT FROM (k.amount, k.cur, coalesce(k.st, 'charged'),
									  coalesce(k.settle, f.settlement),
									  coalesce(k.payer, f.payer),
									  coalesce(k.weight, f.billed_weight_kg))
					AND (k.at IS NULL OR f.occurred_at IS NULL OR k.at >= f.occurred_at))
		RETURNING 1),
	-- a corrected statement: what an earlier statement of its period and
	-- account billed and this one does not (neither among its lines nor,
	-- held, among those it skipped)
	wd AS (
		UPDATE @extschema@.fee_line f
		   SET amount = 0, state = 'adjusted', source = 'statement', statement_id = stmt,
			   recorded_by = who
		 WHERE replaces IS NOT NULL AND NOT f.quote
		   AND f.statement_id IN (SELECT e.statement_id
								  FROM @extschema@.statement e
								  JOIN @extschema@.statement c ON c.statement_id = stmt
								  WHERE e.provider_id = c.provider_id AND e.period = c.period
									AND e.account IS NOT DISTINCT FROM c.account
									AND e.statement_id <> stmt)
		   AND (f.amount <> 0 OR f.state <> 'adjusted')
		   AND NOT EXISTS (SELECT 1 FROM keyed k
						   WHERE k.pid = f.provider_id AND k.tn = f.tracking_number
							 AND k.fee_type = f.fee_type AND k.k = f.fee_key)
		   AND (held IS NULL OR (array_position(held, NULL) IS NULL
								 AND f.tracking_number <> ALL (held)))
		RETURNING f.binding_id, f.order_key)
	SELECT (SELECT count(*) FROM up WHERE up.inserted),
		   (SELECT count(*) FROM up WHERE NOT up.inserted),
		   (SELECT count(*) FROM up WHERE up.binding_id IS NULL),
		   (SELECT count(*) FROM wd),
		   coalesce(tb, '{}') || coalesce((SELECT array_agg(x.binding_id) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd) x), '{}'),
		   coalesce(tk, '{}') || coalesce((SELECT array_agg(x.order_key) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd) x), '{}')
	INTO n_new, n_rev, n_park, n_withdrawn, tb, tk;

	kind := 'new'; n := n_new; RETURN NEXT;
	kind := 'revised'; n := n_rev; RETURN NEXT;
	kind := 'duplicate'; n := n_in - n_new - n_rev; RETURN NEXT;
	kind := 'unmatched'; n := n_park; RETURN NEXT;
	kind := 'matched'; n := n_matched; RETURN NEXT;
	kind := 'withdrawn'; n := n_withdrawn; RETURN NEXT;
	n := NULL;

	RETURN QUERY SELECT * FROM @extschema@._fee_totals(tb, tk);
END
$$;
REVOKE ALL ON FUNCTION @extschema@._store_fees(text, bigint, bigint, text, integer[], integer[],
	text[], text[], text[], numeric[], text[], text[], text[], text[], numeric[], text[],
	timestamptz[], text[]) FROM PUBLIC;

/*
 * For the given orders, in a statement of its own (it sees the lines just
 * stored): their rows of fee_sum made again, and the fee_total rule -- the
 * bill's lines where the order has any, otherwise the quote's, net of
 * refunds, when they share one currency (a bill and a quote in a currency
 * count as one when they are in the same).  The shipment of the binding's
 * provider then carries the total, and the order rows whose binding writes
 * fee_total back are returned; an order whose lines mix currencies keeps
 * its total and gets one open ticket of kind fee_currency_mixed, resolved
 * when they agree again.
 */
CREATE OR REPLACE FUNCTION @extschema@._fee_totals(tb integer[], tk text[])
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	-- one join and one aggregate for all the orders (a statement touches
	-- tens of thousands), min <> max for "more than one currency"
	RETURN QUERY
	WITH t AS (
		SELECT DISTINCT x.b, x.k FROM unnest(tb, tk) AS x(b, k) WHERE x.b IS NOT NULL),
	-- a quote counts while it is the quote of the order's shipment: an
	-- order shipped again under its key (its shipment row now holds
	-- another waybill) is quoted once, not twice; bills all count
	per AS MATERIALIZED (
		SELECT l.binding_id AS b, l.order_key AS k, l.provider_id AS pid, l.currency AS cur,
			   coalesce(sum(CASE WHEN l.fee_type = 'refund' THEN -abs(l.amount) ELSE l.amount END)
					FILTER (WHERE l.quote AND q.current), 0) AS est,
			   coalesce(sum(l.amount) FILTER (WHERE NOT l.quote AND l.state <> 'refunded'
											  AND l.fee_type <> 'refund'), 0) AS chg,
			   coalesce(sum(abs(l.amount)) FILTER (WHERE NOT l.quote
					AND (l.state = 'refunded' OR l.fee_type = 'refund')), 0) AS ref,
			   count(*) FILTER (WHERE l.quote AND q.current) AS nq,
			   count(*) FILTER (WHERE NOT l.quote) AS nb,
			   max(l.recorded_at) AS last
		FROM @extschema@.fee_line l
		JOIN t ON l.binding_id = t.b AND l.order_key = t.k
		CROSS JOIN LATERAL (
			SELECT NOT l.quote OR coalesce(
				(SELECT s.tracking_number FROM @extschema@.shipment s
				  WHERE s.binding_id = l.binding_id AND s.order_key = l.order_key
					AND s.provider_id = l.provider_id) = l.tracking_number, true) AS current) q
		GROUP BY l.binding_id, l.order_key, l.provider_id, l.currency),
	kept AS (
		INSERT INTO @extschema@.fee_sum AS fs (binding_id, order_key, provider_id, currency,
			estimated, charged, refunded, quote_lines, bill_lines, last_change)
		SELECT per.b, per.k, per.pid, per.cur, per.est, per.chg, per.ref, per.nq, per.nb, per.last
		FROM per
		ON CONFLICT ON CONSTRAINT fee_sum_pkey DO UPDATE SET
			estimated = EXCLUDED.estimated, charged = EXCLUDED.charged,
			refunded = EXCLUDED.refunded, quote_lines = EXCLUDED.quote_lines,
			bill_lines = EXCLUDED.bill_lines, last_change = EXCLUDED.last_change
		WHERE (fs.estimated, fs.charged, fs.refunded, fs.quote_lines, fs.bill_lines, fs.last_change)
			  IS DISTINCT FROM (EXCLUDED.estimated, EXCLUDED.charged, EXCLUDED.refunded,
								EXCLUDED.quote_lines, EXCLUDED.bill_lines, EXCLUDED.last_change)
		RETURNING 1),
	-- a sum whose provider and currency no line has any more; looked up
	-- in fee_line by its order index, not in per: an anti-join against the
	-- CTE scanned all of per for every sum (the planner cannot hash a
	-- generic plan's guess of one row), 8,000 comparisons a batch of 128
	gone AS (
		DELETE FROM @extschema@.fee_sum fs USING t
		 WHERE fs.binding_id = t.b AND fs.order_key = t.k
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.fee_line l
						   WHERE l.binding_id = fs.binding_id AND l.order_key = fs.order_key
							 AND l.provider_id = fs.provider_id AND l.currency = fs.currency)
		RETURNING 1),
	ord AS (
		SELECT per.b, per.k, sum(per.nb) > 0 AS billed,
			   min(per.cur) FILTER (WHERE per.nb > 0) AS lo_b,
			   max(per.cur) FILTER (WHERE per.nb > 0) AS hi_b,
			   min(per.cur) FILTER (WHERE per.nq > 0) AS lo_q,
			   max(per.cur) FILTER (WHERE per.nq > 0) AS hi_q,
			   -- quoted in a currency (XXX: the answer named none)
			   min(per.cur) FILTER (WHERE per.nq > 0 AND per.cur <> 'XXX') AS lo_qc,
			   max(per.cur) FILTER (WHERE per.nq > 0 AND per.cur <> 'XXX') AS hi_qc,
			   sum(per.chg - per.ref) FILTER (WHERE per.nb > 0) AS tot_b,
			   sum(per.est) FILTER (WHERE per.nq > 0) AS tot_q
		FROM per GROUP BY per.b, per.k),
	-- one currency: the bill's lines in one, and a quote in a currency in
	-- that one too (a bill in dollars of a quote in yuan is no total)
	tot AS (
		SELECT ord.b, ord.k, bb.provider_id AS pid, bb.writeback ? 'fee_total' AS wb,
			   CASE WHEN ord.billed
					THEN ord.lo_b = ord.hi_b AND coalesce(ord.lo_qc = ord.lo_b AND ord.hi_qc = ord.lo_b, true)
					ELSE ord.lo_q = ord.hi_q END AS one,
			   CASE WHEN ord.billed THEN ord.tot_b ELSE ord.tot_q END AS total
		FROM ord JOIN @extschema@.binding bb ON bb.binding_id = ord.b),
	sh AS (
		UPDATE @extschema@.shipment s SET fee_total = tot.total, updated_at = now()
		  FROM tot
		 WHERE tot.one AND s.binding_id = tot.b AND s.order_key = tot.k
		   AND s.provider_id = tot.pid AND s.fee_total IS DISTINCT FROM tot.total
		RETURNING s.binding_id, s.order_key, s.fee_total, tot.wb),
	mixed AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, provider_id, detail)
		SELECT 'fee_currency_mixed', tot.b, tot.k, tot.pid,
			   format('the fees of order %s are in %s: its fee_total is left as it was', tot.k,
					  (SELECT string_agg(DISTINCT per.cur, ', ') FROM per
					   WHERE per.b = tot.b AND per.k = tot.k))
		FROM tot
		WHERE NOT tot.one
		  AND NOT EXISTS (SELECT 1 FROM @extschema@.exception_ticket x
						  WHERE x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
							AND x.order_key = tot.k AND x.resolved_at IS NULL)
		RETURNING 1),
	agreed AS (
		UPDATE @extschema@.exception_ticket x SET resolved_at = now()
		  FROM tot
		 WHERE tot.one AND x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
		   AND x.order_key = tot.k AND x.resolved_at IS NULL
		RETURNING 1)
	-- (kept, gone, mixed and agreed run whether or not they are read)
	SELECT 'writeback'::text, NULL::bigint, sh.binding_id, sh.order_key, sh.fee_total
	FROM sh WHERE sh.wb;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._settlement()
RETURNS TABLE (provider_id integer, month date, currency text, shipments bigint,
			   estimated numeric, charged numeric, refunded numeric, unbilled bigint,
			   unknown_waybills bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET work_mem = '64MB'
AS $$
	SELECT r.provider_id, r.month, r.currency, sum(r.shipments)::bigint, sum(r.estimated),
		   sum(r.charged), sum(r.refunded), sum(r.unbilled)::bigint, sum(r.unknown)::bigint
	FROM (-- shipments, by the month they were created: with their sums per
		  -- currency, or (those of a shipping provider) without any
		  SELECT s.provider_id, date_trunc('month', s.created_at)::date AS month,
				 f.currency, 1 AS shipments, coalesce(f.estimated, 0) AS estimated,
				 coalesce(f.charged, 0) AS charged, coalesce(f.refunded, 0) AS refunded,
				 CASE WHEN coalesce(f.bill_lines, 0) = 0 AND s.status <> 'cancelled'
					  THEN 1 ELSE 0 END AS unbilled,
				 0 AS unknown
		  FROM @extschema@.shipment s
		  JOIN @extschema@.binding b ON b.binding_id = s.binding_id
		  LEFT JOIN @extschema@.fee_sum f
			ON f.binding_id = s.binding_id AND f.order_key = s.order_key
		   AND f.provider_id = s.provider_id
		  WHERE f.binding_id IS NOT NULL OR s.provider_id = b.provider_id
		  UNION ALL
		  -- billed waybills no shipment has: by the statement's month, else the line's
		  SELECT u.provider_id, u.month, u.currency, 0, 0, u.charged, u.refunded, 0, 1
		  FROM (SELECT l.provider_id, l.tracking_number, l.currency,
					   min(coalesce(st.period, date_trunc('month',
						   coalesce(l.occurred_at, l.recorded_at))::date)) AS month,
					   coalesce(sum(l.amount) FILTER (WHERE l.state <> 'refunded'
						   AND l.fee_type <> 'refund'), 0) AS charged,
					   coalesce(sum(abs(l.amount)) FILTER (WHERE
						   l.state = 'refunded' OR l.fee_type = 'refund'), 0) AS refunded
				FROM @extschema@.fee_line l
				LEFT JOIN @extschema@.statement st ON st.statement_id = l.statement_id
				WHERE l.binding_id IS NULL AND NOT l.quote
				  AND NOT (l.state = 'adjusted' AND l.amount = 0 AND l.source = 'statement')
				GROUP BY l.provider_id, l.tracking_number, l.currency) u) r
	GROUP BY r.provider_id, r.month, r.currency
$$;

CREATE OR REPLACE VIEW @extschema@.fee_difference AS
WITH opts AS (
	SELECT p.provider_id, p.name,
		   coalesce(@extschema@._decimal_or_null(p.options->'fee_tolerance'->'abs'), 0.01) AS tol_abs,
		   coalesce(@extschema@._decimal_or_null(p.options->'fee_tolerance'->'pct'), 0) AS tol_pct,
		   coalesce(@extschema@._interval_or_null(p.options->>'unbilled_after'), interval '45 days') AS unbilled_after
	FROM @extschema@.provider p)
-- the bill differs from the quote beyond the tolerance
SELECT 'amount_mismatch'::text AS kind, o.name AS provider, f.binding_id, b.tbl, f.order_key,
	   s.tracking_number, NULL::text AS fee_type, f.currency, f.estimated,
	   f.charged - f.refunded AS billed, f.charged - f.refunded - f.estimated AS difference,
	   pg_catalog.format('billed %s %s against a quote of %s', f.charged - f.refunded, f.currency,
						 f.estimated) AS detail
FROM @extschema@.fee_sum f
JOIN opts o ON o.provider_id = f.provider_id
JOIN @extschema@.binding b ON b.binding_id = f.binding_id
JOIN @extschema@.shipment s
  ON s.binding_id = f.binding_id AND s.order_key = f.order_key AND s.provider_id = f.provider_id
WHERE f.quote_lines > 0 AND f.bill_lines > 0
  AND pg_catalog.abs(f.charged - f.refunded - f.estimated)
	  OPERATOR(pg_catalog.>) GREATEST(o.tol_abs, o.tol_pct / 100 * pg_catalog.abs(f.estimated))
UNION ALL
-- billed waybills that no shipment matches
SELECT 'unknown_waybill', o.name, NULL, NULL, NULL, l.tracking_number, NULL, l.currency, NULL,
	   pg_catalog.sum(CASE WHEN l.state = 'refunded' OR l.fee_type = 'refund'
						   THEN -pg_catalog.abs(l.amount) ELSE l.amount END),
	   NULL,
	   pg_catalog.format('%s bill lines for a waybill no shipment has', pg_catalog.count(*))
FROM @extschema@.fee_line l
JOIN opts o ON o.provider_id = l.provider_id
WHERE l.binding_id IS NULL AND NOT l.quote
  -- (a line a corrected statement withdrew is billed no more)
  AND NOT (l.state = 'adjusted' AND l.amount = 0 AND l.source = 'statement')
GROUP BY o.name, l.tracking_number, l.currency
UNION ALL
-- delivered longer than unbilled_after ago, and no bill line
SELECT 'unbilled', o.name, s.binding_id, b.tbl, s.order_key, s.tracking_number, NULL, NULL,
	   NULL, NULL, NULL,
	   pg_catalog.format('delivered at %s, not billed after %s', d.at, o.unbilled_after)
FROM (SELECT e.binding_id, e.order_key, pg_catalog.min(e.occurred_at) AS at
	  FROM @extschema@.tracking_event e
	  WHERE e.status = 'delivered'
	  GROUP BY e.binding_id, e.order_key) d
JOIN @extschema@.binding b ON b.binding_id = d.binding_id
JOIN @extschema@.shipment s
  ON s.binding_id = d.binding_id AND s.order_key = d.order_key AND s.provider_id = b.provider_id
JOIN opts o ON o.provider_id = s.provider_id
WHERE d.at OPERATOR(pg_catalog.<) pg_catalog.now() - o.unbilled_after
  AND NOT EXISTS (SELECT 1 FROM @extschema@.fee_line l
				  WHERE l.binding_id = s.binding_id AND l.order_key = s.order_key
					AND l.provider_id = s.provider_id AND NOT l.quote)
UNION ALL
-- one waybill charged twice for one fee (the same type, under the same code)
SELECT 'duplicate_charge', o.name, pg_catalog.min(l.binding_id), NULL, pg_catalog.min(l.order_key),
	   l.tracking_number, l.fee_type, l.currency, NULL, pg_catalog.sum(l.amount), NULL,
	   pg_catalog.format('%s charged lines of %s (keys %s)', pg_catalog.count(*), pg_catalog.min(l.raw_type),
						 pg_catalog.string_agg(pg_catalog.quote_literal(l.fee_key), ', ' ORDER BY l.fee_key))
FROM @extschema@.fee_line l
JOIN opts o ON o.provider_id = l.provider_id
WHERE NOT l.quote AND l.state = 'charged'
GROUP BY o.name, l.tracking_number, l.fee_type, pg_catalog.lower(l.raw_type), l.currency
HAVING pg_catalog.count(*) > 1;

------------------------------------------------------------------------------
-- What comes back lands right (review of tracking and write-back)
------------------------------------------------------------------------------
-- A shipment's status is folded from the events of its own waybill: an
-- order shipped again under its key took the old waybill's last word
-- (returned, delivered) as the new shipment's.
CREATE OR REPLACE FUNCTION @extschema@._apply_tracking(pid integer, prof text, ttl_s integer,
	keys text[], tns text[], raws text[], details text[], ats timestamptz[],
	locs text[], descrs text[])
RETURNS TABLE (kind text, binding_id integer, order_key text, tracking_number text,
			   old_status text, new_status text, n bigint, tbl text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n_new bigint;
	n_park bigint;
	n_matched bigint;
	n_expired bigint;
	bids integer[];
	oks text[];
	has_parked boolean;
BEGIN
	n_expired := @extschema@._expire_unmatched(pid);

	-- Serialise with every other transaction adding events for the same
	-- tracking numbers of this provider: a transaction-level advisory lock
	-- on (provider, hash of the tracking number), taken in one statement in
	-- a fixed order, before any event is read or written.  The fold below, a
	-- later statement with a snapshot of its own, then sees every event
	-- committed before it.  (Row locks on the shipments did the same at the
	-- cost of a WAL record and a dirtied page per shipment: 14% of ingest.)
	has_parked := EXISTS (SELECT 1 FROM @extschema@.unmatched_event u WHERE u.provider_id = pid);
	PERFORM pg_advisory_xact_lock(pid, x.h)
	   FROM (SELECT DISTINCT hashtext(y.t) AS h
			 FROM (SELECT unnest(tns) AS t
				   UNION ALL
				   SELECT u.tracking_number FROM @extschema@.unmatched_event u
				   WHERE has_parked AND u.provider_id = pid) y
			 ORDER BY 1) x;

	-- parked events whose shipment has appeared
	IF has_parked THEN
	-- a tracking number given to several shipments (carriers recycle
	-- them) goes to the newest
	WITH ship AS (
		SELECT DISTINCT ON (s.tracking_number) s.binding_id, s.order_key, s.tracking_number
		FROM @extschema@.shipment s
		WHERE s.provider_id = pid
		  AND s.tracking_number IN (SELECT u.tracking_number FROM @extschema@.unmatched_event u
									WHERE u.provider_id = pid)
		ORDER BY s.tracking_number, s.created_at DESC),
	moved AS (
		DELETE FROM @extschema@.unmatched_event u USING ship
		 WHERE u.provider_id = pid AND u.tracking_number = ship.tracking_number
		RETURNING u.*, ship.binding_id, ship.order_key),
	ins AS (
		INSERT INTO @extschema@.tracking_event AS e (provider_id, event_key, tracking_number,
			binding_id, order_key, occurred_at, status, raw_status, raw_detail, location,
			description, received_at)
		SELECT pid, m.event_key, m.tracking_number, m.binding_id, m.order_key, m.occurred_at,
			   coalesce(mm.status, gc.name, 'unknown'),
			   m.raw_status, m.raw_detail, m.location, m.description, m.received_at
		FROM moved m
		LEFT JOIN LATERAL (
			SELECT sm.status FROM @extschema@.status_map sm
			WHERE sm.profile = prof AND sm.raw_status IN (m.raw_status, m.raw_detail)
			  AND (sm.pattern IS NULL OR coalesce(m.description, '') ~ sm.pattern)
			ORDER BY sm.priority DESC, sm.pattern IS NOT NULL DESC, sm.raw_status = m.raw_status DESC
			LIMIT 1) mm ON true
		LEFT JOIN @extschema@.canonical_status gc ON prof = 'generic' AND gc.name = m.raw_status
		ORDER BY m.received_at, m.occurred_at
		ON CONFLICT (provider_id, event_key) DO NOTHING
		RETURNING e.binding_id, e.order_key)
	SELECT count(*), array_agg(ins.binding_id), array_agg(ins.order_key)
	INTO n_matched, bids, oks FROM ins;
	ELSE
		n_matched := 0;
	END IF;

	-- this batch: known shipments get events, the others are parked
	WITH ev AS (
		SELECT u.*
		FROM unnest(keys, tns, raws, details, ats, locs, descrs)
			 WITH ORDINALITY AS u(k, tn, raw, det, at, loc, descr, ord)),
	-- the map rows this batch can use, read once (none at all, usually, for
	-- the generic profile)
	cand AS MATERIALIZED (
		SELECT sm.raw_status, sm.pattern, sm.status, sm.priority
		FROM @extschema@.status_map sm
		WHERE sm.profile = prof
		  AND sm.raw_status IN (SELECT ev.raw FROM ev UNION SELECT ev.det FROM ev)),
	ship AS (
		SELECT DISTINCT ON (s.tracking_number) s.binding_id, s.order_key, s.tracking_number
		FROM @extschema@.shipment s
		WHERE s.provider_id = pid AND s.tracking_number IN (SELECT ev.tn FROM ev)
		ORDER BY s.tracking_number, s.created_at DESC),
	ins AS (
		INSERT INTO @extschema@.tracking_event AS e (provider_id, event_key, tracking_number,
			binding_id, order_key, occurred_at, status, raw_status, raw_detail, location,
			description)
		SELECT pid, ev.k, ev.tn, ship.binding_id, ship.order_key, ev.at,
			   coalesce(mm.status, gc.name, 'unknown'),
			   ev.raw, ev.det, ev.loc, ev.descr
		FROM ev JOIN ship ON ship.tracking_number = ev.tn
		LEFT JOIN LATERAL (
			SELECT sm.status FROM cand sm
			WHERE sm.raw_status IN (ev.raw, ev.det)
			  AND (sm.pattern IS NULL OR coalesce(ev.descr, '') ~ sm.pattern)
			ORDER BY sm.priority DESC, sm.pattern IS NOT NULL DESC, sm.raw_status = ev.raw DESC
			LIMIT 1) mm ON true
		LEFT JOIN @extschema@.canonical_status gc ON prof = 'generic' AND gc.name = ev.raw
		ORDER BY ev.ord
		ON CONFLICT (provider_id, event_key) DO NOTHING
		RETURNING e.binding_id, e.order_key),
	park AS (
		INSERT INTO @extschema@.unmatched_event AS x (provider_id, event_key, tracking_number,
			occurred_at, raw_status, raw_detail, location, description, expires_at)
		SELECT pid, ev.k, ev.tn, ev.at, ev.raw, ev.det, ev.loc, ev.descr,
			   now() + make_interval(secs => ttl_s)
		FROM ev
		WHERE NOT EXISTS (SELECT 1 FROM ship WHERE ship.tracking_number = ev.tn)
		ORDER BY ev.ord
		ON CONFLICT (provider_id, event_key) DO NOTHING
		RETURNING 1)
	SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM park),
		   coalesce(bids, '{}') || coalesce((SELECT array_agg(ins.binding_id) FROM ins), '{}'),
		   coalesce(oks, '{}') || coalesce((SELECT array_agg(ins.order_key) FROM ins), '{}')
	INTO n_new, n_park, bids, oks;

	kind := 'new'; n := n_new; RETURN NEXT;
	kind := 'duplicate'; n := coalesce(array_length(keys, 1), 0) - n_new - n_park; RETURN NEXT;
	kind := 'unmatched'; n := n_park; RETURN NEXT;
	kind := 'matched'; n := n_matched; RETURN NEXT;
	kind := 'expired'; n := n_expired; RETURN NEXT;
	n := NULL;

	-- the fold over each touched shipment's whole history, in event time:
	-- the events of its waybill, not those of an earlier shipment of the
	-- same order (deleted and inserted again, its key changed and changed
	-- back), whose last word (returned, delivered) is not the new one's
	RETURN QUERY
	WITH touched AS (
		SELECT DISTINCT t.bid, t.k FROM unnest(bids, oks) AS t(bid, k)),
	-- one index scan per shipment, whatever the statistics say
	f AS (
		SELECT touched.bid AS binding_id, touched.k AS order_key, h.st
		FROM touched
		JOIN @extschema@.shipment s
		  ON s.binding_id = touched.bid AND s.order_key = touched.k AND s.provider_id = pid
		CROSS JOIN LATERAL (
			SELECT @extschema@._status_fold(e.status, e.raw_status, c.rank, c.terminal,
											c.recoverable ORDER BY e.occurred_at, e.event_id) AS st
			FROM @extschema@.tracking_event e
			JOIN @extschema@.canonical_status c ON c.name = e.status
			WHERE e.binding_id = touched.bid AND e.order_key = touched.k
			  AND e.tracking_number = s.tracking_number) h),
	cur AS (
		SELECT s.binding_id, s.order_key, s.status AS old, f.st[1] AS st, f.st[2] AS raw
		FROM f JOIN @extschema@.shipment s
		  ON s.binding_id = f.binding_id AND s.order_key = f.order_key AND s.provider_id = pid
		LEFT JOIN @extschema@.canonical_status oc ON oc.name = s.status
		WHERE f.st IS NOT NULL AND NOT coalesce(oc.terminal, false)),
	upd AS (
		UPDATE @extschema@.shipment s
		   SET status = cur.st, raw_status = cur.raw, updated_at = now()
		  FROM cur
		 WHERE s.binding_id = cur.binding_id AND s.order_key = cur.order_key
		   AND s.provider_id = pid
		   AND (s.status IS DISTINCT FROM cur.st OR s.raw_status IS DISTINCT FROM cur.raw)
		RETURNING s.binding_id, s.order_key, s.tracking_number, cur.old, s.status)
	SELECT 'changed', upd.binding_id, upd.order_key, upd.tracking_number, upd.old, upd.status,
		   NULL::bigint, b.tbl::text
	FROM upd JOIN @extschema@.binding b ON b.binding_id = upd.binding_id
	WHERE upd.old IS DISTINCT FROM upd.status;
END
$$;

-- fee_total into a numeric or a text column only: an integer (or a float,
-- or money) rounded the amount without a word, and a text column could
-- not be attached though the documentation allowed it.
/*
 * attach()'s option adopt: the binding of a detached table of the same
 * provider that tbl replaces (rebuilt, restored, made partitioned), or
 * NULL.  The replaced table, if it is still there, must be the caller's.
 */
CREATE FUNCTION @extschema@._check_adopt(opts jsonb, pid integer, tbl regclass)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	old @extschema@.binding;
BEGIN
	IF NOT opts ? 'adopt' OR jsonb_typeof(opts->'adopt') = 'null' THEN
		RETURN NULL;
	END IF;
	IF jsonb_typeof(opts->'adopt') <> 'number' OR (opts->>'adopt') !~ '^[0-9]{1,9}$' THEN
		RAISE EXCEPTION 'option "adopt" must be a binding id'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given is %s.', opts->'adopt'),
				  HINT = 'For example {"adopt": 3}: see SELECT binding_id, tbl, active FROM shipsync.binding.';
	END IF;
	SELECT * INTO old FROM @extschema@.binding b WHERE b.binding_id = (opts->>'adopt')::integer;
	IF NOT FOUND OR old.active OR old.provider_id <> pid OR old.tbl = tbl
	   OR old.options ? 'adopted_by' THEN
		RAISE EXCEPTION 'binding % cannot be adopted by table %', opts->>'adopt', tbl
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = CASE WHEN NOT FOUND THEN 'There is no such binding.'
								WHEN old.active THEN 'Its table is attached: detach it first.'
								WHEN old.provider_id <> pid THEN 'It is a binding of another provider.'
								WHEN old.tbl = tbl THEN 'It is this table''s own binding.'
								ELSE format('Binding %s adopted it already.', old.options->>'adopted_by') END,
				  HINT = 'Adopt the detached binding of the table this one replaces, of the same provider.';
	END IF;
	IF EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = old.tbl
			   AND NOT pg_has_role(session_user, c.relowner, 'USAGE')) THEN
		RAISE EXCEPTION 'must be owner of table %, whose binding % is to be adopted', old.tbl, old.binding_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN old.binding_id;
END
$$;
COMMENT ON FUNCTION @extschema@._check_adopt(jsonb, integer, regclass) IS
	'Internal (attach()): the binding that option adopt names, checked: detached, of the same provider, another table''s, not adopted yet, and the caller''s if its table is still there.';
REVOKE ALL ON FUNCTION @extschema@._check_adopt(jsonb, integer, regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@.attach(tbl regclass, provider text, key_column name DEFAULT NULL,
								   writeback jsonb DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pid integer;
	bid integer;
	keycol name := key_column;
	keytype text;
	wb jsonb := coalesce(writeback, '{}');
	opts jsonb := coalesce(options, '{}');
	f text;
	col text;
	coltype text;
	colcat "char";
	colnumeric boolean;
	sets text[] := '{}';
	wbcols text[] := '{}';
	render text;
	wbsql text;
	cancel_when text;
	trigargs text;
	relkind "char";
	adopt integer;
	gone record;
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.relkind INTO relkind FROM pg_class c WHERE c.oid = tbl;
	IF relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '"%" is not a table', tbl
			USING ERRCODE = 'wrong_object_type',
				  HINT = 'Attach an ordinary or partitioned table.';
	END IF;
	IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'The dispatcher reads and writes the table with its owner''s rights.';
	END IF;
	SELECT p.provider_id INTO pid FROM @extschema@.provider p WHERE p.name = attach.provider;
	IF pid IS NULL THEN
		RAISE EXCEPTION 'provider "%" does not exist', coalesce(provider, '')
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it first with shipsync.create_provider().';
	END IF;
	IF EXISTS (SELECT 1 FROM @extschema@.binding b WHERE b.tbl = attach.tbl AND b.active) THEN
		RAISE EXCEPTION 'table % is already attached', tbl
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Call shipsync.detach() first to attach it again.';
	END IF;
	PERFORM @extschema@._check_options(opts, ARRAY['cancel_when', 'validate', 'tracking_provider', 'pii', 'grace', 'created_at_column', 'adopt'], 'attach');
	adopt := @extschema@._check_adopt(opts, pid, tbl);
	PERFORM @extschema@._check_attach_options(opts, pid);
	PERFORM @extschema@._check_reconcile_options(opts, tbl);
	IF current_setting('server_encoding') NOT IN ('UTF8', 'SQL_ASCII') THEN
		RAISE EXCEPTION 'database encoding % cannot be sent as JSON', current_setting('server_encoding')
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Carriers read JSON as UTF-8, and requests are rendered in the database encoding.',
				  HINT = 'Keep the orders in a UTF8 database.';
	END IF;

	-- the key: given, or the single-column primary key
	IF keycol IS NULL THEN
		SELECT a.attname INTO keycol
		FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE i.indrelid = tbl AND i.indisprimary AND i.indnatts = 1;
		IF keycol IS NULL THEN
			RAISE EXCEPTION 'table % has no single-column primary key', tbl
				USING ERRCODE = 'invalid_table_definition',
					  HINT = 'Pass key_column => the column that identifies an order.';
		END IF;
	END IF;
	SELECT format_type(a.atttypid, a.atttypmod) INTO keytype
	FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = keycol AND a.attnum > 0 AND NOT a.attisdropped;
	IF keytype IS NULL THEN
		RAISE EXCEPTION 'column "%" of table % does not exist', keycol, tbl
			USING ERRCODE = 'undefined_column',
				  HINT = 'Pass key_column => the column that identifies an order.';
	END IF;

	-- write-back: shipment field -> order column
	IF jsonb_typeof(wb) <> 'object' THEN
		RAISE EXCEPTION 'writeback must be a JSON object of shipment fields to column names'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example {"tracking_number": "waybill_no"}.';
	END IF;
	FOR f, col IN SELECT key, value #>> '{}' FROM jsonb_each(wb) LOOP
		IF f NOT IN ('tracking_number', 'status', 'provider_shipment_id', 'label_url', 'fee_total') THEN
			RAISE EXCEPTION 'unknown write-back field "%"', f
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'Write-back fields: tracking_number, status, provider_shipment_id, label_url, fee_total.';
		END IF;
		SELECT format_type(a.atttypid, a.atttypmod) INTO coltype
		FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
		IF coltype IS NULL THEN
			RAISE EXCEPTION 'write-back column "%" of table % does not exist', coalesce(col, ''), tbl
				USING ERRCODE = 'undefined_column',
					  HINT = 'Add the column first, or fix the writeback map.';
		END IF;
		IF col = keycol THEN
			RAISE EXCEPTION 'the key column "%" cannot be a write-back column', col
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Write shipment fields into columns of their own.';
		END IF;
		-- a string type, or for fee_total numeric too (an integer, a float
		-- or money would round or blur the amount without a word)
		SELECT t.typcategory, t.oid = 'pg_catalog.numeric'::pg_catalog.regtype
		INTO colcat, colnumeric
		FROM pg_attribute a JOIN pg_type t
			ON t.oid = coalesce(nullif(
				(SELECT typbasetype FROM pg_type WHERE oid = a.atttypid), 0), a.atttypid)
		WHERE a.attrelid = tbl AND a.attname = col;
		IF colcat <> 'S' AND NOT (f = 'fee_total' AND colnumeric) THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = CASE WHEN f = 'fee_total' THEN 'fee_total is an amount with decimals (12.50, 3.125): a column of this type would round it or lose its exact value.'
								   ELSE format('%s is text.', f) END,
					  HINT = CASE WHEN f = 'fee_total' THEN 'Use a numeric or text column.'
								 ELSE 'Use a text or varchar column.' END;
		END IF;
		-- no explicit cast: assignment rules apply, so a tracking number too
		-- long for a varchar(n) column fails loudly instead of being cut (a
		-- fee_total into a string column is its text, as written)
		sets := sets || format(CASE WHEN f = 'fee_total' AND colcat = 'S'
									THEN '%I = COALESCE(shipsync_u.%I::pg_catalog.text, t.%I)'
									ELSE '%I = COALESCE(shipsync_u.%I, t.%I)' END, col, f, col);
		wbcols := wbcols || col;
	END LOOP;

	cancel_when := opts->>'cancel_when';
	IF cancel_when IS NOT NULL AND cancel_when ~ ';' THEN
		RAISE EXCEPTION 'option "cancel_when" must be one boolean expression'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example "status = ''cancelled''".';
	END IF;
	-- the restricted grammar, printed back with pg_catalog's operators:
	-- no function, operator or cast of the caller's is ever planned here
	IF cancel_when IS NOT NULL THEN
		cancel_when := @extschema@._cancel_when_sql(cancel_when);
	END IF;

	-- The row itself and its write-back columns: the dispatcher prints the
	-- request's body from the row (src/body.c: as json_build_object() and
	-- row_to_json() would, with the type lookups once a batch rather than
	-- once a column of every row) and keeps the row's digest
	-- (shipsync._row_digest), what reconciliation compares the order with
	-- later.  The row is t.*, never a bare t: a column named t would be
	-- taken instead.  Operators and types qualified: the dispatcher, render_request() and
	-- this function run these as the table's owner, each with a search_path
	-- of its own.  (unnest of several arrays is grammar: pg_catalog's.)
	render := format(
		'SELECT shipsync_u.shipsync_id, t.%1$I IS NOT NULL AS found,'
		' %4$s AS is_cancel, t.*::%2$s AS shipsync_row, %5$L::pg_catalog.text[] AS shipsync_skip'
		' FROM unnest($1::pg_catalog.int8[], $2::pg_catalog.text[])'
		' AS shipsync_u(shipsync_id, shipsync_key)'
		' LEFT JOIN %2$s AS t ON t.%1$I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%3$s',
		keycol, tbl, keytype,
		CASE WHEN cancel_when IS NULL THEN 'false'
			 ELSE format('COALESCE((%s), false)', cancel_when) END,
		ARRAY(SELECT c FROM unnest(wbcols) AS c ORDER BY 1));

	IF array_length(sets, 1) > 0 THEN
		wbsql := format(
			'UPDATE %s AS t SET %s'
			' FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.text[],'
			' $4::pg_catalog.text[], $5::pg_catalog.text[], $6::pg_catalog.numeric[])'
			' AS shipsync_u(shipsync_key, provider_shipment_id, tracking_number, status, label_url, fee_total)'
			' WHERE t.%I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%s',
			tbl, array_to_string(sets, ', '), keycol, keytype);
	END IF;

	-- prove both statements against the table now, not in the dispatcher,
	-- and with the rights the dispatcher will have: the table owner's
	BEGIN
		PERFORM @extschema@._explain_as_owner(tbl, render, '{int8[], text[]}');
		IF wbsql IS NOT NULL THEN
			PERFORM @extschema@._explain_as_owner(tbl, wbsql,
				'{text[], text[], text[], text[], text[], numeric[]}');
		END IF;
	EXCEPTION WHEN OTHERS THEN
		RAISE EXCEPTION 'cannot attach table %: %', tbl, SQLERRM
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Check option cancel_when and the writeback columns'' types.';
	END;

	INSERT INTO @extschema@.binding AS b (tbl, provider_id, key_column, writeback, options, render_sql, writeback_sql)
	VALUES (attach.tbl, pid, keycol, wb, opts, render, wbsql)
	ON CONFLICT ON CONSTRAINT binding_tbl_key DO UPDATE
	   SET provider_id = EXCLUDED.provider_id, key_column = EXCLUDED.key_column,
		   writeback = EXCLUDED.writeback, options = EXCLUDED.options,
		   render_sql = EXCLUDED.render_sql, writeback_sql = EXCLUDED.writeback_sql,
		   active = true, created_at = now(), created_by = session_user
	RETURNING b.binding_id INTO bid;

	-- the table replaces the one of binding adopt: what pg_shipsync knows
	-- of its orders (shipments, intents, events, fees, tickets) is this
	-- binding's now, so an order shipped before is updated, not created
	-- again.  Otherwise, a binding of this provider with shipments whose
	-- table is gone is said: were this table its successor, every update
	-- of an order shipped before would ship it again.
	IF adopt IS NOT NULL THEN
		UPDATE @extschema@.shipment x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.outbox x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.inbox x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.tracking_event x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_line x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_sum x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_pull x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.exception_ticket x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.binding x SET options = x.options || jsonb_build_object('adopted_by', bid)
		 WHERE x.binding_id = adopt;
	ELSE
		FOR gone IN
			SELECT b.binding_id, b.tbl::oid AS relid
			FROM @extschema@.binding b
			WHERE b.provider_id = pid AND NOT b.active AND b.binding_id <> bid
			  AND NOT b.options ? 'adopted_by'
			  AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = b.tbl)
			  AND EXISTS (SELECT 1 FROM @extschema@.shipment x WHERE x.binding_id = b.binding_id)
		LOOP
			RAISE WARNING 'binding % of provider "%" has shipments, and its table (oid %) is gone',
				gone.binding_id, provider, gone.relid
				USING DETAIL = format('Table %s is binding %s: an update of an order shipped under binding %s would be sent as a create.',
									  tbl, bid, gone.binding_id),
					  HINT = format('If %s replaces that table, detach it and attach it again with options {"adopt": %s}.',
									tbl, gone.binding_id);
		END LOOP;
	END IF;

	trigargs := array_to_string(ARRAY(SELECT quote_literal(x)
		FROM unnest(ARRAY[bid::text, pid::text, keycol::text] || wbcols) x), ', ');
	EXECUTE format('CREATE TRIGGER shipsync_capture AFTER INSERT OR UPDATE OR DELETE ON %s'
				   ' FOR EACH ROW EXECUTE FUNCTION @extschema@.capture(%s)', tbl, trigargs);
	IF opts->>'validate' = 'reject' THEN
		EXECUTE format('CREATE TRIGGER shipsync_validate AFTER INSERT OR UPDATE ON %s'
					   ' FOR EACH ROW EXECUTE FUNCTION @extschema@._validate(%L)', tbl, bid);
	END IF;
	PERFORM @extschema@._wake(true);
	RETURN bid;
END
$$;
COMMENT ON FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) IS
	'Attach a CRM table to a provider: installs the capture trigger. writeback maps tracking_number, status, provider_shipment_id, label_url, fee_total to columns; options: cancel_when (a boolean SQL expression over the row), validate (invalid, the default: an order missing required mapped fields becomes an invalid intent with a ticket; reject: its INSERT or UPDATE fails), tracking_provider (a provider of a tracking dialect where every new waybill is registered), pii (which columns of the generic body are personal: {"column": "name"|"phone"|"address"|"email"|null}), grace (reconciliation: how old an order without a shipment must be to be not_sent, default 10 minutes), created_at_column (the column that tells an order''s age), adopt (the binding of a table this one replaces: its shipments, intents, events, fees and tickets become this binding''s).';
ALTER FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) SET shipsync.audit_action = 'attach';

------------------------------------------------------------------------------
-- Order tables read by reconciliation and resync() only as their owner
------------------------------------------------------------------------------
-- _reconcile_crm() and _reconcile_carrier() run as the reconcile worker's
-- bootstrap superuser, and resync() as the extension's owner: they read the
-- order tables and cast order keys to the key column's type themselves, so
-- the check of a domain the table's owner gave its key column (or any other
-- code of the owner's reached there) ran as a superuser, every
-- shipsync.reconcile_interval.  They now read order tables only through
-- _select_as_owner(), which runs the statement as the table's owner in a
-- restricted operation (install/15_filter.sql, install/70_reconcile.sql).
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
REVOKE ALL ON FUNCTION @extschema@._select_as_owner_rows(internal) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._select_as_owner(regclass, text, text[], integer) FROM PUBLIC;
-- The CRM pass digests each row as the owner's statement yields it, rather
-- than keeping the whole row to digest afterwards.
CREATE FUNCTION @extschema@._select_digests_as_owner(tbl regclass, stmt text, keys text[], n integer,
	skip text[])
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'shipsync_select_digests_as_owner'
LANGUAGE C VOLATILE
SUPPORT @extschema@._select_as_owner_rows
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._select_digests_as_owner(regclass, text, text[], integer, text[]) IS
	'Internal: _select_as_owner() whose statement''s last column is an order row, returned as its digest (_row_digest(row, skip)), computed as the owner: reconciliation''s CRM pass.';
REVOKE ALL ON FUNCTION @extschema@._select_digests_as_owner(regclass, text, text[], integer, text[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@._reconcile_tables()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $$
BEGIN
	-- order_key is "C" as the ledger's is: merging probes this table's key
	-- with the ledger's keys, which an index of another collation cannot
	-- serve (a full scan of the findings for every open ticket)
	CREATE TEMP TABLE IF NOT EXISTS recon_found (
		kind			text NOT NULL,
		provider_id		integer,
		binding_id		integer,
		order_key		text COLLATE "C",
		subject			text,
		tracking_number text,
		chk				text NOT NULL,
		facts			jsonb,
		detail			text);
	CREATE UNIQUE INDEX IF NOT EXISTS recon_found_key ON pg_temp.recon_found
		(kind, (coalesce(provider_id, 0)), (coalesce(binding_id, 0)),
		 (coalesce(order_key, '')), (coalesce(subject, '')));
	-- per provider: the rows of the full join of its snapshot and our
	-- shipments that may hold a discrepancy
	CREATE TEMP TABLE IF NOT EXISTS recon_pair (
		provider_id		integer NOT NULL,
		c_id			text,
		c_ref			text,
		c_tn			text,
		c_status		text,
		c_canon			text,
		c_rank			integer,
		c_at			timestamptz,
		binding_id		integer,
		order_key		text,
		s_id			text,
		s_tn			text,
		s_status		text,
		s_rank			integer,
		s_terminal		boolean,
		s_updated		timestamptz);
	-- order references of the carrier's that no shipment of ours explains
	CREATE TEMP TABLE IF NOT EXISTS recon_ref (
		provider_id		integer NOT NULL,
		ref				text NOT NULL,
		binding_id		integer,
		PRIMARY KEY (provider_id, ref));
	CREATE TEMP TABLE IF NOT EXISTS recon_dup (
		provider_id		integer NOT NULL,
		order_ref		text NOT NULL,
		ids				text[],
		tns				text[]);
	CREATE TEMP TABLE IF NOT EXISTS recon_prepared (run_id bigint);
	-- the order rows of one binding, as its owner read them (_reconcile_crm)
	CREATE TEMP TABLE IF NOT EXISTS recon_orders (
		k				text COLLATE "C",
		o_tn			text,
		o_status		text,
		born			timestamptz,
		digest			bigint);
	TRUNCATE pg_temp.recon_found, pg_temp.recon_pair, pg_temp.recon_ref, pg_temp.recon_dup,
		pg_temp.recon_prepared, pg_temp.recon_orders;
END
$$;

/*
 * The CRM side of one binding: orders without a shipment and nothing on its
 * way (not_sent), written-back columns that differ from the shipment
 * (tracking_mismatch, status_mismatch), orders changed since their request
 * was sent (address_changed_after_send).  A full pass reads every order; an
 * incremental one, the orders changed since the last pass (their xmin is
 * not older than the horizon then saved), those whose shipment or stopped
 * intents changed, those with open tickets or tickets resolved since (a
 * problem resolved by hand but still there is reopened at once), and those
 * still waiting for a shipment (shipsync.reconcile_seen).
 *
 * The order table is read, and keys are cast to its key's type, only as
 * the table's owner (_select_as_owner): this function runs as a superuser,
 * and a domain's check, a type's functions or a row security policy of the
 * owner's must not.  The owner's statement returns each order's key, its
 * write-back columns, when it was made and the row itself; the rest is
 * joined here.
 */
-- (_reconcile_crm() as it ends up: a later section replaces it, below)

/*
 * The carrier's side of one provider, from the pairs _reconcile_prepare
 * kept: shipments of ours its list lacks, tracking numbers and statuses
 * that differ (statuses re-read: the worker has applied what it could),
 * shipments of its for orders we do not have or cancelled, and orders it
 * holds twice.  Order references no shipment of ours explains are looked up
 * in the provider's tables, one statement per table, as the table's owner
 * (_select_as_owner): by the table's key index where a reference can be a
 * key of its type, else a hash join.
 */
CREATE OR REPLACE FUNCTION @extschema@._reconcile_carrier(run bigint, pid integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b record;
	keyexpr text;
	refs text[];
BEGIN
	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
		chk, facts, detail)
	SELECT 'missing_at_carrier', pid, x.binding_id, x.order_key, x.s_tn, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.s_id, 'tracking_number', x.s_tn,
			   'status', x.s_status, 'updated_at', x.s_updated),
		   format('the carrier''s list has no shipment %s (tracking number %s) of order %s',
			   x.s_id, coalesce(x.s_tn, 'none'), x.order_key)
	  FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.c_id IS NULL
	ON CONFLICT DO NOTHING;

	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
		chk, facts, detail)
	SELECT 'tracking_mismatch', pid, x.binding_id, x.order_key, x.s_tn, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.s_id, 'ours', x.s_tn, 'carrier', x.c_tn),
		   format('shipment %s of order %s: our tracking number is %s, the carrier''s %s',
			   x.s_id, x.order_key, coalesce(x.s_tn, 'none'), x.c_tn)
	  FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.c_id IS NOT NULL AND x.s_id IS NOT NULL
	   AND x.c_tn IS NOT NULL AND x.c_tn IS DISTINCT FROM x.s_tn
	ON CONFLICT DO NOTHING;

	-- still behind after the carrier's statuses were applied: they could not be
	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
		chk, facts, detail)
	SELECT 'status_mismatch', pid, x.binding_id, x.order_key, s.tracking_number, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.s_id, 'ours', s.status,
			   'carrier', x.c_status, 'carrier_canonical', x.c_canon),
		   format('shipment %s of order %s is %s here and %s (%s) at the carrier, which could not be applied',
			   x.s_id, x.order_key, s.status, x.c_canon, x.c_status)
	  FROM pg_temp.recon_pair x
	  JOIN @extschema@.shipment s
		ON s.binding_id = x.binding_id AND s.order_key = x.order_key AND s.provider_id = pid
	  JOIN @extschema@.canonical_status cs ON cs.name = s.status
	 WHERE x.provider_id = pid AND x.c_id IS NOT NULL AND x.s_id IS NOT NULL
	   AND x.c_canon <> 'unknown' AND x.c_rank > cs.rank
	ON CONFLICT DO NOTHING;

	-- live at the carrier, cancelled here
	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, subject,
		tracking_number, chk, facts, detail)
	SELECT 'orphan_at_carrier', pid, x.binding_id, x.order_key, x.c_id, x.c_tn, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.c_id, 'order_ref', x.c_ref,
			   'tracking_number', x.c_tn, 'status', x.c_status, 'reason', 'order_cancelled'),
		   format('the carrier''s shipment %s is %s, but order %s was cancelled',
			   x.c_id, coalesce(x.c_status, 'live'), x.order_key)
	  FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.c_id IS NOT NULL AND x.s_id IS NOT NULL
	   AND x.s_status = 'cancelled' AND x.c_canon IS DISTINCT FROM 'cancelled'
	ON CONFLICT DO NOTHING;

	-- orders held twice (or more), cancelled shipments aside: one shipment
	-- of an order at most is ours, so every other one is among the pairs
	-- without a shipment of ours, and only their references are counted
	INSERT INTO pg_temp.recon_dup (provider_id, order_ref, ids, tns)
	SELECT pid, c.order_ref, array_agg(c.shipment_id ORDER BY c.shipment_id),
		   array_agg(c.tracking_number ORDER BY c.shipment_id)
	  FROM @extschema@.carrier_snapshot c
	 WHERE c.run_id = run AND c.provider_id = pid
	   AND c.canonical IS DISTINCT FROM 'cancelled'
	   AND c.order_ref IN (SELECT x.c_ref FROM pg_temp.recon_pair x
							WHERE x.provider_id = pid AND x.s_id IS NULL AND x.c_ref IS NOT NULL
							  AND x.c_canon IS DISTINCT FROM 'cancelled')
	 GROUP BY c.order_ref
	HAVING count(*) > 1;

	-- which orders do the unexplained references name?
	INSERT INTO pg_temp.recon_ref (provider_id, ref)
	SELECT pid, x.c_ref FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.s_id IS NULL AND x.c_ref IS NOT NULL
	   AND x.c_canon IS DISTINCT FROM 'cancelled'
	UNION
	SELECT pid, d.order_ref FROM pg_temp.recon_dup d WHERE d.provider_id = pid
	ON CONFLICT DO NOTHING;
	IF FOUND THEN
		ANALYZE pg_temp.recon_ref;
		FOR b IN SELECT x.binding_id, x.tbl, x.key_column, a.atttypid AS keytype
				   FROM @extschema@.binding x
				   JOIN pg_attribute a ON a.attrelid = x.tbl AND a.attname = x.key_column
				  WHERE x.provider_id = pid AND x.active ORDER BY x.binding_id LOOP
			-- a reference that can be a key of the column's type is looked up
			-- as one (the table's own index finds it: there are few); the
			-- key's text must still be the reference
			keyexpr := CASE b.keytype
				WHEN 'int2'::regtype THEN 'CASE WHEN f.ref ~ ''^-?[0-9]{1,5}$'' AND f.ref::numeric BETWEEN -32768 AND 32767 THEN f.ref::int2 END'
				WHEN 'int4'::regtype THEN 'CASE WHEN f.ref ~ ''^-?[0-9]{1,10}$'' AND f.ref::numeric BETWEEN -2147483648 AND 2147483647 THEN f.ref::int4 END'
				WHEN 'int8'::regtype THEN 'CASE WHEN f.ref ~ ''^-?[0-9]{1,19}$'' AND f.ref::numeric BETWEEN -9223372036854775808 AND 9223372036854775807 THEN f.ref::int8 END'
				WHEN 'text'::regtype THEN 'f.ref'
				WHEN 'varchar'::regtype THEN 'f.ref::varchar'
				WHEN 'uuid'::regtype THEN 'CASE WHEN f.ref ~ ''^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'' THEN f.ref::uuid END'
				END;
			refs := ARRAY(SELECT f.ref FROM pg_temp.recon_ref f
						   WHERE f.provider_id = pid AND f.binding_id IS NULL);
			EXIT WHEN cardinality(refs) = 0;
			UPDATE pg_temp.recon_ref f SET binding_id = b.binding_id
			  FROM @extschema@._select_as_owner(b.tbl, format(
					   'SELECT f.ref FROM unnest($1) AS f(ref) JOIN %s t ON f.ref = t.%I::text%s',
					   b.tbl, b.key_column,
					   CASE WHEN keyexpr IS NOT NULL THEN format(' AND t.%I = %s', b.key_column, keyexpr) ELSE '' END),
				   refs, NULL) AS o(ref text)
			 WHERE f.provider_id = pid AND f.binding_id IS NULL AND f.ref = o.ref;
		END LOOP;
	END IF;

	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, subject,
		tracking_number, chk, facts, detail)
	SELECT 'orphan_at_carrier', pid, NULL, x.c_ref, x.c_id, x.c_tn, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.c_id, 'order_ref', x.c_ref,
			   'tracking_number', x.c_tn, 'status', x.c_status, 'reason', 'no_order'),
		   format('the carrier''s shipment %s (tracking number %s) is for order %s, which no attached table holds',
			   x.c_id, coalesce(x.c_tn, 'none'), coalesce(x.c_ref, 'none'))
	  FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.c_id IS NOT NULL AND x.s_id IS NULL
	   AND x.c_canon IS DISTINCT FROM 'cancelled'
	   AND NOT EXISTS (SELECT 1 FROM pg_temp.recon_ref f
						WHERE f.provider_id = pid AND f.ref = x.c_ref AND f.binding_id IS NOT NULL)
	ON CONFLICT DO NOTHING;

	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, chk, facts, detail)
	SELECT 'duplicate_at_carrier', pid, f.binding_id, d.order_ref, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_ids', d.ids, 'tracking_numbers', d.tns),
		   format('the carrier holds %s shipments for order %s: %s',
			   cardinality(d.ids), d.order_ref, array_to_string(d.ids, ', '))
	  FROM pg_temp.recon_dup d
	  LEFT JOIN pg_temp.recon_ref f ON f.provider_id = pid AND f.ref = d.order_ref
	 WHERE d.provider_id = pid
	ON CONFLICT DO NOTHING;
END
$$;

/*
 * Compare a run whose pulls are over, and record its outcome.  The worker
 * calls _reconcile_prepare first (and applies what it returns) in the same
 * transaction; called alone, this prepares itself and applies nothing.
 */
CREATE OR REPLACE FUNCTION @extschema@._reconcile_compare(run bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	bids integer[];
	pids integer[];
	sbids integer[];
	b integer;
	p integer;
	m record;
	failed text;
BEGIN
	-- (two tests: the second is parsed only once the table exists)
	IF to_regclass('pg_temp.recon_prepared') IS NULL THEN
		PERFORM @extschema@._reconcile_prepare(run);
	ELSIF NOT EXISTS (SELECT 1 FROM pg_temp.recon_prepared x WHERE x.run_id = run) THEN
		PERFORM @extschema@._reconcile_prepare(run);
	END IF;
	SELECT x.* INTO r FROM @extschema@.reconcile_run x WHERE x.run_id = run FOR UPDATE;

	-- the bindings compared: all for a crm pass, else those of the providers chosen
	SELECT coalesce(array_agg(x.binding_id ORDER BY x.binding_id), '{}') INTO bids
	  FROM @extschema@.binding x
	 WHERE x.active
	   AND (r.kind = 'crm' OR x.provider_id IN (SELECT c.key::integer FROM jsonb_each(r.pulls) c));
	SELECT coalesce(array_agg(c.key::integer ORDER BY c.key::integer), '{}') INTO pids
	  FROM jsonb_each(r.pulls) c WHERE c.value->>'state' = 'done';
	SELECT string_agg(format('the pull of provider %s failed: %s', c.value->>'provider', c.value->>'error'), '; ')
	  INTO failed
	  FROM jsonb_each(r.pulls) c WHERE c.value->>'state' = 'failed';

	FOREACH p IN ARRAY pids LOOP
		PERFORM @extschema@._reconcile_carrier(run, p);
	END LOOP;
	FOREACH b IN ARRAY bids LOOP
		PERFORM @extschema@._reconcile_crm(b, r.kind = 'full');
	END LOOP;
	-- stuck and fees: thresholds are days and bills monthly, so a CRM-side
	-- pass looks hourly
	SELECT coalesce(array_agg(s.binding_id ORDER BY s.binding_id), '{}') INTO sbids
	  FROM @extschema@.reconcile_state s
	 WHERE s.binding_id = ANY (bids)
	   AND (r.kind = 'full' OR s.stuck_at IS NULL OR s.stuck_at < now() - interval '1 hour');
	PERFORM @extschema@._reconcile_stuck(sbids);
	PERFORM @extschema@._reconcile_fees(sbids);
	UPDATE @extschema@.reconcile_state s SET stuck_at = now() WHERE s.binding_id = ANY (sbids);
	SELECT * INTO m FROM @extschema@._reconcile_merge(run, bids, pids, sbids);

	-- the snapshots of earlier runs of these providers are of no more use
	DELETE FROM @extschema@.carrier_snapshot c WHERE c.provider_id = ANY (pids) AND c.run_id < run;
	TRUNCATE pg_temp.recon_found, pg_temp.recon_pair, pg_temp.recon_ref, pg_temp.recon_dup,
		pg_temp.recon_prepared, pg_temp.recon_orders;

	UPDATE @extschema@.reconcile_run x
	   SET state = CASE WHEN failed IS NULL THEN 'done' ELSE 'failed' END,
		   error = failed, opened = m.opened, reopened = m.reopened, closed = m.closed,
		   finished_at = clock_timestamp()
	 WHERE x.run_id = run;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.resync(tbl regclass, keys text[] DEFAULT NULL, kind text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b record;
	keytype text;
	ks text[];
	n bigint;
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT x.* INTO b FROM @extschema@.binding x
	 WHERE x.tbl OPERATOR(pg_catalog.=) resync.tbl AND x.active;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'table % is not attached', tbl
			USING ERRCODE = 'undefined_object',
				  HINT = 'See SELECT tbl FROM shipsync.binding WHERE active.';
	END IF;
	IF keys IS NULL AND kind IS NULL THEN
		RAISE EXCEPTION 'resync needs order keys, a kind of discrepancy, or both'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example shipsync.resync(''crm.orders'', kind => ''not_sent'').';
	END IF;
	IF kind IS NOT NULL AND kind OPERATOR(pg_catalog.<>) ALL (ARRAY['not_sent', 'missing_at_carrier',
			'tracking_mismatch', 'status_mismatch', 'address_changed_after_send', 'stuck']) THEN
		RAISE EXCEPTION 'cannot resync orders by discrepancy kind "%"', kind
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Orders can be sent again for the kinds not_sent, missing_at_carrier, tracking_mismatch, status_mismatch, address_changed_after_send and stuck.',
				  HINT = CASE kind WHEN 'fee_mismatch'
							  THEN 'A fee difference is settled with the carrier (a corrected statement, a dispute), not by sending the order again.'
							  ELSE 'An orphan or a duplicate at the carrier has no order of ours to send: cancel it at the carrier.' END;
	END IF;

	-- the orders: those given, those with an open discrepancy of the kind, or both
	ks := ARRAY(SELECT DISTINCT k FROM unnest(keys) AS k WHERE k IS NOT NULL);
	IF kind IS NOT NULL THEN
		ks := ARRAY(SELECT DISTINCT x.order_key FROM @extschema@.exception_ticket x
					 WHERE x.binding_id OPERATOR(pg_catalog.=) b.binding_id
					   AND x.kind OPERATOR(pg_catalog.=) resync.kind AND x.resolved_at IS NULL
					   AND x.order_key IS NOT NULL
					   AND (keys IS NULL OR x.order_key OPERATOR(pg_catalog.=) ANY (ks)));
	END IF;
	-- that exist (the keys are compared as the key column's type, by the
	-- table's owner: a domain's check is the owner's code)
	SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) INTO keytype
	  FROM pg_catalog.pg_attribute a
	 WHERE a.attrelid OPERATOR(pg_catalog.=) b.tbl AND a.attname OPERATOR(pg_catalog.=) b.key_column;
	BEGIN
		ks := ARRAY(SELECT o.k FROM @extschema@._select_as_owner(b.tbl,
				pg_catalog.format('SELECT t.%1$I::pg_catalog.text FROM %2$s t'
								  ' WHERE t.%1$I OPERATOR(pg_catalog.=) ANY ($1::%3$s[])',
								  b.key_column, b.tbl, keytype),
				ks, NULL) AS o(k text));
	EXCEPTION WHEN data_exception THEN
		RAISE EXCEPTION 'the order keys given are not all of type %', keytype
			USING ERRCODE = 'invalid_text_representation',
				  DETAIL = format('%s.', SQLERRM),
				  HINT = format('Give the values of column %I of %s, as text.', b.key_column, b.tbl);
	END;

	-- a create where there is no live shipment (or the carrier lost it: a
	-- new idempotency key, so a carrier that remembers keys creates it
	-- again), an update where there is one; orders with an intent on its
	-- way are left to it
	WITH o AS (
		SELECT k,
			   s.status IS NULL OR s.status OPERATOR(pg_catalog.=) 'cancelled'
			   OR EXISTS (SELECT 1 FROM @extschema@.exception_ticket x
						   WHERE x.binding_id OPERATOR(pg_catalog.=) b.binding_id
							 AND x.order_key OPERATOR(pg_catalog.=) k
							 AND x.kind OPERATOR(pg_catalog.=) 'missing_at_carrier'
							 AND x.resolved_at IS NULL) AS create_it
		  FROM unnest(ks) AS k
		  LEFT JOIN @extschema@.shipment s
			ON s.binding_id OPERATOR(pg_catalog.=) b.binding_id AND s.order_key OPERATOR(pg_catalog.=) k
		   AND s.provider_id OPERATOR(pg_catalog.=) b.provider_id
		 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.outbox x
							WHERE x.binding_id OPERATOR(pg_catalog.=) b.binding_id
							  AND x.order_key OPERATOR(pg_catalog.=) k
							  AND x.state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'retrying', 'in_flight']))
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.inbox i
							WHERE i.binding_id OPERATOR(pg_catalog.=) b.binding_id
							  AND i.order_key OPERATOR(pg_catalog.=) k)),
	ins AS (
		INSERT INTO @extschema@.outbox (binding_id, provider_id, order_key, op)
		SELECT b.binding_id, b.provider_id, o.k, CASE WHEN o.create_it THEN 'create' ELSE 'update' END
		  FROM o ORDER BY o.k
		RETURNING 1)
	SELECT pg_catalog.count(*) INTO n FROM ins;
	PERFORM @extschema@._audit('resync', 'binding', b.tbl::text,
		pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('keys', keys, 'kind', kind)),
		pg_catalog.jsonb_build_object('enqueued', n));
	PERFORM @extschema@._wake(false);
	RETURN n;
END
$$;

------------------------------------------------------------------------------
-- No digest of unmasked personal data for readers
------------------------------------------------------------------------------
-- shipsync_reader saw request_digest, the SHA-256 of the unmasked request
-- body, beside the masked body (intents), and again in shipment and
-- delivery_log: trying the few characters a mask hides against it gave the
-- name and phone back in under a second.  content_digest, a digest of the
-- whole order row, gives them back the same way.  Readers now get NULL for
-- both in intents (install/80_security.sql) and no longer read those
-- columns of shipment and delivery_log (install/90_privileges.sql);
-- operators and admins read everything as before.
CREATE OR REPLACE VIEW @extschema@.intents AS
SELECT o.id, o.binding_id, o.provider_id, o.order_key, o.op, o.idempotency_key, o.state,
	   o.attempts, o.next_attempt_at, o.lease_until, o.created_at, o.updated_at, o.done_at,
	   o.request_method, o.request_url,
	   CASE WHEN (SELECT @extschema@._pii_visible()) THEN o.request_body
			ELSE @extschema@._mask_body(o.request_body, r.paths, r.kinds, b.options->'pii')
	   END AS request_body,
	   CASE WHEN (SELECT @extschema@._pii_visible()) THEN o.request_digest END AS request_digest,
	   o.last_status, o.error_class, o.last_error, o.coalesced_into,
	   CASE WHEN (SELECT @extschema@._pii_visible()) THEN o.content_digest END AS content_digest,
	   o.request_kind
FROM @extschema@.outbox o
LEFT JOIN @extschema@._pii_rules r ON r.provider_id = o.provider_id
LEFT JOIN @extschema@.binding b ON b.binding_id = o.binding_id;
COMMENT ON VIEW @extschema@.intents IS
	'The outbox as its readers may see it: every column of shipsync.outbox, with the personal values of request_body masked, and request_digest and content_digest (digests of the unmasked body and order row) NULL, unless the reader is a member of shipsync_operator. shipsync_reader reads this view, not the table.';
REVOKE SELECT ON @extschema@.shipment, @extschema@.delivery_log FROM shipsync_reader;
-- Shipments and attempts but their digests: request_digest is the SHA-256
-- of a request body whose personal values readers see masked, and
-- content_digest a digest of the order row; both can be matched against
-- the few characters a mask hides (the view intents gives readers NULL)
GRANT SELECT (shipment_id, binding_id, order_key, provider_id, provider_shipment_id,
	tracking_number, label_url, status, raw_status, fees, fee_total, created_at, updated_at,
	waybills) ON @extschema@.shipment TO shipsync_reader;
GRANT SELECT (id, outbox_id, attempt, provider_id, at, method, url, http_status, latency_ms,
	outcome, error_class, error) ON @extschema@.delivery_log TO shipsync_reader;
GRANT SELECT ON @extschema@.shipment, @extschema@.delivery_log TO shipsync_operator;

------------------------------------------------------------------------------
-- Order keys cast to the key column's base type, without a length
------------------------------------------------------------------------------
-- attach() made its render and write-back statements cast an order key to
-- the key column's type as it was then, with its length: once the column
-- was widened (varchar(5) to varchar(10)), a longer key was cut to five
-- characters and found another order's row, which was sent to the carrier
-- in its place, and that order got the other's waybill.  Keys are now cast
-- to the column's base type without a length (_key_type()), there and in
-- reconciliation and resync(); existing statements are rewritten.
CREATE FUNCTION @extschema@._key_type(tbl regclass, col name)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	WITH RECURSIVE d(typid, depth) AS (
		SELECT a.atttypid, 0 FROM pg_attribute a
		 WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped
		UNION ALL
		SELECT t.typbasetype, d.depth + 1 FROM d JOIN pg_type t ON t.oid = d.typid
		 WHERE t.typtype = 'd')
	-- a typmod of -1 given: "bit" and "char" keep no length of one
	SELECT format_type(d.typid, -1) FROM d ORDER BY d.depth DESC LIMIT 1
$$;
COMMENT ON FUNCTION @extschema@._key_type(regclass, name) IS
	'Internal (attach(), reconciliation, resync()): the type order keys are cast to, the key column''s base type without a length, so that a key column widened after attach() never has a key cut to another order''s.';
REVOKE ALL ON FUNCTION @extschema@._key_type(regclass, name) FROM PUBLIC;
-- (attach() as it ends up: the last section that changes it, below)
CREATE OR REPLACE FUNCTION @extschema@._reconcile_crm(bid integer, full_pass boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b record;
	keytype text;
	skip text[];
	grace interval;
	born text;
	trk integer;
	st record;
	h xid8;
	hage integer;
	eff text;
	tn_bad text;
	st_bad text;
	src text;
	orders text;
	ks text[];
	gone text[];
	from_rows text;
BEGIN
	SELECT x.* INTO b FROM @extschema@.binding x WHERE x.binding_id = bid;
	-- the key's type (its base type, without a length: _key_type()), with the
	-- key column's own collation when it has one: an order key of ours
	-- (COLLATE "C") cast to it then compares as the column does, and can use
	-- its index
	SELECT @extschema@._key_type(b.tbl, b.key_column)
		   || CASE WHEN co.oid IS NULL THEN '' ELSE format(' COLLATE %I.%I', cn.nspname, co.collname) END
	  INTO keytype
	  FROM pg_attribute a
	  LEFT JOIN pg_collation co ON co.oid = a.attcollation
	  LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
	 WHERE a.attrelid = b.tbl AND a.attname = b.key_column AND a.attnum > 0 AND NOT a.attisdropped;
	skip := ARRAY(SELECT w.value #>> '{}' FROM jsonb_each(b.writeback) w ORDER BY 1);
	grace := coalesce((b.options->>'grace')::interval, interval '10 minutes');
	born := CASE WHEN b.options ? 'created_at_column'
					 THEN format('t.%I::timestamptz', b.options->>'created_at_column')
				 WHEN current_setting('track_commit_timestamp')::boolean
					 THEN 'pg_xact_commit_timestamp(t.xmin)'
				 ELSE 'NULL::timestamptz' END;
	SELECT p.provider_id INTO trk FROM @extschema@.provider p WHERE p.name = b.options->>'tracking_provider';
	-- the status written back is the tracking provider's once it reports one
	eff := CASE WHEN trk IS NULL THEN 's.status'
				ELSE 'CASE WHEN tr.status IS NOT NULL AND tr.status <> ''pending'' THEN tr.status ELSE s.status END' END;
	tn_bad := CASE WHEN b.writeback ? 'tracking_number'
				   THEN '(s.tracking_number IS NOT NULL AND t.o_tn COLLATE "C" IS DISTINCT FROM s.tracking_number)'
				   ELSE 'false' END;
	st_bad := CASE WHEN b.writeback ? 'status'
				   THEN format('(s.order_key IS NOT NULL AND t.o_status IS DISTINCT FROM %s)', eff)
				   ELSE 'false' END;

	-- where the last pass stopped; rows of transactions from h on are read
	-- again by the next one
	INSERT INTO @extschema@.reconcile_state (binding_id) VALUES (bid) ON CONFLICT DO NOTHING;
	SELECT x.* INTO st FROM @extschema@.reconcile_state x WHERE x.binding_id = bid FOR UPDATE;
	h := pg_snapshot_xmin(pg_current_snapshot());
	IF st.horizon IS NOT NULL THEN
		hage := age(((st.horizon::text::numeric % 4294967296)::text)::xid);
	END IF;
	-- an horizon 2^30 transactions old is too old to compare xids with
	full_pass := full_pass OR hage IS NULL OR hage < 0 OR hage > 1073741824;

	IF full_pass THEN
		src := format('%s t', b.tbl);
	ELSE
		-- the orders whose side of ours changed: the owner's statement adds
		-- the rows changed since ($2) and reads the rows of both ($1)
		ks := ARRAY(
			SELECT s.order_key FROM @extschema@.shipment s
			 WHERE s.binding_id = bid AND age(s.xmin) <= hage
			UNION
			SELECT o.order_key FROM @extschema@.outbox o
			 WHERE o.binding_id = bid AND (o.state IN ('dead', 'invalid') OR o.error_class = 'nothing_to_send')
			   AND age(o.xmin) <= hage
			UNION
			SELECT x.order_key FROM @extschema@.exception_ticket x
			 WHERE x.binding_id = bid AND x.order_key IS NOT NULL
			   AND (x.resolved_at IS NULL OR age(x.xmin) <= hage)
			UNION
			SELECT r.order_key FROM @extschema@.reconcile_seen r WHERE r.binding_id = bid);
		src := format($src$(SELECT DISTINCT c.k FROM (
				SELECT t.%1$I::text COLLATE "C" AS k FROM %2$s t WHERE age(t.xmin) <= $2
				UNION ALL
				SELECT u.k FROM unnest($1) AS u(k)) c) c
			JOIN %2$s t ON t.%1$I = c.k::%3$s$src$, b.key_column, b.tbl, keytype);
	END IF;
	-- what the comparison needs of each order row, read as the table's owner
	orders := format('SELECT t.%I::text, %s, %s, %s, t.*::%s FROM %s',
		b.key_column,
		CASE WHEN b.writeback ? 'tracking_number' THEN format('t.%I::text', b.writeback->>'tracking_number') ELSE 'NULL::text' END,
		CASE WHEN b.writeback ? 'status' THEN format('t.%I::text', b.writeback->>'status') ELSE 'NULL::text' END,
		born, b.tbl, src);
	-- each row with its digest, made as the rows are read (a whole row is
	-- never kept).  A full pass joins them as they come, planned for as many
	-- rows as the table holds (the function's support estimates it); an
	-- incremental one keeps them first, and ANALYZEs them: a few orders
	-- changed since the last pass, or a bulk import of a million
	IF full_pass THEN
		from_rows := $r$@extschema@._select_digests_as_owner($5, $6, $7, $8, $9)
			AS t(k text COLLATE "C", o_tn text, o_status text, born timestamptz, digest bigint)$r$;
	ELSE
		TRUNCATE pg_temp.recon_orders;
		INSERT INTO pg_temp.recon_orders (k, o_tn, o_status, born, digest)
		SELECT t.k, t.o_tn, t.o_status, t.born, t.digest
		  FROM @extschema@._select_digests_as_owner(b.tbl, orders, ks, hage, skip)
			   AS t(k text COLLATE "C", o_tn text, o_status text, born timestamptz, digest bigint);
		ANALYZE pg_temp.recon_orders;
		from_rows := 'pg_temp.recon_orders t';
	END IF;

	EXECUTE format($q$
		WITH act AS MATERIALIZED (
			SELECT o.order_key FROM @extschema@.outbox o
			 WHERE o.binding_id = $1 AND o.state IN ('pending', 'retrying', 'in_flight')
			UNION
			SELECT i.order_key FROM @extschema@.inbox i WHERE i.binding_id = $1),
		x AS MATERIALIZED (
			SELECT y.* FROM (
				SELECT t.k,
					   s.order_key IS NOT NULL AS shipped,
					   s.provider_shipment_id AS s_id, s.tracking_number AS s_tn, %1$s AS s_status,
					   s.content_digest AS s_digest,
					   %2$s AS tn_bad, %3$s AS st_bad,
					   (s.content_digest IS NOT NULL AND s.status <> 'cancelled'
						AND t.digest <> s.content_digest) AS addr_bad,
					   t.o_tn, t.o_status,
					   coalesce(t.born, r.first_seen_at) AS born,
					   r.order_key IS NOT NULL AS seen
				  FROM %7$s
				  LEFT JOIN @extschema@.shipment s
					ON s.binding_id = $1 AND s.provider_id = $2 AND s.order_key = t.k
				  %4$s
				  LEFT JOIN @extschema@.reconcile_seen r
					ON r.binding_id = $1 AND r.order_key = t.k) y
			 WHERE NOT y.shipped OR y.tn_bad OR y.st_bad OR y.addr_bad),
		seen AS (
			INSERT INTO @extschema@.reconcile_seen (binding_id, order_key)
			SELECT $1, x.k FROM x WHERE NOT x.shipped AND NOT x.seen
			ON CONFLICT DO NOTHING)
		INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
			chk, facts, detail)
		SELECT f.kind, $2, $1, x.k, x.s_tn, 'crm', f.facts, f.detail
		  FROM x
		  LEFT JOIN LATERAL (
			  SELECT o.id, o.state, o.error_class, o.last_error FROM @extschema@.outbox o
			   WHERE NOT x.shipped AND o.binding_id = $1 AND o.order_key = x.k
				 AND (o.state IN ('dead', 'invalid') OR o.error_class = 'nothing_to_send')
			   ORDER BY o.id DESC LIMIT 1) so ON true
		 CROSS JOIN LATERAL (VALUES
			('not_sent',
			 NOT x.shipped AND x.born < now() - $3 AND x.k NOT IN (SELECT act.order_key FROM act)
			 AND so.error_class IS DISTINCT FROM 'nothing_to_send',
			 jsonb_build_object('check', 'crm',
				'reason', coalesce(so.state, 'not_captured'), 'outbox_id', so.id,
				'last_error', so.last_error, 'since', x.born),
			 format('order %%s of %%s has no shipment and nothing on its way (%%s)', x.k, $4,
				CASE so.state WHEN 'dead' THEN 'its intent is dead: ' || coalesce(so.last_error, '')
							  WHEN 'invalid' THEN 'its intent is invalid: ' || coalesce(so.last_error, '')
							  ELSE 'no intent was captured' END)),
			('tracking_mismatch', x.shipped AND x.tn_bad,
			 jsonb_build_object('check', 'crm', 'column', %5$L, 'order', x.o_tn, 'shipment', x.s_tn),
			 format('order %%s of %%s: column %%s holds %%s, the shipment''s tracking number is %%s',
				x.k, $4, %5$L, coalesce(x.o_tn, 'NULL'), x.s_tn)),
			('status_mismatch', x.shipped AND x.st_bad,
			 jsonb_build_object('check', 'crm', 'column', %6$L, 'order', x.o_status, 'shipment', x.s_status),
			 format('order %%s of %%s: column %%s holds %%s, the shipment''s status is %%s',
				x.k, $4, %6$L, coalesce(x.o_status, 'NULL'), x.s_status)),
			('address_changed_after_send',
			 x.shipped AND x.addr_bad AND x.k NOT IN (SELECT act.order_key FROM act),
			 jsonb_build_object('check', 'crm', 'shipment_id', x.s_id),
			 format('order %%s of %%s changed after its shipment %%s was sent, and no update is on its way',
				x.k, $4, coalesce(x.s_id, '')))
		 ) AS f(kind, hit, facts, detail)
		 WHERE f.hit
		ON CONFLICT DO NOTHING
	$q$, eff, tn_bad, st_bad,
		CASE WHEN trk IS NULL THEN ''
			 ELSE format('LEFT JOIN @extschema@.shipment tr ON tr.binding_id = $1 AND tr.provider_id = %s AND tr.order_key = t.k',
						 trk) END,
		b.writeback->>'tracking_number', b.writeback->>'status', from_rows)
	USING bid, b.provider_id, grace, b.tbl::text, b.tbl, orders, ks, hage, skip;

	-- orders no longer waiting: shipped, or gone (whose keys the owner's
	-- table no longer holds)
	ks := ARRAY(SELECT r.order_key FROM @extschema@.reconcile_seen r WHERE r.binding_id = bid);
	IF cardinality(ks) > 0 THEN
		gone := ARRAY(SELECT g.k FROM @extschema@._select_as_owner(b.tbl, format(
				'SELECT u.k FROM unnest($1) AS u(k) WHERE NOT EXISTS (SELECT 1 FROM %s t WHERE t.%I = u.k::%s)',
				b.tbl, b.key_column, keytype), ks, NULL) AS g(k text));
		DELETE FROM @extschema@.reconcile_seen r
		 WHERE r.binding_id = bid
		   AND (EXISTS (SELECT 1 FROM @extschema@.shipment s
						 WHERE s.binding_id = bid AND s.provider_id = b.provider_id
						   AND s.order_key = r.order_key)
				OR r.order_key = ANY (gone));
	END IF;

	UPDATE @extschema@.reconcile_state x
	   SET horizon = h, pass_at = now(),
		   full_at = CASE WHEN full_pass THEN now() ELSE x.full_at END
	 WHERE x.binding_id = bid;
END
$$;
CREATE OR REPLACE FUNCTION @extschema@.resync(tbl regclass, keys text[] DEFAULT NULL, kind text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b record;
	keytype text;
	ks text[];
	n bigint;
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT x.* INTO b FROM @extschema@.binding x
	 WHERE x.tbl OPERATOR(pg_catalog.=) resync.tbl AND x.active;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'table % is not attached', tbl
			USING ERRCODE = 'undefined_object',
				  HINT = 'See SELECT tbl FROM shipsync.binding WHERE active.';
	END IF;
	IF keys IS NULL AND kind IS NULL THEN
		RAISE EXCEPTION 'resync needs order keys, a kind of discrepancy, or both'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example shipsync.resync(''crm.orders'', kind => ''not_sent'').';
	END IF;
	IF kind IS NOT NULL AND kind OPERATOR(pg_catalog.<>) ALL (ARRAY['not_sent', 'missing_at_carrier',
			'tracking_mismatch', 'status_mismatch', 'address_changed_after_send', 'stuck']) THEN
		RAISE EXCEPTION 'cannot resync orders by discrepancy kind "%"', kind
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Orders can be sent again for the kinds not_sent, missing_at_carrier, tracking_mismatch, status_mismatch, address_changed_after_send and stuck.',
				  HINT = CASE kind WHEN 'fee_mismatch'
							  THEN 'A fee difference is settled with the carrier (a corrected statement, a dispute), not by sending the order again.'
							  ELSE 'An orphan or a duplicate at the carrier has no order of ours to send: cancel it at the carrier.' END;
	END IF;

	-- the orders: those given, those with an open discrepancy of the kind, or both
	ks := ARRAY(SELECT DISTINCT k FROM unnest(keys) AS k WHERE k IS NOT NULL);
	IF kind IS NOT NULL THEN
		ks := ARRAY(SELECT DISTINCT x.order_key FROM @extschema@.exception_ticket x
					 WHERE x.binding_id OPERATOR(pg_catalog.=) b.binding_id
					   AND x.kind OPERATOR(pg_catalog.=) resync.kind AND x.resolved_at IS NULL
					   AND x.order_key IS NOT NULL
					   AND (keys IS NULL OR x.order_key OPERATOR(pg_catalog.=) ANY (ks)));
	END IF;
	-- that exist (the keys are compared as the key column's type, by the
	-- table's owner: a domain's check is the owner's code)
	keytype := @extschema@._key_type(b.tbl, b.key_column);
	BEGIN
		ks := ARRAY(SELECT o.k FROM @extschema@._select_as_owner(b.tbl,
				pg_catalog.format('SELECT t.%1$I::pg_catalog.text FROM %2$s t'
								  ' WHERE t.%1$I OPERATOR(pg_catalog.=) ANY ($1::%3$s[])',
								  b.key_column, b.tbl, keytype),
				ks, NULL) AS o(k text));
	EXCEPTION WHEN data_exception THEN
		RAISE EXCEPTION 'the order keys given are not all of type %', keytype
			USING ERRCODE = 'invalid_text_representation',
				  DETAIL = format('%s.', SQLERRM),
				  HINT = format('Give the values of column %I of %s, as text.', b.key_column, b.tbl);
	END;

	-- a create where there is no live shipment (or the carrier lost it: a
	-- new idempotency key, so a carrier that remembers keys creates it
	-- again), an update where there is one; orders with an intent on its
	-- way are left to it
	WITH o AS (
		SELECT k,
			   s.status IS NULL OR s.status OPERATOR(pg_catalog.=) 'cancelled'
			   OR EXISTS (SELECT 1 FROM @extschema@.exception_ticket x
						   WHERE x.binding_id OPERATOR(pg_catalog.=) b.binding_id
							 AND x.order_key OPERATOR(pg_catalog.=) k
							 AND x.kind OPERATOR(pg_catalog.=) 'missing_at_carrier'
							 AND x.resolved_at IS NULL) AS create_it
		  FROM unnest(ks) AS k
		  LEFT JOIN @extschema@.shipment s
			ON s.binding_id OPERATOR(pg_catalog.=) b.binding_id AND s.order_key OPERATOR(pg_catalog.=) k
		   AND s.provider_id OPERATOR(pg_catalog.=) b.provider_id
		 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.outbox x
							WHERE x.binding_id OPERATOR(pg_catalog.=) b.binding_id
							  AND x.order_key OPERATOR(pg_catalog.=) k
							  AND x.state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'retrying', 'in_flight']))
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.inbox i
							WHERE i.binding_id OPERATOR(pg_catalog.=) b.binding_id
							  AND i.order_key OPERATOR(pg_catalog.=) k)),
	ins AS (
		INSERT INTO @extschema@.outbox (binding_id, provider_id, order_key, op)
		SELECT b.binding_id, b.provider_id, o.k, CASE WHEN o.create_it THEN 'create' ELSE 'update' END
		  FROM o ORDER BY o.k
		RETURNING 1)
	SELECT pg_catalog.count(*) INTO n FROM ins;
	PERFORM @extschema@._audit('resync', 'binding', b.tbl::text,
		pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('keys', keys, 'kind', kind)),
		pg_catalog.jsonb_build_object('enqueued', n));
	PERFORM @extschema@._wake(false);
	RETURN n;
END
$$;

UPDATE @extschema@.binding b
   SET render_sql = pg_catalog.regexp_replace(b.render_sql, E'(shipsync_u\\.shipsync_key::).*$',
			E'\\1' OPERATOR(pg_catalog.||) @extschema@._key_type(b.tbl, b.key_column)),
	   writeback_sql = pg_catalog.regexp_replace(b.writeback_sql, E'(shipsync_u\\.shipsync_key::).*$',
			E'\\1' OPERATOR(pg_catalog.||) @extschema@._key_type(b.tbl, b.key_column))
 WHERE @extschema@._key_type(b.tbl, b.key_column) IS NOT NULL;

------------------------------------------------------------------------------
-- Row-level security forced on an order table's owner is an error
------------------------------------------------------------------------------
-- Orders are read and written as the table's owner.  With FORCE ROW LEVEL
-- SECURITY (and an owner without BYPASSRLS), an order the policies hid
-- read as deleted: its create ended "nothing to send", its write-back
-- wrote nothing, and reconciliation closed its tickets, all without a
-- word.  The C functions that act as the owner now refuse such a table
-- (SQLSTATE 55000); attach() lets that error through as it is, and a
-- reconciliation pass leaves the table out and fails, comparing the others.
-- (attach() as it ends up: the last section that changes it, below)
-- (_reconcile_compare() as it ends up: the last section that changes it, below)

------------------------------------------------------------------------------
-- fee_total refused into a numeric of fewer than two decimals
------------------------------------------------------------------------------
-- attach() refused integer, float and money columns for fee_total, which
-- would round it, but took numeric(8,0) (and numeric(8,1), and domains of
-- them): a bill of 13.70 was written as 14.  They are refused now.
-- (attach() as it ends up: the last section that changes it, below)

------------------------------------------------------------------------------
-- attach() with other write-back columns carries the content digests over
------------------------------------------------------------------------------
-- The digest of a shipped order leaves its binding's write-back columns
-- out.  A table attached again with other write-back columns had every
-- order whose old write-back column held a value reported as
-- address_changed_after_send.  attach() now makes the digests of the
-- orders unchanged since they were sent again without the new columns.
CREATE OR REPLACE FUNCTION @extschema@.attach(tbl regclass, provider text, key_column name DEFAULT NULL,
								   writeback jsonb DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pid integer;
	bid integer;
	keycol name := key_column;
	keytype text;
	wb jsonb := coalesce(writeback, '{}');
	opts jsonb := coalesce(options, '{}');
	f text;
	col text;
	coltype text;
	colcat "char";
	colnumeric boolean;
	colscale integer;
	sets text[] := '{}';
	wbcols text[] := '{}';
	render text;
	wbsql text;
	cancel_when text;
	trigargs text;
	relkind "char";
	adopt integer;
	gone record;
	oldwb jsonb;
	oldskip text[];
	newskip text[];
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.relkind INTO relkind FROM pg_class c WHERE c.oid = tbl;
	IF relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '"%" is not a table', tbl
			USING ERRCODE = 'wrong_object_type',
				  HINT = 'Attach an ordinary or partitioned table.';
	END IF;
	IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'The dispatcher reads and writes the table with its owner''s rights.';
	END IF;
	SELECT p.provider_id INTO pid FROM @extschema@.provider p WHERE p.name = attach.provider;
	IF pid IS NULL THEN
		RAISE EXCEPTION 'provider "%" does not exist', coalesce(provider, '')
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it first with shipsync.create_provider().';
	END IF;
	IF EXISTS (SELECT 1 FROM @extschema@.binding b WHERE b.tbl = attach.tbl AND b.active) THEN
		RAISE EXCEPTION 'table % is already attached', tbl
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Call shipsync.detach() first to attach it again.';
	END IF;
	PERFORM @extschema@._check_options(opts, ARRAY['cancel_when', 'validate', 'tracking_provider', 'pii', 'grace', 'created_at_column', 'adopt'], 'attach');
	adopt := @extschema@._check_adopt(opts, pid, tbl);
	PERFORM @extschema@._check_attach_options(opts, pid);
	PERFORM @extschema@._check_reconcile_options(opts, tbl);
	IF current_setting('server_encoding') NOT IN ('UTF8', 'SQL_ASCII') THEN
		RAISE EXCEPTION 'database encoding % cannot be sent as JSON', current_setting('server_encoding')
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Carriers read JSON as UTF-8, and requests are rendered in the database encoding.',
				  HINT = 'Keep the orders in a UTF8 database.';
	END IF;

	-- the key: given, or the single-column primary key
	IF keycol IS NULL THEN
		SELECT a.attname INTO keycol
		FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE i.indrelid = tbl AND i.indisprimary AND i.indnatts = 1;
		IF keycol IS NULL THEN
			RAISE EXCEPTION 'table % has no single-column primary key', tbl
				USING ERRCODE = 'invalid_table_definition',
					  HINT = 'Pass key_column => the column that identifies an order.';
		END IF;
	END IF;
	keytype := @extschema@._key_type(tbl, keycol);
	IF keytype IS NULL THEN
		RAISE EXCEPTION 'column "%" of table % does not exist', keycol, tbl
			USING ERRCODE = 'undefined_column',
				  HINT = 'Pass key_column => the column that identifies an order.';
	END IF;

	-- write-back: shipment field -> order column
	IF jsonb_typeof(wb) <> 'object' THEN
		RAISE EXCEPTION 'writeback must be a JSON object of shipment fields to column names'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example {"tracking_number": "waybill_no"}.';
	END IF;
	FOR f, col IN SELECT key, value #>> '{}' FROM jsonb_each(wb) LOOP
		IF f NOT IN ('tracking_number', 'status', 'provider_shipment_id', 'label_url', 'fee_total') THEN
			RAISE EXCEPTION 'unknown write-back field "%"', f
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'Write-back fields: tracking_number, status, provider_shipment_id, label_url, fee_total.';
		END IF;
		SELECT format_type(a.atttypid, a.atttypmod) INTO coltype
		FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
		IF coltype IS NULL THEN
			RAISE EXCEPTION 'write-back column "%" of table % does not exist', coalesce(col, ''), tbl
				USING ERRCODE = 'undefined_column',
					  HINT = 'Add the column first, or fix the writeback map.';
		END IF;
		IF col = keycol THEN
			RAISE EXCEPTION 'the key column "%" cannot be a write-back column', col
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Write shipment fields into columns of their own.';
		END IF;
		-- a string type, or for fee_total numeric too (an integer, a float
		-- or money would round or blur the amount without a word)
		SELECT t.typcategory, t.oid = 'pg_catalog.numeric'::pg_catalog.regtype,
			   -- a numeric's declared scale, the column's or its domain's
			   -- (typmod: precision << 16 | scale, 11 bits signed, + 4)
			   CASE WHEN tm.m >= 4 THEN (((tm.m - 4) & 2047) # 1024) - 1024 END
		INTO colcat, colnumeric, colscale
		FROM pg_attribute a JOIN pg_type t
			ON t.oid = coalesce(nullif(
				(SELECT typbasetype FROM pg_type WHERE oid = a.atttypid), 0), a.atttypid)
		CROSS JOIN LATERAL (SELECT CASE WHEN a.atttypmod >= 0 THEN a.atttypmod
				ELSE (SELECT d.typtypmod FROM pg_type d WHERE d.oid = a.atttypid) END) AS tm(m)
		WHERE a.attrelid = tbl AND a.attname = col;
		IF f = 'fee_total' AND colnumeric AND colscale < 2 THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = format('fee_total is an amount with decimals (12.50, 3.125): a numeric of scale %s would round it.', colscale),
					  HINT = 'Use a numeric column of at least two decimals, numeric without a scale, or a text column.';
		END IF;
		IF colcat <> 'S' AND NOT (f = 'fee_total' AND colnumeric) THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = CASE WHEN f = 'fee_total' THEN 'fee_total is an amount with decimals (12.50, 3.125): a column of this type would round it or lose its exact value.'
								   ELSE format('%s is text.', f) END,
					  HINT = CASE WHEN f = 'fee_total' THEN 'Use a numeric or text column.'
								 ELSE 'Use a text or varchar column.' END;
		END IF;
		-- no explicit cast: assignment rules apply, so a tracking number too
		-- long for a varchar(n) column fails loudly instead of being cut (a
		-- fee_total into a string column is its text, as written)
		sets := sets || format(CASE WHEN f = 'fee_total' AND colcat = 'S'
									THEN '%I = COALESCE(shipsync_u.%I::pg_catalog.text, t.%I)'
									ELSE '%I = COALESCE(shipsync_u.%I, t.%I)' END, col, f, col);
		wbcols := wbcols || col;
	END LOOP;

	cancel_when := opts->>'cancel_when';
	IF cancel_when IS NOT NULL AND cancel_when ~ ';' THEN
		RAISE EXCEPTION 'option "cancel_when" must be one boolean expression'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example "status = ''cancelled''".';
	END IF;
	-- the restricted grammar, printed back with pg_catalog's operators:
	-- no function, operator or cast of the caller's is ever planned here
	IF cancel_when IS NOT NULL THEN
		cancel_when := @extschema@._cancel_when_sql(cancel_when);
	END IF;

	-- The row itself and its write-back columns: the dispatcher prints the
	-- request's body from the row (src/body.c: as json_build_object() and
	-- row_to_json() would, with the type lookups once a batch rather than
	-- once a column of every row) and keeps the row's digest
	-- (shipsync._row_digest), what reconciliation compares the order with
	-- later.  The row is t.*, never a bare t: a column named t would be
	-- taken instead.  Operators and types qualified: the dispatcher, render_request() and
	-- this function run these as the table's owner, each with a search_path
	-- of its own.  (unnest of several arrays is grammar: pg_catalog's.)
	render := format(
		'SELECT shipsync_u.shipsync_id, t.%1$I IS NOT NULL AS found,'
		' %4$s AS is_cancel, t.*::%2$s AS shipsync_row, %5$L::pg_catalog.text[] AS shipsync_skip'
		' FROM unnest($1::pg_catalog.int8[], $2::pg_catalog.text[])'
		' AS shipsync_u(shipsync_id, shipsync_key)'
		' LEFT JOIN %2$s AS t ON t.%1$I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%3$s',
		keycol, tbl, keytype,
		CASE WHEN cancel_when IS NULL THEN 'false'
			 ELSE format('COALESCE((%s), false)', cancel_when) END,
		ARRAY(SELECT c FROM unnest(wbcols) AS c ORDER BY 1));

	IF array_length(sets, 1) > 0 THEN
		wbsql := format(
			'UPDATE %s AS t SET %s'
			' FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.text[],'
			' $4::pg_catalog.text[], $5::pg_catalog.text[], $6::pg_catalog.numeric[])'
			' AS shipsync_u(shipsync_key, provider_shipment_id, tracking_number, status, label_url, fee_total)'
			' WHERE t.%I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%s',
			tbl, array_to_string(sets, ', '), keycol, keytype);
	END IF;

	-- prove both statements against the table now, not in the dispatcher,
	-- and with the rights the dispatcher will have: the table owner's
	BEGIN
		PERFORM @extschema@._explain_as_owner(tbl, render, '{int8[], text[]}');
		IF wbsql IS NOT NULL THEN
			PERFORM @extschema@._explain_as_owner(tbl, wbsql,
				'{text[], text[], text[], text[], text[], numeric[]}');
		END IF;
	EXCEPTION
		-- row security forced on the owner: its own error says what to do
		WHEN object_not_in_prerequisite_state THEN
			RAISE;
		WHEN OTHERS THEN
			RAISE EXCEPTION 'cannot attach table %: %', tbl, SQLERRM
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Check option cancel_when and the writeback columns'' types.';
	END;

	SELECT x.writeback INTO oldwb FROM @extschema@.binding x WHERE x.tbl = attach.tbl;
	INSERT INTO @extschema@.binding AS b (tbl, provider_id, key_column, writeback, options, render_sql, writeback_sql)
	VALUES (attach.tbl, pid, keycol, wb, opts, render, wbsql)
	ON CONFLICT ON CONSTRAINT binding_tbl_key DO UPDATE
	   SET provider_id = EXCLUDED.provider_id, key_column = EXCLUDED.key_column,
		   writeback = EXCLUDED.writeback, options = EXCLUDED.options,
		   render_sql = EXCLUDED.render_sql, writeback_sql = EXCLUDED.writeback_sql,
		   active = true, created_at = now(), created_by = session_user
	RETURNING b.binding_id INTO bid;

	-- the table replaces the one of binding adopt: what pg_shipsync knows
	-- of its orders (shipments, intents, events, fees, tickets) is this
	-- binding's now, so an order shipped before is updated, not created
	-- again.  Otherwise, a binding of this provider with shipments whose
	-- table is gone is said: were this table its successor, every update
	-- of an order shipped before would ship it again.
	IF adopt IS NOT NULL THEN
		UPDATE @extschema@.shipment x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.outbox x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.inbox x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.tracking_event x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_line x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_sum x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_pull x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.exception_ticket x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.binding x SET options = x.options || jsonb_build_object('adopted_by', bid)
		 WHERE x.binding_id = adopt;
	ELSE
		FOR gone IN
			SELECT b.binding_id, b.tbl::oid AS relid
			FROM @extschema@.binding b
			WHERE b.provider_id = pid AND NOT b.active AND b.binding_id <> bid
			  AND NOT b.options ? 'adopted_by'
			  AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = b.tbl)
			  AND EXISTS (SELECT 1 FROM @extschema@.shipment x WHERE x.binding_id = b.binding_id)
		LOOP
			RAISE WARNING 'binding % of provider "%" has shipments, and its table (oid %) is gone',
				gone.binding_id, provider, gone.relid
				USING DETAIL = format('Table %s is binding %s: an update of an order shipped under binding %s would be sent as a create.',
									  tbl, bid, gone.binding_id),
					  HINT = format('If %s replaces that table, detach it and attach it again with options {"adopt": %s}.',
									tbl, gone.binding_id);
		END LOOP;
	END IF;

	-- attached again with other write-back columns: the digests of the
	-- orders shipped (shipment.content_digest) left the old ones out, and
	-- every order whose old column holds a value would read as changed
	-- since it was sent (address_changed_after_send).  The digest of an
	-- order unchanged since is made again without the new columns; an
	-- order changed since keeps its digest, and is still told.  The rows
	-- are read as the table's owner, as reconciliation reads them.
	oldskip := ARRAY(SELECT w.value #>> '{}' FROM jsonb_each(oldwb) w ORDER BY 1);
	newskip := ARRAY(SELECT c FROM unnest(wbcols) AS c ORDER BY 1);
	IF oldwb IS NOT NULL AND oldskip IS DISTINCT FROM newskip
	   AND EXISTS (SELECT 1 FROM @extschema@.shipment x
				   WHERE x.binding_id = bid AND x.content_digest IS NOT NULL) THEN
		EXECUTE format($d$
			UPDATE @extschema@.shipment s
			   SET content_digest = @extschema@._row_digest(t.r, $2)
			  FROM @extschema@._select_as_owner($1, $4, NULL, NULL) AS t(k text COLLATE "C", r %s)
			 WHERE s.binding_id = $5 AND s.order_key = t.k
			   AND s.content_digest = @extschema@._row_digest(t.r, $3)$d$, tbl)
		USING tbl, newskip, oldskip,
			  format('SELECT t.%I::pg_catalog.text, t.*::%s FROM %s t', keycol, tbl, tbl), bid;
	END IF;

	trigargs := array_to_string(ARRAY(SELECT quote_literal(x)
		FROM unnest(ARRAY[bid::text, pid::text, keycol::text] || wbcols) x), ', ');
	EXECUTE format('CREATE TRIGGER shipsync_capture AFTER INSERT OR UPDATE OR DELETE ON %s'
				   ' FOR EACH ROW EXECUTE FUNCTION @extschema@.capture(%s)', tbl, trigargs);
	IF opts->>'validate' = 'reject' THEN
		EXECUTE format('CREATE TRIGGER shipsync_validate AFTER INSERT OR UPDATE ON %s'
					   ' FOR EACH ROW EXECUTE FUNCTION @extschema@._validate(%L)', tbl, bid);
	END IF;
	PERFORM @extschema@._wake(true);
	RETURN bid;
END
$$;
ALTER FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) SET shipsync.audit_action = 'attach';

------------------------------------------------------------------------------
-- One table that cannot be read no longer stops a reconciliation pass
------------------------------------------------------------------------------
-- A table whose key column was renamed after attach() failed every pass,
-- so no table was compared; now it is left out, and the run fails naming it.
CREATE OR REPLACE FUNCTION @extschema@._reconcile_compare(run bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	bids integer[];
	pids integer[];
	sbids integer[];
	b integer;
	p integer;
	m record;
	failed text;
BEGIN
	-- (two tests: the second is parsed only once the table exists)
	IF to_regclass('pg_temp.recon_prepared') IS NULL THEN
		PERFORM @extschema@._reconcile_prepare(run);
	ELSIF NOT EXISTS (SELECT 1 FROM pg_temp.recon_prepared x WHERE x.run_id = run) THEN
		PERFORM @extschema@._reconcile_prepare(run);
	END IF;
	SELECT x.* INTO r FROM @extschema@.reconcile_run x WHERE x.run_id = run FOR UPDATE;

	-- the bindings compared: all for a crm pass, else those of the providers chosen
	SELECT coalesce(array_agg(x.binding_id ORDER BY x.binding_id), '{}') INTO bids
	  FROM @extschema@.binding x
	 WHERE x.active
	   AND (r.kind = 'crm' OR x.provider_id IN (SELECT c.key::integer FROM jsonb_each(r.pulls) c));
	SELECT coalesce(array_agg(c.key::integer ORDER BY c.key::integer), '{}') INTO pids
	  FROM jsonb_each(r.pulls) c WHERE c.value->>'state' = 'done';
	SELECT string_agg(format('the pull of provider %s failed: %s', c.value->>'provider', c.value->>'error'), '; ')
	  INTO failed
	  FROM jsonb_each(r.pulls) c WHERE c.value->>'state' = 'failed';

	FOREACH p IN ARRAY pids LOOP
		PERFORM @extschema@._reconcile_carrier(run, p);
	END LOOP;
	FOREACH b IN ARRAY bids LOOP
		BEGIN
			PERFORM @extschema@._reconcile_crm(b, r.kind = 'full');
		EXCEPTION WHEN OTHERS THEN
			-- a table that cannot be read (row security forced on its
			-- owner, its key column renamed since attach()): none of its
			-- tickets is judged; the other tables are compared, and the
			-- run fails, naming it
			bids := array_remove(bids, b);
			failed := concat_ws('; ', failed, format('table %s: %s',
				(SELECT x.tbl FROM @extschema@.binding x WHERE x.binding_id = b), SQLERRM));
		END;
	END LOOP;
	-- stuck and fees: thresholds are days and bills monthly, so a CRM-side
	-- pass looks hourly
	SELECT coalesce(array_agg(s.binding_id ORDER BY s.binding_id), '{}') INTO sbids
	  FROM @extschema@.reconcile_state s
	 WHERE s.binding_id = ANY (bids)
	   AND (r.kind = 'full' OR s.stuck_at IS NULL OR s.stuck_at < now() - interval '1 hour');
	PERFORM @extschema@._reconcile_stuck(sbids);
	PERFORM @extschema@._reconcile_fees(sbids);
	UPDATE @extschema@.reconcile_state s SET stuck_at = now() WHERE s.binding_id = ANY (sbids);
	SELECT * INTO m FROM @extschema@._reconcile_merge(run, bids, pids, sbids);

	-- the snapshots of earlier runs of these providers are of no more use
	DELETE FROM @extschema@.carrier_snapshot c WHERE c.provider_id = ANY (pids) AND c.run_id < run;
	TRUNCATE pg_temp.recon_found, pg_temp.recon_pair, pg_temp.recon_ref, pg_temp.recon_dup,
		pg_temp.recon_prepared, pg_temp.recon_orders;

	UPDATE @extschema@.reconcile_run x
	   SET state = CASE WHEN failed IS NULL THEN 'done' ELSE 'failed' END,
		   error = failed, opened = m.opened, reopened = m.reopened, closed = m.closed,
		   finished_at = clock_timestamp()
	 WHERE x.run_id = run;
END
$$;


------------------------------------------------------------------------------
-- No foreign key between two of the extension's dumped tables
------------------------------------------------------------------------------
-- pg_dump dumps the rows of binding and provider, crm_delivery and
-- crm_source as data only; CREATE EXTENSION makes their foreign keys before
-- any row comes back, and pg_restore -j loads tables side by side in any
-- order: a binding loaded before its provider was refused, and every INSERT
-- into the attached table failed after the restore.  Triggers keep what the
-- keys kept (install/10_queue.sql, install/60_crm.sql).
-- (0.1's binding_provider_id_fkey is dropped at the end of this script: see there)
ALTER TABLE @extschema@.crm_delivery DROP CONSTRAINT crm_delivery_crm_source_id_fkey;
CREATE FUNCTION @extschema@._provider_in_use()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	bid integer;
BEGIN
	IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
		SELECT b.binding_id INTO bid FROM @extschema@.binding b LIMIT 1;
	ELSE
		SELECT b.binding_id INTO bid FROM @extschema@.binding b
		 WHERE b.provider_id OPERATOR(pg_catalog.=) OLD.provider_id LIMIT 1;
	END IF;
	IF bid IS NOT NULL AND TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
		RAISE EXCEPTION 'cannot truncate shipsync.provider: binding % names one of its providers', bid
			USING ERRCODE = 'foreign_key_violation',
				  HINT = 'Delete the bindings first, as the extension''s owner.';
	ELSIF bid IS NOT NULL THEN
		RAISE EXCEPTION 'provider "%" is still named by binding %', OLD.name, bid
			USING ERRCODE = 'foreign_key_violation',
				  DETAIL = 'A binding keeps its provider, attached or detached: its shipments and intents are that provider''s.',
				  HINT = 'Delete the provider''s bindings first, as the extension''s owner.';
	END IF;
	IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
		RETURN NULL;
	END IF;
	RETURN OLD;
END
$$;
COMMENT ON FUNCTION @extschema@._provider_in_use() IS
	'Internal: refuses to delete (or truncate) a provider that a binding names, as a foreign key would; the extension''s dumped tables have none, so that pg_restore -j can load them in any order.';
CREATE TRIGGER provider_in_use BEFORE DELETE ON @extschema@.provider
	FOR EACH ROW EXECUTE FUNCTION @extschema@._provider_in_use();
CREATE TRIGGER provider_in_use_truncate BEFORE TRUNCATE ON @extschema@.provider
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._provider_in_use();
CREATE FUNCTION @extschema@._drop_deliveries()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM @extschema@.crm_delivery d
	 WHERE d.crm_source_id OPERATOR(pg_catalog.=) OLD.crm_source_id;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._drop_deliveries() IS
	'Internal: deletes the deliveries of a deleted CRM source, as ON DELETE CASCADE would; the extension''s dumped tables have no foreign key between them, so that pg_restore -j can load them in any order.';
CREATE TRIGGER crm_source_drop_deliveries AFTER DELETE ON @extschema@.crm_source
	FOR EACH ROW EXECUTE FUNCTION @extschema@._drop_deliveries();
REVOKE ALL ON FUNCTION @extschema@._provider_in_use(), @extschema@._drop_deliveries() FROM PUBLIC;

------------------------------------------------------------------------------
-- A restore records nothing in the audit log
------------------------------------------------------------------------------
-- The audit triggers recorded every row a restore loaded into an audited
-- table as an insert by the restoring role, with ids from the audit
-- sequence, which the restore then set back to the dump's value: a log
-- holding fewer ids than the audited tables hold rows (after an update
-- from 0.1, or a pruning) came back with those rows, and the changes made
-- after the restore took their ids and were dropped by ON CONFLICT.
CREATE OR REPLACE FUNCTION @extschema@._audit_row()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v record;
BEGIN
	IF TG_TABLE_SCHEMA OPERATOR(pg_catalog.<>) '@extschema@'
	   OR NOT TG_TABLE_NAME OPERATOR(pg_catalog.=) ANY
		   (ARRAY['provider', 'secret', 'binding', 'field_map', 'status_map', 'crm_source',
				  'fee_type_map', 'currency', 'stuck_after']) THEN
		RAISE EXCEPTION 'shipsync._audit_row() audits the tables of pg_shipsync only'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('It fired on %I.%I.', TG_TABLE_SCHEMA, TG_TABLE_NAME);
	END IF;
	-- What a restore loads is no one's change, as what the extension's
	-- scripts seed is not: a superuser session with check_function_bodies
	-- off is pg_dump's script or pg_restore (both turn it off; only a
	-- superuser creates the extension, and a superuser could disable these
	-- triggers anyway).  Recorded, those rows took ids from a sequence the
	-- restore then set back, and the changes made after it were dropped.
	IF NOT pg_catalog.current_setting('check_function_bodies')::boolean
	   AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r
			 WHERE r.rolname OPERATOR(pg_catalog.=) SESSION_USER) THEN
		RETURN NULL;
	END IF;
	SELECT * INTO v FROM @extschema@._audit_values(TG_OP, TG_ARGV[1], TG_ARGV[2]::jsonb,
		to_jsonb(OLD), to_jsonb(NEW));
	PERFORM @extschema@._audit(
		coalesce(nullif(current_setting('shipsync.audit_action', true), ''), lower(TG_OP)),
		TG_ARGV[0], v.object_name, v.old_value, v.new_value);
	RETURN NULL;
END
$$;
-- A DBA's changes of built-in mapping rows survive pg_dump
------------------------------------------------------------------------------
-- status_map, fee_type_map and currency dump only their rows that are not
-- built in; an UPDATE of a built-in row (docs/tracking.md: "Changing a
-- mapping is an INSERT or UPDATE of status_map") stayed built in, and a
-- restore brought the seed back.  Rows written from now on are the
-- writer's own (install/30_tracking.sql, install/45_fees.sql).  Built-in
-- rows changed before the update cannot be told from the seeds here and
-- stay as they are.
CREATE FUNCTION @extschema@._builtin_row()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
		IF OLD.builtin AND pg_catalog.pg_trigger_depth() OPERATOR(pg_catalog.=) 1 THEN
			RAISE EXCEPTION 'a built-in row of shipsync.% cannot be deleted', TG_TABLE_NAME
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  DETAIL = 'Built-in rows come with the extension and are created again when a dump is restored.',
					  HINT = CASE TG_TABLE_NAME
						WHEN 'status_map' THEN 'Update it instead (status ''unknown'' maps its raw status to nothing): an updated row is yours, and pg_dump keeps it.'
						WHEN 'fee_type_map' THEN 'Update its fee_type instead: an updated row is yours, and pg_dump keeps it.'
						ELSE 'Built-in currencies stay.' END;
		END IF;
		RETURN OLD;
	END IF;
	NEW.builtin := false;
	IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
		CASE TG_TABLE_NAME
		WHEN 'status_map' THEN
			DELETE FROM @extschema@.status_map m
			 WHERE m.builtin AND m.profile OPERATOR(pg_catalog.=) NEW.profile
			   AND m.raw_status OPERATOR(pg_catalog.=) NEW.raw_status
			   AND coalesce(m.pattern, '') OPERATOR(pg_catalog.=) coalesce(NEW.pattern, '');
		WHEN 'fee_type_map' THEN
			DELETE FROM @extschema@.fee_type_map m
			 WHERE m.builtin AND m.profile OPERATOR(pg_catalog.=) NEW.profile
			   AND m.code OPERATOR(pg_catalog.=) NEW.code;
		ELSE
			DELETE FROM @extschema@.currency c
			 WHERE c.builtin AND c.code OPERATOR(pg_catalog.=) NEW.code;
		END CASE;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@._builtin_row() IS
	'Internal: a row written to status_map, fee_type_map or currency is the writer''s own (builtin false, dumped by pg_dump): an updated built-in row becomes one, an inserted row takes the place of the built-in row of its key, and a built-in row cannot be deleted.';
CREATE TRIGGER status_map_builtin BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.status_map
	FOR EACH ROW EXECUTE FUNCTION @extschema@._builtin_row();
CREATE TRIGGER fee_type_map_builtin BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.fee_type_map
	FOR EACH ROW EXECUTE FUNCTION @extschema@._builtin_row();
CREATE TRIGGER currency_builtin BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.currency
	FOR EACH ROW EXECUTE FUNCTION @extschema@._builtin_row();
COMMENT ON COLUMN @extschema@.status_map.builtin IS
	'Seeded by the extension (not dumped by pg_dump, created again on restore). A row you update, or insert with a built-in row''s key in its place, is yours (false) and dumped; built-in rows cannot be deleted.';
COMMENT ON COLUMN @extschema@.fee_type_map.builtin IS
	'Seeded by the extension (not dumped by pg_dump, created again on restore). Add rows for your codes beside them; a row you update, or insert with a built-in row''s key in its place, is yours (false) and dumped; built-in rows cannot be deleted.';
REVOKE ALL ON FUNCTION @extschema@._builtin_row() FROM PUBLIC;

------------------------------------------------------------------------------
-- A dump of a database updated from 0.1 restores its own field maps
------------------------------------------------------------------------------
-- 0.1 numbered a database's own field_map rows right after its 28 seeds;
-- this update adds its seeds after them, while a fresh install (the
-- CREATE EXTENSION of a restore) seeds all of them first, taking the ids
-- the own rows come back with: the restore failed on field_map_pkey.  A
-- row inserted with a taken id gets the next free one.
CREATE OR REPLACE FUNCTION @extschema@._field_map_check()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.seeded THEN
		RAISE EXCEPTION 'profile "%" is built in and read-only', OLD.profile
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'Its rows come with the extension and are created again on restore.',
				  HINT = format('Copy it with shipsync.copy_profile(%L, ''my_profile''), change the copy, and set option "profile" of the provider.', OLD.profile);
	END IF;
	IF TG_OP = 'DELETE' THEN
		RETURN OLD;
	END IF;
	-- only the extension script seeds, before this trigger exists
	NEW.seeded := false;
	PERFORM @extschema@._map_check(NEW.target_path, CASE WHEN NEW.direction <> 'statement' THEN NEW.source END, NEW.transform, NEW.arg::text);
	NEW.updated_at := now();
	NEW.updated_by := @extschema@._actor();
	-- fee and statement rows name fee fields; a statement row's source is
	-- a CSV column's name, not a path (so it is not compiled above)
	IF NEW.direction IN ('fee', 'statement') THEN
		PERFORM @extschema@._check_fee_map_row(NEW.direction, NEW.target_path, NEW.source);
	END IF;
	-- A row restored from a dump whose id a seed of this install took: a
	-- database updated from an older version numbered its own rows before
	-- the seeds its update added, and a fresh install (a restore's CREATE
	-- EXTENSION) seeds them first.  The next free id, as nextval would
	-- have given it (and after a restore set the sequence back, nextval's
	-- own ids skip the rows renumbered so).
	IF TG_OP = 'INSERT' THEN
		WHILE EXISTS (SELECT 1 FROM @extschema@.field_map m
					   WHERE m.field_map_id OPERATOR(pg_catalog.=) NEW.field_map_id) LOOP
			NEW.field_map_id := pg_catalog.nextval('@extschema@.field_map_field_map_id_seq');
		END LOOP;
	END IF;
	RETURN NEW;
END
$$;

------------------------------------------------------------------------------
-- A restore keeps the tickets as they were
------------------------------------------------------------------------------
-- The fold of a new ticket into its problem's ticket also folded the rows
-- a restore loads: an updated 0.1 database keeps several tickets of one
-- problem (0.1 opened one per dead intent; the update resolved the older
-- ones), and its restore reopened the oldest and dropped the others.
CREATE OR REPLACE FUNCTION @extschema@._ticket_fold()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t record;
BEGIN
	-- a restore loads tickets as they were, several of one problem too (0.1
	-- opened one per dead intent): folded, a resolved one was reopened and
	-- the others lost.  A restore is a superuser session with
	-- check_function_bodies off, as pg_dump's scripts and pg_restore set it
	-- (_audit_row() in 80_security.sql tells it the same way).
	IF NOT pg_catalog.current_setting('check_function_bodies')::boolean
	   AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r
			 WHERE r.rolname OPERATOR(pg_catalog.=) SESSION_USER) THEN
		RETURN NEW;
	END IF;
	-- one writer per problem at a time, so that two transactions cannot
	-- both find no open ticket and both open one
	PERFORM pg_advisory_xact_lock(hashtextextended(concat_ws('|', 'shipsync ticket', NEW.kind,
		NEW.provider_id, NEW.binding_id, NEW.order_key, NEW.subject), 0));
	SELECT x.ticket_id, x.resolved_at INTO t
	  FROM @extschema@.exception_ticket x
	 WHERE x.kind OPERATOR(pg_catalog.=) NEW.kind
	   AND coalesce(x.provider_id, 0) OPERATOR(pg_catalog.=) coalesce(NEW.provider_id, 0)
	   AND coalesce(x.binding_id, 0) OPERATOR(pg_catalog.=) coalesce(NEW.binding_id, 0)
	   AND coalesce(x.order_key, '') OPERATOR(pg_catalog.=) coalesce(NEW.order_key, '')
	   AND coalesce(x.subject, '') OPERATOR(pg_catalog.=) coalesce(NEW.subject, '')
	 ORDER BY x.resolved_at IS NULL DESC, x.ticket_id DESC
	 LIMIT 1;
	IF NOT FOUND THEN
		NEW.last_seen_at := coalesce(NEW.last_seen_at, NEW.opened_at);
		RETURN NEW;
	END IF;
	UPDATE @extschema@.exception_ticket x
	   SET detail = NEW.detail,
		   outbox_id = coalesce(NEW.outbox_id, x.outbox_id),
		   tracking_number = coalesce(NEW.tracking_number, x.tracking_number),
		   facts = coalesce(NEW.facts, x.facts),
		   last_seen_at = pg_catalog.now(),
		   resolved_at = NULL,
		   resolved_by = NULL,
		   resolution = NULL,
		   acknowledged_at = CASE WHEN t.resolved_at IS NULL THEN x.acknowledged_at END,
		   acknowledged_by = CASE WHEN t.resolved_at IS NULL THEN x.acknowledged_by END,
		   acknowledgement = CASE WHEN t.resolved_at IS NULL THEN x.acknowledgement END,
		   reopen_count = x.reopen_count OPERATOR(pg_catalog.+)
			   CASE WHEN t.resolved_at IS NULL THEN 0 ELSE 1 END,
		   reopened_at = CASE WHEN t.resolved_at IS NULL THEN x.reopened_at ELSE pg_catalog.now() END
	 WHERE x.ticket_id OPERATOR(pg_catalog.=) t.ticket_id;
	IF t.resolved_at IS NOT NULL THEN
		PERFORM pg_catalog.pg_notify('shipsync', pg_catalog.json_build_object('event', 'ticket_reopened',
			'ticket_id', t.ticket_id, 'kind', NEW.kind, 'binding_id', NEW.binding_id,
			'order_key', NEW.order_key)::text);
	END IF;
	RETURN NULL;
END
$$;


------------------------------------------------------------------------------
-- CRM sources: option version_column, so that an older update (a push
-- retried after a newer one) does not revert an order
------------------------------------------------------------------------------
COMMENT ON COLUMN @extschema@.crm_source.options IS
	'The options given to create_crm_source() other than the secret: organization_id and sobject_type for salesforce_om, version_column.';
-- (create_crm_source() as it ends up: a later section replaces it, below)
COMMENT ON FUNCTION @extschema@.create_crm_source(text, text, regclass, jsonb) IS
	'Register a CRM that pushes orders into table tbl, reached by the receiver at /crm/{name}. Kinds: jiandaoyun (简道云 data push, X-JDY-Signature), salesforce_om (Salesforce Outbound Messages, checked by OrganizationId), generic (Standard Webhooks-signed JSON). Options: secret (jiandaoyun and generic), organization_id and sobject_type (salesforce_om), profile (the crm_in field-map profile, by default the source name), key_column (the column matched to the CRM record id, by default the primary key; it needs a unique index), dedup_ttl (how long delivery ids are remembered, default 7 days), version_column (a column a crm_in row writes the record''s modification time into: an update older than the row''s changes nothing).';
ALTER FUNCTION @extschema@.create_crm_source(text, text, regclass, jsonb) SET shipsync.audit_action = 'create_crm_source';

------------------------------------------------------------------------------
-- Salesforce Outbound Messages: a document type declaration is SS400
------------------------------------------------------------------------------
/*
 * A Salesforce Outbound Message (SOAP 1.1) as rows: its OrganizationId, and
 * per Notification its Id, the sObject's type (without the "sf:" prefix)
 * and the sObject's fields as a JSON object (xsi:nil fields are null).
 * Parsed by PostgreSQL's xpath(); its text results come XML-escaped (&, <,
 * > and CR), which is undone here.  A body that is not such a message
 * raises SS400; so does one with a document type declaration, which
 * Salesforce never sends: its entities are kept in the parsed document
 * and failed the reading of each notification (2200M, a 500 of the
 * receiver), and its default attributes could add what the body does not
 * say.
 */
CREATE OR REPLACE FUNCTION @extschema@._salesforce_notifications(body text)
RETURNS TABLE (organization_id text, notification_id text, sobject_type text, record jsonb)
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ns text[] := ARRAY[ARRAY['s', 'http://schemas.xmlsoap.org/soap/envelope/'],
					   ARRAY['om', 'http://soap.sforce.com/2005/09/outbound'],
					   ARRAY['xsi', 'http://www.w3.org/2001/XMLSchema-instance']];
	doc xml;
	n xml;
	found_any boolean := false;
BEGIN
	IF pg_catalog.strpos(body, '<!DOCTYPE') OPERATOR(pg_catalog.>) 0 THEN
		RAISE EXCEPTION 'the body is not a Salesforce Outbound Message'
			USING ERRCODE = 'SS400',
				  DETAIL = 'It has a document type declaration (<!DOCTYPE ...>), which Outbound Messages never have.';
	END IF;
	BEGIN
		doc := XMLPARSE(DOCUMENT pg_catalog.regexp_replace(body, E'^\\uFEFF', ''));
	EXCEPTION WHEN OTHERS THEN
		RAISE EXCEPTION 'the body is not an XML document'
			USING ERRCODE = 'SS400', DETAIL = SQLERRM;
	END;
	organization_id := (pg_catalog.xpath('/s:Envelope/s:Body/om:notifications/om:OrganizationId/text()', doc, ns))[1]::text;
	IF organization_id IS NULL THEN
		RAISE EXCEPTION 'the body is not a Salesforce Outbound Message'
			USING ERRCODE = 'SS400',
				  DETAIL = 'It has no soapenv:Envelope/soapenv:Body/notifications/OrganizationId.';
	END IF;
	FOREACH n IN ARRAY pg_catalog.xpath('/s:Envelope/s:Body/om:notifications/om:Notification', doc, ns) LOOP
		found_any := true;
		notification_id := (pg_catalog.xpath('/om:Notification/om:Id/text()', n, ns))[1]::text;
		sobject_type := pg_catalog.regexp_replace(
			(pg_catalog.xpath('/om:Notification/om:sObject/@xsi:type', n, ns))[1]::text, '^[^:]*:', '');
		SELECT pg_catalog.jsonb_object_agg(
				   (pg_catalog.xpath('local-name(/*)', f))[1]::text,
				   CASE WHEN (pg_catalog.xpath('/*/@xsi:nil', f, ns))[1]::text OPERATOR(pg_catalog.=) 'true' THEN NULL
						ELSE pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
							 (pg_catalog.xpath('string(/*)', f))[1]::text,
							 '&lt;', '<'), '&gt;', '>'), '&#x0d;', E'\r'), '&amp;', '&') END)
		INTO record
		FROM pg_catalog.unnest(pg_catalog.xpath('/om:Notification/om:sObject/*', n, ns)) AS f;
		IF notification_id IS NULL OR record IS NULL THEN
			RAISE EXCEPTION 'a notification of the Outbound Message has no Id or no sObject'
				USING ERRCODE = 'SS400';
		END IF;
		RETURN NEXT;
	END LOOP;
	IF NOT found_any THEN
		RAISE EXCEPTION 'the Outbound Message has no Notification'
			USING ERRCODE = 'SS400';
	END IF;
END
$$;

------------------------------------------------------------------------------
-- CRM sources: removed records are remembered for dedup_ttl, so that a
-- create or update retried after its record's remove does not bring the
-- order back (src/crm.c)
------------------------------------------------------------------------------
CREATE TABLE @extschema@.crm_removed (
	crm_source_id	integer NOT NULL REFERENCES @extschema@.crm_source ON DELETE CASCADE,
	record_key		text NOT NULL,
	version			jsonb,
	removed_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	expires_at		timestamptz NOT NULL,
	PRIMARY KEY (crm_source_id, record_key)
);
CREATE INDEX crm_removed_expiry_idx ON @extschema@.crm_removed (crm_source_id, expires_at);
COMMENT ON TABLE @extschema@.crm_removed IS
	'Records removed by a CRM source with option version_column, kept for its dedup_ttl: the record''s key and version. A create or update of such a record not newer than its remove (a retry of a push sent before it) does not bring the order back; a 简道云 data_recover does.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.crm_removed', '');


------------------------------------------------------------------------------
-- create_crm_source() names a key column the table does not have
------------------------------------------------------------------------------
-- A key_column the table lacks was reported as a column without a unique
-- index of its own, with a hint to add one on the missing column.  It is
-- now "column ... does not exist" (undefined_column), as in attach().
-- CREATE OR REPLACE resets the function's settings: audit_action again.
CREATE OR REPLACE FUNCTION @extschema@.create_crm_source(name text, kind text, tbl regclass,
											  options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	opts jsonb := coalesce(options, '{}');
	keycol name;
	ttl interval;
	id integer;
	relkind "char";
	k text;
	vtype oid;
	allowed text[] := ARRAY['profile', 'key_column', 'dedup_ttl', 'secret', 'version_column'];
BEGIN
	IF name IS NULL OR name OPERATOR(pg_catalog.!~) '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid CRM source name "%"', coalesce(name, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A CRM source name is 1 to 63 letters, digits, "_", "." or "-"; it is the last part of the receiver''s URL /crm/{name}.',
				  HINT = 'For example ''jdy'' or ''salesforce-eu''.';
	END IF;
	IF kind IS NULL OR kind OPERATOR(pg_catalog.<>) ALL (ARRAY['jiandaoyun', 'salesforce_om', 'generic']) THEN
		RAISE EXCEPTION 'unknown CRM source kind "%"', coalesce(kind, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'The kinds are jiandaoyun (简道云 data push), salesforce_om (Salesforce Outbound Messages) and generic (Standard Webhooks-signed JSON).',
				  HINT = 'See docs/receiver.md.';
	END IF;
	IF kind OPERATOR(pg_catalog.=) 'salesforce_om' THEN
		allowed := ARRAY['profile', 'key_column', 'dedup_ttl', 'organization_id', 'sobject_type', 'version_column'];
	END IF;
	PERFORM @extschema@._check_options(opts, allowed, 'CRM source');
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.relkind INTO relkind FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) tbl;
	IF relkind OPERATOR(pg_catalog.<>) ALL (ARRAY['r', 'p']::"char"[]) THEN
		RAISE EXCEPTION '"%" is not a table', tbl
			USING ERRCODE = 'wrong_object_type',
				  HINT = 'Name an ordinary or partitioned table.';
	END IF;
	IF NOT pg_catalog.pg_has_role(session_user,
			(SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'Pushes of the source are written into the table with its owner''s rights.';
	END IF;

	-- options of each kind
	FOREACH k IN ARRAY ARRAY['profile', 'key_column', 'dedup_ttl', 'secret', 'organization_id', 'sobject_type', 'version_column'] LOOP
		IF opts ? k AND (pg_catalog.jsonb_typeof(opts->k) OPERATOR(pg_catalog.<>) 'string'
						 OR opts->>k OPERATOR(pg_catalog.=) '') THEN
			RAISE EXCEPTION 'option "%" must be a non-empty string', k
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = CASE WHEN k OPERATOR(pg_catalog.=) 'secret'
								  THEN 'Give the secret the CRM signs its pushes with.' ELSE 'Give a string.' END;
		END IF;
	END LOOP;
	IF kind OPERATOR(pg_catalog.<>) 'salesforce_om' AND NOT opts ? 'secret' THEN
		RAISE EXCEPTION 'a CRM source of kind % needs option "secret"', kind
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Pushes are accepted only when their signature can be checked.',
				  HINT = CASE kind WHEN 'jiandaoyun' THEN 'Give the secret of the 简道云 data push (数据推送 → 密钥).'
								   ELSE 'Give the whsec_ secret of the sender''s Standard Webhooks signature.' END;
	END IF;
	IF opts ? 'secret' THEN
		PERFORM @extschema@._check_crm_secret(kind, opts->>'secret', 'option "secret"');
	END IF;
	IF kind OPERATOR(pg_catalog.=) 'salesforce_om'
	   AND coalesce(opts->>'organization_id', '') OPERATOR(pg_catalog.!~) '^[A-Za-z0-9]{15}([A-Za-z0-9]{3})?$' THEN
		RAISE EXCEPTION 'a CRM source of kind salesforce_om needs option "organization_id"'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Outbound Messages are not signed: the OrganizationId of each message must be the organization''s id (15 or 18 characters).',
				  HINT = 'Salesforce shows it under Setup → Company Information; add mTLS or an IP allowlist at the proxy as well.';
	END IF;
	IF opts ? 'profile' AND (opts->>'profile') OPERATOR(pg_catalog.!~) '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid profile name "%"', opts->>'profile'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A profile name is 1 to 63 letters, digits, "_", "." or "-".';
	END IF;
	BEGIN
		ttl := coalesce(opts->>'dedup_ttl', '7 days')::interval;
	EXCEPTION WHEN OTHERS THEN
		ttl := NULL;
	END;
	IF ttl IS NULL OR ttl OPERATOR(pg_catalog.<) interval '1 minute' OR ttl OPERATOR(pg_catalog.>) interval '1 year' THEN
		RAISE EXCEPTION 'option "dedup_ttl" must be an interval between 1 minute and 1 year'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = pg_catalog.format('The value given is %s.', opts->'dedup_ttl'),
				  HINT = 'For example ''7 days'': at least as long as the CRM goes on retrying a push.';
	END IF;

	-- the key: given, or the single-column primary key; unique, for upserts
	keycol := opts->>'key_column';
	IF keycol IS NULL THEN
		SELECT a.attname INTO keycol
		FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
		  ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]
		WHERE i.indrelid OPERATOR(pg_catalog.=) tbl AND i.indisprimary AND i.indnatts OPERATOR(pg_catalog.=) 1;
		IF keycol IS NULL THEN
			RAISE EXCEPTION 'table % has no single-column primary key', tbl
				USING ERRCODE = 'invalid_table_definition',
					  HINT = 'Give option "key_column": the column that holds the CRM''s record id.';
		END IF;
	END IF;
	IF NOT EXISTS (
		SELECT 1 FROM pg_catalog.pg_attribute a
		WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) keycol
		  AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped) THEN
		RAISE EXCEPTION 'column "%" of table % does not exist', keycol, tbl
			USING ERRCODE = 'undefined_column',
				  HINT = 'Give option "key_column": the column that holds the CRM''s record id.';
	END IF;
	IF NOT EXISTS (
		SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
		  ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]
		WHERE i.indrelid OPERATOR(pg_catalog.=) tbl AND i.indisunique AND i.indnkeyatts OPERATOR(pg_catalog.=) 1
		  AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname OPERATOR(pg_catalog.=) keycol) THEN
		RAISE EXCEPTION 'column "%" of table % has no unique index of its own', keycol, tbl
			USING ERRCODE = 'invalid_table_definition',
				  DETAIL = 'A push is written with INSERT ... ON CONFLICT on the key column.',
				  HINT = pg_catalog.format('Add one: ALTER TABLE %s ADD UNIQUE (%I).', tbl, keycol);
	END IF;
	-- the version: a column an update or upsert must not go back on, of a
	-- type pg_catalog's >= compares (a domain's base type)
	IF opts ? 'version_column' THEN
		SELECT CASE WHEN t.typbasetype OPERATOR(pg_catalog.=) 0::oid THEN t.oid ELSE t.typbasetype END INTO vtype
		FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid
		WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) (opts->>'version_column')::name
		  AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped;
		IF vtype IS NULL THEN
			RAISE EXCEPTION 'option "version_column" names column "%", which table % does not have', opts->>'version_column', tbl
				USING ERRCODE = 'undefined_column',
					  HINT = 'Name the column a crm_in row writes the record''s last modification time into.';
		END IF;
		IF (opts->>'version_column')::name OPERATOR(pg_catalog.=) keycol THEN
			RAISE EXCEPTION 'option "version_column" must not be the key column'
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Name the column a crm_in row writes the record''s last modification time into.';
		END IF;
		IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_operator o
					   WHERE o.oprname OPERATOR(pg_catalog.=) '>='
						 AND o.oprnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace
						 AND o.oprleft OPERATOR(pg_catalog.=) vtype AND o.oprright OPERATOR(pg_catalog.=) vtype) THEN
			RAISE EXCEPTION 'column "%" of table % cannot hold versions', opts->>'version_column', tbl
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = pg_catalog.format('Its type %s has no >= operator of pg_catalog to compare two versions with.',
												 vtype::pg_catalog.regtype),
					  HINT = 'Use a timestamptz, timestamp, date, number or text column.';
		END IF;
	END IF;
	PERFORM @extschema@._check_crm_map(coalesce(opts->>'profile', name), tbl);

	INSERT INTO @extschema@.crm_source AS s (name, kind, tbl, key_column, profile, dedup_ttl, options)
	VALUES (name, kind, tbl, keycol, coalesce(opts->>'profile', name), ttl,
			opts OPERATOR(pg_catalog.-) ARRAY['secret', 'profile', 'key_column', 'dedup_ttl'])
	RETURNING s.crm_source_id INTO id;
	-- the secret, encrypted under the source's name; nothing left under
	-- that name before (the name was free) may pass for a previous secret
	DELETE FROM @extschema@.secret x WHERE x.provider OPERATOR(pg_catalog.=) create_crm_source.name;
	IF opts ? 'secret' THEN
		PERFORM @extschema@._secret_put(create_crm_source.name, 'webhook_secret', opts->>'secret');
	END IF;
	RETURN id;
EXCEPTION
	WHEN unique_violation THEN
		RAISE EXCEPTION 'CRM source "%" already exists', create_crm_source.name
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Choose another name, or drop the source first with shipsync.drop_crm_source().';
END
$$;
ALTER FUNCTION @extschema@.create_crm_source(text, text, regclass, jsonb) SET shipsync.audit_action = 'create_crm_source';

------------------------------------------------------------------------------
-- Tickets opened by the thousand take no lock each
------------------------------------------------------------------------------
-- _ticket_fold() took an advisory lock per ticket; DROP TABLE of a table
-- with tens of thousands of waiting intents, and as many unknown tracking
-- numbers expiring at once, filled the server's lock table ("out of
-- shared memory"): the table could not be dropped, and every push of the
-- provider failed.  Those two kinds have one writer each, which
-- serializes itself.
CREATE OR REPLACE FUNCTION @extschema@._ticket_fold()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t record;
BEGIN
	-- a restore loads tickets as they were, several of one problem too (0.1
	-- opened one per dead intent): folded, a resolved one was reopened and
	-- the others lost.  A restore is a superuser session with
	-- check_function_bodies off, as pg_dump's scripts and pg_restore set it
	-- (_audit_row() in 80_security.sql tells it the same way).
	IF NOT pg_catalog.current_setting('check_function_bodies')::boolean
	   AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r
			 WHERE r.rolname OPERATOR(pg_catalog.=) SESSION_USER) THEN
		RETURN NEW;
	END IF;
	-- one writer per problem at a time, so that two transactions cannot
	-- both find no open ticket and both open one.  The kinds opened by the
	-- thousand in one statement have one writer each, which serializes
	-- itself: _on_drop() (the dropped table's binding row) and
	-- _expire_unmatched() (a lock per provider).  A lock per ticket there
	-- filled the server's lock table ("out of shared memory").
	IF NEW.kind OPERATOR(pg_catalog.<>) ALL (ARRAY['table_dropped', 'unmatched_expired']) THEN
		PERFORM pg_advisory_xact_lock(hashtextextended(concat_ws('|', 'shipsync ticket', NEW.kind,
			NEW.provider_id, NEW.binding_id, NEW.order_key, NEW.subject), 0));
	END IF;
	SELECT x.ticket_id, x.resolved_at INTO t
	  FROM @extschema@.exception_ticket x
	 WHERE x.kind OPERATOR(pg_catalog.=) NEW.kind
	   AND coalesce(x.provider_id, 0) OPERATOR(pg_catalog.=) coalesce(NEW.provider_id, 0)
	   AND coalesce(x.binding_id, 0) OPERATOR(pg_catalog.=) coalesce(NEW.binding_id, 0)
	   AND coalesce(x.order_key, '') OPERATOR(pg_catalog.=) coalesce(NEW.order_key, '')
	   AND coalesce(x.subject, '') OPERATOR(pg_catalog.=) coalesce(NEW.subject, '')
	 ORDER BY x.resolved_at IS NULL DESC, x.ticket_id DESC
	 LIMIT 1;
	IF NOT FOUND THEN
		NEW.last_seen_at := coalesce(NEW.last_seen_at, NEW.opened_at);
		RETURN NEW;
	END IF;
	UPDATE @extschema@.exception_ticket x
	   SET detail = NEW.detail,
		   outbox_id = coalesce(NEW.outbox_id, x.outbox_id),
		   tracking_number = coalesce(NEW.tracking_number, x.tracking_number),
		   facts = coalesce(NEW.facts, x.facts),
		   last_seen_at = pg_catalog.now(),
		   resolved_at = NULL,
		   resolved_by = NULL,
		   resolution = NULL,
		   acknowledged_at = CASE WHEN t.resolved_at IS NULL THEN x.acknowledged_at END,
		   acknowledged_by = CASE WHEN t.resolved_at IS NULL THEN x.acknowledged_by END,
		   acknowledgement = CASE WHEN t.resolved_at IS NULL THEN x.acknowledgement END,
		   reopen_count = x.reopen_count OPERATOR(pg_catalog.+)
			   CASE WHEN t.resolved_at IS NULL THEN 0 ELSE 1 END,
		   reopened_at = CASE WHEN t.resolved_at IS NULL THEN x.reopened_at ELSE pg_catalog.now() END
	 WHERE x.ticket_id OPERATOR(pg_catalog.=) t.ticket_id;
	IF t.resolved_at IS NOT NULL THEN
		PERFORM pg_catalog.pg_notify('shipsync', pg_catalog.json_build_object('event', 'ticket_reopened',
			'ticket_id', t.ticket_id, 'kind', NEW.kind, 'binding_id', NEW.binding_id,
			'order_key', NEW.order_key)::text);
	END IF;
	RETURN NULL;
END
$$;
CREATE OR REPLACE FUNCTION @extschema@._expire_unmatched(pid integer)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
	pids integer[];
BEGIN
	-- the only writer of unmatched_expired tickets, one transaction at a
	-- time per provider (_ticket_fold() takes no lock per ticket of this
	-- kind).  A provider whose events another transaction is expiring is
	-- left to it (the next call takes what is left): a push never waits
	-- here, holding the locks of its tracking numbers
	pids := ARRAY(SELECT e.provider_id
					FROM (SELECT DISTINCT u.provider_id FROM @extschema@.unmatched_event u
						   WHERE u.expires_at <= now() AND (pid IS NULL OR u.provider_id = pid)) e
				   WHERE pg_try_advisory_xact_lock(
							 hashtextextended('shipsync unmatched_expired|' || e.provider_id, 0)));
	IF cardinality(pids) = 0 THEN
		RETURN 0;
	END IF;
	WITH d AS (
		DELETE FROM @extschema@.unmatched_event u
		 WHERE u.expires_at <= now() AND u.provider_id = ANY (pids)
		RETURNING u.*),
	-- one ticket per tracking number (the ledger folds events of the same one)
	t AS (
		INSERT INTO @extschema@.exception_ticket (kind, provider_id, subject, tracking_number, detail)
		SELECT 'unmatched_expired', d.provider_id, d.tracking_number, d.tracking_number,
			   format('tracking event %s of provider %s for unknown tracking number %s (raw status %s) found no shipment within unmatched_ttl_s = %s',
					  d.event_key, p.name, d.tracking_number, coalesce(d.raw_status, 'none'),
					  coalesce(p.options->>'unmatched_ttl_s', '604800'))
		FROM d JOIN @extschema@.provider p ON p.provider_id = d.provider_id
		RETURNING 1)
	SELECT count(*) INTO n FROM d;
	RETURN n;
END
$$;


------------------------------------------------------------------------------
-- crm_removed has no foreign key to crm_source either
------------------------------------------------------------------------------
-- Added beside the removal of the other foreign keys between dumped tables,
-- it refused the removed records that pg_restore -j loaded before their
-- source ("violates foreign key constraint crm_removed_crm_source_id_fkey"),
-- and the removes were forgotten.  The trigger that deletes a dropped
-- source's deliveries deletes its removed records too.
ALTER TABLE @extschema@.crm_removed DROP CONSTRAINT crm_removed_crm_source_id_fkey;
CREATE OR REPLACE FUNCTION @extschema@._drop_deliveries()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM @extschema@.crm_delivery d
	 WHERE d.crm_source_id OPERATOR(pg_catalog.=) OLD.crm_source_id;
	DELETE FROM @extschema@.crm_removed r
	 WHERE r.crm_source_id OPERATOR(pg_catalog.=) OLD.crm_source_id;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._drop_deliveries() IS
	'Internal: deletes the deliveries and removed records of a deleted CRM source, as ON DELETE CASCADE would; the extension''s dumped tables have no foreign key between them, so that pg_restore -j can load them in any order.';


------------------------------------------------------------------------------
-- SF Express pieces: route pushes for a multi-piece order's child and
-- return waybills are the order's
------------------------------------------------------------------------------
-- They were parked as unknown tracking numbers and expired as
-- unmatched_expired tickets.  Now an event of a waybill of
-- shipment.waybills that is not the shipment's tracking number is stored
-- as the order's, tagged with its kind (tracking_event.piece), and moves
-- no status: the main waybill's events do.  Parked ones are matched when
-- the shipment records its waybills.
ALTER TABLE @extschema@.tracking_event ADD COLUMN piece text;
COMMENT ON COLUMN @extschema@.tracking_event.piece IS
	'NULL for an event of the shipment''s tracking number (its main waybill); for another waybill of a multi-piece shipment (SF Express: shipment.waybills), its kind: child (waybillType 2), return (3), or "waybill type N". Only the main waybill''s events move the shipment''s status.';

CREATE INDEX shipment_waybills_idx ON @extschema@.shipment USING gin (waybills jsonb_path_ops)
	WHERE waybills IS NOT NULL;

CREATE FUNCTION @extschema@._waybill_piece(waybills jsonb, tn text)
RETURNS text
LANGUAGE sql IMMUTABLE
BEGIN ATOMIC
	SELECT CASE w.t WHEN '1' THEN 'main' WHEN '2' THEN 'child' WHEN '3' THEN 'return'
				ELSE 'waybill type ' || coalesce(w.t, 'unknown') END
	FROM (SELECT x ->> 'waybillType' AS t
		  FROM jsonb_array_elements(
				   CASE jsonb_typeof(waybills) WHEN 'array' THEN waybills ELSE '[]'::jsonb END) x
		  WHERE x ->> 'waybillNo' = tn LIMIT 1) w;
END;
REVOKE ALL ON FUNCTION @extschema@._waybill_piece(jsonb, text) FROM PUBLIC;

-- (_apply_tracking() as it ends up: the last section that changes it, below)


DROP TRIGGER shipsync_match_parked ON @extschema@.shipment;
CREATE CONSTRAINT TRIGGER shipsync_match_parked
	AFTER INSERT OR UPDATE OF tracking_number, waybills ON @extschema@.shipment
	DEFERRABLE INITIALLY DEFERRED
	FOR EACH ROW WHEN (NEW.tracking_number IS NOT NULL)
	EXECUTE FUNCTION @extschema@._match_parked();


------------------------------------------------------------------------------
-- A worker's session never passes for a restore; a table owner's changes
-- are the owner's
------------------------------------------------------------------------------
-- The audit and the ledger's fold skipped a superuser session with
-- check_function_bodies off, taken for a restore; the code of a table's
-- owner that a worker runs (a trigger of the write-back) could turn it off
-- and make its own changes of audited tables unaudited.  _restoring()
-- tells a restore, never a worker; _caller() (C) names the table's owner
-- while its code runs.
CREATE FUNCTION @extschema@._restoring()
RETURNS boolean
AS 'MODULE_PATHNAME', 'shipsync_restoring'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._restoring() IS
	'Internal: true in a restore''s session (a superuser''s with check_function_bodies off, as pg_dump''s scripts and pg_restore set it), never in the extension''s workers: what it loads is neither audited nor folded into open tickets.';
REVOKE ALL ON FUNCTION @extschema@._restoring() FROM PUBLIC;
CREATE OR REPLACE FUNCTION @extschema@._audit_row()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v record;
BEGIN
	IF TG_TABLE_SCHEMA OPERATOR(pg_catalog.<>) '@extschema@'
	   OR NOT TG_TABLE_NAME OPERATOR(pg_catalog.=) ANY
		   (ARRAY['provider', 'secret', 'binding', 'field_map', 'status_map', 'crm_source',
				  'fee_type_map', 'currency', 'stuck_after']) THEN
		RAISE EXCEPTION 'shipsync._audit_row() audits the tables of pg_shipsync only'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('It fired on %I.%I.', TG_TABLE_SCHEMA, TG_TABLE_NAME);
	END IF;
	-- What a restore loads is no one's change, as what the extension's
	-- scripts seed is not: a superuser session with check_function_bodies
	-- off is pg_dump's script or pg_restore (both turn it off; only a
	-- superuser creates the extension, and a superuser could disable these
	-- triggers anyway).  Recorded, those rows took ids from a sequence the
	-- restore then set back, and the changes made after it were dropped.
	-- Never a worker's session, whose table owners' code may turn it off.
	IF @extschema@._restoring() THEN
		RETURN NULL;
	END IF;
	SELECT * INTO v FROM @extschema@._audit_values(TG_OP, TG_ARGV[1], TG_ARGV[2]::jsonb,
		to_jsonb(OLD), to_jsonb(NEW));
	PERFORM @extschema@._audit(
		coalesce(nullif(current_setting('shipsync.audit_action', true), ''), lower(TG_OP)),
		TG_ARGV[0], v.object_name, v.old_value, v.new_value);
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._audit_row() IS
	'Internal: the audit trigger of the tables provider, secret, binding, field_map, status_map, crm_source, fee_type_map, currency and stuck_after.';
-- (_ticket_fold() as it ends up: the last section that changes it, below)


------------------------------------------------------------------------------
-- import_statement() is audited
------------------------------------------------------------------------------
-- A person's change of what orders cost (a corrected statement revises and
-- withdraws bill lines) left no audit row; src/statement.c writes one now.
COMMENT ON TABLE @extschema@.audit_log IS
	'Every change of providers, secrets, bindings, field maps, status maps, fee type maps, currencies and stuck thresholds, and every state-changing call (attach, detach, pause, resume, retry, requeue, set_secret, rotate_key, ack, resolve, reconcile, resync, import_statement): when, by whom, and the values before and after, secrets shown as "(set)" or "(changed)". Only the extension''s owner may change or delete rows; the dispatcher prunes rows older than shipsync.audit_retention.';
COMMENT ON COLUMN @extschema@.audit_log.object_name IS
	'provider: its name; binding: the table; field_map: profile/direction/target_path; status_map: profile/raw_status/pattern; fee_type_map: profile/code; currency: its code; stuck_after: the status; intent: its id; ticket: its id; statement: provider/period(/account).';


------------------------------------------------------------------------------
-- Nor does a table owner's code make a superuser's session pass for one
------------------------------------------------------------------------------
-- A DBA's session taking a CRM push by hand ran the table's trigger as its
-- owner; a SET check_function_bodies = off there left its changes
-- unaudited.  _restoring() (C) is false while such code runs.
COMMENT ON FUNCTION @extschema@._restoring() IS
	'Internal: true in a restore''s session (a superuser''s with check_function_bodies off, as pg_dump''s scripts and pg_restore set it), never in the extension''s workers nor while a table owner''s code runs as that owner: what it loads is neither audited nor folded into open tickets.';


------------------------------------------------------------------------------
-- A recycled waybill number bills its new order, not the old one's line
------------------------------------------------------------------------------
-- A fee line was one per provider, waybill, type, key and quote: the bill
-- of a parcel under a number the carrier had given an older parcel
-- revised the old order's line (its statement no longer added up, its
-- fee_total became the new parcel's, the new order stayed unbilled).  The
-- order is part of the identity now, and _store_fees() looks for the line
-- of the order it bills.
ALTER TABLE @extschema@.fee_line
	DROP CONSTRAINT fee_line_provider_id_tracking_number_fee_type_fee_key_quote_key,
	ADD CONSTRAINT fee_line_identity UNIQUE NULLS NOT DISTINCT
		(provider_id, tracking_number, fee_type, fee_key, quote, binding_id, order_key);
COMMENT ON TABLE @extschema@.fee_line IS
	'One fee a carrier quoted or billed, unique per provider, tracking number, fee type, the carrier''s line key, quote or bill, and order (a recycled waybill number bills its new order). Amounts are numeric as the carrier wrote them, never float. A change keeps the previous version in shipsync.fee_line_history; the same line received again changes nothing. binding_id and order_key are NULL while no shipment has the tracking number (parked).';

-- (_store_fees() as it ends up: the last section that changes it, below)

-- (the view fee_difference as it ends up: the last section that changes it, below)


------------------------------------------------------------------------------
-- A bill line a corrected statement withdrew is no bill line
------------------------------------------------------------------------------
-- The withdrawn line (amount 0, adjusted) still counted: its order stayed
-- billed, its fee_total became 0 instead of its quote, fee_difference
-- listed an amount_mismatch of 0 against the quote, and the settlement
-- did not count the shipment as unbilled.
-- (_fee_totals() as it ends up: the last section that changes it, below)

-- (_choose_fee_pulls() as it ends up: the last section that changes it, below)

-- (the view fee_difference as it ends up: the last section that changes it, below)
COMMENT ON TABLE @extschema@.fee_sum IS
	'The fee lines of each shipment (provider, binding, order) summed per currency, kept with the lines: estimated (the quote, net of refunds), charged (the bill, refunds left out), refunded (positive), how many quote and bill lines, and when the latest changed. Lines of waybills no shipment has, and lines a corrected statement withdrew, are not in it.';
COMMENT ON COLUMN @extschema@.order_fees.lines IS 'Fee lines, quote and bill (a line a corrected statement withdrew is none).';


------------------------------------------------------------------------------
-- fee_total is never written rounded into a numeric of a smaller scale
------------------------------------------------------------------------------
-- A total of 13.705 went into a numeric(10,2) column as 13.71: the order
-- said what no line summed to.  attach() now writes a total into a
-- numeric of scale s only when it has no more decimals, and _fee_totals()
-- gives an order whose total does not fit a writeback_failed ticket.
-- Bindings attached before get the new assignment in a section below.
-- (attach() as it ends up: the last section that changes it, below)
ALTER FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) SET shipsync.audit_action = 'attach';

-- (_fee_totals() as it ends up: the last section that changes it, below)


------------------------------------------------------------------------------
-- A statement that bills one carrier's line twice is refused
------------------------------------------------------------------------------
-- Two lines of one waybill, fee type and carrier's key in one statement:
-- the last was stored, the other counted as a duplicate, and the
-- statement's total counted both, so it never added up to its lines.
-- (_store_fees() as it ends up: the last section that changes it, below)


------------------------------------------------------------------------------
-- A line two months' statements bill keeps the earlier month's word
------------------------------------------------------------------------------
-- A line the carrier listed in two months' statements became the later
-- one's, and that month's correction without it withdrew it to 0: the
-- earlier month, which still bills it, no longer added up and its amount
-- was counted nowhere.  Listed again unchanged it stays the earlier
-- month's; a correction gives it back what that month's statement says.
-- (_store_fees() as it ends up: the last section that changes it, below)


------------------------------------------------------------------------------
-- A statement line older than the line's current version is not its own
------------------------------------------------------------------------------
-- Such a line changes nothing, but was marked as the statement's with the
-- amount a later notice had billed: "does the statement add up?" summed an
-- amount the statement never said.
-- (_store_fees() as it ends up: the last section that changes it, below)


------------------------------------------------------------------------------
-- The rows of a 0.1 dump restored as it is are refused
------------------------------------------------------------------------------
-- A dump of a database whose extension is at 0.1 says CREATE EXTENSION
-- with no version: restored into a server with this version installed, it
-- made this version and filled it with the rows of 0.1, which it cannot
-- use (the bindings' statements of 0.1: every order failed to render, and
-- died; credentials in plain text).  Such rows are refused, saying how to
-- restore that dump (docs/upgrading.md).
CREATE FUNCTION @extschema@._refuse_rows_of_0_1()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	what text;
BEGIN
	-- one test a table: an expression naming a column the other lacks fails
	IF TG_TABLE_NAME = 'binding' THEN
		IF strpos(NEW.render_sql, ' AS shipsync_row, ') = 0 THEN
			what := format('binding %s of table %s was made by pg_shipsync 0.1', NEW.binding_id, NEW.tbl);
		END IF;
	ELSIF coalesce(NEW.auth ?| @extschema@._secret_fields(NEW.auth->>'type'), false)
		  OR coalesce(NEW.options ?| ARRAY['webhook_secret', 'previous_webhook_secret'], false) THEN
		what := format('provider "%s" holds its credentials in plain text, as pg_shipsync 0.1 kept them', NEW.name);
	END IF;
	IF what IS NOT NULL THEN
		RAISE EXCEPTION '%', what
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'A dump of a database whose extension is at version 0.1 restores into version 0.1 only: its CREATE EXTENSION names no version and made the version installed, which cannot use the rows of 0.1.',
				  HINT = 'Restore the dump into a new database in which CREATE EXTENSION pg_shipsync VERSION ''0.1'' has run, then run ALTER EXTENSION pg_shipsync UPDATE there.';
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@._refuse_rows_of_0_1() IS
	'Internal: refuses a row of shipsync.binding or shipsync.provider in the form pg_shipsync 0.1 kept it (a binding''s statements of 0.1, credentials in plain text), as a dump of a 0.1 database restored as it is would write it.';
CREATE TRIGGER provider_not_of_0_1 BEFORE INSERT ON @extschema@.provider
	FOR EACH ROW EXECUTE FUNCTION @extschema@._refuse_rows_of_0_1();
CREATE TRIGGER binding_not_of_0_1 BEFORE INSERT ON @extschema@.binding
	FOR EACH ROW EXECUTE FUNCTION @extschema@._refuse_rows_of_0_1();
REVOKE ALL ON FUNCTION @extschema@._refuse_rows_of_0_1() FROM PUBLIC;


------------------------------------------------------------------------------
-- An integer key column widened after attach() no longer holds orders up
------------------------------------------------------------------------------
-- Keys were cast to the key column's type as it was at attach(): once an
-- int column became bigint (or a smallint an int), a key beyond the old
-- range failed to cast ("value "3000000000" is out of range for type
-- integer"), and every order rendered in the same batch waited with it,
-- for good.  Keys of an integer column are cast to bigint now (of a real,
-- to double precision); existing statements are rewritten.
CREATE OR REPLACE FUNCTION @extschema@._key_type(tbl regclass, col name)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	WITH RECURSIVE d(typid, depth) AS (
		SELECT a.atttypid, 0 FROM pg_attribute a
		 WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped
		UNION ALL
		SELECT t.typbasetype, d.depth + 1 FROM d JOIN pg_type t ON t.oid = d.typid
		 WHERE t.typtype = 'd')
	-- a typmod of -1 given: "bit" and "char" keep no length of one
	SELECT CASE WHEN d.typid IN ('int2'::regtype, 'int4'::regtype) THEN 'bigint'
				WHEN d.typid = 'float4'::regtype THEN 'double precision'
				ELSE format_type(d.typid, -1) END
	  FROM d ORDER BY d.depth DESC LIMIT 1
$$;
COMMENT ON FUNCTION @extschema@._key_type(regclass, name) IS
	'Internal (attach(), reconciliation, resync()): the type order keys are cast to, the key column''s base type without a length (bigint for any integer, double precision for real), so that a key column widened after attach() never has a key cut to another order''s nor fails to cast one.';

UPDATE @extschema@.binding b
   SET render_sql = pg_catalog.regexp_replace(b.render_sql, E'(shipsync_u\\.shipsync_key::).*$',
			E'\\1' OPERATOR(pg_catalog.||) @extschema@._key_type(b.tbl, b.key_column)),
	   writeback_sql = pg_catalog.regexp_replace(b.writeback_sql, E'(shipsync_u\\.shipsync_key::).*$',
			E'\\1' OPERATOR(pg_catalog.||) @extschema@._key_type(b.tbl, b.key_column))
 WHERE @extschema@._key_type(b.tbl, b.key_column) IS NOT NULL;


------------------------------------------------------------------------------
-- attach() in a database that no dispatcher serves warns
------------------------------------------------------------------------------
-- The orders of a database left out of shipsync.databases were captured and
-- never sent, and nothing said so: attach() now raises a WARNING naming the
-- setting, with the command that lists the database.
CREATE OR REPLACE FUNCTION @extschema@.attach(tbl regclass, provider text, key_column name DEFAULT NULL,
								   writeback jsonb DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pid integer;
	bid integer;
	keycol name := key_column;
	keytype text;
	wb jsonb := coalesce(writeback, '{}');
	opts jsonb := coalesce(options, '{}');
	f text;
	col text;
	coltype text;
	colcat "char";
	colnumeric boolean;
	colscale integer;
	sets text[] := '{}';
	wbcols text[] := '{}';
	render text;
	wbsql text;
	cancel_when text;
	trigargs text;
	relkind "char";
	adopt integer;
	gone record;
	oldwb jsonb;
	oldskip text[];
	newskip text[];
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.relkind INTO relkind FROM pg_class c WHERE c.oid = tbl;
	IF relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '"%" is not a table', tbl
			USING ERRCODE = 'wrong_object_type',
				  HINT = 'Attach an ordinary or partitioned table.';
	END IF;
	IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'The dispatcher reads and writes the table with its owner''s rights.';
	END IF;
	SELECT p.provider_id INTO pid FROM @extschema@.provider p WHERE p.name = attach.provider;
	IF pid IS NULL THEN
		RAISE EXCEPTION 'provider "%" does not exist', coalesce(provider, '')
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it first with shipsync.create_provider().';
	END IF;
	IF EXISTS (SELECT 1 FROM @extschema@.binding b WHERE b.tbl = attach.tbl AND b.active) THEN
		RAISE EXCEPTION 'table % is already attached', tbl
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Call shipsync.detach() first to attach it again.';
	END IF;
	PERFORM @extschema@._check_options(opts, ARRAY['cancel_when', 'validate', 'tracking_provider', 'pii', 'grace', 'created_at_column', 'adopt'], 'attach');
	adopt := @extschema@._check_adopt(opts, pid, tbl);
	PERFORM @extschema@._check_attach_options(opts, pid);
	PERFORM @extschema@._check_reconcile_options(opts, tbl);
	IF current_setting('server_encoding') NOT IN ('UTF8', 'SQL_ASCII') THEN
		RAISE EXCEPTION 'database encoding % cannot be sent as JSON', current_setting('server_encoding')
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Carriers read JSON as UTF-8, and requests are rendered in the database encoding.',
				  HINT = 'Keep the orders in a UTF8 database.';
	END IF;

	-- the key: given, or the single-column primary key
	IF keycol IS NULL THEN
		SELECT a.attname INTO keycol
		FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE i.indrelid = tbl AND i.indisprimary AND i.indnatts = 1;
		IF keycol IS NULL THEN
			RAISE EXCEPTION 'table % has no single-column primary key', tbl
				USING ERRCODE = 'invalid_table_definition',
					  HINT = 'Pass key_column => the column that identifies an order.';
		END IF;
	END IF;
	keytype := @extschema@._key_type(tbl, keycol);
	IF keytype IS NULL THEN
		RAISE EXCEPTION 'column "%" of table % does not exist', keycol, tbl
			USING ERRCODE = 'undefined_column',
				  HINT = 'Pass key_column => the column that identifies an order.';
	END IF;

	-- write-back: shipment field -> order column
	IF jsonb_typeof(wb) <> 'object' THEN
		RAISE EXCEPTION 'writeback must be a JSON object of shipment fields to column names'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example {"tracking_number": "waybill_no"}.';
	END IF;
	FOR f, col IN SELECT key, value #>> '{}' FROM jsonb_each(wb) LOOP
		IF f NOT IN ('tracking_number', 'status', 'provider_shipment_id', 'label_url', 'fee_total') THEN
			RAISE EXCEPTION 'unknown write-back field "%"', f
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'Write-back fields: tracking_number, status, provider_shipment_id, label_url, fee_total.';
		END IF;
		SELECT format_type(a.atttypid, a.atttypmod) INTO coltype
		FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
		IF coltype IS NULL THEN
			RAISE EXCEPTION 'write-back column "%" of table % does not exist', coalesce(col, ''), tbl
				USING ERRCODE = 'undefined_column',
					  HINT = 'Add the column first, or fix the writeback map.';
		END IF;
		IF col = keycol THEN
			RAISE EXCEPTION 'the key column "%" cannot be a write-back column', col
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Write shipment fields into columns of their own.';
		END IF;
		-- a string type, or for fee_total numeric too (an integer, a float
		-- or money would round or blur the amount without a word)
		SELECT t.typcategory, t.oid = 'pg_catalog.numeric'::pg_catalog.regtype,
			   -- a numeric's declared scale, the column's or its domain's
			   -- (typmod: precision << 16 | scale, 11 bits signed, + 4)
			   CASE WHEN tm.m >= 4 THEN (((tm.m - 4) & 2047) # 1024) - 1024 END
		INTO colcat, colnumeric, colscale
		FROM pg_attribute a JOIN pg_type t
			ON t.oid = coalesce(nullif(
				(SELECT typbasetype FROM pg_type WHERE oid = a.atttypid), 0), a.atttypid)
		CROSS JOIN LATERAL (SELECT CASE WHEN a.atttypmod >= 0 THEN a.atttypmod
				ELSE (SELECT d.typtypmod FROM pg_type d WHERE d.oid = a.atttypid) END) AS tm(m)
		WHERE a.attrelid = tbl AND a.attname = col;
		IF f = 'fee_total' AND colnumeric AND colscale < 2 THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = format('fee_total is an amount with decimals (12.50, 3.125): a numeric of scale %s would round it.', colscale),
					  HINT = 'Use a numeric column of at least two decimals, numeric without a scale, or a text column.';
		END IF;
		IF colcat <> 'S' AND NOT (f = 'fee_total' AND colnumeric) THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = CASE WHEN f = 'fee_total' THEN 'fee_total is an amount with decimals (12.50, 3.125): a column of this type would round it or lose its exact value.'
								   ELSE format('%s is text.', f) END,
					  HINT = CASE WHEN f = 'fee_total' THEN 'Use a numeric or text column.'
								 ELSE 'Use a text or varchar column.' END;
		END IF;
		-- no explicit cast: assignment rules apply, so a tracking number too
		-- long for a varchar(n) column fails loudly instead of being cut (a
		-- fee_total into a string column is its text, as written; into a
		-- numeric of scale s only when it has no more decimals than s, never
		-- rounded: _fee_totals() tickets the order whose total does not fit)
		sets := sets || CASE WHEN f = 'fee_total' AND colcat = 'S'
							 THEN format('%I = COALESCE(shipsync_u.%I::pg_catalog.text, t.%I)', col, f, col)
							 WHEN f = 'fee_total' AND colscale IS NOT NULL
							 THEN format('%1$I = COALESCE(CASE WHEN pg_catalog.round(shipsync_u.fee_total, %2$s)'
										 ' OPERATOR(pg_catalog.=) shipsync_u.fee_total THEN shipsync_u.fee_total END, t.%1$I)',
										 col, colscale)
							 ELSE format('%I = COALESCE(shipsync_u.%I, t.%I)', col, f, col) END;
		wbcols := wbcols || col;
	END LOOP;

	cancel_when := opts->>'cancel_when';
	IF cancel_when IS NOT NULL AND cancel_when ~ ';' THEN
		RAISE EXCEPTION 'option "cancel_when" must be one boolean expression'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example "status = ''cancelled''".';
	END IF;
	-- the restricted grammar, printed back with pg_catalog's operators:
	-- no function, operator or cast of the caller's is ever planned here
	IF cancel_when IS NOT NULL THEN
		cancel_when := @extschema@._cancel_when_sql(cancel_when);
	END IF;

	-- The row itself and its write-back columns: the dispatcher prints the
	-- request's body from the row (src/body.c: as json_build_object() and
	-- row_to_json() would, with the type lookups once a batch rather than
	-- once a column of every row) and keeps the row's digest
	-- (shipsync._row_digest), what reconciliation compares the order with
	-- later.  The row is t.*, never a bare t: a column named t would be
	-- taken instead.  Operators and types qualified: the dispatcher, render_request() and
	-- this function run these as the table's owner, each with a search_path
	-- of its own.  (unnest of several arrays is grammar: pg_catalog's.)
	render := format(
		'SELECT shipsync_u.shipsync_id, t.%1$I IS NOT NULL AS found,'
		' %4$s AS is_cancel, t.*::%2$s AS shipsync_row, %5$L::pg_catalog.text[] AS shipsync_skip'
		' FROM unnest($1::pg_catalog.int8[], $2::pg_catalog.text[])'
		' AS shipsync_u(shipsync_id, shipsync_key)'
		' LEFT JOIN %2$s AS t ON t.%1$I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%3$s',
		keycol, tbl, keytype,
		CASE WHEN cancel_when IS NULL THEN 'false'
			 ELSE format('COALESCE((%s), false)', cancel_when) END,
		ARRAY(SELECT c FROM unnest(wbcols) AS c ORDER BY 1));

	IF array_length(sets, 1) > 0 THEN
		wbsql := format(
			'UPDATE %s AS t SET %s'
			' FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.text[],'
			' $4::pg_catalog.text[], $5::pg_catalog.text[], $6::pg_catalog.numeric[])'
			' AS shipsync_u(shipsync_key, provider_shipment_id, tracking_number, status, label_url, fee_total)'
			' WHERE t.%I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%s',
			tbl, array_to_string(sets, ', '), keycol, keytype);
	END IF;

	-- prove both statements against the table now, not in the dispatcher,
	-- and with the rights the dispatcher will have: the table owner's
	BEGIN
		PERFORM @extschema@._explain_as_owner(tbl, render, '{int8[], text[]}');
		IF wbsql IS NOT NULL THEN
			PERFORM @extschema@._explain_as_owner(tbl, wbsql,
				'{text[], text[], text[], text[], text[], numeric[]}');
		END IF;
	EXCEPTION
		-- row security forced on the owner: its own error says what to do
		WHEN object_not_in_prerequisite_state THEN
			RAISE;
		WHEN OTHERS THEN
			RAISE EXCEPTION 'cannot attach table %: %', tbl, SQLERRM
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Check option cancel_when and the writeback columns'' types.';
	END;

	SELECT x.writeback INTO oldwb FROM @extschema@.binding x WHERE x.tbl = attach.tbl;
	INSERT INTO @extschema@.binding AS b (tbl, provider_id, key_column, writeback, options, render_sql, writeback_sql)
	VALUES (attach.tbl, pid, keycol, wb, opts, render, wbsql)
	ON CONFLICT ON CONSTRAINT binding_tbl_key DO UPDATE
	   SET provider_id = EXCLUDED.provider_id, key_column = EXCLUDED.key_column,
		   writeback = EXCLUDED.writeback, options = EXCLUDED.options,
		   render_sql = EXCLUDED.render_sql, writeback_sql = EXCLUDED.writeback_sql,
		   active = true, created_at = now(), created_by = session_user
	RETURNING b.binding_id INTO bid;

	-- the table replaces the one of binding adopt: what pg_shipsync knows
	-- of its orders (shipments, intents, events, fees, tickets) is this
	-- binding's now, so an order shipped before is updated, not created
	-- again.  Otherwise, a binding of this provider with shipments whose
	-- table is gone is said: were this table its successor, every update
	-- of an order shipped before would ship it again.
	IF adopt IS NOT NULL THEN
		UPDATE @extschema@.shipment x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.outbox x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.inbox x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.tracking_event x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_line x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_sum x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_pull x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.exception_ticket x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.binding x SET options = x.options || jsonb_build_object('adopted_by', bid)
		 WHERE x.binding_id = adopt;
	ELSE
		FOR gone IN
			SELECT b.binding_id, b.tbl::oid AS relid
			FROM @extschema@.binding b
			WHERE b.provider_id = pid AND NOT b.active AND b.binding_id <> bid
			  AND NOT b.options ? 'adopted_by'
			  AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = b.tbl)
			  AND EXISTS (SELECT 1 FROM @extschema@.shipment x WHERE x.binding_id = b.binding_id)
		LOOP
			RAISE WARNING 'binding % of provider "%" has shipments, and its table (oid %) is gone',
				gone.binding_id, provider, gone.relid
				USING DETAIL = format('Table %s is binding %s: an update of an order shipped under binding %s would be sent as a create.',
									  tbl, bid, gone.binding_id),
					  HINT = format('If %s replaces that table, detach it and attach it again with options {"adopt": %s}.',
									tbl, gone.binding_id);
		END LOOP;
	END IF;

	-- attached again with other write-back columns: the digests of the
	-- orders shipped (shipment.content_digest) left the old ones out, and
	-- every order whose old column holds a value would read as changed
	-- since it was sent (address_changed_after_send).  The digest of an
	-- order unchanged since is made again without the new columns; an
	-- order changed since keeps its digest, and is still told.  The rows
	-- are read as the table's owner, as reconciliation reads them.
	oldskip := ARRAY(SELECT w.value #>> '{}' FROM jsonb_each(oldwb) w ORDER BY 1);
	newskip := ARRAY(SELECT c FROM unnest(wbcols) AS c ORDER BY 1);
	IF oldwb IS NOT NULL AND oldskip IS DISTINCT FROM newskip
	   AND EXISTS (SELECT 1 FROM @extschema@.shipment x
				   WHERE x.binding_id = bid AND x.content_digest IS NOT NULL) THEN
		EXECUTE format($d$
			UPDATE @extschema@.shipment s
			   SET content_digest = @extschema@._row_digest(t.r, $2)
			  FROM @extschema@._select_as_owner($1, $4, NULL, NULL) AS t(k text COLLATE "C", r %s)
			 WHERE s.binding_id = $5 AND s.order_key = t.k
			   AND s.content_digest = @extschema@._row_digest(t.r, $3)$d$, tbl)
		USING tbl, newskip, oldskip,
			  format('SELECT t.%I::pg_catalog.text, t.*::%s FROM %s t', keycol, tbl, tbl), bid;
	END IF;

	trigargs := array_to_string(ARRAY(SELECT quote_literal(x)
		FROM unnest(ARRAY[bid::text, pid::text, keycol::text] || wbcols) x), ', ');
	EXECUTE format('CREATE TRIGGER shipsync_capture AFTER INSERT OR UPDATE OR DELETE ON %s'
				   ' FOR EACH ROW EXECUTE FUNCTION @extschema@.capture(%s)', tbl, trigargs);
	IF opts->>'validate' = 'reject' THEN
		EXECUTE format('CREATE TRIGGER shipsync_validate AFTER INSERT OR UPDATE ON %s'
					   ' FOR EACH ROW EXECUTE FUNCTION @extschema@._validate(%L)', tbl, bid);
	END IF;
	-- no dispatcher serves this database: its orders would be captured and
	-- wait, with nothing in the log to say why.  An empty list (nothing is
	-- served anywhere) is taken as meant.  (col, free again: the list.)
	col := coalesce(pg_catalog.current_setting('shipsync.databases', true), '');
	IF pg_catalog.btrim(col) <> ''
	   AND NOT pg_catalog.current_database() = ANY (ARRAY(
			SELECT pg_catalog.btrim(pg_catalog.btrim(x), '"')
			  FROM pg_catalog.regexp_split_to_table(col, ',') AS x)) THEN
		RAISE WARNING 'database "%" is not in shipsync.databases', pg_catalog.current_database()
			USING DETAIL = format('Its orders are captured, and none is sent until a dispatcher serves it (shipsync.databases is %L).', col),
				  HINT = format('ALTER SYSTEM SET shipsync.databases = %L; SELECT pg_reload_conf();',
								col || ', ' || quote_ident(pg_catalog.current_database()));
	END IF;
	PERFORM @extschema@._wake(true);
	RETURN bid;
END
$$;
ALTER FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) SET shipsync.audit_action = 'attach';

------------------------------------------------------------------------------
-- fee_total into a numeric of scale s, in bindings attached before
------------------------------------------------------------------------------
-- The section above changed attach(); the bindings it made before (0.1's
-- among them) kept the assignment that rounds a total of 13.705 into a
-- numeric(10,2) as 13.71.  Their write-back statements get attach()'s
-- assignment now, the same text a new attach() writes.
UPDATE @extschema@.binding b
   SET writeback_sql = pg_catalog.replace(b.writeback_sql,
		pg_catalog.format('%I = COALESCE(shipsync_u.%I, t.%I)', w.col, 'fee_total', w.col),
		pg_catalog.format('%1$I = COALESCE(CASE WHEN pg_catalog.round(shipsync_u.fee_total, %2$s)'
						  ' OPERATOR(pg_catalog.=) shipsync_u.fee_total THEN shipsync_u.fee_total END, t.%1$I)',
						  w.col, w.scale))
  FROM (SELECT x.binding_id, a.attname AS col,
			   (((tm.m OPERATOR(pg_catalog.-) 4) OPERATOR(pg_catalog.&) 2047)
				OPERATOR(pg_catalog.#) 1024) OPERATOR(pg_catalog.-) 1024 AS scale
		  FROM @extschema@.binding x
		  JOIN pg_catalog.pg_attribute a
			ON a.attrelid OPERATOR(pg_catalog.=) x.tbl
		   AND a.attname OPERATOR(pg_catalog.=) (x.writeback OPERATOR(pg_catalog.->>) 'fee_total')
		   AND NOT a.attisdropped
		  JOIN pg_catalog.pg_type t
			ON t.oid OPERATOR(pg_catalog.=) coalesce(nullif(
				(SELECT d.typbasetype FROM pg_catalog.pg_type d WHERE d.oid OPERATOR(pg_catalog.=) a.atttypid), 0),
				a.atttypid)
		 CROSS JOIN LATERAL (SELECT CASE WHEN a.atttypmod OPERATOR(pg_catalog.>=) 0 THEN a.atttypmod
				ELSE (SELECT d.typtypmod FROM pg_catalog.pg_type d WHERE d.oid OPERATOR(pg_catalog.=) a.atttypid) END) AS tm(m)
		 WHERE t.oid OPERATOR(pg_catalog.=) 'pg_catalog.numeric'::pg_catalog.regtype
		   AND tm.m OPERATOR(pg_catalog.>=) 4) w
 WHERE b.binding_id OPERATOR(pg_catalog.=) w.binding_id
   AND b.writeback_sql IS NOT NULL;

------------------------------------------------------------------------------
-- A piece's delivery is not the order's, for fees either
------------------------------------------------------------------------------
-- The delivery of an SF child or return waybill (tracking_event.piece)
-- queued the order's fee pull, and counted as the order's delivery in
-- fee_difference's unbilled shipments (a return parcel back at the sender
-- made an undelivered order "delivered without a bill").
DROP TRIGGER queue_fee_pull ON @extschema@.tracking_event;
CREATE TRIGGER queue_fee_pull AFTER INSERT ON @extschema@.tracking_event
	FOR EACH ROW WHEN (NEW.status = 'delivered' AND NEW.piece IS NULL)
	EXECUTE FUNCTION @extschema@._queue_fee_pull();
-- (the view fee_difference as it ends up: the last section that changes it, below)


------------------------------------------------------------------------------
-- A fee billed at 0.00 adjusted is billed; only a withdrawn line is not
------------------------------------------------------------------------------
-- A line a corrected statement withdrew (amount 0, state adjusted) was
-- told by those values alone, so a fee the carrier itself billed at 0.00
-- adjusted (waived) was taken for withdrawn: no bill line, its order's
-- fee_total the quote's, the line left out of order_fees and counted as
-- unbilled.  fee_line.withdrawn (and fee_line_history.withdrawn) says it
-- now; 0.1 withdrew nothing, so every line starts false.
ALTER TABLE @extschema@.fee_line ADD COLUMN withdrawn boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN @extschema@.fee_line.withdrawn IS 'True for a bill line a corrected statement of its period no longer lists (amount 0, state adjusted): no bill line any more. A line the carrier bills at 0 (a waived fee) is false: billed, at 0.';
ALTER TABLE @extschema@.fee_line_history ADD COLUMN withdrawn boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN @extschema@.fee_line_history.withdrawn IS 'The version was a withdrawal (shipsync.fee_line.withdrawn).';

CREATE OR REPLACE FUNCTION @extschema@._fee_line_revise()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO @extschema@.fee_line_history (fee_line_id, revision, raw_type, amount, currency,
		settlement, payer, billed_weight_kg, state, source, statement_id, occurred_at,
		recorded_at, recorded_by, superseded_at, superseded_by, superseded_source, withdrawn)
	VALUES (OLD.fee_line_id, OLD.revision, OLD.raw_type, OLD.amount, OLD.currency,
		OLD.settlement, OLD.payer, OLD.billed_weight_kg, OLD.state, OLD.source, OLD.statement_id,
		OLD.occurred_at, OLD.recorded_at, OLD.recorded_by, now(), NEW.recorded_by, NEW.source,
		OLD.withdrawn);
	NEW.revision := OLD.revision + 1;
	NEW.recorded_at := now();
	RETURN NEW;
END
$$;
DROP TRIGGER fee_line_revise ON @extschema@.fee_line;
CREATE TRIGGER fee_line_revise BEFORE UPDATE ON @extschema@.fee_line
	FOR EACH ROW
	WHEN ((OLD.amount, OLD.currency, OLD.state, OLD.settlement, OLD.payer, OLD.billed_weight_kg,
		   OLD.withdrawn)
		  IS DISTINCT FROM (NEW.amount, NEW.currency, NEW.state, NEW.settlement, NEW.payer,
							NEW.billed_weight_kg, NEW.withdrawn))
	EXECUTE FUNCTION @extschema@._fee_line_revise();

CREATE OR REPLACE FUNCTION @extschema@._store_fees(src text, stmt bigint, replaces bigint, who text,
	pids integer[], bids integer[], oks text[], tns text[], codes text[], amounts numeric[],
	currencies text[], fkeys text[], settlements text[], payers text[], weights numeric[],
	states text[], ats timestamptz[], held text[] DEFAULT NULL)
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	n_in bigint := coalesce(array_length(tns, 1), 0);
	n_new bigint;
	n_rev bigint;
	n_park bigint;
	n_matched bigint := 0;
	n_withdrawn bigint := 0;
	twice text;
	tb integer[];
	tk text[];
BEGIN
	PERFORM @extschema@._lock_fees(pids, tns, src = 'statement');

	SELECT m.n, m.tb, m.tk INTO n_matched, tb, tk
	FROM @extschema@._match_parked_fees(pids, tns) m;

	WITH inc AS (
		SELECT u.ord, u.pid, u.bid, u.ok, u.tn, u.code, u.amount, u.cur, u.fkey, u.settle,
			   u.payer, u.weight, u.st, u.at,
			   coalesce(tm.fee_type, ft.name, 'other') AS fee_type
		FROM unnest(pids, bids, oks, tns, codes, amounts, currencies, fkeys, settlements, payers,
					weights, states, ats)
			 WITH ORDINALITY AS u(pid, bid, ok, tn, code, amount, cur, fkey, settle, payer,
								  weight, st, at, ord)
		JOIN @extschema@.provider p ON p.provider_id = u.pid
		LEFT JOIN @extschema@.fee_type_map tm
			   ON tm.profile = coalesce(p.options->>'profile', p.dialect) AND tm.code = u.code
		LEFT JOIN @extschema@.fee_type ft ON ft.name = lower(u.code)),
	-- a line without a key of the carrier: the first of its type in this
	-- notice has key '', the next '#2', ...; the same line twice: the last.
	-- Grouped and sorted bytewise (COLLATE "C"): the groups are the same
	-- under any deterministic collation, and a statement sorts 100,000
	-- lines here twice, where strcoll() cost more than the rest of the sort
	keyed AS (
		SELECT DISTINCT ON (y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C") y.*
		FROM (SELECT inc.*,
					 CASE WHEN inc.fkey IS NOT NULL THEN inc.fkey
						  WHEN row_number() OVER w = 1 THEN ''
						  ELSE '#' || row_number() OVER w END AS k
			  FROM inc
			  WINDOW w AS (PARTITION BY inc.pid, inc.tn COLLATE "C", inc.fee_type COLLATE "C", inc.fkey IS NULL
						   ORDER BY inc.ord)) y
		ORDER BY y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C", y.ord DESC),
	-- a statement billing one carrier's line (its key) twice: refused
	-- below, since keyed keeps one of them and the statement's total
	-- counts both (a push sending a line again is the same line again)
	dup AS (
		SELECT pg_catalog.format('Waybill %s, fee type %s, key %s: %s lines, of %s.', i.tn, i.fee_type,
					pg_catalog.quote_literal(i.fkey), count(*),
					string_agg(i.amount::text || ' ' || coalesce(i.cur, ''), ', ' ORDER BY i.ord)) AS msg
		FROM inc i
		WHERE src = 'statement' AND i.fkey IS NOT NULL
		GROUP BY i.pid, i.tn, i.fee_type, i.fkey
		HAVING count(*) > 1
		LIMIT 1),
	ship AS (
		SELECT DISTINCT ON (s.provider_id, s.tracking_number) s.provider_id, s.tracking_number,
			   s.binding_id, s.order_key
		FROM @extschema@.shipment s
		WHERE (s.provider_id, s.tracking_number) IN
			  (SELECT keyed.pid, keyed.tn FROM keyed WHERE keyed.bid IS NULL)
		ORDER BY s.provider_id, s.tracking_number, s.created_at DESC),
	-- each line's order: the caller's, else the newest shipment's of its
	-- waybill (a recycled number is the new parcel's), else none (parked);
	-- part of the line's identity
	kt AS (
		SELECT k.*, coalesce(k.bid, ship.binding_id) AS tb, coalesce(k.ok, ship.order_key) AS tok
		FROM keyed k
		LEFT JOIN ship ON ship.provider_id = k.pid AND ship.tracking_number = k.tn),
	up AS (
		INSERT INTO @extschema@.fee_line AS f (provider_id, tracking_number, fee_type, fee_key,
			quote, binding_id, order_key, raw_type, amount, currency, settlement, payer,
			billed_weight_kg, state, source, statement_id, occurred_at, recorded_by)
		SELECT k.pid, k.tn, k.fee_type, k.k, src = 'create', k.tb, k.tok,
			   k.code, k.amount, k.cur, k.settle, k.payer, k.weight,
			   coalesce(k.st, CASE WHEN src = 'create' THEN 'estimated' ELSE 'charged' END),
			   src, stmt, k.at, who
		FROM kt k
		ORDER BY k.ord
		ON CONFLICT ON CONSTRAINT fee_line_identity DO UPDATE SET
			raw_type = EXCLUDED.raw_type, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
			settlement = coalesce(EXCLUDED.settlement, f.settlement),
			payer = coalesce(EXCLUDED.payer, f.payer),
			billed_weight_kg = coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg),
			state = EXCLUDED.state, source = EXCLUDED.source, statement_id = EXCLUDED.statement_id,
			occurred_at = coalesce(EXCLUDED.occurred_at, f.occurred_at),
			recorded_by = EXCLUDED.recorded_by, withdrawn = false,
			binding_id = coalesce(f.binding_id, EXCLUDED.binding_id),
			order_key = coalesce(f.order_key, EXCLUDED.order_key)
		-- a change, not older than what the line says now, and, but from
		-- a statement, not a notice seen before (a late duplicate of a
		-- revised line); own below takes, for statements, the lines they
		-- bill as they are
		WHERE (f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
			  IS DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency, EXCLUDED.state,
								coalesce(EXCLUDED.settlement, f.settlement),
								coalesce(EXCLUDED.payer, f.payer),
								coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg))
		  AND (EXCLUDED.occurred_at IS NULL OR f.occurred_at IS NULL
			   OR EXCLUDED.occurred_at >= f.occurred_at)
		  AND (src = 'statement'
			   OR NOT EXISTS (SELECT 1 FROM @extschema@.fee_line_history h
							  WHERE h.fee_line_id = f.fee_line_id
								AND (h.amount, h.currency, h.state, h.occurred_at)
									IS NOT DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency,
														  EXCLUDED.state, EXCLUDED.occurred_at)))
		RETURNING f.xmax = 0 AS inserted, f.binding_id, f.order_key),
	-- a statement's lines it bills as they are: its own from now on (no
	-- revision: nothing they say changes), so that a later correction
	-- withdraws them and "does the statement add up?" counts them.  After
	-- up has run to its end (the one-time filter reads all of it): up
	-- meeting a row own had changed in this command would be an error.
	-- Not a line the current statement of another month (or account)
	-- bills: that one bills it still, and this one listing it again is
	-- what "does it add up?" should show
	own AS (
		UPDATE @extschema@.fee_line f SET statement_id = stmt, withdrawn = false
		  FROM kt k
		 WHERE (SELECT count(*) FROM up) >= 0
		   AND src = 'statement' AND f.provider_id = k.pid AND f.tracking_number = k.tn
		   AND f.fee_type = k.fee_type AND f.fee_key = k.k AND NOT f.quote
		   AND f.binding_id IS NOT DISTINCT FROM k.tb AND f.order_key IS NOT DISTINCT FROM k.tok
		   AND f.statement_id IS DISTINCT FROM stmt
		   AND (f.statement_id IS NULL
				OR f.statement_id NOT IN (SELECT e.statement_id
										  FROM @extschema@.statement e
										  JOIN @extschema@.statement c ON c.statement_id = stmt
										  WHERE e.provider_id = c.provider_id AND e.superseded_by IS NULL
											AND (e.period, e.account) IS DISTINCT FROM (c.period, c.account)))
		   -- (what it says: a line older than the line's current version,
		   -- which up left as it was, is not the statement's)
		   AND NOT (f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
				   IS DISTINCT FROM (k.amount, k.cur, coalesce(k.st, 'charged'),
									 coalesce(k.settle, f.settlement),
									 coalesce(k.payer, f.payer),
									 coalesce(k.weight, f.billed_weight_kg))
		RETURNING f.fee_line_id, f.binding_id, f.order_key),
	-- of those, the lines a correction had withdrawn: billed again, so
	-- their orders' totals change (fee_line read here is as it was before)
	back AS (
		SELECT own.binding_id, own.order_key FROM own
		JOIN @extschema@.fee_line x ON x.fee_line_id = own.fee_line_id
		WHERE x.withdrawn AND own.binding_id IS NOT NULL),
	-- a corrected statement: what an earlier statement of its period and
	-- account billed and this one does not (neither among its lines nor,
	-- held, among those it skipped) is withdrawn (0, adjusted), or, when
	-- the current statement of another month or account billed it before
	-- (the carrier listed it in both), goes back to what that one says
	wd AS (
		UPDATE @extschema@.fee_line f
		   SET (amount, currency, state, statement_id, withdrawn) =
			   (SELECT coalesce(b.amount, 0), coalesce(b.currency, f.currency),
					   coalesce(b.state, 'adjusted'), coalesce(b.statement_id, stmt),
					   coalesce(b.withdrawn, true)
				FROM (SELECT 1) one
				LEFT JOIN (SELECT h.amount, h.currency, h.state, h.statement_id, h.withdrawn
						   FROM @extschema@.fee_line_history h
						   JOIN @extschema@.statement e ON e.statement_id = h.statement_id
						   JOIN @extschema@.statement c ON c.statement_id = stmt
						   WHERE h.fee_line_id = f.fee_line_id AND e.superseded_by IS NULL
							 AND (e.period, e.account) IS DISTINCT FROM (c.period, c.account)
						   ORDER BY h.revision DESC LIMIT 1) b ON true),
			   source = 'statement', recorded_by = who
		 WHERE replaces IS NOT NULL AND NOT f.quote
		   AND f.statement_id IN (SELECT e.statement_id
								  FROM @extschema@.statement e
								  JOIN @extschema@.statement c ON c.statement_id = stmt
								  WHERE e.provider_id = c.provider_id AND e.period = c.period
									AND e.account IS NOT DISTINCT FROM c.account
									AND e.statement_id <> stmt)
		   AND NOT f.withdrawn
		   AND NOT EXISTS (SELECT 1 FROM kt k
						   WHERE k.pid = f.provider_id AND k.tn = f.tracking_number
							 AND k.fee_type = f.fee_type AND k.k = f.fee_key
							 AND k.tb IS NOT DISTINCT FROM f.binding_id
							 AND k.tok IS NOT DISTINCT FROM f.order_key)
		   AND (held IS NULL OR (array_position(held, NULL) IS NULL
								 AND f.tracking_number <> ALL (held)))
		RETURNING f.binding_id, f.order_key)
	SELECT (SELECT dup.msg FROM dup), (SELECT count(*) FROM up WHERE up.inserted),
		   (SELECT count(*) FROM up WHERE NOT up.inserted),
		   (SELECT count(*) FROM up WHERE up.binding_id IS NULL),
		   (SELECT count(*) FROM wd),
		   coalesce(tb, '{}') || coalesce((SELECT array_agg(x.binding_id) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd
				 UNION ALL SELECT back.binding_id, back.order_key FROM back) x), '{}'),
		   coalesce(tk, '{}') || coalesce((SELECT array_agg(x.order_key) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd
				 UNION ALL SELECT back.binding_id, back.order_key FROM back) x), '{}')
	INTO twice, n_new, n_rev, n_park, n_withdrawn, tb, tk;
	IF twice IS NOT NULL THEN
		RAISE EXCEPTION 'statement of provider "%" bills one line twice',
			(SELECT p.name FROM @extschema@.provider p WHERE p.provider_id = pids[1])
			USING ERRCODE = 'SS400', DETAIL = twice,
				  HINT = 'Nothing of this statement was stored. A carrier''s key names one line of a waybill''s fee type: fix the statement, or leave the key column out to store every line as its own.';
	END IF;

	kind := 'new'; n := n_new; RETURN NEXT;
	kind := 'revised'; n := n_rev; RETURN NEXT;
	kind := 'duplicate'; n := n_in - n_new - n_rev; RETURN NEXT;
	kind := 'unmatched'; n := n_park; RETURN NEXT;
	kind := 'matched'; n := n_matched; RETURN NEXT;
	kind := 'withdrawn'; n := n_withdrawn; RETURN NEXT;
	n := NULL;

	RETURN QUERY SELECT * FROM @extschema@._fee_totals(tb, tk);
END
$$;

-- (_fee_totals() as it ends up: the last section that changes it, below)

CREATE OR REPLACE FUNCTION @extschema@._choose_fee_pulls(pid integer, max_n integer)
RETURNS TABLE (binding_id integer, order_key text, provider_shipment_id text, tracking_number text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	UPDATE @extschema@.fee_pull fp SET next_pull_at = 'infinity', last_result = 'billed'
	 WHERE fp.provider_id = pid AND fp.next_pull_at <= now()
	   AND EXISTS (SELECT 1 FROM @extschema@.fee_line l
				   WHERE l.binding_id = fp.binding_id AND l.order_key = fp.order_key
					 AND l.provider_id = pid AND NOT l.quote
					 AND NOT l.withdrawn);
	RETURN QUERY
	WITH picked AS (
		SELECT fp.binding_id, fp.order_key FROM @extschema@.fee_pull fp
		WHERE fp.provider_id = pid AND fp.next_pull_at <= now()
		ORDER BY fp.next_pull_at
		LIMIT max_n
		FOR UPDATE SKIP LOCKED),
	lease AS (
		UPDATE @extschema@.fee_pull fp SET next_pull_at = now() + interval '10 minutes'
		  FROM picked
		 WHERE fp.binding_id = picked.binding_id AND fp.order_key = picked.order_key
		   AND fp.provider_id = pid
		RETURNING fp.binding_id, fp.order_key)
	SELECT s.binding_id, s.order_key, s.provider_shipment_id, s.tracking_number
	FROM lease
	JOIN @extschema@.shipment s
	  ON s.binding_id = lease.binding_id AND s.order_key = lease.order_key AND s.provider_id = pid
	JOIN @extschema@.provider p ON p.provider_id = pid
	WHERE CASE WHEN p.dialect = 'sf_express' THEN s.tracking_number
			   ELSE s.provider_shipment_id END IS NOT NULL;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._settlement()
RETURNS TABLE (provider_id integer, month date, currency text, shipments bigint,
			   estimated numeric, charged numeric, refunded numeric, unbilled bigint,
			   unknown_waybills bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET work_mem = '64MB'
AS $$
	SELECT r.provider_id, r.month, r.currency, sum(r.shipments)::bigint, sum(r.estimated),
		   sum(r.charged), sum(r.refunded), sum(r.unbilled)::bigint, sum(r.unknown)::bigint
	FROM (-- shipments, by the month they were created: with their sums per
		  -- currency, or (those of a shipping provider) without any
		  SELECT s.provider_id, date_trunc('month', s.created_at)::date AS month,
				 f.currency, 1 AS shipments, coalesce(f.estimated, 0) AS estimated,
				 coalesce(f.charged, 0) AS charged, coalesce(f.refunded, 0) AS refunded,
				 CASE WHEN coalesce(f.bill_lines, 0) = 0 AND s.status <> 'cancelled'
					  THEN 1 ELSE 0 END AS unbilled,
				 0 AS unknown
		  FROM @extschema@.shipment s
		  JOIN @extschema@.binding b ON b.binding_id = s.binding_id
		  LEFT JOIN @extschema@.fee_sum f
			ON f.binding_id = s.binding_id AND f.order_key = s.order_key
		   AND f.provider_id = s.provider_id
		  WHERE f.binding_id IS NOT NULL OR s.provider_id = b.provider_id
		  UNION ALL
		  -- billed waybills no shipment has: by the statement's month, else the line's
		  SELECT u.provider_id, u.month, u.currency, 0, 0, u.charged, u.refunded, 0, 1
		  FROM (SELECT l.provider_id, l.tracking_number, l.currency,
					   min(coalesce(st.period, date_trunc('month',
						   coalesce(l.occurred_at, l.recorded_at))::date)) AS month,
					   coalesce(sum(l.amount) FILTER (WHERE l.state <> 'refunded'
						   AND l.fee_type <> 'refund'), 0) AS charged,
					   coalesce(sum(abs(l.amount)) FILTER (WHERE
						   l.state = 'refunded' OR l.fee_type = 'refund'), 0) AS refunded
				FROM @extschema@.fee_line l
				LEFT JOIN @extschema@.statement st ON st.statement_id = l.statement_id
				WHERE l.binding_id IS NULL AND NOT l.quote
				  AND NOT l.withdrawn
				GROUP BY l.provider_id, l.tracking_number, l.currency) u) r
	GROUP BY r.provider_id, r.month, r.currency
$$;

CREATE OR REPLACE VIEW @extschema@.fee_difference AS
WITH opts AS (
	SELECT p.provider_id, p.name,
		   coalesce(@extschema@._decimal_or_null(p.options->'fee_tolerance'->'abs'), 0.01) AS tol_abs,
		   coalesce(@extschema@._decimal_or_null(p.options->'fee_tolerance'->'pct'), 0) AS tol_pct,
		   coalesce(@extschema@._interval_or_null(p.options->>'unbilled_after'), interval '45 days') AS unbilled_after
	FROM @extschema@.provider p)
-- the bill differs from the quote beyond the tolerance
SELECT 'amount_mismatch'::text AS kind, o.name AS provider, f.binding_id, b.tbl, f.order_key,
	   s.tracking_number, NULL::text AS fee_type, f.currency, f.estimated,
	   f.charged - f.refunded AS billed, f.charged - f.refunded - f.estimated AS difference,
	   pg_catalog.format('billed %s %s against a quote of %s', f.charged - f.refunded, f.currency,
						 f.estimated) AS detail
FROM @extschema@.fee_sum f
JOIN opts o ON o.provider_id = f.provider_id
JOIN @extschema@.binding b ON b.binding_id = f.binding_id
JOIN @extschema@.shipment s
  ON s.binding_id = f.binding_id AND s.order_key = f.order_key AND s.provider_id = f.provider_id
WHERE f.quote_lines > 0 AND f.bill_lines > 0
  AND pg_catalog.abs(f.charged - f.refunded - f.estimated)
	  OPERATOR(pg_catalog.>) GREATEST(o.tol_abs, o.tol_pct / 100 * pg_catalog.abs(f.estimated))
UNION ALL
-- billed waybills that no shipment matches
SELECT 'unknown_waybill', o.name, NULL, NULL, NULL, l.tracking_number, NULL, l.currency, NULL,
	   pg_catalog.sum(CASE WHEN l.state = 'refunded' OR l.fee_type = 'refund'
						   THEN -pg_catalog.abs(l.amount) ELSE l.amount END),
	   NULL,
	   pg_catalog.format('%s bill lines for a waybill no shipment has', pg_catalog.count(*))
FROM @extschema@.fee_line l
JOIN opts o ON o.provider_id = l.provider_id
WHERE l.binding_id IS NULL AND NOT l.quote
  -- (a line a corrected statement withdrew is billed no more)
  AND NOT l.withdrawn
GROUP BY o.name, l.tracking_number, l.currency
UNION ALL
-- delivered longer than unbilled_after ago, and no bill line
SELECT 'unbilled', o.name, s.binding_id, b.tbl, s.order_key, s.tracking_number, NULL, NULL,
	   NULL, NULL, NULL,
	   pg_catalog.format('delivered at %s, not billed after %s', d.at, o.unbilled_after)
FROM (SELECT e.binding_id, e.order_key, pg_catalog.min(e.occurred_at) AS at
	  FROM @extschema@.tracking_event e
	  WHERE e.status = 'delivered' AND e.piece IS NULL
	  GROUP BY e.binding_id, e.order_key) d
JOIN @extschema@.binding b ON b.binding_id = d.binding_id
JOIN @extschema@.shipment s
  ON s.binding_id = d.binding_id AND s.order_key = d.order_key AND s.provider_id = b.provider_id
JOIN opts o ON o.provider_id = s.provider_id
WHERE d.at OPERATOR(pg_catalog.<) pg_catalog.now() - o.unbilled_after
  AND NOT EXISTS (SELECT 1 FROM @extschema@.fee_line l
				  WHERE l.binding_id = s.binding_id AND l.order_key = s.order_key
					AND l.provider_id = s.provider_id AND NOT l.quote
					AND NOT l.withdrawn)
UNION ALL
-- one waybill charged twice for one fee (the same type, under the same code)
SELECT 'duplicate_charge', o.name, pg_catalog.min(l.binding_id), NULL, pg_catalog.min(l.order_key),
	   l.tracking_number, l.fee_type, l.currency, NULL, pg_catalog.sum(l.amount), NULL,
	   pg_catalog.format('%s charged lines of %s (keys %s)', pg_catalog.count(*), pg_catalog.min(l.raw_type),
						 pg_catalog.string_agg(pg_catalog.quote_literal(l.fee_key), ', ' ORDER BY l.fee_key))
FROM @extschema@.fee_line l
JOIN opts o ON o.provider_id = l.provider_id
WHERE NOT l.quote AND l.state = 'charged'
GROUP BY o.name, l.tracking_number, l.binding_id, l.order_key, l.fee_type,
	pg_catalog.lower(l.raw_type), l.currency
HAVING pg_catalog.count(*) > 1;


------------------------------------------------------------------------------
-- A real key column is read back as real again
------------------------------------------------------------------------------
-- Keys of a real column were cast to double precision (with the integer
-- widening above): a key printed as 1.1 is no real's value as a double,
-- so the order was taken for deleted ("the order row no longer exists")
-- and its intent ended done, never sent.  They are cast to real again, as
-- before; existing statements are rewritten.
CREATE OR REPLACE FUNCTION @extschema@._key_type(tbl regclass, col name)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	WITH RECURSIVE d(typid, depth) AS (
		SELECT a.atttypid, 0 FROM pg_attribute a
		 WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped
		UNION ALL
		SELECT t.typbasetype, d.depth + 1 FROM d JOIN pg_type t ON t.oid = d.typid
		 WHERE t.typtype = 'd')
	-- a typmod of -1 given: "bit" and "char" keep no length of one
	SELECT CASE WHEN d.typid IN ('int2'::regtype, 'int4'::regtype) THEN 'bigint'
				ELSE format_type(d.typid, -1) END
	  FROM d ORDER BY d.depth DESC LIMIT 1
$$;
COMMENT ON FUNCTION @extschema@._key_type(regclass, name) IS
	'Internal (attach(), reconciliation, resync()): the type order keys are cast to, the key column''s base type without a length (bigint for any integer), so that a key column widened after attach() never has a key cut to another order''s nor fails to cast one.';

UPDATE @extschema@.binding b
   SET render_sql = pg_catalog.regexp_replace(b.render_sql, E'(shipsync_u\\.shipsync_key::).*$',
			E'\\1' OPERATOR(pg_catalog.||) @extschema@._key_type(b.tbl, b.key_column)),
	   writeback_sql = pg_catalog.regexp_replace(b.writeback_sql, E'(shipsync_u\\.shipsync_key::).*$',
			E'\\1' OPERATOR(pg_catalog.||) @extschema@._key_type(b.tbl, b.key_column))
 WHERE @extschema@._key_type(b.tbl, b.key_column) IS NOT NULL
   AND b.render_sql LIKE E'%shipsync\\_u.shipsync\\_key::double precision';


------------------------------------------------------------------------------
-- A credential written into shipsync.provider by hand is refused
------------------------------------------------------------------------------
-- The extension's owner may UPDATE shipsync.provider.  A credential put
-- there (options webhook_secret, auth token) was kept in plain text and
-- never used, and a dump of the database then failed to restore the whole
-- provider table, saying the dump was 0.1's.  Such an update is refused,
-- naming set_secret().
CREATE OR REPLACE FUNCTION @extschema@._refuse_rows_of_0_1()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	what text;
BEGIN
	-- one test a table: an expression naming a column the other lacks fails
	IF TG_TABLE_NAME = 'binding' THEN
		IF strpos(NEW.render_sql, ' AS shipsync_row, ') = 0 THEN
			what := format('binding %s of table %s was made by pg_shipsync 0.1', NEW.binding_id, NEW.tbl);
		END IF;
	ELSIF coalesce(NEW.auth ?| @extschema@._secret_fields(NEW.auth->>'type'), false)
		  OR coalesce(NEW.options ?| ARRAY['webhook_secret', 'previous_webhook_secret'], false) THEN
		what := format('provider "%s" holds its credentials in plain text, as pg_shipsync 0.1 kept them', NEW.name);
		IF TG_OP = 'UPDATE' THEN
			RAISE EXCEPTION 'provider "%" cannot hold a credential in plain text', NEW.name
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'Credentials (auth values, webhook_secret, previous_webhook_secret) are kept encrypted in shipsync.secret: one written into shipsync.provider is never used, and a dump holding it is refused on restore.',
					  HINT = 'Give it with shipsync.set_secret(provider, name, value).';
		END IF;
	END IF;
	IF what IS NOT NULL THEN
		RAISE EXCEPTION '%', what
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'A dump of a database whose extension is at version 0.1 restores into version 0.1 only: its CREATE EXTENSION names no version and made the version installed, which cannot use the rows of 0.1.',
				  HINT = 'Restore the dump into a new database in which CREATE EXTENSION pg_shipsync VERSION ''0.1'' has run, then run ALTER EXTENSION pg_shipsync UPDATE there.';
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@._refuse_rows_of_0_1() IS
	'Internal: refuses a row of shipsync.binding or shipsync.provider in the form pg_shipsync 0.1 kept it (a binding''s statements of 0.1, credentials in plain text), as a dump of a 0.1 database restored as it is would write it, and a provider updated to hold a credential in plain text.';
DROP TRIGGER provider_not_of_0_1 ON @extschema@.provider;
CREATE TRIGGER provider_not_of_0_1 BEFORE INSERT OR UPDATE OF auth, options ON @extschema@.provider
	FOR EACH ROW EXECUTE FUNCTION @extschema@._refuse_rows_of_0_1();

------------------------------------------------------------------------------
-- A child parcel moving does not hide a stuck main parcel
------------------------------------------------------------------------------
-- The stuck check took the order's latest tracking event of any waybill:
-- a multi-piece order whose main parcel had not moved for weeks was not
-- stuck while a child or the return parcel moved.
CREATE OR REPLACE FUNCTION @extschema@._reconcile_stuck(bids integer[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
		chk, facts, detail)
	SELECT 'stuck', s.provider_id, s.binding_id, s.order_key, s.tracking_number, 'stuck',
		   jsonb_build_object('check', 'stuck', 'status', s.status, 'last_event_at', ev.at,
			   'threshold', sa.after),
		   format('shipment %s of order %s has been %s with no tracking event since %s (threshold %s)',
			   coalesce(s.provider_shipment_id, ''), s.order_key, s.status, ev.at, sa.after)
	  FROM @extschema@.shipment s
	  JOIN @extschema@.binding b ON b.binding_id = s.binding_id
	  LEFT JOIN @extschema@.provider tp ON tp.name = b.options->>'tracking_provider'
	  JOIN (SELECT DISTINCT ON (x.status) x.status, x.after, now() - x.after AS before
			  FROM @extschema@.stuck_after x
			 ORDER BY x.status, x.builtin) sa ON sa.status = s.status
	 CROSS JOIN LATERAL (
		 SELECT greatest(s.created_at,
						 (SELECT max(e.occurred_at) FROM @extschema@.tracking_event e
						   WHERE e.binding_id = s.binding_id AND e.order_key = s.order_key
							 AND e.piece IS NULL)) AS at) ev
	 WHERE s.binding_id = ANY (bids)
	   AND s.updated_at < sa.before
	   AND ((s.provider_id = b.provider_id
			 AND NOT EXISTS (SELECT 1 FROM @extschema@.shipment t
							  WHERE t.binding_id = s.binding_id AND t.order_key = s.order_key
								AND t.provider_id = tp.provider_id AND t.status <> 'pending'))
			OR (s.provider_id = tp.provider_id AND s.status <> 'pending'))
	   AND ev.at < sa.before
	ON CONFLICT DO NOTHING;
END
$$;

------------------------------------------------------------------------------
-- Personal data judged on the role whose code runs
------------------------------------------------------------------------------
-- shipsync._pii_visible() (src/privacy.c) judged on the session's role: a
-- reader's trigger that the dispatcher's write-back fired as the table's
-- owner, or a reader's materialized view a superuser refreshed, read every
-- order whole.  The C function changed; its comment says so.
COMMENT ON FUNCTION @extschema@._pii_visible() IS
	'Internal: whether the role whose code runs sees personal values whole (shipsync_operator and above, superusers): the role the session acts as, or, inside a security-restricted operation, the owner whose code it runs (a table owner''s trigger the dispatcher fires, a materialized view a superuser refreshes).';

------------------------------------------------------------------------------
-- The tickets of fee totals an order row did not take close themselves
------------------------------------------------------------------------------
-- A writeback_failed ticket of a fee total (no provider_id) was never
-- closed by a pass, whose close check matched the shipment's provider:
-- the hourly look now closes it once the order row holds its shipment's
-- fee_total, or the order is gone.
CREATE FUNCTION @extschema@._reconcile_fee_written(sbids integer[])
RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b record;
	ids bigint[] := '{}';
BEGIN
	FOR b IN
		SELECT bb.binding_id, bb.tbl, bb.key_column, bb.provider_id,
			   bb.writeback->>'fee_total' AS col,
			   array_agg(DISTINCT x.order_key) AS ks
		  FROM @extschema@.exception_ticket x
		  JOIN @extschema@.binding bb ON bb.binding_id = x.binding_id
		 WHERE x.kind = 'writeback_failed' AND x.provider_id IS NULL AND x.resolved_at IS NULL
		   AND x.order_key IS NOT NULL AND x.binding_id = ANY (sbids)
		   AND bb.writeback ? 'fee_total'
		 GROUP BY bb.binding_id, bb.tbl, bb.key_column, bb.provider_id, bb.writeback->>'fee_total'
	LOOP
		BEGIN
			ids := ids || ARRAY(
				SELECT x.ticket_id
				  FROM @extschema@._select_as_owner(b.tbl, format(
						'SELECT u.k, t.%1$I::text, t.%2$I IS NOT NULL FROM unnest($1) AS u(k)'
						' LEFT JOIN %3$s t ON t.%2$I = u.k::%4$s',
						b.col, b.key_column, b.tbl, @extschema@._key_type(b.tbl, b.key_column)),
						b.ks, NULL) AS o(k text, v text, present boolean)
				  JOIN @extschema@.exception_ticket x
					ON x.kind = 'writeback_failed' AND x.provider_id IS NULL AND x.resolved_at IS NULL
				   AND x.binding_id = b.binding_id AND x.order_key = o.k
				  LEFT JOIN @extschema@.shipment s
					ON s.binding_id = b.binding_id AND s.order_key = o.k AND s.provider_id = b.provider_id
				 WHERE NOT o.present
					OR (s.order_key IS NOT NULL
						AND CASE WHEN o.v IS NULL THEN s.fee_total IS NULL
								 WHEN btrim(o.v) ~ E'^[-+]?[0-9]+(\\.[0-9]*)?$'
									 THEN btrim(o.v)::numeric = s.fee_total
								 ELSE false END));
		EXCEPTION WHEN OTHERS THEN
			-- (its column renamed or dropped since attach(), row security
			-- forced on its owner: judged again at the next look)
			NULL;
		END;
	END LOOP;
	RETURN ids;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_fee_written(integer[]) IS
	'Internal: the open writeback_failed tickets of fee totals, among the given bindings, whose order row now holds its shipment''s fee_total, or is gone.';
REVOKE ALL ON FUNCTION @extschema@._reconcile_fee_written(integer[]) FROM PUBLIC;
-- (_reconcile_merge() as it ends up: the last section that changes it, below)
COMMENT ON FUNCTION @extschema@._reconcile_merge(bigint, integer[], integer[], integer[]) IS
	'Internal: opens, refreshes and reopens the tickets of a run''s findings, and resolves those it no longer sees.';

------------------------------------------------------------------------------
-- A restore no longer records every ticket's opening a second time
------------------------------------------------------------------------------
-- The history (ticket_event) is dumped with the tickets; the trigger that
-- records a ticket's opening fired for the restored tickets too, so that
-- each was opened twice and ticket_summary counted it twice.
CREATE OR REPLACE FUNCTION @extschema@._ticket_opened()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- a restore loads the history as it was, beside the tickets: recorded
	-- again, every ticket was opened twice (as _ticket_fold() tells a
	-- restore)
	IF @extschema@._restoring() THEN
		RETURN NULL;
	END IF;
	INSERT INTO @extschema@.ticket_event (ticket_id, at, event, actor)
	SELECT n.ticket_id, n.opened_at, 'opened', @extschema@._actor() FROM new_tickets n;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._ticket_opened() IS
	'Internal: records the opening of new tickets in shipsync.ticket_event (as the extension''s owner: whoever may change a ticket cannot write its history).';

------------------------------------------------------------------------------
-- A statement's fee tickets no longer take a lock each
------------------------------------------------------------------------------
-- The fold took a lock per ticket, held to the end of the transaction: a
-- statement whose orders' totals the rows do not take (or in another
-- currency) opened one ticket per order, and with some tens of thousands
-- the import failed, "out of shared memory".
CREATE OR REPLACE FUNCTION @extschema@._ticket_fold()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t record;
BEGIN
	-- a restore loads tickets as they were, several of one problem too (0.1
	-- opened one per dead intent): folded, a resolved one was reopened and
	-- the others lost.  A restore is a superuser session with
	-- check_function_bodies off, as pg_dump's scripts and pg_restore set it
	-- (_restoring() in 80_security.sql, as _audit_row() tells it; never
	-- a worker's session, whose table owners' code may turn it off).
	IF @extschema@._restoring() THEN
		RETURN NEW;
	END IF;
	-- one writer per problem at a time, so that two transactions cannot
	-- both find no open ticket and both open one.  The kinds opened by the
	-- thousand in one statement have one writer each, which serializes
	-- itself: _on_drop() (the dropped table's binding row) and
	-- _expire_unmatched() (a lock per provider).  A lock per ticket there
	-- filled the server's lock table ("out of shared memory").  So did the
	-- fee functions' (fee_currency_mixed, and writeback_failed without a
	-- provider: a fee total the row did not take), a ticket for each order
	-- of a month's statement: theirs is one lock per order table.
	IF NEW.kind OPERATOR(pg_catalog.=) 'fee_currency_mixed'
	   OR (NEW.kind OPERATOR(pg_catalog.=) 'writeback_failed' AND NEW.provider_id IS NULL) THEN
		PERFORM pg_advisory_xact_lock(hashtextextended(concat_ws('|', 'shipsync fee ticket',
			NEW.binding_id), 0));
	ELSIF NEW.kind OPERATOR(pg_catalog.<>) ALL (ARRAY['table_dropped', 'unmatched_expired']) THEN
		PERFORM pg_advisory_xact_lock(hashtextextended(concat_ws('|', 'shipsync ticket', NEW.kind,
			NEW.provider_id, NEW.binding_id, NEW.order_key, NEW.subject), 0));
	END IF;
	SELECT x.ticket_id, x.resolved_at INTO t
	  FROM @extschema@.exception_ticket x
	 WHERE x.kind OPERATOR(pg_catalog.=) NEW.kind
	   AND coalesce(x.provider_id, 0) OPERATOR(pg_catalog.=) coalesce(NEW.provider_id, 0)
	   AND coalesce(x.binding_id, 0) OPERATOR(pg_catalog.=) coalesce(NEW.binding_id, 0)
	   AND coalesce(x.order_key, '') OPERATOR(pg_catalog.=) coalesce(NEW.order_key, '')
	   AND coalesce(x.subject, '') OPERATOR(pg_catalog.=) coalesce(NEW.subject, '')
	 ORDER BY x.resolved_at IS NULL DESC, x.ticket_id DESC
	 LIMIT 1;
	IF NOT FOUND THEN
		NEW.last_seen_at := coalesce(NEW.last_seen_at, NEW.opened_at);
		RETURN NEW;
	END IF;
	UPDATE @extschema@.exception_ticket x
	   SET detail = NEW.detail,
		   outbox_id = coalesce(NEW.outbox_id, x.outbox_id),
		   tracking_number = coalesce(NEW.tracking_number, x.tracking_number),
		   facts = coalesce(NEW.facts, x.facts),
		   last_seen_at = pg_catalog.now(),
		   resolved_at = NULL,
		   resolved_by = NULL,
		   resolution = NULL,
		   acknowledged_at = CASE WHEN t.resolved_at IS NULL THEN x.acknowledged_at END,
		   acknowledged_by = CASE WHEN t.resolved_at IS NULL THEN x.acknowledged_by END,
		   acknowledgement = CASE WHEN t.resolved_at IS NULL THEN x.acknowledgement END,
		   reopen_count = x.reopen_count OPERATOR(pg_catalog.+)
			   CASE WHEN t.resolved_at IS NULL THEN 0 ELSE 1 END,
		   reopened_at = CASE WHEN t.resolved_at IS NULL THEN x.reopened_at ELSE pg_catalog.now() END
	 WHERE x.ticket_id OPERATOR(pg_catalog.=) t.ticket_id;
	IF t.resolved_at IS NOT NULL THEN
		PERFORM pg_catalog.pg_notify('shipsync', pg_catalog.json_build_object('event', 'ticket_reopened',
			'ticket_id', t.ticket_id, 'kind', NEW.kind, 'binding_id', NEW.binding_id,
			'order_key', NEW.order_key)::text);
	END IF;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._ticket_fold() IS
	'Internal: a ticket inserted for a problem that already has one refreshes the open ticket, or reopens the last resolved one (reopen_count + 1), instead of adding a second.';

------------------------------------------------------------------------------
-- A statement's orders whose totals are ticketed are no longer compared
-- with every order written
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION @extschema@._fee_totals(tb integer[], tk text[])
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	-- one join and one aggregate for all the orders (a statement touches
	-- tens of thousands), min <> max for "more than one currency"
	RETURN QUERY
	WITH t AS (
		SELECT DISTINCT x.b, x.k FROM unnest(tb, tk) AS x(b, k) WHERE x.b IS NOT NULL),
	-- a quote counts while it is the quote of the order's shipment: an
	-- order shipped again under its key (its shipment row now holds
	-- another waybill) is quoted once, not twice; bills all count
	per AS MATERIALIZED (
		SELECT l.binding_id AS b, l.order_key AS k, l.provider_id AS pid, l.currency AS cur,
			   coalesce(sum(CASE WHEN l.fee_type = 'refund' THEN -abs(l.amount) ELSE l.amount END)
					FILTER (WHERE l.quote AND q.current), 0) AS est,
			   coalesce(sum(l.amount) FILTER (WHERE NOT l.quote AND l.state <> 'refunded'
											  AND l.fee_type <> 'refund'), 0) AS chg,
			   coalesce(sum(abs(l.amount)) FILTER (WHERE NOT l.quote
					AND (l.state = 'refunded' OR l.fee_type = 'refund')), 0) AS ref,
			   count(*) FILTER (WHERE l.quote AND q.current) AS nq,
			   count(*) FILTER (WHERE NOT l.quote) AS nb,
			   max(l.recorded_at) AS last
		FROM @extschema@.fee_line l
		JOIN t ON l.binding_id = t.b AND l.order_key = t.k
		-- (a line a corrected statement withdrew is billed no more: no
		-- bill line, so its order is unbilled again and takes its quote)
		CROSS JOIN LATERAL (
			SELECT NOT l.quote OR coalesce(
				(SELECT s.tracking_number FROM @extschema@.shipment s
				  WHERE s.binding_id = l.binding_id AND s.order_key = l.order_key
					AND s.provider_id = l.provider_id) = l.tracking_number, true) AS current) q
		WHERE NOT l.withdrawn
		GROUP BY l.binding_id, l.order_key, l.provider_id, l.currency),
	kept AS (
		INSERT INTO @extschema@.fee_sum AS fs (binding_id, order_key, provider_id, currency,
			estimated, charged, refunded, quote_lines, bill_lines, last_change)
		SELECT per.b, per.k, per.pid, per.cur, per.est, per.chg, per.ref, per.nq, per.nb, per.last
		FROM per
		ON CONFLICT ON CONSTRAINT fee_sum_pkey DO UPDATE SET
			estimated = EXCLUDED.estimated, charged = EXCLUDED.charged,
			refunded = EXCLUDED.refunded, quote_lines = EXCLUDED.quote_lines,
			bill_lines = EXCLUDED.bill_lines, last_change = EXCLUDED.last_change
		WHERE (fs.estimated, fs.charged, fs.refunded, fs.quote_lines, fs.bill_lines, fs.last_change)
			  IS DISTINCT FROM (EXCLUDED.estimated, EXCLUDED.charged, EXCLUDED.refunded,
								EXCLUDED.quote_lines, EXCLUDED.bill_lines, EXCLUDED.last_change)
		RETURNING 1),
	-- a sum whose provider and currency no line has any more; looked up
	-- in fee_line by its order index, not in per: an anti-join against the
	-- CTE scanned all of per for every sum (the planner cannot hash a
	-- generic plan's guess of one row), 8,000 comparisons a batch of 128
	gone AS (
		DELETE FROM @extschema@.fee_sum fs USING t
		 WHERE fs.binding_id = t.b AND fs.order_key = t.k
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.fee_line l
						   WHERE l.binding_id = fs.binding_id AND l.order_key = fs.order_key
							 AND l.provider_id = fs.provider_id AND l.currency = fs.currency
							 AND NOT l.withdrawn)
		RETURNING 1),
	ord AS (
		SELECT per.b, per.k, sum(per.nb) > 0 AS billed,
			   min(per.cur) FILTER (WHERE per.nb > 0) AS lo_b,
			   max(per.cur) FILTER (WHERE per.nb > 0) AS hi_b,
			   min(per.cur) FILTER (WHERE per.nq > 0) AS lo_q,
			   max(per.cur) FILTER (WHERE per.nq > 0) AS hi_q,
			   -- quoted in a currency (XXX: the answer named none)
			   min(per.cur) FILTER (WHERE per.nq > 0 AND per.cur <> 'XXX') AS lo_qc,
			   max(per.cur) FILTER (WHERE per.nq > 0 AND per.cur <> 'XXX') AS hi_qc,
			   sum(per.chg - per.ref) FILTER (WHERE per.nb > 0) AS tot_b,
			   sum(per.est) FILTER (WHERE per.nq > 0) AS tot_q
		FROM per GROUP BY per.b, per.k),
	-- one currency: the bill's lines in one, and a quote in a currency in
	-- that one too (a bill in dollars of a quote in yuan is no total)
	tot AS (
		SELECT ord.b, ord.k, bb.provider_id AS pid, bb.writeback ? 'fee_total' AS wb,
			   CASE WHEN ord.billed
					THEN ord.lo_b = ord.hi_b AND coalesce(ord.lo_qc = ord.lo_b AND ord.hi_qc = ord.lo_b, true)
					ELSE ord.lo_q = ord.hi_q END AS one,
			   CASE WHEN ord.billed THEN ord.tot_b ELSE ord.tot_q END AS total
		FROM ord JOIN @extschema@.binding bb ON bb.binding_id = ord.b
		UNION ALL
		-- an order whose every line was withdrawn costs nothing now
		SELECT t.b, t.k, bb.provider_id, bb.writeback ? 'fee_total', true, 0
		FROM t JOIN @extschema@.binding bb ON bb.binding_id = t.b
		WHERE NOT EXISTS (SELECT 1 FROM per WHERE per.b = t.b AND per.k = t.k)
		  AND EXISTS (SELECT 1 FROM @extschema@.fee_line l
					  WHERE l.binding_id = t.b AND l.order_key = t.k)),
	sh AS (
		UPDATE @extschema@.shipment s SET fee_total = tot.total, updated_at = now()
		  FROM tot
		 WHERE tot.one AND s.binding_id = tot.b AND s.order_key = tot.k
		   AND s.provider_id = tot.pid AND s.fee_total IS DISTINCT FROM tot.total
		RETURNING s.binding_id, s.order_key, s.fee_total, tot.wb),
	mixed AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, provider_id, detail)
		SELECT 'fee_currency_mixed', tot.b, tot.k, tot.pid,
			   format('the fees of order %s are in %s: its fee_total is left as it was', tot.k,
					  (SELECT string_agg(DISTINCT per.cur, ', ') FROM per
					   WHERE per.b = tot.b AND per.k = tot.k))
		FROM tot
		WHERE NOT tot.one
		  AND NOT EXISTS (SELECT 1 FROM @extschema@.exception_ticket x
						  WHERE x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
							AND x.order_key = tot.k AND x.resolved_at IS NULL)
		RETURNING 1),
	agreed AS (
		UPDATE @extschema@.exception_ticket x SET resolved_at = now()
		  FROM tot
		 WHERE tot.one AND x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
		   AND x.order_key = tot.k AND x.resolved_at IS NULL
		RETURNING 1),
	-- a total with more decimals than the order's numeric column holds
	-- (1.005 into a numeric(10,2)): never written rounded (the binding's
	-- write-back statement leaves the column), and the order gets a ticket
	scale AS (
		SELECT sh.binding_id, sh.order_key, sh.fee_total, a.attname, a.atttypid, tm.m,
			   CASE WHEN tm.m >= 4 THEN (((tm.m - 4) & 2047) # 1024) - 1024 END AS s
		FROM sh
		JOIN @extschema@.binding bb ON bb.binding_id = sh.binding_id
		JOIN pg_catalog.pg_attribute a
		  ON a.attrelid = bb.tbl AND a.attname = bb.writeback->>'fee_total' AND NOT a.attisdropped
		JOIN pg_catalog.pg_type ty
		  ON ty.oid = coalesce(nullif((SELECT d.typbasetype FROM pg_catalog.pg_type d
									   WHERE d.oid = a.atttypid), 0), a.atttypid)
		CROSS JOIN LATERAL (SELECT CASE WHEN a.atttypmod >= 0 THEN a.atttypmod
				ELSE (SELECT d.typtypmod FROM pg_catalog.pg_type d WHERE d.oid = a.atttypid) END) tm(m)
		WHERE sh.wb AND ty.oid = 'pg_catalog.numeric'::pg_catalog.regtype),
	unfit AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, detail)
		SELECT 'writeback_failed', scale.binding_id, scale.order_key,
			   format('write-back of the fee total failed: %s has more decimals than column %I (%s) holds; it was left as it was, not rounded',
					  scale.fee_total, scale.attname, pg_catalog.format_type(scale.atttypid, scale.m))
		FROM scale
		WHERE scale.s IS NOT NULL AND pg_catalog.round(scale.fee_total, scale.s) <> scale.fee_total
		RETURNING exception_ticket.binding_id, exception_ticket.order_key)
	-- (kept, gone, mixed, agreed and unfit run whether or not they are read;
	-- the orders ticketed are hashed once: estimated at a few rows, an anti
	-- join compared every order written with every one ticketed, 36 million
	-- comparisons for a statement of 6,000 of each.  No key is NULL.)
	SELECT 'writeback'::text, NULL::bigint, sh.binding_id, sh.order_key, sh.fee_total
	FROM sh WHERE sh.wb
	  AND (sh.binding_id, sh.order_key) NOT IN (SELECT u.binding_id, u.order_key FROM unfit u);
END
$$;

------------------------------------------------------------------------------
-- open_tickets' last note is one given since the ticket was (re)opened
------------------------------------------------------------------------------
-- A reopening clears the acknowledgement and both notes, but the view
-- showed the note of the resolution before it on the ticket open again.
CREATE OR REPLACE VIEW @extschema@.open_tickets AS
SELECT t.ticket_id,
	   t.kind,
	   CASE WHEN t.acknowledged_at IS NULL THEN 'open' ELSE 'acknowledged' END AS state,
	   pg_catalog.now() OPERATOR(pg_catalog.-) coalesce(t.reopened_at, t.opened_at) AS age,
	   p.name AS provider,
	   b.tbl AS "table",
	   t.order_key,
	   t.tracking_number,
	   t.subject,
	   t.opened_at,
	   t.reopen_count,
	   t.last_seen_at,
	   t.acknowledged_by,
	   -- (given since the ticket was last (re)opened: a reopening clears
	   -- the notes of before)
	   (SELECT e.note FROM @extschema@.ticket_event e
		 WHERE e.ticket_id OPERATOR(pg_catalog.=) t.ticket_id AND e.note IS NOT NULL
		   AND e.at OPERATOR(pg_catalog.>=) coalesce(t.reopened_at, t.opened_at)
		 ORDER BY e.at DESC LIMIT 1) AS last_note,
	   t.detail
FROM @extschema@.exception_ticket t
LEFT JOIN @extschema@.provider p ON p.provider_id OPERATOR(pg_catalog.=) t.provider_id
LEFT JOIN @extschema@.binding b ON b.binding_id OPERATOR(pg_catalog.=) t.binding_id
WHERE t.resolved_at IS NULL;
COMMENT ON COLUMN @extschema@.open_tickets.last_note IS 'The last note given with shipsync.ack() or shipsync.resolve() since the ticket was (re)opened.';

------------------------------------------------------------------------------
-- The ticket of a dead create or update of an order cancelled or deleted
-- since closes itself
------------------------------------------------------------------------------
-- Its intent is moot once a later cancel of the order is done (the cancel
-- of an order never shipped is done with nothing to send); it stayed open
-- forever, beside the order's not_sent, which closed.
-- (_reconcile_merge() as it ends up: the last section that changes it, below)
COMMENT ON FUNCTION @extschema@._reconcile_merge(bigint, integer[], integer[], integer[]) IS
	'Internal: opens, refreshes and reopens the tickets of a run''s findings, and resolves those it no longer sees.';

------------------------------------------------------------------------------
-- The CRM-side tickets of a table no longer attached are resolved
------------------------------------------------------------------------------
-- No pass compares a detached (or dropped) table again: its not_sent,
-- address_changed_after_send, stuck, fee_mismatch and CRM-side mismatch
-- tickets stayed open forever.
-- (_reconcile_merge() as it ends up: the last section that changes it, below)
COMMENT ON FUNCTION @extschema@._reconcile_merge(bigint, integer[], integer[], integer[]) IS
	'Internal: opens, refreshes and reopens the tickets of a run''s findings, and resolves those it no longer sees.';

------------------------------------------------------------------------------
-- The merge analyzes a ledger that changed much since its statistics
------------------------------------------------------------------------------
-- The pass after a flood of tickets, planned on the ledger's statistics of
-- before, probed every finding against every open ticket of its kind.
CREATE OR REPLACE FUNCTION @extschema@._reconcile_merge(run bigint, bids integer[], pids integer[],
	sbids integer[], OUT opened integer, OUT reopened integer, OUT closed integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	n integer;
	fpids integer[] := @extschema@._reconcile_fee_providers(sbids);
	fee_written bigint[] := @extschema@._reconcile_fee_written(sbids);
BEGIN
	SELECT x.* INTO r FROM @extschema@.reconcile_run x WHERE x.run_id = run;
	-- the findings are joined with the tickets below: planned knowing how
	-- many there are (the table is filled by many statements, never read
	-- before)
	ANALYZE pg_temp.recon_found;
	-- and so is the ledger, when it changed much since its statistics (a
	-- flood of tickets: a carrier down, a statement of unknown waybills,
	-- opened by the pass before, the next autovacuum not come yet):
	-- planned on those of before, every finding was probed against every
	-- open ticket of its kind (50,000: five minutes)
	IF (SELECT s.n_mod_since_analyze > greatest(1000, c.reltuples / 5)
		  FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
		 WHERE s.relid = '@extschema@.exception_ticket'::regclass) THEN
		ANALYZE @extschema@.exception_ticket;
	END IF;

	-- still there: refresh what changed, and when it was seen (hourly)
	UPDATE @extschema@.exception_ticket x
	   SET facts = f.facts, detail = f.detail,
		   tracking_number = coalesce(f.tracking_number, x.tracking_number),
		   last_seen_at = now(), run_id = run
	  FROM pg_temp.recon_found f
	 WHERE x.resolved_at IS NULL
	   AND x.kind = f.kind AND coalesce(x.provider_id, 0) = coalesce(f.provider_id, 0)
	   AND coalesce(x.binding_id, 0) = coalesce(f.binding_id, 0)
	   AND coalesce(x.order_key, '') = coalesce(f.order_key, '')
	   AND coalesce(x.subject, '') = coalesce(f.subject, '')
	   AND (x.facts IS DISTINCT FROM f.facts OR x.last_seen_at IS NULL
			OR x.last_seen_at < now() - interval '1 hour');

	-- back after a resolution: reopen the last ticket of the problem
	WITH k AS (
		SELECT DISTINCT ON (f.kind, coalesce(f.provider_id, 0), coalesce(f.binding_id, 0),
							coalesce(f.order_key, ''), coalesce(f.subject, ''))
			   x.ticket_id, f.facts, f.detail, f.tracking_number
		  FROM pg_temp.recon_found f
		  JOIN @extschema@.exception_ticket x
			ON x.kind = f.kind AND coalesce(x.provider_id, 0) = coalesce(f.provider_id, 0)
		   AND coalesce(x.binding_id, 0) = coalesce(f.binding_id, 0)
		   AND coalesce(x.order_key, '') = coalesce(f.order_key, '')
		   AND coalesce(x.subject, '') = coalesce(f.subject, '')
		 WHERE NOT EXISTS (
			   SELECT 1 FROM @extschema@.exception_ticket o
				WHERE o.resolved_at IS NULL
				  AND o.kind = f.kind AND coalesce(o.provider_id, 0) = coalesce(f.provider_id, 0)
				  AND coalesce(o.binding_id, 0) = coalesce(f.binding_id, 0)
				  AND coalesce(o.order_key, '') = coalesce(f.order_key, '')
				  AND coalesce(o.subject, '') = coalesce(f.subject, ''))
		 ORDER BY f.kind, coalesce(f.provider_id, 0), coalesce(f.binding_id, 0),
				  coalesce(f.order_key, ''), coalesce(f.subject, ''), x.ticket_id DESC),
	u AS (
		UPDATE @extschema@.exception_ticket x
		   SET resolved_at = NULL, resolved_by = NULL, resolution = NULL,
			   acknowledged_at = NULL, acknowledged_by = NULL, acknowledgement = NULL,
			   reopen_count = x.reopen_count + 1, reopened_at = now(),
			   facts = k.facts, detail = k.detail,
			   tracking_number = coalesce(k.tracking_number, x.tracking_number),
			   last_seen_at = now(), run_id = run
		  FROM k WHERE x.ticket_id = k.ticket_id
		RETURNING x.ticket_id, x.kind, x.binding_id, x.order_key)
	SELECT count(pg_notify('shipsync', json_build_object('event', 'ticket_reopened',
			   'ticket_id', u.ticket_id, 'kind', u.kind, 'binding_id', u.binding_id,
			   'order_key', u.order_key)::text))
	  INTO reopened FROM u;

	-- new problems
	WITH i AS (
		INSERT INTO @extschema@.exception_ticket AS x (kind, provider_id, binding_id, order_key,
			subject, tracking_number, detail, facts, last_seen_at, run_id)
		SELECT f.kind, f.provider_id, f.binding_id, f.order_key, f.subject, f.tracking_number,
			   f.detail, f.facts, now(), run
		  FROM pg_temp.recon_found f
		 WHERE NOT EXISTS (
			   SELECT 1 FROM @extschema@.exception_ticket o
				WHERE o.resolved_at IS NULL
				  AND o.kind = f.kind AND coalesce(o.provider_id, 0) = coalesce(f.provider_id, 0)
				  AND coalesce(o.binding_id, 0) = coalesce(f.binding_id, 0)
				  AND coalesce(o.order_key, '') = coalesce(f.order_key, '')
				  AND coalesce(o.subject, '') = coalesce(f.subject, ''))
		 ORDER BY f.kind, f.binding_id, f.order_key, f.subject
		ON CONFLICT (kind, (coalesce(provider_id, 0)), (coalesce(binding_id, 0)),
					 (coalesce(order_key, '')), (coalesce(subject, '')))
			WHERE resolved_at IS NULL DO NOTHING
		RETURNING x.ticket_id, x.kind, x.binding_id, x.order_key)
	SELECT count(pg_notify('shipsync', json_build_object('event', 'ticket_opened',
			   'ticket_id', i.ticket_id, 'kind', i.kind, 'binding_id', i.binding_id,
			   'order_key', i.order_key)::text))
	  INTO opened FROM i;

	-- gone: resolved, with why (resolved_by: who compares, reconcile in the worker)
	-- (the open tickets not found are picked first, on their own: joined
	-- with the conditions below, whose selectivity the planner cannot
	-- guess, the findings were scanned once for every open ticket)
	WITH c AS (
		UPDATE @extschema@.exception_ticket x
		   SET resolved_at = now(), run_id = run,
			   resolution = format('no longer seen (reconciliation run %s)', run)
		 WHERE x.ticket_id = ANY (ARRAY(
				   SELECT o.ticket_id FROM @extschema@.exception_ticket o
					WHERE o.resolved_at IS NULL
					  AND NOT EXISTS (
						  SELECT 1 FROM pg_temp.recon_found f
						   WHERE o.kind = f.kind AND coalesce(o.provider_id, 0) = coalesce(f.provider_id, 0)
							 AND coalesce(o.binding_id, 0) = coalesce(f.binding_id, 0)
							 AND coalesce(o.order_key, '') = coalesce(f.order_key, '')
							 AND coalesce(o.subject, '') = coalesce(f.subject, ''))))
		   AND x.resolved_at IS NULL
		   AND (
			   -- the CRM side of the bindings compared
			   (x.binding_id = ANY (bids)
				AND (x.kind IN ('not_sent', 'address_changed_after_send')
					 OR (x.kind IN ('tracking_mismatch', 'status_mismatch')
						 AND x.facts->>'check' = 'crm')))
			   OR (x.binding_id = ANY (sbids) AND x.kind = 'stuck')
			   -- the fees of those bindings' orders, and their providers' unknown waybills
			   OR (x.kind = 'fee_mismatch'
				   AND (x.binding_id = ANY (sbids)
						OR (x.binding_id IS NULL
							AND x.provider_id = ANY (fpids))))
			   -- a fee total an order row did not take, now held (or the order gone)
			   OR x.ticket_id = ANY (fee_written)
			   -- a write-back that failed, now matching
			   OR (x.binding_id = ANY (bids) AND x.kind = 'writeback_failed'
				   AND EXISTS (SELECT 1 FROM @extschema@.shipment s
								WHERE s.binding_id = x.binding_id AND s.order_key = x.order_key
								  AND s.provider_id = x.provider_id)
				   AND NOT EXISTS (SELECT 1 FROM pg_temp.recon_found f
									WHERE f.binding_id = x.binding_id AND f.order_key = x.order_key
									  AND f.kind IN ('tracking_mismatch', 'status_mismatch')))
			   -- an intent that stopped, now delivered or made moot
			   OR (x.binding_id = ANY (bids)
				   AND x.kind IN ('dead_intent', 'invalid_order', 'auth_failed', 'render_failed',
								  'forbidden_host', 'tls_failed', 'apply_failed', 'poison')
				   AND EXISTS (
					   SELECT 1 FROM @extschema@.outbox o
						WHERE o.id = x.outbox_id
						  AND (o.state = 'done'
							   OR (o.op IN ('create', 'update')
								   AND EXISTS (SELECT 1 FROM @extschema@.shipment s
												WHERE s.binding_id = o.binding_id AND s.order_key = o.order_key
												  AND s.provider_id = o.provider_id AND s.status <> 'cancelled'
												  AND s.updated_at > x.opened_at)
								   AND NOT EXISTS (SELECT 1 FROM pg_temp.recon_found f
													WHERE f.binding_id = o.binding_id AND f.order_key = o.order_key
													  AND f.kind IN ('not_sent', 'address_changed_after_send')))
							   OR (o.op = 'cancel'
								   AND NOT EXISTS (SELECT 1 FROM @extschema@.shipment s
													WHERE s.binding_id = o.binding_id AND s.order_key = o.order_key
													  AND s.provider_id = o.provider_id
													  AND s.status <> 'cancelled'))
							   -- a create or update made moot: the order was
							   -- cancelled or deleted since, and that cancel is
							   -- done (sent, or nothing to cancel)
							   OR (o.op IN ('create', 'update')
								   AND EXISTS (SELECT 1 FROM @extschema@.outbox c
												WHERE c.binding_id = o.binding_id AND c.order_key = o.order_key
												  AND c.provider_id = o.provider_id AND c.op = 'cancel'
												  AND c.state = 'done' AND c.id > o.id)))))
			   -- the carrier side of the providers pulled, as far as the snapshot covers
			   OR (x.provider_id = ANY (pids) AND x.kind = 'missing_at_carrier'
				   AND NOT EXISTS (SELECT 1 FROM @extschema@.shipment s
									WHERE s.binding_id = x.binding_id AND s.order_key = x.order_key
									  AND s.provider_id = x.provider_id AND s.status <> 'cancelled'
									  AND (s.updated_at < r.window_start OR s.updated_at >= r.window_end)
									  AND NOT EXISTS (SELECT 1 FROM @extschema@.carrier_snapshot c
													   WHERE c.run_id = run AND c.provider_id = s.provider_id
														 AND c.shipment_id = s.provider_shipment_id)))
			   OR (x.provider_id = ANY (pids) AND x.kind IN ('tracking_mismatch', 'status_mismatch')
				   AND x.facts->>'check' = 'carrier'
				   AND (EXISTS (SELECT 1 FROM @extschema@.carrier_snapshot c
								 WHERE c.run_id = run AND c.provider_id = x.provider_id
								   AND c.shipment_id = x.facts->>'shipment_id')
						OR NOT EXISTS (SELECT 1 FROM @extschema@.shipment s
										WHERE s.binding_id = x.binding_id AND s.order_key = x.order_key
										  AND s.provider_id = x.provider_id)))
			   OR (x.provider_id = ANY (pids) AND x.kind = 'orphan_at_carrier'
				   AND EXISTS (SELECT 1 FROM @extschema@.carrier_snapshot c
								WHERE c.run_id = run AND c.provider_id = x.provider_id
								  AND c.shipment_id = x.subject))
			   OR (x.provider_id = ANY (pids) AND x.kind = 'duplicate_at_carrier'
				   AND x.order_key IN (SELECT c.order_ref FROM @extschema@.carrier_snapshot c
										WHERE c.run_id = run AND c.provider_id = x.provider_id)))
		RETURNING 1)
	SELECT count(*) INTO closed FROM c;

	-- the CRM side of tables no longer attached (detached, or dropped): no
	-- pass compares them again.  (A table attached again keeps its binding,
	-- active again, and its tickets.)
	WITH d AS (
		UPDATE @extschema@.exception_ticket x
		   SET resolved_at = now(), run_id = run,
			   resolution = format('its table is no longer attached (reconciliation run %s)', run)
		 WHERE x.resolved_at IS NULL AND x.binding_id IS NOT NULL
		   AND (x.kind IN ('not_sent', 'address_changed_after_send', 'stuck', 'fee_mismatch')
				OR (x.kind IN ('tracking_mismatch', 'status_mismatch') AND x.facts->>'check' = 'crm'))
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.binding b
							WHERE b.binding_id = x.binding_id AND b.active)
		RETURNING 1)
	SELECT closed + count(*) INTO closed FROM d;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_merge(bigint, integer[], integer[], integer[]) IS
	'Internal: opens, refreshes and reopens the tickets of a run''s findings, and resolves those it no longer sees.';

------------------------------------------------------------------------------
-- The tracking apply is never JIT-compiled, and looks up pieces one by one
------------------------------------------------------------------------------
-- The lookup of SF child and return waybills made the batch statement's
-- plan cost more than jit_above_cost on paper: every ingest_tracking()
-- call, and every push through the receiver, compiled it (40 ms for 100
-- events that take 4).  And the lookup, a join, could read every
-- multi-piece shipment of the provider for a batch with one unknown
-- number: each number is looked up through the waybills' index on its own.
CREATE OR REPLACE FUNCTION @extschema@._apply_tracking(pid integer, prof text, ttl_s integer,
	keys text[], tns text[], raws text[], details text[], ats timestamptz[],
	locs text[], descrs text[])
RETURNS TABLE (kind text, binding_id integer, order_key text, tracking_number text,
			   old_status text, new_status text, n bigint, tbl text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- (its plans cost enough on paper for JIT, 40 ms a call to save microseconds)
SET jit = off
AS $$
DECLARE
	n_new bigint;
	n_park bigint;
	n_matched bigint;
	n_expired bigint;
	bids integer[];
	oks text[];
	has_parked boolean;
BEGIN
	n_expired := @extschema@._expire_unmatched(pid);

	-- Serialise with every other transaction adding events for the same
	-- tracking numbers of this provider: a transaction-level advisory lock
	-- on (provider, hash of the tracking number), taken in one statement in
	-- a fixed order, before any event is read or written.  The fold below, a
	-- later statement with a snapshot of its own, then sees every event
	-- committed before it.  (Row locks on the shipments did the same at the
	-- cost of a WAL record and a dirtied page per shipment: 14% of ingest.)
	has_parked := EXISTS (SELECT 1 FROM @extschema@.unmatched_event u WHERE u.provider_id = pid);
	PERFORM pg_advisory_xact_lock(pid, x.h)
	   FROM (SELECT DISTINCT hashtext(y.t) AS h
			 FROM (SELECT unnest(tns) AS t
				   UNION ALL
				   SELECT u.tracking_number FROM @extschema@.unmatched_event u
				   WHERE has_parked AND u.provider_id = pid) y
			 ORDER BY 1) x;

	-- parked events whose shipment has appeared
	IF has_parked THEN
	-- a tracking number given to several shipments (carriers recycle
	-- them) goes to the newest
	WITH main AS (
		SELECT DISTINCT ON (s.tracking_number) s.binding_id, s.order_key, s.tracking_number,
			   NULL::text AS piece
		FROM @extschema@.shipment s
		WHERE s.provider_id = pid
		  AND s.tracking_number IN (SELECT u.tracking_number FROM @extschema@.unmatched_event u
									WHERE u.provider_id = pid)
		ORDER BY s.tracking_number, s.created_at DESC),
	-- or another waybill of a multi-piece shipment (SF: child, return)
	-- (each number looked up through the waybills' index on its own: a
	-- join let the planner read every multi-piece shipment for each batch)
	pc AS (
		SELECT p.binding_id, p.order_key, t.tn AS tracking_number, p.piece
		FROM (SELECT DISTINCT u.tracking_number AS tn FROM @extschema@.unmatched_event u
			  WHERE u.provider_id = pid
				AND NOT EXISTS (SELECT 1 FROM main WHERE main.tracking_number = u.tracking_number)) t
		CROSS JOIN LATERAL (
			SELECT s.binding_id, s.order_key, @extschema@._waybill_piece(s.waybills, t.tn) AS piece
			FROM @extschema@.shipment s
			WHERE s.waybills @> jsonb_build_array(jsonb_build_object('waybillNo', t.tn))
			  AND s.waybills IS NOT NULL AND s.provider_id = pid
			ORDER BY s.created_at DESC
			LIMIT 1) p),
	ship AS (
		SELECT * FROM main UNION ALL SELECT * FROM pc),
	moved AS (
		DELETE FROM @extschema@.unmatched_event u USING ship
		 WHERE u.provider_id = pid AND u.tracking_number = ship.tracking_number
		RETURNING u.*, ship.binding_id, ship.order_key, ship.piece),
	ins AS (
		INSERT INTO @extschema@.tracking_event AS e (provider_id, event_key, tracking_number,
			binding_id, order_key, occurred_at, status, raw_status, raw_detail, location,
			description, received_at, piece)
		SELECT pid, m.event_key, m.tracking_number, m.binding_id, m.order_key, m.occurred_at,
			   coalesce(mm.status, gc.name, 'unknown'),
			   m.raw_status, m.raw_detail, m.location, m.description, m.received_at, m.piece
		FROM moved m
		LEFT JOIN LATERAL (
			SELECT sm.status FROM @extschema@.status_map sm
			WHERE sm.profile = prof AND sm.raw_status IN (m.raw_status, m.raw_detail)
			  AND (sm.pattern IS NULL OR coalesce(m.description, '') ~ sm.pattern)
			ORDER BY sm.priority DESC, sm.pattern IS NOT NULL DESC, sm.raw_status = m.raw_status DESC
			LIMIT 1) mm ON true
		LEFT JOIN @extschema@.canonical_status gc ON prof = 'generic' AND gc.name = m.raw_status
		ORDER BY m.received_at, m.occurred_at
		ON CONFLICT (provider_id, event_key) DO NOTHING
		RETURNING e.binding_id, e.order_key)
	SELECT count(*), array_agg(ins.binding_id), array_agg(ins.order_key)
	INTO n_matched, bids, oks FROM ins;
	ELSE
		n_matched := 0;
	END IF;

	-- this batch: known shipments get events, the others are parked
	WITH ev AS (
		SELECT u.*
		FROM unnest(keys, tns, raws, details, ats, locs, descrs)
			 WITH ORDINALITY AS u(k, tn, raw, det, at, loc, descr, ord)),
	-- the map rows this batch can use, read once (none at all, usually, for
	-- the generic profile)
	cand AS MATERIALIZED (
		SELECT sm.raw_status, sm.pattern, sm.status, sm.priority
		FROM @extschema@.status_map sm
		WHERE sm.profile = prof
		  AND sm.raw_status IN (SELECT ev.raw FROM ev UNION SELECT ev.det FROM ev)),
	main AS (
		SELECT DISTINCT ON (s.tracking_number) s.binding_id, s.order_key, s.tracking_number,
			   NULL::text AS piece
		FROM @extschema@.shipment s
		WHERE s.provider_id = pid AND s.tracking_number IN (SELECT ev.tn FROM ev)
		ORDER BY s.tracking_number, s.created_at DESC),
	-- a number no shipment has as its tracking number may be another
	-- waybill of a multi-piece shipment (SF: child, return): the order's
	-- event, tagged with the piece, which moves no status
	-- (each looked up through the waybills' index on its own, as above)
	pc AS (
		SELECT p.binding_id, p.order_key, t.tn AS tracking_number, p.piece
		FROM (SELECT DISTINCT ev.tn FROM ev
			  WHERE NOT EXISTS (SELECT 1 FROM main WHERE main.tracking_number = ev.tn)) t
		CROSS JOIN LATERAL (
			SELECT s.binding_id, s.order_key, @extschema@._waybill_piece(s.waybills, t.tn) AS piece
			FROM @extschema@.shipment s
			WHERE s.waybills @> jsonb_build_array(jsonb_build_object('waybillNo', t.tn))
			  AND s.waybills IS NOT NULL AND s.provider_id = pid
			ORDER BY s.created_at DESC
			LIMIT 1) p),
	ship AS (
		SELECT * FROM main UNION ALL SELECT * FROM pc),
	ins AS (
		INSERT INTO @extschema@.tracking_event AS e (provider_id, event_key, tracking_number,
			binding_id, order_key, occurred_at, status, raw_status, raw_detail, location,
			description, piece)
		SELECT pid, ev.k, ev.tn, ship.binding_id, ship.order_key, ev.at,
			   coalesce(mm.status, gc.name, 'unknown'),
			   ev.raw, ev.det, ev.loc, ev.descr, ship.piece
		FROM ev JOIN ship ON ship.tracking_number = ev.tn
		LEFT JOIN LATERAL (
			SELECT sm.status FROM cand sm
			WHERE sm.raw_status IN (ev.raw, ev.det)
			  AND (sm.pattern IS NULL OR coalesce(ev.descr, '') ~ sm.pattern)
			ORDER BY sm.priority DESC, sm.pattern IS NOT NULL DESC, sm.raw_status = ev.raw DESC
			LIMIT 1) mm ON true
		LEFT JOIN @extschema@.canonical_status gc ON prof = 'generic' AND gc.name = ev.raw
		ORDER BY ev.ord
		ON CONFLICT (provider_id, event_key) DO NOTHING
		RETURNING e.binding_id, e.order_key),
	park AS (
		INSERT INTO @extschema@.unmatched_event AS x (provider_id, event_key, tracking_number,
			occurred_at, raw_status, raw_detail, location, description, expires_at)
		SELECT pid, ev.k, ev.tn, ev.at, ev.raw, ev.det, ev.loc, ev.descr,
			   now() + make_interval(secs => ttl_s)
		FROM ev
		WHERE NOT EXISTS (SELECT 1 FROM ship WHERE ship.tracking_number = ev.tn)
		ORDER BY ev.ord
		ON CONFLICT (provider_id, event_key) DO NOTHING
		RETURNING 1)
	SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM park),
		   coalesce(bids, '{}') || coalesce((SELECT array_agg(ins.binding_id) FROM ins), '{}'),
		   coalesce(oks, '{}') || coalesce((SELECT array_agg(ins.order_key) FROM ins), '{}')
	INTO n_new, n_park, bids, oks;

	kind := 'new'; n := n_new; RETURN NEXT;
	kind := 'duplicate'; n := coalesce(array_length(keys, 1), 0) - n_new - n_park; RETURN NEXT;
	kind := 'unmatched'; n := n_park; RETURN NEXT;
	kind := 'matched'; n := n_matched; RETURN NEXT;
	kind := 'expired'; n := n_expired; RETURN NEXT;
	n := NULL;

	-- the fold over each touched shipment's whole history, in event time:
	-- the events of its waybill, not those of an earlier shipment of the
	-- same order (deleted and inserted again, its key changed and changed
	-- back), whose last word (returned, delivered) is not the new one's
	RETURN QUERY
	WITH touched AS (
		SELECT DISTINCT t.bid, t.k FROM unnest(bids, oks) AS t(bid, k)),
	-- one index scan per shipment, whatever the statistics say
	f AS (
		SELECT touched.bid AS binding_id, touched.k AS order_key, h.st
		FROM touched
		JOIN @extschema@.shipment s
		  ON s.binding_id = touched.bid AND s.order_key = touched.k AND s.provider_id = pid
		CROSS JOIN LATERAL (
			SELECT @extschema@._status_fold(e.status, e.raw_status, c.rank, c.terminal,
											c.recoverable ORDER BY e.occurred_at, e.event_id) AS st
			FROM @extschema@.tracking_event e
			JOIN @extschema@.canonical_status c ON c.name = e.status
			WHERE e.binding_id = touched.bid AND e.order_key = touched.k
			  AND e.tracking_number = s.tracking_number) h),
	cur AS (
		SELECT s.binding_id, s.order_key, s.status AS old, f.st[1] AS st, f.st[2] AS raw
		FROM f JOIN @extschema@.shipment s
		  ON s.binding_id = f.binding_id AND s.order_key = f.order_key AND s.provider_id = pid
		LEFT JOIN @extschema@.canonical_status oc ON oc.name = s.status
		WHERE f.st IS NOT NULL AND NOT coalesce(oc.terminal, false)),
	upd AS (
		UPDATE @extschema@.shipment s
		   SET status = cur.st, raw_status = cur.raw, updated_at = now()
		  FROM cur
		 WHERE s.binding_id = cur.binding_id AND s.order_key = cur.order_key
		   AND s.provider_id = pid
		   AND (s.status IS DISTINCT FROM cur.st OR s.raw_status IS DISTINCT FROM cur.raw)
		RETURNING s.binding_id, s.order_key, s.tracking_number, cur.old, s.status)
	SELECT 'changed', upd.binding_id, upd.order_key, upd.tracking_number, upd.old, upd.status,
		   NULL::bigint, b.tbl::text
	FROM upd JOIN @extschema@.binding b ON b.binding_id = upd.binding_id
	WHERE upd.old IS DISTINCT FROM upd.status;
END
$$;

------------------------------------------------------------------------------
-- The audit log pruned 10,000 rows at a time
------------------------------------------------------------------------------
-- One DELETE of every row older than the retention held the dispatcher's
-- loop for as long as it took (2 million rows: 20 s, nothing sent
-- meanwhile); the dispatcher now prunes in steps, one an idle check.
CREATE OR REPLACE FUNCTION @extschema@._prune_audit(retention interval)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	-- at most 10,000 rows a call, the oldest first: a first pruning of a
	-- long log (2 million rows: 20 s) held the dispatcher's loop, so it
	-- comes back for the rest at its next idle checks (audit.c)
	DELETE FROM @extschema@.audit_log a
	 WHERE a.audit_id OPERATOR(pg_catalog.=) ANY (ARRAY(
			SELECT x.audit_id FROM @extschema@.audit_log x
			 WHERE x.at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) retention)
			 ORDER BY x.audit_id
			 LIMIT 10000));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._prune_audit(interval) IS
	'Internal: delete at most 10,000 of the audit rows older than retention, the oldest first, and return how many; the dispatcher calls it with shipsync.audit_retention until fewer are left.';

------------------------------------------------------------------------------
-- A statement's identity: its body, format and options
------------------------------------------------------------------------------
-- The same body imported with other options (another account, month or
-- column map) was answered as a duplicate of the first import: a second
-- account's bill of the same bytes was never stored.  The options are kept
-- with the statement and are part of what makes an import the same again.
ALTER TABLE @extschema@.statement ADD COLUMN options jsonb NOT NULL DEFAULT '{}';
ALTER TABLE @extschema@.statement DROP CONSTRAINT statement_provider_id_digest_key;
ALTER TABLE @extschema@.statement ADD CONSTRAINT statement_provider_id_digest_format_options_key
	UNIQUE (provider_id, digest, format, options);
COMMENT ON TABLE @extschema@.statement IS
	'One imported carrier statement (monthly bill), written by shipsync.import_statement(): provider, month, account, who imported it when, how many lines were stored, the totals per currency as billed, and the SHA-256 of the body (the same body again, in the same format and with the same options, is a no-op). A later statement of the same provider, period and account supersedes the earlier one line by line.';
COMMENT ON COLUMN @extschema@.statement.digest IS 'Hex SHA-256 of the body as given: importing the same body again, in the same format and with the same options, changes nothing.';
COMMENT ON COLUMN @extschema@.statement.options IS 'The options it was imported with (columns, period, account, on_error, delimiter): part of what makes an import the same again, as they change what the body says.';
DROP FUNCTION @extschema@._begin_statement(integer, text, text, text, text, text, text[], numeric[],
	timestamptz[], jsonb);
CREATE FUNCTION @extschema@._begin_statement(pid integer, period_text text, acct text, fmt text,
	body_digest text, tz text, curs text[], amounts numeric[], ats timestamptz[], errs jsonb,
	opts jsonb, OUT statement_id bigint, OUT replaces bigint, OUT period date, OUT totals jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	lo date;
	hi date;
	nmissing bigint;
	p date;
	old bigint;
	tot jsonb;
	id bigint;
BEGIN
	IF period_text IS NOT NULL THEN
		p := to_date(period_text || '-01', 'YYYY-MM-DD');
	ELSE
		SELECT min(date_trunc('month', a AT TIME ZONE tz))::date,
			   max(date_trunc('month', a AT TIME ZONE tz))::date,
			   count(*) FILTER (WHERE a IS NULL)
		INTO lo, hi, nmissing FROM unnest(ats) AS a;
		IF lo IS NULL OR lo <> hi OR nmissing > 0 THEN
			RAISE EXCEPTION 'the month this statement bills is not known'
				USING ERRCODE = 'SS400',
					  DETAIL = CASE WHEN lo IS NULL THEN 'Its lines have no times.'
									WHEN lo <> hi THEN format('Its lines fall in %s to %s.',
										to_char(lo, 'YYYY-MM'), to_char(hi, 'YYYY-MM'))
									ELSE format('%s of its lines have no time.', nmissing) END,
					  HINT = 'Pass it in the options, for example {"period": "2026-03"}.';
		END IF;
		p := lo;
	END IF;
	SELECT s.statement_id INTO old FROM @extschema@.statement s
	 WHERE s.provider_id = pid AND s.period = p AND s.account IS NOT DISTINCT FROM acct
	   AND s.superseded_by IS NULL
	 ORDER BY s.statement_id DESC LIMIT 1;
	SELECT coalesce(jsonb_object_agg(x.cur, x.total::text), '{}') INTO tot
	FROM (SELECT u.cur, sum(u.amount) AS total FROM unnest(curs, amounts) AS u(cur, amount)
		  GROUP BY u.cur) x;
	INSERT INTO @extschema@.statement AS s (provider_id, period, account, format, digest, lines,
		totals, errors, supersedes, options)
	VALUES (pid, p, acct, fmt, body_digest, coalesce(cardinality(curs), 0), tot, errs, old,
		coalesce(opts, '{}'))
	RETURNING s.statement_id INTO id;
	UPDATE @extschema@.statement s SET superseded_by = id WHERE s.statement_id = old;
	statement_id := id;
	replaces := old;
	period := p;
	totals := tot;
END
$$;
REVOKE ALL ON FUNCTION @extschema@._begin_statement(integer, text, text, text, text, text, text[],
	numeric[], timestamptz[], jsonb, jsonb) FROM PUBLIC;

------------------------------------------------------------------------------
-- A quote total the order's column cannot hold gets a ticket
------------------------------------------------------------------------------
-- The dispatcher's apply writes an order's first quote total with its
-- shipment; one with more decimals than a numeric(p,s) column holds was
-- left out without a ticket (only a bill's total had one).
/*
 * The quote totals the dispatcher's apply wrote back with the shipments
 * (src/apply.c: one element per shipment with a fee_total) that have more
 * decimals than the order's numeric column holds: the write-back left the
 * column as it was, and the order gets the writeback_failed ticket a bill's
 * total gets in _fee_totals() (closed, as that one, by the hourly look at
 * fees of a reconciliation pass once the column holds the shipment's
 * fee_total).  Returns how many orders.  PL/pgSQL for its cached plan: it
 * runs for every applied batch with a quote, and planned at each call (a
 * SQL function's body is) it took 0.5 ms a batch.
 */
CREATE FUNCTION @extschema@._quote_totals_unfit(bids integer[], oks text[], totals numeric[])
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	-- the column's scale once per binding (materialized: inlined, the
	-- catalogs were read for each total), then each total against it
	WITH col AS MATERIALIZED (
		SELECT bb.binding_id AS b, a.attname, a.atttypid, tm.m,
			   CASE WHEN tm.m >= 4 THEN (((tm.m - 4) & 2047) # 1024) - 1024 END AS s
		FROM @extschema@.binding bb
		JOIN pg_catalog.pg_attribute a
		  ON a.attrelid = bb.tbl AND a.attname = bb.writeback->>'fee_total' AND NOT a.attisdropped
		JOIN pg_catalog.pg_type ty
		  ON ty.oid = coalesce(nullif((SELECT d.typbasetype FROM pg_catalog.pg_type d
									   WHERE d.oid = a.atttypid), 0), a.atttypid)
		CROSS JOIN LATERAL (SELECT CASE WHEN a.atttypmod >= 0 THEN a.atttypmod
				ELSE (SELECT d.typtypmod FROM pg_catalog.pg_type d WHERE d.oid = a.atttypid) END) tm(m)
		WHERE bb.binding_id = ANY (bids) AND bb.active AND bb.writeback ? 'fee_total'
		  AND ty.oid = 'pg_catalog.numeric'::pg_catalog.regtype)
	INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, detail)
	SELECT 'writeback_failed', u.b, u.k,
		   format('write-back of the fee total failed: %s has more decimals than column %I (%s) holds; it was left as it was, not rounded',
				  u.tot, col.attname, pg_catalog.format_type(col.atttypid, col.m))
	FROM unnest(bids, oks, totals) AS u(b, k, tot)
	JOIN col ON col.b = u.b
	WHERE col.s IS NOT NULL AND u.tot IS NOT NULL AND pg_catalog.round(u.tot, col.s) <> u.tot;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
REVOKE ALL ON FUNCTION @extschema@._quote_totals_unfit(integer[], text[], numeric[]) FROM PUBLIC;

------------------------------------------------------------------------------
-- Write-back tickets no pass would judge again are resolved
------------------------------------------------------------------------------
-- The writeback_failed tickets of a table detached or dropped, and the fee
-- total tickets of a table whose write-back map no longer has fee_total,
-- stayed open for good: no pass judged them again.
CREATE OR REPLACE FUNCTION @extschema@._reconcile_merge(run bigint, bids integer[], pids integer[],
	sbids integer[], OUT opened integer, OUT reopened integer, OUT closed integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	n integer;
	fpids integer[] := @extschema@._reconcile_fee_providers(sbids);
	fee_written bigint[] := @extschema@._reconcile_fee_written(sbids);
BEGIN
	SELECT x.* INTO r FROM @extschema@.reconcile_run x WHERE x.run_id = run;
	-- the findings are joined with the tickets below: planned knowing how
	-- many there are (the table is filled by many statements, never read
	-- before)
	ANALYZE pg_temp.recon_found;
	-- and so is the ledger, when it changed much since its statistics (a
	-- flood of tickets: a carrier down, a statement of unknown waybills,
	-- opened by the pass before, the next autovacuum not come yet):
	-- planned on those of before, every finding was probed against every
	-- open ticket of its kind (50,000: five minutes)
	IF (SELECT s.n_mod_since_analyze > greatest(1000, c.reltuples / 5)
		  FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
		 WHERE s.relid = '@extschema@.exception_ticket'::regclass) THEN
		ANALYZE @extschema@.exception_ticket;
	END IF;

	-- still there: refresh what changed, and when it was seen (hourly)
	UPDATE @extschema@.exception_ticket x
	   SET facts = f.facts, detail = f.detail,
		   tracking_number = coalesce(f.tracking_number, x.tracking_number),
		   last_seen_at = now(), run_id = run
	  FROM pg_temp.recon_found f
	 WHERE x.resolved_at IS NULL
	   AND x.kind = f.kind AND coalesce(x.provider_id, 0) = coalesce(f.provider_id, 0)
	   AND coalesce(x.binding_id, 0) = coalesce(f.binding_id, 0)
	   AND coalesce(x.order_key, '') = coalesce(f.order_key, '')
	   AND coalesce(x.subject, '') = coalesce(f.subject, '')
	   AND (x.facts IS DISTINCT FROM f.facts OR x.last_seen_at IS NULL
			OR x.last_seen_at < now() - interval '1 hour');

	-- back after a resolution: reopen the last ticket of the problem
	WITH k AS (
		SELECT DISTINCT ON (f.kind, coalesce(f.provider_id, 0), coalesce(f.binding_id, 0),
							coalesce(f.order_key, ''), coalesce(f.subject, ''))
			   x.ticket_id, f.facts, f.detail, f.tracking_number
		  FROM pg_temp.recon_found f
		  JOIN @extschema@.exception_ticket x
			ON x.kind = f.kind AND coalesce(x.provider_id, 0) = coalesce(f.provider_id, 0)
		   AND coalesce(x.binding_id, 0) = coalesce(f.binding_id, 0)
		   AND coalesce(x.order_key, '') = coalesce(f.order_key, '')
		   AND coalesce(x.subject, '') = coalesce(f.subject, '')
		 WHERE NOT EXISTS (
			   SELECT 1 FROM @extschema@.exception_ticket o
				WHERE o.resolved_at IS NULL
				  AND o.kind = f.kind AND coalesce(o.provider_id, 0) = coalesce(f.provider_id, 0)
				  AND coalesce(o.binding_id, 0) = coalesce(f.binding_id, 0)
				  AND coalesce(o.order_key, '') = coalesce(f.order_key, '')
				  AND coalesce(o.subject, '') = coalesce(f.subject, ''))
		 ORDER BY f.kind, coalesce(f.provider_id, 0), coalesce(f.binding_id, 0),
				  coalesce(f.order_key, ''), coalesce(f.subject, ''), x.ticket_id DESC),
	u AS (
		UPDATE @extschema@.exception_ticket x
		   SET resolved_at = NULL, resolved_by = NULL, resolution = NULL,
			   acknowledged_at = NULL, acknowledged_by = NULL, acknowledgement = NULL,
			   reopen_count = x.reopen_count + 1, reopened_at = now(),
			   facts = k.facts, detail = k.detail,
			   tracking_number = coalesce(k.tracking_number, x.tracking_number),
			   last_seen_at = now(), run_id = run
		  FROM k WHERE x.ticket_id = k.ticket_id
		RETURNING x.ticket_id, x.kind, x.binding_id, x.order_key)
	SELECT count(pg_notify('shipsync', json_build_object('event', 'ticket_reopened',
			   'ticket_id', u.ticket_id, 'kind', u.kind, 'binding_id', u.binding_id,
			   'order_key', u.order_key)::text))
	  INTO reopened FROM u;

	-- new problems
	WITH i AS (
		INSERT INTO @extschema@.exception_ticket AS x (kind, provider_id, binding_id, order_key,
			subject, tracking_number, detail, facts, last_seen_at, run_id)
		SELECT f.kind, f.provider_id, f.binding_id, f.order_key, f.subject, f.tracking_number,
			   f.detail, f.facts, now(), run
		  FROM pg_temp.recon_found f
		 WHERE NOT EXISTS (
			   SELECT 1 FROM @extschema@.exception_ticket o
				WHERE o.resolved_at IS NULL
				  AND o.kind = f.kind AND coalesce(o.provider_id, 0) = coalesce(f.provider_id, 0)
				  AND coalesce(o.binding_id, 0) = coalesce(f.binding_id, 0)
				  AND coalesce(o.order_key, '') = coalesce(f.order_key, '')
				  AND coalesce(o.subject, '') = coalesce(f.subject, ''))
		 ORDER BY f.kind, f.binding_id, f.order_key, f.subject
		ON CONFLICT (kind, (coalesce(provider_id, 0)), (coalesce(binding_id, 0)),
					 (coalesce(order_key, '')), (coalesce(subject, '')))
			WHERE resolved_at IS NULL DO NOTHING
		RETURNING x.ticket_id, x.kind, x.binding_id, x.order_key)
	SELECT count(pg_notify('shipsync', json_build_object('event', 'ticket_opened',
			   'ticket_id', i.ticket_id, 'kind', i.kind, 'binding_id', i.binding_id,
			   'order_key', i.order_key)::text))
	  INTO opened FROM i;

	-- gone: resolved, with why (resolved_by: who compares, reconcile in the worker)
	-- (the open tickets not found are picked first, on their own: joined
	-- with the conditions below, whose selectivity the planner cannot
	-- guess, the findings were scanned once for every open ticket)
	WITH c AS (
		UPDATE @extschema@.exception_ticket x
		   SET resolved_at = now(), run_id = run,
			   resolution = format('no longer seen (reconciliation run %s)', run)
		 WHERE x.ticket_id = ANY (ARRAY(
				   SELECT o.ticket_id FROM @extschema@.exception_ticket o
					WHERE o.resolved_at IS NULL
					  AND NOT EXISTS (
						  SELECT 1 FROM pg_temp.recon_found f
						   WHERE o.kind = f.kind AND coalesce(o.provider_id, 0) = coalesce(f.provider_id, 0)
							 AND coalesce(o.binding_id, 0) = coalesce(f.binding_id, 0)
							 AND coalesce(o.order_key, '') = coalesce(f.order_key, '')
							 AND coalesce(o.subject, '') = coalesce(f.subject, ''))))
		   AND x.resolved_at IS NULL
		   AND (
			   -- the CRM side of the bindings compared
			   (x.binding_id = ANY (bids)
				AND (x.kind IN ('not_sent', 'address_changed_after_send')
					 OR (x.kind IN ('tracking_mismatch', 'status_mismatch')
						 AND x.facts->>'check' = 'crm')))
			   OR (x.binding_id = ANY (sbids) AND x.kind = 'stuck')
			   -- the fees of those bindings' orders, and their providers' unknown waybills
			   OR (x.kind = 'fee_mismatch'
				   AND (x.binding_id = ANY (sbids)
						OR (x.binding_id IS NULL
							AND x.provider_id = ANY (fpids))))
			   -- a fee total an order row did not take, now held (or the order gone)
			   OR x.ticket_id = ANY (fee_written)
			   -- a write-back that failed, now matching
			   OR (x.binding_id = ANY (bids) AND x.kind = 'writeback_failed'
				   AND EXISTS (SELECT 1 FROM @extschema@.shipment s
								WHERE s.binding_id = x.binding_id AND s.order_key = x.order_key
								  AND s.provider_id = x.provider_id)
				   AND NOT EXISTS (SELECT 1 FROM pg_temp.recon_found f
									WHERE f.binding_id = x.binding_id AND f.order_key = x.order_key
									  AND f.kind IN ('tracking_mismatch', 'status_mismatch')))
			   -- an intent that stopped, now delivered or made moot
			   OR (x.binding_id = ANY (bids)
				   AND x.kind IN ('dead_intent', 'invalid_order', 'auth_failed', 'render_failed',
								  'forbidden_host', 'tls_failed', 'apply_failed', 'poison')
				   AND EXISTS (
					   SELECT 1 FROM @extschema@.outbox o
						WHERE o.id = x.outbox_id
						  AND (o.state = 'done'
							   OR (o.op IN ('create', 'update')
								   AND EXISTS (SELECT 1 FROM @extschema@.shipment s
												WHERE s.binding_id = o.binding_id AND s.order_key = o.order_key
												  AND s.provider_id = o.provider_id AND s.status <> 'cancelled'
												  AND s.updated_at > x.opened_at)
								   AND NOT EXISTS (SELECT 1 FROM pg_temp.recon_found f
													WHERE f.binding_id = o.binding_id AND f.order_key = o.order_key
													  AND f.kind IN ('not_sent', 'address_changed_after_send')))
							   OR (o.op = 'cancel'
								   AND NOT EXISTS (SELECT 1 FROM @extschema@.shipment s
													WHERE s.binding_id = o.binding_id AND s.order_key = o.order_key
													  AND s.provider_id = o.provider_id
													  AND s.status <> 'cancelled'))
							   -- a create or update made moot: the order was
							   -- cancelled or deleted since, and that cancel is
							   -- done (sent, or nothing to cancel)
							   OR (o.op IN ('create', 'update')
								   AND EXISTS (SELECT 1 FROM @extschema@.outbox c
												WHERE c.binding_id = o.binding_id AND c.order_key = o.order_key
												  AND c.provider_id = o.provider_id AND c.op = 'cancel'
												  AND c.state = 'done' AND c.id > o.id)))))
			   -- the carrier side of the providers pulled, as far as the snapshot covers
			   OR (x.provider_id = ANY (pids) AND x.kind = 'missing_at_carrier'
				   AND NOT EXISTS (SELECT 1 FROM @extschema@.shipment s
									WHERE s.binding_id = x.binding_id AND s.order_key = x.order_key
									  AND s.provider_id = x.provider_id AND s.status <> 'cancelled'
									  AND (s.updated_at < r.window_start OR s.updated_at >= r.window_end)
									  AND NOT EXISTS (SELECT 1 FROM @extschema@.carrier_snapshot c
													   WHERE c.run_id = run AND c.provider_id = s.provider_id
														 AND c.shipment_id = s.provider_shipment_id)))
			   OR (x.provider_id = ANY (pids) AND x.kind IN ('tracking_mismatch', 'status_mismatch')
				   AND x.facts->>'check' = 'carrier'
				   AND (EXISTS (SELECT 1 FROM @extschema@.carrier_snapshot c
								 WHERE c.run_id = run AND c.provider_id = x.provider_id
								   AND c.shipment_id = x.facts->>'shipment_id')
						OR NOT EXISTS (SELECT 1 FROM @extschema@.shipment s
										WHERE s.binding_id = x.binding_id AND s.order_key = x.order_key
										  AND s.provider_id = x.provider_id)))
			   OR (x.provider_id = ANY (pids) AND x.kind = 'orphan_at_carrier'
				   AND EXISTS (SELECT 1 FROM @extschema@.carrier_snapshot c
								WHERE c.run_id = run AND c.provider_id = x.provider_id
								  AND c.shipment_id = x.subject))
			   OR (x.provider_id = ANY (pids) AND x.kind = 'duplicate_at_carrier'
				   AND x.order_key IN (SELECT c.order_ref FROM @extschema@.carrier_snapshot c
										WHERE c.run_id = run AND c.provider_id = x.provider_id)))
		RETURNING 1)
	SELECT count(*) INTO closed FROM c;

	-- the CRM side of tables no longer attached (detached, or dropped): no
	-- pass compares them again, nor looks at their write-backs.  (A table
	-- attached again keeps its binding, active again, and its tickets.)  A
	-- fee total a row did not take is moot too once the table's write-back
	-- map has no fee_total: nothing writes it any more, and the hourly look
	-- judges only the tables that have one.
	WITH d AS (
		UPDATE @extschema@.exception_ticket x
		   SET resolved_at = now(), run_id = run,
			   resolution = CASE WHEN EXISTS (SELECT 1 FROM @extschema@.binding b
											   WHERE b.binding_id = x.binding_id AND b.active)
				   THEN format('its table no longer writes back fee_total (reconciliation run %s)', run)
				   ELSE format('its table is no longer attached (reconciliation run %s)', run) END
		 WHERE x.resolved_at IS NULL AND x.binding_id IS NOT NULL
		   AND (((x.kind IN ('not_sent', 'address_changed_after_send', 'stuck', 'fee_mismatch',
							 'writeback_failed')
				  OR (x.kind IN ('tracking_mismatch', 'status_mismatch') AND x.facts->>'check' = 'crm'))
				 AND NOT EXISTS (SELECT 1 FROM @extschema@.binding b
								  WHERE b.binding_id = x.binding_id AND b.active))
				OR (x.kind = 'writeback_failed' AND x.provider_id IS NULL
					AND EXISTS (SELECT 1 FROM @extschema@.binding b
								 WHERE b.binding_id = x.binding_id AND b.active
								   AND NOT b.writeback ? 'fee_total')))
		RETURNING 1)
	SELECT closed + count(*) INTO closed FROM d;
END
$$;

------------------------------------------------------------------------------
-- Tickets resolved by retry(), requeue() and the fee functions say why
------------------------------------------------------------------------------
-- They were resolved without a resolution, so the ledger's history showed
-- nothing about why.
CREATE OR REPLACE FUNCTION @extschema@.retry(outbox_id bigint)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	st text;
BEGIN
	SELECT o.state INTO st FROM @extschema@.outbox o WHERE o.id = retry.outbox_id FOR UPDATE;
	IF st IS NULL THEN
		RAISE EXCEPTION 'outbox intent % does not exist', outbox_id
			USING ERRCODE = 'undefined_object',
				  HINT = 'Find intents with shipsync.trace() or in shipsync.outbox.';
	END IF;
	IF st NOT IN ('dead', 'invalid', 'retrying') THEN
		RAISE EXCEPTION 'outbox intent % is %, not dead, invalid or retrying', outbox_id, st
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Only intents that stopped or wait for a retry can be retried.';
	END IF;
	UPDATE @extschema@.outbox o
	   SET state = CASE WHEN o.attempts = 0 THEN 'pending' ELSE 'retrying' END,
		   attempts = 0, next_attempt_at = now(), done_at = NULL, updated_at = now()
	 WHERE o.id = retry.outbox_id;
	UPDATE @extschema@.exception_ticket t
	   SET resolved_at = now(), resolved_by = session_user,
		   resolution = format('intent %s sent again by retry()', retry.outbox_id)
	 WHERE t.outbox_id = retry.outbox_id AND t.resolved_at IS NULL;
	PERFORM @extschema@._audit('retry', 'intent', retry.outbox_id::text,
		pg_catalog.jsonb_build_object('state', st),
		(SELECT pg_catalog.jsonb_build_object('state', o.state) FROM @extschema@.outbox o
		  WHERE o.id OPERATOR(pg_catalog.=) retry.outbox_id));
	PERFORM @extschema@._wake(false);
	RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._requeue(action text, provider text, states text[],
									 error_class text, since timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
	pid integer;
	st text;
BEGIN
	FOREACH st IN ARRAY coalesce(states, ARRAY[NULL::text]) LOOP
		IF st IS NULL OR st OPERATOR(pg_catalog.<>) ALL (ARRAY['dead', 'invalid', 'retrying']) THEN
			RAISE EXCEPTION 'cannot requeue intents in state "%"', coalesce(st, '')
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Requeue dead, invalid or retrying intents.';
		END IF;
	END LOOP;
	IF provider IS NOT NULL THEN
		SELECT p.provider_id INTO pid FROM @extschema@.provider p
		 WHERE p.name OPERATOR(pg_catalog.=) _requeue.provider;
		IF pid IS NULL THEN
			RAISE EXCEPTION 'provider "%" does not exist', provider
				USING ERRCODE = 'undefined_object',
					  HINT = 'See SELECT name FROM shipsync.providers.';
		END IF;
	END IF;
	IF since OPERATOR(pg_catalog.>) pg_catalog.now() THEN
		RAISE EXCEPTION 'since is in the future'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give the time from which the intents to send again stopped.';
	END IF;
	WITH q AS (
		UPDATE @extschema@.outbox o
		   SET state = CASE WHEN o.attempts OPERATOR(pg_catalog.=) 0 THEN 'pending' ELSE 'retrying' END,
			   attempts = 0, next_attempt_at = pg_catalog.now(), done_at = NULL,
			   updated_at = pg_catalog.now()
		 WHERE o.state OPERATOR(pg_catalog.=) ANY (states)
		   AND (pid IS NULL OR o.provider_id OPERATOR(pg_catalog.=) pid)
		   AND (_requeue.error_class IS NULL OR o.error_class OPERATOR(pg_catalog.=) _requeue.error_class)
		   AND (since IS NULL OR o.updated_at OPERATOR(pg_catalog.>=) since)
		RETURNING o.id),
	t AS (
		UPDATE @extschema@.exception_ticket t
		   SET resolved_at = pg_catalog.now(), resolved_by = SESSION_USER,
			   resolution = pg_catalog.format('intent %s sent again by %s()', q.id, action)
		  FROM q WHERE t.outbox_id OPERATOR(pg_catalog.=) q.id AND t.resolved_at IS NULL)
	SELECT pg_catalog.count(*) INTO n FROM q;
	PERFORM @extschema@._audit(action, 'provider', coalesce(_requeue.provider, '*'),
		pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
			'state', CASE WHEN pg_catalog.cardinality(states) OPERATOR(pg_catalog.=) 1
						  THEN pg_catalog.to_jsonb(states[1]) ELSE pg_catalog.to_jsonb(states) END,
			'error_class', _requeue.error_class, 'since', since)),
		pg_catalog.jsonb_build_object('requeued', n));
	PERFORM @extschema@._wake(false);
	RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._fee_totals(tb integer[], tk text[])
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	-- one join and one aggregate for all the orders (a statement touches
	-- tens of thousands), min <> max for "more than one currency"
	RETURN QUERY
	WITH t AS (
		SELECT DISTINCT x.b, x.k FROM unnest(tb, tk) AS x(b, k) WHERE x.b IS NOT NULL),
	-- a quote counts while it is the quote of the order's shipment: an
	-- order shipped again under its key (its shipment row now holds
	-- another waybill) is quoted once, not twice; bills all count
	per AS MATERIALIZED (
		SELECT l.binding_id AS b, l.order_key AS k, l.provider_id AS pid, l.currency AS cur,
			   coalesce(sum(CASE WHEN l.fee_type = 'refund' THEN -abs(l.amount) ELSE l.amount END)
					FILTER (WHERE l.quote AND q.current), 0) AS est,
			   coalesce(sum(l.amount) FILTER (WHERE NOT l.quote AND l.state <> 'refunded'
											  AND l.fee_type <> 'refund'), 0) AS chg,
			   coalesce(sum(abs(l.amount)) FILTER (WHERE NOT l.quote
					AND (l.state = 'refunded' OR l.fee_type = 'refund')), 0) AS ref,
			   count(*) FILTER (WHERE l.quote AND q.current) AS nq,
			   count(*) FILTER (WHERE NOT l.quote) AS nb,
			   max(l.recorded_at) AS last
		FROM @extschema@.fee_line l
		JOIN t ON l.binding_id = t.b AND l.order_key = t.k
		-- (a line a corrected statement withdrew is billed no more: no
		-- bill line, so its order is unbilled again and takes its quote)
		CROSS JOIN LATERAL (
			SELECT NOT l.quote OR coalesce(
				(SELECT s.tracking_number FROM @extschema@.shipment s
				  WHERE s.binding_id = l.binding_id AND s.order_key = l.order_key
					AND s.provider_id = l.provider_id) = l.tracking_number, true) AS current) q
		WHERE NOT l.withdrawn
		GROUP BY l.binding_id, l.order_key, l.provider_id, l.currency),
	kept AS (
		INSERT INTO @extschema@.fee_sum AS fs (binding_id, order_key, provider_id, currency,
			estimated, charged, refunded, quote_lines, bill_lines, last_change)
		SELECT per.b, per.k, per.pid, per.cur, per.est, per.chg, per.ref, per.nq, per.nb, per.last
		FROM per
		ON CONFLICT ON CONSTRAINT fee_sum_pkey DO UPDATE SET
			estimated = EXCLUDED.estimated, charged = EXCLUDED.charged,
			refunded = EXCLUDED.refunded, quote_lines = EXCLUDED.quote_lines,
			bill_lines = EXCLUDED.bill_lines, last_change = EXCLUDED.last_change
		WHERE (fs.estimated, fs.charged, fs.refunded, fs.quote_lines, fs.bill_lines, fs.last_change)
			  IS DISTINCT FROM (EXCLUDED.estimated, EXCLUDED.charged, EXCLUDED.refunded,
								EXCLUDED.quote_lines, EXCLUDED.bill_lines, EXCLUDED.last_change)
		RETURNING 1),
	-- a sum whose provider and currency no line has any more; looked up
	-- in fee_line by its order index, not in per: an anti-join against the
	-- CTE scanned all of per for every sum (the planner cannot hash a
	-- generic plan's guess of one row), 8,000 comparisons a batch of 128
	gone AS (
		DELETE FROM @extschema@.fee_sum fs USING t
		 WHERE fs.binding_id = t.b AND fs.order_key = t.k
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.fee_line l
						   WHERE l.binding_id = fs.binding_id AND l.order_key = fs.order_key
							 AND l.provider_id = fs.provider_id AND l.currency = fs.currency
							 AND NOT l.withdrawn)
		RETURNING 1),
	ord AS (
		SELECT per.b, per.k, sum(per.nb) > 0 AS billed,
			   min(per.cur) FILTER (WHERE per.nb > 0) AS lo_b,
			   max(per.cur) FILTER (WHERE per.nb > 0) AS hi_b,
			   min(per.cur) FILTER (WHERE per.nq > 0) AS lo_q,
			   max(per.cur) FILTER (WHERE per.nq > 0) AS hi_q,
			   -- quoted in a currency (XXX: the answer named none)
			   min(per.cur) FILTER (WHERE per.nq > 0 AND per.cur <> 'XXX') AS lo_qc,
			   max(per.cur) FILTER (WHERE per.nq > 0 AND per.cur <> 'XXX') AS hi_qc,
			   sum(per.chg - per.ref) FILTER (WHERE per.nb > 0) AS tot_b,
			   sum(per.est) FILTER (WHERE per.nq > 0) AS tot_q
		FROM per GROUP BY per.b, per.k),
	-- one currency: the bill's lines in one, and a quote in a currency in
	-- that one too (a bill in dollars of a quote in yuan is no total)
	tot AS (
		SELECT ord.b, ord.k, bb.provider_id AS pid, bb.writeback ? 'fee_total' AS wb,
			   CASE WHEN ord.billed
					THEN ord.lo_b = ord.hi_b AND coalesce(ord.lo_qc = ord.lo_b AND ord.hi_qc = ord.lo_b, true)
					ELSE ord.lo_q = ord.hi_q END AS one,
			   CASE WHEN ord.billed THEN ord.tot_b ELSE ord.tot_q END AS total
		FROM ord JOIN @extschema@.binding bb ON bb.binding_id = ord.b
		UNION ALL
		-- an order whose every line was withdrawn costs nothing now
		SELECT t.b, t.k, bb.provider_id, bb.writeback ? 'fee_total', true, 0
		FROM t JOIN @extschema@.binding bb ON bb.binding_id = t.b
		WHERE NOT EXISTS (SELECT 1 FROM per WHERE per.b = t.b AND per.k = t.k)
		  AND EXISTS (SELECT 1 FROM @extschema@.fee_line l
					  WHERE l.binding_id = t.b AND l.order_key = t.k)),
	sh AS (
		UPDATE @extschema@.shipment s SET fee_total = tot.total, updated_at = now()
		  FROM tot
		 WHERE tot.one AND s.binding_id = tot.b AND s.order_key = tot.k
		   AND s.provider_id = tot.pid AND s.fee_total IS DISTINCT FROM tot.total
		RETURNING s.binding_id, s.order_key, s.fee_total, tot.wb),
	mixed AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, provider_id, detail)
		SELECT 'fee_currency_mixed', tot.b, tot.k, tot.pid,
			   format('the fees of order %s are in %s: its fee_total is left as it was', tot.k,
					  (SELECT string_agg(DISTINCT per.cur, ', ') FROM per
					   WHERE per.b = tot.b AND per.k = tot.k))
		FROM tot
		WHERE NOT tot.one
		  AND NOT EXISTS (SELECT 1 FROM @extschema@.exception_ticket x
						  WHERE x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
							AND x.order_key = tot.k AND x.resolved_at IS NULL)
		RETURNING 1),
	agreed AS (
		UPDATE @extschema@.exception_ticket x SET resolved_at = now(),
			   resolution = 'its fee lines are in one currency again'
		  FROM tot
		 WHERE tot.one AND x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
		   AND x.order_key = tot.k AND x.resolved_at IS NULL
		RETURNING 1),
	-- a total with more decimals than the order's numeric column holds
	-- (1.005 into a numeric(10,2)): never written rounded (the binding's
	-- write-back statement leaves the column), and the order gets a ticket
	scale AS (
		SELECT sh.binding_id, sh.order_key, sh.fee_total, a.attname, a.atttypid, tm.m,
			   CASE WHEN tm.m >= 4 THEN (((tm.m - 4) & 2047) # 1024) - 1024 END AS s
		FROM sh
		JOIN @extschema@.binding bb ON bb.binding_id = sh.binding_id
		JOIN pg_catalog.pg_attribute a
		  ON a.attrelid = bb.tbl AND a.attname = bb.writeback->>'fee_total' AND NOT a.attisdropped
		JOIN pg_catalog.pg_type ty
		  ON ty.oid = coalesce(nullif((SELECT d.typbasetype FROM pg_catalog.pg_type d
									   WHERE d.oid = a.atttypid), 0), a.atttypid)
		CROSS JOIN LATERAL (SELECT CASE WHEN a.atttypmod >= 0 THEN a.atttypmod
				ELSE (SELECT d.typtypmod FROM pg_catalog.pg_type d WHERE d.oid = a.atttypid) END) tm(m)
		WHERE sh.wb AND ty.oid = 'pg_catalog.numeric'::pg_catalog.regtype),
	unfit AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, detail)
		SELECT 'writeback_failed', scale.binding_id, scale.order_key,
			   format('write-back of the fee total failed: %s has more decimals than column %I (%s) holds; it was left as it was, not rounded',
					  scale.fee_total, scale.attname, pg_catalog.format_type(scale.atttypid, scale.m))
		FROM scale
		WHERE scale.s IS NOT NULL AND pg_catalog.round(scale.fee_total, scale.s) <> scale.fee_total
		RETURNING exception_ticket.binding_id, exception_ticket.order_key)
	-- (kept, gone, mixed, agreed and unfit run whether or not they are read;
	-- the orders ticketed are hashed once: estimated at a few rows, an anti
	-- join compared every order written with every one ticketed, 36 million
	-- comparisons for a statement of 6,000 of each.  No key is NULL.)
	SELECT 'writeback'::text, NULL::bigint, sh.binding_id, sh.order_key, sh.fee_total
	FROM sh WHERE sh.wb
	  AND (sh.binding_id, sh.order_key) NOT IN (SELECT u.binding_id, u.order_key FROM unfit u);
END
$$;

------------------------------------------------------------------------------
-- attach() of one table by two sessions at once
------------------------------------------------------------------------------
-- The second waited for the first, then failed on its capture trigger
-- ("trigger shipsync_capture ... already exists"); it now takes the
-- trigger's lock before it checks, and says the table is already attached.
CREATE OR REPLACE FUNCTION @extschema@.attach(tbl regclass, provider text, key_column name DEFAULT NULL,
								   writeback jsonb DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pid integer;
	bid integer;
	keycol name := key_column;
	keytype text;
	wb jsonb := coalesce(writeback, '{}');
	opts jsonb := coalesce(options, '{}');
	f text;
	col text;
	coltype text;
	colcat "char";
	colnumeric boolean;
	colscale integer;
	sets text[] := '{}';
	wbcols text[] := '{}';
	render text;
	wbsql text;
	cancel_when text;
	trigargs text;
	relkind "char";
	adopt integer;
	gone record;
	oldwb jsonb;
	oldskip text[];
	newskip text[];
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.relkind INTO relkind FROM pg_class c WHERE c.oid = tbl;
	IF relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '"%" is not a table', tbl
			USING ERRCODE = 'wrong_object_type',
				  HINT = 'Attach an ordinary or partitioned table.';
	END IF;
	IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'The dispatcher reads and writes the table with its owner''s rights.';
	END IF;
	SELECT p.provider_id INTO pid FROM @extschema@.provider p WHERE p.name = attach.provider;
	IF pid IS NULL THEN
		RAISE EXCEPTION 'provider "%" does not exist', coalesce(provider, '')
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it first with shipsync.create_provider().';
	END IF;
	-- the lock CREATE TRIGGER takes below, taken before the check: a second
	-- attach() of the table waits here for the first, then sees its binding
	-- (each statement reads what was committed before it) and says so,
	-- rather than failing on the first one's trigger
	EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', tbl);
	IF EXISTS (SELECT 1 FROM @extschema@.binding b WHERE b.tbl = attach.tbl AND b.active) THEN
		RAISE EXCEPTION 'table % is already attached', tbl
			USING ERRCODE = 'duplicate_object',
				  DETAIL = format('Binding %s captures its orders for provider "%s".',
								  (SELECT b.binding_id FROM @extschema@.binding b WHERE b.tbl = attach.tbl),
								  (SELECT p.name FROM @extschema@.binding b JOIN @extschema@.provider p USING (provider_id)
								    WHERE b.tbl = attach.tbl)),
				  HINT = 'Call shipsync.detach() first to attach it again.';
	END IF;
	PERFORM @extschema@._check_options(opts, ARRAY['cancel_when', 'validate', 'tracking_provider', 'pii', 'grace', 'created_at_column', 'adopt'], 'attach');
	adopt := @extschema@._check_adopt(opts, pid, tbl);
	PERFORM @extschema@._check_attach_options(opts, pid);
	PERFORM @extschema@._check_reconcile_options(opts, tbl);
	IF current_setting('server_encoding') NOT IN ('UTF8', 'SQL_ASCII') THEN
		RAISE EXCEPTION 'database encoding % cannot be sent as JSON', current_setting('server_encoding')
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Carriers read JSON as UTF-8, and requests are rendered in the database encoding.',
				  HINT = 'Keep the orders in a UTF8 database.';
	END IF;

	-- the key: given, or the single-column primary key
	IF keycol IS NULL THEN
		SELECT a.attname INTO keycol
		FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE i.indrelid = tbl AND i.indisprimary AND i.indnatts = 1;
		IF keycol IS NULL THEN
			RAISE EXCEPTION 'table % has no single-column primary key', tbl
				USING ERRCODE = 'invalid_table_definition',
					  HINT = 'Pass key_column => the column that identifies an order.';
		END IF;
	END IF;
	keytype := @extschema@._key_type(tbl, keycol);
	IF keytype IS NULL THEN
		RAISE EXCEPTION 'column "%" of table % does not exist', keycol, tbl
			USING ERRCODE = 'undefined_column',
				  HINT = 'Pass key_column => the column that identifies an order.';
	END IF;

	-- write-back: shipment field -> order column
	IF jsonb_typeof(wb) <> 'object' THEN
		RAISE EXCEPTION 'writeback must be a JSON object of shipment fields to column names'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example {"tracking_number": "waybill_no"}.';
	END IF;
	FOR f, col IN SELECT key, value #>> '{}' FROM jsonb_each(wb) LOOP
		IF f NOT IN ('tracking_number', 'status', 'provider_shipment_id', 'label_url', 'fee_total') THEN
			RAISE EXCEPTION 'unknown write-back field "%"', f
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'Write-back fields: tracking_number, status, provider_shipment_id, label_url, fee_total.';
		END IF;
		SELECT format_type(a.atttypid, a.atttypmod) INTO coltype
		FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
		IF coltype IS NULL THEN
			RAISE EXCEPTION 'write-back column "%" of table % does not exist', coalesce(col, ''), tbl
				USING ERRCODE = 'undefined_column',
					  HINT = 'Add the column first, or fix the writeback map.';
		END IF;
		IF col = keycol THEN
			RAISE EXCEPTION 'the key column "%" cannot be a write-back column', col
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Write shipment fields into columns of their own.';
		END IF;
		-- a string type, or for fee_total numeric too (an integer, a float
		-- or money would round or blur the amount without a word)
		SELECT t.typcategory, t.oid = 'pg_catalog.numeric'::pg_catalog.regtype,
			   -- a numeric's declared scale, the column's or its domain's
			   -- (typmod: precision << 16 | scale, 11 bits signed, + 4)
			   CASE WHEN tm.m >= 4 THEN (((tm.m - 4) & 2047) # 1024) - 1024 END
		INTO colcat, colnumeric, colscale
		FROM pg_attribute a JOIN pg_type t
			ON t.oid = coalesce(nullif(
				(SELECT typbasetype FROM pg_type WHERE oid = a.atttypid), 0), a.atttypid)
		CROSS JOIN LATERAL (SELECT CASE WHEN a.atttypmod >= 0 THEN a.atttypmod
				ELSE (SELECT d.typtypmod FROM pg_type d WHERE d.oid = a.atttypid) END) AS tm(m)
		WHERE a.attrelid = tbl AND a.attname = col;
		IF f = 'fee_total' AND colnumeric AND colscale < 2 THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = format('fee_total is an amount with decimals (12.50, 3.125): a numeric of scale %s would round it.', colscale),
					  HINT = 'Use a numeric column of at least two decimals, numeric without a scale, or a text column.';
		END IF;
		IF colcat <> 'S' AND NOT (f = 'fee_total' AND colnumeric) THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = CASE WHEN f = 'fee_total' THEN 'fee_total is an amount with decimals (12.50, 3.125): a column of this type would round it or lose its exact value.'
								   ELSE format('%s is text.', f) END,
					  HINT = CASE WHEN f = 'fee_total' THEN 'Use a numeric or text column.'
								 ELSE 'Use a text or varchar column.' END;
		END IF;
		-- no explicit cast: assignment rules apply, so a tracking number too
		-- long for a varchar(n) column fails loudly instead of being cut (a
		-- fee_total into a string column is its text, as written; into a
		-- numeric of scale s only when it has no more decimals than s, never
		-- rounded: _fee_totals() tickets the order whose total does not fit)
		sets := sets || CASE WHEN f = 'fee_total' AND colcat = 'S'
							 THEN format('%I = COALESCE(shipsync_u.%I::pg_catalog.text, t.%I)', col, f, col)
							 WHEN f = 'fee_total' AND colscale IS NOT NULL
							 THEN format('%1$I = COALESCE(CASE WHEN pg_catalog.round(shipsync_u.fee_total, %2$s)'
										 ' OPERATOR(pg_catalog.=) shipsync_u.fee_total THEN shipsync_u.fee_total END, t.%1$I)',
										 col, colscale)
							 ELSE format('%I = COALESCE(shipsync_u.%I, t.%I)', col, f, col) END;
		wbcols := wbcols || col;
	END LOOP;

	cancel_when := opts->>'cancel_when';
	IF cancel_when IS NOT NULL AND cancel_when ~ ';' THEN
		RAISE EXCEPTION 'option "cancel_when" must be one boolean expression'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example "status = ''cancelled''".';
	END IF;
	-- the restricted grammar, printed back with pg_catalog's operators:
	-- no function, operator or cast of the caller's is ever planned here
	IF cancel_when IS NOT NULL THEN
		cancel_when := @extschema@._cancel_when_sql(cancel_when);
	END IF;

	-- The row itself and its write-back columns: the dispatcher prints the
	-- request's body from the row (src/body.c: as json_build_object() and
	-- row_to_json() would, with the type lookups once a batch rather than
	-- once a column of every row) and keeps the row's digest
	-- (shipsync._row_digest), what reconciliation compares the order with
	-- later.  The row is t.*, never a bare t: a column named t would be
	-- taken instead.  Operators and types qualified: the dispatcher, render_request() and
	-- this function run these as the table's owner, each with a search_path
	-- of its own.  (unnest of several arrays is grammar: pg_catalog's.)
	render := format(
		'SELECT shipsync_u.shipsync_id, t.%1$I IS NOT NULL AS found,'
		' %4$s AS is_cancel, t.*::%2$s AS shipsync_row, %5$L::pg_catalog.text[] AS shipsync_skip'
		' FROM unnest($1::pg_catalog.int8[], $2::pg_catalog.text[])'
		' AS shipsync_u(shipsync_id, shipsync_key)'
		' LEFT JOIN %2$s AS t ON t.%1$I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%3$s',
		keycol, tbl, keytype,
		CASE WHEN cancel_when IS NULL THEN 'false'
			 ELSE format('COALESCE((%s), false)', cancel_when) END,
		ARRAY(SELECT c FROM unnest(wbcols) AS c ORDER BY 1));

	IF array_length(sets, 1) > 0 THEN
		wbsql := format(
			'UPDATE %s AS t SET %s'
			' FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.text[],'
			' $4::pg_catalog.text[], $5::pg_catalog.text[], $6::pg_catalog.numeric[])'
			' AS shipsync_u(shipsync_key, provider_shipment_id, tracking_number, status, label_url, fee_total)'
			' WHERE t.%I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%s',
			tbl, array_to_string(sets, ', '), keycol, keytype);
	END IF;

	-- prove both statements against the table now, not in the dispatcher,
	-- and with the rights the dispatcher will have: the table owner's
	BEGIN
		PERFORM @extschema@._explain_as_owner(tbl, render, '{int8[], text[]}');
		IF wbsql IS NOT NULL THEN
			PERFORM @extschema@._explain_as_owner(tbl, wbsql,
				'{text[], text[], text[], text[], text[], numeric[]}');
		END IF;
	EXCEPTION
		-- row security forced on the owner: its own error says what to do
		WHEN object_not_in_prerequisite_state THEN
			RAISE;
		WHEN OTHERS THEN
			RAISE EXCEPTION 'cannot attach table %: %', tbl, SQLERRM
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Check option cancel_when and the writeback columns'' types.';
	END;

	SELECT x.writeback INTO oldwb FROM @extschema@.binding x WHERE x.tbl = attach.tbl;
	INSERT INTO @extschema@.binding AS b (tbl, provider_id, key_column, writeback, options, render_sql, writeback_sql)
	VALUES (attach.tbl, pid, keycol, wb, opts, render, wbsql)
	ON CONFLICT ON CONSTRAINT binding_tbl_key DO UPDATE
	   SET provider_id = EXCLUDED.provider_id, key_column = EXCLUDED.key_column,
		   writeback = EXCLUDED.writeback, options = EXCLUDED.options,
		   render_sql = EXCLUDED.render_sql, writeback_sql = EXCLUDED.writeback_sql,
		   active = true, created_at = now(), created_by = session_user
	RETURNING b.binding_id INTO bid;

	-- the table replaces the one of binding adopt: what pg_shipsync knows
	-- of its orders (shipments, intents, events, fees, tickets) is this
	-- binding's now, so an order shipped before is updated, not created
	-- again.  Otherwise, a binding of this provider with shipments whose
	-- table is gone is said: were this table its successor, every update
	-- of an order shipped before would ship it again.
	IF adopt IS NOT NULL THEN
		UPDATE @extschema@.shipment x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.outbox x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.inbox x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.tracking_event x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_line x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_sum x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_pull x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.exception_ticket x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.binding x SET options = x.options || jsonb_build_object('adopted_by', bid)
		 WHERE x.binding_id = adopt;
	ELSE
		FOR gone IN
			SELECT b.binding_id, b.tbl::oid AS relid
			FROM @extschema@.binding b
			WHERE b.provider_id = pid AND NOT b.active AND b.binding_id <> bid
			  AND NOT b.options ? 'adopted_by'
			  AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = b.tbl)
			  AND EXISTS (SELECT 1 FROM @extschema@.shipment x WHERE x.binding_id = b.binding_id)
		LOOP
			RAISE WARNING 'binding % of provider "%" has shipments, and its table (oid %) is gone',
				gone.binding_id, provider, gone.relid
				USING DETAIL = format('Table %s is binding %s: an update of an order shipped under binding %s would be sent as a create.',
									  tbl, bid, gone.binding_id),
					  HINT = format('If %s replaces that table, detach it and attach it again with options {"adopt": %s}.',
									tbl, gone.binding_id);
		END LOOP;
	END IF;

	-- attached again with other write-back columns: the digests of the
	-- orders shipped (shipment.content_digest) left the old ones out, and
	-- every order whose old column holds a value would read as changed
	-- since it was sent (address_changed_after_send).  The digest of an
	-- order unchanged since is made again without the new columns; an
	-- order changed since keeps its digest, and is still told.  The rows
	-- are read as the table's owner, as reconciliation reads them.
	oldskip := ARRAY(SELECT w.value #>> '{}' FROM jsonb_each(oldwb) w ORDER BY 1);
	newskip := ARRAY(SELECT c FROM unnest(wbcols) AS c ORDER BY 1);
	IF oldwb IS NOT NULL AND oldskip IS DISTINCT FROM newskip
	   AND EXISTS (SELECT 1 FROM @extschema@.shipment x
				   WHERE x.binding_id = bid AND x.content_digest IS NOT NULL) THEN
		EXECUTE format($d$
			UPDATE @extschema@.shipment s
			   SET content_digest = @extschema@._row_digest(t.r, $2)
			  FROM @extschema@._select_as_owner($1, $4, NULL, NULL) AS t(k text COLLATE "C", r %s)
			 WHERE s.binding_id = $5 AND s.order_key = t.k
			   AND s.content_digest = @extschema@._row_digest(t.r, $3)$d$, tbl)
		USING tbl, newskip, oldskip,
			  format('SELECT t.%I::pg_catalog.text, t.*::%s FROM %s t', keycol, tbl, tbl), bid;
	END IF;

	trigargs := array_to_string(ARRAY(SELECT quote_literal(x)
		FROM unnest(ARRAY[bid::text, pid::text, keycol::text] || wbcols) x), ', ');
	EXECUTE format('CREATE TRIGGER shipsync_capture AFTER INSERT OR UPDATE OR DELETE ON %s'
				   ' FOR EACH ROW EXECUTE FUNCTION @extschema@.capture(%s)', tbl, trigargs);
	IF opts->>'validate' = 'reject' THEN
		EXECUTE format('CREATE TRIGGER shipsync_validate AFTER INSERT OR UPDATE ON %s'
					   ' FOR EACH ROW EXECUTE FUNCTION @extschema@._validate(%L)', tbl, bid);
	END IF;
	-- no dispatcher serves this database: its orders would be captured and
	-- wait, with nothing in the log to say why.  An empty list (nothing is
	-- served anywhere) is taken as meant.  (col, free again: the list.)
	col := coalesce(pg_catalog.current_setting('shipsync.databases', true), '');
	IF pg_catalog.btrim(col) <> ''
	   AND NOT pg_catalog.current_database() = ANY (ARRAY(
			SELECT pg_catalog.btrim(pg_catalog.btrim(x), '"')
			  FROM pg_catalog.regexp_split_to_table(col, ',') AS x)) THEN
		RAISE WARNING 'database "%" is not in shipsync.databases', pg_catalog.current_database()
			USING DETAIL = format('Its orders are captured, and none is sent until a dispatcher serves it (shipsync.databases is %L).', col),
				  HINT = format('ALTER SYSTEM SET shipsync.databases = %L; SELECT pg_reload_conf();',
								col || ', ' || quote_ident(pg_catalog.current_database()));
	END IF;
	PERFORM @extschema@._wake(true);
	RETURN bid;
END
$$;
ALTER FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) SET shipsync.audit_action = 'attach';

------------------------------------------------------------------------------
-- attach() reads shipsync.databases as the launcher reads it
------------------------------------------------------------------------------
-- It split the list at every comma: a database named a,b, listed as "a,b"
-- and served, was warned as not served.  One parse now, the launcher's
-- (SplitGUCList()), through _database_listed().
CREATE FUNCTION @extschema@._database_listed()
RETURNS boolean
AS 'MODULE_PATHNAME', 'shipsync_database_listed'
LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@._database_listed() IS
	'Internal (attach()): whether the current database is in shipsync.databases, read as the launcher reads it (a name in double quotes may hold commas and quotes); null when the list is not valid.';
REVOKE ALL ON FUNCTION @extschema@._database_listed() FROM PUBLIC;
CREATE OR REPLACE FUNCTION @extschema@.attach(tbl regclass, provider text, key_column name DEFAULT NULL,
								   writeback jsonb DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pid integer;
	bid integer;
	keycol name := key_column;
	keytype text;
	wb jsonb := coalesce(writeback, '{}');
	opts jsonb := coalesce(options, '{}');
	f text;
	col text;
	coltype text;
	colcat "char";
	colnumeric boolean;
	colscale integer;
	sets text[] := '{}';
	wbcols text[] := '{}';
	render text;
	wbsql text;
	cancel_when text;
	trigargs text;
	relkind "char";
	adopt integer;
	gone record;
	oldwb jsonb;
	oldskip text[];
	newskip text[];
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.relkind INTO relkind FROM pg_class c WHERE c.oid = tbl;
	IF relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '"%" is not a table', tbl
			USING ERRCODE = 'wrong_object_type',
				  HINT = 'Attach an ordinary or partitioned table.';
	END IF;
	IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'The dispatcher reads and writes the table with its owner''s rights.';
	END IF;
	SELECT p.provider_id INTO pid FROM @extschema@.provider p WHERE p.name = attach.provider;
	IF pid IS NULL THEN
		RAISE EXCEPTION 'provider "%" does not exist', coalesce(provider, '')
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it first with shipsync.create_provider().';
	END IF;
	-- the lock CREATE TRIGGER takes below, taken before the check: a second
	-- attach() of the table waits here for the first, then sees its binding
	-- (each statement reads what was committed before it) and says so,
	-- rather than failing on the first one's trigger
	EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', tbl);
	IF EXISTS (SELECT 1 FROM @extschema@.binding b WHERE b.tbl = attach.tbl AND b.active) THEN
		RAISE EXCEPTION 'table % is already attached', tbl
			USING ERRCODE = 'duplicate_object',
				  DETAIL = format('Binding %s captures its orders for provider "%s".',
								  (SELECT b.binding_id FROM @extschema@.binding b WHERE b.tbl = attach.tbl),
								  (SELECT p.name FROM @extschema@.binding b JOIN @extschema@.provider p USING (provider_id)
								    WHERE b.tbl = attach.tbl)),
				  HINT = 'Call shipsync.detach() first to attach it again.';
	END IF;
	PERFORM @extschema@._check_options(opts, ARRAY['cancel_when', 'validate', 'tracking_provider', 'pii', 'grace', 'created_at_column', 'adopt'], 'attach');
	adopt := @extschema@._check_adopt(opts, pid, tbl);
	PERFORM @extschema@._check_attach_options(opts, pid);
	PERFORM @extschema@._check_reconcile_options(opts, tbl);
	IF current_setting('server_encoding') NOT IN ('UTF8', 'SQL_ASCII') THEN
		RAISE EXCEPTION 'database encoding % cannot be sent as JSON', current_setting('server_encoding')
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Carriers read JSON as UTF-8, and requests are rendered in the database encoding.',
				  HINT = 'Keep the orders in a UTF8 database.';
	END IF;

	-- the key: given, or the single-column primary key
	IF keycol IS NULL THEN
		SELECT a.attname INTO keycol
		FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE i.indrelid = tbl AND i.indisprimary AND i.indnatts = 1;
		IF keycol IS NULL THEN
			RAISE EXCEPTION 'table % has no single-column primary key', tbl
				USING ERRCODE = 'invalid_table_definition',
					  HINT = 'Pass key_column => the column that identifies an order.';
		END IF;
	END IF;
	keytype := @extschema@._key_type(tbl, keycol);
	IF keytype IS NULL THEN
		RAISE EXCEPTION 'column "%" of table % does not exist', keycol, tbl
			USING ERRCODE = 'undefined_column',
				  HINT = 'Pass key_column => the column that identifies an order.';
	END IF;

	-- write-back: shipment field -> order column
	IF jsonb_typeof(wb) <> 'object' THEN
		RAISE EXCEPTION 'writeback must be a JSON object of shipment fields to column names'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example {"tracking_number": "waybill_no"}.';
	END IF;
	FOR f, col IN SELECT key, value #>> '{}' FROM jsonb_each(wb) LOOP
		IF f NOT IN ('tracking_number', 'status', 'provider_shipment_id', 'label_url', 'fee_total') THEN
			RAISE EXCEPTION 'unknown write-back field "%"', f
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'Write-back fields: tracking_number, status, provider_shipment_id, label_url, fee_total.';
		END IF;
		SELECT format_type(a.atttypid, a.atttypmod) INTO coltype
		FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
		IF coltype IS NULL THEN
			RAISE EXCEPTION 'write-back column "%" of table % does not exist', coalesce(col, ''), tbl
				USING ERRCODE = 'undefined_column',
					  HINT = 'Add the column first, or fix the writeback map.';
		END IF;
		IF col = keycol THEN
			RAISE EXCEPTION 'the key column "%" cannot be a write-back column', col
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Write shipment fields into columns of their own.';
		END IF;
		-- a string type, or for fee_total numeric too (an integer, a float
		-- or money would round or blur the amount without a word)
		SELECT t.typcategory, t.oid = 'pg_catalog.numeric'::pg_catalog.regtype,
			   -- a numeric's declared scale, the column's or its domain's
			   -- (typmod: precision << 16 | scale, 11 bits signed, + 4)
			   CASE WHEN tm.m >= 4 THEN (((tm.m - 4) & 2047) # 1024) - 1024 END
		INTO colcat, colnumeric, colscale
		FROM pg_attribute a JOIN pg_type t
			ON t.oid = coalesce(nullif(
				(SELECT typbasetype FROM pg_type WHERE oid = a.atttypid), 0), a.atttypid)
		CROSS JOIN LATERAL (SELECT CASE WHEN a.atttypmod >= 0 THEN a.atttypmod
				ELSE (SELECT d.typtypmod FROM pg_type d WHERE d.oid = a.atttypid) END) AS tm(m)
		WHERE a.attrelid = tbl AND a.attname = col;
		IF f = 'fee_total' AND colnumeric AND colscale < 2 THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = format('fee_total is an amount with decimals (12.50, 3.125): a numeric of scale %s would round it.', colscale),
					  HINT = 'Use a numeric column of at least two decimals, numeric without a scale, or a text column.';
		END IF;
		IF colcat <> 'S' AND NOT (f = 'fee_total' AND colnumeric) THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = CASE WHEN f = 'fee_total' THEN 'fee_total is an amount with decimals (12.50, 3.125): a column of this type would round it or lose its exact value.'
								   ELSE format('%s is text.', f) END,
					  HINT = CASE WHEN f = 'fee_total' THEN 'Use a numeric or text column.'
								 ELSE 'Use a text or varchar column.' END;
		END IF;
		-- no explicit cast: assignment rules apply, so a tracking number too
		-- long for a varchar(n) column fails loudly instead of being cut (a
		-- fee_total into a string column is its text, as written; into a
		-- numeric of scale s only when it has no more decimals than s, never
		-- rounded: _fee_totals() tickets the order whose total does not fit)
		sets := sets || CASE WHEN f = 'fee_total' AND colcat = 'S'
							 THEN format('%I = COALESCE(shipsync_u.%I::pg_catalog.text, t.%I)', col, f, col)
							 WHEN f = 'fee_total' AND colscale IS NOT NULL
							 THEN format('%1$I = COALESCE(CASE WHEN pg_catalog.round(shipsync_u.fee_total, %2$s)'
										 ' OPERATOR(pg_catalog.=) shipsync_u.fee_total THEN shipsync_u.fee_total END, t.%1$I)',
										 col, colscale)
							 ELSE format('%I = COALESCE(shipsync_u.%I, t.%I)', col, f, col) END;
		wbcols := wbcols || col;
	END LOOP;

	cancel_when := opts->>'cancel_when';
	IF cancel_when IS NOT NULL AND cancel_when ~ ';' THEN
		RAISE EXCEPTION 'option "cancel_when" must be one boolean expression'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example "status = ''cancelled''".';
	END IF;
	-- the restricted grammar, printed back with pg_catalog's operators:
	-- no function, operator or cast of the caller's is ever planned here
	IF cancel_when IS NOT NULL THEN
		cancel_when := @extschema@._cancel_when_sql(cancel_when);
	END IF;

	-- The row itself and its write-back columns: the dispatcher prints the
	-- request's body from the row (src/body.c: as json_build_object() and
	-- row_to_json() would, with the type lookups once a batch rather than
	-- once a column of every row) and keeps the row's digest
	-- (shipsync._row_digest), what reconciliation compares the order with
	-- later.  The row is t.*, never a bare t: a column named t would be
	-- taken instead.  Operators and types qualified: the dispatcher, render_request() and
	-- this function run these as the table's owner, each with a search_path
	-- of its own.  (unnest of several arrays is grammar: pg_catalog's.)
	render := format(
		'SELECT shipsync_u.shipsync_id, t.%1$I IS NOT NULL AS found,'
		' %4$s AS is_cancel, t.*::%2$s AS shipsync_row, %5$L::pg_catalog.text[] AS shipsync_skip'
		' FROM unnest($1::pg_catalog.int8[], $2::pg_catalog.text[])'
		' AS shipsync_u(shipsync_id, shipsync_key)'
		' LEFT JOIN %2$s AS t ON t.%1$I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%3$s',
		keycol, tbl, keytype,
		CASE WHEN cancel_when IS NULL THEN 'false'
			 ELSE format('COALESCE((%s), false)', cancel_when) END,
		ARRAY(SELECT c FROM unnest(wbcols) AS c ORDER BY 1));

	IF array_length(sets, 1) > 0 THEN
		wbsql := format(
			'UPDATE %s AS t SET %s'
			' FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.text[],'
			' $4::pg_catalog.text[], $5::pg_catalog.text[], $6::pg_catalog.numeric[])'
			' AS shipsync_u(shipsync_key, provider_shipment_id, tracking_number, status, label_url, fee_total)'
			' WHERE t.%I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%s',
			tbl, array_to_string(sets, ', '), keycol, keytype);
	END IF;

	-- prove both statements against the table now, not in the dispatcher,
	-- and with the rights the dispatcher will have: the table owner's
	BEGIN
		PERFORM @extschema@._explain_as_owner(tbl, render, '{int8[], text[]}');
		IF wbsql IS NOT NULL THEN
			PERFORM @extschema@._explain_as_owner(tbl, wbsql,
				'{text[], text[], text[], text[], text[], numeric[]}');
		END IF;
	EXCEPTION
		-- row security forced on the owner: its own error says what to do
		WHEN object_not_in_prerequisite_state THEN
			RAISE;
		WHEN OTHERS THEN
			RAISE EXCEPTION 'cannot attach table %: %', tbl, SQLERRM
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Check option cancel_when and the writeback columns'' types.';
	END;

	SELECT x.writeback INTO oldwb FROM @extschema@.binding x WHERE x.tbl = attach.tbl;
	INSERT INTO @extschema@.binding AS b (tbl, provider_id, key_column, writeback, options, render_sql, writeback_sql)
	VALUES (attach.tbl, pid, keycol, wb, opts, render, wbsql)
	ON CONFLICT ON CONSTRAINT binding_tbl_key DO UPDATE
	   SET provider_id = EXCLUDED.provider_id, key_column = EXCLUDED.key_column,
		   writeback = EXCLUDED.writeback, options = EXCLUDED.options,
		   render_sql = EXCLUDED.render_sql, writeback_sql = EXCLUDED.writeback_sql,
		   active = true, created_at = now(), created_by = session_user
	RETURNING b.binding_id INTO bid;

	-- the table replaces the one of binding adopt: what pg_shipsync knows
	-- of its orders (shipments, intents, events, fees, tickets) is this
	-- binding's now, so an order shipped before is updated, not created
	-- again.  Otherwise, a binding of this provider with shipments whose
	-- table is gone is said: were this table its successor, every update
	-- of an order shipped before would ship it again.
	IF adopt IS NOT NULL THEN
		UPDATE @extschema@.shipment x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.outbox x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.inbox x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.tracking_event x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_line x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_sum x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_pull x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.exception_ticket x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.binding x SET options = x.options || jsonb_build_object('adopted_by', bid)
		 WHERE x.binding_id = adopt;
	ELSE
		FOR gone IN
			SELECT b.binding_id, b.tbl::oid AS relid
			FROM @extschema@.binding b
			WHERE b.provider_id = pid AND NOT b.active AND b.binding_id <> bid
			  AND NOT b.options ? 'adopted_by'
			  AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = b.tbl)
			  AND EXISTS (SELECT 1 FROM @extschema@.shipment x WHERE x.binding_id = b.binding_id)
		LOOP
			RAISE WARNING 'binding % of provider "%" has shipments, and its table (oid %) is gone',
				gone.binding_id, provider, gone.relid
				USING DETAIL = format('Table %s is binding %s: an update of an order shipped under binding %s would be sent as a create.',
									  tbl, bid, gone.binding_id),
					  HINT = format('If %s replaces that table, detach it and attach it again with options {"adopt": %s}.',
									tbl, gone.binding_id);
		END LOOP;
	END IF;

	-- attached again with other write-back columns: the digests of the
	-- orders shipped (shipment.content_digest) left the old ones out, and
	-- every order whose old column holds a value would read as changed
	-- since it was sent (address_changed_after_send).  The digest of an
	-- order unchanged since is made again without the new columns; an
	-- order changed since keeps its digest, and is still told.  The rows
	-- are read as the table's owner, as reconciliation reads them.
	oldskip := ARRAY(SELECT w.value #>> '{}' FROM jsonb_each(oldwb) w ORDER BY 1);
	newskip := ARRAY(SELECT c FROM unnest(wbcols) AS c ORDER BY 1);
	IF oldwb IS NOT NULL AND oldskip IS DISTINCT FROM newskip
	   AND EXISTS (SELECT 1 FROM @extschema@.shipment x
				   WHERE x.binding_id = bid AND x.content_digest IS NOT NULL) THEN
		EXECUTE format($d$
			UPDATE @extschema@.shipment s
			   SET content_digest = @extschema@._row_digest(t.r, $2)
			  FROM @extschema@._select_as_owner($1, $4, NULL, NULL) AS t(k text COLLATE "C", r %s)
			 WHERE s.binding_id = $5 AND s.order_key = t.k
			   AND s.content_digest = @extschema@._row_digest(t.r, $3)$d$, tbl)
		USING tbl, newskip, oldskip,
			  format('SELECT t.%I::pg_catalog.text, t.*::%s FROM %s t', keycol, tbl, tbl), bid;
	END IF;

	trigargs := array_to_string(ARRAY(SELECT quote_literal(x)
		FROM unnest(ARRAY[bid::text, pid::text, keycol::text] || wbcols) x), ', ');
	EXECUTE format('CREATE TRIGGER shipsync_capture AFTER INSERT OR UPDATE OR DELETE ON %s'
				   ' FOR EACH ROW EXECUTE FUNCTION @extschema@.capture(%s)', tbl, trigargs);
	IF opts->>'validate' = 'reject' THEN
		EXECUTE format('CREATE TRIGGER shipsync_validate AFTER INSERT OR UPDATE ON %s'
					   ' FOR EACH ROW EXECUTE FUNCTION @extschema@._validate(%L)', tbl, bid);
	END IF;
	-- no dispatcher serves this database: its orders would be captured and
	-- wait, with nothing in the log to say why.  An empty list (nothing is
	-- served anywhere) is taken as meant.  The list read as the launcher
	-- reads it (a quoted name may hold a comma).  (col, free again: the list.)
	col := coalesce(pg_catalog.current_setting('shipsync.databases', true), '');
	IF pg_catalog.btrim(col) <> '' AND NOT coalesce(@extschema@._database_listed(), false) THEN
		RAISE WARNING 'database "%" is not in shipsync.databases', pg_catalog.current_database()
			USING DETAIL = CASE WHEN @extschema@._database_listed() IS NULL
							   THEN format('Its orders are captured, and none is sent: shipsync.databases (%L) is not a valid list, and no database is served.', col)
							   ELSE format('Its orders are captured, and none is sent until a dispatcher serves it (shipsync.databases is %L).', col) END,
				  HINT = format('ALTER SYSTEM SET shipsync.databases = %L; SELECT pg_reload_conf();',
								col || ', ' || quote_ident(pg_catalog.current_database()));
	END IF;
	PERFORM @extschema@._wake(true);
	RETURN bid;
END
$$;
ALTER FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) SET shipsync.audit_action = 'attach';

------------------------------------------------------------------------------
-- SF child and return waybills billed: the order's fee lines
------------------------------------------------------------------------------
-- A bill line for a piece of a multi-piece shipment (shipment.waybills) was
-- parked as an unknown waybill; it is matched to the piece's order.
CREATE OR REPLACE FUNCTION @extschema@._match_parked_fees(pids integer[], tns text[],
	OUT n bigint, OUT tb integer[], OUT tk text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	WITH want AS (
		SELECT DISTINCT f.provider_id, f.tracking_number
		FROM unnest(pids, tns) AS u(pid, tn)
		JOIN @extschema@.fee_line f ON f.binding_id IS NULL AND f.provider_id = u.pid
		 AND f.tracking_number = u.tn),
	main AS (
		SELECT DISTINCT ON (s.provider_id, s.tracking_number) s.provider_id, s.tracking_number,
			   s.binding_id, s.order_key
		FROM @extschema@.shipment s JOIN want w USING (provider_id, tracking_number)
		ORDER BY s.provider_id, s.tracking_number, s.created_at DESC),
	-- or another waybill of a multi-piece shipment (SF: child, return):
	-- its fee is the order's (each looked up through the waybills' index)
	ship AS (
		SELECT main.* FROM main
		UNION ALL
		SELECT w.provider_id, w.tracking_number, p.binding_id, p.order_key
		FROM want w
		CROSS JOIN LATERAL (
			SELECT s.binding_id, s.order_key FROM @extschema@.shipment s
			WHERE s.waybills @> jsonb_build_array(jsonb_build_object('waybillNo', w.tracking_number))
			  AND s.waybills IS NOT NULL AND s.provider_id = w.provider_id
			ORDER BY s.created_at DESC
			LIMIT 1) p
		WHERE NOT EXISTS (SELECT 1 FROM main
						  WHERE main.provider_id = w.provider_id
							AND main.tracking_number = w.tracking_number)),
	m AS (
		UPDATE @extschema@.fee_line f SET binding_id = ship.binding_id, order_key = ship.order_key
		  FROM ship
		 WHERE f.binding_id IS NULL AND f.provider_id = ship.provider_id
		   AND f.tracking_number = ship.tracking_number
		RETURNING f.binding_id, f.order_key)
	SELECT count(*), coalesce(array_agg(m.binding_id), '{}'), coalesce(array_agg(m.order_key), '{}')
	INTO n, tb, tk FROM m;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._store_fees(src text, stmt bigint, replaces bigint, who text,
	pids integer[], bids integer[], oks text[], tns text[], codes text[], amounts numeric[],
	currencies text[], fkeys text[], settlements text[], payers text[], weights numeric[],
	states text[], ats timestamptz[], held text[] DEFAULT NULL)
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	n_in bigint := coalesce(array_length(tns, 1), 0);
	n_new bigint;
	n_rev bigint;
	n_park bigint;
	n_matched bigint := 0;
	n_withdrawn bigint := 0;
	twice text;
	tb integer[];
	tk text[];
BEGIN
	PERFORM @extschema@._lock_fees(pids, tns, src = 'statement');

	SELECT m.n, m.tb, m.tk INTO n_matched, tb, tk
	FROM @extschema@._match_parked_fees(pids, tns) m;

	WITH inc AS (
		SELECT u.ord, u.pid, u.bid, u.ok, u.tn, u.code, u.amount, u.cur, u.fkey, u.settle,
			   u.payer, u.weight, u.st, u.at,
			   coalesce(tm.fee_type, ft.name, 'other') AS fee_type
		FROM unnest(pids, bids, oks, tns, codes, amounts, currencies, fkeys, settlements, payers,
					weights, states, ats)
			 WITH ORDINALITY AS u(pid, bid, ok, tn, code, amount, cur, fkey, settle, payer,
								  weight, st, at, ord)
		JOIN @extschema@.provider p ON p.provider_id = u.pid
		LEFT JOIN @extschema@.fee_type_map tm
			   ON tm.profile = coalesce(p.options->>'profile', p.dialect) AND tm.code = u.code
		LEFT JOIN @extschema@.fee_type ft ON ft.name = lower(u.code)),
	-- a line without a key of the carrier: the first of its type in this
	-- notice has key '', the next '#2', ...; the same line twice: the last.
	-- Grouped and sorted bytewise (COLLATE "C"): the groups are the same
	-- under any deterministic collation, and a statement sorts 100,000
	-- lines here twice, where strcoll() cost more than the rest of the sort
	keyed AS (
		SELECT DISTINCT ON (y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C") y.*
		FROM (SELECT inc.*,
					 CASE WHEN inc.fkey IS NOT NULL THEN inc.fkey
						  WHEN row_number() OVER w = 1 THEN ''
						  ELSE '#' || row_number() OVER w END AS k
			  FROM inc
			  WINDOW w AS (PARTITION BY inc.pid, inc.tn COLLATE "C", inc.fee_type COLLATE "C", inc.fkey IS NULL
						   ORDER BY inc.ord)) y
		ORDER BY y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C", y.ord DESC),
	-- a statement billing one carrier's line (its key) twice: refused
	-- below, since keyed keeps one of them and the statement's total
	-- counts both (a push sending a line again is the same line again)
	dup AS (
		SELECT pg_catalog.format('Waybill %s, fee type %s, key %s: %s lines, of %s.', i.tn, i.fee_type,
					pg_catalog.quote_literal(i.fkey), count(*),
					string_agg(i.amount::text || ' ' || coalesce(i.cur, ''), ', ' ORDER BY i.ord)) AS msg
		FROM inc i
		WHERE src = 'statement' AND i.fkey IS NOT NULL
		GROUP BY i.pid, i.tn, i.fee_type, i.fkey
		HAVING count(*) > 1
		LIMIT 1),
	main AS (
		SELECT DISTINCT ON (s.provider_id, s.tracking_number) s.provider_id, s.tracking_number,
			   s.binding_id, s.order_key
		FROM @extschema@.shipment s
		WHERE (s.provider_id, s.tracking_number) IN
			  (SELECT keyed.pid, keyed.tn FROM keyed WHERE keyed.bid IS NULL)
		ORDER BY s.provider_id, s.tracking_number, s.created_at DESC),
	-- a waybill no shipment has as its tracking number may be another
	-- waybill of a multi-piece shipment (SF: child, return): its fee is the
	-- order's, the line keeping the piece's number (each looked up through
	-- the waybills' index on its own)
	ship AS (
		SELECT main.* FROM main
		UNION ALL
		SELECT t.pid, t.tn, p.binding_id, p.order_key
		FROM (SELECT DISTINCT keyed.pid, keyed.tn FROM keyed
			  WHERE keyed.bid IS NULL
				AND NOT EXISTS (SELECT 1 FROM main
								WHERE main.provider_id = keyed.pid AND main.tracking_number = keyed.tn)) t
		CROSS JOIN LATERAL (
			SELECT s.binding_id, s.order_key FROM @extschema@.shipment s
			WHERE s.waybills @> jsonb_build_array(jsonb_build_object('waybillNo', t.tn))
			  AND s.waybills IS NOT NULL AND s.provider_id = t.pid
			ORDER BY s.created_at DESC
			LIMIT 1) p),
	-- each line's order: the caller's, else the newest shipment's of its
	-- waybill (a recycled number is the new parcel's), else none (parked);
	-- part of the line's identity
	kt AS (
		SELECT k.*, coalesce(k.bid, ship.binding_id) AS tb, coalesce(k.ok, ship.order_key) AS tok
		FROM keyed k
		LEFT JOIN ship ON ship.provider_id = k.pid AND ship.tracking_number = k.tn),
	up AS (
		INSERT INTO @extschema@.fee_line AS f (provider_id, tracking_number, fee_type, fee_key,
			quote, binding_id, order_key, raw_type, amount, currency, settlement, payer,
			billed_weight_kg, state, source, statement_id, occurred_at, recorded_by)
		SELECT k.pid, k.tn, k.fee_type, k.k, src = 'create', k.tb, k.tok,
			   k.code, k.amount, k.cur, k.settle, k.payer, k.weight,
			   coalesce(k.st, CASE WHEN src = 'create' THEN 'estimated' ELSE 'charged' END),
			   src, stmt, k.at, who
		FROM kt k
		ORDER BY k.ord
		ON CONFLICT ON CONSTRAINT fee_line_identity DO UPDATE SET
			raw_type = EXCLUDED.raw_type, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
			settlement = coalesce(EXCLUDED.settlement, f.settlement),
			payer = coalesce(EXCLUDED.payer, f.payer),
			billed_weight_kg = coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg),
			state = EXCLUDED.state, source = EXCLUDED.source, statement_id = EXCLUDED.statement_id,
			occurred_at = coalesce(EXCLUDED.occurred_at, f.occurred_at),
			recorded_by = EXCLUDED.recorded_by, withdrawn = false,
			binding_id = coalesce(f.binding_id, EXCLUDED.binding_id),
			order_key = coalesce(f.order_key, EXCLUDED.order_key)
		-- a change, not older than what the line says now, and, but from
		-- a statement, not a notice seen before (a late duplicate of a
		-- revised line); own below takes, for statements, the lines they
		-- bill as they are
		WHERE (f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
			  IS DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency, EXCLUDED.state,
								coalesce(EXCLUDED.settlement, f.settlement),
								coalesce(EXCLUDED.payer, f.payer),
								coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg))
		  AND (EXCLUDED.occurred_at IS NULL OR f.occurred_at IS NULL
			   OR EXCLUDED.occurred_at >= f.occurred_at)
		  AND (src = 'statement'
			   OR NOT EXISTS (SELECT 1 FROM @extschema@.fee_line_history h
							  WHERE h.fee_line_id = f.fee_line_id
								AND (h.amount, h.currency, h.state, h.occurred_at)
									IS NOT DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency,
														  EXCLUDED.state, EXCLUDED.occurred_at)))
		RETURNING f.xmax = 0 AS inserted, f.binding_id, f.order_key),
	-- a statement's lines it bills as they are: its own from now on (no
	-- revision: nothing they say changes), so that a later correction
	-- withdraws them and "does the statement add up?" counts them.  After
	-- up has run to its end (the one-time filter reads all of it): up
	-- meeting a row own had changed in this command would be an error.
	-- Not a line the current statement of another month (or account)
	-- bills: that one bills it still, and this one listing it again is
	-- what "does it add up?" should show
	own AS (
		UPDATE @extschema@.fee_line f SET statement_id = stmt, withdrawn = false
		  FROM kt k
		 WHERE (SELECT count(*) FROM up) >= 0
		   AND src = 'statement' AND f.provider_id = k.pid AND f.tracking_number = k.tn
		   AND f.fee_type = k.fee_type AND f.fee_key = k.k AND NOT f.quote
		   AND f.binding_id IS NOT DISTINCT FROM k.tb AND f.order_key IS NOT DISTINCT FROM k.tok
		   AND f.statement_id IS DISTINCT FROM stmt
		   AND (f.statement_id IS NULL
				OR f.statement_id NOT IN (SELECT e.statement_id
										  FROM @extschema@.statement e
										  JOIN @extschema@.statement c ON c.statement_id = stmt
										  WHERE e.provider_id = c.provider_id AND e.superseded_by IS NULL
											AND (e.period, e.account) IS DISTINCT FROM (c.period, c.account)))
		   -- (what it says: a line older than the line's current version,
		   -- which up left as it was, is not the statement's)
		   AND NOT (f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
				   IS DISTINCT FROM (k.amount, k.cur, coalesce(k.st, 'charged'),
									 coalesce(k.settle, f.settlement),
									 coalesce(k.payer, f.payer),
									 coalesce(k.weight, f.billed_weight_kg))
		RETURNING f.fee_line_id, f.binding_id, f.order_key),
	-- of those, the lines a correction had withdrawn: billed again, so
	-- their orders' totals change (fee_line read here is as it was before)
	back AS (
		SELECT own.binding_id, own.order_key FROM own
		JOIN @extschema@.fee_line x ON x.fee_line_id = own.fee_line_id
		WHERE x.withdrawn AND own.binding_id IS NOT NULL),
	-- a corrected statement: what an earlier statement of its period and
	-- account billed and this one does not (neither among its lines nor,
	-- held, among those it skipped) is withdrawn (0, adjusted), or, when
	-- the current statement of another month or account billed it before
	-- (the carrier listed it in both), goes back to what that one says
	wd AS (
		UPDATE @extschema@.fee_line f
		   SET (amount, currency, state, statement_id, withdrawn) =
			   (SELECT coalesce(b.amount, 0), coalesce(b.currency, f.currency),
					   coalesce(b.state, 'adjusted'), coalesce(b.statement_id, stmt),
					   coalesce(b.withdrawn, true)
				FROM (SELECT 1) one
				LEFT JOIN (SELECT h.amount, h.currency, h.state, h.statement_id, h.withdrawn
						   FROM @extschema@.fee_line_history h
						   JOIN @extschema@.statement e ON e.statement_id = h.statement_id
						   JOIN @extschema@.statement c ON c.statement_id = stmt
						   WHERE h.fee_line_id = f.fee_line_id AND e.superseded_by IS NULL
							 AND (e.period, e.account) IS DISTINCT FROM (c.period, c.account)
						   ORDER BY h.revision DESC LIMIT 1) b ON true),
			   source = 'statement', recorded_by = who
		 WHERE replaces IS NOT NULL AND NOT f.quote
		   AND f.statement_id IN (SELECT e.statement_id
								  FROM @extschema@.statement e
								  JOIN @extschema@.statement c ON c.statement_id = stmt
								  WHERE e.provider_id = c.provider_id AND e.period = c.period
									AND e.account IS NOT DISTINCT FROM c.account
									AND e.statement_id <> stmt)
		   AND NOT f.withdrawn
		   AND NOT EXISTS (SELECT 1 FROM kt k
						   WHERE k.pid = f.provider_id AND k.tn = f.tracking_number
							 AND k.fee_type = f.fee_type AND k.k = f.fee_key
							 AND k.tb IS NOT DISTINCT FROM f.binding_id
							 AND k.tok IS NOT DISTINCT FROM f.order_key)
		   AND (held IS NULL OR (array_position(held, NULL) IS NULL
								 AND f.tracking_number <> ALL (held)))
		RETURNING f.binding_id, f.order_key)
	SELECT (SELECT dup.msg FROM dup), (SELECT count(*) FROM up WHERE up.inserted),
		   (SELECT count(*) FROM up WHERE NOT up.inserted),
		   (SELECT count(*) FROM up WHERE up.binding_id IS NULL),
		   (SELECT count(*) FROM wd),
		   coalesce(tb, '{}') || coalesce((SELECT array_agg(x.binding_id) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd
				 UNION ALL SELECT back.binding_id, back.order_key FROM back) x), '{}'),
		   coalesce(tk, '{}') || coalesce((SELECT array_agg(x.order_key) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd
				 UNION ALL SELECT back.binding_id, back.order_key FROM back) x), '{}')
	INTO twice, n_new, n_rev, n_park, n_withdrawn, tb, tk;
	IF twice IS NOT NULL THEN
		RAISE EXCEPTION 'statement of provider "%" bills one line twice',
			(SELECT p.name FROM @extschema@.provider p WHERE p.provider_id = pids[1])
			USING ERRCODE = 'SS400', DETAIL = twice,
				  HINT = 'Nothing of this statement was stored. A carrier''s key names one line of a waybill''s fee type: fix the statement, or leave the key column out to store every line as its own.';
	END IF;

	kind := 'new'; n := n_new; RETURN NEXT;
	kind := 'revised'; n := n_rev; RETURN NEXT;
	kind := 'duplicate'; n := n_in - n_new - n_rev; RETURN NEXT;
	kind := 'unmatched'; n := n_park; RETURN NEXT;
	kind := 'matched'; n := n_matched; RETURN NEXT;
	kind := 'withdrawn'; n := n_withdrawn; RETURN NEXT;
	n := NULL;

	RETURN QUERY SELECT * FROM @extschema@._fee_totals(tb, tk);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._match_parked_fees_all()
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
	pids integer[];
	tns text[];
	m record;
BEGIN
	SELECT array_agg(x.provider_id), array_agg(x.tracking_number) INTO pids, tns
	FROM (SELECT DISTINCT f.provider_id, f.tracking_number
		  FROM @extschema@.fee_line f
		  WHERE f.binding_id IS NULL
			AND (EXISTS (SELECT 1 FROM @extschema@.shipment s
						 WHERE s.provider_id = f.provider_id AND s.tracking_number = f.tracking_number)
				 -- or a piece of a multi-piece shipment (SF: child, return)
				 OR EXISTS (SELECT 1 FROM @extschema@.shipment s
							WHERE s.waybills @> jsonb_build_array(jsonb_build_object('waybillNo', f.tracking_number))
							  AND s.waybills IS NOT NULL AND s.provider_id = f.provider_id))) x;
	IF tns IS NULL THEN
		RETURN;
	END IF;
	PERFORM @extschema@._lock_fees(pids, tns, false);
	SELECT * INTO m FROM @extschema@._match_parked_fees(pids, tns);
	RETURN QUERY SELECT * FROM @extschema@._fee_totals(m.tb, m.tk);
END
$$;

------------------------------------------------------------------------------
-- Every waybill of a multi-piece shipment registered at the tracking provider
------------------------------------------------------------------------------
-- Only the main waybill of an SF multi-piece shipment was registered at the
-- binding's tracking_provider, so a child's or the return parcel's tracking
-- never came back through it; the applier now enqueues one registration
-- per waybill, and the provider's shipment records the pieces it has.
-- The waybills of an order a tracking provider (tpid) registers, in the
-- order they are registered: the main one (the tracking number of the
-- order's newest shipment at another provider), then each other waybill
-- of a multi-piece shipment (SF Express: child, return) as the carrier
-- listed them (piece: its element of shipment.waybills).  registered: the
-- provider's own shipment of the order records it (its tracking number,
-- or for a piece, its waybills).  The applier enqueues one registration
-- per row, and each renders and records the first one not registered.
CREATE FUNCTION @extschema@._registration_waybills(bid integer, ok text, tpid integer)
RETURNS TABLE (waybill text, piece jsonb, registered boolean, ord bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
	SELECT w.no, w.e,
		   coalesce(t.tracking_number = c.tracking_number
					AND (w.e IS NULL
						 OR t.waybills @> jsonb_build_array(jsonb_build_object('waybillNo', w.no))), false),
		   w.ord
	FROM (SELECT x.tracking_number, x.waybills FROM @extschema@.shipment x
		  WHERE x.binding_id = _registration_waybills.bid AND x.order_key = _registration_waybills.ok
			AND x.provider_id <> _registration_waybills.tpid AND x.tracking_number IS NOT NULL
		  ORDER BY x.updated_at DESC LIMIT 1) c
	CROSS JOIN LATERAL (
		SELECT c.tracking_number AS no, NULL::jsonb AS e, 0::bigint AS ord
		UNION ALL
		SELECT a.e ->> 'waybillNo', a.e, a.i
		FROM jsonb_array_elements(
				 CASE jsonb_typeof(c.waybills) WHEN 'array' THEN c.waybills ELSE '[]'::jsonb END)
			 WITH ORDINALITY AS a(e, i)
		WHERE jsonb_typeof(a.e -> 'waybillNo') = 'string' AND a.e ->> 'waybillNo' <> c.tracking_number) w
	LEFT JOIN @extschema@.shipment t
	  ON t.binding_id = _registration_waybills.bid AND t.order_key = _registration_waybills.ok
	 AND t.provider_id = _registration_waybills.tpid
	ORDER BY w.ord;
END;
REVOKE ALL ON FUNCTION @extschema@._registration_waybills(integer, text, integer) FROM PUBLIC;

------------------------------------------------------------------------------
-- One lookup of an SF piece's shipment for the tracking apply
------------------------------------------------------------------------------
-- _apply_tracking() repeated the same lookup for parked events and for the
-- batch; both call _piece_shipment(), which the planner inlines (the same
-- plans: the waybills' index probed number by number).  CREATE OR REPLACE
-- keeps jit = off and the search_path: they are in its definition.
-- The shipment of provider pid of which tn is another waybill (SF Express:
-- child, return; shipment.waybills), with the piece's kind: the newest
-- such shipment.  The tracking apply's lookup of pieces, for parked events
-- and for a batch, each number on its own through the waybills' index (a
-- join let the planner read every multi-piece shipment of the provider for
-- each batch); inlined into the caller's plan (plain SQL, its arguments
-- columns: no plan of its own to make at each call).
CREATE FUNCTION @extschema@._piece_shipment(pid integer, tn text)
RETURNS TABLE (binding_id integer, order_key text, piece text)
LANGUAGE sql STABLE
BEGIN ATOMIC
	SELECT s.binding_id, s.order_key, @extschema@._waybill_piece(s.waybills, _piece_shipment.tn)
	FROM @extschema@.shipment s
	WHERE s.waybills @> jsonb_build_array(jsonb_build_object('waybillNo', _piece_shipment.tn))
	  AND s.waybills IS NOT NULL AND s.provider_id = _piece_shipment.pid
	ORDER BY s.created_at DESC
	LIMIT 1;
END;
REVOKE ALL ON FUNCTION @extschema@._piece_shipment(integer, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@._apply_tracking(pid integer, prof text, ttl_s integer,
	keys text[], tns text[], raws text[], details text[], ats timestamptz[],
	locs text[], descrs text[])
RETURNS TABLE (kind text, binding_id integer, order_key text, tracking_number text,
			   old_status text, new_status text, n bigint, tbl text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- (its plans cost enough on paper for JIT, 40 ms a call to save microseconds)
SET jit = off
AS $$
DECLARE
	n_new bigint;
	n_park bigint;
	n_matched bigint;
	n_expired bigint;
	bids integer[];
	oks text[];
	has_parked boolean;
BEGIN
	n_expired := @extschema@._expire_unmatched(pid);

	-- Serialise with every other transaction adding events for the same
	-- tracking numbers of this provider: a transaction-level advisory lock
	-- on (provider, hash of the tracking number), taken in one statement in
	-- a fixed order, before any event is read or written.  The fold below, a
	-- later statement with a snapshot of its own, then sees every event
	-- committed before it.  (Row locks on the shipments did the same at the
	-- cost of a WAL record and a dirtied page per shipment: 14% of ingest.)
	has_parked := EXISTS (SELECT 1 FROM @extschema@.unmatched_event u WHERE u.provider_id = pid);
	PERFORM pg_advisory_xact_lock(pid, x.h)
	   FROM (SELECT DISTINCT hashtext(y.t) AS h
			 FROM (SELECT unnest(tns) AS t
				   UNION ALL
				   SELECT u.tracking_number FROM @extschema@.unmatched_event u
				   WHERE has_parked AND u.provider_id = pid) y
			 ORDER BY 1) x;

	-- parked events whose shipment has appeared
	IF has_parked THEN
	-- a tracking number given to several shipments (carriers recycle
	-- them) goes to the newest
	WITH main AS (
		SELECT DISTINCT ON (s.tracking_number) s.binding_id, s.order_key, s.tracking_number,
			   NULL::text AS piece
		FROM @extschema@.shipment s
		WHERE s.provider_id = pid
		  AND s.tracking_number IN (SELECT u.tracking_number FROM @extschema@.unmatched_event u
									WHERE u.provider_id = pid)
		ORDER BY s.tracking_number, s.created_at DESC),
	-- or another waybill of a multi-piece shipment (SF: child, return)
	pc AS (
		SELECT p.binding_id, p.order_key, t.tn AS tracking_number, p.piece
		FROM (SELECT DISTINCT u.tracking_number AS tn FROM @extschema@.unmatched_event u
			  WHERE u.provider_id = pid
				AND NOT EXISTS (SELECT 1 FROM main WHERE main.tracking_number = u.tracking_number)) t
		CROSS JOIN LATERAL @extschema@._piece_shipment(pid, t.tn) p),
	ship AS (
		SELECT * FROM main UNION ALL SELECT * FROM pc),
	moved AS (
		DELETE FROM @extschema@.unmatched_event u USING ship
		 WHERE u.provider_id = pid AND u.tracking_number = ship.tracking_number
		RETURNING u.*, ship.binding_id, ship.order_key, ship.piece),
	ins AS (
		INSERT INTO @extschema@.tracking_event AS e (provider_id, event_key, tracking_number,
			binding_id, order_key, occurred_at, status, raw_status, raw_detail, location,
			description, received_at, piece)
		SELECT pid, m.event_key, m.tracking_number, m.binding_id, m.order_key, m.occurred_at,
			   coalesce(mm.status, gc.name, 'unknown'),
			   m.raw_status, m.raw_detail, m.location, m.description, m.received_at, m.piece
		FROM moved m
		LEFT JOIN LATERAL (
			SELECT sm.status FROM @extschema@.status_map sm
			WHERE sm.profile = prof AND sm.raw_status IN (m.raw_status, m.raw_detail)
			  AND (sm.pattern IS NULL OR coalesce(m.description, '') ~ sm.pattern)
			ORDER BY sm.priority DESC, sm.pattern IS NOT NULL DESC, sm.raw_status = m.raw_status DESC
			LIMIT 1) mm ON true
		LEFT JOIN @extschema@.canonical_status gc ON prof = 'generic' AND gc.name = m.raw_status
		ORDER BY m.received_at, m.occurred_at
		ON CONFLICT (provider_id, event_key) DO NOTHING
		RETURNING e.binding_id, e.order_key)
	SELECT count(*), array_agg(ins.binding_id), array_agg(ins.order_key)
	INTO n_matched, bids, oks FROM ins;
	ELSE
		n_matched := 0;
	END IF;

	-- this batch: known shipments get events, the others are parked
	WITH ev AS (
		SELECT u.*
		FROM unnest(keys, tns, raws, details, ats, locs, descrs)
			 WITH ORDINALITY AS u(k, tn, raw, det, at, loc, descr, ord)),
	-- the map rows this batch can use, read once (none at all, usually, for
	-- the generic profile)
	cand AS MATERIALIZED (
		SELECT sm.raw_status, sm.pattern, sm.status, sm.priority
		FROM @extschema@.status_map sm
		WHERE sm.profile = prof
		  AND sm.raw_status IN (SELECT ev.raw FROM ev UNION SELECT ev.det FROM ev)),
	main AS (
		SELECT DISTINCT ON (s.tracking_number) s.binding_id, s.order_key, s.tracking_number,
			   NULL::text AS piece
		FROM @extschema@.shipment s
		WHERE s.provider_id = pid AND s.tracking_number IN (SELECT ev.tn FROM ev)
		ORDER BY s.tracking_number, s.created_at DESC),
	-- a number no shipment has as its tracking number may be another
	-- waybill of a multi-piece shipment (SF: child, return): the order's
	-- event, tagged with the piece, which moves no status
	pc AS (
		SELECT p.binding_id, p.order_key, t.tn AS tracking_number, p.piece
		FROM (SELECT DISTINCT ev.tn FROM ev
			  WHERE NOT EXISTS (SELECT 1 FROM main WHERE main.tracking_number = ev.tn)) t
		CROSS JOIN LATERAL @extschema@._piece_shipment(pid, t.tn) p),
	ship AS (
		SELECT * FROM main UNION ALL SELECT * FROM pc),
	ins AS (
		INSERT INTO @extschema@.tracking_event AS e (provider_id, event_key, tracking_number,
			binding_id, order_key, occurred_at, status, raw_status, raw_detail, location,
			description, piece)
		SELECT pid, ev.k, ev.tn, ship.binding_id, ship.order_key, ev.at,
			   coalesce(mm.status, gc.name, 'unknown'),
			   ev.raw, ev.det, ev.loc, ev.descr, ship.piece
		FROM ev JOIN ship ON ship.tracking_number = ev.tn
		LEFT JOIN LATERAL (
			SELECT sm.status FROM cand sm
			WHERE sm.raw_status IN (ev.raw, ev.det)
			  AND (sm.pattern IS NULL OR coalesce(ev.descr, '') ~ sm.pattern)
			ORDER BY sm.priority DESC, sm.pattern IS NOT NULL DESC, sm.raw_status = ev.raw DESC
			LIMIT 1) mm ON true
		LEFT JOIN @extschema@.canonical_status gc ON prof = 'generic' AND gc.name = ev.raw
		ORDER BY ev.ord
		ON CONFLICT (provider_id, event_key) DO NOTHING
		RETURNING e.binding_id, e.order_key),
	park AS (
		INSERT INTO @extschema@.unmatched_event AS x (provider_id, event_key, tracking_number,
			occurred_at, raw_status, raw_detail, location, description, expires_at)
		SELECT pid, ev.k, ev.tn, ev.at, ev.raw, ev.det, ev.loc, ev.descr,
			   now() + make_interval(secs => ttl_s)
		FROM ev
		WHERE NOT EXISTS (SELECT 1 FROM ship WHERE ship.tracking_number = ev.tn)
		ORDER BY ev.ord
		ON CONFLICT (provider_id, event_key) DO NOTHING
		RETURNING 1)
	SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM park),
		   coalesce(bids, '{}') || coalesce((SELECT array_agg(ins.binding_id) FROM ins), '{}'),
		   coalesce(oks, '{}') || coalesce((SELECT array_agg(ins.order_key) FROM ins), '{}')
	INTO n_new, n_park, bids, oks;

	kind := 'new'; n := n_new; RETURN NEXT;
	kind := 'duplicate'; n := coalesce(array_length(keys, 1), 0) - n_new - n_park; RETURN NEXT;
	kind := 'unmatched'; n := n_park; RETURN NEXT;
	kind := 'matched'; n := n_matched; RETURN NEXT;
	kind := 'expired'; n := n_expired; RETURN NEXT;
	n := NULL;

	-- the fold over each touched shipment's whole history, in event time:
	-- the events of its waybill, not those of an earlier shipment of the
	-- same order (deleted and inserted again, its key changed and changed
	-- back), whose last word (returned, delivered) is not the new one's
	RETURN QUERY
	WITH touched AS (
		SELECT DISTINCT t.bid, t.k FROM unnest(bids, oks) AS t(bid, k)),
	-- one index scan per shipment, whatever the statistics say
	f AS (
		SELECT touched.bid AS binding_id, touched.k AS order_key, h.st
		FROM touched
		JOIN @extschema@.shipment s
		  ON s.binding_id = touched.bid AND s.order_key = touched.k AND s.provider_id = pid
		CROSS JOIN LATERAL (
			SELECT @extschema@._status_fold(e.status, e.raw_status, c.rank, c.terminal,
											c.recoverable ORDER BY e.occurred_at, e.event_id) AS st
			FROM @extschema@.tracking_event e
			JOIN @extschema@.canonical_status c ON c.name = e.status
			WHERE e.binding_id = touched.bid AND e.order_key = touched.k
			  AND e.tracking_number = s.tracking_number) h),
	cur AS (
		SELECT s.binding_id, s.order_key, s.status AS old, f.st[1] AS st, f.st[2] AS raw
		FROM f JOIN @extschema@.shipment s
		  ON s.binding_id = f.binding_id AND s.order_key = f.order_key AND s.provider_id = pid
		LEFT JOIN @extschema@.canonical_status oc ON oc.name = s.status
		WHERE f.st IS NOT NULL AND NOT coalesce(oc.terminal, false)),
	upd AS (
		UPDATE @extschema@.shipment s
		   SET status = cur.st, raw_status = cur.raw, updated_at = now()
		  FROM cur
		 WHERE s.binding_id = cur.binding_id AND s.order_key = cur.order_key
		   AND s.provider_id = pid
		   AND (s.status IS DISTINCT FROM cur.st OR s.raw_status IS DISTINCT FROM cur.raw)
		RETURNING s.binding_id, s.order_key, s.tracking_number, cur.old, s.status)
	SELECT 'changed', upd.binding_id, upd.order_key, upd.tracking_number, upd.old, upd.status,
		   NULL::bigint, b.tbl::text
	FROM upd JOIN @extschema@.binding b ON b.binding_id = upd.binding_id
	WHERE upd.old IS DISTINCT FROM upd.status;
END
$$;

------------------------------------------------------------------------------
-- ID numbers, a kind of personal value of their own
------------------------------------------------------------------------------
-- The column convention of the generic body read receiver_phone but not
-- receiverPhone, phone2 or idCard, and had no kind for an ID card's or a
-- passport's number: readers saw them whole.  field_map.pii and attach's
-- option pii now take id_number (src/mask.c reads the column names).
ALTER TABLE @extschema@.field_map DROP CONSTRAINT field_map_pii_check;
ALTER TABLE @extschema@.field_map ADD CONSTRAINT field_map_pii_check CHECK (pii IS NULL OR
	(pii IN ('name', 'phone', 'address', 'email', 'id_number') AND direction = 'out'));
COMMENT ON COLUMN @extschema@.field_map.pii IS
	'Outbound rows: the value is personal, of kind name, phone, address, email or id_number; shipsync_reader sees it masked in request bodies and render_request(). NULL: not personal.';
CREATE OR REPLACE FUNCTION @extschema@._check_attach_options(opts jsonb, provider_id integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	d text;
BEGIN
	SELECT p.dialect INTO d FROM @extschema@.provider p WHERE p.provider_id = _check_attach_options.provider_id;
	IF d IN ('easypost', 'aftership', 'kuaidi100') THEN
		RAISE EXCEPTION 'provider of dialect % tracks shipments, it does not create them', d
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Attach the table to a shipping provider, and name this one in option "tracking_provider".';
	END IF;
	IF opts ? 'tracking_provider' THEN
		SELECT p.dialect INTO d FROM @extschema@.provider p WHERE p.name = opts->>'tracking_provider';
		IF d IS NULL THEN
			RAISE EXCEPTION 'tracking provider "%" does not exist', opts->>'tracking_provider'
				USING ERRCODE = 'undefined_object',
					  HINT = 'Create it first with shipsync.create_provider().';
		END IF;
		IF d NOT IN ('easypost', 'aftership', 'kuaidi100') THEN
			RAISE EXCEPTION 'provider "%" is not a tracking provider', opts->>'tracking_provider'
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Its dialect is %s; tracking dialects are easypost, aftership and kuaidi100.', d),
					  HINT = 'Name a provider of a tracking dialect.';
		END IF;
	END IF;
	IF opts ? 'validate' AND (jsonb_typeof(opts->'validate') <> 'string'
		OR opts->>'validate' NOT IN ('invalid', 'reject')) THEN
		RAISE EXCEPTION 'option "validate" must be "invalid" or "reject"'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given is %s.', opts->'validate'),
				  HINT = 'Use invalid (the default) to keep the order and mark its intent invalid, or reject to make the INSERT fail.';
	END IF;
	IF opts ? 'pii' AND (jsonb_typeof(opts->'pii') <> 'object' OR EXISTS (
		SELECT 1 FROM jsonb_each(opts->'pii') AS c(col, kind)
		WHERE jsonb_typeof(c.kind) <> 'null'
		  AND (jsonb_typeof(c.kind) <> 'string' OR c.kind #>> '{}' NOT IN ('name', 'phone', 'address', 'email', 'id_number')))) THEN
		RAISE EXCEPTION 'option "pii" must map column names to name, phone, address, email, id_number or null'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given is %s.', opts->'pii'),
				  HINT = 'For example {"receiver": "name", "tel": "phone", "name": null}: null marks a column the usual names would take as personal as not personal.';
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.mask_pii(text, text) IS
	'A personal value masked as shipsync_reader sees it; kind is name (张三: 张*, John Smith: J*** Smith), phone (138****5678), address (cut after the district or the first comma: 深圳市南山区***), email (z***@example.com) or id_number (an ID card''s or a passport''s: **************1234).';

------------------------------------------------------------------------------
-- Free text, a kind of personal value: the SF Express remark
------------------------------------------------------------------------------
-- The built-in profile sf_express sends the order's remark, free text that
-- often holds a phone or an ID number, and readers saw it whole in
-- shipsync.intents and render_request().  The kind text masks every run of
-- seven digits or more in it; the built-in row is marked (copies of the
-- profile made before are the admin's to mark).
ALTER TABLE @extschema@.field_map DROP CONSTRAINT field_map_pii_check;
ALTER TABLE @extschema@.field_map ADD CONSTRAINT field_map_pii_check CHECK (pii IS NULL OR
	(pii IN ('name', 'phone', 'address', 'email', 'id_number', 'text') AND direction = 'out'));
COMMENT ON COLUMN @extschema@.field_map.pii IS
	'Outbound rows: the value is personal, of kind name, phone, address, email, id_number or text (free text: its phone and ID numbers are masked); shipsync_reader sees it masked in request bodies and render_request(). NULL: not personal.';
ALTER TABLE @extschema@.field_map DISABLE TRIGGER field_map_check;
UPDATE @extschema@.field_map SET pii = 'text'
 WHERE seeded AND profile = 'sf_express' AND direction = 'out' AND target_path = 'remark'
   AND pii IS NULL;
ALTER TABLE @extschema@.field_map ENABLE TRIGGER field_map_check;
CREATE OR REPLACE FUNCTION @extschema@._check_attach_options(opts jsonb, provider_id integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	d text;
BEGIN
	SELECT p.dialect INTO d FROM @extschema@.provider p WHERE p.provider_id = _check_attach_options.provider_id;
	IF d IN ('easypost', 'aftership', 'kuaidi100') THEN
		RAISE EXCEPTION 'provider of dialect % tracks shipments, it does not create them', d
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Attach the table to a shipping provider, and name this one in option "tracking_provider".';
	END IF;
	IF opts ? 'tracking_provider' THEN
		SELECT p.dialect INTO d FROM @extschema@.provider p WHERE p.name = opts->>'tracking_provider';
		IF d IS NULL THEN
			RAISE EXCEPTION 'tracking provider "%" does not exist', opts->>'tracking_provider'
				USING ERRCODE = 'undefined_object',
					  HINT = 'Create it first with shipsync.create_provider().';
		END IF;
		IF d NOT IN ('easypost', 'aftership', 'kuaidi100') THEN
			RAISE EXCEPTION 'provider "%" is not a tracking provider', opts->>'tracking_provider'
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Its dialect is %s; tracking dialects are easypost, aftership and kuaidi100.', d),
					  HINT = 'Name a provider of a tracking dialect.';
		END IF;
	END IF;
	IF opts ? 'validate' AND (jsonb_typeof(opts->'validate') <> 'string'
		OR opts->>'validate' NOT IN ('invalid', 'reject')) THEN
		RAISE EXCEPTION 'option "validate" must be "invalid" or "reject"'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given is %s.', opts->'validate'),
				  HINT = 'Use invalid (the default) to keep the order and mark its intent invalid, or reject to make the INSERT fail.';
	END IF;
	IF opts ? 'pii' AND (jsonb_typeof(opts->'pii') <> 'object' OR EXISTS (
		SELECT 1 FROM jsonb_each(opts->'pii') AS c(col, kind)
		WHERE jsonb_typeof(c.kind) <> 'null'
		  AND (jsonb_typeof(c.kind) <> 'string' OR c.kind #>> '{}' NOT IN ('name', 'phone', 'address', 'email', 'id_number', 'text')))) THEN
		RAISE EXCEPTION 'option "pii" must map column names to name, phone, address, email, id_number, text or null'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given is %s.', opts->'pii'),
				  HINT = 'For example {"receiver": "name", "tel": "phone", "name": null}: null marks a column the usual names would take as personal as not personal.';
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.mask_pii(text, text) IS
	'A personal value masked as shipsync_reader sees it; kind is name (张三: 张*, John Smith: J*** Smith), phone (138****5678), address (cut after the district or the first comma: 深圳市南山区***), email (z***@example.com), id_number (an ID card''s or a passport''s: **************1234) or text (free text: every run of seven digits or more keeps its last four: 电话*******5678).';

------------------------------------------------------------------------------
-- Readers no longer read the label's link
------------------------------------------------------------------------------
-- shipsync.shipment.label_url is the carrier's label, and a label link that
-- needs no login prints the receiver's whole name, phone and address:
-- shipsync_reader read it.  Operators and admins still do.
REVOKE SELECT (label_url) ON @extschema@.shipment FROM shipsync_reader;

-- attach()'s comment names the kinds id_number and text of option pii
COMMENT ON FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) IS
	'Attach a CRM table to a provider: installs the capture trigger. writeback maps tracking_number, status, provider_shipment_id, label_url, fee_total to columns; options: cancel_when (a boolean SQL expression over the row), validate (invalid, the default: an order missing required mapped fields becomes an invalid intent with a ticket; reject: its INSERT or UPDATE fails), tracking_provider (a provider of a tracking dialect where every new waybill is registered), pii (which columns of the generic body are personal: {"column": "name"|"phone"|"address"|"email"|"id_number"|"text"|null}), grace (reconciliation: how old an order without a shipment must be to be not_sent, default 10 minutes), created_at_column (the column that tells an order''s age), adopt (the binding of a table this one replaces: its shipments, intents, events, fees and tickets become this binding''s).';

------------------------------------------------------------------------------
-- Currencies know their minor units: a fee line's amount with more
-- decimals than its currency has (JPY 1500.5) is refused
------------------------------------------------------------------------------
ALTER TABLE @extschema@.currency
	ADD COLUMN minor_units smallint CHECK (minor_units BETWEEN 0 AND 4);
COMMENT ON COLUMN @extschema@.currency.minor_units IS
	'ISO 4217''s minor unit: how many decimals an amount in this currency may have (0 for JPY, 2 for CNY, 3 for KWD). A bill line with more (JPY 1500.5) is refused; a quote with more gets no fee_total. NULL: not checked (ISO gives none, as for XXX and XAU, or a currency an admin added without it).';
-- (the built-in rows stay built-in and unaudited, as a fresh install seeds them)
ALTER TABLE @extschema@.currency DISABLE TRIGGER currency_builtin;
ALTER TABLE @extschema@.currency DISABLE TRIGGER shipsync_audit;
UPDATE @extschema@.currency c SET minor_units = CASE
	WHEN c.code IN ('BIF', 'CLP', 'DJF', 'GNF', 'ISK', 'JPY', 'KMF', 'KRW', 'PYG', 'RWF', 'UGX',
					'UYI', 'VND', 'VUV', 'XAF', 'XOF', 'XPF') THEN 0
	WHEN c.code IN ('BHD', 'IQD', 'JOD', 'KWD', 'LYD', 'OMR', 'TND') THEN 3
	WHEN c.code IN ('CLF', 'UYW') THEN 4
	WHEN c.code IN ('XAG', 'XAU', 'XBA', 'XBB', 'XBC', 'XBD', 'XDR', 'XPD', 'XPT', 'XSU', 'XTS',
					'XUA', 'XXX') THEN NULL
	ELSE 2 END
WHERE c.builtin;
ALTER TABLE @extschema@.currency ENABLE TRIGGER shipsync_audit;
ALTER TABLE @extschema@.currency ENABLE TRIGGER currency_builtin;

------------------------------------------------------------------------------
-- settlement: a shipment billed in another currency than its quote's is
-- no unbilled shipment of the quote's currency
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION @extschema@._settlement()
RETURNS TABLE (provider_id integer, month date, currency text, shipments bigint,
			   estimated numeric, charged numeric, refunded numeric, unbilled bigint,
			   unknown_waybills bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET work_mem = '64MB'
AS $$
	SELECT r.provider_id, r.month, r.currency, sum(r.shipments)::bigint, sum(r.estimated),
		   sum(r.charged), sum(r.refunded), sum(r.unbilled)::bigint, sum(r.unknown)::bigint
	FROM (-- shipments, by the month they were created: with their sums per
		  -- currency, or (those of a shipping provider) without any
		  SELECT s.provider_id, date_trunc('month', s.created_at)::date AS month,
				 f.currency, 1 AS shipments, coalesce(f.estimated, 0) AS estimated,
				 coalesce(f.charged, 0) AS charged, coalesce(f.refunded, 0) AS refunded,
				 -- (no bill line in any currency: one billed in dollars only
				 -- is no unbilled shipment of its quote's yuan)
				 CASE WHEN coalesce(f.bill_lines, 0) = 0 AND s.status <> 'cancelled'
						   AND NOT EXISTS (SELECT 1 FROM @extschema@.fee_sum g
										   WHERE g.binding_id = s.binding_id
											 AND g.order_key = s.order_key
											 AND g.provider_id = s.provider_id
											 AND g.bill_lines > 0)
					  THEN 1 ELSE 0 END AS unbilled,
				 0 AS unknown
		  FROM @extschema@.shipment s
		  JOIN @extschema@.binding b ON b.binding_id = s.binding_id
		  LEFT JOIN @extschema@.fee_sum f
			ON f.binding_id = s.binding_id AND f.order_key = s.order_key
		   AND f.provider_id = s.provider_id
		  WHERE f.binding_id IS NOT NULL OR s.provider_id = b.provider_id
		  UNION ALL
		  -- billed waybills no shipment has: by the statement's month, else the line's
		  SELECT u.provider_id, u.month, u.currency, 0, 0, u.charged, u.refunded, 0, 1
		  FROM (SELECT l.provider_id, l.tracking_number, l.currency,
					   min(coalesce(st.period, date_trunc('month',
						   coalesce(l.occurred_at, l.recorded_at))::date)) AS month,
					   coalesce(sum(l.amount) FILTER (WHERE l.state <> 'refunded'
						   AND l.fee_type <> 'refund'), 0) AS charged,
					   coalesce(sum(abs(l.amount)) FILTER (WHERE
						   l.state = 'refunded' OR l.fee_type = 'refund'), 0) AS refunded
				FROM @extschema@.fee_line l
				LEFT JOIN @extschema@.statement st ON st.statement_id = l.statement_id
				WHERE l.binding_id IS NULL AND NOT l.quote
				  AND NOT l.withdrawn
				GROUP BY l.provider_id, l.tracking_number, l.currency) u) r
	GROUP BY r.provider_id, r.month, r.currency
$$;
COMMENT ON FUNCTION @extschema@._settlement() IS
	'Internal: the rows of shipsync.settlement by provider id.';

------------------------------------------------------------------------------
-- A quote's total with more decimals than its currency has (JPY 1500.5) is
-- no fee_total: the order keeps its own and gets a fee_currency_mixed ticket
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION @extschema@._fee_totals(tb integer[], tk text[])
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	-- one join and one aggregate for all the orders (a statement touches
	-- tens of thousands), min <> max for "more than one currency"
	RETURN QUERY
	WITH t AS (
		SELECT DISTINCT x.b, x.k FROM unnest(tb, tk) AS x(b, k) WHERE x.b IS NOT NULL),
	-- a quote counts while it is the quote of the order's shipment: an
	-- order shipped again under its key (its shipment row now holds
	-- another waybill) is quoted once, not twice; bills all count
	per AS MATERIALIZED (
		SELECT l.binding_id AS b, l.order_key AS k, l.provider_id AS pid, l.currency AS cur,
			   coalesce(sum(CASE WHEN l.fee_type = 'refund' THEN -abs(l.amount) ELSE l.amount END)
					FILTER (WHERE l.quote AND q.current), 0) AS est,
			   coalesce(sum(l.amount) FILTER (WHERE NOT l.quote AND l.state <> 'refunded'
											  AND l.fee_type <> 'refund'), 0) AS chg,
			   coalesce(sum(abs(l.amount)) FILTER (WHERE NOT l.quote
					AND (l.state = 'refunded' OR l.fee_type = 'refund')), 0) AS ref,
			   count(*) FILTER (WHERE l.quote AND q.current) AS nq,
			   count(*) FILTER (WHERE NOT l.quote) AS nb,
			   max(l.recorded_at) AS last
		FROM @extschema@.fee_line l
		JOIN t ON l.binding_id = t.b AND l.order_key = t.k
		-- (a line a corrected statement withdrew is billed no more: no
		-- bill line, so its order is unbilled again and takes its quote)
		CROSS JOIN LATERAL (
			SELECT NOT l.quote OR coalesce(
				(SELECT s.tracking_number FROM @extschema@.shipment s
				  WHERE s.binding_id = l.binding_id AND s.order_key = l.order_key
					AND s.provider_id = l.provider_id) = l.tracking_number, true) AS current) q
		WHERE NOT l.withdrawn
		GROUP BY l.binding_id, l.order_key, l.provider_id, l.currency),
	kept AS (
		INSERT INTO @extschema@.fee_sum AS fs (binding_id, order_key, provider_id, currency,
			estimated, charged, refunded, quote_lines, bill_lines, last_change)
		SELECT per.b, per.k, per.pid, per.cur, per.est, per.chg, per.ref, per.nq, per.nb, per.last
		FROM per
		ON CONFLICT ON CONSTRAINT fee_sum_pkey DO UPDATE SET
			estimated = EXCLUDED.estimated, charged = EXCLUDED.charged,
			refunded = EXCLUDED.refunded, quote_lines = EXCLUDED.quote_lines,
			bill_lines = EXCLUDED.bill_lines, last_change = EXCLUDED.last_change
		WHERE (fs.estimated, fs.charged, fs.refunded, fs.quote_lines, fs.bill_lines, fs.last_change)
			  IS DISTINCT FROM (EXCLUDED.estimated, EXCLUDED.charged, EXCLUDED.refunded,
								EXCLUDED.quote_lines, EXCLUDED.bill_lines, EXCLUDED.last_change)
		RETURNING 1),
	-- a sum whose provider and currency no line has any more; looked up
	-- in fee_line by its order index, not in per: an anti-join against the
	-- CTE scanned all of per for every sum (the planner cannot hash a
	-- generic plan's guess of one row), 8,000 comparisons a batch of 128
	gone AS (
		DELETE FROM @extschema@.fee_sum fs USING t
		 WHERE fs.binding_id = t.b AND fs.order_key = t.k
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.fee_line l
						   WHERE l.binding_id = fs.binding_id AND l.order_key = fs.order_key
							 AND l.provider_id = fs.provider_id AND l.currency = fs.currency
							 AND NOT l.withdrawn)
		RETURNING 1),
	ord AS (
		SELECT per.b, per.k, sum(per.nb) > 0 AS billed,
			   min(per.cur) FILTER (WHERE per.nb > 0) AS lo_b,
			   max(per.cur) FILTER (WHERE per.nb > 0) AS hi_b,
			   min(per.cur) FILTER (WHERE per.nq > 0) AS lo_q,
			   max(per.cur) FILTER (WHERE per.nq > 0) AS hi_q,
			   -- quoted in a currency (XXX: the answer named none)
			   min(per.cur) FILTER (WHERE per.nq > 0 AND per.cur <> 'XXX') AS lo_qc,
			   max(per.cur) FILTER (WHERE per.nq > 0 AND per.cur <> 'XXX') AS hi_qc,
			   sum(per.chg - per.ref) FILTER (WHERE per.nb > 0) AS tot_b,
			   sum(per.est) FILTER (WHERE per.nq > 0) AS tot_q
		FROM per GROUP BY per.b, per.k),
	-- one currency: the bill's lines in one, and a quote in a currency in
	-- that one too (a bill in dollars of a quote in yuan is no total)
	-- and a total its currency can have (a quote of JPY 1500.5 is none:
	-- bill lines with more decimals than their currency has are refused)
	tot AS (
		SELECT ord.b, ord.k, bb.provider_id AS pid, bb.writeback ? 'fee_total' AS wb,
			   x.agree AND coalesce(pg_catalog.round(x.total, cu.minor_units) = x.total, true) AS one,
			   x.agree, x.total, x.cur, cu.minor_units AS minor
		FROM ord JOIN @extschema@.binding bb ON bb.binding_id = ord.b
		CROSS JOIN LATERAL (SELECT CASE WHEN ord.billed THEN ord.tot_b ELSE ord.tot_q END AS total,
								   CASE WHEN ord.billed THEN ord.lo_b ELSE ord.lo_q END AS cur,
								   CASE WHEN ord.billed
										THEN ord.lo_b = ord.hi_b AND coalesce(ord.lo_qc = ord.lo_b AND ord.hi_qc = ord.lo_b, true)
										ELSE ord.lo_q = ord.hi_q END AS agree) x
		LEFT JOIN @extschema@.currency cu ON cu.code = x.cur
		UNION ALL
		-- an order whose every line was withdrawn costs nothing now
		SELECT t.b, t.k, bb.provider_id, bb.writeback ? 'fee_total', true, true, 0, NULL, NULL
		FROM t JOIN @extschema@.binding bb ON bb.binding_id = t.b
		WHERE NOT EXISTS (SELECT 1 FROM per WHERE per.b = t.b AND per.k = t.k)
		  AND EXISTS (SELECT 1 FROM @extschema@.fee_line l
					  WHERE l.binding_id = t.b AND l.order_key = t.k)),
	sh AS (
		UPDATE @extschema@.shipment s SET fee_total = tot.total, updated_at = now()
		  FROM tot
		 WHERE tot.one AND s.binding_id = tot.b AND s.order_key = tot.k
		   AND s.provider_id = tot.pid AND s.fee_total IS DISTINCT FROM tot.total
		RETURNING s.binding_id, s.order_key, s.fee_total, tot.wb),
	mixed AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, provider_id, detail)
		SELECT 'fee_currency_mixed', tot.b, tot.k, tot.pid,
			   CASE WHEN tot.agree
				   THEN format('the fees of order %s come to %s %s, more decimals than %s has (%s): its fee_total is left as it was',
							   tot.k, tot.total, tot.cur, tot.cur, tot.minor)
				   ELSE format('the fees of order %s are in %s: its fee_total is left as it was', tot.k,
							   (SELECT string_agg(DISTINCT per.cur, ', ') FROM per
								WHERE per.b = tot.b AND per.k = tot.k)) END
		FROM tot
		WHERE NOT tot.one
		  AND NOT EXISTS (SELECT 1 FROM @extschema@.exception_ticket x
						  WHERE x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
							AND x.order_key = tot.k AND x.resolved_at IS NULL)
		RETURNING 1),
	agreed AS (
		UPDATE @extschema@.exception_ticket x SET resolved_at = now(),
			   resolution = 'its fee lines are in one currency again'
		  FROM tot
		 WHERE tot.one AND x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
		   AND x.order_key = tot.k AND x.resolved_at IS NULL
		RETURNING 1),
	-- a total with more decimals than the order's numeric column holds
	-- (1.005 into a numeric(10,2)): never written rounded (the binding's
	-- write-back statement leaves the column), and the order gets a ticket
	scale AS (
		SELECT sh.binding_id, sh.order_key, sh.fee_total, a.attname, a.atttypid, tm.m,
			   CASE WHEN tm.m >= 4 THEN (((tm.m - 4) & 2047) # 1024) - 1024 END AS s
		FROM sh
		JOIN @extschema@.binding bb ON bb.binding_id = sh.binding_id
		JOIN pg_catalog.pg_attribute a
		  ON a.attrelid = bb.tbl AND a.attname = bb.writeback->>'fee_total' AND NOT a.attisdropped
		JOIN pg_catalog.pg_type ty
		  ON ty.oid = coalesce(nullif((SELECT d.typbasetype FROM pg_catalog.pg_type d
									   WHERE d.oid = a.atttypid), 0), a.atttypid)
		CROSS JOIN LATERAL (SELECT CASE WHEN a.atttypmod >= 0 THEN a.atttypmod
				ELSE (SELECT d.typtypmod FROM pg_catalog.pg_type d WHERE d.oid = a.atttypid) END) tm(m)
		WHERE sh.wb AND ty.oid = 'pg_catalog.numeric'::pg_catalog.regtype),
	unfit AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, detail)
		SELECT 'writeback_failed', scale.binding_id, scale.order_key,
			   format('write-back of the fee total failed: %s has more decimals than column %I (%s) holds; it was left as it was, not rounded',
					  scale.fee_total, scale.attname, pg_catalog.format_type(scale.atttypid, scale.m))
		FROM scale
		WHERE scale.s IS NOT NULL AND pg_catalog.round(scale.fee_total, scale.s) <> scale.fee_total
		RETURNING exception_ticket.binding_id, exception_ticket.order_key)
	-- (kept, gone, mixed, agreed and unfit run whether or not they are read;
	-- the orders ticketed are hashed once: estimated at a few rows, an anti
	-- join compared every order written with every one ticketed, 36 million
	-- comparisons for a statement of 6,000 of each.  No key is NULL.)
	SELECT 'writeback'::text, NULL::bigint, sh.binding_id, sh.order_key, sh.fee_total
	FROM sh WHERE sh.wb
	  AND (sh.binding_id, sh.order_key) NOT IN (SELECT u.binding_id, u.order_key FROM unfit u);
END
$$;

------------------------------------------------------------------------------
-- Each registration at a tracking provider about its own waybill
------------------------------------------------------------------------------
-- Each registration of an SF multi-piece order rendered and recorded the
-- first waybill not registered yet: the main one's registration dead, the
-- next registered the main again and a piece never; a dead one retried
-- re-sent the main's stored request and recorded a piece.  The applier
-- now enqueues each with its waybill (outbox.waybill), rendered and
-- recorded as it is; a piece counts as registered without the main.
-- Registrations enqueued before keep the old choice.
ALTER TABLE @extschema@.outbox ADD COLUMN waybill text;
COMMENT ON COLUMN @extschema@.outbox.waybill IS 'For a registration (op register): the waybill it registers at the tracking provider, the main one or a piece of a multi-piece shipment, given when it was enqueued; what its request names and its success records, whatever became of the other registrations of the order.';
CREATE OR REPLACE VIEW @extschema@.intents AS
SELECT o.id, o.binding_id, o.provider_id, o.order_key, o.op, o.idempotency_key, o.state,
	   o.attempts, o.next_attempt_at, o.lease_until, o.created_at, o.updated_at, o.done_at,
	   o.request_method, o.request_url,
	   CASE WHEN (SELECT @extschema@._pii_visible()) THEN o.request_body
			ELSE @extschema@._mask_body(o.request_body, r.paths, r.kinds, b.options->'pii')
	   END AS request_body,
	   CASE WHEN (SELECT @extschema@._pii_visible()) THEN o.request_digest END AS request_digest,
	   o.last_status, o.error_class, o.last_error, o.coalesced_into,
	   CASE WHEN (SELECT @extschema@._pii_visible()) THEN o.content_digest END AS content_digest,
	   o.request_kind, o.waybill
FROM @extschema@.outbox o
LEFT JOIN @extschema@._pii_rules r ON r.provider_id = o.provider_id
LEFT JOIN @extschema@.binding b ON b.binding_id = o.binding_id;

-- The waybills of an order a tracking provider (tpid) registers, in the
-- order they are registered: the main one (the tracking number of the
-- order's newest shipment at another provider), then each other waybill
-- of a multi-piece shipment (SF Express: child, return) as the carrier
-- listed them (piece: its element of shipment.waybills).  registered: the
-- provider's own shipment of the order records it (its tracking number,
-- or for a piece, its waybills: a piece may be registered while the main
-- one is not, whose registration failed).  The applier enqueues one
-- registration per row, each about its own waybill (outbox.waybill): it
-- renders and records that one, whatever became of the others.
CREATE OR REPLACE FUNCTION @extschema@._registration_waybills(bid integer, ok text, tpid integer)
RETURNS TABLE (waybill text, piece jsonb, registered boolean, ord bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
	SELECT w.no, w.e,
		   coalesce(CASE WHEN w.e IS NULL THEN t.tracking_number = c.tracking_number
						 ELSE coalesce(t.tracking_number = c.tracking_number, true)
							  AND t.waybills @> jsonb_build_array(jsonb_build_object('waybillNo', w.no)) END,
					false),
		   w.ord
	FROM (SELECT x.tracking_number, x.waybills FROM @extschema@.shipment x
		  WHERE x.binding_id = _registration_waybills.bid AND x.order_key = _registration_waybills.ok
			AND x.provider_id <> _registration_waybills.tpid AND x.tracking_number IS NOT NULL
		  ORDER BY x.updated_at DESC LIMIT 1) c
	CROSS JOIN LATERAL (
		SELECT c.tracking_number AS no, NULL::jsonb AS e, 0::bigint AS ord
		UNION ALL
		SELECT a.e ->> 'waybillNo', a.e, a.i
		FROM jsonb_array_elements(
				 CASE jsonb_typeof(c.waybills) WHEN 'array' THEN c.waybills ELSE '[]'::jsonb END)
			 WITH ORDINALITY AS a(e, i)
		WHERE jsonb_typeof(a.e -> 'waybillNo') = 'string' AND a.e ->> 'waybillNo' <> c.tracking_number) w
	LEFT JOIN @extschema@.shipment t
	  ON t.binding_id = _registration_waybills.bid AND t.order_key = _registration_waybills.ok
	 AND t.provider_id = _registration_waybills.tpid
	ORDER BY w.ord;
END;

------------------------------------------------------------------------------
-- A dropped table by name in open_tickets and reconciliation
------------------------------------------------------------------------------
-- Their "table" (a regclass) shows a bare oid once the table is dropped,
-- and a regclass cannot show a name that is gone.  _on_drop() keeps the
-- name in dropped_table, and both views end with table_name, the name as
-- text ("table" stays a regclass: WHERE "table" = 'orders'::regclass keeps
-- working).  A table of its own: a column of binding would lock it before
-- the last section.
CREATE TABLE @extschema@.dropped_table (
	binding_id		integer PRIMARY KEY,
	name			text NOT NULL,
	dropped_at		timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE @extschema@.dropped_table IS
	'The name each attached table had when it was dropped (schema-qualified), by binding: binding.tbl then shows a bare oid. Written by DROP TABLE''s event trigger; read by the views open_tickets and reconciliation (table_name).';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.dropped_table', '');
GRANT SELECT ON @extschema@.dropped_table TO shipsync_reader;
CREATE OR REPLACE FUNCTION @extschema@._on_drop()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET shipsync.audit_action = 'table_dropped'
AS $$
DECLARE
	r record;
	n bigint;
BEGIN
	FOR r IN SELECT x.objid, x.object_identity FROM pg_catalog.pg_event_trigger_dropped_objects() x
			 WHERE x.object_type OPERATOR(pg_catalog.=) 'table' LOOP
		WITH mv AS (
			DELETE FROM @extschema@.inbox i USING @extschema@.binding bb
			WHERE bb.tbl OPERATOR(pg_catalog.=) r.objid
			  AND i.binding_id OPERATOR(pg_catalog.=) bb.binding_id
			RETURNING i.*)
		INSERT INTO @extschema@.outbox (id, binding_id, provider_id, order_key, op,
			idempotency_key, created_at, next_attempt_at)
		SELECT id, binding_id, provider_id, order_key, op, idempotency_key, created_at, created_at
		FROM mv;
		-- (the name kept in dropped_table: once dropped, tbl shows a bare oid)
		WITH b AS (
			UPDATE @extschema@.binding SET active = false
			 WHERE tbl OPERATOR(pg_catalog.=) r.objid RETURNING binding_id),
		k AS (
			INSERT INTO @extschema@.dropped_table (binding_id, name)
			SELECT b.binding_id, r.object_identity FROM b
			ON CONFLICT (binding_id) DO UPDATE SET name = EXCLUDED.name, dropped_at = EXCLUDED.dropped_at),
		d AS (
			UPDATE @extschema@.outbox o
			   SET state = 'dead', last_error = 'the order table was dropped',
				   error_class = 'table_dropped', done_at = pg_catalog.now(), updated_at = pg_catalog.now()
			  FROM b WHERE o.binding_id OPERATOR(pg_catalog.=) b.binding_id
			   AND o.state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'retrying'])
			RETURNING o.id, o.binding_id, o.order_key, o.provider_id),
		t AS (
			INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, provider_id, outbox_id, detail)
			SELECT 'table_dropped', d.binding_id, d.order_key, d.provider_id, d.id, 'the order table was dropped'
			FROM d
			RETURNING ticket_id, outbox_id, binding_id, order_key)
		-- kinds and ids only: any role may LISTEN (docs/security.md)
		SELECT pg_catalog.count(pg_catalog.pg_notify('shipsync', pg_catalog.json_build_object('event', 'table_dropped',
			'outbox_id', t.outbox_id, 'ticket_id', t.ticket_id, 'binding_id', t.binding_id,
			'order_key', t.order_key)::text))
		INTO n FROM t;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@._on_drop() IS
	'Internal: the event trigger of DROP TABLE: a dropped attached table''s binding becomes inactive, its name is kept in dropped_table and its waiting intents die.';
CREATE OR REPLACE VIEW @extschema@.open_tickets AS
SELECT t.ticket_id,
	   t.kind,
	   CASE WHEN t.acknowledged_at IS NULL THEN 'open' ELSE 'acknowledged' END AS state,
	   pg_catalog.now() OPERATOR(pg_catalog.-) coalesce(t.reopened_at, t.opened_at) AS age,
	   p.name AS provider,
	   b.tbl AS "table",
	   t.order_key,
	   t.tracking_number,
	   t.subject,
	   t.opened_at,
	   t.reopen_count,
	   t.last_seen_at,
	   t.acknowledged_by,
	   -- (given since the ticket was last (re)opened: a reopening clears
	   -- the notes of before)
	   (SELECT e.note FROM @extschema@.ticket_event e
		 WHERE e.ticket_id OPERATOR(pg_catalog.=) t.ticket_id AND e.note IS NOT NULL
		   AND e.at OPERATOR(pg_catalog.>=) coalesce(t.reopened_at, t.opened_at)
		 ORDER BY e.at DESC LIMIT 1) AS last_note,
	   t.detail,
	   -- (a regclass shows a dropped table as a bare oid)
	   coalesce(d.name, b.tbl::text) AS table_name
FROM @extschema@.exception_ticket t
LEFT JOIN @extschema@.provider p ON p.provider_id OPERATOR(pg_catalog.=) t.provider_id
LEFT JOIN @extschema@.binding b ON b.binding_id OPERATOR(pg_catalog.=) t.binding_id
LEFT JOIN @extschema@.dropped_table d ON d.binding_id OPERATOR(pg_catalog.=) t.binding_id
WHERE t.resolved_at IS NULL;
COMMENT ON COLUMN @extschema@.open_tickets.table_name IS 'The name of the table, as text: that of a dropped table as it was when dropped (schema-qualified), where "table" shows a bare oid.';
CREATE OR REPLACE VIEW @extschema@.reconciliation AS
SELECT t.kind,
	   p.name AS provider,
	   b.tbl AS "table",
	   t.order_key,
	   t.tracking_number,
	   coalesce(t.reopened_at, t.opened_at) AS detected_at,
	   t.facts AS detail,
	   t.ticket_id,
	   -- (a regclass shows a dropped table as a bare oid)
	   coalesce(d.name, b.tbl::text) AS table_name
FROM @extschema@.exception_ticket t
LEFT JOIN @extschema@.provider p ON p.provider_id OPERATOR(pg_catalog.=) t.provider_id
LEFT JOIN @extschema@.binding b ON b.binding_id OPERATOR(pg_catalog.=) t.binding_id
LEFT JOIN @extschema@.dropped_table d ON d.binding_id OPERATOR(pg_catalog.=) t.binding_id
WHERE t.resolved_at IS NULL
  AND t.kind OPERATOR(pg_catalog.=) ANY (@extschema@._reconcile_kinds());
COMMENT ON COLUMN @extschema@.reconciliation.table_name IS 'The name of the table, as text: that of a dropped table as it was when dropped (schema-qualified), where "table" shows a bare oid.';

------------------------------------------------------------------------------
-- queue_status and provider_health read the inbox once, not once (twice)
-- per provider: 50 providers and a backlog of a million took seconds
------------------------------------------------------------------------------
CREATE OR REPLACE VIEW @extschema@.queue_status AS
SELECT p.name AS provider,
	   p.paused,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'pending')
		   + coalesce(i.n, 0) AS pending,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'in_flight') AS in_flight,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'retrying') AS retrying,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'dead') AS dead,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'invalid') AS invalid,
	   pg_catalog.now() - LEAST(pg_catalog.min(o.created_at)
		   FILTER (WHERE o.state IN ('pending', 'retrying', 'in_flight')),
		   i.oldest) AS oldest_pending_age
FROM @extschema@.provider p
-- the inbox has no index: read once for all providers, not once each
LEFT JOIN (SELECT i.provider_id, pg_catalog.count(*) AS n,
				  pg_catalog.min(i.created_at) AS oldest
		   FROM @extschema@.inbox i GROUP BY i.provider_id) i
	   ON i.provider_id = p.provider_id
LEFT JOIN @extschema@.outbox o
	   ON o.provider_id = p.provider_id
	  AND o.state IN ('pending', 'in_flight', 'retrying', 'dead', 'invalid')
GROUP BY p.provider_id, p.name, p.paused, i.n, i.oldest;

CREATE OR REPLACE VIEW @extschema@.provider_health AS
SELECT p.name AS provider,
	   p.paused,
	   coalesce(h.breaker, 'closed') AS breaker,
	   h.breaker_since,
	   h.hold_until,
	   coalesce(h.requests_5m, 0) AS requests_5m,
	   coalesce(h.successes_5m, 0) AS successes_5m,
	   coalesce(h.failures_5m, '{}') AS failures_5m,
	   coalesce(h.requests_1h, 0) AS requests_1h,
	   coalesce(h.successes_1h, 0) AS successes_1h,
	   coalesce(h.failures_1h, '{}') AS failures_1h,
	   h.latency_p50_ms,
	   h.latency_p95_ms,
	   h.latency_p99_ms,
	   h.last_success_at,
	   h.last_error_class,
	   h.last_error,
	   h.last_error_at,
	   coalesce(h.in_flight, 0) AS in_flight,
	   pg_catalog.now() - LEAST(
		   (SELECT pg_catalog.min(o.created_at) FROM @extschema@.outbox o
			WHERE o.provider_id = p.provider_id
			  AND o.state IN ('pending', 'retrying', 'in_flight')),
		   i.oldest) AS oldest_pending_age
FROM @extschema@.provider p
LEFT JOIN @extschema@._provider_health() h ON h.provider_id = p.provider_id
-- the inbox has no index: read once for all providers, not once each
LEFT JOIN (SELECT i.provider_id, pg_catalog.min(i.created_at) AS oldest
		   FROM @extschema@.inbox i GROUP BY i.provider_id) i
	   ON i.provider_id = p.provider_id;

------------------------------------------------------------------------------
-- attach() warns once of the bindings whose tables are gone with shipments,
-- not once each: the log grew as the square of the tenants' tables dropped
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION @extschema@.attach(tbl regclass, provider text, key_column name DEFAULT NULL,
								   writeback jsonb DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pid integer;
	bid integer;
	keycol name := key_column;
	keytype text;
	wb jsonb := coalesce(writeback, '{}');
	opts jsonb := coalesce(options, '{}');
	f text;
	col text;
	coltype text;
	colcat "char";
	colnumeric boolean;
	colscale integer;
	sets text[] := '{}';
	wbcols text[] := '{}';
	render text;
	wbsql text;
	cancel_when text;
	trigargs text;
	relkind "char";
	adopt integer;
	gone integer[];
	oldwb jsonb;
	oldskip text[];
	newskip text[];
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.relkind INTO relkind FROM pg_class c WHERE c.oid = tbl;
	IF relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '"%" is not a table', tbl
			USING ERRCODE = 'wrong_object_type',
				  HINT = 'Attach an ordinary or partitioned table.';
	END IF;
	IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'The dispatcher reads and writes the table with its owner''s rights.';
	END IF;
	SELECT p.provider_id INTO pid FROM @extschema@.provider p WHERE p.name = attach.provider;
	IF pid IS NULL THEN
		RAISE EXCEPTION 'provider "%" does not exist', coalesce(provider, '')
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it first with shipsync.create_provider().';
	END IF;
	-- the lock CREATE TRIGGER takes below, taken before the check: a second
	-- attach() of the table waits here for the first, then sees its binding
	-- (each statement reads what was committed before it) and says so,
	-- rather than failing on the first one's trigger
	EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', tbl);
	IF EXISTS (SELECT 1 FROM @extschema@.binding b WHERE b.tbl = attach.tbl AND b.active) THEN
		RAISE EXCEPTION 'table % is already attached', tbl
			USING ERRCODE = 'duplicate_object',
				  DETAIL = format('Binding %s captures its orders for provider "%s".',
								  (SELECT b.binding_id FROM @extschema@.binding b WHERE b.tbl = attach.tbl),
								  (SELECT p.name FROM @extschema@.binding b JOIN @extschema@.provider p USING (provider_id)
								    WHERE b.tbl = attach.tbl)),
				  HINT = 'Call shipsync.detach() first to attach it again.';
	END IF;
	PERFORM @extschema@._check_options(opts, ARRAY['cancel_when', 'validate', 'tracking_provider', 'pii', 'grace', 'created_at_column', 'adopt'], 'attach');
	adopt := @extschema@._check_adopt(opts, pid, tbl);
	PERFORM @extschema@._check_attach_options(opts, pid);
	PERFORM @extschema@._check_reconcile_options(opts, tbl);
	IF current_setting('server_encoding') NOT IN ('UTF8', 'SQL_ASCII') THEN
		RAISE EXCEPTION 'database encoding % cannot be sent as JSON', current_setting('server_encoding')
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Carriers read JSON as UTF-8, and requests are rendered in the database encoding.',
				  HINT = 'Keep the orders in a UTF8 database.';
	END IF;

	-- the key: given, or the single-column primary key
	IF keycol IS NULL THEN
		SELECT a.attname INTO keycol
		FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE i.indrelid = tbl AND i.indisprimary AND i.indnatts = 1;
		IF keycol IS NULL THEN
			RAISE EXCEPTION 'table % has no single-column primary key', tbl
				USING ERRCODE = 'invalid_table_definition',
					  HINT = 'Pass key_column => the column that identifies an order.';
		END IF;
	END IF;
	keytype := @extschema@._key_type(tbl, keycol);
	IF keytype IS NULL THEN
		RAISE EXCEPTION 'column "%" of table % does not exist', keycol, tbl
			USING ERRCODE = 'undefined_column',
				  HINT = 'Pass key_column => the column that identifies an order.';
	END IF;

	-- write-back: shipment field -> order column
	IF jsonb_typeof(wb) <> 'object' THEN
		RAISE EXCEPTION 'writeback must be a JSON object of shipment fields to column names'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example {"tracking_number": "waybill_no"}.';
	END IF;
	FOR f, col IN SELECT key, value #>> '{}' FROM jsonb_each(wb) LOOP
		IF f NOT IN ('tracking_number', 'status', 'provider_shipment_id', 'label_url', 'fee_total') THEN
			RAISE EXCEPTION 'unknown write-back field "%"', f
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'Write-back fields: tracking_number, status, provider_shipment_id, label_url, fee_total.';
		END IF;
		SELECT format_type(a.atttypid, a.atttypmod) INTO coltype
		FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
		IF coltype IS NULL THEN
			RAISE EXCEPTION 'write-back column "%" of table % does not exist', coalesce(col, ''), tbl
				USING ERRCODE = 'undefined_column',
					  HINT = 'Add the column first, or fix the writeback map.';
		END IF;
		IF col = keycol THEN
			RAISE EXCEPTION 'the key column "%" cannot be a write-back column', col
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Write shipment fields into columns of their own.';
		END IF;
		-- a string type, or for fee_total numeric too (an integer, a float
		-- or money would round or blur the amount without a word)
		SELECT t.typcategory, t.oid = 'pg_catalog.numeric'::pg_catalog.regtype,
			   -- a numeric's declared scale, the column's or its domain's
			   -- (typmod: precision << 16 | scale, 11 bits signed, + 4)
			   CASE WHEN tm.m >= 4 THEN (((tm.m - 4) & 2047) # 1024) - 1024 END
		INTO colcat, colnumeric, colscale
		FROM pg_attribute a JOIN pg_type t
			ON t.oid = coalesce(nullif(
				(SELECT typbasetype FROM pg_type WHERE oid = a.atttypid), 0), a.atttypid)
		CROSS JOIN LATERAL (SELECT CASE WHEN a.atttypmod >= 0 THEN a.atttypmod
				ELSE (SELECT d.typtypmod FROM pg_type d WHERE d.oid = a.atttypid) END) AS tm(m)
		WHERE a.attrelid = tbl AND a.attname = col;
		IF f = 'fee_total' AND colnumeric AND colscale < 2 THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = format('fee_total is an amount with decimals (12.50, 3.125): a numeric of scale %s would round it.', colscale),
					  HINT = 'Use a numeric column of at least two decimals, numeric without a scale, or a text column.';
		END IF;
		IF colcat <> 'S' AND NOT (f = 'fee_total' AND colnumeric) THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = CASE WHEN f = 'fee_total' THEN 'fee_total is an amount with decimals (12.50, 3.125): a column of this type would round it or lose its exact value.'
								   ELSE format('%s is text.', f) END,
					  HINT = CASE WHEN f = 'fee_total' THEN 'Use a numeric or text column.'
								 ELSE 'Use a text or varchar column.' END;
		END IF;
		-- no explicit cast: assignment rules apply, so a tracking number too
		-- long for a varchar(n) column fails loudly instead of being cut (a
		-- fee_total into a string column is its text, as written; into a
		-- numeric of scale s only when it has no more decimals than s, never
		-- rounded: _fee_totals() tickets the order whose total does not fit)
		sets := sets || CASE WHEN f = 'fee_total' AND colcat = 'S'
							 THEN format('%I = COALESCE(shipsync_u.%I::pg_catalog.text, t.%I)', col, f, col)
							 WHEN f = 'fee_total' AND colscale IS NOT NULL
							 THEN format('%1$I = COALESCE(CASE WHEN pg_catalog.round(shipsync_u.fee_total, %2$s)'
										 ' OPERATOR(pg_catalog.=) shipsync_u.fee_total THEN shipsync_u.fee_total END, t.%1$I)',
										 col, colscale)
							 ELSE format('%I = COALESCE(shipsync_u.%I, t.%I)', col, f, col) END;
		wbcols := wbcols || col;
	END LOOP;

	cancel_when := opts->>'cancel_when';
	IF cancel_when IS NOT NULL AND cancel_when ~ ';' THEN
		RAISE EXCEPTION 'option "cancel_when" must be one boolean expression'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example "status = ''cancelled''".';
	END IF;
	-- the restricted grammar, printed back with pg_catalog's operators:
	-- no function, operator or cast of the caller's is ever planned here
	IF cancel_when IS NOT NULL THEN
		cancel_when := @extschema@._cancel_when_sql(cancel_when);
	END IF;

	-- The row itself and its write-back columns: the dispatcher prints the
	-- request's body from the row (src/body.c: as json_build_object() and
	-- row_to_json() would, with the type lookups once a batch rather than
	-- once a column of every row) and keeps the row's digest
	-- (shipsync._row_digest), what reconciliation compares the order with
	-- later.  The row is t.*, never a bare t: a column named t would be
	-- taken instead.  Operators and types qualified: the dispatcher, render_request() and
	-- this function run these as the table's owner, each with a search_path
	-- of its own.  (unnest of several arrays is grammar: pg_catalog's.)
	render := format(
		'SELECT shipsync_u.shipsync_id, t.%1$I IS NOT NULL AS found,'
		' %4$s AS is_cancel, t.*::%2$s AS shipsync_row, %5$L::pg_catalog.text[] AS shipsync_skip'
		' FROM unnest($1::pg_catalog.int8[], $2::pg_catalog.text[])'
		' AS shipsync_u(shipsync_id, shipsync_key)'
		' LEFT JOIN %2$s AS t ON t.%1$I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%3$s',
		keycol, tbl, keytype,
		CASE WHEN cancel_when IS NULL THEN 'false'
			 ELSE format('COALESCE((%s), false)', cancel_when) END,
		ARRAY(SELECT c FROM unnest(wbcols) AS c ORDER BY 1));

	IF array_length(sets, 1) > 0 THEN
		wbsql := format(
			'UPDATE %s AS t SET %s'
			' FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.text[],'
			' $4::pg_catalog.text[], $5::pg_catalog.text[], $6::pg_catalog.numeric[])'
			' AS shipsync_u(shipsync_key, provider_shipment_id, tracking_number, status, label_url, fee_total)'
			' WHERE t.%I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%s',
			tbl, array_to_string(sets, ', '), keycol, keytype);
	END IF;

	-- prove both statements against the table now, not in the dispatcher,
	-- and with the rights the dispatcher will have: the table owner's
	BEGIN
		PERFORM @extschema@._explain_as_owner(tbl, render, '{int8[], text[]}');
		IF wbsql IS NOT NULL THEN
			PERFORM @extschema@._explain_as_owner(tbl, wbsql,
				'{text[], text[], text[], text[], text[], numeric[]}');
		END IF;
	EXCEPTION
		-- row security forced on the owner: its own error says what to do
		WHEN object_not_in_prerequisite_state THEN
			RAISE;
		WHEN OTHERS THEN
			RAISE EXCEPTION 'cannot attach table %: %', tbl, SQLERRM
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Check option cancel_when and the writeback columns'' types.';
	END;

	SELECT x.writeback INTO oldwb FROM @extschema@.binding x WHERE x.tbl = attach.tbl;
	INSERT INTO @extschema@.binding AS b (tbl, provider_id, key_column, writeback, options, render_sql, writeback_sql)
	VALUES (attach.tbl, pid, keycol, wb, opts, render, wbsql)
	ON CONFLICT ON CONSTRAINT binding_tbl_key DO UPDATE
	   SET provider_id = EXCLUDED.provider_id, key_column = EXCLUDED.key_column,
		   writeback = EXCLUDED.writeback, options = EXCLUDED.options,
		   render_sql = EXCLUDED.render_sql, writeback_sql = EXCLUDED.writeback_sql,
		   active = true, created_at = now(), created_by = session_user
	RETURNING b.binding_id INTO bid;

	-- the table replaces the one of binding adopt: what pg_shipsync knows
	-- of its orders (shipments, intents, events, fees, tickets) is this
	-- binding's now, so an order shipped before is updated, not created
	-- again.  Otherwise, a binding of this provider with shipments whose
	-- table is gone is said: were this table its successor, every update
	-- of an order shipped before would ship it again.
	IF adopt IS NOT NULL THEN
		UPDATE @extschema@.shipment x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.outbox x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.inbox x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.tracking_event x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_line x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_sum x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_pull x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.exception_ticket x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.binding x SET options = x.options || jsonb_build_object('adopted_by', bid)
		 WHERE x.binding_id = adopt;
	ELSE
		-- in one warning, however many: a warning each, at every attach,
		-- grew the log as the square of the tenants' tables dropped
		SELECT pg_catalog.array_agg(b.binding_id ORDER BY b.binding_id DESC) INTO gone
		FROM @extschema@.binding b
		WHERE b.provider_id = pid AND NOT b.active AND b.binding_id <> bid
		  AND NOT b.options ? 'adopted_by'
		  AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = b.tbl)
		  AND EXISTS (SELECT 1 FROM @extschema@.shipment x WHERE x.binding_id = b.binding_id);
		IF pg_catalog.cardinality(gone) = 1 THEN
			RAISE WARNING 'binding % of provider "%" has shipments, and its table (oid %) is gone',
				gone[1], provider, (SELECT b.tbl::oid FROM @extschema@.binding b WHERE b.binding_id = gone[1])
				USING DETAIL = format('Table %s is binding %s: an update of an order shipped under binding %s would be sent as a create.',
									  tbl, bid, gone[1]),
					  HINT = format('If %s replaces that table, detach it and attach it again with options {"adopt": %s}.',
									tbl, gone[1]);
		ELSIF pg_catalog.cardinality(gone) > 1 THEN
			RAISE WARNING '% bindings of provider "%" have shipments, and their tables are gone',
				pg_catalog.cardinality(gone), provider
				USING DETAIL = format('Table %s is binding %s: an update of an order shipped under one of bindings %s would be sent as a create.',
									  tbl, bid,
									  pg_catalog.array_to_string(gone[1:10], ', ')
									  || CASE WHEN pg_catalog.cardinality(gone) > 10
											  THEN format(' or %s more', pg_catalog.cardinality(gone) - 10)
											  ELSE '' END),
					  HINT = format('If %s replaces one of those tables, detach it and attach it again with options {"adopt": <its binding_id>}; SELECT binding_id, created_at FROM shipsync.binding WHERE NOT active lists them.',
									tbl);
		END IF;
	END IF;

	-- attached again with other write-back columns: the digests of the
	-- orders shipped (shipment.content_digest) left the old ones out, and
	-- every order whose old column holds a value would read as changed
	-- since it was sent (address_changed_after_send).  The digest of an
	-- order unchanged since is made again without the new columns; an
	-- order changed since keeps its digest, and is still told.  The rows
	-- are read as the table's owner, as reconciliation reads them.
	oldskip := ARRAY(SELECT w.value #>> '{}' FROM jsonb_each(oldwb) w ORDER BY 1);
	newskip := ARRAY(SELECT c FROM unnest(wbcols) AS c ORDER BY 1);
	IF oldwb IS NOT NULL AND oldskip IS DISTINCT FROM newskip
	   AND EXISTS (SELECT 1 FROM @extschema@.shipment x
				   WHERE x.binding_id = bid AND x.content_digest IS NOT NULL) THEN
		EXECUTE format($d$
			UPDATE @extschema@.shipment s
			   SET content_digest = @extschema@._row_digest(t.r, $2)
			  FROM @extschema@._select_as_owner($1, $4, NULL, NULL) AS t(k text COLLATE "C", r %s)
			 WHERE s.binding_id = $5 AND s.order_key = t.k
			   AND s.content_digest = @extschema@._row_digest(t.r, $3)$d$, tbl)
		USING tbl, newskip, oldskip,
			  format('SELECT t.%I::pg_catalog.text, t.*::%s FROM %s t', keycol, tbl, tbl), bid;
	END IF;

	trigargs := array_to_string(ARRAY(SELECT quote_literal(x)
		FROM unnest(ARRAY[bid::text, pid::text, keycol::text] || wbcols) x), ', ');
	EXECUTE format('CREATE TRIGGER shipsync_capture AFTER INSERT OR UPDATE OR DELETE ON %s'
				   ' FOR EACH ROW EXECUTE FUNCTION @extschema@.capture(%s)', tbl, trigargs);
	IF opts->>'validate' = 'reject' THEN
		EXECUTE format('CREATE TRIGGER shipsync_validate AFTER INSERT OR UPDATE ON %s'
					   ' FOR EACH ROW EXECUTE FUNCTION @extschema@._validate(%L)', tbl, bid);
	END IF;
	-- no dispatcher serves this database: its orders would be captured and
	-- wait, with nothing in the log to say why.  An empty list (nothing is
	-- served anywhere) is taken as meant.  The list read as the launcher
	-- reads it (a quoted name may hold a comma).  (col, free again: the list.)
	col := coalesce(pg_catalog.current_setting('shipsync.databases', true), '');
	IF pg_catalog.btrim(col) <> '' AND NOT coalesce(@extschema@._database_listed(), false) THEN
		RAISE WARNING 'database "%" is not in shipsync.databases', pg_catalog.current_database()
			USING DETAIL = CASE WHEN @extschema@._database_listed() IS NULL
							   THEN format('Its orders are captured, and none is sent: shipsync.databases (%L) is not a valid list, and no database is served.', col)
							   ELSE format('Its orders are captured, and none is sent until a dispatcher serves it (shipsync.databases is %L).', col) END,
				  HINT = format('ALTER SYSTEM SET shipsync.databases = %L; SELECT pg_reload_conf();',
								col || ', ' || quote_ident(pg_catalog.current_database()));
	END IF;
	PERFORM @extschema@._wake(true);
	RETURN bid;
END
$$;
ALTER FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) SET shipsync.audit_action = 'attach';

------------------------------------------------------------------------------
-- The numeric column a binding writes fee_total back into, read in one place
------------------------------------------------------------------------------
-- _fee_totals() (a bill's total) and _quote_totals_unfit() (a quote's) each
-- read the binding's fee_total column and its scale from the catalogs with
-- the same joins: _fee_total_column() is that lookup, and both join it.
CREATE FUNCTION @extschema@._fee_total_column()
RETURNS TABLE (binding_id integer, active boolean, attname name, atttypid oid, typmod integer, scale integer)
LANGUAGE sql STABLE
BEGIN ATOMIC
	SELECT bb.binding_id, bb.active, a.attname, a.atttypid, tm.m,
		   CASE WHEN tm.m >= 4 THEN (((tm.m - 4) & 2047) # 1024) - 1024 END
	FROM @extschema@.binding bb
	JOIN pg_catalog.pg_attribute a
	  ON a.attrelid = bb.tbl AND a.attname = bb.writeback->>'fee_total' AND NOT a.attisdropped
	JOIN pg_catalog.pg_type ty
	  ON ty.oid = coalesce(nullif((SELECT d.typbasetype FROM pg_catalog.pg_type d
								   WHERE d.oid = a.atttypid), 0), a.atttypid)
	CROSS JOIN LATERAL (SELECT CASE WHEN a.atttypmod >= 0 THEN a.atttypmod
			ELSE (SELECT d.typtypmod FROM pg_catalog.pg_type d WHERE d.oid = a.atttypid) END) tm(m)
	WHERE ty.oid = 'pg_catalog.numeric'::pg_catalog.regtype;
END;
REVOKE ALL ON FUNCTION @extschema@._fee_total_column() FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@._fee_totals(tb integer[], tk text[])
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	-- one join and one aggregate for all the orders (a statement touches
	-- tens of thousands), min <> max for "more than one currency"
	RETURN QUERY
	WITH t AS (
		SELECT DISTINCT x.b, x.k FROM unnest(tb, tk) AS x(b, k) WHERE x.b IS NOT NULL),
	-- a quote counts while it is the quote of the order's shipment: an
	-- order shipped again under its key (its shipment row now holds
	-- another waybill) is quoted once, not twice; bills all count
	per AS MATERIALIZED (
		SELECT l.binding_id AS b, l.order_key AS k, l.provider_id AS pid, l.currency AS cur,
			   coalesce(sum(CASE WHEN l.fee_type = 'refund' THEN -abs(l.amount) ELSE l.amount END)
					FILTER (WHERE l.quote AND q.current), 0) AS est,
			   coalesce(sum(l.amount) FILTER (WHERE NOT l.quote AND l.state <> 'refunded'
											  AND l.fee_type <> 'refund'), 0) AS chg,
			   coalesce(sum(abs(l.amount)) FILTER (WHERE NOT l.quote
					AND (l.state = 'refunded' OR l.fee_type = 'refund')), 0) AS ref,
			   count(*) FILTER (WHERE l.quote AND q.current) AS nq,
			   count(*) FILTER (WHERE NOT l.quote) AS nb,
			   max(l.recorded_at) AS last
		FROM @extschema@.fee_line l
		JOIN t ON l.binding_id = t.b AND l.order_key = t.k
		-- (a line a corrected statement withdrew is billed no more: no
		-- bill line, so its order is unbilled again and takes its quote)
		CROSS JOIN LATERAL (
			SELECT NOT l.quote OR coalesce(
				(SELECT s.tracking_number FROM @extschema@.shipment s
				  WHERE s.binding_id = l.binding_id AND s.order_key = l.order_key
					AND s.provider_id = l.provider_id) = l.tracking_number, true) AS current) q
		WHERE NOT l.withdrawn
		GROUP BY l.binding_id, l.order_key, l.provider_id, l.currency),
	kept AS (
		INSERT INTO @extschema@.fee_sum AS fs (binding_id, order_key, provider_id, currency,
			estimated, charged, refunded, quote_lines, bill_lines, last_change)
		SELECT per.b, per.k, per.pid, per.cur, per.est, per.chg, per.ref, per.nq, per.nb, per.last
		FROM per
		ON CONFLICT ON CONSTRAINT fee_sum_pkey DO UPDATE SET
			estimated = EXCLUDED.estimated, charged = EXCLUDED.charged,
			refunded = EXCLUDED.refunded, quote_lines = EXCLUDED.quote_lines,
			bill_lines = EXCLUDED.bill_lines, last_change = EXCLUDED.last_change
		WHERE (fs.estimated, fs.charged, fs.refunded, fs.quote_lines, fs.bill_lines, fs.last_change)
			  IS DISTINCT FROM (EXCLUDED.estimated, EXCLUDED.charged, EXCLUDED.refunded,
								EXCLUDED.quote_lines, EXCLUDED.bill_lines, EXCLUDED.last_change)
		RETURNING 1),
	-- a sum whose provider and currency no line has any more; looked up
	-- in fee_line by its order index, not in per: an anti-join against the
	-- CTE scanned all of per for every sum (the planner cannot hash a
	-- generic plan's guess of one row), 8,000 comparisons a batch of 128
	gone AS (
		DELETE FROM @extschema@.fee_sum fs USING t
		 WHERE fs.binding_id = t.b AND fs.order_key = t.k
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.fee_line l
						   WHERE l.binding_id = fs.binding_id AND l.order_key = fs.order_key
							 AND l.provider_id = fs.provider_id AND l.currency = fs.currency
							 AND NOT l.withdrawn)
		RETURNING 1),
	ord AS (
		SELECT per.b, per.k, sum(per.nb) > 0 AS billed,
			   min(per.cur) FILTER (WHERE per.nb > 0) AS lo_b,
			   max(per.cur) FILTER (WHERE per.nb > 0) AS hi_b,
			   min(per.cur) FILTER (WHERE per.nq > 0) AS lo_q,
			   max(per.cur) FILTER (WHERE per.nq > 0) AS hi_q,
			   -- quoted in a currency (XXX: the answer named none)
			   min(per.cur) FILTER (WHERE per.nq > 0 AND per.cur <> 'XXX') AS lo_qc,
			   max(per.cur) FILTER (WHERE per.nq > 0 AND per.cur <> 'XXX') AS hi_qc,
			   sum(per.chg - per.ref) FILTER (WHERE per.nb > 0) AS tot_b,
			   sum(per.est) FILTER (WHERE per.nq > 0) AS tot_q
		FROM per GROUP BY per.b, per.k),
	-- one currency: the bill's lines in one, and a quote in a currency in
	-- that one too (a bill in dollars of a quote in yuan is no total)
	-- and a total its currency can have (a quote of JPY 1500.5 is none:
	-- bill lines with more decimals than their currency has are refused)
	tot AS (
		SELECT ord.b, ord.k, bb.provider_id AS pid, bb.writeback ? 'fee_total' AS wb,
			   x.agree AND coalesce(pg_catalog.round(x.total, cu.minor_units) = x.total, true) AS one,
			   x.agree, x.total, x.cur, cu.minor_units AS minor
		FROM ord JOIN @extschema@.binding bb ON bb.binding_id = ord.b
		CROSS JOIN LATERAL (SELECT CASE WHEN ord.billed THEN ord.tot_b ELSE ord.tot_q END AS total,
								   CASE WHEN ord.billed THEN ord.lo_b ELSE ord.lo_q END AS cur,
								   CASE WHEN ord.billed
										THEN ord.lo_b = ord.hi_b AND coalesce(ord.lo_qc = ord.lo_b AND ord.hi_qc = ord.lo_b, true)
										ELSE ord.lo_q = ord.hi_q END AS agree) x
		LEFT JOIN @extschema@.currency cu ON cu.code = x.cur
		UNION ALL
		-- an order whose every line was withdrawn costs nothing now
		SELECT t.b, t.k, bb.provider_id, bb.writeback ? 'fee_total', true, true, 0, NULL, NULL
		FROM t JOIN @extschema@.binding bb ON bb.binding_id = t.b
		WHERE NOT EXISTS (SELECT 1 FROM per WHERE per.b = t.b AND per.k = t.k)
		  AND EXISTS (SELECT 1 FROM @extschema@.fee_line l
					  WHERE l.binding_id = t.b AND l.order_key = t.k)),
	sh AS (
		UPDATE @extschema@.shipment s SET fee_total = tot.total, updated_at = now()
		  FROM tot
		 WHERE tot.one AND s.binding_id = tot.b AND s.order_key = tot.k
		   AND s.provider_id = tot.pid AND s.fee_total IS DISTINCT FROM tot.total
		RETURNING s.binding_id, s.order_key, s.fee_total, tot.wb),
	mixed AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, provider_id, detail)
		SELECT 'fee_currency_mixed', tot.b, tot.k, tot.pid,
			   CASE WHEN tot.agree
				   THEN format('the fees of order %s come to %s %s, more decimals than %s has (%s): its fee_total is left as it was',
							   tot.k, tot.total, tot.cur, tot.cur, tot.minor)
				   ELSE format('the fees of order %s are in %s: its fee_total is left as it was', tot.k,
							   (SELECT string_agg(DISTINCT per.cur, ', ') FROM per
								WHERE per.b = tot.b AND per.k = tot.k)) END
		FROM tot
		WHERE NOT tot.one
		  AND NOT EXISTS (SELECT 1 FROM @extschema@.exception_ticket x
						  WHERE x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
							AND x.order_key = tot.k AND x.resolved_at IS NULL)
		RETURNING 1),
	agreed AS (
		UPDATE @extschema@.exception_ticket x SET resolved_at = now(),
			   resolution = 'its fee lines are in one currency again'
		  FROM tot
		 WHERE tot.one AND x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
		   AND x.order_key = tot.k AND x.resolved_at IS NULL
		RETURNING 1),
	-- a total with more decimals than the order's numeric column holds
	-- (1.005 into a numeric(10,2)): never written rounded (the binding's
	-- write-back statement leaves the column), and the order gets a ticket
	scale AS (
		SELECT sh.binding_id, sh.order_key, sh.fee_total, c.attname, c.atttypid, c.typmod AS m,
			   c.scale AS s
		FROM sh
		JOIN @extschema@._fee_total_column() c ON c.binding_id = sh.binding_id
		WHERE sh.wb),
	unfit AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, detail)
		SELECT 'writeback_failed', scale.binding_id, scale.order_key,
			   format('write-back of the fee total failed: %s has more decimals than column %I (%s) holds; it was left as it was, not rounded',
					  scale.fee_total, scale.attname, pg_catalog.format_type(scale.atttypid, scale.m))
		FROM scale
		WHERE scale.s IS NOT NULL AND pg_catalog.round(scale.fee_total, scale.s) <> scale.fee_total
		RETURNING exception_ticket.binding_id, exception_ticket.order_key)
	-- (kept, gone, mixed, agreed and unfit run whether or not they are read;
	-- the orders ticketed are hashed once: estimated at a few rows, an anti
	-- join compared every order written with every one ticketed, 36 million
	-- comparisons for a statement of 6,000 of each.  No key is NULL.)
	SELECT 'writeback'::text, NULL::bigint, sh.binding_id, sh.order_key, sh.fee_total
	FROM sh WHERE sh.wb
	  AND (sh.binding_id, sh.order_key) NOT IN (SELECT u.binding_id, u.order_key FROM unfit u);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._quote_totals_unfit(bids integer[], oks text[], totals numeric[])
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	-- the columns of the batch's bindings once (materialized: inlined, the
	-- catalogs were read for each total), then each total against its own
	WITH col AS MATERIALIZED (
		SELECT c.binding_id AS b, c.attname, c.atttypid, c.typmod AS m, c.scale AS s
		FROM @extschema@._fee_total_column() c
		WHERE c.binding_id = ANY (bids) AND c.active)
	INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, detail)
	SELECT 'writeback_failed', u.b, u.k,
		   format('write-back of the fee total failed: %s has more decimals than column %I (%s) holds; it was left as it was, not rounded',
				  u.tot, col.attname, pg_catalog.format_type(col.atttypid, col.m))
	FROM unnest(bids, oks, totals) AS u(b, k, tot)
	JOIN col ON col.b = u.b
	WHERE col.s IS NOT NULL AND u.tot IS NOT NULL AND pg_catalog.round(u.tot, col.s) <> u.tot;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;

------------------------------------------------------------------------------
-- Fee lines of a multi-piece shipment's waybills: looked up line by line,
-- for the lines no shipment's tracking number matches only
------------------------------------------------------------------------------
-- _store_fees() and _match_parked_fees() added the pieces' rows to those of
-- the shipments' tracking numbers as a UNION, which the planner, once the
-- shipments were analyzed, guessed at two rows and joined to the lines in
-- a loop: a statement of 100,000 lines, every one an order's, ran for
-- minutes (4.7 s before).  The lines join the tracking numbers as before,
-- and only those left without one look among the pieces, through
-- _piece_shipment(), the lookup tracking uses.
CREATE OR REPLACE FUNCTION @extschema@._match_parked_fees(pids integer[], tns text[],
	OUT n bigint, OUT tb integer[], OUT tk text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	WITH want AS (
		SELECT DISTINCT f.provider_id, f.tracking_number
		FROM unnest(pids, tns) AS u(pid, tn)
		JOIN @extschema@.fee_line f ON f.binding_id IS NULL AND f.provider_id = u.pid
		 AND f.tracking_number = u.tn),
	main AS (
		SELECT DISTINCT ON (s.provider_id, s.tracking_number) s.provider_id, s.tracking_number,
			   s.binding_id, s.order_key
		FROM @extschema@.shipment s JOIN want w USING (provider_id, tracking_number)
		ORDER BY s.provider_id, s.tracking_number, s.created_at DESC),
	-- else another waybill of a multi-piece shipment (SF: child, return):
	-- its fee is the order's, looked up through the waybills' index for a
	-- number no shipment has as its tracking number only.  (The pieces'
	-- rows added to main's, as a UNION, were a set the planner guessed at
	-- two rows and joined in a loop: quadratic in the lines.)
	ship AS (
		SELECT w.provider_id, w.tracking_number,
			   coalesce(main.binding_id, p.binding_id) AS binding_id,
			   coalesce(main.order_key, p.order_key) AS order_key
		FROM want w
		LEFT JOIN main ON main.provider_id = w.provider_id AND main.tracking_number = w.tracking_number
		LEFT JOIN LATERAL (
			SELECT ps.binding_id, ps.order_key
			FROM @extschema@._piece_shipment(w.provider_id, w.tracking_number) ps
			WHERE main.provider_id IS NULL) p ON true
		WHERE main.provider_id IS NOT NULL OR p.binding_id IS NOT NULL),
	m AS (
		UPDATE @extschema@.fee_line f SET binding_id = ship.binding_id, order_key = ship.order_key
		  FROM ship
		 WHERE f.binding_id IS NULL AND f.provider_id = ship.provider_id
		   AND f.tracking_number = ship.tracking_number
		RETURNING f.binding_id, f.order_key)
	SELECT count(*), coalesce(array_agg(m.binding_id), '{}'), coalesce(array_agg(m.order_key), '{}')
	INTO n, tb, tk FROM m;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._store_fees(src text, stmt bigint, replaces bigint, who text,
	pids integer[], bids integer[], oks text[], tns text[], codes text[], amounts numeric[],
	currencies text[], fkeys text[], settlements text[], payers text[], weights numeric[],
	states text[], ats timestamptz[], held text[] DEFAULT NULL)
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	n_in bigint := coalesce(array_length(tns, 1), 0);
	n_new bigint;
	n_rev bigint;
	n_park bigint;
	n_matched bigint := 0;
	n_withdrawn bigint := 0;
	twice text;
	tb integer[];
	tk text[];
BEGIN
	PERFORM @extschema@._lock_fees(pids, tns, src = 'statement');

	SELECT m.n, m.tb, m.tk INTO n_matched, tb, tk
	FROM @extschema@._match_parked_fees(pids, tns) m;

	WITH inc AS (
		SELECT u.ord, u.pid, u.bid, u.ok, u.tn, u.code, u.amount, u.cur, u.fkey, u.settle,
			   u.payer, u.weight, u.st, u.at,
			   coalesce(tm.fee_type, ft.name, 'other') AS fee_type
		FROM unnest(pids, bids, oks, tns, codes, amounts, currencies, fkeys, settlements, payers,
					weights, states, ats)
			 WITH ORDINALITY AS u(pid, bid, ok, tn, code, amount, cur, fkey, settle, payer,
								  weight, st, at, ord)
		JOIN @extschema@.provider p ON p.provider_id = u.pid
		LEFT JOIN @extschema@.fee_type_map tm
			   ON tm.profile = coalesce(p.options->>'profile', p.dialect) AND tm.code = u.code
		LEFT JOIN @extschema@.fee_type ft ON ft.name = lower(u.code)),
	-- a line without a key of the carrier: the first of its type in this
	-- notice has key '', the next '#2', ...; the same line twice: the last.
	-- Grouped and sorted bytewise (COLLATE "C"): the groups are the same
	-- under any deterministic collation, and a statement sorts 100,000
	-- lines here twice, where strcoll() cost more than the rest of the sort
	keyed AS (
		SELECT DISTINCT ON (y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C") y.*
		FROM (SELECT inc.*,
					 CASE WHEN inc.fkey IS NOT NULL THEN inc.fkey
						  WHEN row_number() OVER w = 1 THEN ''
						  ELSE '#' || row_number() OVER w END AS k
			  FROM inc
			  WINDOW w AS (PARTITION BY inc.pid, inc.tn COLLATE "C", inc.fee_type COLLATE "C", inc.fkey IS NULL
						   ORDER BY inc.ord)) y
		ORDER BY y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C", y.ord DESC),
	-- a statement billing one carrier's line (its key) twice: refused
	-- below, since keyed keeps one of them and the statement's total
	-- counts both (a push sending a line again is the same line again)
	dup AS (
		SELECT pg_catalog.format('Waybill %s, fee type %s, key %s: %s lines, of %s.', i.tn, i.fee_type,
					pg_catalog.quote_literal(i.fkey), count(*),
					string_agg(i.amount::text || ' ' || coalesce(i.cur, ''), ', ' ORDER BY i.ord)) AS msg
		FROM inc i
		WHERE src = 'statement' AND i.fkey IS NOT NULL
		GROUP BY i.pid, i.tn, i.fee_type, i.fkey
		HAVING count(*) > 1
		LIMIT 1),
	main AS (
		SELECT DISTINCT ON (s.provider_id, s.tracking_number) s.provider_id, s.tracking_number,
			   s.binding_id, s.order_key
		FROM @extschema@.shipment s
		WHERE (s.provider_id, s.tracking_number) IN
			  (SELECT keyed.pid, keyed.tn FROM keyed WHERE keyed.bid IS NULL)
		ORDER BY s.provider_id, s.tracking_number, s.created_at DESC),
	-- each line's order: the caller's, else the newest shipment's of its
	-- waybill (a recycled number is the new parcel's), else, for a waybill
	-- no shipment has as its tracking number, the shipment that lists it
	-- among the other waybills of a multi-piece shipment (SF: child,
	-- return; the line keeps the piece's number), looked up through the
	-- waybills' index for those lines only; else none (parked).  Part of
	-- the line's identity.  (The pieces' rows added to main's, as a UNION,
	-- were a set the planner guessed at two rows once the shipments were
	-- analyzed, and joined in a loop: a statement of 100,000 lines ran for
	-- minutes.)
	kt AS (
		SELECT k.*, coalesce(k.bid, main.binding_id, pc.binding_id) AS tb,
			   coalesce(k.ok, main.order_key, pc.order_key) AS tok
		FROM keyed k
		LEFT JOIN main ON main.provider_id = k.pid AND main.tracking_number = k.tn
		LEFT JOIN LATERAL (
			SELECT ps.binding_id, ps.order_key FROM @extschema@._piece_shipment(k.pid, k.tn) ps
			WHERE k.bid IS NULL AND main.provider_id IS NULL) pc ON true),
	up AS (
		INSERT INTO @extschema@.fee_line AS f (provider_id, tracking_number, fee_type, fee_key,
			quote, binding_id, order_key, raw_type, amount, currency, settlement, payer,
			billed_weight_kg, state, source, statement_id, occurred_at, recorded_by)
		SELECT k.pid, k.tn, k.fee_type, k.k, src = 'create', k.tb, k.tok,
			   k.code, k.amount, k.cur, k.settle, k.payer, k.weight,
			   coalesce(k.st, CASE WHEN src = 'create' THEN 'estimated' ELSE 'charged' END),
			   src, stmt, k.at, who
		FROM kt k
		ORDER BY k.ord
		ON CONFLICT ON CONSTRAINT fee_line_identity DO UPDATE SET
			raw_type = EXCLUDED.raw_type, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
			settlement = coalesce(EXCLUDED.settlement, f.settlement),
			payer = coalesce(EXCLUDED.payer, f.payer),
			billed_weight_kg = coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg),
			state = EXCLUDED.state, source = EXCLUDED.source, statement_id = EXCLUDED.statement_id,
			occurred_at = coalesce(EXCLUDED.occurred_at, f.occurred_at),
			recorded_by = EXCLUDED.recorded_by, withdrawn = false,
			binding_id = coalesce(f.binding_id, EXCLUDED.binding_id),
			order_key = coalesce(f.order_key, EXCLUDED.order_key)
		-- a change, not older than what the line says now, and, but from
		-- a statement, not a notice seen before (a late duplicate of a
		-- revised line); own below takes, for statements, the lines they
		-- bill as they are
		WHERE (f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
			  IS DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency, EXCLUDED.state,
								coalesce(EXCLUDED.settlement, f.settlement),
								coalesce(EXCLUDED.payer, f.payer),
								coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg))
		  AND (EXCLUDED.occurred_at IS NULL OR f.occurred_at IS NULL
			   OR EXCLUDED.occurred_at >= f.occurred_at)
		  AND (src = 'statement'
			   OR NOT EXISTS (SELECT 1 FROM @extschema@.fee_line_history h
							  WHERE h.fee_line_id = f.fee_line_id
								AND (h.amount, h.currency, h.state, h.occurred_at)
									IS NOT DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency,
														  EXCLUDED.state, EXCLUDED.occurred_at)))
		RETURNING f.xmax = 0 AS inserted, f.binding_id, f.order_key),
	-- a statement's lines it bills as they are: its own from now on (no
	-- revision: nothing they say changes), so that a later correction
	-- withdraws them and "does the statement add up?" counts them.  After
	-- up has run to its end (the one-time filter reads all of it): up
	-- meeting a row own had changed in this command would be an error.
	-- Not a line the current statement of another month (or account)
	-- bills: that one bills it still, and this one listing it again is
	-- what "does it add up?" should show
	own AS (
		UPDATE @extschema@.fee_line f SET statement_id = stmt, withdrawn = false
		  FROM kt k
		 WHERE (SELECT count(*) FROM up) >= 0
		   AND src = 'statement' AND f.provider_id = k.pid AND f.tracking_number = k.tn
		   AND f.fee_type = k.fee_type AND f.fee_key = k.k AND NOT f.quote
		   AND f.binding_id IS NOT DISTINCT FROM k.tb AND f.order_key IS NOT DISTINCT FROM k.tok
		   AND f.statement_id IS DISTINCT FROM stmt
		   AND (f.statement_id IS NULL
				OR f.statement_id NOT IN (SELECT e.statement_id
										  FROM @extschema@.statement e
										  JOIN @extschema@.statement c ON c.statement_id = stmt
										  WHERE e.provider_id = c.provider_id AND e.superseded_by IS NULL
											AND (e.period, e.account) IS DISTINCT FROM (c.period, c.account)))
		   -- (what it says: a line older than the line's current version,
		   -- which up left as it was, is not the statement's)
		   AND NOT (f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
				   IS DISTINCT FROM (k.amount, k.cur, coalesce(k.st, 'charged'),
									 coalesce(k.settle, f.settlement),
									 coalesce(k.payer, f.payer),
									 coalesce(k.weight, f.billed_weight_kg))
		RETURNING f.fee_line_id, f.binding_id, f.order_key),
	-- of those, the lines a correction had withdrawn: billed again, so
	-- their orders' totals change (fee_line read here is as it was before)
	back AS (
		SELECT own.binding_id, own.order_key FROM own
		JOIN @extschema@.fee_line x ON x.fee_line_id = own.fee_line_id
		WHERE x.withdrawn AND own.binding_id IS NOT NULL),
	-- a corrected statement: what an earlier statement of its period and
	-- account billed and this one does not (neither among its lines nor,
	-- held, among those it skipped) is withdrawn (0, adjusted), or, when
	-- the current statement of another month or account billed it before
	-- (the carrier listed it in both), goes back to what that one says
	wd AS (
		UPDATE @extschema@.fee_line f
		   SET (amount, currency, state, statement_id, withdrawn) =
			   (SELECT coalesce(b.amount, 0), coalesce(b.currency, f.currency),
					   coalesce(b.state, 'adjusted'), coalesce(b.statement_id, stmt),
					   coalesce(b.withdrawn, true)
				FROM (SELECT 1) one
				LEFT JOIN (SELECT h.amount, h.currency, h.state, h.statement_id, h.withdrawn
						   FROM @extschema@.fee_line_history h
						   JOIN @extschema@.statement e ON e.statement_id = h.statement_id
						   JOIN @extschema@.statement c ON c.statement_id = stmt
						   WHERE h.fee_line_id = f.fee_line_id AND e.superseded_by IS NULL
							 AND (e.period, e.account) IS DISTINCT FROM (c.period, c.account)
						   ORDER BY h.revision DESC LIMIT 1) b ON true),
			   source = 'statement', recorded_by = who
		 WHERE replaces IS NOT NULL AND NOT f.quote
		   AND f.statement_id IN (SELECT e.statement_id
								  FROM @extschema@.statement e
								  JOIN @extschema@.statement c ON c.statement_id = stmt
								  WHERE e.provider_id = c.provider_id AND e.period = c.period
									AND e.account IS NOT DISTINCT FROM c.account
									AND e.statement_id <> stmt)
		   AND NOT f.withdrawn
		   AND NOT EXISTS (SELECT 1 FROM kt k
						   WHERE k.pid = f.provider_id AND k.tn = f.tracking_number
							 AND k.fee_type = f.fee_type AND k.k = f.fee_key
							 AND k.tb IS NOT DISTINCT FROM f.binding_id
							 AND k.tok IS NOT DISTINCT FROM f.order_key)
		   AND (held IS NULL OR (array_position(held, NULL) IS NULL
								 AND f.tracking_number <> ALL (held)))
		RETURNING f.binding_id, f.order_key)
	SELECT (SELECT dup.msg FROM dup), (SELECT count(*) FROM up WHERE up.inserted),
		   (SELECT count(*) FROM up WHERE NOT up.inserted),
		   (SELECT count(*) FROM up WHERE up.binding_id IS NULL),
		   (SELECT count(*) FROM wd),
		   coalesce(tb, '{}') || coalesce((SELECT array_agg(x.binding_id) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd
				 UNION ALL SELECT back.binding_id, back.order_key FROM back) x), '{}'),
		   coalesce(tk, '{}') || coalesce((SELECT array_agg(x.order_key) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd
				 UNION ALL SELECT back.binding_id, back.order_key FROM back) x), '{}')
	INTO twice, n_new, n_rev, n_park, n_withdrawn, tb, tk;
	IF twice IS NOT NULL THEN
		RAISE EXCEPTION 'statement of provider "%" bills one line twice',
			(SELECT p.name FROM @extschema@.provider p WHERE p.provider_id = pids[1])
			USING ERRCODE = 'SS400', DETAIL = twice,
				  HINT = 'Nothing of this statement was stored. A carrier''s key names one line of a waybill''s fee type: fix the statement, or leave the key column out to store every line as its own.';
	END IF;

	kind := 'new'; n := n_new; RETURN NEXT;
	kind := 'revised'; n := n_rev; RETURN NEXT;
	kind := 'duplicate'; n := n_in - n_new - n_rev; RETURN NEXT;
	kind := 'unmatched'; n := n_park; RETURN NEXT;
	kind := 'matched'; n := n_matched; RETURN NEXT;
	kind := 'withdrawn'; n := n_withdrawn; RETURN NEXT;
	n := NULL;

	RETURN QUERY SELECT * FROM @extschema@._fee_totals(tb, tk);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._match_parked_fees_all()
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
	pids integer[];
	tns text[];
	m record;
BEGIN
	SELECT array_agg(x.provider_id), array_agg(x.tracking_number) INTO pids, tns
	FROM (SELECT DISTINCT f.provider_id, f.tracking_number
		  FROM @extschema@.fee_line f
		  WHERE f.binding_id IS NULL
			AND (EXISTS (SELECT 1 FROM @extschema@.shipment s
						 WHERE s.provider_id = f.provider_id AND s.tracking_number = f.tracking_number)
				 -- or a piece of a multi-piece shipment (SF: child, return)
				 OR EXISTS (SELECT 1 FROM @extschema@._piece_shipment(f.provider_id, f.tracking_number)))) x;
	IF tns IS NULL THEN
		RETURN;
	END IF;
	PERFORM @extschema@._lock_fees(pids, tns, false);
	SELECT * INTO m FROM @extschema@._match_parked_fees(pids, tns);
	RETURN QUERY SELECT * FROM @extschema@._fee_totals(m.tb, m.tk);
END
$$;

------------------------------------------------------------------------------
-- Reconciliation reads a created_at_column of type timestamp or date in the
-- database's time zone (the owner's statement runs in UTC)
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION @extschema@._reconcile_crm(bid integer, full_pass boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b record;
	keytype text;
	skip text[];
	grace interval;
	born text;
	born_type regtype;
	trk integer;
	st record;
	h xid8;
	hage integer;
	eff text;
	tn_bad text;
	st_bad text;
	src text;
	orders text;
	ks text[];
	gone text[];
	from_rows text;
BEGIN
	SELECT x.* INTO b FROM @extschema@.binding x WHERE x.binding_id = bid;
	-- the key's type (its base type, without a length: _key_type()), with the
	-- key column's own collation when it has one: an order key of ours
	-- (COLLATE "C") cast to it then compares as the column does, and can use
	-- its index
	SELECT @extschema@._key_type(b.tbl, b.key_column)
		   || CASE WHEN co.oid IS NULL THEN '' ELSE format(' COLLATE %I.%I', cn.nspname, co.collname) END
	  INTO keytype
	  FROM pg_attribute a
	  LEFT JOIN pg_collation co ON co.oid = a.attcollation
	  LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
	 WHERE a.attrelid = b.tbl AND a.attname = b.key_column AND a.attnum > 0 AND NOT a.attisdropped;
	skip := ARRAY(SELECT w.value #>> '{}' FROM jsonb_each(b.writeback) w ORDER BY 1);
	grace := coalesce((b.options->>'grace')::interval, interval '10 minutes');
	-- a timestamp or date column holds the order's local time: read in this
	-- session's time zone (the reconciliation worker's is the database's, the
	-- one the CRM's sessions write it in), not in the UTC the owner's
	-- statement runs in
	SELECT a.atttypid INTO born_type FROM pg_attribute a
	 WHERE a.attrelid = b.tbl AND a.attname = b.options->>'created_at_column'
	   AND a.attnum > 0 AND NOT a.attisdropped;
	born := CASE WHEN b.options ? 'created_at_column' AND born_type IN ('timestamp'::regtype, 'date'::regtype)
					 THEN format('(t.%I::timestamp AT TIME ZONE %L)', b.options->>'created_at_column',
								 current_setting('TimeZone'))
				 WHEN b.options ? 'created_at_column'
					 THEN format('t.%I::timestamptz', b.options->>'created_at_column')
				 WHEN current_setting('track_commit_timestamp')::boolean
					 THEN 'pg_xact_commit_timestamp(t.xmin)'
				 ELSE 'NULL::timestamptz' END;
	SELECT p.provider_id INTO trk FROM @extschema@.provider p WHERE p.name = b.options->>'tracking_provider';
	-- the status written back is the tracking provider's once it reports one
	eff := CASE WHEN trk IS NULL THEN 's.status'
				ELSE 'CASE WHEN tr.status IS NOT NULL AND tr.status <> ''pending'' THEN tr.status ELSE s.status END' END;
	tn_bad := CASE WHEN b.writeback ? 'tracking_number'
				   THEN '(s.tracking_number IS NOT NULL AND t.o_tn COLLATE "C" IS DISTINCT FROM s.tracking_number)'
				   ELSE 'false' END;
	st_bad := CASE WHEN b.writeback ? 'status'
				   THEN format('(s.order_key IS NOT NULL AND t.o_status IS DISTINCT FROM %s)', eff)
				   ELSE 'false' END;

	-- where the last pass stopped; rows of transactions from h on are read
	-- again by the next one
	INSERT INTO @extschema@.reconcile_state (binding_id) VALUES (bid) ON CONFLICT DO NOTHING;
	SELECT x.* INTO st FROM @extschema@.reconcile_state x WHERE x.binding_id = bid FOR UPDATE;
	h := pg_snapshot_xmin(pg_current_snapshot());
	IF st.horizon IS NOT NULL THEN
		hage := age(((st.horizon::text::numeric % 4294967296)::text)::xid);
	END IF;
	-- an horizon 2^30 transactions old is too old to compare xids with
	full_pass := full_pass OR hage IS NULL OR hage < 0 OR hage > 1073741824;

	IF full_pass THEN
		src := format('%s t', b.tbl);
	ELSE
		-- the orders whose side of ours changed: the owner's statement adds
		-- the rows changed since ($2) and reads the rows of both ($1)
		ks := ARRAY(
			SELECT s.order_key FROM @extschema@.shipment s
			 WHERE s.binding_id = bid AND age(s.xmin) <= hage
			UNION
			SELECT o.order_key FROM @extschema@.outbox o
			 WHERE o.binding_id = bid AND (o.state IN ('dead', 'invalid') OR o.error_class = 'nothing_to_send')
			   AND age(o.xmin) <= hage
			UNION
			SELECT x.order_key FROM @extschema@.exception_ticket x
			 WHERE x.binding_id = bid AND x.order_key IS NOT NULL
			   AND (x.resolved_at IS NULL OR age(x.xmin) <= hage)
			UNION
			SELECT r.order_key FROM @extschema@.reconcile_seen r WHERE r.binding_id = bid);
		src := format($src$(SELECT DISTINCT c.k FROM (
				SELECT t.%1$I::text COLLATE "C" AS k FROM %2$s t WHERE age(t.xmin) <= $2
				UNION ALL
				SELECT u.k FROM unnest($1) AS u(k)) c) c
			JOIN %2$s t ON t.%1$I = c.k::%3$s$src$, b.key_column, b.tbl, keytype);
	END IF;
	-- what the comparison needs of each order row, read as the table's owner
	orders := format('SELECT t.%I::text, %s, %s, %s, t.*::%s FROM %s',
		b.key_column,
		CASE WHEN b.writeback ? 'tracking_number' THEN format('t.%I::text', b.writeback->>'tracking_number') ELSE 'NULL::text' END,
		CASE WHEN b.writeback ? 'status' THEN format('t.%I::text', b.writeback->>'status') ELSE 'NULL::text' END,
		born, b.tbl, src);
	-- each row with its digest, made as the rows are read (a whole row is
	-- never kept).  A full pass joins them as they come, planned for as many
	-- rows as the table holds (the function's support estimates it); an
	-- incremental one keeps them first, and ANALYZEs them: a few orders
	-- changed since the last pass, or a bulk import of a million
	IF full_pass THEN
		from_rows := $r$@extschema@._select_digests_as_owner($5, $6, $7, $8, $9)
			AS t(k text COLLATE "C", o_tn text, o_status text, born timestamptz, digest bigint)$r$;
	ELSE
		TRUNCATE pg_temp.recon_orders;
		INSERT INTO pg_temp.recon_orders (k, o_tn, o_status, born, digest)
		SELECT t.k, t.o_tn, t.o_status, t.born, t.digest
		  FROM @extschema@._select_digests_as_owner(b.tbl, orders, ks, hage, skip)
			   AS t(k text COLLATE "C", o_tn text, o_status text, born timestamptz, digest bigint);
		ANALYZE pg_temp.recon_orders;
		from_rows := 'pg_temp.recon_orders t';
	END IF;

	EXECUTE format($q$
		WITH act AS MATERIALIZED (
			SELECT o.order_key FROM @extschema@.outbox o
			 WHERE o.binding_id = $1 AND o.state IN ('pending', 'retrying', 'in_flight')
			UNION
			SELECT i.order_key FROM @extschema@.inbox i WHERE i.binding_id = $1),
		x AS MATERIALIZED (
			SELECT y.* FROM (
				SELECT t.k,
					   s.order_key IS NOT NULL AS shipped,
					   s.provider_shipment_id AS s_id, s.tracking_number AS s_tn, %1$s AS s_status,
					   s.content_digest AS s_digest,
					   %2$s AS tn_bad, %3$s AS st_bad,
					   (s.content_digest IS NOT NULL AND s.status <> 'cancelled'
						AND t.digest <> s.content_digest) AS addr_bad,
					   t.o_tn, t.o_status,
					   coalesce(t.born, r.first_seen_at) AS born,
					   r.order_key IS NOT NULL AS seen
				  FROM %7$s
				  LEFT JOIN @extschema@.shipment s
					ON s.binding_id = $1 AND s.provider_id = $2 AND s.order_key = t.k
				  %4$s
				  LEFT JOIN @extschema@.reconcile_seen r
					ON r.binding_id = $1 AND r.order_key = t.k) y
			 WHERE NOT y.shipped OR y.tn_bad OR y.st_bad OR y.addr_bad),
		seen AS (
			INSERT INTO @extschema@.reconcile_seen (binding_id, order_key)
			SELECT $1, x.k FROM x WHERE NOT x.shipped AND NOT x.seen
			ON CONFLICT DO NOTHING)
		INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
			chk, facts, detail)
		SELECT f.kind, $2, $1, x.k, x.s_tn, 'crm', f.facts, f.detail
		  FROM x
		  LEFT JOIN LATERAL (
			  SELECT o.id, o.state, o.error_class, o.last_error FROM @extschema@.outbox o
			   WHERE NOT x.shipped AND o.binding_id = $1 AND o.order_key = x.k
				 AND (o.state IN ('dead', 'invalid') OR o.error_class = 'nothing_to_send')
			   ORDER BY o.id DESC LIMIT 1) so ON true
		 CROSS JOIN LATERAL (VALUES
			('not_sent',
			 NOT x.shipped AND x.born < now() - $3 AND x.k NOT IN (SELECT act.order_key FROM act)
			 AND so.error_class IS DISTINCT FROM 'nothing_to_send',
			 jsonb_build_object('check', 'crm',
				'reason', coalesce(so.state, 'not_captured'), 'outbox_id', so.id,
				'last_error', so.last_error, 'since', x.born),
			 format('order %%s of %%s has no shipment and nothing on its way (%%s)', x.k, $4,
				CASE so.state WHEN 'dead' THEN 'its intent is dead: ' || coalesce(so.last_error, '')
							  WHEN 'invalid' THEN 'its intent is invalid: ' || coalesce(so.last_error, '')
							  ELSE 'no intent was captured' END)),
			('tracking_mismatch', x.shipped AND x.tn_bad,
			 jsonb_build_object('check', 'crm', 'column', %5$L, 'order', x.o_tn, 'shipment', x.s_tn),
			 format('order %%s of %%s: column %%s holds %%s, the shipment''s tracking number is %%s',
				x.k, $4, %5$L, coalesce(x.o_tn, 'NULL'), x.s_tn)),
			('status_mismatch', x.shipped AND x.st_bad,
			 jsonb_build_object('check', 'crm', 'column', %6$L, 'order', x.o_status, 'shipment', x.s_status),
			 format('order %%s of %%s: column %%s holds %%s, the shipment''s status is %%s',
				x.k, $4, %6$L, coalesce(x.o_status, 'NULL'), x.s_status)),
			('address_changed_after_send',
			 x.shipped AND x.addr_bad AND x.k NOT IN (SELECT act.order_key FROM act),
			 jsonb_build_object('check', 'crm', 'shipment_id', x.s_id),
			 format('order %%s of %%s changed after its shipment %%s was sent, and no update is on its way',
				x.k, $4, coalesce(x.s_id, '')))
		 ) AS f(kind, hit, facts, detail)
		 WHERE f.hit
		ON CONFLICT DO NOTHING
	$q$, eff, tn_bad, st_bad,
		CASE WHEN trk IS NULL THEN ''
			 ELSE format('LEFT JOIN @extschema@.shipment tr ON tr.binding_id = $1 AND tr.provider_id = %s AND tr.order_key = t.k',
						 trk) END,
		b.writeback->>'tracking_number', b.writeback->>'status', from_rows)
	USING bid, b.provider_id, grace, b.tbl::text, b.tbl, orders, ks, hage, skip;

	-- orders no longer waiting: shipped, or gone (whose keys the owner's
	-- table no longer holds)
	ks := ARRAY(SELECT r.order_key FROM @extschema@.reconcile_seen r WHERE r.binding_id = bid);
	IF cardinality(ks) > 0 THEN
		gone := ARRAY(SELECT g.k FROM @extschema@._select_as_owner(b.tbl, format(
				'SELECT u.k FROM unnest($1) AS u(k) WHERE NOT EXISTS (SELECT 1 FROM %s t WHERE t.%I = u.k::%s)',
				b.tbl, b.key_column, keytype), ks, NULL) AS g(k text));
		DELETE FROM @extschema@.reconcile_seen r
		 WHERE r.binding_id = bid
		   AND (EXISTS (SELECT 1 FROM @extschema@.shipment s
						 WHERE s.binding_id = bid AND s.provider_id = b.provider_id
						   AND s.order_key = r.order_key)
				OR r.order_key = ANY (gone));
	END IF;

	UPDATE @extschema@.reconcile_state x
	   SET horizon = h, pass_at = now(),
		   full_at = CASE WHEN full_pass THEN now() ELSE x.full_at END
	 WHERE x.binding_id = bid;
END
$$;

------------------------------------------------------------------------------
-- The daily reconciliation run at the clock's time on a day the clocks change
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION @extschema@._reconcile_schedule(at_minute integer, crm boolean)
RETURNS timestamptz
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	today timestamptz;
	last_daily timestamptz;
BEGIN
	PERFORM pg_advisory_xact_lock(hashtext('shipsync reconcile'));
	IF crm AND EXISTS (SELECT 1 FROM @extschema@.binding b WHERE b.active)
	   AND NOT EXISTS (SELECT 1 FROM @extschema@.reconcile_run x
					    WHERE x.kind = 'crm' AND x.state IN ('pending', 'pulling', 'comparing')) THEN
		INSERT INTO @extschema@.reconcile_run (kind, trigger, window_start, requested_by)
		VALUES ('crm', 'interval', now(), 'reconcile');
	END IF;
	IF at_minute IS NULL OR at_minute < 0 THEN
		RETURN NULL;
	END IF;
	-- the time of the clock, today: midnight plus the minutes is another
	-- time on a day the clocks change (12:30 for 11:30 when they went
	-- forward at 02:00; 00:30 tomorrow for 23:30, a day without its run)
	today := (date_trunc('day', localtimestamp) + make_interval(mins => at_minute))
			 AT TIME ZONE current_setting('TimeZone');
	IF now() < today THEN
		RETURN today;
	END IF;
	SELECT max(x.started_at) INTO last_daily FROM @extschema@.reconcile_run x
	 WHERE x.trigger = 'daily';
	-- the very first daily run starts within the hour after its time (not
	-- at once when the extension is installed at noon); a day missed later
	-- (the server was down) is caught up once
	IF (last_daily IS NULL AND now() < today + interval '1 hour') OR last_daily < today THEN
		IF EXISTS (SELECT 1 FROM @extschema@.reconcile_run x
					WHERE x.kind = 'full' AND x.provider_id IS NULL
					  AND x.state IN ('pending', 'pulling', 'comparing')) THEN
			RETURN now() + interval '1 minute';
		END IF;
		IF EXISTS (SELECT 1 FROM @extschema@.binding b
					 JOIN @extschema@.provider p ON p.provider_id = b.provider_id
					WHERE b.active AND NOT p.paused) THEN
			INSERT INTO @extschema@.reconcile_run (kind, trigger, window_start, requested_by)
			VALUES ('full', 'daily', now() - interval '2 days', 'reconcile');
		END IF;
	END IF;
	RETURN (date_trunc('day', localtimestamp) + interval '1 day' + make_interval(mins => at_minute))
		   AT TIME ZONE current_setting('TimeZone');
END
$$;

------------------------------------------------------------------------------
-- A time of a carrier's list without a zone is the provider's (option
-- timezone), not the dispatcher's session's
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION @extschema@._reconcile_page(run bigint, pid integer, requests integer,
	ids text[], refs text[], tns text[], statuses text[], updated text[],
	fees text[], done boolean)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	prof text;
	tz text;
	n bigint;
	p jsonb;
BEGIN
	-- the provider's zone, of its times without one (option timezone, else
	-- its dialect's: Asia/Shanghai for kuaidi100 and sf_express, as in
	-- src/dialects/)
	SELECT coalesce(x.options->>'profile', x.dialect),
		   coalesce(x.options->>'timezone',
					CASE WHEN x.dialect IN ('kuaidi100', 'sf_express') THEN 'Asia/Shanghai' ELSE 'UTC' END)
	  INTO prof, tz
	  FROM @extschema@.provider x WHERE x.provider_id = pid;
	-- (each raw status is mapped once, not once per shipment; a shipment
	-- listed twice keeps its first row)
	WITH u AS (
		SELECT u.* FROM unnest(ids, refs, tns, statuses, updated, fees) AS u(id, ref, tn, st, at, fees)
		 WHERE u.id IS NOT NULL),
	m AS (
		SELECT d.st, cs.name, cs.rank
		  FROM (SELECT DISTINCT u.st FROM u WHERE u.st IS NOT NULL) d
		  LEFT JOIN LATERAL (
			  SELECT sm.status FROM @extschema@.status_map sm
			   WHERE sm.profile = prof AND sm.raw_status = d.st AND sm.pattern IS NULL
			   ORDER BY sm.priority DESC LIMIT 1) x ON true
		  LEFT JOIN @extschema@.canonical_status cs
			ON cs.name = coalesce(x.status, CASE WHEN prof = 'generic' THEN lower(d.st) END)),
	ins AS (
		INSERT INTO @extschema@.carrier_snapshot AS c (run_id, provider_id, shipment_id, order_ref,
			tracking_number, status, canonical, canonical_rank, updated_at, fees)
		SELECT run, pid, u.id, u.ref, u.tn, u.st,
			   CASE WHEN u.st IS NOT NULL THEN coalesce(m.name, 'unknown') END,
			   CASE WHEN u.st IS NOT NULL THEN coalesce(m.rank, -1) END,
			   -- a time without a zone is the provider's, not this session's
			   CASE WHEN u.at ~ E'^\\d{4}-\\d\\d-\\d\\d([Tt ]\\d\\d:\\d\\d(:\\d\\d(\\.\\d+)?)?)?$'
					THEN u.at::timestamp AT TIME ZONE tz ELSE u.at::timestamptz END,
			   u.fees::jsonb
		  FROM u LEFT JOIN m ON m.st = u.st
		ON CONFLICT (run_id, provider_id, shipment_id) DO NOTHING
		RETURNING 1)
	SELECT count(*) INTO n FROM ins;

	UPDATE @extschema@.reconcile_run x
	   SET pages = x.pages + requests,
		   shipments_seen = x.shipments_seen + n,
		   pulls = jsonb_set(x.pulls, ARRAY[pid::text], (x.pulls->(pid::text)) || jsonb_build_object(
			   'pages', coalesce((x.pulls->(pid::text)->>'pages')::integer, 0) + requests,
			   'rows', coalesce((x.pulls->(pid::text)->>'rows')::bigint, 0) + n,
			   'state', CASE WHEN done THEN 'done' ELSE 'pulling' END))
	 WHERE x.run_id = run AND x.state = 'pulling' AND x.pulls ? (pid::text)
	RETURNING x.pulls INTO p;
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	RETURN @extschema@._reconcile_pulled(run, p);
END
$$;

------------------------------------------------------------------------------

-- attach() and the fee totals name the columns of their ON CONFLICT, not
-- the constraints: an index a DBA renamed broke them
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION @extschema@.attach(tbl regclass, provider text, key_column name DEFAULT NULL,
								   writeback jsonb DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pid integer;
	bid integer;
	keycol name := key_column;
	keytype text;
	wb jsonb := coalesce(writeback, '{}');
	opts jsonb := coalesce(options, '{}');
	f text;
	col text;
	coltype text;
	colcat "char";
	colnumeric boolean;
	colscale integer;
	sets text[] := '{}';
	wbcols text[] := '{}';
	render text;
	wbsql text;
	cancel_when text;
	trigargs text;
	relkind "char";
	adopt integer;
	gone integer[];
	oldwb jsonb;
	oldskip text[];
	newskip text[];
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.relkind INTO relkind FROM pg_class c WHERE c.oid = tbl;
	IF relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '"%" is not a table', tbl
			USING ERRCODE = 'wrong_object_type',
				  HINT = 'Attach an ordinary or partitioned table.';
	END IF;
	IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'The dispatcher reads and writes the table with its owner''s rights.';
	END IF;
	SELECT p.provider_id INTO pid FROM @extschema@.provider p WHERE p.name = attach.provider;
	IF pid IS NULL THEN
		RAISE EXCEPTION 'provider "%" does not exist', coalesce(provider, '')
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it first with shipsync.create_provider().';
	END IF;
	-- the lock CREATE TRIGGER takes below, taken before the check: a second
	-- attach() of the table waits here for the first, then sees its binding
	-- (each statement reads what was committed before it) and says so,
	-- rather than failing on the first one's trigger
	EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', tbl);
	IF EXISTS (SELECT 1 FROM @extschema@.binding b WHERE b.tbl = attach.tbl AND b.active) THEN
		RAISE EXCEPTION 'table % is already attached', tbl
			USING ERRCODE = 'duplicate_object',
				  DETAIL = format('Binding %s captures its orders for provider "%s".',
								  (SELECT b.binding_id FROM @extschema@.binding b WHERE b.tbl = attach.tbl),
								  (SELECT p.name FROM @extschema@.binding b JOIN @extschema@.provider p USING (provider_id)
								    WHERE b.tbl = attach.tbl)),
				  HINT = 'Call shipsync.detach() first to attach it again.';
	END IF;
	PERFORM @extschema@._check_options(opts, ARRAY['cancel_when', 'validate', 'tracking_provider', 'pii', 'grace', 'created_at_column', 'adopt'], 'attach');
	adopt := @extschema@._check_adopt(opts, pid, tbl);
	PERFORM @extschema@._check_attach_options(opts, pid);
	PERFORM @extschema@._check_reconcile_options(opts, tbl);
	IF current_setting('server_encoding') NOT IN ('UTF8', 'SQL_ASCII') THEN
		RAISE EXCEPTION 'database encoding % cannot be sent as JSON', current_setting('server_encoding')
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Carriers read JSON as UTF-8, and requests are rendered in the database encoding.',
				  HINT = 'Keep the orders in a UTF8 database.';
	END IF;

	-- the key: given, or the single-column primary key
	IF keycol IS NULL THEN
		SELECT a.attname INTO keycol
		FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE i.indrelid = tbl AND i.indisprimary AND i.indnatts = 1;
		IF keycol IS NULL THEN
			RAISE EXCEPTION 'table % has no single-column primary key', tbl
				USING ERRCODE = 'invalid_table_definition',
					  HINT = 'Pass key_column => the column that identifies an order.';
		END IF;
	END IF;
	keytype := @extschema@._key_type(tbl, keycol);
	IF keytype IS NULL THEN
		RAISE EXCEPTION 'column "%" of table % does not exist', keycol, tbl
			USING ERRCODE = 'undefined_column',
				  HINT = 'Pass key_column => the column that identifies an order.';
	END IF;

	-- write-back: shipment field -> order column
	IF jsonb_typeof(wb) <> 'object' THEN
		RAISE EXCEPTION 'writeback must be a JSON object of shipment fields to column names'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example {"tracking_number": "waybill_no"}.';
	END IF;
	FOR f, col IN SELECT key, value #>> '{}' FROM jsonb_each(wb) LOOP
		IF f NOT IN ('tracking_number', 'status', 'provider_shipment_id', 'label_url', 'fee_total') THEN
			RAISE EXCEPTION 'unknown write-back field "%"', f
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'Write-back fields: tracking_number, status, provider_shipment_id, label_url, fee_total.';
		END IF;
		SELECT format_type(a.atttypid, a.atttypmod) INTO coltype
		FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
		IF coltype IS NULL THEN
			RAISE EXCEPTION 'write-back column "%" of table % does not exist', coalesce(col, ''), tbl
				USING ERRCODE = 'undefined_column',
					  HINT = 'Add the column first, or fix the writeback map.';
		END IF;
		IF col = keycol THEN
			RAISE EXCEPTION 'the key column "%" cannot be a write-back column', col
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Write shipment fields into columns of their own.';
		END IF;
		-- a string type, or for fee_total numeric too (an integer, a float
		-- or money would round or blur the amount without a word)
		SELECT t.typcategory, t.oid = 'pg_catalog.numeric'::pg_catalog.regtype,
			   -- a numeric's declared scale, the column's or its domain's
			   -- (typmod: precision << 16 | scale, 11 bits signed, + 4)
			   CASE WHEN tm.m >= 4 THEN (((tm.m - 4) & 2047) # 1024) - 1024 END
		INTO colcat, colnumeric, colscale
		FROM pg_attribute a JOIN pg_type t
			ON t.oid = coalesce(nullif(
				(SELECT typbasetype FROM pg_type WHERE oid = a.atttypid), 0), a.atttypid)
		CROSS JOIN LATERAL (SELECT CASE WHEN a.atttypmod >= 0 THEN a.atttypmod
				ELSE (SELECT d.typtypmod FROM pg_type d WHERE d.oid = a.atttypid) END) AS tm(m)
		WHERE a.attrelid = tbl AND a.attname = col;
		IF f = 'fee_total' AND colnumeric AND colscale < 2 THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = format('fee_total is an amount with decimals (12.50, 3.125): a numeric of scale %s would round it.', colscale),
					  HINT = 'Use a numeric column of at least two decimals, numeric without a scale, or a text column.';
		END IF;
		IF colcat <> 'S' AND NOT (f = 'fee_total' AND colnumeric) THEN
			RAISE EXCEPTION 'write-back column "%" has type %, which cannot hold %', col, coltype, f
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = CASE WHEN f = 'fee_total' THEN 'fee_total is an amount with decimals (12.50, 3.125): a column of this type would round it or lose its exact value.'
								   ELSE format('%s is text.', f) END,
					  HINT = CASE WHEN f = 'fee_total' THEN 'Use a numeric or text column.'
								 ELSE 'Use a text or varchar column.' END;
		END IF;
		-- no explicit cast: assignment rules apply, so a tracking number too
		-- long for a varchar(n) column fails loudly instead of being cut (a
		-- fee_total into a string column is its text, as written; into a
		-- numeric of scale s only when it has no more decimals than s, never
		-- rounded: _fee_totals() tickets the order whose total does not fit)
		sets := sets || CASE WHEN f = 'fee_total' AND colcat = 'S'
							 THEN format('%I = COALESCE(shipsync_u.%I::pg_catalog.text, t.%I)', col, f, col)
							 WHEN f = 'fee_total' AND colscale IS NOT NULL
							 THEN format('%1$I = COALESCE(CASE WHEN pg_catalog.round(shipsync_u.fee_total, %2$s)'
										 ' OPERATOR(pg_catalog.=) shipsync_u.fee_total THEN shipsync_u.fee_total END, t.%1$I)',
										 col, colscale)
							 ELSE format('%I = COALESCE(shipsync_u.%I, t.%I)', col, f, col) END;
		wbcols := wbcols || col;
	END LOOP;

	cancel_when := opts->>'cancel_when';
	IF cancel_when IS NOT NULL AND cancel_when ~ ';' THEN
		RAISE EXCEPTION 'option "cancel_when" must be one boolean expression'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example "status = ''cancelled''".';
	END IF;
	-- the restricted grammar, printed back with pg_catalog's operators:
	-- no function, operator or cast of the caller's is ever planned here
	IF cancel_when IS NOT NULL THEN
		cancel_when := @extschema@._cancel_when_sql(cancel_when);
	END IF;

	-- The row itself and its write-back columns: the dispatcher prints the
	-- request's body from the row (src/body.c: as json_build_object() and
	-- row_to_json() would, with the type lookups once a batch rather than
	-- once a column of every row) and keeps the row's digest
	-- (shipsync._row_digest), what reconciliation compares the order with
	-- later.  The row is t.*, never a bare t: a column named t would be
	-- taken instead.  Operators and types qualified: the dispatcher, render_request() and
	-- this function run these as the table's owner, each with a search_path
	-- of its own.  (unnest of several arrays is grammar: pg_catalog's.)
	render := format(
		'SELECT shipsync_u.shipsync_id, t.%1$I IS NOT NULL AS found,'
		' %4$s AS is_cancel, t.*::%2$s AS shipsync_row, %5$L::pg_catalog.text[] AS shipsync_skip'
		' FROM unnest($1::pg_catalog.int8[], $2::pg_catalog.text[])'
		' AS shipsync_u(shipsync_id, shipsync_key)'
		' LEFT JOIN %2$s AS t ON t.%1$I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%3$s',
		keycol, tbl, keytype,
		CASE WHEN cancel_when IS NULL THEN 'false'
			 ELSE format('COALESCE((%s), false)', cancel_when) END,
		ARRAY(SELECT c FROM unnest(wbcols) AS c ORDER BY 1));

	IF array_length(sets, 1) > 0 THEN
		wbsql := format(
			'UPDATE %s AS t SET %s'
			' FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.text[],'
			' $4::pg_catalog.text[], $5::pg_catalog.text[], $6::pg_catalog.numeric[])'
			' AS shipsync_u(shipsync_key, provider_shipment_id, tracking_number, status, label_url, fee_total)'
			' WHERE t.%I OPERATOR(pg_catalog.=) shipsync_u.shipsync_key::%s',
			tbl, array_to_string(sets, ', '), keycol, keytype);
	END IF;

	-- prove both statements against the table now, not in the dispatcher,
	-- and with the rights the dispatcher will have: the table owner's
	BEGIN
		PERFORM @extschema@._explain_as_owner(tbl, render, '{int8[], text[]}');
		IF wbsql IS NOT NULL THEN
			PERFORM @extschema@._explain_as_owner(tbl, wbsql,
				'{text[], text[], text[], text[], text[], numeric[]}');
		END IF;
	EXCEPTION
		-- row security forced on the owner: its own error says what to do
		WHEN object_not_in_prerequisite_state THEN
			RAISE;
		WHEN OTHERS THEN
			RAISE EXCEPTION 'cannot attach table %: %', tbl, SQLERRM
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Check option cancel_when and the writeback columns'' types.';
	END;

	SELECT x.writeback INTO oldwb FROM @extschema@.binding x WHERE x.tbl = attach.tbl;
	-- the conflict named by its column, not by the constraint (a DBA may
	-- rename the index), in dynamic SQL: column tbl is also a parameter
	EXECUTE $i$
		INSERT INTO @extschema@.binding AS b (tbl, provider_id, key_column, writeback, options, render_sql, writeback_sql)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (tbl) DO UPDATE
		   SET provider_id = EXCLUDED.provider_id, key_column = EXCLUDED.key_column,
			   writeback = EXCLUDED.writeback, options = EXCLUDED.options,
			   render_sql = EXCLUDED.render_sql, writeback_sql = EXCLUDED.writeback_sql,
			   active = true, created_at = now(), created_by = session_user
		RETURNING b.binding_id$i$
		INTO bid USING attach.tbl, pid, keycol, wb, opts, render, wbsql;

	-- the table replaces the one of binding adopt: what pg_shipsync knows
	-- of its orders (shipments, intents, events, fees, tickets) is this
	-- binding's now, so an order shipped before is updated, not created
	-- again.  Otherwise, a binding of this provider with shipments whose
	-- table is gone is said: were this table its successor, every update
	-- of an order shipped before would ship it again.
	IF adopt IS NOT NULL THEN
		UPDATE @extschema@.shipment x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.outbox x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.inbox x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.tracking_event x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_line x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_sum x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.fee_pull x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.exception_ticket x SET binding_id = bid WHERE x.binding_id = adopt;
		UPDATE @extschema@.binding x SET options = x.options || jsonb_build_object('adopted_by', bid)
		 WHERE x.binding_id = adopt;
	ELSE
		-- in one warning, however many: a warning each, at every attach,
		-- grew the log as the square of the tenants' tables dropped
		SELECT pg_catalog.array_agg(b.binding_id ORDER BY b.binding_id DESC) INTO gone
		FROM @extschema@.binding b
		WHERE b.provider_id = pid AND NOT b.active AND b.binding_id <> bid
		  AND NOT b.options ? 'adopted_by'
		  AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = b.tbl)
		  AND EXISTS (SELECT 1 FROM @extschema@.shipment x WHERE x.binding_id = b.binding_id);
		IF pg_catalog.cardinality(gone) = 1 THEN
			RAISE WARNING 'binding % of provider "%" has shipments, and its table (oid %) is gone',
				gone[1], provider, (SELECT b.tbl::oid FROM @extschema@.binding b WHERE b.binding_id = gone[1])
				USING DETAIL = format('Table %s is binding %s: an update of an order shipped under binding %s would be sent as a create.',
									  tbl, bid, gone[1]),
					  HINT = format('If %s replaces that table, detach it and attach it again with options {"adopt": %s}.',
									tbl, gone[1]);
		ELSIF pg_catalog.cardinality(gone) > 1 THEN
			RAISE WARNING '% bindings of provider "%" have shipments, and their tables are gone',
				pg_catalog.cardinality(gone), provider
				USING DETAIL = format('Table %s is binding %s: an update of an order shipped under one of bindings %s would be sent as a create.',
									  tbl, bid,
									  pg_catalog.array_to_string(gone[1:10], ', ')
									  || CASE WHEN pg_catalog.cardinality(gone) > 10
											  THEN format(' or %s more', pg_catalog.cardinality(gone) - 10)
											  ELSE '' END),
					  HINT = format('If %s replaces one of those tables, detach it and attach it again with options {"adopt": <its binding_id>}; SELECT binding_id, created_at FROM shipsync.binding WHERE NOT active lists them.',
									tbl);
		END IF;
	END IF;

	-- attached again with other write-back columns: the digests of the
	-- orders shipped (shipment.content_digest) left the old ones out, and
	-- every order whose old column holds a value would read as changed
	-- since it was sent (address_changed_after_send).  The digest of an
	-- order unchanged since is made again without the new columns; an
	-- order changed since keeps its digest, and is still told.  The rows
	-- are read as the table's owner, as reconciliation reads them.
	oldskip := ARRAY(SELECT w.value #>> '{}' FROM jsonb_each(oldwb) w ORDER BY 1);
	newskip := ARRAY(SELECT c FROM unnest(wbcols) AS c ORDER BY 1);
	IF oldwb IS NOT NULL AND oldskip IS DISTINCT FROM newskip
	   AND EXISTS (SELECT 1 FROM @extschema@.shipment x
				   WHERE x.binding_id = bid AND x.content_digest IS NOT NULL) THEN
		EXECUTE format($d$
			UPDATE @extschema@.shipment s
			   SET content_digest = @extschema@._row_digest(t.r, $2)
			  FROM @extschema@._select_as_owner($1, $4, NULL, NULL) AS t(k text COLLATE "C", r %s)
			 WHERE s.binding_id = $5 AND s.order_key = t.k
			   AND s.content_digest = @extschema@._row_digest(t.r, $3)$d$, tbl)
		USING tbl, newskip, oldskip,
			  format('SELECT t.%I::pg_catalog.text, t.*::%s FROM %s t', keycol, tbl, tbl), bid;
	END IF;

	trigargs := array_to_string(ARRAY(SELECT quote_literal(x)
		FROM unnest(ARRAY[bid::text, pid::text, keycol::text] || wbcols) x), ', ');
	EXECUTE format('CREATE TRIGGER shipsync_capture AFTER INSERT OR UPDATE OR DELETE ON %s'
				   ' FOR EACH ROW EXECUTE FUNCTION @extschema@.capture(%s)', tbl, trigargs);
	IF opts->>'validate' = 'reject' THEN
		EXECUTE format('CREATE TRIGGER shipsync_validate AFTER INSERT OR UPDATE ON %s'
					   ' FOR EACH ROW EXECUTE FUNCTION @extschema@._validate(%L)', tbl, bid);
	END IF;
	-- no dispatcher serves this database: its orders would be captured and
	-- wait, with nothing in the log to say why.  An empty list (nothing is
	-- served anywhere) is taken as meant.  The list read as the launcher
	-- reads it (a quoted name may hold a comma).  (col, free again: the list.)
	col := coalesce(pg_catalog.current_setting('shipsync.databases', true), '');
	IF pg_catalog.btrim(col) <> '' AND NOT coalesce(@extschema@._database_listed(), false) THEN
		RAISE WARNING 'database "%" is not in shipsync.databases', pg_catalog.current_database()
			USING DETAIL = CASE WHEN @extschema@._database_listed() IS NULL
							   THEN format('Its orders are captured, and none is sent: shipsync.databases (%L) is not a valid list, and no database is served.', col)
							   ELSE format('Its orders are captured, and none is sent until a dispatcher serves it (shipsync.databases is %L).', col) END,
				  HINT = format('ALTER SYSTEM SET shipsync.databases = %L; SELECT pg_reload_conf();',
								col || ', ' || quote_ident(pg_catalog.current_database()));
	END IF;
	PERFORM @extschema@._wake(true);
	RETURN bid;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._store_fees(src text, stmt bigint, replaces bigint, who text,
	pids integer[], bids integer[], oks text[], tns text[], codes text[], amounts numeric[],
	currencies text[], fkeys text[], settlements text[], payers text[], weights numeric[],
	states text[], ats timestamptz[], held text[] DEFAULT NULL)
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	n_in bigint := coalesce(array_length(tns, 1), 0);
	n_new bigint;
	n_rev bigint;
	n_park bigint;
	n_matched bigint := 0;
	n_withdrawn bigint := 0;
	twice text;
	tb integer[];
	tk text[];
BEGIN
	PERFORM @extschema@._lock_fees(pids, tns, src = 'statement');

	SELECT m.n, m.tb, m.tk INTO n_matched, tb, tk
	FROM @extschema@._match_parked_fees(pids, tns) m;

	WITH inc AS (
		SELECT u.ord, u.pid, u.bid, u.ok, u.tn, u.code, u.amount, u.cur, u.fkey, u.settle,
			   u.payer, u.weight, u.st, u.at,
			   coalesce(tm.fee_type, ft.name, 'other') AS fee_type
		FROM unnest(pids, bids, oks, tns, codes, amounts, currencies, fkeys, settlements, payers,
					weights, states, ats)
			 WITH ORDINALITY AS u(pid, bid, ok, tn, code, amount, cur, fkey, settle, payer,
								  weight, st, at, ord)
		JOIN @extschema@.provider p ON p.provider_id = u.pid
		LEFT JOIN @extschema@.fee_type_map tm
			   ON tm.profile = coalesce(p.options->>'profile', p.dialect) AND tm.code = u.code
		LEFT JOIN @extschema@.fee_type ft ON ft.name = lower(u.code)),
	-- a line without a key of the carrier: the first of its type in this
	-- notice has key '', the next '#2', ...; the same line twice: the last.
	-- Grouped and sorted bytewise (COLLATE "C"): the groups are the same
	-- under any deterministic collation, and a statement sorts 100,000
	-- lines here twice, where strcoll() cost more than the rest of the sort
	keyed AS (
		SELECT DISTINCT ON (y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C") y.*
		FROM (SELECT inc.*,
					 CASE WHEN inc.fkey IS NOT NULL THEN inc.fkey
						  WHEN row_number() OVER w = 1 THEN ''
						  ELSE '#' || row_number() OVER w END AS k
			  FROM inc
			  WINDOW w AS (PARTITION BY inc.pid, inc.tn COLLATE "C", inc.fee_type COLLATE "C", inc.fkey IS NULL
						   ORDER BY inc.ord)) y
		ORDER BY y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C", y.ord DESC),
	-- a statement billing one carrier's line (its key) twice: refused
	-- below, since keyed keeps one of them and the statement's total
	-- counts both (a push sending a line again is the same line again)
	dup AS (
		SELECT pg_catalog.format('Waybill %s, fee type %s, key %s: %s lines, of %s.', i.tn, i.fee_type,
					pg_catalog.quote_literal(i.fkey), count(*),
					string_agg(i.amount::text || ' ' || coalesce(i.cur, ''), ', ' ORDER BY i.ord)) AS msg
		FROM inc i
		WHERE src = 'statement' AND i.fkey IS NOT NULL
		GROUP BY i.pid, i.tn, i.fee_type, i.fkey
		HAVING count(*) > 1
		LIMIT 1),
	main AS (
		SELECT DISTINCT ON (s.provider_id, s.tracking_number) s.provider_id, s.tracking_number,
			   s.binding_id, s.order_key
		FROM @extschema@.shipment s
		WHERE (s.provider_id, s.tracking_number) IN
			  (SELECT keyed.pid, keyed.tn FROM keyed WHERE keyed.bid IS NULL)
		ORDER BY s.provider_id, s.tracking_number, s.created_at DESC),
	-- each line's order: the caller's, else the newest shipment's of its
	-- waybill (a recycled number is the new parcel's), else, for a waybill
	-- no shipment has as its tracking number, the shipment that lists it
	-- among the other waybills of a multi-piece shipment (SF: child,
	-- return; the line keeps the piece's number), looked up through the
	-- waybills' index for those lines only; else none (parked).  Part of
	-- the line's identity.  (The pieces' rows added to main's, as a UNION,
	-- were a set the planner guessed at two rows once the shipments were
	-- analyzed, and joined in a loop: a statement of 100,000 lines ran for
	-- minutes.)
	kt AS (
		SELECT k.*, coalesce(k.bid, main.binding_id, pc.binding_id) AS tb,
			   coalesce(k.ok, main.order_key, pc.order_key) AS tok
		FROM keyed k
		LEFT JOIN main ON main.provider_id = k.pid AND main.tracking_number = k.tn
		LEFT JOIN LATERAL (
			SELECT ps.binding_id, ps.order_key FROM @extschema@._piece_shipment(k.pid, k.tn) ps
			WHERE k.bid IS NULL AND main.provider_id IS NULL) pc ON true),
	up AS (
		INSERT INTO @extschema@.fee_line AS f (provider_id, tracking_number, fee_type, fee_key,
			quote, binding_id, order_key, raw_type, amount, currency, settlement, payer,
			billed_weight_kg, state, source, statement_id, occurred_at, recorded_by)
		SELECT k.pid, k.tn, k.fee_type, k.k, src = 'create', k.tb, k.tok,
			   k.code, k.amount, k.cur, k.settle, k.payer, k.weight,
			   coalesce(k.st, CASE WHEN src = 'create' THEN 'estimated' ELSE 'charged' END),
			   src, stmt, k.at, who
		FROM kt k
		ORDER BY k.ord
		ON CONFLICT (provider_id, tracking_number, fee_type, fee_key, quote, binding_id, order_key) DO UPDATE SET
			raw_type = EXCLUDED.raw_type, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
			settlement = coalesce(EXCLUDED.settlement, f.settlement),
			payer = coalesce(EXCLUDED.payer, f.payer),
			billed_weight_kg = coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg),
			state = EXCLUDED.state, source = EXCLUDED.source, statement_id = EXCLUDED.statement_id,
			occurred_at = coalesce(EXCLUDED.occurred_at, f.occurred_at),
			recorded_by = EXCLUDED.recorded_by, withdrawn = false,
			binding_id = coalesce(f.binding_id, EXCLUDED.binding_id),
			order_key = coalesce(f.order_key, EXCLUDED.order_key)
		-- a change, not older than what the line says now, and, but from
		-- a statement, not a notice seen before (a late duplicate of a
		-- revised line); own below takes, for statements, the lines they
		-- bill as they are
		WHERE (f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
			  IS DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency, EXCLUDED.state,
								coalesce(EXCLUDED.settlement, f.settlement),
								coalesce(EXCLUDED.payer, f.payer),
								coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg))
		  AND (EXCLUDED.occurred_at IS NULL OR f.occurred_at IS NULL
			   OR EXCLUDED.occurred_at >= f.occurred_at)
		  AND (src = 'statement'
			   OR NOT EXISTS (SELECT 1 FROM @extschema@.fee_line_history h
							  WHERE h.fee_line_id = f.fee_line_id
								AND (h.amount, h.currency, h.state, h.occurred_at)
									IS NOT DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency,
														  EXCLUDED.state, EXCLUDED.occurred_at)))
		RETURNING f.xmax = 0 AS inserted, f.binding_id, f.order_key),
	-- a statement's lines it bills as they are: its own from now on (no
	-- revision: nothing they say changes), so that a later correction
	-- withdraws them and "does the statement add up?" counts them.  After
	-- up has run to its end (the one-time filter reads all of it): up
	-- meeting a row own had changed in this command would be an error.
	-- Not a line the current statement of another month (or account)
	-- bills: that one bills it still, and this one listing it again is
	-- what "does it add up?" should show
	own AS (
		UPDATE @extschema@.fee_line f SET statement_id = stmt, withdrawn = false
		  FROM kt k
		 WHERE (SELECT count(*) FROM up) >= 0
		   AND src = 'statement' AND f.provider_id = k.pid AND f.tracking_number = k.tn
		   AND f.fee_type = k.fee_type AND f.fee_key = k.k AND NOT f.quote
		   AND f.binding_id IS NOT DISTINCT FROM k.tb AND f.order_key IS NOT DISTINCT FROM k.tok
		   AND f.statement_id IS DISTINCT FROM stmt
		   AND (f.statement_id IS NULL
				OR f.statement_id NOT IN (SELECT e.statement_id
										  FROM @extschema@.statement e
										  JOIN @extschema@.statement c ON c.statement_id = stmt
										  WHERE e.provider_id = c.provider_id AND e.superseded_by IS NULL
											AND (e.period, e.account) IS DISTINCT FROM (c.period, c.account)))
		   -- (what it says: a line older than the line's current version,
		   -- which up left as it was, is not the statement's)
		   AND NOT (f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
				   IS DISTINCT FROM (k.amount, k.cur, coalesce(k.st, 'charged'),
									 coalesce(k.settle, f.settlement),
									 coalesce(k.payer, f.payer),
									 coalesce(k.weight, f.billed_weight_kg))
		RETURNING f.fee_line_id, f.binding_id, f.order_key),
	-- of those, the lines a correction had withdrawn: billed again, so
	-- their orders' totals change (fee_line read here is as it was before)
	back AS (
		SELECT own.binding_id, own.order_key FROM own
		JOIN @extschema@.fee_line x ON x.fee_line_id = own.fee_line_id
		WHERE x.withdrawn AND own.binding_id IS NOT NULL),
	-- a corrected statement: what an earlier statement of its period and
	-- account billed and this one does not (neither among its lines nor,
	-- held, among those it skipped) is withdrawn (0, adjusted), or, when
	-- the current statement of another month or account billed it before
	-- (the carrier listed it in both), goes back to what that one says
	wd AS (
		UPDATE @extschema@.fee_line f
		   SET (amount, currency, state, statement_id, withdrawn) =
			   (SELECT coalesce(b.amount, 0), coalesce(b.currency, f.currency),
					   coalesce(b.state, 'adjusted'), coalesce(b.statement_id, stmt),
					   coalesce(b.withdrawn, true)
				FROM (SELECT 1) one
				LEFT JOIN (SELECT h.amount, h.currency, h.state, h.statement_id, h.withdrawn
						   FROM @extschema@.fee_line_history h
						   JOIN @extschema@.statement e ON e.statement_id = h.statement_id
						   JOIN @extschema@.statement c ON c.statement_id = stmt
						   WHERE h.fee_line_id = f.fee_line_id AND e.superseded_by IS NULL
							 AND (e.period, e.account) IS DISTINCT FROM (c.period, c.account)
						   ORDER BY h.revision DESC LIMIT 1) b ON true),
			   source = 'statement', recorded_by = who
		 WHERE replaces IS NOT NULL AND NOT f.quote
		   AND f.statement_id IN (SELECT e.statement_id
								  FROM @extschema@.statement e
								  JOIN @extschema@.statement c ON c.statement_id = stmt
								  WHERE e.provider_id = c.provider_id AND e.period = c.period
									AND e.account IS NOT DISTINCT FROM c.account
									AND e.statement_id <> stmt)
		   AND NOT f.withdrawn
		   AND NOT EXISTS (SELECT 1 FROM kt k
						   WHERE k.pid = f.provider_id AND k.tn = f.tracking_number
							 AND k.fee_type = f.fee_type AND k.k = f.fee_key
							 AND k.tb IS NOT DISTINCT FROM f.binding_id
							 AND k.tok IS NOT DISTINCT FROM f.order_key)
		   AND (held IS NULL OR (array_position(held, NULL) IS NULL
								 AND f.tracking_number <> ALL (held)))
		RETURNING f.binding_id, f.order_key)
	SELECT (SELECT dup.msg FROM dup), (SELECT count(*) FROM up WHERE up.inserted),
		   (SELECT count(*) FROM up WHERE NOT up.inserted),
		   (SELECT count(*) FROM up WHERE up.binding_id IS NULL),
		   (SELECT count(*) FROM wd),
		   coalesce(tb, '{}') || coalesce((SELECT array_agg(x.binding_id) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd
				 UNION ALL SELECT back.binding_id, back.order_key FROM back) x), '{}'),
		   coalesce(tk, '{}') || coalesce((SELECT array_agg(x.order_key) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd
				 UNION ALL SELECT back.binding_id, back.order_key FROM back) x), '{}')
	INTO twice, n_new, n_rev, n_park, n_withdrawn, tb, tk;
	IF twice IS NOT NULL THEN
		RAISE EXCEPTION 'statement of provider "%" bills one line twice',
			(SELECT p.name FROM @extschema@.provider p WHERE p.provider_id = pids[1])
			USING ERRCODE = 'SS400', DETAIL = twice,
				  HINT = 'Nothing of this statement was stored. A carrier''s key names one line of a waybill''s fee type: fix the statement, or leave the key column out to store every line as its own.';
	END IF;

	kind := 'new'; n := n_new; RETURN NEXT;
	kind := 'revised'; n := n_rev; RETURN NEXT;
	kind := 'duplicate'; n := n_in - n_new - n_rev; RETURN NEXT;
	kind := 'unmatched'; n := n_park; RETURN NEXT;
	kind := 'matched'; n := n_matched; RETURN NEXT;
	kind := 'withdrawn'; n := n_withdrawn; RETURN NEXT;
	n := NULL;

	RETURN QUERY SELECT * FROM @extschema@._fee_totals(tb, tk);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._fee_totals(tb integer[], tk text[])
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	-- one join and one aggregate for all the orders (a statement touches
	-- tens of thousands), min <> max for "more than one currency"
	RETURN QUERY
	WITH t AS (
		SELECT DISTINCT x.b, x.k FROM unnest(tb, tk) AS x(b, k) WHERE x.b IS NOT NULL),
	-- a quote counts while it is the quote of the order's shipment: an
	-- order shipped again under its key (its shipment row now holds
	-- another waybill) is quoted once, not twice; bills all count
	per AS MATERIALIZED (
		SELECT l.binding_id AS b, l.order_key AS k, l.provider_id AS pid, l.currency AS cur,
			   coalesce(sum(CASE WHEN l.fee_type = 'refund' THEN -abs(l.amount) ELSE l.amount END)
					FILTER (WHERE l.quote AND q.current), 0) AS est,
			   coalesce(sum(l.amount) FILTER (WHERE NOT l.quote AND l.state <> 'refunded'
											  AND l.fee_type <> 'refund'), 0) AS chg,
			   coalesce(sum(abs(l.amount)) FILTER (WHERE NOT l.quote
					AND (l.state = 'refunded' OR l.fee_type = 'refund')), 0) AS ref,
			   count(*) FILTER (WHERE l.quote AND q.current) AS nq,
			   count(*) FILTER (WHERE NOT l.quote) AS nb,
			   max(l.recorded_at) AS last
		FROM @extschema@.fee_line l
		JOIN t ON l.binding_id = t.b AND l.order_key = t.k
		-- (a line a corrected statement withdrew is billed no more: no
		-- bill line, so its order is unbilled again and takes its quote)
		CROSS JOIN LATERAL (
			SELECT NOT l.quote OR coalesce(
				(SELECT s.tracking_number FROM @extschema@.shipment s
				  WHERE s.binding_id = l.binding_id AND s.order_key = l.order_key
					AND s.provider_id = l.provider_id) = l.tracking_number, true) AS current) q
		WHERE NOT l.withdrawn
		GROUP BY l.binding_id, l.order_key, l.provider_id, l.currency),
	kept AS (
		INSERT INTO @extschema@.fee_sum AS fs (binding_id, order_key, provider_id, currency,
			estimated, charged, refunded, quote_lines, bill_lines, last_change)
		SELECT per.b, per.k, per.pid, per.cur, per.est, per.chg, per.ref, per.nq, per.nb, per.last
		FROM per
		ON CONFLICT (binding_id, order_key, provider_id, currency) DO UPDATE SET
			estimated = EXCLUDED.estimated, charged = EXCLUDED.charged,
			refunded = EXCLUDED.refunded, quote_lines = EXCLUDED.quote_lines,
			bill_lines = EXCLUDED.bill_lines, last_change = EXCLUDED.last_change
		WHERE (fs.estimated, fs.charged, fs.refunded, fs.quote_lines, fs.bill_lines, fs.last_change)
			  IS DISTINCT FROM (EXCLUDED.estimated, EXCLUDED.charged, EXCLUDED.refunded,
								EXCLUDED.quote_lines, EXCLUDED.bill_lines, EXCLUDED.last_change)
		RETURNING 1),
	-- a sum whose provider and currency no line has any more; looked up
	-- in fee_line by its order index, not in per: an anti-join against the
	-- CTE scanned all of per for every sum (the planner cannot hash a
	-- generic plan's guess of one row), 8,000 comparisons a batch of 128
	gone AS (
		DELETE FROM @extschema@.fee_sum fs USING t
		 WHERE fs.binding_id = t.b AND fs.order_key = t.k
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.fee_line l
						   WHERE l.binding_id = fs.binding_id AND l.order_key = fs.order_key
							 AND l.provider_id = fs.provider_id AND l.currency = fs.currency
							 AND NOT l.withdrawn)
		RETURNING 1),
	ord AS (
		SELECT per.b, per.k, sum(per.nb) > 0 AS billed,
			   min(per.cur) FILTER (WHERE per.nb > 0) AS lo_b,
			   max(per.cur) FILTER (WHERE per.nb > 0) AS hi_b,
			   min(per.cur) FILTER (WHERE per.nq > 0) AS lo_q,
			   max(per.cur) FILTER (WHERE per.nq > 0) AS hi_q,
			   -- quoted in a currency (XXX: the answer named none)
			   min(per.cur) FILTER (WHERE per.nq > 0 AND per.cur <> 'XXX') AS lo_qc,
			   max(per.cur) FILTER (WHERE per.nq > 0 AND per.cur <> 'XXX') AS hi_qc,
			   sum(per.chg - per.ref) FILTER (WHERE per.nb > 0) AS tot_b,
			   sum(per.est) FILTER (WHERE per.nq > 0) AS tot_q
		FROM per GROUP BY per.b, per.k),
	-- one currency: the bill's lines in one, and a quote in a currency in
	-- that one too (a bill in dollars of a quote in yuan is no total)
	-- and a total its currency can have (a quote of JPY 1500.5 is none:
	-- bill lines with more decimals than their currency has are refused)
	tot AS (
		SELECT ord.b, ord.k, bb.provider_id AS pid, bb.writeback ? 'fee_total' AS wb,
			   x.agree AND coalesce(pg_catalog.round(x.total, cu.minor_units) = x.total, true) AS one,
			   x.agree, x.total, x.cur, cu.minor_units AS minor
		FROM ord JOIN @extschema@.binding bb ON bb.binding_id = ord.b
		CROSS JOIN LATERAL (SELECT CASE WHEN ord.billed THEN ord.tot_b ELSE ord.tot_q END AS total,
								   CASE WHEN ord.billed THEN ord.lo_b ELSE ord.lo_q END AS cur,
								   CASE WHEN ord.billed
										THEN ord.lo_b = ord.hi_b AND coalesce(ord.lo_qc = ord.lo_b AND ord.hi_qc = ord.lo_b, true)
										ELSE ord.lo_q = ord.hi_q END AS agree) x
		LEFT JOIN @extschema@.currency cu ON cu.code = x.cur
		UNION ALL
		-- an order whose every line was withdrawn costs nothing now
		SELECT t.b, t.k, bb.provider_id, bb.writeback ? 'fee_total', true, true, 0, NULL, NULL
		FROM t JOIN @extschema@.binding bb ON bb.binding_id = t.b
		WHERE NOT EXISTS (SELECT 1 FROM per WHERE per.b = t.b AND per.k = t.k)
		  AND EXISTS (SELECT 1 FROM @extschema@.fee_line l
					  WHERE l.binding_id = t.b AND l.order_key = t.k)),
	sh AS (
		UPDATE @extschema@.shipment s SET fee_total = tot.total, updated_at = now()
		  FROM tot
		 WHERE tot.one AND s.binding_id = tot.b AND s.order_key = tot.k
		   AND s.provider_id = tot.pid AND s.fee_total IS DISTINCT FROM tot.total
		RETURNING s.binding_id, s.order_key, s.fee_total, tot.wb),
	mixed AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, provider_id, detail)
		SELECT 'fee_currency_mixed', tot.b, tot.k, tot.pid,
			   CASE WHEN tot.agree
				   THEN format('the fees of order %s come to %s %s, more decimals than %s has (%s): its fee_total is left as it was',
							   tot.k, tot.total, tot.cur, tot.cur, tot.minor)
				   ELSE format('the fees of order %s are in %s: its fee_total is left as it was', tot.k,
							   (SELECT string_agg(DISTINCT per.cur, ', ') FROM per
								WHERE per.b = tot.b AND per.k = tot.k)) END
		FROM tot
		WHERE NOT tot.one
		  AND NOT EXISTS (SELECT 1 FROM @extschema@.exception_ticket x
						  WHERE x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
							AND x.order_key = tot.k AND x.resolved_at IS NULL)
		RETURNING 1),
	agreed AS (
		UPDATE @extschema@.exception_ticket x SET resolved_at = now(),
			   resolution = 'its fee lines are in one currency again'
		  FROM tot
		 WHERE tot.one AND x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
		   AND x.order_key = tot.k AND x.resolved_at IS NULL
		RETURNING 1),
	-- a total with more decimals than the order's numeric column holds
	-- (1.005 into a numeric(10,2)): never written rounded (the binding's
	-- write-back statement leaves the column), and the order gets a ticket
	scale AS (
		SELECT sh.binding_id, sh.order_key, sh.fee_total, c.attname, c.atttypid, c.typmod AS m,
			   c.scale AS s
		FROM sh
		JOIN @extschema@._fee_total_column() c ON c.binding_id = sh.binding_id
		WHERE sh.wb),
	unfit AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, detail)
		SELECT 'writeback_failed', scale.binding_id, scale.order_key,
			   format('write-back of the fee total failed: %s has more decimals than column %I (%s) holds; it was left as it was, not rounded',
					  scale.fee_total, scale.attname, pg_catalog.format_type(scale.atttypid, scale.m))
		FROM scale
		WHERE scale.s IS NOT NULL AND pg_catalog.round(scale.fee_total, scale.s) <> scale.fee_total
		RETURNING exception_ticket.binding_id, exception_ticket.order_key)
	-- (kept, gone, mixed, agreed and unfit run whether or not they are read;
	-- the orders ticketed are hashed once: estimated at a few rows, an anti
	-- join compared every order written with every one ticketed, 36 million
	-- comparisons for a statement of 6,000 of each.  No key is NULL.)
	SELECT 'writeback'::text, NULL::bigint, sh.binding_id, sh.order_key, sh.fee_total
	FROM sh WHERE sh.wb
	  AND (sh.binding_id, sh.order_key) NOT IN (SELECT u.binding_id, u.order_key FROM unfit u);
END
$$;

ALTER FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) SET shipsync.audit_action = 'attach';

------------------------------------------------------------------------------
-- create_crm_source() refuses a database whose encoding the receiver
-- refuses, and warns of one the receiver does not serve
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION @extschema@.create_crm_source(name text, kind text, tbl regclass,
											  options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	opts jsonb := coalesce(options, '{}');
	keycol name;
	ttl interval;
	id integer;
	relkind "char";
	k text;
	vtype oid;
	allowed text[] := ARRAY['profile', 'key_column', 'dedup_ttl', 'secret', 'version_column'];
BEGIN
	IF name IS NULL OR name OPERATOR(pg_catalog.!~) '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid CRM source name "%"', coalesce(name, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A CRM source name is 1 to 63 letters, digits, "_", "." or "-"; it is the last part of the receiver''s URL /crm/{name}.',
				  HINT = 'For example ''jdy'' or ''salesforce-eu''.';
	END IF;
	IF kind IS NULL OR kind OPERATOR(pg_catalog.<>) ALL (ARRAY['jiandaoyun', 'salesforce_om', 'generic']) THEN
		RAISE EXCEPTION 'unknown CRM source kind "%"', coalesce(kind, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'The kinds are jiandaoyun (简道云 data push), salesforce_om (Salesforce Outbound Messages) and generic (Standard Webhooks-signed JSON).',
				  HINT = 'See docs/receiver.md.';
	END IF;
	IF kind OPERATOR(pg_catalog.=) 'salesforce_om' THEN
		allowed := ARRAY['profile', 'key_column', 'dedup_ttl', 'organization_id', 'sobject_type', 'version_column'];
	END IF;
	PERFORM @extschema@._check_options(opts, allowed, 'CRM source');
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	-- pushes are UTF-8, signed over their bytes: the receiver answers every
	-- one 503 in another encoding, for good (TAP 053)
	IF pg_catalog.current_setting('server_encoding') OPERATOR(pg_catalog.<>) ALL (ARRAY['UTF8', 'SQL_ASCII']) THEN
		RAISE EXCEPTION 'database encoding % cannot take CRM pushes', pg_catalog.current_setting('server_encoding')
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Pushes are UTF-8 and signed over their bytes: the receiver answers every push 503 in a database of another encoding.',
				  HINT = 'Keep the orders and the CRM sources in a UTF8 database, and make it shipsync.receiver_database.';
	END IF;
	SELECT c.relkind INTO relkind FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) tbl;
	IF relkind OPERATOR(pg_catalog.<>) ALL (ARRAY['r', 'p']::"char"[]) THEN
		RAISE EXCEPTION '"%" is not a table', tbl
			USING ERRCODE = 'wrong_object_type',
				  HINT = 'Name an ordinary or partitioned table.';
	END IF;
	IF NOT pg_catalog.pg_has_role(session_user,
			(SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'Pushes of the source are written into the table with its owner''s rights.';
	END IF;

	-- options of each kind
	FOREACH k IN ARRAY ARRAY['profile', 'key_column', 'dedup_ttl', 'secret', 'organization_id', 'sobject_type', 'version_column'] LOOP
		IF opts ? k AND (pg_catalog.jsonb_typeof(opts->k) OPERATOR(pg_catalog.<>) 'string'
						 OR opts->>k OPERATOR(pg_catalog.=) '') THEN
			RAISE EXCEPTION 'option "%" must be a non-empty string', k
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = CASE WHEN k OPERATOR(pg_catalog.=) 'secret'
								  THEN 'Give the secret the CRM signs its pushes with.' ELSE 'Give a string.' END;
		END IF;
	END LOOP;
	IF kind OPERATOR(pg_catalog.<>) 'salesforce_om' AND NOT opts ? 'secret' THEN
		RAISE EXCEPTION 'a CRM source of kind % needs option "secret"', kind
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Pushes are accepted only when their signature can be checked.',
				  HINT = CASE kind WHEN 'jiandaoyun' THEN 'Give the secret of the 简道云 data push (数据推送 → 密钥).'
								   ELSE 'Give the whsec_ secret of the sender''s Standard Webhooks signature.' END;
	END IF;
	IF opts ? 'secret' THEN
		PERFORM @extschema@._check_crm_secret(kind, opts->>'secret', 'option "secret"');
	END IF;
	IF kind OPERATOR(pg_catalog.=) 'salesforce_om'
	   AND coalesce(opts->>'organization_id', '') OPERATOR(pg_catalog.!~) '^[A-Za-z0-9]{15}([A-Za-z0-9]{3})?$' THEN
		RAISE EXCEPTION 'a CRM source of kind salesforce_om needs option "organization_id"'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Outbound Messages are not signed: the OrganizationId of each message must be the organization''s id (15 or 18 characters).',
				  HINT = 'Salesforce shows it under Setup → Company Information; add mTLS or an IP allowlist at the proxy as well.';
	END IF;
	IF opts ? 'profile' AND (opts->>'profile') OPERATOR(pg_catalog.!~) '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid profile name "%"', opts->>'profile'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A profile name is 1 to 63 letters, digits, "_", "." or "-".';
	END IF;
	BEGIN
		ttl := coalesce(opts->>'dedup_ttl', '7 days')::interval;
	EXCEPTION WHEN OTHERS THEN
		ttl := NULL;
	END;
	IF ttl IS NULL OR ttl OPERATOR(pg_catalog.<) interval '1 minute' OR ttl OPERATOR(pg_catalog.>) interval '1 year' THEN
		RAISE EXCEPTION 'option "dedup_ttl" must be an interval between 1 minute and 1 year'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = pg_catalog.format('The value given is %s.', opts->'dedup_ttl'),
				  HINT = 'For example ''7 days'': at least as long as the CRM goes on retrying a push.';
	END IF;

	-- the key: given, or the single-column primary key; unique, for upserts
	keycol := opts->>'key_column';
	IF keycol IS NULL THEN
		SELECT a.attname INTO keycol
		FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
		  ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]
		WHERE i.indrelid OPERATOR(pg_catalog.=) tbl AND i.indisprimary AND i.indnatts OPERATOR(pg_catalog.=) 1;
		IF keycol IS NULL THEN
			RAISE EXCEPTION 'table % has no single-column primary key', tbl
				USING ERRCODE = 'invalid_table_definition',
					  HINT = 'Give option "key_column": the column that holds the CRM''s record id.';
		END IF;
	END IF;
	IF NOT EXISTS (
		SELECT 1 FROM pg_catalog.pg_attribute a
		WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) keycol
		  AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped) THEN
		RAISE EXCEPTION 'column "%" of table % does not exist', keycol, tbl
			USING ERRCODE = 'undefined_column',
				  HINT = 'Give option "key_column": the column that holds the CRM''s record id.';
	END IF;
	IF NOT EXISTS (
		SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
		  ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]
		WHERE i.indrelid OPERATOR(pg_catalog.=) tbl AND i.indisunique AND i.indnkeyatts OPERATOR(pg_catalog.=) 1
		  AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname OPERATOR(pg_catalog.=) keycol) THEN
		RAISE EXCEPTION 'column "%" of table % has no unique index of its own', keycol, tbl
			USING ERRCODE = 'invalid_table_definition',
				  DETAIL = 'A push is written with INSERT ... ON CONFLICT on the key column.',
				  HINT = pg_catalog.format('Add one: ALTER TABLE %s ADD UNIQUE (%I).', tbl, keycol);
	END IF;
	-- the version: a column an update or upsert must not go back on, of a
	-- type pg_catalog's >= compares (a domain's base type)
	IF opts ? 'version_column' THEN
		SELECT CASE WHEN t.typbasetype OPERATOR(pg_catalog.=) 0::oid THEN t.oid ELSE t.typbasetype END INTO vtype
		FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid
		WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) (opts->>'version_column')::name
		  AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped;
		IF vtype IS NULL THEN
			RAISE EXCEPTION 'option "version_column" names column "%", which table % does not have', opts->>'version_column', tbl
				USING ERRCODE = 'undefined_column',
					  HINT = 'Name the column a crm_in row writes the record''s last modification time into.';
		END IF;
		IF (opts->>'version_column')::name OPERATOR(pg_catalog.=) keycol THEN
			RAISE EXCEPTION 'option "version_column" must not be the key column'
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Name the column a crm_in row writes the record''s last modification time into.';
		END IF;
		IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_operator o
					   WHERE o.oprname OPERATOR(pg_catalog.=) '>='
						 AND o.oprnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace
						 AND o.oprleft OPERATOR(pg_catalog.=) vtype AND o.oprright OPERATOR(pg_catalog.=) vtype) THEN
			RAISE EXCEPTION 'column "%" of table % cannot hold versions', opts->>'version_column', tbl
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = pg_catalog.format('Its type %s has no >= operator of pg_catalog to compare two versions with.',
												 vtype::pg_catalog.regtype),
					  HINT = 'Use a timestamptz, timestamp, date, number or text column.';
		END IF;
	END IF;
	PERFORM @extschema@._check_crm_map(coalesce(opts->>'profile', name), tbl);

	INSERT INTO @extschema@.crm_source AS s (name, kind, tbl, key_column, profile, dedup_ttl, options)
	VALUES (name, kind, tbl, keycol, coalesce(opts->>'profile', name), ttl,
			opts OPERATOR(pg_catalog.-) ARRAY['secret', 'profile', 'key_column', 'dedup_ttl'])
	RETURNING s.crm_source_id INTO id;
	-- the secret, encrypted under the source's name; nothing left under
	-- that name before (the name was free) may pass for a previous secret
	DELETE FROM @extschema@.secret x WHERE x.provider OPERATOR(pg_catalog.=) create_crm_source.name;
	IF opts ? 'secret' THEN
		PERFORM @extschema@._secret_put(create_crm_source.name, 'webhook_secret', opts->>'secret');
	END IF;
	-- the receiver takes pushes for one database: a source made in another
	-- is unknown to it, and every push to /crm/{name} answered 404 (which
	-- a CRM takes as final).  No receiver at all (receiver_listen empty) is
	-- taken as meant, as attach() takes an empty shipsync.databases.
	IF coalesce(pg_catalog.current_setting('shipsync.receiver_listen', true), '') OPERATOR(pg_catalog.<>) ''
	   AND pg_catalog.current_setting('shipsync.receiver_database', true)
		   IS DISTINCT FROM pg_catalog.current_database()::text THEN
		RAISE WARNING 'the receiver does not serve database "%"', pg_catalog.current_database()
			USING DETAIL = pg_catalog.format('It takes pushes for database %s (shipsync.receiver_database): there, CRM source "%s" does not exist, and a push to /crm/%s is answered 404.',
					pg_catalog.quote_ident(pg_catalog.current_setting('shipsync.receiver_database', true)),
					create_crm_source.name, create_crm_source.name),
				  HINT = pg_catalog.format('Create the source in database %s, or ALTER SYSTEM SET shipsync.receiver_database = %L and restart the server.',
					pg_catalog.quote_ident(pg_catalog.current_setting('shipsync.receiver_database', true)),
					pg_catalog.current_database());
	END IF;
	RETURN id;
EXCEPTION
	WHEN unique_violation THEN
		RAISE EXCEPTION 'CRM source "%" already exists', create_crm_source.name
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Choose another name, or drop the source first with shipsync.drop_crm_source().';
END
$$;

ALTER FUNCTION @extschema@.create_crm_source(text, text, regclass, jsonb) SET shipsync.audit_action = 'create_crm_source';

------------------------------------------------------------------------------
-- expire_unmatched() is audited, as retry() is (ingest_tracking() too, in
-- the library)
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION @extschema@.expire_unmatched()
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint := @extschema@._expire_unmatched(NULL);
BEGIN
	-- audited as retry() is (the dispatcher and the pushes call
	-- _expire_unmatched() itself, and are not)
	PERFORM @extschema@._audit('expire_unmatched', 'provider', '*', NULL,
							   pg_catalog.jsonb_build_object('expired', n));
	RETURN n;
END
$$;

------------------------------------------------------------------------------

-- settlement and the statement's store are never JIT-compiled; settlement
-- looks up a shipment's other currencies only for a currency quoted alone,
-- the store the pieces' shipment only for a line without a shipment
------------------------------------------------------------------------------
-- The check that a shipment quoted in one currency is billed in none other
-- was costed for every shipment, and put settlement's plan past
-- jit_optimize_above_cost (the view took twice as long as before the check,
-- most of it compiling); hashed, it also read every billed sum as soon as
-- one shipment had no bill.  _store_fees()'s statement, costed at 2,600 a
-- line for the pieces' lookup, was compiled for every big statement (13 of
-- the 19 s of a 40,000-line import), and that lookup ran for every line:
-- its condition, pulled up into the join, was tested after it.
CREATE OR REPLACE FUNCTION @extschema@._settlement()
RETURNS TABLE (provider_id integer, month date, currency text, shipments bigint,
			   estimated numeric, charged numeric, refunded numeric, unbilled bigint,
			   unknown_waybills bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET work_mem = '64MB'
SET jit = off
AS $$
	SELECT r.provider_id, r.month, r.currency, sum(r.shipments)::bigint, sum(r.estimated),
		   sum(r.charged), sum(r.refunded), sum(r.unbilled)::bigint, sum(r.unknown)::bigint
	FROM (-- shipments, by the month they were created: with their sums per
		  -- currency, or (those of a shipping provider) without any
		  SELECT s.provider_id, date_trunc('month', s.created_at)::date AS month,
				 f.currency, 1 AS shipments, coalesce(f.estimated, 0) AS estimated,
				 coalesce(f.charged, 0) AS charged, coalesce(f.refunded, 0) AS refunded,
				 -- no bill line in any currency (one billed in dollars only is
				 -- no unbilled shipment of its quote's yuan): the other
				 -- currencies' sums are looked up, in the index, only for a
				 -- currency with quote lines alone (a probe that cannot be
				 -- hashed: hashed, it read every billed sum for any one of them)
				 CASE WHEN s.status = 'cancelled' OR f.bill_lines > 0 THEN 0
					  WHEN f.binding_id IS NULL THEN 1
					  WHEN (SELECT g.bill_lines FROM @extschema@.fee_sum g
							WHERE g.binding_id = s.binding_id AND g.order_key = s.order_key
							  AND g.provider_id = s.provider_id AND g.bill_lines > 0
							LIMIT 1) IS NULL THEN 1
					  ELSE 0 END AS unbilled,
				 0 AS unknown
		  FROM @extschema@.shipment s
		  JOIN @extschema@.binding b ON b.binding_id = s.binding_id
		  LEFT JOIN @extschema@.fee_sum f
			ON f.binding_id = s.binding_id AND f.order_key = s.order_key
		   AND f.provider_id = s.provider_id
		  WHERE f.binding_id IS NOT NULL OR s.provider_id = b.provider_id
		  UNION ALL
		  -- billed waybills no shipment has: by the statement's month, else the line's
		  SELECT u.provider_id, u.month, u.currency, 0, 0, u.charged, u.refunded, 0, 1
		  FROM (SELECT l.provider_id, l.tracking_number, l.currency,
					   min(coalesce(st.period, date_trunc('month',
						   coalesce(l.occurred_at, l.recorded_at))::date)) AS month,
					   coalesce(sum(l.amount) FILTER (WHERE l.state <> 'refunded'
						   AND l.fee_type <> 'refund'), 0) AS charged,
					   coalesce(sum(abs(l.amount)) FILTER (WHERE
						   l.state = 'refunded' OR l.fee_type = 'refund'), 0) AS refunded
				FROM @extschema@.fee_line l
				LEFT JOIN @extschema@.statement st ON st.statement_id = l.statement_id
				WHERE l.binding_id IS NULL AND NOT l.quote
				  AND NOT l.withdrawn
				GROUP BY l.provider_id, l.tracking_number, l.currency) u) r
	GROUP BY r.provider_id, r.month, r.currency
$$;
CREATE OR REPLACE FUNCTION @extschema@._store_fees(src text, stmt bigint, replaces bigint, who text,
	pids integer[], bids integer[], oks text[], tns text[], codes text[], amounts numeric[],
	currencies text[], fkeys text[], settlements text[], payers text[], weights numeric[],
	states text[], ats timestamptz[], held text[] DEFAULT NULL)
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- (its one statement guesses a few hundred lines and a probe of the pieces'
-- index for each at 2,600 on paper: past jit_optimize_above_cost, a
-- statement of 40,000 lines spent 13 of its 19 s compiling it)
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
	n_in bigint := coalesce(array_length(tns, 1), 0);
	n_new bigint;
	n_rev bigint;
	n_park bigint;
	n_matched bigint := 0;
	n_withdrawn bigint := 0;
	twice text;
	tb integer[];
	tk text[];
BEGIN
	PERFORM @extschema@._lock_fees(pids, tns, src = 'statement');

	SELECT m.n, m.tb, m.tk INTO n_matched, tb, tk
	FROM @extschema@._match_parked_fees(pids, tns) m;

	WITH inc AS (
		SELECT u.ord, u.pid, u.bid, u.ok, u.tn, u.code, u.amount, u.cur, u.fkey, u.settle,
			   u.payer, u.weight, u.st, u.at,
			   coalesce(tm.fee_type, ft.name, 'other') AS fee_type
		FROM unnest(pids, bids, oks, tns, codes, amounts, currencies, fkeys, settlements, payers,
					weights, states, ats)
			 WITH ORDINALITY AS u(pid, bid, ok, tn, code, amount, cur, fkey, settle, payer,
								  weight, st, at, ord)
		JOIN @extschema@.provider p ON p.provider_id = u.pid
		LEFT JOIN @extschema@.fee_type_map tm
			   ON tm.profile = coalesce(p.options->>'profile', p.dialect) AND tm.code = u.code
		LEFT JOIN @extschema@.fee_type ft ON ft.name = lower(u.code)),
	-- a line without a key of the carrier: the first of its type in this
	-- notice has key '', the next '#2', ...; the same line twice: the last.
	-- Grouped and sorted bytewise (COLLATE "C"): the groups are the same
	-- under any deterministic collation, and a statement sorts 100,000
	-- lines here twice, where strcoll() cost more than the rest of the sort
	keyed AS (
		SELECT DISTINCT ON (y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C") y.*
		FROM (SELECT inc.*,
					 CASE WHEN inc.fkey IS NOT NULL THEN inc.fkey
						  WHEN row_number() OVER w = 1 THEN ''
						  ELSE '#' || row_number() OVER w END AS k
			  FROM inc
			  WINDOW w AS (PARTITION BY inc.pid, inc.tn COLLATE "C", inc.fee_type COLLATE "C", inc.fkey IS NULL
						   ORDER BY inc.ord)) y
		ORDER BY y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C", y.ord DESC),
	-- a statement billing one carrier's line (its key) twice: refused
	-- below, since keyed keeps one of them and the statement's total
	-- counts both (a push sending a line again is the same line again)
	dup AS (
		SELECT pg_catalog.format('Waybill %s, fee type %s, key %s: %s lines, of %s.', i.tn, i.fee_type,
					pg_catalog.quote_literal(i.fkey), count(*),
					string_agg(i.amount::text || ' ' || coalesce(i.cur, ''), ', ' ORDER BY i.ord)) AS msg
		FROM inc i
		WHERE src = 'statement' AND i.fkey IS NOT NULL
		GROUP BY i.pid, i.tn, i.fee_type, i.fkey
		HAVING count(*) > 1
		LIMIT 1),
	main AS (
		SELECT DISTINCT ON (s.provider_id, s.tracking_number) s.provider_id, s.tracking_number,
			   s.binding_id, s.order_key
		FROM @extschema@.shipment s
		WHERE (s.provider_id, s.tracking_number) IN
			  (SELECT keyed.pid, keyed.tn FROM keyed WHERE keyed.bid IS NULL)
		ORDER BY s.provider_id, s.tracking_number, s.created_at DESC),
	-- each line's order: the caller's, else the newest shipment's of its
	-- waybill (a recycled number is the new parcel's), else, for a waybill
	-- no shipment has as its tracking number, the shipment that lists it
	-- among the other waybills of a multi-piece shipment (SF: child,
	-- return; the line keeps the piece's number), looked up through the
	-- waybills' index for those lines only; else none (parked).  Part of
	-- the line's identity.  (The pieces' rows added to main's, as a UNION,
	-- were a set the planner guessed at two rows once the shipments were
	-- analyzed, and joined in a loop: a statement of 100,000 lines ran for
	-- minutes.)
	kt AS (
		SELECT k.*, coalesce(k.bid, main.binding_id, pc.binding_id) AS tb,
			   coalesce(k.ok, main.order_key, pc.order_key) AS tok
		FROM keyed k
		LEFT JOIN main ON main.provider_id = k.pid AND main.tracking_number = k.tn
		-- (OFFSET 0 keeps the subquery whole, its condition a filter of
		-- each line before the lookup: pulled up into the join, it was
		-- tested after the lookup, run for every line of a statement)
		LEFT JOIN LATERAL (
			SELECT ps.binding_id, ps.order_key FROM @extschema@._piece_shipment(k.pid, k.tn) ps
			WHERE k.bid IS NULL AND main.provider_id IS NULL OFFSET 0) pc ON true),
	up AS (
		INSERT INTO @extschema@.fee_line AS f (provider_id, tracking_number, fee_type, fee_key,
			quote, binding_id, order_key, raw_type, amount, currency, settlement, payer,
			billed_weight_kg, state, source, statement_id, occurred_at, recorded_by)
		SELECT k.pid, k.tn, k.fee_type, k.k, src = 'create', k.tb, k.tok,
			   k.code, k.amount, k.cur, k.settle, k.payer, k.weight,
			   coalesce(k.st, CASE WHEN src = 'create' THEN 'estimated' ELSE 'charged' END),
			   src, stmt, k.at, who
		FROM kt k
		ORDER BY k.ord
		ON CONFLICT (provider_id, tracking_number, fee_type, fee_key, quote, binding_id, order_key) DO UPDATE SET
			raw_type = EXCLUDED.raw_type, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
			settlement = coalesce(EXCLUDED.settlement, f.settlement),
			payer = coalesce(EXCLUDED.payer, f.payer),
			billed_weight_kg = coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg),
			state = EXCLUDED.state, source = EXCLUDED.source, statement_id = EXCLUDED.statement_id,
			occurred_at = coalesce(EXCLUDED.occurred_at, f.occurred_at),
			recorded_by = EXCLUDED.recorded_by, withdrawn = false,
			binding_id = coalesce(f.binding_id, EXCLUDED.binding_id),
			order_key = coalesce(f.order_key, EXCLUDED.order_key)
		-- a change, not older than what the line says now, and, but from
		-- a statement, not a notice seen before (a late duplicate of a
		-- revised line); own below takes, for statements, the lines they
		-- bill as they are
		WHERE (f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
			  IS DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency, EXCLUDED.state,
								coalesce(EXCLUDED.settlement, f.settlement),
								coalesce(EXCLUDED.payer, f.payer),
								coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg))
		  AND (EXCLUDED.occurred_at IS NULL OR f.occurred_at IS NULL
			   OR EXCLUDED.occurred_at >= f.occurred_at)
		  AND (src = 'statement'
			   OR NOT EXISTS (SELECT 1 FROM @extschema@.fee_line_history h
							  WHERE h.fee_line_id = f.fee_line_id
								AND (h.amount, h.currency, h.state, h.occurred_at)
									IS NOT DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency,
														  EXCLUDED.state, EXCLUDED.occurred_at)))
		RETURNING f.xmax = 0 AS inserted, f.binding_id, f.order_key),
	-- a statement's lines it bills as they are: its own from now on (no
	-- revision: nothing they say changes), so that a later correction
	-- withdraws them and "does the statement add up?" counts them.  After
	-- up has run to its end (the one-time filter reads all of it): up
	-- meeting a row own had changed in this command would be an error.
	-- Not a line the current statement of another month (or account)
	-- bills: that one bills it still, and this one listing it again is
	-- what "does it add up?" should show
	own AS (
		UPDATE @extschema@.fee_line f SET statement_id = stmt, withdrawn = false
		  FROM kt k
		 WHERE (SELECT count(*) FROM up) >= 0
		   AND src = 'statement' AND f.provider_id = k.pid AND f.tracking_number = k.tn
		   AND f.fee_type = k.fee_type AND f.fee_key = k.k AND NOT f.quote
		   AND f.binding_id IS NOT DISTINCT FROM k.tb AND f.order_key IS NOT DISTINCT FROM k.tok
		   AND f.statement_id IS DISTINCT FROM stmt
		   AND (f.statement_id IS NULL
				OR f.statement_id NOT IN (SELECT e.statement_id
										  FROM @extschema@.statement e
										  JOIN @extschema@.statement c ON c.statement_id = stmt
										  WHERE e.provider_id = c.provider_id AND e.superseded_by IS NULL
											AND (e.period, e.account) IS DISTINCT FROM (c.period, c.account)))
		   -- (what it says: a line older than the line's current version,
		   -- which up left as it was, is not the statement's)
		   AND NOT (f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
				   IS DISTINCT FROM (k.amount, k.cur, coalesce(k.st, 'charged'),
									 coalesce(k.settle, f.settlement),
									 coalesce(k.payer, f.payer),
									 coalesce(k.weight, f.billed_weight_kg))
		RETURNING f.fee_line_id, f.binding_id, f.order_key),
	-- of those, the lines a correction had withdrawn: billed again, so
	-- their orders' totals change (fee_line read here is as it was before)
	back AS (
		SELECT own.binding_id, own.order_key FROM own
		JOIN @extschema@.fee_line x ON x.fee_line_id = own.fee_line_id
		WHERE x.withdrawn AND own.binding_id IS NOT NULL),
	-- a corrected statement: what an earlier statement of its period and
	-- account billed and this one does not (neither among its lines nor,
	-- held, among those it skipped) is withdrawn (0, adjusted), or, when
	-- the current statement of another month or account billed it before
	-- (the carrier listed it in both), goes back to what that one says
	wd AS (
		UPDATE @extschema@.fee_line f
		   SET (amount, currency, state, statement_id, withdrawn) =
			   (SELECT coalesce(b.amount, 0), coalesce(b.currency, f.currency),
					   coalesce(b.state, 'adjusted'), coalesce(b.statement_id, stmt),
					   coalesce(b.withdrawn, true)
				FROM (SELECT 1) one
				LEFT JOIN (SELECT h.amount, h.currency, h.state, h.statement_id, h.withdrawn
						   FROM @extschema@.fee_line_history h
						   JOIN @extschema@.statement e ON e.statement_id = h.statement_id
						   JOIN @extschema@.statement c ON c.statement_id = stmt
						   WHERE h.fee_line_id = f.fee_line_id AND e.superseded_by IS NULL
							 AND (e.period, e.account) IS DISTINCT FROM (c.period, c.account)
						   ORDER BY h.revision DESC LIMIT 1) b ON true),
			   source = 'statement', recorded_by = who
		 WHERE replaces IS NOT NULL AND NOT f.quote
		   AND f.statement_id IN (SELECT e.statement_id
								  FROM @extschema@.statement e
								  JOIN @extschema@.statement c ON c.statement_id = stmt
								  WHERE e.provider_id = c.provider_id AND e.period = c.period
									AND e.account IS NOT DISTINCT FROM c.account
									AND e.statement_id <> stmt)
		   AND NOT f.withdrawn
		   AND NOT EXISTS (SELECT 1 FROM kt k
						   WHERE k.pid = f.provider_id AND k.tn = f.tracking_number
							 AND k.fee_type = f.fee_type AND k.k = f.fee_key
							 AND k.tb IS NOT DISTINCT FROM f.binding_id
							 AND k.tok IS NOT DISTINCT FROM f.order_key)
		   AND (held IS NULL OR (array_position(held, NULL) IS NULL
								 AND f.tracking_number <> ALL (held)))
		RETURNING f.binding_id, f.order_key)
	SELECT (SELECT dup.msg FROM dup), (SELECT count(*) FROM up WHERE up.inserted),
		   (SELECT count(*) FROM up WHERE NOT up.inserted),
		   (SELECT count(*) FROM up WHERE up.binding_id IS NULL),
		   (SELECT count(*) FROM wd),
		   coalesce(tb, '{}') || coalesce((SELECT array_agg(x.binding_id) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd
				 UNION ALL SELECT back.binding_id, back.order_key FROM back) x), '{}'),
		   coalesce(tk, '{}') || coalesce((SELECT array_agg(x.order_key) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd
				 UNION ALL SELECT back.binding_id, back.order_key FROM back) x), '{}')
	INTO twice, n_new, n_rev, n_park, n_withdrawn, tb, tk;
	IF twice IS NOT NULL THEN
		RAISE EXCEPTION 'statement of provider "%" bills one line twice',
			(SELECT p.name FROM @extschema@.provider p WHERE p.provider_id = pids[1])
			USING ERRCODE = 'SS400', DETAIL = twice,
				  HINT = 'Nothing of this statement was stored. A carrier''s key names one line of a waybill''s fee type: fix the statement, or leave the key column out to store every line as its own.';
	END IF;

	kind := 'new'; n := n_new; RETURN NEXT;
	kind := 'revised'; n := n_rev; RETURN NEXT;
	kind := 'duplicate'; n := n_in - n_new - n_rev; RETURN NEXT;
	kind := 'unmatched'; n := n_park; RETURN NEXT;
	kind := 'matched'; n := n_matched; RETURN NEXT;
	kind := 'withdrawn'; n := n_withdrawn; RETURN NEXT;
	n := NULL;

	RETURN QUERY SELECT * FROM @extschema@._fee_totals(tb, tk);
END
$$;

------------------------------------------------------------------------------

-- A replica identity for the tables without a primary key: a publication
-- FOR ALL TABLES (a DBA's logical replication of the orders' database)
-- refused the dispatcher's every DELETE of the inbox, and no order was sent
------------------------------------------------------------------------------

-- (the inbox's in the last section: it locks the inbox)
ALTER TABLE @extschema@.status_map REPLICA IDENTITY FULL;
ALTER TABLE @extschema@.ticket_event REPLICA IDENTITY FULL;

------------------------------------------------------------------------------
-- Table inheritance: an attached table's children are refused
------------------------------------------------------------------------------
-- Table inheritance: a row inserted into a child table fires the child's
-- triggers, never its parent's, so the orders of a parent's children were
-- never captured, and nothing said so.  Refused when the parent is
-- attached (its capture trigger created) and when an attached table is
-- given a child (CREATE TABLE … INHERITS, ALTER TABLE … INHERIT): the
-- inheritance made by this transaction's command, not one made before.
-- A partition is no such child: its parent's row triggers are cloned
-- onto it.
-- Logical replication into an attached table (a subscription created or
-- refreshed, or the table attached): the rows it applies fire no trigger
-- (session_replication_role = replica), so its orders are not captured
-- here.  Said in a warning: sending them from the publisher is as right
-- as sending them from here.
-- SECURITY DEFINER: whoever creates a table reads no binding of their
-- own right; it only reads.
CREATE FUNCTION @extschema@._on_table_ddl()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	-- Every CREATE and ALTER TABLE of the database comes here, and an error
	-- here fails it: nothing of the extension's is read unless a command
	-- made an inheritance link, a capture trigger or a subscription (a DBA
	-- renaming shipsync.binding, TAP 021, failed on "relation does not
	-- exist"; so would every ALTER TABLE after it)
	IF NOT EXISTS (
		SELECT 1 FROM pg_catalog.pg_event_trigger_ddl_commands() c
		WHERE (c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
			   AND EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i
						   WHERE i.inhrelid OPERATOR(pg_catalog.=) c.objid))
		   OR (c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_trigger'::pg_catalog.regclass
			   AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
						   WHERE t.oid OPERATOR(pg_catalog.=) c.objid
							 AND t.tgname OPERATOR(pg_catalog.=) 'shipsync_capture'))
		   OR c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_subscription'::pg_catalog.regclass)
	   OR pg_catalog.to_regclass('@extschema@.binding') IS NULL THEN
		RETURN;
	END IF;
	SELECT x.parent::pg_catalog.regclass AS parent, x.child::pg_catalog.regclass AS child, x.attaching
	INTO r
	FROM (SELECT i.inhparent AS parent, i.inhrelid AS child, false AS attaching
		  FROM pg_catalog.pg_event_trigger_ddl_commands() c
		  JOIN pg_catalog.pg_inherits i ON i.inhrelid OPERATOR(pg_catalog.=) c.objid
		  WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
			AND pg_catalog.age(i.xmin) OPERATOR(pg_catalog.<=) 0
		  UNION ALL
		  SELECT i.inhparent, i.inhrelid, true
		  FROM pg_catalog.pg_event_trigger_ddl_commands() c
		  JOIN pg_catalog.pg_trigger t ON t.oid OPERATOR(pg_catalog.=) c.objid
		  JOIN pg_catalog.pg_inherits i ON i.inhparent OPERATOR(pg_catalog.=) t.tgrelid
		  WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_trigger'::pg_catalog.regclass
			AND t.tgname OPERATOR(pg_catalog.=) 'shipsync_capture'
			-- made by attach() (which sets this), not restored by pg_restore:
			-- a dump of a table attached before this check is restored whole
			AND pg_catalog.current_setting('shipsync.audit_action', true)
				OPERATOR(pg_catalog.=) 'attach') x
	JOIN pg_catalog.pg_class k ON k.oid OPERATOR(pg_catalog.=) x.child AND NOT k.relispartition
	JOIN @extschema@.binding b ON b.tbl OPERATOR(pg_catalog.=) x.parent AND b.active
	-- a child made after the parent was attached, not by a pg_restore
	-- --single-transaction of a dump that holds both (its binding rows
	-- are loaded by the same transaction)
	WHERE x.attaching OR pg_catalog.age(b.xmin) OPERATOR(pg_catalog.>) 0
	LIMIT 1;
	IF r.attaching THEN
		RAISE EXCEPTION 'cannot attach table %: table % inherits from it', r.parent, r.child
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'A row inserted into a child table fires no trigger of its parent: the orders of its children would never be sent.',
				  HINT = 'Attach each child table on its own, or make the table a partitioned table.';
	ELSIF NOT r.attaching THEN
		RAISE EXCEPTION 'table % cannot inherit from table %, which is attached to pg_shipsync', r.child, r.parent
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'A row inserted into a child table fires no trigger of its parent: its orders would never be sent.',
				  HINT = 'Attach the table on its own, or make the parent a partitioned table and this one its partition.';
	END IF;

	FOR r IN
		SELECT DISTINCT s.subname, b.tbl
		FROM pg_catalog.pg_event_trigger_ddl_commands() c
		LEFT JOIN pg_catalog.pg_trigger t
			ON c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_trigger'::pg_catalog.regclass
		   AND t.oid OPERATOR(pg_catalog.=) c.objid
		   AND t.tgname OPERATOR(pg_catalog.=) 'shipsync_capture'
		JOIN pg_catalog.pg_subscription_rel sr
			ON (c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_subscription'::pg_catalog.regclass
				AND sr.srsubid OPERATOR(pg_catalog.=) c.objid)
			OR sr.srrelid OPERATOR(pg_catalog.=) t.tgrelid
		JOIN pg_catalog.pg_subscription s ON s.oid OPERATOR(pg_catalog.=) sr.srsubid
		JOIN @extschema@.binding b ON b.tbl OPERATOR(pg_catalog.=) sr.srrelid AND b.active
		ORDER BY 1, 2
	LOOP
		RAISE WARNING 'subscription "%" replicates into table %, which is attached to pg_shipsync', r.subname, r.tbl
			USING DETAIL = 'Rows that logical replication applies fire no trigger: the orders it brings are not captured, and are not sent from this database.',
				  HINT = format('Send them from the database where they are inserted; or, if this database is to send them, ALTER TABLE %s ENABLE ALWAYS TRIGGER shipsync_capture (never on both sides: each would send every order).', r.tbl);
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@._on_table_ddl() IS
	'Internal: the event trigger of CREATE TABLE, ALTER TABLE, CREATE TRIGGER, CREATE and ALTER SUBSCRIPTION: an attached table gets no child table by inheritance, and a table with such children is not attached (a child''s rows fire no trigger of its parent, so its orders would never be sent); logical replication into an attached table is warned of (the rows it applies fire no trigger).';
CREATE EVENT TRIGGER shipsync_on_table_ddl ON ddl_command_end
	WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE TRIGGER', 'CREATE SUBSCRIPTION', 'ALTER SUBSCRIPTION')
	EXECUTE FUNCTION @extschema@._on_table_ddl();
REVOKE ALL ON FUNCTION @extschema@._on_table_ddl() FROM PUBLIC;

------------------------------------------------------------------------------

-- The outbox vacuumed after a fixed number of dead versions, the inbox sooner
------------------------------------------------------------------------------
-- Its indexes with it, whatever its history (install/10_queue.sql has
-- why).  A SHARE UPDATE EXCLUSIVE lock: inserts into the outbox go on.
ALTER TABLE @extschema@.outbox SET (autovacuum_vacuum_scale_factor = 0,
	autovacuum_vacuum_threshold = 1000, vacuum_index_cleanup = on);
-- The inbox after 1,000 dead rows, not 10,000: every take reads its empty
-- pages until a vacuum truncates them.  (Reset and set again, so that its
-- options are listed as a fresh install lists them.)
ALTER TABLE @extschema@.inbox RESET (autovacuum_vacuum_threshold,
	autovacuum_vacuum_insert_threshold);
ALTER TABLE @extschema@.inbox SET (autovacuum_vacuum_threshold = 1000,
	autovacuum_vacuum_insert_threshold = -1);

------------------------------------------------------------------------------
-- Write-backs waiting for a held order row (install/10_queue.sql)
------------------------------------------------------------------------------
-- An answer whose write-back met an order row another session held was
-- sent again under its key, an attempt counted each time, and at
-- max_attempts the intent was dead (writeback_failed) with the waybill
-- never written.  Now the answer is recorded and only the write-back waits.
/*
 * Write-backs waiting for an order row another session holds: the
 * carrier's answer is recorded (shipment, fees, log, the intent done with
 * error_class order_locked), only its write-back onto the row is not.  The
 * dispatcher writes the shipment's fields back from shipsync.shipment as
 * soon as the row is free, never asking the carrier again (apply.c,
 * outbox_writeback_waiting()); a row held longer than
 * shipsync.writeback_wait_ticket opens an order_held ticket, resolved when
 * the write-back lands.  One row per shipment; outbox_ids are the intents
 * whose answers wait.
 */
CREATE TABLE @extschema@.writeback_wait (
	binding_id		integer NOT NULL,
	order_key		text COLLATE "C" NOT NULL,
	provider_id		integer NOT NULL,
	outbox_ids		bigint[] NOT NULL,
	since			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	tries			integer NOT NULL DEFAULT 1,
	next_at			timestamptz NOT NULL,
	last_error		text,
	ticketed		boolean NOT NULL DEFAULT false,
	PRIMARY KEY (binding_id, order_key, provider_id)
);
CREATE INDEX writeback_wait_due_idx ON @extschema@.writeback_wait (next_at);
COMMENT ON TABLE @extschema@.writeback_wait IS
	'Shipments whose write-back onto the order row waits for a row or table lock another session holds (an open SELECT ... FOR UPDATE, a forgotten prepared transaction): their answers are recorded and their intents done (error_class order_locked); the dispatcher writes them back as soon as the row is free, without asking the carrier again.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.writeback_wait', '');
GRANT SELECT ON @extschema@.writeback_wait TO shipsync_reader;

------------------------------------------------------------------------------

-- create_crm_source() warns of a dedup_ttl shorter than Salesforce's retries
------------------------------------------------------------------------------
-- A Salesforce Outbound Message is retried for up to 24 hours with the same
-- notification Ids: one retried after its Id was forgotten was applied
-- again, without a word when the source was made.
CREATE OR REPLACE FUNCTION @extschema@.create_crm_source(name text, kind text, tbl regclass,
											  options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	opts jsonb := coalesce(options, '{}');
	keycol name;
	ttl interval;
	id integer;
	relkind "char";
	k text;
	vtype oid;
	allowed text[] := ARRAY['profile', 'key_column', 'dedup_ttl', 'secret', 'version_column'];
BEGIN
	IF name IS NULL OR name OPERATOR(pg_catalog.!~) '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid CRM source name "%"', coalesce(name, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A CRM source name is 1 to 63 letters, digits, "_", "." or "-"; it is the last part of the receiver''s URL /crm/{name}.',
				  HINT = 'For example ''jdy'' or ''salesforce-eu''.';
	END IF;
	IF kind IS NULL OR kind OPERATOR(pg_catalog.<>) ALL (ARRAY['jiandaoyun', 'salesforce_om', 'generic']) THEN
		RAISE EXCEPTION 'unknown CRM source kind "%"', coalesce(kind, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'The kinds are jiandaoyun (简道云 data push), salesforce_om (Salesforce Outbound Messages) and generic (Standard Webhooks-signed JSON).',
				  HINT = 'See docs/receiver.md.';
	END IF;
	IF kind OPERATOR(pg_catalog.=) 'salesforce_om' THEN
		allowed := ARRAY['profile', 'key_column', 'dedup_ttl', 'organization_id', 'sobject_type', 'version_column'];
	END IF;
	PERFORM @extschema@._check_options(opts, allowed, 'CRM source');
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	-- pushes are UTF-8, signed over their bytes: the receiver answers every
	-- one 503 in another encoding, for good (TAP 053)
	IF pg_catalog.current_setting('server_encoding') OPERATOR(pg_catalog.<>) ALL (ARRAY['UTF8', 'SQL_ASCII']) THEN
		RAISE EXCEPTION 'database encoding % cannot take CRM pushes', pg_catalog.current_setting('server_encoding')
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Pushes are UTF-8 and signed over their bytes: the receiver answers every push 503 in a database of another encoding.',
				  HINT = 'Keep the orders and the CRM sources in a UTF8 database, and make it shipsync.receiver_database.';
	END IF;
	SELECT c.relkind INTO relkind FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) tbl;
	IF relkind OPERATOR(pg_catalog.<>) ALL (ARRAY['r', 'p']::"char"[]) THEN
		RAISE EXCEPTION '"%" is not a table', tbl
			USING ERRCODE = 'wrong_object_type',
				  HINT = 'Name an ordinary or partitioned table.';
	END IF;
	IF NOT pg_catalog.pg_has_role(session_user,
			(SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'Pushes of the source are written into the table with its owner''s rights.';
	END IF;

	-- options of each kind
	FOREACH k IN ARRAY ARRAY['profile', 'key_column', 'dedup_ttl', 'secret', 'organization_id', 'sobject_type', 'version_column'] LOOP
		IF opts ? k AND (pg_catalog.jsonb_typeof(opts->k) OPERATOR(pg_catalog.<>) 'string'
						 OR opts->>k OPERATOR(pg_catalog.=) '') THEN
			RAISE EXCEPTION 'option "%" must be a non-empty string', k
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = CASE WHEN k OPERATOR(pg_catalog.=) 'secret'
								  THEN 'Give the secret the CRM signs its pushes with.' ELSE 'Give a string.' END;
		END IF;
	END LOOP;
	IF kind OPERATOR(pg_catalog.<>) 'salesforce_om' AND NOT opts ? 'secret' THEN
		RAISE EXCEPTION 'a CRM source of kind % needs option "secret"', kind
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Pushes are accepted only when their signature can be checked.',
				  HINT = CASE kind WHEN 'jiandaoyun' THEN 'Give the secret of the 简道云 data push (数据推送 → 密钥).'
								   ELSE 'Give the whsec_ secret of the sender''s Standard Webhooks signature.' END;
	END IF;
	IF opts ? 'secret' THEN
		PERFORM @extschema@._check_crm_secret(kind, opts->>'secret', 'option "secret"');
	END IF;
	IF kind OPERATOR(pg_catalog.=) 'salesforce_om'
	   AND coalesce(opts->>'organization_id', '') OPERATOR(pg_catalog.!~) '^[A-Za-z0-9]{15}([A-Za-z0-9]{3})?$' THEN
		RAISE EXCEPTION 'a CRM source of kind salesforce_om needs option "organization_id"'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Outbound Messages are not signed: the OrganizationId of each message must be the organization''s id (15 or 18 characters).',
				  HINT = 'Salesforce shows it under Setup → Company Information; add mTLS or an IP allowlist at the proxy as well.';
	END IF;
	IF opts ? 'profile' AND (opts->>'profile') OPERATOR(pg_catalog.!~) '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid profile name "%"', opts->>'profile'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A profile name is 1 to 63 letters, digits, "_", "." or "-".';
	END IF;
	BEGIN
		ttl := coalesce(opts->>'dedup_ttl', '7 days')::interval;
	EXCEPTION WHEN OTHERS THEN
		ttl := NULL;
	END;
	IF ttl IS NULL OR ttl OPERATOR(pg_catalog.<) interval '1 minute' OR ttl OPERATOR(pg_catalog.>) interval '1 year' THEN
		RAISE EXCEPTION 'option "dedup_ttl" must be an interval between 1 minute and 1 year'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = pg_catalog.format('The value given is %s.', opts->'dedup_ttl'),
				  HINT = 'For example ''7 days'': at least as long as the CRM goes on retrying a push.';
	END IF;
	-- a retry that comes after its delivery id is forgotten is applied
	-- again: Salesforce retries an Outbound Message for up to 24 hours
	IF kind OPERATOR(pg_catalog.=) 'salesforce_om' AND ttl OPERATOR(pg_catalog.<) interval '24 hours' THEN
		RAISE WARNING 'option "dedup_ttl" of CRM source "%" is shorter than Salesforce''s retries', name
			USING DETAIL = pg_catalog.format('Salesforce retries an Outbound Message it got no acknowledgement for during up to 24 hours, with the same notification Ids; one that comes after its Id is forgotten (dedup_ttl is %L) is applied again, and can revert a newer change of the record.', opts->>'dedup_ttl'),
				  HINT = 'Give option "dedup_ttl" of at least ''24 hours'' (the default is 7 days).';
	END IF;

	-- the key: given, or the single-column primary key; unique, for upserts
	keycol := opts->>'key_column';
	IF keycol IS NULL THEN
		SELECT a.attname INTO keycol
		FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
		  ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]
		WHERE i.indrelid OPERATOR(pg_catalog.=) tbl AND i.indisprimary AND i.indnatts OPERATOR(pg_catalog.=) 1;
		IF keycol IS NULL THEN
			RAISE EXCEPTION 'table % has no single-column primary key', tbl
				USING ERRCODE = 'invalid_table_definition',
					  HINT = 'Give option "key_column": the column that holds the CRM''s record id.';
		END IF;
	END IF;
	IF NOT EXISTS (
		SELECT 1 FROM pg_catalog.pg_attribute a
		WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) keycol
		  AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped) THEN
		RAISE EXCEPTION 'column "%" of table % does not exist', keycol, tbl
			USING ERRCODE = 'undefined_column',
				  HINT = 'Give option "key_column": the column that holds the CRM''s record id.';
	END IF;
	IF NOT EXISTS (
		SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
		  ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]
		WHERE i.indrelid OPERATOR(pg_catalog.=) tbl AND i.indisunique AND i.indnkeyatts OPERATOR(pg_catalog.=) 1
		  AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname OPERATOR(pg_catalog.=) keycol) THEN
		RAISE EXCEPTION 'column "%" of table % has no unique index of its own', keycol, tbl
			USING ERRCODE = 'invalid_table_definition',
				  DETAIL = 'A push is written with INSERT ... ON CONFLICT on the key column.',
				  HINT = pg_catalog.format('Add one: ALTER TABLE %s ADD UNIQUE (%I).', tbl, keycol);
	END IF;
	-- the version: a column an update or upsert must not go back on, of a
	-- type pg_catalog's >= compares (a domain's base type)
	IF opts ? 'version_column' THEN
		SELECT CASE WHEN t.typbasetype OPERATOR(pg_catalog.=) 0::oid THEN t.oid ELSE t.typbasetype END INTO vtype
		FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid
		WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) (opts->>'version_column')::name
		  AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped;
		IF vtype IS NULL THEN
			RAISE EXCEPTION 'option "version_column" names column "%", which table % does not have', opts->>'version_column', tbl
				USING ERRCODE = 'undefined_column',
					  HINT = 'Name the column a crm_in row writes the record''s last modification time into.';
		END IF;
		IF (opts->>'version_column')::name OPERATOR(pg_catalog.=) keycol THEN
			RAISE EXCEPTION 'option "version_column" must not be the key column'
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Name the column a crm_in row writes the record''s last modification time into.';
		END IF;
		IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_operator o
					   WHERE o.oprname OPERATOR(pg_catalog.=) '>='
						 AND o.oprnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace
						 AND o.oprleft OPERATOR(pg_catalog.=) vtype AND o.oprright OPERATOR(pg_catalog.=) vtype) THEN
			RAISE EXCEPTION 'column "%" of table % cannot hold versions', opts->>'version_column', tbl
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = pg_catalog.format('Its type %s has no >= operator of pg_catalog to compare two versions with.',
												 vtype::pg_catalog.regtype),
					  HINT = 'Use a timestamptz, timestamp, date, number or text column.';
		END IF;
	END IF;
	PERFORM @extschema@._check_crm_map(coalesce(opts->>'profile', name), tbl);

	INSERT INTO @extschema@.crm_source AS s (name, kind, tbl, key_column, profile, dedup_ttl, options)
	VALUES (name, kind, tbl, keycol, coalesce(opts->>'profile', name), ttl,
			opts OPERATOR(pg_catalog.-) ARRAY['secret', 'profile', 'key_column', 'dedup_ttl'])
	RETURNING s.crm_source_id INTO id;
	-- the secret, encrypted under the source's name; nothing left under
	-- that name before (the name was free) may pass for a previous secret
	DELETE FROM @extschema@.secret x WHERE x.provider OPERATOR(pg_catalog.=) create_crm_source.name;
	IF opts ? 'secret' THEN
		PERFORM @extschema@._secret_put(create_crm_source.name, 'webhook_secret', opts->>'secret');
	END IF;
	-- the receiver takes pushes for one database: a source made in another
	-- is unknown to it, and every push to /crm/{name} answered 404 (which
	-- a CRM takes as final).  No receiver at all (receiver_listen empty) is
	-- taken as meant, as attach() takes an empty shipsync.databases.
	IF coalesce(pg_catalog.current_setting('shipsync.receiver_listen', true), '') OPERATOR(pg_catalog.<>) ''
	   AND pg_catalog.current_setting('shipsync.receiver_database', true)
		   IS DISTINCT FROM pg_catalog.current_database()::text THEN
		RAISE WARNING 'the receiver does not serve database "%"', pg_catalog.current_database()
			USING DETAIL = pg_catalog.format('It takes pushes for database %s (shipsync.receiver_database): there, CRM source "%s" does not exist, and a push to /crm/%s is answered 404.',
					pg_catalog.quote_ident(pg_catalog.current_setting('shipsync.receiver_database', true)),
					create_crm_source.name, create_crm_source.name),
				  HINT = pg_catalog.format('Create the source in database %s, or ALTER SYSTEM SET shipsync.receiver_database = %L and restart the server.',
					pg_catalog.quote_ident(pg_catalog.current_setting('shipsync.receiver_database', true)),
					pg_catalog.current_database());
	END IF;
	RETURN id;
EXCEPTION
	WHEN unique_violation THEN
		RAISE EXCEPTION 'CRM source "%" already exists', create_crm_source.name
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Choose another name, or drop the source first with shipsync.drop_crm_source().';
END
$$;
ALTER FUNCTION @extschema@.create_crm_source(text, text, regclass, jsonb) SET shipsync.audit_action = 'create_crm_source';

------------------------------------------------------------------------------

-- A provider's base_url changed reaches its stored requests
------------------------------------------------------------------------------
-- A provider's base_url changed (by its owner, UPDATE shipsync.provider):
-- the requests stored for its open intents go to the new one.  A request
-- is rendered and stored at its first attempt, its URL with it, and every
-- retry, retry() and requeue() sent the stored URL: a wrong base_url fixed
-- (a 404, a forbidden_host, a carrier's new endpoint) was never reached by
-- the intents stored before, which went on failing where they had.  Only
-- the URL's base changes; the method, body and idempotency key stay as
-- stored.  Intents done or coalesced keep the URL they were sent to.
CREATE FUNCTION @extschema@._provider_url_changed()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer := pg_catalog.length(OLD.base_url);
BEGIN
	UPDATE @extschema@.outbox o
	   SET request_url = NEW.base_url OPERATOR(pg_catalog.||) pg_catalog.substr(o.request_url, n OPERATOR(pg_catalog.+) 1)
	 WHERE o.provider_id OPERATOR(pg_catalog.=) NEW.provider_id
	   AND o.state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'retrying', 'in_flight', 'dead', 'invalid'])
	   AND pg_catalog.starts_with(o.request_url, OLD.base_url)
	   AND pg_catalog.substr(o.request_url, n OPERATOR(pg_catalog.+) 1, 1) OPERATOR(pg_catalog.=) ANY (ARRAY['', '/']);
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._provider_url_changed() IS
	'Internal: when a provider''s base_url changes, the stored requests of its intents not yet done (pending, retrying, in flight, dead, invalid) are given the new base in place of the old; their method, body and idempotency key stay as stored.';
CREATE TRIGGER provider_url_changed AFTER UPDATE OF base_url ON @extschema@.provider
	FOR EACH ROW WHEN (OLD.base_url IS DISTINCT FROM NEW.base_url)
	EXECUTE FUNCTION @extschema@._provider_url_changed();
REVOKE ALL ON FUNCTION @extschema@._provider_url_changed() FROM PUBLIC;

------------------------------------------------------------------------------
-- A dropped table's cancels and registrations are still sent
------------------------------------------------------------------------------
-- DROP TABLE killed every waiting intent of the table: the cancels of the
-- rows deleted just before (in the same transaction, or behind a paused or
-- slow carrier) died with table_dropped, and the carrier shipped orders
-- the CRM had deleted.  A cancel names the shipment, a registration the
-- waybill: neither reads the order row.  Only creates and updates die.
CREATE OR REPLACE FUNCTION @extschema@._on_drop()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET shipsync.audit_action = 'table_dropped'
AS $$
DECLARE
	r record;
	n bigint;
BEGIN
	FOR r IN SELECT x.objid, x.object_identity FROM pg_catalog.pg_event_trigger_dropped_objects() x
			 WHERE x.object_type OPERATOR(pg_catalog.=) 'table' LOOP
		WITH mv AS (
			DELETE FROM @extschema@.inbox i USING @extschema@.binding bb
			WHERE bb.tbl OPERATOR(pg_catalog.=) r.objid
			  AND i.binding_id OPERATOR(pg_catalog.=) bb.binding_id
			RETURNING i.*)
		INSERT INTO @extschema@.outbox (id, binding_id, provider_id, order_key, op,
			idempotency_key, created_at, next_attempt_at)
		SELECT id, binding_id, provider_id, order_key, op, idempotency_key, created_at, created_at
		FROM mv;
		-- (the name kept in dropped_table: once dropped, tbl shows a bare oid)
		WITH b AS (
			UPDATE @extschema@.binding SET active = false
			 WHERE tbl OPERATOR(pg_catalog.=) r.objid RETURNING binding_id),
		k AS (
			INSERT INTO @extschema@.dropped_table (binding_id, name)
			SELECT b.binding_id, r.object_identity FROM b
			ON CONFLICT (binding_id) DO UPDATE SET name = EXCLUDED.name, dropped_at = EXCLUDED.dropped_at),
		d AS (
			UPDATE @extschema@.outbox o
			   SET state = 'dead', last_error = 'the order table was dropped',
				   error_class = 'table_dropped', done_at = pg_catalog.now(), updated_at = pg_catalog.now()
			  FROM b WHERE o.binding_id OPERATOR(pg_catalog.=) b.binding_id
			   AND o.state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'retrying'])
			   AND o.op OPERATOR(pg_catalog.=) ANY (ARRAY['create', 'update'])
			RETURNING o.id, o.binding_id, o.order_key, o.provider_id),
		t AS (
			INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, provider_id, outbox_id, detail)
			SELECT 'table_dropped', d.binding_id, d.order_key, d.provider_id, d.id, 'the order table was dropped'
			FROM d
			RETURNING ticket_id, outbox_id, binding_id, order_key)
		-- kinds and ids only: any role may LISTEN (docs/security.md)
		SELECT pg_catalog.count(pg_catalog.pg_notify('shipsync', pg_catalog.json_build_object('event', 'table_dropped',
			'outbox_id', t.outbox_id, 'ticket_id', t.ticket_id, 'binding_id', t.binding_id,
			'order_key', t.order_key)::text))
		INTO n FROM t;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@._on_drop() IS
	'Internal: the event trigger of DROP TABLE: a dropped attached table''s binding becomes inactive, its name is kept in dropped_table and its waiting creates and updates die; its cancels and registrations, which need no order row, are still sent.';

------------------------------------------------------------------------------

-- A crm_in target in double quotes names the column inside them
------------------------------------------------------------------------------
-- A column that is no bare path name ("Customer Name") is written in double
-- quotes, as in every field map path; the quotes were taken for part of the
-- column's name, and create_crm_source() refused such a map.
CREATE OR REPLACE FUNCTION @extschema@._check_crm_map(profile text, tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	col text;
	seen text[] := '{}';
BEGIN
	-- a name that is no bare path name is written in double quotes, a
	-- quote in it doubled (docs/mapping.md): the column is the name inside
	-- (crm.c, crm_target_column(), reads it the same way)
	FOR col IN SELECT CASE WHEN m.target_path OPERATOR(pg_catalog.~) '^"([^"]|"")*"$'
						   THEN pg_catalog.replace(pg_catalog.substr(m.target_path, 2,
								pg_catalog.length(m.target_path) OPERATOR(pg_catalog.-) 2), '""', '"')
						   ELSE m.target_path END
			   FROM @extschema@.field_map m
			   WHERE m.profile OPERATOR(pg_catalog.=) _check_crm_map.profile
				 AND m.direction OPERATOR(pg_catalog.=) 'crm_in'
			   ORDER BY m.position, m.field_map_id LOOP
		-- select and "select" are one column
		IF col OPERATOR(pg_catalog.=) ANY (seen) THEN
			RAISE EXCEPTION 'the crm_in rows of profile "%" name column "%" twice', profile, col
				USING ERRCODE = 'duplicate_column',
					  DETAIL = 'A name written in double quotes and the same name without them are one column.',
					  HINT = 'Delete one of the two rows in shipsync.field_map.';
		END IF;
		seen := seen OPERATOR(pg_catalog.||) col;
		IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
					   WHERE a.attrelid OPERATOR(pg_catalog.=) tbl
						 AND a.attname OPERATOR(pg_catalog.=) col
						 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped) THEN
			RAISE EXCEPTION 'the crm_in rows of profile "%" name column "%", which table % does not have', profile, col, tbl
				USING ERRCODE = 'undefined_column',
					  DETAIL = 'A crm_in row''s target_path is a column of the orders table.',
					  HINT = 'Fix the row in shipsync.field_map, or add the column.';
		END IF;
	END LOOP;
END
$$;

------------------------------------------------------------------------------

-- A generic webhook secret is refused unless the signature check can decode it
------------------------------------------------------------------------------
-- base64 with a lone final character (a secret cut short when copied), or
-- a key over 512 bytes, passed the check and then refused every push.

CREATE OR REPLACE FUNCTION @extschema@._check_tracking_options(options jsonb, dialect text)
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text;
BEGIN
	FOREACH k IN ARRAY ARRAY['webhook_secret', 'previous_webhook_secret', 'timezone'] LOOP
		IF options ? k AND (jsonb_typeof(options->k) <> 'string' OR options->>k = '') THEN
			RAISE EXCEPTION 'option "%" must be a non-empty string', k
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = CASE WHEN k LIKE '%secret' THEN 'Give the secret the provider signs its pushes with.'
								  ELSE 'Give a string.' END;
		END IF;
	END LOOP;
	-- as the signature check decodes it (src/signature.c): base64 after an
	-- optional whsec_, no lone final character (six bits make no byte), a
	-- key of 512 bytes at most; one it cannot decode would refuse every push
	IF dialect = 'generic' AND options ? 'webhook_secret'
	   AND ((options->>'webhook_secret') !~ '^(whsec_)?[A-Za-z0-9+/]+={0,2}$'
			OR length(regexp_replace(options->>'webhook_secret', '^whsec_|=+$', '', 'g')) % 4 = 1
			OR length(regexp_replace(options->>'webhook_secret', '^whsec_', '')) > 682) THEN
		RAISE EXCEPTION 'option "webhook_secret" of a generic provider is not a Standard Webhooks secret'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A Standard Webhooks secret is whsec_ followed by the base64 of the key.',
				  HINT = 'Give the secret exactly as the carrier issued it, for example whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw.';
	END IF;
	IF options ? 'accept_unsigned_pushes' AND jsonb_typeof(options->'accept_unsigned_pushes') <> 'boolean' THEN
		RAISE EXCEPTION 'option "accept_unsigned_pushes" must be true or false'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Only sf_express pushes are unsigned; the endpoint must then authenticate them itself.';
	END IF;
	IF options ? 'timezone' AND NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = options->>'timezone') THEN
		RAISE EXCEPTION 'unknown time zone "%"', options->>'timezone'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give a name from pg_timezone_names, for example Asia/Shanghai.';
	END IF;
	PERFORM @extschema@._int_option(options, 'poll_interval_s', 0, 0, 86400);
	PERFORM @extschema@._int_option(options, 'unmatched_ttl_s', 604800, 1, 31536000);
	RETURN ARRAY['webhook_secret', 'previous_webhook_secret', 'accept_unsigned_pushes',
				 'poll_interval_s', 'unmatched_ttl_s', 'timezone'];
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._check_crm_secret(kind text, value text, what text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- as the signature check decodes it (src/signature.c): base64 after an
	-- optional whsec_, no lone final character (six bits make no byte), a
	-- key of 512 bytes at most; one it cannot decode would refuse every push
	IF kind OPERATOR(pg_catalog.=) 'generic'
	   AND (value OPERATOR(pg_catalog.!~) '^(whsec_)?[A-Za-z0-9+/]+={0,2}$'
			OR pg_catalog.length(pg_catalog.regexp_replace(value, '^whsec_|=+$', '', 'g'))
				OPERATOR(pg_catalog.%) 4 OPERATOR(pg_catalog.=) 1
			OR pg_catalog.length(pg_catalog.regexp_replace(value, '^whsec_', ''))
				OPERATOR(pg_catalog.>) 682) THEN
		RAISE EXCEPTION '% of a generic CRM source is not a Standard Webhooks secret', what
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A Standard Webhooks secret is whsec_ followed by the base64 of the key.',
				  HINT = 'Give the secret exactly as the sender issued it, for example whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw.';
	END IF;
END
$$;

------------------------------------------------------------------------------

-- The shipper's side of reconciliation leaves out order keys over 2,000
-- bytes (a row from before attach(): capture refuses such a key), which no
-- index of ours holds: reconcile_seen's failed the pass at every run
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION @extschema@._reconcile_crm(bid integer, full_pass boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b record;
	keytype text;
	skip text[];
	grace interval;
	born text;
	born_type regtype;
	trk integer;
	st record;
	h xid8;
	hage integer;
	eff text;
	tn_bad text;
	st_bad text;
	src text;
	orders text;
	ks text[];
	gone text[];
	from_rows text;
BEGIN
	SELECT x.* INTO b FROM @extschema@.binding x WHERE x.binding_id = bid;
	-- the key's type (its base type, without a length: _key_type()), with the
	-- key column's own collation when it has one: an order key of ours
	-- (COLLATE "C") cast to it then compares as the column does, and can use
	-- its index
	SELECT @extschema@._key_type(b.tbl, b.key_column)
		   || CASE WHEN co.oid IS NULL THEN '' ELSE format(' COLLATE %I.%I', cn.nspname, co.collname) END
	  INTO keytype
	  FROM pg_attribute a
	  LEFT JOIN pg_collation co ON co.oid = a.attcollation
	  LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
	 WHERE a.attrelid = b.tbl AND a.attname = b.key_column AND a.attnum > 0 AND NOT a.attisdropped;
	skip := ARRAY(SELECT w.value #>> '{}' FROM jsonb_each(b.writeback) w ORDER BY 1);
	grace := coalesce((b.options->>'grace')::interval, interval '10 minutes');
	-- a timestamp or date column holds the order's local time: read in this
	-- session's time zone (the reconciliation worker's is the database's, the
	-- one the CRM's sessions write it in), not in the UTC the owner's
	-- statement runs in
	SELECT a.atttypid INTO born_type FROM pg_attribute a
	 WHERE a.attrelid = b.tbl AND a.attname = b.options->>'created_at_column'
	   AND a.attnum > 0 AND NOT a.attisdropped;
	born := CASE WHEN b.options ? 'created_at_column' AND born_type IN ('timestamp'::regtype, 'date'::regtype)
					 THEN format('(t.%I::timestamp AT TIME ZONE %L)', b.options->>'created_at_column',
								 current_setting('TimeZone'))
				 WHEN b.options ? 'created_at_column'
					 THEN format('t.%I::timestamptz', b.options->>'created_at_column')
				 WHEN current_setting('track_commit_timestamp')::boolean
					 THEN 'pg_xact_commit_timestamp(t.xmin)'
				 ELSE 'NULL::timestamptz' END;
	SELECT p.provider_id INTO trk FROM @extschema@.provider p WHERE p.name = b.options->>'tracking_provider';
	-- the status written back is the tracking provider's once it reports one
	eff := CASE WHEN trk IS NULL THEN 's.status'
				ELSE 'CASE WHEN tr.status IS NOT NULL AND tr.status <> ''pending'' THEN tr.status ELSE s.status END' END;
	tn_bad := CASE WHEN b.writeback ? 'tracking_number'
				   THEN '(s.tracking_number IS NOT NULL AND t.o_tn COLLATE "C" IS DISTINCT FROM s.tracking_number)'
				   ELSE 'false' END;
	st_bad := CASE WHEN b.writeback ? 'status'
				   THEN format('(s.order_key IS NOT NULL AND t.o_status IS DISTINCT FROM %s)', eff)
				   ELSE 'false' END;

	-- where the last pass stopped; rows of transactions from h on are read
	-- again by the next one
	INSERT INTO @extschema@.reconcile_state (binding_id) VALUES (bid) ON CONFLICT DO NOTHING;
	SELECT x.* INTO st FROM @extschema@.reconcile_state x WHERE x.binding_id = bid FOR UPDATE;
	h := pg_snapshot_xmin(pg_current_snapshot());
	IF st.horizon IS NOT NULL THEN
		hage := age(((st.horizon::text::numeric % 4294967296)::text)::xid);
	END IF;
	-- an horizon 2^30 transactions old is too old to compare xids with
	full_pass := full_pass OR hage IS NULL OR hage < 0 OR hage > 1073741824;

	IF full_pass THEN
		src := format('%s t', b.tbl);
	ELSE
		-- the orders whose side of ours changed: the owner's statement adds
		-- the rows changed since ($2) and reads the rows of both ($1)
		ks := ARRAY(
			SELECT s.order_key FROM @extschema@.shipment s
			 WHERE s.binding_id = bid AND age(s.xmin) <= hage
			UNION
			SELECT o.order_key FROM @extschema@.outbox o
			 WHERE o.binding_id = bid AND (o.state IN ('dead', 'invalid') OR o.error_class = 'nothing_to_send')
			   AND age(o.xmin) <= hage
			UNION
			SELECT x.order_key FROM @extschema@.exception_ticket x
			 WHERE x.binding_id = bid AND x.order_key IS NOT NULL
			   AND (x.resolved_at IS NULL OR age(x.xmin) <= hage)
			UNION
			SELECT r.order_key FROM @extschema@.reconcile_seen r WHERE r.binding_id = bid);
		src := format($src$(SELECT DISTINCT c.k FROM (
				SELECT t.%1$I::text COLLATE "C" AS k FROM %2$s t WHERE age(t.xmin) <= $2
				UNION ALL
				SELECT u.k FROM unnest($1) AS u(k)) c) c
			JOIN %2$s t ON t.%1$I = c.k::%3$s$src$, b.key_column, b.tbl, keytype);
	END IF;
	-- what the comparison needs of each order row, read as the table's owner
	orders := format('SELECT t.%I::text, %s, %s, %s, t.*::%s FROM %s',
		b.key_column,
		CASE WHEN b.writeback ? 'tracking_number' THEN format('t.%I::text', b.writeback->>'tracking_number') ELSE 'NULL::text' END,
		CASE WHEN b.writeback ? 'status' THEN format('t.%I::text', b.writeback->>'status') ELSE 'NULL::text' END,
		born, b.tbl, src);
	-- each row with its digest, made as the rows are read (a whole row is
	-- never kept).  A full pass joins them as they come, planned for as many
	-- rows as the table holds (the function's support estimates it); an
	-- incremental one keeps them first, and ANALYZEs them: a few orders
	-- changed since the last pass, or a bulk import of a million
	IF full_pass THEN
		from_rows := $r$@extschema@._select_digests_as_owner($5, $6, $7, $8, $9)
			AS t(k text COLLATE "C", o_tn text, o_status text, born timestamptz, digest bigint)$r$;
	ELSE
		TRUNCATE pg_temp.recon_orders;
		INSERT INTO pg_temp.recon_orders (k, o_tn, o_status, born, digest)
		SELECT t.k, t.o_tn, t.o_status, t.born, t.digest
		  FROM @extschema@._select_digests_as_owner(b.tbl, orders, ks, hage, skip)
			   AS t(k text COLLATE "C", o_tn text, o_status text, born timestamptz, digest bigint);
		ANALYZE pg_temp.recon_orders;
		from_rows := 'pg_temp.recon_orders t';
	END IF;

	EXECUTE format($q$
		WITH act AS MATERIALIZED (
			SELECT o.order_key FROM @extschema@.outbox o
			 WHERE o.binding_id = $1 AND o.state IN ('pending', 'retrying', 'in_flight')
			UNION
			SELECT i.order_key FROM @extschema@.inbox i WHERE i.binding_id = $1),
		x AS MATERIALIZED (
			SELECT y.* FROM (
				SELECT t.k,
					   s.order_key IS NOT NULL AS shipped,
					   s.provider_shipment_id AS s_id, s.tracking_number AS s_tn, %1$s AS s_status,
					   s.content_digest AS s_digest,
					   %2$s AS tn_bad, %3$s AS st_bad,
					   (s.content_digest IS NOT NULL AND s.status <> 'cancelled'
						AND t.digest <> s.content_digest) AS addr_bad,
					   t.o_tn, t.o_status,
					   coalesce(t.born, r.first_seen_at) AS born,
					   r.order_key IS NOT NULL AS seen
				  FROM %7$s
				  LEFT JOIN @extschema@.shipment s
					ON s.binding_id = $1 AND s.provider_id = $2 AND s.order_key = t.k
				  %4$s
				  LEFT JOIN @extschema@.reconcile_seen r
					ON r.binding_id = $1 AND r.order_key = t.k) y
			 WHERE (NOT y.shipped OR y.tn_bad OR y.st_bad OR y.addr_bad)
			   -- a key over the 2,000 bytes capture takes (a row from
			   -- before attach()) was never sent, and no index of ours
			   -- holds it: reconcile_seen's failed the pass at every run
			   AND pg_catalog.octet_length(y.k) <= 2000),
		seen AS (
			INSERT INTO @extschema@.reconcile_seen (binding_id, order_key)
			SELECT $1, x.k FROM x WHERE NOT x.shipped AND NOT x.seen
			ON CONFLICT DO NOTHING)
		INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
			chk, facts, detail)
		SELECT f.kind, $2, $1, x.k, x.s_tn, 'crm', f.facts, f.detail
		  FROM x
		  LEFT JOIN LATERAL (
			  SELECT o.id, o.state, o.error_class, o.last_error FROM @extschema@.outbox o
			   WHERE NOT x.shipped AND o.binding_id = $1 AND o.order_key = x.k
				 AND (o.state IN ('dead', 'invalid') OR o.error_class = 'nothing_to_send')
			   ORDER BY o.id DESC LIMIT 1) so ON true
		 CROSS JOIN LATERAL (VALUES
			('not_sent',
			 NOT x.shipped AND x.born < now() - $3 AND x.k NOT IN (SELECT act.order_key FROM act)
			 AND so.error_class IS DISTINCT FROM 'nothing_to_send',
			 jsonb_build_object('check', 'crm',
				'reason', coalesce(so.state, 'not_captured'), 'outbox_id', so.id,
				'last_error', so.last_error, 'since', x.born),
			 format('order %%s of %%s has no shipment and nothing on its way (%%s)', x.k, $4,
				CASE so.state WHEN 'dead' THEN 'its intent is dead: ' || coalesce(so.last_error, '')
							  WHEN 'invalid' THEN 'its intent is invalid: ' || coalesce(so.last_error, '')
							  ELSE 'no intent was captured' END)),
			('tracking_mismatch', x.shipped AND x.tn_bad,
			 jsonb_build_object('check', 'crm', 'column', %5$L, 'order', x.o_tn, 'shipment', x.s_tn),
			 format('order %%s of %%s: column %%s holds %%s, the shipment''s tracking number is %%s',
				x.k, $4, %5$L, coalesce(x.o_tn, 'NULL'), x.s_tn)),
			('status_mismatch', x.shipped AND x.st_bad,
			 jsonb_build_object('check', 'crm', 'column', %6$L, 'order', x.o_status, 'shipment', x.s_status),
			 format('order %%s of %%s: column %%s holds %%s, the shipment''s status is %%s',
				x.k, $4, %6$L, coalesce(x.o_status, 'NULL'), x.s_status)),
			('address_changed_after_send',
			 x.shipped AND x.addr_bad AND x.k NOT IN (SELECT act.order_key FROM act),
			 jsonb_build_object('check', 'crm', 'shipment_id', x.s_id),
			 format('order %%s of %%s changed after its shipment %%s was sent, and no update is on its way',
				x.k, $4, coalesce(x.s_id, '')))
		 ) AS f(kind, hit, facts, detail)
		 WHERE f.hit
		ON CONFLICT DO NOTHING
	$q$, eff, tn_bad, st_bad,
		CASE WHEN trk IS NULL THEN ''
			 ELSE format('LEFT JOIN @extschema@.shipment tr ON tr.binding_id = $1 AND tr.provider_id = %s AND tr.order_key = t.k',
						 trk) END,
		b.writeback->>'tracking_number', b.writeback->>'status', from_rows)
	USING bid, b.provider_id, grace, b.tbl::text, b.tbl, orders, ks, hage, skip;

	-- orders no longer waiting: shipped, or gone (whose keys the owner's
	-- table no longer holds)
	ks := ARRAY(SELECT r.order_key FROM @extschema@.reconcile_seen r WHERE r.binding_id = bid);
	IF cardinality(ks) > 0 THEN
		gone := ARRAY(SELECT g.k FROM @extschema@._select_as_owner(b.tbl, format(
				'SELECT u.k FROM unnest($1) AS u(k) WHERE NOT EXISTS (SELECT 1 FROM %s t WHERE t.%I = u.k::%s)',
				b.tbl, b.key_column, keytype), ks, NULL) AS g(k text));
		DELETE FROM @extschema@.reconcile_seen r
		 WHERE r.binding_id = bid
		   AND (EXISTS (SELECT 1 FROM @extschema@.shipment s
						 WHERE s.binding_id = bid AND s.provider_id = b.provider_id
						   AND s.order_key = r.order_key)
				OR r.order_key = ANY (gone));
	END IF;

	UPDATE @extschema@.reconcile_state x
	   SET horizon = h, pass_at = now(),
		   full_at = CASE WHEN full_pass THEN now() ELSE x.full_at END
	 WHERE x.binding_id = bid;
END
$$;

------------------------------------------------------------------------------
-- Last: what locks the tables a CRM's order inserts use
------------------------------------------------------------------------------
-- The update is one transaction, and a lock is held to its commit.  The
-- capture trigger of every attached table writes into the inbox, and a
-- session's first capture reads the binding: an ACCESS EXCLUSIVE lock on
-- either, taken first, held every order insert for the whole update
-- (12 s with a million intents).  Taken last, they are held for these
-- two statements and the commit.  (Keep them last.)  The inbox's replica
-- identity (see above) is set by the same statement as its column.
-- 0.1's foreign key of binding to provider is found by what it is, not
-- by its name (a DBA may have renamed it: see field_map's direction check).
DO $binding_fkey$
DECLARE
	c name;
BEGIN
	FOR c IN
		SELECT con.conname FROM pg_catalog.pg_constraint con
		WHERE con.conrelid = '@extschema@.binding'::pg_catalog.regclass
			AND con.contype = 'f'
			AND con.confrelid = '@extschema@.provider'::pg_catalog.regclass
			AND con.conkey = ARRAY[(SELECT a.attnum FROM pg_catalog.pg_attribute a
				WHERE a.attrelid = con.conrelid AND a.attname = 'provider_id')]::int2[]
	LOOP
		EXECUTE pg_catalog.format('ALTER TABLE @extschema@.binding DROP CONSTRAINT %I', c);
	END LOOP;
END
$binding_fkey$;
ALTER TABLE @extschema@.inbox ALTER COLUMN order_key TYPE text COLLATE "C",
	REPLICA IDENTITY FULL;
