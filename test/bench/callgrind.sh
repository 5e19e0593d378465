# Shared by test/bench/capture-instructions and statement-instructions:
# a throwaway cluster holding the benchmark's crm.orders (attached, its
# provider paused), stopped and copied afresh for every single-user backend
# run under callgrind.  Sourced after bin/lib.sh, not executed.

# cg_setup NAME ARGS...: parse --keep DIR, --only NAME (repeatable) and
# --icu LOCALE, build and install the extension, and start a cluster in
# $work/snap (fsync off) with database bench: its collation is the
# environment's locale, or with --icu the ICU locale named (en-US: text
# compared as most servers compare it).  Sets keep, only, user, work,
# bindir and collation (what the cluster compares text with, for the
# report); stops and removes it all at exit.
cg_setup() {
	local name=$1
	shift
	keep=
	only=
	local icu=()
	collation="the environment's locale (${LC_ALL:-${LC_COLLATE:-${LANG:-C}}})"
	while [ $# -gt 0 ]; do
		case $1 in
		--keep) keep=${2:-}; shift ;;
		--only) only="$only ${2:-}"; shift ;;
		--icu) icu=(--locale-provider=icu "--icu-locale=${2:-}"); collation="ICU ${2:-}"; shift ;;
		*) echo "usage: $0 [--keep DIR] [--icu LOCALE] [--only NAME]..." >&2; exit 2 ;;
		esac
		shift
	done
	ensure_packages $SHIPSYNC_PACKAGES valgrind || exit 1
	build_and_install "$top" || exit 1
	user=$(ensure_test_user) || exit 1
	work=$(mktemp -d "/tmp/shipsync-$name.XXXXXX")
	chown "$user" "$work"
	bindir=$(pg_config --bindir)
	trap cg_cleanup EXIT
	as_user "$user" "$bindir/initdb" -D "$work/snap" -A trust -U postgres "${icu[@]}" >/dev/null || exit 1
	cat >>"$work/snap/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$work'
shared_preload_libraries = 'pg_shipsync'
shipsync.databases = 'bench'
shipsync.allowed_hosts = '127.0.0.1'
shared_buffers = 256MB
max_wal_size = 4GB
fsync = off
shipsync.reconcile_interval = 0
shipsync.reconcile_at = ''
EOF
	as_user "$user" "$bindir/pg_ctl" -D "$work/snap" -l "$work/pg.log" -w start >/dev/null || exit 1
	"$bindir/createdb" -h "$work" -U postgres bench || exit 1
	cg_psql <<'EOF' || exit 1
CREATE EXTENSION pg_shipsync;
CREATE SCHEMA crm;
CREATE TABLE crm.orders (
	id bigserial PRIMARY KEY, receiver_name text, receiver_phone text,
	receiver_address text, amount numeric(10,2),
	created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	waybill_no text, ship_status text, fee numeric(10,2), shipped_at timestamptz);
SELECT shipsync.create_provider('nginx', 'generic', 'http://127.0.0.1:9',
	'{"max_inflight": 256, "timeout_ms": 10000}');
SELECT shipsync.pause('nginx');
SELECT shipsync.attach('crm.orders', 'nginx', writeback =>
	'{"tracking_number": "waybill_no", "status": "ship_status", "fee_total": "fee"}');
EOF
}

cg_cleanup() {
	[ -f "$work/snap/postmaster.pid" ] && as_user "$user" "$bindir/pg_ctl" -D "$work/snap" -m fast -w stop >/dev/null 2>&1
	rm -rf "$work"
}

# SQL on stdin, in database bench of the running cluster
cg_psql() { "$bindir/psql" -X -qAt -v ON_ERROR_STOP=1 -h "$work" -U postgres bench >/dev/null; }

cg_stop() { as_user "$user" "$bindir/pg_ctl" -D "$work/snap" -m fast -w stop >/dev/null; }

# cg_run NAME INPUT: the instructions of a single-user backend reading
# INPUT, on a fresh copy of the stopped cluster; callgrind's file is
# $work/cg.NAME (copied into $keep, if set).  Fails on an ERROR.
cg_run() {
	local out=$work/cg.$1
	rm -rf "$work/data"
	cp -a "$work/snap" "$work/data"
	as_user "$user" valgrind --tool=callgrind --callgrind-out-file="$out" \
		"$bindir/postgres" --single -D "$work/data" bench <"$2" >"$work/out.log" 2>"$work/vg.log" || {
		say "callgrind failed: $(tail -3 "$work/vg.log")"
		return 1
	}
	# a single-user backend writes its errors to stderr, with valgrind's own
	# lines: a statement that failed must not be counted as one that ran
	if grep -q ERROR "$work/out.log" "$work/vg.log"; then
		say "$1 failed: $(grep -h -m1 -A2 ERROR "$work/out.log" "$work/vg.log" | cut -c1-500)"
		return 1
	fi
	[ -n "$keep" ] && mkdir -p "$keep" && cp "$out" "$keep/"
	sed -n 's/^totals: *//p' "$out" | awk '{print $1}'
}
