"""`tscale up --monitor`: /metrics parsed with prometheus_client's own text parser, /healthz
following the workers, /status, and what an attacker can send the HTTP port."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import DEADLINE, free_port_block, uniq, wait_until
from test_status import check_schema
from tscale.monitor import NodeCollector, registry_for


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.read(), r.getheader("Content-Type", "")
    finally:
        c.close()


def metrics(port: int) -> dict:
    """{(name, sorted labels): value} of every sample, parsed by prometheus_client."""
    code, body, ctype = get(port, "/metrics")
    assert code == 200 and ctype.startswith("text/plain"), (code, ctype)
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def by_name(samples: dict, name: str) -> dict:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def monitored(make_node):
    mport = free_port_block(1)
    node = make_node(2, extra=["--monitor", f"127.0.0.1:{mport}"])
    node.mport = mport
    return node


WORKER_SERIES = ["tscale_events_in_total", "tscale_events_out_total", "tscale_events_dropped_total",
                 "tscale_events_forwarded_total", "tscale_errors_total", "tscale_clients", "tscale_subscriptions",
                 "tscale_slow_clients", "tscale_worker_cpu_seconds_total", "tscale_worker_rss_bytes",
                 "tscale_worker_restarts_total", "tscale_worker_up", "tscale_peer_events_in_total",
                 "tscale_peer_events_out_total"]


def test_metrics_healthz_status(monitored, clients):
    node, mport = monitored, monitored.mport
    # a worker counts as up once it has reported to the supervisor (at the latest 1 s after it starts)
    assert wait_until(lambda: (lambda r: r[0] == 200 and r)(get(mport, "/healthz")),
                      what="/healthz 200")[1] == b'{"status": "ok"}'
    P = uniq("mon")
    c = clients(node, name="monitored-sub")
    sub = c.subscribe(P + ".>")
    for i in range(50):
        c.publish(f"{P}.{i}", b"x")
    for _ in range(50):
        sub.next_msg(DEADLINE)
    m = wait_until(lambda: (lambda m: sum(by_name(m, "tscale_events_out_total").values()) >= 50 and m)(metrics(mport)),
                   what="the 50 deliveries in /metrics")
    for name in WORKER_SERIES:
        assert set(by_name(m, name)) == {(("worker", "0"),), (("worker", "1"),)}, name
    assert sum(by_name(m, "tscale_events_in_total").values()) >= 50
    assert sum(by_name(m, "tscale_subscriptions").values()) >= 1
    assert all(v > 0 for v in by_name(m, "tscale_worker_rss_bytes").values())
    assert all(v == 1 for v in by_name(m, "tscale_worker_up").values())
    info = by_name(m, "tscale_info")
    assert len(info) == 1 and dict(next(iter(info)))["version"] == __import__("tscale").__version__
    assert m[("tscale_workers", ())] == 2
    code, body, ctype = get(mport, "/status")
    assert code == 200 and ctype == "application/json"
    check_schema(json.loads(body), node)
    assert get(mport, "/metrics?x=1")[0] == 200


def test_healthz_is_503_while_a_worker_is_down(monitored):
    node, mport = monitored, monitored.mport
    sup = node.proc.pid
    os.kill(sup, signal.SIGSTOP)            # hold the supervisor so worker 1's port can be taken first
    blocker = socket.socket()
    try:
        victim = node.children()
        wpid = [p for p in victim if psutil.Process(p).cmdline()[-1] == "--index=1"][0]
        os.kill(wpid, signal.SIGKILL)
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

        def take_port() -> bool:
            # With SO_REUSEADDR, as libzmq binds: connections of the killed worker left in
            # TIME_WAIT do not block it (a plain bind, as port_free() tries, waits 60 s for them).
            try:
                blocker.bind(("127.0.0.1", node.port + 1))
                return True
            except OSError:
                return False
        wait_until(take_port, what="worker 1's port to be free")
        blocker.listen()
    finally:
        os.kill(sup, signal.SIGCONT)
    try:
        code, body, _ = wait_until(lambda: (lambda r: r[0] == 503 and r)(get(mport, "/healthz")),
                                   what="/healthz 503 while worker 1 cannot start")
        assert json.loads(body) == {"status": "unavailable", "workers_down": [1]}
        wait_until(lambda: metrics(mport)[("tscale_worker_restarts_total", (("worker", "1"),))] >= 1,
                   what="the restarts of worker 1 in /metrics (the snapshot is up to 1 s old)")
    finally:
        blocker.close()
    wait_until(lambda: get(mport, "/healthz")[0] == 200, timeout=DEADLINE, what="/healthz 200 again")


def test_monitor_survives_hostile_requests(monitored):
    node, mport = monitored, monitored.mport
    assert get(mport, "/nope")[0] == 404
    assert get(mport, "/metrics", method="POST")[0] == 501
    idle = []
    for payload in (b"\x00\xff garbage\r\n\r\n", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"GET"):
        s = socket.create_connection(("127.0.0.1", mport), timeout=DEADLINE)
        s.sendall(payload)
        idle.append(s)
    for _ in range(40):                     # more idle connections than the server serves at once
        idle.append(socket.create_connection(("127.0.0.1", mport), timeout=DEADLINE))
    try:
        status_line = idle[0].recv(200)
        assert b"Error code: 400" in status_line, status_line
    finally:
        for s in idle:
            s.close()
    wait_until(lambda: get(mport, "/healthz")[0] == 200, what="/healthz after the abuse")
    assert node.running()
    assert "Traceback" not in node.log_text()


# ----------------------------------------------------------------------------- the collector, sans sockets
SNAPSHOT = {
    "node": {"name": "n1", "id": "abc", "version": "0.1.0", "uptime_s": 12.5, "workers": 2,
             "supervisor_rss_bytes": 1000},
    "cluster": {"name": "prod", "members": [{}, {}], "links": [
        {"peer": "p1", "name": "b", "role": "child", "rtt_ms": 0.5, "control_msgs": 7},
        {"peer": "p2", "name": "c", "role": "parent", "rtt_ms": None, "control_msgs": 1}]},
    "workers": [
        {"index": 0, "alive": True, "events_in": 5, "cpu_seconds": 1.5, "slow_clients": [{"client": "x", "dropped": 3}],
         "peers": {"p1": {"name": "b", "events_out": 10, "dropped": 1}}},
        {"index": 1, "alive": False, "events_in": 7, "peers": {"p1": {"name": "b", "events_out": 4, "dropped": 0},
                                                             "p2": {"name": "c", "events_out": 2, "dropped": 2}}}],
}


def parsed(snapshot) -> dict:
    from prometheus_client import generate_latest
    text = generate_latest(registry_for(lambda: snapshot)).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_collector_per_link_traffic_and_rtt():
    m = parsed(SNAPSHOT)
    assert by_name(m, "tscale_link_events_out_total") == {(("peer", "p1"), ("peer_name", "b")): 14,
                                                          (("peer", "p2"), ("peer_name", "c")): 2}
    assert by_name(m, "tscale_link_events_dropped_total")[(("peer", "p2"), ("peer_name", "c"))] == 2
    assert by_name(m, "tscale_link_rtt_seconds") == {(("peer", "p1"), ("peer_name", "b"), ("role", "child")): 0.0005}
    assert m[("tscale_link_control_messages_total", (("peer", "p2"), ("peer_name", "c"), ("role", "parent")))] == 1
    assert m[("tscale_cluster_members", ())] == 2
    assert m[("tscale_worker_up", (("worker", "1"),))] == 0
    assert m[("tscale_slow_clients", (("worker", "0"),))] == 1
    assert m[("tscale_worker_cpu_seconds_total", (("worker", "0"),))] == 1.5
    assert m[("tscale_events_in_total", (("worker", "1"),))] == 7


def test_collector_before_the_first_snapshot_is_empty():
    assert list(NodeCollector(lambda: None).collect()) == []


# ----------------------------------------------------------------------------- per-link metrics, two real nodes
def test_link_traffic_and_rtt_of_two_nodes(tmp_path):
    from clusterkit import ClusterRun, wait_one_tree
    run = ClusterRun(tmp_path)
    try:
        mport = free_port_block(1)
        a = run.add("127.0.0.1", workers=2, env={"TSCALE_MONITOR": f"127.0.0.1:{mport}"})
        b = run.add("127.0.0.2", workers=1, join=[a])
        wait_one_tree([a, b])
        P = uniq("link")
        sub = run.client(b).subscribe(P + ".>", confirm="cluster")
        pub = run.client(a)
        for i in range(40):
            pub.publish(f"{P}.{i}", b"x")
        for _ in range(40):
            sub.next_msg(DEADLINE)
        b_id = b.status()["node"]["id"]

        def link_samples():
            m = metrics(mport)
            sent = {dict(k)["peer"]: v for k, v in by_name(m, "tscale_link_events_out_total").items()}
            rtt = {dict(k)["peer"]: v for k, v in by_name(m, "tscale_link_rtt_seconds").items()}
            return sent.get(b_id, 0) >= 40 and b_id in rtt and (sent, rtt, m)

        sent, rtt, m = wait_until(link_samples, what="a's link to b in /metrics (traffic and RTT)")
        assert 0 < rtt[b_id] < 1.0
        assert m[("tscale_cluster_members", ())] == 2
        assert sum(by_name(m, "tscale_peer_events_out_total").values()) >= 40
    finally:
        run.stop_all()


def test_queue_depth_and_consumer_lag_in_metrics(monitored, clients):
    """Durable queues appear in /metrics: depth, bytes, last sequence; a group's lag and unacked count."""
    node, mport = monitored, monitored.mport
    c = clients(node, name="monitored-queue")
    q = uniq("mq")
    c.queue_add(q, f"{q}.>", ack_wait=30)
    for i in range(5):
        c.publish(f"{q}.{i}", b"12345678", confirm=True)
    cons = c.consumer(q, "g1")
    got = []
    wait_until(lambda: got.extend(cons.fetch(2 - len(got), timeout=1)) or len(got) == 2, what="2 deliveries")

    def seen():
        m = metrics(mport)
        depth = {dict(k)["queue"]: v for k, v in by_name(m, "tscale_queue_messages").items()}
        lag = {tuple(sorted(dict(k).values())): v for k, v in by_name(m, "tscale_queue_group_pending").items()}
        acks = {tuple(sorted(dict(k).values())): v for k, v in by_name(m, "tscale_queue_group_ack_pending").items()}
        key = tuple(sorted(("g1", q)))
        return (depth.get(q) == 5 and lag.get(key) == 3 and acks.get(key) == 2) and m
    m = wait_until(seen, what="queue depth 5, lag 3 and 2 unacked in /metrics")
    assert {dict(k)["queue"]: v for k, v in by_name(m, "tscale_queue_bytes").items()}[q] == 40
    assert {dict(k)["queue"]: v for k, v in by_name(m, "tscale_queue_last_seq").items()}[q] == 5
    for msg in got:
        msg.ack()
    wait_until(lambda: {tuple(sorted(dict(k).values())): v for k, v in
                        by_name(metrics(mport), "tscale_queue_group_ack_pending").items()}.get(tuple(sorted(("g1", q))))
               == 0, what="acks seen in /metrics")
