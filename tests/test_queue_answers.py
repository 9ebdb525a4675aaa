"""Consumer answers (ack/nak/wip/term) given one after the other travel as one request (sans-I/O)."""
from tscale.client_core import ClientCore
from tscale.queues import api
from tscale.queues import client_core as qc


class _Client:
    def __init__(self):
        self._core = ClientCore()


def _requests(core):
    buf = core.out[0]
    return [api.decode_request(buf[i], buf[i + 1]) for i in range(1, len(buf), 3)]


def test_consecutive_answers_of_one_kind_merge_into_one_request():
    c = _Client()
    cons = qc.ConsumerCore(c, "jobs", "g", None, 10)
    for s in range(1, 21):
        assert cons._queue_answer("ack", s, None) == 0
    cons._queue_answer("nak", 21, 1.5)
    cons._queue_answer("nak", 22, 1.5)
    cons._queue_answer("nak", 23, None)
    cons._queue_answer("term", 24, None)
    reqs = _requests(c._core)
    assert [(op, r["seqs"], r.get("delay")) for op, _q, r in reqs] == [
        ("ack", list(range(1, 21)), None), ("nak", [21, 22], 1.5), ("nak", [23], None), ("term", [24], None)]
    assert all(q == "jobs" and r["group"] == "g" for _op, q, r in reqs)
    assert c._core.out_bytes[0] == sum(len(c._core.out[0][i]) for i in range(2, len(c._core.out[0]), 3))


def test_an_answer_never_joins_a_batch_already_taken_or_followed_by_another_event():
    c = _Client()
    cons = qc.ConsumerCore(c, "jobs", "g", None, 10)
    cons._queue_answer("ack", 1, None)
    c._core.take_batch(0)                       # the I/O thread sent it
    cons._queue_answer("ack", 2, None)
    c._core.add_event("$Q.jobs", b"other", None, None)   # something else after it
    cons._queue_answer("ack", 3, None)
    buf = c._core.out[0]
    payloads = [buf[i + 1] for i in range(1, len(buf), 3)]
    assert payloads[1] == b"other"
    assert [api.decode_request("$Q.jobs", p)[2]["seqs"] for p in (payloads[0], payloads[2])] == [[2], [3]]


def test_merged_requests_stay_within_the_worker_limit():
    c = _Client()
    cons = qc.ConsumerCore(c, "jobs", "g", None, 10)
    n = qc.ANSWER_MERGE_MAX * 2 + 5
    for s in range(1, n + 1):
        r = cons._queue_answer("ack", s, None)
        if r < 0:
            c._core.take_batch(-1 - r)
    # whatever was sent or is pending: no request above the limit (decode_request would refuse it)
    for _op, _q, r in _requests(c._core):
        assert 1 <= len(r["seqs"]) <= qc.ANSWER_MERGE_MAX
