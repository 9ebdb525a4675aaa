"""The supervisor's run directory: a private temporary directory (`tscale-*` in the temp dir) that
holds the in-host bus sockets.  The supervisor removes it when it stops; one that was SIGKILLed
cannot, so every supervisor removes, at start, the run directories of supervisors that are gone.

A run directory is recognised by its marker file, which holds the pid and start time of the
supervisor that made it; a directory is stale when no process with that pid and start time exists.
Directories without a marker (another program's, or made by an older tscale) are never touched,
nor are directories of other users.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import psutil

PREFIX = "tscale-"
MARKER = "supervisor.pid"


def _identity(pid: int) -> str:
    return f"{pid} {psutil.Process(pid).create_time():.2f}"


def create(parent: str | None = None) -> str:
    """A new run directory owned by this process."""
    path = tempfile.mkdtemp(prefix=PREFIX, dir=parent)
    with open(os.path.join(path, MARKER), "w") as f:
        f.write(_identity(os.getpid()))
    return path


def owner_alive(marker_text: str) -> bool:
    """Is the supervisor named by a marker file's text still running?  Unreadable text counts as alive."""
    try:
        pid_s, started = marker_text.split()
        pid = int(pid_s)
        float(started)
    except ValueError:
        return True
    try:
        return _identity(pid) == f"{pid} {float(started):.2f}"
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True          # exists but cannot be inspected: leave it


def clean_stale(parent: str | None = None) -> list[str]:
    """Remove this user's run directories whose supervisor is gone; returns the paths removed."""
    parent = parent or tempfile.gettempdir()
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    uid = os.getuid()
    for e in entries:
        if not e.name.startswith(PREFIX):
            continue
        try:
            if not e.is_dir(follow_symlinks=False) or e.stat(follow_symlinks=False).st_uid != uid:
                continue
            with open(os.path.join(e.path, MARKER)) as f:
                text = f.read(100)
        except OSError:
            continue
        if not owner_alive(text):
            shutil.rmtree(e.path, ignore_errors=True)
            removed.append(e.path)
    return removed
