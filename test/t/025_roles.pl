# Roles that mean what they say, tried by logging in.
#
# A cluster with password (SCRAM) authentication on 127.0.0.1 and real
# login roles: a member of each of shipsync_reader (bi), shipsync_operator
# (ops) and shipsync_admin (boss) and of the receiver's shipsync_ingest
# (receiver), the owner of the orders table (shop, an admin too), and a
# role with none of them (nobody).  Proves:
#   1. the role matrix of docs/security.md, cell by cell: every object of
#      schema shipsync, listed from the catalogs (a new object without a
#      row fails here, and so does a row without an object), is read,
#      written, truncated or called by each login, and what is allowed and
#      what is refused is what the matrix says;
#   2. the reader sees personal values masked in request bodies,
#      render_request(), trace() and every view it may read, and cannot
#      read the outbox; operators and admins see them whole;
#   3. tampering fails: a ticket's acknowledged_by or resolved_by, the
#      audit log (its rows, its triggers, its action label, its writer),
#      the "who" stamps; the log records who did what, and nothing of the
#      attempts;
#   4. the dispatcher prunes audit rows older than shipsync.audit_retention.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;

my $top = "$FindBin::RealBin/../..";
my $sim = start_sim();
END { local $?; stop_sim($sim) if $sim; }
my $node = shipsync_node('roles', "listen_addresses = '127.0.0.1'",
	"password_encryption = 'scram-sha-256'", "shipsync.idle_check_ms = 200");
my $port = $node->port;

my %password = (bi => 'bi-pw', ops => 'ops-pw', boss => 'boss-pw', shop => 'shop-pw',
	receiver => 'receiver-pw', nobody => 'nobody-pw');
$node->safe_psql('postgres', q{
	CREATE EXTENSION pg_shipsync;
	CREATE ROLE bi LOGIN PASSWORD 'bi-pw' IN ROLE shipsync_reader;
	CREATE ROLE ops LOGIN PASSWORD 'ops-pw' IN ROLE shipsync_operator;
	CREATE ROLE boss LOGIN PASSWORD 'boss-pw' IN ROLE shipsync_admin;
	CREATE ROLE shop LOGIN PASSWORD 'shop-pw' IN ROLE shipsync_admin;
	CREATE ROLE receiver LOGIN PASSWORD 'receiver-pw' IN ROLE shipsync_ingest;
	CREATE ROLE nobody LOGIN PASSWORD 'nobody-pw';
	CREATE SCHEMA crm AUTHORIZATION shop;
	CREATE SCHEMA boss AUTHORIZATION boss;
	GRANT USAGE ON SCHEMA crm TO nobody, bi;
});
# the harness's superuser over the Unix socket; every other role over TCP,
# with its password
open(my $hba, '>', $node->data_dir . '/pg_hba.conf') or die "pg_hba.conf: $!";
print $hba "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
close($hba);
$node->reload;

sub connstr
{
	my ($role) = @_;
	return "host=127.0.0.1 port=$port dbname=postgres user=$role password=$password{$role}";
}

# Run SQL as a login role over TCP: (exit code, stdout, stderr)
sub as_role
{
	my ($role, $sql) = @_;
	my ($out, $err);
	my $rc = $node->psql('postgres', $sql, connstr => connstr($role),
		stdout => \$out, stderr => \$err, on_error_stop => 1);
	return ($rc, $out, $err);
}

# SQL that must work as a role; its output
sub ok_as
{
	my ($role, $sql) = @_;
	my ($rc, $out, $err) = as_role($role, $sql);
	die "as $role: $sql\n$err" if $rc != 0;
	return $out;
}

sub sql { return $node->safe_psql('postgres', $_[0]); }

$node->connect_fails(
	"host=127.0.0.1 port=$port dbname=postgres user=bi password=wrong",
	'a wrong password is refused over TCP',
	expected_stderr => qr/password authentication failed for user "bi"/);
$node->connect_ok(connstr($_), "$_ logs in over TCP with its password") for sort keys %password;

# ---------- the data: orders with personal values, delivered ----------

ok_as('shop', qq{
	CREATE TABLE crm.orders (
		id bigserial PRIMARY KEY, customer text NOT NULL, phone text, address text,
		email text, waybill_no text, ship_status text);
	GRANT INSERT ON crm.orders TO nobody;
	GRANT USAGE ON SEQUENCE crm.orders_id_seq TO nobody;
	CREATE TABLE crm.sf_orders (
		order_no text PRIMARY KEY, receiver_name text, receiver_phone text,
		receiver_address text, waybill text);
});
ok_as('boss', qq{
	SELECT shipsync.create_provider('sim', 'generic', '$sim->{url}',
		'{"timeout_ms": 2000, "backoff_base_ms": 50, "backoff_max_ms": 500}');
	SELECT shipsync.create_provider('sf', 'sf_express', 'https://sfapi.example/std/service',
		'{"auth": {"type": "sf_express", "partner_id": "SHOP1", "checkword": "cw-secret"}}');
	SELECT shipsync.pause('sf');
});
ok_as('shop', q{
	SELECT shipsync.attach('crm.orders', 'sim',
		writeback => '{"tracking_number": "waybill_no", "status": "ship_status"}');
	SELECT shipsync.attach('crm.sf_orders', 'sf');
	INSERT INTO crm.orders (customer, phone, address, email) VALUES
		('张三', '13812345678', '深圳市南山区科技园10栋', 'zhangsan@example.com'),
		('John Smith', '+44 20 7946 0958', 'Flat 3, 221B Baker Street, London', 'john@example.co.uk');
	INSERT INTO crm.sf_orders VALUES
		('SF-1', '郭襄', '18963828829', '湖北省襄阳市襄城区环城东路122号', NULL);
});
# the role with no shipsync role may still insert orders: they are captured
ok_as('nobody', q{INSERT INTO crm.orders (customer, phone, address) VALUES ('李雷', '13900001111', '北京市朝阳区建国路88号')});
ok(wait_until($node, 'SELECT count(*) = 0 FROM crm.orders WHERE waybill_no IS NULL'),
	'the orders are delivered, the one nobody inserted too');
my $personal = qr/张三|13812345678|科技园|zhangsan|John|7946|Baker|john\@|郭襄|18963828829|环城东路|李雷|13900001111|建国路/;

# ---------- 1. the matrix ----------

# The matrix of docs/security.md: object => [kind, reader, operator, admin,
# ingest, none]
my %matrix;
my $doc = slurp_file("$top/docs/security.md");
my ($table) = $doc =~ /<!-- role matrix -->\n(.*?)\n\n/s
  or BAIL_OUT('docs/security.md has no role matrix');
for my $line (split /\n/, $table)
{
	next unless $line =~ /^\|\s*(schema|table|view|sequence|function|aggregate)\s+`([^`]+)`\s*\|(.*)\|\s*$/;
	my ($kind, $name, $cells) = ($1, $2, $3);
	my @cells = map { s/^\s+|\s+$//gr } split /\|/, $cells;
	die "matrix row for $name has " . scalar(@cells) . " cells" unless @cells == 5;
	$matrix{$name} = [ $kind, @cells ];
}
my %role_column = (bi => 1, ops => 2, boss => 3, receiver => 4, nobody => 5);

# Every object of the schema, from the catalogs: relations with their
# columns, functions with how to call them.
my @objects = map { [ split /\|/, $_, -1 ] } split /\n/, sql(q{
	SET search_path = '';
	SELECT CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' WHEN 'm' THEN 'view'
						  ELSE 'table' END,
		   c.oid::regclass::text,
		   (SELECT string_agg(quote_ident(a.attname), ',' ORDER BY a.attnum) FROM pg_attribute a
			WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), ''
	FROM pg_class c
	WHERE c.relnamespace = 'shipsync'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
	UNION ALL
	SELECT CASE p.prokind WHEN 'a' THEN 'aggregate' ELSE 'function' END,
		   p.oid::regprocedure::text,
		   format('%s(%s)', p.oid::regproc,
				  -- sub-selects, not constants: a strict function of a NULL
				  -- constant is folded away before its privilege is checked
				  (SELECT string_agg('(SELECT NULL::' || format_type(t, NULL) || ')', ', ' ORDER BY n)
				   FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS u(t, n))),
		   -- a function SQL cannot call: its privilege is the answer
		   (p.prorettype IN ('trigger'::regtype, 'event_trigger'::regtype)
			OR 'internal'::regtype = ANY (p.proargtypes::oid[]))::text
	FROM pg_proc p WHERE p.pronamespace = 'shipsync'::regnamespace
	ORDER BY 2});
cmp_ok(scalar(@objects), '>', 80, 'the catalogs list the objects of schema shipsync');
my %in_catalog = map { $_->[1] => $_->[0] } @objects;
is(join(', ', grep { !$matrix{$_} } sort keys %in_catalog), '',
	'every object of the schema has a row in the matrix of docs/security.md');
is(join(', ', grep { !exists $in_catalog{$_} && $matrix{$_}[0] ne 'schema' } sort keys %matrix), '',
	'every row of the matrix names an object that exists');
is(join(', ', map { "$_ is a $in_catalog{$_}" } grep { $matrix{$_} && $matrix{$_}[0] ne $in_catalog{$_} } sort keys %in_catalog),
	'', 'and of the kind the matrix says');

# The attempts: [object, operation, statement] (statement undef: judged by
# the privilege functions)
my @checks;
for my $o (@objects)
{
	my ($kind, $name, $what, $uncallable) = @$o;

	if ($kind eq 'function' || $kind eq 'aggregate')
	{
		push @checks, [ $name, 'call', $uncallable eq 'true' ? undef : "SELECT $what" ];
		next;
	}
	push @checks, [ $name, 'read', "SELECT 1 FROM $name LIMIT 0" ];
	if ($kind eq 'sequence')
	{
		push @checks, [ $name, 'use', "SELECT pg_catalog.nextval('$name')" ];
		next;
	}
	push @checks, [ $name, 'insert', "INSERT INTO $name DEFAULT VALUES" ];
	# each column (a view's have no defaults: set to themselves)
	push @checks, [ $name, 'update', $kind eq 'view' ? "UPDATE $name SET $_ = $_ WHERE false"
		: "UPDATE $name SET $_ = DEFAULT WHERE false" ]
	  for split /,/, $what;
	push @checks, [ $name, 'delete', "DELETE FROM $name WHERE false" ];
	push @checks, [ $name, 'truncate', "TRUNCATE $name" ];
}
my $schema_row = 'shipsync';
ok($matrix{$schema_row} && $matrix{$schema_row}[0] eq 'schema', 'the matrix has a row for the schema');

sub quote { my $s = shift; return defined $s ? "'" . ($s =~ s/'/''/gr) . "'" : 'NULL'; }

# One session per role tries everything, each attempt in a subtransaction
# that is rolled back whatever happens.
my $values = join(",\n", map {
	my ($name, $op, $stmt) = @{ $checks[$_] };
	"($_, " . quote($name) . ', ' . quote($op) . ', ' . quote($stmt) . ')' } 0 .. $#checks);
my $script = qq{
	CREATE TEMP TABLE attempt (n int, obj text, op text, stmt text);
	INSERT INTO attempt VALUES $values;
	CREATE TEMP TABLE outcome (n int, state text, msg text);
	DO \$\$
	DECLARE
		a record;
		st text;
		msg text;
	BEGIN
		FOR a IN SELECT * FROM attempt ORDER BY n LOOP
			IF a.stmt IS NULL THEN
				INSERT INTO outcome VALUES (a.n, 'privilege',
					CASE WHEN has_schema_privilege('shipsync', 'USAGE')
							  AND has_function_privilege(a.obj, 'EXECUTE')
						 THEN 'allowed' ELSE 'refused' END);
				CONTINUE;
			END IF;
			BEGIN
				EXECUTE a.stmt;
				RAISE EXCEPTION 'matrix: allowed';
			EXCEPTION WHEN OTHERS THEN
				GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
				INSERT INTO outcome VALUES (a.n, st, msg);
			END;
		END LOOP;
	END \$\$;
	SELECT n || '|' || state || '|' || replace(msg, E'\\n', ' ') FROM outcome ORDER BY n;
	SELECT 'schema|' || has_schema_privilege('shipsync', 'USAGE') || '|'
		|| has_schema_privilege('shipsync', 'CREATE');
};

# What refuses an operation: a privilege on the object itself (not one on
# something a function it calls uses), or a view that cannot be written.
sub refused
{
	my ($name, $msg) = @_;
	my $base = $name =~ s/\(.*//r =~ s/^shipsync\.//r;
	return $msg =~ /^permission denied for (schema shipsync|(table|view|sequence|function|aggregate) \Q$base\E)$/
	  || $msg =~ /^cannot (insert into|update|delete from) view "\Q$base\E"/
	  || $msg =~ /^cannot update column .* of view "\Q$base\E"/
	  || $msg =~ /^column ".*" can only be updated to DEFAULT/
	  || $msg =~ /^"\Q$base\E" is not a table/;
}
my %allowed_ops = (
	read => [qw(read)],
	'read (masked)' => [qw(read)],
	'read (no digests)' => [qw(read)],
	write => [qw(insert update delete)],
	call => [qw(call)],
	'call (masked)' => [qw(call)],
	use => [qw(use)]);

for my $role (qw(bi ops boss receiver nobody))
{
	my $col = $role_column{$role};
	my $out = ok_as($role, $script);
	my (%observed, @mismatch, $schema_line);
	for my $line (split /\n/, $out)
	{
		if ($line =~ /^schema\|(\w+)\|(\w+)$/) { $schema_line = [ $1, $2 ]; next; }
		my ($n, $state, $msg) = split /\|/, $line, 3;
		my ($name, $op) = @{ $checks[$n] }[ 0, 1 ];
		my $ok = $state eq 'privilege' ? $msg eq 'allowed' : !refused($name, $msg);
		# every column of a table must agree on update
		push @mismatch, "$name: update allowed on some columns only ($msg)"
		  if $op eq 'update' && exists $observed{$name}{update} && $observed{$name}{update} != $ok;
		$observed{$name}{$op} = $ok;
		$observed{$name}{"$op msg"} = $msg;
	}
	for my $name (sort keys %observed)
	{
		next unless $matrix{$name};
		my %expect = map { $_ => 1 } map { @{ $allowed_ops{$_} // die "unknown cell '$_' of $name" } }
		  grep { $_ ne '—' } split /,\s*(?![^(]*\))/, $matrix{$name}[$col];
		for my $op (grep { !/ msg$/ } sort keys %{ $observed{$name} })
		{
			my $want = $expect{$op} ? 1 : 0;
			push @mismatch, sprintf("%s %s: %s, the matrix says %s (%s)", $name, $op,
				$observed{$name}{$op} ? 'allowed' : 'refused', $want ? 'allowed' : 'refused',
				$observed{$name}{"$op msg"})
			  if $observed{$name}{$op} != $want;
		}
	}
	my $schema_cell = $matrix{$schema_row}[$col];
	push @mismatch, "schema USAGE is $schema_line->[0], the matrix says $schema_cell"
	  if ($schema_line->[0] eq 'true') != ($schema_cell eq 'use');
	push @mismatch, 'schema CREATE is granted' if $schema_line->[1] eq 'true';
	is(join("\n", @mismatch), '',
		"$role: every cell of its column of the matrix, allowed and refused ("
		  . scalar(keys %observed) . ' objects)');
}

# ---------- 2. personal values ----------

my $bodies_bi = ok_as('bi', q{SELECT string_agg(request_body, E'\n' ORDER BY id) FROM shipsync.intents});
unlike($bodies_bi, $personal, 'the reader sees no personal value in the request bodies of shipsync.intents');
like($bodies_bi, qr/"customer":"张\*".*"phone":"138\*\*\*\*5678".*"address":"深圳市南山区\*\*\*".*"email":"z\*\*\*\@example.com"/,
	'but their masks');
# (an address keeps its region only: a street line before the first comma
# is no region, and the whole address is ***)
like($bodies_bi, qr/"customer":"J\*\*\* Smith".*"address":"\*\*\*"/, 'Latin names and addresses too');
my ($rc, $out, $err) = as_role('bi', 'SELECT count(*) FROM shipsync.outbox');
like($err, qr/permission denied for table outbox/, 'the reader cannot read the outbox itself');
for my $role (qw(ops boss))
{
	like(ok_as($role, q{SELECT string_agg(request_body, E'\n' ORDER BY id) FROM shipsync.intents}),
		qr/"customer":"张三".*"phone":"13812345678"/, "$role sees the personal values whole");
	like(ok_as($role, q{SELECT string_agg(request_body, E'\n' ORDER BY id) FROM shipsync.outbox}),
		qr/"customer":"张三"/, "$role reads the outbox itself");
}
my $sf_id = sql(q{SELECT id FROM (SELECT id, provider_id FROM shipsync.inbox
	UNION ALL SELECT id, provider_id FROM shipsync.outbox) i
	JOIN shipsync.provider p USING (provider_id) WHERE p.name = 'sf'});
my $render = ok_as('bi', qq{SELECT string_agg(body, E'\\n') FROM shipsync.intents i, shipsync.render_request(i.id)
	WHERE i.provider_id = (SELECT provider_id FROM shipsync.providers WHERE name = 'sim')});
my $render_sf = ok_as('bi', "SELECT body FROM shipsync.render_request($sf_id)");
unlike($render . $render_sf, $personal, 'render_request() shows the reader no personal value');
like($render_sf, qr/%E9%83%AD\*/, 'SF msgData: the receiver masked inside the form');
like(ok_as('ops', "SELECT body FROM shipsync.render_request($sf_id)"), qr/%E9%83%AD%E8%A5%84/,
	'the operator sees the receiver whole');
unlike(ok_as('bi', q{SELECT string_agg(detail::text, E'\n') FROM shipsync.trace('crm.orders', '1')}),
	$personal, 'trace() shows the reader no personal value');
my $views = ok_as('bi', q{
	DO $$
	DECLARE v regclass;
	BEGIN
		CREATE TEMP TABLE seen (v text, t text);
		FOR v IN SELECT c.oid FROM pg_class c WHERE c.relnamespace = 'shipsync'::regnamespace
				 AND c.relkind IN ('v', 'r') AND has_table_privilege(c.oid, 'SELECT') LOOP
			EXECUTE format('INSERT INTO seen SELECT %L, t::text FROM %s t', v, v);
		END LOOP;
	END $$;
	SELECT string_agg(DISTINCT v, ',') || E'\n' || string_agg(t, E'\n') FROM seen});
like($views, qr/shipsync\.intents/, 'the reader reads the views and tables it may');
unlike($views, $personal, 'none of them holds a personal value');

# A reader's code that a more privileged session runs as the reader: the
# trigger of a table it owns, fired by the dispatcher's write-back (run as
# the table's owner inside the superuser's session), and its materialized
# view, refreshed by a superuser (PostgreSQL runs the query as the view's
# owner).  Either used to be judged on the session's superuser and saw
# every order of every table whole.
sql(q{CREATE ROLE shopbi LOGIN PASSWORD 'shopbi-pw' IN ROLE shipsync_reader;
	CREATE SCHEMA shopbi AUTHORIZATION shopbi;});
$password{shopbi} = 'shopbi-pw';
ok_as('shopbi', q{
	CREATE TABLE shopbi.orders (id int PRIMARY KEY, item text, waybill text);
	CREATE TABLE shopbi.seen (visible boolean, bodies text);
	CREATE FUNCTION shopbi.look() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO shopbi.seen SELECT shipsync._pii_visible(), string_agg(request_body, E'\n')
		FROM shipsync.intents;
		RETURN NEW;
	END $$;
	CREATE TRIGGER look BEFORE UPDATE ON shopbi.orders FOR EACH ROW EXECUTE FUNCTION shopbi.look();
	CREATE MATERIALIZED VIEW shopbi.bodies AS SELECT id, request_body FROM shipsync.intents;
});
sql(q{SELECT shipsync.attach('shopbi.orders', 'sim', writeback => '{"tracking_number": "waybill"}')});
ok_as('shopbi', q{INSERT INTO shopbi.orders VALUES (1, 'a lamp', NULL)});
ok(wait_until($node, 'SELECT count(*) > 0 FROM shopbi.seen'),
	"the write-back of the reader's own order ran its trigger");
my $seen = ok_as('shopbi', q{SELECT string_agg(visible::text || ' ' || bodies, E'\n') FROM shopbi.seen});
like($seen, qr/^false .*"customer":"张\*"/s,
	"the reader's trigger, run by the dispatcher as its owner, sees the masks");
unlike($seen, $personal, '... and no personal value');
sql('REFRESH MATERIALIZED VIEW shopbi.bodies');
my $mv = ok_as('shopbi', q{SELECT string_agg(request_body, E'\n' ORDER BY id) FROM shopbi.bodies});
like($mv, qr/"customer":"张\*"/, "a superuser's refresh of the reader's materialized view stores the masks");
unlike($mv, $personal, '... and no personal value');

# Nor a digest of one: beside the masked body, the SHA-256 of the whole body
# (or the digest of the order row it was rendered from) lets the reader try
# the few characters the mask hides until one matches.
(my $personal_sql = $personal) =~ s/^\(\?\^:|\)$//g;
$personal_sql =~ s/\\\@/@/g;
my $digests = sql(qq{SELECT string_agg(d, ',' ORDER BY d) FROM (
	SELECT encode(sha256(convert_to(o.request_body, 'UTF8')), 'hex') AS d FROM shipsync.outbox o
	 WHERE o.request_body ~ '$personal_sql'
	UNION
	SELECT o.content_digest::text FROM shipsync.outbox o
	 WHERE o.request_body ~ '$personal_sql' AND o.content_digest IS NOT NULL) x});
cmp_ok(scalar(split /,/, $digests), '>=', 4, 'the bodies with personal values and their rows have digests');
my $hits = ok_as('bi', qq{
	CREATE TEMP TABLE hits (col text, n bigint);
	DO \$\$
	DECLARE
		c record;
		n bigint;
		cols integer := 0;
	BEGIN
		FOR c IN SELECT a.attrelid::regclass AS rel, a.attname
				   FROM pg_attribute a JOIN pg_class r ON r.oid = a.attrelid
				  WHERE r.relnamespace = 'shipsync'::regnamespace AND r.relkind IN ('r', 'v', 'm')
					AND a.attnum > 0 AND NOT a.attisdropped
					AND has_column_privilege(a.attrelid, a.attnum, 'SELECT') LOOP
			EXECUTE format('SELECT count(*) FROM %s t WHERE t.%I::text = ANY (%L::text[])',
						   c.rel, c.attname, '{$digests}') INTO n;
			cols := cols + 1;
			IF n > 0 THEN
				INSERT INTO hits VALUES (c.rel || '.' || c.attname, n);
			END IF;
		END LOOP;
		INSERT INTO hits VALUES ('columns read', cols);
	END \$\$;
	SELECT string_agg(col || ' ' || n, ', ' ORDER BY col) FROM hits});
like($hits, qr/^columns read \d{3,}$/,
	'no column the reader may read holds the digest of a body or a row with personal values');
is(ok_as('bi', q{SELECT count(*) FROM shipsync.intents WHERE request_digest IS NOT NULL OR content_digest IS NOT NULL}),
	'0', 'the reader sees the digests of shipsync.intents as NULL');
for my $t ('shipment', 'delivery_log')
{
	($rc, $out, $err) = as_role('bi', "SELECT request_digest FROM shipsync.$t");
	like($err, qr/permission denied for table $t/, "the reader cannot read the digests of shipsync.$t");
	is(ok_as('bi', "SELECT count(*) > 0 FROM shipsync.$t WHERE provider_id IS NOT NULL"), 't',
		"... but reads its other columns");
	is(ok_as('ops', "SELECT count(*) > 0 FROM shipsync.$t WHERE request_digest IS NOT NULL"), 't',
		"the operator reads the digests of shipsync.$t");
}
is(ok_as('ops', q{SELECT count(*) > 0 FROM shipsync.intents WHERE request_digest IS NOT NULL AND content_digest IS NOT NULL}),
	't', 'the operator sees the digests of shipsync.intents');
# Nor the label's link: a carrier's label that needs no login prints the
# receiver's whole name, phone and address
($rc, $out, $err) = as_role('bi', 'SELECT label_url FROM shipsync.shipment');
like($err, qr/permission denied for table shipment/, 'the reader cannot read the label links');
is(ok_as('ops', 'SELECT count(label_url) >= 0 FROM shipsync.shipment'), 't',
	'the operator reads the label links');

# ---------- 3. tampering ----------

my $log_now = 'SELECT md5(string_agg(a::text, \'\' ORDER BY audit_id)) FROM shipsync.audit_log a';
my $log_before = sql($log_now);
my $mark = sql('SELECT max(audit_id) FROM shipsync.audit_log');
sql(q{UPDATE shipsync.outbox SET state = 'dead' WHERE id = (SELECT min(id) FROM shipsync.outbox);
	INSERT INTO shipsync.exception_ticket (kind, provider_id, detail) VALUES ('dead_intent', 1, 'test')});
my $ticket = sql('SELECT max(ticket_id) FROM shipsync.exception_ticket');
($rc, $out, $err) = as_role('ops', "UPDATE shipsync.exception_ticket SET acknowledged_at = now(), acknowledged_by = 'boss' WHERE ticket_id = $ticket");
like($err, qr/permission denied for table exception_ticket/, 'an operator cannot write a name into a ticket');
is(ok_as('ops', "SELECT shipsync.ack($ticket)"), 't', 'an operator acknowledges through the function');
is(ok_as('ops', "SELECT shipsync.resolve($ticket, 'done')"), 't', 'and resolves');
is(sql("SELECT acknowledged_by || '/' || resolved_by FROM shipsync.exception_ticket WHERE ticket_id = $ticket"),
	'ops/ops', 'the ticket names the login that did it');
for my $attempt (
	[ 'ops', "SET shipsync.audit_action = 'resume'", qr/permission denied to set parameter "shipsync.audit_action"/ ],
	[ 'boss', "UPDATE shipsync.audit_log SET \"session_user\" = 'ops'", qr/permission denied for table audit_log/ ],
	[ 'boss', 'DELETE FROM shipsync.audit_log', qr/permission denied for table audit_log/ ],
	[ 'boss', 'TRUNCATE shipsync.audit_log', qr/permission denied for table audit_log/ ],
	[ 'boss', q{INSERT INTO shipsync.audit_log ("session_user", "current_user", action, object_kind) VALUES ('ops', 'ops', 'x', 'y')},
	  qr/permission denied for table audit_log/ ],
	[ 'boss', 'ALTER TABLE shipsync.audit_log DISABLE TRIGGER ALL', qr/must be owner of table audit_log/ ],
	[ 'boss', q{SELECT shipsync._audit('pause', 'provider', 'sim', NULL, NULL)}, qr/permission denied for function _audit/ ],
	[ 'boss', q{SELECT shipsync._prune_audit('0 s')}, qr/permission denied for function _prune_audit/ ],
	[ 'boss', q{CREATE TABLE boss.decoy (name text); CREATE TRIGGER forge AFTER INSERT ON boss.decoy
		FOR EACH ROW EXECUTE FUNCTION shipsync._audit_row('provider', 'name', '{}')},
	  qr/permission denied for function shipsync._audit_row/ ],
	[ 'boss', q{UPDATE shipsync.provider SET updated_by = 'ops'}, qr/permission denied for table provider/ ],
	[ 'ops', q{SELECT shipsync._set_paused('sim', true) FROM pg_catalog.set_config('shipsync.audit_action', 'resume', true)},
	  qr/permission denied to set parameter "shipsync.audit_action"/ ])
{
	my ($role, $stmt, $why) = @$attempt;
	($rc, $out, $err) = as_role($role, $stmt);
	like($err, $why, "$role: $stmt refused");
}
is(sql("$log_now WHERE audit_id <= $mark"), $log_before, 'no audit row was changed or removed');
is(sql(qq{SELECT string_agg(action || ' ' || object_kind || ' ' || object_name || ' by ' || "session_user",
	', ' ORDER BY audit_id) FROM shipsync.audit_log WHERE audit_id > $mark}),
	"ack ticket $ticket by ops, resolve ticket $ticket by ops",
	'and the only rows added are the acknowledgement and the resolution');
$mark = sql('SELECT max(audit_id) FROM shipsync.audit_log');
ok_as('boss', q{INSERT INTO shipsync.field_map (profile, direction, target_path, source, updated_by)
	VALUES ('boss_json', 'out', 'ref', 'meta:order_key', 'ops')});
is(sql(q{SELECT updated_by FROM shipsync.field_map WHERE profile = 'boss_json'}), 'boss',
	'a field map row is stamped with its real author');
ok_as('boss', q{SET ROLE shipsync_operator; SELECT shipsync.pause('sim'); SELECT shipsync.resume('sim')});
is(sql(qq{SELECT string_agg(action || ' ' || object_kind || ' ' || object_name || ' by '
	|| "session_user" || ' as ' || "current_user", ', ' ORDER BY audit_id)
	FROM shipsync.audit_log WHERE audit_id > $mark}),
	'insert field_map boss_json/out/ref by boss as boss, pause provider sim by boss as shipsync_operator, '
	  . 'resume provider sim by boss as shipsync_operator',
	'the audit log says who did what, and as which role, and nothing of the attempts');

# ---------- 4. pruning ----------

sql(q{INSERT INTO shipsync.audit_log (at, "session_user", "current_user", action, object_kind) VALUES
	(now() - interval '40 days', 'x', 'x', 'forty days ago', 'test'),
	(now() - interval '10 days', 'x', 'x', 'ten days ago', 'test')});
sql(q{ALTER SYSTEM SET shipsync.audit_retention = '30d'; SELECT pg_reload_conf()});
ok(wait_until($node, q{SELECT count(*) = 0 FROM shipsync.audit_log WHERE action = 'forty days ago'}),
	'the dispatcher prunes audit rows older than shipsync.audit_retention');
is(sql(q{SELECT string_agg(action, ',') FROM shipsync.audit_log WHERE object_kind = 'test'}),
	'ten days ago', 'and keeps the younger ones');

$node->stop;
done_testing();
