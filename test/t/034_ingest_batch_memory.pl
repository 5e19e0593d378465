# shipsync._ingest_tracking_batch() answers from memory it still owns.
#
# Found by test/sanitize/run asan (a heap-use-after-free in TAP 031, the
# receiver under thousands of pushes): the batch read its pushes' outcomes
# -- the events read, the error messages, the provider's name -- after
# SPI_finish() had freed the memory they were in.  In a plain build freed
# memory keeps its bytes, so nothing showed; here the server runs with
# MALLOC_PERTURB_, which fills what free() gets with other bytes, and every
# row of the answer must still be right.  (Without the fix: "events":
# -1515870811, 0xA5A5A5A5, and empty messages.)
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $node;
{
	local $ENV{MALLOC_PERTURB_} = 165;
	$node = shipsync_node('batch_memory');
}
sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{CREATE EXTENSION pg_shipsync;
	SELECT shipsync.create_provider('p', 'sf_express', 'https://carrier.example',
		'{"accept_unsigned_pushes": true, "auth": {"type": "sf_express", "partner_id": "P", "checkword": "cw"}}')});

# 60 pushes of three routes each, every fifth one broken: enough that the
# batch's memory runs past its first block, whose bytes a free() perturbs
my (@bodies, @want);
for my $i (1 .. 60)
{
	if ($i % 5 == 0)
	{
		push @bodies, "not json $i";
		push @want, qr/^$i SS400 tracking push for provider "p" \S.* (-|\{"detail": ".*"\})$/;
		next;
	}
	my @routes = map {
		sprintf('{"mailno": "SF%010d", "orderid": "O%d", "acceptTime": "2026-03-01 0%d:00:00",'
			  . ' "acceptAddress": "深圳", "remark": "route %d", "opCode": "30", "id": "r-%d-%d"}',
			$i, $i, $_, $_, $i, $_)
	} 1 .. 3;
	push @bodies, '{"Body": {"WaybillRoute": [' . join(', ', @routes) . ']}}';
	push @want, qr/^$i - - \{"reply": \{.*\}, "events": 3, "provider": "p"\}$/;
}
my $bodies = join(', ', map { "\$b\$$_\$b\$" } @bodies);
my $headers = join(', ', map { "'{}'" } @bodies);

# several rounds: the freed blocks are reused differently from one to the next
my @wrong;
for my $round (1 .. 5)
{
	my @rows = split /\n/, sql(qq{SELECT ord || ' ' || coalesce(sqlstate, '-') || ' '
			|| coalesce(left(message, 60), '-') || ' ' || coalesce(result::text, '-')
		FROM shipsync._ingest_tracking_batch('p', ARRAY[$bodies], ARRAY[$headers]::jsonb[])
		ORDER BY ord});
	push @wrong, "round $round: " . scalar(@rows) . " rows" if @rows != @want;
	for my $k (0 .. $#want)
	{
		push @wrong, "round $round: " . ($rows[$k] // 'no row') unless ($rows[$k] // '') =~ $want[$k];
	}
}
is(scalar(@wrong), 0, 'every row of 5 batches of 60 pushes names its provider, counts its events and keeps its error')
  or diag(join("\n", @wrong[ 0 .. ($#wrong < 4 ? $#wrong : 4) ]));
is(sql(q{SELECT count(*) FROM shipsync.unmatched_event}), 48 * 3,
	'the events of the good pushes were parked once each (no shipment yet)');

$node->stop;
done_testing();
