# An order row held by another session while its answer is applied.
# The carrier's answer is recorded (shipment, fees, log, the intent done);
# only the write-back onto the row waits, tried again every second or so
# without a word to the carrier and without an attempt counted, until the
# holder ends; a ticket says so once the row has been held longer than
# shipsync.writeback_wait_ticket, and is resolved when the write-back
# lands.  Before, each write-back that met the held row sent the request
# again under its key, counted an attempt, and at max_attempts the intent
# was dead (writeback_failed) with the waybill never written: a forgotten
# prepared transaction or a long SELECT ... FOR UPDATE was enough.
#   1. a row held by an open SELECT ... FOR UPDATE: create answered once,
#      never dead, written back at the holder's COMMIT;
#   2. a row held by a PREPAREd transaction: the same, at its ROLLBACK
#      PREPARED;
#   3. an update whose answer meets the held row: the same.
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
my $node = shipsync_node('held', 'max_prepared_transactions = 4',
	'shipsync.order_lock_timeout = 200ms', 'shipsync.writeback_wait_ticket = 1s');
# three attempts at most: before, the held row cost all three
setup_orders($node, $sim, '{"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 200, "max_attempts": 3}');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub requests { return sim_get($sim, '/_sim/stats')->{requests}; }

# The create (or $op) intent of the order of $customer: "state attempts error_class"
sub intent
{
	my ($customer, $op) = @_;
	$op //= 'create';
	return sql("SELECT o.state || ' ' || o.attempts || ' ' || coalesce(o.error_class, '-')"
		  . " FROM shipsync.outbox o JOIN crm.orders c ON o.order_key = c.id::text"
		  . " WHERE c.customer = '$customer' AND o.op = '$op' ORDER BY o.id DESC LIMIT 1");
}

# Wait until the held order's intent has waited long enough to be ticketed,
# or has ended dead (as it did before): true when the ticket is open
sub wait_ticket_or_dead
{
	my ($customer) = @_;
	wait_until($node,
		"SELECT EXISTS (SELECT 1 FROM shipsync.outbox o JOIN crm.orders c ON o.order_key = c.id::text"
		  . "   WHERE c.customer = '$customer' AND o.state = 'dead')"
		  . " OR EXISTS (SELECT 1 FROM shipsync.open_tickets t JOIN crm.orders c ON t.order_key = c.id::text"
		  . "   WHERE c.customer = '$customer' AND t.kind = 'order_held')", 60);
	return sql("SELECT count(*) FROM shipsync.open_tickets t JOIN crm.orders c ON t.order_key = c.id::text"
		  . " WHERE c.customer = '$customer' AND t.kind = 'order_held'");
}

# Deliver one order of $customer while $hold (SQL run in a session of its
# own, given the order's key as $1) holds its row; $release ends the hold.
sub held_create
{
	my ($customer, $hold, $release, $name) = @_;
	sql("SELECT shipsync.pause('sim'); INSERT INTO crm.orders (customer) VALUES ('$customer')");
	my $key = sql("SELECT id FROM crm.orders WHERE customer = '$customer'");
	my $before = requests();
	my $holder = $node->background_psql('postgres');
	my $q = $hold;
	$q =~ s/\$1/$key/g;
	$holder->query_safe($q);
	sql("SELECT shipsync.resume('sim')");

	ok(wait_until($node, "SELECT count(*) = 1 FROM shipsync.shipment WHERE order_key = '$key'", 30),
		"$name: the carrier's answer is recorded");
	is(wait_ticket_or_dead($customer), '1', "$name: a ticket says the row has been held a while");
	like(intent($customer), qr/^done 1 order_locked$/,
		"$name: the intent is done, one attempt, its write-back waiting (not dead)");
	is(requests() - $before, 1, "$name: the carrier was asked once");
	like(sql("SELECT last_error FROM shipsync.outbox WHERE order_key = '$key' AND op = 'create'"),
		qr/write-back waits/, "$name: its last_error says the write-back waits");
	like(sql("SELECT string_agg(detail::text, ' ') FROM shipsync.trace('crm.orders', '$key')"),
		qr/write-back waits/, "$name: and so does trace()");
	is(sql("SELECT waybill_no IS NULL FROM crm.orders WHERE id = $key"), 't',
		"$name: nothing written onto the held row");

	$holder->query_safe($release);
	$holder->quit;
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE id = $key", 30),
		"$name: once the row is let go, the waybill is written back");
	is(sql("SELECT o.waybill_no = s.tracking_number FROM crm.orders o"
			  . " JOIN shipsync.shipment s ON s.order_key = o.id::text WHERE o.id = $key"),
		't', "$name: the shipment's waybill");
	like(intent($customer), qr/^done 1 -$/, "$name: the intent is done, its error gone");
	ok(wait_until($node,
			"SELECT NOT EXISTS (SELECT 1 FROM shipsync.open_tickets WHERE order_key = '$key')", 30),
		"$name: its ticket is resolved");
	is(requests() - $before, 1, "$name: still one request at the carrier");
	return $key;
}

###########################################################################
# 1. An open SELECT ... FOR UPDATE
###########################################################################
held_create('Held', 'BEGIN; SELECT 1 FROM crm.orders WHERE id = $1 FOR UPDATE', 'COMMIT', 'for update');

###########################################################################
# 2. A forgotten prepared transaction
###########################################################################
held_create('Prepared',
	"BEGIN; SELECT 1 FROM crm.orders WHERE id = \$1 FOR UPDATE; PREPARE TRANSACTION 'held61'",
	"ROLLBACK PREPARED 'held61'", 'prepared');

###########################################################################
# 3. An update whose answer meets the held row
###########################################################################
{
	sql("INSERT INTO crm.orders (customer) VALUES ('Updated')");
	my $key = sql("SELECT id FROM crm.orders WHERE customer = 'Updated'");
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE id = $key", 30),
		'update: the order is shipped');
	# a paused provider's intents may stay in the inbox until a commit for a
	# provider that can send drains it (docs/architecture.md, "Drain")
	sql("SELECT shipsync.pause('sim'); UPDATE crm.orders SET address = 'elsewhere', waybill_no = NULL"
		  . " WHERE id = $key");
	ok(wait_until($node,
			"SELECT count(*) = 1 FROM (SELECT order_key, op FROM shipsync.inbox"
			  . " UNION ALL SELECT order_key, op FROM shipsync.outbox) i"
			  . " WHERE order_key = '$key' AND op = 'update'", 30),
		'update: its update is captured');
	my $before = requests();
	my $holder = $node->background_psql('postgres');
	$holder->query_safe("BEGIN; SELECT 1 FROM crm.orders WHERE id = $key FOR UPDATE");
	sql("SELECT shipsync.resume('sim')");
	is(wait_ticket_or_dead('Updated'), '1', 'update: a ticket says the row has been held a while');
	like(intent('Updated', 'update'), qr/^done 1 order_locked$/,
		'update: the intent is done, one attempt, its write-back waiting (not dead)');
	is(requests() - $before, 1, 'update: the carrier was asked once');
	$holder->query_safe('COMMIT');
	$holder->quit;
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE id = $key", 30),
		'update: once the row is let go, the waybill is written back');
	like(intent('Updated', 'update'), qr/^done 1 -$/, 'update: the intent is done, its error gone');
	is(requests() - $before, 1, 'update: still one request at the carrier');
}

is(sql("SELECT count(*) FROM shipsync.outbox WHERE state <> 'done'"), '0', 'every intent is done');
is(sim_get($sim, '/_sim/stats')->{duplicate_orders}, 0, 'no order shipped twice');
$node->stop;
done_testing();
