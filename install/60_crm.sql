-- install/60_crm.sql: Pushes coming in: CRM sources (简道云, Salesforce
-- Outbound Messages, generic signed JSON) that turn a CRM's push into an
-- INSERT, UPDATE or DELETE of an orders table, their deliveries, and the
-- batched tracking ingest of the receiver worker (src/receiver.c).
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql.

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
	'The options given to create_crm_source() other than the secret: organization_id and sobject_type for salesforce_om, version_column.';

CREATE TABLE @extschema@.crm_delivery (
	crm_source_id	integer NOT NULL,
	delivery_id		text NOT NULL,
	received_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	expires_at		timestamptz NOT NULL,
	PRIMARY KEY (crm_source_id, delivery_id)
);
CREATE INDEX crm_delivery_expiry_idx ON @extschema@.crm_delivery (crm_source_id, expires_at);
COMMENT ON TABLE @extschema@.crm_delivery IS
	'Deliveries of CRM pushes already applied, kept for the source''s dedup_ttl: the 简道云 X-JDY-DeliverId, the Salesforce notification Id, the Standard Webhooks webhook-id. A delivery seen again is acknowledged and changes nothing.';

-- no foreign key to crm_source: see _drop_deliveries() below
CREATE TABLE @extschema@.crm_removed (
	crm_source_id	integer NOT NULL,
	record_key		text NOT NULL,
	version			jsonb,
	removed_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	expires_at		timestamptz NOT NULL,
	PRIMARY KEY (crm_source_id, record_key)
);
CREATE INDEX crm_removed_expiry_idx ON @extschema@.crm_removed (crm_source_id, expires_at);
COMMENT ON TABLE @extschema@.crm_removed IS
	'Records removed by a CRM source with option version_column, kept for its dedup_ttl: the record''s key and version. A create or update of such a record not newer than its remove (a retry of a push sent before it) does not bring the order back; a 简道云 data_recover does.';

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

-- A source's secret as its kind reads it; what names where it was given.
CREATE FUNCTION @extschema@._check_crm_secret(kind text, value text, what text)
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
COMMENT ON FUNCTION @extschema@.create_crm_source(text, text, regclass, jsonb) IS
	'Register a CRM that pushes orders into table tbl, reached by the receiver at /crm/{name}. Kinds: jiandaoyun (简道云 data push, X-JDY-Signature), salesforce_om (Salesforce Outbound Messages, checked by OrganizationId), generic (Standard Webhooks-signed JSON). Options: secret (jiandaoyun and generic), organization_id and sobject_type (salesforce_om), profile (the crm_in field-map profile, by default the source name), key_column (the column matched to the CRM record id, by default the primary key; it needs a unique index), dedup_ttl (how long delivery ids are remembered, default 7 days), version_column (a column a crm_in row writes the record''s modification time into: an update older than the row''s changes nothing).';

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

-- A source's deliveries and removed records go with it (no foreign key:
-- see _provider_in_use() in 10_queue.sql)
CREATE FUNCTION @extschema@._drop_deliveries()
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
CREATE TRIGGER crm_source_drop_deliveries AFTER DELETE ON @extschema@.crm_source
	FOR EACH ROW EXECUTE FUNCTION @extschema@._drop_deliveries();

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
 * raises SS400; so does one with a document type declaration, which
 * Salesforce never sends: its entities are kept in the parsed document
 * and failed the reading of each notification (2200M, a 500 of the
 * receiver), and its default attributes could add what the body does not
 * say.
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
SELECT pg_catalog.pg_extension_config_dump('@extschema@.crm_removed', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.crm_source_crm_source_id_seq', '');
