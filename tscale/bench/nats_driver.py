"""NATS client loops (nats-py, asyncio) with the same signatures as ``tscale_driver``.

The publisher publishes in a plain loop: nats-py buffers and writes out by itself
when its pending buffer passes 2 MB, so the only explicit flush is the final one.
The subscriber counts in its message callback.
"""
from __future__ import annotations

import asyncio
import time

import nats

from tscale.bench.measure import (RecvCounter, Signals, atime_requests, chunks, cycle_names, merged_result,
                                  payload, publish_result, wait_stop)

FLUSH_TIMEOUT = 120


def _url(addr: str) -> str:
    return addr if "://" in addr else f"nats://{addr}"


async def _connect(addr: str, name: str):
    return await nats.connect(_url(addr), name=name, allow_reconnect=False,
                              max_reconnect_attempts=0, connect_timeout=5)


def run_publisher(addr: str, name: str, count: int | None, size: int, *, names: int = 0,
                  duration: float | None = None, signals: Signals | None = None,
                  topology: dict | None = None) -> dict:
    """``names`` and ``duration`` as in ``tscale_driver.run_publisher``."""
    signals = signals or Signals()

    async def main():
        nc = await _connect(addr, "bench-pub")
        data = payload(size)
        try:
            signals.ready()
            await asyncio.to_thread(signals.wait_go)
            publish = nc.publish
            t0 = time.monotonic()
            if not names and duration is None:
                for _ in range(count):
                    await publish(name, data)
                sent = count
            else:
                cycle = cycle_names(name, names) if names else [name]
                sent = 0
                for n in chunks(count, duration, t0, signals.stop):
                    for i in range(sent, sent + n):
                        await publish(cycle[i % len(cycle)], data)
                    sent += n
            await nc.flush(timeout=FLUSH_TIMEOUT)
            t1 = time.monotonic()
        finally:
            await nc.close()
        return publish_result(sent, t0, t1)

    return asyncio.run(main())


def run_subscriber(addr: str, pattern: str, count: int | None, *, queue: str | None = None,
                   idle_timeout: float = 2.0, start_timeout: float = 15.0,
                   signals: Signals | None = None, topology: dict | None = None,
                   connections: int = 1) -> dict:
    """``connections`` > 1: that many connections in this process's event loop, each
    subscribed and counted on its own, reported as one result."""
    signals = signals or Signals()
    counters = [RecvCounter(count, idle_timeout=idle_timeout, start_timeout=start_timeout, signals=signals)
                for _ in range(max(1, connections))]

    async def main():
        errors = []

        async def on_error(exc):  # slow-consumer drops are reported, not raised
            errors.append(repr(exc))

        conns = []
        try:
            for counter in counters:
                nc = await nats.connect(_url(addr), name="bench-sub", allow_reconnect=False,
                                        error_cb=on_error, connect_timeout=5)
                conns.append(nc)

                async def cb(msg, hit=counter.hit):
                    hit()

                await nc.subscribe(pattern, queue=queue or "", cb=cb)
                await nc.flush()  # the server has the interest once the PONG is back
            signals.ready()
            for counter in counters:
                await counter.await_finished()
        finally:
            for nc in conns:
                await nc.close()
        extra = dict(client_errors=len(errors), first_client_error=errors[0] if errors else None)
        return counters[0].result(**extra) if len(counters) == 1 else merged_result(counters, **extra)

    return asyncio.run(main())


def run_requester(addr: str, name: str, count: int, size: int, *, rate: float | None = None,
                  timeout: float = 1.0, signals: Signals | None = None,
                  topology: dict | None = None) -> dict:
    async def main():
        nc = await _connect(addr, "bench-req")
        data = payload(size)
        try:
            return await atime_requests(lambda: nc.request(name, data, timeout=timeout), count,
                                        rate=rate, signals=signals)
        finally:
            await nc.close()

    return asyncio.run(main())


def run_responder(addr: str, name: str, *, limit: float = 600.0, signals: Signals | None = None,
                  topology: dict | None = None) -> dict:
    signals = signals or Signals()

    async def main():
        nc = await _connect(addr, "bench-rep")
        served = 0

        async def echo(msg):
            nonlocal served
            served += 1
            await msg.respond(msg.data)

        try:
            await nc.subscribe(name, cb=echo)
            await nc.flush()
            signals.ready()
            await asyncio.to_thread(wait_stop, signals, limit)
        finally:
            await nc.close()
        return dict(served=served)

    return asyncio.run(main())


def hold_subscriptions(addr: str, count: int, *, prefix: str = "bench.sub", limit: float = 600.0,
                       pipelined: bool = True, signals: Signals | None = None,
                       topology: dict | None = None) -> dict:
    """nats-py's subscribe never waits for the server: always pipelined, one flush at the end."""
    signals = signals or Signals()

    async def main():
        nc = await _connect(addr, "bench-subs")
        try:
            t0 = time.monotonic()
            for i in range(count):
                await nc.subscribe(f"{prefix}.{i}")
            await nc.flush(timeout=60)
            setup_s = time.monotonic() - t0
            signals.ready()
            await asyncio.to_thread(wait_stop, signals, limit)
        finally:
            await nc.close()
        return dict(subscriptions=count, setup_s=setup_s)

    return asyncio.run(main())


def hold_connections(addr: str, count: int, *, limit: float = 600.0,
                     signals: Signals | None = None, topology: dict | None = None) -> dict:
    signals = signals or Signals()

    async def main():
        conns = []
        try:
            for i in range(count):
                conns.append(await _connect(addr, f"bench-conn-{i}"))
            signals.ready()
            await asyncio.to_thread(wait_stop, signals, limit)
        finally:
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        return dict(connections=len(conns))

    return asyncio.run(main())
