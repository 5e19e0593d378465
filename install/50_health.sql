-- install/50_health.sql: the health of each provider, as the dispatcher
-- keeps it in shared memory (src/health.c): its circuit breaker, its
-- Retry-After hold, and what its attempts did over the last minutes.
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql.

CREATE FUNCTION @extschema@._provider_health(
	OUT provider_id integer, OUT breaker text, OUT breaker_since timestamptz,
	OUT hold_until timestamptz,
	OUT requests_5m bigint, OUT successes_5m bigint, OUT failures_5m jsonb,
	OUT requests_1h bigint, OUT successes_1h bigint, OUT failures_1h jsonb,
	OUT latency_p50_ms double precision, OUT latency_p95_ms double precision,
	OUT latency_p99_ms double precision,
	OUT last_success_at timestamptz, OUT last_error_class text, OUT last_error text,
	OUT last_error_at timestamptz, OUT in_flight integer)
RETURNS SETOF record
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'shipsync_provider_health';
COMMENT ON FUNCTION @extschema@._provider_health() IS
	'Internal: the shared-memory state of this database''s providers, for view shipsync.provider_health.';

CREATE VIEW @extschema@.provider_health AS
SELECT p.name AS provider,
	   p.paused,
	   coalesce(h.breaker, 'closed') AS breaker,
	   h.breaker_since,
	   h.hold_until,
	   coalesce(h.requests_5m, 0) AS requests_5m,
	   coalesce(h.successes_5m, 0) AS successes_5m,
	   coalesce(h.failures_5m, '{}') AS failures_5m,
	   coalesce(h.requests_1h, 0) AS requests_1h,
	   coalesce(h.successes_1h, 0) AS successes_1h,
	   coalesce(h.failures_1h, '{}') AS failures_1h,
	   h.latency_p50_ms,
	   h.latency_p95_ms,
	   h.latency_p99_ms,
	   h.last_success_at,
	   h.last_error_class,
	   h.last_error,
	   h.last_error_at,
	   coalesce(h.in_flight, 0) AS in_flight,
	   pg_catalog.now() - LEAST(
		   (SELECT pg_catalog.min(o.created_at) FROM @extschema@.outbox o
			WHERE o.provider_id = p.provider_id
			  AND o.state IN ('pending', 'retrying', 'in_flight')),
		   i.oldest) AS oldest_pending_age
FROM @extschema@.provider p
LEFT JOIN @extschema@._provider_health() h ON h.provider_id = p.provider_id
-- the inbox has no index: read once for all providers, not once each
LEFT JOIN (SELECT i.provider_id, pg_catalog.min(i.created_at) AS oldest
		   FROM @extschema@.inbox i GROUP BY i.provider_id) i
	   ON i.provider_id = p.provider_id;
COMMENT ON VIEW @extschema@.provider_health IS
	'One row per provider: paused, circuit breaker and Retry-After hold, attempts over the last 5 minutes and the last hour, latency percentiles, the last success and error, requests in flight and the age of the oldest intent not yet delivered. Kept in shared memory by the dispatcher: a restarted dispatcher keeps it, a restarted server starts it afresh.';
COMMENT ON COLUMN @extschema@.provider_health.provider IS 'The provider''s name.';
COMMENT ON COLUMN @extschema@.provider_health.paused IS 'Paused with shipsync.pause(): nothing is sent until shipsync.resume().';
COMMENT ON COLUMN @extschema@.provider_health.breaker IS 'The circuit breaker: closed (sending), open (breaker_failures consecutive transport or 5xx failures: nothing is sent, intents wait) or half_open (one probe intent in flight).';
COMMENT ON COLUMN @extschema@.provider_health.breaker_since IS 'When the breaker last opened or closed; NULL if it never opened.';
COMMENT ON COLUMN @extschema@.provider_health.hold_until IS 'Nothing is sent to the provider before this time: it answered 429 or 503 with Retry-After (or a rate-limit reset); NULL when there is no hold.';
COMMENT ON COLUMN @extschema@.provider_health.requests_5m IS 'Attempts (requests of intents) answered or failed in the last 5 minutes (whole minutes: this one and the 4 before).';
COMMENT ON COLUMN @extschema@.provider_health.successes_5m IS 'Of those, the attempts that delivered their intent.';
COMMENT ON COLUMN @extschema@.provider_health.failures_5m IS 'Of those, the failed attempts, by error class: {"http_5xx": 3, "timeout": 1}.';
COMMENT ON COLUMN @extschema@.provider_health.requests_1h IS 'Attempts in the last hour (this minute and the 59 before).';
COMMENT ON COLUMN @extschema@.provider_health.successes_1h IS 'Of those, the attempts that delivered their intent.';
COMMENT ON COLUMN @extschema@.provider_health.failures_1h IS 'Of those, the failed attempts, by error class.';
COMMENT ON COLUMN @extschema@.provider_health.latency_p50_ms IS 'Median time of an attempt over the last 5 minutes, in milliseconds (interpolated in buckets 35% wide); NULL without attempts.';
COMMENT ON COLUMN @extschema@.provider_health.latency_p95_ms IS '95th percentile of the attempts'' time over the last 5 minutes, in milliseconds.';
COMMENT ON COLUMN @extschema@.provider_health.latency_p99_ms IS '99th percentile of the attempts'' time over the last 5 minutes, in milliseconds.';
COMMENT ON COLUMN @extschema@.provider_health.last_success_at IS 'When an attempt last delivered an intent.';
COMMENT ON COLUMN @extschema@.provider_health.last_error_class IS 'The error class of the last failed attempt (see shipsync.delivery_log).';
COMMENT ON COLUMN @extschema@.provider_health.last_error IS 'What the last failed attempt ended with, as in delivery_log.error (at most 255 bytes).';
COMMENT ON COLUMN @extschema@.provider_health.last_error_at IS 'When the last attempt failed.';
COMMENT ON COLUMN @extschema@.provider_health.in_flight IS 'Requests of intents in flight to the provider now.';
COMMENT ON COLUMN @extschema@.provider_health.oldest_pending_age IS 'Age of the oldest intent not yet delivered (pending, retrying or in flight); NULL when none waits.';
