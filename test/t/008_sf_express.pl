# End to end with the sf_express dialect against the simulator's SF gateway.
#
# Proves, with a real dispatcher and test/sim/sf_sim.py checking every
# msgDigest as SF does:
#   1. the happy path through the built-in sf_express profile: signed form,
#      msgData with the sender from provider options and the receiver from
#      the row, every waybill kept, the main one written back;
#   2. a wrong check word: A1006, dead at once with an auth ticket, no retries;
#      once fixed with set_secret(), the intents requeued are signed with it;
#   3. S0001 (busy) inside a 200: retried, then delivered;
#   4. a reply lost after SF created the order: the retry gets 8016, the
#      order is looked up with EXP_RECE_SEARCH_ORDER_RESP, its waybill is
#      taken, and SF holds one order;
#   5. a data error inside a 200: dead with a ticket, no retry;
#   6. a required mapped field missing: invalid, a ticket, nothing sent;
#   7. cancel: EXP_RECE_UPDATE_ORDER dealType 2, and 8037 (already
#      cancelled) is a success;
#   8. a changed field map applies to the next order, without a restart;
#   9. apiResultData as a JSON string and as an object both work;
#  10. a multi-piece order (a child and a return waybill): every waybill
#      registered at the binding's tracking provider (Kuaidi100), whose
#      pushes of a piece, as SF's own route pushes of the return parcel,
#      are the order's events tagged with the piece; only the main
#      waybill moves the order's status.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use Encode qw(encode_utf8 decode_utf8);
use HTTP::Tiny;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $sim = start_sim(args => [ '--kuaidi100-key', 'kd-key-1' ]);
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node('sf_express');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub sf_get
{
	my ($path) = @_;
	return sim_get($sim, "/_sim/sf/$path");
}

sub sf_rules
{
	my (@rules) = @_;
	sim_post($sim, '/_sim/sf/faults', { rules => [@rules] });
}

my $checkword = 'fjcg5PGKaNpPSHFAZ4QsCOkV71R3zVci';	# (setup_sf_orders signs with it)
my $sf_url = "$sim->{url}/sf/std/service";
my $common = '"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 300, "max_attempts": 6';
setup_sf_orders($node, $sim, $common);

sub insert_order
{
	my ($no, %f) = @_;
	my $addr = exists $f{address} ? $f{address} : "湖北省襄阳市襄城区环城东路${no}号";
	my $q = defined $addr ? "'$addr'" : 'NULL';
	my $remark = $f{remark} // '';
	sql(qq{INSERT INTO orders (order_no, receiver_name, receiver_phone, receiver_province,
		receiver_city, receiver_district, receiver_address, cargo_name, quantity, weight_kg, amount, remark)
		VALUES ('$no', '郭襄阳', '189 6382 8829', '湖北省', '襄阳市', '襄城区', $q,
				'君宝牌地毯', 1, 6.6, 308, '$remark')});
}

sub intent { return sql("SELECT state || '|' || attempts || '|' || coalesce(error_class, '') FROM shipsync.outbox WHERE order_key = '$_[0]' ORDER BY id DESC LIMIT 1"); }

sub wait_state
{
	my ($no, $states, $timeout) = @_;
	return wait_until($node,
		"SELECT state IN ($states) FROM shipsync.outbox WHERE order_key = '$no' ORDER BY id DESC LIMIT 1",
		$timeout // 30);
}

my $pid0 = sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_shipsync dispatcher'");

###########################################################################
# 1. happy path
###########################################################################
for my $i (1 .. 10) { insert_order(sprintf('SO-%03d', $i)); }
ok(wait_until($node, "SELECT count(*) = 10 FROM orders WHERE waybill IS NOT NULL", 30),
	'happy: ten orders got their SF waybill');
my $st = sf_get('stats');
is($st->{orders_created}, 10, 'happy: SF holds ten orders');
is($st->{bad_signature}, 0, 'happy: every msgDigest checked out');
is(sql("SELECT count(*) FROM orders WHERE waybill ~ '^SF[0-9]{13}\$'"), 10,
	'happy: waybills written back');
is( sql(qq{SELECT count(*) FROM shipsync.outbox WHERE state = 'done' AND attempts = 1}),
	10, 'happy: one attempt each');
my $rec = sf_get('orders?orderId=SO-001')->[0];
my $msg = $rec->{msgData};
my ($recv) = grep { $_->{contactType} == 2 } @{ $msg->{contactInfoList} };
my ($send) = grep { $_->{contactType} == 1 } @{ $msg->{contactInfoList} };
is(encode_utf8($recv->{address}) . '|' . $recv->{mobile} . '|' . encode_utf8($recv->{contact}),
	'湖北省襄阳市襄城区环城东路SO-001号|18963828829|郭襄阳',
	'happy: the receiver comes from the row, phone normalised, Chinese intact');
is(encode_utf8($send->{contact}) . '|' . $send->{mobile}, '张三丰|17006805888',
	'happy: the sender comes from provider option "sender"');
is($msg->{orderId} . '|' . $msg->{monthlyCard} . '|' . $msg->{cargoDetails}[0]{weight} . '|' . $msg->{payMethod},
	'SO-001|7551234567|6.6|1', 'happy: orderId is the order key; card, weight and pay method mapped');
is(sql("SELECT request_body ~ ('requestID=' || idempotency_key || '&') FROM shipsync.outbox WHERE order_key = 'SO-001'"),
	't', 'happy: the requestID is the intent\'s idempotency key');
is( sql(qq{SELECT s.tracking_number = '$rec->{waybill}' AND s.provider_shipment_id = 'SO-001'
		AND s.waybills = '[{"waybillNo": "$rec->{waybill}", "waybillType": 1}]'::jsonb
		FROM shipsync.shipment s WHERE s.order_key = 'SO-001'}),
	't', 'happy: the shipment keeps SF\'s waybill list; the order id is the shipment id');
ok($st->{result_as_string} > 0 && $st->{result_as_object} > 0,
	'apiResultData as a JSON string and as an object were both read');

###########################################################################
# 2. wrong check word: A1006, dead at once, auth ticket
###########################################################################
sql(qq{SELECT shipsync.create_provider('sf_bad', 'sf_express', '$sf_url', '{$common,
		"auth": {"type": "sf_express", "partner_id": "SHOP1", "checkword": "wrong-checkword"}}');
	CREATE TABLE orders_bad (LIKE orders INCLUDING ALL);
	SELECT shipsync.attach('orders_bad', 'sf_bad');
	INSERT INTO orders_bad (order_no, receiver_address) VALUES ('BAD-1', '北京市'), ('BAD-2', '上海市');});
ok(wait_state('BAD-1', "'dead'") && wait_state('BAD-2', "'dead'"), 'bad checkword: intents dead');
is(intent('BAD-1'), 'dead|1|auth', 'bad checkword: one attempt, error class auth');
is(sql("SELECT count(*) FROM shipsync.exception_ticket WHERE kind = 'auth_failed' AND order_key IN ('BAD-1', 'BAD-2')"),
	2, 'bad checkword: an auth_failed ticket each');
like(sql("SELECT last_error FROM shipsync.outbox WHERE order_key = 'BAD-1'"), qr/A1006.*not retried/,
	'bad checkword: the error says A1006 and that it is not retried');
is(sf_get('stats')->{bad_signature}, 2, 'bad checkword: SF saw two requests, no retry storm');

# The check word fixed, the dead intents requeued (docs/troubleshooting.md):
# their stored requests go again signed with the check word of now, the
# same requestID, timestamp and msgData (SF's orderId) as stored.  They
# were sent with the digest of the wrong check word they were stored with,
# refused A1006 again and dead again, however often requeued.
my $stored_bad = sql("SELECT string_agg(regexp_replace(request_body, '&msgDigest=.*', ''), ' ' ORDER BY id)
	FROM shipsync.outbox WHERE order_key IN ('BAD-1', 'BAD-2')");
sql(qq{SELECT shipsync.set_secret('sf_bad', 'checkword', '$checkword');
	SELECT shipsync.requeue('sf_bad');});
ok( wait_until($node, "SELECT count(*) = 2 FROM shipsync.outbox WHERE order_key IN ('BAD-1', 'BAD-2')
		AND state IN ('done', 'dead') AND attempts = 1", 30),
	'check word fixed: the requeued intents were sent again');
is(intent('BAD-1') =~ s/\|.*//r . ' ' . intent('BAD-2') =~ s/\|.*//r, 'done done',
	'check word fixed: the requeued intents are done');
is(sf_get('stats')->{bad_signature}, 2, 'check word fixed: SF saw no bad digest after the fix');
is(scalar(@{ sf_get('orders?orderId=BAD-1') }), 1, 'check word fixed: SF holds order BAD-1');
is( sql("SELECT string_agg(regexp_replace(request_body, '&msgDigest=.*', ''), ' ' ORDER BY id)
		FROM shipsync.outbox WHERE order_key IN ('BAD-1', 'BAD-2')"),
	$stored_bad, 'check word fixed: the stored requests are kept as they were');

###########################################################################
# 3. busy (S0001 inside a 200): retried, then delivered
###########################################################################
sf_rules({ fault => 'busy', count => 2, match_order_id => '^BUSY-1$' });
insert_order('BUSY-1');
ok(wait_state('BUSY-1', "'done'"), 'busy: delivered in the end');
is(intent('BUSY-1'), 'done|3|', 'busy: after two busy answers, the third attempt');
is( sql(qq{SELECT string_agg(coalesce(error_class, 'ok'), ',' ORDER BY attempt) FROM shipsync.delivery_log
		WHERE outbox_id = (SELECT id FROM shipsync.outbox WHERE order_key = 'BUSY-1')}),
	'business_retry,business_retry,ok', 'busy: logged as business_retry');

###########################################################################
# 4. lost reply: 8016 on the retry, looked up, one order at SF
###########################################################################
sf_rules({ fault => 'lost_reply', count => 1, match_order_id => '^LOST-1$', service => 'EXP_RECE_CREATE_ORDER' });
insert_order('LOST-1');
ok(wait_state('LOST-1', "'done'"), 'lost reply: delivered');
my $lost = sf_get('orders?orderId=LOST-1');
is(scalar(@$lost), 1, 'lost reply: SF holds exactly one order');
is(sql("SELECT waybill FROM orders WHERE order_no = 'LOST-1'"), $lost->[0]{waybill},
	'lost reply: the waybill found by the search is written back');
$st = sf_get('stats');
is($st->{duplicates_8016} . '|' . $st->{searches}, '1|1', 'lost reply: one 8016 and one search');
is( sql(qq{SELECT string_agg(coalesce(error_class, 'ok'), ',' ORDER BY attempt) FROM shipsync.delivery_log
		WHERE outbox_id = (SELECT id FROM shipsync.outbox WHERE order_key = 'LOST-1')}),
	'connection_lost,duplicate_resolved', 'lost reply: in doubt, then resolved by the search');

# a search that finds nothing means the create may be sent again
sf_rules({ fault => 'data_error', count => 1, code => '8016', match_order_id => '^GHOST-1$',
		service => 'EXP_RECE_CREATE_ORDER' });
insert_order('GHOST-1');
ok(wait_state('GHOST-1', "'done'"), 'phantom 8016: delivered');
is( sql(qq{SELECT string_agg(coalesce(error_class, 'ok'), ',' ORDER BY attempt) FROM shipsync.delivery_log
		WHERE outbox_id = (SELECT id FROM shipsync.outbox WHERE order_key = 'GHOST-1')}),
	'not_found,ok', 'phantom 8016: the search found nothing, the create was sent again');
is(scalar(@{ sf_get('orders?orderId=GHOST-1') }), 1, 'phantom 8016: one order at SF');

###########################################################################
# 5. a data error inside a 200: permanent
###########################################################################
sf_rules({ fault => 'data_error', code => '1011', match_order_id => '^DATA-1$' });
insert_order('DATA-1');
ok(wait_state('DATA-1', "'dead'"), 'data error: dead');
is(intent('DATA-1'), 'dead|1|business_error', 'data error: not retried');
is(sql("SELECT count(*) FROM shipsync.exception_ticket WHERE order_key = 'DATA-1' AND kind = 'dead_intent'"),
	1, 'data error: a ticket');
# 8037 (already cancelled) ends a cancel, but to a create it is a refusal:
# the order was not created, so it is neither done nor given a shipment
sf_rules({ fault => 'data_error', code => '8037', match_order_id => '^CANC-1$',
		service => 'EXP_RECE_CREATE_ORDER' });
insert_order('CANC-1');
ok(wait_state('CANC-1', "'dead', 'done'"), '8037 to a create: settled');
is(intent('CANC-1'), 'dead|1|business_error', '8037 to a create: dead, not done');
is(sql("SELECT count(*) FROM shipsync.shipment WHERE order_key = 'CANC-1'"), 0,
	'8037 to a create: no shipment recorded without a waybill');
is(sql("SELECT count(*) FROM shipsync.exception_ticket WHERE order_key = 'CANC-1' AND kind = 'dead_intent'"),
	1, '8037 to a create: a ticket');
like(sql("SELECT last_error FROM shipsync.outbox WHERE order_key = 'CANC-1'"), qr/8037.*cancelled at SF/,
	'8037 to a create: the error says the order is cancelled at SF');
# and the gateway's own failure is retried
sf_rules({ fault => 'gateway_error', count => 1, code => 'A1099', match_order_id => '^GW-1$' });
insert_order('GW-1');
ok(wait_state('GW-1', "'done'"), 'gateway A1099: retried and delivered');
is(intent('GW-1'), 'done|2|', 'gateway A1099: the second attempt');

###########################################################################
# 6. required mapped field missing: invalid, ticket, nothing sent
###########################################################################
sf_rules();
my $before = sf_get('stats')->{requests};
insert_order('INV-1', address => undef);
ok(wait_state('INV-1', "'invalid'"), 'invalid: the intent is invalid');
like(sql("SELECT last_error FROM shipsync.outbox WHERE order_key = 'INV-1'"),
	qr/contactInfoList\[contactType=2\]\.address \(missing\)/, 'invalid: last_error names the field');
is(sql("SELECT error_class || '|' || attempts FROM shipsync.outbox WHERE order_key = 'INV-1'"),
	'invalid_order|0', 'invalid: never attempted');
is(sql("SELECT count(*) FROM shipsync.exception_ticket WHERE order_key = 'INV-1' AND kind = 'invalid_order'"),
	1, 'invalid: one ticket');
insert_order('SO-AFTER');
ok(wait_state('SO-AFTER', "'done'"), 'invalid: a later order still goes');
is(sf_get('stats')->{requests} - $before, 1, 'invalid: nothing was sent for it');
is(scalar(@{ sf_get('orders?orderId=INV-1') }), 0, 'invalid: SF never heard of it');
# fixed and retried, it goes
sql("UPDATE orders SET receiver_address = '北京市海淀区' WHERE order_no = 'INV-1'");
sql("SELECT shipsync.retry(id) FROM shipsync.outbox WHERE order_key = 'INV-1' AND state = 'invalid'");
ok(wait_until($node, "SELECT waybill IS NOT NULL FROM orders WHERE order_no = 'INV-1'", 30),
	'invalid: fixed and retried, it is shipped');

###########################################################################
# 7. cancel: dealType 2; 8037 is a success
###########################################################################
sql("DELETE FROM orders WHERE order_no = 'SO-002'");
ok(wait_until($node, "SELECT status = 'cancelled' FROM shipsync.shipment WHERE order_key = 'SO-002'", 30),
	'cancel: the shipment is cancelled');
ok(sf_get('orders?orderId=SO-002')->[0]{cancelled}, 'cancel: SF cancelled the order');
sim_post($sim, '/_sim/sf/cancel?orderId=SO-003');
sql("DELETE FROM orders WHERE order_no = 'SO-003'");
ok(wait_until($node, "SELECT status = 'cancelled' FROM shipsync.shipment WHERE order_key = 'SO-003'", 30),
	'8037: already cancelled at SF counts as cancelled');
is(intent('SO-003'), 'done|1|already_cancelled', '8037: done in one attempt');
# an update of an order SF has: finished with the reason
sql("UPDATE orders SET remark = 'ring twice' WHERE order_no = 'SO-004'");
ok(wait_settled($node, "'SO-004'", 30), 'update: settled');
like(sql("SELECT last_error FROM shipsync.outbox WHERE order_key = 'SO-004' AND op = 'update'"),
	qr/cannot change an order/, 'update: SF has no order update, and the intent says so');

###########################################################################
# 8. a changed field map applies to the next order, without a restart
###########################################################################
sql(q{SELECT shipsync.copy_profile('sf_express', 'sf_shop');
	UPDATE shipsync.provider SET options = options || '{"profile": "sf_shop"}' WHERE name = 'sf';
	SELECT shipsync._wake(true);});
insert_order('MAP-1', remark => 'leave at door');
ok(wait_state('MAP-1', "'done'"), 'map: delivered with the copied profile');
is(sf_get('orders?orderId=MAP-1')->[0]{msgData}{remark}, 'leave at door', 'map: remark as is');
sql(q{UPDATE shipsync.field_map SET transform = 'upper' WHERE profile = 'sf_shop' AND target_path = 'remark';
	INSERT INTO shipsync.field_map (profile, direction, position, target_path, source)
	VALUES ('sf_shop', 'out', 30, 'customsInfo.note', 'const:见备注');});
insert_order('MAP-2', remark => 'leave at door');
ok(wait_state('MAP-2', "'done'"), 'map: the next order delivered');
my $m2 = sf_get('orders?orderId=MAP-2')->[0]{msgData};
is($m2->{remark} . '|' . encode_utf8($m2->{customsInfo}{note}), 'LEAVE AT DOOR|见备注',
	'map: the changed and the added rule apply to the next order');
is(sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_shipsync dispatcher'"), $pid0,
	'map: the same dispatcher, no restart');

# render_request shows the stored request, and secrets never
my $rr = sql("SELECT method || ' ' || url || ' ' || array_to_string(headers, ';') FROM shipsync.render_request((SELECT id FROM shipsync.outbox WHERE order_key = 'MAP-2'))");
like($rr, qr{^POST \Q$sf_url\E .*Content-Type: application/x-www-form-urlencoded}, 'render_request: the stored SF request');
unlike(sql("SELECT string_agg(r.body || array_to_string(r.headers, ''), '') FROM shipsync.outbox o, shipsync.render_request(o.id) r WHERE o.state = 'done' AND o.op = 'create'"),
	qr/\Q$checkword\E/, 'render_request: the check word appears nowhere');

###########################################################################
# 10. a multi-piece order: registered piece by piece, pushes of the pieces
###########################################################################
sim_post($sim, '/_sim/sf/pieces',
	{ rules => [ { match_order_id => '^MP-', children => 1, return => JSON::PP::true } ] });
sql(qq{SELECT shipsync.create_provider('kd', 'kuaidi100', '$sim->{url}', '{$common, "company": "shunfeng",
		"callback_url": "https://shop.example/hooks/kuaidi100", "webhook_secret": "s4lt",
		"auth": {"type": "kuaidi100", "customer": "CUST1", "key": "kd-key-1"}}');
	UPDATE shipsync.provider SET options = options || '{"accept_unsigned_pushes": true}' WHERE name = 'sf';
	CREATE TABLE orders_mp (LIKE orders INCLUDING ALL);
	SELECT shipsync.attach('orders_mp', 'sf', writeback => '{"tracking_number": "waybill", "status": "ship_status"}',
		options => '{"tracking_provider": "kd"}');
	INSERT INTO orders_mp (order_no, receiver_name, receiver_phone, receiver_province, receiver_city,
		receiver_district, receiver_address, cargo_name, quantity, weight_kg, amount, remark)
	VALUES ('MP-1', '郭襄阳', '189 6382 8829', '湖北省', '襄阳市', '襄城区', '湖北省襄阳市襄城区环城东路1号',
		'君宝牌地毯', 2, 6.6, 308, '');});
ok( wait_until($node, q{SELECT count(*) FILTER (WHERE o.state = 'done') = 3 AND count(*) = 3
		FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'kd' AND o.op = 'register' AND o.order_key = 'MP-1'}, 30),
	'pieces: three registrations at the tracking provider, done');
my $mp = sf_get('orders?orderId=MP-1')->[0];
my ($mp_main, $mp_child, $mp_ret) = ($mp->{waybill}, $mp->{children}[0], $mp->{return} // 'none');
is( sql(q{SELECT string_agg(w->>'waybillType', ',' ORDER BY o) FROM shipsync.shipment s
		JOIN shipsync.provider p USING (provider_id), jsonb_array_elements(s.waybills) WITH ORDINALITY AS a(w, o)
		WHERE p.name = 'sf' AND s.order_key = 'MP-1'}),
	'1,2,3', 'pieces: the shipment keeps the main, child and return waybills SF gave');
is( join(',', sort map { $_->{number} } grep { $_->{dialect} eq 'kuaidi100' }
		@{ sim_get($sim, '/_sim/track/registrations') }),
	join(',', sort ($mp_main, $mp_child, $mp_ret)), 'pieces: Kuaidi100 holds a subscription for each waybill');
is( sql(q{SELECT s.tracking_number || '|' || (SELECT string_agg((w->>'waybillNo') || ':' || (w->>'waybillType'), ','
			ORDER BY w->>'waybillType') FROM jsonb_array_elements(s.waybills) w)
		FROM shipsync.shipment s JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'kd' AND s.order_key = 'MP-1'}),
	"$mp_main|$mp_child:2,$mp_ret:3", "pieces: the tracking provider's shipment records the pieces it registered");

# A Kuaidi100 push (signed with the subscription's salt) of one event of
# $number: what ingest_tracking() answered
sub kd_push
{
	my ($number, $state, $status, $at) = @_;
	my $param = encode_json({ status => 'polling', lastResult => {
		state => $state, ischeck => ($state eq '3' ? '1' : '0'), com => 'shunfeng', nu => $number,
		data => [ { context => $status, time => $at, ftime => $at, status => $status } ] } });
	(my $enc = $param) =~ s/([^A-Za-z0-9._~-])/sprintf('%%%02X', ord($1))/ge;
	my $sign = uc(sql("SELECT md5(convert_from('\\x" . unpack('H*', $param) . "', 'UTF8') || 's4lt')"));
	return decode_json(sql("SELECT shipsync.ingest_tracking('kd', 'param=$enc&sign=$sign')"));
}
my $r = kd_push($mp_child, '3', '签收', '2026-11-27 10:05:00');
is($r->{new} . '|' . $r->{unmatched} . '|' . $r->{shipments_changed}, '1|0|0',
	"pieces: Kuaidi100's push of the child is stored, not parked, and moves no status");
is( sql(qq{SELECT e.piece || '|' || e.status || '|' || e.order_key FROM shipsync.tracking_event e
		JOIN shipsync.provider p USING (provider_id) WHERE p.name = 'kd' AND e.tracking_number = '$mp_child'}),
	'child|delivered|MP-1', "pieces: the child's delivery is the order's event, tagged child");
my $route = encode_json({ Body => { WaybillRoute => [ { id => 'mp-r1', mailno => $mp_ret, orderid => 'MP-1',
	opCode => '80', acceptTime => '2026-11-28 09:00:00', remark => 'returned to sender' } ] } });
$r = decode_json(sql("SELECT shipsync.ingest_tracking('sf', convert_from('\\x" . unpack('H*', $route) . "', 'UTF8'))"));
is($r->{new} . '|' . $r->{unmatched} . '|' . $r->{shipments_changed}, '1|0|0',
	"pieces: SF's route push of the return waybill is stored and moves no status");
is( sql(qq{SELECT e.piece || '|' || e.raw_status || '|' || e.order_key FROM shipsync.tracking_event e
		JOIN shipsync.provider p USING (provider_id) WHERE p.name = 'sf' AND e.tracking_number = '$mp_ret'}),
	'return|80|MP-1', 'pieces: the return parcel back at the sender (opCode 80) is the order\'s event, tagged return');
isnt(sql("SELECT coalesce(ship_status, '') FROM orders_mp WHERE order_no = 'MP-1'"), 'delivered',
	'pieces: neither piece made the order delivered');
$r = kd_push($mp_main, '3', '签收', '2026-11-27 11:00:00');
is($r->{shipments_changed}, 1, "pieces: Kuaidi100's push of the main waybill changes the shipment");
is(sql("SELECT ship_status FROM orders_mp WHERE order_no = 'MP-1'"), 'delivered',
	'pieces: the main waybill delivered: the order row says so');

###########################################################################
# 11. registrations that fail: each stays about its own waybill
###########################################################################
# Kuaidi100 refuses the first subscription of MP-2 (the main waybill's)
# for good: the child's and the return's registrations still register
# them, not the main again; the DBA's retry() of the dead one re-sends the
# main's subscription, and what is recorded is the main, not a piece.
sim_post($sim, '/_sim/track/faults', { rules => [ { dialect => 'kuaidi100', status => 200, count => 1,
	body => { result => JSON::PP::false, returnCode => '700', message => '订阅参数错误' } } ] });
sql(q{INSERT INTO orders_mp (order_no, receiver_name, receiver_phone, receiver_province, receiver_city,
		receiver_district, receiver_address, cargo_name, quantity, weight_kg, amount, remark)
	VALUES ('MP-2', '郭襄阳', '189 6382 8829', '湖北省', '襄阳市', '襄城区', '湖北省襄阳市襄城区环城东路2号',
		'君宝牌地毯', 2, 6.6, 308, '')});
ok( wait_until($node, q{SELECT count(*) FILTER (WHERE o.state IN ('done', 'dead')) = 3 AND count(*) = 3
		FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'kd' AND o.op = 'register' AND o.order_key = 'MP-2'}, 30),
	'failed registration: the three registrations of MP-2 are settled');
my $mp2 = sf_get('orders?orderId=MP-2')->[0];
my ($mp2_main, $mp2_child, $mp2_ret) = ($mp2->{waybill}, $mp2->{children}[0], $mp2->{return} // 'none');
sub kd_numbers
{
	my %mine = map { $_ => 1 } @_;
	return join(',', sort grep { $mine{$_} } map { $_->{number} }
		grep { $_->{dialect} eq 'kuaidi100' } @{ sim_get($sim, '/_sim/track/registrations') });
}
is( sql(q{SELECT string_agg(o.state, ',' ORDER BY o.id) FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'kd' AND o.op = 'register' AND o.order_key = 'MP-2'}),
	'dead,done,done', 'failed registration: the main\'s registration is dead, the pieces\' done');
is( kd_numbers($mp2_main, $mp2_child, $mp2_ret), join(',', sort ($mp2_child, $mp2_ret)),
	'failed registration: the pieces were registered, not the main again');
is( sql(q{SELECT coalesce(s.tracking_number, '-') || '|' || (SELECT string_agg((w->>'waybillNo') || ':' || (w->>'waybillType'), ','
			ORDER BY w->>'waybillType') FROM jsonb_array_elements(s.waybills) w)
		FROM shipsync.shipment s JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'kd' AND s.order_key = 'MP-2'}),
	"-|$mp2_child:2,$mp2_ret:3", 'failed registration: the record holds the pieces, not the main');
# Kuaidi100 has no subscription of the main waybill: an event of it (as
# if pushed) is parked, and matched once its registration is recorded
$r = kd_push($mp2_main, '0', '揽收', '2026-11-29 08:00:00');
is($r->{new} . '|' . $r->{unmatched}, '0|1', 'failed registration: an event of the unregistered main waybill is parked');
sql(q{SELECT shipsync.retry(o.id) FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'kd' AND o.op = 'register' AND o.order_key = 'MP-2' AND o.state = 'dead'});
ok( wait_until($node, q{SELECT count(*) FILTER (WHERE o.state = 'done') = 3
		FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'kd' AND o.op = 'register' AND o.order_key = 'MP-2'}, 30),
	'failed registration: retried, the main\'s registration is done');
is( kd_numbers($mp2_main, $mp2_child, $mp2_ret), join(',', sort ($mp2_main, $mp2_child, $mp2_ret)),
	'failed registration: Kuaidi100 holds a subscription for each waybill of MP-2');
is( sql(q{SELECT coalesce(s.tracking_number, '-') || '|' || (SELECT string_agg((w->>'waybillNo') || ':' || (w->>'waybillType'), ','
			ORDER BY w->>'waybillType') FROM jsonb_array_elements(s.waybills) w)
		FROM shipsync.shipment s JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'kd' AND s.order_key = 'MP-2'}),
	"$mp2_main|$mp2_child:2,$mp2_ret:3", 'failed registration: the retried main is recorded as the main');
ok( wait_until($node, qq{SELECT count(*) = 1 FROM shipsync.tracking_event e JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'kd' AND e.tracking_number = '$mp2_main' AND e.order_key = 'MP-2' AND e.piece IS NULL}, 10),
	'failed registration: the parked event of the main waybill is the order\'s once it is registered');
# the tracking provider down when a multi-piece order shipped: its three
# registrations dead; retried (retry('kd'), the documented repair), each
# registers its own waybill once (each registration is enqueued with its
# waybill, so that its stored request and its record agree)
sim_post($sim, '/_sim/track/faults', { rules => [ { dialect => 'kuaidi100', status => 400, count => 3 } ] });
sql(q{INSERT INTO orders_mp (order_no, receiver_name, receiver_phone, receiver_province, receiver_city,
		receiver_district, receiver_address, cargo_name, quantity, weight_kg, amount, remark)
	VALUES ('MP-3', '郭襄阳', '189 6382 8829', '湖北省', '襄阳市', '襄城区', '湖北省襄阳市襄城区环城东路3号',
		'君宝牌地毯', 2, 6.6, 308, '')});
my $kd_mp3 = q{FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
	WHERE p.name = 'kd' AND o.op = 'register' AND o.order_key = 'MP-3'};
ok(wait_until($node, "SELECT count(*) FILTER (WHERE o.state = 'dead') = 3 AND count(*) = 3 $kd_mp3", 30),
	'provider down: the three registrations of MP-3 dead');
is(sql("SELECT shipsync.retry('kd')"), 3, 'provider down: the three retried');
ok(wait_until($node, "SELECT count(*) FILTER (WHERE o.state = 'done') = 3 $kd_mp3", 30),
	'provider down: the three done');
my $mp3 = sf_get('orders?orderId=MP-3')->[0];
my ($mp3_main, $mp3_child, $mp3_ret) = ($mp3->{waybill}, $mp3->{children}[0], $mp3->{return});
is( kd_numbers($mp3_main, $mp3_child, $mp3_ret), join(',', sort ($mp3_main, $mp3_child, $mp3_ret)),
	'provider down: Kuaidi100 holds a subscription for each waybill of MP-3 once retried');
is( sql("SELECT count(*) $kd_mp3 AND o.error_class = 'already_registered'"), 0,
	'provider down: no waybill registered twice');
is( sql(q{SELECT coalesce(s.tracking_number, '-') || '|' || (SELECT string_agg((w->>'waybillNo') || ':' || (w->>'waybillType'), ','
			ORDER BY w->>'waybillType') FROM jsonb_array_elements(s.waybills) w)
		FROM shipsync.shipment s JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'kd' AND s.order_key = 'MP-3'}),
	"$mp3_main|$mp3_child:2,$mp3_ret:3", 'provider down: the record holds what was registered');
$node->stop;
done_testing();
