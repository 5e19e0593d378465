# The upgrade path: a cluster running the 0.1 build, with providers,
# bindings and delivered orders, gets the new build, restarts, runs
# ALTER EXTENSION pg_shipsync UPDATE, and then holds exactly what a fresh
# install holds (every object, compared from the catalogs by
# test/catalog.sql), keeps its data, and goes on delivering.
#
# Both builds are installed into a private copy of the server's
# installation (PostgreSQL finds its library and share directories
# relative to its binaries), so the system's install is never touched.
# The 0.1 sources come from $SHIPSYNC_V01_SRC (bin/test exports the tag
# v0.1 there) or from the repository's tag v0.1.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $top = "$FindBin::RealBin/../..";
my $tmp = PostgreSQL::Test::Utils::tempdir();

sub run_or_die
{
	my (@cmd) = @_;
	my ($out, $err);
	IPC::Run::run(\@cmd, '>', \$out, '2>', \$err)
	  or die "@cmd failed:\n$out\n$err";
	return $out;
}

# the 0.1 sources
my $v01 = $ENV{SHIPSYNC_V01_SRC};
if (!$v01 || !-f "$v01/pg_shipsync--0.1.sql")
{
	$v01 = "$tmp/v0.1";
	make_path($v01);
	system("git -C '$top' archive v0.1 | tar -x -C '$v01'") == 0
	  && -f "$v01/Makefile"
	  or BAIL_OUT('the sources of v0.1 are needed: set SHIPSYNC_V01_SRC or run from a clone with tag v0.1');
}

# a private copy of the installation: bindir/.. and the share directory,
# at the same paths below $inst
my $pg_config = $ENV{PG_CONFIG} // 'pg_config';
chomp(my $bindir = `$pg_config --bindir`);
chomp(my $sharedir = `$pg_config --sharedir`);
chomp(my $pkglibdir = `$pg_config --pkglibdir`);
my $inst = "$tmp/inst";
for my $d ("$bindir/..", $sharedir)
{
	my $real = Cwd::abs_path($d);
	make_path("$inst" . File::Basename::dirname($real));
	run_or_die('cp', '-a', $real, "$inst$real");
}
my $inst_bin = "$inst" . Cwd::abs_path($bindir);
# the copies must read their own directories, not the system's
my $copy_pkglib = run_or_die("$inst_bin/pg_config", '--pkglibdir');
chomp $copy_pkglib;
is($copy_pkglib, "$inst$pkglibdir", 'the private installation is relocated');

# build 0.1 and install it into the copy, in place of what the copy holds
unlink glob("$inst$sharedir/extension/pg_shipsync*"), glob("$inst$pkglibdir/pg_shipsync*");
run_or_die('make', '-s', '-C', $v01, 'with_llvm=no', "PG_CONFIG=$pg_config");
run_or_die('make', '-s', '-C', $v01, 'with_llvm=no', "PG_CONFIG=$pg_config",
	"DESTDIR=$inst", 'install');
ok(!-e "$inst$sharedir/extension/pg_shipsync--0.2.sql", 'only 0.1 is installed at first');

my $sim = start_sim();
my $node = PostgreSQL::Test::Cluster->new('upgrade', install_path => Cwd::abs_path("$inst_bin/.."));
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'pg_shipsync'
shipsync.databases = 'postgres, fresh'
max_worker_processes = 16
});
$node->start;

# 0.1 at work: a provider, a binding, delivered orders, a dead intent
$node->safe_psql('postgres', q{CREATE EXTENSION pg_shipsync VERSION '0.1'});
setup_orders($node, $sim);
$node->safe_psql('postgres', q{
	SELECT shipsync.create_provider('gone', 'generic', 'http://127.0.0.1:9',
		'{"timeout_ms": 500, "max_attempts": 1}');
	CREATE TABLE crm.returns (id int PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('crm.returns', 'gone', writeback => '{"tracking_number": "waybill_no"}');
	INSERT INTO crm.returns VALUES (1, '退货');
	INSERT INTO crm.orders (customer) SELECT '客户' || g FROM generate_series(1, 50) g;
	SELECT shipsync.copy_profile('sf_express', 'sf_mine');
});
ok(wait_until($node, 'SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL'),
	'0.1 delivers');
ok(wait_until($node, q{SELECT count(*) = 1 FROM shipsync.outbox WHERE state = 'dead'}),
	'0.1 gives up on a dead carrier');
# what 0.1 holds, leaving out the orders captured after the restart
my $data = q{SELECT (SELECT count(*) FROM shipsync.provider) || '/' ||
	(SELECT count(*) FROM shipsync.binding) || '/' ||
	(SELECT count(*) FROM shipsync.outbox WHERE id <= 0 + :max) || '/' ||
	(SELECT count(*) FROM shipsync.shipment s WHERE EXISTS (SELECT FROM shipsync.outbox o
		WHERE o.id <= 0 + :max AND o.order_key = s.order_key AND o.binding_id = s.binding_id)) || '/' ||
	(SELECT count(*) FROM shipsync.delivery_log WHERE outbox_id <= 0 + :max) || '/' ||
	(SELECT count(*) FROM shipsync.exception_ticket) || '/' ||
	(SELECT count(*) FROM shipsync.field_map WHERE NOT seeded) || '/' ||
	(SELECT string_agg(tracking_number, ',' ORDER BY order_key) FROM shipsync.shipment s
		WHERE EXISTS (SELECT FROM shipsync.outbox o
		WHERE o.id <= 0 + :max AND o.order_key = s.order_key AND o.binding_id = s.binding_id))};
my $max = $node->safe_psql('postgres', 'SELECT max(id) FROM shipsync.outbox');
$data =~ s/:max/$max/g;
my $before = $node->safe_psql('postgres', $data);

# the new build, restarted, updated
$node->stop;
run_or_die('make', '-s', '-C', $top, 'with_llvm=no', "PG_CONFIG=$pg_config", "DESTDIR=$inst",
	'install');
my $log_offset = -s $node->logfile;
$node->start;
# the new library leaves a 0.1 schema alone until it is updated
ok($node->wait_for_log(qr/dispatcher for database "postgres" waits: the extension is at version 0\.1, the library at 0\.2/,
		$log_offset), 'the new dispatcher waits for ALTER EXTENSION UPDATE, and says so');
$node->safe_psql('postgres', "INSERT INTO crm.orders (customer) VALUES ('升级中')");
sleep(1);
is($node->safe_psql('postgres', "SELECT waybill_no IS NULL FROM crm.orders WHERE customer = '升级中'"),
	't', 'an order captured before the update waits');
$node->safe_psql('postgres', 'ALTER EXTENSION pg_shipsync UPDATE');
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'pg_shipsync'}),
	'0.2', 'updated to 0.2');

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION pg_shipsync');
my @catalog = ('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', "$top/test/catalog.sql");
my $upgraded = run_or_die(@catalog, '-d', $node->connstr('postgres'));
my $fresh = run_or_die(@catalog, '-d', $node->connstr('fresh'));
cmp_ok(length($fresh), '>', 10000, 'the catalog description covers the extension');
my %in_fresh = map { $_ => 1 } split /\n/, $fresh;
my %in_upgraded = map { $_ => 1 } split /\n/, $upgraded;
my @only_fresh = grep { !$in_upgraded{$_} } split /\n/, $fresh;
my @only_upgraded = grep { !$in_fresh{$_} } split /\n/, $upgraded;
is(scalar(@only_fresh) + scalar(@only_upgraded), 0,
	'an upgraded 0.1 install equals a fresh 0.2 install, object for object')
  or diag("only in a fresh install:\n  " . join("\n  ", @only_fresh)
	  . "\nonly after the upgrade:\n  " . join("\n  ", @only_upgraded));

is($node->safe_psql('postgres', $data), $before, 'every row of 0.1 is still there');
$node->safe_psql('postgres',
	"INSERT INTO crm.orders (customer) SELECT '新客户' || g FROM generate_series(1, 19) g");
ok(wait_until($node, 'SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL'),
	'orders captured after the upgrade are delivered');
is($node->safe_psql('postgres', 'SELECT count(*) FROM shipsync.shipment s JOIN crm.orders o'
	  . ' ON s.order_key = o.id::text AND s.tracking_number = o.waybill_no'),
	'70', 'every order has its shipment, once');
my $st = sim_get($sim, '/_sim/stats');
is($st->{shipments}, 70, 'the carrier holds 70 shipments');
is($st->{duplicate_orders}, 0, 'and no order twice');

$node->stop;
stop_sim($sim);
done_testing();
