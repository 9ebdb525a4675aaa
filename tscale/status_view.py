"""Human rendering of the status document (rich tables)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _mb(n: int) -> str:
    return f"{n / 1048576:.1f} MB"


def _dur(s: float) -> str:
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def render_status(st: dict, console: Console | None = None) -> None:
    console = console or Console(width=max(Console().width, 110))
    node = st.get("node", {})
    tot = st.get("totals", {})
    console.print(f"[bold]{node.get('name', '?')}[/bold]  id {node.get('id', '?')}  version {node.get('version', '?')}  "
                  f"up {_dur(node.get('uptime_s', 0))}  listen {node.get('listen', '?')}  "
                  f"supervisor pid {node.get('supervisor_pid', '?')}")
    t = Table(show_header=True, header_style="bold")
    for col in ("worker", "pid", "alive", "restarts", "CPU %", "RSS", "events in", "events out",
                "dropped", "clients", "subs"):
        t.add_column(col, justify="right")
    for w in st.get("workers", []):
        t.add_row(str(w.get("index")), str(w.get("pid")), "yes" if w.get("alive", True) else "[red]NO[/red]",
                  str(w.get("restarts", 0)), f"{w.get('cpu_percent', 0):.1f}", _mb(w.get("rss_bytes", 0)),
                  f"{w.get('events_in', 0):,}", f"{w.get('events_out', 0):,}",
                  f"{w.get('dropped', 0):,}", str(w.get("clients", 0)), str(w.get("subscriptions", 0)))
    t.add_row("total", "", "", "", f"{tot.get('cpu_percent', 0):.1f}", _mb(tot.get("rss_bytes", 0)),
              f"{tot.get('events_in', 0):,}", f"{tot.get('events_out', 0):,}", f"{tot.get('dropped', 0):,}",
              str(tot.get("clients", 0)), str(tot.get("subscriptions", 0)), style="bold")
    console.print(t)
    slow = [(w["index"], s) for w in st.get("workers", []) for s in w.get("slow_clients", [])]
    if slow:
        s = Table(title="slow consumers (events dropped)", show_header=True)
        s.add_column("worker", justify="right")
        s.add_column("client")
        s.add_column("dropped", justify="right")
        for idx, c in slow:
            s.add_row(str(idx), c["client"], f"{c['dropped']:,}")
        console.print(s)
