# ShipsyncTest.pm — shared helpers of the TAP suites: a node that preloads
# pg_shipsync, the carrier simulator, and small HTTP calls to inspect it.
package ShipsyncTest;

use strict;
use warnings;

use Cwd qw(abs_path);
use Digest::SHA qw(hmac_sha256 sha1_hex);
use File::Basename qw(dirname);
use HTTP::Tiny;
use JSON::PP;
use MIME::Base64 qw(encode_base64 decode_base64);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(usleep time);
use Exporter 'import';
use IO::Socket::INET;

our @EXPORT = qw(shipsync_node start_sim stop_sim sim_get sim_post wait_until
  setup_orders start_receiver flush_pushes receiver_node push_http sw_headers
  jdy_signed receiver_pid openssl test_ca test_certificate test_pin
  setup_sf_orders run_reconcile note_outbox_versions proc_stat cpu_seconds
  wait_settled wait_until_http push_raw);

my $here = dirname(abs_path(__FILE__));
my @started_sims;

# a test that dies early must not leave its simulator running
END
{
	for my $pid (@started_sims)
	{
		kill 'TERM', $pid if $pid && kill 0, $pid;
	}
}
my $sim_script = "$here/../sim/carrier_sim.py";

# A started node with pg_shipsync preloaded and a dispatcher in 'postgres'.
# Extra postgresql.conf lines may be passed, after a hash of options of
# init() (allows_streaming) if one is given.
sub shipsync_node
{
	my ($name, @conf) = @_;
	my %init = ref($conf[0]) eq 'HASH' ? %{ shift @conf } : ();
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%init);
	$node->append_conf(
		'postgresql.conf', join("\n",
			"shared_preload_libraries = 'pg_shipsync'",
			"shipsync.databases = 'postgres'",
			# the carrier simulator listens on 127.0.0.1, a loopback
			# address: refused unless shipsync.allowed_hosts allows it
			"shipsync.allowed_hosts = '127.0.0.1'",
			"max_worker_processes = 16",
			"log_min_messages = info",
			# no daily reconciliation: at its default time (03:00), a
			# server started within the hour after runs one at once, and
			# its pulls and ledger rows would land in the middle of tests
			# run then (040 and 041 test the daily run with a time of
			# their own)
			"shipsync.reconcile_at = ''",
			@conf)
		  . "\n");
	$node->start;
	return $node;
}

# Start the simulator on a free port; returns a handle with {port, pid}.
sub start_sim
{
	my (%opt) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir();
	my $portfile = "$dir/sim.port";
	my @cmd = ('python3', $sim_script, '--port', '0', '--port-file', $portfile);
	push @cmd, '--faults', encode_json($opt{faults}) if $opt{faults};
	push @cmd, '--latency-ms', $opt{latency_ms} if $opt{latency_ms};
	push @cmd, '--seed', ($opt{seed} // 1);
	push @cmd, @{ $opt{args} } if $opt{args};
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>', "$dir/sim.out");
		open(STDERR, '>&', \*STDOUT);
		exec(@cmd) or die "exec: $!";
	}
	for (1 .. 200)
	{
		last if -s $portfile;
		usleep(50_000);
	}
	push @started_sims, $pid;
	die "the carrier simulator did not start" unless -s $portfile;
	open(my $fh, '<', $portfile) or die;
	my $port = <$fh>;
	close $fh;
	chomp $port;
	return { pid => $pid, port => $port, url => "http://127.0.0.1:$port" };
}

sub stop_sim
{
	my ($sim) = @_;
	return unless $sim && $sim->{pid};
	kill 'TERM', $sim->{pid};
	waitpid($sim->{pid}, 0);
	$sim->{pid} = 0;
}

sub sim_get
{
	my ($sim, $path) = @_;
	my $r = HTTP::Tiny->new(timeout => 10)->get($sim->{url} . $path);
	die "GET $path: $r->{status} $r->{content}" unless $r->{success};
	return decode_json($r->{content});
}

sub sim_post
{
	my ($sim, $path, $data) = @_;
	my $r = HTTP::Tiny->new(timeout => 10)->post(
		$sim->{url} . $path,
		{
			headers => { 'Content-Type' => 'application/json' },
			content => encode_json($data // {})
		});
	die "POST $path: $r->{status} $r->{content}" unless $r->{success};
	return $r->{content} ? decode_json($r->{content}) : undef;
}

# The fields of /proc/PID/stat after the command in parentheses (the
# state first): [11] and [12] are the user and system time in clock ticks,
# [16] the nice value
sub proc_stat
{
	my ($pid) = @_;
	my $stat = PostgreSQL::Test::Utils::slurp_file("/proc/$pid/stat");
	$stat =~ s/^.*\) //s;
	return split / /, $stat;
}

# The CPU time of a process so far (user and system), in seconds
my $clk_tck = `getconf CLK_TCK`;
chomp $clk_tck;
$clk_tck = 100 unless $clk_tck =~ /^\d+$/ && $clk_tck > 0;
sub cpu_seconds
{
	my @f = proc_stat($_[0]);
	return ($f[11] + $f[12]) / $clk_tck;
}

# Poll a SQL query until it returns 't'; returns true on success.
sub wait_until
{
	my ($node, $sql, $timeout, $db) = @_;
	$timeout //= 60;
	my $deadline = time() + $timeout;
	while (time() < $deadline)
	{
		my $v = $node->safe_psql($db // 'postgres', $sql);
		return 1 if $v eq 't';
		usleep(100_000);
	}
	return 0;
}

# Wait until the intents of the orders whose keys keys_sql lists (quoted,
# comma-separated) are settled: none left in the inbox, where capture puts
# them until the dispatcher moves them, and none in the outbox still to be
# sent or answered.  Returns true on success.
sub wait_settled
{
	my ($node, $keys_sql, $timeout) = @_;
	return wait_until($node,
		"SELECT NOT EXISTS (SELECT 1 FROM shipsync.outbox WHERE order_key IN ($keys_sql)"
		  . " AND state IN ('pending', 'retrying', 'in_flight'))"
		  . " AND NOT EXISTS (SELECT 1 FROM shipsync.inbox WHERE order_key IN ($keys_sql))",
		$timeout // 60);
}

# The extension, a provider named 'sim' at the simulator, and crm.orders
# attached to it with the usual write-back columns.
sub setup_orders
{
	my ($node, $sim, $options, $db) = @_;
	$options //= '{"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 500}';
	$node->safe_psql(
		$db // 'postgres', qq{
		CREATE EXTENSION IF NOT EXISTS pg_shipsync;
		CREATE SCHEMA crm;
		CREATE TABLE crm.orders (
			id bigserial PRIMARY KEY,
			customer text NOT NULL,
			phone text,
			address text,
			waybill_no text,
			ship_status text,
			fee numeric,
			label text);
		SELECT shipsync.create_provider('sim', 'generic', '$sim->{url}', '$options');
		SELECT shipsync.attach('crm.orders', 'sim', writeback => '{"tracking_number": "waybill_no",
			"status": "ship_status", "fee_total": "fee", "label_url": "label"}');
	});
}

# A trigger of the test's own on shipsync.outbox that notes every row
# version written there, in order (n): its state before and after, whether
# it holds a request, and its transaction.  In table public.seen.
sub note_outbox_versions
{
	my ($node) = @_;
	$node->safe_psql(
		'postgres', q{
		CREATE TABLE public.seen (
			id bigint, op text, order_key text, old_state text, new_state text,
			has_request boolean, xid xid8 DEFAULT pg_current_xact_id(), n bigserial);
		CREATE FUNCTION public.note() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO public.seen (id, op, order_key, old_state, new_state, has_request)
			VALUES (NEW.id, NEW.op, NEW.order_key,
				CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END, NEW.state,
				NEW.request_body IS NOT NULL);
			RETURN NULL;
		END $$;
		CREATE TRIGGER note AFTER INSERT OR UPDATE ON shipsync.outbox
			FOR EACH ROW EXECUTE FUNCTION public.note();
	});
}

# The extension, SF Express at the simulator's gateway as provider 'sf'
# (SF's documented partner and check word, a sender, a monthly card, and the
# JSON members of $extra, e.g. '"timeout_ms": 2000'), and table orders with
# the columns of the built-in sf_express profile attached to it.
sub setup_sf_orders
{
	my ($node, $sim, $extra) = @_;
	$node->safe_psql('postgres', qq{
		CREATE EXTENSION IF NOT EXISTS pg_shipsync;
		SELECT shipsync.create_provider('sf', 'sf_express', '$sim->{url}/sf/std/service', '{$extra,
			"auth": {"type": "sf_express", "partner_id": "SHOP1", "checkword": "fjcg5PGKaNpPSHFAZ4QsCOkV71R3zVci"},
			"sender": {"name": "张三丰", "phone": "+86 170 0680 5888", "province": "湖北省",
					   "city": "十堰市", "district": "武当山风景区", "address": "十堰市丹江口市公园路155号"},
			"monthly_card": "7551234567"}');
		CREATE TABLE orders (
			order_no text PRIMARY KEY,
			receiver_name text, receiver_phone text, receiver_province text, receiver_city text,
			receiver_district text, receiver_address text,
			cargo_name text, quantity integer, weight_kg numeric, amount numeric, remark text,
			waybill text, ship_status text);
		SELECT shipsync.attach('orders', 'sf',
			writeback => '{"tracking_number": "waybill", "status": "ship_status"}');
	});
}

# Start a reconciliation run of $provider and wait until it is done or
# failed; returns its id, and whether it ended in time.
sub run_reconcile
{
	my ($node, $provider, $timeout) = @_;
	my $run = $node->safe_psql('postgres', "SELECT shipsync.reconcile('$provider')");
	my $ended = wait_until($node,
		"SELECT state IN ('done', 'failed') FROM shipsync.reconcile_run WHERE run_id = $run",
		$timeout // 120);
	return ($run, $ended);
}

# The shop's webhook endpoint (test/sim/receiver.py): every push it gets
# goes to shipsync.ingest_tracking($provider) on $node (or to $function,
# e.g. 'ingest_fees').  Returns (pid, port); the caller stops it with kill
# 'TERM' and waitpid.
sub start_receiver
{
	my ($node, $provider, $function) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir();
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>', "$dir/receiver.out");
		open(STDERR, '>&', \*STDOUT);
		exec('python3', "$here/../sim/receiver.py", '--provider', $provider,
			'--psql', 'psql', '--dsn', $node->connstr('postgres'), '--port-file', "$dir/port",
			'--function', $function // 'ingest_tracking')
		  or die "exec: $!";
	}
	for (1 .. 200)
	{
		last if -s "$dir/port";
		usleep(50_000);
	}
	die "the receiver did not start" unless -s "$dir/port";
	my $port = PostgreSQL::Test::Utils::slurp_file("$dir/port");
	chomp $port;
	return ($pid, $port);
}

# Wait until the simulator has sent every push (each one goes through the
# receiver and ingest_tracking(): slow on a loaded machine, hence a timeout
# of our own rather than sim_post's 10 s).
sub flush_pushes
{
	my ($sim) = @_;
	my $r = HTTP::Tiny->new(timeout => 300)->post("$sim->{url}/_sim/tracking/flush",
		{ headers => { 'Content-Type' => 'application/json' }, content => '{}' });
	die "flush: $r->{status} $r->{content}" unless $r->{success};
	my $left = decode_json($r->{content})->{left};
	die "flush: $left pushes still queued" if $left;
}

# A node whose receiver of pushes (shipsync.receiver_listen) listens on a
# free port of 127.0.0.1; returns ($node, $port).  Extra conf lines may be
# passed, after a hash of init() options as for shipsync_node.
sub receiver_node
{
	my ($name, @conf) = @_;
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my @init = ref($conf[0]) eq 'HASH' ? (shift @conf) : ();
	my $node = shipsync_node($name, @init, "shipsync.receiver_listen = '127.0.0.1:$port'", @conf);
	return ($node, $port);
}

# The receiver's pid, or '' when it does not run.
sub receiver_pid
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync receiver'");
}

# One HTTP request to the receiver: returns HTTP::Tiny's answer (status
# 599 for a connection error).  $http (an HTTP::Tiny) keeps a connection
# alive between calls; a new one is made when it is not given.
sub push_http
{
	my ($port, $method, $path, $headers, $body, $http) = @_;
	$http //= HTTP::Tiny->new(timeout => 60);
	return $http->request($method, "http://127.0.0.1:$port$path",
		{ headers => $headers // {}, defined $body ? (content => $body) : () });
}

# Wait until GET $path of the receiver on $port answers $want (20 s at
# most): 1 when it did, 0 when it did not.
sub wait_until_http
{
	my ($port, $path, $want) = @_;
	for (1 .. 200)
	{
		return 1 if push_http($port, 'GET', $path)->{status} == $want;
		usleep(100_000);
	}
	return 0;
}

# A POST written on a socket of its own, not waited for: returns the
# socket, to read its answer from (pushes that must be in the receiver
# together).
sub push_raw
{
	my ($port, $path, $hdrs, $body) = @_;
	my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 10) or die "connect: $!";
	$s->autoflush(1);
	my $text = "POST $path HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: " . length($body) . "\r\n";
	$text .= "$_: $hdrs->{$_}\r\n" for sort keys %$hdrs;
	print $s "$text\r\n$body";
	return $s;
}

# Standard Webhooks headers for a body signed now (or at $ts) with a whsec_
# secret, computed here from the specification.
sub sw_headers
{
	my ($secret, $id, $body, $ts) = @_;
	$ts //= int(time());
	(my $key = $secret) =~ s/^whsec_//;
	my $sig = encode_base64(hmac_sha256("$id.$ts.$body", decode_base64($key)), '');
	return {
		'webhook-id' => $id,
		'webhook-timestamp' => "$ts",
		'webhook-signature' => "v1,$sig",
		'Content-Type' => 'application/json'
	};
}

# A 简道云 data push signed from its documented formula: lowercase hex
# SHA-1 of nonce:payload:secret:timestamp.  Returns (path suffix with the
# query, headers).
sub jdy_signed
{
	my ($secret, $body, $deliver, $ts, $nonce) = @_;
	$ts //= int(time());
	$nonce //= sprintf('%08x', int(rand(2**31)));
	my %h = (
		'X-JDY-Signature' => sha1_hex("$nonce:$body:$secret:$ts"),
		'X-JDY-DeliverId' => $deliver,
		'Content-Type' => 'application/json');
	return ("?nonce=$nonce&timestamp=$ts", \%h);
}

# Run the openssl command; its standard output, or die with its errors.
sub openssl
{
	my @args = @_;
	my ($stdout, $stderr);
	IPC::Run::run([ 'openssl', @args ], '>', \$stdout, '2>', \$stderr)
	  or die "openssl @args: $stderr";
	return $stdout;
}

my $ec_key = [ '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes' ];

# A test CA in $dir: ca.key and ca.crt.
sub test_ca
{
	my ($dir) = @_;
	openssl('req', '-x509', @$ec_key, '-keyout', "$dir/ca.key", '-out', "$dir/ca.crt",
		'-days', '30', '-subj', '/CN=shipsync test CA');
}

# A key and a certificate signed by test_ca()'s CA (or self-signed with
# self_signed => 1) in $dir: $name.key, $name.crt, with the subjectAltName
# given (none if empty), valid for days => N (30; -1: expired).
sub test_certificate
{
	my ($dir, $name, $san, %opt) = @_;
	if ($opt{self_signed})
	{
		openssl('req', '-x509', @$ec_key, '-keyout', "$dir/$name.key", '-out', "$dir/$name.crt",
			'-days', '30', '-subj', "/CN=$name", '-addext', "subjectAltName=$san");
		return;
	}
	openssl('req', @$ec_key, '-keyout', "$dir/$name.key", '-out', "$dir/$name.csr", '-subj', "/CN=$name");
	open(my $fh, '>', "$dir/$name.ext") or die "$dir/$name.ext: $!";
	print $fh "subjectAltName=$san\n" if $san;
	close $fh;
	openssl('x509', '-req', '-in', "$dir/$name.csr", '-CA', "$dir/ca.crt", '-CAkey', "$dir/ca.key",
		'-CAcreateserial', '-out', "$dir/$name.crt", '-days', $opt{days} // 30,
		'-extfile', "$dir/$name.ext");
}

# The pin of $dir/$crt's public key for option tls: sha256// and the base64
# SHA-256 of the key.
sub test_pin
{
	my ($dir, $crt) = @_;
	my $pub = openssl('x509', '-in', "$dir/$crt", '-pubkey', '-noout');
	my ($der, $err);
	IPC::Run::run([ 'openssl', 'pkey', '-pubin', '-outform', 'der' ], '<', \$pub, '>', \$der, '2>', \$err)
	  or die $err;
	return 'sha256//' . encode_base64(Digest::SHA::sha256($der), '');
}

1;
