"""Worker-to-supervisor interest handover (sans-I/O).

A worker tells its supervisor every change of its cluster-visible interest
(one entry per (pattern, group) with a member count) over the in-host bus,
and the supervisor sums its workers into the node's local interest
(tscale/interest.py), which the overlay links carry to the other nodes.

The bus is ZeroMQ PUB/SUB: a message a worker publishes before the
supervisor's subscription has reached the worker's PUB socket is dropped
silently (the "slow joiner").  A worker that got a subscription in its first
moments used to lose it that way for good: the supervisor only ever applied
deltas.  The handover is therefore the Clone pattern of the ZeroMQ Guide
with the supervisor as the client:

* The worker keeps its whole table and sends nothing before the supervisor
  has proved it hears the worker: the supervisor answers the worker's
  WORKER_HELLO with a CLUSTER_SNAPSHOT, and from then on everything the
  worker publishes on that pipe arrives, in order.  On every such snapshot
  the worker sends its full table (``replace``), then deltas.
* Every report carries the worker's epoch (random per process start).  The
  supervisor learns a worker's epoch from its WORKER_HELLO and ignores reports
  of any other epoch, so a dead worker's last messages, read after its death
  was handled, cannot leave ghost interest behind; a new epoch withdraws the
  old incarnation's table.
* Cluster confirm requests (subscribe(confirm="cluster")) wait behind the
  full table, so the barrier they start never overtakes the interest.

Both halves return plain lists; the worker and the supervisor move them.
"""
from __future__ import annotations

from .interest import Key, apply_count, counts, diff


class InterestReport:
    """The worker's half: its cluster-visible interest and what to tell the supervisor."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.table: dict[Key, int] = {}
        self.heard = False          # the supervisor has answered our WORKER_HELLO
        self.deltas: list = []      # changes since the last message
        self.outbox: list = []      # ("interest", epoch, replace, entries) | ("confirm", key), in order

    def change(self, pattern: str, group, delta: int) -> None:
        apply_count(self.table, (pattern, group), delta)
        if self.heard:
            self.deltas.append([pattern, group, delta])

    def confirm(self, key) -> None:
        """A cluster confirm request: sent after every interest change made before it."""
        self._cut()
        self.outbox.append(("confirm", key))

    def supervisor_heard(self) -> None:
        """The supervisor's CLUSTER_SNAPSHOT arrived: it hears us now.  Send the full table
        (also on a repeated snapshot: a replace is idempotent), then whatever was waiting."""
        self.heard = True
        self.deltas = []
        waiting = [m for m in self.outbox if m[0] == "confirm"]
        self.outbox = [("interest", self.epoch, True, [[p, g, n] for (p, g), n in self.table.items()])] + waiting

    def take(self) -> list:
        """Messages to publish now (none before the supervisor hears us)."""
        self._cut()
        if not self.heard or not self.outbox:
            return []
        out, self.outbox = self.outbox, []
        return out

    def _cut(self) -> None:
        if self.deltas:
            self.outbox.append(("interest", self.epoch, False, self.deltas))
            self.deltas = []


class WorkerInterests:
    """The supervisor's half: each worker's table, by epoch; changes come back as node-level deltas."""

    def __init__(self):
        self.epochs: dict[int, int] = {}
        self.tables: dict[int, dict[Key, int]] = {}

    def hello(self, k: int, epoch: int) -> list:
        """Worker k (re)announced itself.  A new epoch withdraws the old incarnation's table."""
        if self.epochs.get(k) == epoch:
            return []
        out = self.down(k)
        self.epochs[k] = epoch
        self.tables[k] = {}
        return out

    def report(self, k: int, epoch: int, replace: bool, entries) -> list:
        """Apply a worker's report; returns [(pattern, group, delta)] for the node's local interest."""
        if self.epochs.get(k) != epoch:
            return []
        table = self.tables[k]
        if not replace:
            out = []
            for p, g, d in entries:
                apply_count(table, (p, g), d)
                out.append((p, g, d))
            return out
        self.tables[k] = new = counts(entries)
        return diff(table, new)

    def down(self, k: int) -> list:
        """Worker k died: withdraw everything it held."""
        self.epochs.pop(k, None)
        table = self.tables.pop(k, None) or {}
        return [(p, g, -n) for (p, g), n in table.items()]

    def total(self) -> dict[Key, int]:
        out: dict[Key, int] = {}
        for table in self.tables.values():
            for key, n in table.items():
                out[key] = out.get(key, 0) + n
        return out
