# SF Express fees after delivery: orders shipped through the simulator's SF
# gateway are delivered (SF route pushes with opCode 80, unsigned, through
# ingest_tracking), and the dispatcher then asks SF for each waybill's fees
# with a signed EXP_RECE_QUERY_SFWAYBILL: the answer's fee list (运费,
# 保价费; settlementTypeCode 2, monthly; the billed weight) is read through
# the sf_express profile's field map and becomes bill lines, whose total is
# written onto the order rows.  A waybill SF has not billed yet answers
# 8148: recorded, asked again later, never an error.
use strict;
use warnings;
use utf8;
use Encode qw(encode_utf8 decode_utf8);
use FindBin;
use lib $FindBin::RealBin;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $NORDERS = 6;
my $sim = start_sim();
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node('sf_fees', 'shipsync.idle_check_ms = 500');

sub sql { return decode_utf8($node->safe_psql('postgres', encode_utf8($_[0]))); }

my $sf_url = "$sim->{url}/sf/std/service";
sql(qq{
	CREATE EXTENSION pg_shipsync;
	SELECT shipsync.create_provider('sf', 'sf_express', '$sf_url', '{"timeout_ms": 2000,
		"backoff_base_ms": 50, "backoff_max_ms": 300, "accept_unsigned_pushes": true,
		"fee_pull_after": "1 second",
		"auth": {"type": "sf_express", "partner_id": "SHOP1", "checkword": "fjcg5PGKaNpPSHFAZ4QsCOkV71R3zVci"},
		"sender": {"name": "张三丰", "phone": "17006805888", "province": "湖北省", "city": "十堰市",
				   "district": "武当山风景区", "address": "十堰市丹江口市公园路155号"},
		"monthly_card": "7551234567"}');
	CREATE TABLE orders (order_no text PRIMARY KEY, receiver_name text, receiver_phone text,
		receiver_province text, receiver_city text, receiver_district text, receiver_address text,
		waybill text, ship_status text, fee numeric(10,2));
	SELECT shipsync.attach('orders', 'sf',
		writeback => '{"tracking_number": "waybill", "status": "ship_status", "fee_total": "fee"}');
	INSERT INTO orders (order_no, receiver_name, receiver_phone, receiver_province, receiver_city,
		receiver_district, receiver_address)
	SELECT 'SO-' || g, '李四', '13800138000', '广东省', '深圳市', '南山区', '科技园路 ' || g || ' 号'
	FROM generate_series(1, $NORDERS) g;
});
ok(wait_until($node, 'SELECT count(*) = 0 FROM orders WHERE waybill IS NULL', 60),
	"$NORDERS orders shipped at SF");
is(sql('SELECT count(*) FROM shipsync.fee_line'), '0', 'SF quotes nothing when it creates an order');

# SF has not billed the first waybill yet
my @waybills = split(/\n/, sql('SELECT waybill FROM orders ORDER BY order_no'));
sim_post($sim, '/_sim/sf/fees', { unbilled => [ $waybills[0] ] });

# delivered: one SF route push per waybill, opCode 80
for my $i (0 .. $#waybills)
{
	my $body = encode_json({ Body => { WaybillRoute => [ {
		mailno => $waybills[$i], orderid => 'SO-' . ($i + 1), acceptTime => '2026-03-05 10:00:00',
		acceptAddress => '深圳市南山区', remark => '已签收', opCode => '80', id => "route-$i" } ] } });
	sql(qq{SELECT shipsync.ingest_tracking('sf', \$b\$$body\$b\$)});
}
is(sql(q{SELECT count(*) FROM orders WHERE ship_status = 'delivered'}), $NORDERS,
	'every order is delivered');
is(sql('SELECT count(*) FROM shipsync.fee_pull'), $NORDERS, 'each delivery queued a fee query');

# the waybill not billed yet: 8148 recorded, asked again, no error.  First,
# since a query that finds nothing is asked again only 9 times, a second
# apart: SF bills it as soon as that is seen.
ok( wait_until(
		$node, qq{SELECT pulls >= 2 AND last_result = 'SF Express answered 8148'
		FROM shipsync.fee_pull fp JOIN shipsync.shipment s USING (binding_id, order_key, provider_id)
		WHERE s.tracking_number = '$waybills[0]'}, 60),
	'a waybill SF has not billed yet answers 8148, which is recorded and asked again');
unlike(PostgreSQL::Test::Utils::slurp_file($node->logfile), qr/fee pulls of provider "sf" failed/,
	'8148 is not a failure');
is(sql(qq{SELECT fee IS NULL FROM orders WHERE waybill = '$waybills[0]'}), 't',
	'and its order has no fee_total yet');

# SF bills it: a later query brings it in (checked at the end)
sim_post($sim, '/_sim/sf/fees', { unbilled => [] });

# the dispatcher asks SF for the fees, signed as every SF call
ok( wait_until(
		$node, q{SELECT count(DISTINCT tracking_number) = } . ($NORDERS - 1)
		  . qq{ FROM shipsync.fee_line WHERE source = 'pull' AND tracking_number <> '$waybills[0]'}, 60),
	'the fees of every billed waybill were pulled')
  or diag sql('SELECT last_result, count(*) FROM shipsync.fee_pull GROUP BY 1');
is(sql(qq{SELECT string_agg(fee_type || ' ' || raw_type || ' ' || amount || ' ' || currency || ' '
	|| settlement || ' ' || billed_weight_kg || ' ' || state, ', ' ORDER BY fee_type)
	FROM shipsync.fee_line WHERE tracking_number = '$waybills[1]'}),
	'freight 运费 23.0 CNY monthly 2.5 charged, insurance 保价费 2.00 CNY monthly 2.5 charged',
	'the answer is read through the sf_express field map: Chinese fee names mapped, monthly, the billed weight');
is(sql(qq{SELECT count(*) FROM orders WHERE fee = 25.00 AND waybill <> '$waybills[0]'}), $NORDERS - 1,
	'the pulled totals are on the order rows');
my $stats = sim_get($sim, '/_sim/sf/stats');
ok($stats->{fee_queries} >= $NORDERS && $stats->{bad_signature} == 0,
	"$stats->{fee_queries} fee queries, every msgDigest good");

ok(wait_until($node, qq{SELECT fee = 25.00 FROM orders WHERE waybill = '$waybills[0]'}, 60),
	'once SF has billed it, the next query brings its fees');
is(sql(q{SELECT count(*) FROM shipsync.fee_difference}), '0', 'nothing differs');

$node->stop;
done_testing();
