# The secret key files: refused as the server refuses a bad ssl_key_file;
# generated in the data directory when none is configured; a key rotation
# with shipsync.previous_secret_key_file and rotate_key(), of providers'
# secrets and a CRM source's alike; and a dump
# restored into a second cluster: with the same key file it delivers, with
# another it sends nothing and says why.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use ShipsyncTest;

my $sim = start_sim(args => [ '--token', 'tok-020-SECRET' ]);
END { local $?; stop_sim($sim) if $sim; }
my $dir = PostgreSQL::Test::Utils::tempdir();

# a key file: $content written as is, with $mode
sub keyfile
{
	my ($name, $content, $mode) = @_;
	my $path = "$dir/$name";
	open(my $fh, '>', $path) or die "$path: $!";
	binmode $fh;
	print $fh $content;
	close $fh;
	chmod($mode // 0600, $path);
	return $path;
}

sub random_hex { return join('', map { sprintf('%02x', int(rand(256))) } 1 .. 32) . "\n"; }

my $node = PostgreSQL::Test::Cluster->new('keys');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_shipsync'
shipsync.databases = 'postgres'
# the carrier simulator listens on 127.0.0.1, a loopback address: refused
# unless shipsync.allowed_hosts allows it
shipsync.allowed_hosts = '127.0.0.1'
max_worker_processes = 16
# no daily reconciliation in the middle of the test (ShipsyncTest.pm)
shipsync.reconcile_at = ''
});

# 1. refused key files: the server does not start, and the log says why
sub refused
{
	my ($conf, $pattern, $what) = @_;
	$node->append_conf('postgresql.conf', $conf);
	my $offset = -s $node->logfile // 0;
	ok(!$node->start(fail_ok => 1), "$what: the server refuses to start");
	like(slurp_file($node->logfile, $offset), $pattern, "$what: the log says why");
}

refused("shipsync.secret_key_file = '$dir/none'\n",
	qr/FATAL:  could not access secret key file ".*none": No such file/, 'a missing key file');
my $loose = keyfile('loose', random_hex(), 0640);
refused("shipsync.secret_key_file = '$loose'\n",
	qr/FATAL:  secret key file ".*loose" has group or world access\n.*DETAIL:  File must have permissions u=rw \(0600\) or less/,
	'a key file readable by its group');
my $short = keyfile('short', 'x' x 31);
refused("shipsync.secret_key_file = '$short'\n",
	qr/FATAL:  secret key file ".*short" does not hold a key\n.*DETAIL:  A key file holds exactly 32 random bytes, or 64 hexadecimal digits and an optional newline; this one holds 31 bytes/,
	'a key file of 31 bytes');
my $zeros = keyfile('zeros', "\0" x 32);
refused("shipsync.secret_key_file = '$zeros'\n",
	qr/FATAL:  secret key file ".*zeros" does not hold a key\n.*DETAIL:  Its 32 bytes are neither 32 random bytes nor 64 hexadecimal digits/,
	'a key of 32 zero bytes');
refused("shipsync.secret_key_file = '$dir'\n",
	qr/FATAL:  secret key file ".*" is not a regular file/, 'a directory');
refused("shipsync.secret_key_file = '/etc/passwd'\n",
	qr/FATAL:  secret key file "\/etc\/passwd" must be owned by the database user/,
	'a file of another user');
my $key_a = keyfile('key_a', random_hex());
refused("shipsync.secret_key_file = '$key_a'\nshipsync.previous_secret_key_file = '$loose'\n",
	qr/FATAL:  secret key file ".*loose" has group or world access/,
	'a refused previous key file');

# a good key file: the server starts and names the key it read
$node->append_conf('postgresql.conf', "shipsync.previous_secret_key_file = ''\n");
my $offset = -s $node->logfile;
$node->start;
like(slurp_file($node->logfile, $offset), qr/LOG:  pg_shipsync: secret key ([0-9a-f]{16}) read from ".*key_a"/,
	'a good key file is read at start');
my ($id_a) = slurp_file($node->logfile, $offset) =~ /secret key ([0-9a-f]{16}) read/;

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(qq{
	CREATE EXTENSION pg_shipsync;
	SELECT shipsync.create_provider('p', 'generic', '$sim->{url}', '{"timeout_ms": 2000,
		"backoff_base_ms": 50, "backoff_max_ms": 300,
		"auth": {"type": "bearer", "token": "tok-020-SECRET"},
		"webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}');
	CREATE TABLE orders (id int PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('orders', 'p', writeback => '{"tracking_number": "waybill_no"}');
	INSERT INTO orders VALUES (1, 'one');
	CREATE TABLE crm_orders (crm_id text PRIMARY KEY);
	INSERT INTO shipsync.field_map (profile, direction, target_path, source) VALUES ('shop_jdy', 'crm_in', 'crm_id', 'id');
	SELECT shipsync.create_crm_source('shop_jdy', 'jiandaoyun', 'crm_orders', '{"secret": "jdy-020-SECRET"}');
});

# a 简道云 push to CRM source shop_jdy, signed with its secret: what
# ingest_crm() answers (the rows inserted, or the error)
sub crm_push
{
	my ($id) = @_;
	my $body = qq({"op": "data_create", "data": {"id": "$id"}});
	my ($q, $h) = jdy_signed('jdy-020-SECRET', $body, $id);
	my ($nonce, $ts) = $q =~ /nonce=(\w+)&timestamp=(\d+)/;
	my ($r, $o, $e) = $node->psql('postgres', qq{SELECT shipsync.ingest_crm('shop_jdy', '$body',
		'{"X-JDY-Signature": "$h->{'X-JDY-Signature'}", "X-JDY-DeliverId": "$id"}',
		'{"nonce": "$nonce", "timestamp": "$ts"}')->>'inserted'});
	return $r == 0 ? $o : $e;
}
is(crm_push('c1'), '1', 'a CRM push verified with the secret sealed under the configured key');
ok(wait_until($node, 'SELECT waybill_no IS NOT NULL FROM orders WHERE id = 1', 30),
	'delivered with the token sealed under the configured key');
is(sql('SELECT string_agg(DISTINCT key_id, \',\') FROM shipsync.secret'), $id_a,
	'the secrets are sealed under that key');
ok(!-e $node->data_dir . '/pg_shipsync.key', 'no key is generated when one is configured');

# 2. a new key without the previous one: nothing opens, nothing is sent
my $key_b = keyfile('key_b', random_hex());
$node->stop;
$node->append_conf('postgresql.conf', "shipsync.secret_key_file = '$key_b'\n");
$offset = -s $node->logfile;
$node->start;
ok($node->wait_for_log(qr/WARNING:  pg_shipsync: nothing is sent to provider "p": secret "[a-z_]+" of provider "p" was sealed with key $id_a, which is neither the key of shipsync.secret_key_file \([0-9a-f]{16}\) nor that of shipsync.previous_secret_key_file \(none\)/, $offset),
	'secrets under a key the server lacks: the dispatcher says so');
my $requests = sim_get($sim, '/_sim/stats')->{requests};
sql("INSERT INTO orders VALUES (2, 'two')");
sleep(1.5);
is(sql("SELECT pending FROM shipsync.queue_status WHERE provider = 'p'"), '1',
	'and the intent waits');
is(sim_get($sim, '/_sim/stats')->{requests}, $requests, 'nothing was sent without its credentials');
# said once, not at every idle check (the dispatcher reads its providers
# again at each one, every shipsync.idle_check_ms): a restore beside
# another key must not fill the log with two lines every 10 s per provider
$node->safe_psql('postgres', q{ALTER SYSTEM SET shipsync.idle_check_ms = '200ms'; SELECT pg_reload_conf()});
sleep(2.5);
my @said = slurp_file($node->logfile, $offset) =~ /WARNING:  pg_shipsync: nothing is sent to provider "p"/g;
is(scalar(@said), 1, 'the dispatcher said it once, through a reload and a dozen idle checks');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET shipsync.idle_check_ms; SELECT pg_reload_conf()});
my ($ret, $out, $err) = $node->psql('postgres', 'SELECT shipsync.rotate_key()');
like($err, qr/ERROR:  cannot rotate the secret key: a secret cannot be opened\nDETAIL:  secret "[a-z_]+" of provider "p" was sealed with key $id_a.*\nHINT:  Set shipsync.previous_secret_key_file/,
	'rotate_key() refuses, naming the secret and what to do');
($ret, $out, $err) = $node->psql('postgres',
	q{SELECT shipsync.ingest_tracking('p', '{"events": []}', '{"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "v1,x"}')});
like($err, qr/ERROR:  cannot verify tracking pushes of provider "p"\nDETAIL:  secret "webhook_secret" of provider "p" was sealed with key $id_a/,
	'ingest_tracking() says why it cannot verify');
like(crm_push('c2'), qr/ERROR:  cannot verify pushes of CRM source "shop_jdy"\nDETAIL:  secret "webhook_secret" of CRM source "shop_jdy" was sealed with key $id_a/,
	'ingest_crm() says why it cannot verify');
unlike($out . $err . crm_push('c2'), qr/tok-020-SECRET|MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw|jdy-020-SECRET/,
	'no error shows a secret');

# 3. the rotation: the previous key opens, rotate_key() seals again
$node->stop;
$node->append_conf('postgresql.conf', "shipsync.previous_secret_key_file = '$key_a'\n");
$offset = -s $node->logfile;
$node->start;
my ($id_b) = slurp_file($node->logfile, $offset) =~ /LOG:  pg_shipsync: secret key ([0-9a-f]{16}) read from ".*key_b"/;
like(slurp_file($node->logfile, $offset), qr/LOG:  pg_shipsync: previous secret key $id_a read from ".*key_a"/,
	'the previous key is read too');
ok(wait_until($node, 'SELECT waybill_no IS NOT NULL FROM orders WHERE id = 2', 30),
	'during the rotation, secrets sealed under the previous key open: delivered');
is(sql('SELECT shipsync.rotate_key()'), '3', 'rotate_key() seals the two secrets of the provider and the CRM source\'s again');
is(sql('SELECT string_agg(DISTINCT key_id, \',\') FROM shipsync.secret'), $id_b,
	'every secret is now under the new key');
is(sql('SELECT shipsync.rotate_key()'), '0', 'a second rotate_key() has nothing to do');
$node->stop;
$node->append_conf('postgresql.conf', "shipsync.previous_secret_key_file = ''\n");
$node->start;
sql("INSERT INTO orders VALUES (3, 'three')");
ok(wait_until($node, 'SELECT waybill_no IS NOT NULL FROM orders WHERE id = 3', 30),
	'the previous key file dropped: still delivered');
is(crm_push('c3'), '1', 'and CRM pushes still verified');

# a secret its auth type needs, gone (deleted by hand): nothing is sent
# until it is set again
$offset = -s $node->logfile;
sql(q{DELETE FROM shipsync.secret WHERE provider = 'p' AND name = 'token';
	INSERT INTO orders VALUES (6, 'six')});
ok($node->wait_for_log(qr/WARNING:  pg_shipsync: nothing is sent to provider "p": it has no secret "token", which its auth type bearer needs/, $offset),
	'a missing token: the dispatcher says so');
is(sql("SELECT pending FROM shipsync.queue_status WHERE provider = 'p'"), '1', 'and the order waits');
sql(q{SELECT shipsync.set_secret('p', 'token', 'tok-020-SECRET')});
ok(wait_until($node, 'SELECT waybill_no IS NOT NULL FROM orders WHERE id = 6', 30),
	'set again: delivered');

# 4. pg_dump carries ciphertext; restored beside the same key file, it
# delivers again; beside another key, it sends nothing
my $dump = $node->basedir . '/dump.sql';
$node->command_ok([ 'pg_dump', '-f', $dump, 'postgres' ], 'pg_dump');
my $dumped = slurp_file($dump);
like($dumped, qr/COPY shipsync\.secret /, 'the dump holds shipsync.secret');
unlike($dumped, qr/tok-020-SECRET|MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw|jdy-020-SECRET/, 'and no secret in plain text');

sub restored_node
{
	my ($name, $key) = @_;
	my $n = shipsync_node($name, "shipsync.secret_key_file = '$key'");
	$n->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', $dump, 'postgres' ],
		"restore into $name");
	return $n;
}
my $twin = restored_node('twin', $key_b);
$twin->safe_psql('postgres', "INSERT INTO orders VALUES (4, 'four')");
ok(wait_until($twin, 'SELECT waybill_no IS NOT NULL FROM orders WHERE id = 4', 30),
	'restored into a cluster with the same key file: delivered');
$twin->stop;

my $stranger = restored_node('stranger', keyfile('key_c', random_hex()));
$stranger->safe_psql('postgres', "INSERT INTO orders VALUES (5, 'five')");
ok($stranger->wait_for_log(qr/WARNING:  pg_shipsync: nothing is sent to provider "p": secret "[a-z_]+" of provider "p" was sealed with key $id_b/),
	'restored beside another key: the dispatcher says why it sends nothing');
is($stranger->safe_psql('postgres', "SELECT pending FROM shipsync.queue_status WHERE provider = 'p'"),
	'1', 'and the intent waits');
$stranger->stop;

# 5. no key configured: generated in the data directory at the first need
my $gen = shipsync_node('generated');
my $keypath = $gen->data_dir . '/pg_shipsync.key';
$gen->safe_psql('postgres', q{CREATE EXTENSION pg_shipsync;
	SELECT shipsync.create_provider('g', 'generic', 'https://x.example', '{"timeout_ms": 1000}')});
ok(!-e $keypath, 'no secret yet: no key file');
$gen->safe_psql('postgres', q{SELECT shipsync.set_secret('g', 'webhook_secret', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')});
ok(-f $keypath, 'the first secret generates pg_shipsync.key in the data directory');
is(sprintf('%04o', (stat $keypath)[2] & 07777), '0600', 'with mode 0600');
like(slurp_file($keypath), qr/^[0-9a-f]{64}\n\z/, 'holding 64 hex digits');
ok($gen->log_contains('LOG:  pg_shipsync generated the secret key file ".*pg_shipsync.key"'),
	'the log says so');
$offset = -s $gen->logfile;
$gen->restart;
like(slurp_file($gen->logfile, $offset), qr/LOG:  pg_shipsync: secret key [0-9a-f]{16} read from ".*pg_shipsync.key"/,
	'at the next start, the postmaster reads it');
$gen->stop;
chmod(0640, $keypath);
$offset = -s $gen->logfile;
ok(!$gen->start(fail_ok => 1), 'the generated key file is checked as a configured one');
like(slurp_file($gen->logfile, $offset), qr/FATAL:  secret key file ".*pg_shipsync.key" has group or world access/,
	'the log says why');
chmod(0600, $keypath);
$gen->start;
$gen->stop;

$node->stop;
done_testing();
