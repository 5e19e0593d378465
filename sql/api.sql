-- The public SQL API: providers, bindings, repairs, views, comments.
CREATE EXTENSION pg_shipsync;

-- every public object says what it is
SELECT c.relname, obj_description(c.oid, 'pg_class') IS NOT NULL AS has_comment
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'shipsync' AND c.relkind IN ('r', 'v')
ORDER BY 1;
SELECT p.proname, obj_description(p.oid, 'pg_proc') IS NOT NULL AS has_comment
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'shipsync' AND p.proname NOT LIKE '\_%'
ORDER BY 1;

-- the three roles exist, each granted to the next
SELECT r.rolname, array_agg(m.rolname ORDER BY m.rolname) AS member_of
FROM pg_roles r
LEFT JOIN pg_auth_members a ON a.member = r.oid
LEFT JOIN pg_roles m ON m.oid = a.roleid
WHERE r.rolname LIKE 'shipsync\_%'
GROUP BY r.rolname ORDER BY 1;

-- a provider with defaults, and one with every option
SELECT shipsync.create_provider('acme', 'generic', 'https://api.acme.example/v1/');
SELECT shipsync.create_provider('local', 'generic', 'http://127.0.0.1:9', '{
	"timeout_ms": 5000, "max_inflight": 1024, "max_attempts": 5,
	"backoff_base_ms": 200, "backoff_max_ms": 60000, "rate_limit_per_s": 2.5,
	"headers": {"X-Tenant": "shop-1"},
	"auth": {"type": "bearer", "token": "s3cret-token"}}');
SELECT name, dialect, base_url, timeout_ms, max_inflight, max_attempts,
	   backoff_base_ms, backoff_max_ms, rate_limit_per_s, headers, paused
FROM shipsync.provider ORDER BY provider_id;

-- credentials stay out of the options and are masked in the view
SELECT options ? 'auth' AS auth_in_options FROM shipsync.provider WHERE name = 'local';
SELECT name, auth FROM shipsync.providers ORDER BY provider_id;
SELECT shipsync._auth_headers('{"type": "bearer", "token": "t"}'),
	   shipsync._auth_headers('{"type": "api_key", "header": "X-Api-Key", "key": "k"}'),
	   shipsync._auth_headers('{"type": "basic", "username": "user", "password": "pässword"}');

-- pause and resume
SELECT shipsync.pause('acme');
SELECT name, paused FROM shipsync.provider ORDER BY provider_id;
SELECT shipsync.resume('acme');
SELECT name, paused FROM shipsync.provider ORDER BY provider_id;

-- attach: the key defaults to the primary key, writeback maps fields to columns
CREATE SCHEMA crm;
CREATE TABLE crm.orders (
	id bigint PRIMARY KEY,
	customer text,
	waybill_no varchar(40),
	ship_status text,
	fee numeric(10,2)
);
SELECT shipsync.attach('crm.orders', 'acme',
	writeback => '{"tracking_number": "waybill_no", "status": "ship_status", "fee_total": "fee"}');
SELECT tbl, key_column, writeback, active FROM shipsync.binding;
SELECT tgname, tgenabled, pg_get_triggerdef(t.oid) LIKE '%AFTER INSERT OR DELETE OR UPDATE%FOR EACH ROW%' AS row_trigger
FROM pg_trigger t WHERE tgrelid = 'crm.orders'::regclass;

-- a text key given explicitly, and cancel_when
CREATE TABLE crm.tickets (ref text NOT NULL UNIQUE, status text, waybill text);
SELECT shipsync.attach('crm.tickets', 'local', key_column => 'ref',
	writeback => '{"tracking_number": "waybill"}',
	options => '{"cancel_when": "status = ''void''"}');
SELECT tbl, key_column, options FROM shipsync.binding ORDER BY binding_id;

-- detach removes the trigger and keeps the binding for history
SELECT shipsync.detach('crm.tickets');
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'crm.tickets'::regclass AND tgname = 'shipsync_capture';
SELECT tbl, active FROM shipsync.binding ORDER BY binding_id;
-- and a table can be attached again
SELECT shipsync.attach('crm.tickets', 'local', key_column => 'ref') > 0 AS attached_again;

-- queue_status: one row per provider
INSERT INTO crm.orders (id, customer) VALUES (1, '张三'), (2, '李四');
SELECT provider, paused, pending, in_flight, retrying, dead, invalid,
	   oldest_pending_age IS NOT NULL AS has_age
FROM shipsync.queue_status ORDER BY provider;
-- provider_health: one row per provider, whether or not it was sent to
SELECT provider, paused, breaker, hold_until, requests_5m, failures_1h, in_flight,
	   oldest_pending_age IS NOT NULL AS has_age
FROM shipsync.provider_health ORDER BY provider;
SELECT count(*) AS undocumented_columns
FROM pg_attribute a
WHERE a.attrelid = 'shipsync.provider_health'::regclass AND a.attnum > 0
  AND col_description(a.attrelid, a.attnum) IS NULL;
-- both read the inbox (no index) once, not once or twice per provider:
-- with 50 providers and a paused one's backlog of a million intents,
-- queue_status took 6.9 s and provider_health 3.6 s
-- (the counter also holds what earlier transactions did: differences)
SELECT pg_stat_get_xact_numscans('shipsync.inbox'::regclass) AS scans \gset
SELECT sum(pending) AS pending, count(oldest_pending_age) AS aged FROM shipsync.queue_status;
SELECT pg_stat_get_xact_numscans('shipsync.inbox'::regclass) - :scans AS inbox_scans;
SELECT pg_stat_get_xact_numscans('shipsync.inbox'::regclass) AS scans \gset
SELECT count(oldest_pending_age) AS aged FROM shipsync.provider_health;
SELECT pg_stat_get_xact_numscans('shipsync.inbox'::regclass) - :scans AS inbox_scans;

-- claim: what the dispatcher runs; marks intents in flight with a lease
SELECT order_key, op, state, attempts, lease_until > now() AS leased
FROM shipsync.claim((SELECT provider_id FROM shipsync.provider WHERE name = 'acme'), 10, 60000)
ORDER BY id;
SELECT provider, pending, in_flight FROM shipsync.queue_status WHERE provider = 'acme';

-- retry and requeue bring dead intents back
UPDATE shipsync.outbox SET state = 'dead', last_error = 'HTTP 422: test' WHERE order_key = '1';
INSERT INTO shipsync.exception_ticket (kind, binding_id, order_key, provider_id, outbox_id, detail)
SELECT 'dead_intent', binding_id, order_key, provider_id, id, last_error FROM shipsync.outbox WHERE order_key = '1';
SELECT shipsync.retry(id) FROM shipsync.outbox WHERE order_key = '1';
SELECT order_key, state, attempts FROM shipsync.outbox WHERE order_key = '1';
SELECT kind, resolved_at IS NOT NULL AS resolved FROM shipsync.exception_ticket;
UPDATE shipsync.outbox SET state = 'dead' WHERE order_key IN ('1', '2');
SELECT shipsync.requeue('acme');
SELECT shipsync.requeue();
SELECT order_key, state, attempts FROM shipsync.outbox ORDER BY id;

-- trace: the timeline of one order
SELECT kind, detail->>'op' AS op, detail->>'state' AS state
FROM shipsync.trace('crm.orders', '1');

-- a dropped table stops its waiting intents, with the reason
DROP TABLE crm.orders;
SELECT order_key, state, last_error FROM shipsync.outbox ORDER BY id;
SELECT tbl::oid > 0 AS kept, active FROM shipsync.binding WHERE binding_id = 1;

-- attach() says in one warning which bindings of the provider lost their
-- table with shipments: a warning each, at every attach, grew the log as
-- the square of the tenants' tables dropped (1,100 of them: 604,450
-- warnings, 457 MB of log)
CREATE TABLE crm.gone1 (id bigint PRIMARY KEY);
CREATE TABLE crm.gone2 (id bigint PRIMARY KEY);
CREATE TABLE crm.gone3 (id bigint PRIMARY KEY);
SELECT shipsync.attach(('crm.gone' || g)::regclass, 'local') > 0 AS attached
FROM generate_series(1, 3) g;
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id)
SELECT binding_id, '1', provider_id FROM shipsync.binding
WHERE tbl IN ('crm.gone1'::regclass, 'crm.gone2'::regclass, 'crm.gone3'::regclass);
DROP TABLE crm.gone1, crm.gone2, crm.gone3;
CREATE TABLE crm.tenant (id bigint PRIMARY KEY);
SELECT shipsync.attach('crm.tenant', 'local') > 0 AS attached;
DROP TABLE crm.tenant;

DROP EXTENSION pg_shipsync CASCADE;

-- A database of standard_conforming_strings = off (an old application's
-- ALTER DATABASE ... SET): the extension's literals mean what they say
-- there too.  Its backslashes were escapes there: create_provider() and
-- set_secret() failed on "invalid byte sequence for encoding "UTF8": 0x9f"
-- ('\x9f' of the control-character check), an https:// host holding an "s"
-- was an invalid base_url ('\s' was "s"), CREATE EXTENSION left the SF
-- Express profile's sender and receiver fields unmarked as personal data,
-- and ALTER EXTENSION ... UPDATE failed
CREATE DATABASE api_scs_regress;
ALTER DATABASE api_scs_regress SET standard_conforming_strings = off;
\c api_scs_regress
SET client_min_messages = warning;
CREATE EXTENSION pg_shipsync;
RESET client_min_messages;
SHOW standard_conforming_strings;
SELECT count(*) FILTER (WHERE pii IS NOT NULL) AS sf_personal_fields
FROM shipsync.field_map WHERE profile = 'sf_express' AND direction = 'out' AND seeded;
SELECT shipsync.create_provider('sf_scs', 'generic', 'https://api.sf-express.com/v1',
	'{"headers": {"X-Shop": "east"}, "auth": {"type": "bearer", "token": "tok-1"}}') > 0 AS created;
SELECT shipsync.set_secret('sf_scs', 'token', 'tok-2');
SELECT shipsync.create_provider('bad_scs', 'generic', 'https://api.example.com/v1',
	E'{"headers": {"X-Shop": "a\\nb"}}');
SELECT shipsync._decimal_or_null('"12x50"') AS not_a_decimal, shipsync._decimal_or_null('"12.50"') AS decimal;
DROP EXTENSION pg_shipsync CASCADE;
SET client_min_messages = warning;
CREATE EXTENSION pg_shipsync VERSION '0.1';
ALTER EXTENSION pg_shipsync UPDATE TO '0.2';
RESET client_min_messages;
SELECT extversion FROM pg_extension WHERE extname = 'pg_shipsync';
SELECT count(*) FILTER (WHERE pii IS NOT NULL) AS sf_personal_fields
FROM shipsync.field_map WHERE profile = 'sf_express' AND direction = 'out' AND seeded;
-- A 0.1 install whose DBA renamed its constraints: the update drops the
-- field map's direction check and the binding's foreign key to its
-- provider whatever their names (it failed on "constraint
-- "field_map_direction_check" of relation "field_map" does not exist"),
-- and leaves the same constraints as an install
DROP EXTENSION pg_shipsync CASCADE;
SET client_min_messages = warning;
CREATE EXTENSION pg_shipsync VERSION '0.1';
RESET client_min_messages;
ALTER TABLE shipsync.field_map RENAME CONSTRAINT field_map_direction_check TO fm_direction_ok;
ALTER TABLE shipsync.binding RENAME CONSTRAINT binding_provider_id_fkey TO binding_provider_ref;
SET client_min_messages = warning;
ALTER EXTENSION pg_shipsync UPDATE TO '0.2';
RESET client_min_messages;
SELECT extversion FROM pg_extension WHERE extname = 'pg_shipsync';
SELECT conrelid::regclass AS tbl, conname, contype, pg_get_constraintdef(oid) AS def
FROM pg_constraint
WHERE conrelid IN ('shipsync.field_map'::regclass, 'shipsync.binding'::regclass)
	AND contype IN ('c', 'f')
ORDER BY 1, 2;
\c contrib_regression
DROP DATABASE api_scs_regress;
