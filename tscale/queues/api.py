"""The queue API on the wire: subjects, request shapes, replies (sans-I/O).

Queue operations are ordinary events (docs/PROTOCOL.md section 19), so they
travel wherever events travel, with the same batching:

* `$Q.<queue>` carries every request about one queue; its owner worker
  (crc32 of the subject mod worker count) is the queue's home worker.  The
  payload is a msgpack map `{"op": ..., ...}`; the reply (when the event has a
  reply name) is a msgpack map `{"ok": value}` or `{"error": code, "message": text}`.
* `$Q.$LS.<n>` lists the queues of the worker that owns that name.
* A publish with the header `Tscale-Confirm` and a reply name is confirmed:
  every queue that stored it answers `{"queue", "seq", "duplicate"}` on the
  reply name after COMMIT.  `Tscale-Msg-Id` makes it idempotent within the
  queue's `dedupe_window`.
* `$DLQ.<queue>` receives events that reached `max_deliver`.

`decode_request` is the one validation every request passes before the
shell acts on it.
"""
from __future__ import annotations

import hashlib
from zlib import crc32

import msgpack

from ..subjects import name_error as name_error_event
from .model import E_BAD_REQUEST, MAX_BATCH, QueueError, group_error, name_error

API_PREFIX = "$Q."
LS_PREFIX = "$Q.$LS."
PATTERNS_PREFIX = "$QS."          # `$QS.<queue>.<pattern>`: interest that tells other nodes a queue's patterns
HOME_PREFIX = "$QH."              # `$QH.<node hash>.<queue>`: an add forwarded to the node named by --home
WORK_PREFIX = "$QW."              # `$QW.<queue>`: interest that tells other nodes a queue has retention work
MAX_SUBJECTS_SID = 100            # sids of the pattern announcements: qid * this + index (99: the $QW. one)
DLQ_PREFIX = "$DLQ."
H_CONFIRM = "Tscale-Confirm"
H_MSG_ID = "Tscale-Msg-Id"
MAX_MSG_ID = 256
MAX_EXPIRES = 300.0

OPS = frozenset({"add", "info", "rm", "purge", "fetch", "ack", "nak", "wip", "term", "ls"})
ACK_OPS = frozenset({"ack", "nak", "wip", "term"})

_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def api_subject(queue: str) -> str:
    return API_PREFIX + queue


def pattern_subject(queue: str, pattern: str) -> str:
    return PATTERNS_PREFIX + queue + "." + pattern


def node_token(node_name: str) -> str:
    """A subject token for a node name (which may hold dots or anything else): 16 hex digits of its sha1."""
    return hashlib.sha1(node_name.encode()).hexdigest()[:16]


def home_subject(node_name: str, queue: str) -> str:
    return HOME_PREFIX + node_token(node_name) + "." + queue


def work_subject(queue: str) -> str:
    return WORK_PREFIX + queue


def dlq_subject(queue: str) -> str:
    return DLQ_PREFIX + queue


def ls_subjects(workers: int) -> list[str]:
    """One `$Q.$LS.<n>` name owned by each worker (the clients ask every worker for its queues)."""
    out: list = [None] * workers
    n = 0
    while None in out and n < 100_000:
        s = LS_PREFIX + str(n)
        k = crc32(s.encode()) % workers
        if out[k] is None:
            out[k] = s
        n += 1
    return out


def _bad(message: str):
    raise QueueError(E_BAD_REQUEST, message)


def decode_request(name: str, payload) -> tuple[str, str | None, dict]:
    """(op, queue or None for ls, request map) from an event on `$Q.*`, or QueueError(bad_queue_request)."""
    if name.startswith(LS_PREFIX):
        queue = None
    else:
        queue = name[len(API_PREFIX):]
        e = name_error(queue)
        if e:
            _bad(e)
    try:
        req = msgpack.unpackb(payload, raw=False) if type(payload) is bytes else None
    except Exception:
        req = None
    if type(req) is not dict:
        _bad("a queue request is a msgpack map with an \"op\"")
    op = req.get("op")
    if type(op) is not str or op not in OPS:
        _bad(f"op must be one of {', '.join(sorted(OPS))}")
    if (op == "ls") != (queue is None):
        _bad("ls goes to $Q.$LS.<n>, every other op to $Q.<queue>")
    if op == "add":
        if type(req.get("config")) is not dict:
            _bad("add needs a config map")
    elif op == "fetch" or op in ACK_OPS:
        e = group_error(req.get("group"))
        if e:
            _bad(e)
        if op == "fetch":
            b = req.get("batch", 1)
            if type(b) is not int or not 1 <= b <= MAX_BATCH:
                _bad(f"batch must be 1..{MAX_BATCH}")
            x = req.get("expires", 0)
            if type(x) not in (int, float) or not 0 <= x <= MAX_EXPIRES:
                _bad(f"expires must be 0..{MAX_EXPIRES:g} seconds")
        else:
            seqs = req.get("seqs")
            if type(seqs) is not list or not 1 <= len(seqs) <= MAX_BATCH or \
                    any(type(s) is not int or s < 1 for s in seqs):
                _bad(f"seqs must be a list of 1..{MAX_BATCH} sequence numbers")
            d = req.get("delay")
            if d is not None and (type(d) not in (int, float) or not 0 <= d <= 86400 * 365):
                _bad("delay must be seconds >= 0")
    return op, queue, req


def confirm_wanted(meta) -> tuple[str | None, str | None, str | None]:
    """(reply name if the publisher asked for a confirm, batch name or None, msg_id) from an event's meta.

    `Tscale-Confirm: 1` asks for one confirm event on the reply name; `Tscale-Confirm: NAME`
    asks for the confirms of a pass to be gathered into one event on NAME, each identified by
    its event's reply name (which still receives the "no responders" status)."""
    h = meta[0]
    if not h or meta[1] is None:
        return None, None, None
    msg_id = h.get(H_MSG_ID)
    if msg_id is not None and (not msg_id or len(msg_id) > MAX_MSG_ID):
        msg_id = None
    c = h.get(H_CONFIRM)
    if c is None:
        return None, None, msg_id
    if c == "1" or type(c) is not str:
        return meta[1], None, msg_id
    ok = _batch_names.get(c)
    if ok is None:          # a client's batch name repeats on every one of its publishes: checked once
        if len(_batch_names) >= 4096:
            _batch_names.clear()
        ok = _batch_names[c] = name_error_event(c) is None
    return meta[1], (c if ok else None), msg_id


_batch_names: dict = {}     # Tscale-Confirm values seen -> whether they are a valid event name


def stored_meta(meta):
    """What is kept of a confirmed event's meta: its headers (msg id included) without the confirm request."""
    h = meta[0]
    if len(h) == 1 and H_CONFIRM in h:
        return None             # the common case: only the confirm request
    h = {k: v for k, v in h.items() if k != H_CONFIRM}
    return [h, None] if h else None


def confirm_batch(acks: list, errors: list) -> bytes:
    """acks: [reply, queue, seq, duplicate]; errors: [reply, code, message]."""
    return _pack({"acks": acks, "errors": errors})


def ok(value) -> bytes:
    return _pack({"ok": value})


def error(code: str, message: str) -> bytes:
    return _pack({"error": code, "message": message})


def pub_ack(queue: str, seq: int, duplicate: bool) -> bytes:
    return _pack({"queue": queue, "seq": seq, "duplicate": duplicate})


def fetch_chunk(msgs: list, done: bool) -> bytes:
    """msgs: [seq, name, payload, headers|nil, deliveries, ts] lists."""
    return _pack({"msgs": msgs, "done": done})
