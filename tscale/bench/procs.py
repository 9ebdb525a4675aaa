"""Process plumbing for the harness.

Every process the harness starts runs in its own session (so its process group id
is its pid) and is registered here; it is stopped by that group id, never by name,
and ``stop_all`` (run at exit and on SIGINT/SIGTERM) stops whatever is left.  Driver
processes talk to the harness over a tiny line protocol with deadlines:
child -> harness ``READY`` / ``RESULT <json>`` / ``ERROR <text>`` on stdout,
harness -> child ``GO`` / ``STOP`` on stdin (EOF counts as STOP).
"""
from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil

_started: dict[int, "subprocess.Popen"] = {}
_lock = threading.Lock()


class ChildError(RuntimeError):
    """A child process failed, died or missed a deadline."""


# ---------------------------------------------------------------- ports and waiting

def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(span: int = 1) -> int:
    """A port P on 127.0.0.1 such that P .. P+span-1 are all free right now."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + span <= 65535 and all(_bindable(base + i) for i in range(span)):
            return base
    raise RuntimeError(f"no {span} consecutive free ports found")


def wait_for(condition, deadline_s: float, what: str, interval: float = 0.02):
    """Poll ``condition()`` until it returns a truthy value or the deadline passes."""
    end = time.monotonic() + deadline_s
    last_exc = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last_exc = exc
        if time.monotonic() >= end:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise ChildError(f"timed out after {deadline_s:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def tcp_accepts(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


# ---------------------------------------------------------------- starting / stopping

def spawn(argv: list[str], *, log_path: Path, pipes: bool = False, env: dict | None = None,
          cwd: str | None = None) -> subprocess.Popen:
    """Start ``argv`` in a new session; stderr (and stdout unless ``pipes``) go to log_path."""
    log = open(log_path, "ab")
    kwargs = dict(stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    if pipes:
        kwargs.update(stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        proc = subprocess.Popen(argv, start_new_session=True, env=env, cwd=cwd, **kwargs)
    finally:
        log.close()
    with _lock:
        _started[proc.pid] = proc
    return proc


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a process we started, and everything in its process group, by id."""
    pid = proc.pid
    try:
        descendants = psutil.Process(pid).children(recursive=True) if proc.poll() is None else []
    except psutil.Error:
        descendants = []
    if proc.poll() is None:  # leader not reaped: the group id is certainly ours
        _signal_group(pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(pid, signal.SIGKILL)
            proc.wait(grace)
    # Anything that left the group (or outlived the leader): by pid, identity-checked by psutil.
    for child in descendants:
        try:
            if child.is_running():
                child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(descendants, timeout=grace)
    for stream in (proc.stdin, proc.stdout):
        try:
            if stream:
                stream.close()
        except OSError:
            pass
    with _lock:
        _started.pop(pid, None)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all() -> None:
    with _lock:
        procs = list(_started.values())
    for proc in procs:
        stop(proc, grace=2.0)


# ---------------------------------------------------------------- driver children

class Child:
    """A driver process speaking the READY/GO/STOP/RESULT line protocol."""

    def __init__(self, argv: list[str], label: str, log_path: Path, env: dict | None = None,
                 cwd: str | None = None):
        self.label = label
        self.log_path = log_path
        self.proc = spawn(argv, log_path=log_path, pipes=True, env=env, cwd=cwd)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self._lines.put(raw.decode(errors="replace").rstrip("\n"))
        self._lines.put(None)  # EOF

    def send(self, word: str) -> None:
        try:
            self.proc.stdin.write(word.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def expect(self, tag: str, deadline: float) -> str:
        """Wait (until monotonic ``deadline``) for a line starting with ``tag``; return the rest."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(f"{self.label}: no {tag} in time{self._tail()}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(5)
                raise ChildError(f"{self.label}: exited ({self.proc.returncode}) before {tag}{self._tail()}")
            if line.startswith("ERROR "):
                raise ChildError(f"{self.label}: {json.loads(line[6:])}")
            if line == tag or line.startswith(tag + " "):
                return line[len(tag) + 1:]

    def result(self, deadline: float) -> dict:
        return json.loads(self.expect("RESULT", deadline))

    def _tail(self, n: int = 1500) -> str:
        try:
            text = self.log_path.read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""
        return f"; log tail: {text}" if text else ""

    def stop(self) -> None:
        """STOP first (lets the driver close its clients), then the process group."""
        self.send("STOP")
        try:
            self.proc.wait(3.0)
        except subprocess.TimeoutExpired:
            pass
        stop(self.proc, grace=3.0)


# ---------------------------------------------------------------- process tree cost

class Tree:
    """CPU seconds (user+sys) and RSS of a process and all its descendants."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self._cpu_seen: dict[int, float] = {}

    def processes(self) -> list[psutil.Process]:
        procs = [self.root]
        try:
            procs += self.root.children(recursive=True)
        except psutil.Error:
            pass
        return procs

    def cpu_seconds(self) -> float:
        """Cumulative CPU of every process ever seen in the tree (dead ones keep their last value)."""
        for p in self.processes():
            try:
                t = p.cpu_times()
                self._cpu_seen[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return sum(self._cpu_seen.values())

    def rss(self) -> int:
        total = 0
        for p in self.processes():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total
