"""Request/reply through a live 2-worker node: replies across workers, headers both ways,
queue-group responders, and "no responders" failing fast instead of timing out."""
from __future__ import annotations

import threading
import time

import pytest

import tscale
from conftest import DEADLINE, RawClient, name_for, uniq
from tscale import protocol


class RawResponder:
    """A simple client on one port answering requests in its own thread."""

    def __init__(self, port: int, pattern: str, group: str | None = None):
        self.raw = RawClient(port, name="raw-responder")
        self.sid = self.raw.sub(pattern, group)
        self.answered = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop.is_set():
            n = len(self.raw.events)
            self.raw.recv(0.05)
            for sid, name, payload, meta in self.raw.events[n:]:
                headers, reply = meta if meta else (None, None)
                if sid == self.sid and reply:
                    echo = (headers or {}).get("x", "")
                    self.raw.pub(reply, b"raw:" + payload, headers={"echo": echo, "by": "raw"})
                    self.answered += 1

    def close(self):
        self.stop.set()
        self.t.join(5)
        self.raw.close()


@pytest.fixture
def responders():
    made = []

    def make(*a, **kw):
        r = RawResponder(*a, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def py_handler(client_name):
    def handle(msg):
        echo = (msg.headers or {}).get("x", "")
        msg.respond(b"py:" + msg.data, headers={"echo": echo, "by": client_name})
    return handle


@pytest.mark.parametrize("owner", [0, 1])
@pytest.mark.parametrize("responder", ["python", "simple"])
def test_request_reply_across_workers(node2, clients, responders, owner, responder):
    svc = name_for(owner, 2, uniq("svc"))
    if responder == "python":
        clients(node2, name="rr-responder").subscribe(svc, cb=py_handler("py"))
        prefix = b"py:"
    else:
        responders(node2.port, svc)         # simple client on the first port: replies are proxied
        prefix = b"raw:"
    req = clients(node2, name="rr-requester")
    for i in range(10):
        m = req.request(svc, f"q{i}".encode(), timeout=DEADLINE, headers={"x": f"h{i}"})
        assert m.data == prefix + f"q{i}".encode()
        assert m.headers["echo"] == f"h{i}", "request headers reach the responder, reply headers come back"
        assert m.name.startswith("_INBOX.")


def test_simple_client_request_gets_reply(node2, clients, raws):
    """A simple client does request/reply by hand: subscribe an inbox, publish with reply-to."""
    svc = name_for(1, 2, uniq("svc"))
    clients(node2, name="rr-responder").subscribe(svc, cb=py_handler("py"))
    r = raws(node2.port, name="raw-requester")
    inbox = uniq("inbox")
    sid = r.sub(inbox + ".*")
    for i in range(5):
        reply = f"{inbox}.{i}"
        r.pub(svc, f"q{i}".encode(), headers={"x": str(i)}, reply=reply)
        r.wait_events(lambda evs: any(e[1] == reply for e in evs), what=f"reply {i}")
    got = {e[1]: e for e in r.events if e[0] == sid}
    for i in range(5):
        _, name, payload, meta = got[f"{inbox}.{i}"]
        assert payload == f"py:q{i}".encode()
        assert meta[0] == {"echo": str(i), "by": "py"}


def test_queue_group_responders_answer_each_request_once(node2, clients, responders):
    svc = name_for(0, 2, uniq("svcq"))
    answers = {"a": 0, "b": 0}
    lock = threading.Lock()

    def handler(label, c):
        def h(msg):
            with lock:
                answers[label] += 1
            msg.respond(label.encode())
        return h

    for label in answers:
        c = clients(node2, name=f"rr-q-{label}")
        c.subscribe(svc, queue="svc", cb=handler(label, c))
    raw = responders(node2.ports[1], svc, group="svc")
    req = clients(node2, name="rr-q-req")
    replies = [req.request(svc, b"x", timeout=DEADLINE).data for _ in range(30)]
    assert len(replies) == 30
    assert set(replies) <= {b"a", b"b", b"raw:x"}
    assert answers["a"] + answers["b"] + raw.answered == 30, "each request answered exactly once"


@pytest.mark.parametrize("owner", [0, 1])
def test_no_responders_fails_fast(node2, clients, owner):
    c = clients(node2, name="nr")
    name = name_for(owner, 2, uniq("nobody"))
    t0 = time.monotonic()
    with pytest.raises(tscale.NoResponders):
        c.request(name, b"anyone?", timeout=10)
    assert time.monotonic() - t0 < 5, "no responders must be reported at once, not after the timeout"


def test_no_responders_after_last_responder_unsubscribes(node2, clients):
    svc = name_for(1, 2, uniq("gone"))
    resp = clients(node2, name="nr-resp")
    sub = resp.subscribe(svc, cb=py_handler("py"))
    req = clients(node2, name="nr-req")
    assert req.request(svc, b"1", timeout=DEADLINE).data == b"py:1"
    sub.unsubscribe()
    with pytest.raises(tscale.NoResponders):
        req.request(svc, b"2", timeout=10)


def test_request_times_out_when_responder_is_silent(node2, clients):
    svc = name_for(0, 2, uniq("silent"))
    clients(node2, name="silent").subscribe(svc, cb=lambda m: None)
    with pytest.raises(tscale.Timeout):
        clients(node2, name="req").request(svc, b"?", timeout=0.5)


def test_simple_client_sees_no_responders_status(node2, raws):
    """The wire form of "no responders": an empty event on the reply name with header Status 503."""
    r = raws(node2.port, name="raw-nr")
    inbox = uniq("inbox")
    r.sub(inbox + ".>")
    for owner in (0, 1):
        reply = f"{inbox}.{owner}"
        r.pub(name_for(owner, 2, uniq("nobody")), b"x", reply=reply)
        r.wait_events(lambda evs: any(e[1] == reply for e in evs), what="no-responders reply")
        ev = [e for e in r.events if e[1] == reply][0]
        assert ev[2] == b""
        assert ev[3][0][protocol.STATUS_HEADER] == protocol.NO_RESPONDERS_STATUS == "503"
