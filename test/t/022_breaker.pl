# A circuit breaker per provider, and holds that survive a restart.
#
#   1. breaker_failures consecutive 5xx open the breaker: nothing is sent
#      but one probe per cooldown (doubling while probes fail), no intent
#      dies, provider_health says open; the carrier back, the probe closes
#      it and everything is delivered; opening and closing are logged once
#      each;
#   2. a new dispatcher keeps an open breaker (shared memory): no burst of
#      requests after a restart;
#   3. a Retry-After hold survives a restart of the dispatcher;
#   4. so do the rate-limit tokens: a restart does not refill the bucket;
#   5. provider_health counts requests, successes and failures by class,
#      and has latency percentiles and the last error;
#   6. an open breaker with no intent left to probe with lets the tracking
#      poller through after its cooldown, and an answered poll closes it;
#   7. a wait the carrier asks for is capped at a day, whatever
#      X-RateLimit-Reset says (a Unix time years away, one in milliseconds,
#      a number past any date): the hold and the retry come within the
#      day, and the outbox stays readable and dumpable; a pause and a
#      resume of the provider end its hold;
#   8. an answer with a header line longer than libcurl takes is the
#      carrier's fault, not this server's: a transport failure the
#      breaker counts, and no "out of resources" in the log;
#   9. a tracking poll answered 429 with Retry-After holds the provider;
#  10. so does a reconciliation pull answered 429 with X-RateLimit-Reset
#      alone, as deliveries and polls are;
#  11. and a fee pull answered 429 with Retry-After;
#  12. a shipment list that gives back a next_cursor it already gave
#      fails the pull instead of asking for the same pages for ever;
#  13. answers that came back while the dispatcher waited for a lock on
#      its own tables (a DBA's LOCK TABLE, VACUUM FULL, CLUSTER) are not
#      the carrier's timeouts: no breaker opened, no timeout counted, the
#      wait logged, every order delivered once.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time sleep);
use ShipsyncTest;

my $sim = start_sim();
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node('breaker');
setup_orders($node, $sim,
	'{"timeout_ms": 5000, "max_attempts": 1000, "backoff_base_ms": 20, "backoff_max_ms": 50,'
	  . ' "breaker_failures": 5, "breaker_cooldown_ms": 1500}');

sub sql { return $node->safe_psql('postgres', $_[0]); }
sub requests { return sim_get($sim, '/_sim/stats')->{requests}; }

sub dispatcher_pid
{
	return sql(q{SELECT pid FROM pg_stat_activity
		WHERE backend_type = 'pg_shipsync dispatcher' AND datname = 'postgres'});
}

# Terminate the dispatcher and wait for the launcher's next one
sub restart_dispatcher
{
	my $old = dispatcher_pid();
	sql("SELECT pg_terminate_backend($old)");
	$node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"
		  . " AND datname = 'postgres' AND pid <> $old")
	  or die 'no new dispatcher';
}

sub health
{
	my ($cols) = @_;
	return sql("SELECT $cols FROM shipsync.provider_health WHERE provider = 'sim'");
}

###########################################################################
# 1. The breaker opens, probes, and closes
###########################################################################
my $logoff = -s $node->logfile;
sim_post($sim, '/_sim/faults', { rules => [ { fault => 'status', status => 500 } ] });
sql(q{INSERT INTO crm.orders (customer) SELECT 'Down ' || g FROM generate_series(1, 20) g});

ok( $node->poll_query_until('postgres',
		"SELECT breaker = 'open' FROM shipsync.provider_health WHERE provider = 'sim'"),
	'open: five 500s in a row open the breaker');
ok($node->wait_for_log(
		qr/circuit breaker of provider "sim" opened after 5 consecutive failures \(last: HTTP 500/, $logoff),
	'open: the log says so');
like(health('breaker_since'), qr/^\d{4}-/, 'open: provider_health says since when');

# while open: one probe per cooldown (1.5 s, then 3 s: at most 3 in 4.5 s)
my $r0 = requests();
my $t0 = time();
sleep(4);
my $during = requests() - $r0;
my $elapsed = time() - $t0;
# requests in flight at the opening may still land (20 at most); without
# a breaker, 20 intents retried every 50 ms would make a thousand
cmp_ok($during, '<=', 3 + 20,
	sprintf('open: %d requests in %.1f s (probes only, not one per intent)', $during, $elapsed));
is(sql("SELECT count(*) FROM shipsync.outbox WHERE state = 'dead'"), '0', 'open: no intent is dead');
cmp_ok(sql("SELECT max(attempts) FROM shipsync.outbox"), '<', 15,
	'open: intents wait, their attempts do not run up');
my $opened = () = slurp_file($node->logfile, $logoff) =~ /circuit breaker of provider "sim" opened/g;
is($opened, 1, 'open: logged once, not once per failed probe');

# the carrier comes back: the next probe closes it
sim_post($sim, '/_sim/faults', { rules => [] });
ok( $node->poll_query_until('postgres',
		"SELECT breaker = 'closed' FROM shipsync.provider_health WHERE provider = 'sim'"),
	'close: a probe that succeeds closes the breaker');
ok(wait_until($node, "SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL", 60),
	'close: every order is delivered');
my $log = slurp_file($node->logfile, $logoff);
my $closed = () = $log =~ /circuit breaker of provider "sim" closed: it answered again/g;
is($closed, 1, 'close: logged once');

###########################################################################
# 5. What provider_health shows
###########################################################################
{
	my ($req, $ok, $fail, $p50, $p99, $last_ok, $cls, $err, $inflight) = split /\|/,
	  health(q{requests_5m, successes_5m, failures_5m->>'http_5xx', latency_p50_ms > 0,
		latency_p99_ms >= latency_p50_ms, last_success_at IS NOT NULL, last_error_class,
		last_error, in_flight});
	cmp_ok($ok, '==', 20, 'health: 20 successes in the last 5 minutes');
	cmp_ok($fail, '>=', 5, "health: $fail failures counted as http_5xx");
	is($req, $ok + $fail, 'health: requests = successes + failures');
	is("$p50 $p99 $last_ok", 't t t', 'health: latency percentiles and the last success');
	is($cls, 'http_5xx', 'health: the last error class');
	like($err, qr/^HTTP 500/, 'health: the last error');
	is($inflight, '0', 'health: nothing in flight');
	is(health('requests_1h >= requests_5m'), 't', 'health: the hour counts the 5 minutes');
}

###########################################################################
# 2. A restarted dispatcher keeps the breaker open
###########################################################################
{
	# _wake(true): the dispatcher reads the new cooldown before these orders
	sql(q{BEGIN; UPDATE shipsync.provider SET options = options || '{"breaker_cooldown_ms": 8000}'
		WHERE name = 'sim'; SELECT shipsync._wake(true); COMMIT;});
	sim_post($sim, '/_sim/faults', { rules => [ { fault => 'status', status => 503 } ] });
	sql(q{INSERT INTO crm.orders (customer) SELECT 'Again ' || g FROM generate_series(1, 20) g});
	ok( $node->poll_query_until('postgres',
			"SELECT breaker = 'open' FROM shipsync.provider_health WHERE provider = 'sim'"),
		'restart: the breaker is open again');
	restart_dispatcher();
	my $r1 = requests();
	# look 5 s after it opened by the server's clock, however long the
	# restart took: 3 s before the cooldown ends and a probe may go
	sleep(health(q{greatest(0, extract(epoch FROM breaker_since + interval '5 s' - clock_timestamp()))}));
	is(health('breaker'), 'open', 'restart: the new dispatcher keeps it open');
	is((requests() - $r1) . '|' . health(q{clock_timestamp() < breaker_since + interval '8 s'}),
		'0|t', 'restart: and sends nothing during the cooldown (read before its end)');

	sim_post($sim, '/_sim/faults', { rules => [] });
	sql(q{UPDATE shipsync.provider SET options = options || '{"breaker_cooldown_ms": 1000}'
		WHERE name = 'sim'});
	# the cooldown in force is the one the breaker opened with: wait it out
	ok(wait_until($node, "SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL", 90),
		'restart: delivered once the carrier is back');
}

###########################################################################
# 3. A Retry-After hold survives a restart
###########################################################################
{
	my $id = sql("SELECT nextval('crm.orders_id_seq')");
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'status', status => 429, retry_after => '6',
			match_order_ref => "^$id\$", first_attempts => 1 } ] });
	sql("INSERT INTO crm.orders (id, customer) VALUES ($id, 'Held')");
	ok( $node->poll_query_until('postgres',
			"SELECT hold_until > now() + interval '3 s' FROM shipsync.provider_health WHERE provider = 'sim'"),
		'hold: a 429 with Retry-After: 6 holds the provider');
	restart_dispatcher();
	sql(q{INSERT INTO crm.orders (customer) VALUES ('During the hold')});
	ok(wait_until($node, "SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL", 60),
		'hold: delivered after it');
	# by the simulator's clock: the hold counts from the 429's answer, which
	# comes after the held request arrived
	my $seen = sim_get($sim, '/_sim/attempts');
	my $held = $seen->{ sql("SELECT idempotency_key FROM shipsync.outbox WHERE order_key = '$id'") }{arrived};
	my $during = $seen->{ sql(q{SELECT idempotency_key FROM shipsync.outbox WHERE order_key =
		(SELECT id::text FROM crm.orders WHERE customer = 'During the hold')}) }{arrived};
	my $next = $held->[1] < $during->[0] ? $held->[1] : $during->[0];
	cmp_ok($next - $held->[0], '>=', 5.999, 'hold: the new dispatcher sent nothing before the hold ended');
}

###########################################################################
# 4. The rate-limit bucket survives a restart
###########################################################################
{
	sql(q{BEGIN; UPDATE shipsync.provider SET rate_limit_per_s = 0.2 WHERE name = 'sim';
		SELECT shipsync._wake(true); COMMIT;});
	sql(q{INSERT INTO crm.orders (customer) VALUES ('Rate 1')});
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = 'Rate 1'", 30),
		'tokens: the first order goes at once');
	restart_dispatcher();
	sql(q{INSERT INTO crm.orders (customer) VALUES ('Rate 2')});
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = 'Rate 2'", 30),
		'tokens: the second one too, in time');
	# by the simulator's clock: delivery_log.at is stamped by the applier,
	# later than the send by a varying delay
	my $seen = sim_get($sim, '/_sim/attempts');
	my ($k1, $k2) = map { sql(qq{SELECT o.idempotency_key FROM shipsync.outbox o
		JOIN crm.orders c ON o.order_key = c.id::text AND o.op = 'create' AND c.customer = '$_'}) } 'Rate 1', 'Rate 2';
	cmp_ok($seen->{$k2}{arrived}[0] - $seen->{$k1}{arrived}[0],
		'>=', 4, 'tokens: 1 every 5 s, restart or not (the bucket was not refilled)');
}

###########################################################################
# 6. No intent left to probe with: a tracking poll answered closes it
###########################################################################
{
	sql(q{UPDATE shipsync.provider SET rate_limit_per_s = 0 WHERE name = 'sim'});
	sql(q{SELECT shipsync.create_provider('polled', 'generic', '} . $sim->{url}
		  . q{', '{"timeout_ms": 5000, "max_attempts": 1, "poll_interval_s": 1,
			"breaker_failures": 2, "breaker_cooldown_ms": 1000}');
		CREATE TABLE crm.polled_orders (LIKE crm.orders INCLUDING ALL);
		SELECT shipsync.attach('crm.polled_orders', 'polled', writeback => '{"tracking_number": "waybill_no"}');});
	sql(q{INSERT INTO crm.polled_orders (customer) VALUES ('Polled')});
	ok( wait_until($node,
			"SELECT waybill_no IS NOT NULL FROM crm.polled_orders WHERE customer = 'Polled'", 30),
		'polls: a shipment to poll');
	my @ids = map { sql("SELECT nextval('crm.orders_id_seq')") } 1 .. 2;
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'status', status => 500, match_order_ref => "^($ids[0]|$ids[1])\$" } ] });
	my $off = -s $node->logfile;
	sql("INSERT INTO crm.polled_orders (id, customer) VALUES ($ids[0], 'Fails'), ($ids[1], 'Fails')");
	# The breaker is open only until an answered poll closes it, which can
	# be at once (a poll in flight as it opens): its log line, not its
	# state, says that it opened.
	ok($node->wait_for_log(qr/circuit breaker of provider "polled" opened/, $off),
		'polls: two 500s open the breaker; both intents are dead, none is left to probe with');
	# (the breaker opens when the second answer is judged; the applier
	# writes that intent's state a moment later)
	ok( wait_until($node, "SELECT count(*) = 0 FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)"
			  . " WHERE p.name = 'polled' AND o.state <> 'done' AND o.state <> 'dead'", 30),
		'polls: no intent waits');
	ok( $node->poll_query_until('postgres',
			"SELECT breaker = 'closed' FROM shipsync.provider_health WHERE provider = 'polled'"),
		'polls: after the cooldown, an answered poll closes the breaker');
	ok($node->wait_for_log(qr/circuit breaker of provider "polled" closed/, $off),
		'polls: and the log says so');
}

###########################################################################
# 7. A carrier's wait is capped at a day
###########################################################################
{
	# one provider each, so that each hold is its own: a hold only grows
	my $now = int(time());
	my %reset = (
		years => $now + 10 * 365 * 86400,    # a Unix time ten years away
		huge => '10000000000000000',         # past any timestamp, as seconds or ms
		overflow => '9200000000000000',      # read as seconds, it overflowed
		ms => ($now + 3600) * 1000);         # an hour away, in milliseconds
	my (%id, @rules);
	for my $w (sort keys %reset)
	{
		sql(qq{SELECT shipsync.create_provider('wait_$w', 'generic', '$sim->{url}',
				'{"timeout_ms": 5000, "max_attempts": 3}');
			CREATE TABLE crm.wait_$w (LIKE crm.orders INCLUDING ALL);
			SELECT shipsync.attach('crm.wait_$w', 'wait_$w', writeback => '{"tracking_number": "waybill_no"}');});
		$id{$w} = sql("SELECT nextval('crm.orders_id_seq')");
		push @rules, { fault => 'status', status => 429, reset_header => "$reset{$w}",
			match_order_ref => "^$id{$w}\$", first_attempts => 1 };
	}
	sim_post($sim, '/_sim/faults', { rules => \@rules });
	sql(join('', map { "INSERT INTO crm.wait_$_ (id, customer) VALUES ($id{$_}, 'Wait $_');" } sort keys %id));
	my $keys = join(', ', map { "'$id{$_}'" } sort keys %id);
	ok( wait_until($node, "SELECT count(*) = 4 FROM shipsync.outbox WHERE order_key IN ($keys)"
			  . " AND state IN ('retrying', 'done', 'dead')", 30),
		'wait: each 429 is answered');
	for my $w (sort keys %id)
	{
		my $least = $w eq 'ms' ? '50 minutes' : '23 hours';
		is( sql(qq{SELECT state || '|' || (next_attempt_at > now() + interval '$least')
				|| '|' || (next_attempt_at <= now() + interval '1 day 1 minute')
				FROM shipsync.outbox WHERE order_key = '$id{$w}'}),
			'retrying|true|true', "wait ($w, X-RateLimit-Reset: $reset{$w}): retried after $least, within a day");
		is( sql(qq{SELECT (hold_until > now() + interval '$least')
				|| '|' || (hold_until <= now() + interval '1 day 1 minute')
				FROM shipsync.provider_health WHERE provider = 'wait_$w'}),
			'true|true', "wait ($w): the provider is held as long, no longer");
	}
	my ($rc, $out, $err) = $node->psql('postgres', 'SELECT * FROM shipsync.outbox');
	is("$rc $err", '0 ', 'wait: every row of the outbox can be read');
	my $dump = $node->basedir . '/wait.sql';
	$node->command_ok([ 'pg_dump', '-f', $dump, 'postgres' ], 'wait: the database can be dumped');

	# a DBA who wants to send before then: pause, resume, retry
	sql(q{SELECT shipsync.pause('wait_years')});
	ok( wait_until($node,
			"SELECT hold_until IS NULL FROM shipsync.provider_health WHERE provider = 'wait_years'", 30),
		'wait: a paused provider is held no longer');
	sql(qq{SELECT shipsync.resume('wait_years');
		SELECT shipsync.retry(id) FROM shipsync.outbox WHERE order_key = '$id{years}'});
	ok( wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.wait_years WHERE id = $id{years}", 30),
		'wait: resumed and retried, the order is delivered at once');
}

###########################################################################
# 8. A header line longer than libcurl takes
###########################################################################
{
	sql(qq{SELECT shipsync.create_provider('bighdr', 'generic', '$sim->{url}',
			'{"timeout_ms": 5000, "max_attempts": 1000, "backoff_base_ms": 20, "backoff_max_ms": 50,
			  "breaker_failures": 2, "breaker_cooldown_ms": 1000}');
		CREATE TABLE crm.bighdr (LIKE crm.orders INCLUDING ALL);
		SELECT shipsync.attach('crm.bighdr', 'bighdr', writeback => '{"tracking_number": "waybill_no"}');});
	my $id = sql("SELECT nextval('crm.orders_id_seq')");
	# 200 KB: libcurl 7.88 refuses a header line over 100 KB as out of memory
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'big_header', bytes => 200 * 1024, match_order_ref => "^$id\$" } ] });
	my $off = -s $node->logfile;
	sql("INSERT INTO crm.bighdr (id, customer) VALUES ($id, 'Big header')");
	# the breaker opens on the second failure, logged before a third goes
	ok(wait_until($node, "SELECT attempts >= 3 FROM shipsync.outbox WHERE order_key = '$id'", 30),
		'big header: tried again');
	like(sql("SELECT error_class || ': ' || last_error FROM shipsync.outbox WHERE order_key = '$id'"),
		qr/^transport: .*header line/, 'big header: a transport failure that says what was wrong');
	my $log = slurp_file($node->logfile, $off);
	unlike($log, qr/out of resources sending intent/, 'big header: the log does not blame this server');
	like($log, qr/circuit breaker of provider "bighdr" opened after 2 consecutive failures/,
		'big header: the breaker counts it');
	sim_post($sim, '/_sim/faults', { rules => [] });
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.bighdr WHERE id = $id", 30),
		'big header: delivered once the answer is whole');
}

###########################################################################
# 9. A tracking poll asked to wait holds the provider
###########################################################################
{
	# provider polled (section 6) polls its shipment every second
	my $sid = sql(q{SELECT s.provider_shipment_id FROM shipsync.shipment s
		JOIN crm.polled_orders o ON o.id::text = s.order_key WHERE o.customer = 'Polled'});
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'status', status => 429, retry_after => '120', method => 'GET',
					   path => "^/shipments/$sid/events\$", name => 'poll_429' } ] });
	ok( wait_until($node, "SELECT hold_until > now() + interval '100 s' FROM shipsync.provider_health"
			  . " WHERE provider = 'polled'", 30),
		'poll asked to wait: the provider is held as long as the carrier asked');
	my $fired = sub {
		my $f = sim_get($sim, '/_sim/faults');
		return $f->{fired}[0];
	};
	my $before = $fired->();
	sleep 4;    # four poll intervals
	is($fired->(), $before, 'poll asked to wait: no poll is sent meanwhile');
	sim_post($sim, '/_sim/faults', { rules => [] });
}

# A provider $name (options $options) of its own, with a table crm.$name,
# and one order shipped through it: its id
sub shipped_order
{
	my ($name, $options, $what) = @_;
	sql(qq{SELECT shipsync.create_provider('$name', 'generic', '$sim->{url}', '$options');
		CREATE TABLE crm.$name (LIKE crm.orders INCLUDING ALL);
		SELECT shipsync.attach('crm.$name', '$name', writeback => '{"tracking_number": "waybill_no"}');});
	my $id = sql("SELECT nextval('crm.orders_id_seq')");
	sql("INSERT INTO crm.$name (id, customer) VALUES ($id, 'Shipped')");
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.$name WHERE id = $id", 30), $what);
	return $id;
}

###########################################################################
# 10. A reconciliation pull asked to wait by X-RateLimit-Reset alone
###########################################################################
{
	shipped_order('recwait', '{"timeout_ms": 5000, "max_attempts": 1000}',
		'pull asked to wait: an order shipped to compare');
	my $reset = int(time()) + 120;
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'status', status => 429, reset_header => "$reset", method => 'GET',
					   path => '^/shipments$', name => 'list_429' } ] });
	my $run = sql(q{SELECT shipsync.reconcile('recwait')});
	ok( wait_until($node, "SELECT hold_until > now() + interval '100 s' FROM shipsync.provider_health"
			  . " WHERE provider = 'recwait'", 30),
		'pull asked to wait by X-RateLimit-Reset: the provider is held until then');
	is(sql("SELECT state FROM shipsync.reconcile_run WHERE run_id = $run"), 'pulling',
		'pull asked to wait: the run waits, it has not failed');
	sim_post($sim, '/_sim/faults', { rules => [] });
}

###########################################################################
# 11. A fee pull asked to wait holds the provider
###########################################################################
{
	my $key = 'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
	my $id = shipped_order('feewait', qq({"timeout_ms": 5000, "max_attempts": 1000,
			"fee_pull_after": "1 second", "webhook_secret": "whsec_$key"}),
		'fee pull asked to wait: an order shipped');
	my ($sid, $tn) = split(/\|/, sql(qq{SELECT provider_shipment_id || '|' || tracking_number
		FROM shipsync.shipment WHERE order_key = '$id'}));
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'status', status => 429, retry_after => '120', method => 'GET',
					   path => "^/shipments/$sid/fees\$", name => 'fees_429' } ] });
	# its delivery, as the carrier pushes it: the fee pull is due a second later
	my $ts = int(time());
	my $at = sql(q{SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')});
	my $body = qq({"events": [{"id": "fw-$id", "tracking_number": "$tn", "status": "delivered", "occurred_at": "$at"}]});
	sql(qq{SELECT shipsync.ingest_tracking('feewait', \$b\$$body\$b\$, jsonb_build_object(
		'webhook-id', 'fw-$id', 'webhook-timestamp', '$ts',
		'webhook-signature', 'v1,' || encode(shipsync._hmac_sha256(decode('$key', 'base64'),
			convert_to('fw-$id.$ts.' || \$b\$$body\$b\$, 'UTF8')), 'base64')))});
	ok( wait_until($node, "SELECT hold_until > now() + interval '100 s' FROM shipsync.provider_health"
			  . " WHERE provider = 'feewait'", 30),
		'fee pull asked to wait: the provider is held as long as the carrier asked')
	  or diag sql(q{SELECT pulls || ' ' || coalesce(last_result, '') FROM shipsync.fee_pull});
	sim_post($sim, '/_sim/faults', { rules => [] });
}

###########################################################################
# 12. A list whose next_cursor comes back: the pull fails, it does not loop
###########################################################################
{
	sql(qq{SELECT shipsync.create_provider('recloop', 'generic', '$sim->{url}',
			'{"timeout_ms": 5000, "max_attempts": 1000}');
		CREATE TABLE crm.recloop (LIKE crm.orders INCLUDING ALL);
		SELECT shipsync.attach('crm.recloop', 'recloop', writeback => '{"tracking_number": "waybill_no"}');});
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'status', status => 200, method => 'GET', path => '^/shipments$',
					   body => '{"shipments": [], "next_cursor": "c1"}', name => 'list_loop' } ] });
	my $run = sql(q{SELECT shipsync.reconcile('recloop')});
	ok(wait_until($node, "SELECT state IN ('done', 'failed') FROM shipsync.reconcile_run WHERE run_id = $run", 30),
		'repeated cursor: the run ends');
	is(sql("SELECT state || '|' || pages FROM shipsync.reconcile_run WHERE run_id = $run"), 'failed|2',
		'repeated cursor: the run failed after the page that repeated the cursor');
	like(sql("SELECT error FROM shipsync.reconcile_run WHERE run_id = $run"),
		qr/next_cursor "c1" it already gave/, 'repeated cursor: the error says why');
	like(sql("SELECT error FROM shipsync.reconcile_run WHERE run_id = $run"),
		qr/updated_since=\d{4}-\d\d-\d\dT\d\d%3A\d\d%3A\d\d\.\d{6}Z&/,
		'list: updated_since is RFC 3339 in UTC, with Z');
	sim_post($sim, '/_sim/faults', { rules => [] });
}

###########################################################################
# 13. A lock on the outbox while answers come back: not the carrier's fault
###########################################################################
{
	sql(qq{SELECT shipsync.create_provider('stall', 'generic', '$sim->{url}',
			'{"timeout_ms": 1000, "max_attempts": 1000, "backoff_base_ms": 20, "backoff_max_ms": 50,
			  "breaker_failures": 3, "breaker_cooldown_ms": 60000}');
		CREATE TABLE crm.stall (LIKE crm.orders INCLUDING ALL);
		SELECT shipsync.attach('crm.stall', 'stall', writeback => '{"tracking_number": "waybill_no"}');});
	my $log_at = -s $node->logfile;
	my $before = sim_get($sim, '/_sim/stats')->{shipments};
	sim_post($sim, '/_sim/faults', { rules => [ { fault => 'slow', ms => 20000, held => JSON::PP::true } ] });
	sql(q{INSERT INTO crm.stall (customer) SELECT 'stall ' || g FROM generate_series(1, 5) g});
	ok(wait_until($node, "SELECT count(*) = 5 FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)"
			  . " WHERE p.name = 'stall' AND o.state = 'in_flight'", 30),
		'stall: five requests on the wire');
	# a DBA's maintenance takes the outbox; the next capture sends the
	# dispatcher to it, where it waits
	my $dba = $node->background_psql('postgres');
	$dba->query_safe('BEGIN');
	$dba->query_safe('LOCK TABLE shipsync.outbox IN ACCESS EXCLUSIVE MODE');
	sql(q{INSERT INTO crm.stall (customer) VALUES ('stall 6')});
	ok(wait_until($node, q{SELECT wait_event_type = 'Lock' FROM pg_stat_activity
			WHERE backend_type = 'pg_shipsync dispatcher' AND datname = 'postgres'}, 30),
		'stall: the dispatcher waits for the lock');
	# the carrier answers at once; the answers wait in the socket buffers
	# beyond the provider's timeout of 1 s
	sim_post($sim, '/_sim/release');
	sim_post($sim, '/_sim/faults', { rules => [] });
	sleep(2);
	$dba->query_safe('COMMIT');
	$dba->quit;
	ok( wait_until($node, "SELECT count(*) = 6 FROM crm.stall WHERE waybill_no IS NOT NULL", 30),
		'stall: every order delivered once the lock is gone');
	is(sim_get($sim, '/_sim/stats')->{shipments} - $before, 6, 'stall: each shipped once');
	is( sql(q{SELECT count(*) FROM shipsync.delivery_log d JOIN shipsync.provider p USING (provider_id)
			WHERE p.name = 'stall' AND d.error_class = 'timeout'}),
		'0', 'stall: no attempt counted as a timeout of the carrier');
	is( sql(q{SELECT string_agg(DISTINCT d.error_class, ',') FROM shipsync.delivery_log d
			JOIN shipsync.provider p USING (provider_id) WHERE p.name = 'stall' AND d.error_class IS NOT NULL}),
		'dispatcher_stalled', 'stall: the attempts the wait cost say so');
	is(sql(q{SELECT breaker FROM shipsync.provider_health WHERE provider = 'stall'}),
		'closed', 'stall: the breaker stays closed');
	my $log = slurp_file($node->logfile, $log_at);
	unlike($log, qr/circuit breaker of provider "stall" opened/, 'stall: no opening of the breaker logged');
	like($log, qr/pg_shipsync dispatcher did not read the network for \d+ ms \(it waited for the database/,
		'stall: the wait is logged');
}

$node->stop;
done_testing();
