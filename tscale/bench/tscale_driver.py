"""tscale client loops for the benchmarks (sync ``tscale.Client``).

Written so the user-facing ``tscale bench`` command can call them directly:
``signals`` defaults to "already started" and every function returns a plain dict.
The sync client batches publishes itself, so the publisher is a plain loop.
"""
from __future__ import annotations

import os
import time

from tscale.bench.measure import (RecvCounter, Signals, chunks, cycle_names, merged_result, payload,
                                  publish_result, time_requests, wait_stop)

FLUSH_TIMEOUT = 120.0


def _client(addr: str, name: str):
    import tscale  # imported late: a broken tscale must not break the other systems

    # A CURVE node (the "curve" scenarios): the harness gives its public key in the environment.
    return tscale.Client(addr, name=name, server_key=os.environ.get("TSCALE_SERVER_KEY") or None)


def run_publisher(addr: str, name: str, count: int | None, size: int, *, names: int = 0,
                  duration: float | None = None, signals: Signals | None = None,
                  topology: dict | None = None) -> dict:
    """``names`` > 0: cycle over the names ``name.0`` .. ``name.<names-1>``; ``duration``:
    stop that many seconds after GO (or at STOP) even if ``count`` (None: no limit) events
    have not all gone out (the flood of the isolation row)."""
    signals = signals or Signals()
    client = _client(addr, "bench-pub")
    data = payload(size)
    try:
        signals.ready()
        signals.wait_go()
        publish = client.publish
        t0 = time.monotonic()
        if not names and duration is None:   # the plain loop: its CPU per event is reported
            for _ in range(count):
                publish(name, data)
            sent = count
        else:
            cycle = cycle_names(name, names) if names else [name]
            sent = 0
            for n in chunks(count, duration, t0, signals.stop):
                for i in range(sent, sent + n):
                    publish(cycle[i % len(cycle)], data)
                sent += n
        client.flush(timeout=FLUSH_TIMEOUT)
        t1 = time.monotonic()
    finally:
        client.close()
    return publish_result(sent, t0, t1)


def run_subscriber(addr: str, pattern: str, count: int | None, *, queue: str | None = None,
                   idle_timeout: float = 2.0, start_timeout: float = 15.0,
                   signals: Signals | None = None, topology: dict | None = None,
                   confirm: str | None = None, connections: int = 1) -> dict:
    """``confirm="cluster"``: READY only once every reachable node has the interest (a
    publisher on another node of the cluster then misses nothing); default: this node.
    ``connections`` > 1: that many clients in this process, each subscribed and counted
    on its own (``count`` each), reported as one result."""
    signals = signals or Signals()
    counters = [RecvCounter(count, idle_timeout=idle_timeout, start_timeout=start_timeout, signals=signals)
                for _ in range(max(1, connections))]
    clients = []
    try:
        extra = {"confirm": confirm} if confirm else {}
        for counter in counters:
            client = _client(addr, "bench-sub")
            clients.append(client)
            client.subscribe(pattern, queue=queue, cb=lambda msg, hit=counter.hit: hit(), **extra)
        signals.ready()
        for counter in counters:
            while not counter.wait(0.1):
                pass
    finally:
        for client in clients:
            client.close()
    return counters[0].result() if len(counters) == 1 else merged_result(counters)


def run_requester(addr: str, name: str, count: int, size: int, *, rate: float | None = None,
                  timeout: float = 1.0, signals: Signals | None = None,
                  topology: dict | None = None) -> dict:
    client = _client(addr, "bench-req")
    data = payload(size)
    try:
        return time_requests(lambda: client.request(name, data, timeout=timeout), count,
                             rate=rate, signals=signals)
    finally:
        client.close()


def run_responder(addr: str, name: str, *, limit: float = 600.0, signals: Signals | None = None,
                  topology: dict | None = None) -> dict:
    signals = signals or Signals()
    client = _client(addr, "bench-rep")
    served = [0]

    def echo(msg):
        served[0] += 1
        client.publish(msg.reply, msg.data)

    try:
        client.subscribe(name, cb=echo)
        client.flush(timeout=10.0)
        signals.ready()
        wait_stop(signals, limit)
    finally:
        client.close()
    return dict(served=served[0])


def hold_subscriptions(addr: str, count: int, *, prefix: str = "bench.sub", limit: float = 600.0,
                       pipelined: bool = False, signals: Signals | None = None,
                       topology: dict | None = None) -> dict:
    """Subscribe ``count`` names, then hold them until STOP.  ``pipelined``: subscribe with
    wait=False and one flush() at the end (as NATS clients do) instead of one round trip each;
    ``setup_s`` is the time from the first subscribe to the interest being in place."""
    signals = signals or Signals()
    client = _client(addr, "bench-subs")
    try:
        t0 = time.monotonic()
        if pipelined:
            subs = [client.subscribe(f"{prefix}.{i}", wait=False) for i in range(count)]
            client.flush(timeout=FLUSH_TIMEOUT)
        else:
            subs = [client.subscribe(f"{prefix}.{i}") for i in range(count)]
        setup_s = time.monotonic() - t0
        signals.ready()
        wait_stop(signals, limit)
    finally:
        client.close()
    return dict(subscriptions=len(subs), setup_s=setup_s)


def hold_connections(addr: str, count: int, *, limit: float = 600.0,
                     signals: Signals | None = None, topology: dict | None = None) -> dict:
    signals = signals or Signals()
    clients = []
    try:
        for i in range(count):
            clients.append(_client(addr, f"bench-conn-{i}"))
        signals.ready()
        wait_stop(signals, limit)
    finally:
        for c in clients:
            c.close()
    return dict(connections=len(clients))
