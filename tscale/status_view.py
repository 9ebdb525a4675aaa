"""Human rendering of the status document (rich tables)."""
from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def _mb(n: int) -> str:
    return f"{n / 1048576:.1f} MB"


def _dur(s: float) -> str:
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


RATE_KEYS = ("events_in", "events_out", "dropped")


def rates(prev: dict | None, cur: dict, seconds: float) -> dict:
    """Per-second rates of the counters between two status documents, by worker index (and "total"):
    {index: {"events_in": r, ...}}.  A worker that restarted in between (its counters began again at
    0) or is missing from either document has no entry."""
    if not prev or seconds <= 0:
        return {}
    before = {w.get("index"): w for w in prev.get("workers", [])}
    out: dict = {}
    for w in cur.get("workers", []):
        b = before.get(w.get("index"))
        if b is None or b.get("pid") != w.get("pid") or b.get("restarts") != w.get("restarts"):
            continue
        out[w.get("index")] = {k: max(0, w.get(k, 0) - b.get(k, 0)) / seconds for k in RATE_KEYS}
    if out and len(out) == len(cur.get("workers", [])):
        out["total"] = {k: sum(r[k] for r in out.values()) for k in RATE_KEYS}
    return out


def _rate(r: dict | None, key: str) -> str:
    return "-" if r is None else f"{r[key]:,.0f}"


def status_renderable(st: dict, per_second: dict | None = None):
    """The node table (and the slow consumers); with `per_second` (see `rates`) also rate columns."""
    node = st.get("node", {})
    tot = st.get("totals", {})
    head = (f"[bold]{node.get('name', '?')}[/bold]  id {node.get('id', '?')}  version {node.get('version', '?')}  "
            f"up {_dur(node.get('uptime_s', 0))}  listen {node.get('listen', '?')}  "
            f"supervisor pid {node.get('supervisor_pid', '?')}")
    t = Table(show_header=True, header_style="bold")
    cols = ["worker", "pid", "alive", "restarts", "CPU %", "RSS", "events in", "events out", "dropped"]
    if per_second is not None:
        cols += ["in/s", "out/s", "dropped/s"]
    for col in cols + ["clients", "subs"]:
        t.add_column(col, justify="right")

    def rate_cells(key):
        if per_second is None:
            return []
        r = per_second.get(key)
        return [_rate(r, k) for k in RATE_KEYS]

    for w in st.get("workers", []):
        t.add_row(str(w.get("index")), str(w.get("pid")), "yes" if w.get("alive", True) else "[red]NO[/red]",
                  str(w.get("restarts", 0)), f"{w.get('cpu_percent', 0):.1f}", _mb(w.get("rss_bytes", 0)),
                  f"{w.get('events_in', 0):,}", f"{w.get('events_out', 0):,}",
                  f"{w.get('dropped', 0):,}", *rate_cells(w.get("index")),
                  str(w.get("clients", 0)), str(w.get("subscriptions", 0)))
    t.add_row("total", "", "", "", f"{tot.get('cpu_percent', 0):.1f}", _mb(tot.get("rss_bytes", 0)),
              f"{tot.get('events_in', 0):,}", f"{tot.get('events_out', 0):,}", f"{tot.get('dropped', 0):,}",
              *rate_cells("total"), str(tot.get("clients", 0)), str(tot.get("subscriptions", 0)), style="bold")
    parts = [head, t]
    sec = st.get("security")
    if sec:
        denied = ", ".join(f"{u} {n:,}" for u, n in sorted(sec.get("permission_denied", {}).items()))
        parts.append(Text(f"security: clients {sec.get('clients')} ({sec.get('clients_auth')})  peers {sec.get('peers')} "
                          f"({sec.get('peers_auth')})  control {sec.get('control')}"
                          + (f"  server key {sec['server_key']}" if sec.get("server_key") else "")
                          + (f"  permission denied: {denied}" if denied else "")))
    slow = [(w["index"], s) for w in st.get("workers", []) for s in w.get("slow_clients", [])]
    if slow:
        s = Table(title="slow consumers (events dropped)", show_header=True)
        s.add_column("worker", justify="right")
        s.add_column("client")
        s.add_column("dropped", justify="right")
        for idx, c in slow:
            s.add_row(str(idx), c["client"], f"{c['dropped']:,}")
        parts.append(s)
    queues = [(w["index"], name, q) for w in st.get("workers", []) for name, q in (w.get("queues") or {}).items()]
    if queues:
        qt = Table(title="durable queues (disk: the worker's database)", show_header=True, header_style="bold")
        widest = max(len(name) for _, name, _ in queues)
        for col in ("queue", "worker", "messages", "bytes", "seq", "disk", "group", "pending", "ack pend",
                    "redeliv", "dead"):
            qt.add_column(col, justify="left" if col in ("queue", "group") else "right", no_wrap=True,
                          min_width=widest if col == "queue" else None)
        for idx, name, q in sorted(queues, key=lambda x: x[1]):
            head = [name, str(idx), f"{q['messages']:,}", f"{q['bytes']:,}", f"{q['first_seq']}..{q['last_seq']}",
                    _mb(q.get("db_disk_bytes", 0))]
            groups = sorted(q.get("groups", {}).items()) or [("-", None)]
            for g, f in groups:
                tail = ([g, f"{f['pending']:,}", f"{f['ack_pending']:,}", f"{f['redelivered']:,}",
                         f"{f['dead_lettered']:,}"] if f else ["-", "", "", "", ""])
                qt.add_row(*head, *tail)
                head = [""] * len(head)
        parts.append(qt)
    return Group(*parts)


def _console() -> Console:
    return Console(width=max(Console().width, 110))


def render_status(st: dict, console: Console | None = None) -> None:
    (console or _console()).print(status_renderable(st))


def watch_status(fetch, interval: float, console: Console | None = None) -> None:
    """Fetch the status every `interval` seconds and redraw the table in place, with rates per second
    over the last interval, until KeyboardInterrupt (Ctrl-C, or SIGTERM made into one)."""
    console = console or _console()
    prev, prev_t = None, 0.0
    st = fetch()
    t = time.monotonic()
    try:
        with Live(status_renderable(st, {}), console=console, auto_refresh=False, transient=False) as live:
            while True:
                live.update(status_renderable(st, rates(prev, st, t - prev_t)), refresh=True)
                time.sleep(max(0.0, interval - (time.monotonic() - t)))
                prev, prev_t = st, t
                st = fetch()
                t = time.monotonic()
    except KeyboardInterrupt:
        pass


def render_cluster(st: dict, console: Console | None = None) -> None:
    """Every node this node knows, its overlay links, and nodes lost recently."""
    console = console or _console()
    cl = st.get("cluster") or {}
    role = "root" if cl.get("root") else f"child of {cl.get('parent')}"
    console.print(f"cluster [bold]{cl.get('name', '?')}[/bold]  this node {cl.get('node_id', '?')} ({role})  "
                  f"discovery {'on' if cl.get('discovery') else 'off'}  control port {cl.get('control_port')}")
    m = Table(title="nodes", show_header=True, header_style="bold")
    for col in ("node", "id", "address", "workers", "uptime", "events in", "events out"):
        m.add_column(col, justify="right" if col in ("workers", "events in", "events out") else "left")
    for mem in cl.get("members", []):
        m.add_row(mem["name"] + (" (this)" if mem.get("self") else ""), mem["id"], mem["address"],
                  str(mem.get("workers")), _dur(mem.get("uptime_s", 0)), f"{mem.get('events_in', 0):,}",
                  f"{mem.get('events_out', 0):,}")
    console.print(m)
    peer_traffic: dict = {}
    for w in st.get("workers", []):
        for pid, p in (w.get("peers") or {}).items():
            t = peer_traffic.setdefault(pid, [0, 0])
            t[0] += p.get("events_out", 0)
            t[1] += p.get("dropped", 0)
    lk = Table(title="links of this node", show_header=True, header_style="bold")
    for col in ("peer", "id", "role", "RTT ms", "events sent", "dropped", "control msgs"):
        lk.add_column(col)
    for link in cl.get("links", []):
        sent, dropped = peer_traffic.get(link["peer"], (0, 0))
        lk.add_row(link["name"], link["peer"], link["role"],
                   "-" if link.get("rtt_ms") is None else f"{link['rtt_ms']:.2f}", f"{sent:,}", f"{dropped:,}",
                   str(link.get("control_msgs", 0)))
    console.print(lk)
    lost = cl.get("lost", [])
    if lost:
        t = Table(title="nodes lost recently", show_header=True)
        for col in ("node", "id", "ago", "why"):
            t.add_column(col)
        for x in lost:
            t.add_row(x["name"], x["id"], f"{x['ago_s']:.0f}s", x["why"])
        console.print(t)
