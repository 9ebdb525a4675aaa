"""The `tscale` command: run a node, publish, subscribe, request, reply, ping, inspect.

Exit codes: 0 ok; 1 the operation failed (timeout, no responders, server error); 2 bad usage, a bad
address or bad configuration; 3 the node could not be reached.  Every error is one line on stderr
starting `tscale:` (`main` turns usage errors and unexpected exceptions into such a line too).

Helpers other commands can share: `fail(code, message)`, `server_option()`, `connect(server, name)`
(address checked, refused connections and unknown hosts fail at once) and `session(server, name)`.
Declare commands with `@command()` (not `@app.command()`) so their flags carry no "<bool>" label.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from functools import partial
from typing import List, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from . import __version__


def _unlabel_flags(params):
    """On/off flags (typer's own --help and completion options too) get no "<bool>" label in --help."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx):
        return _unlabel_flags(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx):
        return _unlabel_flags(super().get_params(ctx))


app = typer.Typer(cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="tscale: a decentralized event router on ZeroMQ.")
command = partial(app.command, cls=_Command)

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
CONNECT_TIMEOUT = 5.0          # seconds a client command waits for the node's handshake
DEFAULT_SERVER = "127.0.0.1:7400"


def fail(code: int, message: str):
    """Print `tscale: MESSAGE` (one line) on stderr and exit with `code`."""
    typer.echo("tscale: " + " ".join(str(message).split()), err=True)
    raise typer.Exit(code)


def server_option():
    return typer.Option(None, "--server", "-s", envvar="TSCALE_SERVER", show_envvar=True,
                        show_default=DEFAULT_SERVER, metavar="HOST:PORT", help="node address")


def _address(server: Optional[str]) -> tuple[str, str, int]:
    """(address, host, port) of the node a client command talks to; exit 2 if it is not HOST:PORT."""
    from .client import default_server
    from .client_core import parse_address
    from .errors import AddressError
    addr = server or default_server()      # TSCALE_SERVER for commands whose option does not read it
    try:
        host, port = parse_address(addr)
    except AddressError as exc:
        fail(EXIT_USAGE, str(exc))
    return addr, host, port


# -- security options of the client commands (docs/SECURITY.md) ------------------------------
def server_key_option():
    return typer.Option(None, "--server-key", envvar="TSCALE_SERVER_KEY", show_envvar=True, show_default="none",
                        metavar="KEY", help="the node's CURVE public key (`tscale keys`): turns on CURVE")


def _credentials(server_key: Optional[str]) -> dict:
    """Client credentials from --server-key and the environment (secrets never as flags: argv is public):
    TSCALE_TOKEN, TSCALE_USER + TSCALE_PASSWORD, TSCALE_CLIENT_KEY_FILE (from `tscale keys --new-client`)."""
    import os

    from .keys import KeyFileError, read_pair
    env = os.environ
    creds = {"server_key": server_key or env.get("TSCALE_SERVER_KEY") or None,
             "token": env.get("TSCALE_TOKEN") or None,
             "user": env.get("TSCALE_USER") or None, "password": env.get("TSCALE_PASSWORD") or None}
    key_file = env.get("TSCALE_CLIENT_KEY_FILE")
    if key_file:
        try:
            creds["client_key"] = read_pair(key_file)[1]
        except KeyFileError as exc:
            fail(EXIT_USAGE, str(exc))
    return creds
# -- end of security options ------------------------------------------------------------------


def connect(server: Optional[str], name: str, timeout: float = CONNECT_TIMEOUT, server_key: Optional[str] = None):
    """A connected `tscale.Client`, or exit 3 with the reason: an unknown host or a refused
    connection is reported at once, a node that does not answer after `timeout` seconds."""
    from .address import check_reachable
    from .client import Client
    from .errors import ConnectError
    addr, host, port = _address(server)
    try:
        spent = check_reachable(host, port, timeout=min(1.0, timeout))
        return Client(addr, name=name, connect_timeout=max(0.5, timeout - spent), **_credentials(server_key))
    except ConnectError as exc:
        fail(EXIT_UNREACHABLE, str(exc))


@contextmanager
def session(server: Optional[str], name: str, server_key: Optional[str] = None):
    """A connected client; any tscale error becomes exit code 1 with its one-line reason."""
    from .errors import TscaleError
    c = connect(server, name, server_key=server_key)
    try:
        yield c
    except TscaleError as exc:
        fail(EXIT_FAILED, str(exc))
    finally:
        c.close()


def _sigterm_as_interrupt():
    """Long-running client commands stop on SIGTERM as on Ctrl-C: say goodbye to the node, exit 0."""
    import signal

    def stop(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _headers(items: List[str]) -> Optional[dict]:
    out = {}
    for h in items or []:
        k, sep, v = h.partition("=")
        if not sep or not k:
            fail(EXIT_USAGE, f"header {h!r}: use KEY=VALUE")
        out[k] = v
    return out or None


def _version(value: bool):
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")):
    """tscale: a decentralized event router on ZeroMQ."""


def _node_option(default: str, help: str, metavar: str, flag: Optional[str] = None, env: Optional[str] = None):
    """An option of `tscale up`: None when not given, so the config file and the environment can set it."""
    decls = [flag] if flag else []
    return typer.Option(None, *decls, envvar=env, show_envvar=env is not None, show_default=default,
                        metavar=metavar, help=help)


@command()
def up(
    listen: Optional[str] = _node_option("0.0.0.0:7400", "address of worker 0; worker i listens on PORT+i",
                                         "HOST:PORT", env="TSCALE_LISTEN"),
    workers: Optional[int] = _node_option("0 = one per CPU", "worker processes, 1..256", "N", env="TSCALE_WORKERS"),
    name: Optional[str] = _node_option("host name", "node name", "NAME", env="TSCALE_NAME"),
    data_dir: Optional[str] = _node_option("~/.local/share/tscale", "data directory", "DIR", env="TSCALE_DATA_DIR"),
    config: Optional[str] = _node_option("none", "TOML config file (see configs-optional/)", "FILE",
                                         env="TSCALE_CONFIG"),
    log_level: Optional[str] = _node_option("info", "debug, info, warning or error", "LEVEL", env="TSCALE_LOG_LEVEL"),
    log_format: Optional[str] = _node_option("text", "text or json", "FORMAT", env="TSCALE_LOG_FORMAT"),
    max_payload: Optional[int] = _node_option("1048576", "largest payload accepted, bytes", "BYTES",
                                              env="TSCALE_MAX_PAYLOAD"),
    token: Optional[str] = _node_option("none", "require clients and peers to present this token", "SECRET",
                                        env="TSCALE_TOKEN"),
    join: Optional[str] = _node_option("none", "nodes already in the cluster", "HOST:PORT[,...]", env="TSCALE_JOIN"),
    cluster: Optional[str] = _node_option("tscale", "cluster name; nodes only join their own", "NAME",
                                          env="TSCALE_CLUSTER"),
    no_discovery: Optional[bool] = _node_option("discovery on", "do not send or listen to UDP beacons", None,
                                                flag="--no-discovery", env="TSCALE_NO_DISCOVERY"),
    discovery_port: Optional[int] = _node_option("7401", "UDP port of the beacons", "PORT",
                                                 env="TSCALE_DISCOVERY_PORT"),
    advertise: Optional[str] = _node_option("none", "address other nodes should use to reach this one", "HOST:PORT",
                                            env="TSCALE_ADVERTISE"),
    monitor: Optional[str] = _node_option("off", "serve /metrics (Prometheus), /healthz and /status over HTTP here; "
                                          ":PORT means 127.0.0.1", "HOST:PORT", env="TSCALE_MONITOR"),
    curve: Optional[bool] = _node_option("off", "CURVE encryption on every TCP port (docs/SECURITY.md)", None,
                                         flag="--curve", env="TSCALE_CURVE"),
    cluster_key: Optional[str] = _node_option("none", "cluster secret: authenticated, encrypted cluster (implies "
                                              "--curve); prefer the variable or --cluster-key-file", "SECRET",
                                              env="TSCALE_CLUSTER_KEY"),
    cluster_key_file: Optional[str] = _node_option("none", "file holding the cluster secret (mode 0600)", "FILE",
                                                   env="TSCALE_CLUSTER_KEY_FILE"),
    users_file: Optional[str] = _node_option("none", "TOML users file: credentials and permissions; reloaded on "
                                             "SIGHUP", "FILE", env="TSCALE_USERS_FILE"),
):
    """Run a node: a supervisor and one worker per core; logs one "ready" line, stops on SIGTERM/SIGINT."""
    from .config import ConfigError, load
    from .preflight import check_ports
    from .supervisor import exec_node
    flags = dict(listen=listen, workers=workers, name=name, data_dir=data_dir, config=config,
                 log_level=log_level, log_format=log_format, max_payload=max_payload, token=token,
                 join=join, cluster=cluster, no_discovery=no_discovery, discovery_port=discovery_port,
                 advertise=advertise, monitor=monitor, curve=curve, cluster_key=cluster_key,
                 cluster_key_file=cluster_key_file, users_file=users_file)
    try:
        cfg = load(flags)
        check_ports(cfg)
    except ConfigError as exc:
        fail(EXIT_USAGE, str(exc))
    exec_node(cfg)   # replaces this process (same pid) with a supervisor that never loads the CLI


@command()
def ping(
    server: Optional[str] = server_option(),
    wait: float = typer.Option(0.0, "--wait", metavar="S", show_default=True,
                               help="keep trying for up to S seconds until the node answers"),
):
    """Exit 0 as soon as the node answers (every worker), 3 if it does not: for scripts and service managers."""
    from .address import check_reachable
    from .client import Client
    from .errors import ConnectError, TscaleError
    if wait < 0:
        fail(EXIT_USAGE, "--wait must be at least 0")
    addr, host, port = _address(server)
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        try:
            check_reachable(host, port, timeout=1.0)
            c = Client(addr, name="tscale-ping", connect_timeout=CONNECT_TIMEOUT if wait == 0 else
                       max(0.5, min(CONNECT_TIMEOUT, left)))
            break
        except ConnectError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                fail(EXIT_UNREACHABLE, str(exc) + (f" (tried for {wait:g}s)" if wait else ""))
            time.sleep(min(0.1, left))       # a refused connection returns at once: do not spin
    try:
        t0 = time.monotonic()
        c.flush(CONNECT_TIMEOUT)             # one PING/PONG round trip with every worker
        ms = (time.monotonic() - t0) * 1000
        info = c.info
        n = len(info.get("ports", []))
        print(f"node {info.get('node_name', '?')} at {addr} answered: {n} worker{'s' * (n != 1)}, "
              f"round trip {ms:.1f} ms")
    except TscaleError as exc:
        fail(EXIT_UNREACHABLE, str(exc))
    finally:
        c.close()


@command()
def pub(
    name: str = typer.Argument(..., metavar="NAME", help="event name, e.g. orders.eu.created"),
    data: Optional[str] = typer.Argument(None, metavar="DATA", help="payload; read from stdin when omitted"),
    header: List[str] = typer.Option([], "--header", "-H", metavar="KEY=VALUE", help="a header, repeatable"),
    count: int = typer.Option(1, metavar="N", show_default=True, help="publish the event this many times"),
    confirm: bool = typer.Option(False, "--confirm", help="wait until a durable queue stored each event; print "
                                                          "where; exit 1 if no queue stored it"),
    msg_id: Optional[str] = typer.Option(None, "--msg-id", metavar="ID", help="with --confirm: idempotency key "
                                                                              "within the queue's dedupe window"),
    server: Optional[str] = server_option(),
    server_key: Optional[str] = server_key_option(),
):
    """Publish an event."""
    payload = sys.stdin.buffer.read() if data is None else data.encode()
    headers = _headers(header)
    if msg_id is not None and not confirm:
        fail(EXIT_USAGE, "--msg-id needs --confirm")
    with session(server, "tscale-pub", server_key) as c:
        if confirm:
            from .cli_queue import publish_confirmed
            publish_confirmed(c, name, payload, headers, count, msg_id)
            return
        for _ in range(count):
            c.publish(name, payload, headers=headers)
        c.flush()
        if c.last_error is not None:
            fail(EXIT_FAILED, str(c.last_error))


def _render(msg, as_json: bool) -> str:
    if as_json:
        try:
            data = msg.data.decode()
            enc = "utf-8"
        except UnicodeDecodeError:
            data, enc = msg.data.hex(), "hex"
        return json.dumps({"name": msg.name, "data": data, "encoding": enc,
                           "headers": msg.headers or {}, "reply": msg.reply})
    text = msg.data.decode(errors="replace")
    hdr = "".join(f" {k}={v}" for k, v in (msg.headers or {}).items())
    return f"[{msg.name}]{hdr} {text}"


def _queue_option(what: str):
    return typer.Option(None, "--queue", "-q", metavar="GROUP", help=what)


def _count_option(what: str):
    return typer.Option(0, metavar="N", show_default=True, help=what)


@command()
def sub(
    pattern: str = typer.Argument(..., metavar="PATTERN", help="name or pattern: * is one token, > the rest"),
    queue: Optional[str] = _queue_option("join this queue group"),
    count: int = _count_option("exit after this many events (0 = run until interrupted)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
    timeout: float = typer.Option(0, metavar="S", show_default=True,
                                  help="exit 1 if no event arrives for this many seconds (0 = wait forever)"),
    server: Optional[str] = server_option(),
    server_key: Optional[str] = server_key_option(),
):
    """Print events as they arrive."""
    from .errors import Timeout
    _sigterm_as_interrupt()
    got = 0
    with session(server, "tscale-sub", server_key) as c:
        s = c.subscribe(pattern, queue=queue)
        print(f"subscribed to {pattern}" + (f" in queue group {queue}" if queue else ""), file=sys.stderr, flush=True)
        try:
            while count == 0 or got < count:
                try:
                    msg = s.next_msg(timeout=timeout or None)
                except Timeout:
                    fail(EXIT_FAILED, f"no event within {timeout:g}s ({got} received)")
                print(_render(msg, as_json), flush=True)
                got += 1
        except KeyboardInterrupt:
            pass


@command()
def req(
    name: str = typer.Argument(..., metavar="NAME", help="name of the service to ask, e.g. math.double"),
    data: str = typer.Argument("", metavar="DATA", help="request payload", show_default=False),
    header: List[str] = typer.Option([], "--header", "-H", metavar="KEY=VALUE", help="a header, repeatable"),
    timeout: float = typer.Option(2.0, metavar="S", show_default=True, help="seconds to wait for the reply"),
    as_json: bool = typer.Option(False, "--json", help="print the reply as one JSON object"),
    server: Optional[str] = server_option(),
    server_key: Optional[str] = server_key_option(),
):
    """Send a request and print the reply."""
    from .errors import NoResponders, Timeout
    with session(server, "tscale-req", server_key) as c:
        try:
            msg = c.request(name, data.encode(), timeout=timeout, headers=_headers(header))
        except NoResponders:
            fail(EXIT_FAILED, f"no responders for {name}")
        except Timeout:
            fail(EXIT_FAILED, f"no reply within {timeout:g}s")
        if as_json:
            print(_render(msg, True))
        else:
            sys.stdout.buffer.write(msg.data + (b"" if msg.data.endswith(b"\n") else b"\n"))


@command()
def reply(
    name: str = typer.Argument(..., metavar="NAME", help="name or pattern of the requests to answer"),
    data: Optional[str] = typer.Argument(None, metavar="DATA", help="the reply to every request (or use --exec)"),
    queue: Optional[str] = _queue_option("answer in this queue group: each request goes to one member"),
    exec_cmd: Optional[str] = typer.Option(None, "--exec", metavar="CMD",
                                           help="run the shell command CMD per request, the request payload on "
                                                "its stdin; its stdout is the reply"),
    count: int = _count_option("exit after answering this many requests (0 = run until interrupted)"),
    server: Optional[str] = server_option(),
):
    """Answer requests on NAME with DATA, or with the output of CMD."""
    import subprocess
    if (data is None) == (exec_cmd is None):
        fail(EXIT_USAGE, "give the reply DATA or --exec CMD (one of the two)")
    fixed = None if data is None else data.encode()
    _sigterm_as_interrupt()
    answered = 0
    with session(server, "tscale-reply") as c:
        s = c.subscribe(name, queue=queue)
        print(f"answering requests on {name}" + (f" in queue group {queue}" if queue else ""),
              file=sys.stderr, flush=True)
        try:
            while count == 0 or answered < count:
                msg = s.next_msg(timeout=None)
                if not msg.reply:
                    continue            # a plain event, not a request: nobody waits for an answer
                if fixed is not None:
                    out = fixed
                else:
                    run = subprocess.run(exec_cmd, shell=True, input=msg.data, stdout=subprocess.PIPE)
                    out = run.stdout
                    if run.returncode != 0:
                        print(f"warning: {exec_cmd!r} exited with code {run.returncode}; replied with its output",
                              file=sys.stderr, flush=True)
                msg.respond(out)
                answered += 1
            c.flush()
        except KeyboardInterrupt:
            pass


@command()
def status(
    as_json: bool = typer.Option(False, "--json", help="machine-readable (schema in docs/STATUS.md)"),
    cluster: bool = typer.Option(False, "--cluster",
                                 help="show every node of the cluster and this node's links"),
    watch: bool = typer.Option(False, "--watch", "-w",
                               help="refresh the table in place with rates per second until Ctrl-C"),
    interval: float = typer.Option(1.0, metavar="S", show_default=True, help="seconds between refreshes (--watch)"),
    server: Optional[str] = server_option(),
    server_key: Optional[str] = server_key_option(),
):
    """Show the node's state: workers, clients, traffic, drops (--cluster: the whole cluster)."""
    from .status_view import render_cluster, render_status, watch_status
    if watch and (as_json or cluster):
        fail(EXIT_USAGE, "--watch shows the node table: it does not combine with --json or --cluster")
    if interval <= 0:
        fail(EXIT_USAGE, "--interval must be more than 0")
    if watch:
        _sigterm_as_interrupt()
        with session(server, "tscale-status", server_key) as c:
            watch_status(c.status, interval)
        return
    with session(server, "tscale-status", server_key) as c:
        st = c.status()
    if as_json:
        if cluster:
            st = {"schema": st.get("schema"), "node": st.get("node"), "cluster": st.get("cluster"),
                  "workers": [{"index": w.get("index"), "peers": w.get("peers", {})} for w in st.get("workers", [])]}
        print(json.dumps(st, indent=2, sort_keys=True))
    elif cluster:
        render_cluster(st)
    else:
        render_status(st)


@command()
def bench(
    pubs: int = typer.Option(1, metavar="N", show_default=True, help="publisher processes"),
    subs: int = typer.Option(1, metavar="N", show_default=True, help="subscriber processes"),
    size: int = typer.Option(128, metavar="BYTES", show_default=True, help="payload bytes"),
    count: int = typer.Option(100_000, metavar="N", show_default=True,
                              help="events to publish in total (requests with --request)"),
    queue: Optional[str] = typer.Option(None, metavar="GROUP", help="subscribers join this queue group"),
    request: bool = typer.Option(False, "--request",
                                 help="measure request/reply round trips (latency percentiles) instead"),
    rate: Optional[float] = typer.Option(None, metavar="PER_S",
                                         help="requests per second (with --request; default: back to back)"),
    name: str = typer.Option("bench.loadgen", metavar="NAME", show_default=True, help="event name to use"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    server: Optional[str] = server_option(),
):
    """Load-test a running node: delivery rate, loss and CPU per event (--request: latency percentiles).

    Pub/sub: events published and delivered per second, events lost, CPU per event of the node, the
    publishers and the subscribers.  --request: round-trip latency percentiles (p50 .. p99.9, max)
    and node CPU per request."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .address import check_reachable
    from .bench.loadgen import expected_total, run
    from .errors import ConnectError
    if pubs < 1 or subs < 1 or count < 1 or size < 0:
        fail(EXIT_USAGE, "--pubs, --subs and --count must be at least 1, --size at least 0")
    addr, host, port = _address(server)
    try:
        check_reachable(host, port)
        if as_json:
            res = run(addr, pubs=pubs, subs=subs, size=size, count=count, queue=queue, request=request,
                      rate=rate, name=name)
        else:
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                          TimeElapsedColumn(), transient=True) as bar:
                task = bar.add_task("requests" if request else "events delivered",
                                    total=expected_total(count, subs, queue, request))
                res = run(addr, pubs=pubs, subs=subs, size=size, count=count, queue=queue, request=request,
                          rate=rate, name=name, progress=lambda d, t: bar.update(task, completed=d, total=t))
    except ConnectError as exc:
        fail(EXIT_UNREACHABLE, str(exc))
    except Exception as exc:  # noqa: BLE001 - a failed measurement is reported in one line
        fail(EXIT_FAILED, f"benchmark failed: {exc}")
    if as_json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return
    t = Table(title=f"tscale bench against {addr}", show_header=True, header_style="bold")
    t.add_column("measure")
    t.add_column("value", justify="right")
    def fmt(v, unit=""):
        if v is None:
            return "-"
        if isinstance(v, int) or (isinstance(v, float) and abs(v) >= 100):
            return f"{v:,.0f}{unit}"
        return f"{v:,.2f}{unit}"
    if request:
        rows = [("requests", fmt(res.get("requests"))), ("ok", fmt(res.get("ok"))), ("errors", fmt(res.get("errors"))),
                ("p50", fmt(res.get("p50"), " us")), ("p90", fmt(res.get("p90"), " us")),
                ("p99", fmt(res.get("p99"), " us")), ("p99.9", fmt(res.get("p999"), " us")),
                ("max", fmt(res.get("max"), " us")), ("node CPU per request", fmt(res.get("server_cpu_us"), " us"))]
    else:
        rows = [("published", fmt(res.get("sent"))), ("expected at subscribers", fmt(res.get("expected"))),
                ("received", fmt(res.get("received"))), ("lost", fmt(res.get("lost"))),
                ("delivered per second", fmt(res.get("rate"), " /s")),
                ("published per second", fmt(res.get("publish_rate"), " /s")),
                ("per subscriber", ", ".join(f"{n:,}" for n in res.get("per_subscriber", []))),
                ("node CPU per delivered event", fmt(res.get("server_cpu_us"), " us")),
                ("publisher CPU per event", fmt(res.get("pub_cpu_us"), " us")),
                ("subscriber CPU per event", fmt(res.get("sub_cpu_us"), " us"))]
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)
    for note in res.get("notes", []):
        typer.echo(f"note: {note}", err=True)


# -- tscale keys (docs/SECURITY.md) ----------------------------------------------------------
@command()
def keys(
    new_client: Optional[str] = typer.Option(None, "--new-client", metavar="FILE",
                                             help="create a client key pair in FILE (mode 0600); print its public key"),
    hash_password: bool = typer.Option(False, "--hash-password",
                                       help="read a password from stdin, print its scrypt hash for the users file"),
    new_secret: bool = typer.Option(False, "--new-secret", help="print a fresh random cluster key"),
    data_dir: Optional[str] = _node_option("~/.local/share/tscale", "the node's data directory", "DIR",
                                           env="TSCALE_DATA_DIR"),
    config: Optional[str] = _node_option("none", "the node's TOML config file", "FILE", env="TSCALE_CONFIG"),
    cluster_key_file: Optional[str] = _node_option("none", "the cluster key file of the node", "FILE",
                                                   env="TSCALE_CLUSTER_KEY_FILE"),
):
    """Print the CURVE public key clients give as --server-key (creates the node key pair if needed), or make keys."""
    import secrets

    from . import keys as k
    from .config import ConfigError, load
    if new_secret:
        print(secrets.token_urlsafe(32))
        return
    if hash_password:
        from .auth import hash_password as hp
        pw = sys.stdin.readline().rstrip("\n")
        if not pw:
            fail(EXIT_USAGE, "no password on stdin")
        print(hp(pw))
        return
    if new_client:
        public, secret = k.new_client_pair()
        try:
            k.write_pair(new_client, public, secret, "tscale client key")
        except OSError as exc:
            fail(EXIT_FAILED, f"cannot create {new_client}: {exc}")
        print(public)
        return
    try:
        cfg = load(dict(data_dir=data_dir, config=config, cluster_key_file=cluster_key_file))
    except ConfigError as exc:
        fail(EXIT_USAGE, str(exc))
    secret = cfg.cluster_key or cfg.token
    try:
        print(k.cluster_server_pair(secret)[0] if secret else k.node_pair(cfg.data_dir)[0])
    except k.KeyFileError as exc:
        fail(EXIT_FAILED, str(exc))
# -- end of tscale keys -----------------------------------------------------------------------


@command()
def version():
    """Print the version."""
    print(__version__)


from .cli_queue import consume, queue_app  # noqa: E402  (its commands use the helpers above)

app.add_typer(queue_app, name="queue")
command()(consume)


def _click_exceptions():
    try:                      # typer >= 0.20 carries its own copy of click
        from typer._click import exceptions
    except ImportError:       # pragma: no cover - older typer uses click itself
        from click import exceptions
    return exceptions


def main():
    """Run the CLI; usage errors and unexpected exceptions become one `tscale:` line (exit 2 and 1)."""
    exc_mod = _click_exceptions()
    try:
        rc = app(standalone_mode=False)
    except exc_mod.NoArgsIsHelpError:      # `tscale` alone: the help is printed already
        rc = EXIT_USAGE
    except exc_mod.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        typer.echo("tscale: " + " ".join(exc.format_message().split()) + where, err=True)
        rc = EXIT_USAGE
    except exc_mod.ClickException as exc:
        typer.echo("tscale: " + " ".join(exc.format_message().split()), err=True)
        rc = exc.exit_code
    except typer.Abort:
        rc = EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - a bug still gets one line, not a traceback
        typer.echo(f"tscale: unexpected error: {type(exc).__name__}: {' '.join(str(exc).split())}", err=True)
        rc = EXIT_FAILED
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
