# Tracking end to end: 1,000 orders are shipped at the simulator, which then
# moves every shipment through realistic statuses on a clock this test
# controls and pushes generic webhooks to a small receiver that calls
# shipsync.ingest_tracking() -- duplicating 20%, reordering 20%, dropping
# 10% and forging 5% of its pushes.  The dispatcher's poller fills what was
# dropped.  Every order must end with the status the simulator holds,
# written onto the order row, every event stored once, and no forged event
# stored.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use HTTP::Tiny;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use ShipsyncTest;

my $NORDERS = 1000;
my $SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';

my $sim = start_sim(seed => 7);
my $node = shipsync_node('tracking');
setup_orders($node, $sim,
	qq({"timeout_ms": 5000, "backoff_base_ms": 50, "backoff_max_ms": 500,
	    "webhook_secret": "$SECRET", "poll_interval_s": 2}));

# the shop's webhook endpoint: every push goes to ingest_tracking()
my ($rpid, $rport) = start_receiver($node, 'sim');

# 1. the orders become shipments at the simulator
$node->safe_psql('postgres',
	"INSERT INTO crm.orders (customer) SELECT '客户' || g FROM generate_series(1, $NORDERS) g");
ok(wait_until($node, 'SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL', 120),
	"$NORDERS orders shipped");

# The poller asks for a shipment's tracking as soon as it has a waybill:
# here before the simulator's clock runs, so every shipment's first event
# (the label created) is stored as pulled, and its pushes at the first step
# are duplicates.  That event must keep its place in event time, whichever
# way it came first.
ok( wait_until(
		$node, "SELECT count(DISTINCT order_key) = $NORDERS FROM shipsync.tracking_event", 120),
	'the first event of every shipment is pulled before the clock runs');

# 2. the simulator's clock runs; each step's events are pushed, with faults
sim_post(
	$sim,
	'/_sim/tracking/config',
	{
		url => "http://127.0.0.1:$rport/webhook",
		dialect => 'generic',
		secret => $SECRET,
		seed => 7,
		duplicate => 0.2,
		reorder => 0.2,
		drop => 0.1,
		forge => 0.05
	});

# What the simulator holds, as a table the database compares with; then
# wait for the poller to cover what was dropped.  Returns the number of
# events that happened so far.
sub agree
{
	my ($label, $norders) = @_;
	$norders //= $NORDERS;
	my $expected = sim_get($sim, '/_sim/tracking/expected');
	is(scalar(keys %$expected), $norders, "$label: the simulator tracks every shipment");
	my $values = join(
		",\n",
		map {
			sprintf("('%s', '%s', %s, %d)",
				$_, $expected->{$_}{tracking_number},
				defined $expected->{$_}{status} ? "'$expected->{$_}{status}'" : 'NULL',
				$expected->{$_}{events})
		} sort keys %$expected);
	$node->safe_psql('postgres',
		"DROP TABLE IF EXISTS expected;
		 CREATE TABLE expected (order_key text PRIMARY KEY, tracking_number text, status text, events int);
		 INSERT INTO expected VALUES $values;");
	ok( wait_until(
			$node,
			q{SELECT count(*) = 0 FROM expected x JOIN crm.orders o ON o.id::text = x.order_key
			  WHERE o.ship_status IS DISTINCT FROM coalesce(x.status, 'pre_transit')},
			120),
		"$label: every order row carries the status the simulator holds")
	  or diag $node->safe_psql(
		'postgres', q{SELECT x.order_key || ': ' || coalesce(o.ship_status, '-') || ' not '
			|| x.status || ' (' || x.events || ' events; stored: ' || (SELECT string_agg(e.event_key
			|| ' ' || e.status, ', ' ORDER BY e.occurred_at) FROM shipsync.tracking_event e
			WHERE e.order_key = x.order_key) || ')'
		  FROM expected x JOIN crm.orders o ON o.id::text = x.order_key
		  WHERE o.ship_status IS DISTINCT FROM coalesce(x.status, 'pre_transit') LIMIT 10})
	  . "\n" . join("\n", grep { /poll|deadlock|ERROR/ }
		  split(/\n/, PostgreSQL::Test::Utils::slurp_file($node->logfile)));
	is( $node->safe_psql(
			'postgres',
			q{SELECT count(*) FROM expected x JOIN shipsync.shipment s ON s.order_key = x.order_key
			  WHERE s.status = coalesce(x.status, 'pre_transit') AND s.tracking_number = x.tracking_number}),
		$norders,
		"$label: every shipment has it too");
	note "$label: statuses held: "
	  . $node->safe_psql(
		'postgres', q{SELECT string_agg(coalesce(status, '-') || ' ' || n, ', ' ORDER BY status)
		  FROM (SELECT status, count(*) n FROM expected GROUP BY status) s});
	return $node->safe_psql('postgres', 'SELECT sum(events) FROM expected');
}

# half way: failed deliveries, exceptions, pickups in flight
for my $step (1 .. 4)
{
	sim_post($sim, '/_sim/tracking/advance', { steps => 1 });
	flush_pushes($sim);
}
agree('at step 4');
is( $node->safe_psql(
		'postgres', q{SELECT count(DISTINCT status) >= 5 FROM expected}),
	't', 'at step 4: at least five different statuses are held');

# to the end of every timeline
for my $step (5 .. 9)
{
	sim_post($sim, '/_sim/tracking/advance', { steps => 1 });
	flush_pushes($sim);
}
my $stats = sim_get($sim, '/_sim/tracking/stats');
note explain $stats;
ok($stats->{dropped} > 0 && $stats->{duplicated} > 0 && $stats->{reordered} > 0
	  && $stats->{forged} > 0,
	"the simulator dropped $stats->{dropped}, duplicated $stats->{duplicated}, "
	  . "reordered $stats->{reordered} and forged $stats->{forged} of $stats->{pushes} pushes");
my $total_events = agree('at the end');

# every event once: duplicates dropped, dropped ones pulled
# Every event at most once (duplicates dropped), and every event of a
# shipment still in flight: the poller asks only for shipments that are not
# in a terminal status, so an early event of a delivered parcel whose push
# was dropped may be missing for good -- its status is right all the same.
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM (SELECT provider_id, event_key FROM shipsync.tracking_event
		  GROUP BY 1, 2 HAVING count(*) > 1) d}),
	'0', 'no event stored twice');
cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM shipsync.tracking_event'),
	'<=', $total_events, "no more events stored than the $total_events that happened");
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM expected x WHERE x.status = 'in_transit'
		  AND x.events <> (SELECT count(*) FROM shipsync.tracking_event e WHERE e.order_key = x.order_key)}),
	'0', 'every event of the shipments still in transit was stored, dropped ones pulled');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM shipsync.tracking_event WHERE event_key LIKE 'forged%'}),
	'0',
	'no forged event stored');
my $answers = decode_json(
	HTTP::Tiny->new->get("http://127.0.0.1:$rport/counts")->{content});
note explain $answers;
cmp_ok($answers->{SS401} // 0, '>=', $stats->{forged},
	'every forged push was refused with SQLSTATE SS401');
like(
	PostgreSQL::Test::Utils::slurp_file($node->logfile),
	qr/WARNING:  pg_shipsync: rejected a tracking push for provider "sim": no v1 signature/,
	'each refusal is logged with the provider and the reason');

# no echo: the write-backs made no intents
is($node->safe_psql('postgres', "SELECT count(*) FROM shipsync.outbox WHERE op <> 'create'"),
	'0', 'status write-backs enqueued nothing');

# 4. a push channel that goes quiet: every push is lost and half of the
# polls fail, and 30 more orders are still tracked to the end by the poller
my $before = decode_json(HTTP::Tiny->new->get("http://127.0.0.1:$rport/counts")->{content});
sim_post($sim, '/_sim/faults',
	{ rules => [ { fault => 'status', status => 503, method => 'GET', path => '/events$', rate => 0.5 } ] });
sim_post($sim, '/_sim/tracking/config',
	{ url => "http://127.0.0.1:$rport/webhook", dialect => 'generic', secret => $SECRET,
	  seed => 8, drop => 1 });
$node->safe_psql('postgres',
	"INSERT INTO crm.orders (customer) SELECT 'quiet ' || g FROM generate_series(1, 30) g");
ok(wait_until($node, 'SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL', 60),
	'30 more orders shipped');
for (1 .. 9)
{
	sim_post($sim, '/_sim/tracking/advance', { steps => 1 });
	flush_pushes($sim);
}
agree('with the push channel quiet', $NORDERS + 30);
my $after = decode_json(HTTP::Tiny->new->get("http://127.0.0.1:$rport/counts")->{content});
is_deeply($after, $before, 'no push reached the endpoint meanwhile');
like(
	PostgreSQL::Test::Utils::slurp_file($node->logfile),
	qr/LOG:  pg_shipsync: \d+ of \d+ tracking polls of provider "sim" failed or were not applied in the last round\n.*DETAIL:  The first: GET http:\S+\/events: HTTP 503/,
	'failed polls are summed up once per round');

# 5. NOTIFY: a change is announced with the binding and the order key only
my ($key, $tn) = split(/\|/,
	$node->safe_psql('postgres',
		q{SELECT o.id, o.waybill_no FROM crm.orders o JOIN expected x ON x.order_key = o.id::text
		  WHERE x.status = 'in_transit' ORDER BY o.id LIMIT 1}));
my $body = qq({"events": [{"id": "late-delivery-$key", "tracking_number": "$tn", "status": "delivered", "occurred_at": "2027-01-01T00:00:00Z"}]});
my $ts = time();
my (undef, $out, $err) = $node->psql(
	'postgres', qq{
	LISTEN shipsync;
	SELECT shipsync.ingest_tracking('sim', \$b\$$body\$b\$, jsonb_build_object(
		'webhook-id', 'msg_late', 'webhook-timestamp', '$ts',
		'webhook-signature', 'v1,' || encode(shipsync._hmac_sha256(
			decode('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'base64'),
			convert_to('msg_late.$ts.' || \$b\$$body\$b\$, 'UTF8')), 'base64')))->>'shipments_changed';
});
my $bid = $node->safe_psql('postgres', q{SELECT binding_id FROM shipsync.binding WHERE tbl = 'crm.orders'::regclass});
like($out, qr/Asynchronous notification "shipsync" with payload "\{"event": "status_changed", "binding_id": $bid, "order_key": "$key"\}"/,
	'the change is announced on channel shipsync, with kinds and ids only');
unlike($out, qr/delivered|in_transit|$tn/, 'the payload holds no status and no tracking number');
is($node->safe_psql('postgres', "SELECT ship_status FROM crm.orders WHERE id = $key"),
	'delivered', 'and written onto the order row in the same transaction');

# 5b. a delivered parcel stays delivered: the answer to an update of the
# order (the simulator answers with the status of its own record, which
# its clock has not moved yet) does not move a terminal status back
$node->safe_psql('postgres', "UPDATE crm.orders SET customer = customer || ' (paid)' WHERE id = $key");
ok( wait_until(
		$node,
		qq{SELECT count(*) = 1 FROM shipsync.outbox WHERE order_key = '$key' AND op = 'update' AND state = 'done'},
		60),
	'the update of a delivered order is sent');
is( $node->safe_psql(
		'postgres',
		qq{SELECT s.status || ' ' || o.ship_status FROM shipsync.shipment s
		   JOIN crm.orders o ON o.id::text = s.order_key AND s.provider_id = (SELECT provider_id FROM shipsync.provider WHERE name = 'sim')
		   WHERE o.id = $key}),
	'delivered delivered',
	'and its answer leaves the shipment and the order row delivered');

# 6. trace() shows the order's tracking events in time order
is( $node->safe_psql(
		'postgres', qq{SELECT count(*) FROM shipsync.trace('crm.orders', '$key') WHERE kind = 'tracking'}),
	$node->safe_psql('postgres', "SELECT events + 1 FROM expected WHERE order_key = '$key'"),
	'trace() lists every tracking event of the order');

kill 'TERM', $rpid;
waitpid($rpid, 0);
$node->stop;
stop_sim($sim);
done_testing();
