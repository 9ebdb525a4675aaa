"""Durable queues end to end on one node: real processes, real sqlite files (docs/QUEUES.md)."""
from __future__ import annotations

import json
import os
import signal
import threading

import msgpack
import pytest

import tscale
from conftest import DEADLINE, name_for, wait_until
from queuekit import qname
from tscale.queues import api
from tscale.sharding import shard_of


def test_add_info_ls_rm_purge(node2, clients):
    c = clients(node2)
    q = qname()
    info = c.queue_add(q, f"{q}.>", max_msgs=100, ack_wait=5)
    assert info["config"]["subjects"] == [f"{q}.>"] and info["messages"] == 0
    assert c.queue_add(q, f"{q}.>", max_msgs=100, ack_wait=5)["config"]["name"] == q   # idempotent
    with pytest.raises(tscale.ServerError) as e:
        c.queue_add(q, f"{q}.other")
    assert e.value.code == "queue_exists"
    assert q in [d["config"]["name"] for d in c.queue_ls()]
    for i in range(5):
        c.publish(f"{q}.a", b"x%d" % i)
    c.flush()
    wait_until(lambda: c.queue_info(q)["messages"] == 5, what="5 stored")
    info = c.queue_info(q)
    assert (info["first_seq"], info["last_seq"], info["bytes"]) == (1, 5, 10)
    assert info["db_disk_bytes"] > 0
    assert c.queue_purge(q) == 5
    assert c.queue_info(q)["messages"] == 0
    c.queue_rm(q)
    with pytest.raises(tscale.ServerError) as e:
        c.queue_info(q)
    assert e.value.code == "queue_not_found"
    assert q not in [d["config"]["name"] for d in c.queue_ls()]


@pytest.mark.parametrize("config,needle", [
    ({"subjects": []}, "subjects"),
    ({"subjects": ["a..b"]}, "empty token"),
    ({"subjects": [">"]}, "first token"),
    ({"subjects": ["x.>"], "retention": "forever"}, "retention"),
    ({"subjects": ["x.>"], "max_msgs": -1}, "max_msgs"),
    ({"subjects": ["x.>"], "ack_wait": 0}, "ack_wait"),
    ({"subjects": ["x.>"], "colour": "red"}, "unknown"),
])
def test_bad_queue_options_are_refused_clearly(node2, clients, config, needle):
    c = clients(node2)
    q = qname()
    with pytest.raises(tscale.ServerError) as e:
        c._q_call(api.api_subject(q), "add", 5.0, config={"name": q, **config})
    assert e.value.code == "bad_queue_config" and needle in e.value.message


def test_hostile_requests_get_errors_and_the_node_keeps_serving(node2, clients):
    c = clients(node2)
    q = qname()
    c.queue_add(q, f"{q}.>")
    for payload in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"op": "explode"}),
                    msgpack.packb({"op": "fetch", "group": "g", "batch": 10**9}),
                    msgpack.packb({"op": "ack", "group": "g", "seqs": ["x"]}),
                    msgpack.packb({"op": "fetch", "group": "bad group"})):
        reply = c.request(api.api_subject(q), payload, timeout=5)
        d = msgpack.unpackb(reply.data)
        assert d["error"] == "bad_queue_request", d
    with pytest.raises(tscale.ServerError) as e:
        c._q_call(api.api_subject("no_such_queue_here"), "info", 5.0)
    assert e.value.code == "queue_not_found"
    c.publish(f"$QS.{q}.{q}.x", b"junk")                 # the pattern announcements carry nothing
    # a confirm batch name that is not a valid name: the confirm comes alone on the reply name
    reply = c.request(f"{q}.odd", b"x", timeout=5, headers={"Tscale-Confirm": "not a name"})
    assert msgpack.unpackb(reply.data) == {"queue": q, "seq": 1, "duplicate": False}
    c.publish(f"{q}.ok", b"still here", confirm=True)
    assert c.queue_info(q)["messages"] == 2


def test_confirmed_publish_pipelined_and_dedupe(node2, clients):
    c = clients(node2)
    q = qname()
    c.queue_add(q, f"{q}.*", dedupe_window=60)
    ack = c.publish(f"{q}.one", b"1", confirm=True)
    assert ack == tscale.client.PubAck(q, 1, False)
    futures = [c.publish_future(f"{q}.many", b"%d" % i) for i in range(500)]
    seqs = [f.result(20).seq for f in futures]
    assert sorted(seqs) == list(range(2, 502))
    a = c.publish(f"{q}.one", b"again", confirm=True, msg_id="job-1")
    b = c.publish(f"{q}.one", b"again", confirm=True, msg_id="job-1")
    assert not a.duplicate and b.duplicate and b.seq == a.seq
    assert c.queue_info(q)["messages"] == 502
    with pytest.raises(tscale.ServerError) as e:
        c.publish(qname("nobody") + ".x", b"?", confirm=True)
    assert e.value.code == "no_queue"


def test_consume_ack_nak_term_and_redelivery(node2, clients):
    c = clients(node2)
    q = qname()
    c.queue_add(q, f"{q}.>", ack_wait=1.0)
    for i in range(4):
        c.publish(f"{q}.job", b"%d" % i, confirm=True)
    cons = c.consumer(q, "workers")
    msgs = cons.fetch(10, timeout=2)
    assert [m.data for m in msgs] == [b"0", b"1", b"2", b"3"] and all(m.deliveries == 1 for m in msgs)
    msgs[0].ack()
    msgs[1].nak()          # at once
    msgs[2].term()
    msgs[3].in_progress()  # keeps its deadline fresh; then left unacked: back after ack_wait
    again = cons.fetch(10, timeout=2)
    assert [(m.data, m.deliveries) for m in again] == [(b"1", 2)]
    again[0].ack()
    late = cons.fetch(10, timeout=5)
    assert [(m.data, m.deliveries) for m in late] == [(b"3", 2)]
    late[0].ack()
    c.flush()    # acks are fire-and-forget events: flush orders them before the info request
    info = c.queue_info(q)["groups"]["workers"]
    assert (info["acked"], info["terminated"], info["ack_pending"], info["pending"]) == (3, 1, 0, 0)
    assert info["redelivered"] == 2
    assert cons.fetch(10, timeout=0.3) == []


def test_long_poll_fetch_wakes_on_publish(node2, clients):
    c = clients(node2)
    q = qname()
    c.queue_add(q, f"{q}.>")
    cons = c.consumer(q, "g")
    import threading
    out = []
    t = threading.Thread(target=lambda: out.extend(cons.fetch(5, timeout=10)))
    t.start()
    wait_until(lambda: "g" in c.queue_info(q)["groups"], what="group created by the parked fetch")
    c.publish(f"{q}.x", b"wake", confirm=True)
    t.join(12)
    assert [m.data for m in out] == [b"wake"]


def test_max_deliver_goes_to_dlq_and_another_queue_keeps_it(node2, clients):
    c = clients(node2)
    q = qname()
    c.queue_add(q, f"{q}.>", ack_wait=0.3, max_deliver=2)
    c.queue_add(q + "_dead", f"$DLQ.{q}")
    c.publish(f"{q}.poison", b"bad job", confirm=True)
    cons = c.consumer(q, "g")
    seen = []
    for _ in range(2):
        got = cons.fetch(1, timeout=3)
        seen += [m.deliveries for m in got]
    assert seen == [1, 2]
    wait_until(lambda: c.queue_info(q + "_dead")["messages"] == 1, what="dead letter stored")
    dead = c.consumer(q + "_dead", "ops").fetch(1, timeout=2)[0]
    assert dead.data == b"bad job" and dead.name == f"$DLQ.{q}"
    assert dead.headers["Tscale-Seq"] == "1" and dead.headers["Tscale-Deliveries"] == "2"
    assert c.queue_info(q)["groups"]["g"]["dead_lettered"] == 1
    assert cons.fetch(1, timeout=0.5) == []


def test_limits_discard_old_and_new(node2, clients):
    c = clients(node2)
    old, new = qname("old"), qname("new")
    c.queue_add(old, f"{old}.>", max_msgs=3)
    c.queue_add(new, f"{new}.>", max_msgs=3, discard="new")
    for i in range(5):
        c.publish(f"{old}.x", b"%d" % i, confirm=True)
    info = c.queue_info(old)
    assert (info["messages"], info["first_seq"], info["last_seq"], info["discarded"]) == (3, 3, 5, 2)
    for i in range(3):
        c.publish(f"{new}.x", b"%d" % i, confirm=True)
    with pytest.raises(tscale.ServerError) as e:
        c.publish(f"{new}.x", b"3", confirm=True)
    assert e.value.code == "queue_full"
    assert [m.data for m in c.consumer(new, "g").fetch(10, timeout=2)] == [b"0", b"1", b"2"]


def test_work_queue_deletes_on_ack_and_refuses_overlap(node2, clients):
    c = clients(node2)
    q = qname("work")
    c.queue_add(q, f"{q}.*", retention="work")
    with pytest.raises(tscale.ServerError) as e:
        c.queue_add(qname("other"), f"{q}.x")
    assert e.value.code == "bad_queue_config" and "overlaps" in e.value.message
    c.publish(f"{q}.a", b"1", confirm=True)
    cons = c.consumer(q, "only")
    [m] = cons.fetch(1, timeout=2)
    m.ack()
    c.flush()
    assert c.queue_info(q)["messages"] == 0
    with pytest.raises(tscale.ServerError) as e:
        c.consumer(q, "second").fetch(1, timeout=1)
    assert e.value.code == "bad_queue_request"


def test_new_group_start_positions(node2, clients):
    c = clients(node2)
    q = qname()
    c.queue_add(q, f"{q}.>")
    for i in range(5):
        c.publish(f"{q}.x", b"%d" % i, confirm=True)
    assert [m.seq for m in c.consumer(q, "a", start="first").fetch(10, timeout=1)] == [1, 2, 3, 4, 5]
    assert [m.seq for m in c.consumer(q, "b", start="last").fetch(10, timeout=1)] == [5]
    assert [m.seq for m in c.consumer(q, "c", start=3).fetch(10, timeout=1)] == [3, 4, 5]
    assert c.consumer(q, "d", start="new").fetch(10, timeout=0.3) == []
    assert [m.seq for m in c.consumer(q, "t", start=("time", 0)).fetch(10, timeout=1)] == [1, 2, 3, 4, 5]
    assert c.consumer(q, "u", start=("time", 4e9)).fetch(10, timeout=0.3) == []
    c.publish(f"{q}.x", b"5", confirm=True)
    assert [m.seq for m in c.consumer(q, "d").fetch(10, timeout=1)] == [6]
    assert [m.seq for m in c.consumer(q, "a").fetch(10, timeout=1)] == [6]   # groups are independent


def test_pubsub_subscribers_still_get_their_copies(node2, clients):
    c = clients(node2)
    q = qname()
    c.queue_add(q, f"{q}.>")
    s = c.subscribe(f"{q}.>")
    c.publish(f"{q}.x", b"both", confirm=True)
    assert s.next_msg(5).data == b"both"


def test_status_shows_queue_figures(node2, clients):
    c = clients(node2)
    q = qname()
    c.queue_add(q, f"{q}.>")
    c.publish(f"{q}.x", b"1", confirm=True)
    c.consumer(q, "g").fetch(1, timeout=1)

    def figures():
        for w in c.status()["workers"]:
            if q in (w.get("queues") or {}):
                return w["queues"][q]
        return None
    f = wait_until(lambda: (f := figures()) and f["groups"].get("g") and f, what="queue figures in status")
    assert f["messages"] == 1 and f["groups"]["g"]["ack_pending"] == 1


def test_cli_queue_pub_confirm_and_consume(node2):
    from conftest import cli, json_lines
    s = ["--server", node2.addr]
    q = qname("cli")
    r = cli(["queue", "add", q, "--subjects", f"{q}.a,{q}.b", "--max-msgs", "100", "--ack-wait", "2",
             "--backoff", "1,2", "--dedupe-window", "30", *s])
    assert r.returncode == 0, r.stderr
    assert f"queue {q}" in r.stdout.decode()
    r = cli(["pub", f"{q}.a", "job", "--confirm", "--count", "3", *s])
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == [f"stored in {q} seq {i}" for i in (1, 2, 3)]
    r = cli(["pub", f"{q}.b", "once", "--confirm", "--msg-id", "m1", "--count", "2", *s])
    assert r.stdout.decode().splitlines() == [f"stored in {q} seq 4", f"stored in {q} seq 4 (duplicate)"]
    r = cli(["pub", qname("none") + ".x", "lost", "--confirm", *s])
    assert r.returncode == 1 and b"no queue" in r.stderr
    r = cli(["queue", "info", q, "--json", *s])
    assert json.loads(r.stdout)["messages"] == 4
    assert q in cli(["queue", "ls", *s]).stdout.decode()
    assert q in [d["config"]["name"] for d in json.loads(cli(["queue", "ls", "--json", *s]).stdout)]
    r = cli(["consume", q, "--group", "g", "--count", "2", "--json", *s])
    assert r.returncode == 0, r.stderr
    assert [(m["seq"], m["data"]) for m in json_lines(r.stdout)] == [(1, "job"), (2, "job")]
    r = cli(["consume", q, "--group", "g", "--count", "2", "--no-ack", *s])
    assert r.stdout.decode().splitlines() == [f"[{q}.a] #3 job", f"[{q}.b] #4 once"]
    r = cli(["consume", q, "--group", "g", "--timeout", "0.5", *s])
    assert r.returncode == 1 and b"no event within" in r.stderr       # 3 and 4 wait for their ack_wait
    r = cli(["consume", q, "--group", "late", "--start", "last", "--count", "1", *s])
    assert r.stdout.decode().splitlines() == [f"[{q}.b] #4 once"]
    r = cli(["queue", "add", "bad name", "--subjects", "x", *s])
    assert r.returncode == 1 and b"queue name must be" in r.stderr
    assert cli(["queue", "purge", q, *s]).stdout.decode().strip() == f"queue {q}: 4 events purged"
    assert cli(["queue", "rm", q, *s]).returncode == 0
    r = cli(["queue", "info", q, *s])
    assert r.returncode == 1 and b"queue_not_found" in r.stderr


def test_asyncio_twin_confirms_consumes_and_acks(node2):
    import asyncio

    from tscale.aio import Client

    async def main():
        c = await Client.connect(node2.addr, name="test-aio-queue")
        try:
            q = qname("aio")
            info = await c.queue_add(q, [f"{q}.>"], ack_wait=1.0)
            assert info["config"]["name"] == q
            ack = await c.publish(f"{q}.x", b"one", confirm=True, msg_id="a")
            assert (ack.seq, ack.duplicate) == (1, False)
            assert (await c.publish(f"{q}.x", b"one", confirm=True, msg_id="a")).duplicate
            acks = await asyncio.gather(*[await c.publish_future(f"{q}.x", b"%d" % i) for i in range(200)])
            assert sorted(a.seq for a in acks) == list(range(2, 202))
            cons = c.consumer(q, "g")
            got = await cons.fetch(500, timeout=2)
            assert [m.seq for m in got] == list(range(1, 202))
            for m in got[1:]:
                await m.ack()
            await got[0].nak()
            again = await cons.fetch(10, timeout=2)
            assert [(m.seq, m.deliveries) for m in again] == [(1, 2)]
            await again[0].term()
            await c.flush()
            g = (await c.queue_info(q))["groups"]["g"]
            assert (g["acked"], g["terminated"], g["ack_pending"]) == (200, 1, 0)
            assert q in [d["config"]["name"] for d in await c.queue_ls()]
            assert await c.queue_purge(q) == 201
            await c.queue_rm(q)
            with pytest.raises(tscale.ServerError):
                await c.queue_info(q)
        finally:
            await c.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_overlapping_patterns_store_each_event_once_and_tiny_payloads_are_kept(node2, clients):
    c = clients(node2)
    q = qname()
    c.queue_add(q, [f"{q}.*", f"{q}.a", f"{q}.>"])
    for data in (b"", b"", b"x", b"x"):      # equal one-byte payloads are one object in CPython
        c.publish(f"{q}.a", data)
        c.publish(f"{q}.b.c", data)
    c.publish(f"{q}.a", b"end", confirm=True)
    info = c.queue_info(q)
    assert info["messages"] == 9
    got = c.consumer(q, "g").fetch(20, timeout=1)
    by_name = {n: [m.data for m in got if m.name == n] for n in (f"{q}.a", f"{q}.b.c")}
    assert by_name == {f"{q}.a": [b"", b"", b"x", b"x", b"end"], f"{q}.b.c": [b"", b"", b"x", b"x"]}


def test_cli_status_shows_the_queue_table(node2, clients):
    from conftest import cli
    c = clients(node2)
    q = qname("st")
    c.queue_add(q, f"{q}.>")
    c.publish(f"{q}.x", b"1", confirm=True)
    c.consumer(q, "readers").fetch(1, timeout=1)
    wide = {"COLUMNS": "300"}     # the shared node holds many queues by now; keep rich from eliding names
    wait_until(lambda: q in cli(["status", "--server", node2.addr], wide).stdout.decode(),
               what="queue in tscale status")
    out = cli(["status", "--server", node2.addr], wide).stdout.decode()
    assert "durable queues" in out and "readers" in out


def test_add_answers_once_every_owner_worker_has_the_patterns(make_node, clients):
    """An event published right after queue_add returns must be stored, whichever worker owns its
    name.  The add is answered only once every owner worker has applied the queue's patterns:
    with the worker that owns the names held (SIGSTOP), the add does not return; once it runs
    again, the add returns and an event published at once is stored."""
    node = make_node(2)
    c = clients(node)
    q = qname("own")
    # The queue's home worker owns `$Q.<q>`; hold the *other* worker, which owns the test names.
    home = shard_of(api.api_subject(q), 2)
    other = 1 - home
    names = [name_for(other, 2, q + ".x", start=k) for k in range(3)]
    held = node.worker_pids()[other]
    # Two clients add the same queue at once (the second add is the idempotent repeat, which
    # must wait for the same thing); their queue inboxes are in place before the hold.
    adders = [c, clients(node)]
    for a in adders:
        a.queue_ls()
    results = [{}, {}]

    def add(a, result):
        try:
            result["info"] = a.queue_add(q, q + ".>", timeout=DEADLINE)
        except Exception as exc:   # reported below
            result["error"] = exc

    os.kill(held, signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=add, args=(a, r), daemon=True) for a, r in zip(adders, results)]
        for t in threads:
            t.start()
        threads[0].join(1.0)        # bounded hold: the adds must still be waiting for the held worker
        threads[1].join(0.2)
        assert results == [{}, {}], f"an add returned while an owner worker could not know it: {results!r}"
    finally:
        os.kill(held, signal.SIGCONT)
    for t in threads:
        t.join(DEADLINE)
    assert all("info" in r for r in results), results
    for n in names:
        c.publish(n, b"right after")
    c.publish(names[0], b"end", confirm=True)
    wait_until(lambda: c.queue_info(q)["messages"] == 4, what="all four events stored")
