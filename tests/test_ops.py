"""Operating a node as a script or a service manager does: the "ready" line at any log level,
systemd readiness notification, `tscale ping`, stale run directories, stopping by a signal to the
whole process group, `tscale reply`, `tscale status --watch`."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from conftest import (DEADLINE, ROOT, LineReader, Node, clean_env, cli, free_port_block, pids_alive, uniq,
                      wait_until)


def log_lines(node: Node) -> list[str]:
    return [l for l in node.log_text().splitlines() if l.strip()]


def test_ready_line_at_warning_level(make_node):
    node = make_node(2, extra=["--log-level", "warning"])
    line = wait_until(lambda: [l for l in log_lines(node) if " ready: " in l], what="the ready line")
    assert len(line) == 1 and f"2 workers on 127.0.0.1:{node.port}-{node.port + 1}" in line[0], line
    assert f"supervisor pid {node.proc.pid}" in line[0]
    assert log_lines(node) == line, "at warning level a node that started fine logs only the ready line"


def test_systemd_readiness_notification(make_node, tmp_path):
    path = str(tmp_path / "notify.sock")
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(path)
    sd.settimeout(DEADLINE)
    try:
        node = make_node(2, start=False, env={"NOTIFY_SOCKET": path}, extra=["--log-level", "error",
                                                                              "--log-format", "json"])
        node.start()
        msg = sd.recv(4096).decode()
        fields = dict(l.split("=", 1) for l in msg.splitlines())
        assert fields["READY"] == "1" and fields["MAINPID"] == str(node.proc.pid), msg
        # the same moment as the ready line, which shows at log level error too (here as JSON)
        lines = [json.loads(l) for l in log_lines(node)]
        assert [l["msg"] for l in lines if "ready" in l["msg"]] == [
            f"node {node.status()['node']['name']} ready: 2 workers on 127.0.0.1:{node.port}-{node.port + 1}, "
            f"supervisor pid {node.proc.pid}"]
        assert node.stop() == 0
        assert sd.recv(4096) == b"STOPPING=1"
    finally:
        sd.close()


def test_ping_answers_at_once(node2):
    r = cli(["ping", "--server", node2.addr])
    assert r.returncode == 0, r.stderr
    assert f"at {node2.addr} answered: 2 workers" in r.stdout.decode()


def test_ping_wait_returns_when_the_node_comes_up(make_node):
    node = make_node(2, start=False)
    p = subprocess.Popen([sys.executable, "-m", "tscale.cli", "ping", "--wait", "60", "--server", node.addr],
                         env=clean_env(), cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.poll() is None, "ping answered before any node existed"
        node.start()
        out, err = p.communicate(timeout=DEADLINE)
        assert p.returncode == 0, err
        assert b"answered" in out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_ping_wait_gives_up_with_exit_3():
    port = free_port_block(1)
    t0 = time.monotonic()
    r = cli(["ping", "--wait", "1", "--server", f"127.0.0.1:{port}"])
    took = time.monotonic() - t0
    assert r.returncode == 3, r.stderr
    assert "refused" in r.stderr.decode() and "tried for 1s" in r.stderr.decode()
    assert 1.0 <= took < 4.0, took


def run_dirs(tmp: Path) -> list[Path]:
    return sorted(d for d in tmp.glob("tscale-*") if (d / "supervisor.pid").exists())


def test_stale_run_dirs_of_dead_supervisors_are_removed(tmp_path):
    tmp = tmp_path / "t"
    tmp.mkdir()
    foreign = tmp / "tscale-not-a-run-dir"         # no marker: never touched
    foreign.mkdir()
    alive = tmp / "tscale-alive"                   # marker of a live process (this test): kept
    alive.mkdir()
    me = __import__("psutil").Process()
    (alive / "supervisor.pid").write_text(f"{me.pid} {me.create_time():.2f}")
    first = Node(tmp_path / "a", workers=1, env={"TMPDIR": str(tmp)})
    first.tmp_dir.mkdir()
    second = Node(tmp_path / "b", workers=1, env={"TMPDIR": str(tmp)})
    second.tmp_dir.mkdir()
    try:
        first.start()
        stale = [d for d in run_dirs(tmp) if d != alive]
        assert len(stale) == 1
        workers = first.children()
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        wait_until(lambda: not pids_alive(workers), what="workers to die with their supervisor")
        assert stale[0].exists(), "a SIGKILLed supervisor cannot clean up after itself"
        second.start()
        assert not stale[0].exists()
        assert foreign.exists() and alive.exists()
        assert len([d for d in run_dirs(tmp) if d != alive]) == 1, "only the running node's run dir is left"
        assert f"removed the run directory {stale[0]}" in second.log_text()
    finally:
        first.stop()
        second.stop()
    assert [d for d in run_dirs(tmp) if d != alive] == [], "a node stopped cleanly removes its run dir"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_the_process_group_stops_without_restarts(make_node, sig):
    node = make_node(2)
    workers = node.children()
    os.killpg(node.proc.pid, sig)      # what Ctrl-C in a terminal does, or `kill -TERM -PGID`
    assert node.proc.wait(timeout=30) == 0, node.log_text()[-2000:]
    wait_until(lambda: not pids_alive(workers), what="every worker to exit")
    log = node.log_text()
    assert "died" not in log and "restart" not in log and "Traceback" not in log, log
    stopped = [l for l in log_lines(node) if "stopped" in l]
    assert len(stopped) == 1 and stopped[0].endswith(f"stopped ({sig.name})"), stopped


def test_a_worker_sigtermed_alone_is_still_restarted(make_node):
    node = make_node(2)
    old = node.kill_worker(1, signal.SIGTERM)
    wait_until(lambda: [w for w in node.status()["workers"] if w["index"] == 1 and w["restarts"] == 1
                        and w["pid"] not in (None, old) and w["alive"]], what="worker 1 restarted",
               ignore=(AssertionError,))
    assert "worker 1 died (exit code 0)" in node.log_text()


# ----------------------------------------------------------------------------- tscale reply
class Replier:
    def __init__(self, args):
        self.p = subprocess.Popen([sys.executable, "-m", "tscale.cli", "reply", *args], env=clean_env(),
                                  cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)
        self.err = LineReader(self.p.stderr)
        self.err.wait_for(b"answering requests on")

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


@pytest.fixture
def repliers():
    made = []
    yield lambda args: made.append(Replier(args)) or made[-1]
    for r in made:
        r.close()


def test_reply_with_fixed_data_ignores_plain_events(node2, repliers):
    name = uniq("svc") + ".time"
    r = repliers([name, "it is late", "--count", "1", "--server", node2.addr])
    assert cli(["pub", name, "not a request", "--server", node2.addr]).returncode == 0
    res = cli(["req", name, "what time?", "--server", node2.addr])
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"it is late\n"
    assert r.p.wait(DEADLINE) == 0, "exits after --count requests; the plain event was not answered"


def test_reply_exec_feeds_the_request_on_stdin(node2, repliers):
    name = uniq("svc") + ".upper"
    repliers([name, "--exec", "tr a-z A-Z", "--server", node2.addr])
    for word in ("hello", "world"):
        res = cli(["req", name, word, "--server", node2.addr])
        assert res.returncode == 0, res.stderr
        assert res.stdout == word.upper().encode() + b"\n"


def test_reply_queue_group_shares_requests(node2, repliers):
    name = uniq("svc") + ".shared"
    group = [repliers([name, f"from-{k}", "--queue", "g", "--count", "3", "--server", node2.addr]) for k in range(2)]
    answers = []
    for i in range(6):
        res = cli(["req", name, str(i), "--server", node2.addr])
        assert res.returncode == 0, f"request {i}: {res.stderr!r}"
        answers.append(res.stdout.strip().decode())
    # Each member answers 3 and exits: 6 answers only if every request went to one member alone.
    assert all(r.p.wait(DEADLINE) == 0 for r in group)
    assert sorted(answers) == ["from-0"] * 3 + ["from-1"] * 3


# ----------------------------------------------------------------------------- tscale status --watch
def test_status_watch_refreshes_in_place_and_stops_cleanly(node2):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "tscale.cli", "status", "--watch", "--interval", "0.2",
                          "--server", node2.addr], env=clean_env({"TERM": "xterm", "COLUMNS": "200"}), cwd=str(ROOT),
                         stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    out = bytearray()

    def read():
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            out.extend(chunk)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        wait_until(lambda: bytes(out).count(b"dropped/s") >= 3, what="three refreshes with rate columns")
        text = bytes(out)
        assert b"in/s" in text and b"out/s" in text
        assert b"\x1b[2K" in text or b"\x1b[1A" in text, "redrawn in place (cursor movement), not appended"
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(DEADLINE) == 0
        t.join(DEADLINE)
        assert b"Traceback" not in bytes(out)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)


# ----------------------------------------------------------------------------- sans-I/O parts
def test_rates_per_second_skip_restarted_workers():
    from tscale.status_view import rates
    prev = {"workers": [{"index": 0, "pid": 1, "restarts": 0, "events_in": 100, "events_out": 10, "dropped": 0},
                        {"index": 1, "pid": 2, "restarts": 0, "events_in": 50, "events_out": 0, "dropped": 0}]}
    cur = {"workers": [{"index": 0, "pid": 1, "restarts": 0, "events_in": 300, "events_out": 50, "dropped": 4},
                       {"index": 1, "pid": 3, "restarts": 1, "events_in": 5, "events_out": 0, "dropped": 0}]}
    r = rates(prev, cur, 2.0)
    assert r == {0: {"events_in": 100.0, "events_out": 20.0, "dropped": 2.0}}, "no total while one worker has none"
    cur["workers"][1].update(pid=2, restarts=0, events_in=70)
    r = rates(prev, cur, 2.0)
    assert r[1]["events_in"] == 10.0 and r["total"]["events_in"] == 110.0
    assert rates(None, cur, 1.0) == {} and rates(prev, cur, 0) == {}


def test_run_dir_marker_names_a_live_or_dead_owner(tmp_path):
    import psutil
    from tscale import rundir
    me = psutil.Process()
    assert rundir.owner_alive(f"{me.pid} {me.create_time():.2f}")
    assert not rundir.owner_alive(f"{me.pid} {me.create_time() - 100:.2f}"), "same pid, other process: stale"
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not rundir.owner_alive(f"{dead.pid} 1.00")
    assert rundir.owner_alive("garbage"), "an unreadable marker is left alone"
    d = rundir.create(str(tmp_path))
    assert Path(d).name.startswith("tscale-") and rundir.clean_stale(str(tmp_path)) == []
    (Path(d) / "supervisor.pid").write_text(f"{dead.pid} 1.00")
    assert rundir.clean_stale(str(tmp_path)) == [d] and not Path(d).exists()


# ----------------------------------------------------------------------------- tscale bench
def test_bench_prints_what_its_help_promises(node2):
    from tscale.bench.loadgen import expected_total
    assert expected_total(1000, 2, None, False) == 2000 and expected_total(1000, 2, "g", False) == 1000
    help_text = cli(["bench", "--help"], env={"COLUMNS": "200"}).stdout.decode()
    assert "latency percentiles" in help_text and "--request" in help_text
    r = cli(["bench", "--subs", "2", "--count", "2000", "--server", node2.addr], env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    for row in ("published per second", "delivered per second", "lost", "per subscriber",
                "node CPU per delivered event", "publisher CPU per event", "subscriber CPU per event"):
        assert row in out, row
    assert "2,000, 2,000" in out, "each of the 2 subscribers got every event"
    r = cli(["bench", "--request", "--count", "200", "--json", "--server", node2.addr])
    assert r.returncode == 0, r.stderr
    res = __import__("json").loads(r.stdout)
    assert res["ok"] == 200 and all(res[k] > 0 for k in ("p50", "p90", "p99", "p999", "max"))
