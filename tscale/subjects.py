"""Event names, subscription patterns and the matching trie.

Names are dot-separated UTF-8 tokens (``orders.eu.created``): no empty tokens,
no whitespace, no wildcards.  Patterns may use ``*`` (exactly one token) and
``>`` (one or more trailing tokens, last position only), as in NATS.  Matching
walks a token trie, so its cost grows with the name's depth, not with the
number of subscriptions.
"""
from __future__ import annotations

MAX_NAME_LEN = 512
MAX_GROUP_LEN = 128
_BAD_CHARS = frozenset(" \t\r\n\f\v\x00")


def _shape_error(what: str, value) -> str | None:
    """Checks names and patterns share: a string, a sane length, no whitespace."""
    if type(value) is not str:
        return f"{what} must be a string"
    if not value or len(value) > MAX_NAME_LEN:
        return f"{what} must be 1..{MAX_NAME_LEN} characters"
    # isprintable() is false for every character of _BAD_CHARS but the space: one C scan
    # decides the usual name; the set is consulted only for names with other characters.
    if not (value.isprintable() and " " not in value) and not _BAD_CHARS.isdisjoint(value):
        return f"{what} {value!r} contains whitespace or NUL"
    return None


def _plain_ok(s: str) -> bool:
    """A non-empty str without wildcard characters whose tokens are all non-empty: a valid
    name (given `_shape_error` passed), decided by a few C-level scans without splitting."""
    return "*" not in s and ">" not in s and ".." not in s and s[0] != "." and s[-1] != "."


def name_error(name) -> str | None:
    """Why `name` is not a valid event name, or None if it is."""
    e = _shape_error("name", name)
    if e is not None:
        return e
    if _plain_ok(name):
        return None
    for tok in name.split("."):
        if not tok:
            return f"name {name!r} has an empty token"
        if tok == "*" or tok == ">" or "*" in tok or ">" in tok:
            return f"name {name!r} contains a wildcard; publish to literal names only"
    return None


def pattern_error(pattern) -> str | None:
    """Why `pattern` is not a valid subscription pattern, or None if it is."""
    e = _shape_error("pattern", pattern)
    if e is not None:
        return e
    if _plain_ok(pattern):   # a literal name: the common case (100,000 subscriptions, issue 10)
        return None
    toks = pattern.split(".")
    for i, tok in enumerate(toks):
        if not tok:
            return f"pattern {pattern!r} has an empty token"
        if tok == ">":
            if i != len(toks) - 1:
                return f"pattern {pattern!r}: '>' may only be the last token"
        elif tok != "*" and ("*" in tok or ">" in tok):
            return f"pattern {pattern!r}: wildcards must be whole tokens"
    return None


def group_error(group) -> str | None:
    """Why `group` is not a valid queue group name, or None if it is."""
    if type(group) is not str or not group or len(group) > MAX_GROUP_LEN or not group.isprintable() or " " in group:
        return f"queue group must be 1..{MAX_GROUP_LEN} printable characters without spaces"
    return None


def is_literal(pattern: str) -> bool:
    """True if the pattern has no wildcard, i.e. it is one exact name."""
    return "*" not in pattern and ">" not in pattern


def matches(pattern: str, name: str) -> bool:
    """Reference matcher (one pattern, one name); the trie must agree with it."""
    p = pattern.split(".")
    n = name.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(n) > i
        if i >= len(n):
            return False
        if tok != "*" and tok != n[i]:
            return False
    return len(p) == len(n)


_NO_CHILDREN: dict = {}


class _Node:
    """One trie level.  Every field starts empty (None) and is allocated on first use:
    most nodes are leaves holding one literal subscription, and an empty dict and two
    empty sets would triple their size (issue 10: RSS per subscription)."""

    __slots__ = ("children", "star", "values", "tail")

    def __init__(self):
        self.children: dict[str, _Node] | None = None
        self.star: _Node | None = None     # child for '*'
        self.values: set | None = None     # patterns ending here
        self.tail: set | None = None       # patterns ending here with '>'

    def empty(self) -> bool:
        return not (self.children or self.star or self.values or self.tail)


class SubjectTrie:
    """Maps patterns to sets of values; `match(name)` returns every value whose pattern matches."""

    def __init__(self):
        self._root = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def insert(self, pattern: str, value) -> None:
        node = self._root
        toks = pattern.split(".")
        for tok in toks[:-1]:
            node = self._child(node, tok)
        last = toks[-1]
        if last == ">":
            target = node.tail
            if target is None:
                target = node.tail = set()
        else:
            leaf = self._child(node, last)
            target = leaf.values
            if target is None:
                target = leaf.values = set()
        if value not in target:
            target.add(value)
            self._count += 1

    @staticmethod
    def _child(node: _Node, tok: str) -> _Node:
        if tok == "*":
            if node.star is None:
                node.star = _Node()
            return node.star
        children = node.children
        if children is None:
            children = node.children = {}
        nxt = children.get(tok)
        if nxt is None:
            nxt = children[tok] = _Node()
        return nxt

    def remove(self, pattern: str, value) -> bool:
        """Remove one (pattern, value); prune empty nodes. Returns whether it was present."""
        toks = pattern.split(".")
        path = []
        node = self._root
        for tok in toks[:-1]:
            nxt = node.star if tok == "*" else (node.children or _NO_CHILDREN).get(tok)
            if nxt is None:
                return False
            path.append((node, tok))
            node = nxt
        last = toks[-1]
        if last == ">":
            holder, field = node, "tail"
        else:
            holder = node.star if last == "*" else (node.children or _NO_CHILDREN).get(last)
            if holder is None:
                return False
            field = "values"
        target = getattr(holder, field)
        if target is None or value not in target:
            return False
        target.discard(value)
        if not target:
            setattr(holder, field, None)
        if holder is not node:
            path.append((node, last))
            node = holder
        self._count -= 1
        while path and node.empty():
            parent, tok = path.pop()
            if tok == "*":
                parent.star = None
            else:
                del parent.children[tok]
                if not parent.children:
                    parent.children = None
            node = parent
        return True

    def match(self, name: str) -> list:
        """Every value whose pattern matches `name` (a value appears once per matching pattern)."""
        out: list = []
        self._walk(self._root, name.split("."), 0, out)
        return out

    def _walk(self, node: _Node, toks: list, i: int, out: list) -> None:
        if node.tail and i < len(toks):
            out.extend(node.tail)
        if i == len(toks):
            if node.values:
                out.extend(node.values)
            return
        tok = toks[i]
        nxt = node.children.get(tok) if node.children else None
        if nxt is not None:
            self._walk(nxt, toks, i + 1, out)
        if node.star is not None:
            self._walk(node.star, toks, i + 1, out)
