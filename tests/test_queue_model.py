"""The sans-I/O queue model, the API validation and the sqlite store, tested directly (no sockets)."""
from __future__ import annotations

import itertools
import sqlite3
import time

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tscale.queues import api
from tscale.queues.model import Queue, QueueConfig, QueueError, patterns_overlap
from tscale.queues.store import SCHEMA_VERSION, SqliteStore, StoreRefused
from tscale.subjects import matches


def cfg(**kw) -> QueueConfig:
    return QueueConfig.parse({"name": "q", "subjects": ["q.>"], **kw})


# -- patterns -----------------------------------------------------------------------
_tok = st.sampled_from(["a", "b", "*"])
_pattern = st.lists(_tok, min_size=1, max_size=3).flatmap(
    lambda toks: st.sampled_from([toks, toks + [">"]])).map(".".join)


@settings(max_examples=300, deadline=None)
@given(_pattern, _pattern)
def test_patterns_overlap_agrees_with_brute_force(a, b):
    names = (".".join(t) for n in range(1, 6) for t in itertools.product("abc", repeat=n))
    brute = any(matches(a, n) and matches(b, n) for n in names)
    assert patterns_overlap(a, b) == brute == patterns_overlap(b, a)


# -- config -------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    {"name": "has space", "subjects": ["x"]}, {"name": "q", "subjects": "x"}, {"name": "q", "subjects": ["$Q.x"]},
    {"name": "q", "subjects": ["x"], "max_bytes": 1.5}, {"name": "q", "subjects": ["x"], "backoff": [0]},
    {"name": "q", "subjects": ["x"], "discard": "both"}, {"name": "q", "subjects": ["x"], "sync": "never"}, {"name": "q", "subjects": ["x"], "max_age": True and "1"},
])
def test_config_refuses_bad_values(bad):
    with pytest.raises(QueueError) as e:
        QueueConfig.parse(bad)
    assert e.value.code == "bad_queue_config"


def test_config_round_trips():
    c = cfg(retention="work", max_msgs=5, backoff=[1, 2], ack_wait=3)
    assert QueueConfig.parse(c.to_dict()) == c


# -- retention, dedupe, groups --------------------------------------------------------
def test_discard_old_new_and_max_age():
    q = Queue(cfg(max_msgs=2))
    for t in range(4):
        q.append(float(t), 10)
    assert list(q.msgs) == [3, 4] and q.discarded == 2
    q = Queue(cfg(max_bytes=25, discard="new"))
    q.append(0.0, 10)
    q.append(0.0, 10)
    with pytest.raises(QueueError) as e:
        q.append(0.0, 10)
    assert e.value.code == "queue_full" and q.last_seq == 2
    q = Queue(cfg(max_age=10))
    q.append(0.0, 1)
    q.append(5.0, 1)
    q.tick(12.0)
    assert list(q.msgs) == [2]


def test_dedupe_window():
    q = Queue(cfg(dedupe_window=10))
    assert q.append(0.0, 1, "a") == (1, False)
    assert q.append(5.0, 1, "a") == (1, True)
    assert q.append(11.0, 1, "a") == (2, False)


def test_backoff_and_max_deliver_dead_letters():
    q = Queue(cfg(ack_wait=100, backoff=[1, 4], max_deliver=3))
    q.append(0.0, 1)
    g = q.group("g")
    assert q.fetch(g, 10, 0.0) == [(1, 1)]
    assert q.fetch(g, 10, 0.9) == []
    assert q.fetch(g, 10, 1.0) == [(1, 2)]
    assert q.fetch(g, 10, 4.9) == []
    assert q.fetch(g, 10, 5.0) == [(1, 3)]
    q.take_changes()
    q.tick(9.0)
    changes, _ = q.take_changes()
    assert ("dlq", "g", 1, 3) in changes and g.dead == 1 and not g.pending


def test_start_positions_and_work_retention():
    q = Queue(cfg(retention="work"))
    for t in range(3):
        q.append(float(t), 1)
    g = q.group("g", "last")
    assert q.fetch(g, 10, 0.0) == [(3, 1)]
    with pytest.raises(QueueError):
        q.group("h")
    q.ack(g, 3)
    assert list(q.msgs) == [1, 2]
    q2 = Queue(cfg())
    for t in range(5):
        q2.append(float(t), 1)
    assert q2.group("t", ["time", 2.5]).cursor == 4
    assert q2.group("n", "new").cursor == 6
    assert q2.group("s", 2).cursor == 2
    with pytest.raises(QueueError):
        q2.group("x", "middle")


# -- the state machine under random operations ----------------------------------------
_op = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 3)),
    st.tuples(st.just("fetch"), st.integers(1, 4)),
    st.tuples(st.sampled_from(["ack", "nak", "term", "wip"]), st.integers(0, 20)),
    st.tuples(st.just("time"), st.floats(0.1, 3.0)),
    st.tuples(st.just("tick"), st.just(0)),
)


def _run(q: Queue, ops, on_deliver=lambda seq, n: None, after_op=None):
    now = 0.0
    g = q.group("g")
    held: list = []
    for op, arg in ops:
        if after_op is not None:
            after_op()
        if op == "append":
            for _ in range(arg):
                q.append(now, 5)
        elif op == "fetch":
            for seq, n in q.fetch(g, arg, now):
                on_deliver(seq, n)
                held.append(seq)
        elif op == "time":
            now += arg
        elif op == "tick":
            q.tick(now)
        elif held:
            seq = held[arg % len(held)]
            if op == "ack":
                q.ack(g, seq)
            elif op == "term":
                q.term(g, seq)
            elif op == "nak":
                q.nak(g, seq, now, 0.5)
            else:
                q.in_progress(g, seq, now)
    return g, now


@settings(max_examples=200, deadline=None)
@given(st.lists(_op, max_size=60), st.sampled_from(["limits", "work"]), st.integers(0, 3))
def test_random_operations_keep_the_promises(ops, retention, max_deliver):
    q = Queue(cfg(retention=retention, ack_wait=1.0, max_deliver=max_deliver))
    done: set = set()
    firsts: list = []
    counts: dict = {}

    def deliver(seq, n):
        assert seq in q.msgs, "delivered an event that is not stored"
        assert seq not in done, "redelivered an acked or terminated event"
        assert n == counts.get(seq, 0) + 1
        counts[seq] = n
        if max_deliver:
            assert n <= max_deliver
        if n == 1:
            firsts.append(seq)

    g = q.group("g")
    orig_ack, orig_term = q.ack, q.term
    q.ack = lambda g, s: (done.add(s) if g.pending.get(s) else None, orig_ack(g, s))[1]
    q.term = lambda g, s: (done.add(s) if g.pending.get(s) else None, orig_term(g, s))[1]
    g, now = _run(q, ops, deliver)
    assert firsts == sorted(firsts), "first deliveries follow sequence order"
    # liveness: keep fetching and acking; every stored event is delivered or dead-lettered
    for _ in range(200):
        now += 5.0
        q.tick(now)
        for seq, n in q.fetch(g, 100, now):
            deliver(seq, n)
            q.ack(g, seq)
    if max_deliver == 0:
        assert set(q.msgs) <= done | set(counts) and not g.pending
    if retention == "work":
        assert not (set(q.msgs) & done)


# -- persistence round trip -----------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(st.lists(_op, max_size=40), st.booleans(), st.sampled_from(["limits", "work"]))
@example([("append", 3), ("fetch", 3), ("ack", 1)], False, "limits")          # an ack above the floor
@example([("append", 4), ("fetch", 4), ("ack", 2), ("ack", 0)], True, "limits")   # the floor passes it
@example([("append", 4), ("fetch", 4), ("ack", 2), ("time", 2.0), ("fetch", 4), ("ack", 0)], True, "work")
def test_store_round_trip_restores_the_model(tmp_path_factory, ops, every_op, retention):
    """Persisted once at the end, or after every operation (as the worker commits every pass):
    the restored group has the same cursor, counters and unacked deliveries (with their counts)."""
    path = str(tmp_path_factory.mktemp("db") / "w0.db")
    store = SqliteStore(path)
    c = cfg(ack_wait=1.0, max_msgs=8, retention=retention)
    q = Queue(c)
    qid = store.add_queue(c.to_dict())
    orig_append = q.append

    def persist():
        changes, groups = q.take_changes()
        store.apply(qid, q.last_seq, changes, groups)
        store.commit()

    def append(now, size, msg_id=None):
        seq, dup = orig_append(now, size, msg_id)
        store.append([(qid, seq, now, "q.x", b"p" * size, None, msg_id)])
        return seq, dup
    q.append = append
    _run(q, ops, after_op=persist if every_op else None)
    persist()
    store.close()
    store2 = SqliteStore(path)
    [(qid2, config, last_seq, msgs, gs)] = list(store2.load())
    r = Queue(QueueConfig.parse(config))
    for seq, ts, size, msg_id in msgs:
        r.restore_msg(seq, ts, size, msg_id)
    r.last_seq = last_seq
    for name, cursor, counters, pend in gs:
        r.restore_group(name, cursor, counters, pend, 0.0)
    assert (list(r.msgs), r.last_seq, r.bytes) == (list(q.msgs), q.last_seq, q.bytes)
    rg, qg = r.groups["g"], q.groups["g"]
    assert (rg.cursor, rg.counters()) == (qg.cursor, qg.counters())
    assert {s: p[1] for s, p in rg.pending.items()} == {s: p[1] for s, p in qg.pending.items() if s in q.msgs}
    store2.close()


def test_store_refuses_newer_and_damaged_files_without_touching_them(tmp_path):
    newer = tmp_path / "newer.db"
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(StoreRefused, match="newer"):
        SqliteStore(str(newer))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"x" * 4096)
    with pytest.raises(StoreRefused, match="cannot be used"):
        SqliteStore(str(junk))
    assert junk.read_bytes() == b"x" * 4096


# -- the request decoder ----------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=40),
                 st.dictionaries(st.sampled_from(["op", "group", "batch", "seqs", "expires", "delay", "config"]),
                                 st.one_of(st.none(), st.integers(-5, 10**6), st.text(max_size=8),
                                           st.lists(st.integers(-2, 5), max_size=3), st.floats()),
                                 max_size=5).map(msgpack.packb)))
def test_decode_request_accepts_or_refuses_cleanly(payload):
    try:
        op, queue, req = api.decode_request("$Q.jobs", payload)
    except QueueError as e:
        assert e.code == "bad_queue_request"
        return
    assert op in api.OPS and queue == "jobs"


def test_ls_subjects_cover_every_worker():
    from tscale.sharding import shard_of
    for n in (1, 2, 7, 64):
        subs = api.ls_subjects(n)
        assert [shard_of(s, n) for s in subs] == list(range(n))


def test_store_migrates_a_schema_1_file(tmp_path):
    """A file of schema 1 (a row per unacked delivery, no floor) opens, keeps its deliveries, and
    its once-delivered rows are removed when acked."""
    path = str(tmp_path / "w0.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("""
        PRAGMA journal_mode=WAL;
        CREATE TABLE queues (qid INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, config BLOB NOT NULL,
                             last_seq INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE msgs (qid INTEGER NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, name TEXT NOT NULL,
                           payload BLOB NOT NULL, meta BLOB, msg_id TEXT, PRIMARY KEY (qid, seq)) WITHOUT ROWID;
        CREATE TABLE groups (qid INTEGER NOT NULL, name TEXT NOT NULL, cursor INTEGER NOT NULL,
                             counters BLOB NOT NULL, PRIMARY KEY (qid, name)) WITHOUT ROWID;
        CREATE TABLE pending (qid INTEGER NOT NULL, grp TEXT NOT NULL, seq INTEGER NOT NULL,
                              deliveries INTEGER NOT NULL, PRIMARY KEY (qid, grp, seq)) WITHOUT ROWID;
        PRAGMA user_version=1;
    """)
    c = cfg()
    db.execute("INSERT INTO queues VALUES (1, 'q', ?, 4)", (msgpack.packb(c.to_dict()),))
    for seq in range(1, 5):
        db.execute("INSERT INTO msgs VALUES (1, ?, 0.0, 'q.x', x'00', NULL, NULL)", (seq,))
    db.execute("INSERT INTO groups VALUES (1, 'g', 4, ?)", (msgpack.packb([3, 1, 1, 0, 0]),))
    db.executemany("INSERT INTO pending VALUES (1, 'g', ?, ?)", [(2, 1), (3, 2)])
    db.close()

    def load(store):
        [(qid, config, last_seq, msgs, gs)] = list(store.load())
        q = Queue(QueueConfig.parse(config))
        for seq, ts, size, msg_id in msgs:
            q.restore_msg(seq, ts, size, msg_id)
        q.last_seq = last_seq
        for name, cursor, counters, pend in gs:
            q.restore_group(name, cursor, counters, pend, 0.0)
        return qid, q

    store = SqliteStore(path)
    qid, q = load(store)
    g = q.groups["g"]
    assert {s: p[1] for s, p in g.pending.items()} == {2: 1, 3: 2} and g.cursor == 4
    assert q.ack(g, 2)
    changes, groups = q.take_changes()
    store.apply(qid, q.last_seq, changes, groups)
    store.commit()
    store.close()
    store = SqliteStore(path)
    _qid, q = load(store)
    assert {s: p[1] for s, p in q.groups["g"].pending.items()} == {3: 2}
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()


def test_store_commit_without_sync_is_kept_and_synced_later(tmp_path):
    """sync "interval": a transaction of such writes runs at synchronous=NORMAL; its COMMIT is
    readable by a new connection at once (in the WAL, in the OS), is remembered as unsynced until
    sync_wal, and a write that needs the fsync makes the commit sync (covering the earlier ones)."""
    path = str(tmp_path / "w0.db")
    store = SqliteStore(path)
    c = cfg(sync="interval")
    assert c.sync == "interval" and QueueConfig.parse(c.to_dict()) == c
    qid = store.add_queue(c.to_dict())
    store.commit()
    assert store.unsynced_since is None
    level = lambda: store.db.execute("PRAGMA synchronous").fetchone()[0]   # noqa: E731
    assert level() == 2                                                   # FULL
    store.append([(qid, 1, 0.0, "q.x", b"p", None, None)], sync=False)
    assert level() == 1                                                   # NORMAL
    store.commit()
    assert store.unsynced_since is not None
    other = sqlite3.connect(path)
    assert other.execute(f"SELECT sum(n) FROM s{qid}").fetchone()[0] == 1
    other.close()
    store.sync_wal()
    assert store.unsynced_since is None
    store.append([(qid, 2, 0.0, "q.x", b"p", None, None)], sync=False)
    store.commit()
    assert store.unsynced_since is not None
    store.append([(qid, 3, 0.0, "q.x", b"p", None, None)], sync=False)
    store.apply(qid, 3, [], [], sync=True)       # a write that needs the fsync joins: WAL fsynced at commit
    store.commit()
    assert store.unsynced_since is None
    store.append([(qid, 4, 0.0, "q.x", b"p", None, None)])
    assert level() == 2                          # a new transaction for an "always" write: FULL again
    store.commit()
    store.close()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=6), st.sets(st.integers(1, 600)),
       st.integers(1, 3000), st.booleans())
def test_store_runs_keep_every_event_and_forget_deleted_ones(tmp_path_factory, writes, dels, size, reopen_between):
    """Events written in runs (one row per run of consecutive sequences, split at SEGMENT_EVENTS and
    SEGMENT_BYTES): each reads back as written; deleted ones are neither read nor loaded, and a run
    whose every event is deleted leaves no row (nor `gone` rows) behind."""
    from tscale.queues import store as store_mod
    path = str(tmp_path_factory.mktemp("db") / "w0.db")
    store = SqliteStore(path)
    qid = store.add_queue(cfg().to_dict())
    store.commit()
    seq, want = 0, {}
    for n in writes:
        rows = []
        for _ in range(n):
            seq += 1
            meta = [{"h": str(seq)}, None] if seq % 3 == 0 else None
            rows.append((qid, seq, float(seq), f"q.{seq}", bytes([seq % 256]) * (size if seq % 7 == 0 else 5),
                         meta, f"id{seq}" if seq % 2 else None))
            want[seq] = rows[-1]
        store.append(rows)
        store.commit()
    dels = sorted(d for d in dels if d in want)
    half = len(dels) // 2
    for part in (dels[:half], dels[half:]):
        store.apply(qid, None, [("del", s) for s in part], [])
        store.commit()
        for s in part:
            del want[s]
        if reopen_between:
            store.close()
            store = SqliteStore(path)
            list(store.load())
    got = store.read(qid, list(range(1, seq + 2)))
    assert got == {s: (r[3], r[4], r[5], r[2]) for s, r in want.items()}
    store.close()
    store = SqliteStore(path)
    [(_qid, _config, _last, msgs, _gs)] = list(store.load())
    assert msgs == [(s, r[2], len(r[4]), r[6]) for s, r in sorted(want.items())]
    assert store.read(qid, sorted(want)[:50]) == {s: (r[3], r[4], r[5], r[2]) for s, r in sorted(want.items())[:50]}
    rows = store.db.execute(f"SELECT seq, n FROM s{qid}").fetchall()
    assert all(1 <= n <= store_mod.SEGMENT_EVENTS for _, n in rows)
    assert all(any(a <= s < a + n for s in want) for a, n in rows)    # no run without a stored event
    gone = [s for (s,) in store.db.execute("SELECT seq FROM gone WHERE qid=?", (qid,))]
    assert not set(gone) & set(want) and all(any(a <= s < a + n for a, n in rows) for s in gone)
    store.close()


def test_store_migrates_a_schema_3_file_to_runs(tmp_path):
    """Schema 3 (a row per event in m<qid>) opens as runs: same events, same metas, in rows of
    consecutive sequences; the old table is gone."""
    path = str(tmp_path / "w0.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("""
        PRAGMA journal_mode=WAL;
        CREATE TABLE queues (qid INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, config BLOB NOT NULL,
                             last_seq INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE groups (qid INTEGER NOT NULL, name TEXT NOT NULL, cursor INTEGER NOT NULL,
                             counters BLOB NOT NULL, floor INTEGER, PRIMARY KEY (qid, name)) WITHOUT ROWID;
        CREATE TABLE pending (qid INTEGER NOT NULL, grp TEXT NOT NULL, seq INTEGER NOT NULL,
                              deliveries INTEGER NOT NULL, PRIMARY KEY (qid, grp, seq)) WITHOUT ROWID;
        CREATE TABLE done (qid INTEGER NOT NULL, grp TEXT NOT NULL, seq INTEGER NOT NULL,
                           PRIMARY KEY (qid, grp, seq)) WITHOUT ROWID;
        CREATE TABLE m1 (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, name TEXT NOT NULL, payload BLOB NOT NULL,
                         meta BLOB, msg_id TEXT);
        PRAGMA user_version=3;
    """)
    db.execute("INSERT INTO queues VALUES (1, 'q', ?, 300)", (msgpack.packb(cfg().to_dict()),))
    stored = [s for s in range(1, 301) if s not in (5, 6, 200)]
    for s in stored:
        db.execute("INSERT INTO m1 VALUES (?, ?, ?, ?, ?, ?)",
                   (s, float(s), f"q.{s}", b"x" * s, msgpack.packb([{"k": "v"}, None]) if s == 7 else None,
                    "m" if s == 8 else None))
    db.close()
    store = SqliteStore(path)
    [(qid, _config, last_seq, msgs, _gs)] = list(store.load())
    assert last_seq == 300 and [m[0] for m in msgs] == stored
    assert msgs[5] == (8, 8.0, 8, "m")
    got = store.read(qid, stored)
    assert got[7] == ("q.7", b"x" * 7, [{"k": "v"}, None], 7.0) and got[300] == ("q.300", b"x" * 300, None, 300.0)
    assert len(got) == len(stored)
    tables = {t for (t,) in store.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "m1" not in tables and "s1" in tables
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    store.close()


def test_client_reply_names_are_owned_by_the_worker_that_answers():
    """Batch names (one per worker) and reply names for a given worker are owned by that worker, so
    a home's confirms and fetch answers reach the client without a worker-to-worker hop."""
    from tscale.client_core import ClientCore
    from tscale.sharding import shard_of
    core = ClientCore()
    for n in (1, 2, 3, 8):
        core.workers = n
        names = core.confirm_batch_names()
        assert [shard_of(b, n) for b in names] == list(range(n))
        assert all(b.startswith(core.inbox_prefix) and "." not in b[len(core.inbox_prefix):] for b in names)
        for k in range(n):
            r = core.inbox_owned_by(k)
            assert shard_of(r, n) == k and r.startswith(core.inbox_prefix)
    assert len({core.inbox_owned_by(0) for _ in range(50)}) == 50      # fresh each time


def test_confirm_future_behaves_as_a_concurrent_future():
    """ConfirmFuture (the sync client's publish_future result) makes its Condition lazily: set before
    or after a waiter, from another thread, with exceptions, callbacks, wait() and as_completed()."""
    import concurrent.futures as cf
    import threading
    import time as _time
    from tscale.client import ConfirmFuture
    f = ConfirmFuture()
    assert isinstance(f, cf.Future) and not f.done()
    f.set_result(1)                                  # before anyone waits: no Condition made
    assert f.done() and f.result(0) == 1 and f._cond is None
    with pytest.raises(cf.InvalidStateError):
        f.set_result(2)
    f = ConfirmFuture()
    with pytest.raises(cf.TimeoutError):
        f.result(0.01)
    threading.Timer(0.05, f.set_result, (3,)).start()   # a waiter first, then the result
    assert f.result(5) == 3
    f = ConfirmFuture()
    threading.Timer(0.05, f.set_exception, (ValueError("x"),)).start()
    with pytest.raises(ValueError):
        f.result(5)
    f = ConfirmFuture()
    f.set_exception(KeyError("k"))
    assert isinstance(f.exception(0), KeyError)
    with pytest.raises(KeyError):
        f.result(0)
    seen = []
    f = ConfirmFuture()
    f.add_done_callback(lambda x: seen.append(x.result()))
    f.set_result(4)
    assert seen == [4]
    fs = [ConfirmFuture() for _ in range(20)]
    for i, x in enumerate(fs[:10]):
        x.set_result(i)
    threading.Timer(0.05, lambda: [x.set_result(i) for i, x in enumerate(fs[10:])]).start()
    done, not_done = cf.wait(fs, timeout=5)
    assert len(done) == 20 and not not_done
    assert sorted(x.result() for x in cf.as_completed(fs, timeout=5)) == sorted(list(range(10)) * 2)
    # racing a setter against a waiter many times: a waiter never misses its result
    for _ in range(300):
        f = ConfirmFuture()
        t = threading.Thread(target=f.set_result, args=(7,))
        t.start()
        assert f.result(5) == 7
        t.join()
    c = ConfirmFuture()
    assert c.cancel() and c.cancelled()
    _time.sleep(0)


def test_store_purge_keeps_events_appended_after_it_in_the_same_pass(tmp_path):
    """A pass can store events after a purge request (the API's sink ran first): the purge, written
    at the end of the pass, deletes only what was stored before it, as the model did."""
    path = str(tmp_path / "w0.db")
    store = SqliteStore(path)
    q = Queue(cfg())
    qid = store.add_queue(q.cfg.to_dict())
    store.commit()

    def append(n):
        rows = []
        for _ in range(n):
            seq, _dup = q.append(0.0, 1)
            rows.append((qid, seq, 0.0, "q.x", b"p", None, None))
        store.append(rows)
    append(3)
    store.commit()
    append(2)            # the same pass: events, the purge, more events
    assert q.purge() == 5
    append(2)
    changes, groups = q.take_changes()
    store.apply(qid, q.last_seq, changes, groups)
    store.commit()
    assert sorted(store.read(qid, list(range(1, 10)))) == [6, 7] == list(q.msgs)
    store.close()
    store = SqliteStore(path)
    [(_qid, _config, last_seq, msgs, _gs)] = list(store.load())
    assert [m[0] for m in msgs] == [6, 7] and last_seq == 7
    store.close()


def test_store_purge_up_to_a_sequence_inside_a_run(tmp_path):
    """("purge", n) inside a run (not written so by the worker, but the store allows it): the run's
    head is marked gone, its tail stays; whole runs before it go with their gone rows."""
    path = str(tmp_path / "w0.db")
    store = SqliteStore(path)
    qid = store.add_queue(cfg().to_dict())
    store.append([(qid, s, 0.0, "q.x", bytes([s]), None, None) for s in range(1, 4)])
    store.append([(qid, s, 0.0, "q.x", bytes([s]), None, None) for s in range(4, 10)])
    store.commit()
    store.apply(qid, None, [("del", 2)], [])
    store.apply(qid, None, [("purge", 6)], [])
    store.commit()
    assert sorted(store.read(qid, list(range(1, 12)))) == [7, 8, 9]
    store.close()
    store = SqliteStore(path)
    [(_qid, _c, _l, msgs, _g)] = list(store.load())
    assert [m[0] for m in msgs] == [7, 8, 9]
    assert store.db.execute("SELECT seq FROM gone").fetchall() == [(4,), (5,), (6,)]
    assert store.db.execute(f"SELECT seq, n FROM s{qid}").fetchall() == [(4, 6)]
    store.close()


@pytest.mark.parametrize("blob", [b"\xc1", b"\x93\x01\x02", msgpack.packb([[1.0, "q.x"]]), msgpack.packb(7)])
def test_store_refuses_a_file_whose_stored_run_is_damaged(tmp_path, blob):
    """A run row that does not unpack (or not into events) makes load() refuse the file with
    StoreRefused, not raise whatever msgpack raised (the worker would restart on it for ever)."""
    path = str(tmp_path / "w0.db")
    store = SqliteStore(path)
    qid = store.add_queue(cfg().to_dict())
    store.append([(qid, seq, time.time(), "q.x", b"p", None, None) for seq in (1, 2, 3)])
    store.commit()
    store.close()
    db = sqlite3.connect(path)
    db.execute(f"UPDATE s{qid} SET data=?", (blob,))
    db.commit()
    db.close()
    before = open(path, "rb").read()
    store = SqliteStore(path)
    with pytest.raises(StoreRefused, match="cannot be read"):
        list(store.load())
    store.close()
    assert open(path, "rb").read() == before
