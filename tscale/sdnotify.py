"""systemd's readiness protocol (sd_notify(3)) without libsystemd: when a service manager started us
with NOTIFY_SOCKET set, send it datagrams such as "READY=1" or "STOPPING=1".  Outside systemd
(no NOTIFY_SOCKET) every call does nothing."""
from __future__ import annotations

import os
import socket


def notify(state: str, environ=os.environ) -> bool:
    """Send `state` ("READY=1\\nSTATUS=...") to $NOTIFY_SOCKET; True if sent.  Raises OSError if the
    socket is set but cannot be written (the caller logs it: readiness is not worth a crash)."""
    addr = environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":                 # abstract namespace
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(addr)
        s.sendall(state.encode())
    return True
