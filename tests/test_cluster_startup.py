"""Subscriptions made while a cluster is still starting are never lost (issue 13, point 1).

Real processes: node a, then b --join a (and c --join b) are spawned at once, and
subscribers connect to b and c at random moments of their start (retrying until a worker
answers), some before the node's workers have heard their supervisor.  Then every node
publishes until each subscription has an event from each node.  A subscription that the
cluster lost stays silent and fails the test at the deadline (before the handover fix,
2 to 4 of 5 such subscriptions were lost).
"""
from __future__ import annotations

import random
import threading
import time

import pytest

import tscale
from clusterkit import HOSTS, ClusterRun, Receiver, run  # noqa: F401 (run: a fixture)
from conftest import wait_until

SUBS_PER_NODE = 4
SUB_WINDOW = 2.0          # subscribers start within this many seconds of the nodes' spawn
CONVERGE = 20.0           # generous on a loaded 2-core machine; converges in about a second


def _subscribe_when_up(run: ClusterRun, node, pattern: str, delay: float, out: list, errors: list):
    time.sleep(delay)   # the moment under test, not a synchronisation
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        try:
            c = tscale.Client(node.addr, name="startup-sub", connect_timeout=0.3)
        except tscale.ConnectError:
            continue
        try:
            r = Receiver()
            c.subscribe(pattern, cb=r)
            out.append((node.name, pattern, r, c))
        except Exception as exc:     # the test fails on it below, with the reason
            errors.append(f"{node.name} {pattern}: {exc!r}")
            c.close(1.0)
        return
    errors.append(f"{node.name}: no worker answered within 30 s")


@pytest.mark.parametrize("n_nodes,seed", [(2, 1), (2, 2), (3, 3), (3, 4)])
def test_subscriptions_made_during_start_get_events(run, n_nodes, seed):
    rnd = random.Random(seed)
    nodes = []
    for i in range(n_nodes):
        nodes.append(run.add(HOSTS[i], workers=2, join=nodes[-1:], start=False))
    subs, errors, threads = [], [], []
    for n in nodes:
        n.spawn()
    for n in nodes[1:]:
        for j in range(SUBS_PER_NODE):
            t = threading.Thread(target=_subscribe_when_up, daemon=True,
                                 args=(run, n, f"s{seed}.{n.name}.{j}.>", rnd.uniform(0, SUB_WINDOW), subs, errors))
            t.start()
            threads.append(t)
    for n in nodes:
        n.finish_start()
    for t in threads:
        t.join(40.0)
    for *_, c in subs:
        run.clients.append(c)
    assert not errors, errors
    assert len(subs) == SUBS_PER_NODE * (n_nodes - 1)
    pubs = {n.name: run.client(n) for n in nodes}

    def missing():
        out = []
        for name, pattern, r, _ in subs:
            got = {ev.split(".")[-1] for ev in r.names()}
            out += [f"{pattern} on {name} from {frm}" for frm in pubs if frm not in got]
        return out

    def all_arrived():
        for frm, p in pubs.items():
            for _, pattern, r, _ in subs:
                p.publish(pattern[:-1] + frm, b"1")
            p.flush()
        return not missing()

    try:
        wait_until(all_arrived, CONVERGE, 0.2, "an event from every node on every subscription")
    except AssertionError:
        st = {n.name: n.cluster()["interest"]["local"] for n in nodes}
        raise AssertionError(f"never arrived: {missing()}; each node's local interest: {st}") from None
