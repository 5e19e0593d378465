"""sf_sim.py - the SF Express (顺丰) open-platform dialect for carrier_sim.py.

One endpoint, POST /sf/std/service, form-encoded like SF's gateway:
partnerID, requestID, serviceCode, timestamp, msgData, msgDigest, where
msgDigest = Base64(MD5(URLEncoder.encode(msgData + timestamp + checkword)))
with Java's URLEncoder (space -> '+', unreserved A-Z a-z 0-9 . - * _,
everything else %XX upper case). The simulator checks it the way SF does: an
unknown partner is A1004, a wrong digest A1006, both in a 200.

Services: EXP_RECE_CREATE_ORDER (a repeated orderId is 8016 重复下单),
EXP_RECE_SEARCH_ORDER_RESP (an unknown orderId is 8024 未下单),
EXP_RECE_UPDATE_ORDER with dealType 2 (cancel; a second cancel is 8037 已消单),
EXP_RECE_QUERY_SFWAYBILL by waybill (trackingType 2): the fee list of an
order's waybill (运费 23.00 and 保价费 2.00, monthly, billed weight 2.5), or
8148 (无费用数据) for a waybill not billed yet (POST /_sim/sf/fees
{"unbilled": [waybill, ...]}) or unknown.
Answers are {"apiResultCode": "A1000", "apiResultData": ...}; apiResultData is
a JSON string inside the JSON, as SF sends it, or (every other answer, or
with the object_result fault) a plain object.

Fault rules (POST /_sim/sf/faults {"rules": [...]}), each
{"fault": F, "count": N?, "match_order_id": REGEX?, "service": CODE?, "code": C?}:
  busy          A1000 with success false and errorCode S0001 (系统繁忙), nothing done
  lost_reply    the order is created, then the connection is reset (the answer is lost)
  data_error    A1000 with success false and errorCode `code` (default 1010), nothing done
  gateway_error apiResultCode `code` (default A1099) with no apiResultData
  object_result apiResultData as an object instead of a JSON string

Multi-piece orders: an order's parcelQty N (2 to 5) gives it N - 1 child
waybills (waybillType 2). POST /_sim/sf/pieces {"rules": [{"match_order_id":
REGEX, "children": N?, "return": true?}]} gives the orders whose orderId
matches N child waybills and, with return, a return waybill (waybillType
3, SF's 签回单), whatever their parcelQty; {"rules": []} ends that.

Inspection: GET /_sim/sf/stats, GET /_sim/sf/orders[?orderId=], POST
/_sim/sf/cancel?orderId= (cancel at SF's side), POST /_sim/sf/forget?orderId=
(SF loses the order: a search no longer finds it), POST /_sim/sf/fees (which
waybills are not billed yet), POST /_sim/sf/reset (orders, counters and
rules).
"""

import base64
import hashlib
import json
import random
import re
import threading
from urllib.parse import parse_qs

DEFAULT_PARTNERS = {"SHOP1": "fjcg5PGKaNpPSHFAZ4QsCOkV71R3zVci"}
FAULTS = ("busy", "lost_reply", "data_error", "gateway_error", "object_result")
SERVICES = ("EXP_RECE_CREATE_ORDER", "EXP_RECE_SEARCH_ORDER_RESP", "EXP_RECE_UPDATE_ORDER",
            "EXP_RECE_QUERY_SFWAYBILL")


def java_urlencode(text):
    """java.net.URLEncoder.encode(text, "UTF-8")."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch.isascii() and (ch.isalnum() or ch in ".-*_"):
            out.append(ch)
        elif ch == " ":
            out.append("+")
        else:
            out.append("%%%02X" % byte)
    return "".join(out)


def msg_digest(msg_data, timestamp, checkword):
    raw = java_urlencode(msg_data + timestamp + checkword).encode("ascii")
    return base64.b64encode(hashlib.md5(raw).digest()).decode("ascii")


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class SfRule:
    def __init__(self, spec, index):
        where = "sf rule %d" % index
        if not isinstance(spec, dict) or spec.get("fault") not in FAULTS:
            raise ValueError("%s: 'fault' must be one of %s" % (where, ", ".join(FAULTS)))
        unknown = set(spec) - {"fault", "count", "match_order_id", "service", "code"}
        if unknown:
            raise ValueError("%s: unknown field(s) %s" % (where, ", ".join(sorted(unknown))))
        self.spec = spec
        self.fault = spec["fault"]
        self.count = spec.get("count")
        self.order_re = re.compile(spec["match_order_id"]) if spec.get("match_order_id") else None
        self.service = spec.get("service")
        self.code = spec.get("code")
        self.fired = 0

    def applies(self, service, order_id):
        if self.count is not None and self.fired >= self.count:
            return False
        if self.service is not None and service != self.service:
            return False
        if self.order_re is not None and (order_id is None or not self.order_re.search(order_id)):
            return False
        return True


class SfState:
    def __init__(self, seed=None, partners=None):
        self.lock = threading.Lock()
        self.seed = seed
        self.partners = dict(partners or DEFAULT_PARTNERS)
        self.rules = []
        self.piece_rules = []       # [(compiled orderId regex, children, return waybill)]
        self.reset()

    def reset(self):
        self.orders = {}            # orderId -> record
        self.waybills = set()
        self.unbilled = set()       # waybills whose fees are not there yet
        self.rng = random.Random("sf:%s" % self.seed) if self.seed is not None else random.Random()
        self.stats = {"requests": 0, "orders_created": 0, "duplicates_8016": 0, "searches": 0,
                      "search_misses": 0, "cancels": 0, "already_cancelled_8037": 0,
                      "bad_signature": 0, "unknown_partner": 0, "faults": {},
                      "result_as_string": 0, "result_as_object": 0, "by_service": {},
                      "fee_queries": 0, "fees_not_billed_8148": 0}
        self.answers = 0
        for rule in self.rules:
            rule.fired = 0

    def set_rules(self, config):
        if not isinstance(config, dict) or not isinstance(config.get("rules"), list):
            raise ValueError('sf fault config must be {"rules": [...]}')
        rules = [SfRule(spec, i) for i, spec in enumerate(config["rules"])]
        with self.lock:
            self.rules = rules

    def pick_fault(self, service, order_id):
        for rule in self.rules:
            if rule.applies(service, order_id):
                rule.fired += 1
                self.stats["faults"][rule.fault] = self.stats["faults"].get(rule.fault, 0) + 1
                return rule
        return None

    def new_waybill(self):
        while True:
            number = "SF%013d" % self.rng.randrange(10 ** 13)
            if number not in self.waybills:
                self.waybills.add(number)
                return number

    def envelope(self, data, as_object=False):
        """SF's A1000 answer; apiResultData a JSON string unless as_object
        (or, to exercise both shapes, every third answer)."""
        self.answers += 1
        if not as_object and self.answers % 3 == 0:
            as_object = True
        self.stats["result_as_object" if as_object else "result_as_string"] += 1
        inner = data if as_object else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        return dumps({"apiErrorMsg": "", "apiResponseID": "%032X" % self.rng.randrange(16 ** 32),
                      "apiResultCode": "A1000", "apiResultData": inner})

    def gateway(self, code, message):
        return dumps({"apiErrorMsg": message, "apiResponseID": "", "apiResultCode": code,
                      "apiResultData": None})

    @staticmethod
    def failure(code, message):
        return {"success": False, "errorCode": code, "errorMsg": message, "msgData": None}

    @staticmethod
    def waybill_list(rec):
        return [{"waybillType": 1, "waybillNo": rec["waybill"]}] + \
               [{"waybillType": 2, "waybillNo": w} for w in rec["children"]] + \
               ([{"waybillType": 3, "waybillNo": rec["return"]}] if rec.get("return") else [])

    def set_pieces(self, config):
        """POST /_sim/sf/pieces: which orders get child and return waybills."""
        if not isinstance(config, dict) or not isinstance(config.get("rules"), list):
            raise ValueError('sf pieces config must be {"rules": [...]}')
        rules = []
        for spec in config["rules"]:
            if not isinstance(spec, dict):
                raise ValueError("a pieces rule must be an object")
            children = spec.get("children", 0)
            if not isinstance(children, int) or not 0 <= children <= 4:
                raise ValueError("children must be an integer from 0 to 4")
            rules.append((re.compile(spec.get("match_order_id") or ""), children,
                          bool(spec.get("return"))))
        with self.lock:
            self.piece_rules = rules

    def pieces_of(self, order_id, msg):
        """(children, return waybill?) of a new order: a pieces rule, else parcelQty."""
        for regex, children, ret in self.piece_rules:
            if regex.search(order_id):
                return children, ret
        parcels = msg.get("parcelQty")
        return (parcels - 1 if isinstance(parcels, int) and 1 < parcels <= 5 else 0), False

    def handle(self, body):
        """Process one request body; returns (answer bytes, reset_after)."""
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            return self.gateway("A1001", "必传参数不可为空"), False
        field = {k: v[0] for k, v in form.items()}
        with self.lock:
            self.stats["requests"] += 1
            for name in ("partnerID", "requestID", "serviceCode", "timestamp", "msgData", "msgDigest"):
                if not field.get(name):
                    return self.gateway("A1001", "必传参数不可为空: %s" % name), False
            service = field["serviceCode"]
            self.stats["by_service"][service] = self.stats["by_service"].get(service, 0) + 1
            checkword = self.partners.get(field["partnerID"])
            if checkword is None:
                self.stats["unknown_partner"] += 1
                return self.gateway("A1004", "无对应服务权限"), False
            if msg_digest(field["msgData"], field["timestamp"], checkword) != field["msgDigest"]:
                self.stats["bad_signature"] += 1
                return self.gateway("A1006", "数字签名无效"), False
            try:
                msg = json.loads(field["msgData"])
            except ValueError:
                return self.envelope(self.failure("1001", "msgData 不是合法的 JSON")), False
            if not isinstance(msg, dict) or service not in SERVICES:
                return self.gateway("A1004", "无对应服务权限"), False
            if service == "EXP_RECE_QUERY_SFWAYBILL":
                return self.fee_query(msg), False
            order_id = msg.get("orderId")
            rule = self.pick_fault(service, order_id if isinstance(order_id, str) else None)
            fault = rule.fault if rule else None
            as_object = fault == "object_result"
            if fault == "busy":
                return self.envelope(self.failure("S0001", "系统繁忙"), as_object), False
            if fault == "data_error":
                return self.envelope(self.failure(rule.code or "1010", "数据校验失败"), as_object), False
            if fault == "gateway_error":
                return self.gateway(rule.code or "A1099", "系统异常"), False
            if not isinstance(order_id, str) or not order_id:
                return self.envelope(self.failure("8013", "订单号不能为空"), as_object), False

            if service == "EXP_RECE_CREATE_ORDER":
                if order_id in self.orders:
                    self.stats["duplicates_8016"] += 1
                    return self.envelope(self.failure("8016", "重复下单"), as_object), False
                receiver = [c for c in msg.get("contactInfoList") or []
                            if isinstance(c, dict) and c.get("contactType") == 2]
                if not receiver or not receiver[0].get("address"):
                    return self.envelope(self.failure("1010", "收件地址不能为空"), as_object), False
                rec = {"orderId": order_id, "waybill": self.new_waybill(), "children": [],
                       "msgData": msg, "requestID": field["requestID"], "cancelled": False,
                       "creates": 1}
                children, ret = self.pieces_of(order_id, msg)
                rec["children"] = [self.new_waybill() for _ in range(children)]
                if ret:
                    rec["return"] = self.new_waybill()
                self.orders[order_id] = rec
                self.stats["orders_created"] += 1
                answer = self.envelope({"success": True, "errorCode": "S0000", "errorMsg": None,
                                        "msgData": {"orderId": order_id, "originCode": "755",
                                                    "destCode": "020", "filterResult": 2,
                                                    "waybillNoInfoList": self.waybill_list(rec)}},
                                       as_object)
                return answer, fault == "lost_reply"

            rec = self.orders.get(order_id)
            if service == "EXP_RECE_SEARCH_ORDER_RESP":
                self.stats["searches"] += 1
                if rec is None:
                    self.stats["search_misses"] += 1
                    return self.envelope(self.failure("8024", "未下单"), as_object), False
                return self.envelope({"success": True, "errorCode": "S0000", "errorMsg": None,
                                      "msgData": {"orderId": order_id, "origincode": "755",
                                                  "destcode": "020", "filterResult": "2",
                                                  "waybillNoInfoList": self.waybill_list(rec)}},
                                     as_object), fault == "lost_reply"

            # EXP_RECE_UPDATE_ORDER
            if msg.get("dealType") != 2:
                return self.envelope(self.failure("8017", "不支持的操作类型"), as_object), False
            if rec is None:
                return self.envelope(self.failure("8024", "未下单"), as_object), False
            if rec["cancelled"]:
                self.stats["already_cancelled_8037"] += 1
                return self.envelope(self.failure("8037", "已消单"), as_object), False
            rec["cancelled"] = True
            self.stats["cancels"] += 1
            return self.envelope({"success": True, "errorCode": "S0000", "errorMsg": None,
                                  "msgData": {"orderId": order_id, "resStatus": 2,
                                              "waybillNoInfoList": self.waybill_list(rec)}},
                                 as_object), fault == "lost_reply"

    def fee_query(self, msg):
        """清单运费查询 by waybill: its fee list, or 8148 while it is not billed."""
        self.stats["fee_queries"] += 1
        waybill = msg.get("trackingNum")
        known = msg.get("trackingType") == "2" and any(
            r["waybill"] == waybill for r in self.orders.values())
        if not known or waybill in self.unbilled:
            self.stats["fees_not_billed_8148"] += 1
            return self.envelope(self.failure("8148", "无费用数据"))
        return self.envelope({"success": True, "errorCode": "S0000", "errorMsg": None,
                              "msgData": {"waybillInfo": {"waybillNo": waybill, "totalFee": 25.0,
                                                          "customerAcctCode": "7551234567",
                                                          "meterageWeightQty": 2.5,
                                                          "realWeightQty": 2.1},
                                          "waybillFeeList": [
                                              {"feeName": "运费", "feeAmt": 23.0,
                                               "settlementTypeCode": "2"},
                                              {"feeName": "保价费", "feeAmt": "2.00",
                                               "settlementTypeCode": "2"}]}})

    # --- inspection -------------------------------------------------------

    def snapshot(self):
        with self.lock:
            stats = json.loads(json.dumps(self.stats))
            stats["orders"] = len(self.orders)
            stats["fired"] = [r.fired for r in self.rules]
            return stats

    def list_orders(self, order_id=None):
        with self.lock:
            return [json.loads(json.dumps(r)) for oid, r in self.orders.items()
                    if order_id is None or oid == order_id]

    def cancel_at_sf(self, order_id):
        with self.lock:
            rec = self.orders.get(order_id)
            if rec is None:
                return False
            rec["cancelled"] = True
            return True


def handle_sim(handler, state, path, query, body):
    """/_sim/sf/... endpoints; returns True when the path was ours."""
    method = handler.command
    if path == "/_sim/sf/stats" and method == "GET":
        handler._send(200, dumps(state.snapshot()))
    elif path == "/_sim/sf/orders" and method == "GET":
        ids = parse_qs(query).get("orderId")
        handler._send(200, dumps(state.list_orders(ids[0] if ids else None)))
    elif path == "/_sim/sf/faults" and method == "POST":
        try:
            state.set_rules(json.loads(body or b"null"))
        except ValueError as exc:
            handler._send(400, dumps({"error": str(exc)}))
        else:
            handler._send(200, dumps({"ok": True}))
    elif path == "/_sim/sf/pieces" and method == "POST":
        try:
            state.set_pieces(json.loads(body or b"null"))
        except (ValueError, re.error) as exc:
            handler._send(400, dumps({"error": str(exc)}))
        else:
            handler._send(200, dumps({"ok": True}))
    elif path == "/_sim/sf/cancel" and method == "POST":
        ids = parse_qs(query).get("orderId")
        ok = bool(ids) and state.cancel_at_sf(ids[0])
        handler._send(200 if ok else 404, dumps({"ok": ok}))
    elif path == "/_sim/sf/fees" and method == "POST":
        try:
            cfg = json.loads(body or b"{}")
            unbilled = cfg.get("unbilled", [])
            if not isinstance(unbilled, list):
                raise ValueError("unbilled must be a list of waybills")
        except (ValueError, AttributeError) as exc:
            handler._send(400, dumps({"error": str(exc)}))
        else:
            with state.lock:
                state.unbilled = set(unbilled)
            handler._send(200, dumps({"ok": True}))
    elif path == "/_sim/sf/forget" and method == "POST":
        ids = parse_qs(query).get("orderId")
        with state.lock:
            ok = bool(ids) and state.orders.pop(ids[0], None) is not None
        handler._send(200 if ok else 404, dumps({"ok": ok}))
    elif path == "/_sim/sf/reset" and method == "POST":
        with state.lock:
            state.rules = []
            state.piece_rules = []
            state.reset()
        handler._send(200, dumps({"ok": True}))
    else:
        return False
    return True


def handle_carrier(handler, state, body):
    """POST /sf/std/service: SF answers every request with a 200."""
    if handler.command != "POST":
        handler._send(405, dumps({"error": "method not allowed"}), [("Allow", "POST")])
        return
    answer, reset_after = state.handle(body)
    if reset_after:
        handler._abort_with_rst()
        return
    handler._send(200, answer)
