# Physical failover: a hot standby with the extension preloaded and
# shipsync.databases set runs no dispatcher, answers pushes 503 and lets a
# reader read the queue; once promoted (no restart), its dispatcher sends
# what the old primary had captured and not sent, and again, under the same
# key, the intent that was on the wire when the primary died: one shipment
# per order at the carrier.  Intent ids handed out after the promotion are
# larger than every id of the old primary (per-order ordering, TAP 013).
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
# order 2's first request is held on the wire until released
sim_post($sim, '/_sim/faults', { rules => [
	{ fault => 'slow', ms => 60000, held => JSON::PP::true, match_order_ref => '^2$', count => 1 } ] });
my $p = shipsync_node('primary', { allows_streaming => 1 });
setup_orders($p, $sim, '{"timeout_ms": 30000, "backoff_base_ms": 50, "backoff_max_ms": 500}');
$p->safe_psql('postgres', q{
	CREATE ROLE rd LOGIN IN ROLE shipsync_reader;
	INSERT INTO crm.orders (customer, phone, address) VALUES ('c1', '13800000001', 'a');
});
ok(wait_settled($p, "'1'"), 'order 1 delivered by the primary');

$p->backup('b');
my $s = PostgreSQL::Test::Cluster->new('standby');
$s->init_from_backup($p, 'b', has_streaming => 1);
chmod 0600, $s->data_dir . '/pg_shipsync.key';
my $sport = PostgreSQL::Test::Cluster::get_free_port();
$s->append_conf('postgresql.conf', "shipsync.receiver_listen = '127.0.0.1:$sport'\n");
$s->start;

# ---- the hot standby ---------------------------------------------------------------
my $health;
for (1 .. 100)
{
	$health = push_http($sport, 'GET', '/healthz');
	last if $health->{status} == 503;
	usleep(100_000);
}
is($health->{status}, 503, 'standby: the receiver answers 503');
is($health->{headers}{'retry-after'}, '5', 'with Retry-After');
is($s->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"),
	'0', 'standby: no dispatcher');

$p->safe_psql('postgres', "INSERT INTO crm.orders (customer, phone, address) VALUES ('c2', '13800000002', 'a')");
ok(wait_until($p, "SELECT state = 'in_flight' FROM shipsync.outbox WHERE order_key = '2'"),
	'order 2 on the wire');
$p->safe_psql('postgres', q{
	SELECT shipsync.pause('sim');
	INSERT INTO crm.orders (customer, phone, address) VALUES ('c3', '13800000003', 'a'), ('c4', '13800000004', 'a');
});
my $max_old = $p->safe_psql('postgres',
	"SELECT max(id) FROM (SELECT id FROM shipsync.outbox UNION ALL SELECT id FROM shipsync.inbox) i");
my $key2 = $p->safe_psql('postgres', "SELECT idempotency_key FROM shipsync.outbox WHERE order_key = '2'");
# the request is at the carrier (held there), not only claimed
my $arrived = 0;
for (1 .. 300)
{
	last if ($arrived = (sim_get($sim, '/_sim/attempts')->{$key2}{requests} // 0)) > 0;
	usleep(100_000);
}
is($arrived, 1, 'order 2 held at the carrier');
$p->wait_for_catchup($s);
is($s->psql('postgres', "SET ROLE rd; SELECT * FROM shipsync.queue_status; SELECT * FROM shipsync.intents"),
	0, 'standby: a reader reads queue_status and intents');

# ---- the primary dies, the standby is promoted -----------------------------------------
$p->stop('immediate');
sim_post($sim, '/_sim/release');
$s->promote;
$s->safe_psql('postgres', "SELECT shipsync.resume('sim')");
ok(wait_settled($s, "'1','2','3','4'", 90), 'promoted: every intent settled');
is($s->safe_psql('postgres',
		"SELECT string_agg(order_key || ':' || state, ' ' ORDER BY id) FROM shipsync.outbox"),
	'1:done 2:done 3:done 4:done', 'all done');
is($s->safe_psql('postgres', "SELECT idempotency_key || ' ' || attempts FROM shipsync.outbox WHERE order_key = '2'"),
	"$key2 2", 'the intent in flight was sent again under its key');
my %n;
$n{ $_->{order_ref} }++ for @{ sim_get($sim, '/_sim/shipments') };
is(join(' ', map { "$_=$n{$_}" } sort keys %n), '1=1 2=1 3=1 4=1', 'one shipment per order at the carrier');
is($s->safe_psql('postgres', "SELECT count(*) FROM crm.orders WHERE waybill_no IS NULL"), '0',
	'every waybill written back');

$s->safe_psql('postgres', "INSERT INTO crm.orders (id, customer, phone, address) VALUES (5, 'c5', '13800000005', 'a')");
my $new = $s->safe_psql('postgres',
	"SELECT id FROM shipsync.outbox WHERE order_key = '5' UNION ALL SELECT id FROM shipsync.inbox WHERE order_key = '5'");
cmp_ok($new, '>', $max_old, 'an intent captured after the promotion has a larger id');
ok(wait_settled($s, "'5'"), 'and is delivered');
for (1 .. 100)
{
	last if push_http($sport, 'GET', '/healthz')->{status} == 200;
	usleep(100_000);
}
is(push_http($sport, 'GET', '/healthz')->{status}, 200, 'promoted: the receiver answers 200');
my @bad = grep { /(ERROR|FATAL|PANIC):/ && !/WAL stream|primary server|099_|052_failover/ }
  split /\n/, slurp_file($s->logfile);
is(join("\n", @bad), '', 'nothing of ours failed in the standby\'s log');

$s->stop;
stop_sim($sim);
done_testing();
