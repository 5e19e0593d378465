-- install/70_trace.sql: trace(), the timeline of one order.
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql.  It comes after every table it reads: a
-- SQL function's body is checked against the tables when it is created.

CREATE FUNCTION @extschema@.trace(tbl regclass, key text)
RETURNS TABLE (at timestamptz, kind text, detail jsonb)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	WITH b AS (SELECT binding_id FROM @extschema@.binding WHERE binding.tbl = trace.tbl),
	o AS (SELECT x.id, x.created_at, x.op, x.state, x.attempts, x.idempotency_key,
				 x.request_method, x.request_url, x.last_error, x.coalesced_into
		  FROM @extschema@.outbox x, b
		  WHERE x.binding_id = b.binding_id AND x.order_key = trace.key
		  UNION ALL
		  SELECT i.id, i.created_at, i.op, 'captured', 0, i.idempotency_key,
				 NULL, NULL, NULL, NULL
		  FROM @extschema@.inbox i, b
		  WHERE i.binding_id = b.binding_id AND i.order_key = trace.key),
	f AS (SELECT l.*, p.name AS provider
		  FROM @extschema@.fee_line l JOIN b ON l.binding_id = b.binding_id
		  JOIN @extschema@.provider p ON p.provider_id = l.provider_id
		  WHERE l.order_key = trace.key)
	SELECT * FROM (
		SELECT o.created_at, 'intent',
			   jsonb_build_object('outbox_id', o.id, 'op', o.op, 'state', o.state,
				   'attempts', o.attempts, 'idempotency_key', o.idempotency_key,
				   'request', o.request_method || ' ' || o.request_url,
				   'last_error', o.last_error, 'coalesced_into', o.coalesced_into)
		FROM o
		UNION ALL
		SELECT l.at, 'attempt',
			   jsonb_build_object('outbox_id', l.outbox_id, 'attempt', l.attempt,
				   'request', l.method || ' ' || l.url, 'http_status', l.http_status,
				   'latency_ms', round(l.latency_ms::numeric, 1), 'outcome', l.outcome,
				   'error_class', l.error_class, 'error', l.error)
		FROM @extschema@.delivery_log l JOIN o ON l.outbox_id = o.id
		UNION ALL
		SELECT s.created_at, 'shipment',
			   jsonb_build_object('provider', p.name, 'provider_shipment_id', s.provider_shipment_id,
				   'tracking_number', s.tracking_number, 'status', s.status,
				   'raw_status', s.raw_status, 'fee_total', s.fee_total, 'updated_at', s.updated_at)
		FROM @extschema@.shipment s JOIN b ON s.binding_id = b.binding_id
		JOIN @extschema@.provider p ON p.provider_id = s.provider_id
		WHERE s.order_key = trace.key
		UNION ALL
		SELECT e.occurred_at, 'tracking',
			   jsonb_build_object('provider', p.name, 'event_key', e.event_key,
				   'tracking_number', e.tracking_number, 'status', e.status,
				   'raw_status', e.raw_status, 'raw_detail', e.raw_detail,
				   'location', e.location, 'description', e.description,
				   'received_at', e.received_at)
		FROM @extschema@.tracking_event e JOIN b ON e.binding_id = b.binding_id
		JOIN @extschema@.provider p ON p.provider_id = e.provider_id
		WHERE e.order_key = trace.key
		UNION ALL
		-- every fee line in its current version, then each earlier one
		SELECT f.recorded_at, 'fee',
			   jsonb_build_object('provider', f.provider, 'fee_line_id', f.fee_line_id,
				   'tracking_number', f.tracking_number, 'fee_type', f.fee_type,
				   'raw_type', f.raw_type, 'fee_key', f.fee_key, 'amount', f.amount,
				   'currency', f.currency, 'state', f.state, 'source', f.source,
				   'statement_id', f.statement_id, 'revision', f.revision, 'current', true,
				   'recorded_by', f.recorded_by)
		FROM f
		UNION ALL
		SELECT h.recorded_at, 'fee',
			   jsonb_build_object('provider', f.provider, 'fee_line_id', f.fee_line_id,
				   'tracking_number', f.tracking_number, 'fee_type', f.fee_type,
				   'raw_type', h.raw_type, 'fee_key', f.fee_key, 'amount', h.amount,
				   'currency', h.currency, 'state', h.state, 'source', h.source,
				   'statement_id', h.statement_id, 'revision', h.revision, 'current', false,
				   'recorded_by', h.recorded_by, 'superseded_at', h.superseded_at,
				   'superseded_by', h.superseded_by, 'superseded_source', h.superseded_source)
		FROM f JOIN @extschema@.fee_line_history h ON h.fee_line_id = f.fee_line_id
		UNION ALL
		SELECT t.opened_at, 'ticket',
			   jsonb_build_object('ticket_id', t.ticket_id, 'kind', t.kind, 'detail', t.detail,
				   'resolved_at', t.resolved_at, 'resolved_by', t.resolved_by)
		FROM @extschema@.exception_ticket t JOIN b ON t.binding_id = b.binding_id
		WHERE t.order_key = trace.key
	) AS timeline(at, kind, detail)
	ORDER BY at, CASE kind WHEN 'intent' THEN 0 WHEN 'attempt' THEN 1
						   WHEN 'shipment' THEN 2 WHEN 'tracking' THEN 3 WHEN 'fee' THEN 4 ELSE 5 END,
			 (detail->>'fee_line_id')::bigint, (detail->>'revision')::integer
$$;
COMMENT ON FUNCTION @extschema@.trace(regclass, text) IS
	'The timeline of one order: its intents, every HTTP attempt (status, latency, error), its shipment, its tracking events (at their event time), its fee lines with every revision (at the time each was recorded) and its tickets, in time order.';
