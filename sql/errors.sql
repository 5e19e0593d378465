-- Every argument check, with its SQLSTATE, message, detail and hint.
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

-- create_provider
SELECT pg_temp.err($$SELECT shipsync.create_provider('bad name!', 'generic', 'https://x.example')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'fedex', 'https://x.example')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', NULL, 'https://x.example')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'ftp://x.example')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example/a?b=1')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'http://carrier.example')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '[]')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"timeout": 5}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"timeout_ms": "fast"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"timeout_ms": 10}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"max_inflight": 0}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"max_inflight": 1025}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"max_inflight": 2.5}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"max_attempts": 0}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"breaker_failures": 0}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"breaker_cooldown_ms": 600000}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"breaker_cooldown_ms": "5s"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"rate_limit_per_s": -1}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"backoff_base_ms": 5000, "backoff_max_ms": 100}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"headers": ["a"]}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"headers": {"Bad Header": "x"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"headers": {"X-A": "a\r\nX-B: b"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"headers": {"Idempotency-Key": "k"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"auth": "token"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"auth": {"type": "magic"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"auth": {"type": "bearer"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"auth": {"type": "api_key", "key": "k"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"auth": {"type": "api_key", "header": "a b", "key": "k"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"auth": {"type": "basic", "password": "p"}}')$$);
-- values that go on the wire: no control characters, no credentials in URLs,
-- no static header that belongs to each request; secrets never echoed
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"headers": {"X-A": "a\u0001b"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"headers": {"X-A": "a\u0085b"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"headers": {"X-A": "a\u0000b"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"headers": {"authorization": "Bearer x"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"headers": {"Transfer-Encoding": "chunked"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"headers": {"HOST": "evil.example"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"headers": {"Content-Length": "0"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"auth": {"type": "bearer", "token": "s3cret\r\nX-Evil: 1"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"auth": {"type": "bearer", "token": "s3cret\u0000"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"auth": {"type": "basic", "username": "u", "password": "pw\n"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"auth": {"type": "api_key", "header": "X-Key", "key": "k\r"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"auth": {"type": "api_key", "header": "Transfer-Encoding", "key": "k"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"auth": {"type": "oauth2", "token_url": "https://id:pw@auth.example/token", "client_id": "c", "client_secret": "s"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://x.example', '{"auth": {"type": "oauth2", "token_url": "https://auth.example/t\u0001", "client_id": "c", "client_secret": "s"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://user:pw@x.example')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://user@x.example/v1')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', E'https://x.example/v1\r\nX-Evil: 1')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', E'https://x.example/v\x011')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'kuaidi100', 'https://poll.kuaidi100.example', '{"company": "shunfeng", "callback_url": "https://u:p@shop.example/hook", "auth": {"type": "kuaidi100", "customer": "C", "key": "K"}}')$$);
-- (NUL never reaches pg_shipsync: PostgreSQL's jsonb and text refuse it)
-- an @ in the path is not a user name, and a space is not a control character
SELECT shipsync.create_provider('wire_ok', 'generic', 'https://x.example/a@b',
	'{"headers": {"X-Tenant": "shop 1"}, "auth": {"type": "bearer", "token": "t0k3n"}}') > 0 AS created;
SELECT base_url FROM shipsync.providers WHERE name = 'wire_ok';
-- nothing was stored by the refused calls, and no refused secret was echoed
SELECT count(*) AS providers FROM shipsync.provider;
DELETE FROM shipsync.provider WHERE name = 'wire_ok';
SELECT shipsync.create_provider('p', 'generic', 'https://x.example') > 0 AS created;
SELECT pg_temp.err($$SELECT shipsync.create_provider('p', 'generic', 'https://y.example')$$);
-- plain http to a non-loopback host is allowed only when the GUC says so
SET shipsync.allow_insecure_http = on;
SELECT shipsync.create_provider('lan', 'generic', 'http://gateway.lan.example:8080') > 0 AS created;
RESET shipsync.allow_insecure_http;
SELECT count(*) FROM shipsync.provider;

-- pause / resume
SELECT pg_temp.err($$SELECT shipsync.pause('nope')$$);
SELECT pg_temp.err($$SELECT shipsync.resume(NULL)$$);

-- attach / detach
CREATE TABLE nokey (a int, b int);
CREATE TABLE twokey (a int, b int, PRIMARY KEY (a, b));
CREATE TABLE orders (id int PRIMARY KEY, waybill text, n int);
CREATE VIEW orders_v AS SELECT * FROM orders;
SELECT pg_temp.err($$SELECT shipsync.attach('orders', 'nope')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders_v', 'p')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('nokey', 'p')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('twokey', 'p')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders', 'p', key_column => 'nope')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders', 'p', writeback => '["waybill"]')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders', 'p', writeback => '{"waybill": "waybill"}')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders', 'p', writeback => '{"tracking_number": "nope"}')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders', 'p', writeback => '{"tracking_number": "id"}')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders', 'p', writeback => '{"tracking_number": "n"}')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders', 'p', options => '{"validate": "always"}')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders', 'p', options => '{"cancel_when": "nope = 1"}')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders', 'p', options => '{"cancel_when": "true; DROP TABLE orders"}')$$);
SELECT shipsync.attach('orders', 'p', writeback => '{"tracking_number": "waybill"}') > 0 AS attached;
-- a provider a binding names is kept, as a foreign key kept it (there is
-- none, so that pg_restore -j loads the tables in any order: TAP 005)
SELECT pg_temp.err($$DELETE FROM shipsync.provider WHERE name = 'p'$$);
SELECT pg_temp.err($$TRUNCATE shipsync.provider$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders', 'p')$$);
SELECT pg_temp.err($$SELECT shipsync.detach('nokey')$$);
-- nothing was left half-done by the failed calls
SELECT count(*) AS bindings FROM shipsync.binding;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgname = 'shipsync_capture';

-- a role that does not own the table may not attach it
CREATE ROLE shipsync_test_admin LOGIN IN ROLE shipsync_admin;
SET SESSION AUTHORIZATION shipsync_test_admin;
SELECT pg_temp.err($$SELECT shipsync.attach('nokey', 'p', key_column => 'a')$$);
RESET SESSION AUTHORIZATION;
-- and a reader may read but not change anything
CREATE ROLE shipsync_test_reader LOGIN IN ROLE shipsync_reader;
SET SESSION AUTHORIZATION shipsync_test_reader;
SELECT count(*) >= 0 AS can_read FROM shipsync.queue_status;
SELECT pg_temp.err($$SELECT auth FROM shipsync.provider$$);
SELECT pg_temp.err($$SELECT shipsync.pause('p')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('q', 'generic', 'https://q.example')$$);
SELECT pg_temp.err($$SELECT shipsync._intent_id('shipsync.outbox_id_seq')$$);
RESET SESSION AUTHORIZATION;
-- intent ids come only from a sequence
SELECT pg_temp.err($$SELECT shipsync._intent_id('pg_class')$$);

-- repairs
SELECT pg_temp.err($$SELECT shipsync.retry(424242)$$);
INSERT INTO orders VALUES (1, NULL, 0);
SELECT pg_temp.err($$SELECT shipsync.retry(id) FROM shipsync.claim(
	(SELECT provider_id FROM shipsync.provider WHERE name = 'p'), 10, 60000)$$);
SELECT pg_temp.err($$SELECT shipsync.requeue('p', 'done')$$);
SELECT pg_temp.err($$SELECT shipsync.requeue('nope')$$);
SELECT pg_temp.err($$SELECT * FROM shipsync.claim(1, -1, 1000)$$);

-- the capture trigger used by hand
SELECT pg_temp.err($$SELECT shipsync.capture()$$);
CREATE TABLE other (id int PRIMARY KEY);
CREATE TRIGGER forged AFTER INSERT ON other FOR EACH ROW
	EXECUTE FUNCTION shipsync.capture('1', '1', 'id');
SELECT pg_temp.err($$INSERT INTO other VALUES (1)$$);
DROP TRIGGER forged ON other;
CREATE TRIGGER before_row BEFORE INSERT ON other FOR EACH ROW
	EXECUTE FUNCTION shipsync.capture('1', '1', 'id');
SELECT pg_temp.err($$INSERT INTO other VALUES (2)$$);
DROP TRIGGER before_row ON other;
CREATE TRIGGER few AFTER INSERT ON other FOR EACH ROW EXECUTE FUNCTION shipsync.capture('1');
SELECT pg_temp.err($$INSERT INTO other VALUES (3)$$);
SELECT count(*) AS forged_intents
FROM (SELECT binding_id, order_key FROM shipsync.inbox
	  UNION ALL SELECT binding_id, order_key FROM shipsync.outbox) AS x
WHERE binding_id <> 1 OR order_key <> '1';

-- the rows of the workers' parallel arrays, as unnest() of several gives
-- them: the longest array's length, NULL past a shorter one's end and for
-- a NULL array; each array of its column's type, one array per column
SELECT * FROM shipsync._rows(ARRAY[1, 2, 3]::int8[], ARRAY['a', NULL]::text[], NULL::bool[])
	AS u(id int8, k text, ok bool);
SELECT count(*) FROM shipsync._rows('{}'::int4[], '{}'::text[]) AS u(a int4, b text);
-- numbered, as the apply reads them (ROWS FROM ... WITH ORDINALITY)
SELECT * FROM ROWS FROM (shipsync._rows(ARRAY[5, 6]::int4[], ARRAY['x', 'y'])
	AS (a int4, b text)) WITH ORDINALITY AS u(a, b, ord);
SELECT pg_temp.err($$SELECT * FROM shipsync._rows(ARRAY[1]::int4[], ARRAY['a']) AS u(a int8, b text)$$);
SELECT pg_temp.err($$SELECT * FROM shipsync._rows(ARRAY[1]::int4[]) AS u(a int4, b text)$$);
SELECT pg_temp.err($$SELECT * FROM shipsync._rows(1, 2) AS u(a int4, b int4)$$);
SELECT pg_temp.err($$SELECT * FROM shipsync._rows(VARIADIC ARRAY[ARRAY[1]]) AS u(a int4)$$);
SELECT pg_temp.err($$SELECT shipsync._rows(ARRAY[1])$$);
DROP EXTENSION pg_shipsync CASCADE;
DROP ROLE shipsync_test_admin;
DROP ROLE shipsync_test_reader;
DROP VIEW orders_v;
DROP TABLE nokey, twokey, orders, other;
