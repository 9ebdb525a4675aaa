"""Command line of the side-by-side benchmarks.

    python -m tscale.bench.harness [--quick] [--runs N] [--only SCENARIO,...]
                                   [--systems tscale,nats,redis,zmq] [--out DIR]
                                   [--baseline REV] [--variants LABEL,...]

Runs every selected scenario against every selected system that supports it (runs
interleaved across systems so drift hits all alike), keeps going when one system
fails, stops everything it started, and writes DIR/BENCHMARKS.md,
DIR/bench/results.json and DIR/bench/*.png.  ``--quick`` uses tiny counts and one
run (CI checks the harness still works) and writes to a temp dir unless --out is given.
``--baseline REV`` adds the system ``tscale@REV`` (tscale at that git revision, from
its own cached venv, see ``tscale.bench.baseline``) beside this checkout's tscale: its
runs interleave with tscale's and the report gives tscale ÷ tscale@REV per run.
Exit status 1 when a measurement failed; a system that is not installed or not
importable is reported ("<system>: failed: <reason>") but does not change the status.
"""
from __future__ import annotations

import argparse
import atexit
import datetime as dt
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tscale.bench import procs, report
from tscale.bench.runner import Runner, Timing
from tscale.bench.scenarios import BY_KEY, FULL, PLACEHOLDER, QUICK, SCENARIOS
from tscale.bench.systems import ALL, library_versions

def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tscale.bench.harness",
                                 description="tscale vs NATS vs Redis vs raw pyzmq, side by side")
    ap.add_argument("--quick", action="store_true", help="tiny counts, 1 run (CI smoke run)")
    ap.add_argument("--runs", type=int, help="runs per measurement (default 3, quick 1)")
    ap.add_argument("--only", help="comma-separated scenarios: " + ",".join(BY_KEY))
    ap.add_argument("--systems", default=",".join(ALL), help="comma-separated: " + ",".join(ALL))
    ap.add_argument("--out", help="output dir (default docs/; with --quick a temp dir)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the per-run logs directory")
    ap.add_argument("--baseline", metavar="REV[,REV...]",
                    help="also measure tscale at git revision REV (own venv under .bench-cache/), "
                         "interleaved with this checkout; the report gives tscale ÷ tscale@REV")
    ap.add_argument("--variants", help='comma-separated variant labels to measure (e.g. "128 B"); default all')
    args = ap.parse_args(argv)
    for name, valid, value in (("--only", BY_KEY, args.only), ("--systems", ALL, args.systems)):
        unknown = [v for v in (value or "").split(",") if v and v not in valid]
        if unknown:
            ap.error(f"{name}: unknown {', '.join(unknown)}")
    return args


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), ram_gib=round(psutil.virtual_memory().total / 2**30, 1),
                os=f"{platform.system()} {platform.release()}",
                python=f"{platform.python_implementation()} {platform.python_version()}")


def _fmt_run(run: dict) -> str:
    p = lambda k: f"{run[k]:.0f}" if run.get(k) is not None else "-"  # noqa: E731
    if "setup_s" in run:
        return (f"setup {run['setup_s']:.2f} s, idle CPU {run['idle_cpu_pct']:.1f} %, "
                f"{p('rss_per_sub')} B RSS per subscription")
    if "rate" in run:
        rate = run["rate"]
        text = (f"{rate / 1e3:,.0f} k/s" if rate else "no events") + f", lost {run['lost']:,}"
        if "p50" in run:
            text += f"; requests p50 {p('p50')} p99 {p('p99')} p99.9 {p('p999')} max {p('max')} µs"
        if run.get("path"):
            text += f", chain {' → '.join(run['path'])}"
            if run.get("attempts", 1) > 1:
                text += f" (attempt {run['attempts']}: the earlier overlays were no chain)"
        return text
    if "p50" in run:
        return f"p50 {p('p50')} p99 {p('p99')} p99.9 {p('p999')} µs, errors {run['errors']}"
    if "rss_idle" in run:
        mb = lambda k: f"{run[k] / 2**20:.1f}" if run.get(k) else "-"  # noqa: E731
        return f"RSS idle {mb('rss_idle')} MB, subs {mb('rss_subs')} MB, conns {mb('rss_conns')} MB"
    return ""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure_variants(scenario, variants, systems, runs: int, runner: Runner,
                     problems: dict) -> list[dict]:
    """One row per variant and system: ``runs`` measurements, interleaved across systems
    (and across the variants given, so run i of each is measured back to back)."""
    rows = {(v.label, s.key): dict(scenario=scenario.key, variant=v.label, system=s.key,
                                   status="ok", runs=[], errors=[])
            for v in variants for s in systems}
    base = next((s for s in systems if s.key.startswith("tscale@")), None)
    for i in range(runs):
        # With a baseline, every other run measures it first, so drift does not favour one side.
        order = systems[::-1] if base and i % 2 else systems
        for variant in variants:
            for system in order:
                row = rows[variant.label, system.key]
                if problems[system.key]:
                    row["status"] = f"failed: {problems[system.key]}"
                    continue
                tag = f"[{scenario.key} {variant.label}] {system.key} run {i + 1}/{runs}"
                t0 = time.monotonic()
                try:
                    result = variant.measure(runner, system)
                except Exception as exc:  # noqa: BLE001 - one system failing must not stop the rest
                    row["errors"].append(f"{type(exc).__name__}: {exc}")
                    log(f"{tag}: FAILED {type(exc).__name__}: {str(exc)[:400]}")
                    continue
                result["wall_s"] = round(time.monotonic() - t0, 2)
                result["run"] = i + 1
                row["runs"].append(result)
                log(f"{tag}: {_fmt_run(result)} ({result['wall_s']:.1f} s)")
        for b in (s for s in systems if base and s.key.startswith("tscale@") and "tscale" in _keys(systems)):
            for variant in variants:
                new = _run_rate(rows[variant.label, "tscale"], i + 1)
                old = _run_rate(rows[variant.label, b.key], i + 1)
                if new and old:
                    log(f"[{scenario.key} {variant.label}] run {i + 1}/{runs}: tscale ÷ {b.key} = "
                        f"{new / old:.3f}×")
        if len(variants) > 1 and scenario.paired:
            for system in systems:
                base = _run_rate(rows[variants[0].label, system.key], i + 1)
                for variant in variants[1:]:
                    rate = _run_rate(rows[variant.label, system.key], i + 1)
                    if base and rate:
                        log(f"[{scenario.key}] {system.key} run {i + 1}/{runs}: {variant.label} ÷ "
                            f"{variants[0].label} = {rate / base:.2f}×")
    for row in rows.values():
        if row["runs"] and row["errors"]:
            row["status"] = f"ok ({len(row['errors'])} of {runs} runs failed)"
        elif not row["runs"] and row["status"] == "ok":
            row["status"] = "failed: " + (row["errors"][0] if row["errors"] else "no run")
    return list(rows.values())


def _keys(systems) -> set[str]:
    return {s.key for s in systems}


def _run_rate(row: dict, run: int):
    return next((r.get("rate") for r in row["runs"] if r.get("run") == run), None)


def run_all(args: argparse.Namespace, counts, runner: Runner) -> list[dict]:
    wanted_systems = [ALL[k] for k in args.systems.split(",") if k]
    problems = {s.key: s.problem() for s in wanted_systems}
    for key, problem in problems.items():
        if problem:
            log(f"{key}: failed: {problem}")
    only = set(args.only.split(",")) if args.only else set(BY_KEY)
    runs = args.runs or counts.runs
    rows = []
    for scenario in (s for s in SCENARIOS if s.key in only):
        if scenario.kind == PLACEHOLDER:
            rows.append(dict(scenario=scenario.key, variant="", system="",
                             status=scenario.skip_reason, runs=[], errors=[]))
            log(f"[{scenario.key}] {scenario.skip_reason}")
            continue
        systems = [s for s in wanted_systems if scenario.feature in s.features
                   and (scenario.only is None or s.key.split("@")[0] in scenario.only)]   # tscale@REV is tscale
        variants = scenario.variants(counts)
        if args.variants:
            variants = [v for v in variants if v.label in args.variants.split(",")]
            if not variants:
                continue
        if scenario.paired:
            rows += measure_variants(scenario, variants, systems, runs, runner, problems)
        else:
            for variant in variants:
                rows += measure_variants(scenario, [variant], systems, runs, runner, problems)
        for key, why in scenario.not_applicable:
            if key in (s.key for s in wanted_systems):
                rows.append(dict(scenario=scenario.key, variant=variants[-1].label if variants else "",
                                 system=key, status=why, runs=[], errors=[]))
                log(f"[{scenario.key}] {key}: {why}")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    counts = QUICK if args.quick else FULL
    if args.out:
        out = Path(args.out)
    elif args.quick:
        out = Path(tempfile.mkdtemp(prefix="tscale-bench-out-"))
    else:
        out = Path(__file__).resolve().parents[2] / "docs"
    workdir = Path(tempfile.mkdtemp(prefix="tscale-bench-run-"))

    atexit.register(procs.stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))

    if args.baseline:
        from tscale.bench import baseline

        keys = args.systems.split(",")
        at = keys.index("tscale") + 1 if "tscale" in keys else 0
        for rev in reversed(args.baseline.split(",")):
            base = baseline.prepare(rev)
            ALL[base.key] = base
            keys.insert(at, base.key)
        args.systems = ",".join(keys)

    started = time.monotonic()
    runner = Runner(workdir, Timing(idle_timeout=counts.idle_timeout))
    try:
        rows = run_all(args, counts, runner)
    finally:
        procs.stop_all()
    wall = time.monotonic() - started

    versions = {"python": platform.python_version(), **library_versions()}
    for key in args.systems.split(","):
        try:
            versions.update(ALL[key].versions())
        except Exception as exc:  # noqa: BLE001
            versions[key] = f"unknown ({exc})"
    results = dict(
        meta=dict(command="python -m tscale.bench.harness " + shlex.join(argv),
                  mode="quick" if args.quick else "full", runs=args.runs or counts.runs,
                  counts=counts.__dict__, systems=args.systems.split(","),
                  date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  wall_s=round(wall, 1), machine=machine(), versions=versions),
        rows=rows,
    )
    paths = report.write_all(results, out)
    if args.keep_logs:
        log(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"wall time {wall:.1f} s; wrote " + ", ".join(str(p) for p in paths))
    failed = [r for r in rows if r["status"].startswith("failed")]
    for r in failed:
        log(f"{r['system']}: {r['scenario']} {r['variant']}: {r['status']}")
    # Exit 1 when a measurement broke; a system that is not installed/importable only warns.
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
