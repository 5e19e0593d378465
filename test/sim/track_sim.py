"""track_sim.py - the tracking providers' registration APIs for carrier_sim.py.

  EasyPost   POST /v2/trackers {"tracker": {"tracking_code", "carrier"}}
             HTTP Basic with the API key as the user name (--easypost KEY);
             the same code and carrier again returns the same tracker (200),
             a new one is 201 {"id": "trk_...", "object": "Tracker", ...};
             a wrong key is 401 {"error": {"code": "APIKEY.INACTIVE"}}.
  AfterShip  POST /trackings {"tracking": {"tracking_number", "slug", "order_id"}}
             header as-api-key (--aftership KEY); new: 201 {"meta": {"code":
             201}, "data": {"tracking": {"id", "tag": "Pending", ...}}}; a number
             already tracked: 400 with meta.code 4003 "Tracking already exists.";
             a wrong key: 401 with meta.code 401.
  Kuaidi100  POST /poll, form schema=json&param={"company", "number", "key",
             "parameters": {"callbackurl", ...}} (--kuaidi100-key KEY); always
             HTTP 200 with {"result", "returnCode", "message"}: 200 ok, 501
             already subscribed, 600 bad key, 700 missing number or company.

Faults, POST /_sim/track/faults {"rules": [{"dialect", "status", "count"?,
"body"?}]}: the next `count` registrations of that dialect answer `status`
(with `body`, or a generic one) and are not recorded. GET /_sim/track/stats,
GET /_sim/track/registrations, POST /_sim/track/reset.
"""

import base64
import json
import threading
from urllib.parse import parse_qs


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class TrackState:
    def __init__(self, easypost_key=None, aftership_key=None, kuaidi100_key=None):
        self.lock = threading.Lock()
        self.keys = {"easypost": easypost_key, "aftership": aftership_key,
                     "kuaidi100": kuaidi100_key}
        self.rules = []
        self.reset()

    def reset(self):
        self.trackers = {}          # (dialect, number, carrier) -> record
        self.next_id = 1
        self.stats = {"requests": {}, "registered": {}, "duplicates": {}, "auth_refused": {},
                      "faults": {}}

    def _count(self, what, dialect):
        self.stats[what][dialect] = self.stats[what].get(dialect, 0) + 1

    def _fault(self, dialect):
        for rule in self.rules:
            if rule["dialect"] == dialect and rule.get("count", 1) > rule["fired"]:
                rule["fired"] += 1
                self._count("faults", dialect)
                return rule
        return None

    def _register(self, dialect, number, carrier, order_id=None):
        """(record, created?)"""
        key = (dialect, number, carrier)
        rec = self.trackers.get(key)
        if rec is not None:
            self._count("duplicates", dialect)
            return rec, False
        rec = {"id": "trk_%06d" % self.next_id, "dialect": dialect, "number": number,
               "carrier": carrier, "order_id": order_id}
        self.next_id += 1
        self.trackers[key] = rec
        self._count("registered", dialect)
        return rec, True

    # each returns (status, body bytes)
    def easypost(self, headers, body):
        with self.lock:
            self._count("requests", "easypost")
            rule = self._fault("easypost")
            if rule:
                return rule["status"], dumps(rule.get("body", {"error": {"code": "SIMULATED"}}))
            user = ""
            auth = headers.get("Authorization", "")
            if auth.startswith("Basic "):
                try:
                    user = base64.b64decode(auth[6:]).decode("utf-8").split(":", 1)[0]
                except ValueError:
                    user = ""
            if user != self.keys["easypost"]:
                self._count("auth_refused", "easypost")
                return 401, dumps({"error": {"code": "APIKEY.INACTIVE",
                                             "message": "This api key is no longer active."}})
            try:
                tracker = json.loads(body)["tracker"]
                number = tracker["tracking_code"]
            except (ValueError, KeyError, TypeError):
                return 422, dumps({"error": {"code": "TRACKER.CREATE.ERROR"}})
            rec, created = self._register("easypost", number, tracker.get("carrier"))
            return (201 if created else 200), dumps({
                "id": rec["id"], "object": "Tracker", "mode": "test", "tracking_code": number,
                "carrier": rec["carrier"], "status": "pre_transit"})

    def aftership(self, headers, body):
        with self.lock:
            self._count("requests", "aftership")
            rule = self._fault("aftership")
            if rule:
                return rule["status"], dumps(rule.get("body", {"meta": {"code": rule["status"]}}))
            if headers.get("as-api-key", "") != self.keys["aftership"]:
                self._count("auth_refused", "aftership")
                return 401, dumps({"meta": {"code": 401, "message": "Invalid API key.",
                                            "type": "Unauthorized"}, "data": {}})
            try:
                tracking = json.loads(body)["tracking"]
                number = tracking["tracking_number"]
            except (ValueError, KeyError, TypeError):
                return 400, dumps({"meta": {"code": 4001, "message": "Invalid JSON data."}})
            rec, created = self._register("aftership", number, tracking.get("slug"),
                                          tracking.get("order_id"))
            view = {"id": rec["id"], "tracking_number": number, "slug": rec["carrier"],
                    "order_id": rec["order_id"], "tag": "Pending"}
            if not created:
                return 400, dumps({"meta": {"code": 4003, "message": "Tracking already exists.",
                                            "type": "BadRequest"}, "data": {"tracking": view}})
            return 201, dumps({"meta": {"code": 201}, "data": {"tracking": view}})

    def kuaidi100(self, body):
        with self.lock:
            self._count("requests", "kuaidi100")
            rule = self._fault("kuaidi100")
            if rule:
                return rule["status"], dumps(rule.get("body", {"result": False, "returnCode": "500",
                                                               "message": "服务器错误"}))
            form = parse_qs(body.decode("utf-8", "replace"))
            try:
                param = json.loads(form["param"][0])
            except (KeyError, ValueError):
                return 200, dumps({"result": False, "returnCode": "700", "message": "参数错误"})
            if form.get("schema") != ["json"]:
                return 200, dumps({"result": False, "returnCode": "700", "message": "schema 错误"})
            if param.get("key") != self.keys["kuaidi100"]:
                self._count("auth_refused", "kuaidi100")
                return 200, dumps({"result": False, "returnCode": "600",
                                   "message": "您不是合法的订阅者（即授权Key出错）"})
            if not param.get("number") or not param.get("company"):
                return 200, dumps({"result": False, "returnCode": "700", "message": "订阅参数错误"})
            if not (param.get("parameters") or {}).get("callbackurl"):
                return 200, dumps({"result": False, "returnCode": "701", "message": "回调地址错误"})
            rec, created = self._register("kuaidi100", param["number"], param["company"])
            if not created:
                return 200, dumps({"result": False, "returnCode": "501", "message": "重复订阅"})
            rec["callbackurl"] = param["parameters"]["callbackurl"]
            rec["salt"] = param["parameters"].get("salt")   # signs the pushes
            return 200, dumps({"result": True, "returnCode": "200", "message": "提交成功"})


def handle_carrier(handler, state, path, body):
    """Returns True when the path was one of the tracking APIs."""
    if handler.command != "POST" or path not in ("/v2/trackers", "/trackings", "/poll"):
        return False
    if path == "/v2/trackers":
        status, answer = state.easypost(handler.headers, body)
    elif path == "/trackings":
        status, answer = state.aftership(handler.headers, body)
    else:
        status, answer = state.kuaidi100(body)
    handler._send(status, answer)
    return True


def handle_sim(handler, state, path, body):
    method = handler.command
    if path == "/_sim/track/stats" and method == "GET":
        with state.lock:
            handler._send(200, dumps(state.stats))
    elif path == "/_sim/track/registrations" and method == "GET":
        with state.lock:
            handler._send(200, dumps(list(state.trackers.values())))
    elif path == "/_sim/track/faults" and method == "POST":
        try:
            rules = json.loads(body)["rules"]
            for rule in rules:
                if rule.get("dialect") not in ("easypost", "aftership", "kuaidi100") or \
                        not isinstance(rule.get("status"), int):
                    raise ValueError("each rule needs a dialect and an integer status")
                rule["fired"] = 0
        except (ValueError, KeyError, TypeError) as exc:
            handler._send(400, dumps({"error": str(exc)}))
            return True
        with state.lock:
            state.rules = rules
        handler._send(200, dumps({"ok": True}))
    elif path == "/_sim/track/reset" and method == "POST":
        with state.lock:
            state.rules = []
            state.reset()
        handler._send(200, dumps({"ok": True}))
    else:
        return False
    return True
