"""The `tscale` command: run a node, publish, subscribe, request, inspect.

Exit codes: 0 ok; 1 the operation failed (timeout, no responders, server
error); 2 bad usage or configuration; 3 the node could not be reached.
"""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import List, Optional

import typer

from . import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="tscale: a decentralized event router on ZeroMQ.")

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3

ServerOpt = typer.Option(None, "--server", "-s", help="node address HOST:PORT [env TSCALE_SERVER, default 127.0.0.1:7400]")


def _fail(code: int, message: str):
    typer.echo(f"tscale: {message}", err=True)
    raise typer.Exit(code)


# -- security options of the client commands (docs/SECURITY.md) ------------------------------
ServerKeyOpt = typer.Option(None, "--server-key", help="the node's CURVE public key (`tscale keys`): turns on "
                            "CURVE [env TSCALE_SERVER_KEY]")


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
            _fail(EXIT_USAGE, str(exc))
    return creds
# -- end of security options ------------------------------------------------------------------


def _client(server: Optional[str], name: str, server_key: Optional[str] = None):
    from .client import Client
    from .errors import ConnectError, TscaleError
    try:
        return Client(server, name=name, connect_timeout=5.0, **_credentials(server_key))
    except ConnectError as exc:
        _fail(EXIT_UNREACHABLE, str(exc))
    except TscaleError as exc:
        _fail(EXIT_USAGE, str(exc))


@contextmanager
def _session(server: Optional[str], name: str, server_key: Optional[str] = None):
    """A connected client; any tscale error becomes exit code 1 with its one-line reason."""
    from .errors import TscaleError
    c = _client(server, name, server_key)
    try:
        yield c
    except TscaleError as exc:
        _fail(EXIT_FAILED, str(exc))
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
            _fail(EXIT_USAGE, f"header {h!r}: use KEY=VALUE")
        out[k] = v
    return out or None


@app.command()
def up(
    listen: Optional[str] = typer.Option(None, help="HOST:PORT of worker 0; worker i listens on PORT+i [default 0.0.0.0:7400]"),
    workers: Optional[int] = typer.Option(None, help="worker processes [default: CPU count]"),
    name: Optional[str] = typer.Option(None, help="node name [default: hostname]"),
    data_dir: Optional[str] = typer.Option(None, help="data directory [default: ~/.local/share/tscale]"),
    config: Optional[str] = typer.Option(None, help="TOML config file (see configs-optional/)"),
    log_level: Optional[str] = typer.Option(None, help="debug, info, warning or error [default info]"),
    log_format: Optional[str] = typer.Option(None, help="text or json [default text]"),
    max_payload: Optional[int] = typer.Option(None, help="largest payload accepted, bytes [default 1048576]"),
    token: Optional[str] = typer.Option(None, help="require clients and peers to present this token"),
    join: Optional[str] = typer.Option(None, help="HOST:PORT[,HOST:PORT...] of nodes already in the cluster"),
    cluster: Optional[str] = typer.Option(None, help="cluster name; nodes only join their own [default tscale]"),
    no_discovery: Optional[bool] = typer.Option(None, "--no-discovery", help="do not send or listen to UDP beacons"),
    discovery_port: Optional[int] = typer.Option(None, help="UDP port of the beacons [default 7401]"),
    advertise: Optional[str] = typer.Option(None, help="HOST:PORT other nodes should use to reach this one"),
    curve: Optional[bool] = typer.Option(None, "--curve", help="CURVE encryption on every TCP port (docs/SECURITY.md)"),
    cluster_key: Optional[str] = typer.Option(None, help="cluster secret: authenticated, encrypted cluster (implies "
                                              "--curve); prefer TSCALE_CLUSTER_KEY or --cluster-key-file"),
    cluster_key_file: Optional[str] = typer.Option(None, help="file holding the cluster secret (mode 0600)"),
    users_file: Optional[str] = typer.Option(None, help="TOML users file: credentials and permissions; reloaded "
                                             "on SIGHUP"),
):
    """Run a node: a supervisor and one worker per core. Stops cleanly on SIGTERM/SIGINT."""
    from .config import ConfigError, load
    from .supervisor import exec_node
    flags = dict(listen=listen, workers=workers, name=name, data_dir=data_dir, config=config,
                 log_level=log_level, log_format=log_format, max_payload=max_payload, token=token,
                 join=join, cluster=cluster, no_discovery=no_discovery, discovery_port=discovery_port,
                 advertise=advertise, curve=curve, cluster_key=cluster_key, cluster_key_file=cluster_key_file,
                 users_file=users_file)
    try:
        cfg = load(flags)
    except ConfigError as exc:
        _fail(EXIT_USAGE, str(exc))
    exec_node(cfg)   # replaces this process (same pid) with a supervisor that never loads the CLI


@app.command()
def pub(
    name: str = typer.Argument(..., help="event name, e.g. orders.eu.created"),
    data: Optional[str] = typer.Argument(None, help="payload; read from stdin when omitted"),
    header: List[str] = typer.Option([], "--header", "-H", help="KEY=VALUE, repeatable"),
    count: int = typer.Option(1, help="publish the event this many times"),
    confirm: bool = typer.Option(False, "--confirm", help="wait until a durable queue stored each event; print "
                                                          "where; exit 1 if no queue stored it"),
    msg_id: Optional[str] = typer.Option(None, "--msg-id", help="with --confirm: idempotency key within the "
                                                                "queue's dedupe window"),
    server: Optional[str] = ServerOpt,
    server_key: Optional[str] = ServerKeyOpt,
):
    """Publish an event."""
    payload = sys.stdin.buffer.read() if data is None else data.encode()
    headers = _headers(header)
    if msg_id is not None and not confirm:
        _fail(EXIT_USAGE, "--msg-id needs --confirm")
    with _session(server, "tscale-pub", server_key) as c:
        if confirm:
            from .cli_queue import publish_confirmed
            publish_confirmed(c, name, payload, headers, count, msg_id)
            return
        for _ in range(count):
            c.publish(name, payload, headers=headers)
        c.flush()
        if c.last_error is not None:
            _fail(EXIT_FAILED, str(c.last_error))


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


@app.command()
def sub(
    pattern: str = typer.Argument(..., help="name or pattern: * is one token, > the rest"),
    queue: Optional[str] = typer.Option(None, "--queue", "-q", help="join this queue group"),
    count: int = typer.Option(0, help="exit after this many events (0 = run until interrupted)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
    timeout: float = typer.Option(0, help="exit 1 if no event arrives for this many seconds (0 = wait forever)"),
    server: Optional[str] = ServerOpt,
    server_key: Optional[str] = ServerKeyOpt,
):
    """Print events as they arrive."""
    from .errors import Timeout
    _sigterm_as_interrupt()
    got = 0
    with _session(server, "tscale-sub", server_key) as c:
        s = c.subscribe(pattern, queue=queue)
        print(f"subscribed to {pattern}" + (f" in queue group {queue}" if queue else ""), file=sys.stderr, flush=True)
        try:
            while count == 0 or got < count:
                try:
                    msg = s.next_msg(timeout=timeout or None)
                except Timeout:
                    _fail(EXIT_FAILED, f"no event within {timeout:g}s ({got} received)")
                print(_render(msg, as_json), flush=True)
                got += 1
        except KeyboardInterrupt:
            pass


@app.command()
def req(
    name: str = typer.Argument(...),
    data: str = typer.Argument(""),
    header: List[str] = typer.Option([], "--header", "-H", help="KEY=VALUE, repeatable"),
    timeout: float = typer.Option(2.0, help="seconds to wait for the reply"),
    as_json: bool = typer.Option(False, "--json"),
    server: Optional[str] = ServerOpt,
    server_key: Optional[str] = ServerKeyOpt,
):
    """Send a request and print the reply."""
    from .errors import NoResponders, Timeout
    with _session(server, "tscale-req", server_key) as c:
        try:
            msg = c.request(name, data.encode(), timeout=timeout, headers=_headers(header))
        except NoResponders:
            _fail(EXIT_FAILED, f"no responders for {name}")
        except Timeout:
            _fail(EXIT_FAILED, f"no reply within {timeout:g}s")
        if as_json:
            print(_render(msg, True))
        else:
            sys.stdout.buffer.write(msg.data + (b"" if msg.data.endswith(b"\n") else b"\n"))


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="machine-readable (schema in docs/STATUS.md)"),
    cluster: bool = typer.Option(False, "--cluster", help="show every node of the cluster and this node's links"),
    server: Optional[str] = ServerOpt,
    server_key: Optional[str] = ServerKeyOpt,
):
    """Show the node's state: workers, clients, traffic, drops (--cluster: the whole cluster)."""
    from .status_view import render_cluster, render_status
    with _session(server, "tscale-status", server_key) as c:
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


@app.command()
def bench(
    pubs: int = typer.Option(1, help="publisher processes"),
    subs: int = typer.Option(1, help="subscriber processes"),
    size: int = typer.Option(128, help="payload bytes"),
    count: int = typer.Option(100_000, help="events to publish in total (requests with --request)"),
    queue: Optional[str] = typer.Option(None, help="subscribers join this queue group"),
    request: bool = typer.Option(False, "--request", help="measure request/reply round trips instead"),
    rate: Optional[float] = typer.Option(None, help="requests per second (with --request; default: back to back)"),
    name: str = typer.Option("bench.loadgen", help="event name to use"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    server: Optional[str] = ServerOpt,
):
    """Load-test a running node: rates counted at the receivers, loss, latency percentiles, CPU per event."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .client import default_server
    from .errors import ConnectError
    from .bench.loadgen import run
    if pubs < 1 or subs < 1 or count < 1 or size < 0:
        _fail(EXIT_USAGE, "--pubs, --subs and --count must be at least 1, --size at least 0")
    addr = server or default_server()
    try:
        if as_json:
            res = run(addr, pubs=pubs, subs=subs, size=size, count=count, queue=queue, request=request,
                      rate=rate, name=name)
        else:
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                          TimeElapsedColumn(), transient=True) as bar:
                task = bar.add_task("requests" if request else "events delivered", total=count)
                res = run(addr, pubs=pubs, subs=subs, size=size, count=count, queue=queue, request=request,
                          rate=rate, name=name, progress=lambda d, t: bar.update(task, completed=d, total=t))
    except ConnectError as exc:
        _fail(EXIT_UNREACHABLE, str(exc))
    except Exception as exc:  # noqa: BLE001 - a failed measurement is reported in one line
        _fail(EXIT_FAILED, f"benchmark failed: {exc}")
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
@app.command()
def keys(
    new_client: Optional[str] = typer.Option(None, "--new-client", metavar="FILE",
                                             help="create a client key pair in FILE (mode 0600); print its public key"),
    hash_password: bool = typer.Option(False, "--hash-password",
                                       help="read a password from stdin, print its scrypt hash for the users file"),
    new_secret: bool = typer.Option(False, "--new-secret", help="print a fresh random cluster key"),
    data_dir: Optional[str] = typer.Option(None, help="the node's data directory [default as for tscale up]"),
    config: Optional[str] = typer.Option(None, help="the node's TOML config file"),
    cluster_key_file: Optional[str] = typer.Option(None, help="the cluster key file of the node"),
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
            _fail(EXIT_USAGE, "no password on stdin")
        print(hp(pw))
        return
    if new_client:
        public, secret = k.new_client_pair()
        try:
            k.write_pair(new_client, public, secret, "tscale client key")
        except OSError as exc:
            _fail(EXIT_FAILED, f"cannot create {new_client}: {exc}")
        print(public)
        return
    try:
        cfg = load(dict(data_dir=data_dir, config=config, cluster_key_file=cluster_key_file))
    except ConfigError as exc:
        _fail(EXIT_USAGE, str(exc))
    secret = cfg.cluster_key or cfg.token
    try:
        print(k.cluster_server_pair(secret)[0] if secret else k.node_pair(cfg.data_dir)[0])
    except k.KeyFileError as exc:
        _fail(EXIT_FAILED, str(exc))
# -- end of tscale keys -----------------------------------------------------------------------


@app.command()
def version():
    """Print the version."""
    print(__version__)


from .cli_queue import consume, queue_app  # noqa: E402  (its commands use the helpers above)

app.add_typer(queue_app, name="queue")
app.command()(consume)


def main():
    app()


if __name__ == "__main__":
    main()
