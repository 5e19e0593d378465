-- install/20_api.sql: The public API of providers, bindings and repairs, and its
-- checks.
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql.

------------------------------------------------------------------------------
-- Internal functions
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._wake(config_changed boolean DEFAULT false)
RETURNS void
AS 'MODULE_PATHNAME', 'shipsync_wake'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@._wake(boolean) IS
	'Internal: wake this database''s dispatcher when the current transaction commits.';

CREATE FUNCTION @extschema@._database_listed()
RETURNS boolean
AS 'MODULE_PATHNAME', 'shipsync_database_listed'
LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@._database_listed() IS
	'Internal (attach()): whether the current database is in shipsync.databases, read as the launcher reads it (a name in double quotes may hold commas and quotes); null when the list is not valid.';

CREATE FUNCTION @extschema@._row_digest(r record, skip text[])
RETURNS bigint
AS 'MODULE_PATHNAME', 'shipsync_row_digest'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._row_digest(record, text[]) IS
	'Internal: a 64-bit digest of an order row without the columns named in skip (its write-back columns): computed when a request is rendered, and by reconciliation to tell an order changed after it was sent.';

CREATE FUNCTION @extschema@.capture()
RETURNS trigger
AS 'MODULE_PATHNAME', 'shipsync_capture'
LANGUAGE C;
COMMENT ON FUNCTION @extschema@.capture() IS
	'The capture trigger installed by shipsync.attach(): one outbox row per inserted, updated or deleted order, in the same transaction.';

CREATE FUNCTION @extschema@.claim(provider_id integer, max_n integer, lease_ms integer DEFAULT 60000)
RETURNS SETOF @extschema@.outbox
AS 'MODULE_PATHNAME', 'shipsync_claim'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.claim(integer, integer, integer) IS
	'Claim up to max_n due intents of one provider (FOR UPDATE SKIP LOCKED, the oldest first, never ahead of an earlier intent of the same order) and lease them for lease_ms. The dispatcher runs this same statement; call it yourself only to drain a queue by hand.';

-- The header line an auth object makes (bearer, api_key, basic), with the
-- secrets given in it: the formatting the dispatcher applies to a
-- provider's opened secrets (src/outbox.c).
CREATE FUNCTION @extschema@._auth_headers(auth jsonb)
RETURNS text[]
AS 'MODULE_PATHNAME', 'shipsync_auth_headers'
LANGUAGE C IMMUTABLE;

-- Check the options of create_provider() and return them as a record.
CREATE FUNCTION @extschema@._check_options(options jsonb, allowed text[], what text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text;
BEGIN
	IF options IS NULL OR jsonb_typeof(options) <> 'object' THEN
		RAISE EXCEPTION 'options must be a JSON object'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The %s options given are %s.', what, coalesce(jsonb_typeof(options), 'null')),
				  HINT = 'Pass options as a jsonb object, for example ''{"timeout_ms": 5000}''.';
	END IF;
	FOR k IN SELECT jsonb_object_keys(options) LOOP
		IF NOT k = ANY (allowed) THEN
			RAISE EXCEPTION 'unknown % option "%"', what, k
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Known options: %s.', array_to_string(allowed, ', ')),
					  HINT = 'Check the spelling of the option name.';
		END IF;
	END LOOP;
END
$$;

CREATE FUNCTION @extschema@._int_option(options jsonb, key text, dflt integer, lo integer, hi integer)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v jsonb := options->key;
	n numeric;
BEGIN
	IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
		RETURN dflt;
	END IF;
	IF jsonb_typeof(v) <> 'number' THEN
		RAISE EXCEPTION 'option "%" must be a number', key
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given is %s.', v),
				  HINT = format('Give an integer between %s and %s.', lo, hi);
	END IF;
	n := v::text::numeric;
	IF n <> trunc(n) OR n < lo OR n > hi THEN
		RAISE EXCEPTION 'option "%" is out of range', key
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given is %s.', v),
				  HINT = format('Give an integer between %s and %s.', lo, hi);
	END IF;
	RETURN n::integer;
END
$$;

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

CREATE FUNCTION @extschema@._check_auth(auth jsonb)
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

CREATE FUNCTION @extschema@._check_url(base_url text)
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

------------------------------------------------------------------------------
-- Public API: providers
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.create_provider(name text, dialect text, base_url text,
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

CREATE FUNCTION @extschema@._set_paused(provider text, paused boolean)
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
-- "who" columns record session_user: these functions run as their definer.

CREATE FUNCTION @extschema@.pause(provider text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@._set_paused($1, true) $$;
COMMENT ON FUNCTION @extschema@.pause(text) IS
	'Stop sending to one provider; capture goes on and intents wait.';

CREATE FUNCTION @extschema@.resume(provider text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@._set_paused($1, false) $$;
COMMENT ON FUNCTION @extschema@.resume(text) IS
	'Start sending to a paused provider again.';

------------------------------------------------------------------------------
-- Public API: bindings
------------------------------------------------------------------------------

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

/*
 * The type an order key (text) is cast to, to find its row: the key
 * column's base type, without a length or precision, and bigint for any
 * integer.  The statements that cast it are made once, at attach(): a key
 * column widened afterwards (varchar(5) to
 * varchar(10), a domain to its base type) would otherwise have a longer
 * key cut to the old length, and find another order's row; an integer
 * widened (int to bigint, smallint to int) had a key beyond the old range
 * fail to cast, and every order rendered with it wait.  An int or smallint
 * column compared with a bigint still uses its index (the integer
 * operators are one family).  A real stays real: its keys are printed as
 * real (1.1), and 1.1 read as double precision is no real's value, so the
 * order was taken for deleted.
 */
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
	SELECT CASE WHEN d.typid IN ('int2'::regtype, 'int4'::regtype) THEN 'bigint'
				ELSE format_type(d.typid, -1) END
	  FROM d ORDER BY d.depth DESC LIMIT 1
$$;
COMMENT ON FUNCTION @extschema@._key_type(regclass, name) IS
	'Internal (attach(), reconciliation, resync()): the type order keys are cast to, the key column''s base type without a length (bigint for any integer), so that a key column widened after attach() never has a key cut to another order''s nor fails to cast one.';

CREATE FUNCTION @extschema@.attach(tbl regclass, provider text, key_column name DEFAULT NULL,
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
COMMENT ON FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) IS
	'Attach a CRM table to a provider: installs the capture trigger. writeback maps tracking_number, status, provider_shipment_id, label_url, fee_total to columns; options: cancel_when (a boolean SQL expression over the row), validate (invalid, the default: an order missing required mapped fields becomes an invalid intent with a ticket; reject: its INSERT or UPDATE fails), tracking_provider (a provider of a tracking dialect where every new waybill is registered), pii (which columns of the generic body are personal: {"column": "name"|"phone"|"address"|"email"|"id_number"|"text"|null}), grace (reconciliation: how old an order without a shipment must be to be not_sent, default 10 minutes), created_at_column (the column that tells an order''s age), adopt (the binding of a table this one replaces: its shipments, intents, events, fees and tickets become this binding''s).';

CREATE FUNCTION @extschema@.detach(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE @extschema@.binding b SET active = false WHERE b.tbl = detach.tbl AND b.active;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'table % is not attached', tbl
			USING ERRCODE = 'undefined_object',
				  HINT = 'See SELECT tbl FROM shipsync.binding WHERE active.';
	END IF;
	IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', tbl
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	EXECUTE format('DROP TRIGGER IF EXISTS shipsync_capture ON %s', tbl);
	IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'shipsync_validate') THEN
		EXECUTE format('DROP TRIGGER shipsync_validate ON %s', tbl);
	END IF;
	PERFORM @extschema@._wake(true);
END
$$;
COMMENT ON FUNCTION @extschema@.detach(regclass) IS
	'Stop capturing a table. Intents already captured are still delivered.';

------------------------------------------------------------------------------
-- Public API: repairs
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.retry(outbox_id bigint)
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
COMMENT ON FUNCTION @extschema@.retry(bigint) IS
	'Send one dead, invalid or retrying intent again now, with its attempts reset and the same idempotency key.';

-- Bulk repair: every intent of the given states matching the filters is
-- sent again now, attempts reset, same idempotency key; its tickets are
-- resolved (a new failure reopens them); audited as action.  Shared by
-- requeue() and retry().
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

------------------------------------------------------------------------------
-- A dropped table cannot ship: its waiting intents stop with the reason.
------------------------------------------------------------------------------

-- SECURITY DEFINER: the owner of an attached table may drop it without any
-- right on the extension's tables.  It acts on bindings only.
CREATE FUNCTION @extschema@._on_drop()
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
CREATE EVENT TRIGGER shipsync_on_drop ON sql_drop EXECUTE FUNCTION @extschema@._on_drop();

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
