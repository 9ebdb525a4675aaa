"""The routing table of one worker: who gets an event with a given name.

Sans-I/O.  Two kinds of interest live in one subject trie:

* local subscriptions (`Subscription`), held by connections of this worker;
* link interest (`LinkInterest`): "the thing behind link L has `count`
  subscribers on (pattern, group)".  Inside a host a link is another worker
  holding subscriptions of clients that reached the host through it; between
  hosts a link will be a peer.  Interest is aggregated per link, so a link
  costs one trie entry per (pattern, group) however many subscribers it hides.

`route(name)` resolves a name once into a `Route` (who gets a copy, which queue
groups must pick one member) and caches it until the table changes, so the
per-event cost on the hot path is one dict lookup plus the appends.  Names that
match the same subscriptions share one `Route` (every name nobody wants shares
the owner's empty one), so a cache entry costs a dict slot, and the cache can
hold enough names (`CACHE_LIMIT`) for a publisher cycling over 100,000 of them
to hit it (issue 10: it used to be cleared every 65,536 names, and then every
event paid a trie walk and a new Route).
"""
from __future__ import annotations

from typing import Callable

from .subjects import SubjectTrie, name_error


class Subscription:
    """One client subscription: `conn` wants events matching `pattern` under `sid`."""

    __slots__ = ("conn", "sid", "pattern", "group")

    def __init__(self, conn, sid: int, pattern: str, group: str | None):
        self.conn = conn
        self.sid = sid
        self.pattern = pattern
        self.group = group

    @property
    def proxied(self) -> bool:
        # A direct connection reaches every worker itself; only the owner worker
        # of a name delivers to it.  Other connections are served by proxy.
        return not self.conn.direct


class LinkInterest:
    """Aggregated interest of everything behind one link for one (pattern, group).

    Links to other workers of this host have int ids; links to peer nodes have
    str ids (the peer's node id)."""

    __slots__ = ("link", "pattern", "group", "count")

    def __init__(self, link, pattern: str, group: str | None):
        self.link = link
        self.pattern = pattern
        self.group = group
        self.count = 0


class GroupPicker:
    """Picks one member of a queue group per event: weighted round robin over
    slots, skipping local members whose connection is blocked (send buffer full),
    so a member that does not read gets no more than its share.

    The rotation `cursor` belongs to the group, not to the event name: routes are
    cached per name, and a cursor per name would restart at the first member for
    every new name (all events of `jobs.1`, `jobs.2`, ... to one member)."""

    __slots__ = ("slots", "cursor")

    def __init__(self, slots: list, cursor: list | None = None):
        self.slots = slots
        self.cursor = cursor if cursor is not None else [0]

    def pick(self, exclude=None):
        """Next member; never one behind link `exclude` (where the event came from)."""
        slots = self.slots
        n = len(slots)
        cursor = self.cursor
        start = cursor[0]
        if start >= n:
            start = 0
        m = slots[start]   # usual case: the member under the cursor can take it
        if type(m) is Subscription and not m.conn.blocked:
            cursor[0] = start + 1
            return m
        fallback = None
        for k in range(n):
            i = (start + k) % n
            m = slots[i]
            if type(m) is Subscription:
                if not m.conn.blocked:
                    cursor[0] = i + 1
                    return m
                if fallback is None:
                    fallback = m
            elif m.link != exclude:
                cursor[0] = i + 1
                return m
        # Every eligible member is blocked: keep rotating; the send will count a drop.
        cursor[0] = start + 1
        return fallback


class Route:
    """Resolved delivery plan for one event name."""

    __slots__ = ("owner", "local", "proxied", "links", "peers", "groups", "group_map",
                 "proxied_groups", "fast_groups", "shared", "empty")

    def __init__(self, owner):
        self.owner = owner
        self.local: list = []          # (conn, sid) of plain local subscriptions
        self.proxied: list = []        # the subset on proxied connections
        self.links: list = []          # other workers of this host with plain interest
        self.peers: list = []          # peer nodes with plain interest
        self.groups: list = []         # (key, picker over this host's members or None, picker over all)
        self.group_map: dict = {}      # key -> picker over all members (for events from peers)
        self.proxied_groups: dict = {}  # key -> GroupPicker over local proxied members
        # (key, picker) when the only shared work is groups whose members are all on this
        # node: the worker then picks inline for events that entered here.
        self.fast_groups: list | None = None
        self.shared = False            # anything beyond local plain subscriptions
        self.empty = True


def group_key(pattern: str, group: str) -> str:
    """Queue groups are per (pattern, group), as in NATS; the key travels on links."""
    return pattern + " " + group


class RoutingTable:
    """Local subscriptions plus per-link interest, with a route cache."""

    CACHE_LIMIT = 262144     # names; cleared at this size (and on any change)

    def __init__(self, owner_of: Callable[[str], object] = lambda name: None):
        self._owner_of = owner_of
        self._trie = SubjectTrie()
        self._links: dict[tuple, LinkInterest] = {}
        self._cache: dict[str, Route] = {}
        self._plans: dict[tuple, Route] = {}   # (owner, matches) -> the Route shared by those names
        self._cursors: dict[tuple, list] = {}   # (group key, which picker) -> rotation cursor
        self.local_count = 0

    # -- changes -----------------------------------------------------------
    def _invalidate(self) -> None:
        """Forget every resolved route (the same dict object stays: the worker holds its .get)."""
        self._cache.clear()
        self._plans.clear()

    def add(self, sub: Subscription) -> None:
        self._trie.insert(sub.pattern, sub)
        self.local_count += 1
        self._invalidate()

    def remove(self, sub: Subscription) -> None:
        if self._trie.remove(sub.pattern, sub):
            self.local_count -= 1
            self._invalidate()

    def add_link_interest(self, link, pattern: str, group: str | None, delta: int) -> int:
        """Apply a count delta for (link, pattern, group); returns the new count."""
        key = (link, pattern, group)
        li = self._links.get(key)
        if li is None:
            if delta <= 0:
                return 0
            li = self._links[key] = LinkInterest(link, pattern, group)
            self._trie.insert(pattern, li)
        li.count += delta
        if li.count <= 0:
            del self._links[key]
            self._trie.remove(pattern, li)
            self._invalidate()
            return 0
        self._invalidate()
        return li.count

    def replace_link(self, link, entries) -> None:
        """Replace everything known behind `link` with `entries` of (pattern, group, count)."""
        self.clear_link(link)
        for pattern, group, count in entries:
            self.add_link_interest(link, pattern, group, count)

    def clear_link(self, link) -> None:
        for key in [k for k in self._links if k[0] == link]:
            li = self._links.pop(key)
            self._trie.remove(li.pattern, li)
        self._invalidate()

    def apply_link_entries(self, link, entries, replace: bool) -> None:
        """Apply [pattern, group, n] entries for a link: counts if `replace`, else deltas."""
        if replace:
            self.replace_link(link, entries)
        else:
            for pattern, group, delta in entries:
                self.add_link_interest(link, pattern, group, delta)

    def link_interest(self, link=None) -> list:
        """(link, pattern, group, count) entries, optionally for one link."""
        return [(li.link, li.pattern, li.group, li.count)
                for li in self._links.values() if link is None or li.link == link]

    # -- lookup ------------------------------------------------------------
    def route(self, name: str) -> Route:
        r = self._cache.get(name)
        if r is None:
            r = self._build(name)
            if len(self._cache) >= self.CACHE_LIMIT:
                self._invalidate()
            self._cache[name] = r
        return r

    def route_valid(self, name) -> Route | None:
        """The route of `name` if it is a valid event name, else None (no error raised: the
        caller judges a batch by it and leaves reporting to the event-by-event path)."""
        try:
            r = self._cache.get(name)     # holds valid names only
        except TypeError:                 # an array or map where a name should be
            return None
        if r is None and type(name) is str and name_error(name) is None:
            r = self.route(name)
        return r

    def route_all(self, names: list) -> Route | None:
        """The one Route that every name in `names` resolves to, or None: names that route
        differently, or one that is not a valid event name (the caller then routes event by
        event, which reports it).  Costs a set of the names plus a lookup per distinct name."""
        try:
            distinct = set(names)
        except TypeError:   # an array or map where a name should be
            return None
        route_valid = self.route_valid
        r = None
        for name in distinct:
            x = route_valid(name)
            if x is None:
                return None
            if x is not r:
                if r is not None:
                    return None
                r = x
        return r

    def _build(self, name: str) -> Route:
        owner = self._owner_of(name)
        matches = self._trie.match(name)
        key = (owner, *matches)   # the values hash by identity: same subscriptions, same plan
        r = self._plans.get(key)
        if r is None:
            r = self._plans[key] = self._plan(owner, matches)
        return r

    def _plan(self, owner, matches: list) -> Route:
        r = Route(owner)
        groups: dict[str, list] = {}
        pgroups: dict[str, list] = {}
        links = []
        peers = []
        for m in matches:
            if type(m) is Subscription:
                if m.group is None:
                    r.local.append((m.conn, m.sid))
                    if not m.conn.direct:
                        r.proxied.append((m.conn, m.sid))
                else:
                    key = group_key(m.pattern, m.group)
                    groups.setdefault(key, []).append(m)
                    if not m.conn.direct:
                        pgroups.setdefault(key, []).append(m)
            elif m.group is None:
                target = peers if type(m.link) is str else links
                if m.link not in target:
                    target.append(m.link)
            else:
                key = group_key(m.pattern, m.group)
                groups.setdefault(key, []).extend([m] * m.count)
        r.links = links
        r.peers = peers
        cursor = self._cursor
        for k, v in groups.items():
            here = [m for m in v if type(m) is Subscription or type(m.link) is not str]
            every = GroupPicker(v, cursor(k, "all"))
            if len(here) == len(v):
                here_picker = every          # all members are on this node: one picker, one cursor
            else:
                here_picker = GroupPicker(here, cursor(k, "here")) if here else None
            r.groups.append((k, here_picker, every))
            r.group_map[k] = every
        r.proxied_groups = {k: GroupPicker(v, cursor(k, "proxied")) for k, v in pgroups.items()}
        if r.groups and not links and not peers and all(here is every for _, here, every in r.groups):
            r.fast_groups = [(k, every) for k, _, every in r.groups]
        r.shared = bool(links or peers or groups)
        r.empty = not (r.local or r.shared)
        return r

    def _cursor(self, key: str, which: str) -> list:
        c = self._cursors.get((key, which))
        if c is None:
            if len(self._cursors) > 100_000:
                self._cursors.clear()
            c = self._cursors[(key, which)] = [0]
        return c

    def subscriptions(self) -> int:
        return self.local_count
