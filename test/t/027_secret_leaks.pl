# The leak scan: providers with known secrets of every kind (bearer token,
# Basic user name and password, API keys, OAuth2 client secret, SF check
# word, Kuaidi100 key, webhook secrets and the previous one, a secret
# static header, a TLS client key) and CRM sources with their signing
# secrets, given inline to create_provider() and create_crm_source() and
# through bind parameters to them and set_secret(), some calls failing,
# through EXECUTE of prepared calls and in DO blocks, with a \u0000 in
# JSON options, with auto_explain logging the plans of the statements
# they run, and waiting in a deadlock that another session reports; some
# in sessions whose messages are German (lc_messages), when the system
# can make that locale;
# orders delivered through the simulators (which check each credential),
# failed, registered for tracking and tracked by pushes, CRM pushes signed
# with the current and the previous secret of a source and a forged one;
# then the server
# log (log_statement = all, log_min_messages = debug1,
# log_parameter_max_length_on_error = -1), pg_dump's output, every table
# and view of the extension, every render_request() and trace() result and
# every NOTIFY payload are searched for each secret: none may be found.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use Digest::MD5 qw(md5_hex);
use HTTP::Tiny;
use JSON::PP;
use MIME::Base64 qw(encode_base64);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

sub whsec { return 'whsec_' . encode_base64($_[0], ''); }

# every secret, by what it is
my %secret = (
	bearer => 'BEARER-LEAK-01',
	header => 'HEADER-LEAK-02',
	oauth_client_secret => 'OAUTH-LEAK-03',
	easypost_key => 'EASYPOST-LEAK-04',
	aftership_key => 'AFTERSHIP-LEAK-05',
	kuaidi100_key => 'KD-LEAK-06',
	kuaidi100_salt => 'KDSALT-LEAK-07',
	basic_user => 'BASIC-LEAK-08',
	basic_password => 'BASICPW-LEAK-09',
	webhook => whsec('WEBHOOK-LEAK-10'),
	webhook_new => whsec('WEBHOOK-LEAK-11'),
	api_key => 'APIKEY-LEAK-12',
	sf_checkword => 'fjcg5PGKaNpPSHFAZ4QsCOkV71R3zVci',	# the SF simulator's
	failed_set => 'FAILED-LEAK-13',
	failed_create => 'FAILED-LEAK-14',
	malformed => 'MALFORMED-LEAK-15',
	crm_jdy => 'JDY-LEAK-16',
	crm_generic => whsec('CRMWH-LEAK-17'),
	crm_jdy_new => 'JDY-LEAK-18',
	crm_failed => 'CRMFAILED-LEAK-19',
	prepared_param => 'PREPPARAM-LEAK-20',
	prepared_literal => 'PREPLIT-LEAK-21',
	do_block => 'DOBLOCK-LEAK-22',
	json_nul => 'JSONNUL-LEAK-23',
	json_nul_bound => 'JSONNULBIND-LEAK-24',
	auto_explain => 'EXPLAIN-LEAK-25',
	deadlock => 'DEADLOCK-LEAK-26',
	prepared_comment => 'PREPCOMMENT-LEAK-27',
	german_inline => 'GERMAN-LEAK-28',
	german_bound => 'GERMANBIND-LEAK-29',
	german_failed => 'GERMANFAIL-LEAK-30',
	german_json => 'GERMANJSON-LEAK-31');
# a TLS client key, for a simulator that requires a client certificate
my $certs = PostgreSQL::Test::Utils::tempdir();
test_ca($certs);
test_certificate($certs, 'server', 'IP:127.0.0.1');
test_certificate($certs, 'client', '');
my %pem = map { ($_ => slurp_file("$certs/$_")) } qw(ca.crt client.crt client.key);
# what must not be found: each secret, the key bytes of the whsec_ ones,
# and each line of the client key (its JSON form escapes the line breaks)
my @needles = (values %secret, 'WEBHOOK-LEAK-10', 'WEBHOOK-LEAK-11', 'CRMWH-LEAK-17',
	map { substr($_, 6) } ($secret{webhook}, $secret{webhook_new}, $secret{crm_generic}));
push @needles, grep { !/^-----/ && length($_) >= 16 } split /\n/, $pem{'client.key'};

my $sim_a = start_sim(args => [ '--token', $secret{bearer}, '--require-header', "X-Shop-Key:$secret{header}" ]);
my $sim_b = start_sim(args => [ '--oauth2', "leak-client:$secret{oauth_client_secret}" ], seed => 2);
my $sim_c = start_sim(args => [ '--easypost', $secret{easypost_key}, '--aftership', $secret{aftership_key},
		'--kuaidi100-key', $secret{kuaidi100_key} ], seed => 3);
my $sim_d = start_sim(args => [ '--require-header', "X-Api-Key:$secret{api_key}" ], seed => 4);
my $sim_e = start_sim(args => [ '--tls-cert', "$certs/server.crt", '--tls-key', "$certs/server.key",
		'--tls-client-ca', "$certs/ca.crt" ], seed => 5);
END { local $?; stop_sim($_) for grep { $_ } ($sim_a, $sim_b, $sim_c, $sim_d, $sim_e); }

# a locale whose messages are German (lc_messages, as initdb sets it from
# a German environment), made here if the system has none: the server
# finds it through LOCPATH
my $locales = PostgreSQL::Test::Utils::tempdir();
system("localedef -i de_DE -f UTF-8 '$locales/de_DE.UTF-8' >/dev/null 2>&1");
$ENV{LOCPATH} = $locales;

my $node = shipsync_node('leaks', 'log_statement = all', 'log_min_messages = debug1',
	'log_parameter_max_length_on_error = -1', 'log_min_error_statement = error');
sub sql { return $node->safe_psql('postgres', $_[0]); }

# a session that hears every NOTIFY of the channel
sql('CREATE EXTENSION pg_shipsync');
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN shipsync');

# 1. secrets given inline (psql's simple protocol: literals in the statement)
my $common = '"timeout_ms": 3000, "backoff_base_ms": 50, "backoff_max_ms": 300, "max_attempts": 4';
sql(qq{
	SELECT shipsync.create_provider('leak_bearer', 'generic', '$sim_a->{url}', '{$common,
		"auth": {"type": "bearer", "token": "$secret{bearer}"},
		"headers": {"X-Tenant": "shop-1", "X-Shop-Key": {"secret": "$secret{header}"}},
		"webhook_secret": "$secret{webhook}"}');
	SELECT shipsync.create_provider('leak_oauth', 'generic', '$sim_b->{url}', '{$common,
		"auth": {"type": "oauth2", "token_url": "$sim_b->{url}/oauth/token",
				 "client_id": "leak-client", "client_secret": "$secret{oauth_client_secret}"}}');
	SELECT shipsync.create_provider('leak_basic', 'generic', '$sim_c->{url}', '{$common,
		"auth": {"type": "basic", "username": "$secret{basic_user}", "password": "$secret{basic_password}"}}');
	SELECT shipsync.create_provider('leak_ep', 'easypost', '$sim_c->{url}', '{$common, "carrier": "SFExpress",
		"auth": {"type": "basic", "username": "$secret{easypost_key}"}}');
	SELECT shipsync.create_provider('leak_as', 'aftership', '$sim_c->{url}', '{$common, "slug": "sf-express",
		"auth": {"type": "api_key", "header": "as-api-key", "key": "$secret{aftership_key}"}}');
	SELECT shipsync.create_provider('leak_kd', 'kuaidi100', '$sim_c->{url}', '{$common, "company": "shunfeng",
		"callback_url": "https://shop.example/kd", "webhook_secret": "$secret{kuaidi100_salt}",
		"auth": {"type": "kuaidi100", "customer": "CUST", "key": "$secret{kuaidi100_key}"}}');
	SELECT shipsync.create_provider('leak_sf', 'sf_express', '$sim_c->{url}/sf/std/service', '{$common,
		"auth": {"type": "sf_express", "partner_id": "SHOP1", "checkword": "$secret{sf_checkword}"}}');
});

my $tls = JSON::PP->new->canonical->encode({ ca_bundle => $pem{'ca.crt'},
	client_cert => $pem{'client.crt'}, client_key => $pem{'client.key'} });
sql(qq{SELECT shipsync.create_provider('leak_tls', 'generic', 'https://127.0.0.1:$sim_e->{port}',
	'{$common, "tls": $tls}')});

# failed calls with secrets in their text: a duplicate, and malformed JSON
my ($ret, $out, $err) = $node->psql('postgres', qq{SELECT shipsync.create_provider('leak_sf', 'generic',
	'https://x.example', '{"auth": {"type": "bearer", "token": "$secret{failed_create}"}}')});
like($err, qr/provider "leak_sf" already exists/, 'a failing create_provider() call');
($ret, $out, $err) = $node->psql('postgres', qq{SELECT shipsync.create_provider('leak_x', 'generic',
	'https://x.example', '{"auth": {"type": "bearer", "token": $secret{malformed}}}')});
like($err, qr/invalid input syntax for type json/, 'a call with malformed JSON options');

# secrets in the text of another statement than the one the log shows:
# EXECUTE of a prepared call (its arguments, the PREPARE quoted in its
# DETAIL, the STATEMENT of its error), a call inside a DO block (the
# CONTEXT of its error quotes the call), and a \u0000 in the options (the
# CONTEXT echoes the JSON up to it)
($ret, $out, $err) = $node->psql('postgres', qq{
	PREPARE put_secret(text, text, text) AS SELECT shipsync.set_secret(\$1, \$2, \$3);
	EXECUTE put_secret('leak_bearer', 'no_such_secret', '$secret{prepared_param}');});
like($err, qr/provider "leak_bearer" has no secret "no_such_secret"/, 'a failing EXECUTE of a prepared set_secret()');
# a comment, not a space, after EXECUTE
($ret, $out, $err) = $node->psql('postgres', qq{
	PREPARE put_secret2(text, text, text) AS SELECT shipsync.set_secret(\$1, \$2, \$3);
	EXECUTE/**/put_secret2('leak_bearer', 'no_such_secret', '$secret{prepared_comment}');});
like($err, qr/provider "leak_bearer" has no secret "no_such_secret"/,
	'a failing EXECUTE of a prepared set_secret(), a comment before its name');
($ret, $out, $err) = $node->psql('postgres', qq{
	PREPARE put_literal AS SELECT shipsync.set_secret('leak_bearer', 'no_such_secret', '$secret{prepared_literal}');
	EXECUTE put_literal;});
like($err, qr/has no secret "no_such_secret"/, 'a failing EXECUTE of a prepared set_secret() with literals');
($ret, $out, $err) = $node->psql('postgres', qq{DO \$\$BEGIN
	PERFORM shipsync.set_secret('leak_bearer', 'no_such_secret', '$secret{do_block}'); END\$\$});
like($err, qr/has no secret "no_such_secret"/, 'a failing set_secret() in a DO block');
($ret, $out, $err) = $node->psql('postgres', qq{SELECT shipsync.create_provider('leak_nul', 'generic',
	'https://x.example', '{"auth": {"type": "bearer", "token": "$secret{json_nul}\\u0000"}}')});
like($err, qr/unsupported Unicode escape sequence/, 'a call with \\u0000 in its JSON options');
# the plans of the statements a call runs, with their constants
# (auto_explain.log_verbose and log_nested_statements): the arguments of
# the call are constants there; in text and in JSON, where the statement
# is a JSON string
sql(qq{SELECT shipsync.create_provider('leak_dummy', 'generic', 'https://x.example',
	'{"auth": {"type": "bearer", "token": "unused"}}')});
($ret, $out, $err) = $node->psql('postgres', qq{LOAD 'auto_explain';
	SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;
	SET auto_explain.log_verbose = on;
	SELECT shipsync.set_secret('leak_dummy', 'token', '$secret{auto_explain}');
	SET auto_explain.log_format = json;
	SELECT shipsync.set_secret('leak_dummy', 'token', '$secret{auto_explain}');});
is($ret, 0, 'set_secret() with auto_explain logging the plans of its statements');
# a deadlock: the server logs, in the DETAIL of the session it fails, the
# statement of the session it waits for, here a secret-taking call
sql('CREATE TABLE deadlock_row (id int PRIMARY KEY); INSERT INTO deadlock_row VALUES (1)');
my $caller = $node->background_psql('postgres');
my $victim = $node->background_psql('postgres', on_error_stop => 0);
$caller->query_safe('BEGIN; UPDATE deadlock_row SET id = 1');
$victim->query_safe(q{BEGIN; SELECT shipsync.pause('leak_dummy')});
# sent without waiting for its end
$caller->{stdin} .= qq{SELECT shipsync.set_secret('leak_dummy', 'token', '$secret{deadlock}');\n};
$caller->{run}->pump_nb;
ok(wait_until($node, q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'}),
	'a secret-taking call waits for a lock');
# past the caller's deadlock_timeout, so that the second waiter finds the deadlock
sleep(2);
my ($victim_out, $victim_ret) = $victim->query('UPDATE deadlock_row SET id = 1');
like($victim->{stderr}, qr/deadlock detected/, 'the session waiting for it meets a deadlock');
$victim->{stderr} = '';
$victim->query_safe('ROLLBACK');
$caller->query_safe('COMMIT');
$caller->quit;
$victim->quit;

# and a failing statement that passes no secret
$node->psql('postgres', 'SELECT 1 / 0 AS other_statement');

# 2. secrets through bind parameters (pgbench's extended protocol)
# one statement through pgbench's extended protocol: the variables become
# bind parameters, as a client library sends them
sub pgbench
{
	my ($sqltext, %vars) = @_;
	my $script = $node->basedir . '/call.sql';
	open(my $fh, '>', $script) or die "$script: $!";
	print $fh "$sqltext\n";
	close $fh;
	return $node->run_log([ 'pgbench', '-n', '-t', '1', '-M', 'extended', '-f', $script,
		(map { ('-D', "$_=$vars{$_}") } sort keys %vars), 'postgres' ]);
}
ok( pgbench('SELECT shipsync.create_provider(:name, :dialect, :url, CAST(:opts AS jsonb));',
		name => 'leak_api', dialect => 'generic', url => $sim_d->{url},
		opts => qq({$common, "auth": {"type": "api_key", "header": "X-Api-Key", "key": "$secret{api_key}"}})),
	'create_provider() with bind parameters');
ok(pgbench('SELECT shipsync.set_secret(:p, :n, :v);',
		p => 'leak_bearer', n => 'webhook_secret', v => $secret{webhook_new}),
	'set_secret() with bind parameters: a new webhook secret');
ok(!pgbench('SELECT shipsync.set_secret(:p, :n, :v);',
		p => 'leak_bearer', n => 'no_such_secret', v => $secret{failed_set}),
	'a failing set_secret() with bind parameters');
ok(pgbench('SELECT shipsync.set_secret(:p, :n, :v);',
		p => 'leak_tls', n => 'client_key', v => $pem{'client.key'}),
	'set_secret() with bind parameters: the TLS client key');
ok(!pgbench('SELECT shipsync.create_provider(:name, :dialect, :url, CAST(:opts AS jsonb));',
		name => 'leak_nul2', dialect => 'generic', url => 'https://x.example',
		opts => qq({"auth": {"type": "bearer", "token": "$secret{json_nul_bound}\\u0000"}})),
	'a bind parameter with \\u0000 in its JSON options');

# CRM sources: a 简道云 one given its secret inline, a generic one through
# bind parameters, a failing call, and a rotation through set_secret()
sql(qq{
	CREATE TABLE o_crm (crm_id text PRIMARY KEY, customer text);
	INSERT INTO shipsync.field_map (profile, direction, target_path, source, required) VALUES
		('crm', 'crm_in', 'crm_id', 'id', true), ('crm', 'crm_in', 'customer', 'customer', false);
	SELECT shipsync.create_crm_source('leak_jdy', 'jiandaoyun', 'o_crm',
		'{"secret": "$secret{crm_jdy}", "profile": "crm"}');
});
ok( pgbench(q{SELECT shipsync.create_crm_source(:name, 'generic', 'o_crm', CAST(:opts AS jsonb));},
		name => 'leak_zoho', opts => qq({"secret": "$secret{crm_generic}", "profile": "crm"})),
	'create_crm_source() with bind parameters');
($ret, $out, $err) = $node->psql('postgres', qq{SELECT shipsync.create_crm_source('leak_jdy', 'jiandaoyun',
	'o_crm', '{"secret": "$secret{crm_failed}", "profile": "crm"}')});
like($err, qr/CRM source "leak_jdy" already exists/, 'a failing create_crm_source() call');
ok(pgbench('SELECT shipsync.set_secret(:p, :n, :v);',
		p => 'leak_jdy', n => 'webhook_secret', v => $secret{crm_jdy_new}),
	'set_secret() of a CRM source with bind parameters: a new secret');

# A server whose messages are German: its log lines are worded so
# ("Anweisung: ...", "DETAIL:  Parameter: ...", "JSON-Daten, Zeile 1: ..."),
# and none of them was redacted, every secret in them
my $de_err = '';
my $german = $node->psql('postgres', "SET lc_messages = 'de_DE.UTF-8'; SELECT 1 / 0", stderr => \$de_err) == 3
  && $de_err =~ /Division durch Null/;
SKIP:
{
	skip 'no German locale or messages on this system', 4 unless $german;
	($ret, $out, $err) = $node->psql('postgres', qq{SET lc_messages = 'de_DE.UTF-8';
		SELECT shipsync.create_provider('leak_de', 'generic', 'https://x.example',
			'{"auth": {"type": "bearer", "token": "$secret{german_inline}"}}');
		SELECT shipsync.create_provider('leak_de2', 'generic', 'https://x.example',
			'{"auth": {"type": "bearer", "token": "$secret{german_json}\\u0000"}}');});
	like($err, qr/Unicode-Escape-Sequenz/, 'in German: a call given its secret inline, one failing on its JSON');
	local $ENV{PGOPTIONS} = '-c lc_messages=de_DE.UTF-8';
	ok(pgbench('SELECT shipsync.set_secret(:p, :n, :v);', p => 'leak_de', n => 'token', v => $secret{german_bound}),
		'in German: set_secret() with bind parameters');
	ok(!pgbench('SELECT shipsync.set_secret(:p, :n, :v);', p => 'leak_de', n => 'no_such_secret',
			v => $secret{german_failed}),
		'in German: a failing set_secret() with bind parameters');
	like(slurp_file($node->logfile), qr/Anweisung: SELECT shipsync.set_secret\(\$1, \$2, \$3\)|Ausführen <unnamed>: SELECT shipsync.set_secret/,
		'the German log recorded the calls');
}

# 3. deliveries with every credential; the simulators check each one
sql(qq{
	CREATE TABLE o_bearer (id int PRIMARY KEY, customer text, waybill_no text, ship_status text);
	SELECT shipsync.attach('o_bearer', 'leak_bearer',
		writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}');
	CREATE TABLE o_oauth (id int PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('o_oauth', 'leak_oauth', writeback => '{"tracking_number": "waybill_no"}');
	CREATE TABLE o_api (id int PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('o_api', 'leak_api', writeback => '{"tracking_number": "waybill_no"}');
	CREATE TABLE o_sf (order_no text PRIMARY KEY, receiver_name text, receiver_phone text,
		receiver_address text, weight_kg numeric, waybill text);
	SELECT shipsync.attach('o_sf', 'leak_sf', writeback => '{"tracking_number": "waybill"}');
	CREATE TABLE o_tls (id int PRIMARY KEY, customer text, waybill_no text);
	SELECT shipsync.attach('o_tls', 'leak_tls', writeback => '{"tracking_number": "waybill_no"}');
});
for my $t (qw(ep as kd))
{
	sql(qq{CREATE TABLE o_$t (id int PRIMARY KEY, customer text, waybill_no text, ship_status text);
		SELECT shipsync.attach('o_$t', 'leak_basic',
			writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}',
			options => '{"tracking_provider": "leak_$t"}');});
}
# the first attempt of order 3 fails (503), order 4 is refused for good (400)
sim_post($sim_a, '/_sim/faults', { rules => [
	{ fault => 'status', status => 503, match_order_ref => '^3$', first_attempts => 1 },
	{ fault => 'status', status => 400, match_order_ref => '^4$' } ] });
sql(q{
	INSERT INTO o_bearer SELECT g, 'c' || g FROM generate_series(1, 4) g;
	INSERT INTO o_oauth SELECT g, 'c' || g FROM generate_series(1, 3) g;
	INSERT INTO o_api SELECT g, 'c' || g FROM generate_series(1, 3) g;
	INSERT INTO o_sf VALUES ('SF-1', '李四', '13800138000', '广东省深圳市南山区科技园', 1.5);
	INSERT INTO o_ep VALUES (1, 'e'); INSERT INTO o_as VALUES (1, 'a'); INSERT INTO o_kd VALUES (1, 'k');
	INSERT INTO o_tls SELECT g, 't' || g FROM generate_series(1, 2) g;
});
ok(wait_until($node, q{SELECT count(*) = 3 FROM o_bearer WHERE waybill_no IS NOT NULL}, 60),
	'bearer token and secret header: delivered, one after a 503');
ok(wait_until($node, q{SELECT state = 'dead' FROM shipsync.outbox WHERE binding_id =
	(SELECT binding_id FROM shipsync.binding WHERE tbl = 'o_bearer'::regclass) AND order_key = '4'}, 60),
	'a refused order: dead');
ok(wait_until($node, q{SELECT count(*) = 3 FROM o_oauth WHERE waybill_no IS NOT NULL}, 60),
	'OAuth2 client secret: delivered');
ok(wait_until($node, q{SELECT count(*) = 3 FROM o_api WHERE waybill_no IS NOT NULL}, 60),
	'API key given through bind parameters: delivered');
ok(wait_until($node, q{SELECT waybill IS NOT NULL FROM o_sf}, 60), 'SF check word: delivered');
ok(wait_until($node, q{SELECT count(*) = 2 FROM o_tls WHERE waybill_no IS NOT NULL}, 60),
	'TLS client key: delivered to a server that requires a client certificate');
ok( wait_until($node, q{SELECT count(*) = 3 FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
		WHERE p.name IN ('leak_ep', 'leak_as', 'leak_kd') AND o.op = 'register' AND o.state = 'done'}, 60),
	'EasyPost key, AfterShip key, Kuaidi100 key: registered');
my ($kdreg) = grep { $_->{dialect} eq 'kuaidi100' } @{ sim_get($sim_c, '/_sim/track/registrations') };
is($kdreg->{salt}, $secret{kuaidi100_salt}, 'the Kuaidi100 salt reached the subscription');

# 4. tracking: generic pushes signed with the previous webhook secret (still
# valid after set_secret), then with the new one; a Kuaidi100 push
my ($rpid, $rport) = start_receiver($node, 'leak_bearer');
for my $s ($secret{webhook}, $secret{webhook_new})
{
	sim_post($sim_a, '/_sim/tracking/config',
		{ url => "http://127.0.0.1:$rport/", dialect => 'generic', secret => $s, seed => 1 });
	sim_post($sim_a, '/_sim/tracking/advance', { steps => 2 });
	flush_pushes($sim_a);
}
my $answers = decode_json(HTTP::Tiny->new->get("http://127.0.0.1:$rport/")->{content});
ok(($answers->{'200'} // 0) > 0 && !$answers->{SS401}, 'pushes signed with the previous and the new secret are taken')
  or diag explain $answers;
kill 'TERM', $rpid;
waitpid($rpid, 0);
ok(sql(q{SELECT count(*) > 0 FROM shipsync.tracking_event e JOIN shipsync.provider p USING (provider_id)
	WHERE p.name = 'leak_bearer'}) eq 't', 'tracking events stored');

sub form_encode
{
	my ($s) = @_;
	utf8::encode($s) if utf8::is_utf8($s);
	$s =~ s/([^A-Za-z0-9.*_-])/$1 eq ' ' ? '+' : sprintf('%%%02X', ord($1))/ge;
	return $s;
}
my $kd_tn = sql(q{SELECT waybill_no FROM o_kd WHERE id = 1});
my $param = encode_json({ status => 'polling', lastResult => { state => '3', ischeck => '1',
	com => 'shunfeng', nu => $kd_tn, data => [ { context => 'signed', time => '2026-11-27 10:05:00',
	ftime => '2026-11-27 10:05:00', status => 'sign' } ] } });
my $kd_body = 'param=' . form_encode($param) . '&sign=' . uc(md5_hex($param . $secret{kuaidi100_salt}));
is(sql(qq{SELECT shipsync.ingest_tracking('leak_kd', \$b\$$kd_body\$b\$)->>'events'}), '1',
	'a Kuaidi100 push signed with the salt is taken');

# CRM pushes: signed with the new and the previous secret of a source
# (both taken), with neither (refused), and a generic one
sub crm_push
{
	my ($source, $secret, $id) = @_;
	my $body = qq({"op": "data_create", "data": {"id": "$id", "customer": "c"}});
	my ($q, $h) = jdy_signed($secret, $body, $id);
	my ($nonce, $ts) = $q =~ /nonce=(\w+)&timestamp=(\d+)/;
	my ($r, $o, $e) = $node->psql('postgres', qq{SELECT shipsync.ingest_crm('$source', \$b\$$body\$b\$,
		'@{[ encode_json($h) ]}', '{"nonce": "$nonce", "timestamp": "$ts"}')->>'inserted'});
	return $r == 0 ? $o : $e;
}
is(crm_push('leak_jdy', $secret{crm_jdy_new}, 'J1'), '1', 'a CRM push signed with the new secret is taken');
is(crm_push('leak_jdy', $secret{crm_jdy}, 'J2'), '1', 'and one signed with the previous secret');
like(crm_push('leak_jdy', $secret{crm_failed}, 'J3'), qr/failed its authentication/,
	'one signed with another is refused');
my $zbody = '{"type": "order.created", "data": {"id": "Z1", "customer": "z"}}';
is( sql(qq{SELECT shipsync.ingest_crm('leak_zoho', '$zbody',
		'@{[ encode_json(sw_headers($secret{crm_generic}, 'z1', $zbody)) ]}')->>'inserted'}),
	'1', 'a generic CRM push signed with the secret given through bind parameters is taken');

# 5. the scan
my $lout = $listener->query_safe("SELECT 'scanned'");
$listener->quit;
like($lout, qr/Asynchronous notification "shipsync" with payload/, 'NOTIFY payloads were heard');

my $dumpfile = $node->basedir . '/leaks.sql';
$node->command_ok([ 'pg_dump', '-f', $dumpfile, 'postgres' ], 'pg_dump');

# every table and view of the extension, as text
my $relations = sql(q{SELECT string_agg(format('SELECT %L || '': '' || coalesce(string_agg(t::text, E''\n''), '''') FROM %s t',
	c.relname, c.oid::regclass), ' UNION ALL ' ORDER BY c.relname)
	FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	WHERE n.nspname = 'shipsync' AND c.relkind IN ('r', 'p', 'v')});
my $tables = sql($relations);
like($tables, qr/^outbox: .*\n/m, 'the scan covers the tables');
like($tables, qr/^secrets: /m, 'and the views');

# every render_request() and trace() result (an error is a result too)
my $functions = sql(q{
	CREATE FUNCTION pg_temp.results() RETURNS SETOF text LANGUAGE plpgsql AS $$
	DECLARE
		r record;
		x text;
	BEGIN
		FOR r IN SELECT id FROM shipsync.outbox UNION ALL SELECT id FROM shipsync.inbox LOOP
			BEGIN
				SELECT string_agg(q::text, ' ') INTO x FROM shipsync.render_request(r.id) q;
			EXCEPTION WHEN OTHERS THEN
				x := SQLERRM;
			END;
			RETURN NEXT 'render_request ' || r.id || ': ' || x;
		END LOOP;
		FOR r IN SELECT DISTINCT b.tbl, o.order_key FROM shipsync.outbox o JOIN shipsync.binding b USING (binding_id) LOOP
			SELECT string_agg(q::text, ' ') INTO x FROM shipsync.trace(r.tbl, r.order_key) q;
			RETURN NEXT 'trace ' || r.tbl || ' ' || r.order_key || ': ' || x;
		END LOOP;
	END $$;
	SELECT string_agg(x, E'\n') FROM pg_temp.results() x});
like($functions, qr/render_request \d+: \(POST,/, 'the scan covers render_request()');
like($functions, qr/trace o_bearer 4: .*dead/, 'and trace()');

my %sources = (
	'server log' => slurp_file($node->logfile),
	'pg_dump' => slurp_file($dumpfile),
	'tables and views' => $tables,
	'function results' => $functions,
	'NOTIFY payloads' => $lout);
for my $what (sort keys %sources)
{
	my @found = grep { index($sources{$what}, $_) >= 0 } @needles;
	is(join(', ', @found), '', "$what: no secret");
}

# the log did record the calls, redacted
my $log = $sources{'server log'};
like($log, qr/LOG:  statement: \s*SELECT shipsync.create_provider\('\*\*\*', '\*\*\*', '\*\*\*', '\*\*\*'\)/,
	'log_statement logged the calls, their literals blanked');
like($log, qr/LOG:  execute <unnamed>: SELECT shipsync.set_secret\(\$1, \$2, \$3\);?\n.*DETAIL:  parameters: \(redacted by pg_shipsync: the statement passes secrets\)/,
	'bind parameters of set_secret() are redacted');
like($log, qr/ERROR:  provider "leak_bearer" has no secret "no_such_secret"/, 'the failed set_secret() is logged');
unlike($log, qr/STATEMENT:  [^\n]*(create_provider|create_crm_source|set_secret|EXECUTE put_)/,
	'no STATEMENT line of a secret-taking call');
like($log, qr/LOG:  statement: \s*SELECT shipsync.create_crm_source\('\*\*\*', '\*\*\*',\s+'\*\*\*', '\*\*\*'\)/,
	'create_crm_source() calls are logged with their literals blanked');
like($log, qr/LOG:  execute <unnamed>: SELECT shipsync.create_crm_source\(\$1, '\*\*\*', '\*\*\*', CAST\(\$2 AS jsonb\)\);?\n.*DETAIL:  parameters: \(redacted by pg_shipsync: the statement passes secrets\)/,
	'and their bind parameters redacted');
like($log, qr/LOG:  statement: EXECUTE put_secret\('\*\*\*', '\*\*\*', '\*\*\*'\);?\n.*DETAIL:  prepare: PREPARE put_secret/,
	'an EXECUTE of a prepared call is logged with its arguments blanked');
like($log, qr/CONTEXT:  .*\n\tSQL statement "SELECT shipsync.set_secret\('\*\*\*', '\*\*\*', '\*\*\*'\)"\n\tPL\/pgSQL function inline_code_block/,
	'the CONTEXT of an error in a DO block quotes its call blanked');
like($log, qr/CONTEXT:  JSON data, line 1: \(redacted by pg_shipsync: the statement passes secrets\)/,
	'the JSON that the CONTEXT of an error echoes is blanked');
like($log, qr/Output: shipsync._check_wire\(format\('\*\*\*'::text, '\*\*\*'::text\), '\*\*\*'::text, false\)/,
	'the plans auto_explain logs have their constants blanked');
like($log, qr/DETAIL:  Process \d+ waits .*\n(\t.*\n)*\tProcess \d+: SELECT shipsync.set_secret\('\*\*\*', '\*\*\*', '\*\*\*'\)/,
	'a deadlock report quotes the call of the other session blanked');
like($log, qr/ERROR:  division by zero\n.*STATEMENT:  SELECT 1 \/ 0 AS other_statement/,
	'while another failed statement keeps its STATEMENT line');

$node->stop;
done_testing();
