"""Interest confirmations between two workers of one host (tscale/workeracks.py), as a
hypothesis state machine with the in-host bus modelled: each direction of PUB/SUB drops
what is sent before the receiver's SUB has connected (the slow joiner), then delivers in
order.  Worker R holds subscriptions whose names worker O owns; O may die and restart.

Invariant: whenever R answers a SUB/UNSUB with OK, O has applied that change, except in
the documented window of O's restart (from its death until R has synced with the new O).
The old rule (wait only for workers already synced) fails it: at start-up R answered at
once while O had not heard of the change yet (the race that lost queue-group events in
tests/test_queue_groups.py).
"""
from __future__ import annotations

import itertools

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from tscale.workeracks import WorkerAcks

R, O = 0, 1


class Pipe:
    def __init__(self):
        self.connected = False
        self.queue: list = []

    def send(self, msg):
        if self.connected:
            self.queue.append(msg)


class WorkerPair(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.ids = itertools.count(1)
        self.to_o, self.to_r = Pipe(), Pipe()
        self.r_changes: set = set()           # the truth: change ids R made (its interest)
        self.r_synced: set = set()
        self.r_acks = WorkerAcks(self.r_synced)
        self.pending: dict = {}               # ackkey -> (change id, waiting set)
        self.confirmed_ok: list = []          # change ids answered OK on O's confirmation
        self.restarting = False               # O died, and R has not synced with its successor yet
        self.new_owner()

    def new_owner(self):
        self.o_view: set = set()              # the change ids O has applied
        self.o_synced: set = set()
        self.o_acks = WorkerAcks(self.o_synced)
        self.to_o, self.to_r = Pipe(), Pipe()

    # -- R: subscriptions -----------------------------------------------------
    @rule()
    def change(self):
        c = next(self.ids)
        self.r_changes.add(c)
        waiting = self.r_acks.waiting_for([O])
        self.to_o.send(("INTEREST", c, c))     # the change, and its ackkey (the same number here)
        if waiting:
            self.pending[c] = (c, waiting)
        else:   # answered OK at once: allowed only in the documented window of an owner's restart
            assert self.restarting, f"OK for change {c} at once, though the owner may not know of it"

    # -- transports -----------------------------------------------------------
    @rule(which=st.sampled_from(["to_o", "to_r"]))
    def connect(self, which):
        getattr(self, which).connected = True

    @rule()
    def r_tick(self):
        if O not in self.r_synced:
            self.to_o.send(("HELLO",))

    @rule()
    def o_tick(self):
        if R not in self.o_synced:
            self.to_r.send(("HELLO",))

    @rule()
    def deliver_to_o(self):
        if not self.to_o.queue:
            return
        msg = self.to_o.queue.pop(0)
        if msg[0] == "INTEREST":
            self.o_view.add(msg[1])
            if self.o_acks.request(R, msg[2]):
                self.to_r.send(("ACK", msg[2]))
        elif msg[0] == "ACK_REQ":
            if self.o_acks.request(R, msg[1]):
                self.to_r.send(("ACK", msg[1]))
        elif msg[0] == "HELLO":
            self.to_r.send(("SNAPSHOT",))
        elif msg[0] == "SNAPSHOT":
            self.o_view = set(msg[1])
            if R not in self.o_synced:
                self.o_synced.add(R)
                for key in self.o_acks.snapshot_applied(R):
                    self.to_r.send(("ACK", key))

    @rule()
    def deliver_to_r(self):
        if not self.to_r.queue:
            return
        msg = self.to_r.queue.pop(0)
        if msg[0] == "ACK":
            self.acked(msg[1])
        elif msg[0] == "HELLO":
            self.to_o.send(("SNAPSHOT", frozenset(self.r_changes)))
        elif msg[0] == "SNAPSHOT":
            if O not in self.r_synced:
                self.r_synced.add(O)
                self.restarting = False
                for key in self.r_acks.snapshot_applied(O):
                    self.to_o.send(("ACK", key))
                for key, (_, waiting) in self.pending.items():
                    if O in waiting:
                        self.to_o.send(("ACK_REQ", key))

    def acked(self, key):
        p = self.pending.get(key)
        if p is None:
            return
        p[1].discard(O)
        if not p[1]:
            del self.pending[key]
            self.confirmed_ok.append(p[0])
            assert p[0] in self.o_view, f"OK for change {p[0]} before the owner applied it"

    # -- the owner dies and restarts --------------------------------------------
    @rule()
    def restart_owner(self):
        self.new_owner()
        self.restarting = True
        self.r_synced.discard(O)
        self.r_acks.worker_down(O)
        for key in [k for k, p in self.pending.items() if O in p[1]]:
            del self.pending[key]               # answered OK unconfirmed: the owner died


WorkerPair.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestWorkerPair = WorkerPair.TestCase


def test_everything_waited_for_is_eventually_confirmed():
    """With both directions connected and both workers ticking, nothing stays waiting."""
    m = WorkerPair()
    m.change()                              # before any connection: the INTEREST is lost
    m.connect("to_o")
    m.connect("to_r")
    for _ in range(5):
        m.r_tick()
        m.o_tick()
        while m.to_o.queue or m.to_r.queue:
            m.deliver_to_o()
            m.deliver_to_r()
    assert m.pending == {}
    assert m.confirmed_ok == [1]
    m.teardown()


def test_an_owner_confirms_only_once_it_has_the_requesters_snapshot():
    """The change's INTEREST was lost (sent before O's SUB connected); R syncs and asks
    again: O must hold the answer until R's snapshot (which carries the change) is applied."""
    m = WorkerPair()
    m.change()                              # lost: nothing is connected yet
    m.connect("to_o")
    m.connect("to_r")
    m.r_tick()                              # R's HELLO reaches O ...
    m.deliver_to_o()                        # ... which answers with its snapshot
    m.deliver_to_r()                        # R is synced and sends ACK_REQ
    m.deliver_to_o()                        # O has no snapshot of R yet: holds the answer
    assert m.to_r.queue == [] and m.pending
    m.o_tick()                              # O's HELLO; R answers with its snapshot
    m.deliver_to_r()
    m.deliver_to_o()                        # applied: the held answer goes out
    m.deliver_to_r()
    assert m.pending == {} and m.confirmed_ok == [1]
    m.teardown()
