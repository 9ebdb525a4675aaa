"""Confirmations of interest changes between the workers of one host (sans-I/O).

Why: a SUB or UNSUB is answered OK only once every owner worker has applied
it, so that an event published after the OK is routed with the change (a
queue-group member that left gets none of it, a new subscriber gets all of
it).  The workers talk over PUB/SUB, which loses what a worker sends before
the receiver's SUB has connected; a worker learns another's whole interest
from the SNAPSHOT that one sends in answer to its WORKER_HELLO.  Two rules
follow, one for each side:

* The requester waits for every owner it does not know to be down, not only
  for the owners it is synced with: an owner that has not got our snapshot
  yet would otherwise let the OK out before it knows.  When an owner becomes
  synced (its SNAPSHOT arrived: it heard our WORKER_HELLO, so what we send
  now reaches it) the requester asks again for every key still waited for
  (`ACK_REQ`), since the first request may have been lost.
* The owner acknowledges a key of worker j only once it has applied j's
  snapshot; a key that comes earlier is held and acknowledged right after
  the snapshot, when its view of j's interest is whole.

A worker that stays silent is still covered by the requester's ACK_TIMEOUT.
"""
from __future__ import annotations


class WorkerAcks:
    __slots__ = ("synced", "down", "held")

    def __init__(self, synced: set):
        self.synced = synced            # the workers whose snapshot we applied (owned by the worker)
        self.down: set[int] = set()     # workers the supervisor reported down, until they sync again
        self.held: dict[int, list] = {}  # worker -> ackkeys to acknowledge once its snapshot is applied

    # -- requester side -------------------------------------------------------
    def waiting_for(self, targets) -> set:
        """The owner workers whose acknowledgement an interest change waits for."""
        return set(targets) - self.down

    # -- owner side -----------------------------------------------------------
    def request(self, frm: int, ackkey) -> bool:
        """Worker `frm` asks us to confirm `ackkey`: True to answer now, False if held."""
        if frm in self.synced:
            return True
        self.held.setdefault(frm, []).append(ackkey)
        return False

    def snapshot_applied(self, frm: int) -> list:
        """`frm`'s snapshot is applied (the caller added it to `synced`): the keys now to confirm."""
        self.down.discard(frm)
        return self.held.pop(frm, [])

    def worker_down(self, k: int) -> None:
        """Worker `k` died: what it asked is void, and nobody waits for it until it syncs again."""
        self.held.pop(k, None)
        self.down.add(k)
