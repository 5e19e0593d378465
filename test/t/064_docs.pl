# The reference pages name what exists, as it is.
#
# A fresh cluster with the extension, its catalogs against the pages a
# newcomer reads:
#   1. docs/gucs.md: every parameter of pg_settings (and the hidden
#      shipsync.audit_action) has a row in the summary table and a section,
#      with its real type, default (in the units the page writes), context
#      and range; every row of the table names a parameter that exists;
#   2. docs/sql-reference.md: every function a user calls has a section
#      whose signature block gives its arguments' names and types and what
#      it returns, and a link in the contents; every table and view has a
#      section that names each of its columns; every section names an
#      object that exists;
#   3. every TAP file the documentation names (test/t/NNN_*.pl, "TAP NNN")
#      exists;
#   4. every link between the pages leads to a page, and a heading of it,
#      that exist.
# (docs/security.md's role matrix is checked cell by cell by 025_roles.pl.)
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ShipsyncTest;
use Encode ();
use File::Basename qw(dirname);
use Cwd qw(abs_path);

my $top = "$FindBin::RealBin/../..";
my $node = shipsync_node('docs');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_shipsync');

sub rows
{
	my ($sql) = @_;
	return map { [ split /\|/, $_, -1 ] } grep { $_ ne '' } split /\n/,
	  $node->safe_psql('postgres', $sql);
}

# ---------- 1. docs/gucs.md ----------

my $gucs = slurp_file("$top/docs/gucs.md");

# A value as the page writes it ("10s", "1MB", "5min", "1 day", "4096") in
# the parameter's base unit.
my %per = (
	ms  => { ms => 1, s => 1000, min => 60_000, h => 3_600_000, d => 86_400_000 },
	s   => { s => 1, min => 60, h => 3600, d => 86_400 },
	min => { min => 1, h => 60, d => 1440 },
	B   => { B => 1, kB => 1024, MB => 1024**2, GB => 1024**3 },
	''  => { '' => 1 });
sub in_unit
{
	my ($text, $unit) = @_;
	my ($n, $u) = $text =~ /^\s*(\d+)\s*([A-Za-z]*)\s*$/ or return $text;
	$u = 'd' if $u eq 'day' || $u eq 'days';
	return $n if $u eq '';    # a bare number is in the base unit
	my $f = $per{$unit // ''}{$u};
	return defined $f ? $n * $f : "$n $u (no such unit for this parameter)";
}

# a default cell or bullet: "empty…" is the empty string, else the first
# `value`
sub doc_default
{
	my ($text) = @_;
	return '' if $text =~ /^\s*empty/;
	my ($v) = $text =~ /`([^`]*)`/;
	return $v;
}

my %table;
for my $line (split /\n/, $gucs)
{
	next unless $line =~ /^\|\s*\[`(shipsync\.[a-z_]+)`\]\([^)]*\)\s*\|([^|]*)\|([^|]*)\|([^|]*)\|\s*$/;
	$table{$1} = { type => $2, default => $3, context => $4 };
}
# each section's bullets, continuation lines joined
my %section;
for my $sec (split /^#{2,3} /m, $gucs)
{
	my ($head, $body) = split /\n/, $sec, 2;
	next unless defined $body;
	$body =~ s/\n  (?=\S)/ /g;
	my %b = map { /^- (Type|Default|Context): (.*)$/ ? ($1 => $2) : () } split /\n/, $body;
	$section{$_} = \%b for $head =~ /(shipsync\.[a-z_]+)/g;
}

my @settings = rows(q{
	SELECT name, vartype, boot_val, coalesce(unit, ''), context, coalesce(min_val, ''), coalesce(max_val, '')
	FROM pg_settings WHERE name LIKE 'shipsync.%'
	UNION ALL
	-- not shown by SHOW ALL, so not in pg_settings
	SELECT 'shipsync.audit_action', 'string', '', '', 'superuser', '', ''
	WHERE pg_catalog.current_setting('shipsync.audit_action', true) IS NOT NULL
	ORDER BY 1});
cmp_ok(scalar(@settings), '>', 25, 'pg_settings lists the parameters of pg_shipsync');
my %type_word = (bool => 'boolean', integer => 'integer', string => 'string', real => 'real', enum => 'enum');
my @wrong;
for my $s (@settings)
{
	my ($name, $vartype, $boot, $unit, $context, $min, $max) = @$s;
	my $t = $table{$name};
	my $b = $section{$name};
	push @wrong, "$name: no row in the table" and next unless $t;
	push @wrong, "$name: no section with Type, Default and Context" and next
	  unless $b && $b->{Type} && $b->{Default} && $b->{Context};
	my $want_type = $type_word{$vartype};
	push @wrong, "$name: the table says type \"$t->{type}\", it is $vartype"
	  unless $t->{type} =~ /^\s*\Q$want_type\E\b/;
	push @wrong, "$name: its section says type \"$b->{Type}\", it is $vartype"
	  unless $b->{Type} =~ /^\Q$want_type\E\b/;
	for my $where ([ 'the table', $t->{default} ], [ 'its section', $b->{Default} ])
	{
		my $doc = doc_default($where->[1]);
		my $got = defined $doc && $vartype eq 'integer' ? in_unit($doc, $unit) : $doc;
		push @wrong, "$name: $where->[0] says default \"" . ($doc // '(none)') . "\", it is \"$boot\""
		  unless defined $got && $got eq $boot;
	}
	for my $where ([ 'the table', $t->{context} ], [ 'its section', $b->{Context} ])
	{
		my ($word) = $where->[1] =~ /^\s*([a-z]+)/;
		push @wrong, "$name: $where->[0] says context \"$where->[1]\", it is $context"
		  unless defined $word && $word eq $context;
	}
	if ($vartype eq 'integer' && $b->{Type} =~ /(\d+\s*[A-Za-z]*)\s+to\s+(\d+\s*[A-Za-z]*)/)
	{
		my ($lo, $hi) = (in_unit($1, $unit), in_unit($2, $unit));
		push @wrong, "$name: its section says the range is $lo to $hi ($unit), it is $min to $max"
		  unless $lo eq $min && $hi eq $max;
	}
}
my %real = map { $_->[0] => 1 } @settings;
push @wrong, "$_: a row in the table, but no such parameter" for grep { !$real{$_} } sort keys %table;
is(join("\n", @wrong), '',
	'docs/gucs.md gives every parameter with its real type, default, context and range, and no other');

# A parameter the page says is refused in postgresql.conf is refused there:
# written there and reloaded, its value stays empty in every new session
# (shipsync.audit_action names the action of the audit rows that changes
# made outside the extension's functions record: set in the file, every
# such change would be recorded as that action).
my @refused = sort grep { ($section{$_}{Context} // '') =~ /refused in `postgresql\.conf`/ } keys %section;
ok(scalar(@refused), 'docs/gucs.md names parameters refused in postgresql.conf');
my $reloads = 0;
for my $name (@refused)
{
	# a marker of this reload: a new session that sees it started after it
	$reloads++;
	$node->append_conf('postgresql.conf', "$name = 'resolve'\ndocs064.reload = '$reloads'");
	$node->reload;
	ok(wait_until($node, "SELECT current_setting('docs064.reload', true) = '$reloads'"),
		"$name: the server reloaded its configuration");
	is($node->safe_psql('postgres', "SELECT current_setting('$name')"), '',
		"$name: a value in postgresql.conf is refused");
	my $conf = slurp_file($node->data_dir . '/postgresql.conf');
	$conf =~ s/^\Q$name\E = 'resolve'\n//m;
	open(my $fh, '>', $node->data_dir . '/postgresql.conf') or die $!;
	print $fh $conf;
	close($fh);
	$node->reload;
}

# ---------- 2. docs/sql-reference.md ----------

my $ref = slurp_file("$top/docs/sql-reference.md");
my %ref_section;
for my $sec (split /^### /m, $ref)
{
	my ($head, $body) = split /\n/, $sec, 2;
	next unless defined $body && $head =~ /^shipsync\./;
	$body =~ s/^## .*//ms;    # up to the next section of level 2
	$ref_section{$_} = $body for map { s/^shipsync\.//r } split /,\s*/, $head;
}

# types as the page writes them
sub norm_type
{
	my ($t) = @_;
	$t =~ s/timestamp with time zone/timestamptz/g;
	$t =~ s/\s+DEFAULT\s.*//s;
	$t =~ s/\s+/ /g;
	$t =~ s/\(\s+/(/g;
	$t =~ s/^\s+|\s+$//g;
	return $t;
}
sub norm_args
{
	my ($args) = @_;
	# split at the commas between arguments (a default may hold none here
	# but parentheses)
	my (@a, $depth, $cur);
	($depth, $cur) = (0, '');
	for my $c (split //, $args)
	{
		$depth++ if $c eq '(';
		$depth-- if $c eq ')';
		if ($c eq ',' && $depth == 0) { push @a, $cur; $cur = ''; next; }
		$cur .= $c;
	}
	push @a, $cur if $cur =~ /\S/;
	return join(', ', map { norm_type($_) } @a);
}

my @functions = rows(q{
	SELECT p.proname, pg_catalog.pg_get_function_arguments(p.oid),
		   pg_catalog.pg_get_function_result(p.oid)
	FROM pg_catalog.pg_proc p
	WHERE p.pronamespace = 'shipsync'::regnamespace AND p.proname !~ '^_'
	ORDER BY 1, 2});
cmp_ok(scalar(@functions), '>', 20, 'the catalogs list the functions users call');
@wrong = ();
my ($contents) = $ref =~ /^Contents:\n(.*?)\n\n/ms;
for my $f (@functions)
{
	my ($name, $args, $result) = @$f;
	my $body = $ref_section{$name};
	push @wrong, "$name: no section" and next unless defined $body;
	push @wrong, "$name: not linked from the contents"
	  unless $contents =~ /\(#shipsync\Q$name\E\)/;
	my ($block) = $body =~ /^```\n(.*?)^```/ms;
	$block //= '';
	$block =~ s/\s+/ /g;
	my $want = norm_args($args) . ') RETURNS ' . norm_type($result);
	my @doc;
	while ($block =~ /shipsync\.\Q$name\E\((.*?)\)\s*RETURNS\s+((?:TABLE\s*\(.*?\)|SETOF \S+|\S+))/g)
	{
		push @doc, norm_args($1) . ') RETURNS ' . norm_type($2 =~ s/TABLE\s+\(/TABLE(/r);
	}
	push @wrong, "$name: its signature block does not give ($want; it gives "
	  . join(' / ', map { "($_" } @doc) . ')'
	  unless grep { $_ eq $want } @doc;
}
is(join("\n", @wrong), '',
	'docs/sql-reference.md gives every function with its arguments and result, linked from the contents');

my @relations = rows(q{
	SELECT c.relname, string_agg(a.attname, ',' ORDER BY a.attnum)
	FROM pg_catalog.pg_class c
	JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	WHERE c.relnamespace = 'shipsync'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
	  AND c.relname !~ '^_'
	GROUP BY c.relname ORDER BY 1});
cmp_ok(scalar(@relations), '>', 30, 'the catalogs list the tables and views');
@wrong = ();
for my $r (@relations)
{
	my ($name, $columns) = @$r;
	my $body = $ref_section{$name};
	push @wrong, "$name: no section" and next unless defined $body;
	my %named = map { $_ => 1 } $body =~ /`"?([a-z_0-9]+)"?`/g;
	# a view that shows "every column of [`shipsync.x`]" names x's too
	if ($body =~ /every column of\s+\[?`shipsync\.([a-z_]+)`/ && defined $ref_section{$1})
	{
		$named{$_} = 1 for $ref_section{$1} =~ /`"?([a-z_0-9]+)"?`/g;
	}
	my @missing = grep { !$named{$_} } split /,/, $columns;
	push @wrong, "$name: its section does not name column(s) " . join(', ', @missing) if @missing;
}
my %exists = (map({ $_->[0] => 1 } @relations), map({ $_->[0] => 1 } @functions));
push @wrong, "shipsync.$_: a section, but no such function, table or view"
  for grep { !$exists{$_} } sort keys %ref_section;
is(join("\n", @wrong), '',
	'docs/sql-reference.md has a section for every table and view, naming each of its columns, and none for what does not exist');

# ---------- 3. the TAP files the documentation names ----------

my @pages = ("$top/README.md", glob("$top/docs/*.md"));
my %named_tap;
for my $page (@pages)
{
	my $text = slurp_file($page);
	my $short = $page =~ s{^\Q$top\E/}{}r;
	$named_tap{$1}{$short} = 1 while $text =~ m{test/t/(\d{3})_[a-z0-9_]+\.pl}g;
	$named_tap{$1}{$short} = 1 while $text =~ /\bTAP (\d{3})\b(?! s)/g;
	while ($text =~ m{\b(test/t/\d{3}_[a-z0-9_]+\.pl)}g)
	{
		my $file = $1;
		$named_tap{$file}{$short} = 1 unless -e "$top/$file";
	}
}
my @absent;
for my $n (sort keys %named_tap)
{
	if ($n =~ m{^test/})
	{
		push @absent, "$n (named in " . join(', ', sort keys %{ $named_tap{$n} }) . ')';
		next;
	}
	my @files = glob("$top/test/t/${n}_*.pl");
	push @absent, "TAP $n (named in " . join(', ', sort keys %{ $named_tap{$n} }) . ')'
	  unless @files;
}
is(join("\n", @absent), '', 'every TAP file the documentation names exists');

# ---------- 4. links between the pages ----------

# A heading's anchor as GitHub makes it: lower case, punctuation but
# hyphens dropped, spaces to hyphens, "-1", "-2" for repeats; and the
# <a id="…"> anchors written in the text.
my %anchors;
my @linked = (@pages, "$top/test/sim/README.md");
for my $page (@linked)
{
	my $text = Encode::decode('UTF-8', slurp_file($page));
	$text =~ s/^```.*?^```//msg;
	my (%seen, %set);
	for my $h ($text =~ /^#+ (.*)$/mg)
	{
		my $slug = lc($h) =~ s/[^\w\- ]//gr =~ s/ /-/gr;
		$set{ $seen{$slug}++ ? "$slug-" . ($seen{$slug} - 1) : $slug } = 1;
	}
	$set{$_} = 1 for $text =~ /<a id="([^"]+)">/g;
	$anchors{ abs_path($page) } = \%set;
}
my @broken;
for my $page (@linked)
{
	my $text = Encode::decode('UTF-8', slurp_file($page));
	my $short = $page =~ s{^\Q$top\E/}{}r;
	while ($text =~ /\]\(([^)\s#]*)(?:#([^)\s]+))?\)/g)
	{
		my ($target, $anchor) = ($1, $2);
		next if $target =~ /^[a-z]+:/;
		my $path = $target eq '' ? $page : dirname($page) . "/$target";
		if (!-e $path)
		{
			push @broken, "$short: $target does not exist";
			next;
		}
		next unless defined $anchor && $anchors{ abs_path($path) };
		push @broken, "$short: $target#$anchor is no heading of it"
		  unless $anchors{ abs_path($path) }{$anchor};
	}
}
is(join("\n", @broken), '', 'every link between the pages leads to a page and a heading that exist');

$node->stop;
done_testing();
