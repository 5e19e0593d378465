-- Fees: every source and its errors (pushes of three dialects, create
-- responses, statements CSV and JSON), revisions and their history,
-- parking, the fee_total rule and its mixed-currency ticket, and each
-- view on hand-made data whose sums are known.
CREATE EXTENSION pg_shipsync;
SET client_min_messages = warning;
SET timezone = 'UTC';

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

-- a generic fee push of lines, signed now with the provider's secret
CREATE FUNCTION pg_temp.sw_headers(id text, body text) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('Webhook-Id', id, 'Webhook-Timestamp', ts::text,
		'Webhook-Signature', 'v1,' || encode(shipsync._hmac_sha256(
			decode('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'base64'),
			convert_to(id || '.' || ts || '.' || body, 'UTF8')), 'base64'))
	FROM (SELECT extract(epoch FROM now())::bigint AS ts) t
$$;
CREATE FUNCTION pg_temp.push(lines jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT shipsync.ingest_fees('gen', b, pg_temp.sw_headers('msg_' || md5(b), b))
	FROM (SELECT jsonb_build_object('fees', lines)::text AS b) x
$$;
CREATE FUNCTION pg_temp.push_err(body text) RETURNS text LANGUAGE sql AS $$
	SELECT pg_temp.err(format('SELECT shipsync.ingest_fees(%L, %L, %L)', 'gen', body,
		pg_temp.sw_headers('msg_' || md5(body), body)))
$$;
-- the lines of the orders, short
CREATE FUNCTION pg_temp.lines(tn text DEFAULT NULL)
RETURNS TABLE (tracking_number text, fee_type text, fee_key text, quote boolean, order_key text,
			   raw_type text, amount numeric, currency text, state text, source text, revision int)
LANGUAGE sql AS $$
	SELECT tracking_number, fee_type, fee_key, quote, order_key, raw_type, amount, currency,
		   state, source, revision
	FROM shipsync.fee_line WHERE tn IS NULL OR tracking_number = tn
	ORDER BY tracking_number, fee_type, fee_key, quote DESC
$$;

------------------------------------------------------------------------------
-- Providers, their fee options, an attached table and its shipments
------------------------------------------------------------------------------
SELECT shipsync.create_provider('gen', 'generic', 'https://carrier.example',
	'{"webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "fee_tolerance": {"abs": "0.50", "pct": 0}}');
SELECT shipsync.create_provider('sf', 'sf_express', 'https://sfapi.example',
	'{"auth": {"type": "sf_express", "partner_id": "P1", "checkword": "cw"}}');
SELECT shipsync.create_provider('sf_open', 'sf_express', 'https://sfapi.example',
	'{"accept_unsigned_pushes": true, "fee_pull_after": "2 days", "unbilled_after": "30 days",
	  "auth": {"type": "sf_express", "partner_id": "P1", "checkword": "cw"}}');
SELECT shipsync.create_provider('ep', 'easypost', 'https://api.easypost.example/v2',
	'{"webhook_secret": "sécret", "auth": {"type": "basic", "username": "EZTK-key"}}');
SELECT pg_temp.err($$SELECT shipsync.create_provider('x', 'generic', 'https://x.example', '{"fee_pull_after": "soon"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('x', 'generic', 'https://x.example', '{"unbilled_after": "-3 days"}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('x', 'easypost', 'https://x.example',
	'{"fee_pull_after": "1 day", "auth": {"type": "basic", "username": "k"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('x', 'generic', 'https://x.example', '{"fee_tolerance": {"abs": "1,00"}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('x', 'generic', 'https://x.example', '{"fee_tolerance": {"cents": 1}}')$$);
SELECT pg_temp.err($$SELECT shipsync.create_provider('x', 'generic', 'https://x.example', '{"currency": "RMB"}')$$);

CREATE TABLE orders (id int PRIMARY KEY, waybill text, fee numeric(10,2));
SELECT shipsync.attach('orders', 'gen', writeback => '{"tracking_number": "waybill", "fee_total": "fee"}');
SELECT shipsync.pause('gen');
INSERT INTO orders (id, waybill) SELECT g, 'T' || g FROM generate_series(1, 9) g;
-- the shipments, as the dispatcher would have recorded them, in two months
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number,
	provider_shipment_id, created_at)
SELECT b.binding_id, g::text, b.provider_id, 'T' || g, 'shp_' || g,
	   CASE WHEN g <= 6 THEN timestamptz '2026-03-10 12:00+00' ELSE timestamptz '2026-04-02 12:00+00' END
FROM shipsync.binding b, generate_series(1, 9) g WHERE b.tbl = 'orders'::regclass;

------------------------------------------------------------------------------
-- Create responses: their fees are the quote (estimated lines)
------------------------------------------------------------------------------
-- what the dispatcher's apply sets on the shipments, one call per batch:
-- one currency, the sum (1, 3 without a currency: XXX for all, 4 net of
-- the refund); two currencies, none (2); no fees, no row (5); an empty
-- list, none (6)
SELECT ord, fees IS NOT NULL AS parsed, total FROM shipsync._quote_totals(ARRAY[
	'[{"type":"freight","amount":"12.50","currency":"CNY"},{"type":"insurance","amount":1.2,"currency":"CNY"}]',
	'[{"type":"freight","amount":"12.50","currency":"CNY"},{"type":"LabelFee","amount":"3.00000","currency":"USD"}]',
	'[{"type":"LabelFee","amount":"3.00000"},{"type":"PostageFee","amount":"5.5"}]',
	'[{"type":"freight","amount":"10","currency":"CNY"},{"type":"refund","amount":"-2","currency":"CNY"}]',
	NULL, '[]'], ARRAY[1, 1, 1, 1, 1, 1])
ORDER BY ord;
-- the edges, each read as the PL/pgSQL version before the C one read it:
-- a line that is no object (no amount, the default currency), a number as
-- currency, an amount as a JSON number or string, a nested currency, a
-- refund written positive, an unknown provider (fees, no total), a body
-- that is no array, no amounts
SELECT ord, fees, total FROM shipsync._quote_totals(ARRAY[
	'[{"type":"freight","amount":"12.50","currency":"CNY"}, 7]',
	'[{"type":"freight","amount":2.5,"currency":156},{"amount":"1","currency":"156"}]',
	'[{"type":"freight","amount":"10.00","currency":{"code":"CNY"}}]',
	'[{"type":"refund","amount":"3","currency":"CNY"},{"type":"freight","amount":"10","currency":"CNY"}]',
	'[{"type":"freight","amount":"1"}]',
	'{"type":"freight","amount":"1"}',
	'[{"type":"freight","currency":"CNY"}]',
	'[{"type":"freight","amount":null,"currency":"CNY"},{"type":"freight","amount":"4.0","currency":"CNY"}]',
	NULL], ARRAY[1, 1, 1, 1, 999, 1, 1, 1, 1])
ORDER BY ord;
SELECT ord, total FROM shipsync._quote_totals(ARRAY['[{"amount":"1"}]', NULL, '[{"amount":"2","currency":"XXX"}]'], NULL);
SELECT ord, total FROM shipsync._quote_totals(NULL, ARRAY[1]);
SELECT ord, total FROM shipsync._quote_totals(ARRAY['[{"amount":"5"}]', '[{"amount":"6"}]'], ARRAY[1]);
-- an amount that is no number, or a body that is no JSON, is an error
SELECT ord, total FROM shipsync._quote_totals(ARRAY['[{"type":"freight","amount":"12,50","currency":"CNY"}]'], ARRAY[1]);
SELECT ord, total FROM shipsync._quote_totals(ARRAY['[{"type":"freight","amount":true,"currency":"CNY"}]'], ARRAY[1]);
SELECT ord, total FROM shipsync._quote_totals(ARRAY['{"fees": '], ARRAY[1]);
-- the first quotes the apply records in one statement: the lines of the
-- answers that qualify, everything else left to _record_quotes().  Taken:
-- 1 (a refund counted against the estimate), 3 (a key; an unmapped code is
-- other), 4 (gen has no default currency: the line says); left: 2 (a
-- currency shipsync.currency does not know), 5 (two codes of one canonical
-- type and key), 6 and 7 (one tracking number), 8 and 9 (one order),
-- 10 (no currency and no default), 11 (two currencies), 12 (a line that
-- is no object), 13 (a type that is no string), 14 (a key that is no
-- string), 15 (an amount missing), 16 (an empty list), 17 (no list),
-- 18 (no tracking number), 19 (an unknown provider), 20 (65 lines)
WITH p AS (SELECT (SELECT provider_id FROM shipsync.provider WHERE name = 'gen') AS gen,
				  (SELECT provider_id FROM shipsync.provider WHERE name = 'sf') AS sf)
SELECT f.* FROM p, shipsync._first_quote_lines(
	array_fill(1, ARRAY[20]),
	ARRAY['o1', 'o2', 'o3', 'o4', 'o5', 'o6', 'o7', 'o8', 'o8', 'o10', 'o11', 'o12', 'o13',
		  'o14', 'o15', 'o16', 'o17', 'o18', 'o19', 'o20'],
	ARRAY[p.sf, p.sf, p.sf, p.gen, p.sf, p.sf, p.sf, p.sf, p.sf, p.gen, p.sf, p.sf, p.sf,
		  p.sf, p.sf, p.sf, p.sf, p.sf, 999, p.sf],
	ARRAY['T1', 'T2', 'T3', 'T4', 'T5', 'T6', 'T6', 'T8', 'T9', 'T10', 'T11', 'T12', 'T13',
		  'T14', 'T15', 'T16', 'T17', NULL, 'T19', 'T20'],
	ARRAY['[{"type":"freight","amount":"12.50","currency":"CNY"},{"type":"refund","amount":2}]',
		  '[{"type":"freight","amount":"1","currency":"ZZZ"}]',
		  '[{"type":"Freight","amount":1.50,"key":"x"},{"type":"weird_fee","amount":"1"}]',
		  '[{"type":"freight","amount":"3.00","currency":"USD"}]',
		  '[{"type":"freight","amount":"1"},{"type":"FREIGHT","amount":"1"}]',
		  '[{"type":"freight","amount":"1"}]', '[{"type":"freight","amount":"1"}]',
		  '[{"type":"freight","amount":"1"}]', '[{"type":"freight","amount":"1"}]',
		  '[{"type":"freight","amount":"1"}]',
		  '[{"type":"freight","amount":"1"},{"type":"insurance","amount":"1","currency":"USD"}]',
		  '[{"type":"freight","amount":"1"}, 7]',
		  '[{"type":5,"amount":"1"}]',
		  '[{"type":"freight","amount":"1","key":7}]',
		  '[{"type":"freight"}]', '[]', '{"type":"freight","amount":"1"}',
		  '[{"type":"freight","amount":"1"}]', '[{"type":"freight","amount":"1"}]',
		  (SELECT json_agg(json_build_object('type', 'freight', 'amount', g, 'key', g::text))::text
		   FROM generate_series(1, 65) g)]) f
ORDER BY f.ord, f.i;
-- read as the statement read them: every body (one that is no JSON fails,
-- even a repeat's), and every amount of an answer that is no repeat (one
-- that is no number fails, even beside a currency that makes it left)
SELECT count(*) FROM shipsync._first_quote_lines(ARRAY[1, 1], ARRAY['a', 'b'], ARRAY[1, 1],
	ARRAY['T1', 'T2'], ARRAY['[{"type":"freight","amount":"1"}]',
	'[{"type":"freight","amount":"1","currency":"ZZZ"},{"type":"freight","amount":"12,50"}]']);
SELECT count(*) FROM shipsync._first_quote_lines(ARRAY[1, 1], ARRAY['a', 'a'], ARRAY[1, 1],
	ARRAY['T1', 'T2'], ARRAY['[{"type":"freight","amount":"1"}]', '{"fees": ']);
SELECT count(*) FROM shipsync._first_quote_lines(NULL, NULL, NULL, NULL, NULL);
-- the lists _quote_totals() parsed are read again only where the text is
-- the same: in one transaction, as the apply calls them, a first quote of
-- another list at the same place (2: 7.00, not 9.00), or one that is no
-- JSON (then an error), reads its own list
BEGIN;
SELECT ord, total FROM shipsync._quote_totals(ARRAY[
	'[{"type":"freight","amount":"1.00","currency":"CNY"}]',
	'[{"type":"freight","amount":"9.00","currency":"CNY"}]'], ARRAY[1, 1]) ORDER BY ord;
SELECT ord, i, amount, estimated FROM shipsync._first_quote_lines(ARRAY[1, 1, 1], ARRAY['a', 'b', 'c'],
	ARRAY[1, 1, 1], ARRAY['T1', 'T2', 'T3'], ARRAY[
	'[{"type":"freight","amount":"1.00","currency":"CNY"}]',
	'[{"type":"freight","amount":"7.00","currency":"CNY"}]',
	'[{"type":"freight","amount":"3.00","currency":"CNY"}]']) ORDER BY ord, i;
SELECT count(*) FROM shipsync._first_quote_lines(ARRAY[1, 1], ARRAY['a', 'b'], ARRAY[1, 1],
	ARRAY['T1', 'T2'], ARRAY['[{"type":"freight","amount":"1.00","currency":"CNY"}]', '{"fees": ']);
ROLLBACK;
-- and what it records (the "fees" arrays of the answers, as the response
-- parser passes them): orders 1-6 quoted 12.50 + 1.20 CNY, order 7 in
-- EasyPost's shape without a currency (XXX), orders 8 and 9 not quoted
SELECT kind, n FROM shipsync._record_quotes(
	ARRAY[1, 1, 1, 1, 1, 1, 1], ARRAY['1', '2', '3', '4', '5', '6', '7'], ARRAY[1, 1, 1, 1, 1, 1, 1],
	ARRAY['T1', 'T2', 'T3', 'T4', 'T5', 'T6', 'T7'],
	array_fill('[{"type":"freight","amount":"12.50","currency":"CNY"},{"type":"insurance","amount":1.2,"currency":"CNY"}]'::text, ARRAY[6])
	|| '[{"object":"Fee","type":"LabelFee","amount":"3.00000","charged":true},{"object":"Fee","type":"PostageFee","amount":"5.50000"}]'::text)
WHERE kind <> 'writeback';
-- (the dispatcher's apply writes the shipment's total onto the order row
-- with the rest of the create; here, by hand)
UPDATE orders o SET fee = s.fee_total FROM shipsync.shipment s WHERE s.order_key = o.id::text;
SELECT * FROM pg_temp.lines() WHERE tracking_number IN ('T1', 'T7');
SELECT order_key, fee_total FROM shipsync.shipment WHERE order_key IN ('1', '7', '8') ORDER BY 1;
-- the same response applied again (a replayed answer) changes nothing
SELECT kind, n FROM shipsync._record_quotes(ARRAY[1], ARRAY['1'], ARRAY[1], ARRAY['T1'],
	ARRAY['[{"type":"freight","amount":"12.50","currency":"CNY"},{"type":"insurance","amount":1.2,"currency":"CNY"}]'])
WHERE kind IN ('new', 'revised', 'duplicate');
-- a shipment created again (an order re-sent) with other fees: its quote
-- lines are revised, the earlier versions kept, the sums and the total
-- follow (and are written back); then answers in other currencies: the
-- CNY sum goes, one currency again.  Rolled back: the sections below
-- count on orders 2 and 8 as they are.
BEGIN;
SELECT kind, n, order_key, fee_total FROM shipsync._record_quotes(ARRAY[1], ARRAY['2'], ARRAY[1], ARRAY['T2'],
	ARRAY['[{"type":"freight","amount":"15.00","currency":"CNY"},{"type":"insurance","amount":1.2,"currency":"CNY"}]'])
WHERE n <> 0 OR kind = 'writeback';
SELECT f.fee_type, f.amount, f.revision, h.revision AS old_revision, h.amount AS old_amount,
	   h.superseded_by, h.superseded_source
FROM shipsync.fee_line f LEFT JOIN shipsync.fee_line_history h USING (fee_line_id)
WHERE f.tracking_number = 'T2' AND f.quote ORDER BY 1;
SELECT currency, estimated, quote_lines FROM shipsync.fee_sum WHERE order_key = '2';
SELECT fee_total FROM shipsync.shipment WHERE order_key = '2';
SELECT kind, n, order_key, fee_total FROM shipsync._record_quotes(ARRAY[1], ARRAY['2'], ARRAY[1], ARRAY['T2'],
	ARRAY['[{"type":"freight","amount":"2.00","currency":"USD"},{"type":"insurance","amount":"0.20","currency":"USD"}]'])
WHERE n <> 0 OR kind = 'writeback';
SELECT currency, estimated, quote_lines FROM shipsync.fee_sum WHERE order_key = '2';
-- one answer in two currencies (order 8, not quoted so far): lines in
-- each, a sum per currency, no total (the shipment's is left alone) and
-- a ticket; in the same batch as order 2 again, in one currency
SELECT kind, n, order_key, fee_total FROM shipsync._record_quotes(ARRAY[1, 1], ARRAY['8', '2'], ARRAY[1, 1],
	ARRAY['T8', 'T2'],
	ARRAY['[{"type":"freight","amount":"12.50","currency":"CNY"},{"type":"LabelFee","amount":"3.00000","currency":"USD"}]',
		  '[{"type":"freight","amount":"2.00","currency":"USD"},{"type":"insurance","amount":"0.20","currency":"USD"}]'])
WHERE n <> 0 OR kind = 'writeback';
SELECT order_key, currency, estimated, quote_lines FROM shipsync.fee_sum WHERE order_key IN ('2', '8') ORDER BY 1, 2;
SELECT order_key, fee_total FROM shipsync.shipment WHERE order_key IN ('2', '8') ORDER BY 1;
SELECT kind, order_key, detail, resolved_at IS NULL AS open FROM shipsync.exception_ticket
WHERE kind = 'fee_currency_mixed';
ROLLBACK;

------------------------------------------------------------------------------
-- Pushes: signatures and payload errors, with the SQLSTATEs of ingest_tracking()
------------------------------------------------------------------------------
\set good '{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "12.50", "currency": "CNY"}]}'
SELECT pg_temp.err($$SELECT shipsync.ingest_fees('gen', '{"fees": []}', '{}')$$);
SELECT pg_temp.err(format('SELECT shipsync.ingest_fees(%L, %L, %L)', 'gen', :'good',
	pg_temp.sw_headers('msg_1', :'good') || '{"Webhook-Signature": "v1,AAAA"}'));
SELECT pg_temp.err(format('SELECT shipsync.ingest_fees(%L, %L, %L)', 'gen', :'good' || ' ',
	pg_temp.sw_headers('msg_1', :'good')));
SELECT pg_temp.err($$SELECT shipsync.ingest_fees('nobody', '{}', '{}')$$);
SELECT pg_temp.err($$SELECT shipsync.ingest_fees('gen', NULL, '{}')$$);
SELECT pg_temp.push_err('not json');
SELECT pg_temp.push_err('{"events": []}');
SELECT pg_temp.push_err('{"fees": [42]}');
SELECT pg_temp.push_err('{"fees": [{"type": "freight", "amount": "1", "currency": "CNY"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "currency": "CNY"}]}');
-- amounts: spaces and thousands separators refused, each clearly
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "12.50 ", "currency": "CNY"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1,234.50", "currency": "CNY"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "¥12.50", "currency": "CNY"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1e3", "currency": "CNY"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": {"value": 1}, "currency": "CNY"}]}');
-- currency, words and times
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "12.50", "currency": "RMB"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "12.50"}]}');
-- an amount with more decimals than its currency has (ISO 4217's minor
-- unit): JPY and KRW have none, KWD three; trailing zeros are no decimals,
-- and a currency without a minor unit (XAU) or added without one is not
-- checked
SELECT code, minor_units FROM shipsync.currency
WHERE code IN ('CNY', 'USD', 'JPY', 'KRW', 'VND', 'CLP', 'ISK', 'KWD', 'BHD', 'TND', 'CLF', 'XAU', 'XXX')
ORDER BY code;
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1500.5", "currency": "JPY"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": 1500.5, "currency": "JPY"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "12000.25", "currency": "KRW"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1.2345", "currency": "KWD"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "12.505", "currency": "CNY"}]}');
BEGIN;
INSERT INTO shipsync.currency (code, name) VALUES ('XZZ', 'a currency of ours');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "MINOR1", "type": "freight", "amount": "1500.00", "currency": "JPY"},
	{"tracking_number": "MINOR1", "type": "fuel", "amount": "1.234", "currency": "KWD"},
	{"tracking_number": "MINOR1", "type": "tax", "amount": "12.50000", "currency": "USD"},
	{"tracking_number": "MINOR1", "type": "label", "amount": "0.123456", "currency": "XAU"},
	{"tracking_number": "MINOR1", "type": "other", "amount": "0.123456", "currency": "XZZ"}]}');
SELECT fee_type, amount, currency FROM shipsync.fee_line WHERE tracking_number = 'MINOR1' ORDER BY 1;
ROLLBACK;
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1", "currency": "CNY", "settlement": "weekly"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1", "currency": "CNY", "payer": "shop"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1", "currency": "CNY", "state": "estimated"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1", "currency": "CNY", "billed_weight_kg": "-2"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1", "currency": "CNY", "occurred_at": "2026/03/05"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "' || repeat('T', 200) || '", "type": "freight", "amount": "1", "currency": "CNY"}]}');
-- all or nothing: two good lines and a bad third store nothing
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1", "currency": "CNY"},
	{"tracking_number": "T2", "type": "freight", "amount": "2", "currency": "CNY"},
	{"tracking_number": "T3", "type": "freight", "amount": "3 000", "currency": "CNY"}]}');
SELECT count(*) AS bill_lines FROM shipsync.fee_line WHERE NOT quote;

------------------------------------------------------------------------------
-- Pushes: bills beside the quote, revisions, duplicates, keys, parking
------------------------------------------------------------------------------
SELECT pg_temp.push('[{"tracking_number": "T1", "type": "freight", "amount": "13.00", "currency": "CNY",
		"settlement": "monthly", "payer": "sender", "billed_weight_kg": 1.25, "occurred_at": "2026-03-11T08:00:00+08:00"},
	{"tracking_number": "T1", "type": "insurance", "amount": 1.2, "currency": "CNY"},
	{"tracking_number": "T2", "type": "Freight", "amount": "12.50", "currency": "CNY"},
	{"tracking_number": "T2", "type": "insurance", "amount": "1.20", "currency": "CNY"}]');
-- the same notice again: nothing changes
SELECT pg_temp.push('[{"tracking_number": "T1", "type": "freight", "amount": "13.00", "currency": "CNY"},
	{"tracking_number": "T1", "type": "insurance", "amount": "1.20", "currency": "CNY"}]');
-- a revision: the carrier corrects T1's freight
SELECT pg_temp.push('[{"tracking_number": "T1", "type": "freight", "amount": "12.50", "currency": "CNY"}]');
-- the first notice again, late: a notice seen before changes nothing
SELECT pg_temp.push('[{"tracking_number": "T1", "type": "freight", "amount": "13.00", "currency": "CNY",
		"settlement": "monthly", "payer": "sender", "billed_weight_kg": 1.25, "occurred_at": "2026-03-11T08:00:00+08:00"}]')->>'duplicate' AS late_duplicate;
-- a notice older than the line's version changes nothing: T2's insurance
-- revised on the 12th, a notice of the 11th comes late, the 13th's
-- restores it
SELECT pg_temp.push('[{"tracking_number": "T2", "type": "insurance", "amount": "1.30", "currency": "CNY", "occurred_at": "2026-03-12T00:00:00Z"}]')->>'revised' AS revised;
SELECT pg_temp.push('[{"tracking_number": "T2", "type": "insurance", "amount": "9.99", "currency": "CNY", "occurred_at": "2026-03-11T00:00:00Z"}]')->>'duplicate' AS older_notice;
SELECT pg_temp.push('[{"tracking_number": "T2", "type": "insurance", "amount": "1.20", "currency": "CNY", "occurred_at": "2026-03-13T00:00:00Z"}]')->>'revised' AS revised;
SELECT * FROM pg_temp.lines('T1');
SELECT f.fee_type, h.revision, h.amount, h.state, h.source, h.settlement, h.billed_weight_kg,
	   h.occurred_at, h.superseded_source, h.superseded_by = session_user AS by_me,
	   h.superseded_at >= h.recorded_at AS later
FROM shipsync.fee_line_history h JOIN shipsync.fee_line f USING (fee_line_id)
ORDER BY f.tracking_number, f.fee_type, h.revision;
-- what a revision leaves out is kept
SELECT settlement, payer, billed_weight_kg, occurred_at FROM shipsync.fee_line
WHERE tracking_number = 'T1' AND fee_type = 'freight' AND NOT quote;
-- the order rows carry the bill once there is one (the quote before):
-- order 1 billed 12.50 + 1.20 after the revision, order 2 12.50 + 1.20,
-- order 3 not billed yet
SELECT id, fee FROM orders WHERE id IN (1, 2, 3) ORDER BY id;
-- lines with the carrier's keys, and two of a type without one
SELECT pg_temp.push('[{"tracking_number": "T3", "type": "surcharge", "amount": "2", "currency": "CNY", "key": "remote"},
	{"tracking_number": "T3", "type": "surcharge", "amount": "3", "currency": "CNY", "key": "oversize"},
	{"tracking_number": "T3", "type": "remote_area", "amount": "1.50", "currency": "CNY"},
	{"tracking_number": "T3", "type": "oversize", "amount": "2.50", "currency": "CNY"},
	{"tracking_number": "T3", "type": "fuel", "amount": "0.40", "currency": "CNY"},
	{"tracking_number": "T3", "type": "fuel", "amount": "0.60", "currency": "CNY"},
	{"tracking_number": "T3", "type": "freight", "amount": "12.50", "currency": "CNY"},
	{"tracking_number": "T3", "type": "carbon", "amount": "0.10", "currency": "CNY"}]');
SELECT * FROM pg_temp.lines('T3') WHERE NOT quote;
-- unknown tracking numbers are parked, and matched when the shipment appears
SELECT pg_temp.push('[{"tracking_number": "T10", "type": "freight", "amount": "20", "currency": "CNY"},
	{"tracking_number": "GHOST-1", "type": "freight", "amount": "8.80", "currency": "CNY"}]');
SELECT tracking_number, order_key, amount FROM shipsync.fee_line WHERE binding_id IS NULL ORDER BY 1;
INSERT INTO orders (id, waybill) VALUES (10, 'T10');
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, provider_shipment_id, created_at)
VALUES (1, '10', 1, 'T10', 'shp_10', '2026-04-03 09:00+00');
SELECT kind, n, order_key, fee_total FROM shipsync._record_quotes(ARRAY[1], ARRAY['10'], ARRAY[1], ARRAY['T10'], ARRAY[NULL::text])
WHERE n <> 0 OR kind = 'writeback';
SELECT tracking_number, order_key, amount FROM shipsync.fee_line WHERE tracking_number IN ('T10', 'GHOST-1') ORDER BY 1;

------------------------------------------------------------------------------
-- The fee_total rule: refunds, and a mixed-currency order
------------------------------------------------------------------------------
SELECT pg_temp.push('[{"tracking_number": "T4", "type": "freight", "amount": "12.50", "currency": "CNY"},
	{"tracking_number": "T4", "type": "insurance", "amount": "1.20", "currency": "CNY"},
	{"tracking_number": "T4", "type": "refund", "amount": "-2.00", "currency": "CNY", "state": "refunded"}]');
SELECT id, fee FROM orders WHERE id = 4;
SELECT pg_temp.push('[{"tracking_number": "T5", "type": "freight", "amount": "12.50", "currency": "CNY"},
	{"tracking_number": "T5", "type": "tax", "amount": "1.80", "currency": "USD"}]');
SELECT id, fee FROM orders WHERE id = 5;
SELECT kind, order_key, detail, resolved_at IS NULL AS open FROM shipsync.exception_ticket
WHERE kind = 'fee_currency_mixed';
-- the carrier corrects the tax into CNY: one currency again, total written, ticket resolved
SELECT pg_temp.push('[{"tracking_number": "T5", "type": "tax", "amount": "13.00", "currency": "CNY"}]');
SELECT id, fee FROM orders WHERE id = 5;
SELECT kind, order_key, resolved_at IS NULL AS open, resolution FROM shipsync.exception_ticket
WHERE kind = 'fee_currency_mixed';

------------------------------------------------------------------------------
-- SF Express: fee pushes only with accept_unsigned_pushes, read by field map
------------------------------------------------------------------------------
\set sf_push '{"waybillInfo": {"waybillNo": "SF1001", "meterageWeightQty": 2.5, "realWeightQty": 2.1}, "waybillFeeList": [{"feeName": "运费", "feeAmt": 23.00, "settlementTypeCode": "2"}, {"feeName": "保价费", "feeAmt": "2.00", "settlementTypeCode": "2"}, {"feeName": "燃油附加费", "feeAmt": 1.15, "settlementTypeCode": "1"}, {"feeName": "包装费", "feeAmt": 3, "settlementTypeCode": "2"}]}'
SELECT pg_temp.err(format('SELECT shipsync.ingest_fees(%L, %L)', 'sf', :'sf_push'));
SELECT shipsync.ingest_fees('sf_open', :'sf_push');
SELECT tracking_number, fee_type, raw_type, amount, currency, settlement, billed_weight_kg, state
FROM shipsync.fee_line WHERE tracking_number = 'SF1001' ORDER BY fee_type;
SELECT pg_temp.err(format('SELECT shipsync.ingest_fees(%L, %L)', 'sf_open',
	replace(:'sf_push', '"settlementTypeCode": "1"', '"settlementTypeCode": "9"')));

------------------------------------------------------------------------------
-- EasyPost: the fees of a tracker.updated Event, X-Hmac-Signature
------------------------------------------------------------------------------
\set ep_body '{"id":"evt_1","object":"Event","description":"tracker.updated","result":{"id":"trk_1","object":"Tracker","tracking_code":"EZ1000000001","status":"in_transit","fees":[{"object":"Fee","type":"TrackerFee","amount":"0.02000","charged":true,"refunded":false}]}}'
SELECT shipsync.ingest_fees('ep', :'ep_body', jsonb_build_object('X-Hmac-Signature', 'hmac-sha256-hex='
	|| encode(shipsync._hmac_sha256(convert_to(normalize('sécret', NFKD), 'UTF8'), convert_to(:'ep_body', 'UTF8')), 'hex')));
SELECT tracking_number, fee_type, raw_type, amount, currency, state FROM shipsync.fee_line WHERE tracking_number = 'EZ1000000001';
SELECT pg_temp.err(format('SELECT shipsync.ingest_fees(%L, %L, %L)', 'ep', :'ep_body',
	'{"X-Hmac-Signature": "hmac-sha256-hex=00"}'));

------------------------------------------------------------------------------
-- Statements: CSV with Chinese headers (the sf_express profile's columns),
-- BOM, CRLF, quoted fields
------------------------------------------------------------------------------
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
VALUES (1, '8', 3, 'SF2001', '2026-03-20 10:00+00'), (1, '9', 3, 'SF2002', '2026-03-21 10:00+00');
-- (the body starts with a byte order mark, as Excel writes it)
CREATE TABLE st (n int PRIMARY KEY, body text);
INSERT INTO st VALUES (1, E'\uFEFF运单号,费用类型,金额,币种,结算方式,付款方式,计费重量,寄件时间\r\n'
	'SF2001,运费,23.00,CNY,月结,寄付,2.5,2026-03-20 10:00:00\r\n'
	'SF2001,保价费,"2.00",CNY,月结,寄付,2.5,2026-03-20 10:00:00\r\n'
	'"SF2002","运费",18,CNY,现结,到付,1.0,2026-03-21 11:30:00\r\n'
	'SF9999,运费,15.00,CNY,月结,寄付,1.2,2026-03-22 09:00:00\r\n');
SELECT shipsync.import_statement('sf_open', body) FROM st WHERE n = 1;
SELECT tracking_number, fee_type, raw_type, amount, settlement, payer, billed_weight_kg, occurred_at,
	   order_key, source, statement_id IS NOT NULL AS from_statement
FROM shipsync.fee_line WHERE tracking_number LIKE 'SF2%' OR tracking_number = 'SF9999' ORDER BY 1, 2;
SELECT to_char(period, 'YYYY-MM') AS period, format, lines, totals, errors,
	   imported_by = session_user AS by_me, length(digest)
FROM shipsync.statement;
-- the same body again: a no-op answering with the statement it already is
SELECT shipsync.import_statement('sf_open', body) FROM st WHERE n = 1;
SELECT count(*) AS statements FROM shipsync.statement;

-- a bad line: its number (the header is line 1) and column, and nothing stored
INSERT INTO st VALUES (2, E'运单号,费用类型,金额,币种\nSF2003,运费,9.00,CNY\nSF2004,运费,"1,234.50",CNY\nSF2005,运费,7.00,CNY\n');
SELECT pg_temp.err($$SELECT shipsync.import_statement('sf_open', body, options => '{"period": "2026-03"}') FROM st WHERE n = 2$$);
SELECT count(*) AS lines_of_that_statement FROM shipsync.fee_line WHERE tracking_number IN ('SF2003', 'SF2005');
-- on_error = skip: the bad line kept in errors, the rest stored
SELECT shipsync.import_statement('sf_open', body, options => '{"period": "2026-02", "on_error": "skip"}') FROM st WHERE n = 2;
SELECT to_char(period, 'YYYY-MM') AS period, lines, totals, errors FROM shipsync.statement WHERE period = '2026-02-01';
-- other bad lines and statements
SELECT pg_temp.err($$SELECT shipsync.import_statement('sf_open', E'运单号,费用类型,金额,币种\nSF2003,运费,9.00\n', options => '{"period": "2026-03"}')$$);
SELECT pg_temp.err($$SELECT shipsync.import_statement('sf_open', E'运单号,费用类型,金额,币种\nSF2003,运费,9.00,CNY\nSF2004,"运费,9.00,CNY\n', options => '{"period": "2026-03"}')$$);
SELECT pg_temp.err($$SELECT shipsync.import_statement('sf_open', E'运单号,费用类型,币种\nSF2003,运费,CNY\n', options => '{"period": "2026-03"}')$$);
SELECT pg_temp.err($$SELECT shipsync.import_statement('sf_open', E'运单号,费用类型,金额,币种\nSF2003,运费,9.00,HKX\n', options => '{"period": "2026-03"}')$$);
-- an amount its currency cannot have: an error naming the line (with
-- on_error = skip, a line of the statement's errors: at the end)
SELECT pg_temp.err($$SELECT shipsync.import_statement('sf_open', E'运单号,费用类型,金额,币种\nSF2003,运费,9.00,CNY\nSF2004,运费,1500.5,JPY\n', options => '{"period": "2026-03"}')$$);
SELECT pg_temp.err($$SELECT shipsync.import_statement('sf_open', E'运单号,费用类型,金额,币种,寄件时间\nSF2003,运费,9.00,CNY,2026-03-31 23:00:00\nSF2004,运费,9.00,CNY,2026-04-01 09:00:00\n')$$);
SELECT pg_temp.err($$SELECT shipsync.import_statement('sf_open', '')$$);
SELECT pg_temp.err($$SELECT shipsync.import_statement('sf_open', 'a,b', 'xml')$$);
SELECT pg_temp.err($$SELECT shipsync.import_statement('sf_open', 'a,b', options => '{"sep": ";"}')$$);
SELECT pg_temp.err($$SELECT shipsync.import_statement('sf_open', 'a,b', options => '{"period": "March"}')$$);
SELECT pg_temp.err($$SELECT shipsync.import_statement('sf_open', 'a,b', options => '{"columns": {"cost": "a"}}')$$);

-- options.columns, another delimiter, a time zone from the provider
SELECT shipsync.import_statement('gen', E'Waybill;Fee;Cost (CNY);Cur;Key\nT6;freight;12.50;CNY;L-6-1\nT6;insurance;1.20;CNY;L-6-2\n',
	options => '{"delimiter": ";", "period": "2026-03", "columns": {"tracking_number": "Waybill", "type": "Fee", "amount": "Cost (CNY)", "currency": "Cur", "key": "Key"}}');
SELECT tracking_number, fee_type, fee_key, amount FROM shipsync.fee_line WHERE tracking_number = 'T6' AND NOT quote ORDER BY 2;

-- a corrected statement of the same month supersedes the first line by line:
-- SF2001's freight revised, its insurance billed no more (withdrawn), the rest unchanged
INSERT INTO st VALUES (3, E'运单号,费用类型,金额,币种,寄件时间\n'
	'SF2001,运费,21.00,CNY,2026-03-20 10:00:00\n'
	'SF2002,运费,18,CNY,2026-03-21 11:30:00\n'
	'SF9999,运费,15.00,CNY,2026-03-22 09:00:00\n');
SELECT shipsync.import_statement('sf_open', body) FROM st WHERE n = 3;
SELECT statement_id, to_char(period, 'YYYY-MM') AS period, lines, totals, supersedes, superseded_by
FROM shipsync.statement WHERE provider_id = 3 AND period = '2026-03-01' ORDER BY 1;
-- another account's statement of the same month supersedes nothing
SELECT shipsync.import_statement('sf_open', E'运单号,费用类型,金额,币种\nSF2002,保价费,1.00,CNY\n',
	options => '{"period": "2026-03", "account": "7550000002"}') ->> 'supersedes' AS supersedes;
SELECT tracking_number, fee_type, amount, state, revision FROM shipsync.fee_line
WHERE tracking_number IN ('SF2001', 'SF2002') ORDER BY 1, 2;
SELECT f.tracking_number, f.fee_type, h.revision, h.amount, h.state, h.superseded_source
FROM shipsync.fee_line_history h JOIN shipsync.fee_line f USING (fee_line_id)
WHERE f.tracking_number = 'SF2001' ORDER BY 2, 3;

-- a JSON statement: an array of fee objects as in a push
SELECT shipsync.import_statement('gen', '[{"tracking_number": "T7", "type": "LabelFee", "amount": "3.00000", "currency": "USD", "occurred_at": "2026-04-03T00:00:00Z"},
	{"tracking_number": "T7", "type": "PostageFee", "amount": "5.90000", "currency": "USD", "occurred_at": "2026-04-03T00:00:00Z"}]', 'json');
SELECT pg_temp.err($$SELECT shipsync.import_statement('gen', '[{"tracking_number": "T7", "type": "x", "amount": "3", "currency": "USD"}, {"tracking_number": "T7", "type": "y", "amount": "3 USD", "currency": "USD"}]', 'json', '{"period": "2026-04"}')$$);

------------------------------------------------------------------------------
-- field_map rows of directions fee and statement are checked
------------------------------------------------------------------------------
SELECT pg_temp.err($$INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('t', 'fee', 'cost', 'x')$$);
SELECT pg_temp.err($$INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('t', 'statement', 'amount', '')$$);
SELECT pg_temp.err($$INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('t', 'fee', 'amount', 'option:x')$$);
SELECT pg_temp.err($$INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('t', 'statement', 'fees', 'x')$$);
INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('t', 'statement', 'amount', 'Amount (CNY), incl. tax');
SELECT profile, direction, target_path, source, seeded FROM shipsync.field_map WHERE profile = 't';

------------------------------------------------------------------------------
-- The views, on these hand-made lines
------------------------------------------------------------------------------
-- deliveries: order 7 long ago and billed (the JSON statement), order 8
-- long ago and never billed, order 9 yesterday (not due yet)
INSERT INTO shipsync.tracking_event (provider_id, event_key, tracking_number, binding_id, order_key, occurred_at, status)
VALUES (1, 'd-7', 'T7', 1, '7', '2020-01-05 10:00+00', 'delivered'),
	   (1, 'd-8', 'T8', 1, '8', '2020-01-06 10:00+00', 'delivered'),
	   (1, 'd-9', 'T9', 1, '9', now() - interval '1 day', 'delivered');
-- a waybill charged twice for one fee type
SELECT pg_temp.push('[{"tracking_number": "T2", "type": "freight", "amount": "12.50", "currency": "CNY", "key": "again"}]');

SELECT order_key, currency, estimated, charged, refunded, net, lines FROM shipsync.order_fees
ORDER BY order_key::int, currency;
SELECT provider, to_char(month, 'YYYY-MM') AS month, currency, shipments, estimated, charged,
	   refunded, net, difference, unbilled, unknown_waybills
FROM shipsync.settlement WHERE month < '2026-12-01' ORDER BY provider, month, currency NULLS FIRST;
-- (lines without a time count in the month they were recorded)
SELECT provider, currency, charged, unknown_waybills FROM shipsync.settlement
WHERE month = date_trunc('month', now())::date ORDER BY 1, 2;
SELECT kind, provider, order_key, tracking_number, fee_type, currency, estimated, billed, difference, detail
FROM shipsync.fee_difference ORDER BY kind, provider, tracking_number, fee_type;
-- the tolerance: 0.50 so far, so T1's bill, equal to its quote, is none;
-- a percentage widens it to 60% of each quote (8.22)
UPDATE shipsync.provider SET options = options || '{"fee_tolerance": {"abs": "0.01", "pct": 60}}' WHERE name = 'gen';
SELECT kind, tracking_number FROM shipsync.fee_difference WHERE kind = 'amount_mismatch' ORDER BY 2;
UPDATE shipsync.provider SET options = options || '{"unbilled_after": "10000 days"}' WHERE name = 'gen';
SELECT count(*) AS unbilled FROM shipsync.fee_difference WHERE kind = 'unbilled';

------------------------------------------------------------------------------
-- trace(): fee lines and their revisions, in time order
------------------------------------------------------------------------------
SELECT kind, detail->>'fee_type' AS fee_type, detail->>'amount' AS amount, detail->>'state' AS state,
	   detail->>'source' AS source, detail->>'revision' AS revision, detail->>'current' AS current
FROM shipsync.trace('orders', '1') WHERE kind = 'fee'
ORDER BY detail->>'fee_type', (detail->>'revision')::int, detail->>'source';

-- readers see the views
SET ROLE shipsync_reader;
SELECT count(*) > 0 AS reads_order_fees FROM shipsync.order_fees;
SELECT count(*) > 0 AS reads_settlement FROM shipsync.settlement;
SELECT count(*) > 0 AS reads_fee_difference FROM shipsync.fee_difference;
SELECT pg_temp.err($$SELECT shipsync.ingest_fees('gen', '{}')$$);
RESET ROLE;

-- the receiver's role (shipsync_ingest) may push fees, and do nothing else
SELECT b, pg_temp.sw_headers('msg_ingest', b) AS h
FROM (SELECT '{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "12.00", "currency": "CNY", "key": "ingest"}]}' AS b) x \gset
SET ROLE shipsync_ingest;
SELECT shipsync.ingest_fees('gen', :'b', :'h') - 'provider' AS pushed;
SELECT pg_temp.err($$SELECT count(*) FROM shipsync.fee_line$$);
SELECT pg_temp.err($$SELECT count(*) FROM shipsync.settlement$$);
SELECT pg_temp.err($$SELECT shipsync.import_statement('gen', 'tracking_number,type,amount,currency')$$);
RESET ROLE;

-- an admin maps a carrier's code and adds a currency; both are audited
SET ROLE shipsync_admin;
INSERT INTO shipsync.fee_type_map (profile, code, fee_type) VALUES ('generic', 'FUEL_SURCHARGE', 'fuel');
INSERT INTO shipsync.currency (code, name) VALUES ('ZZZ', 'A private unit of account');
UPDATE shipsync.fee_type_map SET fee_type = 'surcharge' WHERE profile = 'generic' AND code = 'FUEL_SURCHARGE';
SELECT pg_temp.err($$INSERT INTO shipsync.fee_line (provider_id) VALUES (1)$$);
RESET ROLE;
SELECT action, object_kind, object_name, old_value, new_value
FROM shipsync.audit_log WHERE object_kind IN ('fee_type_map', 'currency') ORDER BY audit_id;

-- every fee_sum row has a fee line of its order, after pushes, parked
-- lines matched, revisions and statements: the apply's first quotes look
-- for an order's lines, not its sums (src/apply.c)
SELECT count(*) > 0 AS some_sums,
	   count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM shipsync.fee_line l
			WHERE l.binding_id = s.binding_id AND l.order_key = s.order_key)) AS without_a_line
FROM shipsync.fee_sum s;

-- the fee locks: up to 1,000 tracking numbers, one lock each under a
-- shared lock of their provider; more than 1,000 different ones, the
-- provider whole; many entries of few tracking numbers are few
CREATE FUNCTION pg_temp.fee_locks() RETURNS TABLE (mode text, provider boolean, locks text)
LANGUAGE sql AS $$
	SELECT l.mode, l.classid = 1717920626,
		   CASE WHEN count(*) > 900 THEN 'over 900' ELSE count(*)::text END
	FROM pg_locks l WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid()
	GROUP BY 1, 2 ORDER BY 1, 2 $$;
BEGIN;
SELECT shipsync._lock_fees('{424242}', ARRAY(SELECT 'LK' || g FROM generate_series(1, 1000) g), false);
SELECT * FROM pg_temp.fee_locks();
ROLLBACK;
BEGIN;
SELECT shipsync._lock_fees('{424242}', ARRAY(SELECT 'LK' || g FROM generate_series(1, 1001) g), false);
SELECT * FROM pg_temp.fee_locks();
ROLLBACK;
BEGIN;
SELECT shipsync._lock_fees('{424242}', array_fill('LK1'::text, ARRAY[1001]), false);
SELECT * FROM pg_temp.fee_locks();
ROLLBACK;
-- NULLs take no lock, and each key is taken once; whole takes the providers
BEGIN;
SELECT shipsync._lock_fees('{424242,NULL,424242,7}', ARRAY['LK1', NULL, 'LK2', 'LK1'], NULL);
SELECT * FROM pg_temp.fee_locks();
ROLLBACK;
BEGIN;
SELECT shipsync._lock_fees('{7,424242}', ARRAY['LK1'], true);
SELECT * FROM pg_temp.fee_locks();
ROLLBACK;
BEGIN;
SELECT shipsync._lock_fees(NULL, NULL, NULL);
SELECT * FROM pg_temp.fee_locks();
ROLLBACK;

------------------------------------------------------------------------------
-- Statements superseding statements: the newest statement of a period is
-- the carrier's word, line by line, whatever the earlier ones said
------------------------------------------------------------------------------
SELECT shipsync.create_provider('gen2', 'generic', 'https://carrier2.example', '{"currency": "CNY"}') > 0 AS created;
CREATE TABLE orders2 (id int PRIMARY KEY, waybill text, fee numeric(10,2));
SELECT shipsync.attach('orders2', 'gen2', writeback => '{"tracking_number": "waybill", "fee_total": "fee"}') > 0 AS attached;
SELECT shipsync.pause('gen2');
INSERT INTO orders2 (id, waybill) SELECT g, 'W' || g FROM generate_series(1, 9) g;
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, g::text, b.provider_id, 'W' || g, timestamptz '2026-05-10 12:00+00'
FROM shipsync.binding b, generate_series(1, 9) g WHERE b.tbl = 'orders2'::regclass;
-- a statement of gen2 for a month (lines after the header), its answer's counts
CREATE FUNCTION pg_temp.bill(period text, lines text, opts jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE sql AS $$
	SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount\n' || lines,
		options => opts || jsonb_build_object('period', period))
		- '{provider,statement_id,supersedes,period,orders_changed,matched,unmatched}'::text[]
$$;
-- gen2's bill lines: what each says, and whether the newest statement of
-- its period holds it
CREATE FUNCTION pg_temp.billed(VARIADIC tns text[])
RETURNS TABLE (tracking_number text, amount numeric, state text, revision int, newest boolean)
LANGUAGE sql AS $$
	SELECT l.tracking_number, l.amount, l.state, l.revision, s.superseded_by IS NULL
	FROM shipsync.fee_line l LEFT JOIN shipsync.statement s USING (statement_id)
	WHERE l.tracking_number = ANY (tns) AND NOT l.quote ORDER BY 1 $$;

-- a line withdrawn and then billed again comes back, though it says what
-- an earlier version said
SELECT pg_temp.bill('2026-05', E'W1,freight,12.50\nW2,freight,12.50\n');
SELECT pg_temp.bill('2026-05', E'W1,freight,12.50\n');
SELECT * FROM pg_temp.billed('W1', 'W2');
SELECT pg_temp.bill('2026-05', E'W2,freight,12.50\nW1,freight,12.50\n');
SELECT * FROM pg_temp.billed('W1', 'W2');
SELECT id, fee FROM orders2 WHERE id IN (1, 2) ORDER BY id;

-- the same bill again in other bytes (CRLF) bills its lines unchanged, and
-- holds them: a correction that drops one then withdraws it, and the
-- newest statement adds up to its lines
SELECT pg_temp.bill('2026-06', E'W3,freight,5.00\nW4,freight,6.00\n');
SELECT pg_temp.bill('2026-06', E'W3,freight,5.00\r\nW4,freight,6.00\r\n');
SELECT * FROM pg_temp.billed('W3', 'W4');
SELECT pg_temp.bill('2026-06', E'W3,freight,5.00\n');
SELECT * FROM pg_temp.billed('W3', 'W4');
SELECT s.totals->>'CNY' AS statement_says,
	   (SELECT sum(amount) FROM shipsync.fee_line l WHERE l.statement_id = s.statement_id) AS lines_from_it
FROM shipsync.statement s JOIN shipsync.provider p USING (provider_id)
WHERE p.name = 'gen2' AND s.period = '2026-06-01' AND s.superseded_by IS NULL;
SELECT id, fee FROM orders2 WHERE id IN (3, 4) ORDER BY id;

-- a skipped line keeps what its waybill was billed; a correction without
-- the waybill withdraws it, though the statement that billed it was not
-- the one corrected; a skipped line whose waybill cannot be read keeps
-- every line
SELECT pg_temp.bill('2026-07', E'W5,freight,1234.50\nW6,freight,5.00\n');
SELECT pg_temp.bill('2026-07', E'W5,freight,"1,234.50"\nW6,freight,5.00\n', '{"on_error": "skip"}');
SELECT * FROM pg_temp.billed('W5', 'W6');
SELECT pg_temp.bill('2026-07', E'W6,freight,5.00\n');
SELECT * FROM pg_temp.billed('W5', 'W6');
SELECT pg_temp.bill('2026-07', E'W6,freight,5.00\nW5,freight,1234.50\n');
SELECT pg_temp.bill('2026-07', E'W6,freight,5.00\nW5;freight;1234.50\n', '{"on_error": "skip"}');
SELECT * FROM pg_temp.billed('W5', 'W6');
SELECT id, fee FROM orders2 WHERE id IN (5, 6) ORDER BY id;

-- an unknown waybill a correction no longer bills is no difference, and
-- counts in no settlement
SELECT pg_temp.bill('2026-08', E'NOSUCH1,freight,9.00\nW7,freight,3.00\n');
SELECT kind, tracking_number, billed FROM shipsync.fee_difference WHERE provider = 'gen2' AND kind = 'unknown_waybill';
SELECT pg_temp.bill('2026-08', E'W7,freight,3.00\n');
SELECT kind, tracking_number, billed FROM shipsync.fee_difference WHERE provider = 'gen2' AND kind = 'unknown_waybill';
SELECT to_char(month, 'YYYY-MM') AS month, currency, charged, unknown_waybills FROM shipsync.settlement
WHERE provider = 'gen2' AND month = '2026-08-01';

-- spreadsheet leftovers: rows of empty fields are no lines, and a padded
-- waybill is the waybill
SELECT pg_temp.bill('2026-09', E'" W8 ",freight,7.00\n,,\r\n,,\r\n');
SELECT * FROM pg_temp.billed('W8');
SELECT id, fee FROM orders2 WHERE id = 8;

-- a bill in another currency than the quote is no fee total: the order
-- keeps its total and gets a ticket
SELECT count(*) AS quote_rows FROM shipsync._store_fees('create', NULL, NULL, 'dispatcher',
	ARRAY[(SELECT provider_id FROM shipsync.provider WHERE name = 'gen2')],
	ARRAY[(SELECT binding_id FROM shipsync.binding WHERE tbl = 'orders2'::regclass)],
	ARRAY['9'], ARRAY['W9'], ARRAY['freight'], ARRAY[13.70], ARRAY['CNY'], ARRAY[NULL::text],
	ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[NULL::numeric], ARRAY[NULL::text],
	ARRAY[NULL::timestamptz]);
SELECT o.fee, s.fee_total FROM orders2 o JOIN shipsync.shipment s ON s.tracking_number = o.waybill WHERE o.id = 9;
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount,currency\nW9,freight,500.00,USD\n',
	options => '{"period": "2026-10"}') ->> 'new' AS new;
SELECT o.fee, s.fee_total FROM orders2 o JOIN shipsync.shipment s ON s.tracking_number = o.waybill WHERE o.id = 9;
SELECT kind, order_key, detail, resolved_at IS NULL AS open FROM shipsync.exception_ticket
WHERE kind = 'fee_currency_mixed' AND order_key = '9'
  AND binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'orders2'::regclass);

-- fee_total goes into a numeric column or, as written, a text one; an
-- integer column would round it, and is refused
CREATE TABLE orders3 (id int PRIMARY KEY, waybill text, fee integer, fee_text text);
SELECT pg_temp.err($$SELECT shipsync.attach('orders3', 'gen2', writeback => '{"fee_total": "fee"}')$$);
SELECT shipsync.attach('orders3', 'gen2', writeback => '{"tracking_number": "waybill", "fee_total": "fee_text"}') > 0 AS attached;
INSERT INTO orders3 (id) VALUES (1);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, '1', b.provider_id, 'X31', timestamptz '2026-05-10 12:00+00'
FROM shipsync.binding b WHERE b.tbl = 'orders3'::regclass;
SELECT pg_temp.bill('2026-11', E'X31,freight,13.70\n') ->> 'new' AS new;
SELECT id, fee_text FROM orders3;
-- so would a numeric column of fewer than two decimals, declared or
-- through a domain (13.70 was written as 14), and is refused too; a
-- numeric of two decimals is taken
CREATE DOMAIN whole_amount AS numeric(8,0);
CREATE TABLE orders4 (id int PRIMARY KEY, waybill text, fee numeric(8,0), fee_dime numeric(8,1),
	fee_dom whole_amount, fee_cents numeric(10,2));
SELECT pg_temp.err($$SELECT shipsync.attach('orders4', 'gen2', writeback => '{"tracking_number": "waybill", "fee_total": "fee"}')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders4', 'gen2', writeback => '{"fee_total": "fee_dime"}')$$);
SELECT pg_temp.err($$SELECT shipsync.attach('orders4', 'gen2', writeback => '{"fee_total": "fee_dom"}')$$);
SELECT shipsync.attach('orders4', 'gen2', writeback => '{"tracking_number": "waybill", "fee_total": "fee_cents"}') > 0 AS attached;
INSERT INTO orders4 (id) VALUES (1);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, '1', b.provider_id, 'X41', timestamptz '2026-05-10 12:00+00'
FROM shipsync.binding b WHERE b.tbl = 'orders4'::regclass;
SELECT pg_temp.bill('2027-01', E'X41,freight,13.70\n') ->> 'new' AS new;
SELECT id, fee, fee_cents FROM orders4;

-- an order shipped again under its key: its shipment row holds the new
-- waybill, and the old waybill's quote is no longer its quote
CREATE FUNCTION pg_temp.quote(k text, tn text, amount numeric) RETURNS bigint LANGUAGE sql AS $$
	SELECT count(*) FROM shipsync._store_fees('create', NULL, NULL, 'dispatcher',
		ARRAY[(SELECT provider_id FROM shipsync.provider WHERE name = 'gen2')],
		ARRAY[(SELECT binding_id FROM shipsync.binding WHERE tbl = 'orders2'::regclass)],
		ARRAY[k], ARRAY[tn], ARRAY['freight'], ARRAY[amount], ARRAY['CNY'], ARRAY[NULL::text],
		ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[NULL::numeric], ARRAY[NULL::text],
		ARRAY[NULL::timestamptz]) $$;
INSERT INTO orders2 (id) VALUES (10);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, '10', b.provider_id, 'W10A', timestamptz '2026-05-10 12:00+00'
FROM shipsync.binding b WHERE b.tbl = 'orders2'::regclass;
SELECT pg_temp.quote('10', 'W10A', 13.70) > 0 AS quoted;
UPDATE shipsync.shipment SET tracking_number = 'W10B' WHERE tracking_number = 'W10A';
SELECT pg_temp.quote('10', 'W10B', 13.70) > 0 AS quoted_again;
SELECT s.fee_total, f.estimated, f.quote_lines FROM shipsync.shipment s
JOIN shipsync.fee_sum f USING (binding_id, order_key, provider_id) WHERE s.tracking_number = 'W10B';

-- an order whose row refuses its fee total keeps its row and gets a
-- ticket; the statement's lines and the other orders' totals stay
ALTER TABLE orders2 ADD CONSTRAINT fee_small CHECK (fee < 100) NOT VALID;
SELECT pg_temp.bill('2026-12', E'W3,freight,500.00\nW8,freight,8.00\n') - 'totals' AS answer;
SELECT id, fee FROM orders2 WHERE id IN (3, 8) ORDER BY id;
SELECT tracking_number, amount FROM shipsync.fee_line WHERE tracking_number IN ('W3', 'W8') AND NOT quote ORDER BY 1;
SELECT kind, order_key, provider_id IS NULL AS no_provider, detail, resolved_at IS NULL AS open
FROM shipsync.exception_ticket
WHERE kind = 'writeback_failed' AND binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'orders2'::regclass);

-- a waybill number the carrier gives again a year later (recycled): the
-- new parcel's quote and bill are the new order's, and the old order keeps
-- what its own statement billed
CREATE TABLE orders5 (id int PRIMARY KEY, waybill text, fee numeric(10,2));
SELECT shipsync.attach('orders5', 'gen2', writeback => '{"tracking_number": "waybill", "fee_total": "fee"}') > 0 AS attached;
INSERT INTO orders5 (id) VALUES (1), (2);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, '1', b.provider_id, 'R1', timestamptz '2025-03-10 12:00+00'
FROM shipsync.binding b WHERE b.tbl = 'orders5'::regclass;
SELECT pg_temp.bill('2025-03', E'R1,freight,10.00\n') ->> 'new' AS new;
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, '2', b.provider_id, 'R1', timestamptz '2026-03-10 12:00+00'
FROM shipsync.binding b WHERE b.tbl = 'orders5'::regclass;
SELECT count(*) > 0 AS quoted FROM shipsync._store_fees('create', NULL, NULL, 'dispatcher',
	ARRAY[(SELECT provider_id FROM shipsync.provider WHERE name = 'gen2')],
	ARRAY[(SELECT binding_id FROM shipsync.binding WHERE tbl = 'orders5'::regclass)],
	ARRAY['2'], ARRAY['R1'], ARRAY['freight'], ARRAY[11.00], ARRAY['CNY'], ARRAY[NULL::text],
	ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[NULL::numeric], ARRAY[NULL::text],
	ARRAY[NULL::timestamptz]);
SELECT pg_temp.bill('2026-03', E'R1,freight,12.00\n') - 'totals' AS answer;
SELECT id, fee FROM orders5 ORDER BY id;
SELECT order_key, quote, amount, revision FROM shipsync.fee_line WHERE tracking_number = 'R1'
ORDER BY order_key, quote;
SELECT to_char(s.period, 'YYYY-MM') AS period, s.totals->>'CNY' AS statement_says,
	   (SELECT sum(amount) FROM shipsync.fee_line l WHERE l.statement_id = s.statement_id) AS lines_from_it
FROM shipsync.statement s JOIN shipsync.provider p USING (provider_id)
WHERE p.name = 'gen2' AND s.period IN ('2025-03-01', '2026-03-01') ORDER BY 1;
SELECT to_char(month, 'YYYY-MM') AS month, currency, shipments, estimated, charged, unbilled
FROM shipsync.settlement WHERE provider = 'gen2' AND month IN ('2025-03-01', '2026-03-01') ORDER BY 1;
SELECT kind, order_key, estimated, billed FROM shipsync.fee_difference WHERE tracking_number = 'R1' ORDER BY 1, 2;

-- a bill line a correction withdrew is billed no more: its order is
-- unbilled again, its fee_total the quote's, and no bill differs from it
INSERT INTO orders5 (id) VALUES (3), (4);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, g::text, b.provider_id, 'R' || g, timestamptz '2026-04-10 12:00+00'
FROM shipsync.binding b, generate_series(3, 4) g WHERE b.tbl = 'orders5'::regclass;
SELECT count(*) > 0 AS quoted FROM shipsync._store_fees('create', NULL, NULL, 'dispatcher',
	ARRAY[(SELECT provider_id FROM shipsync.provider WHERE name = 'gen2')],
	ARRAY[(SELECT binding_id FROM shipsync.binding WHERE tbl = 'orders5'::regclass)],
	ARRAY['3'], ARRAY['R3'], ARRAY['freight'], ARRAY[13.70], ARRAY['CNY'], ARRAY[NULL::text],
	ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[NULL::numeric], ARRAY[NULL::text],
	ARRAY[NULL::timestamptz]);
SELECT pg_temp.bill('2026-04', E'R3,freight,15.00\nR4,freight,5.00\n') - 'totals' AS answer;
SELECT pg_temp.bill('2026-04', E'R4,freight,5.00\n') - 'totals' AS answer;
SELECT id, fee FROM orders5 WHERE id IN (3, 4) ORDER BY id;
SELECT order_key, currency, estimated, charged, refunded, net FROM shipsync.order_fees
WHERE tbl = 'orders5'::regclass AND order_key IN ('3', '4') ORDER BY 1;
SELECT kind, order_key, estimated, billed FROM shipsync.fee_difference WHERE tracking_number IN ('R3', 'R4');
SELECT to_char(month, 'YYYY-MM') AS month, currency, shipments, estimated, charged, unbilled
FROM shipsync.settlement WHERE provider = 'gen2' AND month = '2026-04-01' ORDER BY 2;

-- an amount with more decimals than a numeric(p,2) column holds (a
-- dinar's fils) is never written rounded: the order keeps its column and
-- gets a ticket; what is written is what is summed
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount,currency\nX41,freight,13.705,KWD\n',
	options => '{"period": "2027-02"}') ->> 'revised' AS revised;
SELECT o.id, o.fee_cents, s.fee_total FROM orders4 o
JOIN shipsync.shipment s ON s.tracking_number = 'X41' ORDER BY o.id;
SELECT kind, order_key, detail, resolved_at IS NULL AS open FROM shipsync.exception_ticket
WHERE kind = 'writeback_failed' AND binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'orders4'::regclass);
-- trailing zeros fit: 13.71000 is written as 13.71
SELECT pg_temp.bill('2027-02', E'X41,freight,13.71000\n') ->> 'revised' AS revised;
SELECT id, fee_cents FROM orders4 ORDER BY id;

-- a month's statement whose every total the orders' rows do not take (a
-- fils more than the column holds, then a check of the CRM's): one ticket
-- per order, and not one lock per ticket.  The ledger's fold took one for
-- each, to the end of the statement's transaction: with some tens of
-- thousands the import failed, "out of shared memory"
SELECT shipsync.create_provider('gen6', 'generic', 'https://carrier6.example', '{"currency": "KWD"}') > 0 AS created;
SELECT shipsync.pause('gen6');
CREATE FUNCTION pg_temp.bill6(amount text) RETURNS jsonb LANGUAGE sql AS $$
	SELECT shipsync.import_statement('gen6', E'tracking_number,type,amount\n'
		|| (SELECT string_agg('Y' || g || ',freight,' || amount, E'\n') FROM generate_series(1, 1200) g),
		options => '{"period": "2027-04"}') $$;
CREATE TABLE orders6 (id int PRIMARY KEY, fee numeric(10,2));
SELECT shipsync.attach('orders6', 'gen6', writeback => '{"fee_total": "fee"}') > 0 AS attached;
INSERT INTO orders6 (id) SELECT g FROM generate_series(1, 1200) g;
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, g::text, b.provider_id, 'Y' || g, timestamptz '2026-05-10 12:00+00'
FROM shipsync.binding b, generate_series(1, 1200) g WHERE b.tbl = 'orders6'::regclass;
BEGIN;
SELECT pg_temp.bill6('2.125') ->> 'new' AS new;
SELECT * FROM pg_temp.fee_locks();
COMMIT;
ALTER TABLE orders6 ADD CONSTRAINT fee_small CHECK (fee < 1) NOT VALID;
BEGIN;
SET LOCAL client_min_messages = error;
SELECT pg_temp.bill6('2.50') ->> 'revised' AS revised;
SELECT * FROM pg_temp.fee_locks();
COMMIT;
SELECT count(*) AS tickets, count(DISTINCT order_key) AS orders, sum(reopen_count) AS reopened,
	   count(*) FILTER (WHERE detail LIKE '%fee_small%') AS refused
FROM shipsync.exception_ticket
WHERE kind = 'writeback_failed' AND binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = 'orders6'::regclass);
SELECT shipsync.detach('orders6');
SELECT shipsync.pause('gen6');

-- and a statement of as many totals the rows do not take: each order is
-- ticketed, the other table's are written (the orders written were those
-- not ticketed, found by comparing every order with every ticketed one:
-- 60,000 took five minutes; test/bench/run --only fees times it)
SELECT shipsync.create_provider('gen7', 'generic', 'https://carrier7.example', '{"currency": "CNY"}') > 0 AS created;
SELECT shipsync.create_provider('gen8', 'generic', 'https://carrier8.example', '{"currency": "KWD"}') > 0 AS created;
SELECT shipsync.pause('gen7'), shipsync.pause('gen8');
CREATE TABLE orders7 (id int PRIMARY KEY, fee numeric(10,2));
CREATE TABLE orders8 (id int PRIMARY KEY, fee numeric(10,2));
SELECT shipsync.attach('orders7', 'gen7', writeback => '{"fee_total": "fee"}') > 0 AS attached;
SELECT shipsync.attach('orders8', 'gen8', writeback => '{"fee_total": "fee"}') > 0 AS attached;
INSERT INTO orders7 (id) SELECT g FROM generate_series(1, 6000) g;
INSERT INTO orders8 (id) SELECT g FROM generate_series(1, 6000) g;
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, g::text, b.provider_id, 'Z' || g, timestamptz '2026-05-10 12:00+00'
FROM shipsync.binding b, generate_series(1, 6000) g WHERE b.tbl IN ('orders7'::regclass, 'orders8'::regclass);
CREATE FUNCTION pg_temp.bill_took(provider text, amount text) RETURNS interval LANGUAGE plpgsql AS $$
DECLARE
	t timestamptz := clock_timestamp();
BEGIN
	PERFORM shipsync.import_statement(provider, E'tracking_number,type,amount\n'
		|| (SELECT string_agg('Z' || g || ',freight,' || amount, E'\n') FROM generate_series(1, 6000) g),
		options => '{"period": "2027-05"}');
	RETURN clock_timestamp() - t;
END $$;
SELECT pg_temp.bill_took('gen7', '2.50') AS written \gset
SELECT pg_temp.bill_took('gen8', '2.505') AS ticketed \gset
SELECT (SELECT count(*) FROM orders7 WHERE fee = 2.50) AS written,
	   (SELECT count(*) FROM shipsync.exception_ticket t JOIN shipsync.binding b USING (binding_id)
		 WHERE b.tbl = 'orders8'::regclass AND t.kind = 'writeback_failed') AS ticketed;
SELECT shipsync.detach('orders7'), shipsync.detach('orders8');

-- a statement that bills one carrier's line (waybill, type and key) twice
-- is refused: it kept the last, and its total counted both; two lines
-- without a key are two lines, and it adds up to them
SELECT pg_temp.err($$SELECT shipsync.import_statement('gen2',
	E'tracking_number,type,amount,key\nW4,freight,5.00,K1\nW4,freight,7.00,K1\n', options => '{"period": "2027-03"}')$$);
SELECT pg_temp.err($$SELECT shipsync.import_statement('gen2',
	E'tracking_number,type,amount,key\nW4,freight,5.00,K1\nW4,Freight,5.00,K1\n', options => '{"period": "2027-03"}')$$);
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount,key\nW4,freight,5.00,K1\nW4,freight,7.00,K2\nW4,freight,1.00,\nW4,freight,1.00,\n',
	options => '{"period": "2027-03"}') - '{provider,statement_id,period,supersedes}'::text[] AS answer;
SELECT s.totals->>'CNY' AS statement_says, s.lines,
	   (SELECT sum(amount) FROM shipsync.fee_line l WHERE l.statement_id = s.statement_id) AS lines_from_it
FROM shipsync.statement s JOIN shipsync.provider p USING (provider_id)
WHERE p.name = 'gen2' AND s.period = '2027-03-01' AND s.superseded_by IS NULL;

-- a line two months' statements bill (the carrier listed it again): a
-- correction of the later month that drops it gives it back to the
-- earlier month's statement, which still bills it, rather than to 0
INSERT INTO orders5 (id) VALUES (5), (6), (7);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, g::text, b.provider_id, 'R' || g, timestamptz '2027-04-10 12:00+00'
FROM shipsync.binding b, generate_series(5, 7) g WHERE b.tbl = 'orders5'::regclass;
SELECT pg_temp.bill('2027-04', E'R5,freight,3.00\nR6,freight,4.00\n') - 'totals' AS answer;
SELECT pg_temp.bill('2027-05', E'R5,freight,3.50\nR7,freight,5.00\n') - 'totals' AS answer;
SELECT pg_temp.bill('2027-05', E'R7,freight,5.00\n') - 'totals' AS answer;
SELECT to_char(s.period, 'YYYY-MM') AS period, s.totals->>'CNY' AS statement_says,
	   (SELECT sum(amount) FROM shipsync.fee_line l WHERE l.statement_id = s.statement_id) AS lines_from_it
FROM shipsync.statement s JOIN shipsync.provider p USING (provider_id)
WHERE p.name = 'gen2' AND s.period IN ('2027-04-01', '2027-05-01') AND s.superseded_by IS NULL ORDER BY 1;
SELECT tracking_number, amount, state, revision FROM shipsync.fee_line WHERE tracking_number = 'R5';
SELECT id, fee FROM orders5 WHERE id = 5;
-- listed again unchanged, it stays the earlier month's (the later one
-- does not add up: it bills what another month billed), and a correction
-- of the later month leaves it
SELECT pg_temp.bill('2027-05', E'R7,freight,5.00\nR6,freight,4.00\n') - 'totals' AS answer;
SELECT pg_temp.bill('2027-05', E'R7,freight,5.00\nR6,freight,4.00\n\n') - 'totals' AS answer;
SELECT to_char(s.period, 'YYYY-MM') AS period, s.totals->>'CNY' AS statement_says,
	   (SELECT sum(amount) FROM shipsync.fee_line l WHERE l.statement_id = s.statement_id) AS lines_from_it
FROM shipsync.statement s JOIN shipsync.provider p USING (provider_id)
WHERE p.name = 'gen2' AND s.period IN ('2027-04-01', '2027-05-01') AND s.superseded_by IS NULL ORDER BY 1;
SELECT pg_temp.bill('2027-05', E'R7,freight,5.00\r\n') - 'totals' AS answer;
SELECT tracking_number, amount, state FROM shipsync.fee_line WHERE tracking_number = 'R6';
SELECT id, fee FROM orders5 WHERE id = 6;

-- a statement line older than what a later notice billed changes nothing,
-- and is not the statement's: its lines are what it says
INSERT INTO orders5 (id) VALUES (8);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, '8', b.provider_id, 'R8', timestamptz '2027-06-10 12:00+00'
FROM shipsync.binding b WHERE b.tbl = 'orders5'::regclass;
SELECT count(*) > 0 AS pushed FROM shipsync._store_fees('push', NULL, NULL, 'carrier',
	ARRAY[(SELECT provider_id FROM shipsync.provider WHERE name = 'gen2')],
	ARRAY[NULL::int], ARRAY[NULL::text], ARRAY['R8'], ARRAY['freight'], ARRAY[9.00], ARRAY['CNY'],
	ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[NULL::numeric], ARRAY[NULL::text],
	ARRAY[timestamptz '2027-06-20 10:00+00']);
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount,occurred_at\nR8,freight,8.00,2027-06-05T10:00:00Z\n',
	options => '{"period": "2027-06"}') - '{provider,statement_id,period,totals}'::text[] AS answer;
SELECT s.totals->>'CNY' AS statement_says,
	   (SELECT sum(amount) FROM shipsync.fee_line l WHERE l.statement_id = s.statement_id) AS lines_from_it
FROM shipsync.statement s JOIN shipsync.provider p USING (provider_id)
WHERE p.name = 'gen2' AND s.period = '2027-06-01' AND s.superseded_by IS NULL;
SELECT tracking_number, amount, source, statement_id IS NULL AS no_statement FROM shipsync.fee_line WHERE tracking_number = 'R8';

-- a fee the carrier's statement waives (0.00, state adjusted) is billed, at
-- 0: the order's fee_total is 0, not its quote, and it is not unbilled.
-- Only a line a correction withdrew is no bill line; listed again, as the
-- same 0.00 adjusted, it is billed once more
INSERT INTO orders5 (id) VALUES (9), (10);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, g::text, b.provider_id, 'R' || g, timestamptz '2027-07-10 12:00+00'
FROM shipsync.binding b, generate_series(9, 10) g WHERE b.tbl = 'orders5'::regclass;
SELECT count(*) > 0 AS quoted FROM shipsync._store_fees('create', NULL, NULL, 'dispatcher',
	ARRAY[(SELECT provider_id FROM shipsync.provider WHERE name = 'gen2')],
	ARRAY[(SELECT binding_id FROM shipsync.binding WHERE tbl = 'orders5'::regclass)],
	ARRAY['9'], ARRAY['R9'], ARRAY['freight'], ARRAY[13.70], ARRAY['CNY'], ARRAY[NULL::text],
	ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[NULL::numeric], ARRAY[NULL::text],
	ARRAY[NULL::timestamptz]);
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount,state\nR9,freight,0.00,adjusted\nR10,freight,0.00,adjusted\n',
	options => '{"period": "2027-07"}') - '{provider,statement_id,period,totals,supersedes}'::text[] AS answer;
SELECT id, fee FROM orders5 WHERE id IN (9, 10) ORDER BY id;
SELECT order_key, estimated, charged, net, lines FROM shipsync.order_fees
WHERE tbl = 'orders5'::regclass AND order_key IN ('9', '10') ORDER BY 1;
-- withdrawn by a correction, then listed again as it was
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount,state\nR10,freight,0.00,adjusted\n',
	options => '{"period": "2027-07"}') ->> 'withdrawn' AS withdrawn;
SELECT order_key, estimated, charged, net, lines FROM shipsync.order_fees
WHERE tbl = 'orders5'::regclass AND order_key = '9';
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount,state\r\nR9,freight,0.00,adjusted\r\nR10,freight,0.00,adjusted\r\n',
	options => '{"period": "2027-07"}') ->> 'withdrawn' AS withdrawn;
SELECT order_key, estimated, charged, net, lines FROM shipsync.order_fees
WHERE tbl = 'orders5'::regclass AND order_key = '9';
SELECT id, fee FROM orders5 WHERE id = 9;

-- The same body imported with other options is another statement: the
-- options say which account and month it bills and how its columns read.
-- Answered as a duplicate of the first, the second account's bill was lost
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount\nA1,freight,3.00\n',
	options => '{"period": "2027-08", "account": "card-1"}') - '{provider,statement_id,totals}'::text[] AS first;
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount\nA1,freight,3.00\n',
	options => '{"period": "2027-08", "account": "card-2"}') - '{provider,statement_id,totals}'::text[] AS other_account;
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount\nA1,freight,3.00\n',
	options => '{"period": "2027-09", "account": "card-1"}') - '{provider,statement_id,totals}'::text[] AS other_month;
-- the same body with the same options (written in another order) is the same statement
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount\nA1,freight,3.00\n',
	options => '{"account": "card-1", "period": "2027-09"}') ->> 'duplicate' AS same_again;
SELECT s.period, s.account, s.lines, s.options FROM shipsync.statement s JOIN shipsync.provider p USING (provider_id)
WHERE p.name = 'gen2' AND s.period >= '2027-08-01' ORDER BY s.statement_id;
-- SF Express multi-piece shipments: a bill line for a child waybill
-- (waybillType 2) or the return waybill (3) is the order's fee, not an
-- unknown waybill; the line keeps the piece's waybill (tracking_number).
-- Matched when billed, and when parked before the shipment recorded them
CREATE TABLE orders_pieces (id int PRIMARY KEY, fee numeric(10,2));
SELECT shipsync.attach('orders_pieces', 'sf_open', writeback => '{"fee_total": "fee"}') > 0 AS attached;
INSERT INTO orders_pieces (id) VALUES (1), (2);
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, waybills, created_at)
SELECT b.binding_id, '1', b.provider_id, 'SF8800000000001',
	'[{"waybillNo": "SF8800000000001", "waybillType": 1}, {"waybillNo": "SF8800000000002", "waybillType": 2},
	  {"waybillNo": "SF8800000000003", "waybillType": 3}]', timestamptz '2027-08-02 10:00+00'
FROM shipsync.binding b WHERE b.tbl = 'orders_pieces'::regclass;
SELECT shipsync.import_statement('sf_open', E'运单号,费用类型,金额,币种\nSF8800000000001,运费,23.00,CNY\nSF8800000000002,运费,12.00,CNY\nSF8800000000003,运费,8.00,CNY\nSF8899999999999,运费,5.00,CNY\n',
	options => '{"period": "2027-08"}') - '{provider,statement_id,period,supersedes}'::text[] AS answer;
SELECT tracking_number, order_key, amount FROM shipsync.fee_line WHERE tracking_number LIKE 'SF88%' ORDER BY 1;
SELECT id, fee FROM orders_pieces ORDER BY id;
SELECT kind, tracking_number FROM shipsync.fee_difference WHERE tracking_number LIKE 'SF88%' ORDER BY 1, 2;
-- a child's bill parked before the shipment recorded its waybills
SELECT shipsync.import_statement('sf_open', E'运单号,费用类型,金额,币种\nSF8800000000012,运费,7.00,CNY\n',
	options => '{"period": "2027-09"}') ->> 'unmatched' AS parked;
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, waybills, created_at)
SELECT b.binding_id, '2', b.provider_id, 'SF8800000000011',
	'[{"waybillNo": "SF8800000000011", "waybillType": 1}, {"waybillNo": "SF8800000000012", "waybillType": 2}]',
	timestamptz '2027-09-02 10:00+00'
FROM shipsync.binding b WHERE b.tbl = 'orders_pieces'::regclass;
SELECT kind, n, order_key, fee_total FROM shipsync._match_parked_fees_all() ORDER BY 1;
SELECT tracking_number, order_key, amount FROM shipsync.fee_line WHERE tracking_number = 'SF8800000000012';
-- and a push of it again: the order's line, revised in place
SELECT shipsync.import_statement('sf_open', E'运单号,费用类型,金额,币种\nSF8800000000012,运费,7.50,CNY\n',
	options => '{"period": "2027-09"}') - '{provider,statement_id,period,supersedes,totals}'::text[] AS answer;
SELECT tracking_number, order_key, amount FROM shipsync.fee_line WHERE tracking_number = 'SF8800000000012';


-- a statement's line whose amount its currency cannot have (JPY 1500.5),
-- with on_error = skip: left out, and the statement's errors say why
BEGIN;
SELECT shipsync.import_statement('sf_open', E'运单号,费用类型,金额,币种\nMINOR2,运费,1500,JPY\nMINOR3,运费,1500.5,JPY\n',
	options => '{"period": "2025-11", "on_error": "skip"}') - '{statement_id,provider}'::text[] AS answer;
SELECT lines, totals, errors FROM shipsync.statement WHERE period = '2025-11-01';
ROLLBACK;

-- a shipment billed in another currency than its quote's has a bill line:
-- it is no unbilled shipment of the settlement, in no currency's row
-- (the quote's row counted it unbilled, as no line of that row was a bill)
BEGIN;
INSERT INTO orders2 (id, waybill) VALUES (50, 'U50'), (51, 'U51');
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, g::text, b.provider_id, 'U' || g, timestamptz '2028-01-10 12:00+00'
FROM shipsync.binding b, generate_series(50, 51) g WHERE b.tbl = 'orders2'::regclass;
SELECT pg_temp.quote('50', 'U50', 20.00) > 0 AS quoted, pg_temp.quote('51', 'U51', 5.00) > 0 AS quoted;
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount,currency\nU50,freight,3.00,USD\n',
	options => '{"period": "2028-01"}') ->> 'new' AS new;
SELECT currency, shipments, estimated, charged, unbilled FROM shipsync.settlement
WHERE provider = 'gen2' AND month = '2028-01-01' ORDER BY currency;
SELECT kind, tracking_number FROM shipsync.fee_difference WHERE tracking_number LIKE 'U5_' ORDER BY 2;
ROLLBACK;

-- a quote whose total its currency cannot have (JPY 1500.5, as a carrier
-- answering in sen would): no estimate for the apply, no first quote of
-- the one statement, and no fee_total: the order keeps its own and gets a
-- ticket saying why; JPY 1500.00 is a total, as two lines of 0.5 adding
-- up to a whole yen
SELECT ord, total FROM shipsync._quote_totals(ARRAY[
	'[{"type":"freight","amount":"1500.5","currency":"JPY"}]',
	'[{"type":"freight","amount":"1500.00","currency":"JPY"}]',
	'[{"type":"freight","amount":"0.5","currency":"JPY"},{"type":"fuel","amount":"0.5","currency":"JPY"}]',
	'[{"type":"freight","amount":"12.505","currency":"CNY"}]'], ARRAY[1, 1, 1, 1]) ORDER BY ord;
SELECT ord, i, amount, estimated FROM shipsync._first_quote_lines(ARRAY[1, 1, 1], ARRAY['a', 'b', 'c'],
	ARRAY[1, 1, 1], ARRAY['J1', 'J2', 'J3'], ARRAY[
	'[{"type":"freight","amount":"1500.5","currency":"JPY"}]',
	'[{"type":"freight","amount":"1500.00","currency":"JPY"}]',
	'[{"type":"freight","amount":"0.5","currency":"JPY"},{"type":"fuel","amount":"0.5","currency":"JPY"}]']) ORDER BY ord, i;
BEGIN;
INSERT INTO orders2 (id, waybill) VALUES (52, 'U52');
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, '52', b.provider_id, 'U52', timestamptz '2028-01-10 12:00+00'
FROM shipsync.binding b WHERE b.tbl = 'orders2'::regclass;
SELECT kind, n, fee_total FROM shipsync._record_quotes(
	ARRAY[(SELECT binding_id FROM shipsync.binding WHERE tbl = 'orders2'::regclass)], ARRAY['52'],
	ARRAY[(SELECT provider_id FROM shipsync.provider WHERE name = 'gen2')], ARRAY['U52'],
	ARRAY['[{"type":"freight","amount":"1500.5","currency":"JPY"}]'])
WHERE kind IN ('new', 'writeback');
SELECT s.fee_total, o.fee FROM shipsync.shipment s JOIN orders2 o ON o.id::text = s.order_key
WHERE s.tracking_number = 'U52';
SELECT kind, detail, resolved_at IS NULL AS open FROM shipsync.exception_ticket
WHERE order_key = '52' AND kind = 'fee_currency_mixed';
ROLLBACK;

-- a time whose UTC offset is out of range (+16, minutes 99) is a bad time
-- like any other: the push is refused naming its field, and a statement
-- with on_error = skip keeps its other lines
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1", "currency": "CNY", "occurred_at": "2026-03-05 10:00:00+16"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1", "currency": "CNY", "occurred_at": "2026-03-05T10:00:00+08:99"}]}');
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1", "currency": "CNY", "occurred_at": "0000-03-05 10:00:00Z"}]}') ~ '^SS400' AS year_zero_refused;
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1", "currency": "CNY", "occurred_at": "2026-03-05 23:59:60.5"}]}') ~ '^SS400' AS leap_fraction_refused;
-- (a leap second itself, an offset of 15:59 and 2028-02-29 are times)
SELECT pg_temp.push_err('{"fees": [{"tracking_number": "T1", "type": "freight", "amount": "1", "currency": "CNY", "occurred_at": "2026-03-05 23:59:60"},
	{"tracking_number": "T1", "type": "freight", "amount": "x", "currency": "CNY", "occurred_at": "2028-02-29T10:00:00-15:59"}]}') ~ 'Fee 2, field amount' AS others_read;
BEGIN;
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount,occurred_at\nW91,freight,5.00,2026-09-01 10:00:00+16\nW92,freight,6.00,2026-09-02 10:00:00+08:00\n',
	options => '{"period": "2026-09", "on_error": "skip"}') ?& ARRAY['lines'] AS imported;
SELECT s.lines, s.errors FROM shipsync.statement s
JOIN shipsync.provider p USING (provider_id) WHERE p.name = 'gen2' AND s.period = '2026-09-01' AND s.superseded_by IS NULL;
ROLLBACK;

-- A DBA renames the extension's indexes (to a naming scheme of theirs):
-- attach() and the fee totals still work in a new session, naming the
-- columns, not the constraints
ALTER INDEX shipsync.binding_tbl_key RENAME TO binding_tbl_uq;
ALTER INDEX shipsync.fee_sum_pkey RENAME TO fee_sum_pk;
ALTER INDEX shipsync.fee_line_identity RENAME TO fee_line_uq;
\c
SET client_min_messages = warning;
CREATE FUNCTION pg_temp.push(lines jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT shipsync.ingest_fees('gen', b, h)
	FROM (SELECT jsonb_build_object('fees', lines)::text AS b,
				 extract(epoch FROM now())::bigint AS ts) x,
		 LATERAL (SELECT jsonb_build_object('Webhook-Id', 'msg_' || md5(b), 'Webhook-Timestamp', ts::text,
			'Webhook-Signature', 'v1,' || encode(shipsync._hmac_sha256(
				decode('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'base64'),
				convert_to('msg_' || md5(b) || '.' || ts || '.' || b, 'UTF8')), 'base64')) AS h) y
$$;
CREATE TABLE orders_renamed (id int PRIMARY KEY, waybill text, fee numeric(10,2));
SELECT shipsync.attach('orders_renamed', 'gen', writeback => '{"tracking_number": "waybill", "fee_total": "fee"}') > 0 AS attached;
SELECT shipsync.detach('orders_renamed');
SELECT shipsync.attach('orders_renamed', 'gen', writeback => '{"tracking_number": "waybill"}') > 0 AS attached_again;
SELECT pg_temp.push('[{"tracking_number": "T9", "type": "fuel", "amount": "2.00", "currency": "CNY"}]')->>'new' AS new;
SELECT pg_temp.push('[{"tracking_number": "T9", "type": "fuel", "amount": "2.50", "currency": "CNY"}]')->>'revised' AS revised;
SELECT amount, revision FROM shipsync.fee_line WHERE tracking_number = 'T9' AND fee_type = 'fuel';
SELECT s.charged, s.bill_lines FROM shipsync.fee_sum s JOIN shipsync.fee_line f USING (binding_id, order_key, provider_id)
WHERE f.tracking_number = 'T9' AND f.fee_type = 'fuel' AND s.currency = 'CNY';
ALTER INDEX shipsync.binding_tbl_uq RENAME TO binding_tbl_key;
ALTER INDEX shipsync.fee_sum_pk RENAME TO fee_sum_pkey;
ALTER INDEX shipsync.fee_line_uq RENAME TO fee_line_identity;

-- settlement's unbilled, in every case its one pass decides: a currency
-- quoted alone is unbilled unless another currency bills the shipment; a
-- cancelled shipment never is; one with no line is, in the row without a
-- currency; one quoted in two currencies and billed in neither is, in both
BEGIN;
CREATE FUNCTION pg_temp.quote_in(k text, tn text, amount numeric, cur text) RETURNS bigint LANGUAGE sql AS $$
	SELECT count(*) FROM shipsync._store_fees('create', NULL, NULL, 'dispatcher',
		ARRAY[(SELECT provider_id FROM shipsync.provider WHERE name = 'gen2')],
		ARRAY[(SELECT binding_id FROM shipsync.binding WHERE tbl = 'orders2'::regclass)],
		ARRAY[k], ARRAY[tn], ARRAY['freight'], ARRAY[amount], ARRAY[cur], ARRAY[NULL::text],
		ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[NULL::numeric], ARRAY[NULL::text],
		ARRAY[NULL::timestamptz]) $$;
INSERT INTO orders2 (id, waybill) SELECT g, 'U' || g FROM generate_series(60, 67) g;
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at, status)
SELECT b.binding_id, g::text, b.provider_id, 'U' || g, timestamptz '2028-02-10 12:00+00',
	   CASE WHEN g IN (63, 65) THEN 'cancelled' ELSE 'delivered' END
FROM shipsync.binding b, generate_series(60, 67) g WHERE b.tbl = 'orders2'::regclass;
-- U60 quoted in CNY; U61 quoted in CNY, billed in USD; U62 quoted and
-- billed in CNY; U63 quoted in CNY, cancelled; U64 no line; U65 no line,
-- cancelled; U66 quoted in CNY and in USD; U67 quoted in USD, billed in
-- USD and CNY
SELECT pg_temp.quote_in(g::text, 'U' || g, 10.00, 'CNY') > 0 AS quoted
FROM generate_series(60, 63) g ORDER BY g;
SELECT pg_temp.quote_in('66', 'U66', 10.00, 'CNY') > 0 AS quoted,
	   (SELECT count(*) FROM shipsync._store_fees('create', NULL, NULL, 'dispatcher',
		ARRAY[(SELECT provider_id FROM shipsync.provider WHERE name = 'gen2')],
		ARRAY[(SELECT binding_id FROM shipsync.binding WHERE tbl = 'orders2'::regclass)],
		ARRAY['66'], ARRAY['U66'], ARRAY['insurance'], ARRAY[1.00], ARRAY['USD'], ARRAY[NULL::text],
		ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[NULL::numeric], ARRAY[NULL::text],
		ARRAY[NULL::timestamptz])) > 0 AS quoted_usd,
	   pg_temp.quote_in('67', 'U67', 2.00, 'USD') > 0 AS quoted_67;
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount,currency\nU61,freight,3.00,USD\nU62,freight,10.00,CNY\nU67,freight,2.00,USD\nU67,fuel,1.00,CNY\n',
	options => '{"period": "2028-02"}') ->> 'new' AS new;
SELECT currency, shipments, estimated, charged, unbilled FROM shipsync.settlement
WHERE provider = 'gen2' AND month = '2028-02-01' ORDER BY currency NULLS FIRST;
ROLLBACK;

-- settlement and the store of fee lines are never JIT-compiled: their
-- plans' costs on paper (a lookup costed for every shipment or line that
-- only a few reach) passed jit_optimize_above_cost, and compiling took
-- longer than the rest (settlement twice as slow, a 40,000-line statement
-- 13 of its 19 s)
SELECT p.proname, 'jit=off' = ANY (p.proconfig) AS jit_off FROM pg_proc p
WHERE p.pronamespace = 'shipsync'::regnamespace AND p.proname IN ('_settlement', '_store_fees')
ORDER BY 1;

-- a statement looks up the pieces of multi-piece shipments (the waybills'
-- index) for the lines whose waybill no shipment has as its tracking
-- number, not for every line: five lines of shipments' numbers and one
-- unknown number, one lookup (the index's scans, flushed to the
-- statistics after each step)
SELECT pg_stat_force_next_flush();
SELECT idx_scan AS pieces_before FROM pg_stat_user_indexes
WHERE indexrelname = 'shipment_waybills_idx' \gset
BEGIN;
INSERT INTO orders2 (id, waybill) SELECT g, 'U' || g FROM generate_series(70, 74) g;
INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number, created_at)
SELECT b.binding_id, g::text, b.provider_id, 'U' || g, timestamptz '2028-03-10 12:00+00'
FROM shipsync.binding b, generate_series(70, 74) g WHERE b.tbl = 'orders2'::regclass;
SELECT shipsync.import_statement('gen2', E'tracking_number,type,amount,currency\nU70,freight,3.00,CNY\nU71,freight,3.00,CNY\nU72,freight,3.00,CNY\nU73,freight,3.00,CNY\nU74,freight,3.00,CNY\nU7X,freight,3.00,CNY\n',
	options => '{"period": "2028-03"}') - '{provider,statement_id,period,totals}'::text[] AS answer;
ROLLBACK;
SELECT pg_stat_force_next_flush();
SELECT pg_stat_clear_snapshot();
SELECT idx_scan - :pieces_before AS pieces_lookups FROM pg_stat_user_indexes
WHERE indexrelname = 'shipment_waybills_idx';
