# The dispatcher's memory, and its applier's, stay flat under load.
#
# 20,000 orders with shipsync.idle_check_ms = 100 (an idle check, a
# configuration reload and a sweep every tenth of a second) and the tracking
# poller on: the transaction helpers run on every pass.  A helper that
# commits and leaves TopMemoryContext current makes the rest of that pass
# (claim arrays, apply arrays) allocate there, never to be freed: the
# dispatcher grew from 92 KB to 23.6 MB over 27,000 orders that way.  The
# dispatcher's private memory (RssAnon of /proc/PID/status) is read after
# 5,000 orders, when its caches are warm, and after 20,000: it must not grow
# by more than 5 MB.  The total of its memory contexts is reported beside it
# (pg_log_backend_memory_contexts), for the diagnosis when it fails.  The
# same holds for the applier, which applies the dispatcher's results
# (applier.c): it runs the transaction helpers on every batch too.  Each
# reading waits for the dispatcher to give a burst's heap back, which it
# does a second after going idle (read sooner, a reading could catch the
# peak of the last burst); then that second is checked, with the idle
# check at 60 s, and that a stream with moments of nothing in flight does
# not count as idle.  Then forty tenants' tables attached, written onto,
# detached and dropped: the applier keeps no plan of theirs.  Then the
# dispatcher's heap in huge pages where the
# kernel offers them, and not with shipsync.dispatcher_huge_pages off.
# Last, the shared memory and the applier's heap reserve a new pair
# touches ahead of its first burst, and not with shipsync.prefault_memory
# off.
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
my $node = shipsync_node('memory', 'shipsync.idle_check_ms = 100');
# polling on: a round an hour, so that the poller reads its configuration
# at every reload without flooding the simulator
setup_orders($node, $sim,
	'{"timeout_ms": 5000, "backoff_base_ms": 50, "backoff_max_ms": 500, "poll_interval_s": 3600}');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub dispatcher_pid
{
	return sql(q{SELECT pid FROM pg_stat_activity
		WHERE backend_type = 'pg_shipsync dispatcher' AND datname = 'postgres'});
}

sub applier_pid
{
	return sql(q{SELECT pid FROM pg_stat_activity
		WHERE backend_type = 'pg_shipsync applier' AND datname = 'postgres'});
}

# RssAnon of a process, in kB
# RssAnon once the process has settled: the smallest of 3 s of samples (the
# heap is given back a second after going idle, later on a loaded machine)
sub settled_rss_kb
{
	my ($pid) = @_;
	my $min;
	for (1 .. 30)
	{
		my $kb = rss_anon_kb($pid);
		$min = $kb if !defined $min || $kb < $min;
		usleep(100_000);
	}
	return $min;
}

sub rss_anon_kb
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/status") or die "cannot read /proc/$pid/status: $!";
	while (<$fh>)
	{
		return $1 if /^RssAnon:\s+(\d+)\s+kB/;
	}
	die "no RssAnon in /proc/$pid/status";
}

# The grand total of the process's memory contexts, in bytes, from the log
# The bytes of a process's memory contexts, or with $used the bytes used
# in them (not the free space of their blocks: a context that crosses a
# block boundary takes its next block whole, CacheMemoryContext one of
# 1 MB, which says nothing of what is kept)
sub top_context_bytes
{
	my ($pid, $used) = @_;
	my $off = -s $node->logfile;
	sql("SELECT pg_log_backend_memory_contexts($pid)");
	my $bytes;
	for (1 .. 100)
	{
		my $log = slurp_file($node->logfile, $off);
		if ($log =~ /Grand total: (\d+) bytes in \d+ blocks; \d+ free \(\d+ chunks\); (\d+) used/)
		{
			$bytes = $used ? $2 : $1;
			last;
		}
		usleep(100_000);
	}
	return $bytes // -1;
}

# Commit $n orders in transactions of 250, a little apart, so that the
# deliveries span many idle checks; wait until all have their waybill.
my $total = 0;

sub deliver
{
	my ($n) = @_;
	for (my $done = 0; $done < $n; $done += 250)
	{
		sql(q{INSERT INTO crm.orders (customer, address)
			SELECT 'Customer ' || g, g || ' Main Street' FROM generate_series(1, 250) g});
		usleep(20_000);
	}
	$total += $n;
	return wait_until($node,
		"SELECT count(*) = $total FROM crm.orders WHERE waybill_no IS NOT NULL", 300);
}

my $pid = dispatcher_pid();
like($pid, qr/^\d+$/, 'the dispatcher runs');

# the dispatcher gives a burst's heap back a second after going idle
ok(deliver(5000), '5,000 orders delivered');
my $rss1 = settled_rss_kb($pid);
my $top1 = top_context_bytes($pid);
my $apid = applier_pid();
like($apid, qr/^\d+$/, 'an applier applied them');
my $arss1 = settled_rss_kb($apid);
my $atop1 = top_context_bytes($apid);

ok(deliver(15000), '20,000 orders delivered');
is(dispatcher_pid(), $pid, 'the same dispatcher delivered them all');
my $rss2 = settled_rss_kb($pid);
my $top2 = top_context_bytes($pid);

my $grew = $rss2 - $rss1;
diag("dispatcher RssAnon: $rss1 kB after 5,000 orders, $rss2 kB after 20,000 (+$grew kB);"
	  . " memory contexts: $top1 -> $top2 bytes");
cmp_ok($grew, '<=', 5 * 1024,
	'the dispatcher\'s private memory grew by at most 5 MB from 5,000 to 20,000 orders');

is(applier_pid(), $apid, 'the same applier applied them all');
my $arss2 = settled_rss_kb($apid);
my $atop2 = top_context_bytes($apid);
my $agrew = $arss2 - $arss1;
diag("applier RssAnon: $arss1 kB after 5,000 orders, $arss2 kB after 20,000 (+$agrew kB);"
	  . " memory contexts: $atop1 -> $atop2 bytes");
cmp_ok($agrew, '<=', 5 * 1024,
	'the applier\'s private memory grew by at most 5 MB from 5,000 to 20,000 orders');

# A second after going idle, whatever the idle check: two bursts a
# moment apart (no quiet second between them), then the heap is back
# where it was within 2 s.
sql("ALTER SYSTEM SET shipsync.idle_check_ms = '60s'; SELECT pg_reload_conf()");
usleep(300_000);
ok(deliver(250), 'a burst delivered at idle_check_ms 60s');
ok(deliver(250), 'and another at once');
my $rss3;
for (my $i = 0; $i < 40; $i++)
{
	$rss3 = rss_anon_kb($pid);
	last if $rss3 <= $rss2 + 1024;
	usleep(50_000);
}
cmp_ok($rss3, '<=', $rss2 + 1024,
	"the dispatcher gives the heap back within 2 s of going idle ($rss3 kB)");
is(dispatcher_pid(), $pid, 'the same dispatcher throughout');

# Not while work goes on: a stream spaced by a rate limit has nothing in
# flight most of the time, yet it is not idle.  The heap is given back
# once, a second after the stream's last request; given back at every
# moment with nothing in flight (at most once a second), a burst whose
# results waited for the applier faulted its heap in again after each
# release (a 20,000 burst: 3 releases, 10,000 page faults).  16 orders at
# 4 a second take 3 s or more: that was 2 releases at least.
sql("ALTER SYSTEM SET log_min_messages = debug1; SELECT pg_reload_conf()");
sql(q{BEGIN; UPDATE shipsync.provider SET rate_limit_per_s = 4 WHERE name = 'sim';
	SELECT shipsync._wake(true); COMMIT;});
usleep(1_500_000);    # whatever was due from the bursts above is given back
my $off = -s $node->logfile;
sql(q{INSERT INTO crm.orders (customer, address)
	SELECT 'Customer ' || g, g || ' Main Street' FROM generate_series(1, 16) g});
$total += 16;
ok(wait_until($node, "SELECT count(*) = $total FROM crm.orders WHERE waybill_no IS NOT NULL", 60),
	'a stream of 16 orders at 4 a second delivered');
my $releases = 0;
for (my $i = 0; $i < 40; $i++)
{
	$releases = () = slurp_file($node->logfile, $off) =~ /dispatcher gave its free heap back/g;
	last if $releases > 0;
	usleep(100_000);
}
usleep(1_500_000);    # a second release would come within this
$releases = () = slurp_file($node->logfile, $off) =~ /dispatcher gave its free heap back/g;
is($releases, 1, 'the heap is given back once, after the stream, never during it');
sql(q{BEGIN; UPDATE shipsync.provider SET rate_limit_per_s = 0 WHERE name = 'sim';
	SELECT shipsync._wake(true); COMMIT;});
sql("ALTER SYSTEM RESET log_min_messages; SELECT pg_reload_conf()");

# Tenants come and go: a table attached, one order delivered onto it, the
# table detached and dropped, over and over.  The applier kept the saved
# write-back plan of every binding it ever wrote (some 40 kB each) for its
# whole life, the plans of dropped tables too: 1,100 such tenants grew its
# memory contexts from 3.8 MB to 54 MB.  A configuration loaded now frees
# the plans of the bindings no longer attached.  Five tenants first, so
# that what the first one warms up is not counted; then forty: the plans
# kept were 1.6 MB of them.
sub tenant
{
	my ($i) = @_;
	sql(qq{SET client_min_messages = error;
		CREATE TABLE crm.tenant_$i (id bigint PRIMARY KEY, customer text, waybill_no text);
		SELECT shipsync.attach('crm.tenant_$i', 'sim',
			writeback => '{"tracking_number": "waybill_no"}');});
	# a key no other order has: the carrier counts an order_ref seen twice
	sql(qq{INSERT INTO crm.tenant_$i VALUES (900000 + $i, 'tenant $i')});
	wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.tenant_$i", 60)
	  or die "the order of tenant $i was not delivered";
	sql(qq{SELECT shipsync.detach('crm.tenant_$i'); DROP TABLE crm.tenant_$i;});
}
tenant($_) for (1 .. 5);
my $atop3 = top_context_bytes($apid, 'used');
tenant($_) for (6 .. 45);
is(applier_pid(), $apid, 'the same applier wrote back onto 45 tenants\' tables');
my $atop4 = top_context_bytes($apid, 'used');
diag("applier memory contexts: $atop3 bytes used after 5 tenants dropped, $atop4 after 45");
cmp_ok($atop4 - $atop3, '<=', 400 * 1024,
	'forty tenants attached, written and dropped leave the applier\'s memory at most 400 kB larger');

# The dispatcher's heap in transparent huge pages (hugeheap.c), where the
# kernel gives them to memory that asks ("madvise", Debian's default, or
# "always"): a new dispatcher's heap has an area the kernel may back with
# 2 MB pages, and with shipsync.dispatcher_huge_pages off it has none (at
# "madvise"; at "always" every area may, asked or not).  Eligibility, read
# in /proc/PID/smaps, not the pages themselves: whether the kernel had a
# free 2 MB page at a fault is not the dispatcher's doing.
sub heap_eligible
{
	my ($pid) = @_;
	my ($in_heap, $eligible) = (0, 0);
	for (split /\n/, slurp_file("/proc/$pid/smaps"))
	{
		if (/^[0-9a-f]+-[0-9a-f]+ /) { $in_heap = /\[heap\]\s*$/ ? 1 : 0; }
		elsif ($in_heap && /^THPeligible:\s+1/) { $eligible++; }
	}
	return $eligible;
}

sub new_dispatcher
{
	my $old = dispatcher_pid();
	my $old_applier = applier_pid();
	my $off = -s $node->logfile;
	sql("SELECT pg_terminate_backend($old)");
	ok(wait_until($node, q{SELECT count(*) = 1 FROM pg_stat_activity
		WHERE backend_type = 'pg_shipsync dispatcher' AND datname = 'postgres'
		  AND pid <> } . $old, 30), 'a new dispatcher started');
	# past its start, where the heap is prepared before this line is logged
	$node->wait_for_log(qr/pg_shipsync dispatcher started for database "postgres"/, $off);
	# and its applier, which it starts once the old one has gone, later
	ok(wait_until($node, qq{SELECT count(*) = 1 FROM pg_stat_activity
		WHERE backend_type = 'pg_shipsync applier' AND datname = 'postgres'
		  AND pid::text <> '$old_applier'}, 30), 'and its applier');
	return dispatcher_pid();
}

my $thp = -r '/sys/kernel/mm/transparent_hugepage/enabled'
  ? (slurp_file('/sys/kernel/mm/transparent_hugepage/enabled') =~ /\[(\w+)\]/)[0]
  : 'none';
my $offered = $thp eq 'madvise' || $thp eq 'always';
my $eligible = heap_eligible(new_dispatcher());
if ($offered)
{
	cmp_ok($eligible, '>=', 1,
		"transparent huge pages \"$thp\": the dispatcher's heap may have them");
}
else
{
	is($eligible, 0, "transparent huge pages \"$thp\": no heap area may have them");
}
sql("ALTER SYSTEM SET shipsync.dispatcher_huge_pages = off; SELECT pg_reload_conf()");
$eligible = heap_eligible(new_dispatcher());
if ($thp ne 'always')
{
	is($eligible, 0,
		"transparent huge pages \"$thp\", shipsync.dispatcher_huge_pages off: no heap area may have them");
}
else
{
	cmp_ok($eligible, '>=', 1, 'transparent huge pages "always": the kernel offers them unasked');
}
sql("ALTER SYSTEM RESET shipsync.dispatcher_huge_pages; SELECT pg_reload_conf()");

# The server's shared memory and the applier's heap reserve, touched ahead
# of the first burst (prefault.c): while idle after they start, a new
# dispatcher and its applier come to have the whole main shared memory
# segment in their page tables (RssShmem of /proc/PID/status: at least
# the server's shared_memory_size, less 5%), and the applier has 16 MB of
# heap touched (RssAnon); with shipsync.prefault_memory off, neither
# happens.  Orders committed while a new pair is still touching are
# delivered all the same: the touching gives way to work.
sub status_kb
{
	my ($pid, $field) = @_;
	for (split /\n/, slurp_file("/proc/$pid/status"))
	{
		return $1 if /^$field:\s+(\d+)\s+kB/;
	}
	die "no $field in /proc/$pid/status";
}
my ($shm_mb) = sql('SHOW shared_memory_size') =~ /^(\d+)MB$/
  or die 'shared_memory_size not in MB';
my $shm_kb = $shm_mb * 1024;

# RssShmem of pid once it reaches want kB (waiting up to 30 s), else its last
sub shmem_reaches
{
	my ($pid, $want) = @_;
	my $kb;
	for (1 .. 300)
	{
		$kb = status_kb($pid, 'RssShmem');
		return $kb if $kb >= $want;
		usleep(100_000);
	}
	return $kb;
}

is(sql('SHOW shipsync.prefault_memory'), 'on', 'shipsync.prefault_memory is on by default');
# orders committed as soon as a new dispatcher is up, while it touches
my $before_new = dispatcher_pid();
sql("SELECT pg_terminate_backend($before_new)");
wait_until($node, q{SELECT count(*) = 1 FROM pg_stat_activity
	WHERE backend_type = 'pg_shipsync dispatcher' AND datname = 'postgres'
	  AND pid <> } . $before_new, 30);
ok(deliver(250), 'orders committed while a new pair starts are delivered');
my $d = new_dispatcher();
my $a = applier_pid();
cmp_ok(shmem_reaches($d, $shm_kb * 0.95), '>=', $shm_kb * 0.95,
	"a new dispatcher touches the server's shared memory ($shm_mb MB) while idle");
cmp_ok(shmem_reaches($a, $shm_kb * 0.95), '>=', $shm_kb * 0.95,
	"and its applier too");
cmp_ok(status_kb($a, 'RssAnon'), '>=', 16 * 1024, 'the applier has its 16 MB heap reserve');
ok(deliver(250), 'a burst on the pair that touched it all is delivered');

sql("ALTER SYSTEM SET shipsync.prefault_memory = off; SELECT pg_reload_conf()");
$d = new_dispatcher();
$a = applier_pid();
usleep(2_000_000);    # as long as touching it all took above, and more
cmp_ok(status_kb($d, 'RssShmem'), '<', $shm_kb / 2,
	'shipsync.prefault_memory off: a new dispatcher leaves the shared memory alone');
cmp_ok(status_kb($a, 'RssShmem'), '<', $shm_kb / 2, 'and so does its applier');
cmp_ok(status_kb($a, 'RssAnon'), '<', 16 * 1024, 'which has no heap reserve');
sql("ALTER SYSTEM RESET shipsync.prefault_memory; SELECT pg_reload_conf()");

# Of the shared buffers, only the first gigabyte is touched: the server
# hands them out in order after a start, so the first bursts use the first
# ones, and each page touched costs the worker CPU and page table for as
# long as it lives (at shared_buffers = 64GB, a minute of CPU and 128 MB of
# page tables each).  With 1.5 GB of buffers, the last half gigabyte stays
# out of a new pair's page tables, and all the rest is in.
$node->append_conf('postgresql.conf', "shared_buffers = 1536MB\nlog_min_messages = debug1");
$node->restart;
($shm_mb) = sql('SHOW shared_memory_size') =~ /^(\d+)MB$/
  or die 'shared_memory_size not in MB';
$shm_kb = $shm_mb * 1024;
ok($node->wait_for_log(qr/the $_ has touched the server's shared memory/), "the $_ is done touching")
  for ('dispatcher', 'applier');
for my $w ([ 'dispatcher', dispatcher_pid() ], [ 'applier', applier_pid() ])
{
	my $kb = status_kb($w->[1], 'RssShmem');
	cmp_ok($kb, '<=', $shm_kb - 512 * 1024 + 4 * 1024,
		"with 1536 MB of shared buffers the $w->[0] leaves their last 512 MB alone ($kb kB of $shm_mb MB)");
	cmp_ok($kb, '>=', ($shm_kb - 512 * 1024) * 0.95, "and has the rest");
}
ok(deliver(250), 'a burst beyond what was touched is delivered');

is(sql("SELECT count(*) FROM shipsync.outbox WHERE state <> 'done'"),
	'0', 'every intent is done');
is(sim_get($sim, '/_sim/stats')->{duplicate_orders}, 0, 'no order shipped twice');

$node->stop;
done_testing();
