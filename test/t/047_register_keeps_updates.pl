# A registration at the tracking provider never swallows an update meant
# for the shipping carrier.
#
# When the dispatcher claims an intent, the later unsent updates of the
# same order are coalesced into it: the row it renders already carries
# their changes.  A registration (op 'register', at the tracking provider)
# renders no order row, only the waybill, so nothing it sends carries an
# update.  Before the fix, claiming a registration coalesced the order's
# pending update for the shipping carrier into it, and the carrier never
# heard of the change: the update ended 'coalesced' into the registration.
#
# The order of events that does it: the order is shipped, its registration
# waits (the tracking provider paused), the shipping carrier is paused and
# the order changes, the update reaches the outbox, then the tracking
# provider resumes and its registration is claimed first.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $sim = start_sim(args => [ '--easypost', 'EZTK-test-key' ]);
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node('register_keeps');

sub sql { return $node->safe_psql('postgres', $_[0]); }

my $u = $sim->{url};
my $common = '"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 300, "max_attempts": 5';
sql(qq{
	CREATE EXTENSION pg_shipsync;
	SELECT shipsync.create_provider('ship', 'generic', '$u', '{$common}');
	SELECT shipsync.create_provider('ep', 'easypost', '$u', '{$common, "carrier": "SFExpress",
		"auth": {"type": "basic", "username": "EZTK-test-key"}}');
	SELECT shipsync.pause('ep');
	CREATE TABLE orders (id bigint PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('orders', 'ship', writeback => '{"tracking_number": "waybill_no"}',
		options => '{"tracking_provider": "ep"}');
	INSERT INTO orders VALUES (1, 'Li Na');
});

ok( wait_until($node, q{SELECT count(*) = 1 FROM shipsync.outbox
		WHERE op = 'register' AND state = 'pending'}, 30),
	'shipped: its registration waits for the paused tracking provider');

# the update, in the outbox while the shipping carrier is paused
sql(q{SELECT shipsync.pause('ship'); UPDATE orders SET customer = 'Wang Fang' WHERE id = 1});
sql(q{SELECT count(*) FROM shipsync.claim(
	(SELECT provider_id FROM shipsync.provider WHERE name = 'ship'), 0, 60000)});
is( sql(q{SELECT state || '|' || attempts FROM shipsync.outbox WHERE op = 'update'}),
	'pending|0', 'the update waits in the outbox');

# the registration goes first
sql(q{SELECT shipsync.resume('ep')});
ok( wait_until($node, q{SELECT state = 'done' FROM shipsync.outbox WHERE op = 'register'}, 30),
	'the registration is delivered');
is( sql(q{SELECT state || '|' || coalesce(coalesced_into::text, '-') FROM shipsync.outbox
		WHERE op = 'update'}),
	'pending|-', 'the update is not coalesced into the registration');

# and the carrier hears of the change
sql(q{SELECT shipsync.resume('ship')});
ok( wait_until($node, q{SELECT state = 'done' FROM shipsync.outbox WHERE op = 'update'}, 30),
	'the update reaches the shipping carrier once it resumes');
is( sql(q{SELECT request_kind || '|' || (request_body LIKE '%Wang Fang%')::text
		FROM shipsync.outbox WHERE op = 'update'}),
	'update|true', 'sent as an update carrying the change');

done_testing();
