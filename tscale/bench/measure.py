"""Measurement inside one driver process, shared by every system's client loops.

A subscriber counts what it actually receives, from its first to its last event, and
stops when it has everything or after an idle timeout (so loss is measured rather
than waited on).  Requesters time one request in flight at a time, back to back or
paced.  Timestamps are ``time.monotonic()``, which on Linux is one clock for every
process, so the harness can combine first/last times from several subscribers.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time


class Signals:
    """Start/stop control of a driver: READY is announced, GO awaited, STOP observed.

    Standalone use (e.g. a ``tscale bench`` command) gets the default: announcing
    does nothing and GO is already given.
    """

    def __init__(self, announce=None, go_given: bool = True):
        self._announce = announce
        self.go = threading.Event()
        self.stop = threading.Event()
        self.go_at: float | None = None
        self.cpu_at_go: float | None = None
        if go_given:
            self.give_go()

    def give_go(self) -> None:
        if not self.go.is_set():
            self.go_at = time.monotonic()
            self.cpu_at_go = time.process_time()
            self.go.set()

    def ready(self) -> None:
        if self._announce:
            self._announce()

    def wait_go(self, timeout: float = 120.0) -> None:
        if not self.go.wait(timeout):
            raise TimeoutError(f"no GO within {timeout:.0f}s")
        if self.stop.is_set():
            raise TimeoutError("stopped before GO")



class RecvCounter:
    """Counts received events; says when to stop (all received, idle, or STOP)."""

    def __init__(self, expected: int | None, *, idle_timeout: float = 2.0,
                 start_timeout: float = 15.0, signals: Signals | None = None):
        self.expected = expected
        self.idle_timeout = idle_timeout
        self.start_timeout = start_timeout
        self.signals = signals or Signals()
        self.received = 0
        self.first: float | None = None
        self.last: float | None = None
        self.idled_out = False
        self.done = threading.Event()

    def hit(self, n: int = 1) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.last = now
        self.received += n
        if self.expected is not None and self.received >= self.expected:
            self.done.set()

    def finished(self) -> bool:
        if self.done.is_set() or self.signals.stop.is_set():
            return True
        now = time.monotonic()
        if self.last is not None:
            idle = now - self.last > self.idle_timeout
        elif self.signals.go_at is not None:
            idle = now - self.signals.go_at > self.start_timeout
        else:
            idle = False  # not started yet; the harness bounds this wait
        if idle:
            self.idled_out = True
        return idle

    def wait(self, timeout: float = 0.1) -> bool:
        """Block up to ``timeout`` (sync drivers); returns ``finished()``."""
        self.done.wait(timeout)
        return self.finished()

    async def await_finished(self, poll: float = 0.05) -> None:
        while not self.finished():
            await asyncio.sleep(poll)

    def result(self, **extra) -> dict:
        span = (self.last - self.first) if self.first is not None else 0.0
        rate = self.received / span if span > 0 else None
        return dict(received=self.received, expected=self.expected, first=self.first,
                    last=self.last, rate=rate, idled_out=self.idled_out, **extra)


def merged_result(counters: list["RecvCounter"], **extra) -> dict:
    """One subscriber result for several connections of one process: summed, first to last."""
    firsts = [c.first for c in counters if c.first is not None]
    lasts = [c.last for c in counters if c.last is not None]
    received = sum(c.received for c in counters)
    span = (max(lasts) - min(firsts)) if firsts else 0.0
    expected = None if counters[0].expected is None else sum(c.expected for c in counters)
    return dict(received=received, expected=expected, first=min(firsts) if firsts else None,
                last=max(lasts) if lasts else None, rate=received / span if span > 0 else None,
                idled_out=any(c.idled_out for c in counters), connections=len(counters), **extra)


class Pacer:
    """Schedules one action every 1/rate seconds (no catch-up bursts)."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self.next = time.monotonic()

    def delay(self) -> float:
        if not self.interval:
            return 0.0
        now = time.monotonic()
        wait = self.next - now
        self.next = max(self.next, now) + self.interval
        return max(wait, 0.0)


def percentiles(samples_us: list[float]) -> dict:
    if not samples_us:
        return {}
    s = sorted(samples_us)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]

    return dict(count=len(s), p50=pct(50), p90=pct(90), p99=pct(99), p999=pct(99.9),
                max=s[-1], mean=sum(s) / len(s))


def _latency_result(samples, errors, first_error, t0) -> dict:
    return dict(ok=len(samples), errors=errors, first_error=first_error,
                elapsed=time.monotonic() - t0, latency_us=percentiles(samples))


def time_requests(do_request, count: int, *, rate: float | None = None, warmup: int = 50,
                  signals: Signals | None = None) -> dict:
    """Call ``do_request()`` (one round trip) ``count`` times, one in flight, and time each."""
    signals = signals or Signals()
    for _ in range(warmup):
        do_request()
    signals.ready()
    signals.wait_go()
    pacer, samples, errors, first_error = Pacer(rate), [], 0, None
    clock = time.perf_counter_ns
    t0 = time.monotonic()
    for _ in range(count):
        if signals.stop.is_set():
            break
        pause = pacer.delay()
        if pause:
            time.sleep(pause)
        start = clock()
        try:
            do_request()
        except Exception as exc:  # noqa: BLE001 - counted, first one reported
            errors += 1
            first_error = first_error or repr(exc)
            continue
        samples.append((clock() - start) / 1000.0)
    return _latency_result(samples, errors, first_error, t0)


async def atime_requests(do_request, count: int, *, rate: float | None = None, warmup: int = 50,
                         signals: Signals | None = None) -> dict:
    """``time_requests`` for an async ``do_request`` coroutine function."""
    signals = signals or Signals()
    for _ in range(warmup):
        await do_request()
    signals.ready()
    await asyncio.to_thread(signals.wait_go)
    pacer, samples, errors, first_error = Pacer(rate), [], 0, None
    clock = time.perf_counter_ns
    t0 = time.monotonic()
    for _ in range(count):
        if signals.stop.is_set():
            break
        pause = pacer.delay()
        if pause:
            await asyncio.sleep(pause)
        start = clock()
        try:
            await do_request()
        except Exception as exc:  # noqa: BLE001
            errors += 1
            first_error = first_error or repr(exc)
            continue
        samples.append((clock() - start) / 1000.0)
    return _latency_result(samples, errors, first_error, t0)


def publish_result(sent: int, t_start: float, t_end: float, **extra) -> dict:
    span = t_end - t_start
    return dict(sent=sent, t_start=t_start, t_end=t_end,
                rate=sent / span if span > 0 else None, **extra)


def chunks(count: int | None, duration: float | None, t0: float, stop: threading.Event, size: int = 1000):
    """Sizes of a publisher's chunks: until ``count`` events (None: no limit), ``duration``
    seconds after ``t0`` (None: no limit) or STOP, whichever comes first."""
    end = None if duration is None else t0 + duration
    sent = 0
    while count is None or sent < count:
        if stop.is_set() or (end is not None and time.monotonic() >= end):
            return
        n = size if count is None else min(size, count - sent)
        yield n
        sent += n


def cycle_names(prefix: str, count: int) -> list[str]:
    """The distinct names a publisher cycles over: ``prefix.0`` .. ``prefix.<count-1>``."""
    return [f"{prefix}.{i}" for i in range(count)]


def payload(size: int) -> bytes:
    """Incompressible payload of ``size`` bytes (same for every system)."""
    return os.urandom(size)


def batches(count: int, batch: int):
    """Yield batch sizes summing to ``count``."""
    full, rest = divmod(count, batch)
    for _ in range(full):
        yield batch
    if rest:
        yield rest


def wait_stop(signals: Signals, limit: float) -> None:
    """Holders and responders: block until STOP (or EOF) or ``limit`` seconds."""
    signals.stop.wait(limit)
