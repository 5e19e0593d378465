-- Reconciliation on hand-made data: each kind of discrepancy, the ledger's
-- lifecycle (one ticket per problem, closing, reopening), bulk repair, and
-- the errors of every function.  No dispatcher runs here: the pulls are
-- played by calling what the dispatcher calls (_reconcile_start,
-- _reconcile_page), and the comparison by what its worker calls.
-- A database of its own, so that no other suite's tables are compared.
CREATE DATABASE reconcile_regress;
\c reconcile_regress
SET client_min_messages = warning;
CREATE EXTENSION pg_shipsync;
RESET client_min_messages;

-- a CRM-side pass; with hourly, one that looks at stuck shipments and fees
-- (at most hourly: as if the last look were long ago)
CREATE FUNCTION pg_temp.crm_pass(hourly boolean) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	run bigint;
BEGIN
	IF hourly THEN
		UPDATE shipsync.reconcile_state SET stuck_at = NULL;
	END IF;
	INSERT INTO shipsync.reconcile_run (kind, trigger, window_start, state)
	VALUES ('crm', 'manual', now(), 'comparing') RETURNING run_id INTO run;
	PERFORM shipsync._reconcile_compare(run);
	RETURN run;
END
$$;

SELECT shipsync.create_provider('rc', 'generic', 'http://127.0.0.1:9') AS rc \gset
SELECT shipsync.create_provider('rc2', 'generic', 'http://127.0.0.1:9') AS rc2 \gset

-- orders: 1..9 attached, 0 inserted before attach, 90 with the capture
-- trigger disabled
CREATE TABLE orders (id bigint PRIMARY KEY, customer text, address text,
	created timestamptz NOT NULL DEFAULT now() - interval '1 hour',
	waybill_no text, ship_status text);
INSERT INTO orders (id, customer, address) VALUES (0, 'before attach', '0 Old Road');
SELECT shipsync.attach('orders', 'rc',
	writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}',
	options => '{"grace": "10 minutes", "created_at_column": "created"}') AS bid \gset
INSERT INTO orders (id, customer, address) SELECT g, 'customer ' || g, g || ' Main Street'
FROM generate_series(1, 9) g;
SET session_replication_role = replica;
INSERT INTO orders (id, customer, address) VALUES (90, 'triggers off', '90 Quiet Lane');
RESET session_replication_role;
-- a young order: within its grace
INSERT INTO orders (id, customer, address, created) VALUES (91, 'young', '91 New Road', now());

-- what the dispatcher would have done: 1..8 have shipments, written back
-- (content digests as the render statement computes them)
SELECT count(*) AS captured FROM shipsync.inbox;
INSERT INTO shipsync.outbox (id, binding_id, provider_id, order_key, op, idempotency_key, created_at, state, done_at)
SELECT id, binding_id, provider_id, order_key, op, idempotency_key, created_at, 'done', now()
FROM shipsync.inbox;
DELETE FROM shipsync.inbox;
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, provider_shipment_id,
	tracking_number, status, content_digest, created_at, updated_at)
SELECT :bid, o.id::text, :rc, 'shp_' || o.id, 'TN' || o.id, 'pre_transit',
	   shipsync._row_digest(o, '{ship_status,waybill_no}'), now() - interval '1 hour', now() - interval '1 hour'
FROM orders o WHERE o.id BETWEEN 1 AND 8;
SET session_replication_role = replica;	-- as the dispatcher writes back: no echo
UPDATE orders SET waybill_no = 'TN' || id, ship_status = 'pre_transit' WHERE id BETWEEN 1 AND 8;
RESET session_replication_role;
-- 9's create died
UPDATE shipsync.outbox SET state = 'dead', error_class = 'http_4xx', last_error = 'HTTP 422: refused'
WHERE order_key = '9';

-- the render statement reads the row, for the same digest
SELECT render_sql LIKE '%t.*::public.orders AS shipsync_row, ''{ship_status,waybill_no}''::pg_catalog.text[] AS shipsync_skip%' AS renders_row
FROM shipsync.binding WHERE binding_id = :bid;
-- a money column is digested as its amount (the integer of cents it holds),
-- as a bigint of that amount is, never as it prints: lc_monetary (ALTER
-- DATABASE ... SET lc_monetary, a session's SET) changes no order
SELECT shipsync._row_digest(m, '{}') = shipsync._row_digest(b, '{}') AS money_as_its_amount
FROM (SELECT 1234.56::money AS amount) m, (SELECT 123456::bigint AS amount) b;
-- a value of a type without a hash function (a point, a row type holding
-- json) is digested as the dispatcher prints it, whatever the session's
-- extra_float_digits, DateStyle, TimeZone: the reconcile worker digests the
-- row with the database's (ALTER DATABASE ... SET extra_float_digits = 0),
-- and every order with a point was address_changed_after_send
CREATE TYPE digest_meta AS (j json, at timestamptz);
SELECT shipsync._row_digest(p, '{}') AS point_digest, shipsync._row_digest(m, '{}') AS meta_digest
FROM (SELECT point(0.1::float8 + 0.2::float8, 1) AS loc) p,
	 (SELECT ROW('{"a": 1}', '2026-12-07 10:00:00+00')::digest_meta AS meta) m \gset
SET extra_float_digits = 0;
SET DateStyle = 'SQL, DMY';
SET TimeZone = 'Asia/Tokyo';
SELECT shipsync._row_digest(p, '{}') = :point_digest AS point_as_sent,
	   shipsync._row_digest(m, '{}') = :meta_digest AS row_as_sent,
	   current_setting('extra_float_digits') AS own_digits
FROM (SELECT point(0.1::float8 + 0.2::float8, 1) AS loc) p,
	 (SELECT ROW('{"a": 1}', '2026-12-07 10:00:00+00')::digest_meta AS meta) m;
RESET extra_float_digits;
RESET DateStyle;
RESET TimeZone;
DROP TYPE digest_meta;

-- planted on the CRM side: 2's written-back tracking number is wrong, 3's
-- status column too, 4's address changed after sending (triggers off: no
-- update intent), 5's changed with an update on its way
SET session_replication_role = replica;
UPDATE orders SET waybill_no = 'WRONG-2' WHERE id = 2;
UPDATE orders SET ship_status = 'delivered' WHERE id = 3;
UPDATE orders SET address = '4 Moved Avenue' WHERE id = 4;
RESET session_replication_role;
UPDATE orders SET address = '5 Moved Avenue' WHERE id = 5;
SELECT op, order_key FROM shipsync.inbox;

-- the carrier's side, as its list would say: 6 is missing, 7 has another
-- tracking number, 8 is delivered there; an orphan, and two shipments for 1
SELECT shipsync.reconcile('rc', now() - interval '2 days') AS run \gset
SELECT provider_id = :rc AS rc, mode, since < until AS window FROM shipsync._reconcile_start(:run);
SELECT state, kind, trigger, pulls->(:rc)::text->>'mode' AS mode FROM shipsync.reconcile_run WHERE run_id = :run;
SELECT shipsync._reconcile_page(:run, :rc, 1,
	ARRAY['shp_1', 'shp_1b', 'shp_2', 'shp_3', 'shp_4', 'shp_5'],
	ARRAY['1', '1', '2', '3', '4', '5'],
	ARRAY['TN1', 'TN1B', 'TN2', 'TN3', 'TN4', 'TN5'],
	ARRAY['pre_transit', 'pre_transit', 'pre_transit', 'pre_transit', 'pre_transit', 'pre_transit'],
	ARRAY[now()::text, now()::text, now()::text, now()::text, now()::text, now()::text],
	ARRAY['[{"type": "freight", "amount": "12.50"}]', NULL, NULL, NULL, NULL, NULL],
	false);
SELECT shipsync._reconcile_page(:run, :rc, 1,
	ARRAY['shp_7', 'shp_8', 'ghost_1'],
	ARRAY['7', '8', 'NO-SUCH-ORDER'],
	ARRAY['OTHER-7', 'TN8', 'GHOST1'],
	ARRAY['pre_transit', 'Delivered', 'in_transit'],
	ARRAY[now()::text, now()::text, now()::text],
	ARRAY[NULL, NULL, NULL]::text[],
	true);
SELECT state, pages, shipments_seen, pulls->(:rc)::text->>'state' AS pull FROM shipsync.reconcile_run WHERE run_id = :run;
SELECT shipment_id, canonical, canonical_rank, fees IS NOT NULL AS fees
FROM shipsync.carrier_snapshot WHERE run_id = :run ORDER BY 1;

-- the statuses the carrier is ahead with, as pulled tracking to apply
SELECT provider, body::jsonb->'events'->0->>'id' AS id,
	   body::jsonb->'events'->0->>'tracking_number' AS tn,
	   body::jsonb->'events'->0->>'status' AS status
FROM shipsync._reconcile_prepare(:run);
-- (not applied here: 8 stays a status_mismatch)
SELECT shipsync._reconcile_compare(:run);
SELECT state, opened, closed, reopened, error FROM shipsync.reconcile_run WHERE run_id = :run;
SELECT kind, provider, "table", order_key, tracking_number, detail - 'since' - 'updated_at' AS detail
FROM shipsync.reconciliation ORDER BY kind, order_key, detail->>'shipment_id';
SELECT count(*) AS snapshot_rows FROM shipsync.carrier_snapshot;

-- a second run seeing the same: no new ticket, nothing closed
SELECT shipsync.reconcile('rc') AS run2 \gset
SELECT count(*) FROM shipsync._reconcile_start(:run2);
SELECT shipsync._reconcile_page(:run2, :rc, 1,
	ARRAY['shp_1', 'shp_1b', 'shp_2', 'shp_3', 'shp_4', 'shp_5', 'shp_7', 'shp_8', 'ghost_1'],
	ARRAY['1', '1', '2', '3', '4', '5', '7', '8', 'NO-SUCH-ORDER'],
	ARRAY['TN1', 'TN1B', 'TN2', 'TN3', 'TN4', 'TN5', 'OTHER-7', 'TN8', 'GHOST1'],
	ARRAY['pre_transit', 'pre_transit', 'pre_transit', 'pre_transit', 'pre_transit', 'pre_transit', 'pre_transit', 'Delivered', 'in_transit'],
	NULL, NULL, true);
SELECT shipsync._reconcile_compare(:run2);
SELECT state, opened, closed, reopened FROM shipsync.reconcile_run WHERE run_id = :run2;
SELECT count(*) AS open_tickets, count(DISTINCT (kind, order_key)) AS problems
FROM shipsync.exception_ticket WHERE resolved_at IS NULL AND binding_id IS NOT DISTINCT FROM :bid;
-- the first run's snapshot is gone
SELECT DISTINCT run_id = :run2 AS latest FROM shipsync.carrier_snapshot;

-- the ledger's history: one opening each, by the session user here
SELECT event, count(*) FROM shipsync.ticket_event GROUP BY 1 ORDER BY 1;

------------------------------------------------------------------------------
-- Repairs, and the tickets that close themselves
------------------------------------------------------------------------------

-- the CRM side fixed by hand: 2's and 3's columns written back again
SET session_replication_role = replica;
UPDATE orders SET waybill_no = 'TN2' WHERE id = 2;
UPDATE orders SET ship_status = 'pre_transit' WHERE id = 3;
RESET session_replication_role;

-- resync: the not_sent orders get creates, 6 (missing) a create too, 4 an update
SELECT shipsync.resync('orders', kind => 'not_sent') AS not_sent;
SELECT shipsync.resync('orders', ARRAY['6', '4', '5', '404']) AS by_key;
SELECT order_key, op, state FROM shipsync.outbox
WHERE state = 'pending' ORDER BY order_key::int, id;
SELECT shipsync.resync('orders', kind => 'not_sent') AS again;
-- each call audited, as every state-changing call is
SELECT action, object_kind, object_name, old_value - 'since' AS old_value,
	   old_value ? 'since' AS since, new_value FROM shipsync.audit_log
WHERE action IN ('reconcile', 'resync') ORDER BY audit_id;

-- delivered: the dispatcher would apply them
UPDATE shipsync.outbox SET state = 'done', done_at = now() WHERE state = 'pending';
INSERT INTO shipsync.outbox (binding_id, provider_id, order_key, op, state, done_at)
SELECT binding_id, provider_id, order_key, 'update', 'done', now() FROM shipsync.inbox;
DELETE FROM shipsync.inbox;
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, provider_shipment_id,
	tracking_number, status, content_digest)
SELECT :bid, o.id::text, :rc, 'shp_' || o.id || 'n', 'TN' || o.id || 'N', 'pre_transit',
	   shipsync._row_digest(o, '{ship_status,waybill_no}')
FROM orders o WHERE o.id IN (0, 9, 90)
ON CONFLICT DO NOTHING;
UPDATE shipsync.shipment s SET provider_shipment_id = 'shp_6n', tracking_number = 'TN6N', updated_at = now(),
	content_digest = shipsync._row_digest(o, '{ship_status,waybill_no}')
FROM orders o WHERE s.order_key = '6' AND o.id = 6;
UPDATE shipsync.shipment s SET content_digest = shipsync._row_digest(o, '{ship_status,waybill_no}'), updated_at = now()
FROM orders o WHERE s.order_key IN ('4', '5') AND o.id::text = s.order_key;
SET session_replication_role = replica;
UPDATE orders o SET waybill_no = s.tracking_number, ship_status = s.status
FROM shipsync.shipment s WHERE s.order_key = o.id::text AND o.id IN (0, 6, 9, 90);
RESET session_replication_role;

-- the next run closes what it no longer sees
SELECT shipsync.reconcile('rc') AS run3 \gset
SELECT count(*) FROM shipsync._reconcile_start(:run3);
SELECT shipsync._reconcile_page(:run3, :rc, 1,
	ARRAY['shp_1', 'shp_1b', 'shp_2', 'shp_3', 'shp_4', 'shp_5', 'shp_6n', 'shp_7', 'shp_8', 'ghost_1', 'shp_0n', 'shp_9n', 'shp_90n'],
	ARRAY['1', '1', '2', '3', '4', '5', '6', '7', '8', 'NO-SUCH-ORDER', '0', '9', '90'],
	ARRAY['TN1', 'TN1B', 'TN2', 'TN3', 'TN4', 'TN5', 'TN6N', 'OTHER-7', 'TN8', 'GHOST1', 'TN0N', 'TN9N', 'TN90N'],
	ARRAY['pre_transit', 'cancelled', 'pre_transit', 'pre_transit', 'pre_transit', 'pre_transit', 'pre_transit', 'pre_transit', 'Delivered', 'cancelled', 'pre_transit', 'pre_transit', 'pre_transit'],
	NULL, NULL, true);
SELECT shipsync._reconcile_compare(:run3);
SELECT state, opened, closed, reopened FROM shipsync.reconcile_run WHERE run_id = :run3;
SELECT kind, order_key FROM shipsync.reconciliation ORDER BY kind, order_key;
-- resolved by whoever compares (the worker: reconcile), with why
SELECT kind, order_key, resolved_by = session_user AS by_the_comparer,
	   resolution = format('no longer seen (reconciliation run %s)', :run3) AS why
FROM shipsync.exception_ticket
WHERE resolved_at IS NOT NULL ORDER BY kind, order_key;

-- seen again after its resolution: reopened, and counted
SET session_replication_role = replica;
UPDATE orders SET waybill_no = 'WRONG-AGAIN' WHERE id = 2;
RESET session_replication_role;
SELECT pg_temp.crm_pass(false) AS crm1 \gset
SELECT state, opened, closed, reopened FROM shipsync.reconcile_run WHERE run_id = :crm1;
SELECT kind, order_key, reopen_count, reopened_at IS NOT NULL AS reopened
FROM shipsync.exception_ticket WHERE kind = 'tracking_mismatch' AND order_key = '2';
SELECT event FROM shipsync.ticket_event e JOIN shipsync.exception_ticket t USING (ticket_id)
WHERE t.kind = 'tracking_mismatch' AND t.order_key = '2' ORDER BY e.at, e.event;

-- an incremental CRM pass reads what changed since the last one
SELECT horizon IS NOT NULL AS horizon, full_at IS NOT NULL AS full_pass FROM shipsync.reconcile_state WHERE binding_id = :bid;
SET session_replication_role = replica;
UPDATE orders SET waybill_no = 'TN2' WHERE id = 2;
UPDATE orders SET ship_status = 'returned' WHERE id = 7;
RESET session_replication_role;
SELECT pg_temp.crm_pass(false) AS crm2 \gset
SELECT state, opened, closed, reopened FROM shipsync.reconcile_run WHERE run_id = :crm2;
SELECT kind, order_key, detail->>'check' AS chk FROM shipsync.reconciliation
WHERE kind IN ('tracking_mismatch', 'status_mismatch') ORDER BY kind, order_key;

------------------------------------------------------------------------------
-- stuck, by status threshold
------------------------------------------------------------------------------
UPDATE shipsync.shipment SET status = 'in_transit', updated_at = now() - interval '6 days',
	created_at = now() - interval '7 days' WHERE order_key = '1';
UPDATE shipsync.shipment SET status = 'in_transit', updated_at = now() - interval '6 days',
	created_at = now() - interval '7 days' WHERE order_key = '5';
INSERT INTO shipsync.tracking_event (provider_id, event_key, tracking_number, binding_id, order_key,
	occurred_at, status)
VALUES (:rc, 'e5', 'TN5', :bid, '5', now() - interval '1 day', 'in_transit');
-- (a child parcel of order 1 moving is no news of its main parcel)
INSERT INTO shipsync.tracking_event (provider_id, event_key, tracking_number, binding_id, order_key,
	occurred_at, status, piece)
VALUES (:rc, 'e1c', 'TN1-C', :bid, '1', now() - interval '1 day', 'in_transit', 'child');
SET session_replication_role = replica;
UPDATE orders SET ship_status = 'in_transit' WHERE id IN (1, 5);
RESET session_replication_role;
-- (a CRM-side pass looks for stuck shipments hourly: make it look now)
SELECT pg_temp.crm_pass(true) AS crm3 \gset
SELECT kind, order_key, detail->>'status' AS status, detail->>'threshold' AS threshold
FROM shipsync.reconciliation WHERE kind = 'stuck';
-- a threshold of one's own overrides the built-in one
INSERT INTO shipsync.stuck_after (status, after) VALUES ('in_transit', '30 days');
SELECT pg_temp.crm_pass(true) AS crm4 \gset
SELECT count(*) AS stuck FROM shipsync.reconciliation WHERE kind = 'stuck';
SELECT status, after, builtin FROM shipsync.stuck_after WHERE status = 'in_transit' ORDER BY builtin;
-- a threshold is a setting: audited
SELECT action, object_kind, object_name, new_value FROM shipsync.audit_log
WHERE object_kind = 'stuck_after';

------------------------------------------------------------------------------
-- By hand: acknowledged, then resolved, each with who, when and a note;
-- audited.  A problem resolved by hand but still there comes back.
------------------------------------------------------------------------------
SELECT max(audit_id) AS amark FROM shipsync.audit_log \gset
SET session_replication_role = replica;
UPDATE orders SET ship_status = 'lost' WHERE id = 3;
RESET session_replication_role;
SELECT pg_temp.crm_pass(false) AS crm_h \gset
SELECT ticket_id AS t1 FROM shipsync.open_tickets
WHERE kind = 'status_mismatch' AND order_key = '3' \gset
SELECT shipsync.ack(:t1, 'asking the warehouse');
SELECT shipsync.ack(:t1, 'twice') AS again;
SELECT kind, state, acknowledged_by = session_user AS by_me, last_note
FROM shipsync.open_tickets WHERE ticket_id = :t1;
-- still there at the next pass: refreshed, still acknowledged
SELECT pg_temp.crm_pass(false) AS crm_h2 \gset
SELECT state, last_note FROM shipsync.open_tickets WHERE ticket_id = :t1;
SELECT shipsync.resolve(:t1, 'the warehouse found it');
SELECT shipsync.resolve(:t1, 'twice') AS again;
\set VERBOSITY terse
SELECT shipsync.ack(:t1);
\set VERBOSITY default
SELECT acknowledgement, resolution, resolved_by = session_user AS by_me
FROM shipsync.exception_ticket WHERE ticket_id = :t1;
-- but the column still says lost: the next pass reopens it, the notes go
-- (open_tickets' last note too: it showed the resolution's, "the
-- warehouse found it", on the ticket open again)
SELECT pg_temp.crm_pass(false) AS crm_h3 \gset
SELECT reopened FROM shipsync.reconcile_run WHERE run_id = :crm_h3;
SELECT t.reopen_count, o.state, t.acknowledgement, t.resolution, t.acknowledged_by, o.last_note
FROM shipsync.exception_ticket t JOIN shipsync.open_tickets o USING (ticket_id)
WHERE ticket_id = :t1;
SELECT event, actor = session_user AS by_me, note FROM shipsync.ticket_event
WHERE ticket_id = :t1 ORDER BY at, event;
-- acknowledged again: its note is the last one
SELECT shipsync.ack(:t1, 'asking again');
SELECT state, last_note FROM shipsync.open_tickets WHERE ticket_id = :t1;
-- fixed: the next pass resolves it, saying why
SET session_replication_role = replica;
UPDATE orders SET ship_status = 'pre_transit' WHERE id = 3;
RESET session_replication_role;
SELECT pg_temp.crm_pass(false) AS crm_h4 \gset
SELECT resolution = format('no longer seen (reconciliation run %s)', :crm_h4) AS why
FROM shipsync.exception_ticket WHERE ticket_id = :t1;
-- every step by hand is in the audit log
SELECT action, object_kind, object_name = :'t1' AS this_ticket, "session_user" = session_user AS by_me,
	   new_value - 'acknowledged_at' - 'resolved_at' - 'acknowledged_by' - 'resolved_by' AS new_value
FROM shipsync.audit_log WHERE audit_id > :amark ORDER BY audit_id;
-- errors
SELECT shipsync.ack(424242);
SELECT shipsync.resolve(NULL);

------------------------------------------------------------------------------
-- The tickets of the dispatcher follow the same lifecycle
------------------------------------------------------------------------------
INSERT INTO shipsync.outbox (binding_id, provider_id, order_key, op, state, last_error)
VALUES (:bid, :rc, '1', 'update', 'dead', 'HTTP 500: first') RETURNING id AS ob1 \gset
INSERT INTO shipsync.exception_ticket (kind, binding_id, order_key, provider_id, outbox_id, detail)
VALUES ('dead_intent', :bid, '1', :rc, :ob1, 'HTTP 500: first');
INSERT INTO shipsync.outbox (binding_id, provider_id, order_key, op, state, last_error)
VALUES (:bid, :rc, '1', 'update', 'dead', 'HTTP 500: second') RETURNING id AS ob2 \gset
INSERT INTO shipsync.exception_ticket (kind, binding_id, order_key, provider_id, outbox_id, detail)
VALUES ('dead_intent', :bid, '1', :rc, :ob2, 'HTTP 500: second');
SELECT count(*) AS tickets, max(detail) AS detail, max(outbox_id) = :ob2 AS latest_intent
FROM shipsync.exception_ticket WHERE kind = 'dead_intent';
-- retry() resolves it, saying so in the ledger's history; dying again reopens it
SELECT shipsync.retry(:ob2);
SELECT resolved_at IS NOT NULL AS resolved, resolution FROM shipsync.exception_ticket WHERE kind = 'dead_intent';
SELECT e.note FROM shipsync.ticket_event e JOIN shipsync.exception_ticket t USING (ticket_id)
WHERE t.kind = 'dead_intent' AND e.event = 'resolved';
UPDATE shipsync.outbox SET state = 'dead' WHERE id = :ob2;
INSERT INTO shipsync.exception_ticket (kind, binding_id, order_key, provider_id, outbox_id, detail)
VALUES ('dead_intent', :bid, '1', :rc, :ob2, 'HTTP 500: third');
SELECT count(*) AS tickets, bool_and(resolved_at IS NULL) AS open, max(reopen_count) AS reopened
FROM shipsync.exception_ticket WHERE kind = 'dead_intent';
-- delivered at last: the next pass resolves it
UPDATE shipsync.outbox SET state = 'done' WHERE id IN (:ob1, :ob2);
SELECT pg_temp.crm_pass(false) AS crm5 \gset
SELECT resolved_by = session_user AS by_the_comparer, resolution FROM shipsync.exception_ticket
WHERE kind = 'dead_intent';
SELECT event FROM shipsync.ticket_event e JOIN shipsync.exception_ticket t USING (ticket_id)
WHERE t.kind = 'dead_intent' ORDER BY e.at, e.event;

------------------------------------------------------------------------------
-- Bulk retry and requeue, by filter
------------------------------------------------------------------------------
INSERT INTO shipsync.outbox (binding_id, provider_id, order_key, op, state, attempts, error_class, updated_at)
VALUES (:bid, :rc, '1', 'update', 'dead', 3, 'http_5xx', now() - interval '2 hours'),
	   (:bid, :rc, '2', 'update', 'dead', 3, 'http_5xx', now()),
	   (:bid, :rc, '3', 'update', 'dead', 1, 'http_4xx', now()),
	   (:bid, :rc, '4', 'update', 'invalid', 0, 'invalid_order', now()),
	   (:bid, :rc2, '5', 'update', 'dead', 2, 'timeout', now());
INSERT INTO shipsync.exception_ticket (kind, binding_id, order_key, provider_id, outbox_id, detail)
SELECT 'dead_intent', binding_id, order_key, provider_id, id, 'HTTP 503'
FROM shipsync.outbox WHERE error_class = 'http_5xx' AND order_key = '2';
SELECT shipsync.requeue('rc', error_class => 'http_5xx', since => now() - interval '1 hour') AS recent_5xx;
SELECT t.resolved_at IS NOT NULL AS resolved, t.resolution FROM shipsync.exception_ticket t
JOIN shipsync.outbox o ON o.id = t.outbox_id WHERE o.error_class = 'http_5xx' AND o.order_key = '2';
SELECT shipsync.retry('rc', 'invalid') AS invalid;
SELECT shipsync.retry(NULL::text, error_class => 'timeout') AS timeouts;
SELECT shipsync.requeue('rc') AS rest_of_dead;
SELECT order_key, state, attempts FROM shipsync.outbox
WHERE error_class IN ('http_5xx', 'http_4xx', 'invalid_order', 'timeout') ORDER BY order_key;
DELETE FROM shipsync.outbox WHERE error_class IN ('http_5xx', 'http_4xx', 'invalid_order', 'timeout');

------------------------------------------------------------------------------
-- Views
------------------------------------------------------------------------------
SELECT kind, state, provider, "table", order_key, reopen_count, age > interval '0' AS aged
FROM shipsync.open_tickets ORDER BY kind, order_key;
SELECT day = current_date AS today, provider, kind, opened, closed, open
FROM shipsync.reconciliation_summary ORDER BY kind;
SELECT day = current_date AS today, kind, provider, opened, resolved,
	   median_time_to_resolve IS NOT NULL AS has_median
FROM shipsync.ticket_summary ORDER BY kind;

------------------------------------------------------------------------------
-- fee_mismatch: every row of shipsync.fee_difference, one ticket each; a
-- billed waybill no shipment has is keyed by provider and tracking number
------------------------------------------------------------------------------
-- quoted at create: 1, 2 and 4, 12.50 CNY of freight each
SELECT kind, n FROM shipsync._record_quotes(ARRAY[:bid, :bid, :bid], ARRAY['1', '2', '4'],
	ARRAY[:rc, :rc, :rc], ARRAY['TN1', 'TN2', 'TN4'],
	array_fill('[{"type": "freight", "amount": "12.50", "currency": "CNY"}]'::text, ARRAY[3]))
WHERE kind <> 'writeback';
-- billed: 1 as quoted, 2 above its quote, 4 twice for its freight (so above
-- its quote too), and a waybill no shipment has; 6 delivered two months ago
-- and never billed
SELECT s->>'lines' AS lines, s->>'unmatched' AS unmatched FROM shipsync.import_statement('rc',
	'[{"tracking_number": "TN1", "type": "freight", "amount": "12.50", "currency": "CNY", "key": "L1"},
	  {"tracking_number": "TN2", "type": "freight", "amount": "15.00", "currency": "CNY", "key": "L2"},
	  {"tracking_number": "TN4", "type": "freight", "amount": "12.50", "currency": "CNY", "key": "L4a"},
	  {"tracking_number": "TN4", "type": "freight", "amount": "12.50", "currency": "CNY", "key": "L4b"},
	  {"tracking_number": "GHOST-WB", "type": "freight", "amount": "9.00", "currency": "CNY", "key": "LG"}]',
	'json', '{"period": "2026-03"}') AS s;
INSERT INTO shipsync.tracking_event (provider_id, event_key, tracking_number, binding_id, order_key,
	occurred_at, status)
VALUES (:rc, 'e6-delivered', 'TN6N', :bid, '6', now() - interval '60 days', 'delivered');
SELECT kind, order_key, tracking_number, fee_type, billed, difference
FROM shipsync.fee_difference ORDER BY kind, order_key, tracking_number;
-- a CRM-side pass that does not look at fees (hourly) finds none of them
SELECT pg_temp.crm_pass(false) AS fee0 \gset
SELECT count(*) AS fee_mismatch FROM shipsync.reconciliation WHERE kind = 'fee_mismatch';
-- one that does (hourly, with the stuck shipments): a discrepancy and a
-- ticket per row
SELECT pg_temp.crm_pass(true) AS fee1 \gset
SELECT opened FROM shipsync.reconcile_run WHERE run_id = :fee1;
SELECT provider, "table", order_key, tracking_number, detail
FROM shipsync.reconciliation WHERE kind = 'fee_mismatch'
ORDER BY order_key, detail->>'fee_kind';
SELECT order_key, subject,
	   CASE subject WHEN 'unbilled' THEN split_part(detail, ':', 1) ELSE detail END AS detail
FROM shipsync.exception_ticket WHERE kind = 'fee_mismatch' ORDER BY order_key, subject;
-- the unknown waybill's ticket: no order, keyed by provider and tracking number
SELECT provider_id = :rc AS rc, binding_id, order_key, subject, tracking_number
FROM shipsync.exception_ticket WHERE kind = 'fee_mismatch' AND order_key IS NULL;
-- seen again: the same tickets, none opened or closed
SELECT pg_temp.crm_pass(true) AS fee2 \gset
SELECT opened, closed, reopened FROM shipsync.reconcile_run WHERE run_id = :fee2;
SELECT count(*) AS tickets FROM shipsync.exception_ticket WHERE kind = 'fee_mismatch';
-- the carrier corrects its statement: 2 billed as quoted, 4 once; the rows
-- of fee_difference go, and the next look closes their tickets
SELECT s->>'withdrawn' AS withdrawn FROM shipsync.import_statement('rc',
	'[{"tracking_number": "TN1", "type": "freight", "amount": "12.50", "currency": "CNY", "key": "L1"},
	  {"tracking_number": "TN2", "type": "freight", "amount": "12.50", "currency": "CNY", "key": "L2"},
	  {"tracking_number": "TN4", "type": "freight", "amount": "12.50", "currency": "CNY", "key": "L4a"},
	  {"tracking_number": "GHOST-WB", "type": "freight", "amount": "9.00", "currency": "CNY", "key": "LG"}]',
	'json', '{"period": "2026-03"}') AS s;
SELECT kind, order_key, tracking_number FROM shipsync.fee_difference ORDER BY kind, order_key;
SELECT pg_temp.crm_pass(true) AS fee3 \gset
SELECT opened, closed, reopened FROM shipsync.reconcile_run WHERE run_id = :fee3;
SELECT order_key, subject, resolved_by = session_user AS by_the_comparer,
	   resolution = format('no longer seen (reconciliation run %s)', :fee3) AS why
FROM shipsync.exception_ticket WHERE kind = 'fee_mismatch' AND resolved_at IS NOT NULL
ORDER BY order_key, subject;
-- the unknown waybill resolved by hand while still billed: the next look
-- reopens its ticket (the same one: provider and tracking number), counted
SELECT ticket_id AS ghost FROM shipsync.exception_ticket
WHERE kind = 'fee_mismatch' AND subject = 'GHOST-WB' \gset
SELECT shipsync.resolve(:ghost, 'asked the carrier');
SELECT pg_temp.crm_pass(true) AS fee4 \gset
SELECT opened, closed, reopened FROM shipsync.reconcile_run WHERE run_id = :fee4;
SELECT ticket_id = :ghost AS same_ticket, order_key, reopen_count, resolved_at IS NULL AS open
FROM shipsync.exception_ticket WHERE kind = 'fee_mismatch' AND subject = 'GHOST-WB';
-- counted in the daily summary like every kind
SELECT day = current_date AS today, provider, kind, opened, closed, open
FROM shipsync.reconciliation_summary WHERE kind = 'fee_mismatch';

------------------------------------------------------------------------------
-- A pull that fails
------------------------------------------------------------------------------
SELECT shipsync.reconcile('rc') AS run4 \gset
SELECT count(*) FROM shipsync._reconcile_start(:run4);
SELECT shipsync._reconcile_page(:run4, :rc, 1, ARRAY['x'], NULL, NULL, NULL, NULL, NULL, false);
SELECT shipsync._reconcile_pull_failed(:run4, :rc, 3, 'GET http://127.0.0.1:9/shipments: HTTP 404');
SELECT count(*) AS kept FROM shipsync.carrier_snapshot WHERE run_id = :run4;
SELECT shipsync._reconcile_compare(:run4);
SELECT state, pages, error FROM shipsync.reconcile_run WHERE run_id = :run4;
-- its CRM side was compared all the same, its carrier side not: 7 is still open
SELECT kind, order_key FROM shipsync.reconciliation WHERE kind = 'tracking_mismatch';

------------------------------------------------------------------------------
-- Cancelled here: live there is an orphan, absent there is nothing
------------------------------------------------------------------------------
UPDATE shipsync.shipment SET status = 'cancelled', updated_at = now() WHERE order_key IN ('3', '5');
SET session_replication_role = replica;
UPDATE orders SET ship_status = 'cancelled' WHERE id IN (3, 5);
RESET session_replication_role;
SELECT shipsync.reconcile('rc') AS run5 \gset
SELECT count(*) FROM shipsync._reconcile_start(:run5);
SELECT shipsync._reconcile_page(:run5, :rc, 1, ARRAY['shp_3'], ARRAY['3'], ARRAY['TN3'],
	ARRAY['in_transit'], NULL, NULL, true);
SELECT shipsync._reconcile_compare(:run5);
SELECT kind, order_key, detail->>'reason' AS reason, detail->>'shipment_id' AS shipment
FROM shipsync.reconciliation WHERE order_key IN ('3', '5') ORDER BY kind;

------------------------------------------------------------------------------
-- The schedule
------------------------------------------------------------------------------
SELECT shipsync._reconcile_schedule(-1, true) AS no_daily;
SELECT kind, trigger, requested_by, state FROM shipsync.reconcile_run WHERE trigger = 'interval';
SELECT shipsync._reconcile_schedule(-1, true) AS no_daily;
SELECT count(*) AS one_pass FROM shipsync.reconcile_run WHERE trigger = 'interval';
-- the daily run, in a time zone where it is neither early nor late in the
-- day (so that "90 minutes ago" is today)
SELECT count(*) AS zone_set FROM (
	SELECT set_config('TimeZone', z, false)
	FROM unnest(ARRAY['UTC', 'Etc/GMT-12', 'Etc/GMT+12']) AS z
	WHERE extract(hour FROM now() AT TIME ZONE z) BETWEEN 4 AND 19 LIMIT 1) x;
SELECT (extract(hour FROM localtime) * 60 + extract(minute FROM localtime))::integer AS m \gset
-- the very first one: not when its time is more than an hour past ...
SELECT shipsync._reconcile_schedule(:m - 90, false) = date_trunc('day', now()) + make_interval(mins => :m - 90) + interval '1 day' AS tomorrow;
SELECT count(*) AS daily FROM shipsync.reconcile_run WHERE trigger = 'daily';
-- ... but within the hour after it; once a day
SELECT shipsync._reconcile_schedule(:m - 30, false) > now() AS next_later;
SELECT shipsync._reconcile_schedule(:m - 30, false) > now() AS next_later;
SELECT count(*) AS daily, bool_and(provider_id IS NULL) AS every_provider, min(requested_by) AS by
FROM shipsync.reconcile_run WHERE trigger = 'daily';
-- a day missed is caught up
UPDATE shipsync.reconcile_run SET state = 'done', started_at = now() - interval '1 day'
WHERE trigger = 'daily';
SELECT shipsync._reconcile_schedule(:m - 90, false) > now() AS next_later;
SELECT count(*) AS daily, count(*) FILTER (WHERE state = 'pending') AS pending
FROM shipsync.reconcile_run WHERE trigger = 'daily';
-- across a change of the clocks the time is the clock's: in a zone whose
-- clocks went forward an hour at 02:00 today (a POSIX rule, its offset
-- chosen so that it is 12:00 there now), 11:30 was half an hour ago: the
-- run starts, and the next is at 11:30 tomorrow; 23:30 is tonight.  (Midnight
-- plus the minutes of the time is 12:30 and, for 23:30, 00:30 tomorrow: on
-- such a day a run set after 23:00 was never started.)
CREATE TEMP TABLE daily_before AS
SELECT run_id, state, started_at FROM shipsync.reconcile_run WHERE trigger = 'daily';
UPDATE shipsync.reconcile_run SET state = 'done', started_at = now() - interval '2 days'
WHERE trigger = 'daily';
SELECT set_config('TimeZone', pg_catalog.format('XST%s%s:%sXDT,%s/2,%s/2',
		   CASE WHEN w < 0 THEN '-' ELSE '+' END, abs(w) / 60, lpad((abs(w) % 60)::text, 2, '0'),
		   n, (n + 180) % 365), false) IS NOT NULL AS zone_set
FROM (SELECT (extract(hour FROM u) * 60 + extract(minute FROM u))::integer - 660 AS w,
			 extract(doy FROM u)::integer - 1 AS n
	  FROM (SELECT now() AT TIME ZONE 'UTC' AS u) x) y;
SELECT to_char(localtimestamp, 'HH24') AS local_hour, extract(timezone_hour FROM now())
	   - extract(timezone_hour FROM now() - interval '12 hours') AS clocks_forward;
SELECT to_char(x AT TIME ZONE current_setting('TimeZone'), 'HH24:MI') AS next_at,
	   (x AT TIME ZONE current_setting('TimeZone'))::date - localtimestamp::date AS in_days
FROM shipsync._reconcile_schedule(11 * 60 + 30, false) AS x;
SELECT count(*) AS started FROM shipsync.reconcile_run
WHERE trigger = 'daily' AND run_id NOT IN (SELECT run_id FROM daily_before);
SELECT to_char(x AT TIME ZONE current_setting('TimeZone'), 'HH24:MI') AS next_at,
	   (x AT TIME ZONE current_setting('TimeZone'))::date - localtimestamp::date AS in_days
FROM shipsync._reconcile_schedule(23 * 60 + 30, false) AS x;
DELETE FROM shipsync.reconcile_run
WHERE trigger = 'daily' AND run_id NOT IN (SELECT run_id FROM daily_before);
UPDATE shipsync.reconcile_run r SET state = d.state, started_at = d.started_at
FROM daily_before d WHERE d.run_id = r.run_id;
RESET TimeZone;

------------------------------------------------------------------------------
-- Errors
------------------------------------------------------------------------------
\set VERBOSITY default
SELECT shipsync.reconcile('rc');
SELECT shipsync.reconcile(NULL, NULL);
SELECT shipsync.reconcile('rc', now() + interval '1 hour');
SELECT shipsync.reconcile('nope');
SELECT shipsync.reconcile('rc2');
SELECT shipsync.pause('rc2');
CREATE TABLE orders2 (id bigint PRIMARY KEY, note text);
SELECT shipsync.attach('orders2', 'rc2');
SELECT shipsync.reconcile('rc2');
SELECT shipsync.create_provider('trk', 'easypost', 'http://127.0.0.1:9',
	'{"auth": {"type": "basic", "username": "k"}}');
SELECT shipsync.reconcile('trk');
SELECT shipsync.resync(NULL);
SELECT shipsync.resync('pg_class');
SELECT shipsync.resync('orders');
SELECT shipsync.resync('orders', kind => 'orphan_at_carrier');
SELECT shipsync.resync('orders', kind => 'fee_mismatch');
SELECT shipsync.resync('orders', ARRAY['not a number']);
CREATE TABLE orders3 (id bigint PRIMARY KEY, note text);
SELECT shipsync.attach('orders3', 'rc2', options => '{"grace": "soon"}');
SELECT shipsync.attach('orders3', 'rc2', options => '{"grace": 10}');
SELECT shipsync.attach('orders3', 'rc2', options => '{"grace": "-1 minute"}');
SELECT shipsync.attach('orders3', 'rc2', options => '{"created_at_column": "nope"}');
SELECT shipsync.attach('orders3', 'rc2', options => '{"created_at_column": "note"}');
SELECT shipsync.retry('nope');
SELECT shipsync.retry('rc', 'done');
SELECT shipsync.requeue('rc', since => now() + interval '1 day');
UPDATE shipsync.stuck_after SET after = '1 day' WHERE status = 'pending' AND builtin;
DELETE FROM shipsync.stuck_after WHERE builtin;
SELECT shipsync._reconcile_prepare(:run);
ALTER SYSTEM SET shipsync.reconcile_at = '25:00';
ALTER SYSTEM SET shipsync.reconcile_at = '3pm';
ALTER SYSTEM SET shipsync.reconcile_interval = -1;
\set VERBOSITY terse

------------------------------------------------------------------------------
-- Order keys and tracking numbers compare byte by byte (COLLATE "C") in
-- every table of shipsync: one collation for all of them, so that a join of
-- two of them, or of one with a key passed in, can use their indexes.  An
-- order table whose key and write-back columns have a collation of their
-- own (POSIX here) is compared with them all the same: the comparisons name
-- the collation instead of leaving two to conflict.
------------------------------------------------------------------------------
SELECT c.relname, a.attname, co.collname
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid AND c.relkind = 'r'
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'shipsync'
JOIN pg_collation co ON co.oid = a.attcollation
WHERE a.attname IN ('order_key', 'tracking_number', 'order_ref') AND NOT a.attisdropped
ORDER BY 1, 2;
-- So are the findings a comparison merges into the ledger: the merge probes
-- their key index with the ledger's keys, which an index in the default
-- collation cannot serve (it read every finding for every open ticket)
SELECT shipsync._reconcile_tables();
SELECT a.attname, co.collname
FROM pg_attribute a
JOIN pg_collation co ON co.oid = a.attcollation
WHERE a.attrelid = 'pg_temp.recon_found'::regclass AND a.attname = 'order_key';

SELECT shipsync.create_provider('rc3', 'generic', 'http://127.0.0.1:9') AS rc3 \gset
CREATE TABLE posix_orders (ref text COLLATE "POSIX" PRIMARY KEY, waybill text COLLATE "POSIX",
	created timestamptz NOT NULL DEFAULT now() - interval '1 hour');
SELECT shipsync.attach('posix_orders', 'rc3', writeback => '{"tracking_number": "waybill"}',
	options => '{"grace": "10 minutes", "created_at_column": "created"}') AS pbid \gset
INSERT INTO posix_orders (ref, waybill) VALUES ('P-1', 'TN-P-1'), ('P-2', 'wrong'), ('P-3', NULL);
-- P-1 and P-2 shipped; P-3 never captured
DELETE FROM shipsync.inbox WHERE binding_id = :pbid;
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, provider_shipment_id,
	tracking_number, status, created_at, updated_at)
SELECT :pbid, ref, :rc3, 'shp_' || ref, 'TN-' || ref, 'pre_transit',
	   now() - interval '1 hour', now() - interval '1 hour'
FROM posix_orders WHERE ref IN ('P-1', 'P-2');
SELECT pg_temp.crm_pass(false) AS prun \gset
SELECT kind, order_key, tracking_number, detail - 'since' AS detail
FROM shipsync.reconciliation WHERE "table" = 'posix_orders'::regclass ORDER BY kind, order_key;
-- the next pass reads what changed since the last (its other statement)
INSERT INTO posix_orders (ref) VALUES ('P-4');
DELETE FROM shipsync.inbox WHERE binding_id = :pbid;
UPDATE posix_orders SET waybill = 'TN-P-2' WHERE ref = 'P-2';
SELECT pg_temp.crm_pass(false) AS prun \gset
SELECT kind, order_key, tracking_number, detail - 'since' AS detail
FROM shipsync.reconciliation WHERE "table" = 'posix_orders'::regclass ORDER BY kind, order_key;

------------------------------------------------------------------------------
-- Row-level security forced on an order table's owner, as whom passes read
-- it: its hidden orders read as deleted, so their tickets were closed as
-- no longer seen.  Now that table is not compared (its tickets stay as
-- they are) and the run fails saying why; the other tables are compared.
------------------------------------------------------------------------------
CREATE ROLE shipsync_rc_owner;
CREATE TABLE forced_orders (ref text PRIMARY KEY,
	created timestamptz NOT NULL DEFAULT now() - interval '1 hour');
ALTER TABLE forced_orders OWNER TO shipsync_rc_owner;
SELECT shipsync.attach('forced_orders', 'rc3',
	options => '{"grace": "10 minutes", "created_at_column": "created"}') AS fbid \gset
INSERT INTO forced_orders (ref) VALUES ('F-1');
DELETE FROM shipsync.inbox WHERE binding_id = :fbid;
SELECT pg_temp.crm_pass(false) AS frun \gset
SELECT kind, order_key, resolved_at IS NULL AS open FROM shipsync.exception_ticket
WHERE binding_id = :fbid;
ALTER TABLE forced_orders ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY none_seen ON forced_orders USING (false);
-- P-5: a new order of another table, seen by the same pass
INSERT INTO posix_orders (ref) VALUES ('P-5');
DELETE FROM shipsync.inbox WHERE binding_id = :pbid;
SELECT pg_temp.crm_pass(false) AS frun \gset
SELECT state, error FROM shipsync.reconcile_run WHERE run_id = :frun;
SELECT kind, order_key, resolved_at IS NULL AS open FROM shipsync.exception_ticket
WHERE binding_id = :fbid;
SELECT kind, order_key FROM shipsync.reconciliation WHERE "table" = 'posix_orders'::regclass
AND order_key = 'P-5';
SELECT shipsync.detach('forced_orders');
DROP TABLE forced_orders;
DROP ROLE shipsync_rc_owner;

------------------------------------------------------------------------------
-- A write-back map changed by attaching the table again: the digests of
-- the orders shipped left out the old write-back columns, so every order
-- whose old column held a value became address_changed_after_send.
-- attach() now carries the digests of orders unchanged since over to the
-- new columns; an order changed since stays flagged.
------------------------------------------------------------------------------
CREATE TABLE remapped (ref text PRIMARY KEY, address text, waybill text,
	created timestamptz NOT NULL DEFAULT now() - interval '1 hour');
SELECT shipsync.attach('remapped', 'rc3', writeback => '{"tracking_number": "waybill"}',
	options => '{"grace": "10 minutes", "created_at_column": "created"}') AS mbid \gset
INSERT INTO remapped (ref, address) VALUES ('M-1', '1 Elm St'), ('M-2', '2 Elm St');
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, provider_shipment_id,
	tracking_number, status, content_digest, created_at, updated_at)
SELECT :mbid, m.ref, :rc3, 'shp_' || m.ref, 'TN-' || m.ref, 'pre_transit',
	   shipsync._row_digest(m, '{waybill}'), now() - interval '1 hour', now() - interval '1 hour'
FROM remapped m;
UPDATE remapped SET waybill = 'TN-' || ref;
UPDATE remapped SET address = '22 Elm St' WHERE ref = 'M-2';
DELETE FROM shipsync.inbox WHERE binding_id = :mbid;
SELECT shipsync.detach('remapped');
SELECT shipsync.attach('remapped', 'rc3',
	options => '{"grace": "10 minutes", "created_at_column": "created"}') = :mbid AS same_binding;
SELECT pg_temp.crm_pass(false) AS mrun \gset
SELECT kind, order_key FROM shipsync.reconciliation WHERE "table" = 'remapped'::regclass
ORDER BY 1, 2;

------------------------------------------------------------------------------
-- An attached table whose key column was renamed cannot be compared; it
-- used to fail the whole pass, so that no table was compared until it was
-- attached again.  Now the pass leaves it out, ends failed naming it, and
-- compares the others (P-6, a new order of another table, is seen).
------------------------------------------------------------------------------
CREATE TABLE renamed (ref text PRIMARY KEY, created timestamptz NOT NULL DEFAULT now() - interval '1 hour');
SELECT shipsync.attach('renamed', 'rc3',
	options => '{"grace": "10 minutes", "created_at_column": "created"}') > 0 AS attached;
ALTER TABLE renamed RENAME COLUMN ref TO order_ref;
INSERT INTO posix_orders (ref) VALUES ('P-6');
DELETE FROM shipsync.inbox WHERE order_key = 'P-6';
SELECT pg_temp.crm_pass(false) AS rrun \gset
SELECT state, error FROM shipsync.reconcile_run WHERE run_id = :rrun;
SELECT kind, order_key FROM shipsync.reconciliation WHERE "table" = 'posix_orders'::regclass
AND order_key = 'P-6';
SELECT shipsync.detach('renamed');
DROP TABLE renamed;
SELECT shipsync.pause('rc3');

------------------------------------------------------------------------------
-- A fee total an order row did not take (a constraint refused it, or it
-- has more decimals than the column): its writeback_failed ticket has no
-- provider, and no pass ever closed it.  The hourly look keeps it open
-- while the row differs from the shipment's fee_total, and closes it once
-- the row holds it (written by hand, or by a later bill that fits), or the
-- order is gone.
------------------------------------------------------------------------------
SELECT shipsync.create_provider('rcf', 'generic', 'http://127.0.0.1:9', '{"currency": "KWD"}') AS rcf \gset
SELECT shipsync.pause('rcf');
CREATE TABLE billed (id int PRIMARY KEY, fee numeric(10,2),
	created timestamptz NOT NULL DEFAULT now() - interval '1 hour');
SELECT shipsync.attach('billed', 'rcf', writeback => '{"fee_total": "fee"}',
	options => '{"created_at_column": "created"}') AS fbid \gset
INSERT INTO billed (id) VALUES (1), (2), (3);
DELETE FROM shipsync.inbox WHERE binding_id = :fbid;
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, provider_shipment_id,
	tracking_number, status, created_at, updated_at)
SELECT :fbid, g::text, :rcf, 'shp_B' || g, 'B' || g, 'delivered', now() - interval '1 hour', now() - interval '1 hour'
FROM generate_series(1, 3) g;
ALTER TABLE billed ADD CONSTRAINT fee_small CHECK (fee < 100) NOT VALID;
SET client_min_messages = error;
SELECT shipsync.import_statement('rcf', E'tracking_number,type,amount\nB1,freight,500.00\nB2,freight,13.705\nB3,freight,700.00\n',
	options => '{"period": "2026-05"}') ->> 'new' AS new;
RESET client_min_messages;
CREATE FUNCTION pg_temp.fee_tickets(bid integer)
RETURNS TABLE (order_key text, open boolean, reopen_count integer, resolution text)
LANGUAGE sql AS $$
	SELECT t.order_key, t.resolved_at IS NULL, t.reopen_count,
		   regexp_replace(t.resolution, 'run \d+', 'run N')
	FROM shipsync.exception_ticket t
	WHERE t.kind = 'writeback_failed' AND t.binding_id = bid ORDER BY 1 $$;
SELECT * FROM pg_temp.fee_tickets(:fbid);
-- still there: the hourly look leaves them open
SELECT pg_temp.crm_pass(true) > 0 AS passed;
SELECT * FROM pg_temp.fee_tickets(:fbid);
-- repaired: 1 written by hand, 2 billed again in cents (written), 3 deleted
ALTER TABLE billed DROP CONSTRAINT fee_small;
UPDATE billed SET fee = 500 WHERE id = 1;
DELETE FROM shipsync.inbox WHERE binding_id = :fbid;
SELECT shipsync.import_statement('rcf', E'tracking_number,type,amount\nB1,freight,500.00\nB2,freight,13.71\nB3,freight,700.00\n',
	options => '{"period": "2026-05"}') ->> 'revised' AS revised;
DELETE FROM billed WHERE id = 3;
SELECT id, fee FROM billed ORDER BY id;
-- an incremental pass that does not look at fees judges none of them
SELECT pg_temp.crm_pass(false) > 0 AS passed;
SELECT * FROM pg_temp.fee_tickets(:fbid);
SELECT pg_temp.crm_pass(true) > 0 AS passed;
SELECT * FROM pg_temp.fee_tickets(:fbid);
-- a row that refuses its total again reopens its ticket
ALTER TABLE billed ADD CONSTRAINT fee_small CHECK (fee < 100) NOT VALID;
SET client_min_messages = error;
SELECT shipsync.import_statement('rcf', E'tracking_number,type,amount\nB1,freight,600.00\nB2,freight,13.71\n',
	options => '{"period": "2026-06"}') ->> 'new' AS new;
RESET client_min_messages;
SELECT * FROM pg_temp.fee_tickets(:fbid);
-- attached again without fee_total in its write-back map: the total is
-- written no more, so its ticket is moot (it was never judged again, and
-- stayed open for good)
SELECT shipsync.detach('billed');
SELECT shipsync.attach('billed', 'rcf', writeback => '{}',
	options => '{"created_at_column": "created"}') = :fbid AS same_binding;
DELETE FROM shipsync.inbox WHERE binding_id = :fbid;
SELECT pg_temp.crm_pass(true) > 0 AS passed;
SELECT * FROM pg_temp.fee_tickets(:fbid);
SELECT shipsync.pause('rcf');

------------------------------------------------------------------------------
-- The dispatcher's ticket of an order deleted since: its intent is moot
-- once a later cancel of the order is done (the cancel of an order never
-- shipped is done with nothing to send).  It stayed open forever, beside
-- the order's not_sent, which closed.
------------------------------------------------------------------------------
CREATE TABLE gone_orders (id int PRIMARY KEY,
	created timestamptz NOT NULL DEFAULT now() - interval '1 hour');
SELECT shipsync.attach('gone_orders', 'rcf', options => '{"created_at_column": "created"}') AS gbid \gset
INSERT INTO gone_orders (id) VALUES (1), (2);
INSERT INTO shipsync.outbox (id, binding_id, provider_id, order_key, op, idempotency_key, created_at,
	state, error_class, last_error, done_at)
SELECT id, binding_id, provider_id, order_key, op, idempotency_key, created_at,
	   'dead', 'http_4xx', 'HTTP 422: refused', now()
FROM shipsync.inbox WHERE binding_id = :gbid;
DELETE FROM shipsync.inbox WHERE binding_id = :gbid;
INSERT INTO shipsync.exception_ticket (kind, binding_id, order_key, provider_id, outbox_id, detail)
SELECT 'dead_intent', binding_id, order_key, provider_id, id, last_error
FROM shipsync.outbox WHERE binding_id = :gbid;
SELECT pg_temp.crm_pass(false) > 0 AS passed;
-- 1 is deleted: its cancel, as the dispatcher ends it
DELETE FROM gone_orders WHERE id = 1;
INSERT INTO shipsync.outbox (id, binding_id, provider_id, order_key, op, idempotency_key, created_at,
	state, error_class, last_error, done_at)
SELECT id, binding_id, provider_id, order_key, op, idempotency_key, created_at,
	   'done', 'nothing_to_send', 'no shipment to cancel', now()
FROM shipsync.inbox WHERE binding_id = :gbid;
DELETE FROM shipsync.inbox WHERE binding_id = :gbid;
SELECT pg_temp.crm_pass(false) > 0 AS passed;
SELECT kind, order_key, resolved_at IS NULL AS open, regexp_replace(resolution, 'run \d+', 'run N') AS resolution
FROM shipsync.exception_ticket WHERE binding_id = :gbid ORDER BY kind, order_key;
SELECT shipsync.detach('gone_orders');

------------------------------------------------------------------------------
-- The CRM-side tickets of a table no longer attached: no pass compares it
-- again, and they stayed open forever.  A pass resolves them, saying why;
-- a table attached again before it (to change its write-back map) keeps
-- them as they are.
------------------------------------------------------------------------------
CREATE TABLE left_orders (id int PRIMARY KEY,
	created timestamptz NOT NULL DEFAULT now() - interval '1 hour');
SELECT shipsync.attach('left_orders', 'rcf', options => '{"created_at_column": "created"}') AS lbid \gset
INSERT INTO left_orders (id) VALUES (1);
DELETE FROM shipsync.inbox WHERE binding_id = :lbid;
SELECT pg_temp.crm_pass(false) > 0 AS passed;
SELECT ticket_id AS lt FROM shipsync.exception_ticket WHERE binding_id = :lbid AND kind = 'not_sent' \gset
SELECT shipsync.ack(:lt, 'the warehouse holds it');
SELECT shipsync.detach('left_orders');
SELECT shipsync.attach('left_orders', 'rcf', options => '{"created_at_column": "created"}') = :lbid AS same_binding;
DELETE FROM shipsync.inbox WHERE binding_id = :lbid;
SELECT pg_temp.crm_pass(false) > 0 AS passed;
SELECT kind, state, reopen_count, last_note FROM shipsync.open_tickets WHERE ticket_id = :lt;
-- (a fee total its row refused, and a write-back of the dispatcher's that
-- failed: no pass judges them once the table is detached)
INSERT INTO shipsync.exception_ticket (kind, binding_id, order_key, provider_id, detail)
VALUES ('writeback_failed', :lbid, '1', NULL, 'write-back of the fee total failed: a test'),
	   ('writeback_failed', :lbid, '1', :rcf, 'write-back failed: a test');
SELECT shipsync.detach('left_orders');
SELECT pg_temp.crm_pass(false) > 0 AS passed;
SELECT kind, order_key, provider_id IS NULL AS fee, resolved_at IS NULL AS open,
	   regexp_replace(resolution, 'run \d+', 'run N') AS resolution
FROM shipsync.exception_ticket WHERE binding_id = :lbid ORDER BY kind, order_key, 3;

------------------------------------------------------------------------------
-- A flood of tickets (a statement of 4,000 waybills no shipment has): the
-- pass after the one that opened them, planned on the ledger's statistics
-- of before, probed every finding against every open ticket of its kind
-- (16 million comparisons; 50,000 took five minutes).  The merge now
-- analyzes a ledger that changed much since its statistics.
------------------------------------------------------------------------------
SELECT shipsync.create_provider('rcu', 'generic', 'http://127.0.0.1:9', '{"currency": "CNY"}') AS rcu \gset
SELECT shipsync.pause('rcu');
CREATE TABLE flood_orders (id int PRIMARY KEY,
	created timestamptz NOT NULL DEFAULT now() - interval '1 hour');
SELECT shipsync.attach('flood_orders', 'rcu', options => '{"created_at_column": "created"}') > 0 AS attached;
SELECT shipsync.import_statement('rcu', E'tracking_number,type,amount\n'
	|| (SELECT string_agg('UNKNOWN' || g || ',freight,1.00', E'\n') FROM generate_series(1, 4000) g),
	options => '{"period": "2026-05"}') ->> 'unmatched' AS unknown;
CREATE FUNCTION pg_temp.pass_took() RETURNS interval LANGUAGE plpgsql AS $$
DECLARE
	t timestamptz := clock_timestamp();
BEGIN
	PERFORM pg_temp.crm_pass(true);
	RETURN clock_timestamp() - t;
END $$;
SELECT pg_temp.pass_took() AS first \gset
SELECT count(*) AS open_unknown FROM shipsync.exception_ticket
WHERE provider_id = :rcu AND kind = 'fee_mismatch' AND resolved_at IS NULL;
SELECT pg_stat_force_next_flush();
SELECT pg_temp.pass_took() AS second \gset
SELECT (SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables
		 WHERE relid = 'shipsync.exception_ticket'::regclass) AS ledger_analyzed,
	   (SELECT count(*) FROM shipsync.exception_ticket
		 WHERE provider_id = :rcu AND kind = 'fee_mismatch' AND resolved_at IS NULL) AS still_open;
SELECT shipsync.detach('flood_orders');

------------------------------------------------------------------------------
-- created_at_column of type timestamp or date: the order's local time, read
-- in the time zone of the session comparing (the reconciliation worker's:
-- the database's), not in UTC: an order never captured an hour ago
-- in Shanghai is not_sent, one of a minute ago is within its grace.
------------------------------------------------------------------------------
SET TimeZone = 'Asia/Shanghai';
CREATE TABLE local_orders (id int PRIMARY KEY, created timestamp NOT NULL);
CREATE TABLE dated_orders (id int PRIMARY KEY, created date NOT NULL);
SELECT shipsync.attach('local_orders', 'rc2', options => '{"created_at_column": "created"}') > 0 AS attached;
SELECT shipsync.attach('dated_orders', 'rc2', options => '{"created_at_column": "created"}') > 0 AS attached;
SET session_replication_role = replica;	-- never captured
INSERT INTO local_orders VALUES (1, localtimestamp - interval '1 hour'), (2, localtimestamp - interval '1 minute');
-- yesterday: older than its grace, whatever the hour
INSERT INTO dated_orders VALUES (1, current_date - 1);
RESET session_replication_role;
SELECT pg_temp.crm_pass(false) > 0 AS passed;
SELECT r.table_name, r.order_key, r.detail->>'reason' AS reason,
	   (r.detail->>'since')::timestamptz = CASE r.table_name
		   WHEN 'local_orders' THEN (SELECT l.created::timestamptz FROM local_orders l WHERE l.id::text = r.order_key)
		   ELSE (SELECT d.created::timestamptz FROM dated_orders d WHERE d.id::text = r.order_key) END AS since_is_created
FROM shipsync.reconciliation r
WHERE r.kind = 'not_sent' AND r.table_name IN ('local_orders', 'dated_orders')
ORDER BY 1, 2;
SELECT shipsync.detach('local_orders');
SELECT shipsync.detach('dated_orders');
RESET TimeZone;

------------------------------------------------------------------------------
-- A time of a carrier's list without a zone is read in the provider's option
-- timezone, as its pushes' times are, whatever the session's (the
-- dispatcher's: the database's); one with a zone is that time
------------------------------------------------------------------------------
SELECT shipsync.create_provider('rctz', 'generic', 'http://127.0.0.1:9', '{"timezone": "Asia/Shanghai"}') AS rctz \gset
CREATE TABLE tz_orders (id int PRIMARY KEY);
SELECT shipsync.attach('tz_orders', 'rctz') > 0 AS attached;
-- (the runs before, over)
UPDATE shipsync.reconcile_run SET state = 'failed' WHERE state IN ('pending', 'pulling', 'comparing');
SET TimeZone = 'America/New_York';
SELECT shipsync.reconcile('rctz', now() - interval '2 days') AS tzrun \gset
SELECT count(*) AS pulls FROM shipsync._reconcile_start(:tzrun);
SELECT shipsync._reconcile_page(:tzrun, :rctz, 1, ARRAY['tz_1', 'tz_2', 'tz_3', 'tz_4'],
	ARRAY['x1', 'x2', 'x3', 'x4'], ARRAY['TZ1', 'TZ2', 'TZ3', 'TZ4'],
	ARRAY['in_transit', 'in_transit', 'in_transit', 'in_transit'],
	ARRAY['2026-03-01 08:30:00', '2026-03-01T08:30:00Z', '2026-03-01', '2026-03-01T08:30:00.5+08:00'],
	NULL, true);
SELECT shipment_id, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') AS utc
FROM shipsync.carrier_snapshot WHERE run_id = :tzrun ORDER BY 1;
RESET TimeZone;

\c contrib_regression
DROP DATABASE reconcile_regress;
