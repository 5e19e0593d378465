# How a carrier's answer is framed: the bytes around the JSON.
#
# Sloppy servers put a UTF-8 byte order mark before the JSON (.NET and
# Java stacks of many Chinese carriers), compress the answer though it was
# not asked for, or name a charset.  The shipment they answer about exists
# at the carrier: an answer pg_shipsync cannot read is retried under the
# same key until max_attempts and the order never gets its waybill.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use IO::Compress::Deflate qw(deflate $DeflateError);
use IO::Compress::Gzip qw(gzip $GzipError);
use MIME::Base64 qw(encode_base64);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $sim = start_sim();
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node('answer_bytes');
setup_orders($node, $sim,
	'{"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 200, "max_attempts": 3}');

sub sql { return $node->safe_psql('postgres', $_[0]); }

my $answer = '{"id":"shp_x1","tracking_number":"SF1234567890","status":"pre_transit",'
  . '"fees":[{"type":"freight","amount":"12.50","currency":"CNY"}]}';

# The next order is answered 201 with these bytes (and headers): its state,
# its last error and the waybill written back.
sub create_answered
{
	my ($bytes, %rule) = @_;
	sim_post($sim, '/_sim/reset');
	sim_post($sim, '/_sim/faults',
		{ rules => [ { fault => 'status', status => 201, path => '^/shipments$',
			body_base64 => encode_base64($bytes, ''), %rule } ] });
	my $id = sql("INSERT INTO crm.orders (customer) VALUES ('x') RETURNING id");
	wait_settled($node, "'$id'");
	return sql("SELECT o.state || ' | ' || coalesce(o.last_error, '') || ' | ' || coalesce(c.waybill_no, '')"
		  . " FROM shipsync.outbox o JOIN crm.orders c ON c.id::text = o.order_key"
		  . " WHERE o.order_key = '$id' AND o.op = 'create'");
}

like(create_answered("\xEF\xBB\xBF$answer"), qr/^done \|  \| SF1234567890$/,
	'a UTF-8 byte order mark before the JSON: the shipment is recorded');

# An answer compressed though "Accept-Encoding: identity" was asked:
# refused, its last error naming the coding (pg_shipsync decodes none), so
# that the carrier can be asked to honour the header.
my $gz;
gzip(\$answer => \$gz) or die $GzipError;
like(create_answered($gz, content_encoding => 'gzip'),
	qr/^dead \| HTTP 201: the answer is refused: the response is not valid UTF-8 \(byte \d+\); it came compressed \(Content-Encoding "gzip"\) though none was asked for \(Accept-Encoding: identity\), and pg_shipsync decodes none \| $/,
	'an answer compressed though not asked for: refused, naming the coding');
my $deflated;
deflate(\$answer => \$deflated) or die $DeflateError;
like(create_answered($deflated, content_encoding => 'deflate'),
	qr/^dead \| .*Content-Encoding "deflate"/, 'so is one deflated');
is(sim_get($sim, '/_sim/stats')->{no_identity}, 0,
	'every request asked for no coding: Accept-Encoding: identity');

# A label that is not the body's coding ("Content-Encoding: UTF-8" is a
# common mistake for a charset): the body is read as it came, as it always
# was.
like(create_answered($answer, content_encoding => 'UTF-8'),
	qr/^done \|  \| SF1234567890$/, 'a plain answer labelled with a coding it is not in');

# A Chinese carrier's answer in GBK, said so in its Content-Type: 運 is
# DF 5C there, its second byte a backslash.
# (this file is UTF-8 without "use utf8": its literals are UTF-8 bytes, as
# psql's answers are)
use Encode qw(decode encode);
my $gbk = encode('gbk', decode('UTF-8', '{"id":"shp_x2","tracking_number":"SF1234567891","status":"運輸中，已揽收"}'));
like(create_answered($gbk, content_type => 'application/json; charset=GBK'),
	qr/^done \|  \| SF1234567891$/, 'an answer in GBK, said so: the shipment is recorded');
is(sql("SELECT raw_status FROM shipsync.shipment WHERE tracking_number = 'SF1234567891'"),
	'運輸中，已揽收', 'its status read as the carrier wrote it');
# (Encode has no GB18030 without HanExtra: 已签收 and U+20000, by hand)
like(create_answered('{"id":"shp_x3","tracking_number":"SF1234567892","status":"'
		  . "\xd2\xd1\xc7\xa9\xca\xd5\x95\x32\x82\x36" . '"}',
		content_type => 'application/json;charset="gb18030"'),
	qr/^done \|  \| SF1234567892$/, 'so is one in GB18030');
is(sql("SELECT raw_status FROM shipsync.shipment WHERE tracking_number = 'SF1234567892'"),
	'已签收𠀀', 'with a character beyond the BMP');
# UTF-8 sent under a GBK label (a common misconfiguration) is read as UTF-8
like(create_answered('{"id":"shp_x4","tracking_number":"SF1234567893","status":"已揽收"}',
		content_type => 'application/json; charset=GBK'),
	qr/^done \|  \| SF1234567893$/, 'UTF-8 labelled GBK');
is(sql("SELECT raw_status FROM shipsync.shipment WHERE tracking_number = 'SF1234567893'"),
	'已揽收', 'read as UTF-8, not as mojibake');
# bytes that are not GBK either: refused, as before, saying which charset
like(create_answered("{\"id\":\"shp_x5\",\"tracking_number\":\"SF1234567894\",\"status\":\"\xff\xff\"}",
		content_type => 'application/json; charset=GBK'),
	qr/^dead \| HTTP 201: the answer is refused: the response is not valid UTF-8 \(byte \d+\), nor text pg_shipsync reads in the charset its Content-Type names \("GBK"\) \| $/,
	'bytes that are not GBK either: refused, naming the charset');

done_testing();
