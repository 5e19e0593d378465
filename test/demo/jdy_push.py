#!/usr/bin/env python3
"""jdy_push.py - a simulated 简道云 (Jiandaoyun): its data pushes of new orders.

For each order a data_create push as 简道云 sends it (数据推送): a JSON
body {"op": "data_create", "data": {"_id", "formName", "creator",
"createTime", "updateTime", "_widget_<ms>": ...}} posted to URL with query
parameters nonce and timestamp, header X-JDY-Signature = lowercase hex
SHA-1 of nonce:body:secret:timestamp and a unique X-JDY-DeliverId.  Like
简道云, anything but a 2xx is sent again (after Retry-After, or a second),
up to 20 times.  Orders go in BURSTS bursts of N, PAUSE seconds apart, from
THREADS threads; the widgets are:

    _widget_1700000000001  客户编号 customer id (1..CUSTOMERS)
    _widget_1700000000002  收货人   receiver name
    _widget_1700000000003  电话     receiver phone
    _widget_1700000000004  地址     receiver address
    _widget_1700000000005  金额     amount
    _widget_1700000000006  推送时间 when this push was sent (Unix ms; for latency)

With --rate R the orders go one at a time, R a second (a steady trickle).

Prints a summary line of JSON: pushes, answers by status, retries.

    jdy_push.py --url http://127.0.0.1:PORT/crm/jdy --secret S
                --bursts 8 --size 250 --pause 1 --threads 8 --seed 7

Python 3 standard library only.
"""

import argparse
import hashlib
import http.client
import json
import random
import sys
import threading
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

NAMES = ["张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏", "黄勇", "周杰", "吴霞",
         "徐强", "孙丽", "马超", "朱琳", "胡斌", "郭涛", "何婷", "林峰", "高洁", "罗军"]
CITIES = {
    "北京": (["朝阳区", "海淀区", "东城区", "丰台区"], ["建国路", "中关村大街", "东直门内大街", "丽泽路"]),
    "上海": (["浦东新区", "徐汇区", "静安区", "黄浦区"], ["世纪大道", "漕溪北路", "南京西路", "淮海中路"]),
    "广州": (["天河区", "越秀区", "海珠区", "番禺区"], ["天河路", "北京路", "新港中路", "市桥大道"]),
    "深圳": (["南山区", "福田区", "罗湖区", "宝安区"], ["深南大道", "福华路", "人民南路", "宝安大道"]),
    "杭州": (["西湖区", "上城区", "拱墅区", "滨江区"], ["文三路", "延安路", "莫干山路", "江南大道"]),
}


def order(rng, n, customers):
    cid = 1 + rng.randrange(customers)
    city = list(CITIES)[(cid - 1) % len(CITIES)]
    districts, streets = CITIES[city]
    k = rng.randrange(4)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return {
        "_id": "%024x" % rng.getrandbits(96),
        "formName": "订单",
        "creator": {"_id": "%024x" % rng.getrandbits(96), "name": "销售" + NAMES[n % len(NAMES)]},
        "createTime": now,
        "updateTime": now,
        "_widget_1700000000001": cid,
        "_widget_1700000000002": NAMES[(cid - 1) % len(NAMES)],
        "_widget_1700000000003": "1%d%09d" % (3 + rng.randrange(6), rng.randrange(10 ** 9)),
        "_widget_1700000000004": "%s市%s%s%d号%d栋%d室" % (
            city, districts[k], streets[k], 1 + rng.randrange(999), 1 + rng.randrange(12),
            (1 + rng.randrange(30)) * 100 + 1 + rng.randrange(6)),
        "_widget_1700000000005": round(29 + rng.random() * 970, 2),
    }


class Pusher:
    def __init__(self, args):
        self.args = args
        self.url = urlsplit(args.url)
        self.lock = threading.Lock()
        self.answers = {}
        self.retries = 0
        self.failed = 0

    def send(self, conn, body, deliver):
        nonce = "%08x" % random.getrandbits(32)
        ts = str(int(time.time()))
        sig = hashlib.sha1(("%s:%s:%s:%s" % (nonce, body, self.args.secret, ts)).encode()).hexdigest()
        path = "%s?nonce=%s&timestamp=%s" % (self.url.path, nonce, ts)
        conn.request("POST", path, body=body.encode(), headers={
            "Content-Type": "application/json", "X-JDY-Signature": sig,
            "X-JDY-DeliverId": deliver})
        r = conn.getresponse()
        r.read()
        return r.status, r.getheader("Retry-After")

    def push(self, conn, rec, deliver):
        rec["_widget_1700000000006"] = int(time.time() * 1000)
        body = json.dumps({"op": "data_create", "data": rec}, ensure_ascii=False)
        for attempt in range(20):
            try:
                if conn[0] is None:
                    conn[0] = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=60)
                status, retry_after = self.send(conn[0], body, deliver)
            except (OSError, http.client.HTTPException):
                conn[0].close()
                conn[0] = None
                status, retry_after = "error", None
            with self.lock:
                self.answers[str(status)] = self.answers.get(str(status), 0) + 1
                if attempt > 0:
                    self.retries += 1
            if status in (200, 201, 202, 204):
                return
            time.sleep(float(retry_after) if retry_after and retry_after.isdigit() else 1)
        with self.lock:
            self.failed += 1

    def burst(self, recs):
        todo = list(enumerate(recs))
        todo_lock = threading.Lock()

        start = time.time()

        def worker():
            conn = [None]
            while True:
                with todo_lock:
                    if not todo:
                        break
                    i, (rec, deliver) = todo.pop(0)
                if self.args.rate:
                    time.sleep(max(0, start + i / self.args.rate - time.time()))
                self.push(conn, rec, deliver)
            if conn[0] is not None:
                conn[0].close()
        threads = [threading.Thread(target=worker)
                   for _ in range(1 if self.args.rate else self.args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--bursts", type=int, default=8)
    ap.add_argument("--size", type=int, default=250)
    ap.add_argument("--pause", type=float, default=1)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--customers", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rate", type=float, default=0, help="pushes per second, one at a time")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    p = Pusher(args)
    n = 0
    for b in range(args.bursts):
        recs = []
        for _ in range(args.size):
            n += 1
            recs.append((order(rng, n, args.customers), "jdy-deliver-%d-%06d" % (args.seed, n)))
        p.burst(recs)
        if b < args.bursts - 1:
            time.sleep(args.pause)
    print(json.dumps({"pushes": n, "answers": p.answers, "retries": p.retries, "failed": p.failed}))
    return 1 if p.failed else 0


if __name__ == "__main__":
    sys.exit(main())
