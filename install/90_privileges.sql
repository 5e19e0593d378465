-- install/90_privileges.sql: every privilege of the extension, in one place.
-- Last, so that one REVOKE covers every function created before it.

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;
-- The trigger functions shipsync.capture() and shipsync._validate() are not
-- granted to anyone: attach() creates their triggers as the extension's
-- owner, and a trigger fires without an EXECUTE check.
GRANT USAGE ON SCHEMA @extschema@ TO shipsync_reader;

-- the queue and the API
GRANT EXECUTE ON FUNCTION @extschema@._wake(boolean) TO PUBLIC;
GRANT SELECT ON @extschema@.queue_status, @extschema@.providers, @extschema@.intents,
	@extschema@.inbox,
	@extschema@.binding, @extschema@.dropped_table,
	@extschema@.exception_ticket TO shipsync_reader;
-- Shipments and attempts but their digests: request_digest is the SHA-256
-- of a request body whose personal values readers see masked, and
-- content_digest a digest of the order row; both can be matched against
-- the few characters a mask hides (the view intents gives readers NULL).
-- Nor label_url: a carrier's label link that needs no login prints the
-- receiver's whole name, phone and address.
GRANT SELECT (shipment_id, binding_id, order_key, provider_id, provider_shipment_id,
	tracking_number, status, raw_status, fees, fee_total, created_at, updated_at,
	waybills) ON @extschema@.shipment TO shipsync_reader;
GRANT SELECT (id, outbox_id, attempt, provider_id, at, method, url, http_status, latency_ms,
	outcome, error_class, error) ON @extschema@.delivery_log TO shipsync_reader;
GRANT SELECT ON @extschema@.shipment, @extschema@.delivery_log TO shipsync_operator;
-- write-backs waiting for a held order row: keys and lock errors, no personal data
GRANT SELECT ON @extschema@.writeback_wait TO shipsync_reader;
GRANT EXECUTE ON FUNCTION @extschema@.retry(bigint), @extschema@.requeue(text, text, text, timestamptz),
	@extschema@.retry(text, text, text, timestamptz),
	@extschema@.pause(text), @extschema@.resume(text),
	@extschema@._set_paused(text, boolean) TO shipsync_operator;
GRANT SELECT ON @extschema@.outbox TO shipsync_operator;
GRANT EXECUTE ON FUNCTION @extschema@.ack(bigint, text), @extschema@.resolve(bigint, text)
	TO shipsync_operator;
GRANT SELECT ON @extschema@.provider_health TO shipsync_reader;
GRANT EXECUTE ON FUNCTION @extschema@._provider_health() TO shipsync_reader;
GRANT EXECUTE ON FUNCTION @extschema@.create_provider(text, text, text, jsonb),
	@extschema@.attach(regclass, text, name, jsonb, jsonb), @extschema@.detach(regclass)
	TO shipsync_admin;

-- tracking
GRANT EXECUTE ON FUNCTION @extschema@.trace(regclass, text) TO shipsync_reader;
GRANT SELECT ON @extschema@.canonical_status, @extschema@.status_map,
	@extschema@.tracking_event, @extschema@.unmatched_event TO shipsync_reader;
GRANT EXECUTE ON FUNCTION @extschema@.ingest_tracking(text, text, jsonb),
	@extschema@.expire_unmatched() TO shipsync_operator;
GRANT INSERT, UPDATE, DELETE ON @extschema@.status_map TO shipsync_admin;

-- mapping
GRANT SELECT ON @extschema@.field_map TO shipsync_reader;
GRANT INSERT, UPDATE, DELETE ON @extschema@.field_map TO shipsync_admin;
GRANT EXECUTE ON FUNCTION @extschema@.render_request(bigint) TO shipsync_reader;
GRANT EXECUTE ON FUNCTION @extschema@.copy_profile(text, text) TO shipsync_admin;
GRANT EXECUTE ON FUNCTION @extschema@._map_check(text, text, text, text) TO shipsync_admin;

-- CRM sources and the receiver.  shipsync_ingest, the receiver's role, may
-- call the ingest functions and nothing else (not even read a table).
GRANT SELECT ON @extschema@.crm_sources TO shipsync_reader;
GRANT EXECUTE ON FUNCTION @extschema@.create_crm_source(text, text, regclass, jsonb),
	@extschema@.drop_crm_source(text) TO shipsync_admin;
GRANT EXECUTE ON FUNCTION @extschema@.ingest_crm(text, text, jsonb, jsonb) TO shipsync_operator;
GRANT USAGE ON SCHEMA @extschema@ TO shipsync_ingest;
GRANT EXECUTE ON FUNCTION @extschema@.ingest_tracking(text, text, jsonb),
	@extschema@._ingest_tracking_batch(text, text[], jsonb[]),
	@extschema@.ingest_crm(text, text, jsonb, jsonb) TO shipsync_ingest;
-- secrets: shipsync.secret itself is granted to no one
GRANT EXECUTE ON FUNCTION @extschema@.set_secret(text, text, text),
	@extschema@.rotate_key() TO shipsync_admin;
GRANT SELECT ON @extschema@.secrets TO shipsync_operator;
-- fees
GRANT SELECT ON @extschema@.fee_type, @extschema@.fee_type_map, @extschema@.currency,
	@extschema@.statement, @extschema@.fee_line, @extschema@.fee_line_history, @extschema@.fee_sum,
	@extschema@.fee_pull,
	@extschema@.order_fees, @extschema@.settlement, @extschema@.fee_difference TO shipsync_reader;
-- what the views call
GRANT EXECUTE ON FUNCTION @extschema@._decimal_or_null(jsonb), @extschema@._interval_or_null(text),
	@extschema@._settlement() TO shipsync_reader;
GRANT EXECUTE ON FUNCTION @extschema@.ingest_fees(text, text, jsonb),
	@extschema@.import_statement(text, text, text, jsonb) TO shipsync_operator;
GRANT INSERT, UPDATE, DELETE ON @extschema@.fee_type_map, @extschema@.currency TO shipsync_admin;
GRANT EXECUTE ON FUNCTION @extschema@.ingest_fees(text, text, jsonb) TO shipsync_ingest;

-- personal data and the audit log: readers see personal values masked
-- (the functions of the view shipsync.intents run as its reader), the
-- operators whole; field_map's trigger stamps the changes of admins
GRANT EXECUTE ON FUNCTION @extschema@.mask_pii(text, text),
	@extschema@._mask_body(text, text[], text[], jsonb), @extschema@._pii_visible()
	TO shipsync_reader;
GRANT SELECT ON @extschema@.audit_log TO shipsync_operator;
GRANT EXECUTE ON FUNCTION @extschema@._actor() TO shipsync_admin;
-- the ledger and reconciliation
GRANT SELECT ON @extschema@.ticket_event, @extschema@.open_tickets, @extschema@.ticket_summary,
	@extschema@.reconcile_run, @extschema@.carrier_snapshot, @extschema@.stuck_after,
	@extschema@.reconciliation, @extschema@.reconciliation_summary TO shipsync_reader;
-- (the views of reconciliation call it as their reader)
GRANT EXECUTE ON FUNCTION @extschema@._reconcile_kinds() TO shipsync_reader;
GRANT EXECUTE ON FUNCTION @extschema@.reconcile(text, timestamptz),
	@extschema@.resync(regclass, text[], text) TO shipsync_operator;
GRANT INSERT, UPDATE, DELETE ON @extschema@.stuck_after TO shipsync_admin;

-- The extension may be created before the dispatcher looks: wake it.
SELECT @extschema@._wake(true);
