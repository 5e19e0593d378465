# A steady stream of orders committing while the dispatcher claims: every
# committed order is sent, none is taken for deleted.  (An order committing
# between the claim transaction's first snapshot and its lock statement was
# once claimed but rendered as missing.)  Also checks the commit-to-waybill
# path under concurrent writers.  And the answer of an attempt whose lease
# ran out while it was on the wire (its dispatcher held up longer than the
# lease by a DBA's lock on the outbox) is applied when it comes, before the
# intent is sent again: it used to be recorded as a shipment while the
# intent stayed retrying, and sent again as an update under the create's
# key, which the carrier refused (422): dead, with a ticket.  At the last
# attempt, the intent the sweep gave up on is done when the answer comes.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $sim = start_sim();
my $node = shipsync_node('steady');
setup_orders($node, $sim);

# two writers, many short transactions, for a few seconds
my $script = $node->basedir . '/insert.sql';
PostgreSQL::Test::Utils::append_to_file($script,
	"INSERT INTO crm.orders (customer, address) VALUES ('赵六', '四川省成都市武侯区');\n");
$node->command_ok(
	[ 'pgbench', '-n', '-c', '2', '-j', '2', '-T', '6', '-R', '300', '-f', $script, 'postgres' ],
	'orders committed by two writers');

my $n = $node->safe_psql('postgres', 'SELECT count(*) FROM crm.orders');
cmp_ok($n, '>', 500, "a stream of orders was committed ($n)");
ok(wait_until($node, 'SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL', 60),
	'every committed order got its waybill');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM shipsync.outbox WHERE state <> 'done' OR error_class IS NOT NULL"),
	'0',
	'every intent is done, none finished as "nothing to send"');
my $stats = sim_get($sim, '/_sim/stats');
is($stats->{shipments}, $n, 'one shipment per order at the carrier');
is($stats->{duplicate_orders}, 0, 'no order created twice');

# a claim made by hand and abandoned: its lease runs out and the
# dispatcher sends the intent anyway
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET shipsync.idle_check_ms = 500;
	SELECT pg_reload_conf();
	SELECT shipsync.pause('sim');
	INSERT INTO crm.orders (customer) VALUES ('abandoned');
});
# the claim by hand: the dispatcher's idle check may be moving the intent
# from the inbox to the outbox at this moment, out of the claim's sight
# until it commits; the claim is made as soon as the intent can be seen
# (a lease of 3 s: the sweep at every idle check must not end it before the
# state is read, however slow the machine)
ok(wait_until($node, 'SELECT count(*) = 1 FROM shipsync.claim(1, 10, 3000)', 30),
	'the intent is claimed by hand');
is($node->safe_psql('postgres', "SELECT state FROM shipsync.outbox ORDER BY id DESC LIMIT 1"),
	'in_flight', 'an intent claimed by hand is in flight');
$node->safe_psql('postgres', "SELECT shipsync.resume('sim')");
ok( wait_until($node,
		"SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = 'abandoned'", 30),
	'after its lease expired, the dispatcher delivered it');
ok($node->log_contains('whose lease expired are due again'), 'the sweep says so in the log');
# the sweep runs at every idle check: it reads the intents in flight through
# their own index, not the history or a paused provider's backlog
ok( wait_until($node,
		"SELECT idx_scan > 0 FROM pg_stat_user_indexes WHERE indexrelname = 'outbox_lease_idx'", 10),
	'the sweep reads the lease index');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_user_indexes WHERE indexrelname = 'outbox_order_idx' AND idx_scan > 0"
		  . " AND relid = 'shipsync.outbox'::regclass"),
	1, 'claims use the per-order index (statistics are flushed)');

# the answer of an attempt whose lease ran out on the wire: the dispatcher
# held up by a lock for longer than the lease (timeout_ms + 60 s) is
# played here by moving the lease back; nothing is sent again meanwhile
# (the provider paused), then the answer comes.  The request must outlive
# all that: at timeout_ms = 2000 a slow machine (the server under ASan)
# timed it out before the sweep had taken it back, and it was rightly
# sent again
$node->safe_psql('postgres', q{UPDATE shipsync.provider SET timeout_ms = 20000 WHERE name = 'sim';
	SELECT shipsync._wake(true)});
sim_post($sim, '/_sim/faults', { rules => [ { fault => 'slow', ms => 30000, held => JSON::PP::true } ] });
$node->safe_psql('postgres', "INSERT INTO crm.orders (customer) VALUES ('late answer')");
my $late = q{(SELECT id::text FROM crm.orders WHERE customer = 'late answer')};
ok(wait_until($node, "SELECT state = 'in_flight' FROM shipsync.outbox WHERE order_key = $late", 30),
	'late answer: on the wire');
my $before = sim_get($sim, '/_sim/stats')->{requests};
$node->safe_psql('postgres', qq{SELECT shipsync.pause('sim');
	UPDATE shipsync.outbox SET lease_until = now() - interval '1 s' WHERE order_key = $late});
ok( wait_until($node, "SELECT state = 'retrying' AND error_class = 'lease_expired'"
		  . " FROM shipsync.outbox WHERE order_key = $late", 30),
	'late answer: the sweep took it back');
sim_post($sim, '/_sim/release');
sim_post($sim, '/_sim/faults', { rules => [] });
ok( wait_until($node, "SELECT count(*) = 1 FROM shipsync.delivery_log d JOIN shipsync.outbox o"
		  . " ON o.id = d.outbox_id WHERE o.order_key = $late", 30),
	'late answer: its answer came');
$node->safe_psql('postgres', "SELECT shipsync.resume('sim')");
ok(wait_settled($node, $late, 30), 'late answer: settled');
is( $node->safe_psql('postgres', "SELECT state || ' ' || attempts || ' ' || coalesce(error_class, '')"
		  . " FROM shipsync.outbox WHERE order_key = $late"),
	'done 1 ', 'late answer: the intent is done with its one attempt, not sent again');
is($node->safe_psql('postgres', "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = 'late answer'"),
	't', 'late answer: written back');
is(sim_get($sim, '/_sim/stats')->{requests}, $before, 'late answer: no second request');
is($node->safe_psql('postgres', "SELECT count(*) FROM shipsync.exception_ticket WHERE order_key = $late"),
	'0', 'late answer: no ticket');

# the same at the last attempt (max_attempts): the sweep makes it dead
# (lease_expired, "its answer is unknown"), and the answer that comes
# makes it done; it used to stay dead beside the shipment its answer made
$node->safe_psql('postgres', q{UPDATE shipsync.provider SET max_attempts = 1 WHERE name = 'sim';
	SELECT shipsync._wake(true)});
sim_post($sim, '/_sim/faults', { rules => [ { fault => 'slow', ms => 30000, held => JSON::PP::true } ] });
$node->safe_psql('postgres', "INSERT INTO crm.orders (customer) VALUES ('late last answer')");
my $last = q{(SELECT id::text FROM crm.orders WHERE customer = 'late last answer')};
ok(wait_until($node, "SELECT state = 'in_flight' FROM shipsync.outbox WHERE order_key = $last", 30),
	'late last answer: on the wire');
$node->safe_psql('postgres', qq{SELECT shipsync.pause('sim');
	UPDATE shipsync.outbox SET lease_until = now() - interval '1 s' WHERE order_key = $last});
ok( wait_until($node, "SELECT state = 'dead' AND error_class = 'lease_expired'"
		  . " FROM shipsync.outbox WHERE order_key = $last", 30),
	'late last answer: the sweep gave up on it');
sim_post($sim, '/_sim/release');
sim_post($sim, '/_sim/faults', { rules => [] });
ok( wait_until($node, "SELECT count(*) = 1 FROM shipsync.delivery_log d JOIN shipsync.outbox o"
		  . " ON o.id = d.outbox_id WHERE o.order_key = $last", 30),
	'late last answer: its answer came');
$node->safe_psql('postgres', "SELECT shipsync.resume('sim')");
is($node->safe_psql('postgres', "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = 'late last answer'"),
	't', 'late last answer: written back');
is( $node->safe_psql('postgres', "SELECT state || ' ' || attempts || ' ' || coalesce(error_class, '')"
		  . " FROM shipsync.outbox WHERE order_key = $last"),
	'done 1 ', 'late last answer: the intent is done, not dead beside its shipment');
my (undef, $ended) = run_reconcile($node, 'sim');
ok($ended, 'late last answer: a reconciliation pass ran');
is( $node->safe_psql('postgres', "SELECT string_agg(kind || ' ' || (resolved_at IS NOT NULL), ',')"
		  . " FROM shipsync.exception_ticket WHERE order_key = $last"),
	'dead_intent true', 'late last answer: the sweep\'s ticket is resolved by reconciliation');

$node->stop;
stop_sim($sim);
done_testing();
