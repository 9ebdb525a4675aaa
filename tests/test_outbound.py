"""The outbound bound of one connection (tscale/outbound.py), sans-I/O: watermark accounting
against a model of ZeroMQ's queue, admission, and the slow-consumer grace period."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tscale.outbound import EXPIRED, OVER, UNDER, Outbound


class Tracker:
    """Stands in for pyzmq's MessageTracker: done once 'ZeroMQ' freed the frame."""

    def __init__(self):
        self.done = False


class Queue:
    """A model of ZeroMQ's queue for one connection: frames leave in order when the peer reads."""

    def __init__(self, ob: Outbound):
        self.ob = ob
        self.frames: list = []   # (size, tracker or None)

    def send(self, size: int):
        t = Tracker() if self.ob.want_mark(size) else None
        self.ob.sent(size, t)
        self.frames.append((size, t))

    def read(self, k: int):
        for size, t in self.frames[:k]:
            if t is not None:
                t.done = True
        del self.frames[:k]

    def true_bytes(self) -> int:
        return sum(s for s, _ in self.frames)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("send"), st.integers(1, 300_000)),
                          st.tuples(st.just("read"), st.integers(0, 50))), max_size=300))
def test_pending_never_underestimates_and_is_close(ops):
    """Whatever is sent and read, pending is at least what the queue really holds, and at most the
    untracked tail (under 1/8 of the bound) more once finished watermarks are released."""
    ob = Outbound(limit=1 << 20, max_frames=64)
    q = Queue(ob)
    for op, n in ops:
        if op == "send":
            q.send(n)
        else:
            q.read(n)
        ob.release()
        assert ob.pending_bytes() >= q.true_bytes()
        assert ob.pending_frames() >= len(q.frames)
        assert ob.pending_bytes() - q.true_bytes() < ob.slack + 300_000
        assert ob.tail_bytes < ob.slack and ob.tail_frames < ob.frame_slack


def test_watermarks_are_sparse_for_small_frames_and_dense_for_large():
    ob = Outbound(limit=4 << 20, max_frames=1000)
    q = Queue(ob)
    for _ in range(1000):
        q.send(200)                      # tiny frames: one watermark per 125 frames
    assert sum(1 for _, t in q.frames if t is not None) == 8
    q.read(1000)
    for _ in range(10):
        q.send(1 << 20)                  # frames >= 1/8 of the bound: every one tracked
    assert sum(1 for _, t in q.frames if t is not None) == 10


def test_room_and_fits_bound_the_queue():
    limit = 1 << 20
    ob = Outbound(limit=limit, max_frames=1000)
    q = Queue(ob)
    sent = 0
    for _ in range(100):                 # a peer that never reads, 64 KiB batches
        if ob.room() and ob.fits(65536):
            q.send(65536)
            sent += 1
    assert q.true_bytes() <= limit
    assert sent == limit // 65536
    assert not ob.room()
    q.read(len(q.frames))                # the peer catches up: room again
    assert ob.room() and ob.pending_bytes() < ob.slack


def test_a_frame_larger_than_the_bound_still_reaches_a_reader():
    ob = Outbound(limit=1 << 20, max_frames=1000)
    q = Queue(ob)
    for _ in range(3):
        assert ob.room() and ob.fits(5 << 20)
        q.send(5 << 20)
        q.read(1)
    q.send(5 << 20)                      # not read: the next big one waits (is dropped)
    assert not (ob.room() and ob.fits(5 << 20))


def test_frames_are_bounded_too():
    ob = Outbound(limit=1 << 30, max_frames=100)
    q = Queue(ob)
    n = 0
    while ob.room() and n < 1000:
        q.send(10)
        n += 1
    assert n == 100 and len(q.frames) == 100


def test_grace_period():
    """The worker starts an episode at the first dropped frame and ends it when a frame goes out."""
    ob = Outbound(limit=1 << 20, max_frames=1000)
    q = Queue(ob)
    assert ob.check(0.0, 5.0) == UNDER
    q.send(2 << 20)                      # over the bound, nobody reads
    assert not ob.admits(10)
    ob.over_since = 10.0                 # the worker drops a frame
    assert ob.check(10.0, 5.0) == OVER
    assert ob.check(14.9, 5.0) == OVER
    assert ob.check(15.0, 5.0) == EXPIRED
    q.read(1)                            # it read in time: the episode is forgotten
    assert ob.check(14.0, 5.0) == UNDER and ob.over_since is None
    q.send(3 << 19)                      # under the bound but too full for the next frame
    ob.over_since = 20.0
    assert ob.check(25.0, 5.0) == EXPIRED


def test_drained():
    ob = Outbound(limit=1 << 20, max_frames=1000)
    q = Queue(ob)
    q.send(1 << 20)
    assert not ob.drained()
    q.read(1)
    assert ob.drained()
