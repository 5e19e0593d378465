# Carriers over HTTPS, with HTTP/2 and without: nginx in front of the
# carrier simulator, with a certificate of a CA made here (given to the
# providers as ca_bundle), its access log naming the connection and the
# protocol of every request.  Proves:
#   1. a burst of 100 orders to an HTTP/2 carrier the dispatcher never
#      talked to goes over one connection, its requests multiplexed, not
#      one connection per request (libcurl learns that a carrier
#      multiplexes only once a connection is up: before, 100 orders opened
#      100 connections and as many TLS handshakes); so does the next burst
#      once that connection has closed; 250 orders at once (more than the
#      100 streams libcurl puts on a connection) go over 3 connections,
#      opened one at a time, not one per request beyond the first 100;
#      each order is delivered once;
#   2. a burst to an HTTPS carrier without HTTP/2 still goes out at once,
#      one connection per request in flight, not queued behind one
#      connection (which is what waiting for multiplexing does to it);
#   3. a carrier that answers over HTTP/2 before it has read the whole
#      body (a 429 from its edge), on streams sharing a connection: each
#      answer is its attempt's answer (rate_limited, the Retry-After holds
#      the provider), not a broken stream judged a lost connection and sent
#      again at once;
#   4. a carrier that creates the shipment and answers 201 before it has
#      read a body larger than the stream's window (libcurl 7.88 would go
#      on sending into a window never opened, spinning until timeout_ms,
#      and the attempt would be judged a timeout and sent again): the
#      answer is taken at once, on the first attempt, and the other
#      streams of the connection (answered after their bodies are read)
#      are not disturbed.  (Small bodies answered unread are libcurl's
#      own race, docs/architecture.md: not tested here.)
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use ShipsyncTest;

my $dir = PostgreSQL::Test::Utils::tempdir();
test_ca($dir);
test_certificate($dir, 'server', 'IP:127.0.0.1');

my $sim = start_sim();
my $slow = start_sim(latency_ms => 400);
END { local $?; stop_sim($_) for grep { $_ } ($sim, $slow); }

# nginx: h2 and h1 over TLS in front of the simulators; early answers
my ($h2port, $h1port, $earlyport, $eagerport) = map { PostgreSQL::Test::Cluster::get_free_port() } 1 .. 4;
my $tls = "ssl_certificate $dir/server.crt; ssl_certificate_key $dir/server.key;";
my $proxy = 'proxy_http_version 1.1; proxy_set_header Connection "";';
open(my $conf, '>', "$dir/nginx.conf") or die;
print $conf <<"EOC";
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx.err;
events { worker_connections 2048; }
http {
	log_format conn '\$connection \$server_protocol \$status';
	client_body_temp_path $dir/body;
	proxy_temp_path $dir/proxy;
	fastcgi_temp_path $dir/fastcgi;
	uwsgi_temp_path $dir/uwsgi;
	scgi_temp_path $dir/scgi;
	upstream sim { server 127.0.0.1:$sim->{port}; keepalive 64; }
	upstream slow { server 127.0.0.1:$slow->{port}; keepalive 128; }
	server {
		listen 127.0.0.1:$h2port ssl http2; $tls
		access_log $dir/h2.log conn;
		keepalive_timeout 1s;
		location / { proxy_pass http://sim; $proxy }
	}
	server {
		listen 127.0.0.1:$h1port ssl; $tls
		access_log $dir/h1.log conn;
		location / { proxy_pass http://slow; $proxy }
	}
	server {
		listen 127.0.0.1:$earlyport ssl http2; $tls
		access_log $dir/early.log conn;
		location / { add_header Retry-After 30 always; return 429 '{"error": "slow down"}'; }
	}
	server {
		listen 127.0.0.1:$eagerport ssl http2; $tls
		access_log $dir/eager.log conn;
		location / {
			default_type application/json;
			if (\$http_content_length ~ "^[0-9]{6,}\$") {
				return 201 '{"id": "shp_\$request_id", "tracking_number": "E\$request_id", "status": "pre_transit"}';
			}
			proxy_pass http://sim; $proxy
		}
	}
}
EOC
close $conf;
my $nginx = fork();
die "fork: $!" unless defined $nginx;
if ($nginx == 0)
{
	open(STDOUT, '>', "$dir/nginx.out");
	open(STDERR, '>&', \*STDOUT);
	exec('/usr/sbin/nginx', '-p', $dir, '-e', "$dir/nginx.err", '-c', "$dir/nginx.conf",
		'-g', 'daemon off;')
	  or die "exec nginx: $!";
}
END { local $?; if ($nginx) { kill 'TERM', $nginx; waitpid($nginx, 0); } }
for (1 .. 100)
{
	last if -s "$dir/nginx.pid";
	usleep(50_000);
}
-s "$dir/nginx.pid"
  or BAIL_OUT('nginx did not start: ' . PostgreSQL::Test::Utils::slurp_file("$dir/nginx.out"));

# [connection, protocol, status] of each request logged in $file
sub requests
{
	my ($file) = @_;
	return () unless -e "$dir/$file";
	return map { [split ' '] } split /\n/, PostgreSQL::Test::Utils::slurp_file("$dir/$file");
}
sub connections
{
	my %c = map { $_->[0] => 1 } @_;
	return scalar keys %c;
}

my $node = shipsync_node('http2');
sub sql { return $node->safe_psql('postgres', $_[0]); }
sql('CREATE EXTENSION pg_shipsync');
my $ca = PostgreSQL::Test::Utils::slurp_file("$dir/ca.crt");
sub provider
{
	my ($name, $port, $opts) = @_;
	sql(qq{SELECT shipsync.create_provider('$name', 'generic', 'https://127.0.0.1:$port',
			jsonb_build_object('tls', jsonb_build_object('ca_bundle', \$ca\$$ca\$ca\$))
			|| '$opts'::jsonb);
		CREATE TABLE t_$name (id bigint PRIMARY KEY, customer text, note text, waybill_no text);
		SELECT shipsync.attach('t_$name', '$name', writeback => '{"tracking_number": "waybill_no"}');});
}
sub delivered
{
	my ($name, $n, $secs) = @_;
	return wait_until($node, "SELECT count(*) = $n FROM t_$name WHERE waybill_no IS NOT NULL", $secs // 60);
}
# attempts per intent of table t_$name: "intents|attempts"
sub attempts
{
	my ($name) = @_;
	return sql(qq{SELECT count(DISTINCT o.id) || '|' || count(l.*)
		FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id)
		LEFT JOIN shipsync.delivery_log l ON l.outbox_id = o.id
		WHERE b.tbl = 't_$name'::regclass});
}

# ---- 1. a burst to an HTTP/2 carrier: multiplexed from the start
provider('h2', $h2port, '{"timeout_ms": 10000}');
sql(q{INSERT INTO t_h2 SELECT g, 'c' || g FROM generate_series(1, 100) g});
ok(delivered('h2', 100), 'HTTP/2: 100 orders delivered');
my @h2 = requests('h2.log');
is(scalar @h2, 100, 'HTTP/2: the carrier saw 100 requests');
is(scalar(grep { $_->[1] eq 'HTTP/2.0' && $_->[2] eq '201' } @h2), 100, 'HTTP/2: all over HTTP/2, all created');
is(connections(@h2), 1, 'HTTP/2: 100 orders at once to a carrier never seen went over one connection');
is(attempts('h2'), '100|100', 'HTTP/2: one attempt per order');

# nginx closes connections idle for 1 s: the next burst finds none open,
# and the carrier is known to speak HTTP/2
sleep 2;
sql(q{INSERT INTO t_h2 SELECT g, 'c' || g FROM generate_series(101, 200) g});
ok(delivered('h2', 200), 'HTTP/2: 100 more delivered after the connection closed');
my @again = @{ [ requests('h2.log') ] }[ 100 .. 199 ];
is(connections(@again), 1, 'HTTP/2: a burst with no connection open waits for one and shares it');
isnt($again[0][0], $h2[0][0], 'HTTP/2: ... a new one (the first had closed)');
is(attempts('h2'), '200|200', 'HTTP/2: one attempt per order, again');

# more than a connection's streams (libcurl's 100) at once: connections
# are opened one at a time and filled, not one per request beyond the first
sleep 2;
sql(q{INSERT INTO t_h2 SELECT g, 'c' || g FROM generate_series(201, 450) g});
ok(delivered('h2', 450, 90), 'HTTP/2: 250 more delivered at once');
my @big = @{ [ requests('h2.log') ] }[ 200 .. 449 ];
my $bigconns = connections(@big);
cmp_ok($bigconns, '<=', 3, "HTTP/2: 250 orders at once over $bigconns connections (100 streams each), not 150");
is(attempts('h2'), '450|450', 'HTTP/2: one attempt per order, 450 in all');

# ---- 2. HTTPS without HTTP/2: every request of a burst on its own connection at once
provider('h1', $h1port, '{"timeout_ms": 10000}');
sql(q{INSERT INTO t_h1 SELECT g, 'c' || g FROM generate_series(1, 60) g});
ok(delivered('h1', 60), 'HTTP/1.1 over TLS: 60 orders delivered');
my @h1 = requests('h1.log');
is(scalar(grep { $_->[1] eq 'HTTP/1.1' } @h1), 60, 'HTTP/1.1 over TLS: 60 requests over HTTP/1.1');
# each answer takes 400 ms: orders queued on few connections would share them
my $h1conns = connections(@h1);
cmp_ok($h1conns, '>=', 55, "HTTP/1.1 over TLS: the burst went out at once ($h1conns connections for 60 requests)");
is(attempts('h1'), '60|60', 'HTTP/1.1 over TLS: one attempt per order');

# ---- 3. answers before the body is read, over HTTP/2
provider('early', $earlyport, '{"timeout_ms": 10000, "max_attempts": 5}');
# 100 kB of body each, twenty streams on a connection: the server answers
# while the client is still sending
sql(q{INSERT INTO t_early SELECT g, 'c' || g, repeat('x', 100000) FROM generate_series(1, 20) g});
my $early_log = q{FROM shipsync.delivery_log l JOIN shipsync.provider p USING (provider_id) WHERE p.name = 'early'};
ok(wait_until($node, "SELECT count(*) = 20 $early_log", 30), 'early answers: 20 attempts logged');
is( sql(qq{SELECT string_agg(DISTINCT l.http_status || '|' || l.error_class || '|' || l.outcome, ', ') $early_log}),
	'429|rate_limited|retry',
	'early answers: each attempt has the 429 for its answer, none a broken stream');
ok( sql(q{SELECT hold_until > now() + interval '20 seconds' FROM shipsync.provider_health
		WHERE provider = 'early'}) eq 't',
	'early answers: the Retry-After holds the provider');
# held: nothing is sent again for 30 s
sleep 2;
is(scalar(requests('early.log')), 20, 'early answers: nothing sent again while held');
is(connections(requests('early.log')), 1, 'early answers: the twenty went as streams of one connection');

# ---- 4. a 201 before a body larger than the stream's window is read
provider('eager', $eagerport, '{"timeout_ms": 5000, "max_attempts": 10}');
my $eager_log = q{FROM shipsync.delivery_log l JOIN shipsync.provider p USING (provider_id) WHERE p.name = 'eager'};
# 300 kB: nginx's window is 64 kB, and it never opens it for a body it
# does not read
sql(q{INSERT INTO t_eager VALUES (1, 'big', repeat('x', 300000))});
ok(delivered('eager', 1, 30), 'a 201 before the body is read: delivered');
is( sql(qq{SELECT string_agg(l.attempt || '|' || l.http_status || '|' || l.outcome || '|'
			|| coalesce(l.error_class, '-'), ', ') $eager_log}),
	'1|201|done|-', 'a 201 before the body is read: the first attempt has it for its answer');
like(sql('SELECT waybill_no FROM t_eager WHERE id = 1'), qr/^E[0-9a-f]{32}$/,
	"a 201 before the body is read: the carrier's waybill is written back");
# large bodies among small ones, as streams of one connection: each large
# one is answered unread, the small ones go to the simulator, which reads
# them.  A large one's answer is taken as above when libcurl reads it
# before the server resets the stream (the DATA that reached it after it
# answered); otherwise libcurl 7.88 fails the stream at once, unanswered
# (docs/architecture.md), and it is sent again.  Either way, no attempt
# spins to its timeout, and ending a large one early breaks no other
# stream of the connection.
sql(q{INSERT INTO t_eager SELECT g, 'c' || g, repeat('x', CASE WHEN g % 10 = 0 THEN 300000 ELSE 3000 END)
	FROM generate_series(2, 61) g});
ok(delivered('eager', 61, 60), 'a 201 before the body is read, 6 of 60 streams: delivered');
is(sql(q{SELECT count(*) FROM t_eager WHERE id > 1 AND waybill_no LIKE 'E%'}), '6',
	'a 201 before the body is read: the six large ones answered unread');
my $by_size = q{FROM shipsync.delivery_log l JOIN shipsync.outbox o ON o.id = l.outbox_id
	JOIN shipsync.binding b USING (binding_id) JOIN t_eager e ON e.id::text = o.order_key
	WHERE b.tbl = 't_eager'::regclass AND e.id > 1};
is(sql(qq{SELECT count(*) || '|' || count(*) FILTER (WHERE l.outcome = 'done') $by_size AND e.id % 10 <> 0}),
	'54|54', 'a 201 before the body is read: each small order of the connection sent once, done');
is(sql(qq{SELECT count(*) $by_size AND l.error_class = 'timeout'}), '0',
	'a 201 before the body is read: no attempt waits for its timeout');
is(connections(@{ [ requests('eager.log') ] }[ 1 .. 60 ]), 1,
	'a 201 before the body is read: one connection for the sixty');

done_testing();
