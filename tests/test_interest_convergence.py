"""Interest converges, whatever the order of events (sans-I/O, hypothesis state machine).

The real pieces, wired as the processes wire them, with the transports modelled:

* worker -> supervisor: tscale/handover.py (InterestReport -> WorkerInterests) over a
  PUB/SUB pipe that drops everything until the supervisor's subscription has reached
  the worker's PUB (the slow joiner), then delivers in order.  A killed worker's last
  messages may still be read after the supervisor handled its death.
* supervisor -> workers: CLUSTER_SNAPSHOT on each WORKER_HELLO, PEER_INTEREST after; the
  same slow joiner in that direction.  A worker's view is a real RoutingTable.
* node <-> node: tscale/interest.py (InterestLinks over InterestTable) on a FIFO that
  empties when the link goes down; a send may fail (a full pipe), as NOBLOCK sends do.

Rules interleave node start, worker start, kill and restart, bus connection, link up and
down, subscribe and unsubscribe, message delivery and heartbeats.  At every quiet point
(`settle`: every pipe connected and drained, heartbeats exchanged) each node must hold
exactly the interest of the subscriptions that exist: its own, and behind each link the
sum of the nodes on that side, in the supervisor and in every worker.
"""
from __future__ import annotations

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tscale.handover import InterestReport, WorkerInterests
from tscale.interest import InterestLinks, apply_count
from tscale.routing import RoutingTable

NODES = 3
WORKERS = 2
KEYS = [("orders.>", None), ("orders.eu", "billing"), ("*.audit", None)]


class WorkerModel:
    def __init__(self, epoch: int):
        self.epoch = epoch
        self.report = InterestReport(self.epoch)
        self.alive = True
        self.subs: dict = {}          # the truth: key -> count of subscriptions held here
        self.hears_sup = False        # its SUB has reached the supervisor's PUB
        self.synced = False           # got a CLUSTER_SNAPSHOT
        self.view = RoutingTable(owner_of=lambda name: 0)
        self.inbox: list = []         # supervisor -> this worker


class NodeModel:
    def __init__(self, name: str):
        self.name = name
        self.epochs = 0
        self.workers = [self.new_worker() for _ in range(WORKERS)]
        self.sup_hears = [False] * WORKERS     # the supervisor's SUB reached worker k's PUB
        self.from_workers: list[list] = [[] for _ in range(WORKERS)]   # one pipe per worker slot
        self.handover = WorkerInterests()
        self.links = InterestLinks()

    def new_worker(self) -> WorkerModel:
        self.epochs += 1
        return WorkerModel(self.epochs)

    def truth(self) -> dict:
        out: dict = {}
        for w in self.workers:
            if w.alive:
                for key, n in w.subs.items():
                    apply_count(out, key, n)
        return out


class Convergence(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.nodes: dict[str, NodeModel] = {}
        self.edges: set[frozenset] = set()
        self.pipes: dict[tuple, list] = {}     # (from, to) -> in-flight node-to-node messages
        self.full: set[tuple] = set()          # (from, to) whose sends fail now

    # -- plumbing ------------------------------------------------------------------
    def _worker_publish(self, n: NodeModel, k: int):
        w = n.workers[k]
        for m in w.report.take():
            if n.sup_hears[k]:
                n.from_workers[k].append(("report", w.epoch, m))

    def _sup_to_worker(self, n: NodeModel, k: int, msg):
        w = n.workers[k]
        if w.alive and w.hears_sup:
            w.inbox.append(msg)

    def _do(self, n: NodeModel, actions: list):
        for a in actions:
            if a[0] == "workers":
                for k in range(WORKERS):
                    self._sup_to_worker(n, k, ("peer_interest", a[1], a[2], a[3]))
                continue
            link = (n.name, a[1])
            if link in self.full:
                if a[0] == "interest":
                    n.links.send_failed(a[1])
                continue
            self.pipes.setdefault(link, []).append(a)

    def _component(self, start: str, without: frozenset | None = None) -> set:
        seen, todo = {start}, [start]
        while todo:
            x = todo.pop()
            for e in self.edges:
                if e == without or x not in e:
                    continue
                (y,) = e - {x}
                if y not in seen:
                    seen.add(y)
                    todo.append(y)
        return seen

    # -- rules ---------------------------------------------------------------------
    @precondition(lambda self: len(self.nodes) < NODES)
    @rule()
    def start_node(self):
        name = "abc"[len(self.nodes)]
        self.nodes[name] = NodeModel(name)

    @precondition(lambda self: self.nodes)
    @rule(i=st.integers(0, NODES - 1), k=st.integers(0, WORKERS - 1), sup_side=st.booleans())
    def bus_connects(self, i, k, sup_side):
        n = self._node(i)
        if sup_side:
            n.sup_hears[k] = True
        else:
            n.workers[k].hears_sup = True

    @precondition(lambda self: self.nodes)
    @rule(i=st.integers(0, NODES - 1), k=st.integers(0, WORKERS - 1))
    def worker_hello(self, i, k):
        n = self._node(i)
        w = n.workers[k]
        if w.alive and not w.synced and n.sup_hears[k]:
            n.from_workers[k].append(("hello", w.epoch, None))

    @precondition(lambda self: self.nodes)
    @rule(i=st.integers(0, NODES - 1), k=st.integers(0, WORKERS - 1))
    def supervisor_reads(self, i, k):
        n = self._node(i)
        if not n.from_workers[k]:
            return
        kind, epoch, m = n.from_workers[k].pop(0)
        if kind == "hello":
            self._do(n, n.links.local(n.handover.hello(k, epoch)))
            tables = {link: [[p, g, c] for (p, g), c in t.items()] for link, t in n.links.table.links.items()}
            self._sup_to_worker(n, k, ("snapshot", epoch, tables))
        elif m[0] == "interest":
            self._do(n, n.links.local(n.handover.report(k, m[1], m[2], m[3])))
        # confirm requests start barriers, which are not modelled here

    @precondition(lambda self: self.nodes)
    @rule(i=st.integers(0, NODES - 1), k=st.integers(0, WORKERS - 1))
    def worker_reads(self, i, k):
        n = self._node(i)
        w = n.workers[k]
        if not w.alive or not w.inbox:
            return
        msg = w.inbox.pop(0)
        if msg[0] == "snapshot":
            if msg[1] == w.epoch:
                for link in {li[0] for li in w.view.link_interest()} - set(msg[2]):
                    w.view.clear_link(link)         # the PEERS part: links that are gone
                for link, entries in msg[2].items():
                    w.view.replace_link(link, entries)
                w.synced = True
                w.report.supervisor_heard()
                self._worker_publish(n, k)
        else:
            w.view.apply_link_entries(msg[1], msg[3], msg[2])

    @precondition(lambda self: self.nodes)
    @rule(i=st.integers(0, NODES - 1), k=st.integers(0, WORKERS - 1), key=st.sampled_from(KEYS),
          up=st.booleans(), confirm=st.booleans())
    def subscription(self, i, k, key, up, confirm):
        n = self._node(i)
        w = n.workers[k]
        if not w.alive or (not up and not w.subs.get(key)):
            return
        apply_count(w.subs, key, 1 if up else -1)
        w.report.change(key[0], key[1], 1 if up else -1)
        if confirm:
            w.report.confirm(len(w.subs))
        self._worker_publish(n, k)

    @precondition(lambda self: self.nodes)
    @rule(i=st.integers(0, NODES - 1), k=st.integers(0, WORKERS - 1))
    def worker_killed(self, i, k):
        n = self._node(i)
        n.workers[k].alive = False

    @precondition(lambda self: self.nodes)
    @rule(i=st.integers(0, NODES - 1), k=st.integers(0, WORKERS - 1))
    def supervisor_restarts_dead_worker(self, i, k):
        n = self._node(i)
        if n.workers[k].alive:
            return
        self._do(n, n.links.local(n.handover.down(k)))
        n.workers[k] = n.new_worker()      # new process, new epoch, nothing connected yet
        n.sup_hears[k] = False             # (the old pipe's unread messages stay queued)

    @precondition(lambda self: len(self.nodes) >= 2)
    @rule(i=st.integers(0, NODES - 1), j=st.integers(0, NODES - 1))
    def link_up(self, i, j):
        a, b = self._node(i), self._node(j)
        if a is b or b.name in self._component(a.name):
            return                          # the overlay is a forest (overlay.py's rank rule)
        self.edges.add(frozenset((a.name, b.name)))
        self._do(a, a.links.up(b.name))
        self._do(b, b.links.up(a.name))

    @precondition(lambda self: self.edges)
    @rule(data=st.data())
    def link_down(self, data):
        e = data.draw(st.sampled_from(sorted(self.edges, key=sorted)))
        x, y = sorted(e)
        self.edges.discard(e)
        self.pipes.pop((x, y), None)
        self.pipes.pop((y, x), None)
        self._do(self.nodes[x], self.nodes[x].links.down(y))
        self._do(self.nodes[y], self.nodes[y].links.down(x))

    @precondition(lambda self: self.edges)
    @rule(data=st.data(), toggle_full=st.booleans())
    def link_delivers(self, data, toggle_full):
        e = data.draw(st.sampled_from(sorted(self.edges, key=sorted)))
        src, dst = data.draw(st.permutations(sorted(e)))
        if toggle_full:
            self.full ^= {(src, dst)}
            return
        self._deliver_one(src, dst)

    @precondition(lambda self: self.edges)
    @rule(data=st.data())
    def heartbeat(self, data):
        e = data.draw(st.sampled_from(sorted(self.edges, key=sorted)))
        src, dst = data.draw(st.permutations(sorted(e)))
        self._heartbeat(src, dst)

    def _heartbeat(self, src: str, dst: str):
        n = self.nodes[src]
        if (src, dst) not in self.full:
            self.pipes.setdefault((src, dst), []).append(("hb",))
        self._do(n, n.links.retry(dst))

    def _deliver_one(self, src: str, dst: str) -> bool:
        pipe = self.pipes.get((src, dst))
        if not pipe:
            return False
        msg = pipe.pop(0)
        n = self.nodes[dst]
        if msg[0] == "interest":
            self._do(n, n.links.receive(src, msg[2], msg[3], msg[4]))
        elif msg[0] == "resync":
            self._do(n, n.links.resync(src))
        else:
            self._do(n, n.links.heard(src))
        return True

    # -- quiet point ------------------------------------------------------------------
    @precondition(lambda self: self.nodes)
    @rule()
    def settle(self):
        self.full.clear()
        for n in self.nodes.values():
            for k, w in enumerate(n.workers):
                if not w.alive:
                    self.supervisor_restarts_dead_worker("abc".index(n.name), k)
                n.sup_hears[k] = True
                n.workers[k].hears_sup = True
        for _ in range(30):
            moved = False
            for n in self.nodes.values():
                for k in range(WORKERS):
                    self.worker_hello("abc".index(n.name), k)
                    while n.from_workers[k]:
                        self.supervisor_reads("abc".index(n.name), k)
                        moved = True
                    while n.workers[k].inbox:
                        self.worker_reads("abc".index(n.name), k)
                        moved = True
            for e in sorted(self.edges, key=sorted):
                x, y = sorted(e)
                for src, dst in ((x, y), (y, x)):
                    self._heartbeat(src, dst)
                    while self._deliver_one(src, dst):
                        moved = True
            if not moved and all(w.synced for n in self.nodes.values() for w in n.workers):
                break
        self._check_converged()

    def _check_converged(self):
        truth = {name: n.truth() for name, n in self.nodes.items()}
        for name, n in self.nodes.items():
            assert n.handover.total() == truth[name], f"{name}: supervisor's view of its workers"
            assert n.links.table.local == truth[name], f"{name}: local interest"
            for e in self.edges:
                if name not in e:
                    continue
                (other,) = e - {name}
                behind: dict = {}
                for m in self._component(other, without=e):
                    for key, c in truth[m].items():
                        apply_count(behind, key, c)
                assert n.links.table.links.get(other, {}) == behind, f"{name}: interest behind link to {other}"
                for k, w in enumerate(n.workers):
                    seen = {(p, g): c for _, p, g, c in w.view.link_interest(other)}
                    assert seen == behind, f"{name} worker {k}: interest behind link to {other}"
            linked = {o for e in self.edges if name in e for o in e - {name}}
            assert set(n.links.table.links) == linked
            for k, w in enumerate(n.workers):
                assert {li[0] for li in w.view.link_interest()} <= linked, f"{name} worker {k}: a gone link"

    def _node(self, i: int) -> NodeModel:
        return self.nodes["abc"[i % len(self.nodes)]]

    @invariant()
    def counts_never_negative(self):
        for n in self.nodes.values():
            for t in [n.links.table.local, *n.links.table.links.values(), *n.handover.tables.values()]:
                assert all(c > 0 for c in t.values())

    def teardown(self):
        if self.nodes:
            self.settle()


TestInterestConvergence = Convergence.TestCase
TestInterestConvergence.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
