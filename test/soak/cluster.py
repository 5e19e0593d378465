"""cluster.py - the soak's throwaway PostgreSQL cluster.

initdb into a directory of our own, a Unix socket in that directory and no
TCP port, pg_shipsync preloaded; start, stop (fast or immediate), psql, and
the dispatcher's process found under the postmaster in /proc.  Runs as the
user who owns the directory (initdb refuses root).  Nothing here kills by
name: the postmaster's PID comes from its postmaster.pid, the dispatcher's
is a child of that PID.
"""

import os
import subprocess
import time

DB = "soak"


class ClusterError(Exception):
    pass


class Cluster:
    def __init__(self, bindir, root, conf_lines):
        self.bindir = bindir
        self.root = root
        self.data = os.path.join(root, "data")
        self.log = os.path.join(root, "postgresql.log")
        self.port = 5432            # names the socket file in our directory only
        self.conf_lines = conf_lines
        self.started = False

    def _run(self, *args, timeout=120):
        return subprocess.run([os.path.join(self.bindir, args[0])] + list(args[1:]),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False)

    def init(self):
        r = self._run("initdb", "-D", self.data, "-A", "trust", "-E", "UTF8",
                      "--locale=C.UTF-8", "--no-sync")
        if r.returncode != 0:
            raise ClusterError("initdb failed:\n" + r.stdout.decode(errors="replace"))
        with open(os.path.join(self.data, "postgresql.conf"), "a") as fh:
            fh.write("\n# --- test/soak ---\n")
            fh.write("listen_addresses = ''\n")
            fh.write("unix_socket_directories = '%s'\n" % self.root)
            fh.write("port = %d\n" % self.port)
            for line in self.conf_lines:
                fh.write(line + "\n")

    def start(self):
        r = self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "120", "start",
                      timeout=150)
        if r.returncode != 0:
            raise ClusterError("pg_ctl start failed:\n" + r.stdout.decode(errors="replace")
                               + self.log_tail())
        self.started = True

    def stop(self, mode="fast"):
        """Stop the server; returns whether pg_ctl said it stopped."""
        r = self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop",
                      timeout=90)
        if r.returncode == 0:
            self.started = False
        return r.returncode == 0

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as fh:
                return int(fh.readline())
        except (OSError, ValueError):
            return None

    def shutdown(self):
        """Stop whatever runs, by PID as a last resort; never raises."""
        if not self.started and self.postmaster_pid() is None:
            return
        if self.stop("fast") or self.stop("immediate"):
            return
        pid = self.postmaster_pid()
        if pid:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        self.started = False

    def log_tail(self, lines=30):
        try:
            with open(self.log, errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""

    def psql(self, sql, db=DB, timeout=120):
        """Run SQL, return its unaligned output ('|' between fields)."""
        r = subprocess.run(
            [os.path.join(self.bindir, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.root, "-p", str(self.port), "-d", db, "-c", sql],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, check=False)
        if r.returncode != 0:
            raise ClusterError(r.stderr.decode(errors="replace").strip() or "psql failed")
        return r.stdout.decode()

    def rows(self, sql, db=DB):
        """SQL's rows as lists of strings (fields separated by '|')."""
        out = self.psql(sql, db)
        return [line.split("|") for line in out.splitlines() if line]

    def value(self, sql, db=DB):
        return self.psql(sql, db).strip()

    def dispatcher_pids(self):
        """PIDs of the postmaster's children titled as a pg_shipsync dispatcher."""
        pm = self.postmaster_pid()
        found = []
        if pm is None:
            return found
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % name) as fh:
                    stat = fh.read()
                ppid = int(stat[stat.rindex(")") + 2:].split()[1])
                if ppid != pm:
                    continue
                with open("/proc/%s/cmdline" % name, "rb") as fh:
                    title = fh.read()
            except (OSError, ValueError):
                continue
            if b"pg_shipsync dispatcher" in title:
                found.append(int(name))
        return found

    def wait_ready(self, timeout=120):
        """Wait until the server answers queries (after a crash restart)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.value("SELECT 1")
                return True
            except (ClusterError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.2)


def rss_anon_kb(pid):
    """RssAnon of a process in kB (its private memory), or None if gone."""
    try:
        with open("/proc/%d/status" % pid) as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def process_start(pid):
    """The process's start time in clock ticks since boot (identifies it
    together with its PID), or None if gone."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            stat = fh.read()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError):
        return None
