-- Outbound hosts and TLS options: what create_provider() refuses before
-- anything is sent.  shipsync.allowed_hosts is '127.0.0.1' here
-- (test/regress.conf); nothing in this file opens a connection.
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
SHOW shipsync.allowed_hosts;

-- link-local, private, unique-local: refused by create_provider() itself
SELECT pg_temp.err($$SELECT shipsync.create_provider('metadata', 'generic', 'https://169.254.169.254/latest')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('k8s', 'generic', 'https://10.0.0.5:6443')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('ula', 'generic', 'https://[fd00::5]:8443/v1')$$);
-- and the other internal kinds, in every spelling libcurl reads as one
SELECT url, pg_temp.err(format('SELECT shipsync.create_provider(%L, %L, %L)', 'p', 'generic', url)) ~ '^42501: host .* is an? .*address, which shipsync.allowed_hosts does not allow' AS refused
FROM unnest(ARRAY['https://167772165', 'https://0xa.0.0.5', 'https://10.0.0.5.', 'https://[::ffff:10.0.0.5]',
	'https://[fe80::1%25eth0]/', 'https://100.100.100.200', 'https://0.0.0.0:5432', 'https://224.0.0.1',
	'https://255.255.255.255', 'http://127.0.0.2:5432', 'http://127.2:5432', 'http://[::1]:5432',
	'https://[64:ff9b::a9fe:a9fe]', 'https://172.16.0.1', 'https://192.168.1.1']) AS url;
-- a host name is judged whole: one longer than a host name may be (253
-- characters, a final dot aside) is refused, never cut to a prefix that a
-- pattern of the list could match ("*.carrier.example" for this one, whose
-- name ends in .localhost: loopback, resolved by libcurl itself)
SELECT pg_temp.err(format('SELECT shipsync.create_provider(%L, %L, %L)', 'long', 'generic',
	'http://' || repeat('a.', 120) || 'carrier.example.localhost:9'));
SELECT length(h) AS host_length, pg_temp.err(format('SELECT shipsync._check_host(%L)', 'https://' || h || '/v1')) AS checked
FROM unnest(ARRAY[repeat('a.', 119) || 'carrier.example', repeat('a.', 119) || 'carrier.example.',
	repeat('a.', 119) || 'xcarrier.example']) AS h;
-- the same rule for an OAuth2 token_url and for tracking providers
SELECT pg_temp.err($$SELECT shipsync.create_provider('oa', 'generic', 'https://api.example',
	'{"auth": {"type": "oauth2", "token_url": "https://169.254.169.254/token", "client_id": "c", "client_secret": "s"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('ep', 'easypost', 'https://10.1.2.3',
	'{"auth": {"type": "basic", "username": "k"}}')$$);
-- none of them was stored
SELECT count(*) AS stored FROM shipsync.provider;

-- public addresses, names (judged when connecting) and allowed addresses pass
SELECT shipsync.create_provider('public', 'generic', 'https://203.0.113.10/v1') > 0 AS created;
SELECT shipsync.create_provider('named', 'generic', 'https://gw.internal.example') > 0 AS created;
SELECT shipsync.create_provider('loop', 'generic', 'http://127.0.0.1:9') > 0 AS created;
SELECT shipsync.create_provider('loop_short', 'generic', 'https://127.1:9') > 0 AS created;
SELECT name, base_url FROM shipsync.providers ORDER BY provider_id;

-- the list is set in postgresql.conf (reloaded at SIGHUP), and checked
SELECT pg_temp.err($$SET shipsync.allowed_hosts = '10.0.0.0/8'$$);
ALTER SYSTEM SET shipsync.allowed_hosts = '10.0.0.0/33';
ALTER SYSTEM SET shipsync.allowed_hosts = '*, 127.0.0.1';
ALTER SYSTEM SET shipsync.allowed_hosts = 'gw.corp.example,,10.0.0.1';
SELECT context FROM pg_settings WHERE name = 'shipsync.allowed_hosts';
-- the tls option: its fields and their forms
CREATE TEMP TABLE pem (name text PRIMARY KEY, v jsonb);
INSERT INTO pem VALUES ('ca', '"-----BEGIN CERTIFICATE-----\nMIIBmDCCAT+gAwIBAgIURz4fu6lKdZMoB2zJY8nzIUar1GUwCgYIKoZIzj0EAwIw\nITEfMB0GA1UEAwwWcGdfc2hpcHN5bmMgcmVncmVzcyBDQTAgFw0yNjEyMDIwNzMw\nNTlaGA8yMTI2MTEwODA3MzA1OVowITEfMB0GA1UEAwwWcGdfc2hpcHN5bmMgcmVn\ncmVzcyBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABF6Ny/uYS0D9n9Fa8zYy\nllAjowh1Wubd2MCh9wTBqlcsBdALT40xahVjg35+EqJS7ZKyleXPTtrRimGqEBDn\nBRGjUzBRMB0GA1UdDgQWBBRYlHPDqABl/uvLmWJ1b2/REYR36TAfBgNVHSMEGDAW\ngBRYlHPDqABl/uvLmWJ1b2/REYR36TAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49\nBAMCA0cAMEQCIEBeZsG/Y2SJPOCBFUJycC/HBScTaUBQLoLj2U80TIvhAiB6YImw\nq56vfSayahTpww+FIdc++f/4ABrfp30AQytK3A==\n-----END CERTIFICATE-----\n"'), ('cert', '"-----BEGIN CERTIFICATE-----\nMIIBQTCB6QIUdBVkdXFscU7dx+kbRL8DLDB4RPMwCgYIKoZIzj0EAwIwITEfMB0G\nA1UEAwwWcGdfc2hpcHN5bmMgcmVncmVzcyBDQTAgFw0yNjEyMDIwNzMwNTlaGA8y\nMTI2MTEwODA3MzA1OVowJTEjMCEGA1UEAwwacGdfc2hpcHN5bmMgcmVncmVzcyBj\nbGllbnQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATcBx45CORYq5HWvluNp1lu\nd0zD6F6EQAGzbLP2Hd+feOkSgwdTxloxn7IwBHk4WsRZCdRtjsap8JDkIO8zqXFz\nMAoGCCqGSM49BAMCA0cAMEQCIDoY66kIv+SmMNynvoVzB5cQyRikUHzW6+BstG4X\n4QJvAiByVWJFpQ6xe2r1tzsBuTJLBOGyMr39RTIsSnb0+Qy2yg==\n-----END CERTIFICATE-----\n"'),
	('key', '"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIi1CEYk30bDgS66f\nTFqS7tIN5rvHI5QHZxK84TT+x3ihRANCAATcBx45CORYq5HWvluNp1lud0zD6F6E\nQAGzbLP2Hd+feOkSgwdTxloxn7IwBHk4WsRZCdRtjsap8JDkIO8zqXFz\n-----END PRIVATE KEY-----\n"'),
	('other_key', '"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4pu4iw0A8ueZhp4P\nIyTVHyeMRSauTGqxtKYTYXHqujehRANCAAT1ohZMFtlRNWQB5zlfwiWTlzJfHo1r\n8rr/VmerMcO2hfUdvyFibLqVm54SX75beCcJdI4+baevz2/nNiWklHWC\n-----END PRIVATE KEY-----\n"'),
	('encrypted_key', '"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAi4I5EE11QatAICCAAw\nDAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEECaBVK+cpeDG2HumIzkf+08EgZAv\nACJiXUaC91a0ViUyHksCyqRiC1b5MrPl8E91oQXzFiCOmZzOdlZXmzNMEpb6PYaa\nhhKidDF4Gsy4dIs+o9jlI/iseI7ROv3H6bw2voIRC14VolZV2aV53xtGdGmqu9/7\nsvFyQmc8ZAtOIMRRAwo9ZlZ8bKmHhZ+wvWmfN7ZpvQSBWn4afLGs9VUj6xmHRpM=\n-----END ENCRYPTED PRIVATE KEY-----\n"');
CREATE FUNCTION pg_temp.tls(VARIADIC kv text[]) RETURNS text LANGUAGE sql AS $$
	SELECT jsonb_build_object('tls', jsonb_object_agg(k.v, coalesce((SELECT v FROM pem WHERE name = x.v), to_jsonb(x.v))))::text
	FROM unnest(kv) WITH ORDINALITY k(v, i) JOIN unnest(kv) WITH ORDINALITY x(v, j) ON j = i + 1
	WHERE i % 2 = 1
$$;
SELECT pg_temp.err($$SELECT shipsync.create_provider('t', 'generic', 'https://api.example', '{"tls": "on"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('t', 'generic', 'https://api.example', '{"tls": {"verify": false}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('t', 'generic', 'https://api.example', '{"tls": {"ca_bundle": 1}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('t', 'generic', 'https://api.example', '{"tls": {"min_version": "1.1"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('t', 'generic', 'https://api.example', '{"tls": {"pinned_public_key": "sha256//nope"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('t', 'generic', 'https://api.example', '{"tls": {"ca_bundle": "not a certificate"}}')$$);
SELECT pg_temp.err(format('SELECT shipsync.create_provider(%L, %L, %L, %L)', 't', 'generic', 'https://api.example', pg_temp.tls('client_cert', 'cert')));
SELECT pg_temp.err(format('SELECT shipsync.create_provider(%L, %L, %L, %L)', 't', 'generic', 'https://api.example', pg_temp.tls('client_key', 'key')));
SELECT pg_temp.err(format('SELECT shipsync.create_provider(%L, %L, %L, %L)', 't', 'generic', 'https://api.example', pg_temp.tls('client_cert', 'key', 'client_key', 'key')));
SELECT pg_temp.err(format('SELECT shipsync.create_provider(%L, %L, %L, %L)', 't', 'generic', 'https://api.example', pg_temp.tls('client_cert', 'cert', 'client_key', 'other_key')));
SELECT pg_temp.err(format('SELECT shipsync.create_provider(%L, %L, %L, %L)', 't', 'generic', 'https://api.example', pg_temp.tls('client_cert', 'cert', 'client_key', 'encrypted_key')));
SELECT count(*) AS stored FROM shipsync.provider WHERE name = 't';
-- accepted: every field, min_version as a string or a number
SELECT shipsync.create_provider('mtls', 'generic', 'https://api.example',
	(pg_temp.tls('ca_bundle', 'ca', 'client_cert', 'cert', 'client_key', 'key', 'min_version', '1.3',
				 'pinned_public_key', 'sha256//YhKJKSzoTt2b5FP18fvpHo7fJYqQCjAa3HWY3tvRMwE=;sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='))::jsonb
	|| '{"profile": "tls_probe", "timeout_ms": 5000}') > 0 AS created;
SELECT shipsync.create_provider('tls12', 'generic', 'https://api.example', '{"tls": {"min_version": 1.2}}') > 0 AS created;
-- the client key is a secret: encrypted in shipsync.secret, not in the
-- provider's row, and shown nowhere: not in the providers view, not in a
-- request body through an option: source of the field map
SELECT p.name, p.options->'tls' ? 'client_cert' AS has_cert, p.options->'tls' ? 'client_key' AS row_has_key,
	p::text ~ 'PRIVATE KEY' AS row_shows_the_key
FROM shipsync.provider p WHERE p.name IN ('mtls', 'tls12') ORDER BY p.name;
SELECT provider, name, position(convert_to('PRIVATE KEY', 'UTF8') in ciphertext) > 0 AS plain
FROM shipsync.secret WHERE provider IN ('mtls', 'tls12') ORDER BY provider, name;
SELECT count(*) AS views_showing_the_key FROM shipsync.providers p WHERE p::text ~ 'PRIVATE KEY';
SELECT name FROM shipsync.secrets WHERE provider = 'mtls';
SELECT pg_temp.err($$INSERT INTO shipsync.field_map (profile, direction, target_path, source)
	VALUES ('tls_probe', 'out', 'key', 'option:tls.client_key')$$);
INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES
	('tls_probe', 'out', 'timeout', 'option:timeout_ms'),
	('tls_probe', 'out', 'min', 'option:tls.min_version');
-- set_secret() replaces the key with one that belongs to the certificate,
-- and only such a key
SELECT pg_temp.err(format('SELECT shipsync.set_secret(%L, %L, %L)', 'mtls', 'client_key', (SELECT v #>> '{}' FROM pem WHERE name = 'other_key')));
SELECT pg_temp.err(format('SELECT shipsync.set_secret(%L, %L, %L)', 'mtls', 'client_key', (SELECT v #>> '{}' FROM pem WHERE name = 'encrypted_key')));
SELECT pg_temp.err(format('SELECT shipsync.set_secret(%L, %L, %L)', 'tls12', 'client_key', (SELECT v #>> '{}' FROM pem WHERE name = 'key')));
SELECT pg_temp.err($$SELECT shipsync.set_secret('mtls', 'client_key', NULL)$$);
SELECT pg_temp.err(format('SELECT shipsync.set_secret(%L, %L, %L)', 'mtls', 'client_key', (SELECT v #>> '{}' FROM pem WHERE name = 'key')));
CREATE TABLE tls_orders (id int PRIMARY KEY, customer text);
SELECT shipsync.attach('tls_orders', 'mtls') > 0 AS attached;
INSERT INTO tls_orders VALUES (1, 'x');
SELECT r.method, r.url, r.body, array_to_string(r.headers, ' | ') ~ 'PRIVATE KEY' AS headers_show_the_key
FROM shipsync.inbox i, shipsync.render_request(i.id) r;

DROP EXTENSION pg_shipsync CASCADE;
DROP TABLE tls_orders;
