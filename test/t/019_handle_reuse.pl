# The dispatcher reuses libcurl easy handles across transfers (http.c keeps
# a pool of them): a handle that served one provider then serves another,
# and nothing of the first provider's TLS options may come with it.  Seven
# providers with different TLS options take turns on one dispatcher, over
# enough orders at once that the handles go round among them.  Proves, on
# every request:
#   1. a provider without a client certificate never presents one (to a
#      server that asks for one but accepts none), though its handles
#      presented the other provider's before;
#   2. a provider without a ca_bundle never trusts another provider's CA;
#   3. a pinned key that is not the server's is always refused, and a
#      provider without pins is never held to another provider's pins;
#   4. min_version 1.3 stays with its provider: a TLS 1.2 server is
#      refused to it and accepted to a provider without it;
#   5. keep-alive connections are still reused: a provider with
#      max_inflight 2 opens at most 2 connections, over HTTPS with a client
#      certificate (each of them presenting it) and over plain HTTP;
#   6. no connection resumes a TLS session that a handle kept from an
#      earlier transfer (a reset keeps a handle's session cache).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $rounds = 15;
my $dir = PostgreSQL::Test::Utils::tempdir();

test_ca($dir);
test_certificate($dir, 'server', 'IP:127.0.0.1');
test_certificate($dir, 'client', '');
test_certificate($dir, 'other', 'IP:127.0.0.1', self_signed => 1);

sub pem { return PostgreSQL::Test::Utils::slurp_file("$dir/$_[0]"); }

# sha256// and the base64 SHA-256 of a certificate's public key
sub pin { return test_pin($dir, $_[0]); }

my %sims;
END { local $?; stop_sim($_) for values %sims; }
sub tls_sim
{
	my ($name, @more) = @_;
	$sims{$name} = start_sim(args => [ '--tls-cert', "$dir/server.crt", '--tls-key', "$dir/server.key", @more ]);
	return "https://127.0.0.1:$sims{$name}{port}";
}

# the connection counters of a TLS simulator (this request's own connection
# included, without a client certificate)
sub connections
{
	my ($name) = @_;
	my ($out, $err);
	IPC::Run::run([ 'curl', '-sSf', '--cacert', "$dir/ca.crt",
		"https://127.0.0.1:$sims{$name}{port}/_sim/connections" ], '>', \$out, '2>', \$err)
	  or die "GET /_sim/connections: $err";
	return decode_json($out);
}

my @optional_cert = ('--tls-client-ca', "$dir/ca.crt", '--tls-client-optional');
my $with_cert_url = tls_sim('with_cert', @optional_cert);
my $others_url = tls_sim('others', @optional_cert);
my $tls12_url = tls_sim('tls12', '--tls-max', '1.2');
$sims{plain} = start_sim();

my $node = shipsync_node('handle_reuse');
sub sql { return $node->safe_psql('postgres', $_[0]); }
sql('CREATE EXTENSION pg_shipsync');

my $ca = pem('ca.crt');
my %providers = (
	with_cert => [ $with_cert_url, { ca_bundle => $ca, client_cert => pem('client.crt'),
		client_key => pem('client.key'), pinned_public_key => pin('server.crt') } ],
	no_cert => [ $others_url, { ca_bundle => $ca } ],
	no_ca => [ $others_url, undef ],
	bad_pin => [ $others_url, { ca_bundle => $ca, pinned_public_key => pin('other.crt') } ],
	tls13 => [ $tls12_url, { ca_bundle => $ca, min_version => '1.3' } ],
	tls12 => [ $tls12_url, { ca_bundle => $ca } ],
	plain => [ $sims{plain}{url}, undef ],);

for my $name (sort keys %providers)
{
	my ($url, $tls) = @{ $providers{$name} };
	my $opts = { timeout_ms => 5000, backoff_base_ms => 50, backoff_max_ms => 200, max_attempts => 3,
		max_inflight => 2 };
	$opts->{tls} = $tls if $tls;
	my $json = JSON::PP->new->canonical->encode($opts);
	sql(qq{SELECT shipsync.create_provider('$name', 'generic', '$url', \$json\$$json\$json\$);
		CREATE TABLE t_$name (id bigint PRIMARY KEY, customer text, waybill_no text);
		SELECT shipsync.attach('t_$name', '$name', writeback => '{"tracking_number": "waybill_no"}');});
}

# every provider's orders at once, committed round by round
my $inserts = 'BEGIN;';
for my $r (1 .. $rounds)
{
	$inserts .= "INSERT INTO t_$_ VALUES ($r, 'c$r');" for sort keys %providers;
}
sql("$inserts COMMIT;");

my $intents = "FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id)";
ok( wait_until(
		$node, "SELECT count(*) = " . ($rounds * keys %providers)
		  . " $intents WHERE o.state IN ('done', 'dead')", 60),
	'every order is done or dead')
  or diag(sql("SELECT string_agg(b.tbl::text || ' ' || o.state, ', ') $intents WHERE o.state NOT IN ('done', 'dead')"));

# how the orders of one provider ended: "n state|error_class|attempts|error"
# for each distinct outcome
sub outcomes
{
	my ($name) = @_;
	return sql("SELECT string_agg(n || ' ' || outcome, '; ' ORDER BY outcome) FROM (SELECT count(*) AS n,"
		  . " o.state || '|' || coalesce(o.error_class, '') || '|' || o.attempts || '|' || coalesce(o.last_error, '')"
		  . " AS outcome $intents WHERE b.tbl = 't_$name'::regclass GROUP BY 2) s");
}
my $all_done = qr/^$rounds done\|\|1\|$/;
sub all_refused { my ($why) = @_; return qr/^$rounds dead\|tls\|1\|[^;]*$why[^;]*$/; }

# ---- 1. client certificates
like(outcomes('with_cert'), $all_done, 'with a client certificate (and the right pin): every order delivered');
like(outcomes('no_cert'), $all_done, 'without one, to a server that asks for one: every order delivered');
my $others = connections('others');
is($others->{client_certs}, 0, 'no connection to that server presented a client certificate');
ok($others->{connections} > $rounds, "that server saw connections from three providers ($others->{connections})");

# ---- 2. CA bundles
like(outcomes('no_ca'), all_refused('SSL certificate problem'),
	'without a ca_bundle, the private CA is never trusted');

# ---- 3. pinned keys
like(outcomes('bad_pin'), all_refused('public key does not match pinned public key'),
	'a pinned key that is not the server\'s: refused every time');
# the server asks for a client certificate (optionally): the refusal is
# still ours, and says so without blaming a missing certificate
unlike(outcomes('bad_pin'), qr/asked for a client certificate/,
	'a wrong pin is not reported as a client certificate the provider lacks');
unlike(outcomes('no_ca'), qr/asked for a client certificate/,
	'an unknown CA is not reported as a client certificate the provider lacks');

# ---- 4. minimum version
like(outcomes('tls13'), all_refused('alert protocol version'), 'min_version 1.3 to a TLS 1.2 server: refused every time');
like(outcomes('tls12'), $all_done, 'the default min_version to the same server: every order delivered');

# ---- 5. keep-alive connections
my $with_cert = connections('with_cert');
ok($with_cert->{connections} - 1 <= 2,
	"with a client certificate: $rounds orders over at most 2 connections (" . ($with_cert->{connections} - 1) . ')');
is($with_cert->{client_certs}, $with_cert->{connections} - 1, 'each of them presented the client certificate');
my $plain = sim_get($sims{plain}, '/_sim/connections');
ok($plain->{connections} - 1 <= 2,
	"plain HTTP: $rounds orders over at most 2 connections (" . ($plain->{connections} - 1) . ')');

# ---- 6. TLS sessions
is(join(',', map { connections($_)->{resumed} } qw(with_cert others tls12)), '0,0,0',
	'no connection resumed a TLS session');

$node->stop;
done_testing();
