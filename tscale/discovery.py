"""Where UDP beacons go (sans-I/O).

A beacon must reach every IPv4 segment this host is on, whether or not the
interface has a broadcast address configured.  Container runtimes and network
namespaces often add addresses without one (`ip addr add 10.1.2.3/24 dev eth0`);
psutil then reports the interface's own address as its "broadcast" (seen on
Linux), and beacons sent there never left the host.  So the directed broadcast
of each interface is derived from its address and netmask (10.1.2.255 above);
Linux delivers it on the segment and accepts it there with or without `brd`.
A configured broadcast address that differs (an old-style `brd x.x.x.0`) gets
beacons too.  An address with no room for a directed broadcast (a /31 or /32,
point-to-point) gets the limited broadcast 255.255.255.255, sent from a socket
bound to that address: Linux then sends it out of that address's interface
(unbound, it goes only where the default route points, or nowhere).  No router
forwards either kind.  Loopback is skipped: a node listening there has
discovery off.
"""
from __future__ import annotations

import ipaddress
import socket

LIMITED_BROADCAST = "255.255.255.255"


def beacon_targets(interfaces) -> list[tuple[str, str | None]]:
    """(destination, source address to bind or None) pairs, one per segment, in a stable order.

    `interfaces` is psutil.net_if_addrs().values(): per interface, records with
    `family`, `address`, `netmask` and `broadcast`."""
    out: list[tuple[str, str | None]] = []
    for addrs in interfaces:
        for a in addrs:
            if a.family != socket.AF_INET or a.address.startswith("127."):
                continue
            derived = _directed(a.address, a.netmask)
            targets = [(derived, None) if derived else (LIMITED_BROADCAST, a.address)]
            if a.broadcast and a.broadcast not in (a.address, derived, LIMITED_BROADCAST):
                targets.append((a.broadcast, None))
            out += [t for t in targets if t not in out]
    return out


def _directed(address: str, netmask: str | None) -> str | None:
    try:
        net = ipaddress.IPv4Network(f"{address}/{netmask or '32'}", strict=False)
    except ValueError:
        return None
    return str(net.broadcast_address) if net.prefixlen < 31 else None
