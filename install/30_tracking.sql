-- install/30_tracking.sql: Tracking: canonical statuses, status maps, events, ingest
-- and trace().
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql.

------------------------------------------------------------------------------
-- Tracking
--
-- Events pushed (shipsync.ingest_tracking) or pulled are verified, mapped to
-- the canonical statuses through status_map, deduplicated on (provider,
-- event key) and folded in event-time order into the shipment's status,
-- which is written back onto the order row (src/tracking.c).
------------------------------------------------------------------------------

-- Tracking options of create_provider(): checks those given, returns their
-- names.  Called at run time, so it may live here, after create_provider.
-- Secrets are never echoed in a message.
CREATE FUNCTION @extschema@._check_tracking_options(options jsonb, dialect text)
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text;
BEGIN
	FOREACH k IN ARRAY ARRAY['webhook_secret', 'previous_webhook_secret', 'timezone'] LOOP
		IF options ? k AND (jsonb_typeof(options->k) <> 'string' OR options->>k = '') THEN
			RAISE EXCEPTION 'option "%" must be a non-empty string', k
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = CASE WHEN k LIKE '%secret' THEN 'Give the secret the provider signs its pushes with.'
								  ELSE 'Give a string.' END;
		END IF;
	END LOOP;
	-- as the signature check decodes it (src/signature.c): base64 after an
	-- optional whsec_, no lone final character (six bits make no byte), a
	-- key of 512 bytes at most; one it cannot decode would refuse every push
	IF dialect = 'generic' AND options ? 'webhook_secret'
	   AND ((options->>'webhook_secret') !~ '^(whsec_)?[A-Za-z0-9+/]+={0,2}$'
			OR length(regexp_replace(options->>'webhook_secret', '^whsec_|=+$', '', 'g')) % 4 = 1
			OR length(regexp_replace(options->>'webhook_secret', '^whsec_', '')) > 682) THEN
		RAISE EXCEPTION 'option "webhook_secret" of a generic provider is not a Standard Webhooks secret'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A Standard Webhooks secret is whsec_ followed by the base64 of the key.',
				  HINT = 'Give the secret exactly as the carrier issued it, for example whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw.';
	END IF;
	IF options ? 'accept_unsigned_pushes' AND jsonb_typeof(options->'accept_unsigned_pushes') <> 'boolean' THEN
		RAISE EXCEPTION 'option "accept_unsigned_pushes" must be true or false'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Only sf_express pushes are unsigned; the endpoint must then authenticate them itself.';
	END IF;
	IF options ? 'timezone' AND NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = options->>'timezone') THEN
		RAISE EXCEPTION 'unknown time zone "%"', options->>'timezone'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give a name from pg_timezone_names, for example Asia/Shanghai.';
	END IF;
	PERFORM @extschema@._int_option(options, 'poll_interval_s', 0, 0, 86400);
	PERFORM @extschema@._int_option(options, 'unmatched_ttl_s', 604800, 1, 31536000);
	RETURN ARRAY['webhook_secret', 'previous_webhook_secret', 'accept_unsigned_pushes',
				 'poll_interval_s', 'unmatched_ttl_s', 'timezone'];
END
$$;

CREATE TABLE @extschema@.canonical_status (
	name			text PRIMARY KEY,
	rank			integer NOT NULL,
	terminal		boolean NOT NULL DEFAULT false,
	recoverable		boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE @extschema@.canonical_status IS
	'The canonical shipment statuses and their rules: a status moves up in rank; from a recoverable status any later event applies; expired is set only by the provider''s expiry message and left by any later event; terminal statuses stay; unknown never changes anything.';
INSERT INTO @extschema@.canonical_status (name, rank, terminal, recoverable) VALUES
	('pending', 0, false, false),
	('expired', 5, false, false),
	('pre_transit', 10, false, false),
	('in_transit', 20, false, false),
	('out_for_delivery', 30, false, false),
	('available_for_pickup', 35, false, false),
	('delivery_failed', 40, false, true),
	('exception', 45, false, true),
	('returning', 50, false, false),
	('returned', 90, true, false),
	('delivered', 100, true, false),
	('cancelled', 100, true, false),
	('unknown', -1, false, false);

CREATE TABLE @extschema@.status_map (
	profile			text NOT NULL,
	raw_status		text NOT NULL,
	pattern			text CHECK (pattern IS NULL OR ('' ~ pattern) IS NOT NULL),
	status			text NOT NULL REFERENCES @extschema@.canonical_status (name),
	priority		integer NOT NULL DEFAULT 0,
	builtin			boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX status_map_key ON @extschema@.status_map
	(profile, raw_status, (coalesce(pattern, '')));
-- its key is an expression, which cannot be a replica identity: without
-- one, a publication FOR ALL TABLES refuses every change of a mapping
ALTER TABLE @extschema@.status_map REPLICA IDENTITY FULL;
COMMENT ON TABLE @extschema@.status_map IS
	'Provider raw status to canonical status, per profile (the provider option profile, else its dialect). A row matches an event whose raw status or sub-status (AfterShip subtag, EasyPost status_detail, Kuaidi100 status text) is raw_status and, when pattern is set, whose description matches that regular expression; the highest priority wins, then a row with a pattern. Profile generic needs no rows for the canonical names. Unmapped: unknown, raw status kept.';
COMMENT ON COLUMN @extschema@.status_map.builtin IS
	'Seeded by the extension (not dumped by pg_dump, created again on restore). A row you update, or insert with a built-in row''s key in its place, is yours (false) and dumped; built-in rows cannot be deleted.';

INSERT INTO @extschema@.status_map (profile, raw_status, pattern, status, priority, builtin)
SELECT m.profile, m.raw_status, m.pattern, m.status, m.priority, true
FROM (VALUES
	('easypost', 'unknown', NULL, 'pending', 0),
	('easypost', 'pre_transit', NULL, 'pre_transit', 0),
	('easypost', 'in_transit', NULL, 'in_transit', 0),
	('easypost', 'out_for_delivery', NULL, 'out_for_delivery', 0),
	('easypost', 'available_for_pickup', NULL, 'available_for_pickup', 0),
	('easypost', 'failure', NULL, 'exception', 0),
	('easypost', 'failure', '(?i)attempt', 'delivery_failed', 1),
	('easypost', 'error', NULL, 'exception', 0),
	('easypost', 'return_to_sender', NULL, 'returning', 0),
	('easypost', 'delivered', NULL, 'delivered', 0),
	('easypost', 'cancelled', NULL, 'cancelled', 0),
	('aftership', 'Pending', NULL, 'pending', 0),
	('aftership', 'InfoReceived', NULL, 'pre_transit', 0),
	('aftership', 'InTransit', NULL, 'in_transit', 0),
	('aftership', 'OutForDelivery', NULL, 'out_for_delivery', 0),
	('aftership', 'AvailableForPickup', NULL, 'available_for_pickup', 0),
	('aftership', 'AttemptFail', NULL, 'delivery_failed', 0),
	('aftership', 'Exception', NULL, 'exception', 0),
	('aftership', 'Exception_010', NULL, 'returning', 10),
	('aftership', 'Exception_011', NULL, 'returned', 10),
	('aftership', 'Delivered', NULL, 'delivered', 0),
	('aftership', 'Expired', NULL, 'expired', 0),
	('kuaidi100', '0', NULL, 'in_transit', 0),
	('kuaidi100', '1', NULL, 'in_transit', 0),
	('kuaidi100', '7', NULL, 'in_transit', 0),
	('kuaidi100', '10', NULL, 'in_transit', 0),
	('kuaidi100', '11', NULL, 'in_transit', 0),
	('kuaidi100', '12', NULL, 'in_transit', 0),
	('kuaidi100', '5', NULL, 'out_for_delivery', 0),
	('kuaidi100', '5', '(驿站|快递柜|自提|代收点|丰巢|待取件)', 'available_for_pickup', 1),
	('kuaidi100', '2', NULL, 'exception', 0),
	('kuaidi100', '2', '(派送不成功|未妥投|无人|联系不上|改约|再次派送)', 'delivery_failed', 1),
	('kuaidi100', '13', NULL, 'exception', 0),
	('kuaidi100', '14', NULL, 'exception', 0),
	('kuaidi100', '6', NULL, 'returning', 0),
	('kuaidi100', '4', NULL, 'returned', 0),
	('kuaidi100', '3', NULL, 'delivered', 0),
	('kuaidi100', 'abort', NULL, 'expired', 0),
	('kuaidi100', '在途', NULL, 'in_transit', 0),
	('kuaidi100', '揽收', NULL, 'in_transit', 0),
	('kuaidi100', '干线', NULL, 'in_transit', 0),
	('kuaidi100', '转投', NULL, 'in_transit', 0),
	('kuaidi100', '派件', NULL, 'out_for_delivery', 0),
	('kuaidi100', '疑难', NULL, 'exception', 0),
	('kuaidi100', '退回', NULL, 'returning', 0),
	('kuaidi100', '退签', NULL, 'returned', 0),
	('kuaidi100', '签收', NULL, 'delivered', 0),
	('kuaidi100', '拒签', NULL, 'exception', 0),
	('sf_express', '50', NULL, 'in_transit', 0),
	('sf_express', '30', NULL, 'in_transit', 0),
	('sf_express', '31', NULL, 'in_transit', 0),
	('sf_express', '36', NULL, 'in_transit', 0),
	('sf_express', '44', NULL, 'out_for_delivery', 0),
	('sf_express', '80', NULL, 'delivered', 0)
) AS m(profile, raw_status, pattern, status, priority);

-- Built-in rows (status_map here, fee_type_map and currency in
-- 45_fees.sql) are not dumped: CREATE EXTENSION seeds them again on
-- restore.  A row a DBA writes is therefore always the DBA's own: an
-- update of a built-in row makes it so (pg_dump keeps it from then on),
-- and an own row inserted with a built-in row's key takes that row's
-- place, which is also how a restore brings the own row back after the
-- seeds.  A built-in row cannot be deleted: the restore would bring it
-- back.  Seeds of a later version are written before these triggers see
-- them, or with the triggers disabled.
CREATE FUNCTION @extschema@._builtin_row()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
		IF OLD.builtin AND pg_catalog.pg_trigger_depth() OPERATOR(pg_catalog.=) 1 THEN
			RAISE EXCEPTION 'a built-in row of shipsync.% cannot be deleted', TG_TABLE_NAME
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  DETAIL = 'Built-in rows come with the extension and are created again when a dump is restored.',
					  HINT = CASE TG_TABLE_NAME
						WHEN 'status_map' THEN 'Update it instead (status ''unknown'' maps its raw status to nothing): an updated row is yours, and pg_dump keeps it.'
						WHEN 'fee_type_map' THEN 'Update its fee_type instead: an updated row is yours, and pg_dump keeps it.'
						ELSE 'Built-in currencies stay.' END;
		END IF;
		RETURN OLD;
	END IF;
	NEW.builtin := false;
	IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
		CASE TG_TABLE_NAME
		WHEN 'status_map' THEN
			DELETE FROM @extschema@.status_map m
			 WHERE m.builtin AND m.profile OPERATOR(pg_catalog.=) NEW.profile
			   AND m.raw_status OPERATOR(pg_catalog.=) NEW.raw_status
			   AND coalesce(m.pattern, '') OPERATOR(pg_catalog.=) coalesce(NEW.pattern, '');
		WHEN 'fee_type_map' THEN
			DELETE FROM @extschema@.fee_type_map m
			 WHERE m.builtin AND m.profile OPERATOR(pg_catalog.=) NEW.profile
			   AND m.code OPERATOR(pg_catalog.=) NEW.code;
		ELSE
			DELETE FROM @extschema@.currency c
			 WHERE c.builtin AND c.code OPERATOR(pg_catalog.=) NEW.code;
		END CASE;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@._builtin_row() IS
	'Internal: a row written to status_map, fee_type_map or currency is the writer''s own (builtin false, dumped by pg_dump): an updated built-in row becomes one, an inserted row takes the place of the built-in row of its key, and a built-in row cannot be deleted.';
CREATE TRIGGER status_map_builtin BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.status_map
	FOR EACH ROW EXECUTE FUNCTION @extschema@._builtin_row();

CREATE TABLE @extschema@.tracking_event (
	event_id		bigint GENERATED ALWAYS AS IDENTITY,
	provider_id		integer NOT NULL,
	event_key		text NOT NULL,
	tracking_number text COLLATE "C" NOT NULL,
	binding_id		integer NOT NULL,
	order_key		text COLLATE "C" NOT NULL,
	occurred_at		timestamptz NOT NULL,
	status			text NOT NULL,
	raw_status		text,
	raw_detail		text,
	location		text,
	description		text,
	received_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	piece			text,
	-- the dedup key is the primary key: one index less per event
	PRIMARY KEY (provider_id, event_key)
);
CREATE INDEX tracking_event_order_idx ON @extschema@.tracking_event (binding_id, order_key, occurred_at);
COMMENT ON TABLE @extschema@.tracking_event IS
	'One row per tracking event received for a known shipment, unique per provider and event key (duplicates are dropped): event time, canonical status, and the provider''s raw status and sub-status beside it. Out-of-order events are kept; the shipment''s status is folded from them in event-time order.';

COMMENT ON COLUMN @extschema@.tracking_event.piece IS
	'NULL for an event of the shipment''s tracking number (its main waybill); for another waybill of a multi-piece shipment (SF Express: shipment.waybills), its kind: child (waybillType 2), return (3), or "waybill type N". Only the main waybill''s events move the shipment''s status.';

-- the other waybills of multi-piece shipments (SF Express child and return
-- waybills, shipment.waybills), so that their route pushes find the order
CREATE INDEX shipment_waybills_idx ON @extschema@.shipment USING gin (waybills jsonb_path_ops)
	WHERE waybills IS NOT NULL;

CREATE TABLE @extschema@.unmatched_event (
	provider_id		integer NOT NULL,
	event_key		text NOT NULL,
	tracking_number text COLLATE "C" NOT NULL,
	occurred_at		timestamptz NOT NULL,
	raw_status		text,
	raw_detail		text,
	location		text,
	description		text,
	received_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	expires_at		timestamptz NOT NULL,
	PRIMARY KEY (provider_id, event_key)
);
CREATE INDEX unmatched_event_tracking_idx ON @extschema@.unmatched_event (provider_id, tracking_number);
CREATE INDEX unmatched_event_expiry_idx ON @extschema@.unmatched_event (expires_at);
COMMENT ON TABLE @extschema@.unmatched_event IS
	'Tracking events for a tracking number no shipment has yet: parked, moved to tracking_event when the shipment appears, dropped at expires_at (provider option unmatched_ttl_s) with an exception ticket of kind unmatched_expired.';

-- The status fold: events in event-time order, one step each
-- (src/tracking.c); the result is {status, raw status}.
CREATE FUNCTION @extschema@._status_step(internal, text, text, integer, boolean, boolean)
RETURNS internal
AS 'MODULE_PATHNAME', 'shipsync_status_step'
LANGUAGE C IMMUTABLE;
CREATE FUNCTION @extschema@._status_final(internal)
RETURNS text[]
AS 'MODULE_PATHNAME', 'shipsync_status_final'
LANGUAGE C IMMUTABLE;
CREATE AGGREGATE @extschema@._status_fold(text, text, integer, boolean, boolean) (
	SFUNC = @extschema@._status_step,
	STYPE = internal,
	FINALFUNC = @extschema@._status_final
);

-- Expired parked events: dropped, one ticket per tracking number.  PL/pgSQL,
-- not SQL: its plan is kept for the session instead of being made at every call.
CREATE FUNCTION @extschema@._expire_unmatched(pid integer)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
	pids integer[];
BEGIN
	-- the only writer of unmatched_expired tickets, one transaction at a
	-- time per provider (_ticket_fold() takes no lock per ticket of this
	-- kind).  A provider whose events another transaction is expiring is
	-- left to it (the next call takes what is left): a push never waits
	-- here, holding the locks of its tracking numbers
	pids := ARRAY(SELECT e.provider_id
					FROM (SELECT DISTINCT u.provider_id FROM @extschema@.unmatched_event u
						   WHERE u.expires_at <= now() AND (pid IS NULL OR u.provider_id = pid)) e
				   WHERE pg_try_advisory_xact_lock(
							 hashtextextended('shipsync unmatched_expired|' || e.provider_id, 0)));
	IF cardinality(pids) = 0 THEN
		RETURN 0;
	END IF;
	WITH d AS (
		DELETE FROM @extschema@.unmatched_event u
		 WHERE u.expires_at <= now() AND u.provider_id = ANY (pids)
		RETURNING u.*),
	-- one ticket per tracking number (the ledger folds events of the same one)
	t AS (
		INSERT INTO @extschema@.exception_ticket (kind, provider_id, subject, tracking_number, detail)
		SELECT 'unmatched_expired', d.provider_id, d.tracking_number, d.tracking_number,
			   format('tracking event %s of provider %s for unknown tracking number %s (raw status %s) found no shipment within unmatched_ttl_s = %s',
					  d.event_key, p.name, d.tracking_number, coalesce(d.raw_status, 'none'),
					  coalesce(p.options->>'unmatched_ttl_s', '604800'))
		FROM d JOIN @extschema@.provider p ON p.provider_id = d.provider_id
		RETURNING 1)
	SELECT count(*) INTO n FROM d;
	RETURN n;
END
$$;

-- The kind of waybill number tn among a shipment's waybills (SF Express
-- waybillNoInfoList): child (waybillType 2), return (3), main (1, when it
-- is not the tracking number), else "waybill type N".
CREATE FUNCTION @extschema@._waybill_piece(waybills jsonb, tn text)
RETURNS text
LANGUAGE sql IMMUTABLE
BEGIN ATOMIC
	SELECT CASE w.t WHEN '1' THEN 'main' WHEN '2' THEN 'child' WHEN '3' THEN 'return'
				ELSE 'waybill type ' || coalesce(w.t, 'unknown') END
	FROM (SELECT x ->> 'waybillType' AS t
		  FROM jsonb_array_elements(
				   CASE jsonb_typeof(waybills) WHEN 'array' THEN waybills ELSE '[]'::jsonb END) x
		  WHERE x ->> 'waybillNo' = tn LIMIT 1) w;
END;

-- The shipment of provider pid of which tn is another waybill (SF Express:
-- child, return; shipment.waybills), with the piece's kind: the newest
-- such shipment.  The tracking apply's lookup of pieces, for parked events
-- and for a batch, each number on its own through the waybills' index (a
-- join let the planner read every multi-piece shipment of the provider for
-- each batch); inlined into the caller's plan (plain SQL, its arguments
-- columns: no plan of its own to make at each call).
CREATE FUNCTION @extschema@._piece_shipment(pid integer, tn text)
RETURNS TABLE (binding_id integer, order_key text, piece text)
LANGUAGE sql STABLE
BEGIN ATOMIC
	SELECT s.binding_id, s.order_key, @extschema@._waybill_piece(s.waybills, _piece_shipment.tn)
	FROM @extschema@.shipment s
	WHERE s.waybills @> jsonb_build_array(jsonb_build_object('waybillNo', _piece_shipment.tn))
	  AND s.waybills IS NOT NULL AND s.provider_id = _piece_shipment.pid
	ORDER BY s.created_at DESC
	LIMIT 1;
END;

-- The waybills of an order a tracking provider (tpid) registers, in the
-- order they are registered: the main one (the tracking number of the
-- order's newest shipment at another provider), then each other waybill
-- of a multi-piece shipment (SF Express: child, return) as the carrier
-- listed them (piece: its element of shipment.waybills).  registered: the
-- provider's own shipment of the order records it (its tracking number,
-- or for a piece, its waybills: a piece may be registered while the main
-- one is not, whose registration failed).  The applier enqueues one
-- registration per row, each about its own waybill (outbox.waybill): it
-- renders and records that one, whatever became of the others.
CREATE FUNCTION @extschema@._registration_waybills(bid integer, ok text, tpid integer)
RETURNS TABLE (waybill text, piece jsonb, registered boolean, ord bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
	SELECT w.no, w.e,
		   coalesce(CASE WHEN w.e IS NULL THEN t.tracking_number = c.tracking_number
						 ELSE coalesce(t.tracking_number = c.tracking_number, true)
							  AND t.waybills @> jsonb_build_array(jsonb_build_object('waybillNo', w.no)) END,
					false),
		   w.ord
	FROM (SELECT x.tracking_number, x.waybills FROM @extschema@.shipment x
		  WHERE x.binding_id = _registration_waybills.bid AND x.order_key = _registration_waybills.ok
			AND x.provider_id <> _registration_waybills.tpid AND x.tracking_number IS NOT NULL
		  ORDER BY x.updated_at DESC LIMIT 1) c
	CROSS JOIN LATERAL (
		SELECT c.tracking_number AS no, NULL::jsonb AS e, 0::bigint AS ord
		UNION ALL
		SELECT a.e ->> 'waybillNo', a.e, a.i
		FROM jsonb_array_elements(
				 CASE jsonb_typeof(c.waybills) WHEN 'array' THEN c.waybills ELSE '[]'::jsonb END)
			 WITH ORDINALITY AS a(e, i)
		WHERE jsonb_typeof(a.e -> 'waybillNo') = 'string' AND a.e ->> 'waybillNo' <> c.tracking_number) w
	LEFT JOIN @extschema@.shipment t
	  ON t.binding_id = _registration_waybills.bid AND t.order_key = _registration_waybills.ok
	 AND t.provider_id = _registration_waybills.tpid
	ORDER BY w.ord;
END;

/*
 * Store one batch of events of a provider and move its shipments' statuses.
 * Called by ingest_tracking() and the poller (src/tracking.c), which write
 * the changes back onto the order rows.  Returns the counts, then one row
 * per shipment whose canonical status changed.
 */
CREATE FUNCTION @extschema@._apply_tracking(pid integer, prof text, ttl_s integer,
	keys text[], tns text[], raws text[], details text[], ats timestamptz[],
	locs text[], descrs text[])
RETURNS TABLE (kind text, binding_id integer, order_key text, tracking_number text,
			   old_status text, new_status text, n bigint, tbl text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- (its plans cost enough on paper for JIT, 40 ms a call to save microseconds)
SET jit = off
AS $$
DECLARE
	n_new bigint;
	n_park bigint;
	n_matched bigint;
	n_expired bigint;
	bids integer[];
	oks text[];
	has_parked boolean;
BEGIN
	n_expired := @extschema@._expire_unmatched(pid);

	-- Serialise with every other transaction adding events for the same
	-- tracking numbers of this provider: a transaction-level advisory lock
	-- on (provider, hash of the tracking number), taken in one statement in
	-- a fixed order, before any event is read or written.  The fold below, a
	-- later statement with a snapshot of its own, then sees every event
	-- committed before it.  (Row locks on the shipments did the same at the
	-- cost of a WAL record and a dirtied page per shipment: 14% of ingest.)
	has_parked := EXISTS (SELECT 1 FROM @extschema@.unmatched_event u WHERE u.provider_id = pid);
	PERFORM pg_advisory_xact_lock(pid, x.h)
	   FROM (SELECT DISTINCT hashtext(y.t) AS h
			 FROM (SELECT unnest(tns) AS t
				   UNION ALL
				   SELECT u.tracking_number FROM @extschema@.unmatched_event u
				   WHERE has_parked AND u.provider_id = pid) y
			 ORDER BY 1) x;

	-- parked events whose shipment has appeared
	IF has_parked THEN
	-- a tracking number given to several shipments (carriers recycle
	-- them) goes to the newest
	WITH main AS (
		SELECT DISTINCT ON (s.tracking_number) s.binding_id, s.order_key, s.tracking_number,
			   NULL::text AS piece
		FROM @extschema@.shipment s
		WHERE s.provider_id = pid
		  AND s.tracking_number IN (SELECT u.tracking_number FROM @extschema@.unmatched_event u
									WHERE u.provider_id = pid)
		ORDER BY s.tracking_number, s.created_at DESC),
	-- or another waybill of a multi-piece shipment (SF: child, return)
	pc AS (
		SELECT p.binding_id, p.order_key, t.tn AS tracking_number, p.piece
		FROM (SELECT DISTINCT u.tracking_number AS tn FROM @extschema@.unmatched_event u
			  WHERE u.provider_id = pid
				AND NOT EXISTS (SELECT 1 FROM main WHERE main.tracking_number = u.tracking_number)) t
		CROSS JOIN LATERAL @extschema@._piece_shipment(pid, t.tn) p),
	ship AS (
		SELECT * FROM main UNION ALL SELECT * FROM pc),
	moved AS (
		DELETE FROM @extschema@.unmatched_event u USING ship
		 WHERE u.provider_id = pid AND u.tracking_number = ship.tracking_number
		RETURNING u.*, ship.binding_id, ship.order_key, ship.piece),
	ins AS (
		INSERT INTO @extschema@.tracking_event AS e (provider_id, event_key, tracking_number,
			binding_id, order_key, occurred_at, status, raw_status, raw_detail, location,
			description, received_at, piece)
		SELECT pid, m.event_key, m.tracking_number, m.binding_id, m.order_key, m.occurred_at,
			   coalesce(mm.status, gc.name, 'unknown'),
			   m.raw_status, m.raw_detail, m.location, m.description, m.received_at, m.piece
		FROM moved m
		LEFT JOIN LATERAL (
			SELECT sm.status FROM @extschema@.status_map sm
			WHERE sm.profile = prof AND sm.raw_status IN (m.raw_status, m.raw_detail)
			  AND (sm.pattern IS NULL OR coalesce(m.description, '') ~ sm.pattern)
			ORDER BY sm.priority DESC, sm.pattern IS NOT NULL DESC, sm.raw_status = m.raw_status DESC
			LIMIT 1) mm ON true
		LEFT JOIN @extschema@.canonical_status gc ON prof = 'generic' AND gc.name = m.raw_status
		ORDER BY m.received_at, m.occurred_at
		ON CONFLICT (provider_id, event_key) DO NOTHING
		RETURNING e.binding_id, e.order_key)
	SELECT count(*), array_agg(ins.binding_id), array_agg(ins.order_key)
	INTO n_matched, bids, oks FROM ins;
	ELSE
		n_matched := 0;
	END IF;

	-- this batch: known shipments get events, the others are parked
	WITH ev AS (
		SELECT u.*
		FROM unnest(keys, tns, raws, details, ats, locs, descrs)
			 WITH ORDINALITY AS u(k, tn, raw, det, at, loc, descr, ord)),
	-- the map rows this batch can use, read once (none at all, usually, for
	-- the generic profile)
	cand AS MATERIALIZED (
		SELECT sm.raw_status, sm.pattern, sm.status, sm.priority
		FROM @extschema@.status_map sm
		WHERE sm.profile = prof
		  AND sm.raw_status IN (SELECT ev.raw FROM ev UNION SELECT ev.det FROM ev)),
	main AS (
		SELECT DISTINCT ON (s.tracking_number) s.binding_id, s.order_key, s.tracking_number,
			   NULL::text AS piece
		FROM @extschema@.shipment s
		WHERE s.provider_id = pid AND s.tracking_number IN (SELECT ev.tn FROM ev)
		ORDER BY s.tracking_number, s.created_at DESC),
	-- a number no shipment has as its tracking number may be another
	-- waybill of a multi-piece shipment (SF: child, return): the order's
	-- event, tagged with the piece, which moves no status
	pc AS (
		SELECT p.binding_id, p.order_key, t.tn AS tracking_number, p.piece
		FROM (SELECT DISTINCT ev.tn FROM ev
			  WHERE NOT EXISTS (SELECT 1 FROM main WHERE main.tracking_number = ev.tn)) t
		CROSS JOIN LATERAL @extschema@._piece_shipment(pid, t.tn) p),
	ship AS (
		SELECT * FROM main UNION ALL SELECT * FROM pc),
	ins AS (
		INSERT INTO @extschema@.tracking_event AS e (provider_id, event_key, tracking_number,
			binding_id, order_key, occurred_at, status, raw_status, raw_detail, location,
			description, piece)
		SELECT pid, ev.k, ev.tn, ship.binding_id, ship.order_key, ev.at,
			   coalesce(mm.status, gc.name, 'unknown'),
			   ev.raw, ev.det, ev.loc, ev.descr, ship.piece
		FROM ev JOIN ship ON ship.tracking_number = ev.tn
		LEFT JOIN LATERAL (
			SELECT sm.status FROM cand sm
			WHERE sm.raw_status IN (ev.raw, ev.det)
			  AND (sm.pattern IS NULL OR coalesce(ev.descr, '') ~ sm.pattern)
			ORDER BY sm.priority DESC, sm.pattern IS NOT NULL DESC, sm.raw_status = ev.raw DESC
			LIMIT 1) mm ON true
		LEFT JOIN @extschema@.canonical_status gc ON prof = 'generic' AND gc.name = ev.raw
		ORDER BY ev.ord
		ON CONFLICT (provider_id, event_key) DO NOTHING
		RETURNING e.binding_id, e.order_key),
	park AS (
		INSERT INTO @extschema@.unmatched_event AS x (provider_id, event_key, tracking_number,
			occurred_at, raw_status, raw_detail, location, description, expires_at)
		SELECT pid, ev.k, ev.tn, ev.at, ev.raw, ev.det, ev.loc, ev.descr,
			   now() + make_interval(secs => ttl_s)
		FROM ev
		WHERE NOT EXISTS (SELECT 1 FROM ship WHERE ship.tracking_number = ev.tn)
		ORDER BY ev.ord
		ON CONFLICT (provider_id, event_key) DO NOTHING
		RETURNING 1)
	SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM park),
		   coalesce(bids, '{}') || coalesce((SELECT array_agg(ins.binding_id) FROM ins), '{}'),
		   coalesce(oks, '{}') || coalesce((SELECT array_agg(ins.order_key) FROM ins), '{}')
	INTO n_new, n_park, bids, oks;

	kind := 'new'; n := n_new; RETURN NEXT;
	kind := 'duplicate'; n := coalesce(array_length(keys, 1), 0) - n_new - n_park; RETURN NEXT;
	kind := 'unmatched'; n := n_park; RETURN NEXT;
	kind := 'matched'; n := n_matched; RETURN NEXT;
	kind := 'expired'; n := n_expired; RETURN NEXT;
	n := NULL;

	-- the fold over each touched shipment's whole history, in event time:
	-- the events of its waybill, not those of an earlier shipment of the
	-- same order (deleted and inserted again, its key changed and changed
	-- back), whose last word (returned, delivered) is not the new one's
	RETURN QUERY
	WITH touched AS (
		SELECT DISTINCT t.bid, t.k FROM unnest(bids, oks) AS t(bid, k)),
	-- one index scan per shipment, whatever the statistics say
	f AS (
		SELECT touched.bid AS binding_id, touched.k AS order_key, h.st
		FROM touched
		JOIN @extschema@.shipment s
		  ON s.binding_id = touched.bid AND s.order_key = touched.k AND s.provider_id = pid
		CROSS JOIN LATERAL (
			SELECT @extschema@._status_fold(e.status, e.raw_status, c.rank, c.terminal,
											c.recoverable ORDER BY e.occurred_at, e.event_id) AS st
			FROM @extschema@.tracking_event e
			JOIN @extschema@.canonical_status c ON c.name = e.status
			WHERE e.binding_id = touched.bid AND e.order_key = touched.k
			  AND e.tracking_number = s.tracking_number) h),
	cur AS (
		SELECT s.binding_id, s.order_key, s.status AS old, f.st[1] AS st, f.st[2] AS raw
		FROM f JOIN @extschema@.shipment s
		  ON s.binding_id = f.binding_id AND s.order_key = f.order_key AND s.provider_id = pid
		LEFT JOIN @extschema@.canonical_status oc ON oc.name = s.status
		WHERE f.st IS NOT NULL AND NOT coalesce(oc.terminal, false)),
	upd AS (
		UPDATE @extschema@.shipment s
		   SET status = cur.st, raw_status = cur.raw, updated_at = now()
		  FROM cur
		 WHERE s.binding_id = cur.binding_id AND s.order_key = cur.order_key
		   AND s.provider_id = pid
		   AND (s.status IS DISTINCT FROM cur.st OR s.raw_status IS DISTINCT FROM cur.raw)
		RETURNING s.binding_id, s.order_key, s.tracking_number, cur.old, s.status)
	SELECT 'changed', upd.binding_id, upd.order_key, upd.tracking_number, upd.old, upd.status,
		   NULL::bigint, b.tbl::text
	FROM upd JOIN @extschema@.binding b ON b.binding_id = upd.binding_id
	WHERE upd.old IS DISTINCT FROM upd.status;
END
$$;

-- Parked events are matched when their shipment appears: at the end of the
-- transaction that records its tracking number (the dispatcher's apply,
-- after its own write-back), deferred so that theirs comes last.
CREATE FUNCTION @extschema@._match_parked()
RETURNS trigger
AS 'MODULE_PATHNAME', 'shipsync_match_parked'
LANGUAGE C;
CREATE CONSTRAINT TRIGGER shipsync_match_parked
	AFTER INSERT OR UPDATE OF tracking_number, waybills ON @extschema@.shipment
	DEFERRABLE INITIALLY DEFERRED
	FOR EACH ROW WHEN (NEW.tracking_number IS NOT NULL)
	EXECUTE FUNCTION @extschema@._match_parked();

CREATE FUNCTION @extschema@.ingest_tracking(provider text, body text, headers jsonb DEFAULT '{}')
RETURNS jsonb
AS 'MODULE_PATHNAME', 'shipsync_ingest_tracking'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.ingest_tracking(text, text, jsonb) IS
	'Take one tracking push of a provider, as received: verify its signature over the raw body (headers matched case-insensitively), explode it into events, drop duplicates, park events of unknown tracking numbers, move the shipments'' statuses and write them back onto the order rows. Returns {"events", "new", "duplicate", "unmatched", "matched", "shipments_changed"} and, for kuaidi100 and sf_express, the "reply" the provider expects. A bad or missing signature raises SQLSTATE SS401; a body that is not the dialect''s payload, SS400.';

CREATE FUNCTION @extschema@.expire_unmatched()
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint := @extschema@._expire_unmatched(NULL);
BEGIN
	-- audited as retry() is (the dispatcher and the pushes call
	-- _expire_unmatched() itself, and are not)
	PERFORM @extschema@._audit('expire_unmatched', 'provider', '*', NULL,
							   pg_catalog.jsonb_build_object('expired', n));
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.expire_unmatched() IS
	'Drop the parked tracking events whose time is up (provider option unmatched_ttl_s), opening one exception ticket of kind unmatched_expired per tracking number; returns how many events were dropped. ingest_tracking() does this for its provider at every call.';

CREATE FUNCTION @extschema@._hmac_sha256(key bytea, msg bytea)
RETURNS bytea
AS 'MODULE_PATHNAME', 'shipsync_hmac_sha256_sql'
LANGUAGE C IMMUTABLE STRICT;

CREATE FUNCTION @extschema@._verify_standard_webhooks(secret text, msg_id text, ts text,
	signature text, body text, now_unix bigint)
RETURNS text
AS 'MODULE_PATHNAME', 'shipsync_verify_standard_webhooks_at'
LANGUAGE C IMMUTABLE;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.status_map', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tracking_event', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.unmatched_event', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tracking_event_event_id_seq', '');
-- canonical_status is not dumped: it is the extension's own contract,
-- recreated by CREATE EXTENSION and read-only to everyone else.
