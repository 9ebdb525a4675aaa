"""Checks `tscale up` makes before it starts anything: is every TCP port the node will bind free,
and is the listen host an address of this machine?  The first failure is a ConfigError that names
the port and what it is for, so the user reads one `tscale:` line instead of a worker's log.

`port_plan` is pure; `check_ports` binds (and closes) one probe socket per port.  Another process
may still take a port between the check and the node's own bind: the supervisor then stops with
exit code 2 and a log line naming the port.  UDP discovery is not checked: nodes on one host share
that port on purpose (SO_REUSEPORT).
"""
from __future__ import annotations

import errno
import socket

from .address import resolve
from .config import ConfigError, NodeConfig, parse_hostport
from .errors import ConnectError


def port_plan(cfg: NodeConfig) -> list[tuple[str, int, str]]:
    """Every TCP (host, port, role) a node with this (resolved) configuration binds."""
    host, base = parse_hostport(cfg.listen)
    plan = [(host, base + i, f"client port of worker {i}") for i in range(cfg.workers)]
    plan.append((host, base + cfg.workers, "cluster control port"))
    if cfg.monitor:
        mhost, mport = cfg.monitor_address()
        plan.append((mhost, mport, "monitor port"))
    return plan


def check_ports(cfg: NodeConfig) -> None:
    """ConfigError for the first port of the plan that cannot be bound."""
    plan = port_plan(cfg)
    for i, (host, port, role) in enumerate(plan):
        for host2, port2, role2 in plan[:i]:
            if port == port2 and (host == host2 or "0.0.0.0" in (host, host2)):
                raise ConfigError(f"TCP port {port} would be both the {role2} and the {role}")
    for host, port, role in plan:
        _try_bind(host, port, role)


def _try_bind(host: str, port: int, role: str) -> None:
    try:
        family, sockaddr = resolve(host, port, passive=True)
    except ConnectError as exc:
        raise ConfigError(f"cannot listen on {host}: {exc}") from None
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)    # as libzmq does: TIME_WAIT is no conflict
    try:
        s.bind(sockaddr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"TCP port {port} on {host} ({role}) is already in use") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"cannot listen on {host}: not an address of this host") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"TCP port {port} on {host} ({role}): permission denied "
                              f"(ports below 1024 need privileges)") from None
        raise ConfigError(f"TCP port {port} on {host} ({role}): {exc.strerror}") from None
    finally:
        s.close()
