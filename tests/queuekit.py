"""Helpers shared by the durable-queue tests."""
from __future__ import annotations

import time

from conftest import uniq


def qname(prefix: str = "q") -> str:
    """A fresh queue name (queue names allow no dots)."""
    return uniq(prefix).replace(".", "_")


def drain(cons, expect: int, timeout: float = 20.0, batch: int = 1000) -> list:
    """Fetch and ack with consumer `cons` until `expect` deliveries came or the deadline passed."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        for m in cons.fetch(batch, timeout=1.0):
            out.append(m)
            m.ack()
    return out
