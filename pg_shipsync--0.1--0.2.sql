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
	IF value ~ '[\x01-\x1f\x7f-\x9f]' THEN
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
		WHERE x.base_url ~ '[\x01-\x1f\x7f-\x9f]|^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@'
		   OR x.auth->>'token_url' ~ '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@'
		   OR x.options->>'callback_url' ~ '[\x01-\x1f\x7f-\x9f]|^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@'
		   OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_each_text(COALESCE(x.auth, '{}')) e
					  WHERE e.value ~ '[\x01-\x1f\x7f-\x9f]')
		   OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_each_text(x.headers) e
					  WHERE e.value ~ '[\x01-\x1f\x7f-\x9f]'
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
			   OR (hv #>> '{}') ~ '[\x01-\x1f\x7f-\x9f]' THEN
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
			@extschema@._int_option(opts, 'max_inflight', 64, 1, 1024),
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
		'(%22salt%22%3A%22).*?(%22%2C%22resultv2%22)', '\1__SHIPSYNC_KUAIDI100_SALT__\2')
  FROM @extschema@.provider p
 WHERE p.provider_id = o.provider_id AND p.dialect = 'kuaidi100' AND o.op = 'register'
   AND o.request_body LIKE '%\%22salt\%22\%3A\%22%';

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

-- field maps get a third direction: crm_in
ALTER TABLE @extschema@.field_map DROP CONSTRAINT field_map_direction_check;
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
		doc := XMLPARSE(DOCUMENT pg_catalog.regexp_replace(body, '^\uFEFF', ''));
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
				  HINT = 'For example {"ca_bundle": "-----BEGIN CERTIFICATE-----\n...", "min_version": "1.3"}.';
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
	IF base_url IS NULL OR base_url !~* '^https?://[^/?#\s]+(/[^?#\s]*)?$' THEN
		RAISE EXCEPTION 'invalid base_url "%"', coalesce(base_url, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A base URL is http:// or https://, a host and an optional path, without query or fragment.',
				  HINT = 'For example https://api.carrier.example/v1.';
	END IF;
	-- where: an internal address only if shipsync.allowed_hosts allows it
	-- (names are judged when connecting); how: https, but for loopback
	PERFORM @extschema@._check_host(base_url);
	IF base_url ~* '^http://' THEN
		host := lower(substring(base_url from '^http://(?:[^@/]*@)?(\[[^\]]*\]|[^:/]*)'));
		-- loopback: localhost and *.localhost (RFC 6761: libcurl resolves
		-- them to loopback itself), 127.0.0.0/8, ::1
		IF host NOT IN ('127.0.0.1', 'localhost', '[::1]')
		   AND host !~ '^127\.\d+\.\d+\.\d+$' AND host !~ '\.localhost$'
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

-- tickets get a resolution note; their "who" columns are the server's
ALTER TABLE @extschema@.exception_ticket ADD COLUMN resolution text;
COMMENT ON COLUMN @extschema@.exception_ticket.acknowledged_by IS
	'Who set acknowledged_at (shipsync.acknowledge()): set by the server, never by the caller.';
COMMENT ON COLUMN @extschema@.exception_ticket.resolved_by IS
	'Who set resolved_at (shipsync.resolve(), retry(), requeue()): set by the server, never by the caller.';
COMMENT ON COLUMN @extschema@.exception_ticket.resolution IS
	'The note given to shipsync.resolve().';

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
   AND target_path ~ '^contactInfoList\[contactType=[12]\]\.(contact|mobile|address)$';
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
	PERFORM @extschema@._check_options(opts, ARRAY['cancel_when', 'validate', 'tracking_provider', 'pii'], 'attach');
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
COMMENT ON FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) IS
	'Attach a CRM table to a provider: installs the capture trigger. writeback maps tracking_number, status, provider_shipment_id, label_url, fee_total to columns; options: cancel_when (a boolean SQL expression over the row), validate (invalid, the default: an order missing required mapped fields becomes an invalid intent with a ticket; reject: its INSERT or UPDATE fails), tracking_provider (a provider of a tracking dialect where every new waybill is registered), pii (which columns of the generic body are personal: {"column": "name"|"phone"|"address"|"email"|null}).';

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
	'Every change of providers, secrets, bindings, field maps and status maps, and every state-changing call (attach, detach, pause, resume, retry, requeue, set_secret, rotate_key, acknowledge, resolve): when, by whom, and the values before and after, secrets shown as "(set)" or "(changed)". Only the extension''s owner may change or delete rows; the dispatcher prunes rows older than shipsync.audit_retention.';
COMMENT ON COLUMN @extschema@.audit_log."session_user" IS
	'The session user, or the extension''s own worker (dispatcher).';
COMMENT ON COLUMN @extschema@.audit_log."current_user" IS
	'The role the session acted as (after SET ROLE), outside any SECURITY DEFINER function.';
COMMENT ON COLUMN @extschema@.audit_log.action IS
	'The function called (attach, pause, ...), or insert, update, delete or truncate for a change made directly to the table.';
COMMENT ON COLUMN @extschema@.audit_log.object_name IS
	'provider: its name; binding: the table; field_map: profile/direction/target_path; status_map: profile/raw_status/pattern; intent: its id; ticket: its id.';
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
		   (ARRAY['provider', 'secret', 'binding', 'field_map', 'status_map', 'crm_source']) THEN
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
	'Internal: the audit trigger of the tables provider, secret, binding, field_map, status_map and crm_source.';

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

-- One step of a ticket's life, acknowledge or resolve: false if it was
-- taken already.  The "who" column follows from the trigger above.
CREATE FUNCTION @extschema@._ticket_step(ticket_id bigint, step text, note text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	done timestamptz;
	after jsonb;
	ack boolean := step OPERATOR(pg_catalog.=) 'acknowledge';
BEGIN
	SELECT CASE WHEN ack THEN x.acknowledged_at ELSE x.resolved_at END INTO done
	  FROM @extschema@.exception_ticket x
	 WHERE x.ticket_id OPERATOR(pg_catalog.=) _ticket_step.ticket_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'exception ticket % does not exist', ticket_id
			USING ERRCODE = 'undefined_object',
				  HINT = 'See SELECT ticket_id, kind, detail FROM shipsync.exception_ticket WHERE resolved_at IS NULL.';
	END IF;
	IF done IS NOT NULL THEN
		RETURN false;
	END IF;
	UPDATE @extschema@.exception_ticket x
	   SET acknowledged_at = CASE WHEN ack THEN pg_catalog.now() ELSE x.acknowledged_at END,
		   resolved_at = CASE WHEN ack THEN x.resolved_at ELSE pg_catalog.now() END,
		   resolution = CASE WHEN ack THEN x.resolution ELSE note END
	 WHERE x.ticket_id OPERATOR(pg_catalog.=) _ticket_step.ticket_id
	RETURNING CASE WHEN ack
		THEN pg_catalog.jsonb_build_object('acknowledged_at', x.acknowledged_at,
										   'acknowledged_by', x.acknowledged_by)
		ELSE pg_catalog.jsonb_build_object('resolved_at', x.resolved_at,
										   'resolved_by', x.resolved_by, 'resolution', x.resolution) END
	INTO after;
	PERFORM @extschema@._audit(step, 'ticket', ticket_id::text,
		(SELECT pg_catalog.jsonb_object_agg(k, NULL) FROM pg_catalog.jsonb_object_keys(after) k), after);
	RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@._ticket_step(bigint, text, text) IS
	'Internal: acknowledge or resolve one exception ticket, and audit it.';

CREATE FUNCTION @extschema@.acknowledge(ticket_id bigint)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@._ticket_step($1, 'acknowledge', NULL) $$;
COMMENT ON FUNCTION @extschema@.acknowledge(bigint) IS
	'Acknowledge an exception ticket: acknowledged_at is now, acknowledged_by the session user. Returns false if it already was.';

CREATE FUNCTION @extschema@.resolve(ticket_id bigint, note text DEFAULT NULL)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@._ticket_step($1, 'resolve', $2) $$;
COMMENT ON FUNCTION @extschema@.resolve(bigint, text) IS
	'Resolve an exception ticket, with an optional note: resolved_at is now, resolved_by the session user, resolution the note. Returns false if it already was resolved.';

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
GRANT EXECUTE ON FUNCTION @extschema@.acknowledge(bigint), @extschema@.resolve(bigint, text)
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
	@extschema@.acknowledge(bigint), @extschema@.resolve(bigint, text) FROM PUBLIC;
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

-- A dispatcher of the new library waits for this update: wake it.
SELECT @extschema@._wake(true);
