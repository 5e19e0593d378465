# What the claim guarantees about which intents go, and when, seen from
# the rows it writes.
#
# A trigger of the test's own on shipsync.outbox notes every row version
# the dispatcher writes (its state, whether it holds a request, its
# transaction).  Proves:
#   1. fresh orders go in one attempt each;
#   2. an update captured with its create is coalesced into it, and the
#      carrier gets the change with the create;
#   3. an intent whose order has an intent open (its create in flight)
#      waits, and is claimed only in a transaction after the create's
#      answer was applied;
#   4. intents due in the outbox go before newer ones: nothing newer is
#      claimed in a transaction before theirs;
#   5. a binding whose orders cannot be rendered (its table renamed) does
#      not hold the others back: they are delivered at once; its intent is
#      retried, and ends dead with the reason and a ticket after
#      max_attempts.  Before the fix, the others waited for the idle check
#      and were rolled back with it whenever they were due together, and
#      the broken intent was retried forever at the first backoff: the
#      claim did not know which attempt it was making;
#   6. while the inbox is small, a create with nothing before it goes
#      from the inbox straight into flight: its outbox row is inserted in
#      flight with its stored request, never pending, and sent once;
#   7. a stored create whose order got its shipment meanwhile is sent as
#      an update of it: a create gone dead (401), the update of the order
#      behind it rendered as a create and gone dead too, both requeued
#      as docs/troubleshooting.md says; and a create gone dead (422),
#      its order fixed and shipped by the update, the create retried.
#      Before the fix, each sequence made the carrier ship the order twice;
#   8. a table rebuilt under its name (a copy swapped in) and attached
#      again adopts the old table's binding: an update of an order
#      shipped before is sent as an update of its shipment.  Attached
#      without adopt, a warning says which binding it may replace.
#      Before the fix, the update was a create: the order shipped twice.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use ShipsyncTest;

my $sim = start_sim();
END { local $?; stop_sim($sim) if $sim; }
# no idle check within the test: whatever is claimed is claimed because a
# commit, an answer or a due retry woke the dispatcher
my $node = shipsync_node('claim_guarantees', "shipsync.idle_check_ms = 600000");
sub sql { return $node->safe_psql('postgres', $_[0]); }

setup_orders($node, $sim,
	'{"timeout_ms": 20000, "backoff_base_ms": 50, "backoff_max_ms": 500, "max_attempts": 3}');
my $pid = sql(q{SELECT provider_id FROM shipsync.provider WHERE name = 'sim'});
note_outbox_versions($node);

# 1. fresh orders
my $keys = join(',', map { "'$_'" } split /\n/, sql(q{
	INSERT INTO crm.orders (customer, address)
	SELECT 'c' || g, g || ' Main St' FROM generate_series(1, 20) g RETURNING id}));
ok(wait_settled($node, $keys, 30), 'fresh: all twenty delivered');
is( sql(qq{SELECT count(*) FROM public.seen WHERE order_key IN ($keys)
		AND new_state = 'in_flight' AND has_request}),
	20, 'fresh: each intent went in flight once, with its stored request');
is( sql(qq{SELECT string_agg(DISTINCT state || '|' || attempts, ',') FROM shipsync.outbox
		WHERE order_key IN ($keys)}),
	'done|1', 'fresh: done in one attempt');
is(scalar @{ sim_get($sim, '/_sim/shipments') }, 20, 'fresh: the carrier has twenty shipments');

# 2. an update captured with its create
my $k2 = sql(q{BEGIN;
	INSERT INTO crm.orders (customer, address) VALUES ('Two', '1 Old Rd') RETURNING id \gset
	UPDATE crm.orders SET address = '2 New Rd' WHERE id = :id;
	COMMIT; SELECT :id});
ok(wait_settled($node, "'$k2'", 30), 'coalesced: settled');
is( sql(qq{SELECT string_agg(op || ':' || state || ':'
			|| coalesce((coalesced_into = (SELECT c.id FROM shipsync.outbox c
				WHERE c.order_key = o.order_key AND c.op = 'create'))::text, '-'), ',' ORDER BY id)
		FROM shipsync.outbox o WHERE order_key = '$k2'}),
	'create:done:-,update:coalesced:true', 'coalesced: the update coalesced into the create');
is( sql(qq{SELECT count(*) FROM public.seen WHERE order_key = '$k2' AND op = 'update'
		AND new_state = 'in_flight'}),
	0, 'coalesced: the update itself never went');
my $ship2 = sim_get($sim, "/_sim/shipments?order_ref=$k2");
is($ship2->[0]{updates}, 0, 'coalesced: the carrier saw no update');
like(sim_get($sim, "/_sim/shipments/$ship2->[0]{id}")->{order}{address},
	qr/2 New Rd/, 'coalesced: the carrier got the new address with the create');

# 3. an intent whose order has its create in flight: the carrier holds the
# create's answer until the update has reached the outbox
sim_post($sim, '/_sim/faults', { rules => [
	{ fault => 'slow', ms => 15000, held => JSON::PP::true, path => '/shipments', method => 'POST',
	  count => 1 } ] });
my $k3 = sql(q{INSERT INTO crm.orders (customer, address) VALUES ('Three', '3 Slow Ln') RETURNING id});
ok( wait_until($node, qq{SELECT state = 'in_flight' FROM shipsync.outbox
		WHERE order_key = '$k3' AND op = 'create'}, 10), 'open: the create is in flight');
sql(qq{UPDATE crm.orders SET address = '4 Quick Ln' WHERE id = $k3});
ok( wait_until($node, qq{SELECT EXISTS (SELECT 1 FROM public.seen WHERE order_key = '$k3'
		AND op = 'update' AND new_state = 'pending')}, 10), 'open: the update is in the outbox');
sim_post($sim, '/_sim/release', {});
ok(wait_settled($node, "'$k3'", 30), 'open: settled');
is( sql(qq{SELECT (SELECT min(xid::text::bigint) FROM public.seen WHERE order_key = '$k3'
			AND op = 'update' AND new_state = 'in_flight')
		> (SELECT xid::text::bigint FROM public.seen WHERE order_key = '$k3'
			AND op = 'create' AND old_state = 'in_flight' AND new_state = 'done')}),
	't', 'open: the update was claimed only after the create\'s answer was applied');
is( sql(qq{SELECT count(*) FROM public.seen WHERE order_key = '$k3' AND op = 'update'
		AND new_state = 'pending'}),
	1, 'open: meanwhile it waited pending');
is( sql(qq{SELECT request_body LIKE '%4 Quick Ln%' FROM shipsync.outbox
		WHERE order_key = '$k3' AND op = 'update'}),
	't', 'open: the update carries the change');

# 4. a due backlog goes first
sql(q{SELECT shipsync.pause('sim')});
my $old = join(',', map { "'$_'" } split /\n/, sql(q{
	INSERT INTO crm.orders (customer, address)
	SELECT 'old' || g, g || ' Back St' FROM generate_series(1, 5) g RETURNING id}));
sql(qq{SELECT count(*) FROM shipsync.claim($pid, 0, 60000)});
is( sql(qq{SELECT count(*) FROM shipsync.outbox WHERE order_key IN ($old) AND state = 'pending'}),
	5, 'backlog: five intents due in the outbox');
my $new = join(',', map { "'$_'" } split /\n/, sql(q{
	INSERT INTO crm.orders (customer, address)
	SELECT 'new' || g, g || ' Front St' FROM generate_series(1, 3) g RETURNING id}));
sql(q{SELECT shipsync.resume('sim')});
ok(wait_settled($node, "$old,$new", 30), 'backlog: all eight delivered');
is( sql(qq{SELECT (SELECT max(xid::text::bigint) FROM public.seen WHERE order_key IN ($old)
			AND new_state = 'in_flight')
		<= (SELECT min(xid::text::bigint) FROM public.seen WHERE order_key IN ($new)
			AND new_state = 'in_flight')}),
	't', 'backlog: no new intent was claimed before the backlog');

# 5. a binding that cannot be rendered
sql(q{CREATE TABLE crm.other (id bigint PRIMARY KEY, customer text);
	SELECT shipsync.attach('crm.other', 'sim');
	ALTER TABLE crm.other RENAME TO other_renamed});
my $k5 = sql(q{BEGIN;
	INSERT INTO crm.other_renamed VALUES (1, 'Broken');
	INSERT INTO crm.orders (customer, address) VALUES ('Five', '5 Fine Ave') RETURNING id \gset
	COMMIT; SELECT :id});
ok(wait_settled($node, "'$k5'", 30), 'render failure: the other binding\'s order is delivered at once');
is( sql(qq{SELECT state FROM shipsync.outbox WHERE order_key = '$k5'}), 'done',
	'render failure: done');
ok( wait_until($node, q{SELECT state = 'dead' FROM shipsync.outbox o
		JOIN shipsync.binding b USING (binding_id)
		WHERE b.tbl = 'crm.other_renamed'::regclass}, 30),
	'render failure: the broken binding\'s intent ends dead');
is( sql(q{SELECT error_class || '|' || attempts || '|' || (last_error LIKE '%does not exist%')::text
		FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id)
		WHERE b.tbl = 'crm.other_renamed'::regclass}),
	'render_failed|3|true', 'render failure: after max_attempts, with its reason');
is( sql(q{SELECT count(*) FROM shipsync.exception_ticket t JOIN shipsync.binding b USING (binding_id)
		WHERE b.tbl = 'crm.other_renamed'::regclass AND t.kind = 'render_failed'}),
	1, 'render failure: a render_failed ticket');
is(sql(q{SELECT count(*) FROM shipsync.inbox}), 0, 'render failure: nothing left in the inbox');

# 6. taken straight from a small inbox
my $k6 = join(',', map { "'$_'" } split /\n/, sql(q{
	INSERT INTO crm.orders (customer, address)
	SELECT 'six' || g, g || ' Direct Way' FROM generate_series(1, 3) g RETURNING id}));
ok(wait_settled($node, $k6, 30), 'taken: all three delivered');
is( sql(qq{SELECT string_agg(DISTINCT coalesce(old_state, '-') || '>' || new_state || '|' || has_request, ',')
		FROM public.seen WHERE order_key IN ($k6) AND op = 'create'
		AND (old_state IS NULL OR new_state = 'in_flight')}),
	'->in_flight|true', 'taken: each create was inserted in flight, with its request');
is( sql(qq{SELECT count(*) FROM public.seen WHERE order_key IN ($k6) AND new_state = 'pending'}),
	0, 'taken: none was ever pending');
is( sql(qq{SELECT string_agg(DISTINCT state || '|' || attempts, ',') FROM shipsync.outbox
		WHERE order_key IN ($k6)}),
	'done|1', 'taken: done in one attempt');
is( join(',', map { scalar @{ sim_get($sim, "/_sim/shipments?order_ref=$_") } }
		  $k6 =~ /(\d+)/g),
	'1,1,1', 'taken: the carrier has one shipment each');

# 7. stale stored creates
sub shipments_of { return scalar @{ sim_get($sim, "/_sim/shipments?order_ref=$_[0]") }; }
{
	my $id = sql(q{SELECT nextval('crm.orders_id_seq')});
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'status', status => 401, match_order_ref => "^$id\$" } ] });
	sql(qq{INSERT INTO crm.orders (id, customer, address) VALUES ($id, 'seven', '7 Old Road')});
	ok(wait_until($node, "SELECT state = 'dead' FROM shipsync.outbox WHERE order_key = '$id' AND op = 'create'", 30),
		'stale: the create is dead (401)');
	sql(qq{UPDATE crm.orders SET address = '7 New Road' WHERE id = $id});
	ok( wait_until($node, "SELECT state = 'dead' AND request_kind = 'create' FROM shipsync.outbox"
			  . " WHERE order_key = '$id' AND op = 'update'", 30),
		'stale: the update, with no shipment yet, was rendered as a create and is dead too');
	sim_post($sim, '/_sim/faults', { rules => [] });
	sql(q{SELECT shipsync.requeue('sim')});
	ok( wait_until($node, "SELECT count(*) = 2 FROM shipsync.outbox WHERE order_key = '$id' AND state = 'done'", 30),
		'stale: both requeued intents are done');
	is(shipments_of($id), 1, 'stale: the carrier shipped the order once');
	is( sql(qq{SELECT request_method || ' ' || request_kind FROM shipsync.outbox
			WHERE order_key = '$id' AND op = 'update'}),
		'PATCH update', 'stale: the second went as an update of the shipment');
	my ($shp) = @{ sim_get($sim, "/_sim/shipments?order_ref=$id") };
	like(encode_json(sim_get($sim, "/_sim/shipments/$shp->{id}")), qr/7 New Road/,
		'stale: and the carrier has the order as it is now');
}
{
	my $id = sql(q{SELECT nextval('crm.orders_id_seq')});
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'status', status => 422, match_order_ref => "^$id\$", count => 1 } ] });
	sql(qq{INSERT INTO crm.orders (id, customer, address) VALUES ($id, 'eight', '8 Bad Road')});
	ok(wait_until($node, "SELECT state = 'dead' FROM shipsync.outbox WHERE order_key = '$id' AND op = 'create'", 30),
		'stale retry: the create is dead (422)');
	sql(qq{UPDATE crm.orders SET address = '8 Good Road' WHERE id = $id});
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.orders WHERE id = $id", 30),
		'stale retry: the fixed order is shipped by its update');
	sql(qq{SELECT shipsync.retry(id) FROM shipsync.outbox WHERE order_key = '$id' AND op = 'create'});
	ok( wait_until($node, "SELECT count(*) = 2 FROM shipsync.outbox WHERE order_key = '$id' AND state = 'done'", 30),
		'stale retry: the retried create is done');
	is(shipments_of($id), 1, 'stale retry: the carrier shipped the order once');
}

# 8. a rebuilt table adopts its binding
{
	sql(q{CREATE TABLE crm.rebuilt (LIKE crm.orders INCLUDING ALL);
		SELECT shipsync.attach('crm.rebuilt', 'sim', writeback => '{"tracking_number": "waybill_no"}')});
	my $old = sql(q{SELECT binding_id FROM shipsync.binding WHERE tbl = 'crm.rebuilt'::regclass});
	my $id = sql(q{INSERT INTO crm.rebuilt (customer, address) VALUES ('nine', '9 First St') RETURNING id});
	ok(wait_until($node, "SELECT waybill_no IS NOT NULL FROM crm.rebuilt WHERE id = $id", 30),
		'rebuilt: the order is shipped');
	my $waybill = sql("SELECT waybill_no FROM crm.rebuilt WHERE id = $id");
	sql(q{SELECT shipsync.detach('crm.rebuilt');
		ALTER TABLE crm.rebuilt RENAME TO rebuilt_old;
		CREATE TABLE crm.rebuilt (LIKE crm.rebuilt_old INCLUDING ALL);
		INSERT INTO crm.rebuilt SELECT * FROM crm.rebuilt_old;
		DROP TABLE crm.rebuilt_old;});
	my ($rc, $out, $err) = $node->psql('postgres', q{BEGIN;
		SELECT shipsync.attach('crm.rebuilt', 'sim', writeback => '{"tracking_number": "waybill_no"}');
		ROLLBACK;});
	like($err, qr/WARNING:  binding $old of provider "sim" has shipments, and its table \(oid \d+\) is gone.*HINT:  If crm.rebuilt replaces that table, detach it and attach it again with options \{"adopt": $old\}/s,
		'rebuilt: attached without adopt, a warning names the binding it may replace');
	sql(qq{SELECT shipsync.attach('crm.rebuilt', 'sim', writeback => '{"tracking_number": "waybill_no"}',
			options => '{"adopt": $old}')});
	sql(qq{UPDATE crm.rebuilt SET address = '9 Second St' WHERE id = $id});
	ok( wait_until($node, "SELECT state = 'done' FROM shipsync.outbox WHERE order_key = '$id' AND op = 'update'"
			  . " AND binding_id <> $old", 30),
		'rebuilt: the update is sent');
	is( sql(qq{SELECT request_method FROM shipsync.outbox WHERE order_key = '$id' AND op = 'update'}),
		'PATCH', 'rebuilt: as an update of the shipment');
	is(shipments_of($id), 1, 'rebuilt: the carrier shipped the order once');
	is(sql("SELECT waybill_no FROM crm.rebuilt WHERE id = $id"), $waybill, 'rebuilt: the order keeps its waybill');
}

done_testing();
