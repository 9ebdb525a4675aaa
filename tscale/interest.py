"""Interest aggregation per overlay link (sans-I/O).

A node tells each neighbour what it wants: its own subscriptions plus what
every *other* neighbour wants (split horizon), one entry per (pattern, group)
with a member count.  Changes travel as deltas; after any reconnect or a gap
in sequence numbers the link is resynced with a full snapshot (the Clone
pattern of the ZeroMQ Guide), so tables converge after any loss.
"""
from __future__ import annotations

Key = tuple  # (pattern, group | None)


def apply_count(table: dict, key: Key, delta: int) -> None:
    """Add `delta` to a member count; a count that reaches zero leaves the table."""
    n = table.get(key, 0) + delta
    if n > 0:
        table[key] = n
    else:
        table.pop(key, None)


def counts(entries) -> dict[Key, int]:
    """A table from [(pattern, group, count)] snapshot entries (non-positive counts dropped)."""
    out: dict[Key, int] = {}
    for pattern, group, n in entries:
        if n > 0:
            out[(pattern, group)] = out.get((pattern, group), 0) + n
    return out


def diff(old: dict, new: dict) -> list:
    """[(pattern, group, delta)] that turns table `old` into `new`."""
    return [(p, g, new.get((p, g), 0) - old.get((p, g), 0)) for (p, g) in set(old) | set(new)
            if new.get((p, g), 0) != old.get((p, g), 0)]


class InterestTable:
    def __init__(self):
        self.local: dict[Key, int] = {}
        self.links: dict[object, dict[Key, int]] = {}
        self._total: int | None = None    # total_keys() until the next change

    # -- reading --------------------------------------------------------------
    def export(self, link) -> dict[Key, int]:
        """What `link` must be told: local interest plus every other link's."""
        out = dict(self.local)
        for other, table in self.links.items():
            if other == link:
                continue
            for k, n in table.items():
                out[k] = out.get(k, 0) + n
        return out

    def total_keys(self) -> int:
        """Distinct keys over every table.  Status asks every second: the union is
        computed only after a change, and not at all on a node without linked interest."""
        if self._total is None:
            tables = [t for t in self.links.values() if t]
            if not tables:
                self._total = len(self.local)
            else:
                keys = set(self.local)
                for t in tables:
                    keys.update(t)
                self._total = len(keys)
        return self._total

    # -- changes: each returns {link: [(pattern, group, delta), ...]} to send ----
    def _fan(self, changes: list, skip) -> dict:
        self._total = None   # every change passes here
        if not changes:
            return {}
        return {link: list(changes) for link in self.links if link != skip}

    def local_delta(self, entries) -> dict:
        changes = []
        for pattern, group, delta in entries:
            apply_count(self.local, (pattern, group), delta)
            changes.append((pattern, group, delta))
        return self._fan(changes, None)

    def set_local(self, table: dict[Key, int]) -> dict:
        new = {k: v for k, v in table.items() if v > 0}
        changes = diff(self.local, new)
        self.local = new
        return self._fan(changes, None)

    def add_link(self, link) -> list:
        """A new neighbour: returns the snapshot to send it."""
        self.links.setdefault(link, {})
        return [(p, g, n) for (p, g), n in self.export(link).items()]

    def link_delta(self, link, entries) -> dict:
        table = self.links.setdefault(link, {})
        changes = []
        for pattern, group, delta in entries:
            apply_count(table, (pattern, group), delta)
            changes.append((pattern, group, delta))
        return self._fan(changes, link)

    def link_replace(self, link, entries) -> dict:
        new = counts(entries)
        changes = diff(self.links.get(link, {}), new)
        self.links[link] = new
        return self._fan(changes, link)

    def remove_link(self, link) -> dict:
        old = self.links.pop(link, None) or {}
        return self._fan([(p, g, -n) for (p, g), n in old.items()], link)
