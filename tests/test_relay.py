"""A relay forwards whole peer batches unchanged (issue 13 point 4, workers/peers.py).

Three real nodes (one worker each); any tree of three nodes is a line, so the node
with two overlay links is the relay.  A batch whose events all go on to the other
neighbour is forwarded with the received event bytes, behind the relay's own header:

* what the far end delivers is exactly what was published (names, payloads, headers,
  reply subjects, order), and the relay counted it as forwarded (`peer_forwarded`);
* the relay does not look into payloads and metas of such a batch, so the far end's
  check is what stands between a forged or broken event and its subscribers: invalid
  events in a forwarded batch are never delivered there, and are counted against the
  link they arrived on.
"""
from __future__ import annotations

import pytest

from clusterkit import ClusterRun, Topo, links_of, wait_one_tree
from conftest import uniq, wait_until
from tscale import frames
from tscale.protocol import ERR, HELLO, PEER_EVENTS, WELCOME
from tscale.subjects import name_error


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    run = ClusterRun(tmp_path_factory.mktemp("relay"))
    try:
        nodes = run.build(Topo.chain(3), workers=1)
        view = wait_one_tree(nodes)
        mid = next(n for n in nodes if len(links_of(view, n.node_id)) == 2)
        a, c = [n for n in nodes if n is not mid]
        yield run, a, mid, c
    finally:
        run.stop_all()


def worker0(node) -> dict:
    return node.status()["workers"][0]


def test_relay_forwards_a_batch_unchanged_and_byte_exact(line):
    run, a, b, c = line
    P = uniq("relay")
    run.client(c).subscribe(P + ".>", confirm="cluster")   # the interest is on a and b before we publish
    far = c.raw(name="far-end")
    far.sub(P + ".>")
    far.ping()
    metas = [None, [{"k": "v", "ü": "ß\x00"}, None], [None, "_INBOX.r1"], [{"a": "", "b": "x" * 300}, "_INBOX.r2"],
             [{}, None], [None, None]]
    sent = [(f"{P}.{'xy'[i % 2]}.{i % 5}", bytes([i % 256]) * (i % 7) + b"\xff\x00" * (i % 3), metas[i % len(metas)])
            for i in range(300)]
    before = worker0(b)["peer_forwarded"]
    pub = a.raw(name="publisher")
    pub.pub_many(sent[:150])    # one PUB frame each: one peer batch a -> b -> c
    pub.pub_many(sent[150:])
    pub.ping()
    far.wait_events(lambda evs: len(evs) >= len(sent), what=f"{len(sent)} events at the far end")
    far.ping()
    assert [(name, payload, meta) for _, name, payload, meta in far.events] == sent
    assert worker0(b)["peer_forwarded"] - before >= len(sent)   # the relay forwarded, not re-packed
    pub.close()
    far.close()


def test_invalid_events_in_a_forwarded_batch_are_never_delivered(line):
    run, a, b, c = line
    P = uniq("forged")
    run.client(c).subscribe(P + ".>", confirm="cluster")
    watch = c.raw(name="watch-everything")
    watch.sub(">")
    watch.ping()
    # A connection to the relay that claims to be its neighbour a (believed without a cluster key,
    # tests/test_hostile.py); its batch names one valid subject, so the relay forwards it whole.
    fake = b.raw(hello=False)
    fake.send([HELLO, 1, {"name": "peer:forged", "lang": "tscale-node", "peer": a.node_id}])
    w = fake.wait_for(lambda f: f[0] in (WELCOME, ERR))
    assert w[0] == WELCOME, w
    name = P + ".n"
    bad = [(name, "text", None), (name, 5, None), (name, None, None), (name, [b"x"], None),
           (name, b"x", {"x": 1}), (name, b"x", [{"k": 1}, None]), (name, b"x", [None, 5]),
           (name, b"x", ["h", None]), (name, b"x", [None]), (name, b"x" * (1 << 20) + b"x", None)]
    good = [(name, f"good-{i}".encode(), [{"i": str(i)}, None] if i % 2 else None) for i in range(len(bad) + 2)]
    events = [e for pair in zip(good, bad + [None, None]) for e in pair if e is not None]
    quads = [x for name_, payload, meta in events for x in (name_, payload, meta, None)]
    inv_before = worker0(c)["peers"][b.node_id]["invalid_in"]
    fwd_before = worker0(b)["peer_forwarded"]
    fake.send([PEER_EVENTS, a.node_id, *quads])
    fake.ping()
    watch.wait_events(lambda evs: sum(e[1] == name for e in evs) >= len(good), what="the good events")
    st = wait_until(lambda: (w0 := worker0(c))["peers"][b.node_id]["invalid_in"] >= inv_before + len(bad) and w0,
                    what="the invalid events counted at the far end")
    watch.ping()
    got = [(n, p, m) for _, n, p, m in watch.events if n.startswith(P)]
    assert got == good                                      # in order, and nothing else
    for _, n, p, m in watch.events:
        assert name_error(n) is None and type(p) is bytes and (m is None or frames.meta_error(m) is None)
    assert st["peers"][b.node_id]["invalid_in"] == inv_before + len(bad)
    assert worker0(b)["peer_forwarded"] - fwd_before == len(events)   # the relay forwarded it whole
    fake.close()
    watch.close()


def test_a_pub_frame_with_an_invalid_event_is_checked_event_by_event(line):
    """The publisher's node takes a PUB frame for neighbours in one step only if every event is
    valid; otherwise event by event: the valid ones go on in order, the publisher hears of the rest."""
    run, a, b, c = line
    P = uniq("mixed")
    run.client(c).subscribe(P + ".>", confirm="cluster")
    far = c.raw(name="far-mixed")
    far.sub(P + ".>")
    far.ping()
    good = [(f"{P}.{i}", b"ok-%d" % i, None if i % 3 else [{"h": str(i)}, None]) for i in range(20)]
    pub = a.raw(name="pub-mixed")
    pub.pub_many(good[:10] + [(P + ".bad", "not bytes", None), (P + ".meta", b"x", [{"k": 1}, None])] + good[10:])
    e = pub.wait_for(lambda f: f[0] == ERR, what="ERR for the invalid events")
    assert e[1] == "malformed", e
    far.wait_events(lambda evs: len(evs) >= len(good), what="the valid events")
    far.ping()
    assert [(n, p, m) for _, n, p, m in far.events] == good
    pub.close()
    far.close()
