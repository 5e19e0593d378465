-- install/70_reconcile.sql: Reconciliation: the carrier's side pulled into a
-- snapshot, both sides compared set-based, every discrepancy a ticket that
-- closes itself, and bulk repair.
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql.
--
-- A run (shipsync.reconcile_run) is started by shipsync.reconcile(), by the
-- daily schedule (shipsync.reconcile_at) or, without a pull, every
-- shipsync.reconcile_interval.  The dispatcher pulls the carriers' lists
-- into shipsync.carrier_snapshot (src/reconcile.c: _reconcile_start,
-- _reconcile_page, _reconcile_pull_failed); a short-lived background worker
-- then compares (src/recon_worker.c: _reconcile_ahead, _reconcile_compare),
-- so that a comparison of a million orders never holds up deliveries.

------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------

CREATE TABLE @extschema@.reconcile_run (
	run_id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider_id		integer,
	kind			text NOT NULL,
	trigger			text NOT NULL,
	window_start	timestamptz NOT NULL,
	window_end		timestamptz,
	state			text NOT NULL DEFAULT 'pending',
	pages			integer NOT NULL DEFAULT 0,
	shipments_seen	bigint NOT NULL DEFAULT 0,
	opened			integer NOT NULL DEFAULT 0,
	closed			integer NOT NULL DEFAULT 0,
	reopened		integer NOT NULL DEFAULT 0,
	pulls			jsonb NOT NULL DEFAULT '{}',
	requested_by	name NOT NULL DEFAULT SESSION_USER,
	started_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	finished_at		timestamptz,
	error			text
);
CREATE INDEX reconcile_run_active_idx ON @extschema@.reconcile_run (run_id)
	WHERE state IN ('pending', 'pulling', 'comparing');
CREATE INDEX reconcile_run_started_idx ON @extschema@.reconcile_run (trigger, started_at);
COMMENT ON TABLE @extschema@.reconcile_run IS
	'One row per reconciliation run: a full run pulls the carriers'' shipments updated in its window and compares both sides; a crm run (every shipsync.reconcile_interval) compares the CRM side only.';
COMMENT ON COLUMN @extschema@.reconcile_run.provider_id IS 'The provider reconciled; NULL: every attached, unpaused provider.';
COMMENT ON COLUMN @extschema@.reconcile_run.kind IS 'full (pull the carrier''s side, then compare everything) or crm (no pull: the CRM side only).';
COMMENT ON COLUMN @extschema@.reconcile_run.trigger IS 'manual (shipsync.reconcile()), daily (shipsync.reconcile_at) or interval (shipsync.reconcile_interval).';
COMMENT ON COLUMN @extschema@.reconcile_run.window_start IS 'The carriers are asked for the shipments updated since then.';
COMMENT ON COLUMN @extschema@.reconcile_run.window_end IS 'When the pull started: shipments recorded later are left to the next run.';
COMMENT ON COLUMN @extschema@.reconcile_run.state IS 'pending, pulling, comparing, done or failed.';
COMMENT ON COLUMN @extschema@.reconcile_run.pages IS 'Requests made to the carriers: pages of a list, or lookups of single orders (sf_express).';
COMMENT ON COLUMN @extschema@.reconcile_run.shipments_seen IS 'Carrier shipments received into shipsync.carrier_snapshot.';
COMMENT ON COLUMN @extschema@.reconcile_run.opened IS 'Tickets this run opened.';
COMMENT ON COLUMN @extschema@.reconcile_run.closed IS 'Tickets this run resolved because it no longer saw their problem.';
COMMENT ON COLUMN @extschema@.reconcile_run.reopened IS 'Resolved tickets this run reopened because it saw their problem again.';
COMMENT ON COLUMN @extschema@.reconcile_run.pulls IS 'Per provider: how it was pulled (list, search or none), its state, pages, rows and error.';
COMMENT ON COLUMN @extschema@.reconcile_run.requested_by IS 'Who started it: a session user, or reconcile for the schedules.';
COMMENT ON COLUMN @extschema@.reconcile_run.error IS 'Why it failed, or which provider''s pull failed.';

CREATE TABLE @extschema@.carrier_snapshot (
	run_id			bigint NOT NULL,
	provider_id		integer NOT NULL,
	shipment_id		text NOT NULL,
	order_ref		text COLLATE "C",
	tracking_number text COLLATE "C",
	status			text,
	canonical		text,
	canonical_rank	integer,
	updated_at		timestamptz,
	fees			jsonb,
	PRIMARY KEY (run_id, provider_id, shipment_id)
);
COMMENT ON TABLE @extschema@.carrier_snapshot IS
	'The carriers'' own shipments as pulled by a reconciliation run (generic: GET /shipments?updated_since=; sf_express: one EXP_RECE_SEARCH_ORDER_RESP per order). Only the last complete run of each provider is kept.';
COMMENT ON COLUMN @extschema@.carrier_snapshot.shipment_id IS 'The carrier''s id of the shipment (sf_express: the orderId).';
COMMENT ON COLUMN @extschema@.carrier_snapshot.order_ref IS 'The order the carrier says it is for.';
COMMENT ON COLUMN @extschema@.carrier_snapshot.status IS 'The status as the carrier says it; canonical and canonical_rank: mapped through shipsync.status_map.';

-- Where the CRM-side pass of each binding stands.  A pass reads the orders
-- changed since the last one (their xmin), not every order.
CREATE TABLE @extschema@.reconcile_state (
	binding_id		integer PRIMARY KEY,
	horizon			xid8,
	full_at			timestamptz,
	pass_at			timestamptz,
	stuck_at		timestamptz
);
COMMENT ON TABLE @extschema@.reconcile_state IS
	'Per binding: from which transaction on order rows must be compared again (every transaction older than horizon had ended when the last pass read the table), and when the last full pass, the last pass and the last look for stuck shipments and fee differences (stuck_at: hourly, thresholds are days and bills monthly) ran.';

-- Orders seen without a shipment, until they have one.
CREATE TABLE @extschema@.reconcile_seen (
	binding_id		integer NOT NULL,
	order_key		text COLLATE "C" NOT NULL,
	first_seen_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (binding_id, order_key)
);
COMMENT ON TABLE @extschema@.reconcile_seen IS
	'Orders a reconciliation pass found without a shipment, until they have one: compared again at every pass, and their age when neither the binding''s created_at_column nor commit timestamps tell it.';

CREATE TABLE @extschema@.stuck_after (
	status			text NOT NULL REFERENCES @extschema@.canonical_status (name),
	after			interval NOT NULL CHECK (after > interval '0'),
	builtin			boolean NOT NULL DEFAULT false,
	PRIMARY KEY (status, builtin)
);
COMMENT ON TABLE @extschema@.stuck_after IS
	'A shipment in this canonical status with no tracking event for longer than after is stuck. A row of your own (builtin false) overrides the built-in one of its status; statuses without a row are never stuck.';
COMMENT ON COLUMN @extschema@.stuck_after.builtin IS
	'Seeded by the extension (not dumped by pg_dump, read-only): insert a row of your own to change the threshold of a status.';
INSERT INTO @extschema@.stuck_after (status, after, builtin) VALUES
	('pending', '2 days', true),
	('pre_transit', '2 days', true),
	('in_transit', '5 days', true),
	('out_for_delivery', '1 day', true),
	('available_for_pickup', '5 days', true),
	('delivery_failed', '2 days', true),
	('exception', '2 days', true),
	('returning', '10 days', true);

CREATE FUNCTION @extschema@._stuck_after_check()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.builtin THEN
		RAISE EXCEPTION 'the built-in threshold of status "%" is read-only', OLD.status
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'Built-in rows come with the extension and are created again on restore.',
				  HINT = format('Insert a row of your own, which overrides it: INSERT INTO shipsync.stuck_after (status, after) VALUES (%L, ''3 days'').', OLD.status);
	END IF;
	IF TG_OP = 'DELETE' THEN
		RETURN OLD;
	END IF;
	NEW.builtin := false;
	RETURN NEW;
END
$$;
CREATE TRIGGER stuck_after_check BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.stuck_after
	FOR EACH ROW EXECUTE FUNCTION @extschema@._stuck_after_check();

-- Intents that stopped (dead, invalid) or had nothing to send, per order:
-- why an order without a shipment has none.
CREATE INDEX outbox_stopped_idx ON @extschema@.outbox (binding_id, order_key, id)
	WHERE state IN ('dead', 'invalid') OR error_class = 'nothing_to_send';

------------------------------------------------------------------------------
-- The kinds
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._reconcile_kinds()
RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT ARRAY['not_sent', 'missing_at_carrier', 'orphan_at_carrier', 'duplicate_at_carrier',
				 'tracking_mismatch', 'status_mismatch', 'address_changed_after_send',
				 'fee_mismatch', 'stuck']
$$;
COMMENT ON FUNCTION @extschema@._reconcile_kinds() IS
	'Internal: the kinds of discrepancy reconciliation finds.';

-- The attach options of reconciliation: grace, created_at_column.
CREATE FUNCTION @extschema@._check_reconcile_options(opts jsonb, tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	g interval;
	coltype regtype;
BEGIN
	IF opts ? 'grace' THEN
		BEGIN
			IF jsonb_typeof(opts->'grace') <> 'string' THEN
				RAISE invalid_text_representation;
			END IF;
			g := (opts->>'grace')::interval;
		EXCEPTION WHEN invalid_text_representation OR invalid_datetime_format
				   OR datetime_field_overflow OR interval_field_overflow THEN
			RAISE EXCEPTION 'option "grace" must be an interval'
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('The value given is %s.', opts->'grace'),
					  HINT = 'For example "10 minutes": how long an order may wait for its shipment before it is not_sent.';
		END;
		IF g < interval '0' THEN
			RAISE EXCEPTION 'option "grace" must not be negative'
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('The value given is %s.', opts->>'grace'),
					  HINT = 'For example "10 minutes".';
		END IF;
	END IF;
	IF opts ? 'created_at_column' THEN
		SELECT a.atttypid::regtype INTO coltype FROM pg_attribute a
		 WHERE a.attrelid = tbl AND a.attname = opts->>'created_at_column'
		   AND a.attnum > 0 AND NOT a.attisdropped;
		IF jsonb_typeof(opts->'created_at_column') <> 'string' OR coltype IS NULL THEN
			RAISE EXCEPTION 'option "created_at_column" must name a column of table %', tbl
				USING ERRCODE = 'undefined_column',
					  DETAIL = format('The value given is %s.', opts->'created_at_column'),
					  HINT = 'Name the column that holds when the order was created.';
		END IF;
		IF coltype NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) THEN
			RAISE EXCEPTION 'column "%" of table % has type %, not a time', opts->>'created_at_column', tbl, coltype
				USING ERRCODE = 'datatype_mismatch',
					  HINT = 'created_at_column must be of type timestamptz, timestamp or date.';
		END IF;
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._check_reconcile_options(jsonb, regclass) IS
	'Internal: checks the attach options grace and created_at_column.';

------------------------------------------------------------------------------
-- The pull (called by the dispatcher, src/reconcile.c)
------------------------------------------------------------------------------

/*
 * The schedule, asked by the dispatcher when something may be due: with
 * crm, a CRM-side pass (unless one is running); the daily full run of every
 * attached, unpaused provider once a day from at_minute (local time, -1:
 * never), unless a full run of all providers is still going on.  The very
 * first daily run waits for its time; a day missed later (the server was
 * down at that time) is caught up once.  Returns when the next daily run is
 * due.
 */
CREATE FUNCTION @extschema@._reconcile_schedule(at_minute integer, crm boolean)
RETURNS timestamptz
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	today timestamptz;
	last_daily timestamptz;
BEGIN
	PERFORM pg_advisory_xact_lock(hashtext('shipsync reconcile'));
	IF crm AND EXISTS (SELECT 1 FROM @extschema@.binding b WHERE b.active)
	   AND NOT EXISTS (SELECT 1 FROM @extschema@.reconcile_run x
					    WHERE x.kind = 'crm' AND x.state IN ('pending', 'pulling', 'comparing')) THEN
		INSERT INTO @extschema@.reconcile_run (kind, trigger, window_start, requested_by)
		VALUES ('crm', 'interval', now(), 'reconcile');
	END IF;
	IF at_minute IS NULL OR at_minute < 0 THEN
		RETURN NULL;
	END IF;
	-- the time of the clock, today: midnight plus the minutes is another
	-- time on a day the clocks change (12:30 for 11:30 when they went
	-- forward at 02:00; 00:30 tomorrow for 23:30, a day without its run)
	today := (date_trunc('day', localtimestamp) + make_interval(mins => at_minute))
			 AT TIME ZONE current_setting('TimeZone');
	IF now() < today THEN
		RETURN today;
	END IF;
	SELECT max(x.started_at) INTO last_daily FROM @extschema@.reconcile_run x
	 WHERE x.trigger = 'daily';
	-- the very first daily run starts within the hour after its time (not
	-- at once when the extension is installed at noon); a day missed later
	-- (the server was down) is caught up once
	IF (last_daily IS NULL AND now() < today + interval '1 hour') OR last_daily < today THEN
		IF EXISTS (SELECT 1 FROM @extschema@.reconcile_run x
					WHERE x.kind = 'full' AND x.provider_id IS NULL
					  AND x.state IN ('pending', 'pulling', 'comparing')) THEN
			RETURN now() + interval '1 minute';
		END IF;
		IF EXISTS (SELECT 1 FROM @extschema@.binding b
					 JOIN @extschema@.provider p ON p.provider_id = b.provider_id
					WHERE b.active AND NOT p.paused) THEN
			INSERT INTO @extschema@.reconcile_run (kind, trigger, window_start, requested_by)
			VALUES ('full', 'daily', now() - interval '2 days', 'reconcile');
		END IF;
	END IF;
	RETURN (date_trunc('day', localtimestamp) + interval '1 day' + make_interval(mins => at_minute))
		   AT TIME ZONE current_setting('TimeZone');
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_schedule(integer, boolean) IS
	'Internal: the dispatcher starts the reconciliation runs that are due (a CRM-side pass with crm; the daily run from at_minute of the day); returns when the next daily run is due.';

/*
 * Start a pending run: its window ends now, and the providers it pulls are
 * chosen (the run's provider, or every unpaused provider with an attached
 * table): generic ones by their list, sf_express ones order by order,
 * others not at all (CRM side only).  Returns the providers to pull; none
 * for a crm run or when nothing is to be pulled, which then waits for its
 * comparison.
 */
CREATE FUNCTION @extschema@._reconcile_start(run bigint)
RETURNS TABLE (provider_id integer, mode text, since timestamptz, until timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	chosen jsonb;
BEGIN
	SELECT x.* INTO r FROM @extschema@.reconcile_run x
	 WHERE x.run_id = run AND x.state = 'pending' FOR UPDATE;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	IF r.kind = 'crm' THEN
		UPDATE @extschema@.reconcile_run x SET state = 'comparing', window_end = now()
		 WHERE x.run_id = run;
		RETURN;
	END IF;
	SELECT coalesce(jsonb_object_agg(p.provider_id::text, jsonb_build_object(
			   'provider', p.name, 'mode', m.mode,
			   'state', CASE WHEN m.mode = 'none' THEN 'skipped' ELSE 'pulling' END,
			   'pages', 0, 'rows', 0)), '{}')
	  INTO chosen
	  FROM @extschema@.provider p
	 CROSS JOIN LATERAL (SELECT CASE p.dialect WHEN 'generic' THEN 'list'
							WHEN 'sf_express' THEN 'search' ELSE 'none' END AS mode) m
	 WHERE p.dialect NOT IN ('easypost', 'aftership', 'kuaidi100')
	   AND (p.provider_id = r.provider_id
			OR (r.provider_id IS NULL AND NOT p.paused
				AND EXISTS (SELECT 1 FROM @extschema@.binding b
							 WHERE b.provider_id = p.provider_id AND b.active)));
	UPDATE @extschema@.reconcile_run x
	   SET state = CASE WHEN EXISTS (SELECT 1 FROM jsonb_each(chosen) c
									  WHERE c.value->>'state' = 'pulling')
						THEN 'pulling' ELSE 'comparing' END,
		   window_end = now(), pulls = chosen
	 WHERE x.run_id = run;
	RETURN QUERY
	SELECT c.key::integer, c.value->>'mode', r.window_start, now()
	  FROM jsonb_each(chosen) c
	 WHERE c.value->>'state' = 'pulling'
	 ORDER BY 1;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_start(bigint) IS
	'Internal: the dispatcher starts a pending reconciliation run; returns the providers to pull.';

/*
 * One page of a provider's list (or a batch of lookups) into the snapshot,
 * its raw statuses mapped through status_map as tracking events are.  With
 * done, the provider's pull is complete; when no provider of the run is
 * still pulling, the run waits for its comparison.  Returns the run's state
 * (nothing: the run is no longer pulling).
 */
CREATE FUNCTION @extschema@._reconcile_page(run bigint, pid integer, requests integer,
	ids text[], refs text[], tns text[], statuses text[], updated text[],
	fees text[], done boolean)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	prof text;
	tz text;
	n bigint;
	p jsonb;
BEGIN
	-- the provider's zone, of its times without one (option timezone, else
	-- its dialect's: Asia/Shanghai for kuaidi100 and sf_express, as in
	-- src/dialects/)
	SELECT coalesce(x.options->>'profile', x.dialect),
		   coalesce(x.options->>'timezone',
					CASE WHEN x.dialect IN ('kuaidi100', 'sf_express') THEN 'Asia/Shanghai' ELSE 'UTC' END)
	  INTO prof, tz
	  FROM @extschema@.provider x WHERE x.provider_id = pid;
	-- (each raw status is mapped once, not once per shipment; a shipment
	-- listed twice keeps its first row)
	WITH u AS (
		SELECT u.* FROM unnest(ids, refs, tns, statuses, updated, fees) AS u(id, ref, tn, st, at, fees)
		 WHERE u.id IS NOT NULL),
	m AS (
		SELECT d.st, cs.name, cs.rank
		  FROM (SELECT DISTINCT u.st FROM u WHERE u.st IS NOT NULL) d
		  LEFT JOIN LATERAL (
			  SELECT sm.status FROM @extschema@.status_map sm
			   WHERE sm.profile = prof AND sm.raw_status = d.st AND sm.pattern IS NULL
			   ORDER BY sm.priority DESC LIMIT 1) x ON true
		  LEFT JOIN @extschema@.canonical_status cs
			ON cs.name = coalesce(x.status, CASE WHEN prof = 'generic' THEN lower(d.st) END)),
	ins AS (
		INSERT INTO @extschema@.carrier_snapshot AS c (run_id, provider_id, shipment_id, order_ref,
			tracking_number, status, canonical, canonical_rank, updated_at, fees)
		SELECT run, pid, u.id, u.ref, u.tn, u.st,
			   CASE WHEN u.st IS NOT NULL THEN coalesce(m.name, 'unknown') END,
			   CASE WHEN u.st IS NOT NULL THEN coalesce(m.rank, -1) END,
			   -- a time without a zone is the provider's, not this session's
			   CASE WHEN u.at ~ E'^\\d{4}-\\d\\d-\\d\\d([Tt ]\\d\\d:\\d\\d(:\\d\\d(\\.\\d+)?)?)?$'
					THEN u.at::timestamp AT TIME ZONE tz ELSE u.at::timestamptz END,
			   u.fees::jsonb
		  FROM u LEFT JOIN m ON m.st = u.st
		ON CONFLICT (run_id, provider_id, shipment_id) DO NOTHING
		RETURNING 1)
	SELECT count(*) INTO n FROM ins;

	UPDATE @extschema@.reconcile_run x
	   SET pages = x.pages + requests,
		   shipments_seen = x.shipments_seen + n,
		   pulls = jsonb_set(x.pulls, ARRAY[pid::text], (x.pulls->(pid::text)) || jsonb_build_object(
			   'pages', coalesce((x.pulls->(pid::text)->>'pages')::integer, 0) + requests,
			   'rows', coalesce((x.pulls->(pid::text)->>'rows')::bigint, 0) + n,
			   'state', CASE WHEN done THEN 'done' ELSE 'pulling' END))
	 WHERE x.run_id = run AND x.state = 'pulling' AND x.pulls ? (pid::text)
	RETURNING x.pulls INTO p;
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	RETURN @extschema@._reconcile_pulled(run, p);
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_page(bigint, integer, integer, text[], text[], text[], text[], text[], text[], boolean) IS
	'Internal: the dispatcher stores a page of a carrier''s shipments into shipsync.carrier_snapshot.';

-- A provider's pull failed: the run compares the others, and fails.
CREATE FUNCTION @extschema@._reconcile_pull_failed(run bigint, pid integer, requests integer, err text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p jsonb;
BEGIN
	UPDATE @extschema@.reconcile_run x
	   SET pages = x.pages + requests,
		   pulls = jsonb_set(x.pulls, ARRAY[pid::text], (x.pulls->(pid::text)) || jsonb_build_object(
			   'pages', coalesce((x.pulls->(pid::text)->>'pages')::integer, 0) + requests,
			   'state', 'failed', 'error', err))
	 WHERE x.run_id = run AND x.state = 'pulling' AND x.pulls ? (pid::text)
	RETURNING x.pulls INTO p;
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	-- what it did pull is of no use
	DELETE FROM @extschema@.carrier_snapshot c WHERE c.run_id = run AND c.provider_id = pid;
	RETURN @extschema@._reconcile_pulled(run, p);
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_pull_failed(bigint, integer, integer, text) IS
	'Internal: the dispatcher records that a provider''s pull failed.';

-- When no provider of the run is pulling any more, it waits for its comparison.
CREATE FUNCTION @extschema@._reconcile_pulled(run bigint, pulls jsonb)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM jsonb_each(pulls) c WHERE c.value->>'state' = 'pulling') THEN
		RETURN 'pulling';
	END IF;
	UPDATE @extschema@.reconcile_run x SET state = 'comparing' WHERE x.run_id = run;
	RETURN 'comparing';
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_pulled(bigint, jsonb) IS
	'Internal: moves a run whose pulls are over to its comparison.';

------------------------------------------------------------------------------
-- The comparison (called by the reconcile worker, src/recon_worker.c)
--
-- Every check is one set-based statement over a whole table or snapshot:
-- hash joins of orders, shipments and the snapshot, never a lookup per
-- order.  Findings go into pg_temp.recon_found (one row per kind and
-- problem; the first finder wins); _reconcile_merge then turns them into
-- tickets and resolves the tickets of problems no longer seen.
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._reconcile_tables()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $$
BEGIN
	-- order_key is "C" as the ledger's is: merging probes this table's key
	-- with the ledger's keys, which an index of another collation cannot
	-- serve (a full scan of the findings for every open ticket)
	CREATE TEMP TABLE IF NOT EXISTS recon_found (
		kind			text NOT NULL,
		provider_id		integer,
		binding_id		integer,
		order_key		text COLLATE "C",
		subject			text,
		tracking_number text,
		chk				text NOT NULL,
		facts			jsonb,
		detail			text);
	CREATE UNIQUE INDEX IF NOT EXISTS recon_found_key ON pg_temp.recon_found
		(kind, (coalesce(provider_id, 0)), (coalesce(binding_id, 0)),
		 (coalesce(order_key, '')), (coalesce(subject, '')));
	-- per provider: the rows of the full join of its snapshot and our
	-- shipments that may hold a discrepancy
	CREATE TEMP TABLE IF NOT EXISTS recon_pair (
		provider_id		integer NOT NULL,
		c_id			text,
		c_ref			text,
		c_tn			text,
		c_status		text,
		c_canon			text,
		c_rank			integer,
		c_at			timestamptz,
		binding_id		integer,
		order_key		text,
		s_id			text,
		s_tn			text,
		s_status		text,
		s_rank			integer,
		s_terminal		boolean,
		s_updated		timestamptz);
	-- order references of the carrier's that no shipment of ours explains
	CREATE TEMP TABLE IF NOT EXISTS recon_ref (
		provider_id		integer NOT NULL,
		ref				text NOT NULL,
		binding_id		integer,
		PRIMARY KEY (provider_id, ref));
	CREATE TEMP TABLE IF NOT EXISTS recon_dup (
		provider_id		integer NOT NULL,
		order_ref		text NOT NULL,
		ids				text[],
		tns				text[]);
	CREATE TEMP TABLE IF NOT EXISTS recon_prepared (run_id bigint);
	-- the order rows of one binding, as its owner read them (_reconcile_crm)
	CREATE TEMP TABLE IF NOT EXISTS recon_orders (
		k				text COLLATE "C",
		o_tn			text,
		o_status		text,
		born			timestamptz,
		digest			bigint);
	TRUNCATE pg_temp.recon_found, pg_temp.recon_pair, pg_temp.recon_ref, pg_temp.recon_dup,
		pg_temp.recon_prepared, pg_temp.recon_orders;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_tables() IS
	'Internal: the session''s working tables of a comparison, created or emptied.';

/*
 * The first step of a comparison: join each pulled provider's snapshot with
 * our shipments of it, keeping the rows that may hold a discrepancy, and
 * return, per provider, the statuses the carrier is ahead with, as a
 * generic tracking payload ({"events": [...]}, at most 1,000 per row): the
 * reconcile worker applies them as pulled tracking (rank rules, write-back
 * as the table's owner) before _reconcile_compare.
 */
CREATE FUNCTION @extschema@._reconcile_prepare(run bigint)
RETURNS TABLE (provider text, body text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	pid integer;
	bids integer[];
BEGIN
	SELECT x.* INTO r FROM @extschema@.reconcile_run x WHERE x.run_id = run;
	IF NOT FOUND OR r.state <> 'comparing' THEN
		RAISE EXCEPTION 'reconciliation run % is not waiting for its comparison', run
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('Its state is %s.', coalesce(r.state, 'unknown: it does not exist'));
	END IF;
	PERFORM @extschema@._reconcile_tables();
	INSERT INTO pg_temp.recon_prepared VALUES (run);
	FOR pid IN SELECT c.key::integer FROM jsonb_each(r.pulls) c
				WHERE c.value->>'state' = 'done' ORDER BY 1 LOOP
		bids := ARRAY(SELECT b.binding_id FROM @extschema@.binding b
					   WHERE b.provider_id = pid AND b.active);
		INSERT INTO pg_temp.recon_pair
		SELECT pid, c.shipment_id, c.order_ref, c.tracking_number, c.status, c.canonical,
			   c.canonical_rank, c.updated_at,
			   s.binding_id, s.order_key, s.provider_shipment_id, s.tracking_number, s.status,
			   cs.rank, cs.terminal, s.updated_at
		  FROM (SELECT * FROM @extschema@.carrier_snapshot x
				 WHERE x.run_id = run AND x.provider_id = pid) c
		  FULL JOIN (SELECT x.* FROM @extschema@.shipment x
					  WHERE x.provider_id = pid AND x.provider_shipment_id IS NOT NULL
						AND x.binding_id = ANY (bids)) s
			ON s.provider_shipment_id = c.shipment_id
		  LEFT JOIN @extschema@.canonical_status cs ON cs.name = s.status
		 WHERE (c.shipment_id IS NULL
				AND s.updated_at >= r.window_start AND s.updated_at < r.window_end
				AND s.status <> 'cancelled')
			OR (s.order_key IS NULL)
			OR (c.tracking_number IS NOT NULL AND c.tracking_number IS DISTINCT FROM s.tracking_number)
			OR (c.canonical_rank > cs.rank)
			OR (c.shipment_id IS NOT NULL AND s.status = 'cancelled'
				AND c.canonical IS DISTINCT FROM 'cancelled');
	END LOOP;
	ANALYZE pg_temp.recon_pair;

	RETURN QUERY
	SELECT p.name::text,
		   json_build_object('events', json_agg(json_build_object(
			   'id', 'reconcile:' || a.c_id || ':' || a.c_status,
			   'tracking_number', a.s_tn,
			   'status', a.c_status,
			   'occurred_at', coalesce(a.c_at, r.window_end),
			   'description', 'status in the carrier''s list, reconciliation run ' || run)
			   ORDER BY a.c_id))::text
	  FROM (SELECT x.*, (row_number() OVER (PARTITION BY x.provider_id ORDER BY x.c_id) - 1) / 1000 AS chunk
			  FROM pg_temp.recon_pair x
			 WHERE x.c_id IS NOT NULL AND x.s_id IS NOT NULL AND x.s_tn IS NOT NULL
			   AND x.c_canon <> 'unknown' AND x.c_rank > x.s_rank AND NOT x.s_terminal) a
	  JOIN @extschema@.provider p ON p.provider_id = a.provider_id
	 GROUP BY p.name, a.chunk
	 ORDER BY p.name, a.chunk;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_prepare(bigint) IS
	'Internal: joins the snapshots of a run with our shipments; returns the statuses the carriers are ahead with, as pulled tracking to apply.';

/*
 * The CRM side of one binding: orders without a shipment and nothing on its
 * way (not_sent), written-back columns that differ from the shipment
 * (tracking_mismatch, status_mismatch), orders changed since their request
 * was sent (address_changed_after_send).  A full pass reads every order; an
 * incremental one, the orders changed since the last pass (their xmin is
 * not older than the horizon then saved), those whose shipment or stopped
 * intents changed, those with open tickets or tickets resolved since (a
 * problem resolved by hand but still there is reopened at once), and those
 * still waiting for a shipment (shipsync.reconcile_seen).
 *
 * The order table is read, and keys are cast to its key's type, only as
 * the table's owner (_select_as_owner): this function runs as a superuser,
 * and a domain's check, a type's functions or a row security policy of the
 * owner's must not.  The owner's statement returns each order's key, its
 * write-back columns, when it was made and the row itself; the rest is
 * joined here.
 */
CREATE FUNCTION @extschema@._reconcile_crm(bid integer, full_pass boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b record;
	keytype text;
	skip text[];
	grace interval;
	born text;
	born_type regtype;
	trk integer;
	st record;
	h xid8;
	hage integer;
	eff text;
	tn_bad text;
	st_bad text;
	src text;
	orders text;
	ks text[];
	gone text[];
	from_rows text;
BEGIN
	SELECT x.* INTO b FROM @extschema@.binding x WHERE x.binding_id = bid;
	-- the key's type (its base type, without a length: _key_type()), with the
	-- key column's own collation when it has one: an order key of ours
	-- (COLLATE "C") cast to it then compares as the column does, and can use
	-- its index
	SELECT @extschema@._key_type(b.tbl, b.key_column)
		   || CASE WHEN co.oid IS NULL THEN '' ELSE format(' COLLATE %I.%I', cn.nspname, co.collname) END
	  INTO keytype
	  FROM pg_attribute a
	  LEFT JOIN pg_collation co ON co.oid = a.attcollation
	  LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
	 WHERE a.attrelid = b.tbl AND a.attname = b.key_column AND a.attnum > 0 AND NOT a.attisdropped;
	skip := ARRAY(SELECT w.value #>> '{}' FROM jsonb_each(b.writeback) w ORDER BY 1);
	grace := coalesce((b.options->>'grace')::interval, interval '10 minutes');
	-- a timestamp or date column holds the order's local time: read in this
	-- session's time zone (the reconciliation worker's is the database's, the
	-- one the CRM's sessions write it in), not in the UTC the owner's
	-- statement runs in
	SELECT a.atttypid INTO born_type FROM pg_attribute a
	 WHERE a.attrelid = b.tbl AND a.attname = b.options->>'created_at_column'
	   AND a.attnum > 0 AND NOT a.attisdropped;
	born := CASE WHEN b.options ? 'created_at_column' AND born_type IN ('timestamp'::regtype, 'date'::regtype)
					 THEN format('(t.%I::timestamp AT TIME ZONE %L)', b.options->>'created_at_column',
								 current_setting('TimeZone'))
				 WHEN b.options ? 'created_at_column'
					 THEN format('t.%I::timestamptz', b.options->>'created_at_column')
				 WHEN current_setting('track_commit_timestamp')::boolean
					 THEN 'pg_xact_commit_timestamp(t.xmin)'
				 ELSE 'NULL::timestamptz' END;
	SELECT p.provider_id INTO trk FROM @extschema@.provider p WHERE p.name = b.options->>'tracking_provider';
	-- the status written back is the tracking provider's once it reports one
	eff := CASE WHEN trk IS NULL THEN 's.status'
				ELSE 'CASE WHEN tr.status IS NOT NULL AND tr.status <> ''pending'' THEN tr.status ELSE s.status END' END;
	tn_bad := CASE WHEN b.writeback ? 'tracking_number'
				   THEN '(s.tracking_number IS NOT NULL AND t.o_tn COLLATE "C" IS DISTINCT FROM s.tracking_number)'
				   ELSE 'false' END;
	st_bad := CASE WHEN b.writeback ? 'status'
				   THEN format('(s.order_key IS NOT NULL AND t.o_status IS DISTINCT FROM %s)', eff)
				   ELSE 'false' END;

	-- where the last pass stopped; rows of transactions from h on are read
	-- again by the next one
	INSERT INTO @extschema@.reconcile_state (binding_id) VALUES (bid) ON CONFLICT DO NOTHING;
	SELECT x.* INTO st FROM @extschema@.reconcile_state x WHERE x.binding_id = bid FOR UPDATE;
	h := pg_snapshot_xmin(pg_current_snapshot());
	IF st.horizon IS NOT NULL THEN
		hage := age(((st.horizon::text::numeric % 4294967296)::text)::xid);
	END IF;
	-- an horizon 2^30 transactions old is too old to compare xids with
	full_pass := full_pass OR hage IS NULL OR hage < 0 OR hage > 1073741824;

	IF full_pass THEN
		src := format('%s t', b.tbl);
	ELSE
		-- the orders whose side of ours changed: the owner's statement adds
		-- the rows changed since ($2) and reads the rows of both ($1)
		ks := ARRAY(
			SELECT s.order_key FROM @extschema@.shipment s
			 WHERE s.binding_id = bid AND age(s.xmin) <= hage
			UNION
			SELECT o.order_key FROM @extschema@.outbox o
			 WHERE o.binding_id = bid AND (o.state IN ('dead', 'invalid') OR o.error_class = 'nothing_to_send')
			   AND age(o.xmin) <= hage
			UNION
			SELECT x.order_key FROM @extschema@.exception_ticket x
			 WHERE x.binding_id = bid AND x.order_key IS NOT NULL
			   AND (x.resolved_at IS NULL OR age(x.xmin) <= hage)
			UNION
			SELECT r.order_key FROM @extschema@.reconcile_seen r WHERE r.binding_id = bid);
		src := format($src$(SELECT DISTINCT c.k FROM (
				SELECT t.%1$I::text COLLATE "C" AS k FROM %2$s t WHERE age(t.xmin) <= $2
				UNION ALL
				SELECT u.k FROM unnest($1) AS u(k)) c) c
			JOIN %2$s t ON t.%1$I = c.k::%3$s$src$, b.key_column, b.tbl, keytype);
	END IF;
	-- what the comparison needs of each order row, read as the table's owner
	orders := format('SELECT t.%I::text, %s, %s, %s, t.*::%s FROM %s',
		b.key_column,
		CASE WHEN b.writeback ? 'tracking_number' THEN format('t.%I::text', b.writeback->>'tracking_number') ELSE 'NULL::text' END,
		CASE WHEN b.writeback ? 'status' THEN format('t.%I::text', b.writeback->>'status') ELSE 'NULL::text' END,
		born, b.tbl, src);
	-- each row with its digest, made as the rows are read (a whole row is
	-- never kept).  A full pass joins them as they come, planned for as many
	-- rows as the table holds (the function's support estimates it); an
	-- incremental one keeps them first, and ANALYZEs them: a few orders
	-- changed since the last pass, or a bulk import of a million
	IF full_pass THEN
		from_rows := $r$@extschema@._select_digests_as_owner($5, $6, $7, $8, $9)
			AS t(k text COLLATE "C", o_tn text, o_status text, born timestamptz, digest bigint)$r$;
	ELSE
		TRUNCATE pg_temp.recon_orders;
		INSERT INTO pg_temp.recon_orders (k, o_tn, o_status, born, digest)
		SELECT t.k, t.o_tn, t.o_status, t.born, t.digest
		  FROM @extschema@._select_digests_as_owner(b.tbl, orders, ks, hage, skip)
			   AS t(k text COLLATE "C", o_tn text, o_status text, born timestamptz, digest bigint);
		ANALYZE pg_temp.recon_orders;
		from_rows := 'pg_temp.recon_orders t';
	END IF;

	EXECUTE format($q$
		WITH act AS MATERIALIZED (
			SELECT o.order_key FROM @extschema@.outbox o
			 WHERE o.binding_id = $1 AND o.state IN ('pending', 'retrying', 'in_flight')
			UNION
			SELECT i.order_key FROM @extschema@.inbox i WHERE i.binding_id = $1),
		x AS MATERIALIZED (
			SELECT y.* FROM (
				SELECT t.k,
					   s.order_key IS NOT NULL AS shipped,
					   s.provider_shipment_id AS s_id, s.tracking_number AS s_tn, %1$s AS s_status,
					   s.content_digest AS s_digest,
					   %2$s AS tn_bad, %3$s AS st_bad,
					   (s.content_digest IS NOT NULL AND s.status <> 'cancelled'
						AND t.digest <> s.content_digest) AS addr_bad,
					   t.o_tn, t.o_status,
					   coalesce(t.born, r.first_seen_at) AS born,
					   r.order_key IS NOT NULL AS seen
				  FROM %7$s
				  LEFT JOIN @extschema@.shipment s
					ON s.binding_id = $1 AND s.provider_id = $2 AND s.order_key = t.k
				  %4$s
				  LEFT JOIN @extschema@.reconcile_seen r
					ON r.binding_id = $1 AND r.order_key = t.k) y
			 WHERE (NOT y.shipped OR y.tn_bad OR y.st_bad OR y.addr_bad)
			   -- a key over the 2,000 bytes capture takes (a row from
			   -- before attach()) was never sent, and no index of ours
			   -- holds it: reconcile_seen's failed the pass at every run
			   AND pg_catalog.octet_length(y.k) <= 2000),
		seen AS (
			INSERT INTO @extschema@.reconcile_seen (binding_id, order_key)
			SELECT $1, x.k FROM x WHERE NOT x.shipped AND NOT x.seen
			ON CONFLICT DO NOTHING)
		INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
			chk, facts, detail)
		SELECT f.kind, $2, $1, x.k, x.s_tn, 'crm', f.facts, f.detail
		  FROM x
		  LEFT JOIN LATERAL (
			  SELECT o.id, o.state, o.error_class, o.last_error FROM @extschema@.outbox o
			   WHERE NOT x.shipped AND o.binding_id = $1 AND o.order_key = x.k
				 AND (o.state IN ('dead', 'invalid') OR o.error_class = 'nothing_to_send')
			   ORDER BY o.id DESC LIMIT 1) so ON true
		 CROSS JOIN LATERAL (VALUES
			('not_sent',
			 NOT x.shipped AND x.born < now() - $3 AND x.k NOT IN (SELECT act.order_key FROM act)
			 AND so.error_class IS DISTINCT FROM 'nothing_to_send',
			 jsonb_build_object('check', 'crm',
				'reason', coalesce(so.state, 'not_captured'), 'outbox_id', so.id,
				'last_error', so.last_error, 'since', x.born),
			 format('order %%s of %%s has no shipment and nothing on its way (%%s)', x.k, $4,
				CASE so.state WHEN 'dead' THEN 'its intent is dead: ' || coalesce(so.last_error, '')
							  WHEN 'invalid' THEN 'its intent is invalid: ' || coalesce(so.last_error, '')
							  ELSE 'no intent was captured' END)),
			('tracking_mismatch', x.shipped AND x.tn_bad,
			 jsonb_build_object('check', 'crm', 'column', %5$L, 'order', x.o_tn, 'shipment', x.s_tn),
			 format('order %%s of %%s: column %%s holds %%s, the shipment''s tracking number is %%s',
				x.k, $4, %5$L, coalesce(x.o_tn, 'NULL'), x.s_tn)),
			('status_mismatch', x.shipped AND x.st_bad,
			 jsonb_build_object('check', 'crm', 'column', %6$L, 'order', x.o_status, 'shipment', x.s_status),
			 format('order %%s of %%s: column %%s holds %%s, the shipment''s status is %%s',
				x.k, $4, %6$L, coalesce(x.o_status, 'NULL'), x.s_status)),
			('address_changed_after_send',
			 x.shipped AND x.addr_bad AND x.k NOT IN (SELECT act.order_key FROM act),
			 jsonb_build_object('check', 'crm', 'shipment_id', x.s_id),
			 format('order %%s of %%s changed after its shipment %%s was sent, and no update is on its way',
				x.k, $4, coalesce(x.s_id, '')))
		 ) AS f(kind, hit, facts, detail)
		 WHERE f.hit
		ON CONFLICT DO NOTHING
	$q$, eff, tn_bad, st_bad,
		CASE WHEN trk IS NULL THEN ''
			 ELSE format('LEFT JOIN @extschema@.shipment tr ON tr.binding_id = $1 AND tr.provider_id = %s AND tr.order_key = t.k',
						 trk) END,
		b.writeback->>'tracking_number', b.writeback->>'status', from_rows)
	USING bid, b.provider_id, grace, b.tbl::text, b.tbl, orders, ks, hage, skip;

	-- orders no longer waiting: shipped, or gone (whose keys the owner's
	-- table no longer holds)
	ks := ARRAY(SELECT r.order_key FROM @extschema@.reconcile_seen r WHERE r.binding_id = bid);
	IF cardinality(ks) > 0 THEN
		gone := ARRAY(SELECT g.k FROM @extschema@._select_as_owner(b.tbl, format(
				'SELECT u.k FROM unnest($1) AS u(k) WHERE NOT EXISTS (SELECT 1 FROM %s t WHERE t.%I = u.k::%s)',
				b.tbl, b.key_column, keytype), ks, NULL) AS g(k text));
		DELETE FROM @extschema@.reconcile_seen r
		 WHERE r.binding_id = bid
		   AND (EXISTS (SELECT 1 FROM @extschema@.shipment s
						 WHERE s.binding_id = bid AND s.provider_id = b.provider_id
						   AND s.order_key = r.order_key)
				OR r.order_key = ANY (gone));
	END IF;

	UPDATE @extschema@.reconcile_state x
	   SET horizon = h, pass_at = now(),
		   full_at = CASE WHEN full_pass THEN now() ELSE x.full_at END
	 WHERE x.binding_id = bid;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_crm(integer, boolean) IS
	'Internal: compares the CRM side of one binding (its orders, their shipments and intents); full reads every order, else only what changed since the last pass.';

/*
 * The carrier's side of one provider, from the pairs _reconcile_prepare
 * kept: shipments of ours its list lacks, tracking numbers and statuses
 * that differ (statuses re-read: the worker has applied what it could),
 * shipments of its for orders we do not have or cancelled, and orders it
 * holds twice.  Order references no shipment of ours explains are looked up
 * in the provider's tables, one statement per table, as the table's owner
 * (_select_as_owner): by the table's key index where a reference can be a
 * key of its type, else a hash join.
 */
CREATE FUNCTION @extschema@._reconcile_carrier(run bigint, pid integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b record;
	keyexpr text;
	refs text[];
BEGIN
	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
		chk, facts, detail)
	SELECT 'missing_at_carrier', pid, x.binding_id, x.order_key, x.s_tn, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.s_id, 'tracking_number', x.s_tn,
			   'status', x.s_status, 'updated_at', x.s_updated),
		   format('the carrier''s list has no shipment %s (tracking number %s) of order %s',
			   x.s_id, coalesce(x.s_tn, 'none'), x.order_key)
	  FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.c_id IS NULL
	ON CONFLICT DO NOTHING;

	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
		chk, facts, detail)
	SELECT 'tracking_mismatch', pid, x.binding_id, x.order_key, x.s_tn, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.s_id, 'ours', x.s_tn, 'carrier', x.c_tn),
		   format('shipment %s of order %s: our tracking number is %s, the carrier''s %s',
			   x.s_id, x.order_key, coalesce(x.s_tn, 'none'), x.c_tn)
	  FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.c_id IS NOT NULL AND x.s_id IS NOT NULL
	   AND x.c_tn IS NOT NULL AND x.c_tn IS DISTINCT FROM x.s_tn
	ON CONFLICT DO NOTHING;

	-- still behind after the carrier's statuses were applied: they could not be
	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
		chk, facts, detail)
	SELECT 'status_mismatch', pid, x.binding_id, x.order_key, s.tracking_number, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.s_id, 'ours', s.status,
			   'carrier', x.c_status, 'carrier_canonical', x.c_canon),
		   format('shipment %s of order %s is %s here and %s (%s) at the carrier, which could not be applied',
			   x.s_id, x.order_key, s.status, x.c_canon, x.c_status)
	  FROM pg_temp.recon_pair x
	  JOIN @extschema@.shipment s
		ON s.binding_id = x.binding_id AND s.order_key = x.order_key AND s.provider_id = pid
	  JOIN @extschema@.canonical_status cs ON cs.name = s.status
	 WHERE x.provider_id = pid AND x.c_id IS NOT NULL AND x.s_id IS NOT NULL
	   AND x.c_canon <> 'unknown' AND x.c_rank > cs.rank
	ON CONFLICT DO NOTHING;

	-- live at the carrier, cancelled here
	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, subject,
		tracking_number, chk, facts, detail)
	SELECT 'orphan_at_carrier', pid, x.binding_id, x.order_key, x.c_id, x.c_tn, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.c_id, 'order_ref', x.c_ref,
			   'tracking_number', x.c_tn, 'status', x.c_status, 'reason', 'order_cancelled'),
		   format('the carrier''s shipment %s is %s, but order %s was cancelled',
			   x.c_id, coalesce(x.c_status, 'live'), x.order_key)
	  FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.c_id IS NOT NULL AND x.s_id IS NOT NULL
	   AND x.s_status = 'cancelled' AND x.c_canon IS DISTINCT FROM 'cancelled'
	ON CONFLICT DO NOTHING;

	-- orders held twice (or more), cancelled shipments aside: one shipment
	-- of an order at most is ours, so every other one is among the pairs
	-- without a shipment of ours, and only their references are counted
	INSERT INTO pg_temp.recon_dup (provider_id, order_ref, ids, tns)
	SELECT pid, c.order_ref, array_agg(c.shipment_id ORDER BY c.shipment_id),
		   array_agg(c.tracking_number ORDER BY c.shipment_id)
	  FROM @extschema@.carrier_snapshot c
	 WHERE c.run_id = run AND c.provider_id = pid
	   AND c.canonical IS DISTINCT FROM 'cancelled'
	   AND c.order_ref IN (SELECT x.c_ref FROM pg_temp.recon_pair x
							WHERE x.provider_id = pid AND x.s_id IS NULL AND x.c_ref IS NOT NULL
							  AND x.c_canon IS DISTINCT FROM 'cancelled')
	 GROUP BY c.order_ref
	HAVING count(*) > 1;

	-- which orders do the unexplained references name?
	INSERT INTO pg_temp.recon_ref (provider_id, ref)
	SELECT pid, x.c_ref FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.s_id IS NULL AND x.c_ref IS NOT NULL
	   AND x.c_canon IS DISTINCT FROM 'cancelled'
	UNION
	SELECT pid, d.order_ref FROM pg_temp.recon_dup d WHERE d.provider_id = pid
	ON CONFLICT DO NOTHING;
	IF FOUND THEN
		ANALYZE pg_temp.recon_ref;
		FOR b IN SELECT x.binding_id, x.tbl, x.key_column, a.atttypid AS keytype
				   FROM @extschema@.binding x
				   JOIN pg_attribute a ON a.attrelid = x.tbl AND a.attname = x.key_column
				  WHERE x.provider_id = pid AND x.active ORDER BY x.binding_id LOOP
			-- a reference that can be a key of the column's type is looked up
			-- as one (the table's own index finds it: there are few); the
			-- key's text must still be the reference
			keyexpr := CASE b.keytype
				WHEN 'int2'::regtype THEN 'CASE WHEN f.ref ~ ''^-?[0-9]{1,5}$'' AND f.ref::numeric BETWEEN -32768 AND 32767 THEN f.ref::int2 END'
				WHEN 'int4'::regtype THEN 'CASE WHEN f.ref ~ ''^-?[0-9]{1,10}$'' AND f.ref::numeric BETWEEN -2147483648 AND 2147483647 THEN f.ref::int4 END'
				WHEN 'int8'::regtype THEN 'CASE WHEN f.ref ~ ''^-?[0-9]{1,19}$'' AND f.ref::numeric BETWEEN -9223372036854775808 AND 9223372036854775807 THEN f.ref::int8 END'
				WHEN 'text'::regtype THEN 'f.ref'
				WHEN 'varchar'::regtype THEN 'f.ref::varchar'
				WHEN 'uuid'::regtype THEN 'CASE WHEN f.ref ~ ''^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'' THEN f.ref::uuid END'
				END;
			refs := ARRAY(SELECT f.ref FROM pg_temp.recon_ref f
						   WHERE f.provider_id = pid AND f.binding_id IS NULL);
			EXIT WHEN cardinality(refs) = 0;
			UPDATE pg_temp.recon_ref f SET binding_id = b.binding_id
			  FROM @extschema@._select_as_owner(b.tbl, format(
					   'SELECT f.ref FROM unnest($1) AS f(ref) JOIN %s t ON f.ref = t.%I::text%s',
					   b.tbl, b.key_column,
					   CASE WHEN keyexpr IS NOT NULL THEN format(' AND t.%I = %s', b.key_column, keyexpr) ELSE '' END),
				   refs, NULL) AS o(ref text)
			 WHERE f.provider_id = pid AND f.binding_id IS NULL AND f.ref = o.ref;
		END LOOP;
	END IF;

	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, subject,
		tracking_number, chk, facts, detail)
	SELECT 'orphan_at_carrier', pid, NULL, x.c_ref, x.c_id, x.c_tn, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_id', x.c_id, 'order_ref', x.c_ref,
			   'tracking_number', x.c_tn, 'status', x.c_status, 'reason', 'no_order'),
		   format('the carrier''s shipment %s (tracking number %s) is for order %s, which no attached table holds',
			   x.c_id, coalesce(x.c_tn, 'none'), coalesce(x.c_ref, 'none'))
	  FROM pg_temp.recon_pair x
	 WHERE x.provider_id = pid AND x.c_id IS NOT NULL AND x.s_id IS NULL
	   AND x.c_canon IS DISTINCT FROM 'cancelled'
	   AND NOT EXISTS (SELECT 1 FROM pg_temp.recon_ref f
						WHERE f.provider_id = pid AND f.ref = x.c_ref AND f.binding_id IS NOT NULL)
	ON CONFLICT DO NOTHING;

	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, chk, facts, detail)
	SELECT 'duplicate_at_carrier', pid, f.binding_id, d.order_ref, 'carrier',
		   jsonb_build_object('check', 'carrier', 'shipment_ids', d.ids, 'tracking_numbers', d.tns),
		   format('the carrier holds %s shipments for order %s: %s',
			   cardinality(d.ids), d.order_ref, array_to_string(d.ids, ', '))
	  FROM pg_temp.recon_dup d
	  LEFT JOIN pg_temp.recon_ref f ON f.provider_id = pid AND f.ref = d.order_ref
	 WHERE d.provider_id = pid
	ON CONFLICT DO NOTHING;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_carrier(bigint, integer) IS
	'Internal: compares one provider''s snapshot with our shipments (missing, orphan, duplicate, tracking and status differences).';

/*
 * Shipments in a non-terminal status with no tracking event for longer than
 * its threshold (shipsync.stuck_after).  Where a tracking provider follows
 * the order, its shipment row is the one that moves.  The events of another
 * piece of a multi-piece shipment (SF child and return waybills) are not
 * the shipment's: its main parcel can be stuck while a child moves.
 */
CREATE FUNCTION @extschema@._reconcile_stuck(bids integer[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, tracking_number,
		chk, facts, detail)
	SELECT 'stuck', s.provider_id, s.binding_id, s.order_key, s.tracking_number, 'stuck',
		   jsonb_build_object('check', 'stuck', 'status', s.status, 'last_event_at', ev.at,
			   'threshold', sa.after),
		   format('shipment %s of order %s has been %s with no tracking event since %s (threshold %s)',
			   coalesce(s.provider_shipment_id, ''), s.order_key, s.status, ev.at, sa.after)
	  FROM @extschema@.shipment s
	  JOIN @extschema@.binding b ON b.binding_id = s.binding_id
	  LEFT JOIN @extschema@.provider tp ON tp.name = b.options->>'tracking_provider'
	  JOIN (SELECT DISTINCT ON (x.status) x.status, x.after, now() - x.after AS before
			  FROM @extschema@.stuck_after x
			 ORDER BY x.status, x.builtin) sa ON sa.status = s.status
	 CROSS JOIN LATERAL (
		 SELECT greatest(s.created_at,
						 (SELECT max(e.occurred_at) FROM @extschema@.tracking_event e
						   WHERE e.binding_id = s.binding_id AND e.order_key = s.order_key
							 AND e.piece IS NULL)) AS at) ev
	 WHERE s.binding_id = ANY (bids)
	   AND s.updated_at < sa.before
	   AND ((s.provider_id = b.provider_id
			 AND NOT EXISTS (SELECT 1 FROM @extschema@.shipment t
							  WHERE t.binding_id = s.binding_id AND t.order_key = s.order_key
								AND t.provider_id = tp.provider_id AND t.status <> 'pending'))
			OR (s.provider_id = tp.provider_id AND s.status <> 'pending'))
	   AND ev.at < sa.before
	ON CONFLICT DO NOTHING;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_stuck(integer[]) IS
	'Internal: finds the shipments of the given bindings with no tracking event for longer than their status''s threshold.';

-- The providers whose bills for waybills no shipment has are judged with
-- the fees of the given bindings: their shipping and tracking providers.
CREATE FUNCTION @extschema@._reconcile_fee_providers(bids integer[])
RETURNS integer[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(array_agg(DISTINCT p.provider_id), '{}')
	  FROM @extschema@.binding b
	  JOIN @extschema@.provider p
		ON p.provider_id = b.provider_id OR p.name = b.options->>'tracking_provider'
	 WHERE b.binding_id = ANY (bids)
$$;
COMMENT ON FUNCTION @extschema@._reconcile_fee_providers(integer[]) IS
	'Internal: the shipping and tracking providers of the given bindings, whose bills for unknown waybills reconciliation judges with the bindings'' fees.';

/*
 * The fees: every row of shipsync.fee_difference is a fee_mismatch.  The
 * rows of the given bindings' orders, each keyed by its order and, in
 * subject, by what tells it from the order's other rows (its kind and
 * currency; for a duplicate charge, its waybill, fee type and currency);
 * and the bills of their providers (shipping and tracking) for waybills no
 * shipment has, keyed by provider and tracking number (subject), with no
 * order: one discrepancy per waybill, its amounts per currency.  Looked at
 * with the stuck shipments (hourly in CRM-side passes, in every full run).
 */
CREATE FUNCTION @extschema@._reconcile_fees(bids integer[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pids integer[] := @extschema@._reconcile_fee_providers(bids);
BEGIN
	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, subject,
		tracking_number, chk, facts, detail)
	SELECT 'fee_mismatch', p.provider_id, d.binding_id, d.order_key,
		   concat_ws(' ', d.kind, CASE WHEN d.kind = 'duplicate_charge' THEN d.tracking_number END,
					 d.fee_type, d.currency),
		   d.tracking_number, 'fees',
		   jsonb_strip_nulls(jsonb_build_object('check', 'fees', 'fee_kind', d.kind,
			   'fee_type', d.fee_type, 'currency', d.currency, 'estimated', d.estimated,
			   'billed', d.billed, 'difference', d.difference)),
		   format('%s of %s: %s', d.kind,
				  CASE WHEN d.order_key IS NULL THEN format('waybill %s', d.tracking_number)
					   ELSE format('order %s of %s (waybill %s)', d.order_key, b.tbl, d.tracking_number) END,
				  d.detail)
	  FROM @extschema@.fee_difference d
	  JOIN @extschema@.provider p ON p.name = d.provider
	  LEFT JOIN @extschema@.binding b ON b.binding_id = d.binding_id
	 WHERE d.kind <> 'unknown_waybill'
	   AND (d.binding_id = ANY (bids)
			OR (d.binding_id IS NULL AND p.provider_id = ANY (pids)))
	ON CONFLICT DO NOTHING;

	INSERT INTO pg_temp.recon_found (kind, provider_id, binding_id, order_key, subject,
		tracking_number, chk, facts, detail)
	SELECT 'fee_mismatch', p.provider_id, NULL, NULL, d.tracking_number, d.tracking_number, 'fees',
		   jsonb_build_object('check', 'fees', 'fee_kind', 'unknown_waybill',
			   'billed', jsonb_object_agg(coalesce(d.currency, ''), d.billed)),
		   format('unknown_waybill: provider %s bills waybill %s (%s), which no shipment has',
				  p.name, d.tracking_number,
				  string_agg(concat_ws(' ', d.billed, d.currency), ', ' ORDER BY d.currency))
	  FROM @extschema@.fee_difference d
	  JOIN @extschema@.provider p ON p.name = d.provider
	 WHERE d.kind = 'unknown_waybill'
	   AND p.provider_id = ANY (pids)
	 GROUP BY p.provider_id, p.name, d.tracking_number
	ON CONFLICT DO NOTHING;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_fees(integer[]) IS
	'Internal: finds the rows of shipsync.fee_difference of the given bindings'' orders, and of their providers'' bills for waybills no shipment has (fee_mismatch).';

/*
 * The fee totals order rows did not take (writeback_failed tickets without
 * a provider: _fee_totals() and writeback_values() open them, the
 * tracking write-back's carry its provider) whose problem is gone, among
 * the bindings looked at for fees (sbids): the row holds its shipment's
 * fee_total now (written by hand, or by a later total that fitted), or
 * the order is gone.  Rows are read as the table's owner
 * (_select_as_owner); a table that cannot be read leaves its tickets as
 * they are.  Returns the tickets' ids.
 */
CREATE FUNCTION @extschema@._reconcile_fee_written(sbids integer[])
RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b record;
	ids bigint[] := '{}';
BEGIN
	FOR b IN
		SELECT bb.binding_id, bb.tbl, bb.key_column, bb.provider_id,
			   bb.writeback->>'fee_total' AS col,
			   array_agg(DISTINCT x.order_key) AS ks
		  FROM @extschema@.exception_ticket x
		  JOIN @extschema@.binding bb ON bb.binding_id = x.binding_id
		 WHERE x.kind = 'writeback_failed' AND x.provider_id IS NULL AND x.resolved_at IS NULL
		   AND x.order_key IS NOT NULL AND x.binding_id = ANY (sbids)
		   AND bb.writeback ? 'fee_total'
		 GROUP BY bb.binding_id, bb.tbl, bb.key_column, bb.provider_id, bb.writeback->>'fee_total'
	LOOP
		BEGIN
			ids := ids || ARRAY(
				SELECT x.ticket_id
				  FROM @extschema@._select_as_owner(b.tbl, format(
						'SELECT u.k, t.%1$I::text, t.%2$I IS NOT NULL FROM unnest($1) AS u(k)'
						' LEFT JOIN %3$s t ON t.%2$I = u.k::%4$s',
						b.col, b.key_column, b.tbl, @extschema@._key_type(b.tbl, b.key_column)),
						b.ks, NULL) AS o(k text, v text, present boolean)
				  JOIN @extschema@.exception_ticket x
					ON x.kind = 'writeback_failed' AND x.provider_id IS NULL AND x.resolved_at IS NULL
				   AND x.binding_id = b.binding_id AND x.order_key = o.k
				  LEFT JOIN @extschema@.shipment s
					ON s.binding_id = b.binding_id AND s.order_key = o.k AND s.provider_id = b.provider_id
				 WHERE NOT o.present
					OR (s.order_key IS NOT NULL
						AND CASE WHEN o.v IS NULL THEN s.fee_total IS NULL
								 WHEN btrim(o.v) ~ E'^[-+]?[0-9]+(\\.[0-9]*)?$'
									 THEN btrim(o.v)::numeric = s.fee_total
								 ELSE false END));
		EXCEPTION WHEN OTHERS THEN
			-- (its column renamed or dropped since attach(), row security
			-- forced on its owner: judged again at the next look)
			NULL;
		END;
	END LOOP;
	RETURN ids;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_fee_written(integer[]) IS
	'Internal: the open writeback_failed tickets of fee totals, among the given bindings, whose order row now holds its shipment''s fee_total, or is gone.';

/*
 * Findings into tickets: an open ticket of the same problem is refreshed, a
 * resolved one reopened (reopen_count + 1), else one is opened; then every
 * open ticket this run could judge and did not see again is resolved by
 * reconcile.  What a run could judge: on the CRM side every order of the
 * bindings it compared (bids: an incremental pass reads the orders of open
 * tickets too), the shipments and fees of those it looked at for stuck
 * ones and fee differences (sbids, and for bills of unknown waybills their
 * providers), on the carrier side what the snapshots of the providers it
 * pulled cover (pids).  The tickets of dead, invalid and refused intents are
 * resolved too once their order reached the carrier as it is now, or the
 * intent itself was delivered, or the order was cancelled or deleted since
 * and that cancel is done, and those of fee totals an order row did not
 * take once it holds its total (_reconcile_fee_written); the CRM-side
 * tickets of tables no longer attached are resolved, saying so.  Returns
 * the counts.
 */
CREATE FUNCTION @extschema@._reconcile_merge(run bigint, bids integer[], pids integer[],
	sbids integer[], OUT opened integer, OUT reopened integer, OUT closed integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	n integer;
	fpids integer[] := @extschema@._reconcile_fee_providers(sbids);
	fee_written bigint[] := @extschema@._reconcile_fee_written(sbids);
BEGIN
	SELECT x.* INTO r FROM @extschema@.reconcile_run x WHERE x.run_id = run;
	-- the findings are joined with the tickets below: planned knowing how
	-- many there are (the table is filled by many statements, never read
	-- before)
	ANALYZE pg_temp.recon_found;
	-- and so is the ledger, when it changed much since its statistics (a
	-- flood of tickets: a carrier down, a statement of unknown waybills,
	-- opened by the pass before, the next autovacuum not come yet):
	-- planned on those of before, every finding was probed against every
	-- open ticket of its kind (50,000: five minutes)
	IF (SELECT s.n_mod_since_analyze > greatest(1000, c.reltuples / 5)
		  FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
		 WHERE s.relid = '@extschema@.exception_ticket'::regclass) THEN
		ANALYZE @extschema@.exception_ticket;
	END IF;

	-- still there: refresh what changed, and when it was seen (hourly)
	UPDATE @extschema@.exception_ticket x
	   SET facts = f.facts, detail = f.detail,
		   tracking_number = coalesce(f.tracking_number, x.tracking_number),
		   last_seen_at = now(), run_id = run
	  FROM pg_temp.recon_found f
	 WHERE x.resolved_at IS NULL
	   AND x.kind = f.kind AND coalesce(x.provider_id, 0) = coalesce(f.provider_id, 0)
	   AND coalesce(x.binding_id, 0) = coalesce(f.binding_id, 0)
	   AND coalesce(x.order_key, '') = coalesce(f.order_key, '')
	   AND coalesce(x.subject, '') = coalesce(f.subject, '')
	   AND (x.facts IS DISTINCT FROM f.facts OR x.last_seen_at IS NULL
			OR x.last_seen_at < now() - interval '1 hour');

	-- back after a resolution: reopen the last ticket of the problem
	WITH k AS (
		SELECT DISTINCT ON (f.kind, coalesce(f.provider_id, 0), coalesce(f.binding_id, 0),
							coalesce(f.order_key, ''), coalesce(f.subject, ''))
			   x.ticket_id, f.facts, f.detail, f.tracking_number
		  FROM pg_temp.recon_found f
		  JOIN @extschema@.exception_ticket x
			ON x.kind = f.kind AND coalesce(x.provider_id, 0) = coalesce(f.provider_id, 0)
		   AND coalesce(x.binding_id, 0) = coalesce(f.binding_id, 0)
		   AND coalesce(x.order_key, '') = coalesce(f.order_key, '')
		   AND coalesce(x.subject, '') = coalesce(f.subject, '')
		 WHERE NOT EXISTS (
			   SELECT 1 FROM @extschema@.exception_ticket o
				WHERE o.resolved_at IS NULL
				  AND o.kind = f.kind AND coalesce(o.provider_id, 0) = coalesce(f.provider_id, 0)
				  AND coalesce(o.binding_id, 0) = coalesce(f.binding_id, 0)
				  AND coalesce(o.order_key, '') = coalesce(f.order_key, '')
				  AND coalesce(o.subject, '') = coalesce(f.subject, ''))
		 ORDER BY f.kind, coalesce(f.provider_id, 0), coalesce(f.binding_id, 0),
				  coalesce(f.order_key, ''), coalesce(f.subject, ''), x.ticket_id DESC),
	u AS (
		UPDATE @extschema@.exception_ticket x
		   SET resolved_at = NULL, resolved_by = NULL, resolution = NULL,
			   acknowledged_at = NULL, acknowledged_by = NULL, acknowledgement = NULL,
			   reopen_count = x.reopen_count + 1, reopened_at = now(),
			   facts = k.facts, detail = k.detail,
			   tracking_number = coalesce(k.tracking_number, x.tracking_number),
			   last_seen_at = now(), run_id = run
		  FROM k WHERE x.ticket_id = k.ticket_id
		RETURNING x.ticket_id, x.kind, x.binding_id, x.order_key)
	SELECT count(pg_notify('shipsync', json_build_object('event', 'ticket_reopened',
			   'ticket_id', u.ticket_id, 'kind', u.kind, 'binding_id', u.binding_id,
			   'order_key', u.order_key)::text))
	  INTO reopened FROM u;

	-- new problems
	WITH i AS (
		INSERT INTO @extschema@.exception_ticket AS x (kind, provider_id, binding_id, order_key,
			subject, tracking_number, detail, facts, last_seen_at, run_id)
		SELECT f.kind, f.provider_id, f.binding_id, f.order_key, f.subject, f.tracking_number,
			   f.detail, f.facts, now(), run
		  FROM pg_temp.recon_found f
		 WHERE NOT EXISTS (
			   SELECT 1 FROM @extschema@.exception_ticket o
				WHERE o.resolved_at IS NULL
				  AND o.kind = f.kind AND coalesce(o.provider_id, 0) = coalesce(f.provider_id, 0)
				  AND coalesce(o.binding_id, 0) = coalesce(f.binding_id, 0)
				  AND coalesce(o.order_key, '') = coalesce(f.order_key, '')
				  AND coalesce(o.subject, '') = coalesce(f.subject, ''))
		 ORDER BY f.kind, f.binding_id, f.order_key, f.subject
		ON CONFLICT (kind, (coalesce(provider_id, 0)), (coalesce(binding_id, 0)),
					 (coalesce(order_key, '')), (coalesce(subject, '')))
			WHERE resolved_at IS NULL DO NOTHING
		RETURNING x.ticket_id, x.kind, x.binding_id, x.order_key)
	SELECT count(pg_notify('shipsync', json_build_object('event', 'ticket_opened',
			   'ticket_id', i.ticket_id, 'kind', i.kind, 'binding_id', i.binding_id,
			   'order_key', i.order_key)::text))
	  INTO opened FROM i;

	-- gone: resolved, with why (resolved_by: who compares, reconcile in the worker)
	-- (the open tickets not found are picked first, on their own: joined
	-- with the conditions below, whose selectivity the planner cannot
	-- guess, the findings were scanned once for every open ticket)
	WITH c AS (
		UPDATE @extschema@.exception_ticket x
		   SET resolved_at = now(), run_id = run,
			   resolution = format('no longer seen (reconciliation run %s)', run)
		 WHERE x.ticket_id = ANY (ARRAY(
				   SELECT o.ticket_id FROM @extschema@.exception_ticket o
					WHERE o.resolved_at IS NULL
					  AND NOT EXISTS (
						  SELECT 1 FROM pg_temp.recon_found f
						   WHERE o.kind = f.kind AND coalesce(o.provider_id, 0) = coalesce(f.provider_id, 0)
							 AND coalesce(o.binding_id, 0) = coalesce(f.binding_id, 0)
							 AND coalesce(o.order_key, '') = coalesce(f.order_key, '')
							 AND coalesce(o.subject, '') = coalesce(f.subject, ''))))
		   AND x.resolved_at IS NULL
		   AND (
			   -- the CRM side of the bindings compared
			   (x.binding_id = ANY (bids)
				AND (x.kind IN ('not_sent', 'address_changed_after_send')
					 OR (x.kind IN ('tracking_mismatch', 'status_mismatch')
						 AND x.facts->>'check' = 'crm')))
			   OR (x.binding_id = ANY (sbids) AND x.kind = 'stuck')
			   -- the fees of those bindings' orders, and their providers' unknown waybills
			   OR (x.kind = 'fee_mismatch'
				   AND (x.binding_id = ANY (sbids)
						OR (x.binding_id IS NULL
							AND x.provider_id = ANY (fpids))))
			   -- a fee total an order row did not take, now held (or the order gone)
			   OR x.ticket_id = ANY (fee_written)
			   -- a write-back that failed, now matching
			   OR (x.binding_id = ANY (bids) AND x.kind = 'writeback_failed'
				   AND EXISTS (SELECT 1 FROM @extschema@.shipment s
								WHERE s.binding_id = x.binding_id AND s.order_key = x.order_key
								  AND s.provider_id = x.provider_id)
				   AND NOT EXISTS (SELECT 1 FROM pg_temp.recon_found f
									WHERE f.binding_id = x.binding_id AND f.order_key = x.order_key
									  AND f.kind IN ('tracking_mismatch', 'status_mismatch')))
			   -- an intent that stopped, now delivered or made moot
			   OR (x.binding_id = ANY (bids)
				   AND x.kind IN ('dead_intent', 'invalid_order', 'auth_failed', 'render_failed',
								  'forbidden_host', 'tls_failed', 'apply_failed', 'poison')
				   AND EXISTS (
					   SELECT 1 FROM @extschema@.outbox o
						WHERE o.id = x.outbox_id
						  AND (o.state = 'done'
							   OR (o.op IN ('create', 'update')
								   AND EXISTS (SELECT 1 FROM @extschema@.shipment s
												WHERE s.binding_id = o.binding_id AND s.order_key = o.order_key
												  AND s.provider_id = o.provider_id AND s.status <> 'cancelled'
												  AND s.updated_at > x.opened_at)
								   AND NOT EXISTS (SELECT 1 FROM pg_temp.recon_found f
													WHERE f.binding_id = o.binding_id AND f.order_key = o.order_key
													  AND f.kind IN ('not_sent', 'address_changed_after_send')))
							   OR (o.op = 'cancel'
								   AND NOT EXISTS (SELECT 1 FROM @extschema@.shipment s
													WHERE s.binding_id = o.binding_id AND s.order_key = o.order_key
													  AND s.provider_id = o.provider_id
													  AND s.status <> 'cancelled'))
							   -- a create or update made moot: the order was
							   -- cancelled or deleted since, and that cancel is
							   -- done (sent, or nothing to cancel)
							   OR (o.op IN ('create', 'update')
								   AND EXISTS (SELECT 1 FROM @extschema@.outbox c
												WHERE c.binding_id = o.binding_id AND c.order_key = o.order_key
												  AND c.provider_id = o.provider_id AND c.op = 'cancel'
												  AND c.state = 'done' AND c.id > o.id)))))
			   -- the carrier side of the providers pulled, as far as the snapshot covers
			   OR (x.provider_id = ANY (pids) AND x.kind = 'missing_at_carrier'
				   AND NOT EXISTS (SELECT 1 FROM @extschema@.shipment s
									WHERE s.binding_id = x.binding_id AND s.order_key = x.order_key
									  AND s.provider_id = x.provider_id AND s.status <> 'cancelled'
									  AND (s.updated_at < r.window_start OR s.updated_at >= r.window_end)
									  AND NOT EXISTS (SELECT 1 FROM @extschema@.carrier_snapshot c
													   WHERE c.run_id = run AND c.provider_id = s.provider_id
														 AND c.shipment_id = s.provider_shipment_id)))
			   OR (x.provider_id = ANY (pids) AND x.kind IN ('tracking_mismatch', 'status_mismatch')
				   AND x.facts->>'check' = 'carrier'
				   AND (EXISTS (SELECT 1 FROM @extschema@.carrier_snapshot c
								 WHERE c.run_id = run AND c.provider_id = x.provider_id
								   AND c.shipment_id = x.facts->>'shipment_id')
						OR NOT EXISTS (SELECT 1 FROM @extschema@.shipment s
										WHERE s.binding_id = x.binding_id AND s.order_key = x.order_key
										  AND s.provider_id = x.provider_id)))
			   OR (x.provider_id = ANY (pids) AND x.kind = 'orphan_at_carrier'
				   AND EXISTS (SELECT 1 FROM @extschema@.carrier_snapshot c
								WHERE c.run_id = run AND c.provider_id = x.provider_id
								  AND c.shipment_id = x.subject))
			   OR (x.provider_id = ANY (pids) AND x.kind = 'duplicate_at_carrier'
				   AND x.order_key IN (SELECT c.order_ref FROM @extschema@.carrier_snapshot c
										WHERE c.run_id = run AND c.provider_id = x.provider_id)))
		RETURNING 1)
	SELECT count(*) INTO closed FROM c;

	-- the CRM side of tables no longer attached (detached, or dropped): no
	-- pass compares them again, nor looks at their write-backs.  (A table
	-- attached again keeps its binding, active again, and its tickets.)  A
	-- fee total a row did not take is moot too once the table's write-back
	-- map has no fee_total: nothing writes it any more, and the hourly look
	-- judges only the tables that have one.
	WITH d AS (
		UPDATE @extschema@.exception_ticket x
		   SET resolved_at = now(), run_id = run,
			   resolution = CASE WHEN EXISTS (SELECT 1 FROM @extschema@.binding b
											   WHERE b.binding_id = x.binding_id AND b.active)
				   THEN format('its table no longer writes back fee_total (reconciliation run %s)', run)
				   ELSE format('its table is no longer attached (reconciliation run %s)', run) END
		 WHERE x.resolved_at IS NULL AND x.binding_id IS NOT NULL
		   AND (((x.kind IN ('not_sent', 'address_changed_after_send', 'stuck', 'fee_mismatch',
							 'writeback_failed')
				  OR (x.kind IN ('tracking_mismatch', 'status_mismatch') AND x.facts->>'check' = 'crm'))
				 AND NOT EXISTS (SELECT 1 FROM @extschema@.binding b
								  WHERE b.binding_id = x.binding_id AND b.active))
				OR (x.kind = 'writeback_failed' AND x.provider_id IS NULL
					AND EXISTS (SELECT 1 FROM @extschema@.binding b
								 WHERE b.binding_id = x.binding_id AND b.active
								   AND NOT b.writeback ? 'fee_total')))
		RETURNING 1)
	SELECT closed + count(*) INTO closed FROM d;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_merge(bigint, integer[], integer[], integer[]) IS
	'Internal: opens, refreshes and reopens the tickets of a run''s findings, and resolves those it no longer sees.';

/*
 * Compare a run whose pulls are over, and record its outcome.  The worker
 * calls _reconcile_prepare first (and applies what it returns) in the same
 * transaction; called alone, this prepares itself and applies nothing.
 */
CREATE FUNCTION @extschema@._reconcile_compare(run bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	bids integer[];
	pids integer[];
	sbids integer[];
	b integer;
	p integer;
	m record;
	failed text;
BEGIN
	-- (two tests: the second is parsed only once the table exists)
	IF to_regclass('pg_temp.recon_prepared') IS NULL THEN
		PERFORM @extschema@._reconcile_prepare(run);
	ELSIF NOT EXISTS (SELECT 1 FROM pg_temp.recon_prepared x WHERE x.run_id = run) THEN
		PERFORM @extschema@._reconcile_prepare(run);
	END IF;
	SELECT x.* INTO r FROM @extschema@.reconcile_run x WHERE x.run_id = run FOR UPDATE;

	-- the bindings compared: all for a crm pass, else those of the providers chosen
	SELECT coalesce(array_agg(x.binding_id ORDER BY x.binding_id), '{}') INTO bids
	  FROM @extschema@.binding x
	 WHERE x.active
	   AND (r.kind = 'crm' OR x.provider_id IN (SELECT c.key::integer FROM jsonb_each(r.pulls) c));
	SELECT coalesce(array_agg(c.key::integer ORDER BY c.key::integer), '{}') INTO pids
	  FROM jsonb_each(r.pulls) c WHERE c.value->>'state' = 'done';
	SELECT string_agg(format('the pull of provider %s failed: %s', c.value->>'provider', c.value->>'error'), '; ')
	  INTO failed
	  FROM jsonb_each(r.pulls) c WHERE c.value->>'state' = 'failed';

	FOREACH p IN ARRAY pids LOOP
		PERFORM @extschema@._reconcile_carrier(run, p);
	END LOOP;
	FOREACH b IN ARRAY bids LOOP
		BEGIN
			PERFORM @extschema@._reconcile_crm(b, r.kind = 'full');
		EXCEPTION WHEN OTHERS THEN
			-- a table that cannot be read (row security forced on its
			-- owner, its key column renamed since attach()): none of its
			-- tickets is judged; the other tables are compared, and the
			-- run fails, naming it
			bids := array_remove(bids, b);
			failed := concat_ws('; ', failed, format('table %s: %s',
				(SELECT x.tbl FROM @extschema@.binding x WHERE x.binding_id = b), SQLERRM));
		END;
	END LOOP;
	-- stuck and fees: thresholds are days and bills monthly, so a CRM-side
	-- pass looks hourly
	SELECT coalesce(array_agg(s.binding_id ORDER BY s.binding_id), '{}') INTO sbids
	  FROM @extschema@.reconcile_state s
	 WHERE s.binding_id = ANY (bids)
	   AND (r.kind = 'full' OR s.stuck_at IS NULL OR s.stuck_at < now() - interval '1 hour');
	PERFORM @extschema@._reconcile_stuck(sbids);
	PERFORM @extschema@._reconcile_fees(sbids);
	UPDATE @extschema@.reconcile_state s SET stuck_at = now() WHERE s.binding_id = ANY (sbids);
	SELECT * INTO m FROM @extschema@._reconcile_merge(run, bids, pids, sbids);

	-- the snapshots of earlier runs of these providers are of no more use
	DELETE FROM @extschema@.carrier_snapshot c WHERE c.provider_id = ANY (pids) AND c.run_id < run;
	TRUNCATE pg_temp.recon_found, pg_temp.recon_pair, pg_temp.recon_ref, pg_temp.recon_dup,
		pg_temp.recon_prepared, pg_temp.recon_orders;

	UPDATE @extschema@.reconcile_run x
	   SET state = CASE WHEN failed IS NULL THEN 'done' ELSE 'failed' END,
		   error = failed, opened = m.opened, reopened = m.reopened, closed = m.closed,
		   finished_at = clock_timestamp()
	 WHERE x.run_id = run;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile_compare(bigint) IS
	'Internal: compares both sides for a run whose pulls are over, merges the findings into the ledger, and records the outcome.';

------------------------------------------------------------------------------
-- Public API
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.reconcile(provider text DEFAULT NULL,
	since timestamptz DEFAULT pg_catalog.now() - interval '2 days')
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pid integer;
	pdialect text;
	ppaused boolean;
	busy bigint;
	id bigint;
BEGIN
	IF since IS NULL THEN
		RAISE EXCEPTION 'since must not be null'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Give the start of the window, for example now() - interval ''2 days''.';
	END IF;
	IF since OPERATOR(pg_catalog.>) pg_catalog.now() THEN
		RAISE EXCEPTION 'since is in the future'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The carriers are asked for the shipments updated since then: give a time in the past.';
	END IF;
	IF provider IS NOT NULL THEN
		SELECT p.provider_id, p.dialect, p.paused INTO pid, pdialect, ppaused
		  FROM @extschema@.provider p WHERE p.name OPERATOR(pg_catalog.=) reconcile.provider;
		IF pid IS NULL THEN
			RAISE EXCEPTION 'provider "%" does not exist', provider
				USING ERRCODE = 'undefined_object',
					  HINT = 'See SELECT name FROM shipsync.providers.';
		END IF;
		IF pdialect OPERATOR(pg_catalog.=) ANY (ARRAY['easypost', 'aftership', 'kuaidi100']) THEN
			RAISE EXCEPTION 'provider "%" of dialect % tracks shipments, it has none of its own to reconcile', provider, pdialect
				USING ERRCODE = 'wrong_object_type',
					  HINT = 'Reconcile the shipping provider of the table it tracks.';
		END IF;
		IF NOT EXISTS (SELECT 1 FROM @extschema@.binding b
						WHERE b.provider_id OPERATOR(pg_catalog.=) pid AND b.active) THEN
			RAISE EXCEPTION 'provider "%" has no attached table', provider
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  HINT = 'Attach a table to it with shipsync.attach() first.';
		END IF;
		IF ppaused THEN
			RAISE EXCEPTION 'provider "%" is paused', provider
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  DETAIL = 'Nothing is sent to a paused provider, and its list is not pulled.',
					  HINT = 'Resume it first with shipsync.resume().';
		END IF;
	ELSIF NOT EXISTS (SELECT 1 FROM @extschema@.binding b
					   JOIN @extschema@.provider p ON p.provider_id OPERATOR(pg_catalog.=) b.provider_id
					  WHERE b.active AND NOT p.paused) THEN
		RAISE EXCEPTION 'no unpaused provider has an attached table'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Attach a table with shipsync.attach(), or resume its provider.';
	END IF;

	-- one full run at a time per provider
	PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('shipsync reconcile'));
	SELECT x.run_id INTO busy FROM @extschema@.reconcile_run x
	 WHERE x.state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'pulling', 'comparing'])
	   AND x.kind OPERATOR(pg_catalog.=) 'full'
	   AND (pid IS NULL OR x.provider_id IS NULL OR x.provider_id OPERATOR(pg_catalog.=) pid)
	 ORDER BY x.run_id LIMIT 1;
	IF busy IS NOT NULL THEN
		RAISE EXCEPTION 'reconciliation run % is still running', busy
			USING ERRCODE = 'object_in_use',
				  HINT = format('Wait for it: SELECT state FROM shipsync.reconcile_run WHERE run_id = %s.', busy);
	END IF;
	INSERT INTO @extschema@.reconcile_run AS x (provider_id, kind, trigger, window_start)
	VALUES (pid, 'full', 'manual', since)
	RETURNING x.run_id INTO id;
	PERFORM @extschema@._audit('reconcile', 'provider', coalesce(reconcile.provider, '*'),
		pg_catalog.jsonb_build_object('since', since), pg_catalog.jsonb_build_object('run_id', id));
	PERFORM @extschema@._wake(true);
	RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.reconcile(text, timestamptz) IS
	'Start a reconciliation run of one provider (NULL: every attached, unpaused provider) for the window since .. now, and return its id (shipsync.reconcile_run). The dispatcher pulls the carrier''s shipments updated in the window (generic: its list; sf_express: a lookup per order), then both sides are compared: discrepancies open tickets, those no longer seen are resolved.';

CREATE FUNCTION @extschema@.resync(tbl regclass, keys text[] DEFAULT NULL, kind text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b record;
	keytype text;
	ks text[];
	n bigint;
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT x.* INTO b FROM @extschema@.binding x
	 WHERE x.tbl OPERATOR(pg_catalog.=) resync.tbl AND x.active;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'table % is not attached', tbl
			USING ERRCODE = 'undefined_object',
				  HINT = 'See SELECT tbl FROM shipsync.binding WHERE active.';
	END IF;
	IF keys IS NULL AND kind IS NULL THEN
		RAISE EXCEPTION 'resync needs order keys, a kind of discrepancy, or both'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example shipsync.resync(''crm.orders'', kind => ''not_sent'').';
	END IF;
	IF kind IS NOT NULL AND kind OPERATOR(pg_catalog.<>) ALL (ARRAY['not_sent', 'missing_at_carrier',
			'tracking_mismatch', 'status_mismatch', 'address_changed_after_send', 'stuck']) THEN
		RAISE EXCEPTION 'cannot resync orders by discrepancy kind "%"', kind
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Orders can be sent again for the kinds not_sent, missing_at_carrier, tracking_mismatch, status_mismatch, address_changed_after_send and stuck.',
				  HINT = CASE kind WHEN 'fee_mismatch'
							  THEN 'A fee difference is settled with the carrier (a corrected statement, a dispute), not by sending the order again.'
							  ELSE 'An orphan or a duplicate at the carrier has no order of ours to send: cancel it at the carrier.' END;
	END IF;

	-- the orders: those given, those with an open discrepancy of the kind, or both
	ks := ARRAY(SELECT DISTINCT k FROM unnest(keys) AS k WHERE k IS NOT NULL);
	IF kind IS NOT NULL THEN
		ks := ARRAY(SELECT DISTINCT x.order_key FROM @extschema@.exception_ticket x
					 WHERE x.binding_id OPERATOR(pg_catalog.=) b.binding_id
					   AND x.kind OPERATOR(pg_catalog.=) resync.kind AND x.resolved_at IS NULL
					   AND x.order_key IS NOT NULL
					   AND (keys IS NULL OR x.order_key OPERATOR(pg_catalog.=) ANY (ks)));
	END IF;
	-- that exist (the keys are compared as the key column's type, by the
	-- table's owner: a domain's check is the owner's code)
	keytype := @extschema@._key_type(b.tbl, b.key_column);
	BEGIN
		ks := ARRAY(SELECT o.k FROM @extschema@._select_as_owner(b.tbl,
				pg_catalog.format('SELECT t.%1$I::pg_catalog.text FROM %2$s t'
								  ' WHERE t.%1$I OPERATOR(pg_catalog.=) ANY ($1::%3$s[])',
								  b.key_column, b.tbl, keytype),
				ks, NULL) AS o(k text));
	EXCEPTION WHEN data_exception THEN
		RAISE EXCEPTION 'the order keys given are not all of type %', keytype
			USING ERRCODE = 'invalid_text_representation',
				  DETAIL = format('%s.', SQLERRM),
				  HINT = format('Give the values of column %I of %s, as text.', b.key_column, b.tbl);
	END;

	-- a create where there is no live shipment (or the carrier lost it: a
	-- new idempotency key, so a carrier that remembers keys creates it
	-- again), an update where there is one; orders with an intent on its
	-- way are left to it
	WITH o AS (
		SELECT k,
			   s.status IS NULL OR s.status OPERATOR(pg_catalog.=) 'cancelled'
			   OR EXISTS (SELECT 1 FROM @extschema@.exception_ticket x
						   WHERE x.binding_id OPERATOR(pg_catalog.=) b.binding_id
							 AND x.order_key OPERATOR(pg_catalog.=) k
							 AND x.kind OPERATOR(pg_catalog.=) 'missing_at_carrier'
							 AND x.resolved_at IS NULL) AS create_it
		  FROM unnest(ks) AS k
		  LEFT JOIN @extschema@.shipment s
			ON s.binding_id OPERATOR(pg_catalog.=) b.binding_id AND s.order_key OPERATOR(pg_catalog.=) k
		   AND s.provider_id OPERATOR(pg_catalog.=) b.provider_id
		 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.outbox x
							WHERE x.binding_id OPERATOR(pg_catalog.=) b.binding_id
							  AND x.order_key OPERATOR(pg_catalog.=) k
							  AND x.state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'retrying', 'in_flight']))
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.inbox i
							WHERE i.binding_id OPERATOR(pg_catalog.=) b.binding_id
							  AND i.order_key OPERATOR(pg_catalog.=) k)),
	ins AS (
		INSERT INTO @extschema@.outbox (binding_id, provider_id, order_key, op)
		SELECT b.binding_id, b.provider_id, o.k, CASE WHEN o.create_it THEN 'create' ELSE 'update' END
		  FROM o ORDER BY o.k
		RETURNING 1)
	SELECT pg_catalog.count(*) INTO n FROM ins;
	PERFORM @extschema@._audit('resync', 'binding', b.tbl::text,
		pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('keys', keys, 'kind', kind)),
		pg_catalog.jsonb_build_object('enqueued', n));
	PERFORM @extschema@._wake(false);
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.resync(regclass, text[], text) IS
	'Send orders of an attached table again: those given by key, or every order with an open discrepancy of the given kind, or the given ones among those. Enqueues a create (no live shipment, or the carrier lost it: a new intent, so a new idempotency key) or an update (a shipment exists), skips orders with an intent on its way, and returns how many were enqueued.';

------------------------------------------------------------------------------
-- Views
------------------------------------------------------------------------------

CREATE VIEW @extschema@.reconciliation AS
SELECT t.kind,
	   p.name AS provider,
	   b.tbl AS "table",
	   t.order_key,
	   t.tracking_number,
	   coalesce(t.reopened_at, t.opened_at) AS detected_at,
	   t.facts AS detail,
	   t.ticket_id,
	   -- (a regclass shows a dropped table as a bare oid)
	   coalesce(d.name, b.tbl::text) AS table_name
FROM @extschema@.exception_ticket t
LEFT JOIN @extschema@.provider p ON p.provider_id OPERATOR(pg_catalog.=) t.provider_id
LEFT JOIN @extschema@.binding b ON b.binding_id OPERATOR(pg_catalog.=) t.binding_id
LEFT JOIN @extschema@.dropped_table d ON d.binding_id OPERATOR(pg_catalog.=) t.binding_id
WHERE t.resolved_at IS NULL
  AND t.kind OPERATOR(pg_catalog.=) ANY (@extschema@._reconcile_kinds());
COMMENT ON VIEW @extschema@.reconciliation IS
	'One row per open discrepancy between the CRM side and the carriers'' side, found by reconciliation: kinds not_sent, missing_at_carrier, orphan_at_carrier, duplicate_at_carrier, tracking_mismatch, status_mismatch, address_changed_after_send, fee_mismatch (a row of shipsync.fee_difference), stuck. See docs/reconciliation.md.';
COMMENT ON COLUMN @extschema@.reconciliation.kind IS 'The kind of discrepancy.';
COMMENT ON COLUMN @extschema@.reconciliation.provider IS 'The provider (carrier) it is about.';
COMMENT ON COLUMN @extschema@.reconciliation."table" IS 'The attached table of the order; NULL when the carrier''s order reference matches no table (orphan_at_carrier, duplicate_at_carrier), or for a fee_mismatch of a billed waybill no shipment has.';
COMMENT ON COLUMN @extschema@.reconciliation.order_key IS 'The order''s key, as text (for an orphan: the carrier''s order reference; NULL for a fee_mismatch of a billed waybill no shipment has, keyed by provider and tracking number).';
COMMENT ON COLUMN @extschema@.reconciliation.tracking_number IS 'The tracking number involved, when there is one.';
COMMENT ON COLUMN @extschema@.reconciliation.detected_at IS 'When it was found (or found again, after having been resolved).';
COMMENT ON COLUMN @extschema@.reconciliation.detail IS 'The facts, as JSON: check (crm, carrier, stuck or fees) and both sides'' values (fee_mismatch: the fee_difference row''s fee_kind and amounts).';
COMMENT ON COLUMN @extschema@.reconciliation.ticket_id IS 'Its ticket in shipsync.exception_ticket, for shipsync.ack() and shipsync.resolve().';
COMMENT ON COLUMN @extschema@.reconciliation.table_name IS 'The name of the table, as text: that of a dropped table as it was when dropped (schema-qualified), where "table" shows a bare oid.';

CREATE VIEW @extschema@.reconciliation_summary AS
WITH d AS (
	SELECT e.at::date AS day, t.provider_id, t.kind,
		   pg_catalog.count(*) FILTER (WHERE e.event OPERATOR(pg_catalog.=) ANY (ARRAY['opened', 'reopened'])) AS opened,
		   pg_catalog.count(*) FILTER (WHERE e.event OPERATOR(pg_catalog.=) 'resolved') AS closed
	  FROM @extschema@.ticket_event e
	  JOIN @extschema@.exception_ticket t ON t.ticket_id OPERATOR(pg_catalog.=) e.ticket_id
	 WHERE t.kind OPERATOR(pg_catalog.=) ANY (@extschema@._reconcile_kinds())
	 GROUP BY 1, 2, 3)
SELECT d.day,
	   p.name AS provider,
	   d.kind,
	   d.opened,
	   d.closed,
	   pg_catalog.sum(d.opened OPERATOR(pg_catalog.-) d.closed)
		   OVER (PARTITION BY d.provider_id, d.kind ORDER BY d.day)::bigint AS open
FROM d
LEFT JOIN @extschema@.provider p ON p.provider_id OPERATOR(pg_catalog.=) d.provider_id;
COMMENT ON VIEW @extschema@.reconciliation_summary IS
	'Per day (in the session''s time zone), provider and kind of discrepancy: how many were found (or found again), how many closed, and how many were open at the end of the day.';
COMMENT ON COLUMN @extschema@.reconciliation_summary.day IS 'The day.';
COMMENT ON COLUMN @extschema@.reconciliation_summary.provider IS 'The provider.';
COMMENT ON COLUMN @extschema@.reconciliation_summary.kind IS 'The kind of discrepancy.';
COMMENT ON COLUMN @extschema@.reconciliation_summary.opened IS 'Discrepancies found that day (new ones and ones back after a resolution).';
COMMENT ON COLUMN @extschema@.reconciliation_summary.closed IS 'Discrepancies resolved that day, by a person or because a run no longer saw them.';
COMMENT ON COLUMN @extschema@.reconciliation_summary.open IS 'Discrepancies open at the end of the day.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.reconcile_run', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.reconcile_run_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.stuck_after', 'WHERE NOT builtin');
