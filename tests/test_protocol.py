"""Sans-I/O: protocol v1 error frames; sharding; the client core (decoding: tests/test_frames.py)."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tscale import protocol
from tscale.client_core import ClientCore, parse_address
from tscale.errors import TscaleError
from tscale.frames import unpack_array
from tscale.protocol import err, ok
from tscale.sharding import HASH_NAME, shard_of


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
        cmd = unpack_array(frame)
        assert cmd[0] == protocol.PUB
        assert cmd[1::3] == mine
        assert core.take_batch(k) is None


@pytest.mark.parametrize("addr,expected", [("127.0.0.1:7401", ("127.0.0.1", 7401)), ("tcp://h:1", ("h", 1)),
                                           ("host", ("host", 7400)), ("[::1]:9", ("::1", 9))])
def test_parse_address(addr, expected):
    assert parse_address(addr) == expected
