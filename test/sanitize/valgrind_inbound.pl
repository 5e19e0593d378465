# What comes in, under valgrind (test/sanitize/run valgrind, after
# valgrind_delivery.pl): the bytes of carriers' answers and of pushes, the
# carrier's statement, and a reconciliation run.
#
# Run by test/sanitize/run, whose postgres wrapper starts the postmaster --
# and so every process it forks: the dispatcher, the receiver, the
# reconcile worker, every backend -- under memcheck, one log per process,
# here in $SHIPSYNC_VG_DIR/inbound (valgrind_delivery.pl's logs stay in
# $SHIPSYNC_VG_DIR).  It goes through:
#   - the dispatcher reading a carrier's answer in GBK, said so in its
#     Content-Type (iconv), and one with a UTF-8 byte order mark;
#   - the receiver: a signed tracking push, a signed CRM push, a gzip'd
#     push refused with 415, a push over shipsync.max_push_bytes (413), a
#     chunked one growing over it, a body that is not UTF-8;
#   - import_statement() of a CSV statement (a BOM, CRLF, Chinese
#     headers, a waybill no shipment has);
#   - the reconcile worker's run against the simulator.
# Each assertion waits for an outcome, never for a time.  Then the server
# stops cleanly, and every process's log must hold no error.
#
# Without $SHIPSYNC_VG_DIR it is a plain test of the same paths.
use strict;
use warnings;
use utf8;
use Encode qw(encode encode_utf8 decode_utf8);
use FindBin;
use lib "$FindBin::RealBin/../t";
use IO::Socket::INET;
use JSON::PP;
use MIME::Base64 qw(encode_base64);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $vg_dir = $ENV{SHIPSYNC_VG_DIR};
if ($vg_dir)
{
	# the wrapper reads it when the postmaster starts: this node's logs
	# apart from valgrind_delivery.pl's
	$vg_dir = "$vg_dir/inbound";
	mkdir $vg_dir or die "mkdir $vg_dir: $!" unless -d $vg_dir;
	$ENV{SHIPSYNC_VG_DIR} = $vg_dir;
}
my $patience = $vg_dir ? 600 : 60;    # seconds for one outcome
my $SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';

my $sim = start_sim(latency_ms => 2);
END { local $?; stop_sim($sim) if $sim; }
my ($node, $port) = receiver_node('vg_inbound',
	'shipsync.max_push_bytes = 65536',
	# a process under valgrind is slow to read what it is sent
	'shipsync.receiver_header_timeout_ms = 60000',
	'shipsync.receiver_body_timeout_ms = 60000');
sub sql { return decode_utf8($node->safe_psql('postgres', encode_utf8($_[0]))); }

setup_orders($node, $sim,
	qq({"timeout_ms": 60000, "backoff_base_ms": 50, "backoff_max_ms": 500, "max_attempts": 4,
	    "webhook_secret": "$SECRET"}));
sql(q{
	CREATE TABLE crm.leads (crm_id text PRIMARY KEY, customer text, amount numeric);
	INSERT INTO shipsync.field_map (profile, direction, target_path, source, transform, required) VALUES
		('zoho', 'crm_in', 'crm_id', 'id', 'identity', true),
		('zoho', 'crm_in', 'customer', 'customer', 'trim', true),
		('zoho', 'crm_in', 'amount', 'amount', 'to_number', false);
});
sql(qq{SELECT shipsync.create_crm_source('zoho', 'generic', 'crm.leads',
	'{"secret": "$SECRET", "key_column": "crm_id"}')});

# ---- carriers' answers: GBK (iconv) and a byte order mark --------------------
my $gbk = encode('gbk', '{"id":"shp_g1","tracking_number":"VGGBK0001","status":"運輸中，已揽收",'
	  . '"fees":[{"type":"freight","amount":"12.50","currency":"CNY"}]}');
my $bom = "\xEF\xBB\xBF"
  . '{"id":"shp_b1","tracking_number":"VGBOM0001","status":"pre_transit",'
  . '"fees":[{"type":"freight","amount":"12.50","currency":"CNY"}]}';
sim_post($sim, '/_sim/faults', { rules => [
	{ fault => 'status', status => 201, path => '^/shipments$', match_order_ref => '^1$',
	  body_base64 => encode_base64($gbk, ''), content_type => 'application/json; charset=GBK' },
	{ fault => 'status', status => 201, path => '^/shipments$', match_order_ref => '^2$',
	  body_base64 => encode_base64($bom, '') } ] });
sql(q{INSERT INTO crm.orders (customer, address) SELECT '张伟 ' || g, '上海市' || g || '号'
	FROM generate_series(1, 4) g});
ok(wait_settled($node, "'1', '2', '3', '4'", $patience), 'the orders settled');
is(sql(q{SELECT string_agg(id || ':' || coalesce(waybill_no, '-'), ' ' ORDER BY id) FROM crm.orders
	WHERE id <= 2}),
	'1:VGGBK0001 2:VGBOM0001', 'an answer in GBK and one with a BOM: both recorded');
is(sql(q{SELECT count(*) FROM crm.orders WHERE waybill_no IS NULL}), '0', 'every order has its waybill');

# ---- the receiver ------------------------------------------------------------------
ok(wait_until_http($port, '/healthz', 200), 'the receiver is ready');
my $ev = '{"events": [{"id": "vg-e1", "tracking_number": "VGBOM0001", "status": "in_transit",'
  . ' "occurred_at": "2026-03-01T08:00:00Z"}]}';
my $r = push_http($port, 'POST', '/tracking/sim', sw_headers($SECRET, 'vg_t1', $ev), $ev);
is($r->{status}, 200, 'a signed tracking push: 200');
is(sql(q{SELECT ship_status FROM crm.orders WHERE id = 2}), 'in_transit', 'its status is on the order');

my $crm = encode_utf8('{"type": "order.created", "data": {"id": "VG-1", "customer": " 王芳 ", "amount": "12.5"}}');
$r = push_http($port, 'POST', '/crm/zoho', sw_headers($SECRET, 'vg_c1', $crm), $crm);
is($r->{status}, 200, 'a signed CRM push: 200');
is(sql(q{SELECT customer || ' ' || amount FROM crm.leads WHERE crm_id = 'VG-1'}), '王芳 12.5',
	'the record is written');

my $zg = '{"type": "order.created", "data": {"id": "VG-GZ", "customer": "Gzip"}}';
$r = push_http($port, 'POST', '/crm/zoho',
	{ %{ sw_headers($SECRET, 'vg_gz', $zg) }, 'Content-Encoding' => 'gzip' }, "\x1f\x8b\x08\x00" . ("\0" x 20));
is($r->{status}, 415, 'a gzip-encoded push: 415');

my $big = '{"events": [], "pad": "' . ('x' x 70000) . '"}';
$r = push_http($port, 'POST', '/tracking/sim', sw_headers($SECRET, 'vg_big', $big), $big);
is($r->{status}, 413, 'a push over shipsync.max_push_bytes: 413');

sub raw_answer
{
	my ($text) = @_;
	my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => $patience) or die "connect: $!";
	$s->autoflush(1);
	print $s $text;
	my $answer = '';
	while (sysread($s, my $buf, 65536)) { $answer .= $buf; }
	close($s);
	return $answer;
}
my $chunk = 'x' x 30000;
like(raw_answer("POST /tracking/sim HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
		  . join('', map { sprintf("%x\r\n%s\r\n", length($chunk), $chunk) } 1 .. 3) . "0\r\n\r\n"),
	qr{^HTTP/1\.1 413 }, 'a chunked push growing over the limit: 413');
like(raw_answer("POST /tracking/sim HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n\xff\xfe{}"),
	qr{^HTTP/1\.1 400 }, 'a body that is not UTF-8: 400');

# ---- a carrier's statement --------------------------------------------------------
my $csv = "\x{feff}运单号,费用类型,金额,币种,费用编号\r\n"
  . "VGGBK0001,freight,12.50,CNY,F-1\r\n"
  . "VGBOM0001,freight,13.10,CNY,F-2\r\n"
  . "\"VGNONE0001\",\"freight\",\"9.00\",CNY,F-3\r\n";
my $st = JSON::PP->new->decode(sql(qq{SELECT shipsync.import_statement('sim', \$csv\$$csv\$csv\$,
	options => '{"period": "2026-03", "columns": {"tracking_number": "运单号", "type": "费用类型",
		"amount": "金额", "currency": "币种", "key": "费用编号"}}')}));
is($st->{lines}, 3, 'the statement imported, its 3 lines');
is(sql(q{SELECT count(*) FROM shipsync.fee_line WHERE source = 'statement'}), '3', 'and stored');

# ---- the reconcile worker -----------------------------------------------------
my ($run, $ended) = run_reconcile($node, 'sim', $patience);
ok($ended, "reconciliation run $run ended");
is(sql("SELECT state || '/' || coalesce(error, '') FROM shipsync.reconcile_run WHERE run_id = $run"), 'done/',
	'and is done');

my $receiver = receiver_pid($node);
ok($receiver, "the receiver ran throughout (PID $receiver)");
$node->stop('fast');

# valgrind's verdict, one log per process; the receiver's must be there
SKIP:
{
	skip 'not under valgrind (SHIPSYNC_VG_DIR unset)', 3 unless $vg_dir;
	my (%errors, $summaries);
	ok(-e "$vg_dir/vg.$receiver.log" && slurp_file("$vg_dir/vg.$receiver.log") =~ /ERROR SUMMARY: \d+ errors/,
		"valgrind watched the receiver to its exit (PID $receiver)");
	for my $f (glob("$vg_dir/vg.*.log"))
	{
		my $text = slurp_file($f);
		my ($pid) = $f =~ /vg\.(\d+)\.log$/;
		$summaries++ if $text =~ /ERROR SUMMARY: \d+ errors/;
		my $n = () = $text =~ /VGERROR-BEGIN/g;
		$errors{$pid} = $n if $n;
		diag("valgrind, PID $pid:\n" . substr($text, 0, 8000)) if $n;
	}
	ok($summaries, "valgrind watched the server's processes to their exit ($summaries logs)");
	is(join(', ', map { "PID $_: $errors{$_}" } sort keys %errors), '',
		'valgrind: no error in any process of the server');
}

done_testing();
