"""Bad input: every kind of malformed frame gets an error the sender can read, and the node keeps
serving everyone else. Specific error codes are checked on the shared node; hypothesis-generated
garbage is thrown at a node of its own, which must survive without a single worker restart."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DEADLINE, RawClient, collect, name_for, running_node, uniq, wait_until
from tscale import protocol


def ping_ok(r: RawClient):
    """The connection is still served after the error."""
    r.ping(DEADLINE)


@pytest.mark.parametrize("port_index", [0, 1])
def test_specific_error_codes(node2, raws, port_index):
    r = raws(node2.ports[port_index], name="bad-input")

    r.send([99, "x"])
    e = r.wait_error(protocol.E_UNKNOWN_COMMAND)
    assert e[4] is False and "99" in e[2]
    ping_ok(r)

    for bad in ("a b", "a..b", ".a", "a.*", "orders.>", "", "x" * 600):
        r.errors.clear()
        r.pub(bad, b"x")
        e = r.wait_error(protocol.E_BAD_NAME)
        assert e[4] is False and e[2]
    ping_ok(r)

    for req, bad in enumerate(("a.>.b", "a..b", "a*", "a b", ""), start=500):
        r.send([protocol.SUB, 1, bad, None, req])
        e = r.wait_for(lambda c: c[0] == protocol.ERR and c[3] == req, what=f"ERR for SUB {bad!r}")
        assert e[1] == protocol.E_BAD_PATTERN, e
    r.send([protocol.SUB, 1, "ok.pattern", "bad group", 600])
    assert r.wait_for(lambda c: c[0] == protocol.ERR and c[3] == 600)[1] == protocol.E_BAD_PATTERN
    r.send([protocol.SUB, "sid", "ok.pattern", None, 601])
    assert r.wait_for(lambda c: c[0] == protocol.ERR and c[3] == 601)[1] == protocol.E_BAD_SID
    ping_ok(r)

    for frame in (b"\xc1", b"not msgpack at all", b"\x92\x02", msgpack.packb({"a": 1}), msgpack.packb([]),
                  msgpack.packb(["PUB"]), msgpack.packb([protocol.PUB, "a", b"x"]),           # not a triple
                  msgpack.packb([protocol.PUB, "a", "text payload", None]),                    # payload not bin
                  msgpack.packb([protocol.PUB, "a", b"x", [{"k": 1}, None]]),                   # bad headers
                  msgpack.packb([protocol.SUB, 1, "a"])):                                      # short SUB
        r.errors.clear()
        r.send_bytes(frame)
        e = r.wait_error(protocol.E_MALFORMED)
        assert e[4] is False
    r.errors.clear()
    r.sock.send_multipart([msgpack.packb([protocol.PING, 1]), b"second frame"])
    assert r.wait_error(protocol.E_MALFORMED)[4] is False
    ping_ok(r)


def test_bad_version_is_fatal(node2, raws):
    r = raws(node2.port, hello=False)
    w = r.hello(version=99)
    assert w[0] == protocol.ERR
    assert w[1] == protocol.E_BAD_VERSION
    assert w[4] is True, "bad_version must be marked fatal"
    # a fresh, correct HELLO is served again
    assert r.hello()[0] == protocol.WELCOME


def test_bad_events_do_not_stop_good_ones_in_the_same_frame(node2, clients, raws):
    P = uniq("mix")
    good = [name_for(0, 2, P), name_for(1, 2, P, start=100)]
    sub = clients(node2, name="mix-sub").subscribe(P + ".>")
    r = raws(node2.port, name="mix-pub")
    r.send([protocol.PUB, good[0], b"1", None, "bad name", b"2", None, good[1], b"3", None,
            P + ".*", b"4", None, good[0], b"5", None])
    assert r.wait_error(protocol.E_BAD_NAME)
    got = collect(sub, 3)
    assert sorted(m.data for m in got) == [b"1", b"3", b"5"]


# ----------------------------------------------------------------------------- garbage
@pytest.fixture(scope="module")
def gnode(tmp_path_factory):
    with running_node(tmp_path_factory.mktemp("garbage"), workers=2) as n:
        yield n


@pytest.fixture(scope="module")
def garbage_raws(gnode):
    rs = [RawClient(p, name="garbage") for p in gnode.ports] + [RawClient(gnode.port, hello=False)]
    yield rs
    for r in rs:
        r.close()


@pytest.fixture(scope="module")
def baseline(gnode):
    st_ = gnode.status()
    return {w["index"]: w["pid"] for w in st_["workers"]}


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.floats()
    | st.text(max_size=12) | st.binary(max_size=40)
    | st.sampled_from(["a", "a.b", "a.*", "a.>", ">", "*", "a b", "", "_INBOX.x.1"]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=15)
codes = st.sampled_from(list(range(0, 24))) | st.integers(-5, 2 ** 32)
commands = st.builds(lambda code, rest: [code, *rest], codes, st.lists(values, max_size=9))
names = st.sampled_from(["g.a", "g.b.c", "garbage.x"]) | values
triples = st.lists(st.tuples(names, st.binary(max_size=30) | values, st.none() | values), min_size=1, max_size=4)
pubs = triples.map(lambda ts: [protocol.PUB] + [x for t in ts for x in t])
subs = st.builds(lambda sid, pat, grp, req: [protocol.SUB, sid, pat, grp, req], values, values, values, values)
hellos = st.builds(lambda v, opts: [protocol.HELLO, v, opts], st.sampled_from([1, 0, 2, 99]) | values,
                   st.dictionaries(st.sampled_from(["name", "token", "lang", "direct", "version"]), values)
                   | values)
structured = st.one_of(commands, pubs, subs, hellos).map(lambda c: msgpack.packb(c, use_bin_type=True))
frames = st.one_of(st.binary(max_size=300), structured,
                   st.lists(st.binary(max_size=20) | structured, min_size=2, max_size=3))

GARBAGE_SETTINGS = settings(max_examples=200, deadline=None,
                            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                   HealthCheck.data_too_large])


@GARBAGE_SETTINGS
@given(frame=frames, which=st.integers(0, 2))
def test_garbage_never_breaks_a_worker(gnode, garbage_raws, baseline, frame, which):
    r = garbage_raws[which]
    if isinstance(frame, list):
        r.sock.send_multipart(frame)
    else:
        r.send_bytes(frame)
    # The same connection is still answered: the worker survived and read past the garbage.
    r.ping(DEADLINE)
    r.events.clear()
    r.errors.clear()
    del r.frames[:]


def test_node_still_serves_after_garbage(gnode, garbage_raws, baseline, clients, raws):
    # runs after the hypothesis test in file order; also meaningful on its own
    st_ = gnode.status()
    for w in st_["workers"]:
        assert w["alive"], w
        assert w["restarts"] == 0, f"worker {w['index']} crashed on garbage and was restarted"
        assert w["pid"] == baseline[w["index"]]
    assert gnode.running()
    assert sorted(gnode.children()) == sorted(baseline.values())

    P = uniq("after")
    names = [name_for(k, 2, P) for k in range(2)]
    c = clients(gnode, name="after-garbage")
    sub = c.subscribe(P + ".>")
    raw_sub = raws(gnode.port, name="after-garbage-raw")
    raw_sid = raw_sub.sub(P + ".*")
    pub = clients(gnode, name="after-garbage-pub")
    for n in names:
        pub.publish(n, b"still working")
    got = collect(sub, 2)
    assert sorted(m.name for m in got) == sorted(names)
    raw_sub.wait_events(lambda evs: len([e for e in evs if e[0] == raw_sid]) == 2, what="simple subscriber events")
    # client errors are logged rate-limited, never one line per bad frame
    lines = gnode.log_text().splitlines()
    assert len(lines) < 100, f"{len(lines)} log lines after the garbage run:\n" + "\n".join(lines[-20:])
    wait_until(lambda: all(w["alive"] and w["restarts"] == 0 for w in gnode.status()["workers"]),
               what="all workers alive, none restarted")
