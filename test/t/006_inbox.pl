# The inbox: capture writes an index-free heap, the dispatcher moves it into
# the outbox.  What a user relies on:
#   - intents of a paused provider are kept (in the inbox, counted as
#     pending by queue_status and shown by trace) and delivered on resume;
#   - the idle check does not move a paused provider's backlog, nor read
#     it at all unless a transaction that captured was prepared;
#   - the dispatcher's and its applier's writes reach the statistics
#     autovacuum reads while they run (a background worker must flush them
#     itself, and the applier its last ones once it is idle: it did not,
#     and the last second of a burst's updates waited for the next burst);
#   - an order committed by COMMIT PREPARED is delivered: the COMMIT
#     PREPARED wakes the dispatcher (it ran no transaction callback, and the
#     order waited for the idle check, up to shipsync.idle_check_ms);
#   - many intents captured at once are all moved and delivered once,
#     in chunks (the first small, so that the first requests go out at
#     once), an order's update never before its create;
#   - a paused provider's backlog, moved into the outbox when another
#     provider's commit drains the inbox, does not hold that provider's
#     orders back.
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
my $node = shipsync_node('inbox', "shipsync.idle_check_ms = 500",
	"max_prepared_transactions = 4");
setup_orders($node, $sim);
my $sql = sub { $node->safe_psql('postgres', $_[0]) };

# 0. one order delivered first: from then on the dispatcher knows the ids
# the inbox can hold, and takes a small burst straight into flight
$sql->("INSERT INTO crm.orders (customer) VALUES ('先')");
ok(wait_until($node, "SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL", 30),
	'first: an order delivered before the others');
my $sent0 = sim_get($sim, '/_sim/stats')->{requests};

# 1. paused: captured intents wait in the inbox, visible as pending; an
# idle check with another provider able to take work does not read them
$sql->("SELECT shipsync.create_provider('other', 'generic', '$sim->{url}')");
$sql->("SELECT shipsync.pause('sim')");
$sql->("INSERT INTO crm.orders (customer) SELECT '赵' || g FROM generate_series(1, 100) g");
my $inbox_scans = "SELECT seq_scan FROM pg_stat_user_tables WHERE relid = 'shipsync.inbox'::regclass";
# Every idle check sweeps the expired leases through outbox_lease_idx: its
# count grows only when the dispatcher flushes its statistics (at most once
# a second), with every scan of the inbox made before.  So the counts are
# read once checks made after the insert are published, and again after
# five more.
my $sweeps = "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelid = 'shipsync.outbox_lease_idx'::regclass";
my $swept = $sql->($sweeps);
ok(wait_until($node, "SELECT ($sweeps) >= $swept + 2", 30), 'paused: idle checks go on');
my $scans = $sql->($inbox_scans);
$swept = $sql->($sweeps);
ok(wait_until($node, "SELECT ($sweeps) >= $swept + 5", 30), 'paused: five more idle checks');
is($sql->($inbox_scans), $scans,
	'paused: idle checks with nothing prepared do not read the inbox');
is($sql->("SELECT count(*) FROM shipsync.inbox"), 100,
	'paused: the 100 intents stay in the inbox across idle checks');
is($sql->("SELECT count(*) FROM shipsync.outbox WHERE state <> 'done'"), 0,
	'paused: nothing moved to the outbox');
is($sql->("SELECT pending FROM shipsync.queue_status WHERE provider = 'sim'"), 100,
	'paused: queue_status counts them as pending');
my $first = $sql->("SELECT min(id) FROM crm.orders WHERE customer LIKE '赵%'");
like($sql->("SELECT detail->>'state' FROM shipsync.trace('crm.orders', '$first') WHERE kind = 'intent'"),
	qr/^captured$/, 'paused: trace shows the captured intent');
is(sim_get($sim, '/_sim/stats')->{requests}, $sent0, 'paused: nothing sent');

$sql->("SELECT shipsync.resume('sim')");
ok(wait_until($node, "SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL", 30),
	'resumed: every order got its waybill');
is($sql->("SELECT count(*) FROM shipsync.inbox"), 0, 'resumed: the inbox is empty');
is($sql->("SELECT count(*) FROM shipsync.outbox WHERE state = 'done'"), 101,
	'resumed: 100 intents done, and the first');
ok( wait_until(
		$node, "SELECT n_tup_ins >= 101 AND n_tup_upd >= 100 FROM pg_stat_user_tables
		WHERE relid = 'shipsync.outbox'::regclass", 10),
	'statistics: the running dispatcher\'s and applier\'s writes of the outbox are counted'
	  . ' (the 100 taken in flight, then done by the applier)');

# 2. COMMIT PREPARED: the order is delivered (section 6 shows that it is the
# COMMIT PREPARED that wakes the dispatcher, not its idle check)
$sql->("BEGIN; INSERT INTO crm.orders (customer) VALUES ('钱二'); PREPARE TRANSACTION 'p1'");
usleep(700_000);
my $t0 = time();
$sql->("COMMIT PREPARED 'p1'");
ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = '钱二'", 20),
	'prepared: an order committed by COMMIT PREPARED is delivered');
cmp_ok(time() - $t0, '<', 10, 'prepared: within a few idle checks');

# 3. a burst in one transaction: all moved, each delivered once
$sql->("INSERT INTO crm.orders (customer) SELECT '孙' || g FROM generate_series(1, 3000) g");
ok(wait_until($node, "SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL", 60),
	'burst: 3,000 orders delivered');
my $st = sim_get($sim, '/_sim/stats');
is($st->{shipments}, 3102, 'burst: the carrier holds one shipment per order');
is($st->{duplicate_orders}, 0, 'burst: none created twice');
is($sql->("SELECT count(*) FROM shipsync.outbox WHERE state = 'done' AND op = 'create'"), 3102,
	'burst: one done create intent per order');

# 4. creates and updates of the same orders in one transaction, more than
# one drain's worth: each update moves after its create (ids in order across
# chunks), so it is coalesced into the create or sent after it, never alone
my $before = sim_get($sim, '/_sim/stats');
$sql->(q{BEGIN;
	INSERT INTO crm.orders (customer) SELECT '周' || g FROM generate_series(1, 3000) g;
	UPDATE crm.orders SET address = 'Room ' || id WHERE customer LIKE '周%' AND id % 2 = 0;
	COMMIT;});
ok( wait_until(
		$node,
		"SELECT NOT EXISTS (SELECT 1 FROM shipsync.outbox WHERE state IN ('pending', 'retrying', 'in_flight'))"
		  . " AND NOT EXISTS (SELECT 1 FROM shipsync.inbox)", 60),
	'creates and updates: all delivered');
$st = sim_get($sim, '/_sim/stats');
is($st->{shipments} - $before->{shipments}, 3000, 'creates and updates: 3,000 shipments');
is($st->{duplicate_orders}, 0, 'creates and updates: none created twice');
is( $sql->(q{SELECT count(*) FROM shipsync.outbox o JOIN crm.orders c ON o.order_key = c.id::text
		WHERE c.customer LIKE '周%' AND o.op = 'update'
		AND NOT (o.state = 'coalesced' OR (o.state = 'done' AND o.error_class IS NULL))}),
	'0', 'creates and updates: each update coalesced into its create or sent');
is( $st->{updates} - $before->{updates} + $sql->(q{SELECT count(*) FROM shipsync.outbox o
		JOIN crm.orders c ON o.order_key = c.id::text
		WHERE c.customer LIKE '周%' AND o.op = 'update' AND o.state = 'coalesced'}),
	1500, 'creates and updates: the carrier saw each update, or its create carried it');
is( $sql->(q{SELECT count(*) FROM shipsync.outbox u JOIN shipsync.outbox c
		ON c.order_key = u.order_key AND c.op = 'create'
		WHERE u.op = 'update' AND u.state = 'done' AND u.updated_at < c.done_at}),
	'0', 'creates and updates: no update was done before its create');

# 5. a paused provider's backlog does not hold the other providers' orders:
# a commit for a provider that can send drains the inbox, paused
# providers' intents too (so that the inbox, which has no index, stays
# small), but the intents that can be sent move first.  They moved in id
# order, behind the whole backlog: with a million intents of one paused
# carrier in the inbox, the next order of every other carrier waited 20 s
# for them to be moved.  Here 200,000: the other provider's order is
# delivered while the backlog is still being moved.
$sql->("SELECT shipsync.pause('sim')");
$sql->(q{CREATE TABLE crm.other_orders (id bigint PRIMARY KEY, waybill_no text);
	SELECT shipsync.attach('crm.other_orders', 'other',
		writeback => '{"tracking_number": "waybill_no"}');});
$sql->("INSERT INTO crm.orders (customer) SELECT '吴' || g FROM generate_series(1, 200000) g");
is($sql->("SELECT count(*) FROM shipsync.inbox"), 200000, 'backlog: 200,000 intents of the paused provider wait in the inbox');
$sql->("INSERT INTO crm.other_orders VALUES (900001)");
my $left;
for (my $i = 0; $i < 3000; $i++)
{
	my ($wb, $n) = split /\|/, $sql->(q{SELECT waybill_no IS NOT NULL,
		(SELECT count(*) FROM shipsync.inbox) FROM crm.other_orders});
	if ($wb eq 't')
	{
		$left = $n;
		last;
	}
	usleep(10_000);
}
ok(defined $left, 'backlog: the other provider\'s order is delivered');
cmp_ok($left // 0, '>', 0,
	'backlog: before the paused provider\'s backlog is all moved (' . ($left // 'none') . ' left in the inbox)');
ok(wait_until($node, "SELECT count(*) = 0 FROM shipsync.inbox", 120),
	'backlog: then it is moved into the outbox all the same');
is($sql->("SELECT count(*) FROM shipsync.outbox WHERE state = 'pending'"), 200000,
	'backlog: all of it pending there, nothing of it sent');

$node->stop;
stop_sim($sim);

# 6. COMMIT PREPARED wakes the dispatcher: with an idle check ten minutes
# apart, only the wake can deliver an order committed by COMMIT PREPARED
# from another session (it waited for the idle check)
my $node2 = shipsync_node('prepared', "shipsync.idle_check_ms = '10min'",
	"max_prepared_transactions = 2");
$sim = start_sim();	# a carrier of its own: the order ids start again at 1
setup_orders($node2, $sim);
my $sql2 = sub { $node2->safe_psql('postgres', $_[0]) };
$sql2->("INSERT INTO crm.orders (customer) VALUES ('甲')");
ok(wait_until($node2, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = '甲'", 60),
	'commit prepared: the dispatcher runs (a plain commit delivered)');
$sql2->("BEGIN; INSERT INTO crm.orders (customer) VALUES ('乙'); PREPARE TRANSACTION 'p2'");
is($sql2->("SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'p2'"), 1,
	'commit prepared: the order is prepared');
$sql2->("COMMIT PREPARED 'p2'");
ok(wait_until($node2, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = '乙'", 60),
	'commit prepared: COMMIT PREPARED from another session woke the dispatcher, which delivered the order');
# an order prepared and rolled back is never sent
$sql2->("BEGIN; INSERT INTO crm.orders (customer) VALUES ('丙'); PREPARE TRANSACTION 'p3'");
$sql2->("ROLLBACK PREPARED 'p3'");
$sql2->("INSERT INTO crm.orders (customer) VALUES ('丁')");
ok(wait_until($node2, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = '丁'", 60),
	'commit prepared: a later plain commit is delivered');
my $st6 = sim_get($sim, '/_sim/stats');
is($st6->{shipments}, 3, 'commit prepared: three shipments, none for the rolled back order');
is($st6->{duplicate_orders}, 0, 'commit prepared: none created twice');
is($sql2->("SELECT count(*) FROM crm.orders WHERE waybill_no IS NULL"), 0,
	'commit prepared: the rolled back order is not there, the others have waybills');
$node2->stop;
stop_sim($sim);
done_testing();
