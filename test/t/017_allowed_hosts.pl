# Outbound hosts: pg_shipsync reaches an internal address only where
# shipsync.allowed_hosts allows it, judged on the address it connects to.
# Not one packet leaves the loopback interface: the refused addresses are
# loopback ones outside the list (127.0.0.2, and localhost when the list
# names neither it nor its address), watched by listening sockets that must
# see no connection.  Proves:
#   1. create_provider() refuses a loopback literal outside the list;
#   2. a redirect is not followed, not even to an allowed host;
#   3. a provider row changed by hand to 127.0.0.2: refused at connect,
#      dead at once with error class forbidden_host, a clear last_error and
#      a ticket, and nothing reached 127.0.0.2; the URL fixed by hand, the
#      intent requeued goes to the fixed URL;
#   4. after a SIGHUP to '*.localhost': a name matching the pattern is
#      reached; localhost (a name resolving to loopback, not named) is
#      refused, also on a keep-alive connection opened before the reload;
#      an OAuth2 token_url on localhost is never contacted, and the
#      provider's intents fail forbidden_host;
#   5. after a SIGHUP to a CIDR: the refused intent, retried, is delivered;
#   6. OAuth2 tokens are fetched only for providers attached and not
#      paused, and a failing token URL is retried with backoff, not at
#      every reload of the configuration;
#   7. a host name is judged whole: with only a pattern in the list, a
#      host longer than a host name may be, whose first 255 characters
#      match the pattern but whose whole name is a loopback one, is
#      refused at connect, and nothing reaches the loopback listener.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use ShipsyncTest;

my $simlog = PostgreSQL::Test::Utils::tempdir() . '/sim.log';
my $sim = start_sim(args => [ '--log', $simlog ]);
my $redir = start_sim(faults => { rules => [
	{ fault => 'status', status => 302, location => "$sim->{url}/shipments" } ] });
my $oasim = start_sim(args => [ '--oauth2', 'shop:s3cr3t:2' ]);
END { local $?; stop_sim($_) for grep { $_ } ($sim, $redir, $oasim); }

# listening sockets no connection may reach: on 127.0.0.2, and on
# 127.0.0.1 at a port of no simulator
my %trap;
for my $addr ('127.0.0.2', '127.0.0.1')
{
	$trap{$addr} = IO::Socket::INET->new(LocalAddr => $addr, LocalPort => 0,
		Listen => 16, Proto => 'tcp', ReuseAddr => 1)
	  or die "listen on $addr: $!";
}
my $t2 = $trap{'127.0.0.2'}->sockport;
my $t1 = $trap{'127.0.0.1'}->sockport;

my $node = shipsync_node('hosts', 'shipsync.idle_check_ms = 200');
sub sql { return $node->safe_psql('postgres', $_[0]); }
my $common = '"timeout_ms": 3000, "backoff_base_ms": 50, "backoff_max_ms": 200, "max_attempts": 3';
sql('CREATE EXTENSION pg_shipsync');

# A table attached to a new provider at url; returns the table's name.
sub provider_with_table
{
	my ($name, $url, $extra) = @_;
	sql(qq{
		SELECT shipsync.create_provider('$name', 'generic', '$url', '{$common$extra}');
		CREATE TABLE t_$name (id bigint PRIMARY KEY, customer text, waybill_no text);
		SELECT shipsync.attach('t_$name', '$name', writeback => '{"tracking_number": "waybill_no"}');
	});
	return "t_$name";
}

# Insert order $id into $table and wait until its intent is done or dead;
# returns state|error_class|attempts|last_error.
sub ship
{
	my ($table, $id) = @_;
	sql("INSERT INTO $table VALUES ($id, 'c$id')");
	my $intent = "FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id)"
	  . " WHERE b.tbl = '$table'::regclass AND o.order_key = '$id'";
	wait_until($node, "SELECT coalesce(bool_and(o.state IN ('done', 'dead')), false) $intent", 30)
	  or diag("order $id of $table: " . sql("SELECT o.state || ' ' || coalesce(o.last_error, '') $intent"));
	return sql("SELECT o.state || '|' || coalesce(o.error_class, '') || '|' || o.attempts || '|'"
		  . " || coalesce(o.last_error, '') $intent");
}

sub key_of
{
	my ($table, $id) = @_;
	return sql("SELECT o.idempotency_key FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id)"
		  . " WHERE b.tbl = '$table'::regclass AND o.order_key = '$id'");
}

sub ticket_of
{
	my ($table, $id) = @_;
	return sql("SELECT t.kind FROM shipsync.exception_ticket t JOIN shipsync.outbox o ON o.id = t.outbox_id"
		  . " JOIN shipsync.binding b ON b.binding_id = o.binding_id"
		  . " WHERE b.tbl = '$table'::regclass AND o.order_key = '$id'");
}

sub sim_saw_key
{
	my ($key) = @_;
	return PostgreSQL::Test::Utils::slurp_file($simlog) =~ /key=\Q$key\E/ ? 1 : 0;
}

sub set_allowed
{
	my ($value) = @_;
	my $offset = -s $node->logfile;
	sql("ALTER SYSTEM SET shipsync.allowed_hosts = '$value'");
	sql('SELECT pg_reload_conf()');
	ok($node->wait_for_log(qr/pg_shipsync dispatcher: shipsync\.allowed_hosts is now "\Q$value\E"/, $offset),
		"the dispatcher reloads shipsync.allowed_hosts = '$value'");
}

# ---- 1. the list is '127.0.0.1': a loopback literal outside it is refused
my ($rc, $out, $err) = $node->psql('postgres',
	"SELECT shipsync.create_provider('p2', 'generic', 'http://127.0.0.2:$t2')");
like($err, qr/host 127\.0\.0\.2 is a loopback address, which shipsync\.allowed_hosts does not allow/,
	'create_provider() refuses 127.0.0.2, outside the list');
my $t_sim = provider_with_table('sim', $sim->{url}, '');
like(ship($t_sim, 1), qr/^done\|/, 'an allowed address is reached');

# ---- 2. a redirect is not followed, even to an allowed host
my $t_redir = provider_with_table('redir', $redir->{url}, '');
my $r = ship($t_redir, 2);
like($r, qr/^dead\|http_unexpected\|1\|HTTP 302/, 'a 302 is a dead intent, not followed');
is(sim_saw_key(key_of($t_redir, 2)), 0, 'the Location (an allowed simulator) was not contacted');

# ---- 3. a provider row changed by hand: judged when connecting
sql(qq{SELECT shipsync.create_provider('hand', 'generic', '$sim->{url}', '{$common}');
	UPDATE shipsync.provider SET base_url = 'http://127.0.0.2:$t2' WHERE name = 'hand';
	CREATE TABLE t_hand (id bigint PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('t_hand', 'hand');});
$r = ship('t_hand', 3);
like($r, qr/^dead\|forbidden_host\|1\|refused to connect to 127\.0\.0\.2 \(a loopback address\) for host "127\.0\.0\.2": not allowed by shipsync\.allowed_hosts$/,
	'127.0.0.2 refused at connect: dead after one attempt, forbidden_host, a clear last_error');
is(ticket_of('t_hand', 3), 'forbidden_host', 'with a forbidden_host ticket');
is(sql(q{SELECT l.error_class || ' ' || coalesce(l.http_status::text, 'none') FROM shipsync.delivery_log l
	JOIN shipsync.outbox o ON o.id = l.outbox_id JOIN shipsync.binding b USING (binding_id)
	WHERE b.tbl = 't_hand'::regclass}), 'forbidden_host none', 'the delivery log says so, with no HTTP status');

# The URL fixed and the intent requeued, as docs/troubleshooting.md says:
# the request stored at its first attempt goes to the fixed URL, with its
# key and body.  It went to the stored URL, refused again, dead again.
my $hand_body = sql(q{SELECT o.request_body FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id)
	WHERE b.tbl = 't_hand'::regclass AND o.order_key = '3'});
sql(qq{UPDATE shipsync.provider SET base_url = '$sim->{url}' WHERE name = 'hand';
	SELECT pg_reload_conf();
	SELECT shipsync.requeue('hand');});
ok( wait_until($node, q{SELECT o.state IN ('done', 'dead') AND o.attempts = 1 FROM shipsync.outbox o
		JOIN shipsync.binding b USING (binding_id) WHERE b.tbl = 't_hand'::regclass AND o.order_key = '3'}, 30),
	'base_url fixed by hand: the requeued intent was sent again');
like(sql(q{SELECT o.state || ' ' || o.request_url FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id)
	WHERE b.tbl = 't_hand'::regclass AND o.order_key = '3'}), qr{^done \Q$sim->{url}\E/shipments$},
	'base_url fixed by hand: the requeued intent went to the fixed URL, and is done');
is(sim_saw_key(key_of('t_hand', 3)), 1, 'base_url fixed by hand: the simulator got it, under its key');
is(sql(q{SELECT o.request_body FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id)
	WHERE b.tbl = 't_hand'::regclass AND o.order_key = '3'}), $hand_body,
	'base_url fixed by hand: the stored body is the one stored at the first attempt');

# ---- 4. the list is '*.localhost'
set_allowed('*.localhost');
my $t_byname = provider_with_table('byname', "http://sim.localhost:$sim->{port}", '');
like(ship($t_byname, 4), qr/^done\|/, 'a name matching *.localhost is reached');

my $t_flip = provider_with_table('flip', "http://localhost:$sim->{port}", '');
$r = ship($t_flip, 5);
like($r, qr/^dead\|forbidden_host\|1\|refused to connect to (127\.0\.0\.1|::1) \(a loopback address\) for host "localhost"/,
	'localhost, neither named nor its address listed, is refused');
is(sim_saw_key(key_of($t_flip, 5)), 0, 'the simulator behind localhost got nothing');
is(ticket_of($t_flip, 5), 'forbidden_host', 'a forbidden_host ticket');

# 127.0.0.1 left the list: the keep-alive connection of step 1 is not used
$r = ship($t_sim, 6);
like($r, qr/^dead\|forbidden_host\|1\|refused to connect to 127\.0\.0\.1 /,
	'an address removed from the list is refused, keep-alive connection or not');
is(sim_saw_key(key_of($t_sim, 6)), 0, 'and the simulator got nothing');

my $t_oa = provider_with_table('oa', "http://sim.localhost:$oasim->{port}",
	qq{, "auth": {"type": "oauth2", "token_url": "http://localhost:$t1/oauth/token",
	   "client_id": "shop", "client_secret": "s3cr3t"}});
$r = ship($t_oa, 7);
like($r, qr/^dead\|forbidden_host\|1\|OAuth2 token_url: refused to connect to \S+ \(a loopback address\) for host "localhost"/,
	'an OAuth2 token_url on localhost is refused: the intent fails forbidden_host');
is(ticket_of($t_oa, 7), 'forbidden_host', 'with a ticket');
is(sim_get($oasim, '/_sim/oauth/stats')->{token_requests}, 0, 'no token was asked for anywhere');

# nothing reached the listening sockets while they were refused
for my $addr (sort keys %trap)
{
	$trap{$addr}->blocking(0);
	my $c = $trap{$addr}->accept;
	ok(!defined $c, "no connection reached the listener on $addr");
}
# (the next list allows them: 'oa' would fetch its token there)
sql(q{SELECT shipsync.pause('oa')});

# ---- 5. the list is a CIDR range: what was refused is delivered
set_allowed('127.0.0.0/30');
sql(q{SELECT shipsync.retry(o.id) FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id)
	WHERE b.tbl = 't_flip'::regclass});
ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM $t_flip WHERE id = 5", 30),
	'after the reload, the retried intent reaches localhost (127.0.0.1 is in 127.0.0.0/30)');
is(sql("SELECT shipsync.create_provider('p2', 'generic', 'http://127.0.0.2:$t2') > 0"), 't',
	'and create_provider() takes 127.0.0.2 now');


# ---- 6. OAuth2 tokens only for providers attached and not paused
sub tokens { return sim_get($oasim, '/_sim/oauth/stats'); }
my $oa_common = qq{, "auth": {"type": "oauth2", "token_url": "$oasim->{url}/oauth/token",
	"client_id": "shop", "client_secret": "s3cr3t"}};
sql(qq{SELECT shipsync.create_provider('idle', 'generic', '$oasim->{url}', '{$common$oa_common}')});
sleep(2);	# ten idle checks, each a reload of the configuration
is(tokens()->{token_requests}, 0, 'no token is fetched for a provider attached to nothing');
sql(q{CREATE TABLE t_idle (id bigint PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('t_idle', 'idle');});
like(ship('t_idle', 8), qr/^done\|/, 'attached: a token is fetched and the order delivered');
cmp_ok(tokens()->{token_requests}, '>=', 1, 'with a token');
sql(q{SELECT shipsync.pause('idle')});
my $before = tokens()->{token_requests};
sleep(4);	# two lifetimes of a token (2 s)
is(tokens()->{token_requests}, $before, 'paused: no token is fetched, however old the last one');
sql(q{SELECT shipsync.resume('idle')});
like(ship('t_idle', 9), qr/^done\|/, 'resumed: delivered with a new token');
cmp_ok(tokens()->{token_requests}, '>', $before, 'fetched after the resume');

# a token URL that refuses the client: backoff (1 s, 2 s, 4 s), which the
# reloads at every idle check (200 ms) do not reset
my $bad = qq{, "backoff_base_ms": 1000, "backoff_max_ms": 60000,
	"auth": {"type": "oauth2", "token_url": "$oasim->{url}/oauth/token",
	"client_id": "shop", "client_secret": "wrong"}};
$bad =~ s/"backoff_base_ms": 50, "backoff_max_ms": 200, //;
my $bad_before = tokens()->{bad_client};
sql(qq{SELECT shipsync.create_provider('badoa', 'generic', '$oasim->{url}',
		'{"timeout_ms": 3000$bad}');
	CREATE TABLE t_badoa (id bigint PRIMARY KEY, customer text);
	SELECT shipsync.attach('t_badoa', 'badoa');
	INSERT INTO t_badoa VALUES (10, 'c10');});
sleep(6);
my $fetches = tokens()->{bad_client} - $bad_before;
cmp_ok($fetches, '>=', 1, 'the refusing token URL was tried');
cmp_ok($fetches, '<=', 4, "and backed off: $fetches fetches in 6 s, not one per idle check");

# ---- 7. a host name is judged whole, not by a prefix.  The list holds a
# pattern only.  A row changed by hand (create_provider() refuses such a
# host) whose host has more characters than a host name may: its first
# 255 end in .carrier.example, the whole name in .localhost, which
# libcurl resolves to loopback itself.
set_allowed('*.carrier.example');
my $prefix = join('.', ('a' x 60) x 3, 'a' x 56) . '.carrier.example';
die 'the prefix has ' . length($prefix) . ' characters' unless length($prefix) == 255;
sql(qq{SELECT shipsync.create_provider('long', 'generic', 'https://gw.carrier.example', '{$common}');
	UPDATE shipsync.provider SET base_url = 'http://$prefix.localhost:$t1' WHERE name = 'long';
	CREATE TABLE t_long (id bigint PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('t_long', 'long');});
$r = ship('t_long', 11);
like($r, qr/^dead\|forbidden_host\|1\|refused to connect to (127\.0\.0\.1|::1) \(a loopback address\): the URL's host name is longer than 255 characters/,
	'a host name too long for the list is refused at connect, not judged by its first 255 characters');
ok(!defined $trap{'127.0.0.1'}->accept, 'no connection reached the loopback listener behind it');

$node->stop;
done_testing();
