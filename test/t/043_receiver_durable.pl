# A 2xx from the receiver means the push is on disk, whatever the server's
# synchronous_commit: a sender that got one never sends it again.  Here the
# server runs with synchronous_commit = off (a common setting for the
# database's own work), the WAL writer is stopped (SIGSTOP) before the push
# and killed (SIGKILL) after its 200, which makes the postmaster
# reinitialize and lose whatever WAL nobody wrote out; no bgwriter,
# checkpoint or autovacuum writes it out meanwhile (see docs/testing.md).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use ShipsyncTest;

my $SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
my ($node, $port) = receiver_node('rdurable', 'synchronous_commit = off', 'restart_after_crash = on',
	'autovacuum = off', 'bgwriter_lru_maxpages = 0', "checkpoint_timeout = '1h'");

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub healthy
{
	for (1 .. 300)
	{
		return 1 if push_http($port, 'GET', '/healthz')->{status} == 200;
		usleep(100_000);
	}
	return 0;
}

sql(qq{CREATE EXTENSION pg_shipsync;
	SELECT shipsync.create_provider('trk', 'generic', 'http://127.0.0.1:9', '{"webhook_secret": "$SECRET"}');});
ok(healthy(), 'the receiver takes pushes');

my $events = q{SELECT (SELECT count(*) FROM shipsync.tracking_event)
	+ (SELECT count(*) FROM shipsync.unmatched_event)};
is(sql($events), 0, 'no event stored yet');

my $walwriter = sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'");
like($walwriter, qr/^\d+$/, 'the WAL writer runs');
kill 'STOP', $walwriter;
my $ev = '{"events": [{"id": "d1", "tracking_number": "DUR1", "status": "in_transit",'
  . ' "occurred_at": "2026-03-01T08:00:00Z"}]}';
my $r = push_http($port, 'POST', '/tracking/trk', sw_headers($SECRET, 'msg_d1', $ev), $ev);
is($r->{status}, 200, 'the push is answered 200');
is(sql($events), 1, 'and its event is stored');

my $off = -s $node->logfile;
kill 'KILL', $walwriter;
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $off);
ok($node->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'), 'the server restarted');
is(sql($events), 1, 'the push answered 200 survived the crash');
ok(healthy(), 'the receiver takes pushes again');

$node->stop;
done_testing();
