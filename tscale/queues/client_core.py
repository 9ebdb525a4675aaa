"""What the sync and asyncio clients share about queues (sans-I/O): requests, replies, messages."""
from __future__ import annotations

import collections
from typing import NamedTuple

import msgpack

from .. import protocol
from ..errors import ServerError, TscaleError
from . import api
from .model import E_NO_QUEUE, E_UNAVAILABLE, STARTING, name_error

_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


class PubAck(NamedTuple):
    """A confirmed publish: the queue that stored it, its sequence there, and whether a msg_id
    made it a duplicate of an earlier publish (then `seq` is the first one's)."""
    queue: str
    seq: int
    duplicate: bool


def _array_header(n: int) -> bytes:
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")


def _is_no_responders(headers) -> bool:
    return bool(headers) and headers.get(protocol.STATUS_HEADER) == protocol.NO_RESPONDERS_STATUS


def decode_reply(data: bytes, headers=None, what: str = "queue request"):
    """The value of an `{"ok": ...}` reply; ServerError for an error reply or no responders."""
    if _is_no_responders(headers):
        raise ServerError(E_UNAVAILABLE, f"{what}: nothing answers (the queue's home is unreachable)")
    try:
        d = msgpack.unpackb(data, raw=False)
    except Exception:
        raise TscaleError(f"{what}: undecodable reply") from None
    if type(d) is not dict:
        raise TscaleError(f"{what}: unexpected reply {d!r}")
    if "error" in d:
        raise ServerError(str(d["error"]), str(d.get("message", "")))
    return d.get("ok", d)


def decode_pub_ack(name: str, data: bytes, headers) -> PubAck:
    if _is_no_responders(headers):
        raise ServerError(E_NO_QUEUE, f"no queue stores {name!r} (nothing is subscribed to it)")
    d = decode_reply(data, None, f"publish {name!r}")
    try:
        return PubAck(str(d["queue"]), int(d["seq"]), bool(d["duplicate"]))
    except (KeyError, TypeError, ValueError):
        raise TscaleError(f"publish {name!r}: unexpected confirm {d!r}") from None


ANSWER_MERGE_MAX = 1000   # sequences per merged answer request (the worker accepts up to MAX_BATCH)
RETRY_PAUSE = 0.05   # a starting worker opens its queues once its in-host bus is synced


def should_retry(exc: ServerError, time_left: float) -> bool:
    """True if the queue's worker said it is still starting and there is time left to ask again."""
    return exc.code == E_UNAVAILABLE and exc.message == STARTING and time_left > RETRY_PAUSE


def confirm_headers(headers: dict | None, msg_id: str | None, batch: str = "1") -> dict:
    h = dict(headers) if headers else {}
    h[api.H_CONFIRM] = batch
    if msg_id is not None:
        if type(msg_id) is not str or not 1 <= len(msg_id) <= api.MAX_MSG_ID:
            raise TscaleError(f"msg_id must be a string of 1..{api.MAX_MSG_ID} characters")
        h[api.H_MSG_ID] = msg_id
    return h


class ConfirmWaiter:
    """The pending confirm of one publish, keyed by its reply name in the client's handler map."""

    __slots__ = ("name", "future")

    def __init__(self, name: str, future):
        self.name = name
        self.future = future

    def __call__(self, msg) -> bool:
        """A reply on the event's own reply name: "no responders", or a lone confirm."""
        try:
            self.ok(decode_pub_ack(self.name, msg.data, msg.headers))
        except TscaleError as exc:
            self.fail(exc)
        return True

    def ok(self, ack: PubAck) -> None:
        if not self.future.done():
            self.future.set_result(ack)

    def fail(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


def confirm_batches(names: list[str], handlers: dict) -> list[str]:
    """Register the client's confirm batch names (one per worker: ClientCore.confirm_batch_names)
    in `handlers`, each dispatching the confirms it carries; returns `names`."""
    for b in names:
        handlers[b] = lambda msg: dispatch_confirms(msg.data, handlers)
    return names


def confirm_batch_for(batches: list[str], owner: int) -> str:
    """The confirm batch name a publish sent to worker `owner` names (the one that worker owns)."""
    return batches[owner % len(batches)]


def dispatch_confirms(data: bytes, handlers: dict) -> bool:
    """A batch of confirms (`{"acks": [[reply, queue, seq, dup]], "errors": [[reply, code, message]]}`):
    settle each waiting publish.  Returns False (the batch name stays registered)."""
    try:
        d = msgpack.unpackb(data, raw=False)
        acks, errors = d.get("acks", ()), d.get("errors", ())
    except Exception:
        return False
    pop = handlers.pop
    for reply, queue, seq, dup in acks:
        w = pop(reply, None)
        if w is not None:
            w.ok(PubAck(queue, seq, dup))
    for reply, code, message in errors:
        w = pop(reply, None)
        if w is not None:
            w.fail(ServerError(code, message))
    return False


def queue_config(name: str, subjects, **options) -> dict:
    """The add request's config map; `subjects` a list or comma-separated string. None options are left out."""
    if isinstance(subjects, str):
        subjects = [s.strip() for s in subjects.split(",") if s.strip()]
    d = {"name": name, "subjects": list(subjects)}
    d.update({k: v for k, v in options.items() if v is not None})
    return d


def subject_for(queue: str) -> str:
    """The request subject of a queue, after checking its name here (a clear error, no round trip)."""
    e = name_error(queue)
    if e:
        raise TscaleError(f"{queue!r}: {e}")
    return api.api_subject(queue)


def request(op: str, **fields) -> bytes:
    fields["op"] = op
    return _pack({k: v for k, v in fields.items() if v is not None})


def start_value(start):
    """first|last|new|SEQ (int or digits) -> the wire form of a new group's start."""
    if start is None or start in ("first", "last", "new"):
        return start
    if isinstance(start, int) or (isinstance(start, str) and start.isdigit()):
        return int(start)
    if isinstance(start, (tuple, list)) and len(start) == 2 and start[0] == "time":
        return ["time", float(start[1])]
    raise TscaleError("start must be first, last, new, a sequence number or ('time', unix seconds)")


class QueueMsg:
    """One delivery of a queued event; answer it with ack(), nak(delay), in_progress() or term()."""

    __slots__ = ("queue", "group", "seq", "name", "data", "headers", "deliveries", "time", "_answer")

    def __init__(self, queue: str, group: str, item: list, answer):
        self.queue = queue
        self.group = group
        self.seq, self.name, self.data, self.headers, self.deliveries, self.time = item
        self._answer = answer

    @property
    def subject(self) -> str:
        return self.name

    def ack(self):
        return self._answer("ack", self.seq, None)

    def nak(self, delay: float | None = None):
        return self._answer("nak", self.seq, delay)

    def in_progress(self):
        return self._answer("wip", self.seq, None)

    def term(self):
        return self._answer("term", self.seq, None)

    def __repr__(self) -> str:
        return f"QueueMsg(queue={self.queue!r}, seq={self.seq}, name={self.name!r}, deliveries={self.deliveries})"


class ConsumerCore:
    """What the sync and asyncio consumers share: identity, answers, and the fetch request."""

    def __init__(self, client, queue: str, group: str, start, batch: int):
        self._client = client
        self.queue = queue
        self.group = group
        self.start = start
        self.batch = batch
        self.subject = subject_for(queue)
        self._buf: collections.deque = collections.deque()
        self._merge: list | None = None   # [worker, index in its batch, payload, (op, delay, prefix), body, n]

    def _answer(self, op: str, seq: int, delay):
        """ack/nak/wip/term of one delivery: a fire-and-forget event (a coroutine for the asyncio client)."""
        return self._client.publish(self.subject, request(op, group=self.group, seqs=[seq], delay=delay))

    def _queue_answer(self, op: str, seq: int, delay) -> int:
        """Queue one answer in the client's outgoing batch, called with the client's batch lock held.

        Answers of one kind (op and delay) given one after the other travel as one request with
        many `seqs`: while the previous answer's event is still the last one of its unsent batch,
        its payload is rewritten to include `seq` instead of adding an event.  The home worker
        then decodes one request per batch instead of one per delivery.  Nothing waits: an answer
        leaves with the batch it joined, as a single answer would.  Returns what
        ClientCore.add_event returns (the owner, or -1-owner if the batch is full)."""
        core = self._client._core
        m = self._merge
        if m is not None:
            k, i, data, key, body, n = m
            buf = core.out[k]
            if len(buf) == i + 3 and buf[i + 1] is data and key[:2] == (op, delay) and n < ANSWER_MERGE_MAX:
                body += _pack(seq)
                m[5] = n = n + 1
                data = key[2] + _array_header(n) + body
                core.out_bytes[k] += len(data) - len(buf[i + 1])
                buf[i + 1] = data
                m[2] = data
                return k
        head = {"op": op, "group": self.group}
        if delay is not None:
            head["delay"] = delay
        # a map with "seqs" last, so that more sequences are appended without packing the rest again
        prefix = bytes([0x80 | (len(head) + 1)]) + _pack(head)[1:] + _pack("seqs")
        body = bytearray(_pack(seq))
        data = prefix + _array_header(1) + body
        r = core.add_event(self.subject, data, None, None)
        k = r if r >= 0 else -1 - r
        buf = core.out[k]
        if len(buf) >= 4 and buf[-2] is data:
            self._merge = [k, len(buf) - 3, data, (op, delay, prefix), body, 1]
        else:
            self._merge = None
        return r

    def _fetch_request(self, batch: int | None, timeout: float) -> tuple["FetchCollector", bytes, float]:
        """(collector, request payload, seconds the home may wait) for one fetch."""
        expires = min(max(timeout, 0.0), api.MAX_EXPIRES)
        payload = request("fetch", group=self.group, batch=batch or self.batch, expires=expires, start=self.start)
        return FetchCollector(self.queue, self.group, self._answer), payload, expires


class FetchCollector:
    """Gathers the reply chunks of one fetch."""

    __slots__ = ("queue", "group", "answer", "msgs", "error", "done")

    def __init__(self, queue: str, group: str, answer):
        self.queue = queue
        self.group = group
        self.answer = answer
        self.msgs: list = []
        self.error: Exception | None = None
        self.done = False

    def feed(self, data: bytes, headers) -> bool:
        """One reply event; True once the fetch is complete."""
        try:
            if _is_no_responders(headers):
                raise ServerError(E_UNAVAILABLE, f"queue {self.queue!r}: nothing answers (home unreachable)")
            d = msgpack.unpackb(data, raw=False)
            if type(d) is not dict:
                raise TscaleError("unexpected fetch reply")
            if "error" in d:
                raise ServerError(str(d["error"]), str(d.get("message", "")))
            self.msgs.extend(QueueMsg(self.queue, self.group, m, self.answer) for m in d.get("msgs", ()))
            self.done = bool(d.get("done", True))
        except Exception as exc:   # a reply we cannot read ends the fetch with that error
            self.error = exc
            self.done = True
        return self.done
