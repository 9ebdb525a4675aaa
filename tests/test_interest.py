"""tscale/interest.py, sans-I/O: what each overlay link is told.

Invariant: a neighbour that applies every delta it was sent ends up with exactly
what a fresh snapshot (`export`) would tell it: local interest plus every other
link's, never its own (split horizon)."""
from hypothesis import given, settings, strategies as st

from tscale.interest import InterestTable

LINKS = ["a", "b", "c"]
KEYS = [("x.>", None), ("x.y", "g"), ("*.z", None)]

op = st.one_of(
    st.tuples(st.just("local"), st.sampled_from(KEYS), st.integers(-2, 3)),
    st.tuples(st.just("delta"), st.sampled_from(LINKS), st.sampled_from(KEYS), st.integers(-2, 3)),
    st.tuples(st.just("replace"), st.sampled_from(LINKS),
              st.lists(st.tuples(st.sampled_from(KEYS), st.integers(0, 3)), max_size=3)),
    st.tuples(st.just("add"), st.sampled_from(LINKS)),
    st.tuples(st.just("remove"), st.sampled_from(LINKS)),
)


def _apply(view: dict, entries) -> None:
    for p, g, d in entries:
        n = view.get((p, g), 0) + d
        if n > 0:
            view[(p, g)] = n
        else:
            view.pop((p, g), None)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=40))
def test_neighbours_views_equal_their_export(ops):
    t = InterestTable()
    views: dict[str, dict] = {}      # what each neighbour believes we want

    def fan(changes):
        for link, entries in changes.items():
            _apply(views[link], entries)

    for o in ops:
        if o[0] == "local":
            _, (p, g), d = o
            if d < 0 and t.local.get((p, g), 0) < -d:
                continue    # subscriptions never go below zero
            fan(t.local_delta([(p, g, d)]))
        elif o[0] == "add":
            if o[1] not in views:
                views[o[1]] = {}
                _apply(views[o[1]], t.add_link(o[1]))
        elif o[1] not in views:
            continue
        elif o[0] == "remove":
            fan(t.remove_link(o[1]))
            del views[o[1]]
        elif o[0] == "delta":
            _, link, (p, g), d = o
            if d < 0 and t.links[link].get((p, g), 0) < -d:
                continue
            fan(t.link_delta(link, [(p, g, d)]))
        else:
            _, link, entries = o
            fan(t.link_replace(link, [(p, g, n) for (p, g), n in entries]))
        for link, view in views.items():
            assert view == {k: n for k, n in t.export(link).items() if n > 0}
        # total_keys() is cached between changes (status asks every second): never stale
        assert t.total_keys() == len(set(t.local).union(*t.links.values()))


def test_split_horizon_never_echoes_a_links_own_interest():
    t = InterestTable()
    t.add_link("a")
    t.add_link("b")
    changes = t.link_delta("a", [("orders.>", None, 1)])
    assert "a" not in changes and changes["b"] == [("orders.>", None, 1)]
    assert t.export("a") == {} and t.export("b") == {("orders.>", None): 1}
