# The take reads the inbox once for a burst, and sends it from what it
# read.  The inbox has no index, so every read of it reads it whole; the
# take keeps the rows it read and moves them by their row ids in the takes
# after (src/outbox.c, "the inbox as the take last read it").  With
# shipsync.batch_size 8, an inbox that can hold more than 32 batches (256
# intents) is a large one.  Proves:
#   1. a burst of 1,000 is read once and taken: every create is inserted
#      in flight with its stored request, never pending, and sent once;
#      before, a burst this size was drained and claimed;
#   2. while a large burst waits for room in what the take read, an order
#      captured for another provider with room is sent at once, not after
#      the burst;
#   3. rows removed from the inbox behind the take's back, and the others
#      packed by VACUUM FULL, are neither sent nor in the way: the removed
#      orders never reach the carrier, every other order exactly once, and
#      no update before its create;
#   4. orders captured while a burst is sent from what was read, with
#      nothing after them, are read and sent once the rows kept are.
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
	'take_reads_once',
	"shared_preload_libraries = 'pg_shipsync, pg_stat_statements'",
	'pg_stat_statements.track = all',
	'shipsync.batch_size = 8',
	# no idle check within the test: whatever is taken is taken because a
	# commit or an answer woke the dispatcher
	'shipsync.idle_check_ms = 600000');
sub sql { return $node->safe_psql('postgres', $_[0]); }

setup_orders($node, $sim, '{"timeout_ms": 5000, "max_inflight": 16}');
sql(q{CREATE EXTENSION pg_stat_statements});
note_outbox_versions($node);

sub settled
{
	my ($where, $timeout) = @_;
	return wait_until($node, qq{SELECT NOT EXISTS (SELECT 1 FROM crm.orders o WHERE ($where)
		AND (o.waybill_no IS NULL OR EXISTS (SELECT 1 FROM shipsync.outbox x
			WHERE x.order_key = o.id::text AND x.state IN ('pending', 'retrying', 'in_flight'))))},
		$timeout // 60);
}

# the carrier's shipments per order_ref
sub shipments_by_ref
{
	my %n;
	$n{ $_->{order_ref} }++ for @{ sim_get($sim, '/_sim/shipments') };
	return \%n;
}

# slow_burst MS PREFIX N LABEL: the simulator answers crm.orders' orders
# (ids below a million) in MS ms; N orders PREFIX1..PREFIXN at once, and
# wait until the first of them is in the outbox
sub slow_burst
{
	my ($ms, $prefix, $n, $label) = @_;
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'slow', ms => $ms, match_order_ref => '^[0-9]{1,6}$' } ] });
	sql(qq{INSERT INTO crm.orders (customer, address)
		SELECT '$prefix' || g, g || ' Burst Rd' FROM generate_series(1, $n) g});
	ok( wait_until($node, qq{SELECT EXISTS (SELECT 1 FROM shipsync.outbox x
			JOIN crm.orders o ON o.id::text = x.order_key WHERE o.customer LIKE '$prefix%')}, 30),
		"$label: the burst is being sent");
}

# The first burst after a start is drained (the inbox's ids are not known
# until one was captured): one order first.
sql(q{INSERT INTO crm.orders (customer, address) VALUES ('first', '1 First St')});
ok(settled(q{o.customer = 'first'}), 'first order delivered');

# 1. a burst of 1,000
sql(q{SELECT pg_stat_statements_reset()});
sql(q{INSERT INTO crm.orders (customer, address)
	SELECT 'burst' || g, g || ' Burst Rd' FROM generate_series(1, 1000) g});
ok(settled(q{o.customer LIKE 'burst%'}, 120), 'burst: all 1,000 delivered');
is( sql(q{SELECT count(*) FROM public.seen s JOIN crm.orders o ON o.id::text = s.order_key
		WHERE o.customer LIKE 'burst%' AND s.old_state IS NULL AND s.new_state = 'in_flight'
		AND s.has_request}),
	1000, 'burst: every create was inserted in flight, with its stored request');
is( sql(q{SELECT count(*) FROM public.seen s JOIN crm.orders o ON o.id::text = s.order_key
		WHERE o.customer LIKE 'burst%' AND s.new_state = 'pending'}),
	0, 'burst: none was ever pending');
is( sql(q{SELECT string_agg(DISTINCT x.state || '|' || x.attempts, ',') FROM shipsync.outbox x
		JOIN crm.orders o ON o.id::text = x.order_key WHERE o.customer LIKE 'burst%'}),
	'done|1', 'burst: done in one attempt');
my $by_ref = shipments_by_ref();
my @burst_keys = split /\n/, sql(q{SELECT id FROM crm.orders WHERE customer LIKE 'burst%'});
is(scalar(grep { ($by_ref->{$_} // 0) == 1 } @burst_keys),
	1000, 'burst: the carrier has one shipment for each');
my ($reads, $moves) = split /\|/, sql(q{SELECT
	(SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
	  WHERE query LIKE 'SELECT i.id, i.binding_id, i.provider_id, i.order_key, i.op%'),
	(SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
	  WHERE query LIKE 'WITH d AS (DELETE FROM shipsync.inbox i%ctid%')});
cmp_ok($reads, '<=', 2, "burst: the inbox was read once ($reads reads)");
# 16 in flight at most: at least 63 takes
cmp_ok($moves, '>=', 63, "burst: sent by many takes from what was read ($moves)");

# 2. another provider's order while a large burst waits for room.  The
# simulator answers the burst's orders (ids below a million) in 300 ms:
# 16 at a time, 600 orders take about 11 s.
sql(q{
	CREATE TABLE crm.other (
		id bigint GENERATED ALWAYS AS IDENTITY (START WITH 1000000) PRIMARY KEY,
		customer text NOT NULL, address text, waybill_no text);
	SELECT shipsync.create_provider('sim2', 'generic', (SELECT base_url FROM shipsync.provider
		WHERE name = 'sim'), '{"timeout_ms": 5000}');
	SELECT shipsync.attach('crm.other', 'sim2', writeback => '{"tracking_number": "waybill_no"}');
});
slow_burst(300, 'wait', 600, 'waiting burst');
sql(q{INSERT INTO crm.other (customer, address) VALUES ('other', '1 Other Ave')});
ok( wait_until($node, q{SELECT waybill_no IS NOT NULL FROM crm.other WHERE customer = 'other'}, 60),
	'other provider: its order delivered');
my $left = sql(q{SELECT count(*) FROM crm.orders WHERE customer LIKE 'wait%' AND waybill_no IS NULL});
cmp_ok($left, '>=', 100, "other provider: sent before the burst was done ($left of 600 still waiting)");
ok(settled(q{o.customer LIKE 'wait%'}, 120), 'waiting burst: all 600 delivered');

# 3. rows removed behind the take's back.  The simulator is slower (600
# ms, 16 at a time: 300 orders take about 11 s); once the burst is read,
# 100 of its rows from the middle go from the inbox, the last 50 orders
# are updated, and VACUUM FULL packs the inbox: the rows after the gap,
# the updates among them, now sit at row ids the take kept for other
# rows.  A take that moved the row at a kept row id without checking its
# id would move an update into the outbox before its create, and send it
# first (to a carrier that has no such shipment yet).
slow_burst(600, 'gone', 300, 'removed rows');
my $removed_keys = sql(q{
	WITH r AS (DELETE FROM shipsync.inbox i USING crm.orders o
		WHERE i.order_key = o.id::text AND o.customer IN
			(SELECT 'gone' || g FROM generate_series(151, 250) g)
		RETURNING i.order_key)
	SELECT string_agg(quote_literal(order_key), ',') FROM r});
my @removed = map { s/'//gr } split /,/, $removed_keys;
is(scalar(@removed), 100, 'removed rows: the 100 were still in the inbox');
sql(q{UPDATE crm.orders SET address = address || ', 2nd floor'
	WHERE customer IN (SELECT 'gone' || g FROM generate_series(251, 300) g)});
sql(q{VACUUM FULL shipsync.inbox});
my %gone = map { $_ => 1 } @removed;
ok( settled(q{o.customer LIKE 'gone%' AND o.customer NOT IN
		(SELECT 'gone' || g FROM generate_series(151, 250) g)}, 180),
	'removed rows: every other order delivered');
$by_ref = shipments_by_ref();
is(scalar(grep { $by_ref->{$_} } @removed), 0, 'removed rows: none reached the carrier');
is(sql(qq{SELECT count(*) FROM shipsync.outbox WHERE order_key IN ($removed_keys)}),
	0, 'removed rows: none is in the outbox');
my @kept = grep { !$gone{$_} } split /\n/, sql(q{SELECT id FROM crm.orders
	WHERE customer LIKE 'gone%'});
is(scalar(@kept), 200, 'removed rows: 200 others');
is(scalar(grep { ($by_ref->{$_} // 0) == 1 } @kept),
	200, 'removed rows: the carrier has exactly one shipment for each other order');
my $kept_keys = join(',', map { "'$_'" } @kept);
is( sql(qq{SELECT string_agg(DISTINCT state || '|' || attempts, ',') FROM shipsync.outbox
		WHERE order_key IN ($kept_keys) AND op = 'create'}),
	'done|1', 'removed rows: the others created in one attempt');
is( sql(qq{SELECT count(*) FROM shipsync.outbox
		WHERE order_key IN ($kept_keys) AND op = 'update' AND state IN ('done', 'coalesced')}),
	50, 'removed rows: the 50 updates sent or carried by their creates');
is( sql(q{SELECT count(*) FROM shipsync.outbox c JOIN shipsync.outbox u USING (binding_id, order_key)
		WHERE c.op = 'create' AND u.op = 'update' AND u.state = 'done'
		AND u.updated_at < c.done_at}),
	0, 'removed rows: no update was sent before its create was answered');
is(sql(q{SELECT count(*) FROM shipsync.exception_ticket}), 0, 'removed rows: no ticket');
# 4. orders captured while a burst is sent from what was read, and nothing
# after them: once the rows kept are all sent, the take reads the inbox
# again for them rather than going idle (before the fix, they waited for
# the next commit, or 20,000 orders in transactions of 250 for minutes:
# TAP 023)
sim_post($sim, '/_sim/faults', { rules => [] });
# sim2 paused: the burst's provider alone takes
sql(q{SELECT shipsync.pause('sim2')});
slow_burst(100, 'late', 300, 'captured meanwhile');
sql(q{INSERT INTO crm.orders (customer, address)
	SELECT 'later' || g, g || ' Later Rd' FROM generate_series(1, 10) g});
ok(settled(q{o.customer LIKE 'late%'}, 60),
	'captured meanwhile: the burst and the ten orders after it delivered');

is(sql(q{SELECT count(*) FROM shipsync.inbox}), 0, 'the inbox is empty');

done_testing();
