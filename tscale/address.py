"""HOST:PORT addresses: one parser for node and client addresses (sans-I/O), and the quick
reachability check the CLI makes before it waits for a node's handshake.

`split_hostport` is pure.  `check_reachable` resolves the host and opens (and at once closes) one
TCP connection, so a refused connection or an unknown host name is reported in milliseconds
instead of after the handshake timeout.
"""
from __future__ import annotations

import errno
import ipaddress
import re
import socket
import time

from .errors import AddressError, ConnectError

DEFAULT_PORT = 7400


def split_hostport(value: str, default_host: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """'host:port', 'host', ':port', '[v6]:port' or 'tcp://host:port' -> (host, port); AddressError if unusable."""
    if not isinstance(value, str) or not value.strip():
        raise AddressError(f"address {value!r}: expected HOST:PORT")
    a = value.strip().removeprefix("tcp://")
    if a.count(":") > 1 and not a.startswith("["):
        if not _is_ipv6(a):
            raise AddressError(f"address {value!r}: expected HOST:PORT ([ADDRESS]:PORT for IPv6)")
        return a, default_port          # a bare IPv6 address
    host, sep, port = a.rpartition(":")
    if not sep:
        host, port = a, str(default_port)
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if bracketed and not _is_ipv6(host):
        raise AddressError(f"address {value!r}: {host!r} in brackets is not an IPv6 address")
    host = host or default_host
    if not port.isdigit():      # int() would also take ' 1', '+1', '1_0'
        raise AddressError(f"address {value!r}: port must be a number")
    p = int(port)
    if not 0 < p < 65536:
        raise AddressError(f"address {value!r}: port must be 1..65535")
    if not bracketed and not _HOSTNAME.fullmatch(host):
        raise AddressError(f"address {value!r}: {host!r} is not a host name or IP address")
    return host, p


_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
        return True
    except ValueError:
        return False


def _addrinfo(host: str, port: int, kind: int, passive: bool = False) -> list:
    try:
        return socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE if passive else 0)
    except socket.gaierror as exc:
        raise ConnectError(f"cannot resolve host {host!r}: {exc.strerror}") from None


def resolve(host: str, port: int, kind: int = socket.SOCK_STREAM, passive: bool = False) -> tuple:
    """The first (family, sockaddr) getaddrinfo gives; ConnectError saying the name cannot be resolved."""
    family, _, _, _, sockaddr = _addrinfo(host, port, kind, passive)[0]
    return family, sockaddr


def check_reachable(host: str, port: int, timeout: float = 1.0) -> float:
    """Fail fast if nothing can answer at host:port: ConnectError for an unknown host name, or when
    every address of the name refuses the connection (`localhost` may be ::1 and 127.0.0.1).  A
    connection that neither succeeds nor is refused within `timeout` is left to the caller's
    handshake timeout.  Returns the seconds spent."""
    t0 = time.monotonic()
    last = None
    for family, _, _, _, sockaddr in _addrinfo(host, port, socket.SOCK_STREAM):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(max(0.05, timeout - (time.monotonic() - t0)))
        try:
            s.connect(sockaddr)
            return time.monotonic() - t0
        except ConnectionRefusedError:
            last = f"connection refused by {host}:{port}: no tscale node is listening there"
        except socket.timeout:
            return time.monotonic() - t0
        except OSError as exc:
            if exc.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                return time.monotonic() - t0
            last = f"cannot reach {host}:{port}: {exc.strerror}"
        finally:
            s.close()
    raise ConnectError(last or f"cannot reach {host}:{port}")
