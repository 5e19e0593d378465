-- Field maps, the sf_express dialect, validation and render_request().
CREATE EXTENSION pg_shipsync;

-- the built-in sf_express profile: 26 outbound and 2 inbound rows, all valid
SELECT profile, direction, count(*), bool_and(seeded) AS seeded
FROM shipsync.field_map GROUP BY 1, 2 ORDER BY 1, 2;
SELECT count(*) FILTER (WHERE required) AS required, string_agg(target_path, ', ') FILTER (WHERE required)
FROM shipsync.field_map WHERE profile = 'sf_express' AND direction = 'out';
DO $$
DECLARE r record;
BEGIN
	FOR r IN SELECT * FROM shipsync.field_map LOOP
		PERFORM shipsync._map_check(r.target_path, r.source, r.transform, r.arg::text);
	END LOOP;
END $$;

-- built-in rows are read-only; copy the profile to change it
UPDATE shipsync.field_map SET required = true WHERE profile = 'sf_express' AND target_path = 'remark';
DELETE FROM shipsync.field_map WHERE profile = 'sf_express';
SELECT shipsync.copy_profile('sf_express', 'sf_shop');
SELECT shipsync.copy_profile('sf_express', 'sf_shop');
SELECT shipsync.copy_profile('nothing', 'sf_other');
SELECT shipsync.copy_profile('sf_express', 'bad name');
SELECT count(*), bool_or(seeded) FROM shipsync.field_map WHERE profile = 'sf_shop';

-- every rule is checked when it is written
INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('t', 'out', 'a..b', 'x');
INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('t', 'out', 'list[k=1', 'x');
INSERT INTO shipsync.field_map (profile, direction, target_path, source, transform) VALUES ('t', 'out', 'a', 'x', 'rot13');
INSERT INTO shipsync.field_map (profile, direction, target_path, source, transform, arg) VALUES ('t', 'out', 'a', 'x', 'lookup', '"no table"');
INSERT INTO shipsync.field_map (profile, direction, target_path, source, transform, arg) VALUES ('t', 'out', 'a', 'x', 'unit', '{"from": "g", "to": "stone"}');
INSERT INTO shipsync.field_map (profile, direction, target_path, source, transform, arg) VALUES ('t', 'out', 'a', 'x', 'concat', '{}');
INSERT INTO shipsync.field_map (profile, direction, target_path, source, transform, arg) VALUES ('t', 'out', 'a', 'x', 'timestamp', '{"tz": "Mars/Olympus_Mons"}');
INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('t', 'out', 'a', 'meta:nothing');
\set VERBOSITY terse
INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('t', 'sideways', 'a', 'x');
\set VERBOSITY default
SELECT count(*) FROM shipsync.field_map WHERE profile = 't';

-- providers: the sf_express dialect and its options
SELECT shipsync.create_provider('sf0', 'sf_express', 'https://sfapi.example/std/service');
SELECT shipsync.create_provider('sf0', 'sf_express', 'https://sfapi.example/std/service',
	'{"auth": {"type": "sf_express", "partner_id": "P1"}}');
SELECT shipsync.create_provider('sf0', 'sf_express', 'https://sfapi.example/std/service',
	'{"auth": {"type": "sf_express", "partner_id": "P1", "checkword": "c"}, "sender": {"nmae": "x"}}');
SELECT shipsync.create_provider('sf0', 'sf_express', 'https://sfapi.example/std/service',
	'{"auth": {"type": "sf_express", "partner_id": "P1", "checkword": "c"}, "sender": "x"}');
SELECT shipsync.create_provider('g0', 'generic', 'https://api.example',
	'{"auth": {"type": "sf_express", "partner_id": "P1", "checkword": "c"}}');
SELECT shipsync.create_provider('g0', 'generic', 'https://api.example', '{"profile": "bad name"}');
SELECT shipsync.create_provider('g0', 'generic', 'https://api.example', '{"sender": {}}');
SELECT shipsync.create_provider('g0', 'generic', 'https://api.example', '{"auth": {"type": "oauth3"}}');
SELECT shipsync.create_provider('g0', 'generic', 'https://api.example',
	'{"auth": {"type": "oauth2", "token_url": "https://auth.example/token", "client_id": "c"}}');
SELECT shipsync.create_provider('g0', 'generic', 'https://api.example',
	'{"auth": {"type": "oauth2", "token_url": "http://auth.example/token", "client_id": "c", "client_secret": "s"}}');
SELECT shipsync.create_provider('g0', 'generic', 'https://api.example',
	'{"auth": {"type": "oauth2", "token_url": "https://auth.example/token", "client_id": "c", "client_secret": "s", "scope": ["a"]}}');
SELECT shipsync.create_provider('oa', 'generic', 'https://api.example',
	'{"auth": {"type": "oauth2", "token_url": "https://auth.example/token", "client_id": "c", "client_secret": "s", "scope": "ship"}}');
SELECT shipsync.create_provider('kd', 'generic', 'https://api.example', '{"auth": {"type": "kuaidi100", "customer": "C1", "key": "k"}}');
SELECT name, auth FROM shipsync.providers WHERE name IN ('oa', 'kd') ORDER BY 1;
SELECT shipsync._auth_headers_masked(auth) FROM shipsync.provider WHERE name IN ('oa', 'kd') ORDER BY name;

SELECT shipsync.create_provider('sf', 'sf_express', 'https://sfapi.example/std/service', '{
	"auth": {"type": "sf_express", "partner_id": "SHOP1", "checkword": "fjcg5PGKaNpPSHFAZ4QsCOkV71R3zVci"},
	"sender": {"name": "张三丰", "phone": "170-0680-5888", "province": "湖北省", "city": "十堰市",
			   "district": "武当山风景区", "address": "十堰市丹江口市公园路155号"},
	"monthly_card": "7551234567"}');
SELECT name, dialect, options->>'monthly_card' AS card FROM shipsync.provider WHERE name = 'sf';
SELECT name, auth FROM shipsync.providers WHERE name = 'sf';

CREATE SCHEMA mapshop;
CREATE TABLE mapshop.sf_orders (
	order_no text PRIMARY KEY,
	receiver_name text, receiver_phone text, receiver_province text, receiver_city text,
	receiver_district text, receiver_address text,
	cargo_name text, quantity integer, weight_kg numeric, amount numeric, remark text,
	waybill text
);
SELECT shipsync.attach('mapshop.sf_orders', 'sf', writeback => '{"tracking_number": "waybill"}') > 0 AS attached;
INSERT INTO mapshop.sf_orders VALUES ('QIAO-20200728-002', ' 郭襄阳 ', '+86 189 6382 8829', '湖北省', '襄阳市',
	'襄城区', '湖北省襄阳市襄城区环城东路122号', '君宝牌地毯', 1, 6.6, 308.0, NULL);

-- a URL decoder for reading form bodies here
CREATE FUNCTION pg_temp.form_field(body text, name text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	v text := substring(body from '(?:^|&)' || name || '=([^&]*)');
	b bytea := '';
	i int := 1;
BEGIN
	v := replace(v, '+', ' ');
	WHILE i <= length(v) LOOP
		IF substr(v, i, 1) = '%' THEN
			b := b || decode(substr(v, i + 1, 2), 'hex');
			i := i + 3;
		ELSE
			b := b || convert_to(substr(v, i, 1), 'UTF8');
			i := i + 1;
		END IF;
	END LOOP;
	RETURN convert_from(b, 'UTF8');
END $$;

-- the intents, captured (still in the inbox: no dispatcher runs here) or
-- taken into the outbox
CREATE TEMP VIEW intents AS
	SELECT id, binding_id, order_key, op, idempotency_key, state, request_body FROM shipsync.outbox
	UNION ALL
	SELECT id, binding_id, order_key, op, idempotency_key, 'pending', NULL FROM shipsync.inbox;

-- render_request: the dry run of the create, never stored
SELECT r.method, r.url, regexp_replace(r.headers::text, '[0-9a-f-]{36}', '<key>') AS headers,
	   r.body ~ '^partnerID=SHOP1&requestID=[0-9a-f-]{36}&serviceCode=EXP_RECE_CREATE_ORDER&timestamp=[0-9]{13}&msgData=[^&]+&msgDigest=[A-Za-z0-9%]+$' AS form_shape,
	   pg_temp.form_field(r.body, 'requestID') = o.idempotency_key::text AS request_id_is_the_key,
	   jsonb_pretty(pg_temp.form_field(r.body, 'msgData')::jsonb) AS msg_data
FROM intents o, shipsync.render_request(o.id) r WHERE o.order_key = 'QIAO-20200728-002';
SELECT request_body IS NULL AS not_stored, state FROM intents WHERE order_key = 'QIAO-20200728-002';
-- msgData is compact JSON: it is signed as sent
SELECT pg_temp.form_field(r.body, 'msgData') !~ '\s"' AS compact
FROM intents o, shipsync.render_request(o.id) r WHERE o.order_key = 'QIAO-20200728-002';

-- an order missing its address: nothing to send, and why
INSERT INTO mapshop.sf_orders (order_no, receiver_name, weight_kg) VALUES ('N1', '李四', 'NaN');
SELECT * FROM shipsync.render_request((SELECT id FROM intents WHERE order_key = 'N1'));
INSERT INTO mapshop.sf_orders (order_no, receiver_name, receiver_address, receiver_phone) VALUES ('N2', '李四', '  ', 'call me');
SELECT * FROM shipsync.render_request((SELECT id FROM intents WHERE order_key = 'N2'));
SELECT * FROM shipsync.render_request(-1);

-- validate => reject: the INSERT itself fails, with the fields named
CREATE TABLE mapshop.sf_strict (LIKE mapshop.sf_orders INCLUDING ALL);
SELECT shipsync.attach('mapshop.sf_strict', 'sf', options => '{"validate": "sometimes"}');
SELECT shipsync.attach('mapshop.sf_strict', 'sf', options => '{"validate": "reject"}') > 0 AS attached;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'mapshop.sf_strict'::regclass ORDER BY 1;
INSERT INTO mapshop.sf_strict (order_no, receiver_name) VALUES ('R1', '王五');
INSERT INTO mapshop.sf_strict (order_no, receiver_address, quantity) VALUES ('R2', '北京市朝阳区', 2);
UPDATE mapshop.sf_strict SET receiver_address = NULL WHERE order_no = 'R2';
DO $$
BEGIN
	INSERT INTO mapshop.sf_strict (order_no, receiver_phone) VALUES ('R3', '12');
EXCEPTION WHEN OTHERS THEN
	RAISE NOTICE 'sqlstate %', SQLSTATE;
END $$;
SELECT order_key, op FROM intents o JOIN shipsync.binding b USING (binding_id)
WHERE b.tbl = 'mapshop.sf_strict'::regclass ORDER BY o.id;
SELECT shipsync.detach('mapshop.sf_strict');
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'mapshop.sf_strict'::regclass AND tgname LIKE 'shipsync%';

-- the generic dialect: without a map the body is the whole row, unchanged
SELECT shipsync.create_provider('plain', 'generic', 'https://api.example/v1',
	'{"auth": {"type": "bearer", "token": "s3cret"}, "headers": {"X-Tenant": "t1"}}');
CREATE TABLE mapshop.plain (id bigint PRIMARY KEY, customer text, placed_at timestamptz, weight_g integer, phone text, service text);
SELECT shipsync.attach('mapshop.plain', 'plain') > 0 AS attached;
INSERT INTO mapshop.plain VALUES (7, '张三', '2026-11-27 08:21:07+00', 1500, '138 0013 8000', 'express');
SET timezone = 'UTC';
SELECT r.method, r.url, regexp_replace(r.headers::text, '[0-9a-f-]{36}', '<key>') AS headers, r.body
FROM intents o, shipsync.render_request(o.id) r
WHERE o.binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'mapshop.plain'::regclass);
-- byte for byte what version 0.1 sent, whatever the field maps hold
SELECT r.body = json_build_object('order_ref', '7', 'order', row_to_json(p))::text AS generic_body_unchanged
FROM mapshop.plain p, intents o, shipsync.render_request(o.id) r
WHERE o.binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'mapshop.plain'::regclass);
RESET timezone;

-- ... and with profile "shop_json" the same provider's body is mapped
INSERT INTO shipsync.field_map (profile, direction, position, target_path, source, transform, arg, "default", required) VALUES
	('shop_json', 'out', 1, 'reference', 'meta:order_key', 'identity', NULL, NULL, true),
	('shop_json', 'out', 2, 'to.name', 'customer', 'trim', NULL, NULL, true),
	('shop_json', 'out', 3, 'to.phone', 'phone', 'phone', '{"format": "e164"}', NULL, false),
	('shop_json', 'out', 4, 'parcel.weight_kg', 'weight_g', 'unit', '{"from": "g", "to": "kg"}', NULL, false),
	('shop_json', 'out', 5, 'parcel.weight_oz', 'weight_g', 'unit', '{"from": "g", "to": "oz", "scale": 2}', NULL, false),
	('shop_json', 'out', 6, 'placed_local', 'placed_at', 'timestamp', '{"tz": "Asia/Shanghai", "format": "%Y-%m-%d %H:%M:%S"}', NULL, false),
	('shop_json', 'out', 7, 'service_code', 'service', 'lookup', '{"express": 1, "standard": 2}', NULL, false),
	('shop_json', 'out', 8, 'service_name', 'service', 'upper', NULL, NULL, false),
	('shop_json', 'out', 9, 'note', NULL, 'concat', '{"template": "{customer} / {service}"}', NULL, false),
	('shop_json', 'out', 10, 'channel', 'const:crm', 'identity', NULL, NULL, false),
	('shop_json', 'out', 11, 'labels[kind=zh].text', 'const:顺丰标快', 'identity', NULL, NULL, false),
	('shop_json', 'out', 12, 'insured', 'insured', 'default', '"no"', NULL, false);
SELECT shipsync.create_provider('mapped', 'generic', 'https://api.example/v1',
	'{"profile": "shop_json", "auth": {"type": "api_key", "header": "X-Api-Key", "key": "k3y"}}');
CREATE TABLE mapshop.mapped (LIKE mapshop.plain INCLUDING ALL);
SELECT shipsync.attach('mapshop.mapped', 'mapped') > 0 AS attached;
INSERT INTO mapshop.mapped VALUES (8, ' 张三 ', '2026-11-27 20:21:07+00', 1500, '138 0013 8000', 'express');
SELECT r.method, r.url, regexp_replace(r.headers::text, '[0-9a-f-]{36}', '<key>') AS headers, jsonb_pretty(r.body::jsonb) AS body
FROM intents o, shipsync.render_request(o.id) r WHERE o.order_key = '8'
AND o.binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'mapshop.mapped'::regclass);
SELECT r.body FROM intents o, shipsync.render_request(o.id) r WHERE o.order_key = '8'
AND o.binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'mapshop.mapped'::regclass);

-- a changed mapping applies to the next render, and lookups refuse what they do not know
UPDATE shipsync.field_map SET target_path = 'recipient.name' WHERE profile = 'shop_json' AND target_path = 'to.name';
INSERT INTO mapshop.mapped VALUES (9, '李四', NULL, NULL, NULL, 'overnight');
SELECT r.* FROM intents o, shipsync.render_request(o.id) r WHERE o.order_key = '9'
AND o.binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'mapshop.mapped'::regclass);
UPDATE mapshop.mapped SET service = 'standard' WHERE id = 9;
SELECT r.body FROM intents o, shipsync.render_request(o.id) r WHERE o.order_key = '9' AND o.op = 'create'
AND o.binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'mapshop.mapped'::regclass);

-- two rules that collide make a map error, which names the rule
INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('shop_json', 'out', 'channel.name', 'const:x');
SELECT r.* FROM intents o, shipsync.render_request(o.id) r WHERE o.order_key = '9' AND o.op = 'create'
AND o.binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'mapshop.mapped'::regclass);

-- tracking dialects: their auth, their options, and tracking_provider
SELECT shipsync.create_provider('ep', 'easypost', 'https://api.easypost.example',
	'{"auth": {"type": "bearer", "token": "t"}}');
SELECT shipsync.create_provider('as', 'aftership', 'https://api.aftership.example',
	'{"auth": {"type": "api_key", "header": "X-Key", "key": "k"}}');
SELECT shipsync.create_provider('kd100', 'kuaidi100', 'https://poll.kuaidi100.example',
	'{"auth": {"type": "kuaidi100", "customer": "C", "key": "k"}, "company": "shunfeng"}');
SELECT shipsync.create_provider('ep', 'easypost', 'https://api.easypost.example',
	'{"carrier": "SFExpress", "auth": {"type": "basic", "username": "EZTK"}}');
SELECT shipsync.create_provider('kd100', 'kuaidi100', 'https://poll.kuaidi100.example',
	'{"auth": {"type": "kuaidi100", "customer": "C", "key": "k"}, "company": "shunfeng",
	  "callback_url": "https://shop.example/hooks/kd", "webhook_secret": "s"}');
CREATE TABLE mapshop.tracked (id bigint PRIMARY KEY, waybill text);
SELECT shipsync.attach('mapshop.tracked', 'ep');
SELECT shipsync.attach('mapshop.tracked', 'plain', options => '{"tracking_provider": "nobody"}');
SELECT shipsync.attach('mapshop.tracked', 'plain', options => '{"tracking_provider": "mapped"}');
SELECT shipsync.attach('mapshop.tracked', 'plain', options => '{"tracking_provider": "kd100"}') > 0 AS attached;

-- The dispatcher prints that body itself, once per batch looking up each
-- column's type (src/body.c): it must print every kind of column as
-- json_build_object() and row_to_json() do, and run a type's cast to json
-- as the table's owner, as the render statement does
CREATE ROLE shipsync_test_shop;
GRANT USAGE ON SCHEMA mapshop TO shipsync_test_shop;
CREATE TYPE mapshop.mood AS ENUM ('calm', 'tense');
CREATE TYPE mapshop.shade AS ENUM ('light', 'dark');
CREATE FUNCTION mapshop.shade_json(mapshop.shade) RETURNS json LANGUAGE sql
	AS $$ SELECT to_json(current_user || ':' || $1::text) $$;
CREATE CAST (mapshop.shade AS json) WITH FUNCTION mapshop.shade_json(mapshop.shade);
CREATE DOMAIN mapshop.code AS text CHECK (VALUE <> '');
CREATE DOMAIN mapshop.qty AS numeric;
CREATE TYPE mapshop.dims AS (l numeric, w numeric, note text, s mapshop.shade);
CREATE TABLE mapshop.wide (id int PRIMARY KEY, gone text, t text, vc varchar(10), bp char(5),
	i2 smallint, i8 bigint, n numeric, f4 real, f8 double precision, b boolean, d date,
	ts timestamp, tstz timestamptz, tm time, iv interval, u uuid, j json, jb jsonb, ta text[],
	ia int[], dm mapshop.dims, cd mapshop.code, q mapshop.qty, m mapshop.mood, s mapshop.shade,
	r int4range, ba bytea, ip inet, "we""ird" text);
ALTER TABLE mapshop.wide OWNER TO shipsync_test_shop;
ALTER TABLE mapshop.wide DROP COLUMN gone;
SELECT shipsync.attach('mapshop.wide', 'plain') > 0 AS attached;
INSERT INTO mapshop.wide (id) VALUES (1);
INSERT INTO mapshop.wide VALUES (2, E'quote" back\\ nl\n tab\t ctl\x01 张三 €', 'abc', 'ab', -3,
	9007199254740993, 'NaN', 0.1, 'Infinity', true, 'infinity', '2026-11-27 08:21:07.123456',
	'2026-11-27 08:21:07+08', '08:21', '1 day 2 hours', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
	'{"a": [1, 2.50]}', '{"b": 1, "a": "x"}', '{a,"b c",NULL}', '{{1,2},{3,4}}',
	ROW(1.5, 2, 'x"y', 'light'), 'C-1', 12.50, 'calm', 'dark', '[1,5)', '\x00ff', '10.0.0.1/8', 'w');
INSERT INTO mapshop.wide (id, n, f4, f8, b, d, tstz, ia, jb)
	VALUES (3, 'Infinity', 'NaN', 1e300, false, '2026-02-28', '-infinity', '{}', 'null');
-- added after the rows: their value is the default, kept in the catalog
ALTER TABLE mapshop.wide ADD COLUMN later text DEFAULT 'filled';
-- the body is printed with the dispatcher's settings (TimeZone UTC,
-- DateStyle ISO, IntervalStyle postgres, extra_float_digits 1,
-- bytea_output hex), whatever the caller's: render_request() shows what
-- is sent
SET timezone = 'UTC';
SET datestyle = 'ISO, MDY';
SET intervalstyle = 'postgres';
SET extra_float_digits = 1;
SET bytea_output = 'hex';
SET ROLE shipsync_test_shop;
CREATE TEMP TABLE wide_want AS
SELECT w.id::text AS order_key, json_build_object('order_ref', w.id::text, 'order', row_to_json(w))::text AS body
FROM mapshop.wide w;
RESET ROLE;
SET timezone = 'Asia/Shanghai';
SET datestyle = 'SQL, DMY';
SET intervalstyle = 'iso_8601';
SET extra_float_digits = 0;
SET bytea_output = 'escape';
SELECT o.order_key, r.body = want.body AS same_as_row_to_json, r.body ~ 'shipsync_test_shop:dark' AS cast_as_owner
FROM intents o JOIN wide_want want USING (order_key), shipsync.render_request(o.id) r
WHERE o.binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'mapshop.wide'::regclass)
ORDER BY 1;
-- the caller's settings are its own again
SELECT current_setting('timezone') AS timezone, current_setting('extra_float_digits') AS extra_float_digits,
	current_setting('bytea_output') AS bytea_output;
RESET bytea_output;
RESET intervalstyle;
RESET datestyle;
RESET extra_float_digits;
RESET timezone;
-- and a money column by the lc_monetary of the database (the
-- dispatcher's), not by the caller's SET: a type's cast shows the setting
CREATE TYPE mapshop.probe AS ENUM ('m');
CREATE FUNCTION mapshop.probe_json(mapshop.probe) RETURNS json LANGUAGE sql
	AS $$ SELECT to_json(current_setting('lc_monetary')) $$;
CREATE CAST (mapshop.probe AS json) WITH FUNCTION mapshop.probe_json(mapshop.probe);
CREATE TABLE mapshop.priced (id int PRIMARY KEY, p mapshop.probe);
SELECT shipsync.attach('mapshop.priced', 'plain') > 0 AS attached;
INSERT INTO mapshop.priced VALUES (1, 'm');
SELECT CASE WHEN reset_val = 'POSIX' THEN 'C' ELSE 'POSIX' END AS other_monetary
FROM pg_settings WHERE name = 'lc_monetary' \gset
SET lc_monetary = :'other_monetary';
SELECT r.body::json->'order'->>'p' = (SELECT reset_val FROM pg_settings WHERE name = 'lc_monetary')
	   AS by_the_databases_lc_monetary
FROM intents o, shipsync.render_request(o.id) r
WHERE o.binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'mapshop.priced'::regclass);
SELECT current_setting('lc_monetary') = :'other_monetary' AS callers_own_again;
RESET lc_monetary;
SELECT shipsync.detach('mapshop.priced');
DROP TABLE mapshop.priced;
DROP CAST (mapshop.probe AS json);
DROP FUNCTION mapshop.probe_json(mapshop.probe);
DROP TYPE mapshop.probe;
-- a render statement that reads a bare t gets the column, which is no row:
-- refused before anything reads it as one
UPDATE shipsync.binding SET render_sql = replace(render_sql, 't.*::mapshop.wide AS', 't AS')
WHERE tbl = 'mapshop.wide'::regclass;
SELECT r.body FROM intents o, shipsync.render_request(o.id) r
WHERE o.binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'mapshop.wide'::regclass)
AND o.order_key = '2';
SELECT shipsync.detach('mapshop.wide');
DROP TABLE mapshop.wide;
DROP TABLE wide_want;
REVOKE USAGE ON SCHEMA mapshop FROM shipsync_test_shop;
DROP ROLE shipsync_test_shop;

-- a column whose name is no bare path name (a quote, a backslash, a space,
-- a dot) is named in double quotes, a quote in it doubled, as in SQL; a
-- target member the same way
INSERT INTO shipsync.field_map (profile, direction, position, target_path, source) VALUES
	('quoted_json', 'out', 1, 'ref', 'meta:order_key'),
	('quoted_json', 'out', 2, 'name', '"full""name"'),
	('quoted_json', 'out', 3, 'path', '"back\slash"'),
	('quoted_json', 'out', 4, 'to."Customer Name"', '"Customer Name"'),
	('quoted_json', 'out', 5, 'dotted', '"a.b"'),
	('quoted_json', 'out', 6, 'bare_dotted', 'a.b');
INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('quoted_json', 'out', 'x', '"open');
-- ... also in a concat template, where the quotes let a name hold a "}"
INSERT INTO shipsync.field_map (profile, direction, position, target_path, source, transform, arg) VALUES
	('quoted_json', 'out', 7, 'note', NULL, 'concat',
	 '{"template": "<{\"Nick}name\"}> <{\"Customer Name\"}> <{\"full\"\"name\"}> <{\"x}\"\"}\"}>"}');
SELECT shipsync.create_provider('quoted', 'generic', 'https://api.example/v1', '{"profile": "quoted_json"}');
CREATE TABLE mapshop.quoted (id int PRIMARY KEY, "full""name" text, "back\slash" text, "Customer Name" text, "a.b" text,
	"Nick}name" text, "x}""}" text);
SELECT shipsync.attach('mapshop.quoted', 'quoted') > 0 AS attached;
INSERT INTO mapshop.quoted VALUES (1, 'Quote', 'Back', 'Space', 'Dot', 'Brace', 'Both');
SELECT r.body FROM intents o, shipsync.render_request(o.id) r
WHERE o.binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'mapshop.quoted'::regclass);
SELECT shipsync.detach('mapshop.quoted');
DROP TABLE mapshop.quoted;
DELETE FROM shipsync.field_map WHERE profile = 'quoted_json';

DROP EXTENSION pg_shipsync CASCADE;
