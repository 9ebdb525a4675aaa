"""ROUTER_HANDOVER: a client that reconnects with its fixed routing id is served at once.

The case it covers: the client's TCP connection died without the node noticing
(network blip, NAT reset), the client's DEALER reconnects with the same
ZMQ_ROUTING_ID, and the node still holds the old connection.  Without
ROUTER_HANDOVER libzmq ignores the new connection until the old one times out
(about 6 s of heartbeats): no WELCOME, no ERR, events lost.  With it the new
connection takes over the routing id, and the worker's state for that id (its
subscriptions) with it.  Here the "dead" connection is a second live socket
that never reconnects on its own, which is what the node sees in that case.
"""
from __future__ import annotations

import os

import msgpack
import zmq

from conftest import pack, uniq, zctx
from tscale import protocol


def dealer(port: int, ident: bytes, reconnect_ivl: int = 100) -> zmq.Socket:
    s = zctx().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.IDENTITY, ident)
    s.setsockopt(zmq.RECONNECT_IVL, reconnect_ivl)
    s.connect(f"tcp://127.0.0.1:{port}")
    return s


def answer(s: zmq.Socket, code: int, timeout_ms: int) -> list | None:
    """The first frame with command `code` within the deadline (server PINGs skipped), or None."""
    while s.poll(timeout_ms):
        cmd = msgpack.unpackb(s.recv(), raw=False)
        if cmd[0] == code:
            return cmd
    return None


def test_reconnect_with_same_routing_id_is_served_at_once_and_keeps_subscriptions(node2, raws):
    ident = os.urandom(12)
    p = uniq()
    old = dealer(node2.port, ident, reconnect_ivl=60_000)   # the "dead" side never comes back by itself
    new = None
    try:
        old.send(pack([protocol.HELLO, 1, {"name": "handover"}]))
        assert answer(old, protocol.WELCOME, 10_000) is not None
        old.send(pack([protocol.SUB, 7, f"{p}.*", None, 1]))
        assert answer(old, protocol.OK, 10_000) == [protocol.OK, 1]

        new = dealer(node2.port, ident)
        new.send(pack([protocol.HELLO, 1, {"name": "handover"}]))
        welcome = answer(new, protocol.WELCOME, 3_000)   # without handover: nothing for ~6 s
        assert welcome is not None, "the reconnection with the same routing id was not served"
        assert welcome[2]["client_id"] == ident.hex()

        pub = raws(node2.port + 1)
        pub.pub(f"{p}.x", b"after handover")
        pub.ping()
        msg = answer(new, protocol.MSG, 10_000)
        assert msg == [protocol.MSG, 7, f"{p}.x", b"after handover", None], "the subscription moved with the id"
    finally:
        old.close(0)
        if new is not None:
            new.close(0)
