"""`tscale queue add/ls/info/rm/purge`, `tscale consume`, and the confirm part of `tscale pub`."""
from __future__ import annotations

import collections
import json
import sys
from typing import Optional

import typer

# tscale/cli.py imports this module at its end, so its helpers are imported inside the commands
# (a module-level import would be circular when cli runs as __main__).
EXIT_FAILED, EXIT_USAGE = 1, 2
ServerOpt = typer.Option(None, "--server", "-s", envvar="TSCALE_SERVER", show_envvar=True, show_default="127.0.0.1:7400",
                         metavar="HOST:PORT", help="node address")   # as cli.server_option()


def _fail(code: int, message: str):
    from .cli import fail
    fail(code, message)


def _session(server, name: str):
    from .cli import session
    return session(server, name)

queue_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Durable queues: events kept on disk until a consumer group acknowledges them.")

CONFIRM_WINDOW = 1000   # outstanding confirms of `tscale pub --confirm --count N`


def _floats(text: Optional[str], what: str):
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(EXIT_USAGE, f"{what}: use seconds separated by commas, e.g. 1,5,30")


@queue_app.command("add")
def add(
    name: str = typer.Argument(..., help="queue name: A-Z a-z 0-9 _ -"),
    subjects: str = typer.Option(..., "--subjects", help="PATTERN[,PATTERN...] of the events to store"),
    retention: Optional[str] = typer.Option(None, help="limits (keep up to the limits) or work (delete once "
                                                      "acked; one group) [default limits]"),
    max_msgs: Optional[int] = typer.Option(None, help="keep at most N events (0 = no limit) [default 0]"),
    max_bytes: Optional[int] = typer.Option(None, help="keep at most N payload bytes (0 = no limit) [default 0]"),
    max_age: Optional[float] = typer.Option(None, help="drop events older than S seconds (0 = never) [default 0]"),
    discard: Optional[str] = typer.Option(None, help="when full: old (drop the oldest) or new (refuse) "
                                                    "[default old]"),
    ack_wait: Optional[float] = typer.Option(None, help="redeliver if not acked within S seconds [default 30]"),
    max_deliver: Optional[int] = typer.Option(None, help="after N deliveries publish to $DLQ.<queue> "
                                                        "(0 = no limit) [default 0]"),
    backoff: Optional[str] = typer.Option(None, help="S[,S...] waits of successive deliveries (replaces "
                                                    "--ack-wait)"),
    dedupe_window: Optional[float] = typer.Option(None, help="msg ids are remembered S seconds [default 120]"),
    home: Optional[str] = typer.Option(None, help="the node that holds the queue: its node name; the add is "
                                                 "forwarded there [default: the node you are connected to]"),
    sync: Optional[str] = typer.Option(None, help="always (fsync before every confirm) or interval (confirm "
                                                 "after the write, fsync at most 1 s later: a machine crash "
                                                 "can lose the last second) [default always]"),
    server: Optional[str] = ServerOpt,
):
    """Create a queue (the same definition again is a no-op)."""
    with _session(server, "tscale-queue") as c:
        info = c.queue_add(name, subjects, retention=retention, max_msgs=max_msgs, max_bytes=max_bytes,
                           max_age=max_age, discard=discard, ack_wait=ack_wait, max_deliver=max_deliver,
                           backoff=_floats(backoff, "--backoff"), dedupe_window=dedupe_window, home=home,
                           sync=sync)
    cfg = info["config"]
    print(f"queue {cfg['name']} on {cfg['home']} stores {', '.join(cfg['subjects'])} ({cfg['retention']})")


@queue_app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="one JSON array"), server: Optional[str] = ServerOpt):
    """List the node's queues."""
    with _session(server, "tscale-queue") as c:
        queues = c.queue_ls()
    if as_json:
        print(json.dumps(queues, indent=2, sort_keys=True))
        return
    if not queues:
        print("no queues")
        return
    print(f"{'queue':<24} {'retention':<9} {'messages':>9} {'bytes':>12} {'first':>8} {'last':>8}  groups  subjects")
    for d in queues:
        cfg = d["config"]
        print(f"{cfg['name']:<24} {cfg['retention']:<9} {d['messages']:>9,} {d['bytes']:>12,} {d['first_seq']:>8} "
              f"{d['last_seq']:>8}  {len(d['groups']):>6}  {','.join(cfg['subjects'])}")


@queue_app.command("info")
def info(name: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json"),
         server: Optional[str] = ServerOpt):
    """A queue's definition and figures: messages, bytes, sequences, disk; per group lag and acks."""
    with _session(server, "tscale-queue") as c:
        d = c.queue_info(name)
    if as_json:
        print(json.dumps(d, indent=2, sort_keys=True))
        return
    cfg = d["config"]
    print(f"queue {cfg['name']} (home {cfg['home']}, worker {d['worker']}): {', '.join(cfg['subjects'])}")
    print(f"  retention {cfg['retention']}, max_msgs {cfg['max_msgs'] or '-'}, max_bytes {cfg['max_bytes'] or '-'}, "
          f"max_age {cfg['max_age'] or '-'}, discard {cfg['discard']}, ack_wait {cfg['ack_wait']:g}s, "
          f"max_deliver {cfg['max_deliver'] or '-'}, backoff {cfg['backoff'] or '-'}, "
          f"dedupe_window {cfg['dedupe_window']:g}s, sync {cfg.get('sync', 'always')}")
    print(f"  messages {d['messages']:,}  bytes {d['bytes']:,}  seq {d['first_seq']}..{d['last_seq']}  "
          f"discarded {d['discarded']:,}  database on disk {d['db_disk_bytes']:,} bytes (whole worker)")
    for g, s in sorted(d["groups"].items()):
        print(f"  group {g}: pending {s['pending']:,}  ack_pending {s['ack_pending']:,}  acked {s['acked']:,}  "
              f"redelivered {s['redelivered']:,}  dead_lettered {s['dead_lettered']:,}  next seq {s['cursor']}")


@queue_app.command("rm")
def rm(name: str = typer.Argument(...), server: Optional[str] = ServerOpt):
    """Delete a queue and every event it holds."""
    with _session(server, "tscale-queue") as c:
        c.queue_rm(name)
    print(f"queue {name} removed")


@queue_app.command("purge")
def purge(name: str = typer.Argument(...), server: Optional[str] = ServerOpt):
    """Delete every event of a queue; groups continue after the last sequence."""
    with _session(server, "tscale-queue") as c:
        n = c.queue_purge(name)
    print(f"queue {name}: {n} events purged")


def publish_confirmed(c, name: str, payload: bytes, headers, count: int, msg_id: Optional[str]) -> None:
    """`tscale pub --confirm`: a window of outstanding confirms; one line per event; exit 1 on any failure."""
    from .errors import TscaleError
    window: collections.deque = collections.deque()
    failed = 0

    def settle():
        nonlocal failed
        f = window.popleft()
        try:
            ack = f.result(10.0)
            print(f"stored in {ack.queue} seq {ack.seq}" + (" (duplicate)" if ack.duplicate else ""))
        except TscaleError as exc:
            failed += 1
            print(f"not stored: {exc}", file=sys.stderr)
        except Exception:   # concurrent.futures.TimeoutError
            failed += 1
            c._q_handlers.pop(f.reply, None)
            print("not stored: no queue confirmed within 10s", file=sys.stderr)

    for _ in range(count):
        window.append(c.publish_future(name, payload, headers, msg_id))
        if len(window) >= CONFIRM_WINDOW:
            settle()
    while window:
        settle()
    if failed:
        _fail(EXIT_FAILED, f"{failed} of {count} events were not stored by any queue")


def _render(m, as_json: bool) -> str:
    if as_json:
        try:
            data, enc = m.data.decode(), "utf-8"
        except UnicodeDecodeError:
            data, enc = m.data.hex(), "hex"
        return json.dumps({"queue": m.queue, "group": m.group, "seq": m.seq, "name": m.name, "data": data,
                           "encoding": enc, "headers": m.headers or {}, "deliveries": m.deliveries, "time": m.time})
    again = f" (delivery {m.deliveries})" if m.deliveries > 1 else ""
    return f"[{m.name}] #{m.seq}{again} {m.data.decode(errors='replace')}"


def consume(
    queue: str = typer.Argument(..., help="queue name"),
    group: str = typer.Option(..., "--group", help="consumer group (created at --start if new)"),
    count: int = typer.Option(0, help="exit after this many events (0 = run until interrupted)"),
    timeout: float = typer.Option(0, help="exit 1 if no event arrives for this many seconds (0 = wait forever)"),
    no_ack: bool = typer.Option(False, "--no-ack", help="do not ack: the events come back after ack_wait"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
    start: Optional[str] = typer.Option(None, help="where a new group starts: first, last or SEQ [default first]"),
    server: Optional[str] = ServerOpt,
):
    """Print a queue's events and ack each after printing it."""
    import time

    from .cli import _sigterm_as_interrupt
    from .errors import TscaleError
    _sigterm_as_interrupt()
    if start is not None and start not in ("first", "last") and not start.isdigit():
        _fail(EXIT_USAGE, "--start must be first, last or a sequence number")
    got = 0
    with _session(server, "tscale-consume") as c:
        try:
            cons = c.consumer(queue, group, start=start, batch=min(count, 100) if count else 100)
        except TscaleError as exc:
            _fail(EXIT_USAGE, str(exc))
        last = time.monotonic()
        try:
            while count == 0 or got < count:
                want = min(100, count - got) if count else 100
                wait = 5.0 if not timeout else max(0.05, min(5.0, timeout - (time.monotonic() - last)))
                msgs = cons.fetch(want, timeout=wait)
                if not msgs:
                    if timeout and time.monotonic() - last >= timeout:
                        _fail(EXIT_FAILED, f"no event within {timeout:g}s ({got} received)")
                    continue
                last = time.monotonic()
                for m in msgs:
                    print(_render(m, as_json), flush=True)
                    if not no_ack:
                        m.ack()
                    got += 1
            c.flush()
        except KeyboardInterrupt:
            pass
