-- Personal data as shipsync_reader sees it: masked in request bodies,
-- render_request(), trace() and every view it may read; operators and
-- admins see it whole.  (src/mask.c's unit tests hold most known answers.)
-- a fresh extension, whatever the tests before left
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_shipsync CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_shipsync;

-- the four masks
SELECT k, v, shipsync.mask_pii(v, k) AS masked FROM (VALUES
	('name', '张三'), ('name', '欧阳娜娜'), ('name', 'John Smith'), ('name', 'J'), ('name', ''),
	('phone', '13812345678'), ('phone', '+86 138-1234-5678'), ('phone', '12345'),
	('phone', '138abcd5678'),
	('address', '深圳市南山区科技园10栋'), ('address', '12 Main St, Springfield'),
	('address', 'Baker Street'),
	('email', 'zhang.san@example.com'), ('email', 'nobody')) AS t(k, v);
-- what follows an address's domain (a second address, a remark) is no
-- domain, and a word with a digit in it (a phone after a name) no family
-- name: both are masked, never shown
SELECT k, v, shipsync.mask_pii(v, k) AS masked FROM (VALUES
	('email', 'zhang.san@example.com; li.si@example.org'),
	('email', 'zhang.san@example.com，li.si@example.org'),
	('email', 'zhang@example.com (phone 13812345678)'),
	('email', 'Zhang San <zhang.san@example.com>'),
	('email', '张三@例子.中国'),
	('name', 'Jane Doe 13812345678'),
	('name', 'Jane Doe (13812345678)'),
	('name', 'Jane 13812345678 Doe'),
	('name', 'Madonna 13812345678')) AS t(k, v);
-- what an address keeps is its region (province, city, district), never
-- a name, a phone, an ID number, an e-mail address or a street written
-- before the district or the first comma: such a value is *** whole
SELECT v, shipsync.mask_pii(v, 'address') AS masked FROM (VALUES
	('张三 13812345678 广东省深圳市南山区科技园路1号'),
	('收货人:张三 手机:13812345678 地址:广东省深圳市南山区科技园路1号'),
	('440301199001011234 广东省深圳市南山区'),
	('zhang.san@example.com 广东省深圳市南山区科技园路1号'),
	('张三，13812345678，广东省深圳市南山区科技园路1号'),
	('John Smith, 12 Main St'),
	('广东省 深圳市 南山区 科技园路1号'),
	('广东省深圳市，南山区科技园路1号')) AS t(v);
-- free text (kind text): every run of seven digits or more (a phone, an
-- ID number; spaces, ideographic spaces, hyphens and dots inside it count)
-- keeps its last four
SELECT v, shipsync.mask_pii(v, 'text') AS masked FROM (VALUES
	('送货前电话13912345678，身份证44030119900101123X'),
	('call +86 139-1234-5678 or ０２０-８７６５-４３２１ after 6pm, gate 12'),
	('leave at door 3, order 2026-12-07'),
	-- typed in full-width mode: full-width digits, ideographic spaces (U+3000)
	('电话：１３９　１２３４　５６７８，身份证１１０１０５　１９４９１２３１　００２Ｘ'),
	('送达　２０２６　１２　０７'),
	('')) AS t(v);
SELECT shipsync.mask_pii(NULL, 'phone') IS NULL AS null_stays_null;
SELECT shipsync.mask_pii('x', 'passport');
-- an ID number (a national ID card's, a passport's) keeps at most its last
-- four characters, and nothing when it is shorter than eight
SELECT v, shipsync.mask_pii(v, 'id_number') AS masked FROM (VALUES
	('440301199001011234'), ('E12345678'), ('1234567'), ('4403 0119 9001 0112 34'),
	('44030119900101123X')) AS t(v);
-- the column convention reads the words of camelCase, PascalCase and
-- snake_case names, and a number at their end (phone2): a CRM's
-- receiverPhone is as personal as receiver_phone; ID numbers are a kind of
-- their own; a boolean, an id or a word that only starts like one is not
SELECT key, value FROM jsonb_each(shipsync._mask_body('{"order": {
	"receiverPhone": "13812345678", "ReceiverPhone": "13812345678", "phone2": "13812345678",
	"mobileNo": "13812345678", "mobile_no": "13812345678", "TEL": "13812345678",
	"receiverName": "John Smith", "ShipToAddress": "1 High St, Leeds", "EMail": "john@example.com",
	"idCard": "440301199001011234", "id_card": "440301199001011234", "IDCard": "440301199001011234",
	"id_number": "440301199001011234", "passport": "E12345678", "passportNo": "E12345678",
	"phone_verified": true, "telemetry": "ok", "orderIdNo": "A1234567", "hotelName": "Grand",
	"customerId": 42, "cargoName": "rug"}}', NULL, NULL, NULL)::jsonb->'order') ORDER BY key;
-- and inside a json, jsonb or composite column, at any depth: a CRM's
-- shipping jsonb holds the receiver's phone as well as a column would
SELECT shipsync._mask_body('{"order": {"id": 1, "shipping": {"receiver_phone": "13812345678",
	"receiver": {"fullName": "John Smith", "idCard": "440301199001011234"},
	"addresses": [{"street": "1 High St", "city": "Leeds"}], "weight": 2.5}, "item": "rug"}}',
	NULL, NULL, '{"city": "address"}')::jsonb->'order' AS nested;

-- the built-in profile marks the sender's and the receiver's name, phone
-- and address
SELECT target_path, pii FROM shipsync.field_map WHERE pii IS NOT NULL ORDER BY position;
-- marks are for outbound rows, of the four kinds
\set VERBOSITY terse
INSERT INTO shipsync.field_map (profile, direction, target_path, source, pii)
VALUES ('p', 'out', 'x', 'c', 'passport');
INSERT INTO shipsync.field_map (profile, direction, target_path, source, pii)
VALUES ('p', 'in', 'tracking_number', 'x', 'name');
\set VERBOSITY default
-- a copied profile keeps them
SELECT shipsync.copy_profile('sf_express', 'sf_shop');
SELECT count(*) FILTER (WHERE pii IS NOT NULL) AS marked FROM shipsync.field_map WHERE profile = 'sf_shop';

CREATE ROLE shipsync_test_bi LOGIN IN ROLE shipsync_reader;
CREATE ROLE shipsync_test_ops LOGIN IN ROLE shipsync_operator;

-- an SF Express provider, a generic one (the default body: the whole order
-- row) and a generic one with a field map of its own
SELECT shipsync.create_provider('sf', 'sf_express', 'https://sfapi.example/std/service', '{
	"auth": {"type": "sf_express", "partner_id": "SHOP1", "checkword": "fjcg5PGKaNpPSHFAZ4QsCOkV71R3zVci"},
	"sender": {"name": "张三丰", "phone": "170-0680-5888", "province": "湖北省", "city": "十堰市",
			   "district": "丹江口市", "address": "湖北省十堰市丹江口市公园路155号"}}');
SELECT shipsync.create_provider('gen', 'generic', 'https://api.example');
SELECT shipsync.create_provider('acme', 'generic', 'https://acme.example', '{"profile": "acme_json"}');
INSERT INTO shipsync.field_map (profile, direction, position, target_path, source, pii) VALUES
	('acme_json', 'out', 1, 'ref', 'meta:order_key', NULL),
	('acme_json', 'out', 2, 'to.name', 'buyer', 'name'),
	('acme_json', 'out', 3, 'to.contacts[kind="mail"].value', 'mail', 'email'),
	('acme_json', 'out', 4, 'to.city', 'city', NULL);

CREATE SCHEMA shop;
CREATE TABLE shop.sf_orders (
	order_no text PRIMARY KEY,
	receiver_name text, receiver_phone text, receiver_province text, receiver_city text,
	receiver_district text, receiver_address text, cargo_name text, weight_kg numeric,
	remark text
);
SELECT shipsync.attach('shop.sf_orders', 'sf') > 0 AS attached;
-- the generic body carries every column: option pii says which are
-- personal, beside the usual names (customer, phone, address, email, ...)
CREATE TABLE shop.orders (id int PRIMARY KEY, customer text, phone text, address text,
	email text, tel text, note text, name text);
SELECT shipsync.attach('shop.orders', 'gen',
	options => '{"pii": {"tel": "phone", "note": "name", "name": null}}') > 0 AS attached;
CREATE TABLE shop.mapped (id int PRIMARY KEY, buyer text, mail text, city text);
SELECT shipsync.attach('shop.mapped', 'acme') > 0 AS attached;
-- option pii is checked
CREATE TABLE shop.bad (id int PRIMARY KEY);
SELECT shipsync.attach('shop.bad', 'gen', options => '{"pii": {"id": "passport"}}');
SELECT shipsync.attach('shop.bad', 'gen', options => '{"pii": ["id"]}');

INSERT INTO shop.sf_orders VALUES ('SF-1', '郭襄', '+86 189 6382 8829', '湖北省', '襄阳市', '襄城区',
	'湖北省襄阳市襄城区环城东路122号', '地毯', 6.6,
	'送货前电话13912345678，或 139-8765-4321，身份证440301199001011234，3号门');
INSERT INTO shop.orders VALUES (1, 'John Smith', '13812345678', '1 High St, Leeds',
	'john@example.com', '020-8765-4321', 'Mary Jones', '扫地机器人');
INSERT INTO shop.mapped VALUES (7, '李雷', 'lilei@example.cn', '北京');

-- the dispatcher's claim takes the intents into the outbox and stores each
-- request before its first attempt; here, by hand
SELECT count(*) AS claimed FROM shipsync.provider p, shipsync.claim(p.provider_id, 10, 60000) c;
UPDATE shipsync.outbox o SET request_body = (SELECT r.body FROM shipsync.render_request(o.id) r);

-- a URL decoder for reading SF's form bodies here
CREATE FUNCTION pg_temp.msg_data(body text) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	v text := replace(substring(body from '(?:^|&)msgData=([^&]*)'), '+', ' ');
	b bytea := '';
	i int := 1;
BEGIN
	WHILE i <= length(v) LOOP
		IF substr(v, i, 1) = '%' THEN
			b := b || decode(substr(v, i + 1, 2), 'hex');
			i := i + 3;
		ELSE
			b := b || convert_to(substr(v, i, 1), 'UTF8');
			i := i + 1;
		END IF;
	END LOOP;
	RETURN convert_from(b, 'UTF8')::jsonb;
END $$;
-- every personal value of the test, as text
CREATE FUNCTION pg_temp.personal() RETURNS text LANGUAGE sql AS $$
	SELECT '郭襄|189 6382 8829|18963828829|环城东路|John|13812345678|john@|8765-4321|Leeds'
		|| '|020-8765|Mary|李雷|lilei@|张三丰|170-0680-5888|17006805888|公园路'
		|| '|13912345678|139-8765|4403011990'
$$;
GRANT EXECUTE ON FUNCTION pg_temp.msg_data(text), pg_temp.personal() TO PUBLIC;
-- trace() names the table: its reader needs to see the schema
GRANT USAGE ON SCHEMA shop TO shipsync_test_bi;

-- a reader: the masked view, never the table
SET SESSION AUTHORIZATION shipsync_test_bi;
SELECT shipsync._pii_visible() AS sees_personal_data;
SELECT order_key, request_body FROM shipsync.intents WHERE order_key IN ('1', '7') ORDER BY id;
SELECT order_key, jsonb_pretty(pg_temp.msg_data(request_body)->'contactInfoList') AS contacts
FROM shipsync.intents WHERE order_key = 'SF-1';
-- the remark, free text a customer or a clerk wrote, has its phone and ID
-- numbers masked (kind text)
SELECT pg_temp.msg_data(request_body)->'remark' AS remark
FROM shipsync.intents WHERE order_key = 'SF-1';
SELECT count(*) FROM shipsync.outbox;
-- nor the label's link: a carrier's label printed without a login shows
-- the whole name, phone and address
SELECT has_column_privilege('shipsync.shipment', 'label_url', 'SELECT') AS reads_label_url,
	   has_column_privilege('shipsync.shipment', 'tracking_number', 'SELECT') AS reads_tracking_number;
SELECT label_url FROM shipsync.shipment;
-- render_request() masks the same way
SELECT i.order_key, r.body = i.request_body AS same_as_the_view,
	   r.body ~ pg_temp.personal() AS personal
FROM shipsync.intents i, shipsync.render_request(i.id) r
WHERE i.order_key IN ('1', '7') ORDER BY i.id;
SELECT pg_temp.msg_data(r.body) = pg_temp.msg_data(i.request_body) AS same_msg_data,
	   r.body ~ pg_temp.personal() AS personal
FROM shipsync.intents i, shipsync.render_request(i.id) r WHERE i.order_key = 'SF-1';
-- trace() holds no personal value
SELECT count(*) AS entries, count(*) FILTER (WHERE detail::text ~ pg_temp.personal()) AS personal
FROM shipsync.trace('shop.orders', '1');
-- nor any view a reader may read
DO $$
DECLARE
	v regclass;
	n bigint;
BEGIN
	FOR v IN SELECT c.oid FROM pg_class c WHERE c.relnamespace = 'shipsync'::regnamespace
			 AND c.relkind = 'v' AND has_table_privilege(c.oid, 'SELECT') ORDER BY c.relname LOOP
		EXECUTE format('SELECT count(*) FROM %s t WHERE t::text ~ $1', v) INTO n USING pg_temp.personal();
		RAISE NOTICE 'view %: % rows with personal values', v, n;
	END LOOP;
END $$;
RESET SESSION AUTHORIZATION;

-- an operator sees them whole, in the view and in the table
SET SESSION AUTHORIZATION shipsync_test_ops;
SELECT shipsync._pii_visible() AS sees_personal_data;
SELECT order_key, request_body FROM shipsync.intents WHERE order_key IN ('1', '7') ORDER BY id;
SELECT count(*) FILTER (WHERE o.request_body = i.request_body) AS whole, count(*) AS intents
FROM shipsync.outbox o JOIN shipsync.intents i USING (id);
SELECT has_column_privilege('shipsync.shipment', 'label_url', 'SELECT') AS reads_label_url;
SELECT r.body ~ pg_temp.personal() AS personal
FROM shipsync.intents i, shipsync.render_request(i.id) r WHERE i.order_key = 'SF-1';
RESET SESSION AUTHORIZATION;

-- judged on the role the session acts as, not on the session's user
SELECT shipsync._pii_visible() AS superuser_sees;
SET ROLE shipsync_test_bi;
SELECT shipsync._pii_visible() AS as_reader_sees;
RESET ROLE;
-- and, where PostgreSQL runs a role's code as that role inside a
-- superuser's session, on that role: a reader's materialized view that a
-- superuser refreshes stores the masks, an operator's the values whole
GRANT USAGE ON SCHEMA shop TO shipsync_test_ops;
CREATE MATERIALIZED VIEW shop.bi_bodies AS SELECT id, request_body FROM shipsync.intents WITH NO DATA;
ALTER MATERIALIZED VIEW shop.bi_bodies OWNER TO shipsync_test_bi;
CREATE MATERIALIZED VIEW shop.ops_bodies AS SELECT id, request_body FROM shipsync.intents WITH NO DATA;
ALTER MATERIALIZED VIEW shop.ops_bodies OWNER TO shipsync_test_ops;
REFRESH MATERIALIZED VIEW shop.bi_bodies;
REFRESH MATERIALIZED VIEW shop.ops_bodies;
SELECT (SELECT count(*) FILTER (WHERE request_body ~ pg_temp.personal()) FROM shop.bi_bodies) AS reader_personal,
	   (SELECT count(*) FILTER (WHERE request_body ~ pg_temp.personal()) FROM shop.ops_bodies) AS operator_personal;
DROP MATERIALIZED VIEW shop.bi_bodies, shop.ops_bodies;

-- the view keeps the outbox's columns, names and types, in order
SELECT (SELECT array_agg(attname || ' ' || format_type(atttypid, atttypmod) ORDER BY attnum)
		FROM pg_attribute WHERE attrelid = 'shipsync.intents'::regclass AND attnum > 0)
	 = (SELECT array_agg(attname || ' ' || format_type(atttypid, atttypmod) ORDER BY attnum)
		FROM pg_attribute WHERE attrelid = 'shipsync.outbox'::regclass AND attnum > 0
		AND NOT attisdropped) AS same_columns;

-- masking follows the field map as it is now: unmark, and it shows
UPDATE shipsync.field_map SET pii = NULL WHERE profile = 'acme_json' AND target_path = 'to.name';
SET SESSION AUTHORIZATION shipsync_test_bi;
SELECT request_body FROM shipsync.intents WHERE order_key = '7';
RESET SESSION AUTHORIZATION;

-- bodies that are not what they claim are masked whole; others untouched
SELECT shipsync._mask_body('{"order": {"customer": "张三"', NULL, NULL, NULL) AS broken_json,
	   shipsync._mask_body('{"order_ref" : "1", "order" : {"id": 1}}', NULL, NULL, NULL) AS nothing_personal,
	   shipsync._mask_body('a=1&msgData=%7B%22n%22%3A%22%E5%BC%A0%E4%B8%89%22%7D&b=%ZZ',
						   '{n}', '{name}', NULL) AS form;

DROP EXTENSION pg_shipsync CASCADE;
DROP SCHEMA shop CASCADE;
DROP ROLE shipsync_test_bi;
DROP ROLE shipsync_test_ops;
