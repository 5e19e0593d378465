-- install/50_secrets.sql: Secrets: carrier credentials encrypted at rest in
-- shipsync.secret, set_secret(), rotate_key() and the view secrets.
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql.

------------------------------------------------------------------------------
-- Secrets
--
-- Every credential of a provider, and the signing secret of a CRM source
-- (under the source's name), is sealed with AES-256-GCM under the key of
-- shipsync.secret_key_file (src/secret.c, src/crypto.c) and stored here,
-- and nowhere else; only the dispatcher (building requests),
-- ingest_tracking() and ingest_crm() (verifying signatures) open them.
------------------------------------------------------------------------------

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

-- A dump of a database whose extension is at 0.1 says CREATE EXTENSION
-- with no version: restored into a server with this version installed, it
-- made this version and filled it with the rows of 0.1, which it cannot
-- use (the bindings' statements of 0.1: every order failed to render, and
-- died; credentials in plain text).  Such rows are refused, saying how to
-- restore that dump (docs/upgrading.md).  A provider updated by hand (the
-- extension's owner may) is refused such a credential too: never used
-- (the secrets are read from shipsync.secret), it made the dump of this
-- version refused as one of 0.1.
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
CREATE TRIGGER provider_not_of_0_1 BEFORE INSERT OR UPDATE OF auth, options ON @extschema@.provider
	FOR EACH ROW EXECUTE FUNCTION @extschema@._refuse_rows_of_0_1();
CREATE TRIGGER binding_not_of_0_1 BEFORE INSERT ON @extschema@.binding
	FOR EACH ROW EXECUTE FUNCTION @extschema@._refuse_rows_of_0_1();
