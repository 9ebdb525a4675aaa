"""`tscale up --monitor HOST:PORT`: an HTTP endpoint in the supervisor for operators and their tools.

* `/metrics`: Prometheus exposition (text format; OpenMetrics when the scraper asks for it), made
  by the standard `prometheus_client` library from one custom collector.  The collector reads the
  status document the supervisor builds every second anyway (the one `tscale status` shows), so
  a scrape costs the workers nothing and values are up to about 1 s old.
* `/healthz`: 200 `{"status": "ok"}` when every worker is up (running and connected to the
  supervisor), else 503 with the workers that are not.
* `/status`: the status document as JSON (docs/STATUS.md).

Adding metrics: write a function `st -> [metric families]` and append it to `PARTS` (durable
queue depth and consumer lag go there once queues report in the status document).
The server runs in one daemon thread per request, at most `MAX_CONNECTIONS` at a time, each with a
read timeout; it never touches the supervisor's sockets.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder

from .address import resolve

log = logging.getLogger("supervisor")

MAX_CONNECTIONS = 32
READ_TIMEOUT = 5.0

COUNTER, GAUGE = CounterMetricFamily, GaugeMetricFamily

# (metric name, kind, key in a workers[] entry, help)
WORKER_METRICS = (
    ("tscale_events_in_total", COUNTER, "events_in",
     "Events a worker ingested (from its clients, forwarded to it as owner, no-responders replies)."),
    ("tscale_events_out_total", COUNTER, "events_out", "Event copies a worker handed to ZeroMQ for its clients."),
    ("tscale_events_dropped_total", COUNTER, "dropped",
     "Events a worker gave up on (slow consumers, full in-host bus, vanished queue groups, unsendable peers)."),
    ("tscale_events_forwarded_total", COUNTER, "forwarded", "Events a worker sent to other workers of this node."),
    ("tscale_errors_total", COUNTER, "errors", "ERR frames a worker sent to its clients."),
    ("tscale_peer_events_in_total", COUNTER, "peer_in", "Events a worker received from peer nodes."),
    ("tscale_peer_events_out_total", COUNTER, "peer_out", "Events a worker sent to peer nodes."),
    ("tscale_clients", GAUGE, "clients", "Client connections a worker knows."),
    ("tscale_subscriptions", GAUGE, "subscriptions", "Subscriptions held by a worker's connections."),
    ("tscale_worker_cpu_seconds_total", COUNTER, "cpu_seconds",
     "CPU time (user + system) of the worker process; restarts at 0 with the process."),
    ("tscale_worker_rss_bytes", GAUGE, "rss_bytes", "Resident memory of the worker process."),
    ("tscale_worker_restarts_total", COUNTER, "restarts", "Times the supervisor restarted this worker slot."),
)


def node_metrics(st: dict) -> list:
    node = st.get("node") or {}
    info = InfoMetricFamily("tscale", "The node: name, id, version, cluster.")
    info.add_metric([], {"name": str(node.get("name", "")), "id": str(node.get("id", "")),
                         "version": str(node.get("version", "")),
                         "cluster": str((st.get("cluster") or {}).get("name", ""))})
    out = [info]
    for name, key, doc in (("tscale_uptime_seconds", "uptime_s", "Seconds since the supervisor started."),
                           ("tscale_workers", "workers", "Worker slots of the node."),
                           ("tscale_supervisor_rss_bytes", "supervisor_rss_bytes", "Resident memory of the supervisor.")):
        out.append(GaugeMetricFamily(name, doc, value=node.get(key, 0)))
    members = (st.get("cluster") or {}).get("members", [])
    out.append(GaugeMetricFamily("tscale_cluster_members", "Nodes this node knows in its cluster, itself included.",
                                 value=len(members)))
    return out


def worker_metrics(st: dict) -> list:
    workers = st.get("workers", [])
    out = []
    for name, kind, key, doc in WORKER_METRICS:
        fam = kind(name, doc, labels=["worker"])
        for w in workers:
            fam.add_metric([str(w.get("index"))], w.get(key, 0))
        out.append(fam)
    up = GaugeMetricFamily("tscale_worker_up", "1 if the worker process is running.", labels=["worker"])
    slow = GaugeMetricFamily("tscale_slow_clients", "Connections of a worker that had events dropped "
                             "(the status document lists at most 10 per worker).", labels=["worker"])
    for w in workers:
        up.add_metric([str(w.get("index"))], 1 if w.get("alive") else 0)
        slow.add_metric([str(w.get("index"))], len(w.get("slow_clients", [])))
    return out + [up, slow]


def link_metrics(st: dict) -> list:
    """Per overlay link: traffic summed over the workers, RTT and control messages from the supervisor."""
    traffic: dict = {}
    for w in st.get("workers", []):
        for peer, p in (w.get("peers") or {}).items():
            t = traffic.setdefault(peer, [p.get("name", ""), 0, 0])
            t[1] += p.get("events_out", 0)
            t[2] += p.get("dropped", 0)
    sent = CounterMetricFamily("tscale_link_events_out_total", "Events sent to an overlay neighbour.",
                               labels=["peer", "peer_name"])
    dropped = CounterMetricFamily("tscale_link_events_dropped_total", "Events for an overlay neighbour "
                                  "that could not be sent.", labels=["peer", "peer_name"])
    for peer, (pname, n_out, n_drop) in sorted(traffic.items()):
        sent.add_metric([peer, pname], n_out)
        dropped.add_metric([peer, pname], n_drop)
    rtt = GaugeMetricFamily("tscale_link_rtt_seconds", "Round trip time of an overlay link's control plane.",
                            labels=["peer", "peer_name", "role"])
    ctl = CounterMetricFamily("tscale_link_control_messages_total", "Control messages on an overlay link.",
                              labels=["peer", "peer_name", "role"])
    for link in (st.get("cluster") or {}).get("links", []):
        labels = [str(link.get("peer", "")), str(link.get("name", "")), str(link.get("role", ""))]
        if link.get("rtt_ms") is not None:
            rtt.add_metric(labels, link["rtt_ms"] / 1000.0)
        ctl.add_metric(labels, link.get("control_msgs", 0))
    return [sent, dropped, rtt, ctl]


def queue_metrics(st: dict) -> list:
    """Per durable queue (docs/QUEUES.md): depth, bytes, last sequence; per consumer group: lag and acks."""
    fams = {key: GaugeMetricFamily(f"tscale_queue_{key}", doc, labels=["queue", "worker"]) for key, doc in (
        ("messages", "Events stored in a durable queue."), ("bytes", "Payload bytes stored in a durable queue."),
        ("last_seq", "Sequence number of the newest event a durable queue stored."))}
    discarded = CounterMetricFamily("tscale_queue_discarded_total", "Events a full queue discarded.",
                                    labels=["queue", "worker"])
    group = {key: GaugeMetricFamily(f"tscale_queue_group_{key}", doc, labels=["queue", "group"]) for key, doc in (
        ("pending", "Events of the queue a consumer group has not been given yet (its lag)."),
        ("ack_pending", "Events delivered to a consumer group and not acknowledged yet."))}
    group_total = {key: CounterMetricFamily(f"tscale_queue_group_{key}_total", doc, labels=["queue", "group"])
                   for key, doc in (("redelivered", "Redeliveries to a consumer group."),
                                    ("dead_lettered", "Events a consumer group gave up on (sent to $DLQ)."))}
    for w in st.get("workers", []):
        for name, q in sorted((w.get("queues") or {}).items()):
            labels = [name, str(w.get("index"))]
            for key, fam in fams.items():
                fam.add_metric(labels, q.get(key, 0))
            discarded.add_metric(labels, q.get("discarded", 0))
            for gname, g in sorted((q.get("groups") or {}).items()):
                for key, fam in list(group.items()) + list(group_total.items()):
                    fam.add_metric([name, gname], g.get(key, 0))
    return list(fams.values()) + [discarded] + list(group.values()) + list(group_total.values())


PARTS = [node_metrics, worker_metrics, link_metrics, queue_metrics]


class NodeCollector:
    """One prometheus_client collector fed by the supervisor's last status document."""

    def __init__(self, snapshot):
        self.snapshot = snapshot

    def collect(self):
        st = self.snapshot()
        if not st:
            return
        for part in PARTS:
            yield from part(st)


def registry_for(snapshot) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeCollector(snapshot))
    return reg


class _Handler(BaseHTTPRequestHandler):
    server_version = "tscale-monitor"
    timeout = READ_TIMEOUT
    monitor: "Monitor"

    def do_GET(self):   # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        m = self.monitor
        if path == "/metrics":
            encoder, ctype = choose_encoder(self.headers.get("Accept"))
            self._reply(200, ctype, encoder(m.registry))
        elif path == "/healthz":
            ok, down = m.health()
            body = {"status": "ok"} if ok else {"status": "unavailable", "workers_down": down}
            self._reply(200 if ok else 503, "application/json", json.dumps(body).encode())
        elif path == "/status":
            st = m.snapshot()
            if st is None:
                self._reply(503, "application/json", b'{"status": "starting"}')
            else:
                self._reply(200, "application/json", json.dumps(st, sort_keys=True).encode())
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz or /status\n")

    def _reply(self, code: int, ctype: str, body: bytes):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):   # no line per request on the node's log
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128          # listen backlog (socketserver's 5 makes a burst of scrapers wait for SYN retries)

    def __init__(self, addr, handler, family):
        self.address_family = family
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(addr, handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)      # too many open connections: close this one at once
            return
        super().process_request(request, client_address)

    def handle_error(self, request, client_address):
        """A client that hangs up or stalls is normal; anything else is one log line, never a traceback."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            log.warning("monitor: request from %s failed: %r", client_address[0], exc)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class Monitor:
    """Binds at construction (OSError if it cannot), serves in a daemon thread until close()."""

    def __init__(self, host: str, port: int, snapshot, health):
        self.snapshot = snapshot
        self.health = health
        self.registry = registry_for(snapshot)
        family, sockaddr = resolve(host, port, passive=True)
        handler = type("Handler", (_Handler,), {"monitor": self})
        self.server = _Server(sockaddr[:2], handler, family)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="tscale-monitor", daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
