# Shared by bin/demo, bin/test and test/bench/run: packages, build, the
# unprivileged user that runs PostgreSQL.  Sourced, not executed.

SHIPSYNC_PACKAGES="postgresql-15 postgresql-server-dev-15 postgresql-client-15 \
libcurl4-openssl-dev libjson-c-dev libssl-dev libmicrohttpd-dev ca-certificates pkg-config \
make gcc libipc-run-perl python3"
# test/sanitize/run: clang-16's ASan runtime is the one that works inside
# the server (gcc-12's and clang-14's hang it at start); valgrind for the
# dispatcher; llvm-16 for llvm-symbolizer-16, which gives ASan reports their
# files and lines
SHIPSYNC_SANITIZE_PACKAGES="clang-16 libclang-rt-16-dev llvm-16 valgrind"
SHIPSYNC_TEST_USER=${SHIPSYNC_TEST_USER:-pgshipsync}

say() { printf '%s\n' "$*" >&2; }

# ensure_packages PKG...: install what is missing (root), or print the
# command and fail (not root).  apt-get update once, only when needed.
ensure_packages() {
	local missing=() p
	for p in "$@"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		say "missing Debian packages; install them with:"
		say "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
		return 1
	fi
	say "installing ${missing[*]} ..."
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null || return 1
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || return 1
}

pg_bindir() { echo "$(pg_config --bindir)"; }

# build_and_install SRC: compile with warnings as errors and install into
# PostgreSQL's directories (root), or check it is installed (not root).
build_and_install() {
	local src=$1
	make -s -C "$src" with_llvm=no COPT="-Wall -Wextra -Werror" >/dev/null || return 1
	if [ "$(id -u)" -eq 0 ]; then
		make -s -C "$src" with_llvm=no install >/dev/null || return 1
	elif ! cmp -s "$src/pg_shipsync.so" "$(pg_config --pkglibdir)/pg_shipsync.so"; then
		say "pg_shipsync is built but not installed; run:  sudo make -C $src with_llvm=no install"
		return 1
	fi
}

# ensure_test_user: the unprivileged account that owns throwaway clusters
# (initdb refuses root).  Prints the user to run as.
ensure_test_user() {
	if [ "$(id -u)" -ne 0 ]; then
		id -un
		return 0
	fi
	id "$SHIPSYNC_TEST_USER" >/dev/null 2>&1 ||
		useradd --system --create-home --shell /bin/bash "$SHIPSYNC_TEST_USER" || return 1
	echo "$SHIPSYNC_TEST_USER"
}

# as_user USER CMD...: run a command as USER (directly when we are USER).
as_user() {
	local u=$1
	shift
	if [ "$(id -un)" = "$u" ]; then
		"$@"
	else
		runuser -u "$u" -- "$@"
	fi
}

# copy_tree SRC USER: a private copy of the tree owned by USER, for the
# tests' scratch files; prints its path.
copy_tree() {
	local src=$1 u=$2 dst
	dst=$(mktemp -d /tmp/pg_shipsync.XXXXXX) || return 1
	tar -C "$src" --exclude=.git --exclude='tmp_check*' --exclude=results -cf - . | tar -C "$dst" -xf - || return 1
	chown -R "$u" "$dst"
	echo "$dst"
}
