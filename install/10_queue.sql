-- install/10_queue.sql: The queue: providers, bindings, the outbox and inbox,
-- shipments, the delivery log, the exception ledger and the views over them.
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql.

------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------

CREATE TABLE @extschema@.provider (
	provider_id		integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name			text NOT NULL UNIQUE,
	dialect			text NOT NULL,
	base_url		text NOT NULL,
	timeout_ms		integer NOT NULL DEFAULT 10000,
	max_inflight	integer NOT NULL DEFAULT 256,
	max_attempts	integer NOT NULL DEFAULT 20,
	backoff_base_ms integer NOT NULL DEFAULT 1000,
	backoff_max_ms	integer NOT NULL DEFAULT 300000,
	rate_limit_per_s numeric NOT NULL DEFAULT 0,
	headers			jsonb NOT NULL DEFAULT '{}',
	auth			jsonb,
	options			jsonb NOT NULL DEFAULT '{}',
	paused			boolean NOT NULL DEFAULT false,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by		name NOT NULL DEFAULT SESSION_USER,
	updated_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_by		name NOT NULL DEFAULT SESSION_USER
);
COMMENT ON TABLE @extschema@.provider IS
	'One logistics endpoint: URL, dialect, limits, retry policy, and its auth type and the fields of it that are not secret (the secrets are encrypted in shipsync.secret). Readable by the extension owner only; see view shipsync.providers.';

CREATE TABLE @extschema@.binding (
	binding_id		integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	tbl				regclass NOT NULL UNIQUE,
	provider_id		integer NOT NULL,
	key_column		name NOT NULL,
	writeback		jsonb NOT NULL DEFAULT '{}',
	options			jsonb NOT NULL DEFAULT '{}',
	render_sql		text NOT NULL,
	writeback_sql	text,
	active			boolean NOT NULL DEFAULT true,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by		name NOT NULL DEFAULT SESSION_USER
);
COMMENT ON TABLE @extschema@.binding IS
	'Which CRM table is attached to which provider, its key column and its write-back map. Written by shipsync.attach() and shipsync.detach().';

-- The name an attached table had when it was dropped: binding.tbl, a
-- regclass, then shows a bare oid.  Kept by _on_drop() (the event
-- trigger's object_identity), shown by open_tickets and reconciliation.
-- A table of its own: binding is locked by every order insert's first
-- capture, and the update to 0.2 takes its lock last (a column added to it
-- held the orders while the views were replaced).
CREATE TABLE @extschema@.dropped_table (
	binding_id		integer PRIMARY KEY,
	name			text NOT NULL,
	dropped_at		timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE @extschema@.dropped_table IS
	'The name each attached table had when it was dropped (schema-qualified), by binding: binding.tbl then shows a bare oid. Written by DROP TABLE''s event trigger; read by the views open_tickets and reconciliation (table_name).';

-- No foreign key between two of the extension's dumped tables (binding to
-- provider here, crm_delivery to crm_source in 60_crm.sql): pg_dump dumps
-- their rows as data only, CREATE EXTENSION makes their constraints before
-- any row comes back, and pg_restore -j loads tables side by side in any
-- order, so a key refused the rows of whichever table came first (a
-- binding before its provider: the binding lost, every INSERT into the
-- attached table failed).  What the key kept, a trigger keeps: a provider
-- that a binding names cannot be deleted.
CREATE FUNCTION @extschema@._provider_in_use()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	bid integer;
BEGIN
	IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
		SELECT b.binding_id INTO bid FROM @extschema@.binding b LIMIT 1;
	ELSE
		SELECT b.binding_id INTO bid FROM @extschema@.binding b
		 WHERE b.provider_id OPERATOR(pg_catalog.=) OLD.provider_id LIMIT 1;
	END IF;
	IF bid IS NOT NULL AND TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
		RAISE EXCEPTION 'cannot truncate shipsync.provider: binding % names one of its providers', bid
			USING ERRCODE = 'foreign_key_violation',
				  HINT = 'Delete the bindings first, as the extension''s owner.';
	ELSIF bid IS NOT NULL THEN
		RAISE EXCEPTION 'provider "%" is still named by binding %', OLD.name, bid
			USING ERRCODE = 'foreign_key_violation',
				  DETAIL = 'A binding keeps its provider, attached or detached: its shipments and intents are that provider''s.',
				  HINT = 'Delete the provider''s bindings first, as the extension''s owner.';
	END IF;
	IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
		RETURN NULL;
	END IF;
	RETURN OLD;
END
$$;
COMMENT ON FUNCTION @extschema@._provider_in_use() IS
	'Internal: refuses to delete (or truncate) a provider that a binding names, as a foreign key would; the extension''s dumped tables have none, so that pg_restore -j can load them in any order.';
CREATE TRIGGER provider_in_use BEFORE DELETE ON @extschema@.provider
	FOR EACH ROW EXECUTE FUNCTION @extschema@._provider_in_use();
CREATE TRIGGER provider_in_use_truncate BEFORE TRUNCATE ON @extschema@.provider
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._provider_in_use();

-- No foreign keys and no CHECK constraints on the outbox: capture must cost
-- one narrow insert (a CHECK is re-read from its stored form by every
-- executor start, a tenth of the trigger's cost).  Only the capture trigger
-- and the dispatcher write it; op is create, update or cancel; state is one
-- of pending, in_flight, retrying, done, dead, invalid, coalesced.
-- Intent ids: the sequence advances by whole blocks that capture and this
-- default hand out one id at a time from shared memory, in order across
-- all backends (see capture.c): an intent captured after another committed
-- gets the larger id, without a sequence lock per row.
CREATE SEQUENCE @extschema@.outbox_id_seq INCREMENT BY 1024;
CREATE FUNCTION @extschema@._intent_id(seq regclass)
RETURNS bigint
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'shipsync_intent_id';
COMMENT ON FUNCTION @extschema@._intent_id(regclass) IS
	'Internal: the next intent id of shipsync.outbox, in order across all backends.';

-- unnest() of n arrays is n functions to PostgreSQL, each filling a tuple
-- store of its own: the workers' set-based statements read their batches
-- through this one instead (src/spi.c).  ROWS 10 is what the planner
-- assumes of unnest() of a parameter, so the plans stay as they were.
CREATE FUNCTION @extschema@._rows(VARIADIC "any")
RETURNS SETOF record
LANGUAGE C IMMUTABLE PARALLEL SAFE COST 1 ROWS 10
AS 'MODULE_PATHNAME', 'shipsync_rows';
COMMENT ON FUNCTION @extschema@._rows(VARIADIC "any") IS
	'Internal (the workers'' set-based statements): the rows of parallel arrays, as unnest() of several arrays gives them, in one pass; called with a column definition list of the arrays'' element types.';

CREATE TABLE @extschema@.outbox (
	id				bigint NOT NULL DEFAULT @extschema@._intent_id('@extschema@.outbox_id_seq') PRIMARY KEY,
	binding_id		integer NOT NULL,
	provider_id		integer NOT NULL,
	order_key		text COLLATE "C" NOT NULL,
	op				text NOT NULL,
	idempotency_key uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
	state			text NOT NULL DEFAULT 'pending',
	attempts		integer NOT NULL DEFAULT 0,
	next_attempt_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	lease_until		timestamptz,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at		timestamptz,
	done_at			timestamptz,
	request_method	text,
	request_url		text,
	request_body	text,
	request_digest	text,
	last_status		integer,
	error_class		text,
	last_error		text,
	coalesced_into	bigint,
	content_digest	bigint,
	request_kind	text CHECK (request_kind IN ('create', 'update', 'cancel', 'register')),
	waybill			text
);
ALTER SEQUENCE @extschema@.outbox_id_seq OWNED BY @extschema@.outbox.id;
COMMENT ON TABLE @extschema@.outbox IS
	'One row per intent (create, update or cancel the shipment of one order), written by the capture trigger in the order''s own transaction. States: pending, in_flight, retrying, done, dead, invalid, coalesced. The request is rendered and stored before its first attempt and re-sent unchanged with the same idempotency key.';
COMMENT ON COLUMN @extschema@.outbox.idempotency_key IS 'Sent as Idempotency-Key on every attempt of this intent.';
COMMENT ON COLUMN @extschema@.outbox.coalesced_into IS 'For a coalesced update: the intent whose request already carried this change.';
COMMENT ON COLUMN @extschema@.outbox.content_digest IS 'A digest of the order row this request was rendered from, without the binding''s write-back columns (shipsync._row_digest); copied onto the shipment when the request succeeds.';
COMMENT ON COLUMN @extschema@.outbox.request_kind IS 'What the stored request does at the carrier (create, update, cancel or register), decided when it was rendered and stored with it: how its answer is applied.';
COMMENT ON COLUMN @extschema@.outbox.waybill IS 'For a registration (op register): the waybill it registers at the tracking provider, the main one or a piece of a multi-piece shipment, given when it was enqueued; what its request names and its success records, whatever became of the other registrations of the order.';

/*
 * The outbox keeps every intent, done ones too, so autovacuum's default
 * threshold (a fifth of the table) grows with its history: on an outbox of
 * 600,000 intents, a backlog of 40,000 sent through the claim left 74,000
 * dead versions that no vacuum came for.  Until one does, the due index
 * keeps an entry of every version that was pending, and the claim and the
 * look for the next retry walk them all from the start of the provider's
 * range at every pass (889 and 661 buffers an order at a trickle, against
 * 4 and 3).  So: vacuumed after a fixed number of dead versions, whatever
 * its size, and its indexes always with it (a vacuum that left the dead
 * entries of a large table's indexes for later, as PostgreSQL may when
 * few of its pages have any, left the walk too).  TAP 052.
 */
ALTER TABLE @extschema@.outbox SET (autovacuum_vacuum_scale_factor = 0,
	autovacuum_vacuum_threshold = 1000, vacuum_index_cleanup = on);

/*
 * What the capture trigger writes, in the user's transaction: a heap with no
 * index at all, so that capturing costs the user one small heap tuple (the
 * indexed outbox cost a quarter of a plain insert's speed).  The dispatcher
 * moves these rows into the outbox, indexes and all, in its own
 * transactions, as soon as a commit tells it of new intents; ids are the
 * outbox's intent ids, so order is kept.  Rows come and go: vacuum it
 * after every 1,000 of them rather than after a fifth of the table, and
 * not for inserts (rows that will be deleted need no freezing; while a
 * provider is paused, each insert-driven vacuum re-read the whole backlog).
 * Every take reads the inbox whole, empty pages too, until a vacuum
 * truncates them: after 10,000, the pages a backlog of 20,000 left (207)
 * were read at every take of the trickle after, until 10,000 more orders
 * had come (TAP 052).
 */
CREATE TABLE @extschema@.inbox (
	id				bigint NOT NULL,
	binding_id		integer NOT NULL,
	provider_id		integer NOT NULL,
	order_key		text COLLATE "C" NOT NULL,
	op				text NOT NULL,
	idempotency_key uuid NOT NULL,
	created_at		timestamptz NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
		autovacuum_vacuum_insert_threshold = -1);
-- no index, so no primary key: a publication FOR ALL TABLES (a DBA's
-- logical replication of the orders' database) would refuse the
-- dispatcher's every DELETE of what it moves, and no order would be sent
ALTER TABLE @extschema@.inbox REPLICA IDENTITY FULL;
COMMENT ON TABLE @extschema@.inbox IS
	'Intents just captured, not yet taken into shipsync.outbox by the dispatcher (it does so within milliseconds of the commit, or when a paused provider is resumed). No index: capture costs the user one small heap insert. shipsync.queue_status and shipsync.trace() count these as pending.';

CREATE INDEX outbox_due_idx ON @extschema@.outbox (provider_id, next_attempt_at, id)
	WHERE state IN ('pending', 'retrying');
CREATE INDEX outbox_order_idx ON @extschema@.outbox (binding_id, order_key, id)
	WHERE state IN ('pending', 'retrying', 'in_flight');
CREATE INDEX outbox_attention_idx ON @extschema@.outbox (provider_id, state)
	WHERE state IN ('dead', 'invalid');
-- the intents in flight and their leases, for the sweep of expired leases
-- at every idle check: it must not read a paused provider's backlog
CREATE INDEX outbox_lease_idx ON @extschema@.outbox (lease_until)
	WHERE state = 'in_flight';

-- A provider's base_url changed (by its owner, UPDATE shipsync.provider):
-- the requests stored for its open intents go to the new one.  A request
-- is rendered and stored at its first attempt, its URL with it, and every
-- retry, retry() and requeue() sent the stored URL: a wrong base_url fixed
-- (a 404, a forbidden_host, a carrier's new endpoint) was never reached by
-- the intents stored before, which went on failing where they had.  Only
-- the URL's base changes; the method, body and idempotency key stay as
-- stored.  Intents done or coalesced keep the URL they were sent to.
CREATE FUNCTION @extschema@._provider_url_changed()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer := pg_catalog.length(OLD.base_url);
BEGIN
	UPDATE @extschema@.outbox o
	   SET request_url = NEW.base_url OPERATOR(pg_catalog.||) pg_catalog.substr(o.request_url, n OPERATOR(pg_catalog.+) 1)
	 WHERE o.provider_id OPERATOR(pg_catalog.=) NEW.provider_id
	   AND o.state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'retrying', 'in_flight', 'dead', 'invalid'])
	   AND pg_catalog.starts_with(o.request_url, OLD.base_url)
	   AND pg_catalog.substr(o.request_url, n OPERATOR(pg_catalog.+) 1, 1) OPERATOR(pg_catalog.=) ANY (ARRAY['', '/']);
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._provider_url_changed() IS
	'Internal: when a provider''s base_url changes, the stored requests of its intents not yet done (pending, retrying, in flight, dead, invalid) are given the new base in place of the old; their method, body and idempotency key stay as stored.';
CREATE TRIGGER provider_url_changed AFTER UPDATE OF base_url ON @extschema@.provider
	FOR EACH ROW WHEN (OLD.base_url IS DISTINCT FROM NEW.base_url)
	EXECUTE FUNCTION @extschema@._provider_url_changed();

CREATE TABLE @extschema@.shipment (
	shipment_id		bigint GENERATED ALWAYS AS IDENTITY,
	binding_id		integer NOT NULL,
	order_key		text COLLATE "C" NOT NULL,
	provider_id		integer NOT NULL,
	provider_shipment_id text,
	tracking_number text COLLATE "C",
	label_url		text,
	status			text NOT NULL DEFAULT 'pending',
	raw_status		text,
	fees			jsonb,
	fee_total		numeric,
	request_digest	text,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	waybills		jsonb,
	content_digest	bigint,
	-- the natural key is the primary key: one index less to maintain per shipment
	PRIMARY KEY (binding_id, order_key, provider_id)
);
CREATE INDEX shipment_tracking_idx ON @extschema@.shipment (provider_id, tracking_number);
COMMENT ON TABLE @extschema@.shipment IS
	'One per order and provider: the carrier''s shipment id, tracking number, label, canonical status (raw status beside it) and fees (numeric, never float).';
COMMENT ON COLUMN @extschema@.shipment.waybills IS
	'Every waybill the carrier returned (SF Express: waybillNoInfoList, main, child and return waybills); tracking_number holds the main one.';
COMMENT ON COLUMN @extschema@.shipment.content_digest IS
	'The digest of the order row (without its write-back columns) that the last successful create or update was rendered from: reconciliation compares it with the row now (kind address_changed_after_send). NULL for shipments recorded before version 0.2.';

CREATE TABLE @extschema@.delivery_log (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	outbox_id		bigint NOT NULL,
	attempt			integer NOT NULL,
	provider_id		integer NOT NULL,
	at				timestamptz NOT NULL DEFAULT pg_catalog.now(),
	method			text,
	url				text,
	http_status		integer,
	latency_ms		double precision,
	outcome			text NOT NULL,
	error_class		text,
	error			text,
	request_digest	text
);
CREATE INDEX delivery_log_outbox_idx ON @extschema@.delivery_log (outbox_id);
CREATE INDEX delivery_log_at_idx ON @extschema@.delivery_log USING brin (at);
COMMENT ON TABLE @extschema@.delivery_log IS
	'Every HTTP attempt: intent, attempt number, status code, latency, outcome (done, retry, dead), error class and the SHA-256 of the request body. No headers, so no secrets.';

/*
 * Write-backs waiting for an order row another session holds: the
 * carrier's answer is recorded (shipment, fees, log, the intent done with
 * error_class order_locked), only its write-back onto the row is not.  The
 * dispatcher writes the shipment's fields back from shipsync.shipment as
 * soon as the row is free, never asking the carrier again (apply.c,
 * outbox_writeback_waiting()); a row held longer than
 * shipsync.writeback_wait_ticket opens an order_held ticket, resolved when
 * the write-back lands.  One row per shipment; outbox_ids are the intents
 * whose answers wait.
 */
CREATE TABLE @extschema@.writeback_wait (
	binding_id		integer NOT NULL,
	order_key		text COLLATE "C" NOT NULL,
	provider_id		integer NOT NULL,
	outbox_ids		bigint[] NOT NULL,
	since			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	tries			integer NOT NULL DEFAULT 1,
	next_at			timestamptz NOT NULL,
	last_error		text,
	ticketed		boolean NOT NULL DEFAULT false,
	PRIMARY KEY (binding_id, order_key, provider_id)
);
CREATE INDEX writeback_wait_due_idx ON @extschema@.writeback_wait (next_at);
COMMENT ON TABLE @extschema@.writeback_wait IS
	'Shipments whose write-back onto the order row waits for a row or table lock another session holds (an open SELECT ... FOR UPDATE, a forgotten prepared transaction): their answers are recorded and their intents done (error_class order_locked); the dispatcher writes them back as soon as the row is free, without asking the carrier again.';

CREATE TABLE @extschema@.exception_ticket (
	ticket_id		bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	kind			text NOT NULL,
	binding_id		integer,
	order_key		text COLLATE "C",
	provider_id		integer,
	outbox_id		bigint,
	detail			text,
	opened_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	acknowledged_at timestamptz,
	acknowledged_by name,
	resolved_at		timestamptz,
	resolved_by		name,
	resolution		text,
	acknowledgement text,
	tracking_number text COLLATE "C",
	subject			text,
	facts			jsonb,
	last_seen_at	timestamptz,
	reopen_count	integer NOT NULL DEFAULT 0,
	reopened_at		timestamptz,
	run_id			bigint
);
CREATE INDEX exception_ticket_open_idx ON @extschema@.exception_ticket (kind, opened_at)
	WHERE resolved_at IS NULL;
COMMENT ON TABLE @extschema@.exception_ticket IS
	'The exception ledger: one ticket per problem and kind (a dead intent, a failed write-back, a discrepancy found by reconciliation), open, then acknowledged, then resolved, with who and when; seen again after its resolution, it is reopened. Its history is in shipsync.ticket_event.';
COMMENT ON COLUMN @extschema@.exception_ticket.acknowledged_by IS
	'Who set acknowledged_at (shipsync.ack()): set by the server, never by the caller.';
COMMENT ON COLUMN @extschema@.exception_ticket.resolved_by IS
	'Who set resolved_at (shipsync.resolve(), retry(), requeue(), or reconcile when a pass no longer saw the problem): set by the server, never by the caller.';
COMMENT ON COLUMN @extschema@.exception_ticket.resolution IS
	'The note given to shipsync.resolve(), or why reconciliation resolved it.';
COMMENT ON COLUMN @extschema@.exception_ticket.acknowledgement IS
	'The note given to shipsync.ack().';
COMMENT ON COLUMN @extschema@.exception_ticket.tracking_number IS 'The tracking number the problem is about, when known.';
COMMENT ON COLUMN @extschema@.exception_ticket.subject IS 'What the ticket is about when that is not an order: the carrier''s shipment id (orphan_at_carrier), a tracking number (unmatched_expired, fee_mismatch of a billed waybill no shipment has); for the other fee_mismatch tickets, which row of shipsync.fee_difference (its kind and currency, e.g. amount_mismatch CNY).';
COMMENT ON COLUMN @extschema@.exception_ticket.facts IS 'The facts of a discrepancy found by reconciliation, as JSON (both sides'' values); shown as detail in shipsync.reconciliation.';
COMMENT ON COLUMN @extschema@.exception_ticket.last_seen_at IS 'When the problem was last seen (the last reconciliation pass that found it, the last intent that died of it).';
COMMENT ON COLUMN @extschema@.exception_ticket.reopen_count IS 'How many times the ticket was seen again after it had been resolved.';
COMMENT ON COLUMN @extschema@.exception_ticket.reopened_at IS 'When it was last reopened.';
COMMENT ON COLUMN @extschema@.exception_ticket.run_id IS 'The reconciliation run (shipsync.reconcile_run) that last saw it; NULL for tickets of the dispatcher.';

------------------------------------------------------------------------------
-- Views
------------------------------------------------------------------------------

CREATE VIEW @extschema@.queue_status AS
SELECT p.name AS provider,
	   p.paused,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'pending')
		   + coalesce(i.n, 0) AS pending,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'in_flight') AS in_flight,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'retrying') AS retrying,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'dead') AS dead,
	   pg_catalog.count(*) FILTER (WHERE o.state = 'invalid') AS invalid,
	   pg_catalog.now() - LEAST(pg_catalog.min(o.created_at)
		   FILTER (WHERE o.state IN ('pending', 'retrying', 'in_flight')),
		   i.oldest) AS oldest_pending_age
FROM @extschema@.provider p
-- the inbox has no index: read once for all providers, not once each
LEFT JOIN (SELECT i.provider_id, pg_catalog.count(*) AS n,
				  pg_catalog.min(i.created_at) AS oldest
		   FROM @extschema@.inbox i GROUP BY i.provider_id) i
	   ON i.provider_id = p.provider_id
LEFT JOIN @extschema@.outbox o
	   ON o.provider_id = p.provider_id
	  AND o.state IN ('pending', 'in_flight', 'retrying', 'dead', 'invalid')
GROUP BY p.provider_id, p.name, p.paused, i.n, i.oldest;
COMMENT ON VIEW @extschema@.queue_status IS
	'Per provider: intents pending, in flight, retrying, dead and invalid, and the age of the oldest one not yet delivered.';

CREATE VIEW @extschema@.providers AS
SELECT provider_id, name, dialect, base_url, timeout_ms, max_inflight, max_attempts,
	   backoff_base_ms, backoff_max_ms, rate_limit_per_s, paused,
	   CASE WHEN auth IS NULL THEN NULL
			ELSE pg_catalog.jsonb_build_object('type', auth->>'type', 'secret', '********') END AS auth,
	   created_at, created_by, updated_at, updated_by
FROM @extschema@.provider;
COMMENT ON VIEW @extschema@.providers IS
	'Providers with their credentials masked: what operators and readers may see.';

------------------------------------------------------------------------------
-- pg_dump: these tables hold the user's data, not the extension's
------------------------------------------------------------------------------

SELECT pg_catalog.pg_extension_config_dump('@extschema@.provider', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.binding', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.inbox', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.shipment', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.delivery_log', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.writeback_wait', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.exception_ticket', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.dropped_table', '');
-- and their identity sequences, one statement each (each call updates the
-- extension's catalog row)
SELECT pg_catalog.pg_extension_config_dump('@extschema@.provider_provider_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.binding_binding_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.shipment_shipment_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.delivery_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.exception_ticket_ticket_id_seq', '');
