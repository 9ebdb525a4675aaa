"""Sans-I/O: the one HOST:PORT parser and the port plan `tscale up` checks before it starts."""
from __future__ import annotations

import socket

import pytest
from hypothesis import given, strategies as st

from conftest import free_port_block
from tscale.address import split_hostport
from tscale.config import ConfigError, NodeConfig
from tscale.errors import AddressError
from tscale.preflight import check_ports, port_plan


@pytest.mark.parametrize("value,expected", [
    ("h:1", ("h", 1)), ("h", ("h", 7400)), (":5", ("D", 5)), ("[::1]:8", ("::1", 8)), ("::1", ("::1", 7400)),
    ("tcp://a.b:9", ("a.b", 9)), ("10.0.0.1:65535", ("10.0.0.1", 65535)),
])
def test_split_hostport(value, expected):
    assert split_hostport(value, "D") == expected


@pytest.mark.parametrize("value", ["", "h:", "h:x", "h:0", "h:65536", "h: 1", "h:+1", "h:1_0", "host:1:2:x",
                                   "a b:1", "-x:1", "[zz]:1", "a/b:1", "h:-1"])
def test_split_hostport_rejects_without_a_lookup(value):
    with pytest.raises(AddressError):
        split_hostport(value, "D")


@given(st.text(max_size=40))
def test_split_hostport_raises_only_address_error(value):
    try:
        host, port = split_hostport(value, "D")
    except AddressError:
        return
    assert 0 < port < 65536 and host


def test_port_plan_names_every_tcp_port():
    cfg = NodeConfig(listen="127.0.0.1:9000", workers=2, monitor="127.0.0.1:9100", name="n", data_dir="/d").resolved()
    assert port_plan(cfg) == [("127.0.0.1", 9000, "client port of worker 0"), ("127.0.0.1", 9001, "client port of worker 1"),
                              ("127.0.0.1", 9002, "cluster control port"), ("127.0.0.1", 9100, "monitor port")]


def test_monitor_on_a_node_port_is_refused_before_any_bind():
    cfg = NodeConfig(listen="0.0.0.0:9000", workers=2, monitor="127.0.0.1:9002", name="n", data_dir="/d").resolved()
    with pytest.raises(ConfigError, match="both the cluster control port and the monitor port"):
        check_ports(cfg)


def test_check_ports_names_a_taken_port():
    base = free_port_block(2)
    port = base + 1
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    try:
        cfg = NodeConfig(listen=f"127.0.0.1:{base}", workers=1, name="n", data_dir="/d").resolved()
        with pytest.raises(ConfigError, match=f"TCP port {port} on 127.0.0.1 \\(cluster control port\\)"):
            check_ports(cfg)
    finally:
        s.close()


def test_check_reachable_refused_and_listening():
    from tscale.address import check_reachable
    from tscale.errors import ConnectError
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    with pytest.raises(ConnectError, match="refused"):
        check_reachable("127.0.0.1", port)          # bound, not listening: refused
    s.listen()
    try:
        assert check_reachable("127.0.0.1", port) < 1.0
    finally:
        s.close()
