"""The worker's shell around tscale/queues: durable queues homed on this worker.

Mechanism ("store, then confirm"): a queue is an ordinary subscriber at its
home worker.  Its subscription's connection is a *sink*: the worker's flush
hands the sink its pending events instead of sending them, the sink numbers
them (model) and writes them into the pass's transaction (store).  At the end
of every loop pass the worker calls `commit()`: one COMMIT (one fsync) for
everything the pass stored, acked or delivered, and only after it returns are
the replies of the pass (publisher confirms, fetch results, API answers)
published.  If COMMIT fails (disk full), the transaction is rolled back, the
queues are reloaded from disk, and every confirm of the pass becomes a
`storage_full` error: nothing confirmed is ever missing.

Requests (`$Q.<queue>`, docs/PROTOCOL.md section 19) reach this worker through
a local, unannounced subscription on `$Q.>`: only the owner of a name routes
it, so each request lands on exactly one worker of the node, the queue's home.
"""
from __future__ import annotations

import os
import sqlite3
import time

import msgpack

from tscale import bus, protocol
from tscale.connstate import Connection
from tscale.queues import api
from tscale.queues.model import (E_BAD_CONFIG, E_EXISTS, E_NOT_FOUND, E_STORAGE_FULL, E_UNAVAILABLE, Queue,
                                 QueueConfig, QueueError, STARTING, SYNC_INTERVAL, patterns_overlap)
from tscale.queues.store import SqliteStore, StoreFull, StoreRefused
from tscale.routing import Subscription
from tscale.queues.model import name_error as name_error_queue
from tscale.subjects import matches, pattern_error

_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
H_FORWARDED = "Tscale-Home-Fwd"   # on an add a node handed on from `$QH.`: never forwarded again
IDLE_CHECKPOINT = 1.0     # seconds without a commit before the WAL is checkpointed and truncated
REPLY_CHUNK = 256 * 1024   # payload bytes per fetch reply event (one larger event goes alone)


class QState:
    """One queue on this worker: its model, its row id, its sink connection and parked fetches."""

    __slots__ = ("q", "qid", "conn", "subs", "waiters", "touched", "overlap", "saved_seq", "adding")

    def __init__(self, q: Queue, qid: int):
        self.q = q
        self.qid = qid
        self.conn: Connection | None = None
        self.subs: list = []
        self.waiters: list = []     # [group, batch, reply, deadline]
        self.touched = False
        self.overlap = False        # two of its patterns can match one name
        self.saved_seq = q.last_seq  # last_seq as written to the store
        self.adding: list | None = None  # while an add waits for its patterns: the reply names to answer


class QueueShell:
    def __init__(self, worker):
        self.w = worker
        spec = worker.spec
        self.node_name = spec.get("node_name", "")
        self.path = os.path.join(spec.get("data_dir") or ".", "queues", f"w{worker.index}.db")
        self.store: SqliteStore | None = None
        self.refused: str | None = None
        self.started = False
        self.queues: dict[str, QState] = {}
        self.catalog: dict[int, list] = {}     # other workers' [name, subjects, retention]
        self.remote: set[str] = set()          # queues seen homed on other nodes
        self.remote_patterns: dict[str, str] = {}   # their patterns -> queue name
        self.remote_work: set[str] = set()     # those of them with retention work
        self.rows: list = []                   # message rows of this pass not yet handed to the store
        self.outbox: list = []                 # (kind, name, payload, meta) published after COMMIT
        self.confirms: dict = {}               # batch name -> ([acks], [errors]) of this pass
        self.dirty = False
        self.failed: Exception | None = None   # a write of this pass failed: roll back at commit
        self.stats = {"stored": 0, "confirmed": 0, "storage_errors": 0, "commits": 0}
        self.last_commit = 0.0                 # monotonic time of the last COMMIT
        self.wal_dirty = False                 # committed since the last idle checkpoint
        self.api = Connection(b"", 0.0)
        self.api.direct = True                 # local only: never announced, never proxied
        self.api.sink = self._take_api
        self.api.name = "queue-api"
        worker.table.add(Subscription(self.api, 0, api.API_PREFIX + ">", None))
        self.beacon = Connection(b"", 0.0)     # holds the announced `$Q.<queue>` subscriptions
        self.beacon.direct = False             # announced like a proxied subscription (wildcards too)
        self.beacon.sink = lambda out: None
        self.beacon.name = "queue-api-interest"
        # `--home NODE`: an add for a queue homed on another node is forwarded to that node as
        # `$QH.<node hash>.<queue>`; each node subscribes its own (announced, so it routes here)
        self.home_api = Connection(b"", 0.0)
        self.home_api.direct = True
        self.home_api.sink = self._take_home
        self.home_api.name = "queue-home-api"
        self.home_prefix = api.HOME_PREFIX + api.node_token(self.node_name) + "."
        worker.table.add(Subscription(self.home_api, 0, self.home_prefix + ">", None))

    # -- start / stop -----------------------------------------------------------
    def start(self) -> None:
        """Open the store and subscribe every queue.  Called once the in-host bus is synced, so the
        queues' interest announcements reach every other worker."""
        self.started = True
        s = Subscription(self.beacon, -1, self.home_prefix + ">", None)
        self.w.table.add(s)
        self.w._announce(s, +1, None)
        try:
            self.store = SqliteStore(self.path)
            self._load()
        except StoreRefused as exc:
            self.refused = str(exc)
            self.store = None
            for qs in self.queues.values():    # the queues loaded before the damage was found
                self._unsubscribe(qs)
            self.queues = {}
            self.w.log.error("queues: %s", exc)
            return
        if self.queues:
            self.w.log.info("queues: %d loaded from %s", len(self.queues), self.path)
        self._broadcast_defs()

    def _load(self) -> None:
        now = time.time()
        for qs in list(self.queues.values()):
            self._unsubscribe(qs)
        old = self.queues
        self.queues = {}
        for qid, config, last_seq, msgs, groups in self.store.load():
            try:
                cfg = QueueConfig.parse(config)
            except QueueError as exc:
                self.w.log.error("queues: stored queue %r refused: %s", config.get("name"), exc.message)
                continue
            q = Queue(cfg)
            for seq, ts, size, msg_id in msgs:
                q.restore_msg(seq, ts, size, msg_id)
            q.last_seq = max(last_seq, max((m[0] for m in msgs), default=0))
            for name, cursor, counters, pend in groups:
                q.restore_group(name, cursor, counters, pend, now)
            qs = QState(q, qid)
            prev = old.get(cfg.name)
            if prev is not None:
                qs.waiters = prev.waiters
            self.queues[cfg.name] = qs
            self._subscribe(qs)

    def close(self) -> None:
        if self.store is not None:
            try:
                self.commit()
            finally:
                self.store.close()

    def _subscribe(self, qs: QState, done=None) -> None:
        """Subscribe the queue (its request subject, pattern markers and patterns) and announce it;
        with `done`, call it once every owner worker and reachable node has the interest."""
        # The queue's request subject, announced to the cluster so that other nodes route its
        # requests here; the local `$Q.>` subscription of the API is what handles them, so this
        # one's connection throws its copies away.
        s = Subscription(self.beacon, qs.qid, api.api_subject(qs.q.cfg.name), None)
        qs.subs.append(s)
        self.w.table.add(s)
        subjects = qs.q.cfg.subjects
        # The patterns, announced as `$QS.<queue>.<pattern>` interest (nothing is published there), so
        # other nodes know which names this queue stores and can answer a confirmed publish
        # `queue_unavailable` while this node is unreachable.
        for i, p in enumerate(subjects):
            ps = api.pattern_subject(qs.q.cfg.name, p)
            if pattern_error(ps) is not None:
                continue            # too long to announce: other nodes answer such publishes no_queue
            s = Subscription(self.beacon, -1 - (qs.qid * api.MAX_SUBJECTS_SID + i), ps, None)
            qs.subs.append(s)
            self.w.table.add(s)
        if qs.q.cfg.retention == "work":
            # `$QW.<queue>`: other nodes refuse a queue whose patterns overlap this one's
            s = Subscription(self.beacon, -1 - (qs.qid * api.MAX_SUBJECTS_SID + api.MAX_SUBJECTS_SID - 1),
                             api.work_subject(qs.q.cfg.name), None)
            qs.subs.append(s)
            self.w.table.add(s)
        qs.overlap = any(patterns_overlap(a, b) for i, a in enumerate(subjects) for b in subjects[i + 1:])
        conn = qs.conn = Connection(b"", 0.0)
        conn.name = "queue:" + qs.q.cfg.name
        conn.sink = lambda out, qs=qs: self._take_events(qs, out)
        for i, p in enumerate(qs.q.cfg.subjects):
            s = Subscription(conn, i, p, None)
            conn.subs[i] = s
            qs.subs.append(s)
            self.w.table.add(s)
        if done is None:
            for s in qs.subs:
                self.w._announce(s, +1, None)
        else:
            self.w.announce_and_wait(qs.subs, done)

    def _unsubscribe(self, qs: QState) -> None:
        for s in qs.subs:
            self.w.table.remove(s)
            self.w._announce(s, -1, None)
        qs.subs = []

    def _broadcast_defs(self, to: int | None = None) -> None:
        defs = [[n, qs.q.cfg.subjects, qs.q.cfg.retention] for n, qs in self.queues.items()]
        self.w._bus_send(bus.ALL if to is None else bus.topic(to), _pack([bus.QUEUE_DEFS, self.w.index, defs]))

    # -- input: events for a queue ------------------------------------------------
    def _take_events(self, qs: QState, out: list) -> None:
        """The sink of one queue: out is [MSG, sid, name, payload, meta, ...] from the worker's flush."""
        now = time.time()
        q = qs.q
        rows = self.rows
        qid = qs.qid
        qname = q.cfg.name
        overlap = qs.overlap
        subjects = q.cfg.subjects
        skip = 0
        for i in range(1, len(out), 4):
            if skip:
                skip -= 1
                continue
            name, payload, meta = out[i + 1], out[i + 2], out[i + 3]
            if overlap:
                # An event that matches k patterns of this queue arrives as k consecutive copies
                # (one route, one append per matching subscription): store it once.
                skip = sum(1 for p in subjects if matches(p, name)) - 1
            reply, batch, msg_id = api.confirm_wanted(meta) if meta is not None else (None, None, None)
            try:
                seq, dup = q.append(now, len(payload), msg_id)
            except QueueError as exc:
                if reply is not None:
                    self._confirm(reply, batch, None, [reply, exc.code, exc.message])
                continue
            if not dup:
                if reply is not None:
                    meta = api.stored_meta(meta)    # the reply name and the confirm headers were for us
                rows.append((qid, seq, now, name, payload, meta, msg_id))
            if reply is not None:
                self._confirm(reply, batch, [reply, qname, seq, dup], None)
        qs.touched = True
        self.dirty = True
        self._write_rows(q.cfg.sync == "always")

    def _confirm(self, reply: str, batch: str | None, ack: list | None, error: list | None) -> None:
        """Queue one confirm: into the pass's batch for `batch`, or as its own reply event."""
        if batch is None:
            payload = api.pub_ack(ack[1], ack[2], ack[3]) if ack else api.error(error[1], error[2])
            self.outbox.append(("confirm", reply, payload, None))
            return
        b = self.confirms.get(batch)
        if b is None:
            b = self.confirms[batch] = ([], [])
        if ack:
            b[0].append(ack)
        else:
            b[1].append(error)

    def _write_rows(self, sync: bool = True) -> None:
        if self.rows and self.failed is None:
            try:
                self.store.append(self.rows, sync)
                self.stats["stored"] += len(self.rows)
            except sqlite3.Error as exc:
                self.failed = exc
        self.rows = []

    # -- input: API requests ----------------------------------------------------
    def _take_api(self, out: list) -> None:
        for i in range(1, len(out), 4):
            name, payload, meta = out[i + 1], out[i + 2], out[i + 3]
            reply = meta[1] if meta is not None else None
            try:
                op, queue, req = api.decode_request(name, payload)
                value = self._request(op, queue, req, reply, payload,
                                      meta is not None and bool(meta[0]) and H_FORWARDED in meta[0])
                if reply is not None and value is not None:
                    self.outbox.append(("api", reply, api.ok(value), None))
            except QueueError as exc:
                if reply is not None:
                    self.outbox.append(("api", reply, api.error(exc.code, exc.message), None))
            except Exception as exc:   # a bug must cost one request, not the worker and its queues
                self.w.log.exception("queues: request on %s failed", name)
                if reply is not None:
                    self.outbox.append(("api", reply, api.error("internal", f"{type(exc).__name__}: {exc}"), None))
        self.dirty = True

    def _take_home(self, out: list) -> None:
        """Adds forwarded here by another node (`--home` naming this node): handed to this node's
        home worker of the queue as the ordinary add request they are, same payload and reply name."""
        for i in range(1, len(out), 4):
            name, payload, meta = out[i + 1], out[i + 2], out[i + 3]
            queue = name[len(self.home_prefix):]
            reply = meta[1] if meta is not None else None
            if name_error_queue(queue) is None and reply is not None:
                self.outbox.append(("fwd", api.api_subject(queue), payload, [{H_FORWARDED: "1"}, reply]))
        self.dirty = True

    def _forward_add(self, queue: str, home: str, reply: str | None, payload: bytes) -> None:
        subject = api.home_subject(home, queue)
        if not self.w.table.route(subject).peers:
            raise QueueError(E_UNAVAILABLE, f"--home {home!r}: no node of that name is reachable from "
                                            f"{self.node_name!r}")
        self.outbox.append(("fwd", subject, payload, [None, reply]))

    def _request(self, op: str, queue: str | None, req: dict, reply: str | None, payload: bytes = b"",
                 forwarded: bool = False):
        if op == "ls":
            return [self._info(qs) for qs in self.queues.values()]
        if op == "add" and queue not in self.queues:
            home = req["config"].get("home")
            if type(home) is str and home and home != self.node_name:
                if forwarded:
                    return None     # handed on by the named node, and routed here too: that node answers
                self._forward_add(queue, home, reply, payload)
                return None         # that node answers
        if not self.started:
            raise QueueError(E_UNAVAILABLE, STARTING)
        if self.refused is not None:
            raise QueueError(E_UNAVAILABLE, self.refused)
        qs = self.queues.get(queue)
        if qs is None and self.w.table.route(api.api_subject(queue)).peers:
            if op == "add":
                raise QueueError(E_EXISTS, f"queue {queue!r} exists on another node; one home per queue")
            return None             # its home is another node: that node answers
        if op == "add":
            return self._add(queue, req["config"], reply)
        if qs is None:
            if queue in self.remote:
                raise QueueError(E_UNAVAILABLE, f"queue {queue!r}: its home node is unreachable")
            raise QueueError(E_NOT_FOUND, f"no queue {queue!r}")
        q = qs.q
        now = time.time()
        if op == "info":
            return self._info(qs)
        if op == "fetch":
            g = q.group(req["group"], req.get("start"), now)
            if not self._serve(qs, g.name, req.get("batch", 1), reply, now) and reply is not None:
                expires = req.get("expires", 0)
                if expires > 0:
                    qs.waiters.append([g.name, req.get("batch", 1), reply, now + expires])
                else:
                    self.outbox.append(("fetch", reply, api.fetch_chunk([], True), None))
            return None
        qs.touched = True
        if op in api.ACK_OPS:
            g = q.groups.get(req["group"])
            if g is None:
                raise QueueError(E_NOT_FOUND, f"queue {queue!r} has no group {req['group']!r}")
            n = 0
            for seq in req["seqs"]:
                if op == "ack":
                    n += q.ack(g, seq)
                elif op == "nak":
                    n += q.nak(g, seq, now, req.get("delay"))
                elif op == "wip":
                    n += q.in_progress(g, seq, now)
                else:
                    n += q.term(g, seq)
            return n
        if op == "purge":
            return q.purge()
        if op == "rm":
            self._unsubscribe(qs)
            del self.queues[queue]
            self._store_op(self.store.remove_queue, qs.qid)
            for w in qs.waiters:
                self.outbox.append(("fetch", w[2], api.error(E_NOT_FOUND, f"queue {queue!r} was removed"), None))
            self._broadcast_defs()
            return True
        raise QueueError(E_BAD_CONFIG, f"unknown op {op}")   # unreachable: decode_request checks ops

    def _store_op(self, fn, *args):
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            self.failed = exc
            raise QueueError(E_STORAGE_FULL if "full" in str(exc).lower() else E_UNAVAILABLE, str(exc)) from None

    def _add(self, queue: str, config: dict, reply: str | None) -> dict | None:
        config = dict(config)
        config.setdefault("name", queue)
        if config["name"] != queue:
            raise QueueError(E_BAD_CONFIG, "the config's name differs from the request's subject")
        if not config.get("home"):
            config["home"] = self.node_name     # (another node's name was forwarded there by _request)
        cfg = QueueConfig.parse(config)
        existing = self.queues.get(queue)
        if existing is not None:
            if existing.q.cfg == cfg:            # the same add again is idempotent ...
                if existing.adding is None:
                    return self._info(existing)
                if reply is not None:            # ... and answered when the first one is
                    existing.adding.append(reply)
                return None
            raise QueueError(E_EXISTS, f"queue {queue!r} exists with another configuration")
        self._check_overlap(cfg)
        qid = self._store_op(self.store.add_queue, cfg.to_dict())
        qs = self.queues[queue] = QState(Queue(cfg), qid)
        qs.touched = True
        # Answer only once the patterns are in place on every owner worker and reachable node:
        # an event published right after the add returns must be stored (the add is committed
        # by then too: the answer leaves with a later pass's outbox).
        qs.adding = [] if reply is None else [reply]
        self._subscribe(qs, lambda: self._added(qs))
        self._broadcast_defs()
        return None

    def _added(self, qs: QState) -> None:
        replies, qs.adding = qs.adding or [], None
        if self.queues.get(qs.q.cfg.name) is qs:
            answer = api.ok(self._info(qs))
        else:   # its commit failed (the queues were reloaded without it), or it was removed meanwhile
            answer = api.error(E_UNAVAILABLE, f"queue {qs.q.cfg.name!r} was not kept")
        for reply in replies:
            self.outbox.append(("api", reply, answer, None))
        self.dirty = True

    def _check_overlap(self, cfg: QueueConfig) -> None:
        """A work queue must be the only queue storing its events (one group deletes them).  Checked
        against this node's queues and those of other nodes whose interest is here now (a queue
        seen once but whose `$Q.<queue>` interest is gone, removed or unreachable, is not counted)."""
        others = [[n, qs.q.cfg.subjects, qs.q.cfg.retention] for n, qs in self.queues.items()]
        for defs in self.catalog.values():
            others += defs
        if self.remote_patterns:
            local = {o[0] for o in others}
            remote: dict[str, list] = {}
            for pattern, queue in self.remote_patterns.items():
                if queue not in local:
                    remote.setdefault(queue, []).append(pattern)
            route = self.w.table.route
            for queue, patterns in remote.items():
                if route(api.api_subject(queue)).peers:
                    others.append([queue, patterns, "work" if queue in self.remote_work else "limits"])
        for name, subjects, retention in others:
            if name == cfg.name or (retention != "work" and cfg.retention != "work"):
                continue
            for a in cfg.subjects:
                for b in subjects:
                    if patterns_overlap(a, b):
                        raise QueueError(E_BAD_CONFIG, f"pattern {a!r} overlaps {b!r} of queue {name!r}, and a "
                                                       "work queue must be the only queue storing its events")

    def _info(self, qs: QState) -> dict:
        d = qs.q.info()
        d["worker"] = self.w.index
        d["db_disk_bytes"] = self.store.disk_bytes() if self.store is not None else 0
        return d

    def _serve(self, qs: QState, group: str, batch: int, reply: str | None, now: float) -> bool:
        """Deliver up to `batch` events of `group` to `reply`; False if none was available."""
        q = qs.q
        g = q.groups[group]
        got = q.fetch(g, batch, now)
        if not got:
            return False
        qs.touched = True
        self._write_rows()
        rows = self.store.read(qs.qid, [s for s, _ in got])
        chunk, size = [], 0
        for seq, n in got:
            r = rows.get(seq)
            if r is None:
                continue
            name, payload, meta, ts = r
            if size and size + len(payload) > REPLY_CHUNK:
                self.outbox.append(("fetch", reply, api.fetch_chunk(chunk, False), None))
                chunk, size = [], 0
            chunk.append([seq, name, payload, meta[0] if meta else None, n, ts])
            size += len(payload)
        if reply is not None:
            self.outbox.append(("fetch", reply, api.fetch_chunk(chunk, True), None))
        return True

    # -- the end of a pass --------------------------------------------------------
    def busy(self) -> bool:
        return self.dirty

    def commit(self) -> None:
        """Serve parked fetches, persist the pass, COMMIT, then publish the pass's replies."""
        self.dirty = False
        store = self.store
        if store is None:
            self._emit(self.outbox)
            self.outbox = []
            return
        now = time.time()
        self._write_rows()
        for qs in self.queues.values():
            if qs.touched:
                qs.touched = False
                if qs.waiters:
                    self._wake(qs, now)
                self._persist(qs)
        if self.failed is None and store.in_txn:
            try:
                store.commit()
                self.stats["commits"] += 1
                self.wal_dirty = True
                self.last_commit = time.monotonic()
            except (StoreFull, sqlite3.Error) as exc:
                self.failed = exc
        if self.failed is not None:
            self._recover()
        outbox, self.outbox = self.outbox, []
        if self.confirms:
            for name, (acks, errors) in self.confirms.items():
                outbox.append(("confirm", name, api.confirm_batch(acks, errors), None))
                self.stats["confirmed"] += len(acks)
            self.confirms = {}
        self._emit(outbox)

    def _persist(self, qs: QState) -> None:
        """Write the queue's changes of this pass into the transaction."""
        changes, groups = qs.q.take_changes()
        if self.failed is not None or not (changes or groups or qs.q.last_seq != qs.saved_seq):
            return          # nothing to write: no transaction, no fsync (parked fetches wake every tick)
        last_seq = qs.q.last_seq if qs.q.last_seq != qs.saved_seq else None
        qs.saved_seq = qs.q.last_seq
        for c in changes:
            if c[0] == "dlq":
                self._dead_letter(qs, c[1], c[2], c[3])
        try:
            self.store.apply(qs.qid, last_seq, changes, groups, qs.q.cfg.sync == "always")
        except sqlite3.Error as exc:
            self.failed = exc

    def _dead_letter(self, qs: QState, group: str, seq: int, deliveries: int) -> None:
        r = self.store.read(qs.qid, [seq]).get(seq)
        if r is None:
            return
        name, payload, meta, _ts = r
        headers = dict(meta[0]) if meta and meta[0] else {}
        headers.pop(api.H_CONFIRM, None)
        headers.update({"Tscale-Queue": qs.q.cfg.name, "Tscale-Group": group, "Tscale-Seq": str(seq),
                        "Tscale-Subject": name, "Tscale-Deliveries": str(deliveries)})
        self.outbox.append(("dlq", api.dlq_subject(qs.q.cfg.name), payload, [headers, None]))

    def _recover(self) -> None:
        """A failed pass: roll back, reload every queue from disk, turn its confirms into errors."""
        exc, self.failed = self.failed, None
        self.stats["storage_errors"] += 1
        full = isinstance(exc, StoreFull) or "full" in str(exc).lower()
        code = E_STORAGE_FULL if full else E_UNAVAILABLE
        self.w.rlog.warning(("queue-store",), "queues: a commit failed (%s); rolled back, reloading", exc)
        self.store.rollback()
        self.rows = []
        kept = []
        for kind, reply, payload, meta in self.outbox:
            if kind in ("confirm", "api"):
                kept.append((kind, reply, api.error(code, f"not stored: {exc}"), None))
            elif kind == "fwd":          # handed on to another node or worker: nothing of it was stored here
                kept.append((kind, reply, payload, meta))
            elif kind == "fetch":
                kept.append((kind, reply, api.fetch_chunk([], True), None))
        self.outbox = kept
        for acks, errors in self.confirms.values():
            errors += [[a[0], code, f"not stored: {exc}"] for a in acks]
            acks.clear()
        try:
            self._load()
        except (sqlite3.Error, StoreRefused) as exc2:
            self.refused = f"{self.path}: cannot reload after a failed commit: {exc2}"
            self.w.log.error("queues: %s", self.refused)

    def _emit(self, outbox: list) -> None:
        if not outbox:
            return
        batch = [protocol.PUB]
        for _kind, name, payload, meta in outbox:
            batch += (name, payload, meta)
        self.w._ingest(None, batch, 1)

    def _wake(self, qs: QState, now: float) -> None:
        """Serve parked fetches that can now get events; answer expired ones with nothing."""
        keep = []
        for w in qs.waiters:
            group, batch, reply, deadline = w
            if group in qs.q.groups and self._serve(qs, group, batch, reply, now):
                continue
            if deadline <= now:
                self.outbox.append(("fetch", reply, api.fetch_chunk([], True), None))
            else:
                keep.append(w)
        qs.waiters = keep

    # -- housekeeping --------------------------------------------------------------
    def idle(self) -> bool:
        """Nothing for `tick` to do on time (the worker then ticks every IDLE_TICK): started,
        no queue, nothing committed that waits for an fsync or a checkpoint."""
        return (self.started and not self.queues and not self.dirty and not self.wal_dirty
                and (self.store is None or self.store.unsynced_since is None))

    def tick(self, now_mono: float) -> None:
        if not self.started or self.store is None:
            return
        since = self.store.unsynced_since
        if since is not None and time.monotonic() - since >= SYNC_INTERVAL:
            try:
                self.store.sync_wal()    # queues with sync "interval": their last second becomes durable
            except OSError as exc:
                self.w.rlog.warning(("queue-sync",), "queues: fsync of %s-wal failed: %s", self.path, exc)
        if self.wal_dirty and time.monotonic() - self.last_commit >= IDLE_CHECKPOINT:
            self.wal_dirty = False
            self.store.idle_checkpoint()
        now = time.time()
        for qs in self.queues.values():
            q = qs.q
            if q.cfg.max_age or q.cfg.max_deliver:
                q.tick(now)
            if q.changes:
                qs.touched = True
                self.dirty = True
            if qs.waiters:
                qs.touched = True
                self.dirty = True

    def seen_remote(self, entries) -> None:
        """Remember queues homed on other nodes (their `$Q.<queue>` interest), so that a request
        for one whose home went away is answered `queue_unavailable`, not `queue_not_found`."""
        for e in entries:
            p = e[0]
            if type(p) is not str or len(self.remote) >= 100_000:
                continue
            if p.startswith(api.API_PREFIX) and not p.startswith(api.LS_PREFIX):
                self.remote.add(p[len(api.API_PREFIX):])
            elif p.startswith(api.WORK_PREFIX):
                if len(self.remote_work) < 100_000:
                    self.remote_work.add(p[len(api.WORK_PREFIX):])
            elif p.startswith(api.PATTERNS_PREFIX):
                queue, _, pattern = p[len(api.PATTERNS_PREFIX):].partition(".")
                if pattern and len(self.remote_patterns) < 100_000:
                    self.remote_patterns[pattern] = queue

    def unavailable_answer(self, name: str, headers) -> bytes | None:
        """For a confirmed publish that nothing is subscribed to: if a queue seen on another node
        stores this name, the confirm error `queue_unavailable` (its home is unreachable)."""
        if api.H_CONFIRM not in headers or not self.remote_patterns:
            return None
        for pattern, queue in self.remote_patterns.items():
            if matches(pattern, name):
                return api.error(E_UNAVAILABLE, f"queue {queue!r} stores {name!r} but its home node is "
                                                "unreachable (or the queue was removed)")
        return None

    def on_worker_hello(self, frm: int) -> None:
        if self.started and self.store is not None:
            self._broadcast_defs(frm)

    def on_defs(self, frm: int, defs) -> None:
        if type(defs) is list:
            self.catalog[frm] = [d for d in defs if type(d) is list and len(d) == 3]

    def worker_down(self, k: int) -> None:
        self.catalog.pop(k, None)

    def figures(self) -> dict:
        out = {}
        disk = self.store.disk_bytes() if self.store is not None and self.queues else 0
        for name, qs in self.queues.items():
            d = qs.q.info()
            del d["config"]
            d["subjects"] = qs.q.cfg.subjects
            d["retention"] = qs.q.cfg.retention
            d["db_disk_bytes"] = disk
            out[name] = d
        return out
