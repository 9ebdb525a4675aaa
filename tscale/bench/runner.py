"""One measurement: a fresh server, the driver processes, their results combined.

The order is always the same and never relies on sleeping: subscribers (or the
responder, or holders) start and report READY, then publishers (or the requester)
connect and report READY, then everyone gets GO at once.  Each wait has a deadline;
subscribers that are still running when the run's deadline passes are told STOP and
report what they have, so loss is measured instead of hung on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tscale.bench import procs
from tscale.bench.systems import System

READY_DEADLINE = 60.0
ISOLATION_REQUESTS = "svc.echo"   # the request name of the isolation scenario
STOP_GRACE = 10.0


@dataclass
class Pub:
    name: str
    count: int
    names: int = 0             # > 0: cycle over this many distinct names name.0, name.1, ...


@dataclass
class Sub:
    pattern: str
    count: int | None          # None: a queue-group member, stops on idle
    queue: str | None = None
    connections: int = 1       # connections (clients) in this subscriber process, count each


@dataclass
class Flow:
    """Publishers and subscribers of one throughput measurement."""
    size: int
    pubs: list[Pub]
    subs: list[Sub]
    expected: int              # events that should arrive at the subscribers in total
    workers: int = 1
    nodes: int = 1             # > 1: a chain of nodes, publishers on one end, subscribers on the other
    confirm: str | None = None  # subscribers: wait for this interest confirmation ("cluster") before READY
    curve: bool = False        # tscale only: the node runs --curve, the clients CURVE with its key

    @property
    def sent(self) -> int:
        return sum(p.count for p in self.pubs)


@dataclass
class Timing:
    idle_timeout: float = 2.0      # a subscriber stops this long after its last event
    start_timeout: float = 15.0    # ... or this long after GO without any event
    min_rate: float = 20_000.0     # events/s below which a run is cut off (bounds every run)


@dataclass
class Runner:
    workdir: Path
    timing: Timing = field(default_factory=Timing)
    _seq: int = 0

    # ------------------------------------------------------------ plumbing

    def _rundir(self, label: str) -> Path:
        self._seq += 1
        path = self.workdir / f"{self._seq:04d}-{label}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _spawn(self, rundir: Path, role: str, system: System, addr: str, args: dict,
               label: str, server=None) -> procs.Child:
        argv = system.driver_argv(role, addr, args)
        env = dict(system.env(), **(getattr(server, "client_env", None) or {}))
        return procs.Child(argv, f"{system.key} {label}", rundir / f"{label}.log", env=env, cwd=system.cwd())

    @staticmethod
    def _all_ready(children: list[procs.Child], deadline_s: float = READY_DEADLINE) -> None:
        end = time.monotonic() + deadline_s
        for child in children:
            child.expect("READY", end)

    # ------------------------------------------------------------ throughput

    def flow(self, system: System, flow: Flow) -> dict:
        rundir = self._rundir(f"{system.key}-{'chain' if flow.nodes > 1 else 'flow'}")
        if flow.nodes > 1:
            server = system.start_chain(rundir, flow.nodes, workers=flow.workers)
        else:
            server = system.start(rundir, workers=flow.workers, **({"curve": True} if flow.curve else {}))
        children: list[procs.Child] = []
        try:
            topology = dict(pubs=len(flow.pubs), subs=len(flow.subs),
                            queue=any(s.queue for s in flow.subs))
            t = self.timing
            subs = []
            for i, s in enumerate(flow.subs):
                args = dict(pattern=s.pattern, count=s.count, queue=s.queue, topology=topology,
                            idle_timeout=t.idle_timeout, start_timeout=t.start_timeout)
                if flow.confirm:
                    args["confirm"] = flow.confirm
                if s.connections > 1:
                    args["connections"] = s.connections
                subs.append(self._spawn(rundir, "sub", system, server.sub_addr, args, f"sub{i}", server))
            children += subs
            self._all_ready(subs)
            pubs = []
            for i, p in enumerate(flow.pubs):
                args = dict(name=p.name, count=p.count, size=flow.size, topology=topology)
                if p.names:
                    args["names"] = p.names
                pubs.append(self._spawn(rundir, "pub", system, server.pub_addr, args, f"pub{i}", server))
            children += pubs
            self._all_ready(pubs)

            per_node = getattr(server, "node_cpu_seconds", None)   # chains: CPU of each node
            node0 = per_node() if per_node else None
            cpu0 = server.cpu_seconds()
            deadline = time.monotonic() + t.start_timeout + flow.expected / t.min_rate + 30
            for child in subs + pubs:
                child.send("GO")
            pub_results = [c.result(deadline) for c in pubs]
            sub_results = self._collect(subs, deadline)
            cpu1 = server.cpu_seconds()
            node1 = per_node() if per_node else None
            counters = server.counters() if flow.nodes > 1 else None
        finally:
            for child in children:
                child.stop()
            server.stop()
        result = summarize_flow(flow, pub_results, sub_results,
                                None if cpu0 is None else cpu1 - cpu0)
        result["notes"] += server.loss_notes()
        if flow.nodes > 1:
            result.update(nodes=flow.nodes, path=server.names, formed_s=server.formed_s,
                          attempts=len(server.rejected) + 1, node_counters=counters,
                          node_cpu_us=[_per(None if a is None or b is None else b - a, result["received"])
                                       for a, b in zip(node0, node1)])
            result["notes"] += chain_loss_notes(counters, server.roles())
        return result

    def _collect(self, children: list[procs.Child], deadline: float) -> list[dict]:
        """Results of subscribers; those past the deadline are told STOP and report partial counts."""
        results = []
        for child in children:
            try:
                results.append(child.result(deadline))
            except procs.ChildError:
                if child.proc.poll() is not None:
                    raise
                child.send("STOP")
                res = child.result(time.monotonic() + STOP_GRACE)
                res["stopped_at_deadline"] = True
                results.append(res)
        return results

    # ------------------------------------------------------------ request/reply

    def reqrep(self, system: System, count: int, size: int, rate: float | None,
               timeout: float = 1.0, curve: bool = False) -> dict:
        rundir = self._rundir(f"{system.key}-reqrep")
        server = system.start(rundir, **({"curve": True} if curve else {}))
        children = []
        try:
            rep = self._spawn(rundir, "rep", system, server.addr, dict(name="svc.echo"), "rep", server)
            children.append(rep)
            self._all_ready([rep])
            req = self._spawn(rundir, "req", system, server.addr,
                              dict(name="svc.echo", count=count, size=size, rate=rate,
                                   timeout=timeout), "req", server)
            children.append(req)
            self._all_ready([req])
            cpu0 = server.cpu_seconds()
            for child in children:
                child.send("GO")
            per_request = max(timeout, 1.0 / rate if rate else 0.0)
            result = req.result(time.monotonic() + count * per_request + 30)
            cpu1 = server.cpu_seconds()
        finally:
            for child in children:
                child.stop()
            server.stop()
        lat = result.get("latency_us", {})
        out = dict(requests=count, ok=result["ok"], errors=result["errors"],
                   first_error=result.get("first_error"), **{k: lat.get(k) for k in
                                                             ("p50", "p90", "p99", "p999", "max", "mean")})
        out["requester_cpu_us"] = _per(result.get("cpu_s"), result["ok"])
        out["server_cpu_us"] = _per(None if cpu0 is None else cpu1 - cpu0, result["ok"])
        return out

    # ------------------------------------------------------------ latency isolation

    def isolation(self, system: System, requests: int, rate: float, flood_name: str, flood_size: int,
                  with_requests: bool, workers: int = 1) -> dict:
        """A 1 -> 1 flood on ``flood_name`` and, ``with_requests``, request/reply on another name
        paced at ``rate`` (the flood alone otherwise).  The flood lasts the requests' schedule
        plus one second; its rate is counted at its subscriber, latency at the requester."""
        rundir = self._rundir(f"{system.key}-isolation")
        server = system.start(rundir, workers=workers)
        t = self.timing
        duration = requests / rate + 1.0
        children = []
        req = None
        try:
            sub = self._spawn(rundir, "sub", system, server.addr,
                              dict(pattern=flood_name, count=None, idle_timeout=t.idle_timeout,
                                   start_timeout=t.start_timeout), "sub")
            children.append(sub)
            if with_requests:
                children.append(self._spawn(rundir, "rep", system, server.addr, dict(name=ISOLATION_REQUESTS),
                                            "rep"))
            self._all_ready(children)
            flood = self._spawn(rundir, "pub", system, server.addr,
                                dict(name=flood_name, count=None, size=flood_size, duration=duration), "flood")
            second = [flood]
            if with_requests:
                req = self._spawn(rundir, "req", system, server.addr,
                                  dict(name=ISOLATION_REQUESTS, count=requests, size=128, rate=rate, timeout=1.0),
                                  "req")
                second.append(req)
            children += second
            self._all_ready(second)
            cpu0 = server.cpu_seconds()
            for child in children:
                child.send("GO")
            deadline = time.monotonic() + duration + requests * 1.0 / 10 + 60
            latency = req.result(deadline) if req else None
            pub = flood.result(deadline)
            subs = self._collect([sub], deadline)
            cpu1 = server.cpu_seconds()
        finally:
            for child in children:
                child.stop()
            server.stop()
        received = subs[0]["received"]
        out = dict(sent=pub["sent"], received=received, lost=pub["sent"] - received,
                   rate=subs[0].get("rate"), publish_rate=pub.get("rate"),
                   server_cpu_us=_per(None if cpu0 is None else cpu1 - cpu0, received),
                   notes=server.loss_notes())
        if latency:
            lat = latency.get("latency_us", {})
            out.update(requests=requests, ok=latency["ok"], errors=latency["errors"],
                       first_error=latency.get("first_error"),
                       **{k: lat.get(k) for k in ("p50", "p90", "p99", "p999", "max", "mean")})
        return out

    # ------------------------------------------------------------ many subscriptions

    def many_subscriptions(self, system: System, count: int, idle_window: float, workers: int = 1) -> dict:
        """One client sets up ``count`` subscriptions (pipelined: one flush at the end); then
        the server's RSS and its CPU while nothing flows."""
        rundir = self._rundir(f"{system.key}-manysubs")
        with system.start(rundir, workers=workers) as server:
            rss0 = server.rss()
            holder = self._spawn(rundir, "subs", system, server.addr, dict(count=count, pipelined=True), "subs")
            try:
                self._all_ready([holder], READY_DEADLINE * 2)
                settle = time.monotonic() + 1.0   # let the first status round after the burst pass
                while time.monotonic() < settle:
                    time.sleep(0.05)
                rss1 = server.rss()
                cpu0, t0 = server.cpu_seconds(), time.monotonic()
                end = t0 + idle_window
                while time.monotonic() < end:
                    time.sleep(0.05)
                cpu1, t1 = server.cpu_seconds(), time.monotonic()
                holder.send("STOP")
                held = holder.result(time.monotonic() + STOP_GRACE + 30)
            finally:
                holder.stop()
        return dict(subscriptions=count, setup_s=held.get("setup_s"),
                    idle_cpu_pct=None if cpu0 is None else 100.0 * (cpu1 - cpu0) / (t1 - t0),
                    rss_per_sub=None if not (rss0 and rss1) else (rss1 - rss0) / count,
                    rss_idle=rss0, rss_subs=rss1)

    # ------------------------------------------------------------ memory footprint

    def footprint(self, system: System, subscriptions: int, connections: int,
                  holders: int = 4) -> dict:
        """RSS of the server idle, holding ``subscriptions`` (one client), holding ``connections``."""
        out = {}
        with system.start(self._rundir(f"{system.key}-rss-subs")) as server:
            out["rss_idle"] = server.rss()
            out["rss_subs"] = self._rss_while(system, server, "subs",
                                              [dict(count=subscriptions)])
        per = [connections // holders + (1 if i < connections % holders else 0) for i in range(holders)]
        with system.start(self._rundir(f"{system.key}-rss-conns")) as server:
            out["rss_idle_2"] = server.rss()
            out["rss_conns"] = self._rss_while(system, server, "conns",
                                               [dict(count=n) for n in per if n])
        out.update(subscriptions=subscriptions, connections=connections)
        return out

    def _rss_while(self, system: System, server, role: str, arg_list: list[dict]) -> int | None:
        rundir = self._rundir(f"{system.key}-{role}")
        children = []
        try:
            for i, args in enumerate(arg_list):
                children.append(self._spawn(rundir, role, system, server.addr, args, f"{role}{i}"))
            self._all_ready(children, READY_DEADLINE * 2)
            return server.rss()
        finally:
            for child in children:
                child.stop()


def chain_loss_notes(counters: list[dict], roles: list[str]) -> list[str]:
    """Where a chain lost events, from each node's status counters (path order).

    A node's own drops are counted (``dropped``); what one node sent on its peer links
    but the next one neither passed on (peer links, clients) nor counted as dropped
    vanished between the two without any counter, which is worth saying.
    """
    notes = []
    label = [f"{c['node']} ({role})" for c, role in zip(counters, roles)]
    for i, c in enumerate(counters):
        if c.get("error"):
            notes.append(f"{label[i]}: no counters ({c['error']})")
            continue
        if c.get("dropped"):
            notes.append(f"{label[i]} dropped {c['dropped']:,} events (its status counter"
                         + (f"; {c['peer_dropped']:,} on its peer links)" if c.get("peer_dropped") else ")"))
        if i == 0:
            continue
        prev = counters[i - 1]
        sent = prev.get("peer_events_out")
        if sent is None or prev.get("error"):
            continue
        last = i == len(counters) - 1
        passed = (c.get("events_out", 0) if last else c.get("peer_events_out") or 0) + c.get("dropped", 0)
        if sent > passed:
            notes.append(f"{sent - passed:,} events that {label[i - 1]} sent on its peer link did not come "
                         f"out of {label[i]} (delivered{'' if last else ' or forwarded'} "
                         f"{passed - c.get('dropped', 0):,}) and no node counted them as dropped")
    return notes


def _per(seconds: float | None, events: int) -> float | None:
    """Microseconds per event."""
    if seconds is None or not events:
        return None
    return seconds / events * 1e6


def summarize_flow(flow: Flow, pubs: list[dict], subs: list[dict], server_cpu_s: float | None) -> dict:
    received = sum(r["received"] for r in subs)
    firsts = [r["first"] for r in subs if r["first"] is not None]
    lasts = [r["last"] for r in subs if r["last"] is not None]
    span = (max(lasts) - min(firsts)) if firsts else 0.0
    pub_span = max(p["t_end"] for p in pubs) - min(p["t_start"] for p in pubs)
    return dict(
        size=flow.size, sent=flow.sent, expected=flow.expected, received=received,
        lost=flow.expected - received,
        rate=received / span if span > 0 else None,
        publish_rate=flow.sent / pub_span if pub_span > 0 else None,
        per_subscriber=[r["received"] for r in subs],
        server_cpu_us=_per(server_cpu_s, received),
        pub_cpu_us=_per(sum(p.get("cpu_s", 0.0) for p in pubs), flow.sent),
        sub_cpu_us=_per(sum(r.get("cpu_s", 0.0) for r in subs), received),
        idled_out=sum(1 for r in subs if r.get("idled_out")),
        stopped_at_deadline=sum(1 for r in subs if r.get("stopped_at_deadline")),
        notes=sorted({f"subscriber: {r[k]}" for r in subs for k in ("disconnected", "first_client_error")
                      if r.get(k)}),
    )
