"""pusher.py - tracking for the carrier simulator: timelines, pushes, pulls.

Every shipment the simulator creates gets a realistic tracking timeline
(pre_transit, in_transit, out_for_delivery, delivered, with failed
deliveries, exceptions, returns and pickups along some paths), laid out on a
clock the test controls: POST /_sim/tracking/advance moves it, and the
events that happen are pushed, as webhooks of the configured dialect, to the
URL the test gave -- with the faults asked for: duplicated, reordered,
delayed, dropped and forged pushes.  GET /shipments/{id}/events (the pull
endpoint of the generic contract) serves the events that happened so far,
with the same event ids as the pushes.

Control API (under /_sim/, never faulted):
    POST /_sim/tracking/config   {"url", "dialect", "secret", "seed",
                                  "duplicate", "reorder", "delay", "drop",
                                  "forge"}   (rates 0..1)
    POST /_sim/tracking/advance  {"steps": N}   -> what was pushed
    POST /_sim/tracking/flush    {}  send what was delayed; wait until sent
    GET  /_sim/tracking/expected     {order_ref: {tracking_number, status}}
    GET  /_sim/tracking/stats

Dialects: generic (Standard Webhooks), easypost (X-Hmac-Signature, the
Tracker's whole history), aftership (aftership-hmac-sha256, checkpoints),
kuaidi100 (form param + sign, the whole history), sf_express (WaybillRoute,
unsigned).  Python standard library only.
"""

import base64
import hashlib
import hmac
import http.client
import json
import random
import threading
import time
import unicodedata
from collections import deque
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, urlsplit

# Step 0 of the tracking clock.  Every event time the simulator serves,
# pushed or pulled, is on this one clock (an hour a step), never on the wall
# clock: pg_shipsync folds a shipment's events in event time, so a time
# from another clock would put an event out of place.
BASE_TIME = datetime(2026, 3, 1, tzinfo=timezone.utc)

# (weight, statuses): every path is consistent with the status rules, so
# the status the simulator holds is the last event that happened.
PATHS = [
    (60, ["pre_transit", "in_transit", "in_transit", "out_for_delivery", "delivered"]),
    (12, ["pre_transit", "in_transit", "out_for_delivery", "delivery_failed",
          "out_for_delivery", "delivered"]),
    (8, ["pre_transit", "in_transit", "exception", "in_transit", "out_for_delivery",
         "delivered"]),
    (5, ["pre_transit", "in_transit", "out_for_delivery", "delivery_failed", "returning",
         "returned"]),
    (5, ["pre_transit", "in_transit", "out_for_delivery", "available_for_pickup",
         "delivered"]),
    (10, ["pre_transit", "in_transit", "in_transit"]),
]

TEXT = {
    "pre_transit": "Shipment created, label issued",
    "in_transit": "Arrived at sorting center",
    "out_for_delivery": "Out for delivery",
    "delivery_failed": "Delivery attempt failed: recipient not available",
    "exception": "Held at customs, documents missing",
    "returning": "Returning to sender",
    "returned": "Returned to sender",
    "available_for_pickup": "Available for pickup at parcel locker",
    "delivered": "Delivered, signed by recipient",
}

# canonical status -> each dialect's raw status (the seeded status_map
# rows map them back)
RAW = {
    "easypost": {"pre_transit": "pre_transit", "in_transit": "in_transit",
                 "out_for_delivery": "out_for_delivery", "delivery_failed": "failure",
                 "exception": "error", "returning": "return_to_sender",
                 "returned": "return_to_sender", "available_for_pickup": "available_for_pickup",
                 "delivered": "delivered"},
    "aftership": {"pre_transit": "InfoReceived", "in_transit": "InTransit",
                  "out_for_delivery": "OutForDelivery", "delivery_failed": "AttemptFail",
                  "exception": "Exception", "returning": "Exception",
                  "returned": "Exception", "available_for_pickup": "AvailableForPickup",
                  "delivered": "Delivered"},
    "kuaidi100": {"pre_transit": "1", "in_transit": "0", "out_for_delivery": "5",
                  "delivery_failed": "2", "exception": "2", "returning": "6",
                  "returned": "4", "available_for_pickup": "5", "delivered": "3"},
    "sf_express": {"pre_transit": "50", "in_transit": "30", "out_for_delivery": "44",
                   "delivered": "80"},
}
AFTERSHIP_SUBTAG = {"returning": "Exception_010", "returned": "Exception_011"}
KUAIDI100_TEXT = {"delivery_failed": "派送不成功，联系不上收件人",
                  "available_for_pickup": "已放入快递柜，请凭取件码取件"}


def clock_time(step):
    """The time of a step of the tracking clock."""
    return BASE_TIME + timedelta(hours=step)


def created_event(sid, step):
    """A shipment's first event, its label created at the step of the
    tracking clock when the simulator created it.  A pull answers it before
    the shipment has a timeline; its timeline starts with this very event
    (pushed at the timeline's first step), so that the event id means one
    event, with one time, however it arrives."""
    return {"id": "evt_%s_1" % sid, "status": "pre_transit", "at": clock_time(step),
            "location": "Origin", "description": TEXT["pre_transit"]}


def event_json(e, tracking_number):
    """An event as the generic contract's pushes and pulls carry it."""
    out = {"id": e["id"], "tracking_number": tracking_number, "status": e["status"],
           "occurred_at": e["at"].strftime("%Y-%m-%dT%H:%M:%SZ")}
    if e.get("location") is not None:
        out["location"] = e["location"]
    out["description"] = e["description"]
    return out


def _std_webhooks_headers(secret, msg_id, body):
    key = base64.b64decode(secret[6:] if secret.startswith("whsec_") else secret)
    ts = str(int(time.time()))
    mac = hmac.new(key, ("%s.%s." % (msg_id, ts)).encode() + body, hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": ts,
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
            "Content-Type": "application/json"}


def post(conn, url, body, headers, timeout=30):
    """POST body to url over conn (a kept-alive connection, or None), once
    more on a new connection if it fails; (status as text or "error",
    the connection to use next)."""
    url = urlsplit(url)
    for _ in range(2):
        try:
            if conn is None:
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
            conn.request("POST", url.path or "/", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return str(resp.status), conn
        except (OSError, http.client.HTTPException):
            if conn is not None:
                conn.close()
            conn = None
    return "error", conn


class Tracker:
    """Timelines, the clock, the push queue and its sender thread."""

    def __init__(self, state):
        self.state = state                 # SimState: its shipments and lock
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.clock = 0
        self.timelines = {}                # shipment id -> [event]
        self.config = None
        self.queue = deque()               # pushes ready to send
        self.held = []                     # delayed pushes, sent at the next advance
        self.sending = 0
        self.msg_seq = 0
        self.rng = random.Random(0)
        self.stats = {"events": 0, "pushes": 0, "sent": 0, "dropped": 0, "duplicated": 0,
                      "reordered": 0, "delayed": 0, "forged": 0, "answers": {}}
        self.sender = threading.Thread(target=self._send_loop, name="pusher", daemon=True)
        self.sender.start()

    # --- control ------------------------------------------------------------

    def configure(self, cfg):
        if not isinstance(cfg, dict):
            raise ValueError("config must be a JSON object")
        url = cfg.get("url")
        if url is not None and not (isinstance(url, str) and url.startswith("http://127.0.0.1:")):
            raise ValueError("url must be http://127.0.0.1:PORT/...")
        dialect = cfg.get("dialect", "generic")
        if dialect not in ("generic", "easypost", "aftership", "kuaidi100", "sf_express"):
            raise ValueError("unknown dialect %r" % dialect)
        for k in ("duplicate", "reorder", "delay", "drop", "forge"):
            v = cfg.get(k, 0)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError("%s must be a rate between 0 and 1" % k)
        with self.lock:
            self.config = dict(cfg, dialect=dialect)
            self.rng = random.Random("push:%s" % cfg.get("seed", 1))
        return self.config

    def _timeline(self, rec):
        """The deterministic timeline of one shipment (caller holds the lock)."""
        r = random.Random("timeline:%s:%s" % (self.config.get("seed", 1) if self.config else 1,
                                              rec["id"]))
        total = sum(w for w, _ in PATHS)
        pick = r.uniform(0, total)
        for weight, path in PATHS:
            pick -= weight
            if pick <= 0:
                break
        start = self.clock + 1 + r.randrange(2)
        events = []
        for j, status in enumerate(path):
            step = start + j
            # drawn for the first event too, so that the others stay as they were
            at = BASE_TIME + timedelta(hours=step, minutes=r.randrange(60))
            location = "Hub %d" % r.randrange(40)
            if j == 0:
                # every path starts with the label created, which happened
                # with the shipment; it is pushed at the first step
                events.append(dict(created_event(rec["id"], rec["created_step"]), step=step))
                continue
            events.append({"id": "evt_%s_%d" % (rec["id"], j + 1), "step": step,
                           "status": status, "at": at, "location": location,
                           "description": TEXT[status]})
        return events

    def now(self):
        """The step the tracking clock is at."""
        with self.lock:
            return self.clock

    def advance(self, steps):
        """Move the clock; queue the pushes of what happened."""
        with self.state.lock:
            recs = [dict(id=r["id"], order_ref=r["order_ref"],
                         tracking_number=r["tracking_number"], status=r["status"],
                         created_step=r["created_step"])
                    for r in self.state.shipments.values()]
        pushed = 0
        with self.lock:
            if self.config is None or "url" not in self.config:
                raise ValueError("configure a push url first")
            for rec in recs:
                if rec["id"] not in self.timelines and rec["status"] != "cancelled":
                    self.timelines[rec["id"]] = (rec, self._timeline(rec))
            # what was delayed goes first (its faults were drawn already),
            # then this advance's pushes
            order = [(i - len(self.held), 0, push) for i, push in enumerate(self.held)]
            self.held = []
            batch = []
            for _ in range(steps):
                self.clock += 1
                for sid, (rec, events) in self.timelines.items():
                    now = [e for e in events if e["step"] == self.clock]
                    if now:
                        self.stats["events"] += len(now)
                        batch.append(self._push(rec, events, now))
                        if self.rng.random() < self.config.get("forge", 0):
                            batch.append(self._forged(rec, events))
            for i, push in enumerate(batch):
                if push is None:
                    continue
                self.stats["pushes"] += 1
                if not push.get("forged") and self.rng.random() < self.config.get("drop", 0):
                    self.stats["dropped"] += 1
                    continue
                if self.rng.random() < self.config.get("delay", 0):
                    self.stats["delayed"] += 1
                    self.held.append(push)
                    continue
                pos = i
                if self.rng.random() < self.config.get("reorder", 0):
                    self.stats["reordered"] += 1
                    pos = i + self.rng.randrange(2, 60)
                order.append((pos, i, push))
                if self.rng.random() < self.config.get("duplicate", 0):
                    self.stats["duplicated"] += 1
                    order.append((i + self.rng.randrange(1, 60), i, push))
            order.sort(key=lambda x: (x[0], x[1]))
            for _, _, push in order:
                self.queue.append(push)
                pushed += 1
            self.cond.notify_all()
        return {"clock": self.clock, "queued": pushed}

    def flush(self, timeout=280):
        """Queue what was delayed, and wait until everything was sent."""
        with self.lock:
            self.queue.extend(self.held)
            self.held = []
            self.cond.notify_all()
            deadline = time.time() + timeout
            while (self.queue or self.sending) and time.time() < deadline:
                self.cond.wait(0.2)
            return {"clock": self.clock, "left": len(self.queue)}

    def expected(self):
        """order_ref -> the tracking number and the status the simulator holds."""
        with self.lock:
            out = {}
            for sid, (rec, events) in self.timelines.items():
                happened = [e for e in events if e["step"] <= self.clock]
                out[rec["order_ref"]] = {
                    "id": sid, "tracking_number": rec["tracking_number"],
                    "status": happened[-1]["status"] if happened else None,
                    "events": len(happened)}
            return out

    def get_stats(self):
        with self.lock:
            return dict(self.stats, clock=self.clock, queue=len(self.queue),
                        held=len(self.held), answers=dict(self.stats["answers"]))

    def pull_events(self, sid):
        """Events of a shipment that happened so far, or None if it has no
        timeline.  The first, the label created, happened with the shipment,
        before its first step: a pull answered it before the timeline
        existed and keeps answering it."""
        with self.lock:
            if sid not in self.timelines:
                return None
            rec, events = self.timelines[sid]
            return [event_json(e, rec["tracking_number"])
                    for j, e in enumerate(events) if j == 0 or e["step"] <= self.clock]

    # --- pushes -------------------------------------------------------------

    def _push(self, rec, events, now):
        """The push of the events `now` (full history for the dialects that send it)."""
        dialect = self.config["dialect"]
        happened = [e for e in events if e["step"] <= self.clock]
        if dialect == "generic":
            body = json.dumps({"events": [event_json(e, rec["tracking_number"]) for e in now]},
                              ensure_ascii=False).encode()
            return {"body": body, "sign": "generic"}
        if dialect == "easypost":
            details = [{"object": "TrackingDetail", "message": e["description"],
                        "status": RAW["easypost"][e["status"]],
                        "status_detail": "arrived_at_facility",
                        "datetime": e["at"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "tracking_location": {"city": e["location"], "country": "CN"}}
                       for e in happened]
            body = json.dumps({"id": "evt_%s_%d" % (rec["id"], self.clock),
                               "object": "Event", "description": "tracker.updated",
                               "result": {"id": "trk_" + rec["id"], "object": "Tracker",
                                          "tracking_code": rec["tracking_number"],
                                          "status": details[-1]["status"],
                                          "tracking_details": details}},
                              separators=(",", ":")).encode()
            return {"body": body, "sign": "easypost"}
        if dialect == "aftership":
            cps = [{"checkpoint_time": e["at"].strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                    "tag": RAW["aftership"][e["status"]],
                    "subtag": AFTERSHIP_SUBTAG.get(e["status"],
                                                   RAW["aftership"][e["status"]] + "_001"),
                    "message": e["description"], "location": e["location"]}
                   for e in happened]
            body = json.dumps({"event_id": "ev_%s_%d" % (rec["id"], self.clock),
                               "event": "tracking_update",
                               "msg": {"id": "as_" + rec["id"],
                                       "tracking_number": rec["tracking_number"],
                                       "tag": cps[-1]["tag"], "checkpoints": cps},
                               "ts": int(time.time())}, separators=(",", ":")).encode()
            return {"body": body, "sign": "aftership"}
        if dialect == "kuaidi100":
            shanghai = timezone(timedelta(hours=8))
            data = [{"context": KUAIDI100_TEXT.get(e["status"], e["description"]),
                     "time": e["at"].astimezone(shanghai).strftime("%Y-%m-%d %H:%M:%S"),
                     "ftime": e["at"].astimezone(shanghai).strftime("%Y-%m-%d %H:%M:%S"),
                     "statusCode": RAW["kuaidi100"][e["status"]], "areaName": e["location"]}
                    for e in reversed(happened)]
            param = json.dumps({"status": "polling", "message": "",
                                "lastResult": {"message": "ok", "nu": rec["tracking_number"],
                                               "com": "sim", "state": data[0]["statusCode"],
                                               "data": data}},
                               ensure_ascii=False, separators=(",", ":"))
            return {"param": param, "sign": "kuaidi100"}
        # sf_express: one route per event, unsigned
        body = json.dumps({"Body": {"WaybillRoute": [
            {"mailno": rec["tracking_number"], "orderid": rec["order_ref"],
             "acceptTime": e["at"].astimezone(timezone(timedelta(hours=8))).strftime(
                 "%Y-%m-%d %H:%M:%S"),
             "acceptAddress": e["location"], "remark": e["description"],
             "opCode": RAW["sf_express"].get(e["status"], "30"), "id": e["id"]}
            for e in now]}}, ensure_ascii=False).encode()
        return {"body": body, "sign": "sf_express"}

    def _forged(self, rec, events):
        """A push claiming delivery, signed with a key that is not the secret."""
        self.stats["forged"] += 1
        fake = {"id": "forged_%s_%d" % (rec["id"], self.clock), "step": self.clock,
                "status": "delivered", "at": BASE_TIME + timedelta(hours=self.clock + 50),
                "location": "Nowhere", "description": "Delivered (forged)"}
        push = self._push(rec, [e for e in events if e["step"] < self.clock] + [fake], [fake])
        push["forged"] = True
        return push

    def _sign(self, push, secret, forged):
        """Headers and body of a push, signed (at sending time) per dialect."""
        if forged:
            secret = {"generic": "whsec_" + base64.b64encode(b"not the secret, forged").decode(),
                      "kuaidi100": "wrong salt"}.get(push["sign"], "not the secret")
        kind = push["sign"]
        if kind == "generic":
            self.msg_seq += 1
            body = push["body"]
            return _std_webhooks_headers(secret, "msg_%d" % self.msg_seq, body), body
        if kind == "easypost":
            key = unicodedata.normalize("NFKD", secret).encode()
            mac = hmac.new(key, push["body"], hashlib.sha256).hexdigest()
            return {"X-Hmac-Signature": "hmac-sha256-hex=" + mac,
                    "Content-Type": "application/json"}, push["body"]
        if kind == "aftership":
            mac = base64.b64encode(hmac.new(secret.encode(), push["body"],
                                            hashlib.sha256).digest()).decode()
            return {"aftership-hmac-sha256": mac, "Content-Type": "application/json"}, push["body"]
        if kind == "kuaidi100":
            sign = hashlib.md5((push["param"] + secret).encode()).hexdigest().upper()
            body = ("param=%s&sign=%s" % (quote(push["param"], safe=""), sign)).encode()
            return {"Content-Type": "application/x-www-form-urlencoded"}, body
        headers = {"Content-Type": "application/json"}
        if forged:
            headers["X-Forged"] = "1"    # unsigned dialect: the receiver's own check
        return headers, push["body"]

    def _send_loop(self):
        conn = None
        while True:
            with self.lock:
                while not self.queue:
                    self.cond.wait()
                push = self.queue.popleft()
                self.sending += 1
                cfg = self.config
                headers, body = self._sign(push, cfg.get("secret", ""), push.get("forged"))
            status, conn = post(conn, cfg["url"], body, headers)
            with self.lock:
                self.sending -= 1
                self.stats["sent"] += 1
                self.stats["answers"][status] = self.stats["answers"].get(status, 0) + 1
                self.cond.notify_all()


def handle_sim(tracker, method, path, body):
    """The /_sim/tracking/ endpoints: (status, JSON object), or None if not ours."""
    if not path.startswith("/_sim/tracking"):
        return None
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return 400, {"error": "body is not valid JSON"}
    try:
        if path == "/_sim/tracking/config" and method == "POST":
            return 200, tracker.configure(payload)
        if path == "/_sim/tracking/advance" and method == "POST":
            steps = payload.get("steps", 1)
            if not isinstance(steps, int) or not 0 <= steps <= 1000:
                return 400, {"error": "steps must be an integer 0..1000"}
            return 200, tracker.advance(steps)
        if path == "/_sim/tracking/flush" and method == "POST":
            return 200, tracker.flush()
        if path == "/_sim/tracking/expected" and method == "GET":
            return 200, tracker.expected()
        if path == "/_sim/tracking/stats" and method == "GET":
            return 200, tracker.get_stats()
    except ValueError as exc:
        return 400, {"error": str(exc)}
    return 404, {"error": "not found"}
