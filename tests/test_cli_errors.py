"""Every CLI error as a user sees it: one line on stderr starting `tscale:`, exit 2 for bad usage,
bad addresses and bad configuration (checked before anything starts), 3 for a node that cannot be
reached; a refused connection fails at once; --version, --help with defaults and environment
variables, shell completion."""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

import tscale
from conftest import ROOT, clean_env, cli, free_port_block, pids_alive


def one_tscale_line(stderr: bytes) -> str:
    lines = [l for l in stderr.decode().splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("tscale: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("args", [
    ["pub", "x.y", "hi", "--server", "127.0.0.1:notaport"],
    ["status", "--server", "127.0.0.1:99999"],
    ["ping", "--server", "host:1:2:x"],
    ["pub", "a.b", "x", "--count", "many"],
    ["sub"],
    ["nosuchcommand"],
    ["status", "--bogus-flag"],
    ["reply", "svc.x"],                                  # neither DATA nor --exec
    ["reply", "svc.x", "data", "--exec", "cat"],         # both
    ["ping", "--wait", "-1"],
    ["status", "--watch", "--json"],
])
def test_bad_usage_is_one_line_exit_2(args):
    r = cli(args, env={"TSCALE_SERVER": "127.0.0.1:1"})
    assert r.returncode == 2, (r.stdout, r.stderr)
    one_tscale_line(r.stderr)
    assert b"Traceback" not in r.stderr


@pytest.mark.parametrize("args", [["status"], ["pub", "a.b", "x"], ["req", "a.b", "x"], ["sub", "a.>"], ["ping"],
                                  ["reply", "a.b", "x"]])
def test_refused_connection_fails_at_once(args):
    port = free_port_block(1)
    t0 = time.monotonic()
    r = cli([*args, "--server", f"127.0.0.1:{port}"])
    took = time.monotonic() - t0
    assert r.returncode == 3, r.stderr
    line = one_tscale_line(r.stderr)
    assert "refused" in line and str(port) in line
    # the handshake timeout is 5 s; the whole command (interpreter start included) must be far quicker
    assert took < 3.0, f"a refused connection took {took:.1f}s"


def isolated(args: list[str]) -> subprocess.CompletedProcess:
    """The CLI in a new, empty network namespace: a name lookup there cannot leave this machine."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rn", "true"]).returncode != 0:
        pytest.skip("unshare -rn (user + network namespaces) is not available")
    return subprocess.run(["unshare", "-rn", sys.executable, "-m", "tscale.cli", *args], env=clean_env(),
                          capture_output=True, timeout=60, cwd=str(ROOT))


def test_unresolvable_host_says_so():
    r = isolated(["status", "--server", "no-such-host.invalid:7400"])
    assert r.returncode == 3, r.stderr
    assert "cannot resolve host 'no-such-host.invalid'" in one_tscale_line(r.stderr)


def test_up_listen_on_a_name_that_does_not_resolve(tmp_path):
    r = isolated(["up", "--listen", "nonsense", "--workers", "1", "--data-dir", str(tmp_path)])
    assert r.returncode == 2, r.stderr
    assert "cannot listen on nonsense" in one_tscale_line(r.stderr)


@pytest.mark.parametrize("args,toml,needle", [
    (["--workers", "-1"], None, "workers -1"),
    (["--listen", "127.0.0.1:65535", "--workers", "2"], None, "65535"),
    (["--listen", "10.255.254.253:{port}"], None, "not an address of this host"),
    (["--monitor", "127.0.0.1:notaport"], None, "monitor"),
    (["--monitor", "7000"], None, "monitor"),
    (["--config", "{toml}"], 'workers = "1"\n', "workers: expected a whole number"),
    (["--config", "{toml}"], "name = 5\n", "name: expected a string"),
    (["--config", "{toml}"], 'no_discovery = "yes"\n', "no_discovery: expected true or false"),
])
def test_up_bad_configuration_is_one_line_exit_2(tmp_path, args, toml, needle):
    port = free_port_block(3)
    path = tmp_path / "bad.toml"
    if toml is not None:
        path.write_text(toml)
    args = [a.replace("{toml}", str(path)).replace("{port}", str(port)) for a in args]
    if not any(a == "--listen" for a in args):
        args += ["--listen", f"127.0.0.1:{port}", "--workers", "2"] if "--workers" not in args else []
    r = cli(["up", *args, "--data-dir", str(tmp_path / "data")])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in one_tscale_line(r.stderr)


@pytest.mark.parametrize("taken,role", [(0, "client port of worker 0"), (1, "client port of worker 1"),
                                        (2, "cluster control port"), (3, "monitor port")])
def test_up_names_the_port_that_is_taken(tmp_path, taken, role):
    port = free_port_block(4)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port + taken))
    blocker.listen()
    try:
        p = subprocess.Popen([sys.executable, "-m", "tscale.cli", "up", "--listen", f"127.0.0.1:{port}", "--workers",
                              "2", "--monitor", f"127.0.0.1:{port + 3}", "--data-dir", str(tmp_path)],
                             env=clean_env(), cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(timeout=60)
    finally:
        blocker.close()
    assert p.returncode == 2, err
    line = one_tscale_line(err)
    assert f"TCP port {port + taken} on 127.0.0.1 ({role}) is already in use" in line
    assert "discovery" not in line
    assert not pids_alive([p.pid])


def test_version_flag_and_command():
    for args in (["--version"], ["version"]):
        r = cli(args)
        assert r.returncode == 0 and r.stdout.decode().strip() == tscale.__version__


UP_OPTIONS = ["listen", "workers", "name", "data-dir", "config", "log-level", "log-format", "max-payload", "token",
              "join", "cluster", "no-discovery", "discovery-port", "advertise", "monitor"]


def help_text(*args) -> str:
    r = cli([*args, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def test_up_help_shows_default_and_environment_variable_of_every_option():
    text = help_text("up")
    for opt in UP_OPTIONS:
        row = [l for l in text.splitlines() if f"--{opt} " in l]
        assert row, f"--{opt} missing from `tscale up --help`"
        env = "TSCALE_" + opt.upper().replace("-", "_")
        assert f"[env var: {env}]" in row[0] and "[default: " in row[0], row[0]
    assert "[default: (0.0.0.0:7400)]" in text


@pytest.mark.parametrize("cmd", ["", "up", "ping", "pub", "sub", "req", "reply", "status", "bench"])
def test_help_has_no_bool_labels_and_describes_arguments(cmd):
    text = help_text(*([cmd] if cmd else []))
    assert "<bool>" not in text
    if cmd in ("pub", "sub", "req", "reply"):
        args = text.split("Arguments", 1)[1].split("Options", 1)[0]
        rows = [m for m in (re.search(r"\b(NAME|DATA|PATTERN)\s+<str>\s*(.*?)│?$", l) for l in args.splitlines()) if m]
        assert rows, f"no arguments listed for {cmd}"
        for m in rows:
            assert m.group(2).strip(" │"), f"argument {m.group(1)} of {cmd} has no description: {m.group(0)!r}"
    if cmd in ("ping", "pub", "sub", "req", "reply", "status", "bench"):
        assert "[env var: TSCALE_SERVER]" in text


def test_shell_completion_script():
    r = cli(["--show-completion", "bash"])
    assert r.returncode == 0, r.stderr
    assert b"complete" in r.stdout and b"tscale" in r.stdout
