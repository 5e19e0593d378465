# Worker life: the launcher waits for databases and the extension, a commit
# wakes the dispatcher at once, SIGHUP adds a database, the launcher
# restarts a dispatcher that died.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ShipsyncTest;

my $sim = start_sim();
# a long idle check: only the commit-time latch can explain quick delivery
my $node = shipsync_node('worker', "shipsync.databases = 'postgres, later'",
	"shipsync.idle_check_ms = 600000");

ok( wait_until($node,
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync launcher'"),
	'the launcher runs');

# 'later' does not exist yet: created, then given the extension, with no restart
$node->safe_psql('postgres', 'CREATE DATABASE later');
setup_orders($node, $sim, undef, 'later');
my $t0 = time();
$node->safe_psql('later', "INSERT INTO crm.orders (customer) VALUES ('张三')");
ok( wait_until($node,
		"SELECT waybill_no IS NOT NULL FROM crm.orders", 20, 'later'),
	'a database created after start is served once it has the extension');

# a single commit is delivered without waiting for any poll
$t0 = time();
$node->safe_psql('later', "INSERT INTO crm.orders (customer) VALUES ('李四')");
# (a bound far from the 600 s a poll would take, not a speed: a loaded
# machine may take seconds)
ok(wait_until($node, "SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL", 60, 'later'),
	'the commit wakes the dispatcher');
my $elapsed = time() - $t0;
cmp_ok($elapsed, '<', 60, "delivered without polling (idle check is 600 s)");

# the launcher restarts a dispatcher that died
my $pid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher' AND datname = 'later'");
ok($pid, 'a dispatcher serves later');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( wait_until($node,
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
		  . " AND datname = 'later' AND pid <> $pid", 20),
	'the launcher started a new dispatcher');
$node->safe_psql('later', "INSERT INTO crm.orders (customer) VALUES ('王五')");
ok(wait_until($node, "SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL", 20, 'later'),
	'the new dispatcher delivers');

# SIGHUP: a database added to shipsync.databases gets a dispatcher
$node->safe_psql('postgres', 'CREATE DATABASE third');
$node->safe_psql('postgres', "ALTER SYSTEM SET shipsync.databases = 'postgres, later, third'");
$node->reload;
ok( wait_until($node,
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
		  . " AND datname = 'third'", 20),
	'a reload starts a dispatcher for a newly listed database');

# ... and one removed from the list is stopped
$node->safe_psql('postgres', "ALTER SYSTEM SET shipsync.databases = 'postgres, later'");
$node->reload;
ok( wait_until($node,
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
		  . " AND datname = 'third'", 20),
	'a reload stops the dispatcher of a database left out');

# A served database's owner (no superuser) renames it, copies it and
# drops it: the workers connected to it let go while the DBA's command
# holds the database (its lock), and are not started again meanwhile.
# Before, each of these failed after 5 s with "database is being accessed
# by other users", and WITH (FORCE) was refused to its owner ("must be a
# member of the role whose process is being terminated").
$node->safe_psql('postgres', q{CREATE ROLE shop_owner LOGIN CREATEDB;
	CREATE DATABASE shop OWNER shop_owner});
$node->safe_psql('postgres', "ALTER SYSTEM SET shipsync.databases = 'postgres, later, shop'");
$node->reload;
setup_orders($node, $sim, undef, 'shop');
$node->safe_psql('shop', "INSERT INTO crm.orders (customer) VALUES ('赵六')");
ok(wait_until($node, "SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL", 20, 'shop'),
	'shop is served');
for my $cmd ('ALTER DATABASE shop RENAME TO shop_old', 'ALTER DATABASE shop_old RENAME TO shop',
	'CREATE DATABASE shop_copy TEMPLATE shop', 'DROP DATABASE shop_copy')
{
	# the dispatcher of shop, back after the rename
	ok(wait_until($node, "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = "
			. "'pg_shipsync dispatcher' AND datname = 'shop'", 20), "shop has a dispatcher before: $cmd")
	  if $cmd !~ /shop_old RENAME/;
	my ($rc, $out, $err) = $node->psql('postgres', $cmd, extra_params => [ '-U', 'shop_owner' ]);
	is($rc . $err, '0', "its owner: $cmd");
}
$node->safe_psql('shop', "INSERT INTO crm.orders (customer) VALUES ('钱七')");
ok(wait_until($node, "SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL", 20, 'shop'),
	'shop is served again after them');
my ($rc, $out, $err) = $node->psql('postgres', 'DROP DATABASE shop', extra_params => [ '-U', 'shop_owner' ]);
is($rc . $err, '0', 'its owner drops it');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pg_shipsync%'"
		. " AND datname = 'shop'"), '0', 'no worker is left in it');

# a clean shutdown stops everything
$node->stop;
ok(1, 'the server stops with the workers running');

stop_sim($sim);
done_testing();
