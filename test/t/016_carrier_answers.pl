# A carrier's answer is data: what pg_shipsync keeps of a hostile error body,
# and what it tells the channel shipsync.
#
# The simulator answers with long bodies full of line breaks, a forged
# header line, terminal escapes, NUL, DEL, C1 controls and bytes that are
# not UTF-8.  Whether the intent retries (503) or dies (400), last_error,
# the delivery log and the ticket hold an escaped excerpt of at most 300
# characters of valid UTF-8, never the raw body, and the server log gets no
# line of the carrier's making.  A role with no shipsync grant listening on
# the channel hears kinds and ids (dead_intent, table_dropped), never the
# error, and cannot read the details.  A shipment id of ".." or "." is
# sent as one segment of the URL (%2E%2E), not taken by libcurl for the
# parent of /shipments, and request_url says what was sent.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use MIME::Base64 qw(encode_base64);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $sim = start_sim();
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node('carrier_answers');
setup_orders($node, $sim,
	'{"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 200, "max_attempts": 3}');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# a role with no grant of pg_shipsync's, listening from the start
sql('CREATE ROLE outsider LOGIN');
my $listener = $node->background_psql('postgres', on_error_stop => 0,
	extra_params => [ '-U', 'outsider' ]);
$listener->query_safe('LISTEN shipsync');

# 2,000 characters of Chinese after the hostile head: far past 300
my $hostile = "{\"error\": \"bad\r\nX-Injected: 1\r\n\r\n\x1b[31mred\x1b[0m \x00nul \x7fdel "
  . "\xc2\x85nel \xff\xfe not-utf8 \xe5\xbf "    # a 快 cut in two
  . ("\xe5\xbf\xab" x 2000) . "\"}";

# What the three places hold must be an excerpt, escaped and valid: every
# row of them, and at least one.
sub check_excerpt
{
	my ($where, $what) = @_;
	my $cond = "$what IS NOT NULL"
	  . " AND pg_catalog.convert_from(pg_catalog.textsend($what), 'UTF8') = $what"
	  . " AND pg_catalog.char_length($what) <= 300"
	  . " AND $what !~ '[\\x01-\\x1f\\x7f-\\x9f]'"
	  . " AND $what LIKE '%HTTP %: {\"error\": \"bad\\\\r\\\\nX-Injected: 1\\\\r\\\\n\\\\r\\\\n\\\\x1b[31mred\\\\x1b[0m \\\\x00nul \\\\x7fdel \\\\u0085nel \\\\xff\\\\xfe not-utf8 \\\\xe5\\\\xbf 快快快%'"
	  . " AND $what LIKE '%…'";
	return sql("SELECT count(*) > 0 AND bool_and($cond) FROM $where");
}

for my $case ([ 503, 'a retried' ], [ 400, 'a dead' ])
{
	my ($status, $what) = @$case;
	sim_post($sim, '/_sim/reset');
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'status', status => $status,
			body_base64 => encode_base64($hostile, '') } ] });
	my $id = sql("INSERT INTO crm.orders (customer) VALUES ('$status') RETURNING id");
	ok(wait_until($node,
		"SELECT state IN ('retrying', 'dead') AND last_status = $status FROM shipsync.outbox WHERE order_key = '$id' AND op = 'create'"),
		"$what intent ($status) with a hostile body");
	is(check_excerpt("shipsync.outbox WHERE order_key = '$id' AND op = 'create'", 'last_error'),
		't', "$status: last_error is an escaped excerpt of at most 300 characters of valid UTF-8");
	is(check_excerpt(
			"shipsync.delivery_log l JOIN shipsync.outbox o ON o.id = l.outbox_id"
			  . " WHERE o.order_key = '$id'", 'l.error'),
		't', "$status: so is the delivery log's error");
}
# The 503 intent may still be retrying, now against the 400 (a reset keeps
# the rules until new ones replace them): it ends dead, perhaps after the
# 400's intent.  Wait for that end, so that the tickets read below are all
# there will be.
ok(wait_settled($node, "SELECT id::text FROM crm.orders"), 'every intent has ended');
is(check_excerpt("shipsync.exception_ticket WHERE kind = 'dead_intent'", 'detail'),
	't', 'and the ticket\'s detail');
unlike(slurp_file($node->logfile), qr/^X-Injected/m, 'the server log has no line of the carrier\'s');

# what the listener heard: kinds and ids only
my $bid = sql(q{SELECT binding_id FROM shipsync.binding WHERE tbl = 'crm.orders'::regclass});
my $dead = sql(q{SELECT string_agg(format('{"event" : "dead_intent", "outbox_id" : %s, "ticket_id" : %s, "binding_id" : %s, "order_key" : "%s"}',
	t.outbox_id, t.ticket_id, t.binding_id, t.order_key), ',' ORDER BY t.ticket_id)
	FROM shipsync.exception_ticket t});
# A notification reaches the listener's session when its sender's commit
# signals it, a moment after the ticket is visible: what the listener
# prints from now until it has heard of n tickets (or 30 s have passed).
sub hear
{
	my ($n) = @_;
	my ($heard, $count) = ('', 0);
	for (my $deadline = time() + 30; $count < $n && time() < $deadline;)
	{
		$heard .= $listener->query_safe('SELECT 1');
		$count = () = $heard =~ /Asynchronous notification "shipsync"/g;
	}
	return $heard;
}
my $heard = hear(sql('SELECT count(*) FROM shipsync.exception_ticket'));
my @payloads = $heard =~ /Asynchronous notification "shipsync" with payload "(.*?)" received/g;
is(join(',', @payloads), $dead, 'a listener with no grant hears each dead intent: kind, intent, ticket, binding, order key');
unlike($heard, qr/HTTP|bad|Injected|快|\\x/, 'and nothing of the error body');

# a dropped table: its waiting intents end with an id-only notification
sql(q{
	SELECT shipsync.pause('sim');
	CREATE TABLE crm.returns (id int PRIMARY KEY, customer text);
	SELECT shipsync.attach('crm.returns', 'sim');
	INSERT INTO crm.returns VALUES (7, 'r');
});
my $rbid = sql(q{SELECT binding_id FROM shipsync.binding WHERE tbl = 'crm.returns'::regclass});
sql('DROP TABLE crm.returns');
my ($ob, $tk) = split /\|/, sql(q{SELECT outbox_id, ticket_id FROM shipsync.exception_ticket WHERE kind = 'table_dropped'});
$heard = hear(1);
like($heard, qr/payload "\{"event" : "table_dropped", "outbox_id" : $ob, "ticket_id" : $tk, "binding_id" : $rbid, "order_key" : "7"\}"/,
	'a dropped table\'s intent is announced with ids only');

# and reading more takes a grant it does not have
my (undef, $failed) = $listener->query('SELECT count(*) FROM shipsync.outbox');
ok($failed && $listener->{stderr} =~ /permission denied for schema shipsync/,
	'the details stay behind its missing grant');
$listener->quit;

# a table dropped while its intent is in flight: the answer is recorded, and
# that there is no order row left to write it back onto is no error
# (writeback.c): the intent is done, no writeback_failed ticket
sim_post($sim, '/_sim/reset');
sql(q{SELECT shipsync.create_provider('gone', 'generic', '} . $sim->{url} . q{', '{"timeout_ms": 20000}');
	CREATE TABLE crm.gone (id int PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('crm.gone', 'gone', writeback => '{"tracking_number": "waybill_no"}');});
my $gbid = sql(q{SELECT binding_id FROM shipsync.binding WHERE tbl = 'crm.gone'::regclass});
sim_post($sim, '/_sim/faults',
	{ rules => [ { fault => 'slow', ms => 15000, held => JSON::PP::true, match_order_ref => '^8$' } ] });
sql(q{INSERT INTO crm.gone VALUES (8, 'g')});
ok(wait_until($node, "SELECT state = 'in_flight' FROM shipsync.outbox WHERE binding_id = $gbid", 30),
	'dropped in flight: the intent is in flight');
sql('DROP TABLE crm.gone');
sim_post($sim, '/_sim/release', {});
ok(wait_until($node, "SELECT state = 'done' FROM shipsync.outbox WHERE binding_id = $gbid", 30),
	'dropped in flight: the answer applies, the intent is done')
  or diag sql("SELECT state, error_class, last_error FROM shipsync.outbox WHERE binding_id = $gbid");
like(sql(qq{SELECT tracking_number FROM shipsync.shipment WHERE binding_id = $gbid AND order_key = '8'}),
	qr/^SIM\d{12}$/, 'dropped in flight: its shipment is recorded');
is(sql(qq{SELECT count(*) FROM shipsync.exception_ticket WHERE binding_id = $gbid AND kind <> 'table_dropped'}),
	0, 'dropped in flight: no writeback_failed ticket');

# rows deleted, then their table dropped, in one transaction (a tenant's
# table closed): the cancels of its shipped orders are still sent, and the
# carrier does not ship orders the CRM deleted.  They died with the table
# (table_dropped), and the shipments stayed live at the carrier.
sql(q{CREATE TABLE crm.closing (id int PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('crm.closing', 'gone', writeback => '{"tracking_number": "waybill_no"}');
	INSERT INTO crm.closing VALUES (11, 'c'), (12, 'c');});
my $cbid = sql(q{SELECT binding_id FROM shipsync.binding WHERE tbl = 'crm.closing'::regclass});
ok(wait_until($node, "SELECT count(*) = 2 FROM crm.closing WHERE waybill_no IS NOT NULL", 30),
	'deleted and dropped: the orders are shipped');
my $cancelled = sim_get($sim, '/_sim/stats')->{cancelled};
sql(q{BEGIN; DELETE FROM crm.closing; DROP TABLE crm.closing; COMMIT;});
ok( wait_until($node, "SELECT bool_and(state IN ('done', 'dead')) FROM shipsync.outbox
		WHERE binding_id = $cbid AND op = 'cancel'", 30),
	'deleted and dropped: the cancels are finished');
is( sql(qq{SELECT string_agg(order_key || ' ' || state || coalesce(' ' || error_class, ''), ', ' ORDER BY order_key)
		FROM shipsync.outbox WHERE binding_id = $cbid AND op = 'cancel'}),
	'11 done, 12 done', 'deleted and dropped: each cancel is sent, not dead with the table');
is(sim_get($sim, '/_sim/stats')->{cancelled} - $cancelled, 2, 'deleted and dropped: the carrier cancelled both');
is(sql(qq{SELECT string_agg(status, ' ') FROM shipsync.shipment WHERE binding_id = $cbid}),
	'cancelled cancelled', 'deleted and dropped: the shipments are cancelled');
is(sql(qq{SELECT count(*) FROM shipsync.exception_ticket WHERE binding_id = $cbid}),
	0, 'deleted and dropped: no ticket');

# a table renamed, an order deleted as another is inserted: the cancel
# reads no order row and goes, though the table's render statement names
# it by its old name (the create fails to render until the table is
# attached again, docs/troubleshooting.md).  Cancels failed with the
# creates of their claim, render_failed until dead.
sql(q{CREATE TABLE crm.moving (id int PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('crm.moving', 'gone', writeback => '{"tracking_number": "waybill_no"}');
	INSERT INTO crm.moving VALUES (13, 'm');});
my $mbid = sql(q{SELECT binding_id FROM shipsync.binding WHERE tbl = 'crm.moving'::regclass});
ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.moving", 30), 'renamed: the order is shipped');
sql(q{ALTER TABLE crm.moving RENAME TO moved;
	BEGIN; INSERT INTO crm.moved VALUES (14, 'm'); DELETE FROM crm.moved WHERE id = 13; COMMIT;});
ok( wait_until($node, "SELECT state IN ('done', 'dead') FROM shipsync.outbox
		WHERE binding_id = $mbid AND op = 'cancel'", 30),
	'renamed: the cancel is finished')
  or diag sql("SELECT state, error_class, last_error FROM shipsync.outbox WHERE binding_id = $mbid AND op = 'cancel'");
is(sql(qq{SELECT state || ' ' || error_class FROM shipsync.outbox WHERE binding_id = $mbid AND order_key = '14'}),
	'retrying render_failed', 'renamed: a create claimed with it fails to render, as documented');
is(sql(qq{SELECT status FROM shipsync.shipment WHERE binding_id = $mbid}), 'cancelled',
	'renamed: the shipment is cancelled');

# a shipment id that is a dot segment: its update and cancel go to that
# shipment's URL, not to {base}/ and {base}/cancel, as request_url says
# (provider sim, paused above, sends again)
sim_post($sim, '/_sim/reset');
sql(q{SELECT shipsync.resume('sim')});
for my $dots ('..', '.')
{
	my $id = sql("SELECT nextval('crm.orders_id_seq')");
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'hostile', field => 'id', kind => 'text', text => $dots,
			path => '^/shipments$', match_order_ref => "^$id\$" } ] });
	sql("INSERT INTO crm.orders (id, customer) VALUES ($id, 'dots')");
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE id = $id", 30),
		"id '$dots': created");
	sql("UPDATE crm.orders SET address = 'elsewhere' WHERE id = $id");
	ok(wait_until($node, "SELECT state IN ('done', 'dead') FROM shipsync.outbox"
			  . " WHERE order_key = '$id' AND op = 'update'", 30), "id '$dots': updated");
	sql("DELETE FROM crm.orders WHERE id = $id");
	ok(wait_until($node, "SELECT state IN ('done', 'dead') FROM shipsync.outbox"
			  . " WHERE order_key = '$id' AND op = 'cancel'", 30), "id '$dots': cancelled");
	my $seen = sim_get($sim, '/_sim/attempts');
	my $enc = $dots eq '..' ? '%2E%2E' : '%2E';
	for my $op ([ 'update', "PATCH /shipments/$enc" ], [ 'cancel', "POST /shipments/$enc/cancel" ])
	{
		my ($key, $url) = split /\|/, sql(qq{SELECT idempotency_key, request_url FROM shipsync.outbox
			WHERE order_key = '$id' AND op = '$op->[0]'});
		my $paths = join(', ', @{ $seen->{$key}{paths} // [] });
		is($paths, $op->[1], "id '$dots': the carrier got the $op->[0] at the shipment's URL");
		my ($path) = $op->[1] =~ m{ (/.*)$};
		is($url, $sim->{url} . $path, "id '$dots': request_url is the $op->[0]'s URL as sent");
	}
}

$node->stop;
done_testing();
