# Between two requests, a keep-alive connection stays in the dispatcher's
# epoll set ("parked", src/http.c): libcurl stops watching it after every
# answer and watches it again for the next request, and the two
# epoll_ctl() calls that took it out and put it back are saved.  A carrier
# that closes idle connections (here after 2 s; nginx does after 75 s)
# leaves every parked socket readable for good.  Proves:
#   1. keep-alive still works: a burst to a provider with max_inflight 8
#      goes over at most 8 connections;
#   2. the dispatcher takes the sockets the carrier closed out of its set:
#      idle after the carrier closed them, it uses next to no CPU (a
#      closed socket left in the set would wake it at once, for ever:
#      with that check taken out, 300 ticks in 3 s, one core spinning);
#   3. the next burst goes out on new connections, every order sent once,
#      every attempt answered: no connection the carrier closed is used,
#      and none of the new ones is mistaken for a closed one.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ShipsyncTest;

my $n = 200;
# 2 s: longer than any pause of a connection within a burst on a loaded
# machine, so that only the idle connections are closed
my $sim = start_sim(args => [ '--keepalive-timeout', '2' ]);
END { local $?; stop_sim($sim); }

my $node = shipsync_node('parked');
setup_orders($node, $sim, '{"timeout_ms": 5000, "max_inflight": 8}');

sub burst
{
	my ($first) = @_;
	$node->safe_psql('postgres',
		"INSERT INTO crm.orders (customer) SELECT 'parked ' || g FROM generate_series($first, $first + $n - 1) g");
	return wait_until($node,
		"SELECT count(*) = " . ($first + $n - 1) . " FROM crm.orders WHERE waybill_no IS NOT NULL");
}

# the connections the simulator has accepted from the dispatcher: each of
# these questions comes on a connection of its own
my $asked = 0;
sub connections { return sim_get($sim, '/_sim/connections')->{connections} - ++$asked; }

ok(burst(1), "a burst of $n orders is written back");
my $after_first = connections();
cmp_ok($after_first, '<=', 8, "keep-alive: the $n went over at most max_inflight (8) connections");

# the simulator closes them all after 2 s idle; then the dispatcher idles
sleep 4;
my $pid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'");
my $t0 = cpu_seconds($pid);
sleep 3;
my $spent = cpu_seconds($pid) - $t0;
cmp_ok($spent, '<', 0.6,
	"the dispatcher idles once the carrier has closed its idle connections "
	  . "($spent s of CPU in 3 s; spinning on them would be about 3)");

ok(burst($n + 1), "the next burst of $n is written back");
my $after_second = connections();
cmp_ok($after_second, '>', $after_first,
	"it went over new connections ($after_first before, $after_second after)");
cmp_ok($after_second - $after_first, '<=', 8, 'at most max_inflight (8) of them');
is( $node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE attempts <> 1) || ' ' || count(*) FROM shipsync.outbox"),
	'0 ' . (2 * $n),
	'every order was sent once');
is( $node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE outcome <> 'done') || ' ' || count(*) FROM shipsync.delivery_log"),
	'0 ' . (2 * $n),
	'every attempt was answered: none went to a connection the carrier had closed');

$node->stop;
done_testing();
