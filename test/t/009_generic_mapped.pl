# The generic dialect through a field map, end to end.
#
# Proves, with a real dispatcher against test/sim/carrier_sim.py started
# with --kuaidi100 (it then checks the signed headers of every request):
#   1. a profile's outbound rows shape the request body, transforms included,
#      and its inbound rows pick the fields written back;
#   2. kuaidi100 signing: accepted with the right key; a wrong key is a 401,
#      dead with a ticket;
#   3. a required field missing: invalid, a ticket, nothing sent;
#   4. updates are PATCHed with the mapped body;
#   5. a changed map applies to the next order without a restart, and a
#      provider with no rows keeps the generic body.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use Encode qw(encode_utf8);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $sim = start_sim(args => [ '--kuaidi100', 'SHOPX:k3y-secret' ]);
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node('generic_mapped');

sub sql { return $node->safe_psql('postgres', $_[0]); }

my $common = '"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 300, "max_attempts": 4';
sql(qq{
	CREATE EXTENSION pg_shipsync;
	INSERT INTO shipsync.field_map (profile, direction, position, target_path, source, transform, arg, required) VALUES
		('sim_json', 'out', 1, 'order_ref', 'meta:order_key', 'identity', NULL, true),
		('sim_json', 'out', 2, 'order.to.name', 'customer', 'trim', NULL, true),
		('sim_json', 'out', 3, 'order.to.phone', 'phone', 'phone', '{"format": "e164"}', false),
		('sim_json', 'out', 4, 'order.to.address', 'address', 'trim', NULL, true),
		('sim_json', 'out', 5, 'order.parcel.weight_kg', 'weight_g', 'unit', '{"from": "g", "to": "kg"}', false),
		('sim_json', 'out', 6, 'order.lines[sku="A-1"].qty', 'qty', 'to_number', NULL, false),
		('sim_json', 'in', 1, 'tracking_number', 'tracking_number', 'upper', NULL, true),
		('sim_json', 'in', 2, 'label_url', 'id', 'identity', NULL, false);
	SELECT shipsync.create_provider('mapsim', 'generic', '$sim->{url}', '{$common, "profile": "sim_json",
		"auth": {"type": "kuaidi100", "customer": "SHOPX", "key": "k3y-secret"}}');
	SELECT shipsync.create_provider('badkey', 'generic', '$sim->{url}', '{$common, "profile": "sim_json",
		"auth": {"type": "kuaidi100", "customer": "SHOPX", "key": "wrong"}}');
	CREATE TABLE orders (id bigint PRIMARY KEY, customer text, phone text, address text,
		weight_g integer, qty text, waybill_no text, label text);
	CREATE TABLE orders_bad (LIKE orders INCLUDING ALL);
	SELECT shipsync.attach('orders', 'mapsim', writeback => '{"tracking_number": "waybill_no", "label_url": "label"}');
	SELECT shipsync.attach('orders_bad', 'badkey', writeback => '{"tracking_number": "waybill_no"}');
});
my $pid0 = sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_shipsync dispatcher'");

sub wait_state
{
	my ($tbl, $id, $states) = @_;
	return wait_until($node,
		"SELECT o.state IN ($states) FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id)"
		  . " WHERE b.tbl = '$tbl'::regclass AND o.order_key = '$id' ORDER BY o.id DESC LIMIT 1", 30);
}

sub sim_order
{
	my ($id) = @_;
	my $ships = sim_get($sim, "/_sim/shipments?order_ref=$id");
	return undef unless @$ships;
	return sim_get($sim, "/_sim/shipments/$ships->[-1]{id}");
}

# 1. mapped out, mapped in
sql(q{INSERT INTO orders VALUES (1, ' 张三 ', '138 0013 8000', '上海市浦东新区世纪大道100号', 1500, '2', NULL, NULL)});
ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM orders WHERE id = 1", 30), 'mapped: delivered');
my $rec = sim_order(1);
is( encode_utf8($rec->{order}{to}{name}) . '|' . $rec->{order}{to}{phone} . '|'
	  . $rec->{order}{parcel}{weight_kg} . '|' . $rec->{order}{lines}[0]{sku} . '|' . $rec->{order}{lines}[0]{qty},
	'张三|+8613800138000|1.5|A-1|2', 'mapped: the carrier got the mapped body');
is(sql("SELECT waybill_no = upper(waybill_no) AND label LIKE 'shp_%' FROM orders WHERE id = 1"), 't',
	'mapped: inbound rows chose what is written back');
is( sql(q{SELECT request_body FROM shipsync.outbox WHERE order_key = '1' AND binding_id =
		(SELECT binding_id FROM shipsync.binding WHERE tbl = 'orders'::regclass)}),
	'{"order_ref":"1","order":{"to":{"name":"张三","phone":"+8613800138000","address":"上海市浦东新区世纪大道100号"},"parcel":{"weight_kg":1.5},"lines":[{"sku":"A-1","qty":2}]}}',
	'mapped: the stored body, compact and in rule order');

# 2. kuaidi100 signing with a wrong key
sql(q{INSERT INTO orders_bad VALUES (2, 'x', NULL, '北京市', NULL, NULL, NULL, NULL)});
ok(wait_state('orders_bad', 2, "'dead'"), 'wrong key: dead');
is( sql(q{SELECT last_status || '|' || error_class || '|' || attempts FROM shipsync.outbox o
		JOIN shipsync.binding b USING (binding_id) WHERE b.tbl = 'orders_bad'::regclass}),
	'401|http_4xx|1', 'wrong key: a 401, not retried');
is(sql("SELECT count(*) FROM shipsync.exception_ticket WHERE order_key = '2'"), 1, 'wrong key: a ticket');

# 3. a required field missing
my $before = sim_get($sim, '/_sim/stats')->{requests};
sql(q{INSERT INTO orders VALUES (3, '李四', '12', NULL, NULL, 'many', NULL, NULL)});
ok(wait_state('orders', 3, "'invalid'"), 'invalid: the intent is invalid');
like(sql("SELECT last_error FROM shipsync.outbox WHERE order_key = '3'"),
	qr/order\.to\.phone \(malformed: a phone number has 5 to 15 digits\), order\.to\.address \(missing\), order\.lines\[sku="A-1"\]\.qty \(malformed: not a number\)/,
	'invalid: every field and why');
is(sql("SELECT count(*) FROM shipsync.exception_ticket WHERE order_key = '3' AND kind = 'invalid_order'"),
	1, 'invalid: one ticket');
is(sim_get($sim, '/_sim/stats')->{requests}, $before, 'invalid: nothing sent');

# 4. an update is a PATCH with the mapped body
sql(q{UPDATE orders SET address = '上海市静安区南京西路1号' WHERE id = 1});
ok(wait_settled($node, "'1'", 30), 'update: settled');
$rec = sim_order(1);
is($rec->{updates} . '|' . encode_utf8($rec->{last_update}{order}{to}{address}), '1|上海市静安区南京西路1号',
	'update: PATCHed with the mapped body');

# 5. a changed map applies to the next order, without a restart
sql(q{UPDATE shipsync.field_map SET target_path = 'order.to.street' WHERE profile = 'sim_json' AND target_path = 'order.to.address'});
sql(q{INSERT INTO orders VALUES (4, '王五', NULL, '广州市天河区', NULL, NULL, NULL, NULL)});
ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM orders WHERE id = 4", 30), 'changed map: delivered');
$rec = sim_order(4);
is(encode_utf8($rec->{order}{to}{street} // '') . '|' . (exists $rec->{order}{to}{address} ? 'old' : 'new'),
	'广州市天河区|new', 'changed map: the next order has the new path');
is(sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_shipsync dispatcher'"), $pid0,
	'changed map: the same dispatcher');

# deleting every outbound row brings the generic body back
sql(q{DELETE FROM shipsync.field_map WHERE profile = 'sim_json' AND direction = 'out'});
sql(q{INSERT INTO orders VALUES (5, '赵六', NULL, '深圳市', NULL, NULL, NULL, NULL)});
ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM orders WHERE id = 5", 30), 'generic again: delivered');
is(encode_utf8(sim_order(5)->{order}{customer}), '赵六', 'generic again: the whole row as "order"');

$node->stop;
done_testing();
