# Reconciliation with SF Express, which has no list call: each order of
# the window is looked up (EXP_RECE_SEARCH_ORDER_RESP), within the
# provider's rate limit.
#
# Proves, against the simulator's SF gateway:
#   1. the lookups are one per live shipment of the window, no faster than
#      rate_limit_per_s, and an order SF lost is missing_at_carrier;
#   2. a busy gateway is asked again; a gateway that keeps failing fails the
#      pull, and the run (its CRM side compared all the same);
#   3. resync() creates the lost order again (SF's orderId), and the next
#      run closes its ticket.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ShipsyncTest;

my $sim = start_sim();
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node('reconcile_sf', "shipsync.reconcile_interval = 0",
	"shipsync.reconcile_at = ''");

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub run_reconcile_ok
{
	my ($run, $ended) = run_reconcile($node, 'sf');
	ok($ended, "run $run ended");
	return $run;
}

setup_sf_orders($node, $sim, '"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 300,
	"max_attempts": 6, "rate_limit_per_s": 20');
sql(q{
	INSERT INTO orders (order_no, receiver_name, receiver_phone, receiver_province, receiver_city,
		receiver_district, receiver_address, cargo_name, quantity, weight_kg, amount)
	SELECT 'SO-' || g, '李四', '13800138000', '湖北省', '襄阳市', '襄城区',
		   '湖北省襄阳市襄城区环城东路' || g || '号', '茶叶', 1, 1.5, 20
	FROM generate_series(1, 40) g;
});
ok(wait_until($node, "SELECT count(*) = 40 FROM orders WHERE waybill IS NOT NULL", 60),
	'40 orders delivered to SF');
# one order cancelled here: not looked up; SF loses two others
sql(q{UPDATE shipsync.shipment SET status = 'cancelled' WHERE order_key = 'SO-40';
	SET session_replication_role = replica;
	UPDATE orders SET ship_status = 'cancelled' WHERE order_no = 'SO-40'});
sim_post($sim, "/_sim/sf/forget?orderId=SO-$_", {}) for (7, 8);
my $searches0 = sim_get($sim, '/_sim/sf/stats');

###########################################################################
# 1. one lookup per live shipment, within the rate limit
###########################################################################
my $t0 = time();
my $run1 = run_reconcile_ok();
my $took = time() - $t0;
is( sql("SELECT state || '/' || pages || '/' || shipments_seen FROM shipsync.reconcile_run WHERE run_id = $run1"),
	'done/39/37', 'run 1: 39 lookups, 37 orders found');
is(sql("SELECT pulls->(provider_id::text)->>'mode' FROM shipsync.reconcile_run WHERE run_id = $run1"),
	'search', 'run 1: sf_express is looked up order by order');
cmp_ok($took, '>=', 39 / 20 - 1, 'run 1: no faster than rate_limit_per_s = 20 (bucket of 20 to start)');
is( sql(q{SELECT string_agg(order_key, ',' ORDER BY order_key) FROM shipsync.reconciliation
		WHERE kind = 'missing_at_carrier'}),
	'SO-7,SO-8', 'run 1: the orders SF lost are missing_at_carrier');
is(sql("SELECT count(*) FROM shipsync.exception_ticket WHERE resolved_at IS NULL"), 2,
	'run 1: nothing else is open');

###########################################################################
# 2. busy, then a gateway that keeps failing
###########################################################################
sim_post($sim, '/_sim/sf/faults', { rules => [
	{ fault => 'busy', service => 'EXP_RECE_SEARCH_ORDER_RESP', count => 3 } ] });
my $run2 = run_reconcile_ok();
is( sql("SELECT state || '/' || shipments_seen FROM shipsync.reconcile_run WHERE run_id = $run2"),
	'done/37', 'run 2: a busy gateway is asked again');
sim_post($sim, '/_sim/sf/faults', { rules => [
	{ fault => 'gateway_error', service => 'EXP_RECE_SEARCH_ORDER_RESP' } ] });
my $run3 = run_reconcile_ok();
like( sql("SELECT state || ': ' || error FROM shipsync.reconcile_run WHERE run_id = $run3"),
	qr/^failed: the pull of provider sf failed: .*A1099/, 'run 3: a failing gateway fails the pull');
is( sql(q{SELECT count(*) FROM shipsync.reconciliation WHERE kind = 'missing_at_carrier'}),
	2, 'run 3: the tickets it could not judge stay open');
sim_post($sim, '/_sim/sf/faults', { rules => [] });

###########################################################################
# 3. resync creates the lost ones again; the next run closes their tickets
###########################################################################
is(sql("SELECT shipsync.resync('orders', kind => 'missing_at_carrier')"), 2, 'resync: 2 orders');
ok( wait_until($node,
		q{SELECT NOT EXISTS (SELECT 1 FROM shipsync.outbox WHERE state IN ('pending', 'retrying', 'in_flight'))}, 60),
	'resync: sent');
is(scalar(@{ sim_get($sim, '/_sim/sf/orders?orderId=SO-7') }), 1, 'resync: SF holds SO-7 again');
my $run4 = run_reconcile_ok();
is( sql("SELECT state || '/' || closed FROM shipsync.reconcile_run WHERE run_id = $run4"),
	'done/2', 'run 4: the two tickets closed by themselves');
is(sql("SELECT count(*) FROM shipsync.exception_ticket WHERE resolved_at IS NULL"), 0,
	'run 4: nothing is open');
ok(!$node->log_contains('terminated by signal'), 'no process crashed');

done_testing();
