"""The overlay rules (tscale/overlay.py) checked in simulation, sans-I/O.

Invariants: parent ids always sort below their children (so links never form a
cycle), the overlay converges to one tree, a flood over it reaches each node
exactly once, it heals after deaths and merges after a partition.
"""
from hypothesis import given, settings, strategies as st

from tscale.overlay import Overlay
from tscale.overlay_sim import SimNet


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
