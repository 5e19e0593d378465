# OAuth2 client credentials for the generic dialect, end to end.
#
# The simulator runs an OAuth2 token endpoint (--oauth2 ID:SECRET:TTL) that
# makes each token at once and answers 300 ms later, and refuses carrier
# requests without a valid token.  Tokens live 60 s where the test counts
# them (1, 3, 4: a slow moment of the machine must not bring a refresh the
# count does not expect) and 4 s where it watches their ends (2, 6, 7):
# POST /_sim/oauth/ttl sets the life of the tokens made from then on.
# Proves:
#   1. one token is fetched and shared by every request of the provider;
#   2. it is refreshed before it expires: no request carries an expired one;
#   3. tokens revoked at the carrier: the 401s cause one refresh, one at a
#      time, and every order is delivered;
#   4. a carrier that refuses even the fresh token: dead with an auth ticket
#      after one refresh, no storm;
#   5. wrong client credentials: no token, nothing sent, intents wait;
#   6. the token's life is counted from when it was asked for, not from its
#      answer, and it is not sent near its end: a trickle across the ends of
#      tokens' lives never carries one the carrier has ended;
#   7. a token revoked while its refresh is in flight is not sent again:
#      its intents wait for the new one.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use JSON::PP;
use ShipsyncTest;

my $sim = start_sim(args => [ '--oauth2', 'shop-client:s3cr3t/+=:60', '--oauth2-delay-ms', '300' ]);
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node('oauth2');

sub sql { return $node->safe_psql('postgres', $_[0]); }
sub oauth { return sim_get($sim, '/_sim/oauth/stats'); }

my $common = '"timeout_ms": 3000, "backoff_base_ms": 50, "backoff_max_ms": 400, "max_attempts": 5';
sql(qq{
	CREATE EXTENSION pg_shipsync;
	SELECT shipsync.create_provider('oa', 'generic', '$sim->{url}', '{$common,
		"auth": {"type": "oauth2", "token_url": "$sim->{url}/oauth/token",
				 "client_id": "shop-client", "client_secret": "s3cr3t/+=", "scope": "shipments"}}');
	CREATE TABLE orders (id bigint PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('orders', 'oa', writeback => '{"tracking_number": "waybill_no"}');
});

sub deliver
{
	my ($lo, $hi) = @_;
	sql("INSERT INTO orders SELECT g, 'c' || g FROM generate_series($lo, $hi) g");
	return wait_until($node,
		"SELECT count(*) = 0 FROM orders WHERE id BETWEEN $lo AND $hi AND waybill_no IS NULL", 30);
}

# 1. one token for all
ok(deliver(1, 100), 'a hundred orders delivered with OAuth2');
my $st = oauth();
is($st->{tokens_issued}, 1, 'one token fetched, shared by every request');
is($st->{max_concurrent_fetches}, 1, 'one fetch at a time');
is($st->{rejected_401}, 0, 'no request went without a valid token');

# 3. revoked at the carrier: refreshed once on the 401s
sim_post($sim, '/_sim/oauth/revoke');
ok(deliver(111, 160), 'after the carrier revoked the token, fifty orders delivered');
$st = oauth();
is($st->{tokens_issued}, 2, 'one new token for all the refused requests');
is($st->{max_concurrent_fetches}, 1, 'still one fetch at a time');
ok($st->{rejected_401} >= 1, 'the carrier refused the old token');
is( sql(q{SELECT count(*) FROM shipsync.delivery_log WHERE error_class = 'auth_refresh'}),
	$st->{rejected_401}, 'each refusal logged as auth_refresh and sent again');
is(sql(q{SELECT count(*) FROM shipsync.outbox WHERE state = 'dead'}), 0, 'nothing dead');

# 4. the carrier refuses even a fresh token: one refresh, then dead
sim_post($sim, '/_sim/oauth/reject', { on => JSON::PP::true });
my $before = oauth()->{tokens_issued};
sql("INSERT INTO orders VALUES (161, 'x')");
ok(wait_until($node, "SELECT state = 'dead' FROM shipsync.outbox WHERE order_key = '161'", 30),
	'refused after the refresh: dead');
is(sql("SELECT error_class || '|' || attempts FROM shipsync.outbox WHERE order_key = '161'"),
	'auth|2', 'two attempts: the first token, then the refreshed one');
is(sql("SELECT count(*) FROM shipsync.exception_ticket WHERE order_key = '161' AND kind = 'auth_failed'"),
	1, 'an auth_failed ticket');
is(oauth()->{tokens_issued} - $before, 1, 'one refresh, no storm');
sim_post($sim, '/_sim/oauth/reject', { on => JSON::PP::false });

# 2. refreshed before expiry.  From here on tokens live 4 s: refreshed from
# 3.2 s on, sent until 3.6 s, counted from when the dispatcher asked.  One
# order goes with the token of 4 (accepted again: the carrier's word on it
# clears the 401 that followed its fetch); then that token is revoked, so
# that the next order brings a token of 4 s.
ok(deliver(162, 162), 'the carrier accepts the token again');
sim_post($sim, '/_sim/oauth/ttl', { ttl => 4 });
sim_post($sim, '/_sim/oauth/revoke');
ok(deliver(163, 163), 'an order after the revocation brings a token of 4 s');
my $st0 = oauth();
sleep(3.3);
ok(deliver(101, 110), 'orders near the end of the token\'s life delivered');
# the refresh runs beside the requests, which keep the old token meanwhile
for (1 .. 50) { last if oauth()->{tokens_issued} > $st0->{tokens_issued}; sleep(0.1); }
$st = oauth();
is($st->{tokens_issued} - $st0->{tokens_issued}, 1, 'the token was refreshed before it expired');
is(($st->{expired_used} - $st0->{expired_used}) . '|' . ($st->{rejected_401} - $st0->{rejected_401}),
	'0|0', 'no request carried an expired token');

# 5. wrong client secret: no token, nothing sent, intents wait
my $requests = sim_get($sim, '/_sim/stats')->{requests};
sql(qq{SELECT shipsync.create_provider('oa_bad', 'generic', '$sim->{url}', '{$common,
		"auth": {"type": "oauth2", "token_url": "$sim->{url}/oauth/token",
				 "client_id": "shop-client", "client_secret": "wrong"}}');
	CREATE TABLE orders_bad (LIKE orders INCLUDING ALL);
	SELECT shipsync.attach('orders_bad', 'oa_bad', writeback => '{"tracking_number": "waybill_no"}');
	INSERT INTO orders_bad VALUES (500, 'y');});
ok(wait_until($node, "SELECT EXISTS (SELECT 1 FROM shipsync.outbox WHERE order_key = '500')", 30),
	'wrong credentials: the intent reaches the outbox');
sleep(1.5);
is(sql("SELECT state || '|' || attempts FROM shipsync.outbox WHERE order_key = '500'"),
	'pending|0', 'wrong credentials: the intent waits, never attempted');
ok(oauth()->{bad_client} >= 1, 'the token endpoint refused the client');
is(sim_get($sim, '/_sim/stats')->{requests}, $requests, 'nothing was sent to the carrier');
ok($node->wait_for_log(qr/could not get an OAuth2 token for provider "oa_bad"/),
	'the server log says why');

# One order every 50 ms for 5 s, ids $lo to $lo + 99, each committed on
# its own; true when all are delivered.
sub trickle
{
	my ($lo, $customer) = @_;
	my $hi = $lo + 99;
	sql(qq{DO \$\$ BEGIN
		FOR i IN $lo .. $hi LOOP
			INSERT INTO orders VALUES (i, '$customer');
			COMMIT;
			PERFORM pg_sleep(0.05);
		END LOOP;
	END \$\$});
	return wait_until($node,
		"SELECT count(*) = 0 FROM orders WHERE id BETWEEN $lo AND $hi AND waybill_no IS NULL", 30);
}

# 6. a steady trickle across the ends of tokens' lives.  The endpoint makes
# each token 300 ms before its answer reaches the dispatcher, so a client
# counting the 4 s from the answer would send a token the carrier has
# already ended.  One order every 50 ms for 5 s crosses at least one end.
$before = oauth();
ok(trickle(1001, 'trickle'), 'a trickle of a hundred orders over 5 s delivered');
$st = oauth();
ok($st->{tokens_issued} - $before->{tokens_issued} >= 1, 'the trickle outlived a token: a new one was fetched');
is(($st->{expired_used} - $before->{expired_used}) . '|' . ($st->{rejected_401} - $before->{rejected_401}),
	'0|0', 'no order of the trickle carried a token the carrier had ended');
is(sql(q{SELECT count(*) FROM shipsync.outbox WHERE state = 'dead' AND order_key::int >= 1001}), 0,
	'nothing of the trickle dead');

# 7. the carrier revokes the token while its refresh is in flight: the first
# 401 stops the old token, the orders wait the 300 ms for the new one instead
# of going again and again with the refused one (max_attempts is 5).  The
# trickle's orders must still carry the old token when its refresh starts:
# a token older than 3.6 s is not sent, and the one the last trickle left
# may be 3.2 s old, so one order first earns a new token (revoked at once:
# a 401, then a fetch), and the refresh comes 3.2 s into the trickle.
sim_post($sim, '/_sim/oauth/revoke', {});
ok(deliver(1999, 1999), 'a revoked token: the next order earns a new one');
sim_post($sim, '/_sim/oauth/revoke', { at_next_fetch => JSON::PP::true });
$before = oauth();
ok(trickle(2001, 'revoked meanwhile'), 'revoked during a refresh: a hundred orders delivered');
$st = oauth();
ok($st->{rejected_401} - $before->{rejected_401} >= 1, 'the carrier refused the revoked token');
is(sql(q{SELECT count(*) FROM shipsync.outbox WHERE order_key::int >= 2001 AND (state = 'dead' OR attempts > 2)}), 0,
	'no order went more than twice, none dead');
is(sql(q{SELECT count(*) FROM shipsync.delivery_log d JOIN shipsync.outbox o ON o.id = d.outbox_id
		 WHERE o.order_key::int >= 2001 AND d.error_class = 'auth_refresh'}),
	$st->{rejected_401} - $before->{rejected_401}, 'each refusal logged once as auth_refresh');

# render_request masks the token
like(sql("SELECT array_to_string(headers, ';') FROM shipsync.render_request((SELECT id FROM shipsync.outbox WHERE order_key = '1'))"),
	qr/Authorization: Bearer \*{8}/, 'render_request masks the bearer token');

$node->stop;
done_testing();
