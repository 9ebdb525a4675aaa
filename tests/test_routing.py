"""Sans-I/O: the routing table, route cache, link interest and the queue-group picker.

Connections are plain objects with the three attributes the table reads
(`direct`, `blocked`, `out`), not mocks of sockets.
"""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tscale import protocol
from tscale.routing import GroupPicker, LinkInterest, RoutingTable, Subscription, group_key
from tscale.sharding import shard_of


class Conn:
    def __init__(self, name: str, direct: bool = True, blocked: bool = False):
        self.name = name
        self.direct = direct
        self.blocked = blocked
        self.out = [protocol.MSG]

    def __repr__(self):
        return f"Conn({self.name})"


def table(count: int = 2) -> RoutingTable:
    return RoutingTable(owner_of=lambda name: shard_of(name, count))


def pickers(route) -> dict:
    """key -> the picker over every member of that queue group (the last item of each groups entry)."""
    return {entry[0]: entry[-1] for entry in route.groups}


def test_owner_comes_from_the_shard_function():
    t = table(3)
    for name in ("a", "orders.eu.created", "x.y.z"):
        assert t.route(name).owner == shard_of(name, 3)


def test_plain_subscriptions_local_and_proxied():
    t = table()
    d, p = Conn("direct", direct=True), Conn("proxied", direct=False)
    t.add(Subscription(d, 1, "a.*", None))
    t.add(Subscription(p, 7, "a.>", None))
    t.add(Subscription(p, 8, "b.>", None))
    r = t.route("a.b")
    assert sorted(r.local, key=lambda x: x[1]) == [(d, 1), (p, 7)]
    assert r.proxied == [(p, 7)]
    assert not r.empty
    assert t.route("c.d").empty
    assert t.subscriptions() == 3


def test_route_cache_is_invalidated_by_every_change():
    t = table()
    c = Conn("c")
    assert t.route("a.b").empty            # cached as empty
    s = Subscription(c, 1, "a.b", None)
    t.add(s)
    assert t.route("a.b").local == [(c, 1)]
    t.remove(s)
    assert t.route("a.b").empty
    t.add_link_interest(1, "a.*", None, 1)
    assert t.route("a.b").links == [1]
    t.add_link_interest(1, "a.*", None, -1)
    assert t.route("a.b").empty


def test_remove_of_unknown_subscription_is_a_noop():
    t = table()
    c = Conn("c")
    t.add(Subscription(c, 1, "a", None))
    t.remove(Subscription(c, 2, "a", None))
    assert t.subscriptions() == 1
    assert t.route("a").local == [(c, 1)]


def test_link_interest_is_counted_and_aggregated():
    t = table()
    assert t.add_link_interest(3, "x.>", None, 1) == 1
    assert t.add_link_interest(3, "x.>", None, 2) == 3
    assert t.add_link_interest(3, "x.>", None, -1) == 2
    assert t.link_interest(3) == [(3, "x.>", None, 2)]
    r = t.route("x.y")
    assert r.links == [3] and not r.empty          # one entry per link, however many subscribers
    assert t.add_link_interest(3, "x.>", None, -5) == 0
    assert t.link_interest() == []
    assert t.route("x.y").empty
    assert t.add_link_interest(4, "never", None, -1) == 0   # a negative delta for nothing is ignored
    assert t.link_interest() == []


def test_link_appears_once_even_with_several_matching_patterns():
    t = table()
    t.add_link_interest(1, "a.>", None, 1)
    t.add_link_interest(1, "a.*", None, 1)
    t.add_link_interest(2, "*.b", None, 1)
    assert sorted(t.route("a.b").links) == [1, 2]


def test_replace_and_clear_link():
    t = table()
    t.add_link_interest(1, "a.>", None, 2)
    t.add_link_interest(2, "a.>", None, 1)
    t.replace_link(1, [("b.*", None, 1), ("c", "g", 4)])
    assert sorted(t.link_interest(1), key=str) == sorted([(1, "b.*", None, 1), (1, "c", "g", 4)], key=str)
    assert t.route("a.x").links == [2]
    t.clear_link(1)
    assert t.link_interest(1) == []
    assert t.route("b.x").empty
    assert t.route("a.x").links == [2]


def test_queue_group_is_separate_from_plain_subscribers():
    t = table()
    plain, m1, m2 = Conn("plain"), Conn("m1"), Conn("m2")
    t.add(Subscription(plain, 1, "q.>", None))
    t.add(Subscription(m1, 1, "q.>", "g"))
    t.add(Subscription(m2, 1, "q.>", "g"))
    r = t.route("q.x")
    assert r.local == [(plain, 1)]
    assert list(pickers(r)) == [group_key("q.>", "g")]
    picker = pickers(r)[group_key("q.>", "g")]
    assert Counter(picker.pick().conn.name for _ in range(100)) == {"m1": 50, "m2": 50}


def test_groups_are_per_pattern_and_name():
    t = table()
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    t.add(Subscription(a, 1, "q.>", "g"))
    t.add(Subscription(b, 1, "q.*", "g"))      # same group name, other pattern: another group
    t.add(Subscription(c, 1, "q.>", "h"))
    assert len(t.route("q.x").groups) == 3
    assert len(t.route("q.x.y").groups) == 2


def test_picker_round_robin_is_fair():
    members = [Subscription(Conn(f"m{i}"), 1, "p", "g") for i in range(3)]
    p = GroupPicker(members)
    counts = Counter(p.pick().conn.name for _ in range(300))
    assert counts == {"m0": 100, "m1": 100, "m2": 100}


def test_picker_weights_link_members_by_count():
    t = table()
    local = Conn("local")
    t.add(Subscription(local, 1, "w.>", "g"))
    t.add_link_interest(5, "w.>", "g", 2)     # two members behind link 5
    picker = pickers(t.route("w.x"))[group_key("w.>", "g")]
    counts = Counter("local" if type(m) is Subscription else m.link for m in (picker.pick() for _ in range(300)))
    assert counts == {"local": 100, 5: 200}


def test_picker_skips_blocked_members():
    conns = [Conn("m0"), Conn("m1"), Conn("m2")]
    p = GroupPicker([Subscription(c, 1, "p", "g") for c in conns])
    conns[1].blocked = True
    counts = Counter(p.pick().conn.name for _ in range(100))
    assert counts == {"m0": 50, "m2": 50}
    conns[1].blocked = False
    counts = Counter(p.pick().conn.name for _ in range(99))
    assert counts == {"m0": 33, "m1": 33, "m2": 33}


def test_picker_never_skips_link_members_and_keeps_rotating_when_all_blocked():
    conns = [Conn("m0", blocked=True), Conn("m1", blocked=True)]
    link = LinkInterest(7, "p", "g")
    p = GroupPicker([Subscription(conns[0], 1, "p", "g"), Subscription(conns[1], 1, "p", "g")])
    counts = Counter(p.pick().conn.name for _ in range(10))
    assert counts == {"m0": 5, "m1": 5}          # all blocked: still rotate (the send counts the drop)
    p2 = GroupPicker([Subscription(conns[0], 1, "p", "g"), link])
    assert all(p2.pick() is link for _ in range(5))


def test_proxied_groups_only_hold_proxied_members():
    t = table()
    d, p1, p2 = Conn("d", direct=True), Conn("p1", direct=False), Conn("p2", direct=False)
    for c in (d, p1, p2):
        t.add(Subscription(c, 1, "z.>", "g"))
    r = t.route("z.a")
    key = group_key("z.>", "g")
    assert set(r.proxied_groups) == {key}
    picked = Counter(r.proxied_groups[key].pick().conn.name for _ in range(10))
    assert picked == {"p1": 5, "p2": 5}


@settings(max_examples=100, deadline=None)
@given(blocked=st.lists(st.booleans(), min_size=1, max_size=6), rounds=st.integers(1, 50))
def test_picker_fairness_among_unblocked(blocked, rounds):
    conns = [Conn(f"m{i}", blocked=b) for i, b in enumerate(blocked)]
    p = GroupPicker([Subscription(c, 1, "p", "g") for c in conns])
    ready = [c.name for c in conns if not c.blocked]
    n = rounds * max(1, len(ready))
    counts = Counter(p.pick().conn.name for _ in range(n))
    if ready:
        assert set(counts) == set(ready)
        assert max(counts.values()) - min(counts.values()) <= 1
    else:
        assert max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize("n", [1, 2, 5])
def test_route_after_many_subscriptions_and_removals(n):
    t = table()
    conns = [Conn(f"c{i}", direct=bool(i % 2)) for i in range(n)]
    subs = [Subscription(c, k, pat, None) for c in conns for k, pat in enumerate(["m.*", "m.>", "m.x"])]
    for s in subs:
        t.add(s)
    assert len(t.route("m.x").local) == 3 * n
    for s in subs[::2]:
        t.remove(s)
    assert sorted(map(repr, t.route("m.x").local)) == sorted(repr((s.conn, s.sid)) for s in subs[1::2])
    assert t.subscriptions() == len(subs) - len(subs[::2])


def test_names_with_the_same_subscriptions_share_one_route_and_stay_cached():
    """Issue 10: 100,000 distinct names in flight must hit the route cache; a cached name
    costs a dict slot, not a Route of its own."""
    t = RoutingTable(owner_of=lambda name: 0)
    c = Conn("c")
    t.add(Subscription(c, 1, "n.*", None))
    names = [f"n.{i}" for i in range(100_000)]
    routes = {id(t.route(n)) for n in names}
    assert len(routes) == 1 and t.route("n.5").local == [(c, 1)]
    assert all(t._cache.get(n) is not None for n in names[:1000]), "the first names are still cached"
    assert t.route("other").empty and t.route("other") is t.route("other2"), "one empty plan per owner"
    t.add(Subscription(c, 2, "n.7", None))          # a change re-plans every name
    assert sorted(t.route("n.7").local, key=lambda x: x[1]) == [(c, 1), (c, 2)]
    assert t.route("n.8").local == [(c, 1)] and t.route("n.8") is not t.route("n.7")


def test_shared_routes_keep_one_queue_group_rotation():
    t = RoutingTable(owner_of=lambda name: 0)
    members = [Conn(f"m{i}") for i in range(3)]
    for i, m in enumerate(members):
        t.add(Subscription(m, i, "jobs.*", "w"))
    picks = Counter()
    for i in range(300):
        r = t.route(f"jobs.{i}")
        picks[r.fast_groups[0][1].pick().conn.name] += 1
    assert picks == {"m0": 100, "m1": 100, "m2": 100}


def test_route_all_is_the_one_route_a_batch_shares_or_none():
    t = table(1)
    a, b = Conn("a"), Conn("b")
    t.add(Subscription(a, 1, "x.>", None))
    t.add_link_interest("peer-1", "y.*", None, 1)
    assert t.route_all(["x.1", "x.2.3", "x.1"]) is t.route("x.1")          # same subscriptions, one plan
    assert t.route_all(["y.1"] * 5).peers == ["peer-1"]
    assert t.route_all(["x.1", "y.1"]) is None                            # two ways: event by event
    for bad in (["x.1", "x..2"], ["x.1", 5], ["x.1", "x.*"], [["x"]], ["x.1", {"a": 1}]):
        assert t.route_all(bad) is None                                   # invalid names are never cached
    assert "x..2" not in t._cache and "x.*" not in t._cache
    t.add(Subscription(b, 2, "x.2", None))
    assert t.route_all(["x.1", "x.2"]) is None                            # the table changed: resolved afresh
