"""Sans-I/O: protocol v1 codec, error frames, meta validation; sharding; the client core."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tscale import protocol
from tscale.client_core import ClientCore, parse_address
from tscale.errors import TscaleError
from tscale.protocol import ProtocolError, check_meta, err, ok, pack, unpack
from tscale.sharding import HASH_NAME, shard_of


# ----------------------------------------------------------------------------- unpack
@pytest.mark.parametrize("frame", [
    b"",                                  # empty frame
    b"\xc1",                              # reserved msgpack byte
    b"\x92\x02",                          # truncated array
    pack([2, "a", b"x", None]) + b"\x00",  # trailing bytes
    b"\x91\xa2\xff\xfe",                  # invalid UTF-8 string
    b"\x81\x01\x02",                      # map with an int key (not allowed as a map key by the codec)
])
def test_unpack_rejects_non_msgpack(frame):
    with pytest.raises(ProtocolError) as ei:
        unpack(frame)
    assert ei.value.code == protocol.E_MALFORMED
    assert ei.value.message


@pytest.mark.parametrize("obj", [1, "PUB", None, {"a": 1}, [], ["2"], [True], [1.0], [None, 1], [[2]]])
def test_unpack_rejects_non_command_arrays(obj):
    with pytest.raises(ProtocolError) as ei:
        unpack(pack(obj))
    assert ei.value.code == protocol.E_MALFORMED


def test_unpack_round_trip():
    cmd = [protocol.PUB, "a.b", b"\x00\xff", [{"k": "v"}, "r.x"], "c", b"", None]
    assert unpack(pack(cmd)) == cmd


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_unpack_raises_only_protocol_error(data):
    try:
        cmd = unpack(data)
    except ProtocolError as exc:
        assert exc.code == protocol.E_MALFORMED
    else:
        assert type(cmd) is list and cmd and type(cmd[0]) is int


# ----------------------------------------------------------------------------- error / ok frames
@pytest.mark.parametrize("code,fatal", [
    (protocol.E_MALFORMED, False), (protocol.E_UNKNOWN_COMMAND, False), (protocol.E_BAD_NAME, False),
    (protocol.E_BAD_PATTERN, False), (protocol.E_PAYLOAD_TOO_LARGE, False), (protocol.E_BAD_SID, False),
    (protocol.E_TOO_MANY_SUBS, False), (protocol.E_BAD_VERSION, True), (protocol.E_NOT_AUTHORIZED, True),
])
def test_err_frame_layout_and_fatal_flag(code, fatal):
    assert msgpack.unpackb(err(code, "why", 42), raw=False) == [protocol.ERR, code, "why", 42, fatal]
    assert msgpack.unpackb(err(code, "why"), raw=False)[3] is None


def test_ok_frame():
    assert msgpack.unpackb(ok(9), raw=False) == [protocol.OK, 9]


def test_command_codes_are_distinct():
    codes = [protocol.HELLO, protocol.PUB, protocol.SUB, protocol.UNSUB, protocol.PING, protocol.PONG,
             protocol.STATUS, protocol.BYE, protocol.WELCOME, protocol.MSG, protocol.OK, protocol.ERR,
             protocol.STATUS_REPLY]
    assert len(set(codes)) == len(codes)
    assert set(codes) <= set(protocol.COMMAND_NAMES)
    assert len(set(protocol.COMMAND_NAMES.values())) == len(protocol.COMMAND_NAMES)


# ----------------------------------------------------------------------------- meta
@pytest.mark.parametrize("meta", [None, [None, None], [{}, None], [{"a": "b", "ü": "ß"}, None], [None, "r.x"],
                                  [{"k": ""}, "inbox.1"]])
def test_check_meta_accepts(meta):
    assert check_meta(meta) is None


@pytest.mark.parametrize("meta", [[], [None], [None, None, None], {"h": "x"}, "meta", 5, (None, None),
                                  [["k", "v"], None], [{"k": 1}, None], [{"k": b"v"}, None], [{1: "v"}, None],
                                  [None, 5], [None, b"r"], [None, ["r"]]])
def test_check_meta_rejects(meta):
    assert isinstance(check_meta(meta), str)


# ----------------------------------------------------------------------------- sharding
def crc32_reference(data: bytes) -> int:
    """Bitwise CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), independent of zlib."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32_reference_check_value():
    assert crc32_reference(b"123456789") == 0xCBF43926   # the standard CRC-32 check value


@pytest.mark.parametrize("name,crc", [("123456789", 0xCBF43926), ("hello", 0x3610A686),
                                      ("orders.eu.created", None), ("ünïcödé.événement", None)])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16, 256])
def test_shard_of_known_values(name, crc, count):
    expected_crc = crc if crc is not None else crc32_reference(name.encode("utf-8"))
    assert shard_of(name, count) == expected_crc % count


@settings(max_examples=300, deadline=None)
@given(name=st.text(min_size=1, max_size=40), count=st.integers(1, 64))
def test_shard_of_is_crc32_of_utf8(name, count):
    s = shard_of(name, count)
    assert 0 <= s < count
    assert s == crc32_reference(name.encode("utf-8")) % count


def test_hash_name_is_announced_as_crc32():
    assert HASH_NAME == "crc32"


def test_client_core_owner_matches_shard_of():
    core = ClientCore()
    core.welcome([protocol.WELCOME, 1, {"max_payload": 100, "ports": [1, 2, 3], "shard": {"hash": "crc32", "count": 3},
                                        "worker": 0}])
    for i in range(200):
        name = f"n.{i}"
        assert core.owner(name) == shard_of(name, 3)
    with pytest.raises(TscaleError):
        core.owner("bad name")
    with pytest.raises(TscaleError):
        core.add_event("n.1", b"x" * 101, None, None)
    assert core.add_event("n.1", b"x" * 100, None, None) == shard_of("n.1", 3)


def test_client_core_batches_per_owner_in_order():
    core = ClientCore()
    core.welcome([protocol.WELCOME, 1, {"max_payload": 1000, "ports": [1, 2], "shard": {"hash": "crc32", "count": 2},
                                        "worker": 0}])
    names = [f"b.{i}" for i in range(20)]
    for i, n in enumerate(names):
        core.add_event(n, str(i).encode(), {"h": "v"} if i % 2 else None, None)
    for k in range(2):
        frame = core.take_batch(k)
        mine = [n for n in names if shard_of(n, 2) == k]
        if not mine:
            assert frame is None
            continue
        cmd = unpack(frame)
        assert cmd[0] == protocol.PUB
        assert cmd[1::3] == mine
        assert core.take_batch(k) is None


@pytest.mark.parametrize("addr,expected", [("127.0.0.1:7401", ("127.0.0.1", 7401)), ("tcp://h:1", ("h", 1)),
                                           ("host", ("host", 7400)), ("[::1]:9", ("::1", 9))])
def test_parse_address(addr, expected):
    assert parse_address(addr) == expected
