# The apply commits with synchronous_commit = off: a result lost in a crash
# is made good by sending the intent again under its key.  Except for an
# attempt at max_attempts: after a restart, an intent in flight at its limit
# ends dead, unsent.  So a batch holding such an attempt commits durably.
#
# The crash loses exactly what was not yet written out: the WAL writer is
# stopped (SIGSTOP) before the order, and then killed (SIGKILL), which makes
# the postmaster reinitialize; no bgwriter, checkpoint or autovacuum writes
# WAL out meanwhile.
#   1. max_attempts 2: the first attempt's apply is lost; the intent is sent
#      again under the same key, the carrier answers it once, done;
#   2. max_attempts 1: the only attempt's apply survives the crash: done,
#      the waybill on the row (without the durable commit: dead, no waybill).
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
my $node = shipsync_node('durable', 'restart_after_crash = on', 'autovacuum = off',
	'bgwriter_lru_maxpages = 0', "checkpoint_timeout = '1h'");

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(qq{
	CREATE EXTENSION pg_shipsync;
	SELECT shipsync.create_provider('twice', 'generic', '$sim->{url}', '{"timeout_ms": 3000, "max_attempts": 2}');
	SELECT shipsync.create_provider('once', 'generic', '$sim->{url}', '{"timeout_ms": 3000, "max_attempts": 1}');
	CREATE TABLE orders_twice (id bigint PRIMARY KEY, customer text, waybill_no text);
	CREATE TABLE orders_once (LIKE orders_twice INCLUDING ALL);
	SELECT shipsync.attach('orders_twice', 'twice', writeback => '{"tracking_number": "waybill_no"}');
	SELECT shipsync.attach('orders_once', 'once', writeback => '{"tracking_number": "waybill_no"}');
});

# Deliver one order with the WAL writer stopped, then crash; returns the
# order's outbox row (state, attempts) and its waybill after the restart.
sub deliver_then_crash
{
	my ($table, $id) = @_;
	my $walwriter = sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'");
	like($walwriter, qr/^\d+$/, "$table: the WAL writer runs");
	kill 'STOP', $walwriter;
	sql("INSERT INTO $table VALUES ($id, 'c$id')");
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM $table WHERE id = $id", 30),
		"$table: delivered and written back");
	my $waybill = sql("SELECT waybill_no FROM $table WHERE id = $id");
	my $dispatcher = sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'");
	my $off = -s $node->logfile;
	kill 'KILL', $walwriter;
	$node->wait_for_log(qr/all server processes terminated; reinitializing/, $off);
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
			  . " AND pid <> $dispatcher"),
		"$table: the server restarted after the crash");
	ok( wait_until($node,
			"SELECT state IN ('done', 'dead') FROM shipsync.outbox WHERE order_key = '$id'", 30),
		"$table: the intent is settled after the restart");
	return ($waybill,
		sql("SELECT o.state || ' ' || o.attempts || ' ' || coalesce(t.waybill_no, '-')"
			  . " FROM shipsync.outbox o JOIN $table t ON t.id::text = o.order_key WHERE o.order_key = '$id'"));
}

# 1. not the last attempt: the apply is lost, the intent goes again
my ($wb1, $after1) = deliver_then_crash('orders_twice', 1);
is($after1, "done 2 $wb1",
	'max_attempts 2: the lost apply was sent again, and the same waybill written back');
my $key1 = sql("SELECT idempotency_key FROM shipsync.outbox WHERE order_key = '1'");
is(sim_get($sim, '/_sim/attempts')->{$key1}{requests}, 2, 'max_attempts 2: two requests under one key');
is(sim_get($sim, '/_sim/stats')->{duplicate_orders}, 0, 'max_attempts 2: one shipment at the carrier');

# 2. the last attempt: its apply is durable before the waybill is seen
my ($wb2, $after2) = deliver_then_crash('orders_once', 2);
is($after2, "done 1 $wb2", 'max_attempts 1: the apply of the only attempt survived the crash');
is(sql("SELECT count(*) FROM shipsync.exception_ticket WHERE order_key = '2'"), 0,
	'max_attempts 1: no dead intent, no ticket');

$node->stop;
done_testing();
