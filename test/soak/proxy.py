"""proxy.py - a TCP proxy that drops, delays and cuts, for the soak.

It listens on 127.0.0.1 (a port the kernel picks) and forwards every
connection to one upstream port on 127.0.0.1, byte for byte, knowing just
enough HTTP/1.1 to tell where a request starts and how long an answer is.
When a request starts (data from the client beginning with a method name),
it rolls the dice against the rates in force:

  drop   the request is swallowed: nothing reaches the carrier, nothing
         comes back, the connection stays open until the client gives up
         (curl's timeout, error class timeout);
  delay  the request is held for delay_ms (a random value in the range)
         before it is forwarded, which may be longer than the client waits:
         then the carrier gets a request whose sender has gone;
  cut    the connection is cut half way, on either way at random: half
         of the request's first bytes reach the carrier, then both sockets
         are reset (the carrier records nothing; the client sees a reset);
         or the request is forwarded and the answer is cut half way: half
         of its bytes (headers and body, by Content-Length), then a TCP
         RST (the carrier has recorded the request; the client has no
         answer).

Standard library only.  Each connection is served by two threads (one per
direction); all of them are daemons, and stop() closes every socket.
"""

import random
import re
import socket
import struct
import threading
import time

REQUEST_START = re.compile(rb"^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) ")
KINDS = ("drop", "delay", "cut")


def _rst(sock):
    """Close with a TCP RST rather than a FIN.  SO_LINGER 0 makes the
    socket's release send the RST; shutdown(SHUT_RD) wakes the other thread
    of the connection if it waits in recv() on this socket, so that the
    release happens now (close() alone leaves the socket alive under that
    recv(): no RST, and the peer waits)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    _close(sock, graceful=False)


def _close(sock, graceful=True):
    """Close a socket, with a FIN to the peer when graceful.  shutdown()
    first: another thread may wait in recv() on it, and close() alone would
    leave the connection open under that recv() -- the carrier simulator
    then kept one descriptor per connection the proxy ever closed, and at
    its limit (1,024) stopped accepting any."""
    try:
        if graceful:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _answer_length(buf):
    """Length in bytes of the HTTP answer at the start of buf, or None when
    its headers are not complete yet (or it has no Content-Length)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", buf[:end], re.IGNORECASE)
    return end + 4 + int(m.group(1)) if m else end + 4


class _Conn:
    """One proxied connection: the client's socket, the carrier's, and the
    fault chosen for the request in progress."""

    def __init__(self, proxy, client, upstream):
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.swallow = False        # drop: eat everything from now on
        self.cut_next = False       # cut: the next answer is cut half way
        self.closed = False
        self.lock = threading.Lock()

    def close(self, rst=False):
        """Close both sockets, with a FIN, or with an RST each when rst.
        The first call wins: the other direction's thread, woken by it,
        calls again."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
        end = _rst if rst else _close
        end(self.client)
        end(self.upstream)
        self.proxy._forget(self)

    def client_to_upstream(self):
        """Forward requests, rolling a fault for each one that starts."""
        try:
            while True:
                data = self.client.recv(65536)
                if not data:
                    break
                if self.swallow:
                    continue
                if REQUEST_START.match(data):
                    fault, arg = self.proxy._roll()
                    if fault == "drop":
                        self.swallow = True
                        continue
                    if fault == "delay":
                        time.sleep(arg)
                    elif fault == "cut" and arg < 0:
                        self.upstream.sendall(data[:max(1, len(data) // 2)])
                        self.close(rst=True)
                        return
                    elif fault == "cut":
                        self.cut_next = True
                self.upstream.sendall(data)
        except OSError:
            pass
        self.close()

    def upstream_to_client(self):
        """Forward answers, cutting the one a cut fault asked for."""
        try:
            while True:
                data = self.upstream.recv(65536)
                if not data:
                    break
                if not self.cut_next:
                    self.client.sendall(data)
                    continue
                # Collect the answer's head, then send half of the answer.
                buf = data
                total = _answer_length(buf)
                while total is None and len(buf) < 65536:
                    more = self.upstream.recv(65536)
                    if not more:
                        break
                    buf += more
                    total = _answer_length(buf)
                half = max(1, (total or len(buf)) // 2)
                while len(buf) < half:
                    more = self.upstream.recv(65536)
                    if not more:
                        break
                    buf += more
                self.client.sendall(buf[:half])
                self.close(rst=True)
                return
        except OSError:
            pass
        self.close()


class FaultProxy:
    """The proxy: start(), set_rates(), counts, stop()."""

    def __init__(self, upstream_port, seed=None):
        self.upstream_port = upstream_port
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.rates = {k: 0.0 for k in KINDS}
        self.delay_ms = (200, 3000)
        self.counts = {k: 0 for k in KINDS}
        self.connections = 0
        self.conns = set()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self.stopping = False

    def set_rates(self, drop=0.0, delay=0.0, cut=0.0, delay_ms=None):
        """The probability of each fault per request, from now on."""
        with self.lock:
            self.rates = {"drop": drop, "delay": delay, "cut": cut}
            if delay_ms is not None:
                self.delay_ms = delay_ms

    def _roll(self):
        """(fault or None, its argument) for a request that starts: for a
        delay the seconds to hold it, for a cut -1 when the request is cut
        (else its answer)."""
        with self.lock:
            x = self.rng.random()
            for kind in KINDS:
                if x < self.rates[kind]:
                    self.counts[kind] += 1
                    if kind == "cut":
                        return kind, self.rng.choice((-1, 1))
                    return kind, self.rng.uniform(*self.delay_ms) / 1000.0
                x -= self.rates[kind]
            return None, 0.0

    def _forget(self, conn):
        with self.lock:
            self.conns.discard(conn)

    def start(self):
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()
        return self

    def _accept(self):
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _rst(client)
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(self, client, upstream)
            with self.lock:
                self.connections += 1
                self.conns.add(conn)
            threading.Thread(target=conn.client_to_upstream, daemon=True).start()
            threading.Thread(target=conn.upstream_to_client, daemon=True).start()

    def stop(self):
        self.stopping = True
        _close(self.listener)
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            conn.close()


# --- a self-test, run by the soak before it starts ---------------------------

class _Upstream:
    """A small HTTP upstream for the self-test: answers every request it
    reads with 100 bytes of body, counts requests and live connections."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100

    def __init__(self):
        self.lock = threading.Lock()
        self.live = 0
        self.requests = 0
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.live += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                if b"\r\n\r\n" in data:
                    with self.lock:
                        self.requests += 1
                    conn.sendall(self.ANSWER)
        except OSError:
            pass
        _close(conn)
        with self.lock:
            self.live -= 1


def _exchange(port, timeout):
    """One request through the proxy: what came back (bytes) and how it
    ended: 'open' (nothing more within timeout), 'eof' or 'reset'."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(timeout)
    got, end = b"", "open"
    try:
        s.sendall(b"POST /shipments HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
        while True:
            data = s.recv(65536)
            if not data:
                end = "eof"
                break
            got += data
            if len(got) >= len(_Upstream.ANSWER):
                break
    except socket.timeout:
        pass
    except ConnectionResetError:
        end = "reset"
    _close(s)
    return got, end


def selftest():
    """What the soak relies on, against an upstream of our own; a list of
    problems, empty when right: a request passes whole; every connection
    a client closes is closed at the carrier too (else the carrier keeps a
    descriptor per connection and at its limit accepts none); a cut ends in
    a reset at once, with half an answer or none and the carrier's
    connection gone; a dropped request never reaches the carrier."""
    up = _Upstream()
    proxy = FaultProxy(up.port, seed=1).start()
    problems = []

    def settle(what):
        deadline = time.monotonic() + 5
        while up.live and time.monotonic() < deadline:
            time.sleep(0.02)
        if up.live:
            problems.append("%s: %d connections left open at the carrier" % (what, up.live))

    try:
        for _ in range(20):
            got, _ = _exchange(proxy.port, 5)
            if got != _Upstream.ANSWER:
                problems.append("a plain request came back as %r" % got[:40])
                break
        settle("closed by the client")
        proxy.set_rates(cut=1.0)
        ends = [_exchange(proxy.port, 5) for _ in range(20)]
        if any(end != "reset" or len(got) >= len(_Upstream.ANSWER) for got, end in ends):
            problems.append("cut: %s" % sorted(set((len(g), e) for g, e in ends)))
        settle("cut")
        proxy.set_rates(drop=1.0)
        before = up.requests
        got, end = _exchange(proxy.port, 0.5)
        if got or end != "open" or up.requests != before:
            problems.append("drop: %d bytes back, %s, %d requests at the carrier"
                            % (len(got), end, up.requests - before))
        settle("dropped")
    finally:
        proxy.stop()
        _close(up.listener)
    return problems


if __name__ == "__main__":
    import sys
    found = selftest()
    print("\n".join(found) if found else "proxy selftest: ok")
    sys.exit(1 if found else 0)
