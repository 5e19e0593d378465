# The orders' database published for logical replication.
#
# A DBA who replicates the CRM's database (to a reporting replica, or to
# upgrade with no downtime) creates a publication FOR ALL TABLES, which
# takes in the extension's own tables.  PostgreSQL then refuses every
# UPDATE and DELETE of a published table that has no replica identity.
# What a user relies on:
#   - orders are still delivered: the dispatcher deletes what it moves
#     out of the inbox (which has no index, so no primary key), and it
#     failed at every pass, so that no order was sent at all;
#   - an administrator can still change a status mapping
#     (shipsync.status_map has no primary key either);
#   - the other way round, a subscription that replicates orders into an
#     attached table is warned of: the rows it applies fire no trigger, so
#     those orders are not captured, and nothing said so; the trigger
#     enabled ALWAYS, as the warning's hint says, sends them;
#   - a dump of a table attached with inheritance children before
#     attach() refused them restores, in one transaction too.
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
my $node = shipsync_node('publication', { allows_streaming => 'logical' });
setup_orders($node, $sim);
my $sql = sub { $node->safe_psql('postgres', $_[0]) };

$sql->("CREATE PUBLICATION everything FOR ALL TABLES");

# 1. an order committed while every table is published is delivered
$sql->("INSERT INTO crm.orders (customer) VALUES ('published')");
ok(wait_until($node,
		"SELECT count(*) = 1 FROM crm.orders WHERE customer = 'published' AND waybill_no IS NOT NULL", 30),
	'published: the order gets its waybill');
is($sql->("SELECT count(*) FROM shipsync.inbox"), '0', 'published: the inbox is emptied');
my ($ret, $out, $err) = $node->psql('postgres',
	"SELECT count(*) FROM shipsync.outbox o JOIN crm.orders c ON o.order_key = c.id::text"
	  . " WHERE c.customer = 'published' AND o.state = 'done'");
is($out, '1', 'published: its intent is done, once');
my $errors = () = slurp_file($node->logfile) =~ /does not have a replica identity/g;
is($errors, 0, 'published: no statement of the workers was refused');

# 2. the tables without a primary key can still be changed
($ret, $out, $err) = $node->psql('postgres',
	"UPDATE shipsync.status_map SET status = status WHERE profile = 'easypost' AND raw_status = 'delivered'");
is($ret, 0, 'published: a status mapping can be updated') or diag($err);

# 3. every table of the extension that is updated or deleted from can be
# published: a primary key or a replica identity of its own
is($sql->(q{
	SELECT coalesce(string_agg(c.relname, ', ' ORDER BY c.relname), '')
	FROM pg_class c
	JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
	JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_shipsync'
	WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
	  AND c.relreplident = 'd'
	  AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)}),
	'', 'every table of the extension has a replica identity');

# 4. a subscription into an attached table
$sql->("CREATE DATABASE crm_app");
$node->safe_psql('crm_app', q{
	CREATE SCHEMA crm;
	CREATE TABLE crm.orders (id bigint PRIMARY KEY, customer text NOT NULL, phone text,
		address text, waybill_no text, ship_status text, fee numeric, label text);
	CREATE PUBLICATION app_orders FOR TABLE crm.orders;
	SELECT pg_create_logical_replication_slot('app_orders', 'pgoutput');
});
(my $connstr = $node->connstr('crm_app')) =~ s/'/''/g;
($ret, $out, $err) = $node->psql('postgres',
	"CREATE SUBSCRIPTION app_orders CONNECTION '$connstr' PUBLICATION app_orders"
	  . " WITH (create_slot = false, copy_data = false)");
is($ret, 0, 'subscribed') or diag($err);
like($err,
	qr/WARNING:  subscription "app_orders" replicates into table crm\.orders, which is attached to pg_shipsync/,
	'subscribing to an attached table warns');
like($err, qr/HINT: .*ENABLE ALWAYS TRIGGER shipsync_capture/, 'and says how to send its orders from here');

my $intents = sub {
	$sql->("SELECT (SELECT count(*) FROM shipsync.inbox WHERE order_key = '$_[0]')"
		  . " + (SELECT count(*) FROM shipsync.outbox WHERE order_key = '$_[0]')");
};
$node->safe_psql('crm_app', "INSERT INTO crm.orders (id, customer) VALUES (9001, 'replicated')");
ok(wait_until($node, "SELECT count(*) = 1 FROM crm.orders WHERE id = 9001", 30),
	'subscribed: the order is replicated');
is($intents->('9001'), '0', 'subscribed: a replicated order is not captured (as the warning said)');

$sql->("ALTER TABLE crm.orders ENABLE ALWAYS TRIGGER shipsync_capture");
$node->safe_psql('crm_app', "INSERT INTO crm.orders (id, customer) VALUES (9002, 'replicated')");
ok(wait_until($node, "SELECT count(*) = 1 FROM crm.orders WHERE id = 9002 AND waybill_no IS NOT NULL", 30),
	'subscribed: with the trigger enabled always, a replicated order is sent');
is($intents->('9002'), '1', 'subscribed: once');

# attaching a table a subscription replicates into warns too
$sql->("SELECT shipsync.detach('crm.orders')");
($ret, $out, $err) = $node->psql('postgres',
	"SELECT shipsync.attach('crm.orders', 'sim', writeback => '{\"tracking_number\": \"waybill_no\"}') > 0");
is($out, 't', 'attached again');
like($err,
	qr/WARNING:  subscription "app_orders" replicates into table crm\.orders, which is attached to pg_shipsync/,
	'attaching a table a subscription replicates into warns');

$sql->("DROP SUBSCRIPTION app_orders");

# 5. a table attached with inheritance children before attach() refused
# them (the event trigger off, here) still restores, in one transaction
# too: the refusal is of a child made after its parent was attached
$sql->("CREATE DATABASE old_shape");
$node->safe_psql('old_shape', qq{
	CREATE EXTENSION pg_shipsync;
	SELECT shipsync.create_provider('sim', 'generic', '$sim->{url}');
	CREATE TABLE parent (id int PRIMARY KEY, customer text);
	SELECT shipsync.attach('parent', 'sim');
	ALTER EVENT TRIGGER shipsync_on_table_ddl DISABLE;
	CREATE TABLE child (id int PRIMARY KEY, customer text);
	ALTER TABLE child INHERIT parent;
	ALTER EVENT TRIGGER shipsync_on_table_ddl ENABLE;
});
my $dump = PostgreSQL::Test::Utils::tempdir() . '/old_shape.sql';
$node->command_ok([ 'pg_dump', '-d', $node->connstr('old_shape'), '-f', $dump ], 'old shape: dumped');
$sql->("CREATE DATABASE old_shape_restored");
$node->command_ok(
	[ 'psql', '-X', '-q', '-d', $node->connstr('old_shape_restored'), '--single-transaction',
	  '-v', 'ON_ERROR_STOP=1', '-f', $dump ],
	'old shape: restored in one transaction');
is($node->safe_psql('old_shape_restored',
		"SELECT count(*) FROM pg_trigger WHERE tgname = 'shipsync_capture' AND tgrelid = 'parent'::regclass"),
	'1', 'old shape: with its capture trigger');

$node->stop;
done_testing();
