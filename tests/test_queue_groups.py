"""Queue groups through a live 2-worker node: each event to exactly one member, a fair split,
plain subscribers still get everything; members spread over Python and simple clients."""
from __future__ import annotations

import os
import signal
from collections import Counter

import pytest

from conftest import DEADLINE, Inbox, name_for, names_for, uniq, wait_until
from tscale import protocol
from tscale_workers.worker import ACK_TIMEOUT

N = 400


class Member:
    """A queue-group member: a Python client (callback) or a simple client on one port."""

    def __init__(self, label, py=None, raw=None):
        self.label = label
        self.py_inbox = None
        self.raw = raw
        self.sid = None
        self.bar_sid = None
        self.py = py
        self.sub = None

    def join(self, pattern, group, barrier_pattern):
        if self.py is not None:
            self.py_inbox = Inbox()
            self.bar_inbox = Inbox()
            self.sub = self.py.subscribe(pattern, queue=group, cb=self.py_inbox)
            self.py.subscribe(barrier_pattern, cb=self.bar_inbox)
        else:
            self.sid = self.raw.sub(pattern, group)
            self.bar_sid = self.raw.sub(barrier_pattern)

    def leave(self):
        if self.py is not None:
            self.sub.unsubscribe()
        else:
            self.raw.unsub(self.sid)

    def ids(self) -> list[int]:
        if self.py is not None:
            return [int(m.data) for m in self.py_inbox.snapshot()]
        self.raw.pump()
        return [int(e[2]) for e in self.raw.events if e[0] == self.sid]

    def barriers(self) -> set:
        if self.py is not None:
            return {m.name for m in self.bar_inbox.snapshot()}
        self.raw.pump()
        return {e[1] for e in self.raw.events if e[0] == self.bar_sid}


def make_members(node, clients, raws):
    return [Member("py-a", py=clients(node, name="qg-py-a")),
            Member("py-b", py=clients(node, name="qg-py-b")),
            Member("raw-port0", raw=raws(node.ports[0], name="qg-raw-0")),
            Member("raw-port1", raw=raws(node.ports[1], name="qg-raw-1"))]


def publish_all(pub, names, ids, python: bool):
    for i in ids:
        if python:
            pub.publish(names[i % len(names)], str(i).encode())
        else:
            pub.pub(names[i % len(names)], str(i).encode())


def settle(members, pub, barrier_names, python: bool, count_of, expected_total: int):
    """Wait for every event to land somewhere (`count_of(member)` summed), then for a barrier
    event from every owner worker at every member, so no duplicate can still be in flight."""
    wait_until(lambda: sum(count_of(m) for m in members) >= expected_total,
               what=f"{expected_total} queue-group deliveries")
    for b in barrier_names:
        if python:
            pub.publish(b, b"0")
        else:
            pub.pub(b, b"0")
    wait_until(lambda: all(m.barriers() >= set(barrier_names) for m in members), what="barriers at every member")


@pytest.mark.parametrize("publisher", ["python", "simple"])
def test_queue_group_exactly_once_fair_and_plain_subscribers_get_all(node2, clients, raws, publisher):
    P = uniq("qg")
    B = P + "bar"
    pattern, group = P + ".>", "workers"
    names = names_for(0, 2, P, 4) + names_for(1, 2, P, 4)     # owned by both workers
    barrier_names = [name_for(k, 2, B) for k in range(2)]

    members = make_members(node2, clients, raws)
    for m in members:
        m.join(pattern, group, B + ".>")
    plain_py_inbox = Inbox()
    clients(node2, name="qg-plain-py").subscribe(pattern, cb=plain_py_inbox)
    plain_raw = raws(node2.port, name="qg-plain-raw")
    plain_sid = plain_raw.sub(pattern)

    python = publisher == "python"
    pub = clients(node2, name="qg-pub") if python else raws(node2.port, name="qg-raw-pub")
    publish_all(pub, names, range(N), python)
    settle(members, pub, barrier_names, python, lambda m: len(m.ids()), N)

    all_ids = [i for m in members for i in m.ids()]
    dup = [i for i, c in Counter(all_ids).items() if c > 1]
    assert not dup, f"events delivered to more than one member: {dup[:20]}"
    assert sorted(all_ids) == list(range(N)), f"missing: {sorted(set(range(N)) - set(all_ids))[:20]}"

    share = N / len(members)
    counts = {m.label: len(m.ids()) for m in members}
    for label, c in counts.items():
        assert share * 0.5 <= c <= share * 1.5, f"unfair split {counts}"

    # plain subscribers on the same pattern get every event exactly once
    wait_until(lambda: len(plain_py_inbox) >= N, what="plain python subscriber to get all events")
    assert sorted(int(m.data) for m in plain_py_inbox.snapshot()) == list(range(N))
    plain_raw.wait_events(lambda evs: len([e for e in evs if e[0] == plain_sid]) >= N,
                          what="plain simple subscriber to get all events")
    assert sorted(int(e[2]) for e in plain_raw.events if e[0] == plain_sid) == list(range(N))


def test_queue_group_member_leaving_and_literal_names(node2, clients, raws):
    """A literal-name group on each owner worker; after a member leaves, the others share
    every later event, still exactly once, and the one that left gets nothing more."""
    P = uniq("qgl")
    pub = clients(node2, name="qgl-pub")
    for owner in (0, 1):
        name = name_for(owner, 2, P)
        B = f"{P}bar{owner}"
        members = make_members(node2, clients, raws)
        for m in members:
            m.join(name, "g", B + ".>")
        publish_all(pub, [name], range(100), True)
        settle(members, pub, [name_for(k, 2, B) for k in range(2)], True, lambda m: len(m.ids()), 100)
        first = [i for m in members for i in m.ids()]
        assert sorted(first) == list(range(100)), f"owner {owner}: {Counter(first).most_common(3)}"
        assert all(m.ids() for m in members), "every member got a share"

        leaver = members[2 + owner]     # a simple client on the owner's own port (see the xfail below
        before = len(leaver.ids())      # for a member that leaves through another worker)
        leaver.leave()
        publish_all(pub, [name], range(100, 220), True)
        later = lambda m: len([i for i in m.ids() if i >= 100])  # noqa: E731
        settle(members, pub, [name_for(k, 2, B, start=1000) for k in range(2)], True, later, 120)
        rest = sorted(i for m in members if m is not leaver for i in m.ids() if i >= 100)
        assert rest == list(range(100, 220)), f"owner {owner}: {Counter(rest).most_common(3)}"
        assert len(leaver.ids()) == before, "a member that left still got events"


def tcp_rx_queued(port: int) -> int:
    """Bytes waiting in the kernel receive queues of the connections accepted on 127.0.0.1:port."""
    total = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, state, queues = parts[1], parts[3], parts[4]
            if state == "01" and int(local.split(":")[1], 16) == port:
                total += int(queues.split(":")[1], 16)
    return total


def test_events_published_after_a_member_left_reach_the_remaining_members(make_node, clients, raws):
    """Worker 1 is held with SIGSTOP so that the order of its inputs is the one a busy worker can
    see: the events published after the member's unsubscribe returned, then the news of the leave.
    Several rounds, because the order in which a resumed worker reads its sockets is not fixed."""
    node = make_node(2)
    pub = raws(node.ports[1], name="leave-pub")         # reaches the owner directly
    w1 = node.worker_pids()[1]
    for rnd in range(5):
        P = uniq("leave")
        name = name_for(1, 2, P)
        members = [Member("py", py=clients(node, name="leave-py")),
                   Member("raw-port1", raw=raws(node.ports[1], name="leave-raw1")),
                   Member("leaver-port0", raw=raws(node.ports[0], name="leave-raw0"))]
        for m in members:
            m.join(name, "g", P + "bar.>")
        leaver, rest = members[2], members[:2]
        req = leaver.raw.next_id()
        os.kill(w1, signal.SIGSTOP)
        try:
            leaver.raw.send([protocol.UNSUB, leaver.sid, req])
            # The node may (correctly) hold the OK until worker 1 confirmed: then it comes later.
            # Wait well under ACK_TIMEOUT, after which worker 0 confirms anyway (a stopped
            # worker 1 never will): an OK from that fallback is not what this test is about.
            try:
                leaver.raw.wait_for(lambda c: c[0] == protocol.OK and c[1] == req, timeout=ACK_TIMEOUT / 2)
                confirmed = True
            except AssertionError:
                confirmed = False
            if confirmed:
                queued = tcp_rx_queued(node.ports[1])
                pub.pub_many([(name, b"%d" % i) for i in range(30)])
                wait_until(lambda: tcp_rx_queued(node.ports[1]) >= queued + 200, what="events queued at worker 1")
        finally:
            os.kill(w1, signal.SIGCONT)
        if not confirmed:
            leaver.raw.wait_for(lambda c: c[0] == protocol.OK and c[1] == req, timeout=DEADLINE)
            pub.pub_many([(name, b"%d" % i) for i in range(30)])
        wait_until(lambda: sorted(i for m in rest for i in m.ids()) == list(range(30)), timeout=10,
                   what=f"round {rnd}: the two remaining members to share all 30 events")
        assert leaver.ids() == []
