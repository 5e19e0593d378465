#!/usr/bin/env python3
"""carrier_sim.py - a logistics-carrier HTTP simulator for pg_shipsync tests.

It implements the generic carrier contract that pg_shipsync speaks (create,
update, cancel, and read shipments, all protected by an Idempotency-Key
ledger). It also has an inspection API under /_sim/ and a set of fault rules
that can make requests fail in controlled, reproducible ways: error statuses,
slow answers, TCP resets, closed connections, malformed or oversized bodies.

Python 3 standard library only. See README.md in this directory for the
contract and the fault rule format. Run with --selftest for a quick check.

Usage:
    python3 carrier_sim.py --port 0 --port-file /tmp/x.port [--host 127.0.0.1]
                           [--faults JSON-or-@file] [--token T] [--seed N]
                           [--require-header NAME:VALUE] [--latency-ms N] [--log FILE]
    python3 carrier_sim.py --selftest
"""

import argparse
import base64
import binascii
import faulthandler
import gc
import gzip
import hashlib
import hmac
import http.client
import http.server
import json
import os
import random
import re
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

import pusher                          # tracking timelines and pushes (pusher.py)
import fee_sim    # billing: fee pushes, fee pulls, the monthly statement
import sf_sim     # the SF Express dialect: /sf/std/service and /_sim/sf/
import track_sim  # tracking registrations: /v2/trackers, /trackings, /poll

LISTEN_HOST = "127.0.0.1"              # the only address we ever bind
DEFAULT_OVERSIZED_BYTES = 8 * 1024 * 1024
DEFAULT_BIG_HEADER_BYTES = 200 * 1024  # twice libcurl's limit of a header line
MAX_BODY_BYTES = 64 * 1024 * 1024      # refuse request bodies above this

FAULT_TYPES = ("status", "slow", "reset_before", "reset_after",
               "malformed", "oversized", "big_header", "close", "hostile",
               # faults of the carrier's own records (reconciliation):
               "forget",      # a create is answered 201, then forgotten
               "duplicate")   # a create records a second shipment too
# What a hostile answer puts into one field of a good answer.
HOSTILE_KINDS = ("long", "nul", "bad_utf8", "huge_number", "text", "json")
# Fields every rule may carry, and the extra fields of each fault type.
COMMON_RULE_FIELDS = {"fault", "name", "rate", "first_attempts",
                      "match_order_ref", "path", "method", "count"}
FAULT_FIELDS = {
    "status": {"status", "retry_after", "reset_header", "location", "body", "body_base64",
               "content_type", "content_encoding"},
    "slow": {"ms", "held"},
    "oversized": {"bytes"},
    "big_header": {"bytes"},
    "hostile": {"field", "kind", "bytes", "text"},
}

# The fee list of every new shipment. One amount is a JSON string and the
# other a number on purpose: real carriers are that inconsistent.
FEES = [
    {"type": "freight", "amount": "12.50", "currency": "CNY"},
    {"type": "insurance", "amount": 1.2, "currency": "CNY"},
]

LIST_DEFAULT_LIMIT = 100               # GET /shipments: page size asked by default
LIST_MAX_LIMIT = 1000                  # ... and the most we hand out per page
LIST_SNAPSHOTS = 16                    # listings kept for their cursors

# Routes of the carrier API: /shipments/{id}, /shipments/{id}/cancel, ...
_SHIPMENT_PATH = re.compile(r"^/shipments/([^/]+)(/cancel|/events|/fees)?$")
_NOT_JSON = object()   # stands for "the body did not parse as JSON"
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)$")


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def dumps(obj):
    """Serialize to compact UTF-8 JSON bytes (the only encoder we use)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def utc_now():
    """Current time as an RFC 3339 UTC timestamp with milliseconds."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def parse_json(body):
    """Parse a request body, returning _NOT_JSON if it is not valid JSON."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):   # includes UnicodeDecodeError
        return _NOT_JSON


def error_body(message):
    return dumps({"error": message})


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------
# Fault rules
# --------------------------------------------------------------------------

class ConfigError(ValueError):
    """An invalid fault configuration."""


class FaultRule:
    """One validated fault rule; `spec` is the rule as the user wrote it."""

    def __init__(self, spec, index):
        where = "rule %d" % index
        if not isinstance(spec, dict):
            raise ConfigError("%s: must be a JSON object" % where)
        fault = spec.get("fault")
        if fault not in FAULT_TYPES:
            raise ConfigError("%s: 'fault' must be one of %s"
                              % (where, ", ".join(FAULT_TYPES)))
        allowed = COMMON_RULE_FIELDS | FAULT_FIELDS.get(fault, set())
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ConfigError("%s: unknown field(s) for fault '%s': %s"
                              % (where, fault, ", ".join(unknown)))

        self.spec = spec
        self.fault = fault
        self.name = spec.get("name", fault)
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("%s: 'name' must be a non-empty string" % where)

        # Matching conditions.
        self.rate = spec.get("rate", 1)
        if not is_number(self.rate) or not 0 <= self.rate <= 1:
            raise ConfigError("%s: 'rate' must be a number in 0..1" % where)
        self.first_attempts = self._optional_int(spec, "first_attempts", where)
        self.count = self._optional_int(spec, "count", where)
        self.order_ref_re = self._optional_regex(spec, "match_order_ref", where)
        self.path_re = self._optional_regex(spec, "path", where)
        self.method = spec.get("method")
        if self.method is not None:
            if not isinstance(self.method, str):
                raise ConfigError("%s: 'method' must be a string" % where)
            self.method = self.method.upper()

        # Parameters of the individual fault types.
        self.status = 503
        self.retry_after = self.reset_header = self.location = None
        self.content_type = self.content_encoding = None
        self.body = None
        self.ms = 0
        self.held = False
        self.bytes = DEFAULT_OVERSIZED_BYTES
        if fault == "status":
            self.status = spec.get("status", 503)
            if (not is_int(self.status) or not 200 <= self.status <= 599
                    or self.status in (204, 304)):
                raise ConfigError("%s: 'status' must be an HTTP status 200..599 "
                                  "that carries a body" % where)
            self.retry_after = self._optional_header(spec, "retry_after", where)
            self.reset_header = self._optional_header(spec, "reset_header", where)
            self.body = self._optional_body(spec, where)
            self.location = self._optional_header(spec, "location", where)
            self.content_type = self._optional_header(spec, "content_type", where)
            self.content_encoding = self._optional_header(spec, "content_encoding", where)
        elif fault == "slow":
            self.ms = spec.get("ms")
            if not is_number(self.ms) or self.ms < 0:
                raise ConfigError("%s: slow needs 'ms' (number >= 0)" % where)
            self.held = spec.get("held", False)
            if not isinstance(self.held, bool):
                raise ConfigError("%s: 'held' must be true or false" % where)
        elif fault in ("oversized", "big_header"):
            self.bytes = spec.get("bytes", DEFAULT_OVERSIZED_BYTES if fault == "oversized"
                                  else DEFAULT_BIG_HEADER_BYTES)
            if not is_int(self.bytes) or not 0 < self.bytes <= 1024 ** 3:
                raise ConfigError("%s: 'bytes' must be an integer in 1..1 GiB" % where)
        elif fault == "hostile":
            self.field = spec.get("field", "tracking_number")
            self.kind = spec.get("kind", "long")
            self.bytes = spec.get("bytes", 10240)
            self.text = spec.get("text", "")
            if not isinstance(self.field, str) or not self.field:
                raise ConfigError("%s: 'field' must be a member name" % where)
            if self.kind not in HOSTILE_KINDS:
                raise ConfigError("%s: 'kind' must be one of %s" % (where, ", ".join(HOSTILE_KINDS)))
            if not is_int(self.bytes) or not 0 < self.bytes <= 64 * 1024 * 1024:
                raise ConfigError("%s: 'bytes' must be an integer in 1..64 MiB" % where)
            if not isinstance(self.text, str):
                raise ConfigError("%s: 'text' must be a string" % where)
            if self.kind == "json":
                try:
                    json.loads(self.text)
                except ValueError:
                    raise ConfigError("%s: 'text' must be JSON for kind json" % where)

        self.fired = 0   # how many times the rule fired; guarded by the state lock

    @staticmethod
    def _optional_int(spec, field, where):
        value = spec.get(field)
        if value is not None and (not is_int(value) or value < 0):
            raise ConfigError("%s: '%s' must be an integer >= 0" % (where, field))
        return value

    @staticmethod
    def _optional_regex(spec, field, where):
        value = spec.get(field)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError("%s: '%s' must be a regex string" % (where, field))
        try:
            return re.compile(value)
        except re.error as exc:
            raise ConfigError("%s: bad regex in '%s': %s" % (where, field, exc))

    @staticmethod
    def _optional_header(spec, field, where):
        value = spec.get(field)
        if value is None:
            return None
        if is_number(value):
            value = str(value)
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise ConfigError("%s: '%s' must be a single-line string" % (where, field))
        return value

    @staticmethod
    def _optional_body(spec, where):
        """The bytes a status fault answers with instead of its JSON error:
        'body' (a string, sent as UTF-8) or 'body_base64' (any bytes)."""
        if "body" in spec and "body_base64" in spec:
            raise ConfigError("%s: give 'body' or 'body_base64', not both" % where)
        if "body" in spec:
            if not isinstance(spec["body"], str):
                raise ConfigError("%s: 'body' must be a string" % where)
            return spec["body"].encode("utf-8", "surrogatepass")
        if "body_base64" in spec:
            try:
                return base64.b64decode(spec["body_base64"], validate=True)
            except (binascii.Error, TypeError) as e:
                raise ConfigError("%s: 'body_base64' is not base64: %s" % (where, e))
        return None

    def applies(self, method, path, attempt, order_ref):
        """Whether the rule's conditions hold (rate and count aside)."""
        if self.method is not None and method != self.method:
            return False
        if self.path_re is not None and not self.path_re.search(path):
            return False
        if self.order_ref_re is not None:
            if order_ref is None or not self.order_ref_re.search(order_ref):
                return False
        if self.first_attempts is not None:
            # Only requests carrying an Idempotency-Key have an attempt number;
            # keyless requests (GET polling) are never hit by such a rule.
            if attempt is None or attempt > self.first_attempts:
                return False
        if self.count is not None and self.fired >= self.count:
            return False
        return True


def parse_fault_config(config):
    """Validate a {"rules": [...]} document and return a list of FaultRule."""
    if not isinstance(config, dict) or not isinstance(config.get("rules"), list):
        raise ConfigError('fault config must be an object {"rules": [rule, ...]}')
    # "fired" is tolerated so the output of GET /_sim/faults can be posted back.
    extra = sorted(set(config) - {"rules", "fired"})
    if extra:
        raise ConfigError("unknown top-level field(s): %s" % ", ".join(extra))
    return [FaultRule(spec, i) for i, spec in enumerate(config["rules"])]


def load_fault_arg(text):
    """--faults takes inline JSON, or @path to read the JSON from a file."""
    if text.startswith("@"):
        with open(text[1:], "rb") as fh:
            text = fh.read().decode("utf-8")
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ConfigError("fault config is not valid JSON: %s" % exc)
    return parse_fault_config(config)


# --------------------------------------------------------------------------
# Simulator state: shipments, the idempotency ledger, counters, fault rules
# --------------------------------------------------------------------------

class LedgerEntry:
    """One Idempotency-Key: the request it was first used for, and its answer."""
    __slots__ = ("method", "path", "body", "done", "status", "response")

    def __init__(self, method, path, body):
        self.method, self.path, self.body = method, path, body
        self.done = False          # False while the first request is in progress
        self.status = None         # stored answer, replayed byte for byte
        self.response = None


class SimState:
    """All mutable simulator data. Every access goes through self.lock, and
    the lock is never held while sleeping or doing socket I/O."""

    def __init__(self, seed=None, rules=()):
        self.lock = threading.Lock()
        self.seed = seed
        self.rules = list(rules)
        # held answers (slow with "held"): each waits for a release made
        # after it arrived, or its ms
        self.releases = 0
        self.released = threading.Condition(self.lock)
        self._clear()

    def _clear(self):
        """Forget everything except the fault rules (caller holds the lock)."""
        self.ledger = {}           # Idempotency-Key -> LedgerEntry
        self.attempts = {}         # Idempotency-Key -> requests seen with it
        self.key_refs = {}         # Idempotency-Key -> order_ref of its first request
        self.arrivals = {}         # Idempotency-Key -> monotonic time of each request
        self.paths = {}            # Idempotency-Key -> "METHOD path" of each request, as sent
        self.shipments = {}        # id -> record (dicts keep creation order)
        self.next_id = 1
        self.tracking_used = set()
        self.requests = 0
        self.by_status = {}
        self.faults_injected = {}
        self.replays = self.conflicts = self.mismatches = 0
        self.expect_100 = 0        # requests that asked for 100 Continue
        self.no_identity = 0       # carrier requests without "Accept-Encoding: identity"
        self.seq = 0               # order of the last change, for listings
        self.listings = {}         # cursor prefix -> the shipments of one listing
        self.list_pages = 0
        # Separate generators, so fault rolls do not shift tracking numbers.
        if self.seed is None:
            self.fault_rng, self.tracking_rng = random.Random(), random.Random()
        else:
            self.fault_rng = random.Random("faults:%d" % self.seed)
            self.tracking_rng = random.Random("tracking:%d" % self.seed)
        for rule in self.rules:
            rule.fired = 0

    # --- inspection and control -------------------------------------------

    def reset(self):
        with self.lock:
            self._clear()

    def hold(self, seconds):
        """Wait until the next release, or seconds."""
        with self.lock:
            seen = self.releases
            self.released.wait_for(lambda: self.releases != seen, timeout=seconds)

    def release(self):
        """Let every held answer go."""
        with self.lock:
            self.releases += 1
            self.released.notify_all()

    def set_rules(self, rules):
        with self.lock:
            self.rules = list(rules)

    def fault_config(self):
        with self.lock:
            return {"rules": [r.spec for r in self.rules],
                    "fired": [r.fired for r in self.rules]}

    def stats(self):
        with self.lock:
            per_order = {}
            cancelled = updates = 0
            for rec in self.shipments.values():
                per_order[rec["order_ref"]] = per_order.get(rec["order_ref"], 0) + 1
                cancelled += rec["status"] == "cancelled"
                updates += rec["updates"]
            return {
                "requests": self.requests,
                "by_status": dict(sorted(self.by_status.items())),
                "faults_injected": dict(sorted(self.faults_injected.items())),
                "shipments": len(self.shipments),
                "keys": len({r["idempotency_key"] for r in self.shipments.values()}),
                "orders": len(per_order),
                "duplicate_orders": sum(1 for n in per_order.values() if n > 1),
                "replays": self.replays,
                "conflicts_409": self.conflicts,
                "mismatch_422": self.mismatches,
                "cancelled": cancelled,
                "updates": updates,
                "list_pages": self.list_pages,
                "expect_100": self.expect_100,
                "no_identity": self.no_identity,
            }

    def list_attempts(self):
        """Every Idempotency-Key seen, with how many requests carried it, the
        order_ref of the first one (None if it had none), when each
        arrived (seconds on the simulator's monotonic clock) and its method
        and path as they came, percent-encoding and all."""
        with self.lock:
            return {key: {"requests": n, "order_ref": self.key_refs.get(key),
                          "arrived": list(self.arrivals.get(key, ())),
                          "paths": list(self.paths.get(key, ()))}
                    for key, n in self.attempts.items()}

    def list_shipments(self, order_ref=None):
        fields = ("id", "order_ref", "tracking_number", "idempotency_key",
                  "status", "updates", "created_at")
        with self.lock:
            return [{f: rec[f] for f in fields} for rec in self.shipments.values()
                    if order_ref is None or rec["order_ref"] == order_ref]

    def shipment_record(self, sid):
        """The full internal record (including the order payload), or None."""
        with self.lock:
            rec = self.shipments.get(sid)
            return json.loads(json.dumps(rec)) if rec is not None else None

    # --- per-request bookkeeping -------------------------------------------

    def note_request(self):
        with self.lock:
            self.requests += 1

    def note_accept_encoding(self, value):
        """A carrier request's Accept-Encoding: without "identity" alone, a
        server may compress its answer (RFC 9110, 12.5.3)."""
        if (value or "").strip().lower() != "identity":
            with self.lock:
                self.no_identity += 1

    def note_expect_100(self):
        with self.lock:
            self.expect_100 += 1

    def note_status(self, status):
        with self.lock:
            key = str(status)
            self.by_status[key] = self.by_status.get(key, 0) + 1

    def select_fault(self, method, path, key, order_ref, sid):
        """Count the attempt for `key`, then return the first rule that fires.

        This runs before the ledger is consulted, so a retry that no rule hits
        goes to the ledger normally. For requests on /shipments/{id} whose body
        has no order_ref, the shipment's order_ref is used for matching.
        """
        with self.lock:
            attempt = None
            if order_ref is None and sid in self.shipments:
                order_ref = self.shipments[sid]["order_ref"]
            if key is not None:
                attempt = self.attempts.get(key, 0) + 1
                self.attempts[key] = attempt
                self.key_refs.setdefault(key, order_ref)
                self.arrivals.setdefault(key, []).append(time.monotonic())
                self.paths.setdefault(key, []).append("%s %s" % (method, path))
            for rule in self.rules:
                if not rule.applies(method, path, attempt, order_ref):
                    continue
                # Only draw a random number when needed, so that rate-1 rules
                # do not disturb the seeded sequence.
                if rule.rate < 1 and self.fault_rng.random() >= rule.rate:
                    continue
                rule.fired += 1
                self.faults_injected[rule.name] = self.faults_injected.get(rule.name, 0) + 1
                return rule
            return None

    # --- idempotency ledger ------------------------------------------------

    def ledger_begin(self, key, method, path, body):
        """Look the key up. Returns ("new", entry) if the caller must process
        the request (the key is now recorded as in progress), or
        ("reply", status, body, headers) with the answer to send."""
        with self.lock:
            entry = self.ledger.get(key)
            if entry is None:
                entry = LedgerEntry(method, path, body)
                self.ledger[key] = entry
                return ("new", entry)
            if not entry.done:
                self.conflicts += 1
                return ("reply", 409, error_body("in progress"), [])
            if entry.method != method or entry.path != path:
                self.mismatches += 1
                return ("reply", 422, error_body(
                    "idempotency key reused for a different request"), [])
            if entry.body != body:
                self.mismatches += 1
                return ("reply", 422, error_body(
                    "idempotency key reused with a different body"), [])
            self.replays += 1
            return ("reply", entry.status, entry.response,
                    [("Idempotent-Replayed", "true")])

    def ledger_finish(self, key, entry, status, response):
        with self.lock:
            entry.status, entry.response, entry.done = status, response, True

    def ledger_abandon(self, key, entry):
        """Drop an in-progress key after an internal error, so it can be retried."""
        with self.lock:
            if self.ledger.get(key) is entry:
                del self.ledger[key]

    # --- shipment operations (each returns (status, body bytes)) -----------

    def _new_tracking_number(self):
        while True:
            number = "SIM%012d" % self.tracking_rng.randrange(10 ** 12)
            if number not in self.tracking_used:
                self.tracking_used.add(number)
                return number

    def _touch(self, rec, status=None):
        """The record changed now (caller holds the lock): listings see it."""
        if status is not None:
            rec["status"] = status
        self.seq += 1
        rec["updated_at"] = utc_now()
        rec["_seq"] = self.seq
        rec["_ts"] = time.time()

    def _new_record(self, order_ref, key, payload, status="pre_transit", step=0):
        """A new shipment record (caller holds the lock), created at step of
        the tracking clock."""
        sid = "shp_%d" % self.next_id
        self.next_id += 1
        rec = {
            "id": sid,
            "order_ref": order_ref,
            "tracking_number": self._new_tracking_number(),
            "label_url": "https://labels.sim.invalid/%s.pdf" % sid,
            "status": status,
            "fees": json.loads(json.dumps(FEES)),
            "idempotency_key": key,
            "updates": 0,
            "last_update": None,
            "order": payload.get("order") if isinstance(payload, dict) else None,
            "created_at": utc_now(),
            "created_step": step,
            "cancelled_at": None,
            "cancelled_step": None,
        }
        self._touch(rec)
        self.shipments[sid] = rec
        return rec

    @staticmethod
    def _view(rec):
        """The public JSON view of a shipment (GET and PATCH answers)."""
        return {"id": rec["id"], "tracking_number": rec["tracking_number"],
                "label_url": rec["label_url"], "status": rec["status"],
                "fees": rec["fees"], "order_ref": rec["order_ref"],
                "created_at": rec["created_at"], "updates": rec["updates"]}

    def create_shipment(self, key, payload):
        if payload is _NOT_JSON:
            return 400, error_body("body is not valid JSON")
        if not isinstance(payload, dict):
            return 400, error_body("body must be a JSON object")
        order_ref = payload.get("order_ref")
        if not isinstance(order_ref, str) or not order_ref:
            return 400, error_body("order_ref is required (non-empty string)")
        step = self._tracking_step()
        with self.lock:
            rec = self._new_record(order_ref, key, payload, step=step)
            answer = {f: rec[f] for f in ("id", "tracking_number", "label_url",
                                          "status", "fees", "order_ref")}
        return 201, dumps(answer)

    def record_fault(self, fault, answer):
        """forget: the shipment just answered is lost; duplicate: the order
        gets a second shipment.  answer is the create's 201 body."""
        created = parse_json(answer)
        if not isinstance(created, dict) or "id" not in created:
            return
        step = self._tracking_step()
        with self.lock:
            rec = self.shipments.get(created["id"])
            if rec is None:
                return
            if fault == "forget":
                del self.shipments[rec["id"]]
            else:
                self._new_record(rec["order_ref"], None, {"order": rec.get("order")}, step=step)

    def add_shipments(self, refs, status, tracking_prefix=None):
        """Shipments no order of the shop sent (orphans), or many at once:
        recorded as they are, no ledger; with tracking_prefix, the tracking
        number is that prefix and the order reference.  Returns their ids."""
        ids = []
        # hundreds of thousands of records: made without the cyclic
        # collector, then kept out of its sight, or every full collection
        # walks them all (seconds, during which nothing is answered)
        bulk = len(refs) >= 10000 and gc.isenabled()
        step = self._tracking_step()
        with self.lock:
            if bulk:
                gc.disable()
            try:
                for ref in refs:
                    rec = self._new_record(ref, None, None, status, step)
                    if tracking_prefix is not None:
                        rec["tracking_number"] = tracking_prefix + ref
                    ids.append(rec["id"])
            finally:
                if bulk:
                    gc.freeze()
                    gc.enable()
        return ids

    def move(self, ids=None, order_ref=None, status="delivered", count=None):
        """Change statuses without pushing anything.  Returns the ids moved."""
        moved = []
        with self.lock:
            for rec in self.shipments.values():
                if count is not None and len(moved) >= count:
                    break
                if ids is not None and rec["id"] not in ids:
                    continue
                if order_ref is not None and not order_ref.search(rec["order_ref"]):
                    continue
                self._touch(rec, status)
                moved.append(rec["id"])
        return moved

    def list_page(self, query):
        """GET /shipments?updated_since=&cursor=&limit=: the shipments changed
        since then, oldest change first, a page at a time.  The first page
        takes a listing (the shipments, in order: later ones are not in it;
        each is shown as it is when its page is read); the cursor names the
        listing and the position in it."""
        q = parse_qs(query, keep_blank_values=True)
        try:
            limit = int(q.get("limit", [LIST_DEFAULT_LIMIT])[0])
        except ValueError:
            return 400, error_body("limit must be an integer")
        if limit < 1:
            return 400, error_body("limit must be at least 1")
        limit = min(limit, LIST_MAX_LIMIT)
        cursor = q.get("cursor", [""])[0]
        with self.lock:
            self.list_pages += 1
            if cursor:
                name, _, pos = cursor.partition(":")
                listing = self.listings.get(name)
                if listing is None or not pos.isdigit():
                    return 400, error_body("unknown or expired cursor")
                pos = int(pos)
            else:
                since = q.get("updated_since", [None])[0]
                try:
                    # RFC 3339 only, as a strict carrier reads it: an offset
                    # is Z or +HH:MM ("+00" alone is not one)
                    if since and not _RFC3339.match(since):
                        raise ValueError(since)
                    since_ts = (datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
                                if since else 0)
                except ValueError:
                    return 400, error_body("updated_since must be an RFC 3339 time")
                listing = sorted((r for r in self.shipments.values() if r["_ts"] >= since_ts),
                                 key=lambda r: r["_seq"])
                name = "l%d" % (self.list_pages)
                self.listings[name] = listing
                while len(self.listings) > LIST_SNAPSHOTS:
                    del self.listings[next(iter(self.listings))]
                pos = 0
            page = [{"id": r["id"], "order_ref": r["order_ref"],
                     "tracking_number": r["tracking_number"], "status": r["status"],
                     "updated_at": r["updated_at"], "fees": r["fees"]}
                    for r in listing[pos:pos + limit]]
            more = pos + limit < len(listing)
        return 200, dumps({"shipments": page,
                           "next_cursor": "%s:%d" % (name, pos + limit) if more else None})

    def update_shipment(self, sid, payload):
        with self.lock:
            rec = self.shipments.get(sid)
            if rec is None:
                return 404, error_body("shipment not found")
            if payload is _NOT_JSON:
                return 400, error_body("body is not valid JSON")
            if not isinstance(payload, dict):
                return 400, error_body("body must be a JSON object")
            rec["updates"] += 1
            rec["last_update"] = payload
            self._touch(rec)
            return 200, dumps(self._view(rec))

    def cancel_shipment(self, sid):
        step = self._tracking_step()
        with self.lock:
            rec = self.shipments.get(sid)
            if rec is None:
                return 404, error_body("shipment not found")
            if rec["status"] != "cancelled":      # cancelling twice is fine
                self._touch(rec, "cancelled")
                rec["cancelled_at"] = utc_now()
                rec["cancelled_step"] = step
            return 200, dumps({"id": sid, "status": "cancelled",
                               "tracking_number": rec["tracking_number"]})

    def get_shipment(self, sid):
        with self.lock:
            rec = self.shipments.get(sid)
            if rec is None:
                return 404, error_body("shipment not found")
            return 200, dumps(self._view(rec))

    def _tracking_step(self):
        """The step of the tracking clock (pusher.py) now; 0 without a tracker.
        Read before taking self.lock: the tracker takes its own lock."""
        tracker = getattr(self, "tracker", None)
        return tracker.now() if tracker is not None else 0

    def get_events(self, sid):
        """The events so far: the shipment's timeline once it has one, else
        the label created (the timeline's first event, the same in every
        field) and its cancellation -- all on the tracking clock."""
        tracker = getattr(self, "tracker", None)
        events = tracker.pull_events(sid) if tracker is not None else None
        if events is not None:
            return 200, dumps({"events": events})
        with self.lock:
            rec = self.shipments.get(sid)
            if rec is None:
                return 404, error_body("shipment not found")
            history = [pusher.created_event(sid, rec["created_step"])]
            if rec["status"] == "cancelled":
                history.append({"id": "evt_%s_2" % sid, "status": "cancelled",
                                "at": pusher.clock_time(rec["cancelled_step"]),
                                "description": "Shipment cancelled"})
            return 200, dumps({"events": [pusher.event_json(e, rec["tracking_number"])
                                          for e in history]})


# --------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------

class BadRequest(Exception):
    """A request whose framing we cannot trust; answered, then the connection closes."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def route_carrier(method, path):
    """Map a carrier request to (action, shipment id, allowed methods)."""
    if path == "/shipments":
        if method == "POST":
            return ("create", None, None)
        if method == "GET":
            return ("list", None, None)
        return ("bad_method", None, "GET, POST")
    match = _SHIPMENT_PATH.match(path)
    if match is None:
        return ("not_found", None, None)
    sid = unquote(match.group(1))
    actions = {None: {"GET": "get", "PATCH": "update"},
               "/cancel": {"POST": "cancel"},
               "/events": {"GET": "events"},
               "/fees": {"GET": "fees"}}[match.group(2)]
    if method in actions:
        return (actions[method], sid, None)
    return ("bad_method", sid, ", ".join(sorted(actions)))


def kuaidi100_ok(headers, body, credentials):
    """Kuaidi100-style signed headers: X-Kuaidi100-Sign must be
    UPPER(MD5(body + key + customer)) for the configured customer."""
    customer, key = credentials
    if headers.get("X-Kuaidi100-Customer", "") != customer:
        return False
    want = hashlib.md5(body + key.encode("utf-8") + customer.encode("utf-8")).hexdigest().upper()
    return hmac.compare_digest(headers.get("X-Kuaidi100-Sign", ""), want)


class OAuthState:
    """An OAuth2 client-credentials server (--oauth2 ID:SECRET[:TTL]):
    POST /oauth/token with HTTP Basic client authentication issues bearer
    tokens valid TTL seconds; carrier endpoints then need a valid one."""

    def __init__(self, client_id, secret, ttl=3600, delay_ms=0):
        self.lock = threading.Lock()
        self.client_id, self.secret, self.ttl = client_id, secret, ttl
        self.delay_s = delay_ms / 1000.0
        self.tokens = {}            # token -> expiry (monotonic)
        self.reject_all = False
        self.revoke_at_fetch = False
        self.in_progress = 0
        self.stats = {"token_requests": 0, "tokens_issued": 0, "bad_client": 0,
                      "rejected_401": 0, "expired_used": 0, "max_concurrent_fetches": 0}

    def issue(self, authorization, body):
        """Answer a token request: (status, body bytes)."""
        with self.lock:
            self.stats["token_requests"] += 1
            self.in_progress += 1
            self.stats["max_concurrent_fetches"] = max(self.stats["max_concurrent_fetches"],
                                                       self.in_progress)
        try:
            answer = self._answer(authorization, body)
            # the token's life starts here; its answer reaches the client later
            if self.delay_s:
                time.sleep(self.delay_s)
            return answer
        finally:
            with self.lock:
                self.in_progress -= 1

    def _answer(self, authorization, body):
        form = parse_qs(body.decode("utf-8", "replace"))
        try:
            scheme, _, cred = authorization.partition(" ")
            user, _, password = base64.b64decode(cred).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            scheme, user, password = "", "", ""
        with self.lock:
            if scheme.lower() != "basic" or unquote(user.replace("+", " ")) != self.client_id \
                    or unquote(password.replace("+", " ")) != self.secret:
                self.stats["bad_client"] += 1
                return 401, dumps({"error": "invalid_client"})
            if form.get("grant_type") != ["client_credentials"]:
                return 400, dumps({"error": "unsupported_grant_type"})
            if self.revoke_at_fetch:
                self.tokens.clear()
                self.revoke_at_fetch = False
            token = "tok_%d_%08x" % (self.stats["tokens_issued"] + 1, random.getrandbits(32))
            self.tokens[token] = time.monotonic() + self.ttl
            self.stats["tokens_issued"] += 1
            return 200, dumps({"access_token": token, "token_type": "Bearer",
                               "expires_in": self.ttl})

    def valid(self, authorization):
        with self.lock:
            if not authorization.startswith("Bearer "):
                self.stats["rejected_401"] += 1
                return False
            expiry = self.tokens.get(authorization[7:])
            if expiry is None or self.reject_all:
                self.stats["rejected_401"] += 1
                return False
            if expiry < time.monotonic():
                self.stats["expired_used"] += 1
                self.stats["rejected_401"] += 1
                return False
            return True

    def handle_sim(self, handler, path, body):
        if path == "/_sim/oauth/stats" and handler.command == "GET":
            with self.lock:
                handler._send(200, dumps(dict(self.stats)))
        elif path == "/_sim/oauth/revoke" and handler.command == "POST":
            # {"at_next_fetch": true}: revoked when the next token is asked
            # for, so that the revocation meets a refresh in flight
            config = parse_json(body)
            with self.lock:
                if isinstance(config, dict) and config.get("at_next_fetch"):
                    self.revoke_at_fetch = True
                else:
                    self.tokens.clear()
            handler._send(200, dumps({"ok": True}))
        elif path == "/_sim/oauth/ttl" and handler.command == "POST":
            # {"ttl": S}: tokens made from now on live S seconds; those
            # already made keep theirs
            config = parse_json(body)
            ttl = config.get("ttl") if isinstance(config, dict) else None
            if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
                handler._send(400, dumps({"error": "ttl must be a number of seconds above 0"}))
            else:
                with self.lock:
                    self.ttl = ttl
                handler._send(200, dumps({"ok": True, "ttl": ttl}))
        elif path == "/_sim/oauth/reject" and handler.command == "POST":
            config = parse_json(body)
            with self.lock:
                self.reject_all = bool(config.get("on")) if isinstance(config, dict) else False
            handler._send(200, dumps({"ok": True}))
        else:
            return False
        return True


def hostile_body(body, rule):
    """A good JSON answer with one field made hostile, as a carrier might
    send it: `long` (a string of rule.bytes bytes), `nul` (a NUL inside,
    written \\u0000), `bad_utf8` (bytes that are not UTF-8), `huge_number`
    (1e99999: valid JSON, out of any numeric's range; for field "fees", an
    amount of "1e99999"), `text` (rule.text as it is), or `json` (the
    JSON value rule.text holds, e.g. a fee list of another shape)."""
    obj = parse_json(body)
    if not isinstance(obj, dict):
        return body
    marker = "\u2603HOSTILE\u2603"
    raw = None
    if rule.kind == "long":
        obj[rule.field] = "T" * rule.bytes
    elif rule.kind == "nul":
        obj[rule.field] = "SF1234\x005678"
    elif rule.kind == "text":
        obj[rule.field] = rule.text
    elif rule.kind == "json":
        obj[rule.field] = json.loads(rule.text)
    elif rule.kind == "bad_utf8":
        obj[rule.field] = marker
        raw = b"SF\xff\xfe\xc3(1234"
    elif rule.field == "fees":
        obj["fees"] = [{"type": "freight", "amount": "1e99999", "currency": "CNY"}]
    else:
        obj[rule.field] = marker
        raw = b"1e99999"
    out = dumps(obj)
    if raw is not None:
        quoted = dumps(marker)
        out = out.replace(quoted, raw if rule.kind == "huge_number" else b'"' + raw + b'"')
    return out


def oversize_parts(body, size):
    """A JSON answer padded with a long string field to `size` bytes (or
    unchanged, if it is already at least that large), as (head, padding
    length, tail): the padding is streamed, never built. Building and
    encoding 8 MB strings for ten requests at once took the simulator over a
    second, and on a loaded machine over a client's timeout, which then
    recorded a timeout instead of the oversized answer."""
    obj = parse_json(body)
    if not isinstance(obj, dict):
        obj = {"response": None if obj is _NOT_JSON else obj}
    obj["_padding"] = ""
    base = dumps(obj)                        # ends with "_padding":""} (ASCII x:
                                             # one byte per character)
    return base[:-2], max(0, size - len(base)), base[-2:]


class CarrierHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive; every answer has Content-Length
    disable_nagle_algorithm = True     # otherwise each request costs ~40 ms
    server_version = "carrier_sim/1.0"

    def version_string(self):
        return self.server_version     # no trailing " Python/x.y"

    # One method per verb; everything goes through _dispatch.
    def do_GET(self):
        self._dispatch()

    do_POST = do_PATCH = do_PUT = do_DELETE = do_GET

    def handle_expect_100(self):
        # counted: a client that waits for 100 Continue before its body
        # depends on the server to answer it (and one answering 417 makes
        # libcurl send the request again by itself)
        self.server.state.note_expect_100()
        return super().handle_expect_100()

    def setup(self):
        # --keepalive-timeout: a connection idle that long between requests
        # is closed by the server, as nginx's keepalive_timeout does
        self.timeout = self.server.keepalive_timeout
        super().setup()

    def handle(self):
        # Clients hang up (timeouts) and we reset connections on purpose:
        # neither is worth a traceback.
        try:
            super().handle()
        except (OSError, socket.timeout):
            self.close_connection = True

    # --- logging (silent unless --log) ------------------------------------

    def log_request(self, code="-", size="-"):
        pass    # we log one line per request ourselves, in _log

    def log_message(self, fmt, *args):
        self.server.log("%s:%d %s" % (self.client_address[0],
                                      self.client_address[1], fmt % args))

    def _log(self, outcome, key=None, rule=None):
        if self.server.log_fh is not None:
            elapsed = (time.monotonic() - self._started) * 1000.0
            self.log_message("%s %s -> %s key=%s fault=%s %.1fms",
                             self.command, self.path, outcome, key or "-",
                             rule.name if rule else "-", elapsed)

    # --- sending -----------------------------------------------------------

    def send_error(self, code, message=None, explain=None):
        """Used by the stdlib for unparsable requests and unknown verbs: answer
        JSON like everything else, then close (the body was not read)."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self._send(code, error_body(message or phrase))

    def _send(self, status, body, headers=(), carrier=False,
              content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if carrier:
            self.server.state.note_status(status)

    def _send_padded(self, status, parts, headers=()):
        """Send head + padding + tail of oversize_parts(), the padding in
        chunks: a client that gives up half way costs us nothing more."""
        head, pad, tail = parts
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(head) + pad + len(tail)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(head)
        chunk = b"x" * 65536
        while pad > 0:
            self.wfile.write(chunk[:pad])
            pad -= min(pad, len(chunk))
        self.wfile.write(tail)
        self.server.state.note_status(status)

    def _send_json(self, status, obj, headers=()):
        self._send(status, dumps(obj), headers)

    def _abort_with_rst(self):
        """Abort the TCP connection: SO_LINGER on with a 0 s timeout makes
        close() send an RST instead of a FIN. The socket object is detached
        first, so the server's later shutdown()/close() calls touch nothing."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            fd = sock.detach()
        except OSError:
            return
        if fd >= 0:
            os.close(fd)

    # --- reading -----------------------------------------------------------

    def _read_body(self):
        """Read the whole request body (Content-Length or chunked) before we
        answer, so the next request on a kept-alive connection starts clean."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            length = int(length)
        except ValueError:
            raise BadRequest(400, "invalid Content-Length")
        if length < 0:
            raise BadRequest(400, "invalid Content-Length")
        if length > MAX_BODY_BYTES:
            raise BadRequest(413, "request body too large")
        body = self.rfile.read(length)
        if len(body) != length:
            raise ConnectionError("client closed the connection mid-body")
        return body

    def _read_chunked(self):
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionError("client closed the connection mid-body")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest(400, "invalid chunk size")
            if size == 0:
                break
            total += size
            if total > MAX_BODY_BYTES:
                raise BadRequest(413, "request body too large")
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise ConnectionError("client closed the connection mid-body")
            parts.append(chunk)
            self.rfile.readline(1024)          # the CRLF after each chunk
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass                                # skip trailer fields
        return b"".join(parts)

    # --- dispatch ----------------------------------------------------------

    def _dispatch(self):
        self._started = time.monotonic()
        url = urlsplit(self.path)
        is_sim = url.path == "/_sim" or url.path.startswith("/_sim/")
        try:
            body = self._read_body()
        except BadRequest as exc:
            self.close_connection = True
            if not is_sim:
                self.server.state.note_request()
            self._send(exc.status, error_body(str(exc)), carrier=not is_sim)
            self._log(exc.status)
            return
        if url.path.startswith("/_sim/sf/") and \
                sf_sim.handle_sim(self, self.server.sf, url.path, url.query, body):
            return
        oauth = self.server.oauth
        if oauth is not None and url.path.startswith("/_sim/oauth/") and \
                oauth.handle_sim(self, url.path, body):
            return
        if oauth is not None and url.path == "/oauth/token" and self.command == "POST":
            status, answer = oauth.issue(self.headers.get("Authorization", ""), body)
            self._send(status, answer)
            return
        if url.path == "/sf/std/service":
            sf_sim.handle_carrier(self, self.server.sf, body)
            return
        if url.path.startswith("/_sim/track/") and \
                track_sim.handle_sim(self, self.server.track, url.path, body):
            return
        if track_sim.handle_carrier(self, self.server.track, url.path, body):
            return
        if is_sim:
            self._handle_sim(url.path, url.query, body)
        else:
            self._handle_carrier(url.path, body, url.query)

    def _handle_sim(self, path, query, body):
        """Inspection and control endpoints: never faulted, never authenticated."""
        state = self.server.state
        method = self.command
        answer = pusher.handle_sim(state.tracker, method, path, body) \
            if getattr(state, "tracker", None) is not None else None
        if answer is None and getattr(state, "biller", None) is not None:
            answer = fee_sim.handle_sim(state.biller, method, path, body)
        if answer is not None:
            self._send_json(*answer)
            self._log("sim")
            return
        if path == "/_sim/stats" and method == "GET":
            self._send_json(200, state.stats())
        elif path == "/_sim/connections" and method == "GET":
            self._send_json(200, self.server.connection_stats())
        elif path == "/_sim/shipments" and method == "GET":
            refs = parse_qs(query).get("order_ref")
            self._send_json(200, state.list_shipments(refs[0] if refs else None))
        elif path.startswith("/_sim/shipments/") and method == "GET":
            rec = state.shipment_record(unquote(path[len("/_sim/shipments/"):]))
            if rec is None:
                self._send(404, error_body("shipment not found"))
            else:
                self._send_json(200, rec)
        elif path == "/_sim/attempts" and method == "GET":
            self._send_json(200, state.list_attempts())
        elif path == "/_sim/faults" and method == "GET":
            self._send_json(200, state.fault_config())
        elif path == "/_sim/faults" and method == "POST":
            config = parse_json(body)
            try:
                if config is _NOT_JSON:
                    raise ConfigError("body is not valid JSON")
                state.set_rules(parse_fault_config(config))
            except ConfigError as exc:
                self._send(400, error_body(str(exc)))
            else:
                self._send_json(200, state.fault_config())
        elif path == "/_sim/reset" and method == "POST":
            state.reset()
            self._send_json(200, {"ok": True})
        elif path == "/_sim/release" and method == "POST":
            state.release()
            self._send_json(200, {"ok": True})
        elif path in ("/_sim/orphans", "/_sim/move") and method == "POST":
            self._records_control(path, body)
        elif path in ("/_sim/stats", "/_sim/shipments", "/_sim/attempts", "/_sim/faults",
                      "/_sim/reset", "/_sim/release"):
            self._send(405, error_body("method not allowed"))
        else:
            self._send(404, error_body("not found"))
        self._log("sim")

    def _records_control(self, path, body):
        """POST /_sim/orphans {"order_refs": [...] | "count", "prefix", "status",
        "tracking_prefix"?}: shipments no order sent (their ids, or how many
        beyond 1,000).  POST /_sim/move {"ids" | "order_ref" (regex),
        "status", "count"?}: statuses changed without a push."""
        state = self.server.state
        config = parse_json(body)
        if not isinstance(config, dict):
            self._send(400, error_body("body must be a JSON object"))
            return
        status = config.get("status", "pre_transit" if path == "/_sim/orphans" else "delivered")
        if not isinstance(status, str) or not status:
            self._send(400, error_body("status must be a non-empty string"))
            return
        if path == "/_sim/orphans":
            refs = config.get("order_refs")
            if refs is None:
                count = config.get("count", 1)
                if not is_int(count) or not 0 <= count <= 10 ** 7:
                    self._send(400, error_body("count must be an integer"))
                    return
                refs = ["%s%d" % (config.get("prefix", "ORPHAN-"), i + 1) for i in range(count)]
            prefix = config.get("tracking_prefix")
            if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs) \
                    or (prefix is not None and not isinstance(prefix, str)):
                self._send(400, error_body("order_refs must be non-empty strings, tracking_prefix a string"))
                return
            ids = state.add_shipments(refs, status, prefix)
            self._send_json(200, {"ids": ids} if len(ids) <= 1000 else {"count": len(ids)})
            return
        ids = config.get("ids")
        try:
            ref_re = re.compile(config["order_ref"]) if "order_ref" in config else None
        except (re.error, TypeError) as exc:
            self._send(400, error_body("bad order_ref regex: %s" % exc))
            return
        count = config.get("count")
        if (ids is not None and not isinstance(ids, list)) or (count is not None and not is_int(count)):
            self._send(400, error_body("ids must be a list, count an integer"))
            return
        self._send_json(200, {"ids": state.move(set(ids) if ids is not None else None,
                                                ref_re, status, count)})

    def _handle_carrier(self, path, body, query=""):
        srv, state, method = self.server, self.server.state, self.command
        state.note_request()
        state.note_accept_encoding(self.headers.get("Accept-Encoding"))
        if srv.latency_s > 0:
            time.sleep(srv.latency_s)

        key = (self.headers.get("Idempotency-Key") or "").strip() or None
        payload = parse_json(body)
        action, sid, allow = route_carrier(method, path)
        order_ref = payload.get("order_ref") if isinstance(payload, dict) else None
        if not isinstance(order_ref, str):
            order_ref = None

        # 1. Attempt counting and fault selection, before anything else.
        rule = state.select_fault(method, path, key, order_ref, sid)
        fault = rule.fault if rule else None
        if fault == "status":
            headers = []
            if rule.retry_after is not None:
                headers.append(("Retry-After", rule.retry_after))
            if rule.reset_header is not None:
                headers.append(("X-RateLimit-Reset", rule.reset_header))
            if rule.location is not None:
                headers.append(("Location", rule.location))
            if rule.content_encoding is not None:
                headers.append(("Content-Encoding", rule.content_encoding))
            try:
                phrase = HTTPStatus(rule.status).phrase.lower()
            except ValueError:
                phrase = "error"
            body = rule.body
            if body is None:
                body = dumps({"error": phrase, "simulated": True})
            self._send(rule.status, body, headers, carrier=True,
                       content_type=rule.content_type or "application/json")
            self._log(rule.status, key, rule)
            return
        if fault == "reset_before":
            self._abort_with_rst()
            self._log("RST", key, rule)
            return
        if fault == "close":
            self.close_connection = True   # the server closes without a word
            self._log("CLOSE", key, rule)
            return

        # 2. Decide the answer. A new idempotent request reserves its key
        #    (in progress) here and is processed after the optional slow delay.
        entry, status, answer, headers = None, None, None, []
        if srv.token is not None and \
                self.headers.get("Authorization", "") != "Bearer " + srv.token:
            status, answer = 401, error_body("unauthorized")
            headers = [("WWW-Authenticate", "Bearer")]
        elif srv.kuaidi100 is not None and not kuaidi100_ok(self.headers, body, srv.kuaidi100):
            status, answer = 401, error_body("bad kuaidi100 sign")
        elif srv.oauth is not None and not srv.oauth.valid(self.headers.get("Authorization", "")):
            status, answer = 401, error_body("invalid_token")
            headers = [("WWW-Authenticate", 'Bearer error="invalid_token"')]
        elif srv.require_header is not None and \
                self.headers.get(srv.require_header[0], "") != srv.require_header[1]:
            status, answer = 401, error_body("missing or wrong %s header" % srv.require_header[0])
        elif action == "not_found":
            status, answer = 404, error_body("not found")
        elif action == "bad_method":
            status, answer = 405, error_body("method not allowed")
            headers = [("Allow", allow)]
        elif action in ("create", "update", "cancel"):
            if key is None:
                status, answer = 400, error_body("missing Idempotency-Key header")
            else:
                decision = state.ledger_begin(key, method, path, body)
                if decision[0] == "new":
                    entry = decision[1]
                else:
                    status, answer, headers = decision[1:]

        # 3. The slow fault delays the answer (never while holding the lock;
        #    a held one waits on a condition of it, which lets it go).
        if fault == "slow" and rule.ms > 0:
            if rule.held:
                state.hold(rule.ms / 1000.0)
            else:
                time.sleep(rule.ms / 1000.0)

        # 4. Do the work: mutations complete the ledger entry, reads read.
        if entry is not None:
            try:
                if action == "create":
                    status, answer = state.create_shipment(key, payload)
                elif action == "update":
                    status, answer = state.update_shipment(sid, payload)
                else:
                    status, answer = state.cancel_shipment(sid)
            except Exception:
                state.ledger_abandon(key, entry)
                srv.log("internal error:\n" + traceback.format_exc(), force=True)
                status, answer = 500, error_body("internal simulator error")
            else:
                state.ledger_finish(key, entry, status, answer)
        elif status is None:
            if action == "get":
                status, answer = state.get_shipment(sid)
            elif action == "fees":
                status, answer = state.biller.pull(sid)
            elif action == "list":
                status, answer = state.list_page(query)
            else:
                status, answer = state.get_events(sid)
        if fault in ("forget", "duplicate") and action == "create" and status == 201:
            state.record_fault(fault, answer)

        # 5. Deliver, possibly damaged by a fault that acts after recording.
        if fault == "reset_after":
            self._abort_with_rst()
            self._log("RST (after %d)" % status, key, rule)
            return
        if fault == "malformed":
            answer = answer[:max(1, len(answer) // 2)]   # cut: no longer valid JSON
        elif fault == "hostile" and 200 <= status < 300:
            answer = hostile_body(answer, rule)
        elif fault == "big_header":
            headers = list(headers) + [("X-Padding", "a" * rule.bytes)]
        elif fault == "oversized":
            self._send_padded(status, oversize_parts(answer, rule.bytes), headers)
            self._log(status, key, rule)
            return
        self._send(status, answer, headers, carrier=True)
        self._log(status, key, rule)


class CarrierServer(http.server.ThreadingHTTPServer):
    daemon_threads = True          # in-flight handlers never block shutdown
    request_queue_size = 1024      # listen() backlog for bursts of connections
    allow_reuse_address = True

    def __init__(self, state, token=None, latency_ms=0, log_fh=None, port=0, kuaidi100=None,
                 oauth=None, require_header=None, tls=None):
        self.tls = tls                  # ssl.SSLContext (server side) or None
        self.tls_failures = 0           # handshakes that failed (TLS only)
        self.connections = 0            # connections accepted since the start
        self.client_certs = 0           # TLS connections that presented a client certificate
        self.resumed = 0                # TLS connections that resumed a session
        self.state = state
        self.require_header = require_header    # (name, value) or None
        self.oauth = oauth              # OAuthState or None
        self.kuaidi100 = kuaidi100      # (customer, key) or None
        self.sf = sf_sim.SfState(seed=state.seed)
        self.track = track_sim.TrackState()
        self.token = token
        self.latency_s = max(0.0, latency_ms / 1000.0)
        self.keepalive_timeout = None   # seconds; None: keep idle connections open
        self.log_fh = log_fh
        self._log_lock = threading.Lock()
        super().__init__((LISTEN_HOST, port), CarrierHandler)

    def server_bind(self):
        # HTTPServer.server_bind() does a reverse DNS lookup (getfqdn), which
        # can stall on badly configured hosts; we know our name already.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request, client_address):
        # TLS: the handshake happens here, in the connection's own thread, so
        # a client that stalls in it never holds up the accept loop.
        with self._log_lock:
            self.connections += 1
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                with self._log_lock:
                    self.tls_failures += 1
                self.log("TLS handshake with %s failed: %s" % (client_address[0], exc))
                return
            with self._log_lock:
                self.client_certs += bool(request.getpeercert())
                self.resumed += request.session_reused
        super().finish_request(request, client_address)

    def connection_stats(self):
        with self._log_lock:
            return {"connections": self.connections, "client_certs": self.client_certs,
                    "resumed": self.resumed, "tls_failures": self.tls_failures}

    def log(self, line, force=False):
        fh = self.log_fh if self.log_fh is not None else (sys.stderr if force else None)
        if fh is None:
            return
        with self._log_lock:
            try:
                fh.write("%s %s\n" % (utc_now(), line))
                fh.flush()
            except (OSError, ValueError):
                pass

    def handle_error(self, request, client_address):
        # Anything reaching here is a simulator bug, not a client hang-up.
        self.log("unhandled error from %s:\n%s" % (client_address, traceback.format_exc()),
                 force=True)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def write_port_file(path, port):
    """Write the port atomically: temp file in the same directory, then rename."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    with open(tmp, "w") as fh:
        fh.write("%d\n" % port)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def tls_context(args, parser):
    """The server-side SSLContext of --tls-cert/--tls-key, or None."""
    if not args.tls_cert and not (args.tls_key or args.tls_client_ca or args.tls_max):
        return None
    if not args.tls_cert or not args.tls_key:
        parser.error("--tls-cert and --tls-key go together")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_client_optional and not args.tls_client_ca:
        parser.error("--tls-client-optional goes with --tls-client-ca")
    if args.tls_client_ca:
        ctx.verify_mode = ssl.CERT_OPTIONAL if args.tls_client_optional else ssl.CERT_REQUIRED
        ctx.load_verify_locations(args.tls_client_ca)
    if args.tls_max:
        ctx.maximum_version = (ssl.TLSVersion.TLSv1_2 if args.tls_max == "1.2"
                               else ssl.TLSVersion.TLSv1_3)
    return ctx


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Logistics carrier simulator for pg_shipsync tests.")
    parser.add_argument("--port", type=int, default=0,
                        help="TCP port; 0 (default) picks a free one")
    parser.add_argument("--port-file", help="write the bound port here (atomically)")
    parser.add_argument("--host", default=LISTEN_HOST,
                        help="listen address; only 127.0.0.1 is accepted")
    parser.add_argument("--faults", help='fault rules: JSON {"rules": [...]} or @file')
    parser.add_argument("--token", help="require 'Authorization: Bearer TOKEN'")
    parser.add_argument("--oauth2", metavar="CLIENT_ID:SECRET[:TTL]",
                        help="serve POST /oauth/token and require its bearer tokens")
    parser.add_argument("--oauth2-delay-ms", type=float, default=0,
                        help="delay of every token answer; the token's life starts before it")
    parser.add_argument("--easypost", metavar="KEY", help="EasyPost API key for /v2/trackers")
    parser.add_argument("--aftership", metavar="KEY", help="AfterShip key for /trackings")
    parser.add_argument("--kuaidi100-key", metavar="KEY", help="Kuaidi100 key for /poll")
    parser.add_argument("--kuaidi100", metavar="CUSTOMER:KEY",
                        help="require X-Kuaidi100-Customer and X-Kuaidi100-Sign headers")
    parser.add_argument("--require-header", metavar="NAME:VALUE",
                        help="require header NAME with exactly VALUE on carrier endpoints")
    parser.add_argument("--seed", type=int, help="seed for fault rates and tracking numbers")
    parser.add_argument("--latency-ms", type=float, default=0,
                        help="fixed delay added to every carrier request")
    parser.add_argument("--keepalive-timeout", type=float, metavar="S",
                        help="close a keep-alive connection idle for S seconds between requests")
    parser.add_argument("--log", help="append one line per request to FILE ('-' = stderr)")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain")
    parser.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument("--tls-client-ca", metavar="PEM",
                        help="require a client certificate issued by these CAs")
    parser.add_argument("--tls-client-optional", action="store_true",
                        help="with --tls-client-ca: ask for a client certificate, accept none")
    parser.add_argument("--tls-max", choices=("1.2", "1.3"), help="highest TLS version offered")
    parser.add_argument("--selftest", action="store_true",
                        help="run the built-in self-test and exit")
    args = parser.parse_args(argv)

    if args.selftest:
        return selftest()
    if args.host != LISTEN_HOST:
        parser.error("--host: only %s is allowed (got %r)" % (LISTEN_HOST, args.host))
    if not 0 <= args.port <= 65535:
        parser.error("--port must be in 0..65535")
    if args.latency_ms < 0:
        parser.error("--latency-ms must be >= 0")
    rules = []
    if args.faults:
        try:
            rules = load_fault_arg(args.faults)
        except (ConfigError, OSError) as exc:
            parser.error("--faults: %s" % exc)

    log_fh = None
    if args.log == "-":
        log_fh = sys.stderr
    elif args.log:
        log_fh = open(args.log, "a", encoding="utf-8")

    state = SimState(args.seed, rules)
    state.tracker = pusher.Tracker(state)
    state.biller = fee_sim.Biller(state)
    try:
        kd = tuple(args.kuaidi100.split(":", 1)) if args.kuaidi100 else None
        if kd is not None and len(kd) != 2:
            parser.error("--kuaidi100 takes CUSTOMER:KEY")
        required = None
        if args.require_header:
            name, sep, value = args.require_header.partition(":")
            if not sep or not name:
                parser.error("--require-header takes NAME:VALUE")
            required = (name, value)
        oauth = None
        if args.oauth2:
            parts = args.oauth2.split(":")
            if len(parts) not in (2, 3):
                parser.error("--oauth2 takes CLIENT_ID:SECRET[:TTL]")
            oauth = OAuthState(parts[0], parts[1], int(parts[2]) if len(parts) == 3 else 3600,
                               args.oauth2_delay_ms)
        server = CarrierServer(state, token=args.token, kuaidi100=kd,
                               oauth=oauth, require_header=required,
                               tls=tls_context(args, parser),
                               latency_ms=args.latency_ms, log_fh=log_fh, port=args.port)
    except (OSError, ssl.SSLError) as exc:
        print("carrier_sim: cannot listen on %s:%d: %s" % (LISTEN_HOST, args.port, exc),
              file=sys.stderr)
        return 1
    port = server.server_address[1]
    server.keepalive_timeout = args.keepalive_timeout
    server.track = track_sim.TrackState(args.easypost, args.aftership, args.kuaidi100_key)

    # SIGTERM/SIGINT only set a flag: server.shutdown() must not be called from
    # the thread that runs serve_forever(), so serving happens in a thread.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    # SIGUSR1: every thread's stack to stderr, for a simulator that stopped
    # answering (the soak sends it)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                               name="carrier_sim", daemon=True)
    serving.start()

    if args.port_file:
        write_port_file(args.port_file, port)
    try:
        print("carrier_sim listening on %s:%d%s" % (LISTEN_HOST, port,
                                                   " (TLS)" if server.tls else ""), flush=True)
    except OSError:
        pass    # nobody reads stdout; not a reason to die
    server.log("listening on %s:%d" % (LISTEN_HOST, port))

    while not stop.wait(0.5) and serving.is_alive():
        pass
    server.shutdown()
    server.server_close()
    server.log("stopped")
    return 0


# --------------------------------------------------------------------------
# Self-test (--selftest): runs a server in-process and talks to it over HTTP
# --------------------------------------------------------------------------

class SelftestFailure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise SelftestFailure(message)


class TestClient:
    """A tiny http.client wrapper: one kept-alive connection, plus fresh
    connections for requests that are expected to break theirs."""

    def __init__(self, port):
        self.port = port
        self.conn = self.connect()

    def connect(self):
        return http.client.HTTPConnection(LISTEN_HOST, self.port, timeout=10)

    def call(self, method, path, body=None, key=None, headers=None, fresh=False):
        hdrs = {}
        if body is not None:
            if not isinstance(body, bytes):
                body = json.dumps(body).encode("utf-8")
            hdrs["Content-Type"] = "application/json"
        if key is not None:
            hdrs["Idempotency-Key"] = key
        hdrs.update(headers or {})
        conn = self.connect() if fresh else self.conn
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            if fresh:
                conn.close()
        return resp.status, resp, data

    def json(self, method, path, body=None, key=None, expect=200, **kw):
        status, resp, data = self.call(method, path, body, key, **kw)
        check(status == expect, "%s %s: expected %d, got %d %r"
              % (method, path, expect, status, data[:200]))
        return json.loads(data)

    def expect_reset(self, path, body, key):
        """The request must fail with an RST (not a clean close)."""
        try:
            status, _, _ = self.call("POST", path, body, key, fresh=True)
        except http.client.RemoteDisconnected:
            raise SelftestFailure("%s: expected an RST, got a clean close" % key)
        except ConnectionResetError:
            return
        raise SelftestFailure("%s: expected an RST, got HTTP %d" % (key, status))

    def expect_close(self, path, body, key):
        """The request must end with an empty reply (FIN, no bytes)."""
        try:
            status, _, _ = self.call("POST", path, body, key, fresh=True)
        except http.client.RemoteDisconnected:
            return
        raise SelftestFailure("%s: expected an empty reply, got HTTP %d" % (key, status))


def order(ref, **extra):
    body = {"order_ref": ref, "order": {"lines": [{"sku": "A-1", "qty": 2}]}}
    body.update(extra)
    return json.dumps(body).encode("utf-8")


def run_selftest(server, port):
    c = TestClient(port)
    state = server.state

    # Create, then replay byte for byte, then reuse the key with another body.
    status, resp, first = c.call("POST", "/shipments", order("SO-1"), "k-1")
    check(status == 201, "create: got %d %r" % (status, first))
    created = json.loads(first)
    check(set(created) == {"id", "tracking_number", "label_url", "status", "fees", "order_ref"},
          "create: unexpected fields %s" % sorted(created))
    check(created["id"] == "shp_1" and created["status"] == "pre_transit", "create: %r" % created)
    check(re.fullmatch(r"SIM\d{12}", created["tracking_number"]), "bad tracking number")
    check(created["label_url"] == "https://labels.sim.invalid/shp_1.pdf", "bad label_url")
    check(isinstance(created["fees"][0]["amount"], str)
          and isinstance(created["fees"][1]["amount"], float), "fee amount types")
    check(resp.getheader("Idempotent-Replayed") is None, "first answer marked as replay")
    first_tracking = created["tracking_number"]

    status, resp, again = c.call("POST", "/shipments", order("SO-1"), "k-1")
    check(status == 201 and again == first, "replay: not byte-identical")
    check(resp.getheader("Idempotent-Replayed") == "true", "replay: header missing")
    c.json("POST", "/shipments", order("SO-1", note="changed"), "k-1", expect=422)

    # Reads and basic validation.
    check(c.json("GET", "/shipments/shp_1")["order_ref"] == "SO-1", "GET shipment")
    c.json("GET", "/shipments/shp_999", expect=404)
    c.json("POST", "/shipments", order("SO-2"), None, expect=400)        # no key
    c.json("POST", "/shipments", b"{not json", "k-bad", expect=400)
    c.json("POST", "/shipments", b'{"order": {}}', "k-noref", expect=400)

    # 409 while the first request with a key is still in progress: the first
    # attempt is slowed down, the second one (attempt 2) is not.
    c.json("POST", "/_sim/faults", {"rules": [
        {"fault": "slow", "ms": 600, "match_order_ref": "^SLOW-", "first_attempts": 1}]})
    slow_result = {}

    def slow_request():
        try:
            slow_result["answer"] = c.call("POST", "/shipments", order("SLOW-1"),
                                           "k-slow", fresh=True)
        except Exception as exc:     # reported by the main thread
            slow_result["error"] = exc

    worker = threading.Thread(target=slow_request)
    worker.start()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        with state.lock:
            entry = state.ledger.get("k-slow")
            if entry is not None and not entry.done:
                break
        time.sleep(0.01)
    else:
        raise SelftestFailure("slow request never reached the ledger")
    check(c.json("POST", "/shipments", order("SLOW-1"), "k-slow", expect=409)
          == {"error": "in progress"}, "409 body")
    worker.join(5)
    check("error" not in slow_result, "slow request failed: %r" % slow_result.get("error"))
    check(slow_result.get("answer", (0,))[0] == 201, "slow request did not get 201")
    status, resp, _ = c.call("POST", "/shipments", order("SLOW-1"), "k-slow")
    check(status == 201 and resp.getheader("Idempotent-Replayed") == "true",
          "replay after slow request")

    # One rule per remaining fault type, each on the first attempt only.
    c.json("POST", "/_sim/faults", {"rules": [
        {"fault": "status", "status": 503, "retry_after": "1",
         "reset_header": "1700000000", "match_order_ref": "^F503-", "first_attempts": 1},
        {"fault": "status", "status": 201, "body_base64": "H4sIAAAAAAACA6uuBQBDv6ajAgAAAA==",
         "content_type": "application/json; charset=GBK", "content_encoding": "gzip",
         "match_order_ref": "^FGZ-", "first_attempts": 1},
        {"fault": "reset_before", "match_order_ref": "^FRB-", "first_attempts": 1},
        {"fault": "reset_after", "match_order_ref": "^FRA-", "first_attempts": 1},
        {"fault": "malformed", "match_order_ref": "^FMAL-", "first_attempts": 1},
        {"fault": "oversized", "match_order_ref": "^FBIG-", "first_attempts": 1},
        {"fault": "close", "match_order_ref": "^FCLOSE-", "first_attempts": 1},
    ]})

    def recorded(ref):
        return c.json("GET", "/_sim/shipments?order_ref=" + ref)

    status, resp, _ = c.call("POST", "/shipments", order("F503-1"), "k-503")
    check(status == 503 and resp.getheader("Retry-After") == "1"
          and resp.getheader("X-RateLimit-Reset") == "1700000000", "status fault")
    check(recorded("F503-1") == [], "503 fault recorded a shipment")
    status, resp, _ = c.call("POST", "/shipments", order("F503-1"), "k-503")
    check(status == 201 and resp.getheader("Idempotent-Replayed") is None, "retry after 503")

    status, resp, data = c.call("POST", "/shipments", order("FGZ-1"), "k-gz")
    check(status == 201 and resp.getheader("Content-Encoding") == "gzip"
          and resp.getheader("Content-Type") == "application/json; charset=GBK"
          and gzip.decompress(data) == b"{}", "status fault's content type and coding")

    c.expect_reset("/shipments", order("FRB-1"), "k-rb")
    check(recorded("FRB-1") == [], "reset_before recorded a shipment")
    c.json("POST", "/shipments", order("FRB-1"), "k-rb", expect=201)

    c.expect_reset("/shipments", order("FRA-1"), "k-ra")
    check(len(recorded("FRA-1")) == 1, "reset_after did not record the shipment")
    status, resp, _ = c.call("POST", "/shipments", order("FRA-1"), "k-ra")
    check(status == 201 and resp.getheader("Idempotent-Replayed") == "true",
          "retry after reset_after is not a replay")

    status, _, bad = c.call("POST", "/shipments", order("FMAL-1"), "k-mal")
    check(status == 201 and parse_json(bad) is _NOT_JSON, "malformed: body parsed")
    status, resp, good = c.call("POST", "/shipments", order("FMAL-1"), "k-mal")
    check(status == 201 and resp.getheader("Idempotent-Replayed") == "true"
          and good.startswith(bad) and json.loads(good)["order_ref"] == "FMAL-1",
          "retry after malformed")

    status, _, big = c.call("POST", "/shipments", order("FBIG-1"), "k-big")
    check(status == 201 and len(big) == DEFAULT_OVERSIZED_BYTES, "oversized: size %d" % len(big))
    check(json.loads(big)["order_ref"] == "FBIG-1", "oversized: not the shipment")
    status, _, small = c.call("POST", "/shipments", order("FBIG-1"), "k-big")
    check(status == 201 and len(small) < 1024, "retry after oversized")

    c.expect_close("/shipments", order("FCLOSE-1"), "k-close")
    check(recorded("FCLOSE-1") == [], "close fault recorded a shipment")
    c.json("POST", "/shipments", order("FCLOSE-1"), "k-close", expect=201)

    # PATCH (and its replay), cancel twice, events.
    patched = c.json("PATCH", "/shipments/shp_1", {"weight_kg": 2.5}, "u-1")
    check(patched["updates"] == 1, "PATCH did not count the update")
    status, resp, _ = c.call("PATCH", "/shipments/shp_1", {"weight_kg": 2.5}, "u-1")
    check(status == 200 and resp.getheader("Idempotent-Replayed") == "true", "PATCH replay")
    c.json("PATCH", "/shipments/shp_999", {"weight_kg": 1}, "u-2", expect=404)
    c.json("POST", "/shipments/shp_2/cancel", None, "c-1")
    cancelled = c.json("POST", "/shipments/shp_2/cancel", None, "c-2")
    check(cancelled["status"] == "cancelled", "second cancel")
    c.json("POST", "/shipments/shp_999/cancel", None, "c-3", expect=404)
    events = c.json("GET", "/shipments/shp_2/events")["events"]
    check([e["status"] for e in events] == ["pre_transit", "cancelled"], "events %r" % events)

    # A second shipment for the same order (different key) is a duplicate.
    c.json("POST", "/shipments", order("SO-1"), "k-dup", expect=201)

    # Bearer token (toggled in-process); the 401 is not stored in the ledger.
    server.token = "s3cret"
    c.json("POST", "/shipments", order("AUTH-1"), "k-auth", expect=401)
    c.json("POST", "/shipments", order("AUTH-1"), "k-auth", expect=201,
           headers={"Authorization": "Bearer s3cret"})
    server.token = None

    stats = c.json("GET", "/_sim/stats")
    expected = {
        "requests": 34,
        "by_status": {"200": 6, "201": 15, "400": 3, "401": 1, "404": 3,
                      "409": 1, "422": 1, "503": 1},
        "faults_injected": {"close": 1, "malformed": 1, "oversized": 1, "reset_after": 1,
                            "reset_before": 1, "slow": 1, "status": 2},
        "shipments": 10, "keys": 10, "orders": 9, "duplicate_orders": 1,
        "replays": 6, "conflicts_409": 1, "mismatch_422": 1, "cancelled": 1, "updates": 1,
        "list_pages": 0, "expect_100": 0, "no_identity": 0,
    }
    check(stats == expected, "stats mismatch:\n got %s\nwant %s"
          % (json.dumps(stats, sort_keys=True), json.dumps(expected, sort_keys=True)))
    listing = c.json("GET", "/_sim/shipments")
    check([s["id"] for s in listing] == ["shp_%d" % i for i in range(1, 11)], "listing order")
    check(len(c.json("GET", "/_sim/shipments?order_ref=SO-1")) == 2, "order_ref filter")
    attempts = c.json("GET", "/_sim/attempts")
    k1 = attempts["k-1"]
    check(k1["requests"] == 3 and k1["order_ref"] == "SO-1" and len(k1["arrived"]) == 3
          and k1["arrived"] == sorted(k1["arrived"]), "attempts: %r" % k1)
    check(sum(a["requests"] for a in attempts.values()) <= stats["requests"], "attempts: more than requests")

    # Keep-alive with Nagle off: many small requests on one socket are fast.
    c.call("GET", "/shipments/shp_1")
    sock = c.conn.sock
    began = time.monotonic()
    for _ in range(50):
        c.call("GET", "/shipments/shp_1")
    elapsed = time.monotonic() - began
    check(c.conn.sock is sock, "keep-alive: connection was not reused")
    check(elapsed < 1.0, "keep-alive: 50 requests took %.2fs" % elapsed)

    # Reset keeps the rules but clears everything else; the seed makes the
    # tracking numbers repeat. A `count`-limited rule fires only that often.
    c.json("POST", "/_sim/reset")
    stats = c.json("GET", "/_sim/stats")
    check(stats["requests"] == 0 and stats["shipments"] == 0 and stats["by_status"] == {},
          "reset did not clear: %r" % stats)
    check(len(c.json("GET", "/_sim/faults")["rules"]) == 7, "reset dropped the rules")
    c.json("POST", "/_sim/faults", {"rules": [{"fault": "status", "status": 500, "count": 1}]})
    c.json("POST", "/shipments", order("SO-1"), "k-1", expect=500)
    again = c.json("POST", "/shipments", order("SO-1"), "k-1", expect=201)
    check(again["tracking_number"] == first_tracking, "seeded tracking numbers differ")
    c.json("POST", "/_sim/faults", {"rules": [{"fault": "nope"}]}, expect=400)

    # A held answer waits for /_sim/release, not its 30 s; a release made
    # before a request arrived does not let it go.
    c.json("POST", "/_sim/faults", {"rules": [
        {"fault": "slow", "ms": 30000, "held": True, "match_order_ref": "^HELD-"}]})
    c.json("POST", "/_sim/release")
    held = {}

    def held_request():
        try:
            held["answer"] = c.call("POST", "/shipments", order("HELD-1"), "k-held", fresh=True)
        except Exception as exc:     # reported by the main thread
            held["error"] = exc

    worker = threading.Thread(target=held_request)
    worker.start()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and "k-held" not in state.ledger:
        time.sleep(0.01)
    time.sleep(0.3)
    check(worker.is_alive(), "a held answer went before its release")
    c.json("POST", "/_sim/release")
    worker.join(5)
    check(not worker.is_alive(), "the release did not let the held answer go")
    check("error" not in held and held.get("answer", (0,))[0] == 201,
          "held request: %r" % held)
    c.json("POST", "/_sim/faults", {"rules": [{"fault": "slow", "ms": 1, "held": 1}]}, expect=400)

    # big_header: recorded, answered with one long header line; the
    # attempts list each request's method and path as they came
    c.json("POST", "/_sim/faults", {"rules": [
        {"fault": "big_header", "bytes": 3000, "match_order_ref": "^BIGH-"}]})
    status, resp, _ = c.call("POST", "/shipments", order("BIGH-1"), "k-bigh")
    check(status == 201 and len(resp.getheader("X-Padding") or "") == 3000,
          "big_header: %r %r" % (status, len(resp.getheader("X-Padding") or "")))
    check(len(c.json("GET", "/_sim/shipments?order_ref=BIGH-1")) == 1, "big_header: not recorded")
    c.call("PATCH", "/shipments/%2E%2E", dumps({"order_ref": "X"}), "k-dots")
    check(c.json("GET", "/_sim/attempts")["k-dots"]["paths"] == ["PATCH /shipments/%2E%2E"],
          "attempts: paths %r" % c.json("GET", "/_sim/attempts")["k-dots"])
    c.json("POST", "/_sim/faults", {"rules": []})
    selftest_records(c)
    c.conn.close()


def run_tracking_selftest():
    """A shipment's tracking is one story however it is asked for: an event
    id pulled before the shipment's timeline existed (the poller asks as
    soon as the waybill is known) and pulled again on every step after
    carries the same event, and in event time a shipment's events come in
    the order they happened.  pg_shipsync stores the first version of an
    event id and folds a shipment's events in event time, so an event
    served first with another time is folded out of place for good."""
    state = SimState(seed=7)
    tracker = state.tracker = pusher.Tracker(state)
    sids = []
    for i in range(40):
        status, body = state.create_shipment("trk-%d" % i, {"order_ref": "T-%d" % i})
        check(status == 201, "tracking: create answered %d" % status)
        sids.append(json.loads(body)["id"])
    state.cancel_shipment(sids[-1])         # cancelled before it is tracked
    seen = {}

    def pull_all():
        for sid in sids:
            status, body = state.get_events(sid)
            check(status == 200, "tracking: pull of %s answered %d" % (sid, status))
            for e in json.loads(body)["events"]:
                first = seen.setdefault(e["id"], e)
                check(e == first, "tracking: event %s was %r, then %r" % (e["id"], first, e))

    pull_all()
    check(len(seen) == len(sids) + 1, "tracking: %d events before the clock ran" % len(seen))
    tracker.configure({"url": "http://127.0.0.1:9/", "seed": 7})
    for _ in range(9):
        tracker.advance(1)
        pull_all()
    check(len(seen) > 4 * len(sids), "tracking: only %d events in 9 steps" % len(seen))
    for sid in sids:
        mine = [e for e in seen.values() if e["id"].startswith("evt_%s_" % sid)]
        mine.sort(key=lambda e: datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00")))
        check([e["id"] for e in mine] == ["evt_%s_%d" % (sid, n + 1) for n in range(len(mine))],
              "tracking: %s in event time: %s" % (sid, ", ".join(
                  "%s %s at %s" % (e["id"], e["status"], e["occurred_at"]) for e in mine)))


def selftest_records(c):
    """The carrier's own records: its list, and the faults of reconciliation."""
    c.json("POST", "/_sim/reset")
    c.json("POST", "/_sim/faults", {"rules": [
        {"fault": "forget", "match_order_ref": "^LOST-"},
        {"fault": "duplicate", "match_order_ref": "^TWICE-"}]})
    lost = c.json("POST", "/shipments", order("LOST-1"), "r-lost", expect=201)
    c.json("POST", "/shipments", order("TWICE-1"), "r-twice", expect=201)
    for i in range(3):
        c.json("POST", "/shipments", order("OK-%d" % i), "r-ok-%d" % i, expect=201)
    c.json("GET", "/shipments/" + lost["id"], expect=404)
    check(len(c.json("GET", "/_sim/shipments?order_ref=TWICE-1")) == 2, "duplicate: one shipment")
    orphans = c.json("POST", "/_sim/orphans", {"count": 2, "prefix": "GHOST-", "status": "in_transit"})
    check(len(orphans["ids"]) == 2, "orphans: %r" % orphans)
    moved = c.json("POST", "/_sim/move", {"order_ref": "^OK-0$", "status": "delivered"})
    check(len(moved["ids"]) == 1, "move: %r" % moved)

    # the list, two at a time, oldest change first: OK-0 moved last
    seen, cursor = [], None
    for _ in range(10):
        page = c.json("GET", "/shipments?updated_since=2000-01-01T00:00:00Z&limit=2"
                      + ("&cursor=" + cursor if cursor else ""))
        check(len(page["shipments"]) <= 2, "page too long")
        seen += page["shipments"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    refs = [x["order_ref"] for x in seen]
    check(refs == ["TWICE-1", "TWICE-1", "OK-1", "OK-2", "GHOST-1", "GHOST-2", "OK-0"],
          "list order %r" % refs)
    check(seen[-1]["status"] == "delivered" and set(seen[0]) ==
          {"id", "order_ref", "tracking_number", "status", "updated_at", "fees"}, "list item")
    future = c.json("GET", "/shipments?updated_since=2999-01-01T00:00:00Z")
    check(future == {"shipments": [], "next_cursor": None}, "nothing changed since")
    c.json("GET", "/shipments?cursor=nope:1", expect=400)
    c.json("GET", "/shipments?limit=0", expect=400)
    c.json("GET", "/shipments?updated_since=yesterday", expect=400)


def selftest():
    started = time.monotonic()
    server = CarrierServer(SimState(seed=7))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    try:
        run_selftest(server, server.server_address[1])
        run_tracking_selftest()
    except SelftestFailure as exc:
        print("selftest FAILED: %s" % exc, file=sys.stderr)
        return 1
    except Exception:
        print("selftest FAILED with an exception:\n%s" % traceback.format_exc(),
              file=sys.stderr)
        return 1
    finally:
        server.shutdown()
        server.server_close()
    print("selftest ok", flush=True)
    print("(selftest took %.1fs)" % (time.monotonic() - started), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
