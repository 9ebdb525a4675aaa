"""Security (issue 8): CURVE, ZAP authentication in every process, users and permissions,
an authenticated cluster.  Sans-I/O parts are tested directly; the rest with real nodes.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import threading
import time

import psutil
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

import tscale
import tscale.aio
import zmq.utils.monitor
from conftest import (DEADLINE, Inbox, Node, RawClient, cli, collect, free_port_block, name_for, uniq, wait_until,
                      zctx)
from tscale import auth, keys, protocol
from tscale.auth import Gate, Perms, UsersError, covers, overlaps, parse_users
from tscale.connstate import Connection
from tscale.subjects import matches
from tscale_workers import access

# ----------------------------------------------------------------------------- sans-I/O: patterns
_TOK = st.sampled_from(["a", "b", "*"])
_PAT = st.builds(lambda toks, tail: ".".join(toks + ([">"] if tail else [])),
                 st.lists(_TOK, min_size=1, max_size=3), st.booleans())
_NAMES = [".".join(t) for n in range(1, 5) for t in __import__("itertools").product("abc", repeat=n)]


@settings(max_examples=300, deadline=None)
@given(_PAT, _PAT)
def test_covers_and_overlaps_agree_with_brute_force(x, y):
    # names up to 4 tokens over {a, b, c} tell every pair of these patterns apart
    mx = {n for n in _NAMES if matches(x, n)}
    my = {n for n in _NAMES if matches(y, n)}
    assert overlaps(x, y) == bool(mx & my)
    assert covers(x, y) == (my <= mx)


def test_permission_matrix_allow_deny_deny_wins():
    p = Perms(pub_allow=["orders.>"], pub_deny=["orders.secret.>"], sub_allow=["orders.*", "_INBOX.>"],
              sub_deny=["orders.secret"])
    assert p.may_publish("orders.eu")
    assert not p.may_publish("orders.secret.x")            # deny wins over the wider allow
    assert not p.may_publish("billing.x")                  # not allowed at all
    assert p.may_subscribe("orders.eu") and p.may_subscribe("_INBOX.abc.*")
    assert not p.may_subscribe("orders.>")                 # wider than any allow pattern
    assert not p.may_subscribe("orders.*")                 # would see orders.secret: deny wins
    assert not p.may_subscribe("orders.secret")
    assert Perms().may_publish("x") and Perms().may_subscribe(">")


def test_filter_pub_drops_only_denied_and_allows_responses():
    conn = Connection(b"c", 0.0)
    access.attach(conn, Perms(pub_allow=["ok.>"], pub_deny=["_INBOX.secret.>"], responses=True))
    frame = [protocol.PUB, "ok.1", b"a", None, "no.1", b"b", None, "ok.2", b"c", None, "_INBOX.x.1", b"r", None]
    out, last, n = access.filter_pub(conn, frame, 1)
    assert out == [protocol.PUB, "ok.1", b"a", None, "ok.2", b"c", None, "_INBOX.x.1", b"r", None]
    assert (last, n) == ("no.1", 1)
    out, last, n = access.filter_pub(conn, [protocol.PUB, "_INBOX.secret.1", b"r", None], 1)
    assert (out, n) == ([protocol.PUB], 1), "deny wins over allow_responses too"
    access.attach(conn, Perms(pub_allow=["ok.>"]))
    assert access.filter_pub(conn, [protocol.PUB, "_INBOX.x.1", b"r", None], 1)[2] == 1


# ----------------------------------------------------------------------------- sans-I/O: users file, gate
PW_HASHES: dict[str, str] = {}


def pw_hash(pw: str) -> str:
    if pw not in PW_HASHES:
        PW_HASHES[pw] = auth.hash_password(pw)
    return PW_HASHES[pw]


def test_password_hash_checks_and_is_not_clear_text():
    h = pw_hash("s3cret-pw")
    assert "s3cret-pw" not in h and h.startswith("scrypt:")
    assert auth.check_password(h, "s3cret-pw") and not auth.check_password(h, "other")


@pytest.mark.parametrize("doc, why", [
    ({"users": {"a": {"password": "clear-text"}}}, "never clear text"),
    ({"users": {"a": {}}}, "needs key"),
    ({"users": {"token": {"key": "x" * 40}}}, "not 'token'"),
    ({"users": {"a": {"key": "short"}}}, "Z85"),
    ({"users": {"a": {"password": None, "publish": {"allow": ["a..b"]}}}}, ""),
    ({"users": {"a": {"key": keys.new_client_pair()[0], "publish": {"allow": "x"}}}}, "list of patterns"),
    ({"users": {"a": {"key": keys.new_client_pair()[0], "oops": 1}}}, "unknown key"),
    ({"groups": {}}, "unknown top-level"),
])
def test_users_file_errors_are_clear(doc, why):
    with pytest.raises(UsersError) as ei:
        parse_users(doc)
    assert why in str(ei.value)


def test_gate_decides_each_credential():
    alice_pub, _ = keys.new_client_pair()
    doc = {"users": {"alice": {"key": alice_pub}, "bob": {"password": pw_hash("bob-pw")}}}
    curve = Gate("curve", token="tok", cluster_secret="cluster-secret-123", users_doc=doc)
    z = lambda k: [zmq.utils.z85.decode(k.encode())]
    assert curve.decide("tscale", "CURVE", z(alice_pub))[2] == "alice"
    assert curve.decide("tscale", "CURVE", z(keys.token_client_pair("tok")[0]))[2] == auth.TOKEN_USER
    assert curve.decide("tscale", "CURVE", z(keys.cluster_peer_pair("cluster-secret-123")[0]))[2] == auth.PEER_USER
    assert curve.decide("tscale", "CURVE", z(keys.new_client_pair()[0]))[0] == "400"
    assert curve.decide("tscale", "NULL", [])[0] == "400"
    assert curve.decide("tscale", "PLAIN", [b"token", b"tok"])[0] == "400", "PLAIN is not served on a CURVE port"
    # the control port knows only the cluster's peer key
    assert curve.decide(auth.CONTROL_DOMAIN, "CURVE", z(alice_pub))[0] == "400"
    assert curve.decide(auth.CONTROL_DOMAIN, "CURVE", z(keys.cluster_peer_pair("cluster-secret-123")[0]))[0] == "200"
    plain = Gate("plain", token="tok", cluster_secret="tok", users_doc=doc)
    assert plain.decide("tscale", "PLAIN", [b"token", b"tok"])[2] == auth.TOKEN_USER
    assert plain.decide("tscale", "PLAIN", [b"token", b"tok2"])[0] == "400"
    assert plain.decide("tscale", "PLAIN", [b"peer", b"tok"])[0] == "400", "the token itself is not the peer password"
    assert plain.decide("tscale", "PLAIN", [b"peer", keys.peer_password("tok").encode()])[2] == auth.PEER_USER
    assert plain.decide("tscale", "PLAIN", [b"bob", b"bob-pw"])[2] == "bob"
    assert plain.decide("tscale", "PLAIN", [b"bob", b"nope"])[0] == "400"
    assert plain.decide("tscale", "PLAIN", [b"alice", b""])[0] == "400"
    assert Gate("curve").decide("tscale", "CURVE", z(alice_pub)) == ("200", "OK", ""), "encryption-only node"


def test_password_checks_are_rate_limited():
    now = [0.0]
    g = Gate("plain", users_doc={"users": {"bob": {"password": pw_hash("bob-pw")}}}, clock=lambda: now[0])
    codes = [g.decide("tscale", "PLAIN", [b"bob", b"wrong%d" % i])[0] for i in range(auth.PASSWORD_CHECKS_PER_S + 1)]
    assert codes[-1] == "300" and set(codes[:-1]) == {"400"}
    now[0] += 1.0
    assert g.decide("tscale", "PLAIN", [b"bob", b"bob-pw"])[0] == "200"
    assert g.decide("tscale", "PLAIN", [b"bob", b"bob-pw"])[0] == "200"   # cached: no scrypt, no budget


def test_zap_reply_framing():
    g = Gate("plain", token="tok")
    req = [b"id", b"", b"1.0", b"7", b"tscale", b"127.0.0.1", b"", b"PLAIN", b"token", b"tok"]
    assert auth.zap_reply(req, g) == [b"id", b"", b"1.0", b"7", b"200", b"OK", auth.TOKEN_USER.encode(), b""]
    assert auth.zap_reply([b"id", b"", b"2.0", b"7", b"d", b"a", b"", b"PLAIN", b"u", b"p"], g)[4] == b"500"
    assert auth.zap_reply([b"junk"], g) is None


def test_key_files(tmp_path):
    pub, sec = keys.node_pair(str(tmp_path / "d"))
    path = tmp_path / "d" / keys.NODE_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.node_pair(str(tmp_path / "d")) == (pub, sec), "created once, reused after"
    os.chmod(path, 0o640)
    with pytest.raises(keys.KeyFileError, match="chmod 600"):
        keys.node_pair(str(tmp_path / "d"))
    assert keys.cluster_server_pair("s" * 16) == keys.cluster_server_pair("s" * 16) != keys.cluster_server_pair("t" * 16)


# ----------------------------------------------------------------------------- CURVE node
def server_key_of(data_dir) -> str:
    r = cli(["keys", "--data-dir", str(data_dir)])
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().strip()


@pytest.fixture(scope="module")
def curve_node(tmp_path_factory):
    d = tmp_path_factory.mktemp("curve")
    key = server_key_of(d / "data")          # `tscale keys` creates the node key before the first start
    n = Node(d, workers=2, extra=["--curve", "--no-discovery"], creds={"server_key": key})
    try:
        n.start()
        yield n
    finally:
        n.stop()


def test_curve_plain_client_refused_clearly_within_timeout(curve_node):
    t0 = time.monotonic()
    with pytest.raises(tscale.ConnectError) as ei:
        tscale.Client(curve_node.addr, connect_timeout=3.0)
    assert time.monotonic() - t0 < 3.0 + 1.0
    assert "CURVE" in str(ei.value) and "server_key" in str(ei.value)


def test_curve_wrong_server_key_refused(curve_node):
    with pytest.raises(tscale.ConnectError, match="wrong server key"):
        tscale.Client(curve_node.addr, connect_timeout=3.0, server_key=keys.new_client_pair()[0])


def test_curve_pubsub_request_sync_and_aio(curve_node, clients):
    c = clients(curve_node, name="curve-sync")
    P = uniq("cv")
    sub = c.subscribe(P + ".>")
    c.subscribe(P + ".double", cb=lambda m: m.respond(m.data * 2))
    for k in range(2):
        c.publish(name_for(k, 2, P), b"x" * 4096)
    assert {m.name for m in collect(sub, 2)} == {name_for(0, 2, P), name_for(1, 2, P)}
    assert c.request(P + ".double", b"ab", timeout=DEADLINE).data == b"abab"

    async def main():
        a = await tscale.aio.Client.connect(curve_node.addr, server_key=curve_node.creds["server_key"])
        try:
            assert (await a.request(P + ".double", b"z", timeout=DEADLINE)).data == b"zz"
        finally:
            await a.close()
    asyncio.run(asyncio.wait_for(main(), 60))


def test_curve_status_key_file_and_cli(curve_node):
    st = curve_node.status()
    sec = st["security"]
    assert (sec["clients"], sec["control"], sec["server_key"]) == ("curve", "null", curve_node.creds["server_key"])
    path = curve_node.tmp_dir / "data" / keys.NODE_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = keys.read_pair(str(path))[1]
    assert secret not in json.dumps(st) and secret not in curve_node.log_text()
    r = cli(["status", "--json", "--server", curve_node.addr, "--server-key", curve_node.creds["server_key"]])
    assert r.returncode == 0 and json.loads(r.stdout)["security"]["clients"] == "curve"
    r = cli(["status", "--json", "--server", curve_node.addr], env={"TSCALE_SERVER_KEY": curve_node.creds["server_key"]})
    assert r.returncode == 0
    r = cli(["status", "--server", curve_node.addr])
    assert r.returncode == 3 and b"server-key" in r.stderr.replace(b"_", b"-")


def test_node_refuses_a_key_file_others_can_read(tmp_path):
    d = tmp_path / "data"
    keys.node_pair(str(d))
    os.chmod(d / keys.NODE_KEY_FILE, 0o644)
    n = Node(tmp_path, workers=1, extra=["--curve", "--no-discovery"])
    n.spawn()
    try:
        assert n.proc.wait(30) == 2
        assert "readable by group or others" in n.log_text()
    finally:
        n.stop()


# ----------------------------------------------------------------------------- users and permissions (PLAIN)
def users_toml(svc_pub: str | None = None, alice_sub_extra: str = "", with_bob: bool = True) -> str:
    out = f'''
[users.alice]
password = "{pw_hash("alice-pw")}"
publish = {{ allow = ["orders.>", "svc.>"], deny = ["orders.secret.>"] }}
subscribe = {{ allow = ["orders.>", "_INBOX.>"{alice_sub_extra}], deny = ["orders.secret.>"] }}

[users.svc]
password = "{pw_hash("svc-pw")}"
publish = {{ allow = [] }}
subscribe = {{ allow = ["svc.>"] }}
allow_responses = true
'''
    if with_bob:
        out += f'\n[users.bob]\npassword = "{pw_hash("bob-pw")}"\n'
    return out


@pytest.fixture(scope="module")
def users_node(tmp_path_factory):
    d = tmp_path_factory.mktemp("users")
    f = d / "users.toml"
    f.write_text(users_toml())
    n = Node(d, workers=2, extra=["--users-file", str(f), "--no-discovery"],
             creds={"user": "bob", "password": "bob-pw"})
    n.users_path = f
    try:
        n.start()
        yield n
    finally:
        n.stop()


def test_wrong_password_and_unknown_user_refused(users_node):
    for user, pw in (("bob", "nope"), ("mallory", "x")):
        with pytest.raises(tscale.ConnectError, match="refused our credentials"):
            tscale.Client(users_node.addr, user=user, password=pw, connect_timeout=5.0)


def test_permission_matrix_on_a_node(users_node, clients):
    bob = clients(users_node, name="bob")                         # no limits
    alice = clients(users_node, user="alice", password="alice-pw", name="alice")
    errors = Inbox()
    svc = clients(users_node, user="svc", password="svc-pw", name="svc", error_cb=errors)
    spy = bob.subscribe("orders.>")
    # publish: allowed, denied (named in the error), deny wins; the connection goes on
    alice.publish("orders.eu", b"1")
    alice.publish("orders.secret.plan", b"2")
    alice.publish("billing.x", b"3")
    alice.flush()
    got = collect(spy, 1)
    assert got[0].name == "orders.eu"
    assert alice.last_error is not None and alice.last_error.code == protocol.E_PERMISSION_DENIED
    assert not alice.last_error.fatal      # the two denied names are owned by different workers: either is last
    assert "orders.secret.plan" in alice.last_error.message or "billing.x" in alice.last_error.message
    # subscribe: allowed, not covered, deny wins
    alice.subscribe("orders.eu")
    for pattern in (">", "orders.>", "orders.secret.plan"):
        with pytest.raises(tscale.ServerError) as ei:
            alice.subscribe(pattern)
        assert ei.value.code == protocol.E_PERMISSION_DENIED and pattern in ei.value.message
    # responses: svc may answer requests (publish to reply names) and publish nothing else
    svc.subscribe("svc.echo", cb=lambda m: m.respond(b"re:" + m.data))
    for i in range(4):   # reply names of different owner workers
        assert alice.request("svc.echo", b"hi%d" % i, timeout=DEADLINE).data == b"re:hi%d" % i
    svc.publish("orders.eu", b"not allowed")
    svc.flush()
    wait_until(lambda: len(errors) >= 1, what="svc's violation")
    bob.publish("orders.done", b"fence")
    bob.flush()
    assert collect(spy, 1)[0].name == "orders.done", "svc's denied publish was not delivered"
    assert [e.code for e in errors.snapshot()] == [protocol.E_PERMISSION_DENIED]
    denied = wait_until(lambda: users_node.status()["security"]["permission_denied"].get("svc", 0) >= 1 and
                        users_node.status()["security"]["permission_denied"], what="violations in status")
    assert denied["alice"] == 5 and denied["svc"] == 1


def test_routing_id_reuse_does_not_inherit_a_user(users_node):
    """A routing id is chosen by the client: a second connection that takes over the id of a
    departed one is judged by its own handshake, not by the state the worker kept."""
    ident = os.urandom(8)
    a = RawClient(users_node.port, hello=False, user="bob", password="bob-pw", identity=ident)
    a.sub(">")
    a.sock.close(0)
    b = RawClient(users_node.port, hello=False, user="alice", password="alice-pw", identity=ident)
    try:
        P = uniq("reuse")
        req = b.next_id()
        b.send([protocol.SUB, 1, ">", None, req])
        e = b.wait_for(lambda c: c[0] in (protocol.OK, protocol.ERR) and c[-2 if c[0] == protocol.ERR else 1] == req)
        assert e[0] == protocol.ERR and e[1] == protocol.E_PERMISSION_DENIED
        b.pub("billing." + P, b"x")
        assert b.wait_error(protocol.E_PERMISSION_DENIED)
    finally:
        b.close()


def test_users_file_reload_on_sighup(tmp_path, clients):
    f = tmp_path / "users.toml"
    f.write_text(users_toml())
    n = Node(tmp_path, workers=2, extra=["--users-file", str(f), "--no-discovery"],
             creds={"user": "bob", "password": "bob-pw"})
    try:
        n.start()
        alice = clients(n, user="alice", password="alice-pw", name="alice")
        bob_errors = Inbox()
        bob = clients(n, name="bob", error_cb=bob_errors)
        with pytest.raises(tscale.ServerError):
            alice.subscribe("other.>")
        f.write_text(users_toml(alice_sub_extra=', "other.>"', with_bob=False))
        os.kill(n.proc.pid, signal.SIGHUP)
        wait_until(lambda: n.log_text().count("reloaded: 2 users") >= 3, what="supervisor and workers reloaded")
        alice.subscribe("other.>")                               # now allowed
        bob.publish("x.y", b"1")
        bob.flush()
        wait_until(lambda: any(e.code == protocol.E_NOT_AUTHORIZED for e in bob_errors.snapshot()),
                   what="bob's connection refused after he left the file")
        with pytest.raises(tscale.ConnectError):
            tscale.Client(n.addr, user="bob", password="bob-pw", connect_timeout=3.0)
        f.write_text("[users.x]\npassword = 'clear'\n")          # a broken file keeps the old users
        os.kill(n.proc.pid, signal.SIGHUP)
        wait_until(lambda: "users file not reloaded" in n.log_text(), what="reload error logged")
        alice.subscribe("other.z")
    finally:
        n.stop()


# ----------------------------------------------------------------------------- token: worker restart race
def test_worker_sigkill_on_token_node_loses_no_client_and_no_fatal_error(make_node, clients):
    n = make_node(2, token="t0ken-secret", extra=["--no-discovery"])
    errors = Inbox()
    pub = clients(n, name="restart-pub", error_cb=errors)
    sub_c = clients(n, name="restart-sub", error_cb=errors)
    P = uniq("rst")
    name1 = name_for(1, 2, P)
    sub = sub_c.subscribe(P + ".>")
    raw = n.raw(n.ports[1], hello=True, name="raw-restart")      # a protocol-following client on worker 1
    stop = threading.Event()

    def publish():
        i = 0
        while not stop.is_set():
            pub.publish(name1, str(i).encode())
            raw.pub(name1, b"raw")
            i += 1
            time.sleep(0.001)   # pacing the load, not synchronisation

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    try:
        collect(sub, 5)
        old = n.kill_worker(1)
        wait_until(lambda: n.worker_pids()[1] not in (None, old), what="worker 1 restarted")
        deadline = time.monotonic() + DEADLINE
        while True:            # events published after the restart arrive again
            m = sub.next_msg(timeout=DEADLINE)
            if time.monotonic() > deadline:
                raise AssertionError("no events after the restart")
            if m.data == b"raw":
                break
        raw.pump(0.2)
    finally:
        stop.set()
        t.join(5)
    assert not [e for e in errors.snapshot() if e.fatal], errors.snapshot()
    assert raw.errors == [], "a client that authenticated at the handshake never gets not_authorized"


# ----------------------------------------------------------------------------- secrets
def test_secrets_absent_from_ps_logs_and_status(make_node):
    token, ckey = "tok-" + uniq(), "ck-" + uniq() + "-long-enough"
    n = make_node(2, token=token, env={"TSCALE_CLUSTER_KEY": ckey}, extra=["--no-discovery"],
                  creds={"server_key": keys.cluster_server_pair(ckey)[0]})
    st = n.status()
    assert st["security"]["clients"] == "curve" and st["security"]["cluster_secret"] == "cluster key"
    secrets = [token, ckey, keys.cluster_server_pair(ckey)[1], keys.peer_password(ckey)]
    cmdlines = [" ".join(psutil.Process(p).cmdline()) for p in n.pids()]
    assert len(cmdlines) == 3
    text = json.dumps(st) + n.log_text() + "".join(cmdlines)
    assert [s for s in secrets if s in text] == []


# ----------------------------------------------------------------------------- cluster
def test_token_cluster_control_port_attack_fails(make_node):
    """Issue 8's attack, on a node whose token is its cluster secret: a process that knows the
    cluster name but not the token can neither join, nor learn a secret, nor read, nor inject."""
    n = make_node(2, token="cluster-tok3n", extra=["--no-discovery"])
    P = uniq("atk")
    sub = tscale.Client(n.addr, token="cluster-tok3n", name="victim-sub")
    try:
        sub_s = sub.subscribe(P + ".>")
        # a fake node: ROUTERs on "its" worker ports, a DEALER whose id sorts above the node's
        fake_port = free_port_block(3)
        traps = []
        for k in range(2):
            t = zctx().socket(zmq.ROUTER)
            t.linger = 0
            t.bind(f"tcp://127.0.0.1:{fake_port + k}")
            traps.append(t)
        me = {"id": "f" * 16, "name": "fake", "cluster": "tscale", "host": "127.0.0.1", "port": fake_port,
              "ctl": fake_port + 2, "workers": 2, "started": time.time(), "v": 1}
        # with no mechanism (as the attack of the issue), and with CURVE and the node's server key
        # (public knowledge: clients of a CURVE node have it) but a key pair of its own
        for curve in (False, True):
            d = zctx().socket(zmq.DEALER)
            d.linger = 0
            d.identity = me["id"].encode()
            if curve:
                pub, sec = keys.new_client_pair()
                d.curve_serverkey = keys.cluster_server_pair("cluster-tok3n")[0].encode()
                d.curve_publickey, d.curve_secretkey = pub.encode(), sec.encode()
            mon = d.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
            d.connect(f"tcp://127.0.0.1:{n.port + 2}")
            for frame in ([101, me, []], [103, me, [], True]):   # PROBE, ATTACH
                try:
                    d.send(protocol.pack(frame), zmq.NOBLOCK)    # queued until a handshake succeeds
                except zmq.Again:
                    pass
            assert mon.poll(DEADLINE * 1000), "the handshake neither failed nor succeeded"
            ev = zmq.utils.monitor.recv_monitor_message(mon)
            assert ev["event"] == (zmq.EVENT_HANDSHAKE_FAILED_AUTH if curve else zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
            assert not d.poll(200), "the control port answered a process without the cluster secret"
            d.disable_monitor()
            mon.close(0)
            d.close(0)
        wait_until(lambda: "refused a connection" in n.log_text(), what="the refusal in the node's log")
        assert all(not t.poll(0) for t in traps), "a worker connected to the fake node"
        # read or inject through a worker port as a "peer" with guessed credentials: refused
        for user, pw in (("peer", "cluster-tok3n"), ("peer", "guess"), ("token", "guess")):
            r = RawClient(n.port, hello=False, user=user, password=pw)
            r.send([protocol.SUB, 1, ">", None, 1])
            r.send([protocol.PEER_EVENTS, "f" * 16, P + ".x", b"injected", None, None])
            r.pump(0.3)
            assert r.frames == []
            r.close()
        # a client with the token is a client, not a peer: PEER_EVENTS refused
        r = RawClient(n.port, hello=False, token="cluster-tok3n")
        r.send([protocol.PEER_EVENTS, "f" * 16, P + ".x", b"injected", None, None])
        assert r.wait_error(protocol.E_NOT_AUTHORIZED)
        r.close()
        sub.publish(P + ".fence", b"f")
        assert sub_s.next_msg(timeout=DEADLINE).name == P + ".fence", "nothing injected arrived before the fence"
        for t in traps:
            t.close(0)
    finally:
        sub.close()


def test_keyed_cluster_forms_and_carries_events(tmp_path):
    from clusterkit import ClusterRun, wait_one_tree
    ckey = "cluster-" + uniq()
    creds = {"server_key": keys.cluster_server_pair(ckey)[0]}
    run = ClusterRun(tmp_path)
    try:
        a = run.add("127.0.0.1", workers=2, env={"TSCALE_CLUSTER_KEY": ckey}, creds=creds)
        b = run.add("127.0.0.2", workers=1, join=[a], env={"TSCALE_CLUSTER_KEY": ckey}, creds=creds)
        wait_one_tree([a, b])
        P = uniq("kc")
        s = run.client(b).subscribe(P + ".>", confirm="cluster")
        p = run.client(a)
        for k in range(2):
            p.publish(name_for(k, 2, P), b"across")
        assert len(collect(s, 2)) == 2
        sec = a.status()["security"]
        assert (sec["clients"], sec["peers"], sec["control"]) == ("curve", "curve", "curve")
        # a node with another cluster key never joins
        c = run.add("127.0.0.3", workers=1, join=[a], env={"TSCALE_CLUSTER_KEY": "other-" + ckey},
                    creds={"server_key": keys.cluster_server_pair("other-" + ckey)[0]})
        # it re-tries its seed every 2 s; after three tries it is still alone (a handshake with
        # the wrong key fails before any frame)
        wait_until(lambda: c.status()["node"]["uptime_s"] >= 6.0, what="the stranger's seed retries")
        assert len(a.cluster()["members"]) == 2 and len(c.cluster()["members"]) == 1
    finally:
        run.stop_all()


def test_curve_users_by_key_cli_key_file_and_aio_refusal(tmp_path, clients):
    kf = tmp_path / "carol.key"
    r = cli(["keys", "--new-client", str(kf)])
    assert r.returncode == 0, r.stderr
    carol_pub = r.stdout.decode().strip()
    assert stat.S_IMODE(kf.stat().st_mode) == 0o600
    carol_pub2, carol_sec = keys.read_pair(str(kf))
    assert carol_pub2 == carol_pub
    ops_pub, ops_sec = keys.new_client_pair()
    users = tmp_path / "users.toml"
    users.write_text(f'[users.carol]\nkey = "{carol_pub}"\npublish = {{ allow = ["c.>"] }}\n'
                     f'subscribe = {{ allow = ["c.>"] }}\n\n[users.ops]\nkey = "{ops_pub}"\n')
    d = tmp_path / "node"
    d.mkdir()
    server_key = server_key_of(d / "data")
    n = Node(d, workers=2, extra=["--curve", "--users-file", str(users), "--no-discovery"],
             creds={"server_key": server_key, "client_key": ops_sec})
    try:
        n.start()
        with pytest.raises(tscale.ConnectError, match="refused our credentials"):
            tscale.Client(n.addr, server_key=server_key, connect_timeout=5.0)   # a fresh, unknown key

        async def refused():
            with pytest.raises(tscale.ConnectError, match="refused our credentials"):
                await tscale.aio.Client.connect(n.addr, server_key=server_key, connect_timeout=5.0)
        asyncio.run(asyncio.wait_for(refused(), 60))
        ops = clients(n, name="ops")
        P = "c." + uniq("k")
        s = ops.subscribe(P + ".>")
        carol = clients(n, client_key=carol_sec, name="carol")
        carol.publish(P + ".1", b"hi")
        carol.publish("x.y", b"denied")
        carol.flush()
        assert s.next_msg(timeout=DEADLINE).data == b"hi"
        assert carol.last_error is not None and carol.last_error.code == protocol.E_PERMISSION_DENIED
        r = cli(["pub", P + ".2", "from-cli", "--server", n.addr, "--server-key", server_key],
                env={"TSCALE_CLIENT_KEY_FILE": str(kf)})
        assert r.returncode == 0, r.stderr
        assert s.next_msg(timeout=DEADLINE).data == b"from-cli"
        r = cli(["pub", "x.y", "denied", "--server", n.addr, "--server-key", server_key],
                env={"TSCALE_CLIENT_KEY_FILE": str(kf)})
        assert r.returncode == 1 and b"permission_denied" in r.stderr
    finally:
        n.stop()
