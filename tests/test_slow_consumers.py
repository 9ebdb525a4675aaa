"""Slow and non-reading clients (issue 7): the node's memory stays bounded in bytes, drops are
counted, other clients keep getting answers within a second, slow consumers are disconnected
after the grace period with a reason they can read, and control replies are never lost."""
from __future__ import annotations

import asyncio
import threading
import time

import msgpack
import psutil
import pytest
import zmq

import tscale
import tscale.aio
from conftest import DEADLINE, Inbox, name_for, pack, uniq, wait_until, zctx
from tscale import protocol
from tscale.config import DEFAULT_CLIENT_MAX_PENDING

SLOW = 100
FLOOD_S = 20.0
EVENT = b"f" * 1024
MiB = 1 << 20


def node_rss(node) -> int:
    total = 0
    for pid in node.pids():
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def non_reader(port: int, pattern: str, name: str) -> zmq.Socket:
    """A raw DEALER that says HELLO, subscribes and then never reads.  It sends ZMTP heartbeats
    (so the node's heartbeat timeout does not cut it: the slow-consumer policy must), and its own
    receive side is tiny, so what the node sends it stays in the node."""
    s = zctx().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 1)
    s.setsockopt(zmq.RCVBUF, 4096)
    s.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 600_000)
    s.connect(f"tcp://127.0.0.1:{port}")
    s.send(pack([protocol.HELLO, 1, {"name": name}]))
    assert s.poll(DEADLINE * 1000), "no WELCOME"
    assert msgpack.unpackb(s.recv())[0] == protocol.WELCOME
    s.send(pack([protocol.SUB, 1, pattern, None, 7]))
    assert s.poll(DEADLINE * 1000), "no OK"
    assert msgpack.unpackb(s.recv()) == [protocol.OK, 7]
    return s


class Flooder(threading.Thread):
    """A raw publisher that sends pre-packed PUB frames (names owned by both workers) as fast as
    the node takes them, until stopped."""

    def __init__(self, port: int, names: list[str]):
        super().__init__(daemon=True)
        frame = [protocol.PUB]
        for i in range(200):
            frame += (names[i % len(names)], EVENT, None)
        self.frame = pack(frame)
        self.port = port
        self.stop = threading.Event()
        self.frames = 0

    def run(self):
        s = zctx().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://127.0.0.1:{self.port}")
        try:
            while not self.stop.is_set():
                if s.poll(100, zmq.POLLOUT):
                    s.send(self.frame, zmq.NOBLOCK)
                    self.frames += 1
        finally:
            s.close(0)


def test_non_reading_subscribers_stay_bounded_and_are_disconnected(make_node, raws):
    """100 subscribers that never read, one flooding publisher, 20 s: the node's summed RSS stays
    under its documented ceiling, drops are counted, a normal client's PING and a request are
    answered within a second throughout, and every slow one is disconnected after the grace period
    (it finds ERR slow_consumer after its events when it finally reads, and can start again)."""
    node = make_node(workers=2)
    P = uniq("flood")
    names = [name_for(0, 2, P), name_for(1, 2, P)]
    base_rss = node_rss(node)
    slow = [non_reader(node.port, P + ".>", f"slow-{i}") for i in range(SLOW)]
    normal = raws(node.port, name="normal")               # on the slow ones' worker
    py = tscale.Client(node.addr, name="normal-py")
    try:
        py.subscribe("echo." + P, cb=lambda m: m.respond(m.data))
        assert py.request("echo." + P, b"warm", timeout=5.0).data == b"warm"   # the request lane is set up
        flood = Flooder(node.port, names)
        flood.start()
        worst_rss = worst_ping = worst_req = 0.0
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < FLOOD_S:
                worst_rss = max(worst_rss, node_rss(node))
                t = time.monotonic()
                normal.ping(timeout=5.0)
                worst_ping = max(worst_ping, time.monotonic() - t)
                t = time.monotonic()
                assert py.request("echo." + P, b"hi", timeout=5.0).data == b"hi"
                worst_req = max(worst_req, time.monotonic() - t)
                time.sleep(0.1)   # pacing of the probes only; nothing waits on it
        finally:
            flood.stop.set()
            flood.join(10)
        assert flood.frames > 100, "the flood did not flood"
        st = node.status()
        w0 = [w for w in st["workers"] if w["index"] == 0][0]
        print(f"base RSS {base_rss / MiB:.0f} MiB, worst {worst_rss / MiB:.0f} MiB; worst PING {worst_ping:.3f} s, "
              f"request {worst_req:.3f} s; {flood.frames * 200} events published, dropped {st['totals']['dropped']}, "
              f"slow_disconnects {st['totals']['slow_disconnects']}")
        ceiling = 2 * 64 * MiB + SLOW * (DEFAULT_CLIENT_MAX_PENDING + 2 * MiB)   # docs/GUARANTEES.md
        assert worst_rss < ceiling, f"node RSS {worst_rss / MiB:.0f} MiB over its ceiling {ceiling / MiB:.0f} MiB"
        assert worst_ping < 1.0 and worst_req < 1.0, (worst_ping, worst_req)
        assert st["totals"]["dropped"] > 0 and w0["dropped"] > 0
        assert w0["slow_clients"] and all(s["dropped"] > 0 for s in w0["slow_clients"])
        assert w0["slow_disconnects"] >= SLOW, w0["slow_disconnects"]
        assert w0["subscriptions"] < SLOW, "the slow consumers' subscriptions were not dropped"

        # A slow one reads at last: events, then the reason, fatal; then it can start over.
        s = slow[0]
        frames = []
        while s.poll(2000):
            frames.append(msgpack.unpackb(s.recv()))
        kinds = [f[0] for f in frames if f[0] != protocol.PING]      # the node's idle pings may follow
        assert kinds and set(kinds[:-1]) == {protocol.MSG}, kinds[-5:]
        notice = [f for f in frames if f[0] == protocol.ERR]
        assert notice[0][1] == protocol.E_SLOW_CONSUMER and notice[0][4] is True, notice
        s.send(pack([protocol.SUB, 2, P + ".>", None, 8]))
        assert s.poll(5000)
        again = msgpack.unpackb(s.recv())
        assert again[:2] == [protocol.ERR, protocol.E_SLOW_CONSUMER] and again[3] == 8, again
        s.send(pack([protocol.HELLO, 1, {"name": "slow-0"}]))
        s.send(pack([protocol.SUB, 2, P + ".>", None, 9]))
        got = [msgpack.unpackb(s.recv()) for _ in range(2) if s.poll(5000)]
        assert [g[0] for g in got] == [protocol.WELCOME, protocol.OK], got
    finally:
        py.close()
        for s in slow:
            s.close(0)


WINDOW = 2000
N_SUBS = 20000


def test_control_replies_are_never_lost(make_node):
    """Point 4 of issue 7: many SUBs with up to 2,000 unanswered at a time, from a client with a tiny
    receive side (so replies pile up in the node), past max_subs_per_conn: every SUB gets exactly one
    OK or ERR, or the node says slow_consumer (then it is allowed to stop answering); never silence."""
    node = make_node(workers=2, env={"TSCALE_MAX_SUBS_PER_CONN": "5000"})
    P = uniq("rl")
    s = zctx().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 10)
    s.setsockopt(zmq.RCVBUF, 2048)
    s.connect(f"tcp://127.0.0.1:{node.port}")
    try:
        s.send(pack([protocol.HELLO, 1, {"name": "many-subs"}]))
        assert s.poll(DEADLINE * 1000) and msgpack.unpackb(s.recv())[0] == protocol.WELCOME
        answers: dict[int, list] = {}
        outstanding: set[int] = set()
        sent = 0
        closed = None
        while sent < N_SUBS or outstanding:
            while sent < N_SUBS and len(outstanding) < WINDOW:
                # Never block in send: a client stuck sending while its replies fill its tiny receive
                # side would deadlock itself, not the node.  When ZeroMQ takes no more, read first.
                try:
                    s.send(pack([protocol.SUB, sent, f"{P}.{sent}", None, sent]), zmq.NOBLOCK)   # literal: half proxied
                except zmq.Again:
                    break
                outstanding.add(sent)
                sent += 1
            assert s.poll(10_000), f"{len(outstanding)} SUBs unanswered for 10 s and nothing else came: lost"
            cmd = msgpack.unpackb(s.recv())
            if cmd[0] == protocol.ERR and cmd[1] == protocol.E_SLOW_CONSUMER and cmd[3] is None:
                closed = cmd
                break
            if cmd[0] in (protocol.OK, protocol.ERR):
                req = cmd[1] if cmd[0] == protocol.OK else cmd[3]
                answers.setdefault(req, []).append(cmd)
                outstanding.discard(req)
        assert closed is None, f"the node gave up on a client that reads: {closed}"
        assert sorted(answers) == list(range(N_SUBS))
        assert all(len(a) == 1 for a in answers.values()), "a SUB was answered twice"
        oks = sum(1 for a in answers.values() if a[0][0] == protocol.OK)
        errs = [a[0][1] for a in answers.values() if a[0][0] == protocol.ERR]
        assert oks == 5000 and set(errs) == {protocol.E_TOO_MANY_SUBS}, (oks, set(errs))
    finally:
        s.close(0)


@pytest.mark.parametrize("kind", ["sync", "asyncio"])
def test_python_client_recovers_after_slow_consumer_disconnect(make_node, raws, kind):
    """A Python client whose callback blocks its I/O thread (or event loop) is disconnected as a slow
    consumer; once it reads again it gets the reason, subscribes again by itself and receives new
    events."""
    node = make_node(workers=2, env={"TSCALE_CLIENT_MAX_PENDING": "65536", "TSCALE_SLOW_CONSUMER_GRACE_MS": "300"})
    P = uniq("rec")
    name = name_for(0, 2, P)
    gate = threading.Event()
    fresh = Inbox()

    def cb(msg):
        gate.wait(DEADLINE)
        if msg.data == b"fresh":
            fresh(msg)

    ready, done = threading.Event(), threading.Event()
    holder: dict = {}
    if kind == "sync":
        holder["c"] = tscale.Client(node.addr, name="stuck")
        holder["c"].subscribe(P + ".>", cb=cb)
        ready.set()
    else:
        async def amain():
            c = holder["c"] = await tscale.aio.Client.connect(node.addr, name="stuck-aio")
            await c.subscribe(P + ".>", cb=cb)   # a plain callback runs in the reader task: it blocks the loop
            ready.set()
            while not done.is_set():
                await asyncio.sleep(0.05)
            await c.close(2.0)

        loop_thread = threading.Thread(target=asyncio.run, args=(amain(),), daemon=True)
        loop_thread.start()
    try:
        assert ready.wait(DEADLINE)
        c = holder["c"]
        flood = Flooder(node.port, [name])
        flood.start()
        try:
            wait_until(lambda: node.status()["totals"]["slow_disconnects"] >= 1, what="a slow_consumer disconnect")
        finally:
            flood.stop.set()
            flood.join(10)
            gate.set()
        wait_until(lambda: c.last_error is not None and c.last_error.code == protocol.E_SLOW_CONSUMER,
                   what="the client to read the slow_consumer notice")
        pub = raws(node.port, name="pub")

        def got_fresh():
            pub.pub(name, b"fresh")
            return len(fresh) > 0

        wait_until(got_fresh, interval=0.1, what="an event after the client subscribed again")
    finally:
        gate.set()
        done.set()
        if kind == "sync":
            holder["c"].close(2.0)
        else:
            loop_thread.join(DEADLINE)
