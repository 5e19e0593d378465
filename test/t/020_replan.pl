# A small burst must not make the next big one slow.  The dispatcher's
# statements join a batch's keys to the outbox and the orders table; planned
# while those tables were small, PostgreSQL's cached generic plan is a hash
# join over a sequential scan, and without a re-plan every batch of the next
# big burst read the whole tables (2-4x slower delivery until autovacuum
# analyzed them).  src/spi.c invalidates the plans of a table that doubled.
#
# The plans themselves are checked, not the time: auto_explain logs every
# statement the dispatcher runs; after a small burst and a big one (with
# autovacuum off, so that nothing else re-plans), no batch of a last burst
# may run a plan made for the small tables.  test/bench prints the
# speed (the big burst's rate after a small one against a fresh cluster's).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $sim = start_sim();
my $node = shipsync_node(
	'replan',
	"shared_preload_libraries = 'pg_shipsync, auto_explain'",
	'autovacuum = off',
	'auto_explain.log_min_duration = 0',
	'auto_explain.log_nested_statements = on');
setup_orders($node, $sim, '{"timeout_ms": 5000}');

sub burst
{
	my ($n, $label) = @_;
	$node->safe_psql('postgres',
		"INSERT INTO crm.orders (customer, address) SELECT '客户' || g, '上海市浦东新区世纪大道 ' || g || ' 号'"
		  . " FROM generate_series(1, $n) g");
	ok(wait_until($node, 'SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL', 180),
		"$label: $n orders delivered");
}

# the plans of the dispatcher's batch statements logged since $offset
sub plans
{
	my ($offset, $query_start) = @_;
	my $log = slurp_file($node->logfile, $offset);
	my @plans;
	for my $entry (split /\n(?=\S)/, $log)
	{
		push @plans, $entry
		  if $entry =~ /LOG:  duration: [0-9.]+ ms  plan:/
		  && $entry =~ /Query Text: \Q$query_start\E/;
	}
	return @plans;
}

burst(300, 'small burst');
burst(5000, 'big burst');

my $offset = -s $node->logfile;
burst(200, 'last burst');

# the last burst is small: taken from the inbox, whose statement that
# reads the outbox is the one looking for intents to follow
my @claim = (plans($offset, 'UPDATE shipsync.outbox o SET state = CASE'),
	plans($offset, 'SELECT u.id FROM shipsync._rows($1, $2, $3) AS u(id int8, bid int4, k text)'));
my @writeback = plans($offset, 'UPDATE crm.orders AS t SET');
cmp_ok(scalar(@claim), '>', 0, 'the claims and takes of the last burst were logged');
cmp_ok(scalar(@writeback), '>', 0, 'the write-backs of the last burst were logged');
# A plan made while the tables held the small burst's few hundred rows
# estimates a few hundred rows for them; once re-planned, a plan may still
# scan a table (the planner's honest choice for a batch against a table of
# a few thousand rows) but it estimates the table as it is now.
sub stale_scans
{
	my ($table, @plans) = @_;
	my @stale;
	for my $p (@plans)
	{
		while ($p =~ /Seq Scan on \Q$table\E \w+\s+\(cost=[0-9.]+\.\.[0-9.]+ rows=(\d+)/g)
		{
			push @stale, $p if $1 < 1000;
		}
	}
	return @stale;
}
my @stale_claims = stale_scans('outbox', @claim);
is(scalar(@stale_claims), 0, 'no claim or take runs a plan made for the small outbox')
  or diag($stale_claims[0]);
my @stale_writebacks = stale_scans('orders', @writeback);
is(scalar(@stale_writebacks), 0, 'no write-back runs a plan made for the small orders table')
  or diag($stale_writebacks[0]);

$node->stop;
stop_sim($sim);
done_testing();
