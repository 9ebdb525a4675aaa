"""The status document (`tscale status --json`, Client.status(), the STATUS command): a stable
schema and figures that follow what happens on the node."""
from __future__ import annotations

import signal
import time

import zmq

import tscale
from conftest import DEADLINE, collect, name_for, uniq, wait_until

NODE_KEYS = {"name": str, "id": str, "version": str, "uptime_s": (int, float), "listen": str,
             "supervisor_pid": int, "workers": int}
WORKER_KEYS = {"index": int, "pid": int, "alive": bool, "restarts": int, "cpu_percent": (int, float),
               "rss_bytes": int, "events_in": int, "events_out": int, "dropped": int, "clients": int,
               "subscriptions": int, "slow_clients": list}
TOTAL_KEYS = {"events_in", "events_out", "dropped", "clients", "subscriptions"}


def check_schema(st: dict, node) -> None:
    """Raise AssertionError unless `st` follows the documented schema for `node`."""
    for key in ("node", "workers", "totals"):
        assert key in st, f"status lacks {key!r}"
    n = st["node"]
    for k, typ in NODE_KEYS.items():
        assert k in n, f"node lacks {k!r}"
        assert isinstance(n[k], typ) and not isinstance(n[k], bool), f"node.{k} = {n[k]!r}"
    assert n["version"] == tscale.__version__
    assert n["listen"] == node.addr
    assert n["supervisor_pid"] == node.proc.pid
    assert n["workers"] == node.workers
    assert n["uptime_s"] >= 0
    ws = st["workers"]
    assert sorted(w.get("index") for w in ws) == list(range(node.workers)), "one entry per worker"
    for w in ws:
        for k, typ in WORKER_KEYS.items():
            assert k in w, f"worker {w.get('index')} lacks {k!r}"
            if typ is int:
                assert type(w[k]) is int, f"worker {w['index']}.{k} = {w[k]!r}"
            else:
                assert isinstance(w[k], typ), f"worker {w['index']}.{k} = {w[k]!r}"
        for s in w["slow_clients"]:
            assert isinstance(s["client"], str) and type(s["dropped"]) is int
    t = st["totals"]
    for k in TOTAL_KEYS:
        assert k in t, f"totals lacks {k!r}"
        assert t[k] == sum(w[k] for w in ws), f"totals.{k} is not the sum over workers"


def test_schema_via_raw_status_and_client(node2, clients):
    st = node2.status()
    check_schema(st, node2)
    assert sorted(w["pid"] for w in st["workers"]) == sorted(node2.children())
    assert all(w["alive"] for w in st["workers"])
    check_schema(clients(node2, name="status").status(), node2)
    # rss is sampled by the supervisor with psutil
    wait_until(lambda: all(w["rss_bytes"] > 0 for w in node2.status()["workers"]), what="rss figures")


def test_figures_follow_traffic(node2, clients):
    P = uniq("fig")
    name = name_for(1, 2, P)
    before = {w["index"]: w for w in node2.status()["workers"]}
    c = clients(node2, name="fig")
    sub = c.subscribe(name)
    n = 50
    for i in range(n):
        c.publish(name, b"x")
    collect(sub, n)

    def moved():
        w1 = [w for w in node2.status()["workers"] if w["index"] == 1][0]
        return (w1["events_in"] >= before[1]["events_in"] + n and w1["events_out"] >= before[1]["events_out"] + n
                and w1["subscriptions"] >= 1 and w1["clients"] >= 1)

    wait_until(moved, what="worker 1's counters to count the traffic")
    up1 = node2.status()["node"]["uptime_s"]
    wait_until(lambda: node2.status()["node"]["uptime_s"] > up1, what="uptime to advance")


def test_status_complete_right_after_start(make_node):
    node = make_node(3)
    check_schema(node.status(), node)


def test_status_schema_holds_while_worker0_restarts(make_node):
    node = make_node(2)
    old = node.kill_worker(0, signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            st = node.status(timeout=1.0)
        except (AssertionError, zmq.ZMQError):
            continue
        check_schema(st, node)       # every answer, even during the restart, follows the schema
        w0 = [w for w in st["workers"] if w["index"] == 0][0]
        if w0["pid"] != old and w0["alive"]:
            return
    raise AssertionError("worker 0 was not restarted")


def test_many_subscriptions_show_as_counts_and_a_bounded_sample(make_node, clients):
    """Issue 10: with 20,000 subscriptions (set up with wait=False and one flush) the status
    counts all of them and samples at most 100 interest entries, and it keeps following the
    node (figures of an idle node are still current)."""
    node = make_node(workers=2)
    c = clients(node, name="many")
    P = uniq("many")
    n = 20_000
    subs = [c.subscribe(f"{P}.{i}", wait=False) for i in range(n)]
    c.flush(timeout=DEADLINE)
    extra = 20      # at most this many of the node's own subscriptions (durable queues' inboxes)

    def counted():
        st = node.status()
        return st if (n <= st["totals"]["subscriptions"] <= n + extra
                      and n <= st["cluster"]["interest"]["local_count"] <= n + extra) else None

    st = wait_until(counted, what="status to count every subscription")
    assert st["cluster"]["interest_entries"] == st["cluster"]["interest"]["local_count"]
    assert 0 < len(st["cluster"]["interest"]["local"]) <= 100
    assert sum(w["subscriptions"] for w in st["workers"]) == st["totals"]["subscriptions"]
    c.publish(f"{P}.{n - 1}", b"x")
    assert subs[-1].next_msg(timeout=DEADLINE).data == b"x"
    wait_until(lambda: node.status()["totals"]["events_in"] >= 1, what="the idle node's figures to follow")
