# A trickle after a backlog costs what it costs on a fresh cluster (issue
# 13: "a burst drains as fast after any sequence of earlier bursts as on a
# fresh cluster").  Counted in buffers a statement reads (pg_stat_statements),
# which, unlike time, do not depend on the host.
#
# The take's check of whether an order has an intent open in the outbox
# was planned from the statistics: taken while nothing was open, they made
# it a hash join over every entry of the per-order index instead of one
# probe an order.  That index is partial (open intents only), but after a
# backlog has drained it is full of entries of versions no longer open
# until a vacuum, and while a paused carrier's backlog waits it holds every
# one of them: each take then read all of it (987 buffers a take after a
# backlog of 100,000; 0.8 s a call was once seen).  Checked here both ways,
# with autovacuum off, so that the entries stay for the trickle after.
# And a take looks up every provider it may send for in one statement.
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
	'after_backlog',
	"shared_preload_libraries = 'pg_shipsync, pg_stat_statements'",
	'pg_stat_statements.track = all',
	'autovacuum = off');
sub sql { return $node->safe_psql('postgres', $_[0]); }

setup_orders($node, $sim);
sql(qq{
	CREATE EXTENSION pg_stat_statements;
	CREATE TABLE crm.other (id bigserial PRIMARY KEY, customer text);
	SELECT shipsync.create_provider('other', 'generic', '$sim->{url}', '{"timeout_ms": 2000}');
	SELECT shipsync.pause('other');
	SELECT shipsync.attach('crm.other', 'other');
});

# one order at a time, each delivered before the next
sub trickle
{
	my ($n, $tag) = @_;
	for my $i (1 .. $n)
	{
		my $id = sql("INSERT INTO crm.orders (customer) VALUES ('$tag-$i') RETURNING id");
		ok(wait_settled($node, "'$id'"), "$tag: order $i delivered")
		  or diag(sql(qq{
			SELECT string_agg(format('%s %s %s %s', id, state, error_class, next_attempt_at), '; ')
			FROM shipsync.outbox WHERE binding_id = 1 AND order_key = '$id'
			UNION ALL SELECT count(*)::text FROM shipsync.inbox
			UNION ALL SELECT string_agg(format('%s %s', backend_type, query), '; ')
			FROM pg_stat_activity WHERE backend_type LIKE 'pg_shipsync%'})),
		  return;
	}
}

# buffers read per call of the take's check, over a trickle
sub check_buffers
{
	my ($tag) = @_;
	sql('SELECT pg_stat_statements_reset()');
	trickle(5, $tag);
	my ($calls, $blocks) = split /\|/, sql(q{
		SELECT sum(calls), sum(shared_blks_hit + shared_blks_read) FROM pg_stat_statements
		WHERE query LIKE 'SELECT u.id FROM shipsync._rows($1, $2, $3) AS u(id int8, bid int4, k text) WHERE EXISTS%'});
	cmp_ok($calls || 0, '>=', 1, "$tag: the take checked orders");
	my $per = $calls ? $blocks / $calls : 1e9;
	cmp_ok($per, '<=', 10,
		"$tag: the take's check probes the per-order index ($blocks buffers in $calls calls)");
}

# statistics taken as a quiet queue leaves them: intents done, none open
trickle(10, 'first');
sql('VACUUM ANALYZE shipsync.outbox');
check_buffers('fresh');

# a backlog of this carrier, drained: the per-order index keeps an entry of
# each intent's version that was pending until a vacuum removes it
sql("SELECT shipsync.pause('sim')");
sql("INSERT INTO crm.orders (customer) SELECT 'backlog-' || g FROM generate_series(1, 8000) g");
sql("SELECT shipsync.resume('sim')");
ok( wait_until($node, q{SELECT NOT EXISTS (SELECT 1 FROM shipsync.inbox)
	AND NOT EXISTS (SELECT 1 FROM shipsync.outbox WHERE state IN ('pending', 'retrying', 'in_flight'))}, 180),
	'the backlog was delivered');
check_buffers('after a backlog');

# a paused carrier's backlog waiting in the outbox, every intent open
my ($pid, $bid) = split /\|/, sql(q{
	SELECT b.provider_id, b.binding_id FROM shipsync.binding b
	JOIN shipsync.provider p USING (provider_id) WHERE p.name = 'other'});
sql(qq{
	INSERT INTO shipsync.outbox (binding_id, provider_id, order_key, op)
	SELECT $bid, $pid, 'other-' || g, 'create' FROM generate_series(1, 20000) g});
check_buffers('beside a paused backlog');
is(sql(qq{SELECT count(*) FROM shipsync.outbox WHERE provider_id = $pid AND state = 'pending'}),
	'20000', 'the paused carrier\'s intents wait');

# Many providers: a take looked up each one's row and its next retry, two
# statements a provider (with 50 providers, 110 an order at a trickle).
# Now one statement for all of them.
sql(qq{SELECT count(*) FROM (SELECT shipsync.create_provider('many-' || g, 'generic',
	'$sim->{url}', '{"timeout_ms": 2000}') FROM generate_series(1, 30) g) x});
# (the providers' first claims, as the dispatcher loads them, are not counted)
trickle(2, 'settling beside 31 providers');
sql('SELECT pg_stat_statements_reset()');
trickle(5, 'beside 31 providers');
my ($lookups) = sql(q{
	SELECT sum(calls) FROM pg_stat_statements
	WHERE query LIKE 'SELECT p.paused FROM shipsync.provider p WHERE p.provider_id = $1'
	   OR query LIKE 'SELECT pg_catalog.min(next_attempt_at) FROM shipsync.outbox%'
	   OR query LIKE 'SELECT p.provider_id FROM shipsync.provider p WHERE p.provider_id = ANY%'});
cmp_ok($lookups / 5, '<=', 12,
	"beside 31 providers, a few lookups of providers and retries an order ($lookups for 5 orders)");

$node->stop;
done_testing();
