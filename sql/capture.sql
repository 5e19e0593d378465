-- The capture trigger: one intent per change, in the user's transaction,
-- written into shipsync.inbox (the dispatcher takes it into the outbox).
CREATE EXTENSION pg_shipsync;
SELECT shipsync.create_provider('acme', 'generic', 'https://api.acme.example');
CREATE SCHEMA sales;
SET search_path = sales, public;
CREATE TABLE orders (
	id text PRIMARY KEY,
	address text,
	waybill text,
	status text
);
SELECT shipsync.attach('orders', 'acme', writeback => '{"tracking_number": "waybill", "status": "status"}');

-- insert, update, delete: create, update, cancel, with keys as text
INSERT INTO orders VALUES ('SO-1', '上海市浦东新区'), ('SO-2', 'Rue de Rivoli 1');
UPDATE orders SET address = '上海市徐汇区' WHERE id = 'SO-1';
DELETE FROM orders WHERE id = 'SO-2';
SELECT order_key, op FROM shipsync.inbox ORDER BY id;

-- each intent has its own idempotency key, fixed at capture
SELECT count(DISTINCT idempotency_key) = count(*) AS distinct_keys FROM shipsync.inbox;

-- an update of write-back columns only, or of nothing, enqueues nothing
UPDATE orders SET waybill = 'SF1', status = 'in_transit' WHERE id = 'SO-1';
UPDATE orders SET address = address WHERE id = 'SO-1';
SELECT count(*) FROM shipsync.inbox;

-- a changed key: the old order is cancelled, the new one created
UPDATE orders SET id = 'SO-1b' WHERE id = 'SO-1';
SELECT order_key, op FROM shipsync.inbox ORDER BY id OFFSET 4;

-- an aborted transaction leaves nothing
BEGIN;
INSERT INTO orders VALUES ('SO-3', 'x');
ROLLBACK;
SELECT count(*) FROM shipsync.inbox WHERE order_key = 'SO-3';

-- a savepoint rolled back takes its intents with it
BEGIN;
INSERT INTO orders VALUES ('SO-4', 'kept');
SAVEPOINT s;
INSERT INTO orders VALUES ('SO-5', 'dropped');
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT order_key, op FROM shipsync.inbox WHERE order_key IN ('SO-4', 'SO-5');

-- a key column that is not the primary key may not be null
CREATE TABLE loose (n serial PRIMARY KEY, ref text);
SELECT shipsync.attach('loose', 'acme', key_column => 'ref') > 0 AS attached;
\set VERBOSITY default
INSERT INTO loose (ref) VALUES (NULL);
INSERT INTO loose (ref) VALUES ('L-1');
SELECT o.order_key, o.op FROM shipsync.inbox o JOIN shipsync.binding b USING (binding_id)
WHERE b.tbl = 'loose'::regclass;

-- nor empty: a carrier takes no order without a reference.  A row the
-- table had before attach() with a null or empty key is given one by an
-- update, which creates its order; nothing was ever sent for the row
-- without a key, so nothing is cancelled, and deleting it captures nothing
CREATE TABLE keyless (n int PRIMARY KEY, ref text, address text);
INSERT INTO keyless VALUES (1, NULL, 'a'), (2, '', 'b'), (3, '', 'c');
SELECT shipsync.attach('keyless', 'acme', key_column => 'ref') > 0 AS attached;
INSERT INTO keyless VALUES (4, '', 'd');
UPDATE keyless SET address = 'b2' WHERE n = 2;
UPDATE keyless SET ref = 'K-1' WHERE n = 1;
UPDATE keyless SET ref = 'K-2' WHERE n = 2;
DELETE FROM keyless WHERE n = 3;
UPDATE keyless SET ref = '' WHERE n = 1;
SELECT o.order_key, o.op FROM shipsync.inbox o JOIN shipsync.binding b USING (binding_id)
WHERE b.tbl = 'keyless'::regclass ORDER BY o.id;
DROP TABLE keyless;

-- after detach, changes are no longer captured; captured intents stay
SELECT shipsync.detach('orders');
INSERT INTO orders VALUES ('SO-6', 'after detach');
SELECT count(*) FROM shipsync.inbox WHERE order_key = 'SO-6';
SELECT count(*) > 0 AS kept FROM shipsync.inbox o JOIN shipsync.binding b USING (binding_id)
WHERE b.tbl = 'orders'::regclass;

-- the writer of the order table needs no right on the outbox
CREATE ROLE shipsync_test_app LOGIN;
GRANT USAGE ON SCHEMA sales TO shipsync_test_app;
GRANT INSERT, UPDATE, DELETE, SELECT ON loose TO shipsync_test_app;
GRANT USAGE ON SEQUENCE loose_n_seq TO shipsync_test_app;
SET SESSION AUTHORIZATION shipsync_test_app;
INSERT INTO loose (ref) VALUES ('L-2');
SELECT count(*) FROM shipsync.inbox;
RESET SESSION AUTHORIZATION;
SELECT order_key, op FROM shipsync.inbox WHERE order_key = 'L-2';

-- the dispatcher's claim takes captured intents into the outbox, in order
SELECT order_key, op, state FROM shipsync.claim(1, 100, 60000) ORDER BY id;
SELECT count(*) AS left_in_inbox FROM shipsync.inbox;
SELECT order_key, op, state FROM shipsync.outbox WHERE state = 'pending' ORDER BY id;

-- capture keeps what it knows of the inbox for the life of the session,
-- and follows it when it changes under the session: a column added, an
-- index added (its entries are written), the extension dropped and created
-- again (a new inbox)
ALTER TABLE shipsync.inbox ADD COLUMN note text;
INSERT INTO loose (ref) VALUES ('L-3');
CREATE INDEX inbox_key_idx ON shipsync.inbox (order_key);
INSERT INTO loose (ref) VALUES ('L-4');
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT order_key, op, note FROM shipsync.inbox WHERE order_key IN ('L-3', 'L-4') ORDER BY order_key;
RESET enable_seqscan;
RESET enable_bitmapscan;
DROP INDEX shipsync.inbox_key_idx;
ALTER TABLE shipsync.inbox DROP COLUMN note;
INSERT INTO loose (ref) VALUES ('L-5');
SELECT order_key, op FROM shipsync.inbox WHERE order_key LIKE 'L-_' ORDER BY id;
DROP EXTENSION pg_shipsync CASCADE;
CREATE EXTENSION pg_shipsync;
SELECT shipsync.create_provider('acme', 'generic', 'https://api.acme.example') > 0 AS created;
SELECT shipsync.attach('loose', 'acme', key_column => 'ref') > 0 AS attached;
INSERT INTO loose (ref) VALUES ('L-6');
SELECT order_key, op FROM shipsync.inbox;

-- an update compares the old and new rows column by column: a dropped
-- column (which held a value in the old row) and a column added with a
-- default (not stored in rows written before) count as unchanged; a new
-- value of the added column is captured
ALTER TABLE loose ADD COLUMN scratch text;
INSERT INTO loose (ref, scratch) VALUES ('L-7', 'x');
ALTER TABLE loose DROP COLUMN scratch;
ALTER TABLE loose ADD COLUMN priority int DEFAULT 1;
UPDATE loose SET ref = ref WHERE ref = 'L-7';
UPDATE loose SET priority = 2 WHERE ref = 'L-7';
SELECT order_key, op FROM shipsync.inbox WHERE order_key = 'L-7' ORDER BY id;

-- a partitioned table: the triggers attach() makes are cloned onto each
-- partition, one created after attach() too, and capture (and validation)
-- take a partition's rows as the table's; another table's rows are not
CREATE TABLE parted (id int NOT NULL, region text NOT NULL, receiver_name text) PARTITION BY LIST (region);
CREATE TABLE parted_north PARTITION OF parted FOR VALUES IN ('north');
SELECT shipsync.attach('parted', 'acme', key_column => 'id', options => '{"validate": "reject"}') > 0 AS attached;
CREATE TABLE parted_south PARTITION OF parted FOR VALUES IN ('south');
INSERT INTO parted VALUES (1, 'north', 'Li'), (2, 'south', 'Wang');
UPDATE parted SET receiver_name = 'Zhao' WHERE id = 2;
DELETE FROM parted WHERE id = 1;
SELECT order_key, op FROM shipsync.inbox WHERE order_key IN ('1', '2') ORDER BY id;
-- an UPDATE that moves a row to another partition, which the server runs
-- as a DELETE and an INSERT, is an update of the order (not a cancel of its
-- shipment and a second one); with its key changed too, the old key is
-- cancelled and the new one created; a move that failed half-way (a
-- trigger of the new partition refused it) and was rolled back to a
-- savepoint leaves nothing behind for a later insert to pair with
UPDATE parted SET region = 'north' WHERE id = 2;
UPDATE parted SET region = 'south', id = 4 WHERE id = 2;
CREATE FUNCTION refuse_fail() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN IF NEW.receiver_name = 'fail' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NULL; END$$;
CREATE TRIGGER a_refuse AFTER INSERT ON parted FOR EACH ROW EXECUTE FUNCTION refuse_fail();
BEGIN;
SAVEPOINT s;
UPDATE parted SET region = 'north', receiver_name = 'fail' WHERE id = 4;
ROLLBACK TO SAVEPOINT s;
INSERT INTO parted VALUES (5, 'north', 'Qian');
COMMIT;
-- a row moved into a partition whose capture is disabled: its order is
-- cancelled as the transaction commits, as a DELETE would be
ALTER TABLE parted_north DISABLE TRIGGER shipsync_capture;
UPDATE parted SET region = 'north' WHERE id = 4;
ALTER TABLE parted_north ENABLE TRIGGER shipsync_capture;
SELECT order_key, op FROM shipsync.inbox WHERE order_key IN ('2', '4', '5') ORDER BY id;
CREATE TABLE not_parted (id int NOT NULL, region text NOT NULL, receiver_name text);
SELECT binding_id AS parted_binding FROM shipsync.binding WHERE tbl = 'parted'::regclass \gset
SELECT format('CREATE TRIGGER shipsync_capture AFTER INSERT ON not_parted FOR EACH ROW EXECUTE FUNCTION shipsync.capture(%L, %L, %L)',
	:parted_binding, (SELECT provider_id FROM shipsync.binding WHERE binding_id = :parted_binding), 'id') \gexec
INSERT INTO not_parted VALUES (3, 'north', 'Sun');
DROP TABLE not_parted, parted;
DROP FUNCTION refuse_fail();

-- a key column widened after attach(), as such and through a domain: an
-- intent's key is cast to the column's base type without its length, so
-- a longer key is never cut to another order's key, neither to render
-- the order nor to write its waybill back
CREATE DOMAIN short_ref AS varchar(5);
CREATE TABLE widened (ref varchar(5) PRIMARY KEY, address text, waybill text);
CREATE TABLE widened_d (ref short_ref PRIMARY KEY, address text, waybill text);
SELECT shipsync.attach('widened', 'acme', writeback => '{"tracking_number": "waybill"}') > 0 AS attached;
SELECT shipsync.attach('widened_d', 'acme', writeback => '{"tracking_number": "waybill"}') > 0 AS attached;
INSERT INTO widened VALUES ('ABCDE', 'first customer');
INSERT INTO widened_d VALUES ('ABCDE', 'first customer');
ALTER TABLE widened ALTER ref TYPE varchar(10);
ALTER TABLE widened_d ALTER ref TYPE varchar(10);
INSERT INTO widened VALUES ('ABCDEFGH', 'second customer');
INSERT INTO widened_d VALUES ('ABCDEFGH', 'second customer');
SELECT b.tbl, i.order_key, r.body
  FROM shipsync.inbox i JOIN shipsync.binding b USING (binding_id), shipsync.render_request(i.id) r
 WHERE b.tbl IN ('widened'::regclass, 'widened_d'::regclass) ORDER BY i.id;
\set ECHO none
SELECT format('PREPARE wb_%s AS %s', b.tbl, b.writeback_sql) FROM shipsync.binding b
 WHERE b.tbl IN ('widened'::regclass, 'widened_d'::regclass) \gexec
\set ECHO all
EXECUTE wb_widened('{ABCDEFGH}', '{NULL}', '{SF-2}', '{NULL}', '{NULL}', '{NULL}');
EXECUTE wb_widened_d('{ABCDEFGH}', '{NULL}', '{SF-2}', '{NULL}', '{NULL}', '{NULL}');
SELECT 'widened' AS tbl, * FROM widened UNION ALL SELECT 'widened_d', * FROM widened_d ORDER BY 1, 2;
DEALLOCATE wb_widened;
DEALLOCATE wb_widened_d;
DROP TABLE widened, widened_d;
DROP DOMAIN short_ref;

-- an integer key column widened after attach() (smallint to int, int to
-- bigint): a key beyond the old type's range renders and is written back,
-- and the orders rendered with it are not held up
CREATE TABLE widened_i (id int PRIMARY KEY, address text, waybill text);
CREATE TABLE widened_s (id smallint PRIMARY KEY, address text, waybill text);
SELECT shipsync.attach('widened_i', 'acme', writeback => '{"tracking_number": "waybill"}') > 0 AS attached;
SELECT shipsync.attach('widened_s', 'acme', writeback => '{"tracking_number": "waybill"}') > 0 AS attached;
ALTER TABLE widened_i ALTER id TYPE bigint;
ALTER TABLE widened_s ALTER id TYPE int;
INSERT INTO widened_i VALUES (7, 'small'), (3000000000, 'beyond int');
INSERT INTO widened_s VALUES (7, 'small'), (40000, 'beyond smallint');
SELECT b.tbl, i.order_key, r.body
  FROM shipsync.inbox i JOIN shipsync.binding b USING (binding_id), shipsync.render_request(i.id) r
 WHERE b.tbl IN ('widened_i'::regclass, 'widened_s'::regclass) ORDER BY i.id;
\set ECHO none
SELECT format('PREPARE wb_%s AS %s', b.tbl, b.writeback_sql) FROM shipsync.binding b
 WHERE b.tbl IN ('widened_i'::regclass, 'widened_s'::regclass) \gexec
\set ECHO all
EXECUTE wb_widened_i('{3000000000}', '{NULL}', '{SF-3}', '{NULL}', '{NULL}', '{NULL}');
EXECUTE wb_widened_s('{40000}', '{NULL}', '{SF-4}', '{NULL}', '{NULL}', '{NULL}');
SELECT 'widened_i' AS tbl, * FROM widened_i UNION ALL SELECT 'widened_s', * FROM widened_s ORDER BY 1, 2;
DEALLOCATE wb_widened_i;
DEALLOCATE wb_widened_s;
DROP TABLE widened_i, widened_s;

-- a real key column: its keys are printed as real (1.1), and read back as
-- real, not as double precision (1.1 is no real's value): the order is
-- found, not taken for deleted
CREATE TABLE real_key (id real PRIMARY KEY, address text, waybill text);
SELECT shipsync.attach('real_key', 'acme', writeback => '{"tracking_number": "waybill"}') > 0 AS attached;
INSERT INTO real_key VALUES (1.1, 'one point one'), (2.5, 'two and a half');
SELECT i.order_key, r.body
  FROM shipsync.inbox i JOIN shipsync.binding b USING (binding_id), shipsync.render_request(i.id) r
 WHERE b.tbl = 'real_key'::regclass ORDER BY i.id;
\set ECHO none
SELECT format('PREPARE wb_real_key AS %s', b.writeback_sql) FROM shipsync.binding b
 WHERE b.tbl = 'real_key'::regclass \gexec
\set ECHO all
EXECUTE wb_real_key('{1.1}', '{NULL}', '{SF-11}', '{NULL}', '{NULL}', '{NULL}');
SELECT * FROM real_key ORDER BY id;
DEALLOCATE wb_real_key;
DROP TABLE real_key;

-- row-level security forced on the table's owner: pg_shipsync reads and
-- writes orders as the owner, and an order its policies hide is not a
-- deleted one.  attach() refuses such a table; forced after attach(), its
-- orders fail to render and to be read, with an error saying why, instead
-- of being taken for gone and never sent
CREATE ROLE shipsync_test_owner;
GRANT USAGE ON SCHEMA sales TO shipsync_test_owner;
CREATE TABLE tenanted (id int PRIMARY KEY, tenant text NOT NULL, address text, waybill text);
ALTER TABLE tenanted OWNER TO shipsync_test_owner;
ALTER TABLE tenanted ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_tenant ON tenanted USING (tenant = current_setting('app.tenant', true));
SELECT shipsync.attach('tenanted', 'acme', writeback => '{"tracking_number": "waybill"}') > 0 AS attached;
INSERT INTO tenanted VALUES (1, 'north', 'Nanshan');
ALTER TABLE tenanted FORCE ROW LEVEL SECURITY;
SELECT r.body FROM shipsync.inbox i JOIN shipsync.binding b USING (binding_id), shipsync.render_request(i.id) r
 WHERE b.tbl = 'tenanted'::regclass;
SELECT shipsync.resync('tenanted', keys => '{1}') AS enqueued;
SELECT shipsync.detach('tenanted');
SELECT shipsync.attach('tenanted', 'acme', writeback => '{"tracking_number": "waybill"}') > 0 AS attached;
-- not forced: the owner sees every row
ALTER TABLE tenanted NO FORCE ROW LEVEL SECURITY;
SELECT shipsync.attach('tenanted', 'acme', writeback => '{"tracking_number": "waybill"}') > 0 AS attached;
SELECT r.body FROM shipsync.inbox i JOIN shipsync.binding b USING (binding_id), shipsync.render_request(i.id) r
 WHERE b.tbl = 'tenanted'::regclass;
-- forced, and a policy of the owner's lets it see and write every row
-- (the tenants' policy for the application, one for the owner): taken
CREATE POLICY owner_all ON tenanted TO shipsync_test_owner USING (true) WITH CHECK (true);
ALTER TABLE tenanted FORCE ROW LEVEL SECURITY;
SELECT shipsync.detach('tenanted');
SELECT shipsync.attach('tenanted', 'acme', writeback => '{"tracking_number": "waybill"}') > 0 AS attached;
SELECT r.body FROM shipsync.inbox i JOIN shipsync.binding b USING (binding_id), shipsync.render_request(i.id) r
 WHERE b.tbl = 'tenanted'::regclass;
-- ... but not beside a restrictive policy that may hide rows from it, nor
-- with one that lets it read every row but not write one back
CREATE POLICY north_only ON tenanted AS RESTRICTIVE USING (tenant = 'north');
SELECT r.body FROM shipsync.inbox i JOIN shipsync.binding b USING (binding_id), shipsync.render_request(i.id) r
 WHERE b.tbl = 'tenanted'::regclass;
DROP POLICY north_only ON tenanted;
ALTER POLICY owner_all ON tenanted USING (true) WITH CHECK (false);
SELECT r.body FROM shipsync.inbox i JOIN shipsync.binding b USING (binding_id), shipsync.render_request(i.id) r
 WHERE b.tbl = 'tenanted'::regclass;
DROP TABLE tenanted;
REVOKE USAGE ON SCHEMA sales FROM shipsync_test_owner;
DROP ROLE shipsync_test_owner;

-- a key of a date type is the same text whatever the session's DateStyle
-- (ISO): 07/12/2026, written by a session of SQL, DMY, was read back as
-- July 12th, another order's key, and that order was sent in its place;
-- resync() takes keys as the session writes them, and queues them as ISO
CREATE TABLE dated (d date PRIMARY KEY, customer text);
SELECT shipsync.attach('dated', 'acme') > 0 AS attached;
INSERT INTO dated VALUES ('2026-07-12', 'July');
SET DateStyle = 'SQL, DMY';
INSERT INTO dated VALUES ('2026-12-07', 'December');
RESET DateStyle;
SELECT i.order_key, r.body FROM shipsync.inbox i JOIN shipsync.binding b USING (binding_id),
	shipsync.render_request(i.id) r WHERE b.tbl = 'dated'::regclass ORDER BY i.id;
SELECT count(*) > 0 AS claimed FROM shipsync.claim(1, 100, 60000);
UPDATE shipsync.outbox o SET state = 'done' FROM shipsync.binding b
 WHERE b.binding_id = o.binding_id AND b.tbl = 'dated'::regclass;
SET DateStyle = 'SQL, DMY';
SELECT shipsync.resync('dated', keys => ARRAY['07/12/2026']) AS enqueued;
RESET DateStyle;
SELECT o.order_key, o.op, o.state FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id)
 WHERE b.tbl = 'dated'::regclass ORDER BY o.id;
DROP TABLE dated;
-- and a timestamptz key is the same text whatever the session's TimeZone
-- (UTC): the update of an order written in another zone was another order
CREATE TABLE stamped (at timestamptz PRIMARY KEY, customer text);
SELECT shipsync.attach('stamped', 'acme') > 0 AS attached;
SET TimeZone = 'Asia/Shanghai';
INSERT INTO stamped VALUES ('2026-12-07 18:00:00+08', 'Shanghai');
SET TimeZone = 'America/New_York';
UPDATE stamped SET customer = 'New York';
RESET TimeZone;
SELECT i.order_key, i.op FROM shipsync.inbox i JOIN shipsync.binding b USING (binding_id)
 WHERE b.tbl = 'stamped'::regclass ORDER BY i.id;
DROP TABLE stamped;
-- a real key is the same text whatever the session's extra_float_digits
-- (its shortest exact form): 1234567, written by a session of 0 (an old
-- application's ALTER DATABASE or ALTER ROLE ... SET), was "1.23457e+06",
-- no row's key: the order was taken for deleted and never sent
CREATE TABLE real_digits (id real PRIMARY KEY, customer text);
SELECT shipsync.attach('real_digits', 'acme') > 0 AS attached;
SET extra_float_digits = 0;
INSERT INTO real_digits VALUES (1234567, 'seven digits');
RESET extra_float_digits;
SELECT i.order_key, r.body FROM shipsync.inbox i JOIN shipsync.binding b USING (binding_id),
	shipsync.render_request(i.id) r WHERE b.tbl = 'real_digits'::regclass ORDER BY i.id;
DROP TABLE real_digits;
-- and a bytea key whatever the session's bytea_output (hex): the update of
-- an order made by a session of escape was another order, created again
CREATE TABLE bytes_keyed (id bytea PRIMARY KEY, customer text);
SELECT shipsync.attach('bytes_keyed', 'acme') > 0 AS attached;
INSERT INTO bytes_keyed VALUES ('ord1', 'hex');
SET bytea_output = 'escape';
UPDATE bytes_keyed SET customer = 'escape';
RESET bytea_output;
SELECT i.order_key, i.op FROM shipsync.inbox i JOIN shipsync.binding b USING (binding_id)
 WHERE b.tbl = 'bytes_keyed'::regclass ORDER BY i.id;
DROP TABLE bytes_keyed;

-- DROP TABLE of a table with a backlog: every waiting intent dead with its
-- table_dropped ticket (a lock taken per ticket filled the server's lock
-- table: "out of shared memory", and the table could not be dropped)
CREATE TABLE backlog (id int PRIMARY KEY, customer text);
SELECT shipsync.attach('backlog', 'acme') AS backlog_binding \gset
INSERT INTO backlog SELECT g, 'c' FROM generate_series(1, 30000) g;
DROP TABLE backlog;
SELECT state, error_class, count(*) FROM shipsync.outbox WHERE binding_id = :backlog_binding GROUP BY 1, 2;
SELECT kind, count(*) FROM shipsync.exception_ticket WHERE binding_id = :backlog_binding GROUP BY 1;
-- the tickets name the table as it was, not by a bare oid
SELECT o.table_name, count(*) FROM shipsync.open_tickets o
  JOIN shipsync.exception_ticket t USING (ticket_id) WHERE t.binding_id = :backlog_binding GROUP BY 1;

-- table inheritance: a row inserted into a child table fires no trigger of
-- its parent, so an attached parent's children's orders were never
-- captured, without a word.  attach() refuses a table with such children,
-- and an attached table gets none; each child attached on its own is
-- captured (a partition is no such child: above)
\set SHOW_CONTEXT never
CREATE TABLE legacy (id int PRIMARY KEY, customer text);
CREATE TABLE legacy_2026 () INHERITS (legacy);
SELECT shipsync.attach('legacy', 'acme') > 0 AS attached;
INSERT INTO legacy_2026 VALUES (1, 'child');
SELECT count(*) AS captured FROM shipsync.inbox i JOIN shipsync.binding b USING (binding_id)
 WHERE b.tbl = 'legacy'::regclass;
SELECT shipsync.attach('legacy_2026', 'acme', key_column => 'id') > 0 AS attached;
INSERT INTO legacy_2026 VALUES (2, 'child');
SELECT i.order_key, i.op FROM shipsync.inbox i JOIN shipsync.binding b USING (binding_id)
 WHERE b.tbl = 'legacy_2026'::regclass;
CREATE TABLE legacy_more (id int PRIMARY KEY, customer text);
SELECT shipsync.attach('legacy_more', 'acme') > 0 AS attached;
CREATE TABLE legacy_more_2027 () INHERITS (legacy_more);
CREATE TABLE legacy_other (id int NOT NULL, customer text);
ALTER TABLE legacy_other INHERIT legacy_more;
ALTER TABLE legacy_more ADD COLUMN note text;
-- detached, it may have children
SELECT shipsync.detach('legacy_more');
ALTER TABLE legacy_other ADD COLUMN note text;
ALTER TABLE legacy_other INHERIT legacy_more;
DROP TABLE legacy, legacy_more, legacy_other CASCADE;
\set SHOW_CONTEXT errors

-- An order key longer than 2,000 bytes is refused: its outbox index entry
-- is over btree's limit, and a claim, which moves the inbox into the
-- outbox in id order, failed on it (every claim after it too, for every
-- order of every table, and a DROP TABLE of its table).  A table whose key
-- has no btree index (here a hash exclusion constraint) takes such a key
-- itself.  An old row's long key was never sent: deleting the row, or
-- giving it a shorter key, captures no cancel
SELECT shipsync.create_provider('acme_long', 'generic', 'https://api.acme.example') > 0 AS created;
CREATE TABLE longkey (ref text NOT NULL, EXCLUDE USING hash (ref WITH =));
INSERT INTO longkey SELECT string_agg(md5('old' || g), '') FROM generate_series(1, 94) g;
SELECT shipsync.attach('longkey', 'acme_long', key_column => 'ref') > 0 AS attached;
INSERT INTO longkey SELECT string_agg(md5(g::text), '') FROM generate_series(1, 94) g;
INSERT INTO longkey SELECT left(string_agg(md5(g::text), ''), 2001) FROM generate_series(1, 94) g;
INSERT INTO longkey SELECT left(string_agg(md5(g::text), ''), 2000) FROM generate_series(1, 94) g;
UPDATE longkey SET ref = 'LK-1' WHERE ref LIKE md5('old1') || '%';
DELETE FROM longkey WHERE ref = 'LK-1';
SELECT length(order_key), op, state FROM shipsync.claim(
  (SELECT provider_id FROM shipsync.provider WHERE name = 'acme_long'), 10, 60000) ORDER BY id;
DROP TABLE longkey;

DROP EXTENSION pg_shipsync CASCADE;
DROP SCHEMA sales CASCADE;
DROP OWNED BY shipsync_test_app;
DROP ROLE shipsync_test_app;
