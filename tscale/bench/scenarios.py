"""What is measured: the scenarios of the "Benchmarks side by side" issue.

Each scenario has variants (a size, a pacing, a worker count); each variant is
measured against every selected system that has the needed capability.  Counts come
from ``Counts`` (full or quick mode).  Raw pyzmq, which moves 100 events per frame,
gets ``zmq_scale`` times more events in throughput runs so that its runs last long
enough to time (its rate does not depend on the count).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tscale.bench.runner import Flow, Pub, Runner, Sub
from tscale.bench.systems import FOOTPRINT, PUBSUB, QUEUE, REQREP, WORKERS, System

# Kinds decide how the report tabulates and charts a scenario.
THROUGHPUT, LATENCY, COST, PLACEHOLDER = "throughput", "latency", "cost", "placeholder"
ISOLATION, SUBSCRIPTIONS = "isolation", "subscriptions"


@dataclass(frozen=True)
class Counts:
    events: int            # 1->1, fan-in, queue group, worker scaling
    fanout_events: int     # published events in the 1->8 fan-out (8x that are delivered)
    requests: int
    paced_rate: float
    subscriptions: int
    connections: int
    zmq_scale: int
    runs: int
    idle_timeout: float
    isolation_requests: int   # paced requests during the flood (at paced_rate)
    many_subs: int            # subscriptions one client sets up
    idle_window: float        # seconds of idle CPU measured with them in place


FULL = Counts(events=1_000_000, fanout_events=200_000, requests=10_000, paced_rate=1000.0,
              subscriptions=10_000, connections=1_000, zmq_scale=10, runs=3, idle_timeout=2.0,
              isolation_requests=5_000, many_subs=100_000, idle_window=5.0)
QUICK = Counts(events=20_000, fanout_events=5_000, requests=500, paced_rate=1000.0,
               subscriptions=1_000, connections=100, zmq_scale=10, runs=1, idle_timeout=1.0,
               isolation_requests=300, many_subs=5_000, idle_window=1.0)


@dataclass(frozen=True)
class Variant:
    label: str
    measure: Callable[[Runner, System], dict]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kind: str
    feature: str
    description: str
    variants: Callable[[Counts], list[Variant]]
    only: tuple[str, ...] | None = None     # restrict to these systems
    skip_reason: str | None = None          # placeholder scenarios
    paired: bool = False                    # run i of every variant back to back (ratios per run)
    not_applicable: tuple[tuple[str, str], ...] = ()   # (system, why): reported as "n/a"
    baseline: str = "nats"                  # the system the ratio column compares with


def _n(counts: Counts, system: System, n: int) -> int:
    return n * counts.zmq_scale if system.key == "zmq" else n


def _flow(build: Callable[[int], Flow], base: Callable[[Counts], int], counts: Counts):
    return lambda runner, system: runner.flow(system, build(_n(counts, system, base(counts))))


def _one_to_one(size: int):
    return lambda n: Flow(size, [Pub("bench.x", n)], [Sub("bench.x", n)], expected=n)


def _fanout(n: int) -> Flow:
    return Flow(128, [Pub("bench.x", n)], [Sub("bench.x", n) for _ in range(8)], expected=8 * n)


def _fanin(n: int) -> Flow:
    per = n // 4
    return Flow(128, [Pub("bench.x", per) for _ in range(4)], [Sub("bench.x", 4 * per)],
                expected=4 * per)


def _queue(n: int) -> Flow:
    return Flow(128, [Pub("bench.x", n)], [Sub("bench.x", None, queue="q") for _ in range(4)],
                expected=n)


def distinct_shard_names(count: int) -> list[str]:
    """Event names owned by different workers of a ``count``-worker node."""
    try:
        from tscale.sharding import shard_of
    except Exception:  # noqa: BLE001 - fall back to the documented rule
        from zlib import crc32

        def shard_of(name: str, n: int) -> int:
            return 0 if n == 1 else crc32(name.encode()) % n
    names, owners, i = [], set(), 0
    while len(names) < count:
        name = f"bench.w{i}"
        if shard_of(name, count) not in owners:
            owners.add(shard_of(name, count))
            names.append(name)
        i += 1
    return names


def _workers(workers: int):
    def build(n: int) -> Flow:
        a, b = distinct_shard_names(2)
        half = n // 2
        return Flow(128, [Pub(a, half), Pub(b, half)], [Sub(a, half), Sub(b, half)],
                    expected=2 * half, workers=workers)
    return build


def _curve_flow(size: int, curve: bool):
    def build(n: int) -> Flow:
        f = _one_to_one(size)(n)
        return Flow(f.size, f.pubs, f.subs, expected=f.expected, curve=curve)
    return build


def _curve_variants(c: Counts) -> list[Variant]:
    return [Variant(f"{size_label} {mode}", _flow(_curve_flow(size, mode == "CURVE"), lambda c: c.events, c))
            for size, size_label in ((128, "128 B"), (4096, "4 KiB")) for mode in ("plain", "CURVE")]


def _chain(nodes: int):
    """1 -> 1, 128 B; with nodes > 1 the publisher is on one end of a chain, the subscriber on the
    other, and the subscription is confirmed across the cluster before the publisher starts."""
    def build(n: int) -> Flow:
        if nodes == 1:
            return _one_to_one(128)(n)
        return Flow(128, [Pub("bench.x", n)], [Sub("bench.x", n)], expected=n, nodes=nodes,
                    confirm="cluster")
    return build


CHAIN_NODES = 3
SINGLE, CHAIN = "1 node", f"{CHAIN_NODES}-node chain"
NATS_NA = ("n/a: NATS has no equivalent chain in its normal deployment: a NATS cluster is a full "
           "mesh, so an event crosses at most one route (1 hop) whatever the number of servers")


LARGE = (4096, 65536)
LARGE_BYTES_PER_EVENT = 1024   # large payloads: as many bytes in all as 1024 B events, at most


def _pubsub_variants(c: Counts) -> list[Variant]:
    def count(size: int):
        return lambda c: c.events if size <= LARGE_BYTES_PER_EVENT else c.events * LARGE_BYTES_PER_EVENT // size
    return [Variant(f"{size} B" if size < 4096 else f"{size // 1024} KiB", _flow(_one_to_one(size), count(size), c))
            for size in (16, 128, 1024) + LARGE]


MANY_NAMES = 100_000


def _names(names: int):
    """1 -> 1, 128 B, the publisher cycling over ``names`` distinct names (0: one name); the
    subscriber takes them all with one wildcard."""
    def build(n: int) -> Flow:
        if not names:
            return Flow(128, [Pub("bench.n.x", n)], [Sub("bench.n.*", n)], expected=n)
        return Flow(128, [Pub("bench.n", n, names=names)], [Sub("bench.n.*", n)], expected=n)
    return build


COPY_PROCESSES = 4


def _copies(connections: int):
    """1 -> ``connections`` subscriber connections on one name, spread over 4 processes."""
    def build(n: int) -> Flow:
        per = [connections // COPY_PROCESSES + (1 if i < connections % COPY_PROCESSES else 0)
               for i in range(COPY_PROCESSES)]
        return Flow(128, [Pub("bench.x", n)], [Sub("bench.x", n, connections=k) for k in per if k],
                    expected=n * connections)
    return build


NODE_WORKERS = 2   # tscale node of the isolation and many-subscriptions rows (NATS ignores it)


def same_shard_name(ref: str, count: int, prefix: str = "bench.flood") -> str:
    """A name owned by the same worker as ``ref`` on a ``count``-worker node."""
    from tscale.sharding import shard_of
    i = 0
    while shard_of(f"{prefix}{i}", count) != shard_of(ref, count):
        i += 1
    return f"{prefix}{i}"


def _isolation_variants(c: Counts) -> list[Variant]:
    from tscale.bench.runner import ISOLATION_REQUESTS
    flood = same_shard_name(ISOLATION_REQUESTS, NODE_WORKERS)
    rate = f"{c.paced_rate / 1000:g}k/s"

    def measure(with_requests: bool):
        return lambda r, s: r.isolation(s, c.isolation_requests, c.paced_rate, flood, 128, with_requests,
                                        workers=NODE_WORKERS)
    return [Variant("flood alone", measure(False)), Variant(f"flood + requests {rate}", measure(True))]


SCENARIOS: list[Scenario] = [
    Scenario("pubsub", "1 publisher → 1 subscriber", THROUGHPUT, PUBSUB,
             "One publisher process, one subscriber process, one event name; events/s "
             "received by the subscriber from its first to its last event.  Raw pyzmq "
             "moves 100 events per frame (msgpack), as in every raw pyzmq throughput row.  The 4 KiB "
             "and 64 KiB runs send as many bytes as the 1024 B run (events × 1024 ÷ size events).",
             _pubsub_variants),
    Scenario("fanout", "Fan-out 1 → 8 subscribers, 128 B", THROUGHPUT, PUBSUB,
             "One publisher, eight subscriber processes on the same name; aggregate events/s "
             "delivered (sum over subscribers, first to last event across all of them).",
             lambda c: [Variant("1 → 8", _flow(_fanout, lambda c: c.fanout_events, c))]),
    Scenario("fanin", "Fan-in 4 publishers → 1 subscriber, 128 B", THROUGHPUT, PUBSUB,
             "Four publisher processes on one name, one subscriber; events/s received.",
             lambda c: [Variant("4 → 1", _flow(_fanin, lambda c: c.events, c))]),
    Scenario("queue", "Queue group: 1 publisher → 4 members, 128 B", THROUGHPUT, QUEUE,
             "Each event goes to one of four members (NATS and tscale queue groups; raw "
             "pyzmq PUSH→PULL round robin; Redis has none).  The split is the share each "
             "member received.",
             lambda c: [Variant("1 → 4 members", _flow(_queue, lambda c: c.events, c))]),
    Scenario("reqrep", "Request/reply round trip, one in flight, 128 B", LATENCY, REQREP,
             "A requester process sends one request at a time to an echo responder process "
             "(through the server); round-trip latency in µs, back to back and paced.  "
             "Latency is timed from the actual send (no coordinated-omission correction; "
             "with one request in flight at 1k/s the schedule is rarely late).",
             lambda c: [
                 Variant("back to back", lambda r, s: r.reqrep(s, c.requests, 128, None)),
                 Variant(f"paced {c.paced_rate / 1000:g}k/s",
                         lambda r, s: r.reqrep(s, c.requests, 128, c.paced_rate)),
             ]),
    Scenario("names", f"Many names: one publisher cycling over {MANY_NAMES:,} names, 128 B", THROUGHPUT, PUBSUB,
             "1 → 1 through a wildcard subscription (bench.n.*): the publisher sends every event "
             f"to the same name, or cycles over {MANY_NAMES:,} distinct names (each seen once "
             "every 100,000 events).  Run back to back; compare each system's server CPU per "
             "event between the two variants (target: tscale's growth no more than NATS's).",
             lambda c: [Variant("1 name", _flow(_names(0), lambda c: c.events, c)),
                        Variant(f"{MANY_NAMES:,} names", _flow(_names(MANY_NAMES), lambda c: c.events, c))],
             only=("tscale", "nats"), paired=True),
    Scenario("copies", "Per-copy cost: 1 publisher → 10 and → 100 subscriber connections, 128 B", THROUGHPUT,
             PUBSUB,
             "One publisher on one name; the subscriber connections (each its own client, "
             "counting on its own) are spread over 4 processes.  Server CPU is per delivered "
             "copy; compare it between the variants (target: flat from 10 to 100).  Each "
             "variant publishes fan-out events ÷ 2.",
             lambda c: [Variant(f"1 → {k} connections", _flow(_copies(k), lambda c: c.fanout_events // 2, c))
                        for k in (10, 100)],
             only=("tscale", "nats"), paired=True),
    Scenario("isolation", "Latency isolation: request/reply paced 1k/s while a 1 → 1 flood runs on another name",
             ISOLATION, REQREP,
             "A publisher floods one name (128 B, as fast as the server takes it) to one subscriber; "
             "meanwhile a requester sends one request at a time, paced at 1k/s, to an echo responder "
             "on another name.  tscale runs with --workers 2 and the flood's name is owned by the "
             "same worker as the request name (the hard case: one busy name must not delay the "
             "others).  Latency as in the request/reply row; the flood's rate is counted at its "
             "subscriber and compared with the flood alone, measured back to back in each run "
             "(target: p99 ≤ NATS's, flood ≥ 0.90× of alone).  Server CPU per flood event.",
             _isolation_variants, only=("tscale", "nats"), paired=True),
    Scenario("manysubs", "Many subscriptions held by one client", SUBSCRIPTIONS, FOOTPRINT,
             "One client subscribes to N distinct literal names, pipelined (tscale "
             "subscribe(wait=False), NATS subscribe, then one flush), and holds them; setup is "
             "timed in the client from the first subscribe to the flush returning.  Then, with "
             "nothing flowing, the server's CPU (all its processes, % of one core) over a few "
             "seconds, and its RSS growth per subscription.  tscale runs with --workers 2.",
             lambda c: [Variant(f"{c.many_subs:,} subscriptions",
                                lambda r, s: r.many_subscriptions(s, c.many_subs, c.idle_window,
                                                                  workers=NODE_WORKERS))],
             only=("tscale", "nats")),
    Scenario("workers", "Worker scaling: 2 publishers → 2 subscribers on distinct names, 128 B",
             THROUGHPUT, WORKERS,
             "tscale only: two names owned by different workers; node started with "
             "--workers 1 and --workers 2.  Server CPU is the node's total (supervisor and "
             "workers) per delivered event.",
             lambda c: [Variant(f"workers={w}", _flow(_workers(w), lambda c: c.events, c))
                        for w in (1, 2)],
             only=("tscale",)),
    Scenario("cost", "Cost: memory of the server", COST, FOOTPRINT,
             "RSS summed over all server processes (the server and its children): idle, "
             "with one client holding N subscriptions, with N clients connected (spread over 4 "
             "client processes).  CPU µs per routed event is taken from the 1 → 1 128 B runs.",
             lambda c: [Variant("rss", lambda r, s: r.footprint(s, c.subscriptions, c.connections))]),
    Scenario("cluster", "3-node chain vs a single node, 1 → 1, 128 B", THROUGHPUT, PUBSUB,
             "tscale only.  Three nodes on 127.0.0.1 (one worker each, --no-discovery, a fresh "
             "cluster name per run, TSCALE_MAX_CHILDREN=1), each joining the previous one.  With a "
             "fan-out of 1 the settled overlay is a chain in rank order (nodes move to shallower "
             "parents); an attempt whose overlay is no chain in time is stopped and three new "
             "nodes started.  Once every "
             "node sees the chain, the publisher connects to one end "
             "and the subscriber to the other (subscribed with confirm=\"cluster\", so the "
             "interest has reached the publisher's node before it starts), and every event is "
             "routed by all three nodes.  Compared with the same 1 → 1 flow through one node, "
             "measured back to back in each run; the ratio is chain ÷ single node (target ≥ "
             "0.80×).  Counted at the subscriber; node CPU is the sum over all three nodes "
             "(supervisors and workers) per delivered event.  NATS: n/a, a NATS cluster is a "
             "full mesh (any event crosses at most one route), so it has no equivalent chain in "
             "its normal deployment.",
             lambda c: [Variant(SINGLE, _flow(_chain(1), lambda c: c.events, c)),
                        Variant(CHAIN, _flow(_chain(CHAIN_NODES), lambda c: c.events, c))],
             only=("tscale",), paired=True, not_applicable=(("nats", NATS_NA),)),
    Scenario("curve", "CURVE encryption on vs off, 1 → 1", THROUGHPUT, PUBSUB,
             "tscale only: the same 1 → 1 flow through a node without security and through a node "
             "started with --curve (clients connect with its public key; no users file, so ZAP "
             "accepts every key), 128 B and 4 KiB, measured back to back in each run; the ratio is "
             "each variant ÷ plain 128 B (target for CURVE 128 B: ≥ 0.85×).",
             _curve_variants, only=("tscale",), paired=True),
    Scenario("curve_reqrep", "Request/reply with CURVE on vs off, 128 B", LATENCY, REQREP,
             "tscale only: the request/reply round trip (one in flight, back to back) through a "
             "node without security and through a --curve node.",
             lambda c: [Variant("plain", lambda r, s: r.reqrep(s, c.requests, 128, None)),
                        Variant("CURVE", lambda r, s: r.reqrep(s, c.requests, 128, None, curve=True))],
             only=("tscale",)),
]

from tscale.bench import node_clients  # noqa: E402 - its scenarios build on the definitions above

SCENARIOS += node_clients.scenarios()
BY_KEY = {s.key: s for s in SCENARIOS}
