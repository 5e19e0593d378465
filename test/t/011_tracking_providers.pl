# Tracking dialects: every new waybill registered at the binding's
# tracking_provider, end to end.
#
# One simulator plays the shipping carrier (generic) and the three tracking
# providers, checking their credentials as they would (EasyPost Basic with
# the API key, AfterShip as-api-key, the Kuaidi100 key inside param).
# Proves, for easypost, aftership and kuaidi100:
#   1. each new waybill becomes a registration intent at the tracking
#      provider, delivered, and recorded as that provider's shipment;
#   2. a waybill already registered there (EasyPost's same tracker,
#      AfterShip 4003, Kuaidi100 501) is a success;
#   3. refused credentials: dead with an auth ticket, not retried, and the
#      shipping side goes on;
#   4. a transient error is retried, also inside a 2xx (AfterShip's
#      meta.code); a refusal inside a 2xx is a business error;
#   5. the Kuaidi100 key is never stored in the outbox;
#   6. a waybill that reads like one of the Kuaidi100 placeholders (the
#      shipping carrier chose it) is sent as it is: the key and the salt go
#      where they belong, and a push signed with that salt is accepted.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use ShipsyncTest;

my $sim = start_sim(args => [ '--easypost', 'EZTK-test-key', '--aftership', 'as-key-1',
		'--kuaidi100-key', 'kd-key-1' ]);
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node('tracking');

sub sql { return $node->safe_psql('postgres', $_[0]); }
sub tstats { return sim_get($sim, '/_sim/track/stats'); }

my $u = $sim->{url};
my $common = '"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 300, "max_attempts": 5';
sql(qq{
	CREATE EXTENSION pg_shipsync;
	SELECT shipsync.create_provider('ship', 'generic', '$u', '{$common}');
	SELECT shipsync.create_provider('ep', 'easypost', '$u', '{$common, "carrier": "SFExpress",
		"auth": {"type": "basic", "username": "EZTK-test-key"}}');
	SELECT shipsync.create_provider('as', 'aftership', '$u', '{$common, "slug": "sf-express",
		"auth": {"type": "api_key", "header": "as-api-key", "key": "as-key-1"}}');
	SELECT shipsync.create_provider('kd', 'kuaidi100', '$u', '{$common, "company": "shunfeng",
		"callback_url": "https://shop.example/hooks/kuaidi100", "webhook_secret": "s4lt",
		"auth": {"type": "kuaidi100", "customer": "CUST1", "key": "kd-key-1"}}');
	SELECT shipsync.create_provider('ep_bad', 'easypost', '$u', '{$common,
		"auth": {"type": "basic", "username": "wrong-key"}}');
});
for my $t (qw(ep as kd ep_bad))
{
	sql(qq{CREATE TABLE o_$t (id bigint PRIMARY KEY, customer text, waybill_no text);
		SELECT shipsync.attach('o_$t', 'ship', writeback => '{"tracking_number": "waybill_no"}',
			options => '{"tracking_provider": "$t"}');});
}

sub registered
{
	my ($t, $n) = @_;
	return wait_until($node,
		qq{SELECT count(*) = $n FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
		   WHERE p.name = '$t' AND o.op = 'register' AND o.state = 'done'}, 30);
}

# 1. registrations
for my $t (qw(ep as kd))
{
	sql("INSERT INTO o_$t SELECT g, 'c' || g FROM generate_series(1, 5) g");
}
for my $t (qw(ep as kd))
{
	ok(registered($t, 5), "$t: five waybills registered");
	is( sql(qq{SELECT count(*) FROM shipsync.shipment s JOIN shipsync.provider p USING (provider_id)
			JOIN o_$t o ON o.id::text = s.order_key
			WHERE p.name = '$t' AND s.tracking_number = o.waybill_no}),
		5, "$t: recorded as the tracking provider's shipments, on the shipped waybills");
}
my $st = tstats();
is(join('|', map { $st->{registered}{$_} } qw(easypost aftership kuaidi100)), '5|5|5',
	'each tracking provider holds five registrations');
my $regs = sim_get($sim, '/_sim/track/registrations');
my ($kdr) = grep { $_->{dialect} eq 'kuaidi100' } @$regs;
my ($epr) = grep { $_->{dialect} eq 'easypost' } @$regs;
my ($asr) = grep { $_->{dialect} eq 'aftership' } @$regs;
is($kdr->{carrier} . '|' . $kdr->{callbackurl}, 'shunfeng|https://shop.example/hooks/kuaidi100',
	'kuaidi100: company and callback url subscribed');
is($epr->{carrier} . '|' . $asr->{carrier}, 'SFExpress|sf-express', 'easypost carrier, aftership slug');
like(sql(q{SELECT string_agg(provider_shipment_id, ',') FROM shipsync.shipment s
	JOIN shipsync.provider p USING (provider_id) WHERE p.name = 'ep'}), qr/^trk_/,
	'easypost: the tracker id is kept');
is( sql(q{SELECT count(*) FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'kd' AND o.request_body LIKE '%kd-key-1%'}),
	0, 'kuaidi100: the key is not stored in the outbox');
like( sql(q{SELECT r.body FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id),
		shipsync.render_request(o.id) r WHERE p.name = 'kd' LIMIT 1}),
	qr/^schema=json&param=.*__SHIPSYNC_KUAIDI100_KEY__/, 'render_request shows the placeholder, not the key');

# 2. already registered is a success
sql(q{UPDATE shipsync.outbox SET state = 'retrying', attempts = 0, next_attempt_at = now()
	WHERE op = 'register' AND provider_id IN (SELECT provider_id FROM shipsync.provider WHERE name IN ('ep', 'as', 'kd'))
	AND order_key = '1'; SELECT shipsync._wake(false);});
ok(wait_until($node, q{SELECT count(*) = 3 FROM shipsync.outbox WHERE op = 'register' AND order_key = '1' AND state = 'done'
	AND provider_id IN (SELECT provider_id FROM shipsync.provider WHERE name IN ('ep', 'as', 'kd'))}, 30),
	'registering again: done');
$st = tstats();
is(join('|', map { $st->{duplicates}{$_} // 0 } qw(easypost aftership kuaidi100)), '1|1|1',
	'the providers saw the duplicates (same tracker, 4003, 501)');
is( sql(q{SELECT string_agg(coalesce(error_class, 'ok'), ',' ORDER BY provider_id) FROM shipsync.outbox
		WHERE op = 'register' AND order_key = '1'
		AND provider_id IN (SELECT provider_id FROM shipsync.provider WHERE name IN ('ep', 'as', 'kd'))}),
	'ok,already_registered,already_registered', 'EasyPost returns its tracker; 4003 and 501 say already registered');

# 3. refused credentials
sql("INSERT INTO o_ep_bad VALUES (100, 'x')");
ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM o_ep_bad WHERE id = 100", 30),
	'bad tracking key: the shipment itself is made');
ok( wait_until($node, q{SELECT state = 'dead' FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'ep_bad' AND o.op = 'register'}, 30), 'bad tracking key: the registration is dead');
is( sql(q{SELECT error_class || '|' || attempts FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'ep_bad'}), 'auth|1', 'bad tracking key: auth, one attempt');
is( sql(q{SELECT count(*) FROM shipsync.exception_ticket t JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'ep_bad' AND t.kind = 'auth_failed'}), 1, 'bad tracking key: an auth_failed ticket');

# 4. transient errors are retried
sim_post($sim, '/_sim/track/faults', { rules => [
	{ dialect => 'kuaidi100', status => 200, count => 1,
	  body => { result => JSON::PP::false, returnCode => '500', message => '服务器错误' } },
	{ dialect => 'aftership', status => 503, count => 1 } ] });
sql("INSERT INTO o_kd VALUES (6, 'c6'); INSERT INTO o_as VALUES (6, 'c6');");
ok(registered('kd', 6) && registered('as', 6), 'after a 500 inside a 200 and a 503: registered');
is( sql(q{SELECT string_agg(p.name || ':' || o.attempts, ',' ORDER BY p.name) FROM shipsync.outbox o
		JOIN shipsync.provider p USING (provider_id) WHERE o.op = 'register' AND o.order_key = '6'}),
	'as:2,kd:2', 'each on its second attempt');
# AfterShip's failure inside a 2xx, by its meta.code: a 503 is retried, a
# 4xxx refusal is a business error (dead, never taken for a success)
sim_post($sim, '/_sim/track/faults', { rules => [
	{ dialect => 'aftership', status => 200, count => 1,
	  body => { meta => { code => 503, message => 'Service Unavailable' }, data => {} } },
	{ dialect => 'aftership', status => 200, count => 1,
	  body => { meta => { code => 4005, message => 'The value of `tracking_number` is invalid.' }, data => {} } } ] });
sql("INSERT INTO o_as VALUES (7, 'c7')");
ok(wait_until($node, q{SELECT state IN ('done', 'dead') FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'as' AND o.op = 'register' AND o.order_key = '7'}, 30), 'aftership failure in a 2xx: settled');
is( sql(q{SELECT o.state || '|' || o.attempts || '|' || coalesce(o.error_class, '') FROM shipsync.outbox o
		JOIN shipsync.provider p USING (provider_id) WHERE p.name = 'as' AND o.op = 'register' AND o.order_key = '7'}),
	'dead|2|business_error', 'aftership: a 503 in a 200 retried, then a 4005 in a 200 dead as a business error');
is( sql(q{SELECT string_agg(coalesce(l.error_class, 'ok'), ',' ORDER BY l.attempt) FROM shipsync.delivery_log l
		WHERE l.outbox_id = (SELECT o.id FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
			WHERE p.name = 'as' AND o.op = 'register' AND o.order_key = '7')}),
	'business_retry,business_error', 'aftership failure in a 2xx: logged as business_retry, then business_error');

# 5. the whole chain: shipped by 'ship', registered at Kuaidi100, whose
# signed push (the salt is kd's webhook_secret, sent with the
# subscription) moves the order row's status
sql(q{CREATE TABLE o_chain (id bigint PRIMARY KEY, customer text, waybill_no text, ship_status text);
	SELECT shipsync.attach('o_chain', 'ship',
		writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}',
		options => '{"tracking_provider": "kd"}');
	INSERT INTO o_chain VALUES (50, 'c50');});
ok(wait_until($node, q{SELECT count(*) = 1 FROM shipsync.shipment s JOIN shipsync.provider p USING (provider_id)
	WHERE p.name = 'kd' AND s.order_key = '50'}, 30), 'chain: registered at kuaidi100');
my ($chain_reg) = grep { $_->{dialect} eq 'kuaidi100' && $_->{number} eq
	  sql("SELECT waybill_no FROM o_chain WHERE id = 50") } @{ sim_get($sim, '/_sim/track/registrations') };
is($chain_reg->{salt}, 's4lt', 'chain: the subscription carries webhook_secret as its salt');
# A Kuaidi100 push of "delivered" for the waybill of row $id of $table,
# signed with $salt: what ingest_tracking() says it changed
sub push_delivered
{
	my ($table, $id, $salt) = @_;
	return sql(qq{
	WITH p AS (
		SELECT json_build_object('status', 'polling', 'lastResult', json_build_object(
			'state', '3', 'ischeck', '1', 'com', 'shunfeng', 'nu', waybill_no,
			'data', json_build_array(
				json_build_object('context', '已签收，签收人：本人', 'time', '2026-11-27 10:05:00',
					'ftime', '2026-11-27 10:05:00', 'status', '签收', 'areaName', '深圳市'),
				json_build_object('context', '快件已揽收', 'time', '2026-11-26 18:00:00',
					'ftime', '2026-11-26 18:00:00', 'status', '揽收', 'areaName', '深圳市')))
		)::text AS param
		FROM $table WHERE id = $id),
	f AS (
		SELECT 'param=' || (SELECT string_agg(CASE WHEN c ~ '^[A-Za-z0-9._~-]\$' THEN c
				ELSE upper(regexp_replace(encode(convert_to(c, 'UTF8'), 'hex'), '(..)', '%\\1', 'g')) END,
				'' ORDER BY n) FROM regexp_split_to_table(param, '') WITH ORDINALITY AS t(c, n))
			|| '&sign=' || upper(md5(param || '$salt')) AS body
		FROM p)
	SELECT shipsync.ingest_tracking('kd', body)->>'shipments_changed' FROM f});
}
is(push_delivered('o_chain', 50, 's4lt'), '1', 'chain: the kuaidi100 push changed one shipment');
is(sql("SELECT ship_status FROM o_chain WHERE id = 50"), 'delivered',
	'chain: the order row says delivered');

# 6. waybills that read like the placeholders, as the shipping carrier
# answered them
sql(q{CREATE TABLE o_ph (id bigint PRIMARY KEY, customer text, waybill_no text, ship_status text);
	SELECT shipsync.attach('o_ph', 'ship',
		writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}',
		options => '{"tracking_provider": "kd"}');});
my %placeholder = (70 => '__SHIPSYNC_KUAIDI100_KEY__', 71 => '__SHIPSYNC_KUAIDI100_SALT__');
sim_post($sim, '/_sim/faults', { rules => [ map {
	{ fault => 'hostile', field => 'tracking_number', kind => 'text', text => $placeholder{$_},
	  path => '^/shipments$', match_order_ref => "^$_\$" } } sort keys %placeholder ] });
sql("INSERT INTO o_ph VALUES (70, 'c70'), (71, 'c71')");
ok( wait_until($node, q{SELECT count(*) = 2 FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'kd' AND o.op = 'register' AND o.order_key IN ('70', '71') AND o.state IN ('done', 'dead')}, 30),
	'placeholder waybills: both registrations ended');
$regs = sim_get($sim, '/_sim/track/registrations');
for my $id (sort keys %placeholder)
{
	my $number = $placeholder{$id};
	is( sql(qq{SELECT o.state || '|' || s.tracking_number FROM shipsync.outbox o
			JOIN shipsync.provider p USING (provider_id)
			LEFT JOIN shipsync.shipment s ON s.provider_id = o.provider_id AND s.order_key = o.order_key
			WHERE p.name = 'kd' AND o.op = 'register' AND o.order_key = '$id'}),
		"done|$number", "placeholder waybill $number: registered, the key accepted");
	my ($reg) = grep { $_->{dialect} eq 'kuaidi100' && $_->{number} eq $number } @$regs;
	is(($reg ? $reg->{salt} : 'no registration of that number') // 'no salt', 's4lt',
		"placeholder waybill $number: Kuaidi100 got the number as it is, and the salt");
	is($reg && $reg->{salt} ? push_delivered('o_ph', $id, $reg->{salt}) : 'no salt to sign with', '1',
		"placeholder waybill $number: a push signed with that salt is accepted");
}
is(join(',', map { $_->{number} } grep { $_->{dialect} eq 'kuaidi100' && ($_->{number} eq 'kd-key-1' || $_->{number} eq 's4lt') } @$regs),
	'', 'no secret was registered as a waybill');
is( sql(q{SELECT count(*) FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
		WHERE p.name = 'kd' AND (o.request_body LIKE '%kd-key-1%' OR o.request_body LIKE '%s4lt%')}),
	0, 'placeholder waybills: neither secret is stored in the outbox');

$node->stop;
done_testing();
