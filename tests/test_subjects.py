"""Sans-I/O: name and pattern validation, the reference matcher, and the matching trie."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tscale.subjects import (MAX_NAME_LEN, SubjectTrie, is_literal, matches, name_error,
                             pattern_error)

# (pattern, name, matches?) written out by hand from the semantics in the issue:
# `*` is exactly one token, `>` is one or more trailing tokens.
MATRIX = [
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.b.c", "a.b.c.d", False),
    ("a.b.c", "a.b.x", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.x.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.c.d", False),
    ("a.*.c", "a.b.d", False),
    ("a.>", "a.b", True),
    ("a.>", "a.b.c.d", True),
    ("a.>", "a", False),
    ("a.>", "b.a", False),
    ("*", "a", True),
    ("*", "a.b", False),
    (">", "a", True),
    (">", "a.b.c", True),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("*.*", "a.b.c", False),
    ("a.*.>", "a.b.c", True),
    ("a.*.>", "a.b", False),
    ("*.b.>", "x.b.y.z", True),
    ("*.b.>", "x.c.y", False),
    ("orders.*.created", "orders.eu.created", True),
    ("orders.*.created", "orders.eu.deleted", False),
    ("ünï.*", "ünï.cödé", True),
]


@pytest.mark.parametrize("pattern,name,expected", MATRIX)
def test_reference_matcher_matrix(pattern, name, expected):
    assert matches(pattern, name) is expected


@pytest.mark.parametrize("pattern,name,expected", MATRIX)
def test_trie_matrix(pattern, name, expected):
    t = SubjectTrie()
    t.insert(pattern, "v")
    assert t.match(name) == (["v"] if expected else [])


@pytest.mark.parametrize("name", ["a", "a.b", "orders.eu.created", "ünïcödé.x", "a-b_c.d:e", "x" * MAX_NAME_LEN])
def test_valid_names(name):
    assert name_error(name) is None


@pytest.mark.parametrize("name", ["", "a..b", ".a", "a.", "a b", "a\tb", "a\nb", "a\x00b", "a.*", "a.>", "*",
                                  ">", "a.b*", "a.>b", "x" * (MAX_NAME_LEN + 1), 5, None, b"a.b", ["a"]])
def test_invalid_names(name):
    assert isinstance(name_error(name), str)


@pytest.mark.parametrize("pattern", ["a", "a.b", "*", ">", "a.*", "a.>", "*.b.>", "*.*.*", "a.*.c"])
def test_valid_patterns(pattern):
    assert pattern_error(pattern) is None


@pytest.mark.parametrize("pattern", ["", "a..b", ".a", "a.", "a b", ">.a", "a.>.b", "a*", "a.b*", "*a", "a.>>",
                                     "x" * (MAX_NAME_LEN + 1), 7, None, b"a"])
def test_invalid_patterns(pattern):
    assert isinstance(pattern_error(pattern), str)


def test_is_literal():
    assert is_literal("a.b.c")
    assert not is_literal("a.*")
    assert not is_literal("a.>")


def test_value_appears_once_per_matching_pattern():
    t = SubjectTrie()
    t.insert("a.*", "v")
    t.insert("a.>", "v")
    t.insert("a.b", "v")
    t.insert("a.b", "w")
    assert sorted(t.match("a.b")) == ["v", "v", "v", "w"]
    assert sorted(t.match("a.b.c")) == ["v"]


def test_duplicate_insert_counts_once_and_remove_reports_presence():
    t = SubjectTrie()
    t.insert("a.>", 1)
    t.insert("a.>", 1)
    assert len(t) == 1
    assert t.match("a.b") == [1]
    assert t.remove("a.>", 1) is True
    assert t.remove("a.>", 1) is False
    assert t.remove("never.inserted", 1) is False
    assert t.remove("a.*", 2) is False
    assert len(t) == 0
    assert t.match("a.b") == []


# ----------------------------------------------------------------------------- property tests
TOKENS = ["a", "b", "c"]
name_st = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=5).map(".".join)


@st.composite
def pattern_st(draw):
    toks = draw(st.lists(st.sampled_from(TOKENS + ["*"]), min_size=1, max_size=5))
    if draw(st.booleans()):
        toks[-1] = ">"
    return ".".join(toks)


def expected(patterns, name):
    return sorted(i for i, p in enumerate(patterns) if matches(p, name))


@settings(max_examples=300, deadline=None)
@given(patterns=st.lists(pattern_st(), max_size=25), names=st.lists(name_st, min_size=1, max_size=10))
def test_trie_agrees_with_reference(patterns, names):
    t = SubjectTrie()
    for i, p in enumerate(patterns):
        assert pattern_error(p) is None
        t.insert(p, i)
    assert len(t) == len(patterns)
    for n in names:
        assert sorted(t.match(n)) == expected(patterns, n), n


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), pattern_st(), st.integers(0, 3)), max_size=60),
       names=st.lists(name_st, min_size=1, max_size=8))
def test_insert_remove_keeps_trie_consistent(ops, names):
    """A random sequence of inserts and removes leaves the trie equal to a set model, and
    removing everything prunes it back to nothing."""
    t = SubjectTrie()
    model: set = set()
    for add, pattern, value in ops:
        if add:
            t.insert(pattern, value)
            model.add((pattern, value))
        else:
            assert t.remove(pattern, value) == ((pattern, value) in model)
            model.discard((pattern, value))
        assert len(t) == len(model)
    for n in names:
        want = sorted(v for p, v in model if matches(p, n))
        assert sorted(t.match(n)) == want
    for pattern, value in list(model):
        assert t.remove(pattern, value)
    assert len(t) == 0
    for n in names:
        assert t.match(n) == []
    assert t._root.empty(), "removing every pattern must prune the trie (no leaked nodes)"


def test_trie_memory_per_literal_subscription_is_small():
    """Issue 10: a literal subscription costs one leaf node with one set; empty dicts and
    sets are not allocated (they tripled the leaf's size)."""
    import tracemalloc

    names = [f"bench.sub.{i}" for i in range(10_000)]
    values = [object() for _ in names]
    t = SubjectTrie()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for name, v in zip(names, values):
            t.insert(name, v)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / len(names)
    finally:
        tracemalloc.stop()
    assert t.match("bench.sub.7") == [values[7]]
    assert per_entry < 450, f"{per_entry:.0f} bytes per literal subscription in the trie"
