# Reconciliation end to end, with a real dispatcher and the simulator's
# faults of its own records.
#
# 2,000 orders go to a generic carrier that forgets some shipments it
# answered (missing_at_carrier), records a second shipment for others
# (duplicate_at_carrier), refuses some (dead: not_sent), holds shipments no
# order knows (orphan_at_carrier) and moves statuses without pushing (its
# statuses are applied; one that cannot be stays a status_mismatch).  The
# CRM table also has rows inserted before attach and with the capture
# trigger disabled (not_sent), and rows changed by hand behind the
# dispatcher's back (tracking_mismatch, status_mismatch,
# address_changed_after_send), and two shipments that stopped moving
# (stuck).  Proves:
#   1. after reconcile() every planted discrepancy has exactly one open
#      ticket of the right kind, and nothing else is open; the pull went
#      page by page;
#   2. resync() of the missing, not-sent and changed ones delivers them;
#      the next run closes their tickets by itself (and the dead intents'
#      tickets with them); a ticket resolved by hand while its problem
#      persists is reopened, and counted;
#   3. the CRM-side pass runs every shipsync.reconcile_interval (a shorter
#      one set by a reload counts from the last pass) and closes
#      what it no longer sees; the daily run starts at shipsync.reconcile_at.
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
my $node = shipsync_node('reconcile', "shipsync.reconcile_interval = 0",
	"shipsync.reconcile_at = ''");

sub sql { return $node->safe_psql('postgres', $_[0]); }

# the open tickets of a kind, as a sorted list of order keys
sub open_keys
{
	my ($kind) = @_;
	return sql(qq{SELECT coalesce(string_agg(order_key, ',' ORDER BY length(order_key), order_key), '')
		FROM shipsync.exception_ticket WHERE kind = '$kind' AND resolved_at IS NULL});
}

sub range_keys { return join(',', map { $_[2] . $_ } ($_[0] .. $_[1])); }

# Start a run and wait for its end; returns its id.
sub run_reconcile_ok
{
	my ($run, $ended) = run_reconcile($node, 'sim');
	ok($ended, "run $run ended");
	return $run;
}

sql(qq{
	CREATE EXTENSION pg_shipsync;
	CREATE SCHEMA crm;
	CREATE TABLE crm.orders (id bigint PRIMARY KEY, customer text NOT NULL, address text,
		created_at timestamptz NOT NULL DEFAULT now(), waybill_no text, ship_status text);
	SELECT shipsync.create_provider('sim', 'generic', '$sim->{url}',
		'{"timeout_ms": 5000, "backoff_base_ms": 50, "backoff_max_ms": 500, "max_attempts": 3}');
	-- orders taken before the table was attached: never captured
	INSERT INTO crm.orders (id, customer, address, created_at)
	SELECT g, 'before ' || g, g || ' Old Road', now() - interval '1 hour'
	FROM generate_series(100001, 100020) g;
	SELECT shipsync.attach('crm.orders', 'sim',
		writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}',
		options => '{"grace": "1 second", "created_at_column": "created_at"}');
});

# the carrier forgets 1..20, doubles 21..30, refuses 31..35
sim_post($sim, '/_sim/faults', { rules => [
	{ fault => 'forget', match_order_ref => '^([1-9]|1[0-9]|20)$' },
	{ fault => 'duplicate', match_order_ref => '^(2[1-9]|30)$' },
	{ fault => 'status', status => 422, match_order_ref => '^3[1-5]$' } ] });
sql(q{INSERT INTO crm.orders (id, customer, address)
	SELECT g, 'customer ' || g, g || ' Main Street' FROM generate_series(1, 2000) g});
# taken with the capture trigger off
sql(q{SET session_replication_role = replica;
	INSERT INTO crm.orders (id, customer, address)
	SELECT g, 'quiet ' || g, g || ' Quiet Lane' FROM generate_series(200001, 200015) g});
ok( wait_until($node,
		q{SELECT count(*) = 2000 FROM shipsync.outbox WHERE state IN ('done', 'dead')
		  AND NOT EXISTS (SELECT 1 FROM shipsync.inbox)}, 180),
	'2,000 orders delivered or dead');
is(sql("SELECT count(*) FROM shipsync.outbox WHERE state = 'dead'"), 5, 'the 5 refused ones are dead');
is(sim_get($sim, '/_sim/stats')->{shipments}, 2000 - 5 - 20 + 10,
	'the carrier holds what it did not forget, and 10 shipments twice');

# the carrier's own doings: shipments no order knows, statuses moved
sim_post($sim, '/_sim/orphans', { count => 5, prefix => 'GHOST-', status => 'in_transit' });
sim_post($sim, '/_sim/move', { order_ref => '^(4[1-9]|50)$', status => 'delivered' });
# 51: delivered there, returned here -- a terminal status does not move
sql(q{UPDATE shipsync.shipment SET status = 'returned' WHERE order_key = '51';
	SET session_replication_role = replica;
	UPDATE crm.orders SET ship_status = 'returned' WHERE id = 51});
sim_post($sim, '/_sim/move', { order_ref => '^51$', status => 'delivered' });

# behind the dispatcher's back (capture off): columns, an address
sql(q{SET session_replication_role = replica;
	UPDATE crm.orders SET waybill_no = 'HAND-EDITED' WHERE id BETWEEN 61 AND 63;
	UPDATE crm.orders SET ship_status = 'lost' WHERE id IN (64, 65);
	UPDATE crm.orders SET address = 'moved away' WHERE id BETWEEN 66 AND 69});
# two shipments that stopped moving
sql(q{UPDATE shipsync.shipment SET status = 'in_transit', created_at = now() - interval '10 days',
		updated_at = now() - interval '10 days' WHERE order_key IN ('70', '71');
	SET session_replication_role = replica;
	UPDATE crm.orders SET ship_status = 'in_transit' WHERE id IN (70, 71)});
usleep(1_200_000);	# the grace of the quiet orders

###########################################################################
# 1. one run: every planted discrepancy, one ticket each, nothing else
###########################################################################
my $run1 = run_reconcile_ok();
is( sql("SELECT state || '/' || coalesce(error, '') FROM shipsync.reconcile_run WHERE run_id = $run1"),
	'done/', 'run 1: done, no error');
my $listed = 2000 - 5 - 20 + 10 + 5;
is( sql("SELECT shipments_seen || '/' || pages FROM shipsync.reconcile_run WHERE run_id = $run1"),
	"$listed/2", 'run 1: the whole list, in pages of 1,000');
is(sim_get($sim, '/_sim/stats')->{list_pages}, 2, 'run 1: the carrier served 2 pages');

my %planted = (
	missing_at_carrier => range_keys(1, 20),
	duplicate_at_carrier => range_keys(21, 30),
	not_sent => join(',', range_keys(31, 35), range_keys(100001, 100020), range_keys(200001, 200015)),
	dead_intent => range_keys(31, 35),
	orphan_at_carrier => range_keys(1, 5, 'GHOST-'),
	status_mismatch => '51,64,65',
	tracking_mismatch => '61,62,63',
	address_changed_after_send => '66,67,68,69',
	stuck => '70,71');
for my $kind (sort keys %planted)
{
	is(open_keys($kind), $planted{$kind}, "run 1: $kind, exactly the planted orders");
}
my $expected = 0;
$expected += scalar(split /,/, $planted{$_}) for keys %planted;
is(sql("SELECT count(*) FROM shipsync.exception_ticket WHERE resolved_at IS NULL"),
	$expected, "run 1: nothing else is open ($expected tickets)");
is( sql(q{SELECT count(*) FROM shipsync.exception_ticket WHERE resolved_at IS NULL
		GROUP BY kind, order_key HAVING count(*) > 1}),
	'', 'run 1: one ticket per kind and order');
is( sql("SELECT opened FROM shipsync.reconcile_run WHERE run_id = $run1"),
	$expected - 5, 'run 1: it opened them all but the dispatcher\'s five');
is(sql("SELECT count(*) FROM shipsync.reconciliation"), $expected - 5,
	'run 1: the view holds the discrepancies');
is( sql(q{SELECT count(*) FROM crm.orders WHERE id BETWEEN 41 AND 50 AND ship_status = 'delivered'}),
	10, 'run 1: the statuses the carrier moved were applied and written back');
is( sql(q{SELECT (detail->>'carrier') || '/' || (detail->>'ours') FROM shipsync.reconciliation
		WHERE kind = 'status_mismatch' AND order_key = '51'}),
	'delivered/returned', 'run 1: the one that could not be applied is a status_mismatch');

###########################################################################
# 2. repair in bulk, and the next run closes by itself
###########################################################################
sim_post($sim, '/_sim/faults', { rules => [] });
is(sql("SELECT shipsync.resync('crm.orders', kind => 'missing_at_carrier')"), 20,
	'resync: 20 missing ones');
is(sql("SELECT shipsync.resync('crm.orders', kind => 'not_sent')"), 40, 'resync: 40 not sent');
is( sql(q{SELECT shipsync.resync('crm.orders', kind => 'tracking_mismatch')
		+ shipsync.resync('crm.orders', kind => 'status_mismatch')
		+ shipsync.resync('crm.orders', kind => 'address_changed_after_send')}),
	10, 'resync: 10 updates for the changed ones');
# (the last intent of each order: what resync() enqueued)
my $last_ops = q{SELECT string_agg(DISTINCT o.op, ',') FROM shipsync.outbox o
	WHERE o.order_key IN (%s) AND o.id = (SELECT max(x.id) FROM shipsync.outbox x
		WHERE x.binding_id = o.binding_id AND x.order_key = o.order_key)};
is(sql(sprintf($last_ops, q{'1', '20', '31', '100001', '200001'})),
	'create', 'resync: creates where the carrier has nothing');
is(sql(sprintf($last_ops, q{'51', '61', '64', '66'})), 'update', 'resync: updates where it has a shipment');
ok( wait_until($node,
		q{SELECT NOT EXISTS (SELECT 1 FROM shipsync.outbox WHERE state IN ('pending', 'retrying', 'in_flight'))
		  AND NOT EXISTS (SELECT 1 FROM shipsync.inbox)}, 120),
	'resync: delivered');
is( sql(q{SELECT count(*) FROM crm.orders WHERE waybill_no IS NULL OR waybill_no = 'HAND-EDITED'}),
	0, 'resync: every order has its waybill');
is(sim_get($sim, '/_sim/stats')->{orders}, 2000 + 20 + 15 + 5,
	'resync: the carrier knows every order now');

# a person resolves an orphan that is still there: the next run reopens it
sql(q{UPDATE shipsync.exception_ticket SET resolved_at = now(), resolved_by = current_user
	WHERE kind = 'orphan_at_carrier' AND order_key = 'GHOST-1'});
my $run2 = run_reconcile_ok();
is( sql("SELECT opened || '/' || closed || '/' || reopened FROM shipsync.reconcile_run WHERE run_id = $run2"),
	'0/' . (20 + 40 + 5 + 10) . '/1', 'run 2: nothing new, 75 closed, 1 reopened');
for my $kind (qw(missing_at_carrier not_sent dead_intent tracking_mismatch status_mismatch
	address_changed_after_send))
{
	is(open_keys($kind), '', "run 2: no $kind left open");
}
is( sql(q{SELECT count(*) FROM shipsync.exception_ticket WHERE resolved_by = 'reconcile'
		AND kind IN ('missing_at_carrier', 'not_sent', 'dead_intent')}),
	65, 'run 2: the missing, not-sent and dead ones resolved by reconcile');
is(open_keys('orphan_at_carrier'), range_keys(1, 5, 'GHOST-'), 'run 2: the orphans are still open');
is( sql(q{SELECT reopen_count FROM shipsync.exception_ticket
		WHERE kind = 'orphan_at_carrier' AND order_key = 'GHOST-1'}),
	1, 'run 2: the one resolved by hand was reopened, and counted');
is(open_keys('duplicate_at_carrier'), range_keys(21, 30), 'run 2: the duplicates are still open');
is(open_keys('stuck'), '70,71', 'run 2: the stuck ones are still open');
is( sql(q{SELECT string_agg(event, ',' ORDER BY at, event) FROM shipsync.ticket_event e
		JOIN shipsync.exception_ticket t USING (ticket_id)
		WHERE t.kind = 'orphan_at_carrier' AND t.order_key = 'GHOST-1'}),
	'opened,resolved,reopened', 'run 2: the ledger kept its history');

###########################################################################
# 3. the schedules: the CRM-side pass, and the daily run
###########################################################################
sql(q{ALTER SYSTEM SET shipsync.reconcile_interval = '1s'; SELECT pg_reload_conf()});
ok( wait_until($node,
		q{SELECT count(*) >= 1 FROM shipsync.reconcile_run WHERE kind = 'crm' AND trigger = 'interval'
		  AND state = 'done'}, 60),
	'CRM-side pass: turned on, the passes come');
# an hour: the passes stop (none started for three seconds) ...
sql(q{ALTER SYSTEM SET shipsync.reconcile_interval = '1h'; SELECT pg_reload_conf()});
ok( wait_until($node,
		q{SELECT max(started_at) < now() - interval '3 s' FROM shipsync.reconcile_run
		  WHERE kind = 'crm' AND trigger = 'interval'}, 60),
	'CRM-side pass: an interval of an hour, no pass meanwhile');
# ... and a second again counts from the last pass, not from the hour's due time
sql(q{ALTER SYSTEM SET shipsync.reconcile_interval = '1s'; SELECT pg_reload_conf()});
sql(q{SET session_replication_role = replica;
	UPDATE crm.orders SET waybill_no = 'TAMPERED' WHERE id = 80});
ok( wait_until($node,
		q{SELECT count(*) = 1 FROM shipsync.reconciliation WHERE kind = 'tracking_mismatch' AND order_key = '80'}, 60),
	'CRM-side pass: finds a column changed behind the dispatcher, the interval shortened by a reload');
is( sql(q{SELECT count(*) > 0 FROM shipsync.reconcile_run WHERE kind = 'crm' AND trigger = 'interval'
		AND state = 'done' AND pages = 0}),
	't', 'CRM-side pass: runs of its own, with no pull');
sql(q{SET session_replication_role = replica;
	UPDATE crm.orders o SET waybill_no = s.tracking_number FROM shipsync.shipment s
	WHERE o.id = 80 AND s.order_key = '80'});
ok( wait_until($node,
		q{SELECT count(*) = 0 FROM shipsync.reconciliation WHERE kind = 'tracking_mismatch'}, 60),
	'CRM-side pass: and closes it once it is fixed');

my $now_hm = sql("SELECT to_char(now(), 'HH24:MI')");
sql(qq{ALTER SYSTEM SET shipsync.reconcile_interval = 0;
	ALTER SYSTEM SET shipsync.reconcile_at = '$now_hm';
	SELECT pg_reload_conf()});
ok( wait_until($node,
		q{SELECT count(*) = 1 FROM shipsync.reconcile_run WHERE trigger = 'daily' AND state = 'done'
		  AND provider_id IS NULL AND shipments_seen > 0}, 90),
	'daily: the run of every provider starts at shipsync.reconcile_at');

# (the worker commits its run, then exits: give it the moment)
ok( wait_until($node,
		q{SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'pg_shipsync reconcile'}, 10),
	'no reconcile worker is left behind');
ok(!$node->log_contains('terminated by signal'), 'no process crashed');

done_testing();
