# The receiver of pushes: every route and every answer it gives, the
# signatures of every kind good and forged (the 简道云 one computed here
# from its documented formula, Salesforce's published messages), a CRM
# source's secret rotated, duplicates, the body and time limits, the
# per-client rate, the bounded queue, and no thread in the process.  Its life across crashes and restarts, TLS and
# standbys: 031_receiver_life.pl.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use Digest::MD5 qw(md5_hex);
use HTTP::Tiny;
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ShipsyncTest;

my $SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
my $vectors = "$FindBin::RealBin/../vectors";

sub slurp_raw
{
	my ($f) = @_;
	open(my $fh, '<:raw', $f) or die "$f: $!";
	local $/;
	return scalar <$fh>;
}

sub urlencode
{
	my ($s) = @_;
	$s =~ s/([^A-Za-z0-9\-._~])/sprintf('%%%02X', ord($1))/ge;
	return $s;
}

my ($node, $port) = receiver_node('receiver',
	'shipsync.max_push_bytes = 65536',
	'shipsync.receiver_header_timeout_ms = 2000',
	'shipsync.receiver_body_timeout_ms = 2000');

# before the extension: up, but not ready, and says why
ok(wait_until($node, "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync receiver'"),
	'the launcher starts the receiver');
my $r = push_http($port, 'GET', '/healthz');
is($r->{status}, 503, 'healthz: 503 before CREATE EXTENSION');
like($r->{content}, qr/not installed/, 'and says the extension is missing');
$r = push_http($port, 'POST', '/tracking/trk', {}, '{}');
is($r->{status}, 503, 'a push before CREATE EXTENSION: 503');
is($r->{headers}{'retry-after'}, '5', 'with Retry-After');

# no thread ever runs in the receiver
my $pid = receiver_pid($node);
like(slurp_file("/proc/$pid/status"), qr/^Threads:\s+1$/m, 'the receiver process has one thread');

$node->safe_psql(
	'postgres', qq{
	CREATE EXTENSION pg_shipsync;
	CREATE SCHEMA crm;
	CREATE TABLE crm.orders (id bigserial PRIMARY KEY, crm_id text UNIQUE, customer text,
		amount numeric, waybill_no text, ship_status text);
	CREATE TABLE crm.contacts (sf_id text PRIMARY KEY, first_name text, last_name text, email text);
	CREATE TABLE crm.leads (sf_id text PRIMARY KEY, first_name text, company text, city text);
	SELECT shipsync.create_provider('trk', 'generic', 'http://127.0.0.1:9', '{"webhook_secret": "$SECRET"}');
	SELECT shipsync.create_provider('kd', 'kuaidi100', 'https://poll.kuaidi100.example',
		'{"webhook_secret": "salt-8f2c", "auth": {"type": "kuaidi100", "customer": "C", "key": "K"},
		  "company": "yuantong", "callback_url": "https://shop.example/tracking/kd"}');
	SELECT shipsync.create_provider('sfx', 'sf_express', 'https://sf.example',
		'{"accept_unsigned_pushes": true, "auth": {"type": "sf_express", "partner_id": "P", "checkword": "cw"}}');
	SELECT shipsync.pause('trk');
	SELECT shipsync.attach('crm.orders', 'trk', writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}');
	INSERT INTO crm.orders (customer) SELECT 'c' || g FROM generate_series(1, 3) g;
	INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number)
	SELECT b.binding_id, o.id::text, p.provider_id, t.tn
	FROM shipsync.binding b, crm.orders o, shipsync.provider p,
		(VALUES ('trk', 1, 'TRK1'), ('kd', 2, 'YT6186594166532'), ('sfx', 3, 'SF7444400031887')) t(pn, oid, tn)
	WHERE p.name = t.pn AND o.id = t.oid;
	-- CRM sources: a 简道云 form, Salesforce contacts and leads, a generic (Zoho) one
	INSERT INTO shipsync.field_map (profile, direction, target_path, source, transform, required) VALUES
		('jdy', 'crm_in', 'crm_id', '_id', 'identity', true),
		('jdy', 'crm_in', 'customer', '_widget_1511937891154', 'trim', true),
		('jdy', 'crm_in', 'amount', '_widget_1511937830425', 'to_number', false),
		('zoho', 'crm_in', 'crm_id', 'id', 'identity', true),
		('zoho', 'crm_in', 'customer', 'customer', 'trim', true),
		('sfc', 'crm_in', 'sf_id', 'Id', 'identity', true),
		('sfc', 'crm_in', 'first_name', 'FirstName', 'identity', false),
		('sfc', 'crm_in', 'last_name', 'LastName', 'identity', true),
		('sfc', 'crm_in', 'email', 'Email', 'identity', false),
		('sfl', 'crm_in', 'sf_id', 'Id', 'identity', true),
		('sfl', 'crm_in', 'first_name', 'FirstName', 'identity', false),
		('sfl', 'crm_in', 'company', 'Company', 'identity', false),
		('sfl', 'crm_in', 'city', 'City', 'identity', false);
	SELECT shipsync.create_crm_source('jdy', 'jiandaoyun', 'crm.orders', '{"secret": "test-secret", "key_column": "crm_id"}');
	SELECT shipsync.create_crm_source('zoho', 'generic', 'crm.orders', '{"secret": "$SECRET", "key_column": "crm_id"}');
	SELECT shipsync.create_crm_source('sfc', 'salesforce_om', 'crm.contacts', '{"organization_id": "012345678901234"}');
	SELECT shipsync.create_crm_source('sfl', 'salesforce_om', 'crm.leads', '{"organization_id": "0123456789ABCDENNN"}');
});
ok(wait_until_http($port, '/healthz', 200), 'healthz: 200 once the extension is there');
is(push_http($port, 'GET', '/healthz')->{content}, "ok\n", 'its body is ok');
is(push_http($port, 'HEAD', '/healthz')->{status}, 200, 'HEAD /healthz too');

sub q1 { return $node->safe_psql('postgres', $_[0]); }

# ---- POST /tracking/{provider} ----------------------------------------------
my $ev = '{"events": [{"id": "e1", "tracking_number": "TRK1", "status": "in_transit", "occurred_at": "2026-03-01T08:00:00Z"}]}';
$r = push_http($port, 'POST', '/tracking/trk', sw_headers($SECRET, 'msg_1', $ev), $ev);
is($r->{status}, 200, 'a signed generic push: 200');
is_deeply(decode_json($r->{content}), { provider => 'trk', events => 1 }, 'answered with what was taken');
is(q1(q{SELECT ship_status FROM crm.orders WHERE id = 1}), 'in_transit', 'its status is on the order row');
$r = push_http($port, 'POST', '/tracking/trk', sw_headers($SECRET, 'msg_1b', $ev), $ev);
is($r->{status}, 200, 'the same event again: 200');
is(q1(q{SELECT count(*) FROM shipsync.tracking_event}), '1', 'and stored once');

my $forged = $ev =~ s/in_transit/delivered/r;
my $h = sw_headers($SECRET, 'msg_2', $ev);    # signed for another body
$r = push_http($port, 'POST', '/tracking/trk', $h, $forged);
is($r->{status}, 401, 'a forged push: 401');
is(decode_json($r->{content})->{sqlstate}, 'SS401', 'SQLSTATE SS401 in the answer');
is(decode_json($r->{content})->{error}, 'tracking push for provider "trk" failed its signature check',
	'the error\'s message, without its detail');
$r = push_http($port, 'POST', '/tracking/trk', { 'Content-Type' => 'application/json' }, $ev);
is($r->{status}, 401, 'an unsigned push: 401');
$r = push_http($port, 'POST', '/tracking/trk', sw_headers('whsec_c2VjcmV0', 'msg_3', $forged), $forged);
is($r->{status}, 401, 'a push signed with another secret: 401');
is(q1(q{SELECT ship_status FROM crm.orders WHERE id = 1}), 'in_transit', 'no forged push moved the status');
my $bad = '{"events": [{"id": "e9", "tracking_number": "TRK1"}]}';
$r = push_http($port, 'POST', '/tracking/trk', sw_headers($SECRET, 'msg_4', $bad), $bad);
is($r->{status}, 400, 'a signed push that is not a payload: 400');
is(decode_json($r->{content})->{sqlstate}, 'SS400', 'SQLSTATE SS400');

# keep-alive: two pushes on one connection
{
	my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 10) or die "connect: $!";
	$s->autoflush(1);
	my @status;
	for my $i (1, 2)
	{
		my $hh = sw_headers($SECRET, "ka$i", $ev);
		print $s "POST /tracking/trk HTTP/1.1\r\nHost: x\r\nContent-Length: " . length($ev) . "\r\n"
		  . join('', map { "$_: $hh->{$_}\r\n" } sort keys %$hh) . "\r\n$ev";
		my $head = '';
		while ($head !~ /\r\n\r\n/) { sysread($s, my $c, 1) or last; $head .= $c; }
		my ($len) = $head =~ /^Content-Length: (\d+)/mi;
		sysread($s, my $rest, $len) if $len;
		push @status, $head =~ m{^HTTP/1\.1 (\d+)} ? $1 : 'none';
		unlike($head, qr/^Connection: close/mi, "push $i on the connection: kept alive");
	}
	is("@status", '200 200', 'two pushes answered on one connection');
	close($s);
}

# dialects that want a particular answer
my $param = slurp_raw("$vectors/kuaidi100_push_param_resultv2_yuantong.json");
$param =~ s/\s+$//;
my $form = 'param=' . urlencode($param) . '&sign=' . uc(md5_hex($param . 'salt-8f2c'));
$r = push_http($port, 'POST', '/tracking/kd', { 'Content-Type' => 'application/x-www-form-urlencoded' }, $form);
is($r->{status}, 200, 'a signed Kuaidi100 push: 200');
is($r->{content}, '{"result": true, "message": "成功", "returnCode": "200"}',
	'answered with the body Kuaidi100 expects');
$form =~ s/sign=[0-9A-F]{4}/sign=0000/;
is(push_http($port, 'POST', '/tracking/kd', { 'Content-Type' => 'application/x-www-form-urlencoded' }, $form)
	  ->{status}, 401, 'a forged Kuaidi100 push: 401');
my $route = slurp_raw("$vectors/sf_route_push_RoutePushService.json");
$r = push_http($port, 'POST', '/tracking/sfx', { 'Content-Type' => 'application/json' }, $route);
is($r->{status}, 200, 'an SF route push: 200');
is($r->{content}, '{"return_msg": "成功", "return_code": "0000"}', 'answered with the body SF expects');
is(q1(q{SELECT string_agg(ship_status, ',' ORDER BY id) FROM crm.orders}), 'in_transit,in_transit,in_transit',
	'both pushes moved their orders');

# a write-back the order table refuses fails that order's write-back alone:
# the push is taken (it was refused whole with 500, the carrier retrying
# for ever), its status stored, and a ticket says why; neither the ticket
# nor the log quotes the row (a detail "Failing row contains (...)" holds
# the customer's name, phone and address)
q1(q{ALTER TABLE crm.orders ADD CONSTRAINT st_ok CHECK (ship_status IS DISTINCT FROM 'delivered') NOT VALID});
# (the phone made by repeat(), so that the log of this very statement does not hold it)
q1(q{UPDATE crm.orders SET customer = 'Zhang San ' || repeat('7', 11) WHERE id = 1});
my $refused = '{"events": [{"id": "e-chk", "tracking_number": "TRK1", "status": "delivered", "occurred_at": "2026-03-01T09:00:00Z"}]}';
$r = push_http($port, 'POST', '/tracking/trk', sw_headers($SECRET, 'msg_chk', $refused), $refused);
is($r->{status}, 200, 'a write-back the table\'s CHECK refuses: the push is taken all the same');
is(q1(q{SELECT status FROM shipsync.shipment WHERE tracking_number = 'TRK1'}), 'delivered',
	'the shipment\'s status is stored');
is(q1(q{SELECT ship_status FROM crm.orders WHERE id = 1}), 'in_transit', 'the order row is left as it was');
my $ticket = q1(q{SELECT order_key || ' ' || detail FROM shipsync.exception_ticket WHERE kind = 'writeback_failed'});
like($ticket, qr/^1 write-back of the tracking status failed: .*violates check constraint "st_ok"/,
	'a writeback_failed ticket names the order and the constraint');
unlike($ticket, qr/Failing row|77777777777/, 'and does not quote the row');
my $logged = 0;
for (1 .. 100)
{
	last if ($logged = slurp_file($node->logfile) =~ /write-back of the tracking status of order 1 failed: .*"st_ok"/);
	usleep(100_000);
}
ok($logged, 'the failed write-back is logged');
unlike(slurp_file($node->logfile), qr/Failing row|77777777777/, 'without quoting the row');
q1(q{ALTER TABLE crm.orders DROP CONSTRAINT st_ok});

# ---- a row lock held by another session holds its own push only -------------
# An order row being edited (UPDATE in an open transaction) once stalled the
# whole receiver: the push for it waited for the lock, and /healthz and every
# other push waited behind it.  Now that push fails alone after
# shipsync.receiver_lock_timeout (1 s) with 503 and Retry-After, the others
# are answered, and the carrier's retry succeeds once the lock is gone.
my ($locked_id, $free_id) = split /\n/,
  q1(q{INSERT INTO crm.orders (customer) VALUES ('locked'), ('free') RETURNING id});
q1(qq{INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number)
	SELECT b.binding_id, v.k, p.provider_id, v.tn FROM shipsync.binding b, shipsync.provider p,
		(VALUES ('$locked_id', 'TRKL'), ('$free_id', 'TRKF')) v(k, tn)
	WHERE b.tbl = 'crm.orders'::regclass AND p.name = 'trk'});
my $editor = $node->background_psql('postgres');
$editor->query_safe("BEGIN; UPDATE crm.orders SET customer = 'being edited' WHERE id = $locked_id");
my $ev_locked = '{"events": [{"id": "lk-1", "tracking_number": "TRKL", "status": "in_transit", "occurred_at": "2026-03-01T08:00:00Z"}]}';
my $ev_free = '{"events": [{"id": "lk-2", "tracking_number": "TRKF", "status": "in_transit", "occurred_at": "2026-03-01T08:00:00Z"}]}';
my %lk = (locked => send_raw('/tracking/trk', sw_headers($SECRET, 'msg_lk1', $ev_locked), $ev_locked));
# (watched from a session of its own, query after query: the wait lasts a second)
my $watch = $node->background_psql('postgres');
my $waits = 0;
for (1 .. 20_000)
{
	last if ($waits = $watch->query_safe(q{SELECT count(*) FROM pg_stat_activity
		WHERE backend_type = 'pg_shipsync receiver' AND wait_event_type = 'Lock'}) =~ /^1$/m);
}
ok($waits, 'the push for the locked order waits for its row');
my $t_lk = time();
$lk{healthz} = send_text("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
$lk{free} = send_raw('/tracking/trk', sw_headers($SECRET, 'msg_lk2', $ev_free), $ev_free);
my %lk_answer = read_answers(\%lk, 20);
like($lk_answer{healthz}[0], qr{^HTTP/1\.1 200 }, '/healthz: 200 while a push waits for a lock');
cmp_ok($lk_answer{healthz}[1] - $t_lk, '<', 2, 'within 2 s');
like($lk_answer{free}[0], qr{^HTTP/1\.1 200 }, 'the push for another order: 200');
cmp_ok($lk_answer{free}[1] - $t_lk, '<', 2, 'within 2 s');
like($lk_answer{locked}[0], qr{^HTTP/1\.1 503 }, 'the push for the locked order: 503');
cmp_ok($lk_answer{locked}[1] - $t_lk, '<', 3, 'within 3 s');
like($lk_answer{locked}[0], qr/^Retry-After: 5\r$/m, 'with Retry-After');
like($lk_answer{locked}[0], qr/"sqlstate": "55P03"/, 'lock_not_available');
is(q1(qq{SELECT string_agg(coalesce(ship_status, '-'), ',' ORDER BY id) FROM crm.orders
	WHERE id IN ($locked_id, $free_id)}), '-,in_transit', 'only the other order moved');
$editor->query_safe('COMMIT');
$editor->quit;
$watch->quit;
$r = push_http($port, 'POST', '/tracking/trk', sw_headers($SECRET, 'msg_lk1', $ev_locked), $ev_locked);
is($r->{status}, 200, 'the carrier\'s retry once the lock is gone: 200');
is(q1(qq{SELECT ship_status FROM crm.orders WHERE id = $locked_id}), 'in_transit', 'and the order moved');

# a request sent raw on a connection of its own
sub send_text
{
	my ($text) = @_;
	my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 10) or die "connect: $!";
	$s->autoflush(1);
	print $s $text;
	return $s;
}

# The whole answer on each socket of %$socks (Connection: close), and when
# it ended: name => [answer, time]; at most $limit seconds in all.
sub read_answers
{
	my ($socks, $limit) = @_;
	my %by_fd = map { fileno($socks->{$_}) => $_ } keys %$socks;
	my %got = map { $_ => ['', undef] } keys %$socks;
	my $sel = IO::Select->new(values %$socks);
	my $t0 = time();
	while ($sel->count && time() - $t0 < $limit)
	{
		for my $s ($sel->can_read(0.1))
		{
			my $name = $by_fd{ fileno($s) };
			my $n = sysread($s, my $buf, 65536);
			if ($n)
			{
				$got{$name}[0] .= $buf;
				next;
			}
			$got{$name}[1] = time();
			$sel->remove($s);
		}
	}
	$got{$_}[1] //= time() + 3600 for keys %got;    # no answer: never
	close($_) for values %$socks;
	return %got;
}

# ---- unknown routes, methods ------------------------------------------------
is(push_http($port, 'POST', '/tracking/nobody', sw_headers($SECRET, 'm', $ev), $ev)->{status},
	404, 'an unknown provider: 404');
is(push_http($port, 'POST', '/crm/nobody', {}, '{}')->{status}, 404, 'an unknown CRM source: 404');
is(push_http($port, 'POST', '/tracking/bad%20name', {}, '{}')->{status}, 404, 'a name no provider can have: 404');
is(push_http($port, 'POST', '/elsewhere', {}, '{}')->{status}, 404, 'an unknown route: 404');
$r = push_http($port, 'GET', '/tracking/trk', {}, undef);
is($r->{status}, 405, 'GET on a push route: 405');
is($r->{headers}{allow}, 'POST', 'with Allow: POST');
is(push_http($port, 'POST', '/healthz', {}, '{}')->{status}, 405, 'POST /healthz: 405');

# ---- POST /fees/{provider}: ingest_fees() -----------------------------------
my $fb = '{"fees": [{"tracking_number": "TRK1", "type": "freight", "amount": "12.50", "currency": "CNY"}]}';
$r = push_http($port, 'POST', '/fees/trk', sw_headers($SECRET, 'f1', $fb), $fb);
is($r->{status}, 200, 'a signed fee push: 200');
is(decode_json($r->{content})->{new}, 1, 'answered with ingest_fees()\'s summary: one new line');
is(q1(q{SELECT amount || ' ' || currency || ' ' || source FROM shipsync.fee_line WHERE tracking_number = 'TRK1'}),
	'12.50 CNY push', 'the line is stored');
is(push_http($port, 'POST', '/fees/trk', sw_headers($SECRET, 'f2', '{}'), $fb)->{status}, 401,
	'a fee push signed for another body: 401');
is(push_http($port, 'POST', '/fees/trk', sw_headers($SECRET, 'f3', '{"fees": 1}'), '{"fees": 1}')->{status}, 400,
	'a fee push that is not the payload: 400');

# ---- 简道云 ------------------------------------------------------------------
my $jdy = slurp_raw("$vectors/jiandaoyun_datapush_data_create_sample.json");
my ($q, $jh) = jdy_signed('test-secret', $jdy, 'dl-1');
$r = push_http($port, 'POST', "/crm/jdy$q", $jh, $jdy);
is($r->{status}, 200, '简道云 data_create, signed: 200');
is(decode_json($r->{content})->{inserted}, 1, 'one order inserted');
is(q1(q{SELECT customer || '/' || amount FROM crm.orders WHERE crm_id = '5a3765a091646d77aef8e054'}),
	'养三权厂去/-406', 'its fields through the crm_in map');
is(q1(q{SELECT count(*) FROM (SELECT order_key FROM shipsync.inbox UNION ALL SELECT order_key FROM shipsync.outbox) x
	WHERE order_key = (SELECT id::text FROM crm.orders WHERE crm_id = '5a3765a091646d77aef8e054')}),
	'1', 'captured like any order');
$r = push_http($port, 'POST', "/crm/jdy$q", $jh, $jdy);
is($r->{status}, 200, 'the same delivery again: 200');
is(decode_json($r->{content})->{duplicate}, 1, 'as a duplicate');
($q, $jh) = jdy_signed('wrong-secret', $jdy, 'dl-2');
is(push_http($port, 'POST', "/crm/jdy$q", $jh, $jdy)->{status}, 401, '简道云, another secret: 401');
($q, $jh) = jdy_signed('test-secret', $jdy, 'dl-3');
(my $tampered = $jdy) =~ s/-406/-407/;
is(push_http($port, 'POST', "/crm/jdy$q", $jh, $tampered)->{status}, 401, '简道云, body changed: 401');
($q, $jh) = jdy_signed('test-secret', $jdy, 'dl-4', time() - 8 * 86400);
is(push_http($port, 'POST', "/crm/jdy$q", $jh, $jdy)->{status}, 401, '简道云, older than dedup_ttl: 401');
(my $upd = $jdy) =~ s/data_create/data_update/;
$upd =~ s/养三权厂去/养三权厂/;
($q, $jh) = jdy_signed('test-secret', $upd, 'dl-5');
is(decode_json(push_http($port, 'POST', "/crm/jdy$q", $jh, $upd)->{content})->{updated}, 1,
	'简道云 data_update: updated');
(my $other = $jdy) =~ s/data_create/form_update/;
($q, $jh) = jdy_signed('test-secret', $other, 'dl-6');
is(decode_json(push_http($port, 'POST', "/crm/jdy$q", $jh, $other)->{content})->{ignored}, 1,
	'简道云 form_update: acknowledged, ignored');
(my $rm = $jdy) =~ s/data_create/data_remove/;
($q, $jh) = jdy_signed('test-secret', $rm, 'dl-7');
is(decode_json(push_http($port, 'POST', "/crm/jdy$q", $jh, $rm)->{content})->{deleted}, 1,
	'简道云 data_remove: deleted');
# a rotation of the source's secret (set_secret(), stored encrypted like a
# provider's): pushes signed with the new one or the previous one are taken
# until the rotation ends
q1(q{SELECT shipsync.set_secret('jdy', 'webhook_secret', 'test-secret-2')});
($q, $jh) = jdy_signed('test-secret-2', $upd, 'dl-8');
is(push_http($port, 'POST', "/crm/jdy$q", $jh, $upd)->{status}, 200, '简道云 signed with a new secret: 200');
($q, $jh) = jdy_signed('test-secret', $upd, 'dl-9');
is(push_http($port, 'POST', "/crm/jdy$q", $jh, $upd)->{status}, 200,
	'signed with the previous secret during the rotation: 200');
q1(q{SELECT shipsync.set_secret('jdy', 'previous_webhook_secret', NULL)});
($q, $jh) = jdy_signed('test-secret', $upd, 'dl-10');
is(push_http($port, 'POST', "/crm/jdy$q", $jh, $upd)->{status}, 401,
	'signed with the previous secret once the rotation ended: 401');

# 简道云 does not sign X-JDY-DeliverId: a captured push sent again under
# another one is known by its signature, and changes nothing (an old update
# once reverted the order, and brought back a removed one)
(my $v1 = $upd) =~ s/养三权厂/OLD-ADDR/;
(my $v2 = $upd) =~ s/养三权厂/NEW-ADDR/;
my ($q1, $h1) = jdy_signed('test-secret-2', $v1, 'dl-11');
is(push_http($port, 'POST', "/crm/jdy$q1", $h1, $v1)->{status}, 200, '简道云 update v1: 200');
my ($q2, $h2) = jdy_signed('test-secret-2', $v2, 'dl-12');
is(push_http($port, 'POST', "/crm/jdy$q2", $h2, $v2)->{status}, 200, '简道云 update v2: 200');
$r = push_http($port, 'POST', "/crm/jdy$q1", { %$h1, 'X-JDY-DeliverId' => 'dl-forged-1' }, $v1);
is($r->{status}, 200, 'update v1 replayed under a new X-JDY-DeliverId: 200');
is(decode_json($r->{content})->{duplicate}, 1, 'as a duplicate');
$r = push_http($port, 'POST', "/crm/jdy$q1",
	{ %$h1, 'X-JDY-DeliverId' => 'dl-forged-2', 'X-JDY-Signature' => uc($h1->{'X-JDY-Signature'}) }, $v1);
is(decode_json($r->{content})->{duplicate}, 1, 'and with its signature in capitals');
is(q1(q{SELECT customer FROM crm.orders WHERE crm_id = '5a3765a091646d77aef8e054'}), 'NEW-ADDR',
	'the order keeps the newer update');
(my $rm2 = $v2) =~ s/data_update/data_remove/;
my ($q3, $h3) = jdy_signed('test-secret-2', $rm2, 'dl-13');
is(decode_json(push_http($port, 'POST', "/crm/jdy$q3", $h3, $rm2)->{content})->{deleted}, 1,
	'简道云 data_remove: deleted');
$r = push_http($port, 'POST', "/crm/jdy$q2", { %$h2, 'X-JDY-DeliverId' => 'dl-forged-3' }, $v2);
is(decode_json($r->{content})->{duplicate}, 1, 'update v2 replayed after the remove: a duplicate');
is(q1(q{SELECT count(*) FROM crm.orders WHERE crm_id = '5a3765a091646d77aef8e054'}), '0',
	'the removed order stays removed');
# restored from 简道云's recycle bin (data_recover, the whole record): the
# order comes back, and its capture ships it again
(my $rec = $v2) =~ s/data_update/data_recover/;
my ($q4, $h4) = jdy_signed('test-secret-2', $rec, 'dl-14');
is(decode_json(push_http($port, 'POST', "/crm/jdy$q4", $h4, $rec)->{content})->{inserted}, 1,
	'简道云 data_recover: inserted');
is(q1(q{SELECT customer FROM crm.orders WHERE crm_id = '5a3765a091646d77aef8e054'}), 'NEW-ADDR',
	'the recovered order is back as it was');

# ---- Salesforce Outbound Messages: the published requests ------------------
my $ack = qr{<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse>};
my $contacts = slurp_raw("$vectors/salesforce_outbound_message_contact_aspnetcore.xml");
$r = push_http($port, 'POST', '/crm/sfc', { 'Content-Type' => 'text/xml; charset=utf-8', SOAPAction => '""' },
	$contacts);
is($r->{status}, 200, 'an Outbound Message: 200');
like($r->{content}, $ack, 'answered with the SOAP Ack');
like($r->{headers}{'content-type'}, qr{^text/xml}, 'as text/xml');
is(q1(q{SELECT string_agg(first_name || ' ' || last_name || ' ' || coalesce(email, '-'), ', ' ORDER BY sf_id) FROM crm.contacts}),
	'Doug Bunting drb24@cornell.edu, Jeraldine Black -', 'both contacts written');
my $leads = slurp_raw("$vectors/salesforce_outbound_message_lead_aspnet.xml");
$r = push_http($port, 'POST', '/crm/sfl', { 'Content-Type' => 'text/xml' }, $leads);
is($r->{status}, 200, 'a message starting with a UTF-8 BOM: 200');
is(q1('SELECT count(*) FROM crm.leads'), '3', 'its three leads written');
$r = push_http($port, 'POST', '/crm/sfl', { 'Content-Type' => 'text/xml' }, $leads);
like($r->{content}, $ack, 'Salesforce retrying the same message: acknowledged again');
is(q1(q{SELECT count(*) FROM shipsync.crm_delivery d JOIN shipsync.crm_source s USING (crm_source_id) WHERE s.name = 'sfl'}),
	'3', 'each notification Id remembered once');
$r = push_http($port, 'POST', '/crm/sfc', { 'Content-Type' => 'text/xml' }, $leads);
is($r->{status}, 401, 'a message of another organization: 401');
like($r->{content}, qr{<soapenv:Fault><faultcode>soapenv:Client</faultcode>}, 'answered with a SOAP fault');

# ---- generic CRM source (Zoho) -----------------------------------------------
my $zoho = '{"type": "order.created", "data": {"id": "ZC-1", "customer": "Zoho Ltd"}}';
$r = push_http($port, 'POST', '/crm/zoho', sw_headers($SECRET, 'z1', $zoho), $zoho);
is($r->{status}, 200, 'a signed generic CRM push: 200');
is(q1(q{SELECT customer FROM crm.orders WHERE crm_id = 'ZC-1'}), 'Zoho Ltd', 'its order written');
is(push_http($port, 'POST', '/crm/zoho', sw_headers($SECRET, 'z2', $zoho), $zoho =~ s/Ltd/GmbH/r)
	  ->{status}, 401, 'a forged generic CRM push: 401');
my $nokey = '{"type": "order.created", "data": {"customer": "no id"}}';
is(push_http($port, 'POST', '/crm/zoho', sw_headers($SECRET, 'z3', $nokey), $nokey)->{status},
	400, 'a record the map cannot read: 400');

# ---- a Django table: every foreign key DEFERRABLE INITIALLY DEFERRED ---------
# The CRM write and the write-back run as the table's owner in a restricted
# operation, which may leave no deferred trigger behind: the table's
# deferrable constraints are checked at the end of the write instead
# (pushes once failed with 500 "cannot fire deferred trigger within
# security-restricted operation").
q1(qq{
	CREATE TABLE crm.shop_customer (id bigint PRIMARY KEY);
	INSERT INTO crm.shop_customer VALUES (1);
	CREATE TABLE crm.ship_state (code text PRIMARY KEY);
	INSERT INTO crm.ship_state VALUES ('in_transit');
	CREATE TABLE crm.dj_order (id bigserial PRIMARY KEY, crm_id text UNIQUE, customer text,
		customer_ref bigint REFERENCES crm.shop_customer DEFERRABLE INITIALLY DEFERRED,
		waybill_no text, ship_status text REFERENCES crm.ship_state DEFERRABLE INITIALLY DEFERRED);
	INSERT INTO shipsync.field_map (profile, direction, target_path, source, transform, required) VALUES
		('dj', 'crm_in', 'crm_id', 'id', 'identity', true),
		('dj', 'crm_in', 'customer', 'customer', 'trim', true),
		('dj', 'crm_in', 'customer_ref', 'ref', 'identity', false);
	SELECT shipsync.create_crm_source('dj', 'generic', 'crm.dj_order', '{"secret": "$SECRET", "key_column": "crm_id"}');
	SELECT shipsync.attach('crm.dj_order', 'trk', writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}');
});
my $dj = '{"type": "order.created", "data": {"id": "DJ-1", "customer": "Django", "ref": 1}}';
$r = push_http($port, 'POST', '/crm/dj', sw_headers($SECRET, 'dj1', $dj), $dj);
is($r->{status}, 200, 'a CRM push onto a table with a deferred foreign key: 200');
is(q1(q{SELECT customer || '/' || customer_ref FROM crm.dj_order WHERE crm_id = 'DJ-1'}), 'Django/1',
	'its row is written');
(my $djbad = $dj) =~ s/"DJ-1"/"DJ-2"/;
$djbad =~ s/"ref": 1/"ref": 99/;
$r = push_http($port, 'POST', '/crm/dj', sw_headers($SECRET, 'dj2', $djbad), $djbad);
is($r->{status}, 400, 'a record breaking the deferred foreign key: 400');
is(q1(q{SELECT count(*) FROM crm.dj_order WHERE crm_id = 'DJ-2'}), '0', 'and not written');
q1(q{INSERT INTO crm.dj_order (crm_id, customer, customer_ref) VALUES ('DJ-W', 'written back', 1);
	INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number)
	SELECT b.binding_id, o.id::text, p.provider_id, 'DJTRK1'
	FROM shipsync.binding b JOIN crm.dj_order o ON o.crm_id = 'DJ-W', shipsync.provider p
	WHERE b.tbl = 'crm.dj_order'::regclass AND p.name = 'trk'});
my $djev = '{"events": [{"id": "dj-e1", "tracking_number": "DJTRK1", "status": "in_transit", "occurred_at": "2026-03-01T08:00:00Z"}]}';
$r = push_http($port, 'POST', '/tracking/trk', sw_headers($SECRET, 'dj-m1', $djev), $djev);
is($r->{status}, 200, 'a tracking push written back onto a deferred foreign key column: 200');
is(q1(q{SELECT ship_status FROM crm.dj_order WHERE crm_id = 'DJ-W'}), 'in_transit', 'the status is on the row');

# ---- a CRM table's trigger that sets search_path -------------------------------
# The owner of a CRM table (a plain login role) has a BEFORE INSERT trigger
# that sets search_path to its own schema for the session, where = (text,
# text) and ->> (jsonb, text) record who ran them.  The record is written as
# the owner in a GUC nest level of its own: neither an operator's session
# that calls ingest_crm() nor the receiver's keeps that search_path.
$node->safe_psql('postgres', q{
	CREATE ROLE crmo LOGIN;
	CREATE ROLE opr LOGIN IN ROLE shipsync_operator;
	CREATE SCHEMA crmo AUTHORIZATION crmo;
});
my ($rc, $out, $err);
$rc = $node->psql('postgres', q{
	GRANT USAGE ON SCHEMA crmo TO PUBLIC;
	CREATE TABLE crmo.calls (who name, pid integer);
	GRANT INSERT ON crmo.calls TO PUBLIC;
	CREATE FUNCTION crmo.eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $f$
	BEGIN
		INSERT INTO crmo.calls VALUES (current_user, pg_catalog.pg_backend_pid());
		RETURN a OPERATOR(pg_catalog.=) b;
	END $f$;
	CREATE OPERATOR crmo.= (LEFTARG = text, RIGHTARG = text, FUNCTION = crmo.eq);
	CREATE FUNCTION crmo.get(j jsonb, k text) RETURNS text LANGUAGE plpgsql AS $f$
	BEGIN
		INSERT INTO crmo.calls VALUES (current_user, pg_catalog.pg_backend_pid());
		RETURN j OPERATOR(pg_catalog.->>) k;
	END $f$;
	CREATE OPERATOR crmo.->> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = crmo.get);
	CREATE FUNCTION crmo.steer() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
		PERFORM pg_catalog.set_config('search_path', 'crmo, pg_catalog', false);
		RETURN NEW;
	END $f$;
	CREATE TABLE crmo.orders (crm_id text PRIMARY KEY, customer text);
	CREATE TRIGGER steer BEFORE INSERT ON crmo.orders FOR EACH ROW EXECUTE FUNCTION crmo.steer();
}, connstr => $node->connstr('postgres') . ' user=crmo', stdout => \$out, stderr => \$err,
	on_error_stop => 1);
is($rc, 0, 'the owner of a CRM table steers search_path from its trigger') or diag($err);
$node->safe_psql('postgres', qq{
	INSERT INTO shipsync.field_map (profile, direction, target_path, source, transform, required) VALUES
		('crmo', 'crm_in', 'crm_id', 'id', 'identity', true),
		('crmo', 'crm_in', 'customer', 'customer', 'trim', true);
	SELECT shipsync.create_crm_source('crmo', 'generic', 'crmo.orders', '{"secret": "$SECRET"}');
});

my $crmo = '{"type": "order.created", "data": {"id": "CR-1", "customer": "from an operator"}}';
my $crmo_headers = encode_json(sw_headers($SECRET, 'c1', $crmo));
$rc = $node->psql('postgres', qq{
	SHOW search_path;
	SELECT shipsync.ingest_crm('crmo', '$crmo', '$crmo_headers') IS NOT NULL;
	SHOW search_path;
	SELECT 'x'::text = 'x'::text;
}, connstr => $node->connstr('postgres') . ' user=opr', stdout => \$out, stderr => \$err,
	on_error_stop => 1);
is($rc, 0, 'an operator calls ingest_crm() on that table') or diag($err);
is($out, qq{"\$user", public\nt\n"\$user", public\nt}, 'its session keeps its search_path');
is(q1(q{SELECT customer FROM crmo.orders WHERE crm_id = 'CR-1'}), 'from an operator',
	'and the record is written');

$crmo = '{"type": "order.created", "data": {"id": "CR-2", "customer": "pushed"}}';
$r = push_http($port, 'POST', '/crm/crmo', sw_headers($SECRET, 'c2', $crmo), $crmo);
is($r->{status}, 200, 'a push to that table through the receiver: 200');
$zoho = '{"type": "order.created", "data": {"id": "ZC-9", "customer": "after"}}';
$r = push_http($port, 'POST', '/crm/zoho', sw_headers($SECRET, 'z9', $zoho), $zoho);
is($r->{status}, 200, 'the receiver\'s next push: 200');
is(q1(q{SELECT count(*) FROM crmo.orders WHERE crm_id = 'CR-2'}), '1', 'the pushed record is written');
is(q1(q{SELECT coalesce(string_agg(who || ' (' || pid || ')', ', '), 'none') FROM crmo.calls}), 'none',
	'neither the operator\'s session nor the receiver ran the owner\'s operators');

# ---- body limits ---------------------------------------------------------------
my $big = '{"events": [], "pad": "' . ('x' x 70000) . '"}';
$r = push_http($port, 'POST', '/tracking/trk', sw_headers($SECRET, 'big', $big), $big);
is($r->{status}, 413, 'a body over shipsync.max_push_bytes: 413');

# chunked (no Content-Length): read, dropped, then 413
sub raw_request
{
	my ($text, $wait) = @_;
	my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 10) or die "connect: $!";
	$s->autoflush(1);
	print $s $text;
	my $answer = '';
	my $t0 = time();
	$s->blocking(1);
	local $SIG{ALRM} = sub { die "timeout\n" };
	alarm($wait // 20);
	eval {
		while (sysread($s, my $buf, 65536)) { $answer .= $buf; }
		alarm(0);
	};
	alarm(0);
	close($s);
	return ($answer, time() - $t0);
}
my $chunk = 'x' x 30000;
my $chunked = "POST /tracking/trk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
  . join('', map { sprintf("%x\r\n%s\r\n", length($chunk), $chunk) } 1 .. 3) . "0\r\n\r\n";
my ($answer) = raw_request($chunked);
like($answer, qr{^HTTP/1\.1 413 }, 'a chunked body growing over the limit: 413');
($answer) = raw_request("POST /tracking/trk HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n\xff\xfe{}");
like($answer, qr{^HTTP/1\.1 400 }, 'a body that is not UTF-8: 400');

# Content-Encoding: a gzip'd push (an HTTP client library's default in
# some in-house CRMs) was answered 400 "the body is not UTF-8 text": final
# to the sender, and not saying why.  The receiver takes bodies as they
# were signed, uncompressed: any other encoding is 415, naming it, before
# the body is read, and nothing is written.
my $zg = '{"type": "order.created", "data": {"id": "ZC-GZ", "customer": "Gzip GmbH"}}';
$r = push_http($port, 'POST', '/crm/zoho',
	{ %{ sw_headers($SECRET, 'zgz', $zg) }, 'Content-Encoding' => 'gzip' }, "\x1f\x8b\x08\x00" . ("\0" x 20));
is($r->{status}, 415, 'a gzip-encoded CRM push: 415');
like($r->{content}, qr/Content-Encoding \\"gzip\\" is not taken/, 'naming the encoding');
is(q1(q{SELECT count(*) FROM crm.orders WHERE crm_id = 'ZC-GZ'}), '0', 'and nothing written');
$r = push_http($port, 'POST', '/tracking/trk',
	{ %{ sw_headers($SECRET, 'gz4', 'x') }, 'Content-Encoding' => 'br' }, 'x');
is($r->{status}, 415, 'another encoding (br) on a tracking push: 415');
$r = push_http($port, 'POST', '/crm/zoho',
	{ %{ sw_headers($SECRET, 'zid', $zg) }, 'Content-Encoding' => 'identity' }, $zg);
is($r->{status}, 200, 'Content-Encoding: identity is taken');

# ---- time limits: slow senders are cut off -------------------------------------
my $elapsed;
($answer, $elapsed) = raw_request("POST /tracking/trk HTTP/1.1\r\nHost: x\r\n");
is($answer, '', 'headers never finished: the connection is closed without an answer');
cmp_ok($elapsed, '<', 12, 'within the header time limit (2 s) and the sweep');
($answer, $elapsed) = raw_request("POST /tracking/trk HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"ev");
unlike($answer, qr{^HTTP/1\.1 2}, 'a body never finished: no 2xx');
cmp_ok($elapsed, '<', 12, 'and cut off within the body time limit (2 s)');

# ---- the per-client rate ------------------------------------------------------
$node->safe_psql('postgres', 'ALTER SYSTEM SET shipsync.receiver_rate_limit = 5');
$node->reload;
my %codes;
my $retry_after;
for my $i (1 .. 40)
{
	my $x = push_http($port, 'POST', '/tracking/trk', sw_headers($SECRET, "rate$i", $ev), $ev);
	$codes{ $x->{status} }++;
	$retry_after = $x->{headers}{'retry-after'} if $x->{status} == 429;
	last if $codes{429} && $i > 10;
}
ok($codes{429}, 'over shipsync.receiver_rate_limit: 429');
is($retry_after, '1', 'with Retry-After');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET shipsync.receiver_rate_limit');
$node->reload;

# ---- the bounded queue: while the receiver waits for a lock, pushes queue
# in the kernel; past shipsync.receiver_queue_size they are refused with 503,
# and each one acknowledged is stored
# (the lock is held for over a second: longer than the receiver waits by default)
$node->safe_psql('postgres', 'ALTER SYSTEM SET shipsync.receiver_queue_size = 3');
$node->safe_psql('postgres', "ALTER SYSTEM SET shipsync.receiver_lock_timeout = '60s'");
$node->reload;
ok(wait_until($node, q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_shipsync receiver'}),
	'receiver still there');
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE crm.orders IN ACCESS EXCLUSIVE MODE');
my $blocked = '{"type": "order.created", "data": {"id": "Q-0", "customer": "first"}}';
my @socks;
push @socks, send_raw('/crm/zoho', sw_headers($SECRET, 'q0', $blocked), $blocked);
ok(wait_until($node, q{SELECT count(*) = 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid)
	WHERE a.backend_type = 'pg_shipsync receiver' AND NOT l.granted}), 'the receiver waits for the lock');
for my $i (1 .. 12)
{
	my $b = qq({"type": "order.created", "data": {"id": "Q-$i", "customer": "queued $i"}});
	push @socks, send_raw('/crm/zoho', sw_headers($SECRET, "q$i", $b), $b);
}
sleep(1);    # the requests are in the kernel's buffers
$locker->query_safe('COMMIT');
my %got;
my @ok_ids;
for my $i (0 .. $#socks)
{
	my $s = $socks[$i];
	local $/;
	my $a = <$s>;
	my ($code) = $a =~ m{^HTTP/1\.1 (\d+)};
	$got{ $code // 'none' }++;
	push @ok_ids, "Q-$i" if ($code // 0) == 200;
	if (($code // 0) == 503)
	{
		like($a, qr/^Retry-After: 5\r$/m, "refused push $i carries Retry-After") if !$got{seen503}++;
	}
}
ok($got{503}, 'past the queue size: 503');
ok($got{200} && $got{200} >= 3, 'the first ones taken');
is($got{200} + $got{503}, 13, 'every push answered 200 or 503');
is(q1("SELECT count(*) FROM crm.orders WHERE crm_id IN ('" . join("', '", @ok_ids) . "')"),
	scalar(@ok_ids), 'each push answered 200 is stored');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET shipsync.receiver_queue_size');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET shipsync.receiver_lock_timeout');
$node->reload;

sub send_raw { return push_raw($port, @_); }

# ---- one log line per refused class per minute, never per request ------------
my $log = slurp_file($node->logfile);
my $lines = () = $log =~ /pg_shipsync receiver refused a request \(401 signature\)/g;
cmp_ok($lines, '<=', 2, "401s of the last minute logged at most once (plus a summary): $lines");
unlike($log, qr/WARNING:  pg_shipsync: rejected a tracking push/, 'no WARNING per rejected push from the receiver');

# ---- one client address cannot take every connection ---------------------------
# A client holding shipsync.receiver_max_connections_per_ip slow sockets
# gets its next ones closed as they are accepted; another address is still
# answered at once (without the limit, the slow sockets fill
# shipsync.receiver_max_connections and everyone else waits in the listen
# queue until the header time limit, here 20 s, cuts them off).
$node->append_conf('postgresql.conf', qq{
shipsync.receiver_max_connections = 16
shipsync.receiver_max_connections_per_ip = 4
shipsync.receiver_header_timeout_ms = 20000
});
$node->restart;
ok(wait_until_http($port, '/healthz', 200), 'the receiver is back with a per-address limit');
my @slow;
for (1 .. 4)
{
	my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 10) or die "connect: $!";
	print $s "POST /tracking/trk HTTP/1.1\r\n";
	push @slow, $s;
}
my @extra;
for (1 .. 20)
{
	my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 10) or die "connect: $!";
	push @extra, $s;
}
# each is closed by the receiver: readable, and at its end (or reset)
my %closed;
my $sel = IO::Select->new(@extra);
my $t0 = time();
while (keys(%closed) < @extra && time() - $t0 < 5)
{
	for my $s ($sel->can_read(0.2))
	{
		my $n = sysread($s, my $buf, 1);
		$closed{ fileno($s) } = 1 if !$n;
		$sel->remove($s);
	}
}
is(scalar(keys %closed), 20, 'connections over the per-address limit are closed at once');
push @slow, @extra;
my $from_other = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", LocalAddr => '127.0.0.2', Timeout => 10)
  or die "connect from 127.0.0.2: $!";
$t0 = time();
print $from_other "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
my $healthz = '';
eval {
	local $SIG{ALRM} = sub { die "timeout\n" };
	alarm(15);
	while (sysread($from_other, my $buf, 4096)) { $healthz .= $buf; }
	alarm(0);
};
alarm(0);
like($healthz, qr{^HTTP/1\.1 200 }, 'another address is answered while they hold theirs');
cmp_ok(time() - $t0, '<', 5, 'at once, not after the header time limit');
close($_) for @slow, $from_other;

# ---- the body's buffer is bounded by shipsync.max_push_bytes ---------------
# It grew by doubling: a body of exactly 65,536 bytes whose first piece was
# 4,095 bytes held a buffer of 131,072 (twice the limit, and the old one
# beside it while it was copied).  Now it grows to the limit and no
# further; the byte after the limit is a 413.  The body is held unfinished
# while the receiver's memory contexts are read (with a body time limit of
# a minute, set by a restart).
$node->append_conf('postgresql.conf', 'shipsync.receiver_body_timeout_ms = 60000');
$node->restart;
ok(wait_until_http($port, '/healthz', 200), 'restarted: the receiver answers');
my $rpid = receiver_pid($node);
# the bytes of the receiver's request contexts, once one holds at least $want
sub request_context_bytes
{
	my ($want) = @_;
	for (1 .. 100)
	{
		my $off = -s $node->logfile;
		$node->safe_psql('postgres', "SELECT pg_log_backend_memory_contexts($rpid)");
		for (1 .. 50)
		{
			my $log = slurp_file($node->logfile, $off);
			if ($log =~ /Grand total: /)
			{
				my @totals = $log =~ /pg_shipsync receiver request: (\d+) total in/g;
				my ($max) = sort { $b <=> $a } @totals;
				return $max if defined $max && $max >= $want;
				last;
			}
			usleep(100_000);
		}
	}
	return -1;
}
my $held = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 10) or die "connect: $!";
$held->autoflush(1);
print $held "POST /tracking/trk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
  . sprintf("%x\r\n%s\r\n", 4095, 'x' x 4095);
cmp_ok(request_context_bytes(4095), '>=', 4095, 'body limit: the first 4,095 bytes are in');
print $held join('', map { sprintf("%x\r\n%s\r\n", 4096, 'x' x 4096) } 1 .. 15) . "1\r\nx\r\n";
my $bytes = request_context_bytes(65536);
cmp_ok($bytes, '>=', 65536, 'body limit: a body of 65,536 bytes, the limit, is in');
cmp_ok($bytes, '<=', 65536 + 8192,
	"body limit: the request's memory stays within the limit and a little ($bytes bytes)");
print $held "1\r\nx\r\n0\r\n\r\n";
my $over = '';
eval {
	local $SIG{ALRM} = sub { die "timeout\n" };
	alarm(30);
	while (sysread($held, my $buf, 4096)) { $over .= $buf; }
	alarm(0);
};
alarm(0);
close($held);
like($over, qr{^HTTP/1\.1 413 }, 'body limit: one byte over the limit: 413');

$node->stop;
done_testing();
