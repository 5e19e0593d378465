# Worker life: the launcher waits for databases and the extension, a commit
# wakes the dispatcher at once, SIGHUP adds a database, the launcher
# restarts a dispatcher that died; database settings do not reach the
# workers; a restarted launcher adopts the running workers; a cancel of the
# dispatcher neither pauses it nor aborts its transfers; a served
# database's owner can rename, copy and drop it (the workers let go); a
# database renamed for good or closed to connections is said not to be
# served; with no worker slot, the launcher backs off; a shipsync.databases
# that does not parse is refused, and the dispatchers go on.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use JSON::PP;
use ShipsyncTest;

my $sim = start_sim();
# a long idle check: only the commit-time latch can explain quick delivery
my ($node, $recv_port) = receiver_node('worker', "shipsync.databases = 'postgres, later'",
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

# attach() in a database no dispatcher serves says so: its orders would be
# captured and never sent, with nothing in the log
{
	my ($ret, $out, $err) = $node->psql('third', q{
		CREATE EXTENSION pg_shipsync;
		CREATE TABLE orders (id int PRIMARY KEY, waybill_no text);
		SELECT shipsync.create_provider('sim', 'generic', 'http://127.0.0.1:9');
		SELECT shipsync.attach('orders', 'sim');
	});
	is($ret, 0, 'attach() in a database that is not served succeeds');
	like($err, qr/WARNING:  database "third" is not in shipsync\.databases/,
		'... with a warning that its orders are not sent');
	like($err, qr/HINT:  .*ALTER SYSTEM SET shipsync\.databases/, '... and a hint to list it');
	($ret, $out, $err) = $node->psql('later', q{
		CREATE TABLE orders2 (id int PRIMARY KEY, waybill_no text);
		SELECT shipsync.attach('orders2', 'sim');
	});
	unlike($err, qr/WARNING/, 'attach() in a served database warns of nothing');

	# a name in double quotes may hold a comma: the launcher serves "a,b",
	# and attach() there reads the list as the launcher does (it split it
	# at every comma, and warned that "a,b" was not served)
	$node->safe_psql('postgres', 'CREATE DATABASE "a,b"');
	$node->safe_psql('postgres', q{ALTER SYSTEM SET shipsync.databases = 'postgres, later, "a,b"'});
	$node->reload;
	ok( wait_until($node,
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
			  . " AND datname = 'a,b'", 20),
		'a listed name in double quotes holding a comma is served');
	($ret, $out, $err) = $node->psql('a,b', q{
		CREATE EXTENSION pg_shipsync;
		CREATE TABLE orders (id int PRIMARY KEY, waybill_no text);
		SELECT shipsync.create_provider('sim', 'generic', 'http://127.0.0.1:9');
		SELECT shipsync.attach('orders', 'sim');
	});
	is($ret . $err, '0', 'attach() in database "a,b", served, warns of nothing');
	$node->safe_psql('postgres', "ALTER SYSTEM SET shipsync.databases = 'postgres, later'");
	$node->reload;
	ok( wait_until($node,
			"SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = 'a,b'", 20),
		'... and left out again, it is not');
	$node->safe_psql('postgres', 'DROP DATABASE "a,b"');
}

# A list that does not parse (an unclosed quote) is refused where it is
# written, and the dispatchers go on. Taken at a reload, it stopped the
# dispatcher of every database, and the launcher warned about it every
# second.
{
	my ($ret, $out, $err) = $node->psql('postgres',
		q{ALTER SYSTEM SET shipsync.databases = 'postgres, later, "unclosed'});
	like($err, qr/invalid value for parameter "shipsync\.databases"/,
		'ALTER SYSTEM refuses a shipsync.databases that does not parse');
	$node->reload;
	$node->safe_psql('later', "INSERT INTO crm.orders (customer) VALUES ('赵六')");
	ok(wait_until($node, "SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL", 20, 'later'),
		'... and after a reload the dispatchers still deliver');

	# written in postgresql.conf (no ALTER SYSTEM value above it): the
	# reload keeps the list it had
	$node->safe_psql('postgres', 'ALTER SYSTEM RESET shipsync.databases');
	$node->append_conf('postgresql.conf',
		qq{shipsync.databases = 'postgres, later, "unclosed'\nworker003.reload = '1'});
	$node->reload;
	ok(wait_until($node, "SELECT current_setting('worker003.reload', true) = '1'"),
		'the server reloaded its configuration');
	is($node->safe_psql('postgres', 'SHOW shipsync.databases'), 'postgres, later',
		'a list in postgresql.conf that does not parse leaves the list as it was');
	my $conf = slurp_file($node->data_dir . '/postgresql.conf');
	$conf =~ s/^shipsync\.databases = 'postgres, later, "unclosed'\n//m;
	open(my $fh, '>', $node->data_dir . '/postgresql.conf') or die $!;
	print $fh $conf;
	close($fh);
	$node->safe_psql('postgres', "ALTER SYSTEM SET shipsync.databases = 'postgres, later'");
	$node->reload;
}

# Settings of the database (or of the role the workers connect as) that
# would change how their transactions behave do not reach them: with these
# the dispatcher failed every pass (read-only, or serialization failures),
# write-backs of orders another session held for a moment went dead
# (lock_timeout), and the extension's own triggers did not fire (replica).
# The test's own sessions set them back for themselves.
my $own = "SET default_transaction_read_only = off; SET lock_timeout = 0;"
  . " SET session_replication_role = origin; SET default_transaction_isolation = 'read committed';"
  . " SET check_function_bodies = on; SET jit = off;";
$node->safe_psql('postgres', q{
	ALTER DATABASE later SET default_transaction_read_only = on;
	ALTER DATABASE later SET default_transaction_isolation = 'serializable';
	ALTER DATABASE later SET session_replication_role = replica;
	ALTER DATABASE later SET lock_timeout = '50ms';
	ALTER DATABASE later SET check_function_bodies = off;
	ALTER DATABASE later SET jit = on;
	ALTER DATABASE later SET jit_above_cost = 0;
	ALTER DATABASE later SET jit_inline_above_cost = 0;
	ALTER DATABASE later SET jit_optimize_above_cost = 0;});
# jit = on with no threshold (a database tuned for its reports): the
# workers compiled each of their statements, every time; the dispatcher
# left the network unread for seconds ("did not read the network for
# 9377 ms"), its requests timed out and its breaker opened.  A trigger on
# the orders, which the applier's write-back fires, notes its session's jit
$node->safe_psql('later', $own . q{
	CREATE TABLE crm.jit_seen (jit text);
	CREATE FUNCTION crm.note_jit() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF NEW.waybill_no IS DISTINCT FROM OLD.waybill_no THEN
			INSERT INTO crm.jit_seen VALUES (current_setting('jit'));
		END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER note_jit BEFORE UPDATE ON crm.orders FOR EACH ROW EXECUTE FUNCTION crm.note_jit();});
$pid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher' AND datname = 'later'");
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( wait_until($node,
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
		  . " AND datname = 'later' AND pid <> $pid", 20),
	'a dispatcher under the database settings runs');
my $log_at = -s $node->logfile;
$node->safe_psql('later', "$own INSERT INTO crm.orders (customer) VALUES ('settings 1'), ('settings 2')");
ok(wait_until($node, "$own SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL", 30, 'later'),
	'read-only and serializable database defaults: orders are still delivered');
unlike(slurp_file($node->logfile, $log_at),
	qr/read-only transaction|could not serialize|goes on after an error/,
	'and the dispatcher does not fail');
is($node->safe_psql('later', "$own SELECT string_agg(DISTINCT jit, ', ') FROM crm.jit_seen"),
	'off', 'jit = on with no threshold: the workers run their statements without JIT');
$node->safe_psql('later',
	"$own DROP TRIGGER note_jit ON crm.orders; DROP FUNCTION crm.note_jit(); DROP TABLE crm.jit_seen");

# replica: the ticket of a refused order gets its history row
sim_post($sim, '/_sim/faults',
	{ rules => [ { fault => 'status', status => 422, match_order_ref => '.', count => 1 } ] });
$node->safe_psql('later', "$own INSERT INTO crm.orders (customer) VALUES ('settings refused')");
ok( wait_until($node,
		"$own SELECT count(*) = 1 FROM shipsync.exception_ticket t JOIN crm.orders o"
		  . " ON o.id::text = t.order_key WHERE o.customer = 'settings refused'", 30, 'later'),
	'session_replication_role = replica: the refused order has its ticket');
is( $node->safe_psql('later',
		"$own SELECT count(*) FROM shipsync.ticket_event e JOIN shipsync.exception_ticket t USING (ticket_id)"
		  . " JOIN crm.orders o ON o.id::text = t.order_key"
		  . " WHERE o.customer = 'settings refused' AND e.event = 'opened'"),
	'1', 'and its history says it was opened');
# check_function_bodies off (which the database's owner may set): the
# workers' sessions, a superuser's, were taken for a restore, whose
# tickets are loaded as they were.  The same order refused again opened a
# second ticket of the problem beside the open one: "duplicate key value
# violates unique constraint exception_ticket_open_key", and the intent
# ended writeback_failed
$log_at = -s $node->logfile;
sim_post($sim, '/_sim/faults',
	{ rules => [ { fault => 'status', status => 422, match_order_ref => '.', count => 1 } ] });
$node->safe_psql('later', "$own UPDATE crm.orders SET address = 'again' WHERE customer = 'settings refused'");
ok( wait_until($node,
		"$own SELECT count(*) = 0 FROM shipsync.outbox x JOIN crm.orders o ON o.id::text = x.order_key"
		  . " WHERE o.customer = 'settings refused' AND x.state NOT IN ('dead', 'done')", 30, 'later'),
	'check_function_bodies = off: the order refused again is done with');
is( $node->safe_psql('later',
		"$own SELECT string_agg(t.kind || ' ' || t.reopen_count, ', ') FROM shipsync.exception_ticket t"
		  . " JOIN crm.orders o ON o.id::text = t.order_key WHERE o.customer = 'settings refused'"),
	'dead_intent 0', 'and its ticket is the one of its first refusal');
unlike(slurp_file($node->logfile, $log_at), qr/exception_ticket_open_key/, 'no second ticket was tried');
sim_post($sim, '/_sim/faults', { rules => [] });

# lock_timeout: an order row held by another session for longer than it
# is written back when the session lets go, not given up
# (the answer is held back by the simulator, under the provider's
# timeout_ms of 2 s, while the row is taken)
my $holder = $node->background_psql('later');
$holder->query_safe($own);
sim_post($sim, '/_sim/faults', { rules => [ { fault => 'slow', ms => 20000, held => JSON::PP::true } ] });
$node->safe_psql('later', "$own INSERT INTO crm.orders (customer) VALUES ('settings held')");
ok( wait_until($node,
		"$own SELECT count(*) = 1 FROM shipsync.outbox WHERE state = 'in_flight'", 30, 'later'),
	'an order is on the wire');
$holder->query_safe("BEGIN");
$holder->query_safe("SELECT id FROM crm.orders WHERE customer = 'settings held' FOR UPDATE");
sim_post($sim, '/_sim/release');
sim_post($sim, '/_sim/faults', { rules => [] });
# the answer is in, and the write-back meets the held row
usleep(1_000_000);
$holder->query_safe("COMMIT");
$holder->quit;
ok( wait_until($node,
		"$own SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = 'settings held'", 30, 'later'),
	'lock_timeout = 50ms: the held order is written back once let go');
is($node->safe_psql('later', "$own SELECT count(*) FROM shipsync.outbox WHERE state = 'dead' AND error_class = 'writeback_failed'"),
	'0', 'and no intent died of the wait');
$node->safe_psql('postgres', 'ALTER DATABASE later RESET ALL');

# A table's owner whose code a worker runs (here a trigger the write-back
# fires) is who makes the changes that code makes.  An admin's trigger
# that turned check_function_bodies off made the worker's session, a
# superuser's, pass for a restore: its change of a status map was not
# audited at all; without that, it was audited as the worker's own, the
# bootstrap superuser acting, the admin nowhere.
$node->safe_psql('later', q{
	CREATE ROLE audit_boss IN ROLE shipsync_admin;
	GRANT USAGE, CREATE ON SCHEMA crm TO audit_boss;
	CREATE TABLE crm.boss_orders (id bigserial PRIMARY KEY, customer text NOT NULL, waybill_no text);
	ALTER TABLE crm.boss_orders OWNER TO audit_boss;
	SET ROLE audit_boss;
	SELECT shipsync.attach('crm.boss_orders', 'sim', writeback => '{"tracking_number": "waybill_no"}');
	CREATE FUNCTION crm.hidden() RETURNS trigger LANGUAGE plpgsql
	SET check_function_bodies = off AS $$
	BEGIN
		INSERT INTO shipsync.status_map (profile, raw_status, status)
		VALUES ('generic', 'HIDDEN_' || NEW.customer, 'delivered');
		RETURN NEW;
	END $$;
	CREATE FUNCTION crm.seen() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO shipsync.status_map (profile, raw_status, status)
		VALUES ('generic', 'SEEN_' || NEW.customer, 'delivered');
		RETURN NEW;
	END $$;
	CREATE TRIGGER hidden BEFORE UPDATE ON crm.boss_orders FOR EACH ROW EXECUTE FUNCTION crm.hidden();
	CREATE TRIGGER seen BEFORE UPDATE ON crm.boss_orders FOR EACH ROW EXECUTE FUNCTION crm.seen();
	RESET ROLE;
	INSERT INTO crm.boss_orders (customer) VALUES ('boss');});
ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.boss_orders", 30, 'later'),
	'an admin\'s order is written back, its triggers fired by the applier');
is( $node->safe_psql('later',
		"SELECT string_agg(concat_ws(' ', a.\"session_user\", a.\"current_user\", a.action, a.object_name), ', '"
		  . " ORDER BY a.object_name) FROM shipsync.audit_log a"
		  . " WHERE a.object_kind = 'status_map' AND a.object_name LIKE 'generic/%\\_boss/'"),
	'dispatcher audit_boss insert generic/HIDDEN_boss/, dispatcher audit_boss insert generic/SEEN_boss/',
	'the status maps its triggers wrote are audited, as the admin\'s, in the worker\'s session');
$node->safe_psql('later', q{
	SELECT shipsync.detach('crm.boss_orders');
	DROP TABLE crm.boss_orders;
	DROP FUNCTION crm.hidden(), crm.seen();
	DELETE FROM shipsync.status_map WHERE raw_status LIKE '%\_boss';
	REVOKE ALL ON SCHEMA crm FROM audit_boss;
	DROP ROLE audit_boss;});

# A launcher terminated (or failed) leaves its workers running: the one
# started after it adopts them.  It started a second dispatcher every
# second, which exited at once ("a pg_shipsync dispatcher already runs in
# this database"), and a second receiver that could not listen; and a
# database then left out of shipsync.databases kept its dispatcher.
my %before = map { split /\|/ } split /\n/, $node->safe_psql('postgres',
	"SELECT backend_type || coalesce(' ' || datname, ''), pid FROM pg_stat_activity"
	  . " WHERE backend_type IN ('pg_shipsync dispatcher', 'pg_shipsync receiver', 'pg_shipsync launcher')");
ok($before{'pg_shipsync receiver postgres'} && $before{'pg_shipsync dispatcher later'},
	'a receiver and dispatchers run');
$log_at = -s $node->logfile;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($before{'pg_shipsync launcher'})");
ok( wait_until($node,
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync launcher'"
		  . " AND pid <> $before{'pg_shipsync launcher'}", 20),
	'the launcher is started again');
usleep(3_000_000);
my $log = slurp_file($node->logfile, $log_at);
unlike($log, qr/already runs in this database/, 'the new launcher starts no second dispatcher');
unlike($log, qr/receiver cannot listen/, 'nor a second receiver');
is( join(', ', sort split /\n/, $node->safe_psql('postgres',
		"SELECT backend_type || coalesce(' ' || datname, '') || ' ' || pid"
		  . " FROM pg_stat_activity WHERE backend_type IN ('pg_shipsync dispatcher', 'pg_shipsync receiver')")),
	join(', ', map { "$_ $before{$_}" } sort grep { !/launcher/ } keys %before),
	'the workers of the launcher before it go on');
$node->safe_psql('later', "INSERT INTO crm.orders (customer) VALUES ('adopted')");
ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = 'adopted'", 20, 'later'),
	'and deliver');
$node->safe_psql('postgres', "ALTER SYSTEM SET shipsync.databases = 'postgres'");
$node->reload;
ok( wait_until($node,
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
		  . " AND datname = 'later'", 20),
	'a reload stops the adopted dispatcher of a database left out');
$node->safe_psql('postgres', "ALTER SYSTEM SET shipsync.databases = 'postgres, later'");
$node->reload;
ok( wait_until($node,
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
		  . " AND datname = 'later'", 20),
	'and listed again, it gets one');

# pg_cancel_backend() of the dispatcher with requests on the wire: the
# cancelled statement is not a failure to wait out.  Three cancels in a
# row paused it 1 + 2 + 4 s, while the answers waited unread: every
# request on the wire timed out (timeout_ms is 2 s), was counted against
# the carrier (its breaker opened) and was sent again.
sim_post($sim, '/_sim/faults', { rules => [ { fault => 'slow', ms => 300 } ] });
my $sent = sim_get($sim, '/_sim/stats')->{requests};
$log_at = -s $node->logfile;
$node->safe_psql('later', "INSERT INTO crm.orders (customer) SELECT 'cancel ' || g FROM generate_series(1, 100) g");
ok( wait_until($node, "SELECT count(*) > 0 FROM shipsync.outbox WHERE state = 'in_flight'", 20, 'later'),
	'requests are on the wire');
for (1 .. 3)
{
	$node->safe_psql('postgres',
		"SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher' AND datname = 'later'");
	usleep(300_000);
}
ok( wait_until($node,
		"SELECT count(*) = 0 FROM crm.orders WHERE customer LIKE 'cancel %' AND waybill_no IS NULL", 60, 'later'),
	'cancelled three times, the dispatcher delivers every order');
is(sim_get($sim, '/_sim/stats')->{requests} - $sent, 100, 'each sent once');
is( $node->safe_psql('later', "SELECT coalesce(failures_5m->>'timeout', '0') FROM shipsync.provider_health"),
	'0', 'and no answer waited until it timed out');
unlike(slurp_file($node->logfile, $log_at), qr/goes on after an error/, 'the dispatcher did not pause');
sim_post($sim, '/_sim/faults', { rules => [] });

# ... nor does a cancel abort the transfers on the wire: a cancel that came
# with the answers aborted every transfer ("Callback aborted"), counted as
# the carrier's failures, and sent again
sim_post($sim, '/_sim/faults', { rules => [ { fault => 'slow', ms => 1500, held => JSON::PP::true } ] });
$sent = sim_get($sim, '/_sim/stats')->{requests};
$node->safe_psql('later', "INSERT INTO crm.orders (customer) SELECT 'held ' || g FROM generate_series(1, 20) g");
ok( wait_until($node, "SELECT count(*) = 20 FROM shipsync.outbox WHERE state = 'in_flight'", 20, 'later'),
	'twenty requests wait for their answers');
# the cancel and the answers reach the dispatcher together: stopped while
# the simulator answers and the cancel is sent, then let go
$pid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher' AND datname = 'later'");
my $failed = $node->safe_psql('later', "SELECT coalesce(failures_5m->>'transport', '0') FROM shipsync.provider_health");
kill 'STOP', $pid;
sim_post($sim, '/_sim/release');
sim_post($sim, '/_sim/faults', { rules => [] });
usleep(300_000);
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
kill 'CONT', $pid;
ok( wait_until($node,
		"SELECT count(*) = 0 FROM crm.orders WHERE customer LIKE 'held %' AND waybill_no IS NULL", 30, 'later'),
	'cancelled while waiting, the dispatcher delivers every order');
is(sim_get($sim, '/_sim/stats')->{requests} - $sent, 20, 'each sent once');
is( $node->safe_psql('later', "SELECT coalesce(failures_5m->>'transport', '0') FROM shipsync.provider_health"),
	$failed, 'and no transfer was aborted');

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
# A role that may not drop, rename or copy shop (no owner, no CREATEDB)
# tries to, over and over: each try takes the database's lock before it
# is refused.  The workers stay: before, the launcher took a refused try
# for a DBA's command and terminated the dispatcher and its applier (two
# times in 6 s, what was on the wire sent again when they came back).
$node->safe_psql('postgres', 'CREATE ROLE mallory LOGIN');
my $dispatcher_sql = "SELECT pid FROM pg_stat_activity WHERE backend_type = "
  . "'pg_shipsync dispatcher' AND datname = 'shop'";
ok(wait_until($node, "SELECT count(*) = 1 FROM ($dispatcher_sql) d", 20), 'shop has a dispatcher');
my $dispatcher = $node->safe_psql('postgres', $dispatcher_sql);
$log_at = -s $node->logfile;
my $tries = q{DO $$ DECLARE t timestamptz := clock_timestamp(); BEGIN
	WHILE clock_timestamp() < t + interval '8 s' LOOP
		BEGIN EXECUTE 'ALTER DATABASE shop RENAME TO shop_stolen';
		EXCEPTION WHEN insufficient_privilege THEN NULL; END;
	END LOOP; END $$};
my @tries = map {
	IPC::Run::start([ 'psql', '-X', '-q', '-U', 'mallory', '-d', $node->connstr('postgres'), '-c', $tries ],
		'>', \my $o, '2>', \my $e)
} 1 .. 2;
$_->finish for @tries;
is($node->safe_psql('postgres', $dispatcher_sql), $dispatcher,
	'refused tries to rename shop leave its dispatcher running');
unlike(slurp_file($node->logfile, $log_at), qr/is held by a DBA's command/,
	'and the launcher does not take them for a DBA\'s command');
# A served database renamed for good, or closed to connections, is served
# no more: the launcher says so, and why.  Before, the let-go's "its
# workers stop until it is over" was the last word, and its orders were
# captured and never sent.
my $shop_dispatcher = "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = "
  . "'pg_shipsync dispatcher' AND datname = ";
$log_at = -s $node->logfile;
my ($rc, $out, $err) = $node->psql('postgres', 'ALTER DATABASE shop RENAME TO shop_moved',
	extra_params => [ '-U', 'shop_owner' ]);
is($rc . $err, '0', 'its owner renames shop to shop_moved');
ok( $node->wait_for_log(
		qr/WARNING:  database "shop" of shipsync\.databases was renamed to "shop_moved": no pg_shipsync dispatcher serves it/,
		$log_at),
	'the launcher says that shop was renamed, and is not served');
like(slurp_file($node->logfile, $log_at),
	qr/DETAIL:  Its orders are captured and not sent until shipsync\.databases names it\.\n.*HINT:  Put "shop_moved" in shipsync\.databases in place of "shop"/,
	'... what it means and what to do');
$node->safe_psql('postgres', "ALTER SYSTEM SET shipsync.databases = 'postgres, later, shop_moved'");
$node->reload;
$node->safe_psql('shop_moved', "INSERT INTO crm.orders (customer) VALUES ('moved')");
ok(wait_until($node, "SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL", 30, 'shop_moved'),
	'listed under its new name, it is served');
is(scalar(() = slurp_file($node->logfile, $log_at) =~ /was renamed to "shop_moved"/g), 1, 'said once');

$log_at = -s $node->logfile;
$node->safe_psql('postgres', 'ALTER DATABASE shop_moved ALLOW_CONNECTIONS false');
$node->safe_psql('postgres', "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
	  . " WHERE backend_type = 'pg_shipsync dispatcher' AND datname = 'shop_moved'");
ok( $node->wait_for_log(
		qr/WARNING:  database "shop_moved" of shipsync\.databases does not allow connections: no pg_shipsync dispatcher serves it/,
		$log_at),
	'closed to connections, the launcher says it is not served');
like(slurp_file($node->logfile, $log_at), qr/HINT:  Run ALTER DATABASE shop_moved ALLOW_CONNECTIONS true/,
	'... and what to do');
$node->safe_psql('postgres', 'ALTER DATABASE shop_moved ALLOW_CONNECTIONS true');
ok(wait_until($node, "$shop_dispatcher 'shop_moved'", 30), 'open again, it is served again');
($rc, $out, $err) = $node->psql('postgres', 'ALTER DATABASE shop_moved RENAME TO shop',
	extra_params => [ '-U', 'shop_owner' ]);
is($rc . $err, '0', 'its owner renames it back to shop');
$node->safe_psql('postgres', "ALTER SYSTEM SET shipsync.databases = 'postgres, later, shop'");
$node->reload;
ok(wait_until($node, "$shop_dispatcher 'shop'", 30), 'shop is served again');

($rc, $out, $err) = $node->psql('postgres', 'DROP DATABASE shop', extra_params => [ '-U', 'shop_owner' ]);
is($rc . $err, '0', 'its owner drops it');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pg_shipsync%'"
		. " AND datname = 'shop'"), '0', 'no worker is left in it');

# a clean shutdown stops everything
$node->stop;
ok(1, 'the server stops with the workers running');

# No background worker slot for a dispatcher (max_worker_processes taken by
# the launcher and PostgreSQL's own): the launcher says so, and tries again
# less and less often, not every second (two warnings a second, for ever)
my $full = shipsync_node('full', 'max_worker_processes = 2');
ok( $full->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync launcher'"),
	'a launcher runs in a server with no slot left');
usleep(8_000_000);
my $said = () = slurp_file($full->logfile) =~ /could not start the pg_shipsync dispatcher/g;
cmp_ok($said, '>=', 1, 'the launcher says it could not start the dispatcher');
cmp_ok($said, '<=', 2, "and does not repeat it every second ($said times in 8 s)");
$full->stop;

stop_sim($sim);
done_testing();
