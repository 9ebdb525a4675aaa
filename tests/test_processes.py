"""Process supervision: a SIGKILLed worker comes back and clients keep receiving; SIGTERM/SIGINT
stop everything cleanly; a SIGKILLed supervisor takes its workers with it."""
from __future__ import annotations

import os
import signal
import socket
import time

import psutil
import pytest
import zmq

from conftest import DEADLINE, name_for, pids_alive, uniq, wait_until


def listening(port: int) -> bool:
    """Is anything still listening on 127.0.0.1:port? (SO_REUSEADDR: TIME_WAIT does not count.)"""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return False
    except OSError:
        return True
    finally:
        s.close()


def worker_entry(node, index):
    return [w for w in node.status(timeout=2.0)["workers"] if w["index"] == index][0]


def receive_after_retrying(publish, take, what: str, timeout: float = 30.0):
    """Publish again and again until the subscriber gets one of the new events (a restarted
    worker may need a moment before it is reachable); returns the message."""
    deadline = time.monotonic() + timeout
    i = 0
    while time.monotonic() < deadline:
        publish(f"after-{i}".encode())
        i += 1
        m = take(0.2)
        if m is not None:
            return m
    raise AssertionError(f"{what}: nothing received within {timeout:g}s after {i} publishes")


@pytest.mark.parametrize("victim", [0, 1])
def test_sigkilled_worker_restarted_and_clients_keep_receiving(make_node, clients, raws, victim):
    node = make_node(2)
    P = uniq("kill")
    name = name_for(victim, 2, P)
    sub_client = clients(node, name="survivor")
    literal = sub_client.subscribe(name)
    wildcard = sub_client.subscribe(P + ".>")
    simple = raws(node.port, name="survivor-raw")          # proxied via worker 0
    simple_sid = simple.sub(P + ".*")
    pub = clients(node, name="kill-pub")
    pub.publish(name, b"before")
    assert literal.next_msg(DEADLINE).data == b"before"
    assert wildcard.next_msg(DEADLINE).data == b"before"
    simple.wait_events(lambda evs: len(evs) == 1)
    other = 1 - victim
    other_pid = node.worker_pids()[other]

    old = node.kill_worker(victim, signal.SIGKILL)

    def restarted():
        w = worker_entry(node, victim)
        # .get: a just-restarted worker 0 answers with its own figures only until the supervisor's
        # first status broadcast reaches it (see test_status.py)
        return w.get("pid") not in (None, old) and w.get("alive") and w.get("restarts") == 1 and w

    w = wait_until(restarted, timeout=DEADLINE, what=f"worker {victim} restarted",
                   ignore=(AssertionError, zmq.ZMQError))
    assert not pids_alive([old]), "the killed worker is gone"
    assert psutil.Process(w["pid"]).ppid() == node.proc.pid, "the new worker is the supervisor's child"
    assert sorted(node.children()) == sorted([w["pid"], other_pid])
    o = wait_until(lambda: worker_entry(node, other).get("alive") is not None and worker_entry(node, other),
                   what="a complete status entry for the other worker", ignore=(AssertionError, zmq.ZMQError))
    assert (o["pid"], o["restarts"], o["alive"]) == (other_pid, 0, True), "the other worker was not touched"

    def take_literal(t):
        try:
            return literal.next_msg(timeout=t)
        except Exception:
            return None

    m = receive_after_retrying(lambda d: pub.publish(name, d), take_literal,
                               "python subscriber after the restart")
    assert m.data.startswith(b"after-")

    def take_wildcard(t):
        try:
            return wildcard.next_msg(timeout=t)
        except Exception:
            return None

    # the wildcard subscription was restored as well (its SUB may reach the new worker a little later)
    m = receive_after_retrying(lambda d: pub.publish(name, d), take_wildcard, "wildcard subscriber after the restart")
    assert m.name == name
    if victim == 1:
        # The simple client only talks to worker 0; worker 1 learns its interest again from worker 0.
        def take_simple(t):
            simple.pump(t)
            got = [e for e in simple.events[1:] if e[0] == simple_sid]
            return got[0] if got else None
        receive_after_retrying(lambda d: pub.publish(name, d), take_simple, "simple subscriber after the restart")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_clean_shutdown(make_node, clients, sig):
    node = make_node(2)
    c = clients(node, name="connected-during-shutdown")
    c.subscribe("anything.>")
    workers = node.children()
    assert len(workers) == 2
    assert all(listening(p) for p in node.ports)
    os.kill(node.proc.pid, sig)
    rc = node.proc.wait(timeout=30)
    assert rc == 0, f"supervisor exit code {rc}; log:\n{node.log_text()[-2000:]}"
    wait_until(lambda: not pids_alive(workers), what="every worker to exit")
    wait_until(lambda: not any(listening(p) for p in node.ports), what="the node's ports to be free")
    assert "stopped" in node.log_text()
    c.close(0.5)          # a client whose node went away still closes (no hang)


def test_workers_die_with_supervisor(make_node):
    node = make_node(2)
    workers = node.children()
    assert len(pids_alive(workers)) == 2
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(timeout=10)
    wait_until(lambda: not pids_alive(workers), what="workers to die with their SIGKILLed supervisor")
    wait_until(lambda: not any(listening(p) for p in node.ports), what="the node's ports to be free")


def _environ(pid: int) -> dict:
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(kv.decode(errors="replace").split("=", 1) for kv in raw if b"=" in kv)


def test_workers_keep_large_batch_buffers_in_the_heap_unless_told_otherwise(make_node):
    """Workers start with fixed glibc malloc thresholds (supervisor.WORKER_MALLOC: a 1 MiB batch
    frame is not mmapped and unmapped each time); an operator's own GLIBC_TUNABLES wins."""
    from tscale.supervisor import WORKER_MALLOC
    node = make_node(1)
    # glibc parses the variable in place (':' becomes NUL), so /proc shows its first tunable only
    assert _environ(node.worker_pids()[0]).get("GLIBC_TUNABLES") == WORKER_MALLOC.split(":")[0]
    mine = "glibc.malloc.arena_max=2"
    node2 = make_node(1, env={"GLIBC_TUNABLES": mine})
    assert _environ(node2.worker_pids()[0]).get("GLIBC_TUNABLES") == mine
    assert node2.status()["workers"][0]["alive"]
