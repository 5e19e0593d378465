# After a backlog, the outbox is vacuumed whatever its history, and the
# inbox soon (its end).  The outbox
# keeps every intent, done ones too; autovacuum's default threshold is a
# fifth of the table, so on an outbox of 150,000 intents done a backlog of
# 10,000 sent through the claim (two dead versions each) never had it
# vacuumed (75 buffers a claim here, ever after).  Until a vacuum, the due index keeps an entry of every version
# that was pending, and the claim and the look for the next retry walk them
# from the start of the provider's range at every pass: at a trickle, 889
# and 661 buffers an order after 40,000 on an outbox of 600,000, against 4
# and 3 (docs/architecture.md, "the outbox after a backlog").  The outbox
# is now vacuumed, its indexes too, after a fixed number of dead versions.
#
# Waited for as a condition (autovacuum's naptime is 1 s here), then
# counted in buffers (pg_stat_statements), which do not depend on the host.
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
	'backlog_vacuumed',
	"shared_preload_libraries = 'pg_shipsync, pg_stat_statements'",
	'pg_stat_statements.track = all',
	'autovacuum_naptime = 1s');
sub sql { return $node->safe_psql('postgres', $_[0]); }

setup_orders($node, $sim, '{"timeout_ms": 5000, "max_inflight": 64}');
sql('CREATE EXTENSION pg_stat_statements');
my ($pid, $bid) = split /\|/,
  sql("SELECT provider_id, binding_id FROM shipsync.binding");

# a history of intents done, with its statistics
sql(qq{
	INSERT INTO shipsync.outbox (binding_id, provider_id, order_key, op, state, done_at)
	SELECT $bid, $pid, 'done-' || g, 'create', 'done', now() FROM generate_series(1, 150000) g});
sql('VACUUM ANALYZE shipsync.outbox');

# a backlog of 10,000 orders waiting in the outbox, as an outage leaves it
# (the orders written without capture, their intents straight as pending)
sql("SELECT shipsync.pause('sim')");
sql(qq{
	SET session_replication_role = replica;
	INSERT INTO crm.orders (customer) SELECT 'backlog-' || g FROM generate_series(1, 10000) g;
	INSERT INTO shipsync.outbox (binding_id, provider_id, order_key, op)
	SELECT $bid, $pid, o.id::text, 'create' FROM crm.orders o ORDER BY o.id});
sql("SELECT shipsync.resume('sim')");
ok( wait_until($node, q{SELECT NOT EXISTS (SELECT 1 FROM shipsync.outbox
	WHERE state IN ('pending', 'retrying', 'in_flight'))}, 180),
	'the backlog was delivered');
is(sql(q{SELECT count(*) FROM crm.orders WHERE waybill_no IS NULL}), '0',
	'every order of it has its waybill');

# autovacuum comes for the outbox: the backlog's dead versions go (the
# dispatcher and the applier report theirs within a second of going idle)
ok( wait_until($node, q{SELECT n_dead_tup < 1000 FROM pg_stat_user_tables
	WHERE relid = 'shipsync.outbox'::regclass}, 60),
	'the outbox was vacuumed after the backlog')
  or diag(sql(q{SELECT n_dead_tup, last_autovacuum FROM pg_stat_user_tables
	WHERE relid = 'shipsync.outbox'::regclass}));

# and a trickle after costs what it costs on a fresh cluster: the claim and
# the look for the next retry no longer walk the backlog's versions
sql('SELECT pg_stat_statements_reset()');
for my $i (1 .. 5)
{
	my $id = sql("INSERT INTO crm.orders (customer) VALUES ('after-$i') RETURNING id");
	ok(wait_settled($node, "'$id'"), "order $i after the backlog delivered");
}
for my $q (['SELECT pg_catalog.min(next_attempt_at) FROM shipsync.outbox%', 'the look for the next retry'],
	['SELECT o.id, o.binding_id, o.order_key, o.op%FOR UPDATE OF o SKIP LOCKED', 'the claim'])
{
	my ($calls, $blocks) = split /\|/, sql(qq{
		SELECT sum(calls), sum(shared_blks_hit + shared_blks_read) FROM pg_stat_statements
		WHERE query LIKE '$q->[0]'});
	my $per = $calls ? $blocks / $calls : 0;
	cmp_ok($per, '<=', 10, "$q->[1] reads a few buffers a call ($blocks in $calls calls)");
}

# The inbox: every take reads it whole, its empty pages too, until a
# vacuum truncates them.  Autovacuum came after 10,000 dead rows, so the
# pages of a backlog of 5,000 were read at every take of the trickle after
# (and those of any backlog's last 10,000 rows), until 10,000 more orders.
sql("SELECT shipsync.pause('sim')");
sql("INSERT INTO crm.orders (customer) SELECT 'captured-' || g FROM generate_series(1, 5000) g");
sql("SELECT shipsync.resume('sim')");
ok( wait_until($node, q{SELECT NOT EXISTS (SELECT 1 FROM shipsync.inbox)
	AND NOT EXISTS (SELECT 1 FROM crm.orders WHERE waybill_no IS NULL)}, 180),
	'the captured backlog was delivered');
ok( wait_until($node, q{SELECT pg_relation_size('shipsync.inbox') <= 8192}, 60),
	'the inbox was vacuumed and truncated after it')
  or diag(sql(q{SELECT pg_relation_size('shipsync.inbox') / 8192, n_dead_tup
	FROM pg_stat_user_tables WHERE relid = 'shipsync.inbox'::regclass}));
sql('SELECT pg_stat_statements_reset()');
for my $i (1 .. 5)
{
	my $id = sql("INSERT INTO crm.orders (customer) VALUES ('later-$i') RETURNING id");
	ok(wait_settled($node, "'$id'"), "order $i after the captured backlog delivered");
}
my ($calls, $blocks) = split /\|/, sql(q{
	SELECT sum(calls), sum(shared_blks_hit + shared_blks_read) FROM pg_stat_statements
	WHERE query LIKE 'SELECT i.id, i.binding_id, i.provider_id, i.order_key%FROM shipsync.inbox i ORDER BY i.id LIMIT $1'});
cmp_ok($calls ? $blocks / $calls : 0, '<=', 3,
	"the take's read of the inbox reads a page or two ($blocks in $calls calls)");

$node->stop;
done_testing();
