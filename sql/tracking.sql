-- Tracking: signatures of every dialect against the published vectors
-- (positives and negatives), payloads, status rules, unmatched events,
-- write-back, and each ingest error with its SQLSTATE.
CREATE EXTENSION pg_shipsync;
SET client_min_messages = warning;

CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	st text; msg text; det text; hin text;
BEGIN
	EXECUTE q;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
		det = PG_EXCEPTION_DETAIL, hin = PG_EXCEPTION_HINT;
	RETURN st || ': ' || msg || coalesce(E'\n  DETAIL: ' || nullif(det, ''), '')
		|| coalesce(E'\n  HINT: ' || nullif(hin, ''), '');
END
$$;

-- Standard Webhooks headers for a body, signed now (or at ts)
CREATE FUNCTION pg_temp.sw_headers(secret text, id text, body text,
								   ts bigint DEFAULT extract(epoch FROM now())::bigint)
RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('Webhook-Id', id, 'Webhook-Timestamp', ts::text,
		'Webhook-Signature', 'v1,' || encode(shipsync._hmac_sha256(
			decode(regexp_replace(secret, '^whsec_', ''), 'base64'),
			convert_to(id || '.' || ts || '.' || body, 'UTF8')), 'base64'))
$$;

-- a generic push of events (id, tracking_number, status, occurred_at[, description])
CREATE FUNCTION pg_temp.push(provider text, events jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT shipsync.ingest_tracking(provider, b,
		pg_temp.sw_headers('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_' || md5(b), b))
	FROM (SELECT jsonb_build_object('events', events)::text AS b) x
$$;
CREATE FUNCTION pg_temp.ev(id text, tn text, status text, at text, descr text DEFAULT NULL)
RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_strip_nulls(jsonb_build_object('id', id, 'tracking_number', tn, 'status', status,
		'occurred_at', at, 'description', descr))
$$;

-- form encoding for the kuaidi100 push
CREATE FUNCTION pg_temp.urlencode(s text) RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(CASE WHEN c ~ '^[A-Za-z0-9._~-]$' THEN c
		ELSE upper(regexp_replace(encode(convert_to(c, 'UTF8'), 'hex'), '(..)', '%\1', 'g')) END,
		'' ORDER BY n)
	FROM regexp_split_to_table(s, '') WITH ORDINALITY AS t(c, n)
$$;

------------------------------------------------------------------------------
-- Standard Webhooks (generic): the published vectors, clock injected
------------------------------------------------------------------------------
\set sw_body '{"test": 2432232314}'
SELECT coalesce(shipsync._verify_standard_webhooks('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
	'msg_p5jXN8AQM9LWM0D4loKWxJek', '1614265330', 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
	:'sw_body', 1614265330), 'valid') AS sign_function_vector;
SELECT coalesce(shipsync._verify_standard_webhooks('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
	'msg_p5jXN8AQM9LWM0D4loKWxJek', '1614265330', 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=',
	:'sw_body', 1614265330), 'valid') AS near_miss_vector;
SELECT coalesce(shipsync._verify_standard_webhooks('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
	'msg_p5jXN8AQM9LWM0D4loKWxJek', '1614265330',
	'v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=',
	:'sw_body', 1614265330), 'valid') AS multi_signature_vector;
SELECT coalesce(shipsync._verify_standard_webhooks('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
	'msg_p5jXN8AQM9LWM0D4loKWxJek', '1614265330', 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
	:'sw_body', 1614265330), 'valid') AS secret_without_prefix_vector;
-- the same signature, but the body one byte longer, a v2 entry only, and the
-- 5-minute window on both sides
SELECT coalesce(shipsync._verify_standard_webhooks('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
	'msg_p5jXN8AQM9LWM0D4loKWxJek', '1614265330', 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
	:'sw_body' || ' ', 1614265330), 'valid') AS body_changed;
SELECT coalesce(shipsync._verify_standard_webhooks('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
	'msg_p5jXN8AQM9LWM0D4loKWxJek', '1614265330', 'v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
	:'sw_body', 1614265330), 'valid') AS only_v2;
SELECT t.now_unix - 1614265330 AS skew_s,
	   coalesce(shipsync._verify_standard_webhooks('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
		'msg_p5jXN8AQM9LWM0D4loKWxJek', '1614265330', 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
		:'sw_body', t.now_unix), 'valid') AS verdict
FROM (VALUES (1614265330 + 300), (1614265330 + 301), (1614265330 - 300), (1614265330 - 301)) AS t(now_unix);

------------------------------------------------------------------------------
-- Providers of every dialect, and what create_provider checks
------------------------------------------------------------------------------
CREATE SCHEMA crm;
CREATE TABLE crm.orders (id bigint PRIMARY KEY, waybill_no text, ship_status text);
SELECT shipsync.create_provider('gen', 'generic', 'https://carrier.example',
	'{"webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "unmatched_ttl_s": 60}');
SELECT shipsync.create_provider('ep', 'easypost', 'https://api.easypost.example/v2',
	'{"webhook_secret": "sécret", "auth": {"type": "basic", "username": "EZTK-key"}}');
SELECT shipsync.create_provider('as', 'aftership', 'https://api.aftership.example',
	'{"webhook_secret": "95f35e6b3dbc26527029cbd9cfa51b87",
	  "auth": {"type": "api_key", "header": "as-api-key", "key": "as-key"}}');
SELECT shipsync.create_provider('k100', 'kuaidi100', 'https://poll.kuaidi100.example',
	'{"webhook_secret": "salt-8f2c", "company": "shunfeng",
	  "callback_url": "https://shop.example/hooks/kuaidi100",
	  "auth": {"type": "kuaidi100", "customer": "CUST", "key": "kd-key"}}');
SELECT shipsync.create_provider('sf', 'sf_express', 'https://sfapi.example',
	'{"auth": {"type": "sf_express", "partner_id": "P1", "checkword": "cw"}}');
SELECT shipsync.create_provider('sf_open', 'sf_express', 'https://sfapi.example',
	'{"accept_unsigned_pushes": true, "auth": {"type": "sf_express", "partner_id": "P1", "checkword": "cw"}}');
SELECT shipsync.attach('crm.orders', 'gen',
	writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}');
-- secrets are neither in the view nor in the errors
SELECT count(*) AS views_showing_a_secret FROM shipsync.providers p
WHERE row_to_json(p)::text ~ '(sécret|95f35e6b|salt-8f2c|MfKQ9r8G)';
SELECT pg_temp.err($$SELECT shipsync.create_provider('x', 'generic', 'https://x.example', '{"webhook_secret": "not base64 !"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('x', 'easypost', 'https://x.example', '{"webhook_secret": 42}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('x', 'sf_express', 'https://x.example', '{"accept_unsigned_pushes": "yes"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('x', 'generic', 'https://x.example', '{"poll_interval_s": -1}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('x', 'generic', 'https://x.example', '{"unmatched_ttl_s": 0}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('x', 'kuaidi100', 'https://x.example', '{"timezone": "Mars/Olympus"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('x', 'ups', 'https://x.example')$$);

-- shipments the carriers will report on (as the dispatcher records them)
INSERT INTO crm.orders (id) SELECT g FROM generate_series(1, 20) g;
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, status)
SELECT b.binding_id, v.k, p.provider_id, v.tn, v.st
FROM shipsync.binding b, (VALUES
	('1', 'gen', 'T1', 'pending'), ('2', 'gen', 'T2', 'pending'), ('3', 'gen', 'T3', 'pending'),
	('4', 'gen', 'T4', 'pending'), ('5', 'gen', 'T5', 'pending'), ('6', 'gen', 'T6', 'cancelled'),
	('7', 'gen', 'T7', 'pending'), ('8', 'gen', 'T8', 'pending'),
	('11', 'ep', '1', 'pending'), ('12', 'as', '123456789', 'pending'),
	('13', 'k100', 'YT6186594166532', 'pending'), ('14', 'k100', 'YT6074326614455', 'pending'),
	('15', 'sf_open', 'SF7444400031887', 'pending')) AS v(k, pname, tn, st)
JOIN shipsync.provider p ON p.name = v.pname;
SELECT count(*) AS intents_before FROM shipsync.outbox \gset

------------------------------------------------------------------------------
-- generic pushes through ingest_tracking: signature, window, headers
------------------------------------------------------------------------------
\set g1 '{"events": [{"id": "e1", "tracking_number": "T1", "status": "in_transit", "occurred_at": "2026-03-01T10:00:00Z"}]}'
SELECT shipsync.ingest_tracking('gen', :'g1', pg_temp.sw_headers('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_1', :'g1'));
-- header names match whatever their case
SELECT shipsync.ingest_tracking('gen', :'g1', (SELECT jsonb_object_agg(upper(k), v)
	FROM jsonb_each(pg_temp.sw_headers('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_1', :'g1')) AS h(k, v)))->'duplicate' AS duplicate;
-- the published vector itself is five years old: a replay
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('gen', %L, %L)$$, :'sw_body',
	'{"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330", "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}'));
-- signed with another key, a tampered body, missing headers, a bad timestamp
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('gen', %L, %L)$$, :'g1',
	pg_temp.sw_headers('whsec_' || encode('another key of 32 bytes.........', 'base64'), 'msg_1', :'g1')));
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('gen', %L, %L)$$, replace(:'g1', 'in_transit', 'delivered'),
	pg_temp.sw_headers('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_1', :'g1')));
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('gen', %L)$$, :'g1'));
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('gen', %L, %L)$$, :'g1',
	'{"webhook-id": "msg_1", "webhook-timestamp": "yesterday", "webhook-signature": "v1,AAAA"}'));
SELECT count(*) AS events_stored FROM shipsync.tracking_event;
-- an event id over 2,000 bytes, or a tracking number over 128 (no
-- shipment has one), is a payload the carrier must not send again (SS400):
-- over btree's limit for an index entry, it failed the push with 54000
-- (a 500 from an endpoint, and the carrier's retries forever)
SELECT string_agg(md5(g::text), '') AS long_text FROM generate_series(1, 94) g \gset
SELECT pg_temp.err(format('SELECT pg_temp.push(%L, %L)', 'gen',
	jsonb_build_array(pg_temp.ev('e_' || :'long_text', 'T1', 'in_transit', '2026-03-01T10:00:00Z'))));
SELECT pg_temp.err(format('SELECT pg_temp.push(%L, %L)', 'gen',
	jsonb_build_array(pg_temp.ev('e_long_tn', 'T' || :'long_text', 'in_transit', '2026-03-01T10:00:00Z'))));
SELECT pg_temp.err(format('SELECT pg_temp.push(%L, %L)', 'gen',
	jsonb_build_array(pg_temp.ev('e_long_tn', repeat('T', 129), 'in_transit', '2026-03-01T10:00:00Z'))));
SELECT count(*) AS events_stored FROM shipsync.tracking_event;

-- rotation: the previous secret is still accepted, nothing else
SELECT shipsync.create_provider('gen2', 'generic', 'https://carrier.example', format(
	'{"webhook_secret": "whsec_%s", "previous_webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}',
	encode('the new key of thirty-two bytes!', 'base64'))::jsonb);
SELECT shipsync.ingest_tracking('gen2', :'g1', pg_temp.sw_headers('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_1', :'g1'))->'unmatched' AS old_key_accepted;
SELECT shipsync.ingest_tracking('gen2', :'g1', pg_temp.sw_headers('whsec_' || encode('the new key of thirty-two bytes!', 'base64'), 'msg_1', :'g1'))->'duplicate' AS new_key_accepted;
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('gen2', %L, %L)$$, :'g1',
	pg_temp.sw_headers('whsec_' || encode('a third key, in neither option..', 'base64'), 'msg_1', :'g1')));

------------------------------------------------------------------------------
-- EasyPost: the SDK fixtures (secret "sécret", NFKD-normalised)
------------------------------------------------------------------------------
\set ep_v1 `cat test/vectors/easypost_webhook_v1_tracker_updated.body.bin`
\set ep_v0 `cat test/vectors/easypost_webhook_v0_batch_created.body.bin`
SELECT length(:'ep_v1') AS v1_bytes, length(:'ep_v0') AS v0_bytes;
SELECT shipsync.ingest_tracking('ep', :'ep_v1',
	'{"X-Hmac-Signature": "hmac-sha256-hex=38f3f53c103713df81616a0a186d77141957323ec21d5fe9363db93840f527db"}');
SELECT shipsync.ingest_tracking('ep', :'ep_v0',
	'{"X-Hmac-Signature": "hmac-sha256-hex=e93977c8ccb20363d51a62b3fe1fc402b7829be1152da9e88cf9e8d07115a46b"}') AS batch_created_ignored;
-- negatives: the MAC of the secret NOT normalised (computed here, then refused),
-- the body with its file's trailing newline, the SDK's invalid secret and
-- missing header tests
SELECT encode(shipsync._hmac_sha256('\x73c3a963726574', convert_to(:'ep_v1', 'UTF8')), 'hex') AS nfc_mac;
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('ep', %L, %L)$$, :'ep_v1',
	'{"X-Hmac-Signature": "hmac-sha256-hex=7f1669d6699d0b937cc1e69402423bdd2be0a8bcf571d34a8116765f1741219b"}'));
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('ep', %L, %L)$$, :'ep_v1' || E'\n',
	'{"X-Hmac-Signature": "hmac-sha256-hex=38f3f53c103713df81616a0a186d77141957323ec21d5fe9363db93840f527db"}'));
SELECT shipsync.create_provider('ep_bad', 'easypost', 'https://api.easypost.example/v2',
	'{"webhook_secret": "invalid_secret", "auth": {"type": "basic", "username": "EZTK-key"}}');
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('ep_bad', %L, %L)$$, :'ep_v1',
	'{"X-Hmac-Signature": "some-signature"}'));
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('ep', %L, %L)$$, :'ep_v1',
	'{"some-header": "some-value"}'));

------------------------------------------------------------------------------
-- AfterShip (third-party vector), Kuaidi100 (sign computed), SF (unsigned)
------------------------------------------------------------------------------
\set as_body `cat test/vectors/aftership_webhook_tracking_update_vibrent.body.bin`
SELECT shipsync.ingest_tracking('as', :'as_body',
	'{"aftership-hmac-sha256": "FceTeaOp8Nvp9CVTnfoda0RQiRjq8VZQErBg+Gn88/s="}');
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('as', %L, %L)$$, :'as_body',
	'{"aftership-hmac-sha256": "RaaHIWnGfgK3KFh3kkiUxZ1DQNKqx6E8vMgrM793dIs="}'));

\set k100_param `cat test/vectors/kuaidi100_push_param_resultv2_yuantong.json`
\set k100_nulls `cat test/vectors/kuaidi100_push_param_nullfields_masked.json`
CREATE FUNCTION pg_temp.k100(param text, salt text DEFAULT 'salt-8f2c') RETURNS text LANGUAGE sql AS $$
	SELECT 'param=' || pg_temp.urlencode(param) || '&sign=' || upper(md5(param || salt))
$$;
SELECT shipsync.ingest_tracking('k100', pg_temp.k100(:'k100_param'));
SELECT shipsync.ingest_tracking('k100', pg_temp.k100(:'k100_param'))->'duplicate' AS full_history_again;
SELECT shipsync.ingest_tracking('k100', pg_temp.k100(:'k100_nulls'))->'new' AS null_fields_read;
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('k100', %L)$$, pg_temp.k100(:'k100_param', 'wrong salt')));
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('k100', %L)$$, 'param=' || pg_temp.urlencode(:'k100_param')));
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('k100', %L)$$,
	replace(pg_temp.k100(:'k100_param'), '%22state%22%3A%220%22', '%22state%22%3A%223%22')));
-- the subscription gave up: abort is the provider's expiry message
SELECT shipsync.ingest_tracking('k100', pg_temp.k100(jsonb_set(:'k100_param'::jsonb, '{status}', '"abort"')::text))->'new' AS abort_event;

\set sf_body `cat test/vectors/sf_route_push_RoutePushService.json`
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('sf', %L)$$, :'sf_body'));
SELECT shipsync.ingest_tracking('sf_open', :'sf_body');

SELECT p.name, e.tracking_number,
	   CASE WHEN e.raw_status = 'abort' THEN 'when received' ELSE (e.occurred_at AT TIME ZONE 'UTC')::text END AS at_utc, e.status,
	   e.raw_status, e.raw_detail, left(e.description, 24) AS description
FROM shipsync.tracking_event e JOIN shipsync.provider p USING (provider_id)
WHERE p.name <> 'gen'
ORDER BY p.name, e.occurred_at, e.event_id;
SELECT order_key, p.name, status, raw_status FROM shipsync.shipment s JOIN shipsync.provider p USING (provider_id)
WHERE p.name <> 'gen' ORDER BY order_key::int;
-- the abort of a subscription that never found the waybill ("3天查询无记录":
-- a state, an empty history, as Kuaidi100 sends it) is its expiry message
\set k100_abort '{"status":"abort","billstatus":"","message":"3天查询无记录","autoCheck":"0","comOld":"","comNew":"","lastResult":{"message":"快递公司参数异常：单号不存在或者已经过期","nu":"YT6074326614455","ischeck":"0","condition":"","com":"yuantong","status":"201","state":"0","data":[]}}'
SELECT pg_temp.err(format($$SELECT shipsync.ingest_tracking('k100', %L)->>'new'$$, pg_temp.k100(:'k100_abort')));
SELECT shipsync.ingest_tracking('k100', pg_temp.k100(:'k100_abort'))->'duplicate' AS abort_again;
SELECT status, raw_status FROM shipsync.shipment WHERE tracking_number = 'YT6074326614455';

------------------------------------------------------------------------------
-- Payload errors: SS400, nothing stored
------------------------------------------------------------------------------
SELECT count(*) AS events_before FROM shipsync.tracking_event \gset
SELECT pg_temp.err($$SELECT pg_temp.push('gen', '[{"id": "x"}]')$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_tracking('sf_open', '{"Body": {"WaybillRoute": [{"id": 1}]}}')$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_tracking('sf_open', '{"events": ')$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_tracking('sf_open', '[]')$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_tracking('sf_open', NULL)$$);
SELECT pg_temp.err($$SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('e', 'T1', 'delivered', 'last tuesday')))$$);
SELECT pg_temp.err($$SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('e', 'T1', 'delivered', '2026-02-30T10:00:00Z')))$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_tracking('nobody', '{}')$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_tracking(NULL, '{}')$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_tracking('ep_none', '{}')$$);
SELECT shipsync.create_provider('ep_none', 'easypost', 'https://api.easypost.example/v2',
	'{"auth": {"type": "basic", "username": "EZTK-key"}}');
SELECT pg_temp.err($$SELECT shipsync.ingest_tracking('ep_none', '{}')$$);
SELECT count(*) - :events_before AS events_stored_by_errors FROM shipsync.tracking_event;

------------------------------------------------------------------------------
-- Status rules (generic events)
------------------------------------------------------------------------------
-- out of order: a late earlier event changes nothing, rank moves up only
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t2-a', 'T2', 'in_transit', '2026-03-01T12:00:00Z')));
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t2-b', 'T2', 'pre_transit', '2026-03-01T08:00:00Z')));
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t2-c', 'T2', 'out_for_delivery', '2026-03-01T11:00:00Z')));
-- duplicates change nothing, within one body or across bodies
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t3-a', 'T3', 'in_transit', '2026-03-01T12:00:00Z'),
	pg_temp.ev('t3-a', 'T3', 'in_transit', '2026-03-01T12:00:00Z')));
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t3-a', 'T3', 'delivered', '2026-03-02T12:00:00Z')));
-- recoverable: a failed delivery, the re-delivery, an exception, recovery,
-- delivered, and nothing after a terminal state
SELECT pg_temp.push('gen', jsonb_build_array(
	pg_temp.ev('t4-1', 'T4', 'in_transit', '2026-03-01T01:00:00Z'),
	pg_temp.ev('t4-2', 'T4', 'delivery_failed', '2026-03-01T02:00:00Z')));
SELECT status FROM shipsync.shipment WHERE tracking_number = 'T4';
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t4-3', 'T4', 'out_for_delivery', '2026-03-01T03:00:00Z')));
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t4-4', 'T4', 'exception', '2026-03-01T04:00:00Z')));
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t4-5', 'T4', 'in_transit', '2026-03-01T05:00:00Z')));
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t4-6', 'T4', 'delivered', '2026-03-01T06:00:00Z')));
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t4-7', 'T4', 'exception', '2026-03-01T07:00:00Z'),
	pg_temp.ev('t4-8', 'T4', 'returned', '2026-03-01T08:00:00Z')));
-- expired: set by the expiry message even from a higher rank, left by any later event
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t5-1', 'T5', 'out_for_delivery', '2026-03-01T01:00:00Z'),
	pg_temp.ev('t5-2', 'T5', 'expired', '2026-03-01T02:00:00Z')));
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t5-3', 'T5', 'pre_transit', '2026-03-01T03:00:00Z')));
-- a late event older than a recoverable state does not apply
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t7-1', 'T7', 'delivery_failed', '2026-03-01T02:00:00Z')));
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t7-2', 'T7', 'in_transit', '2026-03-01T01:00:00Z')));
-- a cancelled shipment stays cancelled; unknown statuses are kept raw, change nothing
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t6-1', 'T6', 'in_transit', '2026-03-01T01:00:00Z')));
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t8-1', 'T8', 'in_transit', '2026-03-01T01:00:00Z'),
	pg_temp.ev('t8-2', 'T8', 'lost_in_space', '2026-03-01T02:00:00Z')));
-- a status_map row of the generic profile maps a raw status of its own
INSERT INTO shipsync.status_map (profile, raw_status, status) VALUES ('generic', 'lost_in_space', 'exception');
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('t8-3', 'T8', 'lost_in_space', '2026-03-01T03:00:00Z')));
-- built-in rows are not dumped: a row a DBA writes becomes the DBA's own
-- (dumped), an inserted row takes the place of the built-in row of its
-- key, and a built-in row cannot be deleted (TAP 005 restores them)
BEGIN;
UPDATE shipsync.status_map SET status = 'in_transit' WHERE profile = 'sf_express' AND raw_status = '44';
INSERT INTO shipsync.status_map (profile, raw_status, status) VALUES ('sf_express', '80', 'available_for_pickup');
INSERT INTO shipsync.fee_type_map (profile, code, fee_type) VALUES ('easypost', 'LabelFee', 'postage');
UPDATE shipsync.currency SET name = 'Renminbi' WHERE code = 'CNY';
SELECT profile, raw_status, status, builtin FROM shipsync.status_map
 WHERE profile = 'sf_express' AND raw_status IN ('44', '80', '50') ORDER BY raw_status;
SELECT profile, code, fee_type, builtin FROM shipsync.fee_type_map WHERE profile = 'easypost' AND code = 'LabelFee';
SELECT code, name, builtin FROM shipsync.currency WHERE code = 'CNY';
SELECT pg_temp.err($$DELETE FROM shipsync.status_map WHERE profile = 'sf_express' AND raw_status = '50'$$);
SELECT pg_temp.err($$DELETE FROM shipsync.fee_type_map WHERE profile = 'easypost' AND code = 'PostageFee'$$);
SELECT pg_temp.err($$DELETE FROM shipsync.currency WHERE code = 'USD'$$);
-- the DBA's own rows may go
DELETE FROM shipsync.status_map WHERE profile = 'sf_express' AND raw_status = '80';
SELECT count(*) AS sf_80_rows FROM shipsync.status_map WHERE profile = 'sf_express' AND raw_status = '80';
ROLLBACK;

SELECT s.order_key, s.tracking_number, s.status, s.raw_status, o.ship_status AS written_back,
	   (SELECT string_agg(e.status || '@' || to_char(e.occurred_at AT TIME ZONE 'UTC', 'HH24'), ' ' ORDER BY e.occurred_at)
		FROM shipsync.tracking_event e WHERE e.binding_id = s.binding_id AND e.order_key = s.order_key) AS history
FROM shipsync.shipment s JOIN crm.orders o ON o.id::text = s.order_key
JOIN shipsync.provider p USING (provider_id)
WHERE p.name = 'gen' ORDER BY s.order_key::int;
-- no echo: write-backs made no intents
SELECT count(*) - :intents_before AS new_intents FROM shipsync.outbox;

------------------------------------------------------------------------------
-- Unmatched: parked, matched when the shipment appears, expired
------------------------------------------------------------------------------
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('u-1', 'LATE1', 'in_transit', '2026-03-01T01:00:00Z'),
	pg_temp.ev('u-2', 'LATE1', 'out_for_delivery', '2026-03-01T02:00:00Z')));
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('u-1', 'LATE1', 'in_transit', '2026-03-01T01:00:00Z')))->'duplicate' AS parked_duplicate;
SELECT event_key, tracking_number, raw_status FROM shipsync.unmatched_event ORDER BY event_key;
INSERT INTO crm.orders (id) VALUES (30);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number)
SELECT b.binding_id, '30', p.provider_id, 'LATE1' FROM shipsync.binding b, shipsync.provider p WHERE p.name = 'gen';
SELECT s.status, o.ship_status FROM shipsync.shipment s JOIN crm.orders o ON o.id::text = s.order_key WHERE s.order_key = '30';
SELECT count(*) AS still_parked FROM shipsync.unmatched_event WHERE tracking_number = 'LATE1';
SELECT count(*) AS moved_to_events FROM shipsync.tracking_event WHERE tracking_number = 'LATE1';
-- within one transaction, the match waits for its end
BEGIN;
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('u-3', 'LATE2', 'in_transit', '2026-03-01T01:00:00Z')))->'unmatched' AS parked;
INSERT INTO crm.orders (id) VALUES (31);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number)
SELECT b.binding_id, '31', p.provider_id, 'LATE2' FROM shipsync.binding b, shipsync.provider p WHERE p.name = 'gen';
SELECT count(*) AS parked_before_commit FROM shipsync.unmatched_event WHERE tracking_number = 'LATE2';
COMMIT;
SELECT s.status, o.ship_status FROM shipsync.shipment s JOIN crm.orders o ON o.id::text = s.order_key WHERE s.order_key = '31';
-- expiry: a ticket per event, nothing parked left
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('u-9', 'NEVER', 'in_transit', '2026-03-01T01:00:00Z')))->'unmatched' AS parked;
SELECT shipsync.expire_unmatched() AS expired_too_early;
UPDATE shipsync.unmatched_event SET expires_at = now() - interval '1 second';
SELECT shipsync.expire_unmatched() AS expired;
SELECT kind, detail FROM shipsync.exception_ticket WHERE kind = 'unmatched_expired' ORDER BY detail;
SELECT count(*) AS parked_left FROM shipsync.unmatched_event;
-- thousands of unknown tracking numbers expiring at once: one ticket each
-- (a lock taken per ticket filled the server's lock table, "out of shared
-- memory", and every push of the provider failed with it from then on)
INSERT INTO shipsync.unmatched_event (provider_id, event_key, tracking_number, occurred_at, raw_status, expires_at)
SELECT p.provider_id, 'bulk-' || g, 'BULK' || g, now(), 'in_transit', now() - interval '1 second'
  FROM shipsync.provider p, generate_series(1, 30000) g WHERE p.name = 'gen';
SELECT shipsync.expire_unmatched() AS expired;
SELECT count(*) AS tickets FROM shipsync.exception_ticket WHERE kind = 'unmatched_expired' AND subject LIKE 'BULK%';

------------------------------------------------------------------------------
-- trace(): tracking events in the order's timeline
------------------------------------------------------------------------------
SELECT at AT TIME ZONE 'UTC' AS at_utc, kind, detail->>'status' AS status, detail->>'raw_status' AS raw
FROM shipsync.trace('crm.orders', '4') WHERE kind = 'tracking';
SELECT array_agg(DISTINCT kind ORDER BY kind) AS kinds FROM shipsync.trace('crm.orders', '4');

------------------------------------------------------------------------------
-- An order shipped again under its key (deleted and inserted again, its key
-- changed and changed back): its shipment row is reused for the new
-- waybill, and only that waybill's events move it, not the old one's
-- last word
------------------------------------------------------------------------------
INSERT INTO crm.orders (id) VALUES (40);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number)
SELECT b.binding_id, '40', p.provider_id, 'OLD40' FROM shipsync.binding b, shipsync.provider p WHERE p.name = 'gen';
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('r40-a', 'OLD40', 'in_transit', '2026-03-01T01:00:00Z'),
	pg_temp.ev('r40-b', 'OLD40', 'returned', '2026-03-02T01:00:00Z')))->'shipments_changed' AS changed;
SELECT s.tracking_number, s.status, o.ship_status FROM shipsync.shipment s
JOIN crm.orders o ON o.id::text = s.order_key WHERE s.order_key = '40';
-- the create of the order shipped again, as the dispatcher's apply records it
UPDATE shipsync.shipment SET tracking_number = 'NEW40', status = 'pre_transit', raw_status = NULL
WHERE order_key = '40';
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('r40-c', 'NEW40', 'in_transit', '2026-03-05T01:00:00Z')))->'shipments_changed' AS changed;
SELECT s.tracking_number, s.status, o.ship_status FROM shipsync.shipment s
JOIN crm.orders o ON o.id::text = s.order_key WHERE s.order_key = '40';
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('r40-d', 'NEW40', 'delivered', '2026-03-06T01:00:00Z')))->'shipments_changed' AS changed;
SELECT s.tracking_number, s.status, o.ship_status FROM shipsync.shipment s
JOIN crm.orders o ON o.id::text = s.order_key WHERE s.order_key = '40';

------------------------------------------------------------------------------
-- One order's row refusing its status fails that order's write-back alone:
-- a trigger of the user's raising for order 52 once refused the whole push
-- (nothing stored, no ticket, the carrier retrying for ever).  Now the push
-- is taken, both shipments' statuses are stored, order 51's row is written,
-- and order 52 has a writeback_failed ticket naming the error, not its
-- detail (which may quote the row)
------------------------------------------------------------------------------
INSERT INTO crm.orders (id) VALUES (51), (52);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number)
SELECT b.binding_id, v.k, p.provider_id, v.tn FROM shipsync.binding b, shipsync.provider p,
	(VALUES ('51', 'W51'), ('52', 'W52')) AS v(k, tn) WHERE p.name = 'gen';
CREATE FUNCTION crm.refuse_archived() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.id = 52 THEN
		RAISE EXCEPTION 'order % is archived', NEW.id
			USING DETAIL = 'Failing row contains (52, Zhang San).';
	END IF;
	RETURN NEW;
END
$$;
CREATE TRIGGER refuse_archived BEFORE UPDATE ON crm.orders
	FOR EACH ROW EXECUTE FUNCTION crm.refuse_archived();
SELECT pg_temp.push('gen', jsonb_build_array(
	pg_temp.ev('wb-1', 'W51', 'in_transit', '2026-03-01T01:00:00Z'),
	pg_temp.ev('wb-2', 'W52', 'in_transit', '2026-03-01T01:00:00Z')))->'shipments_changed' AS changed;
SELECT s.order_key, s.status, o.ship_status FROM shipsync.shipment s
JOIN crm.orders o ON o.id::text = s.order_key WHERE s.order_key IN ('51', '52') ORDER BY 1;
SELECT count(*) AS events_stored FROM shipsync.tracking_event WHERE event_key IN ('wb-1', 'wb-2');
SELECT kind, order_key, provider_id = (SELECT provider_id FROM shipsync.provider WHERE name = 'gen') AS of_gen,
	outbox_id, detail FROM shipsync.exception_ticket WHERE kind = 'writeback_failed';
-- the same again: the same ticket, seen again, not a second one
SELECT pg_temp.push('gen', jsonb_build_array(
	pg_temp.ev('wb-3', 'W52', 'delivered', '2026-03-02T01:00:00Z')))->'shipments_changed' AS changed;
SELECT count(*) AS writeback_tickets FROM shipsync.exception_ticket WHERE kind = 'writeback_failed';
DROP TRIGGER refuse_archived ON crm.orders;

------------------------------------------------------------------------------
-- Row-level security forced on the table's owner, as whom the write-back
-- runs: an order its policies hide was written nothing, without a ticket.
-- Now its write-back fails, and the ticket says why
------------------------------------------------------------------------------
CREATE ROLE shipsync_test_rls_owner;
GRANT USAGE ON SCHEMA crm TO shipsync_test_rls_owner;
ALTER TABLE crm.orders OWNER TO shipsync_test_rls_owner;
ALTER TABLE crm.orders ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY none_seen ON crm.orders USING (false);
SELECT pg_temp.push('gen', jsonb_build_array(
	pg_temp.ev('rls-1', 'W51', 'delivered', '2026-03-03T01:00:00Z')))->'shipments_changed' AS changed;
SELECT s.order_key, s.status, o.ship_status FROM shipsync.shipment s
JOIN crm.orders o ON o.id::text = s.order_key WHERE s.order_key = '51';
SELECT kind, order_key, detail FROM shipsync.exception_ticket
WHERE kind = 'writeback_failed' AND order_key = '51';
-- a policy of the owner's that lets it see and write every row: the
-- write-back is done
CREATE POLICY owner_all ON crm.orders TO shipsync_test_rls_owner USING (true);
INSERT INTO crm.orders (id) VALUES (53);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number)
SELECT b.binding_id, '53', p.provider_id, 'W53' FROM shipsync.binding b, shipsync.provider p
WHERE p.name = 'gen' AND b.tbl = 'crm.orders'::regclass;
SELECT pg_temp.push('gen', jsonb_build_array(
	pg_temp.ev('rls-2', 'W53', 'in_transit', '2026-03-04T01:00:00Z')))->'shipments_changed' AS changed;
SELECT s.order_key, s.status, o.ship_status FROM shipsync.shipment s
JOIN crm.orders o ON o.id::text = s.order_key WHERE s.order_key = '53';
DROP POLICY owner_all ON crm.orders;
DROP POLICY none_seen ON crm.orders;
ALTER TABLE crm.orders NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;
ALTER TABLE crm.orders OWNER TO CURRENT_USER;
REVOKE USAGE ON SCHEMA crm FROM shipsync_test_rls_owner;
DROP ROLE shipsync_test_rls_owner;

------------------------------------------------------------------------------
-- SF Express pieces: a multi-piece order's child waybill (waybillType 2) and
-- its return waybill (3), as the create's answer gave them (shipment.waybills).
-- Their route pushes are the order's, tagged with the piece; only the main
-- waybill moves the order's status: a child delivered, or the return
-- parcel's own progress, does not make the order delivered
------------------------------------------------------------------------------
INSERT INTO crm.orders (id) VALUES (60), (61);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, provider_shipment_id, tracking_number, waybills)
SELECT b.binding_id, '60', p.provider_id, '60', 'SF6000000000001',
	'[{"waybillNo": "SF6000000000001", "waybillType": 1}, {"waybillNo": "SF6000000000002", "waybillType": 2},
	  {"waybillNo": "SF6000000000003", "waybillType": 3}]'
FROM shipsync.binding b, shipsync.provider p WHERE b.tbl = 'crm.orders'::regclass AND p.name = 'sf_open';
CREATE FUNCTION pg_temp.sf_route(id text, mailno text, op text, at text) RETURNS text
LANGUAGE sql AS $$
	SELECT jsonb_build_object('Body', jsonb_build_object('WaybillRoute', jsonb_build_array(
		jsonb_build_object('id', id, 'mailno', mailno, 'opCode', op, 'acceptTime', at,
						   'orderid', '60', 'remark', 'r'))))::text $$;
-- (the binding's provider pulls fees after a delivery and lists shipments
-- delivered a day ago without a bill: a piece's delivery is neither)
UPDATE shipsync.provider SET options = options || '{"fee_pull_after": "2 days", "unbilled_after": "1 day"}'
WHERE name = 'gen';
SELECT shipsync.ingest_tracking('sf_open', pg_temp.sf_route('p-m1', 'SF6000000000001', '50', '2026-04-01 09:00:00')) - 'reply' AS main_picked_up;
SELECT shipsync.ingest_tracking('sf_open', pg_temp.sf_route('p-c1', 'SF6000000000002', '80', '2026-04-02 09:00:00')) - 'reply' AS child_delivered;
SELECT shipsync.ingest_tracking('sf_open', pg_temp.sf_route('p-r1', 'SF6000000000003', '80', '2026-04-03 09:00:00')) - 'reply' AS return_delivered;
SELECT e.event_key, e.tracking_number, e.piece, e.status FROM shipsync.tracking_event e
WHERE e.order_key = '60' ORDER BY e.occurred_at;
SELECT count(*) AS pieces_parked FROM shipsync.unmatched_event WHERE tracking_number LIKE 'SF60%';
SELECT count(*) AS fee_pulls_queued FROM shipsync.fee_pull WHERE order_key = '60';
SELECT s.status, o.ship_status FROM shipsync.shipment s JOIN crm.orders o ON o.id::text = s.order_key
WHERE s.order_key = '60';
-- the main waybill delivered: now the order is
SELECT shipsync.ingest_tracking('sf_open', pg_temp.sf_route('p-m2', 'SF6000000000001', '80', '2026-04-02 10:00:00'))->'shipments_changed' AS main_delivered;
SELECT s.status, o.ship_status FROM shipsync.shipment s JOIN crm.orders o ON o.id::text = s.order_key
WHERE s.order_key = '60';
SELECT count(*) AS fee_pulls_queued FROM shipsync.fee_pull WHERE order_key = '60';
DELETE FROM shipsync.fee_pull WHERE order_key = '60';
-- nor is a delivered return parcel a shipment delivered without a bill
INSERT INTO crm.orders (id) VALUES (62);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, provider_shipment_id, tracking_number, waybills)
SELECT b.binding_id, '62', b.provider_id, '62', 'GW6200000001',
	'[{"waybillNo": "GW6200000001", "waybillType": 1}, {"waybillNo": "GW6200000003", "waybillType": 3}]'
FROM shipsync.binding b WHERE b.tbl = 'crm.orders'::regclass;
INSERT INTO shipsync.tracking_event (provider_id, event_key, tracking_number, binding_id, order_key,
									 occurred_at, status, piece)
SELECT s.provider_id, 'p-r62', 'GW6200000003', s.binding_id, s.order_key, now() - interval '3 days',
	   'delivered', 'return'
FROM shipsync.shipment s WHERE s.order_key = '62';
SELECT count(*) AS unbilled FROM shipsync.fee_difference WHERE kind = 'unbilled' AND order_key = '62';
INSERT INTO shipsync.tracking_event (provider_id, event_key, tracking_number, binding_id, order_key,
									 occurred_at, status)
SELECT s.provider_id, 'p-m62', 'GW6200000001', s.binding_id, s.order_key, now() - interval '2 days', 'delivered'
FROM shipsync.shipment s WHERE s.order_key = '62';
SELECT count(*) AS unbilled,
	   bool_and(strpos(detail, (SELECT occurred_at::text FROM shipsync.tracking_event
								 WHERE event_key = 'p-m62')) > 0) AS since_main_delivered
FROM shipsync.fee_difference WHERE kind = 'unbilled' AND order_key = '62';
DELETE FROM shipsync.fee_pull WHERE order_key = '62';
UPDATE shipsync.provider SET options = options - 'fee_pull_after' - 'unbilled_after' WHERE name = 'gen';
-- a child's route pushed before the create's answer was applied: parked,
-- then the order's when the shipment records its waybills
SELECT shipsync.ingest_tracking('sf_open', pg_temp.sf_route('p-c2', 'SF6100000000002', '30', '2026-04-01 09:00:00'))->'unmatched' AS early_child;
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, provider_shipment_id, tracking_number, waybills)
SELECT b.binding_id, '61', p.provider_id, '61', 'SF6100000000001',
	'[{"waybillNo": "SF6100000000001", "waybillType": 1}, {"waybillNo": "SF6100000000002", "waybillType": 2}]'
FROM shipsync.binding b, shipsync.provider p WHERE b.tbl = 'crm.orders'::regclass AND p.name = 'sf_open';
SELECT e.event_key, e.order_key, e.piece, e.status FROM shipsync.tracking_event e WHERE e.event_key = 'p-c2';
SELECT count(*) AS still_parked FROM shipsync.unmatched_event WHERE tracking_number LIKE 'SF61%';
SELECT s.status FROM shipsync.shipment s WHERE s.order_key = '61';

------------------------------------------------------------------------------
-- A route id beyond 64 bits is refused (SS400), not read as another id:
-- json-c read 18446744073709551617 and ...618 both as 18446744073709551615,
-- so the second event was dropped as a duplicate of the first
------------------------------------------------------------------------------
SELECT pg_temp.err($$SELECT shipsync.ingest_tracking('sf_open', '{"Body": {"WaybillRoute": [{"mailno": "SF6000000000001", "acceptTime": "2026-04-01 11:00:00", "opCode": "30", "id": 18446744073709551617}]}}')$$);
SELECT count(*) AS clamped_keys FROM shipsync.tracking_event WHERE event_key = '18446744073709551615';

------------------------------------------------------------------------------
-- An order a trigger inserts when a status is written back is captured
------------------------------------------------------------------------------
-- The write-back runs with the capture trigger suppressed (no echo), and
-- the suppression covered everything the write-back's statement did: an
-- order that a trigger of the table inserted in reaction (a replacement
-- sent when the first is returned) was never captured, so never sent.
-- The write-back's own rows still make no intent.
CREATE FUNCTION crm.replace_returned() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.ship_status = 'returned' AND OLD.ship_status IS DISTINCT FROM 'returned' THEN
		INSERT INTO crm.orders (id) VALUES (NEW.id + 1000);
	END IF;
	RETURN NULL;
END
$$;
CREATE TRIGGER replace_returned AFTER UPDATE OF ship_status ON crm.orders
	FOR EACH ROW EXECUTE FUNCTION crm.replace_returned();
INSERT INTO crm.orders (id) VALUES (70);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, status)
SELECT b.binding_id, '70', p.provider_id, 'T70', 'in_transit'
FROM shipsync.binding b, shipsync.provider p WHERE b.tbl = 'crm.orders'::regclass AND p.name = 'gen';
SELECT count(*) AS intents_of_70 FROM shipsync.inbox WHERE order_key = '70' \gset
SELECT pg_temp.push('gen', jsonb_build_array(pg_temp.ev('r-70', 'T70', 'returned', '2026-03-05T10:00:00Z')))->'new' AS returned_event;
SELECT id, ship_status FROM crm.orders WHERE id IN (70, 1070) ORDER BY id;
SELECT op, order_key FROM shipsync.inbox WHERE order_key = '1070';
SELECT count(*) - :intents_of_70 AS echo_of_70 FROM shipsync.inbox WHERE order_key = '70';
DROP TRIGGER replace_returned ON crm.orders;
