"""fee_sim.py - the carrier's billing, for the carrier simulator.

Every shipment the simulator creates is quoted in its create answer
(carrier_sim.FEES: freight 12.50 and insurance 1.20 CNY).  Once the
tracking clock (pusher.py) has it delivered, this module bills it, by one
of three channels chosen per shipment from a seeded generator:

  push       a signed fee notice (Standard Webhooks, the generic contract's
             {"fees": [...]}) sent to the URL the test configured; with
             rate `revise`, a first notice bills a wrong freight (12.90) and
             a later one corrects it (a revision); with rate `duplicate`, a
             notice is sent twice;
  pull       GET /shipments/{id}/fees answers its lines (404 before, and
             before the test configured the billing);
  statement  nothing until the monthly statement.

One delivered shipment (the first by id) is never billed at all.  The
monthly statement (POST /_sim/fees/statement) bills every delivered
shipment but that one again, with the same line keys, a fraction `wrong`
of them with a wrong freight (13.10), and `unknown` lines for waybills the
simulator never created; it is a CSV as carriers export them (a BOM, CRLF,
Chinese headers, quoted fields), and the answer carries the totals and
every deliberate discrepancy, so a test knows what to expect.

Control API (under /_sim/, never faulted):
    POST /_sim/fees/config     {"url", "secret", "seed", "push", "pull",
                                "revise", "duplicate"}  (rates 0..1)
    POST /_sim/fees/push       {} -> send the notices of the delivered
                               push-channel shipments not sent yet
    POST /_sim/fees/statement  {"period": "2026-03", "wrong": 0.02,
                                "unknown": 1}
    GET  /_sim/fees/expected   {order_ref: {tracking_number, channel,
                                fee_total}}
    GET  /_sim/fees/stats

Python standard library only.
"""

import hashlib
import json
import random
import threading

import pusher

QUOTE = [("freight", "12.50"), ("insurance", "1.20")]


class Biller:
    """Which shipment is billed how, and what was sent."""

    def __init__(self, state):
        self.state = state                 # SimState: its tracker (pusher.Tracker)
        self.lock = threading.Lock()
        self.config = {"push": 0.4, "pull": 0.4, "revise": 0.5, "duplicate": 0.2, "seed": 1}
        self.configured = False            # nothing is billed before the test says how
        self.pushed = set()                # shipment ids whose notices were sent
        self.wrong = {}                    # shipment id -> freight billed by the statement
        self.msg_seq = 0
        self.stats = {"notices": 0, "sent": 0, "revisions": 0, "duplicates": 0,
                      "stale_duplicates": 0, "pulls": 0,
                      "pulls_billed": 0, "answers": {}}

    # --- who is billed how -----------------------------------------------

    def configure(self, cfg):
        if not isinstance(cfg, dict):
            raise ValueError("config must be a JSON object")
        url = cfg.get("url")
        if url is not None and not (isinstance(url, str) and url.startswith("http://127.0.0.1:")):
            raise ValueError("url must be http://127.0.0.1:PORT/...")
        for k in ("push", "pull", "revise", "duplicate"):
            v = cfg.get(k, self.config.get(k, 0))
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError("%s must be a rate between 0 and 1" % k)
        with self.lock:
            self.config = dict(self.config, **cfg)
            self.configured = True
            return dict(self.config)

    def _roll(self, sid, what):
        """A number in [0, 1) fixed by the seed, the shipment and the question."""
        h = hashlib.sha256(("%s:%s:%s" % (self.config.get("seed", 1), sid, what)).encode()).digest()
        return int.from_bytes(h[:8], "big") / 2 ** 64

    def _delivered(self):
        """{shipment id: (order_ref, tracking number)} of the delivered shipments."""
        out = {}
        for ref, e in self.state.tracker.expected().items():
            if e["status"] == "delivered":
                out[e["id"]] = (ref, e["tracking_number"])
        return out

    def _unbilled(self, delivered):
        ids = sorted(delivered, key=lambda s: int(s.split("_")[1]))
        return ids[0] if ids else None

    def channel(self, sid, delivered=None):
        delivered = self._delivered() if delivered is None else delivered
        if sid not in delivered:
            return None
        if sid == self._unbilled(delivered):
            return "never"
        r = self._roll(sid, "channel")
        if r < self.config["push"]:
            return "push"
        if r < self.config["push"] + self.config["pull"]:
            return "pull"
        return "statement"

    @staticmethod
    def _lines(sid, tn, freight="12.50"):
        return [{"tracking_number": tn, "type": t, "amount": freight if t == "freight" else a,
                 "currency": "CNY", "key": "%s-%s" % (sid, t), "settlement": "monthly"}
                for t, a in QUOTE]

    # --- pull ----------------------------------------------------------------

    def pull(self, sid):
        """GET /shipments/{id}/fees: (status, body bytes)."""
        with self.lock:
            self.stats["pulls"] += 1
            delivered = self._delivered()
            if not self.configured or self.channel(sid, delivered) != "pull":
                return 404, json.dumps({"error": "not billed yet"}).encode()
            self.stats["pulls_billed"] += 1
            return 200, json.dumps({"fees": self._lines(sid, delivered[sid][1])}).encode()

    # --- push ----------------------------------------------------------------

    def push(self):
        """Send the notices of delivered push-channel shipments not sent yet."""
        with self.lock:
            cfg = dict(self.config)
            if "url" not in cfg:
                raise ValueError("configure a url first")
            delivered = self._delivered()
            firsts, later = [], []
            for sid in sorted(delivered):
                if sid in self.pushed or self.channel(sid, delivered) != "push":
                    continue
                self.pushed.add(sid)
                tn = delivered[sid][1]
                if self._roll(sid, "revise") < cfg["revise"]:
                    firsts.append(self._lines(sid, tn, "12.90"))
                    later.append(self._lines(sid, tn))
                    self.stats["revisions"] += 1
                else:
                    firsts.append(self._lines(sid, tn))
                if self._roll(sid, "duplicate") < cfg["duplicate"]:
                    # a revised line's first notice, sent again after the revision,
                    # or the last notice of the shipment
                    revised = self._roll(sid, "revise") < cfg["revise"]
                    if revised and self._roll(sid, "which") < 0.5:
                        later.append(firsts[-1])
                        self.stats["stale_duplicates"] += 1
                    else:
                        later.append(later[-1] if revised else firsts[-1])
                    self.stats["duplicates"] += 1
            # the revisions and duplicates come after every first notice, in
            # an order of their own; a stale duplicate after its revision
            rng = random.Random("fees:%s" % cfg.get("seed", 1))
            rng.shuffle(later)
            stale = [n for n in later if n[0]["amount"] == "12.90"]
            later = [n for n in later if n[0]["amount"] != "12.90"] + stale
            notices = firsts + later
            self.stats["notices"] += len(notices)
        sent = 0
        conn = None
        for lines in notices:
            body = json.dumps({"fees": lines}, ensure_ascii=False).encode()
            with self.lock:
                self.msg_seq += 1
                msg_id = "fee_msg_%d" % self.msg_seq
            headers = pusher._std_webhooks_headers(cfg.get("secret", ""), msg_id, body)
            status, conn = pusher.post(conn, cfg["url"], body, headers, timeout=60)
            sent += 1
            with self.lock:
                self.stats["sent"] += 1
                self.stats["answers"][status] = self.stats["answers"].get(status, 0) + 1
        if conn is not None:
            conn.close()
        return {"sent": sent}

    # --- the monthly statement ---------------------------------------------

    def statement(self, period, wrong, unknown):
        """The statement CSV of every delivered shipment but the unbilled one."""
        with self.lock:
            delivered = self._delivered()
            never = self._unbilled(delivered)
            ids = sorted((s for s in delivered if s != never), key=lambda s: int(s.split("_")[1]))
            rng = random.Random("statement:%s:%s" % (self.config.get("seed", 1), period))
            nwrong = max(1, round(len(ids) * wrong)) if ids and wrong > 0 else 0
            self.wrong = {s: "13.10" for s in rng.sample(ids, nwrong)}
            rows = [["运单号", "费用类型", "金额", "币种", "费用编号", "寄件时间", "备注"]]
            total = 0
            for sid in ids:
                tn = delivered[sid][1]
                for line in self._lines(sid, tn, self.wrong.get(sid, "12.50")):
                    rows.append([tn, line["type"], line["amount"], "CNY", line["key"],
                                 "%s-05 10:00:00" % period, "月结, 寄付"])
                    total += int(line["amount"].replace(".", ""))
            strangers = ["SIMX%011d" % (i + 1) for i in range(unknown)]
            for tn in strangers:
                rows.append([tn, "freight", "9.90", "CNY", "%s-freight" % tn,
                             "%s-06 09:30:00" % period, "未知运单"])
                total += 990
            def field(v):
                return '"%s"' % v.replace('"', '""') if any(c in v for c in ',"\r\n') else v
            csv = "\ufeff" + "".join(",".join(field(v) for v in r) + "\r\n" for r in rows)
            by_ref = {delivered[s][1]: delivered[s][0] for s in delivered}
            return {"csv": csv, "lines": len(rows) - 1,
                    "totals": {"CNY": "%d.%02d" % (total // 100, total % 100)},
                    "wrong": sorted(delivered[s][1] for s in self.wrong),
                    "unknown": strangers,
                    "unbilled": [delivered[never][1]] if never else [],
                    "orders": {by_ref[delivered[s][1]]: delivered[s][1] for s in ids}}

    def expected(self):
        """order_ref -> what the order's fee_total should be once everything is in."""
        with self.lock:
            delivered = self._delivered()
            out = {}
            for sid, (ref, tn) in delivered.items():
                freight = self.wrong.get(sid, "12.50")
                out[ref] = {"id": sid, "tracking_number": tn,
                            "channel": self.channel(sid, delivered),
                            "fee_total": "%.2f" % (float(freight) + 1.20)}
            return out


def handle_sim(biller, method, path, body):
    """The /_sim/fees/ endpoints: (status, JSON object), or None if not ours."""
    if not path.startswith("/_sim/fees"):
        return None
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return 400, {"error": "body is not valid JSON"}
    try:
        if path == "/_sim/fees/config" and method == "POST":
            return 200, biller.configure(payload)
        if path == "/_sim/fees/push" and method == "POST":
            return 200, biller.push()
        if path == "/_sim/fees/statement" and method == "POST":
            period = payload.get("period", "2026-03")
            wrong = payload.get("wrong", 0.02)
            unknown = payload.get("unknown", 1)
            if not isinstance(period, str) or len(period) != 7:
                return 400, {"error": "period must be YYYY-MM"}
            return 200, biller.statement(period, float(wrong), int(unknown))
        if path == "/_sim/fees/expected" and method == "GET":
            return 200, biller.expected()
        if path == "/_sim/fees/stats" and method == "GET":
            with biller.lock:
                return 200, dict(biller.stats, answers=dict(biller.stats["answers"]))
    except ValueError as exc:
        return 400, {"error": str(exc)}
    return 404, {"error": "not found"}
