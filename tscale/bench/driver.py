"""One benchmark client process: ``python -m tscale.bench.driver ROLE SYSTEM ADDR ARGS_JSON``.

ROLE is one of pub, sub, req, rep, subs (hold many subscriptions), conns (hold many
connections); SYSTEM names the module ``tscale.bench.<SYSTEM>_driver`` whose function
does the work.  This wrapper owns the line protocol with the harness (see ``procs``)
and adds the process's own CPU time from GO to the end to the result, so each
system's driver only contains its client loop.
"""
from __future__ import annotations

import importlib
import json
import resource
import sys
import threading
import time
import traceback

from tscale.bench.measure import Signals

ROLES = {
    "pub": "run_publisher",
    "sub": "run_subscriber",
    "req": "run_requester",
    "rep": "run_responder",
    "subs": "hold_subscriptions",
    "conns": "hold_connections",
}


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _watch_stdin(signals: Signals) -> None:
    for raw in sys.stdin:
        word = raw.strip()
        if word == "GO":
            signals.give_go()
        elif word == "STOP":
            break
    signals.stop.set()
    signals.go.set()  # release anyone still waiting for GO; wait_go() sees stop


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str]) -> int:
    role, system, addr, args_json = argv
    args = json.loads(args_json)
    _raise_fd_limit()
    signals = Signals(announce=lambda: _emit("READY"), go_given=False)
    threading.Thread(target=_watch_stdin, args=(signals,), daemon=True).start()
    try:
        module = importlib.import_module(f"tscale.bench.{system}_driver")
        result = getattr(module, ROLES[role])(addr, signals=signals, **args)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the harness
        traceback.print_exc()
        _emit("ERROR " + json.dumps(f"{type(exc).__name__}: {exc}"))
        return 1
    result = dict(result or {})
    if signals.cpu_at_go is not None:
        result["cpu_s"] = time.process_time() - signals.cpu_at_go
    _emit("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
