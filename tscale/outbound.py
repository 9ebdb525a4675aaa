"""Outbound bound of one client connection: bytes and frames a worker has handed to
ZeroMQ for it and ZeroMQ has not written to the kernel yet, and the slow-consumer
policy built on it (sans-I/O: time is an argument, trackers are duck-typed).

Why bytes need counting: ZeroMQ's send high-water mark (`client_hwm`) counts
frames, and every MSG frame is a batch of events, so 1,000 frames per
connection bound nothing in bytes (100 non-reading subscribers took a node to
3.5 GiB).  This class counts what really sits in the process for one
connection.

Mechanism, "watermark frames": the worker sends most frames plainly and asks
ZeroMQ to track one now and then (pyzmq `copy=False, track=True` with the
socket's `copy_threshold` at 0, else pyzmq fakes it for frames under 64 KiB:
about 30 us against 2.5 us for a plain 200 B send on the 2-core test
machine, so only the watermarks are tracked).  libzmq frees a
connection's frames in the order they were queued, so once a tracked frame is
done, every frame sent before it is out of the process too.  The pending
figure is therefore exact up to the frames sent since the last done watermark,
and never an underestimate.  A frame is tracked when the untracked tail would
reach `slack` bytes (1/8 of the bound) or `frame_slack` frames (1/8 of the
frame bound), so the estimate is at most that much too high and a flood of big
batches tracks nearly every frame while a trickle of tiny ones tracks one in
hundreds.

Policy: an event frame is admitted while the connection has room (see
`room` and `fits`); otherwise its events are dropped and counted.  A
connection that stays without room for longer than the grace period is
disconnected by the worker (`check`).  Control replies are not subject to
this (the worker sends them regardless), but they are counted here, so they
take room from events, never the other way round.
"""
from __future__ import annotations

from collections import deque

UNDER, OVER, EXPIRED = 0, 1, 2   # results of Outbound.check


class Outbound:
    __slots__ = ("limit", "max_frames", "slack", "frame_slack", "sent_bytes", "sent_frames",
                 "done_bytes", "done_frames", "marks", "tail_bytes", "tail_frames", "over_since", "event_bytes")

    def __init__(self, limit: int, max_frames: int):
        self.limit = limit                # client_max_pending, bytes
        self.max_frames = max_frames      # client_hwm, frames
        self.slack = max(limit >> 3, 1)
        self.frame_slack = max(max_frames >> 3, 1)
        self.sent_bytes = 0               # cumulative, everything handed to ZeroMQ
        self.sent_frames = 0
        self.done_bytes = 0               # cumulative, as of the newest finished watermark
        self.done_frames = 0
        self.marks: deque = deque()       # (tracker, sent_bytes, sent_frames) after that frame, oldest first
        self.tail_bytes = 0               # sent since the last watermark
        self.tail_frames = 0
        self.over_since: float | None = None   # when the connection was first found without room
        self.event_bytes = 64             # bytes per event in the last frame: estimates a frame before packing

    # -- accounting ---------------------------------------------------------
    def pending_bytes(self) -> int:
        return self.sent_bytes - self.done_bytes

    def pending_frames(self) -> int:
        return self.sent_frames - self.done_frames

    def want_mark(self, size: int) -> bool:
        """Should the frame about to be sent (of `size` bytes) be a tracked watermark?"""
        return self.tail_bytes + size >= self.slack or self.tail_frames + 1 >= self.frame_slack

    def sent(self, size: int, tracker=None) -> None:
        """Record a frame handed to ZeroMQ; `tracker` (with a `.done` flag) if it was tracked."""
        self.sent_bytes += size
        self.sent_frames += 1
        if tracker is None:
            self.tail_bytes += size
            self.tail_frames += 1
        else:
            self.marks.append((tracker, self.sent_bytes, self.sent_frames))
            self.tail_bytes = 0
            self.tail_frames = 0

    def release(self) -> None:
        """Advance past every finished watermark (they finish in send order)."""
        marks = self.marks
        last = None
        while marks and marks[0][0].done:
            last = marks.popleft()
        if last is not None:
            self.done_bytes = last[1]
            self.done_frames = last[2]

    # -- admission ----------------------------------------------------------
    def room(self) -> bool:
        """May an event frame be built for this connection at all?  Cheap when little is queued."""
        if self.sent_bytes - self.done_bytes <= self.slack and self.sent_frames - self.done_frames <= self.frame_slack:
            return True
        self.release()
        return self.sent_bytes - self.done_bytes < self.limit and self.sent_frames - self.done_frames < self.max_frames

    def admits(self, events: int) -> bool:
        """May a frame of `events` events be built?  Decided before packing (from the size per event of
        the last frame), so a connection over its bound costs no packing."""
        return self.room() and self.fits(events * self.event_bytes)

    def packed(self, events: int, size: int) -> bool:
        """A frame of `events` events was packed into `size` bytes: may it go (`fits`)?"""
        self.event_bytes = size // events + 1
        return self.fits(size)

    def fits(self, size: int) -> bool:
        """May a packed event frame of `size` bytes go?  Up to the bound, or alone on a (nearly) empty
        queue: so pending stays under max(limit, slack + one frame), and a frame larger than the bound
        still reaches a client that keeps up."""
        p = self.sent_bytes - self.done_bytes
        return p <= self.slack or p + size <= self.limit

    # -- slow-consumer policy -------------------------------------------------
    def check(self, now: float, grace: float) -> int:
        """The episode that began at `over_since` (the first event frame dropped; the worker ends it
        when an event frame goes out again): UNDER (over, or the queue has drained to the slack),
        OVER (still dropping or still full, within the grace) or EXPIRED (for longer than `grace`
        seconds: disconnect)."""
        if self.over_since is None:
            return UNDER
        self.release()
        if self.sent_bytes - self.done_bytes <= self.slack:
            self.over_since = None
            return UNDER
        return EXPIRED if now - self.over_since >= grace else OVER

    def drained(self) -> bool:
        """Nothing left in ZeroMQ beyond the untracked tail (the state may be discarded)."""
        self.release()
        return self.sent_bytes - self.done_bytes <= self.slack and not self.marks
