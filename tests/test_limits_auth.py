"""Max payload (announced at connect, enforced by client and node) and token authentication."""
from __future__ import annotations

import pytest

import tscale
from conftest import DEADLINE, Node, RawError, collect, name_for, uniq
from tscale import protocol

MAX = 1000
MAX_SUBS = 5


@pytest.fixture(scope="module")
def small_node(tmp_path_factory):
    n = Node(tmp_path_factory.mktemp("maxpayload"), workers=2, extra=["--max-payload", str(MAX)],
             env={"TSCALE_MAX_SUBS_PER_CONN": str(MAX_SUBS)})
    try:
        n.start()
        yield n
    finally:
        n.stop()


def test_max_payload_announced_and_enforced_by_client(small_node, clients):
    c = clients(small_node, name="mp")
    assert c.max_payload == MAX
    assert c.info["max_payload"] == MAX
    P = uniq("mp")
    sub = c.subscribe(P + ".>")
    with pytest.raises(tscale.TscaleError):
        c.publish(P + ".big", b"x" * (MAX + 1))
    c.publish(P + ".fits", b"x" * MAX)
    m = sub.next_msg(timeout=DEADLINE)
    assert (m.name, len(m.data)) == (P + ".fits", MAX)
    assert small_node.status()["node"]["max_payload"] == MAX


@pytest.mark.parametrize("port_index", [0, 1])
def test_oversize_payload_rejected_others_in_frame_delivered(small_node, clients, raws, port_index):
    P = uniq("mpr")
    names = [name_for(0, 2, P), name_for(1, 2, P, start=50), name_for(0, 2, P, start=100)]
    sub = clients(small_node, name="mp-sub").subscribe(P + ".>")
    r = raws(small_node.ports[port_index], name="mp-raw")
    assert r.welcome[2]["max_payload"] == MAX
    r.send([protocol.PUB, names[0], b"a" * 10, None,
            names[1], b"b" * (MAX + 1), None,        # too large
            names[1], b"c" * MAX, None,              # exactly the limit: fine
            names[2], b"d", None])
    e = r.wait_error(protocol.E_PAYLOAD_TOO_LARGE)
    assert e[4] is False, "payload_too_large is not fatal"
    assert str(MAX) in e[2]
    got = collect(sub, 3)
    assert sorted((m.name, m.data[:1], len(m.data)) for m in got) == sorted(
        [(names[0], b"a", 10), (names[1], b"c", MAX), (names[2], b"d", 1)])
    r.ping(DEADLINE)      # the connection is still served


def test_too_many_subscriptions(small_node, raws):
    r = raws(small_node.port, name="many-subs")
    P = uniq("many")
    sids = [r.sub(f"{P}.{i}") for i in range(MAX_SUBS)]
    with pytest.raises(RawError) as ei:
        r.sub(f"{P}.over")
    assert ei.value.code == protocol.E_TOO_MANY_SUBS
    r.unsub(sids[0])                # freeing one makes room again
    r.sub(f"{P}.again")
    r.ping(DEADLINE)


# ----------------------------------------------------------------------------- token
@pytest.fixture(scope="module")
def token_node(tmp_path_factory):
    n = Node(tmp_path_factory.mktemp("token"), workers=2, token="secret")
    try:
        n.start()
        yield n
    finally:
        n.stop()


def test_right_token_works(token_node, clients):
    c = clients(token_node, token="secret", name="tok-ok")
    P = uniq("tok")
    sub = c.subscribe(P + ".>")
    for k in range(2):
        c.publish(name_for(k, 2, P), b"hi")
    assert len(collect(sub, 2)) == 2
    assert c.status()["node"]["workers"] == 2


@pytest.mark.parametrize("token", ["wrong", None, ""])
def test_wrong_or_missing_token_is_refused(token_node, token):
    with pytest.raises(tscale.ConnectError):
        c = tscale.Client(token_node.addr, token=token, name="tok-bad", connect_timeout=10)
        c.close()


def test_raw_client_without_token_never_reaches_a_worker(token_node, clients, raws):
    """The token is checked at the ZeroMQ handshake (PLAIN + ZAP): a connection without it
    never gets a frame through, so nothing it sends can be delivered, before or after a HELLO."""
    P = uniq("tokraw")
    sub = clients(token_node).subscribe(P + ".>")
    bad = raws(token_node.port, hello=False)             # NULL mechanism: refused at the handshake
    wrong = raws(token_node.port, hello=False, token="nope")
    for r in (bad, wrong):     # without blocking: a refused handshake may leave no pipe to queue into
        r.send_nowait([protocol.PUB, name_for(0, 2, P), b"sneaky", None])
        r.send_nowait([protocol.HELLO, 1, {"name": "x", "token": "secret"}])   # the token in HELLO opens nothing
    good = raws(token_node.port, hello=False, token="secret")
    good.pub(name_for(1, 2, P), b"allowed")               # no HELLO needed: the handshake authenticated it
    m = sub.next_msg(timeout=DEADLINE)
    assert (m.name, m.data) == (name_for(1, 2, P), b"allowed")
    good.ping(DEADLINE)
    for r in (bad, wrong):
        r.pump(0.2)
        assert r.frames == [], "a connection without the token must receive nothing"
    with pytest.raises(tscale.Timeout):
        sub.next_msg(timeout=0.3)


def test_subscribe_without_wait_reports_node_errors(small_node, clients):
    """A subscription the node refuses, made with wait=False, raises nothing: the error
    arrives as last_error and through error_cb, and the connection keeps working."""
    seen = []
    c = clients(small_node, name="nowait-limit", error_cb=seen.append)
    P = uniq("nwl")
    names = []
    while len(names) <= MAX_SUBS:    # the limit is per connection per worker: all on worker 0
        names.append(name_for(0, 2, P, start=int(names[-1].rsplit(".", 1)[1]) + 1 if names else 0))
    for name in names:
        c.subscribe(name, wait=False)
    c.flush(timeout=DEADLINE)
    assert c.last_error is not None and c.last_error.code == protocol.E_TOO_MANY_SUBS
    assert [e.code for e in seen] == [protocol.E_TOO_MANY_SUBS]
    with pytest.raises(tscale.TscaleError):
        c.subscribe(P + ".x", confirm="cluster", wait=False)


def test_too_many_subscriptions_in_one_subs_frame(small_node, raws):
    """A SUBS frame over the per-connection limit: the triples past it get ERR too_many_subscriptions
    with the frame's req, the ones within it are in place, and the frame is still answered."""
    r = raws(small_node.port, name="many-subs-frame")
    P = uniq("manyf")
    names = [name_for(0, 2, P, start=10 * i) for i in range(MAX_SUBS + 2)]
    frame = [protocol.SUBS, "f"]
    for sid, name in enumerate(names, start=1):
        frame += (sid, name, None)
    r.send(frame)
    r.wait_for(lambda c: c[0] == protocol.OK and c[1] == "f", DEADLINE, "OK for the SUBS frame")
    over = [e for e in r.errors if e[3] == "f"]
    assert [e[1] for e in over] == [protocol.E_TOO_MANY_SUBS] * 2
    for name in names:
        r.pub(name, b"x")
    r.wait_events(lambda evs: len(evs) >= MAX_SUBS, what="events for the subscriptions within the limit")
    r.ping()
    assert sorted(ev[0] for ev in r.events) == list(range(1, MAX_SUBS + 1))
