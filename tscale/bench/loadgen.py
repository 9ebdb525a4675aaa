"""`tscale bench`: a load generator against a node that is already running.

It reuses the side-by-side harness's measuring parts (runner, driver processes,
the tscale client loops), pointed at the given address instead of a server it
starts itself.  Publishers and subscribers are separate processes; rates count
events actually received, first to last.
"""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from tscale.bench import procs
from tscale.bench.runner import Flow, Pub, Runner, Sub
from tscale.bench.systems import Server, Tscale


class RunningNode(Tscale):
    """A node someone else runs: never started or stopped here; CPU read from its processes."""

    def __init__(self, addr: str, supervisor_pid: int | None):
        self.addr = addr
        self.supervisor_pid = supervisor_pid

    def start(self, rundir: Path, workers: int = 1) -> Server:
        tree = None
        if self.supervisor_pid:
            try:
                tree = procs.Tree(self.supervisor_pid)   # only works when the node runs on this host
            except Exception:  # noqa: BLE001 - a remote node simply has no CPU figure
                tree = None
        return Server(self.addr, None, tree)


def _node_counters(addr: str) -> tuple[int, int | None]:
    import tscale
    with tscale.Client(addr, name="tscale-bench-probe") as c:
        st = c.status()
    return st.get("totals", {}).get("events_out", 0), st.get("node", {}).get("supervisor_pid")


def expected_total(count: int, subs: int, queue: str | None, request: bool) -> int:
    """What the progress bar counts to: requests, or event copies the subscribers should receive
    (every subscriber gets every event, a queue group shares them)."""
    return count if request or queue else count * subs


def run(addr: str, *, pubs: int, subs: int, size: int, count: int, queue: str | None,
        request: bool, rate: float | None, name: str, progress=None) -> dict:
    """Run one measurement; `progress(done, total)` is called about twice a second."""
    _, sup_pid = _node_counters(addr)
    system = RunningNode(addr, sup_pid)
    workdir = Path(tempfile.mkdtemp(prefix="tscale-bench-"))
    runner = Runner(workdir)
    out: dict = {}
    err: list = []
    total = expected_total(count, subs, queue, request)
    if request:
        job = lambda: out.update(runner.reqrep(system, count, size, rate))   # noqa: E731
    else:
        per_pub = [count // pubs + (1 if i < count % pubs else 0) for i in range(pubs)]
        expected = total
        flow = Flow(size=size, pubs=[Pub(name, n) for n in per_pub],
                    subs=[Sub(name, None if queue else count, queue) for _ in range(subs)],
                    expected=expected)
        job = lambda: out.update(runner.flow(system, flow))   # noqa: E731

    def target():
        try:
            job()
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            err.append(exc)

    base, _ = _node_counters(addr)
    t = threading.Thread(target=target, daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.5)
        if progress is not None:
            try:
                done, _ = _node_counters(addr)
                progress(min(done - base, total), total)
            except Exception:  # noqa: BLE001 - the bar is cosmetic
                pass
    procs.stop_all()
    if err:
        raise err[0]
    out.update(dict(mode="request" if request else "pubsub", server=addr, pubs=pubs if not request else 1,
                    subs=subs if not request else 1, size=size, count=count, queue=queue, rate_limit=rate,
                    at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    return out
