# The dispatcher yields the CPU to the database's sessions: it runs at
# shipsync.dispatcher_nice (default 0: as an equal), as its process's nice value and, on
# kernels that schedule each session as a group (autogroup; every
# PostgreSQL process leads its own session), as its group's nice value,
# the one that counts there.  A reload raises it at once; lowering it needs
# a privilege, so it applies when the dispatcher next starts.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ShipsyncTest;

my $node = shipsync_node('nice');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_shipsync');

sub dispatcher_pid
{
	my ($not) = @_;
	my $pid;
	my $other = $not ? " AND pid <> $not" : '';
	for (my $deadline = time() + 30; time() < $deadline; usleep(100_000))
	{
		$pid = $node->safe_psql('postgres',
			"SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'$other");
		return $pid if $pid;
	}
	die 'no dispatcher';
}

# the nice value of a process (field 19 of /proc/PID/stat, after the
# command in parentheses), and its autogroup's ("/autogroup-N nice V"),
# undef without autogroup
sub nice_of
{
	return (proc_stat($_[0]))[16];
}
sub group_nice_of
{
	my ($pid) = @_;
	return undef unless -e "/proc/$pid/autogroup";
	return slurp_file("/proc/$pid/autogroup") =~ /nice (-?\d+)/ ? $1 : undef;
}
my $grouped = -e '/proc/self/autogroup';

# wait until the dispatcher's nice value is $want (it sets it at start and
# at a reload, both asynchronous to us); with $not, the dispatcher that
# replaced that one (pg_terminate_backend() returns before it has exited,
# and its pid can still be listed, then gone from /proc)
sub nice_becomes
{
	my ($want, $not) = @_;
	my $pid = dispatcher_pid($not);
	for (my $deadline = time() + 30; time() < $deadline; usleep(100_000))
	{
		return $pid if nice_of($pid) == $want
		  && (!$grouped || group_nice_of($pid) == $want);
	}
	diag('nice ' . nice_of($pid) . ', group ' . (group_nice_of($pid) // 'none'));
	return 0;
}

my $pid = nice_becomes(0);
ok($pid, 'by default the dispatcher runs at nice 0, as the sessions do');

# The kernel takes one change of a session group's nice value per 100 ms
# on the whole machine from unprivileged processes, and refuses the others
# (EAGAIN).  The dispatcher and its applier both change theirs at the
# reload, so one of them meets the refusal; so does the dispatcher when we
# have just changed ours (to the value it has).  The group still follows.
sub touch_own_group
{
	return unless $grouped;
	my ($nice) = slurp_file('/proc/self/autogroup') =~ /nice (-?\d+)/;
	open(my $fh, '>', '/proc/self/autogroup') or return;
	print $fh $nice;
	close($fh);
}
touch_own_group();
$node->safe_psql('postgres',
	'ALTER SYSTEM SET shipsync.dispatcher_nice = 12; SELECT pg_reload_conf()');
is(nice_becomes(12), $pid, 'a reload raises it at once, in the same dispatcher'
	  . ($grouped ? ', its session group too, though the kernel refused the first try' : ''));
# the dispatcher alone: another process the postmaster forked, one that
# lives on (a session's backend exits with its psql)
my $checkpointer = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'");
is(nice_of($checkpointer), 0, 'the server\'s other processes keep nice 0');

my $offset = -s $node->logfile;
$node->safe_psql('postgres',
	'ALTER SYSTEM SET shipsync.dispatcher_nice = 3; SELECT pg_reload_conf()');
ok( $node->wait_for_log(
		qr/shipsync\.dispatcher_nice = 3 applies when the dispatcher next starts/, $offset),
	'lowering it by a reload is refused, and said');
is(nice_of($pid), 12, 'the running dispatcher keeps 12');

$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
my $new = nice_becomes(3, $pid);
ok($new && $new != $pid, 'the next dispatcher starts at the lowered value');

$node->stop;
done_testing();
