"""One decoder per trust boundary: every frame from outside is checked here first.

Sans-I/O.  A process hands this module the bytes it received and gets back a
plain command tuple whose every field has the documented type, or a
`protocol.ProtocolError` carrying the error code to answer (and the `req` to
echo, when one could be read).  Handlers never see raw msgpack.

Boundaries (docs/PROTOCOL.md section 2 and 13 give the rules):

* `decode_client`: a worker's client ROUTER (clients and peer nodes' workers).
* `decode_node`: what a node sends to a Python client (and to a peer link's
  DEALER); MSG frames are checked event by event, bad events dropped.
* `decode_control` / `decode_beacon`: the supervisor's cluster control port
  (member entries, interest entries, heartbeats; bad member entries are
  dropped from gossip) and UDP discovery beacons.

How the decoding is bounded, never recursing into the sender's structure:

* msgpack itself refuses a declared length larger than the frame (an array,
  string or bin of N items or bytes needs at least N bytes), refuses nesting
  deeper than 1024 (its C decoder has a fixed stack, `StackError`), and here
  also refuses ext types (the protocol has none) and maps of more than
  MAX_MAP_LEN entries, before anything is allocated for them.
* Typed fields are checked by type only (a name must be a str: a 1,000-deep
  array where a name should be is rejected by one `type()` test).
* The only values of any shape are `req` and the PING token, which the node
  echoes; `any_error` walks them with an explicit stack (no recursion),
  bounding depth (MAX_DEPTH) and item count (MAX_ANY_ITEMS): an answer stays
  small, cheap to pack and far from msgpack's packer limit (1024 levels), and
  nothing later walks or prints a deep value (str() of a 1,000-deep list
  raises RecursionError, which is how a HELLO name killed workers).
* Map keys that are not strings are allowed by the decoder (so they never
  void a whole frame): a header map with a non-str key makes that one event
  `malformed`; unknown option keys, str or not, are ignored; inside `req`
  they are echoed.  A key that is itself an array or map cannot be a key in
  Python and makes the frame `malformed`.

The PUB and PEER_EVENTS frames are returned as the flat list itself, with only
their shape checked: the worker validates each event in the one pass in which
it routes it (with `payload_error`, `meta_error`, `keys_error`), so the hot path
allocates nothing per event for validation.
"""
from __future__ import annotations

import functools

import msgpack

from . import protocol
from .protocol import (ACCEPT, ATTACH, BYE, CTL_BYE, E_BAD_PATTERN, E_BAD_SID, E_BAD_VERSION, E_MALFORMED,
                       E_UNKNOWN_COMMAND, ERR, HB, HELLO, INTEREST, MEMBERS, MSG, OK, PEER_EVENTS, PING, PONG,
                       PROBE, PUB, REFUSE, RESYNC, STATUS, STATUS_REPLY, SUB, SUBS, SYNC, SYNC_ACK, UNSUB,
                       WELCOME, ProtocolError)
from .subjects import MAX_NAME_LEN, group_error, pattern_error

MAX_MAP_LEN = 1024          # entries in any one map of a client frame (headers, options, req)
MAX_DEPTH = 16              # array/map nesting inside an echoed value (req, PING token)
MAX_ANY_ITEMS = 1024        # items (all levels) inside an echoed value
NAME_KEEP = 128             # HELLO name: characters kept
LANG_KEEP = 32              # HELLO lang: characters kept
MAX_PEER_ID = 64            # HELLO peer / PEER_EVENTS source: a node id
MAX_GROUP_KEYS = 1024       # queue-group keys on one peer event
MAX_KEY_LEN = MAX_NAME_LEN + 1 + 128   # a group key is "pattern group"

_CLIENT_LIMITS = dict(raw=False, strict_map_key=False, max_ext_len=0, max_map_len=MAX_MAP_LEN)
_unpackb = msgpack.unpackb


def _total(decode):
    """Make a decoder total: a slip in a check (an IndexError, say) is that frame's
    `malformed`, never an exception that could end the loop of the process reading it."""
    @functools.wraps(decode)    # tests call decode.__wrapped__, so that such a slip fails them
    def wrapped(frame):
        try:
            return decode(frame)
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError(E_MALFORMED, f"undecodable frame ({type(exc).__name__})") from None
    return wrapped


# ----------------------------------------------------------------------------- shared checks
def unpack_array(frame: bytes, limits: dict = _CLIENT_LIMITS) -> list:
    """msgpack-decode one frame that must be an array starting with an int code."""
    try:
        cmd = _unpackb(frame, **limits)
    except Exception as exc:  # msgpack raises a zoo of exception types
        raise ProtocolError(E_MALFORMED, f"frame is not valid msgpack: {type(exc).__name__}") from None
    if type(cmd) is not list or not cmd or type(cmd[0]) is not int:
        raise ProtocolError(E_MALFORMED, "frame must be a msgpack array starting with a command code")
    return cmd


def any_error(value) -> str | None:
    """Why `value` may not be echoed (too deep or too big), or None.  Iterative."""
    t = type(value)
    if t is not list and t is not dict and t is not tuple:
        return None
    stack = [(value, 1)]
    items = 0
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"value nested deeper than {MAX_DEPTH} levels"
        items += len(v)
        if items > MAX_ANY_ITEMS:
            return f"value has more than {MAX_ANY_ITEMS} items"
        parts = (list(v.keys()) + list(v.values())) if type(v) is dict else v
        for x in parts:
            tx = type(x)
            if tx is list or tx is dict or tx is tuple:
                stack.append((x, depth + 1))
    return None


def meta_error(meta) -> str | None:
    """Why an event's meta (not None) is invalid, or None: [headers map(str->str)|nil, reply str|nil]."""
    if type(meta) is not list or len(meta) != 2:
        return "meta must be nil or [headers, reply]"
    headers, reply = meta
    if headers is not None:
        if type(headers) is not dict:
            return "headers must be a map of string to string"
        for k, v in headers.items():
            if type(k) is not str or type(v) is not str:
                return "headers must be a map of string to string"
    if reply is not None and type(reply) is not str:
        return "reply must be a string"
    return None


def payload_error(payload, max_payload: int) -> tuple | None:
    """(code, message) if a payload is not bin or is over max_payload, else None."""
    if type(payload) is not bytes:
        return (E_MALFORMED, "payload must be binary (msgpack bin)")
    if len(payload) > max_payload:
        return (protocol.E_PAYLOAD_TOO_LARGE, f"payload of {len(payload)} bytes exceeds max_payload {max_payload}")
    return None


def keys_error(keys) -> str | None:
    """Why a peer event's queue-group keys (not None) are invalid, or None."""
    if type(keys) is not list or len(keys) > MAX_GROUP_KEYS:
        return f"groups must be nil or a list of at most {MAX_GROUP_KEYS} keys"
    for k in keys:
        if type(k) is not str or not k or len(k) > MAX_KEY_LEN:
            return "a group key must be a non-empty string"
    return None


def _req(cmd: list, at: int):
    """The req at `cmd[at]` if present and echoable, else None."""
    if len(cmd) > at:
        r = cmd[at]
        if any_error(r) is None:
            return r
    return None


def _echo(cmd: list, at: int, what: str):
    """The echoed value at cmd[at] (None if absent); ProtocolError if it cannot be echoed."""
    if len(cmd) <= at:
        return None
    v = cmd[at]
    e = any_error(v)
    if e is not None:
        raise ProtocolError(E_MALFORMED, f"{what}: {e}")
    return v


# ----------------------------------------------------------------------------- client -> node
def _opt(opts: dict, key: str, types: tuple, keep: int | None = None):
    v = opts.get(key)
    if v is None:
        return None
    if type(v) not in types:
        raise ProtocolError(E_MALFORMED, f"HELLO option {key!r} must be {' or '.join(t.__name__ for t in types)}")
    return v[:keep] if keep is not None else v


def _hello(cmd: list) -> tuple:
    """-> (HELLO, name, lang, token|None, direct, peer)"""
    if len(cmd) < 3 or type(cmd[2]) is not dict:
        raise ProtocolError(E_MALFORMED, "HELLO is [1, version, options]")
    version, opts = cmd[1], cmd[2]
    if type(version) is not int or version != protocol.VERSION:   # not true, not 1.0
        shown = version if type(version) in (int, str, float, bool) else type(version).__name__
        raise ProtocolError(E_BAD_VERSION, f"protocol version {str(shown)[:32]} not supported; "
                                           f"this node speaks the integer {protocol.VERSION}")
    name = _opt(opts, "name", (str,), NAME_KEEP) or ""
    lang = _opt(opts, "lang", (str,), LANG_KEEP) or ""
    token = _opt(opts, "token", (str,))
    _opt(opts, "version", (str,))
    direct = bool(_opt(opts, "direct", (bool,)))
    peer = _opt(opts, "peer", (str,)) or ""
    if len(peer) > MAX_PEER_ID:
        raise ProtocolError(E_MALFORMED, f"HELLO option 'peer' must be a node id of at most {MAX_PEER_ID} characters")
    return (HELLO, name, lang, token, direct, peer)


def _sub(cmd: list) -> tuple:
    """-> (SUB, sid, pattern, group|None, req, cluster_confirm)"""
    n = len(cmd)
    if n != 5 and n != 6:
        raise ProtocolError(E_MALFORMED, "SUB is [3, sid, pattern, group, req, options?]", _req(cmd, 4))
    req = _echo(cmd, 4, "SUB req")
    sid, pattern, group = cmd[1], cmd[2], cmd[3]
    if type(sid) is not int:
        raise ProtocolError(E_BAD_SID, "sid must be an integer", req)
    e = pattern_error(pattern)
    if e is None and group is not None:
        e = group_error(group)
    if e is not None:
        raise ProtocolError(E_BAD_PATTERN, e, req)
    cluster = False
    if n == 6 and cmd[5] is not None:
        opts = cmd[5]
        if type(opts) is not dict:
            raise ProtocolError(E_MALFORMED, "SUB options must be a map", req)
        confirm = opts.get("confirm")
        if confirm is not None and (type(confirm) is not str or confirm not in ("node", "cluster")):
            raise ProtocolError(E_MALFORMED, "SUB option 'confirm' must be 'node' or 'cluster'", req)
        cluster = confirm == "cluster"
    return (SUB, sid, pattern, group, req, cluster)


def _subs(cmd: list) -> tuple:
    """-> (SUBS, req, entries, errors): `entries` the flat [sid, pattern, group, ...] triples that
    are valid, in order; `errors` [(code, message)] for the others (each answered like a SUB's)."""
    n = len(cmd)
    if n < 2 or (n - 2) % 3 or n - 2 > 3 * protocol.MAX_SUBS_BATCH:
        raise ProtocolError(E_MALFORMED, f"SUBS is [10, req, (sid, pattern, group)...], at most "
                                         f"{protocol.MAX_SUBS_BATCH} triples", _req(cmd, 1))
    req = _echo(cmd, 1, "SUBS req")
    errors = None
    for i in range(2, n, 3):
        sid, pattern, group = cmd[i], cmd[i + 1], cmd[i + 2]
        if type(sid) is not int:
            e = (E_BAD_SID, "sid must be an integer")
        else:
            e = pattern_error(pattern)
            if e is None and group is not None:
                e = group_error(group)
            if e is None:
                continue
            e = (E_BAD_PATTERN, f"sid {sid}: {e}")
        if errors is None:
            errors = []
        errors.append((i, e))
    if errors is None:                  # the usual case: every triple valid, no copy per triple
        return (SUBS, req, cmd[2:], ())
    bad = {i for i, _ in errors}
    entries = []
    for i in range(2, n, 3):
        if i not in bad:
            entries += cmd[i:i + 3]
    return (SUBS, req, entries, [e for _, e in errors])


def _unsub(cmd: list) -> tuple:
    """-> (UNSUB, sid, req)"""
    if len(cmd) != 3:
        raise ProtocolError(E_MALFORMED, "UNSUB is [4, sid, req]", _req(cmd, 2) if len(cmd) > 3 else None)
    req = _echo(cmd, 2, "UNSUB req")
    if type(cmd[1]) is not int:
        raise ProtocolError(E_BAD_SID, "sid must be an integer", req)
    return (UNSUB, cmd[1], req)


def _ping(cmd: list) -> tuple:
    return (PING, _echo(cmd, 1, "PING token"))


def _status(cmd: list) -> tuple:
    return (STATUS, _echo(cmd, 1, "STATUS req"))


_PONG = (PONG,)
_BYE = (BYE,)


def _peer_events(cmd: list) -> list:
    if len(cmd) < 2 or (len(cmd) - 2) % 4 or type(cmd[1]) is not str or len(cmd[1]) > MAX_PEER_ID:
        raise ProtocolError(E_MALFORMED, "PEER_EVENTS is [9, node_id, (name, payload, meta, groups)...]")
    return cmd


def peer_body_at(frame) -> int | None:
    """Where the first event of a PEER_EVENTS frame starts in its bytes, or None.

    Only for a frame `decode_client` already accepted (so the bytes from there on are
    exactly its well-formed quadruples, end to end): the offset after the array header,
    the code and the source node id, when those are encoded the plain way (code as a
    positive fixint, id as fixstr or str8).  A relay forwarding the batch unchanged puts
    its own header (`workers/peers.head`) in front of these bytes; None makes it re-pack.
    """
    b = frame[0]
    if 0x90 <= b <= 0x9f:
        at = 1
    elif b == 0xdc:
        at = 3
    elif b == 0xdd:
        at = 5
    else:
        return None
    if frame[at] != PEER_EVENTS:
        return None
    at += 1
    b = frame[at]
    if 0xa0 <= b <= 0xbf:
        return at + 1 + (b & 0x1f)
    if b == 0xd9:
        return at + 2 + frame[at + 1]
    return None


_CLIENT = {
    HELLO: _hello, SUB: _sub, SUBS: _subs, UNSUB: _unsub, PING: _ping, PONG: lambda cmd: _PONG, STATUS: _status,
    BYE: lambda cmd: _BYE, PEER_EVENTS: _peer_events,
}


@_total
def decode_client(frame: bytes):
    """Decode a frame a worker's client ROUTER received.

    Returns a tuple (or, for PUB and PEER_EVENTS, the frame's flat list) whose
    item 0 is the command code:

        [PUB, name, payload, meta, ...]           length 1 + 3k (events: checked by the router)
        (SUB, sid:int, pattern:str, group:str|None, req, cluster:bool)
        (SUBS, req, [sid:int, pattern:str, group:str|None, ...] valid triples, [(code, message)] of the rest)
        (UNSUB, sid:int, req)
        (HELLO, name:str, lang:str, token:str|None, direct:bool, peer:str)
        (PING, token)  (PONG,)  (STATUS, req)  (BYE,)
        [PEER_EVENTS, src:str, name, payload, meta, groups, ...]   length 2 + 4k

    Raises ProtocolError(code, message, req) for anything else.
    """
    cmd = unpack_array(frame)
    code = cmd[0]
    if code == PUB:                       # the hot path: shape only, events in the routing pass
        if (len(cmd) - 1) % 3:
            raise ProtocolError(E_MALFORMED, "PUB takes (name, payload, meta) triples")
        return cmd
    d = _CLIENT.get(code)
    if d is None:
        raise ProtocolError(E_UNKNOWN_COMMAND, f"unknown command code {code}")
    return d(cmd)


# ----------------------------------------------------------------------------- node -> client
_NODE_LIMITS = dict(raw=False, strict_map_key=False, max_ext_len=0)


def clean_msg(cmd: list, _type=type, _int=int, _str=str, _bytes=bytes, _list=list, _map=map) -> tuple[list, int]:
    """(the MSG frame with only well-formed quadruples, how many were dropped).

    Fast path, taken when every event is good and has no meta (the common case): the types
    of each column's slice are taken in C (``map(type, ...)``) and counted in C
    (``list.count`` compares by identity first; ``bool`` is not ``int``): a few allocations
    per frame, none per event, no Python bytecode per event; the frame itself is returned.
    Otherwise one pass of inline type tests over the four columns finds what to keep."""
    n = (len(cmd) - 1) >> 2
    if (cmd[4::4].count(None) == n and _list(_map(_type, cmd[1::4])).count(_int) == n
            and _list(_map(_type, cmd[2::4])).count(_str) == n
            and _list(_map(_type, cmd[3::4])).count(_bytes) == n):
        return cmd, 0
    cols = (cmd[1::4], cmd[2::4], cmd[3::4], cmd[4::4])
    for sid, name, payload, meta in zip(*cols):
        if (_type(sid) is not _int or _type(name) is not _str or _type(payload) is not _bytes
                or (meta is not None and meta_error(meta) is not None)):
            break
    else:
        return cmd, 0
    good = [MSG]
    for q in zip(*cols):
        sid, name, payload, meta = q
        if (_type(sid) is _int and _type(name) is _str and _type(payload) is _bytes
                and (meta is None or meta_error(meta) is None)):
            good += q
    return good, (len(cmd) - len(good)) // 4


@_total
def decode_node(frame: bytes):
    """Decode a frame a node sent to a client (or to a peer link).

    Returns tuples laid out as on the wire, except MSG, (MSG, flat list, dropped):

        (MSG, [MSG, sid:int, name:str, payload:bytes, meta, ...], dropped:int)
        (WELCOME, 1, info:dict)   with max_payload:int, ports:[int], shard.count:int, worker:int checked
        (OK, req)  (PONG, token)  (PING, token)  (STATUS_REPLY, req, status:dict)
        (ERR, code:str, message:str, req, fatal:bool)

    Raises ProtocolError(malformed) for anything else; an unknown code raises
    ProtocolError(unknown_command) so a newer node's frames can be ignored.
    """
    cmd = unpack_array(frame, _NODE_LIMITS)
    code, n = cmd[0], len(cmd)
    if code == MSG:
        if (n - 1) % 4:
            raise ProtocolError(E_MALFORMED, "MSG carries (sid, name, payload, meta) quadruples")
        good, dropped = clean_msg(cmd)
        return (MSG, good, dropped)
    if code == OK or code == PONG or code == PING:
        return (code, cmd[1] if n > 1 else None)
    if code == ERR:
        if n < 3 or type(cmd[1]) is not str or type(cmd[2]) is not str:
            raise ProtocolError(E_MALFORMED, "ERR is [19, code, message, req, fatal]")
        return (ERR, cmd[1], cmd[2], cmd[3] if n > 3 else None, n > 4 and cmd[4] is True)
    if code == STATUS_REPLY:
        if n < 3 or type(cmd[2]) is not dict:
            raise ProtocolError(E_MALFORMED, "STATUS_REPLY is [20, req, status]")
        return (STATUS_REPLY, cmd[1], cmd[2])
    if code == WELCOME:
        info = _welcome_info(cmd)
        return (WELCOME, cmd[1], info)
    raise ProtocolError(E_UNKNOWN_COMMAND, f"unknown command code {code}")


def _welcome_info(cmd: list) -> dict:
    bad = ProtocolError(E_MALFORMED, "WELCOME is [16, 1, info] with max_payload, ports, shard, worker")
    if len(cmd) < 3 or type(cmd[2]) is not dict:
        raise bad
    info = cmd[2]
    ports, shard, worker, maxp = info.get("ports"), info.get("shard"), info.get("worker"), info.get("max_payload")
    if (type(ports) is not list or not 1 <= len(ports) <= 256 or not all(type(p) is int and 0 < p < 65536
                                                                        for p in ports)
            or type(shard) is not dict or shard.get("count") != len(ports) or type(shard.get("count")) is not int
            or type(worker) is not int or not 0 <= worker < len(ports) or type(maxp) is not int or maxp < 1):
        raise bad
    return info


# ----------------------------------------------------------------------------- cluster control port
MAX_MEMBERS = 4096          # member entries gossiped in one control frame
MAX_HOST_LEN = 255
MAX_LABEL_LEN = 128         # node and cluster names in member entries

_NUMBER = (int, float)
# known keys of a member entry -> (types, check); unknown keys are kept, unchecked (later versions)
_MEMBER_FIELDS = {
    "id": ((str,), lambda v: 0 < len(v) <= MAX_PEER_ID),
    "cluster": ((str,), lambda v: len(v) <= MAX_LABEL_LEN),
    "name": ((str,), lambda v: len(v) <= MAX_LABEL_LEN),
    "host": ((str, type(None)), lambda v: v is None or len(v) <= MAX_HOST_LEN),
    "port": ((int,), lambda v: 0 < v < 65536),
    "ctl": ((int,), lambda v: 0 < v < 65536),
    "workers": ((int,), lambda v: 1 <= v <= 256),
    "hb": ((int,), lambda v: v >= 0),
    "kids": ((int,), lambda v: v >= 0),
    "started": (_NUMBER, lambda v: True),
    "v": ((int,), lambda v: True),
    "stats": ((dict,), lambda v: all(type(x) is int for x in v.values())),
    "rev": ((int,), lambda v: v >= 0),                                  # content version (gossip deltas)
    "depth": ((int,), lambda v: v >= 0),
    "to": ((str,), lambda v: len(v) <= MAX_HOST_LEN),                   # address hints (own address)
    "saw": ((str,), lambda v: len(v) <= MAX_HOST_LEN),
}
_MEMBER_REQUIRED = ("id", "cluster", "port", "ctl", "workers")


def member_error(info) -> str | None:
    """Why a gossiped member entry (a node's id, address, worker count...) is unusable, or None."""
    if type(info) is not dict:
        return "a member entry must be a map"
    for key in _MEMBER_REQUIRED:
        if key not in info:
            return f"a member entry needs {key!r}"
    for key, (types, ok) in _MEMBER_FIELDS.items():
        if key in info:
            v = info[key]
            if type(v) not in types or not ok(v):
                return f"member entry field {key!r} is out of range or of the wrong type"
    return None


def refresh_error(v) -> str | None:
    """Why a gossip liveness refresh [id, hb, stats|nil] (Overlay.gossip_delta) is unusable, or None."""
    if type(v) is not list or len(v) != 3:
        return "a refresh is [id, hb, stats|nil]"
    mid, hb, stats = v
    if type(mid) is not str or not 0 < len(mid) <= MAX_PEER_ID or type(hb) is not int or hb < 0:
        return "a refresh needs a node id and a heartbeat count"
    if stats is not None and (type(stats) is not dict or not all(type(x) is int for x in stats.values())):
        return "refresh stats are a map of integers"
    return None


def _members(v) -> list:
    """The valid entries of a gossiped member list (bad ones dropped: the rest is still news):
    full member entries, and liveness refreshes of members the receiver knows."""
    if type(v) is not list or len(v) > MAX_MEMBERS:
        raise ProtocolError(E_MALFORMED, f"members must be a list of at most {MAX_MEMBERS} entries")
    return [m for m in v if (refresh_error(m) if type(m) is list else member_error(m)) is None]


def _sender(v) -> dict:
    e = member_error(v)
    if e is not None:
        raise ProtocolError(E_MALFORMED, "sender: " + e)
    return v


def _interest_entries(v) -> list:
    if type(v) is not list:
        raise ProtocolError(E_MALFORMED, "interest entries must be a list")
    for e in v:
        if (type(e) is not list or len(e) != 3 or pattern_error(e[0]) is not None
                or (e[1] is not None and group_error(e[1]) is not None) or type(e[2]) is not int):
            raise ProtocolError(E_MALFORMED, "an interest entry is [pattern, group|nil, count]")
    return v


def _ctl_int(v) -> int:
    if type(v) is not int:
        raise ProtocolError(E_MALFORMED, "sequence numbers and tokens are integers")
    return v


def _ctl_time(v):
    if v is not None and type(v) not in _NUMBER:
        raise ProtocolError(E_MALFORMED, "heartbeat times are numbers or nil")
    return v


# code -> (number of items after the code, decoder of those items into the tuple's tail)
_CONTROL = {
    PROBE: (2, lambda a: (_sender(a[0]), _members(a[1]))),
    MEMBERS: (2, lambda a: (_sender(a[0]), _members(a[1]))),
    ATTACH: (2, lambda a: (_sender(a[0]), _members(a[1]), a[2] is True if len(a) > 2 else False)),
    ACCEPT: (2, lambda a: (_sender(a[0]), _members(a[1]))),
    REFUSE: (3, lambda a: (_sender(a[0]), a[1] if type(a[1]) is str else "", _members(a[2]))),
    HB: (3, lambda a: (None if a[0] is None else _members(a[0]), _ctl_time(a[1]), _ctl_time(a[2]))),
    INTEREST: (3, lambda a: (_ctl_int(a[0]), a[1] is True, _interest_entries(a[2]))),
    RESYNC: (0, lambda a: ()),
    SYNC: (1, lambda a: (_ctl_int(a[0]),)),
    SYNC_ACK: (1, lambda a: (_ctl_int(a[0]),)),
    CTL_BYE: (0, lambda a: ("moved",) if a and a[0] == "moved" else ()),   # "moved": only this link ends
}


@_total
def decode_control(frame: bytes) -> tuple:
    """Decode a frame another node's supervisor sent to the control port (or a parent link).

    Returns a tuple laid out as on the wire (see tscale/cluster.py), every field typed;
    member lists keep only valid entries, ATTACH always carries last_resort (bool).
    Raises ProtocolError for anything else: the caller drops it and counts it."""
    cmd = unpack_array(frame, _NODE_LIMITS)
    spec = _CONTROL.get(cmd[0])
    if spec is None:
        raise ProtocolError(E_UNKNOWN_COMMAND, f"unknown control code {cmd[0]}")
    need, build = spec
    if len(cmd) - 1 < need:
        raise ProtocolError(E_MALFORMED, f"control code {cmd[0]} needs {need} items")
    return (cmd[0], *build(cmd[1:]))


def decode_beacon(body: bytes) -> tuple | None:
    """A UDP discovery beacon's body (after the magic) -> (node_id, cluster, ctl_port, bye), or None."""
    try:
        b = _unpackb(body, **_NODE_LIMITS)
    except Exception:
        return None
    if type(b) is not dict:
        return None
    mid, cluster, ctl, bye = b.get("id"), b.get("c"), b.get("k"), b.get("bye", False)
    if (type(mid) is not str or not 0 < len(mid) <= MAX_PEER_ID or type(cluster) is not str
            or type(ctl) is not int or not 0 < ctl < 65536 or type(bye) is not bool):
        return None
    return (mid, cluster, ctl, bye)
