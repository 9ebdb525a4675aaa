"""Peers are peers: which connections of a worker may send node-to-node frames (sans-I/O).

A worker accepts PEER_EVENTS only on a connection whose HELLO named, as option
`peer`, a node that is one of this node's current overlay neighbours, that is a
node the cluster control plane attached and the supervisor announced on the bus
(PEERS, CLUSTER_SNAPSHOT).  A bare HELLO option from anyone else is refused
(not_authorized).  `allowed` is the one check; a cryptographic proof (a cluster
key) slots in there.

The gate also keeps two small things that belong to the rule:

* claims: a new neighbour's HELLO can overtake the supervisor's news of it.  A
  refused claim is remembered for CLAIM_WAIT seconds and admitted if the news
  comes in time (`admit`); unconfirmed claims expire (`expire`) and only then
  are worth a warning.  At most MAX_CLAIMS are kept.
* invalid: per neighbour, how many events it sent that failed validation
  (dropped, never delivered; shown in status).
"""
from __future__ import annotations

CLAIM_WAIT = 2.0
MAX_CLAIMS = 256


class PeerGate:
    def __init__(self):
        self.neighbours: frozenset = frozenset()
        self.claims: dict[bytes, tuple] = {}   # routing id -> (conn, hello fields, deadline)
        self.invalid: dict[str, int] = {}      # neighbour id -> invalid events received from it

    def allowed(self, peer_id: str) -> bool:
        """May a connection that said HELLO with peer=`peer_id` send peer frames?"""
        return peer_id in self.neighbours

    def claim(self, ident: bytes, conn, hello: tuple, now: float) -> bool:
        """Remember a refused claim (hello[4] is the peer id); False if too many are pending."""
        if len(self.claims) >= MAX_CLAIMS and ident not in self.claims:
            return False
        self.claims[ident] = (conn, hello, now + CLAIM_WAIT)
        return True

    def set_neighbours(self, ids, now: float) -> list[tuple]:
        """New neighbour set; returns the pending (conn, hello) claims it now admits."""
        self.neighbours = frozenset(ids)
        self.invalid = {p: n for p, n in self.invalid.items() if p in self.neighbours}
        admitted = []
        for ident, (conn, hello, deadline) in list(self.claims.items()):
            if deadline < now:
                continue
            if hello[4] in self.neighbours:
                del self.claims[ident]
                admitted.append((conn, hello))
        return admitted

    def expire(self, now: float) -> list[tuple]:
        """Drop claims older than CLAIM_WAIT; returns their (ident, hello)."""
        gone = [(i, c[1]) for i, c in self.claims.items() if c[2] < now]
        for ident, _ in gone:
            del self.claims[ident]
        return gone

    def count_invalid(self, peer_id: str, n: int) -> None:
        if peer_id in self.neighbours:
            self.invalid[peer_id] = self.invalid.get(peer_id, 0) + n
