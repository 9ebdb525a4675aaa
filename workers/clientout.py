"""What a worker sends to its client connections over its ROUTER (the socket-touching shell
around tscale/outbound.py).

Two kinds of frames go out, with different promises:

* Event batches (MSG) go out while the connection has room under its outbound bound
  (`client_max_pending` bytes, `client_hwm` frames; tscale/outbound.py counts what ZeroMQ
  still holds).  Without room they are dropped and counted, and a connection that stays
  without room longer than the grace period is disconnected as a slow consumer.
* Control replies (OK, ERR, PONG, WELCOME, STATUS_REPLY, PING) are never dropped: events stop
  at client_hwm frames, the ROUTER's SNDHWM leaves CONTROL_HEADROOM more for control frames,
  and what ZeroMQ still cannot take waits, in order, in the connection's control backlog.  A
  backlog longer than CONTROL_BACKLOG means the client does not read its replies: it is
  disconnected as a slow consumer.

A connection forgotten by the worker while ZeroMQ still holds frames for it leaves its
account here ("lingering"), so the same routing id coming back starts from what is really
queued, not from zero.
"""
from __future__ import annotations

import zmq

from tscale import protocol
from tscale.connstate import Connection
from tscale.outbound import EXPIRED, UNDER, Outbound
from tscale.protocol import err, pack

CONTROL_HEADROOM = 4000   # > 2,000 replies outstanding + ZeroMQ's lag in seeing reads (half its HWM)
CONTROL_BACKLOG = 2000

# pyzmq's enum flags cost ~0.4 us per operation on the hot path; use plain ints.
NOBLOCK = int(zmq.NOBLOCK)
SEND_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


class ClientOut:
    """The output side of a worker's client connections: event batches under each connection's
    bound, control replies with their backlog, slow-consumer detection and disconnects.

    `forget(conn)` is the worker's part of a slow-consumer disconnect (drop the connection's
    subscriptions and pending confirmations); `stats` is the worker's counters dict."""

    def __init__(self, router, max_pending: int, hwm: int, grace: float, stats: dict, rlog, forget):
        self.router = router
        self.max_pending = max_pending
        self.hwm = hwm
        self.grace = grace
        self.stats = stats
        self.rlog = rlog
        self.forget = forget
        self.dead: list[Connection] = []          # ZeroMQ refused them (gone): the worker removes them
        self.blocked: list[Connection] = []       # without room for events (over their bound)
        self.backlogged: list[Connection] = []    # holding control frames ZeroMQ could not take yet
        self.lingering: dict[bytes, Outbound] = {}   # accounts of forgotten connections ZeroMQ still holds frames for

    # -- accounts -------------------------------------------------------------
    def outbound_for(self, ident: bytes) -> Outbound:
        """The account of a new connection: what ZeroMQ may still hold for its routing id, or fresh."""
        return self.lingering.pop(ident, None) or Outbound(self.max_pending, self.hwm)

    def forgotten(self, conn: Connection, gone: bool) -> None:
        """The worker forgot `conn`; unless it is `gone` (ZeroMQ dropped its queue) keep its account
        while frames for it are still queued."""
        conn.ctl.clear()
        if not gone and not conn.ob.drained():
            self.lingering[conn.ident] = conn.ob

    def expire_lingering(self) -> None:
        for ident in [i for i, ob in self.lingering.items() if ob.drained()]:
            del self.lingering[ident]

    # -- sending --------------------------------------------------------------
    def emit(self, c: Connection, data: bytes):
        """Hand one frame for `c` to ZeroMQ and count it in its outbound bound; now and then as a
        tracked watermark frame (tscale/outbound.py).  Raises what the send raises."""
        ob = c.ob
        size = len(data)
        router = self.router
        router.send(c.ident, SEND_MORE)
        if ob.want_mark(size):
            ob.sent(size, router.send(data, NOBLOCK, copy=False, track=True))
        else:
            router.send(data, NOBLOCK)
            ob.sent(size)

    def send(self, conn: Connection, frame: bytes):
        """Send a control frame.  Never dropped for lack of room: what ZeroMQ cannot take now
        waits, in order, in the connection's backlog."""
        if not conn.ctl:
            try:
                self.emit(conn, frame)
                return
            except zmq.Again:
                self.backlogged.append(conn)
            except zmq.ZMQError:
                self.dead.append(conn)
                return
        if len(conn.ctl) < CONTROL_BACKLOG:
            conn.ctl.append(frame)
        elif not conn.rejected:
            # It does not even read its replies: give up on it rather than leave it waiting.
            self.slow_disconnect(conn, f"{CONTROL_BACKLOG} control replies it did not read", True)
        # else: already disconnected; the slow_consumer notice ahead in its backlog answers for this one

    def send_backlogs(self, refused_too: bool):
        """Retry the control backlogs, oldest frame first; those of connections already disconnected
        as slow consumers only when `refused_too` (housekeeping), not on every flush."""
        keep = []
        emit = self.emit
        for c in self.backlogged:
            q = c.ctl
            if q and (refused_too or not c.rejected):
                i = 0
                try:
                    for frame in q:
                        emit(c, frame)
                        i += 1
                except zmq.Again:
                    pass
                except zmq.ZMQError:
                    self.dead.append(c)
                    i = len(q)
                del q[:i]
            if q:
                keep.append(c)
        self.backlogged = keep

    def flush_events(self, dirty: list, now: float):
        """Pack and send the pending MSG batch of every connection in `dirty` (then cleared)."""
        stats = self.stats
        emit = self.emit
        for c in dirty:
            o = c.out
            if c.sink is not None:    # a durable queue or the queue API: stores instead of sending
                c.sink(o)
                del o[1:]
                continue
            n = (len(o) - 1) >> 2
            ob = c.ob
            # Over its bound (or still owed control replies): drop before packing, so a
            # slow consumer costs the worker almost nothing.
            data = pack(o) if not c.ctl and ob.admits(n) else None
            del o[1:]
            try:
                if data is not None and ob.packed(n, len(data)):
                    emit(c, data)
                    stats["events_out"] += n
                    if ob.over_since is not None:
                        ob.over_since = None     # it takes events again: the episode is over
                    continue
            except zmq.Again:    # not expected: events stay under client_hwm < SNDHWM
                pass
            except zmq.ZMQError:
                self.dead.append(c)
                continue
            c.drops += n
            stats["dropped"] += n
            if not c.blocked:
                c.blocked = True
                if ob.over_since is None:
                    ob.over_since = now
                self.blocked.append(c)
                self.rlog.warning(("slow", c.ident), "slow consumer %s: over client_max_pending, dropping",
                                  c.label())
        dirty.clear()

    # -- slow consumers -------------------------------------------------------
    def check_slow(self, now: float, current):
        """Connections without room: unblock those that have room again (queue groups pick them
        again), disconnect those that stayed over their bound longer than the grace period.
        `current(c)` says whether `c` is still the worker's connection for its routing id."""
        keep = []
        for c in self.blocked:
            state = c.ob.check(now, self.grace) if current(c) and not c.rejected else UNDER
            if state == UNDER:
                c.blocked = False
            elif state == EXPIRED:
                c.blocked = False
                self.slow_disconnect(c, f"over client_max_pending ({self.max_pending} bytes) "
                                        f"for {self.grace:g} s")
            else:
                keep.append(c)
        self.blocked = keep

    def slow_disconnect(self, conn: Connection, why: str, replace_backlog: bool = False):
        """Forget a slow consumer's subscriptions and tell it (fatal ERR slow_consumer) once it reads,
        after the replies already queued for it (or instead of its backlog, `replace_backlog`);
        until it says HELLO again every command is answered slow_consumer."""
        self.stats["slow_disconnects"] += 1
        self.rlog.warning(("slow-off", conn.ident), "slow consumer %s disconnected (%s); %d subscriptions dropped",
                          conn.label(), why, len(conn.subs))
        self.forget(conn)
        conn.rejected = protocol.E_SLOW_CONSUMER
        conn.ob.over_since = None
        notice = err(protocol.E_SLOW_CONSUMER, f"disconnected as a slow consumer: {why}")
        if not conn.ctl:
            self.send(conn, notice)
        elif replace_backlog:
            conn.ctl[:] = [notice]
        else:
            conn.ctl.append(notice)
