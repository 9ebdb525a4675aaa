"""Durable queues across nodes: home on A, publisher on C, consumer on B (tests/clusterkit.py)."""
from __future__ import annotations

import time

import pytest

import tscale
from clusterkit import HOSTS, wait_one_tree
from conftest import wait_until
from queuekit import drain, qname
from test_cluster import run  # noqa: F401  (the fixture: a ClusterRun stopped at teardown)


def test_home_on_a_publisher_on_c_consumer_on_b_and_home_loss(run):
    a = run.add(HOSTS[0], workers=2, name="qa")
    b = run.add(HOSTS[1], workers=2, join=[a], name="qb")
    c = run.add(HOSTS[2], workers=2, join=[b], name="qc")
    wait_one_tree([a, b, c])
    q = qname("xq")
    ca = run.client(a)
    info = ca.queue_add(q, f"{q}.>", ack_wait=2.0)
    assert info["config"]["home"] == "qa"
    pc, cb = run.client(c), run.client(b)
    # the home's interest reaches C and B through the overlay
    ack = wait_until(lambda: _confirm(pc, f"{q}.job", b"first"), what="a confirmed publish from C")
    assert ack.queue == q
    futures = [pc.publish_future(f"{q}.job", b"%d" % i) for i in range(300)]
    assert sorted(f.result(20).seq for f in futures) == list(range(ack.seq + 1, ack.seq + 301))
    cons = cb.consumer(q, "workers")
    got = [m.data for m in drain(cons, 301)]
    assert sorted(got) == sorted([b"first"] + [b"%d" % i for i in range(300)])
    cb.flush()
    assert wait_until(lambda: cb.queue_info(q)["groups"]["workers"]["acked"] == 301, what="acks at the home")
    with pytest.raises(tscale.ServerError) as e:
        cb.queue_add(q, f"{q}.other")
    assert e.value.code == "queue_exists"

    # the home dies: B's consumer and C's confirmed publisher get errors fast, never silence
    a.kill_hard()
    t0 = time.monotonic()
    err = wait_until(lambda: _fetch_error(cons), timeout=30, what="B's fetch to fail once the home is gone")
    t_unavailable = time.monotonic() - t0
    assert err.code == "queue_unavailable", err
    t1 = time.monotonic()
    with pytest.raises(tscale.ServerError) as e:
        pc.publish(f"{q}.job", b"while down", confirm=True, timeout=5)
    assert e.value.code == "queue_unavailable" and time.monotonic() - t1 < 1.0
    print(f"home loss seen by B's fetch after {t_unavailable:.2f}s")

    # it comes back on the same data dir: everything flows again, nothing confirmed was lost
    back = run.add(HOSTS[0], workers=2, name="qa", port=a.port)
    wait_one_tree([back, b, c], 30)
    ack2 = wait_until(lambda: _confirm(pc, f"{q}.job", b"after"), timeout=30, what="confirms after the return")
    assert ack2.seq == ack.seq + 301
    msgs = wait_until(lambda: _fetch_ok(cons), timeout=30, what="B's fetch after the return")
    assert [m.data for m in msgs] == [b"after"]


def _confirm(client, name, data):
    try:
        return client.publish(name, data, confirm=True, timeout=2)
    except tscale.TscaleError:
        return None


def _fetch_error(cons):
    try:
        cons.fetch(1, timeout=0.2)
    except tscale.ServerError as exc:
        return exc
    except tscale.Timeout:
        return None
    return None


def _fetch_ok(cons):
    try:
        return cons.fetch(10, timeout=1)
    except tscale.TscaleError:
        return None


def _add_error(client, q, subjects, **kw):
    """The error code of an add, or None once it succeeded (then the queue exists)."""
    try:
        client.queue_add(q, subjects, timeout=2, **kw)
    except tscale.ServerError as exc:
        return exc.code
    return None


def test_work_queue_overlap_is_checked_across_nodes(run):
    a = run.add(HOSTS[0], workers=2, name="oa")
    b = run.add(HOSTS[1], workers=2, join=[a], name="ob")
    wait_one_tree([a, b])
    ca, cb = run.client(a), run.client(b)
    w, lim, lim2, w2 = qname("w"), qname("l"), qname("l2"), qname("w2")
    ca.queue_add(w, f"{w}.>", retention="work")
    # once A's interest reached B, a queue on B that would store some of the work queue's events is refused
    wait_until(lambda: _add_error(cb, lim, f"{w}.x") == "bad_queue_config", timeout=20,
               what="B refusing a pattern that overlaps A's work queue")
    assert _add_error(cb, lim2, f"{lim2}.>") is None
    # and a work queue on A that would share the limits queue's events on B
    wait_until(lambda: _add_error(ca, w2, f"{lim2}.x", retention="work") == "bad_queue_config", timeout=20,
               what="A refusing a work queue that overlaps B's queue")
    assert _add_error(ca, w2, f"{w2}.>", retention="work") is None
    # the work queue removed: its patterns are free again on B
    ca.queue_rm(w)
    wait_until(lambda: _add_error(cb, lim, f"{w}.x") is None, timeout=20,
               what="B accepting the pattern once A's work queue is gone")


def test_home_option_adds_the_queue_on_the_named_node(run):
    a = run.add(HOSTS[0], workers=2, name="ha")
    b = run.add(HOSTS[1], workers=2, join=[a], name="hb")
    wait_one_tree([a, b])
    ca, cb = run.client(a), run.client(b)
    q = qname("hq")
    # from B, for A: forwarded to A once A's `$QH.` interest reached B
    info = wait_until(lambda: _add_info(cb, q, f"{q}.>", home="ha"), timeout=20, what="an add from B homed on A")
    assert info["config"]["home"] == "ha"
    assert ca.queue_info(q)["config"]["home"] == "ha"
    assert [d["config"]["name"] for d in ca.queue_ls()] == [q] and cb.queue_ls() == []
    ack = wait_until(lambda: _confirm(cb, f"{q}.x", b"1"), timeout=20, what="a confirmed publish from B")
    assert ack.queue == q and ack.seq == 1
    # the same add again is a no-op; another definition is refused; an unknown node is unavailable
    assert cb.queue_add(q, f"{q}.>", home="ha")["config"]["home"] == "ha"
    with pytest.raises(tscale.ServerError) as e:
        cb.queue_add(q, f"{q}.other", home="ha")
    assert e.value.code == "queue_exists"
    with pytest.raises(tscale.ServerError) as e:
        cb.queue_add(qname("hq2"), "hq2x.>", home="nosuch")
    assert e.value.code == "queue_unavailable" and "nosuch" in e.value.message


def _add_info(client, q, subjects, **kw):
    try:
        return client.queue_add(q, subjects, timeout=2, **kw)
    except tscale.TscaleError:
        return None
