"""The `tscale` command as a user runs it: pub, sub, req, status against a live node (with --server
and with TSCALE_SERVER), exit codes, and `tscale up` configured by flags, env and a TOML file."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tscale
from conftest import (DEADLINE, ROOT, LineReader, Node, clean_env, cli, free_port_block, json_lines, name_for,
                      pids_alive, uniq, wait_until)
from test_status import check_schema


def start_sub(args, env=None):
    p = subprocess.Popen([sys.executable, "-m", "tscale.cli", "sub", *args], env=clean_env(env), cwd=str(ROOT),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    err = LineReader(p.stderr)
    return p, err


@pytest.fixture
def procs():
    """Subprocesses started by a test; killed by pid at teardown if still running."""
    made = []
    yield made
    for p in made:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def one_line_reason(stderr: bytes) -> str:
    lines = [l for l in stderr.decode().splitlines() if l.strip()]
    assert len(lines) == 1, f"expected a one-line reason on stderr, got {lines!r}"
    return lines[0]


@pytest.mark.parametrize("via", ["flag", "env"])
def test_pub_and_sub_json(node2, procs, via):
    P = uniq("cli")
    names = [name_for(k, 2, P) for k in range(2)]
    server = ["--server", node2.addr] if via == "flag" else []
    env = {"TSCALE_SERVER": node2.addr} if via == "env" else None
    p, err = start_sub([P + ".>", "--count", "4", "--json", *server], env)
    procs.append(p)
    err.wait_for(b"subscribed to")
    for n in names:
        r = cli(["pub", n, "héllo", "--header", "k=v", "--header", "trace=1", "--count", "2", *server], env)
        assert r.returncode == 0, r.stderr
    out, _ = p.communicate(timeout=DEADLINE)
    assert p.returncode == 0
    events = json_lines(out)
    assert len(events) == 4
    assert sorted(e["name"] for e in events) == sorted(names * 2)
    for e in events:
        assert e["data"] == "héllo" and e["encoding"] == "utf-8"
        assert e["headers"] == {"k": "v", "trace": "1"}
        assert e["reply"] is None


def test_pub_reads_stdin_and_binary_shows_as_hex(node2, procs):
    P = uniq("clistdin")
    p, err = start_sub([P + ".*", "--count", "2", "--json", "--server", node2.addr])
    procs.append(p)
    err.wait_for(b"subscribed to")
    assert cli(["pub", P + ".text", "--server", node2.addr], input=b"from stdin\n").returncode == 0
    assert cli(["pub", P + ".bin", "--server", node2.addr], input=b"\xff\x00\xfe").returncode == 0
    out, _ = p.communicate(timeout=DEADLINE)
    by_name = {e["name"]: e for e in json_lines(out)}
    assert by_name[P + ".text"]["data"] == "from stdin\n"
    assert (by_name[P + ".bin"]["data"], by_name[P + ".bin"]["encoding"]) == ("ff00fe", "hex")


def test_sub_plain_text_and_queue_group(node2, procs):
    P = uniq("cliq")
    name = name_for(0, 2, P)
    subs = []
    for _ in range(2):
        p, err = start_sub([name, "--queue", "g", "--count", "1", "--server", node2.addr])
        procs.append(p)
        err.wait_for(b"queue group g")
        subs.append(p)
    assert cli(["pub", name, "one", "--count", "2", "--server", node2.addr]).returncode == 0
    outs = [p.communicate(timeout=DEADLINE)[0].decode() for p in subs]
    assert all(p.returncode == 0 for p in subs)
    assert outs == [f"[{name}] one\n", f"[{name}] one\n"], "each member of the group got one of the two events"


def test_sub_timeout_exits_1(node2):
    r = cli(["sub", uniq("quiet") + ".>", "--timeout", "0.5", "--server", node2.addr])
    assert r.returncode == 1
    assert "no event" in one_line_reason(r.stderr.replace(b"subscribed to", b"").split(b"\n", 1)[1])


def test_req_gets_reply(node2, clients):
    svc = name_for(1, 2, uniq("clisvc"))
    c = clients(node2, name="cli-responder")
    c.subscribe(svc, cb=lambda m: m.respond(b"pong:" + m.data, headers={"h": (m.headers or {}).get("x", "")}))
    r = cli(["req", svc, "ping", "--server", node2.addr])
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"pong:ping\n"
    r = cli(["req", svc, "again", "--header", "x=1", "--json"], env={"TSCALE_SERVER": node2.addr})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["data"] == "pong:again" and doc["headers"] == {"h": "1"}


def test_req_no_responders_exits_1_fast(node2):
    r = cli(["req", uniq("nobody") + ".svc", "x", "--timeout", "30", "--server", node2.addr], timeout=25)
    assert r.returncode == 1
    assert "no responders" in one_line_reason(r.stderr)


def test_req_timeout_exits_1(node2, clients):
    svc = name_for(0, 2, uniq("clisilent"))
    clients(node2, name="silent").subscribe(svc, cb=lambda m: None)
    r = cli(["req", svc, "x", "--timeout", "0.5", "--server", node2.addr])
    assert r.returncode == 1
    assert "no reply" in one_line_reason(r.stderr)


def test_pub_bad_name_exits_1(node2):
    r = cli(["pub", "bad name", "x", "--server", node2.addr])
    assert r.returncode == 1
    one_line_reason(r.stderr)


@pytest.mark.parametrize("via", ["flag", "env"])
def test_status_json(node2, via):
    if via == "flag":
        r = cli(["status", "--json", "--server", node2.addr])
    else:
        r = cli(["status", "--json"], env={"TSCALE_SERVER": node2.addr})
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    check_schema(st, node2)


def test_status_table(node2):
    r = cli(["status", "--server", node2.addr])
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    st = node2.status()
    assert st["node"]["name"] in out and st["node"]["id"] in out
    for w in st["workers"]:
        assert str(w["pid"]) in out


def test_unreachable_server_exits_3():
    port = free_port_block(1)
    runs = [subprocess.Popen([sys.executable, "-m", "tscale.cli", *args], env=clean_env(env), cwd=str(ROOT),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            for args, env in ((["status", "--server", f"127.0.0.1:{port}"], None),
                              (["pub", "a.b", "x"], {"TSCALE_SERVER": f"127.0.0.1:{port}"}),
                              (["sub", "a.>", "--server", f"127.0.0.1:{port}"], None))]
    try:
        for p in runs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 3, err
            assert str(port) in one_line_reason(err)
    finally:
        for p in runs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.parametrize("args", [["sub"], ["pub"], ["pub", "a.b", "x", "--count", "many"], ["nosuchcommand"],
                                  ["pub", "a.b", "x", "--header", "novalue"], ["req"],
                                  ["status", "--bogus-flag"]])
def test_bad_usage_exits_2(args):
    r = cli(args, env={"TSCALE_SERVER": "127.0.0.1:1"})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip()


@pytest.mark.parametrize("args,env,toml", [
    (["--workers", "1000"], None, None),
    (["--log-level", "loud"], None, None),
    (["--log-format", "xml"], None, None),
    (["--listen", "127.0.0.1:99999"], None, None),
    (["--max-payload", "0"], None, None),
    (["--config", "/nonexistent/tscale.toml"], None, None),
    ([], {"TSCALE_WORKERS": "abc"}, None),
    ([], {"TSCALE_LISTEN": "127.0.0.1:port"}, None),
    (["--config", "{toml}"], None, "wrokers = 2\n"),
    (["--config", "{toml}"], None, "workers = = 2\n"),
    ([], {"TSCALE_CONFIG": "{toml}"}, 'workers = "two"\n'),
])
def test_up_bad_configuration_exits_2(tmp_path, args, env, toml):
    path = tmp_path / "bad.toml"
    if toml is not None:
        path.write_text(toml)
    args = [a.replace("{toml}", str(path)) for a in args]
    env = {k: v.replace("{toml}", str(path)) for k, v in (env or {}).items()}
    env.setdefault("TSCALE_DATA_DIR", str(tmp_path / "data"))
    r = cli(["up", *args], env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    reason = one_line_reason(r.stderr)
    assert reason.startswith("tscale: ")


def test_up_port_in_use_exits_2_without_orphans(tmp_path):
    import socket
    port = free_port_block(1)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    node = Node(tmp_path, workers=1, port=port)
    try:
        node.spawn()
        rc = node.proc.wait(timeout=30)
        assert rc == 2, node.log_text()
        assert str(port) in node.log_text()
        wait_until(lambda: not pids_alive(node._seen_pids - {node.proc.pid}), what="no worker left behind")
    finally:
        node.stop()
        blocker.close()


def test_version():
    r = cli(["version"])
    assert r.returncode == 0 and r.stdout.decode().strip() == tscale.__version__


# ----------------------------------------------------------------------------- tscale up configuration
def node_from(tmp_path, workers, extra=(), env=None, toml=None):
    """A node started without --listen/--workers flags unless `extra` has them."""
    node = Node(tmp_path, workers=workers, use_flags=False, extra=list(extra), env=env or {})
    if toml is not None:
        path = tmp_path / "tscale.toml"
        path.write_text(toml.format(port=node.port, data=tmp_path / "data"))
        node.extra += ["--config", str(path)]
    node.env.setdefault("TSCALE_DATA_DIR", str(tmp_path / "data"))
    return node


@pytest.fixture
def started():
    made = []
    yield made
    for n in made:
        n.stop()


def test_up_with_toml_config(tmp_path, started):
    node = node_from(tmp_path, 3, toml='listen = "127.0.0.1:{port}"\nworkers = 3\nname = "from-toml"\n'
                                       'data-dir = "{data}"\nmax_payload = 5000\n')
    started.append(node)
    node.start()
    st = node.status()
    assert st["node"]["workers"] == 3 and len(st["workers"]) == 3
    assert st["node"]["name"] == "from-toml"
    assert st["node"]["listen"] == node.addr
    assert st["node"]["max_payload"] == 5000
    assert len(node.children()) == 3


def test_up_env_beats_toml(tmp_path, started):
    node = node_from(tmp_path, 2, env={"TSCALE_WORKERS": "2", "TSCALE_NAME": "from-env"},
                     toml='listen = "127.0.0.1:{port}"\nworkers = 3\nname = "from-toml"\n')
    started.append(node)
    node.start()
    st = node.status()
    assert st["node"]["workers"] == 2 and len(st["workers"]) == 2
    assert st["node"]["name"] == "from-env"
    assert len(node.children()) == 2


def test_up_flags_beat_env(tmp_path, started):
    node = node_from(tmp_path, 1, extra=["--workers", "1", "--name", "from-flag"],
                     env={"TSCALE_WORKERS": "3", "TSCALE_NAME": "from-env"})
    node.env["TSCALE_LISTEN"] = node.addr          # listen from the environment
    started.append(node)
    node.start()
    st = node.status()
    assert st["node"]["workers"] == 1 and len(st["workers"]) == 1
    assert st["node"]["name"] == "from-flag"
    assert st["node"]["listen"] == node.addr
    assert len(node.children()) == 1
