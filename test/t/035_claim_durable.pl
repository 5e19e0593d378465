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
setup_orders($node, $sim, '{"timeout_ms": 60000, "max_inflight": 4}');

# the first request of each key hangs at the carrier for 15 s
sim_post($sim, '/_sim/faults',
	{ rules => [ { fault => 'slow', ms => 15000, first_attempts => 1 } ] });

# the order's commit flushes everything before it; the claim comes after
$node->safe_psql('postgres',
	"INSERT INTO crm.orders (customer, phone, address) VALUES ('王芳', '13800000001', '北京市朝阳区建国路 1 号')");

# the request is at the carrier (counted on arrival, before the slow answer)
my $arrived = 0;
for (my $deadline = time() + 60; time() < $deadline; usleep(2_000))
{
	$arrived = scalar keys %{ sim_get($sim, '/_sim/attempts') };
	last if $arrived;
}
is($arrived, 1, 'the first request reached the carrier');
$node->stop('immediate');

# 1. the dispatcher off: what the crash left
$node->append_conf('postgresql.conf', "shipsync.databases = ''\n");
$node->start;
is( $node->safe_psql(
		'postgres',
		"SELECT state || ' ' || attempts || ' ' || (request_body IS NOT NULL)"
		  . " || ' ' || (request_method IS NOT NULL) FROM shipsync.outbox"),
	'in_flight 1 true true',
	'the claim whose request was sent survived the immediate stop: in flight, its attempt counted, its request stored'
);
my $key = $node->safe_psql('postgres', 'SELECT idempotency_key FROM shipsync.outbox');
$node->stop;

# 2. the dispatcher back: sent again under the same key, created once
sim_post($sim, '/_sim/faults', { rules => [] });
$node->append_conf('postgresql.conf', "shipsync.databases = 'postgres'\n");
$node->start;
ok(wait_until($node, 'SELECT count(*) = 1 FROM crm.orders WHERE waybill_no IS NOT NULL', 90),
	'after the restart the order is written back');
my $ships = sim_get($sim, '/_sim/shipments');
is(scalar @$ships, 1, 'the carrier holds exactly one shipment');
is($ships->[0]{idempotency_key}, $key, 'created under the key of the claim that survived');
is( $node->safe_psql('postgres', 'SELECT waybill_no FROM crm.orders'),
	$ships->[0]{tracking_number},
	'the order row carries the carrier\'s tracking number');

$node->stop;
stop_sim($sim);
done_testing();
