# Tracking pushes in every dialect of the simulator: EasyPost (hex HMAC,
# the Tracker's whole history), AfterShip (base64 HMAC, checkpoints),
# Kuaidi100 (form param + MD5 sign, the whole history, Shanghai times) and
# SF Express (unsigned route pushes, authenticated by the endpoint).  For
# each, 40 orders are shipped at a simulator of their own, registered with
# a tracking provider of that dialect, and tracked to the end while pushes
# are duplicated, reordered, delayed and forged: every push the endpoint passes on
# is read, no forged event is stored, and every order ends with the status
# its dialect's status_map gives for the simulator's last event.  10% of
# the pushes are also delayed to the next step of the clock.
use strict;
use warnings;
use utf8;
use Encode qw(encode_utf8);
use FindBin;
use lib $FindBin::RealBin;
use HTTP::Tiny;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use ShipsyncTest;

my $NORDERS = 40;
my $node = shipsync_node('dialects');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_shipsync; CREATE SCHEMA crm;');

# The canonical status each dialect's map gives for the simulator's last
# event (pusher.py's RAW table through the seeded status_map): EasyPost has
# no "returned" (return_to_sender is returning); SF's route opCodes know
# no return, so a returned parcel's pushes stop at out_for_delivery.
my %final = (
	easypost => { delivered => 'delivered', in_transit => 'in_transit', returned => 'returning' },
	aftership => { delivered => 'delivered', in_transit => 'in_transit', returned => 'returned' },
	kuaidi100 => { delivered => 'delivered', in_transit => 'in_transit', returned => 'returned' },
	sf_express =>
	  { delivered => 'delivered', in_transit => 'in_transit', returned => 'out_for_delivery' });
my %secret = (
	easypost => 'sécret',
	aftership => '95f35e6b3dbc26527029cbd9cfa51b87',
	kuaidi100 => 'salt-8f2c',
	sf_express => '');

for my $dialect (qw(easypost aftership kuaidi100 sf_express))
{
	my $sim = start_sim(seed => 11);
	my $tbl = "crm.orders_$dialect";

	# shipped at the simulator by a generic provider, tracked by another
	# the secret as UTF-8 bytes for psql; as characters for the simulator
	# (with the credentials each dialect requires, though nothing is sent to
	# it here: the waybills are given to it below)
	my %auth = (
		easypost => '"auth": {"type": "basic", "username": "EZTK-key"}',
		aftership => '"auth": {"type": "api_key", "header": "as-api-key", "key": "as-key"}',
		kuaidi100 => '"auth": {"type": "kuaidi100", "customer": "C", "key": "K"},'
		  . ' "company": "shunfeng", "callback_url": "https://shop.example/hooks/kuaidi100"',
		sf_express => '"auth": {"type": "sf_express", "partner_id": "P", "checkword": "cw"}');
	my $options = $dialect eq 'sf_express'
	  ? qq({"accept_unsigned_pushes": true, $auth{$dialect}})
	  : encode_utf8(qq({"webhook_secret": "$secret{$dialect}", $auth{$dialect}}));
	$node->safe_psql(
		'postgres', qq{
		CREATE TABLE $tbl (id bigserial PRIMARY KEY, customer text, waybill_no text, ship_status text);
		SELECT shipsync.create_provider('ship_$dialect', 'generic', '$sim->{url}',
			'{"backoff_base_ms": 50, "backoff_max_ms": 500}');
		SELECT shipsync.attach('$tbl', 'ship_$dialect',
			writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}');
		SELECT shipsync.create_provider('trk_$dialect', '$dialect', 'https://tracking.example', '$options');
		INSERT INTO $tbl (customer) SELECT 'c' || g FROM generate_series(1, $NORDERS) g;
	});
	ok(wait_until($node, "SELECT count(*) = 0 FROM $tbl WHERE waybill_no IS NULL", 60),
		"$dialect: $NORDERS orders shipped");
	# the tracking provider knows the waybills (as after registering them)
	$node->safe_psql(
		'postgres', qq{
		INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number)
		SELECT s.binding_id, s.order_key, t.provider_id, s.tracking_number
		FROM shipsync.shipment s JOIN shipsync.provider p ON p.provider_id = s.provider_id,
			 shipsync.provider t
		WHERE p.name = 'ship_$dialect' AND t.name = 'trk_$dialect'});

	my ($rpid, $rport) = start_receiver($node, "trk_$dialect");
	sim_post(
		$sim,
		'/_sim/tracking/config',
		{
			url => "http://127.0.0.1:$rport/$dialect",
			dialect => $dialect,
			secret => $secret{$dialect},
			seed => 11,
			duplicate => 0.2,
			reorder => 0.2,
			delay => 0.1,
			forge => 0.1
		});
	for (1 .. 9)
	{
		sim_post($sim, '/_sim/tracking/advance', { steps => 1 });
		flush_pushes($sim);
	}
	my $stats = sim_get($sim, '/_sim/tracking/stats');
	my $answers = decode_json(HTTP::Tiny->new->get("http://127.0.0.1:$rport/")->{content});
	note "$dialect: " . encode_json({ sim => $stats, receiver => $answers });

	is(($answers->{SS400} // 0) + ($answers->{XX000} // 0), 0,
		"$dialect: every push was read (no SS400)");
	ok($stats->{forged} > 0 && ($answers->{SS401} // 0) >= $stats->{forged},
		"$dialect: the $stats->{forged} forged pushes were refused");
	is( $node->safe_psql(
			'postgres', qq{SELECT count(*) FROM shipsync.tracking_event e
			  JOIN shipsync.provider p USING (provider_id)
			  WHERE p.name = 'trk_$dialect'
			  AND (e.event_key LIKE '%forged%' OR e.occurred_at >= '2026-03-01 00:00+00'::timestamptz + interval '40 hours')}),
		'0',
		"$dialect: no forged event stored");

	my $expected = sim_get($sim, '/_sim/tracking/expected');
	my @wrong;
	for my $ref (sort { $a <=> $b } keys %$expected)
	{
		my $want = $final{$dialect}{ $expected->{$ref}{status} }
		  // die "no expectation for $expected->{$ref}{status}";
		my $got =
		  $node->safe_psql('postgres', "SELECT ship_status FROM $tbl WHERE id = $ref");
		push @wrong, "$ref: $got, not $want" if $got ne $want;
	}
	is(scalar(@wrong), 0, "$dialect: every order row holds its dialect's final status")
	  or diag join("\n", @wrong);
	cmp_ok(
		$node->safe_psql(
			'postgres', qq{SELECT count(*) FROM shipsync.tracking_event e
			  JOIN shipsync.provider p USING (provider_id) WHERE p.name = 'trk_$dialect'}),
		'>=', 3 * $NORDERS, "$dialect: the histories were stored");

	kill 'TERM', $rpid;
	waitpid($rpid, 0);
	stop_sim($sim);
}

# Events before their shipment: a push for a tracking number the dispatcher
# has not recorded yet is parked; when the dispatcher records the shipment
# (the create's answer, pre_transit, written back first), the parked
# events are matched in the same transaction and their status wins.  The
# simulator's first tracking number follows from its seed.
{
	my $sim = start_sim(seed => 5);
	my $tn = `python3 -c 'import random; print("SIM%012d" % random.Random("tracking:5").randrange(10**12))'`;
	chomp $tn;
	$node->safe_psql(
		'postgres', qq{
		CREATE TABLE crm.early (id bigserial PRIMARY KEY, customer text, waybill_no text, ship_status text);
		SELECT shipsync.create_provider('early', 'generic', '$sim->{url}',
			'{"webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}');
		SELECT shipsync.pause('early');
		SELECT shipsync.attach('crm.early', 'early',
			writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}');
		INSERT INTO crm.early (customer) VALUES ('first');
	});
	my $body = qq({"events": [{"id": "early-1", "tracking_number": "$tn", "status": "in_transit", "occurred_at": "2026-03-01T01:00:00Z"}, {"id": "early-2", "tracking_number": "$tn", "status": "out_for_delivery", "occurred_at": "2026-03-01T02:00:00Z"}]});
	my $ts = time();
	is( $node->safe_psql(
			'postgres', qq{SELECT shipsync.ingest_tracking('early', \$b\$$body\$b\$, jsonb_build_object(
			'webhook-id', 'msg_early', 'webhook-timestamp', '$ts',
			'webhook-signature', 'v1,' || encode(shipsync._hmac_sha256(
				decode('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'base64'),
				convert_to('msg_early.$ts.' || \$b\$$body\$b\$, 'UTF8')), 'base64')))->>'unmatched'}),
		'2', 'events of a tracking number not recorded yet are parked');
	$node->safe_psql('postgres', "SELECT shipsync.resume('early')");
	ok( wait_until(
			$node, "SELECT waybill_no = '$tn' AND ship_status = 'out_for_delivery' FROM crm.early",
			60),
		'when the dispatcher records the shipment, the parked events apply over its write-back');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM shipsync.unmatched_event'),
		'0', 'nothing is left parked');

	# a tracking number that never comes: the dispatcher expires it, with a ticket
	$node->safe_psql('postgres',
		q{BEGIN; UPDATE shipsync.provider SET options = options || '{"unmatched_ttl_s": 1}' WHERE name = 'early';
		  SELECT shipsync._wake(true); COMMIT;});
	$body = qq({"events": [{"id": "never-1", "tracking_number": "NEVER1", "status": "in_transit", "occurred_at": "2026-03-01T01:00:00Z"}]});
	$ts = time();
	is( $node->safe_psql(
			'postgres', qq{SELECT shipsync.ingest_tracking('early', \$b\$$body\$b\$, jsonb_build_object(
			'webhook-id', 'msg_never', 'webhook-timestamp', '$ts',
			'webhook-signature', 'v1,' || encode(shipsync._hmac_sha256(
				decode('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'base64'),
				convert_to('msg_never.$ts.' || \$b\$$body\$b\$, 'UTF8')), 'base64')))->>'unmatched'}),
		'1', 'an event of an unknown tracking number is parked');
	ok( wait_until(
			$node, q{SELECT count(*) = 1 FROM shipsync.exception_ticket
			  WHERE kind = 'unmatched_expired' AND detail LIKE '%NEVER1%'},
			40),
		'the dispatcher expires it after unmatched_ttl_s, with an exception ticket');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM shipsync.unmatched_event'),
		'0', 'and nothing is left parked');
	stop_sim($sim);
}

$node->stop;
done_testing();
