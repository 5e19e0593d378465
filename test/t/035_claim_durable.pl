# The durable render: a first attempt goes out only once its claim, the
# stored request, is on disk.
#
# The claim commits without waiting for its WAL flush, and the dispatcher
# flushes once, up to the last claim of its pass, before it sends anything
# (outbox_claims_durable(), src/outbox.c).  This test catches a send before
# that flush: nothing else flushes WAL while it runs (the WAL writer sleeps
# 10 s, the background writer writes no pages, no autovacuum, and the test
# itself writes nothing between the claim and the stop), so a claim that is
# not flushed when its request reaches the carrier is lost by the immediate
# stop that follows.  Then:
#   1. with the dispatcher off, the intent must be in flight, its attempt
#      counted and its request stored: the claim survived the stop;
#   2. with the dispatcher back, the intent is sent again under its key, and
#      the carrier holds exactly one shipment for the order, whose number is
#      written back.
# Twice: an order that is the first capture since the server started is
# drained into the outbox and claimed from there (the ids of the inbox
# are not known yet); an order captured after that is taken from the
# inbox straight into flight (src/dispatcher.c), its request stored by
# the take.  A trigger of the test's own notes the state each version of
# the outbox row had, to tell which way it went.
# Then for orders claimed while another request is on the wire, when the
# dispatcher hands the flush to the launcher (src/flush.c) and reaps
# answers meanwhile: the launcher must have written the WAL of those
# claims; and with the launcher stopped (SIGSTOP) the dispatcher must
# flush itself after a short wait.  One order claimed each way hangs at
# the carrier, and both claims must survive the immediate stop.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ShipsyncTest;

my $sim = start_sim();
my $node = shipsync_node('claimdur', 'wal_writer_delay = 10000ms',
	'bgwriter_lru_maxpages = 0', 'autovacuum = off');
# the retries after each restart meet 409 (in progress) until the hanging
# first attempt ends: short backoff, and attempts enough, so the order is
# sent again as soon as the carrier lets it
setup_orders($node, $sim, '{"timeout_ms": 60000, "max_inflight": 4,'
	. ' "backoff_base_ms": 100, "backoff_max_ms": 500, "max_attempts": 1000}');

# the dispatcher's first pass has read the inbox (empty): the first order
# below is then the first capture it hears of since the start
ok( wait_until($node,
		"SELECT seq_scan > 0 FROM pg_stat_user_tables WHERE relid = 'shipsync.inbox'::regclass", 30),
	'the dispatcher has looked at the inbox');

# which states the versions of each outbox row had, in order
note_outbox_versions($node);

sub scenario
{
	my ($label, $first_state) = @_;

	# the first request of each key hangs at the carrier for 5 s, long past
	# the immediate stop that follows its arrival
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'slow', ms => 5000, first_attempts => 1 } ] });
	my $arrived0 = scalar keys %{ sim_get($sim, '/_sim/attempts') };

	# the order's commit flushes everything before it; the claim comes after
	my $id = $node->safe_psql('postgres',
		"INSERT INTO crm.orders (customer, phone, address) VALUES ('王芳', '13800000001', '北京市朝阳区建国路 1 号') RETURNING id");

	# the request is at the carrier (counted on arrival, before the slow answer)
	my $arrived = 0;
	for (my $deadline = time() + 60; time() < $deadline; usleep(2_000))
	{
		$arrived = scalar(keys %{ sim_get($sim, '/_sim/attempts') }) - $arrived0;
		last if $arrived;
	}
	is($arrived, 1, "$label: the first request reached the carrier");
	$node->stop('immediate');

	# 1. the dispatcher off: what the crash left
	$node->append_conf('postgresql.conf', "shipsync.databases = ''\n");
	$node->start;
	is( $node->safe_psql(
			'postgres',
			"SELECT state || ' ' || attempts || ' ' || (request_body IS NOT NULL)"
			  . " || ' ' || (request_method IS NOT NULL) FROM shipsync.outbox WHERE order_key = '$id'"),
		'in_flight 1 true true',
		"$label: the claim whose request was sent survived the immediate stop: in flight, its attempt counted, its request stored"
	);
	is( $node->safe_psql(
			'postgres',
			"SELECT v.new_state FROM public.seen v JOIN shipsync.outbox o USING (id)"
			  . " WHERE o.order_key = '$id' ORDER BY v.n LIMIT 1"),
		$first_state, "$label: the intent's first row version was $first_state");
	my $key = $node->safe_psql('postgres',
		"SELECT idempotency_key FROM shipsync.outbox WHERE order_key = '$id'");
	$node->stop;

	# 2. the dispatcher back: sent again under the same key, created once
	sim_post($sim, '/_sim/faults', { rules => [] });
	$node->append_conf('postgresql.conf', "shipsync.databases = 'postgres'\n");
	$node->start;
	ok( wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE id = $id", 90),
		"$label: after the restart the order is written back");
	my $ships = sim_get($sim, "/_sim/shipments?order_ref=$id");
	is(scalar @$ships, 1, "$label: the carrier holds exactly one shipment");
	is($ships->[0]{idempotency_key}, $key, "$label: created under the key of the claim that survived");
	is( $node->safe_psql('postgres', "SELECT waybill_no FROM crm.orders WHERE id = $id"),
		$ships->[0]{tracking_number},
		"$label: the order row carries the carrier's tracking number");
}

# the first capture since the start: drained, then claimed
scenario('drained', 'pending');

# one more order since this start, delivered: the inbox's ids are known
my $prime = $node->safe_psql('postgres',
	"INSERT INTO crm.orders (customer) VALUES ('先来') RETURNING id");
ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE id = $prime", 30),
	'an order in between is delivered');

# the next: taken from the inbox straight into flight
scenario('taken', 'in_flight');

# Orders claimed while another request is on the wire: the dispatcher asks
# the launcher for the flush (src/flush.c) and reaps answers meanwhile; or,
# with the launcher stopped, flushes itself after a short wait.  Either
# way a request reaches the carrier only once its claim is on disk: the
# immediate stop at the end must not lose the claims of the two orders
# sent that way (one each way), whose requests hang at the carrier: held
# there until the stop (50 s at most, within the provider's 60 s timeout),
# however long the steps before it take.
my ($slow, $by_launcher, $by_dispatcher) = (1000, 1009, 1019);
sim_post($sim, '/_sim/faults',
	{ rules => [ { fault => 'slow', ms => 50000, held => JSON::PP::true, first_attempts => 1,
		match_order_ref => "^($slow|$by_launcher|$by_dispatcher)\$" } ] });

# insert order $id and wait for its request to reach the carrier
sub arrives
{
	my ($id, $what) = @_;
	my $arrived0 = scalar keys %{ sim_get($sim, '/_sim/attempts') };
	$node->safe_psql('postgres', "INSERT INTO crm.orders (id, customer) VALUES ($id, '慢单')");
	my $arrived = 0;
	for (my $deadline = time() + 60; time() < $deadline; usleep(2_000))
	{
		$arrived = scalar(keys %{ sim_get($sim, '/_sim/attempts') }) - $arrived0;
		last if $arrived;
	}
	is($arrived, 1, "on the wire: $what reached the carrier");
}

# the launcher's count of write() calls (/proc/PID/io): it writes nothing
# but the WAL it flushes for the dispatcher
my $launcher = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync launcher'");
like($launcher, qr/^\d+$/, 'on the wire: the launcher runs');
sub launcher_writes
{
	my $io = PostgreSQL::Test::Utils::slurp_file("/proc/$launcher/io");
	$io =~ /^syscw:\s*(\d+)/m or die "no syscw in /proc/$launcher/io";
	return $1;
}

# five orders delivered while $slow hangs; returns how many writes the
# launcher made meanwhile
sub five_beside
{
	my ($first, $label) = @_;
	my $writes0 = launcher_writes();
	for my $id ($first .. $first + 4)
	{
		$node->safe_psql('postgres', "INSERT INTO crm.orders (id, customer) VALUES ($id, '快单')");
		ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE id = $id", 30),
			"on the wire, $label: order $id is delivered while another hangs");
	}
	return launcher_writes() - $writes0;
}

arrives($slow, 'the first, slow request');
cmp_ok(five_beside($slow + 1, 'launcher'), '>', 0,
	'on the wire, launcher: the launcher wrote the WAL of their claims');
arrives($by_launcher, 'an order claimed beside it');

kill 'STOP', $launcher;
is(five_beside($slow + 11, 'launcher stopped'), 0,
	'on the wire, launcher stopped: it wrote nothing, the dispatcher flushed');
arrives($by_dispatcher, 'an order claimed while the launcher is stopped');
# a stopped process cannot obey the stop
kill 'CONT', $launcher;
$node->stop('immediate');
sim_post($sim, '/_sim/release', {});

$node->append_conf('postgresql.conf', "shipsync.databases = ''\n");
$node->start;
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(order_key || ' ' || state || ' ' || attempts || ' ' || (request_body IS NOT NULL), ', '"
		  . " ORDER BY order_key) FROM shipsync.outbox"
		  . " WHERE order_key IN ('$slow', '$by_launcher', '$by_dispatcher')"),
	"$slow in_flight 1 true, $by_launcher in_flight 1 true, $by_dispatcher in_flight 1 true",
	'on the wire: the claims whose requests were sent survived the immediate stop');
$node->stop;

sim_post($sim, '/_sim/faults', { rules => [] });
$node->append_conf('postgresql.conf', "shipsync.databases = 'postgres'\n");
$node->start;
for my $id ($slow, $by_launcher, $by_dispatcher)
{
	ok( wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE id = $id", 90),
		"on the wire: after the restart order $id is written back");
	is(scalar @{ sim_get($sim, "/_sim/shipments?order_ref=$id") }, 1,
		"on the wire: the carrier holds exactly one shipment of order $id");
}

$node->stop;
stop_sim($sim);
done_testing();
