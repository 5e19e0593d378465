# The receiver's life: the launcher starts it again when it exits; kill -9
# of the receiver and a server restart in the middle of a stream of pushes
# lose nothing that was acknowledged (every push answered 2xx is stored,
# every other one was answered 503 or got a connection error, and succeeds
# when resent); HTTPS with a test CA; a hot standby answers 503.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use ShipsyncTest;

my $SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
my $NSHIP = 4000;
my $load = "$FindBin::RealBin/../sim/push_load.py";
my $tmp = PostgreSQL::Test::Utils::tempdir();

my ($node, $port) = receiver_node('life', { allows_streaming => 1 }, 'restart_after_crash = on');
$node->safe_psql(
	'postgres', qq{
	CREATE EXTENSION pg_shipsync;
	CREATE SCHEMA crm;
	CREATE TABLE crm.tracked (id bigint PRIMARY KEY, waybill_no text, ship_status text);
	INSERT INTO crm.tracked (id, waybill_no) SELECT g, 'TRK' || lpad(g::text, 8, '0') FROM generate_series(1, $NSHIP) g;
	SELECT shipsync.create_provider('trk', 'generic', 'http://127.0.0.1:9', '{"webhook_secret": "$SECRET"}');
	SELECT shipsync.pause('trk');
	SELECT shipsync.attach('crm.tracked', 'trk', writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}');
	INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number)
	SELECT b.binding_id, g::text, b.provider_id, 'TRK' || lpad(g::text, 8, '0')
	FROM shipsync.binding b, generate_series(1, $NSHIP) g;
	ANALYZE;
});

sub healthy
{
	my ($p, $want, $tries) = @_;
	for (1 .. ($tries // 300))
	{
		return 1 if push_http($p, 'GET', '/healthz')->{status} == $want;
		usleep(100_000);
	}
	return 0;
}
ok(healthy($port, 200), 'the receiver is up');

# ---- the launcher starts it again ----------------------------------------------
my $pid = receiver_pid($node);
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( wait_until($node,
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync receiver' AND pid <> $pid"),
	'a terminated receiver is started again by the launcher');
ok(healthy($port, 200), 'and answers');

# Start push_load.py in the background; returns its pid.
sub start_load
{
	my ($out, @args) = @_;
	my $child = fork();
	die "fork: $!" unless defined $child;
	if ($child == 0)
	{
		exec('python3', $load, '--port', $port, '--provider', 'trk', '--secret', $SECRET,
			'--shipments', $NSHIP, '--out', $out, @args)
		  or die "exec: $!";
	}
	return $child;
}

# The numbers of a result file, by outcome
sub outcomes
{
	my ($file) = @_;
	my %by;
	for my $line (split /\n/, slurp_file($file))
	{
		my ($n, $status) = split / /, $line;
		push @{ $by{$status} }, $n;
	}
	return \%by;
}

sub stored_events
{
	my %in = map { $_ => 1 } split /\n/, $node->safe_psql('postgres',
		q{SELECT substr(event_key, 4) FROM shipsync.tracking_event});
	return \%in;
}

# One fault in the middle of a stream of pushes: every push answered 200 is
# stored; the others were 503 or connection errors; resent, they go in.
# The pusher is given a budget, not a total: it keeps pushing until 200
# pushes have had their outcome after the first one not answered 2xx, so the
# fault always lands inside the stream, however fast the pushes go (a fixed
# 2,500 were once all answered before a fast restart reached the receiver).
sub stream_with_fault
{
	my ($name, $first, $budget, $fault) = @_;
	my $out = "$tmp/$name.txt";
	my $child = start_load($out, '--first', $first, '--count', $budget, '--threads', 8, '--until-fault', 200);
	ok( wait_until($node,
			"SELECT count(*) > 300 FROM shipsync.tracking_event WHERE substr(event_key, 4)::int >= $first", 120),
		"$name: pushes are being taken");
	$fault->();
	waitpid($child, 0);
	$node->poll_query_until('postgres', 'SELECT true') or die "the server did not come back";
	is($?, 0, "$name: the pusher finished");
	my $by = outcomes($out);
	my @other = grep { $_ ne '200' } keys %$by;
	my @sent = sort { $a <=> $b } map { @{ $by->{$_} } } keys %$by;
	my $count = scalar(@sent);
	ok($count > 0 && $count < $budget && $sent[0] == $first && $sent[-1] == $first + $count - 1
		  && (grep { $sent[$_] != $first + $_ } 0 .. $#sent) == 0,
		"$name: the pusher stopped after the fault, and every push it sent got one outcome ($count of a budget of $budget)");
	ok(scalar(@{ $by->{200} // [] }) > 0, "$name: some were acknowledged before the fault");
	ok(scalar(@other) > 0 && (grep { !/^(503|error)$/ } @other) == 0,
		"$name: the others got 503 or a connection error: " . join(', ', map { "$_ x" . scalar(@{ $by->{$_} }) } @other));
	my $in = stored_events();
	my @lost = grep { !$in->{$_} } @{ $by->{200} // [] };
	is(scalar(@lost), 0, "$name: every push answered 200 is stored")
	  or diag("acknowledged but not stored: @lost[0 .. ($#lost < 9 ? $#lost : 9)]");
	ok(healthy($port, 200), "$name: the receiver answers again");
	my @again = sort { $a <=> $b } map { @{ $by->{$_} } } @other;
	open(my $fh, '>', "$tmp/$name.resend") or die;
	print $fh "$_\n" for @again;
	close($fh);
	my $child2 = start_load("$tmp/$name.resent", '--only', "$tmp/$name.resend", '--threads', 4);
	waitpid($child2, 0);
	my $by2 = outcomes("$tmp/$name.resent");
	is(scalar(@{ $by2->{200} // [] }), scalar(@again), "$name: each one resent is taken");
	is( $node->safe_psql('postgres',
			"SELECT count(*) FROM shipsync.tracking_event WHERE substr(event_key, 4)::int BETWEEN $first AND "
			  . ($first + $count - 1)),
		$count, "$name: all $count events stored, once each");
}

# ---- kill -9 of the receiver in the middle of a stream ---------------------------
stream_with_fault(
	'kill9', 0, 100000,
	sub {
		my $rpid = receiver_pid($node);
		kill 'KILL', $rpid;
		ok(1, "kill -9 of receiver $rpid");
	});

# ---- a server restart in the middle of a stream ----------------------------------
stream_with_fault(
	'restart', 200000, 100000,
	sub {
		$node->restart(fail_ok => 0);
		ok(1, 'the server restarted (fast shutdown)');
	});

# ---- HTTPS with a test CA ---------------------------------------------------------
my $ssl = "$tmp/ssl";
mkdir $ssl;
openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=shipsync test CA',
	'-keyout', "$ssl/ca.key", '-out', "$ssl/ca.pem");
openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', "$ssl/server.key",
	'-out', "$ssl/server.csr");
open(my $ext, '>', "$ssl/ext.cnf") or die;
print $ext "subjectAltName = IP:127.0.0.1\n";
close($ext);
openssl('x509', '-req', '-in', "$ssl/server.csr", '-CA', "$ssl/ca.pem", '-CAkey', "$ssl/ca.key",
	'-CAcreateserial', '-days', '2', '-extfile', "$ssl/ext.cnf", '-out', "$ssl/server.pem");
chmod 0644, "$ssl/server.key";
$node->append_conf('postgresql.conf',
	"shipsync.receiver_ssl_cert_file = '$ssl/server.pem'\nshipsync.receiver_ssl_key_file = '$ssl/server.key'\n");
my $log_offset = -s $node->logfile;
$node->restart;
ok($node->wait_for_log(qr/pg_shipsync receiver cannot listen: private key file .* must be owned/, $log_offset),
	'a key file readable by others is refused, as PostgreSQL refuses one');
chmod 0600, "$ssl/server.key";
ok($node->wait_for_log(qr/pg_shipsync receiver listening on 127\.0\.0\.1:$port \(https\)/, $log_offset),
	'with mode 0600 it listens, over HTTPS');

# a client of our CA, one with the system's CAs only, one speaking plain HTTP
my $py = <<'EOF';
import http.client, ssl, sys
port, mode = int(sys.argv[1]), sys.argv[2]
try:
    if mode == "plain":
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        ctx = ssl.create_default_context(cafile=sys.argv[3] if mode == "ca" else None)
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    c.request("GET", "/healthz")
    r = c.getresponse()
    print("%d %s" % (r.status, r.read().decode().strip()))
except ssl.SSLCertVerificationError as e:
    print("verify-failed")
except Exception as e:
    print("error " + type(e).__name__)
EOF
open(my $pf, '>', "$tmp/tls_get.py") or die;
print $pf $py;
close($pf);
my $answer = '';
for (1 .. 100)
{
	$answer = `python3 $tmp/tls_get.py $port ca $ssl/ca.pem`;
	chomp $answer;
	last if $answer eq '200 ok';
	usleep(100_000);
}
is($answer, '200 ok', 'HTTPS: healthz answers a client that trusts the test CA');
is(`python3 $tmp/tls_get.py $port system`, "verify-failed\n", 'a client that does not trust the CA refuses the certificate');
like(`python3 $tmp/tls_get.py $port plain`, qr/^error /, 'plain HTTP gets no answer');
my $tls_out = "$tmp/tls.txt";
my $child = start_load($tls_out, '--first', 400000, '--count', 20, '--threads', 2, '--tls-ca', "$ssl/ca.pem");
waitpid($child, 0);
is(scalar(@{ outcomes($tls_out)->{200} // [] }), 20, 'signed pushes over HTTPS: 200');

# ---- a hot standby answers 503 ------------------------------------------------------
$node->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'b', has_streaming => 1);
# the harness copies the backup with the umask's modes (0644), and the
# server refuses a pg_shipsync.key that others may read
chmod 0600, $standby->data_dir . '/pg_shipsync.key';
my $sport = PostgreSQL::Test::Cluster::get_free_port();
$standby->append_conf('postgresql.conf',
	"shipsync.receiver_listen = '127.0.0.1:$sport'\nshipsync.receiver_ssl_cert_file = ''\nshipsync.receiver_ssl_key_file = ''\n");
$standby->start;
ok(healthy($sport, 503), 'a standby: healthz 503');
like(push_http($sport, 'GET', '/healthz')->{content}, qr/recovery/, 'saying it is in recovery');
my $r = push_http($sport, 'POST', '/tracking/trk', sw_headers($SECRET, 's1', '{}'), '{}');
is($r->{status}, 503, 'a push to a standby: 503');
is($r->{headers}{'retry-after'}, '5', 'with Retry-After');
$standby->stop;

$node->stop;
done_testing();
