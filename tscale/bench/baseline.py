"""``--baseline REV``: tscale at another git revision, measured in the same run as this checkout.

The revision is exported once (``git archive``, so nothing is registered in the shared
repository) into ``.bench-cache/<sha>/tree`` and installed editable into its own venv
``.bench-cache/<sha>/venv``; both are reused by later runs (the cache is git-ignored;
delete it to rebuild).  The baseline's node and its client driver processes run from
that venv with that tree first on ``PYTHONPATH``, so every process of a baseline run is
the old code (its own ``tscale.bench.driver`` too: the driver line protocol and the
roles' arguments of the rows used here are the same).  The harness interleaves its runs
with this checkout's (run i of both back to back, the order alternating from run to
run) and reports tscale ÷ baseline per run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tscale.bench.systems import Tscale

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".bench-cache"


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


class Baseline(Tscale):
    """tscale at ``rev``: its own tree and venv, otherwise started exactly like ``Tscale``."""

    def __init__(self, rev: str, sha: str, tree: Path, python: Path):
        self.rev, self.sha, self.tree, self.python = rev, sha, tree, python
        self.key = f"tscale@{rev}"
        self.label = f"tscale@{rev}"

    def problem(self):
        if not self.python.is_file():
            return f"baseline venv missing: {self.python}"
        return None

    def executable(self) -> str:
        return str(self.python)

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.tree)   # the old tree only: never this checkout
        return env

    def cwd(self) -> str:
        return str(self.tree)   # not this checkout: ``python -m`` would put it first on sys.path

    def versions(self):
        return {self.key: f"{self.sha[:12]} (baseline, {self.tree})"}


def prepare(rev: str, log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> Baseline:
    """The baseline system of ``rev``, building its tree and venv on first use."""
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    home = CACHE / sha
    tree, venv, stamp = home / "tree", home / "venv", home / "ready"
    python = venv / "bin" / "python"
    if not stamp.is_file():
        log(f"bench: building the baseline {rev} ({sha[:12]}) in {home} (once)")
        shutil.rmtree(home, ignore_errors=True)
        tree.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", sha], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise RuntimeError(f"git archive {sha} failed")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", str(tree)], check=True)
        stamp.write_text(f"{rev} {sha}\n")
    return Baseline(rev, sha, tree, python)
