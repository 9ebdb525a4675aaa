"""Per-connection permission checks of a worker (sans-I/O).

Only connections whose user has limits pay anything: the worker calls these
functions for a connection with `conn.perms` set, and never otherwise, so the
publish hot path of an unrestricted connection is unchanged.  Publish checks
are cached per connection and name (like the route cache); the cache is
dropped when the users file is reloaded (`reload`).
"""
from __future__ import annotations

from tscale.auth import Perms

PUB_CACHE_MAX = 10_000       # names remembered per connection before the cache starts over


def attach(conn, perms: Perms | None) -> None:
    """Give a connection its user's permissions (at first sight and after a reload)."""
    conn.perms = perms
    conn.pub_ok = {} if perms is not None else None


def reload(gate, conns) -> list[tuple]:
    """The users file was reloaded into `gate` (auth.Gate): give every connection its user's new
    permissions.  Returns what the worker must undo: (conn, None) for a connection whose user is no
    longer allowed, (conn, [subscriptions]) for subscriptions the new permissions deny."""
    undo = []
    for conn in list(conns):
        if not gate.known(conn.user):
            undo.append((conn, None))
            continue
        attach(conn, gate.perms(conn.user))
        if conn.perms is not None:
            denied = [s for s in conn.subs.values() if not conn.perms.may_subscribe(s.pattern)]
            if denied:
                undo.append((conn, denied))
    return undo


def filter_pub(conn, cmd: list, start: int) -> tuple[list, str | None, int]:
    """(the frame without the events the user may not publish, the last denied name, denied count)."""
    perms, cache = conn.perms, conn.pub_ok
    out = cmd[:start]
    denied, last = 0, None
    for i in range(start, len(cmd) - 2, 3):
        name = cmd[i]
        ok = cache.get(name) if type(name) is str else True   # a bad name is the router's to report
        if ok is None:
            ok = perms.may_publish(name)
            if len(cache) >= PUB_CACHE_MAX:
                cache.clear()
            cache[name] = ok
        if ok:
            out += cmd[i:i + 3]
        else:
            denied += 1
            last = name
    if (len(cmd) - start) % 3:
        out += cmd[len(cmd) - (len(cmd) - start) % 3:]   # keep the shape error for the router to report
    return out, last, denied
