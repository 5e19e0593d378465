# A lock held on an order table costs the receiver one wait per batch,
# not one per push.
#
# While a session holds a lock that the order table's writes wait for (an
# ALTER TABLE or a CREATE INDEX in an open transaction, a LOCK TABLE), every
# push that writes onto the table waits shipsync.receiver_lock_timeout and
# is answered 503.  The tracking pushes of a batch were tried together,
# then, that having failed, one by one, each waiting the whole timeout
# again; every CRM push of the batch waited it too.  A batch of 256 pushes
# held the receiver for over four minutes, every other table's pushes
# queued behind it.  Now, once a wait of the batch has run out, the rest
# of the batch waits for a lock at most a few milliseconds: the pushes the
# lock holds back are answered 503 at once, the others go through.
#
# The waits are counted, not timed: with log_lock_waits on, each wait for
# a lock longer than deadlock_timeout (100 ms) logs one line.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use IO::Select;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ShipsyncTest;

my $SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
my ($node, $port) = receiver_node('receiver_lock_waits',
	'log_lock_waits = on', 'deadlock_timeout = 100ms');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(qq{
	CREATE EXTENSION pg_shipsync;
	CREATE SCHEMA crm;
	CREATE TABLE crm.orders (id bigserial PRIMARY KEY, crm_id text UNIQUE, customer text, ship_status text);
	CREATE TABLE crm.other (id bigint PRIMARY KEY, ship_status text);
	SELECT shipsync.create_provider('trk', 'generic', 'http://127.0.0.1:9', '{"webhook_secret": "$SECRET"}');
	SELECT shipsync.pause('trk');
	SELECT shipsync.attach('crm.orders', 'trk', writeback => '{"status": "ship_status"}');
	SELECT shipsync.attach('crm.other', 'trk', writeback => '{"status": "ship_status"}');
	INSERT INTO crm.orders (customer) SELECT 'c' || g FROM generate_series(1, 8) g;
	INSERT INTO crm.other (id) VALUES (1);
	INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number)
	SELECT b.binding_id, o.id::text, p.provider_id, 'TN' || o.id
	FROM shipsync.binding b, crm.orders o, shipsync.provider p
	WHERE b.tbl = 'crm.orders'::regclass AND p.name = 'trk';
	INSERT INTO shipsync.shipment (binding_id, order_key, provider_id, tracking_number)
	SELECT b.binding_id, '1', p.provider_id, 'OTHER1' FROM shipsync.binding b, shipsync.provider p
	WHERE b.tbl = 'crm.other'::regclass AND p.name = 'trk';
	INSERT INTO shipsync.field_map (profile, direction, target_path, source, transform, required) VALUES
		('zoho', 'crm_in', 'crm_id', 'id', 'identity', true),
		('zoho', 'crm_in', 'customer', 'customer', 'trim', true);
	SELECT shipsync.create_crm_source('zoho', 'generic', 'crm.orders', '{"secret": "$SECRET", "key_column": "crm_id"}');
});
ok(wait_until_http($port, '/healthz', 200), 'the receiver takes pushes');
my $pid = receiver_pid($node);

sub send_raw { return push_raw($port, @_); }

# every answer of the sockets of %$socks (name => socket), within $limit s
sub read_answers
{
	my ($socks, $limit) = @_;
	my %by_fd = map { fileno($socks->{$_}) => $_ } keys %$socks;
	my %got = map { $_ => '' } keys %$socks;
	my $sel = IO::Select->new(values %$socks);
	my $t0 = time();
	while ($sel->count && time() - $t0 < $limit)
	{
		for my $s ($sel->can_read(0.1))
		{
			my $n = sysread($s, my $buf, 65536);
			if ($n)
			{
				$got{ $by_fd{ fileno($s) } } .= $buf;
				next;
			}
			$sel->remove($s);
		}
	}
	close($_) for values %$socks;
	return %got;
}

sub event
{
	my ($tn, $id) = @_;
	return qq({"events": [{"id": "$id", "tracking_number": "$tn", "status": "in_transit", "occurred_at": "2026-03-01T08:00:00Z"}]});
}

# The table held by a DBA's open transaction: its writes wait
my $dba = $node->background_psql('postgres');
$dba->query_safe('BEGIN; LOCK TABLE crm.orders IN SHARE MODE');
my $off = -s $node->logfile;

# A first push waits for the lock; the others come meanwhile and make the
# next batch: eight tracking pushes for the locked table's orders, four
# CRM pushes into it, and one tracking push for another table.
my %socks = (first => send_raw('/tracking/trk', sw_headers($SECRET, 'first', event('TN1', 'e0')), event('TN1', 'e0')));
my $watch = $node->background_psql('postgres');
my $waiting = 0;
for (1 .. 20_000)
{
	last if ($waiting = $watch->query_safe(qq{SELECT count(*) FROM pg_stat_activity
		WHERE pid = $pid AND wait_event_type = 'Lock'}) =~ /^1$/m);
}
ok($waiting, 'the first push waits for the table');
for my $i (1 .. 8)
{
	my $ev = event("TN$i", "e$i");
	$socks{"trk$i"} = send_raw('/tracking/trk', sw_headers($SECRET, "m$i", $ev), $ev);
}
for my $i (1 .. 4)
{
	my $b = qq({"type": "order.updated", "data": {"id": "Z$i", "customer": "c$i"}});
	$socks{"crm$i"} = send_raw('/crm/zoho', sw_headers($SECRET, "z$i", $b), $b);
}
my $ev = event('OTHER1', 'o1');
$socks{other} = send_raw('/tracking/trk', sw_headers($SECRET, 'o1', $ev), $ev);
my %a = read_answers(\%socks, 120);

my @held = grep { /^(first|trk|crm)/ } sort keys %a;
is(scalar(grep { $a{$_} =~ m{^HTTP/1\.1 503 } } @held), scalar(@held),
	'every push the lock holds back: 503');
like($a{other}, qr{^HTTP/1\.1 200 }, 'the push for the other table: 200');
is(sql('SELECT ship_status FROM crm.other'), 'in_transit', 'and written back');

my $waits = () = slurp_file($node->logfile, $off) =~ /process $pid still waiting for/g;
diag("the receiver waited for the lock $waits times");
cmp_ok($waits, '<=', 4, 'the receiver waited out the lock once per batch, not once per push');

$dba->query_safe('COMMIT');
$dba->quit;
$watch->quit;

# the lock gone, the senders' retries go through, at the full wait again
$ev = event('TN3', 'e3');
is(push_http($port, 'POST', '/tracking/trk', sw_headers($SECRET, 'm3', $ev), $ev)->{status}, 200,
	'a retry once the lock is gone: 200');
is(sql('SELECT ship_status FROM crm.orders WHERE id = 3'), 'in_transit', 'written back');
my $b = q({"type": "order.updated", "data": {"id": "Z1", "customer": "c1"}});
is(push_http($port, 'POST', '/crm/zoho', sw_headers($SECRET, 'z1', $b), $b)->{status}, 200,
	'a CRM retry: 200');
is(sql(q{SELECT customer FROM crm.orders WHERE crm_id = 'Z1'}), 'c1', 'its order is there');

done_testing();
