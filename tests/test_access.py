"""workers/access.py: per-connection permissions after a users file reload (sans-I/O)."""
from __future__ import annotations

import zmq

from tscale.auth import Gate
from tscale.connstate import Connection
from tscale.routing import Subscription
from workers import access


def _key() -> str:
    return zmq.curve_keypair()[0].decode()


def _conn(gate: Gate, user: str, patterns: list[str]) -> Connection:
    c = Connection(user.encode(), 0.0)
    c.user = user
    access.attach(c, gate.perms(user))
    for sid, p in enumerate(patterns):
        c.subs[sid] = Subscription(c, sid, p, None)
    return c


def test_reload_reports_gone_users_and_newly_denied_subscriptions():
    ka, kb, kc = _key(), _key(), _key()
    gate = Gate("curve", users_doc={"users": {"alice": {"key": ka}, "bob": {"key": kb}, "carol": {"key": kc}}})
    alice = _conn(gate, "alice", ["orders.>", "audit.x"])
    bob = _conn(gate, "bob", ["a.b"])
    carol = _conn(gate, "carol", ["c.>"])
    assert alice.perms is None
    gate.set_users({"users": {"alice": {"key": ka, "subscribe": {"deny": ["audit.>"]}},
                              "carol": {"key": kc}}})
    undo = dict((c.user, d) for c, d in access.reload(gate, [alice, bob, carol]))
    assert undo["bob"] is None                                   # removed from the file
    assert [s.pattern for s in undo["alice"]] == ["audit.x"]     # now denied; orders.> stays
    assert "carol" not in undo                                   # nothing changed for her
    assert alice.perms is not None and alice.pub_ok == {}        # new permissions, fresh publish cache
    assert not alice.perms.may_subscribe("audit.y")
