/* pg_shipsync--0.1.sql */

\echo Use "CREATE EXTENSION pg_shipsync" to load this file. \quit

-- Roles: created once per cluster, kept when the extension is dropped.
DO $roles$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'shipsync_reader') THEN
		CREATE ROLE shipsync_reader NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'shipsync_operator') THEN
		CREATE ROLE shipsync_operator NOLOGIN IN ROLE shipsync_reader;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'shipsync_admin') THEN
		CREATE ROLE shipsync_admin NOLOGIN IN ROLE shipsync_operator;
	END IF;
END
$roles$;

GRANT USAGE ON SCHEMA @extschema@ TO shipsync_reader;

------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------

CREATE TABLE @extschema@.provider (
	provider_id		integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name			text NOT NULL UNIQUE,
	dialect			text NOT NULL,
	base_url		text NOT NULL,
	timeout_ms		integer NOT NULL DEFAULT 10000,
	max_inflight	integer NOT NULL DEFAULT 64,
	max_attempts	integer NOT NULL DEFAULT 20,
	backoff_base_ms integer NOT NULL DEFAULT 1000,
	backoff_max_ms	integer NOT NULL DEFAULT 300000,
	rate_limit_per_s numeric NOT NULL DEFAULT 0,
	headers			jsonb NOT NULL DEFAULT '{}',
	auth			jsonb,
	options			jsonb NOT NULL DEFAULT '{}',
	paused			boolean NOT NULL DEFAULT false,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by		name NOT NULL DEFAULT SESSION_USER,
	updated_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_by		name NOT NULL DEFAULT SESSION_USER
);
COMMENT ON TABLE @extschema@.provider IS
	'One logistics endpoint: URL, dialect, limits, retry policy and credentials. Credentials (column auth) are readable by the extension owner only; see view shipsync.providers.';

CREATE TABLE @extschema@.binding (
	binding_id		integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	tbl				regclass NOT NULL UNIQUE,
	provider_id		integer NOT NULL REFERENCES @extschema@.provider,
	key_column		name NOT NULL,
	writeback		jsonb NOT NULL DEFAULT '{}',
	options			jsonb NOT NULL DEFAULT '{}',
	render_sql		text NOT NULL,
	writeback_sql	text,
	active			boolean NOT NULL DEFAULT true,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by		name NOT NULL DEFAULT SESSION_USER
);
COMMENT ON TABLE @extschema@.binding IS
	'Which CRM table is attached to which provider, its key column and its write-back map. Written by shipsync.attach() and shipsync.detach().';

-- No foreign keys and no CHECK constraints on the outbox: capture must cost
-- one narrow insert (a CHECK is re-read from its stored form by every
-- executor start, a tenth of the trigger's cost).  Only the capture trigger
-- and the dispatcher write it; op is create, update or cancel; state is one
-- of pending, in_flight, retrying, done, dead, invalid, coalesced.
-- Intent ids: the sequence advances by whole blocks that capture and this
-- default hand out one id at a time from shared memory, in order across
-- all backends (see capture.c): an intent captured after another committed
-- gets the larger id, without a sequence lock per row.
CREATE SEQUENCE @extschema@.outbox_id_seq INCREMENT BY 1024;
CREATE FUNCTION @extschema@._intent_id(seq regclass)
RETURNS bigint
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'shipsync_intent_id';
COMMENT ON FUNCTION @extschema@._intent_id(regclass) IS
	'Internal: the next intent id of shipsync.outbox, in order across all backends.';
REVOKE ALL ON FUNCTION @extschema@._intent_id(regclass) FROM PUBLIC;

CREATE TABLE @extschema@.outbox (
	id				bigint NOT NULL DEFAULT @extschema@._intent_id('@extschema@.outbox_id_seq') PRIMARY KEY,
	binding_id		integer NOT NULL,
	provider_id		integer NOT NULL,
	order_key		text NOT NULL,
	op				text NOT NULL,
	idempotency_key uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
	state			text NOT NULL DEFAULT 'pending',
	attempts		integer NOT NULL DEFAULT 0,
	next_attempt_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	lease_until		timestamptz,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at		timestamptz,
	done_at			timestamptz,
	request_method	text,
	request_url		text,
	request_body	text,
	request_digest	text,
	last_status		integer,
	error_class		text,
	last_error		text,
	coalesced_into	bigint
);
ALTER SEQUENCE @extschema@.outbox_id_seq OWNED BY @extschema@.outbox.id;
COMMENT ON TABLE @extschema@.outbox IS
	'One row per intent (create, update or cancel the shipment of one order), written by the capture trigger in the order''s own transaction. States: pending, in_flight, retrying, done, dead, invalid, coalesced. The request is rendered and stored before its first attempt and re-sent unchanged with the same idempotency key.';
COMMENT ON COLUMN @extschema@.outbox.idempotency_key IS 'Sent as Idempotency-Key on every attempt of this intent.';
COMMENT ON COLUMN @extschema@.outbox.coalesced_into IS 'For a coalesced update: the intent whose request already carried this change.';

/*
 * What the capture trigger writes, in the user's transaction: a heap with no
 * index at all, so that capturing costs the user one small heap tuple (the
 * indexed outbox cost a quarter of a plain insert's speed).  The dispatcher
 * moves these rows into the outbox, indexes and all, in its own
 * transactions, as soon as a commit tells it of new intents; ids are the
 * outbox's intent ids, so order is kept.  Rows come and go: vacuum it
 * after every 10,000 of them rather than after a fifth of the table, and
 * not for inserts (rows that will be deleted need no freezing; while a
 * provider is paused, each insert-driven vacuum re-read the whole backlog).
 */
CREATE TABLE @extschema@.inbox (
	id				bigint NOT NULL,
	binding_id		integer NOT NULL,
	provider_id		integer NOT NULL,
	order_key		text NOT NULL,
	op				text NOT NULL,
	idempotency_key uuid NOT NULL,
	created_at		timestamptz NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
		autovacuum_vacuum_insert_threshold = -1);
COMMENT ON TABLE @extschema@.inbox IS
	'Intents just captured, not yet taken into shipsync.outbox by the dispatcher (it does so within milliseconds of the commit, or when a paused provider is resumed). No index: capture costs the user one small heap insert. shipsync.queue_status and shipsync.trace() count these as pending.';

CREATE INDEX outbox_due_idx ON @extschema@.outbox (provider_id, next_attempt_at, id)
	WHERE state IN ('pending', 'retrying');
CREATE INDEX outbox_order_idx ON @extschema@.outbox (binding_id, order_key, id)
	WHERE state IN ('pending', 'retrying', 'in_flight');
CREATE INDEX outbox_attention_idx ON @extschema@.outbox (provider_id, state)
	WHERE state IN ('dead', 'invalid');
-- the intents in flight and their leases, for the sweep of expired leases
-- at every idle check: it must not read a paused provider's backlog
CREATE INDEX outbox_lease_idx ON @extschema@.outbox (lease_until)
	WHERE state = 'in_flight';

CREATE TABLE @extschema@.shipment (
	shipment_id		bigint GENERATED ALWAYS AS IDENTITY,
	binding_id		integer NOT NULL,
	order_key		text NOT NULL,
	provider_id		integer NOT NULL,
	provider_shipment_id text,
	tracking_number text,
	label_url		text,
	status			text NOT NULL DEFAULT 'pending',
	raw_status		text,
	fees			jsonb,
	fee_total		numeric,
	request_digest	text,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	-- the natural key is the primary key: one index less to maintain per shipment
	PRIMARY KEY (binding_id, order_key, provider_id)
);
CREATE INDEX shipment_tracking_idx ON @extschema@.shipment (provider_id, tracking_number);
COMMENT ON TABLE @extschema@.shipment IS
	'One per order and provider: the carrier''s shipment id, tracking number, label, canonical status (raw status beside it) and fees (numeric, never float).';

CREATE TABLE @extschema@.delivery_log (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	outbox_id		bigint NOT NULL,
	attempt			integer NOT NULL,
	provider_id		integer NOT NULL,
	at				timestamptz NOT NULL DEFAULT pg_catalog.now(),
	method			text,
	url				text,
	http_status		integer,
	latency_ms		double precision,
	outcome			text NOT NULL,
	error_class		text,
	error			text,
	request_digest	text
);
CREATE INDEX delivery_log_outbox_idx ON @extschema@.delivery_log (outbox_id);
CREATE INDEX delivery_log_at_idx ON @extschema@.delivery_log USING brin (at);
COMMENT ON TABLE @extschema@.delivery_log IS
	'Every HTTP attempt: intent, attempt number, status code, latency, outcome (done, retry, dead), error class and the SHA-256 of the request body. No headers, so no secrets.';

CREATE TABLE @extschema@.exception_ticket (
	ticket_id		bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	kind			text NOT NULL,
	binding_id		integer,
	order_key		text,
	provider_id		integer,
	outbox_id		bigint,
	detail			text,
	opened_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	acknowledged_at timestamptz,
	acknowledged_by name,
	resolved_at		timestamptz,
	resolved_by		name
);
CREATE INDEX exception_ticket_open_idx ON @extschema@.exception_ticket (kind, opened_at)
	WHERE resolved_at IS NULL;
COMMENT ON TABLE @extschema@.exception_ticket IS
	'The exception ledger: one row per problem that needs a person (dead intent, failed write-back), opened, acknowledged and resolved with who and when.';

------------------------------------------------------------------------------
-- Views
------------------------------------------------------------------------------

CREATE VIEW @extschema@.queue_status AS
SELECT p.name AS provider,
	   p.paused,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'pending')
		   + coalesce((SELECT pg_catalog.count(*) FROM @extschema@.inbox i
					   WHERE i.provider_id = p.provider_id), 0) AS pending,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'in_flight') AS in_flight,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'retrying') AS retrying,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'dead') AS dead,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'invalid') AS invalid,
	   pg_catalog.now() - LEAST(pg_catalog.min(o.created_at)
		   FILTER (WHERE o.state IN ('pending', 'retrying', 'in_flight')),
		   (SELECT pg_catalog.min(i.created_at) FROM @extschema@.inbox i
			WHERE i.provider_id = p.provider_id)) AS oldest_pending_age
FROM @extschema@.provider p
LEFT JOIN @extschema@.outbox o
	   ON o.provider_id = p.provider_id
	  AND o.state IN ('pending', 'in_flight', 'retrying', 'dead', 'invalid')
GROUP BY p.provider_id, p.name, p.paused;
COMMENT ON VIEW @extschema@.queue_status IS
	'Per provider: intents pending, in flight, retrying, dead and invalid, and the age of the oldest one not yet delivered.';

CREATE VIEW @extschema@.providers AS
SELECT provider_id, name, dialect, base_url, timeout_ms, max_inflight, max_attempts,
	   backoff_base_ms, backoff_max_ms, rate_limit_per_s, paused,
	   CASE WHEN auth IS NULL THEN NULL
			ELSE pg_catalog.jsonb_build_object('type', auth->>'type', 'secret', '********') END AS auth,
	   created_at, created_by, updated_at, updated_by
FROM @extschema@.provider;
COMMENT ON VIEW @extschema@.providers IS
	'Providers with their credentials masked: what operators and readers may see.';

------------------------------------------------------------------------------
-- Internal functions
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._wake(config_changed boolean DEFAULT false)
RETURNS void
AS 'MODULE_PATHNAME', 'shipsync_wake'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@._wake(boolean) IS
	'Internal: wake this database''s dispatcher when the current transaction commits.';

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
REVOKE ALL ON FUNCTION @extschema@.claim(integer, integer, integer) FROM PUBLIC;

-- Auth headers of a provider, as header lines.
CREATE FUNCTION @extschema@._auth_headers(auth jsonb)
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF auth IS NULL THEN
		RETURN '{}';
	END IF;
	CASE auth->>'type'
	WHEN 'bearer' THEN
		RETURN ARRAY['Authorization: Bearer ' || (auth->>'token')];
	WHEN 'api_key' THEN
		RETURN ARRAY[(auth->>'header') || ': ' || (auth->>'key')];
	WHEN 'basic' THEN
		RETURN ARRAY['Authorization: Basic ' ||
			translate(encode(convert_to((auth->>'username') || ':' ||
				coalesce(auth->>'password', ''), 'UTF8'), 'base64'), E'\n', '')];
	ELSE
		RETURN '{}';
	END CASE;
END
$$;
REVOKE ALL ON FUNCTION @extschema@._auth_headers(jsonb) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION @extschema@._check_options(jsonb, text[], text) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION @extschema@._int_option(jsonb, text, integer, integer, integer) FROM PUBLIC;

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
END
$$;
REVOKE ALL ON FUNCTION @extschema@._check_auth(jsonb) FROM PUBLIC;

CREATE FUNCTION @extschema@._check_url(base_url text)
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
	IF base_url ~* '^http://' THEN
		host := lower(substring(base_url from '^http://(?:[^@/]*@)?(\[[^\]]*\]|[^:/]*)'));
		IF host NOT IN ('127.0.0.1', 'localhost', '[::1]')
		   AND host !~ '^127\.\d+\.\d+\.\d+$'
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
REVOKE ALL ON FUNCTION @extschema@._check_url(text) FROM PUBLIC;

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
			  'backoff_max_ms', 'rate_limit_per_s', 'headers', 'auth']
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
			IF h !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]+$' OR jsonb_typeof(opts->'headers'->h) <> 'string'
			   OR (opts->'headers'->>h) ~ '[\r\n]' THEN
				RAISE EXCEPTION 'invalid header "%"', h
					USING ERRCODE = 'invalid_parameter_value',
						  DETAIL = 'Header names are HTTP tokens and values are strings without line breaks.',
						  HINT = 'Fix the name or the value in option "headers".';
			END IF;
			IF lower(h) IN ('idempotency-key', 'content-type', 'content-length', 'host') THEN
				RAISE EXCEPTION 'header "%" is set by pg_shipsync', h
					USING ERRCODE = 'invalid_parameter_value',
						  DETAIL = 'Idempotency-Key, Content-Type, Content-Length and Host belong to each request.',
						  HINT = 'Remove it from option "headers".';
			END IF;
		END LOOP;
	END IF;
	PERFORM @extschema@._check_auth(opts->'auth');
	PERFORM @extschema@._check_dialect(dialect, opts);
	rate := coalesce((opts->>'rate_limit_per_s')::numeric, 0);

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
			coalesce(opts->'headers', '{}'),
			opts->'auth',
			opts - 'auth')
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
	'Register a logistics provider. Options: timeout_ms, max_inflight, max_attempts, backoff_base_ms, backoff_max_ms, rate_limit_per_s, headers, auth, profile (its field_map and status_map profile, by default the dialect); sf_express also sender, monthly_card, pay_method, express_type_id; for tracking: webhook_secret, previous_webhook_secret, accept_unsigned_pushes, poll_interval_s, unmatched_ttl_s, timezone; easypost carrier, aftership slug, kuaidi100 company and callback_url.';

CREATE FUNCTION @extschema@._set_paused(provider text, paused boolean)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
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
REVOKE ALL ON FUNCTION @extschema@._set_paused(text, boolean) FROM PUBLIC;
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

	render := format(
		'SELECT shipsync_u.shipsync_id, t.%1$I IS NOT NULL AS found,'
		' pg_catalog.json_build_object(''order_ref'', shipsync_u.shipsync_key,'
		' ''order'', pg_catalog.row_to_json(t))::text AS body,'
		' %4$s AS is_cancel'
		' FROM unnest($1::bigint[], $2::text[]) AS shipsync_u(shipsync_id, shipsync_key)'
		' LEFT JOIN %2$s AS t ON t.%1$I = shipsync_u.shipsync_key::%3$s',
		keycol, tbl, keytype,
		CASE WHEN cancel_when IS NULL THEN 'false'
			 ELSE format('COALESCE((%s), false)', cancel_when) END);

	IF array_length(sets, 1) > 0 THEN
		wbsql := format(
			'UPDATE %s AS t SET %s'
			' FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::numeric[])'
			' AS shipsync_u(shipsync_key, provider_shipment_id, tracking_number, status, label_url, fee_total)'
			' WHERE t.%I = shipsync_u.shipsync_key::%s',
			tbl, array_to_string(sets, ', '), keycol, keytype);
	END IF;

	-- prove both statements against the table now, not in the dispatcher
	BEGIN
		EXECUTE 'EXPLAIN ' || render USING '{}'::bigint[], '{}'::text[];
		IF wbsql IS NOT NULL THEN
			EXECUTE 'EXPLAIN ' || wbsql USING '{}'::text[], '{}'::text[], '{}'::text[],
				'{}'::text[], '{}'::text[], '{}'::numeric[];
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
	'Attach a CRM table to a provider: installs the capture trigger. writeback maps tracking_number, status, provider_shipment_id, label_url, fee_total to columns; options: cancel_when (a boolean SQL expression over the row), validate (invalid, the default: an order missing required mapped fields becomes an invalid intent with a ticket; reject: its INSERT or UPDATE fails), tracking_provider (a provider of a tracking dialect where every new waybill is registered).';

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
	   SET resolved_at = now(), resolved_by = session_user
	 WHERE t.outbox_id = retry.outbox_id AND t.resolved_at IS NULL;
	PERFORM @extschema@._wake(false);
	RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@.retry(bigint) IS
	'Send one dead, invalid or retrying intent again now, with its attempts reset and the same idempotency key.';

CREATE FUNCTION @extschema@.requeue(provider text DEFAULT NULL, state text DEFAULT 'dead')
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
	PERFORM @extschema@._wake(false);
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.requeue(text, text) IS
	'Send again every intent of a provider (or all providers) in the given state (default dead). Returns how many were requeued.';

------------------------------------------------------------------------------
-- A dropped table cannot ship: its waiting intents stop with the reason.
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._on_drop()
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
			RETURNING outbox_id, order_key)
		SELECT count(pg_notify('shipsync', json_build_object('event', 'table_dropped',
			'outbox_id', t.outbox_id, 'order_key', t.order_key)::text))
		INTO n FROM t;
	END LOOP;
END
$$;
CREATE EVENT TRIGGER shipsync_on_drop ON sql_drop EXECUTE FUNCTION @extschema@._on_drop();

------------------------------------------------------------------------------
-- pg_dump: these tables hold the user's data, not the extension's
------------------------------------------------------------------------------

SELECT pg_catalog.pg_extension_config_dump('@extschema@.provider', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.binding', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.inbox', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.shipment', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.delivery_log', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.exception_ticket', '');
-- and their identity sequences, one statement each (each call updates the
-- extension's catalog row)
SELECT pg_catalog.pg_extension_config_dump('@extschema@.provider_provider_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.binding_binding_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.shipment_shipment_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.delivery_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.exception_ticket_ticket_id_seq', '');

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.capture() TO PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@._wake(boolean) TO PUBLIC;
GRANT SELECT ON @extschema@.queue_status, @extschema@.providers, @extschema@.outbox,
	@extschema@.inbox,
	@extschema@.binding,
	@extschema@.shipment, @extschema@.delivery_log, @extschema@.exception_ticket TO shipsync_reader;
GRANT EXECUTE ON FUNCTION @extschema@.retry(bigint), @extschema@.requeue(text, text),
	@extschema@.pause(text), @extschema@.resume(text),
	@extschema@._set_paused(text, boolean) TO shipsync_operator;
GRANT UPDATE (acknowledged_at, acknowledged_by, resolved_at, resolved_by)
	ON @extschema@.exception_ticket TO shipsync_operator;
GRANT EXECUTE ON FUNCTION @extschema@.create_provider(text, text, text, jsonb),
	@extschema@.attach(regclass, text, name, jsonb, jsonb), @extschema@.detach(regclass)
	TO shipsync_admin;

-- The extension may be created before the dispatcher looks: wake it.
SELECT @extschema@._wake(true);

------------------------------------------------------------------------------
-- Tracking
--
-- Events pushed (shipsync.ingest_tracking) or pulled are verified, mapped to
-- the canonical statuses through status_map, deduplicated on (provider,
-- event key) and folded in event-time order into the shipment's status,
-- which is written back onto the order row (src/tracking.c).
------------------------------------------------------------------------------

-- Tracking options of create_provider(): checks those given, returns their
-- names.  Called at run time, so it may live here, after create_provider.
-- Secrets are never echoed in a message.
CREATE FUNCTION @extschema@._check_tracking_options(options jsonb, dialect text)
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
	IF dialect = 'generic' AND options ? 'webhook_secret'
	   AND (options->>'webhook_secret') !~ '^(whsec_)?[A-Za-z0-9+/]+={0,2}$' THEN
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
REVOKE ALL ON FUNCTION @extschema@._check_tracking_options(jsonb, text) FROM PUBLIC;

CREATE TABLE @extschema@.canonical_status (
	name			text PRIMARY KEY,
	rank			integer NOT NULL,
	terminal		boolean NOT NULL DEFAULT false,
	recoverable		boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE @extschema@.canonical_status IS
	'The canonical shipment statuses and their rules: a status moves up in rank; from a recoverable status any later event applies; expired is set only by the provider''s expiry message and left by any later event; terminal statuses stay; unknown never changes anything.';
INSERT INTO @extschema@.canonical_status (name, rank, terminal, recoverable) VALUES
	('pending', 0, false, false),
	('expired', 5, false, false),
	('pre_transit', 10, false, false),
	('in_transit', 20, false, false),
	('out_for_delivery', 30, false, false),
	('available_for_pickup', 35, false, false),
	('delivery_failed', 40, false, true),
	('exception', 45, false, true),
	('returning', 50, false, false),
	('returned', 90, true, false),
	('delivered', 100, true, false),
	('cancelled', 100, true, false),
	('unknown', -1, false, false);

CREATE TABLE @extschema@.status_map (
	profile			text NOT NULL,
	raw_status		text NOT NULL,
	pattern			text CHECK (pattern IS NULL OR ('' ~ pattern) IS NOT NULL),
	status			text NOT NULL REFERENCES @extschema@.canonical_status (name),
	priority		integer NOT NULL DEFAULT 0,
	builtin			boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX status_map_key ON @extschema@.status_map
	(profile, raw_status, (coalesce(pattern, '')));
COMMENT ON TABLE @extschema@.status_map IS
	'Provider raw status to canonical status, per profile (the provider option profile, else its dialect). A row matches an event whose raw status or sub-status (AfterShip subtag, EasyPost status_detail, Kuaidi100 status text) is raw_status and, when pattern is set, whose description matches that regular expression; the highest priority wins, then a row with a pattern. Profile generic needs no rows for the canonical names. Unmapped: unknown, raw status kept.';
COMMENT ON COLUMN @extschema@.status_map.builtin IS
	'Seeded by the extension (not dumped by pg_dump). Add rows of higher priority rather than editing these.';

INSERT INTO @extschema@.status_map (profile, raw_status, pattern, status, priority, builtin)
SELECT m.profile, m.raw_status, m.pattern, m.status, m.priority, true
FROM (VALUES
	('easypost', 'unknown', NULL, 'pending', 0),
	('easypost', 'pre_transit', NULL, 'pre_transit', 0),
	('easypost', 'in_transit', NULL, 'in_transit', 0),
	('easypost', 'out_for_delivery', NULL, 'out_for_delivery', 0),
	('easypost', 'available_for_pickup', NULL, 'available_for_pickup', 0),
	('easypost', 'failure', NULL, 'exception', 0),
	('easypost', 'failure', '(?i)attempt', 'delivery_failed', 1),
	('easypost', 'error', NULL, 'exception', 0),
	('easypost', 'return_to_sender', NULL, 'returning', 0),
	('easypost', 'delivered', NULL, 'delivered', 0),
	('easypost', 'cancelled', NULL, 'cancelled', 0),
	('aftership', 'Pending', NULL, 'pending', 0),
	('aftership', 'InfoReceived', NULL, 'pre_transit', 0),
	('aftership', 'InTransit', NULL, 'in_transit', 0),
	('aftership', 'OutForDelivery', NULL, 'out_for_delivery', 0),
	('aftership', 'AvailableForPickup', NULL, 'available_for_pickup', 0),
	('aftership', 'AttemptFail', NULL, 'delivery_failed', 0),
	('aftership', 'Exception', NULL, 'exception', 0),
	('aftership', 'Exception_010', NULL, 'returning', 10),
	('aftership', 'Exception_011', NULL, 'returned', 10),
	('aftership', 'Delivered', NULL, 'delivered', 0),
	('aftership', 'Expired', NULL, 'expired', 0),
	('kuaidi100', '0', NULL, 'in_transit', 0),
	('kuaidi100', '1', NULL, 'in_transit', 0),
	('kuaidi100', '7', NULL, 'in_transit', 0),
	('kuaidi100', '10', NULL, 'in_transit', 0),
	('kuaidi100', '11', NULL, 'in_transit', 0),
	('kuaidi100', '12', NULL, 'in_transit', 0),
	('kuaidi100', '5', NULL, 'out_for_delivery', 0),
	('kuaidi100', '5', '(驿站|快递柜|自提|代收点|丰巢|待取件)', 'available_for_pickup', 1),
	('kuaidi100', '2', NULL, 'exception', 0),
	('kuaidi100', '2', '(派送不成功|未妥投|无人|联系不上|改约|再次派送)', 'delivery_failed', 1),
	('kuaidi100', '13', NULL, 'exception', 0),
	('kuaidi100', '14', NULL, 'exception', 0),
	('kuaidi100', '6', NULL, 'returning', 0),
	('kuaidi100', '4', NULL, 'returned', 0),
	('kuaidi100', '3', NULL, 'delivered', 0),
	('kuaidi100', 'abort', NULL, 'expired', 0),
	('kuaidi100', '在途', NULL, 'in_transit', 0),
	('kuaidi100', '揽收', NULL, 'in_transit', 0),
	('kuaidi100', '干线', NULL, 'in_transit', 0),
	('kuaidi100', '转投', NULL, 'in_transit', 0),
	('kuaidi100', '派件', NULL, 'out_for_delivery', 0),
	('kuaidi100', '疑难', NULL, 'exception', 0),
	('kuaidi100', '退回', NULL, 'returning', 0),
	('kuaidi100', '退签', NULL, 'returned', 0),
	('kuaidi100', '签收', NULL, 'delivered', 0),
	('kuaidi100', '拒签', NULL, 'exception', 0),
	('sf_express', '50', NULL, 'in_transit', 0),
	('sf_express', '30', NULL, 'in_transit', 0),
	('sf_express', '31', NULL, 'in_transit', 0),
	('sf_express', '36', NULL, 'in_transit', 0),
	('sf_express', '44', NULL, 'out_for_delivery', 0),
	('sf_express', '80', NULL, 'delivered', 0)
) AS m(profile, raw_status, pattern, status, priority);

CREATE TABLE @extschema@.tracking_event (
	event_id		bigint GENERATED ALWAYS AS IDENTITY,
	provider_id		integer NOT NULL,
	event_key		text NOT NULL,
	tracking_number text NOT NULL,
	binding_id		integer NOT NULL,
	order_key		text NOT NULL,
	occurred_at		timestamptz NOT NULL,
	status			text NOT NULL,
	raw_status		text,
	raw_detail		text,
	location		text,
	description		text,
	received_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	-- the dedup key is the primary key: one index less per event
	PRIMARY KEY (provider_id, event_key)
);
CREATE INDEX tracking_event_order_idx ON @extschema@.tracking_event (binding_id, order_key, occurred_at);
COMMENT ON TABLE @extschema@.tracking_event IS
	'One row per tracking event received for a known shipment, unique per provider and event key (duplicates are dropped): event time, canonical status, and the provider''s raw status and sub-status beside it. Out-of-order events are kept; the shipment''s status is folded from them in event-time order.';

CREATE TABLE @extschema@.unmatched_event (
	provider_id		integer NOT NULL,
	event_key		text NOT NULL,
	tracking_number text NOT NULL,
	occurred_at		timestamptz NOT NULL,
	raw_status		text,
	raw_detail		text,
	location		text,
	description		text,
	received_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	expires_at		timestamptz NOT NULL,
	PRIMARY KEY (provider_id, event_key)
);
CREATE INDEX unmatched_event_tracking_idx ON @extschema@.unmatched_event (provider_id, tracking_number);
CREATE INDEX unmatched_event_expiry_idx ON @extschema@.unmatched_event (expires_at);
COMMENT ON TABLE @extschema@.unmatched_event IS
	'Tracking events for a tracking number no shipment has yet: parked, moved to tracking_event when the shipment appears, dropped at expires_at (provider option unmatched_ttl_s) with an exception ticket of kind unmatched_expired.';

-- The status fold: events in event-time order, one step each
-- (src/tracking.c); the result is {status, raw status}.
CREATE FUNCTION @extschema@._status_step(internal, text, text, integer, boolean, boolean)
RETURNS internal
AS 'MODULE_PATHNAME', 'shipsync_status_step'
LANGUAGE C IMMUTABLE;
CREATE FUNCTION @extschema@._status_final(internal)
RETURNS text[]
AS 'MODULE_PATHNAME', 'shipsync_status_final'
LANGUAGE C IMMUTABLE;
CREATE AGGREGATE @extschema@._status_fold(text, text, integer, boolean, boolean) (
	SFUNC = @extschema@._status_step,
	STYPE = internal,
	FINALFUNC = @extschema@._status_final
);


-- Expired parked events: dropped, one ticket each.  PL/pgSQL, not SQL: its
-- plan is kept for the session instead of being made at every call.
CREATE FUNCTION @extschema@._expire_unmatched(pid integer)
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
	t AS (
		INSERT INTO @extschema@.exception_ticket (kind, provider_id, detail)
		SELECT 'unmatched_expired', d.provider_id,
			   format('tracking event %s of provider %s for unknown tracking number %s (raw status %s) found no shipment within unmatched_ttl_s = %s',
					  d.event_key, p.name, d.tracking_number, coalesce(d.raw_status, 'none'),
					  coalesce(p.options->>'unmatched_ttl_s', '604800'))
		FROM d JOIN @extschema@.provider p ON p.provider_id = d.provider_id
		RETURNING 1)
	SELECT count(*) INTO n FROM t;
	RETURN n;
END
$$;

/*
 * Store one batch of events of a provider and move its shipments' statuses.
 * Called by ingest_tracking() and the poller (src/tracking.c), which write
 * the changes back onto the order rows.  Returns the counts, then one row
 * per shipment whose canonical status changed.
 */
CREATE FUNCTION @extschema@._apply_tracking(pid integer, prof text, ttl_s integer,
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

	-- the fold over each touched shipment's whole history, in event time
	RETURN QUERY
	WITH touched AS (
		SELECT DISTINCT t.bid, t.k FROM unnest(bids, oks) AS t(bid, k)),
	-- one index scan per shipment, whatever the statistics say
	f AS (
		SELECT touched.bid AS binding_id, touched.k AS order_key, h.st
		FROM touched CROSS JOIN LATERAL (
			SELECT @extschema@._status_fold(e.status, e.raw_status, c.rank, c.terminal,
											c.recoverable ORDER BY e.occurred_at, e.event_id) AS st
			FROM @extschema@.tracking_event e
			JOIN @extschema@.canonical_status c ON c.name = e.status
			WHERE e.binding_id = touched.bid AND e.order_key = touched.k) h),
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

-- Parked events are matched when their shipment appears: at the end of the
-- transaction that records its tracking number (the dispatcher's apply,
-- after its own write-back), deferred so that theirs comes last.
CREATE FUNCTION @extschema@._match_parked()
RETURNS trigger
AS 'MODULE_PATHNAME', 'shipsync_match_parked'
LANGUAGE C;
CREATE CONSTRAINT TRIGGER shipsync_match_parked
	AFTER INSERT OR UPDATE OF tracking_number ON @extschema@.shipment
	DEFERRABLE INITIALLY DEFERRED
	FOR EACH ROW WHEN (NEW.tracking_number IS NOT NULL)
	EXECUTE FUNCTION @extschema@._match_parked();

CREATE FUNCTION @extschema@.ingest_tracking(provider text, body text, headers jsonb DEFAULT '{}')
RETURNS jsonb
AS 'MODULE_PATHNAME', 'shipsync_ingest_tracking'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.ingest_tracking(text, text, jsonb) IS
	'Take one tracking push of a provider, as received: verify its signature over the raw body (headers matched case-insensitively), explode it into events, drop duplicates, park events of unknown tracking numbers, move the shipments'' statuses and write them back onto the order rows. Returns {"events", "new", "duplicate", "unmatched", "matched", "shipments_changed"} and, for kuaidi100 and sf_express, the "reply" the provider expects. A bad or missing signature raises SQLSTATE SS401; a body that is not the dialect''s payload, SS400.';

CREATE FUNCTION @extschema@.expire_unmatched()
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@._expire_unmatched(NULL) $$;
COMMENT ON FUNCTION @extschema@.expire_unmatched() IS
	'Drop the parked tracking events whose time is up (provider option unmatched_ttl_s), opening one exception ticket of kind unmatched_expired for each; returns how many. ingest_tracking() does this for its provider at every call.';

-- The timeline of one order.  Here, after the tracking tables, because a
-- SQL function's body is checked against the tables when it is created.
CREATE FUNCTION @extschema@.trace(tbl regclass, key text)
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
		  WHERE i.binding_id = b.binding_id AND i.order_key = trace.key)
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
		SELECT t.opened_at, 'ticket',
			   jsonb_build_object('ticket_id', t.ticket_id, 'kind', t.kind, 'detail', t.detail,
				   'resolved_at', t.resolved_at, 'resolved_by', t.resolved_by)
		FROM @extschema@.exception_ticket t JOIN b ON t.binding_id = b.binding_id
		WHERE t.order_key = trace.key
	) AS timeline(at, kind, detail)
	ORDER BY at, CASE kind WHEN 'intent' THEN 0 WHEN 'attempt' THEN 1
						   WHEN 'shipment' THEN 2 WHEN 'tracking' THEN 3 ELSE 4 END
$$;
COMMENT ON FUNCTION @extschema@.trace(regclass, text) IS
	'The timeline of one order: its intents, every HTTP attempt (status, latency, error), its shipment, its tracking events (at their event time) and its tickets, in time order.';
REVOKE ALL ON FUNCTION @extschema@.trace(regclass, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.trace(regclass, text) TO shipsync_reader;

CREATE FUNCTION @extschema@._hmac_sha256(key bytea, msg bytea)
RETURNS bytea
AS 'MODULE_PATHNAME', 'shipsync_hmac_sha256_sql'
LANGUAGE C IMMUTABLE STRICT;

CREATE FUNCTION @extschema@._verify_standard_webhooks(secret text, msg_id text, ts text,
	signature text, body text, now_unix bigint)
RETURNS text
AS 'MODULE_PATHNAME', 'shipsync_verify_standard_webhooks_at'
LANGUAGE C IMMUTABLE;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.status_map', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tracking_event', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.unmatched_event', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tracking_event_event_id_seq', '');
-- canonical_status is not dumped: it is the extension's own contract,
-- recreated by CREATE EXTENSION and read-only to everyone else.

REVOKE ALL ON FUNCTION @extschema@._status_step(internal, text, text, integer, boolean, boolean),
	@extschema@._status_final(internal),
	@extschema@._expire_unmatched(integer),
	@extschema@._apply_tracking(integer, text, integer, text[], text[], text[], text[],
								timestamptz[], text[], text[]),
	@extschema@.ingest_tracking(text, text, jsonb), @extschema@.expire_unmatched(),
	@extschema@._hmac_sha256(bytea, bytea), @extschema@._match_parked(),
	@extschema@._verify_standard_webhooks(text, text, text, text, text, bigint)
	FROM PUBLIC;
GRANT SELECT ON @extschema@.canonical_status, @extschema@.status_map,
	@extschema@.tracking_event, @extschema@.unmatched_event TO shipsync_reader;
GRANT EXECUTE ON FUNCTION @extschema@.ingest_tracking(text, text, jsonb),
	@extschema@.expire_unmatched() TO shipsync_operator;
GRANT INSERT, UPDATE, DELETE ON @extschema@.status_map TO shipsync_admin;

------------------------------------------------------------------------------
-- Mapping and dialects
------------------------------------------------------------------------------

-- A provider's mapping profile is coalesce(options->>'profile', dialect).

CREATE TABLE @extschema@.field_map (
	field_map_id	integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	profile			text NOT NULL,
	direction		text NOT NULL CHECK (direction IN ('out', 'in')),
	target_path		text NOT NULL,
	source			text,
	transform		text NOT NULL DEFAULT 'identity',
	arg				jsonb,
	"default"		text,
	required		boolean NOT NULL DEFAULT false,
	position		integer NOT NULL DEFAULT 0,
	seeded			boolean NOT NULL DEFAULT false,
	updated_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_by		name NOT NULL DEFAULT SESSION_USER,
	UNIQUE (profile, direction, target_path)
);
COMMENT ON TABLE @extschema@.field_map IS
	'Declarative field maps per profile. Outbound rows (direction out) build the request from CRM columns, constants (const:), provider options (option:path) and the intent (meta:order_key, meta:idempotency_key); inbound rows (in) read canonical fields out of responses. Paths are dotted with [k=v] filters. A change applies to the next request.';
COMMENT ON COLUMN @extschema@.field_map.target_path IS
	'Outbound: where the value goes in the request, e.g. contactInfoList[contactType=2].address. Inbound: the canonical field (tracking_number, provider_shipment_id, label_url, status).';
COMMENT ON COLUMN @extschema@.field_map.transform IS
	'identity, trim, upper, lower, concat, default, lookup, to_number, unit, timestamp, parse_time or phone; arg holds its argument as JSON.';
COMMENT ON COLUMN @extschema@.field_map.seeded IS
	'A row of a built-in profile, created with the extension and read-only: copy the profile with shipsync.copy_profile() to change it.';

ALTER TABLE @extschema@.shipment ADD COLUMN waybills jsonb;
COMMENT ON COLUMN @extschema@.shipment.waybills IS
	'Every waybill the carrier returned (SF Express: waybillNoInfoList, main, child and return waybills); tracking_number holds the main one.';

-- Option keys a dialect accepts beyond the common ones.
CREATE FUNCTION @extschema@._dialect_options(dialect text)
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT ARRAY['profile'] || CASE dialect
		WHEN 'sf_express' THEN ARRAY['sender', 'monthly_card', 'pay_method', 'express_type_id']
		WHEN 'easypost' THEN ARRAY['carrier']
		WHEN 'aftership' THEN ARRAY['slug']
		WHEN 'kuaidi100' THEN ARRAY['company', 'callback_url']
		ELSE '{}'::text[] END
$$;
REVOKE ALL ON FUNCTION @extschema@._dialect_options(text) FROM PUBLIC;

-- The string fields each auth type needs (NULL: unknown type).
CREATE FUNCTION @extschema@._auth_fields(auth_type text)
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE auth_type
		WHEN 'bearer' THEN ARRAY['token']
		WHEN 'api_key' THEN ARRAY['header', 'key']
		WHEN 'basic' THEN ARRAY['username']
		WHEN 'sf_express' THEN ARRAY['partner_id', 'checkword']
		WHEN 'kuaidi100' THEN ARRAY['customer', 'key']
		WHEN 'oauth2' THEN ARRAY['token_url', 'client_id', 'client_secret']
		ELSE NULL END
$$;
REVOKE ALL ON FUNCTION @extschema@._auth_fields(text) FROM PUBLIC;

-- What a dialect requires of its options, beyond their names.
CREATE FUNCTION @extschema@._check_dialect(dialect text, opts jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	f text;
BEGIN
	IF opts ? 'profile' AND (jsonb_typeof(opts->'profile') <> 'string'
		OR (opts->>'profile') !~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$') THEN
		RAISE EXCEPTION 'option "profile" must be a profile name'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given is %s.', opts->'profile'),
				  HINT = 'A profile name is 1 to 63 letters, digits, "_", "." or "-", as in shipsync.field_map.profile.';
	END IF;
	IF dialect = 'sf_express' THEN
		IF opts->'auth'->>'type' IS DISTINCT FROM 'sf_express' THEN
			RAISE EXCEPTION 'the sf_express dialect needs auth type "sf_express"'
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'SF Express signs every request with the partner''s check word.',
					  HINT = 'Pass "auth": {"type": "sf_express", "partner_id": "...", "checkword": "..."}.';
		END IF;
		IF opts ? 'sender' THEN
			IF jsonb_typeof(opts->'sender') <> 'object' THEN
				RAISE EXCEPTION 'option "sender" must be a JSON object'
					USING ERRCODE = 'invalid_parameter_value',
						  HINT = 'For example {"name": "...", "phone": "...", "province": "...", "city": "...", "district": "...", "address": "..."}.';
			END IF;
			FOR f IN SELECT jsonb_object_keys(opts->'sender') LOOP
				IF f NOT IN ('name', 'phone', 'province', 'city', 'district', 'address', 'company') THEN
					RAISE EXCEPTION 'unknown sender field "%"', f
						USING ERRCODE = 'invalid_parameter_value',
							  DETAIL = 'Sender fields: name, phone, province, city, district, address, company.',
							  HINT = 'Check the spelling in option "sender".';
				END IF;
			END LOOP;
		END IF;
	ELSIF opts->'auth'->>'type' = 'sf_express' THEN
		RAISE EXCEPTION 'auth type "sf_express" belongs to the sf_express dialect'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Create the provider with dialect sf_express.';
	END IF;
	-- tracking dialects: the auth each provider uses, and what subscribing needs
	IF dialect IN ('easypost', 'aftership', 'kuaidi100') THEN
		-- (parenthesized: plpgsql ends an IF condition at its first THEN)
		IF opts->'auth'->>'type' IS DISTINCT FROM
		   (CASE dialect WHEN 'easypost' THEN 'basic' WHEN 'aftership' THEN 'api_key' ELSE 'kuaidi100' END)
		   OR (dialect = 'aftership' AND lower(opts->'auth'->>'header') <> 'as-api-key') THEN
			RAISE EXCEPTION 'the % dialect needs auth %', dialect,
				CASE dialect WHEN 'easypost' THEN '{"type": "basic", "username": "<API key>"}'
							 WHEN 'aftership' THEN '{"type": "api_key", "header": "as-api-key", "key": ...}'
							 ELSE '{"type": "kuaidi100", "customer": ..., "key": ...}' END
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = CASE dialect WHEN 'easypost' THEN 'EasyPost takes the API key as the Basic user name.'
										   WHEN 'aftership' THEN 'AfterShip reads the key from header as-api-key.'
										   ELSE 'Kuaidi100 subscriptions carry the key; queries are signed with key and customer.' END,
					  HINT = 'Set option "auth" accordingly.';
		END IF;
		IF dialect = 'kuaidi100' AND (jsonb_typeof(opts->'callback_url') IS DISTINCT FROM 'string'
			OR jsonb_typeof(opts->'company') IS DISTINCT FROM 'string') THEN
			RAISE EXCEPTION 'the kuaidi100 dialect needs options "company" and "callback_url"'
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'A subscription names the carrier (company, e.g. shunfeng) and where Kuaidi100 pushes the events.',
					  HINT = 'For example {"company": "shunfeng", "callback_url": "https://shop.example/hooks/kuaidi100"}.';
		END IF;
	END IF;
	IF opts->'auth'->>'type' = 'oauth2' THEN
		-- the token URL follows the rules of base_url (https, or loopback)
		PERFORM @extschema@._check_url(opts->'auth'->>'token_url');
		IF opts->'auth' ? 'scope' AND jsonb_typeof(opts->'auth'->'scope') <> 'string' THEN
			RAISE EXCEPTION 'auth type "oauth2" needs "scope" to be a string'
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Give the scopes separated by spaces, for example "shipments:write".';
		END IF;
	END IF;
END
$$;
REVOKE ALL ON FUNCTION @extschema@._check_dialect(text, jsonb) FROM PUBLIC;

-- attach options validate (invalid, the default, or reject) and
-- tracking_provider; a tracking provider cannot be attached as the shipper.
CREATE FUNCTION @extschema@._check_attach_options(opts jsonb, provider_id integer)
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
END
$$;
REVOKE ALL ON FUNCTION @extschema@._check_attach_options(jsonb, integer) FROM PUBLIC;

-- Auth header lines with their secrets masked: what render_request() shows.
CREATE FUNCTION @extschema@._auth_headers_masked(auth jsonb)
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE auth->>'type'
		WHEN 'bearer' THEN ARRAY['Authorization: Bearer ********']
		WHEN 'api_key' THEN ARRAY[(auth->>'header') || ': ********']
		WHEN 'basic' THEN ARRAY['Authorization: Basic ********']
		WHEN 'kuaidi100' THEN ARRAY['X-Kuaidi100-Customer: ' || (auth->>'customer'),
									'X-Kuaidi100-Sign: ********']
		WHEN 'oauth2' THEN ARRAY['Authorization: Bearer ********']
		ELSE '{}'::text[] END
$$;
REVOKE ALL ON FUNCTION @extschema@._auth_headers_masked(jsonb) FROM PUBLIC;

CREATE FUNCTION @extschema@._map_check(target_path text, source text, transform text, arg text)
RETURNS void
AS 'MODULE_PATHNAME', 'shipsync_map_check'
LANGUAGE C;
COMMENT ON FUNCTION @extschema@._map_check(text, text, text, text) IS
	'Internal: compile one field_map rule and raise an error naming what is wrong with it.';
REVOKE ALL ON FUNCTION @extschema@._map_check(text, text, text, text) FROM PUBLIC;

CREATE FUNCTION @extschema@._field_map_check()
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
	NEW.updated_by := session_user;
	RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION @extschema@._field_map_check() FROM PUBLIC;

-- A changed map reaches the dispatcher through the configuration generation.
CREATE FUNCTION @extschema@._field_map_changed()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM @extschema@._wake(true);
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION @extschema@._field_map_changed() FROM PUBLIC;

CREATE FUNCTION @extschema@.copy_profile(from_profile text, to_profile text)
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
		"default", required, position)
	SELECT to_profile, direction, target_path, source, transform, arg, "default", required, position
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

-- The built-in sf_express profile: EXP_RECE_CREATE_ORDER's msgData from a
-- table with receiver_name, receiver_phone, receiver_province, receiver_city,
-- receiver_district, receiver_address (required), cargo_name, quantity,
-- weight_kg, amount, remark; the sender from provider option "sender".
INSERT INTO @extschema@.field_map (profile, direction, position, target_path, source, transform, arg, "default", required, seeded)
VALUES
	('sf_express', 'out', 1, 'language', 'const:zh-CN', 'identity', NULL, NULL, false, true),
	('sf_express', 'out', 2, 'orderId', 'meta:order_key', 'identity', NULL, NULL, true, true),
	('sf_express', 'out', 3, 'contactInfoList[contactType=1].contact', 'option:sender.name', 'trim', NULL, NULL, false, true),
	('sf_express', 'out', 4, 'contactInfoList[contactType=1].mobile', 'option:sender.phone', 'phone', NULL, NULL, false, true),
	('sf_express', 'out', 5, 'contactInfoList[contactType=1].company', 'option:sender.company', 'trim', NULL, NULL, false, true),
	('sf_express', 'out', 6, 'contactInfoList[contactType=1].province', 'option:sender.province', 'trim', NULL, NULL, false, true),
	('sf_express', 'out', 7, 'contactInfoList[contactType=1].city', 'option:sender.city', 'trim', NULL, NULL, false, true),
	('sf_express', 'out', 8, 'contactInfoList[contactType=1].county', 'option:sender.district', 'trim', NULL, NULL, false, true),
	('sf_express', 'out', 9, 'contactInfoList[contactType=1].address', 'option:sender.address', 'trim', NULL, NULL, false, true),
	('sf_express', 'out', 10, 'contactInfoList[contactType=2].contact', 'receiver_name', 'trim', NULL, NULL, false, true),
	('sf_express', 'out', 11, 'contactInfoList[contactType=2].mobile', 'receiver_phone', 'phone', NULL, NULL, false, true),
	('sf_express', 'out', 12, 'contactInfoList[contactType=2].province', 'receiver_province', 'trim', NULL, NULL, false, true),
	('sf_express', 'out', 13, 'contactInfoList[contactType=2].city', 'receiver_city', 'trim', NULL, NULL, false, true),
	('sf_express', 'out', 14, 'contactInfoList[contactType=2].county', 'receiver_district', 'trim', NULL, NULL, false, true),
	('sf_express', 'out', 15, 'contactInfoList[contactType=2].address', 'receiver_address', 'trim', NULL, NULL, true, true),
	('sf_express', 'out', 16, 'cargoDetails[0].name', 'cargo_name', 'trim', NULL, NULL, false, true),
	('sf_express', 'out', 17, 'cargoDetails[0].count', 'quantity', 'to_number', NULL, NULL, false, true),
	('sf_express', 'out', 18, 'cargoDetails[0].weight', 'weight_kg', 'to_number', NULL, NULL, false, true),
	('sf_express', 'out', 19, 'cargoDetails[0].amount', 'amount', 'to_number', NULL, NULL, false, true),
	('sf_express', 'out', 20, 'cargoDetails[0].currency', 'const:CNY', 'identity', NULL, NULL, false, true),
	('sf_express', 'out', 21, 'monthlyCard', 'option:monthly_card', 'identity', NULL, NULL, false, true),
	('sf_express', 'out', 22, 'payMethod', 'option:pay_method', 'to_number', NULL, '1', false, true),
	('sf_express', 'out', 23, 'expressTypeId', 'option:express_type_id', 'to_number', NULL, '1', false, true),
	('sf_express', 'out', 24, 'parcelQty', 'const:1', 'to_number', NULL, NULL, false, true),
	('sf_express', 'out', 25, 'totalWeight', 'weight_kg', 'to_number', NULL, NULL, false, true),
	('sf_express', 'out', 26, 'remark', 'remark', 'trim', NULL, NULL, false, true),
	('sf_express', 'in', 1, 'tracking_number', 'apiResultData.msgData.waybillNoInfoList[waybillType=1].waybillNo', 'identity', NULL, NULL, false, true),
	('sf_express', 'in', 2, 'provider_shipment_id', 'apiResultData.msgData.orderId', 'identity', NULL, NULL, false, true);

-- the triggers come after the seeds: seeded rows are read-only from here on
CREATE TRIGGER field_map_check BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.field_map
	FOR EACH ROW EXECUTE FUNCTION @extschema@._field_map_check();
CREATE TRIGGER field_map_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.field_map
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._field_map_changed();

-- Validation in the user's transaction (attach option validate = reject)
CREATE FUNCTION @extschema@._validate()
RETURNS trigger
AS 'MODULE_PATHNAME', 'shipsync_validate'
LANGUAGE C SECURITY DEFINER;
COMMENT ON FUNCTION @extschema@._validate() IS
	'Internal: the validation trigger shipsync.attach() installs with option validate = reject; an order whose required mapped fields are missing or malformed is refused.';

CREATE FUNCTION @extschema@._render(outbox_id bigint, OUT method text, OUT url text, OUT body text)
RETURNS record
AS 'MODULE_PATHNAME', 'shipsync_render'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@._render(bigint) IS
	'Internal: the request of one intent, stored or rendered now from the current order row without storing it.';
REVOKE ALL ON FUNCTION @extschema@._render(bigint) FROM PUBLIC;

CREATE FUNCTION @extschema@.render_request(outbox_id bigint)
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
		|| ARRAY(SELECT k || ': ' || v FROM jsonb_each_text(p.headers) AS h(k, v))
		|| CASE WHEN p.dialect = 'kuaidi100' THEN '{}'::text[]
				ELSE @extschema@._auth_headers_masked(p.auth) END;
	RETURN NEXT;
END
$$;
COMMENT ON FUNCTION @extschema@.render_request(bigint) IS
	'A dry run: the method, URL, headers (secrets masked) and body that the intent sends or would send. An intent never sent is rendered from the current order row and its provider''s field map, and nothing is stored.';

REVOKE ALL ON FUNCTION @extschema@.render_request(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.copy_profile(text, text) FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.field_map', 'WHERE NOT seeded');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.field_map_field_map_id_seq', '');

GRANT SELECT ON @extschema@.field_map TO shipsync_reader;
GRANT INSERT, UPDATE, DELETE ON @extschema@.field_map TO shipsync_admin;
GRANT EXECUTE ON FUNCTION @extschema@.render_request(bigint) TO shipsync_operator;
GRANT EXECUTE ON FUNCTION @extschema@.copy_profile(text, text) TO shipsync_admin;
GRANT EXECUTE ON FUNCTION @extschema@._map_check(text, text, text, text) TO shipsync_admin;
GRANT EXECUTE ON FUNCTION @extschema@._validate() TO PUBLIC;
