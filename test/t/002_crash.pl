# Crash safety: nothing committed is lost, nothing is created twice.
#
# 5,000 committed orders are being sent to the carrier simulator (20 ms of
# latency per request, so up to max_inflight requests are on the wire) when
#   1. the server is stopped in immediate mode and started again, and
#   2. the dispatcher is killed with SIGKILL (the postmaster then restarts
#      every backend, restart_after_crash = on, and the launcher starts a
#      new dispatcher).
# After each crash the queue must drain to exactly one shipment per order at
# the carrier, created under that order's single idempotency key, every order
# row must carry the tracking number the carrier holds for it, no intent may
# end dead, and every delivered intent must have its attempt in
# shipsync.delivery_log.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use Encode qw(decode_utf8);
use ShipsyncTest;

my $N = 5000;            # orders per scenario
my $BATCHES = 10;        # committed as 10 transactions of 500 rows
my $per_batch = $N / $BATCHES;
my $t_start = time();

my $sim = start_sim(latency_ms => 20);
my $node = shipsync_node('crash', 'restart_after_crash = on');
setup_orders($node, $sim,
	'{"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 500, "max_inflight": 64}');

# Commit $N orders in $BATCHES transactions; customer names in Chinese.
sub commit_orders
{
	my $sql = '';
	for my $b (0 .. $BATCHES - 1)
	{
		my $lo = $b * $per_batch + 1;
		my $hi = $lo + $per_batch - 1;
		$sql .= "INSERT INTO crm.orders (customer, phone, address)"
		  . " SELECT '客户' || g || '号 张伟', '138' || lpad(g::text, 8, '0'),"
		  . " '上海市浦东新区世纪大道' || g || '号'"
		  . " FROM generate_series($lo, $hi) g;\n";
	}
	$node->safe_psql('postgres', $sql);
}

# Poll (no fixed sleep) until at least one order is written back; returns
# how many were written back at that moment.
sub wait_some_written_back
{
	my $deadline = time() + 60;
	my $n = 0;
	while (time() < $deadline)
	{
		$n = $node->safe_psql('postgres',
			'SELECT count(*) FROM crm.orders WHERE waybill_no IS NOT NULL');
		return $n if $n >= 1;
		usleep(20_000);
	}
	return $n;
}

# The assertions shared by both scenarios.
sub check_exactly_once
{
	my ($label) = @_;

	# the carrier: one shipment per order, one key per shipment, same bytes
	my $st = sim_get($sim, '/_sim/stats');
	is($st->{shipments}, $N, "$label: the carrier holds exactly $N shipments");
	is($st->{orders}, $N, "$label: ... for $N distinct orders");
	is($st->{keys}, $N, "$label: ... created under $N distinct idempotency keys");
	is($st->{duplicate_orders}, 0, "$label: no order was created twice");
	is($st->{mismatch_422}, 0,
		"$label: every re-send carried the same bytes under its key (no 422)");
	if (($st->{replays} // 0) + ($st->{conflicts_409} // 0) > 0)
	{
		ok(1, "$label: the carrier saw repeated keys after the crash"
			  . " (replays $st->{replays}, 409 in progress $st->{conflicts_409})");
	}
	else
	{
		note("$label: the carrier saw no repeated key: nothing was in flight at the crash");
	}

	# sim: order_ref -> tracking number and key
	my $ships = sim_get($sim, '/_sim/shipments');
	my (%sim_tn, %sim_key, $dup);
	for my $s (@$ships)
	{
		$dup++ if exists $sim_tn{ $s->{order_ref} };
		$sim_tn{ $s->{order_ref} } = $s->{tracking_number};
		$sim_key{ $s->{order_ref} } = $s->{idempotency_key};
	}
	ok(!$dup, "$label: /_sim/shipments lists each order_ref once");

	# the database: order row, shipment row and the create intent's key
	my %db_tn;
	my %db_key;
	my %db_ship;
	for my $line (split /\n/, $node->safe_psql('postgres', q{
		SELECT o.id, coalesce(o.waybill_no, ''), coalesce(s.tracking_number, ''),
			   coalesce(x.idempotency_key::text, '')
		FROM crm.orders o
		LEFT JOIN shipsync.shipment s ON s.order_key = o.id::text
		LEFT JOIN shipsync.outbox x ON x.order_key = o.id::text AND x.op = 'create'}))
	{
		my ($id, $wb, $tn, $key) = split /\|/, $line, -1;
		$db_tn{$id} = $wb;
		$db_ship{$id} = $tn;
		$db_key{$id} = $key;
	}
	is(scalar(keys %db_tn), $N, "$label: $N order rows, one shipment and one create intent each");

	my (@wrong_tn, @wrong_ship, @wrong_key);
	for my $id (sort { $a <=> $b } keys %db_tn)
	{
		push @wrong_tn, "$id: row '$db_tn{$id}', carrier '" . ($sim_tn{$id} // 'none') . "'"
		  if ($sim_tn{$id} // '') ne $db_tn{$id} || $db_tn{$id} eq '';
		push @wrong_ship, $id if $db_ship{$id} ne $db_tn{$id};
		push @wrong_key, $id if ($sim_key{$id} // '') ne $db_key{$id};
	}
	my @not_ours = grep { !exists $db_tn{$_} } keys %sim_tn;
	is(scalar(@wrong_tn), 0,
		"$label: every order row carries the tracking number the carrier holds for it")
	  or diag('first mismatches: ' . join('; ', @wrong_tn[ 0 .. ($#wrong_tn < 4 ? $#wrong_tn : 4) ]));
	is(scalar(@wrong_ship), 0, "$label: shipsync.shipment agrees with the order rows")
	  or diag("first orders: @wrong_ship[0 .. ($#wrong_ship < 9 ? $#wrong_ship : 9)]");
	is(scalar(@wrong_key), 0,
		"$label: each carrier shipment was created under its intent's idempotency key")
	  or diag("first orders: @wrong_key[0 .. ($#wrong_key < 9 ? $#wrong_key : 9)]");
	is(scalar(@not_ours), 0, "$label: the carrier holds no shipment for an unknown order");

	# the outbox: all done, none dead, no ticket
	is($node->safe_psql('postgres',
			'SELECT state || count(*) FROM shipsync.outbox GROUP BY state ORDER BY 1'),
		"done$N", "$label: all $N intents are done");
	is($node->safe_psql('postgres',
			"SELECT count(*) FROM shipsync.outbox WHERE state IN ('dead', 'invalid')"),
		'0', "$label: no dead or invalid intent");
	is($node->safe_psql('postgres', 'SELECT count(*) FROM shipsync.exception_ticket'),
		'0', "$label: no exception ticket");

	# the delivery log: every done intent has its successful attempt logged
	my ($nlog, $ndone, $unlogged) = split /\|/, $node->safe_psql('postgres', q{
		SELECT (SELECT count(*) FROM shipsync.delivery_log),
			   (SELECT count(*) FROM shipsync.outbox WHERE state = 'done'),
			   (SELECT count(*) FROM shipsync.outbox o WHERE o.state = 'done'
				  AND NOT EXISTS (SELECT 1 FROM shipsync.delivery_log l
								  WHERE l.outbox_id = o.id AND l.outcome = 'done'))});
	cmp_ok($nlog, '>=', $ndone,
		"$label: delivery_log has at least one row per done intent ($nlog rows, $ndone done)");
	is($unlogged, '0', "$label: every done intent has its successful attempt in delivery_log");

	# the Chinese text reached the carrier intact (one sample: order 1)
	my ($sid) = map { $_->{id} } grep { $_->{order_ref} eq '1' } @$ships;
	if ($sid)
	{
		my $rec = sim_get($sim, "/_sim/shipments/$sid");
		my $cust = decode_utf8($node->safe_psql('postgres',
			"SELECT customer FROM crm.orders WHERE id = $rec->{order_ref}"));
		is($rec->{order}{customer}, $cust, "$label: the customer name reached the carrier intact");
	}
}

############################################################################
# Scenario 1: immediate stop with requests in flight, then start again.
############################################################################

my $t0 = time();
commit_orders();
my $committed_in = time() - $t0;
my $seen = wait_some_written_back();
my $log_offset = -s $node->logfile;
$node->stop('immediate');
note(sprintf('immediate stop: %d of %d written back, %.2f s after the first commit'
		  . ' (commits took %.2f s)', $seen, $N, time() - $t0, $committed_in));
ok($seen >= 1 && $seen < $N,
	"immediate stop: stopped mid-flight ($seen of $N written back)");
$node->start;

ok(wait_until($node, 'SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL', 120),
	'immediate stop: after the restart every order is written back');
my $drain1 = time() - $t0;
note(sprintf('immediate stop: %d orders drained in %.2f s (commit to last write-back)',
		$N, $drain1));
my $log = slurp_file($node->logfile, $log_offset);
if ($log =~ /(\d+) intents that were in flight are sent again/)
{
	note("immediate stop: the new dispatcher re-sent $1 intents left in flight");
}
check_exactly_once('immediate stop');

############################################################################
# Scenario 2: kill -9 of the dispatcher with requests in flight.
############################################################################

# a clean slate: the queue is empty, so nothing is in flight at the carrier
$node->safe_psql('postgres', q{
	TRUNCATE crm.orders, shipsync.outbox, shipsync.shipment, shipsync.delivery_log,
		shipsync.exception_ticket RESTART IDENTITY});
sim_post($sim, '/_sim/reset');

my $dispatcher_sql = "SELECT pid FROM pg_stat_activity"
  . " WHERE backend_type = 'pg_shipsync dispatcher' AND datname = 'postgres'";
my $old_pid = $node->safe_psql('postgres', $dispatcher_sql);
ok($old_pid, "kill -9: a dispatcher runs (PID $old_pid)");

$t0 = time();
commit_orders();
$seen = wait_some_written_back();
$log_offset = -s $node->logfile;
# the pid may only be read now: it must be the one sending these orders
my $pid = $node->safe_psql('postgres', $dispatcher_sql);
is($pid, $old_pid, 'kill -9: the same dispatcher is sending');
kill 'KILL', $pid;
note(sprintf('kill -9: %d of %d written back, %.2f s after the first commit', $seen, $N, time() - $t0));
ok($seen >= 1 && $seen < $N, "kill -9: killed mid-flight ($seen of $N written back)");

$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
ok(1, 'kill -9: the postmaster reinitialized after the crash');
# connections fail while the server restarts: poll_query_until retries them
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
		  . " AND datname = 'postgres' AND pid <> $pid"),
	'kill -9: a new dispatcher runs');

ok(wait_until($node, 'SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL', 120),
	'kill -9: every order is written back');
my $drain2 = time() - $t0;
note(sprintf('kill -9: %d orders drained in %.2f s (commit to last write-back)', $N, $drain2));
$log = slurp_file($node->logfile, $log_offset);
if ($log =~ /(\d+) intents that were in flight are sent again/)
{
	note("kill -9: the new dispatcher re-sent $1 intents left in flight");
}
check_exactly_once('kill -9');

$node->stop;
stop_sim($sim);
note(sprintf('drain times: immediate stop %.2f s, kill -9 %.2f s; whole file %.2f s',
		$drain1, $drain2, time() - $t_start));
done_testing();
