"""Which worker owns an event name.

owner = crc32(UTF-8 bytes of the name) mod worker_count.  CRC-32 (IEEE, as in
zlib, gzip and PNG) is in every language's standard library and is stable
across hosts and versions, so nodes with different worker counts agree on the
rule and any client can compute it.
"""
from __future__ import annotations

from zlib import crc32

HASH_NAME = "crc32"


def shard_of(name: str, count: int) -> int:
    if count == 1:
        return 0
    return crc32(name.encode()) % count
