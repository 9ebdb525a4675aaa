"""asyncio Python client, the twin of `tscale.Client`.

Same protocol core (`ClientCore`); here a reader task per worker socket and
one sender task replace the I/O thread.  `publish()` appends to the owner
worker's batch and wakes the sender, which packs whatever accumulated since
it last ran: batching without timers.
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import logging

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from . import protocol
from .client import DEFAULT_PENDING_LIMIT, MAX_QUEUED_FRAMES, default_server
from .client_core import (MONITOR_EVENTS, ClientCore, CoreView, Credentials, Msg, SubState, handshake_error,
                          parse_address)
from .errors import ConnectError, NoResponders, ServerError, Timeout, TscaleError
from .queues import api as qapi
from .queues import client_core as qc

log = logging.getLogger("tscale.aio")


class Subscription:
    """Iterate with `async for`, await `next_msg()`, or give a callback (plain or async)."""

    def __init__(self, client: "Client", state: SubState, cb, pending_limit: int):
        self._client = client
        self._state = state
        self._cb = cb
        self._q: asyncio.Queue = asyncio.Queue(maxsize=pending_limit)
        self._task = None
        self.dropped = 0
        self.received = 0
        if cb is not None and inspect.iscoroutinefunction(cb):
            self._task = asyncio.get_running_loop().create_task(self._run_async_cb())

    sid = property(lambda self: self._state.sid)
    pattern = property(lambda self: self._state.pattern)
    queue = property(lambda self: self._state.queue)

    def _push(self, msg: Msg):
        self.received += 1
        if self._cb is not None and self._task is None:
            try:
                self._cb(msg)
            except Exception:
                log.exception("subscription callback for %r raised", self.pattern)
            return
        try:
            self._q.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _run_async_cb(self):
        while True:
            msg = await self._q.get()
            try:
                await self._cb(msg)
            except Exception:
                log.exception("subscription callback for %r raised", self.pattern)

    async def next_msg(self, timeout: float | None = 1.0) -> Msg:
        if self._cb is not None:
            raise TscaleError("this subscription delivers to a callback")
        try:
            return await asyncio.wait_for(self._q.get(), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"no event on {self.pattern!r} within {timeout}s") from None

    def pending(self) -> int:
        return self._q.qsize()

    def __aiter__(self):
        return self

    async def __anext__(self) -> Msg:
        return await self.next_msg(timeout=None)

    async def unsubscribe(self, timeout: float = 5.0) -> None:
        await self._client._unsubscribe(self, timeout)

    def _stop(self):
        if self._task is not None:
            self._task.cancel()


class Client(CoreView):
    """Create with `await Client.connect(server)`."""

    def __init__(self, server: str | None, name: str, error_cb, creds: Credentials):
        self.server = server or default_server()
        self._core = ClientCore(name=name, creds=creds)
        self._monitor_of: dict = {}
        self._error_cb = error_cb
        self._ctx = zmq.asyncio.Context()
        self._host, self._port = parse_address(self.server)
        self._waiters: dict = {}
        self._waiter_worker: dict = {}    # req -> the worker it waits on
        self._subs: dict[int, Subscription] = {}
        self._reply_waiters: dict[str, asyncio.Future] = {}
        self._inbox_sub: Subscription | None = None
        self._q_handlers: dict = {}     # reply name -> handler(msg) -> True when done (confirms, fetches)
        self._closed = False
        self._tasks: list[asyncio.Task] = []
        self._monitors: list = []

    @classmethod
    async def connect(cls, server: str | None = None, name: str = "", token: str | None = None,
                      connect_timeout: float = 5.0, error_cb=None, *, server_key: str | None = None,
                      client_key: str | None = None, user: str | None = None,
                      password: str | None = None) -> "Client":
        """Connect; `server_key`, `client_key`, `user`, `password`, `token` as for tscale.Client."""
        c = cls(server, name, error_cb, Credentials(token, server_key, client_key, user, password))
        try:
            await c._handshake(connect_timeout)
        except BaseException:
            c._ctx.destroy(linger=0)
            raise
        return c

    # -- connection -------------------------------------------------------------
    def _socket(self, port: int):
        s = self._ctx.socket(zmq.DEALER)
        for opt, val in ((zmq.LINGER, 1000), (zmq.SNDHWM, 1000), (zmq.RCVHWM, 1000),
                         (zmq.RECONNECT_IVL, 50), (zmq.RECONNECT_IVL_MAX, 2000),
                         (zmq.HEARTBEAT_IVL, 2000), (zmq.HEARTBEAT_TIMEOUT, 6000)):
            s.setsockopt(opt, val)
        self._core.creds.apply(s)
        self._monitor_of[s] = s.get_monitor_socket(MONITOR_EVENTS)   # before connect: sees the handshake
        s.connect(f"tcp://{self._host}:{port}")
        return s

    async def _hello(self, s, timeout: float) -> list:
        await s.send(self._core.hello())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        mon = self._monitor_of[s]
        poller = zmq.asyncio.Poller()
        poller.register(s, zmq.POLLIN)
        poller.register(mon, zmq.POLLIN)
        while True:
            left = deadline - loop.time()
            ready = dict(await poller.poll(left * 1000)) if left > 0 else {}
            if not ready:
                raise ConnectError(f"no answer from tscale node at {self.server} within {timeout:g}s")
            if mon in ready:
                ev = parse_monitor_message(await mon.recv_multipart())
                why = handshake_error(ev["event"], ev["value"], self.server, self._core.creds.curve)
                if why is not None:
                    raise ConnectError(why)
            if s not in ready:
                continue
            frame = await s.recv()
            cmd = self._core.decode(frame, -1)
            if cmd is None:
                continue
            if cmd[0] == protocol.WELCOME:
                return cmd
            if cmd[0] == protocol.ERR:
                raise ConnectError(f"node refused the connection: {cmd[1]}: {cmd[2]}")

    async def _handshake(self, timeout: float):
        first = self._socket(self._port)
        self._socks = [first]
        cmd = await self._hello(first, timeout)
        self._core.welcome(cmd)
        me = cmd[2]["worker"]
        n = self._core.workers
        socks = [None] * n
        socks[me] = first
        for k in range(n):
            if socks[k] is None:
                socks[k] = self._socket(self._core.ports[k])
                self._socks = [s for s in socks if s is not None]
                await self._hello(socks[k], timeout)
        self._socks = socks
        self._outq = [collections.deque() for _ in range(n)]
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sender())]
        for k, s in enumerate(socks):
            self._tasks.append(loop.create_task(self._reader(k, s)))
            mon = self._monitor_of[s]
            self._monitors.append(mon)
            self._tasks.append(loop.create_task(self._monitor(k, mon)))

    # -- tasks --------------------------------------------------------------------
    async def _sender(self):
        core, outq, socks = self._core, self._outq, self._socks
        while True:
            await self._wake.wait()
            self._wake.clear()
            for k, s in enumerate(socks):
                b = core.take_batch(k)
                if b is not None:
                    outq[k].append(b)
                q = outq[k]
                while q:
                    await s.send(q.popleft())
            self._drained.set()

    async def _reader(self, k: int, s):
        while True:
            frame = await s.recv(copy=False)   # decoded from libzmq's buffer, not copied first
            cmd = self._core.decode(frame.buffer, k)    # every field checked; bad events already dropped
            if cmd is None:
                continue
            code = cmd[0]
            if code == protocol.MSG:
                cmd = cmd[1]
                get = self._subs.get
                for sid, name, data, meta in zip(cmd[1::4], cmd[2::4], cmd[3::4], cmd[4::4]):
                    sub = get(sid)
                    if sub is not None:
                        if meta is None:
                            sub._push(Msg(name, data, None, None, sid, self))
                        else:
                            sub._push(Msg(name, data, meta[0], meta[1], sid, self))
            else:
                kind, f, value = self._core.control(cmd, self._waiters)
                if kind == "reply" and f is not None and not f.done():
                    f.set_result(value)
                elif kind == "error":
                    if f is not None:
                        if not f.done():
                            f.set_exception(value)
                    else:
                        self._core.async_error(value)
                        if self._core.forgot_us(value):
                            self._resync(k, value)
                        if self._error_cb is not None:
                            try:
                                r = self._error_cb(value)
                                if inspect.isawaitable(r):
                                    await r
                            except Exception:
                                log.exception("error_cb raised")
                elif kind == "pong":
                    self._send(k, value)

    async def _monitor(self, k: int, mon):
        while True:
            ev = parse_monitor_message(await mon.recv_multipart())
            why = handshake_error(ev["event"], ev["value"], self.server, self._core.creds.curve)
            if why is not None:
                log.warning("reconnecting to worker %d: %s", k, why)
            elif ev["event"] == zmq.EVENT_DISCONNECTED:
                log.info("lost connection to worker %d of %s; reconnecting", k, self.server)
            elif ev["event"] == zmq.EVENT_CONNECTED:
                log.info("reconnected to worker %d of %s; resubscribing", k, self.server)
                frames = self._core.resync_frames(k, list(self._subs.values()))
                q = self._outq[k]
                q.appendleft(frames[0])
                q.extend(frames[1:])
                self._wake.set()

    def _resync(self, k: int, e) -> None:
        """Worker k disconnected us as a slow consumer (see the sync client's _resync)."""
        log.warning("worker %d of %s dropped us as a slow consumer (%s); resubscribing", k, self.server, e.message)
        for req, f in list(self._waiters.items()):
            if self._waiter_worker.get(req) == k:
                self._waiters.pop(req, None)
                if not f.done():
                    f.set_exception(e)
        self._outq[k].extend(self._core.resync_frames(k, list(self._subs.values())))
        self._wake.set()

    # -- API ------------------------------------------------------------------------
    def _check_open(self):
        if self._closed:
            raise TscaleError("client is closed")

    def _send(self, k: int, frame: bytes):
        b = self._core.take_batch(k)
        if b is not None:
            self._outq[k].append(b)
        self._outq[k].append(frame)
        self._wake.set()

    async def publish(self, name: str, data=b"", headers: dict | None = None, reply: str | None = None,
                      confirm: bool = False, msg_id: str | None = None, timeout: float = 5.0):
        """With `confirm=True` return the PubAck once a durable queue stored the event; to pipeline
        confirms, gather several `publish_future()` results."""
        if confirm:
            f = await self.publish_future(name, data, headers, msg_id)
            try:
                return await asyncio.wait_for(f, timeout)
            except asyncio.TimeoutError:
                self._q_handlers.pop(f.reply, None)
                raise Timeout(f"publish {name!r}: no queue confirmed within {timeout:g}s") from None
        self._check_open()
        await self._queued(self._core.add_event(name, data, headers, reply))

    async def _queued(self, r: int) -> None:
        """An event was added to a batch (`r` as ClientCore.add_event returns it): a full batch
        (r < 0, for worker -1-r) goes to the I/O task's queue, waiting while too many frames
        are queued there (back-pressure); then wake the I/O task."""
        if r < 0:
            k = -1 - r
            q = self._outq[k]
            q.append(self._core.take_batch(k))
            while len(q) > MAX_QUEUED_FRAMES:
                self._drained.clear()
                self._wake.set()
                await self._drained.wait()
        self._wake.set()

    async def _call(self, k: int, frame_for, timeout: float, what: str):
        req = self._core.next_req()
        f = asyncio.get_running_loop().create_future()
        self._waiters[req] = f
        self._waiter_worker[req] = k
        self._send(k, frame_for(req))
        try:
            return await asyncio.wait_for(f, timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"{what}: no answer within {timeout:g}s") from None
        finally:
            self._waiters.pop(req, None)
            self._waiter_worker.pop(req, None)

    async def flush(self, timeout: float = 5.0) -> None:
        self._check_open()
        await asyncio.gather(*(self._call(k, lambda req: protocol.pack([protocol.PING, req]), timeout, "flush")
                               for k in range(len(self._socks))))

    async def subscribe(self, pattern: str, queue: str | None = None, cb=None, *,
                        pending_limit: int = DEFAULT_PENDING_LIMIT, timeout: float = 5.0,
                  confirm: str = "node", wait: bool = True) -> Subscription:
        """Returns once the node has the interest in place (no slow-joiner race);
        `wait=False`: at once, in place after the next `flush()` (see the sync client)."""
        self._check_open()
        if confirm == "cluster":
            timeout = max(timeout, 10.0)
        state = self._core.new_sub(pattern, queue, confirm, wait)
        sub = Subscription(self, state, cb, pending_limit)
        self._subs[state.sid] = sub
        if not wait:
            for k in state.targets:
                self._send(k, self._core.sub_frame(state, None))
            return sub
        try:
            await asyncio.gather(*(self._call(k, lambda req: self._core.sub_frame(state, req), timeout,
                                              f"subscribe {pattern!r}") for k in state.targets))
        except BaseException:
            self._subs.pop(state.sid, None)
            self._core.subs.pop(state.sid, None)
            sub._stop()
            raise
        return sub

    async def _unsubscribe(self, sub: Subscription, timeout: float):
        if self._subs.pop(sub.sid, None) is None or self._closed:
            return
        self._core.subs.pop(sub.sid, None)
        sub._stop()
        await asyncio.gather(*(self._call(k, lambda req: self._core.unsub_frame(sub.sid, req), timeout,
                                          "unsubscribe") for k in sub._state.targets))

    async def request(self, name: str, data=b"", timeout: float = 1.0, headers: dict | None = None) -> Msg:
        self._check_open()
        if self._inbox_sub is None:
            # confirm="cluster": a responder on another node must know the inbox before it answers
            self._inbox_sub = await self.subscribe(self._core.inbox_prefix + "*", cb=self._on_reply,
                                                   confirm="cluster")
        reply = self._core.inbox()
        f = asyncio.get_running_loop().create_future()
        self._reply_waiters[reply] = f
        try:
            await self.publish(name, data, headers=headers, reply=reply)
            msg = await asyncio.wait_for(f, timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"request {name!r}: no reply within {timeout:g}s") from None
        finally:
            self._reply_waiters.pop(reply, None)
        if self._core.is_no_responders(msg.headers):
            raise NoResponders(f"no responders for {name!r}")
        return msg

    def _on_reply(self, msg: Msg):
        h = self._q_handlers.get(msg.name)
        if h is not None:
            if h(msg):
                self._q_handlers.pop(msg.name, None)
            return
        f = self._reply_waiters.pop(msg.name, None)
        if f is not None and not f.done():
            f.set_result(msg)

    # -- durable queues (docs/QUEUES.md) ------------------------------------------------
    async def _q_reply_name(self, owner: int | None = None) -> str:
        """A fresh reply name on the queue inbox; with `owner`, one that worker owns (see inbox_owned_by)."""
        if self._inbox_sub is None:
            # confirm="cluster": a queue's home on another node must know the inbox before it answers
            # where homes send batches of confirms
            self._q_batches = qc.confirm_batches(self._core.confirm_batch_names(), self._q_handlers)
            self._inbox_sub = await self.subscribe(self._core.inbox_prefix + "*", cb=self._on_reply,
                                                   confirm="cluster")
        return self._core.inbox_owned_by(owner)

    async def publish_future(self, name: str, data=b"", headers: dict | None = None,
                             msg_id: str | None = None) -> asyncio.Future:
        """Publish with confirm; the returned future resolves to the PubAck (`.reply` is its reply name)."""
        self._check_open()
        reply = await self._q_reply_name()
        h = qc.confirm_headers(headers, msg_id, qc.confirm_batch_for(self._q_batches, self._core.owner(name)))
        f = asyncio.get_running_loop().create_future()
        f.reply = reply
        self._q_handlers[reply] = qc.ConfirmWaiter(name, f)
        await self.publish(name, data, headers=h, reply=reply)
        return f

    async def _q_request(self, subject: str, payload: bytes, timeout: float) -> Msg:
        """One request on the queue inbox (subscribed cluster-wide)."""
        f = asyncio.get_running_loop().create_future()
        reply = await self._q_reply_name(self._core.owner(subject))
        self._q_handlers[reply] = lambda msg: f.done() or f.set_result(msg) or True
        try:
            await self.publish(subject, payload, reply=reply)
            return await asyncio.wait_for(f, timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"{subject}: no answer within {timeout:g}s") from None
        finally:
            self._q_handlers.pop(reply, None)

    async def _q_call(self, subject: str, op: str, timeout: float, **fields):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self._q_request(subject, qc.request(op, **fields), max(0.1, deadline - loop.time()))
            try:
                return qc.decode_reply(msg.data, msg.headers, f"queue {op}")
            except ServerError as exc:
                if not qc.should_retry(exc, deadline - asyncio.get_running_loop().time()):
                    raise
            await asyncio.sleep(qc.RETRY_PAUSE)

    async def queue_add(self, name: str, subjects, *, timeout: float = 5.0, **options) -> dict:
        return await self._q_call(qc.subject_for(name), "add", timeout,
                                  config=qc.queue_config(name, subjects, **options))

    async def queue_info(self, name: str, timeout: float = 5.0) -> dict:
        return await self._q_call(qc.subject_for(name), "info", timeout)

    async def queue_ls(self, timeout: float = 5.0) -> list:
        out = []
        for subject in qapi.ls_subjects(self._core.workers):
            out += await self._q_call(subject, "ls", timeout)
        return sorted(out, key=lambda d: d["config"]["name"])

    async def queue_rm(self, name: str, timeout: float = 5.0) -> None:
        await self._q_call(qc.subject_for(name), "rm", timeout)

    async def queue_purge(self, name: str, timeout: float = 5.0) -> int:
        return await self._q_call(qc.subject_for(name), "purge", timeout)

    def consumer(self, queue: str, group: str, start=None, batch: int = 100) -> "Consumer":
        return Consumer(self, queue, group, qc.start_value(start), batch)

    async def status(self, timeout: float = 5.0) -> dict:
        return await self._call(0, lambda req: protocol.pack([protocol.STATUS, req]), timeout, "status")

    async def drain(self, timeout: float = 5.0) -> None:
        for sub in list(self._subs.values()):
            try:
                await sub.unsubscribe(timeout)
            except TscaleError:
                pass
        await self.close(timeout)

    async def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        try:
            await self.flush(timeout)
        except TscaleError:
            pass
        for k in range(len(self._socks)):
            self._send(k, protocol.pack([protocol.BYE]))
        self._drained.clear()
        self._wake.set()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._closed = True
        for sub in self._subs.values():
            sub._stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for m in self._monitors:      # an open monitor socket makes ctx.term() wait forever
            m.close(0)
        for s in self._socks:
            s.disable_monitor()
            s.close(200)
        self._ctx.term()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


class Consumer(qc.ConsumerCore):
    """Pull consumer: `await fetch(batch, timeout)` or `async for`; `await msg.ack()` / nak / in_progress / term."""

    async def _answer(self, op: str, seq: int, delay):
        c = self._client
        c._check_open()
        await c._queued(self._queue_answer(op, seq, delay))

    async def fetch(self, batch: int | None = None, timeout: float = 1.0) -> list:
        c = self._client
        c._check_open()
        coll, payload, expires = self._fetch_request(batch, timeout)
        got = asyncio.Event()

        def feed(msg: Msg) -> bool:
            if coll.feed(msg.data, msg.headers):
                got.set()
                return True
            return False

        reply = await c._q_reply_name(c._core.owner(self.subject))   # the home answers: a name it owns
        c._q_handlers[reply] = feed
        await c.publish(self.subject, payload, reply=reply)
        try:
            await asyncio.wait_for(got.wait(), expires + 2.0)
        except asyncio.TimeoutError:
            c._q_handlers.pop(reply, None)
            raise Timeout(f"fetch from queue {self.queue!r}: no answer within {expires + 2.0:g}s") from None
        if coll.error is not None:
            raise coll.error
        return coll.msgs

    def __aiter__(self):
        return self

    async def __anext__(self):
        while not self._buf:
            self._buf.extend(await self.fetch(self.batch, timeout=5.0))
        return self._buf.popleft()
