# One delivery test for the dispatcher under valgrind (test/sanitize/run
# valgrind): every path of the dispatcher, once, against the simulator.
#
# Run by test/sanitize/run, whose postgres wrapper starts the postmaster --
# and so every process it forks, the dispatcher among them -- under
# memcheck, one log per process in $SHIPSYNC_VG_DIR.  The orders meet:
# plain creates; 500, 429 with Retry-After, reset before and after
# recording, a malformed and an oversized answer, a closed connection, a
# reply slower than the timeout, a permanent 400; hostile answers (a 10 KB
# tracking number, a NUL in it, bytes that are not UTF-8); an update
# (PATCH) and a delete (cancel); a write-back that fails (the slow path, in
# subtransactions); a field-mapped provider with an order missing a
# required field (invalid); SF Express (signed form, a business error
# inside a 200); and the tracking poller.  Each assertion waits for an
# outcome, never for a time: under valgrind everything is slow.  Then the
# server stops cleanly, and every process's log must hold no error --
# the dispatcher's first.
#
# Without $SHIPSYNC_VG_DIR it is a plain delivery test.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../t";
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $vg_dir = $ENV{SHIPSYNC_VG_DIR};
my $patience = $vg_dir ? 600 : 60;      # seconds for one outcome

my $sim = start_sim(latency_ms => 2);
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node('valgrind', "shipsync.max_response_bytes = '1MB'");
sub sql { return $node->safe_psql('postgres', $_[0]); }

my $checkword = 'fjcg5PGKaNpPSHFAZ4QsCOkV71R3zVci';
my $common = '"backoff_base_ms": 50, "backoff_max_ms": 500, "max_attempts": 4';
setup_orders($node, $sim, qq({"timeout_ms": 60000, $common, "poll_interval_s": 1}));
sql(qq{
	SELECT shipsync.create_provider('quick', 'generic', '$sim->{url}', '{"timeout_ms": 2000,
		"backoff_base_ms": 1000, "backoff_max_ms": 4000, "max_attempts": 10}');
	CREATE TABLE crm.orders_quick (LIKE crm.orders INCLUDING ALL);
	SELECT shipsync.attach('crm.orders_quick', 'quick', writeback => '{"tracking_number": "waybill_no"}');

	INSERT INTO shipsync.field_map (profile, direction, position, target_path, source, transform, arg, required) VALUES
		('vg_map', 'out', 1, 'order_ref', 'meta:order_key', 'identity', NULL, true),
		('vg_map', 'out', 2, 'order.to.name', 'customer', 'trim', NULL, true),
		('vg_map', 'out', 3, 'order.to.phone', 'phone', 'phone', '{"format": "e164"}', false),
		('vg_map', 'out', 4, 'order.to.address', 'address', 'trim', NULL, true);
	SELECT shipsync.create_provider('mapped', 'generic', '$sim->{url}',
		'{"timeout_ms": 60000, $common, "profile": "vg_map"}');
	CREATE TABLE crm.orders_mapped (LIKE crm.orders INCLUDING ALL);
	SELECT shipsync.attach('crm.orders_mapped', 'mapped', writeback => '{"tracking_number": "waybill_no"}');

	CREATE TABLE crm.orders_check (LIKE crm.orders INCLUDING ALL,
		CHECK (waybill_no IS NULL OR customer <> 'refuse'));
	SELECT shipsync.attach('crm.orders_check', 'sim', writeback => '{"tracking_number": "waybill_no"}');

	SELECT shipsync.create_provider('sf', 'sf_express', '$sim->{url}/sf/std/service', '{"timeout_ms": 60000, $common,
		"auth": {"type": "sf_express", "partner_id": "SHOP1", "checkword": "$checkword"},
		"sender": {"name": "张三丰", "phone": "+86 170 0680 5888", "province": "湖北省",
				   "city": "十堰市", "district": "武当山风景区", "address": "十堰市丹江口市公园路155号"},
		"monthly_card": "7551234567"}');
	CREATE TABLE crm.orders_sf (order_no text PRIMARY KEY,
		receiver_name text, receiver_phone text, receiver_province text, receiver_city text,
		receiver_district text, receiver_address text,
		cargo_name text, quantity integer, weight_kg numeric, amount numeric, remark text,
		waybill text);
	SELECT shipsync.attach('crm.orders_sf', 'sf', writeback => '{"tracking_number": "waybill"}');
});
my $dispatcher = sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'");
ok($dispatcher, "a dispatcher runs (PID $dispatcher)");

# The first attempt of each of these orders meets its fault; hostile
# answers hit every attempt, as from a carrier replaying its answer.
my %fault = (
	11 => { fault => 'status', status => 500 },
	12 => { fault => 'status', status => 429, retry_after => '1' },
	13 => { fault => 'reset_before' },
	14 => { fault => 'reset_after' },
	15 => { fault => 'malformed' },
	16 => { fault => 'oversized', bytes => 2 * 1024 * 1024 },
	17 => { fault => 'close' },
	18 => { fault => 'status', status => 400 },
);
my %hostile = (
	19 => { kind => 'long', bytes => 10240 },
	20 => { kind => 'nul' },
	21 => { kind => 'bad_utf8' },
);
my @rules = map { { %{ $fault{$_} }, match_order_ref => "^$_\$", first_attempts => 1 } } sort keys %fault;
push @rules, map { { fault => 'hostile', %{ $hostile{$_} }, match_order_ref => "^$_\$" } } sort keys %hostile;
push @rules, { fault => 'slow', ms => 4000, match_order_ref => '^22$', first_attempts => 1 };
sim_post($sim, '/_sim/faults', { rules => \@rules });

# orders 1..21 to 'sim', 22 to 'quick' (timeout 2 s, answered in 4 s)
sql(q{INSERT INTO crm.orders (customer, phone, address)
	SELECT '张伟 ' || g, '138' || lpad(g::text, 8, '0'), '上海市浦东新区世纪大道' || g || '号'
	FROM generate_series(1, 21) g});
sql(q{INSERT INTO crm.orders_quick (id, customer, address) VALUES (22, 'slow', 'somewhere')});
sql(q{INSERT INTO crm.orders_mapped (id, customer, phone, address) VALUES
	(23, ' Zoë ', '138 0013 8000', '1 Main Street'), (24, 'no address', NULL, NULL)});
sql(q{INSERT INTO crm.orders_check (id, customer, address) VALUES (25, 'refuse', 'x'), (26, 'accept', 'y')});
sql(q{INSERT INTO crm.orders_sf VALUES
	('VG-1', '郭襄阳', '189 6382 8829', '湖北省', '襄阳市', '襄城区', '环城东路 1 号', '地毯', 1, 6.6, 308, ''),
	('VG-2', '郭襄阳', '189 6382 8829', '湖北省', '襄阳市', '襄城区', NULL, '地毯', 1, 6.6, 308, '')});

sub settled
{
	return wait_until($node,
		"SELECT NOT EXISTS (SELECT 1 FROM shipsync.outbox WHERE state IN ('pending', 'retrying', 'in_flight'))"
		  . " AND NOT EXISTS (SELECT 1 FROM shipsync.inbox)", $patience);
}
ok(settled(), 'every intent settled');

sub states
{
	my ($tbl) = @_;
	return sql(qq{SELECT string_agg(o.order_key || ':' || o.state || coalesce('/' || o.error_class, ''),
			' ' ORDER BY o.order_key COLLATE "C")
		FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id) WHERE b.tbl = '$tbl'::regclass});
}
my %want = map { $_ => 'done' } 1 .. 17;
$want{18} = 'dead/http_4xx';
$want{$_} = 'dead/bad_response' for keys %hostile;
is(states('crm.orders'),
	join(' ', map { "$_:" . ($want{$_} eq 'done' ? 'done' : $want{$_}) } sort { "$a" cmp "$b" } keys %want),
	'faults: delivered after one failed attempt; 400 and hostile answers dead');
is(states('crm.orders_quick'), '22:done', 'a reply slower than the timeout: retried, delivered');
is(states('crm.orders_mapped'), '23:done 24:invalid/invalid_order', 'mapped: delivered; missing address invalid');
is(states('crm.orders_check'), '25:dead/writeback_failed 26:done',
	'a failing write-back fails alone (the slow path)');
is(states('crm.orders_sf'), 'VG-1:done VG-2:invalid/invalid_order', 'sf_express: signed, delivered; no address invalid');

# an update (PATCH) and a delete (cancel) of delivered orders
sql(q{UPDATE crm.orders SET address = '北京市朝阳区' WHERE id = 1; DELETE FROM crm.orders WHERE id = 2});
ok(settled(), 'the update and the cancel settled');
is( sql(q{SELECT string_agg(op || ':' || state, ' ' ORDER BY op) FROM shipsync.outbox
		WHERE order_key IN ('1', '2') AND op <> 'create'}),
	'cancel:done update:done', 'update PATCHed, delete cancelled');

# the poller: tracking pulled for the shipments of provider sim
ok(wait_until($node, q{SELECT count(*) > 0 FROM shipsync.tracking_event}, $patience),
	'the poller pulled tracking events');

is(sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_shipsync dispatcher'"),
	$dispatcher, 'the same dispatcher ran throughout');
$node->stop('fast');

# valgrind's verdict, one log per process; the dispatcher's first
SKIP:
{
	skip 'not under valgrind (SHIPSYNC_VG_DIR unset)', 3 unless $vg_dir;
	my (%errors, $dispatcher_log);
	for my $f (glob("$vg_dir/vg.*.log"))
	{
		my $text = slurp_file($f);
		my ($pid) = $f =~ /vg\.(\d+)\.log$/;
		$dispatcher_log = $text if $pid == $dispatcher;
		my $n = () = $text =~ /VGERROR-BEGIN/g;
		$errors{$pid} = $n if $n;
		diag("valgrind, PID $pid:\n" . substr($text, 0, 6000)) if $n;
	}
	ok(defined $dispatcher_log && $dispatcher_log =~ /ERROR SUMMARY: \d+ errors/,
		"valgrind watched the dispatcher to its exit (PID $dispatcher)");
	# which of valgrind.supp's suppressions the dispatcher met, for the record
	my %used;
	$used{$2} += $1 while ($dispatcher_log // '') =~ /used_suppression:\s+(\d+)\s+(.*?)\s+\S+:\d+\s*$/mg;
	diag("valgrind suppressed in the dispatcher: "
		  . (join('; ', map { "$used{$_} x $_" } sort keys %used) || 'nothing'));
	is($errors{$dispatcher} // 0, 0, 'valgrind: no error in the dispatcher');
	is(join(', ', map { "PID $_: $errors{$_}" } sort keys %errors), '',
		'valgrind: no error in any process of the server');
}

done_testing();
