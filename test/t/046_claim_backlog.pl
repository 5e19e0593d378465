# A backlog does not make every claim read it, nor every sweep of leases.
# The claim walks the due intents of a provider oldest first and stops at
# its limit, checking each candidate against the earlier intents of its
# order.  With statistics that
# showed a backlog beside many intents done (the state of any queue after an
# outage, and of the benchmark's inserts while delivering), the planner read
# every due intent instead, checked each and sorted them, for every claim:
# 42 ms for 50 intents out of 7,777, and the dispatcher spent whole seconds
# claiming (src/outbox.c, lock_sql).
#
# The claim's own plan is checked, as shipsync.claim() runs it (the
# dispatcher's saved plan): auto_explain logs it with its row counts, and
# the per-order check may run for the intents the claim takes, not for the
# backlog.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use ShipsyncTest;

my $sim = start_sim();
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node(
	'claim_backlog',
	"shared_preload_libraries = 'pg_shipsync, auto_explain'",
	'autovacuum = off',
	'auto_explain.log_min_duration = 0',
	'auto_explain.log_analyze = on',
	'auto_explain.log_timing = off',
	'auto_explain.log_nested_statements = on');
setup_orders($node, $sim);

sub sql { return $node->safe_psql('postgres', $_[0]); }

# The dispatcher leaves a paused provider's intents alone; the queue is made
# here as an outage leaves it: many intents done, some in flight, a backlog
# pending, every one of its own order, and statistics taken.
sql("SELECT shipsync.pause('sim')");
my ($pid, $bid) = split /\|/,
  sql("SELECT provider_id, binding_id FROM shipsync.binding");
sql(qq{
	INSERT INTO shipsync.outbox (binding_id, provider_id, order_key, op, state, next_attempt_at)
	SELECT $bid, $pid, 'done-' || g, 'create', 'done', now() FROM generate_series(1, 200000) g;
	INSERT INTO shipsync.outbox (binding_id, provider_id, order_key, op, state, lease_until)
	SELECT $bid, $pid, 'flight-' || g, 'create', 'in_flight', now() + interval '1 hour'
	FROM generate_series(1, 1000) g;
	INSERT INTO shipsync.outbox (binding_id, provider_id, order_key, op, next_attempt_at)
	SELECT $bid, $pid, 'due-' || g, 'create', now() - interval '1 hour' + g * interval '1 ms'
	FROM generate_series(1, 8000) g;
	-- and updates of orders whose create is in flight: never claimable yet
	INSERT INTO shipsync.outbox (binding_id, provider_id, order_key, op, next_attempt_at)
	SELECT $bid, $pid, 'flight-' || g, 'update', now() - interval '2 hours'
	FROM generate_series(1, 100) g;
});
sql('VACUUM ANALYZE shipsync.outbox');

my $offset = -s $node->logfile;
my $claimed = sql(qq{
	BEGIN;
	SELECT string_agg(order_key, ' ' ORDER BY id) FROM shipsync.claim($pid, 50);
	ROLLBACK;
});
my @keys = split / /, $claimed;
is(scalar(@keys), 50, 'the claim takes 50 intents');
is(scalar(grep { !/^due-/ } @keys), 0,
	'none of them an update whose create is still in flight');
is($keys[0], 'due-1', 'the oldest due create first');

# the lock statement's plan, as the claim ran it
my $log = slurp_file($node->logfile, $offset);
my ($plan) = grep { /Query Text: SELECT o\.id, o\.binding_id/ } split /\n(?=\S)/, $log;
ok(defined $plan, 'the claim\'s plan was logged') or done_testing(), exit;
unlike($plan, qr/Sort Key: o\.next_attempt_at/, 'the claim does not sort the backlog')
  or diag($plan);
like($plan, qr/Index Scan using outbox_due_idx on outbox o/,
	'it walks the due index in order');
# the per-order check runs once per candidate the walk reaches: the 100
# blocked updates (the oldest) and the 50 taken, not the 8,000 due
my ($loops) = $plan =~ /Index Scan using outbox_order_idx on outbox e .*? loops=(\d+)\)/;
ok(defined $loops, 'the per-order check was logged') or diag($plan);
cmp_ok($loops // 1e9, '<=', 200, "the per-order check ran for the candidates reached ($loops), not for the backlog")
  or diag($plan);

# The sweep of expired leases, at every idle check, reads the intents in
# flight once.  It joined the outbox to itself; planned with statistics
# taken while nothing was in flight (one row on each side), the join was a
# nested loop reading all the intents in flight again for each of them
# (8.4 s a sweep in the benchmark, through the per-order index).  The
# statistics are taken so here, and the plans the dispatcher makes for its
# next sweeps (its custom plans first, then its generic one) are checked.
sql(qq{
	UPDATE shipsync.outbox SET state = 'pending', lease_until = NULL
	WHERE state = 'in_flight';
});
sql('VACUUM ANALYZE shipsync.outbox');
sql(qq{
	UPDATE shipsync.outbox SET state = 'in_flight', lease_until = now() + interval '1 hour'
	WHERE order_key LIKE 'flight-%' AND op = 'create';
});
$offset = -s $node->logfile;
sql("ALTER SYSTEM SET shipsync.idle_check_ms = 100");
sql('SELECT pg_reload_conf()');
my @sweeps;
for (1 .. 300)
{
	$log = slurp_file($node->logfile, $offset);
	@sweeps = grep { /Query Text: WITH r AS \(UPDATE shipsync\.outbox o SET/ }
	  split /\n(?=\S)/, $log;
	last if @sweeps >= 8;
	usleep(100_000);
}
cmp_ok(scalar(@sweeps), '>=', 8, 'eight sweeps of expired leases were logged');
my @twice = grep { (() = /Scan[^\n]* on outbox \w+ /g) != 1 } @sweeps;
is(scalar(@twice), 0, 'every sweep reads the outbox once')
  or diag($twice[-1]);
my @loops = grep {
	my $again = 0;
	while (/on outbox \w+ [^\n]*loops=(\d+)/g) { $again = 1 if $1 > 1; }
	$again
} @sweeps;
is(scalar(@loops), 0, 'and never again for each intent in flight')
  or diag($loops[-1]);
is(sql("SELECT count(*) FROM shipsync.outbox WHERE state = 'in_flight'"), '1000',
	'the intents in flight with a lease to run are left in flight');

$node->stop;
done_testing();
