-- CRM sources: create_crm_source() and its checks, ingest_crm() of each
-- kind through the crm_in field map (insert, update, delete, duplicates,
-- ignored operations), and every error with its SQLSTATE.  The 简道云
-- signature is computed (SHA-1) in the TAP suite; here its failures.
SET client_min_messages = warning;
-- what the suites before this one left
DROP EXTENSION IF EXISTS pg_shipsync CASCADE;
DROP SCHEMA IF EXISTS crm CASCADE;
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

-- Standard Webhooks headers for a body, signed now (or at ts)
CREATE FUNCTION pg_temp.sw(id text, body text, ts bigint DEFAULT extract(epoch FROM now())::bigint,
						   secret text DEFAULT 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')
RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('Webhook-Id', id, 'Webhook-Timestamp', ts::text,
		'Webhook-Signature', 'v1,' || encode(shipsync._hmac_sha256(
			decode(regexp_replace(secret, '^whsec_', ''), 'base64'),
			convert_to(id || '.' || ts || '.' || body, 'UTF8')), 'base64'))
$$;
-- a signed generic push of one order event
CREATE FUNCTION pg_temp.push(source text, id text, type text, data jsonb) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT shipsync.ingest_crm(source, b, pg_temp.sw(id, b))
	FROM (SELECT jsonb_build_object('type', type, 'data', data)::text AS b) x
$$;

CREATE SCHEMA crm;
CREATE TABLE crm.orders (
	id			bigserial PRIMARY KEY,
	crm_id		text UNIQUE,
	customer	text NOT NULL,
	phone		text,
	qty			integer,
	amount		numeric(10,2),
	placed_at	timestamptz,
	waybill_no	text
);
-- attached, so that what a push writes is captured like any order
SELECT shipsync.create_provider('carrier', 'generic', 'http://127.0.0.1:9');
SELECT shipsync.pause('carrier');
SELECT shipsync.attach('crm.orders', 'carrier', writeback => '{"tracking_number": "waybill_no"}');

------------------------------------------------------------------------------
-- create_crm_source() and its checks
------------------------------------------------------------------------------
-- crm_in rows may come before their source
INSERT INTO shipsync.field_map (profile, direction, position, target_path, source, transform, arg, "default", required) VALUES
	('zoho', 'crm_in', 1, 'crm_id', 'id', 'identity', NULL, NULL, true),
	('zoho', 'crm_in', 2, 'customer', 'contact.name', 'trim', NULL, NULL, true),
	('zoho', 'crm_in', 3, 'phone', 'contact.phone', 'phone', '{"country": "86"}', NULL, false),
	('zoho', 'crm_in', 4, 'qty', 'lines[0].qty', 'to_number', NULL, '1', false),
	('zoho', 'crm_in', 5, 'amount', 'total', 'to_number', NULL, NULL, false),
	('zoho', 'crm_in', 6, 'placed_at', 'placed', 'parse_time', '{"format": "%Y-%m-%d %H:%M:%S", "tz": "Asia/Shanghai"}', NULL, false);
SELECT shipsync.create_crm_source('zoho', 'generic', 'crm.orders',
	'{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "key_column": "crm_id"}');
SELECT name, kind, tbl, key_column, profile, dedup_ttl, options, map_rows FROM shipsync.crm_sources;
-- the secret is shown masked, and stored encrypted in shipsync.secret
-- under the source's name, like a provider's webhook secret
SELECT provider, name FROM shipsync.secret ORDER BY 1, 2;
SELECT count(*) AS plaintext_anywhere
FROM shipsync.secret s, shipsync.crm_source c
WHERE position(convert_to('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'UTF8') IN s.ciphertext) > 0
   OR s::text LIKE '%MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw%' OR c::text LIKE '%MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw%';

SELECT pg_temp.err($$SELECT shipsync.create_crm_source('bad name', 'generic', 'crm.orders', '{"secret": "whsec_AAAA"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'hubspot', 'crm.orders')$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'generic', 'crm.orders', '{"secret": "whsec_AAAA", "colour": "red"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'salesforce_om', 'crm.orders', '{"secret": "s", "organization_id": "00D000000000001"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'generic', 'crm.orders')$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'jiandaoyun', 'crm.orders', '{"secret": ""}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'generic', 'crm.orders', '{"secret": "not a secret!"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'salesforce_om', 'crm.orders', '{"organization_id": "00D"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'jiandaoyun', 'crm.orders', '{"secret": "s", "dedup_ttl": "soon"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'jiandaoyun', 'crm.orders', '{"secret": "s", "dedup_ttl": "2 years"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'jiandaoyun', 'crm.orders', '{"secret": "s", "key_column": "customer"}')$$);
-- a key column the table does not have is named as such (it was said to
-- lack a unique index, with a hint to add one on the missing column)
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'jiandaoyun', 'crm.orders', '{"secret": "s", "key_column": "no_such_column"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'jiandaoyun', 'crm.orders', '{"secret": "s", "profile": "bad profile"}')$$);
CREATE VIEW crm.v AS SELECT * FROM crm.orders;
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'jiandaoyun', 'crm.v', '{"secret": "s"}')$$);
CREATE TABLE crm.nokey (a text, b text);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'jiandaoyun', 'crm.nokey', '{"secret": "s"}')$$);
-- a crm_in row naming a column the table lacks
INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('typo', 'crm_in', 'custmer', 'name');
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'jiandaoyun', 'crm.orders', '{"secret": "s", "profile": "typo"}')$$);
-- names are unique across providers and CRM sources, both ways
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('carrier', 'jiandaoyun', 'crm.orders', '{"secret": "s"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('zoho', 'generic', 'http://127.0.0.1:9')$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('zoho', 'jiandaoyun', 'crm.orders', '{"secret": "s"}')$$);
-- and when renamed, both ways
SELECT pg_temp.err($$UPDATE shipsync.provider SET name = 'zoho' WHERE name = 'carrier'$$);
SELECT pg_temp.err($$UPDATE shipsync.crm_source SET name = 'carrier' WHERE name = 'zoho'$$);
-- the failed calls left the source's secret alone
SELECT provider, name FROM shipsync.secret ORDER BY 1, 2;
-- a bad crm_in row is refused by the field map's own check
SELECT pg_temp.err($$INSERT INTO shipsync.field_map (profile, direction, target_path, source, transform) VALUES ('zoho', 'crm_in', 'phone2', 'x', 'shout')$$);

------------------------------------------------------------------------------
-- generic (Zoho): created, updated, unchanged, deleted, ignored, duplicate
------------------------------------------------------------------------------
SELECT pg_temp.push('zoho', 'evt_1', 'order.created', '{"id": "Z-1", "contact": {"name": "  张三 ", "phone": "+86 138-1234-5678"},
	"lines": [{"qty": "2"}], "total": "199.50", "placed": "2026-03-01 09:30:00"}');
SELECT crm_id, customer, phone, qty, amount, placed_at AT TIME ZONE 'UTC' AS placed_utc FROM crm.orders;
-- the capture trigger saw the insert: an intent waits for the paused carrier
SELECT op, order_key FROM shipsync.inbox;
-- the same delivery again: nothing
SELECT pg_temp.push('zoho', 'evt_1', 'order.created', '{"id": "Z-1", "contact": {"name": "李四"}}');
-- a late create of an existing order changes nothing
SELECT pg_temp.push('zoho', 'evt_2', 'order.created', '{"id": "Z-1", "contact": {"name": "李四"}}');
-- an update writes the mapped columns (qty falls back to its default)
SELECT pg_temp.push('zoho', 'evt_3', 'order.updated', '{"id": "Z-1", "contact": {"name": "张三丰"}, "total": 210}');
SELECT crm_id, customer, phone, qty, amount FROM crm.orders;
-- the same values again: no write, no intent
SELECT pg_temp.push('zoho', 'evt_4', 'order.updated', '{"id": "Z-1", "contact": {"name": "张三丰"}, "total": 210}');
-- an update of an order never created inserts it
SELECT pg_temp.push('zoho', 'evt_5', 'order.updated', '{"id": "Z-2", "contact": {"name": "王五"}}');
-- other event types are acknowledged and ignored
SELECT pg_temp.push('zoho', 'evt_6', 'contact.merged', '{}');
SELECT pg_temp.push('zoho', 'evt_7', 'order.deleted', '{"id": "Z-2", "contact": {"name": "王五"}}');
SELECT crm_id, customer FROM crm.orders ORDER BY crm_id;
SELECT op, count(*) FROM shipsync.inbox GROUP BY op ORDER BY op;
SELECT count(*) AS deliveries_remembered FROM shipsync.crm_delivery;

------------------------------------------------------------------------------
-- every error of ingest_crm(), with its SQLSTATE
------------------------------------------------------------------------------
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('nobody', '{}')$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_crm(NULL, '{}')$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('zoho', NULL)$$);
-- signatures: none, forged, stale, another secret
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('zoho', '{"type": "order.created", "data": {}}')$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('zoho', '{"type": "order.created", "data": {}}',
	pg_temp.sw('e1', '{"type": "order.created", "data": {"id": "X"}}'))$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('zoho', '{}', pg_temp.sw('e1', '{}', 1614265330))$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('zoho', '{}', pg_temp.sw('e1', '{}', secret => 'whsec_c2VjcmV0'))$$);
-- payloads
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('zoho', 'not json', pg_temp.sw('e1', 'not json'))$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('zoho', '{"data": {}}', pg_temp.sw('e1', '{"data": {}}'))$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('zoho', '{"type": "order.created"}', pg_temp.sw('e1', '{"type": "order.created"}'))$$);
-- a NUL escaped in a string would end the C string: "Z-4\u0000X" would write order Z-4
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('zoho', b, pg_temp.sw('e1', b))
	FROM (SELECT '{"type": "order.created", "data": {"id": "Z-4\u0000X", "contact": {"name": "赵六"}}}'::text AS b) x$$);
SELECT count(*) AS cut_short FROM crm.orders WHERE crm_id = 'Z-4';
-- records the map cannot read: required missing, a malformed value, no key
SELECT pg_temp.err($$SELECT pg_temp.push('zoho', 'e2', 'order.created', '{"id": "Z-3"}')$$);
SELECT pg_temp.err($$SELECT pg_temp.push('zoho', 'e3', 'order.created', '{"id": "Z-3", "contact": {"name": "赵六"}, "total": "lots"}')$$);
SELECT pg_temp.err($$SELECT pg_temp.push('zoho', 'e4', 'order.created', '{"contact": {"name": "赵六"}}')$$);
-- records the table cannot take: a value its column type refuses, a constraint
SELECT pg_temp.err($$SELECT pg_temp.push('zoho', 'e5', 'order.created', '{"id": "Z-3", "contact": {"name": "赵六"}, "lines": [{"qty": 3.5}]}')$$);
ALTER TABLE crm.orders ADD CONSTRAINT positive CHECK (amount > 0);
SELECT pg_temp.err($$SELECT pg_temp.push('zoho', 'e6', 'order.created', '{"id": "Z-3", "contact": {"name": "赵六"}, "total": -1}')$$);
-- nothing of a failed push stays, not even its delivery id
SELECT count(*) AS orders, (SELECT count(*) FROM shipsync.crm_delivery) AS deliveries FROM crm.orders;
-- configuration errors: a profile without crm_in rows, a row naming a missing column
SELECT shipsync.create_crm_source('empty', 'generic', 'crm.orders',
	'{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "key_column": "crm_id"}');
SELECT pg_temp.err($$SELECT pg_temp.push('empty', 'e7', 'order.created', '{"id": "Z-4"}')$$);
INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('empty', 'crm_in', 'crm_id', 'id'), ('empty', 'crm_in', 'nosuch', 'x');
SELECT pg_temp.err($$SELECT pg_temp.push('empty', 'e8', 'order.created', '{"id": "Z-4"}')$$);
-- jiandaoyun: no signature, a wrong one, no query, no delivery id
SELECT shipsync.create_crm_source('jdy', 'jiandaoyun', 'crm.orders', '{"secret": "test-secret", "key_column": "crm_id", "profile": "zoho"}');
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('jdy', '{"op": "data_create", "data": {}}', '{}', '{"nonce": "n", "timestamp": "1"}')$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('jdy', '{"op": "data_create", "data": {}}',
	'{"X-JDY-Signature": "da39a3ee5e6b4b0d3255bfef95601890afd80709"}', '{"nonce": "n", "timestamp": "1"}')$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('jdy', '{"op": "data_create", "data": {}}',
	'{"X-JDY-Signature": "da39a3ee5e6b4b0d3255bfef95601890afd80709"}')$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('jdy', '{"op": "data_create", "data": {}}',
	'{"X-JDY-Signature": "not hex"}', '{"nonce": "n", "timestamp": "1"}')$$);
-- a dropped table
CREATE TABLE crm.gone (id text PRIMARY KEY);
INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('gone', 'crm_in', 'id', 'id');
SELECT shipsync.create_crm_source('gone', 'generic', 'crm.gone', '{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}');
DROP TABLE crm.gone;
SELECT pg_temp.err($$SELECT pg_temp.push('gone', 'e9', 'order.created', '{"id": "Z-5"}')$$);
SELECT count(*) AS gone_secrets FROM shipsync.secret WHERE provider = 'gone';
INSERT INTO shipsync.crm_delivery (crm_source_id, delivery_id, expires_at)
SELECT crm_source_id, 'd-gone', now() + interval '1 day' FROM shipsync.crm_source WHERE name = 'gone';
SELECT shipsync.drop_crm_source('gone');
SELECT pg_temp.err($$SELECT shipsync.drop_crm_source('gone')$$);
-- its deliveries go with it (a trigger: no foreign key, see TAP 005)
SELECT count(*) AS gone_deliveries FROM shipsync.crm_delivery WHERE delivery_id = 'd-gone';
-- a dropped source takes its secret with it
SELECT count(*) AS gone_secrets FROM shipsync.secret WHERE provider = 'gone';

------------------------------------------------------------------------------
-- Salesforce Outbound Messages: the published requests, an upsert each
------------------------------------------------------------------------------
CREATE TABLE crm.contacts (sf_id text PRIMARY KEY, first_name text, last_name text, email text,
	title text, created timestamptz);
INSERT INTO shipsync.field_map (profile, direction, target_path, source, required) VALUES
	('sf_contact', 'crm_in', 'sf_id', 'Id', true),
	('sf_contact', 'crm_in', 'first_name', 'FirstName', false),
	('sf_contact', 'crm_in', 'last_name', 'LastName', true),
	('sf_contact', 'crm_in', 'email', 'Email', false),
	('sf_contact', 'crm_in', 'title', 'Title', false),
	('sf_contact', 'crm_in', 'created', 'CreatedDate', false);
SELECT shipsync.create_crm_source('sf', 'salesforce_om', 'crm.contacts',
	'{"organization_id": "012345678901234", "sobject_type": "Contact", "profile": "sf_contact"}');
\set contacts '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>012345678901234</OrganizationId><ActionId>04k1I000000bmsHQAQ</ActionId><SessionId>00D1I000003qqqE!AQsAQ</SessionId><EnterpriseUrl>https://na73.salesforce.com/services/Soap/c/41.0/00D1I000003qqqE</EnterpriseUrl><PartnerUrl>https://na73.salesforce.com/services/Soap/u/41.0/00D1I000003qqqE</PartnerUrl><Notification><Id>04l1I000000fztEQAQ</Id><sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>0031I0000081tbPQAQ</sf:Id><sf:CreatedDate>2017-12-11T21:49:24.000Z</sf:CreatedDate><sf:FirstName>Jeraldine</sf:FirstName><sf:LastName>Black</sf:LastName><sf:Title>White</sf:Title></sObject></Notification><Notification><Id>04l1I000000fzt9QAA</Id><sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>0031I0000081tb0QAA</sf:Id><sf:CreatedDate>2017-12-11T21:44:55.000Z</sf:CreatedDate><sf:Email>drb24@cornell.edu</sf:Email><sf:FirstName>Doug</sf:FirstName><sf:LastName>Bunting &amp; Sons</sf:LastName><sf:Title xsi:nil="true"/></sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>'
SELECT r - 'reply' AS summary, r->>'reply' AS ack FROM shipsync.ingest_crm('sf', :'contacts') r;
SELECT sf_id, first_name, last_name, email, title, created AT TIME ZONE 'UTC' AS created_utc FROM crm.contacts ORDER BY sf_id;
-- a retry of the same message: every notification is a duplicate; a UTF-8 BOM is fine
SELECT r - 'reply' AS summary FROM shipsync.ingest_crm('sf', E'\uFEFF' || :'contacts') r;
-- another organization, another sObject type, not XML, not an Outbound Message
SELECT pg_temp.err(format($$SELECT shipsync.ingest_crm('sf', %L)$$, replace(:'contacts', '012345678901234', '00D000000000001')));
SELECT pg_temp.err(format($$SELECT shipsync.ingest_crm('sf', %L)$$, replace(replace(:'contacts', 'sf:Contact', 'sf:Lead'), '04l1I', '05l1I')));
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('sf', '<notxml')$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_crm('sf', '<a><b/></a>')$$);
-- a document type declaration, which Salesforce never sends: its entities
-- and default attributes are not read, and the push is a 400, not a 500
SELECT pg_temp.err(format($$SELECT shipsync.ingest_crm('sf', %L)$$,
	'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "Injected">]>' || replace(:'contacts', 'Black', '&e;')));
-- an 18-character organization id matches its 15-character form
SELECT r->>'duplicate' AS duplicates FROM shipsync.ingest_crm('sf', replace(:'contacts', '012345678901234', '012345678901234AAA')) r;
-- a dedup_ttl shorter than Salesforce's retries (24 hours) is warned of:
-- a message retried after its notification Ids are forgotten is applied
-- again, and reverts what changed since (shown by forgetting them here)
CREATE TABLE crm.contacts_short (LIKE crm.contacts INCLUDING ALL);
SELECT shipsync.create_crm_source('sf_short', 'salesforce_om', 'crm.contacts_short',
	'{"organization_id": "012345678901234", "profile": "sf_contact", "dedup_ttl": "1 hour"}') > 0 AS created;
SELECT shipsync.create_crm_source('sf_day', 'salesforce_om', 'crm.contacts_short',
	'{"organization_id": "012345678901234", "profile": "sf_contact", "dedup_ttl": "1 day"}') > 0 AS created_without_warning;
SELECT r->>'inserted' AS inserted FROM shipsync.ingest_crm('sf_short', :'contacts') r;
UPDATE crm.contacts_short SET title = 'changed since' WHERE sf_id = '0031I0000081tbPQAQ';
UPDATE shipsync.crm_delivery SET expires_at = now() - interval '1 second'
WHERE crm_source_id = (SELECT crm_source_id FROM shipsync.crm_source WHERE name = 'sf_short');
SELECT r->>'duplicate' AS duplicates, r->>'updated' AS updated FROM shipsync.ingest_crm('sf_short', :'contacts') r;
SELECT title FROM crm.contacts_short WHERE sf_id = '0031I0000081tbPQAQ';
SELECT shipsync.drop_crm_source('sf_short'), shipsync.drop_crm_source('sf_day');
DROP TABLE crm.contacts_short;

------------------------------------------------------------------------------
-- numbers as record ids: json-c reads an integer beyond 64 bits as the
-- nearest end of that range, so both of these would write order
-- 18446744073709551615; they are refused, and nothing is written
------------------------------------------------------------------------------
SELECT pg_temp.err($$SELECT pg_temp.push('zoho', 'big1', 'order.created', '{"id": 99999999999999999999, "contact": {"name": "first"}}')$$);
SELECT pg_temp.err($$SELECT pg_temp.push('zoho', 'big2', 'order.created', '{"id": 99999999999999999998, "contact": {"name": "second"}}')$$);
SELECT pg_temp.err($$SELECT pg_temp.push('zoho', 'big3', 'order.updated', '{"contact": {"name": "third"}, "id": -9223372036854775809}')$$);
SELECT crm_id, customer FROM crm.orders WHERE crm_id ~ '^-?[0-9]{19,}';
-- the ends of the range, and longer numbers with a fraction, are read as sent
SELECT pg_temp.push('zoho', 'big4', 'order.created', '{"id": 18446744073709551615, "contact": {"name": "fourth"}}')->'inserted';
SELECT pg_temp.push('zoho', 'big5', 'order.created', '{"id": -9223372036854775808, "contact": {"name": "fifth"}}')->'inserted';
SELECT pg_temp.push('zoho', 'big6', 'order.created', '{"id": 99999999999999999999.5, "contact": {"name": "sixth"}}')->'inserted';
SELECT crm_id, customer FROM crm.orders WHERE crm_id ~ '^-?[0-9]{19,}' ORDER BY crm_id;
DELETE FROM crm.orders WHERE crm_id ~ '^-?[0-9]{19,}';

------------------------------------------------------------------------------
-- versions: a push retried after a newer one (its first try answered 503)
-- does not revert the order, with option version_column
------------------------------------------------------------------------------
CREATE TABLE crm.versioned (crm_id text PRIMARY KEY, customer text, modified timestamptz, doc json);
INSERT INTO shipsync.field_map (profile, direction, target_path, source, required) VALUES
	('zv', 'crm_in', 'crm_id', 'id', true), ('zv', 'crm_in', 'customer', 'name', true),
	('zv', 'crm_in', 'modified', 'Modified_Time', false);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'generic', 'crm.versioned', '{"secret": "whsec_AAAA", "profile": "zv", "version_column": "nosuch"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'generic', 'crm.versioned', '{"secret": "whsec_AAAA", "profile": "zv", "version_column": "crm_id"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('x', 'generic', 'crm.versioned', '{"secret": "whsec_AAAA", "profile": "zv", "version_column": "doc"}')$$);
SELECT shipsync.create_crm_source('zv', 'generic', 'crm.versioned',
	'{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "version_column": "modified"}') > 0 AS created;
SELECT options FROM shipsync.crm_sources WHERE name = 'zv';
SELECT pg_temp.push('zv', 'v1', 'order.created', '{"id": "V-1", "name": "first", "Modified_Time": "2026-03-01T10:00:00+08:00"}')->'inserted' AS inserted;
SELECT pg_temp.push('zv', 'v3', 'order.updated', '{"id": "V-1", "name": "third", "Modified_Time": "2026-03-01T10:10:00+08:00"}')->'updated' AS updated;
-- the second edit's push, retried, comes after the third: older, so unchanged
SELECT pg_temp.push('zv', 'v2', 'order.updated', '{"id": "V-1", "name": "second", "Modified_Time": "2026-03-01T10:05:00+08:00"}') - 'source' - 'kind' AS summary;
SELECT crm_id, customer, modified AT TIME ZONE 'UTC' AS modified_utc FROM crm.versioned;
-- the same version is written (a correction within the same instant), and
-- so is a record without a version, which keeps the row's: the older
-- update retried once more still changes nothing
SELECT pg_temp.push('zv', 'v4', 'order.updated', '{"id": "V-1", "name": "third, fixed", "Modified_Time": "2026-03-01T02:10:00Z"}')->'updated' AS updated;
SELECT pg_temp.push('zv', 'v5', 'order.updated', '{"id": "V-1", "name": "no version"}')->'updated' AS updated;
SELECT pg_temp.push('zv', 'v2-again', 'order.updated', '{"id": "V-1", "name": "second", "Modified_Time": "2026-03-01T10:05:00+08:00"}')->'unchanged' AS unchanged;
SELECT crm_id, customer, modified AT TIME ZONE 'UTC' AS modified_utc FROM crm.versioned;
-- a profile whose crm_in rows do not write the version column cannot be read
DELETE FROM shipsync.field_map WHERE profile = 'zv' AND target_path = 'modified';
SELECT pg_temp.err($$SELECT pg_temp.push('zv', 'v6', 'order.updated', '{"id": "V-1", "name": "unmapped"}')$$);
SELECT shipsync.drop_crm_source('zv');

------------------------------------------------------------------------------
-- removes: a create or update sent before its record's remove and arriving
-- after it (a retry) does not bring the order back; a newer one does
------------------------------------------------------------------------------
INSERT INTO shipsync.field_map (profile, direction, target_path, source, required) VALUES
	('zr', 'crm_in', 'crm_id', 'id', true), ('zr', 'crm_in', 'customer', 'name', true),
	('zr', 'crm_in', 'modified', 'Modified_Time', false);
SELECT shipsync.create_crm_source('zr', 'generic', 'crm.versioned',
	'{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "version_column": "modified"}') > 0 AS created;
SELECT pg_temp.push('zr', 'r1', 'order.created', '{"id": "R-1", "name": "placed", "Modified_Time": "2026-03-01T10:00:00Z"}')->'inserted' AS inserted;
SELECT pg_temp.push('zr', 'r2', 'order.deleted', '{"id": "R-1", "name": "placed", "Modified_Time": "2026-03-01T10:05:00Z"}')->'deleted' AS deleted;
-- an edit made before the remove, its push retried after it: the order stays removed
SELECT pg_temp.push('zr', 'r3', 'order.updated', '{"id": "R-1", "name": "edited", "Modified_Time": "2026-03-01T10:03:00Z"}') - 'source' - 'kind' AS summary;
SELECT count(*) AS r1_rows FROM crm.versioned WHERE crm_id = 'R-1';
-- restored in the CRM and edited after the remove: written
SELECT pg_temp.push('zr', 'r4', 'order.updated', '{"id": "R-1", "name": "restored", "Modified_Time": "2026-03-01T11:00:00Z"}')->'inserted' AS inserted;
-- the remove of a record never seen, before its create: the create stays out
SELECT pg_temp.push('zr', 'r5', 'order.deleted', '{"id": "R-2", "name": "placed", "Modified_Time": "2026-03-01T10:05:00Z"}')->'unchanged' AS unchanged;
SELECT pg_temp.push('zr', 'r6', 'order.created', '{"id": "R-2", "name": "placed", "Modified_Time": "2026-03-01T10:00:00Z"}')->'unchanged' AS unchanged;
SELECT crm_id, customer FROM crm.versioned WHERE crm_id LIKE 'R-%' ORDER BY crm_id;
SELECT r.record_key, r.version FROM shipsync.crm_removed r JOIN shipsync.crm_source c USING (crm_source_id)
WHERE c.name = 'zr' ORDER BY 1;
SELECT shipsync.drop_crm_source('zr');
SELECT count(*) AS removed_left FROM shipsync.crm_removed r
WHERE NOT EXISTS (SELECT FROM shipsync.crm_source c WHERE c.crm_source_id = r.crm_source_id);

------------------------------------------------------------------------------
-- a value too long for an index of the table (here the key's unique one)
-- is a record the table cannot take: SS400, as a constraint it breaks
------------------------------------------------------------------------------
SELECT pg_temp.err(format($$SELECT pg_temp.push('zoho', 'long1', 'order.created', %L)$$,
	jsonb_build_object('id', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 300) i),
					   'contact', jsonb_build_object('name', 'long'))));
SELECT count(*) AS long_keys FROM crm.orders WHERE length(crm_id) > 1000;
-- nor is a delivery id longer than 2,000 bytes, which crm_delivery's index
-- cannot hold: it failed with 54000, a 500 the CRM retried forever
SELECT pg_temp.err(format($$SELECT pg_temp.push('zoho', %L, 'order.created', %L)$$,
	(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 94) i),
	jsonb_build_object('id', 'long-delivery', 'contact', jsonb_build_object('name', 'long'))));

------------------------------------------------------------------------------
-- privileges: the secret is the owner's alone
------------------------------------------------------------------------------
SET ROLE shipsync_admin;
SELECT pg_temp.err($$SELECT * FROM shipsync.secret$$);
SELECT pg_temp.err($$SELECT shipsync._secret_put('zoho', 'webhook_secret', 'whsec_AAAA')$$);
SELECT name, options FROM shipsync.crm_sources ORDER BY name;
RESET ROLE;
SET ROLE shipsync_ingest;
SELECT pg_temp.err($$SELECT * FROM shipsync.crm_sources$$);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('y', 'jiandaoyun', 'crm.orders'::text::regclass, '{"secret": "s"}')$$);
RESET ROLE;

------------------------------------------------------------------------------
-- a captured generic push replayed after dedup_ttl
------------------------------------------------------------------------------
-- A signed push is taken for 5 minutes either side of its timestamp: its
-- webhook-id is remembered at least that long, whatever dedup_ttl.  With
-- dedup_ttl 1 minute, a push captured and replayed after that minute (the
-- expiry aged here, as if it had passed) was taken again: an old update
-- written over a newer one.
SELECT shipsync.create_crm_source('zshort', 'generic', 'crm.orders',
	'{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "key_column": "crm_id", "profile": "zoho", "dedup_ttl": "1 minute"}') > 0 AS created;
SELECT pg_temp.push('zshort', 'evt_r1', 'order.updated', '{"id": "Z-9", "contact": {"name": "old name"}}') ->> 'inserted' AS inserted;
SELECT pg_temp.push('zshort', 'evt_r2', 'order.updated', '{"id": "Z-9", "contact": {"name": "new name"}}') ->> 'updated' AS updated;
UPDATE shipsync.crm_delivery d SET expires_at = expires_at - interval '1 minute'
FROM shipsync.crm_source s WHERE s.crm_source_id = d.crm_source_id AND s.name = 'zshort';
SELECT pg_temp.push('zshort', 'evt_r1', 'order.updated', '{"id": "Z-9", "contact": {"name": "old name"}}') ->> 'duplicate' AS replay_duplicate;
SELECT customer FROM crm.orders WHERE crm_id = 'Z-9';

------------------------------------------------------------------------------
-- columns whose names are no bare path names, as crm_in targets
------------------------------------------------------------------------------
-- A column named "Customer Name" (or "select", "Ver.Ts", a quote) is written
-- in double quotes, as every field map path writes such a name
-- (docs/mapping.md).  Unquoted, a space is refused by the map's own check;
-- quoted, create_crm_source() said the table had no column ""Customer
-- Name"" (the quotes taken for part of the name), and a quoted row added
-- after the source made every push fail on the quoted name.
CREATE TABLE crm."Odd Orders" ("CRM Id" text PRIMARY KEY, "Customer Name" text, "full""name" text,
	"select" text, "Ver.Ts" timestamptz);
INSERT INTO shipsync.field_map (profile, direction, position, target_path, source, transform, required) VALUES
	('odd', 'crm_in', 1, '"CRM Id"', 'id', 'identity', true),
	('odd', 'crm_in', 2, '"Customer Name"', 'name', 'trim', true),
	('odd', 'crm_in', 3, 'select', 'pick', 'identity', false),
	('odd', 'crm_in', 4, 'Ver.Ts', 'mod', 'identity', false);
SELECT shipsync.create_crm_source('odd', 'generic', 'crm."Odd Orders"',
	'{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "key_column": "CRM Id", "version_column": "Ver.Ts"}') > 0 AS created;
-- a quoted row added after the source: read at the next push
INSERT INTO shipsync.field_map (profile, direction, position, target_path, source, transform, required) VALUES
	('odd', 'crm_in', 5, '"full""name"', 'full', 'identity', false);
SELECT pg_temp.push('odd', 'evt_o1', 'order.created', '{"id": "O-1", "name": " Ann Lee ", "pick": "a", "full": "Ann \"A\" Lee", "mod": "2026-01-02T00:00:00Z"}') ->> 'inserted' AS inserted;
SELECT pg_temp.push('odd', 'evt_o2', 'order.updated', '{"id": "O-1", "name": "Ann Older", "mod": "2026-01-01T00:00:00Z"}') ->> 'unchanged' AS older_unchanged;
SELECT pg_temp.push('odd', 'evt_o3', 'order.updated', '{"id": "O-1", "name": "Ann Newer", "full": "x", "mod": "2026-01-03T00:00:00Z"}') ->> 'updated' AS newer_updated;
SELECT "CRM Id", "Customer Name", "full""name", "select", "Ver.Ts" AT TIME ZONE 'UTC' AS ver_utc FROM crm."Odd Orders";
-- a quoted name of a column the table lacks is named unquoted
INSERT INTO shipsync.field_map (profile, direction, position, target_path, source, transform, required) VALUES
	('odd2', 'crm_in', 1, '"CRM Id"', 'id', 'identity', true),
	('odd2', 'crm_in', 2, '"Customer  Name"', 'name', 'identity', false);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('odd2', 'generic', 'crm."Odd Orders"', '{"secret": "whsec_AAAA", "key_column": "CRM Id"}')$$);
-- one column named twice, quoted and not
INSERT INTO shipsync.field_map (profile, direction, position, target_path, source, transform, required) VALUES
	('odd3', 'crm_in', 1, '"CRM Id"', 'id', 'identity', true),
	('odd3', 'crm_in', 2, 'select', 'a', 'identity', false),
	('odd3', 'crm_in', 3, '"select"', 'b', 'identity', false);
SELECT pg_temp.err($$SELECT shipsync.create_crm_source('odd3', 'generic', 'crm."Odd Orders"', '{"secret": "whsec_AAAA", "key_column": "CRM Id"}')$$);

DROP EXTENSION pg_shipsync CASCADE;
DROP SCHEMA crm CASCADE;
