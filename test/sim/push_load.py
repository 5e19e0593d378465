#!/usr/bin/env python3
"""push_load.py - signed single-event generic tracking pushes, many at once.

Sends pushes number FIRST..FIRST+COUNT-1 to the receiver of pushes
(POST /tracking/PROVIDER), each a Standard Webhooks-signed body of one
event: id "ev-N", tracking number TN_PREFIX + N % SHIPMENTS (zero-padded to
8 digits, from 1), status in_transit.  THREADS threads, each on its own
keep-alive connection, reconnecting after a connection error.  Writes one
line per push to OUT: "N STATUS", STATUS being the HTTP status or "error"
(no answer: refused, reset, closed).  With --only FILE, sends only the
pushes whose numbers FILE lists (one per line): the resend of a test.
With --until-fault EXTRA, COUNT is a budget, not a total: the pusher stops
taking new numbers once EXTRA pushes have had their outcome after the first
push that was not answered 2xx, so a test's fault always falls inside the
stream however fast the pushes go (the numbers sent are still FIRST..
FIRST+K-1 for some K, and OUT lists each of them).

    push_load.py --port P --provider trk --secret whsec_... --first 0
                 --count 1000 --threads 8 --out results.txt [--tls-ca ca.pem]

Python 3 standard library only.
"""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import queue
import ssl
import sys
import threading
import time


def signed(args, key, n):
    body = json.dumps({"events": [{
        "id": "ev-%d" % n,
        "tracking_number": "%s%08d" % (args.tn_prefix, n % args.shipments + 1),
        "status": "in_transit",
        "occurred_at": "2026-03-01T08:00:00Z"}]})
    ts = str(int(time.time()))
    mid = "msg_%d" % n
    mac = hmac.new(key, ("%s.%s.%s" % (mid, ts, body)).encode(), hashlib.sha256).digest()
    return body, {"webhook-id": mid, "webhook-timestamp": ts,
                  "webhook-signature": "v1," + base64.b64encode(mac).decode(),
                  "Content-Type": "application/json"}


def worker(args, key, todo, results, lock, fault):
    conn = None
    while True:
        with lock:
            if fault["after"] is not None and fault["after"] >= args.until_fault:
                break
        try:
            n = todo.get_nowait()
        except queue.Empty:
            break
        body, headers = signed(args, key, n)
        try:
            if conn is None:
                if args.tls_ca:
                    ctx = ssl.create_default_context(cafile=args.tls_ca)
                    conn = http.client.HTTPSConnection("127.0.0.1", args.port, timeout=60, context=ctx)
                else:
                    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=60)
            conn.request("POST", "/tracking/" + args.provider, body, headers)
            r = conn.getresponse()
            r.read()
            status = str(r.status)
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            status = "error"
            if conn is not None:
                conn.close()
            conn = None
        with lock:
            results.append((n, status))
            if fault["after"] is not None:
                fault["after"] += 1
            elif not status.startswith("2"):
                fault["after"] = 0
        if args.pause_ms:
            time.sleep(args.pause_ms / 1000.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--provider", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--only")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--shipments", type=int, default=1000)
    ap.add_argument("--tn-prefix", default="TRK")
    ap.add_argument("--pause-ms", type=int, default=0)
    ap.add_argument("--until-fault", type=int, metavar="EXTRA")
    ap.add_argument("--tls-ca")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    key = base64.b64decode(args.secret[6:] if args.secret.startswith("whsec_") else args.secret)
    todo = queue.Queue()
    if args.only:
        with open(args.only) as f:
            for line in f:
                if line.strip():
                    todo.put(int(line))
    else:
        for n in range(args.first, args.first + args.count):
            todo.put(n)
    results = []
    lock = threading.Lock()
    fault = {"after": None}
    if args.until_fault is None:
        args.until_fault = float("inf")
    threads = [threading.Thread(target=worker, args=(args, key, todo, results, lock, fault))
               for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(args.out, "w") as f:
        for n, status in sorted(results):
            f.write("%d %s\n" % (n, status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
