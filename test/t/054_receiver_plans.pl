# The receiver's memory where tenants' tables come and go.
#
# A tracking push writes its status back onto the order row through the
# binding's write-back statement, whose saved plan (some 30 kB) the
# receiver keeps.  It loads no configuration, so it never freed one: a
# SaaS database whose tenants' order tables are attached, pushed to,
# detached and dropped one after another grew the receiver by a plan per
# tenant for as long as it ran (40 tenants: 1.1 MB).  Now the plans of
# bindings no longer attached are freed when the receiver next looks at
# its database (every 5 s).  Memory is compared in bytes used in the
# process's memory contexts (pg_log_backend_memory_contexts), not in
# blocks: a context that crosses a block boundary takes a whole block.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use ShipsyncTest;

my $SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
my ($node, $port) = receiver_node('receiver_plans');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(qq{
	CREATE EXTENSION pg_shipsync;
	CREATE SCHEMA crm;
	SELECT shipsync.create_provider('trk', 'generic', 'http://127.0.0.1:9', '{"webhook_secret": "$SECRET"}');
	SELECT shipsync.pause('trk');
});
ok(wait_until_http($port, '/healthz', 200), 'the receiver takes pushes');
my $pid = receiver_pid($node);

# Bytes used in the receiver's memory contexts
sub used_bytes
{
	my $off = -s $node->logfile;
	sql("SELECT pg_log_backend_memory_contexts($pid)");
	for (1 .. 100)
	{
		my $log = slurp_file($node->logfile, $off);
		return $1 if $log =~ /Grand total: \d+ bytes in \d+ blocks; \d+ free \(\d+ chunks\); (\d+) used/;
		usleep(100_000);
	}
	return -1;
}

# A tenant: its table attached, one shipped order, a tracking push through
# the receiver written back onto the order, the table detached and dropped
sub tenant
{
	my ($i) = @_;
	sql(qq{SET client_min_messages = error;
		CREATE TABLE crm.tenant_$i (id bigint PRIMARY KEY, customer text, waybill_no text, ship_status text);
		SELECT shipsync.attach('crm.tenant_$i', 'trk',
			writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}');
		INSERT INTO crm.tenant_$i VALUES ($i, 'tenant $i');
		INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number)
		SELECT b.binding_id, '$i', p.provider_id, 'TN$i' FROM shipsync.binding b, shipsync.provider p
		WHERE b.tbl = 'crm.tenant_$i'::regclass AND b.active AND p.name = 'trk';});
	my $ev = qq({"events": [{"id": "t$i", "tracking_number": "TN$i", "status": "in_transit", "occurred_at": "2026-03-01T08:00:00Z"}]});
	my $r = push_http($port, 'POST', '/tracking/trk', sw_headers($SECRET, "m$i", $ev), $ev);
	die "the push of tenant $i: $r->{status} $r->{content}" unless $r->{status} == 200;
	die "the status of tenant $i was not written back"
	  unless sql("SELECT ship_status FROM crm.tenant_$i") eq 'in_transit';
	sql(qq{SET client_min_messages = error;
		SELECT shipsync.detach('crm.tenant_$i'); DROP TABLE crm.tenant_$i;});
}

# five first, so that what the first ones warm up is not counted
tenant($_) for (1 .. 5);
my $before = used_bytes();
tenant($_) for (6 .. 45);
is(receiver_pid($node), $pid, 'the same receiver took the pushes of 45 tenants');

# the plans go at the receiver's next look at its database (5 s)
my $after;
for (1 .. 30)
{
	$after = used_bytes();
	last if $after - $before <= 300 * 1024;
	usleep(500_000);
}
diag("receiver memory contexts: $before bytes used after 5 tenants dropped, $after after 45");
cmp_ok($after - $before, '<=', 300 * 1024,
	'forty tenants attached, pushed to and dropped leave the receiver at most 300 kB larger');

# a binding attached again after detach() is written through again, with
# the plan made anew for the mapping it has now
sql(qq{SET client_min_messages = error;
	CREATE TABLE crm.again (id bigint PRIMARY KEY, waybill_no text, ship_status text, st2 text);
	SELECT shipsync.attach('crm.again', 'trk', writeback => '{"status": "ship_status"}');
	INSERT INTO crm.again VALUES (1);
	INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number)
	SELECT b.binding_id, '1', p.provider_id, 'TNA' FROM shipsync.binding b, shipsync.provider p
	WHERE b.tbl = 'crm.again'::regclass AND p.name = 'trk';});
my $ev = '{"events": [{"id": "a1", "tracking_number": "TNA", "status": "in_transit", "occurred_at": "2026-03-01T08:00:00Z"}]}';
is(push_http($port, 'POST', '/tracking/trk', sw_headers($SECRET, 'a1', $ev), $ev)->{status}, 200,
	'a push onto a new tenant');
is(sql('SELECT ship_status FROM crm.again'), 'in_transit', 'written back');
sql(q{SET client_min_messages = error; SELECT shipsync.detach('crm.again');
	SELECT shipsync.attach('crm.again', 'trk', writeback => '{"status": "st2"}');});
$ev = '{"events": [{"id": "a2", "tracking_number": "TNA", "status": "delivered", "occurred_at": "2026-03-02T08:00:00Z"}]}';
is(push_http($port, 'POST', '/tracking/trk', sw_headers($SECRET, 'a2', $ev), $ev)->{status}, 200,
	'a push after the table was attached again with another mapping');
is(sql('SELECT ship_status || \'/\' || st2 FROM crm.again'), 'in_transit/delivered',
	'written through the new mapping, not the old plan');

done_testing();
