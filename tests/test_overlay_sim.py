"""The overlay rules (tscale/overlay.py) checked in simulation, sans-I/O.

Invariants: parent ids always sort below their children (so links never form a
cycle), the overlay converges to one tree, a flood over it reaches each node
exactly once, it heals after deaths and merges after a partition.
"""
from hypothesis import given, settings, strategies as st

from tscale.overlay import FORGET_AFTER, REFRESH_EVERY, Overlay
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
    ov = Overlay(me, max_children=1)
    assert ov.may_accept_child("4") is not None            # lower rank can never be our child
    assert ov.may_accept_child("6") is None
    ov.add_child("6", 0.0)
    assert ov.may_accept_child("7") is not None            # full
    assert ov.may_accept_child("7", last_resort=True) is None
    ov.learn([{"id": "1", "cluster": "c", "hb": 1}, {"id": "3", "cluster": "c", "hb": 1, "kids": 0},
              {"id": "9", "cluster": "other", "hb": 1}], 0.0)
    assert "9" not in ov.members                           # other clusters are ignored
    assert ov.parent_candidate(0.0) == ("1", False)        # fewest children, then lowest rank


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
