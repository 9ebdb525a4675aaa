"""Redis pub/sub client loops (redis-py with hiredis), same signatures as ``tscale_driver``.

PUBLISH is pipelined 100 at a time; the subscriber reads with a SUBSCRIBE listener.
Redis has no queue groups and no request/reply, so those roles are absent.  Redis's
default pub/sub output buffer limits stay in force: a subscriber it disconnects
shows up as loss.
"""
from __future__ import annotations

import time

import redis

from tscale.bench.measure import (RecvCounter, Signals, batches, payload, publish_result,
                                  wait_stop)

PIPELINE = 100


def _client(addr: str) -> redis.Redis:
    host, port = addr.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), socket_connect_timeout=5)


def run_publisher(addr: str, name: str, count: int, size: int, *, signals: Signals | None = None,
                  topology: dict | None = None) -> dict:
    signals = signals or Signals()
    r = _client(addr)
    data = payload(size)
    try:
        r.ping()
        signals.ready()
        signals.wait_go()
        pipe = r.pipeline(transaction=False)
        t0 = time.monotonic()
        for n in batches(count, PIPELINE):
            for _ in range(n):
                pipe.publish(name, data)
            pipe.execute()
        t1 = time.monotonic()
    finally:
        r.close()
    return publish_result(count, t0, t1)


def _confirm_subscribed(pubsub, expected: int, deadline_s: float = 60.0) -> None:
    confirmed, end = 0, time.monotonic() + deadline_s
    while confirmed < expected:
        if time.monotonic() > end:
            raise TimeoutError(f"only {confirmed}/{expected} subscriptions confirmed")
        msg = pubsub.get_message(timeout=1.0)
        if msg and msg["type"] in ("subscribe", "psubscribe"):
            confirmed += 1


def run_subscriber(addr: str, pattern: str, count: int | None, *, queue: str | None = None,
                   idle_timeout: float = 2.0, start_timeout: float = 15.0,
                   signals: Signals | None = None, topology: dict | None = None) -> dict:
    if queue:
        raise ValueError("redis has no queue groups")
    counter = RecvCounter(count, idle_timeout=idle_timeout, start_timeout=start_timeout,
                          signals=signals)
    r = _client(addr)
    pubsub = r.pubsub()
    disconnected = None
    try:
        pubsub.subscribe(pattern)
        _confirm_subscribed(pubsub, 1)
        counter.signals.ready()
        get, hit = pubsub.get_message, counter.hit
        while not counter.finished():
            try:
                msg = get(timeout=0.1)
            except redis.ConnectionError as exc:  # output buffer limit hit: report as loss
                disconnected = repr(exc)
                break
            if msg is not None and msg["type"] == "message":
                hit()
    finally:
        pubsub.close()
        r.close()
    return counter.result(disconnected=disconnected)


def hold_subscriptions(addr: str, count: int, *, prefix: str = "bench.sub", limit: float = 600.0,
                       signals: Signals | None = None, topology: dict | None = None) -> dict:
    signals = signals or Signals()
    r = _client(addr)
    pubsub = r.pubsub()
    try:
        names = [f"{prefix}.{i}" for i in range(count)]
        for start in range(0, count, 1000):
            pubsub.subscribe(*names[start:start + 1000])
        _confirm_subscribed(pubsub, count)
        signals.ready()
        wait_stop(signals, limit)
    finally:
        pubsub.close()
        r.close()
    return dict(subscriptions=count)


def hold_connections(addr: str, count: int, *, limit: float = 600.0,
                     signals: Signals | None = None, topology: dict | None = None) -> dict:
    signals = signals or Signals()
    clients = []
    try:
        for _ in range(count):
            r = _client(addr)
            r.ping()  # a Redis client holds its pooled connection after the first command
            clients.append(r)
        signals.ready()
        wait_stop(signals, limit)
    finally:
        for r in clients:
            r.close()
    return dict(connections=len(clients))
