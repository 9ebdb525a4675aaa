"""Wire protocol v1: command codes, frame layouts and the codec.

Every ZeroMQ message between a client DEALER and a worker ROUTER is one frame
holding one msgpack array whose first item is a command code.  Events travel in
flat batches (``[PUB, name, payload, meta, name, payload, meta, ...]``) so one
frame carries many events: batching is what makes a Python router fast.  This
module is sans-I/O; docs/PROTOCOL.md is the normative description.  Decoding and
validating frames that come from outside is tscale/frames.py's job.
"""
from __future__ import annotations

import msgpack

VERSION = 1

# client -> server
HELLO = 1      # [HELLO, version, {name, token, lang, version}]
PUB = 2        # [PUB, name, payload, meta, ...]   meta = nil | [headers|nil, reply|nil]
SUB = 3        # [SUB, sid, pattern, group|nil, req]
UNSUB = 4      # [UNSUB, sid, req]
PING = 5       # [PING, token]            both directions
PONG = 6       # [PONG, token]            both directions
STATUS = 7     # [STATUS, req]
BYE = 8        # [BYE]
PEER_EVENTS = 9  # [PEER_EVENTS, src_node, name, payload, meta, groups|nil, ...]  node -> node
SUBS = 10      # [SUBS, req, sid, pattern, group|nil, ...]   many SUBs in one frame (WELCOME feature "subs")
# server -> client
WELCOME = 16   # [WELCOME, version, info]
MSG = 17       # [MSG, sid, name, payload, meta, ...]
OK = 18        # [OK, req]
ERR = 19       # [ERR, code, message, req|nil, fatal]
STATUS_REPLY = 20  # [STATUS_REPLY, req, status]

# Cluster control port, supervisor <-> supervisor (tscale/cluster.py describes the exchange)
PROBE, MEMBERS, ATTACH, ACCEPT, REFUSE, HB, INTEREST, RESYNC, SYNC, SYNC_ACK, CTL_BYE = range(101, 112)

COMMAND_NAMES = {
    HELLO: "HELLO", PUB: "PUB", SUB: "SUB", UNSUB: "UNSUB", PING: "PING", PONG: "PONG",
    STATUS: "STATUS", BYE: "BYE", PEER_EVENTS: "PEER_EVENTS", SUBS: "SUBS", WELCOME: "WELCOME", MSG: "MSG", OK: "OK", ERR: "ERR",
    STATUS_REPLY: "STATUS_REPLY",
}

# What this node understands beyond protocol v1's first commands (WELCOME info "features").
FEATURE_SUBS = "subs"          # the SUBS command
MAX_SUBS_BATCH = 1024          # (sid, pattern, group) triples in one SUBS frame at most

# Error codes: (code, fatal).  Fatal errors make the server forget the connection.
E_MALFORMED = "malformed"
E_UNKNOWN_COMMAND = "unknown_command"
E_BAD_NAME = "bad_name"
E_BAD_PATTERN = "bad_pattern"
E_PAYLOAD_TOO_LARGE = "payload_too_large"
E_BAD_VERSION = "bad_version"
E_NOT_AUTHORIZED = "not_authorized"
E_BAD_SID = "bad_sid"
E_TOO_MANY_SUBS = "too_many_subscriptions"
E_SLOW_CONSUMER = "slow_consumer"   # the node gave up on a connection that does not read; HELLO again
E_PERMISSION_DENIED = "permission_denied"    # not fatal: the connection goes on
FATAL_ERRORS = frozenset({E_BAD_VERSION, E_NOT_AUTHORIZED, E_SLOW_CONSUMER})

# Reply sent to a request's reply-to name when nothing could take the request.
STATUS_HEADER = "Status"
NO_RESPONDERS_STATUS = "503"
NO_RESPONDERS_META = [{STATUS_HEADER: NO_RESPONDERS_STATUS, "Description": "No Responders"}, None]

_packer = msgpack.Packer(use_bin_type=True, autoreset=True)
pack = _packer.pack


class ProtocolError(Exception):
    """A frame that cannot be understood; carries the error code to send back and, when the
    frame's req could be read safely, the req to echo (tscale/frames.py raises it)."""

    def __init__(self, code: str, message: str, req=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.req = req


def err(code: str, message: str, req=None) -> bytes:
    return pack([ERR, code, message, req, code in FATAL_ERRORS])


def ok(req) -> bytes:
    return pack([OK, req])
