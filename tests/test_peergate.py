"""Sans-I/O: tscale/peergate.py, who may send peer frames to a worker."""
from __future__ import annotations

from tscale.peergate import CLAIM_WAIT, MAX_CLAIMS, PeerGate

HELLO = ("peer:b", "tscale-node", None, False, "b")


def test_only_current_neighbours_are_peers():
    g = PeerGate()
    assert not g.allowed("b")
    assert g.set_neighbours({"b": {}, "c": {}}, 0.0) == []
    assert g.allowed("b") and g.allowed("c") and not g.allowed("x") and not g.allowed("")
    g.set_neighbours({"c": {}}, 1.0)
    assert not g.allowed("b")


def test_a_claim_is_admitted_only_if_the_supervisor_names_the_peer_in_time():
    g = PeerGate()
    conn = object()
    assert g.claim(b"id1", conn, HELLO, 10.0)
    assert g.claim(b"id2", conn, ("x", "", None, False, "zz"), 10.0)
    assert g.set_neighbours({"c": {}}, 10.5) == []                 # not this one
    assert g.set_neighbours({"b": {}}, 11.0) == [(conn, HELLO)]    # named in time: admitted once
    assert g.set_neighbours({"b": {}}, 11.1) == []
    assert g.expire(10.0 + CLAIM_WAIT + 0.1) == [(b"id2", ("x", "", None, False, "zz"))]
    assert g.claims == {}
    g.claim(b"id3", conn, HELLO, 20.0)
    assert g.set_neighbours({"b": {}}, 20.0 + CLAIM_WAIT + 0.1) == []   # too late: refused for good


def test_claims_are_bounded():
    g = PeerGate()
    for i in range(MAX_CLAIMS):
        assert g.claim(b"%d" % i, None, HELLO, 0.0)
    assert not g.claim(b"one more", None, HELLO, 0.0)
    assert g.claim(b"0", None, HELLO, 1.0)          # a known claimer may renew


def test_invalid_events_are_counted_per_neighbour():
    g = PeerGate()
    g.set_neighbours({"b": {}}, 0.0)
    g.count_invalid("b", 3)
    g.count_invalid("b", 2)
    g.count_invalid("x", 9)                         # not a neighbour: nothing to show it under
    assert g.invalid == {"b": 5}
    g.set_neighbours({}, 1.0)
    assert g.invalid == {}
