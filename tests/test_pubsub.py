"""Publish/subscribe through a live 2-worker node: the wildcard matrix, headers, reply-to,
unsubscribe and the slow-joiner guarantee, for the Python client and for a "simple client"
(one raw DEALER on the node's first port, which depends on proxying between workers)."""
from __future__ import annotations

import threading
from collections import Counter, defaultdict

import pytest

from conftest import DEADLINE, name_for, uniq, wait_until
from tscale import protocol
from tscale.sharding import shard_of
from tscale.subjects import matches

# Relative to a fresh first token P: pattern "a.*.c" means "P.a.*.c", name "a.b" means "P.a.b".
NAMES = ["a.b.c", "a.b", "a.b.c.d", "a.b.x", "a.x.c", "a.c", "a.b.d", "a", "b.a", "x.b.y.z", "x.c.y", "x.b"]
EXPECTED = {   # written by hand from the semantics: * = exactly one token, > = one or more trailing tokens
    "a.b.c": {"a.b.c"},
    "a.*.c": {"a.b.c", "a.x.c"},
    "a.>": {"a.b.c", "a.b", "a.b.c.d", "a.b.x", "a.x.c", "a.c", "a.b.d"},
    "*": {"a"},
    ">": set(NAMES),
    "*.*": {"a.b", "a.c", "b.a", "x.b"},
    "a.*.>": {"a.b.c", "a.b.c.d", "a.b.x", "a.x.c", "a.b.d"},
    "*.b.>": {"x.b.y.z", "a.b.c", "a.b.c.d", "a.b.x", "a.b.d"},
    "x.c.y": {"x.c.y"},
    "nomatch.*": set(),
}


def test_expected_matrix_is_consistent_with_the_reference_matcher():
    for pattern, names in EXPECTED.items():
        assert {n for n in NAMES if matches(pattern, n)} == names, pattern


def spread_prefix(count: int = 2) -> str:
    """A prefix under which both the matching and the non-matching (pattern, name) pairs
    include names owned by every worker."""
    while True:
        p = uniq("wm")
        hit = {shard_of(f"{p}.{n}", count) for pat, ns in EXPECTED.items() for n in ns}
        miss = {shard_of(f"{p}.{n}", count) for pat, ns in EXPECTED.items() for n in NAMES if n not in ns}
        if hit == miss == set(range(count)):
            return p


class PySink:
    """Collects a Python client's events per pattern (callback subscriptions)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.got: dict[str, list] = defaultdict(list)

    def cb(self, key):
        def f(msg):
            with self.lock:
                self.got[key].append(msg)
        return f

    def names(self, key) -> list:
        with self.lock:
            return [m.name for m in self.got[key]]


@pytest.mark.parametrize("publisher", ["python", "simple"])
def test_wildcard_matrix(node2, clients, raws, publisher):
    P = spread_prefix()
    S = P + "s"                                   # sentinels, outside every pattern under test
    sentinels = [name_for(k, 2, S) for k in range(2)]
    full = {pat: f"{P}.{pat}" for pat in EXPECTED}

    py = clients(node2, name="matrix-py-sub")
    sink = PySink()
    for pat, fp in full.items():
        py.subscribe(fp, cb=sink.cb(pat))
    py.subscribe(S + ".>", cb=sink.cb("sentinel"))

    simple = [raws(port, name=f"matrix-raw-sub-{i}") for i, port in enumerate(node2.ports)]
    sids = []
    for r in simple:
        sids.append({pat: r.sub(fp) for pat, fp in full.items()})
        sids[-1]["sentinel"] = r.sub(S + ".>")

    if publisher == "python":
        pub = clients(node2, name="matrix-py-pub")
        for n in NAMES:
            pub.publish(f"{P}.{n}", n.encode())
        for s in sentinels:
            pub.publish(s, b"end")
    else:
        pub = raws(node2.port, name="matrix-raw-pub")      # the node's first port only
        for n in NAMES:
            pub.pub(f"{P}.{n}", n.encode())
        for s in sentinels:
            pub.pub(s, b"end")

    def expected_names(pat):
        return Counter(f"{P}.{n}" for n in EXPECTED[pat])

    # Wait for everything expected plus the sentinels of both owner workers (events on one
    # worker's path arrive in order, so nothing wrongly routed can still be in flight after them).
    wait_until(lambda: all(Counter(sink.names(pat)) >= expected_names(pat) for pat in EXPECTED)
               and set(sink.names("sentinel")) == set(sentinels), what="python subscriber's events")
    for r, ids in zip(simple, sids):
        r.wait_events(lambda evs, r=r, ids=ids: all(Counter(r.names(ids[pat])) >= expected_names(pat)
                                                  for pat in EXPECTED)
                      and set(r.names(ids["sentinel"])) == set(sentinels), what="simple subscriber's events")

    for pat in EXPECTED:
        assert Counter(sink.names(pat)) == expected_names(pat), f"python subscriber, pattern {pat!r}"
        for i, (r, ids) in enumerate(zip(simple, sids)):
            assert Counter(r.names(ids[pat])) == expected_names(pat), f"simple subscriber on port {i}, {pat!r}"
    # payloads arrive intact
    for m in sink.got[">"]:
        assert m.data == m.name[len(P) + 1:].encode()
    for r, ids in zip(simple, sids):
        for sid, name, payload, meta in r.events:
            if sid == ids[">"]:
                assert payload == name[len(P) + 1:].encode() and meta is None


@pytest.mark.parametrize("port_index", [0, 1])
def test_welcome_announces_what_a_client_needs(node2, raws, port_index):
    """One address is enough: WELCOME carries the node id, limits, every worker's port and the shard hash."""
    r = raws(node2.ports[port_index], name="welcome")
    assert r.welcome[1] == 1
    info = r.welcome[2]
    st = node2.status()
    assert info["node_id"] == st["node"]["id"]
    assert info["max_payload"] == 1024 * 1024
    assert info["ports"] == node2.ports
    assert info["shard"] == {"hash": "crc32", "count": 2}
    assert info["worker"] == port_index


@pytest.mark.parametrize("owner", [0, 1])
def test_headers_and_reply_to_preserved(node2, clients, raws, owner):
    P = uniq("hdr")
    name = name_for(owner, 2, P)
    headers = {"Content-Type": "application/json", "trace-id": "abc123", "ünï": "cödé ✓", "empty": ""}
    py_sub = clients(node2, name="hdr-sub").subscribe(P + ".>")
    raw_sub = raws(node2.port, name="hdr-raw-sub")
    raw_sid = raw_sub.sub(P + ".>")

    pub = clients(node2, name="hdr-pub")
    pub.publish(name, b"from-python", headers=headers, reply="my.reply.box")
    raw_pub = raws(node2.port, name="hdr-raw-pub")
    raw_pub.pub(name, b"from-simple", headers=headers, reply="other.reply")
    raw_pub.pub(name, b"bare")

    got = {}
    for _ in range(3):
        m = py_sub.next_msg(timeout=DEADLINE)
        got[m.data] = m
    assert got[b"from-python"].name == name
    assert got[b"from-python"].headers == headers
    assert got[b"from-python"].reply == "my.reply.box"
    assert got[b"from-simple"].headers == headers
    assert got[b"from-simple"].reply == "other.reply"
    assert got[b"bare"].headers is None and got[b"bare"].reply is None

    raw_sub.wait_events(lambda evs: len(evs) >= 3, what="3 events on the simple subscriber")
    by_payload = {e[2]: e for e in raw_sub.events}
    assert by_payload[b"from-python"] == (raw_sid, name, b"from-python", [headers, "my.reply.box"])
    assert by_payload[b"from-simple"] == (raw_sid, name, b"from-simple", [headers, "other.reply"])
    assert by_payload[b"bare"][3] is None


def test_binary_payloads_round_trip(node2, clients):
    P = uniq("bin")
    payloads = [b"", b"\x00", bytes(range(256)), b"\xff" * 70000]
    sub = clients(node2).subscribe(P + ".*")
    pub = clients(node2)
    for i, p in enumerate(payloads):
        pub.publish(f"{P}.{i}", p)
    got = {m.name: m.data for m in (sub.next_msg(timeout=DEADLINE) for _ in payloads)}
    assert got == {f"{P}.{i}": p for i, p in enumerate(payloads)}


@pytest.mark.parametrize("kind", ["python", "simple"])
def test_unsubscribe_stops_delivery(node2, clients, raws, kind):
    P = uniq("uns")
    names = [name_for(k, 2, P) for k in range(2)]
    pub = clients(node2, name="uns-pub")
    if kind == "python":
        c = clients(node2, name="uns-sub")
        keep = c.subscribe(P + ".>")
        gone = c.subscribe(P + ".*")
        for n in names:
            pub.publish(n, b"before")
        assert len([gone.next_msg(DEADLINE) for _ in names]) == 2
        assert len([keep.next_msg(DEADLINE) for _ in names]) == 2
        gone.unsubscribe()
        for n in names:
            pub.publish(n, b"after")
        assert sorted(keep.next_msg(DEADLINE).name for _ in names) == sorted(names)
        assert gone.pending() == 0
    else:
        r = raws(node2.port, name="uns-raw")
        keep = r.sub(P + ".>")
        gone = r.sub(P + ".*")
        for n in names:
            pub.publish(n, b"before")
        r.wait_events(lambda evs: len(evs) == 4, what="4 events before unsubscribe")
        r.unsub(gone)
        for n in names:
            pub.publish(n, b"after")
        r.wait_events(lambda evs: len([e for e in evs if e[0] == keep]) == 4, what="events after unsubscribe")
        after_gone = [e for e in r.events if e[0] == gone and e[2] == b"after"]
        assert after_gone == []


# ----------------------------------------------------------------------------- slow joiner
ROUNDS = 50


@pytest.mark.parametrize("sub_kind", ["python", "simple"])
def test_no_slow_joiner(node2, clients, raws, sub_kind):
    """subscribe() returns only when the interest is in place: an event published right after
    it returns, by another client, is delivered. Fresh patterns each round, names owned by both
    workers, literal and wildcard patterns, Python and simple publishers."""
    py_pub = clients(node2, name="sj-py-pub")
    raw_pub = raws(node2.port, name="sj-raw-pub")
    if sub_kind == "python":
        subc = clients(node2, name="sj-py-sub")
    else:
        subc = raws(node2.port, name="sj-raw-sub")
    missed = []
    for i in range(ROUNDS):
        owner = i % 2
        literal = (i // 2) % 2 == 0
        via_python = (i // 4) % 2 == 0
        P = uniq("sj")
        name = name_for(owner, 2, P)
        pattern = name if literal else P + ".>"
        payload = f"round-{i}".encode()
        if sub_kind == "python":
            sub = subc.subscribe(pattern)
        else:
            sid = subc.sub(pattern)
        if via_python:
            py_pub.publish(name, payload)
        else:
            raw_pub.pub(name, payload)
        if sub_kind == "python":
            try:
                m = sub.next_msg(timeout=10)
                assert (m.name, m.data) == (name, payload)
            except Exception:
                missed.append((i, owner, literal, via_python))
            sub.unsubscribe()
        else:
            try:
                subc.wait_events(lambda evs: any(e[0] == sid for e in evs), timeout=10)
                ev = [e for e in subc.events if e[0] == sid][0]
                assert (ev[1], ev[2]) == (name, payload)
            except AssertionError:
                missed.append((i, owner, literal, via_python))
            subc.unsub(sid)
    assert not missed, f"events published right after subscribe() returned were lost: " \
                       f"(round, owner, literal, python publisher) {missed}"


def test_repeating_a_confirmed_sub_keeps_the_subscription(node2, raws):
    """Regression: the same SUB (same sid, pattern, group) sent again with confirm="cluster"
    used to drop the subscription instead of confirming it again."""
    sub = raws(node2.port)
    name = name_for(0, node2.workers, uniq("resub"))
    for _ in range(2):
        req = sub.next_id()
        sub.send([protocol.SUB, 7, name, None, req, {"confirm": "cluster"}])
        sub.wait_for(lambda c, req=req: c[0] == protocol.OK and c[1] == req, DEADLINE, "OK for the confirmed SUB")
    pub = raws(node2.port)
    pub.pub(name, b"still here")
    sub.wait_events(lambda evs: any(e[1] == name for e in evs), DEADLINE, "the event after the repeated SUB")


def test_subscribe_without_wait_is_in_place_after_flush(node2, clients):
    """Issue 10: many subscriptions set up with wait=False cost one round trip (the flush);
    once flush() returns every one of them receives, on both workers, wildcards too."""
    sub_c = clients(node2, name="nowait-sub")
    pub_c = clients(node2, name="nowait-pub")
    P = uniq("nw")
    got: dict = {}
    n = 2000
    subs = [sub_c.subscribe(f"{P}.{i}", cb=lambda m: got.setdefault(m.name, m.data), wait=False)
            for i in range(n)]
    star = sub_c.subscribe(P + ".*", wait=False)
    sub_c.flush(timeout=DEADLINE)
    subs_now = lambda: node2.status()["totals"]["subscriptions"]   # noqa: E731 (figures are up to 1 s old)
    before = wait_until(lambda: (v := subs_now()) >= n + 2 and v, what="status to count every subscription")
    probe = sorted({n - 1} | {int(name_for(k, 2, P).rsplit(".", 1)[1]) for k in range(2)})   # both workers
    for i in probe:
        pub_c.publish(f"{P}.{i}", str(i).encode())
    wait_until(lambda: len(got) == len(probe), what="every probed subscription to receive")
    assert got == {f"{P}.{i}": str(i).encode() for i in probe}
    assert sorted(star.next_msg(timeout=DEADLINE).name for _ in probe) == sorted(f"{P}.{i}" for i in probe)
    for s in subs[:10]:
        s.unsubscribe()
    # node2 is shared: another test's client may still be leaving, so at most, not exactly, before - 10
    wait_until(lambda: subs_now() <= before - 10, what="status to count the 10 removed")


def test_twenty_thousand_subscriptions_without_wait_all_receive(node2, clients):
    """Issue 10: 20,000 subscribe(wait=False) then one flush(): afterwards the last one made,
    and the first, receive, on whichever worker owns them (they travel as SUBS frames)."""
    sub_c = clients(node2, name="nowait-20k")
    pub_c = clients(node2, name="nowait-20k-pub")
    assert sub_c._core.subs_batching            # the node says it takes SUBS
    P = uniq("nk")
    n = 20_000
    got: dict = {}
    subs = [sub_c.subscribe(f"{P}.{i}", wait=False) for i in range(n - 1)]
    subs.append(sub_c.subscribe(f"{P}.{n - 1}", cb=lambda m: got.setdefault(m.name, m.data), wait=False))
    sub_c.flush(timeout=DEADLINE)
    probe = {name_for(k, 2, P, start=n - 200) for k in range(2)} - {f"{P}.{n - 1}"}
    for name in sorted(probe) + [f"{P}.0", f"{P}.{n - 1}"]:
        pub_c.publish(name, name.encode())
    wait_until(lambda: got, what="the last subscription to receive")
    assert got == {f"{P}.{n - 1}": f"{P}.{n - 1}".encode()}
    assert subs[0].next_msg(timeout=DEADLINE).data == f"{P}.0".encode()
    for name in probe:
        assert subs[int(name.rsplit(".", 1)[1])].next_msg(timeout=DEADLINE).data == name.encode()
    assert sub_c.last_error is None


def test_subscribe_without_wait_falls_back_to_sub_frames(node2, clients):
    """A node without the SUBS feature (WELCOME "features") gets one SUB per subscription."""
    sub_c = clients(node2, name="nowait-old")
    pub_c = clients(node2, name="nowait-old-pub")
    sub_c._core.subs_batching = False            # as after the WELCOME of an older node
    P = uniq("no")
    subs = [sub_c.subscribe(f"{P}.{i}", wait=False) for i in range(300)]
    sub_c.flush(timeout=DEADLINE)
    for i in (0, 299):
        pub_c.publish(f"{P}.{i}", b"x")
    assert subs[0].next_msg(timeout=DEADLINE).name == f"{P}.0"
    assert subs[299].next_msg(timeout=DEADLINE).name == f"{P}.299"


def test_subs_frame_from_a_simple_client(node2, raws):
    """SUBS on one port of a simple (proxying) client: a bad triple is answered by its ERR with
    the frame's req, the others are applied; the OK comes once the owner workers have them, so
    events published right after it through the other worker are delivered.  req nil: no OK."""
    sub = raws(node2.ports[0], name="subs-raw")
    assert protocol.FEATURE_SUBS in sub.welcome[2]["features"]
    P = uniq("sr")
    names = [name_for(k, 2, P, start=i * 10) for i in range(3) for k in range(2)]   # both owners
    frame = [protocol.SUBS, "batch-1"]
    for sid, name in enumerate(names, start=1):
        frame += (sid, name, None)
    frame += (99, P + ".a b", None)
    sub.send(frame)
    sub.wait_for(lambda c: c[0] == protocol.OK and c[1] == "batch-1", DEADLINE, "OK for the SUBS frame")
    bad = [e for e in sub.errors if e[3] == "batch-1"]
    assert [e[1] for e in bad] == [protocol.E_BAD_PATTERN] and "sid 99" in bad[0][2]
    pub = raws(node2.ports[1], name="subs-raw-pub")
    for name in names:
        pub.pub(name, name.encode())
    sub.wait_events(lambda evs: len(evs) >= len(names), what="an event for every name")
    assert sorted((e[0], e[1]) for e in sub.events) == sorted(enumerate(names, start=1))
    # Repeated triples are idempotent; req nil gets no OK (the PONG comes, nothing before it).
    sub.frames.clear()
    sub.send([protocol.SUBS, None, 1, names[0], None, 2, names[1], None])
    sub.ping()
    assert [f[0] for f in sub.frames] == [protocol.PONG]
    late = name_for(1, 2, P + ".late")          # owned by the other worker: proxied
    sub.send([protocol.SUBS, "batch-2", 50, late, None])
    sub.wait_for(lambda c: c[0] == protocol.OK and c[1] == "batch-2", DEADLINE, "OK for the second SUBS")
    pub.pub(late, b"late")
    sub.wait_events(lambda evs: any(e[0] == 50 for e in evs), what="the event of the late SUBS")


def test_hostile_subs_frames(make_node, raws):
    """SUBS as an attacker sends it: an oversized frame is refused whole (ERR malformed with its
    req, nothing applied), a sid repeated in one frame ends with its last pattern only (the first
    leaves no interest behind); the connection and the node go on."""
    node = make_node(2)
    P = uniq("hs")
    first, second = name_for(1, 2, P + ".first"), name_for(1, 2, P + ".second")   # proxied from port 0
    r = raws(node.ports[0], name="hostile-subs")
    pub = raws(node.ports[1], name="hostile-subs-pub")

    big = [protocol.SUBS, "big"] + [5, first, None] * (protocol.MAX_SUBS_BATCH + 1)
    r.send(big)
    e = r.wait_error(protocol.E_MALFORMED)
    assert e[3] == "big" and str(protocol.MAX_SUBS_BATCH) in e[2]
    r.ping()

    r.send([protocol.SUBS, "twice", 7, first, None, 7, second, None])
    r.wait_for(lambda c: c[0] == protocol.OK and c[1] == "twice", DEADLINE, "OK for the SUBS frame")
    pub.pub(first, b"1")
    pub.pub(second, b"2")
    pub.ping()
    r.wait_events(lambda evs: any(ev[1] == second for ev in evs), what="the event of the last pattern")
    r.ping()
    assert [(ev[0], ev[1]) for ev in r.events] == [(7, second)]    # none for the replaced pattern (nor the big frame)

    def interest():
        return {row[0] for row in node.status()["cluster"]["interest"]["local"]}
    wait_until(lambda: second in interest(), DEADLINE, what="the node's interest in the last pattern")
    assert first not in interest()

    r.ping()
