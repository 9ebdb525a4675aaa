"""Helpers for the multi-node tests (tests/test_cluster.py, tests/test_netns.py).

Builds on tests/conftest.py (Node, RawClient, wait_until, ...) without changing it:

* `CNode` is a `Node` bound to any loopback address 127.0.0.K (Linux routes all of
  127/8 to lo), with `--join` seeds, a readable `--name` and JSON logs (so the
  tests can read precise timestamps of cluster events from the log file).
* `Topo` describes how a set of nodes joins (chain, star, tree, redundant links).
* `ClusterRun` starts a set of CNodes, waits until they form one overlay and
  stops every process it started, by pid, at teardown.
* `Receiver` records numbered events with their arrival times (thread-safe).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
import zmq

import tscale
from conftest import START_DEADLINE, Node, NodeStartError, RawClient, _reserved, port_free, wait_until

HOSTS = [f"127.0.0.{k}" for k in range(1, 6)]
FORM_DEADLINE = 30.0       # a cluster of up to 5 nodes on a loaded 2-core machine forms well within this


# ----------------------------------------------------------------------------- ports
def free_block_on(host: str, n: int) -> int:
    """A base port with base..base+n-1 free on `host` (and not handed out before in this session)."""
    import random
    rnd = random.SystemRandom()
    for _ in range(2000):
        base = rnd.randrange(20000, 60000 - n)
        block = range(base, base + n)
        if any(p in _reserved for p in block):
            continue
        if all(port_free(p, host) for p in block):
            _reserved.update(block)
            return base
    raise RuntimeError(f"no block of {n} free ports on {host}")


# ----------------------------------------------------------------------------- nodes
class CNode(Node):
    """A cluster node on `host` (127.0.0.K); worker i on port+i, control port port+workers."""

    def __init__(self, tmp_dir: Path, host: str, workers: int = 2, join: list[str] | None = None,
                 name: str = "", port: int | None = None, extra: list[str] | None = None, env: dict | None = None,
                 creds: dict | None = None):
        self.host = host
        self.join = list(join or [])
        self.name = name or f"n{host.rsplit('.', 1)[-1]}"
        flags = ["--name", self.name, "--log-format", "json"]
        if self.join:
            flags += ["--join", ",".join(self.join)]
        super().__init__(tmp_dir, workers=workers, extra=flags + list(extra or []), env=env,
                         port=port if port is not None else free_block_on(host, workers + 1), creds=creds)
        self.log_path = self.tmp_dir / f"{self.name}-{host}-{self.port}.log"
        self.node_id: str | None = None
        self.fixed_port = port is not None

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ctl_port(self) -> int:
        return self.port + self.workers

    def __repr__(self) -> str:
        return f"<{self.name} {self.addr} id={self.node_id}>"

    # -- lifecycle (the conftest versions assume 127.0.0.1) -------------------------------
    def start(self, timeout: float = START_DEADLINE) -> "CNode":
        self.spawn()
        return self.finish_start(timeout)

    def finish_start(self, timeout: float = START_DEADLINE) -> "CNode":
        """Wait until the spawned node serves; a port taken meanwhile gets one retry on a new block."""
        for attempt in range(2):
            try:
                st = self.wait_ready(timeout)
                self.node_id = st["node"]["id"]
                return self
            except NodeStartError:
                self.stop()
                if self.fixed_port or attempt == 1:
                    raise
                self.port = free_block_on(self.host, self.workers + 1)
                self.log_path = self.tmp_dir / f"{self.name}-{self.host}-{self.port}.log"
                self.spawn()
        return self

    def raw(self, port: int | None = None, **kw) -> RawClient:
        return RawClient(port if port is not None else self.port, host=self.host, **{**self.creds, **kw})

    def status(self, timeout: float = 10.0) -> dict:
        r = self.raw(hello=False, name="test-status")
        try:
            return r.status(timeout)
        finally:
            r.close()

    def cluster(self, timeout: float = 10.0) -> dict:
        return self.status(timeout)["cluster"]

    def _ready(self):
        self._check_running()
        st = self.status(timeout=2.0)
        ws = st.get("workers", [])
        if len(ws) != self.workers or not all(w.get("alive") and w.get("pid") for w in ws):
            return None
        self._seen_pids.update(w["pid"] for w in ws)
        return st

    def wait_ready(self, timeout: float = START_DEADLINE) -> dict:
        deadline = time.monotonic() + timeout
        try:
            st = wait_until(self._ready, timeout, 0.05, f"node {self.name} on {self.addr} to report all workers alive",
                            ignore=(AssertionError, zmq.ZMQError))
        except AssertionError as exc:
            self._check_running()
            raise NodeStartError(f"{exc}; log:\n{self.log_text()[-3000:]}") from None
        for p in self.ports:
            r = self.raw(p, hello=False, name="test-ready")
            try:
                r.ping(max(1.0, deadline - time.monotonic()))
            finally:
                r.close()
        self._probe_bus(max(5.0, deadline - time.monotonic()))
        return st

    def kill_hard(self) -> list[int]:
        """SIGKILL the supervisor and every worker, by pid (no BYE, no beacon: a crash)."""
        pids = [self.proc.pid] + [p for p in self.children() if p != self.proc.pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        wait_until(lambda: not _alive(pids[1:]), 10.0, what=f"workers of {self.name} to die")
        return pids

    # -- logs ----------------------------------------------------------------------------
    def log_records(self) -> list[dict]:
        out = []
        for line in self.log_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def first_log_time(self, needle: str, after: float = 0.0) -> float | None:
        """Wall-clock time (epoch seconds) of the first log line containing `needle` at or after `after`."""
        for rec in self.log_records():
            if needle in rec.get("msg", ""):
                t = log_time(rec["ts"])
                if t >= after - 0.002:
                    return t
        return None


def links_lost_in_logs(nodes) -> list[str]:
    """'<node>: <message>' for every overlay link a node declared dead (no heartbeat), from the JSON logs."""
    return [f"{n.name}: {rec['msg']}" for n in nodes for rec in n.log_records()
            if rec.get("proc") == "cluster" and "lost: no heartbeat" in rec.get("msg", "")]


def _alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def log_time(ts: str) -> float:
    """'2024-05-01T12:00:00.123Z' (tscale's JSON logs, UTC) -> epoch seconds."""
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


# ----------------------------------------------------------------------------- topologies
class Topo:
    """`joins[i]` lists the indexes of the nodes node i joins through (its --join seeds)."""

    def __init__(self, name: str, joins: list[list[int]]):
        self.name = name
        self.joins = joins

    @property
    def n(self) -> int:
        return len(self.joins)

    def __repr__(self) -> str:
        return self.name

    @staticmethod
    def chain(n: int) -> "Topo":
        return Topo(f"chain{n}", [[]] + [[i - 1] for i in range(1, n)])

    @staticmethod
    def star(n: int) -> "Topo":
        return Topo(f"star{n}", [[]] + [[0] for _ in range(1, n)])

    @staticmethod
    def tree(n: int) -> "Topo":
        # binary tree: node i joins (i-1)//2
        return Topo(f"tree{n}", [[]] + [[(i - 1) // 2] for i in range(1, n)])

    @staticmethod
    def redundant(n: int) -> "Topo":
        # a chain where every node from the third on also joins the node two before it: a loop
        # of seeds (0-1-2-0, ...), which the overlay must still route over without copies
        return Topo(f"redundant{n}", [[], [0]] + [[i - 1, i - 2] for i in range(2, n)])


# ----------------------------------------------------------------------------- a cluster run
class ClusterRun:
    """Starts nodes, tracks every one of them, stops them all (by pid) in `stop_all`."""

    def __init__(self, tmp_dir: Path):
        self.tmp_dir = Path(tmp_dir)
        self.nodes: list[CNode] = []
        self.clients: list[tscale.Client] = []

    def add(self, host: str, workers: int = 2, join: list[CNode] | list[str] = (), name: str = "",
            port: int | None = None, start: bool = True, env: dict | None = None, extra: list[str] | None = None,
            creds: dict | None = None) -> CNode:
        seeds = [j.addr if isinstance(j, CNode) else j for j in join]
        d = self.tmp_dir / (name or host)
        d.mkdir(parents=True, exist_ok=True)
        n = CNode(d, host, workers=workers, join=seeds, name=name, port=port, env=env, extra=extra, creds=creds)
        self.nodes.append(n)
        if start:
            n.start()
        return n

    def build(self, topo: Topo, workers=2, max_children: int | None = None) -> list[CNode]:
        """Start `topo.n` nodes on 127.0.0.1.. (node i joins its seeds); `max_children` bounds the
        overlay's fan-out (TSCALE_MAX_CHILDREN), which is how a test gets a deep tree or a path."""
        ws = workers if isinstance(workers, (list, tuple)) else [workers] * topo.n
        env = {"TSCALE_MAX_CHILDREN": str(max_children)} if max_children else None
        nodes: list[CNode] = []
        for i, seeds in enumerate(topo.joins):
            n = self.add(HOSTS[i], workers=ws[i], join=[nodes[j] for j in seeds], start=False, env=env)
            n.spawn()
            nodes.append(n)
        for n in nodes:       # processes start in parallel; wait for each in turn
            n.finish_start()
        return nodes

    def client(self, node: CNode, **kw) -> tscale.Client:
        kw.setdefault("name", "test-cluster")
        for k, v in node.creds.items():
            kw.setdefault(k, v)
        c = tscale.Client(node.addr, **kw)
        self.clients.append(c)
        return c

    def stop_all(self) -> None:
        for c in self.clients:
            try:
                c.close(2.0)
            except Exception:
                pass
        self.clients.clear()
        for n in self.nodes:
            try:
                n.stop()
            except Exception:
                pass


@pytest.fixture
def run(tmp_path):
    """A ClusterRun that stops everything it started at teardown (import it into a test module)."""
    r = ClusterRun(tmp_path)
    try:
        yield r
    finally:
        r.stop_all()


# ----------------------------------------------------------------------------- overlay checks
def overlay_view(nodes: list[CNode]) -> dict:
    """Each node's cluster status, keyed by node id (only nodes that answer)."""
    out = {}
    for n in nodes:
        try:
            out[n.node_id] = n.cluster(timeout=3.0)
        except (AssertionError, zmq.ZMQError):
            return {}
    return out


def one_tree_problem(nodes: list[CNode], view: dict | None = None) -> str | None:
    """None if `nodes` form one overlay tree and each knows all of them, else what is wrong."""
    view = overlay_view(nodes) if view is None else view
    if len(view) != len(nodes):
        return "not every node answered"
    ids = {n.node_id for n in nodes}
    for n in nodes:
        c = view[n.node_id]
        members = {m["id"] for m in c["members"]}
        if not ids <= members:
            return f"{n.name} knows {len(members & ids)} of {len(ids)} nodes"
    roots = [nid for nid, c in view.items() if c["root"]]
    if len(roots) != 1:
        return f"{len(roots)} roots"
    edges = set()
    for nid, c in view.items():
        if c["parent"] is not None:
            if c["parent"] not in ids:
                return f"{nid} has a parent outside the set"
            if nid not in view[c["parent"]]["children"]:
                return f"{nid}'s parent does not list it as a child (yet)"
            edges.add((c["parent"], nid))
        for ch in c["children"]:
            if ch not in ids or view[ch]["parent"] != nid:
                return f"{nid} lists child {ch} whose parent is not {nid} (yet)"
        if len(c["links"]) != (1 if c["parent"] else 0) + len(c["children"]):
            return f"{nid}: links and parent/children disagree"
    if len(edges) != len(nodes) - 1:
        return f"{len(edges)} links for {len(nodes)} nodes"
    if sum(len(c["links"]) for c in view.values()) != 2 * (len(nodes) - 1):
        return "link count is not 2(N-1)"
    return None


def tree_depths(view: dict) -> dict:
    """Each node's hops to the root, following the parents in the status views."""
    depth = {}
    for nid in view:
        d, cur = 0, nid
        while view[cur]["parent"] and d <= len(view):
            cur, d = view[cur]["parent"], d + 1
        depth[nid] = d
    return depth


def movable(view: dict, fanout: int) -> list[str]:
    """Nodes that could still move to a shallower parent (tscale.overlay.move_candidate's rule,
    from the status views): a lower-ranked node with room at least two levels above them."""
    depth = tree_depths(view)
    return [nid for nid in view
            if any(m < nid and len(view[m]["children"]) < fanout and depth[m] <= depth[nid] - 2 for m in view)]


def settle_problem(nodes: list[CNode], view: dict) -> str | None:
    """None if no node of the tree in `view` will move to a shallower parent any more: none
    could by the rule, and every node's gossiped depth (status) agrees with the tree."""
    fanout = min(int(n.env.get("TSCALE_MAX_CHILDREN", 8)) for n in nodes)
    depth = tree_depths(view)
    off = [nid for nid, c in view.items() if c.get("depth") != depth[nid]]
    if off:
        return f"{len(off)} node(s) whose gossiped depth is not their depth in the tree (yet)"
    left = movable(view, fanout)
    return f"{len(left)} node(s) can still move to a shallower parent" if left else None


def wait_one_tree(nodes: list[CNode], timeout: float = FORM_DEADLINE) -> dict:
    """The status views once `nodes` form one tree that has settled: nodes move to shallower
    parents for a few seconds after the tree first forms, and tests that take the tree's shape
    (who is linked to whom) must not see it change under them."""
    last = {"why": "never checked"}

    def ok():
        view = overlay_view(nodes)
        why = one_tree_problem(nodes, view) or settle_problem(nodes, view)
        last["why"] = why
        return view if why is None else None

    try:
        return wait_until(ok, timeout, 0.1, "one overlay tree")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last['why']}; nodes {nodes}\n{log_tails(nodes)}") from None


def log_tails(nodes, lines: int = 12) -> str:
    """The last supervisor/cluster log lines of each node, for a failure message (a cluster that
    did not form says why only in its logs, and CI keeps nothing else)."""
    out = []
    for n in nodes:
        recs = [r for r in n.log_records() if r.get("proc") in ("cluster", "supervisor")][-lines:]
        out.append(f"--- {n.name} ({n.host}:{n.port}):")
        out += [f"  {r.get('ts', '')} {r.get('proc', '')} {r.get('level', '')}: {r.get('msg', '')}" for r in recs]
    return "\n".join(out)


def links_of(view: dict, nid: str) -> list[str]:
    return [l["peer"] for l in view[nid]["links"]]


# ----------------------------------------------------------------------------- receiving
class Receiver:
    """Callback for subscriptions carrying numbered events (payload = decimal seq)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.arrivals: list[tuple[int, float, str]] = []   # (seq, monotonic time, name)

    def __call__(self, msg):
        t = time.monotonic()
        try:
            seq = int(msg.data)
        except ValueError:
            seq = -1
        with self.lock:
            self.arrivals.append((seq, t, msg.name))

    def seqs(self) -> list[int]:
        with self.lock:
            return [a[0] for a in self.arrivals]

    def names(self) -> list[str]:
        with self.lock:
            return [a[2] for a in self.arrivals]

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def snapshot(self) -> list[tuple[int, float, str]]:
        with self.lock:
            return list(self.arrivals)


def duplicates(seqs) -> dict:
    seen, dup = set(), {}
    for s in seqs:
        if s in seen:
            dup[s] = dup.get(s, 1) + 1
        seen.add(s)
    return dup


def write_figures(path: Path, figures: dict) -> Path:
    path.write_text(json.dumps(figures, indent=2, sort_keys=True))
    return path
