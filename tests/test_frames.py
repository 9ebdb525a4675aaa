"""Sans-I/O: tscale/frames.py, the decoder every frame from outside passes first.

Every command with wrong types in every field, deep nesting, huge declared lengths and counts;
hypothesis throws generated frames at each decoder, which must answer with a well-typed command
or a ProtocolError whose ERR frame can always be packed (the req it echoes is bounded)."""
from __future__ import annotations

import time

import msgpack
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tscale import frames, protocol
from tscale.frames import (MAX_ANY_ITEMS, MAX_DEPTH, MAX_MAP_LEN, any_error, clean_msg, decode_beacon, decode_client,
                           decode_control, decode_node, keys_error, member_error, meta_error, payload_error,
                           refresh_error)
from tscale.protocol import (ACCEPT, ATTACH, BYE, CTL_BYE, E_BAD_PATTERN, E_BAD_SID, E_BAD_VERSION, E_MALFORMED,
                             E_UNKNOWN_COMMAND, ERR, HB, HELLO, INTEREST, MEMBERS, MSG, OK, PEER_EVENTS, PING, PONG,
                             PROBE, PUB, REFUSE, RESYNC, STATUS, STATUS_REPLY, SUB, SUBS, SYNC, SYNC_ACK, UNSUB,
                             WELCOME, ProtocolError)

CLIENT_CODES = {E_MALFORMED, E_UNKNOWN_COMMAND, E_BAD_VERSION, E_BAD_SID, E_BAD_PATTERN}
# The decoders turn any slip of their own into `malformed` (so a process never dies of one);
# the generated tests call the bare functions, where such a slip is an error that fails them.
bare_client, bare_node, bare_control = decode_client.__wrapped__, decode_node.__wrapped__, decode_control.__wrapped__


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def packed(cmd) -> bytes:
    """msgpack bytes of a generated command; examples msgpack cannot pack (ints over 64 bits) are skipped."""
    try:
        return pack(cmd)
    except (ValueError, OverflowError):
        assume(False)


def nested(depth: int, leaf=None) -> bytes:
    """msgpack bytes of `depth` one-element arrays around `leaf` (built without recursion)."""
    return b"\x91" * depth + pack(leaf)


def refused(frame: bytes, code: str = E_MALFORMED, decode=decode_client) -> ProtocolError:
    with pytest.raises(ProtocolError) as ei:
        decode(frame)
    assert ei.value.code == code, (ei.value.code, ei.value.message)
    assert ei.value.message
    protocol.err(ei.value.code, ei.value.message, ei.value.req)   # the answer can always be packed
    return ei.value


# ----------------------------------------------------------------------------- framing
@pytest.mark.parametrize("frame", [
    b"", b"\xc1", b"\x92\x02", pack([2, "a", b"x", None]) + b"\x00", b"\x91\xa2\xff\xfe",
    pack({"a": 1}), pack(1), pack([]), pack(["2"]), pack([True]), pack([1.0]), pack([None, 1]), pack([[2]]),
])
def test_not_a_command_array_is_malformed(frame):
    refused(frame)


@pytest.mark.parametrize("frame,what", [
    (b"\xdd\xff\xff\xff\xff", "array of 4294967295 items in 5 bytes"),
    (b"\x91\xdb\xff\xff\xff\xff", "str of 4 GiB declared"),
    (b"\x91\xc6\xff\xff\xff\xff", "bin of 4 GiB declared"),
    (b"\x92\x02\xdf\x00\x01\x00\x00" + b"\xa1a\xc0" * 10, "map of 65536 entries declared"),
    (b"\x92\x02" + pack({str(i): i for i in range(MAX_MAP_LEN + 1)}), "map over MAX_MAP_LEN"),
    (b"\x92\x01\xd4\x01\x00", "ext type"),
    (b"\x92\x01\xd6\xff\x00\x00\x00\x00", "timestamp ext"),
    (nested(1025, 1), "nesting beyond msgpack's own 1024 levels"),
    (b"\x92\x01\x81\x91\x01\x02", "an array as a map key"),
])
def test_absurd_lengths_and_depths_are_refused_before_allocation(frame, what):
    # Refused without allocating what was declared: a 4 GiB allocation would take
    # seconds or fail with MemoryError.  The bound is generous (loaded 2-core CI).
    t = time.perf_counter()
    refused(frame)
    assert time.perf_counter() - t < 2.0, what


def test_deeply_nested_values_never_recurse_in_python():
    deep = nested(1000)                        # a valid msgpack value 1000 arrays deep
    for frame in (b"\x93\x01\x01\x81\xa4name" + deep,                           # HELLO name (issue 7)
                  b"\x93\x01" + deep + b"\x80",                                 # HELLO version
                  b"\x95\x03\x01\xa1a\xc0" + deep,                              # SUB req
                  b"\x92\x05" + deep, b"\x92\x07" + deep,                       # PING token, STATUS req
                  b"\x93\x04\x01" + deep):                                      # UNSUB req
        e = refused(frame, E_BAD_VERSION if frame.startswith(b"\x93\x01\x91") else E_MALFORMED)
        assert e.req is None
    # a PUB or PEER_EVENTS name 1000 deep passes the shape check: the routing pass rejects it by type
    assert decode_client(b"\x94\x02" + deep + b"\xc4\x00\xc0")[0] == PUB


def test_non_string_map_keys_do_not_void_the_frame():
    # issue 9 point 4: an int header key is an error of that event only; req {1: 2} is echoed
    cmd = decode_client(pack([PUB, "a.b", b"x", [{1: "v"}, None], "a.c", b"y", None]))
    assert cmd[0] == PUB and len(cmd) == 7
    assert meta_error(cmd[3]) and meta_error(cmd[6] or [None, None]) is None
    assert decode_client(pack([SUB, 1, "a.>", None, {1: 2}])) == (SUB, 1, "a.>", None, {1: 2}, False)
    assert decode_client(pack([HELLO, 1, {1: "x", "name": "n", None: 2}]))[1] == "n"
    assert decode_client(pack([SUB, 1, "a", None, 7, {5: 5, "confirm": "cluster"}]))[5] is True


# ----------------------------------------------------------------------------- HELLO
def test_hello_decodes_to_a_typed_tuple():
    assert decode_client(pack([HELLO, 1, {}])) == (HELLO, "", "", None, False, "")
    assert decode_client(pack([HELLO, 1, {"name": "n" * 500, "lang": "l" * 99, "token": "t", "direct": True,
                                          "peer": "ab" * 8, "version": "0.1", "future": [1]}, "extra"])) == \
        (HELLO, "n" * frames.NAME_KEEP, "l" * frames.LANG_KEEP, "t", True, "ab" * 8)


@pytest.mark.parametrize("version", [True, False, 1.0, "1", 2, 0, -1, None, [1], {"v": 1}, 2 ** 64 - 1])
def test_hello_version_must_be_the_integer_1(version):
    e = refused(pack([HELLO, version, {}]), E_BAD_VERSION)
    assert len(e.message) < 200


@pytest.mark.parametrize("frame", [[HELLO], [HELLO, 1], [HELLO, 1, None], [HELLO, 1, ["name", "x"]], [HELLO, 1, "o"]])
def test_hello_shape(frame):
    refused(pack(frame))


@pytest.mark.parametrize("key,value", [
    ("name", 5), ("name", ["x"]), ("name", {"a": "b"}), ("name", b"bytes"), ("lang", 1.5), ("lang", True),
    ("token", 123), ("token", b"secret"), ("direct", "yes"), ("direct", 1), ("version", 1),
    ("peer", 7), ("peer", "x" * 65), ("peer", ["node"]),
])
def test_hello_option_types(key, value):
    e = refused(pack([HELLO, 1, {key: value}]))
    assert key in e.message


# ----------------------------------------------------------------------------- SUB / UNSUB
def test_sub_decodes_to_a_typed_tuple():
    assert decode_client(pack([SUB, 3, "a.*", None, "r"])) == (SUB, 3, "a.*", None, "r", False)
    assert decode_client(pack([SUB, -1, ">", "g", None, {"confirm": "cluster", "x": 1}])) == \
        (SUB, -1, ">", "g", None, True)
    assert decode_client(pack([SUB, 3, "a", None, 1, {"confirm": "node"}]))[5] is False
    assert decode_client(pack([SUB, 3, "a", None, 1, None]))[5] is False


@pytest.mark.parametrize("frame,code,req", [
    ([SUB, 1, "a"], E_MALFORMED, None),
    ([SUB, 1, "a", None], E_MALFORMED, None),
    ([SUB, 1, "a", None, 9, {}, "x"], E_MALFORMED, 9),
    ([SUB, "1", "a", None, 9], E_BAD_SID, 9),
    ([SUB, 1.0, "a", None, 9], E_BAD_SID, 9),
    ([SUB, True, "a", None, 9], E_BAD_SID, 9),
    ([SUB, None, "a", None, 9], E_BAD_SID, 9),
    ([SUB, 1, 5, None, 9], E_BAD_PATTERN, 9),
    ([SUB, 1, ["a"], None, 9], E_BAD_PATTERN, 9),
    ([SUB, 1, "a.>.b", None, 9], E_BAD_PATTERN, 9),
    ([SUB, 1, "a", "bad group", 9], E_BAD_PATTERN, 9),
    ([SUB, 1, "a", "", 9], E_BAD_PATTERN, 9),
    ([SUB, 1, "a", 5, 9], E_BAD_PATTERN, 9),
    ([SUB, 1, "a", "g" * 129, 9], E_BAD_PATTERN, 9),
    ([SUB, 1, "a", None, 9, "opts"], E_MALFORMED, 9),
    ([SUB, 1, "a", None, 9, {"confirm": "all"}], E_MALFORMED, 9),
    ([SUB, 1, "a", None, 9, {"confirm": ["cluster"]}], E_MALFORMED, 9),
    ([UNSUB, 1], E_MALFORMED, None),
    ([UNSUB, 1, 9, 9], E_MALFORMED, 9),
    ([UNSUB, "1", 9], E_BAD_SID, 9),
    ([UNSUB, [1], {"r": 1}], E_BAD_SID, {"r": 1}),
])
def test_sub_and_unsub_errors_keep_the_req(frame, code, req):
    assert refused(pack(frame), code).req == req


def test_subs_decodes_to_the_valid_triples_and_the_errors_of_the_rest():
    """SUBS (issue 10): many SUBs in one frame.  A bad triple is reported, the others kept in order."""
    ok = [SUBS, "r", 1, "a.b", None, 2, "a.*", "g", 3, ">", None]
    assert decode_client(pack(ok)) == (SUBS, "r", [1, "a.b", None, 2, "a.*", "g", 3, ">", None], ())
    assert decode_client(pack([SUBS, None])) == (SUBS, None, [], ())
    cmd = decode_client(pack([SUBS, 7, 1, "a", None, "2", "b", None, 3, "a b", None, 4, "c", "bad group",
                              5, "d", None, True, "e", None]))
    assert cmd[:3] == (SUBS, 7, [1, "a", None, 5, "d", None])
    assert [code for code, _ in cmd[3]] == [E_BAD_SID, E_BAD_PATTERN, E_BAD_PATTERN, E_BAD_SID]
    assert "sid 3" in cmd[3][1][1]


@pytest.mark.parametrize("frame,req", [
    ([SUBS], None),
    ([SUBS, 9, 1, "a"], 9),
    ([SUBS, 9, 1, "a", None, 2], 9),
    ([SUBS, 9] + [1, "a", None] * (protocol.MAX_SUBS_BATCH + 1), 9),
])
def test_subs_of_the_wrong_shape_is_malformed(frame, req):
    assert refused(pack(frame)).req == req


def test_subs_at_the_batch_limit_decodes():
    cmd = decode_client(pack([SUBS, None] + [1, "a", None] * protocol.MAX_SUBS_BATCH))
    assert len(cmd[2]) == 3 * protocol.MAX_SUBS_BATCH


def test_echoed_values_are_bounded():
    ok = [[[[1]]]]
    assert decode_client(pack([PING, ok])) == (PING, ok)
    assert decode_client(pack([PING])) == (PING, None)
    assert decode_client(pack([STATUS])) == (STATUS, None)
    assert decode_client(pack([STATUS, 4, "extra"])) == (STATUS, 4)
    deep = nested(MAX_DEPTH - 1, 1)
    assert decode_client(b"\x92\x05" + deep)[1] is not None
    refused(b"\x92\x05" + nested(MAX_DEPTH + 1, 1))
    refused(pack([PING, list(range(MAX_ANY_ITEMS + 1))]))
    assert decode_client(pack([PING, list(range(MAX_ANY_ITEMS))]))[0] == PING
    # msgpack decodes a req up to 1023 levels inside the frame; the node echoes at most 16
    e = refused(b"\x95\x03\x01\xa1a\xc0" + nested(600, 1))
    assert e.req is None


def test_any_error_is_iterative_and_checks_keys():
    v = None
    for _ in range(100_000):       # far deeper than Python's recursion limit
        v = [v]
    assert "deeper" in any_error(v)
    assert any_error({(1, (2, (3,))): 1}) is None
    v = 1
    for _ in range(MAX_DEPTH):
        v = [v]
    assert any_error({"k": v}) is not None and any_error(v) is None
    for scalar in (None, 1, "s", b"b", 1.5, True):
        assert any_error(scalar) is None


# ----------------------------------------------------------------------------- PUB and events
def test_pub_shape_only():
    cmd = decode_client(pack([PUB, "a", b"x", None, "b", b"", [None, "r"]]))
    assert cmd == [PUB, "a", b"x", None, "b", b"", [None, "r"]]
    assert decode_client(pack([PUB])) == [PUB]
    for bad in ([PUB, "a"], [PUB, "a", b"x"], [PUB, "a", b"x", None, "b"]):
        refused(pack(bad))


@pytest.mark.parametrize("meta", [[None, None], [{}, None], [{"a": "b", "ü": "ß"}, None], [None, "r.x"],
                                  [{"k": ""}, "inbox.1"]])
def test_meta_error_accepts(meta):
    assert meta_error(meta) is None


@pytest.mark.parametrize("meta", [[], [None], [None, None, None], {"h": "x"}, "meta", 5, (None, None),
                                  [["k", "v"], None], [{"k": 1}, None], [{"k": b"v"}, None], [{1: "v"}, None],
                                  [None, 5], [None, b"r"], [None, ["r"]], {"x": 1}])
def test_meta_error_rejects(meta):
    assert isinstance(meta_error(meta), str)


def test_payload_and_keys():
    assert payload_error(b"x" * 10, 10) is None
    assert payload_error(b"x" * 11, 10)[0] == protocol.E_PAYLOAD_TOO_LARGE
    for p in ("text", 5, None, [b"x"], bytearray(b"x")):
        assert payload_error(p, 10)[0] == E_MALFORMED
    assert keys_error(["a.> g"]) is None and keys_error([]) is None
    for k in ([1], "a g", [None], [""], ["x" * 700], [["a g"]], {"a": "g"}, ["k"] * 1025):
        assert keys_error(k), k


@pytest.mark.parametrize("frame", [[PEER_EVENTS], [PEER_EVENTS, [1, 2], "a", b"", None, None],
                                   [PEER_EVENTS, 5], [PEER_EVENTS, "n", "a", b""], [PEER_EVENTS, "x" * 65]])
def test_peer_events_shape(frame):
    refused(pack(frame))


def test_peer_events_pass_with_their_shape():
    f = [PEER_EVENTS, "abcd", "a", b"", None, None, "b", b"x", [None, None], ["b g"]]
    assert decode_client(pack(f)) == f


@pytest.mark.parametrize("code", [0, 11, 15, 16, 17, 18, 19, 20, 21, 127, -1, 2 ** 40])
def test_unknown_codes(code):
    assert str(code) in refused(pack([code, 1]), E_UNKNOWN_COMMAND).message


# ----------------------------------------------------------------------------- hypothesis: every command
scalars = (st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.floats() | st.text(max_size=10)
           | st.binary(max_size=10) | st.sampled_from(["a", "a.b", "a.*", ">", "a b", "", "g", "cluster", "node"]))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(scalars.filter(
    lambda x: x == x), c, max_size=3), max_leaves=12)
option_maps = st.dictionaries(st.sampled_from(["name", "lang", "token", "direct", "peer", "version", "confirm"])
                              | scalars.filter(lambda x: x == x), values, max_size=5)
field = values | option_maps
commands = st.builds(lambda code, rest: [code, *rest],
                     st.sampled_from([HELLO, PUB, SUB, SUBS, UNSUB, PING, PONG, STATUS, BYE, PEER_EVENTS]),
                     st.lists(field, max_size=9))


def check_client_result(cmd):
    code = cmd[0]
    if code == HELLO:
        _, name, lang, token, direct, peer = cmd
        assert type(name) is str and len(name) <= frames.NAME_KEEP and type(lang) is str
        assert token is None or type(token) is str
        assert type(direct) is bool and type(peer) is str and len(peer) <= frames.MAX_PEER_ID
    elif code == SUB:
        _, sid, pattern, group, req, cluster = cmd
        assert type(sid) is int and type(pattern) is str and (group is None or type(group) is str)
        assert type(cluster) is bool and any_error(req) is None
        protocol.ok(req)
    elif code == SUBS:
        _, req, entries, errors = cmd
        assert any_error(req) is None and len(entries) % 3 == 0
        for i in range(0, len(entries), 3):
            assert type(entries[i]) is int and type(entries[i + 1]) is str
            assert entries[i + 2] is None or type(entries[i + 2]) is str
        for code_, message in errors:
            protocol.err(code_, message, req)
        protocol.ok(req)
    elif code == UNSUB:
        assert type(cmd[1]) is int and len(cmd) == 3
        protocol.ok(cmd[2])
    elif code in (PING, STATUS):
        assert len(cmd) == 2 and any_error(cmd[1]) is None
        protocol.pack([PONG, cmd[1]])
    elif code == PUB:
        assert type(cmd) is list and (len(cmd) - 1) % 3 == 0
    elif code == PEER_EVENTS:
        assert type(cmd[1]) is str and (len(cmd) - 2) % 4 == 0
    else:
        assert cmd in ((PONG,), (BYE,))


@settings(max_examples=300, deadline=None)
@given(cmd=commands)
def test_every_command_with_any_field_types(cmd):
    frame = packed(cmd)
    try:
        out = bare_client(frame)
    except ProtocolError as exc:
        assert exc.code in CLIENT_CODES
        protocol.err(exc.code, exc.message, exc.req)
    else:
        check_client_result(out)


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_only_raise_protocol_error(data):
    for decode in (bare_client, bare_node, bare_control):
        try:
            out = decode(data)
        except ProtocolError as exc:
            protocol.err(exc.code, exc.message, exc.req)
        else:
            assert type(out[0]) is int


# ----------------------------------------------------------------------------- node -> client
node_commands = st.builds(lambda code, rest: [code, *rest],
                          st.sampled_from([WELCOME, MSG, OK, ERR, STATUS_REPLY, PING, PONG, 99]),
                          st.lists(field | st.just(1) | st.just(b"payload"), max_size=9))


@settings(max_examples=250, deadline=None)
@given(cmd=node_commands)
def test_every_node_frame_with_any_field_types(cmd):
    frame = packed(cmd)
    try:
        out = bare_node(frame)
    except ProtocolError as exc:
        assert exc.code in (E_MALFORMED, E_UNKNOWN_COMMAND)
        return
    code = out[0]
    if code == MSG:
        _, events, dropped = out
        assert (len(events) - 1) % 4 == 0 and dropped == (len(cmd) - len(events)) // 4
        for sid, name, payload, meta in zip(*[iter(events[1:])] * 4):
            assert type(sid) is int and type(name) is str and type(payload) is bytes
            assert meta is None or meta_error(meta) is None
    elif code == ERR:
        assert type(out[1]) is str and type(out[2]) is str and type(out[4]) is bool
    elif code == STATUS_REPLY:
        assert type(out[2]) is dict
    elif code == WELCOME:
        assert type(out[2]["shard"]["count"]) is int


def test_msg_frames_keep_good_events_and_drop_bad_ones():
    good = [MSG, 1, "a", b"x", None, 2, "b", b"", [{"h": "v"}, "r"]]
    out = decode_node(pack(good))
    assert out == (MSG, good, 0)
    mixed = [MSG, 1, "a", b"1", {"x": 1},       # meta as a map (issue 7: killed the client's I/O thread)
             1, "a", b"2", None,
             "1", "a", b"3", None,              # sid not an int
             1, 5, b"4", None,                  # name not a str
             1, "a", "5", None,                 # payload not bin
             1, "a", b"6", [{"k": 1}, None],    # bad header value
             1, "a", b"7", [None, None]]
    kind, cmd, dropped = decode_node(pack(mixed))
    assert kind == MSG and dropped == 5
    assert cmd == [MSG, 1, "a", b"2", None, 1, "a", b"7", [None, None]]
    refused(pack([MSG, 1, "a", b"x"]), decode=decode_node)


def test_clean_msg_returns_the_same_list_when_all_good():
    cmd = [MSG] + [1, "a", b"x", None] * 100
    out, dropped = clean_msg(cmd)
    assert out is cmd and dropped == 0


@pytest.mark.parametrize("col,bad", [(0, True), (0, 1.0), (0, "1"), (0, [1]), (1, b"a"), (1, 1), (1, None),
                                     (2, "x"), (2, bytearray(b"x")), (2, None), (3, {"x": 1}), (3, [1]),
                                     (3, [None]), (3, 0)])
def test_clean_msg_fast_path_misses_no_wrong_field(col, bad):
    """One wrong field among good no-meta events (the case the all-good fast path takes):
    exactly that event is dropped, wherever it sits."""
    for pos in (0, 57, 99):
        events = [[1, "a", b"x", None] for _ in range(100)]
        events[pos][col] = bad
        cmd = [MSG] + [f for e in events for f in e]
        out, dropped = clean_msg(cmd)
        assert dropped == 1 and len(out) == 1 + 4 * 99
        assert out[1:] == [1, "a", b"x", None] * 99


def test_node_control_frames():
    assert decode_node(pack([OK, 5])) == (OK, 5)
    assert decode_node(pack([OK])) == (OK, None)
    assert decode_node(pack([PONG, [1]])) == (PONG, [1])
    assert decode_node(pack([PING, 0])) == (PING, 0)
    assert decode_node(pack([ERR, "bad_name", "why", 3, True])) == (ERR, "bad_name", "why", 3, True)
    assert decode_node(pack([ERR, "c", "m"])) == (ERR, "c", "m", None, False)
    assert decode_node(pack([ERR, "c", "m", None, 1])) == (ERR, "c", "m", None, False)
    assert decode_node(pack([STATUS_REPLY, 1, {"a": 1}])) == (STATUS_REPLY, 1, {"a": 1})
    for bad in ([ERR], [ERR, 1, "m"], [ERR, "c", ["m"]], [STATUS_REPLY, 1], [STATUS_REPLY, 1, []]):
        refused(pack(bad), decode=decode_node)
    refused(pack([99]), E_UNKNOWN_COMMAND, decode=decode_node)


WELCOME_INFO = {"node_id": "n", "max_payload": 100, "ports": [7000, 7001], "shard": {"hash": "crc32", "count": 2},
                "worker": 1}


def test_welcome_is_checked():
    assert decode_node(pack([WELCOME, 1, WELCOME_INFO])) == (WELCOME, 1, WELCOME_INFO)
    for change in ({"ports": []}, {"ports": [0]}, {"ports": ["7000", 7001]}, {"ports": [1] * 257},
                   {"shard": {"count": 3}}, {"shard": {"count": 2.0}}, {"shard": None}, {"worker": 2},
                   {"worker": -1}, {"worker": "0"}, {"max_payload": 0}, {"max_payload": "1"}):
        refused(pack([WELCOME, 1, dict(WELCOME_INFO, **change)]), decode=decode_node)
    refused(pack([WELCOME, 1]), decode=decode_node)


def test_big_header_counts():
    # a PUB whose header map has MAX_MAP_LEN entries is fine; the decoder allocates nothing per event
    hdrs = {f"k{i}": "v" for i in range(MAX_MAP_LEN)}
    cmd = decode_client(pack([PUB, "a", b"", [hdrs, None]]))
    assert meta_error(cmd[3]) is None


# ----------------------------------------------------------------------------- cluster control port
MEMBER = {"id": "ab" * 8, "name": "n", "cluster": "tscale", "host": "127.0.0.1", "port": 7400, "ctl": 7402,
          "workers": 2, "started": 1.5, "v": 1, "hb": 3, "kids": 0, "stats": {"events_in": 1}, "new": [1]}


def test_control_frames_decode_to_typed_tuples():
    other = dict(MEMBER, id="cd" * 8)
    assert decode_control(pack([PROBE, MEMBER, [MEMBER, other]])) == (PROBE, MEMBER, [MEMBER, other])
    assert decode_control(pack([MEMBERS, MEMBER, []])) == (MEMBERS, MEMBER, [])
    assert decode_control(pack([ATTACH, MEMBER, []])) == (ATTACH, MEMBER, [], False)
    assert decode_control(pack([ATTACH, MEMBER, [], True])) == (ATTACH, MEMBER, [], True)
    assert decode_control(pack([ATTACH, MEMBER, [], 1])) == (ATTACH, MEMBER, [], False)
    assert decode_control(pack([ACCEPT, MEMBER, [other]])) == (ACCEPT, MEMBER, [other])
    assert decode_control(pack([REFUSE, MEMBER, "full", []])) == (REFUSE, MEMBER, "full", [])
    assert decode_control(pack([REFUSE, MEMBER, ["x"], []])) == (REFUSE, MEMBER, "", [])
    assert decode_control(pack([HB, None, 1.5, None])) == (HB, None, 1.5, None)
    assert decode_control(pack([HB, [MEMBER], None, 2])) == (HB, [MEMBER], None, 2)
    entries = [["a.>", None, 2], ["b", "g", -1]]
    assert decode_control(pack([INTEREST, 4, True, entries])) == (INTEREST, 4, True, entries)
    assert decode_control(pack([RESYNC])) == (RESYNC,)
    assert decode_control(pack([SYNC, 9])) == (SYNC, 9)
    assert decode_control(pack([SYNC_ACK, 9])) == (SYNC_ACK, 9)
    assert decode_control(pack([CTL_BYE])) == (CTL_BYE,)
    assert decode_control(pack([CTL_BYE, "moved"])) == (CTL_BYE, "moved")   # only this link ends
    for junk in (["moved!"], [["moved"]], [{"moved": 1}], [None], ["moved", 1, 2]):
        assert decode_control(pack([CTL_BYE, *junk])) == ((CTL_BYE, "moved") if junk[0] == "moved" else (CTL_BYE,))


def test_bad_member_entries_are_dropped_from_gossip():
    bad = [dict(MEMBER, workers=10 ** 9), dict(MEMBER, port=0), dict(MEMBER, id=["x"]), dict(MEMBER, host=5),
           dict(MEMBER, hb="1"), dict(MEMBER, stats={"events_in": "1"}), dict(MEMBER, kids=-1), "entry", None,
           {k: v for k, v in MEMBER.items() if k != "ctl"}, dict(MEMBER, cluster="c" * 200)]
    for b in bad:
        assert member_error(b), b
    assert decode_control(pack([PROBE, MEMBER, bad + [MEMBER]])) == (PROBE, MEMBER, [MEMBER])
    for b in bad:
        refused(pack([PROBE, b, []]), decode=decode_control)


@pytest.mark.parametrize("frame", [
    [PROBE], [PROBE, MEMBER], [PROBE, MEMBER, "members"], [PROBE, MEMBER, [MEMBER] * 4097],
    [HB], [HB, None, "t", None], [HB, None, None, [1]], [HB, "m", None, None],
    [INTEREST, "1", True, []], [INTEREST, 1, True, [["a b", None, 1]]], [INTEREST, 1, True, [["a", 5, 1]]],
    [INTEREST, 1, True, [["a", None, "1"]]], [INTEREST, 1, True, [["a", None]]], [INTEREST, 1, True, {}],
    [SYNC], [SYNC, "t"], [SYNC_ACK, None], [REFUSE, MEMBER, "why"],
])
def test_control_frame_shapes(frame):
    refused(pack(frame), decode=decode_control)


@pytest.mark.parametrize("code", [100, 112, 1, 16, -1])
def test_unknown_control_codes(code):
    refused(pack([code, MEMBER, []]), E_UNKNOWN_COMMAND, decode=decode_control)


@settings(max_examples=250, deadline=None)
@given(code=st.sampled_from([PROBE, MEMBERS, ATTACH, ACCEPT, REFUSE, HB, INTEREST, RESYNC, SYNC, SYNC_ACK, CTL_BYE]),
       rest=st.lists(field | st.just(MEMBER) | st.lists(st.just(MEMBER) | field, max_size=3), max_size=5))
def test_every_control_frame_with_any_field_types(code, rest):
    frame = packed([code, *rest])
    try:
        cmd = bare_control(frame)
    except ProtocolError:
        return
    assert cmd[0] == code
    if code in (PROBE, MEMBERS, ATTACH, ACCEPT, REFUSE):
        assert member_error(cmd[1]) is None and all(_gossip_ok(m) for m in cmd[-2 if code == ATTACH else -1])
    elif code == HB:
        assert cmd[1] is None or all(_gossip_ok(m) for m in cmd[1])


def _gossip_ok(m) -> bool:
    return (refresh_error(m) if type(m) is list else member_error(m)) is None


def test_gossip_refreshes_are_kept_and_checked():
    """Gossip deltas (Overlay.gossip_delta) carry [id, hb, stats|nil] liveness refreshes."""
    good = [["ab" * 8, 12, None], ["cd" * 8, 0, {"events_in": 3}]]
    bad = [["ab" * 8, -1, None], ["", 1, None], ["x" * 500, 1, None], [5, 1, None], ["ab", "1", None],
           ["ab", 1, {"events_in": "3"}], ["ab", 1], ["ab", 1, None, 4]]
    for b in bad:
        assert refresh_error(b), b
    assert decode_control(pack([HB, good + bad + [MEMBER], 1.0, None])) == (HB, good + [MEMBER], 1.0, None)
    hinted = dict(MEMBER, rev=3, to="10.0.0.1", saw="10.0.0.2")
    assert decode_control(pack([PROBE, hinted, []]))[1] == hinted
    for b in (dict(MEMBER, rev=-1), dict(MEMBER, to=5), dict(MEMBER, saw="h" * 300)):
        assert member_error(b), b


def test_beacons():
    good = {"v": 1, "c": "tscale", "id": "ab" * 8, "p": 7400, "k": 7402, "bye": False}
    assert decode_beacon(pack(good)) == ("ab" * 8, "tscale", 7402, False)
    assert decode_beacon(pack(dict(good, bye=True)))[3] is True
    for change in ({"id": ["x"]}, {"id": ""}, {"c": 5}, {"k": "7402"}, {"k": 0}, {"k": 70000}, {"bye": 1}):
        assert decode_beacon(pack(dict(good, **change))) is None, change
    for body in (b"", b"\xc1", pack([1]), pack("x"), nested(1000)):
        assert decode_beacon(body) is None


# ----------------------------------------------------------------------------- relays: PEER_EVENTS bytes
def _events(k: int) -> list:
    return [x for i in range(k) for x in (f"a.{i}", bytes([i % 256]) * i, None if i % 2 else [{"h": "v"}, "r"], None)]


@pytest.mark.parametrize("k", [0, 1, 3, 4, 5000, 20000])          # fixarray, array16 and array32 headers
@pytest.mark.parametrize("src", ["", "n", "x" * 31, "y" * 32, "z" * 64])   # fixstr and str8 ids
def test_peer_body_at_splits_header_and_events(k, src):
    from workers.peers import head
    events = _events(k)
    frame = msgpack.packb([PEER_EVENTS, src, *events])
    assert decode_client(frame)[1] == src
    at = frames.peer_body_at(frame)
    assert frame[at:] == b"".join(msgpack.packb(x) for x in events)
    forwarded = head(2 + len(events), "relay-id") + frame[at:]        # what a relay sends on
    assert msgpack.unpackb(forwarded) == [PEER_EVENTS, "relay-id", *events]
    assert frames.peer_body_at(memoryview(frame)) == at


def test_peer_body_at_refuses_unusual_encodings():
    body = b"".join(msgpack.packb(x) for x in _events(2))
    n = b"\x9a"                                                        # fixarray of 10 items
    for frame in (n + b"\xcc\x09" + b"\xa1s" + body,                 # code as uint8
                  n + b"\x09" + b"\xda\x00\x01s" + body,             # id as str16
                  n + b"\x09" + b"\xc4\x01s" + body,                 # id as bin
                  b"\x80" + body):                                   # not an array
        assert frames.peer_body_at(frame) is None
    assert frames.peer_body_at(n + b"\x09" + b"\xd9\x01s" + body) == 5   # id as str8
