/* pg_shipsync--0.1--0.2.sql: brings a 0.1 install to 0.2 */

\echo Use "ALTER EXTENSION pg_shipsync UPDATE TO '0.2'" to load this file. \quit

-- 0.2's install script grants every privilege in one place, after one
-- REVOKE that covers every function; 0.1 revoked function by function.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.capture() TO PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@._wake(boolean) TO PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@._validate() TO PUBLIC;

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

-- A dispatcher of the new library waits for this update: wake it.
SELECT @extschema@._wake(true);
