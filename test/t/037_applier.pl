# The applier: a second background worker per database applies the
# results of the dispatcher's requests, so that a burst runs on two cores
# (applier.c).  Here:
#   1. it applies, and acts for the dispatcher (the ledger's actor);
#   2. terminated while idle, the same dispatcher applies results itself,
#      then starts a new applier;
#   3. shipsync.apply_worker = off stops it at a reload, on brings it back;
#   4. a dispatcher that exits while its applier applies: the next one
#      waits for that applier to finish before taking back what was in
#      flight, and the order is sent once and written back;
#   5. while it applies, the dispatcher goes on sending, and stops
#      claiming once max_inflight results wait for it;
#   6. a statement of the apply that cannot be prepared for a while (a
#      function renamed): the orders of that while end dead, and once it
#      can, the next ones are applied;
#   7. no worker slot for it: the dispatcher applies results itself, and
#      says so;
#   8. pg_cancel_backend() of whoever applies (the applier, or the
#      dispatcher applying itself), in the middle of a write-back: every
#      order is still written back, none dead, each sent once;
#   9. an order row locked by the user's open transaction holds up that
#      order's write-back alone: the others are written back, its answer
#      is recorded and written back once the row is free, never sent
#      again (061_writeback_held.pl has the rest);
#  10. and so does a polled status of it: the dispatcher goes on;
#  11. a table held by a migration in an open transaction holds up its
#      own orders alone.
# (The applier killed while it applies, twice: 021_hostile.pl, poison.)
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
my $node = shipsync_node('applier');
setup_orders($node, $sim);

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub pid_of
{
	my ($type) = @_;
	return sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync $type'"
		  . " AND datname = 'postgres'");
}

# Commit $n orders named "$tag N" at once; true when all are written back
sub deliver
{
	my ($n, $tag) = @_;
	sql("INSERT INTO crm.orders (customer) SELECT '$tag ' || g FROM generate_series(1, $n) g");
	return wait_until($node,
		"SELECT count(*) = $n FROM crm.orders WHERE customer LIKE '$tag %' AND waybill_no IS NOT NULL");
}

###########################################################################
# 1. It applies, as the dispatcher
###########################################################################
ok(wait_until($node,
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync applier'"),
	'an applier is ready before the first results');
ok(deliver(200, 'First'), 'orders are delivered and written back');
my $dispatcher = pid_of('dispatcher');
my $applier = pid_of('applier');
like($applier, qr/^\d+$/, 'by an applier beside the dispatcher');
isnt($applier, $dispatcher, 'a process of its own');

# a permanent refusal: dead, with a ticket the ledger says the dispatcher opened
sim_post($sim, '/_sim/faults',
	{ rules => [ { fault => 'status', status => 422, match_order_ref => '^.*$', count => 1 } ] });
sql("INSERT INTO crm.orders (customer) VALUES ('Refused')");
ok( wait_until($node,
		"SELECT state = 'dead' FROM shipsync.outbox o JOIN crm.orders c ON o.order_key = c.id::text"
		  . " WHERE c.customer = 'Refused'"),
	'a refused order is dead');
is( sql(q{SELECT string_agg(e.actor, ',') FROM shipsync.ticket_event e
		JOIN shipsync.exception_ticket t USING (ticket_id)
		JOIN crm.orders c ON t.order_key = c.id::text
		WHERE c.customer = 'Refused' AND e.event = 'opened'}),
	'dispatcher', 'its ticket was opened by the dispatcher (the applier acts for it)');
sim_post($sim, '/_sim/faults', { rules => [] });

###########################################################################
# 2. Terminated while idle
###########################################################################
my $off = -s $node->logfile;
sql("SELECT pg_terminate_backend($applier)");
ok(wait_until($node, "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $applier"),
	'the applier is terminated');
ok(deliver(50, 'Alone'), 'the next results are applied all the same');
ok($node->log_contains(qr/its applier exited; the dispatcher applies results itself for now/, $off),
	'by the dispatcher itself, which says so');
is(pid_of('dispatcher'), $dispatcher, 'the same dispatcher');
# a new applier at the first results ten seconds on
my $again = 0;
for (my $i = 0; $i < 40 && !$again; $i++)
{
	sleep 1;
	ok(deliver(1, "Later$i"), "order $i delivered") if $i % 5 == 4;
	my $p = pid_of('applier');
	$again = $p if $p && $p ne $applier;
}
ok($again, 'then it starts a new applier');

###########################################################################
# 3. shipsync.apply_worker
###########################################################################
# a reload takes effect with nothing to deliver: no results are handed over
# to make the dispatcher look at the setting
sql("ALTER SYSTEM SET shipsync.apply_worker = off; SELECT pg_reload_conf()");
ok(wait_until($node,
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync applier'"),
	'apply_worker off: the applier exits at the reload');
ok(deliver(50, 'Off'), 'apply_worker off: the dispatcher applies results itself');
is(pid_of('applier'), '', 'and starts none');
sql("ALTER SYSTEM RESET shipsync.apply_worker; SELECT pg_reload_conf()");
ok(wait_until($node,
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync applier'"),
	'apply_worker on again: an applier starts at the reload');
ok(deliver(50, 'On'), 'apply_worker on again: delivered');
is(pid_of('dispatcher'), $dispatcher, 'the same dispatcher throughout');

###########################################################################
# 4. The dispatcher exits while its applier applies
###########################################################################
{
	# a write-back that lasts, for one customer, until the test lets it go
	# (a row in crm.gate).  Not a lock the test holds: the write-back gives
	# up on a lock after shipsync.order_lock_timeout, and its answer is then
	# recorded and left to the dispatcher's tries (061_writeback_held.pl),
	# the applier idle again within two seconds, before the dispatcher
	# below is terminated on a slow machine.
	sql(q{CREATE TABLE crm.gate (open boolean);
		CREATE FUNCTION crm.slow() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.customer = 'Slow' AND NEW.waybill_no IS NOT NULL THEN
				WHILE NOT EXISTS (SELECT 1 FROM crm.gate) LOOP PERFORM pg_sleep(0.02); END LOOP;
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER slow BEFORE UPDATE ON crm.orders FOR EACH ROW EXECUTE FUNCTION crm.slow();});
	sql("INSERT INTO crm.orders (customer) VALUES ('Slow')");
	my $busy = "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync applier'"
	  . " AND wait_event = 'PgSleep'";
	ok($node->poll_query_until('postgres', $busy), 'the applier is applying the slow order');
	is( sql("SELECT query FROM pg_stat_activity WHERE backend_type = 'pg_shipsync applier'"),
		'writing results back onto the orders',
		'pg_stat_activity names the step of the apply the applier is in');
	my $old = pid_of('applier');
	sql("SELECT pg_terminate_backend($dispatcher)");
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
			  . " AND pid <> $dispatcher AND query LIKE 'waiting for the applier of the previous dispatcher%'"),
		'the next dispatcher waits for the applier of the one before');
	sql('INSERT INTO crm.gate VALUES (true)');
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = 'Slow'"),
		'the slow order is written back');
	is( sql(q{SELECT attempts || ' ' || state FROM shipsync.outbox o JOIN crm.orders c
			ON o.order_key = c.id::text WHERE c.customer = 'Slow'}),
		'1 done', 'sent once, done');
	ok(wait_until($node, "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $old"),
		'the old applier exits');
	sql("DROP TRIGGER slow ON crm.orders");
	ok(deliver(50, 'Next'), 'the new dispatcher delivers');
	$dispatcher = pid_of('dispatcher');
}

###########################################################################
# 5. The dispatcher sends while its applier applies, within max_inflight
###########################################################################
{
	sql(qq{SELECT shipsync.create_provider('tight', 'generic', '$sim->{url}',
			'{"timeout_ms": 2000, "max_inflight": 2}');
		-- ids of their own: the simulator counts an order ref shipped twice
		CREATE TABLE crm.tight (id bigint GENERATED BY DEFAULT AS IDENTITY (START WITH 900001) PRIMARY KEY,
			customer text, waybill_no text);
		SELECT shipsync.attach('crm.tight', 'tight', writeback => '{"tracking_number": "waybill_no"}');
		CREATE TABLE crm.gate_tight (open boolean);
		CREATE FUNCTION crm.slow_tight() RETURNS trigger LANGUAGE plpgsql AS \$\$
		BEGIN
			IF NEW.customer LIKE 'Slow%' AND NEW.waybill_no IS NOT NULL THEN
				WHILE NOT EXISTS (SELECT 1 FROM crm.gate_tight) LOOP PERFORM pg_sleep(0.02); END LOOP;
			END IF;
			RETURN NEW;
		END \$\$;
		CREATE TRIGGER slow BEFORE UPDATE ON crm.tight FOR EACH ROW EXECUTE FUNCTION crm.slow_tight();});
	# max_inflight (2) results of the provider at the applier, stuck until
	# the test lets them go (a row in crm.gate_tight, not a lock: see 4.)
	my $base = sim_get($sim, '/_sim/stats')->{requests};
	sql("INSERT INTO crm.tight (customer) VALUES ('Slow A'), ('Slow B')");
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync applier'"
			  . " AND wait_event = 'PgSleep'"),
		'the applier is writing back the slow orders');
	# the applier can be stuck on the first answer while the second request
	# has yet to reach the simulator: count from when it has both
	for (my $i = 0; $i < 100; $i++)
	{
		last if sim_get($sim, '/_sim/stats')->{requests} - $base >= 2;
		usleep(50_000);
	}
	my $sent = sim_get($sim, '/_sim/stats')->{requests};
	is($sent - $base, 2, 'the carrier has both slow requests');
	# The dispatcher claims while fewer than max_inflight results wait
	# and fewer than max_inflight requests are out; every answer of the
	# hold then waits.  So at most 2 * max_inflight - 1 results wait:
	# 3 of the 6.  How many of those go depends on when the dispatcher
	# read the slow answers (reaching the carrier does not tell) and
	# whether they went to the applier together: 1, 2 or 3.
	sql("INSERT INTO crm.tight (customer) SELECT 'During ' || g FROM generate_series(1, 6) g");
	my $during = 0;
	for (my $i = 0; $i < 100 && $during < 1; $i++)
	{
		usleep(50_000);
		$during = sim_get($sim, '/_sim/stats')->{requests} - $sent;
	}
	ok($during >= 1, 'meanwhile the dispatcher sends more requests');
	usleep(1_000_000);
	my $after = sim_get($sim, '/_sim/stats')->{requests} - $sent;
	ok($after <= 3, 'and stops claiming once max_inflight results wait for the applier')
	  or diag("$after of the 6 sent");
	is(sql("SELECT count(*) FROM crm.tight WHERE waybill_no IS NOT NULL"), '0',
		'nothing is written back before the slow orders are');
	sql('INSERT INTO crm.gate_tight VALUES (true)');
	ok(wait_until($node, "SELECT count(*) = 8 FROM crm.tight WHERE waybill_no IS NOT NULL"),
		'then every order is written back');
	is( sql(q{SELECT count(*) FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id)
			WHERE b.tbl = 'crm.tight'::regclass AND (o.attempts, o.state) <> (1, 'done')}),
		'0', 'each sent once, done');
	# and the carrier got one request per intent: none sent again behind
	# the dispatcher's back
	my $seen = sim_get($sim, '/_sim/attempts');
	my @twice = grep { ($seen->{$_} // { requests => 0 })->{requests} != 1 }
	  split /\n/, sql(q{SELECT o.idempotency_key FROM shipsync.outbox o JOIN shipsync.binding b
			USING (binding_id) WHERE b.tbl = 'crm.tight'::regclass});
	is(scalar(@twice), 0, 'the carrier got one request per intent');
	sql("DROP TRIGGER slow ON crm.tight");
}

###########################################################################
# 6. A statement of the apply that cannot be prepared for a while: in new
# processes, so that the applier's warm-up and then the dispatcher's first
# apply fail to prepare it, with the statements before it prepared
###########################################################################
{
	sql("ALTER FUNCTION shipsync._lock_fees(integer[], text[], boolean) RENAME TO _lock_fees_away");
	sql("SELECT pg_terminate_backend($dispatcher)");
	ok( wait_until($node,
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
			  . " AND pid <> $dispatcher"),
		'a new dispatcher');
	$dispatcher = pid_of('dispatcher');
	sql("INSERT INTO crm.orders (customer) VALUES ('Unprepared')");
	ok( wait_until($node,
			"SELECT o.state = 'dead' FROM shipsync.outbox o JOIN crm.orders c ON o.order_key = c.id::text"
			  . " WHERE c.customer = 'Unprepared'"),
		'an order whose apply cannot be prepared ends dead');
	sql("ALTER FUNCTION shipsync._lock_fees_away(integer[], text[], boolean) RENAME TO _lock_fees");
	ok(deliver(20, 'Prepared'), 'once it can be, the next orders are applied');
	is(pid_of('dispatcher'), $dispatcher, 'by the same dispatcher');
}

###########################################################################
# 8. Cancelled while it writes back (a slow trigger): the cancel failed the
# batch, then the write-back of the order at hand, which went dead
# ("write-back failed: canceling statement due to user request") though
# the carrier had shipped it; cancelled twice, the applier also had an
# intent quarantined (poison).  Run here with the applier, and in 7 with
# the dispatcher applying itself.
###########################################################################
sql(q{CREATE FUNCTION crm.slow_wb() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF NEW.customer LIKE 'Cancel%' AND NEW.waybill_no IS NOT NULL THEN PERFORM pg_sleep(0.3); END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER slow_wb BEFORE UPDATE ON crm.orders FOR EACH ROW EXECUTE FUNCTION crm.slow_wb();});

sub cancel_while_applying
{
	my ($tag, $who) = @_;
	my $before = sim_get($sim, '/_sim/stats')->{requests};
	sql("INSERT INTO crm.orders (customer) SELECT '$tag ' || g FROM generate_series(1, 6) g");
	for (1 .. 2)
	{
		ok( wait_until($node,
				"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync $who'"
				  . " AND wait_event = 'PgSleep'", 20),
			"$tag: the $who writes back");
		sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE backend_type = 'pg_shipsync $who'");
		usleep(400_000);
	}
	ok( wait_until($node,
			"SELECT count(*) = 6 FROM crm.orders WHERE customer LIKE '$tag %' AND waybill_no IS NOT NULL", 30),
		"$tag: cancelled twice, the $who writes every order back");
	is( sql("SELECT string_agg(o.state || ' ' || coalesce(o.last_error, ''), ', ') FROM shipsync.outbox o"
			  . " JOIN crm.orders c ON o.order_key = c.id::text WHERE c.customer LIKE '$tag %' AND o.state <> 'done'"),
		'', "$tag: no intent dead");
	is(sim_get($sim, '/_sim/stats')->{requests} - $before, 6, "$tag: each sent once");
}
cancel_while_applying('Cancel applier', 'applier');

###########################################################################
# 9. A row lock on one order, held by the user's open transaction: the
# applier waited for it with no limit, the results of every other order of
# every table waited behind it, and once the intents' leases ran out the
# dispatcher waited too (its sweep of expired leases met the outbox rows
# the applier had locked): nothing was sent or written back until that
# transaction ended.  Now the write-back waits at most
# shipsync.order_lock_timeout; the others are written back.  That order was
# then sent again later under its key (an attempt counted each time, dead
# at max_attempts); now its answer is recorded and only its write-back
# waits for the row, not sent again.
###########################################################################
{
	sql(q{CREATE TABLE crm.more (id bigint PRIMARY KEY, customer text, waybill_no text);
		SELECT shipsync.attach('crm.more', 'sim', writeback => '{"tracking_number": "waybill_no"}');
		SELECT shipsync.pause('sim');
		INSERT INTO crm.orders (customer) VALUES ('Locked');
		INSERT INTO crm.orders (customer) SELECT 'Unlocked ' || g FROM generate_series(1, 5) g;
		-- keys of their own (crm.tight has 900001 on): the carrier tells orders apart by key
		INSERT INTO crm.more SELECT 800000 + g, 'More ' || g FROM generate_series(1, 5) g;});
	my $before = sim_get($sim, '/_sim/stats')->{requests};
	my $holder = $node->background_psql('postgres');
	$holder->query_safe("BEGIN; SELECT 1 FROM crm.orders WHERE customer = 'Locked' FOR UPDATE");
	sql("SELECT shipsync.resume('sim')");
	ok( wait_until($node,
			"SELECT (SELECT count(*) FROM crm.orders WHERE customer LIKE 'Unlocked %' AND waybill_no IS NOT NULL)"
			  . " + (SELECT count(*) FROM crm.more WHERE waybill_no IS NOT NULL) = 10", 20),
		'row lock: the other orders, of this table and of another, are written back meanwhile');
	ok( wait_until($node,
			"SELECT o.state || ' ' || o.error_class || ' ' || (o.last_error LIKE '%write-back waits%')::text"
			  . " = 'done order_locked true'"
			  . " FROM shipsync.outbox o JOIN crm.orders c ON o.order_key = c.id::text"
			  . " WHERE o.binding_id = 1 AND c.customer = 'Locked' AND o.op = 'create'", 20),
		'row lock: the locked order\'s answer is recorded, its write-back waits, and says why');
	is( sql("SELECT count(*) FROM shipsync.exception_ticket t JOIN crm.orders c ON t.order_key = c.id::text"
			  . " WHERE t.binding_id = 1 AND c.customer = 'Locked'"),
		'0', 'row lock: no ticket for it');
	$holder->query_safe('COMMIT');
	$holder->quit;
	ok( wait_until($node,
			"SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = 'Locked'", 30),
		'row lock: once the lock is gone, the locked order is written back');
	is( sql("SELECT count(*) FROM shipsync.outbox o JOIN crm.orders c ON o.order_key = c.id::text"
			  . " WHERE o.binding_id = 1 AND c.customer = 'Locked'"
			  . " AND (o.state <> 'done' OR o.error_class IS NOT NULL)"),
		'0', 'row lock: its intent is done, its error gone');
	is(sim_get($sim, '/_sim/stats')->{requests} - $before, 11,
		'row lock: the locked order was not sent again');
}

###########################################################################
# 10. The same, met by the tracking poller: a polled status of an order
# whose row the user's open transaction holds.  The dispatcher applies what
# it polls, and waited for the row with no limit: nothing was claimed or
# sent meanwhile.  Now that answer alone waits for the next round.
###########################################################################
{
	my $tsim = start_sim(seed => 10);
	sql(qq{CREATE TABLE crm.polled (id bigint PRIMARY KEY, customer text, waybill_no text, ship_status text);
		SELECT shipsync.create_provider('polled', 'generic', '$tsim->{url}', '{"poll_interval_s": 1}');
		SELECT shipsync.attach('crm.polled', 'polled',
			writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}');
		INSERT INTO crm.polled VALUES (700001, 'Polled', NULL, NULL);});
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.polled", 20),
		'poll: the polled order is shipped');
	# no pushes: its statuses come by the poller alone
	sim_post($tsim, '/_sim/tracking/config',
		{ url => 'http://127.0.0.1:9/none', dialect => 'generic', secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
		  seed => 10, drop => 1.0 });
	my $holder = $node->background_psql('postgres');
	$holder->query_safe("BEGIN; SELECT 1 FROM crm.polled FOR UPDATE");
	sim_post($tsim, '/_sim/tracking/advance', { steps => 9 });
	ok( wait_until($node,
			"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
			  . " AND wait_event_type = 'Lock'", 20),
		'poll: the dispatcher meets the held row');
	sql("INSERT INTO crm.more VALUES (800100, 'Polled meanwhile')");
	ok( wait_until($node,
			"SELECT waybill_no IS NOT NULL FROM crm.more WHERE id = 800100", 20),
		'poll: an order of another table is sent and written back meanwhile');
	$holder->query_safe('COMMIT');
	$holder->quit;
	ok( wait_until($node,
			"SELECT ship_status IS DISTINCT FROM 'pre_transit' FROM crm.polled", 30),
		'poll: once the lock is gone, the polled status is written back');
	sql("SELECT shipsync.pause('polled')");
	stop_sim($tsim);
}

###########################################################################
# 11. A table of orders to send held by a migration in an open transaction
# (ALTER TABLE; VACUUM FULL and LOCK TABLE hold it as much): the dispatcher
# waited for it to render them, and sent nothing of any table meanwhile.
# Now those orders wait, no attempt counted, and the others go.
###########################################################################
{
	sql(q{SELECT shipsync.pause('sim');
		INSERT INTO crm.more VALUES (800200, 'Migrated');});
	my $holder = $node->background_psql('postgres');
	$holder->query_safe("BEGIN; ALTER TABLE crm.more ADD COLUMN note text DEFAULT 'x'");
	sql(q{SELECT shipsync.resume('sim');
		INSERT INTO crm.orders (customer) VALUES ('Beside the migration');});
	ok( wait_until($node,
			"SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = 'Beside the migration'", 20),
		'table lock: an order of another table is sent and written back meanwhile');
	is( sql("SELECT state || ' ' || attempts || ' ' || error_class FROM shipsync.outbox"
			  . " WHERE order_key = '800200' AND op = 'create'"),
		'pending 0 table_locked', 'table lock: the order of the held table waits, no attempt counted');
	$holder->query_safe('COMMIT');
	$holder->quit;
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.more WHERE id = 800200", 30),
		'table lock: once the table is let go, its order is sent and written back');

	# an answer that comes while its table is held: the applier waited for
	# the table before the write-back, every other result behind it
	sim_post($sim, '/_sim/faults', { rules => [ { fault => 'slow', ms => 20000, held => JSON::PP::true } ] });
	sql("INSERT INTO crm.more VALUES (800300, 'Answered meanwhile')");
	ok(wait_until($node, "SELECT state = 'in_flight' FROM shipsync.outbox WHERE order_key = '800300'", 20),
		'table lock: an order of the table is on the wire');
	$holder = $node->background_psql('postgres');
	$holder->query_safe("BEGIN; ALTER TABLE crm.more ADD COLUMN note2 text");
	sim_post($sim, '/_sim/release');
	sim_post($sim, '/_sim/faults', { rules => [] });
	sql("INSERT INTO crm.orders (customer) VALUES ('Beside the migration again')");
	ok( wait_until($node,
			"SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = 'Beside the migration again'", 20),
		'table lock: its answer waits, and an order of another table is written back meanwhile');
	$holder->query_safe('COMMIT');
	$holder->quit;
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.more WHERE id = 800300", 30),
		'table lock: once the table is let go, the answer is written back');
	sql("SELECT shipsync.detach('crm.more')");
}

###########################################################################
# 7. No worker slot for an applier (three: the logical replication
# launcher, ours, and the dispatcher)
###########################################################################
$node->append_conf('postgresql.conf', "max_worker_processes = 3\n");
$node->restart;
$off = 0;
ok(deliver(100, 'NoSlot'), 'no slot for an applier: orders are delivered');
ok($node->log_contains(qr/no background worker slot for an applier; the dispatcher applies results itself/),
	'the log says why there is no applier');
is(pid_of('applier'), '', 'and there is none');
cancel_while_applying('Cancel dispatcher', 'dispatcher');

is( sql("SELECT count(*) FROM shipsync.outbox WHERE state NOT IN ('done', 'dead')"),
	'0', 'every intent is done (or dead, refused)');
is(sim_get($sim, '/_sim/stats')->{duplicate_orders}, 0, 'no order shipped twice');
$node->stop;
done_testing();
