# No role climbs to superuser through pg_shipsync.
#
# A cluster with password (SCRAM) authentication on 127.0.0.1 and real
# login roles, each attack made over TCP by the role that would make it:
#   1. a shipsync_reader member who owns a schema defines =(int, int) there,
#      puts shipsync._validate() (or shipsync.capture()) as a trigger on a
#      table of its own, puts its schema first in search_path and inserts:
#      the extension's lookup of the binding must not run its operator;
#   2. a shipsync_admin member passes cancel_when => 'shop.evil()' with an
#      IMMUTABLE evil(): attach() must refuse it before anything plans it,
#      and other ways around the grammar (qualified or custom operators,
#      sub-selects, casts) are refused too;
#   3. the owner of an attached table makes its trigger change search_path
#      while the dispatcher (a superuser session) writes back onto its rows;
#   4. the owner of a database sets a hostile search_path on it with
#      ALTER DATABASE ... SET: the dispatcher of that database is immune;
#   5. the owner of an order table (in no shipsync role) gives its key
#      column a domain whose check runs its code: the CRM pass of every
#      shipsync.reconcile_interval, a reconcile() run and resync() cast
#      keys to it as its owner, never as a superuser;
#   6. that database owner's search_path again, against the reconcile
#      worker: a run that fails records its failure with pg_catalog's
#      operators.
# Every attack fails with a clear error, and rolsuper stays false.
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
# (no CRM pass until section 5 sets its interval: a dispatcher started with
# the default waits out 300 s before it looks at a shorter one)
my $node = shipsync_node('escalation', "listen_addresses = '127.0.0.1'",
	"password_encryption = 'scram-sha-256'", "shipsync.reconcile_interval = 0");
my $port = $node->port;

# the harness's superuser over the Unix socket; every other role over TCP,
# with a password
$node->safe_psql('postgres', q{
	CREATE EXTENSION pg_shipsync;
	CREATE ROLE bi LOGIN PASSWORD 'bi-secret' IN ROLE shipsync_reader;
	CREATE SCHEMA bi AUTHORIZATION bi;
	CREATE ROLE shopadmin LOGIN PASSWORD 'shop-secret' IN ROLE shipsync_admin;
	CREATE SCHEMA shop AUTHORIZATION shopadmin;
	GRANT CREATE ON DATABASE postgres TO shopadmin;
});
open(my $hba, '>', $node->data_dir . '/pg_hba.conf') or die "pg_hba.conf: $!";
print $hba "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
close($hba);
$node->reload;

sub connstr
{
	my ($role, $password, $db) = @_;
	return "host=127.0.0.1 port=$port dbname=" . ($db // 'postgres')
	  . " user=$role password=$password";
}

# Run SQL as a login role over TCP; returns (exit code, stdout, stderr).
sub as_role
{
	my ($role, $password, $sql, $db) = @_;
	my ($out, $err);
	my $rc = $node->psql($db // 'postgres', $sql, connstr => connstr($role, $password, $db),
		stdout => \$out, stderr => \$err, on_error_stop => 1);
	return ($rc, $out, $err);
}

sub rolsuper
{
	return $node->safe_psql('postgres',
		"SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = '$_[0]'");
}

$node->connect_fails(connstr('bi', 'wrong'), 'a wrong password is refused over TCP',
	expected_stderr => qr/password authentication failed for user "bi"/);
$node->connect_ok(connstr('bi', 'bi-secret'), 'the reader logs in with its password');
$node->connect_ok(connstr('shopadmin', 'shop-secret'), 'the admin logs in with its password');
is(rolsuper('bi') . rolsuper('shopadmin'), 'ff', 'neither is a superuser');

# An attached table of the admin's, validated at insert: its binding is the
# row the lookups of attack 1 would compare against.
my ($rc, $out, $err) = as_role('shopadmin', 'shop-secret', qq{
	CREATE TABLE shop.orders (id bigint PRIMARY KEY, customer text, status text,
		waybill_no text, ship_status text);
	SELECT shipsync.create_provider('sim', 'generic', '$sim->{url}',
		'{"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 300}');
	SELECT shipsync.attach('shop.orders', 'sim',
		writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}',
		options => '{"validate": "reject", "cancel_when": "t.status = ''void''"}');
});
is($rc, 0, 'the admin attaches a table of its own') or diag($err);
my $bid = $node->safe_psql('postgres',
	q{SELECT binding_id FROM shipsync.binding WHERE tbl = 'shop.orders'::regclass});

# ---------------------------------------------------------------------------
# 1. the reader, a schema of its own, and the extension's trigger functions
# ---------------------------------------------------------------------------

# = on bigint, integer and text in schema %1$s: it escalates role %2$s when
# it runs as a superuser, and records who ran it.
my $evil_operators = q{
	CREATE TABLE %1$s.calls (who name, super boolean, app text);
	GRANT INSERT ON %1$s.calls TO PUBLIC;
	CREATE FUNCTION %1$s.eq(a bigint, b bigint) RETURNS boolean LANGUAGE plpgsql AS $f$
	BEGIN
		INSERT INTO %1$s.calls SELECT current_user, r.rolsuper, pg_catalog.current_setting('application_name')
		FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
		IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
			EXECUTE 'ALTER ROLE %2$s SUPERUSER';
		END IF;
		RETURN a OPERATOR(pg_catalog.=) b;
	END $f$;
	CREATE OPERATOR %1$s.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = %1$s.eq);
	CREATE FUNCTION %1$s.eq_int(a integer, b integer) RETURNS boolean LANGUAGE sql
		AS $f$ SELECT %1$s.eq(a::bigint, b::bigint) $f$;
	CREATE OPERATOR %1$s.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = %1$s.eq_int);
	CREATE FUNCTION %1$s.eq_text(a text, b text) RETURNS boolean LANGUAGE sql
		AS $f$ SELECT %1$s.eq(0, 0) AND a OPERATOR(pg_catalog.=) b $f$;
	CREATE OPERATOR %1$s.= (LEFTARG = text, RIGHTARG = text, FUNCTION = %1$s.eq_text);
};

($rc, $out, $err) = as_role('bi', 'bi-secret', sprintf($evil_operators, 'bi', 'bi')
	  . q{CREATE TABLE bi.mine (id integer PRIMARY KEY, customer text);});
is($rc, 0, 'the reader defines = on integer (and bigint, text) in its own schema') or diag($err);

for my $fn ('_validate', 'capture')
{
	my $args = $fn eq 'capture' ? "'$bid', '1', 'id'" : "'$bid'";
	($rc, $out, $err) = as_role('bi', 'bi-secret', qq{
		CREATE TRIGGER steal AFTER INSERT ON bi.mine
			FOR EACH ROW EXECUTE FUNCTION shipsync.$fn($args);
		SET search_path = bi, pg_catalog;
		INSERT INTO bi.mine VALUES (1, 'x');
	});
	isnt($rc, 0, "the reader cannot put shipsync.$fn() on its own table");
	like($err, qr/permission denied for function (shipsync\.)?$fn/, "... with a clear error ($fn)");
	is(rolsuper('bi'), 'f', "... and stays a reader ($fn)");
}

# A trigger left on a table by hand (or by 0.1, where PUBLIC could create
# them): the functions check their table against the binding, with a
# search_path of their own.
for my $fn ('_validate', 'capture')
{
	my $args = $fn eq 'capture' ? "'$bid', '1', 'id'" : "'$bid'";
	$node->safe_psql('postgres',
		"CREATE TRIGGER steal_$fn AFTER INSERT ON bi.mine FOR EACH ROW EXECUTE FUNCTION shipsync.$fn($args)");
	($rc, $out, $err) = as_role('bi', 'bi-secret', q{
		SET search_path = bi, pg_catalog;
		INSERT INTO bi.mine VALUES (2, 'x');
	});
	isnt($rc, 0, "shipsync.$fn() refuses to fire on a table that is not its binding's");
	like($err, qr/table "mine" is not attached to pg_shipsync binding $bid/,
		"... with a clear error ($fn)");
	is(rolsuper('bi'), 'f', "... and the reader stays a reader ($fn)");
	$node->safe_psql('postgres', "DROP TRIGGER steal_$fn ON bi.mine");
}
is($node->safe_psql('postgres', 'SELECT count(*) FROM bi.calls WHERE super'), '0',
	'the reader\'s operator never ran as a superuser');

# ---------------------------------------------------------------------------
# 2. the admin's cancel_when
# ---------------------------------------------------------------------------

($rc, $out, $err) = as_role('shopadmin', 'shop-secret', q{
	CREATE FUNCTION shop.evil() RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $f$
	BEGIN
		IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
			EXECUTE 'ALTER ROLE shopadmin SUPERUSER';
		END IF;
		RETURN false;
	END $f$;
	CREATE FUNCTION shop.triple_eq(a text, b text) RETURNS boolean LANGUAGE sql IMMUTABLE
		AS $f$ SELECT shop.evil() OR a OPERATOR(pg_catalog.=) b $f$;
	CREATE OPERATOR shop.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = shop.triple_eq);
	CREATE TABLE shop.parcels (id integer PRIMARY KEY, status text);
});
is($rc, 0, 'the admin defines an IMMUTABLE evil() and friends') or diag($err);

my @refused = (
	[ 'shop.evil()', qr/cancel_when.*function/i, 'a function call' ],
	[ 'evil()', qr/cancel_when.*function/i, 'an unqualified function call' ],
	[ q{status = 'x' AND shop.evil()}, qr/cancel_when.*function/i, 'a call inside AND' ],
	[ q{status OPERATOR(shop.===) 'x'}, qr/cancel_when.*operator/i, 'a qualified operator' ],
	[ q{status === 'x'}, qr/cancel_when.*operator/i, 'an operator of its own' ],
	[ q{status IN (SELECT shop.evil()::text)}, qr/cancel_when.*(sub-?select|subquer)/i, 'a sub-select' ],
	[ q{status::text = 'x'}, qr/cancel_when.*cast/i, 'a cast' ],
	[ q{(t)::text = 'x'}, qr/cancel_when.*cast/i, 'a cast of the row' ],
	[ q{true; SELECT shop.evil()}, qr/cancel_when.*one boolean expression/i, 'two statements' ],
	[ q{status = 'x' ORDER BY shop.evil()}, qr/cancel_when/i, 'a clause after the expression' ],
	[ q{x.status = 'x'}, qr/cancel_when.*column/i, 'a column of another relation' ],
	[ q{status = ANY (ARRAY[shop.evil()::text])}, qr/cancel_when/i, 'ANY over an array' ],
	[ q{CASE WHEN shop.evil() THEN true END}, qr/cancel_when/i, 'CASE' ],
	[ q{status = $1}, qr/cancel_when/i, 'a parameter' ],
);
for my $r (@refused)
{
	my ($expr, $re, $what) = @$r;
	(my $lit = $expr) =~ s/'/''/g;
	$lit =~ s/"/\\"/g;
	($rc, $out, $err) = as_role('shopadmin', 'shop-secret', qq{
		SELECT shipsync.attach('shop.parcels', 'sim', options => '{"cancel_when": "$lit"}');
	});
	isnt($rc, 0, "attach() refuses cancel_when with $what");
	like($err, $re, "... with a clear error ($what)") or diag($err);
}
is(rolsuper('shopadmin'), 'f', 'the admin stays an admin');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM shipsync.binding WHERE tbl = 'shop.parcels'::regclass}),
	'0', 'no refused expression left a binding');

# what 0.1 documents still works: columns, t.columns, literals,
# comparisons, IS [NOT] NULL, IN, AND/OR/NOT; and the admin's own
# search_path does not change which = it means
($rc, $out, $err) = as_role('shopadmin', 'shop-secret', q{
	SET search_path = shop, pg_catalog;
	SELECT shipsync.attach('shop.parcels', 'sim', options => $j${"cancel_when":
		"(t.status = 'void' OR status IN ('lost', 'refused')) AND NOT (id IS NULL) AND t.id >= -1 AND status <> 'x' AND status IS NOT NULL"}$j$);
});
is($rc, 0, 'attach() takes the restricted grammar of cancel_when') or diag($err);
is($node->safe_psql('postgres',
		q{SELECT render_sql ~ 'OPERATOR\(pg_catalog\.=\)' AND render_sql !~ '\s(=|<>|>=)\s' FROM shipsync.binding WHERE tbl = 'shop.parcels'::regclass}),
	't', 'the stored expression names pg_catalog\'s operators');
is(rolsuper('shopadmin'), 'f', 'the admin is still an admin');

# ---------------------------------------------------------------------------
# 3. a table owner's trigger changes search_path under the dispatcher
# ---------------------------------------------------------------------------

($rc, $out, $err) = as_role('shopadmin', 'shop-secret',
	sprintf($evil_operators, 'shop', 'shopadmin')
	  . q{
	CREATE FUNCTION shop.hijack() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
		PERFORM pg_catalog.set_config('search_path', 'shop, pg_catalog', false);
		RETURN NEW;
	END $f$;
	CREATE TRIGGER hijack BEFORE UPDATE ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.hijack();
	INSERT INTO shop.orders (id, customer) SELECT g, 'c' || g FROM pg_catalog.generate_series(1, 3) g;
});
is($rc, 0, 'the admin\'s trigger sets search_path at every write-back') or diag($err);
ok(wait_until($node, 'SELECT count(*) = 3 FROM shop.orders WHERE waybill_no IS NOT NULL'),
	'the orders are delivered and written back');
as_role('shopadmin', 'shop-secret',
	q{INSERT INTO shop.orders (id, customer) SELECT g, 'c' || g FROM pg_catalog.generate_series(4, 6) g});
ok(wait_until($node, 'SELECT count(*) = 6 FROM shop.orders WHERE waybill_no IS NOT NULL'),
	'and the next ones after the trigger ran');
is($node->safe_psql('postgres', 'SELECT count(*) FROM shop.calls WHERE super'), '0',
	'the dispatcher never ran the owner\'s operator as a superuser');
is(rolsuper('shopadmin'), 'f', 'the table owner stays who it was');

# ---------------------------------------------------------------------------
# 4. a database owner's ALTER DATABASE ... SET search_path
# ---------------------------------------------------------------------------

$node->safe_psql('postgres', q{
	CREATE ROLE dbowner LOGIN PASSWORD 'db-secret';
	CREATE DATABASE shopdb OWNER dbowner;
});
$node->safe_psql('shopdb', 'CREATE EXTENSION pg_shipsync');
$node->safe_psql('shopdb', q{GRANT shipsync_admin TO dbowner});
($rc, $out, $err) = as_role('dbowner', 'db-secret',
	q{CREATE SCHEMA dbo;}
	  . sprintf($evil_operators, 'dbo', 'dbowner')
	  . q{
	CREATE TABLE dbo.orders (id bigint PRIMARY KEY, customer text, waybill_no text);
	ALTER DATABASE shopdb SET search_path = dbo, pg_catalog;
}
	  . qq{
	SELECT shipsync.create_provider('sim', 'generic', '$sim->{url}', '{"timeout_ms": 2000}');
	SELECT shipsync.attach('dbo.orders', 'sim', writeback => '{"tracking_number": "waybill_no"}');
	INSERT INTO dbo.orders VALUES (1, 'a'), (2, 'b');
}, 'shopdb');
is($rc, 0, 'the database owner sets a hostile search_path on its database') or diag($err);
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET shipsync.databases = 'postgres, shopdb';
	SELECT pg_reload_conf();
});
ok(wait_until($node, 'SELECT count(*) = 2 FROM dbo.orders WHERE waybill_no IS NOT NULL', 60, 'shopdb'),
	'the dispatcher of that database delivers');
is($node->safe_psql('shopdb', 'SELECT count(*) FROM dbo.calls WHERE super'), '0',
	'without running the database owner\'s operators as a superuser');
is(rolsuper('dbowner'), 'f', 'the database owner stays who it was');

# ---------------------------------------------------------------------------
# 5. a table owner's domain, cast to by reconciliation and resync()
# ---------------------------------------------------------------------------

# The owner of two order tables, in no shipsync role (the admin may attach
# its tables).  The check of its key domain records who ran it, and from
# which session (the reconcile worker by its application_name), and makes
# the owner a superuser if it ran as one.
$node->safe_psql('postgres', q{
	CREATE ROLE crmowner LOGIN PASSWORD 'crm-secret';
	CREATE SCHEMA crm AUTHORIZATION crmowner;
	GRANT crmowner TO shopadmin;
});
($rc, $out, $err) = as_role('crmowner', 'crm-secret', q{
	GRANT USAGE ON SCHEMA crm TO PUBLIC;
	CREATE TABLE crm.calls (who name, super boolean, app text);
	GRANT INSERT ON crm.calls TO PUBLIC;
	CREATE FUNCTION crm.key_ok(k bigint) RETURNS boolean LANGUAGE plpgsql AS $f$
	BEGIN
		INSERT INTO crm.calls SELECT current_user, r.rolsuper, pg_catalog.current_setting('application_name')
		FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
		IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
			EXECUTE 'ALTER ROLE crmowner SUPERUSER';
		END IF;
		RETURN k IS NOT NULL;
	END $f$;
	CREATE DOMAIN crm.order_id AS bigint CHECK (crm.key_ok(VALUE));
	CREATE TABLE crm.orders (id crm.order_id PRIMARY KEY, customer text, waybill_no text);
	CREATE TABLE crm.later (id bigint PRIMARY KEY, customer text, waybill_no text);
});
is($rc, 0, 'a plain table owner keys a table with a domain whose check runs its code') or diag($err);
($rc, $out, $err) = as_role('shopadmin', 'shop-secret', q{
	SELECT shipsync.attach('crm.orders', 'sim', writeback => '{"tracking_number": "waybill_no"}',
		options => '{"grace": "0 seconds"}');
	SELECT shipsync.attach('crm.later', 'sim', writeback => '{"tracking_number": "waybill_no"}',
		options => '{"grace": "0 seconds"}');
});
is($rc, 0, 'the admin attaches both tables') or diag($err);
# the second table gets the domain after attach(), by its owner alone; in
# each, an order the capture never saw, for reconciliation to find
($rc, $out, $err) = as_role('crmowner', 'crm-secret', q{
	ALTER TABLE crm.later ALTER COLUMN id TYPE crm.order_id;
	INSERT INTO crm.orders VALUES (1, 'a'), (2, 'b');
	INSERT INTO crm.later VALUES (1, 'a'), (2, 'b');
	ALTER TABLE crm.orders DISABLE TRIGGER shipsync_capture;
	ALTER TABLE crm.later DISABLE TRIGGER shipsync_capture;
	INSERT INTO crm.orders VALUES (99, 'never captured');
	INSERT INTO crm.later VALUES (99, 'never captured');
	ALTER TABLE crm.orders ENABLE TRIGGER shipsync_capture;
	ALTER TABLE crm.later ENABLE TRIGGER shipsync_capture;
});
is($rc, 0, 'the owner alters the key of an attached table to the domain') or diag($err);
ok(wait_until($node, q{SELECT count(*) = 4 FROM (SELECT id FROM crm.orders WHERE waybill_no IS NOT NULL
		UNION ALL SELECT id FROM crm.later WHERE waybill_no IS NOT NULL) o}),
	'the captured orders of both tables are delivered');

# the CRM pass every second
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET shipsync.reconcile_interval = '1s';
	SELECT pg_reload_conf();
});
my $not_sent = q{SELECT count(*) = 2 FROM shipsync.exception_ticket x
	JOIN shipsync.binding b ON b.binding_id = x.binding_id
	WHERE x.kind = 'not_sent' AND x.order_key = '99' AND x.resolved_at IS NULL
	  AND b.tbl IN ('crm.orders'::regclass, 'crm.later'::regclass)};
ok(wait_until($node, $not_sent, 60),
	'the CRM pass reads both tables (the order never captured is not_sent)');
my $passes = $node->safe_psql('postgres',
	q{SELECT count(*) FROM shipsync.reconcile_run WHERE kind = 'crm' AND state = 'done'});
ok(wait_until($node, "SELECT count(*) >= $passes + 2 FROM shipsync.reconcile_run WHERE kind = 'crm' AND state = 'done'", 60),
	'incremental passes follow, and end well');

($rc, $out, $err) = as_role('shopadmin', 'shop-secret', q{SELECT shipsync.reconcile('sim')});
is($rc, 0, 'the admin starts a reconciliation run') or diag($err);
ok(wait_until($node, "SELECT state = 'done' FROM shipsync.reconcile_run WHERE run_id = $out", 120),
	'the run compares both tables and ends well');

($rc, $out, $err) = as_role('shopadmin', 'shop-secret', q{
	SET application_name = 'resync';
	SELECT shipsync.resync('crm.orders', ARRAY['99']);
	SELECT shipsync.resync('crm.later', ARRAY['99']);
});
is($rc, 0, 'resync() takes keys of the domain') or diag($err);
is($out, "1\n1", '... and sends the order again');
ok(wait_until($node, q{SELECT count(*) = 2 FROM (SELECT id FROM crm.orders WHERE id = 99 AND waybill_no IS NOT NULL
		UNION ALL SELECT id FROM crm.later WHERE id = 99 AND waybill_no IS NOT NULL) o}),
	'... which is delivered');

# keys are cast to the key column's base type (_key_type()), so neither
# runs the domain's check at all; the statements that read the tables run
# as their owner all the same (_select_as_owner(), below: nobody else)
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM crm.calls WHERE app = 'pg_shipsync reconcile'}),
	'0', 'the reconcile worker casts keys to the domain\'s base type: its check is not run');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM crm.calls WHERE app = 'resync'}),
	'0', 'nor does resync()');
is($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT who || '/' || super, ', ') FROM crm.calls}),
	'crmowner/false', 'nobody ran it as anyone else');
is(rolsuper('crmowner'), 'f', 'the table owner stays who it was');

# ---------------------------------------------------------------------------
# 6. the database owner's search_path against the reconcile worker
# ---------------------------------------------------------------------------

# the key column renamed: every CRM pass of shopdb fails, and the worker
# records why
($rc, $out, $err) = as_role('dbowner', 'db-secret',
	q{ALTER TABLE dbo.orders RENAME COLUMN id TO order_id}, 'shopdb');
is($rc, 0, 'the database owner breaks its table\'s reconciliation') or diag($err);
# (qualified: this session of the harness's superuser takes the database's
# search_path too)
ok(wait_until($node,
		q{SELECT count(*) >= 2 FROM shipsync.reconcile_run
		  WHERE state OPERATOR(pg_catalog.=) 'failed' AND error IS NOT NULL},
		60, 'shopdb'),
	'the reconcile worker records failed runs');
is($node->safe_psql('shopdb', 'SELECT count(*) FROM dbo.calls WHERE super'), '0',
	'without running the database owner\'s operators as a superuser')
  or diag($node->safe_psql('shopdb', 'SELECT who, super, app, count(*) FROM dbo.calls GROUP BY 1, 2, 3'));
is(rolsuper('dbowner'), 'f', 'the database owner stays who it was');

# ---------------------------------------------------------------------------
# 7. a table owner's cast to json, under validate = reject
# ---------------------------------------------------------------------------

# shipsync._validate() (SECURITY DEFINER, as the extension's owner) prints
# the new row as JSON to check it against the provider's map.  A column of
# a type of the owner's with a cast to json has that cast called by
# row_to_json(): the owner's code, which must run as the owner.  The owner
# is in no shipsync role; an admin attached its table.
$node->safe_psql('postgres', qq{
	CREATE ROLE flagowner LOGIN PASSWORD 'flag-secret';
	CREATE SCHEMA flags AUTHORIZATION flagowner;
	GRANT flagowner TO shopadmin;
	INSERT INTO shipsync.field_map (profile, direction, position, target_path, source, transform, arg, required)
	VALUES ('flagmap', 'out', 1, 'order_ref', 'meta:order_key', 'identity', NULL, true),
		   ('flagmap', 'out', 2, 'order.to.name', 'customer', 'trim', NULL, true);
	SELECT shipsync.create_provider('simmap', 'generic', '$sim->{url}',
		'{"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 300, "profile": "flagmap"}');
});
($rc, $out, $err) = as_role('flagowner', 'flag-secret', q{
	CREATE TABLE flags.orders (id bigint PRIMARY KEY, customer text, waybill_no text);
});
is($rc, 0, 'a plain table owner makes an order table') or diag($err);
($rc, $out, $err) = as_role('shopadmin', 'shop-secret', q{
	SELECT shipsync.attach('flags.orders', 'simmap', writeback => '{"tracking_number": "waybill_no"}',
		options => '{"validate": "reject"}');
});
is($rc, 0, 'the admin attaches it, validated at insert') or diag($err);
($rc, $out, $err) = as_role('flagowner', 'flag-secret', q{
	CREATE TABLE flags.calls (who name, super boolean);
	CREATE TYPE flags.flag AS ENUM ('red', 'green');
	CREATE FUNCTION flags.flag_json(f flags.flag) RETURNS json LANGUAGE plpgsql AS $f$
	BEGIN
		INSERT INTO flags.calls SELECT current_user, r.rolsuper
		FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
		IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
			EXECUTE 'ALTER ROLE flagowner SUPERUSER';
		END IF;
		RETURN pg_catalog.to_json(f::text);
	END $f$;
	CREATE CAST (flags.flag AS json) WITH FUNCTION flags.flag_json(flags.flag);
	ALTER TABLE flags.orders ADD COLUMN flag flags.flag DEFAULT 'red';
	INSERT INTO flags.orders (id, customer) VALUES (1, 'Ann');
});
is($rc, 0, 'the owner adds a column whose type has a cast to json, and inserts an order') or diag($err);
is($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT who || '/' || super, ', ') FROM flags.calls}),
	'flagowner/false', 'the validation trigger ran the cast as the table owner');
is(rolsuper('flagowner'), 'f', 'and the table owner stays who it was');
($rc, $out, $err) = as_role('flagowner', 'flag-secret', q{
	INSERT INTO flags.orders (id, customer) VALUES (2, NULL);
});
isnt($rc, 0, 'an order missing a required field is still refused');
like($err, qr/required mapped fields are missing or malformed/, '... by the validation trigger');

$node->stop;
done_testing();
