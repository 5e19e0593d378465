-- Everything audited: shipsync.audit_log, written by the triggers of the
-- configuration tables and by every function that changes state; the
-- "who" columns set by the server, never by the caller.
-- a fresh extension, whatever the tests before left
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_shipsync CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_shipsync;

-- what CREATE EXTENSION seeded is not audited
SELECT count(*) AS rows_after_create FROM shipsync.audit_log;
SHOW shipsync.audit_retention;

CREATE ROLE shipsync_test_boss LOGIN IN ROLE shipsync_admin;
CREATE ROLE shipsync_test_ops LOGIN IN ROLE shipsync_operator;
CREATE ROLE shipsync_test_bi LOGIN IN ROLE shipsync_reader;
CREATE ROLE shipsync_test_root LOGIN SUPERUSER;
CREATE SCHEMA shop AUTHORIZATION shipsync_test_boss;

-- the audit rows after a mark: times, generated SQL and key ids shown as
-- such, the extension's owner (who runs this test) as <owner>
CREATE FUNCTION pg_temp.steady(j jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_object_agg(key, CASE
		WHEN key LIKE '%\_at' AND value <> 'null' THEN '"<time>"'
		WHEN key IN ('render_sql', 'writeback_sql') AND value <> 'null' THEN '"<sql>"'
		WHEN key = 'key_id' THEN '"<key>"'
		WHEN key LIKE '%\_by' AND value #>> '{}' = (SELECT rolname FROM pg_roles WHERE oid = 10)
			THEN '"<owner>"'
		ELSE value END)
	FROM jsonb_each(j)
$$;
CREATE FUNCTION pg_temp.audit(since bigint)
RETURNS TABLE (action text, kind text, name text, who text, old_value jsonb, new_value jsonb)
LANGUAGE sql AS $$
	SELECT a.action, a.object_kind, a.object_name,
		   replace(a."session_user" || CASE WHEN a."current_user" <> a."session_user"
										   THEN ' as ' || a."current_user" ELSE '' END,
				   (SELECT rolname FROM pg_roles WHERE oid = 10), '<owner>'),
		   pg_temp.steady(a.old_value), pg_temp.steady(a.new_value)
	FROM shipsync.audit_log a WHERE a.audit_id > since ORDER BY a.audit_id
$$;
SELECT 0 AS mark \gset

-- an admin creates a provider (its secrets shown as "(set)"), attaches a
-- table, copies a profile, and edits field maps and status maps
SET SESSION AUTHORIZATION shipsync_test_boss;
SELECT shipsync.create_provider('gen', 'generic', 'https://api.example', '{
	"auth": {"type": "bearer", "token": "tok-1"}, "headers": {"X-Tenant": "shop-1"},
	"webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "timeout_ms": 5000}');
CREATE TABLE shop.orders (id int PRIMARY KEY, customer text, waybill text);
SELECT shipsync.attach('shop.orders', 'gen', writeback => '{"tracking_number": "waybill"}');
SELECT shipsync.copy_profile('sf_express', 'sf_shop');
INSERT INTO shipsync.field_map (profile, direction, target_path, source, updated_by)
VALUES ('acme', 'out', 'ref', 'meta:order_key', 'mallory');
UPDATE shipsync.field_map SET source = 'customer', pii = 'name', updated_by = 'mallory'
WHERE profile = 'acme';
DELETE FROM shipsync.field_map WHERE profile = 'acme';
INSERT INTO shipsync.status_map (profile, raw_status, status) VALUES ('generic', 'LOST', 'exception');
UPDATE shipsync.status_map SET status = 'returning' WHERE profile = 'generic' AND raw_status = 'LOST';
DELETE FROM shipsync.status_map WHERE profile = 'generic' AND raw_status = 'LOST';
-- and a CRM source, its secret "(set)", dropped again
CREATE TABLE shop.crm_orders (id serial PRIMARY KEY, crm_id text UNIQUE, customer text);
INSERT INTO shipsync.field_map (profile, direction, position, target_path, source, required)
VALUES ('zoho', 'crm_in', 1, 'crm_id', 'id', true);
SELECT shipsync.create_crm_source('zoho', 'generic', 'shop.crm_orders',
	'{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "key_column": "crm_id"}') > 0 AS created;
SELECT shipsync.drop_crm_source('zoho');
RESET SESSION AUTHORIZATION;
SELECT * FROM pg_temp.audit(:mark) WHERE action <> 'copy_profile';
SELECT action, kind, count(*) FROM pg_temp.audit(:mark) WHERE action = 'copy_profile' GROUP BY 1, 2;
-- field maps are stamped by the server, whatever the caller wrote
SELECT DISTINCT updated_by FROM shipsync.field_map WHERE profile = 'sf_shop';
SELECT max(audit_id) AS mark FROM shipsync.audit_log \gset

-- an operator pauses, resumes, retries, requeues, acknowledges, resolves
INSERT INTO shop.orders VALUES (1, 'a'), (2, 'b');
SELECT count(*) AS claimed FROM shipsync.claim(1, 10, 60000);
UPDATE shipsync.outbox SET state = 'dead', attempts = 3, last_error = 'HTTP 400';
INSERT INTO shipsync.exception_ticket (kind, binding_id, order_key, provider_id, outbox_id, detail)
SELECT 'dead_intent', binding_id, order_key, provider_id, id, 'HTTP 400' FROM shipsync.outbox ORDER BY id;
INSERT INTO shipsync.exception_ticket (kind, provider_id, detail) VALUES ('unmatched_expired', 1, 'lost');
SELECT min(id) AS first, max(id) AS second FROM shipsync.outbox \gset
SELECT max(ticket_id) AS ticket FROM shipsync.exception_ticket \gset
SET SESSION AUTHORIZATION shipsync_test_ops;
SELECT shipsync.pause('gen');
SELECT shipsync.resume('gen');
SELECT shipsync.retry(:first);
SELECT shipsync.requeue('gen');
SELECT shipsync.ack(:ticket);
SELECT shipsync.ack(:ticket) AS again;
SELECT shipsync.resolve(:ticket, 'the carrier found it');
SELECT shipsync.resolve(:ticket) AS again;
SELECT shipsync.ack(424242);
-- tickets are no longer changed by UPDATE
UPDATE shipsync.exception_ticket SET acknowledged_by = 'mallory';
RESET SESSION AUTHORIZATION;
SELECT * FROM pg_temp.audit(:mark);
SELECT kind, order_key, acknowledged_at IS NOT NULL AS acknowledged, acknowledged_by,
	   resolved_at IS NOT NULL AS resolved, resolved_by, resolution
FROM shipsync.exception_ticket ORDER BY ticket_id;
SELECT max(audit_id) AS mark FROM shipsync.audit_log \gset

-- an operator feeds a tracking push by hand (a waybill of the carrier's
-- portal) and expires parked events: both change shipments and tickets,
-- both audited, who and what they did (never the push's body)
\set tp '{"events": [{"id": "e1", "tracking_number": "TX1", "status": "delivered", "occurred_at": "2026-03-01T10:00:00Z"}]}'
SELECT jsonb_build_object('Webhook-Id', 'msg_1', 'Webhook-Timestamp', ts::text,
	'Webhook-Signature', 'v1,' || encode(shipsync._hmac_sha256(decode('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'base64'),
		convert_to('msg_1.' || ts || '.' || :'tp', 'UTF8')), 'base64')) AS th
FROM (SELECT extract(epoch FROM now())::bigint AS ts) x \gset
SET SESSION AUTHORIZATION shipsync_test_ops;
SELECT shipsync.ingest_tracking('gen', :'tp', :'th') ->> 'unmatched' AS unmatched;
RESET SESSION AUTHORIZATION;
UPDATE shipsync.unmatched_event SET expires_at = now() - interval '1 minute' WHERE tracking_number = 'TX1';
SET SESSION AUTHORIZATION shipsync_test_ops;
SELECT shipsync.expire_unmatched() AS expired;
RESET SESSION AUTHORIZATION;
SELECT * FROM pg_temp.audit(:mark);
SELECT max(audit_id) AS mark FROM shipsync.audit_log \gset

-- a credential replaced by an admin: its ciphertext "(changed)"; the
-- owner's own changes: audited, stamped by the server, only what changed
SET SESSION AUTHORIZATION shipsync_test_boss;
SELECT shipsync.set_secret('gen', 'token', 'tok-2');
RESET SESSION AUTHORIZATION;
UPDATE shipsync.provider SET timeout_ms = 2000, created_by = 'mallory', updated_by = 'mallory'
WHERE name = 'gen';
SELECT created_by AS created_by_kept, updated_by = session_user AS updated_by_stamped
FROM shipsync.provider WHERE name = 'gen';
UPDATE shipsync.exception_ticket SET acknowledged_at = now(), acknowledged_by = 'mallory'
WHERE ticket_id = 1;
SELECT acknowledged_by = session_user AS acknowledged_by_stamped
FROM shipsync.exception_ticket WHERE ticket_id = 1;
SELECT * FROM pg_temp.audit(:mark);
SELECT max(audit_id) AS mark FROM shipsync.audit_log \gset

-- who: the session user, and the role it acts as
SET ROLE shipsync_test_ops;
SELECT shipsync.pause('gen');
RESET ROLE;
SELECT action, "session_user" = session_user AS session_user_recorded, "current_user"
FROM shipsync.audit_log WHERE audit_id > :mark;
SELECT max(audit_id) AS mark FROM shipsync.audit_log \gset

-- an operator imports a statement, then its correction, which revises
-- what an order costs: each audited with what it did; the same body again
-- changes nothing and is not
SET SESSION AUTHORIZATION shipsync_test_ops;
SELECT shipsync.import_statement('gen', E'Waybill;Fee;Cost;Cur\nT1;freight;12.50;CNY\n',
	options => '{"delimiter": ";", "period": "2026-03", "account": "A-1", "columns": {"tracking_number": "Waybill", "type": "Fee", "amount": "Cost", "currency": "Cur"}}')
	->> 'statement_id' AS statement;
SELECT shipsync.import_statement('gen', E'Waybill;Fee;Cost;Cur\nT1;freight;99.00;CNY\n',
	options => '{"delimiter": ";", "period": "2026-03", "account": "A-1", "columns": {"tracking_number": "Waybill", "type": "Fee", "amount": "Cost", "currency": "Cur"}}')
	->> 'supersedes' AS supersedes;
SELECT shipsync.import_statement('gen', E'Waybill;Fee;Cost;Cur\nT1;freight;99.00;CNY\n',
	options => '{"delimiter": ";", "period": "2026-03", "account": "A-1", "columns": {"tracking_number": "Waybill", "type": "Fee", "amount": "Cost", "currency": "Cur"}}')
	->> 'statement_id' AS again;
RESET SESSION AUTHORIZATION;
SELECT * FROM pg_temp.audit(:mark);
SELECT max(audit_id) AS mark FROM shipsync.audit_log \gset

-- A table owner's code that the extension runs as the owner (here a
-- trigger of the table a CRM push writes into, the push taken in a
-- superuser's session) makes the owner's changes: audited as the owner's,
-- even when that code turns check_function_bodies off, which made the
-- session pass for a restore's
SET SESSION AUTHORIZATION shipsync_test_boss;
CREATE FUNCTION shop.note_push() RETURNS trigger LANGUAGE plpgsql
SET check_function_bodies = off AS $$
BEGIN
	INSERT INTO shipsync.status_map (profile, raw_status, status)
	VALUES ('generic', 'PUSHED_' || NEW.crm_id, 'delivered');
	RETURN NEW;
END $$;
CREATE TRIGGER note_push BEFORE INSERT ON shop.crm_orders
	FOR EACH ROW EXECUTE FUNCTION shop.note_push();
SELECT shipsync.create_crm_source('zoho', 'generic', 'shop.crm_orders',
	'{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "key_column": "crm_id"}') > 0 AS created;
RESET SESSION AUTHORIZATION;
SELECT max(audit_id) AS mark FROM shipsync.audit_log \gset
SELECT shipsync.ingest_crm('zoho', b, jsonb_build_object('Webhook-Id', 'msg_1',
		'Webhook-Timestamp', ts::text, 'Webhook-Signature', 'v1,' || encode(shipsync._hmac_sha256(
			decode('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'base64'),
			convert_to('msg_1.' || ts || '.' || b, 'UTF8')), 'base64'))) ->> 'inserted' AS inserted
FROM (SELECT '{"type": "order.created", "data": {"id": "c1"}}'::text AS b,
			 extract(epoch FROM now())::bigint AS ts) x;
SELECT action, kind, name, who FROM pg_temp.audit(:mark);
SELECT shipsync.drop_crm_source('zoho');
DELETE FROM shipsync.status_map WHERE raw_status = 'PUSHED_c1';
SELECT max(audit_id) AS mark FROM shipsync.audit_log \gset

-- detached, attached again, and dropped by its owner, who has no right on
-- the extension's tables: its binding made inactive, audited
SET SESSION AUTHORIZATION shipsync_test_boss;
SELECT shipsync.detach('shop.orders');
SELECT shipsync.attach('shop.orders', 'gen');
INSERT INTO shop.orders VALUES (3, 'c');
DROP TABLE shop.orders;
RESET SESSION AUTHORIZATION;
SELECT order_key, state, error_class FROM shipsync.outbox WHERE order_key = '3';
SELECT action, kind, who, old_value, new_value FROM pg_temp.audit(:mark);

-- nobody but the owner writes the log
SET SESSION AUTHORIZATION shipsync_test_ops;
SELECT count(*) > 0 AS operators_read_it FROM shipsync.audit_log;
UPDATE shipsync.audit_log SET action = 'nothing';
DELETE FROM shipsync.audit_log;
INSERT INTO shipsync.audit_log ("session_user", "current_user", action, object_kind)
VALUES ('x', 'x', 'forged', 'provider');
TRUNCATE shipsync.audit_log;
SELECT shipsync._audit('pause', 'provider', 'gen', NULL, NULL);
SET shipsync.audit_action = 'resume';
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION shipsync_test_bi;
SELECT count(*) FROM shipsync.audit_log;
RESET SESSION AUTHORIZATION;
-- not even another superuser
SET SESSION AUTHORIZATION shipsync_test_root;
DELETE FROM shipsync.audit_log;
UPDATE shipsync.audit_log SET action = 'nothing';
TRUNCATE shipsync.audit_log;
RESET SESSION AUTHORIZATION;
-- the audit trigger refuses any other table
CREATE TABLE decoy (name text);
CREATE TRIGGER forged AFTER INSERT ON decoy FOR EACH ROW
	EXECUTE FUNCTION shipsync._audit_row('provider', 'name', '{}');
INSERT INTO decoy VALUES ('gen');
DROP TABLE decoy;

-- the dispatcher's pruning: rows older than the retention go
INSERT INTO shipsync.audit_log (at, "session_user", "current_user", action, object_kind)
VALUES (now() - interval '401 days', 'x', 'x', 'ancient', 'test'),
	   (now() - interval '399 days', 'x', 'x', 'old', 'test');
SELECT shipsync._prune_audit('400 days') AS pruned;
SELECT action FROM shipsync.audit_log WHERE object_kind = 'test';
-- ... 10,000 at a time, the oldest first (one DELETE of a long log held the
-- dispatcher's loop: 2 million rows took 20 s)
INSERT INTO shipsync.audit_log (at, "session_user", "current_user", action, object_kind)
SELECT now() - interval '500 days' + make_interval(secs => g), 'x', 'x', 'ancient ' || g, 'test'
FROM generate_series(1, 10005) g;
SELECT shipsync._prune_audit('400 days') AS pruned;
SELECT min(action) AS left_first FROM shipsync.audit_log WHERE object_kind = 'test';
SELECT shipsync._prune_audit('400 days') AS pruned;
SELECT shipsync._prune_audit('400 days') AS pruned;

DROP EXTENSION pg_shipsync CASCADE;
DROP SCHEMA shop CASCADE;
DROP ROLE shipsync_test_boss;
DROP ROLE shipsync_test_ops;
DROP ROLE shipsync_test_bi;
DROP ROLE shipsync_test_root;
