"""Beacon targets and a node's own address (issue 13, points 2 and 3), sans-I/O."""
from __future__ import annotations

import ipaddress
import socket
from collections import namedtuple
from types import SimpleNamespace

from hypothesis import given, strategies as st

import tscale.cluster as cluster
from tscale.security import Security
from tscale.discovery import LIMITED_BROADCAST, beacon_targets

Addr = namedtuple("Addr", "family address netmask broadcast ptp")


def v4(address, netmask, broadcast=None):
    return Addr(socket.AF_INET, address, netmask, broadcast, None)


def test_directed_broadcast_is_derived_when_none_is_configured():
    # `ip addr add 10.1.2.3/24 dev eth0` (no brd): psutil reports the address itself (or None)
    assert beacon_targets([[v4("10.1.2.3", "255.255.255.0", "10.1.2.3")]]) == [("10.1.2.255", None)]
    assert beacon_targets([[v4("10.1.2.3", "255.255.255.0")]]) == [("10.1.2.255", None)]


def test_configured_broadcast_loopback_ipv6_point_to_point_and_duplicates():
    ifaces = [
        [v4("127.0.0.1", "255.0.0.0")],                                    # lo: skipped
        [v4("192.168.7.9", "255.255.255.0", "192.168.7.255"),
         Addr(socket.AF_INET6, "fe80::1", "ffff:ffff:ffff:ffff::", None, None)],
        [v4("192.168.7.10", "255.255.255.0")],                             # same segment: once
        [v4("100.64.0.7", "255.255.255.255")],                             # /32: limited broadcast,
        [v4("172.16.0.1", None)],                                          # no netmask known: same,
        [v4("10.5.0.9", "255.255.0.0", "10.5.0.0")],                       # old-style brd: both
    ]                                                                      # (from the address itself)
    assert beacon_targets(ifaces) == [("192.168.7.255", None), (LIMITED_BROADCAST, "100.64.0.7"),
                                      (LIMITED_BROADCAST, "172.16.0.1"), ("10.5.255.255", None),
                                      ("10.5.0.0", None)]


@given(st.integers(0, 2 ** 32 - 1), st.integers(0, 30))
def test_derived_target_is_the_segments_broadcast(addr, prefix):
    ip = str(ipaddress.IPv4Address(addr))
    if ip.startswith("127."):
        return
    net = ipaddress.IPv4Network(f"{ip}/{prefix}", strict=False)
    (target,) = beacon_targets([[v4(ip, str(net.netmask), ip)]])
    assert target == (str(net.broadcast_address), None)


def _control(listen_host: str, advertise: str = "") -> cluster.ClusterControl:
    return cluster.ClusterControl(SimpleNamespace(ctx=None), "c", listen_host, 7400, 2, [], False, 7401,
                                  advertise, "a" * 16, "n", Security())


def test_node_on_every_interface_learns_its_address_from_peers(monkeypatch):
    monkeypatch.setattr(cluster, "_local_ipv4", lambda: {"127.0.0.1", "10.9.0.5", "10.9.1.5"})
    c = _control("0.0.0.0")
    assert c.overlay.me["host"] is None
    addr, source = c.own_address()
    assert (addr, source) == ("10.9.0.5:7400", "interfaces")          # a guess, never None
    c._own_host("203.0.113.9")                                         # not ours: a peer cannot choose it
    c._own_host(["10.9.0.5"])                                          # not a string
    assert c.overlay.me["host"] is None
    c._own_host("127.0.0.1")                                           # a local peer reached us
    assert c.own_address() == ("127.0.0.1:7400", "peers")
    c._own_host("10.9.1.5")                                            # then one on the LAN: better
    assert c.own_address() == ("10.9.1.5:7400", "peers") and c.overlay.my_entry()["host"] == "10.9.1.5"
    c._own_host("10.9.0.5")                                            # stable from then on
    assert c.overlay.me["host"] == "10.9.1.5"


def test_listen_or_advertise_address_is_never_replaced(monkeypatch):
    monkeypatch.setattr(cluster, "_local_ipv4", lambda: {"127.0.0.1", "10.9.0.5"})
    c = _control("127.0.0.3")
    c._own_host("10.9.0.5")
    assert c.own_address() == ("127.0.0.3:7400", "listen")
    c = _control("0.0.0.0", advertise="198.51.100.4:9000")
    c._own_host("10.9.0.5")
    assert c.own_address() == ("198.51.100.4:9000", "advertise")
