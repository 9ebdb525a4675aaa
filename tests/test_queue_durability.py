"""Durable queues under faults: SIGKILL of the home worker, of the whole node, of a consumer;
a full disk; a database from a newer version or a damaged one.  Real processes, real files."""
from __future__ import annotations

import concurrent.futures
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import tscale
from conftest import ROOT, clean_env, wait_until
from queuekit import drain, qname
from tscale.queues.api import api_subject
from tscale.sharding import shard_of


def home_of(q: str, workers: int) -> int:
    return shard_of(api_subject(q), workers)


def queue_named(q: str, want: int, workers: int = 2) -> str:
    """A queue name whose home is worker `want`."""
    for i in range(1000):
        name = f"{q}{i}"
        if home_of(name, workers) == want:
            return name
    raise AssertionError("unreachable")


def info_when_up(c, q: str) -> dict:
    return wait_until(lambda: c.queue_info(q, timeout=2), timeout=30, what=f"queue {q} served again",
                      ignore=(tscale.TscaleError,))


@pytest.mark.parametrize("sync", ["always", "interval"])
def test_sigkill_home_worker_during_confirmed_publishes_loses_nothing_confirmed(make_node, clients, sync):
    """With sync "interval" a confirm follows a COMMIT that was not fsynced: the data is in the OS,
    so a process crash loses nothing either (only a machine crash could)."""
    node = make_node(workers=2)
    c = clients(node)
    q = qname("kill")
    c.queue_add(q, f"{q}.>", sync=sync)
    home = home_of(q, 2)
    confirmed, failed = set(), 0
    killed = False
    i = 0
    deadline = time.monotonic() + 60
    while (len(confirmed) < 3000 or not killed) and time.monotonic() < deadline:
        # a window of 200 outstanding confirms per round; answers are awaited together
        batch = []
        for _ in range(200):
            data = b"e%d" % i
            batch.append((data, c.publish_future(f"{q}.x", data)))
            i += 1
        if not killed and len(confirmed) >= 500:
            old_pid = node.kill_worker(home)       # while this round is in flight
            killed = True
        concurrent.futures.wait([f for _, f in batch], timeout=5.0)
        for data, f in batch:
            if f.done() and f.exception() is None:
                confirmed.add(data)
            else:
                c._q_handlers.pop(f.reply, None)
                failed += 1
    assert killed
    info = info_when_up(c, q)
    assert node.worker_pids()[home] != old_pid, "the home worker was restarted"
    got = {m.data for m in drain(c.consumer(q, "audit"), info["messages"])}
    missing = confirmed - got
    assert not missing, f"{len(missing)} confirmed events lost, e.g. {sorted(missing)[:5]}"
    assert len(confirmed) >= 3000


@pytest.mark.parametrize("sync", ["always", "interval"])
def test_sigkill_whole_node_keeps_queues_events_and_positions(make_node, clients, sync):
    node = make_node(workers=2)
    c = clients(node)
    q = qname("node")
    c.queue_add(q, f"{q}.>", ack_wait=1.0, sync=sync)
    for i in range(100):
        c.publish_future(f"{q}.x", b"%d" % i)
    c.publish(f"{q}.x", b"100", confirm=True)
    cons = c.consumer(q, "g")
    first = cons.fetch(30, timeout=2)
    assert [m.seq for m in first] == list(range(1, 31))
    for m in first[:20] + first[24:25]:      # 1..20 except 5, and 25: an ack above the ack floor
        if m.seq != 5:
            m.ack()
    c.flush()
    assert c.queue_info(q)["groups"]["g"]["acked"] == 20
    c.close()
    os.killpg(node.proc.pid, signal.SIGKILL)     # supervisor and workers, no goodbye
    node.proc.wait(10)
    wait_until(lambda: not any(_alive(p) for p in node._seen_pids), what="every node process gone")
    node.start()
    c2 = clients(node)
    info = info_when_up(c2, q)
    assert (info["messages"], info["first_seq"], info["last_seq"]) == (101, 1, 101)
    g = info["groups"]["g"]
    assert (g["cursor"], g["acked"], g["ack_pending"]) == (31, 20, 10)
    seqs = [m.seq for m in drain(c2.consumer(q, "g"), 81, 15)]
    assert sorted(seqs) == [5] + [s for s in range(21, 102) if s != 25], \
        "the unacked 5, 21..24, 26..30 come back, the acked 1..20 and 25 never"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_sigkill_consumer_holding_unacked_events_another_member_gets_them(node2, clients):
    c = clients(node2)
    q = qname("cons")
    c.queue_add(q, f"{q}.>", ack_wait=1.5)
    for i in range(5):
        c.publish(f"{q}.job", b"job%d" % i, confirm=True)
    code = ("import sys, tscale\n"
            f"c = tscale.Client({node2.addr!r})\n"
            f"ms = c.consumer({q!r}, 'workers').fetch(5, timeout=5)\n"
            "print(len(ms), flush=True)\n"
            "sys.stdin.read()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                         env=clean_env(), cwd=str(ROOT))
    try:
        assert p.stdout.readline().strip() == b"5"
        assert c.queue_info(q)["groups"]["workers"]["ack_pending"] == 5
        p.kill()
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    cons = c.consumer(q, "workers")
    assert cons.fetch(5, timeout=0.2) == [], "not before ack_wait"
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 5 and time.monotonic() < deadline:
        got += cons.fetch(5, timeout=1.0)
    assert sorted(m.data for m in got) == [b"job%d" % i for i in range(5)]
    assert all(m.deliveries == 2 for m in got)


def test_disk_full_gives_storage_full_loses_nothing_and_recovers(make_node, clients):
    node = make_node(workers=2, start=False)
    data_dir = node.tmp_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(data_dir)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        filler = data_dir / "filler"
        filler.write_bytes(b"\0" * (1024 * 1024))
        node.start()
        c = clients(node)
        q = qname("full")
        c.queue_add(q, f"{q}.>")
        s = c.subscribe(f"{q}.>")
        confirmed, error = [], None
        payload = os.urandom(60_000)
        for i in range(200):
            try:
                confirmed.append(c.publish(f"{q}.x", payload + b"%d" % i, confirm=True).seq)
            except tscale.ServerError as exc:
                error = exc
                break
        assert error is not None and error.code == "storage_full", f"never filled up ({len(confirmed)} stored)"
        assert confirmed == list(range(1, len(confirmed) + 1))
        # pub/sub keeps working while the disk is full
        plain = qname("plain")
        s2 = c.subscribe(f"{plain}.>")
        c.publish(f"{plain}.x", b"still flowing")
        assert s2.next_msg(5).data == b"still flowing"
        info = c.queue_info(q)
        assert info["messages"] == len(confirmed)
        # space returns: the queue accepts again, and everything confirmed is intact
        filler.unlink()
        wait_until(lambda: _try_confirm(c, f"{q}.x"), timeout=20, what="a confirm once space returned")
        got = drain(c.consumer(q, "audit"), len(confirmed) + 1)
        want = {payload + b"%d" % i for i in range(len(confirmed))}
        assert want <= {m.data for m in got}
        assert s.next_msg(5).data.startswith(payload[:10])
    finally:
        node.stop()
        subprocess.run(["umount", "-l", str(data_dir)], capture_output=True)


def _try_confirm(c, name: str) -> bool:
    try:
        c.publish(name, b"after", confirm=True)
        return True
    except tscale.ServerError as exc:
        assert exc.code == "storage_full", exc
        return False


@pytest.mark.parametrize("damage", ["newer", "garbage", "run"])
def test_newer_or_damaged_database_refuses_its_queues_and_the_rest_serves(make_node, clients, damage):
    node = make_node(workers=2, start=False)
    qdir = node.tmp_dir / "data" / "queues"
    qdir.mkdir(parents=True)
    bad = qdir / "w0.db"
    if damage == "newer":
        db = sqlite3.connect(bad)
        db.execute("PRAGMA user_version=99")
        db.execute("CREATE TABLE future (x)")
        db.commit()
        db.close()
    elif damage == "garbage":
        bad.write_bytes(b"this is not an sqlite database" * 100)
    else:                 # a sound sqlite file whose stored run of events does not unpack
        from tscale.queues.store import SqliteStore
        store = SqliteStore(str(bad))
        qid = store.add_queue({"name": "old", "subjects": ["old.>"]})
        store.append([(qid, 1, time.time(), "old.x", b"p", None, None)])
        store.commit()
        store.close()
        db = sqlite3.connect(bad)
        db.execute(f"UPDATE s{qid} SET data=?", (b"\x93\x01\x02",))
        db.commit()
        db.close()
    before = bad.read_bytes()
    node.start()
    c = clients(node)
    on_bad, on_good = queue_named(qname("bad"), 0), queue_named(qname("good"), 1)
    with pytest.raises(tscale.ServerError) as e:
        c.queue_add(on_bad, f"{on_bad}.>")
    assert e.value.code == "queue_unavailable" and "w0.db" in e.value.message
    assert {"newer": "newer", "garbage": "cannot be used", "run": "cannot be read"}[damage] in e.value.message
    c.queue_add(on_good, f"{on_good}.>")
    assert c.publish(f"{on_good}.x", b"ok", confirm=True).seq == 1
    s = c.subscribe(f"{on_bad}.>")
    c.publish(f"{on_bad}.x", b"pubsub")
    assert s.next_msg(5).data == b"pubsub"
    assert bad.read_bytes() == before, "a refused database is never rewritten"
    assert node.status()["workers"][0]["restarts"] == 0, "the worker refused the file, it did not crash on it"
    assert "refusing its queues" in node.log_text() or "cannot be used" in node.log_text()
