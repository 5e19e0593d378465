"""chaos.py - the soak's faults, at random, while orders flow.

A deck of every fault kind is shuffled and dealt one card at a time, a
random gap apart, so that a short run still meets every kind and a long one
meets each many times in a different order.  A kind is one of

  process  kill9 (the dispatcher, SIGKILL: the postmaster restarts every
           backend), immediate (pg_ctl stop -m immediate, then start);
  provider pause (shipsync.pause(), shipsync.resume() a few seconds later);
  carrier  a fault rule of the carrier simulator (test/sim/carrier_sim.py)
           for a few seconds: 500, 429 with Retry-After, slow (beyond the
           provider's timeout, and within it), reset after recording, hostile bodies (a
           10 KB tracking number, a NUL in it, bytes that are not UTF-8)
           and a 10 MB body;
  network  a fault rate of the TCP proxy (proxy.py) in front of carrier b
           for a few seconds: drop, delay, cut half way
           (the request or the answer).

Process faults come in the first two thirds of the run only: the last
third is a long night for one dispatcher, through every other fault, so
that its memory can be judged over minutes rather than between restarts.

Windows may overlap: a simulator gets the rules of every window open on it,
the proxy the sum of the rates.  How often each fault actually hit is read
at the end from the simulators (faults_injected, by rule name = kind) and
the proxy (its counts); process and provider faults count the events.
"""

import json
import os
import random
import signal
import threading
import time
import urllib.request

PROCESS_KINDS = ("kill9", "immediate")
PROXY_KINDS = ("proxy_drop", "proxy_delay", "proxy_cut")


def carrier_rules(timeout_ms):
    """The simulator rules of each carrier fault kind, named by the kind
    (a dict, or a list of them).  Slow answers come beyond the provider's
    timeout (in doubt: the carrier recorded what the client gave up on) and
    within it.  Hostile bodies and the 10 MB body hit at most two creates
    per window: each costs an order (a bad answer is permanent), so they
    stay few."""
    create = "^/shipments$"
    return {
        "http500": {"fault": "status", "status": 500, "rate": 0.5},
        "http429": {"fault": "status", "status": 429, "retry_after": "1", "rate": 0.3},
        "slow": [{"fault": "slow", "ms": timeout_ms + 1000, "rate": 0.15},
                 {"fault": "slow", "ms": timeout_ms // 2, "rate": 0.15}],
        "reset_after": {"fault": "reset_after", "rate": 0.3},
        "hostile_long": {"fault": "hostile", "kind": "long", "bytes": 10240,
                         "path": create, "count": 2},
        "hostile_nul": {"fault": "hostile", "kind": "nul", "path": create, "count": 2},
        "hostile_utf8": {"fault": "hostile", "kind": "bad_utf8", "path": create, "count": 2},
        "body_10mb": {"fault": "oversized", "bytes": 10 * 1024 * 1024, "path": create,
                      "count": 2},
    }


PROXY_RATES = {"proxy_drop": 0.2, "proxy_delay": 0.5, "proxy_cut": 0.3}


def sim_call(url, path, data=None, timeout=30):
    """GET (data None) or POST JSON to a simulator's control API."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url + path, data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


class Chaos(threading.Thread):
    """Deals faults until stop() is called; then closes every window."""

    def __init__(self, cluster, sims, proxy, providers, timeout_ms, seed, gap_s, calm_at, log):
        super().__init__(name="chaos", daemon=True)
        self.calm_at = calm_at            # monotonic time: no process fault after it
        self.cluster = cluster
        self.sims = sims                  # provider name -> simulator URL
        self.proxy = proxy
        self.providers = providers        # provider names
        self.rules = carrier_rules(timeout_ms)
        self.kinds = list(PROCESS_KINDS) + ["pause"] + list(self.rules) + list(PROXY_KINDS)
        self.rng = random.Random(seed)
        self.gap_s = gap_s
        self.log = log
        self.stopping = threading.Event()
        self.lock = threading.Lock()      # the cluster is restarted under it
        self.events = {k: 0 for k in PROCESS_KINDS + ("pause",)}
        self.windows = []                 # (end, kind, target)
        self.restarts = 0
        self.errors = []

    # --- windows ------------------------------------------------------------

    def _apply_sim_rules(self, target):
        rules = []
        for _, k, t in self.windows:
            if t == target and k in self.rules:
                specs = self.rules[k] if isinstance(self.rules[k], list) else [self.rules[k]]
                rules += [dict(r, name=k) for r in specs]
        sim_call(self.sims[target], "/_sim/faults", {"rules": rules})

    def _apply_proxy(self):
        rates = {k: 0.0 for k in PROXY_KINDS}
        for _, k, _ in self.windows:
            if k in rates:
                rates[k] = min(1.0, rates[k] + PROXY_RATES[k])
        total = sum(rates.values())
        if total > 1.0:
            rates = {k: v / total for k, v in rates.items()}
        self.proxy.set_rates(drop=rates["proxy_drop"], delay=rates["proxy_delay"],
                             cut=rates["proxy_cut"])

    def _open(self, kind, target, seconds):
        self.windows.append((time.monotonic() + seconds, kind, target))
        self._apply(kind, target, opening=True)

    def _apply(self, kind, target, opening):
        if kind in self.rules:
            self._apply_sim_rules(target)
        elif kind in PROXY_KINDS:
            self._apply_proxy()
        elif kind == "pause":
            verb = "pause" if opening else "resume"
            self._sql("SELECT shipsync.%s('%s')" % (verb, target))

    def _close_due(self, now, everything=False):
        due = [w for w in self.windows if everything or w[0] <= now]
        for w in due:
            self.windows.remove(w)
            self._apply(w[1], w[2], opening=False)

    def _sql(self, sql):
        """Run SQL, retried while the server restarts (a resume must land)."""
        deadline = time.monotonic() + 120
        while True:
            try:
                with self.lock:
                    return self.cluster.value(sql)
            except Exception as exc:            # the server may be restarting
                if time.monotonic() > deadline:
                    raise RuntimeError("%s: %s" % (sql, exc))
                time.sleep(0.5)

    # --- process faults ---------------------------------------------------

    def _wait_new_dispatcher(self, old):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pids = self.cluster.dispatcher_pids()
            if pids and not set(pids) & set(old):
                return True
            time.sleep(0.2)
        raise RuntimeError("no new dispatcher within 120 s after a restart")

    def _kill9(self):
        old = self.cluster.dispatcher_pids()
        if not old:
            return False
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        self.log("chaos: kill -9 of dispatcher %s" % old)
        self._wait_new_dispatcher(old)
        return True

    def _immediate(self):
        old = self.cluster.dispatcher_pids()
        with self.lock:
            if not self.cluster.stop("immediate"):
                raise RuntimeError("pg_ctl stop -m immediate failed")
            self.log("chaos: server stopped (immediate)")
            time.sleep(self.rng.uniform(0, 2))
            self.cluster.start()
        self._wait_new_dispatcher(old)
        return True

    # --- the loop -------------------------------------------------------------

    def _deal(self, kind):
        if kind in PROCESS_KINDS:
            if (self._kill9() if kind == "kill9" else self._immediate()):
                self.events[kind] += 1
                self.restarts += 1
            return
        if kind == "pause":
            target = self.rng.choice(self.providers)
            self.events["pause"] += 1
            self._open(kind, target, self.rng.uniform(2, 8))
        elif kind in self.rules:
            self._open(kind, self.rng.choice(self.providers), self.rng.uniform(3, 12))
        else:
            self._open(kind, "proxy", self.rng.uniform(3, 12))
        self.log("chaos: %s on %s" % (kind, self.windows[-1][2]))

    def _shuffled(self, first):
        """A deck of every kind once, shuffled; dealt from its end.  In the
        first deck the process faults are among the first half of the cards,
        so that even a short run, on a loaded machine where a restart takes
        long, deals each of them before the calm third (a process card
        drawn in the calm is put aside, not dealt)."""
        deck = list(self.kinds)
        self.rng.shuffle(deck)
        if first:
            procs = [k for k in deck if k in PROCESS_KINDS]
            rest = [k for k in deck if k not in PROCESS_KINDS]
            early = rest[len(rest) // 2:] + procs
            self.rng.shuffle(early)
            deck = rest[:len(rest) // 2] + early
        return deck

    def run(self):
        deck = []
        dealt = 0
        next_at = time.monotonic() + self.rng.uniform(1, self.gap_s)
        try:
            while not self.stopping.is_set():
                now = time.monotonic()
                self._close_due(now)
                if now >= next_at:
                    if not deck:
                        deck = self._shuffled(first=dealt == 0)
                    kind = deck.pop()
                    dealt += 1
                    if kind in PROCESS_KINDS and now >= self.calm_at:
                        continue
                    self._deal(kind)
                    next_at = time.monotonic() + self.rng.uniform(0.5, 1.5) * self.gap_s
                self.stopping.wait(0.2)
        except Exception as exc:          # reported by the checks, never hidden
            self.errors.append("chaos: %s" % exc)
        finally:
            try:
                self._close_due(0, everything=True)
                if not self.cluster.started:
                    self.cluster.start()
            except Exception as exc:
                self.errors.append("chaos, closing its windows: %s" % exc)

    def stop(self):
        self.stopping.set()
        self.join()

    def hits(self, out):
        """How often each kind hit (events, simulator hits, proxy hits), into
        out, which it returns."""
        out.update((k, 0) for k in self.kinds)
        out.update((k, n) for k, n in self.events.items() if k in out)
        for url in self.sims.values():
            for k, n in sim_call(url, "/_sim/stats")["faults_injected"].items():
                out[k] = out.get(k, 0) + n
        for k, n in self.proxy.counts.items():
            if "proxy_" + k in out:
                out["proxy_" + k] += n
        return out
