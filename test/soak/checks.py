"""checks.py - what the soak proves once the queue has drained.

Each check returns (name, ok, note): note is a short figure for the summary
line when ok, the first offenders when not.

  no_loss       every insert the client saw committed is in its table;
  exactly_once  every order's create intent is done with exactly one
                shipment at the carrier (the simulator's ledger), created
                under the intent's idempotency key, no other key ever used
                for that order, the carrier's waybill on the order row and
                in shipsync.shipment -- or the intent is dead or invalid,
                with a ticket and a reason, and at most one shipment (under
                its key) at the carrier (none, and no request, if invalid);
                nothing else, nothing unsettled;
                the carrier holds no shipment of an unknown order and saw
                no key re-used with other bytes;
  max_attempts  no intent's attempts, as counted by pg_shipsync and as
                seen by the carrier per key, exceeded its provider's
                max_attempts;
  no_exit       the dispatcher never exited but when killed (the server
                log: no exit code, no signal but our SIGKILLs, no PANIC);
  memory        every dispatcher's private memory (RssAnon) stayed under
                the bound, and the last one, alive through the calm last
                third, grew by at most the growth bound: the floor (least
                sample) of the last quarter of its life against that of the
                third quarter;
  coverage      every fault kind hit at least once.
"""

import json
import re

from chaos import sim_call


def db_json(cluster, sql):
    """The rows of sql as a list of dicts (one json_agg, parsed here)."""
    return json.loads(cluster.value("SELECT coalesce(json_agg(t), '[]') FROM (%s) t" % sql))


def short(v, n=40):
    """A value for a message: repr, cut to n characters."""
    r = repr(v)
    return r if len(r) <= n else "%s... (%d characters)" % (r[:n], len(v))


def first(items, n=5):
    items = list(items)
    return "; ".join(str(i) for i in items[:n]) + (" ..." if len(items) > n else "")


def check_no_loss(cluster, tables, acked):
    missing = []
    for prov, table in tables.items():
        have = {int(r["id"]) for r in db_json(cluster, "SELECT id FROM %s" % table)}
        missing += ["%s %d" % (prov, i) for i in sorted(acked[prov] - have)]
    n = sum(len(a) for a in acked.values())
    if missing:
        return ("no_loss", False, "%d acknowledged orders missing: %s" % (len(missing), first(missing)))
    return ("no_loss", True, "%d acknowledged" % n)


def _order_problems(prov, order, intents, ships, keys_of_ref, ticketed, shipment_tn):
    """What is wrong with one order (a list of strings, empty if right)."""
    oid = str(order["id"])
    creates = [x for x in intents if x["op"] == "create"]
    if len(intents) != 1 or len(creates) != 1:
        return ["%s order %s: %d intents (%s)" % (prov, oid, len(intents),
                                                    ",".join(x["op"] for x in intents))]
    x = creates[0]
    key = x["idempotency_key"]
    out = []
    other_keys = keys_of_ref.get(oid, set()) - {key}
    if other_keys:
        out.append("%s order %s: the carrier saw other keys %s" % (prov, oid, sorted(other_keys)))
    if x["state"] == "done":
        if len(ships) != 1:
            out.append("%s order %s: done with %d shipments at the carrier" % (prov, oid, len(ships)))
        elif ships[0]["idempotency_key"] != key:
            out.append("%s order %s: shipment created under key %s, intent's %s"
                       % (prov, oid, ships[0]["idempotency_key"], key))
        elif order["waybill_no"] != ships[0]["tracking_number"]:
            out.append("%s order %s: waybill on the row %s, at the carrier %s"
                       % (prov, oid, short(order["waybill_no"]), short(ships[0]["tracking_number"])))
        elif shipment_tn.get(oid) != ships[0]["tracking_number"]:
            out.append("%s order %s: shipsync.shipment has %s, the carrier %s"
                       % (prov, oid, short(shipment_tn.get(oid)), short(ships[0]["tracking_number"])))
    elif x["state"] in ("dead", "invalid"):
        if x["id"] not in ticketed:
            out.append("%s order %s: %s without a ticket" % (prov, oid, x["state"]))
        if not (x["last_error"] or "").strip() or not x["error_class"]:
            out.append("%s order %s: %s without a reason" % (prov, oid, x["state"]))
        if x["state"] == "invalid" and (ships or keys_of_ref.get(oid)):
            out.append("%s order %s: invalid, yet sent to the carrier" % (prov, oid))
        elif len(ships) > 1:
            out.append("%s order %s: %s with %d shipments" % (prov, oid, x["state"], len(ships)))
        elif ships and ships[0]["idempotency_key"] != key:
            out.append("%s order %s: %s, shipped under another key" % (prov, oid, x["state"]))
    else:
        out.append("%s order %s: left %s (%s)" % (prov, oid, x["state"], short(x["last_error"], 80)))
    return out


def check_exactly_once(cluster, tables, sims, counts):
    """See the module comment; counts gets done/dead/invalid by provider."""
    problems = []
    ticketed = {int(r["outbox_id"]) for r in db_json(
        cluster, "SELECT outbox_id FROM shipsync.exception_ticket WHERE outbox_id IS NOT NULL")}
    for prov, table in tables.items():
        cond = "binding_id = (SELECT binding_id FROM shipsync.binding WHERE tbl = '%s'::regclass)" % table
        orders = db_json(cluster, "SELECT id, waybill_no FROM %s" % table)
        intents = {}
        for x in db_json(cluster, "SELECT id, order_key, op, state, idempotency_key, error_class,"
                                  " last_error FROM shipsync.outbox WHERE " + cond):
            intents.setdefault(x["order_key"], []).append(x)
        shipment_tn = {r["order_key"]: r["tracking_number"] for r in db_json(
            cluster, "SELECT order_key, tracking_number FROM shipsync.shipment WHERE " + cond)}
        ships = {}
        for s in sim_call(sims[prov], "/_sim/shipments", timeout=120):
            ships.setdefault(s["order_ref"], []).append(s)
        keys_of_ref = {}
        for key, a in sim_call(sims[prov], "/_sim/attempts", timeout=120).items():
            if a["order_ref"] is not None:
                keys_of_ref.setdefault(a["order_ref"], set()).add(key)
        known = set()
        for o in orders:
            oid = str(o["id"])
            known.add(oid)
            xs = intents.get(oid, [])
            problems += _order_problems(prov, o, xs, ships.get(oid, []), keys_of_ref,
                                        ticketed, shipment_tn)
            state = xs[0]["state"] if len(xs) == 1 else "other"
            counts[state] = counts.get(state, 0) + 1
            if state == "dead":
                why = "dead:%s" % xs[0]["error_class"]
                counts[why] = counts.get(why, 0) + 1
        unknown = sorted(set(ships) - known)
        if unknown:
            problems.append("%s: the carrier holds shipments of unknown orders %s"
                            % (prov, first(unknown)))
        st = sim_call(sims[prov], "/_sim/stats")
        if st["mismatch_422"]:
            problems.append("%s: %d requests re-used a key with other bytes (422)"
                            % (prov, st["mismatch_422"]))
    if problems:
        return ("exactly_once", False, "%d problems: %s" % (len(problems), first(problems)))
    return ("exactly_once", True, "")


def check_max_attempts(cluster, sims):
    problems = []
    worst = 0
    limits = {r["name"]: r["max_attempts"] for r in db_json(
        cluster, "SELECT name, max_attempts FROM shipsync.provider")}
    for r in db_json(cluster, """
            SELECT p.name, o.id, o.attempts, o.attempts > p.max_attempts AS over
            FROM shipsync.outbox o JOIN shipsync.provider p USING (provider_id)
            WHERE o.attempts = (SELECT max(attempts) FROM shipsync.outbox)
               OR o.attempts > p.max_attempts"""):
        worst = max(worst, r["attempts"])
        if r["over"]:
            problems.append("%s intent %s: %d attempts" % (r["name"], r["id"], r["attempts"]))
    for prov, url in sims.items():
        for key, a in sim_call(url, "/_sim/attempts", timeout=120).items():
            worst = max(worst, a["requests"])
            if a["requests"] > limits[prov]:
                problems.append("%s key %s: the carrier saw %d requests" % (prov, key, a["requests"]))
    limit = "/".join(str(v) for v in sorted(set(limits.values())))
    if problems:
        return ("max_attempts", False, "limit %s: %s" % (limit, first(problems)))
    return ("max_attempts", True, "most %d, limit %s" % (worst, limit))


def check_no_exit(cluster, kills):
    """The dispatcher exits only on shutdown (none during the soak), and
    dies only of the SIGKILLs we sent."""
    exits = []
    killed = 0
    last_words = {}
    with open(cluster.log, errors="replace") as fh:
        for line in fh:
            m = re.search(r"\[(\d+)\] (FATAL|PANIC):  (.*)", line)
            if m:
                last_words[m.group(1)] = m.group(2) + ": " + m.group(3)[:120]
                if m.group(2) == "PANIC":
                    exits.append("PANIC: " + m.group(3)[:120])
                continue
            m = re.search(r'background worker "pg_shipsync dispatcher" \(PID (\d+)\)'
                          r" (exited with exit code \d+|was terminated by signal (\d+))", line)
            if not m:
                continue
            if m.group(3) == "9":
                killed += 1
            else:
                exits.append("PID %s %s (%s)" % (m.group(1), m.group(2),
                                                 last_words.get(m.group(1), "no message")))
    if killed > kills:
        exits.append("%d SIGKILLs of the dispatcher, we sent %d" % (killed, kills))
    if exits:
        return ("no_exit", False, "%d exits: %s" % (len(exits), first(exits, 3)))
    return ("no_exit", True, "")


def check_memory(watch, bound_mb, growth_mb):
    note, problems = watch.verdict(bound_mb, growth_mb)
    if problems:
        return ("memory", False, note + ": " + first(problems))
    return ("memory", True, note)


def check_coverage(hits):
    missed = [k for k, n in hits.items() if n == 0]
    if missed:
        return ("coverage", False, "never hit: " + ", ".join(missed))
    return ("coverage", True, "")
