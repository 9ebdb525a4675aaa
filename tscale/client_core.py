"""Client protocol state shared by the sync and asyncio clients (sans-I/O).

It knows the node's shard map (from WELCOME), numbers subscriptions and
requests, builds frames, and batches outgoing events per worker so that each
event goes straight to the worker that owns its name.  The clients around it
only move frames and wake threads or tasks.
"""
from __future__ import annotations

import itertools
import logging
import os
from zlib import crc32

import zmq

from . import keys, protocol
from .address import split_hostport
from .errors import ServerError, TscaleError
from .frames import decode_node
from .subjects import is_literal, name_error, pattern_error

_log = logging.getLogger("tscale.client")

BATCH_EVENTS = 1000          # events per PUB frame at most
BATCH_BYTES = 1 << 20        # payload bytes per PUB frame at most (one large event may exceed it)
BATCH_LEN = 1 + 3 * BATCH_EVENTS   # length of a full PUB batch list
# subscribe(wait=False) entries per SUBS frame: a node applies one in ~5-10 us, so a frame
# holds its worker for ~1-2 ms at most (the node accepts up to protocol.MAX_SUBS_BATCH).
SUBS_BATCH = 200
SUBS_LEN = 2 + 3 * SUBS_BATCH


class Msg:
    """A received event."""

    __slots__ = ("name", "data", "headers", "reply", "sid", "_client")

    def __init__(self, name: str, data: bytes, headers: dict | None, reply: str | None, sid: int, client=None):
        self.name = name
        self.data = data
        self.headers = headers
        self.reply = reply
        self.sid = sid
        self._client = client

    @property
    def subject(self) -> str:   # the word NATS users reach for
        return self.name

    def respond(self, data: bytes, headers: dict | None = None):
        """Publish `data` to this event's reply name (sync client; async: `await client.publish`)."""
        if not self.reply:
            raise TscaleError("this event has no reply name")
        return self._client.publish(self.reply, data, headers=headers)

    def __repr__(self) -> str:
        return f"Msg(name={self.name!r}, data={self.data[:32]!r}, headers={self.headers!r}, reply={self.reply!r})"


def parse_address(addr: str) -> tuple[str, int]:
    """The client side of `address.split_hostport`: a missing host means this host."""
    return split_hostport(addr, "127.0.0.1")


class CoreView:
    """Read-only facts both clients expose from their `_core`."""

    _core: "ClientCore"

    @property
    def info(self) -> dict:
        """The node's WELCOME: node_id, node_name, server_version, max_payload, ports, shard."""
        return dict(self._core.info)

    @property
    def max_payload(self) -> int:
        return self._core.max_payload

    @property
    def last_error(self) -> ServerError | None:
        """The last error frame that answered no request (a bad publish, for instance)."""
        return self._core.last_error

    @property
    def malformed(self) -> dict:
        """What arrived from the node and did not decode: {"frames": n, "events": n}, dropped."""
        return {"frames": self._core.bad_frames, "events": self._core.bad_events}


class SubState:
    __slots__ = ("sid", "pattern", "queue", "targets", "confirm")

    def __init__(self, sid: int, pattern: str, queue: str | None, targets: tuple, confirm: str | None):
        self.sid = sid
        self.pattern = pattern
        self.queue = queue
        self.targets = targets
        self.confirm = confirm


# Monitor events a client watches on each socket: (re)connections and the security handshake.
MONITOR_EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
                  | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def handshake_error(event: int, value: int, server: str, curve: bool) -> str | None:
    """A readable reason for a failed ZeroMQ security handshake, or None for other events."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if value == 300:    # "try again later" (the node is rate-limiting password checks): libzmq retries
            return None
        return (f"the node at {server} refused our credentials (ZAP status {value}): wrong token, "
                "user/password or client key")
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return (f"security mismatch with the node at {server}: it runs another mechanism "
                + ("(does it run --curve?)" if curve else
                   "(a CURVE node needs server_key=, a --token or users node needs credentials)"))
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return (f"the security handshake with {server} failed"
                + (": wrong server key?" if curve else
                   ": the node runs CURVE (give its public key as server_key / --server-key, see `tscale keys`)"))
    return None


class Credentials:
    """What a client presents at the ZeroMQ handshake (docs/SECURITY.md).

    * `server_key` (the node's CURVE public key) turns on CURVE; the client key is
      `client_key` (a Z85 secret key), else the pair derived from `token`, else a
      fresh pair (a node that asks nothing of its clients, only encrypts).
    * Without `server_key`: PLAIN with `user`/`password`, or with the token
      (user name "token"), in clear text; else nothing (NULL)."""

    def __init__(self, token: str | None = None, server_key: str | None = None, client_key: str | None = None,
                 user: str | None = None, password: str | None = None):
        self.curve = bool(server_key)
        self.opts: list[tuple[int, bytes]] = []
        if server_key:
            if not keys.valid_key(server_key):
                raise TscaleError("server_key must be a 40-character Z85 CURVE public key (`tscale keys`)")
            if client_key:
                if not keys.valid_key(client_key):
                    raise TscaleError("client_key must be a 40-character Z85 CURVE secret key")
                pub, sec = keys.pair_from_secret(client_key)
            elif token:
                pub, sec = keys.token_client_pair(token)
            else:
                pub, sec = keys.new_client_pair()
            self.opts = [(zmq.CURVE_SERVERKEY, server_key.encode()), (zmq.CURVE_PUBLICKEY, pub.encode()),
                         (zmq.CURVE_SECRETKEY, sec.encode())]
        elif user is not None or token:
            name, pw = (user, password or "") if user is not None else ("token", token)
            self.opts = [(zmq.PLAIN_USERNAME, name.encode()), (zmq.PLAIN_PASSWORD, pw.encode())]

    def apply(self, sock) -> None:
        for opt, val in self.opts:
            sock.setsockopt(opt, val)


class ClientCore:
    def __init__(self, name: str = "", lang: str = "python", creds: Credentials | None = None):
        self.name = name
        self.creds = creds or Credentials()
        self.lang = lang
        self.workers = 1
        self.ports: list[int] = []
        self.max_payload = 1 << 20
        self.last_error: ServerError | None = None
        self.info: dict = {}
        self.subs: dict[int, SubState] = {}
        self._sids = itertools.count(1)
        self._reqs = itertools.count(1)
        self.inbox_prefix = "_INBOX." + os.urandom(8).hex() + "."
        self.owner_cache: dict[str, int] = {}
        self.out: list[list] = [[protocol.PUB]]
        self.out_bytes: list[int] = [0]
        self.bad_frames = 0      # frames from the node that failed frames.decode_node, dropped
        self.bad_events = 0      # malformed events inside otherwise good MSG frames, dropped
        self._warned_bad = False
        self.subs_batching = False   # the node takes SUBS frames (WELCOME "features")
        self._one, self._every = [(0,)], (0,)   # shared SubState.targets (set again by welcome)

    # -- receiving ----------------------------------------------------------
    def decode(self, frame: bytes, k: int):
        """Decode a frame from worker k (frames.decode_node), or None if it is malformed.

        A bad frame or event is counted (`bad_frames`, `bad_events`) and logged once per
        client; delivery goes on with the next frame, and with the good events of a MSG."""
        try:
            cmd = decode_node(frame)
        except protocol.ProtocolError as exc:
            self.bad_frames += 1
            self._warn_bad(k, exc.message)
            return None
        if cmd[0] == protocol.MSG and cmd[2]:
            self.bad_events += cmd[2]
            self._warn_bad(k, f"{cmd[2]} malformed events in a MSG frame")
        return cmd

    def _warn_bad(self, k: int, what: str):
        if not self._warned_bad:
            self._warned_bad = True
            _log.warning("dropped input from worker %d that is not protocol v1 (%s); further ones are only "
                         "counted (client.malformed)", k, what)

    # -- handshake ----------------------------------------------------------
    def hello(self, direct: bool = True) -> bytes:
        from . import __version__
        return protocol.pack([protocol.HELLO, protocol.VERSION,
                              {"name": self.name, "lang": self.lang,
                               "version": __version__, "direct": direct}])

    def welcome(self, cmd: list) -> None:
        info = cmd[2]
        self.info = info
        self.max_payload = info["max_payload"]
        ports = info["ports"]
        if self.ports and len(ports) != len(self.ports):
            raise TscaleError("the node restarted with a different worker count; reconnect the client")
        self.ports = ports
        features = info.get("features")
        self.subs_batching = type(features) is list and protocol.FEATURE_SUBS in features
        self.workers = info["shard"]["count"]
        self._one = [(k,) for k in range(self.workers)]   # SubState.targets of a literal name
        self._every = tuple(range(self.workers))             # of a wildcard pattern
        if len(self.out) != self.workers:
            self.out = [[protocol.PUB] for _ in range(self.workers)]
            self.out_bytes = [0] * self.workers
            self.owner_cache.clear()

    # -- events -------------------------------------------------------------
    def owner(self, name: str) -> int:
        k = self.owner_cache.get(name)
        if k is None:
            e = name_error(name)
            if e is not None:
                raise TscaleError(e)
            k = crc32(name.encode()) % self.workers
            if len(self.owner_cache) > 100_000:
                self.owner_cache.clear()
            self.owner_cache[name] = k
        return k

    def add_event(self, name: str, data, headers: dict | None, reply: str | None) -> int:
        """Queue one event in its owner's batch; returns the owner, or -1-owner if the batch is full."""
        if type(data) is not bytes:
            if isinstance(data, str):
                data = data.encode()
            else:
                data = bytes(data)
        if len(data) > self.max_payload:
            raise TscaleError(f"payload of {len(data)} bytes exceeds the node's max_payload {self.max_payload}")
        k = self.owner(name)
        buf = self.out[k]
        buf += (name, data, None if headers is None and reply is None else [headers, reply])
        n = self.out_bytes[k] + len(data)
        self.out_bytes[k] = n
        if n >= BATCH_BYTES or len(buf) >= BATCH_LEN:
            return -1 - k
        return k

    def take_batch(self, k: int) -> bytes | None:
        buf = self.out[k]
        if len(buf) == 1:
            return None
        frame = protocol.pack(buf)
        del buf[1:]
        self.out_bytes[k] = 0
        return frame

    # -- subscriptions ------------------------------------------------------
    def new_sub(self, pattern: str, queue: str | None, confirm: str | None = None,
                wait: bool = True) -> SubState:
        e = pattern_error(pattern)
        if e is not None:
            raise TscaleError(e)
        if confirm not in (None, "node", "cluster"):
            raise TscaleError("confirm must be 'node' (default) or 'cluster'")
        if confirm == "cluster" and not wait:
            raise TscaleError("confirm='cluster' needs wait=True: the cluster confirmation is the wait")
        sid = next(self._sids)
        # Shared tuples, not a list per subscription (issue 10: 100,000 of them).
        targets = self._one[crc32(pattern.encode()) % self.workers] if is_literal(pattern) else self._every
        s = SubState(sid, pattern, queue, targets, None if confirm == "node" else confirm)
        self.subs[sid] = s
        return s

    def sub_frame(self, s: SubState, req: int | None) -> bytes:
        if s.confirm and req is not None:
            return protocol.pack([protocol.SUB, s.sid, s.pattern, s.queue, req, {"confirm": s.confirm}])
        return protocol.pack([protocol.SUB, s.sid, s.pattern, s.queue, req])

    def new_subs_batch(self) -> list:
        """An open SUBS frame (a list; `sub_entry` fills it, `protocol.pack` closes it)."""
        return [protocol.SUBS, None]

    @staticmethod
    def sub_entry(batch: list, s: SubState) -> bool:
        """Add subscription `s` to an open SUBS batch; True once the batch is full."""
        batch += (s.sid, s.pattern, s.queue)
        return len(batch) >= SUBS_LEN

    def resync_frames(self, k: int, subs) -> list[bytes]:
        """What to send worker k when it may have forgotten us (a reconnect, or it disconnected us as
        a slow consumer): HELLO, then every subscription that belongs on it.  Plain SUB frames,
        not SUBS: the node behind the port may have been replaced by one without that feature."""
        return [self.hello()] + [self.sub_frame(s._state, None) for s in subs if k in s._state.targets]

    @staticmethod
    def forgot_us(e: ServerError) -> bool:
        """A worker's notice that it dropped this connection's subscriptions (slow consumer)."""
        return e.code == protocol.E_SLOW_CONSUMER

    def unsub_frame(self, sid: int, req: int | None) -> bytes:
        return protocol.pack([protocol.UNSUB, sid, req])

    def next_req(self) -> int:
        return next(self._reqs)

    def inbox(self) -> str:
        return self.inbox_prefix + str(next(self._reqs))

    def inbox_owned_by(self, k: int | None) -> str:
        """A fresh inbox name that worker k owns (k None: any, `inbox`).  A reply is routed by the owner of its name: a reply
        name owned by the worker that answers (a queue's home) reaches this client from that worker,
        without a hop over the in-host bus to another worker first."""
        if k is None:
            return self.inbox()
        for _ in range(64 * self.workers):
            name = self.inbox_prefix + str(next(self._reqs))
            if crc32(name.encode()) % self.workers == k:
                return name
        return name

    def confirm_batch_names(self) -> list[str]:
        """One name per worker, `<inbox prefix>c<n>`, owned by that worker: publishes with confirm name
        the one of the worker they are sent to (their name's owner), where a queue homed on that
        worker gathers their confirms, so a pass's batch of confirms is delivered by the worker that
        made it."""
        out: list = [None] * self.workers
        n = 0
        while None in out and n < 100_000:
            name = self.inbox_prefix + "c" + str(n)
            k = crc32(name.encode()) % self.workers
            if out[k] is None:
                out[k] = name
            n += 1
        return out

    def control(self, cmd: list, waiters: dict):
        """Handle a frame other than MSG, the same way for both clients.

        Pops the waiter the frame answers from `waiters` and returns one of
        ("reply", waiter, value), ("error", waiter, ServerError) with waiter None
        for an error nobody waits for, ("pong", None, frame to send back) or
        ("ignore", None, None).
        `cmd` comes from `decode` (frames.decode_node): fields have their documented types.
        """
        code = cmd[0]
        if code in (protocol.OK, protocol.PONG, protocol.STATUS_REPLY):
            value = cmd[2] if code == protocol.STATUS_REPLY else None
            return "reply", self._waiter(waiters, cmd[1]), value
        if code == protocol.ERR:
            return "error", self._waiter(waiters, cmd[3]), self.error_of(cmd)
        if code == protocol.PING:
            return "pong", None, protocol.pack([protocol.PONG, cmd[1]])
        return "ignore", None, None

    @staticmethod
    def _waiter(waiters: dict, req):
        # our reqs are ints; whatever else a node echoes answers nobody (and may not be hashable)
        return waiters.pop(req, None) if type(req) is int else None

    def async_error(self, e: ServerError) -> None:
        """An error frame that answers no request: remembered and logged."""
        self.last_error = e
        _log.warning("node reported %s", e)

    @staticmethod
    def error_of(cmd: tuple) -> ServerError:
        """ServerError of a decoded ERR (ERR, code, message, req, fatal)."""
        return ServerError(cmd[1], cmd[2], cmd[4])

    @staticmethod
    def is_no_responders(headers) -> bool:
        return bool(headers) and headers.get(protocol.STATUS_HEADER) == protocol.NO_RESPONDERS_STATUS
