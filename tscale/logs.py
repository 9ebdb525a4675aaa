"""Logging set-up shared by the supervisor and workers: one line per meaningful event."""
from __future__ import annotations

import json
import logging
import sys
import time


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "proc": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup(proc: str, level: str = "info", fmt: str = "text") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return logging.getLogger(proc)


class RateLimited:
    """Logs at most one line per `interval` seconds per key; counts what it suppressed."""

    def __init__(self, log: logging.Logger, interval: float = 5.0):
        self._log = log
        self._interval = interval
        self._last: dict = {}
        self._suppressed: dict = {}

    def warning(self, key, msg: str, *args) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        n = self._suppressed.pop(key, 0)
        self._last[key] = now
        if len(self._last) > 10_000:
            self._last.clear()
        self._log.warning(msg + (f" (+{n} similar suppressed)" if n else ""), *args)


def always(log: logging.Logger, msg: str, *args) -> None:
    """Log an INFO line whatever the configured level: the lines scripts and service managers wait
    for (a node is ready, a node stopped)."""
    log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, msg, args, None))
