"""Overlay state of one node (sans-I/O): members, parent, children, liveness.

The overlay is a forest that becomes one tree: a node attaches only to a
parent whose node id sorts *lower* than its own, and a parent accepts only
children whose id sorts higher.  Parent pointers therefore always go down in
rank, so the links can never form a cycle, whatever each node believes about
the others; events routed over these links with split horizon reach every
node at most once.  A node without a parent (a root, or an orphan whose parent
died) attaches to the shallowest lower-ranked member it knows that still has
room below the soft fan-out (children counts and depths travel in the gossip).
A node with a parent moves to such a member when that makes it shallower
(move_candidate: make-before-break, with hysteresis so the tree does not flap);
merges and heals leave deep parts, and moves flatten them.  The soft fan-out
can be exceeded: a node whose every lower-ranked candidate is full asks as a
"last resort" and is accepted anyway, since otherwise the second-lowest node
could never attach; but never past the hard cap (2 x fan-out links), where a
higher-ranked child is moved away instead (make_room).  The lowest id of a
connected part is its root; when two parts learn of each other, the higher
root attaches, which is how partitions merge.

Members are learnt by gossip over the links, from UDP beacons and from
--join seeds.  Each member bumps a heartbeat counter in its own entry;
entries that stop advancing are forgotten.  Gossip over a link carries
deltas (`gossip_delta`): the full entry of a member only when the link has
not had it since it last changed (its origin bumps `rev` then), and otherwise
just [id, hb, stats] at most every REFRESH_EVERY heartbeats, which is all a
liveness counter needs.  At 1,000 members that is about 8 KB/s per link (both directions)
instead of about 150 KB/s for full lists (scripts/simulate-overlay).
"""
from __future__ import annotations

import zlib

DEAD_AFTER = 1.5          # a neighbour silent this long is dead (heartbeats every 0.5 s)
FORGET_AFTER = 15.0       # a member whose heartbeat counter stopped advancing this long is forgotten
PARENT_RETRY = 5.0        # do not ask a member that failed us as parent again for this long
LOST_KEEP = 300.0         # how long status lists lost nodes
REFRESH_EVERY = 10        # heartbeats (5 s) between liveness refreshes of one member on one link
MOVE_EVERY = 1.0          # seconds between two looks for a shallower parent
MOVE_SETTLE = 2.0         # after attaching, or after our depth changed, wait this long before moving
DETACHED = 64             # the depth a parentless non-root gossips (see Overlay.depth)
MOVE_GAIN = 1             # move only to a parent that makes us at least this many levels shallower


def _mix(a: str, b: str) -> int:
    """A tie-breaker that differs from node to node (deterministic: no process hash seed), so
    orphans that see the same candidates do not all ask the same one first."""
    return zlib.crc32(f"{a}/{b}".encode())


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
        self.last_resort = False               # the pending request may exceed the parent's room
        self.root_since = 0.0                  # when we last became parentless
        self.children: set[str] = set()
        self.heard: dict[str, float] = {}      # neighbour id -> last message time
        self.failed: dict[str, float] = {}     # id -> not before
        self.failed_kind: dict[str, str] = {}  # id -> "last" if it refused a last-resort request
        self.lost: list[dict] = []             # recently lost members
        self.gone: dict[str, tuple] = {}       # forgotten id -> (its hb then, when): stale gossip must not revive it
        self.rev = 0                           # bumped when our entry's content (not hb) changes
        self._content: tuple = ()
        self.sent: dict[str, dict] = {}        # link -> {member id: (hb, rev) last gossiped there}
        self.next_move = 0.0                   # no look for a shallower parent before this
        self.moving = False                    # the pending request is a move (we keep our parent meanwhile)
        self.moves = 0                         # moves to a shallower parent made (status, simulation)
        self._last_depth = 0

    @property
    def hard_children(self) -> int:
        """Never more children than this: parent + children <= 2 x max_children (the supervisor
        sets max_children after construction, from --max-children / TSCALE_MAX_CHILDREN)."""
        return max(1, 2 * self.max_children - 1)

    # -- membership -----------------------------------------------------------
    def depth(self) -> int:
        """Hops to our root, as far as we know (our parent's gossiped depth + 1).

        A parentless node that knows a lower-ranked member is not the root but an orphan (or
        the root of a part that has yet to merge): it says DETACHED, and so does its subtree
        (DETACHED + hops), so that other orphans do not pick a node of a cut-off part as
        "shallow" and end up deep once that part re-attaches."""
        if self.parent is None:
            return DETACHED if any(m < self.id for m in self.members) else 0
        return int(self.members.get(self.parent, {}).get("depth", 0)) + 1

    def my_entry(self) -> dict:
        kids, depth = len(self.children), self.depth()
        content = (kids, depth, self.me.get("host"))
        if content != self._content:
            self._content = content
            self.rev += 1
        return dict(self.me, hb=self.hb, kids=kids, depth=depth, rev=self.rev)

    def tick(self) -> None:
        self.hb += 1

    def learn(self, infos, now: float) -> list[str]:
        """Merge gossiped member entries; returns the ids that are new to us."""
        new = []
        for info in infos:
            if type(info) is list:     # [id, hb, stats]: a liveness refresh of a member we know
                old = self.members.get(info[0]) if len(info) == 3 else None
                if old is not None and type(info[1]) is int and info[1] > old.get("hb", 0):
                    old["hb"] = info[1]
                    old["stats"] = info[2]
                    self.seen[info[0]] = now
                continue
            mid = info.get("id")
            if not mid or mid == self.id or info.get("cluster") != self.me["cluster"]:
                continue
            old = self.members.get(mid)
            if old is None:
                gone = self.gone.get(mid)
                if gone is not None and info.get("hb", 0) <= gone[0]:
                    continue      # a member we lost, gossiped by a node that has not noticed yet
                new.append(mid)
            if old is None or info.get("hb", 0) > old.get("hb", 0):
                self.members[mid] = dict(info)
                self.seen[mid] = now
            elif info.get("rev", 0) > old.get("rev", 0):    # newer content, liveness already refreshed
                self.members[mid] = dict(info, hb=old.get("hb", 0))
        return new

    def forget(self, mid: str, now: float, why: str) -> None:
        info = self.members.pop(mid, None)
        self.seen.pop(mid, None)
        if info is not None:
            self.lost.append({"id": mid, "name": info.get("name", ""), "at": now, "why": why})
            self.gone[mid] = (info.get("hb", 0), now)
        self.lost = [x for x in self.lost if now - x["at"] < LOST_KEEP][-50:]
        if len(self.gone) > 64:
            self.gone = {m: g for m, g in self.gone.items() if now - g[1] < LOST_KEEP}

    def expire(self, now: float) -> list[str]:
        gone = [m for m, t in self.seen.items()
                if now - t > FORGET_AFTER and m != self.parent and m not in self.children]
        for m in gone:
            self.forget(m, now, "silent")
        return gone

    def gossip(self) -> list[dict]:
        return [self.my_entry()] + list(self.members.values())

    def gossip_delta(self, link: str) -> list:
        """What neighbour `link` has not heard from us: full entries that are new to it or
        changed (rev), [id, hb, stats] for members due a liveness refresh.  A new link gets
        everything (its `sent` is empty)."""
        sent = self.sent.setdefault(link, {})
        out: list = []
        for info in [self.my_entry()] + list(self.members.values()):
            mid, hb, rev = info["id"], info.get("hb", 0), info.get("rev", 0)
            last = sent.get(mid)
            if last is None or last[1] != rev:
                out.append(info)
            elif hb - last[0] >= REFRESH_EVERY:
                out.append([mid, hb, info.get("stats")])
            else:
                continue
            sent[mid] = (hb, rev)
        return out

    # -- links ----------------------------------------------------------------
    def neighbours(self) -> list[str]:
        return ([self.parent] if self.parent else []) + sorted(self.children)

    def heard_from(self, mid: str, now: float) -> None:
        self.heard[mid] = now

    def dead_neighbours(self, now: float) -> list[str]:
        return [m for m in self.neighbours() if now - self.heard.get(m, now) > DEAD_AFTER]

    def may_accept_child(self, mid: str, last_resort: bool = False) -> str | None:
        """None if `mid` may become our child, else the reason to refuse.

        Up to max_children (soft) anyone ranked above us; past it only a last-resort request,
        and never past hard_children (2 x max_children - 1, so parent + children <= 2 x
        max_children).  At the hard cap a last-resort request is still accepted if a child
        ranked above the requester can make room (make_room): otherwise a full lowest node
        could keep a lower-ranked node out of the tree for good."""
        if mid <= self.id:
            return "rank: a child's id must sort above its parent's"
        if mid == self.parent or mid == self.pending_parent:
            return "that node is our parent"
        if mid in self.children:
            return None
        if len(self.children) >= self.hard_children:
            if last_resort and self._evictee(mid) is not None:
                return None
            return f"full: {len(self.children)} children"
        if len(self.children) >= self.max_children and not last_resort:
            return f"already {self.max_children} children"
        return None

    def _evictee(self, mid: str) -> str | None:
        above = [c for c in self.children if c > mid]
        return max(above) if above else None

    def make_room(self, mid: str, now: float) -> str | None:
        """Before adding `mid` as a child at the hard cap: the child that must leave (the
        highest-ranked, which has the most other choices), dropped here; the caller tells it
        (BYE "moved": it re-attaches elsewhere as an orphan).  None if there was room."""
        if mid in self.children or len(self.children) < self.hard_children:
            return None
        out = self._evictee(mid)
        if out is not None:
            self.drop(out, now, "moved")
        return out

    def add_child(self, mid: str, now: float) -> None:
        if mid not in self.children:
            self.sent.pop(mid, None)       # a new link: gossip everything once
        self.children.add(mid)
        self.heard[mid] = now

    def drop(self, mid: str, now: float, why: str) -> None:
        """A link ended (death, refusal, bye, "moved": the other side moved it or us away)."""
        if mid == self.parent:
            self.parent = None
            self.root_since = now
            self.failed[mid] = now + PARENT_RETRY
        if mid == self.pending_parent:
            self.pending_parent = None
            self.failed[mid] = now + PARENT_RETRY
            self.failed_kind[mid] = "last" if self.last_resort else "full"
            self.moving = False
        self.children.discard(mid)
        self.heard.pop(mid, None)
        self.sent.pop(mid, None)
        if why in ("dead", "bye"):
            self.forget(mid, now, why)

    def parent_candidate(self, now: float) -> tuple[str, bool] | None:
        """(whom to ask to be our parent, last_resort), if we have none and are not waiting."""
        if self.parent is not None or self.pending_parent is not None:
            return None
        lower = [m for m in sorted(self.members) if m < self.id]
        if not lower:
            return None
        fresh = [m for m in lower if self.failed.get(m, 0) <= now]
        if fresh:
            # Room first, shallowest first (each level is one more relay hop between two
            # leaves; with depth first the tree fills like a heap: about log_fanout(N) deep),
            # ties broken differently by each node (orphans of one dead parent would otherwise
            # all ask the same member first); then members that look full but might not be
            # (gossip lags), lowest rank first.
            members = self.members
            roomy = [m for m in fresh if members[m].get("kids", 0) < self.max_children]
            if roomy:
                return min(roomy, key=lambda m: (members[m].get("depth", 0), _mix(self.id, m))), False
            return fresh[0], False
        # Every lower-ranked member refused us lately: ask as a last resort the
        # lowest one that has not refused a last-resort request -- but only after
        # a heartbeat period of gossip, which usually turns up a member with room.
        if now - self.root_since < 1.0:
            return None
        for mid in lower:
            if self.failed_kind.get(mid) != "last":
                return mid, True
        return None

    def asking(self, mid: str, now: float, last_resort: bool = False) -> None:
        self.pending_parent = mid
        self.pending_since = now
        self.last_resort = last_resort
        self.moving = self.parent is not None

    def accepted(self, mid: str, now: float) -> str | None:
        """`mid` accepted us as its child.  Returns the parent we had (a move), which the
        caller must tell (BYE "moved") and whose link ends here, else None."""
        if self.pending_parent == mid:
            self.pending_parent = None
        old = self.parent if self.parent != mid else None
        if old is not None:
            self.heard.pop(old, None)
            self.sent.pop(old, None)
            self.moves += 1
        self.moving = False
        self.parent = mid
        self.sent.pop(mid, None)
        self.heard[mid] = now
        self.next_move = now + MOVE_SETTLE
        return old

    def move_candidate(self, now: float) -> str | None:
        """A shallower parent to move to, if we have a parent and one is worth it.

        Candidates are what an orphan would ask: ranked below us (so a move can never make a
        cycle: parents still rank below their children) and with room below the soft
        fan-out, their depth known from gossip heard lately.  We move only if it makes us at
        least MOVE_GAIN levels shallower, at most every MOVE_EVERY seconds, and not within
        MOVE_SETTLE seconds of attaching or of our own depth changing (an ancestor that moved
        makes us shallower too, and the news travels down one hop per gossip): hysteresis,
        so the tree does not flap.  Make-before-break: the parent is kept until the new one
        accepts (accepted() then returns it)."""
        if self.parent is None or self.pending_parent is not None:
            return None
        mine = self.depth()
        if mine != self._last_depth:
            self._last_depth = mine
            self.next_move = max(self.next_move, now + MOVE_SETTLE)
        if now < self.next_move or mine <= MOVE_GAIN:
            return None
        self.next_move = now + MOVE_EVERY
        best, best_key = None, None
        for m, info in self.members.items():
            if m >= self.id or m == self.parent or self.failed.get(m, 0) > now:
                continue
            d = info.get("depth")
            if type(d) is not int or d + 1 > mine - MOVE_GAIN or info.get("kids", 0) >= self.max_children:
                continue
            if now - self.seen.get(m, -1e9) > FORGET_AFTER / 2:
                continue
            key = (d, _mix(self.id, m))
            if best_key is None or key < best_key:
                best, best_key = m, key
        return best

    def is_root(self) -> bool:
        return self.parent is None

    def seek_target(self, rnd) -> str | None:
        """A random known member for a root to swap gossip with.

        Seeds and beacons alone can leave a root with a stale view (it knows only
        higher-ranked members and nobody who knows better talks to it); one
        random exchange per period spreads the lower ranks, so parts merge."""
        others = [m for m in self.members if m not in self.children]
        return rnd.choice(others) if others else None
