-- install/40_mapping.sql: Field maps and dialects: profiles and their seeds,
-- validation and render_request().
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql.

------------------------------------------------------------------------------
-- Mapping and dialects
------------------------------------------------------------------------------

-- A provider's mapping profile is coalesce(options->>'profile', dialect).

CREATE TABLE @extschema@.field_map (
	field_map_id	integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	profile			text NOT NULL,
	direction		text NOT NULL CHECK (direction IN ('out', 'in', 'crm_in', 'fee', 'statement')),
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
	pii				text,
	UNIQUE (profile, direction, target_path),
	CONSTRAINT field_map_pii_check CHECK (pii IS NULL OR
		(pii IN ('name', 'phone', 'address', 'email', 'id_number', 'text') AND direction = 'out'))
);
COMMENT ON TABLE @extschema@.field_map IS
	'Declarative field maps per profile. Outbound rows (direction out) build the request from CRM columns, constants (const:), provider options (option:path) and the intent (meta:order_key, meta:idempotency_key); inbound rows (in) read canonical fields out of responses; crm_in rows turn a record a CRM pushed (ingest_crm()) into the columns of an orders table; fee rows (fee) read the lines of fee pushes, pulls and JSON statements, and statement rows (statement) name the CSV columns of a statement. Paths are dotted with [k=v] filters. A change applies to the next request.';
COMMENT ON COLUMN @extschema@.field_map.target_path IS
	'Outbound: where the value goes in the request, e.g. contactInfoList[contactType=2].address. Inbound: the canonical field (tracking_number, provider_shipment_id, label_url, status). crm_in: a column of the CRM source''s orders table.';
COMMENT ON COLUMN @extschema@.field_map.transform IS
	'identity, trim, upper, lower, concat, default, lookup, to_number, unit, timestamp, parse_time or phone; arg holds its argument as JSON.';
COMMENT ON COLUMN @extschema@.field_map.pii IS
	'Outbound rows: the value is personal, of kind name, phone, address, email, id_number or text (free text: its phone and ID numbers are masked); shipsync_reader sees it masked in request bodies and render_request(). NULL: not personal.';
COMMENT ON COLUMN @extschema@.field_map.seeded IS
	'A row of a built-in profile, created with the extension and read-only: copy the profile with shipsync.copy_profile() to change it.';

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

-- attach options validate (invalid, the default, or reject),
-- tracking_provider and pii (the personal columns of the generic body); a
-- tracking provider cannot be attached as the shipper.
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

CREATE FUNCTION @extschema@._map_check(target_path text, source text, transform text, arg text)
RETURNS void
AS 'MODULE_PATHNAME', 'shipsync_map_check'
LANGUAGE C;
COMMENT ON FUNCTION @extschema@._map_check(text, text, text, text) IS
	'Internal: compile one field_map rule and raise an error naming what is wrong with it.';

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

-- the personal fields of the built-in profile: sender and receiver
UPDATE @extschema@.field_map
   SET pii = CASE split_part(target_path, '.', 2) WHEN 'contact' THEN 'name'
			 WHEN 'mobile' THEN 'phone' ELSE 'address' END
 WHERE seeded AND profile = 'sf_express' AND direction = 'out'
   AND target_path ~ E'^contactInfoList\\[contactType=[12]\\]\\.(contact|mobile|address)$';
-- and the remark, free text that often holds a phone or an ID number
UPDATE @extschema@.field_map SET pii = 'text'
 WHERE seeded AND profile = 'sf_express' AND direction = 'out' AND target_path = 'remark';

-- the triggers come after the seeds: seeded rows are read-only from here on
CREATE TRIGGER field_map_check BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.field_map
	FOR EACH ROW EXECUTE FUNCTION @extschema@._field_map_check();
CREATE TRIGGER field_map_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.field_map
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._field_map_changed();

-- Validation in the user's transaction (attach option validate = reject)
CREATE FUNCTION @extschema@._validate()
RETURNS trigger
AS 'MODULE_PATHNAME', 'shipsync_validate'
LANGUAGE C SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._validate() IS
	'Internal: the validation trigger shipsync.attach() installs with option validate = reject; an order whose required mapped fields are missing or malformed is refused. It refuses to fire on any table but its binding''s.';

CREATE FUNCTION @extschema@._render(outbox_id bigint, OUT method text, OUT url text, OUT body text)
RETURNS record
AS 'MODULE_PATHNAME', 'shipsync_render'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@._render(bigint) IS
	'Internal: the request of one intent, stored or rendered now from the current order row without storing it.';

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

SELECT pg_catalog.pg_extension_config_dump('@extschema@.field_map', 'WHERE NOT seeded');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.field_map_field_map_id_seq', '');
