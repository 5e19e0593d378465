# Hostile answers fail their own intent, never the dispatcher.
#
# On 0.1, a success whose tracking_number was 10 KB long made the shipment
# upsert fail ("index row requires 10256 bytes") in the batch and again in
# the slow path: the dispatcher exited, was restarted, resent every intent
# in flight, and died again; max_attempts was exceeded and other results of
# the batch were lost.  A \u0000 in a tracking number reached the order row
# truncated.  Here, with the carrier simulator's hostile answers:
#   1. field limits, NUL, broken UTF-8, numbers out of numeric's range:
#      bad_response, dead after one attempt, a clear last_error, nothing
#      written back, and the rest of the batch (of another provider too)
#      delivered by the same dispatcher;
#   2. an unreadable body stays retryable;
#   3. an apply that fails even without its write-back: that intent dead
#      (apply_failed), the others applied, the dispatcher alive;
#   4. max_attempts counts the attempt lost in a restart: not sent again;
#   5. an ERROR outside the apply is reported, and the same dispatcher
#      goes on;
#   6. a result whose apply kills the applier (or the dispatcher) twice
#      in a row is quarantined (poison), not sent a third time;
#   7. a result recorded as being applied when its dispatcher died, but
#      applied already, names no suspect: a new intent that gets its id
#      after TRUNCATE ... RESTART IDENTITY is not quarantined at its first
#      death.
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
my $node = shipsync_node('hostile', 'restart_after_crash = on');
setup_orders($node, $sim,
	'{"timeout_ms": 5000, "max_attempts": 2, "backoff_base_ms": 50, "backoff_max_ms": 200}');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# a second provider on the same carrier, with a table of its own
sql(q{SELECT shipsync.create_provider('other', 'generic', '} . $sim->{url}
	  . q{', '{"timeout_ms": 5000, "backoff_base_ms": 50, "backoff_max_ms": 200}');
	CREATE TABLE crm.other_orders (LIKE crm.orders INCLUDING ALL);
	SELECT shipsync.attach('crm.other_orders', 'other', writeback => '{"tracking_number": "waybill_no"}');});

sub dispatcher_pid
{
	return sql(q{SELECT pid FROM pg_stat_activity
		WHERE backend_type = 'pg_shipsync dispatcher' AND datname = 'postgres'});
}

sub next_id { return sql("SELECT nextval('crm.orders_id_seq')"); }

# How many requests hit each rule
sub fired { return sim_get($sim, '/_sim/faults')->{fired}; }

# The next order's answer carries tracking number $text, and its
# write-back hangs (600 s) while SQL condition $while holds: returns the
# order's id, not yet inserted
sub hang_next_order
{
	my ($text, $while) = @_;
	sql(qq{CREATE OR REPLACE FUNCTION crm.hang() RETURNS trigger LANGUAGE plpgsql AS \$\$
		BEGIN
			IF NEW.waybill_no = '$text' AND ($while) THEN PERFORM pg_sleep(600); END IF;
			RETURN NEW;
		END \$\$;
		CREATE TRIGGER hang BEFORE UPDATE ON crm.orders FOR EACH ROW EXECUTE FUNCTION crm.hang();});
	my $id = next_id();
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'hostile', field => 'tracking_number', kind => 'text',
			text => $text, match_order_ref => "^$id\$" } ] });
	return $id;
}

# One transaction: the orders of $values (SQL rows of id, customer,
# address) and $n good ones of each provider, named "$tag N"
sub commit_with_good
{
	my ($values, $tag, $n) = @_;
	sql(qq{BEGIN;
		INSERT INTO crm.orders (id, customer, address) VALUES $values;
		INSERT INTO crm.orders (customer, address) SELECT '$tag ' || g, g || ' Main St' FROM generate_series(1, $n) g;
		INSERT INTO crm.other_orders (customer, address) SELECT '$tag ' || g, g || ' Side St' FROM generate_series(1, $n) g;
		COMMIT;});
}

# Every intent is done, dead or invalid, none waits
sub all_settled
{
	return wait_until($node,
		"SELECT NOT EXISTS (SELECT 1 FROM shipsync.outbox WHERE state IN ('pending', 'retrying', 'in_flight'))"
		  . " AND NOT EXISTS (SELECT 1 FROM shipsync.inbox)", 60);
}

###########################################################################
# 1. Hostile fields: one intent each dead, the rest of the batch delivered
###########################################################################
my @cases = (
	[ 'a 10 KB tracking number', { field => 'tracking_number', kind => 'long', bytes => 10240 },
		qr/"tracking_number" is 10240 bytes long, more than the 128 allowed/ ],
	[ 'a NUL in the tracking number', { field => 'tracking_number', kind => 'nul' },
		qr/"tracking_number" holds a NUL character/ ],
	[ 'broken UTF-8 in the label URL', { field => 'label_url', kind => 'bad_utf8' },
		qr/not valid UTF-8/ ],
	[ 'a fee amount beyond numeric', { field => 'fees', kind => 'huge_number' },
		qr/fee 0 has a non-numeric amount/ ],
	[ 'a number beyond numeric', { field => 'status', kind => 'huge_number' },
		qr/"status" holds a number out of range/ ],
	[ 'a 3,000-byte label URL', { field => 'label_url', kind => 'long', bytes => 3000 },
		qr/"label_url" is 3000 bytes long, more than the 2048 allowed/ ],
	[ 'a 200-byte shipment id', { field => 'id', kind => 'long', bytes => 200 },
		qr/"id" is 200 bytes long/ ],);
my @rules;
my %id_of;
for my $c (@cases)
{
	my $id = next_id();
	$id_of{ $c->[0] } = $id;
	push @rules, { fault => 'hostile', %{ $c->[1] }, match_order_ref => "^$id\$" };
}
# one unreadable body: retried, not refused
my $cut = next_id();
push @rules, { fault => 'malformed', match_order_ref => "^$cut\$", first_attempts => 1 };
sim_post($sim, '/_sim/faults', { rules => \@rules });

my $pid = dispatcher_pid();
like($pid, qr/^\d+$/, 'a dispatcher runs');

# the hostile orders, 40 good ones of both providers, committed together
my $values = join(', ', map { "($_, 'Hostile $_', '1 Bad Road')" } (values %id_of), $cut);
commit_with_good($values, 'Good', 20);
ok(all_settled(), 'every intent settled');
is(dispatcher_pid(), $pid, 'the same dispatcher did it all: it never died');
ok(!$node->log_contains(qr/dispatcher.* exited with exit code|index row requires/),
	'no dispatcher exit, no failed shipment upsert in the log');

my $fired = fired();
for my $i (0 .. $#cases)
{
	my ($name, undef, $re) = @{ $cases[$i] };
	my $id = $id_of{$name};
	my $row = sql(qq{SELECT state || '|' || attempts || '|' || error_class || '|' || last_error
		FROM shipsync.outbox WHERE order_key = '$id'});
	my ($state, $attempts, $class, $err) = split /\|/, $row, 4;
	is("$state $attempts $class", 'dead 1 bad_response',
		"$name: dead after one attempt, as bad_response");
	like($err, $re, "$name: last_error says why");
	is($fired->[$i], 1, "$name: sent once");
	is( sql(qq{SELECT count(*) FROM shipsync.exception_ticket t JOIN shipsync.outbox o ON o.id = t.outbox_id
		WHERE o.order_key = '$id' AND t.kind = 'dead_intent'}),
		1, "$name: one ticket");
	is( sql("SELECT coalesce(waybill_no, '-') || coalesce(label, '-') FROM crm.orders WHERE id = $id"),
		'--', "$name: nothing written back onto the order");
}
is(sql("SELECT count(*) FROM shipsync.shipment WHERE length(tracking_number) > 128"),
	'0', 'no shipment holds an over-long tracking number');
is( sql(qq{SELECT count(*) FROM shipsync.delivery_log
		WHERE error LIKE '%' || chr(65533) || '%' OR octet_length(error) > 1100}),
	'0', 'delivery_log errors are short');

is(sql("SELECT count(*) FROM crm.orders WHERE customer LIKE 'Good %' AND waybill_no ~ '^SIM'"),
	'20', 'the good orders of the batch were delivered');
is(sql("SELECT count(*) FROM crm.other_orders WHERE customer LIKE 'Good %' AND waybill_no ~ '^SIM'"),
	'20', 'and so were the other provider\'s');
is( sql(qq{SELECT state || ' ' || attempts FROM shipsync.outbox WHERE order_key = '$cut'}),
	'done 2', 'an unreadable body is retried, and the retry delivers');
is( sql(qq{SELECT l.error_class || ' ' || l.outcome FROM shipsync.delivery_log l
		JOIN shipsync.outbox o ON o.id = l.outbox_id WHERE o.order_key = '$cut' AND l.attempt = 1}),
	'bad_response retry', 'its first attempt is logged as a retried bad_response');

###########################################################################
# 2. An apply that fails even without its write-back
###########################################################################
{
	sim_post($sim, '/_sim/faults', { rules => [] });
	my $evil = next_id();
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'hostile', field => 'tracking_number', kind => 'text',
			text => 'EVIL-1', match_order_ref => "^$evil\$" } ] });
	# something past the checks that the shipment table refuses
	sql(q{ALTER TABLE shipsync.shipment ADD CONSTRAINT test_no_evil
		CHECK (tracking_number IS DISTINCT FROM 'EVIL-1')});
	commit_with_good("($evil, 'Evil', '6 Six St')", 'Batch', 10);
	ok(all_settled(), 'apply failure: every intent settled');
	is( sql(qq{SELECT state || ' ' || error_class FROM shipsync.outbox WHERE order_key = '$evil'}),
		'dead apply_failed', 'apply failure: that intent is dead, as apply_failed');
	like(sql(qq{SELECT last_error FROM shipsync.outbox WHERE order_key = '$evil'}),
		qr/test_no_evil/, 'apply failure: last_error names the constraint');
	is( sql(qq{SELECT count(*) FROM shipsync.exception_ticket WHERE order_key = '$evil' AND kind = 'apply_failed'}),
		1, 'apply failure: one ticket');
	is( sql(qq{SELECT count(*) FROM crm.orders WHERE customer LIKE 'Batch %' AND waybill_no IS NOT NULL})
		  . ' '
		  . sql(qq{SELECT count(*) FROM crm.other_orders WHERE customer LIKE 'Batch %' AND waybill_no IS NOT NULL}),
		'10 10', 'apply failure: the rest of the batch, of both providers, is applied');
	is(dispatcher_pid(), $pid, 'apply failure: the dispatcher lives on');
	sql('ALTER TABLE shipsync.shipment DROP CONSTRAINT test_no_evil');
}

###########################################################################
# 3. max_attempts counts the attempt lost in a restart
###########################################################################
{
	sql(q{SELECT shipsync.create_provider('once', 'generic', '} . $sim->{url}
		  . q{', '{"timeout_ms": 10000, "max_attempts": 1}');
		CREATE TABLE crm.once_orders (LIKE crm.orders INCLUDING ALL);
		SELECT shipsync.attach('crm.once_orders', 'once', writeback => '{"tracking_number": "waybill_no"}');});
	my $id = next_id();
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'slow', ms => 8000, match_order_ref => "^$id\$" } ] });
	sql("INSERT INTO crm.once_orders (id, customer) VALUES ($id, 'Once')");
	ok(wait_until($node, "SELECT state = 'in_flight' FROM shipsync.outbox WHERE order_key = '$id'", 30),
		'restart: the intent is in flight');
	# in_flight is committed before the request goes out: wait until the
	# carrier holds it
	for (1 .. 300) { last if fired()->[0] >= 1; usleep(100_000); }
	my $old = dispatcher_pid();
	sql("SELECT pg_terminate_backend($old)");
	ok( wait_until($node,
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
			  . " AND datname = 'postgres' AND pid <> $old", 30),
		'restart: a new dispatcher runs');
	ok(wait_until($node, "SELECT state = 'dead' FROM shipsync.outbox WHERE order_key = '$id'", 30),
		'restart: the intent at max_attempts 1 ends dead');
	is( sql(qq{SELECT attempts || ' ' || error_class FROM shipsync.outbox WHERE order_key = '$id'}),
		'1 interrupted', 'restart: after its one attempt, as interrupted');
	like(sql(qq{SELECT last_error FROM shipsync.outbox WHERE order_key = '$id'}),
		qr/^gave up after 1 attempts: the dispatcher stopped/, 'restart: last_error says why');
	sleep(9);    # the slow answer of the first attempt is over
	is(fired()->[0], 1, 'restart: the carrier got it once, never again');
	$pid = dispatcher_pid();
}

###########################################################################
# 4. An error outside the apply does not end the worker either
###########################################################################
{
	my $off = -s $node->logfile;
	# the configuration cannot be read for a moment
	sql(q{ALTER TABLE shipsync.binding RENAME TO binding_away; SELECT pg_reload_conf();});
	ok($node->wait_for_log(qr/the dispatcher goes on after an error/, $off),
		'error: the dispatcher reports the error and goes on');
	sql(q{ALTER TABLE shipsync.binding_away RENAME TO binding});
	sql(q{INSERT INTO crm.orders (customer) VALUES ('After the error')});
	ok( wait_until($node,
			"SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = 'After the error'", 60),
		'error: then delivers again');
	is(dispatcher_pid(), $pid, 'error: the same dispatcher');
}

###########################################################################
# 5. Poison: a result whose apply kills the dispatcher, twice in a row
###########################################################################
{
	# a write-back that hangs on one tracking number: the dispatcher is
	# killed while it applies that result
	my $id = hang_next_order('POISON-1', 'true');
	sql("INSERT INTO crm.orders (id, customer) VALUES ($id, 'Poison')");

	# The applier applies the dispatcher's results (applier.c).  First
	# death: kill -9 (the server restarts every process).  Second: it is
	# terminated (a FATAL exit, no restart of the server): the dispatcher,
	# whose result it was applying, exits too, and the next one counts
	# the death.
	for my $death (1, 2)
	{
		my $hung = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync applier'"
		  . " AND wait_event = 'PgSleep'";
		ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ($hung) h"),
			"poison: the applier hangs applying the result ($death)");
		my $victim = $node->safe_psql('postgres', $hung);
		my $dispatcher = dispatcher_pid();
		my $off = -s $node->logfile;
		if ($death == 1)
		{
			kill 'KILL', $victim;
		}
		else
		{
			sql("SELECT pg_terminate_backend($victim)");
			ok($node->wait_for_log(qr/its applier exited while applying 1 results/, $off),
				'poison: the dispatcher exits with the applier that was applying its result');
		}
		ok( $node->poll_query_until('postgres',
				"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
				  . " AND pid <> $dispatcher"),
			"poison: then a new dispatcher runs ($death)");
	}
	ok( $node->poll_query_until('postgres',
			"SELECT state = 'dead' FROM shipsync.outbox WHERE order_key = '$id'"),
		'poison: the intent is quarantined');
	is( sql(qq{SELECT error_class FROM shipsync.outbox WHERE order_key = '$id'}),
		'poison', 'poison: with error class poison');
	is( sql(qq{SELECT count(*) FROM shipsync.exception_ticket WHERE order_key = '$id' AND kind = 'poison'}),
		1, 'poison: one ticket');
	ok($node->log_contains(qr/intent \d+ quarantined: the dispatcher died twice in a row/),
		'poison: the log says so');
	is(fired()->[0], 2, 'poison: sent twice, not a third time');

	# the dispatcher delivers what comes next
	sql("DROP TRIGGER hang ON crm.orders");
	sql("INSERT INTO crm.orders (customer) VALUES ('After')");
	ok( wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = 'After'", 60),
		'poison: the next order is delivered');
}

###########################################################################
# 6. A result already recorded when its dispatcher died names no suspect
###########################################################################
# The previous dispatcher died after the apply of intent 1 had committed,
# before clearing its record (the record is written here, the server
# stopped).  Intent 1 is done, so it is no suspect: kept as one, its id
# outlived it, and after TRUNCATE ... RESTART IDENTITY the new intent 1 was
# applied as a suspect and quarantined at its first death (TAP 002 hit it:
# a kill -9 while intent 69 of the second run was being applied).
{
	sql(q{TRUNCATE shipsync.inbox, shipsync.outbox, shipsync.shipment, shipsync.delivery_log,
		shipsync.exception_ticket RESTART IDENTITY});
	my $dboid = sql(q{SELECT oid FROM pg_database WHERE datname = 'postgres'});
	$node->stop('fast');
	my $record = $node->data_dir . "/pg_shipsync/applying.$dboid";
	open(my $fh, '>:raw', $record) or die "$record: $!";
	# PoisonHeader {magic, n}, PoisonEntry {id, deaths, pad}
	print $fh pack('VV', 0x53485053, 1) . pack('q<lL', 1, 0, 0);
	close $fh;
	my $off = -s $node->logfile;
	$node->start;
	ok($node->wait_for_log(qr/died while applying 1 results, 0 of them still in flight/, $off),
		'recorded: the record is read, its intent no longer in flight');

	# the next intent gets id 1; its apply hangs while this dispatcher
	# lives (the crash that follows would undo any other mark), and the
	# applier is killed
	my $dispatcher = dispatcher_pid();
	my $id = hang_next_order('POISON-2',
		"EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $dispatcher)");
	sql("INSERT INTO crm.orders (id, customer) VALUES ($id, 'Reused id')");
	# the dispatcher moves it from the inbox after the insert commits
	ok(wait_until($node, "SELECT EXISTS (SELECT 1 FROM shipsync.outbox WHERE order_key = '$id')"),
		'recorded: the new intent reaches the outbox');
	is(sql("SELECT id FROM shipsync.outbox WHERE order_key = '$id'"), '1', 'recorded: the new intent has id 1');
	my $hung = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync applier'"
	  . " AND wait_event = 'PgSleep'";
	ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ($hung) h"),
		'recorded: the applier hangs applying intent 1');
	$off = -s $node->logfile;
	kill 'KILL', $node->safe_psql('postgres', $hung);
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
			  . " AND pid <> $dispatcher"),
		'recorded: a new dispatcher runs');
	ok($node->wait_for_log(qr/died while applying 1 results, 1 of them still in flight/, $off),
		'recorded: it counts one death of intent 1');
	# an end, not just out of flight: the new dispatcher makes it retrying
	# for a moment before it sends it again
	ok(wait_until($node, "SELECT state IN ('done', 'dead', 'invalid') FROM shipsync.outbox WHERE id = 1", 60),
		'recorded: intent 1 settles');
	sql("DROP TRIGGER hang ON crm.orders");
	is(sql("SELECT state || '|' || coalesce(error_class, '') FROM shipsync.outbox WHERE id = 1"),
		'done|', 'recorded: one death is not two: intent 1 is delivered, not quarantined');
	is(sql("SELECT count(*) FROM shipsync.exception_ticket WHERE kind = 'poison'"), 0,
		'recorded: no poison ticket');
}

is(sim_get($sim, '/_sim/stats')->{duplicate_orders}, 0, 'no order shipped twice');
$node->stop;
done_testing();
