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


class InterestLinks:
    """The exchange of interest over overlay links (sans-I/O), around an InterestTable.

    Each link carries INTEREST messages with sequence numbers: a full snapshot
    (`replace`) when the link comes up or on request, deltas otherwise.  A gap
    (a lost message, a send that failed) makes the receiver ask for a snapshot
    (RESYNC), again at every heartbeat until one arrives.  Every method returns
    the actions for the caller to carry out, in order:

      ("interest", link, seq, replace, entries)   send INTEREST on link
      ("resync", link)                            send RESYNC on link
      ("workers", link, replace, entries)         tell the workers what link wants
    """

    def __init__(self, table: InterestTable | None = None):
        self.table = table if table is not None else InterestTable()
        self.out_seq: dict = {}
        self.in_seq: dict = {}

    def _send(self, link, entries, replace: bool) -> tuple:
        seq = self.out_seq.get(link, 0) + 1
        self.out_seq[link] = seq
        return ("interest", link, seq, replace, [list(e) for e in entries])

    def _fan(self, changes: dict) -> list:
        return [self._send(link, entries, False) for link, entries in changes.items() if entries]

    def send_failed(self, link) -> None:
        """A message to `link` could not be sent: the next one leaves a gap, which forces a resync."""
        if link in self.out_seq:
            self.out_seq[link] = -1

    def local(self, changes) -> list:
        """The node's own interest changed by [(pattern, group, delta)]."""
        return self._fan(self.table.local_delta(changes)) if changes else []

    def up(self, link) -> list:
        self.in_seq[link] = 0
        self.out_seq[link] = 0
        return [self._send(link, self.table.add_link(link), True)]

    def down(self, link) -> list:
        self.in_seq.pop(link, None)
        self.out_seq.pop(link, None)
        return self._fan(self.table.remove_link(link)) + [("workers", link, True, [])]

    def receive(self, link, seq, replace: bool, entries) -> list:
        """An INTEREST message from a linked neighbour."""
        if link not in self.in_seq:
            return []
        if replace:
            self.in_seq[link] = seq
            return self._fan(self.table.link_replace(link, entries)) + [("workers", link, True, entries)]
        if seq == self.in_seq[link] + 1 and self.in_seq[link] != -1:
            self.in_seq[link] = seq
            return self._fan(self.table.link_delta(link, entries)) + [("workers", link, False, entries)]
        self.in_seq[link] = -1
        return [("resync", link)]

    def resync(self, link) -> list:
        """The neighbour asks for a full snapshot."""
        if link not in self.out_seq:
            return []
        return [self._send(link, [(p, g, n) for (p, g), n in self.table.export(link).items()], True)]

    def heard(self, link) -> list:
        """Any message from the neighbour (a heartbeat): repeat a pending resync request."""
        return [("resync", link)] if self.in_seq.get(link) == -1 else []

    def retry(self, link) -> list:
        """At each heartbeat: after a failed send, offer a full snapshot instead of waiting for a gap."""
        return self.resync(link) if self.out_seq.get(link) == -1 else []
