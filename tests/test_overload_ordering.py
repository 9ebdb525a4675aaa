"""Overload and ordering: a stalled subscriber costs only itself (drops counted per client and
shown in status), and events from one publisher on one name arrive in order."""
from __future__ import annotations

import random

import pytest

from conftest import DEADLINE, name_for, running_node, uniq, wait_until
from tscale import protocol
from tscale.protocol import pack


@pytest.fixture(scope="module")
def busy_node(tmp_path_factory):
    with running_node(tmp_path_factory.mktemp("overload"), workers=2) as n:
        yield n


EVENTS = 2000
PAD = b"x" * 16384    # large enough that the stalled client's buffers (1000 frames + TCP) overflow


@pytest.mark.parametrize("owner", [0, 1])
def test_stalled_subscriber_does_not_hurt_another(busy_node, clients, raws, owner):
    """A raw subscriber with a tiny receive buffer that never reads, on the node's first port,
    subscribed to a busy name (owned by worker 0 directly, or by worker 1 through proxying).
    A healthy subscriber still gets every event, and status counts the stalled client's drops."""
    P = uniq("busy")
    name = name_for(owner, 2, P)
    label = uniq("stalled")
    stalled = raws(busy_node.port, name=label, rcvhwm=1, rcvbuf=4096)
    stalled.sub(name)
    healthy = clients(busy_node, name="healthy").subscribe(name)
    pub = clients(busy_node, name="busy-pub")
    for i in range(EVENTS):
        pub.publish(name, b"%08d" % i + PAD)
        m = healthy.next_msg(timeout=DEADLINE)          # lockstep: the healthy one never falls behind
        assert int(m.data[:8]) == i, "healthy subscriber lost or reordered an event"

    def stalled_entry():
        w0 = [w for w in busy_node.status()["workers"] if w["index"] == 0][0]
        mine = [s for s in w0["slow_clients"] if s["client"] == label]
        return mine and (w0, mine[0])

    w0, entry = wait_until(stalled_entry, what=f"slow client {label} listed in worker 0's status")
    assert entry["dropped"] > 0
    assert w0["dropped"] >= entry["dropped"]
    assert busy_node.status()["totals"]["dropped"] >= entry["dropped"]
    assert all(w["alive"] and w["restarts"] == 0 for w in busy_node.status()["workers"])


N_ORDER = 20000
WINDOW = 1000     # in flight at most: keeps every buffer below its high-water mark (no drops)


@pytest.mark.parametrize("owner", [0, 1])
@pytest.mark.parametrize("publisher", ["python", "simple"])
def test_one_publisher_one_name_in_order(node2, clients, raws, publisher, owner):
    name = name_for(owner, 2, uniq("ord"))
    py_sub = clients(node2, name="ord-sub").subscribe(name)
    raw_subs = [raws(p, name=f"ord-raw-{i}") for i, p in enumerate(node2.ports)]
    for r in raw_subs:
        r.sub(name)
    if publisher == "python":
        pub = clients(node2, name="ord-pub")
    else:
        pub = raws(node2.port, name="ord-raw-pub")
    rnd = random.Random(1234)
    py_seq = []
    for start in range(0, N_ORDER, WINDOW):
        seqs = range(start, start + WINDOW)
        if publisher == "python":
            for i in seqs:
                pub.publish(name, b"%d" % i)
        else:
            i = start
            while i < start + WINDOW:          # frames of 1..50 events
                k = min(rnd.randint(1, 50), start + WINDOW - i)
                pub.pub_many([(name, b"%d" % j) for j in range(i, i + k)])
                i += k
        for _ in seqs:
            py_sub_msg = py_sub.next_msg(timeout=DEADLINE)
            py_seq.append(int(py_sub_msg.data))
        for r in raw_subs:
            r.wait_events(lambda evs: len(evs) >= start + WINDOW, what=f"events up to {start + WINDOW}")
    assert py_seq == list(range(N_ORDER)), "python subscriber: out of order or missing"
    for i, r in enumerate(raw_subs):
        seq = [int(e[2]) for e in r.events]
        assert seq == list(range(N_ORDER)), f"simple subscriber on port {i}: out of order or missing"


def test_output_is_flushed_per_64_kib_of_input(busy_node, raws):
    """Issue 10: one busy connection must not hold back every other connection's output for
    32 of its frames.  A burst of 40 PUB frames of ~100 KB (500 events of 200 B each) reaches
    the subscriber in MSG frames of at most one input frame's events: the worker flushes as
    soon as 64 KiB of input has been processed, not after 32 frames."""
    name = name_for(0, 2, uniq("burst"))
    sub = raws(busy_node.ports[0], name="burst-sub")
    sub.sub(name)
    pub = raws(busy_node.ports[0], name="burst-pub")
    per_frame, frames = 500, 40
    frame = pack([protocol.PUB] + [name, b"x" * 200, None] * per_frame)
    for _ in range(frames):
        pub.send_bytes(frame)
    sub.wait_for(lambda c: len(sub.events) >= per_frame * frames, what="every event of the burst")
    sizes = [(len(f) - 1) // 4 for f in sub.frames if f[0] == protocol.MSG]
    assert sum(sizes) == per_frame * frames
    assert max(sizes) <= per_frame, f"MSG frames of up to {max(sizes)} events: output held back"
