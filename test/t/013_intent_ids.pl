# Intent ids.  Per-order ordering rests on them: an intent captured after
# another one committed must get the larger id, whichever backend captured
# each.  They come from blocks of the outbox sequence handed out through
# shared memory (src/capture.c).  What a user relies on:
#   - four clients creating orders and updating each other's: every order's
#     create has the smallest id of its intents, also when blocks are tiny
#     and taken concurrently all the time;
#   - ids are unique and keep growing across an immediate stop (the block in
#     shared memory is lost, the sequence is not), across the outbox's own
#     default (SQL-side intents), and after DROP/CREATE EXTENSION;
#   - a provider of an extension created again starts afresh: nothing of
#     the dropped one's breaker, wait or counters reaches it;
#   - a sequence advancing by 1 (no block to share) still works.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use ShipsyncTest;

my $node = shipsync_node('ids');
my $sql = sub { $node->safe_psql('postgres', $_[0]) };
my $setup = q{
	CREATE EXTENSION pg_shipsync;
	CREATE SCHEMA IF NOT EXISTS crm;
	CREATE TABLE IF NOT EXISTS crm.orders (id bigserial PRIMARY KEY, customer text NOT NULL, waybill_no text);
	SELECT shipsync.create_provider('nowhere', 'generic', 'http://127.0.0.1:9', '{}');
	SELECT shipsync.pause('nowhere');
	SELECT shipsync.attach('crm.orders', 'nowhere', writeback => '{"tracking_number": "waybill_no"}');
};
$sql->($setup);

# The intents are looked for in the inbox and the outbox alike: the
# dispatcher moves a paused provider's intents to the outbox too, at its
# start and whenever it read the provider before pause() reached it (they
# wait there all the same), and the ids are what is checked here.
my $intents = "(SELECT id, order_key, op FROM shipsync.inbox"
  . " UNION ALL SELECT id, order_key, op FROM shipsync.outbox) i";

# 1. blocks of 4 ids, four clients racing: creates and cross-backend updates
$sql->("ALTER SEQUENCE shipsync.outbox_id_seq INCREMENT BY 4");
$sql->("INSERT INTO crm.orders (customer) SELECT 'seed' FROM generate_series(1, 50)");
$node->pgbench(
	'--no-vacuum --client=4 --jobs=2 --time=5',
	0, [qr/processed: [1-9]/], [qr/^$/], 'four clients create and update orders',
	{
		'013_create' => "INSERT INTO crm.orders (customer) VALUES ('new');\n",
		'013_update' => "\\set r random(0, 49)\n"
		  . "UPDATE crm.orders SET customer = customer || '.' WHERE id = (SELECT max(id) FROM crm.orders) - :r;\n",
	});
my $updates = $sql->("SELECT count(*) FROM $intents WHERE op = 'update'");
cmp_ok($updates, '>', 100, "race: $updates updates captured");
is( $sql->(
		"SELECT count(*) FROM (SELECT order_key,
			min(id) FILTER (WHERE op = 'create') AS c, min(id) FILTER (WHERE op = 'update') AS u
			FROM $intents GROUP BY order_key) s WHERE u < c"),
	0,
	'race: no update got a smaller id than its order\'s create');
is($sql->("SELECT count(*) - count(DISTINCT id) FROM $intents"), 0, 'race: ids are unique');
is( $sql->("SELECT count(*) FROM crm.orders"),
	$sql->("SELECT count(*) FROM $intents WHERE op = 'create'"),
	'race: one create intent per order');

# 2. the outbox default draws from the same order
my $max = $sql->("SELECT max(id) FROM $intents");
my $sqlid = $sql->(
	"INSERT INTO shipsync.outbox (binding_id, provider_id, order_key, op)
	 SELECT binding_id, provider_id, 'by-sql', 'register' FROM shipsync.binding RETURNING id");
cmp_ok($sqlid, '>', $max, 'SQL-side intent: its id follows every captured one');
$sql->("INSERT INTO crm.orders (customer) VALUES ('after-sql')");
cmp_ok($sql->("SELECT max(id) FROM $intents"), '>', $sqlid,
	'and the next capture follows it');

# 3. an immediate stop loses the block in shared memory, not the order
$sql->("ALTER SEQUENCE shipsync.outbox_id_seq INCREMENT BY 1024");
$sql->("INSERT INTO crm.orders (customer) VALUES ('before-crash')");
$max = $sql->("SELECT max(id) FROM $intents");
my $n = $sql->("SELECT count(*) FROM $intents");
$node->stop('immediate');
$node->start;
is($sql->("SELECT count(*) FROM $intents"), $n, 'crash: every committed intent is kept');
$sql->("INSERT INTO crm.orders (customer) VALUES ('after-crash')");
cmp_ok($sql->("SELECT id FROM $intents WHERE order_key = (SELECT id::text FROM crm.orders WHERE customer = 'after-crash')"),
	'>', $max, 'crash: the first id after the restart is larger than every earlier one');

# 4. a new extension, a new sequence: ids start again, still unique
$sql->("DROP EXTENSION pg_shipsync CASCADE");
$sql->($setup);
$sql->("INSERT INTO crm.orders (customer) SELECT 'again' FROM generate_series(1, 10)");
is($sql->("SELECT count(DISTINCT id) FROM $intents"), 10,
	'recreated: ten intents, ten ids');
cmp_ok($sql->("SELECT min(id) FROM $intents"), '<', $max,
	'recreated: ids come from the new sequence, not the old block');

# 5. no block to share: a sequence advancing by 1
$sql->("ALTER SEQUENCE shipsync.outbox_id_seq INCREMENT BY 1");
$max = $sql->("SELECT max(id) FROM $intents");
$sql->("INSERT INTO crm.orders (customer) SELECT 'one' FROM generate_series(1, 3)");
is( $sql->("SELECT string_agg((id > $max)::text, ',' ORDER BY id) FROM $intents WHERE order_key IN (SELECT id::text FROM crm.orders WHERE customer = 'one')"),
	'true,true,true', 'increment 1: each id is new and larger');
is($sql->("SELECT count(*) - count(DISTINCT id) FROM $intents"), 0, 'increment 1: unique');

# 6. DROP EXTENSION while the workers' passes run back to back: the
# workers hold the extension for each transaction (src/spi.c), so a drop
# waits for a pass and the next pass waits for the drop -- never a
# deadlock, which failed the drop or the pass before
$sql->("ALTER SYSTEM SET shipsync.idle_check_ms = 100");
$sql->("SELECT pg_reload_conf()");
my $log_at = -s $node->logfile;
for my $i (1 .. 20)
{
	$sql->("DROP EXTENSION pg_shipsync CASCADE");
	$sql->($setup);
	$sql->("INSERT INTO crm.orders (customer) SELECT 'cycle' FROM generate_series(1, 20)");
	usleep(100_000);
}
my $log = slurp_file($node->logfile, $log_at);
unlike($log, qr/deadlock detected/, 'twenty drops and re-creations during the workers\' passes: no deadlock');

# 7. DROP EXTENSION in the middle of a batch (requests on the wire, their
# answers applied after the drop): the workers end quietly, saying why,
# with no error or warning about the objects the drop took away
{
	my $sim = start_sim(latency_ms => 1500);
	$sql->("ALTER SYSTEM RESET shipsync.idle_check_ms");
	$sql->("SELECT pg_reload_conf()");
	$sql->("DROP EXTENSION pg_shipsync CASCADE");
	$sql->($setup);
	$sql->("SELECT shipsync.create_provider('sim', 'generic', '$sim->{url}', '{\"timeout_ms\": 10000}')");
	$sql->("SELECT shipsync.detach('crm.orders')");
	$sql->("SELECT shipsync.attach('crm.orders', 'sim', writeback => '{\"tracking_number\": \"waybill_no\"}')");
	$log_at = -s $node->logfile;
	$sql->("INSERT INTO crm.orders (customer) SELECT 'mid-batch' FROM generate_series(1, 50)");
	ok( wait_until($node, "SELECT count(*) > 0 FROM shipsync.outbox WHERE state = 'in_flight'", 20),
		'a batch is on the wire');
	$sql->("DROP EXTENSION pg_shipsync CASCADE");
	usleep(4_000_000);			# the answers come (1.5 s) and are applied
	$log = slurp_file($node->logfile, $log_at);
	like($log, qr/LOG:  pg_shipsync: the extension was dropped from database "postgres"; the (dispatcher|applier) exits/,
		'DROP EXTENSION mid-batch: the log says the extension was dropped');
	my @noise = grep { /\b(ERROR|WARNING|FATAL):/ } split /\n/, $log;
	is(join("\n", @noise), '', 'DROP EXTENSION mid-batch: no error or warning from the workers');
}

# 8. dropped and created again at version 0.1 (the library is 0.2's): the
# dispatcher's first word is that it waits for ALTER EXTENSION ... UPDATE,
# with no error about the objects 0.1 lacks and no "gone" (before: the
# error, then "the extension is gone", then the next one's word to update)
{
	$sql->($setup);
	ok( wait_until($node, "SELECT count(*) = 1 FROM pg_stat_activity"
			  . " WHERE backend_type = 'pg_shipsync dispatcher' AND wait_event = 'Extension'", 20),
		'0.2 again: a dispatcher waits for work');
	$log_at = -s $node->logfile;
	$sql->("DROP EXTENSION pg_shipsync CASCADE; CREATE EXTENSION pg_shipsync VERSION '0.1'");
	ok($node->wait_for_log(qr/waits: the extension is at version 0\.1, the library at 0\.2/, $log_at),
		'0.1 created over 0.2: the dispatcher says it waits for the update');
	usleep(3_000_000);
	# (the applier of 0.2 saying it exits on the DROP may come first or
	# not: it is the dispatcher's first word that is checked)
	my @said = grep { /(ERROR|WARNING|FATAL):|LOG:  pg_shipsync/ && !/; the applier exits$/ }
	  split /\n/, slurp_file($node->logfile, $log_at);
	like($said[0] // '', qr/LOG:  pg_shipsync dispatcher for database "postgres" waits: the extension is at version 0\.1/,
		'... as its first word');
	is(join("\n", grep { /ERROR:|gone from database/ } @said), '',
		'... with no error and no word of the extension being gone');
	$sql->("DROP EXTENSION pg_shipsync");
}

# 9. What the dispatcher keeps of a provider in shared memory (its breaker,
# the wait its carrier asked for, the counters of provider_health) belongs
# to that provider of that extension: after DROP EXTENSION and CREATE
# EXTENSION, the new provider with the same id took it over.  A carrier's
# 503 asking to wait an hour held the new provider's first order for that
# hour, and provider_health showed the old provider's requests and error.
{
	my $sim = start_sim(faults => { rules => [
		{ fault => 'status', status => 503, retry_after => '3600', count => 1 } ] });
	my $fresh = sub {
		my ($provider, $drop) = @_;
		$sql->(qq{
			BEGIN;
			$drop
			CREATE EXTENSION pg_shipsync;
			DROP SCHEMA IF EXISTS crm CASCADE;
			CREATE SCHEMA crm;
			CREATE TABLE crm.orders (id bigserial PRIMARY KEY, customer text NOT NULL, waybill_no text);
			SELECT shipsync.create_provider('$provider', 'generic', '$sim->{url}', '{"timeout_ms": 10000}');
			SELECT shipsync.attach('crm.orders', '$provider', writeback => '{"tracking_number": "waybill_no"}');
			COMMIT;
		});
		return $sql->("SELECT provider_id FROM shipsync.provider WHERE name = '$provider'");
	};
	my $old_id = $fresh->('sim', '');
	$sql->("INSERT INTO crm.orders (customer) VALUES ('asked to wait')");
	ok( wait_until($node, "SELECT hold_until > now() + interval '30 min' FROM shipsync.provider_health"
			  . " WHERE provider = 'sim'", 30),
		'the carrier asked provider sim to wait an hour');
	# dropped and created again in one transaction, as a script run with
	# --single-transaction does
	is($fresh->('fresh', 'DROP EXTENSION pg_shipsync CASCADE;'), $old_id, 'created again, the extension gives a new provider the id the old one had');
	$sql->("INSERT INTO crm.orders (customer) VALUES ('new extension')");
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = 'new extension'", 30),
		'the new provider\'s order is shipped, not held by the old provider\'s wait');
	is( $sql->("SELECT coalesce(hold_until::text, 'none') || ' ' || requests_5m || ' '"
			  . " || coalesce(last_error, 'none') FROM shipsync.provider_health WHERE provider = 'fresh'"),
		'none 1 none', 'provider_health shows the new provider\'s own request only');
	$sql->("DROP EXTENSION pg_shipsync CASCADE");
	stop_sim($sim);
}

$node->stop;
done_testing();
