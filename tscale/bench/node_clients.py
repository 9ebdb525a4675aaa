"""Node.js clients side by side: the tscale Node client (clients/node) on a tscale node
and nats.js (npm ``nats``) on nats-server, each driven by clients/node/bench/driver.js.

Two scenarios, run in one harness run like the others: 1 -> 1 at 128 B and
request/reply, each compared with nats.js ("× nats.js").  The servers are started
exactly as for the Python rows (``Tscale.start``, ``Nats.start``); only the client
processes differ.  Needs ``node`` on PATH and ``npm ci`` done in clients/node
(scripts/test-node does it); without them both systems report why and are skipped.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tscale.bench.systems import ALL, Nats, System, Tscale

NODE_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node"
DRIVER = NODE_CLIENT / "bench" / "driver.js"
NODE_PUBSUB, NODE_REQREP = "node-pubsub", "node-reqrep"   # features: only these systems have them


def _package_version(name: str) -> str:
    try:
        return json.loads((NODE_CLIENT / "node_modules" / name / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "not installed"


class _NodeClients(System):
    server: System
    client = ""
    packages: tuple[str, ...] = ()
    features = frozenset({NODE_PUBSUB, NODE_REQREP})

    def problem(self):
        if not shutil.which("node"):
            return "node not found (apt-get install nodejs npm)"
        missing = [p for p in self.packages if not (NODE_CLIENT / "node_modules" / p).is_dir()]
        if missing:
            return f"npm packages missing in clients/node ({', '.join(missing)}): run npm ci there"
        return self.server.server_problem()

    def start(self, rundir, workers=1):
        return self.server.start(rundir, workers)

    def driver_argv(self, role: str, addr: str, args: dict) -> list[str]:
        return ["node", str(DRIVER), role, self.client, addr, json.dumps(args)]

    def versions(self):
        out = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10)
        return {"node": out.stdout.strip().lstrip("v") or "unknown",
                **{f"npm {p}": _package_version(p) for p in self.packages}}


class TscaleNode(_NodeClients):
    key, label = "tscale-node", "tscale (Node client)"
    server, client = Tscale(), "tscale"
    packages = ("zeromq", "@msgpack/msgpack")


class NatsNode(_NodeClients):
    key, label = "nats-node", "NATS (nats.js)"
    server, client = Nats(), "nats"
    packages = ("nats",)


SYSTEMS = {s.key: s for s in (TscaleNode(), NatsNode())}
ALL.update(SYSTEMS)


def scenarios() -> list:
    """The two Node.js scenarios (appended to ``scenarios.SCENARIOS``)."""
    from tscale.bench.scenarios import LATENCY, THROUGHPUT, Scenario, Variant, _flow, _one_to_one

    return [
        Scenario(NODE_PUBSUB, "Node.js clients: 1 publisher → 1 subscriber, 128 B", THROUGHPUT, NODE_PUBSUB,
                 "The 1 → 1 128 B flow of scenario 1 with Node.js client processes: the tscale Node client "
                 "(clients/node) against a tscale node, nats.js against nats-server, same counts and "
                 "servers as the Python rows.  Both publishers call publish() in a loop that lets I/O run "
                 "every 1000 events, then flush once.  Ratio to nats.js.",
                 lambda c: [Variant("128 B", _flow(_one_to_one(128), lambda c: c.events, c))],
                 baseline="nats-node"),
        Scenario(NODE_REQREP, "Node.js clients: request/reply round trip, one in flight, 128 B", LATENCY,
                 NODE_REQREP,
                 "Scenario 5 with Node.js requester and echo responder processes (tscale Node client, "
                 "nats.js), back to back.  Ratio to nats.js.",
                 lambda c: [Variant("back to back", lambda r, s: r.reqrep(s, c.requests, 128, None))],
                 baseline="nats-node"),
    ]
