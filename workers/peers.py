"""Peer links: one worker's DEALERs to its counterpart workers on overlay neighbours, and
the PEER_EVENTS batches it sends on them (docs/PROTOCOL.md section 13).

Events for a neighbour are appended to its link's batch as (name, payload, meta, groups)
quadruples and packed into one PEER_EVENTS frame at the worker's flush, or earlier when
the batch is full (`PeerLink.full`).  Two ways skip the per-event work (issue 13):

* `forward`: a relay whose routing sends a whole received batch one way (to other
  neighbours only, nothing delivered or picked here) sends the received frame's event
  bytes on unchanged behind a new header naming itself as the source (`head`), instead
  of unpacking and re-packing each event into a batch.
* `quads`: the events of a client's PUB frame that goes only to neighbours become peer
  quadruples by slice assignment, in one step for the whole frame.

Validation (tscale/frames.py): a node that delivers, picks or re-packs an event checks
it first; a forwarding relay checks the frame's shape, every name (it routes by them)
and that no event carries queue-group keys, and leaves payloads and metas to the next
node that unpacks them (which drops an invalid one, counted against the link it came
on: `PeerGate.invalid`).
"""
from __future__ import annotations

import msgpack
import zmq

from tscale.protocol import PEER_EVENTS, pack

NOBLOCK = int(zmq.NOBLOCK)
MAX_EVENTS = 4096                 # events per PEER_EVENTS frame at most
MAX_ITEMS = 2 + 4 * MAX_EVENTS    # ... as items of its flat list
FRAME_BYTES = 1 << 20             # payload bytes per batch: then it is sent (plus one event or PUB frame)

_array_header = msgpack.Packer().pack_array_header


def head(items: int, node_id: str) -> bytes:
    """The bytes of a PEER_EVENTS frame of `items` items (2 + 4 per event) before its first event."""
    return _array_header(items) + pack(PEER_EVENTS) + pack(node_id)


def quads(cmd: list, start: int, n: int) -> list:
    """The `n` (name, payload, meta) triples of `cmd` from `start` as (name, payload, meta, nil)
    quadruples, without a loop per event."""
    q = [None] * (4 * n)
    end = start + 3 * n
    q[0::4] = cmd[start:end:3]
    q[1::4] = cmd[start + 1:end:3]
    q[2::4] = cmd[start + 2:end:3]
    return q


class PeerLink:
    """This worker's DEALER to its counterpart worker on an overlay neighbour."""

    __slots__ = ("peer", "name", "sock", "out", "bytes", "events_out", "dropped", "rehello")

    def __init__(self, peer: str, name: str, sock, node_id: str):
        self.peer = peer
        self.name = name
        self.sock = sock
        self.out: list = [PEER_EVENTS, node_id]
        self.bytes = 0           # payload bytes in `out`
        self.events_out = 0
        self.dropped = 0
        self.rehello = False     # the peer refused us (not_authorized): say HELLO again at the next tick

    def send(self, stats: dict) -> None:
        """Pack and send the batch (if any); what ZeroMQ will not take now is dropped and counted."""
        out = self.out
        n = (len(out) - 2) >> 2
        if n:
            self._send(pack(out), n, stats)
            del out[2:]
        self.bytes = 0

    def forward(self, data, n: int, stats: dict) -> None:
        """Send one ready PEER_EVENTS frame of `n` events, after the batch already pending (order)."""
        if len(self.out) > 2:
            self.send(stats)
        self._send(data, n, stats)

    def _send(self, data, n: int, stats: dict) -> None:
        try:
            self.sock.send(data, NOBLOCK)
            self.events_out += n
            stats["peer_out"] += n
        except zmq.ZMQError:
            self.dropped += n
            stats["dropped"] += n
