# Databases whose encoding is not UTF8.  One cluster: an SQL_ASCII
# database (attach() takes it: its bytes go out as they are), whose orders
# may hold bytes that are not UTF-8 (GBK written by an old CRM): such an
# order is invalid and never sent, the masks take its bytes, and a fee push
# escaping its Chinese as \uXXXX is read.  An EUC_CN
# database: CREATE EXTENSION works (its Chinese text converted), attach()
# refuses it with a clear error; as the receiver's database, it answers
# 503 and says why.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
my ($node, $port) = receiver_node('encoding',
	"shipsync.databases = 'sqlascii'", "shipsync.receiver_database = 'euc'");
$node->safe_psql('postgres', q{
	CREATE DATABASE sqlascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
	CREATE DATABASE euc ENCODING 'EUC_CN' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
});

# ---- SQL_ASCII: an order that is not UTF-8 is invalid, never sent --------
my $sim = start_sim();
setup_orders($node, $sim, undef, 'sqlascii');
$node->safe_psql('sqlascii', q{
	INSERT INTO crm.orders (customer, phone, address) VALUES ('张三', '13800138000', '北京市朝阳区');
	INSERT INTO crm.orders (customer, phone, address)
		VALUES (convert_from('\xd5c5c8fd', 'SQL_ASCII'), '13800138001', 'GBK');
	INSERT INTO crm.orders (customer, phone, address) VALUES ('王五', '13800138002', '上海市');
});
ok(wait_until($node, q{SELECT count(*) = 3 FROM shipsync.outbox WHERE state IN ('done', 'dead', 'invalid')},
	60, 'sqlascii'), 'the three orders are settled');
is($node->safe_psql('sqlascii', q{SELECT string_agg(order_key || ' ' || state || ' ' || coalesce(error_class, '-'), ', ' ORDER BY order_key)
	FROM shipsync.outbox}),
	'1 done -, 2 invalid invalid_order, 3 done -', 'the order holding GBK bytes is invalid, the others delivered');
like($node->safe_psql('sqlascii', q{SELECT last_error FROM shipsync.outbox WHERE order_key = '2'}),
	qr/not valid UTF-8/, '... its error says the row is not UTF-8');
is($node->safe_psql('sqlascii', q{SELECT kind FROM shipsync.exception_ticket WHERE order_key = '2'}),
	'invalid_order', '... with an invalid_order ticket (no auth_failed, no dead_intent)');
is(sim_get($sim, '/_sim/stats')->{requests}, 2, 'the carrier got the two UTF-8 orders only');
my ($rc, $out, $err) = $node->psql('sqlascii', q{SELECT * FROM shipsync.render_request(
	(SELECT id FROM shipsync.outbox WHERE order_key = '2'))});
like($err, qr/has nothing to send\nDETAIL:  It would not be sent: the order row is not valid UTF-8/,
	'render_request() says it is not sent, and why');

# ---- SQL_ASCII: masks take bytes that are not UTF-8 ---------------------
is(($node->psql('sqlascii', q{SELECT shipsync.mask_pii(convert_from('\xd5c5c8fd', 'SQL_ASCII'), 'name') IS NOT NULL}))[1],
	't', 'mask_pii() of a value that is not UTF-8 in SQL_ASCII');
$node->safe_psql('sqlascii', q{
	CREATE ROLE rdr IN ROLE shipsync_reader;
	UPDATE shipsync.outbox SET request_body = convert_from('\x7b226f72646572223a7b22637573746f6d6572223a22d5c5c8fd227d7d', 'SQL_ASCII')
	WHERE order_key = '1';
});
($rc, $out, $err) = $node->psql('sqlascii', q{SET ROLE rdr;
	SELECT string_agg(order_key || ' ' || (position(convert_from('\xc8fd', 'SQL_ASCII') IN request_body) = 0), ', ' ORDER BY order_key)
	FROM shipsync.intents WHERE request_body IS NOT NULL});
is($err, '', 'a reader reads shipsync.intents with a request body that is not UTF-8');
is($out, '1 true, 3 true', '... masked: its name is not shown');

# ---- SQL_ASCII: a fee push escaping its Chinese (\uXXXX) is read --------
$node->safe_psql('sqlascii', q{SELECT shipsync.set_secret('sim', 'webhook_secret', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')});
my $tn = $node->safe_psql('sqlascii', q{SELECT waybill_no FROM crm.orders WHERE id = 1});
my $fee = qq({"fees": [{"tracking_number": "$tn", "type": "\\u8fd0\\u8d39 \\ud83d\\ude9a", "amount": "12.00", "currency": "CNY"},
	{"tracking_number": "$tn", "type": "a\\\\u8fd0", "amount": "1.00", "currency": "CNY"}]});
($rc, $out, $err) = $node->psql('sqlascii', qq{SELECT shipsync.ingest_fees('sim', '$fee',
	'{"webhook-id": "msg_f1", "webhook-timestamp": "@{[ time() ]}", "webhook-signature": "@{[
	sw_headers($SECRET, 'msg_f1', $fee)->{'webhook-signature'} ]}"}') ->> 'lines'});
is($err, '', 'a fee push with \\u escapes of Chinese and an emoji is taken in SQL_ASCII');
is($node->safe_psql('sqlascii', qq{SELECT encode(convert_to(raw_type, 'SQL_ASCII'), 'hex') FROM shipsync.fee_line WHERE tracking_number = '$tn' AND NOT quote AND raw_type NOT LIKE 'a%'}),
	'e8bf90e8b4b920f09f9a9a', '... its fee name stored in UTF-8, as a UTF8 database stores it');
is($node->safe_psql('sqlascii', qq{SELECT count(*) FROM shipsync.fee_line WHERE tracking_number = '$tn' AND raw_type = 'a\\u8fd0'}),
	'1', '... an escaped backslash before u stays one');

# ---- a CRM source where the receiver does not take pushes: said ----------
# (the receiver serves 'euc', where the source is unknown)
($rc, $out, $err) = $node->psql('sqlascii', qq{
	CREATE TABLE crm_in_orders (crm_id text PRIMARY KEY, customer text);
	SELECT shipsync.create_crm_source('zoho_ascii', 'generic', 'crm_in_orders', '{"secret": "$SECRET"}') > 0});
is($out, 't', 'create_crm_source() in a database the receiver does not serve creates it');
like($err, qr/WARNING:  the receiver does not serve database "sqlascii"
DETAIL:  It takes pushes for database euc \(shipsync.receiver_database\): there, CRM source "zoho_ascii" does not exist, and a push to \/crm\/zoho_ascii is answered 404.
HINT:  Create the source in database euc, or ALTER SYSTEM SET shipsync.receiver_database = 'sqlascii' and restart the server./,
	'... and warns that the receiver serves another database, and what to do');

# ---- EUC_CN: the extension installs, its Chinese text as it is meant -----
($rc, $out, $err) = $node->psql('euc', 'CREATE EXTENSION pg_shipsync');
is($rc, 0, 'CREATE EXTENSION in an EUC_CN database') or diag($err);
is(($node->psql('euc', q{SET client_encoding = 'UTF8';
	SELECT count(*) FROM shipsync.status_map
	WHERE profile = 'kuaidi100' AND raw_status IN ('在途', '签收')}))[1],
	'2', 'the Kuaidi100 status names are Chinese in EUC_CN, not mojibake');
($rc, $out, $err) = $node->psql('euc', q{
	CREATE TABLE orders (id int PRIMARY KEY, customer text);
	SELECT shipsync.create_provider('sim', 'generic', 'http://127.0.0.1:9');
	SELECT shipsync.attach('orders', 'sim');
});
like($err, qr/database encoding EUC_CN cannot be sent as JSON/, 'attach() refuses EUC_CN, saying why');

# LATIN1 cannot hold the Chinese text: refused, rather than installed with
# the Kuaidi100 statuses in mojibake (matching no event)
$node->safe_psql('postgres', q{CREATE DATABASE lat ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0});
($rc, $out, $err) = $node->psql('lat', 'CREATE EXTENSION pg_shipsync');
like($err, qr/has no equivalent in encoding "LATIN1"/, 'CREATE EXTENSION in LATIN1 fails, installing no mojibake');

# ---- the receiver in EUC_CN: 503 and the reason, nothing taken ----------
# (pushes are UTF-8 signed over their bytes: read as EUC_CN, most Chinese
# was refused 400, which a sender takes as final, and the rest stored as
# mojibake)
$node->safe_psql('euc', qq{
	CREATE TABLE crm_orders (crm_id text PRIMARY KEY, customer text);
	INSERT INTO shipsync.field_map (profile, direction, position, target_path, source, transform, arg, "default", required) VALUES
		('zoho', 'crm_in', 1, 'crm_id', 'id', 'identity', NULL, NULL, true),
		('zoho', 'crm_in', 2, 'customer', 'contact.name', 'trim', NULL, NULL, true);
});
# a CRM source there would be answered 503 for good: refused, saying why
($rc, $out, $err) = $node->psql('euc', qq{
	SELECT shipsync.create_crm_source('zoho', 'generic', 'crm_orders', '{"secret": "$SECRET", "key_column": "crm_id"}')});
like($err, qr/ERROR:  database encoding EUC_CN cannot take CRM pushes
DETAIL:  Pushes are UTF-8 and signed over their bytes: the receiver answers every push 503 in a database of another encoding.
HINT:  Keep the orders and the CRM sources in a UTF8 database, and make it shipsync.receiver_database./,
	'create_crm_source() refuses an EUC_CN database, saying why');
is($node->safe_psql('euc', 'SELECT count(*) FROM shipsync.crm_source'), '0', '... and creates no source');
my $health;
for (1 .. 100)
{
	$health = push_http($port, 'GET', '/healthz');
	last if $health->{status} == 503 && $health->{content} =~ /encoding/;
	select(undef, undef, undef, 0.1);
}
is($health->{status}, 503, '/healthz of a receiver whose database is EUC_CN: 503');
like($health->{content}, qr/database "euc" is in encoding EUC_CN/, '... saying the encoding is why');
my $n = 0;
for my $name ('张三', 'Zo' . "\xc3\xab")
{
	$n++;
	my $body = qq({"type": "order.created", "data": {"id": "c$n", "contact": {"name": "$name"}}});
	my $r = push_http($port, 'POST', '/crm/zoho', sw_headers($SECRET, "msg_$n", $body), $body);
	is($r->{status}, 503, "push $n is answered 503 (sent again later)");
}
is($node->safe_psql('euc', 'SELECT count(*) FROM crm_orders'), '0', 'nothing stored garbled');

stop_sim($sim);
$node->stop;
done_testing();
