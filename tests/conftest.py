"""Shared helpers for the tscale test suite.

Everything here talks to real processes over real sockets:

* `Node` starts `python -m tscale.cli up` in its own process group and stops it
  by pid (SIGTERM, wait, then SIGKILL of the group) in fixture teardown.
* `RawClient` is the "simple client": one zmq DEALER connected to one port of
  a node, speaking protocol v1 by hand (msgpack frames, see tscale/protocol.py).
  It never shards, so everything it does on names owned by other workers goes
  through the in-host proxying between workers.
* `wait_until(predicate, timeout)` replaces every sleep: it polls a condition
  until a generous deadline and fails with a readable message.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq

import tscale
from tscale import protocol
from tscale.client_core import Credentials
from tscale.sharding import shard_of

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 20.0            # generous default for every wait on a condition
START_DEADLINE = 45.0      # a node on a loaded 2-core machine may take a while

_SYSRAND = random.SystemRandom()


# ----------------------------------------------------------------------------- waiting
def wait_until(predicate, timeout: float = DEADLINE, interval: float = 0.02, what: str = "condition",
               ignore: tuple = ()):
    """Poll `predicate` until it returns something truthy (returned) or the deadline passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
        except ignore as exc:   # transient errors the caller chose to tolerate
            value, last_exc = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


# ----------------------------------------------------------------------------- names
def uniq(prefix: str = "t") -> str:
    """A fresh first token, so tests sharing a node never see each other's events."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def name_for(owner: int, count: int, prefix: str, start: int = 0) -> str:
    """The first name `prefix.N` (N >= start) owned by worker `owner` of `count`."""
    for i in itertools.count(start):
        name = f"{prefix}.{i}"
        if shard_of(name, count) == owner:
            return name
    raise AssertionError("unreachable")


def names_for(owner: int, count: int, prefix: str, k: int) -> list[str]:
    out, i = [], 0
    while len(out) < k:
        name = f"{prefix}.{i}"
        if shard_of(name, count) == owner:
            out.append(name)
        i += 1
    return out


# ----------------------------------------------------------------------------- ports
_reserved: set[int] = set()


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port_block(n: int) -> int:
    """A base port with base..base+n-1 all free (and not handed out before in this session)."""
    for _ in range(2000):
        base = _SYSRAND.randrange(20000, 60000 - n)
        block = range(base, base + n)
        if any(p in _reserved for p in block):
            continue
        if all(port_free(p) for p in block):
            _reserved.update(block)
            return base
    raise RuntimeError(f"no block of {n} free ports found")


# ----------------------------------------------------------------------------- environment
def clean_env(extra: dict | None = None) -> dict:
    """The test process's environment without any TSCALE_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSCALE_")}
    env["PYTHONUNBUFFERED"] = "1"
    # Test nodes never send UDP beacons: broadcasts would leave 127.0.0.0/8.  Only the
    # network-namespace tests turn discovery on, inside namespaces they create.
    env["TSCALE_NO_DISCOVERY"] = "1"
    if extra:
        env.update(extra)
    return env


def cli(args: list[str], env: dict | None = None, input: bytes | None = None, timeout: float = 60.0):
    """Run `python -m tscale.cli ARGS` to completion; returns CompletedProcess (bytes)."""
    return subprocess.run([sys.executable, "-m", "tscale.cli", *args], env=clean_env(env), input=input,
                          capture_output=True, timeout=timeout, cwd=str(ROOT))


class LineReader:
    """Reads a pipe in a thread so a test can wait for a line with a deadline."""

    def __init__(self, stream):
        self.lines: "queue.Queue[bytes | None]" = queue.Queue()
        self.seen: list[bytes] = []
        self._t = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._t.start()

    def _run(self, stream):
        for line in iter(stream.readline, b""):
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, needle: bytes, timeout: float = DEADLINE) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line containing {needle!r} within {timeout:g}s; saw {self.seen!r}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"stream ended before a line containing {needle!r}; saw {self.seen!r}")
            self.seen.append(line)
            if needle in line:
                return line


# ----------------------------------------------------------------------------- raw protocol client
_CTX = None


def zctx() -> zmq.Context:
    global _CTX
    if _CTX is None:
        _CTX = zmq.Context()
    return _CTX


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


class RawError(Exception):
    def __init__(self, frame):
        super().__init__(f"{frame[1]}: {frame[2]}")
        self.frame = frame
        self.code = frame[1]


class RawClient:
    """A hand-written protocol v1 client on one DEALER socket connected to one worker port."""

    def __init__(self, port: int, *, hello: bool = True, name: str = "raw", token: str | None = None,
                 rcvhwm: int | None = None, rcvbuf: int | None = None, host: str = "127.0.0.1",
                 server_key: str | None = None, client_key: str | None = None, user: str | None = None,
                 password: str | None = None, identity: bytes | None = None):
        self.port = port
        s = self.sock = zctx().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            s.setsockopt(zmq.IDENTITY, identity)
        # Credentials go on the socket (ZeroMQ PLAIN or CURVE), as any binding does it (PROTOCOL.md).
        Credentials(token, server_key, client_key, user, password).apply(s)
        if rcvhwm is not None:
            s.setsockopt(zmq.RCVHWM, rcvhwm)
        if rcvbuf is not None:
            s.setsockopt(zmq.RCVBUF, rcvbuf)
        s.connect(f"tcp://{host}:{port}")
        self.events: list[tuple] = []       # (sid, name, payload, meta) in arrival order
        self.errors: list[list] = []        # every ERR frame received
        self.frames: list[list] = []        # every decoded frame, in order
        self._ids = itertools.count(1)
        self.welcome = None
        self.closed = False
        if hello:
            w = self.hello(name=name)
            if w[0] != protocol.WELCOME:
                self.close()
                raise RawError(w)
            self.welcome = w

    # -- sending
    def send(self, obj) -> None:
        self.sock.send(pack(obj))

    def send_bytes(self, data: bytes) -> None:
        self.sock.send(data)

    def send_nowait(self, obj) -> bool:
        """Send without blocking; False if ZeroMQ would not take it now.  A DEALER whose
        handshake is refused (wrong or missing credentials) may have no pipe to queue into,
        and a plain send would then block the test forever."""
        try:
            self.sock.send(pack(obj), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def next_id(self) -> int:
        return next(self._ids)

    # -- receiving
    def recv(self, timeout: float):
        """One decoded frame (recorded), or None if nothing arrived within `timeout`."""
        if not self.sock.poll(max(0, int(timeout * 1000))):
            return None
        frame = self.sock.recv()
        cmd = msgpack.unpackb(frame, raw=False, strict_map_key=False)   # a req may be {1: 2}
        self.frames.append(cmd)
        code = cmd[0]
        if code == protocol.MSG:
            for i in range(1, len(cmd), 4):
                self.events.append((cmd[i], cmd[i + 1], cmd[i + 2], cmd[i + 3]))
        elif code == protocol.ERR:
            self.errors.append(cmd)
        elif code == protocol.PING:
            self.send([protocol.PONG, cmd[1]])
        return cmd

    def wait_for(self, pred, timeout: float = DEADLINE, what: str = "frame"):
        """Receive until a frame satisfies `pred` and return it; everything else is recorded."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"raw client on port {self.port}: no {what} within {timeout:g}s; "
                                     f"last frames {self.frames[-5:]!r}")
            cmd = self.recv(min(left, 0.5))
            if cmd is not None and pred(cmd):
                return cmd

    def pump(self, timeout: float = 0.0) -> None:
        """Read whatever is ready now (records events and errors)."""
        while self.recv(timeout) is not None:
            timeout = 0.0

    def wait_events(self, pred, timeout: float = DEADLINE, what: str = "events"):
        deadline = time.monotonic() + timeout
        while not pred(self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"raw client on port {self.port}: timed out waiting for {what}; "
                                     f"have {len(self.events)} events")
            self.recv(min(left, 0.2))
        return self.events

    def wait_error(self, code: str | None = None, timeout: float = DEADLINE):
        for e in self.errors:
            if code is None or e[1] == code:
                return e
        return self.wait_for(lambda c: c[0] == protocol.ERR and (code is None or c[1] == code), timeout,
                             f"ERR {code}")

    # -- commands
    def hello(self, name: str = "raw", version: int = protocol.VERSION, timeout: float = DEADLINE,
              **extra) -> list:
        opts = {"name": name, "lang": "test-raw", **extra}
        self.send([protocol.HELLO, version, opts])
        return self.wait_for(lambda c: c[0] in (protocol.WELCOME, protocol.ERR), timeout, "WELCOME or ERR")

    def sub(self, pattern: str, group: str | None = None, sid: int | None = None,
            timeout: float = DEADLINE) -> int:
        sid = self.next_id() if sid is None else sid
        req = self.next_id()
        self.send([protocol.SUB, sid, pattern, group, req])
        r = self.wait_for(lambda c: (c[0] == protocol.OK and c[1] == req)
                          or (c[0] == protocol.ERR and len(c) > 3 and c[3] == req), timeout, f"OK for SUB {pattern}")
        if r[0] == protocol.ERR:
            raise RawError(r)
        return sid

    def unsub(self, sid: int, timeout: float = DEADLINE) -> None:
        req = self.next_id()
        self.send([protocol.UNSUB, sid, req])
        self.wait_for(lambda c: c[0] == protocol.OK and c[1] == req, timeout, "OK for UNSUB")

    def pub(self, name: str, payload: bytes, headers: dict | None = None, reply: str | None = None) -> None:
        meta = None if headers is None and reply is None else [headers, reply]
        self.send([protocol.PUB, name, payload, meta])

    def pub_many(self, events) -> None:
        """One PUB frame carrying many (name, payload[, meta]) events."""
        frame = [protocol.PUB]
        for ev in events:
            frame += (ev[0], ev[1], ev[2] if len(ev) > 2 else None)
        self.send(frame)

    def ping(self, timeout: float = DEADLINE) -> None:
        """Round trip: returns once the worker processed everything sent before."""
        token = self.next_id() + 1_000_000
        self.send([protocol.PING, token])
        self.wait_for(lambda c: c[0] == protocol.PONG and c[1] == token, timeout, "PONG")

    def status(self, timeout: float = DEADLINE) -> dict:
        req = self.next_id()
        self.send([protocol.STATUS, req])
        return self.wait_for(lambda c: c[0] == protocol.STATUS_REPLY and c[1] == req, timeout, "STATUS_REPLY")[2]

    def names(self, sid: int | None = None) -> list[str]:
        return [e[1] for e in self.events if sid is None or e[0] == sid]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.send(pack([protocol.BYE]), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self.sock.close(0)


# ----------------------------------------------------------------------------- node
try:
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl     # looked up before any fork
except OSError:
    _prctl = None


def _term_with_parent():
    """Runs in the child before exec: SIGTERM the node if the test process dies without its
    fixture teardown (killed by a timeout, say), so no node outlives the run."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


class NodeStartError(Exception):
    def __init__(self, message: str, port_taken: bool = False):
        super().__init__(message)
        self.port_taken = port_taken


class Node:
    """One `tscale up` process tree; worker i listens on port + i."""

    def __init__(self, tmp_dir: Path, workers: int = 2, extra: list[str] | None = None, env: dict | None = None,
                 token: str | None = None, use_flags: bool = True, port: int | None = None,
                 creds: dict | None = None):
        self.tmp_dir = Path(tmp_dir)
        self.workers = workers
        self.extra = list(extra or [])
        self.env = dict(env or {})
        self.token = token
        # What the test's own clients present (server_key, client_key, user, password, token).
        self.creds = dict(creds or {})
        if token is not None:
            self.creds.setdefault("token", token)
        self.use_flags = use_flags
        # worker i listens on port + i; the cluster control port is port + workers
        self.port = port if port is not None else free_port_block(workers + 1)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.tmp_dir / f"node-{self.port}.log"
        self._log = None
        self._seen_pids: set[int] = set()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ports(self) -> list[int]:
        return [self.port + i for i in range(self.workers)]

    def argv(self) -> list[str]:
        args = [sys.executable, "-m", "tscale.cli", "up"]
        if self.use_flags:
            args += ["--listen", self.addr, "--workers", str(self.workers),
                     "--data-dir", str(self.tmp_dir / "data"), "--log-level", "info"]
        if self.token is not None:
            args += ["--token", self.token]
        return args + self.extra

    def spawn(self) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=clean_env(self.env), cwd=str(self.tmp_dir),
                                     start_new_session=True, preexec_fn=_term_with_parent)
        self._seen_pids.add(self.proc.pid)

    def start(self, timeout: float = START_DEADLINE) -> "Node":
        """Spawn and wait until every worker serves and the in-host bus is connected.
        Only a port taken between the check and the bind earns a retry (on a new block)."""
        for attempt in range(3):
            self.spawn()
            try:
                self.wait_ready(timeout)
                return self
            except NodeStartError as exc:
                self.stop()
                if not (exc.port_taken and self.use_flags and attempt < 2):
                    raise
                self.port = free_port_block(self.workers)
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _check_running(self):
        """Fail fast while starting: the supervisor exited, or a process crashed with a traceback."""
        if not self.running():
            log = self.log_text()
            raise NodeStartError(f"node exited with {self.proc.returncode}; log:\n{log[-3000:]}",
                                 port_taken="could not bind" in log)
        log = self.log_text()
        if "Traceback (most recent call last)" in log:
            raise NodeStartError(f"a node process crashed while starting; log:\n{log[-3000:]}")

    # -- status
    def status(self, timeout: float = 10.0) -> dict:
        """The node's status document, fetched by a raw client from worker 0."""
        r = RawClient(self.port, hello=bool(self.creds), name="test-status", **self.creds)
        try:
            return r.status(timeout)
        finally:
            r.close()

    def worker_pids(self) -> list[int]:
        st = self.status()
        pids = [w["pid"] for w in sorted(st["workers"], key=lambda w: w["index"])]
        self._seen_pids.update(p for p in pids if p)
        return pids

    def children(self) -> list[int]:
        """Worker pids as the OS sees them: the supervisor's child processes."""
        try:
            kids = [c.pid for c in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []
        self._seen_pids.update(kids)
        return kids

    def pids(self) -> list[int]:
        """The supervisor's pid followed by its children's."""
        return [self.proc.pid] + self.children()

    def _ready(self):
        self._check_running()
        st = self.status(timeout=2.0)
        ws = st.get("workers", [])
        if len(ws) != self.workers or not all(w.get("alive") and w.get("pid") for w in ws):
            return None
        self._seen_pids.update(w["pid"] for w in ws)
        return st

    def wait_ready(self, timeout: float = START_DEADLINE) -> dict:
        deadline = time.monotonic() + timeout
        try:
            st = wait_until(self._ready, timeout, 0.05, f"node on {self.addr} to report all workers alive",
                            ignore=(AssertionError, zmq.ZMQError))
        except AssertionError as exc:
            self._check_running()
            raise NodeStartError(f"{exc}; log:\n{self.log_text()[-3000:]}") from None
        # Every worker answers on its own port.
        for p in self.ports:
            r = RawClient(p, hello=bool(self.creds), name="test-ready", **self.creds)
            try:
                r.ping(max(1.0, deadline - time.monotonic()))
            finally:
                r.close()
        self._probe_bus(max(5.0, deadline - time.monotonic()))
        return st

    def raw(self, port: int | None = None, **kw) -> "RawClient":
        """A simple (hand-written protocol) client on one of this node's ports."""
        for k, v in self.creds.items():
            kw.setdefault(k, v)
        return RawClient(port if port is not None else self.port, **kw)

    def _probe_bus(self, timeout: float) -> None:
        """Wait until workers exchanged interest over the in-host bus: a subscriber on each worker's port
        receives, through proxying, an event published on a name owned by every other worker."""
        if self.workers < 2:
            return
        probe = uniq("probe")
        owned = [name_for(k, self.workers, probe) for k in range(self.workers)]
        subs = [self.raw(p, name="test-probe") for p in self.ports]
        pubs = [self.raw(p, name="test-probe") for p in self.ports]
        try:
            for s in subs:
                s.sub(probe + ".>")
            deadline = time.monotonic() + timeout
            while True:
                missing = [(j, k) for j, s in enumerate(subs) for k in range(self.workers)
                           if k != j and owned[k] not in s.names()]
                if not missing:
                    return
                if time.monotonic() > deadline:
                    raise NodeStartError(f"in-host bus never connected: missing (subscriber, owner) {missing}; "
                                         f"log:\n{self.log_text()[-3000:]}")
                self._check_running()
                for k in {k for _, k in missing}:
                    pubs[k].pub(owned[k], b"probe")
                for s in subs:
                    s.pump(0.05)
        finally:
            for r in subs + pubs:
                r.close()

    # -- processes
    def kill_worker(self, index: int, sig: int = signal.SIGKILL) -> int:
        """Signal worker `index` (found via status); returns its pid."""
        pid = self.worker_pids()[index]
        assert psutil.Process(pid).ppid() == self.proc.pid, "status pid is not a child of the supervisor"
        os.kill(pid, sig)
        return pid

    def stop(self, timeout: float = 15.0):
        """SIGTERM the supervisor, wait, then SIGKILL whatever is left of its process group.
        Returns the supervisor's exit code."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            self.children()
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)   # the group is p.pid's own (start_new_session)
            except ProcessLookupError:
                pass
            p.wait(10)
        # Workers outlive a SIGKILLed supervisor only if something is broken; kill them by pid.
        # (Each worker leads its own process group, so the killpg above does not reach it.)
        for pid in self._seen_pids - {p.pid}:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE and "tscale_workers" in " ".join(proc.cmdline()):
                    proc.kill()
            except (psutil.Error, ProcessLookupError, OSError):
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        return p.returncode


def pids_alive(pids) -> list[int]:
    """The pids in `pids` that are running (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


# ----------------------------------------------------------------------------- fixtures
@contextlib.contextmanager
def running_node(tmp_dir: Path, **kw):
    """A started Node, stopped (by pid) when the block ends: the body of module-scoped node fixtures."""
    n = Node(tmp_dir, **kw)
    try:
        n.start()
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="session")
def node2(tmp_path_factory):
    """A shared node with 2 workers, default options. Tests on it use fresh names (uniq())."""
    with running_node(tmp_path_factory.mktemp("node2"), workers=2) as n:
        yield n


@pytest.fixture
def make_node(tmp_path):
    """Factory for function-scoped nodes (destructive tests); all are stopped at teardown."""
    made: list[Node] = []

    def make(workers: int = 2, start: bool = True, **kw) -> Node:
        n = Node(tmp_path / f"n{len(made)}", workers=workers, **kw)
        n.tmp_dir.mkdir(parents=True, exist_ok=True)
        made.append(n)
        if start:
            n.start()
        return n

    yield make
    for n in made:
        n.stop()


@pytest.fixture
def clients():
    """Factory for Python clients: clients(node_or_addr, **kw); all closed at teardown."""
    made: list = []

    def make(target, **kw) -> tscale.Client:
        addr = target.addr if isinstance(target, Node) else target
        if isinstance(target, Node):
            for k, v in target.creds.items():
                kw.setdefault(k, v)
        kw.setdefault("name", "test-py")
        c = tscale.Client(addr, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close(2.0)
        except Exception:
            pass


@pytest.fixture
def raws():
    """Factory for raw protocol clients: raws(port, **kw); all closed at teardown."""
    made: list[RawClient] = []

    def make(port: int, **kw) -> RawClient:
        r = RawClient(port, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def collect(sub, n: int, timeout: float = DEADLINE) -> list:
    """Take `n` messages from a sync client iterator subscription (fails on the deadline)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(out)} of {n} events on {sub.pattern!r} within {timeout:g}s")
        try:
            out.append(sub.next_msg(timeout=min(left, 1.0)))
        except tscale.Timeout:
            pass
    return out


class Inbox:
    """A thread-safe list for callback subscriptions."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items: list = []

    def __call__(self, msg):
        with self.lock:
            self.items.append(msg)

    def __len__(self):
        with self.lock:
            return len(self.items)

    def snapshot(self) -> list:
        with self.lock:
            return list(self.items)


def json_lines(data: bytes) -> list:
    return [json.loads(l) for l in data.decode().splitlines() if l.strip()]

