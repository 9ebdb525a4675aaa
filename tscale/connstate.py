"""Per-connection state kept by a worker for each client or peer DEALER."""
from __future__ import annotations

from . import protocol
from .outbound import Outbound


class Connection:
    """A connection as seen from the worker's ROUTER.

    `out` is the pending MSG frame for this connection (a flat list starting
    with the MSG code); routes hold references to it, so it is emptied in
    place, never replaced.  `ob` counts what ZeroMQ still holds for it (the
    byte bound), `ctl` holds control replies ZeroMQ could not take yet, in
    order (they are never dropped).
    """

    __slots__ = ("ident", "name", "lang", "peer", "direct", "out", "subs", "blocked",
                 "events_out", "drops", "last_seen", "rejected", "errors", "sink", "ob", "ctl",
                 "user", "perms", "pub_ok")

    def __init__(self, ident: bytes, now: float, ob: Outbound | None = None):
        self.ident = ident
        self.name = ""
        self.lang = ""
        self.peer = ""           # node id, for node-to-node links
        self.direct = False      # connects to every worker and shards by itself
        self.out: list = [protocol.MSG]
        self.subs: dict = {}     # sid -> Subscription
        self.blocked = False     # without room for events (over its bound): queue groups skip it
        self.events_out = 0
        self.drops = 0
        self.last_seen = now
        self.rejected = ""       # error code (not_authorized, slow_consumer) answered until a good HELLO
        self.errors = 0
        self.sink = None         # a durable queue (workers/queues.py) stores instead of sending
        # A pseudo-connection of the durable queues (a sink) never reaches ZeroMQ: no bound to keep.
        self.ob = ob if ob is not None else Outbound(1 << 62, 1 << 62)
        self.ctl: list = []      # control frames waiting for room in ZeroMQ
        self.user = ""           # ZAP user id the handshake gave ("" = anonymous)
        self.perms = None        # auth.Perms of the user, None = may do everything
        self.pub_ok = None       # name -> allowed, cache of publish checks (users with publish limits)

    def label(self) -> str:
        return self.name or self.ident.hex()
