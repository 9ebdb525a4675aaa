"""Round-based simulation of the overlay logic (tscale.overlay) at any size.

Runs the same `Overlay` class the supervisor uses, with messages delivered
instantly inside a round (one round = one 0.5 s heartbeat period), so the
tree-building, healing and merging rules can be checked for hundreds or
thousands of nodes without starting them.  Used by tests/test_overlay_sim.py
and `scripts/simulate-overlay`.
"""
from __future__ import annotations

import random

import msgpack

from .overlay import DEAD_AFTER, Overlay

ROUND = 0.5   # seconds per round: the heartbeat period
ATTEMPTS_PER_ROUND = 10


class SimNet:
    def __init__(self, n: int, seed: int = 1, max_children: int = 8, seeds_per_node: int = 1):
        rnd = random.Random(seed)
        self.rnd = rnd
        self.now = 0.0
        self.nodes: dict[str, Overlay] = {}
        self.dead: dict[str, float] = {}
        self.cut: set[frozenset] = set()     # pairs of partitions that cannot talk
        self.side: dict[str, int] = {}
        ids = [f"{rnd.getrandbits(64):016x}" for _ in range(n)]
        for i, nid in enumerate(ids):
            ov = Overlay({"id": nid, "name": f"n{i}", "cluster": "sim", "host": "h", "port": 1, "ctl": 2,
                          "workers": 1}, max_children=max_children)
            self.nodes[nid] = ov
        self.order = ids
        # Each node is started with --join pointing at an earlier node (node 0 has none).
        self.seeds = {nid: [ids[rnd.randrange(i)] for _ in range(seeds_per_node)] if i else []
                      for i, nid in enumerate(ids)}
        self.violations: list[str] = []
        self.evictions = 0
        self.link_bytes: dict[frozenset, int] = {}   # gossip bytes per link (both ways) since the last reset

    def add_node(self) -> str:
        """A node that starts later, with --join pointing at a random live node (like a restart:
        a new id)."""
        nid = f"{self.rnd.getrandbits(64):016x}"
        first = self.nodes[self.order[0]]
        self.nodes[nid] = Overlay({"id": nid, "name": f"n{len(self.order)}", "cluster": "sim", "host": "h",
                                   "port": 1, "ctl": 2, "workers": 1}, max_children=first.max_children)
        live = [m for m in self.order if self.alive(m)]
        self.seeds[nid] = [self.rnd.choice(live)] if live else []
        self.order.append(nid)
        return nid

    # -- reachability ---------------------------------------------------------------
    def alive(self, nid: str) -> bool:
        return nid not in self.dead

    def reachable(self, a: str, b: str) -> bool:
        return self.alive(a) and self.alive(b) and self.side.get(a, 0) == self.side.get(b, 0)

    def kill(self, nid: str) -> None:
        self.dead[nid] = self.now

    def partition(self, group: set[str]) -> None:
        for nid in self.nodes:
            self.side[nid] = 1 if nid in group else 0

    def heal(self) -> None:
        self.side.clear()

    # -- one round --------------------------------------------------------------------
    def step(self) -> None:
        self.now += ROUND
        now = self.now
        live = [nid for nid in self.order if self.alive(nid)]
        for nid in live:
            ov = self.nodes[nid]
            ov.tick()
            for m in list(ov.neighbours()):
                if not self.reachable(nid, m):
                    last = ov.heard.get(m, now)
                    if now - last > DEAD_AFTER:
                        ov.drop(m, now, "dead")
                else:
                    ov.heard_from(m, now)
        gossip_round = int(now / ROUND) % 2 == 0      # members are gossiped every other heartbeat
        for nid in live:   # gossip deltas over links; roots also swap full lists with their seeds and one member
            ov = self.nodes[nid]
            if gossip_round:
                for m in ov.neighbours():
                    if self.reachable(nid, m):
                        delta = ov.gossip_delta(m)
                        self.link_bytes[frozenset((nid, m))] = (self.link_bytes.get(frozenset((nid, m)), 0)
                                                                + len(msgpack.packb(delta)))
                        self.nodes[m].learn(delta, now)
            peers = []
            r = int(now / ROUND)
            if ((ov.is_root() or not ov.members) and r % 4 == 0) or r % 20 == 0:   # 2 s for roots, 10 s for all
                peers += self.seeds[nid]
            if (ov.is_root() or not ov.members) and r % 4 == 0:
                extra = ov.seek_target(self.rnd)
                if extra is not None:
                    peers.append(extra)
            for m in peers:
                if self.reachable(nid, m):
                    other = self.nodes[m]
                    other.learn(ov.gossip(), now)
                    ov.learn(other.gossip(), now)
            ov.expire(now)
        for nid in live:   # orphans and roots look for a parent (a supervisor ticks every
            ov = self.nodes[nid]   # 50 ms, so it can try about ten candidates per heartbeat)
            for _ in range(ATTEMPTS_PER_ROUND):
                picked = ov.parent_candidate(now)
                if picked is None:
                    break
                cand, last_resort = picked
                ov.asking(cand, now, last_resort)
                if not self.reachable(nid, cand):
                    ov.drop(cand, now, "timeout")
                    continue
                if self._attach(nid, cand, last_resort):
                    break
        for nid in live:   # nodes with a parent move to a shallower one when it is worth it
            ov = self.nodes[nid]
            cand = ov.move_candidate(now)
            if cand is None:
                continue
            ov.asking(cand, now)
            if not self.reachable(nid, cand):
                ov.drop(cand, now, "timeout")
                continue
            self._attach(nid, cand, False)
        self._check_acyclic()

    def _attach(self, nid: str, cand: str, last_resort: bool) -> bool:
        """nid's ATTACH to cand (reachable), as cluster.py handles it on both sides."""
        now = self.now
        ov, target = self.nodes[nid], self.nodes[cand]
        target.learn([ov.my_entry()], now)
        if target.may_accept_child(nid, last_resort) is None:
            out = target.make_room(nid, now)
            if out is not None:            # evicted: told by a BYE "moved"
                self.evictions += 1
                if self.reachable(cand, out):
                    self.nodes[out].drop(cand, now, "moved")
            target.add_child(nid, now)
            old = ov.accepted(cand, now)
            if old is not None and self.reachable(nid, old):   # a move: BYE "moved" to the old parent
                self.nodes[old].drop(nid, now, "moved")
            return True
        ov.learn(target.gossip(), now)   # a refusal carries the refuser's view: more candidates
        ov.drop(cand, now, "refused")
        return False

    def _check_acyclic(self) -> None:
        for nid in self.nodes:
            seen = set()
            cur = nid
            while cur is not None:
                if cur in seen:
                    self.violations.append(f"cycle through {cur} at t={self.now}")
                    return
                seen.add(cur)
                p = self.nodes[cur].parent
                if p is not None and p >= cur:
                    self.violations.append(f"parent {p} does not rank below {cur}")
                cur = p

    # -- measurements -------------------------------------------------------------------
    def links(self) -> set[frozenset]:
        """Links both ends agree on (what would carry events)."""
        out = set()
        for nid, ov in self.nodes.items():
            if not self.alive(nid) or ov.parent is None:
                continue
            p = ov.parent
            if self.reachable(nid, p) and nid in self.nodes[p].children:
                out.add(frozenset((nid, p)))
        return out

    def components(self) -> list[set[str]]:
        live = {nid for nid in self.nodes if self.alive(nid)}
        adj: dict[str, set] = {nid: set() for nid in live}
        for link in self.links():
            a, b = tuple(link)
            adj[a].add(b)
            adj[b].add(a)
        comps, seen = [], set()
        for nid in live:
            if nid in seen:
                continue
            comp, stack = set(), [nid]
            while stack:
                x = stack.pop()
                if x in comp:
                    continue
                comp.add(x)
                stack.extend(adj[x] - comp)
            seen |= comp
            comps.append(comp)
        return comps

    def converged(self) -> bool:
        """One tree per side of any partition, spanning every live node of that side."""
        sides: dict[int, set] = {}
        for nid in self.nodes:
            if self.alive(nid):
                sides.setdefault(self.side.get(nid, 0), set()).add(nid)
        comps = self.components()
        return len(comps) == len(sides) and all(any(c == s for c in comps) for s in sides.values())

    def run_until_converged(self, max_rounds: int = 500) -> int:
        for r in range(1, max_rounds + 1):
            self.step()
            if self.converged():
                return r
        return -1

    def moves(self) -> int:
        return sum(ov.moves for ov in self.nodes.values())

    def run_until_settled(self, quiet_rounds: int = 8, max_rounds: int = 400) -> int:
        """Rounds until one tree per side and no move to a shallower parent for quiet_rounds
        rounds (counted up to the last move)."""
        last_move, moves = 0, self.moves()
        for r in range(1, max_rounds + 1):
            self.step()
            if self.moves() != moves:
                moves, last_move = self.moves(), r
            if r - last_move >= quiet_rounds and self.converged():
                return last_move
        return -1

    def depth(self) -> int:
        best = 0
        for nid in self.nodes:
            if not self.alive(nid):
                continue
            d, cur = 0, nid
            while self.nodes[cur].parent is not None and d < len(self.nodes):
                cur = self.nodes[cur].parent
                d += 1
            best = max(best, d)
        return best

    def max_degree(self) -> int:
        return max((len(ov.neighbours()) for nid, ov in self.nodes.items() if self.alive(nid)), default=0)

    def deliveries(self, source: str) -> dict[str, int]:
        """Copies each node gets when `source` floods an event over the agreed links
        with split horizon (what workers do when everyone is interested)."""
        links = self.links()
        adj: dict[str, list] = {}
        for link in links:
            a, b = tuple(link)
            adj.setdefault(a, []).append(b)
            adj.setdefault(b, []).append(a)
        copies = {source: 1}
        frontier = [(source, None)]
        hops = 0
        while frontier and hops < 10 * len(self.nodes):
            hops += 1
            nxt = []
            for node, came_from in frontier:
                for m in adj.get(node, []):
                    if m != came_from:
                        copies[m] = copies.get(m, 0) + 1
                        nxt.append((m, node))
            frontier = nxt
        return copies


def scenario(n: int, seed: int = 1, kill_fraction: float = 0.1) -> dict:
    """Form, let moves to shallower parents settle, kill a fraction of nodes (interior ones
    first), heal, settle again; report the figures."""
    net = SimNet(n, seed=seed)
    formed = net.run_until_converged()
    report = {"nodes": n, "rounds_to_form": formed, "seconds_to_form": formed * ROUND,
              "links": len(net.links()), "depth_at_form": net.depth(), "max_degree_at_form": net.max_degree()}
    settled = net.run_until_settled()
    report.update({"seconds_to_settle": settled * ROUND, "depth": net.depth(), "max_degree": net.max_degree(),
                   "moves_per_node": round(net.moves() / n, 2)})
    interior = sorted((nid for nid, ov in net.nodes.items() if len(ov.neighbours()) > 1),
                      key=lambda x: -len(net.nodes[x].neighbours()))
    victims = interior[:max(1, int(n * kill_fraction))]
    for v in victims:
        net.kill(v)
    moves = net.moves()
    healed = net.run_until_converged()
    report.update({"killed": len(victims), "rounds_to_heal": healed, "seconds_to_heal": healed * ROUND,
                   "links_after": len(net.links()), "depth_at_heal": net.depth(),
                   "max_degree_at_heal": net.max_degree()})
    settled = net.run_until_settled()
    report.update({"seconds_to_settle_after": settled * ROUND, "depth_after": net.depth(),
                   "max_degree_after": net.max_degree(), "moves_per_node_after": round((net.moves() - moves) / n, 2),
                   "evictions": net.evictions})
    for _ in range(40):                 # 20 s: the dead are forgotten, new links have had their first full sync
        net.step()
    net.link_bytes = {}                 # steady state: gossip per link over the next 30 s
    quiet = 60
    for _ in range(quiet):
        net.step()
    per_link = [b / (quiet * ROUND) for link, b in net.link_bytes.items() if link in net.links()] or [0]
    report["gossip_bytes_per_s_per_link_mean"] = round(sum(per_link) / len(per_link))
    report["gossip_bytes_per_s_per_link_max"] = round(max(per_link))
    src = next(nid for nid in net.order if net.alive(nid))
    copies = net.deliveries(src)
    live = [nid for nid in net.nodes if net.alive(nid)]
    report["flood_reaches"] = sum(1 for nid in live if copies.get(nid, 0) >= 1)
    report["flood_duplicates"] = sum(1 for c in copies.values() if c > 1)
    report["violations"] = len(net.violations)
    return report
