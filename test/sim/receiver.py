#!/usr/bin/env python3
"""receiver.py - the small webhook endpoint of the tracking tests.

It is what a shop puts in front of shipsync.ingest_tracking() (or, with
--function ingest_fees, shipsync.ingest_fees()): every POST it receives is
handed, raw body and headers, to that function through one psql session,
and the outcome becomes the HTTP answer (200, 401 for SQLSTATE SS401, 400
for SS400, 500 otherwise).  Unsigned dialects (SF
route pushes) must be authenticated by the endpoint itself: here, a push
carrying X-Forged is refused before the database sees it.

    receiver.py --provider NAME --psql /path/to/psql --dsn "host=... port=..."
                --port-file FILE [--function ingest_tracking|ingest_fees]

Python 3 standard library only; listens on 127.0.0.1.
"""

import argparse
import base64
import http.server
import json
import os
import signal
import subprocess
import sys
import threading

RECEIVE_FN = r"""
CREATE FUNCTION pg_temp.receive(provider text, body text, headers jsonb) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM shipsync.INGEST_FUNCTION(provider, body, headers);
	RETURN '200';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE;
END
$$;
"""


class Database:
    """One psql process, one statement and one answer line at a time."""

    def __init__(self, psql, dsn, function="ingest_tracking"):
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=0", "-d", dsn],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, encoding="utf-8", bufsize=1)
        self.proc.stdin.write(RECEIVE_FN.replace("INGEST_FUNCTION", function))
        self.proc.stdin.write("SET client_min_messages = error;\n")
        self.proc.stdin.flush()

    def receive(self, provider, body, headers):
        sql = "SELECT pg_temp.receive(%s, convert_from(decode('%s', 'base64'), 'UTF8'), %s::jsonb);\n" % (
            quote_literal(provider), base64.b64encode(body).decode(),
            quote_literal(json.dumps(headers)))
        with self.lock:
            self.proc.stdin.write(sql)
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("psql went away")
        return line.strip()


def quote_literal(s):
    return "'" + s.replace("'", "''") + "'"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.headers.get("X-Forged"):
            code = "SS401"      # the endpoint's own check of unsigned pushes
        else:
            headers = {k: v for k, v in self.headers.items()}
            code = self.server.db.receive(self.server.provider, body, headers)
        status = {"200": 200, "SS401": 401, "SS400": 400}.get(code, 500)
        with self.server.count_lock:
            self.server.counts[code] = self.server.counts.get(code, 0) + 1
        answer = json.dumps({"result": code}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self):
        with self.server.count_lock:
            answer = json.dumps(self.server.counts).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", required=True)
    ap.add_argument("--psql", required=True)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--function", default="ingest_tracking",
                    choices=("ingest_tracking", "ingest_fees"))
    args = ap.parse_args()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.db = Database(args.psql, args.dsn, args.function)
    server.provider = args.provider
    server.counts = {}
    server.count_lock = threading.Lock()
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as fh:
        fh.write("%d\n" % server.server_address[1])
    os.replace(tmp, args.port_file)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    t.start()
    while not stop.wait(0.5):
        if server.db.proc.poll() is not None:
            print("receiver: psql exited", file=sys.stderr)
            break
    server.shutdown()
    server.db.proc.stdin.close()
    server.db.proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
