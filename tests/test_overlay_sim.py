"""The overlay rules (tscale/overlay.py) checked in simulation, sans-I/O.

Invariants: parent ids always sort below their children (so links never form a
cycle), the overlay converges to one tree, a flood over it reaches each node
exactly once, it heals after deaths and merges after a partition.
"""
from hypothesis import given, settings, strategies as st

from tscale.overlay import DETACHED, FORGET_AFTER, REFRESH_EVERY, Overlay
from tscale.overlay_sim import ROUND, SimNet


def _assert_flood_exactly_once(net: SimNet):
    live = [nid for nid in net.nodes if net.alive(nid)]
    for src in live[:5]:
        copies = net.deliveries(src)
        assert {nid: copies.get(nid, 0) for nid in live} == {nid: 1 for nid in live}


@settings(max_examples=25, deadline=None)
@given(n=st.integers(min_value=2, max_value=40), seed=st.integers(min_value=0, max_value=10_000))
def test_forms_one_tree_with_no_cycles(n, seed):
    net = SimNet(n, seed=seed)
    rounds = net.run_until_converged(max_rounds=200)
    assert rounds > 0, "did not converge"
    assert not net.violations
    assert len(net.links()) == n - 1
    _assert_flood_exactly_once(net)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(min_value=4, max_value=30), seed=st.integers(min_value=0, max_value=10_000),
       kills=st.integers(min_value=1, max_value=3))
def test_heals_after_deaths(n, seed, kills):
    net = SimNet(n, seed=seed)
    assert net.run_until_converged(max_rounds=200) > 0
    interior = sorted((nid for nid, ov in net.nodes.items() if len(ov.neighbours()) > 1))
    for nid in (interior or sorted(net.nodes))[:kills]:
        net.kill(nid)
    assert net.run_until_converged(max_rounds=200) > 0
    assert not net.violations
    live = [nid for nid in net.nodes if net.alive(nid)]
    assert len(net.links()) == len(live) - 1
    _assert_flood_exactly_once(net)


def test_partition_serves_both_sides_then_merges():
    net = SimNet(12, seed=7)
    assert net.run_until_converged() > 0
    ids = sorted(net.nodes)
    side = set(ids[::2])
    net.partition(side)
    assert net.run_until_converged() > 0          # one tree on each side
    assert len(net.components()) == 2
    net.heal()
    assert net.run_until_converged() > 0          # merged again
    assert len(net.components()) == 1
    assert not net.violations
    _assert_flood_exactly_once(net)


def test_rank_rule_and_room():
    me = {"id": "5", "cluster": "c"}
    ov = Overlay(me, max_children=2)
    assert ov.may_accept_child("4") is not None            # lower rank can never be our child
    assert ov.may_accept_child("6") is None
    ov.add_child("6", 0.0)
    ov.add_child("7", 0.0)
    assert ov.may_accept_child("8") is not None            # full (soft fan-out)
    assert ov.may_accept_child("8", last_resort=True) is None
    ov.learn([{"id": "1", "cluster": "c", "hb": 1, "kids": 1, "depth": 1},
              {"id": "3", "cluster": "c", "hb": 1, "kids": 0, "depth": 0},
              {"id": "2", "cluster": "c", "hb": 1, "kids": 2, "depth": 0},
              {"id": "9", "cluster": "other", "hb": 1}], 0.0)
    assert "9" not in ov.members                           # other clusters are ignored
    assert ov.parent_candidate(0.0) == ("3", False)        # room first (2 is full), then shallowest


def test_parts_that_formed_apart_find_each_other_through_seeds():
    """Regression: two parts formed, each root only knew its own part, and member
    knowledge from the joins had expired; periodic seed probes by every node fix it."""
    net = SimNet(26, seed=228)
    assert net.run_until_converged(max_rounds=200) > 0
    assert len(net.components()) == 1


def test_gossip_deltas_full_once_then_liveness_refreshes():
    ov = Overlay({"id": "5", "cluster": "c"})
    ov.learn([{"id": "1", "cluster": "c", "hb": 3, "rev": 1}, {"id": "3", "cluster": "c", "hb": 7, "rev": 1}], 0.0)
    first = ov.gossip_delta("9")
    assert [e["id"] for e in first] == ["5", "1", "3"]              # a new link gets every entry in full
    assert ov.gossip_delta("9") == []                               # nothing new: nothing sent
    for _ in range(REFRESH_EVERY):
        ov.tick()
    assert ov.gossip_delta("9") == [["5", REFRESH_EVERY, None]]      # our liveness, compact
    ov.learn([["3", 7 + REFRESH_EVERY, {"events_in": 4}]], 1.0)     # a refresh of a known member
    ov.learn([["77", 50, None]], 1.0)                                # of an unknown one: ignored
    assert ov.members["3"]["hb"] == 7 + REFRESH_EVERY and ov.seen["3"] == 1.0 and "77" not in ov.members
    assert ov.gossip_delta("9") == [["3", 7 + REFRESH_EVERY, {"events_in": 4}]]
    ov.add_child("8", 1.0)                                          # our content changed: full entry again
    (mine,) = ov.gossip_delta("9")
    assert mine["id"] == "5" and mine["kids"] == 1
    ov.drop("9", 2.0, "dead")                                       # the link ended: a new one starts over
    assert len(ov.gossip_delta("9")) == 3


def test_delta_gossip_keeps_every_live_member_known_long_after_forget_after():
    """Liveness refreshes every REFRESH_EVERY heartbeats must outrun FORGET_AFTER over
    every path of the tree, or members would be forgotten and re-learnt over and over."""
    net = SimNet(60, seed=5, max_children=3)     # a deeper tree: longer paths
    assert net.run_until_converged(max_rounds=200) > 0

    def everyone_knows_everyone():
        return all(len(ov.members) == len(net.nodes) - 1 for ov in net.nodes.values())

    for _ in range(60):
        if everyone_knows_everyone():
            break
        net.step()
    assert everyone_knows_everyone(), "gossip did not spread the members within 30 s"
    for _ in range(int(4 * FORGET_AFTER / ROUND)):
        net.step()
        for nid, ov in net.nodes.items():
            assert len(ov.members) == len(net.nodes) - 1, f"{nid} forgot a live member at t={net.now}"
    assert not any(ov.lost for ov in net.nodes.values())
    assert net.converged()


# ----------------------------------------------------------------------------- a shallow tree (issue 13)
def _heap_depth(n: int, fanout: int) -> int:
    """Depth of the shallowest tree of n nodes with fanout children each (a complete heap)."""
    depth, level, total = 0, 1, 1
    while total < n:
        level *= fanout
        total += level
        depth += 1
    return depth


def _assert_degree_cap(net: SimNet, fanout: int):
    for nid, ov in net.nodes.items():
        if net.alive(nid):
            assert len(ov.neighbours()) <= 2 * fanout, f"{nid} has {len(ov.neighbours())} links at t={net.now}"


@settings(max_examples=30, deadline=None)
@given(n=st.integers(min_value=2, max_value=40), fanout=st.integers(min_value=1, max_value=4),
       seed=st.integers(min_value=0, max_value=10_000),
       churn=st.lists(st.tuples(st.sampled_from(["join", "kill", "kill_interior", "wait"]),
                                st.integers(min_value=0, max_value=10_000)), max_size=8))
def test_random_joins_and_leaves_keep_the_tree_shallow_capped_and_acyclic(n, fanout, seed, churn):
    """Under any joins and deaths: never a cycle, never more than 2 x fanout links on a node
    (checked every round), and once settled one tree no deeper than a complete heap + 2."""
    net = SimNet(n, seed=seed, max_children=fanout)
    for _ in range(400):
        net.step()
        _assert_degree_cap(net, fanout)
        if net.converged():
            break
    for what, k in churn:
        live = [nid for nid in net.order if net.alive(nid)]
        if what == "join":
            net.add_node()
        elif what.startswith("kill") and len(live) > 1:
            pool = [nid for nid in live if len(net.nodes[nid].neighbours()) > 1] if what == "kill_interior" else []
            net.kill(sorted(pool or live)[k % len(pool or live)])
        for _ in range(4 + k % 6):      # at least one seed probe (every 2 s) after a join
            net.step()
            _assert_degree_cap(net, fanout)
    for _ in range(400):
        net.step()
        _assert_degree_cap(net, fanout)
        if net.converged():
            break
    assert net.converged(), "did not converge"
    assert net.run_until_settled() >= 0, "moves did not settle"
    _assert_degree_cap(net, fanout)
    assert not net.violations
    live = [nid for nid in net.nodes if net.alive(nid)]
    assert net.depth() <= _heap_depth(len(live), fanout) + 2, (net.depth(), len(live))
    _assert_flood_exactly_once(net)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10_000))
def test_two_hundred_nodes_settle_at_most_one_level_deeper_than_a_heap(seed):
    net = SimNet(200, seed=seed)                 # soft fan-out 8: a heap of 200 is 3 deep
    assert net.run_until_converged() > 0
    assert net.run_until_settled() >= 0
    assert net.depth() <= _heap_depth(200, 8) + 1
    assert net.max_degree() <= 16 and not net.violations


def test_hard_cap_refuses_then_makes_room_for_a_lower_ranked_last_resort():
    ov = Overlay({"id": "10", "cluster": "c"}, max_children=2)   # hard cap: 3 children (+ parent = 4)
    for c in ("50", "60", "70"):
        assert ov.may_accept_child(c, last_resort=True) is None
        assert ov.make_room(c, 0.0) is None
        ov.add_child(c, 0.0)
    assert ov.may_accept_child("80") is not None                  # past the soft fan-out
    assert ov.may_accept_child("80", last_resort=True) is not None  # at the hard cap: nobody ranks above 80
    assert ov.may_accept_child("20", last_resort=True) is None     # 70 (the highest) can go below 20
    assert ov.make_room("20", 0.0) == "70"
    ov.add_child("20", 0.0)
    assert ov.children == {"20", "50", "60"}


def test_move_candidate_picks_a_shallower_lower_ranked_parent_with_hysteresis():
    ov = Overlay({"id": "50", "cluster": "c"}, max_children=8)
    members = [{"id": "10", "cluster": "c", "hb": 1, "kids": 3, "depth": 0},
               {"id": "20", "cluster": "c", "hb": 1, "kids": 8, "depth": 1},   # shallow but full
               {"id": "30", "cluster": "c", "hb": 1, "kids": 1, "depth": 4},   # our parent
               {"id": "40", "cluster": "c", "hb": 1, "kids": 0, "depth": 2},
               {"id": "60", "cluster": "c", "hb": 1, "kids": 0, "depth": 0}]   # ranks above us: never
    ov.learn(members, 0.0)
    ov.asking("30", 0.0)
    assert ov.accepted("30", 0.0) is None and ov.depth() == 5
    assert ov.move_candidate(1.0) is None                 # too soon after attaching (MOVE_SETTLE)
    ov.learn([dict(m, hb=2) for m in members], 9.0)       # depths heard lately
    assert ov.move_candidate(10.0) == "10"                # the shallowest lower-ranked one with room
    assert ov.move_candidate(10.1) is None                # at most every MOVE_EVERY
    ov.asking("10", 20.0)
    assert ov.moving and ov.parent == "30"                 # make-before-break: the parent stays meanwhile
    assert ov.accepted("10", 20.0) == "30"                # the old parent, to be told BYE "moved"
    assert ov.parent == "10" and ov.depth() == 1 and ov.moves == 1
    assert ov.move_candidate(40.0) is None                # depth 1: nothing is shallower
    ov.learn([{"id": "10", "cluster": "c", "hb": 2, "kids": 4, "depth": 0, "rev": 5}], 40.0)
    assert ov.move_candidate(50.0) is None


def test_an_orphan_advertises_detached_so_others_do_not_attach_into_a_cut_off_part():
    ov = Overlay({"id": "50", "cluster": "c"})
    assert ov.depth() == 0                                # alone: the root
    ov.learn([{"id": "60", "cluster": "c", "hb": 1}], 0.0)
    assert ov.depth() == 0                                # still the lowest: the root
    ov.learn([{"id": "10", "cluster": "c", "hb": 1}], 0.0)
    assert ov.depth() == DETACHED                         # a lower-ranked member exists: not the root
