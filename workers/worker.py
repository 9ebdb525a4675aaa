"""One worker process: a ROUTER for clients, a PUB/SUB pair for the in-host bus.

The worker owns the event names whose shard (crc32 mod worker count) is its
index.  Events for names it owns are matched in its routing table and
delivered; events for names it does not own are forwarded over the bus to the
owner.  Subscriptions of connections that reached only this worker
("proxied") are announced to the owners as aggregated link interest, and
owners send the matching events back here for delivery.  Clients that connect
to every worker ("direct", like the Python client) skip both hops.

All decisions live in sans-I/O classes (routing table, codec, subjects); this
module moves frames.  Output is batched per connection: everything routed
while draining the input is packed into one MSG frame per connection.
"""
from __future__ import annotations

import itertools
import os
import signal
import time

import msgpack
import zmq

from tscale import auth, bus, protocol, sigwake
from tscale.config import DEFAULT_CLIENT_MAX_PENDING, DEFAULT_SLOW_CONSUMER_GRACE_MS
from tscale.connstate import Connection
from tscale.frames import decode_client, decode_node, keys_error, meta_error, payload_error, peer_body_at
from tscale.handover import InterestReport
from tscale.security import Security, answer_zap, zap_socket
from tscale.logs import RateLimited, setup
from tscale.peergate import PeerGate
from tscale.protocol import BYE, HELLO, PEER_EVENTS, PING, PONG, PUB, STATUS, SUB, SUBS, UNSUB, ProtocolError, err, pack
from tscale.routing import RoutingTable, Subscription
from tscale.sharding import shard_of
from tscale.subjects import is_literal, name_error
from tscale.workeracks import WorkerAcks

from .clientout import CONTROL_HEADROOM, ClientOut
from .peers import FRAME_BYTES, MAX_EVENTS, MAX_ITEMS, PeerLink, head, quads
from .queues import QueueShell
from . import access

INPUT_BUDGET = 512        # frames read per poll wake-up before yielding to the bus
CLIENT_RCVHWM = 100       # frames queued per client connection on input; then ZeroMQ pushes back
FLUSH_EVERY = 32          # frames read between output flushes (bounds batch size and latency)
# One busy connection must not delay every other one (issue 10): the work between two
# flushes is bounded in input bytes too (a 1000-event PUB frame of 128 B events is ~140 KB,
# so a flood is flushed after every frame, not after 32 of them), and one drain pass in
# time, after which the loop flushes, looks at the other socket and polls again.
FLUSH_BYTES = 64 * 1024   # input bytes between output flushes at most (plus one frame)
PASS_TIME = 0.002         # seconds one drain pass may take (checked at each flush)
TICK = 0.1                # housekeeping period while something waits for a deadline, seconds
# ... and when nothing does (issue 10: an idle node must cost ~0 CPU whatever it holds): the
# worker then wakes once a second, for its figures, and at once for input or a signal.
IDLE_TICK = 1.0
STATS_EVERY = 1.0
STATS_REPEAT = 10.0       # figures that did not change are sent again after this long
PING_EVERY = 5.0          # how often silent connections are looked for
IDLE_PING_AFTER = 15.0    # ping connections silent for this long to learn if they are gone
ACK_TIMEOUT = 2.0         # give up waiting for another worker to confirm interest
BUS_HWM = 20000

BATCH_MIN = 8             # events in a frame from which a whole-batch path is tried (workers/peers.py)
_BYTES_ONLY = {bytes}

# pyzmq's enum flags cost ~0.4 us per operation on the hot path; use plain ints.
NOBLOCK = int(zmq.NOBLOCK)
SEND_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
RCVMORE = int(zmq.RCVMORE)

_OPEN_COMMANDS = frozenset({HELLO, PING, PONG, BYE})   # allowed before authentication
_REQ_AT = {SUB: 4, SUBS: 1, UNSUB: 2, STATUS: 1}                # where a command carries its req id
_REFUSALS = {protocol.E_NOT_AUTHORIZED: "authenticate with HELLO first",
             protocol.E_SLOW_CONSUMER: "disconnected as a slow consumer; say HELLO and subscribe again"}


class Worker:
    def __init__(self, spec: dict):
        self.spec = spec
        self.index: int = spec["index"]
        self.count: int = spec["count"]
        self.max_payload: int = spec["max_payload"]
        self.peer_frame_bytes = FRAME_BYTES   # + one event: under any receiver's 16 x max_payload + 1 MiB
        self.sec = Security.from_spec(spec)
        # With PLAIN or CURVE on the client port every connection passed our ZAP gate; its
        # user id rides on each frame and decides what the connection may do.
        self.zap_gate = self.sec.gate() if self.sec.mechanism != "null" else None
        self.violations: dict[str, int] = {}      # user -> permission_denied errors
        self.max_subs: int = spec.get("max_subs_per_conn", 100_000)
        self.hwm: int = spec.get("client_hwm", 1000)
        self.max_pending: int = spec.get("client_max_pending", DEFAULT_CLIENT_MAX_PENDING)
        self.grace: float = spec.get("slow_consumer_grace_ms", DEFAULT_SLOW_CONSUMER_GRACE_MS) / 1000
        self.log = setup(f"worker{self.index}", spec.get("log_level", "info"), spec.get("log_format", "text"))
        self.rlog = RateLimited(self.log)
        count = self.count
        self.table = RoutingTable(owner_of=(lambda name: shard_of(name, count)))
        self.conns: dict[bytes, Connection] = {}
        self.dirty: list[Connection] = []
        # per-worker bus output buffers, packed and sent at flush time
        self.fwd = [[bus.FWD, self.index] for _ in range(count)]
        self.deliver = [[bus.DELIVER, self.index] for _ in range(count)]
        self.bus_backlog: list = []
        self.fwd_peer: dict[tuple, list] = {}     # (owner worker, source node) -> FWD_PEER buffer
        self.peer_links: dict[str, PeerLink] = {}
        self.gate = PeerGate()                    # which connections may send peer frames
        # aggregated interest of our proxied subscriptions: (pattern, group) -> count
        self.local_interest: dict[tuple, int] = {}
        self.epoch = int.from_bytes(os.urandom(4), "big")
        self.report = InterestReport(self.epoch)  # our cluster-visible interest, handed to the supervisor
        self.synced: set[int] = set()       # workers that sent us their snapshot
        self.acks = WorkerAcks(self.synced)  # who confirms interest changes, and when
        # ackkey -> [conn, req, waiting set, deadline]; conn None: req is a callable to run instead of OK
        self.pending_acks: dict[int, list] = {}
        self.ackkeys = itertools.count(1)   # keys of interest changes waiting for confirmation
        self.node_status: dict = {}
        self.pending_status: list = []   # STATUS requests waiting for the first node status
        self.last_stats: dict | None = None   # the figures last sent to the supervisor
        self.stats_due = 0.0
        self.started = time.time()
        self.running = True
        self.stats = {"events_in": 0, "events_out": 0, "dropped": 0, "forwarded": 0, "errors": 0,
                      "peer_in": 0, "peer_out": 0, "peer_invalid": 0, "peer_forwarded": 0,
                      "slow_disconnects": 0}
        self.queues = QueueShell(self)

    # -- process ------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)   # the supervisor reloads the users file and tells us
        # A signal wakes the poll (pyzmq resumes an interrupted poll): with IDLE_TICK the worker
        # would otherwise notice SIGTERM up to a second late.
        self.sig_r = sigwake.wakeup_fd()
        self.ctx = zmq.Context()   # created after start: never inherit a context
        try:
            self._open_sockets()
        except zmq.ZMQError as exc:
            self.log.error("cannot bind %s: %s", self.endpoint, exc)
            self.ctx.destroy(linger=0)
            return 3
        self.log.info("listening on %s (pid %d)", self.endpoint, os.getpid())
        try:
            self._loop()
        finally:
            self._flush()
            self.queues.close()   # the last COMMIT; its confirms go out with one more flush
            self._flush()
            self.ctx.destroy(linger=0)
            self.log.debug("stopped")
        return 0

    def _stop(self, *_):
        self.running = False

    def _open_sockets(self):
        spec = self.spec
        ctx = self.ctx
        r = self.router = ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)      # learn about gone or full peers instead of silent drops
        # A client reconnecting with its fixed routing id (its old TCP connection died unnoticed)
        # takes the id over at once instead of being ignored until heartbeats drop the old one.
        r.setsockopt(zmq.ROUTER_HANDOVER, 1)
        r.setsockopt(zmq.SNDHWM, self.hwm + CONTROL_HEADROOM)   # events use at most client_hwm of it
        # pyzmq copies frames under copy_threshold (64 KiB) even with copy=False and then hands back a
        # tracker that is already done: the watermark frames (Outbound) must really be tracked.
        r.copy_threshold = 0
        r.setsockopt(zmq.RCVHWM, CLIENT_RCVHWM)
        r.setsockopt(zmq.LINGER, 0)
        r.setsockopt(zmq.MAXMSGSIZE, self.max_payload * 16 + (1 << 20))
        r.setsockopt(zmq.HEARTBEAT_IVL, 2000)     # ZMTP pings: dead TCP peers are dropped by libzmq
        r.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        r.setsockopt(zmq.TCP_KEEPALIVE, 1)
        self.endpoint = f"tcp://{spec['host']}:{spec['base_port'] + self.index}"
        if self.zap_gate is not None:   # the ZAP handler first: libzmq lets everyone in while there is none
            self.zap = zap_socket(ctx)
        self.sec.serve_clients(r)
        r.bind(self.endpoint)
        self.tx = ClientOut(r, self.max_pending, self.hwm, self.grace, self.stats, self.rlog, self._forget)
        p = self.pub = ctx.socket(zmq.PUB)
        p.setsockopt(zmq.SNDHWM, BUS_HWM)
        p.setsockopt(zmq.XPUB_NODROP, 1)          # EAGAIN instead of silent loss: we count drops
        p.setsockopt(zmq.LINGER, 0)
        p.bind(bus.worker_endpoint(spec["run_dir"], self.index))
        s = self.sub = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.RCVHWM, BUS_HWM)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SUBSCRIBE, bus.topic(self.index))
        s.setsockopt(zmq.SUBSCRIBE, bus.ALL)
        s.connect(bus.supervisor_endpoint(spec["run_dir"]))
        for j in range(self.count):
            if j != self.index:
                s.connect(bus.worker_endpoint(spec["run_dir"], j))

    def _loop(self):
        poller = self.poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.sub, zmq.POLLIN)
        router, sub, tx = self.router, self.sub, self.tx
        zap = getattr(self, "zap", None)
        if zap is not None:
            poller.register(zap, zmq.POLLIN)
        sig_r = self.sig_r
        poller.register(sig_r, zmq.POLLIN)
        next_tick = now = 0.0
        next_stats = time.monotonic() + STATS_EVERY
        self.next_ping = time.monotonic() + PING_EVERY
        while self.running:
            try:
                # A connection owed control replies is retried within a millisecond, not at the next tick.
                ready = poller.poll(1 if tx.backlogged else max(0.0, next_tick - now) * 1000)
            except zmq.ZMQError:
                if not self.running:
                    break
                raise
            self.now = now = time.monotonic()
            for sock, _ in ready:
                if sock is router:
                    self._drain_router()
                elif sock is sub:
                    self._drain_bus()
                elif sock is zap:
                    self._drain_zap()
                elif sock == sig_r:
                    sigwake.drain(sig_r)
                else:
                    self._drain_peer(sock)
            self._flush()
            queues = self.queues
            for _ in range(3):   # group commit: one COMMIT per pass, then the pass's confirms and replies
                if not queues.dirty:
                    break
                queues.commit()
                self._flush()
            if now >= next_tick:
                self._tick(now)
                if now >= next_stats:
                    next_stats = now + STATS_EVERY
                    self._send_stats()
                next_tick = now + (TICK if self._needs_tick() else IDLE_TICK)
            elif next_tick - now > TICK and self._needs_tick():
                next_tick = now + TICK       # this pass left something with a deadline

    # -- client input -------------------------------------------------------
    def _drain_router(self):
        router = self.router
        recv = router.recv
        getsockopt = router.getsockopt
        conns = self.conns
        pending = 0                        # input bytes since the last flush
        deadline = self.now + PASS_TIME
        secured = self.zap_gate is not None
        for k in range(INPUT_BUDGET):
            try:
                ident = recv(NOBLOCK)
            except zmq.Again:
                return
            frame = recv(copy=False)   # decoded from libzmq's buffer: a large frame is not copied first
            conn = conns.get(ident)
            if secured:
                # The user id comes with every frame: a routing id can be reused by another
                # connection (of another user) once the first one is gone, so it is checked
                # per frame (one property read), never assumed from an earlier frame.
                user = frame.get("User-Id")
                if conn is None or conn.user != user:
                    conn = self._new_conn(ident, user)
                else:
                    conn.last_seen = self.now
            elif conn is None:
                conn = self._new_conn(ident, "")
            else:
                conn.last_seen = self.now
            if getsockopt(RCVMORE):
                while getsockopt(RCVMORE):
                    recv()
                self._error(conn, protocol.E_MALFORMED, "send one frame per command (DEALER, no envelope)")
                continue
            self._dispatch(conn, frame.buffer)
            pending += len(frame)
            if pending >= FLUSH_BYTES or k % FLUSH_EVERY == FLUSH_EVERY - 1:
                self._flush()
                pending = 0
                if time.monotonic() >= deadline:
                    return

    def _new_conn(self, ident: bytes, user: str) -> Connection:
        old = self.conns.get(ident)
        if old is not None:      # the routing id now belongs to another user: forget the old state
            self._remove_conn(old)
        conn = self.conns[ident] = Connection(ident, self.now, self.tx.outbound_for(ident))
        if self.zap_gate is not None:
            conn.user = user
            access.attach(conn, self.zap_gate.perms(user))
        return conn

    def _drain_zap(self):
        answer_zap(self.zap, self.zap_gate, lambda addr, why: self.rlog.warning(
            ("zap", addr), "refused a connection from %s at the handshake: %s", addr, why))

    def _dispatch(self, conn: Connection, frame):
        try:
            cmd = decode_client(frame)   # every field checked: handlers below trust the tuple
        except ProtocolError as exc:
            if exc.code == protocol.E_BAD_VERSION:
                self._error(conn, exc.code, exc.message)
                self._remove_conn(conn)
            else:
                self._error(conn, exc.code, exc.message, exc.req)
            return
        code = cmd[0]
        if conn.rejected and code not in _OPEN_COMMANDS:
            # Served nothing but the handshake: a connection disconnected as a slow consumer (until
            # it says HELLO again), or one whose user was removed from the users file.
            at = _REQ_AT.get(code)
            why = _REFUSALS[conn.rejected]
            if conn.user and self.zap_gate is not None and not self.zap_gate.known(conn.user):
                why = f"user {conn.user!r} is no longer allowed"
            self._error(conn, conn.rejected, why, cmd[at] if at is not None else None)
            return
        if code == PUB:
            if conn.perms is not None:
                cmd, name, denied = access.filter_pub(conn, cmd, 1)
                if denied:
                    self._denied(conn, f"publish to {name!r}", None, denied)
            self._ingest(conn, cmd, 1)
        elif code == SUB:
            self._on_sub(conn, *cmd[1:])
        elif code == SUBS:
            self._on_subs(conn, cmd[1], cmd[2], cmd[3])
        elif code == PING:
            self._flush()
            self.tx.send(conn, pack([PONG, cmd[1]]))
        elif code == PONG:
            pass
        elif code == UNSUB:
            self._on_unsub(conn, cmd[1], cmd[2])
        elif code == HELLO:
            self._on_hello(conn, *cmd[1:])
        elif code == STATUS:
            req = cmd[1]
            if self.node_status:
                self.tx.send(conn, pack([protocol.STATUS_REPLY, req, self.status()]))
            else:   # just started: answer once the supervisor's node status has arrived
                self.pending_status.append((conn, req, self.now + 1.5))
        elif code == PEER_EVENTS:
            if not conn.peer and conn.user == auth.PEER_USER and self.gate.allowed(cmd[1]):
                conn.peer = cmd[1]   # a node that proved the cluster secret, before its HELLO (we restarted)
            if not conn.peer:
                # Only links the control plane attached (HELLO as a current neighbour) may inject routed events.
                self._error(conn, protocol.E_NOT_AUTHORIZED, "PEER_EVENTS is for tscale nodes; say HELLO as a peer")
            elif cmd[1] != conn.peer:
                self._peer_bad(conn.peer, (len(cmd) - 2) // 4, "events claiming another source node")
            else:
                self._ingest_peer(conn.peer, cmd, 2, frame)
        elif code == BYE:
            self._remove_conn(conn)

    def _peer_allowed(self, conn: Connection, peer_id: str) -> bool:
        """May a connection that says HELLO with option peer=`peer_id` send peer frames?
        An overlay neighbour (the peer gate) and, with a cluster secret, only a connection
        that proved it at the handshake (ZAP user PEER_USER)."""
        return self.gate.allowed(peer_id) and self._proved_peer(conn)

    def _proved_peer(self, conn: Connection) -> bool:
        return not self.sec.cluster_secret or conn.user == auth.PEER_USER

    def _on_hello(self, conn: Connection, name: str, lang: str, token, direct: bool, peer: str):
        # `token` in HELLO is ignored: credentials are checked at the handshake (ZAP).
        if self.zap_gate is not None and not self.zap_gate.known(conn.user):
            self._refuse(conn, f"user {conn.user!r} is no longer allowed")   # removed by a users file reload
            return
        if peer and not self._peer_allowed(conn, peer):
            # Quiet for now: a new neighbour's HELLO may overtake the supervisor's news of it;
            # the gate admits the claim if that news comes in time, and we warn if it does not.
            self._refuse(conn, "HELLO option 'peer' is only for this node's overlay neighbours", quiet=True)
            if not (self._proved_peer(conn)
                    and self.gate.claim(conn.ident, conn, (name, lang, token, direct, peer), self.now)):
                self.rlog.warning(("peer-auth",), "refused peer HELLO from %s: %r is not a neighbour or did not "
                                  "prove the cluster secret", conn.ident.hex(), peer)
            return
        conn.rejected = ""
        conn.name = name
        conn.lang = lang
        conn.peer = peer
        if direct != conn.direct:
            self._drop_subs(conn)
            conn.direct = direct
        info = {
            "node_id": self.spec["node_id"],
            "node_name": self.spec["node_name"],
            "server_version": self.spec["version"],
            "max_payload": self.max_payload,
            "worker": self.index,
            "ports": [self.spec["base_port"] + i for i in range(self.count)],
            "shard": {"hash": "crc32", "count": self.count},
            "heartbeat_ms": 2000,
            "client_id": conn.ident.hex(),
            "ctl_port": self.spec["base_port"] + self.count,
            "cluster": self.spec.get("cluster", "tscale"),
            "features": [protocol.FEATURE_SUBS],
        }
        self.tx.send(conn, pack([protocol.WELCOME, protocol.VERSION, info]))

    def _refuse(self, conn: Connection, why: str, quiet: bool = False):
        """not_authorized: the connection loses its subscriptions and is served nothing but the handshake."""
        self._error(conn, protocol.E_NOT_AUTHORIZED, why, quiet=quiet)
        self._drop_subs(conn)
        conn.rejected = protocol.E_NOT_AUTHORIZED
        conn.peer = ""

    # -- events -------------------------------------------------------------
    def _ingest(self, conn, cmd: list, start: int):
        """Route the (name, payload, meta) triples of a PUB or FWD frame.

        This is the hot path: one cached route lookup and a few list appends per event.
        Each event is validated in the same pass (frames.decode_client checked only the
        frame's shape): a name only when it misses the route cache, which holds valid
        names only; payload and meta by type.  Bad events are skipped, the rest routed.
        """
        n = len(cmd)
        me = self.index
        cache_get = self.table._cache.get
        if n - start >= 3 * BATCH_MIN and self.peer_links:
            r = self.table.route_valid(cmd[start])
            if r is not None and r.peers and not r.local and self._batch_to_peers(conn, cmd, start):
                return
        route = self.table.route
        dirty = self.dirty
        maxp = self.max_payload if conn is not None else 1 << 62   # checked where the event entered
        fwd = self.fwd
        bad = None
        for i in range(start, n, 3):
            name = cmd[i]
            try:
                r = cache_get(name)
            except TypeError:             # an array or map where the name should be
                r = None
            if r is None:
                e = name_error(name)
                if e is not None:
                    bad = (protocol.E_BAD_NAME if type(name) is str else protocol.E_MALFORMED, e)
                    continue
                r = route(name)
            payload = cmd[i + 1]
            meta = cmd[i + 2]
            if type(payload) is not bytes or len(payload) > maxp:
                bad = payload_error(payload, maxp)
                continue
            if meta is not None:
                e = meta_error(meta)
                if e is not None:
                    bad = (protocol.E_MALFORMED, e)
                    continue
            if r.owner != me:
                fwd[r.owner] += (name, payload, meta)
                continue
            if r.empty:
                if meta is not None and meta[1] is not None:
                    self._no_responders(meta[1], name, meta[0])
                continue
            for c, sid in r.local:       # inlined on purpose (hot path): a call per event costs ~0.1 us
                o = c.out
                if len(o) == 1:
                    dirty.append(c)
                o += (sid, name, payload, meta)
            if r.shared:
                fast = r.fast_groups
                if fast is None:
                    self._route_shared(r, name, payload, meta, None, None)
                    continue
                for key, picker in fast:     # queue groups with every member on this node
                    m = picker.pick()
                    if type(m) is Subscription:
                        c = m.conn
                        o = c.out
                        if len(o) == 1:
                            dirty.append(c)
                        o += (m.sid, name, payload, meta)
                    elif m is not None:      # a member held by another worker of this host
                        self.deliver[m.link] += (name, payload, meta, [key])
        if conn is not None:   # counted where the event entered the node, not again at its owner
            self.stats["events_in"] += (n - start) // 3
            if bad is not None:
                self._error(conn, *bad)

    def _batch_to_peers(self, conn, cmd: list, start: int) -> bool:
        """Events of a PUB (or FWD) frame that all go to neighbours only, nothing here: their
        quadruples join each link's batch in one step, without a loop per event.  Checked as
        event by event would (names by `route_all`, payload types and sizes, metas); anything
        else (another route, an invalid event) returns False: then routed event by event."""
        n = (len(cmd) - start) // 3
        if n > MAX_EVENTS:
            return False
        r = self.table.route_all(cmd[start::3])
        if r is None or r.owner != self.index or r.local or r.links or r.groups or not r.peers:
            return False
        payloads = cmd[start + 1::3]
        if set(map(type, payloads)) != _BYTES_ONLY:
            return False
        size = sum(map(len, payloads))
        if size > self.peer_frame_bytes:   # one batch at most, like event by event (receiver's MAXMSGSIZE)
            return False
        if conn is not None and size > self.max_payload and max(map(len, payloads)) > self.max_payload:
            return False
        metas = cmd[start + 2::3]
        if metas.count(None) != n:
            for m in metas:
                if m is not None and meta_error(m) is not None:
                    return False
        q = quads(cmd, start, n)
        stats = self.stats
        cap = self.peer_frame_bytes
        for peer in r.peers:
            link = self.peer_links.get(peer)
            if link is None:
                stats["dropped"] += n
                continue
            out = link.out
            if len(out) > 2 and (link.bytes + size > cap or len(out) + len(q) > MAX_ITEMS):
                link.send(stats)
            out += q
            link.bytes += size
            if link.bytes >= cap or len(out) >= MAX_ITEMS:
                link.send(stats)
        if conn is not None:
            stats["events_in"] += n
        return True

    def _forward_batch(self, src: str, cmd: list, frame) -> bool:
        """Relay a whole peer batch unchanged when every event goes the same way: to other
        neighbours only (nothing delivered, picked or handed to another worker here).  The
        received event bytes go on behind our own header (workers/peers.py says what is
        checked here and what by the next node); True if done, False: routed event by event."""
        n = (len(cmd) - 2) >> 2
        if len(frame) > 2 * self.peer_frame_bytes:
            return False
        r = self.table.route_all(cmd[2::4])
        if (r is None or r.owner != self.index or r.local or r.links or r.groups
                or cmd[5::4].count(None) != n):        # queue-group keys are picked event by event
            return False
        links = [self.peer_links.get(p) for p in r.peers if p != src]
        if not links:
            return False
        at = peer_body_at(frame)
        if at is None:
            return False
        data = b"".join((head(len(cmd), self.spec["node_id"]), frame[at:]))
        stats = self.stats
        for link in links:
            if link is None:
                stats["dropped"] += n
            else:
                link.forward(data, n, stats)
        stats["peer_in"] += n
        stats["peer_forwarded"] += n
        return True

    def _route_shared(self, r, name, payload, meta, src, keys):
        """Queue groups, other workers and peer nodes: the less common part of routing.

        `src` is the peer node the event came from (None if it entered here) and
        `keys` the queue groups that node asked us to serve.  A group picks a
        member of this node if it has one and the event entered here; otherwise
        any member, weighted by member counts, never back towards `src`.
        """
        picks = None
        if src is None:
            chosen = [(key, (here or every).pick()) for key, here, every in r.groups]
        elif keys:
            chosen = [(key, r.group_map[key].pick(src) if key in r.group_map else None) for key in keys]
        else:
            chosen = ()
        for key, m in chosen:
            if m is None:
                self.stats["dropped"] += 1    # the group's members left while the event was in flight
            elif type(m) is Subscription:
                c = m.conn
                o = c.out
                if len(o) == 1:
                    self.dirty.append(c)
                o += (m.sid, name, payload, meta)
            else:
                if picks is None:
                    picks = {}
                picks.setdefault(m.link, []).append(key)
        deliver = self.deliver
        for link in r.links:
            deliver[link] += (name, payload, meta, picks.pop(link, None) if picks else None)
        for peer in r.peers:
            if peer != src:
                self._to_peer(peer, name, payload, meta, picks.pop(peer, None) if picks else None)
        if picks:
            for link, ks in picks.items():
                if type(link) is str:
                    self._to_peer(link, name, payload, meta, ks)
                else:
                    deliver[link] += (name, payload, meta, ks)

    def _to_peer(self, peer: str, name, payload, meta, keys):
        link = self.peer_links.get(peer)
        if link is None:
            self.stats["dropped"] += 1
            return
        out = link.out
        out += (name, payload, meta, keys)
        link.bytes += len(payload)
        # Keep every frame well under the receiver's MAXMSGSIZE (16 x max_payload + 1 MiB):
        # libzmq drops a connection that sends a larger one, and everything queued with it.
        if link.bytes >= self.peer_frame_bytes or len(out) >= MAX_ITEMS:
            link.send(self.stats)

    def _ingest_peer(self, src, cmd: list, start: int, frame=None):
        """Events from peer node `src`: [name, payload, meta, groups] quadruples.

        Validated like client events in the same single pass (name on a route-cache
        miss, payload, meta, group keys); invalid ones are dropped and counted per peer.
        A received frame (`frame`, its bytes) that goes on whole to other neighbours
        only is forwarded unchanged (`_forward_batch`)."""
        me = self.index
        cache_get = self.table._cache.get
        if frame is not None and len(cmd) >= 2 + 4 * BATCH_MIN:
            r = self.table.route_valid(cmd[2])
            if r is not None and r.peers and not r.local and self._forward_batch(src, cmd, frame):
                return
        route = self.table.route
        dirty = self.dirty
        peer_links = self.peer_links
        cap = self.peer_frame_bytes
        maxp = self.max_payload
        n = len(cmd)
        bad = 0
        for i in range(start, n - 3, 4):
            name = cmd[i]
            try:
                r = cache_get(name)
            except TypeError:             # an array or map where the name should be
                r = None
            if r is None:
                if name_error(name) is not None:
                    bad += 1
                    continue
                r = route(name)
            payload, meta, keys = cmd[i + 1], cmd[i + 2], cmd[i + 3]
            if (type(payload) is not bytes or len(payload) > maxp or (meta is not None and meta_error(meta))
                    or (keys is not None and keys_error(keys))):
                bad += 1
                continue
            if r.owner != me:
                buf = self.fwd_peer.get((r.owner, src))
                if buf is None:
                    buf = self.fwd_peer[(r.owner, src)] = [bus.FWD_PEER, me, src]
                buf += (name, payload, meta, keys)
                continue
            for c, sid in r.local:       # inlined on purpose (hot path): a call per event costs ~0.1 us
                o = c.out
                if len(o) == 1:
                    dirty.append(c)
                o += (sid, name, payload, meta)
            if not r.shared:
                continue
            if keys is None and not r.groups and not r.links:
                # Relaying to other peers only: the common case in the middle of a tree.
                for peer in r.peers:
                    if peer != src:
                        link = peer_links.get(peer)
                        if link is None:
                            continue
                        out = link.out
                        out += (name, payload, meta, None)
                        link.bytes += len(payload)
                        if link.bytes >= cap or len(out) >= MAX_ITEMS:
                            link.send(self.stats)
            else:
                self._route_shared(r, name, payload, meta, src, keys)
        self.stats["peer_in"] += (n - start) // 4
        if bad:
            self._peer_bad(src, bad, "invalid events")

    def _peer_bad(self, src: str, count: int, what: str):
        """Peer events that failed validation: dropped, counted per peer (status), logged rate-limited."""
        self.gate.count_invalid(src, count)
        self.stats["peer_invalid"] += count
        self.rlog.warning(("peer-bad", src), "peer %s sent %s: %d dropped", src, what, count)

    def _deliver_proxied(self, cmd: list):
        """Events the owner sent us for our proxied subscriptions."""
        route = self.table.route
        dirty = self.dirty
        for i in range(2, len(cmd), 4):
            name, payload, meta, groups = cmd[i], cmd[i + 1], cmd[i + 2], cmd[i + 3]
            r = route(name)
            for c, sid in r.proxied:
                o = c.out
                if len(o) == 1:
                    dirty.append(c)
                o += (sid, name, payload, meta)
            if groups:
                for key in groups:
                    picker = r.proxied_groups.get(key)
                    if picker is None:
                        self.stats["dropped"] += 1   # the member left while the event was in flight
                        continue
                    m = picker.pick()
                    c = m.conn
                    o = c.out
                    if len(o) == 1:
                        dirty.append(c)
                    o += (m.sid, name, payload, meta)

    def _no_responders(self, reply: str, name: str = "", headers=None):
        """Tell a requester at once that nobody can answer (instead of a timeout); a confirmed
        publish for a queue whose home is unreachable gets `queue_unavailable` instead."""
        if name_error(reply) is not None:
            return
        answer = self.queues.unavailable_answer(name, headers) if headers else None
        if answer is not None:
            self._ingest(None, [PUB, reply, answer, None], 1)
            return
        self._ingest(None, [PUB, reply, b"", protocol.NO_RESPONDERS_META], 1)

    # -- subscriptions ------------------------------------------------------
    def _on_sub(self, conn: Connection, sid: int, pattern: str, group, req, cluster: bool):
        if conn.perms is not None and not conn.perms.may_subscribe(pattern):
            self._denied(conn, f"subscribe to {pattern!r}", req)
            return
        old = conn.subs.get(sid)
        same = old is not None and old.pattern == pattern and old.group == group
        if same and not cluster:
            self.tx.send(conn, protocol.ok(req))   # a repeated SUB (after a reconnect) is idempotent
            return
        ackkey = next(self.ackkeys)
        if same:
            waiting = set()                      # already in place here; only the cluster barrier is new
        else:
            s = self._place(conn, sid, pattern, group, old, req)
            if s is None:
                return
            waiting = self._announce(s, +1, ackkey)
        self._await(ackkey, waiting, conn, req, cluster)

    def _place(self, conn: Connection, sid: int, pattern: str, group, old, req) -> Subscription | None:
        """Add subscription `sid` (replacing `old`, its subscription with another pattern or group,
        if any) within the per-connection limit; None if over it (the ERR is sent).  Not announced."""
        if old is not None:
            self._unsubscribe(conn, old)
        if len(conn.subs) >= self.max_subs:
            self._error(conn, protocol.E_TOO_MANY_SUBS, f"at most {self.max_subs} subscriptions per connection", req)
            return None
        s = Subscription(conn, sid, pattern, group)
        conn.subs[sid] = s
        self.table.add(s)
        return s

    def _on_subs(self, conn: Connection, req, entries: list, errors):
        """Many SUBs in one frame (docs/PROTOCOL.md, SUBS): each triple is applied as
        `[SUB, sid, pattern, group, req]` would be, in order, except that nothing is answered
        per triple but its error; one OK for the frame (none if `req` is nil) once every
        owner worker has confirmed the proxied ones.  Per subscription this costs the
        table insert and the interest report, not a frame in and an OK out."""
        for code, message in errors:           # triples frames.decode_client refused
            self._error(conn, code, message, req)
        subs = conn.subs
        perms = conn.perms
        targets: set = set()
        for i in range(0, len(entries), 3):
            sid, pattern, group = entries[i], entries[i + 1], entries[i + 2]
            if perms is not None and not perms.may_subscribe(pattern):
                self._denied(conn, f"subscribe to {pattern!r}", req)
                continue
            old = subs.get(sid)
            if old is not None and old.pattern == pattern and old.group == group:
                continue                         # a repeated SUB is idempotent
            s = self._place(conn, sid, pattern, group, old, req)
            if s is not None:
                # announced at once: a later triple may replace it (same sid), and its -1 must follow this +1
                targets.update(self._tell(s, +1, None))
        if req is None:
            return
        ackkey = next(self.ackkeys)
        self._await(ackkey, self._ask_confirm(targets, ackkey), conn, req, False)

    def _on_unsub(self, conn: Connection, sid: int, req):
        s = conn.subs.get(sid)
        if s is not None:
            # Like SUB: confirm only once the owner workers have dropped the interest, so no
            # event published after UNSUB returns is still picked for this member.
            ackkey = next(self.ackkeys)
            self._await(ackkey, self._unsubscribe(conn, s, ackkey), conn, req, False)
            return
        self.tx.send(conn, protocol.ok(req))

    def _unsubscribe(self, conn: Connection, s: Subscription, ackkey=None) -> set:
        del conn.subs[s.sid]
        self.table.remove(s)
        return self._announce(s, -1, ackkey)

    def _interest_targets(self, pattern: str) -> list[int]:
        if is_literal(pattern):
            owner = shard_of(pattern, self.count)
            return [] if owner == self.index else [owner]
        return [j for j in range(self.count) if j != self.index]

    def _announce(self, s: Subscription, delta: int, ackkey) -> set:
        """Tell the supervisor (cluster interest) and, for a proxied subscription, the
        owner workers; returns the workers whose confirmation to wait for."""
        targets = self._tell(s, delta, ackkey)
        return self.acks.waiting_for(targets) if targets and ackkey is not None else set()

    def _tell(self, s: Subscription, delta: int, ackkey) -> list[int]:
        """`_announce` without the wait: returns the owner workers told (INTEREST on the bus)."""
        if not s.conn.direct or is_literal(s.pattern) or self.index == 0:
            # A direct client registers a wildcard on every worker; count it once
            # (worker 0 reports it) so queue-group weights between nodes are true.
            self.report.change(s.pattern, s.group, delta)
        if s.conn.direct:
            return []
        key = (s.pattern, s.group)
        n = self.local_interest.get(key, 0) + delta
        if n > 0:
            self.local_interest[key] = n
        else:
            self.local_interest.pop(key, None)
        targets = self._interest_targets(s.pattern)
        if targets:
            body = pack([bus.INTEREST, self.index, delta, s.pattern, s.group, ackkey])
            for t in targets:
                self._bus_send(bus.topic(t), body)
        return targets

    def _ask_confirm(self, targets: set, ackkey: int) -> set:
        """One ACK_REQ to each owner worker in `targets` that must confirm, after the INTERESTs
        already sent on the same pipe (so its answer covers all of them); the workers to wait for."""
        waiting = self.acks.waiting_for(targets)
        for t in waiting:
            self._bus_send(bus.topic(t), pack([bus.ACK_REQ, self.index, ackkey]))
        return waiting

    def _send_reports(self):
        """Interest changes and confirm requests for the supervisor, in order (tscale/handover.py)."""
        for m in self.report.take():
            if m[0] == "interest":
                self._bus_send(bus.SUP, pack([bus.LOCAL_INTEREST, self.index, m[1], m[2], m[3]]))
            else:
                self._bus_send(bus.SUP, pack([bus.CONFIRM_REQ, self.index, m[1]]))

    def _snapshot_for(self, j: int) -> list:
        return [[p, g, c] for (p, g), c in self.local_interest.items()
                if not is_literal(p) or shard_of(p, self.count) == j]

    # -- bus input ----------------------------------------------------------
    def _drain_bus(self):
        recv = self.sub.recv
        pending = 0                        # as in _drain_router: bounded in bytes and time
        deadline = time.monotonic() + PASS_TIME
        for _ in range(INPUT_BUDGET):
            if pending >= FLUSH_BYTES:
                self._flush()
                pending = 0
                if time.monotonic() >= deadline:
                    return
            try:
                recv(NOBLOCK)
            except zmq.Again:
                return
            body = recv()
            pending += len(body)
            try:
                cmd = msgpack.unpackb(body, raw=False)
            except Exception:
                self.log.error("undecodable bus message dropped")
                continue
            kind = cmd[0]
            if kind == bus.FWD:
                self._ingest(None, cmd, 2)
            elif kind == bus.DELIVER:
                self._deliver_proxied(cmd)
            elif kind == bus.INTEREST:
                _, frm, delta, pattern, group, ackkey = cmd
                self.table.add_link_interest(frm, pattern, group, delta)
                if ackkey is not None and self.acks.request(frm, ackkey):
                    self._bus_send(bus.topic(frm), pack([bus.INTEREST_ACK, self.index, ackkey]))
            elif kind == bus.INTEREST_ACK:
                self._acked(cmd[1], cmd[2])
            elif kind == bus.ACK_REQ:
                if self.acks.request(cmd[1], cmd[2]):
                    self._bus_send(bus.topic(cmd[1]), pack([bus.INTEREST_ACK, self.index, cmd[2]]))
            elif kind == bus.WORKER_HELLO:
                frm, epoch = cmd[1], cmd[2]
                if frm != self.index:
                    self._bus_send(bus.topic(frm), pack([bus.SNAPSHOT, self.index, epoch, self._snapshot_for(frm)]))
                    self.queues.on_worker_hello(frm)
            elif kind == bus.QUEUE_DEFS:
                if cmd[1] != self.index:
                    self.queues.on_defs(cmd[1], cmd[2])
            elif kind == bus.SNAPSHOT:
                frm, epoch, entries = cmd[1], cmd[2], cmd[3]
                if epoch == self.epoch:
                    self.table.replace_link(frm, entries)
                    if frm not in self.synced:
                        self.synced.add(frm)
                        self.log.debug("synced with worker %d", frm)
                        self._synced_with(frm)
                        self._start_queues()
            elif kind == bus.FWD_PEER:
                self._ingest_peer(cmd[2], cmd, 3)
            elif kind == bus.WORKER_DOWN:
                self._worker_down(cmd[2])
                self.queues.worker_down(cmd[2])
            elif kind == bus.NODE_STATUS:
                self.node_status = cmd[2]
                self._answer_status()
            elif kind == bus.PEER_INTEREST:
                self.table.apply_link_entries(cmd[2], cmd[4], cmd[3])
                self.queues.seen_remote(cmd[4])
            elif kind == bus.PEERS:
                self._set_peers(cmd[2])
            elif kind == bus.SYNC_REQ:
                self._bus_send(bus.SUP, pack([bus.SYNC_ACK, self.index, cmd[2]]))
            elif kind == bus.CONFIRMED:
                self._acked(bus.SUPERVISOR, cmd[2])
            elif kind == bus.USERS:
                self._reload_users(cmd[2])
            elif kind == bus.CLUSTER_SNAPSHOT:
                if cmd[2] == self.epoch:
                    self._set_peers(cmd[3])
                    for peer, entries in cmd[4].items():
                        self.table.replace_link(peer, entries)
                        self.queues.seen_remote(entries)
                    self.synced.add(bus.SUPERVISOR)
                    self.report.supervisor_heard()   # it hears us now: hand over our whole interest
                    self._start_queues()

    def _start_queues(self):
        """Open the durable queues once synced with every other worker and the supervisor, so that
        each of them hears the queues' interest (a PUB/SUB message sent earlier may be lost)."""
        if not self.queues.started and len(self.synced) >= self.count:
            self.queues.start()

    def _acked(self, frm: int, ackkey: int):
        p = self.pending_acks.get(ackkey)
        if p is None:
            return
        p[2].discard(frm)
        if not p[2]:
            del self.pending_acks[ackkey]
            self._confirm(p[0], p[1])

    def _await(self, ackkey: int, waiting: set, conn, req, cluster: bool):
        """Answer (`_confirm`) once the workers in `waiting` have confirmed `ackkey`, at once if
        none; with `cluster` also only once every reachable node has our interest: the
        supervisor runs a barrier along the overlay after our interest change."""
        if cluster:
            self.report.confirm(ackkey)
            self._send_reports()
            waiting.add(bus.SUPERVISOR)
        if waiting:
            self.pending_acks[ackkey] = [conn, req, waiting, self.now + ACK_TIMEOUT + (3.0 if cluster else 0.0)]
        else:
            self._confirm(conn, req)

    def _confirm(self, conn, req):
        """An interest change is in place: OK to the client, or run the internal waiter."""
        if conn is None:
            req()
        else:
            self.tx.send(conn, protocol.ok(req))

    def announce_and_wait(self, subs: list, done) -> None:
        """Announce new internal subscriptions (a durable queue's) and call `done()` once every
        owner worker of this host and every reachable node has them (as a SUB with confirm
        "cluster" waits; at most ACK_TIMEOUT + 3 s)."""
        ackkey = next(self.ackkeys)
        targets = set()
        for sub in subs:
            targets.update(self._tell(sub, +1, None))
        self._await(ackkey, self._ask_confirm(targets, ackkey), None, done, True)

    def _synced_with(self, frm: int):
        """Worker `frm`'s snapshot is applied: confirm what it asked meanwhile, and ask it again
        for what we still wait for (our first request may predate its SUB: tscale/workeracks.py)."""
        to = bus.topic(frm)
        for key in self.acks.snapshot_applied(frm):
            self._bus_send(to, pack([bus.INTEREST_ACK, self.index, key]))
        for key, p in self.pending_acks.items():
            if frm in p[2]:
                self._bus_send(to, pack([bus.ACK_REQ, self.index, key]))

    def _worker_down(self, k: int):
        if k == self.index:
            return
        self.acks.worker_down(k)
        self.table.clear_link(k)
        self.synced.discard(k)
        for key in [a for a, p in self.pending_acks.items() if k in p[2]]:
            self._acked(k, key)
        self.log.info("worker %d is down; its interest withdrawn", k)

    # -- output -------------------------------------------------------------
    def _flush(self):
        if self.tx.backlogged:
            self.tx.send_backlogs(False)
        if self.dirty:
            self.tx.flush_events(self.dirty, self.now)
        for k in range(self.count):
            self._flush_bus(k, self.fwd[k], 2, 3)
            self._flush_bus(k, self.deliver[k], 2, 4)
        for (k, _src), buf in self.fwd_peer.items():
            self._flush_bus(k, buf, 3, 4)
        for link in self.peer_links.values():
            if len(link.out) > 2:
                link.send(self.stats)
        report = self.report
        if report.deltas or report.outbox:
            self._send_reports()
        if self.tx.dead:
            self._remove_dead()

    def _flush_bus(self, k: int, buf: list, header: int, stride: int):
        """Send worker k one batch (FWD, DELIVER or FWD_PEER) if it holds events; count them."""
        if len(buf) > header:
            events = (len(buf) - header) // stride
            if self._bus_send(bus.topic(k), pack(buf), control=False):
                self.stats["forwarded"] += events
            else:
                self.stats["dropped"] += events
            del buf[header:]

    # -- peers ----------------------------------------------------------------
    def _set_peers(self, peers: dict):
        """Open a DEALER to each overlay neighbour's counterpart worker; close the rest.

        Also the list of nodes whose links may send peer frames: a connection that said
        HELLO as a node that is no longer a neighbour loses that right."""
        for conn, hello in self.gate.set_neighbours(peers, self.now):
            if self.conns.get(conn.ident) is conn:
                self._on_hello(conn, *hello)
        for c in self.conns.values():
            if c.peer and not self.gate.allowed(c.peer):
                c.peer = ""
        for pid in [p for p in self.peer_links if p not in peers]:
            link = self.peer_links.pop(pid)
            self.poller.unregister(link.sock)
            link.sock.close(0)
            self.table.clear_link(pid)
            self.log.info("peer %s (%s) gone", link.name, pid)
        for pid, info in peers.items():
            if pid in self.peer_links:
                continue
            ports = info["ports"]
            endpoint = f"tcp://{info['host']}:{ports[self.index % len(ports)]}"
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, self.spec.get("client_hwm", 1000))
            sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
            self.sec.peer_client(sock, info.get("ck"))
            sock.connect(endpoint)
            link = self.peer_links[pid] = PeerLink(pid, info.get("name", ""), sock, self.spec["node_id"])
            sock.send(self._peer_hello())
            self.poller.register(sock, zmq.POLLIN)
            self.log.info("peer %s (%s) linked via %s", link.name, pid, endpoint)

    def _peer_hello(self) -> bytes:
        return pack([HELLO, protocol.VERSION, {"name": "peer:" + self.spec["node_name"], "lang": "tscale-node",
                                               "direct": False,
                                               "peer": self.spec["node_id"]}])

    def _drain_peer(self, sock):
        for link in self.peer_links.values():
            if link.sock is sock:
                break
        else:
            return
        while True:
            try:
                frame = sock.recv(NOBLOCK)
            except zmq.Again:
                return
            try:
                cmd = decode_node(frame)
            except ProtocolError:
                continue
            if cmd[0] == PING:
                sock.send(pack([PONG, cmd[1]]), zmq.NOBLOCK)
            elif cmd[0] == protocol.ERR and cmd[1] == protocol.E_NOT_AUTHORIZED:
                # The peer worker restarted, or has not yet heard from its supervisor that we are
                # its neighbour: greet it again at the next housekeeping tick (not in a tight loop).
                link.rehello = True

    def _denied(self, conn: Connection, what: str, req, n: int = 1):
        """A permission violation: a non-fatal error naming the subject; counted per user."""
        user = conn.user or "anonymous"
        self.violations[user] = self.violations.get(user, 0) + n
        self._error(conn, protocol.E_PERMISSION_DENIED, f"user {user!r} may not {what}", req)

    def _reload_users(self, users_doc):
        """The supervisor reloaded the users file: new handshakes and every connection follow it."""
        if self.zap_gate is None:
            return
        self.zap_gate.set_users(users_doc)
        for conn, denied in access.reload(self.zap_gate, self.conns.values()):
            if denied is None:   # its user is gone: served nothing but the handshake from now on
                conn.rejected = protocol.E_NOT_AUTHORIZED
                self._drop_subs(conn)
                continue
            for s in denied:
                self._unsubscribe(conn, s)
                self._denied(conn, f"subscribe to {s.pattern!r} (dropped after a users file reload)", None)
        self.log.info("users file reloaded: %d users", len(self.zap_gate.users or {}))

    def _error(self, conn: Connection, code: str, message: str, req=None, quiet: bool = False):
        conn.errors += 1
        self.stats["errors"] += 1
        if not quiet:
            self.rlog.warning(("err", code), "client %s: %s: %s", conn.label(), code, message)
        self.tx.send(conn, err(code, message, req))

    def _bus_send(self, topic: bytes, body: bytes, control: bool = True) -> bool:
        if self.bus_backlog and control:
            self.bus_backlog.append((topic, body))
            return True
        try:
            self.pub.send(topic, SEND_MORE)
            self.pub.send(body, NOBLOCK)
            return True
        except zmq.Again:
            if control:   # interest and sync messages must not be lost: retry at the next tick
                self.bus_backlog.append((topic, body))
                return True
            return False

    def _drop_subs(self, conn: Connection):
        for s in list(conn.subs.values()):
            self._unsubscribe(conn, s)

    def _forget(self, conn: Connection):
        """A slow consumer's disconnect: its subscriptions and pending confirmations go."""
        self._drop_subs(conn)
        self._forget_acks(conn)

    def _forget_acks(self, conn: Connection):
        for key in [a for a, p in self.pending_acks.items() if p[0] is conn]:
            del self.pending_acks[key]

    def _remove_conn(self, conn: Connection, gone: bool = False):
        """Forget a connection.  Unless it is `gone` (ZeroMQ dropped it, and its queue with it), keep its
        outbound account while ZeroMQ still holds frames for it, so the same routing id coming back
        (BYE, HELLO, flood, ...) starts from what is really queued, not from zero."""
        self._drop_subs(conn)
        if self.conns.get(conn.ident) is conn:
            del self.conns[conn.ident]
        self._forget_acks(conn)
        self.tx.forgotten(conn, gone)

    def _remove_dead(self):
        for c in self.tx.dead:
            self._remove_conn(c, gone=True)
        self.tx.dead.clear()

    # -- housekeeping -------------------------------------------------------
    def _tick(self, now: float):
        if self.pending_status:
            self._answer_status(now)
        if self.bus_backlog:
            backlog, self.bus_backlog = self.bus_backlog, []
            for topic, body in backlog:
                self._bus_send(topic, body)
        if self.gate.claims:   # refused peer HELLOs the supervisor never confirmed: now worth a warning
            for ident, hello in self.gate.expire(now):
                # one key for all: an attacker opening connection after connection gets one line per 5 s
                self.rlog.warning(("peer-auth",), "refused peer HELLO from %s (%r): %r is not a neighbour",
                                  ident.hex(), hello[0], hello[4])
        for link in self.peer_links.values():
            if link.rehello:
                link.rehello = False
                try:
                    link.sock.send(self._peer_hello(), NOBLOCK)
                except zmq.ZMQError:
                    link.rehello = True
        tx = self.tx
        if tx.blocked:
            tx.check_slow(now, lambda c: self.conns.get(c.ident) is c)
        if tx.backlogged:
            tx.send_backlogs(True)
        if len(self.synced) < self.count:   # the other workers and the supervisor
            self._bus_send(bus.ALL, pack([bus.WORKER_HELLO, self.index, self.epoch]))
        self._start_queues()
        self.queues.tick(now)
        for key in [a for a, p in self.pending_acks.items() if p[3] < now]:
            conn, req, waiting, _ = self.pending_acks.pop(key)
            self.log.warning("workers %s did not confirm interest in time; confirming anyway", sorted(waiting))
            self._confirm(conn, req)
        if now >= self.next_ping:     # every PING_EVERY: find connections that went away
            self.next_ping = now + PING_EVERY
            ping = pack([PING, 0])
            for c in list(self.conns.values()):
                if now - c.last_seen > IDLE_PING_AFTER:
                    self.tx.send(c, ping)
            if self.tx.dead:
                self._remove_dead()
            tx.expire_lingering()

    def _needs_tick(self) -> bool:
        """Whether something waits for a deadline that `_tick` checks (then it runs every TICK,
        else every IDLE_TICK).  Each test is O(1): nothing here looks at every subscription
        or connection."""
        tx = self.tx
        return bool(self.pending_acks or self.pending_status or self.bus_backlog or self.gate.claims
                    or self.peer_links or tx.blocked or tx.backlogged or tx.dead
                    or len(self.synced) < self.count or not self.queues.idle())

    def _answer_status(self, now: float | None = None):
        keep = []
        for conn, req, deadline in self.pending_status:
            if now is None or deadline <= now:
                self.tx.send(conn, pack([protocol.STATUS_REPLY, req, self.status()]))
            else:
                keep.append((conn, req, deadline))
        self.pending_status = keep

    def worker_stats(self) -> dict:
        slow = sorted((c for c in self.conns.values() if c.drops), key=lambda c: -c.drops)[:10]
        peers = {pid: {"name": l.name, "events_out": l.events_out, "dropped": l.dropped,
                       "invalid_in": self.gate.invalid.get(pid, 0)}
                 for pid, l in self.peer_links.items()}
        return {
            "index": self.index,
            "pid": os.getpid(),
            "clients": len(self.conns),
            "subscriptions": self.table.subscriptions(),
            "uptime_s": round(time.time() - self.started, 1),
            **self.stats,
            "slow_clients": [{"client": c.label(), "dropped": c.drops, "pending_bytes": c.ob.pending_bytes(),
                              "disconnected": c.rejected == protocol.E_SLOW_CONSUMER} for c in slow],
            "permission_denied": dict(self.violations),
            "peers": peers,
            "queues": self.queues.figures(),
        }

    def _send_stats(self):
        """Our figures to the supervisor: when they changed (the uptime aside), else every
        STATS_REPEAT seconds.  An idle worker sends nothing most seconds (issue 10: idle CPU)."""
        st = self.worker_stats()
        st.pop("uptime_s")            # nobody reads it from STATS; the worker's own status() adds it
        if st == self.last_stats and self.now < self.stats_due:
            return
        self.last_stats = st
        self.stats_due = self.now + STATS_REPEAT
        self._bus_send(bus.SUP, pack([bus.STATS, self.index, st]))

    def status(self) -> dict:
        """The node status as last published by the supervisor, with this worker's figures fresh."""
        st = dict(self.node_status) if self.node_status else {"node": {}, "workers": []}
        mine = self.worker_stats()
        workers = [dict(w) for w in st.get("workers", [])]
        for w in workers:
            if w.get("index") == self.index:
                w.update(mine)
                break
        else:
            workers.append(mine)
        st["workers"] = workers
        totals = dict(st.get("totals", {}))
        for k in ("events_in", "events_out", "dropped", "slow_disconnects", "errors", "clients", "subscriptions"):
            totals[k] = sum(w.get(k, 0) for w in workers)
        st["totals"] = totals
        st["answered_by_worker"] = self.index
        return st

