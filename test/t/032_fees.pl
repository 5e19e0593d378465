# Money end to end: 200 orders are shipped at the simulator, whose create
# answers quote their fees; its clock delivers most of them (tracking
# pushes); then it bills each delivered shipment by a signed fee push
# (some first with a wrong amount and then a revision, some twice), by
# answering the dispatcher's fee pull, or only in the monthly statement --
# which bills every one of them again with 2% wrong amounts and a waybill
# no shipment has, and leaves one delivered shipment unbilled.  Every
# deliberate discrepancy must show up in shipsync.fee_difference and
# nothing else, the statement's totals must be the simulator's, and every
# order row must carry the right fee_total.  Reconciliation then makes each
# row of fee_difference one fee_mismatch ticket, closed when the row goes.
use strict;
use warnings;
use utf8;
use Encode qw(encode_utf8);
use FindBin;
use lib $FindBin::RealBin;
use HTTP::Tiny;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $NORDERS = 200;
my $SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';

my $sim = start_sim(seed => 11);
my $node = shipsync_node('fees', 'shipsync.idle_check_ms = 500');
setup_orders($node, $sim,
	qq({"timeout_ms": 5000, "backoff_base_ms": 50, "backoff_max_ms": 500,
	    "webhook_secret": "$SECRET", "fee_pull_after": "2 seconds"}));

sub sql { return $node->safe_psql('postgres', encode_utf8($_[0])); }

# 1. orders shipped: the create answers' fees are the quote
sql("INSERT INTO crm.orders (customer) SELECT '客户' || g FROM generate_series(1, $NORDERS) g");
ok(wait_until($node, 'SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL', 120),
	"$NORDERS orders shipped");
is(sql(q{SELECT count(*) FILTER (WHERE quote AND state = 'estimated' AND source = 'create'),
	count(DISTINCT order_key), min(amount) || ' ' || max(amount)
	FROM shipsync.fee_line}),
	($NORDERS * 2) . "|$NORDERS|1.2 12.50",
	'every order is quoted: freight 12.50 (a string) and insurance 1.2 (a number), estimated lines');
is(sql(q{SELECT count(*) FILTER (WHERE fee = 13.70) FROM crm.orders}),
	$NORDERS, 'every order row carries the quote, 13.70');

# 2. the simulator's clock delivers most of them (tracking pushes).  Its
# biller is told how to bill first: each delivery starts the pulls of its
# shipment at once (the delivered events are months old), and a pull that
# finds nothing is asked again only 9 times, 2 s apart.
sim_post($sim, '/_sim/fees/config', { seed => 11, push => 0.4, pull => 0.4, revise => 0.5, duplicate => 0.3 });
my ($tpid, $tport) = start_receiver($node, 'sim');
sim_post($sim, '/_sim/tracking/config',
	{ url => "http://127.0.0.1:$tport/track", dialect => 'generic', secret => $SECRET, seed => 11 });
for (1 .. 9)
{
	sim_post($sim, '/_sim/tracking/advance', { steps => 1 });
	flush_pushes($sim);
}
my $expected_tracking = sim_get($sim, '/_sim/tracking/expected');
my $ndelivered = grep { ($_->{status} // '') eq 'delivered' } values %$expected_tracking;
ok($ndelivered > $NORDERS / 2, "$ndelivered shipments delivered");
ok(wait_until($node, qq{SELECT count(DISTINCT order_key) = $ndelivered FROM shipsync.tracking_event
	WHERE status = 'delivered'}, 60), 'their delivered events are stored');
is(sql(q{SELECT count(*) FROM shipsync.fee_pull}), $ndelivered,
	'each delivery queued the fee pull of its shipment (option fee_pull_after)');

# 3. signed fee pushes, with revisions and duplicates
my ($fpid, $fport) = start_receiver($node, 'sim', 'ingest_fees');
sim_post($sim, '/_sim/fees/config',
	{ url => "http://127.0.0.1:$fport/fees", secret => $SECRET, seed => 11,
	  push => 0.4, pull => 0.4, revise => 0.5, duplicate => 0.3 });
my $sent = HTTP::Tiny->new(timeout => 300)->post("$sim->{url}/_sim/fees/push",
	{ headers => { 'Content-Type' => 'application/json' }, content => '{}' });
ok($sent->{success}, 'the simulator sent its fee notices');
my $stats = sim_get($sim, '/_sim/fees/stats');
note explain $stats;
ok($stats->{revisions} > 0 && $stats->{duplicates} > 0 && $stats->{stale_duplicates} > 0,
	"$stats->{notices} notices: $stats->{revisions} revised later, $stats->{duplicates} sent twice, "
	  . "$stats->{stale_duplicates} of them a first notice again after its revision");
is_deeply($stats->{answers}, { 200 => $stats->{sent} }, 'every notice was taken (200)');

my $billing = sim_get($sim, '/_sim/fees/expected');
my %by_channel;
push @{ $by_channel{ $billing->{$_}{channel} } }, $billing->{$_}{tracking_number} for keys %$billing;
my $list = sub { join(',', map { "'$_'" } @{ $by_channel{ $_[0] } // [] }) || "''" };
my $npush = scalar @{ $by_channel{push} // [] };
is(sql(qq{SELECT count(*) FILTER (WHERE amount = 12.50 AND fee_type = 'freight')
	+ count(*) FILTER (WHERE amount = 1.20 AND fee_type = 'insurance')
	FROM shipsync.fee_line WHERE NOT quote AND source = 'push' AND tracking_number IN (${\ $list->('push')})}),
	2 * $npush, "the $npush pushed shipments are billed freight 12.50 and insurance 1.20, once each");
is(sql(q{SELECT count(*) || ' ' || min(h.amount) || ' ' || max(h.amount)
	FROM shipsync.fee_line_history h JOIN shipsync.fee_line f USING (fee_line_id)}),
	"$stats->{revisions} 12.90 12.90",
	'each revision kept the wrong first version (12.90) in fee_line_history, '
	  . 'and no late duplicate of a first version undid a revision');

# 4. the dispatcher pulls the fees of the pull-channel shipments
my $npull = scalar @{ $by_channel{pull} // [] };
ok($npull > 0, "$npull shipments are billed only when asked");
ok( wait_until(
		$node, qq{SELECT count(*) = 2 * $npull FROM shipsync.fee_line
		WHERE NOT quote AND source = 'pull' AND tracking_number IN (${\ $list->('pull')})}, 120),
	'the dispatcher pulled their fees after delivery')
  or diag sql(q{SELECT last_result, count(*) FROM shipsync.fee_pull GROUP BY 1});
is(sql(qq{SELECT count(*) FROM shipsync.fee_pull fp JOIN shipsync.shipment s USING (binding_id, order_key, provider_id)
	WHERE s.tracking_number IN (${\ $list->('pull')}) AND fp.last_result = '2 lines new or revised'}),
	$npull, 'shipsync.fee_pull records what each pull brought');

# 5. the monthly statement: CSV with a BOM, CRLF, Chinese headers
my $st = sim_post($sim, '/_sim/fees/statement', { period => '2026-03', wrong => 0.02, unknown => 1 });
like($st->{csv}, qr/^\x{feff}运单号,费用类型,金额,币种/, 'the statement starts with a BOM and Chinese headers');
like($st->{csv}, qr/\r\n/, 'its lines end in CRLF');
my $import = sub {
	return decode_json(sql(qq{SELECT shipsync.import_statement('sim', \$csv\$$st->{csv}\$csv\$,
		options => '{"period": "2026-03", "columns": {"tracking_number": "运单号", "type": "费用类型",
			"amount": "金额", "currency": "币种", "key": "费用编号", "occurred_at": "寄件时间"}}')}));
};
my $r = $import->();
note explain $r;
is($r->{lines}, $st->{lines}, "all $st->{lines} lines of the statement imported");
is_deeply($r->{totals}, $st->{totals}, "its totals are the simulator's: $st->{totals}{CNY} CNY");
is(sql(q{SELECT totals::text || ' ' || errors::text || ' ' || lines FROM shipsync.statement}),
	encode_json($st->{totals}) =~ s/:/: /r . " [] $st->{lines}", 'the statement row says so too');
is($r->{unmatched}, 1, 'the unknown waybill is parked');
my $billed_before = grep { my $tn = $_; grep { $_ eq $tn } @{ $by_channel{push} // [] }, @{ $by_channel{pull} // [] } }
  @{ $st->{wrong} };
is($r->{revised}, $billed_before,
	"the wrong amounts of shipments billed before revised $billed_before of their lines");

# 6. every deliberate discrepancy is in fee_difference, and nothing else
my $want = join("\n", sort(
	(map { "amount_mismatch $_" } @{ $st->{wrong} }),
	(map { "unknown_waybill $_" } @{ $st->{unknown} }),
	(map { "unbilled $_" } @{ $st->{unbilled} })));
is(sql(q{SELECT string_agg(kind || ' ' || tracking_number, E'\n' ORDER BY kind || ' ' || tracking_number)
	FROM shipsync.fee_difference}), $want,
	'fee_difference lists the wrong amounts, the unknown waybill and the unbilled shipment, and nothing else');

# 7. the order rows carry the right fee_total
my $after = sim_get($sim, '/_sim/fees/expected');
my $values = join(",\n", map { sprintf("('%s', %s)", $_, $after->{$_}{fee_total}) } keys %$after);
sql("CREATE TABLE expected (order_key text PRIMARY KEY, fee_total numeric);
   INSERT INTO expected VALUES $values;");
is(sql(q{SELECT count(*) FROM crm.orders o LEFT JOIN expected x ON x.order_key = o.id::text
	WHERE o.fee IS DISTINCT FROM coalesce(x.fee_total, 13.70)}), '0',
	'every order row carries its fee_total: the bill (14.30 where it is wrong), else the quote');
is(sql(q{SELECT count(*) FROM crm.orders WHERE fee = 14.30}), scalar @{ $st->{wrong} },
	'the wrong amounts reached the order rows');
is(sql(q{SELECT count(*) FROM shipsync.outbox WHERE op <> 'create'}), '0',
	'the fee write-backs enqueued nothing');

# 8. the same statement again changes nothing
my $before = sql('SELECT count(*), sum(amount), sum(revision) FROM shipsync.fee_line');
$r = $import->();
ok($r->{duplicate}, 'importing the same statement again is a no-op');
is(sql('SELECT count(*), sum(amount), sum(revision) FROM shipsync.fee_line'), $before,
	'and no line changed');

# 9. settlement and trace()
is(sql(q{SELECT sum(unknown_waybills) || ' ' || sum(charged - refunded) FROM shipsync.settlement
	WHERE provider = 'sim' AND currency = 'CNY'}),
	"1 " . sql(q{SELECT sum(amount) FROM shipsync.fee_line WHERE NOT quote}),
	'settlement adds up every bill line, the unknown waybill included');
my $wrong = join(',', map { "'$_'" } @{ $st->{wrong} }) || "''";
my ($key) = split(/\n/, sql(qq{SELECT DISTINCT f.order_key FROM shipsync.fee_line f
	JOIN shipsync.fee_line_history h USING (fee_line_id)
	WHERE f.tracking_number NOT IN ($wrong) ORDER BY 1 LIMIT 1}));
is(sql(qq{SELECT string_agg((detail->>'source') || ' ' || (detail->>'amount') || ' r' || (detail->>'revision'), ', '
	ORDER BY at, (detail->>'revision')::int)
	FROM shipsync.trace('crm.orders', '$key') WHERE kind = 'fee' AND detail->>'fee_type' = 'freight'}),
	'create 12.50 r1, push 12.90 r1, push 12.50 r2',
	'trace() shows the quote, the first bill and its revision');

# 10. reconciliation: every row of fee_difference is one open fee_mismatch
# ticket (the unknown waybill's keyed by provider and tracking number, with
# no order); a row that goes closes its ticket at the next run
my $fee_rows = q{SELECT coalesce(string_agg(k, E'\n' ORDER BY k), '') FROM (
	SELECT DISTINCT kind || ' ' || tracking_number || ' ' || coalesce(order_key, '-') AS k
	FROM shipsync.fee_difference) d};
my $fee_tickets = q{SELECT coalesce(string_agg(k, E'\n' ORDER BY k), '') FROM (
	SELECT (facts->>'fee_kind') || ' ' || tracking_number || ' ' || coalesce(order_key, '-') AS k
	FROM shipsync.exception_ticket WHERE kind = 'fee_mismatch' AND resolved_at IS NULL) t};
my ($run, $ended) = run_reconcile($node, 'sim');
ok($ended, "reconciliation run $run ended");
is(sql($fee_tickets), sql($fee_rows), 'one open fee_mismatch ticket per row of fee_difference');
is(sql(q{SELECT count(*) FROM shipsync.reconciliation WHERE kind = 'fee_mismatch'}),
	scalar(@{ $st->{wrong} }) + 2, 'shown in shipsync.reconciliation');
is(sql(q{SELECT string_agg(coalesce(binding_id::text, '-') || ' ' || coalesce(order_key, '-')
		|| ' ' || subject, ', ')
	FROM shipsync.exception_ticket WHERE kind = 'fee_mismatch' AND facts->>'fee_kind' = 'unknown_waybill'}),
	"- - $st->{unknown}[0]", 'the unknown waybill: no order, keyed by its tracking number');
# a tolerance that takes the wrong amounts (0.60 above the quote) in
sql(q{UPDATE shipsync.provider
	SET options = options || '{"fee_tolerance": {"abs": "1.00", "pct": 0}}' WHERE name = 'sim'});
($run, $ended) = run_reconcile($node, 'sim');
ok($ended, "reconciliation run $run ended");
is(sql($fee_tickets), sql($fee_rows), 'the tickets still match fee_difference');
is(sql(qq{SELECT count(*) || ' ' || bool_and(resolved_by = 'reconcile') FROM shipsync.exception_ticket
	WHERE kind = 'fee_mismatch' AND resolved_at IS NOT NULL AND run_id = $run}),
	scalar(@{ $st->{wrong} }) . ' true',
	'the amount mismatches no longer listed closed their tickets (resolved by reconcile)');

for my $pid ($tpid, $fpid)
{
	kill 'TERM', $pid;
	waitpid($pid, 0);
}
$node->stop;
stop_sim($sim);
done_testing();
