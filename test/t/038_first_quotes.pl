# The first quotes of created orders: the apply records the common case in
# one statement of its own (apply.c, APPLY_FIRST_QUOTES) and hands every
# other case to shipsync._record_quotes().  What a user relies on is that
# the fee lines, the fee sums, the totals and the tickets are the same
# either way.  The simulator answers eleven orders with fee lists of every
# shape the choice depends on (two lines of one type, keys, a key that
# clashes with a generated one, two currencies, an unknown currency, none,
# a refund, two codes of one canonical type, an unmapped code, an empty
# list), then fifty orders with its usual quote; then:
#   1. the fifty went by the one statement: no call of _record_quotes();
#   2. the cases it must not take went to _record_quotes(), which made
#      '#2' keys, 'XXX' currencies and the fee_currency_mixed ticket;
#   3. _record_quotes() run again over every answer, on empty fee tables,
#      makes exactly the rows that are there;
#   4. no fee_sum row lacks a fee line of its order, which is what lets
#      the one statement look for an order's lines and not its sums.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use ShipsyncTest;

my $sim = start_sim();
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node('first_quotes', "track_functions = 'pl'");
setup_orders($node, $sim);

sub sql { return $node->safe_psql('postgres', $_[0]); }

# order id => its create answer's fees (ids follow the order of insertion)
my @cases = (
	[ 'usual',    undef ],
	[ 'two of a type', '[{"type":"freight","amount":"5","currency":"CNY"},{"type":"freight","amount":"6","currency":"CNY"}]' ],
	[ 'keys',     '[{"type":"freight","amount":"5","currency":"CNY","key":"A"},{"type":"freight","amount":"6","currency":"CNY","key":"B"}]' ],
	[ 'key clash', '[{"type":"freight","amount":"5","currency":"CNY","key":""},{"type":"freight","amount":"6","currency":"CNY"}]' ],
	[ 'two currencies', '[{"type":"freight","amount":"5","currency":"CNY"},{"type":"insurance","amount":"1","currency":"USD"}]' ],
	[ 'unknown currency', '[{"type":"freight","amount":"5","currency":"ZZZ"}]' ],
	[ 'no currency', '[{"type":"freight","amount":"5"}]' ],
	[ 'refund',   '[{"type":"freight","amount":"10","currency":"CNY"},{"type":"refund","amount":"2","currency":"CNY"}]' ],
	[ 'one type, two codes', '[{"type":"freight","amount":"5","currency":"CNY"},{"type":"FREIGHT","amount":"6","currency":"CNY"}]' ],
	[ 'unmapped code', '[{"type":"weird_fee","amount":"5","currency":"CNY"}]' ],
	[ 'empty',    '[]' ]);
my @rules;
for my $i (0 .. $#cases)
{
	next unless defined $cases[$i][1];
	push @rules,
	  { fault => 'hostile', field => 'fees', kind => 'json', text => $cases[$i][1],
		match_order_ref => '^' . ($i + 1) . '$' };
}
sim_post($sim, '/_sim/faults', { rules => \@rules });

my $calls = "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions"
  . " WHERE schemaname = 'shipsync' AND funcname = '_record_quotes'";

# Deliver $n orders named "$tag N", one transaction; then one more order a
# second and a half later, so that the applier's statistics before it are
# flushed (at most once a second, after a batch)
sub deliver
{
	my ($n, $tag) = @_;
	sql("INSERT INTO crm.orders (customer) SELECT '$tag ' || g FROM generate_series(1, $n) g");
	my $ok = wait_until($node,
		"SELECT count(*) = $n FROM crm.orders WHERE customer LIKE '$tag %' AND waybill_no IS NOT NULL");
	usleep(1_500_000);
	sql("INSERT INTO crm.orders (customer) VALUES ('$tag flush')");
	return $ok
	  && wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE customer = '$tag flush'");
}

ok(deliver(scalar @cases, 'Case'), 'the eleven cases are delivered');
ok(wait_until($node, "SELECT ($calls) > 0"), 'the cases it must not take went to _record_quotes()');
sim_post($sim, '/_sim/faults', { rules => [] });
my $before = sql($calls);
ok(deliver(50, 'Usual'), 'fifty orders with the usual quote are delivered');
is(sql($calls), $before, 'their first quotes were recorded without _record_quotes()');

# what the cases made
sub lines_of
{
	my ($id) = @_;
	return sql("SELECT string_agg(fee_type || '/' || fee_key || '/' || amount || '/' || currency, ' '"
		  . " ORDER BY fee_type, fee_key) FROM shipsync.fee_line WHERE order_key = '$id'");
}
is(lines_of(1), 'freight//12.50/CNY insurance//1.2/CNY', 'usual: two lines');
is(lines_of(2), 'freight//5/CNY freight/#2/6/CNY', 'two of a type: the second keyed #2');
is(lines_of(3), 'freight/A/5/CNY freight/B/6/CNY', 'keys: the carrier\'s keys');
is(lines_of(4), 'freight//6/CNY', 'key clash: the same line twice, the last kept');
is(lines_of(6), 'freight//5/XXX', 'unknown currency: XXX');
is(lines_of(7), 'freight//5/XXX', 'no currency, none for the provider: XXX');
is(lines_of(9), 'freight//5/CNY freight/#2/6/CNY', 'one type, two codes: keyed apart');
is(lines_of(10), 'other//5/CNY', 'unmapped code: other');
is(lines_of(11), '', 'empty: no line');
is(sql("SELECT estimated || ' ' || quote_lines FROM shipsync.fee_sum WHERE order_key = '8'"),
	'8 2', 'refund: estimated 10 - 2, two lines');
is(sql("SELECT fee FROM crm.orders WHERE id = 8"), '8', 'refund: the order row carries 8');
is( sql("SELECT count(*) FROM shipsync.exception_ticket WHERE kind = 'fee_currency_mixed'"
		  . " AND order_key = '5' AND resolved_at IS NULL"),
	'1', 'two currencies: a fee_currency_mixed ticket');

# _record_quotes() again over every answer, on empty fee tables
my $cols = 'provider_id, tracking_number, fee_type, fee_key, quote, binding_id, order_key,'
  . ' raw_type, amount, currency, settlement, payer, billed_weight_kg, state, source,'
  . ' statement_id, occurred_at, recorded_by, revision';
my $scols = 'binding_id, order_key, provider_id, currency, estimated, charged, refunded,'
  . ' quote_lines, bill_lines';
is( sql(qq{BEGIN;
		CREATE TEMP TABLE got_l AS SELECT $cols FROM shipsync.fee_line;
		CREATE TEMP TABLE got_s AS SELECT $scols FROM shipsync.fee_sum;
		CREATE TEMP TABLE got_f AS SELECT order_key, fee_total FROM shipsync.shipment;
		TRUNCATE shipsync.fee_line, shipsync.fee_sum CASCADE;
		SELECT count(*) FROM shipsync._record_quotes(
			(SELECT array_agg(binding_id ORDER BY order_key::int) FROM shipsync.shipment),
			(SELECT array_agg(order_key ORDER BY order_key::int) FROM shipsync.shipment),
			(SELECT array_agg(provider_id ORDER BY order_key::int) FROM shipsync.shipment),
			(SELECT array_agg(tracking_number ORDER BY order_key::int) FROM shipsync.shipment),
			(SELECT array_agg(fees::text ORDER BY order_key::int) FROM shipsync.shipment)) \\g /dev/null
		SELECT (SELECT count(*) FROM shipsync.fee_line) || ' lines; '
			|| (SELECT count(*) FROM (SELECT * FROM got_l EXCEPT ALL SELECT $cols FROM shipsync.fee_line
				UNION ALL (SELECT $cols FROM shipsync.fee_line EXCEPT ALL SELECT * FROM got_l)) d)
			|| ' differ; sums '
			|| (SELECT count(*) FROM (SELECT * FROM got_s EXCEPT ALL SELECT $scols FROM shipsync.fee_sum
				UNION ALL (SELECT $scols FROM shipsync.fee_sum EXCEPT ALL SELECT * FROM got_s)) d)
			|| ' differ; totals '
			|| (SELECT count(*) FROM got_f JOIN shipsync.shipment s USING (order_key)
				WHERE got_f.fee_total IS DISTINCT FROM s.fee_total)
			|| ' differ';
		ROLLBACK;}),
	(2 * 53 + 14) . ' lines; 0 differ; sums 0 differ; totals 0 differ',
	'_record_quotes() makes the same lines, sums and totals from the same answers');

# The first quotes statement looks for an order's fee lines, not for its
# fee_sum rows: a sum exists only beside a line of its order
is( sql("SELECT count(*) FROM shipsync.fee_sum s WHERE NOT EXISTS (SELECT 1 FROM shipsync.fee_line l"
		  . " WHERE l.binding_id = s.binding_id AND l.order_key = s.order_key)"),
	'0', 'no fee_sum row without a fee line of its order');
isnt(sql("SELECT count(*) FROM shipsync.fee_sum"), '0', '(not vacuous: there are sums)');

# A first quote whose total has more decimals than the order's column
# holds (a dinar's fils: KWD has three) is not written, by either path, and the order gets a ticket, as a
# bill's total does (the column was left empty without a word)
sql(q{CREATE TABLE crm.orders2 (id text PRIMARY KEY, customer text NOT NULL, phone text,
		address text, waybill_no text, ship_status text, fee numeric(10,2), label text);
	SELECT shipsync.attach('crm.orders2', 'sim', writeback => '{"tracking_number": "waybill_no",
		"status": "ship_status", "fee_total": "fee", "label_url": "label"}')});
sim_post($sim, '/_sim/faults', { rules => [
	{ fault => 'hostile', field => 'fees', kind => 'json', match_order_ref => '^Q1$',
	  text => '[{"type":"freight","amount":"13.705","currency":"KWD"}]' },
	{ fault => 'hostile', field => 'fees', kind => 'json', match_order_ref => '^Q2$',
	  text => '[{"type":"freight","amount":"13.705","currency":"KWD"},{"type":"freight","amount":"1","currency":"KWD"}]' },
	{ fault => 'hostile', field => 'fees', kind => 'json', match_order_ref => '^Q3$',
	  text => '[{"type":"freight","amount":"13.70","currency":"CNY"}]' } ] });
sql("INSERT INTO crm.orders2 (id, customer) VALUES ('Q1', 'q'), ('Q2', 'q'), ('Q3', 'q')");
ok(wait_until($node, "SELECT count(*) = 3 FROM crm.orders2 WHERE waybill_no IS NOT NULL"),
	'the three orders of a numeric(10,2) column are shipped');
is( sql(q{SELECT string_agg(o.id || ':' || coalesce(o.fee::text, '-') || ':' || s.fee_total
			|| ':' || coalesce((SELECT string_agg(x.kind, ',') FROM shipsync.exception_ticket x
				WHERE x.order_key = o.id AND x.resolved_at IS NULL AND x.detail LIKE '%more decimals%'), '-'), ' '
			ORDER BY o.id)
		FROM crm.orders2 o JOIN shipsync.shipment s ON s.order_key = o.id}),
	'Q1:-:13.705:writeback_failed Q2:-:14.705:writeback_failed Q3:13.70:13.70:-',
	'a quote total the column cannot hold is left out, with a writeback_failed ticket');

is(sim_get($sim, '/_sim/stats')->{duplicate_orders}, 0, 'no order shipped twice');
$node->stop;
done_testing();
