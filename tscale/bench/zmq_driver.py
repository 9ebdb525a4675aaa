"""Raw pyzmq loops: the ceiling for any router written on pyzmq + msgpack.

There is no server: with one publisher the publisher binds ``addr`` and subscribers
connect, with several publishers the subscriber binds.  Events travel 100 per frame
(a flat msgpack array ``[name, payload, name, payload, ...]``), which is what a
batching router can at best achieve.  The publisher is an XPUB with XPUB_NODROP, so a
full pipe blocks it instead of silently dropping (the default ZeroMQ HWM of 1000
frames drops a third of a full-speed stream); it starts only once it has seen every
subscriber's subscription, which avoids the slow-joiner loss.  Queue groups map to
PUSH → PULL (round robin), request/reply to DEALER ↔ ROUTER echo.
"""
from __future__ import annotations

import time

import msgpack
import zmq

from tscale.bench.measure import (RecvCounter, Signals, batches, payload, publish_result,
                                  time_requests)

BATCH = 100
HWM = 10_000          # frames, i.e. up to 1M events queued per pipe; NODROP makes it block
LINGER_MS = 60_000
PEER_DEADLINE = 30.0


def _tcp(addr: str) -> str:
    return addr if "://" in addr else f"tcp://{addr}"


def _pub_binds(topology: dict | None) -> bool:
    return (topology or {}).get("pubs", 1) == 1


def _attach(sock: zmq.Socket, addr: str, bind: bool) -> None:
    (sock.bind if bind else sock.connect)(_tcp(addr))


def _await_subscriptions(sock: zmq.Socket, expected: int) -> None:
    """XPUB: block until ``expected`` subscriptions arrived (XPUB_VERBOSE passes duplicates)."""
    seen, end = 0, time.monotonic() + PEER_DEADLINE
    while seen < expected:
        left_ms = int((end - time.monotonic()) * 1000)
        if left_ms <= 0 or not sock.poll(left_ms):
            raise TimeoutError(f"saw {seen}/{expected} subscriptions")
        if sock.recv()[:1] == b"\x01":
            seen += 1


def _await_handshakes(sock: zmq.Socket, expected: int) -> None:
    """PUSH: block until ``expected`` peers completed the handshake (round robin includes them)."""
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        seen, end = 0, time.monotonic() + PEER_DEADLINE
        while seen < expected:
            left_ms = int((end - time.monotonic()) * 1000)
            if left_ms <= 0 or not monitor.poll(left_ms):
                raise TimeoutError(f"saw {seen}/{expected} peers")
            monitor.recv_multipart()
            seen += 1
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


def run_publisher(addr: str, name: str, count: int, size: int, *, signals: Signals | None = None,
                  topology: dict | None = None) -> dict:
    signals = signals or Signals()
    topology = topology or {}
    bind = _pub_binds(topology)
    peers = topology.get("subs", 1) if bind else 1
    ctx = zmq.Context()
    if topology.get("queue"):
        sock = ctx.socket(zmq.PUSH)
        sock.sndhwm = HWM
        _attach(sock, addr, bind)
        _await_handshakes(sock, peers)
    else:
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.sndhwm = HWM
        _attach(sock, addr, bind)
        _await_subscriptions(sock, peers)
    data = payload(size)
    events = {n: [name, data] * n for n in {BATCH, count % BATCH} if n}
    try:
        signals.ready()
        signals.wait_go()
        send, packb = sock.send, msgpack.packb
        t0 = time.monotonic()
        for n in batches(count, BATCH):
            send(packb(events[n]))
        t1 = time.monotonic()
    finally:
        sock.close(linger=LINGER_MS)  # delivers what is queued, bounded
        ctx.term()
    return publish_result(count, t0, t1, batch=BATCH)


def run_subscriber(addr: str, pattern: str, count: int | None, *, queue: str | None = None,
                   idle_timeout: float = 2.0, start_timeout: float = 15.0,
                   signals: Signals | None = None, topology: dict | None = None) -> dict:
    counter = RecvCounter(count, idle_timeout=idle_timeout, start_timeout=start_timeout,
                          signals=signals)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL if queue else zmq.SUB)
    sock.rcvhwm = HWM
    if not queue:
        sock.setsockopt(zmq.SUBSCRIBE, b"")  # raw ceiling: no topic filtering
    _attach(sock, addr, not _pub_binds(topology))
    try:
        counter.signals.ready()
        poll, recv, unpackb, hit = sock.poll, sock.recv, msgpack.unpackb, counter.hit
        while not counter.finished():
            if poll(100):
                hit(len(unpackb(recv())) // 2)
    finally:
        sock.close(linger=0)
        ctx.term()
    return counter.result()


def run_requester(addr: str, name: str, count: int, size: int, *, rate: float | None = None,
                  timeout: float = 1.0, signals: Signals | None = None,
                  topology: dict | None = None) -> dict:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(_tcp(addr))
    data, timeout_ms = payload(size), int(timeout * 1000)

    def request():
        sock.send(data)
        if not sock.poll(timeout_ms):
            raise TimeoutError("no reply")
        sock.recv()

    try:
        return time_requests(request, count, rate=rate, signals=signals)
    finally:
        sock.close(linger=0)
        ctx.term()


def run_responder(addr: str, name: str, *, limit: float = 600.0, signals: Signals | None = None,
                  topology: dict | None = None) -> dict:
    signals = signals or Signals()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(_tcp(addr))
    served, end = 0, time.monotonic() + limit
    try:
        signals.ready()
        while not signals.stop.is_set() and time.monotonic() < end:
            if sock.poll(100):
                sock.send_multipart(sock.recv_multipart())
                served += 1
    finally:
        sock.close(linger=0)
        ctx.term()
    return dict(served=served)
