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
# first batches of a burst hash-joined the whole orders table.  And those
# two are planned by key (src/spi.c): on a table of a couple of thousand
# rows, PostgreSQL's generic plan hash-joined the whole table for every
# batch, a batch of one included, unless the key has no index.
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
	"shared_preload_libraries = 'pg_shipsync, pg_stat_statements, auto_explain'",
	'pg_stat_statements.track = all',
	'auto_explain.log_min_duration = 0',
	'pg_stat_statements.track_planning = on',
	'autovacuum = off');
setup_orders($node, $sim);

sub sql { return $node->safe_psql('postgres', $_[0]); }

# The plans auto_explain logged from byte offset on, of the statements
# whose text contains each of the strings given
sub logged_plans
{
	my ($offset, @texts) = @_;
	my @plans = split /LOG:  duration: /, slurp_file($node->logfile, $offset);
	for my $t (@texts)
	{
		@plans = grep { index($_, $t) >= 0 } @plans;
	}
	return @plans;
}

# N orders committed at once into crm.bulk; true once all TOTAL it holds
# are written back within timeout seconds
sub bulk_orders
{
	my ($n, $total, $timeout) = @_;
	sql(qq{INSERT INTO crm.bulk (customer, address)
		SELECT '客户 ' || g, '杭州市西湖区文三路 ' || g || ' 号' FROM generate_series(1, $n) g});
	return wait_until($node, "SELECT count(*) = $total FROM crm.bulk WHERE waybill_no IS NOT NULL",
		$timeout);
}

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
	'the take, looking for intents to follow' => [ 'SELECT u.id FROM shipsync._rows($1, $2, $3) AS u(id int8, bid int4, k text)', 10 ],
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

# An orders table of two thousand rows.  There, PostgreSQL's own generic
# plan for the statements that read the order rows and write the waybills
# back (a batch of keys from an array, estimated at ten, joined to the table
# by its key) hash-joins a sequential scan of the whole table: cheaper on
# paper than ten probes of the key's index, and every order at a trickle
# then read the whole table twice.  They are planned by key (src/spi.c), so
# each order reads a few buffers of the index and the table.  The rows are
# added with the capture off, and analyzed, so that the plans are made
# again for the table as it is.
sql(q{SET session_replication_role = replica;
	INSERT INTO crm.orders (customer, address)
	SELECT '客户 ' || g, '杭州市西湖区文三路 ' || g || ' 号' FROM generate_series(1, 2000) g;
	ANALYZE crm.orders});
my $pages = sql(q{SELECT pg_relation_size('crm.orders') / current_setting('block_size')::int});
cmp_ok($pages, '>=', 20, "the orders table has $pages pages");
ok(deliver_one(100), 'an order into the larger table is delivered (its plans made again)');
sql('SELECT pg_stat_statements_reset()');
$delivered = 0;
for my $i (101 .. 105)
{
	$delivered++ if deliver_one($i);
}
is($delivered, 5, 'five more orders delivered one at a time');
for my $what (
	'the take and the claim, reading the order rows (as their owner)',
	'the apply, writing the waybill back onto the order rows (as their owner)')
{
	my $like = $statements{$what}[0];
	$like =~ s/'/''/g;
	my ($calls, $blocks) = split /\|/,
	  sql("SELECT coalesce(sum(calls), 0), coalesce(sum(shared_blks_hit + shared_blks_read), 0)"
		  . " FROM pg_stat_statements WHERE query LIKE '$like%'");
	cmp_ok($calls, '>=', 5, "$what, larger table: run for every order");
	cmp_ok($blocks / ($calls || 1), '<', 12,
		"$what: a few buffers an order, not the table's $pages pages ($blocks in $calls runs)");
}

# A key with no index: planned by key, each key would be looked for by a
# sequential scan of its own, so the plan PostgreSQL would make is kept (a
# hash join reads the table once for the whole batch).  Ten orders
# committed together are rendered and written back in a batch or two.
sql(q{CREATE TABLE crm.refs (id bigserial PRIMARY KEY, ref text NOT NULL, customer text,
		address text, waybill_no text);
	SELECT shipsync.attach('crm.refs', 'sim', key_column => 'ref',
		writeback => '{"tracking_number": "waybill_no"}');
	SET session_replication_role = replica;
	INSERT INTO crm.refs (ref, customer, address)
	SELECT 'R' || g, '客户 ' || g, '杭州市西湖区文三路 ' || g || ' 号' FROM generate_series(1, 2000) g;
	ANALYZE crm.refs});
my $rpages = sql(q{SELECT pg_relation_size('crm.refs') / current_setting('block_size')::int});
sql(q{INSERT INTO crm.refs (ref, customer) VALUES ('first', '客户')});
ok(wait_until($node, q{SELECT waybill_no IS NOT NULL FROM crm.refs WHERE ref = 'first'}, 30),
	'an order keyed by a column with no index is delivered');
sql('SELECT pg_stat_statements_reset()');
my $logoff = -s $node->logfile;
sql(q{INSERT INTO crm.refs (ref, customer) SELECT 'batch' || g, '客户' FROM generate_series(1, 10) g});
ok( wait_until(
		$node, q{SELECT count(*) = 10 FROM crm.refs WHERE ref LIKE 'batch%' AND waybill_no IS NOT NULL},
		30),
	'ten orders committed together, keyed by a column with no index, are delivered');
# [what, statement, rows it writes]: the write-back also writes each of
# the ten rows (a new version and its index entries, about five buffers
# each), whatever the batches: ten in one batch read 73 buffers of a
# table of 23 pages, once in CI
for my $stmt ([ 'reading the order rows', 'SELECT shipsync_u.shipsync_id, t.ref IS NOT NULL AS found', 0 ],
	[ 'writing the waybills back', 'UPDATE crm.refs AS t SET', 10 ])
{
	my ($what, $like, $written) = @$stmt;
	my ($calls, $blocks) = split /\|/,
	  sql("SELECT coalesce(sum(calls), 0), coalesce(sum(shared_blks_hit + shared_blks_read), 0)"
		  . " FROM pg_stat_statements WHERE query LIKE '$like%'");
	cmp_ok($calls, '>=', 1, "no index on the key, $what: run");
	cmp_ok(($blocks - 10 * $written) / ($calls || 1), '<', 3 * $rpages,
		"no index on the key, $what: the table read about once a batch"
		  . " ($blocks buffers in $calls runs, $written rows written, $rpages pages)");
	# the plans, as auto_explain logged them: a nested loop over a
	# materialized scan reads the table once too, but compares every key
	# with every row
	my @plans = logged_plans($logoff, "Query Text: $like");
	ok(@plans > 0 && !grep({ !/Hash/ || /Nested Loop/ } @plans),
		"no index on the key, $what: hash-joined, as PostgreSQL plans it ("
		  . scalar(@plans) . ' plans logged)');
}

# An orders table analyzed while a bulk INSERT into it was not yet
# committed, as autovacuum may happen to: its statistics say no rows on
# the pages it had then, and (never analyzed with rows) nothing of its
# columns.  PostgreSQL counts it empty however it grows.  Planned by key,
# the render and the write-back then read the whole table through its
# key's index, with no condition, and compared each row with every key of
# the batch: in the benchmark a burst of 10,000 ran at 300 to 450 orders/s
# for as long as those statistics stood.  The outbox, analyzed so in the
# middle of a take, gave the apply's outbox states the same plan.  Here
# the rows are deleted before the ANALYZE instead (no second session):
# the same statistics.
sql(q{CREATE TABLE crm.bulk (id bigserial PRIMARY KEY, customer text, address text, waybill_no text);
	SELECT shipsync.attach('crm.bulk', 'sim', writeback => '{"tracking_number": "waybill_no"}');
	SET session_replication_role = replica;
	INSERT INTO crm.bulk (customer, address)
	SELECT '客户 ' || g, '杭州市西湖区文三路 ' || g || ' 号' FROM generate_series(1, 300) g;
	DELETE FROM crm.bulk;
	ANALYZE crm.bulk;
	DELETE FROM shipsync.outbox;
	ANALYZE shipsync.outbox});
for my $t ('crm.bulk', 'shipsync.outbox')
{
	is( sql(qq{SELECT relpages > 0 AND reltuples = 0
			AND NOT EXISTS (SELECT 1 FROM pg_statistic WHERE starelid = '$t'::regclass)
			FROM pg_class WHERE oid = '$t'::regclass}),
		't', "$t reads as analyzed with pages and no rows, and no column statistics");
}
$logoff = -s $node->logfile;
ok(bulk_orders(2000, 2000, 120), '2,000 orders committed at once into that table are delivered');
for my $stmt ([ 'reading the order rows', 'SELECT shipsync_u.shipsync_id, t.id IS NOT NULL AS found' ],
	[ 'writing the waybills back', 'UPDATE crm.bulk AS t SET' ])
{
	my ($what, $like) = @$stmt;
	my @plans = logged_plans($logoff, "Query Text: $like", 'crm.bulk');
	# every key looked up through the index; never the whole table read
	# with the keys compared in a join filter
	ok( @plans > 0
		  && !grep({ !/Index Cond: \(id = / || /Join Filter: \(t\.id = / } @plans),
		"a table analyzed empty, $what: each key looked up through the index ("
		  . scalar(@plans) . ' plans logged)');
}
# The outbox's plans are made again as it doubles (src/spi.c); while it
# is small, reading it whole is right.  Which plan the burst's last
# batches ran depends on when the applier last looked at the sizes (at
# most every 250 ms, before a message): once in CI, one of the last five
# still read it whole, on a plan made for an outbox half as large.  So the
# outbox's plans are made again now, for some 2,000 intents, by a
# relcache invalidation that brings no statistics (a grant and its
# revoke), and ten more orders are applied on them: each intent must be
# found through the index.
sql(q{CREATE ROLE plan_probe;
	GRANT SELECT ON shipsync.outbox TO plan_probe;
	REVOKE SELECT ON shipsync.outbox FROM plan_probe;
	DROP ROLE plan_probe});
is(sql(q{SELECT reltuples = 0 AND relpages > 0 FROM pg_class WHERE oid = 'shipsync.outbox'::regclass}),
	't', 'the outbox\'s statistics still say no rows on its pages');
$logoff = -s $node->logfile;
ok(bulk_orders(10, 2010, 60), 'ten more orders into that table are delivered');
my @states = logged_plans($logoff, 'Query Text: UPDATE shipsync.outbox o SET state = u.state');
my @bad = grep { !/Index Cond: \(id = u\.id\)/ || /Join Filter: \(\(o\.id = u\.id\)/ } @states;
ok(@states >= 1 && !@bad,
	'an outbox analyzed empty, the apply\'s outbox states once it holds some 2,000 intents: each intent'
	  . ' looked up through the index (' . scalar(@states) . ' plans logged)')
  or diag(join("\n----\n", @bad));

done_testing();
