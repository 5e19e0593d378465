# A burst to a carrier by name asks the resolver once, not once per new
# connection.  libcurl 7.88 starts a lookup for every connection it opens
# to a name not yet in its DNS cache, so a burst after a quiet spell (no
# connection open, the cache entry gone after 60 s) sent up to
# max_inflight lookups at once: a storm for the system's resolver, which
# some rate-limit.  The server runs with test/sim/resolver_shim.c
# preloaded: names under carrier.test resolve to 127.0.0.1 after 20 ms,
# each lookup written to a file.  Proves:
#   1. thirty orders at once to a name the dispatcher never resolved: one
#      lookup, and all thirty delivered;
#   2. thirty more: no lookup (open connections, or the name cached);
#   3. twenty orders to a name that does not resolve: one lookup, and each
#      of the twenty ends with the resolver's answer as its own attempt,
#      logged, not sent.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $dir = PostgreSQL::Test::Utils::tempdir();
my $shim = "$dir/resolver_shim.so";
my $log = "$dir/resolve.log";
system('gcc', '-shared', '-fPIC', '-O2', '-o', $shim, "$FindBin::RealBin/../sim/resolver_shim.c", '-ldl') == 0
  or BAIL_OUT('cannot build the resolver shim');

my $node;
{
	local $ENV{LD_PRELOAD} = $shim;
	local $ENV{SHIPSYNC_RESOLVE_LOG} = $log;
	$node = shipsync_node('resolve');
}
sub sql { return $node->safe_psql('postgres', $_[0]); }
my $sim = start_sim();
END { local $?; stop_sim($sim) if $sim; }

# lookups of name made so far
sub lookups
{
	my ($name) = @_;
	return 0 unless -e $log;
	my @lines = grep { $_ eq "$name\n" } split /^/, PostgreSQL::Test::Utils::slurp_file($log);
	return scalar @lines;
}

sql('CREATE EXTENSION pg_shipsync');
sub provider
{
	my ($name, $host, $opts) = @_;
	sql(qq{SET shipsync.allow_insecure_http = on;
		SELECT shipsync.create_provider('$name', 'generic', 'http://$host:$sim->{port}', '$opts');
		CREATE TABLE t_$name (id bigint PRIMARY KEY, customer text, waybill_no text);
		SELECT shipsync.attach('t_$name', '$name', writeback => '{"tracking_number": "waybill_no"}');});
}

# ---- 1. a burst to a name never resolved
provider('named', 'fast.carrier.test', '{"timeout_ms": 5000}');
is(lookups('fast.carrier.test'), 0, 'no lookup before any order');
sql(q{INSERT INTO t_named SELECT g, 'c' || g FROM generate_series(1, 30) g});
ok(wait_until($node, q{SELECT count(*) = 30 FROM t_named WHERE waybill_no IS NOT NULL}, 60),
	'thirty orders at once to a carrier by name: all delivered');
is(lookups('fast.carrier.test'), 1, 'with one lookup of its name');

# ---- 2. the next burst finds the name known
sql(q{INSERT INTO t_named SELECT g, 'c' || g FROM generate_series(31, 60) g});
ok(wait_until($node, q{SELECT count(*) = 60 FROM t_named WHERE waybill_no IS NOT NULL}, 60),
	'thirty more: delivered');
is(lookups('fast.carrier.test'), 1, 'with no further lookup');

# ---- 3. a name that does not resolve
provider('nowhere', 'nowhere.carrier.test', '{"timeout_ms": 5000, "max_attempts": 1}');
sql(q{INSERT INTO t_nowhere SELECT g, 'c' || g FROM generate_series(1, 20) g});
my $intents = q{FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id)
	WHERE b.tbl = 't_nowhere'::regclass};
ok(wait_until($node, "SELECT count(*) = 20 $intents AND o.state = 'dead'", 60),
	'twenty orders to a name that does not resolve: each ends after its one attempt');
is(sql("SELECT count(*) $intents AND o.attempts = 1 AND o.last_error ~* 'resolve'"), '20',
	'each with the resolver\'s answer as its error');
is(sql("SELECT count(*) FROM shipsync.delivery_log l JOIN shipsync.outbox o ON o.id = l.outbox_id
	JOIN shipsync.binding b USING (binding_id) WHERE b.tbl = 't_nowhere'::regclass"), '20',
	'each attempt in the delivery log');
is(sql_sim_requests(), 60, 'the carrier saw only the sixty deliverable requests');
is(lookups('nowhere.carrier.test'), 1, 'one lookup for the twenty');

sub sql_sim_requests
{
	my $stats = sim_get($sim, '/_sim/stats');
	return $stats->{requests};
}

$node->stop;
done_testing();
