# The upgrade path: a cluster running the 0.1 build, with providers,
# bindings and delivered orders, gets the new build, restarts, runs
# ALTER EXTENSION pg_shipsync UPDATE, and then holds exactly what a fresh
# install holds (every object, compared from the catalogs by
# test/catalog.sql), keeps its data, and goes on delivering.  The
# credentials 0.1 kept in plain text (a bearer token, webhook secrets, a
# Kuaidi100 key, the salt inside a stored subscription) end up encrypted in
# shipsync.secret, nowhere in a dump, and still work.
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

my $sim = start_sim(args => [ '--kuaidi100-key', 'kd-key-014' ]);
# a carrier that checks a bearer token, for the credentials of 0.1
my $tsim = start_sim(args => [ '--token', 'tok-014-SECRET' ], seed => 14);
END { local $?; stop_sim($tsim) if $tsim; }
# every credential the 0.1 install holds in plain text
my @credentials = ('tok-014-SECRET', 'whsec_dXBncmFkZS0wMTQtd2ViaG9vaw==', 'kd-key-014',
	'salt-014-SECRET', 'dXBncmFkZS0wMTQtd2ViaG9vaw');
my $node = PostgreSQL::Test::Cluster->new('upgrade', install_path => Cwd::abs_path("$inst_bin/.."));
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'pg_shipsync'
shipsync.databases = 'postgres, fresh'
# the simulator is on 127.0.0.1, which 0.2 reaches only when allowed here
# (the 0.1 library does not know the parameter: a warning at its start)
shipsync.allowed_hosts = '127.0.0.1'
max_worker_processes = 16
# no daily reconciliation in the middle of the test (ShipsyncTest.pm)
shipsync.reconcile_at = ''
});
$node->start;

# 0.1 at work: a provider, a binding, delivered orders, a dead intent
$node->safe_psql('postgres', q{CREATE EXTENSION pg_shipsync VERSION '0.1'});
setup_orders($node, $sim);
$node->safe_psql('postgres', q{
	SELECT shipsync.create_provider('gone', 'generic', 'http://127.0.0.1:9',
		'{"timeout_ms": 500, "max_attempts": 1}');
	CREATE TABLE crm.returns (id int PRIMARY KEY, customer text, waybill_no text);
	-- a quote total into a numeric(10,2): 0.1's write-back rounds it
	CREATE TABLE crm.billed (id int PRIMARY KEY, customer text, waybill_no text, fee numeric(10,2));
	SELECT shipsync.attach('crm.billed', 'gone', writeback => '{"tracking_number": "waybill_no", "fee_total": "fee"}');
	SELECT shipsync.attach('crm.returns', 'gone', writeback => '{"tracking_number": "waybill_no"}');
	INSERT INTO crm.returns VALUES (1, '退货');
	INSERT INTO crm.orders (customer) SELECT '客户' || g FROM generate_series(1, 50) g;
	SELECT shipsync.copy_profile('sf_express', 'sf_mine');
});
# 0.1 with credentials: a bearer token and a webhook secret; a Kuaidi100
# key and salt, the salt stored in the subscriptions it sent
$node->safe_psql('postgres', qq{
	SELECT shipsync.create_provider('tok', 'generic', '$tsim->{url}',
		'{"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 500,
		  "auth": {"type": "bearer", "token": "tok-014-SECRET"},
		  "webhook_secret": "whsec_dXBncmFkZS0wMTQtd2ViaG9vaw=="}');
	SELECT shipsync.create_provider('kd', 'kuaidi100', '$sim->{url}',
		'{"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 500,
		  "company": "shunfeng", "callback_url": "https://shop.example/kd", "webhook_secret": "salt-014-SECRET",
		  "auth": {"type": "kuaidi100", "customer": "CUST014", "key": "kd-key-014"}}');
	CREATE TABLE crm.tracked (id int PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('crm.tracked', 'tok', writeback => '{"tracking_number": "waybill_no"}',
		options => '{"tracking_provider": "kd"}');
	INSERT INTO crm.tracked VALUES (1, '带凭据');
});
ok(wait_until($node, 'SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL'),
	'0.1 delivers');
ok(wait_until($node, q{SELECT count(*) = 1 FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
	WHERE p.name = 'kd' AND o.state = 'done'}), '0.1 delivers with a token and subscribes at Kuaidi100');
ok(wait_until($node, q{SELECT count(*) = 1 FROM shipsync.outbox WHERE state = 'dead'}),
	'0.1 gives up on a dead carrier');
# retried by hand, it dies again: 0.1 opens a second ticket for the order
$node->safe_psql('postgres', q{SELECT shipsync.retry(id) FROM shipsync.outbox WHERE state = 'dead'});
ok(wait_until($node, q{SELECT count(*) = 2 FROM shipsync.exception_ticket
	WHERE order_key = '1' AND kind = (SELECT kind FROM shipsync.exception_ticket WHERE order_key = '1' LIMIT 1)}),
	'0.1 opened a second ticket when the retried intent died again');
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

# the new build, installed while the server runs; an update before the
# restart (docs/upgrading.md, step 2) failed on a C function of 0.2 that
# the library of 0.1, still loaded, lacks ("could not find function
# shipsync_cancel_when_sql"): now it says to restart
run_or_die('make', '-s', '-C', $top, 'with_llvm=no', "PG_CONFIG=$pg_config", "DESTDIR=$inst",
	'install');
my ($rc, $update_out, $update_err) = $node->psql('postgres', 'ALTER EXTENSION pg_shipsync UPDATE');
like( $update_err,
	qr/ERROR:  the server runs a library of pg_shipsync older than 0\.2.*\n.*\nHINT:  Restart PostgreSQL/,
	'an update before the restart is refused, saying to restart first');
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'pg_shipsync'}),
	'0.1', 'and changes nothing');
# restarted, updated
$node->stop;
my $log_offset = -s $node->logfile;
$node->start;
# the new library leaves a 0.1 schema alone until it is updated
ok($node->wait_for_log(qr/dispatcher for database "postgres" waits: the extension is at version 0\.1, the library at 0\.2/,
		$log_offset), 'the new dispatcher waits for ALTER EXTENSION UPDATE, and says so');
$node->safe_psql('postgres', "INSERT INTO crm.orders (customer) VALUES ('升级中')");
sleep(1);
is($node->safe_psql('postgres', "SELECT waybill_no IS NULL FROM crm.orders WHERE customer = '升级中'"),
	't', 'an order captured before the update waits');
# the functions of 0.1 that call the library's C functions meanwhile: those
# that read the tables as 0.2 makes them failed on what 0.1 lacks
# ("relation shipsync.secret does not exist", "column o.request_kind does
# not exist"); now they say why
for my $call (q{SELECT shipsync.ingest_tracking('tok', '{}')}, 'SELECT * FROM shipsync.claim(1, 1)')
{
	my ($rc, $out, $err) = $node->psql('postgres', $call);
	like( $err,
		qr/ERROR:  extension pg_shipsync is at version 0\.1 in this database, the library at 0\.2\n(.*\n)?HINT:  Run ALTER EXTENSION pg_shipsync UPDATE/,
		"before the update, $call says to update");
}

# A dump of the 0.1 database names no version in its CREATE EXTENSION:
# restored as it is, it made 0.2 and filled it with the rows of 0.1, the
# bindings' statements of 0.1 (every order of them failed to render, and
# died) and the credentials in plain text, without an error.  Now refused,
# saying how; restored into CREATE EXTENSION ... VERSION '0.1' and updated,
# it is a 0.2 install like any other (checked after the update below).
my $dump01 = "$tmp/v01.sql";
run_or_die("$inst_bin/pg_dump", '-f', $dump01, '-d', $node->connstr('postgres'));
sub restore01
{
	my ($db) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ "$inst_bin/psql", '-X', '-q', '-f', $dump01, '-d', $node->connstr($db) ],
		'>', \$out, '2>', \$err);
	return $err;
}
$node->safe_psql('postgres', 'CREATE DATABASE dump01_as_is');
my $as_is = restore01('dump01_as_is');
like($as_is, qr/binding 1 of table crm\.orders was made by pg_shipsync 0\.1/,
	'a 0.1 dump restored as it is: its bindings are refused');
like($as_is, qr/provider "tok" holds its credentials in plain text, as pg_shipsync 0\.1 kept them/,
	'and its providers with credentials in plain text');
like($as_is, qr/CREATE EXTENSION pg_shipsync VERSION '0\.1'/, 'saying how to restore it');
is($node->safe_psql('dump01_as_is', q{SELECT (SELECT count(*) FROM shipsync.binding) || '/'
	|| (SELECT count(*) FROM shipsync.provider WHERE name = 'tok')}),
	'0/0', 'no binding of 0.1 is left to fail, no credential in plain text');
$node->safe_psql('postgres', 'CREATE DATABASE dump01_restored');
$node->safe_psql('dump01_restored', q{CREATE EXTENSION pg_shipsync VERSION '0.1'});
is( join("\n", grep { /ERROR/ && !/schema "shipsync" already exists/ } split /\n/,
		restore01('dump01_restored')),
	'', 'restored into CREATE EXTENSION ... VERSION \'0.1\': no error but the schema that exists');

# Orders keep coming in during the update: the locks an order's capture
# waits for (on the inbox, which it writes; on shipsync.binding, which a
# session's first capture reads) are taken by the script's last commands.
# They were taken by its first, and every order insert waited for the
# whole update (12 s with a million intents).  Each command of the script
# notes whether such a lock is held.
$node->safe_psql('postgres', q{
	CREATE TABLE public.update_locks (n serial, held boolean);
	CREATE FUNCTION public.note_update_locks() RETURNS event_trigger LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.update_locks (held) SELECT EXISTS (
			SELECT 1 FROM pg_locks l
			 WHERE l.pid = pg_backend_pid() AND l.granted AND l.locktype = 'relation'
			   AND ((l.relation = 'shipsync.inbox'::regclass
					 AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'))
				 OR (l.relation = 'shipsync.binding'::regclass AND l.mode = 'AccessExclusiveLock')));
	END $$;
	CREATE EVENT TRIGGER note_update_locks ON ddl_command_end EXECUTE FUNCTION public.note_update_locks();
});
$node->safe_psql('postgres', 'ALTER EXTENSION pg_shipsync UPDATE');
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'pg_shipsync'}),
	'0.2', 'updated to 0.2');
my ($commands, $locked) = split /\|/,
  $node->safe_psql('postgres', 'SELECT count(*), count(*) FILTER (WHERE held) FROM public.update_locks');
cmp_ok($commands, '>', 100, "the update's commands were noted ($commands)");
# the binding's, the inbox's, and ALTER EXTENSION's own end
cmp_ok($locked, '<=', 3,
	"an order waits only for the update's last commands ($locked of $commands with the inbox or binding locked)");
$node->safe_psql('postgres', q{DROP EVENT TRIGGER note_update_locks;
	DROP FUNCTION public.note_update_locks(); DROP TABLE public.update_locks});
is($node->safe_psql('postgres', 'SELECT count(*) FROM shipsync.audit_log'), '0',
	'what the update script changed is not audited');

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

# every binding of 0.1 reads and writes its table with the statements
# attach() makes in 0.2 (attached again in a transaction rolled back), but
# for the qualified names of 0.2 (the workers run them with search_path
# pg_catalog, pg_temp: docs/upgrading.md): the update rewrote them, and a
# fee total is not written rounded any more
my $unqualified = sub {
	my $x = shift;
	return "pg_catalog.regexp_replace(pg_catalog.regexp_replace($x, "
	  . q{'OPERATOR\(pg_catalog\.=\)', '=', 'g'), '::pg_catalog\.(text|numeric)\[\]', '::\1[]', 'g')};
};
my $statements = q{SELECT string_agg(b.tbl::text || ':' || md5(}
  . $unqualified->(q{replace(b.render_sql, '$1::pg_catalog.int8[]', '$1::bigint[]')})
  . q{) || ':' || coalesce(md5(} . $unqualified->('b.writeback_sql')
  . q{), '-'), ',' ORDER BY b.tbl::text) FROM shipsync.binding b WHERE b.active};
my $reattached = $node->safe_psql('postgres', qq{
	BEGIN;
	CREATE TEMP TABLE was AS SELECT b.tbl, p.name, b.key_column, b.writeback, b.options - 'adopted_by' AS options
	  FROM shipsync.binding b JOIN shipsync.provider p USING (provider_id) WHERE b.active;
	SELECT count(shipsync.detach(tbl)) FROM was \\gset
	SELECT count(shipsync.attach(tbl, name, key_column, writeback, options)) FROM was \\gset
	$statements;
	ROLLBACK;});
is($node->safe_psql('postgres', $statements), $reattached,
	'each binding of 0.1 has the statements attach() makes in 0.2');
like($node->safe_psql('postgres', q{SELECT writeback_sql FROM shipsync.binding WHERE tbl = 'crm.billed'::regclass}),
	qr/round\(shipsync_u\.fee_total, 2\)/, 'the fee total of crm.billed is written only when it fits two decimals');

# the dump of 0.1 restored as docs/upgrading.md says, then updated: what a
# fresh install holds, its rows and credentials as the update makes them
# a user's views over columns the update changes the type of stopped it
# with PostgreSQL's own error, naming one view and saying nothing of what
# to do: now every such view is named, with what to do, and nothing done
$node->safe_psql('dump01_restored', q{
	CREATE SCHEMA report;
	CREATE VIEW report.open_orders AS SELECT order_key, state FROM shipsync.outbox;
	CREATE VIEW report.waybills AS SELECT tracking_number FROM shipsync.shipment;
	CREATE VIEW report.providers AS SELECT name FROM shipsync.provider;
});
($rc, $update_out, $update_err) = $node->psql('dump01_restored', 'ALTER EXTENSION pg_shipsync UPDATE');
like($update_err, qr/ERROR:  views of yours read columns of pg_shipsync whose type this update changes: report\.open_orders, report\.waybills
DETAIL:  .*Nothing was changed\.
HINT:  Keep their definitions \(SELECT pg_get_viewdef\('report\.open_orders'::regclass, true\)\), drop them, run ALTER EXTENSION pg_shipsync UPDATE again/,
	'views of the user over changed columns stop the update, every one named, saying what to do');
is($node->safe_psql('dump01_restored', q{SELECT extversion FROM pg_extension WHERE extname = 'pg_shipsync'}),
	'0.1', 'and nothing is changed');
$node->safe_psql('dump01_restored', 'DROP SCHEMA report CASCADE');
$node->safe_psql('dump01_restored', 'ALTER EXTENSION pg_shipsync UPDATE');
my %in_restored = map { $_ => 1 } split /\n/, run_or_die(@catalog, '-d', $node->connstr('dump01_restored'));
is(join("\n", grep { !$in_restored{$_} } split /\n/, $fresh), '',
	'a 0.1 dump restored into 0.1 and updated equals a fresh 0.2 install');
is($node->safe_psql('dump01_restored', $data), $before, 'with every row of 0.1');
is( $node->safe_psql('dump01_restored', q{SELECT string_agg(provider || ':' || name, ',' ORDER BY provider, name) FROM shipsync.secrets}),
	'kd:key,kd:webhook_secret,tok:token,tok:webhook_secret', 'and its credentials encrypted');

# no credential of 0.1 is left in plain text: not in any table's dump
my $dump = run_or_die("$inst_bin/pg_dump", '-d', $node->connstr('postgres'));
cmp_ok(length($dump), '>', 10000, 'the upgraded database dumps');
is(join(',', grep { index($dump, $_) >= 0 } @credentials), '',
	'after the update, no credential of 0.1 is in plain text anywhere in the dump');
like($dump, qr/COPY shipsync\.secret /, 'the dump carries shipsync.secret (ciphertext)');
# that dump restores (0.1 numbered the own field-map rows right after its
# seeds, the update added its seeds after them, and a fresh install seeds
# them all first: the restore failed on field_map_pkey)
my $own_maps = q{SELECT count(*) || ':' || string_agg(DISTINCT profile, ',')
	FROM shipsync.field_map WHERE NOT seeded};
# and the tickets 0.1 left (two for one problem, the older resolved by the
# update) come back as they are, none folded into another
my $tickets = q{SELECT string_agg(ticket_id || ':' || kind || ':' || coalesce(order_key, '-') || ':'
	|| (resolved_at IS NULL) || ':' || reopen_count, ',' ORDER BY ticket_id) FROM shipsync.exception_ticket};
$node->safe_psql('postgres', 'CREATE DATABASE upgraded_restored');
my $dumpfile = "$tmp/upgraded.sql";
PostgreSQL::Test::Utils::append_to_file($dumpfile, $dump);
my ($rout, $rerr) = ('', '');
IPC::Run::run([ "$inst_bin/psql", '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', $dumpfile, '-d',
	$node->connstr('upgraded_restored') ], '>', \$rout, '2>', \$rerr);
is($rerr, '', 'the dump of the upgraded database restores');
is($node->safe_psql('upgraded_restored', $own_maps), $node->safe_psql('postgres', $own_maps),
	'with the own field maps of 0.1');
is($node->safe_psql('upgraded_restored', $tickets), $node->safe_psql('postgres', $tickets),
	'and every ticket, open and resolved, as it was');
is( $node->safe_psql('postgres', q{SELECT string_agg(provider || ':' || name, ',' ORDER BY provider, name) FROM shipsync.secrets}),
	'kd:key,kd:webhook_secret,tok:token,tok:webhook_secret', 'each credential was moved into shipsync.secret');
is( $node->safe_psql('postgres', q{SELECT string_agg(name || ' ' || coalesce(auth::text, '-'), ', ' ORDER BY name)
	FROM shipsync.provider WHERE name IN ('kd', 'tok')}),
	'kd {"type": "kuaidi100", "customer": "CUST014"}, tok {"type": "bearer"}',
	'the provider rows keep what is not secret');
is( $node->safe_psql('postgres', q{SELECT count(*) FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
	WHERE p.name = 'kd' AND o.request_body LIKE '%__SHIPSYNC_KUAIDI100_SALT__%'}),
	'1', 'the stored Kuaidi100 subscription holds the salt\'s placeholder');
ok(-f $node->data_dir . '/pg_shipsync.key', 'the key was generated in the data directory at the update');
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

# the moved credentials work: the token for the carrier, key and salt for
# a new subscription
$node->safe_psql('postgres', "INSERT INTO crm.tracked VALUES (2, '升级后')");
ok(wait_until($node, q{SELECT count(*) = 2 FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
	WHERE p.name = 'kd' AND o.state = 'done'}), 'after the update: delivered with the token, subscribed with the key');
my ($reg) = grep { $_->{number} eq $node->safe_psql('postgres', 'SELECT waybill_no FROM crm.tracked WHERE id = 2') }
  @{ sim_get($sim, '/_sim/track/registrations') };
is($reg->{salt}, 'salt-014-SECRET', 'the subscription sent after the update carries the salt');

$node->stop;
stop_sim($sim);
stop_sim($tsim);
done_testing();
