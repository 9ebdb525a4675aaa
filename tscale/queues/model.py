"""A durable queue and its consumer groups as a plain state machine (sans-I/O).

Meaning as in NATS JetStream, API as plain as Redis Streams:

* `Queue.append` gives each stored event the next sequence number (or, for a
  `msg_id` seen within `dedupe_window`, the sequence it got the first time).
  Retention `limits` keeps up to `max_msgs` / `max_bytes` / `max_age`
  (`discard old` drops the oldest, `discard new` refuses the newcomer);
  retention `work` deletes an event once its (single) group acked it.
* A `Group` reads the queue: `fetch` hands out expired deliveries first
  (redeliveries, oldest first), then new events in sequence order.  Every
  delivery must be `ack`ed, `nak`ed (redeliver after a delay), `in_progress`
  (deadline extended) or `term`inated.  A delivery not acked within its wait
  (`ack_wait`, or `backoff[n-1]` for the n-th delivery) is redelivered; after
  `max_deliver` deliveries the event is dead-lettered instead (the shell
  publishes it to `$DLQ.<queue>`).

Time is always an argument (`now`, seconds since the epoch), so every rule is
tested without clocks.  Nothing here does I/O: the state changes that must be
persisted are appended to `Queue.changes` and to the dirty-group set, which the
shell (workers/queues.py) writes in the same transaction as the events.
"""
from __future__ import annotations

import collections
import heapq
from dataclasses import asdict, dataclass, field

from ..subjects import pattern_error

# error codes of queue operations (also on the wire, docs/PROTOCOL.md section 19)
E_NOT_FOUND = "queue_not_found"
E_EXISTS = "queue_exists"
E_BAD_CONFIG = "bad_queue_config"
E_BAD_REQUEST = "bad_queue_request"
E_FULL = "queue_full"
E_STORAGE_FULL = "storage_full"
E_UNAVAILABLE = "queue_unavailable"
E_NO_QUEUE = "no_queue"
STARTING = "the queue's worker is starting; retry"

MAX_NAME = 64
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
MAX_SUBJECTS = 64
MAX_BATCH = 10_000
SYNC_INTERVAL = 1.0   # seconds: how stale the disk may be for a queue with sync "interval"


class QueueError(Exception):
    """A refused queue operation: `code` is one of the E_* codes above."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def name_error(name) -> str | None:
    if type(name) is not str or not 1 <= len(name) <= MAX_NAME or not _NAME_CHARS.issuperset(name):
        return f"queue name must be 1..{MAX_NAME} characters of A-Z a-z 0-9 _ -"
    return None


def group_error(group) -> str | None:
    return None if name_error(group) is None else f"group name must be 1..{MAX_NAME} characters of A-Z a-z 0-9 _ -"


def patterns_overlap(a: str, b: str) -> bool:
    """True if some event name matches both patterns (`*` one token, `>` the rest)."""
    ta, tb = a.split("."), b.split(".")
    for i in range(max(len(ta), len(tb))):
        x = ta[i] if i < len(ta) else None
        y = tb[i] if i < len(tb) else None
        if x == ">" or y == ">":
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != "*" and y != "*" and x != y:
            return False
    return True


@dataclass
class QueueConfig:
    name: str
    subjects: list
    retention: str = "limits"     # limits | work
    max_msgs: int = 0             # 0 = no limit
    max_bytes: int = 0            # 0 = no limit (payload bytes)
    max_age: float = 0.0          # seconds, 0 = no limit
    discard: str = "old"          # old | new
    ack_wait: float = 30.0        # seconds
    max_deliver: int = 0          # 0 = no limit
    backoff: list = field(default_factory=list)   # seconds per redelivery, replaces ack_wait
    dedupe_window: float = 120.0  # seconds
    home: str = ""                # node name (informational: the node that holds it)
    sync: str = "always"          # always: fsync before confirms | interval: fsync at most every SYNC_INTERVAL

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def parse(cls, d) -> "QueueConfig":
        """Build from a wire/disk map, strictly: unknown keys and bad values are refused."""
        if type(d) is not dict:
            raise QueueError(E_BAD_CONFIG, "queue configuration must be a map")
        known = cls.__dataclass_fields__
        extra = [k for k in d if k not in known]
        if extra:
            raise QueueError(E_BAD_CONFIG, f"unknown queue option(s): {', '.join(map(str, extra))}")
        e = name_error(d.get("name"))
        if e:
            raise QueueError(E_BAD_CONFIG, e)
        subjects = d.get("subjects")
        if type(subjects) is not list or not 1 <= len(subjects) <= MAX_SUBJECTS:
            raise QueueError(E_BAD_CONFIG, f"subjects must be a list of 1..{MAX_SUBJECTS} patterns")
        for p in subjects:
            e = pattern_error(p)
            if e:
                raise QueueError(E_BAD_CONFIG, e)
            if p.startswith(("$Q.", "$QS.", "$QW.", "$QH.")) or p in ("$Q", "$QS", "$QW", "$QH") or p.startswith("_INBOX.") or p.startswith(">") or p.startswith("*"):
                raise QueueError(E_BAD_CONFIG, f"pattern {p!r} would capture internal or every name; "
                                               "give a first token")
        c = cls(name=d["name"], subjects=list(subjects))
        for k, kind in (("max_msgs", int), ("max_bytes", int), ("max_deliver", int)):
            if k in d:
                v = d[k]
                if type(v) is not int or v < 0:
                    raise QueueError(E_BAD_CONFIG, f"{k} must be a whole number >= 0")
                setattr(c, k, v)
        for k in ("max_age", "ack_wait", "dedupe_window"):
            if k in d:
                v = d[k]
                if type(v) not in (int, float) or not 0 <= v <= 10 * 365 * 86400:
                    raise QueueError(E_BAD_CONFIG, f"{k} must be a number of seconds >= 0")
                setattr(c, k, float(v))
        if c.ack_wait <= 0:
            raise QueueError(E_BAD_CONFIG, "ack_wait must be more than 0 seconds")
        if "backoff" in d:
            b = d["backoff"]
            if type(b) is not list or len(b) > 100 or any(type(x) not in (int, float) or x <= 0 for x in b):
                raise QueueError(E_BAD_CONFIG, "backoff must be a list of up to 100 positive seconds")
            c.backoff = [float(x) for x in b]
        for k, allowed in (("retention", ("limits", "work")), ("discard", ("old", "new")),
                           ("sync", ("always", "interval"))):
            if k in d:
                if d[k] not in allowed:
                    raise QueueError(E_BAD_CONFIG, f"{k} must be {' or '.join(allowed)}")
                setattr(c, k, d[k])
        if "home" in d:
            if type(d["home"]) is not str or len(d["home"]) > 256:
                raise QueueError(E_BAD_CONFIG, "home must be a node name")
            c.home = d["home"]
        return c


class Group:
    """One consumer group's position: a cursor for new events plus its unacked deliveries."""

    __slots__ = ("name", "cursor", "floor", "pending", "timers", "delivered", "acked", "redelivered", "dead",
                 "terminated")

    def __init__(self, name: str, cursor: int):
        self.name = name
        self.cursor = cursor          # the next never-delivered sequence
        self.floor = cursor           # no sequence below this is pending (a moving pointer, see ack_floor)
        self.pending: dict[int, list] = {}   # seq -> [deadline, deliveries]
        self.timers: list = []        # heap of (deadline, seq); stale entries skipped
        self.delivered = 0
        self.acked = 0
        self.redelivered = 0
        self.dead = 0
        self.terminated = 0

    def ack_floor(self) -> int:
        """The lowest pending sequence, or the cursor if none is pending.  Every delivered sequence
        below it is finished (acked, terminated, dead-lettered, or deleted), so the store need not
        keep a row per first delivery: it keeps the floor, the finished sequences above it, and the
        redeliveries (docs/QUEUES.md, "On disk")."""
        f, cursor, pending = self.floor, self.cursor, self.pending
        if not pending:
            f = cursor              # (the cursor may have jumped far, past discarded events)
        while f < cursor and f not in pending:
            f += 1
        self.floor = f
        return f

    def counters(self) -> list:
        return [self.delivered, self.acked, self.redelivered, self.dead, self.terminated]

    def set_counters(self, c) -> None:
        self.delivered, self.acked, self.redelivered, self.dead, self.terminated = c


class Queue:
    """Sequence numbers, retention, dedupe and groups of one queue (no payloads: those live in the store)."""

    def __init__(self, cfg: QueueConfig):
        self.cfg = cfg
        self.msgs: dict[int, tuple] = {}     # seq -> (ts, size, msg_id); insertion order = seq order
        self.last_seq = 0
        self.bytes = 0
        # msg_id -> (seq, ts), oldest first; an OrderedDict finds its head in O(1) after deletions
        self.dedupe: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self.groups: dict[str, Group] = {}
        # ("del", seq) ("pend", group, seq, n) for redeliveries, ("unpend", group, seq, n) ("dlq", group, seq, n)
        self.changes: list = []
        self.dirty_groups: set[str] = set()
        self.discarded = 0        # events dropped by limits (old) or refused (new)
        self._head = 1            # no stored sequence is below this
        self.deduped = 0

    # -- restoring from the store ---------------------------------------------
    def restore_msg(self, seq: int, ts: float, size: int, msg_id: str | None) -> None:
        """Stored events, in sequence order."""
        if not self.msgs:
            self._head = seq
        self.msgs[seq] = (ts, size, msg_id)
        self.bytes += size
        if msg_id is not None:
            self.dedupe[msg_id] = (seq, ts)

    def restore_group(self, name: str, cursor: int, counters, pending, now: float) -> Group:
        """A group as stored; its unacked deliveries get a fresh ack_wait from `now`."""
        g = self.groups[name] = Group(name, cursor)
        g.set_counters(counters)
        for seq, n in sorted(pending):
            if seq in self.msgs:
                d = now + self.wait_for(n)
                g.pending[seq] = [d, n]
                heapq.heappush(g.timers, (d, seq))
        g.floor = min(g.pending, default=cursor)
        return g

    # -- figures --------------------------------------------------------------
    @property
    def first_seq(self) -> int:
        """The lowest stored sequence (last_seq + 1 if empty).  A moving pointer, not next(iter(dict)):
        a dict that lost its head entries scans the dead slots on every iteration until it resizes."""
        h = self._head
        msgs = self.msgs
        last = self.last_seq
        while h <= last and h not in msgs:
            h += 1
        self._head = h
        return h

    def lag(self, g: Group) -> int:
        if not self.msgs:
            return 0
        return max(0, self.last_seq - max(g.cursor, self.first_seq) + 1)

    def info(self) -> dict:
        first = self.first_seq
        return {
            "config": self.cfg.to_dict(), "messages": len(self.msgs), "bytes": self.bytes,
            "first_seq": first, "last_seq": self.last_seq, "discarded": self.discarded, "deduped": self.deduped,
            "groups": {g.name: {"cursor": g.cursor, "pending": self.lag(g), "ack_pending": len(g.pending),
                                "delivered": g.delivered, "acked": g.acked, "redelivered": g.redelivered,
                                "dead_lettered": g.dead, "terminated": g.terminated}
                       for g in self.groups.values()},
        }

    # -- storing --------------------------------------------------------------
    def append(self, now: float, size: int, msg_id: str | None = None) -> tuple[int, bool]:
        """Store one event: returns (seq, duplicate).  Raises QueueError(queue_full) with discard new."""
        cfg = self.cfg
        if msg_id is not None:
            if self.dedupe:
                self._expire_dedupe(now)
            hit = self.dedupe.get(msg_id)
            if hit is not None:
                self.deduped += 1
                return hit[0], True
        if cfg.discard == "new" and self._over(1, size):
            self.discarded += 1
            raise QueueError(E_FULL, f"queue {cfg.name} is full (max_msgs {cfg.max_msgs}, "
                                     f"max_bytes {cfg.max_bytes}) and discards new events")
        self.last_seq = seq = self.last_seq + 1
        self.msgs[seq] = (now, size, msg_id)
        self.bytes += size
        if msg_id is not None:
            self.dedupe[msg_id] = (seq, now)
        if cfg.discard == "old":
            while self._over(0, 0) and len(self.msgs) > 1:
                self._delete(self.first_seq)
                self.discarded += 1
        return seq, False

    def _over(self, n: int, size: int) -> bool:
        cfg = self.cfg
        return ((cfg.max_msgs and len(self.msgs) + n > cfg.max_msgs)
                or (cfg.max_bytes and self.bytes + size > cfg.max_bytes))

    def _expire_dedupe(self, now: float) -> None:
        horizon = now - self.cfg.dedupe_window
        d = self.dedupe
        while d:
            k = next(iter(d))
            if d[k][1] >= horizon:
                break
            del d[k]

    def _delete(self, seq: int) -> None:
        m = self.msgs.pop(seq, None)
        if m is not None:
            self.bytes -= m[1]
            self.changes.append(("del", seq))

    def purge(self) -> int:
        n = len(self.msgs)
        self.msgs.clear()
        self.bytes = 0
        self._head = self.last_seq + 1
        self.changes.append(("purge", self.last_seq))   # what is stored up to now: later appends stay
        for g in self.groups.values():
            g.pending.clear()
            g.timers.clear()
            g.cursor = g.floor = self.last_seq + 1
            self.dirty_groups.add(g.name)
        return n

    def tick(self, now: float) -> None:
        """Age limit and ack deadlines: expire old events, dead-letter exhausted deliveries."""
        if self.cfg.max_age and self.msgs:
            horizon = now - self.cfg.max_age
            while self.msgs:
                seq = self.first_seq
                if self.msgs[seq][0] >= horizon:
                    break
                self._delete(seq)
                self.discarded += 1
        if self.cfg.max_deliver:
            for g in self.groups.values():
                self._due(g, now, 0, None)

    # -- groups ---------------------------------------------------------------
    def group(self, name: str, start=None, now: float = 0.0) -> Group:
        """The group `name`, created at `start` if new: "first" (default), "last" (the last stored
        event), "new" (only later events), a sequence number (int) or ("time", seconds)."""
        g = self.groups.get(name)
        if g is not None:
            return g
        if self.cfg.retention == "work" and self.groups:
            raise QueueError(E_BAD_REQUEST, f"queue {self.cfg.name} has retention work: one group only "
                                            f"({next(iter(self.groups))})")
        if start is None or start == "first":
            cursor = self.first_seq
        elif start == "last":
            cursor = self.last_seq if self.msgs else self.last_seq + 1
        elif start == "new":
            cursor = self.last_seq + 1
        elif type(start) is int and start >= 1:
            cursor = start
        elif type(start) in (list, tuple) and len(start) == 2 and start[0] == "time" \
                and type(start[1]) in (int, float):
            cursor = next((s for s, m in self.msgs.items() if m[0] >= start[1]), self.last_seq + 1)
        else:
            raise QueueError(E_BAD_REQUEST, "start must be first, last, new, a sequence number >= 1 or a time")
        g = self.groups[name] = Group(name, cursor)
        self.dirty_groups.add(name)
        return g

    def wait_for(self, deliveries: int) -> float:
        b = self.cfg.backoff
        if b:
            return b[min(deliveries, len(b)) - 1]
        return self.cfg.ack_wait

    def fetch(self, g: Group, batch: int, now: float) -> list[tuple[int, int]]:
        """Hand out up to `batch` deliveries: (seq, delivery count), redeliveries first."""
        out: list = []
        if g.timers and g.timers[0][0] <= now:
            self._due(g, now, batch, out)
        msgs = self.msgs
        if len(out) < batch and g.cursor <= self.last_seq:
            first = self.first_seq
            if g.cursor < first:
                g.cursor = first
            cursor = g.cursor
            wait = self.wait_for(1)
            pending = g.pending
            timers = g.timers
            name = g.name
            last = self.last_seq
            while len(out) < batch and cursor <= last:
                if cursor in msgs:     # a first delivery: persisted as the group's cursor, no row of its own
                    d = now + wait
                    pending[cursor] = [d, 1]
                    heapq.heappush(timers, (d, cursor))
                    out.append((cursor, 1))
                cursor += 1
            g.cursor = cursor
            self.dirty_groups.add(name)
        g.delivered += len(out)
        return out

    def _due(self, g: Group, now: float, batch: int, out: list | None) -> None:
        """Pop expired deadlines: redeliver into `out` (up to batch) or dead-letter exhausted ones."""
        timers = g.timers
        maxd = self.cfg.max_deliver
        while timers and timers[0][0] <= now:
            d, seq = timers[0]
            p = g.pending.get(seq)
            if p is None or p[0] != d:
                heapq.heappop(timers)            # acked, or re-armed since
                continue
            if seq not in self.msgs:
                heapq.heappop(timers)
                del g.pending[seq]
                self.dirty_groups.add(g.name)
                self.changes.append(("unpend", g.name, seq, p[1]))
                continue
            n = p[1]
            if maxd and n >= maxd:
                heapq.heappop(timers)
                del g.pending[seq]
                g.dead += 1
                self.dirty_groups.add(g.name)
                self.changes.append(("dlq", g.name, seq, n))
                self.changes.append(("unpend", g.name, seq, n))
                if self.cfg.retention == "work":
                    self._delete(seq)
                continue
            if out is None or len(out) >= batch:
                return
            heapq.heappop(timers)
            n += 1
            p[0] = d2 = now + self.wait_for(n)
            p[1] = n
            heapq.heappush(timers, (d2, seq))
            g.redelivered += 1
            self.dirty_groups.add(g.name)
            self.changes.append(("pend", g.name, seq, n))
            out.append((seq, n))

    def ack(self, g: Group, seq: int) -> bool:
        if not self._finish(g, seq):
            return False
        g.acked += 1
        return True

    def term(self, g: Group, seq: int) -> bool:
        if not self._finish(g, seq):
            return False
        g.terminated += 1
        return True

    def _finish(self, g: Group, seq: int) -> bool:
        """A delivery answered for good (ack or term): forget it; a work queue deletes the event."""
        p = g.pending.pop(seq, None)
        if p is None:
            return False
        self.dirty_groups.add(g.name)
        self.changes.append(("unpend", g.name, seq, p[1]))
        if self.cfg.retention == "work":
            self._delete(seq)
        return True

    def nak(self, g: Group, seq: int, now: float, delay: float | None = None) -> bool:
        """Redeliver after `delay` seconds (default: at once, or the back-off for the next delivery)."""
        p = g.pending.get(seq)
        if p is None:
            return False
        if delay is None:
            delay = self.cfg.backoff[min(p[1], len(self.cfg.backoff)) - 1] if self.cfg.backoff else 0.0
        p[0] = now + delay
        heapq.heappush(g.timers, (p[0], seq))
        return True

    def in_progress(self, g: Group, seq: int, now: float) -> bool:
        p = g.pending.get(seq)
        if p is None:
            return False
        p[0] = now + self.wait_for(p[1])
        heapq.heappush(g.timers, (p[0], seq))
        return True

    def next_deadline(self) -> float | None:
        """The earliest ack deadline of any group (for waking parked fetches)."""
        best = None
        for g in self.groups.values():
            if g.timers and (best is None or g.timers[0][0] < best):
                best = g.timers[0][0]
        return best

    def take_changes(self) -> tuple[list, list]:
        """What to persist since the last call: (change log, [(group, cursor, counters, ack floor)])."""
        ch, self.changes = self.changes, []
        groups = []
        for n in self.dirty_groups:
            g = self.groups.get(n)
            if g is not None:
                groups.append((n, g.cursor, g.counters(), g.ack_floor()))
        self.dirty_groups = set()
        return ch, groups
