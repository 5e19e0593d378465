# Values at and past PostgreSQL's limits fail their own order, never the
# others.
#
# An order row whose generic body is larger than shipsync.max_request_bytes
# is invalid (invalid_order, a ticket, nothing sent), and an order of the
# same table claimed with it ships.  Before the limit, a text column of
# 180 MB of control characters was escaped into a body of over 1 GB: the
# render failed with "out of memory" after a minute or more of the
# dispatcher's time and 1.8 GB of its memory, and, taken as the table's
# failure, it failed every order of the table claimed with it, at every
# attempt, while the dispatcher sent nothing else.  Here the limit is 4 kB
# and the row 8 kB, which shows the same rule without the gigabyte.  Then
# a carrier's reconciliation list with a shipment id past btree's limit,
# and an order table with a key past it.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::SHA qw(sha1_hex);
use ShipsyncTest;

my $sim = start_sim();
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node('limits', "shipsync.max_request_bytes = '4kB'");
setup_orders($node, $sim);

sub sql { return $node->safe_psql('postgres', $_[0]); }

# both in one transaction: one claim (or take) renders them together
sql(q{BEGIN;
	INSERT INTO crm.orders (customer, address) VALUES ('big', repeat(chr(1), 8000));
	INSERT INTO crm.orders (customer, address) VALUES ('small', 'Main Street 1');
	COMMIT;});
my $keys = q{SELECT id::text FROM crm.orders};
ok(wait_settled($node, $keys), 'both orders settled');

is( sql(q{SELECT o.state || ' ' || o.error_class || ' ' || o.attempts
		  FROM shipsync.outbox o JOIN crm.orders c ON c.id::text = o.order_key
		  WHERE c.customer = 'big'}),
	'invalid invalid_order 0',
	'the order over max_request_bytes is invalid, never attempted');
like(
	sql(q{SELECT o.last_error FROM shipsync.outbox o JOIN crm.orders c ON c.id::text = o.order_key
		  WHERE c.customer = 'big'}),
	qr/larger than shipsync\.max_request_bytes \(4096 bytes\)/,
	'its last_error names the limit');
is( sql(q{SELECT count(*) FROM shipsync.exception_ticket t JOIN crm.orders c ON c.id::text = t.order_key
		  WHERE c.customer = 'big' AND t.kind = 'invalid_order'}),
	'1', 'and it has a ticket');
like(sql(q{SELECT waybill_no FROM crm.orders WHERE customer = 'small'}),
	qr/^SIM\d+$/, 'the order claimed with it shipped');
is(sql(q{SELECT waybill_no IS NULL FROM crm.orders WHERE customer = 'big'}),
	't', 'nothing was written back onto the big one');

# the limit is the body's, not the column's: a row under it ships whole
sql(q{INSERT INTO crm.orders (customer, address) VALUES ('fits', repeat('y', 3000))});
ok(wait_settled($node, $keys), 'the order under the limit settled');
like(sql(q{SELECT waybill_no FROM crm.orders WHERE customer = 'fits'}),
	qr/^SIM\d+$/, 'an order under the limit ships');

# A carrier's list for reconciliation holding a shipment whose id (and
# order) is 3,000 bytes: no shipment of ours can have it.  Stored, its
# snapshot row was over btree's limit for an index entry ("index row size
# 3032 exceeds btree version 4 maximum 2704 for index
# "carrier_snapshot_pkey""), and the pull, the whole list's, failed at
# every run.  It is left out and logged; the rest of the list is compared.
# (hex digests: bytes that do not compress, as an index entry's would)
my $long = join('', map { sha1_hex($_) } 1 .. 75);
my $ours = sql(q{SELECT provider_shipment_id || ' ' || order_key || ' ' || tracking_number
				 FROM shipsync.shipment s JOIN crm.orders c ON c.id::text = s.order_key
				 WHERE c.customer = 'small'});
my ($ship_id, $ref, $tn) = split / /, $ours;
sim_post($sim, '/_sim/faults', { rules => [ {
	fault => 'status', status => 200, method => 'GET', path => '^/shipments$',
	body => JSON::PP::encode_json({ next_cursor => undef, shipments => [
		{ id => "shp_$long", order_ref => "o_$long", tracking_number => 'SIM1',
		  status => 'in_transit', updated_at => '2026-12-08T00:00:00Z' },
		{ id => $ship_id, order_ref => $ref, tracking_number => $tn,
		  status => 'delivered', updated_at => '2026-12-08T00:00:00Z' } ] }) } ] });
my $log_offset = -s $node->logfile;
my ($run, $ended) = run_reconcile($node, 'sim');
ok($ended, 'the reconciliation run ended');
is(sql("SELECT state || ' ' || coalesce(error, '') FROM shipsync.reconcile_run WHERE run_id = $run"),
	'done ', 'a shipment too long to be ours does not fail the pull');
is(sql("SELECT shipments_seen FROM shipsync.reconcile_run WHERE run_id = $run"),
	'1', 'the rest of the list was taken');
ok($node->log_contains('left out a shipment its list holds', $log_offset),
	'the shipment left out is logged');
sim_post($sim, '/_sim/faults', { rules => [] });

# A table holding, from before attach(), a row whose key is 3,000 bytes
# (its own uniqueness is a hash exclusion constraint, which has no such
# limit): capture refuses such a key for new rows, and the shipper's side
# of reconciliation leaves the row out.  Compared, it failed the pass at
# every run ("index row size 3024 exceeds btree version 4 maximum 2704 for
# index "reconcile_seen_pkey"").
sql(qq{CREATE TABLE crm.legacy (ref text NOT NULL, waybill_no text, EXCLUDE USING hash (ref WITH =));
	INSERT INTO crm.legacy VALUES ('$long', NULL);
	SELECT shipsync.attach('crm.legacy', 'sim', key_column => 'ref',
		writeback => '{"tracking_number": "waybill_no"}');});
($run, $ended) = run_reconcile($node, 'sim');
ok($ended, 'the reconciliation run ended');
is(sql("SELECT state || ' ' || coalesce(error, '') FROM shipsync.reconcile_run WHERE run_id = $run"),
	'done ', 'a row whose key is too long to be an order does not fail the pass');

done_testing();
