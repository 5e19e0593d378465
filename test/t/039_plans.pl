# An order at a trickle is not planned anew.  The statements that claim an
# intent and apply its answer find their rows by key from the batch's
# arrays; left to the plan cache, a batch of one got a custom plan at every
# execution (for a one-element array a custom plan is estimated cheaper than
# the generic one), some 600 µs of planning per order between the commit
# and the waybill.  They now always run their generic plans (outbox.c,
# apply.c), made once per process and again only when a table they read has
# doubled (src/spi.c).  So do the statements that read the order rows
# from the user's table and write the waybills back onto them: left to the
# plan cache, each was planned anew for every order at a trickle, and the
# first batches of a burst hash-joined the whole orders table.
#
# pg_stat_statements counts plans and executions of every nested statement:
# orders delivered and then updated one at a time must be executed by each
# of those statements without being planned again.  (Autovacuum is off so
# that no ANALYZE invalidates a plan in the middle.)  test/bench prints the
# latency itself.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $sim = start_sim();
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node(
	'plans',
	"shared_preload_libraries = 'pg_shipsync, pg_stat_statements'",
	'pg_stat_statements.track = all',
	'pg_stat_statements.track_planning = on',
	'autovacuum = off');
setup_orders($node, $sim);

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub deliver_one
{
	my ($i) = @_;
	my $id = sql("INSERT INTO crm.orders (customer, address) VALUES ('客户 $i', '杭州市西湖区文三路 $i 号') RETURNING id");
	return wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE id = $id", 30);
}

# the first order makes every plan; counting starts after it
ok(deliver_one(0), 'the first order is delivered');
sql('CREATE EXTENSION pg_stat_statements');
sql('SELECT pg_stat_statements_reset()');

my $delivered = 0;
for my $i (1 .. 10)
{
	$delivered++ if deliver_one($i);
}
is($delivered, 10, 'ten orders delivered one at a time');

my $updated = 0;
for my $id (2 .. 6)
{
	sql("UPDATE crm.orders SET address = address || ' 2 楼' WHERE id = $id");
	# this order's own update applied (the intent may still be in the inbox
	# right after the UPDATE, out of the outbox's sight)
	$updated++
	  if wait_until($node,
		"SELECT EXISTS (SELECT 1 FROM shipsync.outbox WHERE op = 'update' AND order_key = '$id' AND state = 'done')",
		30);
}
is($updated, 5, 'five of them updated one at a time');

# Each create is taken from the inbox straight into flight (the inbox's
# ids are known once the first order was captured); each update is moved
# into the outbox by the take and claimed from there.  [statement, how
# many runs at least]
my %statements = (
	'the take, reading the inbox' => [ 'SELECT i.id, i.binding_id, i.provider_id, i.order_key, i.op', 15 ],
	'the take, looking for intents to follow' => [ 'SELECT u.id FROM unnest($1, $2, $3) AS u(id, bid, k)', 10 ],
	'the take, moving intents in flight' => [ 'WITH d AS (DELETE FROM shipsync.inbox i', 15 ],
	'the claim, marking updates in flight' => [ 'UPDATE shipsync.outbox o SET state = CASE WHEN u.skip IS NULL', 5 ],
	'the take and the claim, reading the order rows (as their owner)' =>
	  [ 'SELECT shipsync_u.shipsync_id, t.id IS NOT NULL AS found', 15 ],
	'the apply, recording states' => [ 'UPDATE shipsync.outbox o SET state = u.state', 15 ],
	'the apply, recording shipments created' => [
		'INSERT INTO shipsync.shipment AS s (binding_id, order_key, provider_id, provider_shipment_id, tracking_number, label_url',
		10 ],
	'the apply, updating shipments' => [ 'UPDATE shipsync.shipment AS s SET tracking_number = COALESCE(u.tn', 5 ],
	'the apply, writing the waybill back onto the order rows (as their owner)' =>
	  [ 'UPDATE crm.orders AS t SET', 10 ]);
for my $what (sort keys %statements)
{
	my ($like, $least) = @{ $statements{$what} };
	$like =~ s/'/''/g;
	my ($calls, $plans) = split /\|/,
	  sql("SELECT coalesce(sum(calls), 0), coalesce(sum(plans), 0) FROM pg_stat_statements"
		  . " WHERE query LIKE '$like%'");
	cmp_ok($calls, '>=', $least, "$what: run for every order");
	# once at most: an invalidation (none is expected here) makes it again
	cmp_ok($plans, '<=', 1, "$what: not planned for each ($calls runs, $plans plans)");
}

# Each update here is made after its order's create was answered: there is
# never anything to coalesce, and the coalescing statement, which cost a
# probe of the outbox per create, is not run at all (TAP 048 coalesces).
is( sql(q{SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
		WHERE query LIKE 'UPDATE shipsync.outbox e SET state = ''coalesced''%'}),
	0, 'the claim, coalescing updates: not run while no later update waits');

done_testing();
