-- Secrets: every credential encrypted in shipsync.secret, none anywhere
-- else; set_secret(), rotations of webhook secrets (a provider's and a CRM
-- source's), rotate_key(), the view secrets, render_request() masking,
-- field maps refusing secret options, and who may do what.  (The suite
-- before may leave the extension.)
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_shipsync CASCADE;
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

-- providers with secrets of every kind, given inline
SELECT shipsync.create_provider('bearer', 'generic', 'https://api.example', '{
	"auth": {"type": "bearer", "token": "tok-SECRET-01"},
	"headers": {"X-Tenant": "shop-1", "X-Api-Token": {"secret": "hdr-SECRET-02"}},
	"webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}');
SELECT shipsync.create_provider('basic', 'generic', 'https://api.example',
	'{"auth": {"type": "basic", "username": "user-SECRET-03", "password": "pw-SECRET-04"}}');
SELECT shipsync.create_provider('apikey', 'generic', 'https://api.example',
	'{"auth": {"type": "api_key", "header": "X-Api-Key", "key": "key-SECRET-05"}}');
SELECT shipsync.create_provider('oa', 'generic', 'https://api.example',
	'{"auth": {"type": "oauth2", "token_url": "https://auth.example/token", "client_id": "shop",
			   "client_secret": "cs-SECRET-06", "scope": "ship"}}');
SELECT shipsync.create_provider('sf', 'sf_express', 'https://sf.example/std/service',
	'{"auth": {"type": "sf_express", "partner_id": "SHOP1", "checkword": "cw-SECRET-07"}}');
SELECT shipsync.create_provider('kd', 'kuaidi100', 'https://poll.kuaidi100.example',
	'{"company": "shunfeng", "callback_url": "https://shop.example/kd", "webhook_secret": "salt-SECRET-08",
	  "previous_webhook_secret": "salt-SECRET-09",
	  "auth": {"type": "kuaidi100", "customer": "CUST", "key": "kdkey-SECRET-10"}}');
CREATE TEMP TABLE known (secret text);
INSERT INTO known VALUES ('tok-SECRET-01'), ('hdr-SECRET-02'), ('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'),
	('user-SECRET-03'), ('pw-SECRET-04'), ('key-SECRET-05'), ('cs-SECRET-06'), ('cw-SECRET-07'),
	('salt-SECRET-08'), ('salt-SECRET-09'), ('kdkey-SECRET-10');

-- the provider rows keep the rest, and no secret
SELECT name, auth, headers, options FROM shipsync.provider ORDER BY provider_id;
SELECT count(*) AS secrets_in_provider_rows
FROM shipsync.provider p, known k WHERE p::text LIKE '%' || k.secret || '%';

-- the store: names and key ids beside ciphertext, no plaintext
SELECT provider, name, key_id ~ '^[0-9a-f]{16}$' AS key_id_is_hex FROM shipsync.secret ORDER BY 1, 2;
SELECT count(DISTINCT key_id) AS keys FROM shipsync.secret;
SELECT count(*) AS plaintext_in_store FROM shipsync.secret s, known k
WHERE position(convert_to(k.secret, 'UTF8') IN s.ciphertext) > 0 OR s::text LIKE '%' || k.secret || '%';
SELECT length(ciphertext) = 12 + length('tok-SECRET-01') + 16 AS nonce_value_tag
FROM shipsync.secret WHERE provider = 'bearer' AND name = 'token';
SELECT count(DISTINCT substr(ciphertext, 1, 12)) = count(*) AS a_nonce_per_value FROM shipsync.secret;
SELECT (pg_stat_file('pg_shipsync.key')).size AS generated_key_file_size;

-- the view: who set what and when, never a value
SELECT provider, name, set_by = current_user AS set_by_me, age < interval '1 hour' AS recent
FROM shipsync.secrets ORDER BY 1, 2;
SELECT count(*) AS secrets_in_views
FROM (SELECT p::text AS t FROM shipsync.providers p UNION ALL SELECT s::text FROM shipsync.secrets s) v,
	 known k WHERE v.t LIKE '%' || k.secret || '%';

-- render_request: the token, the secret header and the static one
CREATE TABLE orders (id int PRIMARY KEY, customer text);
SELECT shipsync.attach('orders', 'bearer') > 0 AS attached;
INSERT INTO orders VALUES (1, 'Ann');
SELECT r.headers[4:] AS headers
FROM shipsync.inbox i, shipsync.render_request(i.id) r WHERE i.order_key = '1';
SELECT count(*) AS secrets_in_render
FROM shipsync.inbox i, shipsync.render_request(i.id) r, known k
WHERE i.order_key = '1' AND r::text LIKE '%' || k.secret || '%';

-- set_secret: what it refuses
SELECT pg_temp.err($$SELECT shipsync.set_secret('nope', 'token', 'x')$$);
SELECT pg_temp.err($$SELECT shipsync.set_secret('bearer', 'password', 'x')$$);
SELECT pg_temp.err($$SELECT shipsync.set_secret('bearer', 'header:X-Tenant', 'x')$$);
SELECT pg_temp.err($$SELECT shipsync.set_secret('bearer', 'token', E'tok\r\nX-Evil: 1')$$);
SELECT pg_temp.err($$SELECT shipsync.set_secret('bearer', 'token', '')$$);
SELECT pg_temp.err($$SELECT shipsync.set_secret('bearer', 'token', NULL)$$);
SELECT pg_temp.err($$SELECT shipsync.set_secret('bearer', 'webhook_secret', 'not base64 !')$$);
-- base64 the signature check cannot decode (a lone final character: the
-- secret cut short when copied; a key over 512 bytes) is refused here, not
-- at every push after
SELECT pg_temp.err($$SELECT shipsync.set_secret('bearer', 'webhook_secret', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaL')$$);
SELECT pg_temp.err($$SELECT shipsync.set_secret('bearer', 'webhook_secret', 'whsec_' || repeat('QUJD', 171))$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('cut', 'generic', 'https://api.example',
	'{"webhook_secret": "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaL=="}')$$);
SELECT pg_temp.err($$SELECT shipsync.set_secret('basic', 'client_key', 'x')$$);

-- set_secret replaces: new ciphertext, same names; a header by any case
CREATE TEMP TABLE before AS SELECT provider, name, ciphertext FROM shipsync.secret;
SELECT shipsync.set_secret('bearer', 'token', 'tok-SECRET-11');
SELECT shipsync.set_secret('bearer', 'header:x-api-token', 'hdr-SECRET-12');
SELECT shipsync.set_secret('basic', 'password', NULL);
SELECT b.provider, b.name, s.ciphertext IS DISTINCT FROM b.ciphertext AS changed, s.name IS NULL AS removed
FROM before b LEFT JOIN shipsync.secret s USING (provider, name)
WHERE b.provider IN ('bearer', 'basic') ORDER BY 1, 2;
SELECT name, updated_by = current_user AS updated_by_me FROM shipsync.provider WHERE name = 'bearer';

-- a webhook secret's rotation: the replaced one stays valid as the previous
CREATE FUNCTION pg_temp.sw_headers(secret text, id text, body text) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('Webhook-Id', id, 'Webhook-Timestamp', ts::text,
		'Webhook-Signature', 'v1,' || encode(shipsync._hmac_sha256(
			decode(regexp_replace(secret, '^whsec_', ''), 'base64'),
			convert_to(id || '.' || ts || '.' || body, 'UTF8')), 'base64'))
	FROM (SELECT extract(epoch FROM now())::bigint AS ts) t
$$;
CREATE FUNCTION pg_temp.push(secret text, id text) RETURNS text LANGUAGE sql AS $$
	SELECT pg_temp.err(format('SELECT shipsync.ingest_tracking(%L, %L, %L)', 'bearer', b,
		pg_temp.sw_headers(secret, id, b)))
	FROM (SELECT '{"events": [{"id": "' || id || '", "tracking_number": "T1", "status": "in_transit", "occurred_at": "2026-11-01T10:00:00Z"}]}' AS b) x
$$;
SELECT pg_temp.push('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'e1') AS signed_with_the_current;
SELECT shipsync.set_secret('bearer', 'webhook_secret', 'whsec_bmV3LXdlYmhvb2stc2VjcmV0');
SELECT name FROM shipsync.secrets WHERE provider = 'bearer' ORDER BY 1;
SELECT pg_temp.push('whsec_bmV3LXdlYmhvb2stc2VjcmV0', 'e2') AS signed_with_the_new;
SELECT pg_temp.push('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'e3') AS signed_with_the_previous;
SELECT shipsync.set_secret('bearer', 'previous_webhook_secret', NULL);
SELECT pg_temp.push('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'e4') AS previous_removed;
SELECT count(*) AS parked_events FROM shipsync.unmatched_event;

-- a CRM source's secret: stored like a provider's, under the source's
-- name (the two share one namespace), and rotated the same way
CREATE TABLE crm_orders (id text PRIMARY KEY, customer text);
INSERT INTO shipsync.field_map (profile, direction, target_path, source, required) VALUES
	('zoho', 'crm_in', 'id', 'id', true), ('zoho', 'crm_in', 'customer', 'customer', false);
SELECT shipsync.create_crm_source('zoho', 'generic', 'crm_orders',
	'{"secret": "whsec_em9oby1vbGQtc2VjcmV0"}') > 0 AS created;
SELECT shipsync.create_crm_source('sfdc', 'salesforce_om', 'crm_orders',
	'{"organization_id": "012345678901234", "profile": "zoho"}') > 0 AS created;
INSERT INTO known VALUES ('em9oby1vbGQtc2VjcmV0'), ('em9oby1uZXctc2VjcmV0'), ('zoho-SECRET-15');
SELECT provider, name, set_by = current_user AS set_by_me FROM shipsync.secrets
WHERE provider IN ('zoho', 'sfdc') ORDER BY 1, 2;
SELECT name, options FROM shipsync.crm_sources ORDER BY name;
-- set_secret: what it refuses for a source
SELECT pg_temp.err($$SELECT shipsync.set_secret('zoho', 'token', 'x')$$);
SELECT pg_temp.err($$SELECT shipsync.set_secret('zoho', 'secret', 'x')$$);
SELECT pg_temp.err($$SELECT shipsync.set_secret('sfdc', 'webhook_secret', 'whsec_AAAA')$$);
SELECT pg_temp.err($$SELECT shipsync.set_secret('zoho', 'webhook_secret', 'zoho-SECRET-15 !')$$);
SELECT pg_temp.err($$SELECT shipsync.set_secret('zoho', 'webhook_secret', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaL')$$);
SELECT pg_temp.err($$SELECT shipsync.set_secret('zoho', 'webhook_secret', '')$$);
SELECT pg_temp.err($$SELECT shipsync.set_secret('zoho', 'webhook_secret', NULL)$$);
-- the rotation: pushes signed with the new or the previous secret are taken
CREATE FUNCTION pg_temp.crm_push(secret text, id text) RETURNS text LANGUAGE sql AS $$
	SELECT pg_temp.err(format('SELECT shipsync.ingest_crm(%L, %L, %L)', 'zoho', b,
		pg_temp.sw_headers(secret, id, b)))
	FROM (SELECT '{"type": "order.created", "data": {"id": "' || id || '", "customer": "c"}}' AS b) x
$$;
SELECT pg_temp.crm_push('whsec_em9oby1vbGQtc2VjcmV0', 'c1') AS signed_with_the_current;
SELECT shipsync.set_secret('zoho', 'webhook_secret', 'whsec_em9oby1uZXctc2VjcmV0');
SELECT name FROM shipsync.secrets WHERE provider = 'zoho' ORDER BY 1;
SELECT pg_temp.crm_push('whsec_em9oby1uZXctc2VjcmV0', 'c2') AS signed_with_the_new;
SELECT pg_temp.crm_push('whsec_em9oby1vbGQtc2VjcmV0', 'c3') AS signed_with_the_previous;
SELECT pg_temp.crm_push('whsec_c2VjcmV0', 'c4') AS signed_with_another;
SELECT shipsync.set_secret('zoho', 'previous_webhook_secret', NULL);
SELECT pg_temp.crm_push('whsec_em9oby1vbGQtc2VjcmV0', 'c5') AS previous_removed;
SELECT name FROM shipsync.secrets WHERE provider = 'zoho' ORDER BY 1;
SELECT string_agg(id, ', ' ORDER BY id) AS orders_pushed FROM crm_orders;
-- no source secret outside shipsync.secret, in plain text nowhere
SELECT count(*) AS crm_secrets_in_sight
FROM (SELECT c::text AS t FROM shipsync.crm_source c UNION ALL SELECT c::text FROM shipsync.crm_sources c
	  UNION ALL SELECT s::text FROM shipsync.secrets s UNION ALL SELECT s::text FROM shipsync.secret s) v,
	 known k WHERE v.t LIKE '%' || k.secret || '%';

SELECT pg_temp.err($$INSERT INTO shipsync.field_map (profile, direction, target_path, source)
	VALUES ('mine', 'out', 'salt', 'option:webhook_secret')$$);
SELECT pg_temp.err($$INSERT INTO shipsync.field_map (profile, direction, target_path, source)
	VALUES ('mine', 'out', 'token', 'option:auth.token')$$);

-- creating a provider that exists changes nothing of its secrets
CREATE TEMP TABLE kept AS SELECT name, ciphertext FROM shipsync.secret WHERE provider = 'kd';
SELECT pg_temp.err($$SELECT shipsync.create_provider('kd', 'generic', 'https://x.example',
	'{"auth": {"type": "bearer", "token": "tok-SECRET-13"}}')$$);
SELECT count(*) AS kd_secrets_unchanged
FROM kept JOIN shipsync.secret s USING (name, ciphertext) WHERE s.provider = 'kd';
SELECT count(*) AS kd_secrets FROM shipsync.secret WHERE provider = 'kd';

-- nothing sealed under another key: nothing to rotate
SELECT shipsync.rotate_key();

-- who may: an admin sets secrets, rotates the key and reads the view; an
-- operator reads the view; a reader neither; nobody reads the table
CREATE ROLE secret_test_admin IN ROLE shipsync_admin;
CREATE ROLE secret_test_operator IN ROLE shipsync_operator;
CREATE ROLE secret_test_reader IN ROLE shipsync_reader;
SET ROLE secret_test_admin;
SELECT shipsync.set_secret('apikey', 'key', 'key-SECRET-14');
SELECT provider, name, set_by = session_user AS set_by_the_session_user FROM shipsync.secrets WHERE provider = 'apikey';
SELECT pg_temp.err($$SELECT * FROM shipsync.secret$$);
SELECT pg_temp.err($$SELECT shipsync._secret_put('apikey', 'key', 'x')$$);
SELECT pg_temp.err($$SELECT shipsync.rotate_key()$$);
SET ROLE secret_test_operator;
SELECT count(*) > 0 AS operator_reads_the_view FROM shipsync.secrets;
SELECT pg_temp.err($$SELECT shipsync.set_secret('apikey', 'key', 'x')$$);
SELECT pg_temp.err($$SELECT * FROM shipsync.secret$$);
SET ROLE secret_test_reader;
SELECT pg_temp.err($$SELECT * FROM shipsync.secrets$$);
RESET ROLE;
-- a CRM source's secret: only a member of its table's owner may set it
-- (pushes write into the table with the owner's rights)
SET SESSION AUTHORIZATION secret_test_admin;
SELECT pg_temp.err($$SELECT shipsync.set_secret('zoho', 'webhook_secret', 'whsec_AAAA')$$);
RESET SESSION AUTHORIZATION;
SELECT name, set_by = current_user AS set_by_me FROM shipsync.secrets WHERE provider = 'zoho';

-- a credential written into a provider row by hand (the extension's owner
-- may UPDATE shipsync.provider) is refused: it would be ignored, and the
-- row would not restore from a dump; other options change as they did
SELECT pg_temp.err($$UPDATE shipsync.provider SET options = options || '{"webhook_secret": "whsec_plain"}' WHERE name = 'bearer'$$);
SELECT pg_temp.err($$UPDATE shipsync.provider SET auth = auth || '{"token": "plain"}' WHERE name = 'bearer'$$);
UPDATE shipsync.provider SET options = options || '{"profile": "generic"}' WHERE name = 'bearer';
SELECT auth, options FROM shipsync.provider WHERE name = 'bearer';

-- a dropped provider takes its secrets with it, and a dropped CRM source
DELETE FROM shipsync.provider WHERE name = 'oa';
SELECT count(*) AS oa_secrets FROM shipsync.secret WHERE provider = 'oa';
SELECT shipsync.drop_crm_source('zoho');
SELECT count(*) AS zoho_secrets FROM shipsync.secret WHERE provider = 'zoho';

DROP TABLE orders, crm_orders;
DROP EXTENSION pg_shipsync;
DROP ROLE secret_test_admin, secret_test_operator, secret_test_reader;
