# pg_dump keeps what pg_shipsync holds: providers, bindings, intents,
# shipments, the delivery log and tickets are the user's data, and a
# restored database goes on capturing and delivering.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

# a command's standard output; dies if it fails
sub run_log_out
{
	my ($cmd) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run($cmd, '>', \$out, '2>', \$err) or die "@$cmd failed: $err";
	return $out;
}

my $sim = start_sim();
my $node = shipsync_node('dump', "shipsync.databases = 'postgres, restored'");
setup_orders($node, $sim);
$node->safe_psql('postgres',
	"INSERT INTO crm.orders (customer) SELECT '客户' || g FROM generate_series(1, 20) g");
ok(wait_until($node, 'SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL'),
	'orders delivered before the dump');

# a profile of the user's own beside the built-in one
$node->safe_psql('postgres', q{SELECT shipsync.copy_profile('sf_express', 'sf_mine');
	UPDATE shipsync.field_map SET transform = 'upper' WHERE profile = 'sf_mine' AND target_path = 'remark'});

# a DBA's changes of built-in mapping rows (docs/tracking.md: "Changing a
# mapping is an INSERT or UPDATE of status_map"): an update, a row of the
# same key inserted in place of the built-in one, a built-in fee type
# mapped anew.  pg_dump leaves built-in rows out, so each of these must
# have become the DBA's own row, and come back.
my $mine = q{SELECT string_agg(t, ', ' ORDER BY t) FROM (
	SELECT profile || ':' || raw_status || coalesce('/' || pattern, '') || '->' || status AS t
	  FROM shipsync.status_map
	 WHERE profile = 'sf_express' AND raw_status IN ('44', '80', '36')
	UNION ALL
	SELECT profile || ':' || code || '->' || fee_type FROM shipsync.fee_type_map
	 WHERE profile = 'easypost' AND code = 'LabelFee') x};
$node->safe_psql('postgres', q{
	UPDATE shipsync.status_map SET status = 'in_transit' WHERE profile = 'sf_express' AND raw_status = '44';
	INSERT INTO shipsync.status_map (profile, raw_status, status) VALUES ('sf_express', '80', 'available_for_pickup');
	UPDATE shipsync.fee_type_map SET fee_type = 'postage' WHERE profile = 'easypost' AND code = 'LabelFee'});
my $mine_before = $node->safe_psql('postgres', $mine);
is($mine_before, 'easypost:LabelFee->postage, sf_express:36->in_transit, sf_express:44->in_transit, sf_express:80->available_for_pickup',
	'the DBA\'s mappings are in place');

my $counts = q{SELECT (SELECT count(*) FROM shipsync.provider) || '/' ||
	(SELECT count(*) FROM shipsync.binding) || '/' ||
	(SELECT count(*) FROM shipsync.outbox) || '/' ||
	(SELECT count(*) FROM shipsync.shipment) || '/' ||
	(SELECT count(*) FROM shipsync.delivery_log) || '/' ||
	(SELECT count(*) FROM shipsync.fee_line) || '/' ||
	(SELECT count(*) FROM shipsync.fee_sum) || '/' ||
	(SELECT sum(estimated) FROM shipsync.order_fees)};
my $before = $node->safe_psql('postgres', $counts);

# the ledger's history: a restore loads it as it was, and adds nothing (the
# trigger that records a ticket's opening recorded every restored ticket
# again: ticket_summary counted each opened twice)
$node->safe_psql('postgres', q{
	INSERT INTO shipsync.exception_ticket (kind, binding_id, order_key, provider_id, detail)
	SELECT 'dead_intent', b.binding_id, k, b.provider_id, 'HTTP 422: refused'
	  FROM shipsync.binding b, unnest(ARRAY['1', '2']) k;
	SELECT shipsync.resolve(min(ticket_id), 'sent by hand') FROM shipsync.exception_ticket});
my $history = q{SELECT (SELECT string_agg(event || ' ' || n, ', ' ORDER BY event)
	  FROM (SELECT event, count(*) AS n FROM shipsync.ticket_event GROUP BY event) e) || ' / ' ||
	(SELECT string_agg(kind || ' ' || opened || ' ' || resolved, ', ' ORDER BY kind) FROM shipsync.ticket_summary)};
my $history_before = $node->safe_psql('postgres', $history);
is($history_before, 'opened 2, resolved 1 / dead_intent 2 1', 'two tickets opened, one resolved');

my $dump = $node->basedir . '/dump.sql';
$node->command_ok([ 'pg_dump', '-f', $dump, 'postgres' ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', $dump, 'restored' ],
	'restore');
like($before, qr{/40/20/274(\.0+)?$}, "the quotes of the orders are fee lines (12.50 + 1.20 each), summed: $before");
is($node->safe_psql('restored', $counts), $before, 'every shipsync table came back, the fee lines and their sums too');
is($node->safe_psql('restored', $history), $history_before,
	'the ledger\'s history came back as it was, each opening once');
is( $node->safe_psql('restored',
		q{SELECT count(*) FILTER (WHERE profile = 'sf_express' AND seeded) || '/' ||
		count(*) FILTER (WHERE profile = 'sf_mine' AND NOT seeded) || '/' ||
		count(*) FILTER (WHERE profile = 'sf_mine' AND target_path = 'remark' AND transform = 'upper')
		FROM shipsync.field_map}),
	'42/42/1', 'field maps: the built-in profile once, the user\'s own profile with its change');
is($node->safe_psql('restored', $mine), $mine_before,
	'built-in status and fee type mappings the DBA changed come back changed');
is( $node->safe_psql('restored',
		'SELECT count(*) FROM crm.orders o JOIN shipsync.shipment s ON s.order_key = o.id::text'
		  . ' WHERE s.tracking_number = o.waybill_no'),
	'20', 'shipments still match their orders');

# the restored database captures and delivers new orders
$node->safe_psql('restored', "INSERT INTO crm.orders (customer) VALUES ('新客户')");
ok(wait_until($node, 'SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL', 30, 'restored'),
	'a new order in the restored database is delivered');
is($node->safe_psql('restored', "SELECT max(id) > 20 FROM shipsync.outbox"), 't',
	'its intent continues the restored numbering');

# A custom-format dump restored by parallel jobs: pg_restore -j loads the
# tables' data side by side, the extension's tables with their constraints
# already there (CREATE EXTENSION made them), so no order between two of
# them may matter (a binding loaded before its provider was refused, and
# every INSERT into the attached table failed).  The CRM sources and their
# deliveries too, and their removed records (a row of crm_removed loaded
# before its source was refused by a foreign key: "violates foreign key
# constraint crm_removed_crm_source_id_fkey", and the removes forgotten).
$node->safe_psql('postgres', q{
	CREATE TABLE crm.pushed (id text PRIMARY KEY, customer text);
	SELECT shipsync.create_crm_source('crm_j', 'jiandaoyun', 'crm.pushed', '{"secret": "test-secret"}');
	INSERT INTO shipsync.crm_delivery (crm_source_id, delivery_id, expires_at)
	SELECT crm_source_id, 'd' || g, now() + interval '1 day'
	FROM shipsync.crm_source, generate_series(1, 3) g;
	INSERT INTO shipsync.crm_removed (crm_source_id, record_key, version, expires_at)
	SELECT crm_source_id, 'r' || g, '"2026-03-01T10:00:00+00:00"', now() + interval '1 day'
	FROM shipsync.crm_source, generate_series(1, 3) g});
my $counts_j = "SELECT ($counts) || '/' || (SELECT count(*) FROM shipsync.crm_source) || '/'"
  . " || (SELECT count(*) FROM shipsync.crm_delivery) || '/' || (SELECT count(*) FROM shipsync.crm_removed)";
my $before_j = $node->safe_psql('postgres', $counts_j);
my $archive = $node->basedir . '/dump.custom';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $archive, 'postgres' ], 'pg_dump -Fc');
$node->safe_psql('postgres', 'CREATE DATABASE restored_j');
my ($jout, $jerr) = ('', '');
IPC::Run::run([ 'pg_restore', '-j', '4', '-d', $node->connstr('restored_j'), $archive ],
	'>', \$jout, '2>', \$jerr);
is($jerr, '', 'pg_restore -j 4 reports no error');
is($node->safe_psql('restored_j', $counts_j), $before_j,
	'pg_restore -j 4: every shipsync table came back, bindings, CRM deliveries and removed records too');
# the order pg_restore -j happens to load them in, made certain: the
# removed records before their source (the archive's list, rearranged)
my @list = grep { !/TABLE DATA shipsync crm_removed / } split /\n/,
  run_log_out([ 'pg_restore', '-l', $archive ]);
my ($removed_data) = grep { /TABLE DATA shipsync crm_removed / } split /\n/,
  run_log_out([ 'pg_restore', '-l', $archive ]);
my ($at) = grep { $list[$_] =~ /TABLE DATA shipsync / } 0 .. $#list;
splice(@list, $at, 0, $removed_data);
my $listfile = $node->basedir . '/dump.list';
PostgreSQL::Test::Utils::append_to_file($listfile, join("\n", @list) . "\n");
$node->safe_psql('postgres', 'CREATE DATABASE restored_l');
my ($lout, $lerr) = ('', '');
IPC::Run::run([ 'pg_restore', '-L', $listfile, '-d', $node->connstr('restored_l'), $archive ],
	'>', \$lout, '2>', \$lerr);
is($lerr, '', 'removed CRM records loaded before their source: no error');
is($node->safe_psql('restored_l', $counts_j), $before_j, 'and every row came back');
my ($rc, $out, $err) = $node->psql('restored_j', "INSERT INTO crm.orders (customer) VALUES ('并行恢复后')");
is($rc . $err, '0', 'an order inserted after a parallel restore is captured');


# The audit log across a restore: a database whose audit log holds fewer
# ids than its audited tables hold rows (one updated from 0.1, whose rows
# were never audited, or whose log was pruned; here: emptied, its sequence
# set back).  The restore must record nothing of its own (the rows it loads
# are the dump's, not anyone's change), and a change made after the
# restore must be in the log.
$node->safe_psql('postgres', 'CREATE DATABASE audited');
my $aud = $node->connstr('audited');
$node->safe_psql('audited', q{
	CREATE EXTENSION pg_shipsync;
	SELECT shipsync.create_provider('p1', 'generic', 'https://carrier.example');
	SELECT shipsync.copy_profile('sf_express', 'sf_audit');
	DELETE FROM shipsync.audit_log;
	SELECT setval('shipsync.audit_log_audit_id_seq', 1, false);
	SELECT shipsync.pause('p1')});
my $log = q{SELECT count(*) || ':' || coalesce(string_agg(action, ',' ORDER BY audit_id), '')
	FROM shipsync.audit_log};
is($node->safe_psql('audited', $log), '1:pause', 'one action in the log before the dump');
my $adump = $node->basedir . '/audited.sql';
$node->command_ok([ 'pg_dump', '-f', $adump, 'audited' ], 'pg_dump of the audited database');
$node->safe_psql('postgres', 'CREATE DATABASE audited_r');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', $adump, 'audited_r' ],
	'its restore');
is($node->safe_psql('audited_r', $log), '1:pause', 'the restore recorded nothing of its own');
$node->safe_psql('audited_r', q{SELECT shipsync.resume('p1');
	UPDATE shipsync.field_map SET transform = 'upper' WHERE profile = 'sf_audit' AND target_path = 'remark'});
is($node->safe_psql('audited_r', $log), '3:pause,resume,update',
	'what is changed after the restore is in the log');

$node->stop;
stop_sim($sim);
done_testing();
