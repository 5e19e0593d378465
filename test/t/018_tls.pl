# TLS per provider (option tls), against the carrier simulator serving
# HTTPS with certificates made here by the openssl command: a CA, servers
# signed by it (one expired, one for another host name), a self-signed
# server, a server that requires a client certificate, one that stops at
# TLS 1.2.  Every refusal is error class tls, permanent (one attempt), with
# a tls_failed ticket.  Proves:
#   1. a self-signed certificate is refused by default, accepted with
#      itself as ca_bundle; a certificate of a private CA likewise, for
#      deliveries, tracking polls and fee pulls;
#   2. a certificate for another host name, or expired, is refused even
#      with the right CA;
#   3. a server that requires a client certificate refuses a provider
#      without one and accepts one with client_cert and client_key (in
#      that order: the accepted connection is not reused for the other);
#      the key is a secret, kept in shipsync.secret only: without it the
#      provider sends nothing, and set_secret() gives it back;
#   4. a pinned public key: the right pin is accepted, a wrong one refused
#      (after a connection with the right pin was opened);
#   5. min_version 1.3 refuses a server that stops at TLS 1.2, which the
#      default (1.2) accepts.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $dir = PostgreSQL::Test::Utils::tempdir();

test_ca($dir);
test_certificate($dir, 'server', 'IP:127.0.0.1');
test_certificate($dir, 'selfsigned', 'IP:127.0.0.1', self_signed => 1);
test_certificate($dir, 'expired', 'IP:127.0.0.1', days => -1);
test_certificate($dir, 'othername', 'DNS:carrier.example');
test_certificate($dir, 'client', '');

sub pem { return PostgreSQL::Test::Utils::slurp_file("$dir/$_[0]"); }

# sha256// and the base64 SHA-256 of a certificate's public key
sub pin { return test_pin($dir, $_[0]); }

my %sims;
sub tls_sim
{
	my ($name, $crt, $key, @more) = @_;
	$sims{$name} = start_sim(args => [ '--tls-cert', "$dir/$crt", '--tls-key', "$dir/$key", @more ]);
	return "https://127.0.0.1:$sims{$name}{port}";
}
END { local $?; stop_sim($_) for values %sims; }
my $good = tls_sim('good', 'server.crt', 'server.key');
my $selfsigned = tls_sim('selfsigned', 'selfsigned.crt', 'selfsigned.key');
my $expired = tls_sim('expired', 'expired.crt', 'expired.key');
my $othername = tls_sim('othername', 'othername.crt', 'othername.key');
my $mtls = tls_sim('mtls', 'server.crt', 'server.key', '--tls-client-ca', "$dir/ca.crt");
my $tls12 = tls_sim('tls12', 'server.crt', 'server.key', '--tls-max', '1.2');

my $node = shipsync_node('tls');
sub sql { return $node->safe_psql('postgres', $_[0]); }
sql('CREATE EXTENSION pg_shipsync');

# A provider at url with option tls, a table attached to it, one order:
# returns state|error_class|attempts|last_error once its intent is done
# or dead.
my $n = 0;
sub ship
{
	my ($name, $url, $tls) = @_;
	my $opts = { timeout_ms => 5000, backoff_base_ms => 50, backoff_max_ms => 200, max_attempts => 3 };
	$opts->{tls} = $tls if $tls;
	my $json = JSON::PP->new->canonical->encode($opts);
	$n++;
	sql(qq{SELECT shipsync.create_provider('$name', 'generic', '$url', \$json\$$json\$json\$);
		CREATE TABLE t_$name (id bigint PRIMARY KEY, customer text, waybill_no text);
		SELECT shipsync.attach('t_$name', '$name', writeback => '{"tracking_number": "waybill_no"}');
		INSERT INTO t_$name VALUES ($n, 'c$n');});
	my $intent = "FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id) WHERE b.tbl = 't_$name'::regclass";
	wait_until($node, "SELECT coalesce(bool_and(o.state IN ('done', 'dead')), false) $intent", 30)
	  or diag("$name: " . sql("SELECT o.state || ' ' || coalesce(o.last_error, '') $intent"));
	return sql("SELECT o.state || '|' || coalesce(o.error_class, '') || '|' || o.attempts || '|'"
		  . " || coalesce(o.last_error, '') $intent");
}

sub refused
{
	my ($name, $result, $why, $what) = @_;
	like($result, qr/^dead\|tls\|1\|.*$why/, "$what: dead at once, error class tls");
	is(sql("SELECT string_agg(t.kind, ',') FROM shipsync.exception_ticket t JOIN shipsync.outbox o"
		  . " ON o.id = t.outbox_id JOIN shipsync.binding b ON b.binding_id = o.binding_id WHERE b.tbl = 't_$name'::regclass"),
		'tls_failed', "$what: a tls_failed ticket");
}

# ---- 1. self-signed and private CAs
refused('ss_default', ship('ss_default', $selfsigned), 'self-signed certificate',
	'a self-signed certificate, by default');
like(ship('ss_trusted', $selfsigned, { ca_bundle => pem('selfsigned.crt') }), qr/^done\|/,
	'the same, with itself as ca_bundle, is accepted');
refused('ca_default', ship('ca_default', $good), 'unable to get local issuer certificate',
	'a private CA\'s certificate, by default');
like(ship('ca_trusted', $good, { ca_bundle => pem('ca.crt') }), qr/^done\|/,
	'the same, with the CA as ca_bundle, is accepted');

# ---- 1b. the dispatcher's pulls use the provider's TLS options too: the
# tracking polls and the fee pulls after delivery of a carrier of the
# private CA (its control API is HTTPS as well: posted with curl)
sub tls_sim_post
{
	my ($name, $path, $data) = @_;
	my ($out, $err);
	IPC::Run::run([ 'curl', '-sSf', '--cacert', "$dir/ca.crt", '-H', 'Content-Type: application/json',
		'--data-binary', encode_json($data), "https://127.0.0.1:$sims{$name}{port}$path" ],
		'>', \$out, '2>', \$err)
	  or die "POST $path: $err";
}
like(ship('ca_fees', $good, { ca_bundle => pem('ca.crt') }), qr/^done\|/, 'one more order to that carrier');
# _wake(true): the dispatcher reads the new options now, not at its next
# idle check (shipsync.idle_check_ms, 10 s)
sql(q{BEGIN; UPDATE shipsync.provider SET options = options || '{"poll_interval_s": 1, "fee_pull_after": "1 second"}'
	WHERE name = 'ca_fees'; SELECT shipsync._wake(true); COMMIT;});
sql(q{INSERT INTO t_ca_fees SELECT g, 'c' || g FROM generate_series(1001, 1008) g});
ok(wait_until($node, q{SELECT count(*) = 9 FROM t_ca_fees WHERE waybill_no IS NOT NULL}, 30),
	'its orders shipped');
tls_sim_post('good', '/_sim/tracking/config', { url => 'http://127.0.0.1:9/unused', seed => 1 });
tls_sim_post('good', '/_sim/tracking/advance', { steps => 8 });
tls_sim_post('good', '/_sim/fees/config', { push => 0, pull => 1, seed => 1 });
ok(wait_until($node, q{SELECT count(*) > 0 FROM shipsync.tracking_event e
	JOIN shipsync.binding b USING (binding_id) WHERE b.tbl = 't_ca_fees'::regclass AND e.status = 'delivered'}, 60),
	'tracking polled over TLS: deliveries seen');
ok(wait_until($node, q{SELECT count(*) > 0 FROM shipsync.fee_line l
	JOIN shipsync.binding b USING (binding_id) WHERE b.tbl = 't_ca_fees'::regclass AND l.source = 'pull'}, 60),
	'fees pulled over TLS, with the provider\'s CA')
  or diag sql(q{SELECT string_agg(DISTINCT coalesce(last_result, '-'), '; ') FROM shipsync.fee_pull});

# ---- 2. the right CA, the wrong certificate
refused('othername', ship('othername', $othername, { ca_bundle => pem('ca.crt') }),
	'no alternative certificate subject name matches target host name', 'a certificate for another host name');
refused('expired', ship('expired', $expired, { ca_bundle => pem('ca.crt') }), 'certificate has expired',
	'an expired certificate');

# ---- 3. a server that requires a client certificate
like(ship('mtls', $mtls, { ca_bundle => pem('ca.crt'), client_cert => pem('client.crt'),
	client_key => pem('client.key') }), qr/^done\|/,
	'a client certificate and key: accepted by the server that requires one');
# (under TLS 1.3 the server refuses after our handshake ended: its alert,
# or a reset that lost it once the server closed with our request unread)
refused('mtls_none', ship('mtls_none', $mtls, { ca_bundle => pem('ca.crt') }),
	'(alert certificate required|asked for a client certificate, which the provider does not have)',
	'no client certificate, to the same server');
# the key it used was the secret: encrypted in shipsync.secret, not in the row
is(sql(q{SELECT p.options->'tls' ? 'client_cert' AND NOT p.options->'tls' ? 'client_key'
	AND p::text !~ 'PRIVATE KEY' FROM shipsync.provider p WHERE p.name = 'mtls'}), 't',
	'the provider row keeps the certificate, not the key');
is(sql(q{SELECT count(*) FROM shipsync.secret WHERE provider = 'mtls' AND name = 'client_key'
	AND position(convert_to('PRIVATE KEY', 'UTF8') in ciphertext) = 0}), '1',
	'the key is in shipsync.secret, encrypted');
# without its key secret the provider sends nothing and says why; once
# set_secret() gives the key back, it delivers again
my $offset = -s $node->logfile;
sql(q{DELETE FROM shipsync.secret WHERE provider = 'mtls' AND name = 'client_key'});
ok( $node->wait_for_log(
		qr/nothing is sent to provider "mtls": it has no secret "client_key", which its TLS client certificate needs/,
		$offset),
	'without its client_key secret, the provider sends nothing, and the log says why');
my $again = "FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id)"
  . " WHERE b.tbl = 't_mtls'::regclass AND o.order_key = '100'";
sql(q{INSERT INTO t_mtls VALUES (100, 'again')});
sleep 2;
is(sql("SELECT count(*) $again AND (o.state <> 'pending' OR o.attempts > 0)"), '0',
	'its new order waits, unsent');
my $key = pem('client.key');
sql(qq{SELECT shipsync.set_secret('mtls', 'client_key', \$k\$$key\$k\$)});
ok(wait_until($node, "SELECT count(*) = 1 $again AND o.state = 'done'", 30),
	'set_secret() gives the key back: delivered over mTLS');

# ---- 4. pinned public keys
like(ship('pin_ok', $good, { ca_bundle => pem('ca.crt'),
	pinned_public_key => pin('selfsigned.crt') . ';' . pin('server.crt') }), qr/^done\|/,
	'one of the pinned keys is the server\'s: accepted');
refused('pin_bad', ship('pin_bad', $good, { ca_bundle => pem('ca.crt'), pinned_public_key => pin('selfsigned.crt') }),
	'public key does not match pinned public key', 'a pinned key that is not the server\'s');

# ---- 5. minimum version
like(ship('v12', $tls12, { ca_bundle => pem('ca.crt') }), qr/^done\|/,
	'a TLS 1.2 server with the default min_version (1.2): accepted');
refused('v13', ship('v13', $tls12, { ca_bundle => pem('ca.crt'), min_version => '1.3' }), 'alert protocol version',
	'min_version 1.3 to a server that stops at TLS 1.2');

is(sql(q{SELECT count(*) FROM shipsync.providers p WHERE p::text ~ 'PRIVATE KEY'}), '0',
	'no view shows the client key');

# ---- 6. the system's CA bundle is read once, not once per connection.
# libcurl as Debian builds it has both a CA file (the bundle, 140-odd
# certificates) and a CA directory; with both set it parses the whole
# bundle into a new store for every connection (about 30 ms of CPU and
# 0.8 MB each here) and its shared store is never used.  Two dozen orders
# of a provider at the default (the system's CAs) to the private CA's
# server: every connection is refused, as in section 1, and the
# dispatcher reads the bundle's bytes from disk at most once meanwhile
# (/proc/PID/io rchar; every earlier default connection above already had
# it read), where it read them once per connection before.
my $bundle = `curl-config --ca`;
chomp $bundle;
ok(-s $bundle, "libcurl's default CA bundle is there ($bundle)");
my $bundle_size = -s $bundle;
my $dispatcher = sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'});
sub rchar
{
	my $io = PostgreSQL::Test::Utils::slurp_file("/proc/$dispatcher/io");
	$io =~ /^rchar: (\d+)/m or die "no rchar in /proc/$dispatcher/io";
	return $1;
}
sql(q{SELECT shipsync.create_provider('sysca', 'generic', '} . $good . q{',
		'{"timeout_ms": 5000, "max_attempts": 3}');
	CREATE TABLE t_sysca (id bigint PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('t_sysca', 'sysca', writeback => '{"tracking_number": "waybill_no"}');});
my $read_before = rchar();
sql(q{INSERT INTO t_sysca SELECT g, 'c' || g FROM generate_series(1, 24) g});
my $sysca = "FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id) WHERE b.tbl = 't_sysca'::regclass";
ok(wait_until($node, "SELECT count(*) = 24 $sysca AND o.state = 'dead'", 60), 'the two dozen orders are refused');
my $read = rchar() - $read_before;
is(sql("SELECT count(*) $sysca AND o.error_class = 'tls' AND o.attempts = 1
	AND o.last_error ~ 'unable to get local issuer certificate'"), '24',
	'each at its first attempt, by the system\'s CAs, which do not have the private CA (nor learned it from ca_bundle above)');
is(sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'}), $dispatcher,
	'the same dispatcher throughout');
cmp_ok($read, '<', 2 * $bundle_size,
	"24 connections read the CA bundle ($bundle_size bytes) at most once: the dispatcher read $read bytes");

$node->stop;
done_testing();
