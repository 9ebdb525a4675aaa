"""The supervisor: starts one worker process per core, restarts the ones that
die, gathers their figures for `tscale status`, and shuts everything down on
SIGTERM/SIGINT.  It is never on the path of an event.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import msgpack
import zmq

from . import __version__, auth, bus, keys, rundir, sdnotify, sigwake
from .cluster import ClusterControl
from .security import Security, answer_zap, zap_socket
from dataclasses import asdict

from .config import NodeConfig, parse_hostport
from .errors import ConnectError
from .logs import RateLimited, always, setup
from .protocol import pack

EXIT_BIND_FAILED = 3         # a worker's exit code when its port is taken
RESTART_FAST = 0.05          # first restart delay after a crash, seconds
RESTART_MAX = 5.0            # cap of the back-off for a worker that keeps crashing
STOP_GRACE = 5.0             # SIGTERM -> SIGKILL
BUSY_POLL = 0.05             # loop period while the cluster control plane has work with deadlines
# glibc serves an allocation of 128 KiB or more (a batch frame of large events: up to 1 MiB)
# with a fresh mmap and gives it back on free, so every such frame faults in its pages again;
# its dynamic threshold then trims the heap as often.  Fixed thresholds keep those buffers in
# the heap: node CPU per 64 KiB event 106 -> 78 us in the bench (issue 10; docs/BENCHMARKS.md).
# Both thresholds or neither: a fixed mmap_threshold alone turns the dynamic adjustment off and
# leaves trim_threshold at 128 KiB, so the heap is trimmed after every free (2,000 1-MiB
# buffers: 448,030 page faults, against 510 on defaults and 254 with both).
# A worker may then keep up to trim_threshold of freed memory.  A GLIBC_TUNABLES already in the
# environment is left as it is; other C libraries ignore the variable.
WORKER_MALLOC = "glibc.malloc.mmap_threshold=16777216:glibc.malloc.trim_threshold=67108864"
STATUS_EVERY = 1.0           # the status document (workers answer STATUS from it); the idle period


def _worker_preexec():
    """Runs in the child before exec.  Its own process group: a signal to the node's group (Ctrl-C
    in a terminal, `kill -TERM -PGID`) reaches only the supervisor, which then stops the workers
    itself instead of seeing them die and racing its own shutdown.  And SIGKILL it if the
    supervisor dies (no orphans)."""
    os.setpgid(0, 0)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_usage(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, RSS bytes) of a process from one read of /proc/PID/stat, None if it is gone.
    Status is built every second: psutil's cpu_percent, cpu_times and memory_info cost ~0.5 ms
    per worker on a small VM (three /proc reads and their parsing), this one read ~0.05 ms."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2:].split()   # from field 3 (state) on
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK, int(fields[21]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class WorkerProc:
    """The supervisor's view of one worker slot."""

    def __init__(self, index: int):
        self.index = index
        self.popen: subprocess.Popen | None = None
        self.cpu_mark: tuple[float, float] | None = None   # (CPU seconds, monotonic time) at the last status
        self.restarts = 0
        self.started = 0.0
        self.crashes_in_row = 0
        self.restart_at = 0.0
        self.stats: dict = {}
        self.reported = False        # said WORKER_HELLO or STATS since it was (re)started
        self.pidfd: int | None = None   # readable once the process exits (wakes the supervisor's poll)

    @property
    def up(self) -> bool:
        """Running, listening, and connected to the supervisor over the in-host bus.  Also read by the
        monitor's thread, hence one read of `popen` (the main thread may replace it meanwhile)."""
        p = self.popen
        return self.reported and p is not None and p.poll() is None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Supervisor:
    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.log = setup("supervisor", cfg.log_level, cfg.log_format)
        self.rlog = RateLimited(self.log)
        self.node_id = uuid.uuid4().hex[:16]
        forced = os.environ.get("TSCALE_NODE_ID", "")   # tests only: an id, so its rank, chosen in advance
        if len(forced) == 16 and all(ch in "0123456789abcdef" for ch in forced):
            self.node_id = forced
        self.host, self.port = parse_hostport(cfg.listen)
        self.workers = [WorkerProc(i) for i in range(cfg.workers)]
        self.running = True
        self.exit_code = 0
        self.started = time.time()
        self.last_cluster_error = -1e9
        self.stop_reason = ""
        self.snapshot: dict | None = None       # the last status document (read by the monitor thread)
        self.monitor = None
        self.reload_users = False
        self.zap = None

    def _spec(self, index: int) -> dict:
        c = self.cfg
        return {
            "index": index, "count": c.workers, "host": self.host, "base_port": self.port,
            "run_dir": self.run_dir, "node_id": self.node_id, "node_name": c.name,
            "version": __version__, "max_payload": c.max_payload, "security": self.security.spec(),
            "client_hwm": c.client_hwm, "max_subs_per_conn": c.max_subs_per_conn,
            "client_max_pending": c.client_max_pending, "slow_consumer_grace_ms": c.slow_consumer_grace_ms,
            "log_level": c.log_level, "log_format": c.log_format, "data_dir": c.data_dir,
            "cluster": c.cluster,
        }

    def _spawn(self, w: WorkerProc):
        env = dict(os.environ, TSCALE_WORKER_SPEC=json.dumps(self._spec(w.index)))   # not argv: holds the token
        env.pop("NOTIFY_SOCKET", None)        # only the supervisor speaks to systemd
        env.setdefault("GLIBC_TUNABLES", WORKER_MALLOC)
        w.popen = subprocess.Popen(
            [sys.executable, "-m", "tscale_workers", f"--index={w.index}"],
            preexec_fn=_worker_preexec, stdin=subprocess.DEVNULL, env=env)
        w.started = time.monotonic()
        self._watch_exit(w)
        use = proc_usage(w.popen.pid)
        w.cpu_mark = (use[0], time.monotonic()) if use else None
        w.stats = {}
        w.reported = False

    def _watch_exit(self, w: WorkerProc):
        """Register a pidfd of worker `w` in the poller, so its death wakes the loop at once
        (the loop sleeps up to STATUS_EVERY when idle).  Without pidfd_open (Linux < 5.3)
        the loop keeps polling every BUSY_POLL instead."""
        self._unwatch_exit(w)
        try:
            w.pidfd = os.pidfd_open(w.popen.pid)
        except (AttributeError, OSError):
            w.pidfd = None
            return
        self.poller.register(w.pidfd, zmq.POLLIN)

    def _unwatch_exit(self, w: WorkerProc):
        if w.pidfd is not None:
            try:
                self.poller.unregister(w.pidfd)
            except KeyError:
                pass
            os.close(w.pidfd)
            w.pidfd = None

    # -- lifecycle ------------------------------------------------------------
    def _security(self) -> Security:
        """Keys and users for this run; raises KeyFileError or UsersError."""
        c = self.cfg
        users = auth.load_users(c.users_file) if c.users_file else None
        public = secret = ""
        if (c.curve or c.cluster_key) and not (c.cluster_key or c.token):
            public, secret = keys.node_pair(c.data_dir)   # created 0600 on first start, reused after
        return Security(curve=bool(c.curve), token=c.token, cluster_key=c.cluster_key, server_public=public,
                        server_secret=secret, users=users, users_file=c.users_file)

    def _warn_security(self):
        sec = self.security
        if not sec.cluster_secret:
            if self.host.startswith("127.") or self.host in ("localhost", "::1"):
                # Only processes of this host can reach a loopback node: no network-wide warning.
                self.log.info("cluster %r is open to every process of this host (no --cluster-key or --token)",
                              self.cfg.cluster)
            else:
                self.log.warning("cluster %r is open: any host on the network that runs tscale can join it and "
                                 "see every event (set --cluster-key or --token; docs/SECURITY.md)", self.cfg.cluster)
        if sec.users_doc is not None and not sec.cluster_secret:
            self.log.warning("a users file without --token or --cluster-key: this node cannot link with other "
                             "nodes (they have no credential to present)")
        if sec.mechanism == "plain":
            self.log.info("client ports: PLAIN authentication, credentials travel in clear text (use --curve)")
        elif sec.mechanism == "curve":
            self.log.info("client ports: CURVE, server public key %s", sec.server_public)

    def _reload_users(self):
        """SIGHUP: read the users file again; on any error keep the users in force."""
        self.reload_users = False
        if not self.cfg.users_file:
            self.log.warning("SIGHUP: no users file configured; nothing to reload")
            return
        try:
            doc = auth.load_users(self.cfg.users_file)
        except auth.UsersError as exc:
            self.log.error("users file not reloaded, the previous one stays in force: %s", exc)
            return
        self.security.users_doc = doc
        self.bus_all([bus.USERS, bus.SUPERVISOR, doc])
        self.log.info("users file %s reloaded: %d users", self.cfg.users_file, len(doc.get("users") or {}))

    def _on_sighup(self, *_):
        self.reload_users = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._on_sighup)
        # A signal wakes the poll at once (pyzmq resumes an interrupted poll by itself).
        self.sig_r = sigwake.wakeup_fd()
        os.makedirs(self.cfg.data_dir, exist_ok=True)
        try:
            self.security = self._security()
        except (keys.KeyFileError, auth.UsersError) as exc:
            self.log.error("%s", exc)
            return 2
        self._warn_security()
        for path in rundir.clean_stale():
            self.log.info("removed the run directory %s of a supervisor that is gone", path)
        self.run_dir = rundir.create()
        self.ctx = zmq.Context()
        if self.security.control != "null":   # ZAP handler before the control port binds
            self.gate = self.security.gate()
            self.zap = zap_socket(self.ctx)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(bus.supervisor_endpoint(self.run_dir))
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, bus.SUP)
        self.sub.setsockopt(zmq.SUBSCRIBE, bus.ALL)     # workers' WORKER_HELLO
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        self.poller.register(self.sig_r, zmq.POLLIN)
        if self.zap is not None:
            self.poller.register(self.zap, zmq.POLLIN)
        c = self.cfg
        self.cluster = ClusterControl(self, c.cluster, self.host, self.port, c.workers, c.join_list(),
                                      self._discovery(), c.discovery_port, c.advertise, self.node_id, c.name,
                                      self.security)
        self.cluster.overlay.max_children = c.max_children
        try:
            self.cluster.open(self.poller)
        except (zmq.ZMQError, OSError) as exc:
            self.log.error("cannot open the cluster control port %s:%d%s: %s", self.host, self.cluster.ctl_port,
                           f" or the UDP discovery port {c.discovery_port}" if self.cluster.discovery else "", exc)
            return self._abort_start()
        if c.monitor:
            from .monitor import Monitor
            mhost, mport = c.monitor_address()
            try:
                self.monitor = Monitor(mhost, mport, lambda: self.snapshot, self.health)
            except (OSError, ConnectError) as exc:
                self.log.error("cannot open the monitor port %s:%d: %s", mhost, mport, getattr(exc, "strerror", None) or exc)
                self.cluster.close()
                return self._abort_start()
            self.log.info("monitor on http://%s:%d (/metrics, /healthz, /status)", mhost, mport)
        for w in self.workers:
            self.sub.connect(bus.worker_endpoint(self.run_dir, w.index))
            self._spawn(w)
        last = self.port + len(self.workers) - 1
        self.log.info("node %s (%s) starting: %d workers on %s:%d%s, supervisor pid %d",
                      self.cfg.name, self.node_id, len(self.workers), self.host, self.port,
                      f"-{last}" if last != self.port else "", os.getpid())
        try:
            self._loop()
        finally:
            self._shutdown()
        return self.exit_code

    def _abort_start(self) -> int:
        self.ctx.destroy(linger=0)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return 2

    def _stop(self, signum, _frame):
        if self.running:
            self.stop_reason = signal.Signals(signum).name
            self.log.debug("received %s, shutting down", self.stop_reason)
        self.running = False

    def _discovery(self) -> bool:
        on = self.cfg.discovery_on()
        if not on and not self.cfg.no_discovery:
            self.log.info("listening on a loopback address: UDP discovery off (use --join)")
        return on

    def health(self) -> tuple[bool, list[int]]:
        """(every worker is up, indexes of the workers that are not): for /healthz."""
        down = [w.index for w in self.workers if not w.up]
        return not down, down

    def _announce_ready(self):
        c = self.cfg
        last = self.port + len(self.workers) - 1
        n = len(self.workers)
        always(self.log, "node %s ready: %d worker%s on %s:%d%s, supervisor pid %d", c.name, n, "s" * (n != 1),
               self.host, self.port, f"-{last}" if last != self.port else "", os.getpid())
        self._notify(f"READY=1\nSTATUS=ready: {len(self.workers)} workers on {self.host}:{self.port}\n"
                     f"MAINPID={os.getpid()}")

    def _notify(self, state: str):
        try:
            sdnotify.notify(state)
        except OSError as exc:
            self.log.warning("cannot notify the service manager on NOTIFY_SOCKET: %s", exc)

    def bus_all(self, msg: list):
        self.pub.send_multipart([bus.ALL, pack(msg)])

    def bus_to(self, k: int, msg: list):
        self.pub.send_multipart([bus.topic(k), pack(msg)])

    def _poll_timeout(self, now: float, next_status: float, announced: bool) -> float:
        """Milliseconds until the loop has something to do on time.  BUSY_POLL while the cluster
        control plane or a worker start needs it; an idle node alone wakes once per
        STATUS_EVERY (issue 10): input, signals and worker deaths (pidfd) wake it earlier."""
        if (not announced or not self.cluster.quiet()
                or any(w.popen is None or w.pidfd is None for w in self.workers)):
            return BUSY_POLL * 1000
        return max(0.0, next_status - now) * 1000

    def _loop(self):
        poller = self.poller
        next_status = 0.0
        announced = False
        now = time.monotonic()
        while self.running:
            try:
                ready = poller.poll(self._poll_timeout(now, next_status, announced))
            except zmq.ZMQError:
                continue
            now = time.monotonic()
            if ready and any(sock == self.sig_r for sock, _ in ready):
                sigwake.drain(self.sig_r)
            if ready and any(sock is self.sub for sock, _ in ready):
                self._drain(now)
            if ready and self.zap is not None and any(sock is self.zap for sock, _ in ready):
                self._drain_zap()
            if self.reload_users:
                self._reload_users()
            try:
                if ready:
                    self.cluster.handle(ready, now)
                self.cluster.tick(now)
            except Exception:
                # The node keeps serving its own clients whatever the control plane meets.
                if now - self.last_cluster_error > 5.0:
                    self.last_cluster_error = now
                    self.log.exception("cluster control error (the node keeps running)")
            self._watch(now)
            if not announced and all(w.up for w in self.workers):
                announced = True
                self._announce_ready()
            if now >= next_status:
                next_status = now + STATUS_EVERY
                self.snapshot = st = self.status()
                self.pub.send_multipart([bus.ALL, pack([bus.NODE_STATUS, bus.SUPERVISOR, st])])

    def _drain_zap(self):
        answer_zap(self.zap, self.gate, lambda addr, why: self.rlog.warning(
            ("zap", addr), "control port: refused a connection from %s at the handshake: %s", addr, why))

    def _drain(self, now: float):
        while True:
            try:
                _topic, body = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = msgpack.unpackb(body, raw=False)
                kind, index, arg = msg[:3]
            except Exception:
                continue
            if not 0 <= index < len(self.workers):
                continue
            if kind == bus.STATS:
                self.workers[index].stats = arg
                self.workers[index].reported = True
            elif kind == bus.LOCAL_INTEREST and len(msg) == 5:
                self.cluster.local_interest(index, arg, msg[3], msg[4])
            elif kind == bus.CONFIRM_REQ:
                self.cluster.confirm(index, arg, now)
            elif kind == bus.SYNC_ACK:
                self.cluster.worker_synced(arg, index)
            elif kind == bus.WORKER_HELLO:
                self.workers[index].reported = True
                self.cluster.worker_hello(index, arg)
                self.cluster.worker_snapshot(index, arg)
                self.bus_to(index, [bus.NODE_STATUS, bus.SUPERVISOR, self.status()])

    def _watch(self, now: float):
        if not self.running:
            return      # shutting down: a worker that exits now is not a crash, and nothing restarts
        for w in self.workers:
            if w.popen is None:
                if now >= w.restart_at and self.running:
                    self._spawn(w)
                    self.log.info("worker %d restarted (pid %d, restart #%d)", w.index, w.popen.pid, w.restarts)
                continue
            rc = w.popen.poll()
            if rc is None:
                if w.crashes_in_row and now - w.started > 10:
                    w.crashes_in_row = 0
                continue
            if rc == EXIT_BIND_FAILED and w.restarts == 0:
                self.log.error("worker %d could not bind its port %s:%d; stopping the node",
                               w.index, self.host, self.port + w.index)
                self.exit_code = 2
                self.running = False
                w.popen = None
                self._unwatch_exit(w)
                return
            w.popen = None
            w.cpu_mark = None
            self._unwatch_exit(w)
            w.restarts += 1
            w.crashes_in_row += 1
            # Restart at once; back off only for a worker that keeps crashing.
            delay = min(RESTART_FAST * 2 ** max(0, w.crashes_in_row - 3), RESTART_MAX)
            w.restart_at = now + delay
            how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
            self.log.warning("worker %d died (%s); restarting in %.2fs", w.index, how, delay)
            self.bus_all([bus.WORKER_DOWN, bus.SUPERVISOR, w.index])
            self.cluster.worker_down(w.index)

    def _shutdown(self):
        self._notify("STOPPING=1")
        if self.monitor is not None:
            self.monitor.close()
        live = [w for w in self.workers if w.popen is not None and w.popen.poll() is None]
        for w in live:
            try:
                w.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        for w in live:
            try:
                w.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log.warning("worker %d did not stop in %.0fs; killing it", w.index, STOP_GRACE)
                w.popen.kill()
                w.popen.wait()
        self.cluster.close()
        self.ctx.destroy(linger=0)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        always(self.log, "node %s stopped%s", self.cfg.name, f" ({self.stop_reason})" if self.stop_reason else "")

    # -- status ---------------------------------------------------------------
    def status(self) -> dict:
        workers = []
        for w in self.workers:
            cpu, cpu_s, rss = 0.0, 0.0, 0
            use = proc_usage(w.popen.pid) if w.alive else None
            if use is not None:
                cpu_s, rss = use
                now = time.monotonic()
                if w.cpu_mark is not None and now > w.cpu_mark[1]:
                    cpu = max(0.0, 100.0 * (cpu_s - w.cpu_mark[0]) / (now - w.cpu_mark[1]))
                w.cpu_mark = (cpu_s, now)
            s = w.stats
            workers.append({
                "index": w.index, "pid": w.popen.pid if w.popen else None, "alive": w.alive,
                "restarts": w.restarts, "cpu_percent": round(cpu, 1), "cpu_seconds": round(cpu_s, 2),
                "rss_bytes": rss,
                "events_in": s.get("events_in", 0), "events_out": s.get("events_out", 0),
                "dropped": s.get("dropped", 0), "forwarded": s.get("forwarded", 0),
                "slow_disconnects": s.get("slow_disconnects", 0),
                "errors": s.get("errors", 0), "clients": s.get("clients", 0),
                "subscriptions": s.get("subscriptions", 0), "slow_clients": s.get("slow_clients", []),
                "peer_in": s.get("peer_in", 0), "peer_out": s.get("peer_out", 0), "peers": s.get("peers", {}),
                "queues": s.get("queues", {}),
                "permission_denied": s.get("permission_denied", {}),
            })
        me = proc_usage(os.getpid())
        sup_rss = me[1] if me else 0
        totals = {k: sum(w[k] for w in workers) for k in
                  ("events_in", "events_out", "dropped", "slow_disconnects", "errors", "clients",
                   "subscriptions", "rss_bytes", "cpu_percent")}
        totals["rss_bytes"] += sup_rss
        denied: dict = {}
        for w in workers:
            for user, n in w["permission_denied"].items():
                denied[user] = denied.get(user, 0) + n
        return {
            "schema": 1,
            "security": dict(self.security.describe(), permission_denied=denied),
            "cluster": self.cluster.status(totals),
            "node": {
                "name": self.cfg.name, "id": self.node_id, "version": __version__,
                "uptime_s": round(time.time() - self.started, 1), "listen": f"{self.host}:{self.port}",
                "ports": [self.port + i for i in range(len(self.workers))],
                "supervisor_pid": os.getpid(), "supervisor_rss_bytes": sup_rss,
                "workers": len(self.workers), "max_payload": self.cfg.max_payload,
            },
            "workers": workers,
            "totals": totals,
        }


def run_node(cfg: NodeConfig) -> int:
    return Supervisor(cfg).run()


def exec_node(cfg: NodeConfig) -> None:
    """Become the supervisor: exec a fresh interpreter (same pid) that imports only what
    a supervisor needs, not the CLI (typer and rich cost ~17 MB of RSS)."""
    sys.stdout.flush()
    sys.stderr.flush()
    # The configuration (it may hold the token) goes in the environment, not argv: `ps` shows argv to everyone.
    env = dict(os.environ, TSCALE_NODE_SPEC=json.dumps(asdict(cfg)))
    os.execve(sys.executable, [sys.executable, "-m", "tscale.supervisor"], env)


if __name__ == "__main__":
    spec = os.environ.pop("TSCALE_NODE_SPEC", None)
    if spec is None:
        sys.exit("tscale.supervisor is started by `tscale up`")
    sys.exit(run_node(NodeConfig(**json.loads(spec))))
