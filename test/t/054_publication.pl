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
#     (shipsync.status_map has no primary key either).
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
my $node = shipsync_node('publication', "wal_level = logical");
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

$node->stop;
done_testing();
