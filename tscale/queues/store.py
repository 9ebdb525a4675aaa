"""Where queued events live: a small storage interface and its sqlite implementation.

One database per worker (`DATA_DIR/queues/w<index>.db`), one writer (that
worker).  WAL journal, `synchronous=FULL`: COMMIT returns only after the WAL
is fsynced, so an event whose confirm was sent survives a process crash, and a
machine crash if the disk honours fsync.  The worker commits once per pass of
its loop (group commit): one fsync covers every event, ack and delivery of
that pass.

A database written by a newer schema, or one that fails sqlite's integrity
check, is refused with `StoreRefused`: the worker serves pub/sub and reports
its queues unavailable, it never rewrites such a file.  Anything that can
hold (seq -> event) and the group tables could replace `SqliteStore` (a
segment log, for instance): the worker's shell only calls the methods below.
"""
from __future__ import annotations

import bisect
import os
import sqlite3
import time

import msgpack

SCHEMA_VERSION = 4
WAL_CHECKPOINT_PAGES = 256
WAL_LIMIT = 1 << 20
SEGMENT_EVENTS = 128          # events per segment row at most
SEGMENT_BYTES = 32 * 1024     # payload bytes per segment row at most (a larger event goes alone)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (qid INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, config BLOB NOT NULL,
                                   last_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS groups (qid INTEGER NOT NULL, name TEXT NOT NULL, cursor INTEGER NOT NULL,
                                   counters BLOB NOT NULL, floor INTEGER, PRIMARY KEY (qid, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (qid INTEGER NOT NULL, grp TEXT NOT NULL, seq INTEGER NOT NULL,
                                    deliveries INTEGER NOT NULL, PRIMARY KEY (qid, grp, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS done (qid INTEGER NOT NULL, grp TEXT NOT NULL, seq INTEGER NOT NULL,
                                 PRIMARY KEY (qid, grp, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gone (qid INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (qid, seq)) WITHOUT ROWID;
"""
# A group's unacked deliveries, without a row per delivery (schema 2):
#   groups.floor   every delivered sequence below it is finished (NULL: the cursor, as schema 1 wrote)
#   done           finished sequences between the floor and the cursor (acks out of order)
#   pending        deliveries counted 2 or more (redeliveries), and schema 1's rows
# so the unacked deliveries are: pending's rows, plus every stored sequence in [floor, cursor)
# that is in neither table (delivered once).  Acks in order and first deliveries write no row.
#
# Events (schema 3): one rowid table per queue, `m<qid>`, whose rowid is the sequence.  Sequences
# only grow, so sqlite appends at the right edge of the b-tree and packs its pages full; the
# key is stored once (as the rowid) instead of twice.  Schema 1-2 kept every queue in one
# `msgs` table keyed (qid, seq) WITHOUT ROWID: 187 bytes per 128-byte event after a checkpoint
# (pages about 85 % full) against 159 with schema 3.
#
# Segments (schema 4): a queue's table `s<qid>` holds one row per run of consecutive events written
# together (one write of a pass, up to SEGMENT_EVENTS events or SEGMENT_BYTES of payload): `seq` is
# the run's first sequence, `n` its length, `data` a msgpack array of n `[ts, name, payload, meta,
# msg_id]` (meta: the stored [headers, nil] or nil).  sqlite's cost is per row (6-7 us per INSERT
# here, about 1 us per event in a row of 100), so a pass of many events costs one INSERT.  Rows are
# never rewritten: an event deleted (acked on a work queue, discarded by limits or age) while others
# of its run are still stored gets a row in `gone`; the run's row and its `gone` rows are deleted
# together once every event of it is gone.
_MIGRATE = {
    2: ["ALTER TABLE groups ADD COLUMN floor INTEGER"],
    3: ["-- msgs -> m<qid>"],
    4: ["-- m<qid> -> s<qid>"],
}


def _msgs_table(qid: int) -> str:
    """The table of schema 3 (a row per event); only migrations read it."""
    return f"m{int(qid)}"


def _seg_table(qid: int) -> str:
    return f"s{int(qid)}"


def _create_msgs(db, qid: int) -> None:
    db.execute(f"CREATE TABLE IF NOT EXISTS {_seg_table(qid)} (seq INTEGER PRIMARY KEY, n INTEGER NOT NULL, "
               "data BLOB NOT NULL)")


def _create_msgs_3(db, qid: int) -> None:
    db.execute(f"CREATE TABLE IF NOT EXISTS {_msgs_table(qid)} (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, "
               "name TEXT NOT NULL, payload BLOB NOT NULL, meta BLOB, msg_id TEXT)")


def _migrate_3(db) -> None:
    """One `msgs` table for all queues -> one rowid table per queue."""
    for (qid,) in db.execute("SELECT qid FROM queues").fetchall():
        _create_msgs_3(db, qid)
        db.execute(f"INSERT INTO {_msgs_table(qid)} SELECT seq, ts, name, payload, meta, msg_id FROM msgs "
                   "WHERE qid=? ORDER BY seq", (qid,))
    db.execute("DROP TABLE msgs")


def _migrate_4(db) -> None:
    """A row per event (`m<qid>`) -> runs of consecutive events per row (`s<qid>`)."""
    for (qid,) in db.execute("SELECT qid FROM queues").fetchall():
        _create_msgs_3(db, qid)
        _create_msgs(db, qid)
        _write_runs(db, [(qid, seq, ts, name, payload, None if meta is None else msgpack.unpackb(meta, raw=False),
                          msg_id)
                         for seq, ts, name, payload, meta, msg_id in db.execute(
                             f"SELECT seq, ts, name, payload, meta, msg_id FROM {_msgs_table(qid)} ORDER BY seq")])
        db.execute(f"DROP TABLE {_msgs_table(qid)}")


def _write_runs(db, rows: list) -> list[tuple]:
    """Write rows of (qid, seq, ts, name, payload, meta|None, msg_id|None), each queue's in sequence
    order, as runs of consecutive sequences, one row per run (at most SEGMENT_EVENTS events and
    SEGMENT_BYTES of payload, or one larger event); returns (qid, first seq, length) per run."""
    runs = []
    i, n = 0, len(rows)
    while i < n:
        qid = rows[i][0]
        first = rows[i][1]
        size = len(rows[i][4])
        j = i + 1
        while j < n and j - i < SEGMENT_EVENTS:
            r = rows[j]
            if r[0] != qid or r[1] != first + (j - i):
                break
            size += len(r[4])
            if size > SEGMENT_BYTES:
                break
            j += 1
        db.execute(f"INSERT OR REPLACE INTO {_seg_table(qid)} VALUES (?,?,?)",
                   (first, j - i, _pack([r[2:] for r in rows[i:j]])))
        runs.append((qid, first, j - i))
        i = j
    return runs


_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


class _Segments:
    """The runs of one queue in memory: first seqs in order, and per run [length, events still stored]."""

    __slots__ = ("starts", "runs")

    def __init__(self):
        self.starts: list = []
        self.runs: dict = {}

    def add(self, start: int, n: int, live: int) -> None:
        if start in self.runs:
            self.runs[start] = [n, live]
            return
        if not self.starts or start > self.starts[-1]:
            self.starts.append(start)
        else:
            bisect.insort(self.starts, start)
        self.runs[start] = [n, live]

    def find(self, seq: int) -> int | None:
        """The first seq of the run holding `seq`, or None."""
        i = bisect.bisect_right(self.starts, seq) - 1
        if i < 0:
            return None
        start = self.starts[i]
        return start if seq < start + self.runs[start][0] else None

    def remove(self, start: int) -> None:
        del self.runs[start]
        i = bisect.bisect_left(self.starts, start)
        del self.starts[i]


class StoreRefused(Exception):
    """The database cannot be used (newer schema, damaged, unreadable); the message says why."""


class StoreFull(Exception):
    """The disk (or the file system's quota) is full; nothing of the failed transaction was kept."""


# What unpacking a damaged blob raises (msgpack's errors are ValueErrors or UnpackException; a blob
# of the wrong shape fails the tuple unpacking with ValueError or TypeError).
_DAMAGED = (ValueError, TypeError, msgpack.UnpackException)


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(exc).lower()


class SqliteStore:
    """The storage of one worker's queues."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            db = self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreRefused(f"{path} was written by a newer tscale (schema {version}, this one "
                                   f"reads {SCHEMA_VERSION}); refusing its queues, the file is left untouched")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreRefused(f"{path} is damaged ({check}); refusing its queues, the file is left untouched")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            # The WAL is copied into the database every WAL_CHECKPOINT_PAGES (sqlite's default is
            # 1,000 pages, 4 MB), and truncated to WAL_LIMIT after; an idle worker truncates it
            # to nothing (idle_checkpoint).  So the WAL adds at most about 1 MB to the disk use.
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            db.execute("BEGIN")
            if version > 0:       # an older file: bring it up to date in one transaction
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    if v == 3:
                        _migrate_3(db)
                        continue
                    if v == 4:
                        _migrate_4(db)
                        continue
                    for stmt in _MIGRATE.get(v, ()):
                        db.execute(stmt)
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    db.execute(stmt)
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except (sqlite3.DatabaseError, *_DAMAGED) as exc:   # (a migration unpacks stored metas)
            raise StoreRefused(f"{path} cannot be used as a queue database: {exc}") from None
        except OSError as exc:
            raise StoreRefused(f"{path}: {exc}") from None
        self.in_txn = False
        self.unsynced_since: float | None = None   # monotonic time of the first commit not fsynced
        self.full = True              # the connection's synchronous level is FULL (else NORMAL)
        self.txn_sync = True          # the open transaction must be durable before the pass's replies
        self.once: set = set()        # (qid, group, seq) of rows with deliveries 1 (schema 1 wrote them)
        self.done_rows: dict = {}     # (qid, group) -> the highest seq with a `done` row, if any
        self.segs: dict = {}          # qid -> _Segments (filled by load, kept by append and apply)
        self.gone: dict = {}          # qid -> the seqs with a `gone` row
        self.cache: dict = {}         # (qid, first seq) -> the unpacked events of a run read lately

    # -- reading --------------------------------------------------------------
    def load(self):
        """Every queue: yields (qid, config dict, last_seq, msgs [(seq, ts, size, msg_id)],
        groups [(name, cursor, counters, [(seq, deliveries)])]).  Raises StoreRefused, possibly
        after some queues, if stored data cannot be read (the file is left as it is)."""
        try:
            yield from self._load()
        except (sqlite3.DatabaseError, *_DAMAGED) as exc:
            raise StoreRefused(f"{self.path}: its queues cannot be read ({exc!r}); refusing its queues, "
                               "the file is left untouched") from None

    def _load(self):
        db = self.db
        self.segs = {}
        self.gone = {}
        self.cache.clear()
        for qid, name, config, last_seq in db.execute("SELECT qid, name, config, last_seq FROM queues ORDER BY qid"
                                                      ).fetchall():
            _create_msgs(db, qid)   # (a queue added by schema 4 has it; this keeps load read-only otherwise)
            gone = {s for (s,) in db.execute("SELECT seq FROM gone WHERE qid=?", (qid,))}
            segs = self.segs[qid] = _Segments()
            self.gone[qid] = gone
            msgs = []
            for start, n, data in db.execute(f"SELECT seq, n, data FROM {_seg_table(qid)} ORDER BY seq"):
                live = 0
                for i, (ts, _name, payload, _meta, msg_id) in enumerate(msgpack.unpackb(data, raw=False)):
                    seq = start + i
                    if gone and seq in gone:
                        continue
                    msgs.append((seq, ts, len(payload), msg_id))
                    live += 1
                segs.add(start, n, live)
            groups = []
            stored = None
            for gname, cursor, counters, floor in db.execute(
                    "SELECT name, cursor, counters, floor FROM groups WHERE qid=?", (qid,)).fetchall():
                pend = db.execute("SELECT seq, deliveries FROM pending WHERE qid=? AND grp=? ORDER BY seq",
                                  (qid, gname)).fetchall()
                for seq, n in pend:
                    if n == 1:
                        self.once.add((qid, gname, seq))
                if floor is not None and floor < cursor:
                    done = {s for (s,) in db.execute("SELECT seq FROM done WHERE qid=? AND grp=? AND seq>=?",
                                                     (qid, gname, floor))}
                    if done:
                        self.done_rows[(qid, gname)] = max(done)
                    if stored is None:
                        stored = {m[0] for m in msgs}
                    explicit = {s for s, _ in pend}
                    pend += [(s, 1) for s in (range(floor, cursor) if cursor - floor <= len(stored)
                                              else sorted(x for x in stored if floor <= x < cursor))
                             if s in stored and s not in done and s not in explicit]
                groups.append((gname, cursor, msgpack.unpackb(counters), pend))
            yield qid, msgpack.unpackb(config, raw=False), last_seq, msgs, groups

    def read(self, qid: int, seqs: list[int]) -> dict:
        """seq -> (name, payload, meta, ts) for the sequences that exist."""
        out = {}
        segs = self.segs.get(qid)
        if not seqs or segs is None:
            return out
        gone = self.gone.get(qid) or ()
        want = sorted(seqs)
        runs: dict = {}              # first seq -> unpacked events, for the runs these sequences are in
        missing = []
        where = []                   # (seq, first seq of its run) for the sequences that are in one
        lo = hi = 0                  # the run of the previous sequence: [lo, hi)
        start = None
        find, lengths = segs.find, segs.runs
        for seq in want:
            if not lo <= seq < hi:   # sorted sequences: a run is looked up once, not per sequence
                start = find(seq)
                if start is None:
                    lo = hi = 0
                    continue
                lo, hi = start, start + lengths[start][0]
                if start not in runs:
                    hit = self.cache.get((qid, start))
                    runs[start] = hit
                    if hit is None:
                        missing.append(start)
            where.append((seq, start))
        if missing:
            table = _seg_table(qid)
            lo, hi = missing[0], missing[-1]
            if len(missing) > 1 and len(segs.starts) > 2 * len(missing) + 16 and \
                    bisect.bisect_right(segs.starts, hi) - bisect.bisect_left(segs.starts, lo) > 2 * len(missing):
                found = []
                for k in range(0, len(missing), 500):
                    part = missing[k:k + 500]
                    found += self.db.execute(f"SELECT seq, data FROM {table} WHERE seq IN "
                                             f"({','.join('?' * len(part))})", part).fetchall()
            else:   # a fetch's runs are mostly consecutive: one range scan of the primary key
                found = self.db.execute(f"SELECT seq, data FROM {table} WHERE seq>=? AND seq<=?", (lo, hi)).fetchall()
            cache = self.cache
            for start, data in found:
                if start in runs:
                    events = runs[start] = msgpack.unpackb(data, raw=False)
                    cache[(qid, start)] = events
            while len(cache) > 8:            # keep the few runs read last (a consumer reads on from them)
                del cache[next(iter(cache))]
        for seq, start in where:
            if seq in gone:
                continue
            events = runs.get(start)
            if events is None or seq - start >= len(events):
                continue
            ts, name, payload, meta, _msg_id = events[seq - start]
            out[seq] = (name, payload, meta, ts)
        return out

    def idle_checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (called when the worker is idle).  A
        checkpoint only moves committed pages; sqlite fsyncs the database before the WAL is reset."""
        if not self.in_txn:
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error:
                pass                  # a full disk, say: the next commit reports it

    def disk_bytes(self) -> int:
        n = 0
        for suffix in ("", "-wal"):
            try:
                n += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return n

    # -- writing (inside the pass's transaction) --------------------------------
    def _begin(self, sync: bool = True):
        """Start the pass's transaction.  `sync`: the write needs an fsync before the pass's replies
        (the default, and any queue with sync "always").  sqlite fixes the sync level of a
        transaction at its start, so a transaction begun for a queue with sync "interval" runs at
        synchronous=NORMAL; if a write that needs the fsync joins it, commit() fsyncs the WAL itself
        after the COMMIT."""
        if not self.in_txn:
            if sync != self.full:
                self.db.execute("PRAGMA synchronous=" + ("FULL" if sync else "NORMAL"))
                self.full = sync
            self.db.execute("BEGIN")
            self.in_txn = True
            self.txn_sync = sync
        elif sync:
            self.txn_sync = True

    def add_queue(self, config: dict) -> int:
        self._begin()
        cur = self.db.execute("INSERT INTO queues (name, config) VALUES (?, ?)",
                              (config["name"], msgpack.packb(config)))
        _create_msgs(self.db, cur.lastrowid)
        self.segs[cur.lastrowid] = _Segments()
        self.gone[cur.lastrowid] = set()
        return cur.lastrowid

    def remove_queue(self, qid: int) -> None:
        self._begin()
        self.db.execute(f"DROP TABLE IF EXISTS {_seg_table(qid)}")
        self.segs.pop(qid, None)
        self.gone.pop(qid, None)
        self._uncache(qid)
        for table in ("groups", "pending", "done", "gone"):
            self.db.execute(f"DELETE FROM {table} WHERE qid=?", (qid,))
        self.db.execute("DELETE FROM queues WHERE qid=?", (qid,))

    def append(self, rows: list, sync: bool = True) -> None:
        """rows of (qid, seq, ts, name, payload, meta|None, msg_id|None), each queue's in sequence
        order: written as runs of consecutive sequences, one row per run (see SEGMENT_EVENTS)."""
        self._begin(sync)
        for qid, first, n in _write_runs(self.db, rows):
            segs = self.segs.get(qid)
            if segs is None:
                segs = self.segs[qid] = _Segments()
                self.gone.setdefault(qid, set())
            segs.add(first, n, n)

    def _purge(self, qid: int, upto: int | None) -> None:
        db = self.db
        segs = self.segs.get(qid)
        if upto is None or segs is None:
            db.execute(f"DELETE FROM {_seg_table(qid)}")
            for table in ("pending", "done", "gone"):
                db.execute(f"DELETE FROM {table} WHERE qid=?", (qid,))
            self.segs[qid] = _Segments()
            self.gone[qid] = set()
            self._uncache(qid)
            return
        for table in ("pending", "done"):
            db.execute(f"DELETE FROM {table} WHERE qid=? AND seq<=?", (qid, upto))
        i = bisect.bisect_right(segs.starts, upto)
        whole = [a for a in segs.starts[:i] if a + segs.runs[a][0] - 1 <= upto]
        if i and segs.starts[i - 1] not in whole[-1:]:    # a run across upto (not written so): its head
            a = segs.starts[i - 1]
            self._delete_events(qid, [s for s in range(a, upto + 1) if s not in self.gone.get(qid, ())])
        if whole:
            db.execute(f"DELETE FROM {_seg_table(qid)} WHERE seq<=?", (whole[-1],))
            db.execute("DELETE FROM gone WHERE qid=? AND seq<?", (qid, whole[-1] + segs.runs[whole[-1]][0]))
            gone = self.gone.get(qid)
            end = whole[-1] + segs.runs[whole[-1]][0]
            if gone:
                self.gone[qid] = {s for s in gone if s >= end}
            for a in whole:
                del segs.runs[a]
                self.cache.pop((qid, a), None)
            del segs.starts[:len(whole)]

    def _uncache(self, qid: int) -> None:
        for k in [k for k in self.cache if k[0] == qid]:
            del self.cache[k]

    def _delete_events(self, qid: int, seqs: list) -> None:
        """Events deleted from the queue: a `gone` row each, or their run's row once all of it is gone."""
        segs = self.segs.get(qid)
        if segs is None:
            return
        gone = self.gone.setdefault(qid, set())
        table = _seg_table(qid)
        db = self.db
        marks, drops = [], []
        for seq in seqs:
            start = segs.find(seq)
            if start is None or seq in gone:
                continue
            run = segs.runs[start]
            run[1] -= 1
            if run[1] <= 0:
                drops.append((start, start + run[0]))
                segs.remove(start)
                self.cache.pop((qid, start), None)
                for s in range(start, start + run[0]):
                    gone.discard(s)
            else:
                gone.add(seq)
                marks.append((qid, seq))
        if marks:
            db.executemany("INSERT OR REPLACE INTO gone VALUES (?,?)", marks)
        if drops:
            db.executemany(f"DELETE FROM {table} WHERE seq=?", [(a,) for a, _ in drops])
            db.executemany("DELETE FROM gone WHERE qid=? AND seq>=? AND seq<?", [(qid, a, b) for a, b in drops])

    def apply(self, qid: int, last_seq: int | None, changes: list, groups: list, sync: bool = True) -> None:
        """Persist a queue's change log (see model.Queue.changes) and its dirty groups."""
        self._begin(sync)
        db = self.db
        floors = {n: f for n, _cur, _cnt, f in groups}
        once, done_rows = self.once, self.done_rows
        dels, pend, unpend, done = [], [], [], []
        for c in changes:
            kind = c[0]
            if kind == "del":
                dels.append(c[1])
            elif kind == "pend":        # a redelivery (first deliveries are covered by the cursor)
                pend.append((qid, c[1], c[2], c[3]))
            elif kind == "unpend":      # finished: a row only if it is above the floor written below
                g, seq = c[1], c[2]
                if c[3] > 1 or (once and (qid, g, seq) in once):
                    unpend.append((qid, g, seq))
                    once.discard((qid, g, seq))
                f = floors.get(g)
                if f is None or seq > f:
                    done.append((qid, g, seq))
                    if done_rows.get((qid, g), 0) < seq:
                        done_rows[(qid, g)] = seq
            elif kind == "purge":
                # ("purge", last_seq): every event stored up to last_seq goes; events the pass stored
                # after the purge (their rows are already written) stay.  ("purge",): everything.
                upto = c[1] if len(c) > 1 else None
                self._purge(qid, upto)
                dels, pend, unpend, done = [], [], [], []
                self.once = once = {k for k in once if k[0] != qid}
                for k in [k for k in done_rows if k[0] == qid]:
                    del done_rows[k]
        # order matters only within a kind: a seq is pended before it is unpended in one pass
        if pend:
            db.executemany("INSERT OR REPLACE INTO pending VALUES (?,?,?,?)", pend)
        if unpend:
            db.executemany("DELETE FROM pending WHERE qid=? AND grp=? AND seq=?", unpend)
        if done:
            db.executemany("INSERT OR REPLACE INTO done VALUES (?,?,?)", done)
        if dels:
            self._delete_events(qid, dels)
        if groups:
            for n, _cur, _cnt, f in groups:   # done rows the floor has passed are implied now
                hi = done_rows.get((qid, n))
                if hi is not None:
                    db.execute("DELETE FROM done WHERE qid=? AND grp=? AND seq<?", (qid, n, f))
                    if hi < f:
                        del done_rows[(qid, n)]
            db.executemany("INSERT OR REPLACE INTO groups VALUES (?,?,?,?,?)",
                           [(qid, n, cur, msgpack.packb(cnt), f) for n, cur, cnt, f in groups])
        if last_seq is not None:     # None: unchanged (a pass of acks and deliveries only)
            db.execute("UPDATE queues SET last_seq=? WHERE qid=?", (last_seq, qid))

    def commit(self) -> None:
        """COMMIT.  A transaction that needs it is durable when this returns: COMMIT at
        synchronous=FULL fsyncs the WAL (which covers every earlier commit too), or, for one begun at
        NORMAL, the WAL is fsynced right after.  Otherwise (only queues with sync "interval") the
        transaction is in the WAL, in the OS (a process crash loses nothing), not fsynced:
        `unsynced_since` says since when, and `sync_wal` fsyncs it.  Raises StoreFull or
        sqlite3.Error after rolling back."""
        if not self.in_txn:
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.rollback()
            if _is_full(exc):
                raise StoreFull(str(exc)) from None
            raise
        finally:
            self.in_txn = False
        if self.txn_sync:
            if not self.full:
                self.sync_wal()
            self.unsynced_since = None
        elif self.unsynced_since is None:
            self.unsynced_since = time.monotonic()

    def sync_wal(self) -> None:
        """fsync the WAL: every commit made without sync becomes durable."""
        try:
            fd = os.open(self.path + "-wal", os.O_RDONLY)
        except FileNotFoundError:      # checkpointed and removed: the database file was synced
            self.unsynced_since = None
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.unsynced_since = None

    def rollback(self) -> None:
        """Roll back the open transaction.  The runs in memory may then describe rows that are gone:
        the caller reloads (load) before using the store again."""
        self.cache.clear()
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self.in_txn = False

    def close(self) -> None:
        try:
            if self.in_txn:
                self.commit()
            if self.unsynced_since is not None:
                self.sync_wal()
        finally:
            self.db.close()
