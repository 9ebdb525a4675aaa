"""Synchronous Python client.

One background I/O thread owns the ZeroMQ sockets (one DEALER per worker of
the node, learned from WELCOME); user threads hand it work through per-worker
queues guarded by one lock.  `publish()` only appends to the owner worker's
batch, so a tight publish loop turns into large frames without any timer; a
lone event is sent as soon as the I/O thread wakes.

Callbacks run in the I/O thread: keep them short (a slow callback only slows
this client; the node drops and counts what this client cannot take).
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import queue
import threading
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import protocol
from .client_core import (BATCH_BYTES, BATCH_LEN, MONITOR_EVENTS, ClientCore, CoreView, Credentials, Msg, SubState,
                          handshake_error, parse_address)
from .errors import ConnectError, NoResponders, ServerError, Timeout, TscaleError
from .queues import api as qapi
from .queues import client_core as qc
from .queues.client_core import PubAck, QueueMsg  # noqa: F401  (re-exported)

log = logging.getLogger("tscale.client")

NOBLOCK = int(zmq.NOBLOCK)     # plain ints: pyzmq's enum flag objects are slow on hot paths
MAX_QUEUED_FRAMES = 64        # per worker, before publish() waits for the I/O thread
DEFAULT_PENDING_LIMIT = 65536  # per iterator subscription, like NATS's default
_QUEUE_LOCK = threading.Lock()   # makes a Subscription's event queue once


def default_server() -> str:
    return os.environ.get("TSCALE_SERVER") or "127.0.0.1:7400"


_cf = concurrent.futures._base
_DONE_STATES = frozenset({_cf.CANCELLED, _cf.CANCELLED_AND_NOTIFIED, _cf.FINISHED})
_cond_lock = threading.Lock()   # makes a ConfirmFuture's Condition appear atomically w.r.t. its fast paths


class ConfirmFuture(concurrent.futures.Future):
    """The future of a publish with confirm: a `concurrent.futures.Future` (isinstance, wait() and
    as_completed() work) whose Condition is made only when something waits on it, registers a
    callback or cancels it.  A confirm that arrives before its future is waited for (most of a
    pipelined window) then costs no Condition at all: creating one and notifying it was about half
    of the client's CPU per pipelined confirmed publish (9.5 us of a Future's life, 21 us per event).

    Correctness: the Condition is created under `_cond_lock`, and set_result/set_exception check for
    it and finish under the same lock; so either they finish before it exists (a waiter made later
    finds the state FINISHED under it) or they take the ordinary path that notifies it."""

    def __init__(self):   # noqa: super().__init__ would make the Condition
        self._cond = None
        self._state = _cf.PENDING
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks = []

    @property
    def _condition(self):
        c = self._cond
        if c is None:
            with _cond_lock:
                c = self._cond
                if c is None:
                    c = self._cond = threading.Condition()
        return c

    def done(self):
        return self._state in _DONE_STATES

    def result(self, timeout=None):
        if self._state == _cf.FINISHED and self._exception is None:
            return self._result
        return super().result(timeout)

    def _finish_fast(self, result, exception) -> bool:
        with _cond_lock:
            if self._cond is not None:
                return False
            state = self._state
            if state not in _DONE_STATES:
                self._result = result
                self._exception = exception
                self._state = _cf.FINISHED
                return True
        raise concurrent.futures.InvalidStateError(f"{state}: {self!r}")   # (repr takes the Condition)

    def set_result(self, result):
        if not self._finish_fast(result, None):
            super().set_result(result)

    def set_exception(self, exception):
        if not self._finish_fast(None, exception):
            super().set_exception(exception)


class _Waiter:
    __slots__ = ("event", "value", "error", "worker")

    def __init__(self, worker: int = -1):
        self.worker = worker     # the worker whose answer it waits for
        self.event = threading.Event()
        self.value = None
        self.error = None

    def set(self, value=None, error=None):
        self.value = value
        self.error = error
        self.event.set()

    def wait(self, timeout: float, what: str):
        if not self.event.wait(timeout):
            raise Timeout(f"{what}: no answer within {timeout:g}s")
        if self.error is not None:
            raise self.error
        return self.value


class Subscription:
    """A live subscription: iterate it, call `next_msg()`, or give a callback."""

    def __init__(self, client: "Client", state: SubState, cb, pending_limit: int):
        self._client = client
        self._state = state
        self._cb = cb
        # Without a callback the events wait in a queue, made on first use (the I/O thread's
        # first event or the application's first read): 100,000 subscriptions set up at once
        # allocate none up front (issue 10).
        self._q: queue.SimpleQueue | None = None
        self.pending_limit = pending_limit
        self.dropped = 0          # events dropped here because the application did not keep up
        self.received = 0

    sid = property(lambda self: self._state.sid)
    pattern = property(lambda self: self._state.pattern)
    queue = property(lambda self: self._state.queue)

    def _queue(self) -> queue.SimpleQueue:
        q = self._q
        if q is None:
            with _QUEUE_LOCK:       # the I/O thread and the application may both come first
                q = self._q
                if q is None:
                    q = self._q = queue.SimpleQueue()
        return q

    def _push(self, msg: Msg):
        self.received += 1
        if self._cb is not None:
            try:
                self._cb(msg)
            except Exception:
                log.exception("subscription callback for %r raised", self.pattern)
            return
        q = self._q or self._queue()
        if q.qsize() >= self.pending_limit:
            self.dropped += 1
        else:
            q.put(msg)

    def next_msg(self, timeout: float | None = 1.0) -> Msg:
        if self._cb is not None:
            raise TscaleError("this subscription delivers to a callback")
        try:
            return (self._q or self._queue()).get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"no event on {self.pattern!r} within {timeout}s") from None

    def pending(self) -> int:
        q = self._q
        return q.qsize() if q is not None else 0

    def __iter__(self):
        return self

    def __next__(self) -> Msg:
        return self.next_msg(timeout=None)

    def unsubscribe(self, timeout: float = 5.0) -> None:
        self._client._unsubscribe(self, timeout)


_CLUSTER_CONFIRM = {"confirm": "cluster"}


class _RequestLane:
    """One thread's sockets for request(): a DEALER per worker plus an inbox subscription."""

    def __init__(self, client: "Client", timeout: float):
        self.client = client
        core = client._core
        self.prefix = "_INBOX." + os.urandom(8).hex() + "."
        self.counter = 0
        self.socks = []
        self.poller = zmq.Poller()
        client._lanes.append(self)
        try:
            for port in core.ports:
                s = client._socket(port)
                self.socks.append(s)
                client._hello(s, timeout)
                # confirm "cluster": a responder on another node must know where the inbox is
                # before it answers, or the first reply of a fresh lane can be lost on the way back
                s.send(protocol.pack([protocol.SUB, 1, self.prefix + "*", None, 1, _CLUSTER_CONFIRM]))
                self.poller.register(s, zmq.POLLIN)
            for s in self.socks:   # wait until every worker has the inbox interest
                self._wait(s, timeout, lambda cmd: cmd[0] == protocol.OK)
        except BaseException:
            self.close()
            raise

    def _wait(self, s, timeout: float, done):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not s.poll(left * 1000):
                raise Timeout(f"request lane: no answer from {self.client.server} within {timeout:g}s")
            cmd = self.client._core.decode(s.recv(), -1)
            if cmd is None:
                continue
            if cmd[0] == protocol.ERR:
                raise self.client._core.error_of(cmd)
            if done(cmd):
                return cmd

    def request(self, name: str, data, timeout: float, headers: dict | None) -> Msg:
        core = self.client._core
        if type(data) is not bytes:
            data = data.encode() if isinstance(data, str) else bytes(data)
        if len(data) > core.max_payload:
            raise TscaleError(f"payload of {len(data)} bytes exceeds the node's max_payload {core.max_payload}")
        self.counter += 1
        reply = self.prefix + str(self.counter)
        self.socks[core.owner(name)].send(protocol.pack([protocol.PUB, name, data, [headers, reply]]))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"request {name!r}: no reply within {timeout:g}s")
            for sock, _ in self.poller.poll(left * 1000):
                cmd = core.decode(sock.recv(), -1)
                if cmd is None:
                    continue
                code = cmd[0]
                if code == protocol.MSG:
                    cmd = cmd[1]
                    for i in range(1, len(cmd), 4):
                        if cmd[i + 1] == reply:
                            meta = cmd[i + 3] or (None, None)
                            return Msg(reply, cmd[i + 2], meta[0], meta[1], cmd[i], self.client)
                elif code == protocol.PING:
                    sock.send(protocol.pack([protocol.PONG, cmd[1]]))
                elif code == protocol.ERR:
                    raise core.error_of(cmd)

    def close(self):
        for s in self.socks:
            self.client._close_socket(s, 0)
        self.socks = []
        if self in self.client._lanes:
            self.client._lanes.remove(self)


class Client(CoreView):
    """Connects to one node address; talks to each of its workers directly."""

    def __init__(self, server: str | None = None, name: str = "", token: str | None = None,
                 connect_timeout: float = 5.0, error_cb=None, *, server_key: str | None = None,
                 client_key: str | None = None, user: str | None = None, password: str | None = None):
        self.server = server or default_server()
        self._core = ClientCore(name=name, creds=Credentials(token, server_key, client_key, user, password))
        self._monitor_of: dict = {}
        self._error_cb = error_cb
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._waiters: dict = {}
        self._subs: dict[int, Subscription] = {}
        self._local = threading.local()     # per-thread request lanes
        self._lanes: list = []
        self._closed = False
        self._sleeping = False
        self._io_ident = None
        self._q_sub = None                  # the inbox for confirms and fetch replies (subscribed on first use)
        self._q_handlers: dict = {}         # reply name -> handler(msg) -> True when done
        self._ctx = zmq.Context()
        self._host, port = parse_address(self.server)
        try:
            self._handshake(port, connect_timeout)
        except BaseException:
            self._ctx.destroy(linger=0)
            raise
        self._efd = os.eventfd(0, os.EFD_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="tscale-io", daemon=True)
        self._thread.start()

    # -- connection -----------------------------------------------------------
    def _socket(self, port: int) -> zmq.Socket:
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 1000)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.setsockopt(zmq.RCVHWM, 1000)
        s.setsockopt(zmq.RECONNECT_IVL, 50)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)   # jittered-by-libzmq exponential back-off
        s.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        s.setsockopt(zmq.IDENTITY, os.urandom(12))
        self._core.creds.apply(s)
        # The monitor exists before the connection, so a failed security handshake is seen.
        self._monitor_of[s] = s.get_monitor_socket(MONITOR_EVENTS)
        s.connect(f"tcp://{self._host}:{port}")
        return s

    def _close_socket(self, s: zmq.Socket, linger: int):
        m = self._monitor_of.pop(s, None)
        if m is not None:
            s.disable_monitor()
            m.close(0)
        s.close(linger)

    def _hello(self, s: zmq.Socket, timeout: float) -> list:
        s.send(self._core.hello())
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(s, zmq.POLLIN)
        mon = self._monitor_of[s]
        poller.register(mon, zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            ready = dict(poller.poll(left * 1000)) if left > 0 else {}
            if not ready:
                raise ConnectError(f"no answer from tscale node at {self.server} within {timeout:g}s")
            if mon in ready:
                ev = recv_monitor_message(mon)
                why = handshake_error(ev["event"], ev["value"], self.server, self._core.creds.curve)
                if why is not None:
                    raise ConnectError(why)
            if s not in ready:
                continue
            cmd = self._core.decode(s.recv(), -1)
            if cmd is None:
                continue
            if cmd[0] == protocol.WELCOME:
                return cmd
            if cmd[0] == protocol.ERR:
                raise ConnectError(f"node refused the connection: {cmd[1]}: {cmd[2]}")

    def _handshake(self, port: int, timeout: float):
        first = self._socket(port)
        cmd = self._hello(first, timeout)
        self._core.welcome(cmd)
        me = cmd[2]["worker"]
        n = self._core.workers
        self._socks: list[zmq.Socket] = [None] * n
        self._socks[me] = first
        for k in range(n):
            if self._socks[k] is None:
                self._socks[k] = self._socket(self._core.ports[k])
                self._hello(self._socks[k], timeout)
        self._outq = [collections.deque() for _ in range(n)]
        self._monitors = [self._monitor_of[s] for s in self._socks]

    # -- I/O thread ------------------------------------------------------------
    def _wake(self):
        if self._sleeping:
            # One write wakes it: until the I/O thread gets the GIL back, later callers (a loop
            # of subscribe(wait=False)) would each write the eventfd again, a syscall apiece.
            self._sleeping = False
            os.eventfd_write(self._efd, 1)

    def _enqueue(self, k: int, frame: bytes):
        """Queue a frame for worker k behind any events already batched for it (keeps order)."""
        with self._lock:
            b = self._core.take_batch(k)
            if b is not None:
                self._outq[k].append(b)
            self._outq[k].append(frame)
        self._wake()

    def _enqueue_sub(self, state: SubState):
        """subscribe(wait=False) on a node that takes SUBS: the subscription joins the open SUBS
        batch at the tail of each target's queue (behind any events already batched, so order
        holds), or opens one.  The I/O thread packs a batch when it reaches the queue's head
        (under the lock, so nothing joins it after); a full batch is packed here."""
        core = self._core
        with self._lock:
            for k in state.targets:
                q = self._outq[k]
                if len(core.out[k]) > 1:         # events queued before this subscription go first
                    q.append(core.take_batch(k))
                batch = q[-1] if q else None
                if type(batch) is not list:
                    batch = core.new_subs_batch()
                    q.append(batch)
                if core.sub_entry(batch, state):
                    q[-1] = protocol.pack(batch)
        self._wake()

    def _run(self):
        self._io_ident = threading.get_ident()
        socks, monitors, outq = self._socks, self._monitors, self._outq
        n = len(socks)
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        for m in monitors:
            poller.register(m, zmq.POLLIN)
        poller.register(self._efd, zmq.POLLIN)
        index = {s: k for k, s in enumerate(socks)}
        mindex = {m: k for k, m in enumerate(monitors)}
        core = self._core
        stopping = False
        while True:
            with self._lock:
                for k in range(n):
                    b = core.take_batch(k)
                    if b is not None:
                        outq[k].append(b)
            backlog = False
            for k in range(n):
                q = outq[k]
                s = socks[k]
                while q:
                    f = q[0]
                    if type(f) is list:       # an open SUBS batch (_enqueue_sub): closed now
                        with self._lock:
                            f = q[0] = protocol.pack(f)
                    try:
                        s.send(f, NOBLOCK)
                    except zmq.Again:
                        backlog = True
                        break
                    q.popleft()
                if len(q) < MAX_QUEUED_FRAMES // 2:
                    with self._lock:
                        self._drained.notify_all()
            for s in socks:
                poller.modify(s, zmq.POLLIN | (zmq.POLLOUT if backlog else 0))
            if stopping and not any(outq):
                return
            if self._closed:
                stopping = True
            self._sleeping = True
            busy = any(len(b) > 1 for b in core.out) or (not backlog and any(outq))
            try:
                ready = poller.poll(0 if busy else (50 if stopping else 500))
            except zmq.ZMQError:
                return
            finally:
                self._sleeping = False
            for sock, ev in ready:
                if sock == self._efd:
                    try:
                        os.eventfd_read(self._efd)
                    except BlockingIOError:
                        pass
                elif sock in index:
                    if ev & zmq.POLLIN:
                        self._drain(index[sock], sock)
                else:
                    self._monitor_event(mindex[sock], sock)

    def _drain(self, k: int, s: zmq.Socket):
        for _ in range(256):
            try:
                frame = s.recv(NOBLOCK, copy=False)   # decoded from libzmq's buffer, not copied first
            except zmq.Again:
                return
            cmd = self._core.decode(frame.buffer, k)    # every field checked; bad events already dropped
            if cmd is None:
                continue
            code = cmd[0]
            if code == protocol.MSG:
                cmd = cmd[1]
                get = self._subs.get
                # zip over the four column slices: fewer bytecodes per event than indexing.
                for sid, name, data, meta in zip(cmd[1::4], cmd[2::4], cmd[3::4], cmd[4::4]):
                    sub = get(sid)
                    if sub is None:
                        continue
                    if meta is None:
                        msg = Msg(name, data, None, None, sid, self)
                    else:
                        msg = Msg(name, data, meta[0], meta[1], sid, self)
                    cb = sub._cb
                    if cb is None:
                        sub._push(msg)
                        continue
                    sub.received += 1
                    try:
                        cb(msg)
                    except Exception:
                        log.exception("subscription callback for %r raised", sub.pattern)
            else:
                kind, w, value = self._core.control(cmd, self._waiters)
                if kind == "reply" and w is not None:
                    w.set(value)
                elif kind == "error":
                    if w is not None:
                        w.set(error=value)
                    else:
                        self._core.async_error(value)
                        if self._core.forgot_us(value):
                            self._resync(k, value)
                        if self._error_cb is not None:
                            try:
                                self._error_cb(value)
                            except Exception:
                                log.exception("error_cb raised")
                elif kind == "pong":
                    self._outq[k].append(value)

    def _monitor_event(self, k: int, m: zmq.Socket):
        try:
            ev = recv_monitor_message(m, zmq.NOBLOCK)
        except zmq.Again:
            return
        why = handshake_error(ev["event"], ev["value"], self.server, self._core.creds.curve)
        if why is not None:
            log.warning("reconnecting to worker %d: %s", k, why)
        elif ev["event"] == zmq.EVENT_DISCONNECTED:
            log.info("lost connection to worker %d of %s; reconnecting", k, self.server)
        elif ev["event"] == zmq.EVENT_CONNECTED:
            # A (re)started worker knows nothing of us: greet it again and resubscribe.
            log.info("reconnected to worker %d of %s; resubscribing", k, self.server)
            frames = self._core.resync_frames(k, list(self._subs.values()))
            q = self._outq[k]
            q.appendleft(frames[0])
            q.extend(frames[1:])

    def _resync(self, k: int, e) -> None:
        """Worker k disconnected us as a slow consumer: what we waited for from it will not come, and
        our subscriptions there are gone.  Fail those waits and subscribe again (same connection)."""
        log.warning("worker %d of %s dropped us as a slow consumer (%s); resubscribing", k, self.server, e.message)
        for req, w in list(self._waiters.items()):
            if w.worker == k:
                self._waiters.pop(req, None)
                w.set(error=e)
        self._outq[k].extend(self._core.resync_frames(k, list(self._subs.values())))

    # -- API -------------------------------------------------------------------
    def _check_open(self):
        if self._closed:
            raise TscaleError("client is closed")

    def publish(self, name: str, data=b"", headers: dict | None = None, reply: str | None = None,
                confirm: bool = False, msg_id: str | None = None, timeout: float = 5.0):
        """Queue an event; it leaves with the next batch to the worker that owns `name`.

        With `confirm=True` wait until a durable queue stored it and return its `PubAck`
        (`msg_id` makes it idempotent within the queue's dedupe window).  To pipeline
        confirms, keep a window of `publish_future()` results instead."""
        if confirm:
            f = self.publish_future(name, data, headers, msg_id)
            try:
                return f.result(timeout)
            except concurrent.futures.TimeoutError:
                self._q_handlers.pop(f.reply, None)
                raise Timeout(f"publish {name!r}: no queue confirmed within {timeout:g}s") from None
        core = self._core
        k = core.owner_cache.get(name)
        if (k is None or type(data) is not bytes or headers is not None or reply is not None
                or len(data) > core.max_payload or self._closed):
            self._check_open()
            with self._lock:
                k = core.add_event(name, data, headers, reply)
                if k < 0:
                    self._batch_full(-1 - k)
        else:   # the common case, inlined: a known name, plain bytes, no headers
            with self._lock:
                buf = core.out[k]
                buf += (name, data, None)
                n = core.out_bytes[k] = core.out_bytes[k] + len(data)
                if n >= BATCH_BYTES or len(buf) >= BATCH_LEN:
                    self._batch_full(k)
        if self._sleeping:
            os.eventfd_write(self._efd, 1)

    def _batch_full(self, k: int) -> None:
        """Called with the lock held: move worker k's full batch to its queue; apply back-pressure."""
        q = self._outq[k]
        q.append(self._core.take_batch(k))
        if len(q) > MAX_QUEUED_FRAMES and threading.get_ident() != self._io_ident:
            self._wake_locked()
            while len(q) > MAX_QUEUED_FRAMES // 2 and not self._closed:
                self._drained.wait(0.5)

    def _wake_locked(self):
        if self._sleeping:
            os.eventfd_write(self._efd, 1)

    def _call(self, k: int, frame_for, timeout: float, what: str):
        if threading.get_ident() == self._io_ident:
            raise TscaleError(f"{what} cannot wait inside a callback; call it from another thread")
        req = self._core.next_req()
        w = _Waiter(k)
        self._waiters[req] = w
        self._enqueue(k, frame_for(req))
        try:
            return w.wait(timeout, what)
        finally:
            self._waiters.pop(req, None)

    def flush(self, timeout: float = 5.0) -> None:
        """Return once every worker has processed everything this client sent before."""
        self._check_open()
        for k in range(len(self._socks)):
            self._call(k, lambda req: protocol.pack([protocol.PING, req]), timeout, "flush")

    def subscribe(self, pattern: str, queue: str | None = None, cb=None, *,
                  pending_limit: int = DEFAULT_PENDING_LIMIT, timeout: float = 5.0,
                  confirm: str = "node", wait: bool = True) -> Subscription:
        """Subscribe; returns once the node has the interest in place (no slow-joiner race).

        `wait=False` returns at once, as NATS clients do: the interest is in place once a
        later `flush()` returns, and an error the node reports for it arrives as
        `last_error` (and `error_cb`), not as an exception.  For setting up many
        subscriptions: one round trip in all instead of one each."""
        self._check_open()
        if confirm == "cluster":
            timeout = max(timeout, 10.0)
        state = self._core.new_sub(pattern, queue, confirm, wait)
        sub = Subscription(self, state, cb, pending_limit)
        self._subs[state.sid] = sub
        if not wait:
            if self._core.subs_batching:
                self._enqueue_sub(state)
            else:
                for k in state.targets:
                    self._enqueue(k, self._core.sub_frame(state, None))
            return sub
        try:
            for k in state.targets:
                self._call(k, lambda req: self._core.sub_frame(state, req), timeout, f"subscribe {pattern!r}")
        except BaseException:
            self._subs.pop(state.sid, None)
            self._core.subs.pop(state.sid, None)
            raise
        return sub

    def _unsubscribe(self, sub: Subscription, timeout: float):
        if self._subs.pop(sub.sid, None) is None or self._closed:
            return
        self._core.subs.pop(sub.sid, None)
        for k in sub._state.targets:
            self._call(k, lambda req: self._core.unsub_frame(sub.sid, req), timeout, "unsubscribe")

    def request(self, name: str, data=b"", timeout: float = 1.0, headers: dict | None = None) -> Msg:
        """Publish with a reply name and wait for the first reply.

        Runs entirely in the calling thread on that thread's own "request lane"
        (a DEALER per worker with its own inbox subscription), so a round trip
        costs no hand-off to the I/O thread.  A request is therefore not ordered
        with events the same thread queued with publish() before it."""
        self._check_open()
        if threading.get_ident() == self._io_ident:
            raise TscaleError("request() cannot wait inside a callback; call it from another thread")
        lane = getattr(self._local, "lane", None)
        if lane is None:
            lane = self._local.lane = _RequestLane(self, timeout=max(timeout, 10.0))   # a cluster barrier (<= ~5 s)
        try:
            msg = lane.request(name, data, timeout, headers)
        except (Timeout, ServerError):
            # A restarted worker (or one that dropped the lane as a slow consumer) forgets the
            # lane's inbox: start a fresh lane next time.
            self._local.lane = None
            lane.close()
            raise
        if self._core.is_no_responders(msg.headers):
            raise NoResponders(f"no responders for {name!r}")
        return msg

    # -- durable queues (docs/QUEUES.md) -------------------------------------------
    def _q_reply_name(self, owner: int | None = None) -> str:
        """A fresh reply name on the queue inbox; with `owner`, one that worker owns (see inbox_owned_by)."""
        if self._q_sub is None:
            # confirm="cluster": a queue's home on another node must know the inbox before it answers
            # where homes send batches of confirms
            self._q_batches = qc.confirm_batches(self._core.confirm_batch_names(), self._q_handlers)
            self._q_sub = self.subscribe(self._core.inbox_prefix + "*", cb=self._q_on_reply, confirm="cluster")
        return self._core.inbox_owned_by(owner)

    def _q_on_reply(self, msg: Msg):
        h = self._q_handlers.get(msg.name)
        if h is not None and h(msg):
            self._q_handlers.pop(msg.name, None)

    def publish_future(self, name: str, data=b"", headers: dict | None = None,
                       msg_id: str | None = None) -> concurrent.futures.Future:
        """Publish with confirm without waiting: the future's result is the PubAck (or the error).
        The future has `.reply`, the reply name; drop it from a window you give up on."""
        self._check_open()
        reply = self._q_reply_name()
        h = qc.confirm_headers(headers, msg_id, qc.confirm_batch_for(self._q_batches, self._core.owner(name)))
        f = ConfirmFuture()
        f.reply = reply
        self._q_handlers[reply] = qc.ConfirmWaiter(name, f)
        self.publish(name, data, headers=h, reply=reply)
        return f

    def _q_request(self, subject: str, payload: bytes, timeout: float) -> Msg:
        """One request on the queue inbox (known cluster-wide, unlike a request lane's inbox)."""
        f: concurrent.futures.Future = concurrent.futures.Future()
        reply = self._q_reply_name(self._core.owner(subject))
        self._q_handlers[reply] = lambda msg: f.done() or f.set_result(msg) or True
        self.publish(subject, payload, reply=reply)
        try:
            return f.result(timeout)
        except concurrent.futures.TimeoutError:
            raise Timeout(f"{subject}: no answer within {timeout:g}s") from None
        finally:
            self._q_handlers.pop(reply, None)

    def _q_call(self, subject: str, op: str, timeout: float, **fields):
        deadline = time.monotonic() + timeout
        while True:
            msg = self._q_request(subject, qc.request(op, **fields), max(0.1, deadline - time.monotonic()))
            try:
                return qc.decode_reply(msg.data, msg.headers, f"queue {op}")
            except ServerError as exc:
                if not qc.should_retry(exc, deadline - time.monotonic()):
                    raise
            time.sleep(qc.RETRY_PAUSE)

    def queue_add(self, name: str, subjects, *, timeout: float = 5.0, **options) -> dict:
        """Create a durable queue (options as in `tscale queue add`: retention, max_msgs, max_bytes,
        max_age, discard, ack_wait, max_deliver, backoff, dedupe_window, home, sync); returns its info."""
        return self._q_call(qc.subject_for(name), "add", timeout, config=qc.queue_config(name, subjects, **options))

    def queue_info(self, name: str, timeout: float = 5.0) -> dict:
        return self._q_call(qc.subject_for(name), "info", timeout)

    def queue_ls(self, timeout: float = 5.0) -> list:
        """Every queue of the node this client is connected to (asks each worker)."""
        out = []
        for subject in qapi.ls_subjects(self._core.workers):
            out += self._q_call(subject, "ls", timeout)
        return sorted(out, key=lambda d: d["config"]["name"])

    def queue_rm(self, name: str, timeout: float = 5.0) -> None:
        self._q_call(qc.subject_for(name), "rm", timeout)

    def queue_purge(self, name: str, timeout: float = 5.0) -> int:
        return self._q_call(qc.subject_for(name), "purge", timeout)

    def consumer(self, queue: str, group: str, start=None, batch: int = 100) -> "Consumer":
        """A member of consumer group `group` of `queue` (created at `start` if new:
        first, last, new or a sequence number)."""
        return Consumer(self, queue, group, qc.start_value(start), batch)

    def status(self, timeout: float = 5.0) -> dict:
        """The node's status document (see docs/STATUS.md)."""
        return self._call(0, lambda req: protocol.pack([protocol.STATUS, req]), timeout, "status")

    def drain(self, timeout: float = 5.0) -> None:
        """Stop receiving, deliver what already arrived, send what is queued, then close."""
        for sub in list(self._subs.values()):
            try:
                sub.unsubscribe(timeout)
            except TscaleError:
                pass
        self.close(timeout)

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        try:
            self.flush(timeout)
        except TscaleError:
            pass
        for k in range(len(self._socks)):
            self._outq[k].append(protocol.pack([protocol.BYE]))
        self._closed = True
        self._wake()
        self._thread.join(timeout)
        with self._lock:
            self._drained.notify_all()
        for lane in list(self._lanes):
            lane.close()
        for s in self._socks:
            self._close_socket(s, 200)
        self._ctx.term()
        os.close(self._efd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if not getattr(self, "_closed", True):
            try:
                self.close(0.5)
            except Exception:
                pass


class Consumer(qc.ConsumerCore):
    """Pull consumer: `fetch(batch, timeout)` or iterate; answer each QueueMsg with ack/nak/in_progress/term."""

    def _answer(self, op: str, seq: int, delay):
        c = self._client
        c._check_open()
        with c._lock:
            r = self._queue_answer(op, seq, delay)
            if r < 0:
                c._batch_full(-1 - r)
        if c._sleeping:
            os.eventfd_write(c._efd, 1)

    def fetch(self, batch: int | None = None, timeout: float = 1.0) -> list:
        """Up to `batch` deliveries, waiting up to `timeout` seconds for the first; [] if none came."""
        c = self._client
        c._check_open()
        coll, payload, expires = self._fetch_request(batch, timeout)
        got = threading.Event()

        def feed(msg: Msg) -> bool:
            if coll.feed(msg.data, msg.headers):
                got.set()
                return True
            return False

        reply = c._q_reply_name(c._core.owner(self.subject))   # the home answers: a name it owns
        c._q_handlers[reply] = feed
        c.publish(self.subject, payload, reply=reply)
        if not got.wait(expires + 2.0):
            c._q_handlers.pop(reply, None)
            raise Timeout(f"fetch from queue {self.queue!r}: no answer within {expires + 2.0:g}s")
        if coll.error is not None:
            raise coll.error
        return coll.msgs

    def __iter__(self):
        return self

    def __next__(self) -> QueueMsg:
        while not self._buf:
            self._buf.extend(self.fetch(self.batch, timeout=5.0))
        return self._buf.popleft()
