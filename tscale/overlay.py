"""Overlay state of one node (sans-I/O): members, parent, children, liveness.

The overlay is a forest that becomes one tree: a node attaches only to a
parent whose node id sorts *lower* than its own, and a parent accepts only
children whose id sorts higher.  Parent pointers therefore always go down in
rank, so the links can never form a cycle, whatever each node believes about
the others; events routed over these links with split horizon reach every
node at most once.  A node with a live parent never changes it (no flapping);
a node without one (a root, or an orphan whose parent died) attaches to the
lowest-ranked member it knows that still has room for a child.  The lowest
id of a connected part is its root; when two parts learn of each other, the
higher root attaches, which is how partitions merge.

Members are learnt by gossip over the links, from UDP beacons and from
--join seeds.  Each member bumps a heartbeat counter in its own entry;
entries that stop advancing are forgotten.
"""
from __future__ import annotations

DEAD_AFTER = 1.5          # a neighbour silent this long is dead (heartbeats every 0.5 s)
FORGET_AFTER = 15.0       # a member whose heartbeat counter stopped advancing this long is forgotten
PARENT_RETRY = 5.0        # do not ask a member that failed us as parent again for this long
LOST_KEEP = 300.0         # how long status lists lost nodes


class Overlay:
    def __init__(self, me: dict, max_children: int = 8):
        self.me = me                      # {"id", "name", "cluster", "host", "port", "ctl", "workers", ...}
        self.id: str = me["id"]
        self.max_children = max_children
        self.hb = 0
        self.members: dict[str, dict] = {}     # id -> info (with "hb")
        self.seen: dict[str, float] = {}       # id -> when its hb last advanced
        self.parent: str | None = None
        self.pending_parent: str | None = None  # asked, not yet accepted
        self.pending_since = 0.0
        self.children: set[str] = set()
        self.heard: dict[str, float] = {}      # neighbour id -> last message time
        self.failed: dict[str, float] = {}     # id -> not before
        self.lost: list[dict] = []             # recently lost members

    # -- membership -----------------------------------------------------------
    def my_entry(self) -> dict:
        return dict(self.me, hb=self.hb)

    def tick(self) -> None:
        self.hb += 1

    def learn(self, infos, now: float) -> list[str]:
        """Merge gossiped member entries; returns the ids that are new to us."""
        new = []
        for info in infos:
            mid = info.get("id")
            if not mid or mid == self.id or info.get("cluster") != self.me["cluster"]:
                continue
            old = self.members.get(mid)
            if old is None:
                new.append(mid)
            if old is None or info.get("hb", 0) > old.get("hb", 0):
                self.members[mid] = dict(info)
                self.seen[mid] = now
        return new

    def forget(self, mid: str, now: float, why: str) -> None:
        info = self.members.pop(mid, None)
        self.seen.pop(mid, None)
        if info is not None:
            self.lost.append({"id": mid, "name": info.get("name", ""), "at": now, "why": why})
        self.lost = [x for x in self.lost if now - x["at"] < LOST_KEEP][-50:]

    def expire(self, now: float) -> list[str]:
        gone = [m for m, t in self.seen.items()
                if now - t > FORGET_AFTER and m != self.parent and m not in self.children]
        for m in gone:
            self.forget(m, now, "silent")
        return gone

    def gossip(self) -> list[dict]:
        return [self.my_entry()] + list(self.members.values())

    # -- links ----------------------------------------------------------------
    def neighbours(self) -> list[str]:
        return ([self.parent] if self.parent else []) + sorted(self.children)

    def heard_from(self, mid: str, now: float) -> None:
        self.heard[mid] = now

    def dead_neighbours(self, now: float) -> list[str]:
        return [m for m in self.neighbours() if now - self.heard.get(m, now) > DEAD_AFTER]

    def may_accept_child(self, mid: str) -> str | None:
        """None if `mid` may become our child, else the reason to refuse."""
        if mid <= self.id:
            return "rank: a child's id must sort above its parent's"
        if mid == self.parent or mid == self.pending_parent:
            return "that node is our parent"
        if mid not in self.children and len(self.children) >= self.max_children:
            return f"already {self.max_children} children"
        return None

    def add_child(self, mid: str, now: float) -> None:
        self.children.add(mid)
        self.heard[mid] = now

    def drop(self, mid: str, now: float, why: str) -> None:
        """A link ended (death, refusal, bye)."""
        if mid == self.parent:
            self.parent = None
            self.failed[mid] = now + PARENT_RETRY
        if mid == self.pending_parent:
            self.pending_parent = None
            self.failed[mid] = now + PARENT_RETRY
        self.children.discard(mid)
        self.heard.pop(mid, None)
        if why in ("dead", "bye"):
            self.forget(mid, now, why)

    def parent_candidate(self, now: float) -> str | None:
        """Whom to ask to be our parent, if we have none and are not waiting for an answer."""
        if self.parent is not None or self.pending_parent is not None:
            return None
        for mid in sorted(self.members):
            if mid >= self.id:
                break
            if self.failed.get(mid, 0) > now:
                continue
            if mid in self.children:
                continue
            return mid
        return None

    def asking(self, mid: str, now: float) -> None:
        self.pending_parent = mid
        self.pending_since = now

    def accepted(self, mid: str, now: float) -> None:
        if self.pending_parent == mid:
            self.pending_parent = None
        self.parent = mid
        self.heard[mid] = now

    def is_root(self) -> bool:
        return self.parent is None
