-- install/65_ledger.sql: The exception ledger's lifecycle: one ticket per
-- problem, open -> acknowledged -> resolved, reopened when the problem comes
-- back, its history, and the views over it.
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql.

------------------------------------------------------------------------------
-- One ticket per problem
--
-- A problem is a kind and what it is about: an order (provider, binding,
-- order key) or, for problems without an order, a subject (a carrier's
-- shipment id, a tracking number).  At most one ticket per problem is open;
-- a problem seen again after its ticket was resolved reopens that ticket.
-- The dispatcher and the SQL functions simply INSERT a ticket: the trigger
-- _ticket_fold turns that into a refresh of the open ticket, or a reopen.
-- Reconciliation (70_reconcile.sql) merges its findings set-based itself.
------------------------------------------------------------------------------

CREATE UNIQUE INDEX exception_ticket_open_key ON @extschema@.exception_ticket
	(kind, (coalesce(provider_id, 0)), (coalesce(binding_id, 0)),
	 (coalesce(order_key, '')), (coalesce(subject, '')))
	WHERE resolved_at IS NULL;
CREATE INDEX exception_ticket_problem_idx ON @extschema@.exception_ticket
	(kind, (coalesce(provider_id, 0)), (coalesce(binding_id, 0)),
	 (coalesce(order_key, '')), (coalesce(subject, '')), ticket_id);

CREATE FUNCTION @extschema@._ticket_fold()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t record;
BEGIN
	-- a restore loads tickets as they were, several of one problem too (0.1
	-- opened one per dead intent): folded, a resolved one was reopened and
	-- the others lost.  A restore is a superuser session with
	-- check_function_bodies off, as pg_dump's scripts and pg_restore set it
	-- (_restoring() in 80_security.sql, as _audit_row() tells it; never
	-- a worker's session, whose table owners' code may turn it off).
	IF @extschema@._restoring() THEN
		RETURN NEW;
	END IF;
	-- one writer per problem at a time, so that two transactions cannot
	-- both find no open ticket and both open one.  The kinds opened by the
	-- thousand in one statement have one writer each, which serializes
	-- itself: _on_drop() (the dropped table's binding row) and
	-- _expire_unmatched() (a lock per provider).  A lock per ticket there
	-- filled the server's lock table ("out of shared memory").  So did the
	-- fee functions' (fee_currency_mixed, and writeback_failed without a
	-- provider: a fee total the row did not take), a ticket for each order
	-- of a month's statement: theirs is one lock per order table.
	IF NEW.kind OPERATOR(pg_catalog.=) 'fee_currency_mixed'
	   OR (NEW.kind OPERATOR(pg_catalog.=) 'writeback_failed' AND NEW.provider_id IS NULL) THEN
		PERFORM pg_advisory_xact_lock(hashtextextended(concat_ws('|', 'shipsync fee ticket',
			NEW.binding_id), 0));
	ELSIF NEW.kind OPERATOR(pg_catalog.<>) ALL (ARRAY['table_dropped', 'unmatched_expired']) THEN
		PERFORM pg_advisory_xact_lock(hashtextextended(concat_ws('|', 'shipsync ticket', NEW.kind,
			NEW.provider_id, NEW.binding_id, NEW.order_key, NEW.subject), 0));
	END IF;
	SELECT x.ticket_id, x.resolved_at INTO t
	  FROM @extschema@.exception_ticket x
	 WHERE x.kind OPERATOR(pg_catalog.=) NEW.kind
	   AND coalesce(x.provider_id, 0) OPERATOR(pg_catalog.=) coalesce(NEW.provider_id, 0)
	   AND coalesce(x.binding_id, 0) OPERATOR(pg_catalog.=) coalesce(NEW.binding_id, 0)
	   AND coalesce(x.order_key, '') OPERATOR(pg_catalog.=) coalesce(NEW.order_key, '')
	   AND coalesce(x.subject, '') OPERATOR(pg_catalog.=) coalesce(NEW.subject, '')
	 ORDER BY x.resolved_at IS NULL DESC, x.ticket_id DESC
	 LIMIT 1;
	IF NOT FOUND THEN
		NEW.last_seen_at := coalesce(NEW.last_seen_at, NEW.opened_at);
		RETURN NEW;
	END IF;
	UPDATE @extschema@.exception_ticket x
	   SET detail = NEW.detail,
		   outbox_id = coalesce(NEW.outbox_id, x.outbox_id),
		   tracking_number = coalesce(NEW.tracking_number, x.tracking_number),
		   facts = coalesce(NEW.facts, x.facts),
		   last_seen_at = pg_catalog.now(),
		   resolved_at = NULL,
		   resolved_by = NULL,
		   resolution = NULL,
		   acknowledged_at = CASE WHEN t.resolved_at IS NULL THEN x.acknowledged_at END,
		   acknowledged_by = CASE WHEN t.resolved_at IS NULL THEN x.acknowledged_by END,
		   acknowledgement = CASE WHEN t.resolved_at IS NULL THEN x.acknowledgement END,
		   reopen_count = x.reopen_count OPERATOR(pg_catalog.+)
			   CASE WHEN t.resolved_at IS NULL THEN 0 ELSE 1 END,
		   reopened_at = CASE WHEN t.resolved_at IS NULL THEN x.reopened_at ELSE pg_catalog.now() END
	 WHERE x.ticket_id OPERATOR(pg_catalog.=) t.ticket_id;
	IF t.resolved_at IS NOT NULL THEN
		PERFORM pg_catalog.pg_notify('shipsync', pg_catalog.json_build_object('event', 'ticket_reopened',
			'ticket_id', t.ticket_id, 'kind', NEW.kind, 'binding_id', NEW.binding_id,
			'order_key', NEW.order_key)::text);
	END IF;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._ticket_fold() IS
	'Internal: a ticket inserted for a problem that already has one refreshes the open ticket, or reopens the last resolved one (reopen_count + 1), instead of adding a second.';
CREATE TRIGGER exception_ticket_fold BEFORE INSERT ON @extschema@.exception_ticket
	FOR EACH ROW WHEN (NEW.run_id IS NULL)
	EXECUTE FUNCTION @extschema@._ticket_fold();

------------------------------------------------------------------------------
-- History: every step of every ticket, with who and when
------------------------------------------------------------------------------

CREATE TABLE @extschema@.ticket_event (
	ticket_id		bigint NOT NULL,
	at				timestamptz NOT NULL DEFAULT pg_catalog.now(),
	event			text NOT NULL,
	actor			name,
	note			text
);
CREATE INDEX ticket_event_ticket_idx ON @extschema@.ticket_event (ticket_id, at);
CREATE INDEX ticket_event_at_idx ON @extschema@.ticket_event USING brin (at);
-- no primary key: a replica identity of its own, for a publication FOR
-- ALL TABLES (see shipsync.inbox)
ALTER TABLE @extschema@.ticket_event REPLICA IDENTITY FULL;
COMMENT ON TABLE @extschema@.ticket_event IS
	'The history of the exception ledger: one row per step of a ticket (opened, acknowledged, resolved, reopened), with when, who (a user''s session user, or the extension''s own worker: dispatcher, reconcile) and the note given. Written by triggers on shipsync.exception_ticket; the daily summaries are computed from it.';
COMMENT ON COLUMN @extschema@.ticket_event.event IS 'opened, acknowledged, resolved or reopened.';
COMMENT ON COLUMN @extschema@.ticket_event.actor IS 'Who took the step: a session user, or dispatcher or reconcile for the extension''s workers.';

-- Who took a step is shipsync._actor() (80_security.sql): the session
-- user, or the extension's worker (dispatcher, reconcile).  The notes are
-- those given to ack() and resolve(), or reconciliation's.

CREATE FUNCTION @extschema@._ticket_opened()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- a restore loads the history as it was, beside the tickets: recorded
	-- again, every ticket was opened twice (as _ticket_fold() tells a
	-- restore)
	IF @extschema@._restoring() THEN
		RETURN NULL;
	END IF;
	INSERT INTO @extschema@.ticket_event (ticket_id, at, event, actor)
	SELECT n.ticket_id, n.opened_at, 'opened', @extschema@._actor() FROM new_tickets n;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._ticket_opened() IS
	'Internal: records the opening of new tickets in shipsync.ticket_event (as the extension''s owner: whoever may change a ticket cannot write its history).';
CREATE TRIGGER exception_ticket_opened AFTER INSERT ON @extschema@.exception_ticket
	REFERENCING NEW TABLE AS new_tickets
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._ticket_opened();

CREATE FUNCTION @extschema@._ticket_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO @extschema@.ticket_event (ticket_id, at, event, actor, note)
	SELECT n.ticket_id, e.at, e.event, coalesce(e.actor, @extschema@._actor()), e.note
	FROM old_tickets o
	JOIN new_tickets n ON n.ticket_id OPERATOR(pg_catalog.=) o.ticket_id
	CROSS JOIN LATERAL (VALUES
		('reopened', o.resolved_at IS NOT NULL AND n.resolved_at IS NULL,
		 coalesce(n.reopened_at, pg_catalog.now()), NULL::name, NULL::text),
		('acknowledged', o.acknowledged_at IS NULL AND n.acknowledged_at IS NOT NULL,
		 n.acknowledged_at, n.acknowledged_by, n.acknowledgement),
		('resolved', o.resolved_at IS NULL AND n.resolved_at IS NOT NULL,
		 n.resolved_at, n.resolved_by, n.resolution)
	) AS e(event, happened, at, actor, note)
	WHERE e.happened;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._ticket_changed() IS
	'Internal: records acknowledgements, resolutions and reopenings of tickets in shipsync.ticket_event.';
CREATE TRIGGER exception_ticket_changed AFTER UPDATE ON @extschema@.exception_ticket
	REFERENCING OLD TABLE AS old_tickets NEW TABLE AS new_tickets
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._ticket_changed();

------------------------------------------------------------------------------
-- Views
------------------------------------------------------------------------------

CREATE VIEW @extschema@.open_tickets AS
SELECT t.ticket_id,
	   t.kind,
	   CASE WHEN t.acknowledged_at IS NULL THEN 'open' ELSE 'acknowledged' END AS state,
	   pg_catalog.now() OPERATOR(pg_catalog.-) coalesce(t.reopened_at, t.opened_at) AS age,
	   p.name AS provider,
	   b.tbl AS "table",
	   t.order_key,
	   t.tracking_number,
	   t.subject,
	   t.opened_at,
	   t.reopen_count,
	   t.last_seen_at,
	   t.acknowledged_by,
	   -- (given since the ticket was last (re)opened: a reopening clears
	   -- the notes of before)
	   (SELECT e.note FROM @extschema@.ticket_event e
		 WHERE e.ticket_id OPERATOR(pg_catalog.=) t.ticket_id AND e.note IS NOT NULL
		   AND e.at OPERATOR(pg_catalog.>=) coalesce(t.reopened_at, t.opened_at)
		 ORDER BY e.at DESC LIMIT 1) AS last_note,
	   t.detail,
	   -- (a regclass shows a dropped table as a bare oid)
	   coalesce(d.name, b.tbl::text) AS table_name
FROM @extschema@.exception_ticket t
LEFT JOIN @extschema@.provider p ON p.provider_id OPERATOR(pg_catalog.=) t.provider_id
LEFT JOIN @extschema@.binding b ON b.binding_id OPERATOR(pg_catalog.=) t.binding_id
LEFT JOIN @extschema@.dropped_table d ON d.binding_id OPERATOR(pg_catalog.=) t.binding_id
WHERE t.resolved_at IS NULL;
COMMENT ON VIEW @extschema@.open_tickets IS
	'Every ticket not resolved, open or acknowledged: its kind, how long since it was (re)opened, the order and provider it is about, and the last note given.';
COMMENT ON COLUMN @extschema@.open_tickets.ticket_id IS 'The ticket, for shipsync.ack() and shipsync.resolve().';
COMMENT ON COLUMN @extschema@.open_tickets.kind IS 'What went wrong: dead_intent, invalid_order, writeback_failed, order_held, auth_failed, unmatched_expired, or a reconciliation kind (see shipsync.reconciliation).';
COMMENT ON COLUMN @extschema@.open_tickets.state IS 'open, or acknowledged (someone is on it).';
COMMENT ON COLUMN @extschema@.open_tickets.age IS 'Time since the ticket was opened, or last reopened.';
COMMENT ON COLUMN @extschema@.open_tickets.provider IS 'The provider it is about.';
COMMENT ON COLUMN @extschema@.open_tickets."table" IS 'The attached table of the order, when it is about an order.';
COMMENT ON COLUMN @extschema@.open_tickets.order_key IS 'The order''s key, as text, when it is about an order.';
COMMENT ON COLUMN @extschema@.open_tickets.tracking_number IS 'The tracking number it is about, when known.';
COMMENT ON COLUMN @extschema@.open_tickets.subject IS 'What it is about when that is not an order: the carrier''s shipment id or a tracking number.';
COMMENT ON COLUMN @extschema@.open_tickets.opened_at IS 'When the ticket was first opened.';
COMMENT ON COLUMN @extschema@.open_tickets.reopen_count IS 'How many times it came back after being resolved.';
COMMENT ON COLUMN @extschema@.open_tickets.table_name IS 'The name of the table, as text: that of a dropped table as it was when dropped (schema-qualified), where "table" shows a bare oid.';
COMMENT ON COLUMN @extschema@.open_tickets.last_seen_at IS 'When the problem was last seen.';
COMMENT ON COLUMN @extschema@.open_tickets.acknowledged_by IS 'Who acknowledged it, if anyone.';
COMMENT ON COLUMN @extschema@.open_tickets.last_note IS 'The last note given with shipsync.ack() or shipsync.resolve() since the ticket was (re)opened.';
COMMENT ON COLUMN @extschema@.open_tickets.detail IS 'What happened, in words.';

CREATE VIEW @extschema@.ticket_summary AS
WITH ev AS (
	SELECT e.at, e.event, t.kind, t.provider_id,
		   CASE WHEN e.event OPERATOR(pg_catalog.=) 'resolved' THEN
			   e.at OPERATOR(pg_catalog.-) (SELECT pg_catalog.max(o.at) FROM @extschema@.ticket_event o
				   WHERE o.ticket_id OPERATOR(pg_catalog.=) e.ticket_id
					 AND o.event IN ('opened', 'reopened') AND o.at OPERATOR(pg_catalog.<=) e.at)
		   END AS took
	FROM @extschema@.ticket_event e
	JOIN @extschema@.exception_ticket t ON t.ticket_id OPERATOR(pg_catalog.=) e.ticket_id
)
SELECT ev.at::date AS day,
	   ev.kind,
	   p.name AS provider,
	   pg_catalog.count(*) FILTER (WHERE ev.event IN ('opened', 'reopened')) AS opened,
	   pg_catalog.count(*) FILTER (WHERE ev.event OPERATOR(pg_catalog.=) 'resolved') AS resolved,
	   pg_catalog.percentile_disc(0.5) WITHIN GROUP (ORDER BY ev.took)
		   FILTER (WHERE ev.took IS NOT NULL) AS median_time_to_resolve
FROM ev
LEFT JOIN @extschema@.provider p ON p.provider_id OPERATOR(pg_catalog.=) ev.provider_id
GROUP BY 1, 2, 3;
COMMENT ON VIEW @extschema@.ticket_summary IS
	'Per day (in the session''s time zone), kind and provider: tickets opened (or reopened), tickets resolved, and the median time those took to be resolved since they were (re)opened.';
COMMENT ON COLUMN @extschema@.ticket_summary.day IS 'The day, in the session''s time zone.';
COMMENT ON COLUMN @extschema@.ticket_summary.kind IS 'The kind of ticket.';
COMMENT ON COLUMN @extschema@.ticket_summary.provider IS 'The provider.';
COMMENT ON COLUMN @extschema@.ticket_summary.opened IS 'Tickets opened or reopened that day.';
COMMENT ON COLUMN @extschema@.ticket_summary.resolved IS 'Tickets resolved that day, by a person or by the extension.';
COMMENT ON COLUMN @extschema@.ticket_summary.median_time_to_resolve IS 'The median, over the tickets resolved that day, of the time from their (re)opening to their resolution.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.ticket_event', '');
