"""Signals that wake a ZeroMQ poll at once.

Python runs a signal handler only between bytecodes, and pyzmq resumes a poll that a
signal interrupted, so a process that polls with a long timeout (an idle worker or
supervisor wakes about once a second, issue 10) would notice SIGTERM up to that late.
`signal.set_wakeup_fd` writes a byte to a pipe on every signal; polling the pipe's read
end with the sockets ends the poll, and `drain` empties it."""
from __future__ import annotations

import os
import signal


def wakeup_fd() -> int:
    """The read end of a pipe that receives a byte per signal (register it with the poller)."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    return r


def drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
